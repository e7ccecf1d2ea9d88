"""The figures of experiments/reproduce.sh, from the runs in OUT (see table.py), as PNG in DIR:

- per_lead_crps.png: the fair CRPS against lead time, DyDiff against the standard model, one
  panel per process (mean over seeds, the seeds' range shaded; runs at other budgets dotted);
- dyn_eta.png: the sensitivity to dyn_eta of process SENS (the paper's Figure 7c): the fair CRPS
  overall, at the first and at the last lead (log scale);
- noise_error.png: the networks' noise-prediction error on the future frames against the
  timestep (`dydiff bench noise`; runs at other budgets dotted).

    $PY experiments/plot.py OUT DIR [MAIN_ETAS] [SENS]      # PY=$(python/env.sh | tail -1)

Needs matplotlib (in python/requirements.txt).
"""

import pathlib
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from table import PROCESS, load  # noqa: E402

COLOUR = {"0": "tab:orange"}


def label(eta):
    return "standard DPM (dyn_eta 0)" if float(eta) == 0 else f"DyDiff (dyn_eta {eta})"


def per_lead(runs, key):
    reports = [r["eval"] for r in runs[key].values()]
    leads = len(reports[0]["per_lead"])
    vals = [[r["per_lead"][i]["crps"] for r in reports] for i in range(leads)]
    return (
        [i + 1 for i in range(leads)],
        [statistics.mean(v) for v in vals],
        [min(v) for v in vals],
        [max(v) for v in vals],
    )


def main():
    out, figs = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    main_etas = (sys.argv[3] if len(sys.argv) > 3 else "0.5 0").split()
    sens = sys.argv[4] if len(sys.argv) > 4 else "paper"
    runs = load(out)
    longer = load(out, budget=True)
    figs.mkdir(parents=True, exist_ok=True)

    processes = [p for p in PROCESS if any(k[0] == p and k[1] in main_etas for k in runs)]
    fig, axes = plt.subplots(1, len(processes), figsize=(5 * len(processes), 3.6), sharey=True, squeeze=False)
    for ax, p in zip(axes[0], processes):
        for e in main_etas:
            if (p, e) not in runs:
                continue
            x, m, lo, hi = per_lead(runs, (p, e))
            n = len(runs[(p, e)])
            c = COLOUR.get(e, "tab:blue")
            steps = next(iter(runs[(p, e)].values()))["steps"]
            ax.plot(x, m, "o-", color=c, label=f"{label(e)}, {steps} steps, {n} seed{'s' * (n > 1)}")
            ax.fill_between(x, lo, hi, color=c, alpha=0.2)
        for (lp, e, steps), by_seed in sorted(longer.items()):
            if lp == p:
                x, m, _, _ = per_lead(longer, (lp, e, steps))
                seeds = ", ".join(map(str, sorted(by_seed)))
                ax.plot(x, m, "o:", color=COLOUR.get(e, "tab:blue"), label=f"{label(e)}, {steps} steps, seed {seeds}")
        ax.set_title(PROCESS[p])
        ax.set_xlabel("lead time (frames)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("fair CRPS")
    fig.tight_layout()
    fig.savefig(figs / "per_lead_crps.png", dpi=110)
    plt.close(fig)

    etas = sorted((e for p, e in runs if p == sens), key=float)
    if len(etas) > 2:
        seeds = sorted(set.intersection(*(set(runs[(sens, e)]) for e in etas)))
        if seeds:
            fig, ax = plt.subplots(figsize=(5, 3.6))
            x = [float(e) for e in etas]
            reports = {e: [runs[(sens, e)][s]["eval"] for s in seeds] for e in etas}
            leads = len(reports[etas[0]][0]["per_lead"])
            series = [
                ("overall", lambda r: r["overall"]["crps"], "-"),
                ("lead 1", lambda r: r["per_lead"][0]["crps"], "--"),
                (f"lead {leads}", lambda r: r["per_lead"][leads - 1]["crps"], ":"),
            ]
            for name, get, style in series:
                ax.plot(x, [statistics.mean(get(r) for r in reports[e]) for e in etas], "o" + style, label=name)
            ax.set_xlabel("dyn_eta")
            ax.set_yscale("log")  # dyn_eta 1 can be an order of magnitude off the others
            ax.set_ylabel("fair CRPS")
            ax.set_title(f"{PROCESS[sens]}, seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(figs / "dyn_eta.png", dpi=110)
            plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for p, style in zip(PROCESS, ["o-", "s--"]):
        for e in main_etas:
            noise = [r["noise"] for r in runs.get((p, e), {}).values() if r["noise"]]
            if not noise:
                continue
            ts = [t["t"] for t in noise[0]["timesteps"]]
            m = [statistics.mean(r["timesteps"][i]["mse_future"] for r in noise) for i in range(len(ts))]
            ax.plot(ts, m, style, color=COLOUR.get(e, "tab:blue"), label=f"{label(e)}, {PROCESS[p]}")
    for (p, e, steps), by_seed in sorted(longer.items()):
        noise = [r["noise"] for r in by_seed.values() if r["noise"]]
        if noise:
            ts = [t["t"] for t in noise[0]["timesteps"]]
            m = [statistics.mean(r["timesteps"][i]["mse_future"] for r in noise) for i in range(len(ts))]
            ax.plot(ts, m, "^:", color=COLOUR.get(e, "tab:blue"), label=f"{label(e)}, {PROCESS[p]}, {steps} steps")
    ax.set_yscale("log")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("noise MSE, future frames")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figs / "noise_error.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
