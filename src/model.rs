//! The model folder (SPEC §8): the process settings (`dydiff.json`), the diffusers scheduler
//! config and the diffusers `UNet2DModel`, read and written together and checked against each
//! other.
//!
//! ```text
//! MODEL/dydiff.json
//! MODEL/scheduler/scheduler_config.json
//! MODEL/unet/config.json
//! MODEL/unet/diffusion_pytorch_model.safetensors
//! ```

use crate::backend::Device;
use crate::diffusion::schedule::{Schedule, SchedulerConfig};
use crate::error::{Error, Result};
use crate::io::atomic;
use crate::nn::UNet2D;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const PROCESS_FILE: &str = "dydiff.json";
pub const SCHEDULER_FILE: &str = "scheduler/scheduler_config.json";
pub const UNET_DIR: &str = "unet";

fn default_method() -> String {
    "dydiff".into()
}
fn default_dyn_eta() -> f64 {
    0.5
}
fn default_scale() -> f64 {
    1.0
}

/// `dydiff.json`: the process a model was trained for (SPEC §8).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// `"dydiff"` (Dynamical Diffusion; `dyn_eta = 0` is the standard diffusion model).
    #[serde(default = "default_method")]
    pub method: String,
    /// `η` of the dynamics schedule `γ̄_t = η·ᾱ_t + (1 − η)` (SPEC §2).
    #[serde(default = "default_dyn_eta")]
    pub dyn_eta: f64,
    /// Known frames `P + 1`.
    pub history: usize,
    /// Forecast frames `S`.
    pub future: usize,
    /// Channels `C` per frame.
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// `x_model = (x_data − data_shift) / data_scale` (SPEC §1).
    #[serde(default = "default_scale")]
    pub data_scale: f64,
    #[serde(default)]
    pub data_shift: f64,
    /// The training recipe that produced the weights (free-form; kept as written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
}

impl ProcessConfig {
    /// Frames of a whole sequence, `P + 1 + S`.
    pub fn frames(&self) -> usize {
        self.history + self.future
    }
    /// Values per frame, `C·H·W`.
    pub fn frame_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.method != "dydiff" {
            return Err(format!(
                "method = {:?}: expected \"dydiff\" (the only method of this version)",
                self.method
            ));
        }
        if !(0.0..=1.0).contains(&self.dyn_eta) {
            return Err(format!(
                "dyn_eta = {}: expected a value in [0, 1]",
                self.dyn_eta
            ));
        }
        for (key, v) in [
            ("history", self.history),
            ("future", self.future),
            ("channels", self.channels),
            ("height", self.height),
            ("width", self.width),
        ] {
            if v == 0 {
                return Err(format!("{key} = 0: expected at least 1"));
            }
        }
        if !(self.data_scale.is_finite() && self.data_scale > 0.0) {
            return Err(format!(
                "data_scale = {}: expected a positive number",
                self.data_scale
            ));
        }
        if !self.data_shift.is_finite() {
            return Err(format!(
                "data_shift = {}: expected a finite number",
                self.data_shift
            ));
        }
        Ok(())
    }
}

/// A loaded model folder.
pub struct Model {
    pub process: ProcessConfig,
    pub scheduler: SchedulerConfig,
    pub schedule: Schedule,
    pub unet: UNet2D,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("not valid JSON: {e}")))
}

impl Model {
    /// Reads a model folder and checks that its parts agree: the network takes
    /// `(P+1+S)·C` channels and gives `S·C`, and the frame size suits the network.
    pub fn load(dir: &Path, device: Device) -> Result<Model> {
        if !dir.is_dir() {
            return Err(Error::bad_file(
                dir,
                format!("model folder not found (expected a directory with {PROCESS_FILE}, {SCHEDULER_FILE} and {UNET_DIR}/)"),
            ));
        }
        let ppath = dir.join(PROCESS_FILE);
        let process: ProcessConfig = serde_json::from_value(read_json(&ppath)?)
            .map_err(|e| Error::bad_file(&ppath, e.to_string()))?;
        process.validate().map_err(|m| Error::bad_file(&ppath, m))?;
        let spath = dir.join(SCHEDULER_FILE);
        let scheduler = SchedulerConfig::from_json(&read_json(&spath)?)
            .map_err(|e| Error::bad_file(&spath, e.to_string()))?;
        let unet = UNet2D::from_pretrained(&dir.join(UNET_DIR), device)?;
        let model = Model {
            schedule: Schedule::new(&scheduler),
            process,
            scheduler,
            unet,
        };
        model
            .check()
            .map_err(|m| Error::bad_file(&dir.join(UNET_DIR).join("config.json"), m))?;
        Ok(model)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let (p, c) = (&self.process, &self.unet.config);
        if c.in_channels != p.frames() * p.channels {
            return Err(format!(
                "in_channels = {}: {PROCESS_FILE} needs (history {} + future {}) × channels {} = {}",
                c.in_channels,
                p.history,
                p.future,
                p.channels,
                p.frames() * p.channels
            ));
        }
        if c.out_channels != p.future * p.channels {
            return Err(format!(
                "out_channels = {}: {PROCESS_FILE} needs future {} × channels {} = {}",
                c.out_channels,
                p.future,
                p.channels,
                p.future * p.channels
            ));
        }
        let m = c.size_multiple();
        if p.height % m != 0 || p.width % m != 0 {
            return Err(format!(
                "the network needs height and width multiples of {m}; {PROCESS_FILE} has {}×{}",
                p.height, p.width
            ));
        }
        Ok(())
    }

    /// Writes the folder, each file atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.check().map_err(Error::Config)?;
        std::fs::create_dir_all(dir.join("scheduler")).map_err(|e| Error::io(dir, e))?;
        let process =
            serde_json::to_string_pretty(&self.process).expect("process config serialises");
        atomic::write(&dir.join(PROCESS_FILE), process.as_bytes())?;
        let sched = serde_json::to_string_pretty(&self.scheduler.to_json())
            .expect("scheduler config serialises");
        atomic::write(&dir.join(SCHEDULER_FILE), sched.as_bytes())?;
        self.unet.save_pretrained(&dir.join(UNET_DIR))
    }
}
