//! The model folder (docs/model-folder.md): the process settings (`dydiff.json`), the diffusers
//! scheduler config and the diffusers `UNet2DModel`, read and written together and checked against
//! each other.
//!
//! ```text
//! MODEL/dydiff.json
//! MODEL/scheduler/scheduler_config.json
//! MODEL/unet/config.json
//! MODEL/unet/diffusion_pytorch_model.safetensors
//! ```

pub mod default_model;
pub mod dyffusion;

use crate::backend::{Device, FrameScope, PadMode};
use crate::diffusion::schedule::{Schedule, SchedulerConfig};
use crate::error::{Error, Result};
use crate::io::outputs::Outputs;
use crate::nn::UNet2D;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

pub const PROCESS_FILE: &str = "dydiff.json";
pub const SCHEDULER_FILE: &str = "scheduler/scheduler_config.json";
pub const UNET_DIR: &str = "unet";

/// The metadata key of a training-state file (`train_state*.safetensors` in a model folder)
/// holding the step it was written at.
pub const STEP_KEY: &str = "dydiff_train_step";

/// The step of the training-state file `path`, from its metadata alone.
pub fn checkpoint_step(path: &Path) -> Result<usize> {
    let meta = crate::io::safetensors::read_metadata(path)?;
    meta.get(STEP_KEY)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            Error::bad_file(
                path,
                "not a dydiff training state (no step in its metadata)",
            )
        })
}

/// The keys of `dydiff.json`.
const PROCESS_KEYS: [&str; 12] = [
    "method",
    "padding_mode",
    "dyn_eta",
    "diffuse_history",
    "history",
    "future",
    "channels",
    "height",
    "width",
    "data_scale",
    "data_shift",
    "training",
];

/// `dydiff.json`: the process a model was trained for (docs/model-folder.md, “Process settings”).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessConfig {
    /// `"dydiff"` (Dynamical Diffusion; `dyn_eta = 0` is the standard diffusion model); the
    /// default.
    pub method: String,
    /// `η` of the dynamics schedule `γ̄_t = η·ᾱ_t + (1 − η)` (docs/schedules.md); default 0.5.
    pub dyn_eta: f64,
    /// Whether the process diffuses the history frames too (docs/process.md, “Diffusing the
    /// history”); default false. Written only when true, so folders of the default process read
    /// and write as before.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub diffuse_history: bool,
    /// Known frames `P + 1`.
    pub history: usize,
    /// Forecast frames `S`.
    pub future: usize,
    /// Channels `C` per frame.
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// `x_model = (x_data − data_shift) / data_scale` (docs/data.md, “Model space and data
    /// space”); default 1.
    pub data_scale: f64,
    /// Default 0.
    pub data_shift: f64,
    /// What the network's convolutions read outside the frame: `"zeros"` (the default,
    /// diffusers' `Conv2d`) or `"circular"` (the frame wrapped around, for periodic fields).
    /// Written only when not the default.
    #[serde(skip_serializing_if = "PadMode::is_zeros")]
    pub padding_mode: PadMode,
    /// The training recipe that produced the weights (free-form; kept as written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<Value>,
}

impl ProcessConfig {
    /// Frames of a whole sequence, `P + 1 + S`.
    pub fn frames(&self) -> usize {
        self.scope().frames()
    }
    /// Frames the process diffuses: `S`, or with `diffuse_history` all `P + 1 + S`.
    pub fn diffused(&self) -> usize {
        self.scope().diffused()
    }
    /// Frames of the network input: the clean history, then the diffused frames.
    pub fn input_frames(&self) -> usize {
        self.scope().state_frames()
    }
    /// Values per frame, `C·H·W`.
    pub fn frame_len(&self) -> usize {
        self.channels * self.height * self.width
    }
    /// Which frames a sequence holds and which the process diffuses.
    pub fn scope(&self) -> FrameScope {
        FrameScope {
            history: self.history,
            future: self.future,
            diffuse_history: self.diffuse_history,
        }
    }
    /// The mapping between data space and model space.
    pub fn data_space(&self) -> DataSpace {
        DataSpace {
            scale: self.data_scale,
            shift: self.data_shift,
        }
    }

