//! The prepared wire form of answers, built with each config's snapshot: the bytes the
//! UDP fast path (`dns::fast`) copies per query.
//!
//! For static names: the whole answer/authority/additional tail of each type (and the
//! NODATA tail), encoded once with hickory's own encoder from the general lookup of this
//! snapshot, so the fast path's answers are byte for byte the general path's. For GSLB
//! names: each address record in its first-in-the-answer form and in its compressed form
//! (owner name as a pointer to the first answer).

use std::collections::HashMap;

use hickory_proto::op::{EmitAndCount, MessageType, Metadata, OpCode, emit_message_parts};
use hickory_proto::rr::{LowerName, Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use super::{Node, Snapshot};

/// Pre-encoded bytes after the question, with the section counts they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    pub(crate) bytes: Box<[u8]>,
    pub(crate) answers: u16,
    pub(crate) authorities: u16,
    pub(crate) additionals: u16,
}

/// What the fast path knows of one name.
#[derive(Debug)]
pub(crate) enum Entry {
    /// A name with a CNAME (its chains), or at or below a delegation: the general path
    /// answers.
    General,
    /// A GSLB name: service index, the NODATA tail for other types, and whether its zone
    /// is signed (then a query with DO gets the answer's signatures appended, and NODATA
    /// from the general path).
    Gslb {
        service: usize,
        nodata: Tail,
        signed: bool,
        /// Signed NODATA tails by the families the name can answer now (A, AAAA).
        signed_nodata: Vec<((bool, bool), Tail)>,
    },
    /// A static name: the tail per type it has, and the NODATA tail for the rest; in a
    /// signed zone the same with DNSSEC records, for queries with DO.
    Static {
        types: Vec<(u16, Tail)>,
        nodata: Tail,
        signed: Option<Box<SignedTails>>,
    },
}

/// The tails of a static name for queries with DO.
#[derive(Debug)]
pub(crate) struct SignedTails {
    pub(crate) types: Vec<(u16, Tail)>,
    pub(crate) nodata: Tail,
}

/// An address record of a GSLB answer in its two wire forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRecord {
    /// As the first answer: the full owner name.
    pub first: Box<[u8]>,
    /// As a later answer: the owner name compressed to a pointer at the first answer.
    pub later: Box<[u8]>,
}

/// Names the fast path can answer, keyed by their lower-cased wire form. Hashed with
/// foldhash (seeded per process): several times faster than SipHash on short keys, and the
/// map is only read per query, never grown by it.
#[derive(Debug, Default)]
pub struct FastIndex {
    pub(crate) names: HashMap<Box<[u8]>, Entry, foldhash::fast::RandomState>,
    /// Zones, most specific first.
    pub(crate) zones: Vec<FastZone>,
}

/// What the fast path knows of a zone, for names it does not index.
#[derive(Debug)]
pub(crate) struct FastZone {
    /// The lower-cased wire origin.
    pub(crate) origin: Box<[u8]>,
    /// The SOA of negative answers.
    pub(crate) soa: Record,
    /// No wildcards and no delegations: a name under the origin that is not indexed does
    /// not exist (NXDOMAIN). Otherwise the general path answers such names.
    pub(crate) plain: bool,
    /// The zone's signatures when it is signed: the denial of a name that does not exist
    /// comes from its cache.
    pub(crate) signing: Option<std::sync::Arc<crate::routing::ZoneSigning>>,
}

/// The question section hickory-server writes for a request: the raw bytes, with one
/// label pointer stored for the whole section (which never matches a later name).
struct RawQuestion<'a>(&'a [u8]);

impl EmitAndCount for RawQuestion<'_> {
    fn emit(&mut self, encoder: &mut BinEncoder<'_>) -> Result<usize, hickory_proto::ProtoError> {
        let start = encoder.offset();
        encoder.emit_vec(self.0)?;
        encoder.store_label_pointer(start, start + self.0.len());
        Ok(1)
    }
}

/// A question for `name` (the case does not matter: only its length shapes the tail).
fn question_bytes(name: &Name, qtype: RecordType) -> Vec<u8> {
    let mut bytes = name.to_lowercase().to_bytes().unwrap_or_default();
    bytes.extend_from_slice(&u16::from(qtype).to_be_bytes());
    bytes.extend_from_slice(&1u16.to_be_bytes());
    bytes
}

/// Encodes the sections after the question as hickory-server would for this question.
pub(crate) fn encode_tail(
    question: &[u8],
    answers: &[&Record],
    authorities: &[&Record],
    additionals: &[&Record],
) -> Option<Tail> {
    let mut buffer = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut buffer);
    let metadata = Metadata::new(0, MessageType::Response, OpCode::Query);
    let header = emit_message_parts(
        &metadata,
        &mut RawQuestion(question),
        &mut answers.iter().copied(),
        &mut authorities.iter().copied(),
        &mut additionals.iter().copied(),
        None,
        None,
        &mut encoder,
    )
    .ok()?;
    let start = 12 + question.len();
    Some(Tail {
        bytes: buffer.get(start..)?.into(),
        answers: header.counts.answers,
        authorities: header.counts.authorities,
        additionals: header.counts.additionals,
    })
}

