//! `Tensor`: an immutable, reference-counted f32 array on a [`Device`], with the op set.
//!
//! Operations check shapes, call the backend through [`Storage`], and, while an
//! [`autograd::Tape`] records on this thread and an input takes part in a gradient, append one
//! node to the tape. Code here never asks which backend it is on.

pub mod autograd;
pub mod graph;
pub mod step;

use crate::backend::{
    AttnGeom, BinaryOp, ConvGeom, Device, DropoutGeom, FusedConv, FusedNorm, LossKind, NormGeom,
    PadMode, Storage,
};
use crate::error::{Error, Result};
use crate::rng::{NoiseKey, NoiseRow};
use autograd::Op;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Inner {
    id: u64,
    storage: Arc<Storage>,
    shape: Vec<usize>,
    /// A gradient flows to this tensor (a parameter, or computed from one under a tape).
    tracked: bool,
    /// For parameters: the accumulated gradient.
    grad: Option<Mutex<Option<Storage>>>,
}

/// What [`Tensor::conv2d_fused`] applies around the convolution: a concatenated second input,
/// 2× upsampling, a group norm of the input (`gamma`, `beta`, groups, eps) and SiLU before it; a
/// per-(sample, channel) time embedding, a residual and an output scale after it.
#[derive(Clone, Copy, Debug)]
pub struct ConvTail<'a> {
    /// A second input concatenated after `self` along channels (an up block's skip).
    pub skip: Option<&'a Tensor>,
    /// Nearest 2× upsampling of the (concatenated) input first.
    pub upsample: bool,
    /// A 1×1 convolution `(weights, bias)` of the same input before the norm, returned too.
    pub shortcut: Option<(&'a Tensor, Option<&'a Tensor>)>,
    pub norm: Option<(&'a Tensor, &'a Tensor, usize, f32)>,
    pub silu: bool,
    pub temb: Option<&'a Tensor>,
    pub residual: Option<&'a Tensor>,
    pub scale: f32,
}

impl ConvTail<'_> {
    /// Nothing around the convolution: a plain convolution with bias.
    pub const NONE: ConvTail<'static> = ConvTail {
        skip: None,
        upsample: false,
        shortcut: None,
        norm: None,
        silu: false,
        temb: None,
        residual: None,
        scale: 1.0,
    };
}

/// An f32 array. Cloning is cheap (shared data).
#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}@{:?}", self.0.shape, self.device())
    }
}

/// Refuses circular padding wider than the image (PyTorch's limit: one wrap around at most).
fn check_circular(g: &ConvGeom, op: &'static str) -> Result<()> {
    if g.circular() && (g.pad[0].max(g.pad[1]) > g.h || g.pad[2].max(g.pad[3]) > g.w) {
        return Err(Error::shape(
            op,
            format!(
                "circular padding {:?} wider than the {}×{} image",
                g.pad, g.h, g.w
            ),
        ));
    }
    Ok(())
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The group norm `(γ, β, groups, ε)` a fused operation applies to its input.
fn fused_norm<'a>(
    gamma: &'a Tensor,
    beta: &'a Tensor,
    groups: usize,
    eps: f32,
) -> FusedNorm<'a, Storage> {
    FusedNorm {
        gamma: gamma.storage(),
        beta: beta.storage(),
        groups,
        eps,
    }
}

