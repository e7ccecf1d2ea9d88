"""Side-by-side benchmark: dydiff against PyTorch + diffusers on the same UNet2DModel.

The model (engine-core issue): block_out_channels (64, 128, 256), layers_per_block 2, attention
at the two lower-resolution levels, 32 norm groups, head dim 32, 20 input / 12 output channels,
batch 8, at 32x32 and 64x64, both engines on the same number of threads, same weights.

Reports the median forward time, GFLOP/s (FLOPs counted by dydiff's per-op profile), the
speed-up, dydiff's convolution GFLOP/s, and peak resident memory of one forward at each size
(each engine in a fresh process, `/usr/bin/time -v`).

With --sampler: the sampler benchmark (Dynamical Diffusion, dyn_eta 0.5) on the same network as a
model folder with 4 history and 6 future frames of 2 channels at 32x32, 2 samples x 4 members in
one batch of 8, 10 DDIM steps. dydiff's whole process (start, load, sample, write; wall time
measured here) against the PyTorch + diffusers sampling loop alone (timed inside its process,
after loading): UNet2DModel for the network, DDIMScheduler for the schedule, the sampler step of
docs/process.md, “One step”, in torch ops. Also reports dydiff's own split (network vs everything
else) and both peak RSS.

    PY=$(python/env.sh | tail -1)
    cargo build --release && $PY python/bench_vs_pytorch.py [--threads 2] [--reps 5]
    cargo build --release && $PY python/bench_vs_pytorch.py --sampler [--rounds 5]

With --train: one training step of the same network at batch 8, 32x32 (--sizes), 2 threads: forward,
MSE loss, backward, gradient clipping to norm 1, AdamW and a weight EMA (decay 0.999), in
PyTorch + diffusers (torch.optim.AdamW, torch.nn.utils.clip_grad_norm_) and with
`dydiff bench train`; median step time and peak RSS, each engine in its own process.

    cargo build --release && $PY python/bench_vs_pytorch.py --train [--rounds 3 --reps 3]

With --dyffusion: DYffusion's cold sampling (docs/dyffusion.md) with the same network as the
interpolator and the forecaster (10 input, 2 output channels; the interpolator's dropout 0.15),
4 history frames and a horizon of 6 frames of 2 channels at 32x32, 2 samples x 4 members in one
batch of 8, refinement on: 20 network calls per member. dydiff's whole process against the same
algorithm in PyTorch over the same diffusers networks (the interpolator in training mode for its
dropout, a fresh mask per call), timed inside its process after loading.

    cargo build --release && $PY python/bench_vs_pytorch.py --dyffusion [--rounds 5]

With --bf16 (any of the above): PyTorch's network under `torch.autocast("cpu", torch.bfloat16)` (its
one-line bf16 path: bf16 convolutions and matrix products through oneDNN, outputs cast back to
float32 for the sampler's arithmetic; training's backward and AdamW as autocast leaves them) against
`dydiff --precision bf16` (docs/devices.md, "Precision").

    cargo build --release && $PY python/bench_vs_pytorch.py --bf16 --sampler [--rounds 5]
"""

import argparse
import contextlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel

ROOT = pathlib.Path(__file__).resolve().parent.parent


def autocast():
    """PyTorch's bf16 autocast in a child process when the parent runs with --bf16, else nothing."""
    if os.environ.get("BENCH_BF16") == "1":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def ours(args, *rest) -> list:
    """A dydiff command line on the benchmark's threads (and precision)."""
    return [args.dydiff, "--threads", str(args.threads), *(["--precision", "bf16"] if args.bf16 else []), *rest]
