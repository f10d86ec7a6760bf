//! Configuration: a TOML file (listeners, zones, GSLB names, pools of endpoints) plus the
//! zone files it names (the `loaded` module reads them into one validated `Loaded`).
//!
//! Parsing runs in two stages (`raw`, then `compile`) and reports *every* problem with
//! its file, line and path ([`ConfigErrors`]). The embedded default ([`EMBEDDED_CONFIG`]) is the
//! same format compiled into the binary, so `gto` with no arguments serves at once.

mod check;
pub(crate) mod compile;
mod error;
mod gslb;
pub(crate) mod located;
mod parse;
mod raw;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::rr::Name;
use ipnet::IpNet;

pub use error::{ConfigError, ConfigErrors};
pub use gslb::{
    Affinity, Answers, Check, DnsProbe, DownWhen, ExecProbe, HealthSettings, HttpProbe,
    LatencySettings, LoadFields, LoadSettings, Location, Measure, Member, OverrideTarget, Policy,
    Pool, PoolId, Probe, Service, SubnetOverride, Tie, TlsSettings, Ttl, VoteRule, VoteScope,
    Weight, WhenAllDown, rcode_mnemonic,
};
pub use parse::parse;
pub(crate) use parse::{find_key_line, parse_partial};

/// The embedded default config: one zone, one GSLB name, one pool of three endpoints.
pub const EMBEDDED_CONFIG: &str = include_str!("../../examples/gto.toml");
/// The zone file the embedded default serves.
pub const EMBEDDED_ZONE: &str = include_str!("../../zones/gto.example.com.zone");

/// The compiled config. Built once, never mutated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Listeners and protocol settings.
    pub server: ServerSettings,
    /// The admin API.
    pub admin: AdminSettings,
    /// Response rate limiting on UDP.
    pub rrl: RrlSettings,
    /// Where clients are.
    pub geo: GeoSettings,
    /// Zones we are authoritative for.
    pub zones: Vec<ZoneSpec>,
    /// GSLB names.
    pub services: Vec<Service>,
    /// Pools of endpoints.
    pub pools: Vec<Pool>,
    /// The fleet's shared state (`[cluster]`); None: a single instance.
    pub cluster: Option<ClusterSettings>,
    /// `[health]`.
    pub health: HealthSettings,
    /// `[latency]`.
    pub latency: LatencySettings,
    /// `[[notify.webhook]]`: receivers of events.
    pub webhooks: Vec<Webhook>,
    /// `[dnstap]`: the query log; None when off.
    pub dnstap: Option<DnstapSettings>,
}

/// `[dnstap]`: queries and responses logged as dnstap messages in Frame Streams, to a
/// reader's Unix socket or a file.
#[derive(Debug, Clone, PartialEq)]
pub struct DnstapSettings {
    /// Where the frames go.
    pub output: DnstapOutput,
    /// Log AUTH_QUERY messages.
    pub queries: bool,
    /// Log AUTH_RESPONSE messages.
    pub responses: bool,
    /// Fraction of queries logged (0 < sample <= 1).
    pub sample: f64,
    /// Messages waiting for the writer at most; more are dropped and counted.
    pub queue: usize,
    /// Each message's `identity`.
    pub identity: String,
}

impl DnstapSettings {
    /// Default `queue`.
    pub const DEFAULT_QUEUE: usize = 65_536;
}

/// Where dnstap frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnstapOutput {
    /// A Frame Streams reader listening on this Unix socket (bidirectional handshake);
    /// reconnected when it goes away.
    Socket(std::path::PathBuf),
    /// A Frame Streams file, written from its start (replaced at each start of the log).
    File(std::path::PathBuf),
}

