//! The outputs of one command, all or none: each output location is checked when it is declared,
//! before any work; each output is written to a temporary beside its target; and
//! [`Outputs::commit`] renames them all into place once all are complete. An error before the
//! commit, dropping the [`Outputs`] without committing, or an interrupt (see
//! [`super::atomic::remove_temporaries_on_signal`]) removes the temporaries, so a command that
//! fails leaves no new file behind.
//!
//! A file output needs an existing, writable directory to go in, and must not name a directory
//! or a special file (a device, a pipe, a socket). A directory output is either an existing,
//! writable directory — its other files are kept, files of the same names are replaced — or a
//! new path in an existing, writable directory, created whole at the commit. Every refusal is one
//! line naming the flag, the path, what was expected and what was found.

use super::atomic::{registry, temp_name, write_temp, Temp};
use crate::error::{Error, Result};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// What a file output expects, as the error messages say it.
const FILE_EXPECTED: &str = "a file in an existing, writable directory";
/// What a directory output expects, as the error messages say it.
const DIR_EXPECTED: &str = "a writable directory (or a path whose parent is a directory)";

/// A file output declared with [`Outputs::file`].
#[derive(Clone, Copy, Debug)]
pub struct FileOutput(usize);

/// A directory output declared with [`Outputs::dir`].
#[derive(Clone, Copy, Debug)]
pub struct DirOutput(usize);

#[derive(Debug, PartialEq)]
enum Kind {
    File,
    Dir,
}

#[derive(Debug)]
struct Entry {
    flag: String,
    target: PathBuf,
    kind: Kind,
    /// Written since the last commit: a file beside the target, or a folder beside the target
    /// (a new directory) or inside it (an existing one).
    staged: Option<Temp>,
}

/// The set of outputs of one command; see the module documentation.
#[derive(Debug, Default)]
pub struct Outputs {
    entries: Vec<Entry>,
}

/// What is at a path.
#[derive(Clone, Copy)]
enum Found {
    Nothing,
    Dir,
    File,
    /// Anything else, as an error message names it.
    Other(&'static str),
}

fn found_at(path: &Path) -> std::io::Result<Found> {
    match std::fs::metadata(path) {
        Ok(m) => {
            let t = m.file_type();
            Ok(if t.is_dir() {
                Found::Dir
            } else if t.is_file() {
                Found::File
            } else if t.is_char_device() {
                Found::Other("a character device")
            } else if t.is_block_device() {
                Found::Other("a block device")
            } else if t.is_fifo() {
                Found::Other("a named pipe")
            } else {
                Found::Other("a socket")
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Found::Nothing),
        Err(e) => Err(e),
    }
}

impl Found {
    /// As an error message names it.
    fn name(self) -> &'static str {
        match self {
            Found::Nothing => "nothing",
            Found::Dir => "a directory",
            Found::File => "a plain file",
            Found::Other(what) => what,
        }
    }
}

/// `path` as the operating system names the current directory when it is empty.
fn or_dot(path: &Path) -> &Path {
    if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    }
}

/// Whether this process may create and remove entries in the directory `dir`.
fn writable(dir: &Path) -> std::io::Result<()> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let r = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// An I/O error's message without the " (os error N)" suffix.
fn reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The directory a new entry `path` goes in, checked: it exists, is a directory and is
/// writable. `Err(found)` says what is wrong.
fn check_parent(path: &Path) -> std::result::Result<(), String> {
    let parent = or_dot(path.parent().unwrap_or(Path::new("")));
    for a in path.ancestors().skip(1) {
        let a = or_dot(a);
        match found_at(a) {
            Ok(Found::Dir) if a == parent => {
                return writable(a)
                    .map_err(|e| format!("that {} is not writable ({})", a.display(), reason(&e)));
            }
            Ok(Found::Dir) => {
                return Err(format!("that {} does not exist", parent.display()));
            }
            Ok(Found::Nothing) => {}
            Ok(what) => return Err(format!("that {} is {}", a.display(), what.name())),
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {}
            Err(e) => {
                return Err(format!(
                    "that {} cannot be examined ({})",
                    a.display(),
                    reason(&e)
                ))
            }
        }
    }
    Err(format!("that {} does not exist", parent.display()))
}

/// Checks a file output location; `Err(found)` says what is wrong.
fn check_file(path: &Path) -> std::result::Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("an empty path".into());
    }
    match found_at(path) {
        Ok(Found::Nothing | Found::File) => {}
        Ok(what) => return Err(what.name().into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {}
        Err(e) => return Err(format!("that it cannot be examined ({})", reason(&e))),
    }
    if path.as_os_str().as_bytes().ends_with(b"/") {
        return Err("a directory path (it ends in /)".into());
    }
    if path.file_name().is_none() {
        return Err("a path without a file name".into());
    }
    check_parent(path)
}

