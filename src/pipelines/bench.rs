//! `dydiff bench unet` and `dydiff bench train`: time the network forward, or a whole training
//! step, on a model folder at a given batch and size, and report seconds, GFLOP/s, and a
//! per-operation breakdown (see [`crate::profile`]).

use super::train;
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::memory;
use crate::model::Model;
use crate::nn::{InitRng, UNet2D};
use crate::profile;
use crate::tensor::Tensor;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// Options of `dydiff bench unet` and `dydiff bench train`: their flags, declared here once (the
/// doc comments are the `--help`).
#[derive(Clone, Debug, clap::Args)]
pub struct BenchOptions {
    /// Model folder (config.json + diffusion_pytorch_model.safetensors); a folder with only
    /// config.json is timed with seeded random weights (the time does not depend on them).
    #[arg(long)]
    pub unet: PathBuf,
    /// Batch size, at least 1.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Spatial size (square), a positive multiple of the network's downsampling factor.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Timed repetitions (the median is reported), at least 1.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Untimed repetitions first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Where the network runs (the global `--device`).
    #[arg(skip = Device::Cpu)]
    pub device: Device,
}

/// Random values in [-1, 1) of `shape` (deterministic).
fn random(shape: &[usize], seed: u64, device: Device) -> Result<Tensor> {
    let mut rng = InitRng::new(seed);
    let data = (0..shape.iter().product::<usize>())
        .map(|_| (2.0 * rng.uniform() - 1.0) as f32)
        .collect();
    Tensor::from_vec(data, shape, device)
}

/// Checks the flags before anything is loaded.
fn validate(o: &BenchOptions) -> Result<()> {
    for (flag, v) in [("--batch", o.batch), ("--size", o.size), ("--reps", o.reps)] {
        if v == 0 {
            return Err(Error::Invalid(format!(
                "{flag}: expected at least 1, found 0"
            )));
        }
    }
    Ok(())
}

/// Loads the network and checks that the random batch, the activations and (for `training`)
/// the optimizer state fit: the field size must suit the network, and the arrays memory.
fn load(o: &BenchOptions, training: bool) -> Result<UNet2D> {
    validate(o)?;
    // a training step's weights reach the device through its optimizer state, once
    let device = if training { Device::Cpu } else { o.device };
    let model = if UNet2D::has_weights(&o.unet) {
        UNet2D::from_pretrained(&o.unet, device)?
    } else {
        // a network's time does not depend on its weights: a folder holding only config.json
        // is benchmarked with seeded random ones
        UNet2D::init(UNet2D::read_config(&o.unet)?, 0, device)?
    };
    let c = &model.config;
    let m = c.size_multiple();
    if !o.size.is_multiple_of(m) {
        return Err(Error::Invalid(format!(
            "--size {}: expected a multiple of {m}, the downsampling factor of the network in {}",
            o.size,
            o.unet.display()
        )));
    }
    let (b, h, w) = (o.batch, o.size, o.size);
    let input = memory::array(&[b, c.in_channels, h, w], 4);
    let output = memory::array(&[b, c.out_channels, h, w], 4);
    // Training adds the target, the gradients, Adam's two moments and the EMA.
    let state = memory::array(&[model.num_params(), 4], 4);
    let need = memory::sum(&[
        input,
        output,
        if training { output } else { Some(0) },
        if training { state } else { Some(0) },
        c.min_activation_bytes(b, h, w),
    ]);
    memory::ensure(
        &format!("--batch {b} --size {h}: the inputs and activations"),
        need,
    )?;
    Ok(model)
}

