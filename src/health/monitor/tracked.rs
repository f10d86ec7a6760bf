//! What the monitor keeps: per endpoint ([`Tracked`]), per probe target (shared by the
//! endpoints with the same check and address), and the state file's sink.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Check, Probe, VoteRule};
use crate::health::scheduler::TargetId;
use crate::health::state::{Health, Hysteresis};
use crate::health::status::{Drain, Load};
use crate::health::store;
use crate::health::votes::{Vote, VoteCounts};
use crate::policy::load::{LoadTracker, LoadView};
use crate::routing::{EndpointKey, Withheld};

/// Another instance of the fleet as the monitor knows it: a number in [`Voters`], so that
/// an endpoint's votes are kept and found by integer (a mass outage finds each of 29
/// voters' votes on 10,000 endpoints; by name that was most of the monitor's time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct VoterId(u32);

/// The voters seen since start, by name and by number (never forgotten: a fleet has a few
/// dozen instances, and one that restarts comes back under its name).
#[derive(Default)]
pub(super) struct Voters {
    ids: std::collections::HashMap<String, VoterId>,
    names: Vec<String>,
}

impl Voters {
    /// The number of `name`, given one if new.
    pub(super) fn id(&mut self, name: &str) -> VoterId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = VoterId(u32::try_from(self.names.len()).unwrap_or(u32::MAX));
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    /// The name of `id`.
    pub(super) fn name(&self, id: VoterId) -> &str {
        usize::try_from(id.0)
            .ok()
            .and_then(|i| self.names.get(i))
            .map_or("", String::as_str)
    }
}

/// The endpoints the monitor keeps, by key and by slot: a vote table finds the endpoints
/// whose votes changed by slot, without hashing and comparing their keys (a lookup by
/// key was three cache misses per vote in a mass outage). A slot is an endpoint's until
/// one is removed, which only a new config does; the tables are seated again after it
/// ([`VoteTable::new`]).
#[derive(Default)]
pub(super) struct Members {
    slots: HashMap<EndpointKey, usize, foldhash::fast::RandomState>,
    entries: Vec<(EndpointKey, Tracked)>,
}

impl Members {
    /// Adds `key` (replacing what it held).
    pub(super) fn insert(&mut self, key: EndpointKey, tracked: Tracked) {
        match self.slots.get(&key) {
            Some(&slot) => {
                if let Some(entry) = self.entries.get_mut(slot) {
                    entry.1 = tracked;
                }
            }
            None => {
                self.slots.insert(key.clone(), self.entries.len());
                self.entries.push((key, tracked));
            }
        }
    }

    /// Takes `key` out (the last slot's endpoint moves into its slot).
    pub(super) fn remove(&mut self, key: &EndpointKey) -> Option<Tracked> {
        let slot = self.slots.remove(key)?;
        let (_, tracked) = self.entries.swap_remove(slot);
        if let Some((moved, _)) = self.entries.get(slot) {
            self.slots.insert(moved.clone(), slot);
        }
        Some(tracked)
    }

    pub(super) fn get(&self, key: &EndpointKey) -> Option<&Tracked> {
        let slot = *self.slots.get(key)?;
        self.entries.get(slot).map(|(_, t)| t)
    }

    pub(super) fn get_mut(&mut self, key: &EndpointKey) -> Option<&mut Tracked> {
        let slot = *self.slots.get(key)?;
        self.entries.get_mut(slot).map(|(_, t)| t)
    }

    pub(super) fn contains_key(&self, key: &EndpointKey) -> bool {
        self.slots.contains_key(key)
    }

    /// The endpoint in `slot`.
    pub(super) fn at_mut(&mut self, slot: usize) -> Option<(&EndpointKey, &mut Tracked)> {
        self.entries.get_mut(slot).map(|(key, t)| (&*key, t))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Tracked> {
        self.entries.iter().map(|(_, t)| t)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&EndpointKey, &Tracked)> {
        self.entries.iter().map(|(key, t)| (key, t))
    }

    /// In slot order.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&EndpointKey, &mut Tracked)> {
        self.entries.iter_mut().map(|(key, t)| (&*key, t))
    }
}

