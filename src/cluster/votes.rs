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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::values::segment;
use super::{Entry, Fleet, MIN_BACKOFF, VOTE_BATCH};
use crate::health::votes::{Vote, now_unix};
use crate::health::{PoolVoteChanges, VoteChanges, name_at};
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
            region: votes
                .values()
                .find_map(|vote| vote.region.as_deref().map(str::to_string)),
            ..Self::default()
        };
        for (member, vote) in votes {
            if vote.up {
                document.up.push(member.clone());
            } else {
                let error = vote.error.as_deref().unwrap_or_default();
                document.down.insert(member.clone(), error.to_string());
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
}

/// A name or an error text in a document as read: borrowed from the stored bytes (unless
/// the JSON escapes something in it).
#[derive(Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl std::borrow::Borrow<str> for Text<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A [`PoolVotes`] as read, its names borrowed from the stored bytes: reading a document
/// whose verdicts did not change allocates nothing per member. In a mass outage each
/// instance reads every other voter's document on every pool a few times.
#[derive(Deserialize)]
struct Reading<'a> {
    at: u64,
    #[serde(borrow, default)]
    region: Option<Text<'a>>,
    #[serde(borrow, default)]
    up: Vec<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "pairs")]
    down: Vec<(Text<'a>, Text<'a>)>,
    #[serde(borrow, default)]
    stale: Vec<Text<'a>>,
    #[serde(borrow, default)]
    rtt: BTreeMap<Text<'a>, u32>,
    #[serde(borrow, default)]
    v4: BTreeMap<Text<'a>, bool>,
    #[serde(borrow, default)]
    v6: BTreeMap<Text<'a>, bool>,
}

/// A JSON object read as its (name, value) pairs in the order written, without building a
/// map: a writer's objects are in name order, and a tree built per document read was a
/// good part of reading one.
fn pairs<'de, D>(deserializer: D) -> Result<Vec<(Text<'de>, Text<'de>)>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Pairs;
    impl<'de> serde::de::Visitor<'de> for Pairs {
        type Value = Vec<(Text<'de>, Text<'de>)>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of strings")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0));
            while let Some(pair) = map.next_entry()? {
                pairs.push(pair);
            }
            Ok(pairs)
        }
    }
    deserializer.deserialize_map(Pairs)
}

/// Puts `items` in the order of their `name` (a writer's already are: then only checked);
/// returns a name found twice.
fn in_name_order<T, K: Ord>(items: &mut [T], name: impl Fn(&T) -> K) -> Option<K> {
    if items.windows(2).all(|pair| name(&pair[0]) < name(&pair[1])) {
        return None;
    }
    items.sort_unstable_by_key(&name);
    items
        .windows(2)
        .find(|pair| name(&pair[0]) == name(&pair[1]))
        .map(|pair| name(&pair[0]))
}

/// One member's verdict in a document, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Verdict<'a> {
    member: &'a str,
    up: bool,
    error: Option<&'a str>,
    rtt_us: Option<u32>,
    stale: bool,
    v4: Option<bool>,
    v6: Option<bool>,
}

/// One member's verdict as the mirror holds it between a voter's documents (its error
/// text shared with the document's other verdicts).
#[derive(Debug, Clone, PartialEq)]
struct HeldVerdict {
    up: bool,
    stale: bool,
    v4: Option<bool>,
    v6: Option<bool>,
    rtt_us: Option<u32>,
    error: Option<Arc<str>>,
}

/// A voter's document on a pool as the mirror holds it: checked, its verdicts in member
/// order and their names in one buffer. The next document is compared with it as that one
/// is read, without parsing this one again (which was about half of reading a document).
#[derive(Debug, Default)]
pub(super) struct HeldDocument {
    at: u64,
    region: Option<Arc<str>>,
    names: String,
    verdicts: Vec<(u32, HeldVerdict)>,
}

impl HeldDocument {
    fn member(&self, i: usize) -> &str {
        name_at(&self.names, &self.verdicts, i)
    }

    /// `verdict`'s vote, as of the document's time.
    fn vote(&self, verdict: &HeldVerdict) -> Vote {
        Vote {
            up: verdict.up,
            since: self.at,
            error: verdict.error.clone(),
            rtt_us: verdict.rtt_us,
            region: self.region.clone(),
            stale: verdict.stale,
            at: self.at,
            v4: verdict.v4,
            v6: verdict.v6,
        }
    }

    /// Its members, in order.
    pub(super) fn members(&self) -> impl Iterator<Item = &str> {
        (0..self.verdicts.len()).map(|i| self.member(i))
    }

