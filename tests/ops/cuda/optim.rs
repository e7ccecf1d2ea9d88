//! The losses and the optimizer (kernels/optim.cu) against the CPU backend: the losses within
//! 2e-6, AdamW with clipping and the EMA within 1e-6 (the global norm's sums in another order).

use super::{both, close, device, precision};
use crate::common::rand_vec;
use dydiff::backend::cuda::Precision;
use dydiff::backend::{AdamStep, LossKind, Storage};

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
        let copy = |s: &Storage| device().storage_from_vec(s.to_vec().unwrap()).unwrap();
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