/// Checks a directory output location; `Err(found)` says what is wrong.
fn check_dir(path: &Path) -> std::result::Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("an empty path".into());
    }
    match found_at(path) {
        Ok(Found::Dir) => {
            writable(path).map_err(|e| format!("that it is not writable ({})", reason(&e)))
        }
        Ok(Found::Nothing) => check_parent(path),
        Ok(what) => Err(what.name().into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => check_parent(path),
        Err(e) => Err(format!("that it cannot be examined ({})", reason(&e))),
    }
}

/// The path an output location resolves to, for telling whether two outputs share one: the
/// location itself if it exists, else its parent's (which exists once checked) joined with its
/// name.
fn identity(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let parent = or_dot(path.parent().unwrap_or(Path::new("")));
    match (parent.canonicalize(), path.file_name()) {
        (Ok(p), Some(name)) => p.join(name),
        _ => path.to_path_buf(),
    }
}

/// Moves everything in the folder `from` into the existing directory `to`: entries `to` lacks
/// are renamed whole, folders present in both are merged, files replace files. `from` is left
/// empty.
fn merge(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(from)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        let (src, dst) = (from.join(&name), to.join(&name));
        if src.is_dir() && dst.is_dir() {
            merge(&src, &dst)?;
            std::fs::remove_dir(&src)?;
        } else {
            std::fs::rename(&src, &dst)?;
        }
    }
    Ok(())
}

impl Outputs {
    /// No outputs yet.
    pub fn new() -> Outputs {
        Outputs::default()
    }

    fn declare(&mut self, flag: &str, path: &Path, kind: Kind) -> Result<usize> {
        let checked = match kind {
            Kind::File => check_file(path),
            Kind::Dir => check_dir(path),
        };
        let fail = |expected: &str, found: String| Error::Output {
            flag: flag.to_string(),
            path: path.to_path_buf(),
            expected: expected.to_string(),
            found,
        };
        let expected = match kind {
            Kind::File => FILE_EXPECTED,
            Kind::Dir => DIR_EXPECTED,
        };
        checked.map_err(|found| fail(expected, found))?;
        let me = identity(path);
        if let Some(other) = self.entries.iter().find(|e| identity(&e.target) == me) {
            return Err(fail(
                "a path of its own",
                format!("the path of {} as well", other.flag),
            ));
        }
        self.entries.push(Entry {
            flag: flag.to_string(),
            target: path.to_path_buf(),
            kind,
            staged: None,
        });
        Ok(self.entries.len() - 1)
    }

    /// Declares the file output of `flag` at `path`, after checking that it can be written
    /// there; the error names the flag, the path, what was expected and what was found.
    pub fn file(&mut self, flag: &str, path: &Path) -> Result<FileOutput> {
        self.declare(flag, path, Kind::File).map(FileOutput)
    }

    /// Declares the directory output of `flag` at `path`, after checking that it can be written
    /// there; the error names the flag, the path, what was expected and what was found.
    pub fn dir(&mut self, flag: &str, path: &Path) -> Result<DirOutput> {
        self.declare(flag, path, Kind::Dir).map(DirOutput)
    }

