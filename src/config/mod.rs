//! Configuration: a TOML file (listeners, zones, GSLB names, pools of endpoints) plus the
//! zone files it names (the `loaded` module reads them into one validated `Loaded`).
//!
//! Parsing runs in two stages (`raw`, then `compile`) and reports *every* problem with
//! its file, line and path ([`ConfigErrors`]). The embedded default ([`EMBEDDED_CONFIG`]) is the
//! same format compiled into the binary, so `gto` with no arguments serves at once.

mod check;
pub(crate) mod compile;
mod error;
pub(crate) mod located;
mod parse;
mod raw;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::rr::Name;
use ipnet::IpNet;

pub use error::{ConfigError, ConfigErrors};
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
    /// `[[notify.webhook]]`: receivers of events.
    pub webhooks: Vec<Webhook>,
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
pub const EVENT_KINDS: [&str; 6] = ["health", "drain", "reload", "watermark", "fleet", "drift"];

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
    /// Bearer token required for changes; None: every change is refused.
    pub token: Option<Secret>,
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
}

impl AdminSettings {
    /// Largest `max_drain` accepted.
    pub const MAX_DRAIN_LIMIT: Duration = Duration::from_secs(100 * 366 * 86_400);
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: None,
            token: None,
            max_drain: Duration::from_secs(366 * 86_400),
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            hosts: Vec::new(),
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
    /// Queries answered per TCP connection before it is closed (default 100).
    pub tcp_max_queries: usize,
    /// After a small batch a UDP worker pauses this long (default 100 µs; 0 turns it off)
    /// so queries gather into bigger batches: fewer wake-ups and system calls per query
    /// (about a third less CPU per query under load on the peer bench) for at most this
    /// much (plus the kernel's timer slack, 50 µs) of added latency, paid only by queries
    /// that arrive during the pause. Answers are sent before it.
    pub udp_coalesce: Duration,
    /// This instance's name, answered as NSID (RFC 5001) and to CH TXT `id.server.` /
    /// `hostname.bind.` (with `version.server.`), so an operator can tell which instance
    /// answered. None (the default): not disclosed, CH queries are refused.
    pub identity: Option<String>,
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

/// Index of a pool in [`Config::pools`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolId(pub usize);

/// `[[service]]`: a GSLB name answered from a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// The GSLB name, lower-cased, fully qualified.
    pub name: Name,
    /// The pool whose endpoints are answered.
    pub pool: PoolId,
    /// How endpoints are ranked.
    pub policy: Policy,
    /// How many addresses one answer carries.
    pub answers: Answers,
    /// TTL of the answer records; short, so clients move soon after a failure.
    pub ttl: Ttl,
    /// What to answer when no endpoint is up.
    pub when_all_down: WhenAllDown,
    /// Client stickiness.
    pub affinity: Affinity,
    /// Use EDNS Client Subnet to place the client (else the resolver's address decides).
    pub use_ecs: bool,
    /// Byte offset of the `[[service]]` table, for locating later checks.
    pub(crate) span: usize,
    /// Position among the `[[service]]` tables as written, for paths in messages.
    pub(crate) position: usize,
}

/// How a pool's endpoints are ranked for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Config order: the first up endpoints are answered.
    Failover,
    /// Nearest first: great-circle distance, or the client region's preference list.
    Geo,
    /// Least loaded first (sessions / capacity).
    LeastLoad,
    /// Share by weight: every up endpoint is a candidate, weighted by `weight`.
    Weighted,
}

impl Policy {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Failover => "failover",
            Policy::Geo => "geo",
            Policy::LeastLoad => "least-load",
            Policy::Weighted => "weighted",
        }
    }
}

/// `affinity`: among the best `candidates` endpoints, a client keeps the one its prefix
/// hashes to (rendezvous hashing), so it lands on the same appliance while that stays up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Affinity {
    /// IPv4 client prefix length hashed (clients in one /24 stick together by default).
    pub v4: u8,
    /// IPv6 client prefix length hashed.
    pub v6: u8,
    /// How many of the best-ranked endpoints share clients (ties extend it).
    pub candidates: usize,
}

impl Affinity {
    /// /24 and /56. One candidate for `failover` (strict priority) and `geo` (the
    /// nearest site's endpoints, which tie, share the clients; farther sites only take
    /// over), three for `least-load` and `weighted` (where every equal endpoint ties anyway).
    pub fn default_for(policy: Policy) -> Self {
        Self {
            v4: 24,
            v6: 56,
            candidates: match policy {
                Policy::Failover | Policy::Geo => 1,
                Policy::LeastLoad | Policy::Weighted => 3,
            },
        }
    }
}

