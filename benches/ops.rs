//! Criterion benches of the hot CPU ops on the shapes of the benchmark UNet (block channels
//! 64/128/256, head dim 32, batch 8). Throughput is reported in FLOP/s ("elem/s" = FLOP/s).
//!
//!     cargo bench --bench ops [-- conv2d_backward]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dydiff::backend::{ConvGeom, PadMode};
use dydiff::{Device, Tensor};

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = dydiff::nn::InitRng::new(seed);
    let n = shape.iter().product();
    Tensor::from_vec(
        (0..n).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect(),
        shape,
        Device::Cpu,
    )
    .unwrap()
}

fn conv(c: &mut Criterion) {
    dydiff::backend::cpu::tune_allocator();
    let mut g = c.benchmark_group("conv2d");
    g.sample_size(10);
    // (label, n, ci, hw, co, k, stride)
    for (label, n, ci, hw, co, k, stride) in [
        ("64x64_64to64_3x3", 8, 64, 64, 64, 3, 1),
        ("64x64_192to64_3x3", 8, 192, 64, 64, 3, 1),
        ("32x32_128to128_3x3", 8, 128, 32, 128, 3, 1),
        ("16x16_256to256_3x3", 8, 256, 16, 256, 3, 1),
        ("16x16_512to256_1x1", 8, 512, 16, 256, 1, 1),
        ("64x64_64to64_3x3_s2", 8, 64, 64, 64, 3, 2),
    ] {
        let pad = if k == 3 { [1; 4] } else { [0; 4] };
        let geom = ConvGeom {
            n,
            ci,
            h: hw,
            w: hw,
            co,
            k,
            stride,
            pad,
            pad_mode: PadMode::Zeros,
        };
        let x = rand(&[n, ci, hw, hw], 1);
        let w = rand(&[co, ci, k, k], 2);
        let b = rand(&[co], 3);
        g.throughput(Throughput::Elements(geom.flops() as u64));
        g.bench_function(BenchmarkId::from_parameter(label), |bench| {
            bench.iter(|| x.conv2d(&w, Some(&b), stride, pad, PadMode::Zeros).unwrap())
        });
    }
    g.finish();
}

/// A 3×3, stride-1, padding-1 convolution of `n` square `hw × hw` images, `ci → co` channels.
fn same_3x3(n: usize, ci: usize, hw: usize, co: usize) -> ConvGeom {
    ConvGeom {
        n,
        ci,
        h: hw,
        w: hw,
        co,
        k: 3,
        stride: 1,
        pad: [1; 4],
        pad_mode: PadMode::Zeros,
    }
}

