//! Winograd convolution `F(4×4, 3×3)` for 3×3, stride-1, padding-1 convolutions (Lavin & Gray,
//! 2016): each 4×4 output tile is `Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A` for the 6×6 input tile `d`, so
//! the products over input channels become 36 matrix products
//! `M[ξ] (Co × tiles) = U[ξ] (Co × Ci) · V[ξ] (Ci × tiles)` with 36 multiply-adds per channel
//! pair and tile instead of 144: a quarter of the direct method's arithmetic.
//!
//! Tiles are numbered across the whole batch so that small images still fill the products;
//! every task transforms a block of tiles, 16 at a time in vector lanes, runs the 36 products
//! with `gemm` on one thread, and writes its own output tiles. Reference:
//! [`super::reference::conv2d`] (tests compare at `1e-5·Ci·9` absolute). Bench:
//! `cargo bench --bench ops -- conv`.

// Index loops mirror the matrix formulas of the transforms.
#![allow(clippy::needless_range_loop)]

use super::matmul::{gemm1, Mat, SendPtr};
use super::simd::simd_fn;
use crate::backend::ConvGeom;
use rayon::prelude::*;

/// Output tile side and input tile side.
const M: usize = 4;
const T: usize = 6;
/// Tiles per vector group.
const L: usize = 16;

const BT: [[f32; T]; T] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];
const G: [[f32; 3]; T] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];
const AT: [[f32; T]; M] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
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
        let mut u = vec![0.0f32; T * T * co * ci];
        let up = SendPtr(u.as_mut_ptr());
        (0..co).into_par_iter().for_each(|o| {
            for c in 0..ci {
                let k = &w[(o * ci + c) * 9..][..9];
                let mut tmp = [[0.0f32; 3]; T];
                for (i, row) in tmp.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|r| G[i][r] * k[r * 3 + j]).sum();
                    }
                }
                for i in 0..T {
                    for j in 0..T {
                        let v: f32 = (0..3).map(|r| tmp[i][r] * G[j][r]).sum();
                        // SAFETY: this task owns every (ξ, o, ·) entry.
                        unsafe { *up.get().add(((i * T + j) * co + o) * ci + c) = v };
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

simd_fn! {
    /// `V[ξ][c][t] = (Bᵀ d B)[ξ]` for tiles `t0 .. t0 + nt` (`ntp` columns, padded to `L`).
    fn input_transform(x: &[f32], g: &ConvGeom, t0: usize, nt: usize, ntp: usize, v: &mut [f32]) {
        let (h, w, ci) = (g.h, g.w, g.ci);
        let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
        for grp in 0..ntp / L {
            let lanes = L.min(nt.saturating_sub(grp * L));
            let origins: [(usize, usize, usize); L] =
                std::array::from_fn(|l| if l < lanes { tile_origin(t0 + grp * L + l, th, tw) } else { (usize::MAX, 0, 0) });
            for c in 0..ci {
                let mut d = [[[0.0f32; L]; T]; T];
                for (l, &(n, y0, x0)) in origins.iter().enumerate() {
                    if n == usize::MAX {
                        continue;
                    }
                    let plane = &x[(n * ci + c) * h * w..][..h * w];
                    for (r, dr) in d.iter_mut().enumerate() {
                        let iy = (y0 + r) as isize - 1;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let row = &plane[iy as usize * w..][..w];
                        for (s, ds) in dr.iter_mut().enumerate() {
                            let ix = (x0 + s) as isize - 1;
                            if ix >= 0 && ix < w as isize {
                                ds[l] = row[ix as usize];
                            }
                        }
                    }
                }
                // tmp = Bᵀ d, then V = tmp B, lane by lane
                let mut tmp = [[[0.0f32; L]; T]; T];
                for i in 0..T {
                    for k in 0..T {
                        let b = BT[i][k];
                        if b != 0.0 {
                            for j in 0..T {
                                for l in 0..L {
                                    tmp[i][j][l] += b * d[k][j][l];
                                }
                            }
                        }
                    }
                }
                for i in 0..T {
                    for j in 0..T {
                        let mut acc = [0.0f32; L];
                        for k in 0..T {
                            let b = BT[j][k];
                            if b != 0.0 {
                                for l in 0..L {
                                    acc[l] += tmp[i][k][l] * b;
                                }
                            }
                        }
                        v[((i * T + j) * ci + c) * ntp + grp * L..][..L].copy_from_slice(&acc);
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// `y = Aᵀ M A + b` for the tiles of this block, written into the output planes.
    fn output_transform(m: &[f32], b: Option<&[f32]>, g: &ConvGeom, t0: usize, nt: usize, ntp: usize, y: SendPtr) {
        let (h, w, co) = (g.h, g.w, g.co);
        let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
        for grp in 0..ntp / L {
            let lanes = L.min(nt.saturating_sub(grp * L));
            for o in 0..co {
                let bias = b.map_or(0.0, |b| b[o]);
                let mut tmp = [[[0.0f32; L]; T]; M];
                for k in 0..T {
                    for j in 0..T {
                        let src = &m[((k * T + j) * co + o) * ntp + grp * L..][..L];
                        for i in 0..M {
                            let a = AT[i][k];
                            if a != 0.0 {
                                for l in 0..L {
                                    tmp[i][j][l] += a * src[l];
                                }
                            }
                        }
                    }
                }
                let mut out = [[[bias; L]; M]; M];
                for i in 0..M {
                    for j in 0..M {
                        for k in 0..T {
                            let a = AT[j][k];
                            if a != 0.0 {
                                for l in 0..L {
                                    out[i][j][l] += tmp[i][k][l] * a;
                                }
                            }
                        }
                    }
                }
                for l in 0..lanes {
                    let (n, y0, x0) = tile_origin(t0 + grp * L + l, th, tw);
                    for (i, oi) in out.iter().enumerate().take(h - y0.min(h)).take(M) {
                        let row = ((n * co + o) * h + y0 + i) * w + x0;
                        for (j, oj) in oi.iter().enumerate().take((w - x0).min(M)) {
                            // SAFETY: tile t0+grp·L+l belongs to this task alone.
                            unsafe { *y.get().add(row + j) = oj[l] };
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

/// 3×3, stride-1, padding-1 convolution by `F(4×4, 3×3)`; see the module documentation.
pub fn conv2d(x: &[f32], f: &Filter, b: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    debug_assert!(applicable(g));
    let (ci, co) = (g.ci, g.co);
    let total = g.n * g.h.div_ceil(M) * g.w.div_ceil(M);
    debug_assert!(f.co == co && f.ci == ci);
    let u = &f.u;
    let mut y = vec![0.0f32; g.n * co * g.h * g.w];
    let yp = SendPtr(y.as_mut_ptr());
    let bt = block_tiles(total, ci);
    let blocks = total.div_ceil(bt);
    (0..blocks).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(v, m), blk| {
            let t0 = blk * bt;
            let nt = bt.min(total - t0);
            let ntp = nt.div_ceil(L) * L;
            v.resize(T * T * ci * ntp, 0.0);
            m.resize(T * T * co * ntp, 0.0);
            input_transform(x, g, t0, nt, ntp, v);
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
        },
    );
    y
}
