"""Generates the DYffusion fixtures of tests/cli/dyffusion.rs (docs/dyffusion.md).

An independent implementation of the method from its formulas, over diffusers networks with
random weights (dropout 0, so every call is deterministic; forecaster condition "data"):

  tests/fixtures/dyffusion/model/         dydiff.json, interpolator/, forecaster/ (2 history and
                                           3 future frames of 2 channels at 8x8; data_scale 2,
                                           data_shift 0.5; additional_steps 0, refine true)
  tests/fixtures/dyffusion/obs.npy        (N=2, L=8, C, H, W) observations, data space
  tests/fixtures/dyffusion/cold_k{K}_{refine|plain}.npy
                                           cold sampling over a two-window roll-out (lead 6),
                                           (N, 6, C, H, W) data space, for K = 0 and 2
  tests/fixtures/dyffusion/loss_k{K}.safetensors
                                           the stage-2 loss on fixed windows and fixed n: inputs
                                           x0, xh, n, the loss, and the gradient of every
                                           forecaster parameter ("grad/<name>")

The roll-out's second window starts from the last 2 frames of the trajectory (the observations'
last history frame, then the forecasts), in data space, as docs/process.md says.

    PY=$(python/env.sh | tail -1); $PY python/make_dyffusion_fixtures.py
"""

import json
import pathlib
import shutil

import numpy as np
import torch
from diffusers import UNet2DModel
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dyffusion"
P1, H, C, SZ = 2, 3, 2, 8
N = 2
SCALE, SHIFT = 2.0, 0.5
LEAD = 2 * H


def randomise(net, gen):
    """Random weights that make every parameter matter but keep the network well conditioned
    over a roll-out (float32 rounding is not amplified beyond the tests' tolerance)."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * r)
            elif name.endswith("bias"):
                p.copy_(0.1 * r)
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(0.8 * r / np.sqrt(fan_in))


def network(in_ch, seed):
    net = UNet2DModel(
        sample_size=SZ,
        in_channels=in_ch,
        out_channels=C,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
        dropout=0.0,
    ).eval()
    randomise(net, torch.Generator().manual_seed(seed))
    return net


def schedule(h, k):
    """i_0 ... i_N of docs/dyffusion.md, "Schedule"."""
    return [n / (k + 1) if n <= k else float(n - k) for n in range(h + k + 1)]


def interp(net, x0, xh, i):
    t = torch.full((x0.shape[0],), float(i)) if np.isscalar(i) else torch.as_tensor(i, dtype=torch.float32)
    return net(torch.cat([x0, xh], 1), t).sample


def fcast(net, x, x0, i):
    t = torch.full((x.shape[0],), float(i)) if np.isscalar(i) else torch.as_tensor(i, dtype=torch.float32)
    return net(torch.cat([x, x0], 1), t).sample


@torch.no_grad()
def cold_window(inet, fnet, x0, k, refine):
    """One window of cold sampling from model-space histories x0 (B, P1*C, H, W): leads 1..h."""
    ii = schedule(H, k)
    nsteps = H + k
    x = x0[:, (P1 - 1) * C:]
    leads = [None] * H
    xh = None
    for s in range(nsteps):
        xh = fcast(fnet, x, x0, ii[s])
        if s == nsteps - 1:
            x = xh
            break
        prev = x if s == 0 else interp(inet, x0, xh, ii[s])
        x = x - prev + interp(inet, x0, xh, ii[s + 1])
        j = ii[s + 1]
        if float(j).is_integer() and 1 <= j < H:
            leads[int(j) - 1] = x
    if refine:
        for j in range(1, H):
            leads[j - 1] = interp(inet, x0, xh, j)
    leads[H - 1] = xh
    return torch.stack(leads, 1)  # (B, h, C, H, W)


def rollout(inet, fnet, obs, k, refine):
    """Data-space roll-out over LEAD frames from the first P1 frames of obs (N, L, C, H, W)."""
    traj = torch.as_tensor(obs[:, :P1]).double()
    while traj.shape[1] - P1 < LEAD:
        hist = traj[:, -P1:]
        x0 = ((hist - SHIFT) / SCALE).float().reshape(N, P1 * C, SZ, SZ)
        # the forecast in data space, float32 as the next window reads it
        f = (cold_window(inet, fnet, x0, k, refine).double() * SCALE + SHIFT).float().double()
        traj = torch.cat([traj, f], 1)
    return traj[:, P1:P1 + LEAD].float().numpy()


def stage2_loss(inet, fnet, x0, xh, n, k, lam1=0.5, lam2=0.5):
    """docs/dyffusion.md, "Forecaster training", at fixed n (the interpolator frozen)."""
    ii = schedule(H, k)
    nsteps = H + k
    n = np.asarray(n)
    t = torch.tensor([ii[v] for v in n], dtype=torch.float32)
    with torch.no_grad():
        guess = interp(inet, x0, xh, t)
    last = x0[:, (P1 - 1) * C:]
    xt = torch.where(torch.as_tensor(n == 0)[:, None, None, None], last, guess)
    xhat = fcast(fnet, xt, x0, t)
    loss = lam1 * (xhat - xh).abs().mean()
    keep = torch.as_tensor(n <= nsteps - 2)
    if keep.any():
        t2 = torch.tensor([ii[v + 1] for v in n[keep.numpy()]], dtype=torch.float32)
        xt2 = interp(inet, x0[keep], xhat[keep], t2)
        xhat2 = fcast(fnet, xt2, x0[keep], t2)
        loss = loss + lam2 * (xhat2 - xh[keep]).abs().mean()
    return loss


def conditioning(inet, fnet, obs):
    """The largest difference, relative to the largest value, between the roll-out in float32
    and in float64: the rounding noise the tests' tolerance must stay well above."""
    worst = 0.0
    for k in (0, 2):
        a = rollout(inet, fnet, obs, k, True)
        inet.double()
        fnet.double()
        b = rollout64(inet, fnet, obs, k)
        inet.float()
        fnet.float()
        worst = max(worst, float(np.abs(a - b).max() / np.abs(b).max()))
    return worst


