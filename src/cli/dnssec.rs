//! `gto dnssec keygen | ds | status | rollover`: key management from the command line
//! ([`run`]). Each command returns the text it prints; the automatic rollover a key's
//! `lifetime` starts is key maintenance's ([`crate::routing::resign`]).

use std::fmt::Write as _;
use std::path::Path;

use hickory_proto::dnssec::DigestType;
use hickory_proto::rr::Name;

use std::io::Write as _;
use std::process::ExitCode;

use super::exit::{fail, report};
use crate::dnssec::keys::{self, Key, KeyAlgorithm, KeyError, Role, Timeline};
use crate::loaded::LOAD_TIMEOUT;
use crate::loaded::Loaded;
use crate::routing::resign::{describe_roll, timings};
use crate::{ConfigSource, EXIT_BAD_CONFIG};

/// `gto dnssec keygen`: a new key, active now. Prints its files and, for a key whose DS
/// goes to the parent, the DS.
pub fn keygen(
    dir: &Path,
    zone: &Name,
    role: Role,
    algorithm: KeyAlgorithm,
    dnskey_ttl: u32,
) -> Result<String, KeyError> {
    let now = crate::dnssec::now();
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
    let now = crate::dnssec::now();
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
    let now = crate::dnssec::now();
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
            "  CDS/CDNSKEY published for: {:?}; DS the parent may hold: {published:?}",
            parent.iter().map(|k| k.tag).collect::<Vec<_>>()
        );
        let every = humantime::format_duration(dnssec.parent_check);
        let asked = match &dnssec.parent {
            crate::config::ParentServers::Manual => {
                "never asked (parent = \"manual\": `gto dnssec ds-seen` once it serves the new DS)"
                    .to_string()
            }
            crate::config::ParentServers::Resolve => format!(
                "its name servers, found through the system's resolver, asked every {every} \
                 while a rollover waits"
            ),
            crate::config::ParentServers::Servers(list) => format!(
                "{} asked every {every} while a rollover waits",
                list.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let _ = writeln!(out, "  parent: {asked}\n");
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
    let now = crate::dnssec::now();
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
    if role.is_entry_point() && ring.keys.iter().any(|k| k.waits_for_parent(now)) {
        return Err(format!(
            "a rollover of {} waits for the parent's DS of the new key: update the parent, run \
             `gto dnssec ds-seen`, then roll again",
            spec.origin
        ));
    }
    let new =
        keys::roll(&dnssec.keys, &spec.origin, old, now, timings).map_err(|e| e.to_string())?;
    Ok(describe_roll(&spec.origin, old, &new, &timings))
}

/// The index of `zone` among the config's zones (case and the final dot do not matter).
fn zone_index(loaded: &Loaded, zone: &str) -> Option<usize> {
    let wanted = Name::from_ascii(zone).ok()?.to_lowercase();
    let wanted = wanted.to_string();
    loaded.config.zones.iter().position(|z| {
        z.origin.to_lowercase().to_string().trim_end_matches('.') == wanted.trim_end_matches('.')
    })
}

/// `gto dnssec ds-seen`: the parent serves the new entry point's DS; every retired KSK or
/// CSK kept for the parent is scheduled for removal. Prints what it scheduled.
pub fn ds_seen(loaded: &Loaded, index: usize) -> Result<String, String> {
    let spec = loaded.config.zones.get(index).ok_or("no such zone")?;
    let ring = loaded
        .keys
        .get(index)
        .and_then(Option::as_ref)
        .ok_or_else(|| format!("zone {} is not signed", spec.origin))?;
    let timings = timings(loaded, index).ok_or("no timings")?;
    let now = crate::dnssec::now();
    let scheduled =
        keys::parent_seen(ring, &spec.origin, now, timings).map_err(|e| e.to_string())?;
    if scheduled.is_empty() {
        return Err(format!(
            "no KSK or CSK of {} waits for the parent (see `gto dnssec status`)",
            spec.origin
        ));
    }
    let mut out = String::new();
    for key in scheduled {
        let _ = writeln!(
            out,
            "; {} {} {} leaves the DNSKEY RRset at {} (the parent's old DS and its \
             signatures out of every cache)",
            spec.origin,
            key.role.as_str().to_uppercase(),
            key.tag,
            crate::time::rfc3339_unix(key.timeline.remove.unwrap_or(now)),
        );
    }
    Ok(out)
}

/// `gto dnssec ...`: prints what the command returns; bad arguments or config exit 64.
pub fn run(command: super::DnssecCommand) -> ExitCode {
    use super::DnssecCommand;
    let usage = |message: String| {
        let _ = writeln!(std::io::stderr(), "error: {message}");
        ExitCode::from(EXIT_BAD_CONFIG)
    };
    let role_of = |text: &str| match text.to_ascii_lowercase().as_str() {
        "csk" => Ok(Role::Csk),
        "ksk" => Ok(Role::Ksk),
        "zsk" => Ok(Role::Zsk),
        other => Err(format!("--role {other:?}: one of csk, ksk, zsk")),
    };
    let load = |config: std::path::PathBuf| ConfigSource::File(config).load_within(LOAD_TIMEOUT);
    let result: Result<String, ExitCode> = match command {
        DnssecCommand::Keygen {
            zone,
            dir,
            algorithm,
            role,
            dnskey_ttl,
        } => {
            let zone = match hickory_proto::rr::Name::from_ascii(&zone) {
                Ok(mut zone) if !zone.is_empty() => {
                    zone.set_fqdn(true);
                    zone
                }
                _ => return usage(format!("--zone {zone:?} is not a domain name")),
            };
            let Some(algorithm) = KeyAlgorithm::parse(&algorithm) else {
                return usage(format!(
                    "--algorithm {algorithm:?}: one of ecdsap256sha256, ed25519"
                ));
            };
            let role = match role_of(&role) {
                Ok(role) => role,
                Err(message) => return usage(message),
            };
            keygen(&dir, &zone, role, algorithm, dnskey_ttl).map_err(|e| fail(&e))
        }
        DnssecCommand::Ds { config } => load(config)
            .map(|loaded| ds(&loaded))
            .map_err(|errors| report(&errors)),
        DnssecCommand::Status { config } => load(config)
            .map(|loaded| status(&loaded))
            .map_err(|errors| report(&errors)),
        DnssecCommand::Rollover { config, zone, role } => {
            let role = match role_of(&role) {
                Ok(role) => role,
                Err(message) => return usage(message),
            };
            match load(config) {
                Err(errors) => Err(report(&errors)),
                Ok(loaded) => match zone_index(&loaded, &zone) {
                    None => return usage(format!("zone {zone} is not in the config")),
                    Some(index) => rollover(&loaded, index, role).map_err(usage),
                },
            }
        }
        DnssecCommand::DsSeen { config, zone } => match load(config) {
            Err(errors) => Err(report(&errors)),
            Ok(loaded) => match zone_index(&loaded, &zone) {
                None => return usage(format!("zone {zone} is not in the config")),
                Some(index) => ds_seen(&loaded, index).map_err(usage),
            },
        },
    };
    match result {
        Ok(text) => {
            let _ = write!(std::io::stdout(), "{text}");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
