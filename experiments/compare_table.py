"""Tables of experiments/compare.sh: DYffusion against Dynamical Diffusion and the standard model.

    python3 experiments/compare_table.py OUT

For each dataset (OUT/ns, OUT/mesh) and method, over the seeds found: fair CRPS, RMSE of the
ensemble mean and the spread-skill ratio over the 12-frame roll-out (mean ± standard deviation
over seeds), the network calls and sampler seconds per forecast of 8 members (from dydiff sample's
summary line of the timing run, OUT/*/METHOD_seed*.timing.txt, when there is one), the networks'
parameters, the optimizer steps and the training wall time (from
the training logs); then the fair CRPS per lead. Standard library only.
"""

import json
import math
import pathlib
import re
import statistics
import struct
import sys

METHODS = [("dyffusion", "DYffusion"), ("dydiff", "DyDiff (dyn_eta 0.5)"), ("standard", "standard (dyn_eta 0)")]
DATASETS = [("ns", "Turbulence (32², 4 history frames, horizon 6)"),
            ("mesh", "Spring mesh (10×10, 2 history frames, horizon 6)")]


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
    """(network calls per member, sampler seconds, samples) from dydiff sample's summary line."""
    line = [l for l in txt.read_text().splitlines() if l.startswith("dydiff: wrote")][-1]
    calls = int(re.search(r"(\d+) network calls per member", line).group(1))
    samples = int(re.search(r"\((\d+) samples", line).group(1))
    net = float(re.search(r"network ([\d.]+) s", line).group(1))
    other = float(re.search(r"sampler other ([\d.]+) s", line).group(1))
    return calls, net + other, samples


def fmt(values, digits=4):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(out):
    out = pathlib.Path(out)
    for ds, title in DATASETS:
        d = out / ds
        if not d.is_dir():
            continue
        rows, leads = [], {}
        for key, name in METHODS:
            evals = sorted(d.glob(f"{key}_seed*.eval.json"))
            if not evals:
                continue
            crps, crps_std, rmse, ssr, per_lead, secs, calls, tr = [], [], [], [], [], [], None, None
            for e in evals:
                seed = e.name.split(".")[0]
                v = json.loads(e.read_text())
                crps.append(v["overall"]["crps"])
                crps_std.append(v["overall"]["crps_standard"])
                rmse.append(v["overall"]["rmse"])
                ssr.append(v["overall"]["ssr"])
                per_lead.append([l["crps"] for l in v["per_lead"]])
                timed = d / f"{seed}.timing.txt"
                c, s, n = sampling(timed if timed.exists() else d / f"{seed}.sample.txt")
                calls = c
                if timed.exists() or not secs:
                    secs = ([] if timed.exists() else secs) + [s / n]
                tr = training(d / seed)
            leads[name] = [statistics.mean(x) for x in zip(*per_lead)]
            p, steps, wall = tr
            rows.append(f"| {name} | {fmt(crps)} | {fmt(crps_std)} | {fmt(rmse)} | {fmt(ssr, 2)} | {calls} | "
                        f"{statistics.mean(secs):.2f} | {p / 1e6:.2f} M | {steps} | {wall / 60:.0f} min | {len(evals)} |")
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
        print()


if __name__ == "__main__":
    main(sys.argv[1])
