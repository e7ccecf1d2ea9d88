//! The convolution kernels (kernels/conv.cu) on the emulator (or
//! GPU 0 with DYDIFF_TEST_DEVICE=cuda) against the CPU backend's unfused operations, on ragged
//! shapes (batch 1 and 17, 1 to 70 channels, odd and non-square images, 3×3 stride 1 and 2 with
//! diffusers' one-sided downsampling pad, 1×1; 5×5 and 2×2 on the generic path: columns and a
//! GEMM), in every precision: plain convolutions with bias;
//! the fused resnet head (group norm + SiLU on load, bias, time embedding, residual, output scale);
//! the skip concatenation and the 2× upsampling read in place; the norm and SiLU on load at every
//! geometry (fused, or a pass of their own); the group norm itself.
//!
//! Bounds per element (docs/devices.md, “Precision”): with `S = Σ|w·in|` (a convolution of the
//! absolute values), `(K·u + 8u)·S` in float32, `(2·2⁻¹¹ + K·u + 8u)·S` with TF32 operands and
//! `(2·2⁻⁸ + K·u + 8u)·S` with bf16 operands — the
//! `8u` for the input transform computed in a different order — plus a few ulp of the epilogue.
//! The gradients (the Storage API, at each precision under the crate's lock): the input and
//! weight gradients within 2e-6 (float32; 1e-5 for the weight gradient, sums of up to 4 096
//! terms), 2e-3 (TF32) and 1.6e-2 (bf16) of the largest CPU value, on the network's geometries and
//! others (kernel sizes 1 to 5, strides 1 to 3, padding wider than the kernel, circular).

use super::{both, close, cpu, gpu, precision};
use crate::common::rand_vec;
use dydiff::backend::cpu::CpuStorage;
use dydiff::backend::cuda::buffer::Buffer;
use dydiff::backend::cuda::conv::{self, ConvEpilogue, ConvInput};
use dydiff::backend::cuda::gpu::{Gpu, KernelTime};
use dydiff::backend::cuda::norm::{self, NormOnLoad};
use dydiff::backend::cuda::Precision;
use dydiff::backend::{BackendStorage, BinaryOp, ConvGeom, NormGeom, PadMode};
use std::sync::Arc;

const U: f64 = 1.0 / 16_777_216.0;

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// Compares `got` with the CPU's `want`, `s` the convolution of absolute values.
fn within(p: Precision, k: usize, got: &[f32], want: &[f32], s: &[f32], extra: f64, what: &str) {
    let rel = match p {
        Precision::Fp32 => (k + 8) as f64 * U,
        Precision::Tf32 => 2.0 / 2048.0 + (k + 8) as f64 * U,
        Precision::Bf16 => 2.0 / 256.0 + (k + 8) as f64 * U,
    };
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, ((g, w), s)) in got.iter().zip(want).zip(s).enumerate() {
        let tol = rel * f64::from(*s) + 8.0 * U * f64::from(w.abs()) + extra;
        assert!(
            f64::from(g - w).abs() <= tol,
            "{p:?} {what}: [{i}] {g} vs CPU {w} (±{tol:.2e})"
        );
    }
}

fn geom(
    n: usize,
    ci: usize,
    (h, w): (usize, usize),
    co: usize,
    k: usize,
    stride: usize,
    pad: [usize; 4],
) -> ConvGeom {
    ConvGeom {
        n,
        ci,
        h,
        w,
        co,
        k,
        stride,
        pad,
        pad_mode: PadMode::Zeros,
    }
}

/// `g` with circular padding.
fn circular(g: ConvGeom) -> ConvGeom {
    ConvGeom {
        pad_mode: PadMode::Circular,
        ..g
    }
}