/// The two wire forms of each record, for a GSLB name whose question is `question`.
pub fn wire_records(question: &[u8], records: &[Record]) -> Vec<WireRecord> {
    records
        .iter()
        .filter_map(|record| {
            let mut buffer = Vec::with_capacity(128);
            let mut encoder = BinEncoder::new(&mut buffer);
            encoder.emit_vec(&[0; 12]).ok()?;
            encoder.emit_vec(question).ok()?;
            encoder.store_label_pointer(12, 12 + question.len());
            let start = encoder.offset();
            record.emit(&mut encoder).ok()?;
            let middle = encoder.offset();
            record.emit(&mut encoder).ok()?;
            let end = encoder.offset();
            Some(WireRecord {
                first: buffer.get(start..middle)?.into(),
                later: buffer.get(middle..end)?.into(),
            })
        })
        .collect()
}

/// The question a GSLB name's records are prepared for (type A; only its length matters).
pub fn gslb_question(name: &Name) -> Vec<u8> {
    question_bytes(name, RecordType::A)
}

impl FastIndex {
    /// Indexes every static name and GSLB name of a snapshot. Depends on the config only.
    pub fn build(snapshot: &Snapshot) -> Self {
        let mut names = HashMap::default();
        for zone in &snapshot.zones {
            for (name, node) in zone.nodes.iter() {
                let name_ref = Name::from(name);
                let key: Box<[u8]> = name_ref.to_bytes().unwrap_or_default().into();
                let delegated_apex =
                    *name == zone.origin && snapshot.delegating_parent(zone).is_some();
                if zone.cut_of(name).is_some() || delegated_apex {
                    // Referrals, and DS at a cut (also a child apex we serve, whose DS
                    // is the parent's): the general path answers.
                    names.insert(key, Entry::General);
                    continue;
                }
                let signed = zone.signing.is_some();
                let tail_for = |qtype, dnssec: bool| {
                    let question = question_bytes(&name_ref, qtype);
                    let mut r = snapshot.resolve(name, qtype, None);
                    if dnssec {
                        crate::routing::decorate(snapshot, name, qtype, &mut r);
                    }
                    encode_tail(
                        &question,
                        &refs(&r.answers),
                        &refs(&r.authorities),
                        &r.additionals,
                    )
                };
                let nodata_for = |qtype| tail_for(qtype, false);
                let entry = match node {
                    Node::Gslb => {
                        let Some(gslb) = zone.gslb.get(name) else {
                            continue;
                        };
                        let Some(nodata) = nodata_for(RecordType::TXT) else {
                            continue;
                        };
                        let signed_nodata = zone
                            .signing
                            .as_ref()
                            .map(|signing| {
                                let question = question_bytes(&name_ref, RecordType::TXT);
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
                            })
                            .unwrap_or_default();
                        Entry::Gslb {
                            service: gslb.service,
                            nodata,
                            signed,
                            signed_nodata,
                        }
                    }
                    Node::EmptyNonTerminal => {
                        let Some(nodata) = nodata_for(RecordType::A) else {
                            continue;
                        };
                        let signed = match signed.then(|| tail_for(RecordType::A, true)) {
                            None => None,
                            Some(Some(nodata)) => Some(Box::new(SignedTails {
                                types: Vec::new(),
                                nodata,
                            })),
                            Some(None) => {
                                names.insert(key, Entry::General);
                                continue;
                            }
                        };
                        Entry::Static {
                            types: Vec::new(),
                            nodata,
                            signed,
                        }
                    }
                    Node::Static(sets) => {
                        if sets.iter().any(|s| s.record_type == RecordType::CNAME) {
                            names.insert(key, Entry::General);
                            continue;
                        }
                        let tails = |dnssec: bool| -> Option<(Vec<(u16, Tail)>, Tail)> {
                            let types = sets
                                .iter()
                                .map(|set| {
                                    let qtype = set.record_type;
                                    Some((u16::from(qtype), tail_for(qtype, dnssec)?))
                                })
                                .collect::<Option<Vec<_>>>()?;
                            // NODATA carries the SOA only; any type the name lacks gives
                            // it (with DNSSEC, the NSEC lists what it has).
                            Some((types, tail_for(RecordType::NULL, dnssec)?))
                        };
                        let Some((types, nodata)) = tails(false) else {
                            continue;
                        };
                        let signed = match signed.then(|| tails(true)) {
                            None => None,
                            Some(Some((types, nodata))) => {
                                Some(Box::new(SignedTails { types, nodata }))
                            }
                            // Too large to prepare: the general path answers DO queries.
                            Some(None) => {
                                names.insert(key, Entry::General);
                                continue;
                            }
                        };
                        Entry::Static {
                            types,
                            nodata,
                            signed,
                        }
                    }
                };
                names.insert(key, entry);
            }
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

    /// Number of indexed names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Borrows each record of a section.
pub(crate) fn refs<'a>(records: &'a [std::borrow::Cow<'_, Record>]) -> Vec<&'a Record> {
    records.iter().map(AsRef::as_ref).collect()
}

/// Lower-cased wire form of a name (the index key).
pub fn key_of(name: &LowerName) -> Vec<u8> {
    Name::from(name).to_bytes().unwrap_or_default()
}
