//! What operators and load reports change: drains (with their end), load reports and the load view ranking sees, and the sweep that moves both on with time.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{info, warn};

use super::{Monitor, Published, Sent, Tracked};
use crate::health::status::{Drain, DrainNote, EndpointStatus, Load, Planned, StateError, Window};
use crate::metrics::DRAINS_TOTAL;
use crate::routing::{BuildEvent, Change, EndpointKey};

impl Monitor {
    /// Drains (`Some(until)`) or undrains (`None`) an endpoint and publishes the change.
    pub(super) async fn set_drain(
        &mut self,
        key: &EndpointKey,
        drain: Option<(Option<SystemTime>, DrainNote)>,
        why: &'static str,
    ) -> Result<(EndpointStatus, Published), StateError> {
        let planned = drain.map(|(until, note)| Planned {
            from: None,
            until,
            note,
        });
        let (mut statuses, published) = self
            .set_drains(std::slice::from_ref(key), planned, why)
            .await?;
        let status = statuses
            .pop()
            .ok_or_else(|| StateError::NotFound(key.pool.clone(), key.member.clone()))?;
        Ok((status, published))
    }

    /// Drains (`Some`) or undrains (`None`) endpoints together: one snapshot rebuild and
    /// one state file write for all. A drain whose `from` is later is a maintenance window,
    /// begun by [`Monitor::sweep_drains`] at its time; an undrain also cancels a window.
    /// Nothing changes when one of `keys` is not an endpoint of the config.
    pub(super) async fn set_drains(
        &mut self,
        keys: &[EndpointKey],
        drain: Option<Planned>,
        why: &'static str,
    ) -> Result<(Vec<EndpointStatus>, Published), StateError> {
        if let Some(key) = keys.iter().find(|key| !self.members.contains_key(key)) {
            return Err(StateError::NotFound(key.pool.clone(), key.member.clone()));
        }
        let now = SystemTime::now();
        let scheduled = drain
            .as_ref()
            .and_then(|d| d.from)
            .is_some_and(|from| from > now);
        let mut changed = Vec::new();
        for key in keys {
            let Some(tracked) = self.members.get_mut(key) else {
                continue;
            };
            let before = (
                tracked.drain.map(|d| d.until),
                tracked.window.clone(),
                tracked.drain_note.clone(),
            );
            let action = match &drain {
                None => {
                    // A drain that ends leaves a window set for later in place.
                    if why != "expired" {
                        tracked.window = None;
                    }
                    "undrain"
                }
                Some(planned) if scheduled => {
                    tracked.window = Some(Window {
                        from: planned.from.unwrap_or(now),
                        until: planned.until,
                        note: planned.note.clone(),
                    });
                    "scheduled"
                }
                Some(_) => {
                    tracked.window = None;
                    "drain"
                }
            };
            if action != "scheduled" {
                let was = tracked.drain.is_some();
                tracked.drain = drain.as_ref().map(|planned| Drain {
                    since: tracked.drain.map_or(now, |d| d.since),
                    until: planned.until,
                });
                tracked.drain_note = drain
                    .as_ref()
                    .map(|planned| planned.note.clone())
                    .unwrap_or_default();
                if was != drain.is_some() {
                    changed.push((key.clone(), drain.is_some()));
                }
            }
            let after = (
                tracked.drain.map(|d| d.until),
                tracked.window.clone(),
                tracked.drain_note.clone(),
            );
            if before == after && why == "fleet" {
                // Nothing new: the fleet telling what this instance did already. (An
                // operator's request is logged and sent as an event even when it changes
                // nothing.)
                continue;
            }
            let until = drain.as_ref().and_then(|d| d.until);
            let from = drain.as_ref().and_then(|d| d.from).filter(|_| scheduled);
            info!(
                pool = %key.pool,
                member = %key.member,
                action,
                from = from.map(crate::time::rfc3339),
                until = until.map(crate::time::rfc3339),
                "endpoint {}",
                match action {
                    "drain" => "drained",
                    "undrain" => "undrained",
                    _ => "drain scheduled",
                }
            );
            metrics::counter!(DRAINS_TOTAL, "action" => action).increment(1);
            if let Some(bus) = &self.bus {
                let note = drain.as_ref().map(|d| d.note.clone()).unwrap_or_default();
                bus.emit(
                    "drain",
                    serde_json::json!({
                        "pool": key.pool,
                        "member": key.member,
                        "action": action,
                        "from": from.map(crate::time::rfc3339),
                        "until": until.map(crate::time::rfc3339),
                        "why": why,
                        "by": note.by,
                        "reason": note.reason,
                    }),
                );
            }
        }
        let mut published = None;
        if !changed.is_empty() {
            let (event, receiver) = BuildEvent::waited(Change::SetDrainedMany(changed));
            if self.to_builder(event).await == Sent::Yes {
                published = Some(receiver);
            }
        }
        self.persist().await;
        let statuses = keys
            .iter()
            .map(|key| {
                self.status_of(key)
                    .ok_or_else(|| StateError::NotFound(key.pool.clone(), key.member.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((statuses, published))
    }

    /// Ends drains whose time is up and begins maintenance windows whose time has come
    /// (those with the same end and note together: a site's window is one rebuild).
    pub(super) async fn sweep_drains(&mut self) {
        let wall = SystemTime::now();
        // Every second, over every endpoint: a pass without lookups finds whether anything
        // is due before the pass in config order (which looks each endpoint up) runs.
        let due = |t: &Tracked| t.drain_over(wall) || t.window_begun(wall).is_some();
        if !self.members.values().any(due) {
            return;
        }
        let expired: Vec<EndpointKey> = self
            .order
            .iter()
            .filter(|key| self.members.get(key).is_some_and(|t| t.drain_over(wall)))
            .cloned()
            .collect();
        if !expired.is_empty() {
            let _ = self.set_drains(&expired, None, "expired").await;
        }
        let mut due: Vec<(Window, Vec<EndpointKey>)> = Vec::new();
        for key in &self.order {
            let Some(window) = self.members.get(key).and_then(|t| t.window_begun(wall)) else {
                continue;
            };
            let window = window.clone();
            match due
                .iter_mut()
                .find(|(w, _)| w.until == window.until && w.note == window.note)
            {
                Some((_, keys)) => keys.push(key.clone()),
                None => due.push((window, vec![key.clone()])),
            }
        }
        for (window, keys) in due {
            // A window that ended before it could begin (gto was stopped) only goes.
            let planned = window.until.is_none_or(|u| u > wall).then(|| Planned {
                from: None,
                until: window.until,
                note: window.note.clone(),
            });
            let _ = self.set_drains(&keys, planned, "window").await;
        }
    }

    /// The next time a drain ends or a window begins (wall clock), if any.
    pub(super) fn next_drain_deadline(&self) -> Option<SystemTime> {
        self.members
            .values()
            .flat_map(|t| {
                [
                    t.drain.and_then(|d| d.until),
                    t.window.as_ref().map(|w| w.from),
                ]
            })
            .flatten()
            .min()
    }

    pub(super) async fn set_load(
        &mut self,
        key: &EndpointKey,
        sessions: u32,
        capacity: Option<u32>,
        at: Option<SystemTime>,
    ) -> Result<(EndpointStatus, Published), StateError> {
        let tracked = self
            .members
            .get_mut(key)
            .ok_or_else(|| StateError::NotFound(key.pool.clone(), key.member.clone()))?;
        if capacity == Some(0) {
            return Err(StateError::ZeroCapacity(
                key.pool.clone(),
                key.member.clone(),
            ));
        }
        let capacity = capacity
            .or(tracked.capacity)
            .filter(|c| *c > 0)
            .ok_or_else(|| StateError::NoCapacity(key.pool.clone(), key.member.clone()))?;
        let wall = SystemTime::now();
        let at = at.unwrap_or(wall).min(wall);
        let load = Load {
            sessions,
            capacity,
            at,
        };
        // A report made elsewhere is as old here as it is.
        let age = wall.duration_since(at).unwrap_or_default();
        let observed = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        tracked.load = Some(load);
        tracked.tracker.observe(load.ratio(), observed);
        let published = self.push_load(key, true).await;
        self.persist().await;
        self.status_of(key)
            .map(|status| (status, published))
            .ok_or_else(|| StateError::NotFound(key.pool.clone(), key.member.clone()))
    }

    /// Tells the builder when an endpoint's load, as ranking sees it, changed; with `wait`,
    /// returns the receiver told once the snapshot reflecting it is live (the push API's
    /// caller waits on it, so it sees the effect at once; probe reports do not wait, so a
    /// burst costs one rebuild).
    pub(super) async fn push_load(&mut self, key: &EndpointKey, wait: bool) -> Published {
        let tracked = self.members.get_mut(key)?;
        let view = tracked.tracker.view(Instant::now());
        if view == tracked.sent {
            return None;
        }
        if view.overloaded != tracked.sent.overloaded {
            info!(
                pool = %key.pool,
                member = %key.member,
                load = tracked.tracker.smoothed(),
                overloaded = view.overloaded,
                "endpoint load watermark crossed"
            );
            if let Some(bus) = &self.bus {
                bus.emit(
                    "watermark",
                    serde_json::json!({
                        "pool": key.pool,
                        "member": key.member,
                        "overloaded": view.overloaded,
                        "load": tracked.tracker.smoothed(),
                    }),
                );
            }
        }
        tracked.sent = view;
        let (mut event, published) = BuildEvent::waited(Change::SetLoad {
            key: key.clone(),
            view,
        });
        if !wait {
            event.done = None;
        }
        (self.to_builder(event).await == Sent::Yes && wait).then_some(published)
    }

    /// Marks endpoints whose probes stopped reporting, ends drains whose time is up, and
    /// moves load views on with time (staleness, slow-start ramps).
    pub(super) async fn sweep(&mut self) {
        let now = Instant::now();
        if self.rum.expire(now, self.latency.rum_max_age) {
            self.send_rum().await;
        }
        if self.grace_until.is_some_and(|until| now >= until) {
            self.grace_until = None;
            tracing::warn!(
                grace_seconds = super::START_GRACE.as_secs(),
                "the fleet's votes did not arrive within the start-up grace: this instance's \
                 own verdicts decide until they do"
            );
            self.reconsider_all("start-up grace over without the fleet's votes")
                .await;
        }
        let moved: Vec<EndpointKey> = self
            .members
            .iter()
            .filter(|(_, t)| t.tracker.view(now) != t.sent)
            .map(|(k, _)| k.clone())
            .collect();
        for key in moved {
            self.push_load(&key, false).await;
        }
        self.sweep_drains().await;
        let now = self.millis_since_epoch();
        let mut stale_keys = Vec::new();
        for (target_key, target) in &self.targets {
            let silent_for =
                Duration::from_millis(now.saturating_sub(target.heartbeat.load(Ordering::Relaxed)));
            let allowed = target_key.interval * 2 + target_key.timeout + Duration::from_secs(1);
            if silent_for <= allowed {
                continue;
            }
            for (key, _) in &target.members {
                let Some(tracked) = self.members.get_mut(key) else {
                    continue;
                };
                if tracked.stale {
                    continue;
                }
                tracked.stale = true;
                stale_keys.push(key.clone());
                warn!(
                    pool = %key.pool,
                    member = %key.member,
                    state = tracked.local().as_str(),
                    silent_for_seconds = silent_for.as_secs_f64(),
                    "health checks stopped reporting; endpoint is stale"
                );
            }
        }
        // A voter whose probes stopped says so: its verdict stops counting elsewhere.
        for key in stale_keys {
            self.publish_verdict(&key);
        }
    }
}
