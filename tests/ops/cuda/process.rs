//! The process kernels (kernels/process.cu) against the CPU backend, on ragged shapes: batch 1 and
//! 17, one element to odd image sizes, short and long histories, both scopes of the process
//! (docs/process.md, “Forward process” and “Diffusing the history”), DDIM steps with and without
//! σ-noise (drawn in the kernel or given); and the device's Philox words bit-identical to the
//! CPU's, its normals equal to them.
//!
//! Runs on the CUDA emulator, or on GPU 0 with DYDIFF_TEST_DEVICE=cuda. Tolerances (fp32):
//! `|gpu − cpu| ≤ 1e-5·max|cpu| + 1e-5·|cpu|` for the scans (a GPU contracts `a·b + c·d` into
//! FMAs, the CPU does not); normals within 1e-6 relative (float64 log/sin/cos of the device
//! against the host's, rounded to f32).

use super::gpu;
use crate::common::{assert_close, rand_vec};
use dydiff::backend::cpu::CpuStorage;
use dydiff::backend::cuda::buffer::Buffer;
use dydiff::backend::cuda::process::{self, StepValues};
use dydiff::backend::{
    row_words, BackendStorage, DdimCoef, DdimStep, DynCoef, ProcessGeom, QSampleCoef, SeqGeom,
};
use dydiff::diffusion::schedule::Prediction;
use dydiff::rng::{NoiseKey, NoiseRow, Purpose};

fn close(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_close(got, want, 1e-5 * scale, 1e-5, what);
}

/// (batch, history, future, elems) of the ragged cases.
const SHAPES: [(usize, usize, usize, usize); 6] = [
    (1, 1, 1, 1),
    (1, 4, 6, 7),
    (17, 2, 3, 300),
    (17, 4, 6, 2 * 33 * 31),
    (3, 1, 5, 4 * 16 * 16),
    (2, 5, 1, 13),
];

fn gamma_of(b: usize) -> f64 {
    0.3 + 0.6 * ((b * 37) % 17) as f64 / 17.0
}

fn rows(batch: usize) -> Vec<NoiseRow> {
    (0..batch)
        .map(|b| NoiseRow {
            sample: (b / 3) as u32 + 5,
            member: (b % 3) as u32 * 7,
        })
        .collect()
}

#[test]
fn dynamics_and_its_inverse_match_the_cpu() {
    let gpu = gpu();
    for (i, &(batch, h, f, elems)) in SHAPES.iter().enumerate() {
        let g = SeqGeom {
            batch,
            frames: h + f,
            elems,
        };
        let x = rand_vec(batch * g.frames * elems, 10 + i as u64);
        let coefs: Vec<DynCoef> = (0..batch).map(|b| DynCoef::new(gamma_of(b))).collect();
        let dx = Buffer::from_f32(&gpu, &x).unwrap();
        for inverse in [false, true] {
            let want = CpuStorage::from_vec(x.clone())
                .dynamics(&g, &coefs, inverse)
                .unwrap()
                .to_vec()
                .unwrap();
            let got = process::dynamics(&dx, &g, &coefs, inverse)
                .unwrap()
                .to_f32()
                .unwrap();
            close(&got, &want, &format!("{g:?} inverse {inverse}"));
        }
    }
}