    /// Every vote in it, by member.
    pub(super) fn votes(&self) -> Vec<(String, Vote)> {
        self.verdicts
            .iter()
            .enumerate()
            .map(|(i, (_, verdict))| (self.member(i).to_string(), self.vote(verdict)))
            .collect()
    }
}

/// A document's error texts, each held once (a mass outage's verdicts say "connection
/// refused" on every endpoint; one copy per vote was most of the memory a mass outage
/// asked for). Found by a search of the first few, by a map past them.
#[derive(Default)]
struct Texts<'a> {
    errors: Vec<(&'a str, Arc<str>)>,
    more: HashMap<&'a str, Arc<str>>,
}

impl<'a> Texts<'a> {
    /// Error texts found by a search; past these, by the map.
    const SEARCHED: usize = 8;

    fn error(&mut self, text: &'a str) -> Arc<str> {
        if let Some((_, shared)) = self.errors.iter().find(|(seen, _)| *seen == text) {
            return Arc::clone(shared);
        }
        if self.errors.len() < Self::SEARCHED {
            let shared: Arc<str> = Arc::from(text);
            self.errors.push((text, Arc::clone(&shared)));
            return shared;
        }
        Arc::clone(self.more.entry(text).or_insert_with(|| Arc::from(text)))
    }
}

/// A document's verdicts, checked and in name order.
struct Verdicts<'a> {
    at: u64,
    region: Option<&'a str>,
    by_member: Vec<Verdict<'a>>,
}

impl<'a> Verdicts<'a> {
    /// Checks `reading` whole: a round trip no network has, or a member listed twice (or
    /// both up and down), refuses it.
    fn of(reading: &'a Reading<'a>) -> Result<Self, String> {
        let Reading {
            at,
            region,
            up,
            down,
            stale,
            rtt,
            v4,
            v6,
        } = reading;
        if let Some((member, us)) = rtt.iter().find(|(_, us)| **us > MAX_RTT_US) {
            return Err(format!(
                "member {:?} has a round trip of {us} µs (at most {MAX_RTT_US})",
                member.0
            ));
        }
        let twice =
            |member: &str| format!("member {member:?} is both up and down (or listed twice)");
        // `up` as written (sorted by every writer; sorted here when not) merged with `down`
        // (a map, so sorted).
        let mut up: Vec<&str> = up.iter().map(|member| &*member.0).collect();
        if let Some(member) = in_name_order(&mut up, |member| *member) {
            return Err(twice(member));
        }
        let mut stale: Vec<&str> = stale.iter().map(|member| &*member.0).collect();
        stale.sort_unstable();
        let verdict = |member: &'a str, up: bool, error: Option<&'a str>| Verdict {
            member,
            up,
            error,
            rtt_us: rtt.get(member).copied(),
            stale: !stale.is_empty() && stale.binary_search(&member).is_ok(),
            v4: v4.get(member).copied(),
            v6: v6.get(member).copied(),
        };
        // `down` likewise (written in name order).
        let mut down: Vec<(&'a str, &'a str)> = down
            .iter()
            .map(|(member, error)| (&*member.0, &*error.0))
            .collect();
        if let Some(member) = in_name_order(&mut down, |(member, _)| *member) {
            return Err(twice(member));
        }
        let failed = |(member, error): (&'a str, &'a str)| {
            verdict(member, false, Some(error).filter(|e| !e.is_empty()))
        };
        let mut by_member = Vec::with_capacity(up.len() + down.len());
        let mut downs = down.into_iter().peekable();
        for member in up {
            while let Some(down) = downs.next_if(|(down, _)| *down < member) {
                by_member.push(failed(down));
            }
            if downs.peek().is_some_and(|(down, _)| *down == member) {
                return Err(twice(member));
            }
            by_member.push(verdict(member, true, None));
        }
        by_member.extend(downs.map(failed));
        Ok(Self {
            at: *at,
            region: region.as_ref().map(|r| &*r.0),
            by_member,
        })
    }
}

