"""Generates the .npz reading fixtures of tests/ops/npz.rs (docs/data.md, “NumPy archives”:
.npz with one array).

tests/fixtures/npz/: one (2, 3, 2, 4, 5) float32 array saved as array.npy and as
stored.npz (np.savez), compressed.npz (np.savez_compressed), f64.npz (float64, compressed), and
two.npz holding two arrays (must be refused).

    PY=$(python/env.sh | tail -1); $PY python/make_npz_fixtures.py
"""

import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "npz"


def main():
    ROOT.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(3).standard_normal((2, 3, 2, 4, 5)).astype(np.float32)
    np.save(ROOT / "array.npy", a)
    np.savez(ROOT / "stored.npz", a)
    np.savez_compressed(ROOT / "compressed.npz", obs=a)
    np.savez_compressed(ROOT / "f64.npz", a.astype(np.float64))
    np.savez(ROOT / "two.npz", obs=a, truth=a)
    print(np.__version__, sorted(p.name for p in ROOT.iterdir()))


if __name__ == "__main__":
    main()
