//! What both compile steps (`compile` for the document, `check` for health-check tables)
//! share: the [`Collector`] that records every problem with its file, line and path, and
//! the parsers of durations, sizes and names.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::rr::Name;
use toml::Spanned;

use super::error::ConfigError;

/// Collects problems while compiling one file.
pub(crate) struct Collector<'a> {
    text: &'a str,
    file: &'a Path,
    pub(crate) errors: Vec<ConfigError>,
    /// `[server] max_file_size`, for the files the config names.
    pub(crate) file_limit: u64,
    /// Paths whose problem is already reported (a mistyped key, taken out of the
    /// document): what later steps find missing there is not reported again.
    suppressed: Vec<String>,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(text: &'a str, file: &'a Path) -> Self {
        Self {
            text,
            file,
            errors: Vec::new(),
            file_limit: crate::files::DEFAULT_MAX_FILE_SIZE,
            suppressed: Vec::new(),
        }
    }

    /// No more problems at `path`: the one found there is reported.
    pub(crate) fn suppress(&mut self, path: impl Into<String>) {
        self.suppressed.push(path.into());
    }

    /// Whether a problem was recorded at `path` or inside it.
    pub(crate) fn has_problem_in(&self, path: &str) -> bool {
        self.errors.iter().any(|e| {
            e.path == path
                || e.path
                    .strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        })
    }

    /// Records a problem at byte offset `at` (None when unknown).
    pub(crate) fn push(
        &mut self,
        at: Option<usize>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        let line = at.map(|offset| line_of(self.text, offset));
        let error = ConfigError {
            file: self.file.to_path_buf(),
            line,
            path: path.into(),
            message: message.into(),
        };
        // Once per problem: a pool's check is compiled for each of its members.
        if self.suppressed.contains(&error.path) || self.errors.contains(&error) {
            return;
        }
        self.errors.push(error);
    }

    /// The 1-based line of byte offset `at` of the text.
    pub(crate) fn line_at(&self, at: usize) -> usize {
        line_of(self.text, at)
    }

    /// Where a file a setting names is: relative to `base_dir`, with
    /// `${CREDENTIALS_DIRECTORY}` replaced by that variable (the directory a systemd unit's
    /// `LoadCredential=` fills, readable by its `DynamicUser`); a problem located at the
    /// setting when the variable is not set.
    pub(crate) fn resolve_file(
        &mut self,
        base_dir: &Path,
        file: &Spanned<String>,
        path: impl Into<String>,
    ) -> Option<PathBuf> {
        match expand_credentials(file.get_ref()) {
            Some(text) => Some(base_dir.join(text)),
            None => {
                self.at(
                    file,
                    path,
                    "names ${CREDENTIALS_DIRECTORY}, which is not set: it is set for a \
                     systemd unit with LoadCredential= (see the README), else name the file \
                     itself",
                );
                None
            }
        }
    }

    /// A file a setting names ([`Collector::resolve_file`]), read whole up to
    /// `[server] max_file_size`; a problem located at the setting.
    pub(crate) fn read_file(
        &mut self,
        base_dir: &Path,
        file: &Spanned<String>,
        path: impl Into<String>,
    ) -> Option<String> {
        let path = path.into();
        let full = self.resolve_file(base_dir, file, path.clone())?;
        match crate::files::read_to_string(&full, self.file_limit) {
            Ok(text) => Some(text),
            Err(e) => {
                self.at(file, path, format!("cannot read: {e}"));
                None
            }
        }
    }

    pub(crate) fn at<T>(
        &mut self,
        value: &Spanned<T>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.push(Some(value.span().start), path, message);
    }

    /// A setting: `default` when unset, else what `parse` makes of it; when `parse`
    /// refuses it, a located problem (`message`) and `default`, so compiling goes on.
    pub(crate) fn setting<T, U>(
        &mut self,
        value: Option<&Spanned<T>>,
        path: impl Into<String>,
        default: U,
        parse: impl FnOnce(&T) -> Option<U>,
        message: impl Into<String>,
    ) -> U {
        let Some(value) = value else {
            return default;
        };
        match parse(value.get_ref()) {
            Some(parsed) => parsed,
            None => {
                self.at(value, path, message);
                default
            }
        }
    }

    /// The value when it is in `range`; else a located "must be between" problem.
    pub(crate) fn ranged(
        &mut self,
        value: &Spanned<i64>,
        path: impl Into<String>,
        range: RangeInclusive<i64>,
    ) -> Option<i64> {
        if range.contains(value.get_ref()) {
            return Some(*value.get_ref());
        }
        let message = format!("must be between {} and {}", range.start(), range.end());
        self.at(value, path, message);
        None
    }
}

/// 1-based line number of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Parses a domain name; a missing trailing dot is added. Result is lower-cased.
pub(crate) fn parse_name(text: &str) -> Result<Name, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    let mut name =
        Name::from_ascii(text).map_err(|e| format!("{text:?} is not a domain name: {e}"))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

/// Parses a size: bytes, or a number with KiB, MiB or GiB (1 KiB to 4 GiB).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number
        .parse::<u64>()
        .ok()?
        .checked_mul(unit)
        .filter(|n| (1024..=4 << 30).contains(n))
}

/// Parses "10s", "500ms", "2m", "1h" (or a bare number of seconds).
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit.trim() {
        "" | "s" => Some(Duration::from_secs(number)),
        "ms" => Some(Duration::from_millis(number)),
        "us" | "µs" => Some(Duration::from_micros(number)),
        "m" => number.checked_mul(60).map(Duration::from_secs),
        "h" => number.checked_mul(3600).map(Duration::from_secs),
        "d" => number.checked_mul(86_400).map(Duration::from_secs),
        _ => None,
    }
}

/// `text` with `${CREDENTIALS_DIRECTORY}` replaced by that environment variable (the
/// directory a systemd unit's `LoadCredential=` fills); None when it names the variable
/// and the variable is not set.
pub(crate) fn expand_credentials(text: &str) -> Option<String> {
    const VARIABLE: &str = "${CREDENTIALS_DIRECTORY}";
    if !text.contains(VARIABLE) {
        return Some(text.to_string());
    }
    let directory = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|v| !v.is_empty())?;
    Some(text.replace(VARIABLE, &directory.to_string_lossy()))
}
