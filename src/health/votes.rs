//! Health seen from several places: each instance of a fleet publishes its own verdict on
//! every endpoint it probes, and a pool's [`VoteRule`] combines the fresh verdicts —
//! this instance's included — into the health that answers use.
//!
//! A verdict is fresh while the instance that made it is alive: verdicts live under the
//! voter's lease in the fleet store, are written only when they change (one document per
//! pool, [`crate::cluster::votes`]), so their number of writes does not depend on the
//! probe interval; a voter whose probes stop reporting publishes itself as stale, and one
//! that dies loses its verdicts with its lease. Too few fresh voters, no fleet, or the
//! fleet store unreachable: this instance's own verdict decides, exactly as without
//! voting. The votes on each endpoint are counted as they change ([`VoteCounts`]), so a
//! decision costs the same however many voters there are.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::state::Health;
use crate::config::{DownWhen, VoteRule, VoteScope};

/// One instance's verdict on one endpoint, as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    /// Up (true) or down.
    pub up: bool,
    /// Since when (Unix seconds).
    pub since: u64,
    /// The last probe's error, when down (shared: a document's votes mostly carry the
    /// same few errors, and a mass outage holds one per voter and endpoint).
    pub error: Option<Arc<str>>,
    /// The voter's smoothed round trip to the endpoint, in microseconds (moved only
    /// beyond `[latency]`'s band; [`crate::health::rtt`]).
    #[serde(default)]
    pub rtt_us: Option<u32>,
    /// The voter's region, for pools that vote by region (shared by a document's votes).
    pub region: Option<Arc<str>>,
    /// The voter's probes stopped reporting: the verdict does not count.
    #[serde(default)]
    pub stale: bool,
    /// When it was written (Unix seconds).
    pub at: u64,
    /// `family = "each"` on a dual-stack endpoint: the IPv4 address's check alone (`up`
    /// is then the endpoint's: up while either family is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<bool>,
    /// The same for the IPv6 address's check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<bool>,
}

impl Vote {
    /// The same vote but for when it was written: a voter's document is written again
    /// whole when any of its endpoints changes, and the others' votes in it are then
    /// news to nobody (a mass outage would otherwise re-decide every endpoint of a pool
    /// once per rewrite rather than once per verdict).
    pub fn same_verdict(&self, other: &Self) -> bool {
        let Self {
            up,
            since,
            error,
            rtt_us,
            region,
            stale,
            at: _,
            v4,
            v6,
        } = self;
        *up == other.up
            && *since == other.since
            && *error == other.error
            && *rtt_us == other.rtt_us
            && *region == other.region
            && *stale == other.stale
            && *v4 == other.v4
            && *v6 == other.v6
    }

    /// The verdict on one of an endpoint's checks: the family's own when the voter
    /// probes the families apart, else the endpoint's. None: this voter has no verdict on
    /// the IPv6 check (it probes one address).
    pub fn on(&self, v6_check: bool) -> Option<bool> {
        if v6_check {
            self.v6
        } else {
            Some(self.v4.unwrap_or(self.up))
        }
    }
}

/// Who this instance is, for voting; None without a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    /// Instance id.
    pub instance: String,
    /// Region, if configured.
    pub region: Option<String>,
}

/// What the rule made of the verdicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The health answers use.
    pub health: Health,
    /// Fresh voters counted (this instance included), and how many said down; None when
    /// this instance's own verdict decided alone.
    pub tally: Option<(usize, usize)>,
}

impl Decision {
    /// Why, in words, for logs and status.
    pub fn describe(&self, rule: &VoteRule) -> String {
        match self.tally {
            Some((voters, down)) => format!(
                "{down} of {voters} voters say down (down_when = \"{}\")",
                rule.down_when.as_str()
            ),
            None => "this instance's own verdict (too few fresh voters, or no fleet)".into(),
        }
    }
}

/// Combines `local` (this instance's verdict) with the other voters' under `rule`.
/// `voting` is false without a fleet or while its store is unreachable.
pub fn decide(
    local: Health,
    me: Option<&Voter>,
    voting: bool,
    votes: &BTreeMap<String, Vote>,
    rule: &VoteRule,
) -> Decision {
    decide_check(local, me, voting, votes.values(), rule, false)
}

/// [`decide`] for one of an endpoint's checks: its IPv6 address's (`v6_check`, counting
/// only voters that probe it apart) or its main one. `votes` are the other voters'
/// (this instance's own verdict is `local`; the monitor never keeps its own vote there).
pub fn decide_check<'a>(
    local: Health,
    me: Option<&Voter>,
    voting: bool,
    votes: impl IntoIterator<Item = &'a Vote>,
    rule: &VoteRule,
    v6_check: bool,
) -> Decision {
    let region = me.and_then(|me| me.region.as_deref());
    let mut counts = VoteCounts::default();
    for vote in votes {
        counts.add(vote, v6_check, region);
    }
    decide_counted(local, me, voting, counts, rule)
}

