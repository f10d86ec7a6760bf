//! The signed form of an answer for a query with DO: RRSIGs after each set, the signed SOA
//! and compact-denial NSEC of a negative answer, the DS or its proof at a referral. Reads
//! only what [`super::signing`] signed in advance, or signs on first use through its
//! bounded caches.

use std::borrow::Cow;

use hickory_proto::dnssec::rdata::DNSSECRData;
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::dnssec::{NXNAME, Signed};
use crate::routing::signing::Link;
use crate::routing::{Node, Outcome, Resolution, Snapshot, ZoneSigning, ZoneTable};

/// Adds DNSSEC records to an answer for a query with DO: the RRSIG after each RRset of
/// the answer section, and in the authority section the signed SOA and NSEC of a negative
/// answer, or the DS (or the NSEC proving there is none) of a referral. `qname` is the
/// name asked for. Returns true when the answer is a compact denial of a name that does
/// not exist (its RCODE becomes NOERROR unless the client asked for NXDOMAIN with CO).
pub fn decorate<'s>(
    snapshot: &'s Snapshot,
    qname: &LowerName,
    qtype: RecordType,
    resolution: &mut Resolution<'s>,
) -> bool {
    if resolution.outcome == Outcome::NotOurs {
        return false;
    }
    let (final_name, positive) = sign_answers(snapshot, qname, resolution);
    match resolution.outcome {
        Outcome::NotOurs => false,
        Outcome::Referral => {
            referral_proof(snapshot, resolution);
            false
        }
        Outcome::Found if positive && !resolution.answers.is_empty() => false,
        Outcome::Found | Outcome::NoSuchName => {
            negative_proof(snapshot, &final_name, qtype, resolution)
        }
    }
}

/// The answer section with each RRset followed by its signatures (a wildcard's own for a
/// synthesized set, with the proof that the name asked does not exist), and the name the
/// answer ends at after CNAMEs. Returns that name and whether the answer is positive.
fn sign_answers<'s>(
    snapshot: &'s Snapshot,
    qname: &LowerName,
    resolution: &mut Resolution<'s>,
) -> (LowerName, bool) {
    // Answer section: each RRset followed by its signatures.
    let answers = std::mem::take(&mut resolution.answers);
    let mut out: Vec<Cow<'s, Record>> = Vec::with_capacity(answers.len() * 2);
    let gslb_set = resolution.gslb.as_ref();
    let mut final_name = qname.clone();
    // Proofs that the names answered from a wildcard do not exist themselves.
    let mut wildcard_proofs: Vec<Link<'s>> = Vec::new();
    let mut start = 0;
    while start < answers.len() {
        let first = answers[start].as_ref();
        let owner = LowerName::from(&first.name);
        let rtype = first.record_type();
        let mut end = start + 1;
        while end < answers.len()
            && answers[end].record_type() == rtype
            && LowerName::from(&answers[end].name) == owner
        {
            end += 1;
        }
        let group = &answers[start..end];
        let records: Vec<&Record> = group.iter().map(AsRef::as_ref).collect();
        // A set synthesized from a wildcard is owned by a name the zone does not hold.
        let synthesized = snapshot
            .zone_for(&owner, rtype)
            .is_some_and(|zone| !zone.nodes.contains_key(&owner));
        let is_last = end == answers.len();
        // DS at a child's apex is the parent's (when we serve both).
        let sigs: Option<Vec<Cow<'s, Record>>> = snapshot
            .zone_for(&owner, rtype)
            .and_then(|zone| zone.signing.as_deref())
            .and_then(|signing| {
                if synthesized {
                    // The wildcard's own signatures, owned by the name asked: their label
                    // count (without `*`) tells a validator the set was synthesized.
                    let zone = snapshot.zone_for(&owner, rtype)?;
                    let (wildcard, _) = zone.wildcard_of(&owner)?;
                    let sigs = signing.sigs_of(&wildcard, rtype)?;
                    if let Some(proof) = signing.wildcard_cover(&wildcard, &owner)
                        && !wildcard_proofs.iter().any(|p| p.owner() == proof.owner())
                    {
                        wildcard_proofs.push(proof);
                    }
                    Some(
                        sigs.into_iter()
                            .map(|mut sig| {
                                sig.name = first.name.clone();
                                Cow::Owned(sig)
                            })
                            .collect(),
                    )
                } else if let Some((node, _, _)) = gslb_set
                    .filter(|_| is_last && matches!(rtype, RecordType::A | RecordType::AAAA))
                {
                    let signed = node.signatures_of_records(&records)?;
                    Some(signed.sigs.iter().cloned().map(Cow::Owned).collect())
                } else {
                    let sigs = signing.sigs_of(&owner, rtype)?;
                    Some(sigs.into_iter().map(Cow::Owned).collect())
                }
            });
        if rtype == RecordType::CNAME
            && let Some(RData::CNAME(target)) = records.first().map(|r| &r.data)
        {
            final_name = LowerName::from(&target.0);
        }
        out.extend(answers[start..end].iter().cloned());
        out.extend(sigs.unwrap_or_default());
        start = end;
    }
    let positive = answers.last().is_some_and(|r| {
        r.record_type() != RecordType::CNAME || resolution.outcome == Outcome::Referral
    });
    resolution.answers = out;
    for proof in wildcard_proofs {
        push_link(&mut resolution.authorities, proof);
    }
    (final_name, positive)
}

