//! Reverse-mode automatic differentiation on a tape that records only while training.
//!
//! A [`Tape`] guard switches recording on for the current thread. Each operation on a tracked
//! tensor appends a [`Node`]; [`backward`] walks the nodes in reverse, applying each op's rule
//! from the one table in `Op::backward`. Parameter gradients accumulate (`+=`) in the
//! parameters, so micro-batch accumulation is free; activation gradients live only during the
//! walk.

use crate::backend::{
    AttnGeom, BinaryOp, ConvGeom, DropoutGeom, LossKind, MatmulGeom, NormGeom, Storage,
};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::cell::RefCell;
use std::collections::HashMap;

/// What an operation must remember for its backward rule.
#[derive(Debug)]
pub enum Op {
    Conv2d {
        g: ConvGeom,
    },
    Linear {
        m: usize,
        k: usize,
        n: usize,
    },
    GroupNorm {
        g: NormGeom,
        stats: Storage,
    },
    Silu,
    Attention {
        g: AttnGeom,
        /// The output and the statistics the backend's backward reuses, when it saved them.
        saved: Option<(Storage, Storage)>,
    },
    Upsample {
        nc: usize,
        h: usize,
        w: usize,
    },
    Binary(BinaryOp),
    Scale(f32),
    AddChannelBias {
        n: usize,
        c: usize,
        hw: usize,
    },
    Transpose12 {
        n: usize,
        a: usize,
        b: usize,
    },
    Concat {
        n: usize,
        cs: Vec<usize>,
        hw: usize,
    },
    Slice {
        n: usize,
        c: usize,
        hw: usize,
        start: usize,
        end: usize,
    },
    /// The mean squared or absolute error of its two inputs.
    Loss(LossKind),
    Dropout {
        g: DropoutGeom,
        /// The rows' (sample, member) pairs, as the op read them.
        rows: Storage,
    },
    Reshape,
}

/// One recorded operation: its output, its inputs and its rule.
pub struct Node {
    out: u64,
    inputs: Vec<Tensor>,
    op: Op,
}

thread_local! {
    static TAPE: RefCell<Option<Vec<Node>>> = const { RefCell::new(None) };
}

/// Records operations on this thread while alive.
pub struct Tape(());

impl Tape {
    /// Starts recording (clearing anything recorded before).
    pub fn start() -> Tape {
        TAPE.with(|t| *t.borrow_mut() = Some(Vec::new()));
        Tape(())
    }
}

impl Drop for Tape {
    fn drop(&mut self) {
        TAPE.with(|t| *t.borrow_mut() = None);
    }
}

/// Whether a tape records on this thread.
pub fn is_recording() -> bool {
    TAPE.with(|t| t.borrow().is_some())
}

pub(crate) fn record(out: &Tensor, inputs: Vec<Tensor>, op: Op) {
    TAPE.with(|t| {
        if let Some(nodes) = t.borrow_mut().as_mut() {
            nodes.push(Node {
                out: out.id(),
                inputs,
                op,
            });
        }
    });
}

/// Back-propagates from the one-element tensor `loss`: every parameter reached gets
/// `grad += ∂loss/∂param`. Consumes what the tape recorded so far.
pub fn backward(loss: &Tensor) -> Result<()> {
    if loss.elem_count() != 1 {
        return Err(Error::shape(
            "backward",
            format!("loss of shape {:?} is not a scalar", loss.shape()),
        ));
    }
    let nodes = TAPE
        .with(|t| t.borrow_mut().as_mut().map(std::mem::take))
        .unwrap_or_default();
    let mut grads: HashMap<u64, Storage> = HashMap::new();
    grads.insert(loss.id(), loss.device().storage_from_vec(vec![1.0])?);
    if loss.is_param() {
        loss.accumulate_grad(loss.device().storage_from_vec(vec![1.0])?)?;
    }
    for node in nodes.into_iter().rev() {
        let Some(g) = grads.remove(&node.out) else {
            continue;
        };
        let input_grads = node.op.backward(&node.inputs, &g)?;
        for (input, ig) in node.inputs.iter().zip(input_grads) {
            let Some(ig) = ig else { continue };
            if !input.is_tracked() {
                continue;
            }
            if input.is_param() {
                input.accumulate_grad(ig)?;
            } else {
                let entry = match grads.remove(&input.id()) {
                    Some(old) => old.binary(&ig, BinaryOp::Add)?,
                    None => ig,
                };
                grads.insert(input.id(), entry);
            }
        }
    }
    Ok(())
}

