//! Dropout and the L1 loss: the masks of docs/random.md (“Dropout masks”) against the counter
//! layout computed here from the Philox function; their statistics; their independence of the
//! batch; the backward passes against finite differences; the CUDA kernel on the emulator against
//! the CPU, to the bit; the network's dropout (fused and unfused paths, batch invariance, `p = 0`).

use crate::common::{assert_close, rand_vec};
use dydiff::backend::cpu::CpuStorage;
use dydiff::backend::cuda::buffer::Buffer;
use dydiff::backend::cuda::process;
use dydiff::backend::{row_words, BackendStorage, BinaryOp, DropoutGeom};
use dydiff::diffusion::ddim::rows_tensor;
use dydiff::nn::{Dropout, UNet2D, UNet2DConfig};
use dydiff::rng::{philox4x32_10, NoiseKey, NoiseRow, Purpose};
use dydiff::tensor::autograd::{backward, Tape};
use dydiff::{Device, Tensor};

fn key(step: u32) -> NoiseKey {
    NoiseKey {
        seed: 0x0123_4567_89ab_cdef,
        purpose: Purpose::Dropout,
        step,
    }
}

fn pairs(n: usize) -> Vec<NoiseRow> {
    (0..n)
        .map(|i| NoiseRow {
            sample: (i / 3) as u32 + 2,
            member: (i % 3) as u32 * 5,
        })
        .collect()
}

/// The dropout of `x` `(rows, row_len)` on the CPU backend.
fn cpu_dropout(x: &[f32], rows: &[NoiseRow], g: &DropoutGeom) -> Vec<f32> {
    CpuStorage::from_vec(x.to_vec())
        .dropout(&CpuStorage::from_vec(row_words(rows)), g)
        .unwrap()
        .to_vec()
        .unwrap()
}

#[test]
fn masks_follow_the_counter_layout() {
    let rows = pairs(5);
    // two groups of eight calls (the vector path), then eleven values (the reference path)
    let (row_len, layer, p) = (75, 7, 0.3f32);
    let g = DropoutGeom {
        key: key(11),
        layer,
        p,
        rows: rows.len(),
        row_len,
    };
    let x: Vec<f32> = (0..rows.len() * row_len).map(|i| 1.0 + i as f32).collect();
    let y = cpu_dropout(&x, &rows, &g);
    let threshold = (f64::from(p) * 2f64.powi(32)).round() as u32;
    let scale = (1.0 / (1.0 - f64::from(p))) as f32;
    for (r, row) in rows.iter().enumerate() {
        for e in 0..row_len {
            let c3 = (Purpose::Dropout as u32) << 24 | row.member;
            let w = philox4x32_10(
                [(layer << 24) | (e / 4) as u32, 11, row.sample, c3],
                [g.key.seed as u32, (g.key.seed >> 32) as u32],
            );
            let i = r * row_len + e;
            let want = if w[e % 4] >= threshold {
                x[i] * scale
            } else {
                0.0
            };
            assert_eq!(y[i], want, "row {r} element {e}");
        }
    }
}

#[test]
fn masks_keep_one_minus_p_and_differ_by_layer_call_and_pair() {
    let n = 200_000;
    for p in [0.1f32, 0.5, 0.9] {
        let g = DropoutGeom {
            key: key(0),
            layer: 0,
            p,
            rows: 1,
            row_len: n,
        };
        let y = cpu_dropout(&vec![1.0; n], &pairs(1), &g);
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
        // standard error √(p(1−p)/n) ≤ 0.0012
        assert!(
            (kept - (1.0 - f64::from(p))).abs() < 0.006,
            "p {p}: kept {kept}"
        );
        let mean = y.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.05, "p {p}: mean {mean} (expected 1)");
    }
    let base = DropoutGeom {
        key: key(3),
        layer: 2,
        p: 0.5,
        rows: 1,
        row_len: 64,
    };
    let ones = vec![1.0; 64];
    let y0 = cpu_dropout(&ones, &pairs(1), &base);
    for (what, g, rows) in [
        ("layer", DropoutGeom { layer: 3, ..base }, pairs(1)),
        (
            "call",
            DropoutGeom {
                key: key(4),
                ..base
            },
            pairs(1),
        ),
        ("member", base, pairs(2)[1..].to_vec()),
        (
            "purpose",
            DropoutGeom {
                key: NoiseKey {
                    purpose: Purpose::TrainDropout,
                    ..key(3)
                },
                ..base
            },
            pairs(1),
        ),
    ] {
        assert_ne!(
            cpu_dropout(&ones, &rows, &g),
            y0,
            "another {what}, the same mask"
        );
    }
}

