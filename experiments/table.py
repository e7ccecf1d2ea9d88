"""Mean ± std over seeds of the scores of experiments/reproduce.sh, as a Markdown table.

    python3 experiments/table.py OUT SEED [SEED ...]
"""

import json
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


def value(report, key):
    o = report["overall"]
    if key == "csi":
        # the higher default threshold (the truth's 95th percentile), no pooling
        qs = sorted(k for k in o if k.startswith("csi_q") and k.endswith("_w1"))
        key = max(qs, key=lambda k: float(k[5:-3]))
    return o[key]


def main():
    out, seeds = sys.argv[1], sys.argv[2:]
    rows = []
    for eta, name in (("0.5", "DyDiff (dyn_eta 0.5)"), ("0", "standard DPM (dyn_eta 0)")):
        cells = []
        for key, _ in KEYS:
            vals = [value(json.load(open(f"{out}/eta{eta}_seed{s}/eval.json")), key) for s in seeds]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.4f} ± {sd:.4f}")
        rows.append((name, cells))
    print("| model | " + " | ".join(label for _, label in KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    for name, cells in rows:
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n{len(seeds)} seeds ({', '.join(seeds)}); mean ± standard deviation across seeds.")


if __name__ == "__main__":
    main()
