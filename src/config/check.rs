//! Compiles `check` tables (a pool's, overridden field by field by a member's) into a
//! validated [`Check`].

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hyper::http::uri::PathAndQuery;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::located::{Collector, parse_duration, parse_size};
use super::raw::RawCheck;
use super::{Check, HttpProbe, LoadFields, Probe, TlsSettings};

/// Shortest probe interval accepted.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Reports a problem with one field of the check being compiled.
type Report<'e> = dyn FnMut(&str, String) + 'e;

/// Compiles the effective check of one member. `at` locates errors; `addresses` are the
/// member's answered addresses (the first is probed unless `address` says otherwise).
///
/// `pool`: for a member's own `check` over its pool's, the member's own table and where
/// the pool's is (offset, path). A problem with a field the member did not set is the
/// pool's: reported at the pool's check, once, not again for every member.
pub(crate) fn compile_check(
    raw: Option<&RawCheck>,
    at: usize,
    path: &str,
    pool: Option<(&RawCheck, usize, &str)>,
    addresses: &[IpAddr],
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> Check {
    let Some(raw) = raw else {
        return Check::none();
    };
    let limit = errors.file_limit;
    let mut error = |field: &str, message: String| match pool {
        Some((own, pool_at, pool_path)) if !own.sets(field) => {
            errors.push(Some(pool_at), format!("{pool_path}.{field}"), message);
        }
        _ => errors.push(Some(at), format!("{path}.{field}"), message),
    };
    let (interval, timeout) = timing(raw, &mut error);
    let mut threshold = |field: &str, value: &Option<i64>, default: u8| match value {
        None => default,
        Some(v) => u8::try_from(*v)
            .ok()
            .filter(|v| (1..=100).contains(v))
            .unwrap_or_else(|| {
                error(field, "must be between 1 and 100".into());
                default
            }),
    };
    let rise = threshold("rise", &raw.rise, Check::DEFAULT_RISE);
    let fall = threshold("fall", &raw.fall, Check::DEFAULT_FALL);
    let kind = raw.kind.as_deref().unwrap_or("tcp");
    let known = matches!(kind, "tcp" | "http" | "https" | "tls" | "none");
    // `family = "each"` on a dual-stack member: its first IPv4 and first IPv6 address are
    // probed apart (the first governs A records, the second AAAA).
    let first_v6 = split_families(raw, kind, addresses, &mut error);
    let probed: Vec<IpAddr> = match first_v6 {
        Some(_) => addresses.iter().copied().filter(IpAddr::is_ipv4).collect(),
        None => addresses.to_vec(),
    };
    // An unknown kind is reported once, below; its port is not judged.
    let target = if known {
        target(raw, kind, &probed, &mut error)
    } else {
        None
    }
    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1)));
    check_names(raw, &mut error);
    let probe = match kind {
        "none" => Probe::None,
        "tcp" => Probe::Tcp { target },
        "tls" => Probe::Tls {
            target,
            tls: tls_settings(raw, target, base_dir, limit, &mut error),
        },
        "http" | "https" => {
            let tls =
                (kind == "https").then(|| tls_settings(raw, target, base_dir, limit, &mut error));
            Probe::Http(http_probe(raw, target, tls, &mut error))
        }
        other => {
            error(
                "kind",
                format!(
                    "unknown check kind {other:?} (expected \"tcp\", \"http\", \"https\", \"tls\" or \"none\")"
                ),
            );
            Probe::None
        }
    };
    if known {
        // A field the member inherits from its pool's check but whose kind it changed
        // (an https pool, a tcp member) does not apply to it: ignored, not an error.
        let inherited = |field: &str| pool.is_some_and(|(own, _, _)| !own.sets(field));
        misplaced_fields(raw, kind, &inherited, &mut error);
    }
    let probe_v6 = first_v6.map(|ip| retarget(raw, &probe, SocketAddr::new(ip, target.port())));
    Check {
        probe,
        probe_v6,
        interval,
        timeout,
        rise,
        fall,
    }
}

/// `family`: with "each" (the default), no `address` and addresses of both families, the
/// first IPv6 address to probe besides the first IPv4 one. "each" set with `address` is an
/// error (one address cannot stand for two families).
fn split_families(
    raw: &RawCheck,
    kind: &str,
    addresses: &[IpAddr],
    error: &mut Report<'_>,
) -> Option<IpAddr> {
    let each = match raw.family.as_deref() {
        None => true,
        Some("each") => {
            if raw.address.is_some() {
                error(
                    "family",
                    "\"each\" probes each address family's own address, but `address` names \
                     one: remove `address`, or set family = \"first\""
                        .into(),
                );
            }
            true
        }
        Some("first") => false,
        Some(other) => {
            error("family", format!("{other:?} is not \"each\" or \"first\""));
            false
        }
    };
    if !each || raw.address.is_some() || kind == "none" {
        return None;
    }
    let v4 = addresses.iter().any(IpAddr::is_ipv4);
    addresses
        .iter()
        .copied()
        .find(IpAddr::is_ipv6)
        .filter(|_| v4)
}

