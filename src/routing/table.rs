//! [`Snapshot`]: the immutable routing table, and the pure name lookup the query path runs
//! against it ([`Snapshot::resolve`]).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use super::node::Node;
use super::rrl::RateLimiter;
use super::wire::{FastIndex, WireRecord};
use crate::config::{Affinity, Location, Member, Policy, Pool, Region, WhenAllDown};
use crate::geo::{GeoTable, Placement};
use crate::policy::{self, Candidate, Ranking, affinity};
use crate::zone::RrSet;

/// Longest CNAME chain followed inside our zones before giving up (loop guard).
const MAX_CNAME_CHAIN: usize = 8;

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

/// Everything a query needs, built off the query path and never mutated.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every published snapshot.
    pub generation: u64,
    /// Our EDNS UDP payload size.
    pub udp_payload: u16,
    /// `[server] identity`, sent as NSID (RFC 5001) to clients that ask.
    pub identity: Option<Arc<[u8]>>,
    /// CH TXT records `id.server.`, `hostname.bind.`, `version.server.`, `version.bind.`
    /// (empty without an identity).
    pub chaos: Arc<[Record]>,
    /// Zones, most specific origin first.
    pub(crate) zones: Vec<ZoneTable>,
    /// GSLB names in config order, for labels, status and explain.
    pub services: Vec<ServiceInfo>,
    /// Each service's node (as in its zone's `gslb`), by service index: the fast path
    /// reaches it without hashing the name again.
    pub service_nodes: Vec<Option<Arc<GslbNode>>>,
    /// Where clients are.
    pub geo: Arc<GeoTable>,
    /// Regions' preference lists.
    pub regions: Vec<Region>,
    /// What the UDP fast path can answer (shared by snapshots of one config).
    pub fast: Arc<FastIndex>,
    /// Response rate limiting on UDP (shared by snapshots of one config); None when off.
    pub rrl: Option<Arc<RateLimiter>>,
}

/// What status and explain show of a GSLB name.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    /// The GSLB name.
    pub name: LowerName,
    /// Its pool's name.
    pub pool: String,
    /// Its ranking policy.
    pub policy: Policy,
    /// Addresses per answer.
    pub answers: usize,
    /// Answer TTL.
    pub ttl: u32,
    /// What it answers when nothing is up.
    pub when_all_down: WhenAllDown,
}

/// One zone: its SOA and every name in it.
#[derive(Debug)]
pub struct ZoneTable {
    /// The apex.
    pub origin: LowerName,
    /// The SOA with its TTL lowered to the negative-caching TTL (RFC 2308 section 3), for
    /// the authority section of NXDOMAIN and NODATA answers.
    pub negative_soa: Record,
    /// Every name that exists in the zone; depends on the config alone, so snapshots built
    /// from one config share it.
    pub nodes: Arc<HashMap<LowerName, Node>>,
    /// The GSLB names of the zone, rebuilt with every snapshot.
    pub gslb: HashMap<LowerName, Arc<GslbNode>>,
    /// Delegations below the apex (names with NS records): at and below them the zone
    /// answers with referrals.
    pub cuts: Arc<HashSet<LowerName>>,
    /// Some name in the zone is a wildcard: names that do not exist may be synthesized.
    pub has_wildcards: bool,
    /// The zone's signatures, when it is signed (shared by snapshots of one preparation).
    pub signing: Option<Arc<crate::routing::ZoneSigning>>,
}

impl ZoneTable {
    /// The highest delegation at or above `name` (None in a zone without delegations).
    pub fn cut_of(&self, name: &LowerName) -> Option<LowerName> {
        if self.cuts.is_empty() {
            return None;
        }
        let mut found = None;
        let mut current = name.clone();
        while current.num_labels() > self.origin.num_labels() {
            if self.cuts.contains(&current) {
                found = Some(current.clone());
            }
            current = current.base_name();
        }
        found
    }

    /// The wildcard node that synthesizes `name`, a name with no node of its own (RFC 4592
    /// section 3.3.1): `*` below the closest encloser, when it exists.
    pub fn wildcard_for(&self, name: &LowerName) -> Option<&Node> {
        self.wildcard_of(name).map(|(_, node)| node)
    }

    /// The owner (`*.closest-encloser`) and node of the wildcard that synthesizes `name`.
    pub fn wildcard_of(&self, name: &LowerName) -> Option<(LowerName, &Node)> {
        if !self.has_wildcards {
            return None;
        }
        let mut encloser = name.base_name();
        while !self.nodes.contains_key(&encloser) {
            if encloser.num_labels() <= self.origin.num_labels() {
                return None;
            }
            encloser = encloser.base_name();
        }
        let source = LowerName::from(Name::from(&encloser).prepend_label("*").ok()?);
        let node = self.nodes.get(&source)?;
        Some((source, node))
    }
}

