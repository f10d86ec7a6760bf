//! `gto dnssec keygen | ds | status | rollover`: key management from the command line, and
//! the automatic rollover the builder runs when a key's `lifetime` is up. Each command
//! returns the text it prints.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use hickory_proto::dnssec::DigestType;
use hickory_proto::rr::Name;

use super::keys::{self, Key, KeyAlgorithm, KeyError, Role, Timeline, Timings};
use crate::loaded::Loaded;

/// Rollover timings of the zone at `index` of a loaded config: its DNSKEY TTL, the
/// largest TTL it serves (static, GSLB and negative), the parent's DS TTL and the margin.
pub fn timings(loaded: &Loaded, index: usize) -> Option<Timings> {
    let spec = loaded.config.zones.get(index)?;
    let dnssec = spec.dnssec.as_ref()?;
    let zone = loaded.zones.get(index)?;
    let origin = zone.origin();
    let static_max = zone
        .rrsets()
        .flat_map(|(_, sets)| sets.iter().flat_map(|s| &s.records))
        .map(|r| r.ttl)
        .chain([zone.soa().ttl, zone.negative_ttl()])
        .max()
        .unwrap_or(0);
    let gslb_max = loaded
        .config
        .services
        .iter()
        .filter(|s| origin.zone_of(&s.name.clone().into()))
        .map(|s| s.ttl.get())
        .max()
        .unwrap_or(0);
    Some(Timings {
        dnskey_ttl: dnssec.dnskey_ttl,
        max_ttl: static_max.max(gslb_max),
        parent_ds_ttl: dnssec.parent_ds_ttl,
        propagation: u32::try_from(dnssec.propagation.as_secs()).unwrap_or(u32::MAX),
    })
}

/// `gto dnssec keygen`: a new key, active now. Prints its files and, for a key whose DS
/// goes to the parent, the DS.
pub fn keygen(
    dir: &Path,
    zone: &Name,
    role: Role,
    algorithm: KeyAlgorithm,
    dnskey_ttl: u32,
) -> Result<String, KeyError> {
    let now = super::now();
    let key = keys::generate(dir, zone, role, algorithm, Timeline::from(now), dnskey_ttl)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "; made {} key {} for {zone} ({}) in {}",
        role.as_str().to_uppercase(),
        key.tag,
        algorithm,
        dir.display()
    );
    let _ = writeln!(out, "; files: {}.{{key,private,state}}", stem_of(&key));
    if role.is_entry_point() {
        let _ = writeln!(out, "; DS for the parent zone (also `gto dnssec ds`):");
        out.push_str(&ds_lines(zone, &key, 86_400));
    }
    Ok(out)
}

fn stem_of(key: &Key) -> String {
    keys::stem_path(&key.state_path).display().to_string()
}

fn ds_lines(zone: &Name, key: &Key, ds_ttl: u32) -> String {
    match key.dnskey.to_digest(zone, DigestType::SHA256) {
        Ok(digest) => {
            let hex: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
            format!(
                "{zone} {ds_ttl} IN DS {} {} 2 {hex}\n",
                key.tag,
                key.algorithm.number()
            )
        }
        Err(error) => format!("; could not digest key {}: {error}\n", key.tag),
    }
}

/// `gto dnssec ds`: for every signed zone, the DS (SHA-256) and DNSKEY of each key whose
/// DS belongs at the parent now or soon (published entry points), ready for the parent
/// zone or a validator's trust anchor file.
pub fn ds(loaded: &Loaded) -> String {
    let now = super::now();
    let mut out = String::new();
    for (index, spec) in loaded.config.zones.iter().enumerate() {
        let (Some(dnssec), Some(Some(ring))) = (&spec.dnssec, loaded.keys.get(index)) else {
            continue;
        };
        for key in ring.published(now).filter(|k| k.role.is_entry_point()) {
            let _ = writeln!(
                out,
                "; {} {} key {}: {}",
                spec.origin,
                key.role.as_str().to_uppercase(),
                key.tag,
                key.state(now)
            );
            out.push_str(&ds_lines(&spec.origin, key, dnssec.parent_ds_ttl));
            let _ = writeln!(
                out,
                "{} {} IN DNSKEY {}",
                spec.origin, dnssec.dnskey_ttl, key.dnskey
            );
        }
    }
    out
}

