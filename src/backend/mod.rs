//! The closed set of primitive operations, and the storages that implement them.
//!
//! Everything above this module (tensors, autograd, layers, pipelines) calls [`Storage`], which
//! dispatches to the backend holding the data: [`cpu::CpuStorage`] (the reference, and fast) or
//! [`cuda::CudaStorage`]. Both implement [`BackendStorage`]; a new backend implements that trait
//! and adds a variant here. Without the `cuda` feature the CUDA storage type is uninhabited, so no
//! `cfg` leaks upward: creating a CUDA device returns a "built without CUDA" error.
//!
//! Layout: all image tensors are NCHW, row-major (see [`cpu::conv`] for why).

pub mod cpu;
pub mod cuda;

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

/// What a convolution reads outside the image: PyTorch's `Conv2d(padding_mode=…)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    /// Zeros (`padding_mode="zeros"`, diffusers' default).
    #[default]
    Zeros,
    /// The image wrapped around (`padding_mode="circular"`): row `−1` is row `h − 1`, row `h` is
    /// row `0`, and the same for columns — the right padding for periodic fields.
    Circular,
}

impl PadMode {
    /// The model folder's name of the mode (`dydiff.json`'s `padding_mode`, PyTorch's names).
    pub fn name(self) -> &'static str {
        match self {
            PadMode::Zeros => "zeros",
            PadMode::Circular => "circular",
        }
    }

    /// The mode named `name` (`"zeros"` or `"circular"`).
    pub fn parse(name: &str) -> Option<PadMode> {
        match name {
            "zeros" => Some(PadMode::Zeros),
            "circular" => Some(PadMode::Circular),
            _ => None,
        }
    }

    /// Whether this is the default, [`PadMode::Zeros`] (a model folder writes the mode only
    /// otherwise, so folders of the default read and write as before).
    pub fn is_zeros(&self) -> bool {
        *self == PadMode::Zeros
    }
}

/// Geometry of a 2-D convolution on NCHW input `(n, ci, h, w)` with an OIHW `(co, ci, k, k)`
/// kernel. Padding is given per side so that diffusers' `Downsample2D(padding=0)`, which pads
/// only bottom and right, is one convolution; with [`PadMode::Circular`] each side's padding is
/// at most the image's size on that axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub ci: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub k: usize,
    pub stride: usize,
    /// Padding: top, bottom, left, right.
    pub pad: [usize; 4],
    /// What the padding holds.
    pub pad_mode: PadMode,
}

impl ConvGeom {
    pub fn ho(&self) -> usize {
        (self.h + self.pad[0] + self.pad[1] - self.k) / self.stride + 1
    }
    pub fn wo(&self) -> usize {
        (self.w + self.pad[2] + self.pad[3] - self.k) / self.stride + 1
    }
    /// Whether the padding wraps around ([`PadMode::Circular`]).
    pub fn circular(&self) -> bool {
        self.pad_mode == PadMode::Circular
    }
    /// The input row that kernel row `ky` of output row `oy` reads (`None`: a zero of the
    /// padding).
    pub fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        self.source(oy * self.stride + ky, self.pad[0], self.h)
    }
    /// The input column that kernel column `kx` of output column `ox` reads (`None`: a zero of
    /// the padding).
    pub fn in_col(&self, ox: usize, kx: usize) -> Option<usize> {
        self.source(ox * self.stride + kx, self.pad[2], self.w)
    }
    fn source(&self, at: usize, pad: usize, size: usize) -> Option<usize> {
        let i = at as isize - pad as isize;
        if (0..size as isize).contains(&i) {
            Some(i as usize)
        } else if self.circular() {
            Some(i.rem_euclid(size as isize) as usize)
        } else {
            None
        }
    }
    /// Multiply-add count times two: `2·N·Co·Ho·Wo·Ci·k²`.
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.co * self.ho() * self.wo() * self.ci * self.k * self.k) as f64
    }
}

