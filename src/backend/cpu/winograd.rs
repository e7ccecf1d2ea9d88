//! Winograd convolution `F(3×3, 3×3)` for 3×3, stride-1, padding-1 convolutions (Lavin & Gray,
//! 2016): each 3×3 output tile is `Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A` for the 5×5 input tile `d`, so
//! the products over input channels become 25 matrix products
//! `M[ξ] (Co × tiles) = U[ξ] (Co × Ci) · V[ξ] (Ci × tiles)`: 25 multiply-adds per channel pair
//! and tile instead of 81, 3.24× less arithmetic than direct convolution.
//!
//! Accuracy decides the tile size. The interpolation points are 0, 1, −1, ½, ∞ (Barabasz et al.,
//! 2020: points near the unit circle keep the transforms well conditioned), so `Bᵀ` and `Aᵀ`
//! hold only multiples of ¼, exact in binary; `G` (with thirds) is applied in f32 when the kernel
//! is transformed (in f64 it measured no more accurate, and took twice as long — the transform
//! runs once per training step). Measured against diffusers on the parity fixtures (worst
//! `max|Δ|/max|ref|` over timesteps; python/make_fixtures.py): direct convolution 3.4e-6 /
//! 1.1e-5 / 2.1e-5 (fixtures a / c / d), `F(2×2)` the same, `F(3×3)` 6.1e-6 / 1.8e-5 / 4.1e-5,
//! `F(4×4)` 1.0e-5 / 2.5e-5 / 7.7e-5 — the last too close to the 1e-4 parity bound to ship,
//! although about 15% faster on the 64×64 benchmark UNet.
//!
//! Layout: the products run tile-major, `M[ξ] (tiles × Co) = V[ξ] (tiles × Ci) · U[ξ] (Ci × Co)`,
//! with `U` stored transposed once per kernel. The input is first copied into a channel-blocked,
//! zero-bordered layout (`[n][c/16][y][x][16]`), so the input transform loads each 5×5 window of
//! 16 channels as 25 whole vectors and stores 16-channel vectors into `V`; the output transform
//! likewise works on 16 output channels at a time. (A first version gathered 16 tiles per vector
//! with scalar loads; the channel-vector transforms took the convolutions of the benchmark UNet
//! from about 130 to about 112 ms per 32×32 forward.) Tiles are numbered across the whole batch.
//! Up to `PHASED_MAX_TILES` tiles (the low-resolution levels), all tiles are transformed first
//! and the 25 products run in parallel over `ξ`, each over all tiles, so `U[ξ]` is read once;
//! above, each task transforms a block of tiles, runs the 25 products on one thread and writes
//! its own output tiles, keeping `V` and `M` in cache. Reference: [`super::reference::conv2d`]
//! (tests compare at `1e-6·Ci·9 + 1e-4·|ref|`). Bench: `cargo bench --bench ops -- conv`.
//!
//! The products stay in float32 whatever the CPU's precision (`matmul::gemm1_fp32`): with bf16 operands
//! (`--precision bf16`) the Winograd-domain values `Bᵀ d B` and `G g Gᵀ`, rounded, took the parity
//! fixtures' error against diffusers to 3.4× PyTorch's own bf16 error (largest error 0.36 against
//! 0.11 on tests/fixtures/unet_a at t = 0), and rounding the plain operands instead (the direct
//! path) matches PyTorch's error but runs 0.84× as fast as this path in float32 on AVX512-BF16
//! (`cargo bench --bench ops -- bf16`): 3.24× the arithmetic at twice the rate.
//!
//! The backward pass ([`conv2d_backward`]) runs the same algorithm in reverse: one transform of
//! the output gradient feeds both the kernel gradient (products over tiles) and the input
//! gradient (products with the cached `U`), so no second kernel transform and no im2col.

// Index loops mirror the matrix formulas of the transforms.
#![allow(clippy::needless_range_loop)]

use super::matmul::{gemm1_fp32, Mat, SendPtr};
use super::scratch::{self, Workspace};
use super::simd::simd_fn;
use crate::backend::{ConvGeom, PadMode};
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

/// A `(co, ci, 3, 3)` kernel in the Winograd domain, stored transposed for the products:
/// `U[ξ][ci][co] = (G w[co, ci] Gᵀ)[ξ]`.
#[derive(Debug)]
pub struct Filter {
    pub co: usize,
    pub ci: usize,
    u: Vec<f32>,
}