#[test]
fn the_forward_process_matches_the_cpu_in_both_scopes() {
    let gpu = gpu();
    for (i, &(batch, history, future, elems)) in SHAPES.iter().enumerate() {
        for diffuse_history in [false, true] {
            let g = ProcessGeom {
                batch,
                history,
                future,
                elems,
                diffuse_history,
            };
            let x0 = rand_vec(batch * g.frames() * elems, 20 + i as u64);
            let eps = rand_vec(batch * g.diffused() * elems, 30 + i as u64);
            let coefs: Vec<QSampleCoef> = (0..batch)
                .map(|b| {
                    let ab = 0.05 + 0.9 * ((b * 11) % 7) as f64 / 7.0;
                    // odd sequences learn the velocity, even ones the noise
                    let prediction = [Prediction::Epsilon, Prediction::V][b % 2];
                    let (target_eps, target_d) = prediction.target(ab);
                    QSampleCoef {
                        dynamics: DynCoef::new(gamma_of(b)),
                        sqrt_ab: ab.sqrt() as f32,
                        sqrt_1mab: (1.0 - ab).sqrt() as f32,
                        target_eps: target_eps as f32,
                        target_d: target_d as f32,
                    }
                })
                .collect();
            let (wi, wt) = CpuStorage::from_vec(x0.clone())
                .q_sample(&CpuStorage::from_vec(eps.clone()), &g, &coefs)
                .unwrap();
            let (gi, gt) = process::q_sample(
                &Buffer::from_f32(&gpu, &x0).unwrap(),
                &Buffer::from_f32(&gpu, &eps).unwrap(),
                &g,
                &coefs,
            )
            .unwrap();
            close(
                &gi.to_f32().unwrap(),
                &wi.to_vec().unwrap(),
                &format!("{g:?} input"),
            );
            close(
                &gt.to_f32().unwrap(),
                &wt.to_vec().unwrap(),
                &format!("{g:?} target"),
            );
        }
    }
}

fn ddim_coef(sigma: f32, prediction: Prediction) -> DdimCoef {
    let (ab_t, ab_p) = (0.3f64, 0.6f64);
    let (eps_from_xt, eps_from_out) = prediction.epsilon(ab_t);
    DdimCoef {
        dyn_t: DynCoef::new(0.5 * ab_t + 0.5),
        dyn_p: DynCoef::new(0.5 * ab_p + 0.5),
        sqrt_ab_t: ab_t.sqrt() as f32,
        sqrt_1mab_t: (1.0 - ab_t).sqrt() as f32,
        sqrt_ab_p: ab_p.sqrt() as f32,
        eps_weight: ((1.0 - ab_p) as f32 - sigma * sigma).sqrt(),
        sigma,
        eps_from_xt: eps_from_xt as f32,
        eps_from_out: eps_from_out as f32,
    }
}

#[test]
fn the_ddim_step_matches_the_cpu_with_and_without_noise_in_both_scopes() {
    let gpu = gpu();
    for (i, &(batch, history, future, elems)) in SHAPES.iter().enumerate() {
        for diffuse_history in [false, true] {
            for (sigma, prediction) in [
                (0.0f32, Prediction::Epsilon),
                (0.3, Prediction::Epsilon),
                (0.0, Prediction::V),
                (0.3, Prediction::V),
            ] {
                let g = ProcessGeom {
                    batch,
                    history,
                    future,
                    elems,
                    diffuse_history,
                };
                let state = rand_vec(batch * g.state_frames() * elems, 40 + i as u64);
                let eps_hat = rand_vec(batch * g.diffused() * elems, 50 + i as u64);
                let c = ddim_coef(sigma, prediction);
                let key = NoiseKey {
                    seed: 0x1234_5678_9abc_def0,
                    purpose: Purpose::StepNoise,
                    step: (1 << 24) | 7,
                };
                let rows = rows(batch);
                let z = (sigma > 0.0).then(|| CpuStorage::randn(key, &rows, g.diffused() * elems));
                let want = CpuStorage::from_vec(state.clone())
                    .ddim_step(&CpuStorage::from_vec(eps_hat.clone()), z.as_ref(), &g, &c)
                    .unwrap()
                    .to_vec()
                    .unwrap();
                let (ds, de) = (
                    Buffer::from_f32(&gpu, &state).unwrap(),
                    Buffer::from_f32(&gpu, &eps_hat).unwrap(),
                );
                // the step's values and the noise rows in device memory, the noise drawn there
                let step = DdimStep { coef: c, key }.words();
                let (step, row_words) = (
                    Buffer::from_f32(&gpu, &step).unwrap(),
                    Buffer::from_f32(&gpu, &row_words(&rows)).unwrap(),
                );
                let drawn = StepValues::Drawn {
                    step: &step,
                    rows: &row_words,
                };
                let got = process::ddim_step(&ds, &de, drawn, &g)
                    .unwrap()
                    .to_f32()
                    .unwrap();
                close(
                    &got,
                    &want,
                    &format!("{g:?} σ {sigma} {prediction:?}, noise drawn"),
                );
                let dz = z.map(|z| Buffer::from_f32(&gpu, &z.to_vec().unwrap()).unwrap());
                let given = StepValues::Given {
                    coef: &c,
                    z: dz.as_ref(),
                };
                let got = process::ddim_step(&ds, &de, given, &g)
                    .unwrap()
                    .to_f32()
                    .unwrap();
                close(
                    &got,
                    &want,
                    &format!("{g:?} σ {sigma} {prediction:?}, noise given"),
                );
            }
        }
    }
}

