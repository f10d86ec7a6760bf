//! DNSSEC keys on disk: generating them (`gto dnssec keygen`), reading a zone's key
//! directory, and each key's timeline (published, active, retired, removed), which drives
//! signing and pre-publication rollover.
//!
//! A key is three files in the key directory, named as BIND names them:
//!
//! - `K<zone>+<alg>+<tag>.key`: the DNSKEY record in presentation form (public);
//! - `K<zone>+<alg>+<tag>.private`: the private key as PKCS#8 PEM, mode 0600 (gto refuses
//!   a private key that group or others can read);
//! - `K<zone>+<alg>+<tag>.state`: TOML with the key's role and its timeline.
//!
//! Timeline of a key (RFC 7583 terms): it is in the DNSKEY RRset from `publish` until
//! `remove`, and signs from `active` until `retire`. A successor made by a rollover is
//! published first and becomes active only when every cache has seen it (pre-publication).
//! A retired entry point (KSK or CSK) is removed only once the parent's DS for its
//! successor has been seen: until then it has no `remove` time, stays published and keeps
//! signing the DNSKEY RRset, so a parent still holding its DS keeps validating
//! ([`Key::waits_for_parent`], [`parent_seen`]).

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::dnssec::crypto::{EcdsaSigningKey, Ed25519SigningKey};
use hickory_proto::dnssec::rdata::DNSKEY;
use hickory_proto::dnssec::{Algorithm, PublicKey, SigningKey};
use hickory_proto::rr::Name;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

/// What a key signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Combined signing key: signs the DNSKEY RRset and the zone (the default).
    Csk,
    /// Key signing key: signs the DNSKEY, CDS and CDNSKEY RRsets only.
    Ksk,
    /// Zone signing key: signs everything else.
    Zsk,
}

impl Role {
    /// Whether its DS belongs at the parent (the SEP flag is set on it).
    pub fn is_entry_point(self) -> bool {
        self != Role::Zsk
    }

    /// Whether it signs the zone's data.
    pub fn signs_zone(self) -> bool {
        self != Role::Ksk
    }

    /// Lower-case label.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Csk => "csk",
            Role::Ksk => "ksk",
            Role::Zsk => "zsk",
        }
    }
}

/// The signing algorithms gto makes keys for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    /// ECDSA P-256 with SHA-256, algorithm 13 (the default).
    #[serde(rename = "ECDSAP256SHA256")]
    EcdsaP256,
    /// Ed25519, algorithm 15.
    #[serde(rename = "ED25519")]
    Ed25519,
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.algorithm(), self.number())
    }
}

impl KeyAlgorithm {
    /// The DNSSEC algorithm number's type.
    pub fn algorithm(self) -> Algorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => Algorithm::ECDSAP256SHA256,
            KeyAlgorithm::Ed25519 => Algorithm::ED25519,
        }
    }

    /// The algorithm number.
    pub fn number(self) -> u8 {
        match self {
            KeyAlgorithm::EcdsaP256 => 13,
            KeyAlgorithm::Ed25519 => 15,
        }
    }

    /// Parses a command-line spelling: `ecdsap256sha256` (or `13`), `ed25519` (or `15`).
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "ecdsap256sha256" | "ecdsa" | "p256" | "13" => Some(KeyAlgorithm::EcdsaP256),
            "ed25519" | "15" => Some(KeyAlgorithm::Ed25519),
            _ => None,
        }
    }
}

/// A key's timeline, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    /// When it was made.
    pub created: u64,
    /// From when it is in the DNSKEY RRset.
    pub publish: u64,
    /// From when it signs.
    pub active: u64,
    /// From when it no longer signs (None: not scheduled).
    pub retire: Option<u64>,
    /// From when it is out of the DNSKEY RRset (None: not scheduled).
    pub remove: Option<u64>,
}

impl Timeline {
    /// A key made, published and signing from `at`, with no end scheduled.
    pub fn from(at: u64) -> Self {
        Self {
            created: at,
            publish: at,
            active: at,
            retire: None,
            remove: None,
        }
    }
}

/// The `.state` file of a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    zone: String,
    role: Role,
    algorithm: KeyAlgorithm,
    #[serde(flatten)]
    timeline: Timeline,
}