/// A pool's load handling: reports are smoothed (EWMA); above `high` an endpoint gets no
/// new clients while another can serve, until it drops below `low`; then it ramps up over
/// `slow_start`. A report older than `stale_after` is ignored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSettings {
    /// Below this (sessions / capacity) an overloaded endpoint recovers.
    pub low: f64,
    /// Above this an endpoint is overloaded.
    pub high: f64,
    /// Time a recovered endpoint takes to get its full share again.
    pub slow_start: Duration,
    /// Reports older than this are not trusted.
    pub stale_after: Duration,
    /// EWMA weight of a new report, 0..1 (1: no smoothing).
    pub smoothing: f64,
}

impl Default for LoadSettings {
    fn default() -> Self {
        Self {
            low: 0.75,
            high: 0.9,
            slow_start: Duration::from_secs(30),
            stale_after: Duration::from_secs(30),
            smoothing: 0.5,
        }
    }
}

/// What a GSLB name answers when none of its pool's endpoints is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenAllDown {
    /// Fail open: answer as if every endpoint were up (as Route 53 and gdnsd do).
    All,
    /// NODATA: no address at all.
    Empty,
    /// Answer from another pool.
    Fallback(PoolId),
}

/// `[[pool]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// Unique pool name.
    pub name: String,
    /// Endpoints in config order (the failover priority).
    pub members: Vec<Member>,
    /// How reported load is handled.
    pub load: LoadSettings,
    /// How the fleet's verdicts combine (with `[cluster]`).
    pub votes: VoteRule,
}

/// `down_when`, `min_voters`, `vote_scope` of a pool: how the verdicts of the fleet's
/// instances on one endpoint combine into its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteRule {
    /// When the endpoint counts as down.
    pub down_when: DownWhen,
    /// Fewer fresh voters than this: this instance's own verdict decides.
    pub min_voters: usize,
    /// Whose verdicts count.
    pub scope: VoteScope,
}

impl Default for VoteRule {
    fn default() -> Self {
        Self {
            down_when: DownWhen::Majority,
            min_voters: 2,
            scope: VoteScope::All,
        }
    }
}

/// When an endpoint counts as down, given the fresh verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownWhen {
    /// More than half of the voters say down.
    Majority,
    /// Every voter says down (fail-open bias).
    All,
    /// One voter says down.
    Any,
}

impl DownWhen {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            DownWhen::Majority => "majority",
            DownWhen::All => "all",
            DownWhen::Any => "any",
        }
    }
}

/// Whose verdicts count for this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteScope {
    /// Every instance's.
    All,
    /// Those of this instance's region, when there are `min_voters` of them.
    Region,
}

/// `[health]`: settings of the probes as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthSettings {
    /// Source address of IPv4 probes (multi-homed hosts; tests give each instance its own).
    pub source: Option<std::net::Ipv4Addr>,
    /// Source address of IPv6 probes.
    pub source6: Option<std::net::Ipv6Addr>,
}

/// `[[pool.member]]`: one endpoint (appliance).
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Unique within its pool; with the pool name, the endpoint's identity across reloads.
    pub name: String,
    /// Addresses answered for this endpoint (A for v4, AAAA for v6).
    pub addresses: Vec<IpAddr>,
    /// Where the endpoint is, for geo ranking.
    pub location: Option<Location>,
    /// Relative share under weighted ranking.
    pub weight: Weight,
    /// Sessions the endpoint can carry, for load ranking.
    pub capacity: Option<u32>,
    /// How the endpoint's health is checked (the pool's check, with the member's overrides).
    pub check: Check,
}

/// How an endpoint is health-checked: what to probe and how often, and how many results
/// in a row flip it (gdnsd-style rise/fall hysteresis).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Check {
    /// What one probe does.
    pub probe: Probe,
    /// Time between probes (jittered by the scheduler).
    pub interval: Duration,
    /// A probe that takes longer has failed; always shorter than `interval`.
    pub timeout: Duration,
    /// Consecutive successes that bring a down endpoint up.
    pub rise: u8,
    /// Consecutive failures that take an up endpoint down.
    pub fall: u8,
}

impl Check {
    /// gdnsd's defaults: probe every 2 s, fail after 1 s, two in a row flip.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
    /// See [`Check::DEFAULT_INTERVAL`].
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
    /// See [`Check::DEFAULT_INTERVAL`].
    pub const DEFAULT_RISE: u8 = 2;
    /// See [`Check::DEFAULT_INTERVAL`].
    pub const DEFAULT_FALL: u8 = 2;

