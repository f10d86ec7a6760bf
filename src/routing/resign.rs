//! Key maintenance and re-signing in the background ([`Resigner`]): the live snapshot's
//! signatures near expiry, a key event come, or a key directory changed make it read the
//! keys again and start the rollovers whose lifetime is up (on blocking threads), then ask
//! the builder for a new preparation with what it read.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::rr::Name;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::dnssec::keys::{self, Key, Timings};
use crate::dnssec::{REFRESH, now};
use crate::events::Events;
use crate::loaded::Loaded;
use crate::routing::{BuildEvent, Change, Rekeyed, RoutingHandle, Snapshot};

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
                "waiting_for_parent": signing.waiting_for_parent,
                "signed_at_preparation": signing.signed,
                "reused_at_preparation": signing.reused,
                "signed_on_first_use": signing.signs_on_first_use(),
                "cached_sets": signing.cache.len() + signing.gslb_cache.len(),
            })
        })
        .collect()
}

/// How often [`Resigner::maintain`] looks at the signatures' expiry and the keys' timelines.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Whether a snapshot's signatures need re-signing at `now`: the earliest expiry is within
/// [`REFRESH`], or a key event (publish, activate, retire, remove, rollover) has come.
/// Exports `gto_dnssec_signature_expiry_seconds` (and its `_timestamp_seconds`) per signed zone and warns when re-signing
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
        metrics::gauge!(crate::metrics::DNSSEC_SIGNATURE_EXPIRY_TIMESTAMP_SECONDS, "zone" => signing.origin.to_string())
            .set(f64::from(signing.window.expiration));
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
            let changed = crate::files::changed_at(dir);
            if changed != *seen && asked.get(dir) != Some(&changed) {
                tracing::info!(zone = %signing.origin, dir = %dir.display(), "the key directory changed; reading it again");
                asked.insert(dir.clone(), changed);
                due.reread = true;
            }
        }
    }
    due
}

/// What re-signs a running server: the live snapshot, the builder's queue and the config
/// the builder serves. Key files are read and written here, on blocking threads, never on
/// the builder's task: the builder gets a finished [`Rekeyed`].
#[derive(Debug, Clone)]
pub struct Resigner {
    routing: RoutingHandle,
    events: mpsc::Sender<BuildEvent>,
    pub(super) configs: watch::Receiver<Arc<Loaded>>,
    /// Where key events go (`dnssec`), once [`Resigner::report_to`] is called.
    bus: Option<Events>,
    /// (zone, key) whose wait for the parent was reported as an event.
    pub(super) announced: Arc<Mutex<HashSet<(Name, u16)>>>,
    /// Whether this instance starts the rollovers whose lifetime is up (in a fleet, one
    /// instance does: [`Resigner::set_rolls`]).
    rolls: Arc<AtomicBool>,
}

