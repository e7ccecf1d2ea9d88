"""The figure of the pre-registered experiment (docs/reproduction.md, "Pre-registered: the reference
process at 8 000 steps on three seeds"), from the kept per-sample scores in
experiments/results/decisive/ (experiments/decisive_table.py keeps them), as DIR/decisive.png:

- left: each seed's paired change Δ_s = DyDiff_s / standard_s − 1 of pixel CRPS, CRPS w8 avg and
  CRPS w8 max (dydiff's protocol), with the mean over the seeds and the rule's thresholds (−10%
  for the first two, 0 for w8 max); hollow, the same on the field's interior where
  experiments/decisive_interior.py kept it (beside the rule, not part of it);
- right: the fair CRPS per lead time of each seed's pair (DyDiff solid, the standard model dashed).

    $PY experiments/decisive_plot.py DIR      # PY=$(python/env.sh | tail -1)

Needs matplotlib (in python/requirements.txt).
"""

import json
import pathlib
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from decisive_table import KEPT, KEYS, MODELS, SEEDS, scored  # noqa: E402

MARKERS = {0: "o", 1: "s", 2: "^"}  # by seed


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: decisive_plot.py DIR")
    out = pathlib.Path(sys.argv[1])
    runs, interior = {}, {}
    for seed in SEEDS:
        dirs = [KEPT / f"reference_eta{eta}_seed{seed}" for eta, _ in MODELS]
        if all((d / "eval_rule.json").exists() for d in dirs):
            runs[seed] = [scored(d, "dydiff") for d in dirs]
            inner = [d / "eval_interior2.json" for d in dirs]
            if all(p.exists() for p in inner):
                interior[seed] = [json.loads(p.read_text())["overall"] for p in inner]
    if not runs:
        sys.exit(f"{KEPT}: no seed with both runs kept")

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (key, label) in enumerate(KEYS):
        changes = [100 * (runs[s][0]["overall"][key] / runs[s][1]["overall"][key] - 1) for s in runs]
        for s, c in zip(runs, changes):
            left.scatter(i + 0.08 * (s - 1), c, marker=MARKERS[s], color="tab:blue",
                         label=f"seed {s}" if i == 0 else None, zorder=3)
        for s in interior:
            c = 100 * (interior[s][0][key] / interior[s][1][key] - 1)
            left.scatter(i + 0.08 * (s - 1) + 0.3, c, marker=MARKERS[s], facecolors="none",
                         edgecolors="grey", label=f"seed {s}, interior (2-pixel border left out)" if i == 0 else None)
        mean = statistics.mean(changes)
        left.hlines(mean, i - 0.25, i + 0.25, color="black", label="mean over seeds" if i == 0 else None)
        threshold = 0 if key == "crps_pool8_max" else -10
        left.hlines(threshold, i - 0.35, i + 0.35, color="tab:red", linestyles="dotted",
                    label="the rule's threshold" if i == 0 else None)
    left.axhline(0, color="grey", linewidth=0.5)
    left.set_xticks(range(len(KEYS)), [label for _, label in KEYS])
    left.set_ylabel("DyDiff / standard − 1 (%)")
    left.set_title("paired change per seed (negative: DyDiff better)")
    left.legend(fontsize=8)

    for s in runs:
        for m, ((_, label), style) in enumerate(zip(MODELS, ["-", "--"])):
            leads = runs[s][m]["per_lead"]
            right.plot([e["lead"] for e in leads], [e["crps"] for e in leads], style,
                       marker=MARKERS[s], color=f"C{s}", label=f"seed {s}, {label}")
    finish(fig, right, "Reference process, 8 000 steps: DyDiff (dyn_eta 0.5) against the standard model",
           out / "decisive.png", legend_size=7)


def finish(fig, leads, title: str, path: pathlib.Path, legend_size: int) -> None:
    """Labels the axes `leads` of fair CRPS per lead time, titles the figure and writes it to `path`."""
    leads.set_xlabel("lead time (frames)")
    leads.set_ylabel("fair CRPS")
    leads.set_title("fair CRPS per lead time")
    leads.legend(fontsize=legend_size)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
