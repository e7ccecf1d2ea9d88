//! The bf16 products ([`super::bf16`]) on AMX-BF16 tiles (`tdpbf16ps`; Intel Sapphire Rapids and
//! later): the same pair words, rounding and float32 sums as the `vdpbf16ps` path, computed by the
//! CPU's tile unit, which multiplies a 16 × 32 bf16 tile by a 32 × 16 one in one instruction.
//!
//! A product tile is 32 × [`NR`] float32 sums held in four accumulator tiles (`tmm0`–`tmm3`, 16
//! rows × 16 columns each), fed by two tiles of 16 rows of the left operand (`tmm4`, `tmm5`: 16
//! pair words of a row, 64 bytes) and two of the right panel (`tmm6`, `tmm7`: 16 pair rows of 16
//! columns) per block of 32 values along `k`. The right operand is [`super::bf16`]'s panel layout
//! as it is (its rows of [`NR`] pair words are the tile instruction's "VNNI" layout, two tiles side
//! by side), with `k` padded to whole blocks of zeros; the left operand is packed row-major as pair
//! words. Every element of the product is the same chain of tile instructions over its blocks
//! in order, whatever its position, the shape or the thread, so results do not depend on the batch.
//!
//! Linux hands the tile registers' state to a process only on request (`arch_prctl` with
//! `ARCH_REQ_XCOMP_PERM`, the kernel's documentation, x86/xstate); [`available`] asks once and
//! uses the tiles only if granted. Rust's AMX intrinsics are unstable, so the tile code is inline
//! assembly, one block per product tile: configure, zero, the loop over `k`, store, release.
//!
//! Tests run the whole path with a model of `tdpbf16ps` (Intel's pseudo-code: each pair's two
//! products added in order in float32) in place of the instruction on every CPU with
//! AVX512-BF16, and with the instruction itself where the CPU has AMX (saying when skipped):
//! `bf16`'s tests, against the same reference and bounds as the `vdpbf16ps` path.

use super::bf16::{self, Out, NR};
use super::matmul::Mat;

/// Rows of a product tile (two accumulator tiles of 16 rows).
const MT: usize = 32;
/// Pair words along `k` in one tile row (64 bytes: 32 bf16 values).
const KT: usize = 16;

/// Computes one product tile: `c (32 × NR, rows of NR) = Σ` over `blocks` blocks of [`KT`] pair
/// words of `a` (32 rows, `a_words` words apart) times the panel `b` (rows of [`NR`] words).
pub(super) type TileFn =
    unsafe fn(blocks: usize, a: *const u32, a_words: usize, b: *const u32, c: *mut f32);