impl Filter {
    pub fn new(w: &[f32], co: usize, ci: usize) -> Filter {
        // Every entry is written below, so the memory is not zero-filled first (the kernels of
        // the benchmark UNet take 178 MB).
        let mut u: Vec<f32> = Vec::with_capacity(T * T * ci * co);
        let up = SendPtr(u.as_mut_ptr());
        (0..ci)
            .into_par_iter()
            .for_each(|c| transform_kernels(w, co, ci, c, up));
        // SAFETY: the tasks above wrote all T²·ci·co entries (every (ξ, c, o)).
        unsafe { u.set_len(T * T * ci * co) };
        Filter { co, ci, u }
    }
}

simd_fn! {
    /// `U[ξ][c][o] = (G w[o, c] Gᵀ)[ξ]` for input channel `c` and every output channel, `L`
    /// output channels at a time (the vector lanes).
    fn transform_kernels(w: &[f32], co: usize, ci: usize, c: usize, u: SendPtr) {
        let gf: [[f32; 3]; T] = G.map(|r| r.map(|v| v as f32));
        for o0 in (0..co).step_by(L) {
            let lanes = L.min(co - o0);
            // k[r][j][l] = w[o0 + l, c, r, j]
            let mut k = [[[0.0f32; L]; 3]; 3];
            for l in 0..lanes {
                let src: &[f32; 9] = w[((o0 + l) * ci + c) * 9..][..9].try_into().expect("3×3");
                for r in 0..3 {
                    for j in 0..3 {
                        k[r][j][l] = src[r * 3 + j];
                    }
                }
            }
            // tmp = G k (5 × 3), then G tmp Gᵀ (5 × 5), over the lanes
            let mut tmp = [[[0.0f32; L]; 3]; T];
            for i in 0..T {
                for j in 0..3 {
                    for l in 0..L {
                        tmp[i][j][l] =
                            gf[i][0] * k[0][j][l] + gf[i][1] * k[1][j][l] + gf[i][2] * k[2][j][l];
                    }
                }
            }
            for i in 0..T {
                for j in 0..T {
                    let mut v = [0.0f32; L];
                    for l in 0..L {
                        v[l] = tmp[i][0][l] * gf[j][0] + tmp[i][1][l] * gf[j][1] + tmp[i][2][l] * gf[j][2];
                    }
                    // SAFETY: the caller's task owns every (ξ, c, ·) entry.
                    let dst = unsafe { u.get().add(((i * T + j) * ci + c) * co + o0) };
                    if lanes == L {
                        // SAFETY: as above; a whole vector (a fixed-size copy, not a call).
                        unsafe { dst.cast::<Lanes>().write_unaligned(v) };
                    } else {
                        // SAFETY: as above, the last `lanes` output channels.
                        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), dst, lanes) };
                    }
                }
            }
        }
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

/// The input in a channel-blocked layout with a zero border: `[n][c / L][ph][pw][L]` (channel
/// `c` in lane `c mod L`; missing channels of the last block are zero), one row and column of
/// padding before the image and enough after for whole tiles. A tile's `T × T` window of `L`
/// channels is then `T²` contiguous vectors. With circular padding the row and column on each
/// side of the image hold its opposite edge (the rows and columns beyond only feed outputs
/// outside the image, which are dropped).
fn pad_input(x: &[f32], g: &ConvGeom) -> (Workspace, usize, usize) {
    let (ph, pw) = (g.h.div_ceil(M) * M + 2, g.w.div_ceil(M) * M + 2);
    let cb = g.ci.div_ceil(L);
    let mut p = Workspace::new(g.n * cb * ph * pw * L);
    p.par_chunks_mut(ph * pw * L)
        .enumerate()
        .for_each(|(nb, dst)| {
            dst.fill(0.0);
            let (n, b) = (nb / cb, nb % cb);
            let lanes = L.min(g.ci - b * L);
            let plane = |l: usize| &x[(n * g.ci + b * L + l) * g.h * g.w..][..g.h * g.w];
            let planes: [&[f32]; L] = std::array::from_fn(|l| plane(l.min(lanes - 1)));
            // Row by row, one whole vector of channels per pixel.
            for r in 0..g.h {
                let d = &mut dst[((r + 1) * pw + 1) * L..][..g.w * L];
                for (j, px) in d.chunks_exact_mut(L).enumerate() {
                    for (l, v) in px.iter_mut().enumerate().take(lanes) {
                        *v = planes[l][r * g.w + j];
                    }
                }
            }
            if g.circular() {
                wrap_border(dst, g, pw);
            }
        });
    (p, ph, pw)
}

