//! The training kernels (kernels/backward.cu, kernels/attention_backward.cu, kernels/optim.cu) on
//! the emulator (`cuda:0` with DYDIFF_CUDA_EMULATOR=1; a real GPU with DYDIFF_TEST_DEVICE=cuda)
//! against the CPU backend's backward rules, on ragged shapes. Tolerances, relative to the largest
//! value of the CPU's result: float32 products 2e-6 (convolution, the norm's sums: the order of
//! the sums differs), 1e-5 for the weight gradient (sums of up to 4096 terms) and attention; TF32 products 2e-3 and bf16 1.6e-2 (the operands rounded to 10 and
//! 7 bits: a few units of their rounding, as the forward's fixtures show for PyTorch); data
//! movement exactly; the optimizer 1e-6 (the global norm's sums in a different order).
//! The whole network's gradient on the device equals the CPU's within 1e-5 and matches central
//! finite differences computed on the device.

mod common;

use common::rand_vec;
use dydiff::autograd::{backward, Tape};
use dydiff::backend::cuda::{self, Precision};
use dydiff::backend::{AdamStep, AttnGeom, ConvGeom, LossKind, NormGeom, PadMode, Storage};
use dydiff::nn::{ParamBuilder, UNet2D, UNet2DConfig};
use dydiff::{Device, Tensor};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// The precision is one setting per process: each test holds it while it runs.
fn precision(p: Precision) -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    cuda::set_precision(p);
    g
}

fn gpu() -> Device {
    if std::env::var("DYDIFF_TEST_DEVICE").as_deref() != Ok("cuda") {
        // set before any device is opened; every test sets the same value
        std::env::set_var(cuda::EMULATOR_VAR, "1");
    }
    Device::parse("cuda:0").unwrap()
}

/// The same values on the CPU and on the device.
fn both(v: &[f32]) -> (Storage, Storage) {
    (
        Device::Cpu.storage_from_vec(v.to_vec()).unwrap(),
        gpu().storage_from_vec(v.to_vec()).unwrap(),
    )
}

fn close(got: &Storage, want: &Storage, rel: f32, what: &str) {
    close_abs(got, want, rel, 0.0, what);
}

