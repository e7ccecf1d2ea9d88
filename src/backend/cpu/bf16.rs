//! Matrix products with bf16 operands and float32 accumulation: the CPU's `--precision bf16`
//! (docs/devices.md, “Precision”), on CPUs with AVX512-BF16 (`vdpbf16ps`; AMD Zen 4, Intel
//! Cooper Lake and Sapphire Rapids, and later). Each operand is rounded to bf16 (8 significant
//! bits, nearest, ties to even; subnormals to zero, as the instruction does) when it is packed;
//! products of pairs are summed in float32, so the error is that of the rounded operands, about
//! `2⁻⁸·Σ|aᵢ·bᵢ|`, not of a bf16 sum.
//!
//! The `k` sum runs in pairs: `vdpbf16ps` adds `a₂ₚ·b₂ₚ + a₂ₚ₊₁·b₂ₚ₊₁` to each float32 lane, so
//! both operands are packed as 32-bit words holding a pair of bf16 values along `k` (an odd `k`
//! ends with a zero). `lhs` is packed in blocks of [`MR`] rows (`⌈k/2⌉ × MR` words each, the
//! last block padded with zero rows), `rhs` in panels of [`NR`] columns (`⌈k/2⌉ × NR` words
//! each); the register tile is `MR × NR`: 24 accumulators of 16 lanes, each row's pair word
//! broadcast against the panel's two vectors. Every element of the product is one chain of `vdpbf16ps` over its pairs in
//! order, whatever its position, the shape or the thread: the same bits for any batch, as the
//! float32 path (`matmul::gemm1`).
//!
//! Where the CPU has AMX-BF16 (Intel Sapphire Rapids and later), the same packed operands go to
//! the tile unit instead ([`super::amx`]): the same roundings and float32 sums, other tiles.
//!
//! Reference: [`reference()`] (the rounded operands, products summed in f64). Bench: `cargo bench
//! --bench ops -- bf16`.

use super::matmul::Mat;
use std::cell::RefCell;

/// Rows of the register tile.
pub const MR: usize = 12;
/// Columns of the register tile (two vectors of 16 lanes).
pub const NR: usize = 32;

/// Whether this CPU runs the bf16 products (AVX512-F and AVX512-BF16).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The bf16 bits of `x`: nearest, ties to even; a subnormal becomes a zero of its sign and a NaN
/// stays a (quiet) NaN — as `vcvtneps2bf16` converts.
pub fn bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else if b & 0x7F80_0000 == 0 {
        ((b & 0x8000_0000) >> 16) as u16
    } else {
        ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// `x` rounded to bf16, as a float32 (see [`bits`]).
pub fn round(x: f32) -> f32 {
    f32::from_bits(u32::from(bits(x)) << 16)
}

/// A pair word: the bf16 of `lo` in the low half, of `hi` in the high half.
fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(bits(lo)) | (u32::from(bits(hi)) << 16)
}

/// The plain reference: `alpha · Σₜ round(a[i][t])·round(b[t][j])` summed in f64, for `a`
/// `m × k` and `b` `k × n`, row-major.
pub fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, alpha: f32) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|t| f64::from(round(a[i * k + t])) * f64::from(round(b[t * n + j])))
                .sum();
            y[i * n + j] = (f64::from(alpha) * s) as f32;
        }
    }
    y
}

