"""How rough a forecast's members are at the pixel scale, against the truth: the mean squared
difference between neighbouring pixels (periodic, both axes, all channels) of the members,
divided by that of the true future frames, per lead time. 1 means members as smooth as the flow;
a member with white noise of variance v added has its ratio raised by about 4 v / (that of the
truth). The ensemble mean's ratio is printed beside it.

    $PY experiments/pixel_noise.py FORECAST.npy TRUTH.npy     # PY=$(python/env.sh | tail -1)

FORECAST is `(N, M, S, C, H, W)` (`dydiff sample`), TRUTH `(N, L, C, H, W)` whose last S frames are
the future. Needs numpy.
"""

import sys

import numpy as np


def roughness(x):
    """Mean squared neighbour difference over the last two axes, per lead (axis -4)."""
    dx = np.roll(x, -1, axis=-1) - x
    dy = np.roll(x, -1, axis=-2) - x
    sq = dx.astype(np.float64) ** 2 + dy.astype(np.float64) ** 2
    lead_axis = sq.ndim - 4
    axes = tuple(a for a in range(sq.ndim) if a != lead_axis)
    return sq.mean(axis=axes) / 2


def main():
    forecast, truth = np.load(sys.argv[1]), np.load(sys.argv[2])
    s = forecast.shape[2]
    future = truth[:, -s:]
    members = roughness(forecast)
    mean = roughness(forecast.mean(axis=1))
    ref = roughness(future)
    print("| lead | members / truth | ensemble mean / truth |")
    print("|---|---|---|")
    for i in range(s):
        print(f"| {i + 1} | {members[i] / ref[i]:.2f} | {mean[i] / ref[i]:.2f} |")
    print(f"| all | {members.mean() / ref.mean():.2f} | {mean.mean() / ref.mean():.2f} |")


if __name__ == "__main__":
    main()
