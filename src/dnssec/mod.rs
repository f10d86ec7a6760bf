//! DNSSEC: keys ([`keys`]), the signatures of a zone ([`ZoneSigning`], made when the
//! snapshot's config part is prepared), and the signed form of an answer ([`decorate`]).
//!
//! What is signed, and when:
//!
//! - every static RRset (and DNSKEY, CDS, CDNSKEY at the apex) when the config is
//!   prepared, and again whenever re-signing or a key event makes a new preparation;
//! - every GSLB RRset a snapshot can produce for its rankings when the snapshot is built,
//!   through a cache keyed by the canonical RRset (its addresses, sorted), so answers that
//!   differ only in order share one signature and a health flip signs only sets never seen;
//! - sets met only at query time (affinity orders, wildcard synthesis, denial of a name
//!   that does not exist) once, on first use, into bounded single-flight caches; names a
//!   client chooses within a per-zone budget ([`ONLINE_SIGNING_PER_SECOND`]).
//!
//! Negative answers use compact denial of existence (RFC 9824): the NSEC record is at the
//! name asked for, its next name is `\000.<name>`, and its type bitmap lists what the name
//! has (NODATA) or NXNAME (a name that does not exist, answered NOERROR unless the query
//! set the CO flag). Every NODATA proof is made in advance; only names that do not exist
//! are signed on first use. Wildcard answers are signed as if the name existed, so they
//! need no denial.
//!
//! All signatures of one preparation share one validity window (inception an hour back,
//! expiration [`VALIDITY`] on), so the earliest expiry is known and re-signing is one
//! rebuild, well before it ([`REFRESH`]).

pub mod commands;
pub mod keys;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hickory_proto::dnssec::rdata::{CDNSKEY, CDS, DNSSECRData, NSEC, RRSIG, SigInput};
use hickory_proto::dnssec::{DigestType, PublicKey, TBS};
use hickory_proto::rr::{
    DNSClass, Label, LowerName, Name, RData, Record, RecordType, SerialNumber,
};

use self::keys::{Key, KeyRing};
use crate::routing::{Node, Outcome, Resolution, Snapshot, ZoneTable};

/// How long signatures are valid.
pub const VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);
/// How far back inception is set, for clocks that run behind.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// Re-sign when the earliest expiry is nearer than this.
pub const REFRESH: Duration = Duration::from_secs(7 * 24 * 3600);
/// Entries the on-first-use cache of one preparation holds at most; when full it is
/// emptied (what is still asked for is signed again).
pub const CACHE_CAPACITY: usize = 100_000;
/// RR type NXNAME (RFC 9824): in the bitmap of an NSEC that denies a name exists.
pub const NXNAME: RecordType = RecordType::Unknown(128);
/// The CO ("compact answers OK") EDNS flag (RFC 9824 section 4).
pub const CO_FLAG: u16 = 0x4000;

/// Seconds since the Unix epoch, as signing sees it: the system clock, or a time set with
/// [`set_clock`] (tests and drills drive rollovers with it).
pub fn now() -> u64 {
    match CLOCK.load(Ordering::Relaxed) {
        0 => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        fixed => fixed,
    }
}

static CLOCK: AtomicU64 = AtomicU64::new(0);

/// Fixes the time [`now`] returns (0: the system clock again). For tests and drills: it
/// moves every signature and key event of this process.
pub fn set_clock(unix_seconds: u64) {
    CLOCK.store(unix_seconds, Ordering::Relaxed);
}

/// Why something could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("signing {owner} {record_type}: {message}")]
pub struct SignError {
    owner: Name,
    record_type: RecordType,
    message: String,
}

/// The validity window of a preparation's signatures (RRSIG inception and expiration).
#[derive(Debug, Clone)]
pub struct Window {
    /// Inception (seconds since the epoch, mod 2^32 on the wire).
    pub inception: u32,
    /// Expiration.
    pub expiration: u32,
}

impl Window {
    /// The window of signatures made at `now`.
    pub fn at(now: u64) -> Self {
        Self {
            inception: now.saturating_sub(BACKDATE.as_secs()) as u32,
            expiration: (now + VALIDITY.as_secs()) as u32,
        }
    }
}