/// `probe` sent to another address (the IPv6 one of a dual-stack member): the Host header
/// and TLS server name follow the address unless configured.
fn retarget(raw: &RawCheck, probe: &Probe, target: SocketAddr) -> Probe {
    let named = raw.sni.is_some() || raw.host.is_some();
    let tls_for = |tls: &TlsSettings| TlsSettings {
        sni: if named {
            tls.sni.clone()
        } else {
            target.ip().to_string()
        },
        ..tls.clone()
    };
    match probe {
        Probe::None => Probe::None,
        Probe::Tcp { .. } => Probe::Tcp { target },
        Probe::Tls { tls, .. } => Probe::Tls {
            target,
            tls: tls_for(tls),
        },
        Probe::Http(http) => Probe::Http(HttpProbe {
            target,
            host: if raw.host.is_some() {
                http.host.clone()
            } else {
                host_header(target)
            },
            tls: http.tls.as_ref().map(tls_for),
            ..http.clone()
        }),
    }
}

/// The probe interval and timeout (shorter than the interval).
fn timing(raw: &RawCheck, error: &mut Report<'_>) -> (Duration, Duration) {
    let interval = match &raw.interval {
        None => Check::DEFAULT_INTERVAL,
        Some(text) => match parse_duration(text) {
            Some(d) if d >= MIN_INTERVAL => d,
            _ => {
                error(
                    "interval",
                    format!("{text:?} is not a duration of at least 100ms (e.g. \"2s\")"),
                );
                Check::DEFAULT_INTERVAL
            }
        },
    };
    let timeout = match &raw.timeout {
        None => Check::DEFAULT_TIMEOUT.min(interval / 2),
        Some(text) => match parse_duration(text) {
            Some(d) if !d.is_zero() => d,
            _ => {
                error(
                    "timeout",
                    format!("{text:?} is not a positive duration (e.g. \"1s\")"),
                );
                Check::DEFAULT_TIMEOUT.min(interval / 2)
            }
        },
    };
    if timeout >= interval {
        error(
            "timeout",
            format!("must be shorter than the interval ({timeout:?} >= {interval:?})"),
        );
    }
    (interval, timeout)
}

/// Where the probe goes: `address` (else the member's first address) and `port` (else
/// the kind's default). None when either is missing or wrong (reported).
fn target(
    raw: &RawCheck,
    kind: &str,
    addresses: &[IpAddr],
    error: &mut Report<'_>,
) -> Option<SocketAddr> {
    let default_port = match kind {
        "http" => Some(80),
        "https" | "tls" => Some(443),
        _ => None,
    };
    let ip = match &raw.address {
        Some(text) => text.parse::<IpAddr>().ok().or_else(|| {
            error("address", format!("{text:?} is not an IP address"));
            None
        }),
        None => addresses.first().copied(),
    };
    let port = match raw.port.or(default_port.map(i64::from)) {
        Some(p) => u16::try_from(p).ok().filter(|p| *p > 0).or_else(|| {
            error("port", "must be between 1 and 65535".into());
            None
        }),
        None if kind == "none" => None,
        None => {
            error("port", format!("a {kind} check needs a port"));
            None
        }
    };
    ip.zip(port).map(|(ip, port)| SocketAddr::new(ip, port))
}

/// The Host header and TLS server name, when given, must be sendable.
fn check_names(raw: &RawCheck, error: &mut Report<'_>) {
    if let Some(host) = &raw.host
        && !is_header_token(host)
    {
        error(
            "host",
            format!("{host:?} is not a host name (no spaces, control characters or line breaks)"),
        );
    }
    if let Some(sni) = &raw.sni
        && ServerName::try_from(sni.as_str()).is_err()
    {
        error(
            "sni",
            format!("{sni:?} is not a DNS name or IP address to send as TLS server name"),
        );
    }
}

