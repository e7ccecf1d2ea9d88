//! The matrix-product kernels (kernels/gemm.cu) against a float64 product, on ragged shapes (1 to
//! 130 rows and columns, reductions of 1 to 600, batch 1 and 17), every transpose, with and
//! without bias (per column or row), output scale and residual, in every precision; and `linear`
//! equal to the CPU backend's. On the emulator, or GPU 0 with DYDIFF_TEST_DEVICE=cuda. Bounds per
//! element (docs/devices.md, “Precision”): `k·u·Σ|a||b|` in float32, `(2·2⁻¹¹ + k·u)·Σ|a||b|` with
//! TF32 operands, `(2·2⁻⁸ + k·u)·Σ|a||b|` with bf16 operands.

use super::gpu;
use crate::common::rand_vec;
use dydiff::backend::cpu::CpuStorage;
use dydiff::backend::cuda::buffer::Buffer;
use dydiff::backend::cuda::gemm::{self, Epilogue};
use dydiff::backend::cuda::gpu::Gpu;
use dydiff::backend::cuda::norm;
use dydiff::backend::cuda::Precision;
use dydiff::backend::{BackendStorage, MatmulGeom};
use std::sync::Arc;

const U: f64 = 1.0 / 16_777_216.0;

fn bound(p: Precision, k: usize, abs_sum: f64) -> f64 {
    let rel = match p {
        Precision::Fp32 => k as f64 * U,
        Precision::Tf32 => 2.0 / 2048.0 + k as f64 * U,
        Precision::Bf16 => 2.0 / 256.0 + k as f64 * U,
    };
    rel * abs_sum + 1e-30
}

#[allow(clippy::too_many_arguments)]
fn check(
    p: Precision,
    g: &MatmulGeom,
    bias: Option<(Vec<f32>, bool)>,
    scale: f32,
    residual: bool,
    seed: u64,
) {
    let gpu = gpu();
    let a = rand_vec(g.batch * g.m * g.k, seed);
    let b = rand_vec(g.batch * g.k * g.n, seed + 1);
    let res = residual.then(|| rand_vec(g.batch * g.m * g.n, seed + 2));
    let (da, db) = (
        Buffer::from_f32(&gpu, &a).unwrap(),
        Buffer::from_f32(&gpu, &b).unwrap(),
    );
    let dbias = bias
        .as_ref()
        .map(|(v, _)| Buffer::from_f32(&gpu, v).unwrap());
    let dres = res.as_ref().map(|v| Buffer::from_f32(&gpu, v).unwrap());
    let epi = Epilogue {
        bias: dbias.as_ref(),
        bias_per_row: bias.as_ref().is_some_and(|(_, r)| *r),
        scale,
        residual: dres.as_ref(),
    };
    let c = gemm::matmul(&da, &db, g, epi, p).unwrap().to_f32().unwrap();
    for bt in 0..g.batch {
        for i in 0..g.m {
            for j in 0..g.n {
                let (mut dot, mut abs) = (0f64, 0f64);
                for k in 0..g.k {
                    let x = f64::from(if g.a_trans {
                        a[bt * g.m * g.k + k * g.m + i]
                    } else {
                        a[bt * g.m * g.k + i * g.k + k]
                    });
                    let y = f64::from(if g.b_trans {
                        b[bt * g.k * g.n + j * g.k + k]
                    } else {
                        b[bt * g.k * g.n + k * g.n + j]
                    });
                    dot += x * y;
                    abs += (x * y).abs();
                }
                let bias_v = bias
                    .as_ref()
                    .map_or(0.0, |(v, row)| f64::from(v[if *row { i } else { j }]));
                let r = res
                    .as_ref()
                    .map_or(0.0, |v| f64::from(v[bt * g.m * g.n + i * g.n + j]));
                let want = (dot + bias_v + r) * f64::from(scale);
                let got = f64::from(c[bt * g.m * g.n + i * g.n + j]);
                // the epilogue's own roundings: bias add, residual add, scale
                let tol = bound(p, g.k, abs) * f64::from(scale).abs()
                    + 4.0 * U * (want.abs() + (r.abs() + bias_v.abs()) * f64::from(scale).abs());
                assert!(
                    (got - want).abs() <= tol,
                    "{p:?} {g:?} bias {} residual {residual}: C[{bt}][{i}][{j}] = {got}, expected {want} (±{tol:.2e})",
                    bias.is_some()
                );
            }
        }
    }
}

