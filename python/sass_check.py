"""The CI check from the machine code (issue-level rules for the CUDA kernels, read from the built
fatbin's sm_90 SASS by python/sass.py). It fails (exit status 1) when a rule is broken:

1. (no kernel spills registers: scripts/ptxas-check.sh, which reads ptxas's report per
   architecture);
2. every tensor-core product kernel — the convolutions (forward, input and weight gradient) and
   the GEMMs at TF32 and bf16 — issues at most 8 instructions per HMMA in its main loop, and has
   one (a product kernel whose main loop holds no HMMA is not on the tensor cores);
3. no product kernel (the tensor-core ones and their float32 twins) has an integer-division
   sequence (a division by a value known only at run time) in its main loop;
4. with a launch plan (the emulator's launch log of the benchmark UNet's forward,
   `DYDIFF_LAUNCH_LOG`), every launch of a product kernel has at least one block per SM of an
   H100 (132) — split-K where a layer has few tiles — unless there is nothing left to split: each
   of its blocks makes one trip through the main loop (one slice of the reduction; such a layer
   is a few microseconds whatever its grid).

Every product kernel is held to the rules: none is exempt. Standard library only.

    python3 python/sass_check.py [--fatbin F] [--plan PLAN.jsonl]
    python3 python/sass_check.py --self-test     (the rules catch planted faults; needs $NVCC)
"""

import argparse
import fnmatch
import json
import os
import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import sass  # noqa: E402
from sass_model import conv_shape, gemm_shape  # noqa: E402

MAX_PER_HMMA = 8.0
SMS = 132
# the product kernels: convolutions and GEMMs (tensor-core variants and float32 twins)
PRODUCTS = ["conv2d_*", "gemm_*"]
TENSOR_CORE = ["conv2d_tf32_*", "conv2d_bf16_*", "conv2d_wgrad_tf32", "conv2d_wgrad_bf16",
               "gemm_tf32", "gemm_bf16"]
# not products: the direct convolutions' weight preparation, the split-K finish, the operand
# layouts of the GEMMs (their packing, the generic convolution's columns, the weight gradient's
# grids) and the input gradient's gather from columns
HELPERS = ["conv2d_weights_*", "conv2d_finish_f32", "gemm_pack_f32", "conv2d_im2col_f32",
           "conv2d_phase_pack_f32", "conv2d_grid_pack_f32", "conv2d_col2im_f32"]


def matches(name, patterns):
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def kernel_faults(name, fig):
    """The rules (2, 3) kernel `name` breaks, as sentences."""
    faults = []
    if not matches(name, PRODUCTS) or matches(name, HELPERS):
        return faults
    loop = fig["main_loop"]
    if matches(name, TENSOR_CORE):
        if not loop or not loop["hmma"]:
            faults.append("has no HMMA in a main loop")
        elif loop["instructions"] / loop["hmma"] > MAX_PER_HMMA:
            faults.append(f"main loop issues {loop['instructions'] / loop['hmma']:.1f} instructions "
                          f"per HMMA (at most {MAX_PER_HMMA:g})")
    if loop and (loop["division_sequences"] or loop["division_calls"]):
        faults.append(f"main loop holds {loop['division_sequences']} integer-division sequences "
                      f"and {loop['division_calls']} calls")
    return faults


def launch_faults(plan):
    """Rule 4 over the plan's launches: (kernel, grid, blocks) of each that leaves SMs idle."""
    out = []
    for line in plan.read_text().splitlines():
        if not line.strip():
            continue
        la = json.loads(line)
        k = la["kernel"]
        if not matches(k, PRODUCTS) or matches(k, HELPERS):
            continue
        blocks = la["grid"][0] * la["grid"][1] * la["grid"][2]
        # a direct convolution whose blocks each take one slice of the input channels, or a
        # tensor-core GEMM whose blocks each take one slice of K
        direct = k.startswith(("conv2d_tf32_", "conv2d_bf16_", "conv2d_f32_"))
        one_trip = direct and conv_shape(la["args"])["per_split"] == 1
        one_trip = one_trip or (k in ("gemm_tf32", "gemm_bf16", "conv2d_wgrad_tf32", "conv2d_wgrad_bf16")
                                and gemm_shape(la["args"])["per_split"] == 1)
        if blocks < SMS and not one_trip:
            out.append((k, "×".join(map(str, la["grid"])), blocks))
    return out