thread_local! {
    /// The packed operands of the thread's last product (reused: no allocation per call).
    static PACKS: RefCell<(Vec<u32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `dst (m×n) = [dst +] alpha · lhs (m×k) · rhs (k×n)` on one thread with bf16 operands (see the
/// module's documentation); `m, n, k ≥ 1`. Only where [`available`]. On a CPU with AMX-BF16
/// ([`super::amx::available`]) the tiles are AMX's, elsewhere `vdpbf16ps` register tiles.
///
/// # Safety
/// As [`super::matmul::gemm1`]: every operand valid for the ranges its strides describe, `dst`
/// not aliasing `lhs` or `rhs`; and the CPU must have AVX512-BF16 ([`available`]).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    alpha: f32,
) {
    let engine = if super::amx::available() {
        Engine::Amx(super::amx::tile)
    } else {
        Engine::Avx512
    };
    let out = Out {
        dst,
        rs: dst_rs,
        cs: dst_cs,
        accumulate,
        alpha,
    };
    gemm_with(engine, (m, n, k), lhs, rhs, out);
}

/// What computes the products' tiles.
#[derive(Clone, Copy)]
pub(super) enum Engine {
    /// `vdpbf16ps` on an [`MR`] × [`NR`] register tile.
    Avx512,
    /// AMX-BF16 tiles ([`super::amx`]) through this tile function: [`super::amx::tile`], or in
    /// tests the instruction's model.
    Amx(super::amx::TileFn),
}

/// [`gemm`] with the given engine.
pub(super) unsafe fn gemm_with(
    engine: Engine,
    (m, n, k): (usize, usize, usize),
    lhs: Mat,
    rhs: Mat,
    out: Out,
) {
    PACKS.with(|cell| {
        let (a, b) = &mut *cell.borrow_mut();
        let kp = match engine {
            Engine::Avx512 => k.div_ceil(2),
            Engine::Amx(_) => super::amx::pair_rows(k),
        };
        b.resize(n.div_ceil(NR) * NR * kp, 0);
        pack_rhs(rhs, k, n, kp, b);
        match engine {
            Engine::Avx512 => product(m, n, k, lhs, a, b, out),
            Engine::Amx(tile) => super::amx::product((m, n, k), lhs, a, b, out, tile),
        }
    })
}

/// Where a product goes: `dst[i·rs + j·cs] = [dst +] alpha · Σ`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Out {
    pub dst: *mut f32,
    pub rs: isize,
    pub cs: isize,
    pub accumulate: bool,
    pub alpha: f32,
}

impl Out {
    /// The same destination from its element `(row, col)` on.
    pub unsafe fn corner(&self, row: usize, col: usize) -> Out {
        Out {
            dst: self
                .dst
                .offset(row as isize * self.rs + col as isize * self.cs),
            ..*self
        }
    }
}

/// The product of `lhs (m×k)`, packed into `a`, with the packed panels of the right operand.
unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat,
    a: &mut Vec<u32>,
    panels: &[u32],
    out: Out,
) {
    debug_assert!(available() && m > 0 && n > 0 && k > 0);
    let kp = k.div_ceil(2);
    a.resize(m.div_ceil(MR) * MR * kp, 0);
    // word p of row i at (⌊i/MR⌋·kp + p)·MR + i mod MR: blocks of MR rows, pair-major
    let place = |i: usize, p: usize| (i / MR * kp + p) * MR + i % MR;
    pack_lhs(lhs, m, k, place, a);
    // the last block's missing rows multiply as zeros
    for i in m..m.div_ceil(MR) * MR {
        for p in 0..kp {
            a[place(i, p)] = 0;
        }
    }
    for (panel, cols) in panels.chunks_exact(kp * NR).zip((0..n).step_by(NR)) {
        for rows in (0..m).step_by(MR) {
            let block = &a[rows * kp..(rows + MR) * kp];
            let corner = out.corner(rows, cols);
            #[cfg(target_arch = "x86_64")]
            tile(
                kp,
                block,
                panel,
                &corner,
                (MR.min(m - rows), NR.min(n - cols)),
            );
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("bf16 products need AVX512-BF16: {block:?} {corner:?}");
        }
    }
}