/// Geometry of group normalisation of `(n, c, hw)` in `groups` groups of `c / groups` channels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormGeom {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub groups: usize,
    pub eps: f32,
    /// Apply SiLU to the normalised output in the same pass (inference only: a fused call is
    /// never recorded for backward).
    pub silu: bool,
}

/// Geometry of multi-head attention on token-major `(n, l, heads·d)` queries, keys and values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnGeom {
    pub n: usize,
    pub l: usize,
    pub heads: usize,
    pub d: usize,
    pub scale: f32,
}

/// A batched matrix product `C[b] = op(A[b]) · op(B[b])` with row-major contiguous operands:
/// `A` is `(m, k)` (or `(k, m)` if `a_trans`), `B` is `(k, n)` (or `(n, k)` if `b_trans`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulGeom {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_trans: bool,
    pub b_trans: bool,
}

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

/// A batch of frame sequences `(batch, frames, elems)`, frame-major: element `e` of frame `f` of
/// sequence `b` at `(b·frames + f)·elems + e`. With `elems = C·H·W` this is the `(N, L, C, H, W)`
/// layout of docs/data.md, “Array shapes”, which is also the network's frame-major channel order
/// (docs/process.md, “Network input and output”).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqGeom {
    pub batch: usize,
    pub frames: usize,
    pub elems: usize,
}

/// Sequences of `history` known frames (`P + 1`) followed by `future` frames (`S`), each of
/// `elems` values, `(batch, history + future, elems)`, and which of their frames the process
/// diffuses: the future frames (docs/process.md, “Forward process”), or with
/// `diffuse_history` all of them (docs/process.md, “Diffusing the history”). The network input
/// and the sampler state are the clean history followed by the diffused frames,
/// `(batch, history + diffused, elems)`; noise, targets and `ε̂` are `(batch, diffused, elems)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessGeom {
    pub batch: usize,
    pub history: usize,
    pub future: usize,
    pub elems: usize,
    pub diffuse_history: bool,
}

impl ProcessGeom {
    /// Frames of a whole sequence, `P + 1 + S`.
    pub fn frames(&self) -> usize {
        self.history + self.future
    }
    /// Frames the process diffuses: `S`, or `P + 1 + S` with `diffuse_history`.
    pub fn diffused(&self) -> usize {
        if self.diffuse_history {
            self.frames()
        } else {
            self.future
        }
    }
    /// Frames of the network input and the sampler state: the history, then the diffused frames.
    pub fn state_frames(&self) -> usize {
        self.history + self.diffused()
    }
}

/// The two coefficients of `Dyn_γ` (docs/process.md, “Dynamics”): `√γ` and `√(1 − γ)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DynCoef {
    pub sqrt_g: f32,
    pub sqrt_1mg: f32,
}

impl DynCoef {
    /// The coefficients of `Dyn_γ`, rounded to f32 from f64.
    pub fn new(gamma: f64) -> DynCoef {
        DynCoef {
            sqrt_g: gamma.sqrt() as f32,
            sqrt_1mg: (1.0 - gamma).max(0.0).sqrt() as f32,
        }
    }
}

/// What the network predicts (the diffusers scheduler's `prediction_type`; docs/process.md,
/// “What the network predicts”): the noise `ε̃` (`epsilon`, the papers' parameterisation), or the
/// velocity `v = √ᾱ_t·ε̃ − √(1−ᾱ_t)·D` (`v_prediction`, Salimans & Ho 2022), from which
/// `ε̂ = √(1−ᾱ_t)·x_t + √ᾱ_t·v̂` and `D̂ = √ᾱ_t·x_t − √(1−ᾱ_t)·v̂`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    V,
}

