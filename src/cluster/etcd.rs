//! The etcd v3 engine behind [`super::Engine`], on the `etcd-client` crate.
//!
//! One client per member (each a lazily connected gRPC channel), so that a dead or frozen
//! member costs one attempt, not the call: every call goes to the member that last
//! answered and, when that attempt fails or takes longer than `ATTEMPT_TIMEOUT` (0.7 s), to the
//! next member, until one answers or `CALL_TIMEOUT` (2 s) has passed. As etcd's own Go
//! client does (its balancer retries an unavailable endpoint's requests on another),
//! a call fails only when no member with a quorum behind it answers in time; requests
//! carry `hasleader` (`require_leader`), so a member cut off from the quorum refuses at
//! once rather than hanging. Each member's last outcome is kept for status and
//! `gto_cluster_member_up{endpoint}`. HTTP/2 keep-alive pings notice a silent
//! connection. Watches are read on a task of their own and handed over as
//! [`super::WatchItem`]s; a watch whose start revision was compacted away ends with
//! [`super::WatchItem::Compacted`]; one whose member went away ends with
//! [`super::WatchItem::Closed`] and is opened again on another member from the revision
//! reached. A lease's keep-alive moves to another member the same way.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, Event, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::{Mutex, mpsc};

use super::{ClusterError, Entry, WatchItem};
use crate::config::ClusterSettings;

/// How long one etcd call may take, over every member it tries.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one attempt on one member may take before the next member is tried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(700);
/// A watch that has delivered nothing for this long asks its member for progress...
const WATCH_PROBE: Duration = Duration::from_millis(200);
/// ...and one whose member has not answered that for this long is given up (a frozen
/// member), to be opened again on another: a change reaches this instance within about
/// `WATCH_PROBE + WATCH_SILENCE` even then.
const WATCH_SILENCE: Duration = Duration::from_millis(400);

/// Watch responses read ahead of the fleet's loop. A reader that falls behind (a mass
/// outage: every voter's documents, read by every instance) leaves the backlog in the
/// store's watch rather than decoded in memory: with 64, each instance held up to 64
/// responses of 100 documents, and the allocator asked the system for fresh pages for
/// them in every burst.
const WATCH_READ_AHEAD: usize = 8;

/// `gto_cluster_member_up{endpoint}`: 1 when the member answered the last call tried on
/// it, 0 when that call failed.
pub const CLUSTER_MEMBER_UP: &str = "gto_cluster_member_up";

/// One member of the etcd cluster.
struct Member {
    endpoint: String,
    client: Mutex<Option<Client>>,
    up: AtomicBool,
}

/// An etcd cluster, reached through its members.
pub struct Etcd {
    settings: ClusterSettings,
    members: Vec<Member>,
    /// The member that answered last: calls try it first.
    preferred: std::sync::Arc<AtomicUsize>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.settings.endpoints)
            .finish_non_exhaustive()
    }
}

fn failed(error: etcd_client::Error) -> ClusterError {
    ClusterError::Unavailable(plain(&error))
}

/// An etcd client error in plain words: gRPC's status as its code's meaning and message
/// (not its metadata), a transport error with its causes.
fn plain(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            let code = status
                .code()
                .description()
                .trim_end_matches('.')
                .to_lowercase();
            if message.is_empty() {
                format!("etcd: {code}")
            } else {
                format!("etcd: {code}: {message}")
            }
        }
        etcd_client::Error::TransportError(transport) => {
            let mut text = String::from("cannot reach etcd");
            let mut source = std::error::Error::source(transport);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
        other => other.to_string(),
    }
}

impl Etcd {
    /// An engine for `settings`; nothing is connected until [`super::Engine::connect`].
    pub fn new(settings: ClusterSettings) -> Self {
        let members = settings
            .endpoints
            .iter()
            .map(|endpoint| {
                metrics::gauge!(CLUSTER_MEMBER_UP, "endpoint" => endpoint.clone()).set(0.0);
                Member {
                    endpoint: endpoint.clone(),
                    client: Mutex::new(None),
                    up: AtomicBool::new(false),
                }
            })
            .collect();
        Self {
            settings,
            members,
            preferred: std::sync::Arc::new(AtomicUsize::new(0)),
        }
    }

