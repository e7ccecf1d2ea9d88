"""The tables of experiments/reproduce.sh: for every (process, dyn_eta) found in OUT, the mean ±
standard deviation over its seeds of the main scores, then the fair CRPS per lead time (mean over
seeds), as Markdown.

    python3 experiments/table.py OUT

Runs are the folders OUT/{process}_eta{dyn_eta}_seed{seed} holding an eval.json (`dydiff eval
--json`); process "paper" diffuses the future frames only, "reference" every frame
(docs/process.md). Standard library only.
"""

import json
import pathlib
import re
import statistics
import sys

KEYS = [
    ("crps", "CRPS"),
    ("crps_pool8_avg", "CRPS w8 avg"),
    ("crps_pool8_max", "CRPS w8 max"),
    ("csi", "CSI (w1, q = 95th pct)"),
    ("rmse", "RMSE"),
    ("ssr", "SSR"),
]
PROCESS = {"paper": "paper process", "reference": "reference process (history diffused)"}
RUN = re.compile(r"(paper|reference)_eta([0-9.]+)_seed(\d+)$")


def value(scores, key):
    if key == "csi":
        # the higher default threshold (the truth's 95th percentile), no pooling
        qs = [k for k in scores if k.startswith("csi_q") and k.endswith("_w1")]
        key = max(qs, key=lambda k: float(k[5:-3]))
    return scores[key]


def cell(vals):
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.4f} ± {sd:.4f}"


def name(process, eta):
    model = "standard DPM" if float(eta) == 0 else "DyDiff"
    return f"{model} (dyn_eta {eta}), {PROCESS[process]}"


def main():
    out = pathlib.Path(sys.argv[1])
    runs = {}
    for d in sorted(out.iterdir()):
        m = RUN.match(d.name)
        if m and (d / "eval.json").is_file():
            runs.setdefault((m[1], m[2]), []).append((int(m[3]), json.loads((d / "eval.json").read_text())))
    if not runs:
        sys.exit(f"{out}: no finished runs (folders PROCESS_etaX_seedN with eval.json)")
    order = sorted(runs, key=lambda k: (k[0] != "paper", -float(k[1])))
    print("| model | seeds | " + " | ".join(label for _, label in KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    for k in order:
        reports = [r for _, r in sorted(runs[k])]
        seeds = ", ".join(str(s) for s, _ in sorted(runs[k]))
        cells = [cell([value(r["overall"], key) for r in reports]) for key, _ in KEYS]
        print(f"| {name(*k)} | {seeds} | " + " | ".join(cells) + " |")
    leads = len(next(iter(runs.values()))[0][1]["per_lead"])
    print("\nFair CRPS per lead time (mean over seeds):\n")
    print("| model | " + " | ".join(f"lead {i + 1}" for i in range(leads)) + " |")
    print("|---|" + "---|" * leads)
    for k in order:
        reports = [r for _, r in runs[k]]
        per = [statistics.mean(r["per_lead"][i]["crps"] for r in reports) for i in range(leads)]
        print(f"| {name(*k)} | " + " | ".join(f"{v:.4f}" for v in per) + " |")
    noise = {}
    for k in order:
        files = [out / f"{k[0]}_eta{k[1]}_seed{s}" / "noise.json" for s, _ in runs[k]]
        noise[k] = [json.loads(f.read_text()) for f in files if f.is_file()]
    noise = {k: v for k, v in noise.items() if v}
    if noise:
        ts = [r["t"] for r in next(iter(noise.values()))[0]["timesteps"]]
        print("\nNoise-prediction error on the future frames of held-out windows, MSE of ε̂ against ε̃ "
              "(`dydiff bench noise`, mean over seeds):\n")
        print("| model | " + " | ".join(f"t = {t}" for t in ts) + " |")
        print("|---|" + "---|" * len(ts))
        for k, reports in noise.items():
            per = [statistics.mean(r["timesteps"][i]["mse_future"] for r in reports) for i in range(len(ts))]
            print(f"| {name(*k)} | " + " | ".join(f"{v:.4f}" for v in per) + " |")
    print("\nMean ± standard deviation across seeds; CRPS is the fair CRPS in data space.")


if __name__ == "__main__":
    main()
