//! Data generators (`dydiff data …`): physical simulations written as `(N, L, C, H, W)` float32
//! sequences (SPEC §1).

pub mod navier_stokes;
