//! Stage two of config parsing: raw values become validated types, and every problem is
//! collected with its path and line.
//!
//! Cross-references (a service's pool, a fallback pool) are resolved to indices here, so
//! nothing downstream looks names up again. The compiled [`Config`] is never mutated.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::check::compile_check;
use super::located::{Collector, parse_duration, parse_size};
pub(crate) use super::located::{line_of, parse_name};
use super::raw::{
    RawAdmin, RawAffinity, RawCheck, RawCluster, RawClusterTls, RawConfig, RawDnssec, RawGeo,
    RawHealth, RawLoad, RawLocation, RawMember, RawNetwork, RawPool, RawRegion, RawRrl, RawService,
    RawWebhook, RawWhenAllDown,
};
use super::{
    AdminSettings, Affinity, Answers, ClusterSettings, ClusterTls, Config, DnssecSpec, DownWhen,
    GeoNetwork, GeoSettings, HealthSettings, LoadSettings, Location, Member, Policy, Pool, PoolId,
    Region, RrlSettings, Secret, ServerSettings, Service, Setting, Ttl, VoteRule, VoteScope,
    Webhook, Weight, WhenAllDown, ZoneSource, ZoneSpec,
};

/// Default listener: loopback, unprivileged port, so a fresh install never clashes with a
/// system resolver on :53.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:5353";
/// Our EDNS UDP payload size: the DNS Flag Day 2020 value that avoids IP fragmentation.
pub(crate) const DEFAULT_UDP_PAYLOAD: u16 = 1232;
/// A TCP connection that sends nothing for this long is closed.
pub(crate) const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// See [`super::ServerSettings::udp_coalesce`].
pub(crate) const DEFAULT_UDP_COALESCE: Duration = Duration::from_micros(100);

/// Compiles the raw document. Relative zone file paths are taken from `base_dir`.
/// The result holds every item that compiled, so later checks (zone files, names) can
/// still run and report their problems in the same pass; it is only used when `errors`
/// stays empty.
pub(crate) fn compile(raw: RawConfig, base_dir: &Path, errors: &mut Collector<'_>) -> Config {
    let server = compile_server(&raw, base_dir, errors);
    let admin = compile_admin(&raw, base_dir, errors);
    check_listeners(&raw, &server, &admin, errors);
    let rrl = compile_rrl(&raw, errors);
    let geo = compile_geo(&raw, base_dir, errors);
    let zones = compile_zones(&raw, base_dir, errors);
    let pools = compile_pools(&raw.pool, base_dir, errors);
    let services = compile_services(&raw.service, &pools, errors);
    check_preferences(&raw, &pools, errors);
    let cluster = compile_cluster(&raw, base_dir, errors);
    let health = compile_health(&raw, errors);
    let webhooks = compile_webhooks(&raw, base_dir, errors);
    Config {
        health,
        webhooks,
        server,
        admin,
        rrl,
        geo,
        zones,
        services,
        pools,
        cluster,
    }
}

/// The admin API cannot listen where DNS listens over TCP: one of the two would fail to
/// bind at start (or take the other's connections).
fn check_listeners(
    raw: &RawConfig,
    server: &ServerSettings,
    admin: &AdminSettings,
    errors: &mut Collector<'_>,
) {
    let Some(address) = admin.listen else {
        return;
    };
    let clash = server.listen.iter().find(|dns| {
        dns.port() == address.port()
            && address.port() != 0
            && (dns.ip() == address.ip() || address.ip().is_unspecified())
    });
    if let Some(dns) = clash {
        let message = format!(
            "{address} is also a DNS listener ({dns} in server.listen, UDP and TCP): give the \
             admin API another port"
        );
        match raw.admin.as_ref().and_then(|a| a.get_ref().listen.as_ref()) {
            Some(listen) => errors.at(listen, "admin.listen", message),
            None => errors.push(None, "admin.listen", message),
        }
    }
}

