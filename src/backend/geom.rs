//! The shapes of the operations: a convolution's, group norm's, attention's, a batched
//! product's, a frame sequence's and the forward process's, and a dropout's with its checks.

use crate::error::{Error, Result};
use crate::rng::NoiseKey;

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

value_enum_by_name!(PadMode, [PadMode::Zeros, PadMode::Circular]);

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

/// Which frames a sequence holds and which the process diffuses: `history` known frames (`P + 1`)
/// followed by `future` frames (`S`), the future diffused — or with `diffuse_history` every frame
/// (docs/process.md, “Diffusing the history”). [`ProcessGeom`] without the batch and frame size,
/// which an operation reads from its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameScope {
    pub history: usize,
    pub future: usize,
    pub diffuse_history: bool,
}

impl FrameScope {
    /// Frames of a whole sequence, `P + 1 + S`.
    pub fn frames(self) -> usize {
        self.history + self.future
    }
    /// Frames the process diffuses: `S`, or `P + 1 + S` with `diffuse_history`.
    pub fn diffused(self) -> usize {
        if self.diffuse_history {
            self.frames()
        } else {
            self.future
        }
    }
    /// Frames of the network input and the sampler state: the history, then the diffused frames.
    pub fn state_frames(self) -> usize {
        self.history + self.diffused()
    }
    /// The geometry of `batch` sequences of frames of `elems` values in this scope.
    pub fn geom(self, batch: usize, elems: usize) -> ProcessGeom {
        ProcessGeom {
            batch,
            history: self.history,
            future: self.future,
            elems,
            diffuse_history: self.diffuse_history,
        }
    }
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
    /// Which frames the sequences hold and which the process diffuses.
    pub fn scope(&self) -> FrameScope {
        FrameScope {
            history: self.history,
            future: self.future,
            diffuse_history: self.diffuse_history,
        }
    }
    /// Frames of a whole sequence, `P + 1 + S` ([`FrameScope::frames`]).
    pub fn frames(&self) -> usize {
        self.scope().frames()
    }
    /// Frames the process diffuses ([`FrameScope::diffused`]).
    pub fn diffused(&self) -> usize {
        self.scope().diffused()
    }
    /// Frames of the network input and the sampler state ([`FrameScope::state_frames`]).
    pub fn state_frames(&self) -> usize {
        self.scope().state_frames()
    }
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
