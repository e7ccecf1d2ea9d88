"""Generates UNet2D parity fixtures from diffusers' UNet2DModel.

For each configuration: random non-trivial weights (every tensor perturbed, none at its default
initialisation), saved with save_pretrained into tests/fixtures/unet_<name>/, an input x.npy, and
for several timestep vectors t<k>.npy the diffusers output out<k>.npy (float32, CPU).

    PY=$(python/env.sh | tail -1); $PY python/make_fixtures.py [names...]
"""

import json
import pathlib
import sys

import numpy as np
import torch
from diffusers import UNet2DModel

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"

CONFIGS = {
    # attention at the two lower levels, one layer per block, non-square input, 8 groups
    "a": dict(
        model=dict(
            in_channels=3, out_channels=2, block_out_channels=(16, 32, 32), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8, attention_head_dim=8, flip_sin_to_cos=True, freq_shift=0,
        ),
        shape=(2, 3, 16, 24),
    ),
    # attention at the top level only, two layers, flip false, shift 1, 4 groups, no mid
    # attention, downsample padding 0, mid scale factor, explicit time embedding width
    "b": dict(
        model=dict(
            in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=2,
            down_block_types=("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D"),
            norm_num_groups=4, attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1,
            add_attention=False, downsample_padding=0, mid_block_scale_factor=1.41421356,
            time_embedding_dim=48,
        ),
        shape=(3, 4, 8, 8),
    ),
    # 32 groups (one channel per group at the top level), attention everywhere, separate mid attention groups, shift 1, small eps
    "c": dict(
        model=dict(
            in_channels=6, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
            norm_num_groups=32, attn_norm_num_groups=16, attention_head_dim=8,
            flip_sin_to_cos=True, freq_shift=1, norm_eps=1e-6,
        ),
        shape=(2, 6, 12, 20),
    ),
    # the benchmark layout in miniature: 20 in / 12 out, 3 levels, attention at the two lower
    # levels, head dim 32, 16 groups, two layers
    "d": dict(
        model=dict(
            in_channels=20, out_channels=12, block_out_channels=(32, 32, 32), layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=16, attention_head_dim=32, flip_sin_to_cos=True, freq_shift=0,
        ),
        shape=(2, 20, 16, 16),
    ),
    # no middle block; a head size that does not divide the channels (24 channels, head dim 16:
    # one head of 16, projections 24 -> 16 -> 24); 8 groups; odd spatial multiple of 2
    "e": dict(
        model=dict(
            in_channels=2, out_channels=2, block_out_channels=(24, 48), layers_per_block=1,
            down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
            norm_num_groups=8, attention_head_dim=16, mid_block_type=None,
        ),
        shape=(2, 2, 6, 10),
    ),
    # circular padding (padding_mode="circular" on every Conv2d, as a model folder's dydiff.json
    # asks): upsampling, stride-2 downsampling with padding 1, a non-square input
    "f": dict(
        model=dict(
            in_channels=3, out_channels=2, block_out_channels=(8, 16, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=4, attention_head_dim=8,
        ),
        shape=(2, 3, 8, 12),
        padding_mode="circular",
    ),
    # circular padding with Downsample2D(padding=0), whose one-sided pad is F.pad's zeros
    "g": dict(
        model=dict(
            in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4, downsample_padding=0,
        ),
        shape=(2, 2, 6, 6),
        padding_mode="circular",
    ),
}

TIMESTEPS = [[0, 0], [1, 1], [500, 500], [999, 999], [999, 3]]


def randomise(model: UNet2DModel, gen: torch.Generator) -> None:
    """Replaces every parameter with random values that make it matter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.5 * r)
            elif name.endswith("bias"):
                p.copy_(0.3 * r)
            else:
                fan_in = int(np.prod(p.shape[1:]))
                gain = 2.5 if any(k in name for k in ("to_q", "to_k")) else 1.2
                p.copy_(gain * r / np.sqrt(fan_in))


def main() -> None:
    torch.set_num_threads(2)
    only = set(sys.argv[1:])
    for name, spec in CONFIGS.items():
        if only and name not in only:
            continue
        gen = torch.Generator().manual_seed(1234 + ord(name))
        model = UNet2DModel(**spec["model"]).eval()
        randomise(model, gen)
        mode = spec.get("padding_mode", "zeros")
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.padding_mode = mode
        out_dir = ROOT / f"unet_{name}"
        model.save_pretrained(out_dir, safe_serialization=True)
        n = spec["shape"][0]
        x = torch.randn(spec["shape"], generator=gen)
        np.save(out_dir / "x.npy", x.numpy())
        cases = []
        for k, ts in enumerate(TIMESTEPS):
            t = torch.tensor((ts * n)[:n], dtype=torch.long)
            with torch.no_grad():
                y = model(x, t).sample
            np.save(out_dir / f"t{k}.npy", t.numpy().astype(np.float32))
            np.save(out_dir / f"out{k}.npy", y.numpy())
            cases.append({"t": t.tolist(), "max_abs": float(y.abs().max())})
        (out_dir / "cases.json").write_text(json.dumps(cases, indent=1))
        if mode != "zeros":
            (out_dir / "padding_mode.txt").write_text(mode + "\n")
        print(name, sum(p.numel() for p in model.parameters()), "params", [c["max_abs"] for c in cases])


if __name__ == "__main__":
    main()
