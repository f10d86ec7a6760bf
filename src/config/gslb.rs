//! The GSLB part of a config: names ([`Service`]) with their policy, affinity, answers
//! and TTL, and the pools of endpoints they answer from ([`Pool`], [`Member`]), each
//! endpoint's check, location, weight and load settings, and the fleet's vote rules.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::rr::Name;

/// Index of a pool in [`super::Config::pools`].
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
    /// What breaks the policy's ties.
    pub tie: Tie,
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
    /// `[[override]]`s of this name: client subnets answered from other endpoints first.
    pub overrides: Vec<SubnetOverride>,
    /// Byte offset of the `[[service]]` table, for locating later checks.
    pub(crate) span: usize,
    /// Position among the `[[service]]` tables as written, for paths in messages.
    pub(crate) position: usize,
}

/// `[[override]]`: clients in `networks` (by ECS, else the resolver's address) are
/// answered from `target` first, ranked by the service's policy without geography; when
/// none of it is up (or it is drained), the service answers as for everybody else.
#[derive(Debug, Clone, PartialEq)]
pub struct SubnetOverride {
    /// The client subnets (no two overrides of a service overlap).
    pub networks: Vec<ipnet::IpNet>,
    /// What they are answered from.
    pub target: OverrideTarget,
    /// Position among the `[[override]]` tables, for messages and explain.
    pub position: usize,
}

/// What an override's clients are answered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideTarget {
    /// Every member of this pool.
    Pool(PoolId),
    /// These members of the service's own pool, by name.
    Members(Vec<String>),
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
    /// Lowest round trip first, as measured from the client's region's vantages (this
    /// instance's and its fleet's probes).
    Latency,
}

/// What breaks ties of the policy's key (`tie`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tie {
    /// Config order (and affinity among the tied).
    #[default]
    ConfigOrder,
    /// The round trip measured from the client's region, then config order.
    Latency,
}

impl Tie {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Tie::ConfigOrder => "config-order",
            Tie::Latency => "latency",
        }
    }
}

impl Policy {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Failover => "failover",
            Policy::Geo => "geo",
            Policy::LeastLoad => "least-load",
            Policy::Weighted => "weighted",
            Policy::Latency => "latency",
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
    /// `affinity = false`: each query draws its first endpoint among the candidates by
    /// weight, so the shares hold per query rather than per client prefix.
    pub per_query: bool,
}

impl Affinity {
    /// /24 and /56. One candidate for `failover` (strict priority) and `geo` (the
    /// nearest site's endpoints, which tie, share the clients; farther sites only take
    /// over), three for `least-load` and `weighted` (where every equal endpoint ties anyway).
    pub fn default_for(policy: Policy) -> Self {
        Self {
            per_query: false,
            v4: 24,
            v6: 56,
            candidates: match policy {
                Policy::Failover | Policy::Geo | Policy::Latency => 1,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// Source address of IPv4 probes (multi-homed hosts; tests give each instance its own).
    pub source: Option<std::net::Ipv4Addr>,
    /// Source address of IPv6 probes.
    pub source6: Option<std::net::Ipv6Addr>,
    /// At most this many `exec` checks run at once (`exec_limit`, default 16).
    pub exec_limit: usize,
}

impl HealthSettings {
    /// Default `exec_limit`.
    pub const DEFAULT_EXEC_LIMIT: usize = 16;
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            source: None,
            source6: None,
            exec_limit: Self::DEFAULT_EXEC_LIMIT,
        }
    }
}

/// `[latency]`: how round trips are measured, smoothed and shared for `policy =
/// "latency"` and `tie = "latency"`, and the real-user measurements (`POST /v1/rtt`).
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySettings {
    /// Which part of a probe is its round trip.
    pub measure: Measure,
    /// Probes whose least round trip is the smoothed one (1..=32, default 5).
    pub window: usize,
    /// A smoothed round trip moves (is shared, and ranks) only when it changed by more
    /// than this fraction of the last one (0..=1, default 0.2)...
    pub relative_band: f64,
    /// ...and by more than this (default 5 ms, at most 10 s).
    pub absolute_band: std::time::Duration,
    /// Regions the fleet measures from (its instances' and probe agents' `[cluster]
    /// region`), declared so that a region nothing measures from is caught by `gto check`;
    /// this instance's own region counts without being listed.
    pub vantages: Vec<String>,
    /// Client prefixes whose real-user measurements are kept at most (the least recently
    /// reported go first; default 10,000).
    pub rum_max_prefixes: usize,
    /// A real-user measurement ranks for this long after it was reported (default 10 min).
    pub rum_max_age: std::time::Duration,
}

impl LatencySettings {
    /// Largest `absolute_band`.
    pub const MAX_ABSOLUTE_BAND: std::time::Duration = std::time::Duration::from_secs(10);
    /// Largest `window`.
    pub const MAX_WINDOW: usize = 32;
    /// Largest `rum_max_prefixes`.
    pub const MAX_RUM_PREFIXES: usize = 1_000_000;
}

impl Default for LatencySettings {
    fn default() -> Self {
        Self {
            measure: Measure::Connect,
            window: 5,
            relative_band: 0.2,
            absolute_band: std::time::Duration::from_millis(5),
            vantages: Vec::new(),
            rum_max_prefixes: 10_000,
            rum_max_age: std::time::Duration::from_secs(600),
        }
    }
}

/// Which part of a probe is its round trip (`[latency] measure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Measure {
    /// The TCP handshake (DNS and ICMP checks: the exchange); the network's round trip.
    #[default]
    Connect,
    /// From the start of the connection to the first byte of the answer (TLS: the
    /// handshake done; HTTP(S): the response's head), the appliance's own time included.
    FirstByte,
}

