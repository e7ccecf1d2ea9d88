//! The convolution and group-norm kernels (kernels/conv.cu, kernels/norm.cu) on the emulator (or
//! GPU 0 with DYDIFF_TEST_DEVICE=cuda) against the CPU backend's unfused operations, on ragged
//! shapes (batch 1 and 17, 1 to 70 channels, odd and non-square images, 3×3 stride 1 and 2 with
//! diffusers' one-sided downsampling pad, 1×1), in every precision: plain convolutions with bias;
//! the fused resnet head (group norm + SiLU on load, bias, time embedding, residual, output scale);
//! the skip concatenation and the 2× upsampling read in place; the norm and SiLU on load at every
//! geometry (fused, or a pass of their own); the group norm itself.
//!
//! Bounds per element (docs/devices.md, “Precision”): with `S = Σ|w·in|` (a convolution of the
//! absolute values), `(K·u + 8u)·S` in float32, `(2·2⁻¹¹ + K·u + 8u)·S` with TF32 operands and
//! `(2·2⁻⁸ + K·u + 8u)·S` with bf16 operands — the
//! `8u` for the input transform computed in a different order — plus a few ulp of the epilogue.

mod common;

use common::rand_vec;
use dydiff::backend::cpu::CpuStorage;
use dydiff::backend::cuda::buffer::Buffer;
use dydiff::backend::cuda::conv::{self, ConvEpilogue, ConvInput, NormOnLoad};
use dydiff::backend::cuda::gpu::Gpu;
use dydiff::backend::cuda::Precision;
use dydiff::backend::{BackendStorage, BinaryOp, ConvGeom, NormGeom, PadMode};
use std::sync::Arc;

const U: f64 = 1.0 / 16_777_216.0;

fn gpu() -> Arc<dyn Gpu> {
    common::test_gpu()
}

fn cpu(v: &[f32]) -> CpuStorage {
    CpuStorage::from_vec(v.to_vec())
}

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
    for (i, &(n, ci, (h, w), co, groups)) in [
        (1, 8, (8, 8), 16, 4),
        (17, 4, (5, 7), 6, 2),
        (2, 64, (8, 8), 64, 32),
    ]
    .iter()
    .enumerate()
    {
        let g = geom(n, ci, (h, w), co, 3, 1, [1, 1, 1, 1]);
        // the second case with circular padding
        let g = if i == 1 { circular(g) } else { g };
        let seed = 100 + 10 * i as u64;
        let x: Vec<f32> = rand_vec(n * ci * h * w, seed)
            .iter()
            .map(|v| 3.0 * v + 0.7)
            .collect();
        let (gamma, beta) = (rand_vec(ci, seed + 1), rand_vec(ci, seed + 2));
        let wt = rand_vec(co * ci * 9, seed + 3);
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
        let stats = conv::group_norm_stats(&dx, None, (n, ci, h * w), groups, 1e-5).unwrap();
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
                ci * 9,
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

#[test]
fn the_skip_concatenation_and_upsampling_are_read_in_place() {
    let gpu = gpu();
    for (i, &(n, c1, c2, (h, w), co, upsample)) in [
        (2, 4, 4, (6, 8), 5, false),
        (1, 6, 2, (8, 6), 7, true),
        (17, 3, 1, (4, 4), 2, true),
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
        let g = geom(n, c1 + c2, (h, w), co, 3, 1, [1, 1, 1, 1]);
        // odd cases with circular padding (read wrapped around the upsampled image)
        let g = if i % 2 == 1 { circular(g) } else { g };
        let wt = rand_vec(co * (c1 + c2) * 9, seed + 2);
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
                (c1 + c2) * 9,
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
            conv::group_norm_stats(&dx, Some((&dx2, c2)), (n, ci, h * w), groups, 1e-5).unwrap();
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

#[test]
fn group_norm_matches_the_cpu() {
    let gpu = gpu();
    for (i, &(n, c, hw, groups, silu)) in [
        (1, 4, 1, 1, false),
        (17, 6, 35, 3, true),
        (2, 64, 256, 32, false),
        (3, 32, 64, 32, true),
    ]
    .iter()
    .enumerate()
    {
        let x: Vec<f32> = rand_vec(n * c * hw, 300 + i as u64)
            .iter()
            .map(|v| 2.0 * v - 0.3)
            .collect();
        let (gamma, beta) = (rand_vec(c, 310 + i as u64), rand_vec(c, 320 + i as u64));
        let g = NormGeom {
            n,
            c,
            hw,
            groups,
            eps: 1e-6,
            silu,
        };
        let (want, _) = cpu(&x).group_norm(&cpu(&gamma), &cpu(&beta), &g).unwrap();
        let (got, _) = conv::group_norm(
            &Buffer::from_f32(&gpu, &x).unwrap(),
            &Buffer::from_f32(&gpu, &gamma).unwrap(),
            &Buffer::from_f32(&gpu, &beta).unwrap(),
            &g,
        )
        .unwrap();
        common::assert_close(
            &got.to_f32().unwrap(),
            &want.to_vec().unwrap(),
            2e-6,
            2e-6,
            &format!("{g:?}"),
        );
    }
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
