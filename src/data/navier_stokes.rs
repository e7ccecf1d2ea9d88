//! 2-D incompressible Navier–Stokes on the periodic square `[0, 2π)²`, vorticity form with linear
//! drag:
//!
//! `∂ω/∂t + u·∇ω = ν∇²ω − μω + f`,  `u = (∂ψ/∂y, −∂ψ/∂x)`,  `−∇²ψ = ω`,
//!
//! solved pseudo-spectrally (`rustfft`, f64): the advection term is formed in physical space
//! and dealiased by the 2/3 rule (modes with `|m_x|` or `|m_y|` above `R/3` are zeroed), the
//! linear terms (viscosity and drag) are integrated exactly by an integrating factor, and time
//! advances by the
//! integrating-factor fourth-order Runge–Kutta scheme (IF-RK4; Trefethen, *Spectral Methods in
//! MATLAB*, ch. 10). The 2/3-truncated system conserves energy `½Σ|û|²` and enstrophy
//! `½Σ|ω̂|²` exactly when `ν = μ = f = 0`, so only the time step changes them.
//!
//! The forcing is Kolmogorov's: the body force `(A·sin(k_f y), 0)`, i.e. vorticity forcing
//! `f = −A·k_f·cos(k_f y)`. With the defaults of `dydiff data navier-stokes` (`ν = 10⁻³`,
//! `μ = 0.1`, `A = 1`, `k_f = 4`) this is the forced turbulence of Kochkov et al. (PNAS 2021,
//! "Kolmogorov flow", Re = 1000): chaotic at every time, with the drag stopping the inverse
//! cascade. The initial vorticity is a Gaussian random field with spectrum
//! `∝ (|k|² + τ²)^{−α}` (τ = 3, α = 2.5), scaled to unit RMS.

// Index loops over modes mirror the formulas; several arrays share each index.
#![allow(clippy::needless_range_loop)]

use crate::rng::{fill_normals, NoiseKey, NoiseRow, Purpose};
use rustfft::num_complex::Complex64;
use rustfft::{Fft, FftPlanner};
use std::f64::consts::PI;
use std::sync::Arc;

/// Physical and numerical settings of one simulation.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowSettings {
    /// Grid points per side, `R`.
    pub resolution: usize,
    /// Kinematic viscosity `ν`.
    pub viscosity: f64,
    /// Linear drag `μ`.
    pub drag: f64,
    /// Forcing amplitude `A`.
    pub forcing: f64,
    /// Forcing wavenumber `k_f`.
    pub forcing_wavenumber: f64,
    /// Time step.
    pub dt: f64,
}

/// A 2-D FFT of size `R × R` (rows, then columns), unnormalised forward, `1/R²` inverse.
pub struct Fft2 {
    r: usize,
    fwd: Arc<dyn Fft<f64>>,
    inv: Arc<dyn Fft<f64>>,
    col: Vec<Complex64>,
    scratch: Vec<Complex64>,
}

impl Fft2 {
    pub fn new(r: usize) -> Fft2 {
        let mut p = FftPlanner::new();
        let (fwd, inv) = (p.plan_fft_forward(r), p.plan_fft_inverse(r));
        let len = fwd
            .get_inplace_scratch_len()
            .max(inv.get_inplace_scratch_len());
        Fft2 {
            r,
            fwd,
            inv,
            col: vec![Complex64::default(); r],
            scratch: vec![Complex64::default(); len],
        }
    }

    fn run(&mut self, a: &mut [Complex64], forward: bool) {
        let r = self.r;
        let f = if forward { &self.fwd } else { &self.inv };
        f.process_with_scratch(a, &mut self.scratch);
        for j in 0..r {
            for i in 0..r {
                self.col[i] = a[i * r + j];
            }
            f.process_with_scratch(&mut self.col, &mut self.scratch);
            for i in 0..r {
                a[i * r + j] = self.col[i];
            }
        }
        if !forward {
            let s = 1.0 / (r * r) as f64;
            a.iter_mut().for_each(|v| *v *= s);
        }
    }
    pub fn forward(&mut self, a: &mut [Complex64]) {
        self.run(a, true)
    }
    pub fn inverse(&mut self, a: &mut [Complex64]) {
        self.run(a, false)
    }
}

/// The signed integer wavenumber of FFT index `i` on `R` points.
fn wavenumber(i: usize, r: usize) -> f64 {
    if i <= r / 2 {
        i as f64
    } else {
        i as f64 - r as f64
    }
}

