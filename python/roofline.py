"""A roofline on paper for the CUDA backend: every kernel of one UNet2DModel forward (the benchmark
UNet of python/bench_vs_pytorch.py unless given a config.json) and of one DDIM step, as the
backend fuses them (docs/devices.md), with its floating-point work, the bytes it must move through
device memory, which limit binds, and the time it should take on a GPU; then the expected forward
and sampler-step times against PyTorch eager's launch-bound time. Standard library only.

    python3 python/roofline.py [--config UNET/config.json] [--batch 8] [--size 32]
        [--precision tf32] [--gpu h100] [--markdown] [--by-kind] [--built]

With --built, the kernels as the backend launches them now (one product per attention
projection, the time embedding's five small kernels) instead of the plan.

With --train, one training step instead of a sampler step: the forward (its outputs kept for the
backward), the backward of every kernel — a product's input and weight gradients (twice its
forward FLOPs; attention's recomputing backward 2.5 times, the scores rebuilt from the saved
softmax statistics), an element-wise or normalisation kernel's gradient (twice its bytes) — and
one fused optimizer pass (AdamW, clipping by the global norm, EMA: read weight, gradient, both
moments and the EMA, write all but the gradient, float32 state: 36 bytes per parameter, plus the
norm's read of the gradients). PyTorch eager: the forward's ops, about twice as many in the
backward (autograd's kernels), and the foreach optimizer's kernels, each one launch from Python.

Model of a kernel: time = max(flops / tensor_or_fma_peak, bytes / bandwidth, floor), where the
floor (3 µs) is what the smallest kernel costs inside a CUDA graph (launch, ramp-up, tail). Bytes
assume every operand crosses device memory once (L2 reuse within a kernel), float32 storage.
Fusions assumed (the plan of the backend): group-norm statistics in a small reduction kernel,
the norm and SiLU applied as a convolution loads its input, bias / time-embedding / residual /
output scale in the convolution's epilogue, upsampling and skip concatenation read in place by the
next convolution, attention as one kernel between its projections, the residual of attention in
the output projection's epilogue.
"""

import argparse
import json
import math

# Dense peaks (FLOP/s) and memory bandwidth (bytes/s): the datasheet's, and what is reached in
# practice (measured: bf16 ~790 of 990 TFLOP/s, copy ~4.3 TB/s on an H200; TF32 at half of bf16).
GPUS = {
    "h100": dict(name="H100 SXM", bf16=790e12, tf32=395e12, fp32=60e12, bw=3.0e12),
    "h200": dict(name="H200", bf16=790e12, tf32=395e12, fp32=60e12, bw=4.3e12),
}
FLOOR = 3e-6            # seconds: one small kernel inside a CUDA graph
TORCH_OP = 12e-6        # seconds: one eager PyTorch op from Python (dispatch + launch), batch-small

BENCH = dict(
    in_channels=20, out_channels=12, block_out_channels=[64, 128, 256], layers_per_block=2,
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    norm_num_groups=32, attention_head_dim=32,
)


KIND = {
    "conv1": "conv 3×3 (norm + SiLU on load, epilogue)", "conv2": "conv 3×3 (norm + SiLU on load, epilogue)",
    "conv_in": "conv 3×3 (plain, first and last)", "conv_out": "conv 3×3 (plain, first and last)",
    "downsample": "conv 3×3 stride 2", "upsample": "conv 3×3 on the upsampled input",
    "conv_shortcut": "conv 1×1 shortcut", "gn_stats": "group-norm statistics",
    "time_emb_proj": "linear (time embedding per block)", "to_qkv": "linear (q, k, v)",
    "to_out": "linear (attention output + residual)", "attention": "attention (fused)",
    "time_embedding": "time embedding MLP", "ddim_step": "DDIM step (fused)",
    "sinusoids": "timestep sinusoids", "linear_1": "time embedding MLP", "linear_2": "time embedding MLP",
    "silu": "SiLU (time embedding)", "silu_act": "SiLU (time embedding)", "to_q": "linear (q, k, v)",
    "to_k": "linear (q, k, v)", "to_v": "linear (q, k, v)",
}


