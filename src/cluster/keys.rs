//! One DNSSEC key set across the fleet: every signed zone's key timeline (which keys are
//! published, active, retired and when) is kept in etcd under `dnssec/<zone>`, and every
//! instance follows it, so that all publish the same DNSKEY RRset and sign with keys in it
//! whichever of them a resolver asks. Private keys never go to etcd: each host's key
//! directory holds the same key files (shipped by the operator); only the timeline, the
//! public keys and their tags are shared.
//!
//! Every [`CHECK_EVERY`] (and whenever the stored timeline or the local keys change) each
//! instance compares its keys (those not yet removed) with the fleet's:
//!
//! - the same: nothing to do (the instance is *consistent*);
//! - none stored yet, or the local keys changed since they last agreed (a rollover
//!   started here, `gto dnssec ds-seen`, the parent's DS seen) while the fleet's did
//!   not: the local timeline is written, compare-and-set on the stored revision;
//! - the fleet's changed: the local state files are rewritten to it (a local key the
//!   fleet does not name leaves the DNSKEY RRset now) and the zone is signed again;
//! - the fleet's names a key this host lacks: a **mismatch**. The instance keeps signing
//!   with its last consistent timeline, says so (a warning, a `dnssec` event,
//!   `gto_dnssec_keyset_mismatch{zone}` = 1, and `keysets` in its fleet record), and the
//!   consistent instances hold the missing key back (not published, not signing; the old
//!   key keeps signing) until every live instance has it. So a key shipped late delays a
//!   rollover and never breaks validation, and the DNSKEY RRsets differ only for the
//!   seconds between a key's creation and the first comparison that sees a host lack it.
//!
//! Automatic rollovers (`lifetime`) are started by one instance only, the live member with
//! the lowest id while connected to the store (none while cut off from it); the others
//! follow its timeline once its new key files reach them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hickory_proto::dnssec::PublicKeyBuf;
use hickory_proto::dnssec::rdata::DNSKEY;
use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::values::segment;
use super::{ClusterError, Fleet};
use crate::dnssec::keys::{self, KeyAlgorithm, KeyRing, Role, Timeline};
use crate::loaded::Loaded;
use crate::routing::resign::{Resigner, timings};

/// How often an instance compares its keys with the fleet's.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Most keys a stored timeline may name.
const MAX_KEYS: usize = 16;

/// How long before a key's publication the consistent instances look for members that
/// lack it (and hold it back: [`hold_back`]).
const GATE_LEAD: u64 = 60;

/// One key of a shared timeline: what identifies it (never the private key) and its times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SharedKey {
    tag: u16,
    role: Role,
    algorithm: KeyAlgorithm,
    /// The public key, base64.
    public: String,
    #[serde(flatten)]
    timeline: Timeline,
}

/// `dnssec/<zone>`: the zone's key timeline as the fleet follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct KeysetValue {
    keys: Vec<SharedKey>,
    /// When it was written (Unix seconds, signing clock).
    at: u64,
    /// The instance that wrote it.
    by: String,
}

/// What an instance says about one zone's keys in its fleet record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysetState {
    /// Its keys are the fleet's.
    pub consistent: bool,
    /// Keys of the fleet's timeline its key directory lacks (by tag).
    #[serde(default)]
    pub missing: Vec<u16>,
}

/// What one zone's comparison did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysetOutcome {
    /// The same keys and timeline as the fleet's.
    Consistent,
    /// This instance's timeline was written for the fleet.
    Shared,
    /// The fleet's timeline was written to this host's state files.
    Followed,
    /// The fleet's timeline names keys this host lacks: it keeps its own.
    Mismatch(Vec<u16>),
    /// The activation of these keys was held back: a live member lacks them.
    Held(Vec<u16>),
    /// The store could not be reached or the state files written.
    Failed(String),
}

