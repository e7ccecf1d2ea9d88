"""Bank conflicts of the tile product's shared memory (kernels/gemm_core.cuh), worked out per
warp: every store of a staged 64×16 slice (both load orders) and every fragment read of the three
ways to multiply (FFMA, TF32 m16n8k8, bf16 m16n8k16), for the layout as built — 16 floats a row,
the k index XOR-swizzled per row as `tile_col` does — and, for comparison, rows padded to 20
floats without a swizzle; then the attention kernel's staging stores (kernels/attention.cu, keys
and values in rows of 128 floats, `att_swizzle`) per head dimension. Prints the worst number of
distinct addresses one bank serves in one access (1: conflict-free).

    python3 python/bank_conflicts.py

Standard library only. Keep `swizzled` and `att_swizzle` in step with the kernels.
"""

TILE_M, TILE_K, THREADS = 64, 16, 128


def swizzled(mma, row, k):
    """The word address of (row, k) as tile_col lays it out."""
    h = (row >> 1) & 15
    if mma == "bf16":
        s = (h & 1) | ((h & 2) << 2) | ((h >> 2) << 1)
    else:
        s = ((h & 3) << 2) | (h >> 2)
    return row * TILE_K + (k ^ s)


def padded(_mma, row, k):
    """The word address of (row, k) in rows of 20 floats."""
    return row * (TILE_K + 4) + k


def degree(addresses):
    """Distinct addresses in the busiest of the 32 banks (several lanes at one address broadcast)."""
    banks = {}
    for a in set(addresses):
        banks.setdefault(a % 32, set()).add(a)
    return max(len(v) for v in banks.values())


def accesses(mma, addr):
    """{access kind: [addresses of the 32 lanes]} for every warp."""
    out = {}
    for warp in range(THREADS // 32):
        lanes = range(32 * warp, 32 * warp + 32)
        for k_contiguous in (True, False):
            kind = "store, k-contiguous loads" if k_contiguous else "store, row-contiguous loads"
            for q in range(8):
                slots = []
                for tid in lanes:
                    e = tid + THREADS * q
                    row, k = (e // TILE_K, e % TILE_K) if k_contiguous else (e % TILE_M, e // TILE_M)
                    slots.append(addr(mma, row, k))
                out.setdefault(kind, []).append(slots)
        wm, wn = (warp // 2) * 32, (warp % 2) * 32

        def read(f):
            return [f(lane // 4, lane % 4) for lane in range(32)]

        reads = out.setdefault("fragment reads", [])
        if mma == "tf32":
            for kk in (0, 8):
                for dk in (0, 4):
                    for i in range(2):
                        for dr in (0, 8):
                            reads.append(read(lambda g, t: addr(mma, wm + 16 * i + g + dr, kk + t + dk)))
                    for j in range(4):
                        reads.append(read(lambda g, t: addr(mma, wn + 8 * j + g, kk + t + dk)))
        elif mma == "bf16":
            for dk in (0, 1, 8, 9):
                for i in range(2):
                    for dr in (0, 8):
                        reads.append(read(lambda g, t: addr(mma, wm + 16 * i + g + dr, 2 * t + dk)))
                for j in range(4):
                    reads.append(read(lambda g, t: addr(mma, wn + 8 * j + g, 2 * t + dk)))
        else:
            for k in range(TILE_K):
                for i in range(2):
                    for dr in (0, 8):
                        reads.append(read(lambda g, t: addr(mma, wm + 16 * i + g + dr, k)))
                for j in range(4):
                    for dc in (0, 1):
                        reads.append(read(lambda g, t: addr(mma, wn + 8 * j + 2 * t + dc, k)))
    return out


def att_swizzle(j):
    """The column mask of key j in the attention kernel's staged tiles."""
    return ((j & 1) << 4) | ((j & 2) << 2) | (j & 4)


def attention(d, swizzle):
    """The worst degree of the staging stores for head dimension d: a warp stores 32 consecutive
    (key, dimension) pairs (rows of 128 floats); the reads (one key, dimensions t + 4i) broadcast."""
    worst = 1
    for e0 in range(0, 32 * d, 32):
        a = []
        for e in range(e0, e0 + 32):
            j, dim = divmod(e, d)
            if j < 32:
                a.append(j * 128 + (dim ^ att_swizzle(j) if swizzle else dim))
        worst = max(worst, degree(a))
    return worst


def main():
    for row in range(TILE_M):
        for mma in ("f32", "tf32", "bf16"):
            cols = sorted(swizzled(mma, row, k) - row * TILE_K for k in range(TILE_K))
            assert cols == list(range(TILE_K)), f"the swizzle of row {row} is not a permutation"
    print("| MMA | access | as built (swizzled, 16 a row) | padded to 20, no swizzle |")
    print("|---|---|---|---|")
    for mma in ("f32", "tf32", "bf16"):
        built, old = accesses(mma, swizzled), accesses(mma, padded)
        for kind in built:
            worst = max(degree(a) for a in built[kind])
            before = max(degree(a) for a in old[kind])
            print(f"| {mma} | {kind} | {worst}-way | {before}-way |")
    print()
    print("| attention, head dimension | as built (att_swizzle) | no swizzle |")
    print("|---|---|---|")
    for d in (1, 2, 4, 8, 16, 32, 64, 128):
        print(f"| {d} | {attention(d, True)}-way | {attention(d, False)}-way |")


if __name__ == "__main__":
    main()
