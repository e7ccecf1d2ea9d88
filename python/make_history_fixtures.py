"""Generates the fixtures of the sampler that diffuses the history too (docs/process.md, “Diffusing
the history”; docs/random.md; docs/model-folder.md).

Writes two model folders sharing one small random UNet2DModel (2 history and 3 future frames of
2 channels at 16x16, so L = 5 diffused frames; in_channels (2 + 5)·2 = 14: the clean history,
then all L noisy frames; out_channels 5·2 = 10: ε̂ of all L frames; data_scale 2, data_shift 0.5),
both with "diffuse_history": true in dydiff.json:

  tests/fixtures/sampler_dh/model_dpm   dyn_eta 0   (the standard diffusion model over all frames)
  tests/fixtures/sampler_dh/model_dyn   dyn_eta 0.5 (Dynamical Diffusion)

plus observations obs.npy (N=2, L=5: history and truth, data space), eps.npy (N, M=3, L, C, H, W),
model-space initial noise for --init-noise, and for each case the expected forecast
(N, M, S, C, H, W) in data space:

  dyn_ddim0    dyn_eta 0.5, ddim_eta 0,   25 steps, --init-noise eps.npy
  dyn_ddim05   dyn_eta 0.5, ddim_eta 0.5, 21 steps, seed 7
  dpm_ddim0    dyn_eta 0,   ddim_eta 0,   25 steps, --init-noise eps.npy
  dpm_ddim05   dyn_eta 0,   ddim_eta 0.5, 20 steps, seed 3

cases.json lists, per case, the model folder, ddim_eta, steps, seed, whether eps.npy is the
initial noise, and the largest magnitude of the expected forecast.

Every expected forecast comes from the sampler written below from docs/schedules.md and
docs/process.md in float64 numpy (only the network runs in torch float32); it shares no code with
dydiff. At every step the network sees [clean history (P+1 frames), x_t (all L frames)] in model
space, frame-major (channel = frame·C + c), and predicts ε̂ of all L frames; the forecast is the
future frames P+1 … L−1 of the final x̂_0, mapped back to data space. For dyn_eta 0 the script also
runs a loop over diffusers' own DDIMScheduler.step on all L frames (the clean history concatenated
in front of x_t as the condition, variance_noise = our z) and asserts that the two agree to 1e-4
of the forecast's largest magnitude.

Seeded noise is the Philox4x32-10 and Box-Muller of docs/random.md (the helpers of
make_sampler_fixtures.py, checked against the Random123 known answers), on the streams of the
sampler with rows of all L frames: the initial ε of sequence n, member m is
normals(seed, purpose 0, step 0, n, m, L·C·H·W) reshaped (L, C, H, W); the noise z of the step
from τ_k (k = K for the first step … 1 for the last) is normals(seed, purpose 1, step k, n, m,
L·C·H·W), drawn only when σ > 0. Positions are in C order, e = ((f·C + c)·H + y)·W + x.

    PY=$(python/env.sh | tail -1); $PY python/make_history_fixtures.py
"""

import json
import math
import pathlib
import shutil
import sys

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_fixtures import randomise  # noqa: E402
from make_sampler_fixtures import check_philox, normals  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sampler_dh"
P1, S, C, H, W = 2, 3, 2, 16, 16
L = P1 + S
N, M = 2, 3
SCALE, SHIFT = 2.0, 0.5
T = 1000
# A narrow network keeps the two model folders small; attention sits at the second level.
BLOCKS, GROUPS, HEAD_DIM = (8, 16), 4, 8


def noise(seed, purpose, step):
    """(N·M, L, C, H, W) noise in float64, one stream per (sequence, member), row n·M + m."""
    out = np.zeros((N * M, L, C, H, W), np.float64)
    for n in range(N):
        for m in range(M):
            out[n * M + m] = normals(seed, purpose, step, n, m, L * C * H * W).reshape(L, C, H, W)
    return out


