//! [`HealthHandle`]: how the rest of gto talks to the running monitor (status, drains,
//! load pushes, reloads, flips), and the control messages behind it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::status::{
    Changed, ChangedMany, DrainNote, EndpointStatus, Flip, Load, Planned, StateError,
};
use super::store;
use super::votes::Vote;
use crate::loaded::Loaded;
use crate::routing::EndpointKey;

/// One voter's votes on one pool that changed, by member (None: withdrawn). A voter's
/// document is one pool's, and a mass outage hands the monitor each of its members' votes:
/// the members' names are kept in one buffer, not one allocation each (with a vote's
/// texts shared per document, a change allocates nothing of its own).
#[derive(Debug, Default)]
pub struct PoolVoteChanges {
    /// The pool.
    pub pool: String,
    /// The members' names, one after another.
    names: String,
    /// Each member's vote and where its name ends in `names`.
    votes: Vec<(u32, Option<Vote>)>,
}

impl PoolVoteChanges {
    /// Changes on `pool`, with room for `votes` of them.
    pub fn with_capacity(pool: String, votes: usize) -> Self {
        Self {
            pool,
            names: String::new(),
            votes: Vec::with_capacity(votes),
        }
    }

    /// Room for how many votes it has.
    pub(super) fn capacity(&self) -> usize {
        self.votes.capacity()
    }

    /// Empties it, keeping its memory.
    pub(super) fn clear(&mut self) {
        self.pool.clear();
        self.names.clear();
        self.votes.clear();
    }

    /// Adds `member`'s vote (None: withdrawn).
    pub fn push(&mut self, member: &str, vote: Option<Vote>) {
        self.names.push_str(member);
        let end = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.votes.push((end, vote));
    }

    /// How many votes changed.
    pub fn len(&self) -> usize {
        self.votes.len()
    }

    /// Whether none did.
    pub fn is_empty(&self) -> bool {
        self.votes.is_empty()
    }

    /// Room for `votes` more, their names `bytes` long in all.
    pub fn reserve(&mut self, votes: usize, bytes: usize) {
        self.votes.reserve_exact(votes);
        self.names.reserve_exact(bytes);
    }

    /// The `i`th member's name.
    pub fn member(&self, i: usize) -> &str {
        name_at(&self.names, &self.votes, i)
    }

    /// Takes the `i`th member's vote (None after it was taken, or withdrawn).
    pub fn take(&mut self, i: usize) -> Option<Vote> {
        self.votes.get_mut(i).and_then(|(_, vote)| vote.take())
    }
}

/// The `i`th of names kept one after another in `names`, each item holding where its name
/// ends ("" past the last).
pub fn name_at<'a, T>(names: &'a str, items: &[(u32, T)], i: usize) -> &'a str {
    name_ending(names, |j| items.get(j).map(|(end, _)| *end), i)
}

/// The `i`th of names kept one after another in `names`, where `end(j)` is where the
/// `j`th ends ("" past the last).
pub fn name_ending(names: &str, end: impl Fn(usize) -> Option<u32>, i: usize) -> &str {
    let start = i
        .checked_sub(1)
        .and_then(&end)
        .map_or(0, |end| end as usize);
    let end = end(i).map_or(start, |end| end as usize);
    names.get(start..end).unwrap_or_default()
}

/// Other instances' votes that changed, as read from one or more of their documents, by
/// voter in the order read. The monitor takes them together and looks at each endpoint
/// once for all the votes on it: in a mass outage every voter's vote on every endpoint
/// changes, and documents of several voters read together then cost one lookup and one
/// decision per endpoint, not one per vote.
#[derive(Debug, Default)]
pub struct VoteChanges {
    pub(super) by_voter: Vec<(String, Vec<PoolVoteChanges>)>,
    votes: usize,
}

impl VoteChanges {
    /// Adds `voter`'s changes (read after those already added).
    pub fn push(&mut self, voter: String, changes: Vec<PoolVoteChanges>) {
        let votes: usize = changes.iter().map(PoolVoteChanges::len).sum();
        if votes > 0 {
            self.votes += votes;
            self.by_voter.push((voter, changes));
        }
    }

    /// How many votes changed.
    pub fn len(&self) -> usize {
        self.votes
    }

    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.votes == 0
    }
}