/// `[[notify.webhook]]`: events POSTed to a URL as JSON, signed with HMAC-SHA256.
#[derive(Clone, PartialEq)]
pub struct Webhook {
    /// What metrics and logs call it (`name`, default `webhook<index>`): never the URL,
    /// which may carry credentials.
    pub name: String,
    /// `http://` or `https://` URL, credentials (userinfo, query) included: only the
    /// request uses it.
    pub url: String,
    /// Event kinds sent (empty: all).
    pub events: Vec<String>,
    /// The HMAC key (from `secret_file`).
    pub secret: Option<Secret>,
    /// PEM of the CA certificates that sign the receiver's (default: the web PKI).
    pub ca: Option<String>,
    /// Events waiting at most; more are dropped and counted.
    pub queue: usize,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL's userinfo or query, nor the secret.
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("url", &redacted_url(&self.url))
            .field("events", &self.events)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// A URL as it may be shown: scheme, host, port and path; a userinfo (`user:pass@`) and a
/// query or fragment (where tokens hide) are replaced by `…`.
pub fn redacted_url(url: &str) -> String {
    let Ok(uri) = url.parse::<axum::http::Uri>() else {
        return "<not a URL>".into();
    };
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri.host().unwrap_or("");
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    let userinfo = if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        "…@"
    } else {
        ""
    };
    let query = if uri.query().is_some() { "?…" } else { "" };
    format!("{scheme}://{userinfo}{host}{port}{}{query}", uri.path())
}

/// Event kinds a webhook may ask for.
pub const EVENT_KINDS: [&str; 10] = [
    "health",
    "drain",
    "reload",
    "watermark",
    "fleet",
    "drift",
    "cert",
    "dnssec",
    "audit",
    "member",
];

/// `[cluster]`: instances that share drains, load reports and their presence through
/// etcd v3.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// etcd endpoints, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// The fleet's name: keys live under `/gto/<name>/`.
    pub name: String,
    /// This instance's id in the fleet (default: the host name).
    pub instance: String,
    /// This instance's region, for pools that vote by region.
    pub region: Option<String>,
    /// How long an instance's presence and load reports outlive it (default 10 s).
    pub lease_ttl: Duration,
    /// TLS to etcd: the CA that signs its certificate, and an optional client certificate.
    pub tls: Option<ClusterTls>,
    /// etcd authentication: user name and password.
    pub auth: Option<(String, Secret)>,
}

/// `[cluster] tls`, read: PEM texts.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterTls {
    /// PEM of the CA certificate(s) that sign etcd's certificate.
    pub ca: Option<String>,
    /// PEM of the client certificate and its key, when etcd asks for one.
    pub identity: Option<(String, Secret)>,
}

/// `[rrl]`: response rate limiting (RRL) on UDP, in the spirit of BIND, Knot and NSD.
///
/// Each response is classed (answer, NODATA, NXDOMAIN, error) and keyed by the client's
/// prefix (the source address: the one an attacker would spoof to aim our answers at a
/// victim) plus, for answers and NODATA, the name and type. A key may send
/// `responses_per_second` on average and `burst` at once; past that a response is dropped,
/// except every `slip`-th one, which goes out empty with TC set so that a real client
/// retries over TCP (which is never limited). ECS does not enter the key: a spoofer
/// could vary it freely.
#[derive(Debug, Clone, PartialEq)]
pub struct RrlSettings {
    /// Off: every response is sent.
    pub enabled: bool,
    /// Average responses per second per key.
    pub responses_per_second: u32,
    /// Responses a key may send at once (the bucket's depth).
    pub burst: u32,
    /// Every `slip`-th limited response is sent truncated (TC); 0: all are dropped,
    /// 1: all are truncated.
    pub slip: u32,
    /// Prefix length that makes one IPv4 client.
    pub ipv4_prefix: u8,
    /// Prefix length that makes one IPv6 client.
    pub ipv6_prefix: u8,
    /// Sources never limited (by default loopback: local tools and benchmarks).
    pub exempt: Vec<IpNet>,
    /// Buckets in the fixed-size table (a power of two): memory is `8 × buckets` bytes
    /// whatever the traffic; keys that share a bucket take it over in turn.
    pub buckets: usize,
}

impl RrlSettings {
    /// Default rate per key, as NSD's `rrl-ratelimit`.
    pub const DEFAULT_RATE: u32 = 200;
    /// Default slip, as BIND and NSD: every second limited response is truncated.
    pub const DEFAULT_SLIP: u32 = 2;
    /// Default table size: 512 KiB.
    pub const DEFAULT_BUCKETS: usize = 1 << 16;
}

impl Default for RrlSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            responses_per_second: Self::DEFAULT_RATE,
            burst: Self::DEFAULT_RATE,
            slip: Self::DEFAULT_SLIP,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            exempt: vec![
                IpNet::new_assert(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8).trunc(),
                IpNet::new_assert(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 128),
            ],
            buckets: Self::DEFAULT_BUCKETS,
        }
    }
}