/// Whether this CPU computes the bf16 products on AMX tiles: AMX-TILE and AMX-BF16 (CPUID leaf 7),
/// AVX512-BF16 for the packing, and the kernel's permission for the tile data (asked once).
pub fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
            let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
            amx_bf16 && amx_tile && bf16::available() && tile_data_granted()
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`);
/// whether it was granted. The permission holds for the whole process.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn tile_data_granted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// Pair rows of the right operand's panels for a `k`: `⌈k/2⌉` rounded up to whole tile blocks.
pub(super) fn pair_rows(k: usize) -> usize {
    k.div_ceil(2).div_ceil(KT) * KT
}

/// The product of `lhs (m×k)` with the panels `panels` ([`pair_rows`]`(k)` pair rows each),
/// written to `out` through `tile`; `a` holds the packed left operand.
pub(super) unsafe fn product(
    (m, n, k): (usize, usize, usize),
    lhs: Mat,
    a: &mut Vec<u32>,
    panels: &[u32],
    out: Out,
    tile: TileFn,
) {
    let kp = pair_rows(k);
    // row-major pair words, rows and k padded to whole tiles. The packing writes every word of
    // the rows and pairs that exist; each row's pairs past ⌈k/2⌉ meet zero rows of the panel but
    // are zeroed too (a stale non-finite word times zero is NaN); rows past `m` are computed and
    // discarded, so whatever the reused buffer holds there is never seen.
    a.resize(m.div_ceil(MT) * MT * kp, 0);
    bf16::pack_lhs(lhs, m, k, |i, p| i * kp + p, a);
    for row in a[..m * kp].chunks_exact_mut(kp) {
        row[k.div_ceil(2)..].fill(0);
    }
    let mut c = [0.0f32; MT * NR];
    for (panel, cols) in panels.chunks_exact(kp * NR).zip((0..n).step_by(NR)) {
        for rows in (0..m).step_by(MT) {
            tile(
                kp / KT,
                a[rows * kp..].as_ptr(),
                kp,
                panel.as_ptr(),
                c.as_mut_ptr(),
            );
            let corner = out.corner(rows, cols);
            #[cfg(target_arch = "x86_64")]
            bf16::store(&corner, &c, (MT.min(m - rows), NR.min(n - cols)));
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("AMX tiles are x86-64's: {corner:?}");
        }
    }
}

/// The tile configuration (palette 1): tiles 0–7 of 16 rows of 64 bytes.
static CONFIG: [u8; 64] = {
    let mut c = [0u8; 64];
    c[0] = 1; // palette
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row (little-endian u16)
        c[48 + t] = 16; // rows
        t += 1;
    }
    c
};

/// [`TileFn`] on the CPU's tiles: `tmm0..3 += tmm4..5 · tmm6..7` per block, then stored.
///
/// # Safety
/// The CPU has AMX-BF16 and the tile data is granted ([`available`]); `a` holds 32 rows of
/// `blocks·KT` words `a_words` apart, `b` `blocks·KT` rows of [`NR`] words, `c` 32 × [`NR`] floats.
pub(super) unsafe fn tile(
    blocks: usize,
    a: *const u32,
    a_words: usize,
    b: *const u32,
    c: *mut f32,
) {
    #[cfg(target_arch = "x86_64")]
    std::arch::asm!(
        "ldtilecfg [{cfg}]",
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "2:",
        "tileloadd tmm4, [{a} + {sa}*1]",
        "tileloadd tmm5, [{a16} + {sa}*1]",
        "tileloadd tmm6, [{b} + {row}*1]",
        "tileloadd tmm7, [{b} + {row}*1 + 64]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "add {a}, 64",
        "add {a16}, 64",
        "add {b}, {block}",
        "dec {blocks}",
        "jnz 2b",
        "tilestored [{c} + {row}*1], tmm0",
        "tilestored [{c} + {row}*1 + 64], tmm1",
        "tilestored [{c16} + {row}*1], tmm2",
        "tilestored [{c16} + {row}*1 + 64], tmm3",
        "tilerelease",
        cfg = in(reg) CONFIG.as_ptr(),
        a = inout(reg) a => _,
        a16 = inout(reg) a.add(16 * a_words) => _,
        sa = in(reg) a_words * 4,
        b = inout(reg) b => _,
        row = in(reg) NR * 4,
        block = const KT * NR * 4,
        blocks = inout(reg) blocks => _,
        c = in(reg) c,
        c16 = in(reg) c.add(16 * NR),
        options(nostack),
    );
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("AMX tiles are x86-64's: {blocks} {a:?} {a_words} {b:?} {c:?}");
}

/// [`TileFn`] as Intel's pseudo-code of `tdpbf16ps` computes it: for each row, pair word and
/// column, the pair's two products (exact in float32) added to the float32 sum one after the
/// other. The reference for the tile path on CPUs without AMX.
#[cfg(test)]
pub(super) unsafe fn model(
    blocks: usize,
    a: *const u32,
    a_words: usize,
    b: *const u32,
    c: *mut f32,
) {
    let lo = |w: u32| f32::from_bits(w << 16);
    let hi = |w: u32| f32::from_bits(w & 0xFFFF_0000);
    let c = std::slice::from_raw_parts_mut(c, MT * NR);
    c.fill(0.0);
    for q in 0..blocks {
        for r in 0..MT {
            for p in 0..KT {
                let aw = *a.add(r * a_words + q * KT + p);
                for (j, s) in c[r * NR..(r + 1) * NR].iter_mut().enumerate() {
                    let bw = *b.add((q * KT + p) * NR + j);
                    *s += lo(aw) * lo(bw);
                    *s += hi(aw) * hi(bw);
                }
            }
        }
    }
}
