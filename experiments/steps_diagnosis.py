"""Where a DyDiff model's forecasts go wrong when the DDIM sampler takes more steps.

Runs, in PyTorch + diffusers with the sampler written from docs/process.md's formulas (float64 numpy
around the network: python/make_sampler_fixtures.py's spec_step), two diagnostics on
held-out sequences in data space (N, L, C, H, W):

1. The denoiser on the forward process: for a grid of timesteps, x_t drawn from docs/process.md's
   forward process (“Forward process”) of the true frames; the noise error E|ε̂ − ε̃|² / E|ε̃|² and the RMSE of the
   one-step estimate x̂_0 against the truth.
2. The sampler's trajectories for each DDIM step count: at every step, the RMSE of the running
   x̂_0 against the truth, the ensemble spread of x̂_0, its largest magnitude, and the ratio of
   x_t's RMS to the forward process's (1 means the trajectory stays where training put it).

    $PY experiments/steps_diagnosis.py MODEL VAL.npy [--steps 20 100] [--ddim-eta 0]
        [--timestep-spacing leading|trailing|linspace] [--sequences 8] [--members 4]

Prints tables (Markdown); needs torch, diffusers, numpy (python/requirements.txt). A model whose
scheduler says prediction_type v_prediction is read as such (its ε̂ follows from v̂).
"""

import argparse
import json
import math
import pathlib
import sys

import numpy as np
import torch
from diffusers import UNet2DModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "python"))
from make_sampler_fixtures import alphas_cumprod, dyn, spec_step, spec_x0  # noqa: E402

T = 1000


def load(model_dir):
    cfg = json.loads((model_dir / "dydiff.json").read_text())
    sched = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    cfg["prediction_type"] = sched.get("prediction_type", "epsilon")
    net = UNet2DModel.from_pretrained(model_dir / "unet").eval()
    if cfg.get("padding_mode", "zeros") == "circular":
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d) and m.padding != (0, 0):
                m.padding_mode = "circular"
    return cfg, net


