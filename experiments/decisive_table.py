"""The outcome of the pre-registered experiment (docs/reproduction.md, "Pre-registered: the reference process at
8 000 steps on three seeds"; experiments/decisive.sh), from the runs in OUT.

For each seed s with both runs (OUT/reference_eta0.5_seed{s} and OUT/reference_eta0_seed{s}),
each forecast is scored again with `dydiff eval --per-sample` under dydiff's protocol (the rule's)
and under the reference implementation's (`--protocol reference-turbulence`, reported beside it,
not part of the rule); then:

- per seed, each model's scores and the paired change Δ_s = DyDiff_s / standard_s − 1 of pixel
  CRPS, CRPS w8 avg and CRPS w8 max, and each network's noise-prediction error (bench noise);
- the mean Δ over the seeds, and the 95% paired-bootstrap interval of the mean pixel-CRPS Δ:
  10 000 resamples of the held-out sequences, the same resample for both models and every seed
  (random.Random(0)), each seed's Δ recomputed from the per-sample scores (every sequence has the
  same pixels, so a resample's score is the mean of its sequences'), then their mean; percentile
  interval;
- the verdict of the rule's four conditions, each with its value.

    python3 experiments/decisive_table.py [OUT] [BIN]    # default experiments/out_decisive, target/release/dydiff

Standard library only. Each finished run's per-sample scores and noise errors are kept in
experiments/results/decisive/{run}/ (eval_rule.json, eval_reference.json, noise.json; small, and
committed): the study's runs span machines whose output folders are not kept, and the table is
computed from what is kept there, scoring a run's forecast in OUT only where its scores are not yet
kept (delete them to score again).
"""

import json
import pathlib
import random
import statistics
import subprocess
import sys

OUT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/out_decisive")
BIN = sys.argv[2] if len(sys.argv) > 2 else "target/release/dydiff"
KEPT = pathlib.Path(__file__).resolve().parent / "results" / "decisive"
FILES = {"dydiff": "eval_rule.json", "reference-turbulence": "eval_reference.json"}
SEEDS = [0, 1, 2]
KEYS = [("crps", "pixel CRPS"), ("crps_pool8_avg", "CRPS w8 avg"), ("crps_pool8_max", "CRPS w8 max")]
RESAMPLES = 10_000
MODELS = [("0.5", "DyDiff (dyn_eta 0.5)"), ("0", "standard (dyn_eta 0)")]


def keep(run: str) -> bool:
    """Scores OUT/run's finished forecast under both protocols into KEPT/run, with its noise errors;
    false where neither the kept scores nor a finished run is there."""
    kept, out = KEPT / run, OUT / run
    if all((kept / f).exists() for f in [*FILES.values(), "noise.json"]):
        return True
    if not all((out / f).exists() for f in ["forecast.npy", "eval.json", "noise.json"]):
        return False
    kept.mkdir(parents=True, exist_ok=True)
    for protocol, name in FILES.items():
        if not (kept / name).exists():
            subprocess.run([BIN, "eval", "--forecast", str(out / "forecast.npy"), "--truth", str(OUT / "test.npy"),
                            "--protocol", protocol, "--per-sample", "--json", str(kept / name)],
                           check=True, stdout=subprocess.DEVNULL)
    (kept / "noise.json").write_text((out / "noise.json").read_text())
    return True


def scored(run: pathlib.Path, protocol: str) -> dict:
    return json.loads((run / FILES[protocol]).read_text())