/// Signs the RRset `records` (one owner, one type) with `key`: the RRSIG record, owned by
/// `owner` with the records' TTL as original TTL. Its label count is the owner's (hickory
/// leaves a leading `*` out of it, as RFC 4034 section 3.1.3 wants).
pub fn sign(
    key: &Key,
    signer: &Name,
    owner: &Name,
    records: &[&Record],
    window: &Window,
) -> Result<Record, SignError> {
    let fail = |message: String| SignError {
        owner: owner.clone(),
        record_type: records
            .first()
            .map_or(RecordType::NULL, |r| r.record_type()),
        message,
    };
    let first = records.first().ok_or_else(|| fail("empty RRset".into()))?;
    let input = SigInput {
        type_covered: first.record_type(),
        algorithm: key.algorithm.algorithm(),
        num_labels: owner.num_labels(),
        original_ttl: first.ttl,
        sig_expiration: SerialNumber::new(window.expiration),
        sig_inception: SerialNumber::new(window.inception),
        key_tag: key.tag,
        signer_name: signer.clone(),
    };
    let tbs = TBS::from_input(owner, DNSClass::IN, &input, records.iter().copied())
        .map_err(|e| fail(e.to_string()))?;
    let signature = key.signing.sign(&tbs).map_err(|e| fail(e.to_string()))?;
    Ok(Record::from_rdata(
        owner.clone(),
        first.ttl,
        RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, signature))),
    ))
}

/// An RRset made for DNSSEC (an NSEC) or signed on first use, with its signatures, and the
/// signatures in wire form as the fast path appends them after a GSLB answer (owner
/// compressed to the first answer).
#[derive(Debug, Default)]
pub struct Signed {
    /// The records made (an NSEC), or none when only signatures were made.
    pub records: Vec<Record>,
    /// Their RRSIG records.
    pub sigs: Vec<Record>,
    /// For a GSLB set, `sigs` in wire form after the answer; for the denial of a name, the
    /// whole authority section (SOA, NSEC and their signatures) after its question; empty
    /// for other sets.
    pub wire: Box<[u8]>,
}

/// Key of sets met at query time: owner, type and what else tells them apart.
type CacheKey = (LowerName, RecordType, Box<[u8]>);
type Slot = Arc<OnceLock<Option<Arc<Signed>>>>;

/// The bounded single-flight cache of sets signed on first use: concurrent askers for one
/// set wait for one signer.
#[derive(Debug)]
pub struct SigCache<K = CacheKey> {
    map: Mutex<HashMap<K, Slot, foldhash::fast::RandomState>>,
}

impl<K> Default for SigCache<K> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::default()),
        }
    }
}

impl<K: std::hash::Hash + Eq> SigCache<K> {
    /// The signed set for `key`, made by `make` if nobody has yet.
    pub fn get_or_sign(
        &self,
        key: K,
        make: impl FnOnce() -> Option<Signed>,
    ) -> Option<Arc<Signed>> {
        self.get_or_sign_within(key, None, make)
    }

    /// [`SigCache::get_or_sign`], where a set not yet cached is signed only while `budget`
    /// has room (None when it has not: nothing is cached, the next ask may sign).
    pub fn get_or_sign_within(
        &self,
        key: K,
        budget: Option<&Budget>,
        make: impl FnOnce() -> Option<Signed>,
    ) -> Option<Arc<Signed>> {
        let slot = {
            let mut map = self.map.lock().ok()?;
            match map.get(&key) {
                Some(slot) => slot.clone(),
                None => {
                    if budget.is_some_and(|b| !b.take()) {
                        metrics::counter!(crate::metrics::DNSSEC_SIGNING_REFUSED_TOTAL)
                            .increment(1);
                        return None;
                    }
                    if map.len() >= CACHE_CAPACITY {
                        map.clear();
                    }
                    map.entry(key).or_default().clone()
                }
            }
        };
        slot.get_or_init(|| {
            metrics::counter!(crate::metrics::DNSSEC_SIGNED_ON_USE_TOTAL).increment(1);
            make().map(Arc::new)
        })
        .clone()
    }

    /// The signed set for `key` if one is cached (never signs).
    pub fn get(&self, key: &K) -> Option<Arc<Signed>> {
        let map = self.map.lock().ok()?;
        map.get(key)?.get()?.clone()
    }