/// At a referral to a signed child: its DS set and signatures, or the NSEC proving it has
/// none.
fn referral_proof<'s>(snapshot: &'s Snapshot, resolution: &mut Resolution<'s>) {
    let Some(cut) = resolution
        .authorities
        .first()
        .map(|ns| LowerName::from(&ns.name))
    else {
        return;
    };
    let Some(zone) = snapshot
        .zone_of(&cut.base_name())
        .filter(|z| z.cuts.contains(&cut))
    else {
        return;
    };
    let Some(signing) = zone.signing.as_deref() else {
        return;
    };
    let ds = match zone.nodes.get(&cut) {
        Some(Node::Static(sets)) => sets.iter().find(|s| s.record_type == RecordType::DS),
        _ => None,
    };
    match ds {
        Some(ds) => {
            resolution
                .authorities
                .extend(ds.records(&Name::from(&cut)).into_iter().map(Cow::Owned));
            if let Some(sigs) = signing.sigs_of(&cut, RecordType::DS) {
                resolution
                    .authorities
                    .extend(sigs.into_iter().map(Cow::Owned));
            }
        }
        None => {
            if let Some(proof) = signing.nsec_of(&cut) {
                push_owned_proof(&mut resolution.authorities, proof);
            }
        }
    }
}

/// A negative answer, maybe after a CNAME chain: the signed SOA and the proof about the
/// chain's end, from the zone that answered (the parent, for DS at a child's apex).
/// Returns true for a compact denial of a name that does not exist.
fn negative_proof<'s>(
    snapshot: &'s Snapshot,
    final_name: &LowerName,
    qtype: RecordType,
    resolution: &mut Resolution<'s>,
) -> bool {
    let Some(zone) = snapshot.zone_for(final_name, qtype) else {
        return false;
    };
    let Some(signing) = zone.signing.as_deref() else {
        return false;
    };
    if resolution.authorities.is_empty() {
        return false;
    }
    if matches!(qtype, RecordType::NSEC | RecordType::RRSIG) {
        own_types(zone, signing, final_name, qtype, resolution);
        return false;
    }
    resolution
        .authorities
        .extend(signing.negative_soa_sigs.iter().map(Cow::Borrowed));
    if resolution.outcome == Outcome::NoSuchName {
        if let Some(proof) = signing.denial(final_name, vec![NXNAME]) {
            resolution.authorities.extend(
                denial_records(final_name, &proof)
                    .into_iter()
                    .map(Cow::Owned),
            );
        }
        return true;
    }
    nodata_proof(zone, signing, final_name, &mut resolution.authorities);
    false
}

/// A query for NSEC or RRSIG itself, which a signed zone holds at every name it answers
/// for: the name's NSEC (for a name that does not exist, or one only a wildcard covers, the
/// compact denial's NSEC at it, RFC 9824) or every signature at the name, as a positive
/// answer. A NODATA proof here would list the very type it denies.
fn own_types<'s>(
    zone: &'s ZoneTable,
    signing: &'s ZoneSigning,
    name: &LowerName,
    qtype: RecordType,
    resolution: &mut Resolution<'s>,
) {
    let exact: Option<Signed> = match zone.gslb.get(name) {
        Some(node) => {
            let key = (name.clone(), node.has_family(false), node.has_family(true));
            signing.gslb_nsec.get(&key).map(|proof| Signed {
                records: proof.records.clone(),
                sigs: proof.sigs.clone(),
                wire: Box::default(),
            })
        }
        None => signing.nsec_of(name),
    };
    // Owned: these queries are rare, and a denial's proof comes from a cache.
    let nsec: Option<(Vec<Record>, Vec<Record>)> = match exact {
        Some(proof) => Some((proof.records, proof.sigs)),
        // A denial keeps only its wire form: its records, signatures among them, decoded.
        None => signing.denial(name, vec![NXNAME]).map(|proof| {
            denial_records(name, &proof)
                .into_iter()
                .partition(|r| r.record_type() != RecordType::RRSIG)
        }),
    };
    // A positive answer (after any CNAME chain already in the answer section).
    resolution.authorities.clear();
    resolution.outcome = Outcome::Found;
    let Some((records, nsec_sigs)) = nsec else {
        return;
    };
    match qtype {
        RecordType::NSEC => {
            resolution
                .answers
                .extend(records.into_iter().map(Cow::Owned));
            resolution
                .answers
                .extend(nsec_sigs.into_iter().map(Cow::Owned));
        }
        _ => {
            // Every signature at the name: its static sets' and its NSEC's.
            let types: Vec<RecordType> = match zone.nodes.get(name) {
                Some(Node::Static(sets)) => sets.iter().map(|set| set.record_type).collect(),
                _ => Vec::new(),
            };
            let mut sigs: Vec<Cow<'s, Record>> = types
                .into_iter()
                .filter_map(|rtype| signing.sigs_of(name, rtype))
                .flatten()
                .map(Cow::Owned)
                .collect();
            sigs.extend(nsec_sigs.into_iter().map(Cow::Owned));
            resolution.answers.extend(sigs);
        }
    }
}

