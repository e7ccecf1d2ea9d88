//! What the `dydiff` binary runs: one module per subcommand, each with one public entry taking
//! a typed options struct.

pub mod bench;
pub mod data;
pub mod denoise;
pub mod eval;
pub mod sample;
pub mod train;
