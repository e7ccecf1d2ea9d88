//! diffusers' `UNet2DModel` (docs/network.md): timestep MLP, `conv_in`, down blocks, middle block,
//! up blocks with skip connections, `conv_norm_out` → SiLU → `conv_out`.

use super::blocks::{BlockSettings, DownBlock, Dropout, MidBlock, UpBlock};
use super::{Conv2d, GroupNorm, Linear, ParamBuilder, UNet2DConfig};
use crate::backend::{Device, PadMode};
use crate::error::{Error, Result};
use crate::io::{atomic, safetensors};
use crate::tensor::{ConvTail, Tensor};
use std::path::Path;

/// File names of a diffusers model folder.
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// diffusers' half-precision variant of the weights (`save_pretrained(variant="fp16")`).
pub const FP16_WEIGHTS_FILE: &str = "diffusion_pytorch_model.fp16.safetensors";
/// diffusers' older, pickled weights, which dydiff does not read.
pub const PICKLE_WEIGHTS_FILE: &str = "diffusion_pytorch_model.bin";

/// The weights file of a diffusers folder: the safetensors file, else its fp16 variant (read as
/// float32); pickled weights alone are refused with the command that converts them.
fn weights_file(dir: &Path) -> Result<std::path::PathBuf> {
    let [main, half, pickle] =
        [WEIGHTS_FILE, FP16_WEIGHTS_FILE, PICKLE_WEIGHTS_FILE].map(|f| dir.join(f));
    if main.exists() || !(half.exists() || pickle.exists()) {
        return Ok(main);
    }
    if half.exists() {
        return Ok(half);
    }
    Err(Error::bad_file(
        &pickle,
        format!("PyTorch pickle weights, which dydiff does not read (unpickling can run code); convert them once with `python python/convert_bin_weights.py {}` (writes {WEIGHTS_FILE} beside them)", dir.display()),
    ))
}

/// The denoiser network.
pub struct UNet2D {
    pub config: UNet2DConfig,
    conv_in: Conv2d,
    linear_1: Linear,
    linear_2: Linear,
    down: Vec<DownBlock>,
    mid: Option<MidBlock>,
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    /// Every parameter with its diffusers name.
    params: Vec<(String, Tensor)>,
}