#[test]
fn products_match_float64_on_ragged_shapes_and_every_transpose() {
    let mut seed = 1;
    for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        for (batch, m, n, k) in [
            (1, 1, 1, 1),
            (17, 3, 5, 7),
            (1, 64, 64, 16),
            (2, 70, 130, 33),
            (1, 129, 65, 600),
            (3, 5, 200, 17),
            // an empty reduction: zeros (the operands are empty and never read)
            (2, 9, 7, 0),
        ] {
            for (a_trans, b_trans) in [(false, false), (false, true), (true, false), (true, true)] {
                let g = MatmulGeom {
                    batch,
                    m,
                    n,
                    k,
                    a_trans,
                    b_trans,
                };
                check(p, &g, None, 1.0, false, seed);
                seed += 3;
            }
        }
    }
}

#[test]
fn the_epilogue_adds_bias_scales_and_adds_the_residual() {
    let mut seed = 100;
    for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        for (batch, m, n, k) in [(1, 37, 41, 29), (17, 2, 9, 3), (2, 40, 70, 300)] {
            let g = MatmulGeom {
                batch,
                m,
                n,
                k,
                a_trans: false,
                b_trans: true,
            };
            check(p, &g, Some((rand_vec(n, seed), false)), 1.0, false, seed);
            check(
                p,
                &g,
                Some((rand_vec(m, seed), true)),
                std::f32::consts::FRAC_1_SQRT_2,
                true,
                seed + 1,
            );
            check(p, &g, None, 0.5, true, seed + 2);
            seed += 5;
        }
    }
}

/// A product split among blocks (K 600: 19 slices in 4 splits) ends the same, bit for bit, whether
/// the last block of a tile sums the partial planes (the device's tile counters) or a finishing
/// launch does — with a bias per row, a residual and a scale.
#[test]
fn split_k_finished_in_the_kernel_equals_the_finishing_launch() {
    use dydiff::backend::cuda::emu::Emulator;
    let g = MatmulGeom {
        batch: 2,
        m: 70,
        n: 50,
        k: 600,
        a_trans: false,
        b_trans: true,
    };
    let a = rand_vec(g.batch * g.m * g.k, 900);
    let b = rand_vec(g.batch * g.k * g.n, 901);
    let (bias, res) = (rand_vec(g.m, 902), rand_vec(g.batch * g.m * g.n, 903));
    let run = |gpu: Arc<dyn Gpu>, p: Precision| {
        let up = |v: &[f32]| Buffer::from_f32(&gpu, v).unwrap();
        let (da, db, dbias, dres) = (up(&a), up(&b), up(&bias), up(&res));
        let epi = Epilogue {
            bias: Some(&dbias),
            bias_per_row: true,
            scale: 0.25,
            residual: Some(&dres),
        };
        gemm::matmul(&da, &db, &g, epi, p)
            .unwrap()
            .to_f32()
            .unwrap()
    };
    for p in [Precision::Tf32, Precision::Bf16] {
        let in_kernel = run(Arc::new(Emulator::default()), p);
        let launched = run(Arc::new(Emulator::without_tile_counters()), p);
        assert_eq!(in_kernel, launched, "{p:?}");
    }
}

#[test]
fn linear_equals_the_cpu_backend() {
    let gpu = gpu();
    for (m, k, n) in [(1, 1, 1), (17, 64, 256), (1024, 32, 96), (5, 300, 7)] {
        let x = rand_vec(m * k, 7);
        let w = rand_vec(n * k, 8);
        let b = rand_vec(n, 9);
        let want = CpuStorage::from_vec(x.clone())
            .linear(
                &CpuStorage::from_vec(w.clone()),
                Some(&CpuStorage::from_vec(b.clone())),
                m,
                k,
                n,
            )
            .unwrap()
            .to_vec()
            .unwrap();
        let got = gemm::linear(
            &Buffer::from_f32(&gpu, &x).unwrap(),
            &Buffer::from_f32(&gpu, &w).unwrap(),
            Some(&Buffer::from_f32(&gpu, &b).unwrap()),
            (m, k, n),
            Precision::Fp32,
        )
        .unwrap()
        .to_f32()
        .unwrap();
        for (i, (g, c)) in got.iter().zip(&want).enumerate() {
            // both float32, summed in different orders: within twice one product's bound
            let (row, col) = (i / n, i % n);
            let abs: f64 = (0..k)
                .map(|j| f64::from(x[row * k + j] * w[col * k + j]).abs())
                .sum::<f64>()
                + f64::from(b[col].abs());
            let tol = 2.0 * bound(Precision::Fp32, k + 1, abs);
            assert!(
                f64::from(g - c).abs() <= tol,
                "linear {m}×{k}→{n}: [{i}] {g} vs CPU {c}"
            );
        }
    }
}

