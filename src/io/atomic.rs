//! Temporaries and atomic file output: every file or folder this crate writes is first made as a
//! temporary beside (or inside) its target, on the same filesystem, and renamed into place only
//! when complete, so that a failure never leaves a partial file under the target's name.
//!
//! Temporaries are named `.NAME.tmpPID.N` and, while they exist, listed in one process-wide
//! registry. [`remove_temporaries_on_signal`] installs a handler for SIGINT, SIGTERM and SIGHUP
//! that removes every listed temporary and then ends the process as the signal's default action
//! would (a shell reports status 130 for SIGINT, 143 for SIGTERM). Temporaries are created,
//! renamed and removed only while the registry is locked, and the handler keeps it locked until
//! the process has ended, so no temporary can appear after the clean-up and no rename can
//! happen half-way through it.

use crate::error::{Error, Result};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The temporaries that exist now.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Numbers the temporaries of this process, so that no two share a name.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// The registry of live temporaries, locked: while a `Registry` is held no temporary is created,
/// renamed or removed by another thread.
pub(crate) struct Registry(MutexGuard<'static, Vec<PathBuf>>);

/// Locks the registry of live temporaries.
pub(crate) fn registry() -> Registry {
    Registry(LIVE.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Removes a file, or a folder with everything in it; a path that is gone already is fine.
fn remove(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// A fresh temporary name in `dir` for a target named `name`: `dir/.NAME.tmpPID.N`.
pub(crate) fn temp_name(dir: &Path, name: &OsStr) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut s = OsString::from(".");
    s.push(name);
    s.push(format!(".tmp{}.{n}", std::process::id()));
    dir.join(s)
}

/// The most bytes a path component may have (NAME_MAX of Linux filesystems).
pub(crate) const NAME_MAX: usize = 255;

/// The length in bytes of the longest temporary name [`temp_name`] gives a target named `name`
/// (counting up to 10 digits of temporaries numbered in this process).
pub(crate) fn temp_name_len(name: &OsStr) -> usize {
    use std::os::unix::ffi::OsStrExt;
    format!(".tmp{}.{}", std::process::id(), u32::MAX).len() + 1 + name.as_bytes().len()
}

/// A temporary file or folder, listed in the registry while it exists and removed when dropped,
/// unless it has been renamed into place.
#[derive(Debug)]
pub(crate) struct Temp {
    /// `None` once renamed into place.
    path: Option<PathBuf>,
}

impl Temp {
    /// Creates the new file `path` (it must not exist) and lists it.
    pub(crate) fn file(path: PathBuf) -> std::io::Result<(Temp, File)> {
        let mut reg = registry();
        let f = File::options().write(true).create_new(true).open(&path)?;
        reg.0.push(path.clone());
        Ok((Temp { path: Some(path) }, f))
    }

    /// Creates the new folder `path` (it must not exist) and lists it.
    pub(crate) fn dir(path: PathBuf) -> std::io::Result<Temp> {
        let mut reg = registry();
        std::fs::create_dir(&path)?;
        reg.0.push(path.clone());
        Ok(Temp { path: Some(path) })
    }

    /// Where the temporary is.
    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().expect("a temporary not yet placed")
    }

    /// Creates the new file `name` (a relative path, folders created as needed) inside this
    /// temporary folder.
    pub(crate) fn file_in(&self, name: &Path) -> std::io::Result<File> {
        let _reg = registry();
        let path = self.path().join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        File::options().write(true).create_new(true).open(&path)
    }

    /// Marks the temporary as moved into place by the holder of `reg`: it is no longer listed,
    /// nor removed on drop.
    pub(crate) fn placed(mut self, reg: &mut Registry) {
        let path = self.path.take().expect("a temporary not yet placed");
        reg.0.retain(|p| *p != path);
    }

    /// Renames the temporary to `to`, replacing what is there.
    pub(crate) fn rename_to(self, to: &Path) -> std::io::Result<()> {
        let mut reg = registry();
        std::fs::rename(self.path(), to)?;
        self.placed(&mut reg);
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let mut reg = registry();
            remove(&path);
            reg.0.retain(|p| *p != path);
        }
    }
}

/// Writes `bytes` to the new temporary file `path`, flushed to disk.
pub(crate) fn write_temp(path: PathBuf, bytes: &[u8]) -> std::io::Result<Temp> {
    let (tmp, mut f) = Temp::file(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(tmp)
}

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::bad_file(path, "expected a file path, found no file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    write_temp(temp_name(dir, name), bytes)
        .and_then(|tmp| tmp.rename_to(path))
        .map_err(|e| Error::io(path, e))
}

/// What the process says when a signal ends it (set by [`on_interrupt_say`]; empty: the
/// default).
static NOTE: Mutex<String> = Mutex::new(String::new());

/// Whether a signal ends the process silently ([`quiet_on_interrupt`]).
static QUIET: AtomicBool = AtomicBool::new(false);

/// Makes an interrupt end the process without a word: for the ranks of an MPI job, which the
/// launcher ends with a signal when one of them fails (that rank's error is the job's one line).
pub fn quiet_on_interrupt() {
    QUIET.store(true, Ordering::Relaxed);
}

/// Sets what the process says on stderr when SIGINT, SIGTERM or SIGHUP ends it, after
/// `dydiff: interrupted; ` — by default that no output was written (outputs appear whole at the
/// end of a command); a training run names its last checkpoint and the command that resumes.
pub fn on_interrupt_say(note: String) {
    *NOTE.lock().unwrap_or_else(PoisonError::into_inner) = note;
}

/// Installs the process's handler of SIGINT, SIGTERM and SIGHUP: it removes every live
/// temporary, says what was kept ([`on_interrupt_say`]), then ends the process as the signal
/// would have without a handler. Call it once, at the start of a program.
pub fn remove_temporaries_on_signal() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                // Held until the process ends: nothing is created or renamed after this.
                let reg = registry();
                for path in reg.0.iter() {
                    remove(path);
                }
                let note = NOTE.lock().unwrap_or_else(PoisonError::into_inner);
                let note = if note.is_empty() {
                    "no output was written"
                } else {
                    note.as_str()
                };
                if !QUIET.load(Ordering::Relaxed) {
                    eprintln!("\ndydiff: interrupted; {note}");
                }
                // Restores the default action and raises the signal again, which ends the
                // process (the function aborts if that fails).
                let _ = signal_hook::low_level::emulate_default_handler(signal);
            }
        })?;
    Ok(())
}
