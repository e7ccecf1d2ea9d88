//! Error type for the whole crate. Every message is one line that names the file, array, key or
//! flag at fault, what was expected and what was found (docs/cli.md, “Errors”).

use std::path::{Path, PathBuf};

/// The crate's error. `Display` gives the one-line message shown to users.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that exists but whose content is not what it should be.
    #[error("{}: {msg}", path.display())]
    BadFile { path: PathBuf, msg: String },
    /// An unsupported or inconsistent model configuration.
    #[error("{0}")]
    Config(String),
    /// Two tensors or a tensor and an operation disagree on shapes.
    #[error("shape mismatch in {op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// A backend that is not available in this build or on this machine.
    #[error("{0}")]
    Backend(String),
    /// A user-supplied value outside its allowed range.
    #[error("{0}")]
    Invalid(String),
    /// An output location given by a flag that cannot receive the output.
    #[error("{flag} {}: expected {expected}, found {found}", path.display())]
    Output {
        flag: String,
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// A failure on one rank of a many-process run (docs/distributed.md), reported by that rank
    /// once every rank has learnt of it.
    #[error("rank {rank} of {size}: {source}")]
    OnRank {
        rank: usize,
        size: usize,
        source: Box<Error>,
    },
    /// Another rank of a many-process run failed and reports it; this rank stops without a word.
    #[error("another rank failed")]
    OtherRank,
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub fn bad_file(path: &Path, msg: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