    /// Sets held.
    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Signatures a zone makes on first use for names a client chose (denials of names that
/// do not exist, wildcard synthesis) per second at most, and in a burst: a flood of random
/// names costs at most this much signing. Past it such answers go out without their proof
/// (a validator treats them as bogus) until the budget refills; `gto_dnssec_signing_refused_total`
/// counts them. GSLB sets, which the config bounds, are never refused.
pub const ONLINE_SIGNING_PER_SECOND: u32 = 2000;

/// Signatures left in the current second ([`ONLINE_SIGNING_PER_SECOND`] each second), on
/// the signing clock ([`now`]).
#[derive(Debug)]
pub struct Budget {
    clock: fn() -> u64,
    state: Mutex<(u64, u32)>,
}

impl Default for Budget {
    fn default() -> Self {
        Self::with_clock(now)
    }
}

impl Budget {
    /// A budget on another clock (seconds), for tests.
    pub fn with_clock(clock: fn() -> u64) -> Self {
        Self {
            clock,
            state: Mutex::new((0, 0)),
        }
    }

    /// Takes one signature if this second has room.
    pub fn take(&self) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let second = (self.clock)();
        if state.0 != second {
            *state = (second, ONLINE_SIGNING_PER_SECOND);
        }
        if state.1 > 0 {
            state.1 -= 1;
            true
        } else {
            false
        }
    }
}

/// Everything signed for one zone in one preparation.
#[derive(Debug)]
pub struct ZoneSigning {
    /// The zone's apex (the signer's name).
    pub origin: Name,
    /// Keys that sign the zone's data in this window.
    pub zone_signers: Vec<Arc<Key>>,
    /// The window of every signature made for this preparation.
    pub window: Window,
    /// Signatures of static RRsets, by owner and type.
    pub static_sigs: HashMap<(LowerName, RecordType), Vec<Record>>,
    /// The SOA as negative answers carry it.
    pub negative_soa: Record,
    /// Signatures of the SOA with the negative TTL, for negative answers.
    pub negative_soa_sigs: Vec<Record>,
    /// The NODATA proof (NSEC at the name and its signatures) of every name that is not a
    /// GSLB name.
    pub nsec: HashMap<LowerName, Signed>,
    /// The NODATA proofs of GSLB names, by (name, has A, has AAAA).
    pub gslb_nsec: HashMap<(LowerName, bool, bool), Signed>,
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
    /// GSLB answer sets, by service index and [`set_key`].
    pub gslb_cache: SigCache<(usize, Box<[u8]>)>,
    /// What signing on first use for client-chosen names may still spend.
    pub budget: Budget,
    /// Signatures made in this preparation.
    pub signed: u64,
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
}

/// Signs one RRset (owner, records) with some keys, counting signatures.
type SignWith<'a> =
    dyn FnMut(&[Arc<Key>], &Name, &[&Record]) -> Result<Vec<Record>, SignError> + 'a;

/// Signs one RRset (owner, records) with the zone's keys.
type SignAs<'a> = dyn FnMut(&Name, &[&Record]) -> Result<Vec<Record>, SignError> + 'a;

/// The type bitmap of a name's NODATA proof: its types, RRSIG and NSEC.
fn bitmap(types: impl IntoIterator<Item = RecordType>) -> Vec<RecordType> {
    let mut all: Vec<RecordType> = types.into_iter().collect();
    all.extend([RecordType::RRSIG, RecordType::NSEC]);
    all.sort_by_key(|t| u16::from(*t));
    all.dedup();
    all
}

/// The name right after `name` in canonical order, as compact denial's NSEC names it (RFC
/// 9824 section 3): `\000.<name>`; for a name too long for one more label, the name with
/// the last octet of its first label incremented (nothing can exist between: such a name
/// has no room for descendants).
fn successor(name: &Name) -> Option<Name> {
    let labels: Vec<&[u8]> = name.iter().collect();
    let fits = |next: &Name| {
        hickory_proto::serialize::binary::BinEncodable::to_bytes(next)
            .is_ok_and(|bytes| bytes.len() <= 255)
    };
    let zero = Label::from_raw_bytes(&[0]).ok()?;
    let mut with_zero = vec![zero];
    with_zero.extend(labels.iter().filter_map(|l| Label::from_raw_bytes(l).ok()));
    if let Ok(mut next) = Name::from_labels(with_zero) {
        next.set_fqdn(true);
        if fits(&next) {
            return Some(next);
        }
    }
    let (first, rest) = labels.split_first()?;
    let mut bumped = first.to_ascii_lowercase();
    let last = bumped.last_mut()?;
    *last = last.checked_add(1)?;
    let mut incremented = vec![Label::from_raw_bytes(&bumped).ok()?];
    incremented.extend(rest.iter().filter_map(|l| Label::from_raw_bytes(l).ok()));
    let mut next = Name::from_labels(incremented).ok()?;
    next.set_fqdn(true);
    fits(&next).then_some(next)
}

/// What a zone is made of, as signing needs it.
pub struct ZoneContent<'a> {
    /// Its apex.
    pub origin: &'a LowerName,
    /// Every name with what it is.
    pub nodes: &'a HashMap<LowerName, Node>,
    /// Its delegations.
    pub cuts: &'a std::collections::HashSet<LowerName>,
    /// The SOA as served in negative answers.
    pub negative_soa: &'a Record,
    /// The address families each GSLB name has by config: (A, AAAA).
    pub gslb_families: &'a HashMap<LowerName, (bool, bool)>,
}

