//! The monitor task: the one owner of every endpoint's health, drain and load. It folds
//! probe reports (in batches), operator changes and reloads into routing updates, keeps
//! the state file through its coalescing writer, and flags probes that fall silent.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::MAX_CONCURRENT_PROBES;
use super::handle::{Applied, Control, HealthHandle};
use super::probe::Prober;
use super::scheduler::{self, Report, Schedule, TargetId};
use super::state::{Health, Hysteresis};
use super::status::{Drain, EndpointStatus, Flip, Load, StateError};
use super::store::{self, EndpointRecord, LoadRecord, StateFile};
use super::votes::{Vote, Voter, decide};
use crate::config::{Check, LoadSettings, Probe, VoteRule};
use crate::loaded::Loaded;
use crate::metrics::{DRAINS_TOTAL, HEALTH_FLIPS_TOTAL, MEMBER_VOTES};
use crate::policy::load::{LoadTracker, LoadView};
use crate::routing::{BuildEvent, Change, EndpointKey};

/// Whether a change reached the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Yes,
    /// No builder in this process (the probe-only agent): nothing to tell.
    NoBuilder,
    /// The builder stopped: shutting down.
    Stopped,
}

/// The receiver told once a snapshot showing a change is live, when the change alters
/// answers and someone waits for it.
type Published = Option<oneshot::Receiver<u64>>;

/// How often staleness is checked.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Starts the monitor and the probe tasks for `loaded`.
pub fn spawn(
    loaded: &Loaded,
    restored: Option<StateFile>,
    state_file: Option<PathBuf>,
    events: Option<mpsc::Sender<BuildEvent>>,
    token: CancellationToken,
) -> (HealthHandle, JoinHandle<()>) {
    let (control, control_rx) = mpsc::channel(16);
    let (reports_tx, reports) = mpsc::channel(4096);
    let (flips, _) = broadcast::channel(256);
    let (loads, _) = broadcast::channel(1024);
    let (verdicts, _) = broadcast::channel(4096);
    let checked = Arc::new(AtomicUsize::new(0));
    let (saved_tx, saved) = watch::channel(store::Written::default());
    let follow = loaded.config.server.state_file_follow_symlinks;
    let mut monitor = Monitor {
        members: HashMap::new(),
        order: Vec::new(),
        targets: HashMap::new(),
        by_id: HashMap::new(),
        checked: checked.clone(),
        next_id: 0,
        limit: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
        reports_tx,
        events,
        flips: flips.clone(),
        loads: loads.clone(),
        verdicts: verdicts.clone(),
        voter: loaded.config.cluster.as_ref().map(|c| Voter {
            instance: c.instance.clone(),
            region: c.region.clone(),
        }),
        voting: false,
        bus: None,
        state: state_file.map(|path| StateSink {
            writer: store::Writer::spawn(path, follow),
            seq: 0,
            sent: 0,
            in_flight: false,
            saved: saved_tx,
        }),
        epoch: Instant::now(),
        token: token.clone(),
    };
    let restored: HashMap<EndpointKey, EndpointRecord> = restored
        .map(|file| {
            file.members
                .into_iter()
                .map(|r| {
                    let key = EndpointKey {
                        pool: r.pool.clone(),
                        member: r.member.clone(),
                    };
                    (key, r)
                })
                .collect()
        })
        .unwrap_or_default();
    monitor.apply(loaded, &restored);
    let task = tokio::spawn(monitor.run(control_rx, reports, token));
    (
        HealthHandle {
            control,
            flips,
            loads,
            verdicts,
            checked,
            saved,
        },
        task,
    )
}

