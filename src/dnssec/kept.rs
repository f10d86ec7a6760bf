//! Signatures kept across preparations and restarts, as Knot's journal keeps a signed zone.
//!
//! Every signature a preparation of a signed zone makes or reuses is written afterwards, in
//! a thread of its own, to a file beside the state file (`<state_file>.signatures.<zone>`,
//! see [`path_for`]). The next preparation of the zone (a reload whose zone changed, a key
//! event, the next start) reads it back ([`Keeping::read`]) and signs again only the sets
//! it does not hold: a restart or a one-record reload of a big signed zone costs what the
//! unsigned one does plus the sets that changed.
//!
//! An entry is found by a digest of everything its signature stands for: the key (its
//! algorithm and public key) and the exact bytes it signed (the RRSIG fields, which hold
//! the validity window, then the canonical RRset, RFC 4034 section 3.1.8.1). So an entry is
//! reused only for the very data, key and window it signed. The two kinds of set a big
//! zone is made of are found without building those bytes (`id_of_parts`): an address
//! set (A, AAAA) by its owner, type, TTL and sorted addresses, and a compact-denial NSEC
//! by its owner, TTL and the types it lists, which determine its next name and bitmap.
//! (What those parts stand for is fixed by the file's version: a change to how the NSEC
//! of a name is made changes `MAGIC`.) A preparation that reads a file
//! whose window is still fresh ([`crate::dnssec::REFRESH`] or more before it expires) signs
//! in that window, so that its unchanged sets match; once the window goes stale everything
//! is signed again in a new one, as before this file existed.
//!
//! The file: `GTOSIGS2`, inception and expiration (u32, little endian), then entries (a
//! 16-byte digest, the signature's length as a u16, the signature), then the SHA-256 of
//! everything before it. A file that is missing, short, damaged or of another format is
//! ignored (logged) and the zone signed whole; it is replaced atomically (temporary file,
//! fsync, rename), so a crash leaves the old file or the new one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

use hickory_proto::dnssec::PublicKey;
use sha2::{Digest, Sha256};

use super::Window;
use super::keys::Key;

/// The file's first bytes (its format's name and version).
const MAGIC: &[u8; 8] = b"GTOSIGS2";
/// Bytes of the digest that finds an entry.
const ID_LEN: usize = 16;
/// The largest file read (a zone of several million signatures).
const READ_LIMIT: u64 = 1 << 30;

/// The digest that finds a signature: of the key and the bytes it signs.
pub(super) type SigId = [u8; ID_LEN];

/// Where the signatures of the zone `origin` are kept, for the state file `state_file`.
pub fn path_for(state_file: &Path, origin: &str) -> PathBuf {
    let zone = origin.trim_end_matches('.');
    let zone = if zone.is_empty() { "root" } else { zone };
    let mut name = state_file.as_os_str().to_owned();
    name.push(format!(".signatures.{}", zone.to_ascii_lowercase()));
    PathBuf::from(name)
}

/// The digest of `key` signing `tbs` (the bytes to be signed).
pub(super) fn id_of(key: &Key, tbs: &[u8]) -> SigId {
    let mut hasher = Sha256::new();
    hasher.update([u8::from(key.algorithm.algorithm())]);
    hasher.update(key.dnskey.public_key().public_bytes());
    hasher.update(tbs);
    let digest = hasher.finalize();
    let mut id = [0; ID_LEN];
    id.copy_from_slice(&digest[..ID_LEN]);
    id
}

/// What identifies a set of one of the two common kinds without its signed bytes: its
/// type, TTL and a canonical description of its data (an address set's sorted address
/// octets; for a compact-denial NSEC, the types it lists, sorted, two octets each).
pub struct Parts<'a> {
    /// The set's type (A, AAAA or NSEC).
    pub record_type: hickory_proto::rr::RecordType,
    /// Its TTL (the RRSIG's original TTL).
    pub ttl: u32,
    /// Its data, as above.
    pub data: &'a [u8],
}

