//! DYffusion (Rühling Cachay et al., NeurIPS 2023; docs/dyffusion.md): a stochastic,
//! time-conditioned interpolator `I_φ(x_0, x_h, i)` and a forecaster `F_θ(x̃, i_n)` whose
//! diffusion steps are physical time steps, sampled by cold sampling.
//!
//! This module holds the method's settings (`dydiff.json` with `"method": "dyffusion"`), its
//! schedule `i_n`, the model folder (`interpolator/` and `forecaster/`, each a diffusers
//! `UNet2DModel`), the two networks' calls with their channel layouts, cold sampling, and the two
//! training losses. Everything is in model space, on `(B, channels, H, W)` tensors whose rows are
//! (sample, member) pairs; each row's randomness — the interpolator's dropout masks and the
//! `data+noise` condition — is keyed by its own pair, so results do not depend on the batch.

use crate::backend::{Device, PadMode};
use crate::diffusion::ddim::rows_tensor;
use crate::error::{Error, Result};
use crate::io::outputs::Outputs;
use crate::model::{check_scale_shift, json_count, json_number, json_padding_mode};
use crate::nn::{Dropout, UNet2D};
use crate::rng::{NoiseKey, NoiseRow, Purpose};
use crate::tensor::Tensor;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

pub const INTERPOLATOR_DIR: &str = "interpolator";
pub const FORECASTER_DIR: &str = "forecaster";
/// The training state and log of each stage, beside the networks in the folder.
pub const STATE_INTERPOLATOR: &str = "train_state_interpolator.safetensors";
pub const LOG_INTERPOLATOR: &str = "train_log_interpolator.jsonl";
pub const STATE_FORECASTER: &str = "train_state_forecaster.safetensors";
pub const LOG_FORECASTER: &str = "train_log_forecaster.jsonl";

/// What the forecaster sees besides its input `x̃` (docs/dyffusion.md, “Networks”).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The history `x_0`, `(P+1)·C` channels (the default).
    Data,
    /// Nothing.
    None,
    /// `c = (n/(N−1))·x_0 + (1 − n/(N−1))·ξ`, `ξ ~ N(0, I)` fresh per call.
    DataNoise,
}

value_enum_by_name!(
    Condition,
    [Condition::Data, Condition::None, Condition::DataNoise]
);

impl Condition {
    /// The name in `dydiff.json` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Condition::Data => "data",
            Condition::None => "none",
            Condition::DataNoise => "data+noise",
        }
    }
    /// The condition named `s`; an error lists the names.
    pub fn parse(s: &str) -> std::result::Result<Condition, String> {
        match s {
            "data" => Ok(Condition::Data),
            "none" => Ok(Condition::None),
            "data+noise" => Ok(Condition::DataNoise),
            _ => Err(format!(
                "{s:?}: expected \"data\", \"none\" or \"data+noise\""
            )),
        }
    }
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// `dydiff.json` of a DYffusion model (docs/dyffusion.md, “Model folder”).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DyffusionConfig {
    /// `"dyffusion"`.
    pub method: String,
    /// Known frames `P + 1` (`x_0`).
    pub history: usize,
    /// The horizon `h`: frames forecast per window (at least 2).
    pub future: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data_scale: f64,
    pub data_shift: f64,
    /// `k ≥ 0`: interpolation steps added before the first whole time step.
    pub additional_steps: usize,
    pub forecaster_condition: Condition,
    /// The interpolator's dropout probability (its network's `dropout`).
    pub interpolator_dropout: f64,
    /// Replace leads `1 … h−1` by the interpolator's prediction from the final `x̂_h`.
    pub refine: bool,
    pub lambda_1: f64,
    pub lambda_2: f64,
    /// What both networks' convolutions read outside the frame (as a DyDiff folder's
    /// `padding_mode`); written only when not zeros.
    #[serde(skip_serializing_if = "PadMode::is_zeros")]
    pub padding_mode: PadMode,
    /// The training recipe (free-form; kept as written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<Value>,
}

