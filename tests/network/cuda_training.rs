//! Training the whole network on the CUDA backend (`cuda:0` with DYDIFF_CUDA_EMULATOR=1; a real
//! GPU with DYDIFF_TEST_DEVICE=cuda): a small UNet's gradient on the device equals the CPU's
//! within 1e-5 and matches central finite differences computed on the device; training steps
//! never wait for the device. Each operation's gradient is tested with its family
//! (tests/ops/cuda).

use crate::common::{cuda_device, cuda_precision, rand_vec, small_unet_config};
use dydiff::backend::cuda::{self, Precision};
use dydiff::nn::{ParamBuilder, UNet2D};
use dydiff::tensor::autograd::{backward, Tape};
use dydiff::{Device, Tensor};
use std::collections::HashMap;

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
    let _p = cuda_precision(Precision::Fp32);
    let model = UNet2D::init(small_unet_config(), 7, Device::Cpu).unwrap();
    let arrays: HashMap<String, (Vec<usize>, Vec<f32>)> = model
        .params()
        .iter()
        .map(|(n, t)| (n.clone(), (t.shape().to_vec(), t.to_vec().unwrap())))
        .collect();
    let (loss_c, grads_c) = unet_loss(&arrays, Device::Cpu, true);
    let (loss_g, grads_g) = unet_loss(&arrays, cuda_device(), true);
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
            unet_loss(&a, cuda_device(), false).0
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
    let _p = cuda_precision(Precision::Tf32);
    let dev = cuda_device();
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