/// Other instances' votes on one pool's endpoints (never this instance's own): a column
/// per voter in the pool's member order, and each member's counts per check kept as they
/// change ([`VoteCounts`]). A member's place in the order is its seat
/// ([`Tracked::seat`]).
///
/// A voter's document lists its verdicts in member order, so the changes one brings are
/// applied walking down that voter's column and the counts beside it. A mass outage
/// changes each of 29 voters' votes on 10,000 endpoints; held per endpoint, each change
/// cost two cache misses (the voter's place among the endpoint's voters, then its vote)
/// in memory no cache holds, the monitor's largest cost in the fleet simulator.
#[derive(Default)]
pub(super) struct VoteTable {
    /// The members' names in name order, in one buffer: each seat's name ends at its
    /// entry.
    names: String,
    ends: Vec<u32>,
    /// Each voter's votes by seat, in voter order, with how many it holds (a column
    /// that holds none goes).
    columns: Vec<Column>,
    /// Counted on the main check and on the IPv6 address's, by seat.
    counts: Vec<[VoteCounts; 2]>,
    /// Each seat's endpoint's slot in [`Members`].
    slots: Vec<u32>,
}

/// One voter's votes on a pool's endpoints, by seat.
struct Column {
    voter: VoterId,
    votes: Vec<Option<Vote>>,
    held: usize,
}

