//! The default model and demo observations built into the binary, so that `dydiff sample`
//! with no arguments forecasts something real: a small Dynamical Diffusion model with circular
//! padding trained by `experiments/builtin.sh` on generated 2-D turbulence (4 history and 6
//! future frames of the velocity `(u, v)` at 32×32; see `assets/default/dydiff.json` for its
//! training recipe) and four held-out sequences of the same flow.
//!
//! The files are written once to a folder under the system's temporary directory (named by
//! a hash of their content, each file atomically), from where the ordinary loaders read them.

use crate::error::{Error, Result};
use crate::io::atomic;
use std::path::PathBuf;

/// `(path inside the model folder, content)`.
const MODEL_FILES: [(&str, &[u8]); 4] = [
    (
        "dydiff.json",
        include_bytes!("../../assets/default/dydiff.json"),
    ),
    (
        "scheduler/scheduler_config.json",
        include_bytes!("../../assets/default/scheduler/scheduler_config.json"),
    ),
    (
        "unet/config.json",
        include_bytes!("../../assets/default/unet/config.json"),
    ),
    (
        "unet/diffusion_pytorch_model.safetensors",
        include_bytes!("../../assets/default/unet/diffusion_pytorch_model.safetensors"),
    ),
];

/// Demo observations `(4, 10, 2, 32, 32)`: history and truth.
const DEMO: &[u8] = include_bytes!("../../assets/default/demo.npy");
/// The demo's channel record: `u`, `v`.
const DEMO_CHANNELS: &[u8] = include_bytes!("../../assets/default/demo.channels.json");

/// FNV-1a over all embedded bytes: the folder name, so that another build never reuses it.
fn content_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for bytes in MODEL_FILES
        .iter()
        .map(|(_, b)| *b)
        .chain([DEMO, DEMO_CHANNELS])
    {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Writes the embedded model folder and demo with its channel record (if not there already) and
/// returns
/// `(model folder, demo observations)`.
pub fn materialize() -> Result<(PathBuf, PathBuf)> {
    let root = std::env::temp_dir().join(format!("dydiff-default-{:016x}", content_hash()));
    let model = root.join("model");
    for (name, bytes) in MODEL_FILES.iter().map(|(n, b)| (model.join(n), *b)).chain([
        (root.join("demo.npy"), DEMO),
        (root.join("demo.channels.json"), DEMO_CHANNELS),
    ]) {
        let fresh = std::fs::read(&name).map(|old| old != bytes).unwrap_or(true);
        if fresh {
            let dir = name
                .parent()
                .ok_or_else(|| Error::bad_file(&name, "no parent folder"))?;
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            atomic::write(&name, bytes)?;
        }
    }
    Ok((model, root.join("demo.npy")))
}
