"""The GPU check: on a machine with an NVIDIA GPU, PyTorch + diffusers and no Rust toolchain, with
what scripts/gpu-prepare.sh built (the release binary and the CUDA test binaries in gpu-check/),
in a few minutes:

1. the machine: the GPU, driver, PyTorch, and `dydiff info`;
2. every CUDA test on the GPU (DYDIFF_TEST_DEVICE=cuda: the emulator's test bodies, on the device);
3. compute-sanitizer's memcheck on the product and convolution tests, where it is installed;
4. side by side with PyTorch on the same GPU, for the benchmark UNet of python/bench_vs_pytorch.py
   (same weights): the forward at batch 8 on 32×32 and at batch 64 on 64×64 — PyTorch eager with its
   defaults (TF32 convolutions), eager under bf16 autocast, torch.compile; dydiff at tf32 and fp32 —
   and the sampler (Dynamical Diffusion, 10 DDIM steps, batch 8 on 32×32), with dydiff's time per
   kernel, and for the forward at batch 8 on 32×32 each kernel's measured time beside the
   machine-code model's prediction (gpu-check/model.json from python/sass_model.py); and the
   kernel lab (benches/kernel_lab.rs): each op family's versions timed beside the model's
   prediction of each (gpu-check/lab_rows.json from python/kernel_lab.py);
5. a training step side by side (the same DyDiff step: windows of the data, the forward process,
   the UNet forward and backward, clipping by global norm, AdamW, the weight EMA) at batch 16 on
   32×32 and batch 64 on 64×64: PyTorch eager (its defaults: TF32 convolutions), eager under bf16
   autocast, torch.compile under bf16 autocast, each with its peak device memory; dydiff
   `train --device cuda` at tf32 and bf16 (the step time from its log) and `bench train` (time per
   kernel, peak device memory);
6. (not with --quick) bf16 against tf32 training: the reproduction's turbulence data
   (experiments/reproduce.sh's settings: 192 sequences of 16 frames at 32×32, the default network,
   batch 16, lr 1e-3 with cosine decay), 2000 steps at each precision with seeds 0 and 1, both loss
   curves, and whether bf16's final loss lies within the seed-to-seed spread of tf32's.

It writes gpu_check.json (everything) and gpu_check.md (the tables) to --out.

    python3 python/gpu_check.py --dir gpu-check --out OUT [--quick]
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
from bench_vs_pytorch import CONFIG, dyn, inv_dyn  # noqa: E402

REPORT = {"started": time.strftime("%Y-%m-%d %H:%M:%S")}


def log(msg):
    print(msg, flush=True)


def run(cmd, timeout, env=None):
    """(returncode, stdout, stderr, seconds); a timeout is returncode 124."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        return 124, e.stdout or "", e.stderr or "", time.perf_counter() - t0


def place(d: pathlib.Path) -> pathlib.Path:
    """Makes the paths the tests were built with point at this copy of the repository."""
    manifest = json.loads((d / "manifest.json").read_text())["manifest_dir"]
    built = pathlib.Path(manifest)
    if built.resolve() != ROOT.resolve():
        if not built.exists():
            built.parent.mkdir(parents=True, exist_ok=True)
            built.symlink_to(ROOT)
    binary = ROOT / "target" / "release" / "dydiff"
    binary.parent.mkdir(parents=True, exist_ok=True)
    if not binary.exists():
        shutil.copy(d / "dydiff", binary)
    binary.chmod(0o755)
    return binary


