//! Dropout on the CPU: the masks of docs/random.md (“Dropout masks”) drawn eight Philox calls at
//! a time. [`crate::rng::fill_dropout_mask`] is the plain reference (one call at a time); this
//! path computes the same calls with the four counter words held as eight-lane arrays, which the
//! compiler turns into vector multiplies (32×32→64-bit `vpmuludq`), so a row's masks cost a few
//! cycles per value instead of tens.

use super::simd::simd_fn;
use crate::rng::{self, NoiseKey, NoiseRow, MAX_MEMBERS};

/// Lanes: Philox calls computed together.
const LANES: usize = 8;

/// Philox4x32-10 of eight counters that share `c1`, `c2`, `c3` and differ in `c0`.
#[inline(always)]
fn philox_x8(c0: [u32; LANES], c1: u32, c2: u32, c3: u32, key: [u32; 2]) -> [[u32; LANES]; 4] {
    const M0: u64 = 0xD251_1F53;
    const M1: u64 = 0xCD9E_8D57;
    let (mut a, mut b, mut c, mut d) = (c0, [c1; LANES], [c2; LANES], [c3; LANES]);
    let (mut k0, mut k1) = (key[0], key[1]);
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(0x9E37_79B9);
            k1 = k1.wrapping_add(0xBB67_AE85);
        }
        let (mut na, mut nb, mut nc, mut nd) = ([0; LANES], [0; LANES], [0; LANES], [0; LANES]);
        for l in 0..LANES {
            let p0 = M0 * u64::from(a[l]);
            let p1 = M1 * u64::from(c[l]);
            na[l] = ((p1 >> 32) as u32) ^ b[l] ^ k0;
            nb[l] = p1 as u32;
            nc[l] = ((p0 >> 32) as u32) ^ d[l] ^ k1;
            nd[l] = p0 as u32;
        }
        (a, b, c, d) = (na, nb, nc, nd);
    }
    [a, b, c, d]
}

simd_fn! {
    /// `out = x ⊙ mask` for one row: value `e` kept (times `scale`) when word `e mod 4` of the
    /// call with `c0 = layer·2²⁴ + ⌊e/4⌋` is at least `threshold`.
    fn masked_row(
        x: &[f32],
        out: &mut [f32],
        key: NoiseKey,
        layer: u32,
        row: NoiseRow,
        threshold: u32,
        scale: f32,
    ) {
        let k = [key.seed as u32, (key.seed >> 32) as u32];
        let c3 = ((key.purpose as u32) << 24) | (row.member & (MAX_MEMBERS - 1));
        let per = 4 * LANES;
        let whole = x.len() / per;
        for (g, (xs, os)) in x.chunks_exact(per).zip(out.chunks_exact_mut(per)).enumerate() {
            let first = (g * LANES) as u32;
            let c0: [u32; LANES] = std::array::from_fn(|l| (layer << 24) | (first + l as u32));
            let w = philox_x8(c0, key.step, row.sample, c3, k);
            for (j, wj) in w.iter().enumerate() {
                for (l, &word) in wj.iter().enumerate() {
                    let i = 4 * l + j;
                    os[i] = if word >= threshold { xs[i] * scale } else { 0.0 };
                }
            }
        }
        let done = whole * per;
        if done < x.len() {
            // the last calls, one at a time, from the reference
            let mut mask = vec![0.0f32; x.len() - done];
            rng::fill_dropout_mask_from(key, layer, row, done, threshold, scale, &mut mask);
            for ((o, &xv), m) in out[done..].iter_mut().zip(&x[done..]).zip(mask) {
                *o = xv * m;
            }
        }
    }
}

/// Dropout of one row `x` into `out` under `key` (its call word already added), layer `layer`,
/// probability `p`, for the row's pair `row`: the same values as
/// [`crate::rng::fill_dropout_mask`] times `x`.
pub fn row(x: &[f32], out: &mut [f32], key: NoiseKey, layer: u32, p: f32, row: NoiseRow) {
    masked_row(
        x,
        out,
        key,
        layer,
        row,
        rng::dropout_threshold(p),
        rng::dropout_scale(p),
    );
}