fn compile_server(raw: &RawConfig, base_dir: &Path, errors: &mut Collector<'_>) -> ServerSettings {
    let mut listen = Vec::new();
    match &raw.server.listen {
        None => listen.push(SocketAddr::from(([127, 0, 0, 1], 5353))),
        Some(list) if list.is_empty() => {
            errors.push(None, "server.listen", "at least one address is needed");
        }
        Some(list) => {
            let mut seen = HashSet::new();
            for (i, entry) in list.iter().enumerate() {
                let path = format!("server.listen[{i}]");
                match entry.get_ref().parse::<SocketAddr>() {
                    Ok(addr) if addr.ip().is_unspecified() => errors.at(
                        entry,
                        path,
                        format!(
                            "{addr} is a wildcard address: UDP answers would leave from \
                             whichever address the kernel picks, and resolvers drop answers \
                             from an address they did not ask; list each address to serve \
                             on instead (e.g. [\"192.0.2.53:53\", \"[2001:db8::53]:53\"])"
                        ),
                    ),
                    Ok(addr) if !seen.insert(addr) => {
                        errors.at(entry, path, format!("{addr} is listed twice"));
                    }
                    Ok(addr) => listen.push(addr),
                    Err(_) => errors.at(
                        entry,
                        path,
                        format!(
                            "{:?} is not an address:port (e.g. \"{DEFAULT_LISTEN}\")",
                            entry.get_ref()
                        ),
                    ),
                }
            }
        }
    }
    let server = &raw.server;
    let udp_payload = errors.setting(
        server.udp_payload.as_ref(),
        "server.udp_payload",
        DEFAULT_UDP_PAYLOAD,
        |v| u16::try_from(*v).ok().filter(|size| *size >= 512),
        "must be between 512 and 65535",
    );
    let tcp_idle_timeout = errors.setting(
        server.tcp_idle_timeout.as_ref(),
        "server.tcp_idle_timeout",
        DEFAULT_TCP_IDLE_TIMEOUT,
        |v| parse_duration(v).filter(|d| !d.is_zero()),
        "not a positive duration (e.g. \"10s\", \"500ms\")",
    );
    let workers = errors.setting(
        server.workers.as_ref(),
        "server.workers",
        std::thread::available_parallelism().map_or(1, usize::from),
        |v| usize::try_from(*v).ok().filter(|w| *w <= 256),
        "must be between 0 and 256",
    );
    // Unset: sized from the open-file limit at start (see `rlimit`).
    let tcp_max_connections = raw
        .server
        .tcp_max_connections
        .as_ref()
        .and_then(|v| errors.ranged(v, "server.tcp_max_connections", 1..=1_000_000))
        .and_then(|n| usize::try_from(n).ok());
    let tcp_max_queries = raw
        .server
        .tcp_max_queries
        .as_ref()
        .and_then(|v| errors.ranged(v, "server.tcp_max_queries", 1..=1_000_000))
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(100);
    let max_file_size = errors.setting(
        server.max_file_size.as_ref(),
        "server.max_file_size",
        crate::files::DEFAULT_MAX_FILE_SIZE,
        |v| parse_size(v),
        "not a size of 1KiB to 4GiB (e.g. \"256MiB\")",
    );
    errors.file_limit = max_file_size;
    let include_root = (!raw.server.include_outside_config_dir.unwrap_or(true))
        .then(|| std::fs::canonicalize(base_dir).unwrap_or_else(|_| base_dir.to_path_buf()));
    let state_file_follow_symlinks = raw.server.state_file_follow_symlinks.unwrap_or(false);
    let udp_coalesce = errors.setting(
        server.udp_coalesce.as_ref(),
        "server.udp_coalesce",
        DEFAULT_UDP_COALESCE,
        |v| parse_duration(v).filter(|d| *d <= Duration::from_millis(1)),
        "not a duration of at most 1ms (e.g. \"50us\", \"0s\" to turn it off)",
    );
    ServerSettings {
        listen,
        udp_payload,
        tcp_idle_timeout,
        workers,
        tcp_max_connections,
        tcp_max_queries,
        udp_coalesce,
        max_file_size,
        include_root,
        state_file_follow_symlinks,
        identity: raw.server.identity.as_ref().and_then(|id| {
            let text = id.get_ref();
            if text.is_empty() || text.len() > 255 || !text.bytes().all(|b| b.is_ascii_graphic()) {
                errors.at(
                    id,
                    "server.identity",
                    "must be 1 to 255 printable characters without spaces (e.g. \"ns1\")",
                );
                return None;
            }
            Some(text.clone())
        }),
        state_file: raw.server.state_file.as_ref().and_then(|file| {
            if file.get_ref().is_empty() {
                errors.at(file, "server.state_file", "must not be empty");
                return None;
            }
            let path = base_dir.join(file.get_ref());
            if let Err(message) = crate::files::replaceable(&path, state_file_follow_symlinks) {
                errors.at(file, "server.state_file", message);
            }
            Some(path)
        }),
    }
}

