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
//! | `votes/<pool>/<id>` | the instance's verdicts on the pool's endpoints ([`votes::PoolVotes`]) | the instance's lease |
//! | `dnssec/<zone>` | the zone's key timeline ([`keys`]): tags, public keys, times | durable |
//!
//! A supervision task connects, registers the instance under a lease kept alive at a
//! third of its TTL, reads the prefix once and then watches it from the next revision. On
//! a disconnect it backs off (0.1 s doubling to 1 s, with jitter) and resumes the watch
//! from the last revision it applied; when that revision has been compacted it reads the
//! whole prefix again. While the store is unreachable, answers use the last known state
//! (also kept in the state file), and drains are refused rather than applied on one
//! instance only.

mod digest;
mod drains;
pub mod keys;
mod members;
mod membership;
mod values;
pub mod votes;

pub mod etcd;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use self::values::InstanceInfo;
use self::values::{DrainValue, LoadValue, Mirror, Seen, segment, unsegment};
use crate::config::ClusterSettings;
use crate::health::{HealthHandle, VoteChanges};
use crate::routing::EndpointKey;
use crate::time::unix;

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

/// Keys written in one request (etcd allows 128 operations): pools' verdict documents,
/// load reports.
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
    /// Deletes many keys in one request (one store revision).
    async fn delete_many(&self, keys: Vec<String>) -> Result<(), ClusterError>;
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
    /// Shared entries: a heartbeat (every half lease, from every instance) replaces one
    /// entry and copies the map's pointers, not every instance's record.
    instances: ArcSwap<BTreeMap<String, Arc<Seen>>>,
    reregister: Notify,
    /// Membership and drift changes are reported here, once set.
    bus: std::sync::OnceLock<crate::events::Events>,
    /// Load reports made while the store was unreachable, newest per endpoint.
    pending_loads: std::sync::Mutex<std::collections::HashMap<EndpointKey, LoadValue>>,
    /// Longest drain a value from the store may ask for (`[admin] max_drain`).
    max_drain: Duration,
    /// A write of verdicts or loads failed, or this instance's votes in the store are not
    /// its own: all are written again (with backoff) until one works.
    unshared: AtomicBool,
    /// Wakes the task that writes verdicts when `unshared` is set elsewhere.
    unshared_set: Notify,
    /// Every other voter's vote as stored, and the fleet's members with their leases:
    /// which votes count is computed from both.
    mirror: std::sync::Mutex<Mirror>,
    /// This instance's verdicts as last written, by pool (held while they are written, so
    /// that documents are written in the order they were made).
    published: tokio::sync::Mutex<votes::Published>,
    /// The fleet's DNSSEC key timelines, and what this instance last agreed on.
    keysets: std::sync::Mutex<keys::Keysets>,
    /// A stored key timeline changed.
    keysets_changed: Notify,
    /// One key comparison at a time.
    keys_turn: tokio::sync::Mutex<()>,
    /// Members added at run time, as the store holds them.
    runtime: std::sync::Mutex<BTreeMap<EndpointKey, crate::runtime::RuntimeMember>>,
    /// Where the fleet's run-time members go when they change (the reloader's follower).
    runtime_sink:
        std::sync::OnceLock<tokio::sync::mpsc::Sender<Vec<crate::runtime::RuntimeMember>>>,
}

/// What a key under the prefix is.
enum Key {
    Drain(EndpointKey),
    Member(EndpointKey),
    Load(EndpointKey),
    Instance(String),
    /// A voter's verdicts on a pool: pool, voter.
    Votes(String, String),
    /// A vote in the per-endpoint format of an older gto (`vote/<pool>/<member>/<id>`).
    LegacyVote,
    Keyset,
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
            unshared_set: Notify::new(),
            mirror: std::sync::Mutex::default(),
            published: tokio::sync::Mutex::default(),
            keysets: std::sync::Mutex::default(),
            keysets_changed: Notify::new(),
            keys_turn: tokio::sync::Mutex::new(()),
            runtime: std::sync::Mutex::default(),
            runtime_sink: std::sync::OnceLock::new(),
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

    /// Reports members joining and leaving, and config drift, to `events`.
    pub fn report_to(&self, events: crate::events::Events) {
        let _ = self.0.bus.set(events);
    }

    fn emit(&self, kind: &'static str, data: serde_json::Value) {
        if let Some(bus) = self.0.bus.get() {
            bus.emit(kind, data);
        }
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
            ["member", pool, member] => Some(Key::Member(endpoint(pool, member))),
            ["load", pool, member] => Some(Key::Load(endpoint(pool, member))),
            ["instance", id] => Some(Key::Instance(unsegment(id))),
            ["votes", pool, voter] => Some(Key::Votes(unsegment(pool), unsegment(voter))),
            ["vote", _, _, _] => Some(Key::LegacyVote),
            ["dnssec", _zone] => Some(Key::Keyset),
            _ => None,
        }
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

