//! The signatures of a snapshot's zones ([`ZoneSigning`], made when the snapshot's config
//! part is prepared, from the keys loading read) and the signed zones' status. The
//! primitives (signing one set, the caches, the keys) are [`crate::dnssec`]'s, below
//! routing; answers only read what is signed here ([`super::decorate`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use hickory_proto::dnssec::rdata::{DNSSECRData, NSEC};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::dnssec::REFRESH;
use crate::dnssec::kept::{Keeping, KeptSigs, Parts};
use crate::dnssec::keys::{Key, KeyRing};
use crate::dnssec::{
    Budget, NXNAME, SigCache, SignError, Signed, Window, bitmap, rrsig_of, sign, signature_keeping,
    signature_of_parts, successor, types_key,
};
use crate::routing::{Node, Nodes};

/// The tables of a preparation, keyed by names of the zone file (not by what clients
/// send), so a fast hash; a big zone's preparation inserts a few hundred thousand.
pub type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A table made in shares by the threads that signed a zone, kept as they made it (a
/// name is in one share): merging a big zone's shares into one table cost a fifth of its
/// signing when every signature was reused.
#[derive(Debug)]
pub struct Shards<K, V>(Vec<Map<K, V>>);

impl<K, V> Default for Shards<K, V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: std::hash::Hash + Eq, V> Shards<K, V> {
    /// The value of `key`, from the share that holds it.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.0.iter().find_map(|shard| shard.get(key))
    }

    /// Every entry, share after share.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().flatten()
    }
}

/// The signatures of one static RRset, kept compact: the set's TTL and each key's
/// signature (in the order of the keys that sign its type), made into RRSIG records
/// when an answer needs them ([`ZoneSigning::sigs_of`]). A big zone keeps one per set:
/// as records they took four times the memory, and a start or reload as much longer to
/// fill it.
#[derive(Debug)]
pub struct SetSigs {
    ttl: u32,
    signatures: Box<[u8]>,
}

/// A name's NODATA proof, kept compact: the types its NSEC lists and the NSEC's
/// signatures by the zone's keys; made into records when an answer needs them
/// ([`ZoneSigning::nsec_of`]).
#[derive(Debug)]
pub struct NsecSigs {
    types: Box<[RecordType]>,
    signatures: Box<[u8]>,
}

/// Signatures one after the other, each after its length (u16, little endian).
fn join_signatures(signatures: &[Vec<u8>]) -> Box<[u8]> {
    let mut joined = Vec::with_capacity(signatures.iter().map(|s| s.len() + 2).sum());
    for signature in signatures {
        let len = u16::try_from(signature.len()).unwrap_or(u16::MAX);
        joined.extend_from_slice(&len.to_le_bytes());
        joined.extend_from_slice(&signature[..usize::from(len)]);
    }
    joined.into_boxed_slice()
}

/// The signatures [`join_signatures`] joined.
fn signatures_of(mut joined: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = joined.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len));
        let signature = rest.get(..len)?;
        joined = &rest[len..];
        Some(signature)
    })
}

/// The NSEC record of a NODATA proof at `owner` listing `types` (compact denial: its next
/// name right after the owner); None for a name with no successor.
fn nsec_record(owner: &Name, ttl: u32, types: Vec<RecordType>) -> Option<Record> {
    let next = successor(owner)?;
    Some(Record::from_rdata(
        owner.clone(),
        ttl,
        RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(next, bitmap(types)))),
    ))
}

/// The RRSIG records of one set (owner, type covered, TTL) signed by `origin`'s `keys` in
/// `window`, from each key's signature in turn.
fn rrsig_records(
    origin: &Name,
    window: &Window,
    keys: &[Arc<Key>],
    (owner, type_covered, ttl): (&Name, RecordType, u32),
    signatures: impl IntoIterator<Item = Vec<u8>>,
) -> Vec<Record> {
    keys.iter()
        .zip(signatures)
        .map(|(key, signature)| rrsig_of(key, origin, owner, type_covered, ttl, window, signature))
        .collect()
}

/// Whether sets of `rtype` are signed by the key-signing keys (else by the zone's).
fn signed_by_key_signers(rtype: RecordType) -> bool {
    matches!(
        rtype,
        RecordType::DNSKEY | RecordType::CDS | RecordType::CDNSKEY
    )
}

/// Everything signed for one zone in one preparation.
#[derive(Debug)]
pub struct ZoneSigning {
    /// The zone's apex (the signer's name).
    pub origin: Name,
    /// Keys that sign the zone's data in this window.
    pub zone_signers: Vec<Arc<Key>>,
    /// Keys that sign the DNSKEY, CDS and CDNSKEY sets in this window.
    pub key_signers: Vec<Arc<Key>>,
    /// The window of every signature made for this preparation.
    pub window: Window,
    /// Signatures of static RRsets, by owner and type (see [`Self::sigs_of`]).
    pub static_sigs: Shards<(LowerName, RecordType), SetSigs>,
    /// The SOA as negative answers carry it.
    pub negative_soa: Record,
    /// Signatures of the SOA with the negative TTL, for negative answers.
    pub negative_soa_sigs: Vec<Record>,
    /// The NODATA proof (NSEC at the name and its signatures) of every name that is not a
    /// GSLB name.
    pub nsec: Shards<LowerName, NsecSigs>,
    /// The NODATA proofs of GSLB names, by (name, has A, has AAAA).
    pub gslb_nsec: Map<(LowerName, bool, bool), Signed>,
    /// The NSEC chain around each wildcard, by its closest encloser W: W, `*.W` and every
    /// name below W in canonical order, each NSEC pointing to the next name and the last
    /// to the first name after W's subtree, signed once here. Answers synthesized from
    /// the wildcard carry the wildcard's own signatures (label count without `*`, RFC
    /// 4035 section 5.3.4) and the link of this chain that covers the next closer name,
    /// so no answer under a wildcard is signed per name, and a flood of random names
    /// cannot leave a real one unsigned.
    pub wildcard_chains: HashMap<LowerName, Vec<Signed>>,
    /// TTL of NSEC records (RFC 9077: the negative TTL).
    pub nsec_ttl: u32,
    /// Sets signed on first use (denials, wildcard synthesis).
    pub cache: SigCache,
    /// GSLB answer sets, by service index and [`crate::dnssec::set_key`].
    pub gslb_cache: SigCache<(usize, Box<[u8]>)>,
    /// What signing on first use for client-chosen names may still spend.
    pub budget: Budget,
    /// Signatures made in this preparation.
    pub signed: u64,
    /// Signatures reused from the zone's kept signatures ([`crate::dnssec::kept`]).
    pub reused: u64,
    /// When a key event or a rollover makes this preparation stale (seconds since the
    /// epoch), if ever.
    pub next_event: Option<u64>,
    /// A digest of everything the signatures were made from (the zone's records, its
    /// GSLB names and families, the DNSSEC settings, the keys and the apex key sets): a
    /// reload whose digest is the same reuses these signatures while they are fresh.
    pub inputs: [u8; 32],
    /// The key directory and its fingerprint when its keys were last read: a change since
    /// (`gto dnssec rollover`, keys shipped to the fleet, a key's mode fixed) means
    /// reading it again.
    pub keys_dir: Option<(std::path::PathBuf, Option<u64>)>,
    /// Retired KSKs or CSKs kept until the parent serves their successor's DS (tags).
    pub waiting_for_parent: Vec<u16>,
    /// For a big zone's preparation that signs its static sets and NODATA proofs on
    /// first use (see [`ZoneSigning::on_first_use`]): what it signs them from. None once
    /// every set is signed.
    pub on_first_use: Option<OnFirstUse>,
}