impl Prediction {
    /// The diffusers name: `epsilon` or `v_prediction`.
    pub fn name(self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::V => "v_prediction",
        }
    }
    pub fn parse(s: &str) -> Option<Prediction> {
        [Prediction::Epsilon, Prediction::V]
            .into_iter()
            .find(|p| p.name() == s)
    }
    /// `(a, b)` with the training target `a·ε̃ + b·D` at `ᾱ_t = ab`.
    pub fn target(self, ab: f64) -> (f64, f64) {
        match self {
            Prediction::Epsilon => (1.0, 0.0),
            Prediction::V => (ab.sqrt(), -(1.0 - ab).sqrt()),
        }
    }
    /// `(a, b)` with `ε̂ = a·x_t + b·output` at `ᾱ_t = ab`.
    pub fn epsilon(self, ab: f64) -> (f64, f64) {
        match self {
            Prediction::Epsilon => (0.0, 1.0),
            Prediction::V => ((1.0 - ab).sqrt(), ab.sqrt()),
        }
    }
}

/// Per-sequence coefficients of the forward process (docs/process.md, “Forward process”) at that
/// sequence's `t`:
/// `Dyn_{γ̄_t}` and `√ᾱ_t`, `√(1 − ᾱ_t)`, and the training target `target_eps·ε̃ + target_d·D`
/// (`1, 0`: the noise; `√ᾱ_t, −√(1−ᾱ_t)`: the velocity `v`; docs/process.md, “What the network
/// predicts”).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QSampleCoef {
    pub dynamics: DynCoef,
    pub sqrt_ab: f32,
    pub sqrt_1mab: f32,
    pub target_eps: f32,
    pub target_d: f32,
}

/// Coefficients of one DDIM step from `t` to `p` (docs/process.md, “One step”), shared by the
/// whole batch:
/// the dynamics at `γ̄_t` and `γ̄_p`, `√ᾱ_t`, `√(1 − ᾱ_t)`, `√ᾱ_p`, the weight
/// `√(1 − ᾱ_p − σ²)` of the predicted noise, `σ`, and how the noise estimate follows from the
/// network's output: `ε̂ = eps_from_xt·x_t + eps_from_out·output` (`0, 1` for a noise
/// prediction; `√(1−ᾱ_t), √ᾱ_t` for a velocity; docs/process.md, “What the network predicts”).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdimCoef {
    pub dyn_t: DynCoef,
    pub dyn_p: DynCoef,
    pub sqrt_ab_t: f32,
    pub sqrt_1mab_t: f32,
    pub sqrt_ab_p: f32,
    pub eps_weight: f32,
    pub sigma: f32,
    pub eps_from_xt: f32,
    pub eps_from_out: f32,
}

/// The values of one DDIM step whose fresh noise is drawn from `key`, as the device reads them
/// ([`BackendStorage::ddim_step_drawn`]): [`DdimStep::WORDS`] 4-byte words, kept in a tensor (as
/// `f32` bit patterns) so that a sampler step captured as a CUDA graph reads every replay's values
/// where the graph looks for them (docs/devices.md, “CUDA graphs”). Layout: the eleven
/// coefficients of [`DdimCoef`] — `√γ̄_t, √(1−γ̄_t), √γ̄_p, √(1−γ̄_p), √ᾱ_t, √(1−ᾱ_t), √ᾱ_p,
/// √(1−ᾱ_p−σ²), σ`, `eps_from_xt`, `eps_from_out` — then the key: seed (low and high 32 bits),
/// purpose, step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdimStep {
    pub coef: DdimCoef,
    pub key: NoiseKey,
}

impl DdimStep {
    /// The number of words.
    pub const WORDS: usize = 15;

    /// The words, as `f32` bit patterns.
    pub fn words(&self) -> Vec<f32> {
        let c = &self.coef;
        let k = &self.key;
        let mut w = vec![
            c.dyn_t.sqrt_g,
            c.dyn_t.sqrt_1mg,
            c.dyn_p.sqrt_g,
            c.dyn_p.sqrt_1mg,
            c.sqrt_ab_t,
            c.sqrt_1mab_t,
            c.sqrt_ab_p,
            c.eps_weight,
            c.sigma,
            c.eps_from_xt,
            c.eps_from_out,
        ];
        w.extend(
            [
                k.seed as u32,
                (k.seed >> 32) as u32,
                k.purpose as u32,
                k.step,
            ]
            .map(f32::from_bits),
        );
        w
    }