/// The signed NSEC chains around the zone's wildcards (see
/// [`ZoneSigning::wildcard_chains`]); `names` holds every name the zone answers for
/// (occluded names and glue left out) with its types.
fn wildcard_chains(
    origin: &Name,
    names: &HashMap<LowerName, Vec<RecordType>>,
    nsec_ttl: u32,
    sign_with: &mut SignAs<'_>,
) -> Result<HashMap<LowerName, Vec<Signed>>, SignError> {
    let mut chains = HashMap::new();
    if !names.keys().any(LowerName::is_wildcard) {
        return Ok(chains);
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
            let record = Record::from_rdata(
                owner.clone(),
                nsec_ttl,
                RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(next, bitmap(types)))),
            );
            let sigs = sign_with(owner, &[&record])?;
            chain.push(Signed {
                records: vec![record],
                sigs,
                wire: Box::default(),
            });
        }
        chains.insert(LowerName::from(&encloser), chain);
    }
    Ok(chains)
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
    pub fn wildcard_cover(&self, wildcard: &LowerName, qname: &LowerName) -> Option<&Signed> {
        let encloser = wildcard.base_name();
        let chain = self.wildcard_chains.get(&encloser)?;
        let depth = usize::from(encloser.num_labels()) + 1;
        let next_closer = Name::from(qname).trim_to(depth);
        let at = chain.partition_point(|link| {
            link.records
                .first()
                .is_some_and(|nsec| nsec.name <= next_closer)
        });
        chain.get(at.checked_sub(1)?)
    }

    /// The NSEC of the wildcard `*.W` itself (its types), from its chain.
    pub fn wildcard_nsec(&self, wildcard: &LowerName) -> Option<&Signed> {
        let chain = self.wildcard_chains.get(&wildcard.base_name())?;
        let owner = Name::from(wildcard);
        chain
            .iter()
            .find(|link| link.records.first().is_some_and(|nsec| nsec.name == owner))
    }

    /// Signs a zone's static RRsets and NODATA proofs with `ring`'s keys active at `now`.
    /// None when no key signs the zone at `now` (the zone is then served unsigned).
    pub fn new(
        content: &ZoneContent<'_>,
        ring: &KeyRing,
        now: u64,
    ) -> Result<Option<Self>, SignError> {
        let zone_signers = ring.zone_signers(now);
        if zone_signers.is_empty() {
            return Ok(None);
        }
        let key_signers = ring.key_signers(now);
        let origin = Name::from(content.origin);
        let window = Window::at(now);
        let nsec_ttl = content.negative_soa.ttl;
        let mut signed = 0u64;
        let mut sign_with = |keys: &[Arc<Key>], owner: &Name, records: &[&Record]| {
            keys.iter()
                .map(|key| {
                    signed += 1;
                    sign(key, &origin, owner, records, &window)
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let below_cut = |name: &LowerName| {
            let mut current = name.base_name();
            while current.num_labels() > content.origin.num_labels() {
                if content.cuts.contains(&current) {
                    return true;
                }
                current = current.base_name();
            }
            false
        };
        let mut static_sigs = HashMap::new();
        let mut nsec = HashMap::new();
        let mut gslb_nsec = HashMap::new();
        // Every name's types (for the wildcard chains), and whether any name is a
        // wildcard.
        let mut types_of: HashMap<LowerName, Vec<RecordType>> = HashMap::new();
        let nsec_of = |owner: &Name,
                       types: Vec<RecordType>,
                       sign_with: &mut SignWith<'_>|
         -> Result<Option<Signed>, SignError> {
            let Some(next) = successor(owner) else {
                return Ok(None);
            };
            let record = Record::from_rdata(
                owner.clone(),
                nsec_ttl,
                RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(next, bitmap(types)))),
            );
            let sigs = sign_with(&zone_signers, owner, &[&record])?;
            Ok(Some(Signed {
                records: vec![record],
                sigs,
                wire: Box::default(),
            }))
        };
        for (name, node) in content.nodes.iter() {
            if below_cut(name) {
                continue; // occluded, or glue: not ours to sign
            }
            let owner = Name::from(name);
            let is_cut = content.cuts.contains(name);
            match node {
                Node::EmptyNonTerminal => {
                    types_of.insert(name.clone(), Vec::new());
                    if let Some(proof) = nsec_of(&owner, Vec::new(), &mut sign_with)? {
                        nsec.insert(name.clone(), proof);
                    }
                }
                Node::Gslb => {
                    let (has_a, has_aaaa) =
                        content.gslb_families.get(name).copied().unwrap_or_default();
                    types_of.insert(
                        name.clone(),
                        [(has_a, RecordType::A), (has_aaaa, RecordType::AAAA)]
                            .into_iter()
                            .filter_map(|(on, t)| on.then_some(t))
                            .collect(),
                    );
                    for a in [false, true] {
                        for aaaa in [false, true] {
                            if (a && !has_a) || (aaaa && !has_aaaa) {
                                continue;
                            }
                            let types = [(a, RecordType::A), (aaaa, RecordType::AAAA)]
                                .into_iter()
                                .filter_map(|(on, t)| on.then_some(t))
                                .collect();
                            if let Some(proof) = nsec_of(&owner, types, &mut sign_with)? {
                                gslb_nsec.insert((name.clone(), a, aaaa), proof);
                            }
                        }
                    }
                }
                Node::Static(sets) => {
                    let mut types = Vec::new();
                    for set in sets {
                        let t = set.record_type;
                        // At a delegation only the NS set (unsigned) and DS are the
                        // parent's.
                        if is_cut && t != RecordType::NS && t != RecordType::DS {
                            continue;
                        }
                        types.push(t);
                        if is_cut && t == RecordType::NS {
                            continue;
                        }
                        let records: Vec<&Record> = set.records.iter().collect();
                        let keys = if matches!(
                            t,
                            RecordType::DNSKEY | RecordType::CDS | RecordType::CDNSKEY
                        ) {
                            &key_signers
                        } else {
                            &zone_signers
                        };
                        let sigs = sign_with(keys, &owner, &records)?;
                        static_sigs.insert((name.clone(), t), sigs);
                    }
                    types_of.insert(name.clone(), types.clone());
                    if let Some(proof) = nsec_of(&owner, types, &mut sign_with)? {
                        nsec.insert(name.clone(), proof);
                    }
                }
            }
        }
        let wildcard_chains = wildcard_chains(
            &origin,
            &types_of,
            nsec_ttl,
            &mut |owner: &Name, records: &[&Record]| sign_with(&zone_signers, owner, records),
        )?;
        let mut negative_soa_sigs = Vec::new();
        if let Some(sigs) = static_sigs.get(&(content.origin.clone(), RecordType::SOA)) {
            for sig in sigs {
                let mut sig = sig.clone();
                sig.ttl = content.negative_soa.ttl;
                negative_soa_sigs.push(sig);
            }
        }
        Ok(Some(Self {
            origin,
            zone_signers,
            window,
            static_sigs,
            negative_soa: content.negative_soa.clone(),
            negative_soa_sigs,
            nsec,
            gslb_nsec,
            wildcard_chains,
            nsec_ttl,
            cache: SigCache::default(),
            gslb_cache: SigCache::default(),
            budget: Budget::default(),
            signed,
            next_event: None,
            inputs: [0; 32],
            keys_dir: None,
        }))
    }

    /// Signatures of `records` (one owner and type) made now with the zone's keys.
    fn sign_now(&self, owner: &Name, records: &[&Record]) -> Option<Vec<Record>> {
        self.zone_signers
            .iter()
            .map(|key| sign(key, &self.origin, owner, records, &self.window))
            .collect::<Result<Vec<_>, _>>()
            .inspect_err(|error| tracing::warn!(%error, "could not sign"))
            .ok()
    }

    /// The signatures of a GSLB answer of the service at `service`: `records` are its A
    /// or AAAA records (any order), `key` their [`set_key`]. The wire form is made for a
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
            let question = crate::routing::wire::gslb_question(&first.name);
            let wire = crate::routing::wire::wire_records(&question, &sigs)
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

    fn denial(&self, owner: &LowerName, types: Vec<RecordType>) -> Option<Arc<Signed>> {
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
                let wire = crate::routing::wire::encode_tail(&question, &[], &authority, &[])
                    .filter(|tail| tail.answers == 0 && tail.additionals == 0)
                    .map(|tail| tail.bytes)
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

/// The signed zones of a snapshot for `GET /v1/status`: signing keys, the signatures'
/// window, the next key event, and how many sets the caches hold.
pub fn status_json(snapshot: &Snapshot) -> Vec<serde_json::Value> {
    let time = |at: u64| crate::time::rfc3339_unix(at);
    snapshot
        .zones
        .iter()
        .filter_map(|zone| zone.signing.as_deref())
        .map(|signing| {
            serde_json::json!({
                "zone": signing.origin.to_string(),
                "signing_keys": signing.zone_signers.iter().map(|k| serde_json::json!({
                    "tag": k.tag,
                    "role": k.role.as_str(),
                    "algorithm": k.algorithm.number(),
                })).collect::<Vec<_>>(),
                "inception": time(u64::from(signing.window.inception)),
                "expiration": time(u64::from(signing.window.expiration)),
                "next_key_event": signing.next_event.map(time),
                "signed_at_preparation": signing.signed,
                "cached_sets": signing.cache.len() + signing.gslb_cache.len(),
            })
        })
        .collect()
}

/// How often [`maintain`] looks at the signatures' expiry and the keys' timelines.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Whether a snapshot's signatures need re-signing at `now`: the earliest expiry is within
/// [`REFRESH`], or a key event (publish, activate, retire, remove, rollover) has come.
/// Exports `gto_dnssec_signature_expiry_seconds` per signed zone and warns when re-signing
/// has fallen behind (less than half of [`REFRESH`] left).
pub fn check(snapshot: &Snapshot, now: u64) -> bool {
    check_and_warn(snapshot, now, true, &mut HashMap::new()).resign
}

/// What [`check_and_warn`] found due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Due {
    /// Signatures near expiry or a key event: sign again.
    resign: bool,
    /// A key directory changed since it was last read: read it again.
    reread: bool,
}

/// [`check`], warning about re-signing that is behind only when `warn`. `asked` holds,
/// per key directory, the change time a re-read was last asked for: a directory whose
/// read failed (a bad file in it) keeps the old change time in the snapshot, and must not
/// be asked for again until it changes again.
fn check_and_warn(
    snapshot: &Snapshot,
    now: u64,
    warn: bool,
    asked: &mut HashMap<std::path::PathBuf, Option<u64>>,
) -> Due {
    let mut due = Due::default();
    for zone in &snapshot.zones {
        let Some(signing) = &zone.signing else {
            continue;
        };
        let left = i64::from(signing.window.expiration) - now as i64;
        metrics::gauge!(crate::metrics::DNSSEC_SIGNATURE_EXPIRY_SECONDS, "zone" => signing.origin.to_string())
            .set(left as f64);
        if warn && left < (REFRESH.as_secs() / 2) as i64 {
            tracing::warn!(
                zone = %signing.origin,
                expires_in_seconds = left,
                "DNSSEC re-signing is behind: signatures expire soon"
            );
        }
        if left < REFRESH.as_secs() as i64 || signing.next_event.is_some_and(|at| at <= now) {
            due.resign = true;
        }
        if let Some((dir, seen)) = &signing.keys_dir {
            let changed = crate::loaded::changed_at(dir);
            if changed != *seen && asked.get(dir) != Some(&changed) {
                tracing::info!(zone = %signing.origin, dir = %dir.display(), "the key directory changed; reading it again");
                asked.insert(dir.clone(), changed);
                due.reread = true;
            }
        }
    }
    due
}

/// Re-signs in the background: every [`CHECK_EVERY`], [`check`]s the live snapshot and
/// asks the builder to re-sign when it is due, or to read a key directory that changed
/// (once per change: a file it cannot use is not read again every tick). Ends with
/// `token`.
pub async fn maintain(
    routing: crate::routing::RoutingHandle,
    events: tokio::sync::mpsc::Sender<crate::routing::BuildEvent>,
    token: tokio_util::sync::CancellationToken,
) {
    /// Checks between two warnings about re-signing that is behind (10 minutes).
    const WARN_EVERY: u64 = 300;
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut count = 0u64;
    let mut asked = HashMap::new();
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let snapshot = routing.load_full();
        let warn = count.is_multiple_of(WARN_EVERY);
        count += 1;
        let due = check_and_warn(&snapshot, now(), warn, &mut asked);
        drop(snapshot);
        if due.resign || due.reread {
            let (done, signed) = tokio::sync::oneshot::channel();
            if events
                .send(crate::routing::BuildEvent::Resign {
                    due: due.resign,
                    done: Some(done),
                })
                .await
                .is_err()
            {
                return;
            }
            // One re-signing at a time.
            let _ = signed.await;
        }
    }
}

