//! Votes: this instance's verdicts published under its lease, one document per pool, and
//! the mirror of the others' that counts only votes held by a live member's own lease.
//!
//! A voter stores its verdicts on a pool's endpoints together, as one [`PoolVotes`] under
//! `votes/<pool>/<voter>`, written when one of them changes (never on a timer): a fleet of
//! 30 instances probing 10,000 endpoints in 100 pools holds 3,000 keys, not 300,000, and a
//! mass outage is a few writes per pool and instance (changes are gathered: see
//! [`VOTE_LINGER`]), each watch event carrying the whole pool. A reader compares each
//! document with the one it held and hands the monitor only the endpoints whose vote
//! changed, in one message. Measured by the fleet simulator, `benches/fleet.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::values::segment;
use super::{Entry, Fleet, MIN_BACKOFF, VOTE_BATCH};
use crate::health::votes::{Vote, now_unix};
use crate::routing::EndpointKey;

/// Changes to this instance's verdicts are written once none has come for this long...
pub const VOTE_LINGER: Duration = Duration::from_millis(250);

/// ...or this long after the first: while endpoints keep flipping (a mass outage, whose
/// flips come over about one probe interval), a pool's document is written about once a
/// second rather than once per flip, and every reader parses it that often.
pub const VOTE_LINGER_MAX: Duration = Duration::from_secs(1);

/// Bytes of documents written in one request: below etcd's default request limit
/// (1.5 MiB), which a single pool's document must also fit (about 15,000 endpoints).
const VOTE_REQUEST_BYTES: usize = 1 << 20;

/// Largest round trip a document may hold (60 s, in µs): more is garbage.
const MAX_RTT_US: u32 = 60_000_000;

/// One voter's verdicts on one pool's endpoints, as stored: the members up, the members
/// down with their last error, and what only some endpoints have. About 6 bytes per
/// endpoint that is up, so that a pool's document can be written again on every change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolVotes {
    /// When it was written (Unix seconds).
    pub at: u64,
    /// The voter's region, for pools that vote by region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The members whose check says up.
    #[serde(default)]
    pub up: Vec<String>,
    /// The members whose check says down, with the last probe's error ("" if none).
    #[serde(default)]
    pub down: BTreeMap<String, String>,
    /// Members whose probes stopped reporting at this voter: their verdict does not count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale: Vec<String>,
    /// Smoothed round trips (µs) by member, for latency ranking: written when one moves
    /// beyond the band, so a steady fleet rewrites nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rtt: BTreeMap<String, u32>,
    /// `family = "each"`: the IPv4 address's check alone, by member.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub v4: BTreeMap<String, bool>,
    /// The same for the IPv6 address's check.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub v6: BTreeMap<String, bool>,
}

impl PoolVotes {
    /// The document for `votes` (one pool's, by member name), written now.
    pub fn of(votes: &BTreeMap<String, Vote>) -> Self {
        let mut document = Self {
            at: now_unix(),
            region: votes.values().find_map(|vote| vote.region.clone()),
            ..Self::default()
        };
        for (member, vote) in votes {
            if vote.up {
                document.up.push(member.clone());
            } else {
                let error = vote.error.clone().unwrap_or_default();
                document.down.insert(member.clone(), error);
            }
            if vote.stale {
                document.stale.push(member.clone());
            }
            if let Some(rtt) = vote.rtt_us {
                document.rtt.insert(member.clone(), rtt);
            }
            if let Some(up) = vote.v4 {
                document.v4.insert(member.clone(), up);
            }
            if let Some(up) = vote.v6 {
                document.v6.insert(member.clone(), up);
            }
        }
        document
    }

