//! Layers as plain structs of tensors, named exactly like diffusers' state-dict keys, so that
//! loading and saving is a walk over names.
//!
//! Every parameter is created through a [`ParamBuilder`], which either takes it from a loaded
//! weight file (checking its shape) or initialises it, and remembers its name for saving.

pub mod blocks;
pub mod config;
pub mod memory;
pub mod unet2d;

pub use blocks::Dropout;
pub use config::UNet2DConfig;
pub use unet2d::UNet2D;

use crate::backend::{Device, PadMode, Storage};
use crate::error::{Error, Result};
use crate::io::safetensors::NamedArrays;
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::path::PathBuf;

/// How a fresh parameter is initialised (PyTorch's defaults for the layer).
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// `U(−1/√fan_in, 1/√fan_in)`: `nn.Conv2d` and `nn.Linear` weights and biases.
    Uniform {
        fan_in: usize,
    },
    Ones,
    Zeros,
}

/// A small counter-based generator (SplitMix64) for parameter initialisation.
#[derive(Clone, Debug)]
pub struct InitRng(u64);

impl InitRng {
    pub fn new(seed: u64) -> Self {
        InitRng(seed)
    }
    /// A uniform value in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

enum Source {
    File {
        path: PathBuf,
        arrays: NamedArrays,
    },
    Init(InitRng),
    /// Storages already on the device, by name (the optimizer's updated parameters); as
    /// constants (no gradient reaches them) if `frozen`.
    Storages {
        map: HashMap<String, Storage>,
        frozen: bool,
    },
}

/// Creates the parameters of a network, from a weight file or freshly initialised.
pub struct ParamBuilder {
    source: Source,
    device: Device,
    created: Vec<(String, Tensor)>,
    /// Dropout layers numbered so far.
    layers: u32,
}

impl ParamBuilder {
    /// Parameters taken from `arrays`, read from `path` (named in errors).
    pub fn from_arrays(path: PathBuf, arrays: NamedArrays, device: Device) -> Self {
        ParamBuilder {
            source: Source::File { path, arrays },
            device,
            created: Vec::new(),
            layers: 0,
        }
    }

    /// Parameters on existing storages, by name (every one must be used, shapes are checked).
    pub fn from_storages(storages: HashMap<String, Storage>, device: Device) -> Self {
        ParamBuilder {
            source: Source::Storages {
                map: storages,
                frozen: false,
            },
            device,
            created: Vec::new(),
            layers: 0,
        }
    }

    /// [`ParamBuilder::from_storages`] as constants: a frozen network, through which gradients
    /// flow to its inputs but never to its weights.
    pub fn frozen(storages: HashMap<String, Storage>, device: Device) -> Self {
        ParamBuilder {
            source: Source::Storages {
                map: storages,
                frozen: true,
            },
            device,
            created: Vec::new(),
            layers: 0,
        }
    }

    /// Freshly initialised parameters, reproducible from `seed`.
    pub fn init(seed: u64, device: Device) -> Self {
        ParamBuilder {
            source: Source::Init(InitRng::new(seed)),
            device,
            created: Vec::new(),
            layers: 0,
        }
    }

    /// The number of the next dropout layer (0, 1, … in order of construction).
    pub fn next_layer(&mut self) -> u32 {
        self.layers += 1;
        self.layers - 1
    }

    /// The parameter `name` of `shape`.
    pub fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        if let Source::Storages { map, frozen } = &mut self.source {
            let s = map.remove(name).ok_or_else(|| {
                Error::Config(format!(
                    "parameter {name} is missing (expected shape {shape:?})"
                ))
            })?;
            let t = if *frozen {
                Tensor::from_storage(s, shape)?
            } else {
                Tensor::param_from_storage(s, shape)?
            };
            self.created.push((name.to_string(), t.clone()));
            return Ok(t);
        }
        let data = match &mut self.source {
            Source::File { path, arrays } => {
                let (found, data) = arrays.remove(name).ok_or_else(|| {
                    Error::bad_file(
                        path,
                        format!("tensor {name} is missing (expected shape {shape:?})"),
                    )
                })?;
                if found != shape {
                    return Err(Error::bad_file(
                        path,
                        format!("tensor {name}: expected shape {shape:?}, found {found:?}"),
                    ));
                }
                data
            }
            Source::Init(rng) => {
                let n: usize = shape.iter().product();
                match init {
                    Init::Ones => vec![1.0; n],
                    Init::Zeros => vec![0.0; n],
                    Init::Uniform { fan_in } => {
                        let a = 1.0 / (fan_in.max(1) as f64).sqrt();
                        (0..n)
                            .map(|_| ((2.0 * rng.uniform() - 1.0) * a) as f32)
                            .collect()
                    }
                }
            }
            Source::Storages { .. } => unreachable!("handled above"),
        };
        let t = Tensor::param(data, shape, self.device)?;
        self.created.push((name.to_string(), t.clone()));
        Ok(t)
    }

