"""Why the CPU's bf16 products leave the Winograd convolutions in float32, and what would not:
the error of a 3×3 convolution (64 → 64 channels, 2 images of 16×16, unit-variance input, weights
of standard deviation 1/24) against float64, with the operands rounded to bf16 as the CPU's
`--precision bf16` rounds them — the plain operands (the direct path), the Winograd-domain
operands of F(3×3, 3×3) with the points 0, 1, −1, ½, ∞ (src/backend/cpu/winograd.rs), and those of
F(2×2, 3×3) (points 0, 1, −1, ∞: transforms of 0, ±½, ±1). Products summed in float64, so only
the rounding of the operands counts.

    PY=$(python/env.sh | tail -1); $PY python/bf16_winograd_error.py
"""

import torch

torch.manual_seed(0)


def bf16(x):
    return x.to(torch.bfloat16).to(torch.float64)


def cook_toom(points, m, r):
    """Aᵀ (m × n), G (n × r), Bᵀ (n × n) of F(m, r) for the finite `points` and ∞ (n = m + r − 1)."""
    n = m + r - 1
    f = torch.tensor(points, dtype=torch.float64)
    vander = lambda cols: torch.stack([f ** j for j in range(cols)], 1)  # noqa: E731
    at = torch.zeros(m, n, dtype=torch.float64)
    at[:, : n - 1] = vander(m).T
    at[m - 1, n - 1] = 1.0
    g = torch.zeros(n, r, dtype=torch.float64)
    g[: n - 1] = vander(r)
    g[n - 1, r - 1] = 1.0
    # Bᵀ: the inverse of the evaluation matrix of degree-(n−1) polynomials at the points and ∞
    v = torch.zeros(n, n, dtype=torch.float64)
    v[: n - 1] = vander(n)
    v[n - 1, n - 1] = 1.0
    bt = torch.linalg.inv(v).T
    return at, g, bt


def winograd(x, w, m, points, rnd=bf16):
    at, g, bt = cook_toom(points, m, 3)
    t = m + 2
    n_, c, h, wd = x.shape
    xp = torch.nn.functional.pad(x, (1, 1 + (-wd) % m, 1, 1 + (-h) % m))
    u = rnd(torch.einsum("ij,ocjk,lk->ocil", g, w, g))
    y = torch.zeros(n_, w.shape[0], h + (-h) % m, wd + (-wd) % m, dtype=torch.float64)
    for ty in range(0, h, m):
        for tx in range(0, wd, m):
            d = xp[:, :, ty : ty + t, tx : tx + t]
            v = rnd(torch.einsum("ij,ncjk,lk->ncil", bt, d, bt))
            mm = torch.einsum("ncil,ocil->noil", v, u)
            y[:, :, ty : ty + m, tx : tx + m] = torch.einsum("ij,nojk,lk->noil", at, mm, at)
    return y[:, :, :h, :wd]


def main():
    x = torch.randn(2, 64, 16, 16, dtype=torch.float64)
    w = torch.randn(64, 64, 3, 3, dtype=torch.float64) / 24
    exact = torch.nn.functional.conv2d(x, w, padding=1)
    # the transforms reproduce the convolution when nothing is rounded
    for m, pts in [(2, [0, 1, -1]), (3, [0, 1, -1, 0.5])]:
        err = (winograd(x, w, m, pts, rnd=lambda v: v) - exact).abs().max().item()
        assert err < 1e-9, (m, err)
    runs = {
        "direct": torch.nn.functional.conv2d(bf16(x), bf16(w), padding=1),
        "F(3x3, 3x3)": winograd(x, w, 3, [0, 1, -1, 0.5]),
        "F(2x2, 3x3)": winograd(x, w, 2, [0, 1, -1]),
    }
    base = None
    print("| operands rounded to bf16 | largest error | RMS error | RMS / direct's |")
    print("|---|---|---|---|")
    for name, y in runs.items():
        e = y - exact
        rms = e.pow(2).mean().sqrt().item()
        base = base or rms
        print(f"| {name} | {e.abs().max().item():.4g} | {rms:.4g} | {rms / base:.2f} |")


if __name__ == "__main__":
    main()
