//! The Dynamical Diffusion operations along the frame axis (docs/process.md): `Dyn`/`InvDyn`, the
//! fused forward process and the fused DDIM step. Each is a scan over frames that is independent
//! per element, so the work is split into (sequence, run of `RUN` elements) tasks; a task walks
//! the frames once, keeping its running sums for the run in registers and short arrays, so every
//! input is read once and every output written once. The plain versions are in
//! [`super::reference`]; `cargo test --release --test ops process::` compares the two.

use super::matmul::SendPtr;
use crate::backend::{DdimCoef, DynCoef, ProcessGeom, QSampleCoef, SeqGeom};
use rayon::prelude::*;

/// Elements per task (a few KiB of running state, in L1).
const RUN: usize = 1024;

/// Calls `f(b, e0, e1)` for every sequence `b` and element run `e0..e1`, in parallel.
fn for_runs(batch: usize, elems: usize, f: impl Fn(usize, usize, usize) + Sync) {
    let runs = elems.div_ceil(RUN).max(1);
    (0..batch * runs).into_par_iter().for_each(|i| {
        let (b, r) = (i / runs, i % runs);
        f(b, r * RUN, ((r + 1) * RUN).min(elems));
    });
}

/// `Dyn_γ` or `InvDyn_γ` over the frames of each sequence, see
/// [`crate::backend::BackendStorage::dynamics`].
pub fn dynamics(x: &[f32], g: &SeqGeom, coefs: &[DynCoef], inverse: bool) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    let out = SendPtr(y.as_mut_ptr());
    let (f, e) = (g.frames, g.elems);
    for_runs(g.batch, e, |b, e0, e1| {
        let c = coefs[b];
        let at = |frame: usize| (b * f + frame) * e;
        // SAFETY: the task owns elements e0..e1 of every frame of sequence b.
        let y = |frame: usize| unsafe {
            std::slice::from_raw_parts_mut(out.get().add(at(frame) + e0), e1 - e0)
        };
        if f == 0 {
            return;
        }
        y(0).copy_from_slice(&x[at(0) + e0..at(0) + e1]);
        for i in 1..f {
            let xi = &x[at(i) + e0..at(i) + e1];
            let (prev, cur) = (y(i - 1), y(i));
            if inverse {
                let xp = &x[at(i - 1) + e0..at(i - 1) + e1];
                for ((o, &v), &p) in cur.iter_mut().zip(xi).zip(xp) {
                    *o = (v - c.sqrt_1mg * p) / c.sqrt_g;
                }
            } else {
                for ((o, &v), &p) in cur.iter_mut().zip(xi).zip(prev.iter()) {
                    *o = c.sqrt_g * v + c.sqrt_1mg * p;
                }
            }
        }
    });
    y
}

/// The fused forward process, see [`crate::backend::BackendStorage::q_sample`]: one walk over
/// the frames of each run of elements, keeping `D = Dyn(x_0)` and `ε̃ = Dyn(ε)` running (the
/// noise chain starts at the first diffused frame).
pub fn q_sample(
    x0: &[f32],
    eps: &[f32],
    g: &ProcessGeom,
    coefs: &[QSampleCoef],
) -> (Vec<f32>, Vec<f32>) {
    let (l, dn, e) = (g.frames(), g.diffused(), g.elems);
    let sf = g.state_frames();
    // the first diffused frame of the sequence, and where x_t of sequence frame f goes in the input
    let (first, off) = if g.diffuse_history {
        (0, g.history)
    } else {
        (g.history, 0)
    };
    let mut input = vec![0.0f32; g.batch * sf * e];
    let mut target = vec![0.0f32; eps.len()];
    let (inp, tgt) = (SendPtr(input.as_mut_ptr()), SendPtr(target.as_mut_ptr()));
    for_runs(g.batch, e, |b, e0, e1| {
        let c = coefs[b];
        let (sg, s1g) = (c.dynamics.sqrt_g, c.dynamics.sqrt_1mg);
        let n = e1 - e0;
        // SAFETY: the task owns elements e0..e1 of every frame of sequence b.
        let out = |frame: usize| unsafe {
            std::slice::from_raw_parts_mut(inp.get().add((b * sf + frame) * e + e0), n)
        };
        // Running D (dynamics of the clean sequence) and ε̃ for this run of elements.
        let mut d = [0.0f32; RUN];
        let mut et = [0.0f32; RUN];
        for f in 0..l {
            let xs = &x0[(b * l + f) * e + e0..][..n];
            if f == 0 {
                d[..n].copy_from_slice(xs);
            } else {
                for (d, &x) in d[..n].iter_mut().zip(xs) {
                    *d = sg * x + s1g * *d;
                }
            }
            if f < g.history {
                out(f).copy_from_slice(xs);
            }
            if f < first {
                continue;
            }
            let fs = f - first;
            let ep = &eps[(b * dn + fs) * e + e0..][..n];
            // SAFETY: as above, for the target.
            let t =
                unsafe { std::slice::from_raw_parts_mut(tgt.get().add((b * dn + fs) * e + e0), n) };
            if fs == 0 {
                et[..n].copy_from_slice(ep);
            } else {
                for (et, &z) in et[..n].iter_mut().zip(ep) {
                    *et = sg * z + s1g * *et;
                }
            }
            for ((t, &et), &d) in t.iter_mut().zip(&et[..n]).zip(&d[..n]) {
                *t = c.target_eps * et + c.target_d * d;
            }
            for ((o, &d), &et) in out(off + f).iter_mut().zip(&d[..n]).zip(&et[..n]) {
                *o = c.sqrt_ab * d + c.sqrt_1mab * et;
            }
        }
    });
    (input, target)
}

