//! Metric names and their descriptions. Every name is a `pub const` with the `gto_`
//! prefix; label values come from small fixed sets (no client addresses, no query names).
//!
//! Metrics go through the `metrics` facade; without an installed recorder they cost a
//! branch. [`install`] puts gto's recorder in place, which forwards to the Prometheus
//! exporter's once that is built.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Queries answered, by `transport` (udp, tcp), `qtype` and `rcode`.
pub const DNS_QUERIES_TOTAL: &str = "gto_dns_queries_total";
/// Queries dropped or refused before lookup, by `reason`.
pub const DNS_BAD_QUERIES_TOTAL: &str = "gto_dns_bad_queries_total";
/// UDP answers sent truncated (TC) because they did not fit the client's payload size.
pub const DNS_TRUNCATED_TOTAL: &str = "gto_dns_truncated_total";
/// UDP responses response rate limiting held back, by `action`: `dropped` (nothing sent)
/// or `slipped` (sent empty with TC, so the client retries over TCP).
pub const DNS_RATE_LIMITED_TOTAL: &str = "gto_dns_rate_limited_total";
/// TCP connections closed, by `reason` (idle, closed, query_limit, connection_limit, ...).
pub const DNS_TCP_CLOSED_TOTAL: &str = "gto_dns_tcp_closed_total";
/// Seconds until the earliest DNSSEC signature served expires, by `zone` (signed zones
/// only). Re-signing keeps it above 7 days; below that it is falling behind.
pub const DNSSEC_SIGNATURE_EXPIRY_SECONDS: &str = "gto_dnssec_signature_expiry_seconds";
/// When the earliest DNSSEC signature served expires (Unix time), by `zone`: alert on
/// `... - time()`, which stays right between updates.
pub const DNSSEC_SIGNATURE_EXPIRY_TIMESTAMP_SECONDS: &str =
    "gto_dnssec_signature_expiry_timestamp_seconds";
/// RRsets signed on first use (sets no snapshot had prepared, denials of names that do not
/// exist, wildcard synthesis).
pub const DNSSEC_SIGNED_ON_USE_TOTAL: &str = "gto_dnssec_signed_on_use_total";
/// Signatures on first use refused because the zone's budget for client-chosen names
/// (denials, wildcard synthesis) was spent: a flood of new names.
pub const DNSSEC_SIGNING_REFUSED_TOTAL: &str = "gto_dnssec_signing_refused_total";
/// Signatures made when the config part of snapshots was prepared (load, reload,
/// re-signing, key events).
pub const DNSSEC_SIGNED_AT_LOAD_TOTAL: &str = "gto_dnssec_signed_at_load_total";
/// Signatures a preparation reused from the zone's kept signatures (a restart, a reload
/// that changed part of the zone) instead of signing again.
pub const DNSSEC_REUSED_AT_LOAD_TOTAL: &str = "gto_dnssec_reused_at_load_total";
/// Reads of a zone's key directory that failed (a private key readable by others, a
/// truncated file), by `zone`: the keys read before stay in use.
pub const DNSSEC_KEY_READ_FAILURES_TOTAL: &str = "gto_dnssec_key_read_failures_total";
/// Retired KSKs or CSKs kept in a zone until the parent's DS for their successor is seen
/// (`gto dnssec ds-seen`), by `zone`: a rollover waiting for the parent.
pub const DNSSEC_WAITING_FOR_PARENT: &str = "gto_dnssec_keys_waiting_for_parent";
/// 1 while the fleet's DNSSEC key timeline for `zone` names keys this host lacks (it
/// signs with its last consistent keys meanwhile).
pub const DNSSEC_KEYSET_MISMATCH: &str = "gto_dnssec_keyset_mismatch";
/// `notAfter` of the certificate a TLS or HTTPS probe read, by `pool` and `member`.
pub const PROBE_CERT_EXPIRY_TIMESTAMP_SECONDS: &str = "gto_probe_cert_expiry_timestamp_seconds";
/// Checks of the parent's servers for the DS of a new KSK or CSK, by `zone` and `result`
/// (seen, not_seen, error).
pub const DNSSEC_PARENT_CHECKS_TOTAL: &str = "gto_dnssec_parent_checks_total";
/// Generation of the live routing snapshot.
pub const SNAPSHOT_GENERATION: &str = "gto_snapshot_generation";
/// Config reloads, by `result` (ok, error).
pub const CONFIG_RELOADS_TOTAL: &str = "gto_config_reloads_total";