const KEYS: [&str; 16] = [
    "method",
    "padding_mode",
    "history",
    "future",
    "channels",
    "height",
    "width",
    "data_scale",
    "data_shift",
    "additional_steps",
    "forecaster_condition",
    "interpolator_dropout",
    "refine",
    "lambda_1",
    "lambda_2",
    "training",
];

impl DyffusionConfig {
    /// Values per frame, `C·H·W`.
    pub fn frame_len(&self) -> usize {
        self.channels * self.height * self.width
    }
    /// The mapping between data space and model space.
    pub fn data_space(&self) -> super::DataSpace {
        super::DataSpace {
            scale: self.data_scale,
            shift: self.data_shift,
        }
    }
    /// The number of forecaster steps `N = h + k`.
    pub fn n_steps(&self) -> usize {
        self.future + self.additional_steps
    }
    /// The schedule `i_0 … i_N` (docs/dyffusion.md, “Schedule”).
    pub fn schedule(&self) -> Vec<f64> {
        schedule(self.future, self.additional_steps)
    }
    /// Input channels of the interpolator: `x_0` and `x_h`, `(P+2)·C`.
    pub fn interpolator_in(&self) -> usize {
        (self.history + 1) * self.channels
    }
    /// Input channels of the forecaster: `x̃`, then the condition.
    pub fn forecaster_in(&self) -> usize {
        match self.forecaster_condition {
            Condition::None => self.channels,
            Condition::Data | Condition::DataNoise => (self.history + 1) * self.channels,
        }
    }
    /// Network calls per window of one member's forecast: `N` forecaster calls, `2N − 3`
    /// interpolator calls in the loop, `h − 1` more for the refinement.
    pub fn calls_per_window(&self) -> usize {
        let n = self.n_steps();
        n + (2 * n).saturating_sub(3) + if self.refine { self.future - 1 } else { 0 }
    }

    /// Reads the object of `dydiff.json`; an error names the key, what was expected and what
    /// was found.
    pub fn from_json(v: &Value) -> std::result::Result<DyffusionConfig, String> {
        let obj = v
            .as_object()
            .ok_or_else(|| format!("expected a JSON object, found {v}"))?;
        if let Some((key, val)) = obj.iter().find(|(k, _)| !KEYS.contains(&k.as_str())) {
            return Err(format!(
                "unknown key {key} = {val} for method \"dyffusion\"; expected only {}",
                KEYS.join(", ")
            ));
        }
        let count = |key: &str| json_count(obj, key);
        let number = |key: &str, default: f64| json_number(obj, key, default);
        let additional_steps = match obj.get("additional_steps") {
            None => 0,
            Some(x) => x
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("additional_steps = {x}: expected an integer ≥ 0"))?,
        };
        let forecaster_condition = match obj.get("forecaster_condition") {
            None => Condition::Data,
            Some(x) => Condition::parse(x.as_str().ok_or_else(|| {
                format!("forecaster_condition = {x}: expected \"data\", \"none\" or \"data+noise\"")
            })?)
            .map_err(|e| format!("forecaster_condition = {e}"))?,
        };
        let refine = match obj.get("refine") {
            None => true,
            Some(x) => x
                .as_bool()
                .ok_or_else(|| format!("refine = {x}: expected true or false"))?,
        };
        let c = DyffusionConfig {
            method: obj
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            history: count("history")?,
            future: count("future")?,
            channels: count("channels")?,
            height: count("height")?,
            width: count("width")?,
            data_scale: number("data_scale", 1.0)?,
            data_shift: number("data_shift", 0.0)?,
            additional_steps,
            forecaster_condition,
            interpolator_dropout: number("interpolator_dropout", 0.15)?,
            refine,
            lambda_1: number("lambda_1", 0.5)?,
            lambda_2: number("lambda_2", 0.5)?,
            padding_mode: json_padding_mode(obj)?,
            training: obj.get("training").filter(|t| !t.is_null()).cloned(),
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks the settings' ranges; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.method != "dyffusion" {
            return Err(format!(
                "method = {:?}: expected \"dyffusion\"",
                self.method
            ));
        }
        if self.future < 2 {
            return Err(format!(
                "future = {}: expected a horizon of at least 2 frames (the interpolator predicts the frames between the history and frame h)",
                self.future
            ));
        }
        // the steps key the masks' counter within 16 bits of calls per window
        if self.additional_steps > 1000 {
            return Err(format!(
                "additional_steps = {}: expected 0 to 1000",
                self.additional_steps
            ));
        }
        if !(0.0..1.0).contains(&self.interpolator_dropout) {
            return Err(format!(
                "interpolator_dropout = {}: expected 0 ≤ p < 1",
                self.interpolator_dropout
            ));
        }
        for (key, v) in [("lambda_1", self.lambda_1), ("lambda_2", self.lambda_2)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{key} = {v}: expected a finite number ≥ 0"));
            }
        }
        check_scale_shift(self.data_scale, self.data_shift)?;
        let values = (self.history + self.future)
            .checked_mul(self.channels)
            .and_then(|v| v.checked_mul(self.height)?.checked_mul(self.width));
        if values.is_none() {
            return Err("history + future frames of channels × height × width: too many values (the count overflows)".into());
        }
        Ok(())
    }
}