fn compile_rrl(raw: &RawConfig, errors: &mut Collector<'_>) -> RrlSettings {
    let mut settings = RrlSettings::default();
    let Some(rrl) = &raw.rrl else {
        return settings;
    };
    let RawRrl {
        enabled,
        responses_per_second,
        burst,
        slip,
        ipv4_prefix,
        ipv6_prefix,
        exempt,
        buckets,
    } = rrl.get_ref();
    let mut number = |field: &str, value: &Option<Spanned<i64>>, range: RangeInclusive<i64>| {
        let value = errors.ranged(value.as_ref()?, format!("rrl.{field}"), range)?;
        u32::try_from(value).ok()
    };
    settings.enabled = enabled.unwrap_or(true);
    if let Some(rate) = number("responses_per_second", responses_per_second, 1..=1_000_000) {
        settings.responses_per_second = rate;
        settings.burst = rate;
    }
    if let Some(burst) = number("burst", burst, 1..=1_000_000) {
        settings.burst = burst;
    }
    if let Some(slip) = number("slip", slip, 0..=10) {
        settings.slip = slip;
    }
    if let Some(prefix) = number("ipv4_prefix", ipv4_prefix, 8..=32) {
        settings.ipv4_prefix = prefix as u8;
    }
    if let Some(prefix) = number("ipv6_prefix", ipv6_prefix, 16..=128) {
        settings.ipv6_prefix = prefix as u8;
    }
    if let Some(count) = number("buckets", buckets, 1024..=(1 << 24)) {
        settings.buckets = (count as usize).next_power_of_two();
    }
    if let Some(list) = exempt {
        settings.exempt.clear();
        for (i, entry) in list.iter().enumerate() {
            match entry.get_ref().parse::<IpNet>() {
                Ok(net) => settings.exempt.push(net.trunc()),
                Err(_) => errors.at(
                    entry,
                    format!("rrl.exempt[{i}]"),
                    format!("{:?} is not a CIDR network", entry.get_ref()),
                ),
            }
        }
    }
    settings
}

