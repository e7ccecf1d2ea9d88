//! 2-D convolution on NCHW tensors: im2col over tiles of output pixels, then one `gemm`.
//!
//! `y[n, co, p] = b[co] + Σ_{ci,ky,kx} w[co, ci, ky, kx] · x[n, ci, oy·s + ky − pt, ox·s + kx − pl]`
//! for output pixel `p = oy·Wo + ox` (zero outside the input).
//!
//! Layout: NCHW, chosen by measurement (`cargo bench --bench ops -- conv_layout`, 2 threads,
//! batch 8, 3×3 convolutions of the benchmark UNet; median GFLOP/s counting the direct method's
//! FLOPs; see BENCHMARKS.md):
//!
//! | shape (Ci, H×W, Co) | NCHW im2col+gemm | NHWC 9-tap gemm | NCHW Winograd F(3×3) |
//! |---|---|---|---|
//! | 64, 64×64, 64   | 151 | 182 | 200 |
//! | 128, 32×32, 128 | 168 | 187 | 238 |
//! | 256, 16×16, 256 | 190 | 179 | 299 |
//!
//! For direct convolution NHWC's nine accumulated products (`k = Ci`, the output re-read per
//! tap) beat NCHW im2col by up to 20% at the top level and lose at the bottom; but every 3×3
//! stride-1 convolution takes the Winograd path ([`super::winograd`]), which beats both and
//! transforms contiguous NCHW planes. Group norm reduces over contiguous `(C/G)·H·W` runs, 1×1
//! convolutions need no copy, and NCHW is diffusers' layout, so no transpose is needed at any
//! boundary. This file is the direct path (strided and 1×1 convolutions, and all backward
//! passes): each (image, output-pixel tile) is one product `W (Co × Ci·k²) · col (Ci·k² ×
//! tile)` written straight into the output planes, `col` built by contiguous row copies
//! (stride 1); the tiles keep `col` near the L2 cache and give every thread work at batch 1.
//!
//! Reference: [`super::reference::conv2d`]. Bench: `cargo bench --bench ops -- conv`.

use super::matmul::{gemm1, Mat, SendPtr};
use super::scratch;
use crate::backend::ConvGeom;
use rayon::prelude::*;

fn is_pointwise(g: &ConvGeom) -> bool {
    g.k == 1 && g.stride == 1 && g.pad == [0; 4]
}

/// Output pixels per task: `col` tiles of about 1 MB, whole rows of work for every thread.
fn tile_pixels(g: &ConvGeom) -> usize {
    let p = g.ho() * g.wo();
    let kk = g.ci * g.k * g.k;
    let threads = rayon::current_num_threads().max(1);
    let by_cache = ((1usize << 18) / kk.max(1)).max(64);
    let per_image_for_threads = if g.n >= 2 * threads {
        1
    } else {
        (2 * threads).div_ceil(g.n)
    };
    let by_threads = p.div_ceil(per_image_for_threads);
    let t = by_cache.min(by_threads).max(16).min(p);
    // round to a multiple of 16 for the microkernel, never beyond p
    (t.div_ceil(16) * 16).min(p)
}

/// Fills `col` (`Ci·k²` rows of `p1 − p0`) with the input patches of output pixels `p0..p1` of
/// one image `xn` (`Ci × H × W`).
fn im2col(xn: &[f32], g: &ConvGeom, p0: usize, p1: usize, col: &mut [f32]) {
    if g.circular() {
        return im2col_circular(xn, g, p0, p1, col);
    }
    let (h, w, k, s) = (g.h, g.w, g.k, g.stride);
    let (pt, pl) = (g.pad[0], g.pad[2]);
    let wo = g.wo();
    let np = p1 - p0;
    for (r, row) in col.chunks_mut(np).enumerate() {
        let ci = r / (k * k);
        let (ky, kx) = ((r / k) % k, r % k);
        let plane = &xn[ci * h * w..][..h * w];
        // valid output columns: 0 ≤ ox·s + kx − pl < w
        let ox_lo = pl.saturating_sub(kx).div_ceil(s);
        let ox_hi = if w + pl > kx {
            (w + pl - kx - 1) / s + 1
        } else {
            0
        }
        .min(wo);
        let mut p = p0;
        while p < p1 {
            let (oy, ox0) = (p / wo, p % wo);
            let ox1 = wo.min(ox0 + (p1 - p));
            let out = &mut row[p - p0..p - p0 + (ox1 - ox0)];
            let iy = (oy * s + ky) as isize - pt as isize;
            if iy < 0 || iy >= h as isize || ox_lo >= ox_hi {
                out.fill(0.0);
            } else {
                let src = &plane[iy as usize * w..][..w];
                let (a, b) = (ox_lo.clamp(ox0, ox1), ox_hi.clamp(ox0, ox1));
                out[..a - ox0].fill(0.0);
                out[b - ox0..].fill(0.0);
                let dst = &mut out[a - ox0..b - ox0];
                if s == 1 {
                    let start = a + kx - pl;
                    dst.copy_from_slice(&src[start..start + dst.len()]);
                } else {
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = src[(a + j) * s + kx - pl];
                    }
                }
            }
            p += ox1 - ox0;
        }
    }
}

