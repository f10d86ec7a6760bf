//! Stage one of config parsing: the TOML document as written, with source spans.
//!
//! These types mirror the file one-to-one and validate nothing beyond TOML types. Values
//! that need checking (addresses, names, durations) stay strings here, wrapped in
//! [`Spanned`] so that [`super::compile`] can report every problem with its line. Unknown
//! keys are collected by `serde_ignored` in [`super::parse`] rather than stopping at the
//! first one, so one run of `gto check` shows them all.

use serde::Deserialize;
use toml::Spanned;

/// The whole config file.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    pub(crate) admin: Option<Spanned<RawAdmin>>,
    pub(crate) rrl: Option<Spanned<RawRrl>>,
    pub(crate) geo: Option<Spanned<RawGeo>>,
    pub(crate) cluster: Option<Spanned<RawCluster>>,
    pub(crate) health: Option<Spanned<RawHealth>>,
    pub(crate) latency: Option<Spanned<RawLatency>>,
    pub(crate) notify: Option<Spanned<RawNotify>>,
    pub(crate) dnstap: Option<Spanned<RawDnstap>>,
    #[serde(default)]
    pub(crate) zone: Vec<Spanned<RawZone>>,
    #[serde(default)]
    pub(crate) service: Vec<Spanned<RawService>>,
    #[serde(default)]
    pub(crate) pool: Vec<Spanned<RawPool>>,
    /// `[[override]]`: client subnets answered from a pool or members first.
    #[serde(default, rename = "override")]
    pub(crate) overrides: Vec<Spanned<RawOverride>>,
}

/// `[[override]]`: for clients in `networks`, `service` answers from `pool` (or the
/// service pool's `members`) first.
#[derive(Debug, Deserialize)]
pub(crate) struct RawOverride {
    pub(crate) service: Spanned<String>,
    pub(crate) networks: Spanned<Vec<Spanned<String>>>,
    pub(crate) pool: Option<Spanned<String>>,
    pub(crate) members: Option<Spanned<Vec<String>>>,
}

/// `[server]`: where and how DNS is served.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawServer {
    /// Socket addresses; each is served on UDP and TCP.
    pub(crate) listen: Option<Vec<Spanned<String>>>,
    /// Our EDNS UDP payload size.
    pub(crate) udp_payload: Option<Spanned<i64>>,
    /// Idle timeout of a TCP connection, e.g. "10s".
    pub(crate) tcp_idle_timeout: Option<Spanned<String>>,
    /// Where health and drains are kept across restarts.
    pub(crate) state_file: Option<Spanned<String>>,
    /// UDP fast-path workers per address (0: one plain loop on the general path).
    pub(crate) workers: Option<Spanned<i64>>,
    /// Open TCP connections at most.
    pub(crate) tcp_max_connections: Option<Spanned<i64>>,
    /// Queries per TCP connection at most.
    pub(crate) tcp_max_queries: Option<Spanned<i64>>,
    /// Threads serving TCP.
    pub(crate) tcp_threads: Option<Spanned<i64>>,
    /// Pause after a small UDP batch, e.g. "50us".
    pub(crate) udp_coalesce: Option<Spanned<String>>,
    /// Write the state file through a symbolic link that leaves its directory.
    pub(crate) state_file_follow_symlinks: Option<bool>,
    /// Instance identity for NSID and CH TXT id.server.
    pub(crate) identity: Option<Spanned<String>>,
    /// Answer CH TXT version.bind and version.server (default true).
    pub(crate) version: Option<bool>,
    /// Largest file the config names, e.g. "256MiB".
    pub(crate) max_file_size: Option<Spanned<String>>,
    /// Whether a zone file's `$INCLUDE` may read files outside the config's directory.
    pub(crate) include_outside_config_dir: Option<bool>,
}

