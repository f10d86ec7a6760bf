//! Votes: this instance's verdicts published under its lease, and the mirror of the others' that counts only votes held by a live member's own lease.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::values::segment;
use super::{Entry, Fleet, MIN_BACKOFF, VOTE_BATCH, VOTE_REFRESH};
use crate::routing::EndpointKey;

impl Fleet {
    /// Publishes this instance's verdicts: each change at once, and all of them every
    /// [`VOTE_REFRESH`] (and after each reconnect, from [`Fleet::session`]).
    pub(super) async fn share_verdicts(&self, token: CancellationToken) {
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
    pub(super) async fn publish_all_votes(&self) {
        if !self.is_connected() {
            return;
        }
        let verdicts = self.0.health.verdicts().await;
        for chunk in verdicts.chunks(VOTE_BATCH) {
            self.publish_votes(chunk.to_vec()).await;
        }
    }

    pub(super) fn vote_key(&self, key: &EndpointKey) -> String {
        format!(
            "{}vote/{}/{}/{}",
            self.0.prefix,
            segment(&key.pool),
            segment(&key.member),
            segment(&self.0.instance)
        )
    }

    pub(super) async fn publish_votes(
        &self,
        votes: Vec<(EndpointKey, crate::health::votes::Vote)>,
    ) {
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

    /// A vote value from the store, or None (counted) when it is not one.
    pub(super) fn valid_vote(&self, entry: &Entry) -> Option<crate::health::votes::Vote> {
        match serde_json::from_slice(&entry.value) {
            Ok(vote) => Some(vote),
            Err(error) => {
                self.ignore(&entry.key, "invalid", &format!("not a vote: {error}"));
                None
            }
        }
    }

    /// Another voter's vote changed in the store: mirrored, and counted only while the
    /// voter holds a live membership under the vote's own lease.
    pub(super) async fn apply_vote(
        &self,
        put: bool,
        key: EndpointKey,
        voter: String,
        entry: &Entry,
    ) {
        let inner = &self.0;
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
}