CONFIG = dict(
    in_channels=20, out_channels=12, block_out_channels=(64, 128, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=32, attention_head_dim=32,
)


def torch_time(model_dir: str, input_path: str, reps: int) -> None:
    """Child-process entry: times `reps` PyTorch forwards after one warm-up, prints JSON."""
    model = UNet2DModel.from_pretrained(model_dir).eval()
    x = torch.from_numpy(np.load(input_path))
    print(json.dumps(time_torch(model, x, reps)))


def torch_forward_once(model_dir: str, input_path: str) -> None:
    """Child-process entry for the memory measurement: one forward in PyTorch."""
    model = UNet2DModel.from_pretrained(model_dir).eval()
    x = torch.from_numpy(np.load(input_path))
    with torch.no_grad(), autocast():
        model(x, 500).sample


# ---- sampler benchmark ----------------------------------------------------------------------
HIST, FUT, CH, SIZE, SAMPLES, MEMBERS, STEPS, DYN_ETA = 4, 6, 2, 32, 2, 4, 10, 0.5


def dyn(x, g):
    """Dyn_γ over dim 1 (docs/process.md, “Dynamics”)."""
    g = float(g)
    out = [x[:, 0]]
    for i in range(1, x.shape[1]):
        out.append(g ** 0.5 * x[:, i] + (1 - g) ** 0.5 * out[-1])
    return torch.stack(out, 1)


def inv_dyn(y, g):
    """InvDyn_γ over dim 1."""
    g = float(g)
    return torch.cat([y[:, :1], (y[:, 1:] - (1 - g) ** 0.5 * y[:, :-1]) / g ** 0.5], 1)


def torch_sample(model_dir: str, obs_path: str) -> None:
    """Child-process entry: the PyTorch + diffusers sampling loop (docs/process.md) timed alone."""
    net = UNet2DModel.from_pretrained(pathlib.Path(model_dir) / "unet").eval()
    sched = DDIMScheduler.from_pretrained(pathlib.Path(model_dir) / "scheduler")
    obs = torch.from_numpy(np.load(obs_path))
    t0 = time.perf_counter()
    with torch.no_grad():
        sched.set_timesteps(STEPS)
        ab = sched.alphas_cumprod.double()
        gb = lambda a: DYN_ETA * a + (1 - DYN_ETA)  # noqa: E731
        b = SAMPLES * MEMBERS
        hist = (obs[:, :HIST] / 4.0).repeat_interleave(MEMBERS, 0)  # (B, P+1, C, H, W)

        ts = sched.timesteps.tolist()
        x = dyn(torch.randn(b, FUT, CH, SIZE, SIZE), gb(ab[ts[0]]))
        for i, t in enumerate(ts):
            a_t = float(ab[t])
            a_p = float(ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            g_t, g_p = gb(a_t), gb(a_p)
            inp = torch.cat([hist, x], 1).reshape(b, -1, SIZE, SIZE)
            with autocast():
                e = net(inp, t).sample.float().reshape(b, FUT, CH, SIZE, SIZE)
            y = (x - (1 - a_t) ** 0.5 * e) / a_t ** 0.5
            x0 = inv_dyn(torch.cat([dyn(hist, g_t)[:, -1:], y], 1), g_t)[:, 1:]
            ew = inv_dyn(e, g_t)
            d = dyn(torch.cat([hist, x0], 1), g_p)[:, HIST:]
            x = a_p ** 0.5 * d + (1 - a_p) ** 0.5 * dyn(ew, g_p)
        forecast = (x * 4.0).reshape(SAMPLES, MEMBERS, FUT, CH, SIZE, SIZE).numpy()
    print(json.dumps({"loop_s": time.perf_counter() - t0, "shape": list(forecast.shape)}))


def sampler_bench(args, env, tmp: pathlib.Path) -> None:
    torch.manual_seed(0)
    model = UNet2DModel(**CONFIG).eval()
    mdir = tmp / "model"
    model.save_pretrained(mdir / "unet")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                  set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading",
                  prediction_type="epsilon").save_config(mdir / "scheduler")
    (mdir / "dydiff.json").write_text(json.dumps(dict(
        method="dydiff", dyn_eta=DYN_ETA, history=HIST, future=FUT, channels=CH, height=SIZE,
        width=SIZE, data_scale=4.0, data_shift=0.0)))
    obs = tmp / "obs.npy"
    np.save(obs, np.random.default_rng(0).standard_normal((SAMPLES, HIST, CH, SIZE, SIZE)).astype(np.float32))
    ours_cmd = ours(args, "sample", "--model", str(mdir), "--input", str(obs),
                    "--out", str(tmp / "forecast.npy"), "--members", str(MEMBERS), "--steps", str(STEPS),
                    "--batch", str(SAMPLES * MEMBERS))
    torch_cmd = [sys.executable, __file__, "--torch-sample", str(mdir), str(obs)]
    t_torch, t_ours, splits = [], [], []
    for _ in range(args.rounds):
        out = subprocess.run(torch_cmd, check=True, capture_output=True, text=True, env=env)
        t_torch.append(json.loads(out.stdout.strip().splitlines()[-1])["loop_s"])
        t0 = time.perf_counter()
        out = subprocess.run(ours_cmd, check=True, capture_output=True, text=True, env=env)
        t_ours.append(time.perf_counter() - t0)
        line = out.stderr.strip().splitlines()[-1]
        # the summary's split "…: load X s, network X s, sampler other X s, write X s"
        part = lambda key: float(re.search(rf"[:,] {key} ([0-9.]+) s", line).group(1))  # noqa: E731
        splits.append(dict(network=part("network"), other=part("sampler other"), load=part("load"),
                           write=part("write")))
    mem_torch = peak_rss_mb(torch_cmd, env)
    mem_ours = peak_rss_mb(ours_cmd, env)
    i = int(np.argmin(t_ours))
    wall, sp = t_ours[i], splits[i]
    print(f"sampler: {SAMPLES} samples x {MEMBERS} members, {HIST}+{FUT} frames of {CH}x{SIZE}x{SIZE},"
          f" {STEPS} steps, batch {SAMPLES * MEMBERS}, {args.threads} threads, {args.rounds} alternating rounds")
    print(f"PyTorch loop alone  median {np.median(t_torch):.3f} s  min {min(t_torch):.3f} s  (all: "
          + ", ".join(f"{t:.3f}" for t in t_torch) + ")")
    print(f"dydiff whole process median {np.median(t_ours):.3f} s  min {min(t_ours):.3f} s  (all: "
          + ", ".join(f"{t:.3f}" for t in t_ours) + ")")
    print(f"speed-up: median {np.median(t_torch) / np.median(t_ours):.2f}x, min/min {min(t_torch) / min(t_ours):.2f}x")
    outside = wall - sp["network"]
    print(f"dydiff fastest run: wall {wall:.3f} s = network {sp['network']:.3f} s + load {sp['load']:.4f} s"
          f" + sampler other {sp['other']:.4f} s + write {sp['write']:.4f} s + process start/exit"
          f" {wall - sp['network'] - sp['load'] - sp['other'] - sp['write']:.4f} s;"
          f" outside the network {outside:.4f} s = {100 * outside / wall:.2f}%")
    print(f"peak RSS: PyTorch {mem_torch:.0f} MB, dydiff {mem_ours:.0f} MB")


def torch_cold(model_dir: str, obs_path: str) -> None:
    """Child-process entry: DYffusion's cold sampling (docs/dyffusion.md) in PyTorch, timed alone."""
    mdir = pathlib.Path(model_dir)
    inet = UNet2DModel.from_pretrained(mdir / "interpolator").train()  # dropout active
    fnet = UNet2DModel.from_pretrained(mdir / "forecaster").eval()
    obs = torch.from_numpy(np.load(obs_path))
    t0 = time.perf_counter()
    with torch.no_grad(), autocast():
        b = SAMPLES * MEMBERS
        x0 = (obs[:, :HIST] / 4.0).repeat_interleave(MEMBERS, 0).reshape(b, HIST * CH, SIZE, SIZE)
        tt = lambda i: torch.full((b,), float(i))  # noqa: E731
        interp = lambda xh, i: inet(torch.cat([x0, xh], 1), tt(i)).sample  # noqa: E731
        x = x0[:, (HIST - 1) * CH:]
        xh = None
        for s in range(FUT):  # additional_steps 0: i_n = n
            xh = fnet(torch.cat([x, x0], 1), tt(s)).sample
            if s == FUT - 1:
                break
            x = x - (x if s == 0 else interp(xh, s)) + interp(xh, s + 1)
        leads = [interp(xh, j) for j in range(1, FUT)] + [xh]
        forecast = (torch.stack(leads, 1).float() * 4.0).reshape(SAMPLES, MEMBERS, FUT, CH, SIZE, SIZE).numpy()
    print(json.dumps({"loop_s": time.perf_counter() - t0, "shape": list(forecast.shape)}))


def cold_bench(args, env, tmp: pathlib.Path) -> None:
    torch.manual_seed(0)
    mdir = tmp / "dyffusion"
    cfg = dict(CONFIG, in_channels=(HIST + 1) * CH, out_channels=CH)
    UNet2DModel(**dict(cfg, dropout=0.15)).save_pretrained(mdir / "interpolator")
    UNet2DModel(**cfg).save_pretrained(mdir / "forecaster")
    (mdir / "dydiff.json").write_text(json.dumps(dict(
        method="dyffusion", history=HIST, future=FUT, channels=CH, height=SIZE, width=SIZE,
        data_scale=4.0, data_shift=0.0, additional_steps=0, forecaster_condition="data",
        interpolator_dropout=0.15, refine=True, lambda_1=0.5, lambda_2=0.5)))
    obs = tmp / "obs.npy"
    np.save(obs, np.random.default_rng(0).standard_normal((SAMPLES, HIST, CH, SIZE, SIZE)).astype(np.float32))
    ours_cmd = ours(args, "sample", "--model", str(mdir), "--input", str(obs),
                    "--out", str(tmp / "forecast.npy"), "--members", str(MEMBERS), "--batch", str(SAMPLES * MEMBERS))
    torch_cmd = [sys.executable, __file__, "--torch-cold", str(mdir), str(obs)]
    t_torch, t_ours, lines = [], [], []
    for _ in range(args.rounds):
        out = subprocess.run(torch_cmd, check=True, capture_output=True, text=True, env=env)
        t_torch.append(json.loads(out.stdout.strip().splitlines()[-1])["loop_s"])
        t0 = time.perf_counter()
        out = subprocess.run(ours_cmd, check=True, capture_output=True, text=True, env=env)
        t_ours.append(time.perf_counter() - t0)
        lines.append(out.stderr.strip().splitlines()[-1])
    mem_torch = peak_rss_mb(torch_cmd, env)
    mem_ours = peak_rss_mb(ours_cmd, env)
    print(f"DYffusion cold sampling: {SAMPLES} samples x {MEMBERS} members, {HIST} history + {FUT} frames"
          f" of {CH}x{SIZE}x{SIZE}, 20 network calls per member, batch {SAMPLES * MEMBERS},"
          f" {args.threads} threads, {args.rounds} alternating rounds")
    print(f"PyTorch loop alone   median {np.median(t_torch):.3f} s  min {min(t_torch):.3f} s  (all: "
          + ", ".join(f"{t:.3f}" for t in t_torch) + ")")
    print(f"dydiff whole process median {np.median(t_ours):.3f} s  min {min(t_ours):.3f} s  (all: "
          + ", ".join(f"{t:.3f}" for t in t_ours) + ")")
    print(f"speed-up: median {np.median(t_torch) / np.median(t_ours):.2f}x, min/min {min(t_torch) / min(t_ours):.2f}x")
    print(f"dydiff fastest run: {lines[int(np.argmin(t_ours))]}")
    print(f"peak RSS: PyTorch {mem_torch:.0f} MB, dydiff {mem_ours:.0f} MB")


def torch_train(model_dir: str, size: int, batch: int, reps: int) -> None:
    """Child-process entry: times `reps` PyTorch training steps after one warm-up, prints JSON."""
    model = UNet2DModel.from_pretrained(model_dir).train()
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, cfg.in_channels, size, size, generator=gen) * 2 - 1
    y = torch.rand(batch, cfg.out_channels, size, size, generator=gen) * 2 - 1
    t = torch.tensor([i * 997 % 1000 for i in range(batch)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    ema = [p.detach().clone() for p in model.parameters()]

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.mse_loss(model(x, t).sample.float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - 0.999)

    step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps(times))


def train_bench(args, env, tmp: pathlib.Path) -> None:
    torch.manual_seed(0)
    model = UNet2DModel(**CONFIG)
    model.save_pretrained(tmp / "unet")
    for size in args.sizes:
        torch_cmd = [sys.executable, __file__, "--torch-train", str(tmp / "unet"), str(size), str(args.batch), str(args.reps)]
        ours_cmd = ours(args, "bench", "train", "--unet", str(tmp / "unet"),
                        "--batch", str(args.batch), "--size", str(size), "--reps", str(args.reps))
        t_torch, t_ours, rep = [], [], None
        for _ in range(args.rounds):
            out = subprocess.run(torch_cmd, check=True, capture_output=True, text=True, env=env)
            t_torch += json.loads(out.stdout.strip().splitlines()[-1])
            out = subprocess.run(ours_cmd, check=True, capture_output=True, text=True, env=env)
            rep = json.loads(out.stdout)
            t_ours += rep["times_s"]
        mem_torch = peak_rss_mb(torch_cmd, env)
        mem_ours = peak_rss_mb(ours_cmd, env)
        mt, mo = float(np.median(t_torch)), float(np.median(t_ours))
        print(f"training step, {size}x{size}, batch {args.batch}, {args.threads} threads, {args.rounds} rounds x {args.reps} steps")
        print(f"  PyTorch median {mt:.3f} s [min {min(t_torch):.3f}]   dydiff median {mo:.3f} s [min {min(t_ours):.3f}]"
              f" ({rep['gflop'] / mo:.0f} GFLOP/s of {rep['gflop']:.1f} GFLOP)   speed-up {mt / mo:.2f}x (min/min {min(t_torch) / min(t_ours):.2f}x)")
        print(f"  peak RSS (warm-up + {args.reps} steps): PyTorch {mem_torch:.0f} MB, dydiff {mem_ours:.0f} MB")
        for name, o in sorted(rep["ops"].items(), key=lambda kv: -kv[1]["seconds"])[:10]:
            print(f"    {name:22s} {o['calls']:4d} calls {o['seconds'] * 1e3:8.1f} ms {o['gflops_per_s']:7.1f} GFLOP/s")


def peak_rss_mb(cmd, env) -> float:
    """Maximum resident set size of `cmd`, from GNU time's `-v` report."""
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, check=True)
    kb = next(line for line in out.stderr.splitlines() if "Maximum resident set size" in line)
    return int(kb.split(":")[1]) / 1024.0


