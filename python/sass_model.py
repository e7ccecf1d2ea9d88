"""A performance model of the CUDA backend from the machine code it runs: the instruction mix of
each kernel's main loop in the built fatbin (python/sass.py) times the trips each launch makes
through it, over the launches of a network as the backend issues them (the emulator's launch log,
`DYDIFF_LAUNCH_LOG`), on the SMs of an H100 or H200. It replaces the FLOP roofline of
python/roofline.py, whose kernels were assumed to reach 80% of the tensor peak: the machine code
says they cannot (BENCHMARKS.md, “CUDA backend: the model from the machine code”).

    # the launch plan of one forward of the benchmark UNet at batch 8, 32×32, on the emulator
    DYDIFF_LAUNCH_LOG=/tmp/plan.jsonl target/release/dydiff bench unet --model BENCH \\
        --batch 8 --size 32 --repeats 1 --warmup 0 --device cuda
    python3 python/sass_model.py /tmp/plan.jsonl [--fatbin F] [--gpu h100] [--by-kernel]

The model of one launch of `G` blocks of `W` warps whose main loop (`I` instructions per warp,
`H` of them HMMA) runs `n` times per block, with `P` further instructions per warp outside it:

- residency `R` blocks per SM from the registers (`cuobjdump -res-usage`, allocated per warp in
  units of 256), shared memory (static + dynamic, plus 1 KB reserved per block), 64 warps and 32
  blocks per SM; the busiest SM runs `b = ⌈G / SMs⌉` blocks, `min(b, R)` at a time;
- issue: every SM has 4 schedulers issuing at most one warp-instruction per clock; a scheduler
  with `w` resident warps issues `min(1, w / L)` per clock, `L` the mean cycles a warp waits
  between its instructions (latency not hidden): optimistic `L = 1`, central `L = 2`,
  pessimistic `L = 4`; and a main loop that loads from global memory and then waits at a barrier
  (no multi-stage pipeline) leaves a load's latency exposed on every trip: 0, 300, 600 clocks.
  Issue time of the SM = `b·W·(n·I + P) / (4·min(1, w/L)) + ⌈b/R⌉·n·latency` clocks;
- tensor pipe: an HMMA per clock per SM at the dense peak — an m16n8k8 TF32 one (1024
  multiply-adds) or an m16n8k16 BF16 one (2048: bf16's dense peak, 989 TFLOP/s on an H100 SXM, is
  twice TF32's 495); `mma.sync` is taken to reach 62% of it on Hopper. Time `b·W·n·H / 0.62`
  clocks at either precision;
- memory: the bytes the launch must move, from its shape for the products (inputs, weights and
  outputs once), from the kernel's global loads and stores per thread otherwise, at 90% of the
  bandwidth (3.35 TB/s H100 SXM, 4.8 TB/s H200);
- a launch takes the largest of the three, and at least 2.5 µs (a kernel inside a CUDA graph).

Clock 1.755 GHz (H100 SXM under sustained load), 132 SMs (both GPUs). The figures are predictions
until a GPU measures them (python/gpu_check.py records both). Standard library only.
"""

import argparse
import json
import math
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sass  # noqa: E402

GPUS = {
    "h100": dict(name="H100 SXM", sms=132, clock=1.755e9, bandwidth=3.35e12),
    "h200": dict(name="H200", sms=132, clock=1.755e9, bandwidth=4.8e12),
}
# (L: mean cycles between a warp's instructions, latency: cycles of a global load left exposed
# per trip through a main loop that loads from global memory and waits at a barrier)
SCENARIOS = {"optimistic": (1.0, 0.0), "central": (2.0, 300.0), "pessimistic": (4.0, 600.0)}
MMA_EFFICIENCY = 0.62
BANDWIDTH_EFFICIENCY = 0.9
FLOOR = 2.5e-6
TILE_K = 16          # kernels/gemm_core.cuh
ATT_KEYS = 32        # kernels/attention.cu
REGS_PER_SM, WARPS_PER_SM, BLOCKS_PER_SM, SMEM_PER_SM = 65536, 64, 32, 228 * 1024