impl Measure {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Connect => "connect",
            Measure::FirstByte => "first-byte",
        }
    }
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
    /// The site (data centre) it is in (`site`): a drain of the site drains it.
    pub site: Option<String>,
}

/// How an endpoint is health-checked: what to probe and how often, and how many results
/// in a row flip it (gdnsd-style rise/fall hysteresis).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Check {
    /// What one probe does. For a dual-stack member checked with `family = "each"` (the
    /// default), it probes the first IPv4 address and its result governs the A records.
    pub probe: Probe,
    /// `family = "each"` on a dual-stack member: the probe of its first IPv6 address, whose
    /// result governs the AAAA records. None when one probe governs every address.
    pub probe_v6: Option<Probe>,
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
            probe_v6: None,
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
    /// Ask a DNS question and judge the reply's rcode (and optionally its answers).
    Dns(DnsProbe),
    /// An ICMP echo over an unprivileged ping socket.
    Icmp {
        /// The address pinged.
        target: std::net::IpAddr,
    },
    /// Run an external command (gdnsd's `extmon`): exit 0 is up.
    Exec(ExecProbe),
}

impl Probe {
    /// The address and port it connects to (None for `none`).
    pub fn target(&self) -> Option<SocketAddr> {
        match self {
            Probe::Http(http) => Some(http.target),
            Probe::None => None,
            Probe::Tcp { target } | Probe::Tls { target, .. } => Some(*target),
            Probe::Dns(dns) => Some(dns.target),
            // No port: the address alone (port 0).
            Probe::Icmp { target } => Some(SocketAddr::new(*target, 0)),
            Probe::Exec(exec) => Some(SocketAddr::new(exec.address, exec.port.unwrap_or(0))),
        }
    }

    /// Stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Http(http) if http.tls.is_some() => "https",
            Probe::Http(_) => "http",
            Probe::None => "none",
            Probe::Tcp { .. } => "tcp",
            Probe::Tls { .. } => "tls",
            Probe::Dns(_) => "dns",
            Probe::Icmp { .. } => "icmp",
            Probe::Exec(_) => "exec",
        }
    }
}

/// An rcode's mnemonic as dig prints it: NOERROR, SERVFAIL, NXDOMAIN, REFUSED.
pub fn rcode_mnemonic(code: hickory_proto::op::ResponseCode) -> String {
    match code {
        hickory_proto::op::ResponseCode::Unknown(n) => n.to_string(),
        code => format!("{code:?}").to_ascii_uppercase(),
    }
}

/// A DNS check: one question to the endpoint, judged by the reply's rcode and, when
/// given, the answers it must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsProbe {
    /// Address and port asked.
    pub target: SocketAddr,
    /// The name asked (`query`).
    pub name: hickory_proto::rr::Name,
    /// The type asked (`qtype`, default A).
    pub qtype: hickory_proto::rr::RecordType,
    /// Over TCP rather than UDP (`transport = "tcp"`). Over UDP, a truncated reply is
    /// asked again over TCP.
    pub tcp: bool,
    /// The rcode that means up (`rcode`, default NOERROR).
    pub rcode: hickory_proto::op::ResponseCode,
    /// Values every one of which some answer record must hold (`answer`), in presentation
    /// form: an address, a name, text.
    pub answers: Vec<String>,
}

/// An external command run as a check, as gdnsd's `extmon`: an argv (no shell), with
/// `{address}`, `{port}`, `{name}` and `{pool}` replaced by the endpoint's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExecProbe {
    /// The command and its arguments, placeholders unreplaced.
    pub command: Vec<String>,
    /// The endpoint address checked (`{address}`).
    pub address: std::net::IpAddr,
    /// `port`, when set (`{port}`).
    pub port: Option<u16>,
    /// The member's name (`{name}`).
    pub member: String,
    /// The pool's name (`{pool}`).
    pub pool: String,
    /// Most of its output read (`max_output`, default 4 KiB): a command that prints more
    /// is killed and down.
    pub max_output: usize,
    /// JSON fields of its standard output that report load, when set.
    pub load_fields: Option<LoadFields>,
}

impl ExecProbe {
    /// Default `max_output`.
    pub const DEFAULT_MAX_OUTPUT: usize = 4 * 1024;
    /// The placeholders a command may use.
    pub const PLACEHOLDERS: [&str; 4] = ["{address}", "{port}", "{name}", "{pool}"];

    /// The argv with the placeholders replaced.
    pub fn argv(&self) -> Vec<String> {
        let port = self.port.map(|p| p.to_string()).unwrap_or_default();
        self.command
            .iter()
            .map(|arg| {
                arg.replace("{address}", &self.address.to_string())
                    .replace("{port}", &port)
                    .replace("{name}", &self.member)
                    .replace("{pool}", &self.pool)
            })
            .collect()
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
    /// Warn (or, with `cert_expiring_down`, fail) when the certificate expires within this
    /// many days.
    pub cert_min_days: Option<u32>,
    /// `cert_expiring = "down"`: an expiring certificate fails the probe; `"warn"` (the
    /// default) only warns, with an event and the expiry in the metrics.
    pub cert_expiring_down: bool,
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