#[test]
fn plain_convolutions_match_the_cpu() {
    let gpu = gpu();
    let cases = [
        geom(1, 1, (1, 1), 1, 3, 1, [1, 1, 1, 1]),
        geom(17, 3, (7, 9), 5, 3, 1, [1, 1, 1, 1]),
        geom(2, 8, (9, 7), 8, 3, 2, [0, 1, 0, 1]),
        geom(1, 6, (8, 8), 6, 3, 2, [1, 1, 1, 1]),
        geom(3, 24, (6, 5), 70, 1, 1, [0, 0, 0, 0]),
        geom(2, 20, (16, 16), 64, 3, 1, [1, 1, 1, 1]),
        // periodic fields: the padding wraps around
        circular(geom(1, 1, (1, 1), 1, 3, 1, [1, 1, 1, 1])),
        circular(geom(17, 3, (7, 9), 5, 3, 1, [1, 1, 1, 1])),
        circular(geom(1, 6, (8, 8), 6, 3, 2, [1, 1, 1, 1])),
        circular(geom(2, 5, (3, 2), 4, 5, 1, [2, 2, 2, 2])),
    ];
    for (i, g) in cases.iter().enumerate() {
        let x = rand_vec(g.n * g.ci * g.h * g.w, 10 + i as u64);
        let w = rand_vec(g.co * g.ci * g.k * g.k, 20 + i as u64);
        let b = rand_vec(g.co, 30 + i as u64);
        let want = cpu(&x)
            .conv2d(&cpu(&w), Some(&cpu(&b)), g)
            .unwrap()
            .to_vec()
            .unwrap();
        let s = cpu(&abs(&x))
            .conv2d(&cpu(&abs(&w)), Some(&cpu(&abs(&b))), g)
            .unwrap()
            .to_vec()
            .unwrap();
        let (dx, dw, db) = (
            Buffer::from_f32(&gpu, &x).unwrap(),
            Buffer::from_f32(&gpu, &w).unwrap(),
            Buffer::from_f32(&gpu, &b).unwrap(),
        );
        for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
            let epi = ConvEpilogue {
                bias: Some(&db),
                ..ConvEpilogue::NONE
            };
            let got = conv::conv2d(&ConvInput::plain(&dx), &dw, g, &epi, p)
                .unwrap()
                .to_f32()
                .unwrap();
            within(p, g.ci * g.k * g.k, &got, &want, &s, 0.0, &format!("{g:?}"));
        }
    }
}

#[test]
fn the_fused_resnet_head_matches_norm_silu_conv_bias_temb_residual_scale() {
    let gpu = gpu();
    // (batch, channels, image, output channels, groups, kernel size: 5 runs the generic path,
    // its time embedding added after the GEMM)
    for (i, &(n, ci, (h, w), co, groups, k)) in [
        (1, 8, (8, 8), 16, 4, 3),
        (17, 4, (5, 7), 6, 2, 3),
        (2, 64, (8, 8), 64, 32, 3),
        (3, 6, (7, 6), 5, 3, 5),
    ]
    .iter()
    .enumerate()
    {
        let g = geom(n, ci, (h, w), co, k, 1, [k / 2; 4]);
        // the second case with circular padding
        let g = if i == 1 { circular(g) } else { g };
        let seed = 100 + 10 * i as u64;
        let x: Vec<f32> = rand_vec(n * ci * h * w, seed)
            .iter()
            .map(|v| 3.0 * v + 0.7)
            .collect();
        let (gamma, beta) = (rand_vec(ci, seed + 1), rand_vec(ci, seed + 2));
        let wt = rand_vec(co * ci * k * k, seed + 3);
        let b = rand_vec(co, seed + 4);
        let temb = rand_vec(n * co, seed + 5);
        let res = rand_vec(n * co * h * w, seed + 6);
        let scale = 0.5f32;
        // the CPU, op by op
        let ng = NormGeom {
            n,
            c: ci,
            hw: h * w,
            groups,
            eps: 1e-5,
            silu: true,
        };
        let (normed, _) = cpu(&x).group_norm(&cpu(&gamma), &cpu(&beta), &ng).unwrap();
        let want = normed
            .conv2d(&cpu(&wt), Some(&cpu(&b)), &g)
            .unwrap()
            .add_channel_bias(&cpu(&temb), n, co, h * w)
            .unwrap()
            .binary(&cpu(&res), BinaryOp::Add)
            .unwrap()
            .affine(scale, 0.0)
            .unwrap()
            .to_vec()
            .unwrap();
        let s = cpu(&abs(&normed.to_vec().unwrap()))
            .conv2d(&cpu(&abs(&wt)), None, &g)
            .unwrap()
            .to_vec()
            .unwrap();
        // the GPU: statistics, then one convolution
        let dx = Buffer::from_f32(&gpu, &x).unwrap();
        let stats = norm::group_norm_stats(&dx, None, (n, ci, h * w), groups, 1e-5).unwrap();
        let (dg, dbeta) = (
            Buffer::from_f32(&gpu, &gamma).unwrap(),
            Buffer::from_f32(&gpu, &beta).unwrap(),
        );
        let (dw, db, dt, dr) = (
            Buffer::from_f32(&gpu, &wt).unwrap(),
            Buffer::from_f32(&gpu, &b).unwrap(),
            Buffer::from_f32(&gpu, &temb).unwrap(),
            Buffer::from_f32(&gpu, &res).unwrap(),
        );
        let input = ConvInput {
            x: &dx,
            x2: None,
            upsample: false,
            norm: Some(NormOnLoad {
                stats: &stats,
                gamma: &dg,
                beta: &dbeta,
                groups,
            }),
            silu: true,
        };
        let epi = ConvEpilogue {
            bias: Some(&db),
            temb: Some(&dt),
            residual: Some(&dr),
            scale,
        };
        for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
            let got = conv::conv2d(&input, &dw, &g, &epi, p)
                .unwrap()
                .to_f32()
                .unwrap();
            // the normalised input differs by a few ulp (statistics in f32, another formula)
            let s_scaled: Vec<f32> = s.iter().map(|v| v * scale + 1e-6).collect();
            within(
                p,
                ci * k * k,
                &got,
                &want,
                &s_scaled,
                4e-6,
                &format!("resnet head {g:?}"),
            );
        }
    }
}