    /// Stages the content of a file output (replacing what was staged for it before).
    pub fn write(&mut self, out: FileOutput, bytes: &[u8]) -> Result<()> {
        let e = &mut self.entries[out.0];
        let name = e.target.file_name().expect("checked when declared");
        let dir = or_dot(e.target.parent().unwrap_or(Path::new("")));
        e.staged = None;
        let tmp =
            write_temp(temp_name(dir, name), bytes).map_err(|err| Error::io(&e.target, err))?;
        e.staged = Some(tmp);
        Ok(())
    }

    /// Stages the file `name` (a relative path; folders in it are created) of a directory
    /// output.
    pub fn write_in(&mut self, out: DirOutput, name: &str, bytes: &[u8]) -> Result<()> {
        let e = &mut self.entries[out.0];
        let io = |err| Error::io(&e.target.join(name), err);
        if e.staged.is_none() {
            // Inside an existing directory (which may be another filesystem than its parent's),
            // else beside the new one.
            let path = if e.target.is_dir() {
                let own = e.target.file_name().unwrap_or("out".as_ref());
                temp_name(&e.target, own)
            } else {
                let name = e.target.file_name().expect("checked when declared");
                temp_name(or_dot(e.target.parent().unwrap_or(Path::new(""))), name)
            };
            e.staged = Some(Temp::dir(path).map_err(io)?);
        }
        let tmp = e.staged.as_ref().expect("staged above");
        let mut f = tmp.file_in(Path::new(name)).map_err(io)?;
        std::io::Write::write_all(&mut f, bytes)
            .and_then(|()| f.sync_all())
            .map_err(io)
    }