/// `[rrl]`: response rate limiting on UDP.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRrl {
    pub(crate) enabled: Option<bool>,
    pub(crate) responses_per_second: Option<Spanned<i64>>,
    pub(crate) burst: Option<Spanned<i64>>,
    pub(crate) slip: Option<Spanned<i64>>,
    pub(crate) ipv4_prefix: Option<Spanned<i64>>,
    pub(crate) ipv6_prefix: Option<Spanned<i64>>,
    pub(crate) exempt: Option<Vec<Spanned<String>>>,
    pub(crate) buckets: Option<Spanned<i64>>,
}

/// `[geo]`: where clients are.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawGeo {
    pub(crate) mmdb: Option<Spanned<String>>,
    pub(crate) default: Option<Spanned<RawLocation>>,
    #[serde(default)]
    pub(crate) network: Vec<Spanned<RawNetwork>>,
    #[serde(default)]
    pub(crate) region: Vec<Spanned<RawRegion>>,
}

/// `[[geo.network]]`: a client network and where it is.
#[derive(Debug, Deserialize)]
pub(crate) struct RawNetwork {
    pub(crate) cidr: Spanned<String>,
    pub(crate) location: Spanned<RawLocation>,
}

/// `[[geo.region]]`: a region's ordered preference list.
#[derive(Debug, Deserialize)]
pub(crate) struct RawRegion {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) prefer: Vec<String>,
}

/// `affinity = false` (per query) or `affinity = { v4 = 24, ... }`. Deserialized by hand
/// (not `untagged`), so the table's unknown keys are still reported.
#[derive(Debug)]
pub(crate) enum RawAffinitySetting {
    On(bool),
    Table(RawAffinity),
}

impl<'de> Deserialize<'de> for RawAffinitySetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawAffinitySetting;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("false (per-query shares) or a table { v4, v6, candidates }")
            }

            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<Self::Value, E> {
                Ok(RawAffinitySetting::On(on))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                RawAffinity::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawAffinitySetting::Table)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `affinity = { v4 = 24, v6 = 56, candidates = 3 }`.
#[derive(Debug, Deserialize)]
pub(crate) struct RawAffinity {
    pub(crate) v4: Option<i64>,
    pub(crate) v6: Option<i64>,
    pub(crate) candidates: Option<i64>,
}

/// `load = { low = 0.75, high = 0.9, slow_start = "30s", stale_after = "30s", smoothing = 0.5 }`.
#[derive(Debug, Deserialize)]
pub(crate) struct RawLoad {
    pub(crate) low: Option<f64>,
    pub(crate) high: Option<f64>,
    pub(crate) slow_start: Option<String>,
    pub(crate) stale_after: Option<String>,
    pub(crate) smoothing: Option<f64>,
}

/// `load_fields = { sessions = "sessions", capacity = "capacity" }` in an HTTP(S) check.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RawLoadFields {
    pub(crate) sessions: String,
    pub(crate) capacity: Option<String>,
}

/// `[admin]`: the HTTP admin API.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAdmin {
    pub(crate) enabled: Option<bool>,
    pub(crate) listen: Option<Spanned<String>>,
    pub(crate) token_file: Option<Spanned<String>>,
    /// Longest drain `for`/`until` accepted, e.g. "366d".
    pub(crate) max_drain: Option<Spanned<String>>,
    /// Open admin connections at most.
    pub(crate) max_connections: Option<Spanned<i64>>,
    /// Time a client has to send a request's headers, e.g. "5s".
    pub(crate) header_timeout: Option<Spanned<String>>,
    /// Host names clients may use in `Host` (besides IP literals and `localhost`).
    pub(crate) hosts: Option<Spanned<Vec<String>>>,
    /// Where every change's audit record is appended (JSON lines).
    pub(crate) audit_file: Option<Spanned<String>>,
    /// `[[admin.token]]`: named tokens with roles.
    #[serde(default)]
    pub(crate) token: Vec<Spanned<RawToken>>,
}

