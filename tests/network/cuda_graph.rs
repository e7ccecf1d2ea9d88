//! CUDA graphs of a repeated step (docs/devices.md, “CUDA graphs”), on the emulator (`cuda:0` with
//! DYDIFF_CUDA_EMULATOR=1; a real GPU with DYDIFF_TEST_DEVICE=cuda): a [`StepRunner`] runs the
//! first step eagerly, captures the second and replays it from then on, with each step's input
//! values, and gives the CPU's results; a graph's buffers are never handed to anything else while
//! it lives; what a capture cannot hold (a copy to the host) fails the step and leaves the device
//! usable; the sampler replays one graph per batch.
//!
//! The tests share one device and its counters, so each one holds `common::cuda_lock`.

use crate::common::{cuda_device, cuda_lock};
use dydiff::backend::cuda::{self, cache::MemoryStats};
use dydiff::backend::PadMode;
use dydiff::diffusion::ddim::{ddim_step_tensor, rows_tensor, StepValues};
use dydiff::error::Result;
use dydiff::model::Model;
use dydiff::pipelines::sample::{forecast, SamplerSettings};
use dydiff::rng::{NoiseKey, NoiseRow, Purpose};
use dydiff::tensor::step::StepRunner;
use dydiff::{Device, Tensor};
use std::path::PathBuf;

fn stats() -> MemoryStats {
    cuda::device(0).unwrap().memory_stats()
}

/// Checks how many graphs were captured and replayed between two readings of the counters.
fn assert_graphs(before: MemoryStats, after: MemoryStats, captures: u64, replays: u64) {
    let seen = (
        after.captures - before.captures,
        after.replays - before.replays,
    );
    assert_eq!(seen, (captures, replays), "{before:?} → {after:?}");
}

fn values(seed: u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % 1000) as f32 / 500.0
                - 1.0
        })
        .collect()
}

/// A small step: a 3×3 convolution with bias of `x (2, 3, 5, 7)`, SiLU, plus `x · s` where `s`
/// is the step's scalar input, broadcast as a tensor of `x`'s shape.
fn step<'a>(w: &'a Tensor, b: &'a Tensor) -> impl Fn(&[Tensor]) -> Result<Vec<Tensor>> + 'a {
    move |x: &[Tensor]| {
        let y = x[0]
            .conv2d(w, Some(b), 1, [1, 1, 1, 1], PadMode::Zeros)?
            .silu()?;
        Ok(vec![y.add(&x[0].mul(&x[1])?)?, y])
    }
}

/// Five steps through a runner equal the same steps on the CPU (float32 products: to 1e-5 of the
/// largest value), the state feeding the next step
/// and a new scalar each time; the runner captured once and replayed four times.
#[test]
fn replayed_steps_equal_the_cpu() {
    let _l = cuda_lock();
    let dev = cuda_device();
    let shape = [2, 3, 5, 7];
    let n: usize = shape.iter().product();
    let on = |d: Device| {
        let w = Tensor::from_vec(values(1, 3 * 3 * 9), &[3, 3, 3, 3], d).unwrap();
        let b = Tensor::from_vec(values(2, 3), &[3], d).unwrap();
        (w, b)
    };
    let (wc, bc) = on(Device::Cpu);
    let (wg, bg) = on(dev);
    let precision = cuda::precision();
    cuda::set_precision(cuda::Precision::Fp32);
    let mut cpu = StepRunner::new(Device::Cpu).unwrap();
    let mut gpu = StepRunner::new(dev).unwrap();
    let (step_c, step_g) = (step(&wc, &bc), step(&wg, &bg));
    let mut xc = Tensor::from_vec(values(3, n), &shape, Device::Cpu).unwrap();
    let mut xg = Tensor::from_vec(values(3, n), &shape, dev).unwrap();
    let before = stats();
    for k in 0..5 {
        let s = vec![0.5 + 0.1 * k as f32; n];
        let sc = Tensor::from_vec(s.clone(), &shape, Device::Cpu).unwrap();
        let sg = Tensor::from_vec(s, &shape, dev).unwrap();
        let oc = cpu.run(&[&xc, &sc], &step_c).unwrap();
        let og = gpu.run(&[&xg, &sg], &step_g).unwrap();
        assert_eq!(og.len(), 2);
        for (a, b) in oc.iter().zip(&og) {
            assert_eq!(a.shape(), b.shape());
            let (a, b) = (a.to_vec().unwrap(), b.to_vec().unwrap());
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                err <= 1e-5 * scale,
                "step {k}: max |gpu − cpu| {err}, max |cpu| {scale}"
            );
        }
        xc = oc[0].clone();
        xg = og[0].clone();
    }
    cuda::set_precision(precision);
    let after = stats();
    assert_graphs(before, after, 1, 4);
}

