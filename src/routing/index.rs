//! Building the fast path's index ([`FastIndex`]) from a snapshot: every static and GSLB
//! name with its prepared tails, encoded by hickory from this snapshot's own general
//! lookup (and, in a signed zone, [`super::decorate`]d), so the fast path's answers are
//! byte for byte the general path's.

use std::collections::HashMap;

use hickory_proto::rr::{LowerName, Name, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;

use super::encode::{Tail, encode_tail, question_bytes};
use super::wire::{Entry, FastIndex, FastZone, SignedTails, key_of};
use super::{Node, Snapshot};

/// Names from which the index is built by several threads.
pub(super) const PARALLEL_FROM: usize = 20_000;

impl FastIndex {
    /// Indexes every static name and GSLB name of a snapshot. Depends on the config only.
    ///
    /// A large zone (over 20,000 names) is indexed by a few threads at once
    /// (each resolves and encodes its share of the names): the first snapshot of a
    /// 200,000-record zone, and every rebuild after a reload of it, is ready sooner.
    pub fn build(snapshot: &Snapshot) -> Self {
        let all: Vec<(&crate::routing::ZoneTable, &LowerName, Node<'_>)> = snapshot
            .zones
            .iter()
            .flat_map(|zone| {
                zone.nodes
                    .iter()
                    .map(move |(name, node)| (zone, name, node))
            })
            .collect();
        let index = |share: &[(&crate::routing::ZoneTable, &LowerName, Node<'_>)]| {
            let tails = Tails::default();
            share
                .iter()
                .filter_map(|(zone, name, node)| {
                    let key: Box<[u8]> = Name::from(*name).to_bytes().unwrap_or_default().into();
                    Some((key, entry(snapshot, zone, name, *node, &tails)?))
                })
                .collect::<Vec<_>>()
        };
        let mut names: HashMap<Box<[u8]>, Entry, _> = HashMap::default();
        names.reserve(all.len());
        for entries in super::shares::in_shares(&all, PARALLEL_FROM, index) {
            names.extend(entries);
        }
        let zones = snapshot
            .zones
            .iter()
            .map(|zone| FastZone {
                origin: key_of(&zone.origin).into_boxed_slice(),
                soa: zone.negative_soa.clone(),
                plain: zone.cuts.is_empty() && !zone.has_wildcards,
                signing: zone.signing.clone(),
            })
            .collect();
        Self { names, zones }
    }
}

/// The fast path's entry for one name of a zone: its prepared tails, or [`Entry::General`]
/// for what the general path answers (referrals, CNAMEs, DS at a cut, signed tails too
/// large to prepare); None for a name it never answers.
fn entry(
    snapshot: &Snapshot,
    zone: &crate::routing::ZoneTable,
    name: &LowerName,
    node: Node<'_>,
    tails: &Tails,
) -> Option<Entry> {
    let name_ref = Name::from(name);
    let delegated_apex = *name == zone.origin && snapshot.delegating_parent(zone).is_some();
    if zone.cut_of(name).is_some() || delegated_apex {
        // Referrals, and DS at a cut (also a child apex we serve, whose DS
        // is the parent's): the general path answers.
        return Some(Entry::General);
    }
    let signed = zone.signing.is_some();
    if zone
        .signing
        .as_ref()
        .is_some_and(|signing| signing.signs_on_first_use())
        && !matches!(node, Node::Gslb)
    {
        // Static sets signed on first use, for a few seconds: the general path answers
        // (an index of signed tails would sign the whole zone here).
        return Some(Entry::General);
    }
    let tail_for = |qtype, dnssec: bool| {
        let question = question_bytes(&name_ref, qtype);
        let mut r = snapshot.resolve(name, qtype, None);
        if dnssec {
            crate::routing::decorate(snapshot, name, qtype, &mut r);
        }
        let tail = encode_tail(
            &question,
            &refs(&r.answers),
            &refs(&r.authorities),
            &r.additionals.iter().collect::<Vec<_>>(),
        )?;
        Some(tails.shared(tail))
    };
    let nodata_for = |qtype| tail_for(qtype, false);
    let entry = match node {
        Node::Gslb => {
            let gslb = zone.gslb.get(name)?;
            let nodata = nodata_for(RecordType::TXT)?;
            let signed_nodata = zone
                .signing
                .as_deref()
                .map(|signing| signed_gslb_nodata(signing, name, &name_ref))
                .unwrap_or_default()
                .into();
            Entry::Gslb {
                service: gslb.service,
                nodata,
                signed,
                signed_nodata,
            }
        }
        Node::EmptyNonTerminal => {
            let nodata = nodata_for(RecordType::A)?;
            let signed = match signed.then(|| tail_for(RecordType::A, true)) {
                None => None,
                Some(Some(nodata)) => Some(Box::new(SignedTails {
                    types: Box::default(),
                    nodata,
                })),
                Some(None) => {
                    return Some(Entry::General);
                }
            };
            Entry::Static {
                types: Box::default(),
                nodata,
                signed,
            }
        }
        Node::Static(sets) => {
            if sets.iter().any(|s| s.record_type == RecordType::CNAME) {
                return Some(Entry::General);
            }
            let tails_of = |dnssec: bool| -> Option<(TypeTails, Tail)> {
                let types = sets
                    .iter()
                    .map(|set| {
                        let qtype = set.record_type;
                        Some((u16::from(qtype), tail_for(qtype, dnssec)?))
                    })
                    .collect::<Option<Box<[_]>>>()?;
                // NODATA carries the SOA only; any type the name lacks gives
                // it (with DNSSEC, the NSEC lists what it has).
                Some((types, tail_for(RecordType::NULL, dnssec)?))
            };
            let (types, nodata) = tails_of(false)?;
            let signed = match signed.then(|| tails_of(true)) {
                None => None,
                Some(Some((types, nodata))) => Some(Box::new(SignedTails { types, nodata })),
                // Too large to prepare: the general path answers DO queries.
                Some(None) => {
                    return Some(Entry::General);
                }
            };
            Entry::Static {
                types,
                nodata,
                signed,
            }
        }
    };
    Some(entry)
}

/// A static name's tail per type it has.
type TypeTails = Box<[(u16, Tail)]>;

/// The tails made so far by one thread of an index build, each kept once: most of a big
/// zone's names have the same NODATA tail (and many the same answer), which then takes
/// one allocation instead of one per name.
#[derive(Default)]
struct Tails(
    std::cell::RefCell<
        std::collections::HashSet<std::sync::Arc<[u8]>, foldhash::fast::RandomState>,
    >,
);

impl Tails {
    /// `tail`, with its bytes shared with an equal tail made before.
    fn shared(&self, mut tail: Tail) -> Tail {
        let mut made = self.0.borrow_mut();
        match made.get(&tail.bytes) {
            Some(bytes) => tail.bytes = bytes.clone(),
            None => {
                made.insert(tail.bytes.clone());
            }
        }
        tail
    }
}

/// The signed NODATA tails of a GSLB name, by the families it can answer now (A, AAAA).
fn signed_gslb_nodata(
    signing: &crate::routing::ZoneSigning,
    name: &LowerName,
    name_ref: &Name,
) -> Vec<((bool, bool), Tail)> {
    let question = question_bytes(name_ref, RecordType::TXT);
    signing
        .gslb_nsec
        .iter()
        .filter(|((owner, _, _), _)| owner == name)
        .filter_map(|((_, a, aaaa), proof)| {
            let mut authority = vec![&signing.negative_soa];
            authority.extend(&signing.negative_soa_sigs);
            authority.extend(&proof.records);
            authority.extend(&proof.sigs);
            let tail = encode_tail(&question, &[], &authority, &[])?;
            Some(((*a, *aaaa), tail))
        })
        .collect()
}

/// Borrows each record of a section.
pub(crate) fn refs<'a>(records: &'a [std::borrow::Cow<'_, Record>]) -> Vec<&'a Record> {
    records.iter().map(AsRef::as_ref).collect()
}