/// `[[admin.token]]`: a named bearer token and what it may do.
#[derive(Debug, Deserialize)]
pub(crate) struct RawToken {
    pub(crate) name: Spanned<String>,
    pub(crate) file: Spanned<String>,
    /// "read", "operate" or "admin" (the default).
    pub(crate) role: Option<Spanned<String>>,
}

/// `[cluster]`: the fleet's shared state in etcd.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCluster {
    pub(crate) etcd: Option<Spanned<Vec<String>>>,
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) instance: Option<Spanned<String>>,
    pub(crate) region: Option<Spanned<String>>,
    pub(crate) lease_ttl: Option<Spanned<String>>,
    pub(crate) tls: Option<Spanned<RawClusterTls>>,
    pub(crate) user: Option<Spanned<String>>,
    pub(crate) password_file: Option<Spanned<String>>,
}

/// `[notify]`: where changes are sent.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawNotify {
    #[serde(default)]
    pub(crate) webhook: Vec<Spanned<RawWebhook>>,
}

/// `[[notify.webhook]]`: one receiver of events.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawWebhook {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) url: Option<Spanned<String>>,
    pub(crate) events: Option<Spanned<Vec<String>>>,
    pub(crate) secret_file: Option<Spanned<String>>,
    pub(crate) ca_file: Option<Spanned<String>>,
    pub(crate) queue: Option<Spanned<i64>>,
}

/// `[dnstap]`: the query log in dnstap format.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawDnstap {
    /// A Frame Streams reader's Unix socket.
    pub(crate) socket: Option<Spanned<String>>,
    /// A Frame Streams file, written from its start.
    pub(crate) file: Option<Spanned<String>>,
    /// "auth-query", "auth-response".
    pub(crate) messages: Option<Spanned<Vec<String>>>,
    /// Fraction of queries logged.
    pub(crate) sample: Option<Spanned<f64>>,
    /// Messages waiting at most.
    pub(crate) queue: Option<Spanned<i64>>,
    /// The `identity` of each message (default: `[server] identity`, else the host name).
    pub(crate) identity: Option<Spanned<String>>,
}

/// `[health]`: settings of the probes as a whole.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawHealth {
    pub(crate) source: Option<Spanned<String>>,
    pub(crate) source6: Option<Spanned<String>>,
    pub(crate) exec_limit: Option<Spanned<i64>>,
}

/// `[latency]`: round-trip measurement and real-user measurements.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawLatency {
    pub(crate) measure: Option<Spanned<String>>,
    pub(crate) window: Option<Spanned<i64>>,
    pub(crate) relative_band: Option<Spanned<f64>>,
    pub(crate) absolute_band: Option<Spanned<String>>,
    pub(crate) vantages: Option<Vec<Spanned<String>>>,
    pub(crate) rum_max_prefixes: Option<Spanned<i64>>,
    pub(crate) rum_max_age: Option<Spanned<String>>,
}

/// `[cluster] tls`: how gto trusts etcd and proves itself to it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawClusterTls {
    pub(crate) ca_file: Option<Spanned<String>>,
    pub(crate) cert_file: Option<Spanned<String>>,
    pub(crate) key_file: Option<Spanned<String>>,
}

/// `[[zone]]`: one zone we are authoritative for.
#[derive(Debug, Deserialize)]
pub(crate) struct RawZone {
    pub(crate) origin: Spanned<String>,
    pub(crate) file: Spanned<String>,
    pub(crate) dnssec: Option<Spanned<RawDnssec>>,
}

/// `[[zone]] dnssec = { keys = "KEYDIR", ... }`: sign the zone.
#[derive(Debug, Deserialize)]
pub(crate) struct RawDnssec {
    pub(crate) keys: Spanned<String>,
    pub(crate) dnskey_ttl: Option<Spanned<i64>>,
    pub(crate) lifetime: Option<Spanned<String>>,
    pub(crate) parent_ds_ttl: Option<Spanned<i64>>,
    pub(crate) propagation: Option<Spanned<String>>,
    pub(crate) parent: Option<Spanned<RawParent>>,
    pub(crate) parent_check: Option<Spanned<String>>,
}

