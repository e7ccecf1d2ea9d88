//! The Dynamical Diffusion forward process (docs/process.md, “Forward process”; paper Alg. 1),
//! for a training batch:
//!
//! `ε̃ = Dyn_{γ̄_t}(ε)` over the future frames, `D = Dyn_{γ̄_t}(x_0)` over the whole sequence,
//! `x_t^s = √ᾱ_t·D^s + √(1−ᾱ_t)·ε̃^s`; the network sees the clean history and `x_t`, and learns
//! to predict `ε̃` (or, with `prediction_type = v_prediction`, `v = √ᾱ_t·ε̃ − √(1−ᾱ_t)·D`). With
//! `dyn_eta = 0` (`γ̄ ≡ 1`) this is the standard `√ᾱ·x + √(1−ᾱ)·ε`.

use super::schedule::{gamma_bar, Schedule};
use super::{seq_dims, untracked};
use crate::backend::{DynCoef, FrameScope, QSampleCoef};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The forward-process coefficients at timestep `t` (docs/schedules.md; docs/process.md,
/// “Forward process”).
pub fn q_sample_coef(schedule: &Schedule, dyn_eta: f64, t: usize) -> QSampleCoef {
    let ab = schedule.alphas_cumprod[t];
    let (target_eps, target_d) = schedule.prediction.target(ab);
    QSampleCoef {
        dynamics: DynCoef::new(gamma_bar(dyn_eta, ab)),
        sqrt_ab: ab.sqrt() as f32,
        sqrt_1mab: (1.0 - ab).sqrt() as f32,
        target_eps: target_eps as f32,
        target_d: target_d as f32,
    }
}

impl Tensor {
    /// The forward process on clean sequences `x0 (B, (P+1+S)·…)` with i.i.d. standard noise
    /// `eps (B, D·…)` of the `D` diffused frames (`S`, or with `diffuse_history` all `P+1+S`;
    /// docs/process.md, “Diffusing the history”) at timestep `t[b]` per sequence, in one pass:
    /// returns the network input `(B, (P+1+D)·…)` — the clean history, then `x_t` — and the
    /// target `ε̃` or `v` (the schedule's prediction; shaped like `eps`).
    pub fn q_sample(
        x0: &Tensor,
        eps: &Tensor,
        scope: FrameScope,
        schedule: &Schedule,
        dyn_eta: f64,
        t: &[usize],
    ) -> Result<(Tensor, Tensor)> {
        untracked(&[x0, eps], "q_sample")?;
        let (batch, elems) = seq_dims(x0, scope.frames(), "q_sample")?;
        let g = scope.geom(batch, elems);
        if seq_dims(eps, g.diffused(), "q_sample")? != (batch, elems) {
            return Err(Error::shape(
                "q_sample",
                format!(
                    "noise {:?} does not match the {} diffused frames of {:?}",
                    eps.shape(),
                    g.diffused(),
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
        let (input, target) = x0.storage().q_sample(eps.storage(), &g, &coefs)?;
        // the input keeps the layout of x0, with the frame axis (or frame-major channels) longer
        let mut shape = x0.shape().to_vec();
        match shape.get_mut(1) {
            Some(d) if *d % g.frames() == 0 => *d = *d / g.frames() * g.state_frames(),
            _ => shape = vec![batch, g.state_frames() * elems],
        }
        Ok((
            Tensor::from_storage(input, &shape)?,
            Tensor::from_storage(target, eps.shape())?,
        ))
    }
}