/// Parses and checks a stored timeline: each key's tag is its public key's, times in
/// order, at most [`MAX_KEYS`], no tag twice. Anything else counts for nothing.
pub(super) fn valid_keyset(bytes: &[u8]) -> Result<KeysetValue, String> {
    let value: KeysetValue = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if value.keys.len() > MAX_KEYS {
        return Err(format!("{} keys (at most {MAX_KEYS})", value.keys.len()));
    }
    let mut tags = BTreeSet::new();
    for key in &value.keys {
        let dnskey = dnskey_of(key).ok_or_else(|| format!("key {}: not a public key", key.tag))?;
        if dnskey.calculate_key_tag().ok() != Some(key.tag) {
            return Err(format!("key {}: the tag is not its public key's", key.tag));
        }
        let t = &key.timeline;
        let ordered = t.publish <= t.active
            && t.retire.is_none_or(|r| r >= t.active)
            && t.remove.is_none_or(|r| r >= t.retire.unwrap_or(t.active))
            && [Some(t.publish), Some(t.active), t.retire, t.remove]
                .into_iter()
                .flatten()
                .all(|at| at <= crate::time::MAX_UNIX);
        if !ordered {
            return Err(format!("key {}: times out of order or range", key.tag));
        }
        if !tags.insert(key.tag) {
            return Err(format!("key {} named twice", key.tag));
        }
    }
    Ok(value)
}

fn dnskey_of(key: &SharedKey) -> Option<DNSKEY> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&key.public)
        .ok()?;
    let public = PublicKeyBuf::new(bytes, key.algorithm.algorithm());
    Some(DNSKEY::new(true, key.role.is_entry_point(), false, public))
}

/// The keys of `ring` not removed at `now`, as the fleet stores them (by tag).
fn shared_of(ring: &KeyRing, now: u64) -> Vec<SharedKey> {
    let mut keys: Vec<SharedKey> = ring
        .keys
        .iter()
        .filter(|k| !k.removed(now))
        .map(|k| SharedKey {
            tag: k.tag,
            role: k.role,
            algorithm: k.algorithm,
            public: base64::engine::general_purpose::STANDARD.encode(k.public_bytes()),
            timeline: k.timeline,
        })
        .collect();
    keys.sort_by_key(|k| k.tag);
    keys
}

/// The keys of a stored timeline not removed at `now`.
fn current(value: &KeysetValue, now: u64) -> Vec<SharedKey> {
    let mut keys: Vec<SharedKey> = value
        .keys
        .iter()
        .filter(|k| k.timeline.remove.is_none_or(|r| r > now))
        .cloned()
        .collect();
    keys.sort_by_key(|k| k.tag);
    keys
}

/// What to do about one zone.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Agree,
    Share,
    /// Rewrite the local timelines to these (tags).
    Follow(BTreeMap<u16, Timeline>),
    Missing(Vec<u16>),
}

/// Compares the local keys with the fleet's. `synced` is what both last agreed on (None
/// since this process started); `local_newer`: a local state file is newer than the
/// stored timeline (a change made while this instance was away).
fn decide(
    local: &[SharedKey],
    fleet: Option<&[SharedKey]>,
    synced: Option<&[SharedKey]>,
    local_newer: bool,
    now: u64,
) -> Step {
    let Some(fleet) = fleet else {
        return Step::Share;
    };
    if local == fleet {
        return Step::Agree;
    }
    let local_changed = synced.map_or(local_newer, |s| local != s);
    let fleet_changed = synced.is_none_or(|s| fleet != s);
    if local_changed && (synced.is_none() || !fleet_changed) {
        return Step::Share;
    }
    let missing: Vec<u16> = fleet
        .iter()
        .filter(|f| !local.iter().any(|l| l.tag == f.tag && l.public == f.public))
        .map(|f| f.tag)
        .collect();
    if !missing.is_empty() {
        return Step::Missing(missing);
    }
    let mut wanted: BTreeMap<u16, Timeline> = fleet.iter().map(|f| (f.tag, f.timeline)).collect();
    // A local key the fleet does not name leaves the DNSKEY RRset now.
    let extras: Vec<&SharedKey> = local
        .iter()
        .filter(|l| !fleet.iter().any(|f| f.tag == l.tag))
        .collect();
    for extra in extras {
        let t = extra.timeline;
        wanted.insert(
            extra.tag,
            Timeline {
                retire: Some(t.retire.map_or(now, |r| r.min(now)).max(t.active)),
                remove: Some(now.max(t.active)),
                ..t
            },
        );
    }
    Step::Follow(wanted)
}

