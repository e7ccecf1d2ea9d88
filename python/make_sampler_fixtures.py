"""Generates the sampler fixtures of tests/cli/sample.rs (docs/process.md, docs/random.md,
docs/model-folder.md).

Writes two model folders sharing one small random UNet2DModel (2 history and 3 future frames of
2 channels at 16x16; data_scale 2, data_shift 0.5):

  tests/fixtures/sampler/model_dpm   dyn_eta 0   (the standard diffusion model)
  tests/fixtures/sampler/model_dyn   dyn_eta 0.5 (Dynamical Diffusion)
  tests/fixtures/sampler/model_dpm_v, model_dyn_v   the same, prediction_type v_prediction

plus observations obs.npy (N=2, L=5: history and truth), and for each case the expected forecast
(N, M, S, C, H, W) in data space:

  dpm_eta0   dyn_eta 0,   ddim_eta 0,   25 steps, --init-noise eps.npy  -> diffusers DDIMScheduler.step
  dpm_eta1   dyn_eta 0,   ddim_eta 1,   20 steps, seed 3               -> DDIMScheduler.step with
                                                                           variance_noise = our z
  dyn_eta0   dyn_eta 0.5, ddim_eta 0,   25 steps, seed 5               -> the sampler implementation below
  dyn_eta05  dyn_eta 0.5, ddim_eta 0.5, 21 steps, seed 7               -> the sampler implementation below
  dpm_v_eta0   as dpm_eta0, the network read as a velocity (prediction_type v_prediction)
  dyn_v_eta05  dyn_eta 0.5, ddim_eta 0.5, 21 steps, seed 9, v_prediction -> the sampler below

The dyn_eta 0.5 reference is written here from docs/schedules.md and docs/process.md in float64
numpy (only the network runs in torch float32); it shares no code with dydiff. The seeded noise
is the Philox4x32-10 and Box-Muller of docs/random.md, reimplemented here in numpy and checked
against the Random123 known answers.

    PY=$(python/env.sh | tail -1); $PY python/make_sampler_fixtures.py
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

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sampler"
P1, S, C, H, W = 2, 3, 2, 16, 16
N, M = 2, 3
SCALE, SHIFT = 2.0, 0.5
T = 1000

# ---- docs/random.md: Philox4x32-10 and Box-Muller -----------------------------------------------
M32 = np.uint64(0xFFFFFFFF)


def philox(c, key):
    """c: four uint64 arrays of 32-bit words; key: two ints. Returns four uint64 arrays."""
    c0, c1, c2, c3 = (np.asarray(x, dtype=np.uint64) for x in c)
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for r in range(10):
        if r:
            k0 = (k0 + np.uint64(0x9E3779B9)) & M32
            k1 = (k1 + np.uint64(0xBB67AE85)) & M32
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & M32, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & M32
    return c0, c1, c2, c3


def check_philox():
    kat = [
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ]
    for ctr, key, want in kat:
        got = [int(w[0]) for w in philox([np.array([x]) for x in ctr], key)]
        assert got == want, (ctr, [hex(g) for g in got])


def normals(seed, purpose, step, sample, member, count):
    """The counter layout of docs/random.md: c0 = element // 4, c1 = step, c2 = sample, c3 = purpose<<24 | member."""
    blocks = (count + 3) // 4
    c0 = np.arange(blocks, dtype=np.uint64)
    full = lambda v: np.full(blocks, v, dtype=np.uint64)  # noqa: E731
    w = philox([c0, full(step), full(sample), full((purpose << 24) | member)], [seed & 0xFFFFFFFF, seed >> 32])
    u = lambda x: (x.astype(np.float64) + 0.5) / 4294967296.0  # noqa: E731
    r1, r2 = np.sqrt(-2 * np.log(u(w[0]))), np.sqrt(-2 * np.log(u(w[2])))
    a1, a2 = 2 * math.pi * u(w[1]), 2 * math.pi * u(w[3])
    z = np.stack([r1 * np.cos(a1), r1 * np.sin(a1), r2 * np.cos(a2), r2 * np.sin(a2)], axis=1)
    return z.reshape(-1)[:count].astype(np.float32)


def noise(seed, purpose, step):
    """(N, M, S, C, H, W) noise, one stream per (sample, member)."""
    out = np.zeros((N, M, S, C, H, W), np.float32)
    for n in range(N):
        for m in range(M):
            out[n, m] = normals(seed, purpose, step, n, m, S * C * H * W).reshape(S, C, H, W)
    return out