/// A convolution split among blocks (8×8 pixels, 64 → 64 channels: one tile per sample, so its 4
/// slices of 16 channels go to 4 blocks) ends the same, bit for bit, whether the last block of a
/// tile sums the partial planes (the device's tile counters) or a finishing launch does.
#[test]
fn split_k_finished_in_the_kernel_equals_the_finishing_launch() {
    use dydiff::backend::cuda::emu::Emulator;
    let (n, ci, co) = (3, 64, 64);
    let g = geom(n, ci, (8, 8), co, 3, 1, [1, 1, 1, 1]);
    let (x, wt) = (rand_vec(n * ci * 64, 700), rand_vec(co * ci * 9, 701));
    let (b, temb, res) = (
        rand_vec(co, 702),
        rand_vec(n * co, 703),
        rand_vec(n * co * 64, 704),
    );
    let run = |gpu: Arc<dyn Gpu>, p: Precision| {
        let up = |v: &[f32]| Buffer::from_f32(&gpu, v).unwrap();
        let (dx, dw, db, dt, dr) = (up(&x), up(&wt), up(&b), up(&temb), up(&res));
        let epi = ConvEpilogue {
            bias: Some(&db),
            temb: Some(&dt),
            residual: Some(&dr),
            scale: 0.5,
        };
        conv::conv2d(&ConvInput::plain(&dx), &dw, &g, &epi, p)
            .unwrap()
            .to_f32()
            .unwrap()
    };
    for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        let with = Arc::new(Emulator::default());
        assert!(with.tile_counters().is_some());
        let in_kernel = run(with.clone(), p);
        let launched = run(Arc::new(Emulator::without_tile_counters()), p);
        assert_eq!(in_kernel, launched, "{p:?}");
        // the counters are back to zero for the next launch
        let mut counts = vec![0u8; 4 * 64];
        with.copy_from_device(with.tile_counters().unwrap(), &mut counts)
            .unwrap();
        assert!(counts.iter().all(|&c| c == 0), "{p:?}");
    }
}