impl Op {
    /// The gradient rules: given the inputs and the output gradient `g`, the gradient of each
    /// input (`None` where it needs none).
    fn backward(&self, x: &[Tensor], g: &Storage) -> Result<Vec<Option<Storage>>> {
        let s = |i: usize| x[i].storage();
        let wants = |i: usize| x.get(i).is_some_and(|t| t.is_tracked());
        Ok(match self {
            Op::Conv2d { g: geom } => {
                let (dx, dw, db) = s(0).conv2d_backward(s(1), g, geom, wants(0))?;
                vec![dx, Some(dw), Some(db)]
            }
            Op::Linear { m, k, n } => {
                let (m, k, n) = (*m, *k, *n);
                // dx = g · w  (m×n · n×k);  dw = gᵀ · x  (n×m · m×k);  db = Σ_rows g
                let dx = wants(0)
                    .then(|| {
                        g.matmul(
                            s(1),
                            &MatmulGeom {
                                batch: 1,
                                m,
                                n: k,
                                k: n,
                                a_trans: false,
                                b_trans: false,
                            },
                        )
                    })
                    .transpose()?;
                let dw = g.matmul(
                    s(0),
                    &MatmulGeom {
                        batch: 1,
                        m: n,
                        n: k,
                        k: m,
                        a_trans: true,
                        b_trans: false,
                    },
                )?;
                let db = wants(2).then(|| g.sum_rows(m, n)).transpose()?;
                vec![dx, Some(dw), db]
            }
            Op::GroupNorm { g: geom, stats } => {
                let (dx, dgamma, dbeta) = s(0).group_norm_backward(s(1), stats, g, geom)?;
                vec![Some(dx), Some(dgamma), Some(dbeta)]
            }
            Op::Silu => vec![Some(s(0).silu_backward(g)?)],
            Op::Attention { g: geom, saved } => {
                let saved = saved.as_ref().map(|(o, l)| (o, l));
                let (dq, dk, dv) = s(0).attention_backward(s(1), s(2), g, saved, geom)?;
                vec![Some(dq), Some(dk), Some(dv)]
            }
            Op::Upsample { nc, h, w } => vec![Some(g.upsample_nearest2x_backward(*nc, *h, *w)?)],
            Op::Binary(BinaryOp::Add) => vec![Some(g.clone()), Some(g.clone())],
            Op::Binary(BinaryOp::Sub) => vec![Some(g.clone()), Some(g.affine(-1.0, 0.0)?)],
            Op::Binary(BinaryOp::Mul) => {
                vec![
                    Some(g.binary(s(1), BinaryOp::Mul)?),
                    Some(g.binary(s(0), BinaryOp::Mul)?),
                ]
            }
            Op::Binary(BinaryOp::AbsDiff) => {
                let sign = s(0).binary(s(1), BinaryOp::SignDiff)?;
                let da = g.binary(&sign, BinaryOp::Mul)?;
                let db = da.affine(-1.0, 0.0)?;
                vec![Some(da), Some(db)]
            }
            // piecewise constant: no gradient
            Op::Binary(BinaryOp::SignDiff) => vec![None, None],
            Op::Scale(a) => vec![Some(g.affine(*a, 0.0)?)],
            Op::AddChannelBias { n, c, hw } => {
                // db[n, c] = Σ_p g[n, c, p]: a product with a column of ones
                let ones = x[0].device().storage_from_vec(vec![1.0; *hw])?;
                let db = g.matmul(
                    &ones,
                    &MatmulGeom {
                        batch: 1,
                        m: n * c,
                        n: 1,
                        k: *hw,
                        a_trans: false,
                        b_trans: false,
                    },
                )?;
                vec![Some(g.clone()), Some(db)]
            }
            Op::Transpose12 { n, a, b } => vec![Some(g.transpose12(*n, *b, *a)?)],
            Op::Concat { n, cs, hw } => {
                let total: usize = cs.iter().sum();
                let mut start = 0;
                let mut out = Vec::with_capacity(cs.len());
                for &c in cs {
                    out.push(Some(g.slice_channels(*n, total, *hw, start, start + c)?));
                    start += c;
                }
                out
            }
            Op::Slice {
                n,
                c,
                hw,
                start,
                end,
            } => vec![Some(g.slice_channels_backward(*n, *c, *hw, *start, *end)?)],
            Op::Loss(kind) => {
                // d/da mean((a − b)²) = 2(a − b)/N;  d/da mean|a − b| = sign(a − b)/N
                let da = s(0).loss_backward(s(1), g, *kind)?;
                let db = da.affine(-1.0, 0.0)?;
                vec![Some(da), Some(db)]
            }
            // the mask is a pure function of the key, the layer and the rows: apply it again
            Op::Dropout { g: geom, rows } => vec![Some(g.dropout(rows, geom)?)],
            Op::Reshape => vec![Some(g.clone())],
        })
    }
}