impl Resigner {
    /// A resigner for the builder behind `events` ([`crate::routing::Builder::configs`]
    /// gives `configs`).
    pub fn new(
        routing: RoutingHandle,
        events: mpsc::Sender<BuildEvent>,
        configs: watch::Receiver<Arc<Loaded>>,
    ) -> Self {
        Self {
            routing,
            events,
            configs,
            bus: None,
            announced: Arc::default(),
            rolls: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The config the builder serves, as it changes.
    pub fn configs(&self) -> watch::Receiver<Arc<Loaded>> {
        self.configs.clone()
    }

    /// Whether this instance starts the rollovers whose lifetime is up (true unless a
    /// fleet says another instance does).
    pub fn set_rolls(&self, rolls: bool) {
        self.rolls.store(rolls, Ordering::Relaxed);
    }

    /// Reports key events (waiting for the parent's DS, the DS seen) on `bus`.
    pub fn report_to(&mut self, bus: Events) {
        self.bus = Some(bus);
    }

    /// A `dnssec` event, when there is a bus.
    pub(super) fn report(&self, data: serde_json::Value) {
        if let Some(bus) = &self.bus {
            bus.emit("dnssec", data);
        }
    }

    /// Reads the key directories again and starts the rollovers whose lifetime is up (on a
    /// blocking thread), then has the builder sign again if `due` or the keys changed.
    /// Returns the generation live afterwards; None when the builder has stopped.
    pub async fn resign(&self, due: bool) -> Option<u64> {
        let base = self.configs.borrow().clone();
        let rolls = self.rolls.load(Ordering::Relaxed);
        let rekeyed = tokio::task::spawn_blocking(move || rekey(base, rolls))
            .await
            .ok()?;
        let (event, published) = BuildEvent::waited(Change::Resign {
            due,
            rekeyed: Some(rekeyed),
        });
        self.events.send(event).await.ok()?;
        published.await.ok()
    }

    /// Re-signs in the background: every [`CHECK_EVERY`], [`check`]s the live snapshot
    /// and re-signs when it is due, or reads a key directory that changed (once per
    /// change: a file it cannot use is not read again every tick). Ends with `token`.
    pub async fn maintain(self, token: CancellationToken) {
        /// Checks between two warnings about re-signing that is behind (10 minutes).
        const WARN_EVERY: u64 = 300;
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut count = 0u64;
        let mut asked = HashMap::new();
        let mut next_parent_check: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let snapshot = self.routing.load_full();
            let warn = count.is_multiple_of(WARN_EVERY);
            count += 1;
            let due = check_and_warn(&snapshot, now(), warn, &mut asked);
            drop(snapshot);
            let every = waiting_for_parent(&self.configs.borrow(), now(), warn);
            match every {
                None => next_parent_check = None,
                Some(every) => {
                    let at = tokio::time::Instant::now();
                    if next_parent_check.is_none_or(|next| at >= next) {
                        next_parent_check = Some(at + every);
                        self.check_parent().await;
                    }
                }
            }
            // One re-signing at a time.
            if (due.resign || due.reread) && self.resign(due.resign).await.is_none() {
                return;
            }
        }
    }
}

/// Exports, per signed zone, how many retired KSKs or CSKs wait for the parent's DS of
/// their successor, and (when `warn`) says so in the log once the wait is longer than the
/// parent's DS TTL and the propagation margin: someone has to update the parent. Returns
/// how often to ask the parents (the shortest `parent_check` of the zones that wait and
/// may be asked), None when none does.
fn waiting_for_parent(loaded: &Loaded, now: u64, warn: bool) -> Option<Duration> {
    let mut every: Option<Duration> = None;
    for (index, spec) in loaded.config.zones.iter().enumerate() {
        let (Some(dnssec), Some(Some(ring))) = (&spec.dnssec, loaded.keys.get(index)) else {
            continue;
        };
        let waiting: Vec<&Arc<Key>> = ring
            .keys
            .iter()
            .filter(|k| k.waits_for_parent(now))
            .collect();
        metrics::gauge!(crate::metrics::DNSSEC_WAITING_FOR_PARENT, "zone" => spec.origin.to_string())
            .set(waiting.len() as f64);
        if !waiting.is_empty() && dnssec.parent != crate::config::ParentServers::Manual {
            every = Some(every.map_or(dnssec.parent_check, |e| e.min(dnssec.parent_check)));
        }
        let long = u64::from(dnssec.parent_ds_ttl) + dnssec.propagation.as_secs();
        for key in waiting {
            let since = key.timeline.retire.unwrap_or(now);
            if warn && now.saturating_sub(since) > long {
                tracing::warn!(
                    zone = %spec.origin,
                    key = key.tag,
                    waiting_seconds = now - since,
                    "a rollover is waiting for the DS of the new key at the parent: update the \
                     parent (gto asks it every dnssec.parent_check unless parent = \"manual\"; \
                     else run `gto dnssec ds-seen`); the old key stays until then"
                );
            }
        }
    }
    every
}

/// `base` with its key directories read again and, when `rolls`, the rollovers whose
/// lifetime is up started (file I/O: run it off the async threads).
pub fn rekey(base: Arc<Loaded>, rolls: bool) -> Rekeyed {
    let mut fresh = (*base).clone();
    let mut keys_changed = fresh.reread_keys();
    if rolls && roll_due(&fresh) > 0 {
        keys_changed |= fresh.reread_keys();
    }
    Rekeyed {
        base,
        fresh: Arc::new(fresh),
        keys_changed,
    }
}

/// Rollover timings of the zone at `index` of a loaded config: its DNSKEY TTL, the
/// largest TTL it serves (static, GSLB and negative), the parent's DS TTL and the margin.
pub fn timings(loaded: &Loaded, index: usize) -> Option<Timings> {
    let spec = loaded.config.zones.get(index)?;
    let dnssec = spec.dnssec.as_ref()?;
    let zone = loaded.zones.get(index)?;
    let origin = zone.origin();
    let static_max = zone
        .rrsets()
        .flat_map(|(_, sets)| sets.iter().map(crate::zone::RrSet::ttl))
        .chain([zone.soa().ttl, zone.negative_ttl()])
        .max()
        .unwrap_or(0);
    let gslb_max = loaded
        .config
        .services
        .iter()
        .filter(|s| origin.zone_of(&s.name.clone().into()))
        .map(|s| s.ttl.get())
        .max()
        .unwrap_or(0);
    Some(Timings {
        dnskey_ttl: dnssec.dnskey_ttl,
        max_ttl: static_max.max(gslb_max),
        parent_ds_ttl: dnssec.parent_ds_ttl,
        propagation: u32::try_from(dnssec.propagation.as_secs()).unwrap_or(u32::MAX),
    })
}

/// Rolls every signing key whose `lifetime` is up (zones with a lifetime only); returns
/// how many rollovers started. Errors are logged.
pub fn roll_due(loaded: &Loaded) -> usize {
    let now = now();
    let mut started = 0;
    for (index, spec) in loaded.config.zones.iter().enumerate() {
        let Some(dnssec) = &spec.dnssec else {
            continue;
        };
        let (Some(lifetime), Some(Some(ring)), Some(timings)) = (
            dnssec.lifetime,
            loaded.keys.get(index),
            timings(loaded, index),
        ) else {
            continue;
        };
        let due: Vec<&Arc<Key>> = ring
            .keys
            .iter()
            .filter(|k| k.role.signs_zone() && keys::due(k, now, lifetime))
            // One entry-point rollover at a time: not while one waits for the parent.
            .filter(|k| {
                !k.role.is_entry_point() || !ring.keys.iter().any(|o| o.waits_for_parent(now))
            })
            .collect();
        for old in due {
            match keys::roll(&dnssec.keys, &spec.origin, old, now, timings) {
                Ok(new) => {
                    started += 1;
                    tracing::info!(
                        zone = %spec.origin,
                        "{}",
                        describe_roll(&spec.origin, old, &new, &timings).trim_end()
                    );
                }
                Err(error) => {
                    tracing::warn!(zone = %spec.origin, %error, "could not start a key rollover");
                }
            }
        }
    }
    started
}

/// What a rollover started, for the log and `gto dnssec rollover`: the old key, the new
/// one, and when the new one signs and the old one goes.
pub fn describe_roll(zone: &Name, old: &Key, new: &Key, timings: &Timings) -> String {
    format!(
        "zone {zone}: {} rollover: key {} published now, signs from {}; key {} stops \
         signing then and is removed at {} (publish interval {} s, retire interval {} s)\n",
        old.role.as_str().to_uppercase(),
        new.tag,
        crate::time::rfc3339_unix(new.timeline.active),
        old.tag,
        crate::time::rfc3339_unix(new.timeline.active + timings.retire_interval(old.role)),
        timings.publish_interval(),
        timings.retire_interval(old.role),
    )
}
