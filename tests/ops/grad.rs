//! Backward rules against central finite differences, in f32. For each op, the loss is
//! `L = mse(f(inputs), target)`; for a sample of elements of every input,
//! `(L(x + h) − L(x − h)) / 2h` must match the tape's gradient within
//! `|fd − grad| ≤ 2e-2·|grad| + 2e-3·max|grad|` (f32 round-off in `L` over `h` dominates).

use crate::common::{rand_vec, small_unet_config};
use dydiff::backend::PadMode;
use dydiff::nn::{Dropout, ParamBuilder, UNet2D, UNet2DConfig};
use dydiff::tensor::autograd::{backward, Tape};
use dydiff::{Device, Result, Tensor};
use std::collections::HashMap;

type Shapes<'a> = &'a [&'a [usize]];

/// Checks the gradients of `f` with respect to every input.
fn check(name: &str, shapes: Shapes, scale: f32, f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let data: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            rand_vec(s.iter().product(), 100 + i as u64)
                .iter()
                .map(|v| v * scale)
                .collect()
        })
        .collect();
    let make = |data: &[Vec<f32>], param: bool| -> Vec<Tensor> {
        data.iter()
            .zip(shapes)
            .map(|(d, s)| {
                if param {
                    Tensor::param(d.clone(), s, Device::Cpu)
                } else {
                    Tensor::from_vec(d.clone(), s, Device::Cpu)
                }
                .unwrap()
            })
            .collect()
    };
    let out_shape = f(&make(&data, false)).unwrap().shape().to_vec();
    let target = Tensor::from_vec(
        rand_vec(out_shape.iter().product(), 99),
        &out_shape,
        Device::Cpu,
    )
    .unwrap();
    let loss = |inputs: &[Tensor]| f(inputs).unwrap().mse(&target).unwrap();

    let params = make(&data, true);
    {
        let _tape = Tape::start();
        backward(&loss(&params)).unwrap();
    }
    for (i, p) in params.iter().enumerate() {
        let grad = p
            .grad()
            .unwrap_or_else(|| panic!("{name}: input {i} got no gradient"))
            .to_vec()
            .unwrap();
        let gmax = grad.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        let n = grad.len();
        for j in (0..n).step_by((n / 7).max(1)).chain([n - 1]) {
            let h = 1e-2 * scale.max(1.0);
            let eval = |delta: f32| {
                let mut d = data.clone();
                d[i][j] += delta;
                loss(&make(&d, false)).scalar().unwrap() as f64
            };
            let fd = ((eval(h) - eval(-h)) / (2.0 * h as f64)) as f32;
            let tol = 2e-2 * grad[j].abs() + 2e-3 * gmax + 1e-6;
            assert!(
                (fd - grad[j]).abs() <= tol,
                "{name}: input {i}[{j}]: finite difference {fd}, gradient {}",
                grad[j]
            );
        }
    }
}

#[test]
fn conv2d_3x3_stride1() {
    check("conv3x3", &[&[2, 3, 6, 5], &[4, 3, 3, 3], &[4]], 1.0, |x| {
        x[0].conv2d(&x[1], Some(&x[2]), 1, [1; 4], PadMode::Zeros)
    });
}

#[test]
fn conv2d_3x3_circular() {
    check(
        "conv3x3c",
        &[&[2, 3, 6, 5], &[4, 3, 3, 3], &[4]],
        1.0,
        |x| x[0].conv2d(&x[1], Some(&x[2]), 1, [1; 4], PadMode::Circular),
    );
}

#[test]
fn conv2d_3x3_stride2_circular() {
    check(
        "conv3x3s2c",
        &[&[2, 3, 6, 4], &[4, 3, 3, 3], &[4]],
        1.0,
        |x| x[0].conv2d(&x[1], Some(&x[2]), 2, [1; 4], PadMode::Circular),
    );
}

#[test]
fn conv2d_3x3_stride2_asymmetric_pad() {
    check(
        "conv3x3s2",
        &[&[2, 3, 6, 6], &[4, 3, 3, 3], &[4]],
        1.0,
        |x| x[0].conv2d(&x[1], Some(&x[2]), 2, [0, 1, 0, 1], PadMode::Zeros),
    );
}