/// What a zone signed on first use signs its static sets and NODATA proofs from: its
/// names (shared with the snapshot's table) and delegations, and the sets signed so far,
/// by owner and type (NSEC for a name's NODATA proof).
#[derive(Debug)]
pub struct OnFirstUse {
    nodes: Arc<Nodes>,
    cuts: Arc<HashSet<LowerName>>,
    origin: LowerName,
    signed: SigCache<(LowerName, RecordType)>,
    /// The NSEC chains around the zone's wildcards, by closest encloser, unsigned (see
    /// [`ZoneSigning::wildcard_chains`]): made when an answer first needs one (sorting
    /// every name of a 200,000-name zone takes a third of a second).
    chains: OnceLock<HashMap<LowerName, Vec<Record>>>,
    /// The types of the GSLB names, for those chains (none without a wildcard).
    gslb_types: Map<LowerName, Vec<RecordType>>,
    /// Their links signed on first use, by owner (a name has one link in every chain it
    /// is in: its next name in the zone).
    links: SigCache<LowerName>,
}

/// A link of a wildcard's NSEC chain with its signatures: prepared with the zone's
/// signing, or signed on first use.
#[derive(Debug)]
pub enum Link<'a> {
    /// Signed with the zone.
    Prepared(&'a Signed),
    /// Signed when an answer first needed it.
    OnFirstUse(Arc<Signed>),
}

impl std::ops::Deref for Link<'_> {
    type Target = Signed;

    fn deref(&self) -> &Signed {
        match self {
            Link::Prepared(signed) => signed,
            Link::OnFirstUse(signed) => signed,
        }
    }
}

impl Link<'_> {
    /// The owner of the link's NSEC.
    pub fn owner(&self) -> Option<&Name> {
        self.records.first().map(|nsec| &nsec.name)
    }
}

/// Names from which a zone's first preparation (or one whose signatures cannot be reused)
/// signs its static sets on first use and leaves the rest to the builder, in a thread of
/// its own ([`crate::routing::Builder`]): a 200,000-name zone answers in a fraction of
/// a second instead of after the seconds its 400,000 signatures take.
pub const SIGN_ON_FIRST_USE_FROM: usize = 20_000;

/// How many sets the zone's names hold.
fn nodes_sets(nodes: &Nodes) -> usize {
    nodes
        .iter()
        .map(|(_, node)| match node {
            Node::Static(sets) => sets.len(),
            Node::EmptyNonTerminal | Node::Gslb => 0,
        })
        .sum()
}

/// Whether `name` is below one of `cuts` (occluded, or glue): not ours to sign.
fn below_cut(origin: &LowerName, cuts: &HashSet<LowerName>, name: &LowerName) -> bool {
    if cuts.is_empty() {
        return false; // no delegation: no ancestor of any name to look at
    }
    let mut current = name.base_name();
    while current.num_labels() > origin.num_labels() {
        if cuts.contains(&current) {
            return true;
        }
        current = current.base_name();
    }
    false
}

/// The types a static name's NSEC lists: all its sets', or at a delegation only NS and
/// DS (the rest is the child's, or glue).
fn nsec_types(sets: &[crate::zone::RrSet], is_cut: bool) -> Vec<RecordType> {
    sets.iter()
        .map(|set| set.record_type)
        .filter(|t| !is_cut || matches!(t, RecordType::NS | RecordType::DS))
        .collect()
}

/// What a preparation signed (see the fields of [`ZoneSigning`]).
struct Signatures {
    static_sigs: Shards<(LowerName, RecordType), SetSigs>,
    nsec: Shards<LowerName, NsecSigs>,
    gslb_nsec: Map<(LowerName, bool, bool), Signed>,
    wildcard_chains: HashMap<LowerName, Vec<Signed>>,
    signed: u64,
    reused: u64,
    on_first_use: Option<OnFirstUse>,
}

/// Signs the sets of one preparation with its keys and window, counting signatures.
#[derive(Clone)]
struct Signer<'k> {
    origin: Name,
    window: Window,
    zone_signers: &'k [Arc<Key>],
    key_signers: &'k [Arc<Key>],
    nsec_ttl: u32,
    signed: u64,
    /// Whether the zone has a wildcard (and so needs every name's types).
    wildcards: bool,
    /// Signatures kept from before, reused when they sign the same bytes.
    kept: Option<&'k KeptSigs>,
    /// The entries of every signature this signer served, for the next preparation.
    part: Vec<u8>,
    reused: u64,
}

/// What signing a zone's names makes (see the fields of [`ZoneSigning`]).
#[derive(Default)]
struct Made {
    static_sigs: Map<(LowerName, RecordType), SetSigs>,
    nsec: Map<LowerName, NsecSigs>,
    gslb_nsec: Map<(LowerName, bool, bool), Signed>,
    /// Every name's types, for the wildcard chains (none kept when the zone has no
    /// wildcard).
    types_of: Map<LowerName, Vec<RecordType>>,
}

/// Names from which a zone is signed by several threads.
const PARALLEL_SIGNING_FROM: usize = 10_000;

