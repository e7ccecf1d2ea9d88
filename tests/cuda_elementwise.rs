//! The element-wise, data-movement and attention kernels (kernels/elementwise.cu,
//! kernels/attention.cu) on the emulator (or GPU 0 with DYDIFF_TEST_DEVICE=cuda) against the CPU
//! backend, on ragged shapes: data movement exactly; arithmetic within a few float32 ulp (the
//! device's expf, sinf and cosf against the host's); attention within 2e-6 relative to the
//! output's scale in float32 and 3e-3 on the tensor cores (head dimensions 1 to 128, 1 to 300
//! tokens, batch 1 and 17).

mod common;

use common::{assert_close, rand_vec};
use dydiff::backend::cpu::CpuStorage;
use dydiff::backend::cuda::buffer::Buffer;
use dydiff::backend::cuda::elementwise as ew;
use dydiff::backend::cuda::gpu::Gpu;
use dydiff::backend::cuda::{self, Precision};
use dydiff::backend::{AttnGeom, BackendStorage, BinaryOp};
use std::sync::Arc;

fn gpu() -> Arc<dyn Gpu> {
    common::test_gpu()
}

fn cpu(v: &[f32]) -> CpuStorage {
    CpuStorage::from_vec(v.to_vec())
}

fn dev(g: &Arc<dyn Gpu>, v: &[f32]) -> Buffer {
    Buffer::from_f32(g, v).unwrap()
}

const LENS: [usize; 4] = [1, 7, 256, 1000];

#[test]
fn arithmetic_matches_the_cpu() {
    let g = gpu();
    for (i, &len) in LENS.iter().enumerate() {
        let a: Vec<f32> = rand_vec(len, i as u64).iter().map(|v| 6.0 * v).collect();
        let b = rand_vec(len, 10 + i as u64);
        let (da, db) = (dev(&g, &a), dev(&g, &b));
        let close = |got: Buffer, want: CpuStorage, what: &str| {
            assert_close(
                &got.to_f32().unwrap(),
                &want.to_vec().unwrap(),
                1e-7,
                4e-7,
                what,
            );
        };
        close(ew::silu(&da).unwrap(), cpu(&a).silu().unwrap(), "silu");
        for op in [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::AbsDiff,
            BinaryOp::SignDiff,
        ] {
            close(
                ew::binary(&da, &db, op).unwrap(),
                cpu(&a).binary(&cpu(&b), op).unwrap(),
                &format!("{op:?}"),
            );
        }
        close(
            ew::affine(&da, 0.37, -1.5).unwrap(),
            cpu(&a).affine(0.37, -1.5).unwrap(),
            "affine",
        );
    }
}

#[test]
fn data_movement_matches_the_cpu_exactly() {
    let g = gpu();
    for &(n, c, h, w) in &[(1, 1, 1, 1), (17, 3, 5, 7), (2, 64, 8, 8)] {
        let hw = h * w;
        let x = rand_vec(n * c * hw, 40);
        let b = rand_vec(n * c, 41);
        let dx = dev(&g, &x);
        let same = |got: Buffer, want: CpuStorage, what: &str| {
            assert_eq!(
                got.to_f32().unwrap(),
                want.to_vec().unwrap(),
                "{what} ({n}, {c}, {h}, {w})"
            );
        };
        same(
            ew::add_channel_bias(&dx, &dev(&g, &b), (n, c, hw)).unwrap(),
            cpu(&x).add_channel_bias(&cpu(&b), n, c, hw).unwrap(),
            "add_channel_bias",
        );
        same(
            ew::upsample_nearest2x(&dx, (n * c, h, w)).unwrap(),
            cpu(&x).upsample_nearest2x(n * c, h, w).unwrap(),
            "upsample",
        );
        same(
            ew::transpose12(&dx, (n, c, hw)).unwrap(),
            cpu(&x).transpose12(n, c, hw).unwrap(),
            "transpose12",
        );
        let x2 = rand_vec(n * 2 * hw, 42);
        same(
            ew::concat_channels(&[&dx, &dev(&g, &x2)], n, &[c, 2], hw).unwrap(),
            CpuStorage::concat_channels(&[&cpu(&x), &cpu(&x2)], n, &[c, 2], hw).unwrap(),
            "concat",
        );
        for (s, e) in [(0, c), (c / 2, c), (0, 1)] {
            same(
                ew::slice_channels(&dx, (n, c, hw), s, e).unwrap(),
                cpu(&x).slice_channels(n, c, hw, s, e).unwrap(),
                &format!("slice {s}..{e}"),
            );
        }
    }
    // a transpose bigger than one tile in both directions, not a multiple of it
    let x = rand_vec(3 * 70 * 45, 43);
    assert_eq!(
        ew::transpose12(&dev(&g, &x), (3, 70, 45))
            .unwrap()
            .to_f32()
            .unwrap(),
        cpu(&x).transpose12(3, 70, 45).unwrap().to_vec().unwrap()
    );
}

#[test]
fn the_timestep_embedding_matches_the_cpu() {
    let g = gpu();
    let t: Vec<f32> = vec![0.0, 1.0, 17.0, 500.0, 999.0];
    for (dim, flip, shift) in [
        (64usize, true, 0.0f32),
        (33, false, 1.0),
        (128, true, 1.0),
        (1, false, 0.0),
    ] {
        let want = cpu(&t)
            .timestep_embedding(dim, flip, shift)
            .unwrap()
            .to_vec()
            .unwrap();
        let got = ew::timestep_embedding(&dev(&g, &t), dim, flip, shift)
            .unwrap()
            .to_f32()
            .unwrap();
        // sin and cos of arguments up to 999 rad: a few ulp of the argument's size
        assert_close(
            &got,
            &want,
            2e-6,
            0.0,
            &format!("dim {dim} flip {flip} shift {shift}"),
        );
    }
}

#[test]
fn attention_matches_the_cpu() {
    let g = gpu();
    for (i, &(n, l, heads, d)) in [
        (1, 1, 1, 1),
        (17, 5, 2, 3),
        (2, 64, 4, 32),
        (1, 300, 2, 16),
        (1, 33, 1, 128),
        (2, 100, 2, 64),
    ]
    .iter()
    .enumerate()
    {
        let len = n * l * heads * d;
        let (q, k, v) = (
            rand_vec(len, 50 + i as u64),
            rand_vec(len, 60 + i as u64),
            rand_vec(len, 70 + i as u64),
        );
        let geo = AttnGeom {
            n,
            l,
            heads,
            d,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let want = cpu(&q)
            .attention(&cpu(&k), &cpu(&v), &geo)
            .unwrap()
            .to_vec()
            .unwrap();
        // float32; and on the tensor cores where the head dimension has a kernel (16, 32, 128
        // here), whose products round q·scale, k, v and the probabilities to TF32 (2⁻¹¹
        // relative): an output is a weighted mean of values in [−1, 1] whose weights move by
        // about 2⁻¹¹·|score| each
        for (p, tol) in [(Precision::Fp32, 2e-6), (Precision::Tf32, 3e-3)] {
            cuda::set_precision(p);
            let got = ew::attention(&dev(&g, &q), &dev(&g, &k), &dev(&g, &v), &geo)
                .unwrap()
                .to_f32()
                .unwrap();
            assert_close(&got, &want, tol, tol, &format!("{geo:?} {p:?}"));
        }
    }
    let b = dev(&g, &[0.0; 129]);
    let e = ew::attention(
        &b,
        &b,
        &b,
        &AttnGeom {
            n: 1,
            l: 1,
            heads: 1,
            d: 129,
            scale: 1.0,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("head dimension 129"), "{e}");
}
