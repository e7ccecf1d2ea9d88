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
    Ok(json!({
        "batch": o.batch, "height": o.height, "width": o.width,
        "threads": rayon::current_num_threads(),
        "params": model.num_params(),
        "median_s": median, "min_s": times[0], "times_s": in_order,
        "gflop": flops / 1e9, "gflops_per_s": flops / median / 1e9,
        "ops": breakdown,
    }))
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