class Plan:
    def __init__(self, gpu, precision, built=False):
        self.gpu, self.precision, self.kernels, self.torch_ops = gpu, precision, [], 0
        self.built = built
        self.params = 0  # weights of the products (biases and norms are a rounding error)

    def add(self, name, flops, bytes_, tensor=True):
        peak = self.gpu[self.precision] if tensor and self.precision != "fp32" else self.gpu["fp32"]
        tc, tm = flops / peak, bytes_ / self.gpu["bw"]
        t = max(tc, tm, FLOOR)
        bound = "floor" if t == FLOOR else ("compute" if tc >= tm else "memory")
        self.kernels.append(dict(name=name, flops=flops, bytes=bytes_, bound=bound, t=t, tensor=tensor))

    def conv(self, name, n, ci, h, w, co, k=3, stride=1, residual=False, norm=True, skip_ci=0):
        ho, wo = h // stride, w // stride
        cin = ci + skip_ci
        flops = 2 * n * ho * wo * co * cin * k * k
        self.params += co * cin * k * k
        bytes_ = 4 * (n * cin * h * w + co * cin * k * k + n * co * ho * wo * (2 if residual else 1))
        if norm:
            self.add(f"{name}.gn_stats", 8 * n * cin * h * w, 4 * n * cin * h * w, tensor=False)
        self.add(name, flops, bytes_)

    def linear(self, name, m, k, n, residual=False):
        self.params += k * n
        self.add(name, 2 * m * k * n, 4 * (m * k + k * n + m * n * (2 if residual else 1)))

    def resnet(self, name, n, ci, co, h, w, temb, skip_ci=0):
        cin = ci + skip_ci
        self.linear(f"{name}.time_emb_proj", n, temb, co)
        self.conv(f"{name}.conv1", n, cin, h, w, co)
        shortcut = cin != co
        if shortcut:
            self.conv(f"{name}.conv_shortcut", n, cin, h, w, co, k=1, norm=False)
        self.conv(f"{name}.conv2", n, co, h, w, co, residual=True)
        # diffusers: norm1, silu, conv1, silu(temb), linear, add, norm2, silu, dropout, conv2,
        # (conv_shortcut), add, div
        self.torch_ops += 13 + (1 if shortcut else 0)

    def attention(self, name, n, c, h, w, head_dim):
        l, heads = h * w, c // head_dim
        self.add(f"{name}.gn_stats", 8 * n * c * l, 4 * n * c * l, tensor=False)
        if self.built:  # one product per projection, each normalising the image as it loads
            for p in "qkv":
                self.linear(f"{name}.to_{p}", n * l, c, c)
        else:
            self.linear(f"{name}.to_qkv", n * l, c, 3 * c)
        flops = 4 * n * heads * l * l * head_dim + 5 * n * heads * l * l
        self.add(f"{name}.attention", flops, 4 * 4 * n * l * c)
        self.linear(f"{name}.to_out", n * l, c, c, residual=True)
        # group_norm, view/transpose x2, to_q, to_k, to_v, head reshapes x3, baddbmm, softmax,
        # bmm, reshape, to_out, dropout, transpose/reshape, add, div
        self.torch_ops += 20


def unet_forward(cfg, n, size, plan):
    ch = cfg["block_out_channels"]
    lpb = cfg["layers_per_block"]
    head = cfg.get("attention_head_dim") or ch[-1]
    temb = 4 * ch[0]
    if plan.built:  # sinusoids, linear_1, SiLU, linear_2, the SiLU every resnet receives
        plan.add("time_embedding.sinusoids", 20 * n * ch[0], 4 * n * (1 + ch[0]), tensor=False)
        plan.linear("time_embedding.linear_1", n, ch[0], temb)
        plan.add("time_embedding.silu", 4 * n * temb, 8 * n * temb, tensor=False)
        plan.linear("time_embedding.linear_2", n, temb, temb)
        plan.add("time_embedding.silu_act", 4 * n * temb, 8 * n * temb, tensor=False)
    else:
        plan.add("time_embedding", 2 * n * (ch[0] * temb + temb * temb), 4 * (ch[0] * temb + temb * temb), tensor=False)
    plan.torch_ops += 8
    plan.conv("conv_in", n, cfg["in_channels"], size, size, ch[0], norm=False)
    plan.torch_ops += 1
    h, c, skips = size, ch[0], [ch[0]]
    for i, kind in enumerate(cfg["down_block_types"]):
        for j in range(lpb):
            plan.resnet(f"down{i}.resnet{j}", n, c, ch[i], h, h, temb)
            c = ch[i]
            if kind.startswith("Attn"):
                plan.attention(f"down{i}.attn{j}", n, c, h, h, head)
            skips.append(c)
        if i < len(ch) - 1:
            plan.conv(f"down{i}.downsample", n, c, h, h, c, stride=2, norm=False)
            plan.torch_ops += 1
            h //= 2
            skips.append(c)
    plan.resnet("mid.resnet0", n, c, c, h, h, temb)
    plan.attention("mid.attn", n, c, h, h, head)
    plan.resnet("mid.resnet1", n, c, c, h, h, temb)
    rev = list(reversed(ch))
    for i, kind in enumerate(cfg["up_block_types"]):
        for j in range(lpb + 1):
            s = skips.pop()
            plan.resnet(f"up{i}.resnet{j}", n, c, rev[i], h, h, temb, skip_ci=s)
            plan.torch_ops += 1  # torch.cat
            c = rev[i]
            if kind.startswith("Attn"):
                plan.attention(f"up{i}.attn{j}", n, c, h, h, head)
        if i < len(ch) - 1:
            h *= 2
            plan.conv(f"up{i}.upsample", n, c, h, h, c, norm=False)
            plan.torch_ops += 2  # interpolate, conv
    plan.conv("conv_out", n, c, size, size, cfg["out_channels"])
    plan.torch_ops += 3