/// [`im2col`] with circular padding: every entry read from [`ConvGeom::in_row`] and
/// [`ConvGeom::in_col`] (the padding wraps around, so no entry is zero).
fn im2col_circular(xn: &[f32], g: &ConvGeom, p0: usize, p1: usize, col: &mut [f32]) {
    let (hw, k, wo) = (g.h * g.w, g.k, g.wo());
    for (r, row) in col.chunks_mut(p1 - p0).enumerate() {
        let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        let plane = &xn[ci * hw..][..hw];
        for (d, p) in row.iter_mut().zip(p0..p1) {
            let (oy, ox) = (p / wo, p % wo);
            *d = match (g.in_row(oy, ky), g.in_col(ox, kx)) {
                (Some(iy), Some(ix)) => plane[iy * g.w + ix],
                _ => 0.0,
            };
        }
    }
}

/// Adds `col` (`Ci·k²` rows over all output pixels of one image) back onto the input positions
/// its entries were read from: the adjoint of [`im2col`].
fn col2im(col: &[f32], g: &ConvGeom, dxn: &mut [f32]) {
    if g.circular() {
        return col2im_circular(col, g, dxn);
    }
    let (h, w, k, s) = (g.h, g.w, g.k, g.stride);
    let (pt, pl) = (g.pad[0], g.pad[2]);
    let (ho, wo) = (g.ho(), g.wo());
    for (r, row) in col.chunks(ho * wo).enumerate() {
        let ci = r / (k * k);
        let (ky, kx) = ((r / k) % k, r % k);
        let plane = &mut dxn[ci * h * w..][..h * w];
        for oy in 0..ho {
            let iy = (oy * s + ky) as isize - pt as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let dst = &mut plane[iy as usize * w..][..w];
            for (ox, v) in row[oy * wo..][..wo].iter().enumerate() {
                let ix = (ox * s + kx) as isize - pl as isize;
                if ix >= 0 && ix < w as isize {
                    dst[ix as usize] += v;
                }
            }
        }
    }
}

/// [`col2im`] with circular padding: the adjoint of [`im2col_circular`].
fn col2im_circular(col: &[f32], g: &ConvGeom, dxn: &mut [f32]) {
    let (hw, k, wo) = (g.h * g.w, g.k, g.wo());
    for (r, row) in col.chunks(g.ho() * wo).enumerate() {
        let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        let plane = &mut dxn[ci * hw..][..hw];
        for (p, v) in row.iter().enumerate() {
            if let (Some(iy), Some(ix)) = (g.in_row(p / wo, ky), g.in_col(p % wo, kx)) {
                plane[iy * g.w + ix] += v;
            }
        }
    }
}

/// Forward convolution, see the module documentation.
pub fn conv2d(x: &[f32], w: &[f32], b: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    let p = g.ho() * g.wo();
    let kk = g.ci * g.k * g.k;
    let plane_in = g.ci * g.h * g.w;
    let mut y = scratch::zeroed(g.n * g.co * p);
    let tile = tile_pixels(g);
    let tiles = p.div_ceil(tile);
    let yp = SendPtr(y.as_mut_ptr());
    let pointwise = is_pointwise(g);
    (0..g.n * tiles).into_par_iter().for_each(|item| {
        let (n, p0) = (item / tiles, (item % tiles) * tile);
        let p1 = (p0 + tile).min(p);
        let xn = &x[n * plane_in..][..plane_in];
        // SAFETY: this task owns columns p0..p1 of image n's output planes.
        let dst = unsafe { yp.get().add(n * g.co * p + p0) };
        if pointwise {
            // SAFETY: x[n] is Ci × P row-major; columns p0..p1 of it.
            unsafe {
                gemm1(
                    g.co,
                    p1 - p0,
                    g.ci,
                    dst,
                    p as isize,
                    1,
                    false,
                    Mat::new(w, g.ci, 1),
                    Mat::new(&xn[p0..], p, 1),
                    1.0,
                )
            };
        } else {
            scratch::with1(kk * (p1 - p0), |col| {
                im2col(xn, g, p0, p1, col);
                // SAFETY: w is Co × kk, col is kk × (p1 − p0), both row-major.
                unsafe {
                    gemm1(
                        g.co,
                        p1 - p0,
                        kk,
                        dst,
                        p as isize,
                        1,
                        false,
                        Mat::new(w, kk, 1),
                        Mat::new(col, p1 - p0, 1),
                        1.0,
                    )
                };
            });
        }
        if let Some(b) = b {
            for (co, &bc) in b.iter().enumerate() {
                // SAFETY: row co, columns p0..p1 of this task's region.
                let row = unsafe { std::slice::from_raw_parts_mut(dst.add(co * p), p1 - p0) };
                row.iter_mut().for_each(|v| *v += bc);
            }
        }
    });
    y
}