/// A GSLB name: its endpoints with pre-encoded records and their rankings per location
/// cell, built by the builder; per query only the cell is looked up and the best
/// candidates reordered for the client's prefix.
#[derive(Debug)]
pub struct GslbNode {
    /// Index into [`Snapshot::services`].
    pub service: usize,
    /// Ranking policy.
    pub policy: Policy,
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
    /// Over its load high-watermark.
    pub overloaded: bool,
    /// Smoothed load (None: unknown or stale).
    pub load: Option<f64>,
    /// Affinity weight: configured weight times the slow-start ramp.
    pub weight: f64,
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

    /// The wire-form records of one family.
    pub fn wire(&self, v6: bool) -> &[WireRecord] {
        if v6 { &self.wire_aaaa } else { &self.wire_a }
    }
}

impl Endpoint {
    /// The records of one family.
    pub fn records(&self, v6: bool) -> &[Record] {
        if v6 { &self.aaaa } else { &self.a }
    }

    /// What ranking needs of it.
    pub fn candidate(&self) -> Candidate<'_> {
        Candidate {
            location: self.location.as_ref(),
            weight: self.weight,
            load: self.load,
            overloaded: self.overloaded,
            available: self.available,
        }
    }
}

/// The signatures of a GSLB answer: prepared with the snapshot (borrowed, nothing shared
/// is written per query), or from the signing cache.
#[derive(Debug)]
pub enum Signature<'a> {
    /// Prepared when the snapshot was built.
    Prepared(&'a crate::dnssec::Signed),
    /// Signed on first use.
    Cached(Arc<crate::dnssec::Signed>),
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
        let (client, via_ecs) = match client {
            Some(Client {
                subnet: Some(subnet),
                ..
            }) if self.use_ecs => (Some(subnet), true),
            Some(c) => (Some(c.source), false),
            None => (None, false),
        };
        let (placement, location_scope) = match client {
            Some(addr) if self.uses_location => {
                let (placement, scope) = geo.place(addr);
                (Some(placement), scope)
            }
            _ => (None, 0),
        };
        let dynamic;
        let ranking = match &placement {
            None | Some(Placement::Unknown) => &self.unknown_ranking,
            Some(Placement::Default) => &self.default_ranking,
            Some(Placement::Network(i)) => self.rankings.get(*i).unwrap_or(&self.unknown_ranking),
            Some(Placement::Database(location)) => {
                let candidates: Vec<Candidate<'_>> =
                    self.members.iter().map(Endpoint::candidate).collect();
                dynamic = policy::rank(
                    self.policy,
                    &candidates,
                    Some(location),
                    regions,
                    self.affinity.candidates,
                );
                &dynamic
            }
        };
        let affinity_scope = match client {
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
        choice.scope = if via_ecs {
            location_scope.max(affinity_scope)
        } else {
            0
        };
        choice
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

/// The outcome of a lookup: which records go where, borrowed from the snapshot.
#[derive(Debug, Default)]
pub struct Resolution<'s> {
    /// What the lookup concluded.
    pub outcome: Outcome,
    /// Answer section (a CNAME chain first, when one was followed). Records synthesized
    /// from a wildcard are owned, with the name they answer for as their owner.
    pub answers: Vec<Cow<'s, Record>>,
    /// Authority section (the SOA of negative answers, the NS set of a referral).
    pub authorities: Vec<Cow<'s, Record>>,
    /// Additional section: addresses of the names NS, MX and SRV records point to, and
    /// glue of referrals.
    pub additionals: Vec<&'s Record>,
    /// How many of `additionals`, from the front, the answer cannot go without: the
    /// in-domain glue of a referral (RFC 9471). The rest may be left out when the answer
    /// does not fit (RFC 2181 section 9).
    pub required_additionals: usize,
    /// The GSLB name answered, if any (index into [`Snapshot::services`]).
    pub service: Option<usize>,
    /// The GSLB node answered from, its choice for this client, and the endpoint index of
    /// each answer record (for per-endpoint counting and explain).
    pub gslb: Option<(&'s GslbNode, Choice, Vec<usize>)>,
    /// The ECS scope prefix the answer depends on (0: the same for every client).
    pub scope: u8,
    /// The wildcard (`*.closest-encloser`) the answer was synthesized from, if any: rate
    /// limiting keys such answers by it, so random names under a wildcard share a bucket.
    pub wildcard: Option<LowerName>,
}

/// What a lookup concluded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The name exists: NOERROR, with or without records of the type (NODATA).
    #[default]
    Found,
    /// The name does not exist in a zone we serve: NXDOMAIN.
    NoSuchName,
    /// The name is outside every zone we serve: REFUSED.
    NotOurs,
    /// The name is at or below a delegation: a referral to the child zone's servers
    /// (NOERROR, not authoritative unless a CNAME of ours led there).
    Referral,
}

impl Outcome {
    /// The response code this outcome gets.
    pub fn rcode(self) -> ResponseCode {
        match self {
            Outcome::Found | Outcome::Referral => ResponseCode::NoError,
            Outcome::NoSuchName => ResponseCode::NXDomain,
            Outcome::NotOurs => ResponseCode::Refused,
        }
    }
}

/// The conventional name of a response code (dig's spelling), for labels and JSON.
pub fn rcode_name(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "other",
    }
}