#[test]
fn a_noisy_step_without_its_noise_is_refused() {
    let gpu = gpu();
    let g = ProcessGeom {
        batch: 1,
        history: 1,
        future: 1,
        elems: 4,
        diffuse_history: false,
    };
    let b = Buffer::from_f32(&gpu, &[0.0; 8]).unwrap();
    let e = Buffer::from_f32(&gpu, &[0.0; 4]).unwrap();
    let (noisy, plain) = (
        ddim_coef(0.3, Prediction::V),
        ddim_coef(0.0, Prediction::Epsilon),
    );
    let given = |c| StepValues::Given { coef: c, z: None };
    let err = process::ddim_step(&b, &e, given(&noisy), &g).unwrap_err();
    assert!(err.to_string().contains("σ > 0 needs the noise"), "{err}");
    let err = process::ddim_step(&e, &e, given(&plain), &g).unwrap_err();
    assert!(
        err.to_string()
            .contains("the state holds 4 values, expected 8"),
        "{err}"
    );
}

#[test]
fn philox_words_are_bit_identical_to_the_cpu() {
    let gpu = gpu();
    let key = NoiseKey {
        seed: 0xfedc_ba98_7654_3210,
        purpose: Purpose::TrainBatch,
        step: 99,
    };
    let rows = rows(17);
    let blocks = 37;
    let got = process::philox_words(&gpu, key, &rows, blocks)
        .unwrap()
        .to_u32()
        .unwrap();
    for (r, row) in rows.iter().enumerate() {
        let c3 = ((key.purpose as u32) << 24) | row.member;
        for k in 0..blocks {
            let want = dydiff::rng::philox4x32_10(
                [k as u32, key.step, row.sample, c3],
                [key.seed as u32, (key.seed >> 32) as u32],
            );
            assert_eq!(&got[4 * (r * blocks + k)..][..4], &want, "row {r} call {k}");
        }
        assert_eq!(
            &got[4 * r * blocks..][..4],
            &dydiff::rng::words(key, *row),
            "row {r}: the words of integer draws"
        );
    }
}

#[test]
fn normals_equal_the_cpu_for_every_row_length() {
    let gpu = gpu();
    let key = NoiseKey {
        seed: 42,
        purpose: Purpose::InitNoise,
        step: 3 << 24,
    };
    for (batch, row_len) in [(1usize, 1usize), (17, 7), (3, 2 * 6 * 33 * 31), (2, 4096)] {
        let rows = rows(batch);
        let want = CpuStorage::randn(key, &rows, row_len).to_vec().unwrap();
        let got = process::randn(&gpu, key, &rows, row_len)
            .unwrap()
            .to_f32()
            .unwrap();
        assert_close(
            &got,
            &want,
            0.0,
            1e-6,
            &format!("{batch} rows of {row_len}"),
        );
    }
}