/// Reads a voter's document on a pool (`bytes`) against the one before it as held
/// (`before`; None for the first), adds what changed to `changes` (when given) in member
/// order (a member gone: None), and returns the document as held for the next read (in
/// `reuse`'s buffers when given: they are emptied first). The two are compared verdict by
/// verdict, in name order, without looking anything up (in a mass outage each instance
/// reads every other voter's document on every pool a few times, and a lookup per member
/// among the votes held, which no cache holds at 30 voters x 10,000 endpoints, was most of
/// that work), and the document before is not parsed again. A vote that differs only in
/// when it was written is not a change; when the voter's region moved, every vote is. A
/// change allocates nothing of its own (the names go into one buffer, a vote's texts are
/// shared with the document's other votes). A document that is not one (not JSON, a
/// member both up and down, a round trip no network has) is refused whole: nothing is
/// added.
pub(super) fn read_changes(
    bytes: &[u8],
    before: Option<&HeldDocument>,
    mut changes: Option<&mut PoolVoteChanges>,
    reuse: Option<HeldDocument>,
) -> Result<HeldDocument, String> {
    let reading: Reading<'_> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let new = Verdicts::of(&reading)?;
    let name_bytes = new.by_member.iter().map(|v| v.member.len()).sum();
    // Sized for every vote at once (in a mass outage every vote changes; grown vote by
    // vote, the lists asked the allocator for fresh memory several times per document).
    if let Some(changes) = changes.as_deref_mut() {
        changes.reserve(new.by_member.len(), name_bytes);
    }
    let same_region = before.is_some_and(|before| before.region.as_deref() == new.region);
    let mut held = reuse.unwrap_or_default();
    held.at = new.at;
    held.region = match before {
        Some(before) if same_region => before.region.clone(),
        _ => new.region.map(Arc::from),
    };
    held.names.clear();
    held.names.reserve(name_bytes);
    held.verdicts.clear();
    held.verdicts.reserve(new.by_member.len());
    let empty = HeldDocument::default();
    let old = before.unwrap_or(&empty);
    let (mut next_old, old_len) = (0, old.verdicts.len());
    let mut texts = Texts::default();
    for verdict in &new.by_member {
        while next_old < old_len && old.member(next_old) < verdict.member {
            if let Some(changes) = changes.as_deref_mut() {
                changes.push(old.member(next_old), None);
            }
            next_old += 1;
        }
        let was = (next_old < old_len && old.member(next_old) == verdict.member)
            .then(|| old.verdicts.get(next_old).map(|(_, was)| was))
            .flatten();
        if was.is_some() {
            next_old += 1;
        }
        let error = verdict
            .error
            .map(|text| match was.and_then(|w| w.error.as_ref()) {
                Some(shared) if **shared == *text => Arc::clone(shared),
                _ => texts.error(text),
            });
        let now = HeldVerdict {
            up: verdict.up,
            stale: verdict.stale,
            v4: verdict.v4,
            v6: verdict.v6,
            rtt_us: verdict.rtt_us,
            error,
        };
        if let Some(changes) = changes.as_deref_mut()
            && !(same_region && was == Some(&now))
        {
            changes.push(verdict.member, Some(held.vote(&now)));
        }
        held.names.push_str(verdict.member);
        let end = u32::try_from(held.names.len()).unwrap_or(u32::MAX);
        held.verdicts.push((end, now));
    }
    if let Some(changes) = changes {
        for gone in next_old..old_len {
            changes.push(old.member(gone), None);
        }
    }
    Ok(held)
}

/// This instance's verdicts as last written, by pool and member.
pub(super) type Published = HashMap<String, BTreeMap<String, Vote>>;

