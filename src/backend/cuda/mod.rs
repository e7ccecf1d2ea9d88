//! The CUDA backend: the kernels of `kernels/*.cu`, launched through the [`gpu::Gpu`] seam on a
//! GPU (`driver.rs`, with the `cuda` feature) or on the CPU [emulator](emu) (docs/devices.md).
//! [`CudaStorage`] implements every operation of [`BackendStorage`]: inference's, and training's
//! gradients, losses and optimizer step. One launcher module per op family, as the kernels'
//! files: [`conv`], [`gemm`], [`norm`], [`attention`], [`elementwise`], [`process`], [`optim`] —
//! each with its forward and backward operations.
//!
//! Devices: `cuda:N` is GPU `N` through the driver; with the environment variable
//! `DYDIFF_CUDA_EMULATOR=1` every `cuda:N` is the emulator instead (for tests and debugging:
//! slow, exact about memory errors). Each device is opened once per process, behind a caching
//! allocator ([`cache::Cached`]).

pub mod attention;
pub mod buffer;
pub mod cache;
pub mod check;
pub mod conv;
#[cfg(feature = "cuda")]
pub mod driver;
pub mod elementwise;
pub mod emu;
pub mod gemm;
pub mod gpu;
pub mod kernels;
#[cfg(all(feature = "cuda", feature = "mpi"))]
pub mod nccl;
pub mod norm;
pub mod optim;
pub mod process;
mod splitk;

use self::buffer::Buffer;
use self::conv::{ConvEpilogue, ConvInput};
use self::gemm::Epilogue;
use self::gpu::Gpu;
use self::norm::NormOnLoad;
use super::{
    AdamStep, AttnGeom, BackendStorage, BinaryOp, ConvGeom, DdimCoef, DropoutGeom, DynCoef,
    FusedConv, FusedNorm, LossKind, MatmulGeom, NormGeom, ProcessGeom, QSampleCoef, SeqGeom,
};
use crate::error::{Error, Result};
use crate::rng::{NoiseKey, NoiseRow};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub use crate::backend::Precision;