# ---- docs/schedules.md and docs/process.md written from the formulas (float64) ------------------
def alphas_cumprod():
    f = lambda u: math.cos(((u / T + 0.008) / 1.008) * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - f(t + 1) / f(t), 0.999) for t in range(T)])
    ab = np.cumprod(1 - betas)
    for t, want, tol in [(0, 0.99995869, 5e-8), (500, 0.49228, 1e-5), (981, 7.867e-4, 1e-7),
                         (999, 2.43e-9, 1e-11)]:
        assert abs(ab[t] - want) < tol, (t, ab[t], want)
    return ab


def dyn(x, g):
    """Dyn_g over axis 1 (the frames) of x, the chain starting at the first frame."""
    y = np.empty_like(x)
    y[:, 0] = x[:, 0]
    for i in range(1, x.shape[1]):
        y[:, i] = math.sqrt(g) * x[:, i] + math.sqrt(1 - g) * y[:, i - 1]
    return y


def inv_dyn(y, g):
    """InvDyn_g over axis 1 (the frames) of y."""
    x = np.empty_like(y)
    x[:, 0] = y[:, 0]
    for i in range(1, y.shape[1]):
        x[:, i] = (y[:, i] - math.sqrt(1 - g) * y[:, i - 1]) / math.sqrt(g)
    return x


