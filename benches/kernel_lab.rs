//! The kernel lab: each op family's kernel versions side by side on one input, as llm.c's
//! `dev/cuda` keeps them — every version against the CPU backend (the reference), its launches,
//! and on a GPU its device time. The versions are what the launchers choose among:
//!
//! - `conv`: a 3×3 convolution with the group norm and SiLU on load (the benchmark UNet's resnet
//!   convolution) by the direct kernel with the norm fused (`auto`), by the direct kernel after a
//!   normalising pass (`direct-pass`), and by the transformed input's columns and a GEMM
//!   (`columns`); a 3×3 stride-2 convolution (the downsampler) direct and by columns; TF32 and
//!   bf16 each (`src/backend/cuda/conv.rs`, `ConvRoute`);
//! - `conv input gradient`: a 3×3 stride-1 convolution's, by the forward's direct kernel on the
//!   transposed and rotated weights (`input_gradient`) and by a GEMM into columns gathered back
//!   (`input_gradient_by_columns`, what stride 2 runs), TF32 and bf16;
//! - `attention`: the float32 kernel (`attention_f32`) and the tensor-core one
//!   (`attention_tf32_d*`, TF32 and bf16);
//! - `gemm`: the product at float32 (FFMA), TF32 and bf16.
//!
//! On the emulator (the default) a version's launches go to the launch log when
//! `DYDIFF_LAUNCH_LOG` names a file, and python/kernel_lab.py adds the model's prediction from
//! the machine code (python/sass_model.py) per version; with `DYDIFF_LAB_DEVICE=cuda`, on GPU 0,
//! each version is timed (device time between events around each launch, the mean of 10 calls
//! after 2 warm-up calls).
//!
//! ```text
//! NVCC=… cargo bench --features cuda --bench kernel_lab      # one JSON line per version
//! python3 python/kernel_lab.py [--gpu h100]                  # the table, with the model
//! ```
//!
//! A line: `family`, `case`, `version`, `precision`, `error` (the largest difference from the
//! CPU backend over the reference's largest magnitude), `bound` (the lab's screening bound for
//! the precision: 1e-4, 1e-2, 5e-2 — the tests hold each op to per-element bounds), `holds`,
//! `vs_first` (the same measure against the case's first version at that precision, for the
//! versions after it), `log` (the half-open range of the version's lines in the launch log),
//! `device_us` (GPU only).

use dydiff::backend::cpu::CpuStorage;
use dydiff::backend::cuda::buffer::Buffer;
use dydiff::backend::cuda::conv::{self, ConvEpilogue, ConvInput, ConvRoute};
use dydiff::backend::cuda::gemm::{self, Epilogue};
use dydiff::backend::cuda::gpu::Gpu;
use dydiff::backend::cuda::norm::{self, NormOnLoad};
use dydiff::backend::cuda::{attention, Precision};
use dydiff::backend::{AttnGeom, BackendStorage, ConvGeom, MatmulGeom, NormGeom, PadMode};
use std::sync::Arc;

type Run<'a> = Box<dyn Fn() -> dydiff::Result<Buffer> + 'a>;

/// Values in [−1, 1) from a seed (a fixed generator: the lab's inputs are the same every run).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn bound(p: Precision) -> f64 {
    match p {
        Precision::Fp32 => 1e-4,
        Precision::Tf32 => 1e-2,
        Precision::Bf16 => 5e-2,
    }
}

fn name(p: Precision) -> &'static str {
    match p {
        Precision::Fp32 => "fp32",
        Precision::Tf32 => "tf32",
        Precision::Bf16 => "bf16",
    }
}

/// Lines in the launch log so far (0 without one).
fn log_lines() -> usize {
    std::env::var_os("DYDIFF_LAUNCH_LOG")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map_or(0, |t| t.lines().count())
}

struct Lab {
    gpu: Arc<dyn Gpu>,
    timed: bool,
    /// The first version's output of the case and precision being run, to compare the others to.
    first: std::cell::RefCell<Option<(String, Vec<f32>)>>,
}

/// The largest difference between `a` and `b` over `scale` (infinite when their lengths differ).
fn relative(a: &[f32], b: &[f32], scale: f64) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
    diff / scale.max(f64::MIN_POSITIVE)
}