/// Fills the one-pixel border of a padded plane (layout of [`pad_input`], `pw` columns of `L`
/// values) with the opposite edges of the image inside it: columns first, then whole rows, so
/// that the corners hold the opposite corners.
fn wrap_border(plane: &mut [f32], g: &ConvGeom, pw: usize) {
    let px = |r: usize, c: usize| (r * pw + c) * L;
    for r in 1..=g.h {
        plane.copy_within(px(r, g.w)..px(r, g.w) + L, px(r, 0));
        plane.copy_within(px(r, 1)..px(r, 1) + L, px(r, g.w + 1));
    }
    plane.copy_within(px(g.h, 0)..px(g.h, 0) + pw * L, px(0, 0));
    plane.copy_within(px(1, 0)..px(1, 0) + pw * L, px(g.h + 1, 0));
}

/// The adjoint of [`wrap_border`]: adds the border of a padded gradient plane onto the opposite
/// edges of the image inside it (rows first, then columns).
fn fold_border(plane: &mut [f32], g: &ConvGeom, pw: usize) {
    let px = |r: usize, c: usize| (r * pw + c) * L;
    let add = |plane: &mut [f32], from: usize, to: usize, len: usize| {
        for i in 0..len {
            plane[to + i] += plane[from + i];
        }
    };
    add(plane, px(0, 0), px(g.h, 0), pw * L);
    add(plane, px(g.h + 1, 0), px(1, 0), pw * L);
    for r in 1..=g.h {
        add(plane, px(r, 0), px(r, g.w), L);
        add(plane, px(r, g.w + 1), px(r, 1), L);
    }
}