def taus_of(steps):
    """The sampling timesteps τ_1 … τ_K ("leading" spacing, steps_offset 1)."""
    return [(k - 1) * (T // steps) + 1 for k in range(1, steps + 1)]


def eps_hat(net, hist, x, t):
    """ε̂ of all L frames: the network on [clean history, x_t], frame-major channels."""
    B = hist.shape[0]
    inp = np.concatenate([hist, x], axis=1).reshape(B, (P1 + L) * C, H, W).astype(np.float32)
    with torch.no_grad():
        out = net(torch.from_numpy(inp), torch.full((B,), t)).sample.numpy()
    return out.astype(np.float64).reshape(B, L, C, H, W)


def history_sampler(net, hist, eps, dyn_eta, ddim_eta, steps, seed):
    """hist (B, P1, C, H, W), eps (B, L, C, H, W), model space, row n·M + m. Returns the final x̂_0,
    (B, L, C, H, W)."""
    ab = alphas_cumprod()
    gb = lambda a: dyn_eta * a + (1 - dyn_eta)  # noqa: E731
    taus = taus_of(steps)
    hist = hist.astype(np.float64)
    x = dyn(eps.astype(np.float64), gb(ab[taus[-1]]))  # x_{τ_K}: correlated noise over all L frames
    x0 = None
    for k in range(steps, 0, -1):
        t = taus[k - 1]
        a_t, g_t = ab[t], gb(ab[t])
        a_p = ab[taus[k - 2]] if k > 1 else 1.0  # set_alpha_to_one
        g_p = gb(a_p)
        e = eps_hat(net, hist, x, t)
        y = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
        x0 = inv_dyn(y, g_t)  # all frames: the history slots are the model's own estimate
        e_w = inv_dyn(e, g_t)
        sigma = ddim_eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        z = noise(seed, 1, k) if sigma > 0 else np.zeros_like(x)
        ce = math.sqrt(max(1 - a_p - sigma**2, 0.0))
        x = math.sqrt(a_p) * dyn(x0, g_p) + ce * dyn(e_w, g_p) + sigma * dyn(z, g_p)
    assert np.array_equal(x, x0)  # the last step lands on ᾱ = γ̄ = 1, σ = 0
    return x0


def diffusers_sampler(net, hist, eps, ddim_eta, steps, seed):
    """The standard model over all L frames: a loop over diffusers' own DDIMScheduler.step."""
    sched = DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                          set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading",
                          prediction_type="epsilon")
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == taus_of(steps)[::-1]
    B = hist.shape[0]
    h = torch.from_numpy(hist.reshape(B, P1 * C, H, W).astype(np.float32))
    x = torch.from_numpy(eps.reshape(B, L * C, H, W).astype(np.float32))
    out = None
    for i, t in enumerate(sched.timesteps):
        k = steps - i
        with torch.no_grad():
            e = net(torch.cat([h, x], 1), t.repeat(B)).sample
        z = torch.from_numpy(noise(seed, 1, k).reshape(B, L * C, H, W).astype(np.float32)) \
            if ddim_eta > 0 else None
        res = sched.step(e, t, x, eta=ddim_eta, variance_noise=z)
        x, out = res.prev_sample, res.pred_original_sample
    return out.numpy().astype(np.float64).reshape(B, L, C, H, W)


def main():
    torch.set_num_threads(2)
    check_philox()
    gen = torch.Generator().manual_seed(2718)
    net = UNet2DModel(
        sample_size=H, in_channels=(P1 + L) * C, out_channels=L * C, block_out_channels=BLOCKS,
        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=GROUPS,
        attention_head_dim=HEAD_DIM,
    ).eval()
    randomise(net, gen)
    with torch.no_grad():  # keep ε̂ of order one so 25 steps stay well conditioned
        net.conv_out.weight.mul_(0.3)
    if ROOT.exists():
        shutil.rmtree(ROOT)
    for name, dyn_eta in [("model_dpm", 0.0), ("model_dyn", 0.5)]:
        d = ROOT / name
        net.save_pretrained(d / "unet", safe_serialization=True)
        DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                      set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading",
                      prediction_type="epsilon").save_config(d / "scheduler")
        (d / "dydiff.json").write_text(json.dumps({
            "method": "dydiff", "dyn_eta": dyn_eta, "diffuse_history": True, "history": P1,
            "future": S, "channels": C, "height": H, "width": W, "data_scale": SCALE,
            "data_shift": SHIFT, "training": {"note": "random weights for the sampler fixtures"},
        }, indent=1))
    # Smooth observations: a few random Fourier modes drifting in time, plus noise.
    rng = np.random.default_rng(13)
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    obs = np.zeros((N, L, C, H, W), np.float32)
    for n in range(N):
        for c in range(C):
            kx, ky, ph = rng.integers(1, 3), rng.integers(1, 3), rng.uniform(0, 6.28)
            for f in range(L):
                obs[n, f, c] = 1.5 * np.sin(2 * np.pi * (kx * xx + ky * yy) / H + ph + 0.4 * f) + SHIFT
    obs += 0.1 * rng.standard_normal(obs.shape).astype(np.float32)
    np.save(ROOT / "obs.npy", obs)
    # The history as the sampler sees it: float32 in model space, one row per (n, m).
    hist = ((obs[:, :P1] - np.float32(SHIFT)) / np.float32(SCALE)).astype(np.float32)
    hist = np.repeat(hist[:, None], M, axis=1).reshape(N * M, P1, C, H, W)
    eps_file = rng.standard_normal((N, M, L, C, H, W)).astype(np.float32)
    np.save(ROOT / "eps.npy", eps_file)
    cases = {
        "dyn_ddim0": ("model_dyn", 0.5, 0.0, 25, 0, True),
        "dyn_ddim05": ("model_dyn", 0.5, 0.5, 21, 7, False),
        "dpm_ddim0": ("model_dpm", 0.0, 0.0, 25, 0, True),
        "dpm_ddim05": ("model_dpm", 0.0, 0.5, 20, 3, False),
    }
    meta = {}
    for name, (model, dyn_eta, ddim_eta, steps, seed, use_file) in cases.items():
        eps = eps_file.reshape(N * M, L, C, H, W) if use_file else noise(seed, 0, 0)
        x0 = history_sampler(net, hist, eps, dyn_eta, ddim_eta, steps, seed)
        out = (x0[:, P1:] * SCALE + SHIFT).astype(np.float32).reshape(N, M, S, C, H, W)
        max_abs = float(np.abs(out).max())
        if dyn_eta == 0.0:
            ref = diffusers_sampler(net, hist, eps, ddim_eta, steps, seed)
            ref = (ref[:, P1:] * SCALE + SHIFT).reshape(N, M, S, C, H, W)
            rel = float(np.abs(out - ref).max()) / max_abs
            print(f"{name}: |formulas - DDIMScheduler.step| / max|forecast| = {rel:.3e}")
            assert rel < 1e-4, (name, rel)
        np.save(ROOT / f"{name}.npy", out)
        meta[name] = {"model": model, "ddim_eta": ddim_eta, "steps": steps, "seed": seed,
                      "init_noise": use_file, "max_abs": max_abs}
        print(name, meta[name])
    (ROOT / "cases.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
