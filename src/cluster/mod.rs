//! The fleet: gto instances that share drains, load reports and their presence through a
//! distributed store (etcd v3, [`etcd`]), and keep answering when it is gone.
//!
//! The rest of gto sees only [`Fleet`]; the store is behind the small [`Engine`] trait
//! (read a prefix, watch it from a revision, leases, compare-and-set), so a second engine
//! could be added. Nothing here is on the query path: changes from the store are applied
//! to the health monitor, which publishes snapshots as it does for local changes.
//!
//! Keys, under `/gto/<name>/` (path parts percent-encoded):
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `drain/<pool>/<member>` | `{"since","until","by"}` | durable; with `until`, a lease that ends with it |
//! | `load/<pool>/<member>` | `{"sessions","capacity","at_ms","by"}` | the reporting instance's lease |
//! | `instance/<id>` | version, listen addresses, start time, config digest | the instance's lease |
//! | `vote/<pool>/<member>/<id>` | the instance's verdict ([`crate::health::votes::Vote`]) | the instance's lease |
//!
//! A supervision task connects, registers the instance under a lease kept alive at a
//! third of its TTL, reads the prefix once and then watches it from the next revision. On
//! a disconnect it backs off (0.1 s doubling to 1 s, with jitter) and resumes the watch
//! from the last revision it applied; when that revision has been compacted it reads the
//! whole prefix again. While the store is unreachable, answers use the last known state
//! (also kept in the state file), and drains are refused rather than applied on one
//! instance only.

pub mod etcd;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ClusterSettings;
use crate::health::HealthHandle;
use crate::routing::EndpointKey;
use crate::time::{rfc3339, unix};

/// `gto_cluster_connected`: 1 while the store is reachable.
pub const CLUSTER_CONNECTED: &str = "gto_cluster_connected";
/// `gto_cluster_config_drift`: 1 while some instance serves a different config digest.
pub const CLUSTER_CONFIG_DRIFT: &str = "gto_cluster_config_drift";
/// `gto_cluster_resyncs_total`: full reads of the fleet state (start, compaction).
pub const CLUSTER_RESYNCS_TOTAL: &str = "gto_cluster_resyncs_total";
/// `gto_cluster_instances`: fleet members (instances and probe agents) with a live
/// registration, as this instance sees them.
pub const CLUSTER_INSTANCES: &str = "gto_cluster_instances";
/// `gto_cluster_events_total`: changes received from the store.
pub const CLUSTER_EVENTS_TOTAL: &str = "gto_cluster_events_total";
/// `gto_cluster_ignored_values_total{reason}`: values under the fleet's prefix that count
/// for nothing: `invalid` (not the stored format, or out of bounds such as a drain past
/// `max_drain`), `not_a_member` (a vote from no instance or agent with a live lease),
/// `unknown_key`.
pub const CLUSTER_IGNORED_VALUES_TOTAL: &str = "gto_cluster_ignored_values_total";

/// Keys warned about at most (each once); past that, ignored values are only counted.
const WARNED_KEYS: usize = 10_000;

/// This instance's verdicts are all written again this often (they change rarely; their
/// freshness is the instance's lease, not this refresh).
pub const VOTE_REFRESH: Duration = Duration::from_secs(300);

/// Verdicts written in one request when all are written (etcd allows 128 operations).
pub const VOTE_BATCH: usize = 100;

/// A probe-read load that does not change is published again this often.
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(10);

const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// How long a drain or undrain keeps trying while etcd has no leader (an election after a
/// member's loss) before it answers 503.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Why a fleet operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The store cannot be reached or has no quorum.
    #[error("the fleet store (etcd) is unavailable: {0}")]
    Unavailable(String),
    /// Other instances kept changing the same key.
    #[error("the change kept conflicting with changes from other instances; try again")]
    Conflict,
}

/// A key and its value as stored.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The full key.
    pub key: String,
    /// The value (JSON).
    pub value: Vec<u8>,
    /// The store revision that last changed it.
    pub revision: i64,
    /// The lease it lives under (0: none).
    pub lease: i64,
}

/// What a watch delivers.
#[derive(Debug)]
pub enum WatchItem {
    /// Changes in revision order (true: put, false: delete), and the store revision they
    /// bring the watcher to.
    Changes {
        /// The changes.
        changes: Vec<(bool, Entry)>,
        /// The revision reached.
        revision: i64,
    },
    /// The start revision was compacted away: read everything again.
    Compacted,
    /// The watch ended (the store went away).
    Closed(String),
}

/// The operations the fleet needs of a store.
#[async_trait::async_trait]
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// Connects (again).
    async fn connect(&self) -> Result<(), ClusterError>;
    /// Every key under `prefix`, and the store's revision.
    async fn read_all(&self, prefix: &str) -> Result<(Vec<Entry>, i64), ClusterError>;
    /// One key.
    async fn get(&self, key: &str) -> Result<Option<Entry>, ClusterError>;
    /// Changes under `prefix` from revision `from` on.
    async fn watch(
        &self,
        prefix: &str,
        from: i64,
    ) -> Result<mpsc::Receiver<WatchItem>, ClusterError>;
    /// A lease of `ttl`.
    async fn grant(&self, ttl: Duration) -> Result<i64, ClusterError>;
    /// Keeps `lease` alive; returns why it stopped.
    async fn keep_alive(&self, lease: i64, ttl: Duration) -> ClusterError;
    /// Ends a lease and its keys (best effort).
    async fn revoke(&self, lease: i64);
    /// Writes a key, under a lease if given.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> Result<(), ClusterError>;
    /// Writes many keys in one request (one store revision), under a lease if given.
    async fn put_many(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        lease: Option<i64>,
    ) -> Result<(), ClusterError>;
    /// Writes (`Some`) or deletes (`None`) a key if it was last changed at `revision` (0:
    /// absent). False: it changed meanwhile.
    async fn put_if(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        revision: i64,
        lease: Option<i64>,
    ) -> Result<bool, ClusterError>;
    /// Each member's endpoint and whether it answered the last call tried on it.
    fn members(&self) -> Vec<(String, bool)> {
        Vec::new()
    }
}

