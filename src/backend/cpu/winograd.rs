//! Winograd convolution `F(3×3, 3×3)` for 3×3, stride-1, padding-1 convolutions (Lavin & Gray,
//! 2016): each 3×3 output tile is `Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A` for the 5×5 input tile `d`, so
//! the products over input channels become 25 matrix products
//! `M[ξ] (Co × tiles) = U[ξ] (Co × Ci) · V[ξ] (Ci × tiles)`: 25 multiply-adds per channel pair
//! and tile instead of 81, 3.24× less arithmetic than direct convolution.
//!
//! Accuracy decides the tile size. The interpolation points are 0, 1, −1, ½, ∞ (Barabasz et al.,
//! 2020: points near the unit circle keep the transforms well conditioned), so `Bᵀ` and `Aᵀ`
//! hold only multiples of ¼, exact in binary; `G` (with thirds) is applied in f64 when the kernel
//! is transformed. Measured against diffusers on the parity fixtures (worst `max|Δ|/max|ref|`
//! over timesteps; python/make_fixtures.py): direct convolution 3.4e-6 / 1.1e-5 / 2.1e-5
//! (fixtures a / c / d), `F(2×2)` the same, `F(3×3)` 7.1e-6 / 1.9e-5 / 4.3e-5, `F(4×4)`
//! 1.0e-5 / 2.5e-5 / 7.7e-5 — the last too close to the 1e-4 parity bound to ship, although
//! about 15% faster on the 64×64 benchmark UNet.
//!
//! Tiles are numbered across the whole batch so that small images still fill the products;
//! every task transforms a block of tiles, 16 at a time in vector lanes, runs the 25 products
//! with `gemm` on one thread, and writes its own output tiles. Reference:
//! [`super::reference::conv2d`] (tests compare at `1e-6·Ci·9 + 1e-4·|ref|`). Bench:
//! `cargo bench --bench ops -- conv`.

// Index loops mirror the matrix formulas of the transforms.
#![allow(clippy::needless_range_loop)]

use super::matmul::{gemm1, Mat, SendPtr};
use super::scratch;
use super::simd::simd_fn;
use crate::backend::ConvGeom;
use rayon::prelude::*;

/// Output tile side and input tile side.
const M: usize = 3;
const T: usize = 5;
/// Tiles per vector group.
const L: usize = 16;

/// The kernel transform, applied in f64.
const G: [[f64; 3]; T] = [
    [2.0, 0.0, 0.0],
    [1.0, 1.0, 1.0],
    [-1.0 / 3.0, 1.0 / 3.0, -1.0 / 3.0],
    [-8.0 / 3.0, -4.0 / 3.0, -2.0 / 3.0],
    [0.0, 0.0, 1.0],
];

/// Whether [`conv2d`] computes this convolution.
pub fn applicable(g: &ConvGeom) -> bool {
    g.k == 3 && g.stride == 1 && g.pad == [1; 4]
}

/// A `(co, ci, 3, 3)` kernel in the Winograd domain: `U[ξ][co][ci] = (G w[co, ci] Gᵀ)[ξ]`.
#[derive(Debug)]
pub struct Filter {
    pub co: usize,
    pub ci: usize,
    u: Vec<f32>,
}

impl Filter {
    pub fn new(w: &[f32], co: usize, ci: usize) -> Filter {
        let mut u = scratch::zeroed(T * T * co * ci);
        let up = SendPtr(u.as_mut_ptr());
        (0..co).into_par_iter().for_each(|o| {
            for c in 0..ci {
                let k = &w[(o * ci + c) * 9..][..9];
                let mut tmp = [[0.0f64; 3]; T];
                for (i, row) in tmp.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|r| G[i][r] * k[r * 3 + j] as f64).sum();
                    }
                }
                for i in 0..T {
                    for j in 0..T {
                        let v: f64 = (0..3).map(|r| tmp[i][r] * G[j][r]).sum();
                        // SAFETY: this task owns every (ξ, o, ·) entry.
                        unsafe { *up.get().add(((i * T + j) * co + o) * ci + c) = v as f32 };
                    }
                }
            }
        });
        Filter { co, ci, u }
    }
}

/// Where tile `t` (numbered across the batch) lies: image, top row, left column.
#[inline(always)]
fn tile_origin(t: usize, tiles_h: usize, tiles_w: usize) -> (usize, usize, usize) {
    let per = tiles_h * tiles_w;
    let (n, r) = (t / per, t % per);
    (n, (r / tiles_w) * M, (r % tiles_w) * M)
}

