//! Configuration: the one place that reads the process environment and
//! `.env` ([`Env`]), with one parser per kind of value (`number`, `flag`)
//! and one redaction rule for everything shown back ([`redact`]). Explicit
//! builder values win over the environment, which wins over defaults: the
//! callers apply that order, this module only reads.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The variables the crate reads: the process environment over a `.env` file.
///
/// Loading never modifies the process environment.
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
    dotenv_path: Option<PathBuf>,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be URLs with passwords: show names only.
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort();
        f.debug_struct("Env")
            .field("names", &names)
            .field("dotenv_path", &self.dotenv_path)
            .finish()
    }
}

impl Env {
    /// The process environment over the first `.env` found in the current
    /// directory or one of its parents.
    pub fn load() -> Result<Env> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Env::load_from(
            &cwd,
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// Like [`Env::load`], with the search for `.env` starting at `dir` and
    /// `process` standing for the process environment (which wins).
    pub fn load_from(
        dir: &Path,
        process: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Env> {
        let mut vars = HashMap::new();
        let dotenv_path = find_dotenv(dir);
        if let Some(path) = &dotenv_path {
            let iter = dotenvy::from_path_iter(path).map_err(|e| {
                Error::InvalidEnv {
                    var: ".env",
                    value: path.display().to_string(),
                    expected: "a readable .env file of KEY=VALUE lines",
                }
                .with_reason(e)
            })?;
            for item in iter {
                let (k, v) = item.map_err(|e| {
                    Error::InvalidEnv {
                        var: ".env",
                        value: path.display().to_string(),
                        expected: "KEY=VALUE lines (dotenv syntax)",
                    }
                    .with_reason(e)
                })?;
                vars.insert(k, v);
            }
        }
        vars.extend(process);
        Ok(Env { vars, dotenv_path })
    }

    /// An environment made of exactly these variables (no process, no `.env`).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
    ) -> Env {
        Env {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            dotenv_path: None,
        }
    }

    /// The value of `name`, if set and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// The `.env` file that was read, if any.
    pub fn dotenv_path(&self) -> Option<&Path> {
        self.dotenv_path.as_deref()
    }

    /// A whole number from `range` when `var` is set (`expected` names the
    /// range): the one parser of numeric variables, redacting what it shows.
    pub(crate) fn number(
        &self,
        var: &'static str,
        range: std::ops::RangeInclusive<u32>,
        expected: &'static str,
    ) -> Result<Option<u32>> {
        self.get(var)
            .map(|v| match v.trim().parse::<u32>() {
                Ok(n) if range.contains(&n) => Ok(n),
                _ => Err(Error::InvalidEnv {
                    var,
                    value: redact_value(v),
                    expected,
                }),
            })
            .transpose()
    }

    /// A boolean flag: `1`, `true`, `yes`, `on` (any case) are true; unset is false.
    pub(crate) fn flag(&self, name: &'static str) -> Result<bool> {
        match self.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
            Some(v) => Err(Error::InvalidEnv {
                var: name,
                value: redact_value(&v),
                expected: "1/true/yes/on or 0/false/no/off",
            }),
        }
    }
}

impl Error {
    // Keeps the underlying reason of an env error visible in its message.
    fn with_reason(self, reason: impl fmt::Display) -> Error {
        match self {
            Error::InvalidEnv {
                var,
                value,
                expected,
            } => Error::InvalidEnv {
                var,
                value: redact(&format!("{value} ({reason})")),
                expected,
            },
            other => other,
        }
    }
}

fn find_dotenv(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(".env"))
        .find(|candidate| candidate.is_file())
}

/// Replaces the password of every `scheme://user:password@` in `text` with `***`.
///
/// Works on any text (error messages included), not only on a lone URL. It
/// errs on the side of hiding: the user information runs up to the *last*
/// `@` before the next whitespace, so a password holding `/`, `?`, `#` or `@`
/// (unencoded, as people paste them) is hidden too.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let word_end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        let word = &tail[..word_end];
        match word.rfind('@') {
            Some(at) => {
                let userinfo = &word[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                // The rest of the word (host onwards) is scanned again:
                // it may hold another URL.
                out.push('@');
                rest = &tail[at + 1..];
            }
            None => {
                out.push_str(word);
                rest = &tail[word_end..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Redacts one value that is meant to be a single URL (an environment
/// variable's value): everything between the first `:` of the user
/// information and the *last* `@` is hidden, whatever characters the
/// password holds (spaces included).
pub(crate) fn redact_value(raw: &str) -> String {
    let start = raw.find("://").map_or(0, |p| p + 3);
    match raw.rfind('@') {
        Some(at) if at >= start => match raw[start..at].find(':') {
            Some(colon) => format!("{}:***{}", &raw[..start + colon], &raw[at..]),
            None => raw.to_string(),
        },
        _ => redact(raw),
    }
}
