//! `[[service]]` and `[geo]`: GSLB names and the pools they answer from, the networks and regions that place clients.

use std::collections::HashSet;
use std::path::Path;

use toml::Spanned;

use super::pools::compile_location;
use crate::config::located::Collector;
use crate::config::located::parse_name;
use crate::config::raw::{
    RawAffinity, RawAffinitySetting, RawConfig, RawGeo, RawNetwork, RawRegion, RawService,
    RawWhenAllDown,
};
use crate::config::{
    Affinity, Answers, GeoNetwork, GeoSettings, Policy, Pool, PoolId, Region, Service, Tie, Ttl,
    WhenAllDown,
};

pub(super) fn compile_geo(
    raw: &RawConfig,
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> GeoSettings {
    let Some(geo) = &raw.geo else {
        return GeoSettings::default();
    };
    let RawGeo {
        mmdb,
        default,
        network,
        region,
    } = geo.get_ref();
    let mut settings = GeoSettings {
        mmdb: mmdb.as_ref().map(|file| base_dir.join(file.get_ref())),
        default: default
            .as_ref()
            .and_then(|d| compile_location(d, "geo.default", errors)),
        ..GeoSettings::default()
    };
    for (i, entry) in network.iter().enumerate() {
        let RawNetwork { cidr, location } = entry.get_ref();
        let net = match cidr.get_ref().parse::<ipnet::IpNet>() {
            Ok(net) if net.trunc() == net => Some(net),
            Ok(net) => {
                errors.at(
                    cidr,
                    format!("geo.network[{i}].cidr"),
                    format!("{net} has host bits set (did you mean {}?)", net.trunc()),
                );
                None
            }
            Err(_) => {
                errors.at(
                    cidr,
                    format!("geo.network[{i}].cidr"),
                    format!("{:?} is not a CIDR network", cidr.get_ref()),
                );
                None
            }
        };
        if let Some(net) = net {
            if settings.networks.iter().any(|n| n.net == net) {
                errors.at(
                    cidr,
                    format!("geo.network[{i}].cidr"),
                    format!("{net} is listed twice"),
                );
            }
            if let Some(location) =
                compile_location(location, &format!("geo.network[{i}].location"), errors)
            {
                settings.networks.push(GeoNetwork { net, location });
            }
        }
    }
    for (i, entry) in region.iter().enumerate() {
        let RawRegion { name, prefer } = entry.get_ref();
        if name.get_ref().is_empty() {
            errors.at(name, format!("geo.region[{i}].name"), "must not be empty");
        } else if settings.regions.iter().any(|r| r.name == *name.get_ref()) {
            errors.at(
                name,
                format!("geo.region[{i}].name"),
                format!("region {:?} is defined twice", name.get_ref()),
            );
        }
        // A region always prefers itself first unless it says otherwise.
        let mut list = prefer.clone();
        if !list.contains(name.get_ref()) {
            list.insert(0, name.get_ref().clone());
        }
        settings.regions.push(Region {
            name: name.get_ref().clone(),
            prefer: list,
        });
    }
    settings
}

/// Every region a `prefer` list names must be some endpoint's region: a misspelt one would
/// silently never match.
pub(super) fn check_preferences(raw: &RawConfig, pools: &[Pool], errors: &mut Collector<'_>) {
    let Some(geo) = &raw.geo else {
        return;
    };
    let known: HashSet<&str> = pools
        .iter()
        .flat_map(|p| &p.members)
        .filter_map(|m| m.location.as_ref()?.region.as_deref())
        .collect();
    for (i, region) in geo.get_ref().region.iter().enumerate() {
        for (j, wanted) in region.get_ref().prefer.iter().enumerate() {
            if !known.contains(wanted.as_str()) {
                errors.at(
                    region,
                    format!("geo.region[{i}].prefer[{j}]"),
                    format!("no endpoint is in region {wanted:?} (check the spelling)"),
                );
            }
        }
    }
}

pub(super) fn compile_services(
    raw: &[Spanned<RawService>],
    pools: &[Pool],
    errors: &mut Collector<'_>,
) -> Vec<Service> {
    let mut services: Vec<Service> = Vec::new();
    for (i, service) in raw.iter().enumerate() {
        let RawService {
            name,
            pool,
            policy,
            tie,
            answers,
            ttl,
            when_all_down,
            affinity,
            ecs,
        } = service.get_ref();
        let path = format!("service[{i}]");
        let name = match parse_name(name.get_ref()) {
            Ok(parsed) if services.iter().any(|s| s.name == parsed) => {
                errors.at(
                    name,
                    format!("{path}.name"),
                    format!("GSLB name {parsed} is defined twice"),
                );
                None
            }
            Ok(parsed) => Some(parsed),
            Err(message) => {
                errors.at(name, format!("{path}.name"), message);
                None
            }
        };
        let pool_id = find_pool(pools, pool, &format!("{path}.pool"), errors);
        let policy = compile_policy(policy.as_ref(), &path, errors);
        let tie = compile_tie(tie.as_ref(), policy, &path, errors);
        let affinity_value = compile_affinity(affinity.as_ref(), policy, &path, errors);
        if policy == Policy::Geo
            && let Some(pool) = pool_id.and_then(|id| pools.get(id.0))
        {
            let label = super::pools::pool_label(&pool.name, pool_id.map_or(0, |id| id.0));
            // A member whose location is wrong has its own problem reported already.
            let unplaced = pool.members.iter().enumerate().filter(|(j, m)| {
                m.location.is_none()
                    && !errors.has_problem_in(&format!("{label}.member[{j}].location"))
            });
            let unplaced: Vec<String> = unplaced.map(|(_, m)| m.name.clone()).collect();
            for member in unplaced {
                errors.at(
                    service,
                    format!("{path}.policy"),
                    format!(
                        "policy \"geo\" needs a location on every endpoint; {}/{member} has none",
                        pool.name
                    ),
                );
            }
        }
        let answers = errors.setting(
            answers.as_ref(),
            format!("{path}.answers"),
            Answers::DEFAULT,
            |v| Answers::try_new(*v),
            format!("must be between 1 and {}", Answers::MAX),
        );
        let ttl = errors.setting(
            ttl.as_ref(),
            format!("{path}.ttl"),
            Ttl::DEFAULT,
            |v| Ttl::try_new(*v),
            format!("must be between 0 and {} seconds", Ttl::MAX),
        );
        let when_all_down =
            compile_when_all_down(when_all_down.as_ref(), pools, pool_id, &path, errors);
        if let (Some(name), Some(pool)) = (name, pool_id) {
            services.push(Service {
                name,
                pool,
                policy,
                tie,
                answers,
                ttl,
                when_all_down,
                span: service.span().start,
                position: i,
                affinity: affinity_value,
                use_ecs: ecs.unwrap_or(true),
                overrides: Vec::new(),
            });
        }
    }
    services
}

/// `policy`: failover unless set.
fn compile_policy(
    policy: Option<&Spanned<String>>,
    path: &str,
    errors: &mut Collector<'_>,
) -> Policy {
    match policy {
        None => Policy::Failover,
        Some(value) => match value.get_ref().as_str() {
            "failover" => Policy::Failover,
            "geo" => Policy::Geo,
            "least-load" => Policy::LeastLoad,
            "weighted" => Policy::Weighted,
            "latency" => Policy::Latency,
            other => {
                errors.at(
                    value,
                    format!("{path}.policy"),
                    format!("unknown policy {other:?} (expected \"failover\", \"geo\", \"weighted\", \"least-load\" or \"latency\")"),
                );
                Policy::Failover
            }
        },
    }
}

/// `tie`: config order unless set; `latency` breaks the ties of another policy's key.
fn compile_tie(
    tie: Option<&Spanned<String>>,
    policy: Policy,
    path: &str,
    errors: &mut Collector<'_>,
) -> Tie {
    let Some(value) = tie else {
        return Tie::ConfigOrder;
    };
    match value.get_ref().as_str() {
        "config-order" => Tie::ConfigOrder,
        "latency" if policy == Policy::Latency => {
            errors.at(
                value,
                format!("{path}.tie"),
                "policy \"latency\" ranks by latency already; tie = \"latency\" is for the other policies",
            );
            Tie::ConfigOrder
        }
        "latency" => Tie::Latency,
        other => {
            errors.at(
                value,
                format!("{path}.tie"),
                format!("unknown tie {other:?} (expected \"config-order\" or \"latency\")"),
            );
            Tie::ConfigOrder
        }
    }
}

/// `affinity`: the policy's default, with the prefix lengths and candidates set.
fn compile_affinity(
    raw: Option<&Spanned<RawAffinitySetting>>,
    policy: Policy,
    path: &str,
    errors: &mut Collector<'_>,
) -> Affinity {
    let mut affinity_value = Affinity::default_for(policy);
    if let Some(raw) = raw {
        let RawAffinity { v4, v6, candidates } = match raw.get_ref() {
            RawAffinitySetting::On(true) => return affinity_value,
            RawAffinitySetting::On(false) => {
                affinity_value.per_query = true;
                return affinity_value;
            }
            RawAffinitySetting::Table(table) => table,
        };
        let mut bits = |field: &str, value: &Option<i64>, max: u8, default: u8| match value {
            None => default,
            Some(v) => u8::try_from(*v)
                .ok()
                .filter(|v| *v <= max)
                .unwrap_or_else(|| {
                    errors.at(
                        raw,
                        format!("{path}.affinity.{field}"),
                        format!("must be between 0 and {max}"),
                    );
                    default
                }),
        };
        affinity_value.v4 = bits("v4", v4, 32, affinity_value.v4);
        affinity_value.v6 = bits("v6", v6, 128, affinity_value.v6);
        if let Some(c) = candidates {
            match usize::try_from(*c) {
                Ok(c) if (1..=1000).contains(&c) => affinity_value.candidates = c,
                _ => errors.at(
                    raw,
                    format!("{path}.affinity.candidates"),
                    "must be between 1 and 1000",
                ),
            }
        }
    }
    affinity_value
}

/// `when_all_down`: all, empty, or a fallback pool other than the service's own.
fn compile_when_all_down(
    value: Option<&Spanned<RawWhenAllDown>>,
    pools: &[Pool],
    pool_id: Option<PoolId>,
    path: &str,
    errors: &mut Collector<'_>,
) -> WhenAllDown {
    match value {
        None => WhenAllDown::All,
        Some(value) => match value.get_ref() {
            RawWhenAllDown::Keyword(word) if word == "all" => WhenAllDown::All,
            RawWhenAllDown::Keyword(word) if word == "empty" => WhenAllDown::Empty,
            RawWhenAllDown::Keyword(word) => {
                errors.at(
                    value,
                    format!("{path}.when_all_down"),
                    format!("unknown value {word:?} (expected \"all\", \"empty\" or {{ fallback = \"pool\" }})"),
                );
                WhenAllDown::All
            }
            RawWhenAllDown::Fallback { fallback } => {
                let spanned = Spanned::new(value.span(), fallback.clone());
                match find_pool(
                    pools,
                    &spanned,
                    &format!("{path}.when_all_down.fallback"),
                    errors,
                ) {
                    Some(id) if Some(id) == pool_id => {
                        errors.at(
                            value,
                            format!("{path}.when_all_down.fallback"),
                            "the fallback pool must differ from the service's pool",
                        );
                        WhenAllDown::All
                    }
                    Some(id) => WhenAllDown::Fallback(id),
                    None => WhenAllDown::All,
                }
            }
        },
    }
}

pub(super) fn find_pool(
    pools: &[Pool],
    name: &Spanned<String>,
    path: &str,
    errors: &mut Collector<'_>,
) -> Option<PoolId> {
    match pools.iter().position(|p| p.name == *name.get_ref()) {
        Some(index) => Some(PoolId(index)),
        None => {
            errors.at(name, path, format!("unknown pool {:?}", name.get_ref()));
            None
        }
    }
}

/// `[[override]]`s, attached to their services: the service and pool named must exist,
/// `members` must be of the service's pool, networks must be written without host bits,
/// and no two networks of one service's overrides may overlap.
pub(super) fn compile_overrides(
    raw: &[Spanned<crate::config::raw::RawOverride>],
    services: &mut [Service],
    pools: &[Pool],
    errors: &mut Collector<'_>,
) {
    use crate::config::{OverrideTarget, SubnetOverride};
    // Every network seen per service, with where: overlaps are reported at the later one.
    let mut seen: Vec<(usize, ipnet::IpNet, usize)> = Vec::new();
    for (i, table) in raw.iter().enumerate() {
        let path = format!("override[{i}]");
        let entry = table.get_ref();
        let service = match parse_name(entry.service.get_ref()) {
            Ok(name) => match services.iter().position(|s| s.name == name) {
                Some(index) => Some(index),
                None => {
                    errors.at(
                        &entry.service,
                        format!("{path}.service"),
                        format!("no [[service]] named {name}"),
                    );
                    None
                }
            },
            Err(message) => {
                errors.at(&entry.service, format!("{path}.service"), message);
                None
            }
        };
        let mut networks = Vec::new();
        if entry.networks.get_ref().is_empty() {
            errors.at(
                &entry.networks,
                format!("{path}.networks"),
                "lists no network",
            );
        }
        for (k, text) in entry.networks.get_ref().iter().enumerate() {
            let at = format!("{path}.networks[{k}]");
            match text.get_ref().parse::<ipnet::IpNet>() {
                Ok(net) if net.trunc() != net => errors.at(
                    text,
                    at,
                    format!(
                        "{net} has host bits set; write {} (the network itself)",
                        net.trunc()
                    ),
                ),
                Ok(net) => networks.push((net, k, text)),
                Err(_) => errors.at(
                    text,
                    at,
                    format!(
                        "{:?} is not a network (e.g. \"10.1.0.0/16\")",
                        text.get_ref()
                    ),
                ),
            }
        }
        let target = match (&entry.pool, &entry.members) {
            (Some(pool), None) => {
                find_pool(pools, pool, &format!("{path}.pool"), errors).map(OverrideTarget::Pool)
            }
            (None, Some(members)) => {
                let own = service
                    .and_then(|s| services.get(s))
                    .and_then(|s| pools.get(s.pool.0));
                if members.get_ref().is_empty() {
                    errors.at(members, format!("{path}.members"), "lists no member");
                }
                for name in members.get_ref() {
                    if own.is_some_and(|pool| !pool.members.iter().any(|m| m.name == *name)) {
                        errors.at(
                            members,
                            format!("{path}.members"),
                            format!(
                                "{name:?} is not a member of the service's pool {:?}",
                                own.map(|p| p.name.as_str()).unwrap_or_default()
                            ),
                        );
                    }
                }
                Some(OverrideTarget::Members(members.get_ref().clone()))
            }
            _ => {
                errors.at(
                    table,
                    path.clone(),
                    "give `pool` or `members` (the endpoints these clients get first), not both",
                );
                None
            }
        };
        let Some(service) = service else {
            continue;
        };
        for (net, k, text) in &networks {
            if let Some((_, other, j)) = seen
                .iter()
                .find(|(s, other, _)| *s == service && (other.contains(net) || net.contains(other)))
            {
                errors.at(
                    *text,
                    format!("{path}.networks[{k}]"),
                    format!(
                        "{net} overlaps {other} of override[{j}] for the same service: a client \
                         there would have two overrides"
                    ),
                );
            }
            seen.push((service, *net, i));
        }
        if let (Some(target), Some(service)) = (target, services.get_mut(service)) {
            service.overrides.push(SubnetOverride {
                networks: networks.into_iter().map(|(net, _, _)| net).collect(),
                target,
                position: i,
            });
        }
    }
}
