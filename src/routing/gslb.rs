//! A GSLB name in the snapshot ([`GslbNode`]): its endpoints with their prepared records
//! and state, the rankings per location cell, and the choice for one client (reordered
//! per query for affinity, with its signatures in a signed zone).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use hickory_proto::rr::{RData, Record, RecordType};

use super::wire::WireRecord;
use crate::config::{Affinity, Location, Member, Policy, Pool, Region, Tie};
use crate::geo::{GeoTable, Placement};
use crate::policy::{self, Candidate, Ranking, affinity};

/// The identity of an endpoint across reloads: its pool's name and its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    /// Pool name.
    pub pool: String,
    /// Member name within the pool.
    pub member: String,
}

impl EndpointKey {
    /// The key of a configured endpoint.
    pub fn of(pool: &Pool, member: &Member) -> Self {
        Self {
            pool: pool.name.clone(),
            member: member.name.clone(),
        }
    }
}

/// A GSLB name: its endpoints with pre-encoded records and their rankings per location
/// cell, built by the builder; per query only the cell is looked up and the best
/// candidates reordered for the client's prefix.
#[derive(Debug)]
pub struct GslbNode {
    /// Index into [`super::Snapshot::services`].
    pub service: usize,
    /// Ranking policy.
    pub policy: Policy,
    /// What breaks the policy's ties.
    pub tie: Tie,
    /// Client stickiness.
    pub affinity: Affinity,
    /// Whether ECS places the client (else the resolver's address does).
    pub use_ecs: bool,
    /// Addresses per answer.
    pub answers: usize,
    /// How the answerable endpoints were chosen.
    pub mode: Selection,
    /// True when the ranking depends on where the client is.
    pub uses_location: bool,
    /// Every endpoint of the pool answered from, in config order.
    pub members: Vec<Endpoint>,
    /// Rendezvous seeds of `members`, by index.
    pub seeds: Vec<u64>,
    /// Ranking per configured geo network (same index as the networks table).
    pub rankings: Vec<Ranking>,
    /// Ranking for clients placed at the default location.
    pub default_ranking: Ranking,
    /// Ranking for clients that cannot be placed.
    pub unknown_ranking: Ranking,
    /// The zone's signatures when it is signed: GSLB sets not in `signatures` are signed
    /// on first use through its cache.
    pub signing: Option<Arc<crate::routing::ZoneSigning>>,
    /// Signatures of the answer sets this snapshot's rankings produce, by
    /// [`crate::dnssec::set_key`].
    pub signatures: HashMap<Box<[u8]>, Arc<crate::dnssec::Signed>, foldhash::fast::RandomState>,
    /// How many of `members` the service answers everybody from; the rest are those only
    /// an override's clients get (another pool's).
    pub normal: usize,
    /// `[[override]]`s: client subnets and the ranking of what they get first.
    pub overrides: Vec<OverrideRanking>,
    /// `policy = "latency"`: rankings of client prefixes with fresh real-user
    /// measurements (`POST /v1/rtt`); None when there are none.
    pub rum: Option<Box<super::rum::RumIndex>>,
}

/// One `[[override]]` of a GSLB name as the snapshot has it.
#[derive(Debug, Clone)]
pub struct OverrideRanking {
    /// Its position among the `[[override]]` tables.
    pub position: usize,
    /// The client subnets.
    pub networks: Vec<ipnet::IpNet>,
    /// How many of its own endpoints can serve (0: its clients get the usual answer).
    pub serving: usize,
    /// Its endpoints (indices into `members`) ranked by the service's policy without
    /// geography, then the service's other endpoints; those that can serve first.
    pub ranking: Ranking,
}

/// How a GSLB answer's endpoints were chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// No endpoint could serve and `when_all_down = "empty"`: NODATA.
    Empty,
    /// No endpoint could serve; every endpoint is answered (`when_all_down = "all"`).
    FailOpen,
    /// No endpoint could serve; the fallback pool is answered.
    Fallback,
    /// The up, undrained endpoints are answered.
    Normal,
}

impl Selection {
    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Selection::Empty => "all_down_empty",
            Selection::FailOpen => "all_down_fail_open",
            Selection::Fallback => "all_down_fallback",
            Selection::Normal => "normal",
        }
    }
}

/// What an endpoint of a GSLB name is by config alone: prepared once per config, shared
/// by every snapshot built from it, so a health flip does not re-encode records.
#[derive(Debug)]
pub struct EndpointInfo {
    /// Its identity.
    pub key: EndpointKey,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Added at run time (`PUT /v1/pools/{pool}/members/{name}`), not by the config file.
    pub runtime: bool,
    /// Pre-encoded A records, in address order.
    pub a: Vec<Record>,
    /// Pre-encoded AAAA records, in address order.
    pub aaaa: Vec<Record>,
    /// The A records in wire form for the fast path.
    pub wire_a: Vec<WireRecord>,
    /// The AAAA records in wire form for the fast path.
    pub wire_aaaa: Vec<WireRecord>,
    /// Where it is.
    pub location: Option<Location>,
    /// Configured weight.
    pub weight: f64,
    /// Rendezvous seed of its identity.
    pub seed: u64,
    /// Answers that included it, since start; survives rebuilds and reloads.
    pub answered: Arc<AtomicU64>,
    /// The same, exported as `gto_answers_total`.
    pub counter: metrics::Counter,
}

