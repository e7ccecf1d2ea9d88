//! Element-wise and data-movement operations: SiLU, binary arithmetic, affine maps, channel
//! broadcasting, transposes, channel concatenation and slicing, nearest 2× upsampling, sums and
//! the sinusoidal timestep embedding. Each is one pass over memory, split across threads in
//! chunks of [`CHUNK`] elements. The math of each is in [`crate::backend::BackendStorage`].

use super::scratch;
use super::simd::{sigmoid, simd_fn};
use crate::backend::BinaryOp;
use rayon::prelude::*;

/// Elements per parallel task.
pub const CHUNK: usize = 1 << 15;

simd_fn! {
    fn silu_chunk(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x * sigmoid(x);
        }
    }
}

simd_fn! {
    fn silu_backward_chunk(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((d, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
            let s = sigmoid(x);
            *d = g * s * (1.0 + x * (1.0 - s));
        }
    }
}

simd_fn! {
    fn binary_chunk(a: &[f32], b: &[f32], y: &mut [f32], op: BinaryOp) {
        match op {
            BinaryOp::Add => y.iter_mut().zip(a.iter().zip(b)).for_each(|(y, (a, b))| *y = a + b),
            BinaryOp::Sub => y.iter_mut().zip(a.iter().zip(b)).for_each(|(y, (a, b))| *y = a - b),
            BinaryOp::Mul => y.iter_mut().zip(a.iter().zip(b)).for_each(|(y, (a, b))| *y = a * b),
            BinaryOp::AbsDiff => y.iter_mut().zip(a.iter().zip(b)).for_each(|(y, (a, b))| *y = (a - b).abs()),
            BinaryOp::SignDiff => y.iter_mut().zip(a.iter().zip(b)).for_each(|(y, (a, b))| {
                let d = a - b;
                *y = if d > 0.0 { 1.0 } else if d < 0.0 { -1.0 } else { 0.0 };
            }),
        }
    }
}

simd_fn! {
    fn affine_chunk(x: &[f32], y: &mut [f32], mul: f32, add: f32) {
        y.iter_mut().zip(x).for_each(|(y, x)| *y = x * mul + add);
    }
}

pub fn silu(x: &[f32]) -> Vec<f32> {
    let mut y = scratch::zeroed(x.len());
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| silu_chunk(x, y));
    y
}

pub fn silu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = scratch::zeroed(x.len());
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(d, (x, g))| silu_backward_chunk(x, g, d));
    dx
}

pub fn binary(a: &[f32], b: &[f32], op: BinaryOp) -> Vec<f32> {
    let mut y = scratch::zeroed(a.len());
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(y, (a, b))| binary_chunk(a, b, y, op));
    y
}

pub fn affine(x: &[f32], mul: f32, add: f32) -> Vec<f32> {
    let mut y = scratch::zeroed(x.len());
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| affine_chunk(x, y, mul, add));
    y
}

pub fn add_channel_bias(x: &[f32], b: &[f32], hw: usize) -> Vec<f32> {
    let mut y = scratch::zeroed(x.len());
    y.par_chunks_mut(hw.max(1))
        .zip(x.par_chunks(hw.max(1)))
        .enumerate()
        .for_each(|(i, (y, x))| affine_chunk(x, y, 1.0, b[i]));
    y
}

/// Column sums of a `(rows, cols)` matrix, accumulated in f64.
pub fn sum_rows(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut acc = vec![0.0f64; cols];
    for r in x.chunks(cols.max(1)).take(rows) {
        acc.iter_mut().zip(r).for_each(|(a, &v)| *a += v as f64);
    }
    acc.into_iter().map(|v| v as f32).collect()
}

/// `(n, a, b) → (n, b, a)`, in 32 × 32 tiles.
pub fn transpose12(x: &[f32], n: usize, a: usize, b: usize) -> Vec<f32> {
    const T: usize = 32;
    let mut y = scratch::zeroed(x.len());
    let plane = a * b;
    if plane == 0 {
        return y;
    }
    y.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .take(n)
        .for_each(|(y, x)| {
            for i0 in (0..a).step_by(T) {
                for j0 in (0..b).step_by(T) {
                    for i in i0..(i0 + T).min(a) {
                        for j in j0..(j0 + T).min(b) {
                            y[j * a + i] = x[i * b + j];
                        }
                    }
                }
            }
        });
    y
}

