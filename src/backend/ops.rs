//! The operations every backend implements ([`BackendStorage`]) and the parameters some of them
//! take: element-wise binary operations, an optimizer step, the losses, a convolution fused with
//! the UNet's surroundings.

use super::{
    AttnGeom, ConvGeom, DdimCoef, DropoutGeom, DynCoef, MatmulGeom, NormGeom, PadMode, ProcessGeom,
    QSampleCoef, SeqGeom,
};
use crate::error::Result;

/// Element-wise binary operations on equal-length operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// `|a − b|` (the L1 loss's terms).
    AbsDiff,
    /// `sign(a − b)`: 1, −1, or 0 where `a = b` (the L1 loss's gradient, as PyTorch's).
    SignDiff,
}

/// One optimizer step (Loshchilov & Hutter, 2019) over a network's parameters held as one
/// contiguous array, with gradient clipping by global norm and an exponential moving average of
/// the weights, for every element:
///
/// ```text
/// norm = √(Σ grad²)  (all parameters, in f64),  scale = min(max_norm / (norm + 10⁻⁶), 1)
/// g  = grad · scale
/// m' = β₁·m + (1 − β₁)·g,   v' = β₂·v + (1 − β₂)·g²
/// p' = p − lr·( (m'/bc1) / (√(v'/bc2) + ε) + weight_decay·p )
/// e' = ema_decay·e + (1 − ema_decay)·p'
/// ```
/// with the bias corrections `bc1 = 1 − β₁^step`, `bc2 = 1 − β₂^step`. When the step's loss or
/// the norm is not finite, nothing changes: `(p', m', v', e') = (p, m, v, e)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub bc1: f32,
    pub bc2: f32,
    /// The largest global gradient norm (`--clip`).
    pub max_norm: f32,
    pub ema_decay: f32,
}

/// The training losses: the mean squared error and the mean absolute error (PyTorch's
/// `mse_loss` and `l1_loss`, mean reduction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    Mse,
    Mae,
}

/// The group norm of [`FusedConv`]: affine `gamma`, `beta` per input channel.
#[derive(Debug)]
pub struct FusedNorm<'a, S> {
    pub gamma: &'a S,
    pub beta: &'a S,
    pub groups: usize,
    pub eps: f32,
}

/// A convolution with what surrounds it in the UNet's blocks (inference only):
///
/// ```text
/// y = (conv(act(norm(up(x ⧺ x2))), w) + bias[co] + temb[n, co] + residual) · scale
/// ```
/// with `x ⧺ x2` the concatenation along channels of the input and, if given, a second tensor of
/// `c2` channels (an up block's skip connection), `up` nearest 2× upsampling if `upsample`,
/// `norm` an optional group norm and `act` SiLU if `silu`. `geom` is the convolution's: its input
/// is the concatenated, upsampled one.
#[derive(Debug)]
pub struct FusedConv<'a, S> {
    pub geom: ConvGeom,
    pub x2: Option<(&'a S, usize)>,
    pub upsample: bool,
    /// A 1×1 convolution (weights `(co', ci, 1, 1)`, bias) of the same input before the norm — a
    /// resnet block's shortcut — computed alongside.
    pub shortcut: Option<(&'a S, Option<&'a S>)>,
    pub norm: Option<FusedNorm<'a, S>>,
    pub silu: bool,
    pub w: &'a S,
    pub bias: Option<&'a S>,
    /// `(n, co)`.
    pub temb: Option<&'a S>,
    /// Shaped like the output.
    pub residual: Option<&'a S>,
    pub scale: f32,
}

/// The geometry of [`FusedConv::shortcut`]: a 1×1 convolution of the fused convolution's input
/// with `weights` values (`co' · ci`).
pub fn shortcut_geom(g: &ConvGeom, weights: usize) -> ConvGeom {
    ConvGeom {
        co: weights / g.ci.max(1),
        k: 1,
        stride: 1,
        pad: [0; 4],
        pad_mode: PadMode::Zeros,
        ..*g
    }
}

// References only: copyable whatever the storage.
impl<S> Clone for FusedNorm<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for FusedNorm<'_, S> {}

impl<S> Clone for FusedConv<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for FusedConv<'_, S> {}

/// The primitive operations every backend implements. Shapes are passed explicitly; storages are
/// flat. Operations never mutate their inputs.
pub trait BackendStorage: Sized {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies the data to host memory.
    fn to_vec(&self) -> Result<Vec<f32>>;

