//! From probe reports to flips: rise/fall per target, this instance's verdicts and the fleet's votes, and each flip handed to the builder before anyone is told.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::time::Instant;
use tracing::{info, warn};

use super::{Monitor, Sent, Tracked};
use crate::config::Probe;
use crate::health::probe::CertExpiry;
use crate::health::scheduler::Report;
use crate::health::state::Health;
use crate::health::status::{Flip, Load};
use crate::health::votes::{Vote, decide};
use crate::metrics::{HEALTH_FLIPS_TOTAL, MEMBER_VOTES};
use crate::routing::{BuildEvent, Change, EndpointKey};

impl Monitor {
    /// Folds a batch of probe reports into the endpoints, then publishes every flip in one
    /// go: the builder folds queued events into one rebuild, and the state file is written
    /// once (coalesced) for the whole batch.
    pub(super) async fn on_reports(&mut self, reports: Vec<Report>) {
        let mut local = Vec::new();
        let mut load_changed = Vec::new();
        for report in reports {
            self.observe(report, &mut local, &mut load_changed);
        }
        let mut flips = Vec::new();
        for (key, reason) in local {
            self.publish_verdict(&key);
            flips.extend(self.reconsider(&key, &reason));
        }
        load_changed.sort_by(|a: &EndpointKey, b| (&a.pool, &a.member).cmp(&(&b.pool, &b.member)));
        load_changed.dedup();
        for key in load_changed {
            if let Some(load) = self.members.get(&key).and_then(|t| t.load) {
                // Nobody listening (no fleet) is fine.
                let _ = self.loads.send((key.clone(), load));
            }
            self.push_load(&key, false).await;
        }
        self.publish_flips(flips).await;
    }

    /// Sends this instance's own verdict on `key` to the fleet (nobody listening without
    /// one).
    pub(super) fn publish_verdict(&self, key: &EndpointKey) {
        if self.voter.is_none() {
            return;
        }
        if let Some(vote) = self.members.get(key).and_then(|t| self.vote_of(t)) {
            let _ = self.verdicts.send((key.clone(), vote));
        }
    }

    /// This instance's verdict on an endpoint it probes, as published.
    pub(super) fn vote_of(&self, t: &Tracked) -> Option<Vote> {
        if t.check.probe == Probe::None || t.last_check.is_none() {
            return None;
        }
        let up = t.hysteresis.state() == Health::Up;
        Some(Vote {
            up,
            since: crate::time::unix(t.since),
            error: if up { None } else { t.last_error.clone() },
            rtt_ms: t
                .rtt
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            region: self.voter.as_ref().and_then(|v| v.region.clone()),
            stale: t.stale,
            at: crate::health::votes::now_unix(),
        })
    }

    /// Decides `key`'s health again from its own verdict and the fleet's; the flip, when it
    /// changed. `reason` is what changed (a probe result, or the votes).
    pub(super) fn reconsider(&mut self, key: &EndpointKey, reason: &str) -> Option<Flip> {
        let (voter, voting) = (self.voter.as_ref(), self.voting);
        let in_grace = self.grace_until.is_some();
        let t = self.members.get_mut(key)?;
        let decision = decide(t.hysteresis.state(), voter, voting, &t.votes, &t.rule);
        t.tally = decision.tally;
        // Starting in a fleet, before its votes: what was known at start stands.
        if in_grace {
            return None;
        }
        if voter.is_some() {
            let down = decision.tally.map_or(0, |(_, down)| down);
            let voters = decision.tally.map_or(1, |(voters, _)| voters);
            metrics::gauge!(MEMBER_VOTES, "pool" => key.pool.clone(), "member" => key.member.clone(), "verdict" => "down").set(down as f64);
            metrics::gauge!(MEMBER_VOTES, "pool" => key.pool.clone(), "member" => key.member.clone(), "verdict" => "up").set((voters - down) as f64);
        }
        if decision.health == t.effective {
            return None;
        }
        let from = t.effective;
        t.effective = decision.health;
        t.effective_since = SystemTime::now();
        let reason = match decision.tally {
            Some(_) => format!("{reason}; quorum: {}", decision.describe(&t.rule)),
            None => reason.to_string(),
        };
        Some(Flip {
            key: key.clone(),
            from,
            to: decision.health,
            reason,
        })
    }

    /// Decides every endpoint again (the votes, the rules or the store's reachability
    /// changed) and publishes what flipped.
    pub(super) async fn reconsider_all(&mut self, reason: &str) {
        let keys = self.order.clone();
        let flips: Vec<Flip> = keys
            .iter()
            .filter_map(|key| self.reconsider(key, reason))
            .collect();
        self.publish_flips(flips).await;
    }