pub fn concat_channels(parts: &[&[f32]], n: usize, cs: &[usize], hw: usize) -> Vec<f32> {
    let c: usize = cs.iter().sum();
    let mut y = scratch::zeroed(n * c * hw);
    y.par_chunks_mut((c * hw).max(1))
        .enumerate()
        .for_each(|(i, yn)| {
            let mut off = 0;
            for (p, &ci) in parts.iter().zip(cs) {
                yn[off..off + ci * hw].copy_from_slice(&p[i * ci * hw..][..ci * hw]);
                off += ci * hw;
            }
        });
    y
}

pub fn slice_channels(
    x: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    start: usize,
    end: usize,
) -> Vec<f32> {
    let w = (end - start) * hw;
    let mut y = scratch::zeroed(n * w);
    if w == 0 {
        return y;
    }
    y.par_chunks_mut(w)
        .enumerate()
        .for_each(|(i, yn)| yn.copy_from_slice(&x[i * c * hw + start * hw..][..w]));
    y
}

pub fn slice_channels_backward(
    dy: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    start: usize,
    end: usize,
) -> Vec<f32> {
    let w = (end - start) * hw;
    let mut dx = scratch::zeroed(n * c * hw);
    if w == 0 {
        return dx;
    }
    dx.par_chunks_mut(c * hw)
        .enumerate()
        .for_each(|(i, dn)| dn[start * hw..][..w].copy_from_slice(&dy[i * w..][..w]));
    dx
}

/// Nearest 2× upsampling of `(nc, h, w)` planes.
pub fn upsample_nearest2x(x: &[f32], nc: usize, h: usize, w: usize) -> Vec<f32> {
    let mut y = scratch::zeroed(nc * 4 * h * w);
    if h * w == 0 {
        return y;
    }
    y.par_chunks_mut(4 * h * w)
        .zip(x.par_chunks(h * w))
        .for_each(|(yp, xp)| {
            for (r, xr) in xp.chunks(w).enumerate() {
                let (top, bottom) = yp[2 * r * 2 * w..][..4 * w].split_at_mut(2 * w);
                for (j, &v) in xr.iter().enumerate() {
                    top[2 * j] = v;
                    top[2 * j + 1] = v;
                }
                bottom.copy_from_slice(top);
            }
        });
    y
}

/// Sums of 2 × 2 blocks: `(nc, 2h, 2w) → (nc, h, w)`.
pub fn upsample_nearest2x_backward(dy: &[f32], nc: usize, h: usize, w: usize) -> Vec<f32> {
    let mut dx = scratch::zeroed(nc * h * w);
    if h * w == 0 {
        return dx;
    }
    dx.par_chunks_mut(h * w)
        .zip(dy.par_chunks(4 * h * w))
        .for_each(|(xp, yp)| {
            for (r, xr) in xp.chunks_mut(w).enumerate() {
                let (top, bottom) = yp[2 * r * 2 * w..][..4 * w].split_at(2 * w);
                for (j, d) in xr.iter_mut().enumerate() {
                    *d = top[2 * j] + top[2 * j + 1] + bottom[2 * j] + bottom[2 * j + 1];
                }
            }
        });
    dx
}

/// diffusers' `get_timestep_embedding(t, dim, flip_sin_to_cos, freq_shift)`, with f32 arithmetic
/// in PyTorch's order: `e_i = exp(−ln(10⁴)·i / (dim/2 − shift))`, `[sin(t·e), cos(t·e)]`, halves
/// swapped when `flip_sin_to_cos`, a zero column appended for odd `dim`.
pub fn timestep_embedding(
    t: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
) -> Vec<f32> {
    let half = dim / 2;
    let neg_log = -(10000f64.ln()) as f32;
    let denom = half as f32 - freq_shift;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (neg_log * i as f32 / denom).exp())
        .collect();
    let mut out = scratch::zeroed(t.len() * dim);
    for (row, &tv) in out.chunks_mut(dim.max(1)).zip(t) {
        for (i, &f) in freqs.iter().enumerate() {
            let a = tv * f;
            let (s, c) = (a.sin(), a.cos());
            if flip_sin_to_cos {
                row[i] = c;
                row[half + i] = s;
            } else {
                row[i] = s;
                row[half + i] = c;
            }
        }
    }
    out
}