/// Talks to the running monitor.
#[derive(Debug, Clone)]
pub struct HealthHandle {
    pub(super) control: mpsc::Sender<Control>,
    pub(super) flips: broadcast::Sender<Flip>,
    pub(super) loads: broadcast::Sender<(EndpointKey, Load)>,
    pub(super) verdicts: broadcast::Sender<(EndpointKey, Vote)>,
    pub(super) checked: Arc<AtomicUsize>,
    pub(super) saved: watch::Receiver<store::Written>,
    /// Probe outcomes from the fleet simulator ([`crate::health::simulate`]): a channel of
    /// their own beside the control channel, as real probes' reports have, so that they do
    /// not wait behind the fleet's votes.
    pub(super) simulated: mpsc::Sender<Vec<(EndpointKey, bool, u32)>>,
    /// Vote batches sent and not yet applied: at most [`VOTES_IN_FLIGHT`]. A reader of the
    /// fleet's documents waits for the monitor rather than filling the control channel
    /// with read votes: a backlog then stays in the store's watch as documents (fewer
    /// bytes than the lists read from them), and the lists the monitor takes are the ones
    /// just read, likely still in the cache (in a mass outage a backlog of lists was most
    /// of the fresh memory the process asked for).
    pub(super) votes_in_flight: Arc<tokio::sync::Semaphore>,
    /// Vote lists the monitor has applied, emptied for the reader to fill again (at most
    /// [`SPARE_VOTE_LISTS`]): in a mass outage the reader fills a list per document, and
    /// fresh ones, freed by the monitor on another thread, kept the allocator asking the
    /// system for fresh (zeroed) pages.
    pub(super) spare_lists: SpareLists,
}

/// Emptied vote lists, shared by the reader of the fleet's documents and the monitor.
pub(super) type SpareLists = Arc<std::sync::Mutex<Vec<PoolVoteChanges>>>;

/// Emptied vote lists kept for reuse: a few batches' worth of documents...
pub(super) const SPARE_VOTE_LISTS: usize = 512;

/// ...each with room for at most this many votes (a pool of thousands of endpoints gets
/// lists of its own size each time), so that what is kept stays under 10 MiB.
pub(super) const SPARE_LIST_VOTES: usize = 256;

/// Vote batches on their way to the monitor at once.
pub(super) const VOTES_IN_FLIGHT: usize = 2;

/// How long a change waits for the state file write that holds it.
const SAVE_WAIT: Duration = Duration::from_secs(10);

impl HealthHandle {
    /// Current status of every endpoint, in config order (empty once stopped). Built on
    /// request, so probing costs nothing for status nobody reads.
    pub async fn status(&self) -> Vec<EndpointStatus> {
        let (reply, status) = oneshot::channel();
        if self.control.send(Control::Status(reply)).await.is_err() {
            return Vec::new();
        }
        status.await.unwrap_or_default()
    }

    /// Drains an endpoint (no new answers) until `until`, or until undrained.
    pub async fn drain(
        &self,
        key: EndpointKey,
        until: Option<SystemTime>,
        note: DrainNote,
    ) -> Result<Changed, StateError> {
        self.ask(|reply| Control::Drain(key, until, note, reply))
            .await
    }

    /// One endpoint's drain, without copying every endpoint's status: None when the
    /// config has no such endpoint (or the monitor stopped), Some(None) when it is not
    /// drained, Some(Some(until)) when it is (until None: indefinitely).
    pub async fn drain_of(&self, key: EndpointKey) -> Option<Option<Option<SystemTime>>> {
        let (reply, answer) = oneshot::channel();
        self.control.send(Control::DrainOf(key, reply)).await.ok()?;
        answer.await.ok().flatten()
    }

    /// Ends a drain.
    pub async fn undrain(&self, key: EndpointKey) -> Result<Changed, StateError> {
        self.ask(|reply| Control::Undrain(key, reply)).await
    }

    /// Records a load report (the push API). `capacity` defaults to the configured one.
    pub async fn set_load(
        &self,
        key: EndpointKey,
        sessions: u32,
        capacity: Option<u32>,
    ) -> Result<Changed, StateError> {
        self.ask(|reply| Control::SetLoad(key, sessions, capacity, None, reply))
            .await
    }

    /// Takes a batch of real-user measurements (`POST /v1/rtt`): the number taken and the
    /// prefixes now kept, or every problem (nothing is taken then).
    pub async fn report_rtts(
        &self,
        batch: crate::health::rum::RumBatch,
    ) -> Result<(usize, usize), Vec<String>> {
        let (reply, answer) = oneshot::channel();
        if self.control.send(Control::Rum(batch, reply)).await.is_err() {
            return Err(vec!["shutting down".into()]);
        }
        answer
            .await
            .unwrap_or_else(|_| Err(vec!["shutting down".into()]))
    }

    /// Records a load report made at `at` (one shared by another instance of the fleet):
    /// its age counts toward the pool's `stale_after`.
    pub async fn report_load(
        &self,
        key: EndpointKey,
        sessions: u32,
        capacity: Option<u32>,
        at: SystemTime,
    ) -> Result<Changed, StateError> {
        self.ask(|reply| Control::SetLoad(key, sessions, capacity, Some(at), reply))
            .await
    }