/// `dnssec.parent = "resolve" | "manual" | ["ADDR[:PORT]", ...]`.
#[derive(Debug)]
pub(crate) enum RawParent {
    Keyword(String),
    Servers(Vec<String>),
}

impl<'de> Deserialize<'de> for RawParent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawParent;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"resolve\", \"manual\" or a list of \"ADDR[:PORT]\"")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(RawParent::Keyword(text.to_string()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut servers = Vec::new();
                while let Some(server) = seq.next_element::<String>()? {
                    servers.push(server);
                }
                Ok(RawParent::Servers(servers))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `[[service]]`: one GSLB name.
#[derive(Debug, Deserialize)]
pub(crate) struct RawService {
    pub(crate) name: Spanned<String>,
    pub(crate) pool: Spanned<String>,
    pub(crate) policy: Option<Spanned<String>>,
    pub(crate) tie: Option<Spanned<String>>,
    pub(crate) answers: Option<Spanned<i64>>,
    pub(crate) ttl: Option<Spanned<i64>>,
    pub(crate) when_all_down: Option<Spanned<RawWhenAllDown>>,
    pub(crate) affinity: Option<Spanned<RawAffinitySetting>>,
    pub(crate) ecs: Option<bool>,
}

/// `when_all_down = "all" | "empty" | { fallback = "pool" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawWhenAllDown {
    Keyword(String),
    Fallback { fallback: String },
}

/// `[[pool]]`: a set of endpoints (appliances).
#[derive(Debug, Deserialize)]
pub(crate) struct RawPool {
    pub(crate) name: Spanned<String>,
    pub(crate) check: Option<Spanned<RawCheck>>,
    pub(crate) load: Option<Spanned<RawLoad>>,
    pub(crate) down_when: Option<Spanned<String>>,
    pub(crate) min_voters: Option<Spanned<i64>>,
    pub(crate) vote_scope: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) member: Vec<Spanned<RawMember>>,
}

/// `check = { kind = "https", port = 443, ... }` on a pool, or on a member to override
/// some of its pool's fields.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RawCheck {
    pub(crate) kind: Option<String>,
    pub(crate) address: Option<String>,
    /// "each" (default): each address family of a dual-stack member probed apart;
    /// "first": the first address only.
    pub(crate) family: Option<String>,
    pub(crate) port: Option<i64>,
    pub(crate) path: Option<String>,
    pub(crate) expect: Option<Vec<i64>>,
    pub(crate) body: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) sni: Option<String>,
    pub(crate) insecure: Option<bool>,
    pub(crate) ca_file: Option<String>,
    pub(crate) cert_min_days: Option<i64>,
    pub(crate) cert_expiring: Option<String>,
    pub(crate) interval: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) rise: Option<i64>,
    pub(crate) fall: Option<i64>,
    pub(crate) load_fields: Option<RawLoadFields>,
    /// Most of an HTTP body read, e.g. "64KiB".
    pub(crate) max_body: Option<String>,
    /// DNS: the name asked.
    pub(crate) query: Option<String>,
    /// DNS: the type asked ("A").
    pub(crate) qtype: Option<String>,
    /// DNS: "udp" (default) or "tcp".
    pub(crate) transport: Option<String>,
    /// DNS: the rcode that means up ("NOERROR").
    pub(crate) rcode: Option<String>,
    /// DNS: values the answers must hold.
    pub(crate) answer: Option<Vec<String>>,
    /// Exec: the argv.
    pub(crate) command: Option<Vec<String>>,
    /// Exec: most of the output read, e.g. "4KiB".
    pub(crate) max_output: Option<String>,
}