/// `gto dnssec status`: every key of every signed zone, its state and timeline, and the
/// next step.
pub fn status(loaded: &Loaded) -> String {
    let now = super::now();
    let mut out = String::new();
    let _ = writeln!(out, "now: {}", crate::time::rfc3339_unix(now));
    for (index, spec) in loaded.config.zones.iter().enumerate() {
        let Some(dnssec) = &spec.dnssec else {
            let _ = writeln!(out, "\nzone {}: unsigned", spec.origin);
            continue;
        };
        let _ = writeln!(
            out,
            "\nzone {}: signed, keys in {}",
            spec.origin,
            dnssec.keys.display()
        );
        let Some(Some(ring)) = loaded.keys.get(index) else {
            continue;
        };
        for key in &ring.keys {
            let t = &key.timeline;
            let show = |at: Option<u64>| at.map_or("-".to_string(), crate::time::rfc3339_unix);
            let _ = writeln!(
                out,
                "  key {:5} {} {}: {}\n    published {}, active {}, retire {}, remove {}",
                key.tag,
                key.role.as_str().to_uppercase(),
                key.algorithm,
                key.state(now),
                show(Some(t.publish)),
                show(Some(t.active)),
                show(t.retire),
                show(t.remove),
            );
            let next = match key.next_event(now) {
                Some((at, what)) => format!("{what} at {}", crate::time::rfc3339_unix(at)),
                None if key.state(now) == "removed" => {
                    "none (its files may be deleted)".to_string()
                }
                None => match dnssec.lifetime {
                    Some(lifetime) if key.role.signs_zone() => format!(
                        "rollover (lifetime {}) at {}",
                        humantime::format_duration(lifetime),
                        crate::time::rfc3339_unix(t.active.saturating_add(lifetime.as_secs()))
                    ),
                    _ => "none scheduled (`gto dnssec rollover` starts one)".to_string(),
                },
            };
            let _ = writeln!(out, "    next: {next}");
        }
        let parent = ring.parent_keys(now);
        let published: Vec<u16> = ring
            .published(now)
            .filter(|k| k.role.is_entry_point())
            .map(|k| k.tag)
            .collect();
        let _ = writeln!(
            out,
            "  CDS/CDNSKEY published for: {:?}; DS the parent may hold: {published:?}\n",
            parent.iter().map(|k| k.tag).collect::<Vec<_>>()
        );
    }
    out
}

/// `gto dnssec rollover`: starts a pre-publication rollover of the active key of `role` in
/// the zone at `index`. Returns what was done.
pub fn rollover(loaded: &Loaded, index: usize, role: Role) -> Result<String, String> {
    let spec = loaded.config.zones.get(index).ok_or("no such zone")?;
    let dnssec = spec
        .dnssec
        .as_ref()
        .ok_or_else(|| format!("zone {} is not signed", spec.origin))?;
    let ring = loaded
        .keys
        .get(index)
        .and_then(Option::as_ref)
        .ok_or("no keys")?;
    let timings = timings(loaded, index).ok_or("no timings")?;
    let now = super::now();
    let old = ring
        .keys
        .iter()
        .find(|k| k.role == role && k.active(now) && k.timeline.retire.is_none())
        .ok_or_else(|| {
            format!(
                "no active {} key without a rollover under way in zone {}",
                role.as_str().to_uppercase(),
                spec.origin
            )
        })?;
    let new =
        keys::roll(&dnssec.keys, &spec.origin, old, now, timings).map_err(|e| e.to_string())?;
    Ok(describe_roll(&spec.origin, old, &new, &timings))
}

fn describe_roll(zone: &Name, old: &Key, new: &Key, timings: &Timings) -> String {
    format!(
        "zone {zone}: {} rollover: key {} published now, signs from {}; key {} stops \
         signing then and is removed at {} (publish interval {} s, retire interval {} s)\n",
        old.role.as_str().to_uppercase(),
        new.tag,
        crate::time::rfc3339_unix(new.timeline.active),
        old.tag,
        crate::time::rfc3339_unix(new.timeline.active + timings.retire_interval(old.role)),
        timings.publish_interval(),
        timings.retire_interval(old.role),
    )
}

/// Rolls every signing key whose `lifetime` is up (zones with a lifetime only); returns
/// how many rollovers started. Errors are logged.
pub fn roll_due(loaded: &Loaded) -> usize {
    let now = super::now();
    let mut started = 0;
    for (index, spec) in loaded.config.zones.iter().enumerate() {
        let Some(dnssec) = &spec.dnssec else {
            continue;
        };
        let (Some(lifetime), Some(Some(ring)), Some(timings)) = (
            dnssec.lifetime,
            loaded.keys.get(index),
            timings(loaded, index),
        ) else {
            continue;
        };
        let due: Vec<&Arc<Key>> = ring
            .keys
            .iter()
            .filter(|k| k.role.signs_zone() && keys::due(k, now, lifetime))
            .collect();
        for old in due {
            match keys::roll(&dnssec.keys, &spec.origin, old, now, timings) {
                Ok(new) => {
                    started += 1;
                    tracing::info!(
                        zone = %spec.origin,
                        "{}",
                        describe_roll(&spec.origin, old, &new, &timings).trim_end()
                    );
                }
                Err(error) => {
                    tracing::warn!(zone = %spec.origin, %error, "could not start a key rollover");
                }
            }
        }
    }
    started
}