/// One endpoint as the builder saw it: the prepared part and its current state.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// What it is by config.
    pub info: Arc<EndpointInfo>,
    /// Health checks say up.
    pub up: bool,
    /// An operator drained it: no new answers.
    pub drained: bool,
    /// May be answered (up and undrained, or the answer fails open).
    pub available: bool,
    /// Address families its own probes take out of answers (`family = "each"`).
    pub withheld: super::build::Withheld,
    /// Over its load high-watermark.
    pub overloaded: bool,
    /// Smoothed load (None: unknown or stale).
    pub load: Option<f64>,
    /// Affinity weight: configured weight times the slow-start ramp.
    pub weight: f64,
    /// Round trips measured to it, by vantage (smoothed, moved only beyond the band).
    pub rtt: Arc<[crate::policy::latency::VantageRtt]>,
}

impl std::ops::Deref for Endpoint {
    type Target = EndpointInfo;

    fn deref(&self) -> &EndpointInfo {
        &self.info
    }
}

impl EndpointInfo {
    /// The addresses of one family, in record order.
    pub fn addresses_of(&self, v6: bool) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses
            .iter()
            .copied()
            .filter(move |a| a.is_ipv6() == v6)
    }
}

impl Endpoint {
    /// The records of one family it is answered with (none while that family is withheld).
    pub fn records(&self, v6: bool) -> &[Record] {
        match (self.withheld.of(v6), v6) {
            (true, _) => &[],
            (false, true) => &self.aaaa,
            (false, false) => &self.a,
        }
    }

    /// The wire-form records of one family it is answered with.
    pub fn wire(&self, v6: bool) -> &[WireRecord] {
        match (self.withheld.of(v6), v6) {
            (true, _) => &[],
            (false, true) => &self.wire_aaaa,
            (false, false) => &self.wire_a,
        }
    }

    /// What ranking needs of it.
    pub fn candidate(&self) -> Candidate<'_> {
        Candidate {
            location: self.location.as_ref(),
            weight: self.weight,
            load: self.load,
            overloaded: self.overloaded,
            available: self.available,
            rtt: &self.rtt,
        }
    }
}

/// The signatures of a GSLB answer: prepared with the snapshot (borrowed, nothing shared
/// is written per query), or from the signing cache.
#[derive(Debug)]
pub enum Signature<'a> {
    /// Prepared when the snapshot was built.
    Prepared(&'a Arc<crate::dnssec::Signed>),
    /// Signed on first use.
    Cached(Arc<crate::dnssec::Signed>),
}

impl Signature<'_> {
    /// The signatures, shared: kept beside a worker's GSLB choice for its snapshot.
    pub fn shared(&self) -> Arc<crate::dnssec::Signed> {
        match self {
            Signature::Prepared(signed) => Arc::clone(signed),
            Signature::Cached(signed) => Arc::clone(signed),
        }
    }
}

impl std::ops::Deref for Signature<'_> {
    type Target = crate::dnssec::Signed;

    fn deref(&self) -> &crate::dnssec::Signed {
        match self {
            Signature::Prepared(signed) => signed,
            Signature::Cached(signed) => signed,
        }
    }
}

/// The shortest prefix of `addr` that no longer overlaps `net` (0 for another family):
/// one bit past what they share, at most the network's own length.
fn separating_prefix(addr: IpAddr, net: &ipnet::IpNet) -> u8 {
    let shared = match (addr, net.network()) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u32::from(a) ^ u32::from(n)).leading_zeros(),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a) ^ u128::from(n)).leading_zeros(),
        _ => return 0,
    };
    u8::try_from(shared + 1)
        .unwrap_or(u8::MAX)
        .min(net.prefix_len())
}

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The resolver's (the packet's source) address.
    pub source: IpAddr,
    /// The ECS subnet's address, when the query carried one with a non-zero prefix.
    pub subnet: Option<IpAddr>,
}

/// Buffers reused across queries by [`GslbNode::choose_into`]: the last choice (its order
/// buffer is reused) and the ranking's working space.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The last choice made into this scratch.
    pub choice: Choice,
    scored: Vec<(f64, u16)>,
}

