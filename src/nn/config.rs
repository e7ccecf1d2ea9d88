//! diffusers' `UNet2DModel` configuration (`config.json`), restricted to what dydiff reproduces
//! exactly (docs/network.md, “Configuration keys”): the supported keys with any valid value,
//! every other key diffusers writes only at its default value, and an error naming the key and
//! value for anything else.

use crate::backend::PadMode;
use crate::error::{Error, Result};
use serde_json::{json, Map, Value};

/// The supported configuration of a `UNet2DModel`.
#[derive(Clone, Debug, PartialEq)]
pub struct UNet2DConfig {
    pub sample_size: Value,
    pub in_channels: usize,
    pub out_channels: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub time_embedding_dim: Option<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    /// `"UNetMidBlock2D"` or none.
    pub mid_block: bool,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub mid_block_scale_factor: f64,
    pub downsample_padding: usize,
    pub dropout: f64,
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: usize,
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub add_attention: bool,
    /// What every convolution's padding holds. Not a key of diffusers' `config.json` (whose
    /// `Conv2d` layers are always built with zeros): it comes from the model folder's
    /// `dydiff.json` (`padding_mode`, docs/model-folder.md); diffusers users set
    /// `padding_mode = "circular"` on the network's `Conv2d` layers after loading it.
    pub padding_mode: PadMode,
}