/// Probe durations in seconds, by `kind`.
pub const PROBE_DURATION_SECONDS: &str = "gto_probe_duration_seconds";
/// Failed probes, by `kind` and `reason`.
pub const PROBE_FAILURES_TOTAL: &str = "gto_probe_failures_total";
/// Members added at run time that the running config holds.
pub const RUNTIME_MEMBERS: &str = "gto_runtime_members";
/// dnstap messages written.
pub const DNSTAP_MESSAGES_TOTAL: &str = "gto_dnstap_messages_total";
/// dnstap messages dropped, by `reason` (queue_full, no_output, write_error).
pub const DNSTAP_DROPPED_TOTAL: &str = "gto_dnstap_dropped_total";
/// Exec check commands killed, by `reason` (timeout, output).
pub const CHECK_EXEC_KILLED_TOTAL: &str = "gto_check_exec_killed_total";
/// Probes whose result is unknown because of a local failure (no file descriptor, no
/// buffer space), by `kind` and `reason`; they do not count against the endpoint.
pub const PROBE_UNKNOWN_TOTAL: &str = "gto_probe_unknown_total";
/// Health flips, by `to` (up, down).
pub const HEALTH_FLIPS_TOTAL: &str = "gto_health_flips_total";
/// Verdicts on an endpoint by the fleet's voters (`pool`, `member`, `verdict`).
pub const MEMBER_VOTES: &str = "gto_member_votes";
/// The smoothed round trip to an endpoint from a vantage region (`pool`, `member`,
/// `region`; the median of the region's vantages; region `""` for vantages without one).
pub const MEMBER_RTT_SECONDS: &str = "gto_member_rtt_seconds";
/// 1 when an endpoint is up, by `pool` and `member` (bounded by the config). Rendered at
/// scrape time from the running config, so an endpoint a reload removed disappears.
pub const MEMBER_UP: &str = "gto_member_up";
/// 1 while an endpoint's health is stale, by `pool` and `member` (rendered at scrape).
pub const MEMBER_STALE: &str = "gto_member_stale";
/// 1 while an operator drains an endpoint, by `pool` and `member` (rendered at scrape).
pub const MEMBER_DRAINED: &str = "gto_member_drained";
/// `gto_member_family_up{pool,member,family}`: gauge, 1 when a dual-stack endpoint's
/// address family check says up (`family = "each"`).
pub const MEMBER_FAMILY_UP: &str = "gto_member_family_up";
/// Audit records that could not be appended to `[admin] audit_file`.
pub const AUDIT_WRITE_FAILURES_TOTAL: &str = "gto_audit_write_failures_total";

/// Answers that included an endpoint, by `service`, `pool` and `member`.
pub const ANSWERS_TOTAL: &str = "gto_answers_total";
/// Time to build one routing snapshot, in seconds.
pub const SNAPSHOT_BUILD_SECONDS: &str = "gto_snapshot_build_seconds";
/// Query handling time in seconds, by `transport`, one sample per query: TCP (either
/// path), and the UDP general path (`workers = 0`, or a query the fast path hands over).
pub const DNS_QUERY_SECONDS: &str = "gto_dns_query_seconds";
/// UDP fast path: handling time per answer in seconds, one sample per batch of up to 64
/// queries (the batch's mean), so that timing costs nothing per query. Its `_count` counts
/// batches; queries are counted in `gto_dns_queries_total`.
pub const DNS_FAST_BATCH_SECONDS: &str = "gto_dns_fast_batch_seconds";
/// 1 for the selection each GSLB name answers with now, by `service` and `selection`
/// (normal, all_down_fail_open, all_down_fallback, all_down_empty).
pub const SERVICE_SELECTION: &str = "gto_service_selection";
/// 1, with the `version` and git `commit` gto was built from.
pub const BUILD_INFO: &str = "gto_build_info";
/// Admin API requests, by `route` and `status`.
pub const ADMIN_REQUESTS_TOTAL: &str = "gto_admin_requests_total";
/// Admin connections and event streams evicted to make room for a newcomer, and
/// connections refused because every one was busy, by `kind` (connection, event_stream,
/// refused).
pub const ADMIN_EVICTED_TOTAL: &str = "gto_admin_evicted_total";
/// Drain and undrain actions, by `action`.
pub const DRAINS_TOTAL: &str = "gto_drains_total";
/// State file writes that failed (the change is applied and served, but would be lost
/// at a restart until a later write succeeds).
pub const STATE_WRITE_FAILURES_TOTAL: &str = "gto_state_write_failures_total";
/// Last reported load of an endpoint (sessions / capacity), by `pool` and `member`, from
/// a health check's `load_fields` or a `PUT .../load` (rendered at scrape).
pub const MEMBER_LOAD: &str = "gto_member_load";