impl RawCheck {
    /// Whether this table sets `field` (a key of a `check` table).
    pub(crate) fn sets(&self, field: &str) -> bool {
        match field {
            "kind" => self.kind.is_some(),
            "address" => self.address.is_some(),
            "family" => self.family.is_some(),
            "port" => self.port.is_some(),
            "path" => self.path.is_some(),
            "expect" => self.expect.is_some(),
            "body" => self.body.is_some(),
            "host" => self.host.is_some(),
            "sni" => self.sni.is_some(),
            "insecure" => self.insecure.is_some(),
            "ca_file" => self.ca_file.is_some(),
            "cert_min_days" => self.cert_min_days.is_some(),
            "cert_expiring" => self.cert_expiring.is_some(),
            "interval" => self.interval.is_some(),
            "timeout" => self.timeout.is_some(),
            "rise" => self.rise.is_some(),
            "fall" => self.fall.is_some(),
            "load_fields" => self.load_fields.is_some(),
            "max_body" => self.max_body.is_some(),
            "query" => self.query.is_some(),
            "qtype" => self.qtype.is_some(),
            "transport" => self.transport.is_some(),
            "rcode" => self.rcode.is_some(),
            "answer" => self.answer.is_some(),
            "command" => self.command.is_some(),
            "max_output" => self.max_output.is_some(),
            // Not a field of its own: the member's.
            _ => true,
        }
    }

    /// `self`'s fields where set, else `base`'s.
    pub(crate) fn over(&self, base: &RawCheck) -> RawCheck {
        RawCheck {
            kind: self.kind.clone().or_else(|| base.kind.clone()),
            address: self.address.clone().or_else(|| base.address.clone()),
            family: self.family.clone().or_else(|| base.family.clone()),
            port: self.port.or(base.port),
            path: self.path.clone().or_else(|| base.path.clone()),
            expect: self.expect.clone().or_else(|| base.expect.clone()),
            body: self.body.clone().or_else(|| base.body.clone()),
            host: self.host.clone().or_else(|| base.host.clone()),
            sni: self.sni.clone().or_else(|| base.sni.clone()),
            insecure: self.insecure.or(base.insecure),
            ca_file: self.ca_file.clone().or_else(|| base.ca_file.clone()),
            cert_min_days: self.cert_min_days.or(base.cert_min_days),
            cert_expiring: self
                .cert_expiring
                .clone()
                .or_else(|| base.cert_expiring.clone()),
            interval: self.interval.clone().or_else(|| base.interval.clone()),
            timeout: self.timeout.clone().or_else(|| base.timeout.clone()),
            rise: self.rise.or(base.rise),
            fall: self.fall.or(base.fall),
            load_fields: self
                .load_fields
                .clone()
                .or_else(|| base.load_fields.clone()),
            max_body: self.max_body.clone().or_else(|| base.max_body.clone()),
            query: self.query.clone().or_else(|| base.query.clone()),
            qtype: self.qtype.clone().or_else(|| base.qtype.clone()),
            transport: self.transport.clone().or_else(|| base.transport.clone()),
            rcode: self.rcode.clone().or_else(|| base.rcode.clone()),
            answer: self.answer.clone().or_else(|| base.answer.clone()),
            command: self.command.clone().or_else(|| base.command.clone()),
            max_output: self.max_output.clone().or_else(|| base.max_output.clone()),
        }
    }
}

/// `[[pool.member]]`: one endpoint.
#[derive(Debug, Deserialize)]
pub(crate) struct RawMember {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) addresses: Vec<Spanned<String>>,
    pub(crate) location: Option<Spanned<RawLocation>>,
    pub(crate) weight: Option<Spanned<i64>>,
    pub(crate) capacity: Option<Spanned<i64>>,
    pub(crate) check: Option<Spanned<RawCheck>>,
    /// The site (data centre) it is in, for drains of a whole site.
    pub(crate) site: Option<Spanned<String>>,
}

/// `location = { lat = 50.1, lon = 8.7, region = "eu" }`.
#[derive(Debug, Deserialize)]
pub(crate) struct RawLocation {
    pub(crate) lat: Option<f64>,
    pub(crate) lon: Option<f64>,
    pub(crate) region: Option<String>,
}
