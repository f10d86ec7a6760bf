//! Stage one and the driver of config parsing: TOML text to the raw document (every
//! unknown key and type error collected: at each type error, where serde stops, the key
//! is taken out and the rest read again), then the compile step.

use std::path::Path;

use super::error::{ConfigError, ConfigErrors};
use toml::de::DeValue;

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
    let root = match toml::de::DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            errors.push(e.span().map(|s| s.start), "", e.message().to_string());
            return (None, errors.errors);
        }
    };
    let document = toml::Spanned::new(0..text.len(), DeValue::Table(root.into_inner()));
    let Some(raw) = lenient(document.clone(), &mut errors, &mut unknown) else {
        return (None, errors.errors);
    };
    for path in unknown {
        let (path, at) = locate(&document, &path);
        errors.push(
            at.or_else(|| find_key_line(text, &path)),
            path,
            "unknown key (not part of gto's config; check the spelling)",
        );
    }
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let config = compile::compile(raw, base_dir, &mut errors);
    (Some(config), errors.errors)
}

/// Deserializes the document; at a type error (where serde stops) reports it, takes the
/// key it is in out of the document and tries again, so every type error is reported in
/// one run and everything else still compiles (a pool with a mistyped `weight` keeps its
/// members, and no "unknown pool" follows). A table that lacks a required field after
/// that is dropped. None when nothing can be read.
fn lenient(
    mut document: toml::Spanned<DeValue<'_>>,
    errors: &mut located::Collector<'_>,
    unknown: &mut Vec<String>,
) -> Option<raw::RawConfig> {
    // Keys taken out, by path: a "missing field" for one of them is not reported again.
    let mut removed: Vec<String> = Vec::new();
    // Each round takes one key or table out: bounded by the document's size.
    for _ in 0..4096 {
        unknown.clear();
        let deserializer = toml::de::ValueDeserializer::from(document.clone());
        let error: toml::de::Error =
            match serde_ignored::deserialize(deserializer, |path| unknown.push(path.to_string())) {
                Ok(raw) => return Some(raw),
                Err(error) => error,
            };
        let message = error.message().to_string();
        let Some(span) = error.span() else {
            errors.push(None, "", message);
            return None;
        };
        let Some(path) = remove_innermost(&mut document, &span) else {
            errors.push(Some(span.start), "", message);
            return None;
        };
        // serde points a missing field at its whole table, which is what was taken out.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
            .map(|field| join(&path, field));
        if missing.is_none_or(|m| !removed.contains(&m)) {
            errors.push(Some(span.start), path.clone(), message);
        }
        errors.suppress(path.clone());
        removed.push(path);
    }
    None
}

/// Takes out of `value` the innermost key (or array element) whose value holds `span`;
/// returns its display path.
fn remove_innermost(
    value: &mut toml::Spanned<DeValue<'_>>,
    span: &std::ops::Range<usize>,
) -> Option<String> {
    let inside = |v: &toml::Spanned<DeValue<'_>>| contains(v, span);
    let holds = |v: &toml::Spanned<DeValue<'_>>| match v.get_ref() {
        DeValue::Table(t) => t.iter().any(|(_, v)| inside(v)),
        DeValue::Array(items) => items
            .iter()
            .any(|item| inside(item) && matches!(item.get_ref(), DeValue::Table(_))),
        _ => false,
    };
    let mut here = String::new();
    let mut current = value;
    loop {
        match current.get_mut() {
            DeValue::Table(table) => {
                let key = table
                    .iter()
                    .find(|(_, v)| inside(v))
                    .map(|(k, _)| k.get_ref().to_string())?;
                let path = join(&here, &key);
                if !table.get(key.as_str()).is_some_and(holds) {
                    table.remove(key.as_str());
                    return Some(path);
                }
                here = path;
                current = table.get_mut(key.as_str())?;
            }
            DeValue::Array(items) => {
                let index = items.iter().position(inside)?;
                let name = items
                    .get(index)
                    .and_then(|item| item.get_ref().get("name"))
                    .and_then(|n| n.get_ref().as_str())
                    .map(str::to_string);
                let path = element_path(&here, index, name.as_deref());
                if !items.get(index).is_some_and(holds) {
                    let kept: toml::de::DeArray<'_> = items
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != index)
                        .map(|(_, item)| item.clone())
                        .collect();
                    *items = kept;
                    return Some(path);
                }
                here = path;
                current = items.get_mut(index)?;
            }
            _ => return None,
        }
    }
}

/// Whether `span` lies in `value` (or in any of its keys and values: the span of a
/// `[[pool]]` table does not cover its body).
fn contains(value: &toml::Spanned<DeValue<'_>>, span: &std::ops::Range<usize>) -> bool {
    let s = value.span();
    if s.start <= span.start && span.end <= s.end.max(s.start + 1) {
        return true;
    }
    match value.get_ref() {
        DeValue::Table(table) => table.iter().any(|(k, v)| {
            let k = k.span();
            (k.start <= span.start && span.end <= k.end) || contains(v, span)
        }),
        DeValue::Array(items) => items.iter().any(|item| contains(item, span)),
        _ => false,
    }
}

/// `parent.key`, or `key` at the top.
fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// An array element's path: a pool by its name (as the compile step names it), anything
/// else by index.
fn element_path(array: &str, index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) if array == "pool" => format!("pool.{name}"),
        _ => format!("{array}[{index}]"),
    }
}

/// The display path and offset of a key serde did not use (`pool.0.$__serde_spanned_
/// private_value.member.1.x`, as serde_ignored gives it), found in the document itself:
/// keys of inline tables and of every nesting level included.
fn locate(document: &toml::Spanned<DeValue<'_>>, raw_path: &str) -> (String, Option<usize>) {
    let segments: Vec<&str> = raw_path
        .split('.')
        .filter(|s| !s.starts_with("$__serde_spanned") && *s != "?")
        .collect();
    let mut path = String::new();
    let mut current = document;
    let mut at = None;
    for (i, segment) in segments.iter().enumerate() {
        let next = match current.get_ref() {
            DeValue::Table(table) => {
                path = join(&path, segment);
                table
                    .iter()
                    .find(|(k, _)| k.get_ref().as_ref() == *segment)
                    .map(|(k, v)| {
                        at = Some(k.span().start);
                        v
                    })
            }
            DeValue::Array(items) => segment.parse::<usize>().ok().and_then(|index| {
                let item = items.get(index)?;
                let name = item
                    .get_ref()
                    .get("name")
                    .and_then(|n| n.get_ref().as_str());
                path = element_path(&path, index, name);
                Some(item)
            }),
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => {
                // Not in the document (should not happen): the rest as serde gave it.
                return (join(&path, &segments[i..].join(".")), None);
            }
        }
    }
    (path, at)
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
