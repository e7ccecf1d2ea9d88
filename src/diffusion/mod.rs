//! The diffusion processes as pure functions of schedules and tensors, one module per part of the
//! reference: [`schedule`] (docs/schedules.md), [`dynamics`] (docs/process.md, “Dynamics”),
//! [`process`] (docs/process.md, “Forward process”), [`ddim`] (docs/process.md, “Sampling”). The
//! sampling loop that puts them in order is [`crate::pipelines::sample`].

pub mod ddim;
pub mod dynamics;
pub mod process;
pub mod schedule;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Checks that a tensor whose first axis is the batch holds `frames` frames of equal size per
/// sequence; returns `(batch, elems per frame)`.
fn seq_dims(x: &Tensor, frames: usize, op: &'static str) -> Result<(usize, usize)> {
    let batch = *x.shape().first().unwrap_or(&0);
    let per = x.elem_count().checked_div(batch).unwrap_or(0);
    if batch == 0 || frames == 0 || !per.is_multiple_of(frames) {
        return Err(Error::shape(
            op,
            format!("shape {:?} is not a batch of {frames} frames", x.shape()),
        ));
    }
    Ok((batch, per / frames))
}

/// Refuses tensors a gradient would flow through: the process operations have no backward rule.
fn untracked(inputs: &[&Tensor], op: &'static str) -> Result<()> {
    if Tensor::recorded(inputs) {
        return Err(Error::shape(op, "no gradient flows through this operation"));
    }
    Ok(())
}