/// TLS settings of a `tls` or `https` check: server name, trust roots (`ca_file`, read
/// here, at most `limit` bytes), and the certificate expiry margin.
fn tls_settings(
    raw: &RawCheck,
    target: SocketAddr,
    base_dir: &Path,
    limit: u64,
    error: &mut Report<'_>,
) -> TlsSettings {
    let roots = match &raw.ca_file {
        None => Vec::new(),
        Some(file) => {
            let file = base_dir.join(file);
            let pem = crate::files::read(&file, limit).map_err(|e| e.to_string());
            match pem.and_then(|pem| {
                CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{}: {e}", file.display()))
            }) {
                Ok(certs) if !certs.is_empty() => certs,
                Ok(_) => {
                    error(
                        "ca_file",
                        format!("{} holds no PEM certificate", file.display()),
                    );
                    Vec::new()
                }
                Err(e) => {
                    error("ca_file", format!("cannot read {e}"));
                    Vec::new()
                }
            }
        }
    };
    let cert_min_days = raw.cert_min_days.and_then(|d| {
        u32::try_from(d).ok().or_else(|| {
            error(
                "cert_min_days",
                "must be a number of days (0 or more)".into(),
            );
            None
        })
    });
    let cert_expiring_down = match raw.cert_expiring.as_deref() {
        None | Some("warn") => false,
        Some("down") => true,
        Some(other) => {
            error(
                "cert_expiring",
                format!("{other:?} is not \"warn\" or \"down\""),
            );
            false
        }
    };
    TlsSettings {
        sni: raw
            .sni
            .clone()
            .or_else(|| raw.host.clone())
            .unwrap_or_else(|| target.ip().to_string()),
        insecure: raw.insecure.unwrap_or(false),
        roots,
        cert_min_days,
        cert_expiring_down,
    }
}

/// The request and the expected answer of an `http` or `https` check.
fn http_probe(
    raw: &RawCheck,
    target: SocketAddr,
    tls: Option<TlsSettings>,
    error: &mut Report<'_>,
) -> HttpProbe {
    let http_path = raw.path.clone().unwrap_or_else(|| "/".into());
    if !http_path.starts_with('/') {
        error("path", format!("{http_path:?} must start with '/'"));
    } else if http_path.parse::<PathAndQuery>().is_err()
        || http_path.contains(|c: char| c.is_whitespace() || c.is_control())
    {
        error(
            "path",
            format!(
                "{http_path:?} is not a valid request path (percent-encode spaces and special characters)"
            ),
        );
    }
    let max_body = match &raw.max_body {
        None => HttpProbe::DEFAULT_MAX_BODY,
        Some(text) => parse_size(text)
            .filter(|n| *n <= 16 << 20)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or_else(|| {
                error(
                    "max_body",
                    format!("{text:?} is not a size of 1KiB to 16MiB (e.g. \"64KiB\")"),
                );
                HttpProbe::DEFAULT_MAX_BODY
            }),
    };
    let expect = raw
        .expect
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|code| {
            u16::try_from(code)
                .ok()
                .filter(|c| (100..=599).contains(c))
                .or_else(|| {
                    error("expect", format!("{code} is not an HTTP status code"));
                    None
                })
        })
        .collect();
    HttpProbe {
        target,
        path: http_path,
        host: raw.host.clone().unwrap_or_else(|| host_header(target)),
        expect,
        body: raw.body.clone(),
        tls,
        load_fields: raw.load_fields.clone().map(|f| LoadFields {
            sessions: f.sessions,
            capacity: f.capacity,
        }),
        max_body,
    }
}

/// Fields set for a kind of check they do not apply to.
fn misplaced_fields(
    raw: &RawCheck,
    kind: &str,
    inherited: &dyn Fn(&str) -> bool,
    error: &mut Report<'_>,
) {
    let http = kind == "http" || kind == "https";
    for (field, set, applies, kinds) in [
        ("max_body", raw.max_body.is_some(), http, "http and https"),
        (
            "load_fields",
            raw.load_fields.is_some(),
            http,
            "http and https",
        ),
        (
            "cert_min_days",
            raw.cert_min_days.is_some(),
            kind == "tls" || kind == "https",
            "tls and https",
        ),
        (
            "cert_expiring",
            raw.cert_expiring.is_some(),
            kind == "tls" || kind == "https",
            "tls and https",
        ),
    ] {
        if set && !applies && !inherited(field) {
            error(field, format!("applies to {kinds} checks, not {kind}"));
        }
    }
}

/// A Host header value: printable ASCII without spaces (a name, an address, a port).
fn is_header_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic())
}

/// Host header for an address: IPv6 in brackets, the port when not the default.
fn host_header(target: SocketAddr) -> String {
    match target.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}