#[test]
fn a_rows_mask_does_not_depend_on_its_batch() {
    let all = pairs(9);
    let row_len = 37;
    let x = rand_vec(all.len() * row_len, 3);
    let g = |rows: usize| DropoutGeom {
        key: key(5),
        layer: 1,
        p: 0.4,
        rows,
        row_len,
    };
    let whole = cpu_dropout(&x, &all, &g(all.len()));
    for (first, count) in [(0, 1), (4, 3), (8, 1), (2, 7)] {
        let part = cpu_dropout(
            &x[first * row_len..(first + count) * row_len],
            &all[first..first + count],
            &g(count),
        );
        assert_eq!(part, whole[first * row_len..(first + count) * row_len]);
    }
}

#[test]
fn the_emulated_kernel_equals_the_cpu_to_the_bit() {
    let gpu = crate::common::test_gpu();
    for (rows, row_len, p) in [
        (1, 1, 0.5f32),
        (5, 23, 0.15),
        (17, 4 * 8 * 8, 0.7),
        (3, 2, 0.0),
    ] {
        let r = pairs(rows);
        let g = DropoutGeom {
            key: key(77),
            layer: 5,
            p,
            rows,
            row_len,
        };
        let x = rand_vec(rows * row_len, 9);
        let got = process::dropout(
            &Buffer::from_f32(&gpu, &x).unwrap(),
            &Buffer::from_f32(&gpu, &row_words(&r)).unwrap(),
            &g,
        )
        .unwrap()
        .to_f32()
        .unwrap();
        assert_eq!(
            got,
            cpu_dropout(&x, &r, &g),
            "{rows} rows of {row_len}, p {p}"
        );
    }
}

