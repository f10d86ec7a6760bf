//! Membership: this instance's record under its lease (registered, kept alive, its heartbeat), the session with etcd that holds it, and the fleet's status.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::values::{InstanceInfo, Seen, differing_sections, segment};
use super::{
    CLUSTER_CONNECTED, CLUSTER_EVENTS_TOTAL, CLUSTER_INSTANCES, ClusterError, Entry, Fleet,
    MAX_BACKOFF, MIN_BACKOFF, WatchItem,
};
use crate::health::VoteChanges;
use crate::time::{rfc3339, unix};

/// Watch responses already delivered are read together (see [`Fleet::session`]) until
/// their changed votes number this many: the monitor takes them in about 20 ms (a longer
/// pause of the monitor delays this instance's own verdicts, whose writes are gathered
/// until none came for a while), and the heartbeat and the lease's keep-alive run between
/// batches.
const WATCH_BATCH_VOTES: usize = 20_000;

/// The next watch item: one set aside by the batch before, or the next delivered.
async fn next_item(
    pending: &mut Option<WatchItem>,
    watch: &mut tokio::sync::mpsc::Receiver<WatchItem>,
) -> Option<WatchItem> {
    match pending.take() {
        Some(item) => Some(item),
        None => watch.recv().await,
    }
}

impl Fleet {
    pub(super) async fn supervise(&self, token: CancellationToken) {
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
    pub(super) async fn session(
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
        // A watch item read behind a batch of changes that is not one.
        let mut pending = None;
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    if let Err(error) = self.register(lease).await {
                        warn!(%error, "fleet heartbeat not written; trying again at the next");
                    }
                }
                item = next_item(&mut pending, &mut watch) => match item {
                    Some(WatchItem::Changes { changes, revision }) => {
                        // Changes already delivered behind these are read with them (up to
                        // WATCH_BATCH_VOTES), so that the monitor takes the votes of
                        // several documents on an endpoint together.
                        let mut votes = VoteChanges::default();
                        let mut batch = Some((changes, revision));
                        while let Some((changes, revision)) = batch.take() {
                            for (put, entry) in changes {
                                metrics::counter!(CLUSTER_EVENTS_TOTAL).increment(1);
                                self.apply(put, &entry, &mut votes).await;
                                *last_revision = (*last_revision).max(entry.revision);
                            }
                            *last_revision = (*last_revision).max(revision);
                            if votes.len() < WATCH_BATCH_VOTES {
                                match watch.try_recv() {
                                    Ok(WatchItem::Changes { changes, revision }) => {
                                        batch = Some((changes, revision));
                                    }
                                    Ok(other) => pending = Some(other),
                                    Err(_) => {}
                                }
                            }
                        }
                        inner.health.set_votes(votes).await;
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

    pub(super) async fn register(&self, lease: i64) -> Result<(), ClusterError> {
        let inner = &self.0;
        let key = format!("{}instance/{}", inner.prefix, segment(&inner.instance));
        let mut me = (**inner.me.load()).clone();
        me.heartbeat = unix(SystemTime::now());
        let value = serde_json::to_vec(&me).unwrap_or_default();
        inner.engine.put(&key, value, Some(lease)).await
    }

    pub(super) async fn set_connected(&self, connected: bool, why: Option<&ClusterError>) {
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

    /// True while the store is reachable.
    pub fn is_connected(&self) -> bool {
        self.0.connected.load(Ordering::Relaxed)
    }

    /// The admin API's address, once bound, for the fleet view.
    pub fn set_admin(&self, addr: std::net::SocketAddr) {
        let mut me = (**self.0.me.load()).clone();
        me.admin = Some(addr.to_string());
        self.0.me.store(Arc::new(me));
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
                    "last_seen_seconds_ago": seen.seen.elapsed().unwrap_or_default().as_secs(),
                    "alive": seen.seen.elapsed().unwrap_or_default() <= inner.lease_ttl,
                    "dnssec_keysets": seen.info.keysets,
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

    /// An instance record changed in the store: joined, refreshed (a heartbeat) or left;
    /// membership decides which votes count.
    pub(super) async fn apply_instance(&self, put: bool, id: String, entry: &Entry) {
        let inner = &self.0;
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
                    Arc::new(Seen {
                        info,
                        seen: SystemTime::now(),
                    }),
                );
            }
            None => {
                if instances.remove(&id).is_some() {
                    info!(instance = %id, "fleet member left (or its lease expired)");
                    self.emit("fleet", json!({ "instance": id, "change": "left" }));
                }
            }
        }
        // Membership decides which votes count: this member's are recounted when it
        // changed (a heartbeat under the same lease changes nothing), nobody else's.
        let recounted = inner.mirror.lock().ok().and_then(|mut mirror| {
            let before = mirror.members.get(&id).copied();
            if instances.contains_key(&id) {
                mirror.members.insert(id.clone(), entry.lease);
            } else {
                mirror.members.remove(&id);
            }
            (before != mirror.members.get(&id).copied()).then(|| mirror.recount(&id, before))
        });
        metrics::gauge!(CLUSTER_INSTANCES).set(instances.len() as f64);
        inner.instances.store(Arc::new(instances));
        self.update_drift();
        if let Some(changes) = recounted {
            let mut votes = VoteChanges::default();
            votes.push(id, changes);
            inner.health.set_votes(votes).await;
        }
    }
}
