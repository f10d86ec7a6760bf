//! `[[zone]]`: each zone's origin, file and DNSSEC settings (keys are read by loading, not here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::config::located::parse_name;
use crate::config::located::{Collector, parse_duration};
use crate::config::raw::{RawConfig, RawDnssec};
use crate::config::{DnssecSpec, Setting, ZoneSource, ZoneSpec};

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
    }
}