/// Within `rel` of the largest |cpu| value plus `abs`.
fn close_abs(got: &Storage, want: &Storage, rel: f32, abs: f32, what: &str) {
    let (g, w) = (got.to_vec().unwrap(), want.to_vec().unwrap());
    assert_eq!(g.len(), w.len(), "{what}: length");
    let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    let worst = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= rel * scale + abs,
        "{what}: worst difference {worst} against max |cpu| {scale} (allowed {rel} relative)"
    );
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
fn sums_and_norm_backward_match_the_cpu() {
    let _p = precision(Precision::Fp32);
    for &(rows, cols) in &[(1, 1), (17, 5), (300, 64)] {
        let (c, g) = both(&rand_vec(rows * cols, 3));
        close(
            &g.sum_rows(rows, cols).unwrap(),
            &c.sum_rows(rows, cols).unwrap(),
            2e-6,
            "sum_rows",
        );
    }
    for &(n, ch, hw, groups) in &[(1, 4, 1, 2), (3, 12, 35, 4), (2, 64, 64, 32)] {
        let geom = NormGeom {
            n,
            c: ch,
            hw,
            groups,
            eps: 1e-5,
            silu: false,
        };
        let x: Vec<f32> = rand_vec(n * ch * hw, 5)
            .iter()
            .map(|v| 3.0 * v + 1.0)
            .collect();
        let (xc, xg) = both(&x);
        let (gc, gg) = both(&rand_vec(ch, 6));
        let (bc, bg) = both(&rand_vec(ch, 7));
        let (dc, dg) = both(&rand_vec(n * ch * hw, 8));
        let (_, sc) = xc.group_norm(&gc, &bc, &geom).unwrap();
        let (_, sg) = xg.group_norm(&gg, &bg, &geom).unwrap();
        let want = xc.group_norm_backward(&gc, &sc, &dc, &geom).unwrap();
        let got = xg.group_norm_backward(&gg, &sg, &dg, &geom).unwrap();
        let what = format!("group norm {geom:?}");
        // dx cancels to nearly 0 in small groups: its terms are O(1)
        close_abs(&got.0, &want.0, 2e-5, 2e-6, &format!("dx {what}"));
        close(&got.1, &want.1, 2e-6, &format!("dgamma {what}"));
        close(&got.2, &want.2, 2e-6, &format!("dbeta {what}"));
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

#[test]
fn attention_backward_matches_the_cpu() {
    let _p = precision(Precision::Fp32);
    for &(n, l, heads, d) in &[
        (1, 1, 1, 1),
        (2, 5, 2, 8),
        (1, 33, 1, 32),
        (3, 64, 2, 16),
        (1, 40, 1, 128),
    ] {
        let g = AttnGeom {
            n,
            l,
            heads,
            d,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let len = n * l * heads * d;
        let t = |s| both(&rand_vec(len, s).iter().map(|v| 2.0 * v).collect::<Vec<_>>());
        let ((qc, qg), (kc, kg), (vc, vg), (oc, og)) = (t(20), t(21), t(22), t(23));
        let want = qc.attention_backward(&kc, &vc, &oc, None, &g).unwrap();
        // the forward for training saves each row's log-sum-exp; its output is the plain one's
        let (out, lse) = qg.attention_for_training(&kg, &vg, &g).unwrap();
        let lse = lse.expect("the GPU saves the rows' statistics");
        assert_eq!(
            out.to_vec().unwrap(),
            qg.attention(&kg, &vg, &g).unwrap().to_vec().unwrap()
        );
        // the statistics recomputed by the backward, and the saved ones
        for saved in [None, Some((&out, &lse))] {
            let got = qg.attention_backward(&kg, &vg, &og, saved, &g).unwrap();
            let what = format!("attention {g:?}, saved statistics: {}", saved.is_some());
            close(&got.0, &want.0, 1e-5, &format!("dq {what}"));
            close(&got.1, &want.1, 1e-5, &format!("dk {what}"));
            close(&got.2, &want.2, 1e-5, &format!("dv {what}"));
        }
    }
}

#[test]
fn losses_match_the_cpu() {
    let _p = precision(Precision::Fp32);
    for len in [1, 1000, 70_001] {
        let (ac, ag) = both(&rand_vec(len, 30));
        let mut b = rand_vec(len, 31);
        b[0] = ac.to_vec().unwrap()[0]; // a tie: sign 0
        let (bc, bg) = both(&b);
        let (gc, gg) = both(&[0.7]);
        for kind in [LossKind::Mse, LossKind::Mae] {
            let what = format!("{kind:?} of {len}");
            close(
                &ag.loss(&bg, kind).unwrap(),
                &ac.loss(&bc, kind).unwrap(),
                1e-6,
                &what,
            );
            close(
                &ag.loss_backward(&bg, &gg, kind).unwrap(),
                &ac.loss_backward(&bc, &gc, kind).unwrap(),
                2e-7,
                &format!("{what}: gradient"),
            );
        }
    }
}

#[test]
fn adamw_matches_the_cpu() {
    let _p = precision(Precision::Fp32);
    let lens = [3, 20_000, 1, 40_000];
    let n: usize = lens.iter().sum();
    let (pc, pg) = both(&rand_vec(n, 40));
    let (mc, mg) = both(&rand_vec(n, 41));
    let v: Vec<f32> = rand_vec(n, 42).iter().map(|x| x.abs()).collect();
    let (vc, vg) = both(&v);
    let (ec, eg) = both(&rand_vec(n, 43));
    let grads: Vec<(Storage, Storage)> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| both(&rand_vec(l, 50 + i as u64)))
        .collect();
    let gc: Vec<&Storage> = grads.iter().map(|g| &g.0).collect();
    let gg: Vec<&Storage> = grads.iter().map(|g| &g.1).collect();
    for (max_norm, loss) in [(1.0f32, 0.3f32), (1e4, 0.3), (1.0, f32::NAN)] {
        let h = AdamStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            bc1: 0.19,
            bc2: 0.002,
            max_norm,
            ema_decay: 0.99,
        };
        let (lc, lg) = both(&[loss]);
        let (mut pc2, mut mc2, mut vc2, mut ec2) = (pc.clone(), mc.clone(), vc.clone(), ec.clone());
        let want_norm = pc2
            .adamw(&gc, &mut mc2, &mut vc2, &mut ec2, &lc, &h)
            .unwrap();
        // fresh device copies: the step updates them in place
        let copy = |s: &Storage| gpu().storage_from_vec(s.to_vec().unwrap()).unwrap();
        let (mut pg2, mut mg2, mut vg2, mut eg2) = (copy(&pg), copy(&mg), copy(&vg), copy(&eg));
        let views = pg2.split(&lens).unwrap();
        let got_norm = pg2
            .adamw(&gg, &mut mg2, &mut vg2, &mut eg2, &lg, &h)
            .unwrap();
        let what = format!("adamw, max norm {max_norm}, loss {loss}");
        for (name, a, b) in [
            ("p", &pg2, &pc2),
            ("m", &mg2, &mc2),
            ("v", &vg2, &vc2),
            ("ema", &eg2, &ec2),
            ("norm", &got_norm, &want_norm),
        ] {
            close(a, b, 1e-6, &format!("{what}: {name}"));
        }
        // the network's weights, views of the array, see the update
        let mut joined = Vec::new();
        for v in &views {
            joined.extend(v.to_vec().unwrap());
        }
        assert_eq!(joined, pg2.to_vec().unwrap(), "{what}: views");
        if loss.is_nan() {
            assert_eq!(pg2.to_vec().unwrap(), pg.to_vec().unwrap());
        }
    }
    // the parts of a split are the values, in order
    let parts = pg.split(&lens).unwrap();
    let mut joined = Vec::new();
    for p in &parts {
        joined.extend(p.to_vec().unwrap());
    }
    assert_eq!(joined, pg.to_vec().unwrap());
}

fn small_unet_config() -> UNet2DConfig {
    UNet2DConfig {
        in_channels: 3,
        out_channels: 2,
        block_out_channels: vec![8, 16],
        down_block_types: vec!["DownBlock2D".into(), "AttnDownBlock2D".into()],
        up_block_types: vec!["AttnUpBlock2D".into(), "UpBlock2D".into()],
        layers_per_block: 1,
        norm_num_groups: 4,
        attention_head_dim: Some(8),
        time_embedding_dim: Some(16),
        ..UNet2DConfig::default()
    }
}

/// The loss of the small network on fixed inputs, with the weights `arrays`, on `dev`.
fn unet_loss(
    arrays: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    dev: Device,
    record: bool,
) -> (f64, HashMap<String, Vec<f32>>) {
    let cfg = small_unet_config();
    let model = UNet2D::new(
        cfg,
        ParamBuilder::from_arrays("test".into(), arrays.clone(), dev),
    )
    .unwrap();
    let x = Tensor::from_vec(rand_vec(2 * 3 * 8 * 8, 1), &[2, 3, 8, 8], dev).unwrap();
    let t = Tensor::from_vec(vec![10.0, 700.0], &[2], dev).unwrap();
    let target = Tensor::from_vec(rand_vec(2 * 2 * 8 * 8, 2), &[2, 2, 8, 8], dev).unwrap();
    let tape = record.then(Tape::start);
    let loss = model.forward(&x, &t).unwrap().mse(&target).unwrap();
    let mut grads = HashMap::new();
    if tape.is_some() {
        backward(&loss).unwrap();
        for (name, p) in model.params() {
            grads.insert(name.clone(), p.grad().unwrap().to_vec().unwrap());
        }
    }
    (f64::from(loss.scalar().unwrap()), grads)
}

#[test]
fn whole_unet_gradient_on_the_device() {
    let _p = precision(Precision::Fp32);
    let model = UNet2D::init(small_unet_config(), 7, Device::Cpu).unwrap();
    let arrays: HashMap<String, (Vec<usize>, Vec<f32>)> = model
        .params()
        .iter()
        .map(|(n, t)| (n.clone(), (t.shape().to_vec(), t.to_vec().unwrap())))
        .collect();
    let (loss_c, grads_c) = unet_loss(&arrays, Device::Cpu, true);
    let (loss_g, grads_g) = unet_loss(&arrays, gpu(), true);
    assert!(
        (loss_c - loss_g).abs() <= 1e-6 * loss_c,
        "{loss_c} vs {loss_g}"
    );
    let gmax = grads_c
        .values()
        .flatten()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    for (name, want) in &grads_c {
        let got = &grads_g[name];
        for (j, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * gmax + 1e-4 * b.abs(),
                "{name}[{j}]: device {a}, cpu {b} (max |grad| {gmax})"
            );
        }
    }
    // central differences on the device, for a few weights of every kind
    for name in [
        "conv_in.weight",
        "down_blocks.0.resnets.0.norm1.weight",
        "down_blocks.0.downsamplers.0.conv.weight",
        "down_blocks.1.attentions.0.to_k.weight",
        "up_blocks.0.upsamplers.0.conv.bias",
        "time_embedding.linear_1.weight",
    ] {
        let grad = &grads_g[name];
        let j = grad
            .iter()
            .enumerate()
            .fold(
                (0, 0.0f32),
                |b, (i, v)| if v.abs() > b.1 { (i, v.abs()) } else { b },
            )
            .0;
        let h = 1e-2f32;
        let eval = |delta: f32| {
            let mut a = arrays.clone();
            a.get_mut(name).unwrap().1[j] += delta;
            unet_loss(&a, gpu(), false).0
        };
        let fd = ((eval(h) - eval(-h)) / (2.0 * f64::from(h))) as f32;
        assert!(
            (fd - grad[j]).abs() <= 2e-2 * grad[j].abs() + 2e-3 * gmax + 1e-6,
            "{name}[{j}]: finite difference {fd}, device gradient {}",
            grad[j]
        );
    }
}

