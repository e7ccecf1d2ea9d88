"""The table of experiments/sweep_reference.sh: the sensitivity to dyn_eta under the reference
process at 8 000 steps, seed 0, from the runs OUT/reference_eta{e}_seed0.

For each dyn_eta: pixel CRPS, CRPS w8 avg, CRPS w8 max, RMSE and SSR of its forecast of the 64 test
sequences (`dydiff eval`, dydiff's protocol), the fair CRPS per lead, and its change against
dyn_eta 0 with the 95% interval of a paired bootstrap over the test sequences (`dydiff eval
--compare`, 10 000 resamples) for pixel CRPS, w8 avg and w8 max. The interval covers the sampling
of the test sequences only, not the training seed's.

    python3 experiments/sweep_table.py [OUT] [BIN]   # default experiments/out_decisive, target/release/dydiff

Standard library only. Each run's comparison report (`eval --compare --json`, which holds its
scores too) is kept in experiments/results/sweep_reference/reference_eta{e}_seed0/compare.json
(small, committed), computed from OUT only where it is not yet kept (delete it to compare again).
"""

import json
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from compare_table import interval  # noqa: E402

OUT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/out_decisive")
BIN = sys.argv[2] if len(sys.argv) > 2 else "target/release/dydiff"
KEPT = pathlib.Path(__file__).resolve().parent / "results" / "sweep_reference"
ETAS = ["0", "0.1", "0.5", "0.9", "1"]
BASE = "0"
KEYS = [("crps", "pixel CRPS"), ("crps_pool8_avg", "CRPS w8 avg"), ("crps_pool8_max", "CRPS w8 max")]


def run(eta: str) -> str:
    return f"reference_eta{eta}_seed0"


def kept(eta: str):
    """The kept comparison report of dyn_eta `eta` against BASE, made from OUT where missing; None
    where neither it nor a finished run is there."""
    path = KEPT / run(eta) / "compare.json"
    if not path.exists():
        this, base = OUT / run(eta) / "forecast.npy", OUT / run(BASE) / "forecast.npy"
        if not (this.exists() and base.exists() and (OUT / run(eta) / "eval.json").exists()):
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([BIN, "eval", "--forecast", str(this), "--truth", str(OUT / "test.npy"),
                        "--compare", str(base), "--json", str(path)], check=True, stdout=subprocess.DEVNULL)
    return json.loads(path.read_text())


def main():
    reports = {e: r for e in ETAS if (r := kept(e)) is not None}
    if BASE not in reports:
        sys.exit(f"{OUT}: no finished dyn_eta {BASE} run ({run(BASE)}) to compare with")
    leads = len(reports[BASE]["per_lead"])
    cols = ["dyn_eta"] + [label for _, label in KEYS] + ["RMSE", "SSR"] + [f"{label} vs dyn_eta {BASE} [95%]" for _, label in KEYS]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for e, r in reports.items():
        o = r["overall"]
        cells = [e] + [f"{o[k]:.4f}" for k, _ in KEYS] + [f"{o['rmse']:.4f}", f"{o['ssr']:.2f}"]
        cells += ["—" if e == BASE else interval(r["compare"]["scores"][k]) for k, _ in KEYS]
        print("| " + " | ".join(cells) + " |")
    print("\nFair CRPS per lead:\n")
    print("| dyn_eta | " + " | ".join(str(i + 1) for i in range(leads)) + " |")
    print("|" + "---|" * (leads + 1))
    for e, r in reports.items():
        print(f"| {e} | " + " | ".join(f"{p['crps']:.3f}" for p in r["per_lead"]) + " |")
    missing = [e for e in ETAS if e not in reports]
    if missing:
        print(f"\nnot yet run: dyn_eta {', '.join(missing)}")


if __name__ == "__main__":
    main()