    /// A vote in the per-endpoint format of a gto before per-pool documents: counted as
    /// an unknown key, warned about once (not once per endpoint).
    fn ignore_legacy_vote(&self) {
        self.ignore(
            &format!("{}vote/", self.0.prefix),
            "unknown_key",
            "votes of an older gto (one key per endpoint): not counted; upgrade every instance",
        );
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
        let mut keysets = Vec::new();
        let mut runtime = BTreeMap::new();
        let mut votes = std::collections::HashMap::new();
        for entry in &entries {
            match self.parse(&entry.key) {
                Some(Key::Drain(key)) => {
                    if let Some(value) = self.valid_drain(entry) {
                        drains.insert(key, value);
                    }
                }
                Some(Key::Load(key)) => self.apply_load(&key, entry).await,
                Some(Key::Member(key)) => {
                    if let Some(member) = self.valid_member(&key, entry) {
                        runtime.insert(key, member);
                    }
                }
                Some(Key::Votes(pool, voter)) if voter != inner.instance => {
                    if let Some(stored) = self.valid_votes(entry) {
                        votes.insert((pool, voter), stored);
                    }
                }
                Some(Key::Votes(..)) => {}
                Some(Key::LegacyVote) => self.ignore_legacy_vote(),
                Some(Key::Keyset) => keysets.push(entry),
                Some(Key::Instance(id)) => {
                    match serde_json::from_slice::<InstanceInfo>(&entry.value) {
                        Ok(info) => {
                            members.insert(id.clone(), entry.lease);
                            instances.insert(
                                id,
                                Arc::new(Seen {
                                    info,
                                    seen: SystemTime::now(),
                                }),
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
        self.replace_keysets(&keysets);
        let counted = self.mirror_all(votes, members)?;
        metrics::gauge!(CLUSTER_INSTANCES).set(instances.len() as f64);
        inner.instances.store(Arc::new(instances));
        self.update_drift();
        inner.health.replace_votes(counted).await;
        self.follow_drains(&drains).await;
        self.replace_members(runtime).await;
        Ok(revision)
    }

    /// Replaces the mirror of votes and members with what the store holds, counts the
    /// ignored votes of voters without a live membership, and returns the votes that count.
    fn mirror_all(
        &self,
        votes: std::collections::HashMap<(String, String), votes::StoredVotes>,
        members: std::collections::HashMap<String, i64>,
    ) -> Result<
        std::collections::HashMap<EndpointKey, BTreeMap<String, crate::health::votes::Vote>>,
        ClusterError,
    > {
        let inner = &self.0;
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
            .filter(|((_, voter), stored)| !mirror.counts(voter, stored.lease))
            .map(|((pool, voter), _)| self.voter_key(pool, voter))
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
        Ok(counted)
    }

    /// Drains: the store is the truth; what this instance has differently follows it.
    async fn follow_drains(&self, drains: &BTreeMap<EndpointKey, DrainValue>) {
        let inner = &self.0;
        for status in inner.health.status().await {
            let wanted = drains.get(&status.key);
            let until = wanted.and_then(|d| d.until);
            let has = status.drain.map(|d| d.until.map(unix));
            match (wanted, has) {
                (Some(_), Some(current)) if current == until => {}
                (Some(_), _) => {
                    if let Some(value) = wanted.filter(|v| v.is_window()) {
                        if status.window.as_ref() != Some(&value.window()) {
                            let _ = inner
                                .health
                                .follow_drain_set(vec![status.key.clone()], Some(value.planned()))
                                .await;
                        }
                        continue;
                    }
                    let until = until.map(crate::time::from_unix_clamped);
                    let note = wanted.map(DrainValue::note).unwrap_or_default();
                    let _ = inner.health.drain(status.key.clone(), until, note).await;
                }
                (None, Some(_)) => {
                    let _ = inner.health.undrain(status.key.clone()).await;
                }
                (None, None) if status.window.is_some() => {
                    let _ = inner
                        .health
                        .follow_drain_set(vec![status.key.clone()], None)
                        .await;
                }
                (None, None) => {}
            }
        }
    }

    /// Applies one change read from the store. Other voters' documents add their changed
    /// votes to `votes`; anything else first hands the monitor what `votes` gathered, so
    /// that it sees every change in the order the store made them.
    async fn apply(&self, put: bool, entry: &Entry, votes: &mut VoteChanges) {
        let inner = &self.0;
        let key = self.parse(&entry.key);
        if let Some(Key::Votes(pool, voter)) = &key
            && *voter != inner.instance
        {
            self.apply_votes(put, pool.clone(), voter.clone(), entry, votes);
            return;
        }
        inner.health.set_votes(std::mem::take(votes)).await;
        match key {
            Some(Key::Drain(key)) => self.apply_drain(put, key, entry).await,
            Some(Key::Load(key)) if put => self.apply_load(&key, entry).await,
            Some(Key::Votes(..)) => {
                // This instance's own: repaired when someone else wrote or deleted it.
                self.guard_own_votes(put, entry);
            }
            Some(Key::LegacyVote) => {
                if put {
                    self.ignore_legacy_vote();
                }
            }
            Some(Key::Load(_)) => {}
            Some(Key::Member(key)) => self.apply_member(put, key, entry).await,
            Some(Key::Keyset) => self.apply_keyset(
                &entry.key,
                put.then_some((entry.value.as_slice(), entry.revision)),
            ),
            None => {
                if put {
                    self.ignore(&entry.key, "unknown_key", "no such kind of fleet key");
                }
            }
            Some(Key::Instance(id)) => self.apply_instance(put, id, entry).await,
        }
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
