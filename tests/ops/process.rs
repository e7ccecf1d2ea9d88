//! The Dynamical Diffusion process operations (docs/process.md) against the plain references
//! written from the formulas (`backend::cpu::reference`), and the statistical properties the
//! reference states.
//! Tolerances (f32 fast path vs f64 reference): 2e-6 absolute + 2e-5 relative.

use crate::common::{assert_close, rand_tensor, rand_vec};
use dydiff::backend::cpu::reference::{self, DdimValues};
use dydiff::backend::{FrameScope, ProcessGeom, SeqGeom};
use dydiff::diffusion::ddim::StepValues;
use dydiff::diffusion::schedule::{gamma_bar, Prediction, Schedule, SchedulerConfig};
use dydiff::rng::{NoiseKey, NoiseRow, Purpose};
use dydiff::{Device, Tensor};

const ATOL: f32 = 2e-6;
const RTOL: f32 = 2e-5;

#[test]
fn dynamics_matches_the_naive_loop_and_inverts() {
    // Element counts around the 1024-element task runs, 1 and several frames.
    for &(batch, frames, elems) in &[(1, 1, 5), (2, 3, 7), (3, 5, 1024), (2, 4, 2500)] {
        let x = rand_tensor(&[batch, frames * elems], 1 + elems as u64);
        let gammas: Vec<f64> = (0..batch).map(|b| 0.15 + 0.3 * b as f64).collect();
        let g = SeqGeom {
            batch,
            frames,
            elems,
        };
        let xs = x.to_vec().unwrap();
        for inverse in [false, true] {
            let y = x.dynamics(frames, &gammas, inverse).unwrap();
            let want = reference::dynamics(&xs, &g, &gammas, inverse);
            assert_close(&y.to_vec().unwrap(), &want, ATOL, RTOL, "dynamics");
        }
        let back = x
            .dynamics(frames, &gammas, false)
            .unwrap()
            .dynamics(frames, &gammas, true)
            .unwrap();
        assert_close(&back.to_vec().unwrap(), &xs, 1e-5, 1e-5, "InvDyn(Dyn(x))");
    }
    // γ = 1 is the identity.
    let x = rand_tensor(&[2, 12], 9);
    let y = x.dynamics(3, &[1.0, 1.0], false).unwrap();
    assert_eq!(y.to_vec().unwrap(), x.to_vec().unwrap());
    assert!(
        x.dynamics(5, &[0.5, 0.5], false).is_err(),
        "12 values are not 5 frames"
    );
    assert!(x.dynamics(3, &[0.5], false).is_err(), "one γ per sequence");
    assert!(
        x.dynamics(3, &[0.0, 0.5], false).is_err(),
        "γ = 0 does not invert"
    );
}

/// The frames of a sequence and which of them the process diffuses.
fn scope(history: usize, future: usize, diffuse_history: bool) -> FrameScope {
    FrameScope {
        history,
        future,
        diffuse_history,
    }
}

fn schedule() -> Schedule {
    Schedule::new(&SchedulerConfig::default())
}

/// The default schedule with a network that predicts `prediction`.
fn schedule_predicting(prediction: Prediction) -> Schedule {
    Schedule::new(&SchedulerConfig {
        prediction,
        ..SchedulerConfig::default()
    })
}

#[test]
fn forward_process_matches_the_reference() {
    for diffuse_history in [false, true] {
        for prediction in [Prediction::Epsilon, Prediction::V] {
            forward_process_matches_the_reference_in(diffuse_history, prediction);
        }
    }
}