/// A drain as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct DrainValue {
    since: u64,
    until: Option<u64>,
    by: String,
}

/// A load report as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoadValue {
    sessions: u32,
    capacity: u32,
    at_ms: u64,
    by: String,
}

/// What an instance tells the fleet about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceInfo {
    /// gto's version.
    pub version: String,
    /// DNS listen addresses.
    pub listen: Vec<String>,
    /// The admin API's address.
    pub admin: Option<String>,
    /// Start time (Unix seconds).
    pub started: u64,
    /// Digest of what its config and zones mean for answers ([`crate::loaded::meaning_digest`]).
    pub config_digest: String,
    /// That digest per section, so that drift can name where two configs differ.
    #[serde(default)]
    pub config_sections: BTreeMap<String, String>,
    /// When it last said it is alive (Unix seconds): its record is written again every
    /// half lease, so a dead instance's `last_seen` stops moving at once and it shows as
    /// gone once that is a lease old, before its lease even expires.
    #[serde(default)]
    pub heartbeat: u64,
}

/// The sections (`pool sma`, `zone gto.example.com.`, ...) in which two configs differ:
/// present in one only, or with different digests.
fn differing_sections(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    a.keys()
        .chain(b.keys())
        .filter(|section| a.get(*section) != b.get(*section))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// An instance as this one sees it.
#[derive(Debug, Clone)]
struct Seen {
    info: InstanceInfo,
    /// When its record last changed, as seen here.
    seen: SystemTime,
}

/// This instance's handle on the fleet.
#[derive(Debug, Clone)]
pub struct Fleet(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    engine: Box<dyn Engine>,
    name: String,
    endpoints: Vec<String>,
    prefix: String,
    instance: String,
    lease_ttl: Duration,
    health: HealthHandle,
    connected: AtomicBool,
    drift: AtomicBool,
    lease: AtomicI64,
    me: ArcSwap<InstanceInfo>,
    instances: ArcSwap<BTreeMap<String, Seen>>,
    reregister: Notify,
    /// Membership and drift changes are reported here, once set.
    bus: std::sync::OnceLock<crate::events::Events>,
    /// Load reports made while the store was unreachable, newest per endpoint.
    pending_loads: std::sync::Mutex<std::collections::HashMap<EndpointKey, LoadValue>>,
    /// Longest drain a value from the store may ask for (`[admin] max_drain`).
    max_drain: Duration,
    /// A write of verdicts or loads failed: all are written again (with backoff) until
    /// one works, rather than at the next refresh.
    unshared: AtomicBool,
    /// Every other voter's vote as stored, and the fleet's members with their leases:
    /// which votes count is computed from both.
    mirror: std::sync::Mutex<Mirror>,
}

/// What the store holds of votes and members (see [`Inner::mirror`]).
#[derive(Debug, Default)]
struct Mirror {
    /// Votes by endpoint and voter, with the lease each lives under.
    votes:
        std::collections::HashMap<EndpointKey, BTreeMap<String, (crate::health::votes::Vote, i64)>>,
    /// Members (instances and probe agents) by name, with their registration's lease.
    members: std::collections::HashMap<String, i64>,
    /// Keys already warned about.
    warned: std::collections::HashSet<String>,
}

impl Mirror {
    /// Whether a vote by `voter` under `lease` counts: the voter is a member, and the vote
    /// lives under the member's own (live) lease.
    fn counts(&self, voter: &str, lease: i64) -> bool {
        lease != 0 && self.members.get(voter) == Some(&lease)
    }

    /// The votes that count.
    fn counted(
        &self,
    ) -> std::collections::HashMap<EndpointKey, BTreeMap<String, crate::health::votes::Vote>> {
        self.votes
            .iter()
            .map(|(key, voters)| {
                let counted = voters
                    .iter()
                    .filter(|(voter, (_, lease))| self.counts(voter, *lease))
                    .map(|(voter, (vote, _))| (voter.clone(), vote.clone()))
                    .collect();
                (key.clone(), counted)
            })
            .collect()
    }
}

/// Percent-encodes `/` and `%` so that a name is one key segment.
fn segment(text: &str) -> String {
    text.replace('%', "%25").replace('/', "%2F")
}

fn unsegment(text: &str) -> String {
    text.replace("%2F", "/").replace("%25", "%")
}

/// What a key under the prefix is.
enum Key {
    Drain(EndpointKey),
    Load(EndpointKey),
    Instance(String),
    Vote(EndpointKey, String),
}

impl Fleet {
    /// This instance's part in the fleet of `settings`; [`Fleet::run`] starts it.
    /// Drains read from the store past `max_drain` from now are invalid.
    pub fn new(
        settings: &ClusterSettings,
        health: HealthHandle,
        me: InstanceInfo,
        max_drain: Duration,
    ) -> Self {
        let engine = Box::new(etcd::Etcd::new(settings.clone()));
        let fleet = Fleet(Arc::new(Inner {
            engine,
            name: settings.name.clone(),
            endpoints: settings.endpoints.clone(),
            prefix: format!("/gto/{}/", settings.name),
            instance: settings.instance.clone(),
            lease_ttl: settings.lease_ttl,
            health,
            connected: AtomicBool::new(false),
            drift: AtomicBool::new(false),
            lease: AtomicI64::new(0),
            me: ArcSwap::from_pointee(me),
            instances: ArcSwap::from_pointee(BTreeMap::new()),
            reregister: Notify::new(),
            bus: std::sync::OnceLock::new(),
            pending_loads: std::sync::Mutex::default(),
            max_drain,
            unshared: AtomicBool::new(false),
            mirror: std::sync::Mutex::default(),
        }));
        metrics::counter!(CLUSTER_IGNORED_VALUES_TOTAL, "reason" => "invalid").absolute(0);
        metrics::counter!(CLUSTER_IGNORED_VALUES_TOTAL, "reason" => "not_a_member").absolute(0);
        metrics::counter!(CLUSTER_IGNORED_VALUES_TOTAL, "reason" => "unknown_key").absolute(0);
        metrics::gauge!(CLUSTER_CONNECTED).set(0.0);
        metrics::gauge!(CLUSTER_CONFIG_DRIFT).set(0.0);
        metrics::counter!(CLUSTER_RESYNCS_TOTAL).absolute(0);
        metrics::counter!(CLUSTER_EVENTS_TOTAL).absolute(0);
        fleet
    }

    /// Connects and follows the fleet until `token` is cancelled (then leaves it), and
    /// shares the loads this instance's probes read.
    pub fn run(&self, token: CancellationToken) -> tokio::task::JoinHandle<()> {
        let publisher = self.clone();
        let stop = token.clone();
        tokio::spawn(async move { publisher.share_probe_loads(stop).await });
        let voter = self.clone();
        let stop = token.clone();
        tokio::spawn(async move { voter.share_verdicts(stop).await });
        let running = self.clone();
        tokio::spawn(async move { running.supervise(token).await })
    }

    /// Publishes this instance's verdicts: each change at once, and all of them every
    /// [`VOTE_REFRESH`] (and after each reconnect, from [`Fleet::session`]).
    async fn share_verdicts(&self, token: CancellationToken) {
        let mut verdicts = self.0.health.subscribe_verdicts();
        let mut refresh = tokio::time::interval(VOTE_REFRESH);
        refresh.tick().await;
        let mut retry_in = MIN_BACKOFF;
        loop {
            let unshared = self.0.unshared.load(Ordering::Relaxed);
            let retry = async {
                if unshared {
                    tokio::time::sleep(retry_in).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = retry => {
                    // Written again until written (or superseded by what is current).
                    self.0.unshared.store(false, Ordering::Relaxed);
                    self.publish_all_votes().await;
                    self.flush_pending_loads().await;
                    retry_in = if self.0.unshared.load(Ordering::Relaxed) {
                        (retry_in * 2).min(Duration::from_secs(5))
                    } else {
                        MIN_BACKOFF
                    };
                }
                received = verdicts.recv() => match received {
                    Ok(first) => {
                        // Changes that arrive together go in one request.
                        let mut batch = vec![first];
                        while batch.len() < VOTE_BATCH {
                            match verdicts.try_recv() {
                                Ok(next) => batch.push(next),
                                Err(_) => break,
                            }
                        }
                        self.publish_votes(batch).await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        self.publish_all_votes().await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = refresh.tick() => self.publish_all_votes().await,
                () = token.cancelled() => return,
            }
        }
    }

    /// Writes all of this instance's verdicts, [`VOTE_BATCH`] to a request.
    async fn publish_all_votes(&self) {
        if !self.is_connected() {
            return;
        }
        let verdicts = self.0.health.verdicts().await;
        for chunk in verdicts.chunks(VOTE_BATCH) {
            self.publish_votes(chunk.to_vec()).await;
        }
    }

    fn vote_key(&self, key: &EndpointKey) -> String {
        format!(
            "{}vote/{}/{}/{}",
            self.0.prefix,
            segment(&key.pool),
            segment(&key.member),
            segment(&self.0.instance)
        )
    }

    async fn publish_votes(&self, votes: Vec<(EndpointKey, crate::health::votes::Vote)>) {
        let inner = &self.0;
        let lease = inner.lease.load(Ordering::Relaxed);
        if !self.is_connected() || lease == 0 {
            return;
        }
        let entries = votes
            .iter()
            .map(|(key, vote)| {
                (
                    self.vote_key(key),
                    serde_json::to_vec(vote).unwrap_or_default(),
                )
            })
            .collect();
        if let Err(error) = inner.engine.put_many(entries, Some(lease)).await {
            warn!(%error, verdicts = votes.len(), "verdicts not shared; writing them again shortly");
            inner.unshared.store(true, Ordering::Relaxed);
        }
    }

    /// Publishes loads read by probes: when they change, and at least every
    /// [`REPUBLISH_EVERY`] so that other instances do not take them for stale.
    async fn share_probe_loads(&self, token: CancellationToken) {
        let mut loads = self.0.health.subscribe_loads();
        let mut sent: std::collections::HashMap<EndpointKey, (u32, u32, SystemTime)> =
            std::collections::HashMap::new();
        loop {
            let received = tokio::select! {
                received = loads.recv() => received,
                () = token.cancelled() => return,
            };
            let (key, load) = match received {
                Ok(pair) => pair,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let now = SystemTime::now();
            let fresh = sent.get(&key).is_some_and(|(sessions, capacity, at)| {
                *sessions == load.sessions
                    && *capacity == load.capacity
                    && now.duration_since(*at).unwrap_or_default() < REPUBLISH_EVERY
            });
            if !fresh {
                // While the store is unreachable it waits, the newest per endpoint.
                self.publish_load(&key, load.sessions, load.capacity).await;
                sent.insert(key, (load.sessions, load.capacity, now));
            }
        }
    }

    /// Reports members joining and leaving, and config drift, to `events`.
    pub fn report_to(&self, events: crate::events::Events) {
        let _ = self.0.bus.set(events);
    }

    fn emit(&self, kind: &'static str, data: serde_json::Value) {
        if let Some(bus) = self.0.bus.get() {
            bus.emit(kind, data);
        }
    }

    /// The admin API's address, once bound, for the fleet view.
    pub fn set_admin(&self, addr: std::net::SocketAddr) {
        let mut me = (**self.0.me.load()).clone();
        me.admin = Some(addr.to_string());
        self.0.me.store(Arc::new(me));
    }

    /// True while the store is reachable.
    pub fn is_connected(&self) -> bool {
        self.0.connected.load(Ordering::Relaxed)
    }

    /// Drains an endpoint fleet-wide (`until`: when it ends by itself). Refused while the
    /// store is unreachable: a drain is never applied on one instance only.
    pub async fn drain(
        &self,
        key: &EndpointKey,
        until: Option<SystemTime>,
    ) -> Result<(), ClusterError> {
        let value = DrainValue {
            since: unix(SystemTime::now()),
            until: until.map(unix),
            by: self.0.instance.clone(),
        };
        self.write_drain(key, Some(value), until).await
    }

    /// Ends a drain fleet-wide.
    pub async fn undrain(&self, key: &EndpointKey) -> Result<(), ClusterError> {
        self.write_drain(key, None, None).await
    }

    async fn write_drain(
        &self,
        key: &EndpointKey,
        value: Option<DrainValue>,
        until: Option<SystemTime>,
    ) -> Result<(), ClusterError> {
        if !self.is_connected() {
            return Err(ClusterError::Unavailable(
                "not connected; drains are shared by the fleet, so none is changed until the \
                 store is back"
                    .into(),
            ));
        }
        // A leader election (a member lost) leaves the quorum without a leader for a
        // moment: the change is tried again until it is written or this deadline passes.
        let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
        loop {
            match self.try_write_drain(key, value.clone(), until).await {
                Err(ClusterError::Unavailable(why)) if tokio::time::Instant::now() < deadline => {
                    debug!(%why, "drain not written yet; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                result => return result,
            }
        }
    }

    async fn try_write_drain(
        &self,
        key: &EndpointKey,
        value: Option<DrainValue>,
        until: Option<SystemTime>,
    ) -> Result<(), ClusterError> {
        let inner = &self.0;
        let path = self.key_of("drain", key);
        for _ in 0..5 {
            let current = inner.engine.get(&path).await?;
            if value.is_none() && current.is_none() {
                return Ok(());
            }
            let revision = current.map_or(0, |e| e.revision);
            // A drain with an end lives on a lease that ends with it.
            let lease = match until.and_then(|u| u.duration_since(SystemTime::now()).ok()) {
                Some(left) => Some(inner.engine.grant(left + Duration::from_secs(1)).await?),
                None => None,
            };
            let bytes = value
                .as_ref()
                .map(|v| serde_json::to_vec(v).unwrap_or_default());
            if inner.engine.put_if(&path, bytes, revision, lease).await? {
                return Ok(());
            }
        }
        Err(ClusterError::Conflict)
    }

    /// Shares a load report pushed to this instance; while the store is unreachable it is
    /// kept (the newest per endpoint) and shared when the store is back.
    pub async fn publish_load(&self, key: &EndpointKey, sessions: u32, capacity: u32) {
        let inner = &self.0;
        let lease = inner.lease.load(Ordering::Relaxed);
        let value = LoadValue {
            sessions,
            capacity,
            at_ms: u64::try_from(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis(),
            )
            .unwrap_or(u64::MAX),
            by: inner.instance.clone(),
        };
        if !self.is_connected() || lease == 0 {
            // Shared once the store is back, with the time it was made.
            if let Ok(mut pending) = inner.pending_loads.lock() {
                pending.insert(key.clone(), value);
            }
            return;
        }
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        if let Err(error) = inner
            .engine
            .put(&self.key_of("load", key), bytes, Some(lease))
            .await
        {
            warn!(%error, pool = %key.pool, member = %key.member, "load report not shared; writing it again shortly");
            // Kept (unless a newer one comes) and written again.
            if let Ok(mut pending) = inner.pending_loads.lock() {
                pending.entry(key.clone()).or_insert(value);
            }
            inner.unshared.store(true, Ordering::Relaxed);
        }
    }

    /// Shares the load reports made while the store was unreachable (the newest per
    /// endpoint, with the time it was made, so `stale_after` still holds).
    async fn flush_pending_loads(&self) {
        let inner = &self.0;
        let lease = inner.lease.load(Ordering::Relaxed);
        if !self.is_connected() || lease == 0 {
            return; // shared from the session once connected
        }
        let pending: Vec<(EndpointKey, LoadValue)> = match inner.pending_loads.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(_) => return,
        };
        for chunk in pending.chunks(VOTE_BATCH) {
            let entries: Vec<(String, Vec<u8>)> = chunk
                .iter()
                .map(|(key, value)| {
                    (
                        self.key_of("load", key),
                        serde_json::to_vec(value).unwrap_or_default(),
                    )
                })
                .collect();
            if let Err(error) = inner.engine.put_many(entries, Some(lease)).await {
                warn!(%error, reports = chunk.len(), "load reports not shared; writing them again shortly");
                // Kept for the next attempt, unless a newer report came meanwhile.
                if let Ok(mut kept) = inner.pending_loads.lock() {
                    for (key, value) in chunk {
                        kept.entry(key.clone()).or_insert_with(|| value.clone());
                    }
                }
                inner.unshared.store(true, Ordering::Relaxed);
            }
        }
    }

    /// The config digest changed (a reload): tell the fleet.
    pub fn set_digest(&self, digest: &str, sections: &BTreeMap<String, String>) {
        let mut me = (**self.0.me.load()).clone();
        me.config_digest = digest.to_string();
        me.config_sections = sections.clone();
        self.0.me.store(Arc::new(me));
        self.0.reregister.notify_one();
        self.update_drift();
    }

    /// The fleet as status shows it.
    pub fn status_json(&self) -> serde_json::Value {
        let inner = &self.0;
        let mine = inner.me.load().config_digest.clone();
        let instances: Vec<_> = inner
            .instances
            .load()
            .iter()
            .map(|(id, seen)| {
                json!({
                    "instance": id,
                    "version": seen.info.version,
                    "listen": seen.info.listen,
                    "admin": seen.info.admin,
                    "started": rfc3339(crate::time::from_unix_clamped(seen.info.started)),
                    "config_digest": seen.info.config_digest,
                    "config_matches": seen.info.config_digest == mine,
                    "config_differs": differing_sections(&inner.me.load().config_sections, &seen.info.config_sections),
                    "last_seen": rfc3339(seen.seen),
                    "alive": seen.seen.elapsed().unwrap_or_default() <= inner.lease_ttl,
                })
            })
            .collect();
        json!({
            "name": inner.name,
            "instance": inner.instance,
            "etcd": inner.endpoints,
            "members": inner
                .engine
                .members()
                .into_iter()
                .map(|(endpoint, up)| json!({ "endpoint": endpoint, "up": up }))
                .collect::<Vec<_>>(),
            "connected": self.is_connected(),
            "config_drift": inner.drift.load(Ordering::Relaxed),
            "instances": instances,
        })
    }

    fn key_of(&self, kind: &str, key: &EndpointKey) -> String {
        format!(
            "{}{kind}/{}/{}",
            self.0.prefix,
            segment(&key.pool),
            segment(&key.member)
        )
    }

    fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(&self.0.prefix)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let endpoint = |pool: &str, member: &str| EndpointKey {
            pool: unsegment(pool),
            member: unsegment(member),
        };
        match parts.as_slice() {
            ["drain", pool, member] => Some(Key::Drain(endpoint(pool, member))),
            ["load", pool, member] => Some(Key::Load(endpoint(pool, member))),
            ["instance", id] => Some(Key::Instance(unsegment(id))),
            ["vote", pool, member, voter] => {
                Some(Key::Vote(endpoint(pool, member), unsegment(voter)))
            }
            _ => None,
        }
    }

    async fn set_connected(&self, connected: bool, why: Option<&ClusterError>) {
        let was = self.0.connected.swap(connected, Ordering::Relaxed);
        if was != connected {
            // Votes count only while the store is reachable.
            self.0.health.set_voting(connected).await;
        }
        metrics::gauge!(CLUSTER_CONNECTED).set(if connected { 1.0 } else { 0.0 });
        if was != connected {
            if connected {
                info!(etcd = ?self.0.endpoints, "fleet store connected");
            } else {
                warn!(
                    error = %why.map(ToString::to_string).unwrap_or_default(),
                    "fleet store unreachable: answering from the last known fleet state; \
                     drains are refused until it is back"
                );
            }
        }
    }

    fn update_drift(&self) {
        let me = self.0.me.load();
        let mine = me.config_digest.clone();
        let instances = self.0.instances.load();
        // Probe-only agents (no DNS listeners) serve no answers: not drift.
        let differing: Vec<&String> = instances
            .iter()
            .filter(|(_, seen)| !seen.info.listen.is_empty())
            .filter(|(_, seen)| seen.info.config_digest != mine)
            .map(|(id, _)| id)
            .collect();
        let sections: std::collections::BTreeSet<String> = instances
            .iter()
            .filter(|(id, _)| differing.contains(id))
            .flat_map(|(_, seen)| {
                differing_sections(&me.config_sections, &seen.info.config_sections)
            })
            .collect();
        let drift = !differing.is_empty();
        metrics::gauge!(CLUSTER_CONFIG_DRIFT).set(if drift { 1.0 } else { 0.0 });
        if self.0.drift.swap(drift, Ordering::Relaxed) != drift {
            if drift {
                warn!(
                    instances = ?differing,
                    sections = ?sections,
                    digest = %mine,
                    "config drift: instances of the fleet serve a different config"
                );
            } else {
                info!("config drift ended: every instance serves this config");
            }
            self.emit(
                "drift",
                json!({ "drift": drift, "instances": differing, "sections": sections, "digest": mine }),
            );
        }
    }

    async fn supervise(&self, token: CancellationToken) {
        let mut last_revision = 0i64;
        let mut backoff = MIN_BACKOFF;
        loop {
            let (reached, result) = self.session(&mut last_revision, &token).await;
            match result {
                Ok(()) => break,
                Err(error) => self.set_connected(false, Some(&error)).await,
            }
            if reached {
                backoff = MIN_BACKOFF;
            }
            let jitter =
                Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 2));
            tokio::select! {
                () = tokio::time::sleep(backoff + jitter) => {}
                () = token.cancelled() => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        // Stopping: not an outage, so no warning.
        self.0.connected.store(false, Ordering::Relaxed);
        metrics::gauge!(CLUSTER_CONNECTED).set(0.0);
        let lease = self.0.lease.swap(0, Ordering::Relaxed);
        if lease != 0 {
            // Leave the fleet at once rather than when the lease runs out.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.0.engine.revoke(lease)).await;
        }
    }

    /// One connection: register, catch up, watch. Returns whether it got connected, and
    /// Ok on shutdown.
    async fn session(
        &self,
        last_revision: &mut i64,
        token: &CancellationToken,
    ) -> (bool, Result<(), ClusterError>) {
        let inner = &self.0;
        let engine = inner.engine.as_ref();
        let setup = async {
            engine.connect().await?;
            let lease = engine.grant(inner.lease_ttl).await?;
            inner.lease.store(lease, Ordering::Relaxed);
            self.register(lease).await?;
            let from = if *last_revision > 0 {
                *last_revision + 1
            } else {
                self.resync().await? + 1
            };
            let watch = engine.watch(&inner.prefix, from).await?;
            Ok::<_, ClusterError>((lease, watch))
        };
        let (lease, mut watch) = tokio::select! {
            result = setup => match result {
                Ok(pair) => pair,
                Err(error) => return (false, Err(error)),
            },
            () = token.cancelled() => return (false, Ok(())),
        };
        self.set_connected(true, None).await;
        self.publish_all_votes().await;
        self.flush_pending_loads().await;
        let keep_alive = engine.keep_alive(lease, inner.lease_ttl);
        tokio::pin!(keep_alive);
        let mut heartbeat = tokio::time::interval(inner.lease_ttl / 2);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    if let Err(error) = self.register(lease).await {
                        warn!(%error, "fleet heartbeat not written; trying again at the next");
                    }
                }
                item = watch.recv() => match item {
                    Some(WatchItem::Changes { changes, revision }) => {
                        for (put, entry) in changes {
                            metrics::counter!(CLUSTER_EVENTS_TOTAL).increment(1);
                            self.apply(put, &entry).await;
                            *last_revision = (*last_revision).max(entry.revision);
                        }
                        *last_revision = (*last_revision).max(revision);
                    }
                    Some(WatchItem::Compacted) => {
                        info!(
                            revision = *last_revision,
                            "fleet changes since the last one seen were compacted; reading the \
                             whole fleet state again"
                        );
                        let resynced = async {
                            let revision = self.resync().await?;
                            *last_revision = revision;
                            engine.watch(&inner.prefix, revision + 1).await
                        };
                        match resynced.await {
                            Ok(next) => watch = next,
                            Err(error) => return (true, Err(error)),
                        }
                    }
                    Some(WatchItem::Closed(reason)) => {
                        // Its member went away: the watch goes on on another member from
                        // the revision reached; the instance stays connected meanwhile.
                        info!(%reason, revision = *last_revision, "fleet watch closed; opening it again");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        match engine.watch(&inner.prefix, *last_revision + 1).await {
                            Ok(next) => watch = next,
                            Err(error) => return (true, Err(error)),
                        }
                    }
                    None => return (true, Err(ClusterError::Unavailable("watch ended".into()))),
                },
                error = &mut keep_alive => return (true, Err(error)),
                () = inner.reregister.notified() => {
                    if let Err(error) = self.register(lease).await {
                        return (true, Err(error));
                    }
                }
                () = token.cancelled() => return (true, Ok(())),
            }
        }
    }

    async fn register(&self, lease: i64) -> Result<(), ClusterError> {
        let inner = &self.0;
        let key = format!("{}instance/{}", inner.prefix, segment(&inner.instance));
        let mut me = (**inner.me.load()).clone();
        me.heartbeat = unix(SystemTime::now());
        let value = serde_json::to_vec(&me).unwrap_or_default();
        inner.engine.put(&key, value, Some(lease)).await
    }

    /// Counts a value that counts for nothing, and warns about its key once.
    fn ignore(&self, key: &str, reason: &'static str, why: &str) {
        metrics::counter!(CLUSTER_IGNORED_VALUES_TOTAL, "reason" => reason).increment(1);
        let first = self.0.mirror.lock().is_ok_and(|mut mirror| {
            mirror.warned.len() < WARNED_KEYS && mirror.warned.insert(format!("{reason} {key}"))
        });
        if first {
            warn!(key, reason, why, "a value in the fleet store is ignored");
        }
    }

    /// A drain value from the store, validated as the admin API validates a drain: the
    /// stored format, and an end no further than `max_drain` from now.
    fn valid_drain(&self, entry: &Entry) -> Option<DrainValue> {
        let value = match serde_json::from_slice::<DrainValue>(&entry.value) {
            Ok(value) => value,
            Err(error) => {
                self.ignore(&entry.key, "invalid", &format!("not a drain: {error}"));
                return None;
            }
        };
        let latest = unix(SystemTime::now()).saturating_add(self.0.max_drain.as_secs() + 60);
        if value.until.is_some_and(|until| until > latest) {
            self.ignore(
                &entry.key,
                "invalid",
                "the drain ends later than [admin] max_drain allows",
            );
            return None;
        }
        Some(value)
    }

    /// A vote value from the store, or None (counted) when it is not one.
    fn valid_vote(&self, entry: &Entry) -> Option<crate::health::votes::Vote> {
        match serde_json::from_slice(&entry.value) {
            Ok(vote) => Some(vote),
            Err(error) => {
                self.ignore(&entry.key, "invalid", &format!("not a vote: {error}"));
                None
            }
        }
    }

    /// Reads the whole fleet state and makes this instance match it; returns the revision.
    /// What this instance holds afterwards is a function of the store's contents alone
    /// (the same keys give a running and a fresh instance the same state).
    async fn resync(&self) -> Result<i64, ClusterError> {
        let inner = &self.0;
        let (entries, revision) = inner.engine.read_all(&inner.prefix).await?;
        metrics::counter!(CLUSTER_RESYNCS_TOTAL).increment(1);
        let mut drains = BTreeMap::new();
        let mut instances = BTreeMap::new();
        let mut members = std::collections::HashMap::new();
        let mut votes: std::collections::HashMap<
            EndpointKey,
            BTreeMap<String, (crate::health::votes::Vote, i64)>,
        > = std::collections::HashMap::new();
        for entry in &entries {
            match self.parse(&entry.key) {
                Some(Key::Drain(key)) => {
                    if let Some(value) = self.valid_drain(entry) {
                        drains.insert(key, value);
                    }
                }
                Some(Key::Load(key)) => self.apply_load(&key, entry).await,
                Some(Key::Vote(key, voter)) if voter != inner.instance => {
                    if let Some(vote) = self.valid_vote(entry) {
                        votes
                            .entry(key)
                            .or_default()
                            .insert(voter, (vote, entry.lease));
                    }
                }
                Some(Key::Vote(..)) => {}
                Some(Key::Instance(id)) => {
                    match serde_json::from_slice::<InstanceInfo>(&entry.value) {
                        Ok(info) => {
                            members.insert(id.clone(), entry.lease);
                            instances.insert(
                                id,
                                Seen {
                                    info,
                                    seen: SystemTime::now(),
                                },
                            );
                        }
                        Err(error) => self.ignore(
                            &entry.key,
                            "invalid",
                            &format!("not an instance record: {error}"),
                        ),
                    }
                }
                None => self.ignore(&entry.key, "unknown_key", "no such kind of fleet key"),
            }
        }
        let counted = {
            let Ok(mut mirror) = inner.mirror.lock() else {
                return Err(ClusterError::Unavailable(
                    "fleet state lock poisoned".into(),
                ));
            };
            mirror.votes = votes;
            mirror.members = members;
            let ignored: Vec<String> = mirror
                .votes
                .iter()
                .flat_map(|(key, voters)| {
                    voters
                        .iter()
                        .filter(|(voter, (_, lease))| !mirror.counts(voter, *lease))
                        .map(move |(voter, _)| {
                            format!(
                                "{}vote/{}/{}/{}",
                                inner.prefix,
                                segment(&key.pool),
                                segment(&key.member),
                                segment(voter)
                            )
                        })
                })
                .collect();
            let counted = mirror.counted();
            drop(mirror);
            for key in ignored {
                self.ignore(
                    &key,
                    "not_a_member",
                    "the voter holds no live fleet membership",
                );
            }
            counted
        };
        metrics::gauge!(CLUSTER_INSTANCES).set(instances.len() as f64);
        inner.instances.store(Arc::new(instances));
        self.update_drift();
        inner.health.replace_votes(counted).await;
        // Drains: the store is the truth; what this instance has differently follows it.
        for status in inner.health.status().await {
            let wanted = drains.get(&status.key);
            let until = wanted.and_then(|d| d.until);
            let has = status.drain.map(|d| d.until.map(unix));
            match (wanted, has) {
                (Some(_), Some(current)) if current == until => {}
                (Some(_), _) => {
                    let until = until.map(crate::time::from_unix_clamped);
                    let _ = inner.health.drain(status.key.clone(), until).await;
                }
                (None, Some(_)) => {
                    let _ = inner.health.undrain(status.key.clone()).await;
                }
                (None, None) => {}
            }
        }
        Ok(revision)
    }

    async fn apply(&self, put: bool, entry: &Entry) {
        let inner = &self.0;
        match self.parse(&entry.key) {
            Some(Key::Drain(key)) => {
                let current = inner
                    .health
                    .drain_of(key.clone())
                    .await
                    .map(|drain| drain.map(|until| until.map(unix)));
                let Some(current) = current else {
                    return; // not an endpoint of this instance's config
                };
                // An invalid value counts as no drain, as it does when read at start.
                match put.then(|| self.valid_drain(entry)).flatten() {
                    Some(value) if current != Some(value.until) => {
                        let until = value.until.map(crate::time::from_unix_clamped);
                        let _ = inner.health.drain(key, until).await;
                    }
                    Some(_) => {}
                    None if current.is_some() => {
                        let _ = inner.health.undrain(key).await;
                    }
                    None => {}
                }
            }
            Some(Key::Load(key)) if put => self.apply_load(&key, entry).await,
            Some(Key::Vote(key, voter)) if voter != inner.instance => {
                let vote = put.then(|| self.valid_vote(entry)).flatten();
                let (now_counts, counted_before) = {
                    let Ok(mut mirror) = inner.mirror.lock() else {
                        return;
                    };
                    let before = mirror
                        .votes
                        .get(&key)
                        .and_then(|voters| voters.get(&voter))
                        .is_some_and(|(_, lease)| mirror.counts(&voter, *lease));
                    let voters = mirror.votes.entry(key.clone()).or_default();
                    match &vote {
                        Some(vote) => {
                            voters.insert(voter.clone(), (vote.clone(), entry.lease));
                        }
                        None => {
                            voters.remove(&voter);
                        }
                    }
                    let counts = vote.is_some() && mirror.counts(&voter, entry.lease);
                    (counts, before)
                };
                if vote.is_some() && !now_counts {
                    self.ignore(
                        &entry.key,
                        "not_a_member",
                        "the voter holds no live fleet membership",
                    );
                }
                if now_counts {
                    inner.health.set_vote(key, voter, vote).await;
                } else if counted_before {
                    inner.health.set_vote(key, voter, None).await;
                }
            }
            Some(Key::Vote(..)) => {}
            Some(Key::Load(_)) => {}
            None => {
                if put {
                    self.ignore(&entry.key, "unknown_key", "no such kind of fleet key");
                }
            }
            Some(Key::Instance(id)) => {
                let mut instances = (**inner.instances.load()).clone();
                let info = put
                    .then(
                        || match serde_json::from_slice::<InstanceInfo>(&entry.value) {
                            Ok(info) => Some(info),
                            Err(error) => {
                                self.ignore(
                                    &entry.key,
                                    "invalid",
                                    &format!("not an instance record: {error}"),
                                );
                                None
                            }
                        },
                    )
                    .flatten();
                match info {
                    Some(info) => {
                        if !instances.contains_key(&id) {
                            info!(instance = %id, "fleet member joined");
                            self.emit("fleet", json!({ "instance": id, "change": "joined" }));
                        }
                        instances.insert(
                            id.clone(),
                            Seen {
                                info,
                                seen: SystemTime::now(),
                            },
                        );
                    }
                    None => {
                        if instances.remove(&id).is_some() {
                            info!(instance = %id, "fleet member left (or its lease expired)");
                            self.emit("fleet", json!({ "instance": id, "change": "left" }));
                        }
                    }
                }
                // Membership decides which votes count: recount them when it changed (a
                // heartbeat under the same lease changes nothing).
                let counted = inner.mirror.lock().ok().and_then(|mut mirror| {
                    let before = mirror.members.get(&id).copied();
                    if instances.contains_key(&id) {
                        mirror.members.insert(id.clone(), entry.lease);
                    } else {
                        mirror.members.remove(&id);
                    }
                    (before != mirror.members.get(&id).copied()).then(|| mirror.counted())
                });
                metrics::gauge!(CLUSTER_INSTANCES).set(instances.len() as f64);
                inner.instances.store(Arc::new(instances));
                self.update_drift();
                if let Some(counted) = counted {
                    inner.health.replace_votes(counted).await;
                }
            }
        }
    }

    /// A load report from another instance: applied with its own time, so that a report
    /// older than the pool's `stale_after` counts for nothing.
    async fn apply_load(&self, key: &EndpointKey, entry: &Entry) {
        let report = match serde_json::from_slice::<LoadValue>(&entry.value) {
            Ok(report) if report.capacity > 0 => report,
            Ok(_) => {
                self.ignore(&entry.key, "invalid", "a load report with capacity 0");
                return;
            }
            Err(error) => {
                self.ignore(
                    &entry.key,
                    "invalid",
                    &format!("not a load report: {error}"),
                );
                return;
            }
        };
        if report.by == self.0.instance {
            return;
        }
        // A time from elsewhere: never past now, and no overflow on nonsense.
        let at = SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_millis(report.at_ms))
            .unwrap_or_else(SystemTime::now)
            .min(SystemTime::now());
        let _ = self
            .0
            .health
            .report_load(key.clone(), report.sessions, Some(report.capacity), at)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip() {
        for text in ["plain", "a/b", "100%", "%2F"] {
            assert_eq!(unsegment(&segment(text)), text);
            assert!(!segment(text).contains('/'));
        }
    }
}
