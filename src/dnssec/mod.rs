//! DNSSEC's lower floor: keys ([`keys`]), signing one RRset ([`sign`]), the bounded
//! single-flight caches and the online-signing budget. It imports nothing above
//! [`crate::files`]; the signing of a snapshot's zones, the signed form of answers and
//! re-signing live in routing (`routing::signing`, `routing::decorate`,
//! `routing::resign`), which answers only read.
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

pub mod kept;
pub mod keys;
pub mod parent;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hickory_proto::dnssec::rdata::{CDNSKEY, CDS, DNSSECRData, RRSIG, SigInput};
use hickory_proto::dnssec::{DigestType, PublicKey, TBS};
use hickory_proto::rr::{
    DNSClass, Label, LowerName, Name, RData, Record, RecordType, SerialNumber,
};

use self::keys::{Key, KeyRing};

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
    let (input, tbs) = to_be_signed(key, signer, owner, records, window)?;
    let signature = signature_of(key, owner, records, &tbs)?;
    let ttl = input.original_ttl;
    Ok(rrsig_record(owner, ttl, input, signature))
}

/// The signature of `records` by `key` (as [`sign`] makes it), reusing the one `kept`
/// holds for the same key and bytes when there is one; its entry is appended to `part`
/// (see [`kept::Keeping`]). True when it was reused. [`rrsig_of`] makes its record.
pub fn signature_keeping(
    key: &Key,
    signer: &Name,
    owner: &Name,
    records: &[&Record],
    window: &Window,
    kept: Option<&kept::KeptSigs>,
    part: &mut Vec<u8>,
) -> Result<(Vec<u8>, bool), SignError> {
    let (_, tbs) = to_be_signed(key, signer, owner, records, window)?;
    let id = kept::id_of(key, tbs.as_ref());
    kept_or_signed(&id, kept, part, || signature_of(key, owner, records, &tbs))
}

/// As [`signature_keeping`] for a set of one of the kinds [`kept::Parts`] describes, found
/// among the kept signatures by those parts: its records (`records`) are made only when
/// it must be signed.
#[allow(clippy::too_many_arguments)]
pub fn signature_of_parts(
    key: &Key,
    signer: &Name,
    owner: &Name,
    window: &Window,
    parts: &kept::Parts<'_>,
    records: &mut dyn FnMut() -> Vec<Record>,
    kept: Option<&kept::KeptSigs>,
    part: &mut Vec<u8>,
) -> Result<(Vec<u8>, bool), SignError> {
    let id = kept::id_of_parts(key, signer, owner, window, parts);
    kept_or_signed(&id, kept, part, || {
        let owned = records();
        let records: Vec<&Record> = owned.iter().collect();
        let (_, tbs) = to_be_signed(key, signer, owner, &records, window)?;
        signature_of(key, owner, &records, &tbs)
    })
}

/// The signature `kept` holds for `id`, else the one `sign` makes; its entry appended to
/// `part` either way. True when it was kept.
fn kept_or_signed(
    id: &kept::SigId,
    kept: Option<&kept::KeptSigs>,
    part: &mut Vec<u8>,
    sign: impl FnOnce() -> Result<Vec<u8>, SignError>,
) -> Result<(Vec<u8>, bool), SignError> {
    let (signature, reused) = match kept.and_then(|k| k.get(id)) {
        Some(signature) => (signature.to_vec(), true),
        None => (sign()?, false),
    };
    kept::Keeping::push(part, id, &signature);
    Ok((signature, reused))
}

/// `key`'s signature of `tbs`, the bytes to be signed of `records` at `owner`.
fn signature_of(
    key: &Key,
    owner: &Name,
    records: &[&Record],
    tbs: &TBS,
) -> Result<Vec<u8>, SignError> {
    key.signing
        .sign(tbs)
        .map_err(|e| sign_error(owner, records, e.to_string()))
}

/// The RRSIG record of `signature`, made by `key` in `window` over the set of
/// `type_covered` at `owner` with TTL `ttl`: the record [`sign`] makes for that set.
pub fn rrsig_of(
    key: &Key,
    signer: &Name,
    owner: &Name,
    type_covered: RecordType,
    ttl: u32,
    window: &Window,
    signature: Vec<u8>,
) -> Record {
    let input = sig_input(key, signer, owner, type_covered, ttl, window);
    rrsig_record(owner, ttl, input, signature)
}

fn sign_error(owner: &Name, records: &[&Record], message: String) -> SignError {
    SignError {
        owner: owner.clone(),
        record_type: records
            .first()
            .map_or(RecordType::NULL, |r| r.record_type()),
        message,
    }
}

/// The RRSIG fields of `key` signing a set of `type_covered` at `owner` in `window`.
fn sig_input(
    key: &Key,
    signer: &Name,
    owner: &Name,
    type_covered: RecordType,
    ttl: u32,
    window: &Window,
) -> SigInput {
    SigInput {
        type_covered,
        algorithm: key.algorithm.algorithm(),
        num_labels: owner.num_labels(),
        original_ttl: ttl,
        sig_expiration: SerialNumber::new(window.expiration),
        sig_inception: SerialNumber::new(window.inception),
        key_tag: key.tag,
        signer_name: signer.clone(),
    }
}

/// The RRSIG fields of `key` signing `records` in `window`, and the bytes it signs.
fn to_be_signed(
    key: &Key,
    signer: &Name,
    owner: &Name,
    records: &[&Record],
    window: &Window,
) -> Result<(SigInput, TBS), SignError> {
    let first = records
        .first()
        .ok_or_else(|| sign_error(owner, records, "empty RRset".into()))?;
    let input = sig_input(key, signer, owner, first.record_type(), first.ttl, window);
    let tbs = TBS::from_input(owner, DNSClass::IN, &input, records.iter().copied())
        .map_err(|e| sign_error(owner, records, e.to_string()))?;
    Ok((input, tbs))
}

/// The RRSIG record at `owner` with `input` and `signature`.
fn rrsig_record(owner: &Name, ttl: u32, input: SigInput, signature: Vec<u8>) -> Record {
    Record::from_rdata(
        owner.clone(),
        ttl,
        RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, signature))),
    )
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
    /// Sets held at most: a full cache is emptied before it takes another.
    capacity: usize,
}

impl<K> Default for SigCache<K> {
    fn default() -> Self {
        Self::with_capacity(CACHE_CAPACITY)
    }
}

impl<K> SigCache<K> {
    /// A cache that holds at most `capacity` sets: [`CACHE_CAPACITY`] for sets a client
    /// can choose; more for sets a zone bounds (a big zone's static sets signed on first
    /// use, every one of which may be asked for before the zone is signed whole).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::default()),
            capacity,
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
                    if map.len() >= self.capacity {
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

/// The type bitmap of a name's NODATA proof: its types, RRSIG and NSEC.
pub fn bitmap(types: impl IntoIterator<Item = RecordType>) -> Vec<RecordType> {
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
pub fn successor(name: &Name) -> Option<Name> {
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

/// The part of a denial's cache key that tells its type bitmaps apart.
pub fn types_key(types: &[RecordType]) -> Box<[u8]> {
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
