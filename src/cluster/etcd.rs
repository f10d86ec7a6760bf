//! The etcd v3 engine behind [`super::Engine`], on the `etcd-client` crate.
//!
//! One client (its gRPC channel shared by every call), per-request timeouts so that a
//! dead or partitioned etcd fails calls in seconds rather than hanging them, and HTTP/2
//! keep-alive pings so a silent connection is noticed. Watches are read on a task of
//! their own and handed over as [`super::WatchItem`]s; a watch whose start revision was
//! compacted away ends with [`super::WatchItem::Compacted`].

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::{Mutex, mpsc};

use super::{ClusterError, Entry, WatchItem};
use crate::config::ClusterSettings;

/// How long one etcd call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// An etcd cluster, reached through its endpoints.
pub struct Etcd {
    settings: ClusterSettings,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.settings.endpoints)
            .finish_non_exhaustive()
    }
}

fn failed(error: etcd_client::Error) -> ClusterError {
    ClusterError::Unavailable(error.to_string())
}

impl Etcd {
    /// An engine for `settings`; nothing is connected until [`super::Engine::connect`].
    pub fn new(settings: ClusterSettings) -> Self {
        Self {
            settings,
            client: Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<Client, ClusterError> {
        self.client
            .lock()
            .await
            .clone()
            .ok_or_else(|| ClusterError::Unavailable("not connected".into()))
    }
}

#[async_trait::async_trait]
impl super::Engine for Etcd {
    async fn connect(&self) -> Result<(), ClusterError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
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
        let connecting = Client::connect(&self.settings.endpoints, Some(options));
        let client = tokio::time::timeout(CALL_TIMEOUT * 2, connecting)
            .await
            .map_err(|_| ClusterError::Unavailable("connecting timed out".into()))?
            .map_err(failed)?;
        *self.client.lock().await = Some(client);
        Ok(())
    }

    async fn read_all(&self, prefix: &str) -> Result<(Vec<Entry>, i64), ClusterError> {
        let mut client = self.client().await?;
        let response = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(failed)?;
        let revision = response.header().map_or(0, |h| h.revision());
        let entries = response
            .kvs()
            .iter()
            .map(|kv| Entry {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                revision: kv.mod_revision(),
            })
            .collect();
        Ok((entries, revision))
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, ClusterError> {
        let mut client = self.client().await?;
        let response = client.get(key, None).await.map_err(failed)?;
        Ok(response.kvs().first().map(|kv| Entry {
            key: key.to_string(),
            value: kv.value().to_vec(),
            revision: kv.mod_revision(),
        }))
    }

    async fn watch(
        &self,
        prefix: &str,
        from: i64,
    ) -> Result<mpsc::Receiver<WatchItem>, ClusterError> {
        let mut client = self.client().await?;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let mut stream = client.watch(prefix, Some(options)).await.map_err(failed)?;
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let item = match stream.message().await {
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
                    Ok(Some(response)) => {
                        let revision = response.header().map_or(0, |h| h.revision());
                        let changes = response
                            .events()
                            .iter()
                            .filter_map(|event| {
                                let kv = event.kv()?;
                                let entry = Entry {
                                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                                    value: kv.value().to_vec(),
                                    revision: kv.mod_revision(),
                                };
                                Some((event.event_type() == EventType::Put, entry))
                            })
                            .collect();
                        WatchItem::Changes { changes, revision }
                    }
                    Ok(None) => WatchItem::Closed("watch stream ended".into()),
                    Err(error) => WatchItem::Closed(error.to_string()),
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
        let mut client = self.client().await?;
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = client.lease_grant(seconds, None).await.map_err(failed)?;
        Ok(lease.id())
    }

    async fn keep_alive(&self, lease: i64, ttl: Duration) -> ClusterError {
        let mut client = match self.client().await {
            Ok(client) => client,
            Err(error) => return error,
        };
        let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
            Ok(pair) => pair,
            Err(error) => return failed(error),
        };
        loop {
            if let Err(error) = keeper.keep_alive().await {
                return failed(error);
            }
            match tokio::time::timeout(CALL_TIMEOUT, responses.message()).await {
                Ok(Ok(Some(response))) if response.ttl() > 0 => {}
                Ok(Ok(_)) => return ClusterError::Unavailable("the lease expired".into()),
                Ok(Err(error)) => return failed(error),
                Err(_) => return ClusterError::Unavailable("lease keep-alive timed out".into()),
            }
            tokio::time::sleep(ttl / 3).await;
        }
    }

    async fn revoke(&self, lease: i64) {
        if let Ok(mut client) = self.client().await {
            let _ = client.lease_revoke(lease).await;
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<i64>) -> Result<(), ClusterError> {
        let mut client = self.client().await?;
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        client.put(key, value, options).await.map_err(failed)?;
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
        let mut client = self.client().await?;
        let operations: Vec<TxnOp> = entries
            .into_iter()
            .map(|(key, value)| {
                TxnOp::put(key, value, lease.map(|id| PutOptions::new().with_lease(id)))
            })
            .collect();
        client
            .txn(Txn::new().and_then(operations))
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn put_if(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        revision: i64,
        lease: Option<i64>,
    ) -> Result<bool, ClusterError> {
        let mut client = self.client().await?;
        let operation = match value {
            Some(value) => TxnOp::put(key, value, lease.map(|id| PutOptions::new().with_lease(id))),
            None => TxnOp::delete(key, None),
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then([operation]);
        let response = client.txn(txn).await.map_err(failed)?;
        Ok(response.succeeded())
    }
}
