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

/// The constants `[mul, shift]` of `kernels/ptx.cuh`'s `fast_div`, which divides values below
/// 2³¹ by `d` (1 to 2³¹) with a multiply and a shift: `shift = ⌈log₂ d⌉`,
/// `mul = ⌊2³²·(2^shift − d)/d⌋ + 1`.
pub fn fast_div(op: &'static str, what: &str, d: usize) -> Result<[u32; 2]> {
    if d == 0 || d > 1 << 31 {
        return Err(Error::shape(op, format!("{what} = {d} (1 to 2^31)")));
    }
    let shift = usize::BITS - (d - 1).leading_zeros();
    let mul = ((1u64 << 32) * ((1u64 << shift) - d as u64)) / d as u64 + 1;
    Ok([mul as u32, shift])
}

#[cfg(test)]
mod tests {
    use super::fast_div;

    /// `fast_div`'s constants give `q / d` for every `q` below 2³¹ tried, small and large `d`.
    #[test]
    fn fast_division_constants_divide_exactly() {
        let mut seed = 1u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let ds: Vec<u32> = (1..3000).chain((0..3000).map(|_| next().max(1))).collect();
        for d in ds {
            let [mul, shift] = fast_div("test", "d", d as usize).unwrap();
            let qs = [
                0,
                1,
                d - 1,
                d,
                d.saturating_add(1),
                (1 << 31) - 1,
                (1 << 31) - 2,
            ];
            for q in qs.into_iter().chain((0..100).map(|_| next())) {
                let q = q & 0x7fff_ffff;
                let hi = ((u64::from(q) * u64::from(mul)) >> 32) as u32;
                assert_eq!((hi + q) >> shift, q / d, "{q} / {d}");
            }
        }
        assert!(fast_div("test", "d", 0).is_err());
    }
}
