//! The parent's side of a KSK or CSK rollover ([`Resigner::check_parent`]): while a
//! retired entry point waits for the parent's DS of its successor, gto asks the parent's
//! servers itself every `dnssec.parent_check`, and once every one of them serves the new
//! DS, schedules the old key's removal (as `gto dnssec ds-seen` does by hand) and signs
//! again. Each zone's wait and its end are events (`dnssec`) and counted
//! (`gto_dnssec_parent_checks_total`).

use std::sync::Arc;

use hickory_proto::rr::Name;

use crate::config::ParentServers;
use crate::dnssec::keys::{self, Key};
use crate::dnssec::{now, parent};
use crate::loaded::Loaded;
use crate::routing::resign::{Resigner, timings};

/// What one zone's check found.
#[derive(Debug)]
pub struct ParentCheck {
    /// The zone.
    pub zone: Name,
    /// The retired keys that wait (their tags).
    pub waiting: Vec<u16>,
    /// What the parent's servers said, or why they could not be asked.
    pub verdict: Result<parent::Verdict, parent::ParentError>,
    /// Keys scheduled for removal because the parent serves the new DS (empty otherwise).
    pub scheduled: Vec<Arc<Key>>,
}

impl ParentCheck {
    /// The parent serves the new DS at every server.
    pub fn seen(&self) -> bool {
        self.verdict.as_ref().is_ok_and(parent::Verdict::seen)
    }
}

/// The zones (by index in the config) with keys waiting for the parent at `now` and a
/// parent gto may ask, with the servers to ask (None: resolve them).
fn waiting_zones(loaded: &Loaded, now: u64) -> Vec<(usize, Option<Vec<std::net::SocketAddr>>)> {
    loaded
        .config
        .zones
        .iter()
        .enumerate()
        .filter_map(|(index, spec)| {
            let dnssec = spec.dnssec.as_ref()?;
            let ring = loaded.keys.get(index)?.as_ref()?;
            if !ring.keys.iter().any(|k| k.waits_for_parent(now)) {
                return None;
            }
            match &dnssec.parent {
                ParentServers::Manual => None,
                ParentServers::Resolve => Some((index, None)),
                ParentServers::Servers(list) => Some((index, Some(list.clone()))),
            }
        })
        .collect()
}

impl Resigner {
    /// Asks the parent of every zone whose rollover waits for it (`dnssec.parent` not
    /// `"manual"`); where every server serves the new DS, schedules the old keys' removal
    /// and has the builder sign again. Returns what each zone's check found.
    pub async fn check_parent(&self) -> Vec<ParentCheck> {
        let loaded = self.configs.borrow().clone();
        let now = now();
        let mut checks = Vec::new();
        for (index, servers) in waiting_zones(&loaded, now) {
            let (Some(spec), Some(Some(ring))) =
                (loaded.config.zones.get(index), loaded.keys.get(index))
            else {
                continue;
            };
            let zone = spec.origin.clone();
            let waiting: Vec<u16> = ring
                .keys
                .iter()
                .filter(|k| k.waits_for_parent(now))
                .map(|k| k.tag)
                .collect();
            let new: Vec<_> = ring
                .parent_keys(now)
                .iter()
                .map(|k| k.dnskey.clone())
                .collect();
            let verdict = parent::check(&zone, &new, servers.as_deref()).await;
            let result = match &verdict {
                Ok(v) if v.seen() => "seen",
                Ok(_) => "not_seen",
                Err(_) => "error",
            };
            metrics::counter!(crate::metrics::DNSSEC_PARENT_CHECKS_TOTAL, "zone" => zone.to_string(), "result" => result)
                .increment(1);
            let mut check = ParentCheck {
                zone,
                waiting,
                verdict,
                scheduled: Vec::new(),
            };
            if check.seen() {
                check.scheduled = self.parent_seen(&loaded, index, now).await;
            } else {
                self.report_waiting(&check);
            }
            checks.push(check);
        }
        if checks.iter().any(|c| !c.scheduled.is_empty()) {
            self.resign(false).await;
        }
        checks
    }

    /// Schedules the removal of the zone's keys waiting for the parent (their state files,
    /// on a blocking thread), logs it and reports it as an event.
    async fn parent_seen(&self, loaded: &Arc<Loaded>, index: usize, now: u64) -> Vec<Arc<Key>> {
        let loaded = loaded.clone();
        let written = tokio::task::spawn_blocking(move || {
            let spec = loaded.config.zones.get(index)?;
            let ring = loaded.keys.get(index)?.as_ref()?;
            let timings = timings(&loaded, index)?;
            Some((
                spec.origin.clone(),
                keys::parent_seen(ring, &spec.origin, now, timings),
            ))
        })
        .await;
        let Ok(Some((zone, written))) = written else {
            return Vec::new();
        };
        match written {
            Ok(scheduled) => {
                for key in &scheduled {
                    let remove = key.timeline.remove.map(crate::time::rfc3339_unix);
                    tracing::info!(
                        %zone,
                        key = key.tag,
                        remove = remove.as_deref().unwrap_or("-"),
                        "every server of the parent serves the new DS: the old key leaves the DNSKEY RRset then"
                    );
                    self.report(serde_json::json!({
                        "zone": zone.to_string(),
                        "change": "ds-seen",
                        "key": key.tag,
                        "removed_at": remove,
                    }));
                }
                scheduled
            }
            Err(error) => {
                tracing::warn!(%zone, %error, "the parent serves the new DS, but the key state could not be written");
                Vec::new()
            }
        }
    }

    /// A zone waits for the parent: the log says what each server said, and the event bus
    /// hears it once per waiting key.
    fn report_waiting(&self, check: &ParentCheck) {
        let said = match &check.verdict {
            Ok(verdict) => verdict.describe(),
            Err(error) => error.to_string(),
        };
        tracing::info!(zone = %check.zone, keys = ?check.waiting, parent = %said, "waiting for the new DS at the parent");
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        for tag in &check.waiting {
            if announced.insert((check.zone.clone(), *tag)) {
                self.report(serde_json::json!({
                    "zone": check.zone.to_string(),
                    "change": "waiting-for-ds",
                    "key": tag,
                    "parent": said,
                }));
            }
        }
    }
}
