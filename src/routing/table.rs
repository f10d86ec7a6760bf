//! [`Snapshot`]: the immutable routing table, and the pure name lookup the query path runs
//! against it ([`Snapshot::resolve`]).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use super::gslb::{Choice, Client, GslbNode};
use super::node::{Node, Nodes};
use super::rrl::RateLimiter;
use super::wire::FastIndex;
use crate::config::{Policy, Region, WhenAllDown};
use crate::geo::GeoTable;
use crate::zone::RrSet;

/// Longest CNAME chain followed inside our zones before giving up (loop guard).
const MAX_CNAME_CHAIN: usize = 8;

/// Everything a query needs, built off the query path and never mutated.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every published snapshot.
    pub generation: u64,
    /// Unique to this snapshot within the process (the generation is per builder): what a
    /// worker's caches of choices are kept for.
    pub serial: u64,
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
    /// The dnstap log (shared while `[dnstap]` is unchanged); None when off.
    pub dnstap: Option<Arc<crate::dnstap::Tap>>,
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
    pub nodes: Arc<Nodes>,
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
    pub fn wildcard_for(&self, name: &LowerName) -> Option<Node<'_>> {
        self.wildcard_of(name).map(|(_, node)| node)
    }

    /// The owner (`*.closest-encloser`) and node of the wildcard that synthesizes `name`.
    pub fn wildcard_of(&self, name: &LowerName) -> Option<(LowerName, Node<'_>)> {
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
    pub additionals: Vec<Record>,
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
    /// The records owned by the name asked were synthesized from a wildcard (they are
    /// then owned by the name as the client wrote it).
    pub asked_synthesized: bool,
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
        for hop in 0..MAX_CNAME_CHAIN {
            // At or below a delegation the child's servers answer (DS at the cut itself
            // is the parent's: RFC 4035 section 2.4).
            if let Some(cut) = zone.cut_of(&name)
                && !(qtype == RecordType::DS && cut == name)
            {
                self.refer(zone, &cut, &mut out);
                return out;
            }
            // The records' owner: the zone's own name, or for records synthesized from a
            // wildcard the name asked.
            let (owner, node) = match zone.nodes.get_key_value(&name) {
                Some((owner, node)) => (Name::from(owner), node),
                None => match zone.wildcard_of(&name) {
                    Some((source, node)) => {
                        out.wildcard.get_or_insert(source);
                        out.asked_synthesized |= hop == 0;
                        (Name::from(&name), node)
                    }
                    None => {
                        out.outcome = Outcome::NoSuchName;
                        out.authorities.push(Cow::Borrowed(&zone.negative_soa));
                        return out;
                    }
                },
            };
            match node {
                Node::EmptyNonTerminal => {}
                Node::Gslb => {
                    if self.answer_gslb(zone, &name, qtype, client, &mut out) {
                        return out;
                    }
                }
                Node::Static(sets) => {
                    let wanted = if qtype == RecordType::ANY {
                        sets.first()
                    } else {
                        sets.iter().find(|s| s.record_type == qtype)
                    };
                    if let Some(set) = wanted {
                        out.answers
                            .extend(set.records(&owner).into_iter().map(Cow::Owned));
                        self.add_addresses(set, &mut out.additionals);
                        return out;
                    }
                    let cname = sets.iter().find(|s| s.record_type == RecordType::CNAME);
                    if let Some(record) = cname.and_then(|s| s.records(&owner).pop()) {
                        let RData::CNAME(target) = &record.data else {
                            return out;
                        };
                        name = LowerName::from(&target.0);
                        out.answers.push(Cow::Owned(record));
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

    /// A GSLB name's answer for `client` into `out`; true when it is complete (records
    /// chosen), false for NODATA (another type, or no endpoint to answer).
    #[inline]
    fn answer_gslb<'s>(
        &'s self,
        zone: &'s ZoneTable,
        name: &LowerName,
        qtype: RecordType,
        client: Option<Client>,
        out: &mut Resolution<'s>,
    ) -> bool {
        let Some(gslb) = zone.gslb.get(name) else {
            // Cannot happen: the builder adds both together. Answer NODATA.
            return false;
        };
        out.service = Some(gslb.service);
        let v6 = match qtype {
            RecordType::A => Some(false),
            RecordType::AAAA => Some(true),
            // RFC 8482: one RRset is a complete answer to ANY.
            RecordType::ANY => Some(!gslb.has_family(false)),
            _ => None,
        };
        let Some(v6) = v6 else {
            return false;
        };
        let choice = gslb.choose(&self.geo, &self.regions, client);
        let (records, from) = gslb.answer(&choice, v6);
        if records.is_empty() {
            return false;
        }
        out.answers.extend(records.into_iter().map(Cow::Borrowed));
        out.scope = choice.scope;
        out.gslb = Some((gslb.as_ref(), choice, from));
        true
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
        out.authorities
            .extend(ns.records(&Name::from(cut)).into_iter().map(Cow::Owned));
        let (mut required, mut optional) = (Vec::new(), Vec::new());
        for data in ns.rdata() {
            let RData::NS(target) = data.as_ref() else {
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
    fn add_addresses(&self, set: &RrSet, additionals: &mut Vec<Record>) {
        for data in set.rdata() {
            let target = match data.as_ref() {
                RData::NS(ns) => &ns.0,
                RData::MX(mx) => &mx.exchange,
                RData::SRV(srv) => &srv.target,
                _ => return,
            };
            self.addresses_of(&LowerName::from(target), additionals);
        }
    }

    /// The A and AAAA records of a static name of our zones, if it is one.
    fn addresses_of(&self, name: &LowerName, into: &mut Vec<Record>) {
        let Some(Node::Static(sets)) = self.zone_of(name).and_then(|z| z.nodes.get(name)) else {
            return;
        };
        for set in sets
            .iter()
            .filter(|s| matches!(s.record_type, RecordType::A | RecordType::AAAA))
        {
            for record in set.records(&Name::from(name)) {
                // One name may be the target of several records: list it once.
                if !into.contains(&record) {
                    into.push(record);
                }
            }
        }
    }
}