def rollout64(inet, fnet, obs, k):
    traj = torch.as_tensor(obs[:, :P1]).double()
    while traj.shape[1] - P1 < LEAD:
        x0 = ((traj[:, -P1:] - SHIFT) / SCALE).reshape(N, P1 * C, SZ, SZ)
        traj = torch.cat([traj, cold_window(inet, fnet, x0, k, True) * SCALE + SHIFT], 1)
    return traj[:, P1:P1 + LEAD].numpy()


def main():
    torch.set_num_threads(2)
    if ROOT.exists():
        shutil.rmtree(ROOT)
    model = ROOT / "model"
    inet = network((P1 + 1) * C, 11)
    fnet = network((P1 + 1) * C, 12)
    for p in inet.parameters():
        p.requires_grad_(False)
    inet.save_pretrained(model / "interpolator", safe_serialization=True)
    fnet.save_pretrained(model / "forecaster", safe_serialization=True)
    settings = {
        "method": "dyffusion", "history": P1, "future": H, "channels": C, "height": SZ,
        "width": SZ, "data_scale": SCALE, "data_shift": SHIFT, "additional_steps": 0,
        "forecaster_condition": "data", "interpolator_dropout": 0.0, "refine": True,
        "lambda_1": 0.5, "lambda_2": 0.5,
    }
    (model / "dydiff.json").write_text(json.dumps(settings, indent=2))
    rng = np.random.default_rng(5)
    obs = (SHIFT + SCALE * rng.standard_normal((N, P1 + LEAD, C, SZ, SZ))).astype(np.float32)
    np.save(ROOT / "obs.npy", obs)
    for k in (0, 2):
        for refine in (True, False):
            out = rollout(inet, fnet, obs, k, refine)
            np.save(ROOT / f"cold_k{k}_{'refine' if refine else 'plain'}.npy", out)
    b = 5
    x0 = torch.as_tensor(rng.standard_normal((b, P1 * C, SZ, SZ)), dtype=torch.float32)
    xh = torch.as_tensor(rng.standard_normal((b, C, SZ, SZ)), dtype=torch.float32)
    # rows with n <= N-2 first (the order the Rust loss takes them in)
    for k, n in ((0, [1, 0, 0, 2, 2]), (2, [3, 0, 1, 4, 4])):
        fnet.zero_grad()
        loss = stage2_loss(inet, fnet, x0, xh, n, k)
        loss.backward()
        tensors = {"x0": x0, "xh": xh, "n": torch.tensor(n, dtype=torch.float32),
                   "loss": loss.detach().reshape(1)}
        for name, p in fnet.named_parameters():
            tensors[f"grad/{name}"] = p.grad.detach().clone()
        save_file(tensors, str(ROOT / f"loss_k{k}.safetensors"))
    print("wrote", ROOT, "; float32 against float64, relative:", conditioning(inet, fnet, obs))


if __name__ == "__main__":
    main()