impl Tensor {
    fn make(storage: Storage, shape: Vec<usize>, tracked: bool, param: bool) -> Tensor {
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            storage: Arc::new(storage),
            shape,
            tracked,
            grad: param.then(|| Mutex::new(None)),
        }))
    }

    /// A tensor of `shape` on `storage`, checking that the sizes agree (`op` names the caller
    /// in the error); a parameter if `param`.
    fn on_storage(
        storage: Storage,
        shape: &[usize],
        param: bool,
        op: &'static str,
    ) -> Result<Tensor> {
        if storage.len() != numel(shape) {
            return Err(Error::shape(
                op,
                format!("{} values for shape {shape:?}", storage.len()),
            ));
        }
        Ok(Tensor::make(storage, shape.to_vec(), param, param))
    }

    /// A constant tensor from `data` (row-major) of `shape` on `device`.
    pub fn from_vec(data: Vec<f32>, shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::on_storage(device.storage_from_vec(data)?, shape, false, "from_vec")
    }

    /// A trainable parameter: gradients flow to it and accumulate in [`Tensor::grad`].
    pub fn param(data: Vec<f32>, shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::on_storage(device.storage_from_vec(data)?, shape, true, "param")
    }

    /// A trainable parameter on an existing storage.
    pub fn param_from_storage(storage: Storage, shape: &[usize]) -> Result<Tensor> {
        Tensor::on_storage(storage, shape, true, "param")
    }

    /// A constant tensor of `shape` on an existing storage (the result of an operation that no
    /// gradient flows through).
    pub(crate) fn from_storage(storage: Storage, shape: &[usize]) -> Result<Tensor> {
        Tensor::on_storage(storage, shape, false, "from_storage")
    }

    /// Standard normal noise of `shape = (rows.len(), …)`, a pure function of the key, the row
    /// and the element index (docs/random.md).
    pub fn randn(
        key: NoiseKey,
        rows: &[NoiseRow],
        shape: &[usize],
        device: Device,
    ) -> Result<Tensor> {
        if shape.first() != Some(&rows.len()) {
            return Err(Error::shape(
                "randn",
                format!("{} noise rows for shape {shape:?}", rows.len()),
            ));
        }
        let row_len = numel(&shape[1..]);
        Tensor::from_storage(device.randn(key, rows, row_len)?, shape)
    }

    pub fn zeros(shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::from_vec(vec![0.0; numel(shape)], shape, device)
    }

    /// Whether an operation on `inputs` goes on the tape: a tape records and one input is tracked.
    pub(crate) fn recorded(inputs: &[&Tensor]) -> bool {
        autograd::is_recording() && inputs.iter().any(|t| t.0.tracked)
    }

    /// The result of an operation on `inputs`: recorded on the tape when one of them is tracked.
    fn result(
        storage: Storage,
        shape: Vec<usize>,
        inputs: &[&Tensor],
        op: impl FnOnce() -> Op,
    ) -> Tensor {
        let tracked = Tensor::recorded(inputs);
        let out = Tensor::make(storage, shape, tracked, false);
        if tracked {
            autograd::record(&out, inputs.iter().map(|t| (*t).clone()).collect(), op());
        }
        out
    }

    pub(crate) fn id(&self) -> u64 {
        self.0.id
    }
    pub(crate) fn is_tracked(&self) -> bool {
        self.0.tracked
    }
    pub fn is_param(&self) -> bool {
        self.0.grad.is_some()
    }
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    pub fn elem_count(&self) -> usize {
        numel(&self.0.shape)
    }
    pub fn device(&self) -> Device {
        self.0.storage.device()
    }
    pub fn storage(&self) -> &Storage {
        &self.0.storage
    }
    /// The data, copied to host memory.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.0.storage.to_vec()
    }
    /// The single value of a one-element tensor.
    pub fn scalar(&self) -> Result<f32> {
        match self.to_vec()?.as_slice() {
            [v] => Ok(*v),
            _ => Err(Error::shape(
                "scalar",
                format!("shape {:?} has more than one element", self.shape()),
            )),
        }
    }

    /// The accumulated gradient of a parameter, if any backward pass reached it.
    pub fn grad(&self) -> Option<Tensor> {
        let cell = self.0.grad.as_ref()?;
        let g = cell.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref()
            .map(|s| Tensor::make(s.clone(), self.0.shape.clone(), false, false))
    }
    /// Forgets the accumulated gradient.
    pub fn zero_grad(&self) {
        if let Some(cell) = &self.0.grad {
            *cell.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
    /// `grad += g` (parameters only).
    pub(crate) fn accumulate_grad(&self, g: Storage) -> Result<()> {
        if let Some(cell) = &self.0.grad {
            let mut slot = cell.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(match slot.take() {
                None => g,
                Some(old) => old.binary(&g, BinaryOp::Add)?,
            });
        }
        Ok(())
    }

    fn dims4(&self, op: &'static str) -> Result<(usize, usize, usize, usize)> {
        match *self.shape() {
            [n, c, h, w] => Ok((n, c, h, w)),
            ref s => Err(Error::shape(
                op,
                format!("expected a 4-d (N, C, H, W) tensor, found shape {s:?}"),
            )),
        }
    }

    fn same_shape(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if self.shape() != other.shape() {
            return Err(Error::shape(
                op,
                format!("{:?} vs {:?}", self.shape(), other.shape()),
            ));
        }
        Ok(())
    }

    /// The same data seen with another shape of equal size.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.elem_count() {
            return Err(Error::shape(
                "reshape",
                format!("{:?} to {shape:?}", self.shape()),
            ));
        }
        let tracked = Tensor::recorded(&[self]);
        let out = Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            storage: self.0.storage.clone(),
            shape: shape.to_vec(),
            tracked,
            grad: None,
        }));
        if tracked {
            autograd::record(&out, vec![self.clone()], Op::Reshape);
        }
        Ok(out)
    }

    /// 2-D convolution (cross-correlation) of NCHW `self` with an OIHW square kernel `w`,
    /// optional bias, `stride`, and padding `[top, bottom, left, right]` of zeros or, with
    /// [`PadMode::Circular`], of the image wrapped around (each side's padding at most the
    /// image's size on that axis).
    pub fn conv2d(
        &self,
        w: &Tensor,
        b: Option<&Tensor>,
        stride: usize,
        pad: [usize; 4],
        pad_mode: PadMode,
    ) -> Result<Tensor> {
        let (n, ci, h, wd) = self.dims4("conv2d")?;
        let (co, wci, k, k2) = w.dims4("conv2d weight")?;
        if wci != ci || k != k2 || stride == 0 {
            return Err(Error::shape(
                "conv2d",
                format!("input {:?} with weight {:?}", self.shape(), w.shape()),
            ));
        }
        if let Some(b) = b {
            if b.shape() != [co] {
                return Err(Error::shape(
                    "conv2d",
                    format!("bias {:?} for {co} output channels", b.shape()),
                ));
            }
        }
        if h + pad[0] + pad[1] < k || wd + pad[2] + pad[3] < k {
            return Err(Error::shape(
                "conv2d",
                format!("input {h}×{wd} smaller than kernel {k}"),
            ));
        }
        let g = ConvGeom {
            n,
            ci,
            h,
            w: wd,
            co,
            k,
            stride,
            pad,
            pad_mode,
        };
        check_circular(&g, "conv2d")?;
        let y = self
            .storage()
            .conv2d(w.storage(), b.map(|b| b.storage()), &g)?;
        let mut inputs = vec![self, w];
        inputs.extend(b);
        Ok(Tensor::result(
            y,
            vec![n, co, g.ho(), g.wo()],
            &inputs,
            || Op::Conv2d { g },
        ))
    }

    /// The convolution of a resnet block with its surroundings, as one backend operation
    /// ([`crate::backend::FusedConv`]): `(conv(act(norm(self)), w) + b + temb[n, co] + residual)
    /// · scale`. Inference only: `None` when an operand is on a recording tape (the caller then
    /// composes the unfused operations, which have gradients).
    pub fn conv2d_fused(
        &self,
        w: &Tensor,
        b: Option<&Tensor>,
        (stride, pad, pad_mode): (usize, [usize; 4], PadMode),
        tail: &ConvTail,
    ) -> Result<Option<(Tensor, Option<Tensor>)>> {
        let mut all: Vec<&Tensor> = vec![self, w];
        all.extend(b);
        all.extend(tail.skip);
        if let Some((sw, sb)) = tail.shortcut {
            all.push(sw);
            all.extend(sb);
        }
        all.extend(tail.temb);
        all.extend(tail.residual);
        if let Some((gamma, beta, _, _)) = tail.norm {
            all.extend([gamma, beta]);
        }
        if Tensor::recorded(&all) {
            return Ok(None);
        }
        let (n, c1, h0, w0) = self.dims4("conv2d_fused")?;
        let c2 = match tail.skip {
            Some(s) => match *s.shape() {
                [sn, c2, sh, sw] if (sn, sh, sw) == (n, h0, w0) => c2,
                ref shape => {
                    return Err(Error::shape(
                        "conv2d_fused",
                        format!("skip {shape:?} for input {:?}", self.shape()),
                    ))
                }
            },
            None => 0,
        };
        let up = if tail.upsample { 2 } else { 1 };
        let g = ConvGeom {
            n,
            ci: c1 + c2,
            h: h0 * up,
            w: w0 * up,
            co: w.shape().first().copied().unwrap_or(0),
            k: w.shape().get(2).copied().unwrap_or(0),
            stride,
            pad,
            pad_mode,
        };
        check_circular(&g, "conv2d_fused")?;
        if w.shape() != [g.co, g.ci, g.k, g.k]
            || stride == 0
            || b.is_some_and(|b| b.shape() != [g.co])
            || g.h + pad[0] + pad[1] < g.k
            || g.w + pad[2] + pad[3] < g.k
        {
            return Err(Error::shape(
                "conv2d_fused",
                format!(
                    "input {:?} (+ {c2} skip channels) with weight {:?}",
                    self.shape(),
                    w.shape()
                ),
            ));
        }
        let out = vec![g.n, g.co, g.ho(), g.wo()];
        if let Some((sw, sb)) = tail.shortcut {
            let co = sw.shape().first().copied().unwrap_or(0);
            if sw.shape() != [co, g.ci, 1, 1] || sb.is_some_and(|b| b.shape() != [co]) {
                return Err(Error::shape(
                    "conv2d_fused",
                    format!("shortcut weight {:?} for {} channels", sw.shape(), g.ci),
                ));
            }
        }
        if let Some(t) = tail.temb {
            if t.shape() != [g.n, g.co] {
                return Err(Error::shape(
                    "conv2d_fused",
                    format!("time embedding {:?} for {:?}", t.shape(), out),
                ));
            }
        }
        if let Some(r) = tail.residual {
            if r.shape() != out.as_slice() {
                return Err(Error::shape(
                    "conv2d_fused",
                    format!("residual {:?} for {:?}", r.shape(), out),
                ));
            }
        }
        let norm = match tail.norm {
            Some((gamma, beta, groups, eps)) => {
                if groups == 0
                    || !g.ci.is_multiple_of(groups)
                    || gamma.shape() != [g.ci]
                    || beta.shape() != [g.ci]
                {
                    return Err(Error::shape(
                        "conv2d_fused",
                        format!(
                            "{} channels in {groups} groups, γ {:?}, β {:?}",
                            g.ci,
                            gamma.shape(),
                            beta.shape()
                        ),
                    ));
                }
                Some(fused_norm(gamma, beta, groups, eps))
            }
            None => None,
        };
        let f = FusedConv {
            geom: g,
            x2: tail.skip.map(|s| (s.storage(), c2)),
            upsample: tail.upsample,
            shortcut: tail
                .shortcut
                .map(|(w, b)| (w.storage(), b.map(|b| b.storage()))),
            norm,
            silu: tail.silu,
            w: w.storage(),
            bias: b.map(|b| b.storage()),
            temb: tail.temb.map(|t| t.storage()),
            residual: tail.residual.map(|r| r.storage()),
            scale: tail.scale,
        };
        let (y, s) = self.storage().conv2d_fused(&f)?;
        let shortcut = s.map(|s| {
            let co = s.len() / (g.n * g.h * g.w).max(1);
            Tensor::make(s, vec![g.n, co, g.h, g.w], false, false)
        });
        Ok(Some((Tensor::make(y, out, false, false), shortcut)))
    }

    /// The positions of an image `self (n, c, …)`, group-normalised if `norm` (`gamma`, `beta`,
    /// groups, eps) is given, as tokens, projected by each `(w, b)` with `w (cout, c)`:
    /// `(n, l, cout)` each, `l` the positions — `group_norm`, `reshape`, `transpose12` (once) and
    /// `linear` as one operation, without a tape (inference).
    pub fn tokens_linear(
        &self,
        norm: Option<(&Tensor, &Tensor, usize, f32)>,
        projections: &[(&Tensor, Option<&Tensor>)],
    ) -> Result<Vec<Tensor>> {
        let (n, c) = match *self.shape() {
            [n, c, ..] => (n, c),
            ref s => return Err(Error::shape("tokens_linear", format!("input shape {s:?}"))),
        };
        let l = self.elem_count() / (n * c).max(1);
        let Some(&(w0, _)) = projections.first() else {
            return Ok(Vec::new());
        };
        let cout = w0.shape().first().copied().unwrap_or(0);
        for &(w, b) in projections {
            if w.shape() != [cout, c] || b.is_some_and(|b| b.shape() != [cout]) {
                return Err(Error::shape(
                    "tokens_linear",
                    format!("weight {:?} for {c} channels and {cout} outputs", w.shape()),
                ));
            }
            if Tensor::recorded(&[self, w]) {
                return Err(Error::shape(
                    "tokens_linear",
                    "inference only: no gradient flows through it",
                ));
            }
        }
        let norm = match norm {
            Some((gamma, beta, groups, eps)) => {
                self.norm_geom(groups, gamma, beta, eps, false)?;
                if Tensor::recorded(&[gamma, beta]) {
                    return Err(Error::shape(
                        "tokens_linear",
                        "inference only: no gradient flows through it",
                    ));
                }
                Some(fused_norm(gamma, beta, groups, eps))
            }
            None => None,
        };
        let p: Vec<(&Storage, Option<&Storage>)> = projections
            .iter()
            .map(|&(w, b)| (w.storage(), b.map(|b| b.storage())))
            .collect();
        self.storage()
            .tokens_linear(norm, &p, (n, c, l, cout))?
            .into_iter()
            .map(|y| Tensor::from_storage(y, &[n, l, cout]))
            .collect()
    }

    /// Tokens `self (n, l, c)` projected by `w (cout, c)` and `b`, written as an image shaped
    /// like `residual (n, cout, …)`, plus `residual`, times `scale` — `linear`, `transpose12`,
    /// `reshape`, add, scale as one operation, without a tape (inference).
    pub fn linear_to_channels(
        &self,
        w: &Tensor,
        b: Option<&Tensor>,
        residual: &Tensor,
        scale: f32,
    ) -> Result<Tensor> {
        let (n, l, c) = match *self.shape() {
            [n, l, c] => (n, l, c),
            ref s => {
                return Err(Error::shape(
                    "linear_to_channels",
                    format!("input shape {s:?}"),
                ))
            }
        };
        let cout = match *w.shape() {
            [co, wc] if wc == c => co,
            ref s => {
                return Err(Error::shape(
                    "linear_to_channels",
                    format!("weight {s:?} for {c} channels"),
                ))
            }
        };
        if residual.shape().first() != Some(&n)
            || residual.shape().get(1) != Some(&cout)
            || residual.elem_count() != n * cout * l
            || b.is_some_and(|b| b.shape() != [cout])
        {
            return Err(Error::shape(
                "linear_to_channels",
                format!("residual {:?} for ({n}, {cout}, {l})", residual.shape()),
            ));
        }
        if Tensor::recorded(&[self, w, residual]) {
            return Err(Error::shape(
                "linear_to_channels",
                "inference only: no gradient flows through it",
            ));
        }
        let y = self.storage().linear_to_channels(
            w.storage(),
            b.map(|b| b.storage()),
            Some(residual.storage()),
            scale,
            (n, l, c, cout),
        )?;
        Tensor::from_storage(y, residual.shape())
    }

    /// `self · wᵀ + b` over the last dimension: PyTorch's `Linear` with `w (out, in)`.
    pub fn linear(&self, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let Some(&k) = self.shape().last() else {
            return Err(Error::shape("linear", "input is a scalar"));
        };
        let (nout, wk) = match *w.shape() {
            [a, b] => (a, b),
            ref s => {
                return Err(Error::shape(
                    "linear",
                    format!("weight shape {s:?} is not 2-d"),
                ))
            }
        };
        if wk != k || b.is_some_and(|b| b.shape() != [nout]) {
            return Err(Error::shape(
                "linear",
                format!("input {:?} with weight {:?}", self.shape(), w.shape()),
            ));
        }
        let m = self.elem_count() / k.max(1);
        let y = self
            .storage()
            .linear(w.storage(), b.map(|b| b.storage()), m, k, nout)?;
        let mut shape = self.shape().to_vec();
        *shape.last_mut().expect("linear input has a last dimension") = nout;
        let mut inputs = vec![self, w];
        inputs.extend(b);
        Ok(Tensor::result(y, shape, &inputs, || Op::Linear {
            m,
            k,
            n: nout,
        }))
    }

    /// `torch.nn.GroupNorm(groups, C, eps)` with affine `gamma`, `beta` on `(N, C, …)`.
    pub fn group_norm(
        &self,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        let g = self.norm_geom(groups, gamma, beta, eps, false)?;
        let (y, stats) = self
            .storage()
            .group_norm(gamma.storage(), beta.storage(), &g)?;
        Ok(Tensor::result(
            y,
            self.shape().to_vec(),
            &[self, gamma, beta],
            || Op::GroupNorm { g, stats },
        ))
    }

    /// `silu(group_norm(…))`: one pass over memory when no gradient is recorded, the two
    /// recorded ops otherwise.
    pub fn group_norm_silu(
        &self,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        if Tensor::recorded(&[self, gamma, beta]) {
            return self.group_norm(groups, gamma, beta, eps)?.silu();
        }
        let g = self.norm_geom(groups, gamma, beta, eps, true)?;
        let (y, _) = self
            .storage()
            .group_norm(gamma.storage(), beta.storage(), &g)?;
        Ok(Tensor::make(y, self.shape().to_vec(), false, false))
    }

    fn norm_geom(
        &self,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
        silu: bool,
    ) -> Result<NormGeom> {
        let (n, c) = match *self.shape() {
            [n, c, ..] => (n, c),
            ref s => return Err(Error::shape("group_norm", format!("input shape {s:?}"))),
        };
        if groups == 0 || !c.is_multiple_of(groups) || gamma.shape() != [c] || beta.shape() != [c] {
            return Err(Error::shape(
                "group_norm",
                format!(
                    "{c} channels in {groups} groups, γ {:?}, β {:?}",
                    gamma.shape(),
                    beta.shape()
                ),
            ));
        }
        Ok(NormGeom {
            n,
            c,
            hw: self.elem_count() / (n * c).max(1),
            groups,
            eps,
            silu,
        })
    }

    /// `x·σ(x)`.
    pub fn silu(&self) -> Result<Tensor> {
        let y = self.storage().silu()?;
        Ok(Tensor::result(y, self.shape().to_vec(), &[self], || {
            Op::Silu
        }))
    }

    /// Multi-head softmax attention of token-major `(N, L, heads·d)` queries, keys and values,
    /// scale `1/√d`.
    pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        let (n, l, c) = match *q.shape() {
            [n, l, c] => (n, l, c),
            ref s => {
                return Err(Error::shape(
                    "attention",
                    format!("queries {s:?} are not (N, L, C)"),
                ))
            }
        };
        q.same_shape(k, "attention")?;
        q.same_shape(v, "attention")?;
        if heads == 0 || c % heads != 0 {
            return Err(Error::shape(
                "attention",
                format!("{c} channels in {heads} heads"),
            ));
        }
        let d = c / heads;
        let g = AttnGeom {
            n,
            l,
            heads,
            d,
            scale: 1.0 / (d as f32).sqrt(),
        };
        if !Tensor::recorded(&[q, k, v]) {
            let y = q.storage().attention(k.storage(), v.storage(), &g)?;
            return Ok(Tensor::result(y, q.shape().to_vec(), &[q, k, v], || {
                Op::Attention { g, saved: None }
            }));
        }
        // recorded: keep what the backward pass reuses (on the GPU, the rows' log-sum-exp)
        let (y, stats) = q
            .storage()
            .attention_for_training(k.storage(), v.storage(), &g)?;
        let saved = stats.map(|l| (y.clone(), l));
        Ok(Tensor::result(y, q.shape().to_vec(), &[q, k, v], || {
            Op::Attention { g, saved }
        }))
    }

    /// Nearest-neighbour 2× upsampling of NCHW.
    pub fn upsample_nearest2x(&self) -> Result<Tensor> {
        let (n, c, h, w) = self.dims4("upsample")?;
        let y = self.storage().upsample_nearest2x(n * c, h, w)?;
        Ok(Tensor::result(y, vec![n, c, 2 * h, 2 * w], &[self], || {
            Op::Upsample { nc: n * c, h, w }
        }))
    }

    fn binary(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        self.same_shape(rhs, "binary")?;
        let y = self.storage().binary(rhs.storage(), op)?;
        Ok(Tensor::result(
            y,
            self.shape().to_vec(),
            &[self, rhs],
            || Op::Binary(op),
        ))
    }
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul)
    }

    /// `self · s`.
    pub fn scale(&self, s: f32) -> Result<Tensor> {
        let y = self.storage().affine(s, 0.0)?;
        Ok(Tensor::result(y, self.shape().to_vec(), &[self], || {
            Op::Scale(s)
        }))
    }

    /// `self[n, c, …] + b[n, c]`: broadcasting a per-sample, per-channel value over pixels.
    pub fn add_channel_bias(&self, b: &Tensor) -> Result<Tensor> {
        let (n, c) = match *self.shape() {
            [n, c, ..] => (n, c),
            ref s => {
                return Err(Error::shape(
                    "add_channel_bias",
                    format!("input shape {s:?}"),
                ))
            }
        };
        if b.shape() != [n, c] {
            return Err(Error::shape(
                "add_channel_bias",
                format!("{:?} onto {:?}", b.shape(), self.shape()),
            ));
        }
        let hw = self.elem_count() / (n * c).max(1);
        let y = self.storage().add_channel_bias(b.storage(), n, c, hw)?;
        Ok(Tensor::result(y, self.shape().to_vec(), &[self, b], || {
            Op::AddChannelBias { n, c, hw }
        }))
    }

    /// `(N, A, B) → (N, B, A)`.
    pub fn transpose12(&self) -> Result<Tensor> {
        let (n, a, b) = match *self.shape() {
            [n, a, b] => (n, a, b),
            ref s => {
                return Err(Error::shape(
                    "transpose12",
                    format!("input shape {s:?} is not 3-d"),
                ))
            }
        };
        let y = self.storage().transpose12(n, a, b)?;
        Ok(Tensor::result(y, vec![n, b, a], &[self], || {
            Op::Transpose12 { n, a, b }
        }))
    }

    /// Concatenation along dimension 1 (channels) of tensors equal in every other dimension.
    pub fn cat_channels(parts: &[&Tensor]) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| Error::shape("cat", "nothing to concatenate"))?;
        let (n, rest) = match first.shape() {
            [n, _, rest @ ..] => (*n, rest.to_vec()),
            s => return Err(Error::shape("cat", format!("shape {s:?}"))),
        };
        let mut cs = Vec::with_capacity(parts.len());
        for p in parts {
            match p.shape() {
                [pn, c, r @ ..] if *pn == n && r == rest.as_slice() => cs.push(*c),
                s => {
                    return Err(Error::shape(
                        "cat",
                        format!("{s:?} with {:?}", first.shape()),
                    ))
                }
            }
        }
        let hw = numel(&rest);
        let storages: Vec<&Storage> = parts.iter().map(|p| p.storage()).collect();
        let y = Storage::concat_channels(&storages, n, &cs, hw)?;
        let mut shape = vec![n, cs.iter().sum()];
        shape.extend(rest);
        Ok(Tensor::result(y, shape, parts, || Op::Concat {
            n,
            cs: cs.clone(),
            hw,
        }))
    }

    /// Channels `start..end` (dimension 1).
    /// Rows `start .. start + count` of the first axis (a sub-batch), as a slice of the rows of
    /// a one-sample view; its gradient places the rows back.
    pub fn narrow_rows(&self, start: usize, count: usize) -> Result<Tensor> {
        let (n, rest) = match self.shape() {
            [n, rest @ ..] => (*n, rest.to_vec()),
            [] => return Err(Error::shape("narrow_rows", "a scalar has no rows")),
        };
        if start + count > n {
            return Err(Error::shape(
                "narrow_rows",
                format!("rows {start}..{} of {n}", start + count),
            ));
        }
        let row = numel(&rest);
        let y = self
            .reshape(&[1, n, row])?
            .slice_channels(start, start + count)?;
        let mut shape = vec![count];
        shape.extend(rest);
        y.reshape(&shape)
    }

    pub fn slice_channels(&self, start: usize, end: usize) -> Result<Tensor> {
        let (n, c) = match *self.shape() {
            [n, c, ..] => (n, c),
            ref s => return Err(Error::shape("slice", format!("input shape {s:?}"))),
        };
        if start > end || end > c {
            return Err(Error::shape(
                "slice",
                format!("channels {start}..{end} of {c}"),
            ));
        }
        let hw = self.elem_count() / (n * c).max(1);
        let y = self.storage().slice_channels(n, c, hw, start, end)?;
        let mut shape = self.shape().to_vec();
        shape[1] = end - start;
        Ok(Tensor::result(y, shape, &[self], || Op::Slice {
            n,
            c,
            hw,
            start,
            end,
        }))
    }

    /// Mean squared error `mean((self − target)²)`, a one-element tensor.
    pub fn mse(&self, target: &Tensor) -> Result<Tensor> {
        self.same_shape(target, "mse")?;
        let y = self.storage().loss(target.storage(), LossKind::Mse)?;
        Ok(Tensor::result(y, vec![], &[self, target], || {
            Op::Loss(LossKind::Mse)
        }))
    }

    /// The mean absolute error `mean|self − target|` (PyTorch's `l1_loss`), a scalar; its
    /// gradient is `sign(self − target)/N` (0 where they are equal).
    pub fn mae(&self, target: &Tensor) -> Result<Tensor> {
        self.same_shape(target, "mae")?;
        let y = self.storage().loss(target.storage(), LossKind::Mae)?;
        Ok(Tensor::result(y, vec![], &[self, target], || {
            Op::Loss(LossKind::Mae)
        }))
    }

    /// Dropout of each row of `self` (the first axis; rows of `(sample, member)` pairs given by
    /// `rows`, a [`crate::diffusion::ddim::rows_tensor`]), layer `layer`, probability `p`, its
    /// masks drawn from `key` (docs/random.md, “Dropout masks”). `p = 0` returns `self`.
    pub fn dropout(&self, rows: &Tensor, key: NoiseKey, layer: u32, p: f32) -> Result<Tensor> {
        if p == 0.0 {
            return Ok(self.clone());
        }
        let n = self.shape().first().copied().unwrap_or(0);
        let g = DropoutGeom {
            key,
            layer,
            p,
            rows: n,
            row_len: numel(&self.shape()[1..]),
        };
        if rows.shape() != [2 * n] {
            return Err(Error::shape(
                "dropout",
                format!(
                    "noise rows of shape {:?} for {n} rows; expected [{}]",
                    rows.shape(),
                    2 * n
                ),
            ));
        }
        let y = self.storage().dropout(rows.storage(), &g)?;
        Ok(Tensor::result(y, self.shape().to_vec(), &[self], || {
            Op::Dropout {
                g,
                rows: rows.storage().clone(),
            }
        }))
    }

    /// Sinusoidal embedding `(len(t), dim)` of timesteps `t` (a 1-d tensor), as diffusers'
    /// `get_timestep_embedding`.
    pub fn timestep_embedding(
        &self,
        dim: usize,
        flip_sin_to_cos: bool,
        freq_shift: f32,
    ) -> Result<Tensor> {
        if self.shape().len() != 1 {
            return Err(Error::shape(
                "timestep_embedding",
                format!("timesteps of shape {:?}", self.shape()),
            ));
        }
        let y = self
            .storage()
            .timestep_embedding(dim, flip_sin_to_cos, freq_shift)?;
        Ok(Tensor::make(y, vec![self.shape()[0], dim], false, false))
    }
}