    /// Drains endpoints together (`planned`; a `from` later than now is a maintenance
    /// window), or undrains them (None): one snapshot rebuild, one state file write.
    /// Nothing changes when one is not an endpoint of the config.
    pub async fn drain_set(
        &self,
        keys: Vec<EndpointKey>,
        planned: Option<Planned>,
    ) -> Result<ChangedMany, StateError> {
        self.drain_set_for(keys, planned, "requested").await
    }

    /// [`HealthHandle::drain_set`] as the fleet's store says: what changes nothing here
    /// (this instance's own change coming back) is neither logged nor sent as an event.
    pub async fn follow_drain_set(
        &self,
        keys: Vec<EndpointKey>,
        planned: Option<Planned>,
    ) -> Result<ChangedMany, StateError> {
        self.drain_set_for(keys, planned, "fleet").await
    }

    async fn drain_set_for(
        &self,
        keys: Vec<EndpointKey>,
        planned: Option<Planned>,
        why: &'static str,
    ) -> Result<ChangedMany, StateError> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::DrainSet(keys, planned, why, reply))
            .await
            .map_err(|_| StateError::Stopped)?;
        let AppliedMany {
            statuses,
            seq,
            published,
        } = answer.await.map_err(|_| StateError::Stopped)??;
        let not_saved = self.settled(seq, published).await;
        Ok(ChangedMany {
            statuses,
            not_saved,
        })
    }

    /// Sends a change and waits until it is applied, then until the state file write that
    /// holds it is done (changes that arrive together share one write).
    async fn ask(&self, control: impl FnOnce(Reply) -> Control) -> Result<Changed, StateError> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(control(reply))
            .await
            .map_err(|_| StateError::Stopped)?;
        let Applied {
            status,
            seq,
            published,
        } = answer.await.map_err(|_| StateError::Stopped)??;
        let not_saved = self.settled(seq, published).await;
        Ok(Changed { status, not_saved })
    }

    /// Waits until answers reflect a change, then until the state file write `seq` is
    /// done; why it is not saved, if it is not.
    async fn settled(
        &self,
        seq: Option<u64>,
        published: Option<oneshot::Receiver<u64>>,
    ) -> Option<String> {
        if let Some(published) = published {
            // Answers reflect the change once this returns; a closed channel is shutdown.
            let _ = published.await;
        }
        let seq = seq?;
        let mut saved = self.saved.clone();
        match tokio::time::timeout(SAVE_WAIT, saved.wait_for(|w| w.seq >= seq)).await {
            Ok(Ok(written)) => written.error.clone(),
            Ok(Err(_)) => Some("gto is shutting down; the state file is written last".into()),
            Err(_) => Some(format!(
                "the state file write did not finish within {}s",
                SAVE_WAIT.as_secs()
            )),
        }
    }

    /// How many endpoints have had at least one probe result since start (readiness, benches).
    pub fn checked(&self) -> usize {
        self.checked.load(Ordering::Relaxed)
    }

    /// Flips from now on; each arrives once the snapshot reflecting it is published.
    pub fn subscribe(&self) -> broadcast::Receiver<Flip> {
        self.flips.subscribe()
    }

    /// Loads read by this instance's probes from now on (the fleet shares them).
    pub fn subscribe_loads(&self) -> broadcast::Receiver<(EndpointKey, Load)> {
        self.loads.subscribe()
    }

    /// This instance's own verdicts as they change (the fleet publishes them).
    pub fn subscribe_verdicts(&self) -> broadcast::Receiver<(EndpointKey, Vote)> {
        self.verdicts.subscribe()
    }

    /// This instance's current verdicts on the endpoints it probes.
    pub async fn verdicts(&self) -> Vec<(EndpointKey, Vote)> {
        let (reply, verdicts) = oneshot::channel();
        if self.control.send(Control::Verdicts(reply)).await.is_err() {
            return Vec::new();
        }
        verdicts.await.unwrap_or_default()
    }

    /// For the fleet simulator only ([`crate::health::simulate`]): `count` probe outcomes
    /// (up or not) of each endpoint's main check, folded in as reports of its probes.
    #[doc(hidden)]
    pub async fn simulate_reports(&self, outcomes: Vec<(EndpointKey, bool, u32)>) {
        let _ = self.simulated.send(outcomes).await;
    }

    /// An empty list of changes on `pool`, one the monitor has applied when there is one
    /// to fill again.
    pub fn vote_list(&self, pool: &str) -> PoolVoteChanges {
        let spare = self
            .spare_lists
            .lock()
            .ok()
            .and_then(|mut spare| spare.pop());
        let mut list = spare.unwrap_or_default();
        list.pool.push_str(pool);
        list
    }

    /// Other instances' verdicts that changed (None: withdrawn), applied together.
    pub async fn set_votes(&self, votes: VoteChanges) {
        if votes.is_empty() {
            return;
        }
        let Ok(slot) = Arc::clone(&self.votes_in_flight).acquire_owned().await else {
            return;
        };
        let _ = self.control.send(Control::Votes(votes, slot)).await;
    }

    /// Replaces every other instance's verdicts (after reading the store again).
    pub async fn replace_votes(&self, votes: HashMap<EndpointKey, BTreeMap<String, Vote>>) {
        let _ = self.control.send(Control::ReplaceVotes(votes)).await;
    }

    /// Whether the fleet's votes count: false while its store is unreachable, when this
    /// instance's own verdicts decide.
    pub async fn set_voting(&self, voting: bool) {
        let _ = self.control.send(Control::Voting(voting)).await;
    }

    /// Reports flips, drains and watermark crossings to `events` from now on.
    pub async fn report_to(&self, events: crate::events::Events) {
        let _ = self.control.send(Control::ReportTo(events)).await;
    }

    /// Applies a reloaded config: keeps state by identity, restarts only changed probes.
    /// Returns once status reflects the new config.
    pub async fn reconfigure(&self, loaded: Arc<Loaded>) {
        let (done, applied) = oneshot::channel();
        // A closed channel means shutdown is under way; nothing to reconfigure.
        if self
            .control
            .send(Control::Reconfigure(loaded, done))
            .await
            .is_ok()
        {
            let _ = applied.await;
        }
    }
}

