"""PyTorch's error at TF32 and at bf16 on the UNet parity fixtures, for the CUDA backend's
tolerance rule (docs/devices.md, “Precision”: at most twice PyTorch's error at the same precision
on the same input).

A GPU multiplies TF32 or bf16 operands exactly and accumulates in float32; this emulates it on the
CPU by rounding both operands of every product of the network — convolutions, linear layers and
the two products of attention — to TF32 (to nearest, ties away from zero, 10 mantissa bits, as
`cvt.rna.tf32.f32`) or to bf16 (to nearest even, 7 mantissa bits), and computing in float32 (the
storage of the CUDA backend's `--precision bf16`). For each fixture tests/fixtures/unet_<name>/, each
precision and each timestep vector k it writes <precision>.json: {"max_err": [...], "rms_err":
[...]}, the error of that output against the float32 output out<k>.npy (whose own error is far
smaller).

    PY=$(python/env.sh | tail -1); $PY python/make_precision_fixtures.py
"""

import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def tf32(t):
    bits = t.contiguous().view(torch.int32)
    finite = (bits & 0x7F800000) != 0x7F800000
    rounded = (bits + 0x1000) & ~0x1FFF
    return torch.where(finite, rounded, bits).view(torch.float32)


def bf16(t):
    return t.to(torch.bfloat16).to(torch.float32)  # to nearest, ties to even


ROUND = {"tf32": tf32, "bf16": bf16}
MODE = ["tf32"]


def r(t):
    return ROUND[MODE[0]](t)


def main():
    conv, linear, bmm, baddbmm = F.conv2d, F.linear, torch.bmm, torch.baddbmm
    F.conv2d = lambda x, w, *a, **k: conv(r(x), r(w), *a, **k)
    F.linear = lambda x, w, *a, **k: linear(r(x), r(w), *a, **k)
    torch.bmm = lambda a, b, **k: bmm(r(a), r(b), **k)
    torch.baddbmm = lambda c, a, b, **k: baddbmm(c, r(a), r(b), **k)
    for mode in ROUND:
        MODE[0] = mode
        fixtures(mode)


def fixtures(mode):
    for d in sorted(ROOT.glob("unet_*")):
        model = UNet2DModel.from_pretrained(d).eval()
        for m in model.modules():
            if isinstance(m, Attention):
                m.set_processor(AttnProcessor())  # baddbmm and bmm, not the fused kernel
        x = torch.from_numpy(np.load(d / "x.npy"))
        max_err, rms_err = [], []
        k = 0
        while (d / f"t{k}.npy").exists():
            t = torch.from_numpy(np.load(d / f"t{k}.npy"))
            want = np.load(d / f"out{k}.npy").astype(np.float64)
            with torch.no_grad():
                got = model(x, t).sample.numpy().astype(np.float64)
            err = np.abs(got - want)
            max_err.append(float(err.max()))
            rms_err.append(float(np.sqrt((err**2).mean())))
            k += 1
        (d / f"{mode}.json").write_text(json.dumps({"max_err": max_err, "rms_err": rms_err}) + "\n")
        print(mode, d.name, ["%.3g" % e for e in max_err])


if __name__ == "__main__":
    main()