/// One key of a zone: its public DNSKEY, its private half, its role and timeline.
pub struct Key {
    /// Key tag (RFC 4034 appendix B).
    pub tag: u16,
    /// What it signs.
    pub role: Role,
    /// Its algorithm.
    pub algorithm: KeyAlgorithm,
    /// Its DNSKEY record data (flags 256, or 257 for a CSK or KSK).
    pub dnskey: DNSKEY,
    /// The private key.
    pub signing: Arc<dyn SigningKey>,
    /// When it is published, signs, retires and goes.
    pub timeline: Timeline,
    /// The state file (its stem names the other two).
    pub state_path: PathBuf,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("Key")
            .field("tag", &self.tag)
            .field("role", &self.role)
            .field("algorithm", &self.algorithm)
            .field("timeline", &self.timeline)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// In the DNSKEY RRset at `now`.
    pub fn published(&self, now: u64) -> bool {
        self.timeline.publish <= now && self.timeline.remove.is_none_or(|r| now < r)
    }

    /// Signs at `now`.
    pub fn active(&self, now: u64) -> bool {
        self.published(now)
            && self.timeline.active <= now
            && self.timeline.retire.is_none_or(|r| now < r)
    }

    /// The same key with another timeline (to be written to its state file).
    fn rescheduled(&self, timeline: Timeline) -> Key {
        Key {
            tag: self.tag,
            role: self.role,
            algorithm: self.algorithm,
            dnskey: self.dnskey.clone(),
            signing: self.signing.clone(),
            timeline,
            state_path: self.state_path.clone(),
        }
    }

    /// The public key's bytes (as in its DNSKEY record).
    pub fn public_bytes(&self) -> Vec<u8> {
        self.dnskey.public_key().public_bytes().to_vec()
    }

    /// Removed from the DNSKEY RRset at `now` (for good).
    pub fn removed(&self, now: u64) -> bool {
        self.timeline.remove.is_some_and(|r| r <= now)
    }

    /// A retired entry point kept until the parent's DS for its successor is seen: it has
    /// stopped signing the zone's data but has no removal time.
    pub fn waits_for_parent(&self, now: u64) -> bool {
        self.role.is_entry_point()
            && self.timeline.retire.is_some_and(|r| r <= now)
            && self.timeline.remove.is_none()
    }

    /// The key's state at `now`, as `gto dnssec status` shows it.
    pub fn state(&self, now: u64) -> &'static str {
        let t = &self.timeline;
        if self.waits_for_parent(now) {
            return "retired, waiting for the parent's DS of its successor (published, signs \
                    the DNSKEY RRset; `gto dnssec ds-seen` once the parent serves it)";
        }
        if now < t.publish {
            "created (not yet published)"
        } else if t.remove.is_some_and(|r| now >= r) {
            "removed"
        } else if t.retire.is_some_and(|r| now >= r) {
            "retired (published, no longer signing)"
        } else if now < t.active {
            "published (not yet signing)"
        } else {
            "active"
        }
    }

    /// The next change of the key after `now`, and what it is.
    pub fn next_event(&self, now: u64) -> Option<(u64, &'static str)> {
        let t = &self.timeline;
        [
            (Some(t.publish), "published"),
            (Some(t.active), "starts signing"),
            (t.retire, "stops signing"),
            (t.remove, "is removed from the DNSKEY RRset"),
        ]
        .into_iter()
        .filter_map(|(at, what)| at.map(|at| (at, what)))
        .filter(|(at, _)| *at > now)
        .min_by_key(|(at, _)| *at)
    }
}

/// Every key of one zone in its key directory.
#[derive(Debug, Default)]
pub struct KeyRing {
    /// The keys, by tag order.
    pub keys: Vec<Arc<Key>>,
}

impl KeyRing {
    /// Whether `other` holds the same keys: tags, roles, algorithms, public keys and
    /// timelines (a re-read that finds nothing new changes nothing).
    pub fn same_keys(&self, other: &KeyRing) -> bool {
        self.keys.len() == other.keys.len()
            && self.keys.iter().zip(&other.keys).all(|(a, b)| {
                a.tag == b.tag
                    && a.role == b.role
                    && a.algorithm == b.algorithm
                    && a.timeline == b.timeline
                    && a.dnskey == b.dnskey
            })
    }
}

