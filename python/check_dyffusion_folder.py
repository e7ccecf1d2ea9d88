"""Checks that a DYffusion model folder written by `dydiff train --method dyffusion` is diffusers'
(docs/dyffusion.md, "Model folder"): both networks load with `UNet2DModel.from_pretrained` and give
the outputs `dydiff denoise` gives, at real-valued times, to float32 rounding.

    PY=$(python/env.sh | tail -1)
    $PY python/check_dyffusion_folder.py MODEL [DYDIFF_BINARY]
"""

import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch
from diffusers import UNet2DModel


def main(model, binary="target/release/dydiff"):
    model = pathlib.Path(model)
    settings = json.loads((model / "dydiff.json").read_text())
    assert settings["method"] == "dyffusion", settings["method"]
    rng = np.random.default_rng(0)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("interpolator", "forecaster"):
            net = UNet2DModel.from_pretrained(model / name).eval()
            c = net.config
            x = rng.standard_normal((3, c.in_channels, settings["height"], settings["width"])).astype(np.float32)
            for t in (0.5, 2.0, 3.25):
                np.save(f"{tmp}/x.npy", x)
                subprocess.run([binary, "denoise", "--unet", str(model / name), "--input", f"{tmp}/x.npy",
                                "--timestep", str(t), "--out", f"{tmp}/y.npy"], check=True)
                got = np.load(f"{tmp}/y.npy")
                with torch.no_grad():
                    want = net(torch.from_numpy(x), torch.full((3,), t)).sample.numpy()
                err = float(np.abs(got - want).max() / np.abs(want).max())
                worst = max(worst, err)
                print(f"{name} at time {t}: largest difference {err:.2e} of the largest output")
    print(f"worst {worst:.2e}")
    if worst > 1e-4:
        sys.exit(f"mismatch: {worst:.2e} > 1e-4")


if __name__ == "__main__":
    main(*sys.argv[1:])