/// The weights prepared in the kernel's order are made once per weights, layout and precision
/// and kept while the weights do not change: the same convolution again launches no
/// `conv2d_weights_*` and gives the same values; after the optimizer writes the parameters in place
/// (the weights being a view of them, as a network's are), or a copy into them that says so, the
/// preparation runs again and the result is that of the new weights.
#[test]
fn prepared_weights_are_kept_until_the_weights_change() {
    use dydiff::backend::cuda::optim;
    use dydiff::backend::AdamStep;
    let gpu = gpu();
    let (n, ci, co) = (2, 24, 40);
    let g = geom(n, ci, (9, 7), co, 3, 1, [1, 1, 1, 1]);
    let len = co * ci * 9;
    let x = Buffer::from_f32(&gpu, &rand_vec(n * ci * 63, 710)).unwrap();
    let whole = Arc::new(Buffer::from_f32(&gpu, &rand_vec(len + 5, 711)).unwrap());
    let views = Buffer::views(&whole, &[len, 5]).unwrap();
    let w = &views[0];
    let conv = |w: &Buffer, p: Precision| {
        conv::conv2d(&ConvInput::plain(&x), w, &g, &ConvEpilogue::NONE, p)
            .unwrap()
            .to_f32()
            .unwrap()
    };
    // a fresh buffer holding `w`'s present values: nothing prepared yet
    let fresh = |p: Precision| {
        let copy = Buffer::from_f32(&gpu, &w.to_f32().unwrap()).unwrap();
        conv(&copy, p)
    };
    let preparations = || {
        let times = gpu.kernel_times().unwrap();
        let prepare = |t: &&KernelTime| t.name.starts_with("conv2d_weights_");
        times
            .iter()
            .filter(prepare)
            .map(|t| t.launches)
            .sum::<u64>()
    };
    gpu.set_timing(true);
    let first = conv(w, Precision::Tf32);
    assert_eq!(preparations(), 1);
    assert_eq!(conv(w, Precision::Tf32), first, "kept weights");
    assert_eq!(
        preparations(),
        1,
        "the same convolution again prepares nothing"
    );
    let bf16 = conv(w, Precision::Bf16);
    assert_eq!(preparations(), 2, "another precision, another layout");
    assert_eq!(conv(w, Precision::Tf32), first);
    assert_eq!(conv(w, Precision::Bf16), bf16);
    assert_eq!(preparations(), 2, "both layouts kept");

    // the optimizer writes the parameters (and so the weights' view) in place
    let grads = Buffer::from_f32(&gpu, &rand_vec(len + 5, 712)).unwrap();
    let zeros = || Buffer::from_f32(&gpu, &vec![0.0; len + 5]).unwrap();
    let (m, v, ema) = (zeros(), zeros(), zeros());
    let loss = Buffer::from_f32(&gpu, &[1.0]).unwrap();
    let step = AdamStep {
        lr: 0.05,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        bc1: 0.1,
        bc2: 0.001,
        max_norm: 1e9,
        ema_decay: 0.5,
    };
    optim::adamw(&whole, &[&grads], (&m, &v, &ema), &loss, &step).unwrap();
    let before = preparations();
    let updated = conv(w, Precision::Tf32);
    assert_ne!(updated, first, "the update changed the weights");
    assert_eq!(
        updated,
        fresh(Precision::Tf32),
        "prepared again from the new weights"
    );
    assert_eq!(
        preparations(),
        before + 2,
        "once for the view, once for the fresh copy"
    );

    // a copy into the buffer that says so (as a captured step's inputs are refilled)
    let values = rand_vec(len + 5, 713);
    gpu.copy_to_device(whole.ptr(), bytemuck::cast_slice(&values))
        .unwrap();
    whole.touch();
    assert_eq!(conv(w, Precision::Bf16), fresh(Precision::Bf16));
    gpu.set_timing(false);
}

