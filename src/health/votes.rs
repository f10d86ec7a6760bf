//! Health seen from several places: each instance of a fleet publishes its own verdict on
//! every endpoint it probes, and a pool's [`VoteRule`] combines the fresh verdicts —
//! this instance's included — into the health that answers use.
//!
//! A verdict is fresh while the instance that made it is alive: verdicts live under the
//! voter's lease in the fleet store, are written when they change (and refreshed slowly),
//! so their number of writes does not depend on the probe interval; a voter whose probes
//! stop reporting publishes itself as stale, and one that dies loses its verdicts with
//! its lease. Too few fresh voters, no fleet, or the fleet store unreachable: this
//! instance's own verdict decides, exactly as without voting.

use std::collections::BTreeMap;
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
    /// The last probe's error, when down.
    pub error: Option<String>,
    /// The voter's smoothed round trip to the endpoint, in microseconds (moved only
    /// beyond `[latency]`'s band; [`crate::health::rtt`]).
    #[serde(default)]
    pub rtt_us: Option<u32>,
    /// The voter's region, for pools that vote by region.
    pub region: Option<String>,
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
    decide_check(local, me, voting, votes, rule, false)
}

/// [`decide`] for one of an endpoint's checks: its IPv6 address's (`v6_check`, counting
/// only voters that probe it apart) or its main one.
pub fn decide_check(
    local: Health,
    me: Option<&Voter>,
    voting: bool,
    votes: &BTreeMap<String, Vote>,
    rule: &VoteRule,
    v6_check: bool,
) -> Decision {
    let alone = Decision {
        health: local,
        tally: None,
    };
    let Some(me) = me.filter(|_| voting) else {
        return alone;
    };
    let fresh = || {
        votes
            .iter()
            .filter(|(voter, vote)| {
                **voter != me.instance && !vote.stale && vote.on(v6_check).is_some()
            })
            .map(|(_, vote)| vote)
    };
    // Counted without collecting: this runs for every vote that changes, 300,000 times
    // per instance in a mass outage of a fleet of 30 at 10,000 endpoints.
    let region = match (&rule.scope, &me.region) {
        (VoteScope::Region, Some(region)) => Some(region.as_str()),
        _ => None,
    };
    let in_region = |v: &&Vote| region.is_some() && v.region.as_deref() == region;
    // This instance counts too; a region with too few voters falls back to all.
    let regional = fresh().filter(in_region).count();
    let by_region = region.is_some() && regional + 1 >= rule.min_voters;
    let counted = |v: &&Vote| !by_region || in_region(v);
    let voters = if by_region {
        regional + 1
    } else {
        fresh().count() + 1
    };
    if voters < rule.min_voters {
        return alone;
    }
    let down = fresh()
        .filter(counted)
        .filter(|v| v.on(v6_check) == Some(false))
        .count()
        + usize::from(local == Health::Down);
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
        let v6 = decide_check(Health::Down, Some(&me), true, &votes, &majority, true);
        assert_eq!((v6.health, v6.tally), (Health::Down, Some((2, 2))));
        // The main check reads b's IPv4 verdict, not its endpoint-wide one.
        votes.get_mut("b").unwrap().v4 = Some(false);
        let main = decide_check(Health::Up, Some(&me), true, &votes, &majority, false);
        assert_eq!((main.health, main.tally), (Health::Down, Some((3, 2))));
        // Too few voters on IPv6 (c does not count): the local verdict decides.
        votes.remove("b");
        let alone = decide_check(Health::Up, Some(&me), true, &votes, &majority, true);
        assert_eq!((alone.health, alone.tally), (Health::Up, None));
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