    /// The step that [`DdimStep::words`] wrote; an error names what is malformed.
    pub fn from_words(w: &[f32]) -> Result<DdimStep> {
        if w.len() != DdimStep::WORDS {
            return Err(Error::shape(
                "ddim_step",
                format!(
                    "the step's values hold {} words; expected {}",
                    w.len(),
                    DdimStep::WORDS
                ),
            ));
        }
        let u = |i: usize| w[i].to_bits();
        let purpose = crate::rng::Purpose::from_u32(u(13)).ok_or_else(|| {
            Error::shape("ddim_step", format!("noise purpose {} is unknown", u(13)))
        })?;
        Ok(DdimStep {
            coef: DdimCoef {
                dyn_t: DynCoef {
                    sqrt_g: w[0],
                    sqrt_1mg: w[1],
                },
                dyn_p: DynCoef {
                    sqrt_g: w[2],
                    sqrt_1mg: w[3],
                },
                sqrt_ab_t: w[4],
                sqrt_1mab_t: w[5],
                sqrt_ab_p: w[6],
                eps_weight: w[7],
                sigma: w[8],
                eps_from_xt: w[9],
                eps_from_out: w[10],
            },
            key: NoiseKey {
                seed: u64::from(u(11)) | (u64::from(u(12)) << 32),
                purpose,
                step: u(14),
            },
        })
    }
}

/// Noise rows as 4-byte words (`f32` bit patterns), as the device reads them: every row's sample,
/// then every row's member.
pub fn row_words(rows: &[NoiseRow]) -> Vec<f32> {
    let samples = rows.iter().map(|r| f32::from_bits(r.sample));
    samples
        .chain(rows.iter().map(|r| f32::from_bits(r.member)))
        .collect()
}

/// The rows that [`row_words`] wrote.
pub fn rows_from_words(w: &[f32]) -> Vec<NoiseRow> {
    let (samples, members) = w.split_at(w.len() / 2);
    samples
        .iter()
        .zip(members)
        .map(|(s, m)| NoiseRow {
            sample: s.to_bits(),
            member: m.to_bits(),
        })
        .collect()
}

/// Dropout (Srivastava et al., 2014) of `rows` rows of `row_len` values each, its masks drawn
/// from Philox (docs/random.md, “Dropout masks”): value `e` of row `r` is kept, times
/// `1/(1 − p)`, or zeroed, by the mask of layer `layer` under `key` for that row's (sample,
/// member). The mask is a pure function of the key, the layer, the row's pair and `e`, so its
/// backward pass is the same operation on the gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutGeom {
    pub key: NoiseKey,
    /// The layer's index in its network (below [`crate::rng::MAX_DROPOUT_LAYERS`]).
    pub layer: u32,
    /// The probability of zeroing a value, `0 ≤ p < 1`.
    pub p: f32,
    pub rows: usize,
    /// Values per row (at most [`crate::rng::MAX_DROPOUT_ROW`]).
    pub row_len: usize,
}