/// In a graph capture (behind the caching allocator, as every device is opened), weights already
/// prepared are used — the graph replays them, no `conv2d_weights_*` in it — and weights not yet
/// prepared are prepared inside the graph but not kept (their memory is the graph's).
#[test]
fn a_capture_uses_prepared_weights_and_keeps_none_of_its_own() {
    use dydiff::backend::cuda::cache::Cached;
    use dydiff::backend::cuda::emu::Emulator;
    let gpu: Arc<dyn Gpu> = Arc::new(Cached::new(Emulator::default()));
    let (n, ci, co) = (2, 16, 24);
    let g = geom(n, ci, (8, 8), co, 3, 1, [1, 1, 1, 1]);
    let x = Buffer::from_f32(&gpu, &rand_vec(n * ci * 64, 720)).unwrap();
    let (w1, w2) = (
        Buffer::from_f32(&gpu, &rand_vec(co * ci * 9, 721)).unwrap(),
        Buffer::from_f32(&gpu, &rand_vec(co * ci * 9, 722)).unwrap(),
    );
    let conv = |w: &Buffer| {
        conv::conv2d(
            &ConvInput::plain(&x),
            w,
            &g,
            &ConvEpilogue::NONE,
            Precision::Tf32,
        )
        .unwrap()
    };
    let want1 = conv(&w1).to_f32().unwrap();
    let want2 = conv(&w2).to_f32().unwrap();
    let w2_again = Buffer::from_f32(&gpu, &w2.to_f32().unwrap()).unwrap(); // nothing prepared
    gpu.begin_capture().unwrap();
    let (y1, y2) = (conv(&w1), conv(&w2_again));
    let graph = gpu.end_capture().unwrap();
    gpu.set_timing(true);
    gpu.replay(graph).unwrap();
    assert_eq!(y1.to_f32().unwrap(), want1);
    assert_eq!(y2.to_f32().unwrap(), want2);
    let preparations = || {
        let times = gpu.kernel_times().unwrap();
        let prepare = |t: &&KernelTime| t.name.starts_with("conv2d_weights_");
        times
            .iter()
            .filter(prepare)
            .map(|t| t.launches)
            .sum::<u64>()
    };
    assert_eq!(preparations(), 1, "the graph prepares w2's copy, not w1");
    gpu.set_timing(false);
    gpu.set_timing(true);
    conv(&w1);
    conv(&w2_again);
    assert_eq!(
        preparations(),
        1,
        "w1 kept from before the capture, w2's copy not kept by it"
    );
    gpu.set_timing(false);
    gpu.drop_graph(graph).unwrap();
}

/// On a device that gives a block less shared memory (sm_86 and sm_89, 99 KiB, run the sm_80
/// machine code), a normalised 3×3 convolution whose per-channel norm table would not fit beside
/// the buffers runs its norm and SiLU as a pass of their own — the emulator refuses a launch over
/// the device's limit (`tests/ops/emulator.rs`), so the fused kernel would fail — and gives the fused
/// result of a device with room for it, within float32 rounding.
#[test]
fn a_norm_table_the_device_cannot_hold_is_applied_by_a_pass() {
    use dydiff::backend::cuda::emu::Emulator;
    let (n, ci, co, groups) = (1, 2048, 8, 32);
    let g = geom(n, ci, (8, 8), co, 3, 1, [1, 1, 1, 1]);
    let x: Vec<f32> = rand_vec(n * ci * 64, 730)
        .iter()
        .map(|v| 2.0 * v + 0.3)
        .collect();
    let (gamma, beta, wt) = (
        rand_vec(ci, 731),
        rand_vec(ci, 732),
        rand_vec(co * ci * 9, 733),
    );
    let run = |gpu: Arc<dyn Gpu>| {
        let up = |v: &[f32]| Buffer::from_f32(&gpu, v).unwrap();
        let (dx, dg, db, dw) = (up(&x), up(&gamma), up(&beta), up(&wt));
        let stats = norm::group_norm_stats(&dx, None, (n, ci, 64), groups, 1e-5).unwrap();
        let input = ConvInput {
            x: &dx,
            x2: None,
            upsample: false,
            norm: Some(NormOnLoad {
                stats: &stats,
                gamma: &dg,
                beta: &db,
                groups,
            }),
            silu: true,
        };
        gpu.set_timing(true);
        let y = conv::conv2d(&input, &dw, &g, &ConvEpilogue::NONE, Precision::Fp32)
            .unwrap()
            .to_f32()
            .unwrap();
        let names: Vec<String> = gpu
            .kernel_times()
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        (y, names)
    };
    let (fused, fused_kernels) = run(Arc::new(Emulator::default()));
    assert!(
        fused_kernels.iter().any(|k| k.ends_with("_norm_silu")),
        "{fused_kernels:?}"
    );
    let (small, small_kernels) = run(Arc::new(Emulator::with_max_shared(99 * 1024)));
    assert!(
        !small_kernels.iter().any(|k| k.ends_with("_norm_silu")),
        "{small_kernels:?}"
    );
    let tol = (ci * 9 + 16) as f64 * U;
    for (i, (a, b)) in small.iter().zip(&fused).enumerate() {
        let bound = tol * f64::from(b.abs().max(1.0)) * 8.0;
        assert!(f64::from(a - b).abs() <= bound, "[{i}] {a} vs fused {b}");
    }
}