/// The other voters' fresh verdicts on one check, counted: kept per endpoint as votes
/// come and go, so that deciding is a few comparisons however many voters there are
/// (the monitor decides once per vote that changes: 290,000 times per instance in a mass
/// outage of a fleet of 30 at 10,000 endpoints).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VoteCounts {
    /// Fresh verdicts (not stale, and on this check).
    fresh: u32,
    /// Of them, down.
    down: u32,
    /// Fresh verdicts of voters in this instance's region.
    regional: u32,
    /// Of them, down.
    regional_down: u32,
}

impl VoteCounts {
    /// The fresh verdicts and, of them, those down.
    #[cfg(test)]
    pub(crate) fn tally(&self) -> (u32, u32) {
        (self.fresh, self.down)
    }

    /// Counts `vote` on the check (`v6_check`: the IPv6 address's) of an instance in
    /// `region`.
    pub fn add(&mut self, vote: &Vote, v6_check: bool, region: Option<&str>) {
        self.count(vote, v6_check, region, true);
    }

    /// Takes back what [`VoteCounts::add`] counted for `vote`.
    pub fn remove(&mut self, vote: &Vote, v6_check: bool, region: Option<&str>) {
        self.count(vote, v6_check, region, false);
    }

    fn count(&mut self, vote: &Vote, v6_check: bool, region: Option<&str>, add: bool) {
        let Some(verdict) = vote.on(v6_check).filter(|_| !vote.stale) else {
            return;
        };
        let regional = region.is_some() && vote.region.as_deref() == region;
        let change = |n: &mut u32, counts: bool| {
            if counts {
                *n = if add { *n + 1 } else { n.saturating_sub(1) };
            }
        };
        change(&mut self.fresh, true);
        change(&mut self.down, !verdict);
        change(&mut self.regional, regional);
        change(&mut self.regional_down, regional && !verdict);
    }
}

/// [`decide_check`] on votes already counted (with this instance's region).
pub fn decide_counted(
    local: Health,
    me: Option<&Voter>,
    voting: bool,
    counts: VoteCounts,
    rule: &VoteRule,
) -> Decision {
    let alone = Decision {
        health: local,
        tally: None,
    };
    let Some(me) = me.filter(|_| voting) else {
        return alone;
    };
    let as_usize = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
    // This instance counts too; a region with too few voters falls back to all.
    let by_region = rule.scope == VoteScope::Region
        && me.region.is_some()
        && as_usize(counts.regional) + 1 >= rule.min_voters;
    let (voters, down) = if by_region {
        (
            as_usize(counts.regional) + 1,
            as_usize(counts.regional_down),
        )
    } else {
        (as_usize(counts.fresh) + 1, as_usize(counts.down))
    };
    if voters < rule.min_voters {
        return alone;
    }
    let down = down + usize::from(local == Health::Down);
    let is_down = match rule.down_when {
        DownWhen::Majority => down * 2 > voters,
        DownWhen::All => down == voters,
        DownWhen::Any => down >= 1,
    };
    Decision {
        health: if is_down { Health::Down } else { Health::Up },
        tally: Some((voters, down)),
    }
}