/// The fleet's timeline with the keys some member lacks (`lacking`) and that do not sign
/// yet held back: published no sooner than [`GATE_LEAD`] x 2 from `now` (a key already
/// published leaves the DNSKEY RRset again: it never signed, so no cached signature needs
/// it) and active a publish interval after that, with their predecessors' retirement (and
/// removal) moved as far. None when no such key is published or about to be.
fn hold_back(
    fleet: &[SharedKey],
    lacking: &BTreeSet<u16>,
    now: u64,
    publish_interval: u64,
) -> Option<(Vec<SharedKey>, Vec<u16>)> {
    let mut keys = fleet.to_vec();
    let mut held = Vec::new();
    for index in 0..keys.len() {
        let key = keys[index].clone();
        let t = key.timeline;
        let due = t.active > now && t.publish <= now + GATE_LEAD;
        if !lacking.contains(&key.tag) || !due {
            continue;
        }
        let publish = now + 2 * GATE_LEAD;
        let active = (publish + publish_interval).max(t.active);
        let delay = active - t.active;
        for other in keys.iter_mut() {
            if other.tag == key.tag {
                other.timeline.publish = publish;
                other.timeline.active = active;
            } else if other.role == key.role && other.timeline.retire == Some(t.active) {
                other.timeline.retire = Some(active);
                other.timeline.remove = other.timeline.remove.map(|r| r + delay);
            }
        }
        held.push(key.tag);
    }
    (!held.is_empty()).then_some((keys, held))
}

/// The newest change time of `ring`'s state files (Unix seconds).
fn newest_state(ring: &KeyRing) -> u64 {
    ring.keys
        .iter()
        .filter_map(|k| std::fs::metadata(&k.state_path).ok()?.modified().ok())
        .map(crate::time::unix)
        .max()
        .unwrap_or(0)
}

impl Fleet {
    fn keyset_key(&self, zone: &Name) -> String {
        format!(
            "{}dnssec/{}",
            self.0.prefix,
            segment(&zone.to_lowercase().to_string())
        )
    }