    /// Ends construction: every tensor of the file must have been used.
    pub fn finish(self) -> Result<Vec<(String, Tensor)>> {
        if let Source::Storages { map, .. } = &self.source {
            if let Some(name) = map.keys().min() {
                return Err(Error::Config(format!("unexpected parameter {name}")));
            }
        }
        if let Source::File { path, arrays } = &self.source {
            if let Some(name) = arrays.keys().min() {
                return Err(Error::bad_file(
                    path,
                    format!("unexpected tensor {name} (not part of this configuration)"),
                ));
            }
        }
        Ok(self.created)
    }
}

/// `torch.nn.Conv2d` with a square kernel and bias.
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub stride: usize,
    pub pad: [usize; 4],
    /// `padding_mode`: zeros unless set by [`Conv2d::with_pad_mode`].
    pub pad_mode: PadMode,
}

impl Conv2d {
    pub fn new(
        b: &mut ParamBuilder,
        prefix: &str,
        ci: usize,
        co: usize,
        k: usize,
        stride: usize,
        pad: [usize; 4],
    ) -> Result<Self> {
        let fan_in = ci * k * k;
        Ok(Conv2d {
            weight: b.get(
                &format!("{prefix}.weight"),
                &[co, ci, k, k],
                Init::Uniform { fan_in },
            )?,
            bias: b.get(&format!("{prefix}.bias"), &[co], Init::Uniform { fan_in })?,
            stride,
            pad,
            pad_mode: PadMode::Zeros,
        })
    }
    /// The same layer with `padding_mode = mode`.
    pub fn with_pad_mode(self, mode: PadMode) -> Self {
        Conv2d {
            pad_mode: mode,
            ..self
        }
    }
    /// `(stride, padding, padding mode)`, as [`Tensor::conv2d_fused`] takes them.
    pub fn geometry(&self) -> (usize, [usize; 4], PadMode) {
        (self.stride, self.pad, self.pad_mode)
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(
            &self.weight,
            Some(&self.bias),
            self.stride,
            self.pad,
            self.pad_mode,
        )
    }
}

/// `torch.nn.Linear` with bias.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(b: &mut ParamBuilder, prefix: &str, fan_in: usize, out: usize) -> Result<Self> {
        Ok(Linear {
            weight: b.get(
                &format!("{prefix}.weight"),
                &[out, fan_in],
                Init::Uniform { fan_in },
            )?,
            bias: b.get(&format!("{prefix}.bias"), &[out], Init::Uniform { fan_in })?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, Some(&self.bias))
    }
}

/// `torch.nn.GroupNorm` with affine parameters.
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: usize,
    pub eps: f32,
}

impl GroupNorm {
    /// `key` names the configuration entry that set `groups`, for the error message.
    pub fn new(
        b: &mut ParamBuilder,
        prefix: &str,
        channels: usize,
        groups: usize,
        eps: f32,
        key: &str,
    ) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(Error::Config(format!(
                "{key} = {groups} does not divide the {channels} channels of {prefix}"
            )));
        }
        Ok(GroupNorm {
            weight: b.get(&format!("{prefix}.weight"), &[channels], Init::Ones)?,
            bias: b.get(&format!("{prefix}.bias"), &[channels], Init::Zeros)?,
            groups,
            eps,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.group_norm(self.groups, &self.weight, &self.bias, self.eps)
    }
    /// `silu(self.forward(x))`, fused when no gradient is recorded.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        x.group_norm_silu(self.groups, &self.weight, &self.bias, self.eps)
    }
}
