//! Drains and load reports shared through the store: written with retries until a deadline, validated when read.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::values::{DrainValue, LoadValue};
use super::{ClusterError, DRAIN_DEADLINE, Entry, Fleet, REPUBLISH_EVERY, VOTE_BATCH};
use crate::routing::EndpointKey;
use crate::time::unix;

impl Fleet {
    /// Drains an endpoint fleet-wide (`until`: when it ends by itself). Refused while the
    /// store is unreachable: a drain is never applied on one instance only.
    pub async fn drain(
        &self,
        key: &EndpointKey,
        until: Option<SystemTime>,
        note: &crate::health::DrainNote,
    ) -> Result<(), ClusterError> {
        let value = DrainValue {
            since: unix(SystemTime::now()),
            until: until.map(unix),
            by: self.0.instance.clone(),
            caller: note.by.clone(),
            reason: note.reason.clone(),
            from: None,
        };
        self.write_drain(key, Some(value), until).await
    }

    /// Drains (or, with None, undrains) several endpoints fleet-wide in one write (one
    /// store revision): a site, a region, a pool, a maintenance window (`from` later
    /// than now: every instance begins it then). Refused while the store is unreachable.
    pub async fn drain_many(
        &self,
        keys: &[EndpointKey],
        planned: Option<&crate::health::Planned>,
    ) -> Result<(), ClusterError> {
        let inner = &self.0;
        self.retrying("drains", || async {
            let Some(planned) = planned else {
                let paths = keys.iter().map(|key| self.key_of("drain", key)).collect();
                return inner.engine.delete_many(paths).await;
            };
            let value = DrainValue {
                since: unix(SystemTime::now()),
                until: planned.until.map(unix),
                by: inner.instance.clone(),
                caller: planned.note.by.clone(),
                reason: planned.note.reason.clone(),
                from: planned.from.map(unix),
            };
            let bytes = serde_json::to_vec(&value).unwrap_or_default();
            // Drains with an end live on a lease that ends with them.
            let lease = match planned
                .until
                .and_then(|u| u.duration_since(SystemTime::now()).ok())
            {
                Some(left) => Some(inner.engine.grant(left + Duration::from_secs(1)).await?),
                None => None,
            };
            let entries = keys
                .iter()
                .map(|key| (self.key_of("drain", key), bytes.clone()))
                .collect();
            inner.engine.put_many(entries, lease).await
        })
        .await
    }

    /// Ends a drain fleet-wide.
    pub async fn undrain(&self, key: &EndpointKey) -> Result<(), ClusterError> {
        self.write_drain(key, None, None).await
    }

    pub(super) async fn write_drain(
        &self,
        key: &EndpointKey,
        value: Option<DrainValue>,
        until: Option<SystemTime>,
    ) -> Result<(), ClusterError> {
        self.retrying("drain", || self.try_write_drain(key, value.clone(), until))
            .await
    }

    /// Runs `attempt` until it is written: a leader election (a member lost or frozen)
    /// leaves the quorum without a leader, and this instance's session may be moving to
    /// another member, for a moment, so an unavailable or unconnected store is tried again
    /// every 100 ms until [`DRAIN_DEADLINE`] passes. For an operator's change
    /// (drains, members), which is refused rather than applied on one instance only.
    pub(super) async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        mut attempt: F,
    ) -> Result<T, ClusterError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClusterError>>,
    {
        let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
        loop {
            // Not connected (the session is moving to another member): waited for too.
            let result = if self.is_connected() {
                attempt().await
            } else {
                Err(ClusterError::Unavailable(format!(
                    "not connected; {what} changes are shared by the fleet, so none is made \
                     until the store is back"
                )))
            };
            match result {
                Err(ClusterError::Unavailable(why)) if tokio::time::Instant::now() < deadline => {
                    debug!(%why, what, "not written yet; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                result => return result,
            }
        }
    }

    pub(super) async fn try_write_drain(
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

    /// A drain value from the store, validated as the admin API validates a drain: the
    /// stored format, and an end no further than `max_drain` from now.
    pub(super) fn valid_drain(&self, entry: &Entry) -> Option<DrainValue> {
        let value = match serde_json::from_slice::<DrainValue>(&entry.value) {
            Ok(value) => value,
            Err(error) => {
                self.ignore(&entry.key, "invalid", &format!("not a drain: {error}"));
                return None;
            }
        };
        let latest = unix(SystemTime::now()).saturating_add(self.0.max_drain.as_secs() + 60);
        let long = |text: &Option<String>| text.as_ref().is_some_and(|t| t.len() > 300);
        if long(&value.caller) || long(&value.reason) {
            self.ignore(
                &entry.key,
                "invalid",
                "a drain's caller or reason is too long",
            );
            return None;
        }
        if value.until.is_some_and(|until| until > latest)
            || value.from.is_some_and(|from| from > latest)
        {
            self.ignore(
                &entry.key,
                "invalid",
                "the drain ends later than [admin] max_drain allows",
            );
            return None;
        }
        Some(value)
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
            self.unshared();
        }
    }

    /// Shares the load reports made while the store was unreachable (the newest per
    /// endpoint, with the time it was made, so `stale_after` still holds).
    pub(super) async fn flush_pending_loads(&self) {
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
                self.unshared();
            }
        }
    }

    /// Publishes loads read by probes: when they change, and at least every
    /// [`REPUBLISH_EVERY`] so that other instances do not take them for stale.
    pub(super) async fn share_probe_loads(&self, token: CancellationToken) {
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

    /// A load report from another instance: applied with its own time, so that a report
    /// older than the pool's `stale_after` counts for nothing.
    pub(super) async fn apply_load(&self, key: &EndpointKey, entry: &Entry) {
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

    /// A drain key changed in the store: the store is the truth; an invalid value counts
    /// as no drain, as it does when read at start.
    pub(super) async fn apply_drain(&self, put: bool, key: EndpointKey, entry: &Entry) {
        let inner = &self.0;
        let current = inner
            .health
            .drain_of(key.clone())
            .await
            .map(|drain| drain.map(|until| until.map(unix)));
        let Some(current) = current else {
            return; // not an endpoint of this instance's config
        };
        // An invalid value counts as no drain, as it does when read at start.
        let value = put.then(|| self.valid_drain(entry)).flatten();
        if let Some(value) = value.as_ref().filter(|v| v.is_window()) {
            let _ = inner
                .health
                .follow_drain_set(vec![key], Some(value.planned()))
                .await;
            return;
        }
        if value.is_none() && current.is_none() {
            // Not drained here; a window it may have had is gone with the value.
            let _ = inner.health.follow_drain_set(vec![key], None).await;
            return;
        }
        match value {
            Some(value) if current != Some(value.until) => {
                let until = value.until.map(crate::time::from_unix_clamped);
                let _ = inner.health.drain(key, until, value.note()).await;
            }
            Some(_) => {}
            None if current.is_some() => {
                let _ = inner.health.undrain(key).await;
            }
            None => {}
        }
    }
}