/// Runs `work` `warmup` times, once profiled, then `reps` times timed, each run waited for on the
/// device; builds the report. On a CUDA device the profiled run also times every kernel launch
/// (`kernels`: device time per kernel).
fn measure(
    o: &BenchOptions,
    params: usize,
    mut work: impl FnMut() -> Result<()>,
) -> Result<serde_json::Value> {
    let mut run = || -> Result<()> {
        work()?;
        o.device.synchronize()
    };
    for _ in 0..o.warmup {
        run()?;
    }
    // one profiled pass for the per-operation breakdown
    let gpu = match o.device {
        Device::Cuda(n) => Some(crate::backend::cuda::device(n)?),
        Device::Cpu => None,
    };
    profile::enable(true);
    if let Some(g) = &gpu {
        g.set_timing(true);
    }
    run()?;
    let ops = profile::totals();
    profile::enable(false);
    let kernels = match &gpu {
        Some(g) => {
            let k = g.kernel_times()?;
            g.set_timing(false);
            k
        }
        None => Vec::new(),
    };
    let mut times = Vec::with_capacity(o.reps);
    for _ in 0..o.reps {
        let start = Instant::now();
        run()?;
        times.push(start.elapsed().as_secs_f64());
    }
    let in_order = times.clone();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let flops: f64 = ops.values().map(|o| o.flops).sum();
    let breakdown: serde_json::Map<String, serde_json::Value> = ops
        .iter()
        .map(|(name, o)| {
            let rate = if o.seconds > 0.0 { o.flops / o.seconds / 1e9 } else { 0.0 };
            (name.to_string(), json!({"calls": o.calls, "seconds": o.seconds, "gflop": o.flops / 1e9, "gflops_per_s": rate}))
        })
        .collect();
    let kernels: serde_json::Map<String, serde_json::Value> = kernels
        .iter()
        .map(|k| {
            (
                k.name.clone(),
                json!({"launches": k.launches, "seconds": k.seconds}),
            )
        })
        .collect();
    let mut report = json!({
        "batch": o.batch, "height": o.size, "width": o.size,
        "threads": rayon::current_num_threads(),
        "params": params,
        "median_s": median, "min_s": times[0], "times_s": in_order,
        "gflop": flops / 1e9, "gflops_per_s": flops / median / 1e9,
        "ops": breakdown,
    });
    if let Some(g) = &gpu {
        report["kernels"] = serde_json::Value::Object(kernels);
        report["precision"] = json!(crate::backend::cuda::precision().name());
        report["peak_device_bytes"] = json!(g.memory_stats().peak_reserved_bytes);
    }
    Ok(report)
}

/// `dydiff bench unet`: the forward pass on random input at timestep 500.
pub fn run(o: &BenchOptions) -> Result<serde_json::Value> {
    let model = load(o, false)?;
    let x = random(
        &[o.batch, model.config.in_channels, o.size, o.size],
        0,
        o.device,
    )?;
    let t = Tensor::from_vec(vec![500.0; o.batch], &[o.batch], o.device)?;
    measure(o, model.num_params(), || model.forward(&x, &t).map(|_| ()))
}

/// `dydiff bench train`: one training step of `dydiff train` — forward, MSE loss against a
/// random target, backward, gradient clipping, AdamW with the weight EMA — on random input at
/// mixed timesteps, the network rebuilt on the new weights as in training.
pub fn run_train(o: &BenchOptions) -> Result<serde_json::Value> {
    let model = load(o, true)?;
    let c = model.config.clone();
    let x = random(&[o.batch, c.in_channels, o.size, o.size], 0, o.device)?;
    let y = random(&[o.batch, c.out_channels, o.size, o.size], 1, o.device)?;
    let ts: Vec<f32> = (0..o.batch).map(|i| (i * 997 % 1000) as f32).collect();
    let t = Tensor::from_vec(ts, &[o.batch], o.device)?;
    let mut state = train::State::fresh(&model, o.device)?;
    let params = model.num_params();
    // the state holds the weights now: the loaded copy is not kept through the steps
    drop(model);
    let mut unet = state.network(&c, o.device, train::Weights::Current)?;
    let settings = train::OptimizerSettings {
        weight_decay: 0.0,
        clip: 1.0,
        ema_decay: 0.999,
    };
    measure(o, params, || {
        state.train_step(
            &unet,
            |u| u.forward(&x, &t)?.mse(&y),
            1e-4,
            &settings,
            o.device,
        )?;
        unet = state.network(&c, o.device, train::Weights::Current)?;
        Ok(())
    })
}

/// Measures the machine's fp32 fused multiply-add peak: twelve independent FMA chains in the
/// widest vectors the CPU has, on one thread and on every thread of the pool at once.
pub fn peak() -> Result<serde_json::Value> {
    let (isa, per_call) = fma_kernel_name();
    let iters = 20_000_000usize;
    let flops = |calls: usize| (calls * iters) as f64 * per_call;
    let one = {
        let start = Instant::now();
        std::hint::black_box(fma_chains(iters));
        flops(1) / start.elapsed().as_secs_f64() / 1e9
    };
    let threads = rayon::current_num_threads();
    let start = Instant::now();
    rayon::broadcast(|_| std::hint::black_box(fma_chains(iters)));
    let all = flops(threads) / start.elapsed().as_secs_f64() / 1e9;
    Ok(
        json!({"isa": isa, "gflops_per_s_one_thread": one, "threads": threads, "gflops_per_s_all_threads": all}),
    )
}