def machine(binary):
    m = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    m["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    rc, out, _, _ = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                         "--format=csv,noheader"], 30)
    m["nvidia_smi"] = out.strip() if rc == 0 else None
    rc, out, err, _ = run([str(binary), "info"], 60)
    m["dydiff_info"] = out.strip() or err.strip()
    log(json.dumps(m, indent=1))
    return m


def tests(d, env):
    results = []
    for t in sorted((d / "tests").iterdir()):
        t.chmod(0o755)
        # the crates' CUDA modules: ops::cuda::*, network::cuda_*, cli::cuda
        rc, out, err, secs = run([str(t), "cuda", "--test-threads", "1"], 300, env)
        summary = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", out)
        failures = re.findall(r"---- (\S+) stdout ----", out)
        results.append({"binary": t.name, "rc": rc, "seconds": round(secs, 1), "summary": summary,
                        "failed": failures, "tail": (out + err)[-3000:] if rc else ""})
        log(f"tests {t.name}: rc {rc}, {summary}, {secs:.1f} s")
    return results


def sanitizer(d, env):
    tool = shutil.which("compute-sanitizer")
    for base in [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]:
        if not tool and base and (pathlib.Path(base) / "bin" / "compute-sanitizer").exists():
            tool = str(pathlib.Path(base) / "bin" / "compute-sanitizer")
    if not tool:
        return {"skipped": "compute-sanitizer not found"}
    out = {}
    for filt in ["cuda::gemm::products_match", "cuda::conv::plain_convolutions"]:
        rc, o, e, secs = run([tool, "--tool", "memcheck", "--error-exitcode", "1", str(d / "tests" / "ops"),
                              filt, "--test-threads", "1"], 240, env)
        out[filt] = {"rc": rc, "seconds": round(secs, 1), "tail": (o + e)[-2000:]}
        log(f"compute-sanitizer {filt}: rc {rc} ({secs:.1f} s)")
    return out


def model_folder(tmp: pathlib.Path) -> pathlib.Path:
    torch.manual_seed(0)
    model = UNet2DModel(**CONFIG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    mdir = tmp / "model"
    model.save_pretrained(mdir / "unet")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                  set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading",
                  prediction_type="epsilon").save_config(mdir / "scheduler")
    (mdir / "dydiff.json").write_text(json.dumps(dict(
        method="dydiff", dyn_eta=0.5, history=4, future=6, channels=2, height=32, width=32,
        data_scale=4.0, data_shift=0.0)))
    return mdir


def torch_forward(mdir, batch, size, mode, reps):
    net = UNet2DModel.from_pretrained(mdir / "unet").cuda().eval()
    x = torch.randn(batch, CONFIG["in_channels"], size, size, device="cuda")
    t = torch.full((batch,), 500, device="cuda")
    f = torch.compile(net) if mode == "compile" else net

    def once():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "bf16"):
            return f(x, t).sample

    for _ in range(3):
        once()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        once()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def torch_sampler(mdir, mode, steps=10, hist=4, fut=6, ch=2, size=32, batch=8, dyn_eta=0.5):
    """The sampler of python/bench_vs_pytorch.py (docs/process.md, “One step”) on the GPU."""
    net = UNet2DModel.from_pretrained(mdir / "unet").cuda().eval()
    f = torch.compile(net) if mode == "compile" else net
    sched = DDIMScheduler.from_pretrained(mdir / "scheduler")
    sched.set_timesteps(steps)
    ab = sched.alphas_cumprod.double()
    gb = lambda a: dyn_eta * a + (1 - dyn_eta)  # noqa: E731

    hist_x = torch.randn(batch, hist, ch, size, size, device="cuda")

    def loop():
        ts = sched.timesteps.tolist()
        with torch.no_grad():
            x = dyn(torch.randn(batch, fut, ch, size, size, device="cuda"), float(gb(ab[ts[0]])))
            for i, t in enumerate(ts):
                a_t = float(ab[t])
                a_p = float(ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
                g_t, g_p = float(gb(a_t)), float(gb(a_p))
                inp = torch.cat([hist_x, x], 1).reshape(batch, -1, size, size)
                e = f(inp, t).sample.reshape(batch, fut, ch, size, size)
                y = (x - (1 - a_t) ** 0.5 * e) / a_t ** 0.5
                x0 = inv_dyn(torch.cat([dyn(hist_x, g_t)[:, -1:], y], 1), g_t)[:, 1:]
                ew = inv_dyn(e, g_t)
                d = dyn(torch.cat([hist_x, x0], 1), g_p)[:, hist:]
                x = a_p ** 0.5 * d + (1 - a_p) ** 0.5 * dyn(ew, g_p)
        torch.cuda.synchronize()

    loop()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        loop()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def dydiff_forward(binary, mdir, batch, size, precision, reps):
    rc, out, err, _ = run([str(binary), "--device", "cuda", "--precision", precision, "bench", "unet",
                           "--unet", str(mdir / "unet"), "--batch", str(batch), "--size", str(size),
                           "--reps", str(reps), "--warmup", "3"], 300)
    if rc:
        return {"error": err.strip()[-500:]}
    r = json.loads(out)
    return {"median_s": r["median_s"], "kernels": r.get("kernels", {})}


def dydiff_sampler(binary, mdir, tmp, precision):
    obs = tmp / "obs.npy"
    np.save(obs, np.random.default_rng(0).standard_normal((2, 4, 2, 32, 32)).astype(np.float32))
    res = []
    for i in range(2):  # the first run loads the module
        rc, out, err, secs = run([str(binary), "--device", "cuda", "--precision", precision, "sample",
                                  "--model", str(mdir), "--input", str(obs), "--members", "4", "--steps",
                                  "10", "--batch", "8", "--out", str(tmp / f"f{i}.npy")], 300)
        if rc:
            return {"error": err.strip()[-500:]}
        m = re.search(r"network ([\d.]+) s, sampler other ([\d.]+) s", err)
        res.append({"wall_s": secs, "network_s": float(m[1]), "other_s": float(m[2])} if m else {"wall_s": secs})
    return res[-1]


def dyn_batched(x, g):
    """Dyn_γ over dim 1 with one γ per sequence (g: (batch, 1, 1, 1))."""
    out = [x[:, 0]]
    for i in range(1, x.shape[1]):
        out.append(g.sqrt() * x[:, i] + (1 - g).sqrt() * out[-1])
    return torch.stack(out, 1)


def torch_train(mdir, batch, size, mode, steps=30, hist=4, fut=6, ch=2, dyn_eta=0.5):
    """The DyDiff training step of docs/process.md, “Training”, in PyTorch + diffusers: seconds per
    step (median of `steps` after warm-up) and the peak device memory."""
    torch.manual_seed(0)
    net = UNet2DModel.from_pretrained(mdir / "unet").cuda().train()
    params = list(net.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=True)
    f = torch.compile(net) if mode == "compile" else net
    ab = DDIMScheduler.from_pretrained(mdir / "scheduler").alphas_cumprod.float().cuda()
    data = torch.randn(64, hist + fut, ch, size, size, device="cuda")

    def step():
        idx = torch.randint(0, data.shape[0], (batch,), device="cuda")
        t = torch.randint(0, 1000, (batch,), device="cuda")
        a = ab[t].view(-1, 1, 1, 1)
        g = dyn_eta * a + (1 - dyn_eta)
        x0 = data[idx]
        eps = dyn_batched(torch.randn(batch, fut, ch, size, size, device="cuda"), g)
        d = dyn_batched(x0, g)[:, hist:]
        xt = a.unsqueeze(1).sqrt() * d + (1 - a.unsqueeze(1)).sqrt() * eps
        inp = torch.cat([x0[:, :hist], xt], 1).reshape(batch, -1, size, size)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode in ("bf16", "compile")):
            out = f(inp, t).sample
        loss = torch.nn.functional.mse_loss(out.float(), eps.reshape(batch, -1, size, size))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1 - 0.999)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)),
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved()}


