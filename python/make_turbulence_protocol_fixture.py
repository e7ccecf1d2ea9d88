"""Generates the fixture of `dydiff eval --protocol reference-turbulence` (tests/cli/eval.rs;
docs/metrics.md, "The reference's turbulence protocol").

The expected scores follow Dynamical Diffusion's reference evaluation for turbulence
(thuml/dynamical-diffusion, commit 2b677fb: core/evaluation/evaluate_turbulence.py and
core/evaluation/metrics_vid_pred.py), written here independently in torch, float64, on the
reference's tensor layout: members stacked first, each sample's frames and channels flattened to
L = S*C slices, values in data / 4 units. Pixel CRPS (the fair, probability-weighted-moment form)
over the pixels whose truth is >= 0; pooled CRPS with windows 2 and 8 (stride (w+2)//4, no
padding) over the windows whose truth is >= 0 throughout; a sample with a slice that has nothing
to score is dropped from that score; the mean over kept samples per slice, then over slices. CSI
at threshold 0 per member with windows 1, 3, 5, 7 (max-pooled binary fields, stride w//2,
padding w//2), one ratio per slice, then the mean.

Also the paired bootstrap of `--compare` (docs/metrics.md, "Comparing two forecasts") of the
forecast against a second one: the resampled indices from the same SplitMix64 stream (seed 0),
the change this/other - 1 of every score, its 2.5% and 97.5% percentiles (numpy's linear).

    PY=$(python/env.sh | tail -1); $PY python/make_turbulence_protocol_fixture.py
"""

import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "turbulence_protocol"
N, M, S, C, H, W = 6, 4, 3, 2, 12, 12
RESAMPLES = 300


def fair_pwm(pd, gt):
    """pd (m, B, L, h, w), gt (B, L, h, w): the fair CRPS per pixel (probability-weighted moments)."""
    m = pd.shape[0]
    l1 = (pd - gt).abs().mean(0)
    beta0 = pd.mean(0)
    srt = pd.sort(0).values
    weight = torch.arange(m, dtype=pd.dtype).view(m, 1, 1, 1, 1)
    beta1 = (weight * srt).sum(0) / (m * (m - 1))
    return l1 + beta0 - 2 * beta1


def kept_mean(per_slice, idx):
    """per_slice (B, L) with NaN for unscored slices: drop samples with any NaN, mean per slice."""
    v = per_slice[idx]
    keep = ~torch.isnan(v).any(1)
    if keep.sum() == 0:
        return None
    return v[keep].mean(0)


def slices(x, y):
    """The reference's layout: pd (m, B, L, H, W) and gt (B, L, H, W) in data / 4."""
    pd = torch.from_numpy(x).double().permute(1, 0, 2, 3, 4, 5).reshape(M, N, S * C, H, W) / 4
    gt = torch.from_numpy(y).double().reshape(N, S * C, H, W) / 4
    return pd, gt