    /// Reads the object of `dydiff.json`; an error names the key, what was expected and what
    /// was found.
    pub fn from_json(v: &Value) -> std::result::Result<ProcessConfig, String> {
        let obj = v
            .as_object()
            .ok_or_else(|| format!("expected a JSON object, found {v}"))?;
        if obj.is_empty() {
            return Err(format!(
                "an empty object {{}}; expected the process settings ({})",
                PROCESS_KEYS.join(", ")
            ));
        }
        if let Some((key, val)) = obj
            .iter()
            .find(|(k, _)| !PROCESS_KEYS.contains(&k.as_str()))
        {
            return Err(format!(
                "unknown key {key} = {val}; expected only {}",
                PROCESS_KEYS.join(", ")
            ));
        }
        let count = |key: &str| json_count(obj, key);
        let number = |key: &str, default: f64| json_number(obj, key, default);
        let method = match obj.get("method") {
            None => "dydiff".to_string(),
            Some(x) => x
                .as_str()
                .ok_or_else(|| format!("method = {x}: expected \"dydiff\""))?
                .to_string(),
        };
        let diffuse_history = match obj.get("diffuse_history") {
            None => false,
            Some(x) => x
                .as_bool()
                .ok_or_else(|| format!("diffuse_history = {x}: expected true or false"))?,
        };
        let p = ProcessConfig {
            method,
            dyn_eta: number("dyn_eta", 0.5)?,
            diffuse_history,
            history: count("history")?,
            future: count("future")?,
            channels: count("channels")?,
            height: count("height")?,
            width: count("width")?,
            data_scale: number("data_scale", 1.0)?,
            data_shift: number("data_shift", 0.0)?,
            padding_mode: json_padding_mode(obj)?,
            training: obj.get("training").filter(|t| !t.is_null()).cloned(),
        };
        p.validate()?;
        Ok(p)
    }

    /// Refuses data whose model-space values `(x − data_shift) / data_scale` would overflow
    /// float32; `source` says where the scale and shift came from.
    pub fn check_model_space(&self, path: &Path, data: &[f32], source: &str) -> Result<()> {
        check_model_space(path, data, self.data_space(), source)
    }
}

/// Refuses data whose model-space values (`space`) would overflow float32; `source` says where the
/// scale and shift came from.
pub fn check_model_space(path: &Path, data: &[f32], space: DataSpace, source: &str) -> Result<()> {
    let far = data
        .iter()
        .map(|&v| (f64::from(v) - space.shift).abs())
        .fold(0.0, f64::max);
    let model = far / space.scale;
    if model > f64::from(f32::MAX) {
        return Err(Error::bad_file(
                path,
                format!(
                    "values {far:.3e} away from data_shift = {:?} become {model:.3e} in model space with data_scale = {:?} ({source}): beyond float32 (at most {:.3e}); expected a larger data_scale",
                    space.shift,
                    space.scale,
                    f32::MAX
                ),
            ));
    }
    Ok(())
}

impl ProcessConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.method != "dydiff" {
            return Err(format!(
                "method = {:?}: expected \"dydiff\" (a \"dyffusion\" folder is read by its own loader)",
                self.method
            ));
        }
        if !(0.0..=1.0).contains(&self.dyn_eta) {
            return Err(format!(
                "dyn_eta = {}: expected a value in [0, 1]",
                self.dyn_eta
            ));
        }
        let values = self.history.checked_add(self.future).and_then(|f| {
            f.checked_mul(self.channels)?
                .checked_mul(self.height)?
                .checked_mul(self.width)
        });
        if values.is_none() {
            return Err(format!(
                "(history {} + future {}) × channels {} × height {} × width {}: too large (more values per sequence than a 64-bit count holds)",
                self.history, self.future, self.channels, self.height, self.width
            ));
        }
        check_scale_shift(self.data_scale, self.data_shift)?;
        Ok(())
    }
}