/// The backward of 3×3 stride-1 convolutions (dx and dw; throughput counts both, twice the
/// forward's FLOP): the Winograd adjoint against im2col + gemm, and the per-step kernel
/// transform that training pays because the weights change.
fn conv_backward(c: &mut Criterion) {
    use dydiff::backend::cpu::{conv, winograd};
    dydiff::backend::cpu::tune_allocator();
    let mut g = c.benchmark_group("conv2d_backward");
    g.sample_size(10);
    for (n, ci, hw, co) in [
        (8usize, 64usize, 32usize, 64usize),
        (8, 128, 16, 128),
        (8, 256, 8, 256),
        (8, 64, 64, 64),
    ] {
        let geom = same_3x3(n, ci, hw, co);
        let x = rand(&[n, ci, hw, hw], 1).to_vec().unwrap();
        let w = rand(&[co, ci, 3, 3], 2).to_vec().unwrap();
        let dy = rand(&[n, co, hw, hw], 3).to_vec().unwrap();
        let label = format!("{n}x{ci}x{hw}x{hw}_to_{co}");
        g.throughput(Throughput::Elements(2 * geom.flops() as u64));
        let f = winograd::Filter::new(&w, co, ci);
        g.bench_function(BenchmarkId::new("winograd", &label), |b| {
            b.iter(|| winograd::conv2d_backward(&x, &f, &dy, &geom, true))
        });
        g.bench_function(BenchmarkId::new("im2col", &label), |b| {
            b.iter(|| conv::conv2d_backward(&x, &w, &dy, &geom, true))
        });
        g.throughput(Throughput::Elements((co * ci * 9) as u64));
        g.bench_function(BenchmarkId::new("kernel_transform", &label), |b| {
            b.iter(|| winograd::Filter::new(&w, co, ci))
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    g.sample_size(10);
    for (label, n, l, ch, heads) in [
        ("1024tok_128ch_4h", 8, 1024, 128, 4),
        ("256tok_256ch_8h", 8, 256, 256, 8),
    ] {
        let (q, k, v) = (
            rand(&[n, l, ch], 1),
            rand(&[n, l, ch], 2),
            rand(&[n, l, ch], 3),
        );
        g.throughput(Throughput::Elements(4 * (n * l * l * ch) as u64));
        g.bench_function(BenchmarkId::from_parameter(label), |bench| {
            bench.iter(|| Tensor::attention(&q, &k, &v, heads).unwrap())
        });
    }
    g.finish();
}

fn group_norm(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_norm");
    g.sample_size(20);
    let x = rand(&[8, 64, 64, 64], 1);
    let (gamma, beta) = (rand(&[64], 2), rand(&[64], 3));
    g.throughput(Throughput::Bytes(2 * 4 * x.elem_count() as u64));
    g.bench_function("8x64x64x64_32groups", |bench| {
        bench.iter(|| x.group_norm(32, &gamma, &beta, 1e-5).unwrap())
    });
    g.bench_function("8x64x64x64_silu", |bench| bench.iter(|| x.silu().unwrap()));
    g.finish();
}

fn linear(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear");
    g.sample_size(10);
    let x = rand(&[8, 1024, 128], 1);
    let (w, b) = (rand(&[128, 128], 2), rand(&[128], 3));
    g.throughput(Throughput::Elements(2 * 8 * 1024 * 128 * 128));
    g.bench_function("8x1024tok_128to128", |bench| {
        bench.iter(|| x.linear(&w, Some(&b)).unwrap())
    });
    g.finish();
}

/// Products at the CPU's two precisions (`backend::cpu::bf16`, `--precision bf16`): a 1×1
/// convolution's product (256 → 256 channels over 8 × 16 × 16 pixels), the attention block's
/// projection, and a 3×3 convolution on the direct path, in float32 and with bf16 operands
/// (skipped where the CPU has no AVX512-BF16).
fn bf16(c: &mut Criterion) {
    use dydiff::backend::cpu;
    use dydiff::backend::Precision;
    let mut g = c.benchmark_group("bf16");
    g.sample_size(10);
    let a = rand(&[8, 256, 16, 16], 1);
    let w = rand(&[256, 256, 1, 1], 2);
    let x = rand(&[8, 1024, 128], 3);
    let (wl, bl) = (rand(&[128, 128], 4), rand(&[128], 5));
    let xc = rand(&[8, 64, 32, 32], 6);
    let wc = rand(&[64, 64, 3, 3], 7);
    let geom = same_3x3(8, 64, 32, 64);
    let precisions: &[Precision] = if cpu::bf16::available() {
        &[Precision::Fp32, Precision::Bf16]
    } else {
        &[Precision::Fp32]
    };
    for &p in precisions {
        cpu::set_precision(p);
        g.throughput(Throughput::Elements(2 * 8 * 256 * 256 * 256));
        g.bench_function(BenchmarkId::new("conv1x1_8x256x16x16", p.name()), |bench| {
            bench.iter(|| a.conv2d(&w, None, 1, [0; 4], PadMode::Zeros).unwrap())
        });
        g.throughput(Throughput::Elements(2 * 8 * 1024 * 128 * 128));
        g.bench_function(
            BenchmarkId::new("linear_8x1024tok_128to128", p.name()),
            |bench| bench.iter(|| x.linear(&wl, Some(&bl)).unwrap()),
        );
        g.throughput(Throughput::Elements(geom.flops() as u64));
        g.bench_function(BenchmarkId::new("conv3x3_8x64x32x32", p.name()), |bench| {
            bench.iter(|| xc.conv2d(&wc, None, 1, [1; 4], PadMode::Zeros).unwrap())
        });
    }
    cpu::set_precision(Precision::Fp32);
    g.finish();
}

/// The layout decision of `backend::cpu::conv`: the same 3×3 convolutions as NCHW im2col+gemm
/// (dydiff's direct path), as NHWC nine accumulated per-tap products over a padded input (the
/// usual channels-last scheme), and as NCHW Winograd (dydiff's path for 3×3 stride 1). Two
/// threads, split by image for NHWC.
fn conv_layout(c: &mut Criterion) {
    use dydiff::backend::cpu::{conv, winograd};
    use rayon::prelude::*;
    let mut g = c.benchmark_group("conv_layout");
    g.sample_size(10);
    for (n, ci, hw, co) in [
        (8usize, 64usize, 64usize, 64usize),
        (8, 128, 32, 128),
        (8, 256, 16, 256),
    ] {
        let geom = same_3x3(n, ci, hw, co);
        g.throughput(Throughput::Elements(geom.flops() as u64));
        let x = rand(&[n, ci, hw, hw], 1).to_vec().unwrap();
        let w = rand(&[co, ci, 3, 3], 2).to_vec().unwrap();
        let label = format!("{n}x{ci}x{hw}x{hw}_to_{co}");
        g.bench_function(BenchmarkId::new("nchw_im2col", &label), |b| {
            b.iter(|| conv::conv2d(&x, &w, None, &geom))
        });
        let f = winograd::Filter::new(&w, co, ci);
        g.bench_function(BenchmarkId::new("nchw_winograd", &label), |b| {
            b.iter(|| winograd::conv2d(&x, &f, None, &geom))
        });
        // NHWC: padded (H+2)×(W+2)×Ci input; output rows W+2 wide (two junk columns per row)
        let pw = hw + 2;
        let plane = (hw + 2) * pw * ci + 2 * ci;
        let xp = vec![0.5f32; n * plane];
        let wt = rand(&[9, ci, co], 3).to_vec().unwrap();
        let mut y = vec![0.0f32; n * hw * pw * co];
        g.bench_function(BenchmarkId::new("nhwc_9tap", &label), |b| {
            b.iter(|| {
                y.par_chunks_mut(hw * pw * co)
                    .enumerate()
                    .for_each(|(img, yi)| {
                        for tap in 0..9 {
                            let (ky, kx) = (tap / 3, tap % 3);
                            let src = &xp[img * plane + (ky * pw + kx) * ci..];
                            // SAFETY: rows·Ci inputs from src (padded by 2·Ci), Ci×Co weights, rows×Co out.
                            unsafe {
                                gemm::gemm(
                                    hw * pw,
                                    co,
                                    ci,
                                    yi.as_mut_ptr(),
                                    1,
                                    co as isize,
                                    tap > 0,
                                    src.as_ptr(),
                                    1,
                                    ci as isize,
                                    wt[tap * ci * co..].as_ptr(),
                                    1,
                                    co as isize,
                                    1.0,
                                    1.0,
                                    false,
                                    false,
                                    false,
                                    gemm::Parallelism::None,
                                )
                            }
                        }
                    })
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    conv,
    conv_backward,
    conv_layout,
    attention,
    group_norm,
    linear,
    bf16
);
criterion_main!(benches);
