//! What the monitor tracks, from the config: endpoints, the probe targets they share, and their state carried over a reload or restored from the state file.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tracing::warn;

use super::Monitor;
use super::tracked::{CheckState, Members, Target, TargetKey, Tracked, VoteTable, Which};
use crate::config::{Check, LoadSettings, Probe, VoteRule};
use crate::health::probe::Prober;
use crate::health::scheduler::{self, Schedule};
use crate::health::state::{Health, Hysteresis};
use crate::health::status::{Drain, Load};
use crate::health::store::{EndpointRecord, FamilyRecord};
use crate::loaded::Loaded;
use crate::policy::load::{LoadTracker, LoadView};
use crate::routing::EndpointKey;

pub(super) fn new_tracked(
    check: &Check,
    capacity: Option<u32>,
    load_settings: LoadSettings,
    restored: Option<&EndpointRecord>,
    now: SystemTime,
) -> Tracked {
    let drain = restored
        .and_then(|r| r.live_drain(now))
        .map(|until| Drain { since: now, until });
    let load = restored.and_then(|r| r.load).map(|l| Load {
        sessions: l.sessions,
        capacity: l.capacity,
        at: crate::time::from_unix_clamped(l.at),
    });
    let (main, stale) = match restored {
        // Restored state counts until a fresh result says otherwise; it is stale till then.
        Some(record) if check.probe != Probe::None => {
            (CheckState::restored(&record.main_check(), check), true)
        }
        _ => (CheckState::new(Health::Up, now, check), false),
    };
    Tracked {
        main,
        v6: v6_state(check, restored.and_then(|r| r.v6.as_ref()), now),
        seat: usize::MAX,
        votes_gauges: None,
        rule: VoteRule::default(),
        stale,
        check: check.clone(),
        drain_note: restored
            .filter(|_| drain.is_some())
            .map(EndpointRecord::drain_note)
            .unwrap_or_default(),
        drain,
        window: restored
            .and_then(|r| r.window.as_ref())
            .and_then(|w| w.live(now)),
        load,
        capacity,
        // Restored load is shown in status but not trusted for ranking: it is stale.
        tracker: LoadTracker::new(load_settings),
        sent: LoadView::UNKNOWN,
        rtt: Default::default(),
        rtts_sent: std::sync::Arc::new([]),
        shares_rtt: false,
    }
}

/// The IPv6 check's state of an endpoint whose families are probed apart: restored, else
/// up as of `now`.
fn v6_state(check: &Check, restored: Option<&FamilyRecord>, now: SystemTime) -> Option<CheckState> {
    check.probe_v6.as_ref()?;
    Some(match restored {
        Some(record) => CheckState::restored(record, check),
        None => CheckState::new(Health::Up, now, check),
    })
}

impl Monitor {
    /// Brings members and probe tasks in line with `loaded`.
    pub(super) fn apply(
        &mut self,
        loaded: &Loaded,
        restored: &HashMap<EndpointKey, EndpointRecord>,
    ) {
        let now = SystemTime::now();
        let mut wanted: HashMap<TargetKey, Vec<(EndpointKey, Which)>> = HashMap::new();
        let mut members = Members::default();
        let mut order = Vec::new();
        let config = &loaded.config;
        for (index, pool) in config.pools.iter().enumerate() {
            // Round trips are shared with the fleet only for pools a latency ranking reads:
            // a fleet that ranks by nothing else writes nothing for them.
            let shares_rtt = config.services.iter().any(|s| {
                let reads = s.policy == crate::config::Policy::Latency
                    || s.tie == crate::config::Tie::Latency;
                let answers_from = s.pool.0 == index
                    || matches!(s.when_all_down, crate::config::WhenAllDown::Fallback(f) if f.0 == index)
                    || s.overrides.iter().any(|o| {
                        matches!(o.target, crate::config::OverrideTarget::Pool(p) if p.0 == index)
                    });
                reads && answers_from
            });
            for member in &pool.members {
                let key = EndpointKey {
                    pool: pool.name.clone(),
                    member: member.name.clone(),
                };
                let check = member.check.clone();
                let tracked = match self.members.remove(&key) {
                    Some(mut kept) => {
                        kept.main.hysteresis.set_thresholds(check.rise, check.fall);
                        if check.probe == Probe::None
                            && kept.main.hysteresis.state() == Health::Down
                        {
                            kept.main.hysteresis =
                                Hysteresis::new(Health::Up, check.rise, check.fall);
                            kept.main.since = now;
                        }
                        // The IPv6 check starts, stops, or keeps its state.
                        kept.v6 = match (kept.v6.take(), &check.probe_v6) {
                            (Some(mut v6), Some(_)) => {
                                v6.hysteresis.set_thresholds(check.rise, check.fall);
                                Some(v6)
                            }
                            (_, Some(_)) => v6_state(&check, None, now),
                            (_, None) => None,
                        };
                        kept.check = check.clone();
                        kept.capacity = member.capacity;
                        kept.rule = pool.votes;
                        kept.tracker.set_settings(pool.load);
                        kept.shares_rtt = shares_rtt;
                        kept
                    }
                    None => {
                        let mut tracked = new_tracked(
                            &check,
                            member.capacity,
                            pool.load,
                            restored.get(&key),
                            now,
                        );
                        tracked.rule = pool.votes;
                        tracked.shares_rtt = shares_rtt;
                        tracked
                    }
                };
                if check.probe != Probe::None {
                    let probes = [
                        (Which::Main, Some(&check.probe)),
                        (Which::V6, check.probe_v6.as_ref()),
                    ];
                    for (which, probe) in probes {
                        let Some(probe) = probe else {
                            continue;
                        };
                        wanted
                            .entry(TargetKey {
                                probe: probe.clone(),
                                interval: check.interval,
                                timeout: check.timeout,
                            })
                            .or_default()
                            .push((key.clone(), which));
                    }
                }
                order.push(key.clone());
                members.insert(key, tracked);
            }
        }
        self.checked.store(
            members
                .values()
                .filter(|t| t.main.last_check.is_some())
                .count(),
            Ordering::Relaxed,
        );
        self.members = members;
        self.order = order;
        self.seat_members();

        self.start_targets(loaded, wanted);
    }