/// The fused forward process against the reference, diffusing the future frames or all frames,
/// with the noise or the velocity as the target.
fn forward_process_matches_the_reference_in(diffuse_history: bool, prediction: Prediction) {
    let s = schedule_predicting(prediction);
    let (batch, history, future, elems) = (4, 3, 4, 1500);
    let g = ProcessGeom {
        batch,
        history,
        future,
        elems,
        diffuse_history,
    };
    let x0 = rand_tensor(&[batch, (history + future) * elems], 3);
    let eps = rand_tensor(&[batch, g.diffused() * elems], 4);
    let t = [0, 999, 500, 37];
    for dyn_eta in [0.0, 0.5, 1.0] {
        let (input, target) = Tensor::q_sample(
            &x0,
            &eps,
            scope(history, future, diffuse_history),
            &s,
            dyn_eta,
            &t,
        )
        .unwrap();
        assert_eq!(input.shape(), [batch, g.state_frames() * elems]);
        let ab_gb: Vec<(f64, f64)> = t
            .iter()
            .map(|&t| {
                let ab = s.alphas_cumprod[t];
                (ab, gamma_bar(dyn_eta, ab))
            })
            .collect();
        let (x, e) = (x0.to_vec().unwrap(), eps.to_vec().unwrap());
        let (wi, wt) = reference::q_sample(&x, &e, &g, &ab_gb, prediction);
        assert_close(&input.to_vec().unwrap(), &wi, ATOL, RTOL, "network input");
        assert_close(&target.to_vec().unwrap(), &wt, ATOL, RTOL, "target");
        if prediction == Prediction::V && dyn_eta == 0.0 && !diffuse_history {
            // v = √ᾱ·ε − √(1−ᾱ)·x on the future frames
            let got = target.to_vec().unwrap();
            for b in 0..batch {
                let ab = s.alphas_cumprod[t[b]];
                for i in 0..future * elems {
                    let want = ab.sqrt() * f64::from(e[b * future * elems + i])
                        - (1.0 - ab).sqrt()
                            * f64::from(x[(b * (history + future) + history) * elems + i]);
                    let got = f64::from(got[b * future * elems + i]);
                    assert!(
                        (got - want).abs() <= 1e-6 + 1e-6 * want.abs(),
                        "{got} vs {want}"
                    );
                }
            }
        }
        if prediction == Prediction::Epsilon && dyn_eta == 0.0 && !diffuse_history {
            // The standard process: x_t = √ᾱ·x + √(1−ᾱ)·ε, target ε.
            let inp = input.to_vec().unwrap();
            assert_eq!(target.to_vec().unwrap(), e);
            for b in 0..batch {
                let ab = s.alphas_cumprod[t[b]];
                let l = history + future;
                for i in 0..l * elems {
                    let want = if i < history * elems {
                        x[b * l * elems + i]
                    } else {
                        (ab.sqrt() * f64::from(x[b * l * elems + i])
                            + (1.0 - ab).sqrt()
                                * f64::from(e[b * future * elems + i - history * elems]))
                            as f32
                    };
                    let got = inp[b * l * elems + i];
                    assert!(
                        (got - want).abs() <= 1e-6 + 1e-6 * want.abs(),
                        "{got} vs {want}"
                    );
                }
            }
        }
    }
}

/// `ε̃` is standard normal per frame with lag-k correlation `(1 − γ̄_t)^{k/2}` (docs/process.md,
/// “Forward process”), over the future frames, and over all frames when the history is diffused
/// too (“Diffusing the history”).
#[test]
fn correlated_noise_has_the_stated_statistics() {
    let s = schedule();
    let (history, future, elems) = (2, 5, 40_000);
    for diffuse_history in [false, true] {
        let dn = if diffuse_history {
            history + future
        } else {
            future
        };
        for &t in &[10usize, 500, 900] {
            let dyn_eta = 0.5;
            let rows = [NoiseRow {
                sample: t as u32,
                member: 0,
            }];
            let key = NoiseKey {
                seed: 7,
                purpose: Purpose::InitNoise,
                step: 0,
            };
            let eps = Tensor::randn(key, &rows, &[1, dn * elems], Device::Cpu).unwrap();
            let x0 = Tensor::zeros(&[1, (history + future) * elems], Device::Cpu).unwrap();
            let (_, et) = Tensor::q_sample(
                &x0,
                &eps,
                scope(history, future, diffuse_history),
                &s,
                dyn_eta,
                &[t],
            )
            .unwrap();
            let et = et.to_vec().unwrap();
            let frame = |i: usize| &et[i * elems..(i + 1) * elems];
            let n = elems as f64;
            for i in 0..dn {
                let f = frame(i);
                let mean = f.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let var = f.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n - mean * mean;
                // Standard errors 0.005 (mean) and 0.007 (variance): bounds at 5σ.
                assert!(mean.abs() < 0.025, "t {t} frame {i}: mean {mean}");
                assert!((var - 1.0).abs() < 0.035, "t {t} frame {i}: variance {var}");
            }
            let gb = gamma_bar(dyn_eta, s.alphas_cumprod[t]);
            for k in 1..dn {
                let want = (1.0 - gb).powf(k as f64 / 2.0);
                let mut corr = 0.0;
                for i in 0..dn - k {
                    corr += frame(i)
                        .iter()
                        .zip(frame(i + k))
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum::<f64>()
                        / n;
                }
                corr /= (dn - k) as f64;
                assert!(
                    (corr - want).abs() < 0.025,
                    "t {t} lag {k}, all frames {diffuse_history}: correlation {corr}, expected {want}"
                );
            }
        }
    }
}

fn step_cases(s: &Schedule) -> Vec<(f64, f64, usize, Option<usize>)> {
    vec![
        (0.5, 0.0, 981, Some(961)),
        (0.5, 1.0, 501, Some(481)),
        (0.5, 0.3, 21, Some(1)),
        (0.5, 0.7, 1, None),
        (0.0, 0.0, 601, Some(401)),
        (1.0, 0.5, 301, Some(201)),
        (0.2, 0.0, 1, None),
    ]
    .into_iter()
    .filter(|c| c.2 < s.len())
    .collect()
}