/// Seconds since the Unix epoch, for [`Vote::at`].
pub fn now_unix() -> u64 {
    crate::time::unix(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(up: bool, region: &str) -> Vote {
        Vote {
            up,
            since: 0,
            error: None,
            rtt_us: None,
            region: Some(region.into()),
            stale: false,
            at: 0,
            v4: None,
            v6: None,
        }
    }

    fn rule(down_when: DownWhen, min_voters: usize, scope: VoteScope) -> VoteRule {
        VoteRule {
            down_when,
            min_voters,
            scope,
        }
    }

    #[test]
    fn rules_combine_fresh_verdicts_and_fall_back_to_the_local_one() {
        let me = Voter {
            instance: "a".into(),
            region: Some("eu".into()),
        };
        let mut votes = BTreeMap::new();
        votes.insert("b".to_string(), vote(true, "eu"));
        votes.insert("c".to_string(), vote(true, "us"));
        let majority = rule(DownWhen::Majority, 2, VoteScope::All);
        // One of three down: majority keeps it up.
        let d = decide(Health::Down, Some(&me), true, &votes, &majority);
        assert_eq!((d.health, d.tally), (Health::Up, Some((3, 1))));
        // Two of three: down, also for the one that still reaches it.
        votes.insert("b".to_string(), vote(false, "eu"));
        let d = decide(Health::Up, Some(&me), true, &votes, &majority);
        assert_eq!(d.health, Health::Up, "1 of 3 down");
        votes.insert("c".to_string(), vote(false, "us"));
        let d = decide(Health::Up, Some(&me), true, &votes, &majority);
        assert_eq!((d.health, d.tally), (Health::Down, Some((3, 2))));
        // all: down only when every voter says so; any: one is enough.
        let all = rule(DownWhen::All, 2, VoteScope::All);
        assert_eq!(
            decide(Health::Up, Some(&me), true, &votes, &all).health,
            Health::Up
        );
        assert_eq!(
            decide(Health::Down, Some(&me), true, &votes, &all).health,
            Health::Down
        );
        let any = rule(DownWhen::Any, 2, VoteScope::All);
        votes.insert("b".to_string(), vote(true, "eu"));
        votes.insert("c".to_string(), vote(false, "us"));
        assert_eq!(
            decide(Health::Up, Some(&me), true, &votes, &any).health,
            Health::Down
        );
        // No fleet, store unreachable, or too few voters: the local verdict.
        assert_eq!(decide(Health::Up, None, true, &votes, &any).tally, None);
        assert_eq!(
            decide(Health::Up, Some(&me), false, &votes, &any).health,
            Health::Up
        );
        let many = rule(DownWhen::Any, 4, VoteScope::All);
        assert_eq!(
            decide(Health::Up, Some(&me), true, &votes, &many).health,
            Health::Up
        );
        // Stale verdicts do not count.
        votes.get_mut("c").unwrap().stale = true;
        assert_eq!(
            decide(Health::Up, Some(&me), true, &votes, &any).health,
            Health::Up
        );
    }

    #[test]
    fn each_family_is_decided_on_its_own_verdicts() {
        let me = Voter {
            instance: "a".into(),
            region: None,
        };
        let majority = rule(DownWhen::Majority, 2, VoteScope::All);
        let mut votes = BTreeMap::new();
        // b probes the families apart: IPv4 up, IPv6 down (the endpoint up).
        let mut b = vote(true, "eu");
        (b.v4, b.v6) = (Some(true), Some(false));
        votes.insert("b".to_string(), b);
        // c probes one address: its verdict is the main check's, it has none on IPv6.
        votes.insert("c".to_string(), vote(false, "eu"));
        let v6 = decide_check(
            Health::Down,
            Some(&me),
            true,
            votes.values(),
            &majority,
            true,
        );
        assert_eq!((v6.health, v6.tally), (Health::Down, Some((2, 2))));
        // The main check reads b's IPv4 verdict, not its endpoint-wide one.
        votes.get_mut("b").unwrap().v4 = Some(false);
        let main = decide_check(
            Health::Up,
            Some(&me),
            true,
            votes.values(),
            &majority,
            false,
        );
        assert_eq!((main.health, main.tally), (Health::Down, Some((3, 2))));
        // Too few voters on IPv6 (c does not count): the local verdict decides.
        votes.remove("b");
        let alone = decide_check(Health::Up, Some(&me), true, votes.values(), &majority, true);
        assert_eq!((alone.health, alone.tally), (Health::Up, None));
    }

    #[test]
    fn counts_kept_as_votes_change_equal_counting_them_all() {
        // 500 changes of six voters' votes (up, down, stale, on IPv6 or not, eu or us,
        // removed), chosen by a fixed generator: after each, the counts kept by adding
        // and taking back equal the counts of the votes held made from scratch.
        let mut seed: u64 = 0x5eed;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        let mut held: BTreeMap<String, Vote> = BTreeMap::new();
        let mut kept = [VoteCounts::default(); 2];
        for _ in 0..500 {
            let voter = format!("v{}", next(6));
            let new = (next(5) != 0).then(|| {
                let mut v = vote(next(2) == 0, if next(2) == 0 { "eu" } else { "us" });
                v.stale = next(6) == 0;
                v.v6 = [None, Some(true), Some(false)][usize::try_from(next(3)).unwrap_or(0)];
                v.v4 = v.v6.map(|_| next(2) == 0);
                v
            });
            let before = match new.clone() {
                Some(v) => held.insert(voter, v),
                None => held.remove(&voter),
            };
            for (v6_check, counts) in [false, true].into_iter().zip(&mut kept) {
                if let Some(v) = &new {
                    counts.add(v, v6_check, Some("eu"));
                }
                if let Some(v) = &before {
                    counts.remove(v, v6_check, Some("eu"));
                }
                let mut all = VoteCounts::default();
                for v in held.values() {
                    all.add(v, v6_check, Some("eu"));
                }
                assert_eq!(*counts, all);
            }
        }
    }

    #[test]
    fn regional_scope_uses_the_region_when_it_has_enough_voters() {
        let me = Voter {
            instance: "a".into(),
            region: Some("eu".into()),
        };
        let mut votes = BTreeMap::new();
        votes.insert("b".to_string(), vote(true, "eu"));
        votes.insert("c".to_string(), vote(false, "us"));
        votes.insert("d".to_string(), vote(false, "us"));
        let regional = rule(DownWhen::Majority, 2, VoteScope::Region);
        // eu (a, b) says up; the us voters cannot reach it.
        let d = decide(Health::Up, Some(&me), true, &votes, &regional);
        assert_eq!((d.health, d.tally), (Health::Up, Some((2, 0))));
        // Too few in the region: everyone votes (3 of 4 down).
        let strict = rule(DownWhen::Majority, 3, VoteScope::Region);
        let d = decide(Health::Down, Some(&me), true, &votes, &strict);
        assert_eq!((d.health, d.tally), (Health::Down, Some((4, 3))));
    }
}