/// The digest of `key` signing, in `window` for `signer`, the set at `owner` that `parts`
/// describe. Apart from [`id_of`]'s by its first octet (a tag, never an algorithm number).
pub(super) fn id_of_parts(
    key: &Key,
    signer: &hickory_proto::rr::Name,
    owner: &hickory_proto::rr::Name,
    window: &Window,
    parts: &Parts<'_>,
) -> SigId {
    let mut hasher = Sha256::new();
    hasher.update(b"\xffparts");
    hasher.update([u8::from(key.algorithm.algorithm())]);
    hasher.update(key.tag.to_be_bytes());
    hasher.update(key.dnskey.public_key().public_bytes());
    // Names as given (a name in another case is another digest: a miss, never a wrong
    // signature).
    for name in [signer, owner] {
        for label in name.iter() {
            hasher.update([label.len() as u8]);
            hasher.update(label);
        }
        hasher.update([0]);
    }
    hasher.update(window.inception.to_be_bytes());
    hasher.update(window.expiration.to_be_bytes());
    hasher.update(u16::from(parts.record_type).to_be_bytes());
    hasher.update(parts.ttl.to_be_bytes());
    hasher.update(parts.data);
    let digest = hasher.finalize();
    let mut id = [0; ID_LEN];
    id.copy_from_slice(&digest[..ID_LEN]);
    id
}

/// The signatures read from a zone's file: its window and its entries.
#[derive(Debug)]
pub struct KeptSigs {
    /// The window every signature in the file was made in.
    pub window: Window,
    bytes: Vec<u8>,
    /// Where each signature starts in `bytes`, and its length.
    index: HashMap<SigId, (u32, u16), foldhash::fast::RandomState>,
}

impl KeptSigs {
    /// Parses a file's bytes; the reason when they are not a whole file of this version.
    fn parse(bytes: Vec<u8>) -> Result<Self, &'static str> {
        let header = MAGIC.len() + 8;
        if bytes.len() < header + 32 || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a signatures file of this version");
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err("its checksum does not match (damaged or cut short)");
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let window = Window {
            inception: word(MAGIC.len()),
            expiration: word(MAGIC.len() + 4),
        };
        let mut index = HashMap::with_capacity_and_hasher(
            body.len() / 80,
            foldhash::fast::RandomState::default(),
        );
        let mut at = header;
        while at < body.len() {
            let Some(entry) = body.get(at..at + ID_LEN + 2) else {
                return Err("an entry is cut short");
            };
            let mut id = [0; ID_LEN];
            id.copy_from_slice(&entry[..ID_LEN]);
            let len = u16::from_le_bytes([entry[ID_LEN], entry[ID_LEN + 1]]);
            let start = at + ID_LEN + 2;
            let end = start + usize::from(len);
            if end > body.len() {
                return Err("an entry is cut short");
            }
            let start = u32::try_from(start).map_err(|_| "too big")?;
            index.insert(id, (start, len));
            at = end;
        }
        Ok(Self {
            window,
            bytes,
            index,
        })
    }

    /// The signature kept for `id`.
    pub(super) fn get(&self, id: &SigId) -> Option<&[u8]> {
        let &(start, len) = self.index.get(id)?;
        let start = start as usize;
        self.bytes.get(start..start + usize::from(len))
    }

    /// How many signatures the file holds.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// What one preparation of a zone reuses and makes: the signatures read (if any) and the
/// entries of every signature it serves, in the file's form, to be written after it.
#[derive(Debug, Default)]
pub struct Keeping {
    /// The file read, when its window is still fresh.
    pub from: Option<KeptSigs>,
    /// Entries of the signatures served, in parts (one per signing thread).
    pub entries: Vec<Vec<u8>>,
}