    /// `y = conv(x, w) + b` (cross-correlation, as PyTorch).
    fn conv2d(&self, w: &Self, b: Option<&Self>, g: &ConvGeom) -> Result<Self>;
    /// [`FusedConv`] on `self` (inference only): the output, and the shortcut's if asked for.
    /// The CPU composes its operations in the order of the unfused block, so its result is
    /// bit-identical to them; the GPU runs one convolution kernel (after the group norm's
    /// statistics), and one for the shortcut.
    fn conv2d_fused(&self, f: &FusedConv<Self>) -> Result<(Self, Option<Self>)>;
    /// Gradients of [`BackendStorage::conv2d`]: `(dx if need_dx, dw, db)`.
    fn conv2d_backward(
        &self,
        w: &Self,
        dy: &Self,
        g: &ConvGeom,
        need_dx: bool,
    ) -> Result<(Option<Self>, Self, Self)>;
    /// Batched matrix product, see [`MatmulGeom`].
    fn matmul(&self, b: &Self, g: &MatmulGeom) -> Result<Self>;
    /// `y = x · wᵀ + b` for `x (m, k)`, `w (n, k)`, `b (n)`: PyTorch's `Linear`.
    fn linear(&self, w: &Self, b: Option<&Self>, m: usize, k: usize, n: usize) -> Result<Self>;
    /// Projections of an image's positions: `self (n, c, l)`, group-normalised if `norm` is
    /// given, read as tokens `(n, l, c)`, times `wᵀ` (`w (cout, c)`), plus `b`, for each `(w, b)`:
    /// `(n, l, cout)` each — [`BackendStorage::group_norm`], [`BackendStorage::transpose12`] once,
    /// then [`BackendStorage::linear`] (the GPU reads the image in place and normalises it as it
    /// loads). `dims` is `(n, c, l, cout)`.
    fn tokens_linear(
        &self,
        norm: Option<FusedNorm<Self>>,
        projections: &[(&Self, Option<&Self>)],
        dims: (usize, usize, usize, usize),
    ) -> Result<Vec<Self>>;
    /// The way back: tokens `self (n, l, c)` times `wᵀ` (`w (cout, c)`) plus `b`, as channels
    /// `(n, cout, l)`, plus `residual (n, cout, l)`, times `scale` — `linear`, `transpose12`,
    /// add, scale (the GPU writes the image in place with the residual in the same pass).
    /// `dims` is `(n, l, c, cout)`.
    fn linear_to_channels(
        &self,
        w: &Self,
        b: Option<&Self>,
        residual: Option<&Self>,
        scale: f32,
        dims: (usize, usize, usize, usize),
    ) -> Result<Self>;
    /// Column sums of a `(rows, cols)` matrix.
    fn sum_rows(&self, rows: usize, cols: usize) -> Result<Self>;
    /// Group normalisation with affine `gamma`, `beta` per channel. Returns the output and the
    /// per-(sample, group) statistics `[mean…, 1/σ…]` for the backward pass.
    fn group_norm(&self, gamma: &Self, beta: &Self, g: &NormGeom) -> Result<(Self, Self)>;
    /// Gradients of [`BackendStorage::group_norm`]: `(dx, dgamma, dbeta)`.
    fn group_norm_backward(
        &self,
        gamma: &Self,
        stats: &Self,
        dy: &Self,
        g: &NormGeom,
    ) -> Result<(Self, Self, Self)>;
    /// `x·σ(x)`.
    fn silu(&self) -> Result<Self>;
    /// `dy·σ(x)·(1 + x·(1 − σ(x)))`.
    fn silu_backward(&self, dy: &Self) -> Result<Self>;
    /// Softmax attention per head: `softmax(q kᵀ·scale) v`, token-major `(n, l, heads·d)`.
    fn attention(&self, k: &Self, v: &Self, g: &AttnGeom) -> Result<Self>;
    /// [`BackendStorage::attention`] for training: the output and what this backend's backward
    /// reuses — on the GPU each row's log-sum-exp of the scaled scores `(n, heads, l)`, from which
    /// it recomputes the probabilities; on the CPU nothing (its backward forms them again).
    fn attention_for_training(
        &self,
        k: &Self,
        v: &Self,
        g: &AttnGeom,
    ) -> Result<(Self, Option<Self>)>;
    /// Gradients of [`BackendStorage::attention`]: `(dq, dk, dv)`; `saved` is the forward's
    /// output and statistics when [`BackendStorage::attention_for_training`] gave them.
    fn attention_backward(
        &self,
        k: &Self,
        v: &Self,
        dout: &Self,
        saved: Option<(&Self, &Self)>,
        g: &AttnGeom,
    ) -> Result<(Self, Self, Self)>;
    /// Nearest-neighbour 2× upsampling of `(nc, h, w)` planes.
    fn upsample_nearest2x(&self, nc: usize, h: usize, w: usize) -> Result<Self>;
    /// Its adjoint: sums of 2×2 blocks of `(nc, 2h, 2w)` planes into `(nc, h, w)`.
    fn upsample_nearest2x_backward(&self, nc: usize, h: usize, w: usize) -> Result<Self>;
    /// Element-wise `self ∘ rhs`.
    fn binary(&self, rhs: &Self, op: BinaryOp) -> Result<Self>;
    /// `self·mul + add`.
    fn affine(&self, mul: f32, add: f32) -> Result<Self>;
    /// `y[n, c, p] = x[n, c, p] + b[n, c]`.
    fn add_channel_bias(&self, b: &Self, n: usize, c: usize, hw: usize) -> Result<Self>;
    /// `(n, a, b) → (n, b, a)`.
    fn transpose12(&self, n: usize, a: usize, b: usize) -> Result<Self>;
    /// Concatenation of `(n, cᵢ, hw)` parts along channels.
    fn concat_channels(parts: &[&Self], n: usize, cs: &[usize], hw: usize) -> Result<Self>;
    /// Channels `start..end` of `(n, c, hw)`.
    fn slice_channels(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        start: usize,
        end: usize,
    ) -> Result<Self>;
    /// Its adjoint: `(n, end − start, hw)` placed at channels `start..end` of zeros `(n, c, hw)`.
    fn slice_channels_backward(
        &self,
        n: usize,
        c: usize,
        hw: usize,
        start: usize,
        end: usize,
    ) -> Result<Self>;
    /// `Dyn_γ` (or, if `inverse`, `InvDyn_γ`) along the frame axis of every sequence, with
    /// the coefficients `coefs[b]` of sequence `b` (docs/process.md, “Dynamics”). One pass
    /// over memory.
    fn dynamics(&self, g: &SeqGeom, coefs: &[DynCoef], inverse: bool) -> Result<Self>;
    /// The forward process (docs/process.md, “Forward process” and “Diffusing the history”) on
    /// clean sequences `self` `(batch, P+1+S, elems)` with i.i.d. noise `eps`
    /// `(batch, diffused, elems)`, at per-sequence coefficients: returns the network input
    /// (clean history, then `x_t` of the diffused frames) and the target `ε̃ = Dyn_{γ̄_t}(ε)`
    /// `(batch, diffused, elems)` (see [`ProcessGeom`]). One pass over memory.
    fn q_sample(&self, eps: &Self, g: &ProcessGeom, coefs: &[QSampleCoef]) -> Result<(Self, Self)>;
    /// One DDIM step (docs/process.md, “One step” and “Diffusing the history”) on the sampler
    /// state `self` `(batch, history + diffused, elems)` (clean history, then `x_t`), given the
    /// network's `ε̂` and, when `σ > 0`, fresh noise `z`, both `(batch, diffused, elems)`:
    /// returns the next state (history, then `x_p`). One pass over memory.
    fn ddim_step(
        &self,
        eps_hat: &Self,
        z: Option<&Self>,
        g: &ProcessGeom,
        c: &DdimCoef,
    ) -> Result<Self>;
    /// [`BackendStorage::ddim_step`] with the step's values read from `step` (the
    /// [`DdimStep::words`](super::DdimStep::words) of its coefficients and noise key) and, when
    /// `σ > 0`, its fresh noise drawn from the key for the sequences' noise `rows`
    /// ([`row_words`](super::row_words), `2·batch` words; docs/random.md): `z` is
    /// `Device::randn(key, rows, diffused·elems)`. The CPU reads the words, draws, then steps;
    /// the GPU's kernel reads them and draws each value itself.
    fn ddim_step_drawn(
        &self,
        eps_hat: &Self,
        step: &Self,
        rows: &Self,
        g: &ProcessGeom,
    ) -> Result<Self>;
    /// [`DropoutGeom`] on `self` `(rows, row_len)`, the rows' (sample, member) pairs given as
    /// [`row_words`](super::row_words) (`2·rows` words).
    fn dropout(&self, rows: &Self, g: &DropoutGeom) -> Result<Self>;
    /// The loss `mean((self − target)²)` or `mean|self − target|` as one value, left where the
    /// data are (reading it is the caller's choice: the GPU's step never waits for the host).
    fn loss(&self, target: &Self, kind: LossKind) -> Result<Self>;
    /// The loss's gradient with respect to `self`, given the gradient `g` of the loss itself (one
    /// value): `g·2(self − target)/N` or `g·sign(self − target)/N` (0 where they are equal).
    fn loss_backward(&self, target: &Self, g: &Self, kind: LossKind) -> Result<Self>;
    /// One [`AdamStep`] of the parameters `self` (all of a network's, one contiguous array) with
    /// the gradients `grads` (one per parameter, in order, their lengths summing to `self`'s), the
    /// moments `m`, `v` and the EMA `ema` (each like `self`) and the step's `loss` (one value):
    /// the one operation that updates its operands in place — `self`, `m`, `v`, `ema`, and on
    /// the GPU every view of them ([`BackendStorage::split`]: the network's weights), so that
    /// the optimizer needs no second copy of its state. Returns the global gradient norm as one
    /// value.
    fn adamw(
        &mut self,
        grads: &[&Self],
        m: &mut Self,
        v: &mut Self,
        ema: &mut Self,
        loss: &Self,
        h: &AdamStep,
    ) -> Result<Self>;
    /// Consecutive parts of `lens` values each (summing to `self`'s length): the parameters of a
    /// network held in one contiguous array. The GPU's parts are views of the same memory.
    fn split(&self, lens: &[usize]) -> Result<Vec<Self>>;
    /// Sinusoidal timestep embedding `(len(t), dim)` as diffusers' `get_timestep_embedding`.
    fn timestep_embedding(
        &self,
        dim: usize,
        flip_sin_to_cos: bool,
        freq_shift: f32,
    ) -> Result<Self>;
}