#[test]
fn malformed_dropouts_are_refused() {
    let g = DropoutGeom {
        key: key(0),
        layer: 0,
        p: 0.5,
        rows: 2,
        row_len: 3,
    };
    let x = CpuStorage::from_vec(vec![0.0; 6]);
    let rows = CpuStorage::from_vec(row_words(&pairs(2)));
    for (bad, want) in [
        (DropoutGeom { rows: 3, ..g }, "expected 3 rows"),
        (DropoutGeom { layer: 256, ..g }, "at most 256 layers"),
        (DropoutGeom { p: 1.0, ..g }, "expected 0 ≤ p < 1"),
    ] {
        let err = x.dropout(&rows, &bad).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

/// `mean(w ⊙ f(x))` for a fixed `w`, its gradient by the tape, and central differences.
fn check_gradient(f: impl Fn(&Tensor) -> Tensor, x: &[f32], shape: &[usize]) {
    let w = Tensor::from_vec(rand_vec(x.len(), 21), shape, Device::Cpu).unwrap();
    let zero = Tensor::zeros(shape, Device::Cpu).unwrap();
    let loss = |t: &Tensor| f(t).mul(&w).unwrap().mae(&zero).unwrap();
    let p = Tensor::param(x.to_vec(), shape, Device::Cpu).unwrap();
    {
        let _tape = Tape::start();
        backward(&loss(&p)).unwrap();
    }
    let grad = p.grad().unwrap().to_vec().unwrap();
    let h = 1e-3f32;
    for j in 0..x.len() {
        let at = |d: f32| {
            let mut v = x.to_vec();
            v[j] += d;
            let t = Tensor::from_vec(v, shape, Device::Cpu).unwrap();
            f64::from(loss(&t).scalar().unwrap())
        };
        let fd = ((at(h) - at(-h)) / (2.0 * f64::from(h))) as f32;
        assert!(
            (fd - grad[j]).abs() <= 1e-3 + 1e-2 * grad[j].abs(),
            "element {j}: finite difference {fd}, gradient {}",
            grad[j]
        );
    }
}

#[test]
fn dropout_and_l1_gradients_match_finite_differences() {
    let shape = [3, 2, 2, 3];
    let n: usize = shape.iter().product();
    // values away from 0 so that |·| of the loss is smooth within ±h
    let x: Vec<f32> = rand_vec(n, 4)
        .iter()
        .map(|v| v.signum() * (0.2 + v.abs()))
        .collect();
    let rows = rows_tensor(&pairs(3), Device::Cpu).unwrap();
    check_gradient(|t| t.dropout(&rows, key(1), 4, 0.35).unwrap(), &x, &shape);
    // mae against a target: d/da = sign(a − b)/N, and −that for b
    let b = Tensor::from_vec(rand_vec(n, 5), &shape, Device::Cpu).unwrap();
    let pa = Tensor::param(x.clone(), &shape, Device::Cpu).unwrap();
    let pb = Tensor::param(b.to_vec().unwrap(), &shape, Device::Cpu).unwrap();
    {
        let _tape = Tape::start();
        backward(&pa.mae(&pb).unwrap()).unwrap();
    }
    let (ga, gb) = (
        pa.grad().unwrap().to_vec().unwrap(),
        pb.grad().unwrap().to_vec().unwrap(),
    );
    let bv = b.to_vec().unwrap();
    for i in 0..n {
        let want = (x[i] - bv[i]).signum() / n as f32;
        assert_eq!(ga[i], want, "d/da [{i}]");
        assert_eq!(gb[i], -want, "d/db [{i}]");
    }
    // the gradient of |a − b| where a = b is 0, as PyTorch's
    let s = CpuStorage::from_vec(vec![1.0, 2.0, -3.0])
        .binary(
            &CpuStorage::from_vec(vec![1.0, 1.0, 3.0]),
            BinaryOp::SignDiff,
        )
        .unwrap();
    assert_eq!(s.to_vec().unwrap(), vec![0.0, 1.0, -1.0]);
}

fn dropout_unet(p: f64) -> UNet2D {
    let cfg = UNet2DConfig {
        in_channels: 3,
        out_channels: 2,
        block_out_channels: vec![8, 16],
        down_block_types: vec!["DownBlock2D".into(), "AttnDownBlock2D".into()],
        up_block_types: vec!["AttnUpBlock2D".into(), "UpBlock2D".into()],
        layers_per_block: 1,
        norm_num_groups: 4,
        attention_head_dim: Some(8),
        dropout: p,
        ..UNet2DConfig::default()
    };
    UNet2D::init(cfg, 3, Device::Cpu).unwrap()
}

#[test]
fn the_networks_dropout_acts_only_when_asked_and_per_row() {
    let net = dropout_unet(0.3);
    let n = 4;
    let x = Tensor::from_vec(rand_vec(n * 3 * 8 * 8, 1), &[n, 3, 8, 8], Device::Cpu).unwrap();
    let t = Tensor::from_vec(vec![0.5, 1.0, 2.5, 3.0], &[n], Device::Cpu).unwrap();
    let rows = pairs(n);
    let rt = rows_tensor(&rows, Device::Cpu).unwrap();
    let drop = Dropout {
        key: key(2),
        rows: &rt,
    };
    let plain = net.forward(&x, &t).unwrap().to_vec().unwrap();
    let a = net
        .forward_with(&x, &t, Some(&drop))
        .unwrap()
        .to_vec()
        .unwrap();
    let b = net
        .forward_with(&x, &t, Some(&drop))
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(a, b, "the same key, the same masks");
    assert_ne!(a, plain, "dropout acts");
    let other = Dropout {
        key: key(3),
        ..drop
    };
    assert_ne!(
        net.forward_with(&x, &t, Some(&other))
            .unwrap()
            .to_vec()
            .unwrap(),
        a
    );
    // each row alone gives its bytes in the batch
    let len = a.len() / n;
    for i in 0..n {
        let xi = x.narrow_rows(i, 1).unwrap();
        let ti = Tensor::from_vec(vec![t.to_vec().unwrap()[i]], &[1], Device::Cpu).unwrap();
        let ri = rows_tensor(&rows[i..i + 1], Device::Cpu).unwrap();
        let di = Dropout {
            key: key(2),
            rows: &ri,
        };
        let yi = net
            .forward_with(&xi, &ti, Some(&di))
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(yi, a[i * len..(i + 1) * len], "row {i}");
    }
    // the fused path (no tape) equals the recorded one
    let taped = {
        let _tape = Tape::start();
        let xp = Tensor::param(x.to_vec().unwrap(), x.shape(), Device::Cpu).unwrap();
        net.forward_with(&xp, &t, Some(&drop))
            .unwrap()
            .to_vec()
            .unwrap()
    };
    assert_close(&taped, &a, 1e-5, 1e-4, "taped against fused");
    // p = 0: dropout is the identity
    let none = dropout_unet(0.0);
    assert_eq!(
        none.forward_with(&x, &t, Some(&drop))
            .unwrap()
            .to_vec()
            .unwrap(),
        none.forward(&x, &t).unwrap().to_vec().unwrap()
    );
}