impl Resolution<'_> {
    /// Whether the answer gets the AA bit: every answer from our zones except a referral
    /// with no answer of ours before it.
    pub fn authoritative(&self) -> bool {
        match self.outcome {
            Outcome::NotOurs => false,
            Outcome::Referral => !self.answers.is_empty(),
            Outcome::Found | Outcome::NoSuchName => true,
        }
    }
}

impl Snapshot {
    /// The zone that answers `qtype` at `name`: the most specific one, except that DS at
    /// the apex of a zone is answered by its parent zone when we serve that too and it
    /// delegates the child there (RFC 4035 section 3.1.4.1).
    pub fn zone_for(&self, name: &LowerName, qtype: RecordType) -> Option<&ZoneTable> {
        let first = self.zone_of(name)?;
        if qtype == RecordType::DS && first.origin == *name {
            return Some(self.delegating_parent(first).unwrap_or(first));
        }
        Some(first)
    }

    /// How many zones are signed.
    pub fn zones_signed(&self) -> usize {
        self.zones.iter().filter(|z| z.signing.is_some()).count()
    }

    /// The zone we serve that delegates `zone`'s apex, if any.
    pub fn delegating_parent(&self, zone: &ZoneTable) -> Option<&ZoneTable> {
        self.zones
            .iter()
            .find(|z| z.origin != zone.origin && z.cuts.contains(&zone.origin))
    }

    /// The most specific zone containing `name`.
    pub fn zone_of(&self, name: &LowerName) -> Option<&ZoneTable> {
        self.zones.iter().find(|z| z.origin.zone_of(name))
    }

    /// The GSLB node of a name, if it is one.
    pub fn gslb_node(&self, name: &LowerName) -> Option<&GslbNode> {
        self.zone_of(name)?.gslb.get(name).map(Arc::as_ref)
    }

    /// The node of the service at `index` in config order.
    pub fn service_node(&self, index: usize) -> Option<&GslbNode> {
        self.service_nodes.get(index)?.as_deref()
    }