impl Lab {
    /// Runs one version: its error against `want`, its launches, its time on a GPU; one line.
    fn version(
        &self,
        family: &str,
        case: &str,
        version: &str,
        p: Precision,
        want: &[f32],
        run: Run,
    ) {
        let from = log_lines();
        let got = run().and_then(|b| b.to_f32());
        let to = log_lines();
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                eprintln!("kernel_lab: {family} {case} {version} {}: {e}", name(p));
                std::process::exit(1);
            }
        };
        let scale = want.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
        let error = relative(&got, want, scale);
        let mut line = serde_json::json!({
            "family": family, "case": case, "version": version, "precision": name(p),
            "error": error, "bound": bound(p), "holds": error <= bound(p), "log": [from, to],
        });
        // against the case's first version at this precision (the same rounding of the operands:
        // what is left is the order of the sums and the transform's arithmetic)
        let key = format!("{family} {case} {}", name(p));
        let mut first = self.first.borrow_mut();
        match first.as_ref() {
            Some((k, out)) if *k == key => line["vs_first"] = relative(&got, out, scale).into(),
            _ => *first = Some((key, got)),
        }
        drop(first);
        if self.timed {
            let time = || -> dydiff::Result<f64> {
                for _ in 0..2 {
                    run()?;
                }
                self.gpu.synchronize()?;
                self.gpu.set_timing(true);
                const CALLS: usize = 10;
                for _ in 0..CALLS {
                    run()?;
                }
                self.gpu.synchronize()?;
                let secs: f64 = self.gpu.kernel_times()?.iter().map(|k| k.seconds).sum();
                self.gpu.set_timing(false);
                Ok(secs / CALLS as f64 * 1e6)
            };
            match time() {
                Ok(us) => line["device_us"] = us.into(),
                Err(e) => {
                    eprintln!("kernel_lab: timing {family} {case} {version}: {e}");
                    std::process::exit(1);
                }
            }
        }
        println!("{line}");
    }
}

/// The convolutions: (case, batch, channels in and out, image side, stride, norm and SiLU on
/// load).
fn convolutions(lab: &Lab) -> dydiff::Result<()> {
    for (case, n, c, side, stride, act) in [
        ("3x3 64->64 norm+silu 32x32 batch 4", 4, 64, 32, 1, true),
        ("3x3 stride 2 64->64 32x32 batch 4", 4, 64, 32, 2, false),
    ] {
        let (groups, hw) = (32, side * side);
        let g = ConvGeom {
            n,
            ci: c,
            h: side,
            w: side,
            co: c,
            k: 3,
            stride,
            pad: [1, 1, 1, 1],
            pad_mode: PadMode::Zeros,
        };
        let x = values(n * c * hw, 1);
        let (gamma, beta) = (values(c, 2), values(c, 3));
        let (w, b) = (values(c * c * 9, 4), values(c, 5));
        let cpu = |v: &[f32]| CpuStorage::from_vec(v.to_vec());
        let input = if act {
            let ng = NormGeom {
                n,
                c,
                hw,
                groups,
                eps: 1e-5,
                silu: true,
            };
            cpu(&x).group_norm(&cpu(&gamma), &cpu(&beta), &ng)?.0
        } else {
            cpu(&x)
        };
        let want = input.conv2d(&cpu(&w), Some(&cpu(&b)), &g)?.to_vec()?;
        let dev = |v: &[f32]| Buffer::from_f32(&lab.gpu, v);
        let (dx, dg, dbeta, dw, db) = (dev(&x)?, dev(&gamma)?, dev(&beta)?, dev(&w)?, dev(&b)?);
        let stats = norm::group_norm_stats(&dx, None, (n, c, hw), groups, 1e-5)?;
        let input = ConvInput {
            x: &dx,
            x2: None,
            upsample: false,
            norm: act.then_some(NormOnLoad {
                stats: &stats,
                gamma: &dg,
                beta: &dbeta,
                groups,
            }),
            silu: act,
        };
        let epi = ConvEpilogue {
            bias: Some(&db),
            ..ConvEpilogue::NONE
        };
        let routes: &[(&str, ConvRoute)] = if act {
            &[
                ("auto (direct, norm fused)", ConvRoute::Auto),
                ("direct-pass", ConvRoute::DirectPass),
                ("columns", ConvRoute::Columns),
            ]
        } else {
            &[
                ("auto (direct)", ConvRoute::Auto),
                ("columns", ConvRoute::Columns),
            ]
        };
        for p in [Precision::Tf32, Precision::Bf16] {
            for &(version, route) in routes {
                let run: Run = Box::new(|| conv::conv2d_by(route, &input, &dw, &g, &epi, p));
                lab.version("conv", case, version, p, &want, run);
            }
        }
    }
    Ok(())
}