def main() -> None:
    runs = {}
    for seed in SEEDS:
        names = [f"reference_eta{eta}_seed{seed}" for eta, _ in MODELS]
        if all([keep(name) for name in names]):
            runs[seed] = [KEPT / name for name in names]
    if not runs:
        sys.exit(f"{KEPT} and {OUT}: no seed with both runs finished yet")
    seeds = sorted(runs)
    print(f"Seeds with both runs: {seeds} (of {SEEDS})\n")

    rule = {s: [scored(r, "dydiff") for r in runs[s]] for s in seeds}
    ref = {s: [scored(r, "reference-turbulence") for r in runs[s]] for s in seeds}
    noise = {s: [json.loads((r / "noise.json").read_text()) for r in runs[s]] for s in seeds}

    print("| seed | model | " + " | ".join(label for _, label in KEYS)
          + " | reference protocol: CRPS | w8 avg | w8 max | noise error t = 50 / 250 / 500 / 750 / 950 |")
    print("|---|---|" + "---|" * (len(KEYS) + 4))
    for s in seeds:
        for i, (_, label) in enumerate(MODELS):
            o, r = rule[s][i]["overall"], ref[s][i]["overall"]
            nz = noise[s][i]
            nerr = " / ".join(f"{e['mse_future']:.4f}" for e in nz["timesteps"])
            refs = " | ".join("—" if r[k] is None else f"{r[k]:.4f}" for k, _ in KEYS)
            print(f"| {s} | {label} | " + " | ".join(f"{o[k]:.4f}" for k, _ in KEYS) + f" | {refs} | {nerr} |")

    def change(seed, key, idx=None, reports=rule):
        a, b = (reports[seed][i] for i in range(2))
        if idx is None:
            return a["overall"][key] / b["overall"][key] - 1
        va = [a["per_sample"][n][key] for n in idx]
        vb = [b["per_sample"][n][key] for n in idx]
        return sum(va) / sum(vb) - 1

    print("\nPaired change Δ_s = DyDiff / standard − 1 (dydiff's protocol; negative: DyDiff better):\n")
    print("| score | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    print("|---|" + "---|" * (len(seeds) + 1))
    means = {}
    for k, label in KEYS:
        d = [change(s, k) for s in seeds]
        means[k] = statistics.mean(d)
        print(f"| {label} | " + " | ".join(f"{100 * v:+.1f}%" for v in d) + f" | {100 * means[k]:+.1f}% |")

    n = len(rule[seeds[0]][0]["per_sample"])
    rng = random.Random(0)
    boot = []
    for _ in range(RESAMPLES):
        idx = [rng.randrange(n) for _ in range(n)]
        boot.append(statistics.mean(change(s, "crps", idx) for s in seeds))
    boot.sort()
    lo, hi = boot[int(0.025 * (RESAMPLES - 1))], boot[int(0.975 * (RESAMPLES - 1))]
    print(f"\nMean pixel-CRPS Δ {100 * means['crps']:+.1f}%, 95% paired-bootstrap interval"
          f" [{100 * lo:+.1f}%, {100 * hi:+.1f}%] ({RESAMPLES} resamples of the {n} held-out sequences)")

    crps_d = [change(s, "crps") for s in seeds]
    conditions = [
        ("(1) mean Δ ≤ −10% for pixel CRPS and CRPS w8 avg",
         means["crps"] <= -0.10 and means["crps_pool8_avg"] <= -0.10,
         f"{100 * means['crps']:+.1f}%, {100 * means['crps_pool8_avg']:+.1f}%"),
        ("(2) mean Δ of CRPS w8 max ≤ 0", means["crps_pool8_max"] <= 0, f"{100 * means['crps_pool8_max']:+.1f}%"),
        ("(3) pixel-CRPS Δ negative for every seed", all(v < 0 for v in crps_d),
         ", ".join(f"{100 * v:+.1f}%" for v in crps_d)),
        ("(4) the interval excludes 0", hi < 0 or lo > 0, f"[{100 * lo:+.1f}%, {100 * hi:+.1f}%]"),
    ]
    print()
    for text, ok, val in conditions:
        print(f"- {text}: {'holds' if ok else 'fails'} ({val})")
    complete = seeds == SEEDS
    verdict = all(ok for _, ok, _ in conditions)
    print(f"\nOutcome: {'REPRODUCED' if verdict else 'NOT REPRODUCED'}"
          + ("" if complete else f" — provisional: {len(seeds)} of {len(SEEDS)} seeds"))


if __name__ == "__main__":
    main()
