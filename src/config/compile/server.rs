//! `[server]`, `[rrl]` and `[health]`: listeners, limits, rate limiting, probe settings.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use crate::config::located::{Collector, parse_duration, parse_size};
use crate::config::raw::{RawConfig, RawHealth, RawRrl};
use crate::config::{AdminSettings, HealthSettings, RrlSettings, ServerSettings};

/// Default listener: loopback, unprivileged port, so a fresh install never clashes with a
/// system resolver on :53.
const DEFAULT_LISTEN: &str = "127.0.0.1:5353";
/// Our EDNS UDP payload size: the DNS Flag Day 2020 value that avoids IP fragmentation.
const DEFAULT_UDP_PAYLOAD: u16 = 1232;
/// A TCP connection that sends nothing for this long is closed.
const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Queries per TCP connection before it is closed: high enough that a resolver's
/// pipelined connection is seldom cut (Knot, NSD, PowerDNS and gdnsd set no limit), low
/// enough that a long-lived connection is spread again now and then.
const DEFAULT_TCP_MAX_QUERIES: usize = 10_000;
/// Threads serving TCP unless `tcp_threads` says (gdnsd's default too).
const DEFAULT_TCP_THREADS: usize = 2;
/// See [`crate::config::ServerSettings::udp_coalesce`].
const DEFAULT_UDP_COALESCE: Duration = Duration::from_micros(100);

/// The admin API cannot listen where DNS listens over TCP: one of the two would fail to
/// bind at start (or take the other's connections).
pub(super) fn check_listeners(
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

pub(super) fn compile_server(
    raw: &RawConfig,
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> ServerSettings {
    let listen = compile_listen(raw, errors);
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
        .unwrap_or(DEFAULT_TCP_MAX_QUERIES);
    let tcp_threads = raw
        .server
        .tcp_threads
        .as_ref()
        .and_then(|v| errors.ranged(v, "server.tcp_threads", 1..=256))
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(DEFAULT_TCP_THREADS);
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
    if workers == 0
        && let Some(wildcard) = listen.iter().find(|a| a.ip().is_unspecified())
        && let Some(set) = server.workers.as_ref()
    {
        errors.at(
            set,
            "server.workers",
            format!(
                "workers = 0 (the plain UDP loop) cannot answer from the address asked on the \
                 wildcard {wildcard}: use workers >= 1, or list each address"
            ),
        );
    }
    ServerSettings {
        listen,
        udp_payload,
        tcp_idle_timeout,
        workers,
        tcp_max_connections,
        tcp_max_queries,
        tcp_threads,
        udp_coalesce,
        max_file_size,
        include_root,
        state_file_follow_symlinks,
        identity: compile_identity(raw, errors),
        version: raw.server.version.unwrap_or(true),
        state_file: compile_state_file(raw, base_dir, state_file_follow_symlinks, errors),
    }
}

/// `server.listen`: 127.0.0.1:5353 unless set; each address once; a wildcard address
/// (`0.0.0.0`, `[::]`) alone on its port and family (it covers every address there).
fn compile_listen(raw: &RawConfig, errors: &mut Collector<'_>) -> Vec<SocketAddr> {
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
                    Ok(addr) if !seen.insert(addr) => {
                        errors.at(entry, path, format!("{addr} is listed twice"));
                    }
                    Ok(addr) => {
                        let covered = list.iter().filter_map(|e| e.get_ref().parse().ok()).find(
                            |other: &SocketAddr| {
                                *other != addr
                                    && other.ip().is_unspecified()
                                    && other.port() == addr.port()
                                    && other.is_ipv6() == addr.is_ipv6()
                            },
                        );
                        match covered {
                            Some(wildcard) => errors.at(
                                entry,
                                path,
                                format!(
                                    "{addr} is already served by the wildcard {wildcard}; \
                                     list one or the other"
                                ),
                            ),
                            None => listen.push(addr),
                        }
                    }
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
    listen
}

/// `server.identity` (NSID and CH TXT): 1 to 255 printable characters.
fn compile_identity(raw: &RawConfig, errors: &mut Collector<'_>) -> Option<String> {
    let id = raw.server.identity.as_ref()?;
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
}

/// `server.state_file`, relative to the config's directory; it must be replaceable (a
/// regular file, or a symlink when following them is allowed).
fn compile_state_file(
    raw: &RawConfig,
    base_dir: &Path,
    follow_symlinks: bool,
    errors: &mut Collector<'_>,
) -> Option<std::path::PathBuf> {
    let file = raw.server.state_file.as_ref()?;
    if file.get_ref().is_empty() {
        errors.at(file, "server.state_file", "must not be empty");
        return None;
    }
    let path = base_dir.join(file.get_ref());
    if let Err(message) = crate::files::replaceable(&path, follow_symlinks) {
        errors.at(file, "server.state_file", message);
    }
    Some(path)
}

pub(super) fn compile_rrl(raw: &RawConfig, errors: &mut Collector<'_>) -> RrlSettings {
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

pub(super) fn compile_health(raw: &RawConfig, errors: &mut Collector<'_>) -> HealthSettings {
    let Some(health) = &raw.health else {
        return HealthSettings::default();
    };
    let RawHealth {
        source,
        source6,
        exec_limit,
    } = health.get_ref();
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
    let exec_limit = match exec_limit {
        None => HealthSettings::DEFAULT_EXEC_LIMIT,
        Some(limit) => usize::try_from(*limit.get_ref())
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .unwrap_or_else(|| {
                errors.at(
                    limit,
                    "health.exec_limit",
                    "must be between 1 and 1024 (exec checks running at once)",
                );
                HealthSettings::DEFAULT_EXEC_LIMIT
            }),
    };
    HealthSettings {
        source,
        source6,
        exec_limit,
    }
}