fn compile_geo(raw: &RawConfig, base_dir: &Path, errors: &mut Collector<'_>) -> GeoSettings {
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
fn check_preferences(raw: &RawConfig, pools: &[Pool], errors: &mut Collector<'_>) {
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

/// The admin API listens on loopback by default.
pub(crate) const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8053";

fn compile_admin(raw: &RawConfig, base_dir: &Path, errors: &mut Collector<'_>) -> AdminSettings {
    let default_listen = SocketAddr::from(([127, 0, 0, 1], 8053));
    let Some(admin) = &raw.admin else {
        return AdminSettings {
            listen: Some(default_listen),
            token: None,
            ..AdminSettings::default()
        };
    };
    let RawAdmin {
        enabled,
        listen,
        token_file,
        max_drain,
        max_connections,
        header_timeout,
        hosts,
    } = admin.get_ref();
    let defaults = AdminSettings::default();
    let hosts = hosts.as_ref().map_or_else(Vec::new, |list| {
        let mut names = Vec::new();
        for (i, name) in list.get_ref().iter().enumerate() {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                });
            if valid {
                names.push(name);
            } else {
                errors.at(
                    list,
                    format!("admin.hosts[{i}]"),
                    format!("{name:?} is not a host name"),
                );
            }
        }
        names
    });
    let max_drain = errors.setting(
        max_drain.as_ref(),
        "admin.max_drain",
        defaults.max_drain,
        |v| parse_duration(v).filter(|d| !d.is_zero() && *d <= AdminSettings::MAX_DRAIN_LIMIT),
        "not a duration of at most 100 years (e.g. \"366d\")",
    );
    let header_timeout = errors.setting(
        header_timeout.as_ref(),
        "admin.header_timeout",
        defaults.header_timeout,
        |v| parse_duration(v).filter(|d| !d.is_zero() && *d <= Duration::from_secs(60)),
        "not a duration of at most 60s (e.g. \"5s\")",
    );
    let max_connections = max_connections
        .as_ref()
        .and_then(|v| errors.ranged(v, "admin.max_connections", 1..=10_000))
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(defaults.max_connections);
    let address = match listen {
        None => default_listen,
        Some(text) => match text.get_ref().parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                errors.at(
                    text,
                    "admin.listen",
                    format!(
                        "{:?} is not an address:port (e.g. \"{DEFAULT_ADMIN_LISTEN}\")",
                        text.get_ref()
                    ),
                );
                default_listen
            }
        },
    };
    let token = token_file.as_ref().and_then(|file| {
        let path = base_dir.join(file.get_ref());
        match crate::files::read_to_string(&path, errors.file_limit) {
            Ok(text) if text.trim().len() >= 16 => Some(Secret::new(text.trim().to_string())),
            Ok(_) => {
                errors.at(
                    file,
                    "admin.token_file",
                    format!(
                        "{} must hold a token of at least 16 characters",
                        path.display()
                    ),
                );
                None
            }
            Err(e) => {
                errors.at(file, "admin.token_file", format!("cannot read token: {e}"));
                None
            }
        }
    });
    let enabled = enabled.unwrap_or(true);
    if enabled && !address.ip().is_loopback() && token_file.is_none() {
        errors.at(
            admin,
            "admin.listen",
            format!("{address} is not loopback: set admin.token_file so changes need a token"),
        );
    }
    AdminSettings {
        listen: enabled.then_some(address),
        token,
        max_drain,
        max_connections,
        header_timeout,
        hosts,
    }
}

fn compile_webhooks(raw: &RawConfig, base_dir: &Path, errors: &mut Collector<'_>) -> Vec<Webhook> {
    let Some(notify) = &raw.notify else {
        return Vec::new();
    };
    let mut webhooks = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, hook) in notify.get_ref().webhook.iter().enumerate() {
        let path = format!("notify.webhook[{i}]");
        let RawWebhook {
            name,
            url,
            events,
            secret_file,
            ca_file,
            queue,
        } = hook.get_ref();
        let name = match name {
            None => format!("webhook{i}"),
            Some(name) => {
                let text = name.get_ref();
                let valid = !text.is_empty()
                    && text.len() <= 64
                    && text
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !valid {
                    errors.at(
                        name,
                        format!("{path}.name"),
                        "1 to 64 letters, digits, '-', '_' or '.'",
                    );
                }
                text.clone()
            }
        };
        if !names.insert(name.clone()) {
            errors.at(
                hook,
                format!("{path}.name"),
                format!("webhook {name:?} is named twice"),
            );
        }
        let url = match url {
            Some(url)
                if ["http://", "https://"]
                    .iter()
                    .any(|s| url.get_ref().starts_with(s))
                    && url.get_ref().parse::<axum::http::Uri>().is_ok() =>
            {
                url.get_ref().clone()
            }
            Some(url) => {
                errors.at(url, format!("{path}.url"), "not an http:// or https:// URL");
                continue;
            }
            None => {
                errors.at(hook, format!("{path}.url"), "missing");
                continue;
            }
        };
        let events = events.as_ref().map_or_else(Vec::new, |list| {
            for kind in list.get_ref() {
                if !crate::config::EVENT_KINDS.contains(&kind.as_str()) {
                    errors.at(
                        list,
                        format!("{path}.events"),
                        format!(
                            "unknown event kind {kind:?}; known: {}",
                            crate::config::EVENT_KINDS.join(", ")
                        ),
                    );
                }
            }
            list.get_ref().clone()
        });
        let read = |errors: &mut Collector<'_>, file: &Spanned<String>, key: &str| {
            let full = base_dir.join(file.get_ref());
            match crate::files::read_to_string(&full, errors.file_limit) {
                Ok(text) => Some(text),
                Err(e) => {
                    errors.at(file, format!("{path}.{key}"), format!("cannot read: {e}"));
                    None
                }
            }
        };
        let secret = secret_file
            .as_ref()
            .and_then(|f| read(errors, f, "secret_file"))
            .map(|s| Secret::new(s.trim().to_string()));
        let ca = ca_file.as_ref().and_then(|f| read(errors, f, "ca_file"));
        let queue = queue
            .as_ref()
            .and_then(|q| errors.ranged(q, format!("{path}.queue"), 1..=100_000))
            .and_then(|q| usize::try_from(q).ok())
            .unwrap_or(1024);
        webhooks.push(Webhook {
            name,
            url,
            events,
            secret,
            ca,
            queue,
        });
    }
    webhooks
}