    /// Keeps this instance's key timelines and the fleet's equal (see the module's doc)
    /// every [`CHECK_EVERY`] and whenever either changes, until `token` ends. `resigner`
    /// signs again after the state files were rewritten, and starts automatic rollovers
    /// only while this instance is the fleet's roller.
    pub async fn share_keys(self, resigner: Resigner, token: CancellationToken) {
        let mut configs = resigner.configs();
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                _ = ticks.tick() => {}
                () = self.0.keysets_changed.notified() => {}
                changed = configs.changed() => if changed.is_err() { return },
            }
            self.sync_keys(&resigner).await;
        }
    }

    /// One comparison of every signed zone's keys with the fleet's; returns what it did
    /// per zone.
    pub async fn sync_keys(&self, resigner: &Resigner) -> Vec<(Name, KeysetOutcome)> {
        let _one = self.0.keys_turn.lock().await;
        resigner.set_rolls(self.is_roller());
        let loaded = resigner.configs().borrow().clone();
        let now = crate::dnssec::now();
        let mut outcomes = Vec::new();
        let mut states = BTreeMap::new();
        let mut followed = false;
        for (index, spec) in loaded.config.zones.iter().enumerate() {
            let (Some(_), Some(Some(ring))) = (&spec.dnssec, loaded.keys.get(index)) else {
                continue;
            };
            let outcome = self.sync_zone(&loaded, index, ring, now).await;
            followed |= outcome == KeysetOutcome::Followed;
            let zone = spec.origin.to_string();
            let state = match &outcome {
                KeysetOutcome::Mismatch(missing) => KeysetState {
                    consistent: false,
                    missing: missing.clone(),
                },
                KeysetOutcome::Failed(_) => self.reported(&zone),
                _ => KeysetState {
                    consistent: true,
                    missing: Vec::new(),
                },
            };
            // A comparison that failed (the store away) leaves the state as it was.
            metrics::gauge!(crate::metrics::DNSSEC_KEYSET_MISMATCH, "zone" => zone.clone())
                .set(if state.consistent { 0.0 } else { 1.0 });
            states.insert(zone, state);
            outcomes.push((spec.origin.clone(), outcome));
        }
        self.report_keysets(states);
        if followed {
            resigner.resign(false).await;
        }
        outcomes
    }

    /// What this instance last told the fleet about `zone` (consistent until it said
    /// otherwise).
    fn reported(&self, zone: &str) -> KeysetState {
        self.0
            .me
            .load()
            .keysets
            .get(zone)
            .cloned()
            .unwrap_or(KeysetState {
                consistent: true,
                missing: Vec::new(),
            })
    }

    /// Puts the zones' states in this instance's record (written again when they changed),
    /// and reports a mismatch that starts or ends.
    fn report_keysets(&self, states: BTreeMap<String, KeysetState>) {
        let before = self.0.me.load().keysets.clone();
        if before == states {
            return;
        }
        for (zone, state) in &states {
            let was = before.get(zone).cloned().unwrap_or(KeysetState {
                consistent: true,
                missing: Vec::new(),
            });
            if *state == was {
                continue;
            }
            if state.consistent {
                info!(%zone, "this instance's DNSSEC keys are the fleet's again");
            } else {
                warn!(
                    %zone,
                    missing = ?state.missing,
                    "the fleet's DNSSEC key timeline names keys this host's key directory lacks: \
                     signing with the last consistent keys until their files are here"
                );
            }
            self.emit(
                "dnssec",
                serde_json::json!({
                    "zone": zone,
                    "change": if state.consistent { "keyset-consistent" } else { "keyset-mismatch" },
                    "missing": state.missing,
                }),
            );
        }
        let mut me = (**self.0.me.load()).clone();
        me.keysets = states;
        self.0.me.store(Arc::new(me));
        self.0.reregister.notify_one();
    }

    async fn sync_zone(
        &self,
        loaded: &Loaded,
        index: usize,
        ring: &Arc<KeyRing>,
        now: u64,
    ) -> KeysetOutcome {
        let Some(spec) = loaded.config.zones.get(index) else {
            return KeysetOutcome::Failed("no such zone".into());
        };
        let zone = &spec.origin;
        let key = self.keyset_key(zone);
        let stored = self.stored_keyset(&key);
        let local = shared_of(ring, now);
        let fleet = stored.as_ref().map(|(v, _)| current(v, now));
        let synced = self.synced_keyset(&key);
        // Only a process that has not agreed yet looks at its state files' times.
        let local_newer = synced.is_none()
            && stored
                .as_ref()
                .is_some_and(|(v, _)| newest_state(ring) > v.at);
        let step = decide(
            &local,
            fleet.as_deref(),
            synced.as_deref(),
            local_newer,
            now,
        );
        // An invalid value stored there is overwritten (by compare-and-set on its revision).
        let revision = stored
            .as_ref()
            .map_or_else(|| self.invalid_revision(&key), |(_, r)| *r);
        match step {
            Step::Agree => {
                self.set_synced(&key, local.clone());
                let Some(timings) = timings(loaded, index) else {
                    return KeysetOutcome::Consistent;
                };
                let lacking = self.lacking(zone);
                match hold_back(&local, &lacking, now, timings.publish_interval()) {
                    None => KeysetOutcome::Consistent,
                    Some((keys, held)) => {
                        match self.write_keyset(&key, keys, revision, now).await {
                            Ok(true) => {
                                warn!(%zone, keys = ?held, "a fleet member lacks a new DNSSEC key: it is held back (not published) until every instance has it");
                                KeysetOutcome::Held(held)
                            }
                            Ok(false) => KeysetOutcome::Failed(
                                "the fleet's timeline changed meanwhile".into(),
                            ),
                            Err(error) => KeysetOutcome::Failed(error.to_string()),
                        }
                    }
                }
            }
            Step::Share => match self.write_keyset(&key, local.clone(), revision, now).await {
                Ok(true) => {
                    info!(%zone, "this instance's DNSSEC key timeline is the fleet's now");
                    self.set_synced(&key, local);
                    KeysetOutcome::Shared
                }
                // Someone else wrote meanwhile: the next comparison follows theirs.
                Ok(false) => KeysetOutcome::Failed("the fleet's timeline changed meanwhile".into()),
                Err(error) => KeysetOutcome::Failed(error.to_string()),
            },
            Step::Missing(missing) => KeysetOutcome::Mismatch(missing),
            Step::Follow(wanted) => {
                let (ring, zone_name) = (ring.clone(), zone.clone());
                let written = tokio::task::spawn_blocking(move || {
                    keys::reschedule(&ring, &zone_name, &wanted)
                })
                .await;
                match written {
                    Ok(Ok(count)) => {
                        info!(%zone, keys = count, "following the fleet's DNSSEC key timeline");
                        if let Some(fleet) = fleet {
                            self.set_synced(&key, fleet);
                        }
                        KeysetOutcome::Followed
                    }
                    Ok(Err(error)) => KeysetOutcome::Failed(error.to_string()),
                    Err(error) => KeysetOutcome::Failed(error.to_string()),
                }
            }
        }
    }

    /// Writes a timeline if the stored one is still at `revision` (0: absent). False: it
    /// changed meanwhile.
    async fn write_keyset(
        &self,
        key: &str,
        keys: Vec<SharedKey>,
        revision: i64,
        now: u64,
    ) -> Result<bool, ClusterError> {
        let value = KeysetValue {
            keys,
            at: now,
            by: self.0.instance.clone(),
        };
        let bytes =
            serde_json::to_vec(&value).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        self.0.engine.put_if(key, Some(bytes), revision, None).await
    }

    /// Tags of this zone's keys that some live member says its key directory lacks.
    fn lacking(&self, zone: &Name) -> BTreeSet<u16> {
        let zone = zone.to_string();
        self.0
            .instances
            .load()
            .values()
            .filter_map(|seen| seen.info.keysets.get(&zone))
            .flat_map(|state| state.missing.iter().copied())
            .collect()
    }

    /// Whether this instance starts automatic rollovers: the live instance (probe agents,
    /// which serve no DNS, aside) with the lowest id, as seen while connected to the
    /// store. Cut off from it, no instance rolls (a rollover can wait; two instances
    /// rolling apart cannot be undone).
    fn is_roller(&self) -> bool {
        if !self.is_connected() {
            return false;
        }
        let instances = self.0.instances.load();
        instances
            .iter()
            .filter(|(_, seen)| !seen.info.listen.is_empty())
            .map(|(id, _)| id)
            .next()
            .is_some_and(|first| *first == self.0.instance)
    }

    fn stored_keyset(&self, key: &str) -> Option<(KeysetValue, i64)> {
        self.0
            .keysets
            .lock()
            .ok()
            .and_then(|k| k.stored.get(key).cloned())
    }

    fn synced_keyset(&self, key: &str) -> Option<Vec<SharedKey>> {
        self.0
            .keysets
            .lock()
            .ok()
            .and_then(|k| k.synced.get(key).cloned())
    }

    fn invalid_revision(&self, key: &str) -> i64 {
        self.0
            .keysets
            .lock()
            .ok()
            .and_then(|k| k.invalid.get(key).copied())
            .unwrap_or(0)
    }

    fn set_synced(&self, key: &str, keys: Vec<SharedKey>) {
        if let Ok(mut k) = self.0.keysets.lock() {
            k.synced.insert(key.to_string(), keys);
        }
    }

    /// Every stored timeline, read at once (a resync): the ones not there are gone.
    pub(super) fn replace_keysets(&self, entries: &[&super::Entry]) {
        if let Ok(mut k) = self.0.keysets.lock() {
            k.stored.clear();
            k.invalid.clear();
        }
        for entry in entries {
            self.apply_keyset(&entry.key, Some((&entry.value, entry.revision)));
        }
        self.0.keysets_changed.notify_one();
    }

    /// A stored timeline changed (`value` None: deleted); invalid ones count for nothing.
    pub(super) fn apply_keyset(&self, key: &str, value: Option<(&[u8], i64)>) {
        let parsed = match value {
            None => None,
            Some((bytes, revision)) => match valid_keyset(bytes) {
                Ok(v) => Some((v, revision)),
                Err(why) => {
                    self.ignore(key, "invalid", &format!("not a key timeline: {why}"));
                    if let Ok(mut k) = self.0.keysets.lock() {
                        k.stored.remove(key);
                        k.invalid.insert(key.to_string(), revision);
                    }
                    self.0.keysets_changed.notify_one();
                    return;
                }
            },
        };
        if let Ok(mut k) = self.0.keysets.lock() {
            k.invalid.remove(key);
            match parsed {
                Some(v) => k.stored.insert(key.to_string(), v),
                None => k.stored.remove(key),
            };
        }
        self.0.keysets_changed.notify_one();
    }
}

