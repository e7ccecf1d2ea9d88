"""The kernel lab's table: each op family's versions side by side (benches/kernel_lab.rs) — their
error against the CPU backend, their launches, the machine-code model's prediction of their time
on an H100 or H200 (python/sass_model.py, from the launches the emulator logged), and on a GPU the
measured device time — with the version each case would promote: the fastest measured, else the
fastest modelled (central), among those within the precision's bound.

    NVCC=… cargo build --release --features cuda      # the fatbin the model reads
    python3 python/kernel_lab.py [--gpu h100] [--markdown] [--json ROWS.json]
    python3 python/kernel_lab.py --lines LAB.jsonl --log LOG.jsonl   # an emulator run made before
    python3 python/kernel_lab.py --rows ROWS.json --measured GPU.jsonl  # with a GPU's times

Without --lines or --rows it runs `cargo bench --features cuda --bench kernel_lab` on the
emulator with the launch log in a temporary file (seconds). --rows takes the rows a run wrote
with --json (the model's predictions included: scripts/gpu-prepare.sh writes them, since the GPU
machine has no fatbin of its own to read), --measured the lab's lines from GPU 0
(`DYDIFF_LAB_DEVICE=cuda`), whose `device_us` join the rows (python/gpu_check.py). The weights' preparation
(`conv2d_weights_*`, once per model: a sampler's every step reuses the prepared weights) is left
out of a version's prediction. Standard library only.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sass  # noqa: E402
import sass_model  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_lab(log):
    env = dict(os.environ, DYDIFF_LAUNCH_LOG=str(log))
    out = subprocess.run(["cargo", "bench", "--quiet", "--features", "cuda", "--bench", "kernel_lab"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"kernel_lab failed:\n{out.stderr}")
    return out.stdout


def predict(launches, figures, gpu):
    """Seconds per scenario of a version's launches, without the once-per-model preparations."""
    total = {s: 0.0 for s in sass_model.SCENARIOS}
    for la in launches:
        if la["kernel"].startswith("conv2d_weights_"):
            continue
        fig = figures.get(la["kernel"])
        if fig is None:
            raise SystemExit(f"{la['kernel']}: not in the fatbin")
        for s, lat in sass_model.SCENARIOS.items():
            total[s] += sass_model.launch_time(la, fig, gpu, lat)[0]
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=pathlib.Path, help="the lab's output (one JSON line per version)")
    ap.add_argument("--log", type=pathlib.Path, help="the launch log of that run")
    ap.add_argument("--rows", type=pathlib.Path, help="rows written before with --json")
    ap.add_argument("--measured", type=pathlib.Path, help="the lab's lines from a GPU (device_us)")
    ap.add_argument("--fatbin")
    ap.add_argument("--gpu", default="h100", choices=sorted(sass_model.GPUS))
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", type=pathlib.Path, help="also write the rows as JSON")
    args = ap.parse_args()
    gpu = sass_model.GPUS[args.gpu]
    if args.rows:
        rows = json.loads(args.rows.read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            if args.lines:
                text, log = args.lines.read_text(), args.log
            else:
                log = pathlib.Path(tmp) / "launches.jsonl"
                text = run_lab(log)
            plan = [json.loads(l) for l in log.read_text().splitlines() if l.strip()] if log else []
        rows = [json.loads(l) for l in text.splitlines() if l.strip()]
        figures = sass.read(args.fatbin, 90)[1] if plan else {}
        for r in rows:
            launches = plan[r["log"][0]:r["log"][1]]
            r["launches"] = [la["kernel"] for la in launches]
            r["model_s"] = predict(launches, figures, gpu) if launches else None
    if args.measured:
        key = lambda r: (r["family"], r["case"], r["version"], r["precision"])  # noqa: E731
        lines = [json.loads(l) for l in args.measured.read_text().splitlines() if l.strip()]
        gpu_rows = {key(m): m for m in lines}
        for r in rows:
            m = gpu_rows.get(key(r))
            if m is not None:
                r["device_us"] = m.get("device_us")
                r["gpu_error"] = m["error"]
                r["holds"] = r["holds"] and m["holds"]
    # the promoted version of each case and precision
    best = {}
    for r in rows:
        if not r["holds"]:
            continue
        t = r.get("device_us")
        t = t * 1e-6 if t is not None else (r["model_s"] or {}).get("central")
        key = (r["family"], r["case"], r["precision"])
        if t is not None and (key not in best or t < best[key][0]):
            best[key] = (t, r["version"])
    head = ["family", "case", "precision", "version", "error (bound)", "vs first", "launches",
            f"modelled µs ({gpu['name']}: opt / central / pess)", "measured µs", "promoted"]
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    else:
        print("\t".join(head))
    for r in rows:
        m = r["model_s"]
        model = " / ".join(f"{m[s] * 1e6:.1f}" for s in sass_model.SCENARIOS) if m else "—"
        kernels = {}
        for k in r["launches"]:
            if not k.startswith("conv2d_weights_"):
                kernels[k] = kernels.get(k, 0) + 1
        used = ", ".join(f"{k}×{c}" if c > 1 else k for k, c in kernels.items()) or "—"
        measured = f"{r['device_us']:.1f}" if r.get("device_us") is not None else "—"
        promoted = "✓" if best.get((r["family"], r["case"], r["precision"]), (0, None))[1] == r["version"] else ""
        cells = [r["family"], r["case"], r["precision"], r["version"],
                 f"{r['error']:.1e} ({r['bound']:.0e}){'' if r['holds'] else ' FAILS'}",
                 f"{r['vs_first']:.1e}" if "vs_first" in r else "—", used, model,
                 measured, promoted]
        print(("| " + " | ".join(cells) + " |") if args.markdown else "\t".join(cells))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if not all(r["holds"] for r in rows):
        raise SystemExit("kernel_lab: a version is outside its bound")


if __name__ == "__main__":
    main()