    fn options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(ATTEMPT_TIMEOUT)
            .with_timeout(ATTEMPT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some((user, password)) = &self.settings.auth {
            options = options.with_user(user.clone(), password.expose().to_string());
        }
        if let Some(tls) = &self.settings.tls {
            let mut config = TlsOptions::new();
            if let Some(ca) = &tls.ca {
                config = config.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key.expose()));
            }
            options = options.with_tls(config);
        }
        options
    }

    /// The client of member `index`, connected (lazily) if it was not.
    async fn client_of(&self, index: usize) -> Result<Client, ClusterError> {
        let member = self
            .members
            .get(index)
            .ok_or_else(|| ClusterError::Unavailable("no etcd endpoint".into()))?;
        let mut slot = member.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let connecting = Client::connect([member.endpoint.as_str()], Some(self.options()));
        let client = tokio::time::timeout(ATTEMPT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                ClusterError::Unavailable(format!("{}: connecting timed out", member.endpoint))
            })?
            .map_err(failed)?;
        *slot = Some(client.clone());
        Ok(client)
    }

    fn mark(&self, index: usize, up: bool) {
        if let Some(member) = self.members.get(index) {
            member.up.store(up, Ordering::Relaxed);
            metrics::gauge!(CLUSTER_MEMBER_UP, "endpoint" => member.endpoint.clone()).set(if up {
                1.0
            } else {
                0.0
            });
            if up {
                self.preferred.store(index, Ordering::Relaxed);
            }
        }
    }

    /// Runs `call` on the preferred member, then on the others in turn, each attempt
    /// bounded by [`ATTEMPT_TIMEOUT`] and all of them by [`CALL_TIMEOUT`]: the first
    /// answer wins; the last error is returned when none answers.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, ClusterError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_indexed(call).await.map(|(_, value)| value)
    }

    /// [`Etcd::call`], also saying which member answered.
    async fn call_indexed<T, F, Fut>(&self, call: F) -> Result<(usize, T), ClusterError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let count = self.members.len().max(1);
        let first = self.preferred.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        let mut last = ClusterError::Unavailable("no etcd endpoint".into());
        // Two rounds: a member that just failed over may answer the second time.
        for attempt in 0..count * 2 {
            let index = (first + attempt) % count;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let result = tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), async {
                let client = self.client_of(index).await?;
                call(client).await.map_err(failed)
            })
            .await;
            match result {
                Ok(Ok(value)) => {
                    self.mark(index, true);
                    return Ok((index, value));
                }
                Ok(Err(error)) => last = error,
                Err(_) => {
                    last = ClusterError::Unavailable(format!(
                        "{}: no answer within {} ms",
                        self.members.get(index).map_or("?", |m| m.endpoint.as_str()),
                        ATTEMPT_TIMEOUT.as_millis()
                    ));
                }
            }
            self.mark(index, false);
        }
        Err(last)
    }
}

#[async_trait::async_trait]
impl super::Engine for Etcd {
    async fn connect(&self) -> Result<(), ClusterError> {
        // Some member with a quorum behind it answers (a linearizable read needs one), in
        // the fleet's own prefix (a user may be allowed nothing else).
        let prefix = format!("/gto/{}/", self.settings.name);
        let prefix = prefix.as_str();
        self.call(|mut client| async move { client.get(prefix, None).await })
            .await
            .map(|_| ())
    }

