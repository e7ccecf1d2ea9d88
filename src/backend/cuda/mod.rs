//! The CUDA backend: kernels of `kernels/*.cu` launched through the [`gpu::Gpu`] seam, on the GPU
//! or on the CPU [emulator](emu). The storage type keeps its place in the [`Storage`] enum so
//! that nothing above the backend needs a `cfg`; until the backend's operations land it is
//! uninhabited — no value of it can exist, every method is statically unreachable — and asking for
//! a CUDA device returns a clear error instead.
//!
//! [`Storage`]: super::Storage

pub mod buffer;
pub mod conv;
#[cfg(feature = "cuda")]
pub mod driver;
pub mod elementwise;
pub mod emu;
pub mod gemm;
pub mod gpu;
pub mod kernels;
pub mod process;

/// How the GPU multiplies in the network's products (docs/devices.md, “Precision”): float32
/// with FFMA, or on the tensor cores with operands rounded to TF32 and float32 accumulation.
/// Storage is float32 either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Tf32,
}

use super::{
    AdamStep, AttnGeom, BackendStorage, BinaryOp, ConvGeom, DdimCoef, DynCoef, MatmulGeom,
    NormGeom, ProcessGeom, QSampleCoef, SeqGeom,
};
use crate::error::{Error, Result};
use crate::rng::{NoiseKey, NoiseRow};

/// Device memory on one GPU. Uninhabited until the CUDA backend lands.
#[derive(Clone, Debug)]
pub enum CudaStorage {}

fn unavailable() -> Error {
    if cfg!(feature = "cuda") {
        Error::Backend(
            "the CUDA backend runs only the process kernels in this version of dydiff, not the network; use --device cpu".into(),
        )
    } else {
        Error::Backend(
            "dydiff was built without CUDA (rebuild with --features cuda); use --device cpu".into(),
        )
    }
}

/// Checks that GPU `ordinal` can be used: the driver, the GPU and the embedded kernels first
/// (each failure one line), then the backend itself.
pub fn check_device(ordinal: usize) -> Result<()> {
    #[cfg(feature = "cuda")]
    driver::Driver::open(ordinal)?;
    let _ = ordinal;
    Err(unavailable())
}

/// What `dydiff info` says about CUDA (docs/devices.md): the architectures of the embedded kernels, then
/// one line per GPU (name, compute capability, memory, driver version) or why there is none.
pub fn info_lines() -> Vec<String> {
    let mut lines = Vec::new();
    match kernels::architectures() {
        Some(a) => {
            let archs: Vec<&str> = a.split([';', ',']).map(str::trim).collect();
            let top = archs.iter().filter_map(|a| a.parse::<u32>().ok()).max();
            lines.push(format!(
                "cuda kernels: machine code for sm_{}{}",
                archs.join(", sm_"),
                top.map(|t| format!(", PTX for compute_{t}"))
                    .unwrap_or_default()
            ));
        }
        None if cfg!(feature = "cuda") => {
            lines.push("cuda kernels: none (nvcc was not found when this binary was built)".into())
        }
        None => lines.push("cuda: this binary was built without CUDA (--features cuda)".into()),
    }
    #[cfg(feature = "cuda")]
    match driver::device_count() {
        Err(e) => lines.push(format!("cuda: {e}")),
        Ok(0) => lines.push("cuda: the driver sees no GPU".into()),
        Ok(n) => {
            let version = driver::driver_version().unwrap_or_else(|e| e.to_string());
            for i in 0..n {
                lines.push(match driver::Driver::open(i).and_then(|d| d.describe()) {
                    Ok((name, (major, minor), mem)) => format!(
                        "cuda:{i}: {name}, compute capability {major}.{minor}, {:.1} GiB, driver {version}",
                        mem as f64 / (1u64 << 30) as f64
                    ),
                    Err(e) => format!("cuda:{i}: {e}"),
                });
            }
        }
    }
    lines
}

impl CudaStorage {
    pub fn from_vec(_ordinal: usize, _data: Vec<f32>) -> Result<Self> {
        Err(unavailable())
    }
    pub fn randn(_ordinal: usize, _: NoiseKey, _: &[NoiseRow], _: usize) -> Result<Self> {
        Err(unavailable())
    }
    pub fn ordinal(&self) -> usize {
        match *self {}
    }
}