/// The schedule `i_0 … i_N` of horizon `h` with `k` additional steps, `N = h + k`:
/// `i_n = n/(k+1)` for `n ≤ k`, `n − k` after, and `i_N = h`.
pub fn schedule(h: usize, k: usize) -> Vec<f64> {
    (0..=h + k)
        .map(|n| {
            if n <= k {
                n as f64 / (k + 1) as f64
            } else {
                (n - k) as f64
            }
        })
        .collect()
}

/// A loaded DYffusion model folder: `dydiff.json`, `interpolator/` and, once stage 2 has run,
/// `forecaster/`.
pub struct DyffusionModel {
    pub config: DyffusionConfig,
    pub interpolator: UNet2D,
    pub forecaster: Option<UNet2D>,
}

impl DyffusionModel {
    /// Reads the folder at `dir` (its `dydiff.json` already parsed as `config`) and checks the
    /// networks against the settings.
    pub fn load(dir: &Path, config: DyffusionConfig, device: Device) -> Result<DyffusionModel> {
        let pad = config.padding_mode;
        let interpolator =
            UNet2D::from_pretrained_padded(&dir.join(INTERPOLATOR_DIR), device, pad)?;
        let fdir = dir.join(FORECASTER_DIR);
        let forecaster = if fdir.exists() {
            Some(UNet2D::from_pretrained_padded(&fdir, device, pad)?)
        } else {
            None
        };
        let m = DyffusionModel {
            config,
            interpolator,
            forecaster,
        };
        m.check_networks(dir)?;
        Ok(m)
    }

    /// The networks' channels and sizes against the settings; an error names the config file.
    pub fn check_networks(&self, dir: &Path) -> Result<()> {
        let c = &self.config;
        let mut nets = vec![(
            INTERPOLATOR_DIR,
            &self.interpolator,
            c.interpolator_in(),
            "(history + 1) × channels",
        )];
        if let Some(f) = &self.forecaster {
            let why = match c.forecaster_condition {
                Condition::None => "channels (forecaster_condition \"none\")",
                _ => "(1 + history) × channels",
            };
            nets.push((FORECASTER_DIR, f, c.forecaster_in(), why));
        }
        for (name, net, want_in, why) in nets {
            let path = dir.join(name).join(crate::nn::unet2d::CONFIG_FILE);
            let n = &net.config;
            if n.in_channels != want_in || n.out_channels != c.channels {
                return Err(Error::bad_file(
                    &path,
                    format!(
                        "in_channels = {}, out_channels = {}: dydiff.json needs {why} = {want_in} in and channels = {} out",
                        n.in_channels, n.out_channels, c.channels
                    ),
                ));
            }
            let m = n.size_multiple();
            if !c.height.is_multiple_of(m) || !c.width.is_multiple_of(m) {
                return Err(Error::bad_file(
                    &path,
                    format!(
                        "the network needs height and width multiples of {m}; dydiff.json has {}×{}",
                        c.height, c.width
                    ),
                ));
            }
        }
        if (self.interpolator.config.dropout - c.interpolator_dropout).abs() > 1e-12 {
            return Err(Error::bad_file(
                &dir.join(INTERPOLATOR_DIR)
                    .join(crate::nn::unet2d::CONFIG_FILE),
                format!(
                    "dropout = {}: dydiff.json has interpolator_dropout = {}; expected the same",
                    self.interpolator.config.dropout, c.interpolator_dropout
                ),
            ));
        }
        Ok(())
    }