def timesteps(k, spacing, max_t=None):
    if max_t is not None:
        return sorted(int(round(v)) for v in np.linspace(1, max_t, k))
    if spacing == "leading":
        return [(i - 1) * (T // k) + 1 for i in range(1, k + 1)]
    if spacing == "trailing":
        return sorted(int(round(T - j * T / k)) - 1 for j in range(k))
    return sorted(int(round(v)) for v in np.linspace(0, T - 1, k))


class Denoiser:
    """ε̂ of the network at (history, x_t, t); a v_prediction network's v̂ gives
    ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·v̂ (docs/process.md, “What the network predicts”)."""

    def __init__(self, net, p1, s, c, h, w, ab, prediction):
        self.net, self.p1, self.s, self.c, self.h, self.w = net, p1, s, c, h, w
        self.ab, self.velocity = ab, prediction == "v_prediction"

    def __call__(self, hist, x, t):
        b = hist[0].shape[0]
        inp = np.concatenate(hist + x, axis=1).reshape(b, -1, self.h, self.w).astype(np.float32)
        with torch.no_grad():
            e = self.net(torch.from_numpy(inp), torch.full((b,), t)).sample.numpy().astype(np.float64)
        out = [e[:, i * self.c:(i + 1) * self.c] for i in range(self.s)]
        if self.velocity:
            a = self.ab[t]
            out = [math.sqrt(1 - a) * x[i] + math.sqrt(a) * out[i] for i in range(self.s)]
        return out


def forward_table(den, hist, fut, ab, gb, rng):
    print("\n| t | ᾱ_t | noise error E|ε̂−ε̃|²/E|ε̃|² | x̂_0 RMSE (model space) |")
    print("|---|---|---|---|")
    for t in [1, 11, 21, 51, 101, 201, 301, 501, 701, 851, 941, 981, 991]:
        a, g = ab[t], gb(ab[t])
        d = dyn(hist + fut, g)[len(hist):]
        e = dyn([rng.standard_normal(f.shape) for f in fut], g)
        x = [math.sqrt(a) * d[i] + math.sqrt(1 - a) * e[i] for i in range(len(fut))]
        eh = den(hist, x, t)
        err = sum(((eh[i] - e[i]) ** 2).sum() for i in range(len(fut))) / sum((v**2).sum() for v in e)
        x0 = spec_x0(x, hist, eh, a, g)
        rmse = math.sqrt(np.mean([(x0[i] - fut[i]) ** 2 for i in range(len(fut))]))
        print(f"| {t} | {a:.3g} | {err:.3g} | {rmse:.3f} |")


def trajectory(den, hist, fut, ab, gb, steps, spacing, ddim_eta, members, rng, clip=None, max_t=None):
    taus = timesteps(steps, spacing, max_t)
    s = len(fut)
    x = dyn([rng.standard_normal(f.shape) for f in fut], gb(ab[taus[-1]]))
    var_d = np.mean([f**2 for f in dyn(hist + fut, 1.0)[len(hist):]])
    rows = []
    for k in range(steps, 0, -1):
        t = taus[k - 1]
        a_t, g_t = ab[t], gb(ab[t])
        a_p = ab[taus[k - 2]] if k > 1 else 1.0
        g_p = gb(a_p)
        eh = den(hist, x, t)
        if clip is not None:
            # diffusers' clip_sample: x̂_0 clipped, ε̂ recomputed from it (through the dynamics)
            x0 = [np.clip(v, -clip, clip) for v in spec_x0(x, hist, eh, a_t, g_t)]
            d0 = dyn(hist + x0, g_t)[len(hist):]
            eh = [(x[i] - math.sqrt(a_t) * d0[i]) / math.sqrt(1 - a_t) for i in range(s)]
        sigma = ddim_eta * math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        z = [rng.standard_normal(f.shape) if sigma > 0 else np.zeros_like(f) for f in fut]
        x0, x_next = spec_step(x, hist, eh, a_t, a_p, g_t, g_p, sigma, z)
        rms_ratio = math.sqrt(np.mean([v**2 for v in x])) / math.sqrt(a_t * var_d + 1 - a_t)
        stack = np.stack(x0, 1)  # (B, S, C, H, W), B = sequences × members
        b = stack.shape[0] // members
        ens = stack.reshape(b, members, *stack.shape[1:])
        truth = np.stack(fut, 1).reshape(b, members, *stack.shape[1:])[:, 0]
        rmse = math.sqrt(((ens.mean(1) - truth) ** 2).mean())
        spread = math.sqrt(ens.var(1, ddof=1).mean())
        rows.append((t, rmse, spread, float(np.abs(stack).max()), rms_ratio))
        x = x_next
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=pathlib.Path)
    ap.add_argument("data", type=pathlib.Path)
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--ddim-eta", type=float, default=0.0)
    ap.add_argument("--timestep-spacing", default="leading", choices=["leading", "trailing", "linspace"])
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-forward", action="store_true")
    ap.add_argument("--max-t", type=int, default=None,
                    help="timesteps evenly from 1 to MAX_T instead of the spacing's")
    ap.add_argument("--clip", type=float, default=None, help="clip x̂_0 to ±CLIP (model space)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg, net = load(args.model)
    p1, s, c = cfg["history"], cfg["future"], cfg["channels"]
    data = np.load(args.data)[: args.sequences, : p1 + s]
    data = (data - cfg["data_shift"]) / cfg["data_scale"]
    n, _, _, h, w = data.shape
    ab = alphas_cumprod()
    den = Denoiser(net, p1, s, c, h, w, ab, cfg["prediction_type"])
    eta = cfg["dyn_eta"]
    gb = lambda a: eta * a + (1 - eta)  # noqa: E731
    rep = np.repeat(data[:, None], args.members, axis=1).reshape(n * args.members, p1 + s, c, h, w)
    hist = [rep[:, i].astype(np.float64) for i in range(p1)]
    fut = [rep[:, p1 + i].astype(np.float64) for i in range(s)]
    if not args.no_forward:
        forward_table(den, hist, fut, ab, gb, np.random.default_rng(args.seed))
    for k in args.steps:
        rows = trajectory(den, hist, fut, ab, gb, k, args.timestep_spacing, args.ddim_eta, args.members,
                          np.random.default_rng(args.seed + 1), args.clip, args.max_t)
        print(f"\n{k} steps, {args.timestep_spacing}, ddim_eta {args.ddim_eta}, clip {args.clip}, max t {args.max_t}: "
              f"final RMSE {rows[-1][1]:.3f}, spread {rows[-1][2]:.3f}, max {rows[-1][3]:.2f}")
        print("| t | x̂_0 RMSE | x̂_0 spread | max abs x̂_0 | x_t RMS / forward RMS |")
        print("|---|---|---|---|---|")
        shown = set(range(0, len(rows), max(1, len(rows) // 12))) | {len(rows) - 1}
        for i in sorted(shown):
            t, rmse, spread, mx, rr = rows[i]
            print(f"| {t} | {rmse:.3f} | {spread:.3f} | {mx:.2f} | {rr:.3f} |")


if __name__ == "__main__":
    main()