/// A change the monitor applied: the endpoint's status after it, the state file sequence
/// number that will hold it, and when the change alters answers, the receiver told once
/// the snapshot showing it is live (the caller waits for it, not the monitor).
pub(super) struct Applied {
    pub(super) status: EndpointStatus,
    pub(super) seq: Option<u64>,
    pub(super) published: Option<oneshot::Receiver<u64>>,
}

pub(super) type Reply = oneshot::Sender<Result<Applied, StateError>>;

/// A change to several endpoints, as [`Applied`] is to one.
pub(super) struct AppliedMany {
    pub(super) statuses: Vec<EndpointStatus>,
    pub(super) seq: Option<u64>,
    pub(super) published: Option<oneshot::Receiver<u64>>,
}

pub(super) enum Control {
    Drain(EndpointKey, Option<SystemTime>, DrainNote, Reply),
    /// Drains (or, with None, undrains) endpoints together; a later `from` schedules.
    /// The `&str` says who asks: "requested" (the admin API) or "fleet".
    DrainSet(
        Vec<EndpointKey>,
        Option<Planned>,
        &'static str,
        oneshot::Sender<Result<AppliedMany, StateError>>,
    ),
    /// One endpoint's drain: None when no such endpoint, Some(None) when not drained,
    /// Some(Some(until)) when drained (until None: indefinitely).
    DrainOf(
        EndpointKey,
        oneshot::Sender<Option<Option<Option<SystemTime>>>>,
    ),
    Reconfigure(Arc<Loaded>, oneshot::Sender<()>),
    SetLoad(EndpointKey, u32, Option<u32>, Option<SystemTime>, Reply),
    Status(oneshot::Sender<Vec<EndpointStatus>>),
    Undrain(EndpointKey, Reply),
    /// Other instances' verdicts that changed (None: withdrawn).
    Votes(VoteChanges, tokio::sync::OwnedSemaphorePermit),
    /// Every other instance's verdicts, read again from the store.
    ReplaceVotes(HashMap<EndpointKey, BTreeMap<String, Vote>>),
    /// Whether the fleet's votes count (the store is reachable).
    Voting(bool),
    /// This instance's own verdicts on the endpoints it probes.
    Verdicts(oneshot::Sender<Vec<(EndpointKey, Vote)>>),
    /// Where to report changes as events.
    ReportTo(crate::events::Events),
    /// Real-user measurements (`POST /v1/rtt`): taken whole, or refused with every
    /// problem; the reply is the number taken and the prefixes kept.
    Rum(
        crate::health::rum::RumBatch,
        oneshot::Sender<Result<(usize, usize), Vec<String>>>,
    ),
    /// Kills every probe task without telling the endpoints: a checker that died.
    #[cfg(test)]
    KillProbes,
}

impl Control {
    /// Whether it can start, end or move a drain or a window (which the monitor's next
    /// deadline depends on). Votes, status and loads cannot.
    pub(super) fn may_change_drains(&self) -> bool {
        matches!(
            self,
            Control::Drain(..)
                | Control::DrainSet(..)
                | Control::Undrain(..)
                | Control::Reconfigure(..)
        )
    }
}