    /// The forecaster, or an error saying the folder has only the interpolator.
    pub fn forecaster(&self, dir: &Path) -> Result<&UNet2D> {
        self.forecaster.as_ref().ok_or_else(|| {
            Error::bad_file(
                dir,
                format!("a DYffusion folder without {FORECASTER_DIR}/ (only stage 1 has run); train the forecaster with dydiff train --method dyffusion --stage forecaster"),
            )
        })
    }

    /// The files of the folder, by path inside it: `dydiff.json`, the interpolator's and (if
    /// trained) the forecaster's diffusers folders.
    pub fn files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let text = serde_json::to_string_pretty(&self.config).expect("settings serialise");
        let mut files = vec![(crate::model::PROCESS_FILE.to_string(), text.into_bytes())];
        for (dir, net) in [
            (INTERPOLATOR_DIR, Some(&self.interpolator)),
            (FORECASTER_DIR, self.forecaster.as_ref()),
        ] {
            if let Some(net) = net {
                for (name, bytes) in net.pretrained_files()? {
                    files.push((format!("{dir}/{name}"), bytes));
                }
            }
        }
        Ok(files)
    }

    /// Writes the folder at `dir`: all its files together, or none.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut out = Outputs::new();
        let files = self.files()?;
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        let folder = out.dir_with("model folder", dir, &names)?;
        for (name, bytes) in &files {
            out.write_in(folder, name, bytes)?;
        }
        out.commit()
    }
}

/// The randomness of a batch's network calls: the (sample, member) pair of every row, the seed,
/// and which purposes key the dropout masks and the condition noise (docs/random.md,
/// “Streams”). A call's counter word is `base + call`: in a forecast `window·2¹⁶ + call`, in
/// training `4·step + call` (four calls per step).
#[derive(Clone, Copy, Debug)]
pub struct CallKeys {
    pub seed: u64,
    pub dropout: Purpose,
    pub noise: Purpose,
    pub base: u32,
}

/// The interpolator's and forecaster's calls on one batch.
pub struct Calls<'a> {
    pub config: &'a DyffusionConfig,
    pub interpolator: &'a UNet2D,
    pub forecaster: &'a UNet2D,
    /// The rows' pairs.
    pub rows: &'a [NoiseRow],
    /// [`rows_tensor`] of `rows`.
    pub rows_t: Tensor,
    pub keys: CallKeys,
    /// Whether the forecaster's own dropout acts (training).
    pub forecaster_dropout: bool,
}