/// One voter's document on one pool as the store holds it (checked when read), and the
/// lease it lives under. The document is held compactly: the next one is compared with it,
/// and its votes are made again on the rare occasions that need them all (the voter's
/// membership starting or ending, a full read of the store).
#[derive(Debug)]
pub(super) struct StoredVotes {
    /// The lease the document lives under.
    pub(super) lease: i64,
    /// The document as read, to which the next one is compared.
    pub(super) document: HeldDocument,
}

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
                received = verdicts.recv() => {
                    // The flips of one outage come over about one probe interval:
                    // changes are gathered until none came for VOTE_LINGER (or for
                    // VOTE_LINGER_MAX in all), then written, one document per pool. When
                    // this task fell behind the flips (more than the channel holds: a
                    // mass outage on a busy machine), every pool is written, once, at
                    // the end of the same wait.
                    let (mut batch, mut lagged) = match received {
                        Ok(first) => (vec![first], false),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            (Vec::new(), true)
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    };
                    let first_at = tokio::time::Instant::now();
                    let mut until = first_at + VOTE_LINGER;
                    while let Ok(next) = tokio::time::timeout_at(until, verdicts.recv()).await {
                        match next {
                            Ok(next) if !lagged => batch.push(next),
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                lagged = true;
                                batch = Vec::new();
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        }
                        until = (tokio::time::Instant::now() + VOTE_LINGER)
                            .min(first_at + VOTE_LINGER_MAX);
                    }
                    if lagged {
                        self.publish_all_votes().await;
                    } else {
                        self.publish_votes(batch).await;
                    }
                }
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

    fn not_votes(&self, entry: &Entry, error: &str) {
        self.ignore(
            &entry.key,
            "invalid",
            &format!("not a votes document: {error}"),
        );
    }

    /// A document read at start or after a compaction (nothing before it), when it is one.
    pub(super) fn valid_votes(&self, entry: &Entry) -> Option<StoredVotes> {
        match read_changes(&entry.value, None, None, None) {
            Ok(document) => Some(StoredVotes {
                lease: entry.lease,
                document,
            }),
            Err(error) => {
                self.not_votes(entry, &error);
                None
            }
        }
    }

    /// Another voter's votes on a pool changed in the store: mirrored, and counted only
    /// while the voter holds a live membership under the document's own lease. The
    /// endpoints whose counted vote changed go to `votes`, for the monitor (with the other
    /// documents read together).
    pub(super) fn apply_votes(
        &self,
        put: bool,
        pool: String,
        voter: String,
        entry: &Entry,
        votes: &mut VoteChanges,
    ) {
        let inner = &self.0;
        let (changes, refused, invalid, (_, voter)) = {
            let Ok(mut mirror) = inner.mirror.lock() else {
                return;
            };
            let slot = (pool, voter);
            let (document, counted_before) = match mirror.votes.remove(&slot) {
                Some(stored) => {
                    let counted = mirror.counts(&slot.1, stored.lease);
                    (Some(stored.document), counted)
                }
                None => (None, false),
            };
            // The document before was counted: its votes go (it was read when stored).
            let withdraw = |changes: &mut PoolVoteChanges| {
                for member in document.iter().flat_map(HeldDocument::members) {
                    changes.push(member, None);
                }
            };
            let mut changes = inner.health.vote_list(&slot.0);
            let now_counts = put && mirror.counts(&slot.1, entry.lease);
            // Read against the document before it while that one counted; else every
            // vote in it is new to the monitor. A document that does not count is only
            // checked.
            let counted = document.as_ref().filter(|_| counted_before);
            let spare = Some(std::mem::take(&mut mirror.spare));
            let read = put.then(|| {
                if now_counts {
                    read_changes(&entry.value, counted, Some(&mut changes), spare)
                } else {
                    read_changes(&entry.value, None, None, spare)
                }
            });
            let (refused, invalid) = match read {
                Some(Ok(held)) => {
                    if counted_before && !now_counts {
                        withdraw(&mut changes);
                    }
                    let stored = StoredVotes {
                        lease: entry.lease,
                        document: held,
                    };
                    mirror.votes.insert(slot.clone(), stored);
                    (!now_counts, None)
                }
                // Deleted, or not a document: its votes go.
                other => {
                    if counted_before {
                        withdraw(&mut changes);
                    }
                    (false, other.and_then(Result::err))
                }
            };
            // The document replaced: its buffers serve the next read.
            if let Some(replaced) = document {
                mirror.spare = replaced;
            }
            (changes, refused, invalid, slot)
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
            votes.push(voter, vec![changes]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a document changes against the one before it (None: none before): the votes
    /// new or changed, by member in name order, and the members gone.
    #[derive(Debug, Default, PartialEq)]
    struct Read {
        changed: Vec<(String, Vote)>,
        removed: Vec<String>,
    }

    /// [`read_changes`] against the document before it as stored (its bytes).
    fn read_votes(bytes: &[u8], before: Option<&[u8]>) -> Result<Read, String> {
        let before = before.and_then(|bytes| read_changes(bytes, None, None, None).ok());
        let mut changes = PoolVoteChanges::default();
        read_changes(bytes, before.as_ref(), Some(&mut changes), None)?;
        let mut read = Read::default();
        for i in 0..changes.len() {
            let member = changes.member(i).to_string();
            match changes.take(i) {
                Some(vote) => read.changed.push((member, vote)),
                None => read.removed.push(member),
            }
        }
        Ok(read)
    }

    fn vote(up: bool, since: u64) -> Vote {
        Vote {
            up,
            since,
            error: (!up).then(|| "connection refused".into()),
            rtt_us: None,
            region: Some("eu".into()),
            stale: false,
            at: 0,
            v4: None,
            v6: None,
        }
    }

    /// The members of `changed`, in order.
    fn names(changed: &[(String, Vote)]) -> Vec<&str> {
        changed.iter().map(|(member, _)| member.as_str()).collect()
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
        let text = serde_json::to_vec(&document).unwrap_or_default();
        let at = document.at;
        // Read alone: every vote, as of the document's time.
        let read = read_votes(&text, None)
            .map(|read| read.changed)
            .unwrap_or_default();
        assert_eq!(names(&read), ["ams-1", "fra-1", "nyc-1", "par-1"]);
        for (member, vote) in &read {
            let mut expected = votes.get(member).cloned();
            if let Some(expected) = &mut expected {
                (expected.since, expected.at) = (at, at);
            }
            assert_eq!(Some(vote), expected.as_ref(), "{member}");
        }
        // Read after itself: nothing changed.
        assert_eq!(read_votes(&text, Some(&text)), Ok(Read::default()));
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
            // Refused whole, with or without a document before.
            assert!(read_votes(bad.as_bytes(), None).is_err(), "{bad} was read");
            let before = Some(text.as_slice());
            assert!(
                read_votes(bad.as_bytes(), before).is_err(),
                "{bad} was read"
            );
        }
    }

    #[test]
    fn a_rewritten_document_reads_as_the_votes_that_changed() {
        let first: &[u8] = br#"{"at":100,"region":"eu","up":["a","b","c"],"down":{"d":"refused"}}"#;
        let read = read_votes(first, None).unwrap_or_default();
        assert_eq!(names(&read.changed), ["a", "b", "c", "d"]);
        assert!(read.removed.is_empty());
        // Written again a second later because c went down: c alone changed, as of then.
        let second: &[u8] =
            br#"{"at":101,"region":"eu","up":["a","b"],"down":{"c":"timed out","d":"refused"}}"#;
        let read = read_votes(second, Some(first)).unwrap_or_default();
        assert_eq!(names(&read.changed), ["c"]);
        assert!(read.removed.is_empty());
        let c = read.changed.first().map(|(_, v)| v);
        assert_eq!(
            c.map(|v| (v.since, v.at, v.up, v.error.as_deref(), v.region.as_deref())),
            Some((101, 101, false, Some("timed out"), Some("eu")))
        );
        // b left the pool; an escaped name is read (owned, not borrowed) like any other;
        // a new error text on d is a change.
        let third: &[u8] =
            br#"{"at":102,"region":"eu","up":["a","e\u0301"],"down":{"c":"timed out","d":""}}"#;
        let read = read_votes(third, Some(second)).unwrap_or_default();
        assert_eq!(names(&read.changed), ["d", "e\u{301}"]);
        assert_eq!(read.removed, ["b"]);
        let d = read.changed.first().map(|(_, v)| v.error.clone());
        assert_eq!(d, Some(None));
        // The region moved: every vote changed.
        let moved: &[u8] =
            br#"{"at":103,"region":"us","up":["a","e\u0301"],"down":{"c":"timed out","d":""}}"#;
        let read = read_votes(moved, Some(third)).unwrap_or_default();
        assert_eq!(names(&read.changed), ["a", "c", "d", "e\u{301}"]);
        assert!(
            read.changed
                .iter()
                .all(|(_, v)| v.region.as_deref() == Some("us"))
        );
        // The document before unreadable (never kept so): every vote is new, none removed.
        let back: &[u8] = br#"{"at":104,"region":"eu","up":["a"],"down":{"c":"timed out","d":""}}"#;
        let read = read_votes(back, Some(b"garbage")).unwrap_or_default();
        assert_eq!(names(&read.changed), ["a", "c", "d"]);
        assert!(read.removed.is_empty());
        // Names out of order (a writer that did not sort) read the same; twice is refused.
        let read = read_votes(br#"{"at":1,"up":["z","a"],"down":{"m":""}}"#, None);
        assert_eq!(
            read.map(|r| names(&r.changed).join(",")),
            Ok("a,m,z".to_string())
        );
        let twice = read_votes(br#"{"at":1,"up":["z","a","z"]}"#, None);
        assert!(twice.is_err_and(|e| e.contains("\"z\" is both")));
        let read = read_votes(br#"{"at":1,"down":{"z":"","a":"x"}}"#, None);
        assert_eq!(
            read.map(|r| names(&r.changed).join(",")),
            Ok("a,z".to_string())
        );
        let twice = read_votes(br#"{"at":1,"down":{"a":"","b":"","a":"x"}}"#, None);
        assert!(twice.is_err_and(|e| e.contains("\"a\" is both")));
    }
}