impl Signer<'_> {
    /// Signs one name of the zone into `made`: an empty non-terminal's NSEC, a GSLB name's
    /// NODATA proofs, a static name's sets and NSEC.
    fn name(
        &mut self,
        content: &ZoneContent<'_>,
        name: &LowerName,
        node: Node<'_>,
        made: &mut Made,
    ) -> Result<(), SignError> {
        let owner = Name::from(name);
        match node {
            Node::EmptyNonTerminal => {
                if self.wildcards {
                    made.types_of.insert(name.clone(), Vec::new());
                }
                if let Some(proof) = self.nsec_sigs(&owner, Vec::new())? {
                    made.nsec.insert(name.clone(), proof);
                }
            }
            Node::Gslb => {
                let families = content.gslb_families.get(name).copied().unwrap_or_default();
                self.gslb(name, &owner, families, made)?;
            }
            Node::Static(sets) => {
                let is_cut = content.cuts.contains(name);
                self.static_sets(name, &owner, sets, is_cut, made)?;
            }
        }
        Ok(())
    }

    /// The signatures of one RRset (owner, records) by each of `keys`, in their order.
    fn signatures(
        &mut self,
        keys: &[Arc<Key>],
        owner: &Name,
        records: &[&Record],
    ) -> Result<Vec<Vec<u8>>, SignError> {
        self.signatures_by(keys, |signer, key| {
            signature_keeping(
                key,
                &signer.origin,
                owner,
                records,
                &signer.window,
                signer.kept,
                &mut signer.part,
            )
        })
    }

    /// As [`Self::signatures`], for a set that `parts` describe (an address set, a
    /// compact-denial NSEC): looked up among the kept signatures without making its
    /// records, which `records` makes when a key must sign it.
    fn signatures_of_parts(
        &mut self,
        keys: &[Arc<Key>],
        owner: &Name,
        parts: &Parts<'_>,
        records: &mut dyn FnMut() -> Vec<Record>,
    ) -> Result<Vec<Vec<u8>>, SignError> {
        self.signatures_by(keys, |signer, key| {
            signature_of_parts(
                key,
                &signer.origin,
                owner,
                &signer.window,
                parts,
                records,
                signer.kept,
                &mut signer.part,
            )
        })
    }

    /// Each key's signature by `one` (the signature, and whether it was reused), counted.
    fn signatures_by(
        &mut self,
        keys: &[Arc<Key>],
        mut one: impl FnMut(&mut Self, &Key) -> Result<(Vec<u8>, bool), SignError>,
    ) -> Result<Vec<Vec<u8>>, SignError> {
        // Sized for the keys: collected from an iterator of results, a Vec of one
        // signature would hold room for four, per set of a big zone.
        let mut signatures = Vec::with_capacity(keys.len());
        for key in keys {
            let (signature, reused) = one(self, key)?;
            if reused {
                self.reused += 1;
            } else {
                self.signed += 1;
            }
            signatures.push(signature);
        }
        Ok(signatures)
    }

    /// The RRSIG records of one RRset (owner, records) by each of `keys`.
    fn sign(
        &mut self,
        keys: &[Arc<Key>],
        owner: &Name,
        records: &[&Record],
    ) -> Result<Vec<Record>, SignError> {
        let Some(first) = records.first() else {
            return Ok(Vec::new());
        };
        let (type_covered, ttl) = (first.record_type(), first.ttl);
        let signatures = self.signatures(keys, owner, records)?;
        let set = (owner, type_covered, ttl);
        Ok(rrsig_records(
            &self.origin,
            &self.window,
            keys,
            set,
            signatures,
        ))
    }

    /// The signed NODATA proof of `owner` with `types` (compact denial: the NSEC at the
    /// name, pointing right after it); None for a name with no successor.
    fn nsec(&mut self, owner: &Name, types: Vec<RecordType>) -> Result<Option<Signed>, SignError> {
        let Some(record) = nsec_record(owner, self.nsec_ttl, types) else {
            return Ok(None);
        };
        let keys = self.zone_signers;
        let sigs = self.sign(keys, owner, &[&record])?;
        Ok(Some(Signed {
            records: vec![record],
            sigs,
            wire: Box::default(),
        }))
    }

    /// As [`Self::nsec`], kept compact. Found among the kept signatures by its owner and
    /// types (which make its next name and bitmap) without making the record, unless the
    /// owner is too long for `\000.<owner>`, the next name compact denial uses otherwise.
    fn nsec_sigs(
        &mut self,
        owner: &Name,
        types: Vec<RecordType>,
    ) -> Result<Option<NsecSigs>, SignError> {
        let keys = self.zone_signers;
        let wire_len = owner.iter().map(|label| label.len() + 1).sum::<usize>() + 1;
        let signatures = if wire_len + 2 <= 255 {
            let mut sorted: Vec<u16> = types.iter().map(|t| u16::from(*t)).collect();
            sorted.sort_unstable();
            let data: Vec<u8> = sorted.iter().flat_map(|t| t.to_be_bytes()).collect();
            let parts = Parts {
                record_type: RecordType::NSEC,
                ttl: self.nsec_ttl,
                data: &data,
            };
            let ttl = self.nsec_ttl;
            let mut records = || nsec_record(owner, ttl, types.clone()).into_iter().collect();
            self.signatures_of_parts(keys, owner, &parts, &mut records)?
        } else {
            let Some(record) = nsec_record(owner, self.nsec_ttl, types.clone()) else {
                return Ok(None);
            };
            self.signatures(keys, owner, &[&record])?
        };
        Ok(Some(NsecSigs {
            types: types.into_boxed_slice(),
            signatures: join_signatures(&signatures),
        }))
    }

    /// A GSLB name's NODATA proofs, one per combination of the families it can answer
    /// (its answers are signed per set, at build time).
    fn gslb(
        &mut self,
        name: &LowerName,
        owner: &Name,
        (has_a, has_aaaa): (bool, bool),
        made: &mut Made,
    ) -> Result<(), SignError> {
        let types = |a: bool, aaaa: bool| -> Vec<RecordType> {
            [(a, RecordType::A), (aaaa, RecordType::AAAA)]
                .into_iter()
                .filter_map(|(on, t)| on.then_some(t))
                .collect()
        };
        if self.wildcards {
            made.types_of.insert(name.clone(), types(has_a, has_aaaa));
        }
        for a in [false, true] {
            for aaaa in [false, true] {
                if (a && !has_a) || (aaaa && !has_aaaa) {
                    continue;
                }
                if let Some(proof) = self.nsec(owner, types(a, aaaa))? {
                    made.gslb_nsec.insert((name.clone(), a, aaaa), proof);
                }
            }
        }
        Ok(())
    }

    /// A static name's sets (DNSKEY, CDS and CDNSKEY by the key-signing keys) and its
    /// NODATA proof; at a delegation only DS is signed (NS is the child's).
    fn static_sets(
        &mut self,
        name: &LowerName,
        owner: &Name,
        sets: &[crate::zone::RrSet],
        is_cut: bool,
        made: &mut Made,
    ) -> Result<(), SignError> {
        let types = nsec_types(sets, is_cut);
        // At a delegation only DS is signed (NS is the child's).
        for set in sets
            .iter()
            .filter(|set| !is_cut || set.record_type == RecordType::DS)
        {
            let t = set.record_type;
            let keys = if signed_by_key_signers(t) {
                self.key_signers
            } else {
                self.zone_signers
            };
            let mut addresses = Vec::new();
            let signatures = if matches!(t, RecordType::A | RecordType::AAAA)
                && set.sorted_address_octets(&mut addresses)
            {
                let parts = Parts {
                    record_type: t,
                    ttl: set.ttl(),
                    data: &addresses,
                };
                self.signatures_of_parts(keys, owner, &parts, &mut || set.records(owner))?
            } else {
                let owned = set.records(owner);
                let records: Vec<&Record> = owned.iter().collect();
                self.signatures(keys, owner, &records)?
            };
            let sigs = SetSigs {
                ttl: set.ttl(),
                signatures: join_signatures(&signatures),
            };
            made.static_sigs.insert((name.clone(), t), sigs);
        }
        if self.wildcards {
            made.types_of.insert(name.clone(), types.clone());
        }
        if let Some(proof) = self.nsec_sigs(owner, types)? {
            made.nsec.insert(name.clone(), proof);
        }
        Ok(())
    }
}

