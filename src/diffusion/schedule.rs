//! Noise schedules (docs/schedules.md) and the diffusers `DDIMScheduler` configuration that names
//! them (docs/model-folder.md, “Scheduler configuration”).
//!
//! `ᾱ_t = ∏_{i≤t}(1 − β_i)` for `t = 0 … T−1`, with `β` from
//! - `squaredcos_cap_v2`: `f(u) = cos²(((u/T + 0.008)/1.008)·π/2)`, `β_t = min(1 − f(t+1)/f(t), 0.999)`;
//! - `linear`: `β` evenly spaced from `beta_start` to `beta_end`;
//! - `scaled_linear`: `√β` evenly spaced from `√beta_start` to `√beta_end`, squared.
//!
//! and the dynamics schedule `γ̄_t = η·ᾱ_t + (1 − η)`. Everything is computed in f64.

use crate::error::{Error, Result};
use serde_json::{json, Map, Value};

/// The `beta_schedule` of a diffusers scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    SquaredCosCapV2,
    Linear,
    ScaledLinear,
}

impl BetaSchedule {
    pub fn name(self) -> &'static str {
        match self {
            BetaSchedule::SquaredCosCapV2 => "squaredcos_cap_v2",
            BetaSchedule::Linear => "linear",
            BetaSchedule::ScaledLinear => "scaled_linear",
        }
    }
    pub fn parse(s: &str) -> Option<BetaSchedule> {
        [
            BetaSchedule::SquaredCosCapV2,
            BetaSchedule::Linear,
            BetaSchedule::ScaledLinear,
        ]
        .into_iter()
        .find(|b| b.name() == s)
    }
}

/// What the network predicts, defined with the process's coefficients it selects
/// ([`crate::backend::Prediction`]).
pub use crate::backend::Prediction;

/// The scheduler settings dydiff uses (`scheduler/scheduler_config.json`; docs/model-folder.md,
/// “Scheduler configuration”).
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_schedule: BetaSchedule,
    pub beta_start: f64,
    pub beta_end: f64,
    /// Added to every sampling timestep (`τ_k = (k−1)·⌊T/K⌋ + steps_offset`).
    pub steps_offset: usize,
    /// Whether the last step goes to `ᾱ = 1` (else to `ᾱ_0`).
    pub set_alpha_to_one: bool,
    /// What the network predicts.
    pub prediction: Prediction,
}

impl Default for SchedulerConfig {
    /// What `dydiff train` writes: `T = 1000`, cosine schedule, `leading` spacing, offset 1,
    /// `ᾱ → 1`.
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            beta_schedule: BetaSchedule::SquaredCosCapV2,
            beta_start: 1e-4,
            beta_end: 0.02,
            steps_offset: 1,
            set_alpha_to_one: true,
            prediction: Prediction::Epsilon,
        }
    }
}

fn bad(key: &str, v: &Value, what: &str) -> Error {
    Error::Config(format!("scheduler key {key} = {v}: {what}"))
}

/// The most training timesteps a scheduler may have: every timestep must be exact as the
/// float32 the network's timestep embedding receives.
pub const MAX_TIMESTEPS: usize = 1 << 24;

