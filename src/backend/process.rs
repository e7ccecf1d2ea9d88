//! The process's coefficients as the operations take them (docs/process.md): the dynamics
//! `Dyn_γ`, what the network predicts, the forward process's and a DDIM step's coefficients, and
//! the 4-byte words a captured sampler step reads its step values and noise rows from.

use crate::error::{Error, Result};
use crate::rng::{NoiseKey, NoiseRow};

/// The two coefficients of `Dyn_γ` (docs/process.md, “Dynamics”): `√γ` and `√(1 − γ)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DynCoef {
    pub sqrt_g: f32,
    pub sqrt_1mg: f32,
}

impl DynCoef {
    /// The coefficients of `Dyn_γ`, rounded to f32 from f64.
    pub fn new(gamma: f64) -> DynCoef {
        DynCoef {
            sqrt_g: gamma.sqrt() as f32,
            sqrt_1mg: (1.0 - gamma).max(0.0).sqrt() as f32,
        }
    }
}

/// What the network predicts (the diffusers scheduler's `prediction_type`; docs/process.md,
/// “What the network predicts”): the noise `ε̃` (`epsilon`, the papers' parameterisation), or the
/// velocity `v = √ᾱ_t·ε̃ − √(1−ᾱ_t)·D` (`v_prediction`, Salimans & Ho 2022), from which
/// `ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·v̂` and `D̂ = √ᾱ_t·x_t − √(1−ᾱ_t)·v̂`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    V,
}

impl Prediction {
    /// The diffusers name: `epsilon` or `v_prediction`.
    pub fn name(self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::V => "v_prediction",
        }
    }
    pub fn parse(s: &str) -> Option<Prediction> {
        [Prediction::Epsilon, Prediction::V]
            .into_iter()
            .find(|p| p.name() == s)
    }
    /// `(a, b)` with the training target `a·ε̃ + b·D` at `ᾱ_t = ab`.
    pub fn target(self, ab: f64) -> (f64, f64) {
        match self {
            Prediction::Epsilon => (1.0, 0.0),
            Prediction::V => (ab.sqrt(), -(1.0 - ab).sqrt()),
        }
    }
    /// `(a, b)` with `ε̂ = a·x_t + b·output` at `ᾱ_t = ab`.
    pub fn epsilon(self, ab: f64) -> (f64, f64) {
        match self {
            Prediction::Epsilon => (0.0, 1.0),
            Prediction::V => ((1.0 - ab).sqrt(), ab.sqrt()),
        }
    }
}

/// Per-sequence coefficients of the forward process (docs/process.md, “Forward process”) at that
/// sequence's `t`:
/// `Dyn_{γ̄_t}` and `√ᾱ_t`, `√(1 − ᾱ_t)`, and the training target `target_eps·ε̃ + target_d·D`
/// (`1, 0`: the noise; `√ᾱ_t, −√(1−ᾱ_t)`: the velocity `v`; docs/process.md, “What the network
/// predicts”).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QSampleCoef {
    pub dynamics: DynCoef,
    pub sqrt_ab: f32,
    pub sqrt_1mab: f32,
    pub target_eps: f32,
    pub target_d: f32,
}

/// Coefficients of one DDIM step from `t` to `p` (docs/process.md, “One step”), shared by the
/// whole batch:
/// the dynamics at `γ̄_t` and `γ̄_p`, `√ᾱ_t`, `√(1 − ᾱ_t)`, `√ᾱ_p`, the weight
/// `√(1 − ᾱ_p − σ²)` of the predicted noise, `σ`, and how the noise estimate follows from the
/// network's output: `ε̂ = eps_from_xt·x_t + eps_from_out·output` (`0, 1` for a noise
/// prediction; `√(1−ᾱ_t), √ᾱ_t` for a velocity; docs/process.md, “What the network predicts”).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdimCoef {
    pub dyn_t: DynCoef,
    pub dyn_p: DynCoef,
    pub sqrt_ab_t: f32,
    pub sqrt_1mab_t: f32,
    pub sqrt_ab_p: f32,
    pub eps_weight: f32,
    pub sigma: f32,
    pub eps_from_xt: f32,
    pub eps_from_out: f32,
}