/// A simulation's state and the solver's precomputed operators.
pub struct Flow {
    pub settings: FlowSettings,
    /// Vorticity in spectral space, `R × R`, row `i` ↔ `y`, column `j` ↔ `x`.
    pub omega: Vec<Complex64>,
    fft: Fft2,
    kx: Vec<f64>,
    ky: Vec<f64>,
    /// `|k|²` with the mean mode set to 1 (its streamfunction is 0 anyway).
    k2: Vec<f64>,
    /// 1 where the 2/3 rule keeps the mode, else 0.
    keep: Vec<f64>,
    /// `e^{−(ν|k|² + μ)·dt/2}`.
    half_decay: Vec<f64>,
    forcing_hat: Vec<Complex64>,
    work: [Vec<Complex64>; 2],
    /// `ω̂` at the start of a step, the four stages and the stage input.
    stages: [Vec<Complex64>; 6],
    /// The FFT of the output grid of [`Flow::velocity`].
    out_fft: Option<Fft2>,
}

impl Flow {
    /// A flow with physical vorticity `omega0` (`R × R`, row-major, `y` major).
    pub fn new(settings: FlowSettings, omega0: &[f64]) -> Flow {
        let r = settings.resolution;
        let n = r * r;
        let mut kx = vec![0.0; n];
        let mut ky = vec![0.0; n];
        let mut k2 = vec![0.0; n];
        let mut keep = vec![0.0; n];
        let cut = r as f64 / 3.0;
        for i in 0..r {
            for j in 0..r {
                let (my, mx) = (wavenumber(i, r), wavenumber(j, r));
                let p = i * r + j;
                kx[p] = mx;
                ky[p] = my;
                k2[p] = if p == 0 {
                    1.0
                } else {
                    kx[p] * kx[p] + ky[p] * ky[p]
                };
                keep[p] = if mx.abs() <= cut && my.abs() <= cut {
                    1.0
                } else {
                    0.0
                };
            }
        }
        let half_decay = (0..n)
            .map(|p| {
                let rate = if p == 0 {
                    0.0
                } else {
                    settings.viscosity * k2[p] + settings.drag
                };
                (-rate * settings.dt / 2.0).exp()
            })
            .collect();
        let mut fft = Fft2::new(r);
        let kf = settings.forcing_wavenumber;
        let mut forcing_hat: Vec<Complex64> = (0..n)
            .map(|p| {
                let y = 2.0 * PI * (p / r) as f64 / r as f64;
                Complex64::new(-settings.forcing * kf * (kf * y).cos(), 0.0)
            })
            .collect();
        fft.forward(&mut forcing_hat);
        let mut omega: Vec<Complex64> = omega0.iter().map(|&v| Complex64::new(v, 0.0)).collect();
        fft.forward(&mut omega);
        for (w, k) in omega.iter_mut().zip(&keep) {
            *w *= k;
        }
        for (f, k) in forcing_hat.iter_mut().zip(&keep) {
            *f *= k;
        }
        Flow {
            settings,
            omega,
            fft,
            kx,
            ky,
            k2,
            keep,
            half_decay,
            forcing_hat,
            work: std::array::from_fn(|_| vec![Complex64::default(); n]),
            stages: std::array::from_fn(|_| vec![Complex64::default(); n]),
            out_fft: None,
        }
    }

    /// `G(ω̂) = −(u·∇ω)^ + f̂`, dealiased, into `out`. The four real fields `u, v, ∂ω/∂x,
    /// ∂ω/∂y` come from two complex inverse FFTs (`IFFT(û + i·v̂) = u + i·v` for real `u, v`).
    fn rhs(&mut self, w: &[Complex64], out: &mut [Complex64]) {
        let i = Complex64::new(0.0, 1.0);
        let [uv, grad] = &mut self.work;
        for p in 0..w.len() {
            let psi = w[p] / self.k2[p];
            let (u, v) = (i * self.ky[p] * psi, -i * self.kx[p] * psi);
            let (wx, wy) = (i * self.kx[p] * w[p], i * self.ky[p] * w[p]);
            uv[p] = u + i * v;
            grad[p] = wx + i * wy;
        }
        uv[0] = Complex64::default();
        self.fft.inverse(uv);
        self.fft.inverse(grad);
        for p in 0..w.len() {
            out[p] = Complex64::new(-(uv[p].re * grad[p].re + uv[p].im * grad[p].im), 0.0);
        }
        self.fft.forward(out);
        for p in 0..w.len() {
            out[p] = out[p] * self.keep[p] + self.forcing_hat[p];
        }
    }