impl SchedulerConfig {
    /// Reads a diffusers `DDIMScheduler` config. Missing keys take diffusers' defaults; keys
    /// whose value would change the sampler from the one of docs/process.md, “Sampling”
    /// (`clip_sample: true`, thresholding, prediction types other than `epsilon` and
    /// `v_prediction`, other spacings) are refused by name.
    pub fn from_json(v: &Value) -> Result<SchedulerConfig> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Config("scheduler config is not a JSON object".into()))?;
        if obj.is_empty() {
            return Err(Error::Config(
                "scheduler config is an empty object {}; expected a DDIMScheduler configuration (num_train_timesteps, beta_schedule, clip_sample, …)".into(),
            ));
        }
        let num = |key: &str, default: f64| -> Result<f64> {
            match obj.get(key) {
                None => Ok(default),
                Some(x) => x.as_f64().ok_or_else(|| bad(key, x, "expected a number")),
            }
        };
        let boolean = |key: &str, default: bool| -> Result<bool> {
            match obj.get(key) {
                None => Ok(default),
                Some(x) => x
                    .as_bool()
                    .ok_or_else(|| bad(key, x, "expected true or false")),
            }
        };
        let string = |key: &str, default: &'static str| -> Result<String> {
            match obj.get(key) {
                None => Ok(default.to_string()),
                Some(x) => x
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(key, x, "expected a string")),
            }
        };
        // Timesteps reach the network as float32, exact only up to 2^24.
        let count = |key: &str, default: f64, min: f64| -> Result<usize> {
            let x = num(key, default)?;
            if x.fract() != 0.0 || x < min || x > MAX_TIMESTEPS as f64 {
                return Err(bad(
                    key,
                    &json!(x),
                    &format!("expected an integer from {min} to {MAX_TIMESTEPS}"),
                ));
            }
            Ok(x as usize)
        };
        for (key, value) in obj {
            let known = matches!(
                key.as_str(),
                "_class_name"
                    | "_diffusers_version"
                    | "num_train_timesteps"
                    | "beta_start"
                    | "beta_end"
                    | "beta_schedule"
                    | "trained_betas"
                    | "clip_sample"
                    | "set_alpha_to_one"
                    | "steps_offset"
                    | "prediction_type"
                    | "thresholding"
                    | "dynamic_thresholding_ratio"
                    | "clip_sample_range"
                    | "sample_max_value"
                    | "timestep_spacing"
                    | "rescale_betas_zero_snr"
                    // a DDPMScheduler config's (its own sampler's variance; DDIM has none)
                    | "variance_type"
            );
            if !known {
                return Err(bad(key, value, "unknown key"));
            }
        }
        let schedule_name = string("beta_schedule", "linear")?;
        let beta_schedule = BetaSchedule::parse(&schedule_name).ok_or_else(|| {
            bad(
                "beta_schedule",
                &json!(schedule_name),
                "expected squaredcos_cap_v2, linear or scaled_linear",
            )
        })?;
        if !obj.get("trained_betas").is_none_or(Value::is_null) {
            return Err(bad(
                "trained_betas",
                &obj["trained_betas"],
                "only null is supported",
            ));
        }
        if boolean("clip_sample", true)? {
            return Err(Error::Config("scheduler key clip_sample = true: not supported (the sampler does not clip, see docs/process.md; set it to false)".into()));
        }
        for key in ["thresholding", "rescale_betas_zero_snr"] {
            if boolean(key, false)? {
                return Err(bad(key, &obj[key], "only false is supported"));
            }
        }
        let prediction_name = string("prediction_type", "epsilon")?;
        let prediction = Prediction::parse(&prediction_name).ok_or_else(|| {
            bad(
                "prediction_type",
                &json!(prediction_name),
                "expected epsilon or v_prediction",
            )
        })?;
        let spacing = string("timestep_spacing", "leading")?;
        if spacing != "leading" {
            return Err(bad(
                "timestep_spacing",
                &json!(spacing),
                "only leading is supported (see docs/schedules.md)",
            ));
        }
        let c = SchedulerConfig {
            num_train_timesteps: count("num_train_timesteps", 1000.0, 2.0)?,
            beta_schedule,
            beta_start: num("beta_start", 1e-4)?,
            beta_end: num("beta_end", 0.02)?,
            steps_offset: count("steps_offset", 0.0, 0.0)?,
            set_alpha_to_one: boolean("set_alpha_to_one", true)?,
            prediction,
        };
        if beta_schedule != BetaSchedule::SquaredCosCapV2
            && !(c.beta_start > 0.0 && c.beta_start <= c.beta_end && c.beta_end < 1.0)
        {
            return Err(Error::Config(format!(
                "scheduler keys beta_start = {}, beta_end = {}: expected 0 < beta_start ≤ beta_end < 1",
                c.beta_start, c.beta_end
            )));
        }
        if c.steps_offset >= c.num_train_timesteps {
            return Err(bad(
                "steps_offset",
                &json!(c.steps_offset),
                "must be below num_train_timesteps",
            ));
        }
        Ok(c)
    }

    /// The config as diffusers' `DDIMScheduler.save_config` writes it.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("_class_name".into(), json!("DDIMScheduler"));
        m.insert("_diffusers_version".into(), json!("0.30.0"));
        m.insert(
            "num_train_timesteps".into(),
            json!(self.num_train_timesteps),
        );
        m.insert("beta_start".into(), json!(self.beta_start));
        m.insert("beta_end".into(), json!(self.beta_end));
        m.insert("beta_schedule".into(), json!(self.beta_schedule.name()));
        m.insert("trained_betas".into(), Value::Null);
        m.insert("clip_sample".into(), json!(false));
        m.insert("set_alpha_to_one".into(), json!(self.set_alpha_to_one));
        m.insert("steps_offset".into(), json!(self.steps_offset));
        m.insert("prediction_type".into(), json!(self.prediction.name()));
        m.insert("thresholding".into(), json!(false));
        m.insert("dynamic_thresholding_ratio".into(), json!(0.995));
        m.insert("clip_sample_range".into(), json!(1.0));
        m.insert("sample_max_value".into(), json!(1.0));
        m.insert("timestep_spacing".into(), json!("leading"));
        m.insert("rescale_betas_zero_snr".into(), json!(false));
        Value::Object(m)
    }
}

/// `ᾱ_t` for `t = 0 … T−1`, and the value the last sampling step goes to.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub alphas_cumprod: Vec<f64>,
    /// `ᾱ` after the last step: 1 with `set_alpha_to_one`, else `ᾱ_0`.
    pub final_alpha_cumprod: f64,
    /// What the network predicts.
    pub prediction: Prediction,
}

