//! [`Snapshot`]: the immutable routing table, and the pure name lookup the query path runs
//! against it ([`Snapshot::resolve`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use hickory_proto::rr::{LowerName, RData, Record, RecordType};

use super::build::MemberKey;
use crate::config::{Policy, WhenAllDown};
use crate::zone::RrSet;

/// Longest CNAME chain followed inside our zones before giving up (loop guard).
const MAX_CNAME_CHAIN: usize = 8;

/// Everything a query needs, built off the query path and never mutated.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every published snapshot.
    pub generation: u64,
    /// Our EDNS UDP payload size.
    pub udp_payload: u16,
    /// Zones, most specific origin first.
    pub(crate) zones: Vec<ZoneTable>,
    /// GSLB names in config order, for labels, status and explain.
    pub services: Vec<ServiceInfo>,
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
    /// Every name that exists in the zone.
    pub nodes: HashMap<LowerName, Node>,
}

/// What a name in a zone is.
#[derive(Debug)]
pub enum Node {
    /// A name that exists only because names below it do (RFC 4592 section 2.2.2):
    /// NODATA, never NXDOMAIN.
    EmptyNonTerminal,
    /// A GSLB name: answered from its pool.
    Gslb(GslbNode),
    /// A name from the zone file.
    Static(Vec<RrSet>),
}

/// The answer of a GSLB name, ranked by the builder.
#[derive(Debug)]
pub struct GslbNode {
    /// Index into [`Snapshot::services`].
    pub service: usize,
    /// Every endpoint of the pool answered from, best first, answered or not, with why.
    pub candidates: Vec<Candidate>,
    /// How the answered endpoints were chosen.
    pub mode: Selection,
    /// A records, best first, already cut to the service's `answers`.
    pub a: Vec<Record>,
    /// For each A record, the index of its endpoint in `candidates`.
    pub a_from: Vec<usize>,
    /// AAAA records, best first, already cut to the service's `answers`.
    pub aaaa: Vec<Record>,
    /// For each AAAA record, the index of its endpoint in `candidates`.
    pub aaaa_from: Vec<usize>,
}

impl GslbNode {
    /// The records of a family and the candidates they come from.
    pub fn family(&self, v6: bool) -> (&[Record], &[usize]) {
        if v6 {
            (&self.aaaa, &self.aaaa_from)
        } else {
            (&self.a, &self.a_from)
        }
    }
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

/// One endpoint as the builder ranked it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its identity.
    pub key: MemberKey,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Health checks say up.
    pub up: bool,
    /// An operator drained it: no new answers.
    pub drained: bool,
    /// It is in the answer (before the cut to `answers`).
    pub eligible: bool,
    /// Answers that included it, since start; survives rebuilds.
    pub answered: Arc<AtomicU64>,
    /// The same, exported as `gto_answers_total`.
    pub counter: metrics::Counter,
}

/// The outcome of a lookup: which records go where, borrowed from the snapshot.
#[derive(Debug, Default)]
pub struct Resolution<'s> {
    /// What the lookup concluded.
    pub outcome: Outcome,
    /// Answer section (a CNAME chain first, when one was followed).
    pub answers: Vec<&'s Record>,
    /// Authority section (the SOA of negative answers).
    pub authorities: Vec<&'s Record>,
    /// Additional section (glue for NS answers).
    pub additionals: Vec<&'s Record>,
    /// The GSLB name answered, if any (index into [`Snapshot::services`]).
    pub service: Option<usize>,
    /// The GSLB node and family whose records were answered, for per-endpoint counting.
    pub gslb: Option<(&'s GslbNode, bool)>,
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
}

impl Snapshot {
    /// The most specific zone containing `name`.
    pub fn zone_of(&self, name: &LowerName) -> Option<&ZoneTable> {
        self.zones.iter().find(|z| z.origin.zone_of(name))
    }

    /// The GSLB node of a name, if it is one.
    pub fn gslb_node(&self, name: &LowerName) -> Option<&GslbNode> {
        match self.zone_of(name)?.nodes.get(name)? {
            Node::Gslb(node) => Some(node),
            _ => None,
        }
    }

    /// Resolves one question. Pure: no I/O, no clock, no allocation beyond the result.
    pub fn resolve(&self, name: &LowerName, qtype: RecordType) -> Resolution<'_> {
        let mut out = Resolution::default();
        let Some(mut zone) = self.zone_of(name) else {
            out.outcome = Outcome::NotOurs;
            return out;
        };
        let mut name = name.clone();
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(node) = zone.nodes.get(&name) else {
                out.outcome = Outcome::NoSuchName;
                out.authorities.push(&zone.negative_soa);
                return out;
            };
            match node {
                Node::EmptyNonTerminal => {}
                Node::Gslb(gslb) => {
                    out.service = Some(gslb.service);
                    let v6 = match qtype {
                        RecordType::A => Some(false),
                        RecordType::AAAA => Some(true),
                        // RFC 8482: one RRset is a complete answer to ANY.
                        RecordType::ANY => Some(gslb.a.is_empty()),
                        _ => None,
                    };
                    if let Some(v6) = v6 {
                        let (records, _) = gslb.family(v6);
                        if !records.is_empty() {
                            out.answers.extend(records.iter());
                            out.gslb = Some((gslb, v6));
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
                        out.answers.extend(set.records.iter());
                        if qtype == RecordType::NS {
                            self.add_glue(set, &mut out.additionals);
                        }
                        return out;
                    }
                    let cname = sets.iter().find(|s| s.record_type == RecordType::CNAME);
                    if let Some(record) = cname.and_then(|s| s.records.first()) {
                        out.answers.push(record);
                        let RData::CNAME(target) = &record.data else {
                            return out;
                        };
                        name = LowerName::from(&target.0);
                        match self.zone_of(&name) {
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
            out.authorities.push(&zone.negative_soa);
            return out;
        }
        // A CNAME chain longer than we follow: answer what we have.
        out
    }

    /// A and AAAA records of in-zone NS targets.
    fn add_glue<'s>(&'s self, set: &'s RrSet, additionals: &mut Vec<&'s Record>) {
        for record in &set.records {
            let RData::NS(target) = &record.data else {
                continue;
            };
            let target = LowerName::from(&target.0);
            let Some(Node::Static(sets)) = self.zone_of(&target).and_then(|z| z.nodes.get(&target))
            else {
                continue;
            };
            for glue in sets
                .iter()
                .filter(|s| matches!(s.record_type, RecordType::A | RecordType::AAAA))
            {
                additionals.extend(glue.records.iter());
            }
        }
    }
}