    /// One IF-RK4 step of `dt`.
    pub fn step(&mut self) {
        let n = self.omega.len();
        let dt = self.settings.dt;
        let [w0, k1, k2, k3, k4, s] = std::mem::take(&mut self.stages);
        let (mut w0, mut k1, mut k2, mut k3, mut k4, mut s) = (w0, k1, k2, k3, k4, s);
        w0.copy_from_slice(&self.omega);
        self.rhs(&w0, &mut k1);
        for p in 0..n {
            s[p] = self.half_decay[p] * (w0[p] + 0.5 * dt * k1[p]);
        }
        self.rhs(&s, &mut k2);
        for p in 0..n {
            s[p] = self.half_decay[p] * w0[p] + 0.5 * dt * k2[p];
        }
        self.rhs(&s, &mut k3);
        for p in 0..n {
            let e = self.half_decay[p];
            s[p] = e * e * w0[p] + dt * e * k3[p];
        }
        self.rhs(&s, &mut k4);
        for p in 0..n {
            let e = self.half_decay[p];
            self.omega[p] =
                e * e * w0[p] + dt / 6.0 * (e * e * k1[p] + 2.0 * e * (k2[p] + k3[p]) + k4[p]);
        }
        self.stages = [w0, k1, k2, k3, k4, s];
    }

    /// Physical vorticity, `R × R`.
    pub fn vorticity(&mut self) -> Vec<f64> {
        let mut a = self.omega.clone();
        self.fft.inverse(&mut a);
        a.iter().map(|c| c.re).collect()
    }

    /// Physical velocity `(u, v)` on an `r × r` grid (`r ≤ R`, even): `u = ∂ψ/∂y`,
    /// `v = −∂ψ/∂x`, from the modes with `|m_x|, |m_y| < r/2` (spectral truncation, so the
    /// coarser field is still exactly divergence-free and free of aliasing).
    pub fn velocity(&mut self, r: usize) -> (Vec<f64>, Vec<f64>) {
        let rs = self.settings.resolution;
        let i = Complex64::new(0.0, 1.0);
        let mut u = vec![Complex64::default(); r * r];
        let mut v = vec![Complex64::default(); r * r];
        let scale = (r * r) as f64 / (rs * rs) as f64;
        let lim = (r / 2) as f64;
        for a in 0..r {
            for b in 0..r {
                let (my, mx) = (wavenumber(a, r), wavenumber(b, r));
                if (a == 0 && b == 0) || my.abs() >= lim || mx.abs() >= lim {
                    continue;
                }
                let idx = |m: f64| {
                    if m < 0.0 {
                        (m + rs as f64) as usize
                    } else {
                        m as usize
                    }
                };
                let p = idx(my) * rs + idx(mx);
                let psi = self.omega[p] / self.k2[p] * scale;
                u[a * r + b] = i * self.ky[p] * psi;
                v[a * r + b] = -i * self.kx[p] * psi;
            }
        }
        let fft = match &mut self.out_fft {
            Some(f) if f.r == r => f,
            slot => slot.insert(Fft2::new(r)),
        };
        fft.inverse(&mut u);
        fft.inverse(&mut v);
        (
            u.iter().map(|c| c.re).collect(),
            v.iter().map(|c| c.re).collect(),
        )
    }

    /// Energy `½·mean(|u|²)` and enstrophy `½·mean(ω²)` (Parseval, from the spectrum).
    pub fn invariants(&self) -> (f64, f64) {
        let n2 = (self.omega.len() as f64).powi(2);
        let (mut e, mut z) = (0.0, 0.0);
        for p in 1..self.omega.len() {
            let w2 = self.omega[p].norm_sqr();
            e += w2 / self.k2[p];
            z += w2;
        }
        (0.5 * e / n2, 0.5 * z / n2)
    }
}

/// The initial vorticity of sample `sample` under `seed`: white noise from the Philox stream
/// (docs/random.md, “Streams”) filtered to amplitudes `(|k|² + τ²)^{−α/2}` (τ = 3, α = 2.5), zero
/// mean, scaled to unit RMS.
pub fn initial_vorticity(r: usize, seed: u64, sample: u32) -> Vec<f64> {
    let (tau, alpha) = (3.0f64, 2.5f64);
    let mut white = vec![0.0f32; r * r];
    let key = NoiseKey {
        seed,
        purpose: Purpose::FlowInit,
        step: 0,
    };
    fill_normals(key, NoiseRow { sample, member: 0 }, 0, &mut white);
    let mut a: Vec<Complex64> = white
        .iter()
        .map(|&v| Complex64::new(f64::from(v), 0.0))
        .collect();
    let mut fft = Fft2::new(r);
    fft.forward(&mut a);
    for i in 0..r {
        for j in 0..r {
            let (my, mx) = (wavenumber(i, r), wavenumber(j, r));
            let c = if i == 0 && j == 0 {
                0.0
            } else {
                (mx * mx + my * my + tau * tau).powf(-alpha / 2.0)
            };
            a[i * r + j] *= c;
        }
    }
    fft.inverse(&mut a);
    let rms = (a.iter().map(|c| c.re * c.re).sum::<f64>() / (r * r) as f64).sqrt();
    a.iter()
        .map(|c| c.re / rms.max(f64::MIN_POSITIVE))
        .collect()
}