impl Precision {
    /// The kernels' code for this way of multiplying (`kernels/gemm_core.cuh`: `MMA_F32` 0,
    /// `MMA_TF32` 1, `MMA_BF16` 2).
    pub fn mma_code(self) -> u8 {
        (match self {
            Precision::Fp32 => kernels::consts::MMA_F32,
            Precision::Tf32 => kernels::consts::MMA_TF32,
            Precision::Bf16 => kernels::consts::MMA_BF16,
        }) as u8
    }
    /// Of three kernels, one per way of multiplying (`[f32, tf32, bf16]`), the one for this
    /// precision.
    pub fn pick(self, kernels: [&'static str; 3]) -> &'static str {
        kernels[usize::from(self.mma_code())]
    }
}

/// The environment variable that makes every `cuda:N` the emulator.
pub const EMULATOR_VAR: &str = "DYDIFF_CUDA_EMULATOR";

fn emulated() -> bool {
    std::env::var_os(EMULATOR_VAR).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The GPU of this rank when `--device cuda` names none (docs/distributed.md): the node-local
/// rank modulo the GPUs this process sees (one per rank when the launcher binds a GPU to each,
/// as Slurm's `--gpus-per-task=1` does), 0 in a process of its own or on the emulator.
pub fn rank_ordinal() -> Result<usize> {
    let local = crate::distributed::world().local_rank();
    if local == 0 || emulated() {
        return Ok(0);
    }
    #[cfg(feature = "cuda")]
    {
        let count = driver::device_count()?;
        if count == 0 {
            return Err(Error::Backend("the driver sees no GPU".into()));
        }
        Ok(local % count)
    }
    #[cfg(not(feature = "cuda"))]
    Ok(0)
}

/// The opened devices, by ordinal.
fn devices() -> &'static Mutex<HashMap<usize, Arc<dyn Gpu>>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<dyn Gpu>>>> = OnceLock::new();
    DEVICES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Device `ordinal`, opened on first use.
pub fn device(ordinal: usize) -> Result<Arc<dyn Gpu>> {
    let mut open = devices().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(g) = open.get(&ordinal) {
        return Ok(g.clone());
    }
    let g: Arc<dyn Gpu> = if emulated() {
        Arc::new(cache::Cached::new(emu::Emulator::default()))
    } else {
        open_driver(ordinal)?
    };
    open.insert(ordinal, g.clone());
    Ok(g)
}

#[cfg(feature = "cuda")]
fn open_driver(ordinal: usize) -> Result<Arc<dyn Gpu>> {
    Ok(Arc::new(cache::Cached::new(driver::Driver::open(ordinal)?)))
}

#[cfg(not(feature = "cuda"))]
fn open_driver(_ordinal: usize) -> Result<Arc<dyn Gpu>> {
    Err(Error::Backend(
        "dydiff was built without CUDA (rebuild with --features cuda); use --device cpu".into(),
    ))
}

/// Checks that GPU `ordinal` can be used: the driver, the GPU and the embedded kernels, each
/// failure one line.
pub fn check_device(ordinal: usize) -> Result<()> {
    device(ordinal).map(|_| ())
}

static PRECISION: AtomicU8 = AtomicU8::new(1);

/// Sets the precision of the network's products on every CUDA device (default TF32).
pub fn set_precision(p: Precision) {
    PRECISION.store(p.mma_code(), Ordering::Relaxed);
}

/// The precision of the network's products.
pub fn precision() -> Precision {
    match PRECISION.load(Ordering::Relaxed) {
        0 => Precision::Fp32,
        2 => Precision::Bf16,
        _ => Precision::Tf32,
    }
}

/// Values on one CUDA device (float32).
#[derive(Clone, Debug)]
pub struct CudaStorage {
    buf: Arc<Buffer>,
    ordinal: usize,
}

impl CudaStorage {
    /// A storage on this one's device holding `buf`.
    pub(crate) fn wrap(&self, buf: Buffer) -> CudaStorage {
        CudaStorage {
            buf: Arc::new(buf),
            ordinal: self.ordinal,
        }
    }
    /// A copy of `data` on device `ordinal`.
    pub fn from_vec(ordinal: usize, data: Vec<f32>) -> Result<Self> {
        Ok(CudaStorage {
            buf: Arc::new(Buffer::from_f32(&device(ordinal)?, &data)?),
            ordinal,
        })
    }
    /// Standard normals drawn on the device (docs/random.md), see [`crate::Device::randn`].
    pub fn randn(ordinal: usize, key: NoiseKey, rows: &[NoiseRow], row_len: usize) -> Result<Self> {
        Ok(CudaStorage {
            buf: Arc::new(process::randn(&device(ordinal)?, key, rows, row_len)?),
            ordinal,
        })
    }
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    /// The device buffer.
    /// This array summed over every rank of the job, element by element (a collective,
    /// docs/distributed.md): with NCCL on the device in stream order, else through the host and
    /// MPI.
    pub fn sum_over_ranks(&self) -> Result<CudaStorage> {
        let gpu = self.buf.gpu().clone();
        let out = Buffer::alloc(&gpu, self.len())?;
        if !gpu.sum_over_ranks(self.buf.ptr(), out.ptr(), self.len())? {
            let sums = crate::distributed::world().sum_f32(&self.buf.to_f32()?)?;
            gpu.copy_to_device(out.ptr(), bytemuck::cast_slice(&sums))?;
        }
        Ok(self.wrap(out))
    }

    pub fn buffer(&self) -> &Buffer {
        &self.buf
    }
}

impl BackendStorage for CudaStorage {
    fn len(&self) -> usize {
        self.buf.len()
    }
    fn to_vec(&self) -> Result<Vec<f32>> {
        self.buf.to_f32()
    }
    fn conv2d(&self, w: &Self, b: Option<&Self>, g: &ConvGeom) -> Result<Self> {
        let epi = ConvEpilogue {
            bias: b.map(|b| b.buffer()),
            ..ConvEpilogue::NONE
        };
        let y = conv::conv2d(&ConvInput::plain(&self.buf), &w.buf, g, &epi, precision())?;
        Ok(self.wrap(y))
    }
    fn conv2d_fused(&self, f: &FusedConv<Self>) -> Result<(Self, Option<Self>)> {
        let g = &f.geom;
        let x2 = f.x2.map(|(s, c2)| (s.buffer(), c2));
        let up = if f.upsample { 2 } else { 1 };
        // statistics of the stored input: upsampling repeats each value four times
        let stats = match f.norm {
            Some(n) => Some(norm::group_norm_stats(
                &self.buf,
                x2,
                (g.n, g.ci, (g.h / up) * (g.w / up)),
                n.groups,
                n.eps,
            )?),
            None => None,
        };
        let norm = match (f.norm, stats.as_ref()) {
            (Some(n), Some(stats)) => Some(NormOnLoad {
                stats,
                gamma: &n.gamma.buf,
                beta: &n.beta.buf,
                groups: n.groups,
            }),
            _ => None,
        };
        let input = ConvInput {
            x: &self.buf,
            x2,
            upsample: f.upsample,
            norm,
            silu: f.silu,
        };
        let epi = ConvEpilogue {
            bias: f.bias.map(|b| b.buffer()),
            temb: f.temb.map(|t| t.buffer()),
            residual: f.residual.map(|r| r.buffer()),
            scale: f.scale,
        };
        let y = self.wrap(conv::conv2d(&input, &f.w.buf, g, &epi, precision())?);
        let shortcut = match f.shortcut {
            Some((w, b)) => {
                let raw = ConvInput {
                    norm: None,
                    silu: false,
                    ..input
                };
                let epi = ConvEpilogue {
                    bias: b.map(|b| b.buffer()),
                    ..ConvEpilogue::NONE
                };
                let sg = super::shortcut_geom(g, w.len());
                Some(self.wrap(conv::conv2d(&raw, &w.buf, &sg, &epi, precision())?))
            }
            None => None,
        };
        Ok((y, shortcut))
    }
    fn conv2d_backward(
        &self,
        w: &Self,
        dy: &Self,
        g: &ConvGeom,
        need_dx: bool,
    ) -> Result<(Option<Self>, Self, Self)> {
        let (dx, dw, db) =
            conv::conv2d_backward(&self.buf, &w.buf, &dy.buf, g, need_dx, precision())?;
        Ok((dx.map(|b| self.wrap(b)), self.wrap(dw), self.wrap(db)))
    }
    fn matmul(&self, b: &Self, g: &MatmulGeom) -> Result<Self> {
        let c = gemm::matmul(&self.buf, &b.buf, g, Epilogue::NONE, precision())?;
        Ok(self.wrap(c))
    }
    fn linear(&self, w: &Self, b: Option<&Self>, m: usize, k: usize, n: usize) -> Result<Self> {
        let y = gemm::linear(
            &self.buf,
            &w.buf,
            b.map(|b| b.buffer()),
            (m, k, n),
            precision(),
        )?;
        Ok(self.wrap(y))
    }
    fn tokens_linear(
        &self,
        norm: Option<FusedNorm<Self>>,
        projections: &[(&Self, Option<&Self>)],
        (n, c, l, cout): (usize, usize, usize, usize),
    ) -> Result<Vec<Self>> {
        let stats = match norm {
            Some(f) => Some(norm::group_norm_stats(
                &self.buf,
                None,
                (n, c, l),
                f.groups,
                f.eps,
            )?),
            None => None,
        };
        let norm_on_load = match (norm, stats.as_ref()) {
            (Some(f), Some(stats)) => Some(NormOnLoad {
                stats,
                gamma: &f.gamma.buf,
                beta: &f.beta.buf,
                groups: f.groups,
            }),
            _ => None,
        };
        // the images (n, c, l) as tokens (n, l, c), normalised: read once for every projection
        let packing = gemm::Packing {
            batch: n,
            rows: l,
            k: c,
            width: c,
            stride: c * l,
            trans: true,
        };
        let tokens = gemm::pack(&self.buf, &packing, norm_on_load)?;
        // per image: (l × c) times wᵀ, w shared
        let layout = gemm::Layout {
            batch: n,
            m: l,
            n: cout,
            k: c,
            a_trans: false,
            b_trans: true,
            stride_a: l * c,
            stride_b: 0,
            rows_are_samples: false,
        };
        projections
            .iter()
            .map(|&(w, b)| {
                let epi = Epilogue {
                    bias: b.map(|b| b.buffer()),
                    ..Epilogue::NONE
                };
                Ok(self.wrap(gemm::strided(&tokens, &w.buf, &layout, epi, precision())?))
            })
            .collect()
    }
    fn linear_to_channels(
        &self,
        w: &Self,
        b: Option<&Self>,
        residual: Option<&Self>,
        scale: f32,
        (n, l, c, cout): (usize, usize, usize, usize),
    ) -> Result<Self> {
        // per image: (cout × l) = w · tokensᵀ, the bias per row, the residual in the epilogue
        let layout = gemm::Layout {
            batch: n,
            m: cout,
            n: l,
            k: c,
            a_trans: false,
            b_trans: true,
            stride_a: 0,
            stride_b: l * c,
            rows_are_samples: false,
        };
        let epi = Epilogue {
            bias: b.map(|b| b.buffer()),
            bias_per_row: true,
            scale,
            residual: residual.map(|r| r.buffer()),
        };
        Ok(self.wrap(gemm::strided(&w.buf, &self.buf, &layout, epi, precision())?))
    }
    fn sum_rows(&self, rows: usize, cols: usize) -> Result<Self> {
        Ok(self.wrap(norm::reduce_channels(&self.buf, (rows, cols, 1))?))
    }
    fn group_norm(&self, gamma: &Self, beta: &Self, g: &NormGeom) -> Result<(Self, Self)> {
        let (y, stats) = norm::group_norm(&self.buf, &gamma.buf, &beta.buf, g)?;
        Ok((self.wrap(y), self.wrap(stats)))
    }
    fn group_norm_backward(
        &self,
        gamma: &Self,
        stats: &Self,
        dy: &Self,
        g: &NormGeom,
    ) -> Result<(Self, Self, Self)> {
        let (dx, dgamma, dbeta) =
            norm::group_norm_backward(&self.buf, &gamma.buf, &stats.buf, &dy.buf, g)?;
        Ok((self.wrap(dx), self.wrap(dgamma), self.wrap(dbeta)))
    }
    fn silu(&self) -> Result<Self> {
        Ok(self.wrap(elementwise::silu(&self.buf)?))
    }
    fn silu_backward(&self, dy: &Self) -> Result<Self> {
        Ok(self.wrap(elementwise::silu_backward(&self.buf, &dy.buf)?))
    }
    fn attention(&self, k: &Self, v: &Self, g: &AttnGeom) -> Result<Self> {
        Ok(self.wrap(attention::attention(&self.buf, &k.buf, &v.buf, g)?))
    }
    fn attention_for_training(
        &self,
        k: &Self,
        v: &Self,
        g: &AttnGeom,
    ) -> Result<(Self, Option<Self>)> {
        let (out, lse) = attention::attention_with_lse(&self.buf, &k.buf, &v.buf, g)?;
        Ok((self.wrap(out), Some(self.wrap(lse))))
    }
    fn attention_backward(
        &self,
        k: &Self,
        v: &Self,
        dout: &Self,
        saved: Option<(&Self, &Self)>,
        g: &AttnGeom,
    ) -> Result<(Self, Self, Self)> {
        let saved = saved.map(|(o, l)| (o.buffer(), l.buffer()));
        let (dq, dk, dv) =
            attention::attention_backward(&self.buf, &k.buf, &v.buf, &dout.buf, saved, g)?;
        Ok((self.wrap(dq), self.wrap(dk), self.wrap(dv)))
    }
    fn upsample_nearest2x(&self, nc: usize, h: usize, w: usize) -> Result<Self> {
        Ok(self.wrap(elementwise::upsample_nearest2x(&self.buf, (nc, h, w))?))
    }
    fn upsample_nearest2x_backward(&self, nc: usize, h: usize, w: usize) -> Result<Self> {
        Ok(self.wrap(elementwise::upsample_nearest2x_backward(
            &self.buf,
            (nc, h, w),
        )?))
    }
    fn binary(&self, rhs: &Self, op: BinaryOp) -> Result<Self> {
        Ok(self.wrap(elementwise::binary(&self.buf, &rhs.buf, op)?))
    }
    fn affine(&self, mul: f32, add: f32) -> Result<Self> {
        Ok(self.wrap(elementwise::affine(&self.buf, mul, add)?))
    }
    fn add_channel_bias(&self, b: &Self, n: usize, c: usize, hw: usize) -> Result<Self> {
        Ok(self.wrap(elementwise::add_channel_bias(
            &self.buf,
            &b.buf,
            (n, c, hw),
        )?))
    }
    fn transpose12(&self, n: usize, a: usize, b: usize) -> Result<Self> {
        Ok(self.wrap(elementwise::transpose12(&self.buf, (n, a, b))?))
    }
    fn concat_channels(parts: &[&Self], n: usize, cs: &[usize], hw: usize) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(Error::shape("concat_channels", "no parts"));
        };
        let bufs: Vec<&Buffer> = parts.iter().map(|p| p.buffer()).collect();
        Ok(first.wrap(elementwise::concat_channels(&bufs, n, cs, hw)?))
    }
    fn slice_channels(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        start: usize,
        end: usize,
    ) -> Result<Self> {
        Ok(self.wrap(elementwise::slice_channels(
            &self.buf,
            (n, c, hw),
            start,
            end,
        )?))
    }
    fn slice_channels_backward(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        start: usize,
        end: usize,
    ) -> Result<Self> {
        Ok(self.wrap(elementwise::slice_channels_backward(
            &self.buf,
            (n, c, hw),
            start,
            end,
        )?))
    }
    fn dynamics(&self, g: &SeqGeom, coefs: &[DynCoef], inverse: bool) -> Result<Self> {
        Ok(self.wrap(process::dynamics(&self.buf, g, coefs, inverse)?))
    }
    fn q_sample(&self, eps: &Self, g: &ProcessGeom, coefs: &[QSampleCoef]) -> Result<(Self, Self)> {
        let (input, target) = process::q_sample(&self.buf, &eps.buf, g, coefs)?;
        Ok((self.wrap(input), self.wrap(target)))
    }
    fn ddim_step(
        &self,
        eps_hat: &Self,
        z: Option<&Self>,
        g: &ProcessGeom,
        c: &DdimCoef,
    ) -> Result<Self> {
        let values = process::StepValues::Given {
            coef: c,
            z: z.map(|z| z.buffer()),
        };
        Ok(self.wrap(process::ddim_step(&self.buf, &eps_hat.buf, values, g)?))
    }
    fn ddim_step_drawn(
        &self,
        eps_hat: &Self,
        step: &Self,
        rows: &Self,
        g: &ProcessGeom,
    ) -> Result<Self> {
        let values = process::StepValues::Drawn {
            step: &step.buf,
            rows: &rows.buf,
        };
        Ok(self.wrap(process::ddim_step(&self.buf, &eps_hat.buf, values, g)?))
    }
    fn dropout(&self, rows: &Self, g: &DropoutGeom) -> Result<Self> {
        Ok(self.wrap(process::dropout(&self.buf, &rows.buf, g)?))
    }
    fn loss(&self, target: &Self, kind: LossKind) -> Result<Self> {
        Ok(self.wrap(optim::loss(&self.buf, &target.buf, kind)?))
    }
    fn loss_backward(&self, target: &Self, g: &Self, kind: LossKind) -> Result<Self> {
        Ok(self.wrap(optim::loss_backward(&self.buf, &target.buf, &g.buf, kind)?))
    }
    fn adamw(
        &mut self,
        grads: &[&Self],
        m: &mut Self,
        v: &mut Self,
        ema: &mut Self,
        loss: &Self,
        h: &AdamStep,
    ) -> Result<Self> {
        let g: Vec<&Buffer> = grads.iter().map(|g| g.buffer()).collect();
        let norm = optim::adamw(&self.buf, &g, (&m.buf, &v.buf, &ema.buf), &loss.buf, h)?;
        Ok(self.wrap(norm))
    }
    fn split(&self, lens: &[usize]) -> Result<Vec<Self>> {
        Ok(Buffer::views(&self.buf, lens)?
            .into_iter()
            .map(|b| self.wrap(b))
            .collect())
    }
    fn timestep_embedding(
        &self,
        dim: usize,
        flip_sin_to_cos: bool,
        freq_shift: f32,
    ) -> Result<Self> {
        Ok(self.wrap(elementwise::timestep_embedding(
            &self.buf,
            dim,
            flip_sin_to_cos,
            freq_shift,
        )?))
    }
}

/// What `dydiff info` says about CUDA (docs/devices.md): the architectures of the embedded kernels, then
/// one line per GPU (name, compute capability, memory, driver version) or why there is none.
pub fn info_lines() -> Vec<String> {
    let mut lines = Vec::new();
    if emulated() {
        lines.push(format!(
            "cuda: {EMULATOR_VAR} is set: every cuda:N is the CPU emulator of the kernels (for tests; no GPU is used)"
        ));
    }
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