    /// No probing: the endpoint is always up.
    pub fn none() -> Self {
        Self {
            probe: Probe::None,
            interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_TIMEOUT,
            rise: Self::DEFAULT_RISE,
            fall: Self::DEFAULT_FALL,
        }
    }
}

/// What one probe does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Probe {
    /// GET a path over HTTP or HTTPS and check the status (and optionally the body).
    Http(HttpProbe),
    /// Nothing: always up.
    None,
    /// Connect to a TCP port.
    Tcp {
        /// Address and port to connect to.
        target: SocketAddr,
    },
    /// Complete a TLS handshake (and optionally check the certificate's remaining days).
    Tls {
        /// Address and port to connect to.
        target: SocketAddr,
        /// Handshake settings.
        tls: TlsSettings,
    },
}

impl Probe {
    /// Stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Http(http) if http.tls.is_some() => "https",
            Probe::Http(_) => "http",
            Probe::None => "none",
            Probe::Tcp { .. } => "tcp",
            Probe::Tls { .. } => "tls",
        }
    }
}

/// An HTTP(S) status probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpProbe {
    /// Address and port to connect to.
    pub target: SocketAddr,
    /// Request path, starting with '/'.
    pub path: String,
    /// Host header.
    pub host: String,
    /// Accepted status codes; empty means any 2xx.
    pub expect: Vec<u16>,
    /// A substring the body must contain.
    pub body: Option<String>,
    /// Present for HTTPS.
    pub tls: Option<TlsSettings>,
    /// JSON fields of the response body that report load, when set.
    pub load_fields: Option<LoadFields>,
    /// Most of the body read (`max_body`, default 64 KiB): the expected text must come
    /// within it, and a load document must fit in it.
    pub max_body: usize,
}

impl HttpProbe {
    /// Default `max_body`.
    pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
}

/// Where an HTTP(S) check's JSON body reports load (dotted paths, e.g. `stats.sessions`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoadFields {
    /// Active sessions.
    pub sessions: String,
    /// Capacity; the member's `capacity` when absent.
    pub capacity: Option<String>,
}

/// How a TLS handshake is made and judged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// Server name sent as SNI and verified against the certificate.
    pub sni: String,
    /// Skip certificate verification (appliances with self-signed certificates).
    pub insecure: bool,
    /// Trust anchors from `ca_file`; empty means the Mozilla roots (webpki-roots).
    pub roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Fail when the certificate expires within this many days.
    pub cert_min_days: Option<u32>,
}

/// Where an endpoint or a client is.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// Latitude and longitude in degrees.
    pub coordinates: Option<(f64, f64)>,
    /// A region name.
    pub region: Option<String>,
}

/// A member's weight, 1..=[`Weight::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Weight(u32);

impl Weight {
    /// Weight when none is configured.
    pub const DEFAULT: Weight = Weight(100);
    /// Largest weight accepted.
    pub const MAX: u32 = 1_000_000;

    /// Accepts 1..=MAX.
    pub fn try_new(value: i64) -> Option<Self> {
        u32::try_from(value)
            .ok()
            .filter(|v| (1..=Self::MAX).contains(v))
            .map(Weight)
    }

    /// The weight as a number.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Number of addresses in one answer, 1..=[`Answers::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answers(u8);

impl Answers {
    /// Two addresses: the client's best endpoint and a second to try if it cannot connect.
    pub const DEFAULT: Answers = Answers(2);
    /// Largest count accepted; more would not fit a 512-byte answer.
    pub const MAX: u8 = 16;

    /// Accepts 1..=MAX.
    pub fn try_new(value: i64) -> Option<Self> {
        u8::try_from(value)
            .ok()
            .filter(|v| (1..=Self::MAX).contains(v))
            .map(Answers)
    }

    /// The count as a number.
    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

/// A record TTL in seconds, 0..=2^31-1 (RFC 2181 section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(u32);

impl Ttl {
    /// 30 s: short enough that clients move soon after a failure.
    pub const DEFAULT: Ttl = Ttl(30);
    /// RFC 2181's largest TTL.
    pub const MAX: u32 = i32::MAX as u32;

    /// Accepts 0..=MAX.
    pub fn try_new(value: i64) -> Option<Self> {
        u32::try_from(value)
            .ok()
            .filter(|v| *v <= Self::MAX)
            .map(Ttl)
    }

    /// The TTL in seconds.
    pub fn get(self) -> u32 {
        self.0
    }
}
