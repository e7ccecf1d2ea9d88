//! The launchers' checks of their operands, each failure one line naming the operation.

use crate::error::{Error, Result};

/// That operand `what` of `op` holds `want` values.
pub fn len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("{what} holds {got} values, expected {want}"),
        ))
    }
}

/// `v` as a kernel's 32-bit integer parameter `what`.
pub fn int(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::shape(op, format!("{what} = {v} exceeds 2^31 - 1")))
}

/// `n` blocks (at least one) as a launch's grid dimension `what`.
pub fn grid(op: &'static str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n.max(1)).map_err(|_| Error::shape(op, format!("{n} {what}")))
}