/// A training step enqueues everything — forward, loss, backward, the gradient norm and the
/// optimizer — without the host waiting for the device once (the GPU's loss and norm stay there
/// until a log line reads them).
#[test]
fn training_steps_never_wait_for_the_device() {
    use dydiff::pipelines::train::{OptimizerSettings, State, Weights};
    let _p = precision(Precision::Tf32);
    let dev = gpu();
    let cfg = small_unet_config();
    let mut unet = UNet2D::init(cfg.clone(), 3, dev).unwrap();
    let mut state = State::fresh(&unet, dev).unwrap();
    let settings = OptimizerSettings {
        weight_decay: 0.01,
        clip: 1.0,
        ema_decay: 0.99,
    };
    let waits = || cuda::device(0).unwrap().memory_stats().host_waits;
    let before = waits();
    let mut results = Vec::new();
    for step in 0..3u64 {
        let x = Tensor::from_vec(rand_vec(2 * 3 * 8 * 8, step), &[2, 3, 8, 8], dev).unwrap();
        let t = Tensor::from_vec(vec![5.0, 900.0], &[2], dev).unwrap();
        let y = Tensor::from_vec(rand_vec(2 * 2 * 8 * 8, 9 + step), &[2, 2, 8, 8], dev).unwrap();
        let r = state
            .train_step(&unet, |u| u.forward(&x, &t)?.mse(&y), 1e-3, &settings, dev)
            .unwrap();
        unet = state.network(&cfg, dev, Weights::Current).unwrap();
        results.push(r);
    }
    assert_eq!(
        waits(),
        before,
        "the host waited for the device inside a step"
    );
    for r in &results {
        assert!(r.loss.to_vec().unwrap()[0].is_finite());
        assert!(r.norm.to_vec().unwrap()[0] > 0.0);
    }
    assert_eq!(state.step, 3);
}
