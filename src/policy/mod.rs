//! Ranking: pure functions from a pool's endpoints and a client's location to an order.
//!
//! No I/O and no clock. The builder ranks once per location cell (each configured network,
//! the default location, no location) when it builds a snapshot; only clients placed by the
//! MaxMind database are ranked per query. Per query, [`affinity`] then reorders the best
//! candidates for the client's prefix.
//!
//! Order of an endpoint, best first: (1) available (up, not drained) and under its load
//! high-watermark, then available but overloaded, then unavailable (kept for explain, never
//! answered while an available one exists); (2) the policy's key — `failover`: config
//! order; `geo`: distance or region preference (unplaceable clients: the default location,
//! else config order); `least-load`: smoothed load in 5 % steps (unknown load counts as
//! 0); `weighted`: none, every endpoint ties; `latency`: the round trip measured from the
//! client's region ([`latency`]; unmeasured endpoints after the measured); (3) with `tie =
//! "latency"`, that round trip; (4) config order.
//!
//! The affinity candidates are the first `affinity.candidates` of the best group, extended
//! by every endpoint that ties with the last of them, so endpoints on one site (or all
//! endpoints under `weighted`) share clients evenly instead of the first one taking all.

pub mod affinity;
pub mod geo;
pub mod latency;
pub mod load;

use std::cmp::Ordering;

use crate::config::{Location, Policy, Region, Tie};
use latency::{VantageFrom, VantageRtt};

/// What ranking needs to know of one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a> {
    /// Where it is.
    pub location: Option<&'a Location>,
    /// Share under affinity: configured weight times the slow-start ramp.
    pub weight: f64,
    /// Smoothed load (sessions / capacity); None when unknown or stale.
    pub load: Option<f64>,
    /// Over its high-watermark (and not yet back under the low one).
    pub overloaded: bool,
    /// May be answered (up and not drained, or everything fails open).
    pub available: bool,
    /// Round trips measured to it, by vantage.
    pub rtt: &'a [VantageRtt],
}

/// An order of endpoints (indices into the pool), best first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ranking {
    /// Every endpoint, best first.
    pub order: Vec<u16>,
    /// How many at the front share clients by affinity (0 when none is available).
    pub candidates: usize,
    /// How many at the front may be answered.
    pub available: usize,
}

fn group(c: &Candidate<'_>) -> u8 {
    match (c.available, c.overloaded) {
        (true, false) => 0,
        (true, true) => 1,
        (false, _) => 2,
    }
}

/// The round-trip key of one endpoint (lower is better; unmeasured last).
pub fn latency_key(c: &Candidate<'_>, from: VantageFrom<'_>) -> f64 {
    latency::key(c.rtt, from).map_or(f64::MAX, f64::from)
}

/// Where the round trips of a ranking for `client` are measured from.
pub fn vantage_of<'a>(
    members: &'a [Candidate<'_>],
    client: Option<&'a Location>,
    regions: &'a [Region],
) -> VantageFrom<'a> {
    let measured = latency::measured_regions(members.iter().flat_map(|c| c.rtt.iter()));
    latency::vantage_for(client.and_then(|l| l.region.as_deref()), &measured, regions)
}

/// The policy's key of one endpoint for a client (lower is better).
fn policy_key(
    policy: Policy,
    index: usize,
    c: &Candidate<'_>,
    client: Option<&Location>,
    regions: &[Region],
    from: VantageFrom<'_>,
) -> f64 {
    match policy {
        Policy::Failover => index as f64,
        Policy::Geo => match (client, c.location) {
            (Some(client), Some(member)) => geo::key(client, member, regions).unwrap_or(f64::MAX),
            // Nowhere to measure from: config order.
            _ => index as f64,
        },
        Policy::LeastLoad => (c.load.unwrap_or(0.0) * 20.0).round(),
        Policy::Weighted => 0.0,
        Policy::Latency => latency_key(c, from),
    }
}

/// Ranks `members` for a client at `client` (None: not placeable). `k` is the affinity
/// candidate count before tie extension.
pub fn rank(
    policy: Policy,
    tie: Tie,
    members: &[Candidate<'_>],
    client: Option<&Location>,
    regions: &[Region],
    k: usize,
) -> Ranking {
    let from = if policy == Policy::Latency || tie == Tie::Latency {
        vantage_of(members, client, regions)
    } else {
        VantageFrom::Everywhere
    };
    rank_by(
        members,
        |i, c| {
            let tie_key = match tie {
                Tie::Latency => latency_key(c, from),
                Tie::ConfigOrder => 0.0,
            };
            (policy_key(policy, i, c, client, regions, from), tie_key)
        },
        k,
    )
}

/// Ranks `members` by `key` (lower is better; endpoints tie, and share clients by
/// affinity, when their keys are equal) within the availability groups, then config order.
pub fn rank_by(
    members: &[Candidate<'_>],
    key: impl Fn(usize, &Candidate<'_>) -> (f64, f64),
    k: usize,
) -> Ranking {
    let mut keyed: Vec<(u8, (f64, f64), u16)> = members
        .iter()
        .enumerate()
        .map(|(i, c)| (group(c), key(i, c), i as u16))
        .collect();
    keyed.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.partial_cmp(&b.1).unwrap_or(Ordering::Equal))
            .then(a.2.cmp(&b.2))
    });
    let available = keyed.iter().take_while(|e| e.0 < 2).count();
    let best_group = keyed.first().map(|e| e.0).unwrap_or(2);
    let in_best = keyed.iter().take_while(|e| e.0 == best_group).count();
    let candidates = if best_group == 2 || in_best == 0 {
        0
    } else {
        let base = k.clamp(1, in_best);
        let last_key = keyed[base - 1].1;
        base + keyed[base..in_best]
            .iter()
            .take_while(|e| e.1 == last_key)
            .count()
    };
    Ranking {
        order: keyed.into_iter().map(|e| e.2).collect(),
        candidates,
        available,
    }
}

/// The order for one client: the candidates reordered by rendezvous score for the
/// client's prefix hash (`weight` gives an endpoint's weight by index), the rest as ranked.
pub fn order_for_client(
    ranking: &Ranking,
    weight: impl Fn(usize) -> f64,
    client: u64,
    seeds: &[u64],
) -> Vec<u16> {
    let mut order = Vec::new();
    reorder_for_client(ranking, weight, client, seeds, &mut order, &mut Vec::new());
    order
}

/// [`order_for_client`] into reused buffers: allocates nothing once they have grown.
pub fn reorder_for_client(
    ranking: &Ranking,
    weight: impl Fn(usize) -> f64,
    client: u64,
    seeds: &[u64],
    order: &mut Vec<u16>,
    scored: &mut Vec<(f64, u16)>,
) {
    order.clear();
    order.extend_from_slice(&ranking.order);
    if ranking.candidates > 1 {
        let head = &mut order[..ranking.candidates];
        scored.clear();
        scored.extend(head.iter().map(|&i| {
            let index = usize::from(i);
            let seed = seeds.get(index).copied().unwrap_or_default();
            (affinity::score(client, seed, weight(index)), i)
        }));
        scored.sort_unstable_by(|a, b| {
            b.0.partial_cmp(&a.0)
                .unwrap_or(Ordering::Equal)
                .then(a.1.cmp(&b.1))
        });
        for (slot, (_, i)) in head.iter_mut().zip(scored.iter()) {
            *slot = *i;
        }
    }
}

#[cfg(test)]
mod tests;