/// Checks a dropout's operands: `len` values in `rows × row_len`, `row_words = 2·rows`, the
/// layer, the row length and `p` within what the counter layout and the op allow.
pub fn check_dropout(len: usize, row_words: usize, g: &DropoutGeom) -> Result<()> {
    if g.rows.checked_mul(g.row_len) != Some(len) || row_words != 2 * g.rows {
        return Err(Error::shape(
            "dropout",
            format!(
                "{len} values and {row_words} noise-row words; expected {} rows × {} values and {} words",
                g.rows,
                g.row_len,
                2 * g.rows
            ),
        ));
    }
    if g.layer >= crate::rng::MAX_DROPOUT_LAYERS || g.row_len > crate::rng::MAX_DROPOUT_ROW {
        return Err(Error::shape(
            "dropout",
            format!(
                "layer {} with rows of {} values; the mask counter holds at most {} layers of {} values",
                g.layer,
                g.row_len,
                crate::rng::MAX_DROPOUT_LAYERS,
                crate::rng::MAX_DROPOUT_ROW
            ),
        ));
    }
    if !(0.0..1.0).contains(&g.p) {
        return Err(Error::Invalid(format!(
            "dropout probability {}: expected 0 ≤ p < 1",
            g.p
        )));
    }
    Ok(())
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
    /// [`DdimStep::words`] of its coefficients and noise key) and, when `σ > 0`, its fresh noise
    /// drawn from the key for the sequences' noise `rows` ([`row_words`], `2·batch` words;
    /// docs/random.md): `z` is `Device::randn(key, rows, diffused·elems)`. The CPU reads the
    /// words, draws, then steps; the GPU's kernel reads them and draws each value itself.
    fn ddim_step_drawn(
        &self,
        eps_hat: &Self,
        step: &Self,
        rows: &Self,
        g: &ProcessGeom,
    ) -> Result<Self>;
    /// [`DropoutGeom`] on `self` `(rows, row_len)`, the rows' (sample, member) pairs given as
    /// [`row_words`] (`2·rows` words).
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

fn one<T, S>(x: T, f: impl Fn(T) -> S) -> Result<S> {
    Ok(f(x))
}
fn two<T, S>(x: (T, T), f: impl Fn(T) -> S) -> Result<(S, S)> {
    Ok((f(x.0), f(x.1)))
}
fn three<T, S>(x: (T, T, T), f: impl Fn(T) -> S) -> Result<(S, S, S)> {
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
        dispatch!(self, |s, w; opt b| s.conv2d(w, b, g), one)
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
            let one = |s: &'a Storage| pick(s).ok_or_else(device_mismatch);
            let norm = match norm {
                Some(n) => Some(FusedNorm {
                    gamma: one(n.gamma)?,
                    beta: one(n.beta)?,
                    groups: n.groups,
                    eps: n.eps,
                }),
                None => None,
            };
            let mut p = Vec::with_capacity(projections.len());
            for &(w, b) in projections {
                p.push((one(w)?, inner(b, &pick)?));
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
            let one = |s: &'a Storage| pick(s).ok_or_else(device_mismatch);
            let opt = |s: Option<&'a Storage>| inner(s, &pick);
            Ok(FusedConv {
                geom: f.geom,
                x2: match f.x2 {
                    Some((s, c2)) => Some((one(s)?, c2)),
                    None => None,
                },
                upsample: f.upsample,
                shortcut: match f.shortcut {
                    Some((w, b)) => Some((one(w)?, opt(b)?)),
                    None => None,
                },
                norm: match f.norm {
                    Some(n) => Some(FusedNorm {
                        gamma: one(n.gamma)?,
                        beta: one(n.beta)?,
                        groups: n.groups,
                        eps: n.eps,
                    }),
                    None => None,
                },
                silu: f.silu,
                w: one(f.w)?,
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
        dispatch!(self, |s, b| s.matmul(b, g), one)
    }
    pub fn linear(
        &self,
        w: &Storage,
        b: Option<&Storage>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<Storage> {
        dispatch!(self, |s, w; opt b| s.linear(w, b, m, k, n), one)
    }
    pub fn sum_rows(&self, rows: usize, cols: usize) -> Result<Storage> {
        dispatch!(self, |s| s.sum_rows(rows, cols), one)
    }
    pub fn group_norm(
        &self,
        gamma: &Storage,
        beta: &Storage,
        g: &NormGeom,
    ) -> Result<(Storage, Storage)> {
        dispatch!(self, |s, gamma, beta| s.group_norm(gamma, beta, g), two)
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
            three
        )
    }
    pub fn silu(&self) -> Result<Storage> {
        dispatch!(self, |s| s.silu(), one)
    }
    pub fn silu_backward(&self, dy: &Storage) -> Result<Storage> {
        dispatch!(self, |s, dy| s.silu_backward(dy), one)
    }
    pub fn attention(&self, k: &Storage, v: &Storage, g: &AttnGeom) -> Result<Storage> {
        dispatch!(self, |s, k, v| s.attention(k, v, g), one)
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
        dispatch!(self, |s| s.upsample_nearest2x(nc, h, w), one)
    }
    pub fn upsample_nearest2x_backward(&self, nc: usize, h: usize, w: usize) -> Result<Storage> {
        dispatch!(self, |s| s.upsample_nearest2x_backward(nc, h, w), one)
    }
    pub fn binary(&self, rhs: &Storage, op: BinaryOp) -> Result<Storage> {
        dispatch!(self, |s, rhs| s.binary(rhs, op), one)
    }
    pub fn affine(&self, mul: f32, add: f32) -> Result<Storage> {
        dispatch!(self, |s| s.affine(mul, add), one)
    }
    pub fn add_channel_bias(&self, b: &Storage, n: usize, c: usize, hw: usize) -> Result<Storage> {
        dispatch!(self, |s, b| s.add_channel_bias(b, n, c, hw), one)
    }
    pub fn transpose12(&self, n: usize, a: usize, b: usize) -> Result<Storage> {
        dispatch!(self, |s| s.transpose12(n, a, b), one)
    }
    pub fn concat_channels(
        parts: &[&Storage],
        n: usize,
        cs: &[usize],
        hw: usize,
    ) -> Result<Storage> {
        /// The inner storages of `parts`, all of which must be on the backend `pick` accepts.
        fn all<'a, S>(
            parts: &[&'a Storage],
            pick: fn(&'a Storage) -> Option<&'a S>,
        ) -> Result<Vec<&'a S>> {
            parts
                .iter()
                .map(|p| pick(p).ok_or_else(device_mismatch))
                .collect()
        }
        match parts.first() {
            Some(Storage::Cpu(_)) => {
                let ps = all(parts, |p| {
                    if let Storage::Cpu(x) = p {
                        Some(x)
                    } else {
                        None
                    }
                })?;
                cpu::CpuStorage::concat_channels(&ps, n, cs, hw).map(Storage::Cpu)
            }
            Some(Storage::Cuda(_)) => {
                let ps = all(parts, |p| {
                    if let Storage::Cuda(x) = p {
                        Some(x)
                    } else {
                        None
                    }
                })?;
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
        dispatch!(self, |s| s.slice_channels(n, c, hw, start, end), one)
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
            one
        )
    }
    pub fn dynamics(&self, g: &SeqGeom, coefs: &[DynCoef], inverse: bool) -> Result<Storage> {
        dispatch!(self, |s| s.dynamics(g, coefs, inverse), one)
    }
    pub fn q_sample(
        &self,
        eps: &Storage,
        g: &ProcessGeom,
        coefs: &[QSampleCoef],
    ) -> Result<(Storage, Storage)> {
        dispatch!(self, |s, eps| s.q_sample(eps, g, coefs), two)
    }
    pub fn ddim_step(
        &self,
        eps_hat: &Storage,
        z: Option<&Storage>,
        g: &ProcessGeom,
        c: &DdimCoef,
    ) -> Result<Storage> {
        dispatch!(self, |s, eps_hat; opt z| s.ddim_step(eps_hat, z, g, c), one)
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
            one
        )
    }
    pub fn dropout(&self, rows: &Storage, g: &DropoutGeom) -> Result<Storage> {
        dispatch!(self, |s, rows| s.dropout(rows, g), one)
    }
    pub fn loss(&self, target: &Storage, kind: LossKind) -> Result<Storage> {
        dispatch!(self, |s, target| s.loss(target, kind), one)
    }
    pub fn loss_backward(&self, target: &Storage, g: &Storage, kind: LossKind) -> Result<Storage> {
        dispatch!(self, |s, target, g| s.loss_backward(target, g, kind), one)
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
        fn all<'a, S>(
            grads: &[&'a Storage],
            pick: fn(&'a Storage) -> Option<&'a S>,
        ) -> Result<Vec<&'a S>> {
            grads
                .iter()
                .map(|g| pick(g).ok_or_else(device_mismatch))
                .collect()
        }
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
            one
        )
    }
}