def ddim_step(cfg, n, size, plan, frames_state=10, diffused=6, channels=2):
    elems = channels * size * size
    plan.add("ddim_step", 30 * n * diffused * elems, 4 * n * elems * (2 * frames_state + diffused), tensor=False)
    plan.torch_ops += 25  # the scheduler's and the dynamics' tensor ops per step (Python loop)


def backward(plan, fwd):
    """The backward kernels of the forward's, and the fused optimizer pass (see --train)."""
    for k in reversed(fwd):
        factor = 2.5 if k["name"].endswith("attention") else 2.0
        plan.add(k["name"] + ".backward", factor * k["flops"], 2 * k["bytes"], tensor=k["tensor"])
    plan.torch_ops *= 3  # forward, and about twice as many launches in autograd's backward
    p = plan.params
    plan.add("optimizer (AdamW + clip + EMA)", 20 * p, 40 * p, tensor=False)
    plan.torch_ops += 30  # foreach AdamW, clip_grad_norm_, EMA lerp: a few multi-tensor launches


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--precision", default="tf32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    ap.add_argument("--markdown", action="store_true", help="print the per-kernel table too")
    ap.add_argument("--by-kind", action="store_true", help="print a table by kind of kernel")
    ap.add_argument("--train", action="store_true",
                    help="one training step (forward, backward, optimizer) instead of a sampler step")
    ap.add_argument("--built", action="store_true",
                    help="the kernels as the backend launches them now, not as planned")
    a = ap.parse_args()
    cfg = dict(BENCH)
    if a.config:
        cfg.update(json.load(open(a.config)))
    gpu = GPUS[a.gpu]
    plan = Plan(gpu, a.precision, built=a.built)
    unet_forward(cfg, a.batch, a.size, plan)
    fwd = list(plan.kernels)
    fwd_torch_ops = plan.torch_ops
    if a.train:
        backward(plan, fwd)
    else:
        ddim_step(cfg, a.batch, a.size, plan)

    def total(ks, key):
        return sum(k[key] for k in ks)

    t_fwd, t_step = total(fwd, "t"), total(plan.kernels, "t")
    print(f"{gpu['name']}, {a.precision}, batch {a.batch}, {a.size}×{a.size}: "
          f"{len(fwd)} kernels per forward, {total(fwd, 'flops') / 1e9:.1f} GFLOP, "
          f"{total(fwd, 'bytes') / 1e6:.1f} MB")
    by = {}
    for k in fwd:
        by.setdefault(k["bound"], [0, 0.0])
        by[k["bound"]][0] += 1
        by[k["bound"]][1] += k["t"]
    for b, (cnt, t) in sorted(by.items()):
        print(f"  {b}-bound: {cnt} kernels, {t * 1e6:.0f} µs")
    what = ("training step (forward, backward, fused optimizer; " f"{plan.params / 1e6:.1f} M weights, "
            f"{total(plan.kernels, 'flops') / 1e9:.0f} GFLOP)") if a.train else "sampler step (forward + fused DDIM step)"
    print(f"  expected forward (one CUDA graph): {t_fwd * 1e6:.0f} µs; {what}: {t_step * 1e6:.0f} µs")
    t_torch = plan.torch_ops * TORCH_OP
    print(f"  PyTorch eager, launch-bound: about {plan.torch_ops} ops × {TORCH_OP * 1e6:.0f} µs = "
          f"{t_torch * 1e3:.2f} ms per step ({fwd_torch_ops} in the forward) → expected ratio "
          f"{t_torch / t_step:.1f}×")
    if a.by_kind:
        kinds = {}
        for k in plan.kernels:
            kind = KIND.get(k["name"].rsplit(".", 1)[-1], k["name"].rsplit(".", 1)[-1])
            e = kinds.setdefault(kind, dict(n=0, flops=0, bytes=0, t=0.0, bounds=set()))
            e["n"] += 1
            e["flops"] += k["flops"]
            e["bytes"] += k["bytes"]
            e["t"] += k["t"]
            e["bounds"].add(k["bound"])
        print("\n| kernel | count | GFLOP | MB | bound | µs |\n|---|---|---|---|---|---|")
        for kind, e in sorted(kinds.items(), key=lambda kv: -kv[1]["t"]):
            print(f"| {kind} | {e['n']} | {e['flops'] / 1e9:.2f} | {e['bytes'] / 1e6:.1f} | "
                  f"{', '.join(sorted(e['bounds']))} | {e['t'] * 1e6:.0f} |")
    if a.markdown:
        print("\n| kernel | GFLOP | MB | bound | µs |\n|---|---|---|---|---|")
        for k in plan.kernels:
            print(f"| {k['name']} | {k['flops'] / 1e9:.3f} | {k['bytes'] / 1e6:.2f} | {k['bound']} | {k['t'] * 1e6:.1f} |")


if __name__ == "__main__":
    main()