/// Packs `lhs (m×k)` as pair words, word `p` of row `i` (values `2p` and `2p + 1`, an odd `k`
/// ending with a zero) at `out[place(i, p)]`, for `i < m` and `p < ⌈k/2⌉`; the caller zeroes
/// any padding.
pub(super) unsafe fn pack_lhs(
    lhs: Mat,
    m: usize,
    k: usize,
    place: impl Fn(usize, usize) -> usize,
    out: &mut [u32],
) {
    let kp = k.div_ceil(2);
    let at = |i: usize, t: usize| {
        if t < k {
            *lhs.ptr.offset(i as isize * lhs.rs + t as isize * lhs.cs)
        } else {
            0.0
        }
    };
    #[cfg(target_arch = "x86_64")]
    if lhs.cs == 1 {
        // rows are contiguous: convert each whole, then place its words
        let mut row = vec![0u32; kp];
        for i in 0..m {
            contiguous_pairs(lhs.ptr.offset(i as isize * lhs.rs), k, &mut row);
            for (p, &w) in row.iter().enumerate() {
                out[place(i, p)] = w;
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if lhs.rs == 1 {
        // columns are contiguous: the pair words of 16 rows from two columns at once
        let mut words = [0u32; 16];
        for p in 0..kp {
            let c0 = lhs.ptr.offset(2 * p as isize * lhs.cs);
            let c1 = (2 * p + 1 < k).then(|| c0.offset(lhs.cs));
            for i0 in (0..m).step_by(16) {
                let rows = 16.min(m - i0);
                if rows == 16 {
                    interleave_rows(c0.add(i0), c1.map(|c| c.add(i0)), words.as_mut_ptr());
                } else {
                    for (q, w) in words.iter_mut().enumerate().take(rows) {
                        *w = pair(*c0.add(i0 + q), c1.map_or(0.0, |c| *c.add(i0 + q)));
                    }
                }
                for (q, &w) in words.iter().enumerate().take(rows) {
                    out[place(i0 + q, p)] = w;
                }
            }
        }
        return;
    }
    for i in 0..m {
        for p in 0..kp {
            out[place(i, p)] = pair(at(i, 2 * p), at(i, 2 * p + 1));
        }
    }
}

/// Packs `rhs (k×n)` in panels of [`NR`] columns and `kp ≥ ⌈k/2⌉` pair rows: word `(p, j)` of
/// panel `q` (pair `p` of column `q·NR + j`) at `out[(q·kp + p)·NR + j]`, columns past `n` and
/// pairs past `⌈k/2⌉` zero. Every word is written.
unsafe fn pack_rhs(rhs: Mat, k: usize, n: usize, kp: usize, out: &mut [u32]) {
    let pairs = k.div_ceil(2);
    for panel in out[..n.div_ceil(NR) * kp * NR].chunks_exact_mut(kp * NR) {
        panel[pairs * NR..].fill(0);
    }
    for j in n..n.div_ceil(NR) * NR {
        let panel = &mut out[(j / NR) * kp * NR..];
        for p in 0..pairs {
            panel[p * NR + j % NR] = 0;
        }
    }
    let at = |t: usize, j: usize| {
        if t < k {
            *rhs.ptr.offset(t as isize * rhs.rs + j as isize * rhs.cs)
        } else {
            0.0
        }
    };
    #[cfg(target_arch = "x86_64")]
    if rhs.rs == 1 {
        // each column is contiguous along k: convert it whole, then place its words
        let mut col = vec![0u32; pairs];
        for j in 0..n {
            contiguous_pairs(rhs.ptr.offset(j as isize * rhs.cs), k, &mut col);
            let panel = &mut out[(j / NR) * kp * NR..];
            for (p, &w) in col.iter().enumerate() {
                panel[p * NR + j % NR] = w;
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    let vectors = if rhs.cs == 1 { n / 16 * 16 } else { 0 };
    #[cfg(not(target_arch = "x86_64"))]
    let vectors = 0;
    #[cfg(target_arch = "x86_64")]
    for p in 0..pairs {
        // rows 2p and 2p + 1 are contiguous: 16 columns a conversion
        let r0 = rhs.ptr.offset(2 * p as isize * rhs.rs);
        let r1 = (2 * p + 1 < k).then(|| r0.offset(rhs.rs));
        for j in (0..vectors).step_by(16) {
            let panel = &mut out[(j / NR) * kp * NR..];
            interleave_rows(
                r0.add(j),
                r1.map(|r| r.add(j)),
                panel[p * NR + j % NR..].as_mut_ptr(),
            );
        }
    }
    for j in vectors..n {
        let panel = &mut out[(j / NR) * kp * NR..];
        for p in 0..pairs {
            panel[p * NR + j % NR] = pair(at(2 * p, j), at(2 * p + 1, j));
        }
    }
}

/// The pair words of 16 columns of two rows: `lo[j]` in the low half of word `j`, `hi[j]` (zero
/// without a second row) in the high half.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn interleave_rows(lo: *const f32, hi: Option<*const f32>, out: *mut u32) {
    use std::arch::x86_64::*;
    let half = |x: *const f32| -> __m512i {
        let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(x)));
        _mm512_cvtepu16_epi32(h)
    };
    let mut w = half(lo);
    if let Some(hi) = hi {
        w = _mm512_or_si512(w, _mm512_slli_epi32::<16>(half(hi)));
    }
    _mm512_storeu_si512(out.cast(), w);
}

/// The pair words of `k` contiguous values at `src` (an odd `k` ends with a zero), 32 values a
/// conversion.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn contiguous_pairs(src: *const f32, k: usize, out: &mut [u32]) {
    let whole = k / 32 * 32;
    convert_runs(src, whole, out.as_mut_ptr());
    for (p, w) in out
        .iter_mut()
        .enumerate()
        .take(k.div_ceil(2))
        .skip(whole / 2)
    {
        let t = 2 * p;
        let hi = if t + 1 < k { *src.add(t + 1) } else { 0.0 };
        *w = pair(*src.add(t), hi);
    }
}

/// Converts `len` (a multiple of 32) contiguous values at `src` to `len / 2` pair words at `out`:
/// `vcvtne2ps2bf16` keeps the order, so consecutive values pair up.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn convert_runs(src: *const f32, len: usize, out: *mut u32) {
    use std::arch::x86_64::*;
    for t in (0..len).step_by(32) {
        let lo = _mm512_loadu_ps(src.add(t));
        let hi = _mm512_loadu_ps(src.add(t + 16));
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(out.add(t / 2).cast(), v);
    }
}

/// One `MR × NR` tile, `Σₚ pairs a[p][r] · panel[p][c]` over `kp` pair words (`a` a block of
/// [`pack_lhs`] in `product`'s layout), of which the first `rows × cols` go to `out` (its
/// corner) through [`store`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(kp: usize, a: &[u32], panel: &[u32], out: &Out, (rows, cols): (usize, usize)) {
    use std::arch::x86_64::*;
    let mut c = [[_mm512_setzero_ps(); 2]; MR];
    let (a, b) = (a.as_ptr(), panel.as_ptr());
    for p in 0..kp {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
        for (r, cr) in c.iter_mut().enumerate() {
            let w: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + r) as i32));
            cr[0] = _mm512_dpbf16_ps(cr[0], w, b0);
            cr[1] = _mm512_dpbf16_ps(cr[1], w, b1);
        }
    }
    let mut acc = [0.0f32; MR * NR];
    for (row, cr) in acc.chunks_exact_mut(NR).zip(&c) {
        _mm512_storeu_ps(row.as_mut_ptr(), cr[0]);
        _mm512_storeu_ps(row.as_mut_ptr().add(16), cr[1]);
    }
    store(out, &acc, (rows, cols));
}

