//! The closed set of primitive operations, and the storages that implement them.
//!
//! Everything above this module (tensors, autograd, layers, pipelines) calls [`Storage`], which
//! dispatches to the backend holding the data: [`cpu::CpuStorage`] (the reference, and fast) or
//! [`cuda::CudaStorage`]. Both implement [`BackendStorage`]; a new backend implements that trait
//! and adds a variant here. Without the `cuda` feature the CUDA storage type is uninhabited, so no
//! `cfg` leaks upward: creating a CUDA device returns a "built without CUDA" error.
//!
//! One job a file: `storage.rs` the device and the dispatch, `ops.rs` the operation set,
//! `geom.rs` the operations' shapes, `precision.rs` how the products multiply, `process.rs` the process's coefficients and a captured
//! step's words — all of them named from here (`backend::ConvGeom`).
//!
//! Layout: all image tensors are NCHW, row-major (see [`cpu::conv`] for why).

pub mod cpu;
pub mod cuda;
mod geom;
mod ops;
mod precision;
mod process;
mod storage;

pub use geom::{
    check_dropout, AttnGeom, ConvGeom, DropoutGeom, FrameScope, MatmulGeom, NormGeom, PadMode,
    ProcessGeom, SeqGeom,
};
pub use ops::{shortcut_geom, AdamStep, BackendStorage, BinaryOp, FusedConv, FusedNorm, LossKind};
pub use precision::Precision;
pub use process::{
    row_words, rows_from_words, DdimCoef, DdimStep, DynCoef, Prediction, QSampleCoef,
};
pub use storage::{Device, Storage};
