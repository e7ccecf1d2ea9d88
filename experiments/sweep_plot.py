"""The figure of the dyn_eta sensitivity under the reference process at 8 000 steps (seed 0;
experiments/sweep_reference.sh), from the comparison reports experiments/sweep_table.py keeps in
experiments/results/sweep_reference/, as DIR/dyn_eta_reference.png:

- left: each dyn_eta's change of pixel CRPS, CRPS w8 avg and CRPS w8 max against dyn_eta 0, with
  the 95% paired-bootstrap interval over the test sequences (one training seed: the interval does
  not cover the seeds' spread);
- right: the fair CRPS per lead time of each dyn_eta.

    $PY experiments/sweep_plot.py DIR      # PY=$(python/env.sh | tail -1)

Needs matplotlib (in python/requirements.txt).
"""

import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from decisive_plot import finish  # noqa: E402
from sweep_table import BASE, ETAS, KEPT, KEYS, run  # noqa: E402


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: sweep_plot.py DIR")
    out = pathlib.Path(sys.argv[1])
    reports = {e: json.loads(p.read_text()) for e in ETAS if (p := KEPT / run(e) / "compare.json").exists()}
    if BASE not in reports or len(reports) < 2:
        sys.exit(f"{KEPT}: dyn_eta {BASE} and at least one other value must be kept (experiments/sweep_table.py)")
    etas = [e for e in reports if e != BASE]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    largest = 0.0
    for i, (key, label) in enumerate(KEYS):
        x = [float(e) + 0.01 * (i - 1) for e in etas]
        c = [reports[e]["compare"]["scores"][key] for e in etas]
        y = [100 * v["change"] for v in c]
        largest = max(largest, *map(abs, y))
        err = [[100 * (v["change"] - v["ci95"][0]) for v in c], [100 * (v["ci95"][1] - v["change"]) for v in c]]
        left.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    left.axhline(0, color="grey", linewidth=0.5)
    if largest > 100:
        left.set_yscale("symlog", linthresh=50)  # a diverging value (the paper process's dyn_eta 1 was +1 270%)
    left.set_xlabel("dyn_eta")
    left.set_ylabel(f"change against dyn_eta {BASE} (%)")
    left.set_title("change against the standard model, 95% interval (negative: better)")
    left.legend(fontsize=8)

    for e, r in reports.items():
        right.plot([p["lead"] for p in r["per_lead"]], [p["crps"] for p in r["per_lead"]], marker="o",
                   linestyle="--" if e == BASE else "-", label=f"dyn_eta {e}")
    finish(fig, right, "Sensitivity to dyn_eta, reference process, 8 000 steps, seed 0",
           out / "dyn_eta_reference.png", legend_size=8)


if __name__ == "__main__":
    main()
