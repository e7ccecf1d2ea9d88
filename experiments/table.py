"""The tables of experiments/reproduce.sh, as Markdown, from the runs in OUT:

1. the comparison: for every process and each `dyn_eta` of MAIN_ETAS (default 0.5 and 0), the
   mean ± standard deviation over its seeds of the main scores;
2. DyDiff against the standard model (`dyn_eta` 0) of the same process: the relative change of
   the mean fair CRPS, overall and per lead time (negative: DyDiff better);
3. the fair CRPS per lead time (mean ± standard deviation over seeds);
4. the networks' noise-prediction error on the future frames at fixed timesteps (`dydiff bench
   noise`);
5. the sensitivity to `dyn_eta` (the paper's Figure 7c): every `dyn_eta` of the process SENS
   (default paper), on the seeds that all of them share;
6. larger budgets: every run trained for another number of steps (folders ending in
   `_steps{N}`) beside the same model, process and seed at the main budget: the fair CRPS overall
   and per lead, and the noise-prediction error; and where both models of a process ran at such a
   budget, DyDiff's relative change against the standard model there.

    python3 experiments/table.py OUT [MAIN_ETAS] [SENS]     # e.g. OUT "0.5 0" paper

Runs are the folders OUT/{process}_eta{dyn_eta}_seed{seed}[_steps{N}] holding an eval.json (`dydiff eval
--json`) and a noise.json; process "paper" diffuses the future frames only, "reference" every
frame (docs/process.md). Standard library only.
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
RUN = re.compile(r"(paper|reference)_eta([0-9.]+)_seed(\d+)(?:_steps(\d+))?$")


def value(scores, key):
    if key == "csi":
        # the higher default threshold (the truth's 95th percentile), no pooling
        qs = [k for k in scores if k.startswith("csi_q") and k.endswith("_w1")]
        key = max(qs, key=lambda k: float(k[5:-3]))
    return scores[key]


def cell(vals, digits=4):
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.{digits}f} ± {sd:.{digits}f}"


def name(process, eta):
    model = "standard DPM" if float(eta) == 0 else "DyDiff"
    return f"{model} (dyn_eta {eta}), {PROCESS[process]}"


def load(out, budget=False):
    """{(process, eta): {seed: {"eval": report, "noise": report or None}}} of the main budget, or
    with `budget`, {(process, eta, steps): {seed: ...}} of the runs at other budgets."""
    runs = {}
    for d in sorted(out.iterdir()):
        m = RUN.match(d.name)
        if m and (m[4] is not None) == budget and (d / "eval.json").is_file():
            noise = d / "noise.json"
            key = (m[1], m[2], int(m[4])) if budget else (m[1], m[2])
            runs.setdefault(key, {})[int(m[3])] = {
                "eval": json.loads((d / "eval.json").read_text()),
                "noise": json.loads(noise.read_text()) if noise.is_file() else None,
                "steps": training_steps(d),
            }
    return runs


def training_steps(run):
    """The number of training steps the run's dydiff.json records, or "?"."""
    try:
        return str(json.loads((run / "dydiff.json").read_text())["training"]["steps"])
    except (OSError, KeyError, ValueError):
        return "?"


def row(cells):
    return "| " + " | ".join(cells) + " |"


def header(cells):
    return row(cells) + "\n|" + "---|" * len(cells)


def mean_crps(runs, key, lead=None):
    reports = [r["eval"] for r in runs[key].values()]
    if lead is None:
        return statistics.mean(r["overall"]["crps"] for r in reports)
    return statistics.mean(r["per_lead"][lead]["crps"] for r in reports)


