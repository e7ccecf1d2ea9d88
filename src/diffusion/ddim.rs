//! DDIM sampling for Dynamical Diffusion (docs/process.md, “Sampling”; paper Alg. 2): the
//! timesteps, the per-step coefficients and the fused step. The loop over steps lives in
//! [`crate::pipelines::sample`].
//!
//! One step from `t` to `p` (for the last step `ᾱ_p = γ̄_p = ` the final value, 1 by default):
//! `y = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t`; `x̂_0 = InvDyn_{γ̄_t}([Dyn_{γ̄_t}(history)^P, y])^{future}`;
//! `ε_w = InvDyn_{γ̄_t}(ε̂)`; `x_p = √ᾱ_p·Dyn_{γ̄_p}([history, x̂_0])^{future}
//! + √(1−ᾱ_p−σ²)·Dyn_{γ̄_p}(ε_w) + σ·Dyn_{γ̄_p}(z)` with
//! `σ = ddim_eta·√((1−ᾱ_p)/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ_p)`. A network that predicts the velocity gives
//! `ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·v̂` first (docs/process.md, “What the network predicts”).

use super::schedule::{gamma_bar, Prediction, Schedule, SchedulerConfig};
use super::{seq_dims, untracked};
use crate::backend::{row_words, DdimCoef, DdimStep, Device, DynCoef, FrameScope, ProcessGeom};
use crate::error::{Error, Result};
use crate::rng::{NoiseKey, NoiseRow};
use crate::tensor::Tensor;

/// The sampling timesteps `τ_K, …, τ_1` (descending) of diffusers' `leading` spacing:
/// `τ_k = (k−1)·⌊T/K⌋ + steps_offset`.
pub fn timesteps(c: &SchedulerConfig, steps: usize) -> Result<Vec<usize>> {
    let t = c.num_train_timesteps;
    if steps == 0 || steps > t || (steps - 1) * (t / steps) + c.steps_offset >= t {
        let max = (1..=t)
            .rev()
            .find(|&k| (k - 1) * (t / k) + c.steps_offset < t)
            .unwrap_or(0);
        return Err(Error::Invalid(format!(
            "--steps: expected 1 to {max} (the model has {t} training timesteps), found {steps}"
        )));
    }
    Ok((0..steps)
        .rev()
        .map(|k| k * (t / steps) + c.steps_offset)
        .collect())
}

/// The schedule values of one step (f64), from which [`DdimCoef`] is rounded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepValues {
    pub ab_t: f64,
    pub gb_t: f64,
    pub ab_p: f64,
    pub gb_p: f64,
    pub sigma: f64,
    /// What the network predicts.
    pub prediction: Prediction,
}

impl StepValues {
    /// The step from `t` to `prev` (`None`: the last step, to the final `ᾱ`).
    pub fn new(
        schedule: &Schedule,
        dyn_eta: f64,
        ddim_eta: f64,
        t: usize,
        prev: Option<usize>,
    ) -> StepValues {
        let ab_t = schedule.alphas_cumprod[t];
        let ab_p = prev.map_or(schedule.final_alpha_cumprod, |p| schedule.alphas_cumprod[p]);
        let sigma = ddim_eta * ((1.0 - ab_p) / (1.0 - ab_t)).sqrt() * (1.0 - ab_t / ab_p).sqrt();
        StepValues {
            ab_t,
            gb_t: gamma_bar(dyn_eta, ab_t),
            ab_p,
            gb_p: gamma_bar(dyn_eta, ab_p),
            sigma,
            prediction: schedule.prediction,
        }
    }

    /// The coefficients the fused step uses, rounded to f32.
    pub fn coef(&self) -> DdimCoef {
        let (eps_from_xt, eps_from_out) = self.prediction.epsilon(self.ab_t);
        DdimCoef {
            dyn_t: DynCoef::new(self.gb_t),
            dyn_p: DynCoef::new(self.gb_p),
            sqrt_ab_t: self.ab_t.sqrt() as f32,
            sqrt_1mab_t: (1.0 - self.ab_t).sqrt() as f32,
            sqrt_ab_p: self.ab_p.sqrt() as f32,
            eps_weight: (1.0 - self.ab_p - self.sigma * self.sigma).max(0.0).sqrt() as f32,
            sigma: self.sigma as f32,
            eps_from_xt: eps_from_xt as f32,
            eps_from_out: eps_from_out as f32,
        }
    }
}

impl Tensor {
    /// One fused DDIM step on the sampler state `self (B, (P+1+D)·…)` — clean history, then
    /// `x_t` of the `D` diffused frames (`S`, or with `diffuse_history` all `P+1+S`) — with the
    /// network's prediction `eps_hat (B, D·…)` and, when `σ > 0`, fresh noise `z` shaped like
    /// `eps_hat`. Returns the next state: the history, then `x_p` (after the last step, `x̂_0`).
    pub fn ddim_step(
        &self,
        eps_hat: &Tensor,
        z: Option<&Tensor>,
        scope: FrameScope,
        c: &DdimCoef,
    ) -> Result<Tensor> {
        let g = self.step_geom(eps_hat, z, scope)?;
        if z.is_none() && c.sigma != 0.0 {
            return Err(Error::shape("ddim_step", "σ > 0 needs the noise z"));
        }
        let next = self
            .storage()
            .ddim_step(eps_hat.storage(), z.map(|z| z.storage()), &g, c)?;
        Tensor::from_storage(next, self.shape())
    }

