//! `[dnstap]`: where the query log goes, which messages, how many.

use std::path::Path;

use crate::config::located::Collector;
use crate::config::raw::{RawConfig, RawDnstap};
use crate::config::{DnstapOutput, DnstapSettings, ServerSettings};

pub(super) fn compile_dnstap(
    raw: &RawConfig,
    server: &ServerSettings,
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> Option<DnstapSettings> {
    let table = raw.dnstap.as_ref()?;
    let RawDnstap {
        socket,
        file,
        messages,
        sample,
        queue,
        identity,
    } = table.get_ref();
    let output = match (socket, file) {
        (Some(socket), None) => Some(DnstapOutput::Socket(base_dir.join(socket.get_ref()))),
        (None, Some(file)) => {
            let path = base_dir.join(file.get_ref());
            match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => errors.at(
                    file,
                    "dnstap.file",
                    format!("{} is not a directory", dir.display()),
                ),
                _ => {}
            }
            if path.is_dir() {
                errors.at(
                    file,
                    "dnstap.file",
                    format!("{} is a directory", path.display()),
                );
            }
            Some(DnstapOutput::File(path))
        }
        (Some(socket), Some(_)) => {
            errors.at(socket, "dnstap", "set `socket` or `file`, not both");
            None
        }
        (None, None) => {
            errors.at(
                table,
                "dnstap",
                "needs `socket` (a Frame Streams reader's Unix socket) or `file`",
            );
            None
        }
    };
    let (mut queries, mut responses) = (true, true);
    if let Some(messages) = messages {
        (queries, responses) = (false, false);
        for (i, message) in messages.get_ref().iter().enumerate() {
            match message.as_str() {
                "auth-query" => queries = true,
                "auth-response" => responses = true,
                other => errors.at(
                    messages,
                    format!("dnstap.messages[{i}]"),
                    format!("{other:?} is not \"auth-query\" or \"auth-response\""),
                ),
            }
        }
        if messages.get_ref().is_empty() {
            errors.at(
                messages,
                "dnstap.messages",
                "is empty: list \"auth-query\", \"auth-response\" or both",
            );
        }
    }
    let sample = match sample {
        None => 1.0,
        Some(value) if *value.get_ref() > 0.0 && *value.get_ref() <= 1.0 => *value.get_ref(),
        Some(value) => {
            errors.at(
                value,
                "dnstap.sample",
                "must be a fraction above 0 and at most 1 (1.0 logs every query)",
            );
            1.0
        }
    };
    let queue = match queue {
        None => DnstapSettings::DEFAULT_QUEUE,
        Some(value) => errors
            .ranged(value, "dnstap.queue", 1..=16_777_216)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(DnstapSettings::DEFAULT_QUEUE),
    };
    let identity = match identity {
        Some(text) => text.get_ref().clone(),
        None => server.identity.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
                .unwrap_or_default()
        }),
    };
    Some(DnstapSettings {
        output: output?,
        queries,
        responses,
        sample,
        queue,
        identity,
    })
}