def per_slice_scores(x, y):
    pd, gt = slices(x, y)
    out = {}
    mask = (-gt) <= 0
    crps = fair_pwm(pd, gt)
    out["crps"] = (crps * mask).sum((2, 3)) / mask.sum((2, 3))
    for w in (2, 8):
        stride = (w + 2) // 4
        wmask = F.max_pool2d(-gt, kernel_size=w, stride=stride) <= 0
        for kind, pool in (("avg", F.avg_pool2d), ("max", F.max_pool2d)):
            pp = pool(pd.reshape(M * N, S * C, H, W), kernel_size=w, stride=stride)
            pp = pp.reshape(M, N, S * C, *pp.shape[-2:])
            pg = pool(gt, kernel_size=w, stride=stride)
            c = fair_pwm(pp, pg)
            out[f"crps_pool{w}_{kind}"] = (c * wmask).sum((2, 3)) / wmask.sum((2, 3))
    # CSI counts per (sample, slice), summed over members and cells
    counts = {}
    for w in (1, 3, 5, 7):
        bp = (pd >= 0).double().reshape(M * N, S * C, H, W)
        bg = (gt >= 0).double()
        if w > 1:
            bp = F.max_pool2d(bp, kernel_size=w, stride=w // 2, padding=w // 2)
            bg = F.max_pool2d(bg, kernel_size=w, stride=w // 2, padding=w // 2)
        bp = bp.reshape(M, N, S * C, *bp.shape[-2:])
        tp = (bp * bg).sum((0, 3, 4))
        fp = (bp * (1 - bg)).sum((0, 3, 4))
        fn = ((1 - bp) * bg).sum((0, 3, 4))
        counts[f"csi_q0_w{w}"] = torch.stack([tp, fp, fn], -1)  # (B, L, 3)
    return out, counts


def overall(scores, counts, idx, fields=None):
    fields = list(range(S * C)) if fields is None else fields
    r = {}
    for k, v in scores.items():
        m = kept_mean(v, idx)
        r[k] = None if m is None else float(m[fields].mean())
    for k, cnt in counts.items():
        tot = cnt[idx].sum(0)  # (L, 3)
        den = tot.sum(-1)
        if (den[fields] == 0).any():
            r[k] = None
        else:
            r[k] = float((tot[fields, 0] / den[fields]).mean())
    return r


def splitmix(seed):
    state = seed
    mask = (1 << 64) - 1
    while True:
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        yield ((z ^ (z >> 31)) >> 11) / float(1 << 53)


def main():
    rng = np.random.default_rng(7)
    # truth mostly positive, with negative patches: sample 1 lead 2 channel 0 all negative (its
    # pixel CRPS is undefined there, so sample 1 is dropped from every score), sample 4 with a
    # negative pixel in every 8x8 window of one field (dropped from the w8 scores only), sample 3
    # with a negative corner in every field of channel 1
    y = (0.8 * rng.standard_normal((N, S, C, H, W)) + 2.0).astype(np.float32)
    y[1, 1, 0] = -np.abs(y[1, 1, 0]) - 0.1
    y[4, 0, 1, ::4, ::4] = -0.25
    y[3, :, 1, :6, :6] = -0.5
    x = (y[:, None] + 0.6 * rng.standard_normal((N, M, S, C, H, W))).astype(np.float32)
    xb = (y[:, None] + 0.3 + 0.9 * rng.standard_normal((N, M, S, C, H, W))).astype(np.float32)

    sc, cnt = per_slice_scores(x, y)
    scb, cntb = per_slice_scores(xb, y)
    everyone = list(range(N))
    report = {
        "overall": overall(sc, cnt, everyone),
        "per_lead": [dict(overall(sc, cnt, everyone, [s * C + c for c in range(C)]), lead=s + 1)
                     for s in range(S)],
        "scored_samples": {k: int((~torch.isnan(v).any(1)).sum()) for k, v in sc.items()},
    }
    # the paired bootstrap against xb
    ra, rb = overall(sc, cnt, everyone), overall(scb, cntb, everyone)
    u = splitmix(0)
    draws = [[min(int(next(u) * N), N - 1) for _ in range(N)] for _ in range(RESAMPLES)]
    comp = {}
    for k in ra:
        if ra[k] is None or rb[k] is None or rb[k] == 0:
            continue
        ch = []
        for idx in draws:
            a, b = overall(sc, cnt, idx)[k], overall(scb, cntb, idx)[k]
            if a is not None and b is not None and b != 0:
                ch.append(a / b - 1)
        ch = np.sort(np.array(ch))
        comp[k] = {"this": ra[k], "other": rb[k], "change": ra[k] / rb[k] - 1,
                   "ci95": [float(np.percentile(ch, 2.5)), float(np.percentile(ch, 97.5))],
                   "resamples": len(ch)}
    ROOT.mkdir(parents=True, exist_ok=True)
    np.save(ROOT / "forecast.npy", x)
    np.save(ROOT / "forecast_b.npy", xb)
    np.save(ROOT / "truth.npy", y)
    (ROOT / "expected.json").write_text(json.dumps(
        {"report": report, "compare": comp, "resamples": RESAMPLES}, indent=1) + "\n")
    print(json.dumps(report["overall"], indent=1), report["scored_samples"])


if __name__ == "__main__":
    main()
