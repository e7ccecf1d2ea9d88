//! Helpers shared by the integration tests.
#![allow(dead_code)]

use dydiff::{Device, Tensor};

/// Deterministic pseudo-random values in [-1, 1) (SplitMix64).
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = dydiff::nn::InitRng::new(seed);
    (0..n).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect()
}

pub fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(rand_vec(shape.iter().product(), seed), shape, Device::Cpu).unwrap()
}

/// Asserts `|a − b| ≤ atol + rtol·|b|` elementwise (llm.c's convention, `b` the reference).
pub fn assert_close(a: &[f32], b: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= atol + rtol * y.abs(),
            "{what}[{i}]: {x} vs reference {y}"
        );
    }
}
