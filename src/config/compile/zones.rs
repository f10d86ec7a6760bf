//! `[[zone]]`: each zone's origin, file and DNSSEC settings (keys are read by loading, not here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::config::located::parse_name;
use crate::config::located::{Collector, parse_duration};
use crate::config::raw::{RawConfig, RawDnssec, RawParent};
use crate::config::{DnssecSpec, ParentServers, Setting, ZoneSource, ZoneSpec};

pub(super) fn compile_zones(
    raw: &RawConfig,
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> Vec<ZoneSpec> {
    let mut zones: Vec<ZoneSpec> = Vec::new();
    if raw.zone.is_empty() {
        errors.push(
            None,
            "zone",
            "no [[zone]] is configured: gto needs at least one zone to serve",
        );
    }
    for (i, zone) in raw.zone.iter().enumerate() {
        let path = format!("zone[{i}]");
        let origin = match parse_name(zone.get_ref().origin.get_ref()) {
            Ok(origin) => origin,
            Err(message) => {
                errors.at(&zone.get_ref().origin, format!("{path}.origin"), message);
                continue;
            }
        };
        if zones.iter().any(|z| z.origin == origin) {
            errors.at(
                &zone.get_ref().origin,
                format!("{path}.origin"),
                format!("zone {origin} is configured twice"),
            );
            continue;
        }
        let file = PathBuf::from(zone.get_ref().file.get_ref());
        let file = if file.is_absolute() {
            file
        } else {
            base_dir.join(file)
        };
        let dnssec = zone
            .get_ref()
            .dnssec
            .as_ref()
            .map(|raw| compile_dnssec(raw, &path, base_dir, errors));
        zones.push(ZoneSpec {
            origin,
            source: ZoneSource::File(file),
            dnssec,
        });
    }
    zones
}

pub(super) fn compile_dnssec(
    raw: &Spanned<RawDnssec>,
    path: &str,
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> DnssecSpec {
    let RawDnssec {
        keys,
        dnskey_ttl,
        lifetime,
        parent_ds_ttl,
        propagation,
        parent,
        parent_check,
    } = raw.get_ref();
    let dir = PathBuf::from(keys.get_ref());
    let dir = if dir.is_absolute() {
        dir
    } else {
        base_dir.join(dir)
    };
    let ttl = |errors: &mut Collector<'_>, value: &Option<Spanned<i64>>, name: &str, default| {
        value.as_ref().map_or(default, |v| {
            errors
                .ranged(v, format!("{path}.dnssec.{name}"), 1..=604_800)
                .map_or(default, |v| v as u32)
        })
    };
    let dnskey_ttl = ttl(errors, dnskey_ttl, "dnskey_ttl", 3600);
    let parent_ds_ttl = ttl(errors, parent_ds_ttl, "parent_ds_ttl", 86_400);
    let lifetime = lifetime.as_ref().and_then(|value| {
        let parsed = parse_duration(value.get_ref()).filter(|d| *d >= Duration::from_secs(3600));
        if parsed.is_none() {
            errors.at(
                value,
                format!("{path}.dnssec.lifetime"),
                "not a duration of at least 1h (e.g. \"90d\")",
            );
        }
        parsed
    });
    let propagation = errors.setting(
        propagation.as_ref(),
        format!("{path}.dnssec.propagation"),
        Duration::from_secs(3600),
        |v| parse_duration(v).filter(|d| *d <= Duration::from_secs(7 * 86_400)),
        "not a duration of at most 7d (e.g. \"1h\")",
    );
    let parent = parent.as_ref().map_or(ParentServers::Resolve, |value| {
        compile_parent(value, &format!("{path}.dnssec.parent"), errors)
    });
    let parent_check = errors.setting(
        parent_check.as_ref(),
        format!("{path}.dnssec.parent_check"),
        Duration::from_secs(600),
        |v| {
            parse_duration(v)
                .filter(|d| (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(d))
        },
        "not a duration from 1s to 1d (e.g. \"10m\")",
    );
    DnssecSpec {
        keys: dir,
        keys_at: Setting {
            line: Some(errors.line_at(keys.span().start)),
            path: format!("{path}.dnssec.keys"),
            written: keys.get_ref().clone(),
        },
        dnskey_ttl,
        lifetime,
        parent_ds_ttl,
        propagation,
        parent,
        parent_check,
    }
}

/// `dnssec.parent`: `"resolve"`, `"manual"` or a list of `ADDR`, `ADDR:PORT`, `[V6]:PORT`.
fn compile_parent(
    value: &Spanned<RawParent>,
    path: &str,
    errors: &mut Collector<'_>,
) -> ParentServers {
    match value.get_ref() {
        RawParent::Keyword(word) if word == "resolve" => ParentServers::Resolve,
        RawParent::Keyword(word) if word == "manual" => ParentServers::Manual,
        RawParent::Keyword(word) => {
            errors.at(
                value,
                path.to_string(),
                format!(
                    "{word:?} is not \"resolve\", \"manual\" or a list of the parent's server addresses"
                ),
            );
            ParentServers::Manual
        }
        RawParent::Servers(list) => {
            let mut servers = Vec::new();
            for (i, text) in list.iter().enumerate() {
                match parse_server(text) {
                    Some(addr) => servers.push(addr),
                    None => errors.at(
                        value,
                        format!("{path}[{i}]"),
                        format!("{text:?} is not an address, ADDR:PORT or [V6]:PORT"),
                    ),
                }
            }
            if list.is_empty() {
                errors.at(
                    value,
                    path.to_string(),
                    "an empty list: name the parent's servers, or \"resolve\" or \"manual\"",
                );
            }
            ParentServers::Servers(servers)
        }
    }
}

/// A server's address with port 53 when none is given.
fn parse_server(text: &str) -> Option<std::net::SocketAddr> {
    text.parse().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| (ip, 53).into())
    })
}