impl BackendStorage for CudaStorage {
    fn len(&self) -> usize {
        match *self {}
    }
    fn to_vec(&self) -> Result<Vec<f32>> {
        match *self {}
    }
    fn conv2d(&self, _: &Self, _: Option<&Self>, _: &ConvGeom) -> Result<Self> {
        match *self {}
    }
    fn conv2d_backward(
        &self,
        _: &Self,
        _: &Self,
        _: &ConvGeom,
        _: bool,
    ) -> Result<(Option<Self>, Self, Self)> {
        match *self {}
    }
    fn matmul(&self, _: &Self, _: &MatmulGeom) -> Result<Self> {
        match *self {}
    }
    fn linear(&self, _: &Self, _: Option<&Self>, _: usize, _: usize, _: usize) -> Result<Self> {
        match *self {}
    }
    fn sum_rows(&self, _: usize, _: usize) -> Result<Self> {
        match *self {}
    }
    fn group_norm(&self, _: &Self, _: &Self, _: &NormGeom) -> Result<(Self, Self)> {
        match *self {}
    }
    fn group_norm_backward(
        &self,
        _: &Self,
        _: &Self,
        _: &Self,
        _: &NormGeom,
    ) -> Result<(Self, Self, Self)> {
        match *self {}
    }
    fn silu(&self) -> Result<Self> {
        match *self {}
    }
    fn silu_backward(&self, _: &Self) -> Result<Self> {
        match *self {}
    }
    fn attention(&self, _: &Self, _: &Self, _: &AttnGeom) -> Result<Self> {
        match *self {}
    }
    fn attention_backward(
        &self,
        _: &Self,
        _: &Self,
        _: &Self,
        _: &AttnGeom,
    ) -> Result<(Self, Self, Self)> {
        match *self {}
    }
    fn upsample_nearest2x(&self, _: usize, _: usize, _: usize) -> Result<Self> {
        match *self {}
    }
    fn upsample_nearest2x_backward(&self, _: usize, _: usize, _: usize) -> Result<Self> {
        match *self {}
    }
    fn binary(&self, _: &Self, _: BinaryOp) -> Result<Self> {
        match *self {}
    }
    fn affine(&self, _: f32, _: f32) -> Result<Self> {
        match *self {}
    }
    fn add_channel_bias(&self, _: &Self, _: usize, _: usize, _: usize) -> Result<Self> {
        match *self {}
    }
    fn transpose12(&self, _: usize, _: usize, _: usize) -> Result<Self> {
        match *self {}
    }
    fn concat_channels(parts: &[&Self], _: usize, _: &[usize], _: usize) -> Result<Self> {
        match parts.first() {
            Some(p) => match **p {},
            None => Err(unavailable()),
        }
    }
    fn slice_channels(&self, _: usize, _: usize, _: usize, _: usize, _: usize) -> Result<Self> {
        match *self {}
    }
    fn slice_channels_backward(
        &self,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
    ) -> Result<Self> {
        match *self {}
    }
    fn dynamics(&self, _: &SeqGeom, _: &[DynCoef], _: bool) -> Result<Self> {
        match *self {}
    }
    fn q_sample(&self, _: &Self, _: &ProcessGeom, _: &[QSampleCoef]) -> Result<(Self, Self)> {
        match *self {}
    }
    fn ddim_step(&self, _: &Self, _: Option<&Self>, _: &ProcessGeom, _: &DdimCoef) -> Result<Self> {
        match *self {}
    }
    fn adamw(
        &self,
        _: &Self,
        _: &Self,
        _: &Self,
        _: &Self,
        _: &AdamStep,
    ) -> Result<(Self, Self, Self, Self)> {
        match *self {}
    }
    fn sum_squares(&self) -> Result<f64> {
        match *self {}
    }
    fn sum_all(&self) -> Result<f32> {
        match *self {}
    }
    fn timestep_embedding(&self, _: usize, _: bool, _: f32) -> Result<Self> {
        match *self {}
    }
}