/// Values of one tile position across the `L` tiles of a vector group.
type Lanes = [f32; L];

/// `Bᵀ x` for a 5-vector of lanes (points 0, 1, −1, ½, ∞; entries exact in binary).
#[inline(always)]
fn bt(x: [&Lanes; T], o: &mut [Lanes; T]) {
    for l in 0..L {
        let [d0, d1, d2, d3, d4] = [x[0][l], x[1][l], x[2][l], x[3][l], x[4][l]];
        o[0][l] = 0.5 * (d0 - d2) - d1 + d3;
        o[1][l] = 0.5 * (d2 - d1) + d3;
        o[2][l] = 0.5 * d1 - 1.5 * d2 + d3;
        o[3][l] = d3 - d1;
        o[4][l] = 0.5 * (d1 - d3) - d2 + d4;
    }
}

/// `Aᵀ x` for a 5-vector of lanes: `Aᵀ = [[1,1,1,1,0], [0,1,−1,½,0], [0,1,1,¼,1]]`.
#[inline(always)]
fn at(x: [&Lanes; T], o: &mut [Lanes; M]) {
    for l in 0..L {
        let [m0, m1, m2, m3, m4] = [x[0][l], x[1][l], x[2][l], x[3][l], x[4][l]];
        o[0][l] = m0 + m1 + m2 + m3;
        o[1][l] = m1 - m2 + 0.5 * m3;
        o[2][l] = m1 + m2 + 0.25 * m3 + m4;
    }
}

/// The input with a zero border (one row and column before, enough after for whole tiles),
/// plus one zero plane at the end that dead lanes read from.
fn pad_input(x: &[f32], g: &ConvGeom) -> (Vec<f32>, usize, usize) {
    let (ph, pw) = (g.h.div_ceil(M) * M + 2, g.w.div_ceil(M) * M + 2);
    let mut p = scratch::zeroed((g.n * g.ci + 1) * ph * pw);
    p.par_chunks_mut(ph * pw)
        .zip(x.par_chunks(g.h * g.w))
        .for_each(|(dst, src)| {
            for (r, row) in src.chunks(g.w).enumerate() {
                dst[(r + 1) * pw + 1..][..g.w].copy_from_slice(row);
            }
        });
    (p, ph, pw)
}