#[test]
fn operands_that_do_not_fit_the_geometry_are_refused() {
    let gpu = gpu();
    let a = Buffer::from_f32(&gpu, &[0.0; 6]).unwrap();
    let g = MatmulGeom {
        batch: 1,
        m: 2,
        n: 2,
        k: 4,
        a_trans: false,
        b_trans: false,
    };
    let e = gemm::matmul(&a, &a, &g, Epilogue::NONE, Precision::Tf32).unwrap_err();
    assert!(
        e.to_string().contains("A holds 6 values, expected 8"),
        "{e}"
    );
}

/// The images packed as normalised tokens (attention's norm before its projections), then projected:
/// equal to the CPU's group norm, transpose and linear — in one slice of K, and over several
/// slices split among blocks (96 channels).
#[test]
fn a_normalised_image_read_as_tokens_equals_norm_then_linear() {
    normalised_tokens((3, 8, 37, 5, 4));
    normalised_tokens((2, 96, 70, 40, 8));
}

fn normalised_tokens((n, c, l, cout, groups): (usize, usize, usize, usize, usize)) {
    use dydiff::backend::cuda::norm::NormOnLoad;
    use dydiff::backend::NormGeom;
    let gpu = gpu();
    let x: Vec<f32> = rand_vec(n * c * l, 80)
        .iter()
        .map(|v| 3.0 * v + 1.0)
        .collect();
    let (gamma, beta) = (rand_vec(c, 81), rand_vec(c, 82));
    let (w, b) = (rand_vec(cout * c, 83), rand_vec(cout, 84));
    let cpu = |v: &[f32]| CpuStorage::from_vec(v.to_vec());
    let g = NormGeom {
        n,
        c,
        hw: l,
        groups,
        eps: 1e-5,
        silu: false,
    };
    let (normed, _) = cpu(&x).group_norm(&cpu(&gamma), &cpu(&beta), &g).unwrap();
    let normed_v = normed.to_vec().unwrap();
    let want = normed
        .transpose12(n, c, l)
        .unwrap()
        .linear(&cpu(&w), Some(&cpu(&b)), n * l, c, cout)
        .unwrap()
        .to_vec()
        .unwrap();
    let dx = Buffer::from_f32(&gpu, &x).unwrap();
    let stats = norm::group_norm_stats(&dx, None, (n, c, l), groups, 1e-5).unwrap();
    let (dg, dbeta) = (
        Buffer::from_f32(&gpu, &gamma).unwrap(),
        Buffer::from_f32(&gpu, &beta).unwrap(),
    );
    let (dw, db) = (
        Buffer::from_f32(&gpu, &w).unwrap(),
        Buffer::from_f32(&gpu, &b).unwrap(),
    );
    let layout = gemm::Layout {
        batch: n,
        m: l,
        n: cout,
        k: c,
        a_trans: false,
        b_trans: true,
        stride_a: l * c,
        stride_b: 0,
        rows_are_samples: false,
    };
    let packing = gemm::Packing {
        batch: n,
        rows: l,
        k: c,
        width: c,
        stride: c * l,
        trans: true,
    };
    for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        let norm = NormOnLoad {
            stats: &stats,
            gamma: &dg,
            beta: &dbeta,
            groups,
        };
        let tokens = gemm::pack(&dx, &packing, Some(norm)).unwrap();
        let epi = Epilogue {
            bias: Some(&db),
            ..Epilogue::NONE
        };
        let got = gemm::strided(&tokens, &dw, &layout, epi, p)
            .unwrap()
            .to_f32()
            .unwrap();
        // the bound of a product of the normalised operands, plus the norm's own rounding
        // (statistics and scale/shift in float32) on the same magnitudes
        for (i, (x, y)) in got.iter().zip(&want).enumerate() {
            let (img, o) = (i / (l * cout), i % cout);
            let tok = (i / cout) % l;
            let abs: f64 = (0..c)
                .map(|ch| {
                    let a = normed_v[(img * c + ch) * l + tok].abs() as f64;
                    a * (w[o * c + ch].abs() as f64)
                })
                .sum();
            let tol = bound(p, c, abs) + 1e-5 * (abs + 1.0);
            assert!(
                ((x - y).abs() as f64) <= tol,
                "{p:?}[{i}]: {x} vs reference {y} (bound {tol})"
            );
        }
    }
}