    async fn read_all(&self, prefix: &str) -> Result<(Vec<Entry>, i64), ClusterError> {
        let response = self
            .call(|mut client| async move {
                client
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
            })
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let entries = response
            .kvs()
            .iter()
            .map(|kv| Entry {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                revision: kv.mod_revision(),
                lease: kv.lease(),
            })
            .collect();
        Ok((entries, revision))
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, ClusterError> {
        let response = self
            .call(|mut client| async move { client.get(key, None).await })
            .await?;
        Ok(response.kvs().first().map(|kv| Entry {
            key: key.to_string(),
            value: kv.value().to_vec(),
            revision: kv.mod_revision(),
            lease: kv.lease(),
        }))
    }

    async fn watch(
        &self,
        prefix: &str,
        from: i64,
    ) -> Result<mpsc::Receiver<WatchItem>, ClusterError> {
        let (index, mut stream) = self
            .call_indexed(|mut client| async move {
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(from)
                    .with_progress_notify();
                client.watch(prefix, Some(options)).await
            })
            .await?;
        let (sender, receiver) = mpsc::channel(WATCH_READ_AHEAD);
        let preferred = self.preferred.clone();
        let count = self.members.len().max(1);
        let endpoint = self
            .members
            .get(index)
            .map(|m| m.endpoint.clone())
            .unwrap_or_default();
        tokio::spawn(async move {
            // When the progress asked for went unanswered since (a frozen member).
            let mut asked: Option<tokio::time::Instant> = None;
            loop {
                let message = match tokio::time::timeout(WATCH_PROBE, stream.message()).await {
                    Ok(message) => {
                        asked = None;
                        message
                    }
                    Err(_) => {
                        let silent = asked.is_some_and(|at| at.elapsed() >= WATCH_SILENCE);
                        if silent || (asked.is_none() && stream.request_progress().await.is_err()) {
                            // Calls go elsewhere first from now on; the session reopens the
                            // watch on another member.
                            let _ = preferred.compare_exchange(
                                index,
                                (index + 1) % count,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                            metrics::gauge!(CLUSTER_MEMBER_UP, "endpoint" => endpoint.clone())
                                .set(0.0);
                            let _ = sender
                                .send(WatchItem::Closed(format!(
                                    "{endpoint} did not answer the watch for {} ms",
                                    WATCH_SILENCE.as_millis()
                                )))
                                .await;
                            return;
                        }
                        asked.get_or_insert_with(tokio::time::Instant::now);
                        continue;
                    }
                };
                let item = match message {
                    Ok(Some(response)) if response.canceled() => {
                        if response.compact_revision() > 0 {
                            WatchItem::Compacted
                        } else {
                            WatchItem::Closed(format!(
                                "watch canceled: {}",
                                response.cancel_reason()
                            ))
                        }
                    }
                    Ok(Some(mut response)) => {
                        let revision = response.header().map_or(0, |h| h.revision());
                        // The events are moved out of the response, not copied: in a mass
                        // outage every instance reads every voter's documents a few times,
                        // and a copy of each was most of the fresh memory asked for.
                        let changes = std::mem::take(&mut response.0.events)
                            .into_iter()
                            .filter_map(|event| {
                                let mut event = Event(event);
                                let put = event.event_type() == EventType::Put;
                                let kv = event.0.kv.take()?;
                                let key = String::from_utf8(kv.key).unwrap_or_else(|e| {
                                    String::from_utf8_lossy(e.as_bytes()).into_owned()
                                });
                                let entry = Entry {
                                    key,
                                    value: kv.value,
                                    revision: kv.mod_revision,
                                    lease: kv.lease,
                                };
                                Some((put, entry))
                            })
                            .collect();
                        WatchItem::Changes { changes, revision }
                    }
                    Ok(None) => WatchItem::Closed("watch stream ended".into()),
                    Err(error) => WatchItem::Closed(plain(&error)),
                };
                let last = matches!(item, WatchItem::Compacted | WatchItem::Closed(_));
                if sender.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(receiver)
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, ClusterError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = self
            .call(|mut client| async move { client.lease_grant(seconds, None).await })
            .await?;
        Ok(lease.id())
    }

    async fn keep_alive(&self, lease: i64, ttl: Duration) -> ClusterError {
        // The lease lives while some member renews it: a keep-alive stream whose member
        // goes away is opened again on another, until the lease's TTL has passed without
        // a renewal.
        let mut renewed = tokio::time::Instant::now();
        loop {
            let opened = self
                .call_indexed(|mut client| async move { client.lease_keep_alive(lease).await })
                .await;
            let (index, (mut keeper, mut responses)) = match opened {
                Ok(pair) => pair,
                Err(error) => {
                    if renewed.elapsed() >= ttl {
                        return error;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(ATTEMPT_TIMEOUT, responses.message()).await {
                    Ok(Ok(Some(response))) if response.ttl() > 0 => {
                        renewed = tokio::time::Instant::now();
                    }
                    Ok(Ok(Some(_))) => {
                        return ClusterError::Unavailable("the lease expired".into());
                    }
                    Ok(Ok(None) | Err(_)) | Err(_) => break,
                }
                tokio::time::sleep(ttl / 4).await;
            }
            // That member stopped renewing: the next attempt starts elsewhere.
            self.mark(index, false);
            let _ = self.preferred.compare_exchange(
                index,
                (index + 1) % self.members.len().max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if renewed.elapsed() >= ttl {
                return ClusterError::Unavailable("lease keep-alive failed on every member".into());
            }
        }
    }

    async fn revoke(&self, lease: i64) {
        let _ = self
            .call(|mut client| async move { client.lease_revoke(lease).await })
            .await;
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> Result<(), ClusterError> {
        self.call(|mut client| {
            let value = value.clone();
            async move {
                let options = lease.map(|id| PutOptions::new().with_lease(id));
                client.put(key, value, options).await
            }
        })
        .await?;
        Ok(())
    }

    async fn put_many(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        lease: Option<i64>,
    ) -> Result<(), ClusterError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.call(|mut client| {
            let operations: Vec<TxnOp> = entries
                .iter()
                .map(|(key, value)| {
                    TxnOp::put(
                        key.as_str(),
                        value.clone(),
                        lease.map(|id| PutOptions::new().with_lease(id)),
                    )
                })
                .collect();
            async move { client.txn(Txn::new().and_then(operations)).await }
        })
        .await?;
        Ok(())
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<(), ClusterError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.call(|mut client| {
            let operations: Vec<TxnOp> = keys
                .iter()
                .map(|key| TxnOp::delete(key.as_str(), None))
                .collect();
            async move { client.txn(Txn::new().and_then(operations)).await }
        })
        .await?;
        Ok(())
    }

    async fn put_if(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        revision: i64,
        lease: Option<i64>,
    ) -> Result<bool, ClusterError> {
        let response = self
            .call(|mut client| {
                let operation = match &value {
                    Some(value) => TxnOp::put(
                        key,
                        value.clone(),
                        lease.map(|id| PutOptions::new().with_lease(id)),
                    ),
                    None => TxnOp::delete(key, None),
                };
                let txn = Txn::new()
                    .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
                    .and_then([operation]);
                async move { client.txn(txn).await }
            })
            .await?;
        Ok(response.succeeded())
    }

    fn members(&self) -> Vec<(String, bool)> {
        self.members
            .iter()
            .map(|m| (m.endpoint.clone(), m.up.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_errors_read_as_words_not_debug() {
        let status =
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"));
        let text = plain(&status);
        assert!(text.starts_with("etcd: "), "{text}");
        assert!(text.ends_with(": etcdserver: no leader"), "{text}");
        for debug in ["MetadataMap", "Status {", "details:", "headers"] {
            assert!(!text.contains(debug), "{text}");
        }
    }
}
