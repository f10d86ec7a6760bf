//! Health checks: probe tasks per distinct target, a hysteresis machine per endpoint, and
//! a monitor task that turns flips into routing updates.
//!
//! ```text
//! probe task (one per distinct target) ──Report──> monitor ──SetMemberUp──> routing builder
//!                                                     │ on flips
//!                                                     ├──> state file (atomic write)
//!                                                     └──> Flip broadcast, status, log, metrics
//! ```
//!
//! - A brand-new endpoint is up until its probes say otherwise, so a fresh install answers
//!   at once.
//! - At start, the last known state comes from the state file: endpoints that were down
//!   stay out of the first answers; everything restored is marked stale and re-checked at
//!   once (first probes within a quarter interval).
//! - On reload, an endpoint whose identity (pool name + member name) is unchanged keeps its
//!   state, even when its check changed; probe tasks whose target is unchanged keep running.
//! - An endpoint whose probes stop reporting for `2 x interval + timeout + 1 s` is marked
//!   stale (in status and in a warning log line); it keeps its last state, flagged, rather
//!   than looking healthy forever.

pub mod probe;
pub mod scheduler;
pub mod state;
pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Check, Loaded, Probe};
use crate::metrics::{HEALTH_FLIPS_TOTAL, MEMBER_STALE, MEMBER_UP};
use crate::routing::{BuildEvent, MemberKey};
use probe::Prober;
use scheduler::{Report, Schedule, TargetId};
use state::{Health, Hysteresis};
use store::{MemberRecord, StateFile};

/// At most this many probes run at once, however many targets there are.
pub const MAX_CONCURRENT_PROBES: usize = 512;
/// How often staleness is checked.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The health of one endpoint, as status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberStatus {
    /// Which endpoint.
    pub key: MemberKey,
    /// Up or down.
    pub health: Health,
    /// When it last flipped (or was first seen).
    pub since: SystemTime,
    /// When its last probe finished, if any has.
    pub last_check: Option<SystemTime>,
    /// The last probe's failure, when it failed.
    pub last_error: Option<String>,
    /// No fresh result: restored from the state file and not yet re-checked, or its probes
    /// stopped reporting.
    pub stale: bool,
    /// The probe kind ("tcp", "https", "none", ...).
    pub probe: &'static str,
    /// The probe task serving it; endpoints with the same probe and schedule share one.
    pub target: Option<u64>,
}

/// A change of health, announced after the routing snapshot that reflects it is live.
#[derive(Debug, Clone, PartialEq)]
pub struct Flip {
    /// Which endpoint.
    pub key: MemberKey,
    /// The state before.
    pub from: Health,
    /// The state now.
    pub to: Health,
    /// The probe result that flipped it.
    pub reason: String,
}

/// Talks to the running monitor.
#[derive(Debug, Clone)]
pub struct HealthHandle {
    control: mpsc::Sender<Control>,
    flips: broadcast::Sender<Flip>,
    checked: Arc<AtomicUsize>,
}

impl HealthHandle {
    /// Current status of every endpoint, in config order (empty once stopped). Built on
    /// request, so probing costs nothing for status nobody reads.
    pub async fn status(&self) -> Vec<MemberStatus> {
        let (reply, status) = oneshot::channel();
        if self.control.send(Control::Status(reply)).await.is_err() {
            return Vec::new();
        }
        status.await.unwrap_or_default()
    }

    /// How many endpoints have had at least one probe result since start (readiness, benches).
    pub fn checked(&self) -> usize {
        self.checked.load(Ordering::Relaxed)
    }

    /// Flips from now on; each arrives once the snapshot reflecting it is published.
    pub fn subscribe(&self) -> broadcast::Receiver<Flip> {
        self.flips.subscribe()
    }

    /// Applies a reloaded config: keeps state by identity, restarts only changed probes.
    /// Returns once status reflects the new config.
    pub async fn reconfigure(&self, loaded: Arc<Loaded>) {
        let (done, applied) = oneshot::channel();
        // A closed channel means shutdown is under way; nothing to reconfigure.
        if self
            .control
            .send(Control::Reconfigure(loaded, done))
            .await
            .is_ok()
        {
            let _ = applied.await;
        }
    }
}

