//! How the network's products multiply (docs/devices.md, “Precision”): each backend holds its
//! own setting ([`super::cpu::set_precision`], [`super::cuda::set_precision`]), which the
//! command line sets from `--precision`.

/// How the network's products multiply: float32, or with operands rounded to TF32 (10 mantissa
/// bits; the GPU's tensor cores) or to bf16 (7 mantissa bits; the GPU's tensor cores, and CPUs
/// with AVX512-BF16), with float32 accumulation either way. Storage is float32 throughout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Tf32,
    Bf16,
}

value_enum_by_name!(
    Precision,
    [Precision::Fp32, Precision::Tf32, Precision::Bf16]
);

impl Precision {
    /// `fp32`, `tf32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}
