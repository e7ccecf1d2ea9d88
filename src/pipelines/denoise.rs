//! `dydiff denoise` (docs/cli.md, “denoise”): one evaluation of a diffusers `UNet2DModel` on an
//! `(N, in_channels, H, W)` float32 array at one timestep, for interop and debugging.

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::io::npy;
use crate::io::outputs::Outputs;
use crate::memory;
use crate::nn::UNet2D;
use crate::tensor::Tensor;
use std::path::PathBuf;

/// Options of `dydiff denoise`: its flags, declared here once (the doc comments are the `--help`).
#[derive(Clone, Debug, clap::Args)]
pub struct DenoiseOptions {
    /// Model folder with config.json and diffusion_pytorch_model.safetensors (as written by
    /// diffusers' save_pretrained).
    #[arg(long)]
    pub unet: PathBuf,
    /// Network input, float32 .npy of shape (N, in_channels, H, W).
    #[arg(long)]
    pub input: PathBuf,
    /// Diffusion timestep given to the network's timestep embedding (e.g. 0–999); any
    /// finite float32.
    #[arg(long)]
    pub timestep: f32,
    /// Output .npy in an existing directory, written atomically.
    #[arg(long)]
    pub out: PathBuf,
    /// Where the network runs (the global `--device`).
    #[arg(skip = Device::Cpu)]
    pub device: Device,
}

/// Reads an `(N, C, H, W)` network input and checks it against the model.
pub fn read_input(path: &std::path::Path, model: &UNet2D) -> Result<npy::Array> {
    let a = npy::read(path)?;
    let c = &model.config;
    let m = c.size_multiple();
    let ok = matches!(*a.shape, [n, ch, h, w] if n > 0 && ch == c.in_channels && h > 0 && w > 0 && h % m == 0 && w % m == 0);
    if !ok {
        return Err(Error::bad_file(
            path,
            format!(
                "expected shape (N, {}, H, W) with N ≥ 1 and H, W positive multiples of {m}, found {:?}",
                c.in_channels, a.shape
            ),
        ));
    }
    npy::check_finite(path, &a)?;
    Ok(a)
}

/// Runs the network once and writes its output atomically (its location checked first).
pub fn run(o: &DenoiseOptions) -> Result<()> {
    let mut outputs = Outputs::new();
    let out = outputs.npy_file("--out", &o.out)?;
    outputs.check_input("--unet", &o.unet)?;
    outputs.check_input("--input", &o.input)?;
    if !o.timestep.is_finite() {
        return Err(Error::Invalid(format!(
            "--timestep: expected a finite number, found {}",
            o.timestep
        )));
    }
    let model = UNet2D::from_pretrained(&o.unet, o.device)?;
    let a = read_input(&o.input, &model)?;
    let n = a.shape[0];
    let (h, w) = (a.shape[2], a.shape[3]);
    let output = memory::array(&[n, model.config.out_channels, h, w], 4);
    memory::ensure(
        &format!(
            "{}: the network's output and activations for {n} fields of {h}×{w}",
            o.input.display()
        ),
        // the output, the bytes of its file, and the activations
        memory::sum(&[output, output, model.config.min_activation_bytes(n, h, w)]),
    )?;
    let far = a.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let x = Tensor::from_vec(a.data, &a.shape, o.device)?;
    let t = Tensor::from_vec(vec![o.timestep; n], &[n], o.device)?;
    let y = model.forward(&x, &t)?;
    let values = y.to_vec()?;
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(Error::Invalid(format!(
            "the network output holds {bad} non-finite values (of {}) for input {} (values up to {far:.3e}) at --timestep {}: expected inputs the network keeps within float32",
            values.len(),
            o.input.display(),
            o.timestep
        )));
    }
    outputs.write(out, &npy::encode(y.shape(), &values))?;
    outputs.commit()
}