/// Why a key directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is there but wrong.
    #[error("{}: {message}", path.display())]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, message: impl Into<String>) -> KeyError {
    KeyError::Bad {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The file stem BIND uses: `K<zone>.+<alg>+<tag>` (the zone with its final dot).
fn stem(zone: &Name, algorithm: KeyAlgorithm, tag: u16) -> String {
    let mut zone = zone.to_lowercase();
    zone.set_fqdn(true);
    format!("K{zone}+{:03}+{tag:05}", algorithm.number())
}

/// `base` with `.<extension>` appended (key file stems hold dots of their own).
fn sibling(base: &Path, extension: &str) -> PathBuf {
    let mut name = base.as_os_str().to_os_string();
    name.push(".");
    name.push(extension);
    PathBuf::from(name)
}

/// A key's file stem, from its state file's path.
pub fn stem_path(state_path: &Path) -> PathBuf {
    let text = state_path.to_string_lossy();
    PathBuf::from(text.strip_suffix(".state").unwrap_or(&text).to_string())
}

fn signing_key(
    algorithm: KeyAlgorithm,
    pkcs8: &PrivatePkcs8KeyDer<'_>,
) -> Result<Arc<dyn SigningKey>, String> {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => EcdsaSigningKey::from_pkcs8(pkcs8, algorithm.algorithm())
            .map(|k| Arc::new(k) as Arc<dyn SigningKey>)
            .map_err(|e| e.to_string()),
        KeyAlgorithm::Ed25519 => Ed25519SigningKey::from_pkcs8(pkcs8)
            .map(|k| Arc::new(k) as Arc<dyn SigningKey>)
            .map_err(|e| e.to_string()),
    }
}

fn dnskey_of(role: Role, signing: &dyn SigningKey) -> Result<DNSKEY, String> {
    let public = signing.to_public_key().map_err(|e| e.to_string())?;
    Ok(DNSKEY::new(true, role.is_entry_point(), false, public))
}

/// Makes a key for `zone` in `dir` (created if missing) with the given timeline, and
/// writes its three files. The private key file is created with mode 0600.
pub fn generate(
    dir: &Path,
    zone: &Name,
    role: Role,
    algorithm: KeyAlgorithm,
    timeline: Timeline,
    dnskey_ttl: u32,
) -> Result<Arc<Key>, KeyError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let existing: Vec<u16> = read_dir(dir, zone)?.keys.iter().map(|k| k.tag).collect();
    // A new key's tag must differ from the zone's others: draw again when it does not.
    for _ in 0..16 {
        let pkcs8 = match algorithm {
            KeyAlgorithm::EcdsaP256 => EcdsaSigningKey::generate_pkcs8(algorithm.algorithm()),
            KeyAlgorithm::Ed25519 => Ed25519SigningKey::generate_pkcs8(),
        }
        .map_err(|e| bad(dir, format!("could not generate a key: {e}")))?;
        let signing = signing_key(algorithm, &pkcs8).map_err(|e| bad(dir, e))?;
        let dnskey = dnskey_of(role, signing.as_ref()).map_err(|e| bad(dir, e))?;
        let tag = dnskey
            .calculate_key_tag()
            .map_err(|e| bad(dir, e.to_string()))?;
        if existing.contains(&tag) {
            continue;
        }
        let base = dir.join(stem(zone, algorithm, tag));
        let private = sibling(&base, "private");
        let pem = pem_of(pkcs8.secret_pkcs8_der());
        write_new(&private, pem.as_bytes(), 0o600)?;
        let public = sibling(&base, "key");
        let record = format!(
            "; {} key for {zone}, created {}\n{zone} {dnskey_ttl} IN DNSKEY {dnskey}\n",
            role.as_str().to_uppercase(),
            crate::time::rfc3339_unix(timeline.created)
        );
        write_new(&public, record.as_bytes(), 0o644)?;
        let state_path = sibling(&base, "state");
        let key = Key {
            tag,
            role,
            algorithm,
            dnskey,
            signing,
            timeline,
            state_path,
        };
        write_state(&key, zone)?;
        return Ok(Arc::new(key));
    }
    Err(bad(dir, "could not draw a key tag unused in this zone"))
}