#[test]
fn the_skip_concatenation_and_upsampling_are_read_in_place() {
    let gpu = gpu();
    // (batch, channels of x and x2, image, output channels, upsampled, kernel size: 5 and 2 run
    // the generic path)
    for (i, &(n, c1, c2, (h, w), co, upsample, k)) in [
        (2, 4, 4, (6, 8), 5, false, 3),
        (1, 6, 2, (8, 6), 7, true, 3),
        (17, 3, 1, (4, 4), 2, true, 3),
        (2, 3, 2, (6, 4), 4, true, 5),
        (1, 2, 3, (5, 7), 3, false, 2),
    ]
    .iter()
    .enumerate()
    {
        let up = if upsample { 2 } else { 1 };
        let (sh, sw) = (h / up, w / up);
        let seed = 200 + 10 * i as u64;
        let (x, x2) = (
            rand_vec(n * c1 * sh * sw, seed),
            rand_vec(n * c2 * sh * sw, seed + 1),
        );
        let g = geom(n, c1 + c2, (h, w), co, k, 1, [k / 2; 4]);
        // odd cases with circular padding (read wrapped around the upsampled image)
        let g = if i % 2 == 1 { circular(g) } else { g };
        let wt = rand_vec(co * (c1 + c2) * k * k, seed + 2);
        let cat =
            CpuStorage::concat_channels(&[&cpu(&x), &cpu(&x2)], n, &[c1, c2], sh * sw).unwrap();
        let input_cpu = if upsample {
            cat.upsample_nearest2x(n * (c1 + c2), sh, sw).unwrap()
        } else {
            cat
        };
        let want = input_cpu
            .conv2d(&cpu(&wt), None, &g)
            .unwrap()
            .to_vec()
            .unwrap();
        let s = cpu(&abs(&input_cpu.to_vec().unwrap()))
            .conv2d(&cpu(&abs(&wt)), None, &g)
            .unwrap()
            .to_vec()
            .unwrap();
        let (dx, dx2, dw) = (
            Buffer::from_f32(&gpu, &x).unwrap(),
            Buffer::from_f32(&gpu, &x2).unwrap(),
            Buffer::from_f32(&gpu, &wt).unwrap(),
        );
        let input = ConvInput {
            x: &dx,
            x2: Some((&dx2, c2)),
            upsample,
            norm: None,
            silu: false,
        };
        for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
            let got = conv::conv2d(&input, &dw, &g, &ConvEpilogue::NONE, p)
                .unwrap()
                .to_f32()
                .unwrap();
            within(
                p,
                (c1 + c2) * k * k,
                &got,
                &want,
                &s,
                0.0,
                &format!("concat {c1}+{c2}, upsample {upsample}"),
            );
        }
    }
}