enum Control {
    Reconfigure(Arc<Loaded>, oneshot::Sender<()>),
    Status(oneshot::Sender<Vec<MemberStatus>>),
    /// Kills every probe task without telling the endpoints: a checker that died.
    #[cfg(test)]
    KillProbes,
}

/// The endpoints the state file says were down and still exist in `loaded` (for the first
/// snapshot), and the file's records.
pub fn restore(loaded: &Loaded, file: Option<&StateFile>) -> Vec<MemberKey> {
    let Some(file) = file else {
        return Vec::new();
    };
    file.members
        .iter()
        .filter(|r| r.health == Health::Down)
        .filter(|r| {
            loaded.config.pools.iter().any(|p| {
                p.name == r.pool
                    && p.members
                        .iter()
                        .any(|m| m.name == r.member && m.check.probe != Probe::None)
            })
        })
        .map(|r| MemberKey {
            pool: r.pool.clone(),
            member: r.member.clone(),
        })
        .collect()
}

/// Starts the monitor and the probe tasks for `loaded`.
pub fn spawn(
    loaded: &Loaded,
    restored: Option<StateFile>,
    state_file: Option<PathBuf>,
    events: mpsc::Sender<BuildEvent>,
    token: CancellationToken,
) -> (HealthHandle, JoinHandle<()>) {
    let (control, control_rx) = mpsc::channel(16);
    let (reports_tx, reports) = mpsc::channel(4096);
    let (flips, _) = broadcast::channel(256);
    let checked = Arc::new(AtomicUsize::new(0));
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
        state_file,
        token: token.clone(),
    };
    let restored: HashMap<MemberKey, MemberRecord> = restored
        .map(|file| {
            file.members
                .into_iter()
                .map(|r| {
                    let key = MemberKey {
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
            checked,
        },
        task,
    )
}

/// What the monitor keeps per endpoint.
struct Tracked {
    hysteresis: Hysteresis,
    since: SystemTime,
    last_check: Option<SystemTime>,
    last_error: Option<String>,
    /// When the last report arrived, on tokio's clock.
    last_report: Instant,
    stale: bool,
    check: Check,
}

/// A running probe task and the endpoints it serves.
struct Target {
    id: TargetId,
    members: Vec<MemberKey>,
    token: CancellationToken,
}

/// Probe tasks are shared by endpoints with the same probe and schedule.
#[derive(Clone, PartialEq, Eq, Hash)]
struct TargetKey {
    probe: Probe,
    interval: Duration,
    timeout: Duration,
}

struct Monitor {
    members: HashMap<MemberKey, Tracked>,
    /// Endpoints in config order, for status.
    order: Vec<MemberKey>,
    targets: HashMap<TargetKey, Target>,
    /// Which target a probe report is from.
    by_id: HashMap<TargetId, TargetKey>,
    /// Endpoints with at least one result (shared with the handle).
    checked: Arc<AtomicUsize>,
    next_id: TargetId,
    limit: Arc<Semaphore>,
    reports_tx: mpsc::Sender<Report>,
    events: mpsc::Sender<BuildEvent>,
    flips: broadcast::Sender<Flip>,
    state_file: Option<PathBuf>,
    token: CancellationToken,
}

impl Monitor {
    async fn run(
        mut self,
        mut control: mpsc::Receiver<Control>,
        mut reports: mpsc::Receiver<Report>,
        token: CancellationToken,
    ) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(report) = reports.recv() => self.on_report(report).await,
                Some(control) = control.recv() => match control {
                    Control::Status(reply) => {
                        let _ = reply.send(self.status());
                    }
                    Control::Reconfigure(loaded, done) => {
                        self.apply(&loaded, &HashMap::new());
                        let _ = done.send(());
                        self.persist().await;
                    }
                    #[cfg(test)]
                    Control::KillProbes => {
                        for target in self.targets.values() {
                            target.token.cancel();
                        }
                    }
                },
                _ = sweep.tick() => self.sweep(),
                () = token.cancelled() => break,
            }
        }
        for target in self.targets.values() {
            target.token.cancel();
        }
        self.limit.close();
        self.persist().await;
    }

    /// Brings members and probe tasks in line with `loaded`.
    fn apply(&mut self, loaded: &Loaded, restored: &HashMap<MemberKey, MemberRecord>) {
        let now = SystemTime::now();
        let mut wanted: HashMap<TargetKey, Vec<MemberKey>> = HashMap::new();
        let mut members = HashMap::new();
        let mut order = Vec::new();
        for pool in &loaded.config.pools {
            for member in &pool.members {
                let key = MemberKey {
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
                        kept
                    }
                    None => new_tracked(&check, restored.get(&key), now),
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
                metrics::gauge!(MEMBER_UP, "pool" => key.pool.clone(), "member" => key.member.clone())
                    .set(if tracked.hysteresis.state() == Health::Up { 1.0 } else { 0.0 });
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
                Ok(prober) => prober,
                Err(error) => {
                    warn!(%error, members = ?keys, "health check cannot run; endpoints keep their state");
                    continue;
                }
            };
            let id = self.next_id;
            self.next_id += 1;
            let token = self.token.child_token();
            tokio::spawn(scheduler::probe_loop(
                id,
                prober,
                key.probe.kind(),
                Schedule {
                    interval: key.interval,
                    timeout: key.timeout,
                },
                self.limit.clone(),
                self.reports_tx.clone(),
                token.clone(),
            ));
            self.by_id.insert(id, key.clone());
            self.targets.insert(
                key,
                Target {
                    id,
                    members: keys,
                    token,
                },
            );
        }
    }

    async fn on_report(&mut self, report: Report) {
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
        let reason = match &report.result {
            Ok(()) => "probe succeeded".to_string(),
            Err(error) => error.to_string(),
        };
        let mut flips = Vec::new();
        for key in &target.members {
            let Some(tracked) = members.get_mut(key) else {
                continue;
            };
            if tracked.last_check.is_none() {
                checked.fetch_add(1, Ordering::Relaxed);
            }
            tracked.last_check = Some(report.at);
            tracked.last_error = report.result.as_ref().err().map(ToString::to_string);
            tracked.last_report = Instant::now();
            if tracked.stale {
                tracked.stale = false;
                metrics::gauge!(MEMBER_STALE, "pool" => key.pool.clone(), "member" => key.member.clone()).set(0.0);
            }
            let from = tracked.hysteresis.state();
            if let Some(to) = tracked.hysteresis.observe(report.result.is_ok()) {
                tracked.since = report.at;
                flips.push(Flip {
                    key: key.clone(),
                    from,
                    to,
                    reason: reason.clone(),
                });
            }
        }
        if flips.is_empty() {
            return;
        }
        for flip in &flips {
            info!(
                pool = %flip.key.pool,
                member = %flip.key.member,
                old = flip.from.as_str(),
                new = flip.to.as_str(),
                reason = %flip.reason,
                "endpoint health changed"
            );
            metrics::counter!(HEALTH_FLIPS_TOTAL, "to" => flip.to.as_str()).increment(1);
            metrics::gauge!(MEMBER_UP, "pool" => flip.key.pool.clone(), "member" => flip.key.member.clone())
                .set(if flip.to == Health::Up { 1.0 } else { 0.0 });
            let (done, published) = oneshot::channel();
            let event = BuildEvent::SetMemberUp {
                key: flip.key.clone(),
                up: flip.to == Health::Up,
                done: Some(done),
            };
            if self.events.send(event).await.is_ok() {
                // Wait for the snapshot, so a Flip subscriber sees answers that reflect it.
                let _ = published.await;
            }
        }
        self.persist().await;
        for flip in flips {
            // No subscribers is fine.
            let _ = self.flips.send(flip);
        }
    }

    /// Marks endpoints whose probes stopped reporting.
    fn sweep(&mut self) {
        let now = Instant::now();
        for key in &self.order {
            let Some(tracked) = self.members.get_mut(key) else {
                continue;
            };
            if tracked.check.probe == Probe::None || tracked.stale {
                continue;
            }
            let allowed =
                tracked.check.interval * 2 + tracked.check.timeout + Duration::from_secs(1);
            if now.duration_since(tracked.last_report) > allowed {
                tracked.stale = true;
                warn!(
                    pool = %key.pool,
                    member = %key.member,
                    state = tracked.hysteresis.state().as_str(),
                    silent_for = ?now.duration_since(tracked.last_report),
                    "health checks stopped reporting; endpoint is stale"
                );
                metrics::gauge!(MEMBER_STALE, "pool" => key.pool.clone(), "member" => key.member.clone()).set(1.0);
            }
        }
    }

    fn status(&self) -> Vec<MemberStatus> {
        let target_of: HashMap<&MemberKey, TargetId> = self
            .targets
            .values()
            .flat_map(|t| t.members.iter().map(move |m| (m, t.id)))
            .collect();
        self.order
            .iter()
            .filter_map(|key| {
                let t = self.members.get(key)?;
                Some(MemberStatus {
                    key: key.clone(),
                    health: t.hysteresis.state(),
                    since: t.since,
                    last_check: t.last_check,
                    last_error: t.last_error.clone(),
                    stale: t.stale,
                    probe: t.check.probe.kind(),
                    target: target_of.get(key).copied(),
                })
            })
            .collect()
    }

    async fn persist(&self) {
        let Some(path) = self.state_file.clone() else {
            return;
        };
        let file = StateFile {
            version: store::VERSION,
            written: store::unix(SystemTime::now()),
            members: self
                .order
                .iter()
                .filter_map(|key| {
                    let t = self.members.get(key)?;
                    Some(MemberRecord {
                        pool: key.pool.clone(),
                        member: key.member.clone(),
                        health: t.hysteresis.state(),
                        since: store::unix(t.since),
                        checked: t.last_check.map(store::unix),
                        reason: t.last_error.clone(),
                    })
                })
                .collect(),
        };
        match tokio::task::spawn_blocking(move || store::save(&path, &file)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "could not write the state file"),
            Err(error) => warn!(%error, "state file writer failed"),
        }
    }
}