def dydiff_train(binary, mdir, tmp, batch, size, precision, steps=60, hist=4, fut=6, ch=2):
    """`dydiff train --device cuda` on random sequences (the step time of its last log line, after
    warm-up) and `bench train` (per-kernel times and the peak device memory)."""
    data = tmp / f"train_{size}.npy"
    if not data.exists():
        np.save(data, np.random.default_rng(0).standard_normal((64, hist + fut, ch, size, size))
                .astype(np.float32))
    cfg = tmp / "unet_config.json"
    cfg.write_text(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in CONFIG.items()}))
    out = tmp / f"run_{batch}_{size}_{precision}"
    shutil.rmtree(out, ignore_errors=True)
    rc, _, err, secs = run([str(binary), "--device", "cuda", "--precision", precision, "train",
                            "--data", str(data), "--out", str(out), "--unet-config", str(cfg),
                            "--history", str(hist), "--future", str(fut), "--dyn-eta", "0.5",
                            "--batch", str(batch), "--steps", str(steps), "--lr", "1e-4",
                            "--log-every", str(steps // 3), "--checkpoint-every", str(10 * steps)],
                           600)
    if rc:
        return {"error": err.strip()[-500:]}
    last = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    res = {"median_s": 1.0 / last["steps_per_s"], "wall_s": secs, "final_loss": last["loss"]}
    rc, out_b, err, _ = run([str(binary), "--device", "cuda", "--precision", precision, "bench",
                             "train", "--unet", str(mdir / "unet"), "--batch", str(batch), "--size",
                             str(size), "--reps", "10", "--warmup", "3"], 600)
    if rc:
        res["bench_error"] = err.strip()[-500:]
    else:
        r = json.loads(out_b)
        res.update(bench_median_s=r["median_s"], peak_device_bytes=r.get("peak_device_bytes"),
                   kernels=r.get("kernels", {}))
    return res


def precision_curves(binary, tmp, steps=2000):
    """Loss curves of `dydiff train --device cuda` at tf32 and bf16, seeds 0 and 1, and the final
    loss of each (the mean of the last quarter's log lines)."""
    data = tmp / "turbulence.npy"
    rc, _, err, _ = run([str(binary), "data", "navier-stokes", "--out", str(data), "--samples", "192",
                         "--frames", "16", "--resolution", "32", "--seed", "1"], 600)
    if rc:
        return {"error": err.strip()[-500:]}
    runs = {}
    for precision in ["tf32", "bf16"]:
        for seed in [0, 1]:
            out = tmp / f"curve_{precision}_{seed}"
            rc, _, err, secs = run([str(binary), "--device", "cuda", "--precision", precision, "train",
                                    "--data", str(data), "--out", str(out), "--history", "4",
                                    "--future", "6", "--dyn-eta", "0.5", "--batch", "16", "--steps",
                                    str(steps), "--lr", "1e-3", "--warmup-steps", "100", "--cosine",
                                    "--log-every", "50", "--checkpoint-every", str(steps),
                                    "--seed", str(seed)], 600)
            if rc:
                runs[f"{precision} seed {seed}"] = {"error": err.strip()[-500:]}
                continue
            log_lines = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
            curve = [(l["step"], l["loss"]) for l in log_lines]
            tail = [v for _, v in curve[-max(1, len(curve) // 4):]]
            runs[f"{precision} seed {seed}"] = {"curve": curve, "final_loss": float(np.mean(tail)),
                                                 "wall_s": secs}
    try:
        tf = [runs[f"tf32 seed {s}"]["final_loss"] for s in (0, 1)]
        bf = [runs[f"bf16 seed {s}"]["final_loss"] for s in (0, 1)]
        lo, hi = min(tf), max(tf)
        spread = hi - lo
        runs["bf16 within the tf32 seed spread"] = all(lo - spread <= v <= hi + spread for v in bf)
    except (KeyError, TypeError):
        pass
    return runs


def model_vs_measured(d, measured):
    """The machine-code model's per-kernel prediction of the benchmark forward (batch 8, 32×32,
    TF32; gpu-check/model.json, written by scripts/gpu-prepare.sh from python/sass_model.py)
    beside the kernel times measured here: the first calibration of the model."""
    path = d / "model.json"
    if not path.exists() or not isinstance(measured, dict):
        return {"skipped": "no gpu-check/model.json or no measured forward"}
    model = json.loads(path.read_text())
    rows = {}
    for name, m in model["kernels"].items():
        got = measured.get("kernels", {}).get(name, {})
        rows[name] = dict(m, measured_s=got.get("seconds"), measured_launches=got.get("launches"))
    total = sum(r["measured_s"] or 0.0 for r in rows.values())
    return {"gpu_modelled": model["gpu"], "total_modelled": model["total"], "total_measured_s": total,
            "kernels": rows}


def kernel_lab(d, out):
    """The kernel lab on GPU 0 (benches/kernel_lab.rs, `DYDIFF_LAB_DEVICE=cuda`): each family's
    versions timed, joined by python/kernel_lab.py to the rows gpu-prepare.sh wrote with the
    model's predictions (gpu-check/lab_rows.json); the markdown table."""
    lab, rows = d / "kernel_lab", d / "lab_rows.json"
    if not lab.exists() or not rows.exists():
        return {"skipped": "no gpu-check/kernel_lab or lab_rows.json"}
    code, stdout, stderr, secs = run([str(lab)], 600, dict(os.environ, DYDIFF_LAB_DEVICE="cuda"))
    if code != 0:
        return {"error": stderr[-2000:], "seconds": secs}
    measured = out / "lab_gpu.jsonl"
    measured.write_text(stdout)
    code, table, stderr, _ = run([sys.executable, str(ROOT / "python" / "kernel_lab.py"), "--rows", str(rows),
                                  "--measured", str(measured), "--markdown"], 120)
    return {"table": table, "holds": code == 0, "error": stderr[-2000:] if code else None, "seconds": secs}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="gpu-check")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"))
    ap.add_argument("--quick", action="store_true", help="tests and the small shape only")
    a = ap.parse_args()
    d, out = pathlib.Path(a.dir).resolve(), pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    binary = place(d)
    env = dict(os.environ, DYDIFF_TEST_DEVICE="cuda")
    REPORT["machine"] = machine(binary)
    REPORT["tests"] = tests(d, env)
    REPORT["sanitizer"] = sanitizer(d, env) if not a.quick else {"skipped": "--quick"}
    tmp = pathlib.Path(tempfile.mkdtemp())
    mdir = model_folder(tmp)
    shapes = [(8, 32)] if a.quick else [(8, 32), (64, 64)]
    fwd = {}
    for batch, size in shapes:
        key = f"batch {batch}, {size}x{size}"
        fwd[key] = {}
        for mode in ["eager", "bf16", "compile"]:
            try:
                fwd[key][f"pytorch {mode}"] = torch_forward(mdir, batch, size, mode, 20)
            except Exception as e:  # torch.compile may be unavailable (no Triton, no compiler)
                fwd[key][f"pytorch {mode}"] = f"error: {e}"[:300]
        for precision in ["tf32", "fp32"]:
            fwd[key][f"dydiff {precision}"] = dydiff_forward(binary, mdir, batch, size, precision, 20)
        log(f"forward {key}: " + json.dumps({k: v if not isinstance(v, dict) else v.get("median_s", v)
                                              for k, v in fwd[key].items()}))
    REPORT["forward"] = fwd
    REPORT["model_vs_measured"] = model_vs_measured(d, fwd.get("batch 8, 32x32", {}).get("dydiff tf32"))
    REPORT["kernel_lab"] = kernel_lab(d, out)
    log("kernel lab: " + json.dumps({k: v for k, v in REPORT["kernel_lab"].items() if k != "table"}))
    samp = {}
    for mode in ["eager", "compile"]:
        try:
            samp[f"pytorch {mode}"] = torch_sampler(mdir, mode)
        except Exception as e:
            samp[f"pytorch {mode}"] = f"error: {e}"[:300]
    samp["dydiff tf32"] = dydiff_sampler(binary, mdir, tmp, "tf32")
    log("sampler: " + json.dumps(samp))
    REPORT["sampler"] = samp
    train = {}
    for batch, size in ([(16, 32)] if a.quick else [(16, 32), (64, 64)]):
        key = f"batch {batch}, {size}x{size}"
        train[key] = {}
        for mode in ["eager", "bf16", "compile"]:
            try:
                train[key][f"pytorch {mode}"] = torch_train(mdir, batch, size, mode)
            except Exception as e:
                train[key][f"pytorch {mode}"] = f"error: {e}"[:300]
            torch.cuda.empty_cache()
        for precision in ["tf32", "bf16"]:
            train[key][f"dydiff {precision}"] = dydiff_train(binary, mdir, tmp, batch, size, precision)
        log(f"training step {key}: " + json.dumps({k: v if not isinstance(v, dict) else
                                                    {kk: vv for kk, vv in v.items() if kk != "kernels"}
                                                    for k, v in train[key].items()}))
    REPORT["train"] = train
    curves = precision_curves(binary, tmp) if not a.quick else {"skipped": "--quick"}
    log("precision curves: " + json.dumps({k: (v if not isinstance(v, dict) else
                                                {kk: vv for kk, vv in v.items() if kk != "curve"})
                                            for k, v in curves.items()}))
    REPORT["precision_curves"] = curves
    REPORT["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (out / "gpu_check.json").write_text(json.dumps(REPORT, indent=1))
    lines = [f"# GPU check, {REPORT['machine'].get('gpu')}, {REPORT['started']}", "",
             "| test binary | result | s |", "|---|---|---|"]
    for t in REPORT["tests"]:
        lines.append(f"| {t['binary']} | {t['summary']} {t['failed'] or ''} | {t['seconds']} |")
    lines += ["", "| forward | " + " | ".join(fwd[next(iter(fwd))].keys()) + " |",
              "|---|" + "---|" * len(fwd[next(iter(fwd))])]
    for key, row in fwd.items():
        cells = []
        for v in row.values():
            s = v.get("median_s") if isinstance(v, dict) else v
            cells.append(f"{s * 1e3:.3f} ms" if isinstance(s, float) else str(s)[:40])
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    mvm = REPORT["model_vs_measured"]
    if "kernels" in mvm:
        lines += ["", f"| kernel (forward, batch 8, 32x32, tf32) | launches | measured µs | modelled µs "
                      f"({mvm['gpu_modelled']}: optimistic / central / pessimistic) |", "|---|---|---|---|"]
        for name, r in sorted(mvm["kernels"].items(), key=lambda kv: -(kv[1]["measured_s"] or 0)):
            got = f"{r['measured_s'] * 1e6:.0f}" if r["measured_s"] is not None else "—"
            lines.append(f"| {name} | {r['launches']} | {got} | {r['optimistic_s'] * 1e6:.0f} / "
                         f"{r['central_s'] * 1e6:.0f} / {r['pessimistic_s'] * 1e6:.0f} |")
        t = mvm["total_modelled"]
        lines.append(f"| total | | {mvm['total_measured_s'] * 1e6:.0f} | {t['optimistic_s'] * 1e6:.0f} / "
                     f"{t['central_s'] * 1e6:.0f} / {t['pessimistic_s'] * 1e6:.0f} |")
    lab = REPORT["kernel_lab"]
    lines += ["", "Kernel lab (benches/kernel_lab.rs, measured beside modelled):", "",
              lab.get("table") or str(lab)[:300]]
    lines += ["", "| sampler, 10 steps, batch 8, 32x32 | s |", "|---|---|"]
    for k, v in samp.items():
        lines.append(f"| {k} | {v if not isinstance(v, dict) else v.get('network_s', v)} |")
    lines += ["", "| training step | " + " | ".join(train[next(iter(train))].keys()) + " |",
              "|---|" + "---|" * len(train[next(iter(train))])]
    for key, row in train.items():
        cells = []
        for v in row.values():
            if isinstance(v, dict) and "median_s" in v:
                mem = v.get("peak_reserved_bytes") or v.get("peak_device_bytes") or 0
                cells.append(f"{v['median_s'] * 1e3:.2f} ms, {mem / 2**20:.0f} MiB")
            else:
                cells.append(str(v)[:40])
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "| training, 2000 steps | final loss (last quarter) |", "|---|---|"]
    for k, v in curves.items():
        lines.append(f"| {k} | {v.get('final_loss', v) if isinstance(v, dict) else v} |")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))


if __name__ == "__main__":
    main()