fn push_proof<'s>(into: &mut Vec<Cow<'s, Record>>, proof: &'s Signed) {
    into.extend(proof.records.iter().map(Cow::Borrowed));
    into.extend(proof.sigs.iter().map(Cow::Borrowed));
}

/// As [`push_proof`], for a link of a wildcard's NSEC chain.
fn push_link<'s>(into: &mut Vec<Cow<'s, Record>>, link: Link<'s>) {
    match link {
        Link::Prepared(proof) => push_proof(into, proof),
        Link::OnFirstUse(proof) => {
            into.extend(proof.records.iter().cloned().map(Cow::Owned));
            into.extend(proof.sigs.iter().cloned().map(Cow::Owned));
        }
    }
}

/// As [`push_proof`], for a proof made for this answer.
fn push_owned_proof(into: &mut Vec<Cow<'_, Record>>, proof: Signed) {
    into.extend(proof.records.into_iter().map(Cow::Owned));
    into.extend(proof.sigs.into_iter().map(Cow::Owned));
}

/// The NSEC of a denial of `owner` and its signatures: kept as records, or decoded from
/// the compact wire form (the authority section after a question for `owner`).
fn denial_records(owner: &LowerName, proof: &Signed) -> Vec<Record> {
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable};
    if !proof.records.is_empty() || proof.wire.is_empty() {
        return proof.records.iter().chain(&proof.sigs).cloned().collect();
    }
    let Ok(name) = Name::from(owner).to_lowercase().to_bytes() else {
        return Vec::new();
    };
    let mut message = vec![0u8; 12];
    message.extend_from_slice(&name);
    message.extend_from_slice(&[0, 1, 0, 1]);
    let start = message.len();
    message.extend_from_slice(&proof.wire);
    let mut decoder = BinDecoder::new(&message);
    if decoder.read_slice(start).is_err() {
        return Vec::new();
    }
    let mut records = Vec::new();
    while !decoder.is_empty() {
        let Ok(record) = Record::read(&mut decoder) else {
            break;
        };
        let keep = match &record.data {
            RData::DNSSEC(DNSSECRData::NSEC(_)) => true,
            RData::DNSSEC(DNSSECRData::RRSIG(sig)) => sig.input().type_covered == RecordType::NSEC,
            _ => false,
        };
        if keep {
            records.push(record);
        }
    }
    records
}

/// The NSEC that proves `name` has no RRset of the type asked.
fn nodata_proof<'s>(
    zone: &'s ZoneTable,
    signing: &'s ZoneSigning,
    name: &LowerName,
    into: &mut Vec<Cow<'s, Record>>,
) {
    if let Some(node) = zone.gslb.get(name) {
        let key = (name.clone(), node.has_family(false), node.has_family(true));
        if let Some(proof) = signing.gslb_nsec.get(&key) {
            push_proof(into, proof);
        }
        return;
    }
    if let Some(proof) = signing.nsec_of(name) {
        push_owned_proof(into, proof);
        return;
    }
    // A name synthesized from a wildcard (RFC 4035 section 3.1.3.4): the wildcard's own
    // NSEC (it lacks the type) and the link that proves the name itself does not exist,
    // both signed with the zone.
    if let Some((wildcard, _)) = zone.wildcard_of(name) {
        let own = signing.wildcard_nsec(&wildcard);
        let cover = signing.wildcard_cover(&wildcard, name);
        let same =
            matches!((&own, &cover), (Some(own), Some(cover)) if own.owner() == cover.owner());
        if let Some(own) = own {
            push_link(into, own);
        }
        if let Some(cover) = cover
            && !same
        {
            push_link(into, cover);
        }
    }
}