/// What the monitor keeps per endpoint.
struct Tracked {
    /// This instance's own verdict.
    hysteresis: Hysteresis,
    /// When the own verdict last changed.
    since: SystemTime,
    /// The health answers use: the own verdict, or the fleet's votes combined.
    effective: Health,
    /// When `effective` last changed.
    effective_since: SystemTime,
    /// Other instances' verdicts, by instance.
    votes: BTreeMap<String, Vote>,
    /// The pool's rule for combining them.
    rule: VoteRule,
    /// The last decision's tally (voters, down), when the votes decided.
    tally: Option<(usize, usize)>,
    /// The last probe's round trip.
    rtt: Option<Duration>,
    last_check: Option<SystemTime>,
    last_error: Option<String>,
    stale: bool,
    check: Check,
    drain: Option<Drain>,
    load: Option<Load>,
    /// Configured capacity, the default for load reports.
    capacity: Option<u32>,
    /// Smoothing, watermarks, slow start.
    tracker: LoadTracker,
    /// The load view the builder last got.
    sent: LoadView,
}

/// A running probe task and the endpoints it serves.
struct Target {
    id: TargetId,
    members: Vec<EndpointKey>,
    token: CancellationToken,
    /// When its last probe finished, in ms since [`Monitor::epoch`]; written by the probe
    /// task itself, so staleness is about probes, not about how far behind the monitor is.
    heartbeat: Arc<AtomicU64>,
}

/// The coalesced state file writer, and which changes it holds.
struct StateSink {
    writer: store::Writer,
    /// Sequence number of the newest change.
    seq: u64,
    /// Sequence number of the newest change handed to the writer.
    sent: u64,
    /// A write is under way.
    in_flight: bool,
    /// Outcomes, for changes waiting to be acknowledged.
    saved: watch::Sender<store::Written>,
}

/// Probe tasks are shared by endpoints with the same probe and schedule.
#[derive(Clone, PartialEq, Eq, Hash)]
struct TargetKey {
    probe: Probe,
    interval: Duration,
    timeout: Duration,
}

struct Monitor {
    members: HashMap<EndpointKey, Tracked>,
    /// Endpoints in config order, for status.
    order: Vec<EndpointKey>,
    targets: HashMap<TargetKey, Target>,
    /// Which target a probe report is from.
    by_id: HashMap<TargetId, TargetKey>,
    /// Endpoints with at least one result (shared with the handle).
    checked: Arc<AtomicUsize>,
    next_id: TargetId,
    limit: Arc<Semaphore>,
    reports_tx: mpsc::Sender<Report>,
    events: Option<mpsc::Sender<BuildEvent>>,
    flips: broadcast::Sender<Flip>,
    /// Loads read by this instance's probes, for the fleet.
    loads: broadcast::Sender<(EndpointKey, Load)>,
    /// This instance's own verdicts as they change, for the fleet.
    verdicts: broadcast::Sender<(EndpointKey, Vote)>,
    /// Who this instance is in the fleet (None: no `[cluster]`).
    voter: Option<Voter>,
    /// The fleet's votes count (the store is reachable).
    voting: bool,
    /// Where changes are reported as events, once set.
    bus: Option<crate::events::Events>,
    state: Option<StateSink>,
    /// Origin of the targets' heartbeats.
    epoch: Instant,
    token: CancellationToken,
}

/// Reports handled in one go before the routing snapshot is updated: a mass outage is a
/// few rebuilds, not one per endpoint.
const REPORT_BATCH: usize = 4096;