impl Keeping {
    /// Reads the zone's file at `path` if its window is fresh at `now`; nothing kept
    /// otherwise. A write of it still under way is not waited for (the file is replaced
    /// whole, so this reads the one before): a reload right after another re-signs what
    /// the one before it signed, rather than wait for a big file's write and fsync.
    ///
    /// The file read by [`read_ahead`] for a reload under way, when there is one for
    /// `path`, is taken rather than read again.
    pub fn read(path: &Path, now: u64) -> Self {
        let read = match take_ahead(path) {
            Some(ahead) => ahead
                .join()
                .unwrap_or_else(|_| Err("the read ahead of it failed (a bug)".into())),
            None => read_file(path),
        };
        let parsed = match read {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Self::default(),
            Err(error) => {
                tracing::warn!(%error, "kept signatures not read; the zone is signed whole");
                return Self::default();
            }
        };
        match parsed {
            Ok(kept) if fresh(&kept.window, now) => Self {
                from: Some(kept),
                ..Self::default()
            },
            Ok(_) => {
                tracing::debug!(path = %path.display(), "kept signatures are stale");
                Self::default()
            }
            Err(why) => {
                tracing::warn!(
                    path = %path.display(),
                    why,
                    "kept signatures ignored; the zone is signed whole"
                );
                Self::default()
            }
        }
    }

    /// The window to sign in: the file's when one was read, else a new one at `now`.
    pub fn window(&self, now: u64) -> Window {
        self.from
            .as_ref()
            .map_or_else(|| Window::at(now), |kept| kept.window.clone())
    }

    /// Writes the entries to `path` in a thread of its own (after any earlier write of
    /// it), as made in `window`.
    pub fn write_later(self, path: PathBuf, window: &Window) {
        let mut file = Vec::with_capacity(
            MAGIC.len() + 8 + self.entries.iter().map(Vec::len).sum::<usize>() + 32,
        );
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&window.inception.to_le_bytes());
        file.extend_from_slice(&window.expiration.to_le_bytes());
        drop(self.from); // not needed while the file is written
        let entries = self.entries;
        let mut writes = WRITES.lock().unwrap_or_else(|e| e.into_inner());
        let earlier = take_write(&mut writes, &path);
        let at = path.clone();
        let spawned = std::thread::Builder::new()
            .name("gto-sigs-write".into())
            .spawn(move || {
                if let Some(earlier) = earlier {
                    let _ = earlier.join();
                }
                for part in &entries {
                    file.extend_from_slice(part);
                }
                drop(entries);
                let sum = Sha256::digest(&file);
                file.extend_from_slice(&sum);
                if let Err(error) = write_file(&at, &file) {
                    tracing::warn!(path = %at.display(), %error, "kept signatures not written");
                }
            });
        match spawned {
            Ok(handle) => {
                writes.push((path, handle));
            }
            Err(error) => tracing::warn!(%error, "kept signatures not written"),
        }
    }

    /// Appends the entry of a signature served (`part`: the signing thread's own).
    pub(super) fn push(part: &mut Vec<u8>, id: &SigId, signature: &[u8]) {
        let Ok(len) = u16::try_from(signature.len()) else {
            return; // no DNSSEC signature is that long; not kept
        };
        part.extend_from_slice(id);
        part.extend_from_slice(&len.to_le_bytes());
        part.extend_from_slice(signature);
    }
}

/// Whether signatures made in `window` may still be served, and more signed in it, at
/// `now`: it has begun, and it ends [`super::REFRESH`] or more from now.
fn fresh(window: &Window, now: u64) -> bool {
    i64::from(window.inception) <= now as i64
        && i64::from(window.expiration) - now as i64 >= super::REFRESH.as_secs() as i64
}

/// What reading a kept file gave: None when there is none, else the file parsed (or why
/// it could not be); an error when it could not be read.
type ReadKept = Result<Option<Result<KeptSigs, &'static str>>, String>;