    /// [`Tensor::ddim_step`] with the step's values in `step` (the [`DdimStep::words`] of its
    /// coefficients and noise key, see [`ddim_step_tensor`]) and, when `σ > 0`, the fresh noise
    /// drawn from that key for the batch's noise rows `rows` (see [`rows_tensor`];
    /// docs/random.md): the same values as `z = Tensor::randn(key, rows, eps_hat's shape)` — on
    /// the GPU drawn inside the step's kernel. Both are tensors so that a step captured as a CUDA
    /// graph reads each replay's values.
    pub fn ddim_step_drawn(
        &self,
        eps_hat: &Tensor,
        step: &Tensor,
        rows: &Tensor,
        scope: FrameScope,
    ) -> Result<Tensor> {
        let g = self.step_geom(eps_hat, None, scope)?;
        if rows.shape() != [2 * g.batch] || step.shape() != [DdimStep::WORDS] {
            return Err(Error::shape(
                "ddim_step",
                format!(
                    "step values {:?} and noise rows {:?} for a batch of {}; expected [{}] and [{}]",
                    step.shape(),
                    rows.shape(),
                    g.batch,
                    DdimStep::WORDS,
                    2 * g.batch
                ),
            ));
        }
        let next = self.storage().ddim_step_drawn(
            eps_hat.storage(),
            step.storage(),
            rows.storage(),
            &g,
        )?;
        Tensor::from_storage(next, self.shape())
    }

    /// The step's geometry, with `eps_hat` (and `z`) checked against the state.
    fn step_geom(
        &self,
        eps_hat: &Tensor,
        z: Option<&Tensor>,
        scope: FrameScope,
    ) -> Result<ProcessGeom> {
        untracked(&[self, eps_hat], "ddim_step")?;
        let (batch, elems) = seq_dims(self, scope.state_frames(), "ddim_step")?;
        for x in std::iter::once(eps_hat).chain(z) {
            if seq_dims(x, scope.diffused(), "ddim_step")? != (batch, elems) {
                return Err(Error::shape(
                    "ddim_step",
                    format!(
                        "{:?} does not match the diffused frames of {:?}",
                        x.shape(),
                        self.shape()
                    ),
                ));
            }
        }
        Ok(scope.geom(batch, elems))
    }
}

/// The values of a drawn DDIM step with coefficients `c` and noise key `key`, as the tensor
/// [`Tensor::ddim_step_drawn`] reads (`[DdimStep::WORDS]`, `f32` bit patterns) on `device`.
pub fn ddim_step_tensor(c: &DdimCoef, key: NoiseKey, device: Device) -> Result<Tensor> {
    let words = DdimStep { coef: *c, key }.words();
    Tensor::from_vec(words, &[DdimStep::WORDS], device)
}

/// The batch's noise rows as the tensor [`Tensor::ddim_step_drawn`] reads (`[2·rows]`, `f32` bit
/// patterns: the samples, then the members) on `device`.
pub fn rows_tensor(rows: &[NoiseRow], device: Device) -> Result<Tensor> {
    Tensor::from_vec(row_words(rows), &[2 * rows.len()], device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_timesteps_match_the_spec() {
        let c = SchedulerConfig::default();
        let ts = timesteps(&c, 50).unwrap();
        assert_eq!(ts.len(), 50);
        assert_eq!((ts[0], ts[1], ts[48], ts[49]), (981, 961, 21, 1));
        assert_eq!(
            timesteps(&c, 10).unwrap(),
            [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
        );
        assert_eq!(timesteps(&c, 1).unwrap(), [1]);
        assert!(timesteps(&c, 0).is_err());
        assert!(timesteps(&c, 1000).is_err(), "999 + 1 is past T − 1");
        assert_eq!(timesteps(&c, 999).unwrap()[0], 999);
    }

    #[test]
    fn last_step_lands_on_x0() {
        let s = Schedule::new(&SchedulerConfig::default());
        for ddim_eta in [0.0, 1.0] {
            let c = StepValues::new(&s, 0.5, ddim_eta, 1, None).coef();
            assert_eq!((c.sqrt_ab_p, c.eps_weight, c.sigma), (1.0, 0.0, 0.0));
            assert_eq!((c.dyn_p.sqrt_g, c.dyn_p.sqrt_1mg), (1.0, 0.0));
        }
        // σ of DDPM (ddim_eta = 1) is the posterior standard deviation.
        let v = StepValues::new(&s, 0.5, 1.0, 501, Some(481));
        let beta_tilde = (1.0 - v.ab_p) / (1.0 - v.ab_t) * (1.0 - v.ab_t / v.ab_p);
        assert!((v.sigma - beta_tilde.sqrt()).abs() < 1e-15);
    }
}