fn new_tracked(check: &Check, restored: Option<&MemberRecord>, now: SystemTime) -> Tracked {
    let (health, since, last_check, last_error, stale) = match restored {
        // Restored state counts until a fresh result says otherwise; it is stale till then.
        Some(record) if check.probe != Probe::None => (
            record.health,
            store::from_unix(record.since),
            record.checked.map(store::from_unix),
            record.reason.clone(),
            true,
        ),
        _ => (Health::Up, now, None, None, false),
    };
    Tracked {
        hysteresis: Hysteresis::new(health, check.rise, check.fall),
        since,
        last_check,
        last_error,
        last_report: Instant::now(),
        stale,
        check: check.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;

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
        let (handle, task) = spawn(&loaded, None, None, events, token.clone());
        assert!(handle.status().await.iter().all(|s| !s.stale));
        handle.control.send(Control::KillProbes).await.unwrap();

        // 2 x interval + timeout + 1 s = 6 s of silence is allowed; more is not (the first
        // probe may have reported within the first quarter interval).
        tokio::time::sleep(Duration::from_secs(5)).await;
        let a = |status: Vec<MemberStatus>| status.iter().any(|s| s.key.member == "a" && s.stale);
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
        let record = |member: &str| MemberRecord {
            pool: "p".into(),
            member: member.into(),
            health: Health::Down,
            since: 1,
            checked: Some(1),
            reason: Some("connection refused".into()),
        };
        let file = StateFile {
            version: store::VERSION,
            written: 1,
            members: vec![record("a"), record("b"), record("gone")],
        };
        let down = restore(&loaded, Some(&file));
        assert_eq!(
            down,
            vec![MemberKey {
                pool: "p".into(),
                member: "a".into()
            }]
        );
        let (events, _builder) = mpsc::channel(16);
        let token = CancellationToken::new();
        let (handle, task) = spawn(&loaded, Some(file), None, events, token.clone());
        let status = handle.status().await;
        assert_eq!((status[0].health, status[0].stale), (Health::Down, true));
        assert_eq!((status[1].health, status[1].stale), (Health::Up, false));
        token.cancel();
        task.await.unwrap();
    }
}
