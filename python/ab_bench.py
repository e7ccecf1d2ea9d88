"""Side-by-side timing of two dydiff builds: `dydiff bench unet` (or `bench train`), alternating
the binaries round by round so that both see the same machine load, and the median of every timed
repetition per binary, with the per-operation times of the profile.

    python3 python/ab_bench.py OLD_DYDIFF NEW_DYDIFF --unet UNET [--what unet|train]
        [--rounds 8] [--reps 3] [--batch 8] [--size 32] [--threads 2]

Standard library only. UNET is a diffusers UNet2DModel folder (python/bench_vs_pytorch.py writes
the benchmark UNet's).
"""

import argparse
import json
import statistics
import subprocess


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--unet", required=True)
    ap.add_argument("--what", default="unet", choices=["unet", "train"])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    times = {"old": [], "new": []}
    ops = {"old": {}, "new": {}}
    for _ in range(args.rounds):
        for name in ("old", "new"):
            cmd = [getattr(args, name), "--threads", str(args.threads), "bench", args.what,
                   "--unet", args.unet, "--batch", str(args.batch), "--size", str(args.size),
                   "--reps", str(args.reps), "--warmup", "1"]
            report = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                               text=True).stdout)
            times[name] += report["times_s"]
            for op, v in report["ops"].items():
                ops[name].setdefault(op, []).append(v["seconds"])
    print(f"bench {args.what}, batch {args.batch}, {args.size}x{args.size}, {args.threads} threads,"
          f" {args.rounds} rounds x {args.reps} reps; medians in ms")
    print(f"{'':24} {'old':>9} {'new':>9} {'new/old':>8}")
    rows = [("whole", times["old"], times["new"])]
    rows += [(op, ops["old"][op], ops["new"].get(op, [float("nan")])) for op in sorted(ops["old"])]
    for label, a, b in rows:
        ma, mb = statistics.median(a) * 1e3, statistics.median(b) * 1e3
        print(f"{label:24} {ma:9.2f} {mb:9.2f} {mb / ma if ma else float('nan'):8.3f}")


if __name__ == "__main__":
    main()