/// The fused DDIM step, see [`crate::backend::BackendStorage::ddim_step`]. Per element, with
/// `h` the history, `x_t` the diffused part of the state:
///
/// ```text
/// running over the history: Dt = Dyn_{γ̄_t}(h)^P,  Dp = Dyn_{γ̄_p}(h)^P
/// for each diffused frame s:
///   ε̂^s    = eps_from_xt·x_t^s + eps_from_out·output^s   (the output itself, or from v̂)
///   y      = (x_t^s − √(1−ᾱ_t)·ε̂^s) / √ᾱ_t
///   x̂_0^s  = (y − √(1−γ̄_t)·y_prev) / √γ̄_t            (y_prev = Dt for the first frame)
///   ε_w^s  = (ε̂^s − √(1−γ̄_t)·ε̂^{s−1}) / √γ̄_t          (ε̂^s itself for the first frame)
///   Dp     = √γ̄_p·x̂_0^s + √(1−γ̄_p)·Dp
///   W      = Dyn_{γ̄_p}(ε_w)^s,  Z = Dyn_{γ̄_p}(z)^s   (chains starting at the first diffused frame)
///   x_p^s  = √ᾱ_p·Dp + √(1−ᾱ_p−σ²)·W + σ·Z
/// ```
///
/// With `diffuse_history` every frame is diffused and every chain starts afresh at frame 0:
/// `x̂_0^0 = y^0`, `Dp = x̂_0^0` (the history is only the network's condition).
pub fn ddim_step(
    state: &[f32],
    eps_hat: &[f32],
    z: Option<&[f32]>,
    g: &ProcessGeom,
    c: &DdimCoef,
) -> Vec<f32> {
    let (sf, dn, e) = (g.state_frames(), g.diffused(), g.elems);
    let mut next = vec![0.0f32; state.len()];
    let out = SendPtr(next.as_mut_ptr());
    let (t, p) = (c.dyn_t, c.dyn_p);
    let fresh = g.diffuse_history;
    for_runs(g.batch, e, |b, e0, e1| {
        let n = e1 - e0;
        let mut dt = [0.0f32; RUN];
        let mut dp = [0.0f32; RUN];
        let mut y_prev = [0.0f32; RUN];
        let mut eh_prev = [0.0f32; RUN];
        let mut w = [0.0f32; RUN];
        let mut zz = [0.0f32; RUN];
        for f in 0..g.history {
            let h = &state[(b * sf + f) * e + e0..][..n];
            // SAFETY: the task owns elements e0..e1 of every frame of sequence b.
            let o =
                unsafe { std::slice::from_raw_parts_mut(out.get().add((b * sf + f) * e + e0), n) };
            o.copy_from_slice(h);
            if fresh {
                continue;
            }
            if f == 0 {
                dt[..n].copy_from_slice(h);
                dp[..n].copy_from_slice(h);
            } else {
                for ((dt, dp), &h) in dt[..n].iter_mut().zip(&mut dp[..n]).zip(h) {
                    *dt = t.sqrt_g * h + t.sqrt_1mg * *dt;
                    *dp = p.sqrt_g * h + p.sqrt_1mg * *dp;
                }
            }
        }
        y_prev[..n].copy_from_slice(&dt[..n]);
        for fs in 0..dn {
            let f = g.history + fs;
            let xt = &state[(b * sf + f) * e + e0..][..n];
            let eh = &eps_hat[(b * dn + fs) * e + e0..][..n];
            let zs = z.map(|z| &z[(b * dn + fs) * e + e0..][..n]);
            // SAFETY: as above.
            let o =
                unsafe { std::slice::from_raw_parts_mut(out.get().add((b * sf + f) * e + e0), n) };
            for i in 0..n {
                // the noise estimate from the network's output (itself, or from a velocity)
                let ehi = c.eps_from_xt * xt[i] + c.eps_from_out * eh[i];
                let y = (xt[i] - c.sqrt_1mab_t * ehi) / c.sqrt_ab_t;
                let zi = zs.map_or(0.0, |z| z[i]);
                if fs == 0 && fresh {
                    dp[i] = y;
                } else {
                    let x0 = (y - t.sqrt_1mg * y_prev[i]) / t.sqrt_g;
                    dp[i] = p.sqrt_g * x0 + p.sqrt_1mg * dp[i];
                }
                y_prev[i] = y;
                if fs == 0 {
                    w[i] = ehi;
                    zz[i] = zi;
                } else {
                    let ew = (ehi - t.sqrt_1mg * eh_prev[i]) / t.sqrt_g;
                    w[i] = p.sqrt_g * ew + p.sqrt_1mg * w[i];
                    zz[i] = p.sqrt_g * zi + p.sqrt_1mg * zz[i];
                }
                eh_prev[i] = ehi;
                o[i] = c.sqrt_ab_p * dp[i] + c.eps_weight * w[i] + c.sigma * zz[i];
            }
        }
    });
    next
}