/// The input gradient of a 3×3 stride-1 convolution of 64 channels at 32×32, batch 4.
fn input_gradients(lab: &Lab) -> dydiff::Result<()> {
    let (n, c, side) = (4, 64, 32);
    let g = ConvGeom {
        n,
        ci: c,
        h: side,
        w: side,
        co: c,
        k: 3,
        stride: 1,
        pad: [1, 1, 1, 1],
        pad_mode: PadMode::Zeros,
    };
    let (x, w, dy) = (
        values(n * c * side * side, 11),
        values(c * c * 9, 12),
        values(n * c * side * side, 13),
    );
    let cpu = |v: &[f32]| CpuStorage::from_vec(v.to_vec());
    let (dx, _, _) = cpu(&x).conv2d_backward(&cpu(&w), &cpu(&dy), &g, true)?;
    let want = dx.map_or(Ok(Vec::new()), |d| d.to_vec())?;
    let (dw, ddy) = (
        Buffer::from_f32(&lab.gpu, &w)?,
        Buffer::from_f32(&lab.gpu, &dy)?,
    );
    let case = "3x3 64->64 32x32 batch 4";
    for p in [Precision::Tf32, Precision::Bf16] {
        let run: Run = Box::new(|| {
            conv::input_gradient(&ddy, &dw, &g, p)?
                .ok_or_else(|| dydiff::Error::shape("kernel_lab", "a direct kernel's geometry"))
        });
        lab.version(
            "conv input gradient",
            case,
            "direct (flipped weights)",
            p,
            &want,
            run,
        );
        let run: Run = Box::new(|| conv::input_gradient_by_columns(&ddy, &dw, &g, p));
        lab.version("conv input gradient", case, "columns", p, &want, run);
    }
    Ok(())
}

/// Attention over the tokens of a 16×16 image: batch 4, 4 heads of 32.
fn attentions(lab: &Lab) -> dydiff::Result<()> {
    let g = AttnGeom {
        n: 4,
        l: 256,
        heads: 4,
        d: 32,
        scale: 1.0 / (32f32).sqrt(),
    };
    let len = g.n * g.heads * g.l * g.d;
    let (q, k, v) = (values(len, 6), values(len, 7), values(len, 8));
    let cpu = |v: &[f32]| CpuStorage::from_vec(v.to_vec());
    let want = cpu(&q).attention(&cpu(&k), &cpu(&v), &g)?.to_vec()?;
    let dev = |v: &[f32]| Buffer::from_f32(&lab.gpu, v);
    let (dq, dk, dv) = (dev(&q)?, dev(&k)?, dev(&v)?);
    for (version, p) in [
        ("attention_f32", Precision::Fp32),
        ("attention_tf32_d32", Precision::Tf32),
        ("attention_tf32_d32", Precision::Bf16),
    ] {
        // the attention kernels follow the backend's precision, one setting per process
        dydiff::backend::cuda::set_precision(p);
        let run: Run = Box::new(|| attention::attention(&dq, &dk, &dv, &g));
        lab.version(
            "attention",
            "l 256, 4 heads of 32, batch 4",
            version,
            p,
            &want,
            run,
        );
    }
    dydiff::backend::cuda::set_precision(Precision::Tf32);
    Ok(())
}

/// The product of a 1×1 convolution's shape: 256 × 1024 by 1024 × 256, batch 4.
fn products(lab: &Lab) -> dydiff::Result<()> {
    let g = MatmulGeom {
        batch: 4,
        m: 256,
        n: 256,
        k: 1024,
        a_trans: false,
        b_trans: false,
    };
    let (a, b) = (
        values(g.batch * g.m * g.k, 9),
        values(g.batch * g.k * g.n, 10),
    );
    let cpu = |v: &[f32]| CpuStorage::from_vec(v.to_vec());
    let want = cpu(&a).matmul(&cpu(&b), &g)?.to_vec()?;
    let (da, db) = (
        Buffer::from_f32(&lab.gpu, &a)?,
        Buffer::from_f32(&lab.gpu, &b)?,
    );
    for (version, p) in [
        ("gemm_f32", Precision::Fp32),
        ("gemm_tf32", Precision::Tf32),
        ("gemm_bf16", Precision::Bf16),
    ] {
        let run: Run = Box::new(|| gemm::matmul(&da, &db, &g, Epilogue::NONE, p));
        lab.version(
            "gemm",
            "256x1024 by 1024x256, batch 4",
            version,
            p,
            &want,
            run,
        );
    }
    Ok(())
}

fn main() {
    // `cargo bench` passes `--bench`; the lab takes no arguments of its own
    let timed = std::env::var("DYDIFF_LAB_DEVICE").as_deref() == Ok("cuda");
    let gpu: Arc<dyn Gpu> = if timed {
        match dydiff::backend::cuda::device(0) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("kernel_lab: DYDIFF_LAB_DEVICE=cuda: {e}");
                std::process::exit(1);
            }
        }
    } else {
        Arc::new(dydiff::backend::cuda::emu::Emulator::default())
    };
    let lab = Lab {
        gpu,
        timed,
        first: std::cell::RefCell::new(None),
    };
    for family in [convolutions, input_gradients, attentions, products] {
        if let Err(e) = family(&lab) {
            eprintln!("kernel_lab: {e}");
            std::process::exit(1);
        }
    }
}