def main():
    out = pathlib.Path(sys.argv[1])
    main_etas = (sys.argv[2] if len(sys.argv) > 2 else "0.5 0").split()
    sens = sys.argv[3] if len(sys.argv) > 3 else "paper"
    runs = load(out)
    if not runs:
        sys.exit(f"{out}: no finished runs (folders PROCESS_etaX_seedN with eval.json)")
    cells = [k for k in runs if k[1] in main_etas]
    cells.sort(key=lambda k: (k[0] != "paper", main_etas.index(k[1])))
    leads = len(next(iter(next(iter(runs.values())).values()))["eval"]["per_lead"])

    print(header(["model", "seeds"] + [label for _, label in KEYS]))
    for k in cells:
        seeds = ", ".join(str(s) for s in sorted(runs[k]))
        reports = [runs[k][s]["eval"] for s in sorted(runs[k])]
        print(row([name(*k), seeds] + [cell([value(r["overall"], key) for r in reports]) for key, _ in KEYS]))

    pairs = [(p, e) for p, e in cells if float(e) != 0 and (p, "0") in runs]
    if pairs:
        print("\nDyDiff against the standard model of the same process: change of the mean fair CRPS "
              "(negative: DyDiff lower, i.e. better):\n")
        print(header(["process", "overall"] + [f"lead {i + 1}" for i in range(leads)]))
        for p, e in pairs:
            rel = [mean_crps(runs, (p, e), i) / mean_crps(runs, (p, "0"), i) - 1 for i in [None] + list(range(leads))]
            print(row([f"{PROCESS[p]}, dyn_eta {e} vs 0"] + [f"{100 * v:+.1f}%" for v in rel]))

    print("\nFair CRPS per lead time (mean ± standard deviation over seeds):\n")
    print(header(["model"] + [f"lead {i + 1}" for i in range(leads)]))
    for k in cells:
        reports = [r["eval"] for r in runs[k].values()]
        print(row([name(*k)] + [cell([r["per_lead"][i]["crps"] for r in reports], 3) for i in range(leads)]))

    noise = {k: [r["noise"] for r in runs[k].values() if r["noise"]] for k in cells}
    noise = {k: v for k, v in noise.items() if v}
    if noise:
        ts = [t["t"] for t in next(iter(noise.values()))[0]["timesteps"]]
        print("\nNoise-prediction error on the future frames of held-out windows, MSE of ε̂ against ε̃ "
              "(`dydiff bench noise`, mean ± standard deviation over seeds):\n")
        print(header(["model"] + [f"t = {t}" for t in ts]))
        for k, reports in noise.items():
            print(row([name(*k)] + [cell([r["timesteps"][i]["mse_future"] for r in reports]) for i in range(len(ts))]))

    etas = sorted((e for p, e in runs if p == sens), key=float)
    if len(etas) > 2:
        shared = set.intersection(*(set(runs[(sens, e)]) for e in etas))
        if shared:
            seeds = sorted(shared)
            print(f"\nSensitivity to dyn_eta, {PROCESS[sens]} (seeds {', '.join(map(str, seeds))}; mean over them):\n")
            print(header(["dyn_eta", "CRPS", "CRPS w8 avg", "RMSE", "SSR"] + [f"lead {i + 1}" for i in range(leads)]))
            for e in etas:
                reports = [runs[(sens, e)][s]["eval"] for s in seeds]
                scores = [statistics.mean(value(r["overall"], key) for r in reports) for key in ("crps", "crps_pool8_avg", "rmse", "ssr")]
                per = [statistics.mean(r["per_lead"][i]["crps"] for r in reports) for i in range(leads)]
                print(row([e] + [f"{v:.4f}" for v in scores] + [f"{v:.3f}" for v in per]))

    longer = load(out, budget=True)
    if longer:
        print("\nOther budgets, beside the same model and seed at the main budget (fair CRPS overall and per lead; "
              "noise-prediction error on the future frames):\n")
        ts = []
        for (p, e, steps), by_seed in sorted(longer.items()):
            for seed, r in sorted(by_seed.items()):
                if r["noise"]:
                    ts = [t["t"] for t in r["noise"]["timesteps"]]
        print(header(["model", "seed", "steps", "CRPS"] + [f"lead {i + 1}" for i in range(leads)] + [f"noise t = {t}" for t in ts]))
        for (p, e, steps), by_seed in sorted(longer.items()):
            for seed, r in sorted(by_seed.items()):
                main_run = runs.get((p, e), {}).get(seed)
                for run in [main_run, r]:
                    if run is None:
                        continue
                    n = run["eval"]["per_lead"]
                    noise = [f"{x['mse_future']:.4f}" for x in run["noise"]["timesteps"]] if run["noise"] else [""] * len(ts)
                    print(row([name(p, e), str(seed), run["steps"], f"{run['eval']['overall']['crps']:.4f}"]
                              + [f"{n[i]['crps']:.3f}" for i in range(leads)] + noise))
        pairs = [(p, e, st) for p, e, st in longer if float(e) != 0 and (p, "0", st) in longer]
        if pairs:
            print("\nAt those budgets, DyDiff against the standard model of the same process and seeds: change of the "
                  "mean fair CRPS:\n")
            print(header(["process, steps", "seeds", "overall"] + [f"lead {i + 1}" for i in range(leads)]))
            for p, e, st in sorted(pairs):
                seeds = sorted(set(longer[(p, e, st)]) & set(longer[(p, "0", st)]))
                if not seeds:
                    continue
                sub = {k: {sd: longer[k][sd] for sd in seeds} for k in [(p, e, st), (p, "0", st)]}
                rel = [mean_crps(sub, (p, e, st), i) / mean_crps(sub, (p, "0", st), i) - 1
                       for i in [None] + list(range(leads))]
                print(row([f"{PROCESS[p]}, dyn_eta {e} vs 0, {st} steps", ", ".join(map(str, seeds))]
                          + [f"{100 * v:+.1f}%" for v in rel]))

    print("\nCRPS is the fair CRPS in data space.")


if __name__ == "__main__":
    main()