impl Default for UNet2DConfig {
    /// diffusers' defaults.
    fn default() -> Self {
        UNet2DConfig {
            sample_size: Value::Null,
            in_channels: 3,
            out_channels: 3,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            time_embedding_dim: None,
            down_block_types: [
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            up_block_types: [
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            mid_block: true,
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            dropout: 0.0,
            attention_head_dim: Some(8),
            norm_num_groups: 32,
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            add_attention: true,
            padding_mode: PadMode::Zeros,
        }
    }
}

/// Keys diffusers writes that dydiff supports only at one value.
const FIXED: &[(&str, &str)] = &[
    ("center_input_sample", "false"),
    ("time_embedding_type", "\"positional\""),
    ("act_fn", "\"silu\""),
    ("resnet_time_scale_shift", "\"default\""),
    ("downsample_type", "\"conv\""),
    ("upsample_type", "\"conv\""),
    ("class_embed_type", "null"),
    ("num_class_embeds", "null"),
    ("num_train_timesteps", "null"),
];

fn bad(key: &str, v: &Value, what: &str) -> Error {
    Error::Config(format!("config key {key} = {v}: {what}"))
}

fn as_usize(key: &str, v: &Value) -> Result<usize> {
    v.as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| bad(key, v, "expected a non-negative integer"))
}
fn as_f64(key: &str, v: &Value) -> Result<f64> {
    v.as_f64().ok_or_else(|| bad(key, v, "expected a number"))
}
fn as_bool(key: &str, v: &Value) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| bad(key, v, "expected true or false"))
}
fn opt_usize(key: &str, v: &Value) -> Result<Option<usize>> {
    if v.is_null() {
        Ok(None)
    } else {
        as_usize(key, v).map(Some)
    }
}
fn strings(key: &str, v: &Value) -> Result<Vec<String>> {
    v.as_array()
        .and_then(|a| {
            a.iter()
                .map(|s| s.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| bad(key, v, "expected a list of strings"))
}

impl UNet2DConfig {
    /// Parses and validates a `config.json` object.
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Config("config is not a JSON object".into()))?;
        if obj.is_empty() {
            return Err(Error::Config(
                "config is an empty object {}; expected a UNet2DModel configuration (in_channels, out_channels, block_out_channels, block types, …)".into(),
            ));
        }
        let mut c = UNet2DConfig::default();
        for (key, val) in obj {
            let k = key.as_str();
            match k {
                "_class_name" => {
                    if val != "UNet2DModel" {
                        return Err(bad(k, val, "only UNet2DModel is supported"));
                    }
                }
                "_diffusers_version" | "_name_or_path" => {}
                "sample_size" => {
                    let ok = val.is_null()
                        || val.is_u64()
                        || val
                            .as_array()
                            .is_some_and(|a| a.len() == 2 && a.iter().all(Value::is_u64));
                    if !ok {
                        return Err(bad(k, val, "expected an integer, [height, width] or null"));
                    }
                    c.sample_size = val.clone();
                }
                "in_channels" => c.in_channels = as_usize(k, val)?,
                "out_channels" => c.out_channels = as_usize(k, val)?,
                "flip_sin_to_cos" => c.flip_sin_to_cos = as_bool(k, val)?,
                "freq_shift" => c.freq_shift = as_f64(k, val)?,
                "time_embedding_dim" => c.time_embedding_dim = opt_usize(k, val)?,
                "down_block_types" => c.down_block_types = strings(k, val)?,
                "up_block_types" => c.up_block_types = strings(k, val)?,
                "mid_block_type" => {
                    c.mid_block = match val {
                        Value::Null => false,
                        Value::String(s) if s == "UNetMidBlock2D" => true,
                        _ => {
                            return Err(bad(k, val, "only \"UNetMidBlock2D\" or null is supported"))
                        }
                    }
                }
                "block_out_channels" => {
                    c.block_out_channels = val
                        .as_array()
                        .and_then(|a| {
                            a.iter()
                                .map(|x| x.as_u64().map(|x| x as usize))
                                .collect::<Option<Vec<_>>>()
                        })
                        .ok_or_else(|| bad(k, val, "expected a list of integers"))?
                }
                "layers_per_block" => c.layers_per_block = as_usize(k, val)?,
                "mid_block_scale_factor" => c.mid_block_scale_factor = as_f64(k, val)?,
                "downsample_padding" => c.downsample_padding = as_usize(k, val)?,
                "dropout" => c.dropout = as_f64(k, val)?,
                "attention_head_dim" => c.attention_head_dim = opt_usize(k, val)?,
                "norm_num_groups" => c.norm_num_groups = as_usize(k, val)?,
                "attn_norm_num_groups" => c.attn_norm_num_groups = opt_usize(k, val)?,
                "norm_eps" => c.norm_eps = as_f64(k, val)?,
                "add_attention" => c.add_attention = as_bool(k, val)?,
                _ => match FIXED.iter().find(|(name, _)| *name == k) {
                    Some((_, default)) => {
                        let d: Value =
                            serde_json::from_str(default).expect("FIXED defaults are valid JSON");
                        if *val != d {
                            return Err(bad(k, val, &format!("only {default} is supported")));
                        }
                    }
                    None => return Err(bad(k, val, "unknown key")),
                },
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the values against each other.
    pub fn validate(&self) -> Result<()> {
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return Err(Error::Config(
                "config key block_out_channels = []: expected at least one level".into(),
            ));
        }
        for (key, types, allowed) in [
            (
                "down_block_types",
                &self.down_block_types,
                ["DownBlock2D", "AttnDownBlock2D"],
            ),
            (
                "up_block_types",
                &self.up_block_types,
                ["UpBlock2D", "AttnUpBlock2D"],
            ),
        ] {
            if types.len() != levels {
                return Err(Error::Config(format!(
                    "config key {key} has {} entries but block_out_channels has {levels}",
                    types.len()
                )));
            }
            if let Some(t) = types.iter().find(|t| !allowed.contains(&t.as_str())) {
                return Err(Error::Config(format!(
                    "config key {key}: unsupported block type {t:?} (supported: {allowed:?})"
                )));
            }
        }
        let positive = [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("layers_per_block", self.layers_per_block),
            ("norm_num_groups", self.norm_num_groups),
        ];
        if let Some((k, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!(
                "config key {k} = 0: expected a positive integer"
            )));
        }
        let ch = &self.block_out_channels;
        if ch.contains(&0) {
            return Err(Error::Config(format!(
                "config key block_out_channels = {ch:?}: expected positive integers"
            )));
        }
        for (key, v) in [
            ("attention_head_dim", self.attention_head_dim),
            ("time_embedding_dim", self.time_embedding_dim),
            ("attn_norm_num_groups", self.attn_norm_num_groups),
        ] {
            if v == Some(0) {
                return Err(Error::Config(format!(
                    "config key {key} = 0: expected a positive integer or null"
                )));
            }
        }
        if ch[0] < 2 {
            return Err(Error::Config(format!("config key block_out_channels = {ch:?}: expected at least 2 channels at the first level (for the timestep embedding)")));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(Error::Config(format!(
                "config key norm_eps = {}: expected a positive number",
                self.norm_eps
            )));
        }
        if !self.mid_block_scale_factor.is_normal() {
            return Err(Error::Config(format!(
                "config key mid_block_scale_factor = {}: expected a non-zero number (its output is divided by it)",
                self.mid_block_scale_factor
            )));
        }
        if self.downsample_padding > 1 {
            return Err(Error::Config(format!(
                "config key downsample_padding = {}: expected 0 or 1 (a larger padding changes the downsampled size, and the skip connections would not line up)",
                self.downsample_padding
            )));
        }
        if let Some(bad) = ch
            .iter()
            .find(|&&c| !c.is_multiple_of(self.norm_num_groups))
        {
            return Err(Error::Config(format!(
                "config key norm_num_groups = {}: expected a divisor of every entry of block_out_channels {ch:?}, found {bad} channels",
                self.norm_num_groups
            )));
        }
        // Channels of each attention block: down level i, up level i (widths in reverse), middle.
        let last = ch[levels - 1];
        let mut attention = self
            .down_block_types
            .iter()
            .zip(ch)
            .chain(self.up_block_types.iter().zip(ch.iter().rev()))
            .filter(|(t, _)| t.starts_with("Attn"))
            .map(|(_, &c)| c)
            .chain((self.mid_block && self.add_attention).then_some(last));
        if let Some(head) = self.attention_head_dim {
            if let Some(c) = attention.find(|&c| c < head) {
                return Err(Error::Config(format!(
                    "config key attention_head_dim = {head}: expected at most the {c} channels of an attention block"
                )));
            }
        }
        if let Some(g) = self.attn_norm_num_groups {
            if self.mid_block && self.add_attention && !last.is_multiple_of(g) {
                return Err(Error::Config(format!(
                    "config key attn_norm_num_groups = {g}: expected a divisor of the {last} channels of the middle block's attention"
                )));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "config key dropout = {}: expected 0 ≤ dropout < 1",
                self.dropout
            )));
        }
        Ok(())
    }

    /// The embedding width of the timestep MLP.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels[0] * 4)
    }

    /// Spatial sizes must be divisible by this for the skip connections to line up.
    pub fn size_multiple(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// The full `config.json` diffusers writes for this model.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("_class_name".into(), json!("UNet2DModel"));
        m.insert("_diffusers_version".into(), json!("0.42.1"));
        for (k, v) in FIXED {
            m.insert(
                (*k).into(),
                serde_json::from_str(v).expect("FIXED defaults are valid JSON"),
            );
        }
        m.insert("sample_size".into(), self.sample_size.clone());
        m.insert("in_channels".into(), json!(self.in_channels));
        m.insert("out_channels".into(), json!(self.out_channels));
        m.insert("flip_sin_to_cos".into(), json!(self.flip_sin_to_cos));
        m.insert(
            "freq_shift".into(),
            if self.freq_shift.fract() == 0.0 {
                json!(self.freq_shift as i64)
            } else {
                json!(self.freq_shift)
            },
        );
        m.insert("time_embedding_dim".into(), json!(self.time_embedding_dim));
        m.insert("down_block_types".into(), json!(self.down_block_types));
        m.insert("up_block_types".into(), json!(self.up_block_types));
        m.insert(
            "mid_block_type".into(),
            if self.mid_block {
                json!("UNetMidBlock2D")
            } else {
                Value::Null
            },
        );
        m.insert("block_out_channels".into(), json!(self.block_out_channels));
        m.insert("layers_per_block".into(), json!(self.layers_per_block));
        m.insert(
            "mid_block_scale_factor".into(),
            json!(self.mid_block_scale_factor),
        );
        m.insert("downsample_padding".into(), json!(self.downsample_padding));
        m.insert("dropout".into(), json!(self.dropout));
        m.insert("attention_head_dim".into(), json!(self.attention_head_dim));
        m.insert("norm_num_groups".into(), json!(self.norm_num_groups));
        m.insert(
            "attn_norm_num_groups".into(),
            json!(self.attn_norm_num_groups),
        );
        m.insert("norm_eps".into(), json!(self.norm_eps));
        m.insert("add_attention".into(), json!(self.add_attention));
        Value::Object(m)
    }
}
