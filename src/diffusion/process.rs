//! The Dynamical Diffusion forward process (docs/process.md, “Forward process”; paper Alg. 1),
//! for a training batch:
//!
//! `ε̃ = Dyn_{γ̄_t}(ε)` over the future frames, `D = Dyn_{γ̄_t}(x_0)` over the whole sequence,
//! `x_t^s = √ᾱ_t·D^s + √(1−ᾱ_t)·ε̃^s`; the network sees the clean history and `x_t`, and learns
//! to predict `ε̃`. With `dyn_eta = 0` (`γ̄ ≡ 1`) this is the standard `√ᾱ·x + √(1−ᾱ)·ε`.

use super::schedule::{gamma_bar, Schedule};
use super::{seq_dims, untracked};
use crate::backend::{DynCoef, ProcessGeom, QSampleCoef};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The forward-process coefficients at timestep `t` (docs/schedules.md; docs/process.md,
/// “Forward process”).
pub fn q_sample_coef(schedule: &Schedule, dyn_eta: f64, t: usize) -> QSampleCoef {
    let ab = schedule.alphas_cumprod[t];
    QSampleCoef {
        dynamics: DynCoef::new(gamma_bar(dyn_eta, ab)),
        sqrt_ab: ab.sqrt() as f32,
        sqrt_1mab: (1.0 - ab).sqrt() as f32,
    }
}

impl Tensor {
    /// The forward process on clean sequences `x0 (B, (P+1+S)·…)` with i.i.d. standard noise
    /// `eps (B, S·…)` at timestep `t[b]` per sequence, in one pass: returns the network input
    /// (shaped like `x0`) and the target `ε̃` (shaped like `eps`).
    pub fn q_sample(
        x0: &Tensor,
        eps: &Tensor,
        history: usize,
        future: usize,
        schedule: &Schedule,
        dyn_eta: f64,
        t: &[usize],
    ) -> Result<(Tensor, Tensor)> {
        untracked(&[x0, eps], "q_sample")?;
        let (batch, elems) = seq_dims(x0, history + future, "q_sample")?;
        if seq_dims(eps, future, "q_sample")? != (batch, elems) {
            return Err(Error::shape(
                "q_sample",
                format!(
                    "noise {:?} does not match the future of {:?}",
                    eps.shape(),
                    x0.shape()
                ),
            ));
        }
        if t.len() != batch || t.iter().any(|&t| t >= schedule.len()) {
            return Err(Error::shape(
                "q_sample",
                format!(
                    "expected {batch} timesteps below {}, found {t:?}",
                    schedule.len()
                ),
            ));
        }
        let coefs: Vec<QSampleCoef> = t
            .iter()
            .map(|&t| q_sample_coef(schedule, dyn_eta, t))
            .collect();
        let g = ProcessGeom {
            batch,
            history,
            future,
            elems,
        };
        let (input, target) = x0.storage().q_sample(eps.storage(), &g, &coefs)?;
        Ok((
            Tensor::from_storage(input, x0.shape())?,
            Tensor::from_storage(target, eps.shape())?,
        ))
    }
}