/// `[geo]`: the client-location table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeoSettings {
    /// Client networks and where they are; the longest matching prefix wins.
    pub networks: Vec<GeoNetwork>,
    /// Regions' ordered preference lists (topology, like gdnsd's maps).
    pub regions: Vec<Region>,
    /// Where a client is when no network matches.
    pub default: Option<Location>,
    /// A MaxMind-format database (GeoLite2/DB-IP City or Country), consulted after the
    /// networks table.
    pub mmdb: Option<PathBuf>,
}

/// `[[geo.network]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoNetwork {
    /// The client network.
    pub net: IpNet,
    /// Where it is.
    pub location: Location,
}

/// `[[geo.region]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Region name.
    pub name: String,
    /// Regions to answer from, best first, for clients in this region.
    pub prefer: Vec<String>,
}

/// `[admin]`: the HTTP admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminSettings {
    /// Where it listens; None when disabled.
    pub listen: Option<SocketAddr>,
    /// `token_file`: the bearer token named `default`, with the admin role; None: only the
    /// named tokens (if any) may change anything.
    pub token: Option<Secret>,
    /// `[[admin.token]]`: named tokens with roles.
    pub tokens: Vec<NamedToken>,
    /// Longest drain accepted (`for`, or `until` from now); default 366 days. A bound,
    /// so that a time far in the future never reaches status or the state file.
    pub max_drain: Duration,
    /// Open admin connections at most (default 64); more wait to be accepted.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (default 5 s); a connection that
    /// sends nothing is closed, so it cannot hold shutdown or a connection slot.
    pub header_timeout: Duration,
    /// Names a client may send in `Host` besides IP literals, `localhost` and this
    /// machine's host name (lower case, no trailing dot): any other name is refused, so
    /// that a web page cannot reach the API through DNS rebinding.
    pub hosts: Vec<String>,
    /// `audit_file`: every change's audit record appended as a JSON line.
    pub audit_file: Option<std::path::PathBuf>,
}

/// A named bearer token of the admin API and its role.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedToken {
    /// Its name, in audit records (the token itself is never logged).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The token.
    pub secret: Secret,
}

/// What a token may do; each role may also do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Status, metrics, events, explain (open to anyone on the admin listener anyway).
    Read,
    /// Drains, undrains and load reports.
    Operate,
    /// Reloads, and everything else.
    Admin,
}

impl Role {
    /// Its name in the config and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Admin => "admin",
        }
    }
}

impl AdminSettings {
    /// The token named `default` that `token_file` gives.
    pub const DEFAULT_TOKEN: &'static str = "default";

    /// Whether any token may make changes.
    pub fn changes_enabled(&self) -> bool {
        self.token.is_some() || self.tokens.iter().any(|t| t.role > Role::Read)
    }

    /// Largest `max_drain` accepted.
    pub const MAX_DRAIN_LIMIT: Duration = Duration::from_secs(100 * 366 * 86_400);
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: None,
            token: None,
            tokens: Vec::new(),
            max_drain: Duration::from_secs(366 * 86_400),
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            hosts: Vec::new(),
            audit_file: None,
        }
    }
}