    /// Resolves one question for `client` (None: the answer may not depend on the client).
    /// Pure: no I/O, no clock.
    pub fn resolve<'s>(
        &'s self,
        name: &LowerName,
        qtype: RecordType,
        client: Option<Client>,
    ) -> Resolution<'s> {
        let mut out = Resolution::default();
        let Some(mut zone) = self.zone_for(name, qtype) else {
            out.outcome = Outcome::NotOurs;
            return out;
        };
        let mut name = name.clone();
        for _ in 0..MAX_CNAME_CHAIN {
            // At or below a delegation the child's servers answer (DS at the cut itself
            // is the parent's: RFC 4035 section 2.4).
            if let Some(cut) = zone.cut_of(&name)
                && !(qtype == RecordType::DS && cut == name)
            {
                self.refer(zone, &cut, &mut out);
                return out;
            }
            let (node, synthesized) = match zone.nodes.get(&name) {
                Some(node) => (node, false),
                None => match zone.wildcard_of(&name) {
                    Some((source, node)) => {
                        out.wildcard.get_or_insert(source);
                        (node, true)
                    }
                    None => {
                        out.outcome = Outcome::NoSuchName;
                        out.authorities.push(Cow::Borrowed(&zone.negative_soa));
                        return out;
                    }
                },
            };
            // A synthesized record is the wildcard's with the asked name as owner.
            let own = |record: &'s Record| -> Cow<'s, Record> {
                if synthesized {
                    let mut record = record.clone();
                    record.name = Name::from(&name);
                    Cow::Owned(record)
                } else {
                    Cow::Borrowed(record)
                }
            };
            match node {
                Node::EmptyNonTerminal => {}
                Node::Gslb => {
                    let Some(gslb) = zone.gslb.get(&name) else {
                        // Cannot happen: the builder adds both together. Answer NODATA.
                        out.authorities.push(Cow::Borrowed(&zone.negative_soa));
                        return out;
                    };
                    out.service = Some(gslb.service);
                    let v6 = match qtype {
                        RecordType::A => Some(false),
                        RecordType::AAAA => Some(true),
                        // RFC 8482: one RRset is a complete answer to ANY.
                        RecordType::ANY => Some(!gslb.has_family(false)),
                        _ => None,
                    };
                    if let Some(v6) = v6 {
                        let choice = gslb.choose(&self.geo, &self.regions, client);
                        let (records, from) = gslb.answer(&choice, v6);
                        if !records.is_empty() {
                            out.answers.extend(records.into_iter().map(Cow::Borrowed));
                            out.scope = choice.scope;
                            out.gslb = Some((gslb.as_ref(), choice, from));
                            return out;
                        }
                    }
                }
                Node::Static(sets) => {
                    let wanted = if qtype == RecordType::ANY {
                        sets.first()
                    } else {
                        sets.iter().find(|s| s.record_type == qtype)
                    };
                    if let Some(set) = wanted {
                        out.answers.extend(set.records.iter().map(own));
                        self.add_addresses(set, &mut out.additionals);
                        return out;
                    }
                    let cname = sets.iter().find(|s| s.record_type == RecordType::CNAME);
                    if let Some(record) = cname.and_then(|s| s.records.first()) {
                        out.answers.push(own(record));
                        let RData::CNAME(target) = &record.data else {
                            return out;
                        };
                        name = LowerName::from(&target.0);
                        match self.zone_for(&name, qtype) {
                            Some(next) => {
                                zone = next;
                                continue;
                            }
                            // The target is not ours: the resolver follows it.
                            None => return out,
                        }
                    }
                }
            }
            // The name exists but has no data of this type: NODATA.
            out.authorities.push(Cow::Borrowed(&zone.negative_soa));
            return out;
        }
        // A CNAME chain longer than we follow: answer what we have.
        out
    }

    /// A referral to the delegation at `cut`: its NS set in authority, and in additional
    /// the addresses of its servers that we have, the in-domain glue (names at or below
    /// the cut, RFC 9471) first.
    fn refer<'s>(&'s self, zone: &'s ZoneTable, cut: &LowerName, out: &mut Resolution<'s>) {
        out.outcome = Outcome::Referral;
        let Some(Node::Static(sets)) = zone.nodes.get(cut) else {
            return;
        };
        let Some(ns) = sets.iter().find(|s| s.record_type == RecordType::NS) else {
            return;
        };
        out.authorities.extend(ns.records.iter().map(Cow::Borrowed));
        let (mut required, mut optional) = (Vec::new(), Vec::new());
        for record in &ns.records {
            let RData::NS(target) = &record.data else {
                continue;
            };
            let target = LowerName::from(&target.0);
            let into = if cut.zone_of(&target) {
                &mut required
            } else {
                &mut optional
            };
            self.addresses_of(&target, into);
        }
        out.required_additionals = required.len();
        out.additionals.extend(required);
        out.additionals.extend(optional);
    }

    /// A and AAAA records of the names an NS, MX or SRV set points to, where they are
    /// static names of our zones (RFC 1035 section 3.3.9, RFC 2782).
    fn add_addresses<'s>(&'s self, set: &'s RrSet, additionals: &mut Vec<&'s Record>) {
        for record in &set.records {
            let target = match &record.data {
                RData::NS(ns) => &ns.0,
                RData::MX(mx) => &mx.exchange,
                RData::SRV(srv) => &srv.target,
                _ => return,
            };
            self.addresses_of(&LowerName::from(target), additionals);
        }
    }

    /// The A and AAAA records of a static name of our zones, if it is one.
    fn addresses_of<'s>(&'s self, name: &LowerName, into: &mut Vec<&'s Record>) {
        let Some(Node::Static(sets)) = self.zone_of(name).and_then(|z| z.nodes.get(name)) else {
            return;
        };
        for set in sets
            .iter()
            .filter(|s| matches!(s.record_type, RecordType::A | RecordType::AAAA))
        {
            for record in &set.records {
                // One name may be the target of several records: list it once.
                if !into.iter().any(|r| std::ptr::eq(*r, record)) {
                    into.push(record);
                }
            }
        }
    }
}