    /// The votes it holds, by member name. A vote's `since` is kept from `before` (the
    /// voter's previous document as read) while its verdict is the same, else it is
    /// this document's time; a member both up and down is invalid.
    pub fn votes(
        self,
        before: Option<&BTreeMap<String, Vote>>,
    ) -> Result<BTreeMap<String, Vote>, String> {
        let Self {
            at,
            region,
            up,
            down,
            stale,
            rtt,
            v4,
            v6,
        } = self;
        if let Some((member, us)) = rtt.iter().find(|(_, us)| **us > MAX_RTT_US) {
            return Err(format!(
                "member {member:?} has a round trip of {us} µs (at most {MAX_RTT_US})"
            ));
        }
        let stale: std::collections::HashSet<String> = stale.into_iter().collect();
        let verdicts =
            up.into_iter()
                .map(|member| (member, true, None))
                .chain(down.into_iter().map(|(member, error)| {
                    let error = (!error.is_empty()).then_some(error);
                    (member, false, error)
                }));
        let mut votes = BTreeMap::new();
        for (member, up, error) in verdicts {
            let since = before
                .and_then(|votes| votes.get(&member))
                .filter(|vote| vote.up == up)
                .map_or(at, |vote| vote.since);
            let vote = Vote {
                up,
                since,
                error,
                rtt_us: rtt.get(&member).copied(),
                region: region.clone(),
                stale: stale.contains(&member),
                at,
                v4: v4.get(&member).copied(),
                v6: v6.get(&member).copied(),
            };
            if votes.insert(member.clone(), vote).is_some() {
                return Err(format!(
                    "member {member:?} is both up and down (or listed twice)"
                ));
            }
        }
        Ok(votes)
    }
}

/// This instance's verdicts as last written, by pool and member.
pub(super) type Published = HashMap<String, BTreeMap<String, Vote>>;

/// One voter's votes on one pool as the store holds them, and the lease they live under.
pub(super) type StoredVotes = (BTreeMap<String, Vote>, i64);