impl Schedule {
    pub fn new(c: &SchedulerConfig) -> Schedule {
        let t = c.num_train_timesteps;
        let lin = |a: f64, b: f64, i: usize| {
            if t == 1 {
                a
            } else {
                a + (b - a) * i as f64 / (t - 1) as f64
            }
        };
        let betas: Vec<f64> = (0..t)
            .map(|i| match c.beta_schedule {
                BetaSchedule::SquaredCosCapV2 => {
                    let f = |u: f64| {
                        ((u / t as f64 + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                            .cos()
                            .powi(2)
                    };
                    (1.0 - f((i + 1) as f64) / f(i as f64)).min(0.999)
                }
                BetaSchedule::Linear => lin(c.beta_start, c.beta_end, i),
                BetaSchedule::ScaledLinear => {
                    lin(c.beta_start.sqrt(), c.beta_end.sqrt(), i).powi(2)
                }
            })
            .collect();
        let mut acc = 1.0;
        let alphas_cumprod: Vec<f64> = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        let final_alpha_cumprod = if c.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Schedule {
            alphas_cumprod,
            final_alpha_cumprod,
            prediction: c.prediction,
        }
    }

    /// `T`.
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }
    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }
}

/// The dynamics schedule `γ̄ = η·ᾱ + (1 − η)` (docs/schedules.md, “Dynamics schedule”).
pub fn gamma_bar(dyn_eta: f64, alpha_bar: f64) -> f64 {
    dyn_eta * alpha_bar + (1.0 - dyn_eta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    /// The check values of docs/schedules.md, “Cosine schedule”.
    #[test]
    fn cosine_schedule_matches_the_spec() {
        let s = Schedule::new(&SchedulerConfig::default());
        let ab = &s.alphas_cumprod;
        assert_eq!(ab.len(), 1000);
        // The documented ᾱ_0 is diffusers' float32 value; f64 gives 0.99995872.
        assert!(close(ab[0], 0.999_958_69, 1e-7), "{}", ab[0]);
        assert!(close(ab[500], 0.49228, 1e-4), "{}", ab[500]);
        assert!(close(ab[981], 7.867e-4, 1e-3), "{}", ab[981]);
        assert!(close(ab[999], 2.43e-9, 5e-3), "{}", ab[999]);
        assert_eq!(s.final_alpha_cumprod, 1.0);
    }

    /// The products for diffusers' `linear` and `scaled_linear` betas, computed with numpy in
    /// float64 (`np.cumprod(1 - np.linspace(…)…)`).
    #[test]
    fn linear_schedules_match_diffusers() {
        let lin = Schedule::new(&SchedulerConfig {
            beta_schedule: BetaSchedule::Linear,
            set_alpha_to_one: false,
            ..SchedulerConfig::default()
        });
        // β_0 = 1e-4, so ᾱ_0 = 0.9999; ᾱ_999 = ∏(1 − β) ≈ 4.0358298e-5.
        assert!(close(lin.alphas_cumprod[0], 0.9999, 1e-12));
        assert!(
            close(lin.alphas_cumprod[999], 4.035_829_8e-5, 1e-6),
            "{}",
            lin.alphas_cumprod[999]
        );
        assert_eq!(lin.final_alpha_cumprod, 0.9999);
        let sl = Schedule::new(&SchedulerConfig {
            beta_schedule: BetaSchedule::ScaledLinear,
            beta_start: 0.00085,
            beta_end: 0.012,
            ..SchedulerConfig::default()
        });
        // Stable Diffusion's schedule: ᾱ_999 ≈ 4.66010e-3.
        assert!(close(sl.alphas_cumprod[0], 1.0 - 0.00085, 1e-12));
        assert!(
            close(sl.alphas_cumprod[999], 4.660_098_5e-3, 1e-6),
            "{}",
            sl.alphas_cumprod[999]
        );
        let b1 = 1.0 - sl.alphas_cumprod[1] / sl.alphas_cumprod[0];
        let want = (0.00085f64.sqrt() + (0.012f64.sqrt() - 0.00085f64.sqrt()) / 999.0).powi(2);
        assert!(close(b1, want, 1e-12));
    }

    #[test]
    fn gamma_bar_interpolates() {
        assert_eq!(gamma_bar(0.0, 0.3), 1.0);
        assert_eq!(gamma_bar(1.0, 0.3), 0.3);
        assert!((gamma_bar(0.5, 0.3) - 0.65).abs() < 1e-15);
    }

    #[test]
    fn scheduler_config_roundtrips_and_refuses_by_name() {
        let c = SchedulerConfig::default();
        assert_eq!(SchedulerConfig::from_json(&c.to_json()).unwrap(), c);
        let v = SchedulerConfig {
            prediction: Prediction::V,
            ..SchedulerConfig::default()
        };
        assert_eq!(v.to_json()["prediction_type"], "v_prediction");
        assert_eq!(SchedulerConfig::from_json(&v.to_json()).unwrap(), v);
        for (key, value, needle) in [
            ("clip_sample", json!(true), "clip_sample"),
            ("prediction_type", json!("sample"), "prediction_type"),
            ("timestep_spacing", json!("trailing"), "timestep_spacing"),
            ("beta_schedule", json!("sigmoid"), "beta_schedule"),
            ("thresholding", json!(true), "thresholding"),
            ("bogus", json!(1), "bogus"),
            ("num_train_timesteps", json!(10.5), "num_train_timesteps"),
        ] {
            let mut v = c.to_json();
            v[key] = value;
            let e = SchedulerConfig::from_json(&v).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