/// The values of one DDIM step whose fresh noise is drawn from `key`, as the device reads them
/// ([`BackendStorage::ddim_step_drawn`](super::BackendStorage::ddim_step_drawn)):
/// [`DdimStep::WORDS`] 4-byte words, kept in a tensor (as `f32` bit patterns) so that a sampler step captured as a CUDA graph reads every replay's values
/// where the graph looks for them (docs/devices.md, “CUDA graphs”). Layout: the eleven
/// coefficients of [`DdimCoef`] — `√γ̄_t, √(1−γ̄_t), √γ̄_p, √(1−γ̄_p), √ᾱ_t, √(1−ᾱ_t), √ᾱ_p,
/// √(1−ᾱ_p−σ²), σ`, `eps_from_xt`, `eps_from_out` — then the key: seed (low and high 32 bits),
/// purpose, step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdimStep {
    pub coef: DdimCoef,
    pub key: NoiseKey,
}

impl DdimStep {
    /// The number of words.
    pub const WORDS: usize = 15;

    /// The words, as `f32` bit patterns.
    pub fn words(&self) -> Vec<f32> {
        let c = &self.coef;
        let k = &self.key;
        let mut w = vec![
            c.dyn_t.sqrt_g,
            c.dyn_t.sqrt_1mg,
            c.dyn_p.sqrt_g,
            c.dyn_p.sqrt_1mg,
            c.sqrt_ab_t,
            c.sqrt_1mab_t,
            c.sqrt_ab_p,
            c.eps_weight,
            c.sigma,
            c.eps_from_xt,
            c.eps_from_out,
        ];
        w.extend(
            [
                k.seed as u32,
                (k.seed >> 32) as u32,
                k.purpose as u32,
                k.step,
            ]
            .map(f32::from_bits),
        );
        w
    }

    /// The step that [`DdimStep::words`] wrote; an error names what is malformed.
    pub fn from_words(w: &[f32]) -> Result<DdimStep> {
        if w.len() != DdimStep::WORDS {
            return Err(Error::shape(
                "ddim_step",
                format!(
                    "the step's values hold {} words; expected {}",
                    w.len(),
                    DdimStep::WORDS
                ),
            ));
        }
        let u = |i: usize| w[i].to_bits();
        let purpose = crate::rng::Purpose::from_u32(u(13)).ok_or_else(|| {
            Error::shape("ddim_step", format!("noise purpose {} is unknown", u(13)))
        })?;
        Ok(DdimStep {
            coef: DdimCoef {
                dyn_t: DynCoef {
                    sqrt_g: w[0],
                    sqrt_1mg: w[1],
                },
                dyn_p: DynCoef {
                    sqrt_g: w[2],
                    sqrt_1mg: w[3],
                },
                sqrt_ab_t: w[4],
                sqrt_1mab_t: w[5],
                sqrt_ab_p: w[6],
                eps_weight: w[7],
                sigma: w[8],
                eps_from_xt: w[9],
                eps_from_out: w[10],
            },
            key: NoiseKey {
                seed: u64::from(u(11)) | (u64::from(u(12)) << 32),
                purpose,
                step: u(14),
            },
        })
    }
}

/// Noise rows as 4-byte words (`f32` bit patterns), as the device reads them: every row's sample,
/// then every row's member.
pub fn row_words(rows: &[NoiseRow]) -> Vec<f32> {
    let samples = rows.iter().map(|r| f32::from_bits(r.sample));
    samples
        .chain(rows.iter().map(|r| f32::from_bits(r.member)))
        .collect()
}

/// The rows that [`row_words`] wrote.
pub fn rows_from_words(w: &[f32]) -> Vec<NoiseRow> {
    let (samples, members) = w.split_at(w.len() / 2);
    samples
        .iter()
        .zip(members)
        .map(|(s, m)| NoiseRow {
            sample: s.to_bits(),
            member: m.to_bits(),
        })
        .collect()
}