impl Monitor {
    async fn run(
        mut self,
        mut control: mpsc::Receiver<Control>,
        mut reports: mpsc::Receiver<Report>,
        token: CancellationToken,
    ) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(REPORT_BATCH);
        loop {
            let written = async {
                match &mut self.state {
                    Some(sink) if sink.in_flight => sink.writer.outcome().await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                received = reports.recv_many(&mut batch, REPORT_BATCH) => {
                    if received > 0 {
                        self.on_reports(std::mem::take(&mut batch)).await;
                    }
                }
                Some(written) = written => self.on_written(written).await,
                Some(control) = control.recv() => match control {
                    Control::Status(reply) => {
                        let _ = reply.send(self.status());
                    }
                    Control::Drain(key, until, reply) => {
                        let result = self.set_drain(&key, Some(until), "requested").await;
                        let _ = reply.send(result.map(|applied| self.saved_by(applied)));
                    }
                    Control::DrainOf(key, reply) => {
                        let drain = self.members.get(&key).map(|t| t.drain.map(|d| d.until));
                        let _ = reply.send(drain);
                    }
                    Control::Undrain(key, reply) => {
                        let result = self.set_drain(&key, None, "requested").await;
                        let _ = reply.send(result.map(|applied| self.saved_by(applied)));
                    }
                    Control::SetLoad(key, sessions, capacity, at, reply) => {
                        let result = self.set_load(&key, sessions, capacity, at).await;
                        let _ = reply.send(result.map(|applied| self.saved_by(applied)));
                    }
                    Control::Reconfigure(loaded, done) => {
                        self.apply(&loaded, &HashMap::new());
                        self.reconsider_all("the config changed").await;
                        let _ = done.send(());
                        self.persist().await;
                    }
                    Control::Vote(key, voter, vote) => {
                        let changed = self.members.get_mut(&key).is_some_and(|t| match vote {
                            Some(vote) => t.votes.insert(voter, vote.clone()).as_ref() != Some(&vote),
                            None => t.votes.remove(&voter).is_some(),
                        });
                        if changed {
                            let flips: Vec<Flip> = self.reconsider(&key, "the votes changed").into_iter().collect();
                            self.publish_flips(flips).await;
                        }
                    }
                    Control::ReplaceVotes(all) => {
                        let mut all = all;
                        for (key, t) in &mut self.members {
                            t.votes = all.remove(key).unwrap_or_default();
                        }
                        self.reconsider_all("the fleet's votes were read again").await;
                    }
                    Control::Voting(voting) => {
                        if self.voting != voting {
                            self.voting = voting;
                            let reason = if voting {
                                "the fleet's votes count again"
                            } else {
                                "the fleet store is unreachable: this instance's own verdict decides"
                            };
                            self.reconsider_all(reason).await;
                        }
                    }
                    Control::ReportTo(events) => self.bus = Some(events),
                    Control::Verdicts(reply) => {
                        let verdicts = self
                            .order
                            .iter()
                            .filter_map(|key| {
                                let vote = self.vote_of(self.members.get(key)?)?;
                                Some((key.clone(), vote))
                            })
                            .collect();
                        let _ = reply.send(verdicts);
                    }
                    #[cfg(test)]
                    Control::KillProbes => {
                        for target in self.targets.values() {
                            target.token.cancel();
                        }
                    }
                },
                _ = sweep.tick() => self.sweep().await,
                () = token.cancelled() => break,
            }
        }
        for target in self.targets.values() {
            target.token.cancel();
        }
        self.limit.close();
        // The last write always happens, whatever the gap since the one before.
        if let Some(sink) = self.state.take() {
            let file = self.state_file_now();
            sink.writer.close(Some((sink.seq, file))).await;
        }
    }

    /// The sequence number a change just made will be saved under (None: no state file).
    fn saving(&self) -> Option<u64> {
        self.state.as_ref().map(|sink| sink.seq)
    }

    /// Hands a change to the builder, if this process has one.
    async fn to_builder(&self, event: BuildEvent) -> Sent {
        match &self.events {
            None => Sent::NoBuilder,
            Some(events) if events.send(event).await.is_ok() => Sent::Yes,
            // A closed channel means shutdown.
            Some(_) => Sent::Stopped,
        }
    }

    /// `applied` with the state file write that will hold it.
    fn saved_by(&self, (status, published): (EndpointStatus, Published)) -> Applied {
        Applied {
            status,
            seq: self.saving(),
            published,
        }
    }