fn read_file(path: &Path) -> ReadKept {
    match crate::files::read(path, READ_LIMIT) {
        Ok(bytes) => Ok(Some(KeptSigs::parse(bytes))),
        Err(error) if error.is_not_found() => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

/// The kept-signature files of `config`'s signed zones (none without a state file).
pub fn paths_of(config: &crate::config::Config) -> Vec<PathBuf> {
    let Some(state_file) = config.server.state_file.as_deref() else {
        return Vec::new();
    };
    config
        .zones
        .iter()
        .filter(|zone| zone.dnssec.is_some())
        .map(|zone| path_for(state_file, &zone.origin.to_string()))
        .collect()
}

/// Reads begun ahead of a reload's preparation, by path ([`read_ahead`]).
static AHEAD: Mutex<Vec<(PathBuf, JoinHandle<ReadKept>)>> = Mutex::new(Vec::new());

/// Begins reading the kept files at `paths`, each in a thread of its own, for the
/// preparation of a reload that is about to read its config and zones: the file (tens of
/// MiB for a big zone) is read and parsed beside the zone files' reading instead of after
/// it. [`Keeping::read`] takes what it finds here; [`forget_read_ahead`] drops what the
/// reload did not take. Reads begun earlier and not taken are dropped.
pub fn read_ahead(paths: Vec<PathBuf>) {
    let mut ahead = AHEAD.lock().unwrap_or_else(|e| e.into_inner());
    ahead.clear();
    for path in paths {
        let at = path.clone();
        match std::thread::Builder::new()
            .name("gto-sigs-read".into())
            .spawn(move || read_file(&at))
        {
            Ok(handle) => ahead.push((path, handle)),
            Err(error) => tracing::debug!(%error, "kept signatures not read ahead"),
        }
    }
}

/// Drops the reads begun by [`read_ahead`] that no preparation took (a zone the reload
/// left unchanged, or a reload refused): their threads end on their own.
pub fn forget_read_ahead() {
    AHEAD.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Takes the read of `path` begun ahead, if any.
fn take_ahead(path: &Path) -> Option<JoinHandle<ReadKept>> {
    let mut ahead = AHEAD.lock().unwrap_or_else(|e| e.into_inner());
    let at = ahead.iter().position(|(p, _)| p == path)?;
    Some(ahead.swap_remove(at).1)
}

/// Writes still under way, by path.
static WRITES: Mutex<Vec<(PathBuf, JoinHandle<()>)>> = Mutex::new(Vec::new());

/// Takes the write of `path` under way out of [`WRITES`], if any.
fn take_write(writes: &mut Vec<(PathBuf, JoinHandle<()>)>, path: &Path) -> Option<JoinHandle<()>> {
    let at = writes.iter().position(|(p, _)| p == path)?;
    Some(writes.swap_remove(at).1)
}

/// Waits for every write under way (at exit, so that a restart finds the file).
pub fn finish_writes() {
    let pending: Vec<_> = WRITES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .map(|(_, handle)| handle)
        .collect();
    for handle in pending {
        let _ = handle.join();
    }
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let path = crate::files::replaceable(path, false).map_err(std::io::Error::other)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut out = std::fs::File::create(&temporary)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&temporary, &path)
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::{Name, RData, Record};

    use super::*;
    use crate::dnssec::keys::{KeyAlgorithm, Role, Timeline, generate};
    use crate::dnssec::{REFRESH, VALIDITY, signature_keeping, signature_of_parts};

    /// A new ECDSA P-256 CSK of `zone`, its files in `dir`.
    fn new_key(dir: &Path, zone: &Name) -> std::sync::Arc<Key> {
        generate(
            &dir.join("keys"),
            zone,
            Role::Csk,
            KeyAlgorithm::EcdsaP256,
            Timeline::from(0),
            3600,
        )
        .unwrap()
    }

    /// A signature is reused for exactly the key, bytes and window it signed; a file that
    /// is stale, not yet valid, damaged or cut short is not read.
    #[test]
    fn kept_signatures_are_reused_for_the_same_key_bytes_and_window_only() {
        let dir = tempfile::tempdir().unwrap();
        let zone = Name::from_ascii("gto.example.com.").unwrap();
        let key = new_key(dir.path(), &zone);
        let owner = Name::from_ascii("www.gto.example.com.").unwrap();
        let a =
            |ip: &str, ttl| Record::from_rdata(owner.clone(), ttl, RData::A(ip.parse().unwrap()));
        let first = a("192.0.2.1", 300);
        let now = 1_800_000_000;
        let path = path_for(&dir.path().join("gto.state"), "GTO.example.com.");
        assert!(path.ends_with("gto.state.signatures.gto.example.com"));

        let keeping = Keeping::read(&path, now);
        assert!(keeping.from.is_none(), "nothing kept yet");
        let window = keeping.window(now);
        let mut part = Vec::new();
        let sign = |record: &Record, window: &Window, kept, part: &mut Vec<u8>| {
            signature_keeping(&key, &zone, &owner, &[record], window, kept, part).unwrap()
        };
        let (signature, reused) = sign(&first, &window, None, &mut part);
        assert!(!reused);
        let keeping = Keeping {
            entries: vec![part],
            ..Keeping::default()
        };
        keeping.write_later(path.clone(), &window);
        finish_writes();

        // An hour on, the file is fresh: its window is adopted.
        let later = now + 3600;
        let read = Keeping::read(&path, later);
        let kept = read.from.as_ref().expect("the file is read");
        assert_eq!(kept.len(), 1);
        let adopted = read.window(later);
        assert_eq!(
            (adopted.inception, adopted.expiration),
            (window.inception, window.expiration)
        );
        let mut part = Vec::new();
        let (again, reused) = sign(&first, &adopted, Some(kept), &mut part);
        assert!(reused);
        // ECDSA signs with a fresh random nonce: only a reused signature is equal.
        assert_eq!(again, signature);
        assert!(
            !part.is_empty(),
            "a reused signature is kept for the next file too"
        );

        // Another address, another TTL, another window: signed anew.
        for (record, window) in [
            (a("192.0.2.2", 300), adopted.clone()),
            (a("192.0.2.1", 301), adopted.clone()),
            (first.clone(), Window::at(later)),
        ] {
            let (_, reused) = sign(&record, &window, Some(kept), &mut part);
            assert!(!reused, "{record:?} in {window:?}");
        }
        // Another key: signed anew.
        let other = new_key(dir.path(), &zone);
        let (_, reused) = signature_keeping(
            &other,
            &zone,
            &owner,
            &[&first],
            &adopted,
            Some(kept),
            &mut part,
        )
        .unwrap();
        assert!(!reused);

        // Too near its expiry, or before its inception: not read.
        let stale = u64::from(window.expiration) - REFRESH.as_secs() + 1;
        assert!(Keeping::read(&path, stale).from.is_none());
        assert!(Keeping::read(&path, stale - 2).from.is_some());
        assert!(
            Keeping::read(&path, u64::from(window.inception) - 1)
                .from
                .is_none()
        );
        assert_eq!(
            u64::from(window.expiration - window.inception),
            VALIDITY.as_secs() + crate::dnssec::BACKDATE.as_secs()
        );

        // Damaged (a byte flipped anywhere) or cut short: not read.
        let bytes = std::fs::read(&path).unwrap();
        for at in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1;
            std::fs::write(&path, &damaged).unwrap();
            assert!(
                Keeping::read(&path, later).from.is_none(),
                "byte {at} flipped"
            );
        }
        for len in [0, 7, 20, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..len]).unwrap();
            assert!(Keeping::read(&path, later).from.is_none(), "cut to {len}");
        }
        std::fs::write(&path, &bytes).unwrap();
        assert!(Keeping::read(&path, later).from.is_some());
    }

    /// An address set is found by its parts (owner, type, TTL, sorted addresses) without
    /// making its records; other addresses, or the same in another order, are told apart
    /// only by what they are.
    #[test]
    fn an_address_set_is_found_by_its_parts_without_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let zone = Name::from_ascii("gto.example.com.").unwrap();
        let key = new_key(dir.path(), &zone);
        let owner = Name::from_ascii("www.gto.example.com.").unwrap();
        let now = 1_800_000_000;
        let window = Window::at(now);
        let path = dir.path().join("sigs");
        let set = |ips: &[&str]| -> Vec<Record> {
            ips.iter()
                .map(|ip| Record::from_rdata(owner.clone(), 300, RData::A(ip.parse().unwrap())))
                .collect()
        };
        let octets = |ips: &[&str]| -> Vec<u8> {
            let mut all: Vec<[u8; 4]> = ips
                .iter()
                .map(|ip| ip.parse::<std::net::Ipv4Addr>().unwrap().octets())
                .collect();
            all.sort_unstable();
            all.concat()
        };
        let made = std::cell::Cell::new(0);
        let sign = |ips: &[&str], kept: Option<&KeptSigs>, part: &mut Vec<u8>| {
            let data = octets(ips);
            let parts = Parts {
                record_type: hickory_proto::rr::RecordType::A,
                ttl: 300,
                data: &data,
            };
            let mut records = || {
                made.set(made.get() + 1);
                set(ips)
            };
            signature_of_parts(
                &key,
                &zone,
                &owner,
                &window,
                &parts,
                &mut records,
                kept,
                part,
            )
            .unwrap()
        };
        let mut part = Vec::new();
        let (first, reused) = sign(&["192.0.2.2", "192.0.2.1"], None, &mut part);
        assert!(!reused);
        assert_eq!(made.get(), 1);
        Keeping {
            entries: vec![part],
            ..Keeping::default()
        }
        .write_later(path.clone(), &window);
        finish_writes();
        let read = Keeping::read(&path, now);
        let kept = read.from.as_ref().unwrap();
        let mut part = Vec::new();
        // The same addresses in another order: the same canonical set, reused unmade.
        let (again, reused) = sign(&["192.0.2.1", "192.0.2.2"], Some(kept), &mut part);
        assert!(reused);
        assert_eq!(again, first);
        assert_eq!(made.get(), 1, "a reused set's records are never made");
        // One address more: made and signed.
        let (_, reused) = sign(
            &["192.0.2.1", "192.0.2.2", "192.0.2.3"],
            Some(kept),
            &mut part,
        );
        assert!(!reused);
        assert_eq!(made.get(), 2);
        // A set found by its signed bytes is not found by its parts (two kinds of digest).
        let records = set(&["192.0.2.1", "192.0.2.2"]);
        let refs: Vec<&Record> = records.iter().collect();
        let mut by_bytes = Vec::new();
        signature_keeping(&key, &zone, &owner, &refs, &window, None, &mut by_bytes).unwrap();
        assert_ne!(by_bytes[..ID_LEN], part[..ID_LEN]);
    }

    /// A read begun ahead is what the next read of that path gives, once; one forgotten
    /// is not; other paths are read as usual.
    #[test]
    fn a_read_begun_ahead_is_taken_once_and_forgotten_when_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let zone = Name::from_ascii("gto.example.com.").unwrap();
        let key = new_key(dir.path(), &zone);
        let owner = Name::from_ascii("www.gto.example.com.").unwrap();
        let record = Record::from_rdata(owner.clone(), 300, RData::A("192.0.2.1".parse().unwrap()));
        let now = 1_800_000_000;
        let path = path_for(&dir.path().join("gto.state"), "gto.example.com.");
        let window = Window::at(now);
        let mut part = Vec::new();
        signature_keeping(&key, &zone, &owner, &[&record], &window, None, &mut part).unwrap();
        let keeping = Keeping {
            entries: vec![part],
            ..Keeping::default()
        };
        keeping.write_later(path.clone(), &window);
        finish_writes();

        // Read ahead, then the file goes: the read begun ahead is what is read, once.
        read_ahead(vec![path.clone()]);
        let begun = tokio::time::Instant::now();
        while !AHEAD
            .lock()
            .unwrap()
            .iter()
            .all(|(_, read)| read.is_finished())
        {
            assert!(begun.elapsed().as_secs() < 10, "the read ahead never ended");
            std::thread::yield_now();
        }
        std::fs::remove_file(&path).unwrap();
        let read = Keeping::read(&path, now + 60);
        assert_eq!(read.from.as_ref().map(KeptSigs::len), Some(1));
        assert!(Keeping::read(&path, now + 60).from.is_none(), "taken once");

        // Read ahead of a file that is then written anew: forgotten, the new one is read.
        read_ahead(vec![path.clone()]);
        forget_read_ahead();
        let mut part = Vec::new();
        let other = Record::from_rdata(owner.clone(), 300, RData::A("192.0.2.2".parse().unwrap()));
        for record in [&record, &other] {
            signature_keeping(&key, &zone, &owner, &[record], &window, None, &mut part).unwrap();
        }
        Keeping {
            entries: vec![part],
            ..Keeping::default()
        }
        .write_later(path.clone(), &window);
        finish_writes();
        assert_eq!(
            Keeping::read(&path, now + 60)
                .from
                .as_ref()
                .map(KeptSigs::len),
            Some(2)
        );
    }
}