    /// Logs and counts flips, hands them to the builder, waits for the snapshot, persists
    /// and tells subscribers.
    pub(super) async fn publish_flips(&mut self, flips: Vec<Flip>) {
        if flips.is_empty() {
            return;
        }
        let last = flips.len() - 1;
        let mut published = None;
        for (i, flip) in flips.iter().enumerate() {
            // Going down is what an operator must see: WARN; coming back is INFO.
            macro_rules! log_flip {
                ($level:ident) => {
                    $level!(
                        pool = %flip.key.pool,
                        member = %flip.key.member,
                        old = flip.from.as_str(),
                        new = flip.to.as_str(),
                        reason = %flip.reason,
                        "endpoint health changed"
                    )
                };
            }
            if flip.to == Health::Down {
                log_flip!(warn);
            } else {
                log_flip!(info);
            }
            metrics::counter!(HEALTH_FLIPS_TOTAL, "to" => flip.to.as_str()).increment(1);
            if let Some(bus) = &self.bus {
                bus.emit(
                    "health",
                    serde_json::json!({
                        "pool": flip.key.pool,
                        "member": flip.key.member,
                        "from": flip.from.as_str(),
                        "to": flip.to.as_str(),
                        "reason": flip.reason,
                    }),
                );
            }
            let (mut event, receiver) = BuildEvent::waited(Change::SetMemberUp {
                key: flip.key.clone(),
                up: flip.to == Health::Up,
            });
            // Only the last one is waited for: the builder applies events in order.
            if i != last {
                event.done = None;
            }
            match self.to_builder(event).await {
                Sent::Stopped => return, // the builder stopped: shutting down
                Sent::Yes if i == last => published = Some(receiver),
                Sent::Yes | Sent::NoBuilder => {}
            }
        }
        if let Some(published) = published {
            // Wait for the snapshot, so a Flip subscriber sees answers that reflect it.
            let _ = published.await;
        }
        self.persist().await;
        for flip in flips {
            // No subscribers is fine.
            let _ = self.flips.send(flip);
        }
    }

    /// Applies one probe report to the endpoints of its target.
    pub(super) fn observe(
        &mut self,
        report: Report,
        flips: &mut Vec<(EndpointKey, String)>,
        load_changed: &mut Vec<EndpointKey>,
    ) {
        let Self {
            targets,
            by_id,
            members,
            checked,
            bus,
            ..
        } = self;
        let Some(target) = by_id.get(&report.target).and_then(|key| targets.get(key)) else {
            return; // a task that was just stopped
        };
        let outcome = match &report.result {
            Ok(()) => Some(true),
            Err(error) if error.is_local() => None,
            Err(_) => Some(false),
        };
        let reason = match &report.result {
            Ok(()) => "probe succeeded".to_string(),
            Err(error) => error.to_string(),
        };
        for key in &target.members {
            let Some(tracked) = members.get_mut(key) else {
                continue;
            };
            if tracked.stale {
                tracked.stale = false;
                // Fresh again: the fleet hears the verdict counts once more.
                flips.push((key.clone(), "probes report again".into()));
            }
            // A failure of our own (no descriptor, no buffer) says nothing about the
            // endpoint: its state stays, and the probe is counted as unknown.
            let Some(ok) = outcome else {
                continue;
            };
            if tracked.last_check.is_none() {
                checked.fetch_add(1, Ordering::Relaxed);
                // The first verdict of this instance: the fleet hears it.
                flips.push((key.clone(), reason.clone()));
            }
            tracked.last_check = Some(report.at);
            tracked.last_error = report.result.as_ref().err().map(ToString::to_string);
            if let Some(sample) = report.load {
                let capacity = sample
                    .capacity
                    .or(tracked.capacity.map(f64::from))
                    .filter(|c| *c > 0.0);
                if let Some(capacity) = capacity {
                    tracked
                        .tracker
                        .observe(sample.sessions / capacity, Instant::now());
                    tracked.load = Some(Load {
                        sessions: sample.sessions.min(f64::from(u32::MAX)) as u32,
                        capacity: capacity.min(f64::from(u32::MAX)) as u32,
                        at: report.at,
                    });
                    load_changed.push(key.clone());
                }
            }
            tracked.rtt = report.rtt;
            if let Some(cert) = report.cert {
                note_cert(key, tracked, cert, bus.as_ref());
            }
            if tracked.hysteresis.observe(ok).is_some() {
                tracked.since = report.at;
                flips.push((key.clone(), reason.clone()));
            }
        }
    }
}

/// Exports a probed certificate's expiry, and warns (log and a `cert` event) when it
/// enters `cert_min_days`, once per certificate.
fn note_cert(
    key: &EndpointKey,
    tracked: &mut Tracked,
    cert: CertExpiry,
    bus: Option<&crate::events::Events>,
) {
    metrics::gauge!(
        crate::metrics::PROBE_CERT_EXPIRY_TIMESTAMP_SECONDS,
        "pool" => key.pool.clone(),
        "member" => key.member.clone()
    )
    .set(cert.not_after as f64);
    let newly = cert.expiring
        && tracked
            .cert
            .is_none_or(|seen| !seen.expiring || seen.not_after != cert.not_after);
    tracked.cert = Some(cert);
    if !newly {
        return;
    }
    let expires = crate::time::rfc3339_unix(u64::try_from(cert.not_after).unwrap_or(0));
    tracing::warn!(
        pool = %key.pool,
        member = %key.member,
        days_left = cert.days,
        %expires,
        "the endpoint's certificate expires within cert_min_days (still up: cert_expiring = \"warn\")"
    );
    if let Some(bus) = bus {
        bus.emit(
            "cert",
            serde_json::json!({
                "pool": key.pool,
                "member": key.member,
                "days_left": cert.days,
                "expires": expires,
            }),
        );
    }
}
