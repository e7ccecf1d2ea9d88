//! A `dydiff` command line built flag by flag, and the refusal test it makes.

use super::{assert_clean_failure, dydiff, Scratch};
use std::path::{Path, PathBuf};

/// The words of a `dydiff` command line, and the output a refusal must not leave behind.
#[derive(Clone, Debug)]
pub struct Line {
    words: Vec<String>,
    output: Option<PathBuf>,
}

impl Line {
    /// `dydiff WORDS…`: a command (`["sample"]`, `["data", "navier-stokes"]`) or global flags.
    pub fn new(words: &[&str]) -> Line {
        Line {
            words: words.iter().map(|w| w.to_string()).collect(),
            output: None,
        }
    }
    /// `FLAG VALUE`.
    pub fn flag(mut self, flag: &str, value: impl ToString) -> Line {
        self.words.extend([flag.to_string(), value.to_string()]);
        self
    }
    /// `FLAG PATH`.
    pub fn path(self, flag: &str, path: &Path) -> Line {
        let p = path.to_str().expect("a UTF-8 path").to_string();
        self.flag(flag, p)
    }
    /// `FLAG PATH`, the output whose absence a refusal checks.
    pub fn output(mut self, flag: &str, path: &Path) -> Line {
        self.output = Some(path.to_path_buf());
        self.path(flag, path)
    }
    /// Words as given (switches, `--flag=value`, several flags at once).
    pub fn words(mut self, words: &[&str]) -> Line {
        self.words.extend(words.iter().map(|w| w.to_string()));
        self
    }
    /// The command line's words, after `dydiff`.
    pub fn args(&self) -> &[String] {
        &self.words
    }
    /// Runs it: (exit status success, stderr).
    pub fn run(&self) -> (bool, String) {
        dydiff(&self.words)
    }
    /// Runs it and checks the refusal: non-zero exit, one line on stderr naming every needle, no
    /// panic, no output and no temporary file in `s`.
    pub fn refused(&self, s: &Scratch, needles: &[&str]) {
        let (ok, err) = self.run();
        let none = s.path("no output");
        assert_clean_failure(ok, &err, needles, self.output.as_ref().unwrap_or(&none), s);
    }
}

/// A test that a command line is refused ([`Line::refused`]): `refusal!(name, |s| LINE,
/// &[NEEDLES…])` runs `LINE` — built in the test's scratch directory `s` — and checks that the
/// one-line error names every needle and nothing is left behind. Doc comments go before the name.
#[allow(unused_macros)]
macro_rules! refusal {
    ($(#[$doc:meta])* $name:ident, |$s:ident| $line:expr, $needles:expr $(,)?) => {
        $(#[$doc])*
        #[test]
        fn $name() {
            let $s = crate::common::Scratch::new(stringify!($name));
            let line: crate::common::Line = $line;
            line.refused(&$s, $needles);
        }
    };
}
#[allow(unused_imports)]
pub(crate) use refusal;