impl Fleet {
    /// Publishes this instance's verdicts: each change at once (changes that arrive
    /// together in one request), all of them after each reconnect (from
    /// [`Fleet::session`]) and, after a failed write, again until one works.
    pub(super) async fn share_verdicts(&self, token: CancellationToken) {
        let mut verdicts = self.0.health.subscribe_verdicts();
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
                        // The flips of one outage come over about one probe interval:
                        // changes are gathered until none came for VOTE_LINGER (or for
                        // VOTE_LINGER_MAX in all), then written, one document per pool.
                        let mut batch = vec![first];
                        let first_at = tokio::time::Instant::now();
                        let mut until = first_at + VOTE_LINGER;
                        let mut lagged = false;
                        while let Ok(next) = tokio::time::timeout_at(until, verdicts.recv()).await {
                            match next {
                                Ok(next) => {
                                    batch.push(next);
                                    until = (tokio::time::Instant::now() + VOTE_LINGER)
                                        .min(first_at + VOTE_LINGER_MAX);
                                }
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                    lagged = true;
                                    break;
                                }
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                            }
                        }
                        if lagged {
                            self.publish_all_votes().await;
                        } else {
                            self.publish_votes(batch).await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        self.publish_all_votes().await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                // Set by another task: the retry above starts now.
                () = self.0.unshared_set.notified() => {}
                () = token.cancelled() => return,
            }
        }
    }

    /// Writes all of this instance's verdicts, one document per pool, and removes the
    /// documents of pools it no longer probes.
    pub(super) async fn publish_all_votes(&self) {
        if !self.is_connected() {
            return;
        }
        let mut current: Published = HashMap::new();
        for (key, vote) in self.0.health.verdicts().await {
            current
                .entry(key.pool)
                .or_default()
                .insert(key.member, vote);
        }
        let mut published = self.0.published.lock().await;
        let gone: Vec<String> = published
            .keys()
            .filter(|pool| !current.contains_key(*pool))
            .map(|pool| self.votes_key(pool))
            .collect();
        *published = current;
        let pools: Vec<String> = published.keys().cloned().collect();
        self.write_pools(&published, &pools).await;
        if !gone.is_empty()
            && let Err(error) = self.0.engine.delete_many(gone).await
        {
            warn!(%error, "verdicts on pools no longer probed not removed; they go with this instance's lease");
        }
    }

    /// Writes the documents of the pools whose verdicts `changes` change.
    pub(super) async fn publish_votes(&self, changes: Vec<(EndpointKey, Vote)>) {
        let mut published = self.0.published.lock().await;
        let mut pools: Vec<String> = Vec::new();
        for (key, vote) in changes {
            let members = published.entry(key.pool.clone()).or_default();
            if members.get(&key.member) != Some(&vote) {
                members.insert(key.member, vote);
                pools.push(key.pool);
            }
        }
        pools.sort_unstable();
        pools.dedup();
        self.write_pools(&published, &pools).await;
    }

    /// Writes `pools`' documents, in requests of at most [`VOTE_BATCH`] keys and
    /// [`VOTE_REQUEST_BYTES`]; a failure is retried by [`Fleet::share_verdicts`].
    async fn write_pools(&self, published: &Published, pools: &[String]) {
        let inner = &self.0;
        let lease = inner.lease.load(Ordering::Relaxed);
        if !self.is_connected() || lease == 0 {
            return;
        }
        let mut requests: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new()];
        let mut bytes = 0;
        for pool in pools {
            let Some(votes) = published.get(pool) else {
                continue;
            };
            let value = serde_json::to_vec(&PoolVotes::of(votes)).unwrap_or_default();
            let full = requests.last().is_some_and(|request| {
                !request.is_empty()
                    && (request.len() >= VOTE_BATCH || bytes + value.len() > VOTE_REQUEST_BYTES)
            });
            if full {
                requests.push(Vec::new());
                bytes = 0;
            }
            bytes += value.len();
            if let Some(request) = requests.last_mut() {
                request.push((self.votes_key(pool), value));
            }
        }
        for request in requests.into_iter().filter(|r| !r.is_empty()) {
            let count = request.len();
            if let Err(error) = inner.engine.put_many(request, Some(lease)).await {
                warn!(%error, pools = count, "verdicts not shared; writing them again shortly");
                self.unshared();
                return;
            }
        }
    }

    /// This instance's own document on a pool changed in the store: when it is not under
    /// this instance's lease (someone else put it) or was deleted, all are written again,
    /// as after a failed write (by [`Fleet::share_verdicts`], with backoff; a lease that
    /// expired took them all, and the new session writes them anyway). Nothing is written
    /// on a timer, so this is what repairs them. The lease, not the content, says who
    /// wrote it: an echo of this instance's own earlier write, read late, is not a
    /// stranger's.
    pub(super) fn guard_own_votes(&self, put: bool, entry: &Entry) {
        let ours = put && entry.lease != 0 && entry.lease == self.0.lease.load(Ordering::Relaxed);
        if ours {
            return;
        }
        if !self.0.unshared.load(Ordering::Relaxed) {
            info!(key = %entry.key, "this instance's votes in the store are not its own write; writing them again");
        }
        self.unshared();
    }

    /// Something this instance shares (verdicts, loads) was not written, or was changed
    /// in the store: [`Fleet::share_verdicts`] writes it all again, with backoff.
    pub(super) fn unshared(&self) {
        self.0.unshared.store(true, Ordering::Relaxed);
        self.0.unshared_set.notify_one();
    }

    /// Where this instance's verdicts on `pool` are stored.
    pub(super) fn votes_key(&self, pool: &str) -> String {
        self.voter_key(pool, &self.0.instance)
    }

    /// Where `voter`'s verdicts on `pool` are stored.
    pub(super) fn voter_key(&self, pool: &str, voter: &str) -> String {
        format!(
            "{}votes/{}/{}",
            self.0.prefix,
            segment(pool),
            segment(voter)
        )
    }

    /// A votes document from the store, or None (counted) when it is not one.
    fn valid_document(&self, entry: &Entry) -> Option<PoolVotes> {
        match serde_json::from_slice::<PoolVotes>(&entry.value) {
            Ok(document) => Some(document),
            Err(error) => {
                self.not_votes(entry, &error.to_string());
                None
            }
        }
    }

    fn not_votes(&self, entry: &Entry, error: &str) {
        self.ignore(
            &entry.key,
            "invalid",
            &format!("not a votes document: {error}"),
        );
    }

    /// The votes in a document read at start or after a compaction (nothing before it).
    pub(super) fn valid_votes(&self, entry: &Entry) -> Option<BTreeMap<String, Vote>> {
        let votes = self.valid_document(entry)?.votes(None);
        votes.map_err(|error| self.not_votes(entry, &error)).ok()
    }

    /// Another voter's votes on a pool changed in the store: mirrored, and counted only
    /// while the voter holds a live membership under the document's own lease. The
    /// monitor is told the endpoints whose counted vote changed, in one message.
    pub(super) async fn apply_votes(&self, put: bool, pool: String, voter: String, entry: &Entry) {
        let inner = &self.0;
        let document = put.then(|| self.valid_document(entry)).flatten();
        let (changes, refused, invalid) = {
            let Ok(mut mirror) = inner.mirror.lock() else {
                return;
            };
            let slot = (pool.clone(), voter.clone());
            let read = document.map(|d| d.votes(mirror.votes.get(&slot).map(|(v, _)| v)));
            let (votes, invalid) = match read {
                Some(Ok(votes)) => (Some(votes), None),
                Some(Err(error)) => (None, Some(error)),
                None => (None, None),
            };
            let (before, counted_before) = match mirror.votes.remove(&slot) {
                Some((votes, lease)) => {
                    let counted = mirror.counts(&voter, lease);
                    (votes, counted)
                }
                None => (BTreeMap::new(), false),
            };
            let now_counts = votes.is_some() && mirror.counts(&voter, entry.lease);
            let empty = BTreeMap::new();
            let after = votes.as_ref().unwrap_or(&empty);
            let key = |member: &String| EndpointKey {
                pool: pool.clone(),
                member: member.clone(),
            };
            let mut changes = Vec::new();
            for (member, vote) in after {
                let was = before.get(member).filter(|_| counted_before);
                if now_counts && was != Some(vote) {
                    changes.push((key(member), Some(vote.clone())));
                } else if !now_counts && was.is_some() {
                    changes.push((key(member), None));
                }
            }
            if counted_before {
                for member in before.keys().filter(|m| !after.contains_key(*m)) {
                    changes.push((key(member), None));
                }
            }
            let refused = votes.is_some() && !now_counts;
            if let Some(votes) = votes {
                mirror.votes.insert(slot, (votes, entry.lease));
            }
            (changes, refused, invalid)
        };
        if let Some(error) = invalid {
            self.not_votes(entry, &error);
        }
        if refused {
            self.ignore(
                &entry.key,
                "not_a_member",
                "the voter holds no live fleet membership",
            );
        }
        if !changes.is_empty() {
            inner.health.set_votes(voter, changes).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(up: bool, since: u64) -> Vote {
        Vote {
            up,
            since,
            error: (!up).then(|| "connection refused".to_string()),
            rtt_us: None,
            region: Some("eu".into()),
            stale: false,
            at: 0,
            v4: None,
            v6: None,
        }
    }

    #[test]
    fn a_document_round_trips_every_vote_and_stays_small() {
        let mut votes = BTreeMap::new();
        votes.insert("fra-1".to_string(), vote(true, 5));
        votes.insert("ams-1".to_string(), vote(false, 5));
        let mut each = vote(true, 5);
        (each.v4, each.v6, each.stale) = (Some(true), Some(false), true);
        votes.insert("par-1".to_string(), each);
        let mut measured = vote(true, 5);
        measured.rtt_us = Some(12_345);
        votes.insert("nyc-1".to_string(), measured);
        let document = PoolVotes::of(&votes);
        let text = serde_json::to_string(&document).unwrap_or_default();
        let back: PoolVotes = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let at = back.at;
        // Read after a document that held the same verdicts: their since is kept.
        let read = back.clone().votes(Some(&votes)).unwrap_or_default();
        for (member, vote) in &votes {
            let mut expected = vote.clone();
            expected.at = at;
            assert_eq!(read.get(member), Some(&expected), "{member}");
        }
        // Read alone, or after a different verdict: since is the document's time.
        let fresh = back.votes(None).unwrap_or_default();
        assert!(fresh.values().all(|vote| vote.since == at));
        // A hundred endpoints up cost about 6 bytes each beyond the fixed part.
        let hundred: BTreeMap<String, Vote> =
            (0..100).map(|m| (format!("m{m}"), vote(true, 5))).collect();
        let size = serde_json::to_vec(&PoolVotes::of(&hundred)).map_or(0, |t| t.len());
        assert!(size < 700, "{size} bytes");
        for bad in [
            r#"{"at":1,"up":"m1"}"#,
            r#"{"at":1,"up":["m1"],"down":{"m1":""}}"#,
            r#"{"up":["m1"]}"#,
            // A round trip no network has (forged or garbage), or not a number.
            r#"{"at":1,"up":["m1"],"rtt":{"m1":4000000000}}"#,
            r#"{"at":1,"up":["m1"],"rtt":{"m1":-5}}"#,
            r#"{"at":1,"up":["m1"],"rtt":{"m1":"fast"}}"#,
        ] {
            let read = serde_json::from_str::<PoolVotes>(bad)
                .map_err(|e| e.to_string())
                .and_then(|d| d.votes(None));
            assert!(read.is_err(), "{bad} was read");
        }
    }
}