/// Writes the first `rows × cols` of the sums `acc` (rows of [`NR`]) to `out`: `alpha ·` the sum,
/// plus what `out` held when accumulating — the same two roundings whichever way it is stored.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn store(out: &Out, acc: &[f32], (rows, cols): (usize, usize)) {
    use std::arch::x86_64::*;
    let alpha = _mm512_set1_ps(out.alpha);
    if out.cs == 1 {
        // rows of the destination are contiguous: masked vector stores
        let mask = |from: usize| -> __mmask16 {
            let n = cols.saturating_sub(from).min(16);
            ((1u32 << n) - 1) as __mmask16
        };
        for (r, row) in acc.chunks_exact(NR).enumerate().take(rows) {
            let d = out.dst.offset(r as isize * out.rs);
            for half in 0..NR / 16 {
                let m = mask(16 * half);
                if m == 0 {
                    continue; // no column of this half: not even its address is formed
                }
                let mut v = _mm512_mul_ps(alpha, _mm512_loadu_ps(row.as_ptr().add(16 * half)));
                if out.accumulate {
                    v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, d.add(16 * half)), v);
                }
                _mm512_mask_storeu_ps(d.add(16 * half), m, v);
            }
        }
        return;
    }
    for (r, row) in acc.chunks_exact(NR).enumerate().take(rows) {
        for (j, &sum) in row.iter().enumerate().take(cols) {
            let v = out.alpha * sum;
            let d = out.dst.offset(r as isize * out.rs + j as isize * out.cs);
            *d = if out.accumulate { *d + v } else { v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) with a spread of magnitudes (SplitMix64).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::nn::InitRng::new(seed);
        (0..n)
            .map(|i| ((2.0 * rng.uniform() - 1.0) * if i % 7 == 0 { 1e3 } else { 1.0 }) as f32)
            .collect()
    }

    /// The engines to test, each with its name: `vdpbf16ps` tiles, AMX tiles through the model of
    /// `tdpbf16ps`, and through the instruction where the CPU has AMX (else said to be skipped).
    fn engines() -> Vec<(&'static str, Engine)> {
        let mut e = vec![
            ("vdpbf16ps", Engine::Avx512),
            (
                "AMX tiles (model)",
                Engine::Amx(crate::backend::cpu::amx::model),
            ),
        ];
        if crate::backend::cpu::amx::available() {
            e.push(("AMX tiles", Engine::Amx(crate::backend::cpu::amx::tile)));
        } else {
            eprintln!(
                "skipped on this CPU (no AMX-BF16, or no tile permission): the AMX instructions"
            );
        }
        e
    }

    /// A product through [`gemm_with`] of row-major `a (m×k)` and `b (k×n)`, each laid out as
    /// `lay` says: 0 row-major, 1 column-major, 2 strided in both (every other element).
    fn product(
        engine: Engine,
        a: &[f32],
        b: &[f32],
        (m, k, n): (usize, usize, usize),
        lay: (u8, u8),
    ) -> Vec<f32> {
        let layout = |x: &[f32], rows: usize, cols: usize, l: u8| -> (Vec<f32>, isize, isize) {
            match l {
                0 => (x.to_vec(), cols as isize, 1),
                1 => {
                    let t = (0..rows * cols)
                        .map(|q| x[(q % rows) * cols + q / rows])
                        .collect();
                    (t, 1, rows as isize)
                }
                _ => {
                    let mut t = vec![f32::NAN; 2 * rows * cols];
                    for (q, &v) in x.iter().enumerate() {
                        t[2 * q] = v;
                    }
                    (t, 2 * cols as isize, 2)
                }
            }
        };
        let (la, ars, acs) = layout(a, m, k, lay.0);
        let (lb, brs, bcs) = layout(b, k, n, lay.1);
        let mut y = vec![0.0f32; m * n];
        let lhs = Mat {
            ptr: la.as_ptr(),
            rs: ars,
            cs: acs,
        };
        let rhs = Mat {
            ptr: lb.as_ptr(),
            rs: brs,
            cs: bcs,
        };
        let out = Out {
            dst: y.as_mut_ptr(),
            rs: n as isize,
            cs: 1,
            accumulate: false,
            alpha: 0.5,
        };
        // SAFETY: the operands hold the described ranges; y is separate.
        unsafe { gemm_with(engine, (m, n, k), lhs, rhs, out) };
        y
    }

    /// Products of every engine and layout against the reference (the rounded operands, summed in
    /// f64): `|y − ref| ≤ 4·k·2⁻²⁴·Σ|aᵢ·bᵢ|` (float32 accumulation), and against the float32
    /// product within bf16's rounding, `2⁻⁷·Σ|aᵢ·bᵢ|`; odd `k`, edges of the register and AMX
    /// tiles (12 and 32 rows, 32 columns, 32 values of `k`), `k` of 1 and 2.
    #[test]
    fn products_match_the_reference() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 2, 5),
            (12, 64, 32),
            (13, 33, 33),
            (5, 40, 23),
            (25, 301, 70),
            (40, 1024, 7),
            (33, 32, 64),
            (64, 65, 31),
        ] {
            let (a, b) = (values(m * k, 1), values(k * n, 2));
            let want = reference(&a, &b, m, k, n, 0.5);
            for (name, engine) in engines() {
                let first = product(engine, &a, &b, (m, k, n), (0, 0));
                for lay in [(0, 0), (1, 1), (0, 1), (1, 0), (2, 2)] {
                    let y = product(engine, &a, &b, (m, k, n), lay);
                    // every packing path gives the same words, so the same bits
                    assert_eq!(
                        y, first,
                        "{name} {m}×{k}×{n} layout {lay:?} against row-major"
                    );
                    for i in 0..m {
                        for j in 0..n {
                            let mag: f64 = (0..k)
                                .map(|t| f64::from((a[i * k + t] * b[t * n + j]).abs()))
                                .sum::<f64>()
                                * 0.5;
                            let exact: f64 = (0..k)
                                .map(|t| f64::from(a[i * k + t]) * f64::from(b[t * n + j]))
                                .sum::<f64>()
                                * 0.5;
                            let got = f64::from(y[i * n + j]);
                            let bound = 4.0 * k as f64 * 2f64.powi(-24) * mag + 1e-30;
                            assert!(
                            (got - f64::from(want[i * n + j])).abs() <= bound,
                            "{name} {m}×{k}×{n} layout {lay:?} [{i}, {j}]: {got} vs reference {}",
                            want[i * n + j]
                        );
                            assert!(
                                (got - exact).abs() <= 2f64.powi(-7) * mag + 1e-30,
                                "{name}: {got} vs exact {exact}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Accumulating into a destination of any layout adds the product's own bits:
    /// `dst + alpha·Σ` equals `dst + (the product written afresh)`, bit for bit, for a
    /// column-major destination (the scalar write-back) and a row-major one (the masked stores),
    /// with widths that end inside either half of the tile.
    #[test]
    fn accumulating_adds_the_products_bits() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let shapes = [(7, 19, 23), (13, 8, 5), (12, 50, 32), (40, 33, 17)];
        for ((name, engine), (m, k, n)) in
            engines().into_iter().flat_map(|e| shapes.map(|s| (e, s)))
        {
            let (a, b, c) = (values(m * k, 6), values(k * n, 7), values(m * n, 8));
            let fresh = product(engine, &a, &b, (m, k, n), (0, 0));
            let lhs = Mat {
                ptr: a.as_ptr(),
                rs: k as isize,
                cs: 1,
            };
            let rhs = Mat {
                ptr: b.as_ptr(),
                rs: n as isize,
                cs: 1,
            };
            for (rs, cs) in [(n as isize, 1), (1, m as isize)] {
                let at = |i: usize, j: usize| (i as isize * rs + j as isize * cs) as usize;
                let mut d = vec![0.0f32; m * n];
                for i in 0..m {
                    for j in 0..n {
                        d[at(i, j)] = c[i * n + j];
                    }
                }
                let out = Out {
                    dst: d.as_mut_ptr(),
                    rs,
                    cs,
                    accumulate: true,
                    alpha: 0.5,
                };
                // SAFETY: d holds m × n values in the described layout; operands separate.
                unsafe { gemm_with(engine, (m, n, k), lhs, rhs, out) };
                for i in 0..m {
                    for j in 0..n {
                        let want = c[i * n + j] + fresh[i * n + j];
                        assert_eq!(
                            d[at(i, j)].to_bits(),
                            want.to_bits(),
                            "{name} {m}×{k}×{n} ({rs}, {cs}) [{i}, {j}]"
                        );
                    }
                }
            }
        }
    }

    /// The packed operands are reused from call to call on a thread: what an earlier product left
    /// there (here ±∞, which times a padding zero is NaN) never reaches a later, smaller one.
    #[test]
    fn an_earlier_product_leaves_nothing_behind() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (name, engine) in engines() {
            let big = vec![f32::INFINITY; 40 * 64];
            product(engine, &big, &big[..64 * 40], (40, 64, 40), (0, 0));
            let (m, k, n) = (3, 3, 5);
            let (a, b) = (values(m * k, 9), values(k * n, 10));
            let y = product(engine, &a, &b, (m, k, n), (0, 0));
            let want = reference(&a, &b, m, k, n, 0.5);
            for (i, (&g, &w)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-3 * w.abs().max(1.0),
                    "{name} [{i}]: {g} vs {w}"
                );
            }
        }
    }

    /// An element's value depends on its row and column alone: each row computed by itself, and
    /// each column, gives the same bits as the whole product.
    #[test]
    fn an_element_does_not_depend_on_its_neighbours() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let (m, k, n) = (45, 77, 45);
        let (a, b) = (values(m * k, 3), values(k * n, 4));
        for (name, engine) in engines() {
            let whole = product(engine, &a, &b, (m, k, n), (0, 0));
            for i in [0, 11, 12, 28, 31, 32, 44] {
                let row = product(engine, &a[i * k..(i + 1) * k], &b, (1, k, n), (0, 0));
                assert_eq!(row, whole[i * n..(i + 1) * n], "{name} row {i}");
            }
            for j in [0, 31, 32, 44] {
                let col: Vec<f32> = (0..k).map(|t| b[t * n + j]).collect();
                let y = product(engine, &a, &col, (m, k, 1), (0, 0));
                let want: Vec<f32> = (0..m).map(|i| whole[i * n + j]).collect();
                assert_eq!(y, want, "{name} column {j}");
            }
        }
    }

    /// The vector conversions (`vcvtne2ps2bf16` of a run, `vcvtneps2bf16` of two rows) and
    /// [`bits`] agree on every kind of value.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_and_scalar_conversions_agree() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let mut x = values(64, 5);
        x[..12].copy_from_slice(&[
            0.0,
            -0.0,
            f32::from_bits(1),
            -f32::from_bits(0x7F_FFFF),
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            -65504.0,
        ]);
        let nan = |h: u32| f32::from_bits(h << 16).is_nan();
        let same = |a: u32, b: u32| a == b || (nan(a) && nan(b));
        let mut v = vec![0u32; 32];
        // SAFETY: 64 values in, 32 words out.
        unsafe { contiguous_pairs(x.as_ptr(), 64, &mut v) };
        for (p, &w) in v.iter().enumerate() {
            let s = pair(x[2 * p], x[2 * p + 1]);
            assert!(
                same(w & 0xFFFF, s & 0xFFFF) && same(w >> 16, s >> 16),
                "pair {p}: {w:#x} vs {s:#x}"
            );
        }
        // the two-row interleave (vcvtneps2bf16 on each row): values 0..16 with 16..32
        let mut words = [0u32; 16];
        // SAFETY: 16 values from each row, 16 words out.
        unsafe { interleave_rows(x.as_ptr(), Some(x.as_ptr().add(16)), words.as_mut_ptr()) };
        for (j, &w) in words.iter().enumerate() {
            let s = pair(x[j], x[16 + j]);
            assert!(
                same(w & 0xFFFF, s & 0xFFFF) && same(w >> 16, s >> 16),
                "column {j}: {w:#x} vs {s:#x}"
            );
        }
    }

    /// Rounding: exact values stay, ties go to even, subnormals to zero, NaN and ±∞ stay.
    #[test]
    fn rounding_follows_the_instruction() {
        assert_eq!(round(1.0), 1.0);
        assert_eq!(round(-3.5), -3.5);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties to the even 1
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ and 1 + 2⁻⁶: ties to the even 1 + 2⁻⁶
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round(1.0 + 1.0 / 256.0 + 1e-6), 1.0 + 1.0 / 128.0);
        assert_eq!(round(f32::from_bits(1)).to_bits(), 0);
        assert_eq!(round(-f32::from_bits(5)).to_bits(), 0x8000_0000);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
        assert_eq!(round(f32::MAX), f32::INFINITY);
    }
}