/// `data_scale` positive and finite, `data_shift` finite (docs/data.md, “Model space and data
/// space”); the message names the key.
pub(crate) fn check_scale_shift(
    data_scale: f64,
    data_shift: f64,
) -> std::result::Result<(), String> {
    if !(data_scale.is_finite() && data_scale > 0.0) {
        return Err(format!(
            "data_scale = {data_scale}: expected a positive number"
        ));
    }
    if !data_shift.is_finite() {
        return Err(format!(
            "data_shift = {data_shift}: expected a finite number"
        ));
    }
    Ok(())
}

/// The positive integer at `key` of a settings object; the message names the key.
pub(crate) fn json_count(
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> std::result::Result<usize, String> {
    let x = obj
        .get(key)
        .ok_or_else(|| format!("key {key} is missing; expected a positive integer"))?;
    x.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{key} = {x}: expected a positive integer"))
}

/// The number at `key` of a settings object, `default` when absent; the message names the key.
pub(crate) fn json_number(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    default: f64,
) -> std::result::Result<f64, String> {
    obj.get(key).map_or(Ok(default), |x| {
        x.as_f64()
            .ok_or_else(|| format!("{key} = {x}: expected a number"))
    })
}

/// `padding_mode` of a `dydiff.json` object: `"zeros"` (also when absent) or `"circular"`.
pub(crate) fn json_padding_mode(
    obj: &serde_json::Map<String, Value>,
) -> std::result::Result<PadMode, String> {
    match obj.get("padding_mode") {
        None => Ok(PadMode::Zeros),
        Some(v) => v
            .as_str()
            .and_then(PadMode::parse)
            .ok_or_else(|| format!("padding_mode = {v}: expected \"zeros\" or \"circular\"")),
    }
}

/// The mapping between the data's space and the networks' (docs/data.md, “Model space and data
/// space”): `x_model = (x_data − shift) / scale`, computed in f64 and rounded to float32 once, and
/// back `x_data = x_model·scale + shift`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DataSpace {
    /// `data_scale` of the model folder: positive and finite.
    pub scale: f64,
    /// `data_shift`: finite.
    pub shift: f64,
}

impl DataSpace {
    /// A data-space value in model space.
    pub fn to_model(self, v: f32) -> f32 {
        ((f64::from(v) - self.shift) / self.scale) as f32
    }
    /// A model-space value in data space.
    pub fn to_data(self, v: f32) -> f32 {
        (f64::from(v) * self.scale + self.shift) as f32
    }
}

/// The forecasting method a model folder holds (`dydiff.json`'s `"method"`; docs/model-folder.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Dynamical Diffusion (`"dydiff"`, the default); with `dyn_eta = 0` the standard diffusion
    /// model. Sampled by DDIM.
    Dydiff,
    /// DYffusion (`"dyffusion"`): an interpolator and a forecaster (docs/dyffusion.md). Sampled
    /// by cold sampling.
    Dyffusion,
}