/// The stored timelines as this instance knows them, and what it last agreed on.
#[derive(Debug, Default)]
pub(super) struct Keysets {
    /// By etcd key: the value and the revision that wrote it.
    stored: BTreeMap<String, (KeysetValue, i64)>,
    /// By etcd key: the keys both sides last agreed on.
    synced: BTreeMap<String, Vec<SharedKey>>,
    /// By etcd key: the revision of a value there that is not a valid timeline.
    invalid: BTreeMap<String, i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tag: u16, public: &str, timeline: Timeline) -> SharedKey {
        SharedKey {
            tag,
            role: Role::Csk,
            algorithm: KeyAlgorithm::EcdsaP256,
            public: public.into(),
            timeline,
        }
    }

    #[test]
    fn the_side_that_changed_wins() {
        let old = key(1, "a", Timeline::from(100));
        let rolled = key(
            1,
            "a",
            Timeline {
                retire: Some(500),
                ..Timeline::from(100)
            },
        );
        let new = key(
            2,
            "b",
            Timeline {
                active: 500,
                ..Timeline::from(200)
            },
        );
        let before = vec![old.clone()];
        let after = vec![rolled.clone(), new.clone()];
        // Nothing stored: share. The same: agree.
        assert_eq!(decide(&before, None, None, false, 200), Step::Share);
        assert_eq!(
            decide(&before, Some(&before), None, false, 200),
            Step::Agree
        );
        // Rolled here since the last agreement: share.
        assert_eq!(
            decide(&after, Some(&before), Some(&before), false, 200),
            Step::Share
        );
        // Rolled elsewhere, the new key's files here: follow.
        let local = vec![old.clone(), key(2, "b", Timeline::from(200))];
        let Step::Follow(wanted) = decide(&local, Some(&after), Some(&before), false, 200) else {
            panic!("follows");
        };
        assert_eq!(wanted[&1], rolled.timeline);
        assert_eq!(wanted[&2], new.timeline);
        // Rolled elsewhere, the new key not here: a mismatch.
        assert_eq!(
            decide(&before, Some(&after), Some(&before), false, 200),
            Step::Missing(vec![2])
        );
        // Same tag, another public key: missing too.
        let forged = vec![key(1, "z", Timeline::from(100))];
        assert_eq!(
            decide(&before, Some(&forged), Some(&before), false, 200),
            Step::Missing(vec![1])
        );
        // Just started: the fleet wins unless a state file is newer than what it stores.
        assert!(matches!(
            decide(&local, Some(&after), None, false, 200),
            Step::Follow(_)
        ));
        assert_eq!(decide(&after, Some(&before), None, true, 200), Step::Share);
        // Both changed since they agreed: the fleet wins.
        assert!(matches!(
            decide(&local, Some(&after), Some(&before), false, 200),
            Step::Follow(_)
        ));
        // Just started, and a local key the fleet does not name: it leaves now.
        let Step::Follow(wanted) = decide(&local, Some(&before), None, false, 300) else {
            panic!("follows");
        };
        assert_eq!(wanted[&2].remove, Some(300));
    }

    #[test]
    fn an_activation_a_member_lacks_is_held_back() {
        let old = key(
            1,
            "a",
            Timeline {
                retire: Some(1000),
                ..Timeline::from(100)
            },
        );
        let new = key(
            2,
            "b",
            Timeline {
                active: 1000,
                ..Timeline::from(600)
            },
        );
        let fleet = vec![old, new];
        let lacking = BTreeSet::from([2]);
        assert_eq!(hold_back(&fleet, &lacking, 500, 360), None, "not yet near");
        assert_eq!(hold_back(&fleet, &BTreeSet::new(), 650, 360), None);
        assert_eq!(
            hold_back(&fleet, &lacking, 1000, 360),
            None,
            "signs already"
        );
        // Published, not signing: out again for two leads, then a publish interval.
        let (keys, held) = hold_back(&fleet, &lacking, 650, 360).unwrap();
        assert_eq!(held, vec![2]);
        assert_eq!(keys[1].timeline.publish, 770);
        assert_eq!(keys[1].timeline.active, 1130);
        assert_eq!(keys[0].timeline.retire, Some(1130));
        assert_eq!(
            keys[0].timeline.remove, None,
            "an entry point waits for the parent"
        );
    }

    #[test]
    fn a_stored_timeline_must_hold_together() {
        for garbage in [
            &b"not json"[..],
            br#"{"keys":[{"tag":1,"role":"csk","algorithm":"ECDSAP256SHA256","public":"AAAA","created":0,"publish":0,"active":0}],"at":0,"by":"x"}"#,
        ] {
            assert!(valid_keyset(garbage).is_err());
        }
    }
}