impl<'a> Calls<'a> {
    /// The calls of a batch with rows `rows`.
    pub fn new(
        config: &'a DyffusionConfig,
        interpolator: &'a UNet2D,
        forecaster: &'a UNet2D,
        rows: &'a [NoiseRow],
        keys: CallKeys,
        forecaster_dropout: bool,
        device: Device,
    ) -> Result<Calls<'a>> {
        Ok(Calls {
            config,
            interpolator,
            forecaster,
            rows,
            rows_t: rows_tensor(rows, device)?,
            keys,
            forecaster_dropout,
        })
    }

    /// The call's dropout masks: counter word `call`.
    fn dropout(&self, call: u32) -> Dropout<'_> {
        Dropout {
            key: NoiseKey {
                seed: self.keys.seed,
                purpose: self.keys.dropout,
                step: self.keys.base.wrapping_add(call),
            },
            rows: &self.rows_t,
        }
    }

    /// `I_φ(x_0, x_h, i)` on `x0 (B, (P+1)·C, H, W)` and `xh (B, C, H, W)` at per-row times `i`,
    /// its dropout masks keyed by counter word `call`: `(B, C, H, W)`.
    pub fn interpolate(&self, x0: &Tensor, xh: &Tensor, i: &[f32], call: u32) -> Result<Tensor> {
        let inp = Tensor::cat_channels(&[x0, xh])?;
        let t = Tensor::from_vec(i.to_vec(), &[i.len()], inp.device())?;
        self.interpolator
            .forward_with(&inp, &t, Some(&self.dropout(call)))
    }

    /// `F_θ(x̃, i_n)` at per-row steps `n` of the schedule, the condition built from `x0`, its
    /// randomness keyed by counter word `call`: `(B, C, H, W)`.
    pub fn forecast(&self, x: &Tensor, x0: &Tensor, n: &[usize], call: u32) -> Result<Tensor> {
        let c = self.config;
        let ii = c.schedule();
        let device = x.device();
        let inp = match c.forecaster_condition {
            Condition::None => x.clone(),
            Condition::Data => Tensor::cat_channels(&[x, x0])?,
            Condition::DataNoise => {
                let key = NoiseKey {
                    seed: self.keys.seed,
                    purpose: self.keys.noise,
                    step: self.keys.base.wrapping_add(call),
                };
                let xi = Tensor::randn(key, self.rows, x0.shape(), device)?;
                // c = w·x_0 + (1 − w)·ξ = ξ + w·(x_0 − ξ), w = n/(N−1) per row
                let denom = (c.n_steps() - 1).max(1) as f32;
                let row = x0.elem_count() / n.len().max(1);
                let w: Vec<f32> = n
                    .iter()
                    .flat_map(|&v| std::iter::repeat_n(v as f32 / denom, row))
                    .collect();
                let w = Tensor::from_vec(w, x0.shape(), device)?;
                let cond = xi.add(&x0.sub(&xi)?.mul(&w)?)?;
                Tensor::cat_channels(&[x, &cond])?
            }
        };
        let t: Vec<f32> = n.iter().map(|&v| ii[v] as f32).collect();
        let t = Tensor::from_vec(t, &[n.len()], device)?;
        let drop = self.dropout(call);
        self.forecaster
            .forward_with(&inp, &t, self.forecaster_dropout.then_some(&drop))
    }

    /// The same calls on the first `count` rows.
    pub fn first_rows(&self, count: usize) -> Result<Calls<'a>> {
        Ok(Calls {
            config: self.config,
            interpolator: self.interpolator,
            forecaster: self.forecaster,
            rows: &self.rows[..count],
            rows_t: rows_tensor(&self.rows[..count], self.rows_t.device())?,
            keys: self.keys,
            forecaster_dropout: self.forecaster_dropout,
        })
    }
}

/// Cold sampling of one window (docs/dyffusion.md, “Cold sampling”) for a batch: from the
/// histories `x0 (B, (P+1)·C, H, W)` in model space, the leads `1 … h`, each `(B, C, H, W)`.
/// Network calls are numbered from 0 in the order they run (added to the keys' base, the counter
/// word of their randomness); `tick` is called after each.
pub fn cold_sample(calls: &Calls, x0: &Tensor, mut tick: impl FnMut()) -> Result<Vec<Tensor>> {
    let c = calls.config;
    let (h, n_steps) = (c.future, c.n_steps());
    let ii = c.schedule();
    let mut call = 0u32;
    let mut next = || {
        call += 1;
        call - 1
    };
    let mut leads: Vec<Option<Tensor>> = vec![None; h];
    // x ← x^P, the last history frame
    let hist = c.history * c.channels;
    let mut x = x0.slice_channels(hist - c.channels, hist)?;
    let mut xh = x.clone();
    let b = x0.shape()[0];
    let at = |i: f64| vec![i as f32; b];
    for s in 0..n_steps {
        xh = calls.forecast(&x, x0, &vec![s; b], next())?;
        tick();
        if s == n_steps - 1 {
            break;
        }
        let ahead = calls.interpolate(x0, &xh, &at(ii[s + 1]), next())?;
        tick();
        x = if s == 0 {
            ahead
        } else {
            let here = calls.interpolate(x0, &xh, &at(ii[s]), next())?;
            tick();
            x.sub(&here)?.add(&ahead)?
        };
        let j = ii[s + 1];
        if j.fract() == 0.0 && (1.0..h as f64).contains(&j) {
            leads[j as usize - 1] = Some(x.clone());
        }
    }
    if c.refine {
        for (j, lead) in leads.iter_mut().enumerate().take(h - 1) {
            *lead = Some(calls.interpolate(x0, &xh, &at((j + 1) as f64), next())?);
            tick();
        }
    }
    leads[h - 1] = Some(xh);
    leads
        .into_iter()
        .enumerate()
        .map(|(j, l)| l.ok_or_else(|| Error::Invalid(format!("lead {} was not produced", j + 1))))
        .collect()
}

