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
//! new path in an existing, writable directory, created whole at the commit. No output may lie
//! inside a directory output, and the name of each output's temporary must fit in a path
//! component. Every refusal is one line naming the flag, the path, what was expected and what was
//! found.

use super::atomic::{registry, temp_name, temp_name_len, write_temp, Temp, NAME_MAX};
use crate::error::{Error, Result};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// What a file output expects, as the error messages say it.
const FILE_EXPECTED: &str = "a file in an existing, writable directory";
/// What a directory output expects, as the error messages say it.
const DIR_EXPECTED: &str = "a writable directory (or a path whose parent is a directory)";
/// What a directory output expects of the entries its files replace, as the error messages say
/// it.
const ROOM_EXPECTED: &str = "a directory where each of its files can be placed";
/// The name a directory output's temporary is made from when its path has no final name
/// (`.`, `..`).
const DIR_FALLBACK_NAME: &str = "out";

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

/// What is at a path, as [`found_at`] says, except that a symbolic link to a missing target is
/// named as such rather than as nothing.
fn found_entry(path: &Path) -> std::io::Result<Found> {
    match found_at(path)? {
        Found::Nothing if std::fs::symlink_metadata(path).is_ok() => {
            Ok(Found::Other("a symbolic link to a missing target"))
        }
        found => Ok(found),
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

/// Checks that the temporary of a target named `name` has a name short enough for the
/// filesystem; `Err(found)` says what is wrong.
fn check_temp_fits(name: &std::ffi::OsStr) -> std::result::Result<(), String> {
    let len = temp_name_len(name);
    if len > NAME_MAX {
        return Err(format!(
            "a name of {} bytes, too long for its temporary (.NAME.tmpPID.N, {len} bytes; at most \
             {NAME_MAX})",
            name.len()
        ));
    }
    Ok(())
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
    let Some(name) = path.file_name() else {
        return Err("a path without a file name".into());
    };
    check_temp_fits(name)?;
    check_parent(path)
}

/// Checks a directory output location; `Err(found)` says what is wrong.
fn check_dir(path: &Path) -> std::result::Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("an empty path".into());
    }
    // Staged beside it or, for an existing directory, inside it, under a name made from its own.
    check_temp_fits(path.file_name().unwrap_or(DIR_FALLBACK_NAME.as_ref()))?;
    match found_entry(path) {
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

/// Checks that the files `names` (relative paths) can be placed in the directory `dir`: no
/// folder on the way to one of them is anything but a directory, and none of them is a
/// directory. `Err(found)` says what is wrong.
fn check_room<P: AsRef<Path>>(dir: &Path, names: &[P]) -> std::result::Result<(), String> {
    for name in names {
        let mut at = dir.to_path_buf();
        let parts: Vec<_> = name.as_ref().components().collect();
        for (i, part) in parts.iter().enumerate() {
            at.push(part);
            let last = i + 1 == parts.len();
            match found_entry(&at) {
                Ok(Found::Nothing) => break,
                Ok(Found::Dir) if last => {
                    return Err(format!("that {} is a directory", at.display()));
                }
                Ok(Found::Dir) => {}
                Ok(_) if last => {}
                Ok(what) => {
                    return Err(format!(
                        "that {} is {} where a folder goes",
                        at.display(),
                        what.name()
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "that {} cannot be examined ({})",
                        at.display(),
                        reason(&e)
                    ))
                }
            }
        }
    }
    Ok(())
}

/// Every file under the folder `dir`, as a path relative to it.
fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(dir.join(&rel))? {
            let e = e?;
            let p = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else {
                found.push(p);
            }
        }
    }
    Ok(found)
}