impl Method {
    /// The name in `dydiff.json` and on the command line (`--method`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Dydiff => "dydiff",
            Method::Dyffusion => "dyffusion",
        }
    }
    /// The method named `s`, if there is one.
    pub fn parse(s: &str) -> Option<Method> {
        [Method::Dydiff, Method::Dyffusion]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

value_enum_by_name!(Method, [Method::Dydiff, Method::Dyffusion]);

/// The method a model folder's `dydiff.json` names: [`Method::Dydiff`] (the default when absent)
/// or [`Method::Dyffusion`]; an error names the file.
pub fn method_of(dir: &Path) -> Result<Method> {
    let path = dir.join(PROCESS_FILE);
    if !dir.is_dir() {
        return Err(Error::bad_file(
            dir,
            format!("model folder not found (expected a directory with {PROCESS_FILE})"),
        ));
    }
    if !path.exists() && dir.join("config.json").exists() {
        let parent = dir.parent().filter(|p| p.join(PROCESS_FILE).exists());
        return Err(Error::bad_file(
            dir,
            match parent {
                Some(p) => format!("the network of a model folder, not the folder; point --model at the folder above, {}", p.display()),
                None => format!("a diffusers network folder, not a model folder: a model folder holds {PROCESS_FILE}, {SCHEDULER_FILE} and this network as {UNET_DIR}/ (docs/model-folder.md)"),
            },
        ));
    }
    let v = read_json(&path)?;
    match v.get("method") {
        None => Ok(Method::Dydiff),
        Some(m) => m.as_str().and_then(Method::parse).ok_or_else(|| {
            Error::bad_file(
                &path,
                format!("method = {m}: expected \"dydiff\" or \"dyffusion\""),
            )
        }),
    }
}

/// Reads a DYffusion model folder (docs/dyffusion.md, “Model folder”).
pub fn load_dyffusion(
    dir: &Path,
    device: Device,
) -> Result<crate::model::dyffusion::DyffusionModel> {
    let path = dir.join(PROCESS_FILE);
    let config = crate::model::dyffusion::DyffusionConfig::from_json(&read_json(&path)?)
        .map_err(|m| Error::bad_file(&path, m))?;
    crate::model::dyffusion::DyffusionModel::load(dir, config, device)
}

/// A loaded model folder.
pub struct Model {
    pub process: ProcessConfig,
    pub scheduler: SchedulerConfig,
    pub schedule: Schedule,
    pub unet: UNet2D,
}

fn read_json(path: &Path) -> Result<Value> {
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
        let process = ProcessConfig::from_json(&read_json(&ppath)?)
            .map_err(|m| Error::bad_file(&ppath, m))?;
        let spath = dir.join(SCHEDULER_FILE);
        let scheduler = SchedulerConfig::from_json(&read_json(&spath)?)
            .map_err(|e| Error::bad_file(&spath, e.to_string()))?;
        let unet =
            UNet2D::from_pretrained_padded(&dir.join(UNET_DIR), device, process.padding_mode)?;
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
        let diffused = if p.diffuse_history {
            format!("all {} frames", p.frames())
        } else {
            format!("future {}", p.future)
        };
        if c.in_channels != p.input_frames() * p.channels {
            return Err(format!(
                "in_channels = {}: {PROCESS_FILE} needs (history {} + {diffused}) × channels {} = {}",
                c.in_channels,
                p.history,
                p.channels,
                p.input_frames() * p.channels
            ));
        }
        if c.out_channels != p.diffused() * p.channels {
            return Err(format!(
                "out_channels = {}: {PROCESS_FILE} needs {diffused} × channels {} = {}",
                c.out_channels,
                p.channels,
                p.diffused() * p.channels
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

    /// The paths inside the folder of the files [`Model::files`] writes.
    pub fn folder_files() -> Vec<String> {
        let mut names = vec![PROCESS_FILE.to_string(), SCHEDULER_FILE.to_string()];
        for name in UNet2D::PRETRAINED_FILES {
            names.push(format!("{UNET_DIR}/{name}"));
        }
        names
    }

    /// The files of the model folder: each one's path inside the folder and its content.
    pub fn files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.check().map_err(Error::Config)?;
        let process =
            serde_json::to_string_pretty(&self.process).expect("process config serialises");
        let sched = serde_json::to_string_pretty(&self.scheduler.to_json())
            .expect("scheduler config serialises");
        let mut files = vec![
            (PROCESS_FILE.to_string(), process.into_bytes()),
            (SCHEDULER_FILE.to_string(), sched.into_bytes()),
        ];
        for (name, bytes) in self.unet.pretrained_files()? {
            files.push((format!("{UNET_DIR}/{name}"), bytes));
        }
        Ok(files)
    }

    /// Writes the folder at `dir`, a new path in an existing directory or an existing directory
    /// (whose other files are kept): all its files appear together, or none.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut out = Outputs::new();
        let names = Model::folder_files();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let folder = out.dir_with("model folder", dir, &names)?;
        for (name, bytes) in self.files()? {
            out.write_in(folder, &name, &bytes)?;
        }
        out.commit()
    }
}