impl VoteTable {
    /// A table for `members` (any order; a name given twice has one seat), holding what
    /// `before` held on them.
    pub(super) fn new<'a>(
        members: impl IntoIterator<Item = &'a str>,
        before: Option<VoteTable>,
        region: Option<&str>,
    ) -> Self {
        let mut sorted: Vec<&str> = members.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut table = Self {
            names: String::with_capacity(sorted.iter().map(|m| m.len()).sum()),
            ends: Vec::with_capacity(sorted.len()),
            columns: Vec::new(),
            counts: vec![[VoteCounts::default(); 2]; sorted.len()],
            slots: vec![u32::MAX; sorted.len()],
        };
        for member in &sorted {
            table.names.push_str(member);
            table
                .ends
                .push(u32::try_from(table.names.len()).unwrap_or(u32::MAX));
        }
        let Some(before) = before else {
            return table;
        };
        // Where each seat before sits now.
        let seats: Vec<Option<usize>> = (0..before.ends.len())
            .map(|old| table.seat(before.member(old)))
            .collect();
        for column in before.columns {
            for (vote, seat) in column.votes.into_iter().zip(&seats) {
                if let (Some(vote), Some(seat)) = (vote, seat) {
                    table.set(column.voter, *seat, Some(vote), region);
                }
            }
        }
        table
    }

    /// The member at `seat` ("" past the last).
    pub(super) fn member(&self, seat: usize) -> &str {
        crate::health::name_ending(&self.names, |i| self.ends.get(i).copied(), seat)
    }

    /// Records that `seat`'s endpoint is in `slot` of [`Members`].
    pub(super) fn set_slot(&mut self, seat: usize, slot: usize) {
        if let Some(at) = self.slots.get_mut(seat) {
            *at = u32::try_from(slot).unwrap_or(u32::MAX);
        }
    }

    /// The slot of `seat`'s endpoint in [`Members`].
    pub(super) fn slot(&self, seat: usize) -> Option<usize> {
        self.slots
            .get(seat)
            .filter(|slot| **slot != u32::MAX)
            .map(|slot| *slot as usize)
    }

    /// The seat of `member`.
    pub(super) fn seat(&self, member: &str) -> Option<usize> {
        let (mut low, mut high) = (0, self.ends.len());
        while low < high {
            let mid = low + (high - low) / 2;
            match self.member(mid).cmp(member) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The seat of `member`, looked at `next` first (the changes of one document come in
    /// member order, so mostly it is there).
    pub(super) fn seat_from(&self, next: usize, member: &str) -> Option<usize> {
        if next < self.ends.len() && self.member(next) == member {
            return Some(next);
        }
        self.seat(member)
    }

    /// The votes on `seat`, by voter.
    pub(super) fn votes(&self, seat: usize) -> impl Iterator<Item = (VoterId, &Vote)> {
        self.columns.iter().filter_map(move |column| {
            column
                .votes
                .get(seat)
                .and_then(Option::as_ref)
                .map(|vote| (column.voter, vote))
        })
    }

    /// The counts on `seat`'s main check and its IPv6 address's.
    pub(super) fn counts(&self, seat: usize) -> [VoteCounts; 2] {
        self.counts.get(seat).copied().unwrap_or_default()
    }

    fn column_of(&self, voter: VoterId) -> Option<usize> {
        self.columns
            .binary_search_by_key(&voter, |column| column.voter)
            .ok()
    }

    /// `voter`'s column, made when it has none.
    pub(super) fn column(&mut self, voter: VoterId) -> usize {
        match self
            .columns
            .binary_search_by_key(&voter, |column| column.voter)
        {
            Ok(i) => i,
            Err(i) => {
                let column = Column {
                    voter,
                    votes: vec![None; self.ends.len()],
                    held: 0,
                };
                self.columns.insert(i, column);
                i
            }
        }
    }

    /// Sets (or with None removes) `voter`'s vote on `seat`, counted for an instance in
    /// `region`; returns the vote it replaced.
    pub(super) fn set(
        &mut self,
        voter: VoterId,
        seat: usize,
        vote: Option<Vote>,
        region: Option<&str>,
    ) -> Option<Vote> {
        let column = match (&vote, self.column_of(voter)) {
            (_, Some(column)) => column,
            (Some(_), None) => self.column(voter),
            (None, None) => return None,
        };
        let before = self.set_in(column, seat, vote, region);
        self.drop_if_empty(column);
        before
    }

    /// [`VoteTable::set`] in a column found before ([`VoteTable::column`]); a column left
    /// empty stays until [`VoteTable::drop_if_empty`]. A vote whose verdict (up or down)
    /// is the one held keeps the held vote's `since` (a document says only when it was
    /// written).
    pub(super) fn set_in(
        &mut self,
        column: usize,
        seat: usize,
        vote: Option<Vote>,
        region: Option<&str>,
    ) -> Option<Vote> {
        let (Some(column), Some(counts)) =
            (self.columns.get_mut(column), self.counts.get_mut(seat))
        else {
            return None;
        };
        let held = column.votes.get_mut(seat)?;
        let count = |counts: &mut [VoteCounts; 2], vote: &Vote, add: bool| {
            for (v6_check, counts) in [false, true].into_iter().zip(counts) {
                if add {
                    counts.add(vote, v6_check, region);
                } else {
                    counts.remove(vote, v6_check, region);
                }
            }
        };
        let mut vote = vote;
        if let (Some(vote), Some(held)) = (vote.as_mut(), held.as_ref())
            && held.up == vote.up
        {
            vote.since = held.since;
        }
        if let Some(vote) = &vote {
            count(counts, vote, true);
        }
        let before = std::mem::replace(held, vote);
        if let Some(before) = &before {
            count(counts, before, false);
        }
        column.held = (column.held + usize::from(held.is_some()))
            .saturating_sub(usize::from(before.is_some()));
        before
    }

    /// The vote at `column` and `seat`.
    pub(super) fn get_in(&self, column: usize, seat: usize) -> Option<&Vote> {
        self.columns.get(column)?.votes.get(seat)?.as_ref()
    }

    /// Removes `column` when it holds no vote (a voter gone), so that voters come and go
    /// without the table growing.
    pub(super) fn drop_if_empty(&mut self, column: usize) {
        if self.columns.get(column).is_some_and(|c| c.held == 0) {
            self.columns.remove(column);
        }
    }

    /// Removes every vote.
    pub(super) fn clear(&mut self) {
        self.columns.clear();
        self.counts.fill([VoteCounts::default(); 2]);
    }
}

/// What one check's results made of an endpoint (or, with `family = "each"`, of one of
/// its address families).
#[derive(Clone)]
pub(super) struct CheckState {
    /// This instance's own verdict.
    pub(super) hysteresis: Hysteresis,
    /// When the own verdict last changed.
    pub(super) since: SystemTime,
    /// The health answers use: the own verdict, or the fleet's votes combined.
    pub(super) effective: Health,
    /// When `effective` last changed.
    pub(super) effective_since: SystemTime,
    /// The last decision's tally (voters, down), when the votes decided.
    pub(super) tally: Option<(usize, usize)>,
    /// The last probe's round trip.
    pub(super) rtt: Option<Duration>,
    /// The last successful probe's connect time and time to first byte.
    pub(super) timings: crate::health::scheduler::Timings,
    /// The server certificate's expiry, as the last TLS or HTTPS probe read it.
    pub(super) cert: Option<crate::health::probe::CertExpiry>,
    pub(super) last_check: Option<SystemTime>,
    pub(super) last_error: Option<String>,
}

impl CheckState {
    /// As the state file kept it: it counts until a fresh result says otherwise.
    pub(super) fn restored(record: &store::FamilyRecord, check: &Check) -> Self {
        let mut state = Self::new(
            record.health,
            crate::time::from_unix_clamped(record.since),
            check,
        );
        state.last_check = record.checked.map(crate::time::from_unix_clamped);
        state.last_error = record.reason.clone();
        state
    }

    /// Starts at `health`, as of `since`.
    pub(super) fn new(health: Health, since: SystemTime, check: &Check) -> Self {
        Self {
            hysteresis: Hysteresis::new(health, check.rise, check.fall),
            since,
            effective: health,
            effective_since: since,
            tally: None,
            rtt: None,
            timings: Default::default(),
            cert: None,
            last_check: None,
            last_error: None,
        }
    }
}

/// What the monitor keeps per endpoint.
pub(super) struct Tracked {
    /// The results of its check (of its IPv4 address, when `v6` is set).
    pub(super) main: CheckState,
    /// `family = "each"` on a dual-stack endpoint: the results of its IPv6 address's check.
    pub(super) v6: Option<CheckState>,
    /// Its place in its pool's [`VoteTable`], where the other instances' verdicts on it
    /// are held (`usize::MAX` until seated: no votes, nothing counted).
    pub(super) seat: usize,
    /// `gto_member_votes` for it (down, up), found once: a mass outage sets them once per
    /// voter and endpoint, and finding a gauge by its labels costs allocations and a lookup.
    pub(super) votes_gauges: Option<(metrics::Gauge, metrics::Gauge)>,
    /// The pool's rule for combining them.
    pub(super) rule: VoteRule,
    pub(super) stale: bool,
    pub(super) check: Check,
    pub(super) drain: Option<Drain>,
    /// Who drained it and why (empty when not drained or unknown).
    pub(super) drain_note: crate::health::status::DrainNote,
    /// A maintenance window not yet begun.
    pub(super) window: Option<crate::health::status::Window>,
    pub(super) load: Option<Load>,
    /// Configured capacity, the default for load reports.
    pub(super) capacity: Option<u32>,
    /// Smoothing, watermarks, slow start.
    pub(super) tracker: LoadTracker,
    /// The load view the builder last got.
    pub(super) sent: LoadView,
    /// This instance's round trips to it, smoothed.
    pub(super) rtt: crate::health::rtt::RttFilter,
    /// The round trips by vantage the builder last got.
    pub(super) rtts_sent: Arc<[crate::policy::latency::VantageRtt]>,
    /// A latency ranking reads its pool: its round trip is shared with the fleet.
    pub(super) shares_rtt: bool,
}

impl Tracked {
    /// Its drain has an end, and `wall` is past it.
    pub(super) fn drain_over(&self, wall: SystemTime) -> bool {
        self.drain
            .and_then(|d| d.until)
            .is_some_and(|until| until <= wall)
    }

    /// Its maintenance window, once `wall` has reached the window's start.
    pub(super) fn window_begun(&self, wall: SystemTime) -> Option<&crate::health::status::Window> {
        self.window.as_ref().filter(|w| w.from <= wall)
    }

    /// The endpoint's health as answers use it: up while any of its checks says up.
    pub(super) fn effective(&self) -> Health {
        match &self.v6 {
            Some(v6) if v6.effective == Health::Up => Health::Up,
            _ => self.main.effective,
        }
    }

    /// This instance's own verdict on the endpoint: up while any of its checks says up.
    pub(super) fn local(&self) -> Health {
        match &self.v6 {
            Some(v6) if v6.hysteresis.state() == Health::Up => Health::Up,
            _ => self.main.hysteresis.state(),
        }
    }

    /// When its effective health last changed.
    pub(super) fn effective_since(&self) -> SystemTime {
        match &self.v6 {
            Some(v6) if v6.effective_since > self.main.effective_since => v6.effective_since,
            _ => self.main.effective_since,
        }
    }

    /// The families left out of answers while the endpoint is up (one family's check
    /// down, the other's up).
    pub(super) fn withheld(&self) -> Withheld {
        let Some(v6) = &self.v6 else {
            return Withheld::default();
        };
        let (v4_up, v6_up) = (
            self.main.effective == Health::Up,
            v6.effective == Health::Up,
        );
        Withheld {
            v4: !v4_up && v6_up,
            v6: v4_up && !v6_up,
        }
    }

    /// The check a probe target serves.
    pub(super) fn state_mut(&mut self, which: Which) -> Option<&mut CheckState> {
        match which {
            Which::Main => Some(&mut self.main),
            Which::V6 => self.v6.as_mut(),
        }
    }
}

/// Which of an endpoint's checks a probe target serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    /// Its check (of its IPv4 address when the families are probed apart).
    Main,
    /// `family = "each"`: its IPv6 address's check.
    V6,
}

/// A running probe task and the endpoints it serves.
pub(super) struct Target {
    pub(super) id: TargetId,
    pub(super) members: Vec<(EndpointKey, Which)>,
    pub(super) token: CancellationToken,
    /// When its last probe finished, in ms since [`Monitor::epoch`]; written by the probe
    /// task itself, so staleness is about probes, not about how far behind the monitor is.
    pub(super) heartbeat: Arc<AtomicU64>,
}

/// Probe tasks are shared by endpoints with the same probe and schedule.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct TargetKey {
    pub(super) probe: Probe,
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
}