/// How often buffered histogram samples are folded into buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Buckets for `_seconds` histograms: 10 us to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

mod forward;

/// Installs gto's recorder (once per process) and begins building the Prometheus one
/// behind it, in a thread of its own that then folds histogram samples every
/// two seconds. The Prometheus recorder's clock calibrates once per process
/// (`quanta`, on a CPU with an invariant TSC: 1-200 ms of spinning; 2-3 ms on the 2-core
/// VM of the benches); nothing waits for it: what is counted meanwhile is kept and handed
/// over. `gto run` installs it once its sockets are bound ahead, so that the
/// calibration runs while the zones are read. Returns the handle `/metrics` renders.
pub fn install() -> MetricsHandle {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Another recorder may already be installed (an embedding program); then our
        // handle renders nothing, which /metrics shows plainly.
        let _ = metrics::set_global_recorder(forward::Forwarding);
        let build = || {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let upkeep = recorder.handle();
            forward::ready(recorder);
            describe_all();
            forward::show();
            upkeep
        };
        let spawned = std::thread::Builder::new()
            .name("gto-metrics".into())
            .spawn(move || {
                let upkeep = build();
                // Histogram samples are buffered until upkeep folds them into their
                // buckets; without it memory grows with every query.
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        if spawned.is_err() {
            // No thread: built here (a wait for the clock), with no upkeep.
            build();
        }
    });
    MetricsHandle
}

/// What `/metrics` renders: the Prometheus recorder's series.
#[derive(Debug, Clone, Copy)]
pub struct MetricsHandle;

impl MetricsHandle {
    /// The series in Prometheus's text format, when the recorder is built.
    pub fn try_render(&self) -> Option<String> {
        forward::recorder().map(|recorder| recorder.handle().render())
    }