/// A secret that never shows in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for comparison.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// Each address is served on UDP and TCP. Port 0 picks a free port (tests).
    pub listen: Vec<SocketAddr>,
    /// EDNS UDP payload size we advertise and honour (default 1232, DNS Flag Day 2020).
    pub udp_payload: u16,
    /// Idle TCP connections are closed after this long.
    pub tcp_idle_timeout: Duration,
    /// Where last known health (and later drains) is written, so a restart starts from it.
    /// None: nothing is kept across restarts.
    pub state_file: Option<PathBuf>,
    /// UDP fast-path worker threads per listen address (default: one per CPU); 0 serves
    /// UDP with one plain loop on the general path instead.
    pub workers: usize,
    /// Open TCP connections at most; more are closed at once. Unset: sized at start from
    /// the open-file limit, after room for probes, the admin API and files (at most
    /// 1024), so idle connections cannot starve health checks of descriptors.
    pub tcp_max_connections: Option<usize>,
    /// Queries answered per TCP connection before it is closed (default
    /// 10,000).
    pub tcp_max_queries: usize,
    /// Threads serving TCP, every listen address on each (default 2, as gdnsd's): each
    /// its own event loop, keeping the connections it accepts.
    pub tcp_threads: usize,
    /// After a small batch a UDP worker pauses this long (default 100 µs; 0 turns it off)
    /// so queries gather into bigger batches: fewer wake-ups and system calls per query
    /// (about a third less CPU per query under load on the peer bench) for at most this
    /// much (plus the kernel's timer slack, 50 µs) of added latency, paid only by queries
    /// that arrive during the pause. Answers are sent before it. Only when it pays: while
    /// queries come fast enough that a pause gathers many, or while the worker is busy
    /// (see `dns::udp`).
    pub udp_coalesce: Duration,
    /// This instance's name, answered as NSID (RFC 5001) and to CH TXT `id.server.` /
    /// `hostname.bind.`, so an operator can tell which instance answered. None (the
    /// default): not disclosed.
    pub identity: Option<String>,
    /// Answer CH TXT `version.bind.` and `version.server.` with gto's version (default
    /// true, as BIND, Knot and NSD do; false: refused like any other CH name).
    pub version: bool,
    /// Write the state file through a symbolic link that points out of its directory
    /// (default false: such a link is refused, so a link cannot aim gto's writes at a
    /// file elsewhere).
    pub state_file_follow_symlinks: bool,
    /// Largest zone file, MaxMind database, certificate or token file read (default
    /// 256 MiB): a runaway or endless file is an error, not an allocation failure.
    pub max_file_size: u64,
    /// Where a zone file's `$INCLUDE` may read: None (the default,
    /// `include_outside_config_dir = true`) anywhere the process can read; else only
    /// files inside this directory tree (the config's directory, canonical).
    pub include_root: Option<std::path::PathBuf>,
}

/// `[[zone]]`: an origin and where its records come from.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneSpec {
    /// The zone apex, lower-cased, fully qualified.
    pub origin: Name,
    /// The zone file.
    pub source: ZoneSource,
    /// Signing, when `dnssec` is set.
    pub dnssec: Option<DnssecSpec>,
}

/// `[[zone]] dnssec`: where the zone's keys are and the times rollovers derive from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnssecSpec {
    /// The key directory (absolute).
    pub keys: PathBuf,
    /// Where `keys` is set, so loading (which reads the keys) can locate a problem.
    pub keys_at: Setting,
    /// TTL of the DNSKEY, CDS and CDNSKEY RRsets (default 3600).
    pub dnskey_ttl: u32,
    /// How long a signing key signs before gto rolls it (None: only on request).
    pub lifetime: Option<std::time::Duration>,
    /// TTL of the zone's DS RRset at the parent (default 86400).
    pub parent_ds_ttl: u32,
    /// Margin for the fleet and the parent to act on a change (default 1h).
    pub propagation: std::time::Duration,
    /// Where gto looks for the DS of a new KSK or CSK before it retires the old one.
    pub parent: ParentServers,
    /// How often it looks while a rollover waits for the parent (default 10m).
    pub parent_check: std::time::Duration,
}

/// `dnssec.parent`: the servers of the parent zone that gto asks for the zone's DS
/// while a KSK or CSK rollover waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentServers {
    /// `"resolve"` (the default): the parent zone's NS records, and their addresses,
    /// through the system's resolver (`/etc/resolv.conf`).
    Resolve,
    /// `"manual"`: never asked; `gto dnssec ds-seen` says when the parent serves the DS.
    Manual,
    /// These addresses (port 53 unless given).
    Servers(Vec<std::net::SocketAddr>),
}

/// Where a setting is in the config file and how it is written there: for problems that
/// only loading finds (a key directory's contents), reported like compile's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// 1-based line in the config file.
    pub line: Option<usize>,
    /// Its path in the config (e.g. `zone[0].dnssec.keys`).
    pub path: String,
    /// Its value as written.
    pub written: String,
}

/// Where a zone's text comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneSource {
    /// Compiled into the binary (the embedded default).
    Embedded(&'static str),
    /// An RFC 1035 master file on disk.
    File(PathBuf),
}

impl ZoneSource {
    /// The path used in messages.
    pub fn display_path(&self) -> PathBuf {
        match self {
            ZoneSource::Embedded(_) => PathBuf::from("<embedded gto.example.com.zone>"),
            ZoneSource::File(path) => path.clone(),
        }
    }
}