/// Stage 1's loss (docs/dyffusion.md, “Training”): `MSE(I_φ(x_0, x_h, i), x^{P+i})` for a
/// batch of windows `(x0, xh, target)` at per-row times `i`, the interpolator's dropout keyed by
/// `drop` if given.
pub fn interpolator_loss(
    interpolator: &UNet2D,
    (x0, xh, target): (&Tensor, &Tensor, &Tensor),
    i: &Tensor,
    drop: Option<&Dropout>,
) -> Result<Tensor> {
    let inp = Tensor::cat_channels(&[x0, xh])?;
    interpolator.forward_with(&inp, i, drop)?.mse(target)
}

/// Stage 2's loss (docs/dyffusion.md, “Training”) on a batch of windows whose rows
/// are ordered so that the `two` rows with `n ≤ N−2` come first: `x0 (B, (P+1)·C, H, W)`, `xh`
/// the true frame `h`, `n` per row. The calls are numbered 0 (interpolator for `x̃_n`), 1
/// (forecaster), 2 (interpolator for `x̃'`, its gradient flowing into the first forecast), 3
/// (forecaster again). Returns `w₁·λ₁·L₁ + w₂·λ₂·L₂` (`L₂` left out when no row has `n ≤ N−2`),
/// `[w₁, w₂] = weights`: `[1, 1]` for the loss of the batch itself; a rank holding part of a
/// batch weighs its means by its share of the rows each is taken over (docs/distributed.md).
pub fn forecaster_loss(
    calls: &Calls,
    x0: &Tensor,
    xh: &Tensor,
    n: &[usize],
    weights: [f32; 2],
) -> Result<Tensor> {
    let c = calls.config;
    let ii = c.schedule();
    let two = n.iter().take_while(|&&v| v + 2 <= c.n_steps()).count();
    if n[two..].iter().any(|&v| v + 2 <= c.n_steps()) {
        return Err(Error::Invalid(
            "forecaster_loss: the rows with n ≤ N−2 must come first".into(),
        ));
    }
    let hist = c.history * c.channels;
    let last = x0.slice_channels(hist - c.channels, hist)?;
    // x̃_n: the last history frame where n = 0, else the frozen interpolator's guess at i_n
    let t: Vec<f32> = n.iter().map(|&v| ii[v] as f32).collect();
    let interp = calls.interpolate(x0, xh, &t, 0)?;
    let row = last.elem_count() / n.len().max(1);
    let first: Vec<f32> = n
        .iter()
        .flat_map(|&v| std::iter::repeat_n(if v == 0 { 1.0 } else { 0.0 }, row))
        .collect();
    let first = Tensor::from_vec(first, last.shape(), last.device())?;
    let xt = interp.add(&last.sub(&interp)?.mul(&first)?)?;
    let xhat = calls.forecast(&xt, x0, n, 1)?;
    let mut loss = xhat.mae(xh)?.scale(c.lambda_1 as f32 * weights[0])?;
    if two > 0 {
        let sub = calls.first_rows(two)?;
        let x02 = x0.narrow_rows(0, two)?;
        let n2: Vec<usize> = n[..two].iter().map(|v| v + 1).collect();
        let t2: Vec<f32> = n2.iter().map(|&v| ii[v] as f32).collect();
        let xt2 = sub.interpolate(&x02, &xhat.narrow_rows(0, two)?, &t2, 2)?;
        let xhat2 = sub.forecast(&xt2, &x02, &n2, 3)?;
        let l2 = xhat2.mae(&xh.narrow_rows(0, two)?)?;
        loss = loss.add(&l2.scale(c.lambda_2 as f32 * weights[1])?)?;
    }
    Ok(loss)
}
