//! Errors of the config layer: one [`ConfigError`] per problem, each with its location.
//!
//! Loading never stops at the first problem: [`ConfigErrors`] carries all of them, so an
//! operator fixes a file in one pass. A location is `file:line` when the line is known and
//! a dotted path into the config (`pool.sma.member[2].addresses[0]`) when it names a value.

use std::fmt;
use std::path::PathBuf;

/// One problem in the config or in a zone file it names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub struct ConfigError {
    /// The file the problem is in (the config file or a zone file).
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Path of the value inside the config (empty for zone files and syntax errors).
    pub path: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found while loading a config and its zones.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// True when nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many problems were found.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}
