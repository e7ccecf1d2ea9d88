"""Generates the `dydiff eval` fixtures of tests/cli/eval.rs (docs/metrics.md).

A forecast (N=3, M=5, S=4, C=2, 20x24) and a truth (N, L=6, ...) of which the last S frames are
scored (frames 2 to 5: the forecasts' window records, forecast*.window.json, say so as
`dydiff sample` writes them), with thresholds 0.3 and 1.1; the expected report is computed here independently:
CRPS by properscoring (standard) and scoringrules (fair), pooling, CSI and FSS with torch's
max_pool2d / avg_pool2d, SSIM by a torch convolution with the 11x11 Gaussian window, the rest
with numpy. Also a second case with one member (fair scores undefined) and no thresholds
(defaults: the truth's 75th and 95th percentiles).

    PY=$(python/env.sh | tail -1); $PY python/make_eval_fixtures.py
"""

import json
import math
import pathlib

import numpy as np
import properscoring as ps
import scoringrules as sr
import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "eval"


def g(q):
    return "%g" % q


def fair(fct, obs):  # fct (..., M)
    if fct.shape[-1] < 2:
        return None
    return sr.crps_ensemble(obs, fct, m_axis=-1, estimator="fair")


def scores(x, y, thresholds, data_range):
    """x (N, M, C, H, W), y (N, C, H, W) for one lead (or all leads stacked into N)."""
    n, m, c, h, w = x.shape
    out = {}
    xm = np.moveaxis(x, 1, -1)  # (N, C, H, W, M)
    f = fair(xm.astype(np.float64), y.astype(np.float64))
    out["crps"] = None if f is None else float(np.mean(f))
    out["crps_standard"] = float(np.mean(ps.crps_ensemble(y.astype(np.float64), xm.astype(np.float64))))
    xt = torch.from_numpy(x.reshape(n * m, c, h, w).astype(np.float64))
    yt = torch.from_numpy(y.astype(np.float64))
    for k in (2, 4, 8, 16):
        if k > h or k > w:
            continue
        stride = (k + 2) // 4
        for kind, pool in (("avg", F.avg_pool2d), ("max", F.max_pool2d)):
            px = pool(xt, k, stride).numpy()
            py = pool(yt, k, stride).numpy()
            px = np.moveaxis(px.reshape(n, m, *px.shape[1:]), 1, -1)
            fp = fair(px, py)
            out[f"crps_pool{k}_{kind}"] = None if fp is None else float(np.mean(fp))
    for q in thresholds:
        bx = (xt >= q).double()
        by = (yt >= q).double()
        for k in (1, 3, 5):
            if k == 1:
                px, py = bx, by
            else:
                px = F.max_pool2d(bx, k, k // 2, k // 2)
                py = F.max_pool2d(by, k, k // 2, k // 2)
            px = px.reshape(n, m, *px.shape[1:])
            py = py[:, None]
            tp = (px * py).sum().item()
            fp_ = (px * (1 - py)).sum().item()
            fn = ((1 - px) * py).sum().item()
            out[f"csi_q{g(q)}_w{k}"] = tp / (tp + fp_ + fn) if tp + fp_ + fn > 0 else None
            stride = max((k + 2) // 4, 1)
            fx = F.avg_pool2d(bx, k, stride, k // 2, count_include_pad=True)
            fy = F.avg_pool2d(by, k, stride, k // 2, count_include_pad=True)
            fx = fx.reshape(n, m, *fx.shape[1:])
            fy = fy[:, None]
            num = ((fx - fy) ** 2).sum().item()
            den = (fx ** 2 + fy ** 2).sum().item()
            out[f"fss_q{g(q)}_w{k}"] = 1 - num / den if den > 0 else None
    mean = x.astype(np.float64).mean(axis=1)
    mse = float(np.mean((mean - y) ** 2))
    out["rmse"] = math.sqrt(mse)
    out["mae"] = float(np.mean(np.abs(mean - y)))
    out["spread"] = math.sqrt(float(np.mean(x.astype(np.float64).var(axis=1))))
    out["ssr"] = out["spread"] / out["rmse"]
    out["psnr"] = 10 * math.log10(data_range ** 2 / mse)
    # SSIM of the ensemble mean, 11x11 Gaussian (sigma 1.5), valid windows, per (n, c) field
    ax = np.arange(11) - 5
    g1 = np.exp(-ax ** 2 / (2 * 1.5 ** 2))
    g1 /= g1.sum()
    win = torch.from_numpy(np.outer(g1, g1))[None, None]
    a = torch.from_numpy(mean.reshape(-1, 1, h, w))
    b = torch.from_numpy(y.astype(np.float64).reshape(-1, 1, h, w))
    conv = lambda t: F.conv2d(t, win)  # noqa: E731
    ma, mb = conv(a), conv(b)
    va, vb, cab = conv(a * a) - ma ** 2, conv(b * b) - mb ** 2, conv(a * b) - ma * mb
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    out["ssim"] = float(smap.mean(dim=(1, 2, 3)).mean())
    return out


def report(x, truth, thresholds):
    n, m, s = x.shape[:3]
    y = truth[:, -s:]
    rng_ = float(y.max()) - float(y.min())
    if thresholds is None:
        thresholds = [float(np.quantile(y, 0.75)), float(np.quantile(y, 0.95))]
    per = []
    for k in range(s):
        r = scores(x[:, :, k], y[:, k], thresholds, rng_)
        r["lead"] = k + 1
        per.append(r)
    # overall: all leads together (stacked as extra samples)
    xa = np.moveaxis(x, 2, 1).reshape(n * s, m, *x.shape[3:])
    ya = y.reshape(n * s, *y.shape[2:])
    return {"overall": scores(xa, ya, thresholds, rng_), "per_lead": per}


def main():
    ROOT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(21)
    n, m, s, c, h, w = 3, 5, 4, 2, 20, 24
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    truth = np.zeros((n, 6, c, h, w), np.float32)
    for i in range(n):
        for t in range(6):
            for ch in range(c):
                truth[i, t, ch] = np.sin(0.4 * xx + 0.3 * yy + 0.5 * t + i + ch) + 0.3 * rng.standard_normal((h, w))
    # members: the truth plus growing, spatially smooth errors
    fc = np.repeat(truth[:, None, -s:], m, axis=1) + np.cumsum(0.25 * rng.standard_normal((n, m, s, c, h, w)), axis=2)
    fc = fc.astype(np.float32)
    np.save(ROOT / "forecast.npy", fc)
    np.save(ROOT / "truth.npy", truth)
    (ROOT / "report.json").write_text(json.dumps(report(fc, truth, [0.3, 1.1]), indent=1))
    one = fc[:, :1]
    np.save(ROOT / "forecast_one.npy", one)
    (ROOT / "report_one.json").write_text(json.dumps(report(one, truth, None), indent=1))
    for name, members in (("forecast", m), ("forecast_one", 1)):
        record = {"input": "truth.npy", "input_frames": 6, "samples": n, "history_frames": 2,
                  "first_forecast_frame": 2, "lead": s, "members": members}
        (ROOT / f"{name}.window.json").write_text(json.dumps(record, indent=1) + "\n")
    print("written", sorted(p.name for p in ROOT.iterdir()))


if __name__ == "__main__":
    main()