/// The instruction set used by [`fma_chains`] and the FLOPs of one of its iterations.
fn fma_kernel_name() -> (&'static str, f64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return ("avx512f", 12.0 * 16.0 * 2.0);
        }
        if std::is_x86_feature_detected!("fma") {
            return ("avx2+fma", 12.0 * 8.0 * 2.0);
        }
    }
    ("scalar", 12.0 * 2.0)
}

fn fma_chains(iters: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f")]
        unsafe fn v512(iters: usize) -> f32 {
            let mut acc = [_mm512_set1_ps(0.0); 12];
            let (a, b) = (_mm512_set1_ps(0.999), _mm512_set1_ps(0.001));
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = _mm512_fmadd_ps(*x, a, b);
                }
            }
            acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn v256(iters: usize) -> f32 {
            let mut acc = [_mm256_set1_ps(0.0); 12];
            let (a, b) = (_mm256_set1_ps(0.999), _mm256_set1_ps(0.001));
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = _mm256_fmadd_ps(*x, a, b);
                }
            }
            let mut out = [0.0f32; 8];
            acc.iter()
                .map(|&x| {
                    _mm256_storeu_ps(out.as_mut_ptr(), x);
                    out.iter().sum::<f32>()
                })
                .sum()
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { v512(iters) };
        }
        if std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { v256(iters) };
        }
    }
    let mut acc = [0.0f32; 12];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = x.mul_add(0.999, 0.001);
        }
    }
    acc.iter().sum()
}

/// Options of `dydiff bench noise`: its flags, declared here once (the doc comments are the
/// `--help`).
#[derive(Clone, Debug, clap::Args)]
pub struct NoiseOptions {
    /// Model folder (dydiff.json, scheduler/, unet/).
    #[arg(long)]
    pub model: PathBuf,
    /// Sequences (N, L, C, H, W) in data space, L ≥ history + future, float32 .npy/.npz.
    #[arg(long)]
    pub data: PathBuf,
    /// Timesteps t, comma-separated, each below the schedule's length.
    #[arg(long, value_delimiter = ',', default_value = "50,250,500,750,950")]
    pub timesteps: Vec<usize>,
    /// Windows per batch, at least 1.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Batches per timestep, 1 to 1000.
    #[arg(long, default_value_t = 4)]
    pub batches: u32,
    /// Seed of the windows and the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the network runs (the global `--device`).
    #[arg(skip = Device::Cpu)]
    pub device: Device,
}

/// `dydiff bench noise`: the noise-prediction error of a model folder at fixed timesteps (see
/// [`train::noise_error`]), as JSON: per timestep the mean squared error per
/// diffused frame, over the future frames and over all diffused frames.
pub fn noise_error(o: &NoiseOptions) -> Result<serde_json::Value> {
    if o.timesteps.is_empty() {
        return Err(Error::Invalid(
            "--timesteps: expected at least one timestep, found none".into(),
        ));
    }
    if o.batch == 0 || !(1..=1000).contains(&o.batches) {
        return Err(Error::Invalid(format!(
            "--batch {} --batches {}: expected at least 1 window per batch and 1 to 1000 batches",
            o.batch, o.batches
        )));
    }
    if crate::model::method_of(&o.model)? == crate::model::Method::Dyffusion {
        return Err(Error::bad_file(
            &o.model,
            "a DYffusion model (an interpolator and a forecaster, no noise prediction); bench noise measures the noise-prediction error of a DDIM model (Dynamical Diffusion or the standard model, method \"dydiff\")",
        ));
    }
    let model = Model::load(&o.model, o.device)?;
    let p = &model.process;
    let errors = train::noise_error(
        &model,
        &o.data,
        &o.timesteps,
        o.batch,
        o.batches,
        o.seed,
        o.device,
    )?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let rows: Vec<serde_json::Value> = o
        .timesteps
        .iter()
        .zip(&errors)
        .map(|(t, per_frame)| {
            let future = &per_frame[per_frame.len() - p.future..];
            serde_json::json!({
                "t": t, "mse_future": mean(future), "mse_all": mean(per_frame),
                "mse_per_frame": per_frame,
            })
        })
        .collect();
    Ok(serde_json::json!({
        "model": o.model.display().to_string(),
        "data": o.data.display().to_string(),
        "diffuse_history": p.diffuse_history,
        "dyn_eta": p.dyn_eta,
        "windows_per_t": o.batch * o.batches as usize,
        "seed": o.seed,
        "timesteps": rows,
    }))
}