/// What a zone is made of, as signing needs it.
pub struct ZoneContent<'a> {
    /// Its apex.
    pub origin: &'a LowerName,
    /// Every name with what it is.
    pub nodes: &'a crate::routing::Nodes,
    /// Its delegations.
    pub cuts: &'a std::collections::HashSet<LowerName>,
    /// The SOA as served in negative answers.
    pub negative_soa: &'a Record,
    /// The address families each GSLB name has by config: (A, AAAA).
    pub gslb_families: &'a HashMap<LowerName, (bool, bool)>,
}

/// The NSEC records of the chains around the zone's wildcards, unsigned, by closest
/// encloser, each chain in canonical order (see [`ZoneSigning::wildcard_chains`]);
/// `names` holds every name the zone answers for (occluded names and glue left out)
/// with its types.
fn wildcard_links(
    origin: &Name,
    names: &Map<LowerName, Vec<RecordType>>,
    nsec_ttl: u32,
) -> HashMap<LowerName, Vec<Record>> {
    let mut chains = HashMap::new();
    if !names.keys().any(LowerName::is_wildcard) {
        return chains;
    }
    // Canonical order (RFC 4034 section 6.1) is `Name`'s order.
    let mut all: Vec<Name> = names.keys().map(Name::from).collect();
    all.sort();
    for wildcard in names.keys().filter(|n| n.is_wildcard()) {
        let encloser = Name::from(&wildcard.base_name());
        let Ok(start) = all.binary_search(&encloser) else {
            continue; // the encloser of a wildcard always exists (at least as an ENT)
        };
        let mut end = start + 1;
        while end < all.len() && encloser.zone_of(&all[end]) {
            end += 1;
        }
        // After the subtree: the next name in the zone, or round to the apex.
        let after = all.get(end).cloned().unwrap_or_else(|| origin.clone());
        let mut chain = Vec::with_capacity(end - start);
        for (i, owner) in all.iter().enumerate().take(end).skip(start) {
            let next = if i + 1 < end {
                all[i + 1].clone()
            } else {
                after.clone()
            };
            let types = names
                .get(&LowerName::from(owner))
                .cloned()
                .unwrap_or_default();
            chain.push(Record::from_rdata(
                owner.clone(),
                nsec_ttl,
                RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(next, bitmap(types)))),
            ));
        }
        chains.insert(LowerName::from(&encloser), chain);
    }
    chains
}

impl ZoneSigning {
    /// Whether these signatures can still be served at `now` without re-signing: the
    /// earliest expiry is more than [`REFRESH`] away and no key event has come.
    pub fn fresh_at(&self, now: u64) -> bool {
        i64::from(self.window.expiration) - now as i64 >= REFRESH.as_secs() as i64
            && self.next_event.is_none_or(|at| at > now)
    }

