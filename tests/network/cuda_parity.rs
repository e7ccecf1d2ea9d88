//! The whole network on the CUDA backend: the diffusers parity fixtures of `parity` run
//! on the emulator (`cuda:0` with DYDIFF_CUDA_EMULATOR=1; a real GPU with DYDIFF_TEST_DEVICE=cuda).
//! Float32 products: max |gpu − diffusers| ≤ 1e-4 · max |diffusers|, the CPU's bound. TF32 and bf16
//! products: the largest and the root-mean-square error against diffusers' float32 output each at
//! most twice PyTorch's at the same precision on the same input (tf32.json, bf16.json:
//! python/make_precision_fixtures.py).

use crate::common::{assert_within_twice_pytorch, cuda_device, cuda_lock};
use dydiff::backend::cuda::{self, Precision};
use dydiff::io::npy;
use dydiff::nn::UNet2D;
use dydiff::Tensor;
use std::path::PathBuf;

fn check(name: &str, precision: Precision) {
    let dev = cuda_device();
    cuda::set_precision(precision);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let pytorch: Option<serde_json::Value> = (precision != Precision::Fp32).then(|| {
        let f = dir.join(format!("{}.json", precision.name()));
        serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap()
    });
    let model = UNet2D::from_pretrained(&dir, dev).unwrap();
    let x = npy::read(&dir.join("x.npy")).unwrap();
    let xt = Tensor::from_vec(x.data.clone(), &x.shape, dev).unwrap();
    for k in [0, 3] {
        let t = npy::read(&dir.join(format!("t{k}.npy"))).unwrap();
        let want = npy::read(&dir.join(format!("out{k}.npy"))).unwrap();
        let tt = Tensor::from_vec(t.data.clone(), &t.shape, dev).unwrap();
        let got = model.forward(&xt, &tt).unwrap();
        assert_eq!(got.shape(), want.shape.as_slice());
        let got = got.to_vec().unwrap();
        let what = format!("{name} {precision:?} t={:?}", t.data);
        match precision {
            Precision::Fp32 => {
                let scale = want.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let max = got
                    .iter()
                    .zip(&want.data)
                    .fold(0.0f64, |m, (a, b)| m.max(f64::from(a - b).abs()));
                assert!(
                    max <= 1e-4 * f64::from(scale),
                    "{what}: max error {max} vs max |diffusers| {scale}"
                );
            }
            Precision::Tf32 | Precision::Bf16 => {
                assert_within_twice_pytorch(&got, &want.data, pytorch.as_ref().unwrap(), k, &what)
            }
        }
    }
}

/// After the first forward, a second one allocates and frees nothing on the device: every
/// buffer comes from the caching allocator.
fn steady_state_allocates_nothing(name: &str) {
    let dev = cuda_device();
    let gpu = cuda::device(0).unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let model = UNet2D::from_pretrained(&dir, dev).unwrap();
    let x = npy::read(&dir.join("x.npy")).unwrap();
    let xt = Tensor::from_vec(x.data.clone(), &x.shape, dev).unwrap();
    let t = npy::read(&dir.join("t0.npy")).unwrap();
    let tt = Tensor::from_vec(t.data.clone(), &t.shape, dev).unwrap();
    let first = model.forward(&xt, &tt).unwrap().to_vec().unwrap();
    let before = gpu.memory_stats();
    let second = model.forward(&xt, &tt).unwrap().to_vec().unwrap();
    let after = gpu.memory_stats();
    assert_eq!(first, second, "{name}: the same forward twice");
    assert_eq!(
        after.device_allocs, before.device_allocs,
        "{name}: {before:?} → {after:?}"
    );
    assert_eq!(
        after.device_frees, before.device_frees,
        "{name}: {before:?} → {after:?}"
    );
    assert!(
        after.reused > before.reused,
        "{name}: {before:?} → {after:?}"
    );
}

/// One test, so that the precision (process-wide) is not changed under a running forward.
#[test]
fn the_parity_fixtures_on_the_cuda_backend() {
    let _l = cuda_lock();
    for name in ["unet_a", "unet_b", "unet_c", "unet_d", "unet_e"] {
        check(name, Precision::Fp32);
        check(name, Precision::Tf32);
        check(name, Precision::Bf16);
    }
    steady_state_allocates_nothing("unet_c");
}