/// The order chosen for one client, and what it depends on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Choice {
    /// Endpoint indices, best first (unavailable ones last).
    pub order: Vec<u16>,
    /// How many at the front may be answered.
    pub available: usize,
    /// How many at the front shared the client by affinity.
    pub candidates: usize,
    /// Where the client was placed (None when the ranking ignores location).
    pub placement: Option<Placement>,
    /// The ECS scope prefix the answer depends on.
    pub scope: u8,
    /// The `[[override]]` (its position) whose endpoints were answered, if one was.
    pub overridden: Option<usize>,
    /// The client prefix whose real-user measurements ranked the endpoints, if any.
    pub measured_prefix: Option<ipnet::IpNet>,
}

impl GslbNode {
    /// Chooses the order for `client` (None: ignore the client entirely). The ECS subnet
    /// places the client when present and the service uses ECS; the scope is reported only
    /// then (an answer chosen by the resolver's address is cached for all its clients).
    pub fn choose(&self, geo: &GeoTable, regions: &[Region], client: Option<Client>) -> Choice {
        let mut scratch = Scratch::default();
        self.choose_into(geo, regions, client, &mut scratch);
        scratch.choice
    }

    /// [`GslbNode::choose`] into reused buffers: the choice lands in `scratch.choice`. Once
    /// the buffers have grown this allocates nothing (except for clients placed by the
    /// MaxMind database, which are ranked per query).
    pub fn choose_into<'c>(
        &self,
        geo: &GeoTable,
        regions: &[Region],
        client: Option<Client>,
        scratch: &'c mut Scratch,
    ) -> &'c Choice {
        let (client, via_ecs) = match client.map(|c| self.address_of(c)) {
            Some((address, via_ecs)) => (Some(address), via_ecs),
            None => (None, false),
        };
        // A client in an override's networks gets its endpoints while any can serve.
        let (overriding, override_scope) = match client {
            Some(addr) if !self.overrides.is_empty() => self.override_of(addr),
            _ => (None, 0),
        };
        // A client prefix with real-user measurements is ranked by them.
        let (measured, measured_scope) = match (client, &self.rum) {
            (Some(addr), Some(rum)) if overriding.is_none() => rum.lookup(addr),
            _ => (None, 0),
        };
        let (placement, location_scope) = match client {
            _ if overriding.is_some() || measured.is_some() => (None, 0),
            Some(addr) if self.uses_location => {
                let (placement, scope) = geo.place(addr);
                (Some(placement), scope)
            }
            _ => (None, 0),
        };
        let dynamic;
        let ranking = match (overriding, &placement) {
            (Some(o), _) => &o.ranking,
            (None, _) if measured.is_some() => {
                measured.map_or(&self.unknown_ranking, |c| &c.ranking)
            }
            (None, None | Some(Placement::Unknown)) => &self.unknown_ranking,
            (None, Some(Placement::Default)) => &self.default_ranking,
            (None, Some(Placement::Network(i))) => {
                self.rankings.get(*i).unwrap_or(&self.unknown_ranking)
            }
            (None, Some(Placement::Database(location))) => {
                let candidates: Vec<Candidate<'_>> = self.members[..self.normal]
                    .iter()
                    .map(Endpoint::candidate)
                    .collect();
                dynamic = policy::rank(
                    self.policy,
                    self.tie,
                    &candidates,
                    Some(location),
                    regions,
                    self.affinity.candidates,
                );
                &dynamic
            }
        };
        let affinity_scope = match client {
            // `affinity = false`: a fresh draw per query, weighted as a client's would be.
            _ if self.affinity.per_query && ranking.candidates > 1 => {
                let weight = |i: usize| self.members.get(i).map_or(0.0, |m| m.weight);
                policy::reorder_for_client(
                    ranking,
                    weight,
                    rand::random(),
                    &self.seeds,
                    &mut scratch.choice.order,
                    &mut scratch.scored,
                );
                0
            }
            Some(addr) if ranking.candidates > 1 => {
                let key = affinity::client_key(addr, self.affinity.v4, self.affinity.v6);
                let weight = |i: usize| self.members.get(i).map_or(0.0, |m| m.weight);
                policy::reorder_for_client(
                    ranking,
                    weight,
                    key,
                    &self.seeds,
                    &mut scratch.choice.order,
                    &mut scratch.scored,
                );
                if addr.is_ipv4() {
                    self.affinity.v4
                } else {
                    self.affinity.v6
                }
            }
            _ => {
                scratch.choice.order.clear();
                scratch.choice.order.extend_from_slice(&ranking.order);
                0
            }
        };
        let choice = &mut scratch.choice;
        choice.available = ranking.available;
        choice.candidates = ranking.candidates;
        choice.placement = placement;
        choice.overridden = overriding.map(|o| o.position);
        choice.measured_prefix = measured.map(|c| c.prefix);
        choice.scope = if via_ecs {
            location_scope
                .max(affinity_scope)
                .max(override_scope)
                .max(measured_scope)
        } else {
            0
        };
        choice
    }

    /// The address a choice for `client` is made for (the ECS subnet's when this service
    /// uses ECS and the query had one, else the source) and whether it came from ECS.
    pub fn address_of(&self, client: Client) -> (IpAddr, bool) {
        match client.subnet {
            Some(subnet) if self.use_ecs => (subnet, true),
            _ => (client.source, false),
        }
    }

    /// Whether [`GslbNode::choose_into`] gives the same choice for the same address while
    /// the snapshot stands, so a worker may keep it: not with `affinity = false`, where
    /// each query draws afresh.
    pub fn choice_repeats(&self) -> bool {
        !self.affinity.per_query
    }

    /// The override whose networks hold `addr` when it has an endpoint that can serve,
    /// and the ECS scope the answer depends on: the matching network's prefix (in it,
    /// whether or not the override serves), else enough of the address to tell it from
    /// every override network (an answer for a client outside must not be cached for
    /// clients inside).
    fn override_of(&self, addr: IpAddr) -> (Option<&OverrideRanking>, u8) {
        let mut scope = 0;
        for o in &self.overrides {
            for net in &o.networks {
                if net.contains(&addr) {
                    let serving = (o.serving > 0).then_some(o);
                    return (serving, net.prefix_len());
                }
                scope = scope.max(separating_prefix(addr, net));
            }
        }
        (None, scope)
    }

    /// The answer records of a family for a choice, and the endpoint of each.
    pub fn answer(&self, choice: &Choice, v6: bool) -> (Vec<&Record>, Vec<usize>) {
        let mut picks = Vec::with_capacity(self.answers);
        self.answer_into(&choice.order, choice.available, v6, &mut picks);
        let records = picks
            .iter()
            .filter_map(|&(e, r)| self.members.get(e)?.records(v6).get(r))
            .collect();
        (records, picks.into_iter().map(|(e, _)| e).collect())
    }

    /// The answer as (endpoint index, record index) pairs, into a reused buffer.
    pub fn answer_into(
        &self,
        order: &[u16],
        available: usize,
        v6: bool,
        picks: &mut Vec<(usize, usize)>,
    ) {
        picks.clear();
        for &index in order.iter().take(available) {
            let index = usize::from(index);
            let Some(endpoint) = self.members.get(index) else {
                continue;
            };
            for record in 0..endpoint.records(v6).len() {
                if picks.len() == self.answers {
                    return;
                }
                picks.push((index, record));
            }
        }
    }

    /// The signatures of the answer `picks` (endpoint, record) of a family: from the
    /// prepared sets, else signed on first use. None in an unsigned zone.
    ///
    /// `addresses` and `key` are reused buffers: a set the snapshot prepared costs no
    /// allocation.
    pub fn signatures_of(
        &self,
        picks: &[(usize, usize)],
        v6: bool,
        addresses: &mut Vec<IpAddr>,
        key: &mut Vec<u8>,
    ) -> Option<Signature<'_>> {
        let signing = self.signing.as_ref()?;
        addresses.clear();
        addresses.extend(
            picks
                .iter()
                .filter_map(|&(e, r)| self.members.get(e)?.addresses_of(v6).nth(r)),
        );
        addresses.sort_unstable();
        crate::dnssec::set_key_into(v6, addresses, key);
        self.signature_by_key(signing, key, || {
            picks
                .iter()
                .filter_map(|&(e, r)| self.members.get(e)?.records(v6).get(r))
                .collect()
        })
    }

    /// The signatures of the set with [`crate::dnssec::set_key`] `key`: prepared, else from
    /// the zone's cache, signing `records()` on first use.
    fn signature_by_key<'n, 'r>(
        &'n self,
        signing: &crate::routing::ZoneSigning,
        key: &[u8],
        records: impl FnOnce() -> Vec<&'r Record>,
    ) -> Option<Signature<'n>> {
        if let Some(found) = self.signatures.get(key) {
            return Some(Signature::Prepared(found));
        }
        signing
            .gslb_set(self.service, key.into(), &records())
            .map(Signature::Cached)
    }

    /// [`GslbNode::signatures_of`] for an answer's records.
    pub fn signatures_of_records<'n>(&'n self, records: &[&Record]) -> Option<Signature<'n>> {
        let signing = self.signing.as_ref()?;
        let v6 = records.first()?.record_type() == RecordType::AAAA;
        let mut addresses: Vec<IpAddr> = records
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        addresses.sort_unstable();
        let key = crate::dnssec::set_key(v6, &addresses);
        self.signature_by_key(signing, &key, || records.to_vec())
    }

    /// True when any answerable endpoint has an address of the family.
    pub fn has_family(&self, v6: bool) -> bool {
        self.members
            .iter()
            .any(|m| m.available && !m.records(v6).is_empty())
    }
}
