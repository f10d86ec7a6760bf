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
use super::{Check, DnsProbe, ExecProbe, HttpProbe, LoadFields, Probe, TlsSettings};

/// Shortest probe interval accepted.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Reports a problem with one field of the check being compiled.
type Report<'e> = dyn FnMut(&str, String) + 'e;

/// Compiles the effective check of one member. `at` locates errors; `addresses` are the
/// member's answered addresses (the first is probed unless `address` says otherwise).
///
/// `pool`: for a member's own `check` over its pool's, the member's own table and where
/// the pool's is (offset, path). A problem with a field the member did not set is the
/// pool's: reported at the pool's check, once, not again for every member. `names`: the
/// pool's and the member's (an `exec` command's `{pool}` and `{name}`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn compile_check(
    raw: Option<&RawCheck>,
    at: usize,
    path: &str,
    pool: Option<(&RawCheck, usize, &str)>,
    names: (&str, &str),
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
    let known = matches!(
        kind,
        "tcp" | "http" | "https" | "tls" | "none" | "dns" | "icmp" | "exec"
    );
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
        "dns" => Probe::Dns(dns_probe(raw, target, &mut error)),
        "icmp" => {
            icmp_allowed(&probed, &mut error);
            Probe::Icmp {
                target: target.ip(),
            }
        }
        "exec" => Probe::Exec(exec_probe(raw, target, names, base_dir, &mut error)),
        other => {
            error(
                "kind",
                format!(
                    "unknown check kind {other:?} (expected \"tcp\", \"http\", \"https\", \"tls\", \"dns\", \"icmp\", \"exec\" or \"none\")"
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
        Probe::Dns(dns) => Probe::Dns(DnsProbe {
            target,
            ..dns.clone()
        }),
        Probe::Icmp { .. } => Probe::Icmp {
            target: target.ip(),
        },
        Probe::Exec(exec) => Probe::Exec(ExecProbe {
            address: target.ip(),
            ..exec.clone()
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
        "dns" => Some(53),
        // No port of their own (`exec` may pass `port` to its command as `{port}`).
        "icmp" | "exec" => Some(0),
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
        Some(0) if raw.port.is_none() => Some(0),
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
    let dns = kind == "dns";
    let exec = kind == "exec";
    for (field, set, applies, kinds) in [
        ("max_body", raw.max_body.is_some(), http, "http and https"),
        (
            "load_fields",
            raw.load_fields.is_some(),
            http || exec,
            "http, https and exec",
        ),
        (
            "port",
            raw.port.is_some(),
            kind != "icmp",
            "every kind but icmp",
        ),
        ("query", raw.query.is_some(), dns, "dns"),
        ("qtype", raw.qtype.is_some(), dns, "dns"),
        ("transport", raw.transport.is_some(), dns, "dns"),
        ("rcode", raw.rcode.is_some(), dns, "dns"),
        ("answer", raw.answer.is_some(), dns, "dns"),
        ("command", raw.command.is_some(), exec, "exec"),
        ("max_output", raw.max_output.is_some(), exec, "exec"),
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
    for (field, missing) in [
        ("query", dns && raw.query.is_none()),
        ("command", exec && raw.command.is_none()),
    ] {
        if missing {
            error(
                field,
                format!("a {kind} check needs `{field}` (see gto.toml(5))"),
            );
        }
    }
}

/// The question and the expected reply of a `dns` check (`query` is required; its
/// absence is reported with the misplaced fields).
fn dns_probe(raw: &RawCheck, target: SocketAddr, error: &mut Report<'_>) -> DnsProbe {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::{Name, RecordType};
    let name = match raw.query.as_deref() {
        None => Name::root(),
        Some(text) => Name::from_utf8(text)
            .map(|name| {
                let mut name = name;
                name.set_fqdn(true);
                name
            })
            .unwrap_or_else(|e| {
                error("query", format!("{text:?} is not a domain name: {e}"));
                Name::root()
            }),
    };
    let qtype = match raw.qtype.as_deref() {
        None => RecordType::A,
        Some(text) => text
            .to_ascii_uppercase()
            .parse::<RecordType>()
            .ok()
            .filter(|t| !matches!(t, RecordType::OPT | RecordType::Unknown(_)))
            .unwrap_or_else(|| {
                error(
                    "qtype",
                    format!("{text:?} is not a record type (e.g. \"A\", \"SOA\")"),
                );
                RecordType::A
            }),
    };
    let tcp = match raw.transport.as_deref() {
        None | Some("udp") => false,
        Some("tcp") => true,
        Some(other) => {
            error("transport", format!("{other:?} is not \"udp\" or \"tcp\""));
            false
        }
    };
    let rcode = match raw.rcode.as_deref() {
        None => ResponseCode::NoError,
        Some(text) => rcode_named(text).unwrap_or_else(|| {
            error(
                "rcode",
                format!("{text:?} is not an rcode (NOERROR, SERVFAIL, NXDOMAIN, REFUSED, ...)"),
            );
            ResponseCode::NoError
        }),
    };
    let answers = raw.answer.clone().unwrap_or_default();
    for (k, answer) in answers.iter().enumerate() {
        if answer.trim().is_empty() {
            error("answer", format!("answer[{k}] is empty"));
        }
    }
    DnsProbe {
        target,
        name,
        qtype,
        tcp,
        rcode,
        answers,
    }
}

/// An rcode by its mnemonic as dig prints it (NOERROR, SERVFAIL, NXDOMAIN, REFUSED; case
/// does not matter) or its number.
fn rcode_named(text: &str) -> Option<hickory_proto::op::ResponseCode> {
    use hickory_proto::op::ResponseCode;
    if let Ok(code) = text.parse::<u16>() {
        return (code < 4096).then(|| <ResponseCode as From<u16>>::from(code));
    }
    (0..24u16)
        .map(<ResponseCode as From<u16>>::from)
        .find(|code| crate::config::rcode_mnemonic(*code).eq_ignore_ascii_case(text))
}

/// ICMP echo needs unprivileged ping sockets (`net.ipv4.ping_group_range`, which also
/// governs IPv6): a host that forbids them, or lacks the address family, is an error
/// here rather than an endpoint that is never up.
fn icmp_allowed(addresses: &[IpAddr], error: &mut Report<'_>) {
    let mut families: Vec<bool> = addresses.iter().map(IpAddr::is_ipv6).collect();
    families.dedup();
    for v6 in families {
        if let Err(e) = crate::health::kinds::ping_socket(v6) {
            let family = if v6 { "IPv6" } else { "IPv4" };
            let message = match e.kind() {
                std::io::ErrorKind::PermissionDenied => format!(
                    "ICMP echo needs an unprivileged ping socket, which this host forbids to \
                     gto's group ({family}: {e}); allow it with sysctl \
                     net.ipv4.ping_group_range=\"0 2147483647\" (systemd's default), or use \
                     another check kind"
                ),
                _ => format!("cannot open an {family} ping socket on this host: {e}"),
            };
            error("kind", message);
        }
    }
}

/// The command of an `exec` check: an argv whose program exists and may be run (a
/// relative path is the config file's directory's), placeholders among
/// [`ExecProbe::PLACEHOLDERS`].
fn exec_probe(
    raw: &RawCheck,
    target: SocketAddr,
    (pool, member): (&str, &str),
    base_dir: &Path,
    error: &mut Report<'_>,
) -> ExecProbe {
    let mut command = raw.command.clone().unwrap_or_default();
    match command.first_mut() {
        None if raw.command.is_some() => {
            error(
                "command",
                "is empty: give the program and its arguments".into(),
            );
        }
        None => {}
        Some(program) => {
            let path = base_dir.join(&*program);
            match std::fs::metadata(&path) {
                Ok(meta)
                    if meta.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111
                            != 0 =>
                {
                    *program = path.to_string_lossy().into_owned();
                }
                Ok(_) => error(
                    "command",
                    format!("{} is not an executable file", path.display()),
                ),
                Err(e) => error("command", format!("cannot run {}: {e}", path.display())),
            }
        }
    }
    for arg in &command {
        let mut rest = arg.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let placeholder = &rest[open..open + close + 1];
            if !ExecProbe::PLACEHOLDERS.contains(&placeholder) {
                error(
                    "command",
                    format!(
                        "unknown placeholder {placeholder} in {arg:?} (known: {})",
                        ExecProbe::PLACEHOLDERS.join(", ")
                    ),
                );
            }
            rest = &rest[open + close + 1..];
        }
    }
    let max_output = match &raw.max_output {
        None => ExecProbe::DEFAULT_MAX_OUTPUT,
        Some(text) => parse_size(text)
            .filter(|n| (1..=1 << 20).contains(n))
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or_else(|| {
                error(
                    "max_output",
                    format!("{text:?} is not a size of 1 byte to 1MiB (e.g. \"4KiB\")"),
                );
                ExecProbe::DEFAULT_MAX_OUTPUT
            }),
    };
    ExecProbe {
        command,
        address: target.ip(),
        port: raw.port.and_then(|p| u16::try_from(p).ok()),
        member: member.to_string(),
        pool: pool.to_string(),
        max_output,
        load_fields: raw.load_fields.clone().map(|f| LoadFields {
            sessions: f.sessions,
            capacity: f.capacity,
        }),
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