impl UNet2D {
    /// Builds the network of `config`, its parameters from `b`.
    pub fn new(config: UNet2DConfig, mut b: ParamBuilder) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let ch = &c.block_out_channels;
        let levels = ch.len();
        let temb = c.time_embed_dim();
        let s = BlockSettings {
            temb,
            groups: c.norm_num_groups,
            eps: c.norm_eps as f32,
            dropout: c.dropout as f32,
            pad_mode: c.padding_mode,
        };
        let conv_in = Conv2d::new(&mut b, "conv_in", c.in_channels, ch[0], 3, 1, [1; 4])?
            .with_pad_mode(s.pad_mode);
        let linear_1 = Linear::new(&mut b, "time_embedding.linear_1", ch[0], temb)?;
        let linear_2 = Linear::new(&mut b, "time_embedding.linear_2", temb, temb)?;
        let head_dim = |level_channels: usize| c.attention_head_dim.unwrap_or(level_channels);
        let mut down = Vec::new();
        let mut out_ch = ch[0];
        for (i, t) in c.down_block_types.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = ch[i];
            let attn = (t == "AttnDownBlock2D").then(|| head_dim(out_ch));
            down.push(DownBlock::new(
                &mut b,
                &format!("down_blocks.{i}"),
                in_ch,
                out_ch,
                c.layers_per_block,
                attn,
                i + 1 < levels,
                c.downsample_padding,
                &s,
            )?);
        }
        let mid = if c.mid_block {
            let last = ch[levels - 1];
            Some(MidBlock::new(
                &mut b,
                last,
                head_dim(last),
                c.attn_norm_num_groups,
                c.add_attention,
                c.mid_block_scale_factor as f32,
                &s,
            )?)
        } else {
            None
        };
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::new();
        let mut out_ch = rev[0];
        for (i, t) in c.up_block_types.iter().enumerate() {
            let prev = out_ch;
            out_ch = rev[i];
            let in_ch = rev[(i + 1).min(levels - 1)];
            let attn = (t == "AttnUpBlock2D").then(|| head_dim(out_ch));
            up.push(UpBlock::new(
                &mut b,
                &format!("up_blocks.{i}"),
                in_ch,
                out_ch,
                prev,
                c.layers_per_block + 1,
                attn,
                i + 1 < levels,
                &s,
            )?);
        }
        let norm_out = GroupNorm::new(
            &mut b,
            "conv_norm_out",
            ch[0],
            c.norm_num_groups,
            s.eps,
            "norm_num_groups",
        )?;
        let conv_out = Conv2d::new(&mut b, "conv_out", ch[0], c.out_channels, 3, 1, [1; 4])?
            .with_pad_mode(s.pad_mode);
        let params = b.finish()?;
        Ok(UNet2D {
            config,
            conv_in,
            linear_1,
            linear_2,
            down,
            mid,
            up,
            norm_out,
            conv_out,
            params,
        })
    }

    /// A freshly initialised network (PyTorch's default initialisation), reproducible by seed.
    pub fn init(config: UNet2DConfig, seed: u64, device: Device) -> Result<Self> {
        UNet2D::new(config, ParamBuilder::init(seed, device))
    }

    /// Loads `DIR/config.json` and `DIR/diffusion_pytorch_model.safetensors` as written by
    /// diffusers' `save_pretrained`.
    pub fn from_pretrained(dir: &Path, device: Device) -> Result<Self> {
        UNet2D::from_pretrained_padded(dir, device, PadMode::Zeros)
    }

    /// [`UNet2D::from_pretrained`] with every convolution's `padding_mode` set to `pad_mode`
    /// (a model folder's `dydiff.json` gives it; diffusers' config has no such key).
    pub fn from_pretrained_padded(dir: &Path, device: Device, pad_mode: PadMode) -> Result<Self> {
        let config = UNet2DConfig {
            padding_mode: pad_mode,
            ..UNet2D::read_config(dir)?
        };
        let w_path = weights_file(dir)?;
        let arrays = safetensors::read(&w_path)?;
        UNet2D::new(config, ParamBuilder::from_arrays(w_path, arrays, device))
    }

    /// `DIR/config.json` of a folder [`UNet2D::from_pretrained`] reads; an error names the folder
    /// or the file and what is wrong.
    pub fn read_config(dir: &Path) -> Result<UNet2DConfig> {
        if !dir.is_dir() {
            return Err(Error::bad_file(dir, "model folder not found (expected a directory with config.json and diffusion_pytorch_model.safetensors)"));
        }
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(&cfg_path, format!("not valid JSON: {e}")))?;
        UNet2DConfig::from_json(&value).map_err(|e| Error::bad_file(&cfg_path, e.to_string()))
    }

    /// Whether `dir` holds weights in any form diffusers writes (safetensors, its fp16 variant,
    /// or pickle).
    pub fn has_weights(dir: &Path) -> bool {
        [WEIGHTS_FILE, FP16_WEIGHTS_FILE, PICKLE_WEIGHTS_FILE]
            .iter()
            .any(|f| dir.join(f).exists())
    }

    /// Writes the folder diffusers' `from_pretrained` reads, atomically file by file.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (name, bytes) in self.pretrained_files()? {
            atomic::write(&dir.join(name), &bytes)?;
        }
        Ok(())
    }

    /// The names of the files [`UNet2D::pretrained_files`] gives, in its order.
    pub const PRETRAINED_FILES: [&'static str; 2] = [WEIGHTS_FILE, CONFIG_FILE];

    /// The files of the folder [`UNet2D::save_pretrained`] writes, by name and content: the
    /// weights, then `config.json`.
    pub fn pretrained_files(&self) -> Result<[(&'static str, Vec<u8>); 2]> {
        let mut named = Vec::with_capacity(self.params.len());
        for (name, t) in &self.params {
            named.push((name.clone(), t.shape().to_vec(), t.to_vec()?));
        }
        let weights = safetensors::encode(
            Path::new(WEIGHTS_FILE),
            &named,
            safetensors::DIFFUSERS_METADATA,
        )?;
        let text = serde_json::to_string_pretty(&self.config.to_json()).expect("config serialises");
        Ok([(WEIGHTS_FILE, weights), (CONFIG_FILE, text.into_bytes())])
    }

    /// The same network with its weights as constants (shared, not copied): gradients flow
    /// through it to its inputs, never into its weights.
    pub fn frozen(&self) -> Result<UNet2D> {
        let map = self
            .params
            .iter()
            .map(|(n, t)| (n.clone(), t.storage().clone()))
            .collect();
        let device = self.params.first().map_or(Device::Cpu, |(_, t)| t.device());
        UNet2D::new(self.config.clone(), ParamBuilder::frozen(map, device))
    }

    /// Every parameter with its diffusers name.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Number of scalar parameters.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|(_, t)| t.elem_count()).sum()
    }

    /// `ε̂ = net(x, t)` for `x (N, in_channels, H, W)` and one timestep per sample `t (N)`
    /// (any real value: the sinusoidal embedding takes it as it is), without dropout (PyTorch's
    /// evaluation mode).
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.forward_with(x, t, None)
    }

    /// [`UNet2D::forward`] with dropout acting in every resnet block at the network's
    /// `dropout` probability when `drop` is given (training, or Monte-Carlo dropout at
    /// inference), its masks drawn as [`Dropout`] says.
    pub fn forward_with(&self, x: &Tensor, t: &Tensor, drop: Option<&Dropout>) -> Result<Tensor> {
        let c = &self.config;
        let (n, ci, h, w) = match *x.shape() {
            [n, ci, h, w] => (n, ci, h, w),
            ref s => {
                return Err(Error::shape(
                    "unet",
                    format!("input of shape {s:?} is not (N, C, H, W)"),
                ))
            }
        };
        let m = c.size_multiple();
        if ci != c.in_channels || h % m != 0 || w % m != 0 || h == 0 || w == 0 {
            return Err(Error::shape(
                "unet",
                format!(
                    "expected (N, {}, H, W) with H and W positive multiples of {m}, found {:?}",
                    c.in_channels,
                    x.shape()
                ),
            ));
        }
        if t.shape() != [n] {
            return Err(Error::shape(
                "unet",
                format!("expected {n} timesteps, found shape {:?}", t.shape()),
            ));
        }
        let t_emb = t.timestep_embedding(
            c.block_out_channels[0],
            c.flip_sin_to_cos,
            c.freq_shift as f32,
        )?;
        let emb = self
            .linear_2
            .forward(&self.linear_1.forward(&t_emb)?.silu()?)?;
        let temb_act = emb.silu()?;
        std::mem::drop(emb);
        let mut h = self.conv_in.forward(x)?;
        let mut skips = vec![h.clone()];
        for d in &self.down {
            h = d.forward(h, &temb_act, &mut skips, drop)?;
        }
        if let Some(mid) = &self.mid {
            h = mid.forward(&h, &temb_act, drop)?;
        }
        for u in &self.up {
            debug_assert!(skips.len() >= u.num_skips());
            h = u.forward(h, &temb_act, &mut skips, drop)?;
        }
        // without a tape the output convolution normalises and activates as it loads
        let n = &self.norm_out;
        let tail = ConvTail {
            norm: Some((&n.weight, &n.bias, n.groups, n.eps)),
            silu: true,
            ..ConvTail::NONE
        };
        let c = &self.conv_out;
        match h.conv2d_fused(&c.weight, Some(&c.bias), c.geometry(), &tail)? {
            Some((y, _)) => Ok(y),
            None => c.forward(&n.forward_silu(&h)?),
        }
    }
}
