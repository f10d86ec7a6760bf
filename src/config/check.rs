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

/// Compiles the effective check of one member. `at` locates errors; `addresses` are the
/// member's answered addresses (the first is probed unless `address` says otherwise).
pub(crate) fn compile_check(
    raw: Option<&RawCheck>,
    at: usize,
    path: &str,
    addresses: &[IpAddr],
    base_dir: &Path,
    errors: &mut Collector<'_>,
) -> Check {
    let Some(raw) = raw else {
        return Check::none();
    };
    let RawCheck {
        kind,
        address,
        port,
        path: http_path,
        expect,
        body,
        host,
        sni,
        insecure,
        ca_file,
        cert_min_days,
        interval,
        timeout,
        rise,
        fall,
        load_fields,
        max_body,
    } = raw;
    let limit = errors.file_limit;
    let mut error =
        |field: &str, message: String| errors.push(Some(at), format!("{path}.{field}"), message);

    let interval = match interval {
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
    let timeout = match timeout {
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
    let rise = threshold("rise", rise, Check::DEFAULT_RISE);
    let fall = threshold("fall", fall, Check::DEFAULT_FALL);

    let kind = kind.as_deref().unwrap_or("tcp");
    let default_port = match kind {
        "http" => Some(80),
        "https" | "tls" => Some(443),
        _ => None,
    };
    let ip = match address {
        Some(text) => text.parse::<IpAddr>().ok().or_else(|| {
            error("address", format!("{text:?} is not an IP address"));
            None
        }),
        None => addresses.first().copied(),
    };
    let port = match port.or(default_port.map(i64::from)) {
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
    let target = ip.zip(port).map(|(ip, port)| SocketAddr::new(ip, port));
    let target_or_default = target.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1)));

    if let Some(host) = host
        && !is_header_token(host)
    {
        error(
            "host",
            format!("{host:?} is not a host name (no spaces, control characters or line breaks)"),
        );
    }
    if let Some(sni) = sni
        && ServerName::try_from(sni.as_str()).is_err()
    {
        error(
            "sni",
            format!("{sni:?} is not a DNS name or IP address to send as TLS server name"),
        );
    }
    let tls = |error: &mut dyn FnMut(&str, String)| -> TlsSettings {
        let roots = match ca_file {
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
        let cert_min_days = cert_min_days.and_then(|d| {
            u32::try_from(d).ok().or_else(|| {
                error(
                    "cert_min_days",
                    "must be a number of days (0 or more)".into(),
                );
                None
            })
        });
        TlsSettings {
            sni: sni
                .clone()
                .or_else(|| host.clone())
                .unwrap_or_else(|| target_or_default.ip().to_string()),
            insecure: insecure.unwrap_or(false),
            roots,
            cert_min_days,
        }
    };

    let probe = match kind {
        "none" => Probe::None,
        "tcp" => Probe::Tcp {
            target: target_or_default,
        },
        "tls" => Probe::Tls {
            target: target_or_default,
            tls: tls(&mut error),
        },
        "http" | "https" => {
            let http_path = http_path.clone().unwrap_or_else(|| "/".into());
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
            let max_body = match max_body {
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
            let expect = expect
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
            let tls = (kind == "https").then(|| tls(&mut error));
            Probe::Http(HttpProbe {
                target: target_or_default,
                path: http_path,
                host: host
                    .clone()
                    .unwrap_or_else(|| host_header(target_or_default)),
                expect,
                body: body.clone(),
                tls,
                load_fields: load_fields.clone().map(|f| LoadFields {
                    sessions: f.sessions,
                    capacity: f.capacity,
                }),
                max_body,
            })
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
    if max_body.is_some() && kind != "http" && kind != "https" {
        error(
            "max_body",
            format!("applies to http and https checks, not {kind}"),
        );
    }
    if load_fields.is_some() && kind != "http" && kind != "https" {
        error(
            "load_fields",
            format!("applies to http and https checks, not {kind}"),
        );
    }
    if kind != "tls" && kind != "https" && cert_min_days.is_some() {
        error(
            "cert_min_days",
            format!("applies to tls and https checks, not {kind}"),
        );
    }
    Check {
        probe,
        interval,
        timeout,
        rise,
        fall,
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