/// The part of a denial's cache key that tells its type bitmaps apart.
fn types_key(types: &[RecordType]) -> Box<[u8]> {
    types
        .iter()
        .flat_map(|t| u16::from(*t).to_be_bytes())
        .collect()
}

/// The cache key of a GSLB set: its family, then its addresses, sorted, as bytes.
pub fn set_key(v6: bool, sorted: &[IpAddr]) -> Box<[u8]> {
    let mut key = Vec::with_capacity(1 + sorted.len() * 16);
    set_key_into(v6, sorted, &mut key);
    key.into_boxed_slice()
}

/// [`set_key`] into a reused buffer.
pub fn set_key_into(v6: bool, sorted: &[IpAddr], key: &mut Vec<u8>) {
    key.clear();
    key.push(u8::from(v6));
    for address in sorted {
        match address {
            IpAddr::V4(v4) => key.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => key.extend_from_slice(&v6.octets()),
        }
    }
}

/// The DNSKEY, CDS and CDNSKEY RRsets of the apex for the keys of `ring` at `now`.
pub fn apex_sets(
    origin: &Name,
    ring: &KeyRing,
    now: u64,
    dnskey_ttl: u32,
) -> Vec<(RecordType, Vec<Record>)> {
    let dnskeys: Vec<Record> = ring
        .published(now)
        .map(|k| {
            Record::from_rdata(
                origin.clone(),
                dnskey_ttl,
                RData::DNSSEC(DNSSECRData::DNSKEY(k.dnskey.clone())),
            )
        })
        .collect();
    let parent = ring.parent_keys(now);
    let cds: Vec<Record> = parent
        .iter()
        .filter_map(|k| {
            let digest = k.dnskey.to_digest(origin, DigestType::SHA256).ok()?;
            Some(Record::from_rdata(
                origin.clone(),
                dnskey_ttl,
                RData::DNSSEC(DNSSECRData::CDS(CDS::new(
                    k.tag,
                    Some(k.algorithm.algorithm()),
                    DigestType::SHA256,
                    digest.as_ref().to_vec(),
                ))),
            ))
        })
        .collect();
    let cdnskey: Vec<Record> = parent
        .iter()
        .map(|k| {
            Record::from_rdata(
                origin.clone(),
                dnskey_ttl,
                RData::DNSSEC(DNSSECRData::CDNSKEY(CDNSKEY::with_flags(
                    k.dnskey.flags(),
                    Some(k.algorithm.algorithm()),
                    k.dnskey.public_key().public_bytes().to_vec(),
                ))),
            )
        })
        .collect();
    [
        (RecordType::DNSKEY, dnskeys),
        (RecordType::CDS, cds),
        (RecordType::CDNSKEY, cdnskey),
    ]
    .into_iter()
    .filter(|(_, records)| !records.is_empty())
    .collect()
}

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
    // Answer section: each RRset followed by its signatures.
    let answers = std::mem::take(&mut resolution.answers);
    let mut out: Vec<Cow<'s, Record>> = Vec::with_capacity(answers.len() * 2);
    let gslb_set = resolution.gslb.as_ref();
    let mut final_name = qname.clone();
    // Proofs that the names answered from a wildcard do not exist themselves.
    let mut wildcard_proofs: Vec<&'s Signed> = Vec::new();
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
        let synthesized = matches!(group.first(), Some(Cow::Owned(_)));
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
                    let sigs = signing.static_sigs.get(&(wildcard.clone(), rtype))?;
                    if let Some(proof) = signing.wildcard_cover(&wildcard, &owner)
                        && !wildcard_proofs.iter().any(|p| std::ptr::eq(*p, proof))
                    {
                        wildcard_proofs.push(proof);
                    }
                    Some(
                        sigs.iter()
                            .map(|sig| {
                                let mut sig = sig.clone();
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
                    let sigs = signing.static_sigs.get(&(owner.clone(), rtype))?;
                    Some(sigs.iter().map(Cow::Borrowed).collect())
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
        push_proof(&mut resolution.authorities, proof);
    }

    match resolution.outcome {
        Outcome::NotOurs => false,
        Outcome::Referral => {
            let Some(cut) = resolution
                .authorities
                .first()
                .map(|ns| LowerName::from(&ns.name))
            else {
                return false;
            };
            let Some(zone) = snapshot
                .zone_of(&cut.base_name())
                .filter(|z| z.cuts.contains(&cut))
            else {
                return false;
            };
            let Some(signing) = zone.signing.as_deref() else {
                return false;
            };
            let ds = match zone.nodes.get(&cut) {
                Some(Node::Static(sets)) => sets.iter().find(|s| s.record_type == RecordType::DS),
                _ => None,
            };
            match ds {
                Some(ds) => {
                    resolution
                        .authorities
                        .extend(ds.records.iter().map(Cow::Borrowed));
                    if let Some(sigs) = signing.static_sigs.get(&(cut.clone(), RecordType::DS)) {
                        resolution
                            .authorities
                            .extend(sigs.iter().map(Cow::Borrowed));
                    }
                }
                None => {
                    if let Some(proof) = signing.nsec.get(&cut) {
                        push_proof(&mut resolution.authorities, proof);
                    }
                }
            }
            false
        }
        Outcome::Found if positive && !resolution.answers.is_empty() => false,
        Outcome::Found | Outcome::NoSuchName => {
            // A negative answer, maybe after a CNAME chain: the proof is about its end,
            // from the zone that answered (the parent, for DS at a child's apex).
            let Some(zone) = snapshot.zone_for(&final_name, qtype) else {
                return false;
            };
            let Some(signing) = zone.signing.as_deref() else {
                return false;
            };
            if resolution.authorities.is_empty() {
                return false;
            }
            resolution
                .authorities
                .extend(signing.negative_soa_sigs.iter().map(Cow::Borrowed));
            if resolution.outcome == Outcome::NoSuchName {
                if let Some(proof) = signing.denial(&final_name, vec![NXNAME]) {
                    resolution.authorities.extend(
                        denial_records(&final_name, &proof)
                            .into_iter()
                            .map(Cow::Owned),
                    );
                }
                return true;
            }
            nodata_proof(zone, signing, &final_name, &mut resolution.authorities);
            false
        }
    }
}

fn push_proof<'s>(into: &mut Vec<Cow<'s, Record>>, proof: &'s Signed) {
    into.extend(proof.records.iter().map(Cow::Borrowed));
    into.extend(proof.sigs.iter().map(Cow::Borrowed));
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
    if let Some(proof) = signing.nsec.get(name) {
        push_proof(into, proof);
        return;
    }
    // A name synthesized from a wildcard (RFC 4035 section 3.1.3.4): the wildcard's own
    // NSEC (it lacks the type) and the link that proves the name itself does not exist,
    // both signed with the zone.
    if let Some((wildcard, _)) = zone.wildcard_of(name) {
        let own = signing.wildcard_nsec(&wildcard);
        let cover = signing.wildcard_cover(&wildcard, name);
        if let Some(own) = own {
            push_proof(into, own);
        }
        if let Some(cover) = cover
            && !own.is_some_and(|own| std::ptr::eq(own, cover))
        {
            push_proof(into, cover);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keys::{Role, Timings};
    use super::*;

    #[test]
    fn a_set_is_signed_once_however_many_ask_at_once() {
        let cache: SigCache<u32> = SigCache::default();
        let made = AtomicU64::new(0);
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    start.wait();
                    let signed = cache.get_or_sign(7, || {
                        made.fetch_add(1, Ordering::SeqCst);
                        Some(Signed::default())
                    });
                    assert!(signed.is_some());
                });
            }
        });
        assert_eq!(made.load(Ordering::SeqCst), 1);
        assert_eq!(cache.len(), 1);
    }

    static SECOND: AtomicU64 = AtomicU64::new(1_000);

    #[test]
    fn a_flood_of_new_names_is_signed_within_the_budget() {
        let cache: SigCache<usize> = SigCache::default();
        let budget = Budget::with_clock(|| SECOND.load(Ordering::SeqCst));
        let made = AtomicU64::new(0);
        let ask = |key: usize| {
            cache
                .get_or_sign_within(key, Some(&budget), || {
                    made.fetch_add(1, Ordering::SeqCst);
                    Some(Signed::default())
                })
                .is_some()
        };
        let burst = ONLINE_SIGNING_PER_SECOND as usize;
        assert!((0..burst).all(ask));
        // Past the budget a new name is refused and not cached; a cached one answers.
        assert!(!ask(burst));
        assert!(ask(0));
        assert_eq!(made.load(Ordering::SeqCst), burst as u64);
        // The next second brings a new budget; the refused name is signed now.
        SECOND.fetch_add(1, Ordering::SeqCst);
        assert!(ask(burst));
        assert_eq!(made.load(Ordering::SeqCst), burst as u64 + 1);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache: SigCache<usize> = SigCache::default();
        for key in 0..CACHE_CAPACITY + 10 {
            cache.get_or_sign(key, || Some(Signed::default()));
        }
        assert!(cache.len() <= CACHE_CAPACITY, "{}", cache.len());
        // What is still asked for is signed again.
        let again = AtomicU64::new(0);
        cache.get_or_sign(0, || {
            again.fetch_add(1, Ordering::SeqCst);
            Some(Signed::default())
        });
        assert_eq!(again.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn rollover_intervals_follow_the_ttls() {
        let timings = Timings {
            dnskey_ttl: 3600,
            max_ttl: 300,
            parent_ds_ttl: 86_400,
            propagation: 600,
        };
        assert_eq!(timings.publish_interval(), 4200);
        // A ZSK waits for the data's signatures (here the DNSKEY TTL is the largest).
        assert_eq!(timings.retire_interval(Role::Zsk), 4200);
        // A CSK or KSK also waits for the parent's DS to expire from caches.
        assert_eq!(timings.retire_interval(Role::Csk), 87_000);
        assert_eq!(timings.retire_interval(Role::Ksk), 87_000);
    }

    #[test]
    fn the_successor_of_a_name_too_long_for_another_label_is_its_sibling() {
        // 4 labels of 63 octets minus room: 253 octets of text, 255 on the wire.
        let text = format!("{0}.{0}.{0}.{1}.", "a".repeat(63), "b".repeat(61));
        let name = Name::from_ascii(&text).unwrap();
        let next = successor(&name).unwrap();
        assert!(next > name, "{next} sorts after {name}");
        assert_eq!(next.num_labels(), name.num_labels());
        assert!(
            next.to_ascii()
                .starts_with(&format!("{}b.", "a".repeat(62))),
            "{next}"
        );
    }

    #[test]
    fn the_successor_of_a_name_is_right_after_it() {
        let name = Name::from_ascii("vpn.gto.example.com.").unwrap();
        let next = successor(&name).unwrap();
        assert_eq!(next.num_labels(), 5);
        assert!(next > name, "{next} sorts after {name}");
        assert!(next.zone_of(&name) || name.zone_of(&next));
    }
}
