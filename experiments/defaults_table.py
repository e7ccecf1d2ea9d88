"""The sampler's defaults for the built-in model, from the validation runs of
experiments/builtin.sh in OUT: a Markdown table of fair CRPS, spread-skill ratio and the largest
forecast magnitude for every DDIM steps × ddim_eta pair (and, where OUT holds the runs of a model
swept beside it with BEFORE=..., that model's column too), and a figure, DIR/steps_border.png:

- left: fair CRPS against DDIM steps, for each ddim_eta, this model (solid) and the one before
  (dashed);
- right: the RMSE of the ensemble mean against the distance from the frame's border (pixels; 0 is
  the one-pixel border ring), at ddim_eta 0, for the fewest and the most steps swept.

    $PY experiments/defaults_table.py OUT DIR      # PY=$(python/env.sh | tail -1)
        [--figure steps_border.png] [--before "zero padding"] [--after "circular"]

(--figure names the figure's file in DIR; --before and --after name the two models in it.)

Needs numpy and matplotlib (python/requirements.txt).
"""

import argparse
import json
import pathlib
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RUN = re.compile(r"val_(?P<tag>[a-z]+)_k(?P<steps>\d+)_e(?P<eta>[0-9.]+)\.npy$")


def runs(out: pathlib.Path):
    """{tag: {(steps, eta): path}} of the forecasts in OUT."""
    found = {}
    for p in sorted(out.glob("val_*.npy")):
        m = RUN.search(p.name)
        if m:
            found.setdefault(m["tag"], {})[(int(m["steps"]), float(m["eta"]))] = p
    return found


def border_profile(fc: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RMSE of the ensemble mean at each distance from the border (0 = the border ring)."""
    h, w = truth.shape[-2:]
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    dist = np.minimum(np.minimum(yy, h - 1 - yy), np.minimum(xx, w - 1 - xx))
    err = (fc.mean(axis=1) - truth) ** 2
    return np.array([np.sqrt(err[..., dist == r].mean()) for r in range(dist.max() + 1)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("fig_dir", type=pathlib.Path)
    ap.add_argument("--figure", default="steps_border.png")
    ap.add_argument("--before", default="zero padding")
    ap.add_argument("--after", default="circular")
    args = ap.parse_args()
    out, fig_dir = args.out, args.fig_dir
    label = {"before": args.before, "after": args.after}
    val = np.load(out / "val.npy")
    found = runs(out)
    truth = None
    scores = {}
    for tag, by in found.items():
        for (k, e), p in by.items():
            report = json.loads(p.with_name(p.name.replace(".npy", ".eval.json")).read_text())
            fc = np.load(p)
            s = fc.shape[2]
            if truth is None:
                truth = val[:, val.shape[1] - s :]
            scores[tag, k, e] = dict(
                crps=report["overall"]["crps"],
                ssr=report["overall"]["ssr"],
                largest=float(np.abs(fc).max()),
                border=border_profile(fc, truth),
            )
    data_max = float(np.abs(val).max())
    tags = [t for t in ("before", "after") if t in found]
    steps = sorted({k for (_, k, _) in scores})
    etas = sorted({e for (_, _, e) in scores})
    head = "| DDIM steps | ddim_eta | " + " | ".join(
        f"{t}: fair CRPS | {t}: SSR | {t}: largest value" for t in tags
    )
    lines = [head + " |", "|---|---|" + "---|---|---|" * len(tags)]
    for k in steps:
        for e in etas:
            row = f"| {k} | {e:g} |"
            for t in tags:
                v = scores.get((t, k, e))
                row += (
                    f" {v['crps']:.4f} | {v['ssr']:.2f} | {v['largest']:.1f} |"
                    if v
                    else " — | — | — |"
                )
            lines.append(row)
    print("\n".join(lines))
    print(f"\nvalidation sequences: {val.shape[0]}; the largest |value| of the data: {data_max:.2f}")

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = {0.0: "tab:red", 0.5: "tab:purple", 1.0: "tab:blue"}
    for t, style in (("after", "-"), ("before", "--")):
        if t not in tags:
            continue
        for e in etas:
            ys = [scores[t, k, e]["crps"] for k in steps if (t, k, e) in scores]
            ks = [k for k in steps if (t, k, e) in scores]
            a.plot(ks, ys, style, marker="o", color=colours.get(e, "k"),
                   label=f"{label[t]}: ddim_eta {e:g}")
        for k, alpha in ((steps[0], 0.5), (steps[-1], 1.0)):
            if (t, k, 0.0) in scores:
                prof = scores[t, k, 0.0]["border"]
                b.plot(range(len(prof)), prof, style, color="k" if t == "after" else "tab:red",
                       alpha=alpha, label=f"{label[t]}: {k} steps")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("DDIM steps")
    a.set_ylabel("fair CRPS (validation)")
    a.set_title(f"more steps: {args.before} vs {args.after}")
    a.legend(fontsize=7)
    b.set_yscale("log")
    b.set_xlabel("distance from the frame's border (pixels)")
    b.set_ylabel("RMSE of the ensemble mean")
    b.set_title("ddim_eta 0: where the error is")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(fig_dir / args.figure, dpi=110)
    print(f"wrote {fig_dir / args.figure}")


if __name__ == "__main__":
    main()
