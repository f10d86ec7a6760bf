//! What the monitor keeps: per endpoint ([`Tracked`]), per probe target (shared by the
//! endpoints with the same check and address), and the state file's sink.

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

/// Other instances' votes on an endpoint, by voter (never this instance's own), with
/// their counts per check kept as they change ([`VoteCounts`]).
///
/// The voters' numbers are kept in order in a vector of their own, beside their votes
/// (`votes[i]` is `voters[i]`'s): a mass outage changes each of 29 voters' votes on every
/// endpoint, and finding one is then a search of a few cache lines of numbers and one
/// touch of the vote, where a tree of votes cost a cache miss per node (the search was the
/// monitor's largest cost in the fleet simulator).
#[derive(Default)]
pub(super) struct HeldVotes {
    voters: Vec<VoterId>,
    votes: Vec<Vote>,
    /// Counted on the main check and on the IPv6 address's.
    counts: [VoteCounts; 2],
}

impl HeldVotes {
    /// The votes by voter.
    pub(super) fn iter(&self) -> impl Iterator<Item = (VoterId, &Vote)> {
        self.voters.iter().copied().zip(&self.votes)
    }

    /// `voter`'s vote.
    pub(super) fn get(&self, voter: VoterId) -> Option<&Vote> {
        let i = self.voters.binary_search(&voter).ok()?;
        self.votes.get(i)
    }

    /// The counts on the main check or (`v6_check`) the IPv6 address's.
    pub(super) fn counts(&self, v6_check: bool) -> VoteCounts {
        self.counts[usize::from(v6_check)]
    }

    /// Sets (or with None removes) `voter`'s vote, counted for an instance in `region`;
    /// returns the vote it replaced. A vote whose verdict (up or down) is the one held
    /// keeps the held vote's `since` (a document says only when it was written).
    pub(super) fn set(
        &mut self,
        voter: VoterId,
        vote: Option<Vote>,
        region: Option<&str>,
    ) -> Option<Vote> {
        if let Some(vote) = &vote {
            self.count(vote, region, true);
        }
        let before = match (self.voters.binary_search(&voter), vote) {
            (Ok(i), Some(mut vote)) => self.votes.get_mut(i).map(|held| {
                if held.up == vote.up {
                    vote.since = held.since;
                }
                std::mem::replace(held, vote)
            }),
            (Ok(i), None) => {
                self.voters.remove(i);
                Some(self.votes.remove(i))
            }
            (Err(i), Some(vote)) => {
                self.voters.insert(i, voter);
                self.votes.insert(i, vote);
                None
            }
            (Err(_), None) => None,
        };
        if let Some(before) = &before {
            self.count(before, region, false);
        }
        before
    }

    /// Replaces them all.
    pub(super) fn replace(
        &mut self,
        votes: impl IntoIterator<Item = (VoterId, Vote)>,
        region: Option<&str>,
    ) {
        *self = Self::default();
        for (voter, vote) in votes {
            self.set(voter, Some(vote), region);
        }
    }

    fn count(&mut self, vote: &Vote, region: Option<&str>, add: bool) {
        for (v6_check, counts) in [false, true].into_iter().zip(&mut self.counts) {
            if add {
                counts.add(vote, v6_check, region);
            } else {
                counts.remove(vote, v6_check, region);
            }
        }
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
    /// Other instances' verdicts, by voter (never this instance's own), counted.
    pub(super) votes: HeldVotes,
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

    #[test]
    fn held_votes_keep_order_counts_and_the_since_of_an_unchanged_verdict() {
        let mut held = HeldVotes::default();
        // Voters arrive in any order and are kept in number order.
        for voter in [5, 1, 3] {
            assert_eq!(
                held.set(VoterId(voter), Some(vote(true, 100, "")), None),
                None
            );
        }
        let order: Vec<u32> = held.iter().map(|(voter, _)| voter.0).collect();
        assert_eq!(order, [1, 3, 5]);
        // Down, then down with another error: the second keeps the first's since.
        held.set(VoterId(3), Some(vote(false, 110, "refused")), None);
        let before = held.set(VoterId(3), Some(vote(false, 120, "timed out")), None);
        assert_eq!(before.map(|v| v.error), Some(Some("refused".into())));
        let now = held
            .get(VoterId(3))
            .map(|v| (v.since, v.at, v.error.clone()));
        assert_eq!(now, Some((110, 120, Some("timed out".into()))));
        // Up again: since moves.
        held.set(VoterId(3), Some(vote(true, 130, "")), None);
        assert_eq!(held.get(VoterId(3)).map(|v| v.since), Some(130));
        // Counted as they change: one down of three, then removed.
        held.set(VoterId(1), Some(vote(false, 140, "refused")), None);
        let mut counted = VoteCounts::default();
        for (_, vote) in held.iter() {
            counted.add(vote, false, None);
        }
        assert_eq!(held.counts(false), counted);
        assert!(held.set(VoterId(1), None, None).is_some());
        assert!(held.set(VoterId(1), None, None).is_none());
        assert_eq!(held.get(VoterId(1)), None);
        let mut counted = VoteCounts::default();
        for (_, vote) in held.iter() {
            counted.add(vote, false, None);
        }
        assert_eq!(held.counts(false), counted);
        assert_eq!(held.iter().count(), 2);
    }
}