/// A tensor made between two replays — from the buffers the caching allocator holds — keeps its
/// values through the next replay: the graph's buffers are reserved for it while it lives, and
/// return to the cache when it is dropped.
#[test]
fn a_graphs_buffers_are_reserved_while_it_lives() {
    let _l = cuda_lock();
    let dev = cuda_device();
    let shape = [1, 3, 4, 4];
    let n: usize = shape.iter().product();
    let w = Tensor::from_vec(values(4, 81), &[3, 3, 3, 3], dev).unwrap();
    let b = Tensor::from_vec(values(5, 3), &[3], dev).unwrap();
    let f = step(&w, &b);
    let x = Tensor::from_vec(values(6, n), &shape, dev).unwrap();
    let s = Tensor::from_vec(vec![1.0; n], &shape, dev).unwrap();
    let mut runner = StepRunner::new(dev).unwrap();
    runner.run(&[&x, &s], &f).unwrap();
    runner.run(&[&x, &s], &f).unwrap(); // captured
    let held_before = stats().cached_bytes;
    // buffers of the sizes the step uses, made and kept between replays
    let kept: Vec<(Tensor, Vec<f32>)> = (0..6)
        .map(|i| {
            let v = values(10 + i, n);
            (Tensor::from_vec(v.clone(), &shape, dev).unwrap(), v)
        })
        .collect();
    runner.run(&[&x, &s], &f).unwrap();
    for (t, v) in &kept {
        assert_eq!(
            &t.to_vec().unwrap(),
            v,
            "a replay wrote into a buffer made after capture"
        );
    }
    drop(kept);
    let held = stats().cached_bytes;
    drop(runner);
    assert!(
        stats().cached_bytes > held,
        "the graph's buffers did not return to the cache ({held_before} → {held} → {})",
        stats().cached_bytes
    );
}

/// A step that copies to the host cannot be captured: the second run fails with one line naming
/// the copy, and the device goes on working (a later eager step runs).
#[test]
fn a_copy_to_the_host_inside_a_step_fails_the_capture_cleanly() {
    let _l = cuda_lock();
    let dev = cuda_device();
    let x = Tensor::from_vec(values(7, 12), &[12], dev).unwrap();
    let reads = |x: &[Tensor]| -> Result<Vec<Tensor>> {
        let host = x[0].to_vec()?;
        Ok(vec![Tensor::from_vec(host, &[12], x[0].device())?])
    };
    let mut runner = StepRunner::new(dev).unwrap();
    runner.run(&[&x], &reads).unwrap();
    let err = runner.run(&[&x], &reads).unwrap_err().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("captur"), "{err}");
    let y = x.scale(2.0).unwrap().to_vec().unwrap();
    let want: Vec<f32> = values(7, 12).iter().map(|v| v * 2.0).collect();
    assert_eq!(y, want);
}

/// New input shapes drop the graph and capture again.
#[test]
fn new_shapes_are_captured_again() {
    let _l = cuda_lock();
    let dev = cuda_device();
    let double = |x: &[Tensor]| -> Result<Vec<Tensor>> { Ok(vec![x[0].scale(2.0)?]) };
    let mut runner = StepRunner::new(dev).unwrap();
    let before = stats();
    for len in [5, 5, 5, 9, 9, 9] {
        let v = values(len as u32, len);
        let x = Tensor::from_vec(v.clone(), &[len], dev).unwrap();
        let y = runner.run(&[&x], &double).unwrap()[0].to_vec().unwrap();
        assert_eq!(y, v.iter().map(|a| a * 2.0).collect::<Vec<_>>());
    }
    let after = stats();
    assert_graphs(before, after, 2, 4);
}

/// The sampler's step — the network and the fused DDIM update with its noise drawn in the kernel
/// from per-step values in device memory — replayed: 4 steps per batch of pairs, two batches (5
/// pairs, batch 3), one capture and three replays each, and the forecast equals the CPU's.
#[test]
fn the_sampler_replays_one_graph_per_batch() {
    let _l = cuda_lock();
    let dev = cuda_device();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sampler");
    let obs = dydiff::io::npy::read(&fixtures.join("obs.npy")).unwrap();
    let run = |device: Device| {
        let model = Model::load(&fixtures.join("model_dyn"), device).unwrap();
        // the first sequence's history
        let history = model.process.history * model.process.frame_len();
        let s = SamplerSettings {
            members: 5,
            steps: 4,
            seed: 11,
            ddim_eta: 0.7,
            batch: 3,
            device,
        };
        forecast(&model, &s, &obs.data[..history], 1, None, |_| {})
            .unwrap()
            .0
    };
    let precision = cuda::precision();
    cuda::set_precision(cuda::Precision::Fp32);
    let before = stats();
    let gpu = run(dev);
    let after = stats();
    cuda::set_precision(precision);
    let cpu = run(Device::Cpu);
    assert_graphs(before, after, 2, 6);
    let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = gpu
        .iter()
        .zip(&cpu)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-4 * scale,
        "max |gpu − cpu| {err}, max |cpu| {scale}"
    );
}

/// The per-step values the DDIM kernel reads from device memory round-trip through their words.
#[test]
fn the_step_values_round_trip_through_device_memory() {
    let _l = cuda_lock();
    let dev = cuda_device();
    let schedule = dydiff::diffusion::schedule::Schedule::new(
        &dydiff::diffusion::schedule::SchedulerConfig::default(),
    );
    let v = StepValues::new(&schedule, 0.5, 0.3, 500, Some(480));
    let key = NoiseKey {
        seed: 0x1234_5678_9abc_def0,
        purpose: Purpose::StepNoise,
        step: (3 << 24) | 17,
    };
    let words = ddim_step_tensor(&v.coef(), key, dev)
        .unwrap()
        .to_vec()
        .unwrap();
    let back = dydiff::backend::DdimStep::from_words(&words).unwrap();
    assert_eq!(back.coef, v.coef());
    assert_eq!(back.key, key);
    let rows = [
        NoiseRow {
            sample: 7,
            member: 3,
        },
        NoiseRow {
            sample: u32::MAX,
            member: 0xff_ffff,
        },
    ];
    let w = rows_tensor(&rows, dev).unwrap().to_vec().unwrap();
    assert_eq!(dydiff::backend::rows_from_words(&w), rows);
}
