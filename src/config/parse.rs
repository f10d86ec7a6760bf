//! Stage one and the driver of config parsing: TOML text to the raw document (every
//! unknown key and type error collected, section by section when serde stops at one),
//! then the compile step.

use std::path::Path;

use super::error::{ConfigError, ConfigErrors};
use super::{Config, compile, located, raw};

/// Parses and compiles config text (no zone files are read). `file` names the text in
/// messages and is the base for relative zone paths.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
    match parse_partial(text, file) {
        (Some(config), errors) if errors.is_empty() => Ok(config),
        (_, errors) => Err(ConfigErrors(errors)),
    }
}

/// Like [`parse`], but also returns what did compile next to the problems, so that zone
/// files and names can be checked in the same pass. `None` when the TOML is unreadable.
pub(crate) fn parse_partial(text: &str, file: &Path) -> (Option<Config>, Vec<ConfigError>) {
    let mut errors = located::Collector::new(text, file);
    let mut unknown = Vec::new();
    let deserializer = match toml::de::Deserializer::parse(text) {
        Ok(deserializer) => deserializer,
        Err(e) => {
            errors.push(e.span().map(|s| s.start), "", e.message().to_string());
            return (None, errors.errors);
        }
    };
    let raw: raw::RawConfig =
        match serde_ignored::deserialize(deserializer, |path| unknown.push(path.to_string())) {
            Ok(raw) => raw,
            Err(_) => {
                // A type error stops serde at the first one: read each table on its own
                // instead, so every type error is reported, and the rest still compiles.
                unknown.clear();
                match recover(text, &mut errors, &mut unknown) {
                    Some(raw) => raw,
                    None => return (None, errors.errors),
                }
            }
        };
    for path in unknown {
        let path = clean_path(&path);
        let line = find_key_line(text, &path);
        errors.push(
            line,
            path,
            "unknown key (not part of gto's config; check the spelling)",
        );
    }
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let config = compile::compile(raw, base_dir, &mut errors);
    (Some(config), errors.errors)
}

/// Deserializes the document section by section (and `[[zone]]`, `[[service]]`,
/// `[[pool]]` element by element), reporting each section's type error and keeping the
/// sections that read. None when the text is not TOML at all.
fn recover(
    text: &str,
    errors: &mut located::Collector<'_>,
    unknown: &mut Vec<String>,
) -> Option<raw::RawConfig> {
    use serde::Deserialize;
    use toml::de::{DeValue, ValueDeserializer};

    fn one<T: for<'de> Deserialize<'de>>(
        value: &toml::Spanned<DeValue<'_>>,
        path: &str,
        errors: &mut located::Collector<'_>,
        unknown: &mut Vec<String>,
    ) -> Option<T> {
        let deserializer = ValueDeserializer::from(value.clone());
        match serde_ignored::deserialize(deserializer, |p| {
            unknown.push(format!("{path}.{p}"));
        }) {
            Ok(value) => Some(value),
            Err(e) => {
                let e: toml::de::Error = e;
                let at = e.span().map_or(value.span().start, |s| s.start);
                errors.push(Some(at), path, e.message().to_string());
                None
            }
        }
    }
    fn many<T: for<'de> Deserialize<'de>>(
        value: &toml::Spanned<DeValue<'_>>,
        key: &str,
        errors: &mut located::Collector<'_>,
        unknown: &mut Vec<String>,
    ) -> Vec<T> {
        match value.get_ref().as_array() {
            Some(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| one(item, &format!("{key}.{i}"), errors, unknown))
                .collect(),
            None => one(value, key, errors, unknown).unwrap_or_default(),
        }
    }

    let root = match toml::de::DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            errors.push(e.span().map(|s| s.start), "", e.message().to_string());
            return None;
        }
    };
    let table = root.get_ref();
    let mut raw = raw::RawConfig::default();
    for (key, value) in table.iter() {
        let key = key.get_ref().as_ref();
        match key {
            "server" => raw.server = one(value, key, errors, unknown).unwrap_or_default(),
            "admin" => raw.admin = one(value, key, errors, unknown),
            "rrl" => raw.rrl = one(value, key, errors, unknown),
            "geo" => raw.geo = one(value, key, errors, unknown),
            "zone" => raw.zone = many(value, key, errors, unknown),
            "service" => raw.service = many(value, key, errors, unknown),
            "pool" => raw.pool = many(value, key, errors, unknown),
            other => unknown.push(other.to_string()),
        }
    }
    Some(raw)
}

/// `pool.0.$__serde_spanned_private_value.member.1.x` (serde_ignored's view through
/// `Spanned`) becomes `pool[0].member[1].x`.
fn clean_path(raw: &str) -> String {
    let mut path = String::new();
    for segment in raw
        .split('.')
        .filter(|s| !s.starts_with("$__serde_spanned") && *s != "?")
    {
        if segment.chars().all(|c| c.is_ascii_digit()) && !path.is_empty() {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(segment);
        }
    }
    path
}

/// Best-effort byte offset of an unknown key: the first line that assigns its last
/// segment, or a table header that ends with it.
pub(crate) fn find_key_line(text: &str, path: &str) -> Option<usize> {
    let key = path.rsplit('.').next()?;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let is_key = trimmed
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        let is_table = trimmed.starts_with('[')
            && trimmed
                .trim_matches(|c: char| c == '[' || c == ']' || c.is_whitespace())
                .rsplit('.')
                .next()
                == Some(key);
        if is_key || is_table {
            return Some(offset + (line.len() - trimmed.len()));
        }
        offset += line.len();
    }
    None
}