    /// The series in Prometheus's text format, waiting for the recorder to be built (at
    /// most its clock's calibration, in the first moments of the process).
    pub fn render(&self) -> String {
        forward::wait().handle().render()
    }
}

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric gto exports with its kind, unit and help text.
const DESCRIPTIONS: &[(&str, Kind, Unit, &str)] = &[
    (
        DNSSEC_SIGNATURE_EXPIRY_SECONDS,
        Kind::Gauge,
        Unit::Seconds,
        "Seconds until the earliest DNSSEC signature served expires, by zone.",
    ),
    (
        DNSSEC_SIGNATURE_EXPIRY_TIMESTAMP_SECONDS,
        Kind::Gauge,
        Unit::Seconds,
        "When the earliest DNSSEC signature served expires (Unix time), by zone.",
    ),
    (
        DNSSEC_SIGNED_ON_USE_TOTAL,
        Kind::Counter,
        Unit::Count,
        "DNSSEC RRsets signed on first use.",
    ),
    (
        DNSSEC_SIGNING_REFUSED_TOTAL,
        Kind::Counter,
        Unit::Count,
        "DNSSEC signatures on first use refused: the budget for client-chosen names was spent.",
    ),
    (
        DNSSEC_SIGNED_AT_LOAD_TOTAL,
        Kind::Counter,
        Unit::Count,
        "DNSSEC signatures made when a config was prepared or re-signed.",
    ),
    (
        DNSSEC_REUSED_AT_LOAD_TOTAL,
        Kind::Counter,
        Unit::Count,
        "DNSSEC signatures reused from the kept signatures when a config was prepared.",
    ),
    (
        PROBE_CERT_EXPIRY_TIMESTAMP_SECONDS,
        Kind::Gauge,
        Unit::Seconds,
        "notAfter (Unix seconds) of the certificate the TLS or HTTPS probe of the endpoint read, by pool and member.",
    ),
    (
        DNSSEC_KEYSET_MISMATCH,
        Kind::Gauge,
        Unit::Count,
        "1 while the fleet's DNSSEC key timeline for the zone names keys this host lacks (it signs with its last consistent keys meanwhile).",
    ),
    (
        DNSSEC_PARENT_CHECKS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Checks of the parent's servers for the DS of a new KSK or CSK, by zone and result (seen, not_seen, error).",
    ),
    (
        DNSSEC_WAITING_FOR_PARENT,
        Kind::Gauge,
        Unit::Count,
        "Retired KSKs or CSKs kept until the parent's DS for their successor is seen (gto dnssec ds-seen), by zone.",
    ),
    (
        DNSSEC_KEY_READ_FAILURES_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Reads of a zone's DNSSEC key directory that failed; the keys read before stay in use.",
    ),
    (
        DNS_QUERIES_TOTAL,
        Kind::Counter,
        Unit::Count,
        "DNS queries answered, by transport, qtype and rcode.",
    ),
    (
        DNS_BAD_QUERIES_TOTAL,
        Kind::Counter,
        Unit::Count,
        "DNS queries rejected before lookup, by reason.",
    ),
    (
        DNS_TRUNCATED_TOTAL,
        Kind::Counter,
        Unit::Count,
        "UDP answers sent with TC set.",
    ),
    (
        DNS_RATE_LIMITED_TOTAL,
        Kind::Counter,
        Unit::Count,
        "UDP responses held back by response rate limiting, by action (dropped, slipped).",
    ),
    (
        SNAPSHOT_GENERATION,
        Kind::Gauge,
        Unit::Count,
        "Generation of the live routing snapshot.",
    ),
    (
        CONFIG_RELOADS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Config reloads, by result.",
    ),
    (
        PROBE_DURATION_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Health probe durations, by kind.",
    ),
    (
        PROBE_FAILURES_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Failed health probes, by kind and reason.",
    ),
    (
        RUNTIME_MEMBERS,
        Kind::Gauge,
        Unit::Count,
        "Members added at run time that the running config holds.",
    ),
    (
        DNSTAP_MESSAGES_TOTAL,
        Kind::Counter,
        Unit::Count,
        "dnstap messages written.",
    ),
    (
        DNSTAP_DROPPED_TOTAL,
        Kind::Counter,
        Unit::Count,
        "dnstap messages dropped, by reason (queue_full, no_output, write_error).",
    ),
    (
        CHECK_EXEC_KILLED_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Exec check commands killed, by reason (timeout, output).",
    ),
    (
        MEMBER_RTT_SECONDS,
        Kind::Gauge,
        Unit::Seconds,
        "Smoothed round trip to an endpoint from a vantage region (median of its vantages).",
    ),
    (
        HEALTH_FLIPS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Endpoint health flips, by new state.",
    ),
    (
        SERVICE_SELECTION,
        Kind::Gauge,
        Unit::Count,
        "1 for how each GSLB name selects endpoints now (normal or an all-down mode).",
    ),
    (
        BUILD_INFO,
        Kind::Gauge,
        Unit::Count,
        "gto's version and git commit.",
    ),
    (
        DNS_FAST_BATCH_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "UDP fast path: time per answer from receiving a batch to sending its answers, one sample per batch (count = batches).",
    ),
    (
        DNS_TCP_CLOSED_TOTAL,
        Kind::Counter,
        Unit::Count,
        "TCP connections closed, by reason.",
    ),
    (
        ANSWERS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Answers that included the endpoint.",
    ),
    (
        SNAPSHOT_BUILD_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Time to build a routing snapshot.",
    ),
    (
        DNS_QUERY_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Query handling time, by transport.",
    ),
    (
        ADMIN_EVICTED_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Admin connections and event streams evicted for a newcomer (or refused: all busy), by kind.",
    ),
    (
        ADMIN_REQUESTS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Admin API requests, by route and status.",
    ),
    (
        DRAINS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Drain and undrain actions.",
    ),
    (
        PROBE_UNKNOWN_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Probes with no verdict because of a local failure (EMFILE, ENOBUFS); health unchanged.",
    ),
    (
        STATE_WRITE_FAILURES_TOTAL,
        Kind::Counter,
        Unit::Count,
        "State file writes that failed; changes since the last good write would be lost at a restart.",
    ),
    (
        AUDIT_WRITE_FAILURES_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Audit records that could not be appended to [admin] audit_file (the change applied; the log holds it).",
    ),
];

