//! Configuration errors: every one names the file and the key path.

use std::fmt;
use std::path::PathBuf;

/// One problem at one key path, e.g. `rules[2].ttl.default: invalid duration "ten"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted key path with indexes (`rules[2].ttl.default`).
    pub key: String,
    /// What is wrong, with a hint where one helps.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config file: {source}", file.display())]
    Read {
        /// The config file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema (unknown key, wrong type).
    #[error("{}:{}: {}: {message}", file.display(), line.map(|l| l.to_string()).unwrap_or_else(|| "?".into()), if key.is_empty() { "(top level)" } else { key.as_str() })]
    Parse {
        /// The config file.
        file: PathBuf,
        /// Key path where parsing stopped.
        key: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// The file parsed but some values are invalid; all of them are listed.
    #[error("{}: {} invalid setting(s):\n{}", file.display(), errors.len(), errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
}

/// Collects [`FieldError`]s while validating.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    /// Record a problem at `key`.
    pub(crate) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            key: key.into(),
            message: message.into(),
        });
    }
}