/// Rewrites a key's `.state` file (atomically: a temporary file renamed over it).
pub fn write_state(key: &Key, zone: &Name) -> Result<(), KeyError> {
    let state = StateFile {
        zone: zone.to_lowercase().to_string(),
        role: key.role,
        algorithm: key.algorithm,
        timeline: key.timeline,
    };
    let mut text =
        String::from("# gto DNSSEC key state: times are seconds since 1970-01-01 UTC.\n");
    text.push_str(&toml::to_string(&state).map_err(|e| bad(&key.state_path, e.to_string()))?);
    let temporary = sibling(&key.state_path, "tmp");
    std::fs::write(&temporary, text).map_err(io(&temporary))?;
    std::fs::rename(&temporary, &key.state_path).map_err(io(&key.state_path))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// Reads every key of `zone` in `dir` (`*.state` files naming the zone). Keys of other
/// zones in the same directory are left alone. Every problem is reported.
pub fn read_dir(dir: &Path, zone: &Name) -> Result<KeyRing, KeyError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KeyRing::default()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut keys = BTreeMap::new();
    let zone_text = zone.to_lowercase().to_string();
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("state") {
            continue;
        }
        let text =
            crate::files::read_to_string(&path, 1 << 16).map_err(|e| bad(&path, e.to_string()))?;
        let state: StateFile =
            toml::from_str(&text).map_err(|e| bad(&path, e.message().to_string()))?;
        let named = Name::from_ascii(&state.zone)
            .map(|n| n.to_lowercase().to_string())
            .unwrap_or_default();
        if named != zone_text {
            continue;
        }
        let key = read_key(&path, state)?;
        keys.insert(key.tag, Arc::new(key));
    }
    Ok(KeyRing {
        keys: keys.into_values().collect(),
    })
}

fn read_key(state_path: &Path, state: StateFile) -> Result<Key, KeyError> {
    let private = sibling(&stem_path(state_path), "private");
    let metadata = std::fs::metadata(&private).map_err(io(&private))?;
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(bad(
            &private,
            format!(
                "private key is readable by group or others (mode {:o}); chmod 600 it",
                metadata.permissions().mode() & 0o777
            ),
        ));
    }
    let pem = crate::files::read(&private, 1 << 16).map_err(|e| bad(&private, e.to_string()))?;
    let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(&pem)
        .map_err(|_| bad(&private, "not a PKCS#8 PEM private key"))?;
    let signing = signing_key(state.algorithm, &pkcs8)
        .map_err(|e| bad(&private, format!("not a {} key: {e}", state.algorithm)))?;
    let dnskey = dnskey_of(state.role, signing.as_ref()).map_err(|e| bad(&private, e))?;
    let tag = dnskey
        .calculate_key_tag()
        .map_err(|e| bad(&private, e.to_string()))?;
    Ok(Key {
        tag,
        role: state.role,
        algorithm: state.algorithm,
        dnskey,
        signing,
        timeline: state.timeline,
        state_path: state_path.to_path_buf(),
    })
}

impl KeyRing {
    /// Keys in the DNSKEY RRset at `now`.
    pub fn published(&self, now: u64) -> impl Iterator<Item = &Arc<Key>> {
        self.keys.iter().filter(move |k| k.published(now))
    }

    /// Keys that sign the zone's data at `now`.
    pub fn zone_signers(&self, now: u64) -> Vec<Arc<Key>> {
        self.keys
            .iter()
            .filter(|k| k.role.signs_zone() && k.active(now))
            .cloned()
            .collect()
    }

    /// Keys that sign the DNSKEY, CDS and CDNSKEY RRsets at `now`: every published entry
    /// point, so that a DS for either the old or the new key validates during a rollover.
    pub fn key_signers(&self, now: u64) -> Vec<Arc<Key>> {
        self.keys
            .iter()
            .filter(|k| k.role.is_entry_point() && k.published(now) && k.timeline.active <= now)
            .cloned()
            .collect()
    }

    /// Keys whose DS the parent should hold at `now` (published as CDS and CDNSKEY): the
    /// active entry points.
    pub fn parent_keys(&self, now: u64) -> Vec<Arc<Key>> {
        self.keys
            .iter()
            .filter(|k| k.role.is_entry_point() && k.active(now))
            .cloned()
            .collect()
    }