/// Describes every metric once at start-up.
pub fn describe_all() {
    for (name, kind, unit, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => describe_counter!(*name, *unit, *help),
            Kind::Gauge => describe_gauge!(*name, *unit, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *unit, *help),
        }
    }
    // Counters that alerts use exist from the start, at 0.
    for result in ["ok", "error"] {
        metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(0);
    }
    for action in ["drain", "undrain"] {
        metrics::counter!(DRAINS_TOTAL, "action" => action).increment(0);
    }
    for to in ["up", "down"] {
        metrics::counter!(HEALTH_FLIPS_TOTAL, "to" => to).increment(0);
    }
    for action in ["dropped", "slipped"] {
        metrics::counter!(DNS_RATE_LIMITED_TOTAL, "action" => action).increment(0);
    }
    metrics::counter!(DNS_TRUNCATED_TOTAL).increment(0);
    metrics::counter!(STATE_WRITE_FAILURES_TOTAL).increment(0);
    metrics::counter!(AUDIT_WRITE_FAILURES_TOTAL).increment(0);
    metrics::gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => env!("GTO_COMMIT"),
    )
    .set(1.0);
}

/// The per-endpoint gauges, in Prometheus text, for the endpoints of the running config.
pub fn render_members<'a>(members: impl Iterator<Item = EndpointSample<'a>>) -> String {
    use std::fmt::Write;
    let members: Vec<EndpointSample<'a>> = members.collect();
    let mut out = String::new();
    let mut family =
        |name: &str, help: &str, value: &dyn Fn(&EndpointSample<'a>) -> Option<f64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for m in &members {
                if let Some(v) = value(m) {
                    let _ = writeln!(
                        out,
                        "{name}{{pool=\"{}\",member=\"{}\"}} {v}",
                        escape(m.pool),
                        escape(m.member)
                    );
                }
            }
        };
    family(MEMBER_UP, "1 when the endpoint is up.", &|m| {
        Some(f64::from(u8::from(m.up)))
    });
    family(
        MEMBER_STALE,
        "1 while the endpoint's health is stale.",
        &|m| Some(f64::from(u8::from(m.stale))),
    );
    family(
        MEMBER_DRAINED,
        "1 while an operator drains the endpoint.",
        &|m| Some(f64::from(u8::from(m.drained))),
    );
    family(
        MEMBER_LOAD,
        "Last reported load (sessions / capacity), from checks or the push API.",
        &|m| m.load,
    );
    let split = members.iter().any(|m| !m.families.is_empty());
    if split {
        let _ = writeln!(
            out,
            "# HELP {MEMBER_FAMILY_UP} 1 when the address family's own check says up (family = \"each\" on a dual-stack endpoint; A answers follow v4, AAAA v6).\n# TYPE {MEMBER_FAMILY_UP} gauge"
        );
    }
    for m in &members {
        for f in m.families {
            let _ = writeln!(
                out,
                "{MEMBER_FAMILY_UP}{{pool=\"{}\",member=\"{}\",family=\"{}\"}} {}",
                escape(m.pool),
                escape(m.member),
                f.family.as_str(),
                u8::from(f.health == crate::health::state::Health::Up)
            );
        }
    }
    out
}

/// One endpoint for [`render_members`].
#[derive(Debug, Clone, Copy)]
pub struct EndpointSample<'a> {
    /// Pool name.
    pub pool: &'a str,
    /// Member name.
    pub member: &'a str,
    /// Health checks say up.
    pub up: bool,
    /// Health is stale.
    pub stale: bool,
    /// Drained.
    pub drained: bool,
    /// Last reported load, if any.
    pub load: Option<f64>,
    /// Each address family's own check, when probed apart.
    pub families: &'a [crate::health::FamilyStatus],
}

/// A Prometheus label value with `\`, `"` and line breaks escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The standard process metrics (start time, CPU, resident memory, descriptors), read
/// from /proc at scrape time.
pub fn render_process() -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut gauge = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name (which may hold spaces), 0-based from field 3.
    let fields: Vec<String> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // USER_HZ is 100 on Linux.
    let ticks = 100.0;
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    gauge(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        boot.zip(field(19))
            .map(|(boot, start)| boot + start / ticks),
    );
    gauge(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
        field(11).zip(field(12)).map(|(u, s)| (u + s) / ticks),
    );
    let page = 4096.0;
    gauge(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        field(21).map(|pages| pages * page),
    );
    gauge(
        "process_open_fds",
        "gauge",
        "Open file descriptors.",
        std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64),
    );
    gauge(
        "process_max_fds",
        "gauge",
        "The soft limit on open file descriptors.",
        crate::rlimit::nofile().map(|n| n as f64),
    );
    out
}