    /// Moves every staged output into place, once all declared outputs have been written: each
    /// location is checked again (the work may have taken long), then all are renamed, with no
    /// interrupt clean-up in between; only a target changed by someone else in that instant can
    /// make a rename fail after another succeeded. The outputs stay declared, so a long-running
    /// command may write and commit them again (a training run's checkpoints).
    pub fn commit(&mut self) -> Result<()> {
        for e in &self.entries {
            let fail = |expected: &str, found: String| Error::Output {
                flag: e.flag.clone(),
                path: e.target.clone(),
                expected: expected.to_string(),
                found,
            };
            if e.staged.is_none() {
                return Err(fail("an output to commit", "nothing written to it".into()));
            }
            match e.kind {
                Kind::File => check_file(&e.target).map_err(|f| fail(FILE_EXPECTED, f))?,
                Kind::Dir => check_dir(&e.target).map_err(|f| fail(DIR_EXPECTED, f))?,
            }
        }
        let mut reg = registry();
        for e in &mut self.entries {
            let tmp = e.staged.as_ref().expect("checked above");
            let inside = tmp.path().parent() == Some(e.target.as_path());
            let moved = match e.kind {
                Kind::File => std::fs::rename(tmp.path(), &e.target),
                Kind::Dir if !inside && !e.target.exists() => {
                    std::fs::rename(tmp.path(), &e.target)
                }
                Kind::Dir => {
                    merge(tmp.path(), &e.target).and_then(|()| std::fs::remove_dir(tmp.path()))
                }
            };
            moved.map_err(|err| Error::io(&e.target, err))?;
            e.staged.take().expect("checked above").placed(&mut reg);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d =
                std::env::temp_dir().join(format!("dydiff-outputs-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
        /// Every path under the scratch folder, hidden ones included.
        fn listing(&self) -> Vec<PathBuf> {
            let mut found = Vec::new();
            let mut stack = vec![self.0.clone()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p.clone());
                    }
                    found.push(p);
                }
            }
            found.sort();
            found
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn refusals_name_flag_path_expected_and_found() {
        let s = Scratch::new("refuse");
        let afile = s.0.join("afile");
        std::fs::write(&afile, b"x").unwrap();
        let mut o = Outputs::new();
        let cases: [(&str, PathBuf, bool, &str); 7] = [
            (
                "--png",
                afile.join("pictures"),
                true,
                "afile is a plain file",
            ),
            ("--png", afile.clone(), true, "found a plain file"),
            (
                "--png",
                s.0.join("missing/pics"),
                true,
                "missing does not exist",
            ),
            ("--out", s.0.clone(), false, "found a directory"),
            (
                "--out",
                s.0.join("missing/x.npy"),
                false,
                "missing does not exist",
            ),
            ("--out", afile.join("x.npy"), false, "afile is a plain file"),
            (
                "--out",
                PathBuf::from("/dev/null"),
                false,
                "a character device",
            ),
        ];
        for (flag, path, dir, found) in cases {
            let e = if dir {
                o.dir(flag, &path).map(|_| ())
            } else {
                o.file(flag, &path).map(|_| ())
            }
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with(&format!("{flag} {}: expected ", path.display())),
                "{e}"
            );
            assert!(e.contains(found), "{e:?} lacks {found:?}");
        }
        let trailing = PathBuf::from(format!("{}/trailing/", s.0.display()));
        let e = o.file("--out", &trailing).unwrap_err();
        assert!(e.to_string().contains("ends in /"), "{e}");
    }

    #[test]
    fn two_outputs_at_one_path_are_refused() {
        let s = Scratch::new("same");
        let mut o = Outputs::new();
        o.file("--out", &s.0.join("x")).unwrap();
        let e = o.dir("--png", &s.0.join("./x")).unwrap_err().to_string();
        assert!(
            e.contains("--png") && e.contains("the path of --out"),
            "{e}"
        );
    }

    #[test]
    fn nothing_appears_before_the_commit_and_nothing_stays_without_it() {
        let s = Scratch::new("drop");
        let before = s.listing();
        {
            let mut o = Outputs::new();
            let f = o.file("--out", &s.0.join("a.npy")).unwrap();
            let d = o.dir("--png", &s.0.join("pics")).unwrap();
            o.write(f, b"abc").unwrap();
            o.write_in(d, "one.png", b"1").unwrap();
            o.write_in(d, "sub/two.png", b"2").unwrap();
            assert!(!s.0.join("a.npy").exists() && !s.0.join("pics").exists());
        }
        assert_eq!(s.listing(), before);
    }

    #[test]
    fn commit_places_everything_and_keeps_other_files() {
        let s = Scratch::new("commit");
        let pics = s.0.join("pics");
        std::fs::create_dir_all(pics.join("sub")).unwrap();
        std::fs::write(pics.join("old.png"), b"old").unwrap();
        std::fs::write(pics.join("one.png"), b"stale").unwrap();
        let mut o = Outputs::new();
        let f = o.file("--out", &s.0.join("a.npy")).unwrap();
        let d = o.dir("--png", &pics).unwrap();
        let m = o.dir("--model", &s.0.join("model")).unwrap();
        for round in [b"1", b"2"] {
            o.write(f, round).unwrap();
            o.write_in(d, "one.png", round).unwrap();
            o.write_in(d, "sub/two.png", round).unwrap();
            o.write_in(m, "unet/w", round).unwrap();
            o.commit().unwrap();
            for p in ["a.npy", "pics/one.png", "pics/sub/two.png", "model/unet/w"] {
                assert_eq!(std::fs::read(s.0.join(p)).unwrap(), round, "{p}");
            }
        }
        assert_eq!(std::fs::read(pics.join("old.png")).unwrap(), b"old");
        let names: Vec<_> = s.listing();
        assert!(
            names.iter().all(|p| !p.to_string_lossy().contains(".tmp")),
            "{names:?}"
        );
        // Committing again without writing is refused.
        let e = o.commit().unwrap_err().to_string();
        assert!(e.contains("nothing written"), "{e}");
    }

    #[test]
    fn a_target_changed_during_the_work_stops_the_commit_before_any_rename() {
        let s = Scratch::new("changed");
        let before = s.listing();
        let mut o = Outputs::new();
        let f = o.file("--json", &s.0.join("r.json")).unwrap();
        let d = o.dir("--png", &s.0.join("pics")).unwrap();
        o.write(f, b"{}").unwrap();
        o.write_in(d, "crps.png", b"p").unwrap();
        std::fs::write(s.0.join("pics"), b"in the way").unwrap();
        let e = o.commit().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--png {}", s.0.join("pics").display())),
            "{e}"
        );
        drop(o);
        std::fs::remove_file(s.0.join("pics")).unwrap();
        assert_eq!(s.listing(), before);
    }
}