    /// The earliest key event after `now`.
    pub fn next_event(&self, now: u64) -> Option<u64> {
        self.keys
            .iter()
            .filter_map(|k| k.next_event(now).map(|(at, _)| at))
            .min()
    }
}

/// Rollover timings, derived from TTLs (RFC 7583 section 3.3, pre-publication).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// TTL of the DNSKEY RRset.
    pub dnskey_ttl: u32,
    /// Largest TTL of any signed RRset of the zone.
    pub max_ttl: u32,
    /// TTL of the DS RRset at the parent.
    pub parent_ds_ttl: u32,
    /// Margin for every instance to publish a change and for the parent to act on CDS.
    pub propagation: u32,
}

impl Timings {
    /// How long a new key is published before it signs: every cache holding the old DNSKEY
    /// RRset has let it go.
    pub fn publish_interval(&self) -> u64 {
        u64::from(self.dnskey_ttl) + u64::from(self.propagation)
    }

    /// How long a retired key stays published: every cached signature it made has
    /// expired, and for an entry point, the parent's old DS too.
    pub fn retire_interval(&self, role: Role) -> u64 {
        let data = u64::from(self.max_ttl.max(self.dnskey_ttl)) + u64::from(self.propagation);
        if role.is_entry_point() {
            data.max(u64::from(self.parent_ds_ttl) + u64::from(self.propagation))
        } else {
            data
        }
    }
}

/// Starts a pre-publication rollover of the active signing key `old` at `now`: a successor
/// of the same role and algorithm, published now and active after the publish interval,
/// when `old` retires. A ZSK is removed after the retire interval; a KSK or CSK only once
/// the parent's DS for the successor is seen ([`parent_seen`]): a parent nobody updated
/// never loses the key its DS names. Writes both state files.
pub fn roll(
    dir: &Path,
    zone: &Name,
    old: &Key,
    now: u64,
    timings: Timings,
) -> Result<Arc<Key>, KeyError> {
    let switch = now + timings.publish_interval();
    let new = generate(
        dir,
        zone,
        old.role,
        old.algorithm,
        Timeline {
            active: switch,
            ..Timeline::from(now)
        },
        timings.dnskey_ttl,
    )?;
    let retired = old.rescheduled(Timeline {
        retire: Some(switch),
        remove: (!old.role.is_entry_point()).then(|| switch + timings.retire_interval(old.role)),
        ..old.timeline
    });
    write_state(&retired, zone)?;
    Ok(new)
}

/// The parent serves the DS of the successors (seen at `now`): every entry point waiting
/// for it is scheduled for removal once the parent's old DS and the key's signatures can
/// have left every cache (the retire interval). Writes their state files; returns them.
pub fn parent_seen(
    ring: &KeyRing,
    zone: &Name,
    now: u64,
    timings: Timings,
) -> Result<Vec<Arc<Key>>, KeyError> {
    let mut scheduled = Vec::new();
    for old in ring.keys.iter().filter(|k| k.waits_for_parent(now)) {
        let key = old.rescheduled(Timeline {
            remove: Some(now + timings.retire_interval(old.role)),
            ..old.timeline
        });
        write_state(&key, zone)?;
        scheduled.push(Arc::new(key));
    }
    Ok(scheduled)
}

/// Gives the keys of `ring` named in `wanted` (by tag) those timelines, writing the state
/// files of the ones that change; returns how many did. For a fleet that follows one
/// shared key timeline.
pub fn reschedule(
    ring: &KeyRing,
    zone: &Name,
    wanted: &BTreeMap<u16, Timeline>,
) -> Result<usize, KeyError> {
    let mut written = 0;
    for key in &ring.keys {
        match wanted.get(&key.tag) {
            Some(timeline) if *timeline != key.timeline => {
                write_state(&key.rescheduled(*timeline), zone)?;
                written += 1;
            }
            _ => {}
        }
    }
    Ok(written)
}

/// Whether `key` is an active signing key due for rollover at `now` under `lifetime`
/// (it has signed that long, and no successor is scheduled).
pub fn due(key: &Key, now: u64, lifetime: Duration) -> bool {
    key.active(now)
        && key.timeline.retire.is_none()
        && now >= key.timeline.active.saturating_add(lifetime.as_secs())
}
