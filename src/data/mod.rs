//! Data generators (`dydiff data …`): physical simulations written as `(N, L, C, H, W)` float32
//! sequences (docs/data.md).

pub mod channels;
pub mod navier_stokes;
pub mod spring_mesh;