    /// Makes each pool's [`VoteTable`] for its members now, keeping the votes held on
    /// those that stay, and gives each endpoint its seat.
    fn seat_members(&mut self) {
        let mut by_pool: HashMap<&str, Vec<&str>> = HashMap::new();
        for key in &self.order {
            by_pool.entry(&key.pool).or_default().push(&key.member);
        }
        let region = self.voter.as_ref().and_then(|me| me.region.as_deref());
        let mut tables: HashMap<String, VoteTable, foldhash::fast::RandomState> =
            HashMap::default();
        for (pool, members) in by_pool {
            let before = self.tables.remove(pool);
            tables.insert(pool.to_string(), VoteTable::new(members, before, region));
        }
        // In slot order.
        for (slot, (key, t)) in self.members.iter_mut().enumerate() {
            let table = tables.get_mut(&key.pool);
            let seat = table.as_ref().and_then(|table| table.seat(&key.member));
            t.seat = seat.unwrap_or(usize::MAX);
            if let (Some(table), Some(seat)) = (table, seat) {
                table.set_slot(seat, slot);
            }
        }
        self.tables = tables;
    }

    /// Stops the probes nobody needs any more, keeps the rest running (with the endpoints
    /// that now share them) and starts the new ones.
    fn start_targets(
        &mut self,
        loaded: &Loaded,
        wanted: HashMap<TargetKey, Vec<(EndpointKey, Which)>>,
    ) {
        let exec_limit = loaded.config.health.exec_limit;
        if exec_limit > self.exec_limit {
            self.exec_slots.add_permits(exec_limit - self.exec_limit);
            self.exec_limit = exec_limit;
        } else if exec_limit < self.exec_limit {
            // Only free slots can be taken away; those in use now, at the next reload.
            self.exec_limit -= self.exec_slots.forget_permits(self.exec_limit - exec_limit);
        }
        self.simulated_targets = None;
        // Stop probes nobody needs any more; keep the rest running.
        let by_id = &mut self.by_id;
        self.targets.retain(|key, target| {
            let keep = wanted.contains_key(key);
            if !keep {
                target.token.cancel();
                by_id.remove(&target.id);
            }
            keep
        });
        for (key, keys) in wanted {
            if let Some(target) = self.targets.get_mut(&key) {
                target.members = keys;
                continue;
            }
            let prober = match Prober::new(key.probe.clone()) {
                Ok(prober) => prober
                    .with_sources(loaded.config.health.clone())
                    .with_exec_slots(self.exec_slots.clone()),
                Err(error) => {
                    warn!(%error, members = keys.len(), first = %keys.first().map(|(k, _)| format!("{}/{}", k.pool, k.member)).unwrap_or_default(), "health check cannot run; endpoints keep their state");
                    continue;
                }
            };
            let id = self.next_id;
            self.next_id += 1;
            let token = self.token.child_token();
            let heartbeat = Arc::new(AtomicU64::new(self.millis_since_epoch()));
            tokio::spawn(scheduler::probe_loop(
                id,
                prober,
                key.probe.kind(),
                Schedule {
                    interval: key.interval,
                    timeout: key.timeout,
                },
                scheduler::Reporting {
                    limit: self.limit.clone(),
                    reports: self.reports_tx.clone(),
                    heartbeat: scheduler::Heartbeat {
                        epoch: self.epoch,
                        millis: heartbeat.clone(),
                    },
                },
                token.clone(),
            ));
            self.by_id.insert(id, key.clone());
            self.targets.insert(
                key,
                Target {
                    id,
                    members: keys,
                    token,
                    heartbeat,
                },
            );
        }
    }
}
