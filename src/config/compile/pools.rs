//! `[[pool]]`: members, their addresses, locations and checks, and load settings.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use crate::config::check::compile_check;
use crate::config::located::{Collector, parse_duration};
use crate::config::raw::{RawCheck, RawLoad, RawLocation, RawMember, RawPool};
use crate::config::{
    Check, DownWhen, LoadSettings, Location, Member, Pool, VoteRule, VoteScope, Weight,
};

pub(super) fn compile_pools(
    raw: &[Spanned<RawPool>],
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> Vec<Pool> {
    let mut pools: Vec<Pool> = Vec::new();
    for (i, pool) in raw.iter().enumerate() {
        let RawPool {
            name,
            check,
            load,
            member,
            down_when,
            min_voters,
            vote_scope,
        } = pool.get_ref();
        let label = pool_label(name.get_ref(), i);
        if name.get_ref().is_empty() {
            errors.at(name, format!("pool[{i}].name"), "must not be empty");
        } else if pools.iter().any(|p| p.name == *name.get_ref()) {
            errors.at(
                name,
                format!("pool[{i}].name"),
                format!("pool {:?} is defined twice", name.get_ref()),
            );
        }
        if member.is_empty() {
            errors.at(
                pool,
                label.clone(),
                "a pool needs at least one [[pool.member]]",
            );
        }
        let mut members: Vec<Member> = Vec::new();
        let mut seen = HashSet::new();
        for (j, raw_member) in member.iter().enumerate() {
            let member_name = &raw_member.get_ref().name;
            if !seen.insert(member_name.get_ref().as_str()) {
                errors.at(
                    member_name,
                    format!("{label}.member[{j}].name"),
                    format!(
                        "member {:?} is defined twice in pool {:?}",
                        member_name.get_ref(),
                        name.get_ref()
                    ),
                );
            }
            let path = format!("{label}.member[{j}]");
            if let Some(compiled) = compile_member(
                raw_member,
                (name.get_ref(), check.as_ref()),
                &path,
                base_dir,
                errors,
            ) {
                members.push(compiled);
            }
        }
        let load = load.as_ref().map_or_else(LoadSettings::default, |raw| {
            compile_load(raw, &format!("{label}.load"), errors)
        });
        let defaults = VoteRule::default();
        let votes = VoteRule {
            down_when: errors.setting(
                down_when.as_ref(),
                format!("{label}.down_when"),
                defaults.down_when,
                |v| match v.as_str() {
                    "majority" => Some(DownWhen::Majority),
                    "all" => Some(DownWhen::All),
                    "any" => Some(DownWhen::Any),
                    _ => None,
                },
                "not \"majority\", \"all\" or \"any\"",
            ),
            min_voters: min_voters
                .as_ref()
                .and_then(|v| errors.ranged(v, format!("{label}.min_voters"), 1..=1000))
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(defaults.min_voters),
            scope: errors.setting(
                vote_scope.as_ref(),
                format!("{label}.vote_scope"),
                defaults.scope,
                |v| match v.as_str() {
                    "all" => Some(VoteScope::All),
                    "region" => Some(VoteScope::Region),
                    _ => None,
                },
                "not \"all\" or \"region\"",
            ),
        };
        pools.push(Pool {
            name: name.get_ref().clone(),
            members,
            load,
            votes,
        });
    }
    pools
}

pub(super) fn compile_load(
    raw: &Spanned<RawLoad>,
    path: &str,
    errors: &mut Collector<'_>,
) -> LoadSettings {
    let RawLoad {
        low,
        high,
        slow_start,
        stale_after,
        smoothing,
    } = raw.get_ref();
    let mut settings = LoadSettings::default();
    let mut ratio = |field: &str, value: &Option<f64>, default: f64| match value {
        None => default,
        Some(v) if v.is_finite() && *v > 0.0 && *v <= 10.0 => *v,
        Some(_) => {
            errors.at(
                raw,
                format!("{path}.{field}"),
                "must be a ratio above 0 (1.0 is full)",
            );
            default
        }
    };
    settings.low = ratio("low", low, settings.low);
    settings.high = ratio("high", high, settings.high);
    settings.smoothing = match smoothing {
        None => settings.smoothing,
        Some(v) if *v > 0.0 && *v <= 1.0 => *v,
        Some(_) => {
            errors.at(
                raw,
                format!("{path}.smoothing"),
                "must be within 0 (exclusive) and 1",
            );
            settings.smoothing
        }
    };
    if settings.low >= settings.high {
        errors.at(
            raw,
            format!("{path}.low"),
            format!("must be below high ({} >= {})", settings.low, settings.high),
        );
    }
    let mut duration = |field: &str, value: &Option<String>, default: Duration| match value {
        None => default,
        Some(text) => parse_duration(text).unwrap_or_else(|| {
            errors.at(
                raw,
                format!("{path}.{field}"),
                format!("{text:?} is not a duration (e.g. \"30s\")"),
            );
            default
        }),
    };
    settings.slow_start = duration("slow_start", slow_start, settings.slow_start);
    settings.stale_after = duration("stale_after", stale_after, settings.stale_after);
    if settings.stale_after.is_zero() {
        errors.at(raw, format!("{path}.stale_after"), "must be positive");
    }
    settings
}

pub(super) fn pool_label(name: &str, index: usize) -> String {
    if name.is_empty() {
        format!("pool[{index}]")
    } else {
        format!("pool.{name}")
    }
}

/// One member; `pool`: its pool's name and check.
pub(super) fn compile_member(
    raw: &Spanned<RawMember>,
    (pool_name, pool_check): (&str, Option<&Spanned<RawCheck>>),
    path: &str,
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> Option<Member> {
    let RawMember {
        name,
        addresses,
        location,
        weight,
        capacity,
        check,
        site,
    } = raw.get_ref();
    if name.get_ref().is_empty() {
        errors.at(name, format!("{path}.name"), "must not be empty");
    }
    if addresses.is_empty() {
        errors.at(
            raw,
            format!("{path}.addresses"),
            "a member needs at least one address",
        );
    }
    let parsed = member_addresses(addresses, path, errors);
    let location = location
        .as_ref()
        .and_then(|loc| compile_location(loc, &format!("{path}.location"), errors));
    let weight = errors.setting(
        weight.as_ref(),
        format!("{path}.weight"),
        Weight::DEFAULT,
        |v| Weight::try_new(*v),
        format!("must be between 1 and {}", Weight::MAX),
    );
    let capacity = match capacity {
        None => None,
        Some(value) => match u32::try_from(*value.get_ref()) {
            Ok(c) if c > 0 => Some(c),
            _ => {
                errors.at(
                    value,
                    format!("{path}.capacity"),
                    "must be a positive number of sessions",
                );
                None
            }
        },
    };
    let check = member_check(
        check.as_ref(),
        pool_check,
        (path, (pool_name, name.get_ref())),
        &parsed,
        base_dir,
        errors,
    );
    // Kept even with problems (the config is not used then): later checks see the
    // member, so a mistake in it does not also bring false "unknown" errors elsewhere.
    let site = site.as_ref().and_then(|site| {
        let text = site.get_ref();
        if text.is_empty() || text.len() > 63 || !text.bytes().all(|b| b.is_ascii_graphic()) {
            errors.at(
                site,
                format!("{path}.site"),
                "must be 1 to 63 printable characters without spaces (e.g. \"fra\")",
            );
            return None;
        }
        Some(text.clone())
    });
    Some(Member {
        name: name.get_ref().clone(),
        addresses: parsed,
        location,
        weight,
        capacity,
        check,
        site,
    })
}

/// A member's addresses: each an IP address a client can be given, once.
fn member_addresses(
    addresses: &[Spanned<String>],
    path: &str,
    errors: &mut Collector<'_>,
) -> Vec<IpAddr> {
    let mut parsed = Vec::new();
    for (k, address) in addresses.iter().enumerate() {
        match address.get_ref().parse::<IpAddr>() {
            Ok(ip) if parsed.contains(&ip) => {
                errors.at(
                    address,
                    format!("{path}.addresses[{k}]"),
                    format!("{ip} is listed twice"),
                );
            }
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                errors.at(
                    address,
                    format!("{path}.addresses[{k}]"),
                    format!("{ip} cannot be answered to clients"),
                );
            }
            Ok(ip) => parsed.push(ip),
            Err(_) => errors.at(
                address,
                format!("{path}.addresses[{k}]"),
                format!("{:?} is not an IP address", address.get_ref()),
            ),
        }
    }
    parsed
}

/// A member's effective check: its own fields over its pool's.
fn member_check(
    check: Option<&Spanned<RawCheck>>,
    pool_check: Option<&Spanned<RawCheck>>,
    (path, names): (&str, (&str, &str)),
    parsed: &[IpAddr],
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> Check {
    let pool_path = format!(
        "{}.check",
        path.rsplit_once(".member").map_or(path, |p| p.0)
    );
    let inherited = match (check, pool_check) {
        (Some(own), Some(pool)) => Some((own.get_ref(), pool.span().start, pool_path.as_str())),
        _ => None,
    };
    // The member's check fields override its pool's; errors point at the table that set them.
    let (effective, at, check_path) = match (check, pool_check) {
        (Some(own), Some(pool)) => (
            Some(own.get_ref().over(pool.get_ref())),
            own.span().start,
            format!("{path}.check"),
        ),
        (Some(own), None) => (
            Some(own.get_ref().clone()),
            own.span().start,
            format!("{path}.check"),
        ),
        (None, Some(pool)) => (
            Some(pool.get_ref().clone()),
            pool.span().start,
            format!(
                "{}.check",
                path.rsplit_once(".member").map_or(path, |p| p.0)
            ),
        ),
        (None, None) => (None, 0, String::new()),
    };
    compile_check(
        effective.as_ref(),
        at,
        &check_path,
        inherited,
        names,
        parsed,
        base_dir,
        errors,
    )
}

pub(super) fn compile_location(
    raw: &Spanned<RawLocation>,
    path: &str,
    errors: &mut Collector<'_>,
) -> Option<Location> {
    let RawLocation { lat, lon, region } = raw.get_ref();
    let coordinates = match (lat, lon) {
        (None, None) => None,
        (Some(lat), Some(lon))
            if (-90.0..=90.0).contains(lat) && (-180.0..=180.0).contains(lon) =>
        {
            Some((*lat, *lon))
        }
        (Some(_), Some(_)) => {
            errors.at(
                raw,
                path,
                "lat must be within -90..90 and lon within -180..180",
            );
            return None;
        }
        _ => {
            errors.at(raw, path, "lat and lon go together");
            return None;
        }
    };
    if coordinates.is_none() && region.is_none() {
        errors.at(raw, path, "a location needs lat and lon, or a region");
        return None;
    }
    Some(Location {
        coordinates,
        region: region.clone(),
    })
}
