//! Vectorisation helpers: functions compiled once for AVX-512, once for AVX2+FMA and once for the
//! baseline, chosen at run time, so that one binary runs everywhere and uses the widest vectors
//! the machine has; and a polynomial `exp` that the compiler can vectorise.

/// Defines `fn $name(args) -> R` whose body is compiled for AVX-512 and AVX2+FMA too, with the
/// variant picked by run-time CPU detection.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])* $vis fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn inner($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                unsafe fn v4($($a: $t),*) $(-> $r)? { inner($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($a: $t),*) $(-> $r)? { inner($($a),*) }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512dq") {
                    // SAFETY: the CPU has the features v4 was compiled for.
                    return unsafe { v4($($a),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features v3 was compiled for.
                    return unsafe { v3($($a),*) };
                }
            }
            inner($($a),*)
        }
    };
}
pub(crate) use simd_fn;

/// `eˣ` to about 2 ulp for `x ≥ −87` (0 below), written so that loops over it vectorise:
/// `x = n·ln2 + r`, `|r| ≤ ln2/2` (Cody–Waite split of ln2), `eʳ` by its degree-7 Taylor
/// polynomial, `2ⁿ` by exponent bits. (A saturating float-to-int cast would stop LLVM from
/// vectorising the loop; `n` is in range by construction, so the unchecked cast is used.)
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * LOG2E).round_ties_even();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // SAFETY: |xc·log2 e| ≤ 127, so n is an integer in [−126, 127].
    let ni = unsafe { n.to_int_unchecked::<i32>() };
    let y = p * f32::from_bits(((ni + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        y
    }
}

/// The logistic function `1 / (1 + e^{−x})`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Lanes of the reductions below: independent partial results that the compiler keeps in one
/// vector register, instead of one serial chain.
const LANES: usize = 16;

/// `max(v)` (−∞ for an empty slice).
#[inline(always)]
pub fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    rest.iter().fold(
        acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)),
        |a, &b| a.max(b),
    )
}

/// `v ← e^{v − m}` in place, returning `Σ e^{v − m}`.
#[inline(always)]
pub fn exp_sub_sum(v: &mut [f32], m: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = v.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp(c[i] - m);
            acc[i] += c[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp(*x - m);
        s += *x;
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_matches_std() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (super::exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.01237;
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(super::exp(-100.0), 0.0);
    }
}