/// The coalesced state file writer, and which changes it holds.
pub(super) struct StateSink {
    pub(super) writer: store::Writer,
    /// Sequence number of the newest change.
    pub(super) seq: u64,
    /// Sequence number of the newest change handed to the writer.
    pub(super) sent: u64,
    /// A write is under way.
    pub(super) in_flight: bool,
    /// Outcomes, for changes waiting to be acknowledged.
    pub(super) saved: watch::Sender<store::Written>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(up: bool, since: u64, error: &str) -> Vote {
        Vote {
            up,
            since,
            error: (!error.is_empty()).then(|| error.into()),
            rtt_us: None,
            region: None,
            stale: false,
            at: since,
            v4: None,
            v6: None,
        }
    }

    /// `voter`'s vote on `seat`.
    fn vote_of(table: &VoteTable, voter: u32, seat: usize) -> Option<&Vote> {
        table
            .votes(seat)
            .find(|(v, _)| *v == VoterId(voter))
            .map(|(_, vote)| vote)
    }

    fn counted(table: &VoteTable, seat: usize) -> VoteCounts {
        let mut counted = VoteCounts::default();
        for (_, vote) in table.votes(seat) {
            counted.add(vote, false, None);
        }
        counted
    }

    #[test]
    fn a_vote_table_keeps_voters_in_order_counts_and_the_since_of_an_unchanged_verdict() {
        let mut table = VoteTable::new(["m2", "m1", "m3", "m1"], None, None);
        // Members in name order, one seat each.
        let seats: Vec<Option<usize>> = ["m1", "m2", "m3", "m4"].map(|m| table.seat(m)).into();
        assert_eq!(seats, [Some(0), Some(1), Some(2), None]);
        assert_eq!(table.seat_from(1, "m2"), Some(1));
        assert_eq!(table.seat_from(0, "m3"), Some(2));
        // Voters arrive in any order and are kept in number order.
        for voter in [5, 1, 3] {
            assert_eq!(
                table.set(VoterId(voter), 1, Some(vote(true, 100, "")), None),
                None
            );
        }
        let order: Vec<u32> = table.votes(1).map(|(voter, _)| voter.0).collect();
        assert_eq!(order, [1, 3, 5]);
        assert_eq!(table.votes(0).count(), 0);
        // Down, then down with another error: the second keeps the first's since.
        table.set(VoterId(3), 1, Some(vote(false, 110, "refused")), None);
        let before = table.set(VoterId(3), 1, Some(vote(false, 120, "timed out")), None);
        assert_eq!(before.map(|v| v.error), Some(Some("refused".into())));
        let now = vote_of(&table, 3, 1).map(|v| (v.since, v.at, v.error.clone()));
        assert_eq!(now, Some((110, 120, Some("timed out".into()))));
        // Up again: since moves.
        table.set(VoterId(3), 1, Some(vote(true, 130, "")), None);
        assert_eq!(vote_of(&table, 3, 1).map(|v| v.since), Some(130));
        // Counted as they change: one down of three, then removed.
        table.set(VoterId(1), 1, Some(vote(false, 140, "refused")), None);
        assert_eq!(table.counts(1)[0], counted(&table, 1));
        assert_eq!(counted(&table, 1).tally(), (3, 1));
        assert!(table.set(VoterId(1), 1, None, None).is_some());
        assert!(table.set(VoterId(1), 1, None, None).is_none());
        assert_eq!(vote_of(&table, 1, 1), None);
        assert_eq!(table.counts(1)[0], counted(&table, 1));
        assert_eq!(table.votes(1).count(), 2);
        // A voter whose last vote went has no column left.
        assert_eq!(table.columns.len(), 2);
    }

    #[test]
    fn a_new_vote_table_keeps_the_votes_on_the_members_that_stay() {
        let mut table = VoteTable::new(["a", "b", "c"], None, None);
        table.set(VoterId(1), 0, Some(vote(false, 10, "refused")), None);
        table.set(VoterId(1), 2, Some(vote(true, 20, "")), None);
        table.set(VoterId(2), 1, Some(vote(false, 30, "refused")), None);
        // "b" leaves, "bb" comes: "c" moves a seat on, with its vote and count.
        let table = VoteTable::new(["c", "bb", "a"], Some(table), None);
        assert_eq!(table.seat("c"), Some(2));
        assert_eq!(vote_of(&table, 1, 2).map(|v| v.since), Some(20));
        assert_eq!(vote_of(&table, 1, 0).map(|v| v.since), Some(10));
        assert_eq!(table.votes(1).count(), 0);
        for seat in 0..3 {
            assert_eq!(table.counts(seat)[0], counted(&table, seat));
        }
        assert_eq!(counted(&table, 0).tally(), (1, 1));
        // Voter 2's only vote was on "b": its column went with it.
        assert_eq!(table.columns.len(), 1);
    }
}