    /// A write finished: tell the waiting changes, and write again if more changed.
    async fn on_written(&mut self, written: store::Written) {
        let Some(sink) = &mut self.state else {
            return;
        };
        sink.in_flight = false;
        sink.saved.send_replace(written);
        if sink.seq > sink.sent {
            self.persist().await;
        }
    }

    /// Brings members and probe tasks in line with `loaded`.
    fn apply(&mut self, loaded: &Loaded, restored: &HashMap<EndpointKey, EndpointRecord>) {
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

    /// Folds a batch of probe reports into the endpoints, then publishes every flip in one
    /// go: the builder folds queued events into one rebuild, and the state file is written
    /// once (coalesced) for the whole batch.
    async fn on_reports(&mut self, reports: Vec<Report>) {
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
    fn publish_verdict(&self, key: &EndpointKey) {
        if self.voter.is_none() {
            return;
        }
        if let Some(vote) = self.members.get(key).and_then(|t| self.vote_of(t)) {
            let _ = self.verdicts.send((key.clone(), vote));
        }
    }

    /// This instance's verdict on an endpoint it probes, as published.
    fn vote_of(&self, t: &Tracked) -> Option<Vote> {
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
    fn reconsider(&mut self, key: &EndpointKey, reason: &str) -> Option<Flip> {
        let (voter, voting) = (self.voter.as_ref(), self.voting);
        let t = self.members.get_mut(key)?;
        let decision = decide(t.hysteresis.state(), voter, voting, &t.votes, &t.rule);
        t.tally = decision.tally;
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
    async fn reconsider_all(&mut self, reason: &str) {
        let keys = self.order.clone();
        let flips: Vec<Flip> = keys
            .iter()
            .filter_map(|key| self.reconsider(key, reason))
            .collect();
        self.publish_flips(flips).await;
    }

    /// Logs and counts flips, hands them to the builder, waits for the snapshot, persists
    /// and tells subscribers.
    async fn publish_flips(&mut self, flips: Vec<Flip>) {
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
    fn observe(
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
            if tracked.hysteresis.observe(ok).is_some() {
                tracked.since = report.at;
                flips.push((key.clone(), reason.clone()));
            }
        }
    }

    /// Drains (`Some(until)`) or undrains (`None`) an endpoint and publishes the change.
    async fn set_drain(
        &mut self,
        key: &EndpointKey,
        drain: Option<Option<SystemTime>>,
        why: &'static str,
    ) -> Result<(EndpointStatus, Published), StateError> {
        let tracked = self
            .members
            .get_mut(key)
            .ok_or_else(|| StateError::NotFound(key.pool.clone(), key.member.clone()))?;
        let drained = drain.is_some();
        let was = tracked.drain.is_some();
        tracked.drain = drain.map(|until| Drain {
            since: tracked.drain.map_or_else(SystemTime::now, |d| d.since),
            until,
        });
        let action = if drained { "drain" } else { "undrain" };
        info!(
            pool = %key.pool,
            member = %key.member,
            action,
            until = drain.flatten().map(crate::time::rfc3339),
            "endpoint {}", if drained { "drained" } else { "undrained" }
        );
        metrics::counter!(DRAINS_TOTAL, "action" => action).increment(1);
        if let Some(bus) = &self.bus {
            bus.emit(
                "drain",
                serde_json::json!({
                    "pool": key.pool,
                    "member": key.member,
                    "action": action,
                    "until": drain.flatten().map(crate::time::rfc3339),
                    "why": why,
                }),
            );
        }
        let mut published = None;
        if was != drained {
            let (event, receiver) = BuildEvent::waited(Change::SetDrained {
                key: key.clone(),
                drained,
            });
            if self.to_builder(event).await == Sent::Yes {
                published = Some(receiver);
            }
        }
        self.persist().await;
        self.status_of(key)
            .map(|status| (status, published))
            .ok_or_else(|| StateError::NotFound(key.pool.clone(), key.member.clone()))
    }

    async fn set_load(
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
    async fn push_load(&mut self, key: &EndpointKey, wait: bool) -> Published {
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
    async fn sweep(&mut self) {
        let now = Instant::now();
        let moved: Vec<EndpointKey> = self
            .members
            .iter()
            .filter(|(_, t)| t.tracker.view(now) != t.sent)
            .map(|(k, _)| k.clone())
            .collect();
        for key in moved {
            self.push_load(&key, false).await;
        }
        let wall = SystemTime::now();
        let expired: Vec<EndpointKey> = self
            .order
            .iter()
            .filter(|key| {
                self.members
                    .get(*key)
                    .and_then(|t| t.drain)
                    .and_then(|d| d.until)
                    .is_some_and(|until| until <= wall)
            })
            .cloned()
            .collect();
        for key in expired {
            // The key was just read from `members`; NotFound cannot happen.
            let _ = self.set_drain(&key, None, "expired").await;
        }
        let now = self.millis_since_epoch();
        let mut stale_keys = Vec::new();
        for (target_key, target) in &self.targets {
            let silent_for =
                Duration::from_millis(now.saturating_sub(target.heartbeat.load(Ordering::Relaxed)));
            let allowed = target_key.interval * 2 + target_key.timeout + Duration::from_secs(1);
            if silent_for <= allowed {
                continue;
            }
            for key in &target.members {
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
                    state = tracked.hysteresis.state().as_str(),
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

    /// Milliseconds since [`Monitor::epoch`], on tokio's clock (the heartbeats' unit).
    fn millis_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// One endpoint's status (a change's reply: not the whole list, which at 10,000
    /// endpoints would cost more than the change).
    fn status_of(&self, key: &EndpointKey) -> Option<EndpointStatus> {
        let target = self
            .targets
            .values()
            .find(|t| t.members.contains(key))
            .map(|t| t.id);
        self.member_status(key, target)
    }

    fn status(&self) -> Vec<EndpointStatus> {
        let target_of: HashMap<&EndpointKey, TargetId> = self
            .targets
            .values()
            .flat_map(|t| t.members.iter().map(move |m| (m, t.id)))
            .collect();
        self.order
            .iter()
            .filter_map(|key| self.member_status(key, target_of.get(key).copied()))
            .collect()
    }

    fn member_status(&self, key: &EndpointKey, target: Option<TargetId>) -> Option<EndpointStatus> {
        let t = self.members.get(key)?;
        Some(EndpointStatus {
            key: key.clone(),
            health: t.effective,
            local: t.hysteresis.state(),
            votes: t.votes.clone().into_iter().collect(),
            tally: t.tally,
            rule: t.rule,
            voting: self.voter.is_some() && self.voting,
            fleet: self.voter.is_some(),
            since: t.effective_since,
            last_check: t.last_check,
            last_error: t.last_error.clone(),
            stale: t.stale,
            probe: t.check.probe.kind(),
            target,
            drain: t.drain,
            load: t.load,
            load_smoothed: t.tracker.view(Instant::now()).ratio(),
            overloaded: t.sent.overloaded,
        })
    }

    /// Records that the state changed; the writer saves it soon, coalescing changes that
    /// arrive while a write is under way into the next one.
    async fn persist(&mut self) {
        let Some(sink) = &mut self.state else {
            return;
        };
        sink.seq += 1;
        if sink.in_flight {
            return;
        }
        let seq = sink.seq;
        let file = self.state_file_now();
        let Some(sink) = &mut self.state else {
            return;
        };
        sink.sent = seq;
        sink.in_flight = true;
        sink.writer.write(seq, file).await;
    }

    /// What the state file holds right now.
    fn state_file_now(&self) -> StateFile {
        StateFile {
            version: store::VERSION,
            written: crate::time::unix(SystemTime::now()),
            members: self
                .order
                .iter()
                .filter_map(|key| {
                    let t = self.members.get(key)?;
                    Some(EndpointRecord {
                        pool: key.pool.clone(),
                        member: key.member.clone(),
                        health: t.hysteresis.state(),
                        since: crate::time::unix(t.since),
                        checked: t.last_check.map(crate::time::unix),
                        reason: t.last_error.clone(),
                        drained: t.drain.is_some(),
                        drained_until: t.drain.and_then(|d| d.until).map(crate::time::unix),
                        load: t.load.map(|l| LoadRecord {
                            sessions: l.sessions,
                            capacity: l.capacity,
                            at: crate::time::unix(l.at),
                        }),
                    })
                })
                .collect(),
        }
    }
}

fn new_tracked(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::restore;
    use crate::loaded::ConfigSource;

    const CONFIG: &str = r#"
[[zone]]
origin = "gto.example.com."
file = "zones/gto.example.com.zone"
[[service]]
name = "vpn.gto.example.com."
pool = "p"
[[pool]]
name = "p"
check = { kind = "tcp", port = 9, interval = "2s", timeout = "1s" }
[[pool.member]]
name = "a"
addresses = ["127.0.0.1"]
[[pool.member]]
name = "b"
addresses = ["127.0.0.1"]
check = { kind = "none" }
"#;

    fn loaded() -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("zones")).unwrap();
        std::fs::write(
            dir.path().join("zones/gto.example.com.zone"),
            crate::config::EMBEDDED_ZONE,
        )
        .unwrap();
        std::fs::write(dir.path().join("gto.toml"), CONFIG).unwrap();
        ConfigSource::File(dir.path().join("gto.toml"))
            .load()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_checker_that_stops_reporting_makes_its_endpoints_stale() {
        let loaded = loaded();
        let (events, _builder) = mpsc::channel(16);
        let token = CancellationToken::new();
        let (handle, task) = spawn(&loaded, None, None, Some(events), token.clone());
        assert!(handle.status().await.iter().all(|s| !s.stale));
        handle.control.send(Control::KillProbes).await.unwrap();

        // 2 x interval + timeout + 1 s = 6 s of silence is allowed; more is not (the first
        // probe may have reported within the first quarter interval).
        tokio::time::sleep(Duration::from_secs(5)).await;
        let a = |status: Vec<EndpointStatus>| status.iter().any(|s| s.key.member == "a" && s.stale);
        assert!(!a(handle.status().await), "stale too early");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(a(handle.status().await), "silent checker not flagged");
        // Its last state is kept, flagged, and an endpoint without probes is never stale.
        let now = handle.status().await;
        assert_eq!(now[0].health, Health::Up);
        assert!(!now[1].stale);
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn restored_down_endpoints_stay_down_until_rechecked_and_none_checks_ignore_it() {
        let loaded = loaded();
        let record = |member: &str| EndpointRecord {
            pool: "p".into(),
            member: member.into(),
            health: Health::Down,
            since: 1,
            checked: Some(1),
            reason: Some("connection refused".into()),
            drained: member == "b",
            drained_until: None,
            load: None,
        };
        let file = StateFile {
            version: store::VERSION,
            written: 1,
            members: vec![record("a"), record("b"), record("gone")],
        };
        let states = restore(&loaded, Some(&file));
        let key = |member: &str| EndpointKey {
            pool: "p".into(),
            member: member.into(),
        };
        assert_eq!(states.down.iter().collect::<Vec<_>>(), vec![&key("a")]);
        assert_eq!(states.drained.iter().collect::<Vec<_>>(), vec![&key("b")]);
        let (events, _builder) = mpsc::channel(16);
        let token = CancellationToken::new();
        let (handle, task) = spawn(&loaded, Some(file), None, Some(events), token.clone());
        let status = handle.status().await;
        assert_eq!((status[0].health, status[0].stale), (Health::Down, true));
        assert_eq!((status[1].health, status[1].stale), (Health::Up, false));
        assert!(status[1].drain.is_some(), "drains survive a restart");
        token.cancel();
        task.await.unwrap();
    }
}
