"""Converts a diffusers folder's pickled weights (diffusion_pytorch_model.bin, the format of older
diffusers releases) to diffusion_pytorch_model.safetensors beside them, which dydiff reads.

Unpickling can run code: convert only weights from a source you trust. The tensors are written
unchanged (names, shapes, dtypes); the .bin file is left in place.

    PY=$(python/env.sh | tail -1); $PY python/convert_bin_weights.py MODEL/unet
"""

import pathlib
import sys

import torch
from safetensors.torch import save_file


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    folder = pathlib.Path(sys.argv[1])
    source = folder / "diffusion_pytorch_model.bin"
    target = folder / "diffusion_pytorch_model.safetensors"
    if not source.is_file():
        sys.exit(f"{source}: not found")
    if target.exists():
        sys.exit(f"{target}: exists already; remove it to convert again")
    state = torch.load(source, map_location="cpu", weights_only=True)
    tensors = {name: t.contiguous() for name, t in state.items()}
    save_file(tensors, str(target), metadata={"format": "pt"})
    print(f"wrote {target} ({len(tensors)} tensors)")


if __name__ == "__main__":
    main()
