//! From probe reports to flips: rise/fall per target, this instance's verdicts and the fleet's votes, and each flip handed to the builder before anyone is told.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::time::Instant;
use tracing::{info, warn};

use super::tracked::Which;
use super::{Monitor, Sent, Tracked};
use crate::config::Probe;
use crate::health::handle::VoteChanges;
use crate::health::probe::CertExpiry;
use crate::health::scheduler::Report;
use crate::health::state::Health;
use crate::health::status::{Family, Flip, Load};
use crate::health::votes::{Vote, VoteCounts, decide_counted};
use crate::metrics::{HEALTH_FLIPS_TOTAL, MEMBER_VOTES};
use crate::policy::latency::VantageRtt;
use crate::routing::{BuildEvent, Change, EndpointKey};
use std::sync::Arc;

impl Monitor {
    /// Other voters' votes that changed, applied together: each document's changes (in
    /// member order) walking down its voter's column of the pool's
    /// [`super::tracked::VoteTable`], then each endpoint whose votes changed decided
    /// again, once for the whole batch.
    pub(super) async fn take_votes(&mut self, changes: VoteChanges) {
        let me = self.voter.as_ref().map(|me| me.instance.as_str());
        let region = self.voter.as_ref().and_then(|me| me.region.as_deref());
        // By pool: the seats whose verdicts changed, and those whose counted round trip
        // moved.
        let mut touched: HashMap<String, (Vec<usize>, Vec<usize>), foldhash::fast::RandomState> =
            HashMap::default();
        let mut applied = Vec::new();
        for (voter, by_pool) in changes.by_voter {
            // This instance's own verdict is its local one, never a vote.
            if me == Some(voter.as_str()) {
                continue;
            }
            let voter = self.voters.id(&voter);
            for mut changes in by_pool {
                let Some(table) = self.tables.get_mut(&changes.pool) else {
                    applied.push(changes);
                    continue;
                };
                if !touched.contains_key(&changes.pool) {
                    touched.insert(changes.pool.clone(), Default::default());
                }
                let Some((changed, moved)) = touched.get_mut(&changes.pool) else {
                    continue;
                };
                let column = table.column(voter);
                let mut next = 0;
                for i in 0..changes.len() {
                    let Some(seat) = table.seat_from(next, changes.member(i)) else {
                        continue;
                    };
                    next = seat + 1;
                    let before = table.set_in(column, seat, changes.take(i), region);
                    let after = table.get_in(column, seat);
                    // A vote that differs only in when it was written changes nothing
                    // (its document was written again for another endpoint's sake).
                    let verdict_changed = match (&before, after) {
                        (Some(before), Some(after)) => !before.same_verdict(after),
                        (None, None) => false,
                        _ => true,
                    };
                    if verdict_changed {
                        changed.push(seat);
                    }
                    // Whether the voter's round trip (as ranking counts it) moved too (a
                    // region matters only with a round trip to rank by).
                    let counted = |v: Option<&Vote>| v.and_then(|v| v.rtt_us.filter(|_| !v.stale));
                    if counted(before.as_ref()) != counted(after)
                        || (counted(after).is_some()
                            && before.as_ref().map(|b| &b.region) != after.map(|a| &a.region))
                    {
                        moved.push(seat);
                    }
                }
                table.drop_if_empty(column);
                applied.push(changes);
            }
        }
        // The lists go back to the reader, emptied (a big pool's are left to go).
        if let Ok(mut spare) = self.spare_lists.lock() {
            let kept = applied
                .into_iter()
                .filter(|list| list.capacity() <= super::super::handle::SPARE_LIST_VOTES);
            for mut list in kept {
                if spare.len() >= super::super::handle::SPARE_VOTE_LISTS {
                    break;
                }
                list.clear();
                spare.push(list);
            }
        }

        let standing = Standing {
            voter: self.voter.as_ref(),
            voting: self.voting,
            in_grace: self.grace_until.is_some(),
        };
        let mut flips = Vec::new();
        let mut rtt_moved = Vec::new();
        for (pool, (mut changed, mut moved)) in touched {
            let Some(table) = self.tables.get(&pool) else {
                continue;
            };
            changed.sort_unstable();
            changed.dedup();
            for seat in changed {
                // Found by slot: no key hashed or compared.
                let Some((key, t)) = table.slot(seat).and_then(|slot| self.members.at_mut(slot))
                else {
                    continue;
                };
                debug_assert!(key.pool == pool && key.member == table.member(seat));
                let counts = table.counts(seat);
                flips.extend(reconsider(t, key, standing, counts, "the votes changed"));
            }
            moved.sort_unstable();
            moved.dedup();
            for seat in moved {
                rtt_moved.push(EndpointKey {
                    pool: pool.clone(),
                    member: table.member(seat).to_string(),
                });
            }
        }
        for key in rtt_moved {
            self.send_rtts(&key).await;
        }
        self.publish_flips(flips).await;
    }

