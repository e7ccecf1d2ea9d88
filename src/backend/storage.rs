//! Where a tensor lives ([`Device`]) and its data there ([`Storage`]): every operation of
//! [`BackendStorage`] called on a [`Storage`] goes to the backend holding the data, the other
//! operands required to be on the same one (`dispatch!`).

use super::{
    cpu, cuda, AdamStep, AttnGeom, BackendStorage, BinaryOp, ConvGeom, DdimCoef, DropoutGeom,
    DynCoef, FusedConv, FusedNorm, LossKind, MatmulGeom, NormGeom, ProcessGeom, QSampleCoef,
    SeqGeom,
};
use crate::error::{Error, Result};
use crate::rng::{NoiseKey, NoiseRow};

/// Where a tensor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl Device {
    /// A device by name: `cpu` or `cuda[:N]`. A refusal names the flag and the device.
    pub fn parse(name: &str) -> Result<Device> {
        let on_flag = |e: Error| Error::Backend(format!("--device {name}: {e}"));
        match name {
            "cpu" => Ok(Device::Cpu),
            // one GPU per rank of a many-process job, by the node-local rank
            "cuda" => cuda::rank_ordinal()
                .and_then(|n| cuda::check_device(n).map(|_| Device::Cuda(n)))
                .map_err(on_flag),
            s if s.starts_with("cuda:") => {
                let n = s[5..].parse().map_err(|_| {
                    Error::Invalid(format!("--device: expected cpu or cuda:N, found {s}"))
                })?;
                cuda::check_device(n)
                    .map(|_| Device::Cuda(n))
                    .map_err(on_flag)
            }
            s => Err(Error::Invalid(format!(
                "--device: expected cpu or cuda:N, found {s}"
            ))),
        }
    }

    /// Standard normal noise for `rows` (sample, member) pairs of `row_len` values each, a pure
    /// function of the key, the row and the element index (docs/random.md), `(rows, row_len)`.
    pub fn randn(self, key: NoiseKey, rows: &[NoiseRow], row_len: usize) -> Result<Storage> {
        match self {
            Device::Cpu => Ok(Storage::Cpu(cpu::CpuStorage::randn(key, rows, row_len))),
            Device::Cuda(n) => cuda::CudaStorage::randn(n, key, rows, row_len).map(Storage::Cuda),
        }
    }

    /// Waits until everything enqueued on this device has run (the CPU computes synchronously).
    pub fn synchronize(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(n) => cuda::device(n)?.synchronize(),
        }
    }

    /// A storage holding `data` on this device.
    pub fn storage_from_vec(self, data: Vec<f32>) -> Result<Storage> {
        match self {
            Device::Cpu => Ok(Storage::Cpu(cpu::CpuStorage::from_vec(data))),
            Device::Cuda(n) => cuda::CudaStorage::from_vec(n, data).map(Storage::Cuda),
        }
    }
}

/// A tensor's data on one of the backends.
#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(cpu::CpuStorage),
    Cuda(cuda::CudaStorage),
}

fn device_mismatch() -> Error {
    Error::Backend("operands live on different devices".into())
}

/// The backend storage of an optional operand, picked by [`Storage::as_cpu`] or
/// [`Storage::as_cuda`]; an operand on the other device is a mismatch.
fn inner<'a, S>(
    s: Option<&'a Storage>,
    pick: impl Fn(&'a Storage) -> Option<&'a S>,
) -> Result<Option<&'a S>> {
    s.map(|s| pick(s).ok_or_else(device_mismatch)).transpose()
}

/// The backend storages of `parts`, all of which must be on the backend `pick` accepts.
fn all<'a, S>(parts: &[&'a Storage], pick: fn(&'a Storage) -> Option<&'a S>) -> Result<Vec<&'a S>> {
    parts
        .iter()
        .map(|p| pick(p).ok_or_else(device_mismatch))
        .collect()
}

/// Dispatches a method to the backend of `self`; every other storage argument must be on the
/// same backend. `$s` names the receiver's inner storage; the listed arguments are unwrapped
/// the same way (`opt` for `Option<&Storage>`).
macro_rules! dispatch {
    ($self:ident, |$s:ident $(, $a:ident)* $(; opt $o:ident)?| $body:expr, $wrap:expr) => {
        match $self {
            Storage::Cpu($s) => {
                $(let $a = match $a { Storage::Cpu(x) => x, _ => return Err(device_mismatch()) };)*
                $(let $o = match $o { None => None, Some(Storage::Cpu(x)) => Some(x), _ => return Err(device_mismatch()) };)?
                #[allow(clippy::redundant_closure_call)]
                $wrap($body?, Storage::Cpu)
            }
            Storage::Cuda($s) => {
                $(let $a = match $a { Storage::Cuda(x) => x, _ => return Err(device_mismatch()) };)*
                $(let $o = match $o { None => None, Some(Storage::Cuda(x)) => Some(x), _ => return Err(device_mismatch()) };)?
                #[allow(clippy::redundant_closure_call)]
                $wrap($body?, Storage::Cuda)
            }
        }
    };
}