#[test]
fn conv2d_1x1() {
    check("conv1x1", &[&[2, 5, 4, 3], &[3, 5, 1, 1], &[3]], 1.0, |x| {
        x[0].conv2d(&x[1], Some(&x[2]), 1, [0; 4], PadMode::Zeros)
    });
}

#[test]
fn linear() {
    check("linear", &[&[2, 5, 7], &[4, 7], &[4]], 1.0, |x| {
        x[0].linear(&x[1], Some(&x[2]))
    });
}

#[test]
fn group_norm() {
    check("group_norm", &[&[2, 6, 3, 4], &[6], &[6]], 1.0, |x| {
        x[0].group_norm(3, &x[1], &x[2], 1e-5)
    });
}

#[test]
fn silu() {
    check("silu", &[&[3, 40]], 3.0, |x| x[0].silu());
}

#[test]
fn attention() {
    check(
        "attention",
        &[&[2, 9, 8], &[2, 9, 8], &[2, 9, 8]],
        1.5,
        |x| Tensor::attention(&x[0], &x[1], &x[2], 2),
    );
}

#[test]
fn upsample() {
    check("upsample", &[&[2, 2, 3, 4]], 1.0, |x| {
        x[0].upsample_nearest2x()
    });
}

#[test]
fn add_sub_mul_scale() {
    check("add", &[&[3, 4], &[3, 4]], 1.0, |x| x[0].add(&x[1]));
    check("sub", &[&[3, 4], &[3, 4]], 1.0, |x| x[0].sub(&x[1]));
    check("mul", &[&[3, 4], &[3, 4]], 1.0, |x| x[0].mul(&x[1]));
    check("scale", &[&[3, 4]], 1.0, |x| x[0].scale(-1.7));
    check("mse", &[&[3, 4], &[3, 4]], 1.0, |x| x[0].mse(&x[1]));
}

#[test]
fn channel_ops() {
    check("add_channel_bias", &[&[2, 3, 2, 2], &[2, 3]], 1.0, |x| {
        x[0].add_channel_bias(&x[1])
    });
    check("transpose12", &[&[2, 3, 5]], 1.0, |x| x[0].transpose12());
    check("cat", &[&[2, 3, 2, 2], &[2, 1, 2, 2]], 1.0, |x| {
        Tensor::cat_channels(&[&x[0], &x[1]])
    });
    check("slice", &[&[2, 5, 2, 2]], 1.0, |x| {
        x[0].slice_channels(1, 4)
    });
    check("reshape", &[&[2, 6]], 1.0, |x| x[0].reshape(&[3, 4]));
}

#[test]
fn fan_out_and_accumulation() {
    // x used twice: gradients from both uses add up
    check("fan_out", &[&[2, 3, 2, 2]], 1.0, |x| {
        x[0].silu()?.mul(&x[0])?.add(&x[0])
    });
    // parameter gradients accumulate across backward passes
    let p = Tensor::param(vec![1.0, 2.0], &[2], Device::Cpu).unwrap();
    let t = Tensor::from_vec(vec![0.0, 0.0], &[2], Device::Cpu).unwrap();
    for _ in 0..2 {
        let _tape = Tape::start();
        backward(&p.mse(&t).unwrap()).unwrap();
    }
    assert_eq!(p.grad().unwrap().to_vec().unwrap(), vec![2.0, 4.0]); // 2 × (2x/2)
    p.zero_grad();
    assert!(p.grad().is_none());
}

#[test]
fn no_tape_records_nothing() {
    let p = Tensor::param(vec![1.0, 2.0], &[2], Device::Cpu).unwrap();
    let t = Tensor::from_vec(vec![0.0, 0.0], &[2], Device::Cpu).unwrap();
    let loss = p.mse(&t).unwrap();
    backward(&loss).unwrap();
    assert!(p.grad().is_none(), "without a tape no gradient flows");
}

/// The whole network: the loss gradient with respect to parameters of every kind (convolution,
/// linear, group norm, attention projections; weights and biases) against finite differences.
#[test]
fn whole_unet() {
    whole_unet_gradient(small_unet_config(), None);
}