# Two tensor-core loops, each with a fault the rules must catch: a division by a run-time value in
# the main loop, and a main loop of one MMA among some forty other instructions.
PLANTED = r"""
#include "ptx.cuh"
extern "C" __global__ void conv2d_tf32_planted_division(const float* x, float* y, int n, int d) {
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int i = 0; i < n; ++i) {
    int j = (i * 7 + int(threadIdx.x)) / d;
    unsigned a[4] = {f32_to_tf32(x[j]), f32_to_tf32(x[j + 1]), f32_to_tf32(x[j + 2]),
                     f32_to_tf32(x[j + 3])};
    unsigned b[2] = {f32_to_tf32(x[j + 4]), f32_to_tf32(x[j + 5])};
    mma_m16n8k8_tf32(acc, a, b, acc);
  }
  y[threadIdx.x] = acc[0] + acc[1] + acc[2] + acc[3];
}
extern "C" __global__ void conv2d_tf32_planted_slow(const float* x, float* y, int n) {
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int i = 0; i < n; ++i) {
    float v = x[i * 128 + threadIdx.x];
#pragma unroll
    for (int r = 0; r < 10; ++r) v = v / (1.0f + expf(-v));
    unsigned a[4] = {f32_to_tf32(v), f32_to_tf32(v), f32_to_tf32(v), f32_to_tf32(v)};
    unsigned b[2] = {f32_to_tf32(v), f32_to_tf32(v)};
    mma_m16n8k8_tf32(acc, a, b, acc);
  }
  y[threadIdx.x] = acc[0] + acc[1] + acc[2] + acc[3];
}
"""


def self_test():
    """Compiles PLANTED and checks that rules 2 and 3 catch each fault."""
    nvcc = os.environ.get("NVCC", "nvcc")
    kernels = pathlib.Path(__file__).resolve().parent.parent / "kernels"
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = pathlib.Path(tmp, "planted.cu"), pathlib.Path(tmp, "planted.cubin")
        src.write_text(PLANTED)
        subprocess.run([nvcc, "-cubin", "-O3", "-std=c++17", "-arch=sm_90", "-I", str(kernels),
                        str(src), "-o", str(cubin)], check=True)
        _, figures = sass.read(str(cubin), 90)
    division = kernel_faults("conv2d_tf32_planted_division", figures["conv2d_tf32_planted_division"])
    slow = kernel_faults("conv2d_tf32_planted_slow", figures["conv2d_tf32_planted_slow"])
    print(f"planted division: {division}\nplanted slow loop: {slow}")
    if not any("division" in f for f in division) or not any("per HMMA" in f for f in slow):
        sys.exit("sass_check: a planted fault went unnoticed")
    print("sass_check: both planted faults caught")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fatbin")
    ap.add_argument("--plan", type=pathlib.Path,
                    help="the emulator's launch log of the benchmark UNet's forward")
    ap.add_argument("--self-test", action="store_true",
                    help="compile kernels with planted faults and check that the rules catch them")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return
    fatbin, figures = sass.read(args.fatbin, 90)
    print(f"# sass_check: {fatbin} (sm_90), {len(figures)} kernels")
    failed = []
    for name, fig in sorted(figures.items()):
        faults = kernel_faults(name, fig)
        loop = fig["main_loop"]
        if matches(name, TENSOR_CORE) and loop and loop["hmma"]:
            print(f"{name:32s} {loop['instructions'] / loop['hmma']:6.1f} instructions/HMMA, "
                  f"{loop['division_sequences']} division sequences")
        failed += [f"{name}: {f}" for f in faults]
    if args.plan:
        idle = launch_faults(args.plan)
        for k, grid, blocks in idle:
            failed.append(f"{k}: a launch of grid {grid} ({blocks} blocks) leaves SMs of {SMS} idle")
        print(f"plan {args.plan}: {len(idle)} product launches under one block per SM")
    for f in failed:
        print(f"FAIL {f}", file=sys.stderr)
    if failed:
        sys.exit(1)
    print("sass_check: every rule holds")


if __name__ == "__main__":
    main()