/// Adds `parts` in order: a sum over images whose rounding does not depend on the threads.
fn sum_in_order(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    parts.into_iter().fold(vec![0.0; len], |mut acc, p| {
        acc.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
        acc
    })
}

/// Images per partial sum of the kernel gradient in [`conv2d_backward`]: a constant, so that
/// the gradient's rounding depends on the batch alone, never on the thread count.
const IMAGES_PER_PARTIAL: usize = 4;

/// `db[o] = Σ_{n,p} dy[n, o, p]`, the bias gradient of any convolution (per image in
/// parallel, the images added in order).
pub fn bias_grad(dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    let p = g.ho() * g.wo();
    let parts = dy
        .par_chunks(g.co * p)
        .map(|dyn_| {
            dyn_.chunks(p)
                .map(|r| r.iter().sum::<f32>())
                .collect::<Vec<f32>>()
        })
        .collect();
    sum_in_order(parts, g.co)
}

/// Gradients of [`conv2d`]: `(dx if need_dx, dw, db)`.
///
/// `dw = Σ_n dy[n] · col[n]ᵀ`, `db = Σ_{n,p} dy`, `dx[n] = col2im(wᵀ · dy[n])`.
pub fn conv2d_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &ConvGeom,
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let p = g.ho() * g.wo();
    let kk = g.ci * g.k * g.k;
    let plane_in = g.ci * g.h * g.w;
    let pointwise = is_pointwise(g);
    let db = bias_grad(dy, g);
    let groups = g.n.div_ceil(IMAGES_PER_PARTIAL);
    let parts = (0..groups)
        .into_par_iter()
        .map(|grp| {
            let mut acc = vec![0.0f32; g.co * kk];
            for n in grp * IMAGES_PER_PARTIAL..((grp + 1) * IMAGES_PER_PARTIAL).min(g.n) {
                let xn = &x[n * plane_in..][..plane_in];
                let dyn_ = Mat::new(&dy[n * g.co * p..][..g.co * p], p, 1);
                // acc (Co × Ci·k²) += dy[n] (Co × P) · rhs, rhs = colᵀ (P × Ci·k²) with element
                // (p, r) = col[r·P + p]; for 1×1 convolutions col is x[n] itself.
                let mut accumulate = |col: &[f32]| {
                    // SAFETY: acc is Co × kk; col holds kk rows of P.
                    unsafe {
                        gemm1(
                            g.co,
                            kk,
                            p,
                            acc.as_mut_ptr(),
                            kk as isize,
                            1,
                            true,
                            dyn_,
                            Mat::new(col, 1, p),
                            1.0,
                        )
                    };
                };
                if pointwise {
                    accumulate(xn);
                } else {
                    scratch::with1(kk * p, |col| {
                        im2col(xn, g, 0, p, col);
                        accumulate(col);
                    });
                }
            }
            acc
        })
        .collect();
    let dw = sum_in_order(parts, g.co * kk);
    let dx = need_dx.then(|| {
        let mut dx = scratch::zeroed(g.n * plane_in);
        dx.par_chunks_mut(plane_in)
            .enumerate()
            .for_each(|(n, dxn)| {
                let dyn_ = Mat::new(&dy[n * g.co * p..][..g.co * p], p, 1);
                // wᵀ is kk × Co with element (r, co) = w[co·kk + r].
                let wt = Mat::new(w, 1, kk);
                if pointwise {
                    // SAFETY: dx[n] is Ci × P.
                    unsafe {
                        gemm1(
                            kk,
                            p,
                            g.co,
                            dxn.as_mut_ptr(),
                            p as isize,
                            1,
                            false,
                            wt,
                            dyn_,
                            1.0,
                        )
                    };
                } else {
                    let mut col = vec![0.0f32; kk * p];
                    // SAFETY: col is kk × P.
                    unsafe {
                        gemm1(
                            kk,
                            p,
                            g.co,
                            col.as_mut_ptr(),
                            p as isize,
                            1,
                            false,
                            wt,
                            dyn_,
                            1.0,
                        )
                    };
                    col2im(&col, g, dxn);
                }
            });
        dx
    });
    (dx, dw, db)
}