/// The norm and SiLU on load at every geometry: fused into the 3×3 stride-1 kernel when they end
/// in SiLU (also SiLU alone), applied by a pass of their own before the 1×1, the stride-2 and the
/// generic kernels and for a norm without SiLU — with and without the skip concatenation.
#[test]
fn norm_and_silu_on_load_at_every_geometry() {
    let gpu = gpu();
    // (k, stride, pad, norm, silu, channels of x and of x2)
    for (i, &(k, stride, p, norm, silu, c1, c2)) in [
        (3, 1, 1, true, false, 8, 0),
        (3, 1, 1, false, true, 5, 3),
        (3, 2, 1, true, true, 8, 8),
        (1, 1, 0, true, true, 6, 2),
        (1, 1, 0, false, true, 4, 4),
        (5, 1, 2, true, true, 8, 0),
    ]
    .iter()
    .enumerate()
    {
        let (n, h, w, co, groups) = (3, 9, 10, 12, 4);
        let ci = c1 + c2;
        let g = geom(n, ci, (h, w), co, k, stride, [p, p, p, p]);
        let seed = 400 + 10 * i as u64;
        let x: Vec<f32> = rand_vec(n * c1 * h * w, seed)
            .iter()
            .map(|v| 2.0 * v - 0.3)
            .collect();
        let x2 = rand_vec(n * c2 * h * w, seed + 1);
        let (gamma, beta) = (rand_vec(ci, seed + 2), rand_vec(ci, seed + 3));
        let wt = rand_vec(co * ci * k * k, seed + 4);
        let b = rand_vec(co, seed + 5);
        // the CPU, op by op
        let cat = CpuStorage::concat_channels(&[&cpu(&x), &cpu(&x2)], n, &[c1, c2], h * w).unwrap();
        let input_cpu = if norm {
            let ng = NormGeom {
                n,
                c: ci,
                hw: h * w,
                groups,
                eps: 1e-5,
                silu,
            };
            cat.group_norm(&cpu(&gamma), &cpu(&beta), &ng).unwrap().0
        } else {
            cat.silu().unwrap()
        };
        let want = input_cpu
            .conv2d(&cpu(&wt), Some(&cpu(&b)), &g)
            .unwrap()
            .to_vec()
            .unwrap();
        let s: Vec<f32> = cpu(&abs(&input_cpu.to_vec().unwrap()))
            .conv2d(&cpu(&abs(&wt)), Some(&cpu(&abs(&b))), &g)
            .unwrap()
            .to_vec()
            .unwrap()
            .iter()
            .map(|v| v + 1e-6)
            .collect();
        // the device
        let (dx, dx2) = (
            Buffer::from_f32(&gpu, &x).unwrap(),
            Buffer::from_f32(&gpu, &x2).unwrap(),
        );
        let stats =
            norm::group_norm_stats(&dx, Some((&dx2, c2)), (n, ci, h * w), groups, 1e-5).unwrap();
        let (dg, dbeta, dw, db) = (
            Buffer::from_f32(&gpu, &gamma).unwrap(),
            Buffer::from_f32(&gpu, &beta).unwrap(),
            Buffer::from_f32(&gpu, &wt).unwrap(),
            Buffer::from_f32(&gpu, &b).unwrap(),
        );
        let input = ConvInput {
            x: &dx,
            x2: (c2 > 0).then_some((&dx2, c2)),
            upsample: false,
            norm: norm.then_some(NormOnLoad {
                stats: &stats,
                gamma: &dg,
                beta: &dbeta,
                groups,
            }),
            silu,
        };
        let epi = ConvEpilogue {
            bias: Some(&db),
            ..ConvEpilogue::NONE
        };
        for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
            let got = conv::conv2d(&input, &dw, &g, &epi, p)
                .unwrap()
                .to_f32()
                .unwrap();
            within(
                p,
                ci * k * k,
                &got,
                &want,
                &s,
                4e-6,
                &format!("k {k} stride {stride} norm {norm} silu {silu} channels {c1}+{c2}"),
            );
        }
    }
}

