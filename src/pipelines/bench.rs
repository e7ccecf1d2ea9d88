//! `dydiff bench unet`: times the network forward on a model folder at a given batch and size,
//! and reports seconds, GFLOP/s, and a per-operation breakdown (see [`crate::profile`]).

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::nn::{InitRng, UNet2D};
use crate::profile;
use crate::tensor::Tensor;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// Options of `dydiff bench unet`.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub unet: PathBuf,
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub reps: usize,
    pub warmup: usize,
    pub device: Device,
}

/// Runs the benchmark and returns its report as JSON.
pub fn run(o: &BenchOptions) -> Result<serde_json::Value> {
    if o.reps == 0 || o.batch == 0 {
        return Err(Error::Invalid(
            "--reps and --batch must be at least 1".into(),
        ));
    }
    let model = UNet2D::from_pretrained(&o.unet, o.device)?;
    let shape = [o.batch, model.config.in_channels, o.height, o.width];
    let mut rng = InitRng::new(0);
    let data = (0..shape.iter().product::<usize>())
        .map(|_| (2.0 * rng.uniform() - 1.0) as f32)
        .collect();
    let x = Tensor::from_vec(data, &shape, o.device)?;
    let t = Tensor::from_vec(vec![500.0; o.batch], &[o.batch], o.device)?;
    for _ in 0..o.warmup {
        model.forward(&x, &t)?;
    }
    // one profiled pass for the per-operation breakdown
    profile::enable(true);
    model.forward(&x, &t)?;
    let ops = profile::totals();
    profile::enable(false);
    let mut times = Vec::with_capacity(o.reps);
    for _ in 0..o.reps {
        let start = Instant::now();
        model.forward(&x, &t)?;
        times.push(start.elapsed().as_secs_f64());
    }
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
    Ok(json!({
        "batch": o.batch, "height": o.height, "width": o.width,
        "threads": rayon::current_num_threads(),
        "params": model.num_params(),
        "median_s": median, "min_s": times[0],
        "gflop": flops / 1e9, "gflops_per_s": flops / median / 1e9,
        "ops": breakdown,
    }))
}