    /// The link of the NSEC chain around the wildcard `*.W` that covers the next closer
    /// name of `qname` (W plus one more label of `qname`): with the wildcard's own NSEC
    /// and signatures, the proof of an answer synthesized from it (RFC 4035 section
    /// 3.1.3.3) or of NODATA there (3.1.3.4).
    pub fn wildcard_cover(&self, wildcard: &LowerName, qname: &LowerName) -> Option<Link<'_>> {
        let encloser = wildcard.base_name();
        let depth = usize::from(encloser.num_labels()) + 1;
        let next_closer = Name::from(qname).trim_to(depth);
        if let Some(lazy) = &self.on_first_use {
            let links = self.chains_of(lazy).get(&encloser)?;
            let at = links.partition_point(|nsec| nsec.name <= next_closer);
            return self.chain_link(lazy, links.get(at.checked_sub(1)?)?);
        }
        let chain = self.wildcard_chains.get(&encloser)?;
        let at = chain.partition_point(|link| {
            link.records
                .first()
                .is_some_and(|nsec| nsec.name <= next_closer)
        });
        chain.get(at.checked_sub(1)?).map(Link::Prepared)
    }

    /// The NSEC of the wildcard `*.W` itself (its types), from its chain.
    pub fn wildcard_nsec(&self, wildcard: &LowerName) -> Option<Link<'_>> {
        let owner = Name::from(wildcard);
        if let Some(lazy) = &self.on_first_use {
            let links = self.chains_of(lazy).get(&wildcard.base_name())?;
            let link = links.iter().find(|nsec| nsec.name == owner)?;
            return self.chain_link(lazy, link);
        }
        let chain = self.wildcard_chains.get(&wildcard.base_name())?;
        chain
            .iter()
            .find(|link| link.records.first().is_some_and(|nsec| nsec.name == owner))
            .map(Link::Prepared)
    }

    /// The NSEC chains around the wildcards of a zone signed on first use, unsigned: made
    /// now unless an answer needed them before (concurrent askers wait for one maker).
    fn chains_of<'l>(&self, lazy: &'l OnFirstUse) -> &'l HashMap<LowerName, Vec<Record>> {
        lazy.chains.get_or_init(|| {
            let mut types_of = lazy.gslb_types.clone();
            for (name, node) in lazy.nodes.iter() {
                if below_cut(&lazy.origin, &lazy.cuts, name) {
                    continue;
                }
                match node {
                    Node::EmptyNonTerminal => {
                        types_of.insert(name.clone(), Vec::new());
                    }
                    Node::Static(sets) => {
                        let types = nsec_types(sets, lazy.cuts.contains(name));
                        types_of.insert(name.clone(), types);
                    }
                    Node::Gslb => {}
                }
            }
            wildcard_links(&self.origin, &types_of, self.nsec_ttl)
        })
    }

    /// Makes the NSEC chains around the wildcards of a zone signed on first use, unless an
    /// answer made them before (the builder's signing thread, before it signs the whole
    /// zone). Nothing for other zones.
    pub fn prepare_wildcard_chains(&self) {
        if let Some(lazy) = &self.on_first_use
            && lazy.nodes.iter().any(|(name, _)| name.is_wildcard())
        {
            self.chains_of(lazy);
        }
    }

    /// A link of a wildcard's NSEC chain in a zone signed on first use: signed now unless
    /// an answer signed it before.
    fn chain_link(&self, lazy: &OnFirstUse, nsec: &Record) -> Option<Link<'_>> {
        lazy.links
            .get_or_sign(LowerName::from(&nsec.name), || {
                let sigs = self.sign_with(&self.zone_signers, &nsec.name, &[nsec])?;
                Some(Signed {
                    records: vec![nsec.clone()],
                    sigs,
                    wire: Box::default(),
                })
            })
            .map(Link::OnFirstUse)
    }

    /// Signs a zone's static RRsets and NODATA proofs with `ring`'s keys active at `now`,
    /// reusing what `keeping` read (and then signing in its window) and leaving there the
    /// entries of every signature served. None when no key signs the zone at `now` (the
    /// zone is then served unsigned).
    pub fn new(
        content: &ZoneContent<'_>,
        ring: &KeyRing,
        now: u64,
        keeping: &mut Keeping,
    ) -> Result<Option<Self>, SignError> {
        let zone_signers = ring.zone_signers(now);
        if zone_signers.is_empty() {
            return Ok(None);
        }
        let key_signers = ring.key_signers(now);
        let mut signer = Signer {
            origin: Name::from(content.origin),
            window: keeping.window(now),
            zone_signers: &zone_signers,
            key_signers: &key_signers,
            nsec_ttl: content.negative_soa.ttl,
            signed: 0,
            wildcards: content.nodes.iter().any(|(name, _)| name.is_wildcard()),
            kept: keeping.from.as_ref(),
            part: Vec::new(),
            reused: 0,
        };
        let names: Vec<(&LowerName, Node<'_>)> = content
            .nodes
            .iter()
            // Occluded names, and glue: not ours to sign.
            .filter(|(name, _)| !below_cut(content.origin, content.cuts, name))
            .collect();
        // A big zone's names are signed by a few threads at once, each with its own
        // signer and tables, merged after (signing is nearly all of a signed load).
        let sign_share =
            |share: &[(&LowerName, Node<'_>)]| -> Result<(Made, Signer<'_>), SignError> {
                let mut signer = signer.clone();
                let mut made = Made::default();
                for (name, node) in share {
                    signer.name(content, name, *node, &mut made)?;
                }
                Ok((made, signer))
            };
        let (mut signed, mut reused, mut entries) = (0, 0, Vec::new());
        let (mut static_sigs, mut nsec) = (Shards::default(), Shards::default());
        let (mut gslb_nsec, mut types_of) = (Map::default(), Map::default());
        for part in super::shares::in_shares(&names, PARALLEL_SIGNING_FROM, sign_share) {
            let (part, part_signer) = part?;
            signed += part_signer.signed;
            reused += part_signer.reused;
            entries.push(part_signer.part);
            static_sigs.0.push(part.static_sigs);
            nsec.0.push(part.nsec);
            gslb_nsec.extend(part.gslb_nsec);
            types_of.extend(part.types_of);
        }
        // The chains around wildcards (with one at the apex, a link per name), signed by
        // a few threads at once too.
        let chains = wildcard_links(&signer.origin, &types_of, signer.nsec_ttl);
        let links: Vec<(&LowerName, &Record)> = chains
            .iter()
            .flat_map(|(encloser, chain)| chain.iter().map(move |nsec| (encloser, nsec)))
            .collect();
        let sign_links =
            |share: &[(&LowerName, &Record)]| -> Result<(Vec<Signed>, Signer<'_>), SignError> {
                let mut signer = Signer {
                    signed: 0,
                    reused: 0,
                    part: Vec::new(),
                    ..signer.clone()
                };
                let keys = signer.zone_signers;
                let mut signed = Vec::with_capacity(share.len());
                for (_, nsec) in share {
                    let sigs = signer.sign(keys, &nsec.name, &[nsec])?;
                    signed.push(Signed {
                        records: vec![(*nsec).clone()],
                        sigs,
                        wire: Box::default(),
                    });
                }
                Ok((signed, signer))
            };
        let mut wildcard_chains: HashMap<LowerName, Vec<Signed>> = HashMap::new();
        let mut enclosers = links.iter().map(|(encloser, _)| *encloser);
        for part in super::shares::in_shares(&links, PARALLEL_SIGNING_FROM, sign_links) {
            let (part, part_signer) = part?;
            signed += part_signer.signed;
            reused += part_signer.reused;
            entries.push(part_signer.part);
            for (link, encloser) in part.into_iter().zip(enclosers.by_ref()) {
                wildcard_chains
                    .entry(encloser.clone())
                    .or_default()
                    .push(link);
            }
        }
        signer.signed += signed;
        signer.reused += reused;
        let origin = signer.origin.clone();
        let (window, signed, reused) = (signer.window, signer.signed, signer.reused);
        entries.push(signer.part);
        keeping.entries = entries;
        let signatures = Signatures {
            static_sigs,
            nsec,
            gslb_nsec,
            wildcard_chains,
            signed,
            reused,
            on_first_use: None,
        };
        let keys = (zone_signers, key_signers);
        Ok(Some(Self::assemble(
            origin, keys, window, content, signatures,
        )))
    }

    /// A zone's signing from what a preparation signed with `keys` (zone signers, key
    /// signers) in `window`, with the SOA's signatures for negative answers.
    fn assemble(
        origin: Name,
        (zone_signers, key_signers): (Vec<Arc<Key>>, Vec<Arc<Key>>),
        window: Window,
        content: &ZoneContent<'_>,
        signatures: Signatures,
    ) -> Self {
        let this = Self {
            origin,
            zone_signers,
            key_signers,
            window,
            static_sigs: signatures.static_sigs,
            negative_soa: content.negative_soa.clone(),
            negative_soa_sigs: Vec::new(),
            nsec: signatures.nsec,
            gslb_nsec: signatures.gslb_nsec,
            wildcard_chains: signatures.wildcard_chains,
            nsec_ttl: content.negative_soa.ttl,
            cache: SigCache::default(),
            gslb_cache: SigCache::default(),
            budget: Budget::default(),
            signed: signatures.signed,
            reused: signatures.reused,
            next_event: None,
            waiting_for_parent: Vec::new(),
            inputs: [0; 32],
            keys_dir: None,
            on_first_use: signatures.on_first_use,
        };
        this.with_negative_soa_sigs(content)
    }

    /// With the signatures of the SOA as negative answers carry it (the negative TTL).
    fn with_negative_soa_sigs(mut self, content: &ZoneContent<'_>) -> Self {
        let mut negative_soa_sigs = self
            .sigs_of(content.origin, RecordType::SOA)
            .unwrap_or_default();
        for sig in &mut negative_soa_sigs {
            sig.ttl = content.negative_soa.ttl;
        }
        self.negative_soa_sigs = negative_soa_sigs;
        self
    }

    /// A preparation of a big zone that answers at once: only what is few is signed here
    /// (the GSLB names' NODATA proofs, the SOA of negative answers); each static set,
    /// each name's NODATA proof and each link of the NSEC chains around wildcards (the
    /// chains made when first needed: a wildcard at the apex has every name in its chain)
    /// is signed when an answer first needs it, from `nodes` (the zone's names as the
    /// snapshot holds them, with the apex's keys) and `cuts`. The builder then signs the
    /// whole zone in a thread of its own ([`ZoneSigning::new`], reusing kept signatures)
    /// and replaces this preparation's signing with it. None when no key signs the zone
    /// at `now`.
    pub fn on_first_use(
        content: &ZoneContent<'_>,
        nodes: Arc<Nodes>,
        cuts: Arc<HashSet<LowerName>>,
        ring: &KeyRing,
        now: u64,
    ) -> Result<Option<Self>, SignError> {
        let zone_signers = ring.zone_signers(now);
        if zone_signers.is_empty() {
            return Ok(None);
        }
        let key_signers = ring.key_signers(now);
        let wildcards = nodes.iter().any(|(name, _)| name.is_wildcard());
        let mut signer = Signer {
            origin: Name::from(content.origin),
            window: Window::at(now),
            zone_signers: &zone_signers,
            key_signers: &key_signers,
            nsec_ttl: content.negative_soa.ttl,
            signed: 0,
            wildcards,
            kept: None,
            part: Vec::new(),
            reused: 0,
        };
        let mut made = Made::default();
        for (name, node) in nodes.iter() {
            if below_cut(content.origin, &cuts, name) {
                continue;
            }
            match node {
                Node::Gslb => {
                    let families = content.gslb_families.get(name).copied().unwrap_or_default();
                    signer.gslb(name, &Name::from(name), families, &mut made)?;
                }
                // Their types for the chains around wildcards are read when first needed.
                Node::EmptyNonTerminal | Node::Static(_) => {}
            }
        }
        let origin = signer.origin.clone();
        let (window, signed) = (signer.window, signer.signed);
        let signatures = Signatures {
            static_sigs: Shards::default(),
            nsec: Shards::default(),
            gslb_nsec: made.gslb_nsec,
            wildcard_chains: HashMap::new(),
            signed,
            reused: 0,
            on_first_use: Some(OnFirstUse {
                // Room for every static set and NODATA proof of the zone (and as many
                // again), so that answers across the whole zone never empty it and have
                // their sets signed again; and for every link of the chains (at most a
                // link per name).
                signed: SigCache::with_capacity(2 * nodes.len() + nodes_sets(&nodes)),
                links: SigCache::with_capacity(nodes.len().max(1)),
                chains: OnceLock::new(),
                // The GSLB names' types (the rest are read from `nodes`).
                gslb_types: if wildcards {
                    made.types_of
                } else {
                    Map::default()
                },
                nodes,
                cuts,
                origin: content.origin.clone(),
            }),
        };
        let keys = (zone_signers, key_signers);
        Ok(Some(Self::assemble(
            origin, keys, window, content, signatures,
        )))
    }

    /// True while static sets are signed on first use (the builder has yet to sign the
    /// whole zone).
    pub fn signs_on_first_use(&self) -> bool {
        self.on_first_use.is_some()
    }

    /// The static set of `rtype` at `name` (NSEC: its NODATA proof) of a zone signed on
    /// first use, signed now unless an answer signed it before; None for a set that is
    /// not signed (none such, below a delegation, or at one other than DS).
    fn signed_on_first_use(
        &self,
        lazy: &OnFirstUse,
        name: &LowerName,
        rtype: RecordType,
    ) -> Option<Arc<Signed>> {
        lazy.signed.get_or_sign((name.clone(), rtype), || {
            if below_cut(&lazy.origin, &lazy.cuts, name) {
                return None;
            }
            let is_cut = lazy.cuts.contains(name);
            let owner = Name::from(name);
            let sets: &[crate::zone::RrSet] = match lazy.nodes.get(name)? {
                Node::Static(sets) => sets,
                Node::EmptyNonTerminal => &[],
                Node::Gslb => return None, // its proofs are signed at preparation
            };
            if rtype == RecordType::NSEC {
                let record = nsec_record(&owner, self.nsec_ttl, nsec_types(sets, is_cut))?;
                let sigs = self.sign_with(&self.zone_signers, &owner, &[&record])?;
                return Some(Signed {
                    records: vec![record],
                    sigs,
                    wire: Box::default(),
                });
            }
            if is_cut && rtype != RecordType::DS {
                return None; // NS at a delegation is the child's, unsigned
            }
            let set = sets.iter().find(|set| set.record_type == rtype)?;
            let records = set.records(&owner);
            let records: Vec<&Record> = records.iter().collect();
            let keys = if signed_by_key_signers(rtype) {
                &self.key_signers
            } else {
                &self.zone_signers
            };
            Some(Signed {
                records: Vec::new(),
                sigs: self.sign_with(keys, &owner, &records)?,
                wire: Box::default(),
            })
        })
    }

    /// The RRSIG records of the static set of `rtype` at `name` (signed at preparation).
    pub fn sigs_of(&self, name: &LowerName, rtype: RecordType) -> Option<Vec<Record>> {
        if let Some(lazy) = &self.on_first_use {
            return Some(self.signed_on_first_use(lazy, name, rtype)?.sigs.clone());
        }
        let set = self.static_sigs.get(&(name.clone(), rtype))?;
        let owner = Name::from(name);
        let keys = if signed_by_key_signers(rtype) {
            &self.key_signers
        } else {
            &self.zone_signers
        };
        Some(self.rrsigs(keys, &owner, rtype, set.ttl, &set.signatures))
    }

    /// The NODATA proof of `name` (a static name or an empty non-terminal: its NSEC and
    /// signatures, signed at preparation).
    pub fn nsec_of(&self, name: &LowerName) -> Option<Signed> {
        if let Some(lazy) = &self.on_first_use {
            let proof = self.signed_on_first_use(lazy, name, RecordType::NSEC)?;
            return Some(Signed {
                records: proof.records.clone(),
                sigs: proof.sigs.clone(),
                wire: Box::default(),
            });
        }
        let proof = self.nsec.get(name)?;
        let owner = Name::from(name);
        let record = nsec_record(&owner, self.nsec_ttl, proof.types.to_vec())?;
        let sigs = self.rrsigs(
            &self.zone_signers,
            &owner,
            RecordType::NSEC,
            self.nsec_ttl,
            &proof.signatures,
        );
        Some(Signed {
            records: vec![record],
            sigs,
            wire: Box::default(),
        })
    }

    /// The RRSIG records of the set of `type_covered` at `owner` (TTL `ttl`) from its
    /// signatures by `keys`, as [`join_signatures`] kept them.
    fn rrsigs(
        &self,
        keys: &[Arc<Key>],
        owner: &Name,
        type_covered: RecordType,
        ttl: u32,
        joined: &[u8],
    ) -> Vec<Record> {
        let set = (owner, type_covered, ttl);
        let signatures = signatures_of(joined).map(<[u8]>::to_vec);
        rrsig_records(&self.origin, &self.window, keys, set, signatures)
    }

    /// Signatures of `records` (one owner and type) made now with the zone's keys.
    fn sign_now(&self, owner: &Name, records: &[&Record]) -> Option<Vec<Record>> {
        self.sign_with(&self.zone_signers, owner, records)
    }

    /// Signatures of `records` (one owner and type) made now with `keys`.
    fn sign_with(
        &self,
        keys: &[Arc<Key>],
        owner: &Name,
        records: &[&Record],
    ) -> Option<Vec<Record>> {
        keys.iter()
            .map(|key| sign(key, &self.origin, owner, records, &self.window))
            .collect::<Result<Vec<_>, _>>()
            .inspect_err(|error| tracing::warn!(%error, "could not sign"))
            .ok()
    }

    /// The signatures of a GSLB answer of the service at `service`: `records` are its A
    /// or AAAA records (any order), `key` their [`crate::dnssec::set_key`]. The wire form is made for a
    /// question of the records' owner (its length places the compression pointer).
    pub fn gslb_set(
        &self,
        service: usize,
        key: Box<[u8]>,
        records: &[&Record],
    ) -> Option<Arc<Signed>> {
        let first = records.first()?;
        self.gslb_cache.get_or_sign((service, key), || {
            let sigs = self.sign_now(&first.name, records)?;
            let question = super::encode::gslb_question(&first.name);
            let wire = super::encode::wire_records(&question, &sigs)
                .into_iter()
                .flat_map(|w| w.later.into_vec())
                .collect();
            Some(Signed {
                records: Vec::new(),
                sigs,
                wire,
            })
        })
    }

    /// A NODATA or NXNAME proof made on first use: NSEC at `owner` with `types`.
    /// The denial of `owner` (NSEC with NXNAME) if it was signed before: the fast path
    /// answers from it and leaves signing (and its budget) to the general path.
    pub(crate) fn cached_denial(&self, owner: &LowerName) -> Option<Arc<Signed>> {
        self.cache
            .get(&(owner.clone(), RecordType::NSEC, types_key(&[NXNAME])))
    }

    pub(crate) fn denial(&self, owner: &LowerName, types: Vec<RecordType>) -> Option<Arc<Signed>> {
        let key = types_key(&types);
        self.cache.get_or_sign_within(
            (owner.clone(), RecordType::NSEC, key),
            Some(&self.budget),
            || {
                let name = Name::from(owner);
                let record = Record::from_rdata(
                    name.clone(),
                    self.nsec_ttl,
                    RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(
                        successor(&name)?,
                        bitmap(types),
                    ))),
                );
                let sigs = self.sign_now(&name, &[&record])?;
                // The whole authority section of the denial, for the fast path (for a
                // question of this name: its length fixes every compression pointer).
                let mut question =
                    hickory_proto::serialize::binary::BinEncodable::to_bytes(&name.to_lowercase())
                        .ok()?;
                question.extend_from_slice(&[0, 1, 0, 1]);
                let mut authority = vec![&self.negative_soa];
                authority.extend(&self.negative_soa_sigs);
                authority.push(&record);
                authority.extend(&sigs);
                let wire = super::encode::encode_tail(&question, &[], &authority, &[])
                    .filter(|tail| tail.answers == 0 && tail.additionals == 0)
                    .map(|tail| Box::<[u8]>::from(&*tail.bytes))
                    .unwrap_or_default();
                // Compact: a flood of random names fills this cache, so a denial keeps only
                // its wire form (a few hundred octets); the general path decodes the NSEC
                // and its signatures from it ([`denial_records`]).
                if wire.is_empty() {
                    Some(Signed {
                        records: vec![record],
                        sigs,
                        wire,
                    })
                } else {
                    Some(Signed {
                        records: Vec::new(),
                        sigs: Vec::new(),
                        wire,
                    })
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::dnssec::Verifier;
    use hickory_proto::rr::DNSClass;

    use super::*;
    use crate::dnssec::keys::{KeyAlgorithm, Role, Timeline, generate};

    const ZONE: &str = "$ORIGIN gto.example.com.
$TTL 300
@ IN SOA ns1 hostmaster 2026112501 3600 600 86400 60
@ IN NS ns1
ns1 IN A 192.0.2.53
www IN A 192.0.2.80
www IN A 192.0.2.81
www IN TXT \"hello\"
a.b.c IN A 192.0.2.7
sub IN NS ns.sub
sub IN DS 12345 13 2 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
ns.sub IN A 192.0.2.54
*.wild IN TXT \"wild\"
x.wild IN A 192.0.2.9
";

    /// Every RRSIG in `sigs` verifies with `key` over `records` (one set).
    fn verifies(key: &Key, sigs: &[Record], records: &[Record]) {
        assert!(!sigs.is_empty(), "no signature for {records:?}");
        for sig in sigs {
            let RData::DNSSEC(DNSSECRData::RRSIG(rrsig)) = &sig.data else {
                panic!("not an RRSIG: {sig:?}");
            };
            key.dnskey
                .verify_rrsig(&records[0].name, DNSClass::IN, rrsig, records.iter())
                .unwrap_or_else(|error| panic!("{sig}: {error}"));
        }
    }

    /// A big zone's preparation that signs on first use signs the same sets as one that
    /// signs the whole zone, no others (nothing below a delegation, not its NS), with
    /// signatures that verify, the same NODATA proofs, and the same links of the
    /// wildcard's chain, each signed when first needed.
    #[test]
    fn sets_signed_on_first_use_are_those_a_whole_signing_signs() {
        let dir = tempfile::tempdir().unwrap();
        let apex = Name::from_ascii("gto.example.com.").unwrap();
        let key = generate(
            dir.path(),
            &apex,
            Role::Csk,
            KeyAlgorithm::EcdsaP256,
            Timeline::from(0),
            3600,
        )
        .unwrap();
        let ring = KeyRing {
            keys: vec![key.clone()],
        };
        let zone = crate::zone::parse(ZONE, &apex, "test.zone".into()).unwrap();
        let origin = zone.origin().clone();
        let mut nodes = Nodes::of_file(zone.names().clone());
        nodes.edit_sets(&origin, |sets| {
            sets.insert(0, crate::zone::RrSet::of_records(vec![zone.soa().clone()]));
        });
        crate::routing::zones::add_empty_non_terminals(&origin, &mut nodes);
        let nodes = Arc::new(nodes);
        let cuts: Arc<HashSet<LowerName>> = Arc::new(zone.cuts().iter().cloned().collect());
        let mut negative_soa = zone.soa().clone();
        negative_soa.ttl = zone.negative_ttl();
        let families = HashMap::new();
        let content = ZoneContent {
            origin: &origin,
            nodes: &nodes,
            cuts: &cuts,
            negative_soa: &negative_soa,
            gslb_families: &families,
        };
        let now = crate::dnssec::now();
        let whole = ZoneSigning::new(&content, &ring, now, &mut Keeping::default())
            .unwrap()
            .unwrap();
        let lazy = ZoneSigning::on_first_use(&content, nodes.clone(), cuts.clone(), &ring, now)
            .unwrap()
            .unwrap();
        assert!(lazy.signs_on_first_use() && !whole.signs_on_first_use());
        // Nothing is signed at preparation (the wildcard's chain is signed link by link
        // on first use); the SOA of negative answers is signed on its first use, at once.
        assert_eq!(lazy.signed, 0);
        assert_eq!(lazy.negative_soa_sigs.len(), 1);
        verifies(&key, &lazy.negative_soa_sigs, &[negative_soa.clone()]);

        let name = |text: &str| LowerName::from(Name::from_ascii(text).unwrap());
        let types = [
            RecordType::SOA,
            RecordType::NS,
            RecordType::A,
            RecordType::TXT,
            RecordType::DS,
            RecordType::AAAA,
        ];
        for owner in [
            "gto.example.com.",
            "ns1.gto.example.com.",
            "www.gto.example.com.",
            "a.b.c.gto.example.com.",
            "b.c.gto.example.com.",
            "sub.gto.example.com.",
            "ns.sub.gto.example.com.",
            "*.wild.gto.example.com.",
            "x.wild.gto.example.com.",
            "nope.gto.example.com.",
        ] {
            let owner = name(owner);
            for rtype in types {
                let (first, at_once) = (lazy.sigs_of(&owner, rtype), whole.sigs_of(&owner, rtype));
                assert_eq!(first.is_some(), at_once.is_some(), "{owner} {rtype}");
                if let Some(sigs) = first {
                    let Some(Node::Static(sets)) = nodes.get(&owner) else {
                        panic!("{owner} signed without sets");
                    };
                    let set = sets.iter().find(|s| s.record_type == rtype).unwrap();
                    verifies(&key, &sigs, &set.records(&Name::from(&owner)));
                    // Asked again: the same signature, not a new one.
                    assert_eq!(lazy.sigs_of(&owner, rtype), Some(sigs));
                }
            }
            let (first, at_once) = (lazy.nsec_of(&owner), whole.nsec_of(&owner));
            assert_eq!(
                first.as_ref().map(|p| &p.records),
                at_once.as_ref().map(|p| &p.records),
                "{owner} NSEC"
            );
            if let Some(proof) = first {
                verifies(&key, &proof.sigs, &proof.records);
            }
        }
        // Nothing below the delegation, and not its NS; its DS is.
        assert!(
            lazy.sigs_of(&name("ns.sub.gto.example.com."), RecordType::A)
                .is_none()
        );
        assert!(
            lazy.sigs_of(&name("sub.gto.example.com."), RecordType::NS)
                .is_none()
        );
        assert!(
            lazy.sigs_of(&name("sub.gto.example.com."), RecordType::DS)
                .is_some()
        );
        // The wildcard's chain (W, *.W, x.W): the same links, each signed when first
        // asked for, and the same signature when asked again.
        assert!(lazy.wildcard_chains.is_empty());
        let wildcard = name("*.wild.gto.example.com.");
        let own = lazy.wildcard_nsec(&wildcard).unwrap();
        assert_eq!(own.records, whole.wildcard_nsec(&wildcard).unwrap().records);
        verifies(&key, &own.sigs, &own.records);
        let mut covers = Vec::new();
        for qname in [
            "a.wild.gto.example.com.",
            "y.wild.gto.example.com.",
            "deep.x.wild.gto.example.com.",
            "z.z.wild.gto.example.com.",
        ] {
            let qname = name(qname);
            let cover = lazy.wildcard_cover(&wildcard, &qname).unwrap();
            let at_once = whole.wildcard_cover(&wildcard, &qname).unwrap();
            assert_eq!(cover.records, at_once.records, "{qname}");
            verifies(&key, &cover.sigs, &cover.records);
            assert_eq!(
                lazy.wildcard_cover(&wildcard, &qname).unwrap().sigs,
                cover.sigs,
                "{qname}: signed once"
            );
            covers.push(cover.owner().cloned());
        }
        covers.dedup();
        assert_eq!(covers.len(), 2, "*.W covers a, x.W the rest: {covers:?}");
    }
}