def residency(regs, smem, warps):
    """Blocks per SM (sm_90) for a kernel of `regs` registers per thread, `smem` bytes of shared
    memory per block and `warps` warps per block."""
    per_warp = math.ceil(regs * 32 / 256) * 256
    by_regs = (REGS_PER_SM // per_warp) // warps if per_warp else BLOCKS_PER_SM
    by_smem = SMEM_PER_SM // (smem + 1024)
    return max(0, min(by_regs, by_smem, WARPS_PER_SM // warps, BLOCKS_PER_SM))


# kernels/conv.cu's ConvShape, field by field (the launch log gives a structure as its 4-byte words)
CONV_SHAPE = ("n ci h w ci1 co k stride pad_top pad_left ho wo upsample groups silu scale circular "
              "slices1 slices per_split tiles_x tiles_y kc").split()


def conv_shape(args):
    """The ConvShape of a forward convolution's launch arguments, by field name, with the stored
    input's pixels per channel (`stored`: halved per axis when the input is upsampled)."""
    s = dict(zip(CONV_SHAPE, [a for a in args if isinstance(a, list)][0]))
    s["stored"] = (s["h"] // 2) * (s["w"] // 2) if s["upsample"] else s["h"] * s["w"]
    return s


# kernels/gemm.cu's GemmShape (64-bit strides as two words each)
GEMM_SHAPE = ("m n k lda ldb ldc stride_a stride_a_hi stride_b stride_b_hi stride_c stride_c_hi "
              "a_trans b_trans bias_per_row scale slices per_split").split()


def gemm_shape(args):
    """The GemmShape of a GEMM's launch arguments, by field name."""
    return dict(zip(GEMM_SHAPE, [a for a in args if isinstance(a, list)][0]))


def trips(kernel, args, grid):
    """Trips through the main loop per block, and the bytes the launch moves (None: from the
    kernel's loads and stores), for the kernels whose shape the arguments give."""
    if kernel == "conv2d_wgrad_f32":
        # kernels/conv.cu: a trip per K-slice of 16 of the split's run; both grids once,
        # each split's plane written
        g = [a for a in args if isinstance(a, list)][0]
        co, ci, k = g[4], g[1], g[5]
        ld, k_len = g[16] | (g[17] << 32), g[18] | (g[19] << 32)
        slice_len = args[-1]
        phases = g[6] ** 2
        return math.ceil(slice_len / TILE_K), 4 * (co * k_len + phases * ci * ld + grid[2] * co * ci * k * k)
    if kernel == "conv2d_phase_pack_f32":
        # kernels/conv.cu: a thread per cell writes its phase row's s phases (a trip each); the
        # input read once, the phase planes written once
        g = [a for a in args if isinstance(a, list)][0]  # WgradGrid
        n, ci, h, w, stride, ld = g[0], g[1], g[2], g[3], g[6], g[16] | (g[17] << 32)
        return stride, 4 * (n * ci * h * w + stride ** 2 * ci * ld)
    if kernel.startswith(("conv2d_tf32_", "conv2d_bf16_", "conv2d_f32_")):
        # the direct kernels (kernels/conv.cu): a trip per slice of input channels. The input, the weights and the output once; split,
        # also each split's partial plane written and read back by the tile's last block
        s = conv_shape(args)
        weights = s["co"] * s["ci"] * s["k"] ** 2
        io = s["n"] * s["ci"] * s["stored"] + weights
        out = s["n"] * s["co"] * s["ho"] * s["wo"]
        return s["per_split"], 4 * (io + (2 * grid[2] + 1 if grid[2] > 1 else 1) * out)
    if kernel in ("gemm_tf32", "gemm_bf16", "conv2d_wgrad_tf32", "conv2d_wgrad_bf16"):
        # the first slice of a split before the main loop, then a trip per slice; the operands
        # and the output once, split also each split's partial plane written and read back (the
        # weight gradient's B is its phase planes, read once: a channel's taps are neighbouring
        # columns of a tile, reading the same row at shifts of a few cells)
        s = gemm_shape(args)
        batch = grid[2]
        splits = math.ceil(s["slices"] / s["per_split"]) if s["slices"] else 1
        planes = 2 * splits + 1 if splits > 1 else 1
        b_bytes = 4 * batch * s["k"] * s["n"]
        if kernel.startswith("conv2d_wgrad"):
            g = [a for a in args if isinstance(a, list)][1]  # WgradGrid: stride, ci, ld
            b_bytes = 4 * g[6] ** 2 * g[1] * (g[16] | (g[17] << 32))
        io = batch * s["m"] * s["k"] + planes * batch * s["m"] * s["n"]
        return max(s["per_split"] - 1, 0), 4 * io + b_bytes
    if kernel == "gemm_f32":
        s = gemm_shape(args)
        batch = grid[2]
        return math.ceil(s["k"] / TILE_K), 4 * batch * (s["m"] * s["k"] + s["k"] * s["n"] + s["m"] * s["n"])
    if kernel == "conv2d_finish_f32":
        # the split-K finish: the partial planes and the residual read, the output written
        n, co, hw, splits = args[5], args[6], args[7], args[8]
        return None, 4 * n * co * hw * (splits + 1 + (1 if args[3] is not None else 0))
    if kernel.startswith("conv2d_weights_"):
        # the weights read (once, through the cache) and written in the kernel's order
        return None, 8 * grid[0] * grid[1] * grid[2] * 256
    if kernel == "attention_f32" or kernel.startswith("attention_tf32_d"):
        # a trip per tile of keys (kernels/attention.cu: 32; 64 on the tensor cores, 32 at d 128)
        s = [a for a in args if isinstance(a, list)][0]
        n, l, heads, d = s[:4]
        keys = ATT_KEYS if kernel == "attention_f32" or d > 64 else 64
        return math.ceil(l / keys), 4 * n * l * heads * d * 4
    return None, None


def launch_time(launch, fig, gpu, scenario):
    """Seconds of one launch under a scenario `(L, exposed latency)`, and which limit binds."""
    latency, exposed = scenario
    grid, block = launch["grid"], launch["block"]
    blocks = grid[0] * grid[1] * grid[2]
    threads = block[0] * block[1] * block[2]
    warps = math.ceil(threads / 32)
    res = fig["resources"]
    r = residency(res.get("registers", 32), res.get("shared", 0) + launch["shared"], warps)
    if r == 0:
        raise SystemExit(f"{launch['kernel']}: no block fits an SM ({res}, {threads} threads)")
    busiest = math.ceil(blocks / gpu["sms"])
    resident_warps = min(busiest, r) * warps
    ipc = 4 * min(1.0, resident_warps / 4 / latency)
    loop = fig["main_loop"]
    n, bytes_ = trips(launch["kernel"], launch["args"], grid)
    if loop and n is not None:
        body, hmma = loop["instructions"], loop["hmma"]
        outside = fig["instructions"] - body
    else:
        # no product: the kernel's instructions once per thread (a loop's body once per trip is
        # not known from the arguments; the memory term carries such kernels)
        n, body, hmma = 1, fig["instructions"], 0
        outside = 0
    per_warp = n * body + outside
    waits = 0.0
    if loop and loop["mix"].get("load_global", 0) and loop["mix"].get("sync", 0):
        # the blocks an SM holds at once wait together; the busiest SM runs ⌈b / R⌉ rounds
        waits = math.ceil(busiest / r) * n * exposed
    issue = (busiest * warps * per_warp / ipc + waits) / gpu["clock"]
    tensor = busiest * warps * n * hmma / MMA_EFFICIENCY / gpu["clock"]
    if bytes_ is None:
        mix = fig["mix_kernel"]
        bytes_ = 4 * blocks * threads * (mix.get("load_global", 0) + mix.get("store", 0))
    memory = bytes_ / (gpu["bandwidth"] * BANDWIDTH_EFFICIENCY)
    t = max(issue, tensor, memory, FLOOR)
    bound = {issue: "issue", tensor: "tensor", memory: "memory", FLOOR: "floor"}[t]
    waves = blocks / (gpu["sms"] * r)
    return t, bound, waves, r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plan", type=pathlib.Path, help="the emulator's launch log (DYDIFF_LAUNCH_LOG)")
    ap.add_argument("--fatbin")
    ap.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    ap.add_argument("--by-kernel", action="store_true", help="one row per kernel, not per launch")
    ap.add_argument("--all", action="store_true",
                    help="every launch of the plan (default: its last repetition, from the last launch of its first kernel)")
    ap.add_argument("--first", action="store_true",
                    help="the plan's first repetition instead: with the work done once per model (the weights prepared)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", type=pathlib.Path,
                    help="also write the per-kernel predictions (seconds per scenario) as JSON")
    args = ap.parse_args()
    gpu = GPUS[args.gpu]
    launches = [json.loads(l) for l in args.plan.read_text().splitlines() if l.strip()]
    if not args.all:
        # a bench repeats its work (timed, then profiled): the launches from one of the first
        # launch's kernel to the next are one repetition. The last is the steady state (what a
        # sampler's every step runs); the first also does the work done once per model, such as
        # the convolutions' weights prepared in their kernels' order
        starts = [i for i, la in enumerate(launches) if la["kernel"] == launches[0]["kernel"]]
        if len(starts) > 1:
            launches = launches[:starts[1]] if args.first else launches[starts[-1]:]
    fatbin, figures = sass.read(args.fatbin, 90)
    rows, totals = [], {s: 0.0 for s in SCENARIOS}
    for la in launches:
        fig = figures.get(la["kernel"])
        if fig is None:
            raise SystemExit(f"{la['kernel']}: not in {fatbin}")
        times = {s: launch_time(la, fig, gpu, lat) for s, lat in SCENARIOS.items()}
        for s in SCENARIOS:
            totals[s] += times[s][0]
        rows.append((la, times))
    print(f"# {len(launches)} launches of {args.plan}, machine code of {fatbin} (sm_90), {gpu['name']}")
    sep = " | " if args.markdown else "  "
    if args.by_kernel:
        agg = {}
        for la, times in rows:
            a = agg.setdefault(la["kernel"], dict(launches=0, **{s: 0.0 for s in SCENARIOS}, bound={}))
            a["launches"] += 1
            for s in SCENARIOS:
                a[s] += times[s][0]
            b = times["central"][1]
            a["bound"][b] = a["bound"].get(b, 0) + 1
        head = ["kernel", "launches", "optimistic µs", "central µs", "pessimistic µs", "central share", "bound (central)"]
        if args.markdown:
            print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for k, a in sorted(agg.items(), key=lambda kv: -kv[1]["central"]):
            cells = [k, a["launches"], f"{a['optimistic'] * 1e6:.0f}", f"{a['central'] * 1e6:.0f}",
                     f"{a['pessimistic'] * 1e6:.0f}", f"{a['central'] / totals['central']:.1%}",
                     ", ".join(f"{b} {c}" for b, c in sorted(a["bound"].items()))]
            print(("| " + " | ".join(map(str, cells)) + " |") if args.markdown else sep.join(map(str, cells)))
    else:
        head = ["kernel", "grid", "block", "blocks/SM", "waves", "optimistic µs", "central µs", "pessimistic µs", "bound"]
        if args.markdown:
            print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for la, times in rows:
            t, bound, waves, r = times["central"]
            cells = [la["kernel"], "×".join(map(str, la["grid"])), la["block"][0], r, f"{waves:.2f}",
                     f"{times['optimistic'][0] * 1e6:.1f}", f"{t * 1e6:.1f}",
                     f"{times['pessimistic'][0] * 1e6:.1f}", bound]
            print(("| " + " | ".join(map(str, cells)) + " |") if args.markdown else sep.join(map(str, cells)))
    if args.json:
        per = {}
        for la, times in rows:
            k = per.setdefault(la["kernel"], dict(launches=0, **{f"{s}_s": 0.0 for s in SCENARIOS}))
            k["launches"] += 1
            for s in SCENARIOS:
                k[f"{s}_s"] += times[s][0]
        args.json.write_text(json.dumps(dict(
            gpu=gpu["name"], fatbin=str(fatbin), plan=str(args.plan), launches=len(rows),
            total={f"{s}_s": totals[s] for s in SCENARIOS}, kernels=per), indent=1))
    print(f"\ntotal: optimistic {totals['optimistic'] * 1e3:.2f} ms, central {totals['central'] * 1e3:.2f} ms, "
          f"pessimistic {totals['pessimistic'] * 1e3:.2f} ms")
    under = sum(1 for la, times in rows if times["central"][2] < 1.0)
    print(f"launches under one full wave on {gpu['sms']} SMs: {under} of {len(rows)}")


if __name__ == "__main__":
    main()