/// An output error that names the flag and the path, for an I/O failure while `doing` something.
fn io_failure(flag: &str, path: &Path, doing: &str, e: &std::io::Error) -> Error {
    Error::Output {
        flag: flag.to_string(),
        path: path.to_path_buf(),
        expected: format!("{doing} to succeed"),
        found: reason(e),
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

    fn declare(&mut self, flag: &str, path: &Path, kind: Kind, files: &[&str]) -> Result<usize> {
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
        if kind == Kind::Dir && path.is_dir() {
            check_room(path, files).map_err(|found| fail(ROOM_EXPECTED, found))?;
        }
        let me = identity(path);
        for other in &self.entries {
            let them = identity(&other.target);
            if them == me {
                return Err(fail(
                    "a path of its own",
                    format!("the path of {} as well", other.flag),
                ));
            }
            if other.kind == Kind::Dir && me.starts_with(&them) {
                return Err(fail(
                    &format!("a path outside the directory output of {}", other.flag),
                    format!(
                        "that it lies inside {} {}",
                        other.flag,
                        other.target.display()
                    ),
                ));
            }
            if kind == Kind::Dir && them.starts_with(&me) {
                return Err(fail(
                    "a directory holding no other output",
                    format!("that it holds {} {}", other.flag, other.target.display()),
                ));
            }
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
        self.declare(flag, path, Kind::File, &[]).map(FileOutput)
    }

    /// Declares an array output, as [`Outputs::file`] does; dydiff writes arrays as `.npy`, so a
    /// name ending in `.npz` (a zip of arrays, which dydiff reads but does not write) is refused
    /// naming the flag.
    pub fn npy_file(&mut self, flag: &str, path: &Path) -> Result<FileOutput> {
        let file = self.file(flag, path)?;
        if path.extension().and_then(|e| e.to_str()) == Some("npz") {
            return Err(Error::Output {
                flag: flag.into(),
                path: path.to_path_buf(),
                expected: "a .npy file name (dydiff writes arrays as .npy; it reads .npz too)"
                    .into(),
                found: "the extension .npz".into(),
            });
        }
        Ok(file)
    }

    /// Declares the directory output of `flag` at `path`, after checking that it can be written
    /// there; the error names the flag, the path, what was expected and what was found.
    pub fn dir(&mut self, flag: &str, path: &Path) -> Result<DirOutput> {
        self.declare(flag, path, Kind::Dir, &[]).map(DirOutput)
    }

    /// Declares the directory output of `flag` at `path`, as [`Outputs::dir`] does, knowing
    /// the files (relative paths) it will hold: in an existing directory, none of them may be
    /// a directory and no folder on the way to one of them anything but a directory.
    pub fn dir_with(&mut self, flag: &str, path: &Path, files: &[&str]) -> Result<DirOutput> {
        self.declare(flag, path, Kind::Dir, files).map(DirOutput)
    }

    /// Refuses an input of the command, the `flag` at `path`, that is one of the outputs
    /// declared so far (the same file or directory): the output would replace it.
    pub fn check_input(&self, flag: &str, path: &Path) -> Result<()> {
        let Ok(input) = path.canonicalize() else {
            return Ok(());
        };
        match self.entries.iter().find(|e| identity(&e.target) == input) {
            Some(e) => Err(Error::Output {
                flag: e.flag.clone(),
                path: e.target.clone(),
                expected: "a path other than the command's inputs".into(),
                found: format!("the input of {flag} {}", path.display()),
            }),
            None => Ok(()),
        }
    }

    /// Stages the content of a file output (replacing what was staged for it before).
    pub fn write(&mut self, out: FileOutput, bytes: &[u8]) -> Result<()> {
        let e = &mut self.entries[out.0];
        let name = e.target.file_name().expect("checked when declared");
        let dir = or_dot(e.target.parent().unwrap_or(Path::new("")));
        e.staged = None;
        let tmp = write_temp(temp_name(dir, name), bytes)
            .map_err(|err| io_failure(&e.flag, &e.target, "writing its temporary", &err))?;
        e.staged = Some(tmp);
        Ok(())
    }

    /// Stages the file `name` (a relative path; folders in it are created) of a directory
    /// output.
    pub fn write_in(&mut self, out: DirOutput, name: &str, bytes: &[u8]) -> Result<()> {
        let e = &mut self.entries[out.0];
        let (flag, target) = (&e.flag, &e.target);
        let io = |err| io_failure(flag, target, &format!("writing its temporary {name}"), &err);
        if e.staged.is_none() {
            // Inside an existing directory (which may be another filesystem than its parent's),
            // else beside the new one.
            let path = if e.target.is_dir() {
                let own = e.target.file_name().unwrap_or(DIR_FALLBACK_NAME.as_ref());
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
            // Each file merged into an existing directory must find room there.
            if let (Kind::Dir, Some(tmp)) = (&e.kind, &e.staged) {
                if e.target.is_dir() {
                    let files = files_under(tmp.path()).map_err(|err| {
                        io_failure(&e.flag, &e.target, "listing its temporary", &err)
                    })?;
                    check_room(&e.target, &files).map_err(|f| fail(ROOM_EXPECTED, f))?;
                }
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
            moved.map_err(|err| io_failure(&e.flag, &e.target, "moving it into place", &err))?;
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

    #[test]
    fn a_clash_inside_a_directory_output_stops_the_commit_before_any_rename() {
        let s = Scratch::new("clash");
        let pics = s.0.join("pics");
        std::fs::create_dir(&pics).unwrap();
        let before = s.listing();
        let mut o = Outputs::new();
        let f = o.file("--out", &s.0.join("fc.npy")).unwrap();
        let d = o.dir("--png", &pics).unwrap();
        o.write(f, b"fc").unwrap();
        o.write_in(d, "a.png", b"a").unwrap();
        o.write_in(d, "sub/b.png", b"b").unwrap();
        // Made during the work: a folder where a file goes, a file where a folder goes.
        for (make_dir, at, found) in [
            (true, "a.png", "a.png is a directory"),
            (false, "sub", "sub is a plain file where a folder goes"),
        ] {
            if make_dir {
                std::fs::create_dir(pics.join(at)).unwrap();
            } else {
                std::fs::write(pics.join(at), b"x").unwrap();
            }
            let e = o.commit().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("--png {}: expected ", pics.display())) && e.contains(found),
                "{e}"
            );
            assert!(!s.0.join("fc.npy").exists(), "renamed before the refusal");
            if make_dir {
                std::fs::remove_dir(pics.join(at)).unwrap();
            } else {
                std::fs::remove_file(pics.join(at)).unwrap();
            }
        }
        drop(o);
        assert_eq!(s.listing(), before);
    }

    #[test]
    fn outputs_inside_a_directory_output_are_refused_in_either_order() {
        let s = Scratch::new("nested");
        let pics = s.0.join("pics");
        std::fs::create_dir(&pics).unwrap();
        let mut o = Outputs::new();
        o.dir("--png", &pics).unwrap();
        let e = o
            .file("--out", &pics.join("x.npy"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--out") && e.contains("inside --png"), "{e}");
        let e = o.dir("--more", &pics.join("../pics/sub")).unwrap_err();
        assert!(e.to_string().contains("inside --png"), "{e}");
        let mut o = Outputs::new();
        o.file("--out", &pics.join("x.npy")).unwrap();
        let e = o
            .dir("--png", &s.0.join("./pics/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--png") && e.contains("holds --out"), "{e}");
        // Siblings with a common prefix are not nested.
        let mut o = Outputs::new();
        o.dir("--png", &pics).unwrap();
        o.file("--out", &s.0.join("pics2.npy")).unwrap();
    }

    #[test]
    fn names_too_long_for_their_temporaries_are_refused() {
        let s = Scratch::new("long");
        let mut o = Outputs::new();
        let long = "n".repeat(NAME_MAX - 10);
        for dir in [false, true] {
            let path = s.0.join(&long);
            let e = if dir {
                o.dir("--png", &path).map(|_| ())
            } else {
                o.file("--out", &path).map(|_| ())
            }
            .unwrap_err()
            .to_string();
            assert!(e.contains("too long for its temporary"), "{e}");
        }
        // The temporary of the longest accepted name can be made.
        let fits = "f".repeat(NAME_MAX - temp_name_len("".as_ref()));
        let f = o.file("--out", &s.0.join(&fits)).unwrap();
        o.write(f, b"ok").unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read(s.0.join(&fits)).unwrap(), b"ok");
    }
}