# ---- docs/schedules.md and docs/process.md written from the formulas (float64) ------------------
def alphas_cumprod():
    f = lambda u: math.cos(((u / T + 0.008) / 1.008) * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - f(t + 1) / f(t), 0.999) for t in range(T)])
    return np.cumprod(1 - betas)


def dyn(frames, g):
    out = [frames[0]]
    for x in frames[1:]:
        out.append(math.sqrt(g) * x + math.sqrt(1 - g) * out[-1])
    return out


def inv_dyn(frames, g):
    out = [frames[0]]
    for i in range(1, len(frames)):
        out.append((frames[i] - math.sqrt(1 - g) * frames[i - 1]) / math.sqrt(g))
    return out


def spec_x0(x, h, e_hat, a_t, g_t):
    """Steps 2–3 of one DDIM step (docs/process.md, “One step”): the estimate of the future frames
    from x_t (lists of frames), the history h and the noise estimate e_hat."""
    y = [(xs - math.sqrt(1 - a_t) * es) / math.sqrt(a_t) for xs, es in zip(x, e_hat)]
    return inv_dyn([dyn(h, g_t)[-1]] + y, g_t)[1:]


def spec_step(x, h, e_hat, a_t, a_p, g_t, g_p, sigma, z):
    """Steps 2–5 of one DDIM step from t to p with the noise estimate e_hat and fresh noise z
    (lists of frames): (x̂_0, x_p)."""
    x0 = spec_x0(x, h, e_hat, a_t, g_t)
    e_w = inv_dyn(e_hat, g_t)
    d = dyn(h + x0, g_p)[len(h):]
    dw, dz = dyn(e_w, g_p), dyn(z, g_p)
    ce = math.sqrt(max(1 - a_p - sigma**2, 0.0))
    return x0, [math.sqrt(a_p) * d[s] + ce * dw[s] + sigma * dz[s] for s in range(len(x))]