fn compile_health(raw: &RawConfig, errors: &mut Collector<'_>) -> HealthSettings {
    let Some(health) = &raw.health else {
        return HealthSettings::default();
    };
    let RawHealth { source, source6 } = health.get_ref();
    let source = source.as_ref().and_then(|text| {
        text.get_ref()
            .parse()
            .map_err(|_| {
                errors.at(
                    text,
                    "health.source",
                    format!("{:?} is not an IPv4 address", text.get_ref()),
                );
            })
            .ok()
    });
    let source6 = source6.as_ref().and_then(|text| {
        text.get_ref()
            .parse()
            .map_err(|_| {
                errors.at(
                    text,
                    "health.source6",
                    format!("{:?} is not an IPv6 address", text.get_ref()),
                );
            })
            .ok()
    });
    HealthSettings { source, source6 }
}

/// Default `[cluster] lease_ttl`.
pub(crate) const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

fn compile_cluster(
    raw: &RawConfig,
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> Option<ClusterSettings> {
    let cluster = raw.cluster.as_ref()?;
    let RawCluster {
        etcd,
        name,
        instance,
        region,
        lease_ttl,
        tls,
        user,
        password_file,
    } = cluster.get_ref();
    let mut endpoints = Vec::new();
    match etcd {
        None => errors.at(
            cluster,
            "cluster.etcd",
            "missing: the etcd endpoints, e.g. [\"http://127.0.0.1:2379\"]",
        ),
        Some(list) if list.get_ref().is_empty() => {
            errors.at(list, "cluster.etcd", "needs at least one endpoint");
        }
        Some(list) => {
            for endpoint in list.get_ref() {
                let ok = ["http://", "https://"].iter().any(|scheme| {
                    endpoint
                        .strip_prefix(scheme)
                        .is_some_and(|rest| rest.contains(':') && !rest.contains('/'))
                });
                if ok {
                    endpoints.push(endpoint.clone());
                } else {
                    errors.at(
                        list,
                        "cluster.etcd",
                        format!("{endpoint:?} is not http://host:port or https://host:port"),
                    );
                }
            }
        }
    }
    let valid_id = |text: &str| {
        !text.is_empty()
            && text.len() <= 63
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    let name = match name {
        None => "default".to_string(),
        Some(text) if valid_id(text.get_ref()) => text.get_ref().clone(),
        Some(text) => {
            errors.at(
                text,
                "cluster.name",
                "letters, digits, '-', '_' and '.' only, at most 63",
            );
            String::new()
        }
    };
    let instance = match instance {
        Some(text) if valid_id(text.get_ref()) => text.get_ref().clone(),
        Some(text) => {
            errors.at(
                text,
                "cluster.instance",
                "letters, digits, '-', '_' and '.' only, at most 63",
            );
            String::new()
        }
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| valid_id(h))
            .unwrap_or_else(|| "gto".to_string()),
    };
    let lease_ttl = errors.setting(
        lease_ttl.as_ref(),
        "cluster.lease_ttl",
        DEFAULT_LEASE_TTL,
        |v| {
            parse_duration(v)
                .filter(|d| *d >= Duration::from_secs(2) && *d <= Duration::from_secs(300))
        },
        "not a duration from 2s to 300s (e.g. \"10s\")",
    );
    let read = |errors: &mut Collector<'_>, file: &toml::Spanned<String>, path: &str| {
        let full = base_dir.join(file.get_ref());
        match crate::files::read_to_string(&full, errors.file_limit) {
            Ok(text) => Some(text),
            Err(e) => {
                errors.at(file, path, format!("cannot read: {e}"));
                None
            }
        }
    };
    let tls = tls.as_ref().map(|tls| {
        let RawClusterTls {
            ca_file,
            cert_file,
            key_file,
        } = tls.get_ref();
        let ca = ca_file
            .as_ref()
            .and_then(|f| read(errors, f, "cluster.tls.ca_file"));
        let identity = match (cert_file, key_file) {
            (Some(cert), Some(key)) => {
                let cert = read(errors, cert, "cluster.tls.cert_file");
                let key = read(errors, key, "cluster.tls.key_file");
                cert.zip(key).map(|(c, k)| (c, Secret::new(k)))
            }
            (None, None) => None,
            _ => {
                errors.at(tls, "cluster.tls", "cert_file and key_file go together");
                None
            }
        };
        ClusterTls { ca, identity }
    });
    if tls.is_some() && endpoints.iter().any(|e| e.starts_with("http://")) {
        errors.at(
            cluster,
            "cluster.tls",
            "tls is set but an endpoint is http://; use https:// endpoints",
        );
    }
    let auth = match (user, password_file) {
        (Some(user), Some(file)) => read(errors, file, "cluster.password_file")
            .map(|p| (user.get_ref().clone(), Secret::new(p.trim().to_string()))),
        (None, None) => None,
        _ => {
            errors.at(
                cluster,
                "cluster.user",
                "user and password_file go together",
            );
            None
        }
    };
    let region = region.as_ref().map(|r| r.get_ref().clone());
    Some(ClusterSettings {
        endpoints,
        name,
        instance,
        region,
        lease_ttl,
        tls,
        auth,
    })
}

