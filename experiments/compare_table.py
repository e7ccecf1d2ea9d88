"""Tables of experiments/compare.sh: DYffusion against Dynamical Diffusion and the standard model.

    python3 experiments/compare_table.py OUT [BIN]     # BIN: a dydiff binary, default target/release/dydiff

For each dataset (OUT/ns, OUT/mesh) and method, over the seeds found: fair and standard CRPS, RMSE
of the ensemble mean and the spread-skill ratio over the 12-frame roll-out (mean ± standard
deviation over seeds), the network calls and sampler seconds per forecast (from dydiff sample's
summary line of the timing run, OUT/*/METHOD_seed*.timing.txt, when there is one), the networks'
parameters, the optimizer steps and the training wall time (from the training logs); then the
fair CRPS per lead; then, per seed, the paired changes of the fair CRPS between the models with
their 95% intervals (`dydiff eval --compare`: a paired bootstrap over the test sequences, 10 000
resamples; it covers the sampling of the test sequences, not the training seed's, whose spread the
seeds' columns show).

Each run's summary (its scores, sampling and training figures) and each comparison are kept in
experiments/results/compare/DATASET/ (small, committed: a machine's output folder does not outlive
it); a run present in OUT is summarised again from there, a comparison is made only where it is
not yet kept (delete it to compare again). Standard library only.
"""

import json
import math
import pathlib
import re
import statistics
import struct
import subprocess
import sys

METHODS = [("dyffusion", "DYffusion"), ("dydiff", "DyDiff (dyn_eta 0.5)"), ("standard", "standard (dyn_eta 0)")]
DATASETS = [("ns", "Turbulence (32², 4 history frames, horizon 6)"),
            ("mesh", "Spring mesh (10×10, 2 history frames, horizon 6)")]
# the paired comparisons: (this, other); change = this / other - 1
PAIRS = [("dyffusion", "standard"), ("dydiff", "standard"), ("dyffusion", "dydiff")]
KEPT = pathlib.Path(__file__).resolve().parent / "results" / "compare"
SEED = re.compile(r"_seed(\d+)\.eval\.json$")


def params(weights):
    """Parameters of a safetensors file, from its header."""
    with open(weights, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def training(run):
    """(parameters, steps, wall seconds) of a model folder, summed over its networks."""
    total_p, steps, secs = 0, [], 0.0
    # the interpolator (stage 1) first
    logs = sorted(run.glob("train_log*.jsonl"), key=lambda p: "forecaster" in p.name)
    for log in logs:
        prev = 0
        last = 0
        for line in log.read_text().splitlines():
            v = json.loads(line)
            secs += (v["step"] - prev) / max(v["steps_per_s"], 1e-9)
            prev = last = v["step"]
        steps.append(last)
    for w in sorted(run.glob("*/diffusion_pytorch_model.safetensors")):
        total_p += params(w)
    return total_p, "+".join(str(s) for s in steps), secs


def sampling(txt):
    """(network calls per member, sampler seconds per sample) from dydiff sample's summary line."""
    line = [l for l in txt.read_text().splitlines() if l.startswith("dydiff: wrote")][-1]
    calls = int(re.search(r"(\d+) network calls per member", line).group(1))
    samples = int(re.search(r"\((\d+) samples", line).group(1))
    net = float(re.search(r"network ([\d.]+) s", line).group(1))
    other = float(re.search(r"sampler other ([\d.]+) s", line).group(1))
    return calls, (net + other) / samples


def summary(d, kept, key, seed):
    """The run's summary: made from OUT's dataset folder `d` where the run's scores are there (and
    kept), else the kept one; None where neither is."""
    run = f"{key}_seed{seed}"
    path = kept / f"{run}.json"
    if (d / f"{run}.eval.json").exists():
        v = json.loads((d / f"{run}.eval.json").read_text())
        calls, per_sample = sampling(d / f"{run}.sample.txt")
        timed = d / f"{run}.timing.txt"
        p, steps, wall = training(d / run)
        out = {"overall": v["overall"], "per_lead": [l["crps"] for l in v["per_lead"]],
               "calls_per_member": calls, "sample_s_per_forecast": per_sample,
               "timing_s_per_forecast": sampling(timed)[1] if timed.exists() else None,
               "parameters": p, "training_steps": steps, "training_s": wall}
        kept.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1) + "\n")
        return out
    return json.loads(path.read_text()) if path.exists() else None