simd_fn! {
    /// `V[ξ][c][t] = (Bᵀ d B)[ξ]` for tiles `t0 .. t0 + nt` (`ntp` columns, padded to `L`), from
    /// the zero-bordered input `xp` (planes `ph × pw`, see [`pad_input`]).
    #[allow(clippy::too_many_arguments)]
    fn input_transform(xp: &[f32], ph: usize, pw: usize, g: &ConvGeom, t0: usize, nt: usize, ntp: usize, v: &mut [f32]) {
        let ci = g.ci;
        let (th, tw) = (g.h.div_ceil(M), g.w.div_ceil(M));
        let zero_plane = g.n * ci * ph * pw;
        let mut d = [[[0.0f32; L]; T]; T];
        let mut tmp = [[[0.0f32; L]; T]; T];
        let mut col = [[0.0f32; L]; T];
        for grp in 0..ntp / L {
            let lanes = L.min(nt.saturating_sub(grp * L));
            // where each lane's T×T window starts in channel 0 (dead lanes: the zero plane)
            let base: [usize; L] = std::array::from_fn(|l| {
                if l < lanes {
                    let (n, y0, x0) = tile_origin(t0 + grp * L + l, th, tw);
                    n * ci * ph * pw + y0 * pw + x0
                } else {
                    zero_plane
                }
            });
            for c in 0..ci {
                for (l, &b) in base.iter().enumerate() {
                    let off = if b == zero_plane { b } else { b + c * ph * pw };
                    for (r, dr) in d.iter_mut().enumerate() {
                        let row = &xp[off + r * pw..][..T];
                        for (s, ds) in dr.iter_mut().enumerate() {
                            ds[l] = row[s];
                        }
                    }
                }
                // columns: tmp[s] = Bᵀ d[·][s]; rows: V[i][·] = Bᵀ tmp[·][i]
                for s in 0..T {
                    bt(std::array::from_fn(|r| &d[r][s]), &mut col);
                    tmp[s] = col;
                }
                for i in 0..T {
                    bt(std::array::from_fn(|s| &tmp[s][i]), &mut col);
                    for (j, vals) in col.iter().enumerate() {
                        v[((i * T + j) * ci + c) * ntp + grp * L..][..L].copy_from_slice(vals);
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// `y = Aᵀ M A + b` for the tiles of this block, written into the output planes.
    #[allow(clippy::too_many_arguments)]
    fn output_transform(m: &[f32], b: Option<&[f32]>, g: &ConvGeom, t0: usize, nt: usize, ntp: usize, y: SendPtr) {
        let (h, w, co) = (g.h, g.w, g.co);
        let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
        let mut tmp = [[[0.0f32; L]; M]; T];
        let mut out = [[0.0f32; L]; M];
        for grp in 0..ntp / L {
            let lanes = L.min(nt.saturating_sub(grp * L));
            let origins: [(usize, usize, usize); L] = std::array::from_fn(|l| tile_origin(t0 + grp * L + l, th, tw));
            for o in 0..co {
                let bias = b.map_or(0.0, |b| b[o]);
                let src = |xi: usize| -> &Lanes {
                    (&m[(xi * co + o) * ntp + grp * L..][..L]).try_into().expect("L lanes")
                };
                // columns: tmp[j] = Aᵀ M[·][j]; rows: out[·] = Aᵀ tmp[·][i] for each output row i
                for j in 0..T {
                    at(std::array::from_fn(|k| src(k * T + j)), &mut tmp[j]);
                }
                for i in 0..M {
                    at(std::array::from_fn(|j| &tmp[j][i]), &mut out);
                    for (l, &(n, y0, x0)) in origins.iter().enumerate().take(lanes) {
                        if y0 + i >= h {
                            continue;
                        }
                        let start = ((n * co + o) * h + y0 + i) * w + x0;
                        for (j, vals) in out.iter().enumerate().take((w - x0).min(M)) {
                            // SAFETY: tile t0+grp·L+l belongs to this task alone.
                            unsafe { *y.get().add(start + j) = vals[l] + bias };
                        }
                    }
                }
            }
        }
    }
}

/// Tiles per task: a multiple of the vector width, enough tasks for every thread.
fn block_tiles(total: usize, ci: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let by_cache = if ci <= 128 { 128 } else { 64 };
    let by_threads = total.div_ceil(2 * threads);
    by_cache.min(by_threads.div_ceil(L) * L).max(L)
}

/// 3×3, stride-1, padding-1 convolution by `F(3×3, 3×3)`; see the module documentation.
pub fn conv2d(x: &[f32], f: &Filter, b: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    debug_assert!(applicable(g));
    let (ci, co) = (g.ci, g.co);
    let total = g.n * g.h.div_ceil(M) * g.w.div_ceil(M);
    debug_assert!(f.co == co && f.ci == ci);
    let u = &f.u;
    let (xp, ph, pw) = pad_input(x, g);
    let mut y = scratch::zeroed(g.n * co * g.h * g.w);
    let yp = SendPtr(y.as_mut_ptr());
    let bt = block_tiles(total, ci);
    let blocks = total.div_ceil(bt);
    (0..blocks).into_par_iter().for_each(|blk| {
        let t0 = blk * bt;
        let nt = bt.min(total - t0);
        let ntp = nt.div_ceil(L) * L;
        scratch::with2(T * T * ci * ntp, T * T * co * ntp, |v, m| {
            input_transform(&xp, ph, pw, g, t0, nt, ntp, v);
            for xi in 0..T * T {
                let ux = &u[xi * co * ci..][..co * ci];
                let vx = &v[xi * ci * ntp..][..ci * ntp];
                let mx = &mut m[xi * co * ntp..][..co * ntp];
                // SAFETY: U[ξ] is Co × Ci, V[ξ] is Ci × ntp, M[ξ] is Co × ntp, all row-major.
                unsafe {
                    gemm1(
                        co,
                        ntp,
                        ci,
                        mx.as_mut_ptr(),
                        ntp as isize,
                        1,
                        false,
                        Mat::new(ux, ci, 1),
                        Mat::new(vx, ntp, 1),
                        1.0,
                    )
                };
            }
            output_transform(m, b, g, t0, nt, ntp, yp);
        });
    });
    y
}