def spec_sampler(net, hist, eps, dyn_eta, ddim_eta, steps, seed, prediction="epsilon"):
    """hist (B, P1, C, H, W), eps (B, S, C, H, W), model space; one batch row per (n, m). A
    v_prediction network's output v̂ gives ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·v̂ (docs/process.md)."""
    ab = alphas_cumprod()
    gb = lambda a: dyn_eta * a + (1 - dyn_eta)  # noqa: E731
    taus = [(k - 1) * (T // steps) + 1 for k in range(1, steps + 1)]
    B = hist.shape[0]
    h = [hist[:, i].astype(np.float64) for i in range(P1)]
    x = dyn([eps[:, s].astype(np.float64) for s in range(S)], gb(ab[taus[-1]]))
    for k in range(steps, 0, -1):
        t = taus[k - 1]
        a_t, g_t = ab[t], gb(ab[t])
        a_p = ab[taus[k - 2]] if k > 1 else 1.0
        g_p = gb(a_p)
        inp = np.concatenate(h + x, axis=1).reshape(B, -1, H, W).astype(np.float32)
        with torch.no_grad():
            e_hat = net(torch.from_numpy(inp), torch.full((B,), t)).sample.numpy().astype(np.float64)
        e_hat = [e_hat[:, s * C:(s + 1) * C] for s in range(S)]
        if prediction == "v_prediction":
            e_hat = [math.sqrt(1 - a_t) * x[s] + math.sqrt(a_t) * e_hat[s] for s in range(S)]
        sigma = ddim_eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        if sigma > 0:
            zz = noise(seed, 1, k).reshape(B, S, C, H, W)
            z = [zz[:, s].astype(np.float64) for s in range(S)]
        else:
            z = [np.zeros_like(e) for e in e_hat]
        _, x = spec_step(x, h, e_hat, a_t, a_p, g_t, g_p, sigma, z)
    return np.stack(x, axis=1)


def diffusers_sampler(net, hist, eps, ddim_eta, steps, seed, prediction="epsilon"):
    """The standard model: a loop over diffusers' own DDIMScheduler.step."""
    sched = DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                          set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading",
                          prediction_type=prediction)
    sched.set_timesteps(steps)
    B = hist.shape[0]
    h = torch.from_numpy(hist.reshape(B, P1 * C, H, W))
    x = torch.from_numpy(eps.reshape(B, S * C, H, W))
    for i, t in enumerate(sched.timesteps):
        k = steps - i
        with torch.no_grad():
            e_hat = net(torch.cat([h, x], 1), t.repeat(B)).sample
        z = torch.from_numpy(noise(seed, 1, k).reshape(B, S * C, H, W)) if ddim_eta > 0 else None
        x = sched.step(e_hat, t, x, eta=ddim_eta, variance_noise=z).prev_sample
    return x.numpy().reshape(B, S, C, H, W)


def main():
    torch.set_num_threads(2)
    check_philox()
    gen = torch.Generator().manual_seed(4321)
    net = UNet2DModel(
        sample_size=H, in_channels=(P1 + S) * C, out_channels=S * C, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=16,
    ).eval()
    randomise(net, gen)
    with torch.no_grad():  # keep ε̂ of order one so 25 steps stay well conditioned
        net.conv_out.weight.mul_(0.3)
    if ROOT.exists():
        shutil.rmtree(ROOT)
    models = [("model_dpm", 0.0, "epsilon"), ("model_dyn", 0.5, "epsilon"),
              ("model_dpm_v", 0.0, "v_prediction"), ("model_dyn_v", 0.5, "v_prediction")]
    for name, dyn_eta, prediction in models:
        d = ROOT / name
        net.save_pretrained(d / "unet", safe_serialization=True)
        DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                      set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading",
                      prediction_type=prediction).save_config(d / "scheduler")
        (d / "dydiff.json").write_text(json.dumps({
            "method": "dydiff", "dyn_eta": dyn_eta, "history": P1, "future": S, "channels": C,
            "height": H, "width": W, "data_scale": SCALE, "data_shift": SHIFT,
            "training": {"note": "random weights for the sampler fixtures"},
        }, indent=1))
    # Smooth observations: a few random Fourier modes drifting in time, plus noise.
    rng = np.random.default_rng(11)
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    obs = np.zeros((N, P1 + S, C, H, W), np.float32)
    for n in range(N):
        for c in range(C):
            kx, ky, ph = rng.integers(1, 3), rng.integers(1, 3), rng.uniform(0, 6.28)
            for f in range(P1 + S):
                obs[n, f, c] = 1.5 * np.sin(2 * np.pi * (kx * xx + ky * yy) / H + ph + 0.4 * f) + SHIFT
    obs += 0.1 * rng.standard_normal(obs.shape).astype(np.float32)
    np.save(ROOT / "obs.npy", obs)
    hist = np.repeat(((obs[:, :P1] - SHIFT) / SCALE)[:, None], M, axis=1).reshape(N * M, P1, C, H, W)
    eps_file = rng.standard_normal((N, M, S, C, H, W)).astype(np.float32)
    np.save(ROOT / "eps.npy", eps_file)
    cases = {
        "dpm_eta0": ("model_dpm", 0.0, 25, 0, True),
        "dpm_eta1": ("model_dpm", 1.0, 20, 3, False),
        "dyn_eta0": ("model_dyn", 0.0, 25, 5, False),
        "dyn_eta05": ("model_dyn", 0.5, 21, 7, False),
        "dpm_v_eta0": ("model_dpm_v", 0.0, 25, 0, True),
        "dyn_v_eta05": ("model_dyn_v", 0.5, 21, 9, False),
    }
    prediction_of = {name: prediction for name, _, prediction in models}
    meta = {}
    for name, (model, ddim_eta, steps, seed, use_file) in cases.items():
        eps = (eps_file if use_file else noise(seed, 0, 0)).reshape(N * M, S, C, H, W)
        prediction = prediction_of[model]
        if model.startswith("model_dpm"):
            x0 = diffusers_sampler(net, hist, eps, ddim_eta, steps, seed, prediction)
        else:
            x0 = spec_sampler(net, hist, eps, 0.5, ddim_eta, steps, seed, prediction)
        out = (x0 * SCALE + SHIFT).astype(np.float32).reshape(N, M, S, C, H, W)
        np.save(ROOT / f"{name}.npy", out)
        meta[name] = {"model": model, "ddim_eta": ddim_eta, "steps": steps, "seed": seed,
                      "init_noise": use_file, "max_abs": float(np.abs(out).max())}
        print(name, meta[name])
    (ROOT / "cases.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
