//! What the monitor tracks, from the config: endpoints, the probe targets they share, and their state carried over a reload or restored from the state file.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Monitor;
use crate::config::{Check, LoadSettings, Probe, VoteRule};
use crate::health::probe::Prober;
use crate::health::scheduler::{self, Schedule, TargetId};
use crate::health::state::{Health, Hysteresis};
use crate::health::status::{Drain, Load};
use crate::health::store::EndpointRecord;
use crate::health::votes::Vote;
use crate::loaded::Loaded;
use crate::policy::load::{LoadTracker, LoadView};
use crate::routing::EndpointKey;

/// What the monitor keeps per endpoint.
pub(super) struct Tracked {
    /// This instance's own verdict.
    pub(super) hysteresis: Hysteresis,
    /// When the own verdict last changed.
    pub(super) since: SystemTime,
    /// The health answers use: the own verdict, or the fleet's votes combined.
    pub(super) effective: Health,
    /// When `effective` last changed.
    pub(super) effective_since: SystemTime,
    /// Other instances' verdicts, by instance.
    pub(super) votes: BTreeMap<String, Vote>,
    /// The pool's rule for combining them.
    pub(super) rule: VoteRule,
    /// The last decision's tally (voters, down), when the votes decided.
    pub(super) tally: Option<(usize, usize)>,
    /// The last probe's round trip.
    pub(super) rtt: Option<Duration>,
    pub(super) last_check: Option<SystemTime>,
    pub(super) last_error: Option<String>,
    pub(super) stale: bool,
    pub(super) check: Check,
    pub(super) drain: Option<Drain>,
    pub(super) load: Option<Load>,
    /// Configured capacity, the default for load reports.
    pub(super) capacity: Option<u32>,
    /// Smoothing, watermarks, slow start.
    pub(super) tracker: LoadTracker,
    /// The load view the builder last got.
    pub(super) sent: LoadView,
}

/// A running probe task and the endpoints it serves.
pub(super) struct Target {
    pub(super) id: TargetId,
    pub(super) members: Vec<EndpointKey>,
    pub(super) token: CancellationToken,
    /// When its last probe finished, in ms since [`Monitor::epoch`]; written by the probe
    /// task itself, so staleness is about probes, not about how far behind the monitor is.
    pub(super) heartbeat: Arc<AtomicU64>,
}

/// Probe tasks are shared by endpoints with the same probe and schedule.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct TargetKey {
    pub(super) probe: Probe,
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
}

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
    let (health, since, last_check, last_error, stale) = match restored {
        // Restored state counts until a fresh result says otherwise; it is stale till then.
        Some(record) if check.probe != Probe::None => (
            record.health,
            crate::time::from_unix_clamped(record.since),
            record.checked.map(crate::time::from_unix_clamped),
            record.reason.clone(),
            true,
        ),
        _ => (Health::Up, now, None, None, false),
    };
    Tracked {
        hysteresis: Hysteresis::new(health, check.rise, check.fall),
        since,
        effective: health,
        effective_since: since,
        votes: BTreeMap::new(),
        rule: VoteRule::default(),
        tally: None,
        rtt: None,
        last_check,
        last_error,
        stale,
        check: check.clone(),
        drain,
        load,
        capacity,
        // Restored load is shown in status but not trusted for ranking: it is stale.
        tracker: LoadTracker::new(load_settings),
        sent: LoadView::UNKNOWN,
    }
}

impl Monitor {
    /// Brings members and probe tasks in line with `loaded`.
    pub(super) fn apply(
        &mut self,
        loaded: &Loaded,
        restored: &HashMap<EndpointKey, EndpointRecord>,
    ) {
        let now = SystemTime::now();
        let mut wanted: HashMap<TargetKey, Vec<EndpointKey>> = HashMap::new();
        let mut members = HashMap::new();
        let mut order = Vec::new();
        for pool in &loaded.config.pools {
            for member in &pool.members {
                let key = EndpointKey {
                    pool: pool.name.clone(),
                    member: member.name.clone(),
                };
                let check = member.check.clone();
                let tracked = match self.members.remove(&key) {
                    Some(mut kept) => {
                        kept.hysteresis.set_thresholds(check.rise, check.fall);
                        if check.probe == Probe::None && kept.hysteresis.state() == Health::Down {
                            kept.hysteresis = Hysteresis::new(Health::Up, check.rise, check.fall);
                            kept.since = now;
                        }
                        kept.check = check.clone();
                        kept.capacity = member.capacity;
                        kept.rule = pool.votes;
                        kept.tracker.set_settings(pool.load);
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
                        tracked
                    }
                };
                if check.probe != Probe::None {
                    wanted
                        .entry(TargetKey {
                            probe: check.probe.clone(),
                            interval: check.interval,
                            timeout: check.timeout,
                        })
                        .or_default()
                        .push(key.clone());
                }
                order.push(key.clone());
                members.insert(key, tracked);
            }
        }
        self.checked.store(
            members.values().filter(|t| t.last_check.is_some()).count(),
            Ordering::Relaxed,
        );
        self.members = members;
        self.order = order;

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
                Ok(prober) => prober.with_sources(loaded.config.health.clone()),
                Err(error) => {
                    warn!(%error, members = keys.len(), first = %keys.first().map(|k| format!("{}/{}", k.pool, k.member)).unwrap_or_default(), "health check cannot run; endpoints keep their state");
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