    /// Folds a batch of probe reports into the endpoints, then publishes every flip in one
    /// go: the builder folds queued events into one rebuild, and the state file is written
    /// once (coalesced) for the whole batch.
    pub(super) async fn on_reports(&mut self, reports: Vec<Report>) {
        let mut local = Vec::new();
        let mut load_changed = Vec::new();
        let mut rtt_changed = Vec::new();
        for report in reports {
            self.observe(report, &mut local, &mut load_changed, &mut rtt_changed);
        }
        let mut flips = Vec::new();
        for (key, reason) in local {
            self.publish_verdict(&key);
            flips.extend(self.reconsider(&key, &reason));
        }
        for key in rtt_changed {
            // A round trip that moved beyond the band: the builder hears it, and the fleet
            // when a latency ranking reads it.
            if self.members.get(&key).is_some_and(|t| t.shares_rtt) {
                self.publish_verdict(&key);
            }
            self.send_rtts(&key).await;
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

    /// The round trips to `key` by vantage: this instance's own (smoothed) and every fresh
    /// voter's, as the fleet shares them.
    pub(super) fn rtts_of(&self, key: &EndpointKey, t: &Tracked) -> Vec<VantageRtt> {
        let me = self.voter.as_ref();
        let own = t.rtt.published().map(|micros| VantageRtt {
            region: me.and_then(|v| v.region.clone()),
            vantage: me.map_or_else(|| "local".to_string(), |v| v.instance.clone()),
            micros,
        });
        let others = self
            .tables
            .get(&key.pool)
            .into_iter()
            .flat_map(|table| table.votes(t.seat))
            .filter(|(_, vote)| !vote.stale)
            .filter_map(|(voter, vote)| {
                Some(VantageRtt {
                    micros: vote.rtt_us?,
                    region: vote.region.as_deref().map(str::to_string),
                    vantage: self.voters.name(voter).to_string(),
                })
            });
        let mut rtts: Vec<VantageRtt> = own.into_iter().chain(others).collect();
        rtts.sort_unstable();
        rtts
    }

    /// Hands the builder `key`'s round trips when they changed, and exports them per
    /// region.
    pub(super) async fn send_rtts(&mut self, key: &EndpointKey) {
        let Some(t) = self.members.get(key) else {
            return;
        };
        let rtts = self.rtts_of(key, t);
        if *t.rtts_sent == *rtts {
            return;
        }
        let before: Vec<Option<String>> = t.rtts_sent.iter().map(|r| r.region.clone()).collect();
        let rtts: Arc<[VantageRtt]> = rtts.into();
        export_rtts(key, &before, &rtts);
        if let Some(t) = self.members.get_mut(key) {
            t.rtts_sent = rtts.clone();
        }
        let change = Change::SetRtt {
            key: key.clone(),
            rtts,
        };
        let _ = self.to_builder(BuildEvent::new(change)).await;
    }

    /// This instance's verdict on an endpoint it probes, as published.
    pub(super) fn vote_of(&self, t: &Tracked) -> Option<Vote> {
        if t.check.probe == Probe::None || t.main.last_check.is_none() {
            return None;
        }
        let up = t.local() == Health::Up;
        let v6 = t.v6.as_ref();
        Some(Vote {
            up,
            since: crate::time::unix(t.main.since),
            error: if up {
                None
            } else {
                t.main.last_error.as_deref().map(Arc::from)
            },
            rtt_us: t.rtt.published().filter(|_| t.shares_rtt),
            region: self
                .voter
                .as_ref()
                .and_then(|v| v.region.as_deref().map(Arc::from)),
            stale: t.stale,
            at: crate::health::votes::now_unix(),
            v4: v6.map(|_| t.main.hysteresis.state() == Health::Up),
            v6: v6
                .filter(|v6| v6.last_check.is_some())
                .map(|v6| v6.hysteresis.state() == Health::Up),
        })
    }

    /// Decides `key`'s health again from its own verdicts and the fleet's: the endpoint's
    /// flip when it changed, and with `family = "each"` each family's. `reason` is what
    /// changed (a probe result, or the votes).
    pub(super) fn reconsider(&mut self, key: &EndpointKey, reason: &str) -> Vec<Flip> {
        let Some(t) = self.members.get_mut(key) else {
            return Vec::new();
        };
        let standing = Standing {
            voter: self.voter.as_ref(),
            voting: self.voting,
            in_grace: self.grace_until.is_some(),
        };
        let counts = self
            .tables
            .get(&key.pool)
            .map(|table| table.counts(t.seat))
            .unwrap_or_default();
        reconsider(t, key, standing, counts, reason)
    }
    /// Decides every endpoint again (the votes, the rules or the store's reachability
    /// changed) and publishes what flipped.
    pub(super) async fn reconsider_all(&mut self, reason: &str) {
        let keys = self.order.clone();
        let flips: Vec<Flip> = keys
            .iter()
            .flat_map(|key| self.reconsider(key, reason))
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
                    match flip.family {
                        None => $level!(
                            pool = %flip.key.pool,
                            member = %flip.key.member,
                            old = flip.from.as_str(),
                            new = flip.to.as_str(),
                            reason = %flip.reason,
                            "endpoint health changed"
                        ),
                        Some(family) => $level!(
                            pool = %flip.key.pool,
                            member = %flip.key.member,
                            family = family.as_str(),
                            old = flip.from.as_str(),
                            new = flip.to.as_str(),
                            reason = %flip.reason,
                            "endpoint address family health changed"
                        ),
                    }
                };
            }
            if flip.to == Health::Down {
                log_flip!(warn);
            } else {
                log_flip!(info);
            }
            if flip.family.is_none() {
                metrics::counter!(HEALTH_FLIPS_TOTAL, "to" => flip.to.as_str()).increment(1);
            }
            if let Some(bus) = &self.bus {
                let mut event = serde_json::json!({
                    "pool": flip.key.pool,
                    "member": flip.key.member,
                    "from": flip.from.as_str(),
                    "to": flip.to.as_str(),
                    "reason": flip.reason,
                });
                if let Some(family) = flip.family {
                    event["family"] = family.as_str().into();
                }
                bus.emit("health", event);
            }
            let change = match flip.family {
                None => Change::SetMemberUp {
                    key: flip.key.clone(),
                    up: flip.to == Health::Up,
                },
                // The families left out as they stand now (the last event wins).
                Some(_) => Change::SetWithheld {
                    key: flip.key.clone(),
                    withheld: self
                        .members
                        .get(&flip.key)
                        .map(Tracked::withheld)
                        .unwrap_or_default(),
                },
            };
            let (mut event, receiver) = BuildEvent::waited(change);
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
        rtt_changed: &mut Vec<EndpointKey>,
    ) {
        let Self {
            targets,
            by_id,
            members,
            checked,
            bus,
            latency,
            ..
        } = self;
        let sample = match latency.measure {
            crate::config::Measure::Connect => report.timings.connect,
            // Kinds without a first byte (TCP, DNS, ICMP) give their connect time.
            crate::config::Measure::FirstByte => {
                report.timings.first_byte.or(report.timings.connect)
            }
        };
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
        for (key, which) in &target.members {
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
            if tracked.main.last_check.is_none() && *which == Which::Main {
                checked.fetch_add(1, Ordering::Relaxed);
                // The first verdict of this instance: the fleet hears it.
                flips.push((key.clone(), reason.clone()));
            }
            let Some(state) = tracked.state_mut(*which) else {
                continue;
            };
            if state.last_check.is_none() && *which == Which::V6 {
                flips.push((key.clone(), reason.clone()));
            }
            state.last_check = Some(report.at);
            state.last_error = report.result.as_ref().err().map(ToString::to_string);
            state.rtt = report.rtt;
            if ok {
                state.timings = report.timings;
            }
            if state.hysteresis.observe(ok).is_some() {
                state.since = report.at;
                flips.push((key.clone(), reason.clone()));
            }
            // Load, round trip and the certificate are read by the main check only (one
            // report each).
            if *which == Which::V6 {
                continue;
            }
            if let Some(sample) = sample.filter(|_| ok)
                && tracked.rtt.observe(sample, latency)
            {
                rtt_changed.push(key.clone());
            }
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
            if let Some(cert) = report.cert {
                note_cert(key, tracked, cert, bus.as_ref());
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
            .main
            .cert
            .is_none_or(|seen| !seen.expiring || seen.not_after != cert.not_after);
    tracked.main.cert = Some(cert);
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

/// Sets `gto_member_rtt_seconds` per vantage region of `rtts` (the median of the region's
/// vantages), and removes the regions `before` had that `rtts` lacks.
fn export_rtts(key: &EndpointKey, before: &[Option<String>], rtts: &[VantageRtt]) {
    use crate::policy::latency::{self, VantageFrom};
    let label = |region: &Option<String>| region.clone().unwrap_or_default();
    let mut regions: Vec<&Option<String>> = rtts.iter().map(|r| &r.region).collect();
    regions.dedup();
    for region in &regions {
        let of_region: Vec<VantageRtt> = rtts
            .iter()
            .filter(|r| &&r.region == region)
            .cloned()
            .collect();
        if let Some(micros) = latency::key(&of_region, VantageFrom::Everywhere) {
            metrics::gauge!(
                crate::metrics::MEMBER_RTT_SECONDS,
                "pool" => key.pool.clone(),
                "member" => key.member.clone(),
                "region" => label(region)
            )
            .set(f64::from(micros) / 1e6);
        }
    }
    for gone in before.iter().filter(|r| !regions.contains(r)) {
        // A region whose vantages went: its value would lie.
        let gauge = metrics::gauge!(
            crate::metrics::MEMBER_RTT_SECONDS,
            "pool" => key.pool.clone(),
            "member" => key.member.clone(),
            "region" => label(gone)
        );
        gauge.set(f64::NAN);
    }
}

/// How this instance stands in the fleet, for [`reconsider`].
#[derive(Clone, Copy)]
pub(super) struct Standing<'a> {
    pub(super) voter: Option<&'a crate::health::votes::Voter>,
    /// The fleet's votes count.
    pub(super) voting: bool,
    /// Starting in a fleet, before its votes.
    pub(super) in_grace: bool,
}

/// [`Monitor::reconsider`] on an endpoint already found (a vote changes one endpoint at a
/// time, 290,000 times per instance in a mass outage of a fleet of 30 at 10,000).
pub(super) fn reconsider(
    t: &mut Tracked,
    key: &EndpointKey,
    standing: Standing<'_>,
    counts: [VoteCounts; 2],
    reason: &str,
) -> Vec<Flip> {
    let Standing {
        voter,
        voting,
        in_grace,
    } = standing;
    let main = decide_counted(t.main.hysteresis.state(), voter, voting, counts[0], &t.rule);
    t.main.tally = main.tally;
    let v6 = t.v6.as_mut().map(|v6| {
        let decision = decide_counted(v6.hysteresis.state(), voter, voting, counts[1], &t.rule);
        v6.tally = decision.tally;
        decision
    });
    // Starting in a fleet, before its votes: what was known at start stands.
    if in_grace {
        return Vec::new();
    }
    if voter.is_some() {
        let down = main.tally.map_or(0, |(_, down)| down);
        let voters = main.tally.map_or(1, |(voters, _)| voters);
        let (down_gauge, up_gauge) = t.votes_gauges.get_or_insert_with(|| {
            let gauge = |verdict: &'static str| {
                metrics::gauge!(MEMBER_VOTES, "pool" => key.pool.clone(), "member" => key.member.clone(), "verdict" => verdict)
            };
            (gauge("down"), gauge("up"))
        });
        down_gauge.set(down as f64);
        up_gauge.set((voters - down) as f64);
    }
    let before = t.effective();
    let now = SystemTime::now();
    let mut flips = Vec::new();
    let split = v6.is_some();
    let because = |decision: &crate::health::votes::Decision| match decision.tally {
        Some(_) => format!("{reason}; quorum: {}", decision.describe(&t.rule)),
        None => reason.to_string(),
    };
    let mut family_flip = |state: &mut super::tracked::CheckState,
                           decision: &crate::health::votes::Decision,
                           family: Family| {
        if decision.health == state.effective {
            return;
        }
        let from = state.effective;
        state.effective = decision.health;
        state.effective_since = now;
        if split {
            flips.push(Flip {
                key: key.clone(),
                from,
                to: decision.health,
                reason: because(decision),
                family: Some(family),
            });
        }
    };
    family_flip(&mut t.main, &main, Family::V4);
    if let (Some(state), Some(decision)) = (t.v6.as_mut(), &v6) {
        family_flip(state, decision, Family::V6);
    }
    let after = t.effective();
    if after != before {
        // The endpoint's own flip comes first: it names the decision that made it.
        let decisive = match &v6 {
            Some(v6) if v6.health == after => v6,
            _ => &main,
        };
        flips.insert(
            0,
            Flip {
                key: key.clone(),
                from: before,
                to: after,
                reason: because(decisive),
                family: None,
            },
        );
    }
    flips
}