simd_fn! {
    /// `V[ξ][t][c] = (Bᵀ d B)[ξ]` for tiles `t0 .. t0 + nt`, from the channel-blocked input `xp`
    /// (see [`pad_input`]): tile `t0 + i` goes to column `col0 + i` of `V`, whose `ξ` planes are
    /// `ntp` columns of `cp = ⌈ci/L⌉·L` values. Vector lanes run over channels, so every load and
    /// store is a whole vector.
    #[allow(clippy::too_many_arguments)]
    fn input_transform(xp: &[f32], ph: usize, pw: usize, g: &ConvGeom, t0: usize, nt: usize, v: SendPtr, ntp: usize, col0: usize) {
        let cb = g.ci.div_ceil(L);
        let cp = cb * L;
        let (th, tw) = (g.h.div_ceil(M), g.w.div_ceil(M));
        let mut tmp = [[[0.0f32; L]; T]; T];
        let mut col = [[0.0f32; L]; T];
        for i in 0..nt {
            let (n, y0, x0) = tile_origin(t0 + i, th, tw);
            for b in 0..cb {
                let base = (((n * cb + b) * ph + y0) * pw + x0) * L;
                let d = |r: usize, s: usize| -> &Lanes {
                    (&xp[base + (r * pw + s) * L..][..L]).try_into().expect("L lanes")
                };
                // columns: tmp[s] = Bᵀ d[·][s]; rows: V[k][·] = Bᵀ tmp[·][k]
                for s in 0..T {
                    bt(std::array::from_fn(|r| d(r, s)), &mut col);
                    tmp[s] = col;
                }
                for k in 0..T {
                    bt(std::array::from_fn(|s| &tmp[s][k]), &mut col);
                    for (j, vals) in col.iter().enumerate() {
                        // SAFETY: column col0 + i of every ξ plane belongs to the caller.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                vals.as_ptr(),
                                v.get().add(((k * T + j) * ntp + col0 + i) * cp + b * L),
                                L,
                            )
                        };
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// `y = Aᵀ M A + b` for tiles `t0 .. t0 + nt`, written into the NCHW output planes. `M` holds
    /// tile `t0 + i` at row `col0 + i` of each `ξ` plane (`ntp` rows of `cop = ⌈co/L⌉·L` values);
    /// vector lanes run over output channels.
    #[allow(clippy::too_many_arguments)]
    fn output_transform(m: &[f32], b: Option<&[f32]>, g: &ConvGeom, t0: usize, nt: usize, ntp: usize, col0: usize, y: SendPtr) {
        let (h, w, co) = (g.h, g.w, g.co);
        let (th, tw) = (h.div_ceil(M), w.div_ceil(M));
        let ob = co.div_ceil(L);
        let cop = ob * L;
        let mut tmp = [[[0.0f32; L]; M]; T];
        let mut out = [[0.0f32; L]; M];
        for i in 0..nt {
            let (n, y0, x0) = tile_origin(t0 + i, th, tw);
            for blk in 0..ob {
                let lanes = L.min(co - blk * L);
                let bias: Lanes = std::array::from_fn(|l| match b {
                    Some(b) if l < lanes => b[blk * L + l],
                    _ => 0.0,
                });
                let src = |xi: usize| -> &Lanes {
                    (&m[(xi * ntp + col0 + i) * cop + blk * L..][..L]).try_into().expect("L lanes")
                };
                // columns: tmp[j] = Aᵀ M[·][j]; rows: out[·] = Aᵀ tmp[·][r] for each output row r
                for j in 0..T {
                    at(std::array::from_fn(|k| src(k * T + j)), &mut tmp[j]);
                }
                let cols = (w - x0).min(M);
                // SAFETY: pixels of tile t0 + i belong to this task alone.
                let corner = unsafe { y.get().add(((n * co + blk * L) * h + y0) * w + x0) };
                for r in 0..M.min(h - y0) {
                    at(std::array::from_fn(|j| &tmp[j][r]), &mut out);
                    for l in 0..lanes {
                        // SAFETY: as above: row y0 + r of plane blk·L + l, columns x0 .. x0 + cols.
                        let dst = unsafe { corner.add((l * h + r) * w) };
                        for j in 0..cols {
                            unsafe { *dst.add(j) = out[j][l] + bias[l] };
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

/// Tile counts up to which [`conv2d`] transforms all tiles first and parallelises the products
/// over `ξ` (see [`conv2d_phased`]).
const PHASED_MAX_TILES: usize = 512;

/// Small images (the low-resolution levels of a UNet): few tiles, so blocks of tiles would be
/// small and every block would repack all of `U`. Instead: transform all tiles (parallel over
/// tile groups), run the 25 products `M[ξ] = U[ξ] V[ξ]` over all tiles at once (parallel over
/// `ξ` and output-channel halves), then the output transform (parallel over tile groups).
fn conv2d_phased(x: &[f32], f: &Filter, b: Option<&[f32]>, g: &ConvGeom, total: usize) -> Vec<f32> {
    let (ci, co) = (g.ci, g.co);
    let ntp = total;
    let (xp, ph, pw) = pad_input(x, g);
    let cp = ci.div_ceil(L) * L;
    let mut v = Workspace::new(T * T * cp * ntp);
    let vp = SendPtr(v.as_mut_ptr());
    let per = total
        .div_ceil(2 * rayon::current_num_threads().max(1))
        .max(1);
    (0..total.div_ceil(per)).into_par_iter().for_each(|task| {
        let t0 = task * per;
        input_transform(&xp, ph, pw, g, t0, per.min(total - t0), vp, ntp, t0);
    });
    let cop = co.div_ceil(L) * L;
    let mut m = Workspace::new(T * T * ntp * cop);
    let halves = if co >= 128 { 2 } else { 1 };
    let mp = SendPtr(m.as_mut_ptr());
    (0..T * T * halves).into_par_iter().for_each(|task| {
        let (xi, half) = (task / halves, task % halves);
        let (o0, o1) = (half * co / halves, (half + 1) * co / halves);
        let ux = &f.u[xi * ci * co + o0..(xi + 1) * ci * co];
        let vx = &v[xi * ntp * cp..][..ntp * cp];
        // SAFETY: columns o0..o1 of M[ξ] belong to this task; V[ξ] (ntp × ci) and U[ξ]
        // (ci × co) are row-major with row strides cp and co.
        unsafe {
            gemm1_fp32(
                ntp,
                o1 - o0,
                ci,
                mp.get().add(xi * ntp * cop + o0),
                cop as isize,
                1,
                false,
                Mat::new(vx, cp, 1),
                Mat::new(ux, co, 1),
                1.0,
            )
        };
    });
    let mut y = scratch::zeroed(g.n * co * g.h * g.w);
    let yp = SendPtr(y.as_mut_ptr());
    (0..total.div_ceil(per)).into_par_iter().for_each(|task| {
        let t0 = task * per;
        output_transform(&m, b, g, t0, per.min(total - t0), ntp, t0, yp);
    });
    y
}

/// 3×3, stride-1, padding-1 convolution by `F(3×3, 3×3)`; see the module documentation.
pub fn conv2d(x: &[f32], f: &Filter, b: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    debug_assert!(applicable(g));
    let (ci, co) = (g.ci, g.co);
    let total = g.n * g.h.div_ceil(M) * g.w.div_ceil(M);
    debug_assert!(f.co == co && f.ci == ci);
    if total <= PHASED_MAX_TILES {
        return conv2d_phased(x, f, b, g, total);
    }
    let (xp, ph, pw) = pad_input(x, g);
    let (cp, cop) = (ci.div_ceil(L) * L, co.div_ceil(L) * L);
    let mut y = scratch::zeroed(g.n * co * g.h * g.w);
    let yp = SendPtr(y.as_mut_ptr());
    let bt = block_tiles(total, ci);
    let blocks = total.div_ceil(bt);
    (0..blocks).into_par_iter().for_each(|blk| {
        let t0 = blk * bt;
        let nt = bt.min(total - t0);
        scratch::with2(T * T * nt * cp, T * T * nt * cop, |v, m| {
            input_transform(&xp, ph, pw, g, t0, nt, SendPtr(v.as_mut_ptr()), nt, 0);
            for xi in 0..T * T {
                let ux = &f.u[xi * ci * co..][..ci * co];
                let vx = &v[xi * nt * cp..][..nt * cp];
                let mx = &mut m[xi * nt * cop..][..nt * cop];
                // SAFETY: V[ξ] (nt × ci), U[ξ] (ci × co) and M[ξ] (nt × co) are row-major with
                // row strides cp, co and cop.
                unsafe {
                    gemm1_fp32(
                        nt,
                        co,
                        ci,
                        mx.as_mut_ptr(),
                        cop as isize,
                        1,
                        false,
                        Mat::new(vx, cp, 1),
                        Mat::new(ux, co, 1),
                        1.0,
                    )
                };
            }
            output_transform(m, b, g, t0, nt, nt, 0, yp);
        });
    });
    y
}

/// `A x` for a 3-vector of lanes (`A = (Aᵀ)ᵀ`, 5 × 3): the adjoint of [`at`].
#[inline(always)]
fn a(x: [&Lanes; M], o: &mut [Lanes; T]) {
    for l in 0..L {
        let [y0, y1, y2] = [x[0][l], x[1][l], x[2][l]];
        o[0][l] = y0;
        o[1][l] = y0 + y1 + y2;
        o[2][l] = y0 - y1 + y2;
        o[3][l] = y0 + 0.5 * y1 + 0.25 * y2;
        o[4][l] = y2;
    }
}

/// `B x` for a 5-vector of lanes (`B = (Bᵀ)ᵀ`): the adjoint of [`bt`].
#[inline(always)]
fn b(x: [&Lanes; T], o: &mut [Lanes; T]) {
    for l in 0..L {
        let [v0, v1, v2, v3, v4] = [x[0][l], x[1][l], x[2][l], x[3][l], x[4][l]];
        o[0][l] = 0.5 * v0;
        o[1][l] = 0.5 * (v2 - v1 + v4) - v0 - v3;
        o[2][l] = 0.5 * (v1 - v0) - 1.5 * v2 - v4;
        o[3][l] = v0 + v1 + v2 + v3 - 0.5 * v4;
        o[4][l] = v4;
    }
}

simd_fn! {
    /// `dM[ξ][t][o] = (A dY Aᵀ)[ξ]` for tiles `t0 .. t0 + nt`, the gradient reaching the
    /// elementwise products from the output tile `dY` (3 × 3, zero outside the image). `dyp` is
    /// the output gradient in the layout of [`pad_input`] (so tile pixels sit one row and column
    /// in); tile `t0 + i` goes to row `col0 + i` of the `ξ` planes of `ntp` rows of
    /// `cop = ⌈co/L⌉·L` values. Vector lanes run over output channels.
    #[allow(clippy::too_many_arguments)]
    fn grad_output_transform(dyp: &[f32], ph: usize, pw: usize, g: &ConvGeom, t0: usize, nt: usize, dm: SendPtr, ntp: usize, col0: usize) {
        let ob = g.co.div_ceil(L);
        let cop = ob * L;
        let (th, tw) = (g.h.div_ceil(M), g.w.div_ceil(M));
        let mut tmp = [[[0.0f32; L]; T]; M];
        let mut col = [[0.0f32; L]; T];
        for i in 0..nt {
            let (n, y0, x0) = tile_origin(t0 + i, th, tw);
            for blk in 0..ob {
                let base = (((n * ob + blk) * ph + y0 + 1) * pw + x0 + 1) * L;
                let d = |r: usize, s: usize| -> &Lanes {
                    (&dyp[base + (r * pw + s) * L..][..L]).try_into().expect("L lanes")
                };
                // columns: tmp[s] = A dY[·][s]; rows: dM[k][·] = A tmp[·][k]
                for s in 0..M {
                    a(std::array::from_fn(|r| d(r, s)), &mut col);
                    tmp[s] = col;
                }
                for k in 0..T {
                    a(std::array::from_fn(|s| &tmp[s][k]), &mut col);
                    for (j, vals) in col.iter().enumerate() {
                        // SAFETY: row col0 + i of every ξ plane belongs to the caller.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                vals.as_ptr(),
                                dm.get().add(((k * T + j) * ntp + col0 + i) * cop + blk * L),
                                L,
                            )
                        };
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// `dxp += B dV Bᵀ` for every tile of image `n`, channel block `blk`: the adjoint of
    /// [`input_transform`], adding each tile's 5 × 5 window into the channel-blocked, zero-bordered
    /// input gradient `dxp` (layout of [`pad_input`]; windows of neighbouring tiles overlap, so
    /// one task owns the whole `(n, blk)` plane `dxp`, `pw` columns of `L` values). `dV` holds
    /// tile `t` at row `t` of each `ξ` plane (`ntp` rows of `cp` values).
    #[allow(clippy::too_many_arguments)]
    fn input_transform_adjoint(dv: &[f32], ntp: usize, cp: usize, g: &ConvGeom, n: usize, blk: usize, dxp: &mut [f32], pw: usize) {
        let (th, tw) = (g.h.div_ceil(M), g.w.div_ceil(M));
        let mut tmp = [[[0.0f32; L]; T]; T];
        let mut col = [[0.0f32; L]; T];
        for r in 0..th * tw {
            let row = n * th * tw + r;
            let (y0, x0) = ((r / tw) * M, (r % tw) * M);
            let src = |xi: usize| -> &Lanes {
                (&dv[(xi * ntp + row) * cp + blk * L..][..L]).try_into().expect("L lanes")
            };
            // rows: tmp[k] = B dV[k][·]; columns: dd[·][s] = B tmp[·][s], so dd = B dV Bᵀ
            for k in 0..T {
                b(std::array::from_fn(|j| src(k * T + j)), &mut tmp[k]);
            }
            for s in 0..T {
                b(std::array::from_fn(|k| &tmp[k][s]), &mut col);
                for (r2, vals) in col.iter().enumerate() {
                    let dst = &mut dxp[((y0 + r2) * pw + x0 + s) * L..][..L];
                    for l in 0..L {
                        dst[l] += vals[l];
                    }
                }
            }
        }
    }
}

/// Floats per Winograd-domain buffer for one chunk of images in [`conv2d_backward`] (64 MB):
/// batches whose transformed tiles would need more are processed a few images at a time.
const BACKWARD_CHUNK_FLOATS: usize = 1 << 24;

/// Gradients of [`conv2d`] with respect to the kernel and (if `need_dx`) the input, by the
/// adjoint of the forward algorithm, so both reuse one transform of the output gradient and
/// the kernel's cached transform `U`:
///
/// - `dM[ξ][t] = (A dY_t Aᵀ)[ξ]` for every output tile `dY_t` (zero outside the image);
/// - `dU[ξ] (co × ci) = Σ_t dM[ξ][t]ᵀ V[ξ][t]`, with `V = Bᵀ d B` the forward's input tiles
///   (recomputed), and `dw = Gᵀ dU G` — 25 products with the tiles as the reduction instead of
///   im2col's `co × 9ci × 9·tiles`, 3.24× less arithmetic;
/// - `dV[ξ] (tiles × ci) = dM[ξ] · U[ξ]ᵀ` and `dx = Σ_t B dV_t Bᵀ` added over the overlapping
///   5 × 5 input windows (the padding border dropped).
///
/// Reference: [`super::reference::conv2d_backward`].
pub fn conv2d_backward(
    x: &[f32],
    f: &Filter,
    dy: &[f32],
    g: &ConvGeom,
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    backward_in_chunks(x, f, dy, g, need_dx, BACKWARD_CHUNK_FLOATS)
}

/// [`conv2d_backward`] with at most `chunk_floats` per Winograd-domain buffer (but at least one
/// image per chunk); `dU` accumulates over the chunks.
fn backward_in_chunks(
    x: &[f32],
    f: &Filter,
    dy: &[f32],
    g: &ConvGeom,
    need_dx: bool,
    chunk_floats: usize,
) -> (Option<Vec<f32>>, Vec<f32>) {
    debug_assert!(applicable(g) && f.co == g.co && f.ci == g.ci);
    let (ci, co, hw) = (g.ci, g.co, g.h * g.w);
    let (cp, cop) = (ci.div_ceil(L) * L, co.div_ceil(L) * L);
    let per_image = g.h.div_ceil(M) * g.w.div_ceil(M);
    let images = (chunk_floats / (T * T * per_image * cp.max(cop))).clamp(1, g.n.max(1));
    let threads = rayon::current_num_threads().max(1);
    let mut du = vec![0.0f32; T * T * co * ci];
    let dup = SendPtr(du.as_mut_ptr());
    let mut dx = need_dx.then(|| scratch::zeroed(g.n * ci * hw));
    let dxp = SendPtr(dx.as_mut().map_or(std::ptr::null_mut(), |d| d.as_mut_ptr()));
    for n0 in (0..g.n).step_by(images) {
        let gc = ConvGeom {
            n: images.min(g.n - n0),
            ..*g
        };
        // the output gradient is zero outside the image, whatever the input's padding
        let gdy = ConvGeom {
            ci: co,
            co: ci,
            pad_mode: PadMode::Zeros,
            ..gc
        };
        let ntp = gc.n * per_image;
        let (xp, ph, pw) = pad_input(&x[n0 * ci * hw..][..gc.n * ci * hw], &gc);
        let (dyp, _, _) = pad_input(&dy[n0 * co * hw..][..gc.n * co * hw], &gdy);
        let mut v = Workspace::new(T * T * ntp * cp);
        let mut dm = Workspace::new(T * T * ntp * cop);
        let (vp, dmp) = (SendPtr(v.as_mut_ptr()), SendPtr(dm.as_mut_ptr()));
        let per = ntp.div_ceil(2 * threads).max(1);
        (0..ntp.div_ceil(per)).into_par_iter().for_each(|task| {
            let t0 = task * per;
            let nt = per.min(ntp - t0);
            input_transform(&xp, ph, pw, &gc, t0, nt, vp, ntp, t0);
            grad_output_transform(&dyp, ph, pw, &gc, t0, nt, dmp, ntp, t0);
        });
        // dU[ξ] += dM[ξ]ᵀ V[ξ], output channels split so every thread has work.
        let splits = (2 * threads).div_ceil(T * T).min(co);
        (0..T * T * splits).into_par_iter().for_each(|task| {
            let (xi, s) = (task / splits, task % splits);
            let (o0, o1) = (s * co / splits, (s + 1) * co / splits);
            // SAFETY: rows o0..o1 of dU[ξ] (co × ci; element (o, c) at (o·T² + ξ)·ci + c)
            // belong to this task; dM[ξ]ᵀ is co × ntp with element (o, t) at t·cop + o, V[ξ]
            // ntp × ci with row stride cp.
            unsafe {
                gemm1_fp32(
                    o1 - o0,
                    ci,
                    ntp,
                    dup.get().add((o0 * T * T + xi) * ci),
                    (T * T * ci) as isize,
                    1,
                    true,
                    Mat::new(&dm[xi * ntp * cop + o0..], 1, cop),
                    Mat::new(&v[xi * ntp * cp..], cp, 1),
                    1.0,
                )
            };
        });
        if !need_dx {
            continue;
        }
        // dV[ξ] = dM[ξ] U[ξ]ᵀ into V's memory (V is no longer needed), computed as
        // dV[ξ]ᵀ (ci × ntp) = U[ξ] (ci × co) · dM[ξ]ᵀ so that U is read in its stored order;
        // input channels split so every thread has work.
        let splits = (2 * threads).div_ceil(T * T).min(ci);
        (0..T * T * splits).into_par_iter().for_each(|task| {
            let (xi, s) = (task / splits, task % splits);
            let (c0, c1) = (s * ci / splits, (s + 1) * ci / splits);
            // SAFETY: channels c0..c1 of dV[ξ] (element (c, t) at t·cp + c) belong to this
            // task; U[ξ] is ci × co row-major; dM[ξ]ᵀ is co × ntp with element (o, t) at
            // t·cop + o.
            unsafe {
                gemm1_fp32(
                    c1 - c0,
                    ntp,
                    co,
                    vp.get().add(xi * ntp * cp + c0),
                    1,
                    cp as isize,
                    false,
                    Mat::new(&f.u[(xi * ci + c0) * co..], co, 1),
                    Mat::new(&dm[xi * ntp * cop..], 1, cop),
                    1.0,
                )
            };
        });
        let cb = ci.div_ceil(L);
        (0..gc.n * cb).into_par_iter().for_each(|nb| {
            let (n, blk) = (nb / cb, nb % cb);
            scratch::with1(ph * pw * L, |plane| {
                plane.fill(0.0);
                input_transform_adjoint(&v, ntp, cp, &gc, n, blk, plane, pw);
                if g.circular() {
                    fold_border(plane, g, pw);
                }
                for l in 0..L.min(ci - blk * L) {
                    // SAFETY: channel blk·L + l of image n0 + n belongs to this task.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(
                            dxp.get().add(((n0 + n) * ci + blk * L + l) * hw),
                            hw,
                        )
                    };
                    for (r, row) in out.chunks_exact_mut(g.w).enumerate() {
                        let src = &plane[((r + 1) * pw + 1) * L + l..];
                        for (j, o) in row.iter_mut().enumerate() {
                            *o = src[j * L];
                        }
                    }
                }
            });
        });
    }
    // dw[o][c][ij] = Σ_ξ dU[o][ξ][c]·K[ξ][ij], K = G ⊗ G (the adjoint of U = G w Gᵀ): one
    // (ci × 25)·(25 × 9) product per output channel.
    let k: Vec<f32> = (0..T * T * 9)
        .map(|e| {
            let ((xk, xl), (i, j)) = (((e / 9) / T, (e / 9) % T), ((e % 9) / 3, e % 3));
            (G[xk][i] * G[xl][j]) as f32
        })
        .collect();
    let mut dw = vec![0.0f32; co * ci * 9];
    dw.par_chunks_mut(ci * 9).enumerate().for_each(|(o, dwo)| {
        // SAFETY: dwo is ci × 9; dU[o] is ci × 25 with element (c, ξ) at ξ·ci + c.
        unsafe {
            gemm1_fp32(
                ci,
                9,
                T * T,
                dwo.as_mut_ptr(),
                9,
                1,
                false,
                Mat::new(&du[o * T * T * ci..], 1, ci),
                Mat::new(&k, 9, 1),
                1.0,
            )
        };
    });
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of one and of two images (the last one short) give the reference gradients,
    /// with zero and with circular padding.
    #[test]
    fn backward_by_chunks_of_images() {
        for pad_mode in [PadMode::Zeros, PadMode::Circular] {
            let g = ConvGeom {
                n: 3,
                ci: 5,
                h: 7,
                w: 8,
                co: 18,
                k: 3,
                stride: 1,
                pad: [1; 4],
                pad_mode,
            };
            let vals = |n: usize, s: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| (((i * 7919 + s) % 1013) as f32 / 1013.0) - 0.5)
                    .collect()
            };
            let (x, w) = (vals(3 * 5 * 56, 1), vals(18 * 5 * 9, 2));
            let dy = vals(3 * 18 * 56, 3);
            let (want_dx, want_dw, _) = super::super::reference::conv2d_backward(&x, &w, &dy, &g);
            let per_image = T * T * 9 * 32;
            for chunk in [per_image, 2 * per_image] {
                let f = Filter::new(&w, 18, 5);
                let (dx, dw) = backward_in_chunks(&x, &f, &dy, &g, true, chunk);
                for (got, want) in [(dx.unwrap(), &want_dx), (dw, &want_dw)] {
                    for (a, b) in got.iter().zip(want) {
                        assert!(
                            (a - b).abs() <= 1e-4 + 1e-4 * b.abs(),
                            "{pad_mode:?}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
