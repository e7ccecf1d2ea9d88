//! Dynamics and inverse dynamics along the frame axis (docs/process.md, “Dynamics”):
//!
//! `Dyn_γ(x)`: `y^0 = x^0`, `y^i = √γ·x^i + √(1−γ)·y^{i−1}`;
//! `InvDyn_γ(y)`: `x^0 = y^0`, `x^i = (y^i − √(1−γ)·y^{i−1}) / √γ`.
//!
//! Each is one backend operation, a single pass over memory.

use super::{seq_dims, untracked};
use crate::backend::{DynCoef, SeqGeom};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// `Dyn_γ` (or `InvDyn_γ` if `inverse`) over `frames` frames of each sequence of the batch
    /// `self (B, …)`, with `γ = gammas[b]` for sequence `b`; the chain starts at each sequence's
    /// first frame.
    pub fn dynamics(&self, frames: usize, gammas: &[f64], inverse: bool) -> Result<Tensor> {
        untracked(&[self], "dynamics")?;
        let (batch, elems) = seq_dims(self, frames, "dynamics")?;
        if gammas.len() != batch || gammas.iter().any(|g| !(*g > 0.0 && *g <= 1.0)) {
            return Err(Error::shape(
                "dynamics",
                format!("expected {batch} values of γ in (0, 1], found {gammas:?}"),
            ));
        }
        let coefs: Vec<DynCoef> = gammas.iter().map(|&g| DynCoef::new(g)).collect();
        let g = SeqGeom {
            batch,
            frames,
            elems,
        };
        Tensor::from_storage(self.storage().dynamics(&g, &coefs, inverse)?, self.shape())
    }
}