fn compile_zones(raw: &RawConfig, base_dir: &Path, errors: &mut Collector<'_>) -> Vec<ZoneSpec> {
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

fn compile_dnssec(
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

fn compile_pools(
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
            if let Some(compiled) =
                compile_member(raw_member, check.as_ref(), &path, base_dir, errors)
            {
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

fn compile_load(raw: &Spanned<RawLoad>, path: &str, errors: &mut Collector<'_>) -> LoadSettings {
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

fn pool_label(name: &str, index: usize) -> String {
    if name.is_empty() {
        format!("pool[{index}]")
    } else {
        format!("pool.{name}")
    }
}

fn compile_member(
    raw: &Spanned<RawMember>,
    pool_check: Option<&Spanned<RawCheck>>,
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
    } = raw.get_ref();
    let before = errors.errors.len();
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
    let check = compile_check(
        effective.as_ref(),
        at,
        &check_path,
        &parsed,
        base_dir,
        errors,
    );
    (errors.errors.len() == before).then(|| Member {
        name: name.get_ref().clone(),
        addresses: parsed,
        location,
        weight,
        capacity,
        check,
    })
}

fn compile_location(
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

fn compile_services(
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
        let policy = match policy {
            None => Policy::Failover,
            Some(value) => match value.get_ref().as_str() {
                "failover" => Policy::Failover,
                "geo" => Policy::Geo,
                "least-load" => Policy::LeastLoad,
                "weighted" => Policy::Weighted,
                other => {
                    errors.at(
                        value,
                        format!("{path}.policy"),
                        format!("unknown policy {other:?} (expected \"failover\", \"geo\", \"weighted\" or \"least-load\")"),
                    );
                    Policy::Failover
                }
            },
        };
        let mut affinity_value = Affinity::default_for(policy);
        if let Some(raw) = affinity {
            let RawAffinity { v4, v6, candidates } = raw.get_ref();
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
        if policy == Policy::Geo
            && let Some(pool) = pool_id.and_then(|id| pools.get(id.0))
        {
            for member in pool.members.iter().filter(|m| m.location.is_none()) {
                errors.at(
                    service,
                    format!("{path}.policy"),
                    format!(
                        "policy \"geo\" needs a location on every endpoint; {}/{} has none",
                        pool.name, member.name
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
        let when_all_down = match when_all_down {
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
        };
        if let (Some(name), Some(pool)) = (name, pool_id) {
            services.push(Service {
                name,
                pool,
                policy,
                answers,
                ttl,
                when_all_down,
                span: service.span().start,
                position: i,
                affinity: affinity_value,
                use_ecs: ecs.unwrap_or(true),
            });
        }
    }
    services
}

fn find_pool(
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
