//! Metric names and their descriptions. Every name is a `pub const` with the `gto_`
//! prefix; label values come from small fixed sets (no client addresses, no query names).
//!
//! Metrics go through the `metrics` facade; without an installed recorder they cost a
//! branch. The Prometheus exporter is installed by the admin listener.

use metrics::{Unit, describe_counter, describe_gauge};

/// Queries answered, by `transport` (udp, tcp), `qtype` and `rcode`.
pub const DNS_QUERIES_TOTAL: &str = "gto_dns_queries_total";
/// Queries dropped or refused before lookup, by `reason`.
pub const DNS_BAD_QUERIES_TOTAL: &str = "gto_dns_bad_queries_total";
/// UDP answers sent truncated (TC) because they did not fit the client's payload size.
pub const DNS_TRUNCATED_TOTAL: &str = "gto_dns_truncated_total";
/// Generation of the live routing snapshot.
pub const SNAPSHOT_GENERATION: &str = "gto_snapshot_generation";
/// Config reloads, by `result` (ok, error).
pub const CONFIG_RELOADS_TOTAL: &str = "gto_config_reloads_total";

/// Probe durations in seconds, by `kind`.
pub const PROBE_DURATION_SECONDS: &str = "gto_probe_duration_seconds";
/// Failed probes, by `kind` and `reason`.
pub const PROBE_FAILURES_TOTAL: &str = "gto_probe_failures_total";
/// Health flips, by `to` (up, down).
pub const HEALTH_FLIPS_TOTAL: &str = "gto_health_flips_total";
/// 1 when an endpoint is up, by `pool` and `member` (bounded by the config).
pub const MEMBER_UP: &str = "gto_member_up";
/// 1 while an endpoint's health is stale, by `pool` and `member`.
pub const MEMBER_STALE: &str = "gto_member_stale";

/// Describes every metric once at start-up.
pub fn describe_all() {
    describe_counter!(
        DNS_QUERIES_TOTAL,
        Unit::Count,
        "DNS queries answered, by transport, qtype and rcode."
    );
    describe_counter!(
        DNS_BAD_QUERIES_TOTAL,
        Unit::Count,
        "DNS queries rejected before lookup, by reason."
    );
    describe_counter!(
        DNS_TRUNCATED_TOTAL,
        Unit::Count,
        "UDP answers sent with TC set."
    );
    describe_gauge!(
        SNAPSHOT_GENERATION,
        Unit::Count,
        "Generation of the live routing snapshot."
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        Unit::Count,
        "Config reloads, by result."
    );
    metrics::describe_histogram!(
        PROBE_DURATION_SECONDS,
        Unit::Seconds,
        "Health probe durations, by kind."
    );
    describe_counter!(
        PROBE_FAILURES_TOTAL,
        Unit::Count,
        "Failed health probes, by kind and reason."
    );
    describe_counter!(
        HEALTH_FLIPS_TOTAL,
        Unit::Count,
        "Endpoint health flips, by new state."
    );
    describe_gauge!(MEMBER_UP, Unit::Count, "1 when the endpoint is up.");
    describe_gauge!(
        MEMBER_STALE,
        Unit::Count,
        "1 while the endpoint's health is stale."
    );
}