/// The same with dropout acting in every resnet block (fixed masks: the loss is a smooth
/// function of the weights for one key).
#[test]
fn whole_unet_with_dropout() {
    let rows = dydiff::diffusion::ddim::rows_tensor(
        &[
            dydiff::rng::NoiseRow {
                sample: 0,
                member: 0,
            },
            dydiff::rng::NoiseRow {
                sample: 0,
                member: 1,
            },
        ],
        Device::Cpu,
    )
    .unwrap();
    let drop = Dropout {
        key: dydiff::rng::NoiseKey {
            seed: 5,
            purpose: dydiff::rng::Purpose::TrainDropout,
            step: 1,
        },
        rows: &rows,
    };
    let cfg = UNet2DConfig {
        dropout: 0.2,
        ..small_unet_config()
    };
    whole_unet_gradient(cfg, Some(&drop));
}

fn whole_unet_gradient(cfg: UNet2DConfig, drop: Option<&Dropout>) {
    let model = UNet2D::init(cfg.clone(), 7, Device::Cpu).unwrap();
    let arrays: HashMap<String, (Vec<usize>, Vec<f32>)> = model
        .params()
        .iter()
        .map(|(n, t)| (n.clone(), (t.shape().to_vec(), t.to_vec().unwrap())))
        .collect();
    let x = Tensor::from_vec(rand_vec(2 * 3 * 8 * 8, 1), &[2, 3, 8, 8], Device::Cpu).unwrap();
    let t = Tensor::from_vec(vec![10.0, 700.0], &[2], Device::Cpu).unwrap();
    let target = Tensor::from_vec(rand_vec(2 * 2 * 8 * 8, 2), &[2, 2, 8, 8], Device::Cpu).unwrap();
    let loss_of = |arrays: HashMap<String, (Vec<usize>, Vec<f32>)>| -> f64 {
        let m = UNet2D::new(
            cfg.clone(),
            ParamBuilder::from_arrays("test".into(), arrays, Device::Cpu),
        )
        .unwrap();
        m.forward_with(&x, &t, drop)
            .unwrap()
            .mse(&target)
            .unwrap()
            .scalar()
            .unwrap() as f64
    };
    {
        let _tape = Tape::start();
        backward(
            &model
                .forward_with(&x, &t, drop)
                .unwrap()
                .mse(&target)
                .unwrap(),
        )
        .unwrap();
    }
    let names = [
        "conv_in.weight",
        "conv_in.bias",
        "time_embedding.linear_1.weight",
        "time_embedding.linear_2.bias",
        "down_blocks.0.resnets.0.norm1.weight",
        "down_blocks.0.resnets.0.conv1.weight",
        "down_blocks.0.resnets.0.time_emb_proj.weight",
        "down_blocks.0.downsamplers.0.conv.weight",
        "down_blocks.1.resnets.0.conv_shortcut.weight",
        "down_blocks.1.attentions.0.group_norm.bias",
        "down_blocks.1.attentions.0.to_q.weight",
        "down_blocks.1.attentions.0.to_k.weight",
        "down_blocks.1.attentions.0.to_v.bias",
        "down_blocks.1.attentions.0.to_out.0.weight",
        "mid_block.attentions.0.to_q.weight",
        "mid_block.resnets.1.norm2.bias",
        "up_blocks.0.resnets.1.conv2.weight",
        "up_blocks.0.upsamplers.0.conv.bias",
        "up_blocks.1.resnets.0.conv_shortcut.bias",
        "conv_norm_out.weight",
        "conv_out.weight",
        "conv_out.bias",
    ];
    let params: HashMap<&str, &Tensor> = model
        .params()
        .iter()
        .map(|(n, t)| (n.as_str(), t))
        .collect();
    for name in names {
        let p = params
            .get(name)
            .unwrap_or_else(|| panic!("no parameter {name}"));
        let grad = p.grad().unwrap().to_vec().unwrap();
        let gmax = grad.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        assert!(gmax > 0.0, "{name}: zero gradient");
        // the three largest-gradient elements: well above the f32 noise of the finite difference
        let mut idx: Vec<usize> = (0..grad.len()).collect();
        idx.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
        for &j in idx.iter().take(3) {
            let h = 1e-2f32;
            let eval = |delta: f32| {
                let mut a = arrays.clone();
                a.get_mut(name).unwrap().1[j] += delta;
                loss_of(a)
            };
            let fd = ((eval(h) - eval(-h)) / (2.0 * h as f64)) as f32;
            let tol = 3e-2 * grad[j].abs() + 3e-3 * gmax;
            assert!(
                (fd - grad[j]).abs() <= tol,
                "{name}[{j}]: finite difference {fd}, gradient {}",
                grad[j]
            );
        }
    }
}