#[test]
fn ddim_step_matches_the_reference() {
    for diffuse_history in [false, true] {
        for prediction in [Prediction::Epsilon, Prediction::V] {
            ddim_step_matches_the_reference_in(diffuse_history, prediction);
        }
    }
}

/// The fused DDIM step against the reference, diffusing the future frames or all frames, the
/// network predicting the noise or the velocity.
fn ddim_step_matches_the_reference_in(diffuse_history: bool, prediction: Prediction) {
    let s = schedule_predicting(prediction);
    let (batch, history, future, elems) = (3, 2, 4, 1100);
    let g = ProcessGeom {
        batch,
        history,
        future,
        elems,
        diffuse_history,
    };
    let state = rand_tensor(&[batch, g.state_frames() * elems], 11);
    let eps_hat = rand_tensor(&[batch, g.diffused() * elems], 12);
    let z = rand_tensor(&[batch, g.diffused() * elems], 13);
    for (dyn_eta, ddim_eta, t, p) in step_cases(&s) {
        let v = StepValues::new(&s, dyn_eta, ddim_eta, t, p);
        let zopt = (v.sigma > 0.0).then_some(&z);
        let next = state
            .ddim_step(
                &eps_hat,
                zopt,
                scope(history, future, diffuse_history),
                &v.coef(),
            )
            .unwrap();
        let want = reference::ddim_step(
            &state.to_vec().unwrap(),
            &eps_hat.to_vec().unwrap(),
            zopt.map(|z| z.to_vec().unwrap()).as_deref(),
            &g,
            &DdimValues {
                ab_t: v.ab_t,
                gb_t: v.gb_t,
                ab_p: v.ab_p,
                gb_p: v.gb_p,
                sigma: v.sigma,
                prediction,
            },
        );
        // 1/√ᾱ_t reaches 36 at t = 981: scale the tolerance by the output's magnitude.
        let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_close(
            &next.to_vec().unwrap(),
            &want,
            2e-6 * max,
            RTOL,
            &format!(
                "step {t}→{p:?}, dyn_eta {dyn_eta}, ddim_eta {ddim_eta}, all frames {diffuse_history}, {prediction:?}"
            ),
        );
    }
}

/// With `dyn_eta = 0` a step is diffusers' DDIM:
/// `x̂_0 = (x_t − √(1−ᾱ_t)ε̂)/√ᾱ_t`, `x_p = √ᾱ_p·x̂_0 + √(1−ᾱ_p−σ²)·ε̂ + σz`.
#[test]
fn standard_ddim_when_dyn_eta_is_zero() {
    let s = schedule();
    let (batch, history, future, elems) = (2, 2, 3, 300);
    let state = rand_tensor(&[batch, (history + future) * elems], 21);
    let eh = rand_vec(batch * future * elems, 22);
    let zv = rand_vec(batch * future * elems, 23);
    let eps_hat = Tensor::from_vec(eh.clone(), &[batch, future * elems], Device::Cpu).unwrap();
    let z = Tensor::from_vec(zv.clone(), &[batch, future * elems], Device::Cpu).unwrap();
    let x = state.to_vec().unwrap();
    for (ddim_eta, t, p) in [(0.0, 961, Some(941)), (1.0, 401, Some(381)), (0.5, 1, None)] {
        let v = StepValues::new(&s, 0.0, ddim_eta, t, p);
        let next = state
            .ddim_step(&eps_hat, Some(&z), scope(history, future, false), &v.coef())
            .unwrap()
            .to_vec()
            .unwrap();
        let l = history + future;
        for b in 0..batch {
            for i in 0..future * elems {
                let j = b * future * elems + i;
                let xt = f64::from(x[b * l * elems + history * elems + i]);
                let e = f64::from(eh[j]);
                let x0 = (xt - (1.0 - v.ab_t).sqrt() * e) / v.ab_t.sqrt();
                let want = v.ab_p.sqrt() * x0
                    + (1.0 - v.ab_p - v.sigma * v.sigma).sqrt() * e
                    + v.sigma * f64::from(zv[j]);
                let got = f64::from(next[b * l * elems + history * elems + i]);
                assert!(
                    (got - want).abs() <= 1e-4 + 1e-5 * want.abs(),
                    "t {t}: {got} vs {want}"
                );
            }
            assert_eq!(
                next[b * l * elems..][..history * elems],
                x[b * l * elems..][..history * elems],
                "history is kept"
            );
        }
    }
}
