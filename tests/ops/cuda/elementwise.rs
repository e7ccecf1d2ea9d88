//! The element-wise and data-movement kernels (kernels/elementwise.cu) on the emulator (or GPU 0 with DYDIFF_TEST_DEVICE=cuda) against the CPU
//! backend, on ragged shapes: data movement exactly; arithmetic within a few float32 ulp (the
//! device's expf, sinf and cosf against the host's); attention within 2e-6 relative to the
//! output's scale in float32 and 3e-3 on the tensor cores (head dimensions 1 to 128, 1 to 300
//! tokens, batch 1 and 17).
//! Their gradients (SiLU's, the upsampling's, slicing's) exactly or within 2e-6.

use super::{both, close, cpu, gpu, precision};
use crate::common::{assert_close, rand_vec};
use dydiff::backend::cpu::CpuStorage;
use dydiff::backend::cuda::buffer::Buffer;
use dydiff::backend::cuda::elementwise as ew;
use dydiff::backend::cuda::gpu::Gpu;
use dydiff::backend::cuda::Precision;
use dydiff::backend::{BackendStorage, BinaryOp};
use std::sync::Arc;

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
fn elementwise_backward_matches_the_cpu() {
    let _p = precision(Precision::Fp32);
    let x: Vec<f32> = rand_vec(1001, 11).iter().map(|v| 6.0 * v).collect();
    let (xc, xg) = both(&x);
    let (dc, dg) = both(&rand_vec(1001, 12));
    close(
        &xg.silu_backward(&dg).unwrap(),
        &xc.silu_backward(&dc).unwrap(),
        4e-7,
        "silu",
    );
    let (nc, h, w) = (5, 3, 7);
    let (uc, ug) = both(&rand_vec(nc * 4 * h * w, 13));
    close(
        &ug.upsample_nearest2x_backward(nc, h, w).unwrap(),
        &uc.upsample_nearest2x_backward(nc, h, w).unwrap(),
        2e-7,
        "upsample",
    );
    let (n, c, hw) = (3, 9, 10);
    for (start, end) in [(0, 9), (2, 5), (8, 9), (4, 4)] {
        let (sc, sg) = both(&rand_vec(n * (end - start) * hw, 14));
        assert_eq!(
            sg.slice_channels_backward(n, c, hw, start, end)
                .unwrap()
                .to_vec()
                .unwrap(),
            sc.slice_channels_backward(n, c, hw, start, end)
                .unwrap()
                .to_vec()
                .unwrap(),
            "slice {start}..{end}"
        );
    }
}