/// A backend's result as a [`Storage`] (`f` its variant): the last argument of `dispatch!`, with
/// [`wrap_pair`] and [`wrap_triple`] for operations returning two or three arrays.
fn wrap_one<T, S>(x: T, f: impl Fn(T) -> S) -> Result<S> {
    Ok(f(x))
}

fn wrap_pair<T, S>(x: (T, T), f: impl Fn(T) -> S) -> Result<(S, S)> {
    Ok((f(x.0), f(x.1)))
}

fn wrap_triple<T, S>(x: (T, T, T), f: impl Fn(T) -> S) -> Result<(S, S, S)> {
    Ok((f(x.0), f(x.1), f(x.2)))
}

impl Storage {
    /// The CPU storage, if the data is there.
    fn as_cpu(&self) -> Option<&cpu::CpuStorage> {
        match self {
            Storage::Cpu(c) => Some(c),
            Storage::Cuda(_) => None,
        }
    }
    /// The CUDA storage, if the data is there.
    fn as_cuda(&self) -> Option<&cuda::CudaStorage> {
        match self {
            Storage::Cuda(c) => Some(c),
            Storage::Cpu(_) => None,
        }
    }
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => Device::Cuda(s.ordinal()),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// This array summed over every rank of the job, element by element (a collective, called by
    /// every rank at the same point; docs/distributed.md); in a process of its own, itself.
    pub fn sum_over_ranks(&self) -> Result<Storage> {
        if crate::distributed::world().size() == 1 {
            return Ok(self.clone());
        }
        match self {
            Storage::Cpu(s) => crate::distributed::world()
                .sum_f32(s.as_slice())
                .map(|v| Storage::Cpu(cpu::CpuStorage::from_vec(v))),
            Storage::Cuda(s) => s.sum_over_ranks().map(Storage::Cuda),
        }
    }
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match self {
            Storage::Cpu(s) => s.to_vec(),
            Storage::Cuda(s) => s.to_vec(),
        }
    }
    pub fn conv2d(&self, w: &Storage, b: Option<&Storage>, g: &ConvGeom) -> Result<Storage> {
        dispatch!(self, |s, w; opt b| s.conv2d(w, b, g), wrap_one)
    }
    pub fn tokens_linear(
        &self,
        norm: Option<FusedNorm<Storage>>,
        projections: &[(&Storage, Option<&Storage>)],
        dims: (usize, usize, usize, usize),
    ) -> Result<Vec<Storage>> {
        /// The operands on one backend, or a device mismatch.
        #[allow(clippy::type_complexity)]
        fn unwrap<'a, S>(
            norm: Option<FusedNorm<'a, Storage>>,
            projections: &[(&'a Storage, Option<&'a Storage>)],
            pick: impl Fn(&'a Storage) -> Option<&'a S>,
        ) -> Result<(Option<FusedNorm<'a, S>>, Vec<(&'a S, Option<&'a S>)>)> {
            let same = |s: &'a Storage| pick(s).ok_or_else(device_mismatch);
            let norm = match norm {
                Some(n) => Some(FusedNorm {
                    gamma: same(n.gamma)?,
                    beta: same(n.beta)?,
                    groups: n.groups,
                    eps: n.eps,
                }),
                None => None,
            };
            let mut p = Vec::with_capacity(projections.len());
            for &(w, b) in projections {
                p.push((same(w)?, inner(b, &pick)?));
            }
            Ok((norm, p))
        }
        match self {
            Storage::Cpu(x) => {
                let (norm, p) = unwrap(norm, projections, Storage::as_cpu)?;
                Ok(x.tokens_linear(norm, &p, dims)?
                    .into_iter()
                    .map(Storage::Cpu)
                    .collect())
            }
            Storage::Cuda(x) => {
                let (norm, p) = unwrap(norm, projections, Storage::as_cuda)?;
                Ok(x.tokens_linear(norm, &p, dims)?
                    .into_iter()
                    .map(Storage::Cuda)
                    .collect())
            }
        }
    }
    pub fn linear_to_channels(
        &self,
        w: &Storage,
        b: Option<&Storage>,
        residual: Option<&Storage>,
        scale: f32,
        dims: (usize, usize, usize, usize),
    ) -> Result<Storage> {
        match (self, w) {
            (Storage::Cpu(x), Storage::Cpu(w)) => Ok(Storage::Cpu(x.linear_to_channels(
                w,
                inner(b, Storage::as_cpu)?,
                inner(residual, Storage::as_cpu)?,
                scale,
                dims,
            )?)),
            (Storage::Cuda(x), Storage::Cuda(w)) => Ok(Storage::Cuda(x.linear_to_channels(
                w,
                inner(b, Storage::as_cuda)?,
                inner(residual, Storage::as_cuda)?,
                scale,
                dims,
            )?)),
            _ => Err(device_mismatch()),
        }
    }
    pub fn conv2d_fused(&self, f: &FusedConv<Storage>) -> Result<(Storage, Option<Storage>)> {
        /// The inner storage of `S` in every operand of `f`, or a device mismatch.
        fn unwrap<'a, S>(
            f: &FusedConv<'a, Storage>,
            pick: impl Fn(&'a Storage) -> Option<&'a S>,
        ) -> Result<FusedConv<'a, S>> {
            let same = |s: &'a Storage| pick(s).ok_or_else(device_mismatch);
            let opt = |s: Option<&'a Storage>| inner(s, &pick);
            Ok(FusedConv {
                geom: f.geom,
                x2: match f.x2 {
                    Some((s, c2)) => Some((same(s)?, c2)),
                    None => None,
                },
                upsample: f.upsample,
                shortcut: match f.shortcut {
                    Some((w, b)) => Some((same(w)?, opt(b)?)),
                    None => None,
                },
                norm: match f.norm {
                    Some(n) => Some(FusedNorm {
                        gamma: same(n.gamma)?,
                        beta: same(n.beta)?,
                        groups: n.groups,
                        eps: n.eps,
                    }),
                    None => None,
                },
                silu: f.silu,
                w: same(f.w)?,
                bias: opt(f.bias)?,
                temb: opt(f.temb)?,
                residual: opt(f.residual)?,
                scale: f.scale,
            })
        }
        match self {
            Storage::Cpu(x) => {
                let g = unwrap(f, Storage::as_cpu)?;
                let (y, s) = x.conv2d_fused(&g)?;
                Ok((Storage::Cpu(y), s.map(Storage::Cpu)))
            }
            Storage::Cuda(x) => {
                let g = unwrap(f, Storage::as_cuda)?;
                let (y, s) = x.conv2d_fused(&g)?;
                Ok((Storage::Cuda(y), s.map(Storage::Cuda)))
            }
        }
    }
    pub fn conv2d_backward(
        &self,
        w: &Storage,
        dy: &Storage,
        g: &ConvGeom,
        need_dx: bool,
    ) -> Result<(Option<Storage>, Storage, Storage)> {
        match (self, w, dy) {
            (Storage::Cpu(x), Storage::Cpu(w), Storage::Cpu(dy)) => {
                let (dx, dw, db) = x.conv2d_backward(w, dy, g, need_dx)?;
                Ok((dx.map(Storage::Cpu), Storage::Cpu(dw), Storage::Cpu(db)))
            }
            (Storage::Cuda(x), Storage::Cuda(w), Storage::Cuda(dy)) => {
                let (dx, dw, db) = x.conv2d_backward(w, dy, g, need_dx)?;
                Ok((dx.map(Storage::Cuda), Storage::Cuda(dw), Storage::Cuda(db)))
            }
            _ => Err(device_mismatch()),
        }
    }
    pub fn matmul(&self, b: &Storage, g: &MatmulGeom) -> Result<Storage> {
        dispatch!(self, |s, b| s.matmul(b, g), wrap_one)
    }
    pub fn linear(
        &self,
        w: &Storage,
        b: Option<&Storage>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<Storage> {
        dispatch!(self, |s, w; opt b| s.linear(w, b, m, k, n), wrap_one)
    }
    pub fn sum_rows(&self, rows: usize, cols: usize) -> Result<Storage> {
        dispatch!(self, |s| s.sum_rows(rows, cols), wrap_one)
    }
    pub fn group_norm(
        &self,
        gamma: &Storage,
        beta: &Storage,
        g: &NormGeom,
    ) -> Result<(Storage, Storage)> {
        dispatch!(
            self,
            |s, gamma, beta| s.group_norm(gamma, beta, g),
            wrap_pair
        )
    }
    pub fn group_norm_backward(
        &self,
        gamma: &Storage,
        stats: &Storage,
        dy: &Storage,
        g: &NormGeom,
    ) -> Result<(Storage, Storage, Storage)> {
        dispatch!(
            self,
            |s, gamma, stats, dy| s.group_norm_backward(gamma, stats, dy, g),
            wrap_triple
        )
    }
    pub fn silu(&self) -> Result<Storage> {
        dispatch!(self, |s| s.silu(), wrap_one)
    }
    pub fn silu_backward(&self, dy: &Storage) -> Result<Storage> {
        dispatch!(self, |s, dy| s.silu_backward(dy), wrap_one)
    }
    pub fn attention(&self, k: &Storage, v: &Storage, g: &AttnGeom) -> Result<Storage> {
        dispatch!(self, |s, k, v| s.attention(k, v, g), wrap_one)
    }
    pub fn attention_for_training(
        &self,
        k: &Storage,
        v: &Storage,
        g: &AttnGeom,
    ) -> Result<(Storage, Option<Storage>)> {
        match (self, k, v) {
            (Storage::Cpu(q), Storage::Cpu(k), Storage::Cpu(v)) => {
                let (o, s) = q.attention_for_training(k, v, g)?;
                Ok((Storage::Cpu(o), s.map(Storage::Cpu)))
            }
            (Storage::Cuda(q), Storage::Cuda(k), Storage::Cuda(v)) => {
                let (o, s) = q.attention_for_training(k, v, g)?;
                Ok((Storage::Cuda(o), s.map(Storage::Cuda)))
            }
            _ => Err(device_mismatch()),
        }
    }
    pub fn attention_backward(
        &self,
        k: &Storage,
        v: &Storage,
        dout: &Storage,
        saved: Option<(&Storage, &Storage)>,
        g: &AttnGeom,
    ) -> Result<(Storage, Storage, Storage)> {
        fn pair<'a, S>(
            saved: Option<(&'a Storage, &'a Storage)>,
            pick: fn(&'a Storage) -> Option<&'a S>,
        ) -> Result<Option<(&'a S, &'a S)>> {
            saved
                .map(|(o, l)| match (pick(o), pick(l)) {
                    (Some(o), Some(l)) => Ok((o, l)),
                    _ => Err(device_mismatch()),
                })
                .transpose()
        }
        match (self, k, v, dout) {
            (Storage::Cpu(q), Storage::Cpu(k), Storage::Cpu(v), Storage::Cpu(d)) => {
                let (a, b, c) = q.attention_backward(k, v, d, pair(saved, Storage::as_cpu)?, g)?;
                Ok((Storage::Cpu(a), Storage::Cpu(b), Storage::Cpu(c)))
            }
            (Storage::Cuda(q), Storage::Cuda(k), Storage::Cuda(v), Storage::Cuda(d)) => {
                let (a, b, c) = q.attention_backward(k, v, d, pair(saved, Storage::as_cuda)?, g)?;
                Ok((Storage::Cuda(a), Storage::Cuda(b), Storage::Cuda(c)))
            }
            _ => Err(device_mismatch()),
        }
    }
    pub fn upsample_nearest2x(&self, nc: usize, h: usize, w: usize) -> Result<Storage> {
        dispatch!(self, |s| s.upsample_nearest2x(nc, h, w), wrap_one)
    }
    pub fn upsample_nearest2x_backward(&self, nc: usize, h: usize, w: usize) -> Result<Storage> {
        dispatch!(self, |s| s.upsample_nearest2x_backward(nc, h, w), wrap_one)
    }
    pub fn binary(&self, rhs: &Storage, op: BinaryOp) -> Result<Storage> {
        dispatch!(self, |s, rhs| s.binary(rhs, op), wrap_one)
    }
    pub fn affine(&self, mul: f32, add: f32) -> Result<Storage> {
        dispatch!(self, |s| s.affine(mul, add), wrap_one)
    }
    pub fn add_channel_bias(&self, b: &Storage, n: usize, c: usize, hw: usize) -> Result<Storage> {
        dispatch!(self, |s, b| s.add_channel_bias(b, n, c, hw), wrap_one)
    }
    pub fn transpose12(&self, n: usize, a: usize, b: usize) -> Result<Storage> {
        dispatch!(self, |s| s.transpose12(n, a, b), wrap_one)
    }
    pub fn concat_channels(
        parts: &[&Storage],
        n: usize,
        cs: &[usize],
        hw: usize,
    ) -> Result<Storage> {
        match parts.first() {
            Some(Storage::Cpu(_)) => {
                let ps = all(parts, Storage::as_cpu)?;
                cpu::CpuStorage::concat_channels(&ps, n, cs, hw).map(Storage::Cpu)
            }
            Some(Storage::Cuda(_)) => {
                let ps = all(parts, Storage::as_cuda)?;
                cuda::CudaStorage::concat_channels(&ps, n, cs, hw).map(Storage::Cuda)
            }
            None => Err(Error::shape("concat", "nothing to concatenate")),
        }
    }
    pub fn slice_channels(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        start: usize,
        end: usize,
    ) -> Result<Storage> {
        dispatch!(self, |s| s.slice_channels(n, c, hw, start, end), wrap_one)
    }
    pub fn slice_channels_backward(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        start: usize,
        end: usize,
    ) -> Result<Storage> {
        dispatch!(
            self,
            |s| s.slice_channels_backward(n, c, hw, start, end),
            wrap_one
        )
    }
    pub fn dynamics(&self, g: &SeqGeom, coefs: &[DynCoef], inverse: bool) -> Result<Storage> {
        dispatch!(self, |s| s.dynamics(g, coefs, inverse), wrap_one)
    }
    pub fn q_sample(
        &self,
        eps: &Storage,
        g: &ProcessGeom,
        coefs: &[QSampleCoef],
    ) -> Result<(Storage, Storage)> {
        dispatch!(self, |s, eps| s.q_sample(eps, g, coefs), wrap_pair)
    }
    pub fn ddim_step(
        &self,
        eps_hat: &Storage,
        z: Option<&Storage>,
        g: &ProcessGeom,
        c: &DdimCoef,
    ) -> Result<Storage> {
        dispatch!(self, |s, eps_hat; opt z| s.ddim_step(eps_hat, z, g, c), wrap_one)
    }
    pub fn ddim_step_drawn(
        &self,
        eps_hat: &Storage,
        step: &Storage,
        rows: &Storage,
        g: &ProcessGeom,
    ) -> Result<Storage> {
        dispatch!(
            self,
            |s, eps_hat, step, rows| s.ddim_step_drawn(eps_hat, step, rows, g),
            wrap_one
        )
    }
    pub fn dropout(&self, rows: &Storage, g: &DropoutGeom) -> Result<Storage> {
        dispatch!(self, |s, rows| s.dropout(rows, g), wrap_one)
    }
    pub fn loss(&self, target: &Storage, kind: LossKind) -> Result<Storage> {
        dispatch!(self, |s, target| s.loss(target, kind), wrap_one)
    }
    pub fn loss_backward(&self, target: &Storage, g: &Storage, kind: LossKind) -> Result<Storage> {
        dispatch!(
            self,
            |s, target, g| s.loss_backward(target, g, kind),
            wrap_one
        )
    }
    pub fn adamw(
        &mut self,
        grads: &[&Storage],
        m: &mut Storage,
        v: &mut Storage,
        ema: &mut Storage,
        loss: &Storage,
        h: &AdamStep,
    ) -> Result<Storage> {
        match (self, m, v, ema, loss) {
            (
                Storage::Cpu(p),
                Storage::Cpu(m),
                Storage::Cpu(v),
                Storage::Cpu(e),
                Storage::Cpu(l),
            ) => {
                let g = all(grads, Storage::as_cpu)?;
                Ok(Storage::Cpu(p.adamw(&g, m, v, e, l, h)?))
            }
            (
                Storage::Cuda(p),
                Storage::Cuda(m),
                Storage::Cuda(v),
                Storage::Cuda(e),
                Storage::Cuda(l),
            ) => {
                let g = all(grads, Storage::as_cuda)?;
                Ok(Storage::Cuda(p.adamw(&g, m, v, e, l, h)?))
            }
            _ => Err(device_mismatch()),
        }
    }
    pub fn split(&self, lens: &[usize]) -> Result<Vec<Storage>> {
        match self {
            Storage::Cpu(s) => Ok(s.split(lens)?.into_iter().map(Storage::Cpu).collect()),
            Storage::Cuda(s) => Ok(s.split(lens)?.into_iter().map(Storage::Cuda).collect()),
        }
    }
    pub fn timestep_embedding(
        &self,
        dim: usize,
        flip_sin_to_cos: bool,
        freq_shift: f32,
    ) -> Result<Storage> {
        dispatch!(
            self,
            |s| s.timestep_embedding(dim, flip_sin_to_cos, freq_shift),
            wrap_one
        )
    }
}