fn conv_geoms() -> Vec<ConvGeom> {
    let g = |n, ci, h, w, co, k, stride, pad| ConvGeom {
        n,
        ci,
        h,
        w,
        co,
        k,
        stride,
        pad,
        pad_mode: PadMode::Zeros,
    };
    let circular = |g: ConvGeom| ConvGeom {
        pad_mode: PadMode::Circular,
        ..g
    };
    vec![
        g(2, 5, 7, 6, 9, 3, 1, [1; 4]),
        // diffusers' Downsample2D(padding=0): bottom and right only
        g(3, 4, 8, 6, 5, 3, 2, [0, 1, 0, 1]),
        g(2, 3, 9, 7, 4, 3, 2, [1; 4]),
        g(2, 70, 5, 5, 66, 1, 1, [0; 4]),
        // a small output with a long reduction: split into slices
        g(4, 3, 32, 32, 4, 3, 1, [1; 4]),
        // periodic fields: the padding wraps around (a tap may land on an output position
        // from both sides, and at stride 2 on none)
        circular(g(2, 5, 7, 6, 9, 3, 1, [1; 4])),
        circular(g(2, 3, 8, 6, 4, 3, 2, [1; 4])),
        circular(g(1, 2, 1, 2, 3, 3, 1, [1; 4])),
        circular(g(4, 3, 32, 32, 4, 3, 1, [1; 4])),
        // other kernel sizes and strides, padding wider than the kernel: the input gradient
        // through the columns, the weight gradient over several phase planes
        g(2, 3, 9, 8, 4, 5, 1, [2; 4]),
        g(2, 4, 8, 7, 3, 2, 2, [0; 4]),
        g(3, 2, 7, 9, 5, 4, 3, [1, 2, 0, 3]),
        g(1, 2, 4, 5, 3, 3, 1, [3; 4]),
        circular(g(2, 3, 8, 8, 4, 5, 2, [2; 4])),
        circular(g(2, 2, 5, 6, 3, 2, 1, [1, 0, 0, 1])),
        // an empty batch: zero gradients
        g(0, 3, 5, 5, 2, 3, 1, [1; 4]),
        g(0, 3, 6, 6, 2, 5, 2, [2; 4]),
    ]
}

fn conv_backward_at(p: Precision, rel: f32) {
    let _p = precision(p);
    for (i, g) in conv_geoms().into_iter().enumerate() {
        let s = i as u64 * 10;
        let (xc, xg) = both(&rand_vec(g.n * g.ci * g.h * g.w, s));
        let (wc, wg) = both(&rand_vec(g.co * g.ci * g.k * g.k, s + 1));
        let (dc, dg) = both(&rand_vec(g.n * g.co * g.ho() * g.wo(), s + 2));
        for need_dx in [true, false] {
            let (dx_c, dw_c, db_c) = xc.conv2d_backward(&wc, &dc, &g, need_dx).unwrap();
            let (dx_g, dw_g, db_g) = xg.conv2d_backward(&wg, &dg, &g, need_dx).unwrap();
            let what = format!("{p:?} {g:?}");
            assert_eq!(dx_g.is_some(), need_dx);
            if let (Some(a), Some(b)) = (&dx_g, &dx_c) {
                close(a, b, rel, &format!("dx {what}"));
            }
            // dw sums n·ho·wo terms (4096 in the last geometry) in another order than the CPU
            close(&dw_g, &dw_c, rel.max(1e-5), &format!("dw {what}"));
            close(&db_g, &db_c, 2e-6, &format!("db {what}"));
        }
    }
}

#[test]
fn conv2d_backward_matches_the_cpu() {
    conv_backward_at(Precision::Fp32, 2e-6);
    conv_backward_at(Precision::Tf32, 2e-3);
    conv_backward_at(Precision::Bf16, 1.6e-2);
}

#[test]
fn inputs_that_do_not_fit_are_refused() {
    let gpu = gpu();
    let x = Buffer::from_f32(&gpu, &[0.0; 10]).unwrap();
    let w = Buffer::from_f32(&gpu, &[0.0; 9]).unwrap();
    let g = geom(1, 1, (3, 3), 1, 3, 1, [1, 1, 1, 1]);
    let e = conv::conv2d(
        &ConvInput::plain(&x),
        &w,
        &g,
        &ConvEpilogue::NONE,
        Precision::Tf32,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("x holds 10 values, expected 9"),
        "{e}"
    );
}