def compared(d, kept, this, other, seed, binary):
    """The paired comparison of two runs' fair CRPS (`eval --compare`'s "crps" entry), kept; None
    where it is not kept and either forecast is missing."""
    path = kept / f"{this}_vs_{other}_seed{seed}.json"
    if not path.exists():
        a, b = d / f"{this}_seed{seed}.forecast.npy", d / f"{other}_seed{seed}.forecast.npy"
        if not (a.exists() and b.exists()):
            return None
        report = d / f"{this}_vs_{other}_seed{seed}.compare.json"
        subprocess.run([binary, "eval", "--forecast", str(a), "--truth", str(d / "test.npy"), "--compare", str(b),
                        "--json", str(report)], check=True, stdout=subprocess.DEVNULL)
        c = json.loads(report.read_text())["compare"]
        kept.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: c[k] for k in ("samples", "resamples", "seed")}
                                   | {"crps": c["scores"]["crps"], "crps_standard": c["scores"]["crps_standard"]},
                                   indent=1) + "\n")
    return json.loads(path.read_text())


def interval(c):
    """An `eval --compare` score entry as "change% [low, high]" (percent)."""
    lo, hi = c["ci95"]
    return f"{100 * c['change']:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def fmt(values, digits=4):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def seeds_of(d, kept, key):
    found = {int(m[1]) for f in d.glob(f"{key}_seed*.eval.json") if (m := SEED.search(f.name))}
    found |= {int(m[1]) for f in kept.glob(f"{key}_seed*.json") if (m := re.search(rf"^{key}_seed(\d+)\.json$", f.name))}
    return sorted(found)


def main(out, binary):
    out = pathlib.Path(out)
    names = dict(METHODS)
    for ds, title in DATASETS:
        d, kept = out / ds, KEPT / ds
        rows, leads, runs = [], {}, {}
        for key, name in METHODS:
            found = {s: r for s in seeds_of(d, kept, key) if (r := summary(d, kept, key, s)) is not None}
            if not found:
                continue
            runs[key] = found
            reports = [found[s] for s in sorted(found)]
            first = reports[0]
            # sampler time: the timing run's (an otherwise idle machine) where there is one, else
            # the first seed's forecast's
            timed = [r["timing_s_per_forecast"] for r in reports if r["timing_s_per_forecast"] is not None]
            secs = timed[0] if timed else first["sample_s_per_forecast"]
            leads[name] = [statistics.mean(x) for x in zip(*(r["per_lead"] for r in reports))]
            col = lambda k: [r["overall"][k] for r in reports]
            rows.append(f"| {name} | {fmt(col('crps'))} | {fmt(col('crps_standard'))} | {fmt(col('rmse'))} | "
                        f"{fmt(col('ssr'), 2)} | {first['calls_per_member']} | {secs:.2f} | "
                        f"{first['parameters'] / 1e6:.2f} M | {first['training_steps']} | "
                        f"{statistics.mean(r['training_s'] for r in reports) / 60:.0f} min | {len(reports)} |")
        if not rows:
            continue
        print(f"### {title}\n")
        print("| model | fair CRPS | standard CRPS | RMSE | SSR | network calls per member | s per forecast "
              "| parameters | training steps | training time | seeds |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print("\nFair CRPS per lead (mean over seeds):\n")
        n_leads = max(len(v) for v in leads.values())
        print("| model | " + " | ".join(str(i + 1) for i in range(n_leads)) + " |")
        print("|---|" + "---|" * n_leads)
        for name, v in leads.items():
            print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
        pairs = [(a, b) for a, b in PAIRS if a in runs and b in runs]
        seeds = sorted(set().union(*(set(r) for r in runs.values())))
        cells = {(a, b, s): c for a, b in pairs for s in seeds if s in runs[a] and s in runs[b]
                 and (c := compared(d, kept, a, b, s, binary)) is not None}
        if cells:
            print("\nPaired change of the fair CRPS (this / other − 1; 95% bootstrap interval over the test "
                  "sequences, per seed):\n")
            print("| this against other | " + " | ".join(f"seed {s}" for s in seeds) + " |")
            print("|---|" + "---|" * len(seeds))
            for a, b in pairs:
                row = []
                for s in seeds:
                    c = cells.get((a, b, s))
                    row.append("–" if c is None else interval(c["crps"]))
                print(f"| {names[a]} against {names[b]} | " + " | ".join(row) + " |")
        print()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "target/release/dydiff")