def time_torch(model, x, reps: int) -> list:
    times = []
    with torch.no_grad(), autocast():
        model(x, 500)
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x, 500)
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--torch-once":
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
        torch_forward_once(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) == 6 and sys.argv[1] == "--torch-train":
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
        torch_train(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--torch-sample":
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
        torch_sample(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--torch-cold":
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
        torch_cold(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) == 5 and sys.argv[1] == "--torch-time":
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
        torch_time(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="timed forwards per round and engine")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, alternating the engines")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--dydiff", default=str(ROOT / "target" / "release" / "dydiff"))
    ap.add_argument("--sampler", action="store_true", help="the sampler benchmark instead of the forward")
    ap.add_argument("--train", action="store_true", help="the training-step benchmark instead of the forward")
    ap.add_argument("--dyffusion", action="store_true", help="DYffusion's cold sampling instead of the forward")
    ap.add_argument("--bf16", action="store_true",
                    help="bf16: PyTorch under CPU autocast against dydiff --precision bf16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    env = dict(os.environ, BENCH_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
               BENCH_BF16="1" if args.bf16 else "0")

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="dydiff-bench-"))
    if args.sampler:
        sampler_bench(args, env, tmp)
        return
    if args.train:
        train_bench(args, env, tmp)
        return
    if args.dyffusion:
        cold_bench(args, env, tmp)
        return
    torch.manual_seed(0)
    model = UNet2DModel(**CONFIG).eval()
    model.save_pretrained(tmp / "unet")
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.1f} M parameters, batch {args.batch}, {args.threads} threads,"
          f" torch {torch.__version__}")
    rows = []
    for size in args.sizes:
        x = torch.randn(args.batch, CONFIG["in_channels"], size, size)
        xin = tmp / f"x{size}.npy"
        np.save(xin, x.numpy())
        # Each engine runs in its own process (PyTorch's OpenMP workers spin after a parallel
        # region and would steal the cores), and the engines alternate round by round so that
        # machine noise hits both alike.
        torch_times, ours_times, rep = [], [], None
        for _ in range(args.rounds):
            out = subprocess.run([sys.executable, __file__, "--torch-time", str(tmp / "unet"), str(xin), str(args.reps)],
                                 check=True, capture_output=True, text=True, env=env)
            torch_times += json.loads(out.stdout.strip().splitlines()[-1])
            out = subprocess.run(
                ours(args, "bench", "unet", "--unet", str(tmp / "unet"),
                     "--batch", str(args.batch), "--size", str(size), "--reps", str(args.reps)),
                check=True, capture_output=True, text=True, env=env,
            )
            rep = json.loads(out.stdout)
            ours_times += rep["times_s"]
        t_torch, t_ours = float(np.median(torch_times)), float(np.median(ours_times))
        conv = rep["ops"]["conv2d"]
        mem_torch = peak_rss_mb([sys.executable, __file__, "--torch-once", str(tmp / "unet"), str(xin)], env)
        mem_ours = peak_rss_mb(
            ours(args, "denoise", "--unet", str(tmp / "unet"),
                 "--input", str(xin), "--timestep", "500", "--out", str(tmp / "y.npy")), env)
        rows.append(dict(
            size=size, gflop=rep["gflop"], torch_s=t_torch, dydiff_s=t_ours,
            torch_min=min(torch_times), dydiff_min=min(ours_times),
            torch_gflops=rep["gflop"] / t_torch, dydiff_gflops=rep["gflop"] / t_ours,
            speedup=t_torch / t_ours, conv_gflops=conv["gflops_per_s"],
            conv_share=conv["seconds"] / sum(o["seconds"] for o in rep["ops"].values()),
            mem_torch_mb=mem_torch, mem_dydiff_mb=mem_ours, ops=rep["ops"],
        ))
    print(f"median of {args.rounds} rounds x {args.reps} forwards per engine (min in brackets)")
    print("| size | GFLOP | PyTorch s (GFLOP/s) | dydiff s (GFLOP/s) | speed-up | dydiff conv GFLOP/s |"
          " peak RSS PyTorch / dydiff (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']}x{r['size']} | {r['gflop']:.1f} | {r['torch_s']:.3f} [{r['torch_min']:.3f}]"
              f" ({r['torch_gflops']:.0f}) | {r['dydiff_s']:.3f} [{r['dydiff_min']:.3f}] ({r['dydiff_gflops']:.0f}) |"
              f" {r['speedup']:.2f}x | {r['conv_gflops']:.0f} | {r['mem_torch_mb']:.0f} / {r['mem_dydiff_mb']:.0f} |")
    for r in rows:
        print(f"\ndydiff per-op at {r['size']}x{r['size']} (one profiled forward):")
        for name, o in sorted(r["ops"].items(), key=lambda kv: -kv[1]["seconds"]):
            print(f"  {name:22s} {o['calls']:4d} calls {o['seconds'] * 1e3:8.1f} ms {o['gflops_per_s']:7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
