//! The monitor task: the one owner of every endpoint's health, drain and load. It folds
//! probe reports (in batches), operator changes and reloads into routing updates, keeps
//! the state file through its coalescing writer, and flags probes that fall silent.

mod operator;
mod persist;
mod report;
mod targets;
mod tracked;
mod verdicts;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::tracked::{StateSink, Target, TargetKey, Tracked};
use super::MAX_CONCURRENT_PROBES;
use super::handle::{Control, HealthHandle};
use super::scheduler::{Report, TargetId};
use super::status::{Flip, Load};
use super::store::{self, EndpointRecord, StateFile};
use super::votes::{Vote, Voter};
use crate::loaded::Loaded;
use crate::routing::{BuildEvent, EndpointKey};

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

/// With `[cluster]`, how long after start an endpoint's health waits for the fleet's votes
/// before this instance's own verdict may change it: a restarting vantage point that
/// cannot reach an appliance the others reach does not take it out of the answers alone.
pub const START_GRACE: Duration = Duration::from_secs(10);

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
    let (simulated, simulated_rx) = mpsc::channel(64);
    let (flips, _) = broadcast::channel(256);
    let (loads, _) = broadcast::channel(1024);
    let (verdicts, _) = broadcast::channel(4096);
    let checked = Arc::new(AtomicUsize::new(0));
    let (saved_tx, saved) = watch::channel(store::Written::default());
    let follow = loaded.config.server.state_file_follow_symlinks;
    let spare_lists = super::handle::SpareLists::default();
    let mut monitor = Monitor {
        spare_lists: spare_lists.clone(),
        members: tracked::Members::default(),
        tables: HashMap::default(),
        order: Vec::new(),
        targets: HashMap::new(),
        by_id: HashMap::new(),
        simulated_targets: None,
        checked: checked.clone(),
        next_id: 0,
        limit: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
        exec_slots: Arc::new(Semaphore::new(loaded.config.health.exec_limit)),
        exec_limit: loaded.config.health.exec_limit,
        reports_tx,
        events,
        flips: flips.clone(),
        loads: loads.clone(),
        verdicts: verdicts.clone(),
        voter: loaded.config.cluster.as_ref().map(|c| Voter {
            instance: c.instance.clone(),
            region: c.region.clone(),
        }),
        voters: tracked::Voters::default(),
        voting: false,
        runtime: loaded.runtime.clone(),
        grace_until: loaded
            .config
            .cluster
            .as_ref()
            .map(|_| Instant::now() + START_GRACE),
        bus: None,
        latency: loaded.config.latency.clone(),
        rum: Default::default(),
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
    let task = tokio::spawn(monitor.run(control_rx, reports, simulated_rx, token));
    (
        HealthHandle {
            control,
            flips,
            loads,
            verdicts,
            checked,
            saved,
            simulated,
            votes_in_flight: Arc::new(Semaphore::new(super::handle::VOTES_IN_FLIGHT)),
            spare_lists,
        },
        task,
    )
}

struct Monitor {
    /// Members added at run time (the running config's), kept in the state file.
    runtime: Vec<crate::runtime::RuntimeMember>,
    members: tracked::Members,
    /// Vote lists applied, handed back to the reader of the fleet's documents.
    spare_lists: super::handle::SpareLists,
    /// The other instances' votes, by pool ([`tracked::VoteTable`]; each endpoint knows
    /// its seat).
    tables: HashMap<String, tracked::VoteTable, foldhash::fast::RandomState>,
    /// Endpoints in config order, for status.
    order: Vec<EndpointKey>,
    targets: HashMap<TargetKey, Target>,
    /// Which target a probe report is from.
    by_id: HashMap<TargetId, TargetKey>,
    /// The fleet simulator's index of main-check targets by endpoint (built on its first
    /// use, dropped when the targets change); None outside the simulator.
    simulated_targets: Option<HashMap<EndpointKey, TargetId>>,
    /// Endpoints with at least one result (shared with the handle).
    checked: Arc<AtomicUsize>,
    next_id: TargetId,
    limit: Arc<Semaphore>,
    /// At most `[health] exec_limit` exec checks at once; resized on reload.
    exec_slots: Arc<Semaphore>,
    /// The limit `exec_slots` was sized for.
    exec_limit: usize,
    reports_tx: mpsc::Sender<Report>,
    events: Option<mpsc::Sender<BuildEvent>>,
    flips: broadcast::Sender<Flip>,
    /// Loads read by this instance's probes, for the fleet.
    loads: broadcast::Sender<(EndpointKey, Load)>,
    /// This instance's own verdicts as they change, for the fleet.
    verdicts: broadcast::Sender<(EndpointKey, Vote)>,
    /// Who this instance is in the fleet (None: no `[cluster]`).
    voter: Option<Voter>,
    /// The other instances whose votes the endpoints keep, by number.
    voters: tracked::Voters,
    /// The fleet's votes count (the store is reachable).
    voting: bool,
    /// With a fleet, until the first votes count or [`START_GRACE`] is over: health does
    /// not change on this instance's own verdict.
    grace_until: Option<Instant>,
    /// Where changes are reported as events, once set.
    bus: Option<crate::events::Events>,
    /// How round trips are measured and smoothed.
    latency: crate::config::LatencySettings,
    /// Real-user measurements, by client prefix.
    rum: super::rum::RumStore,
    state: Option<StateSink>,
    /// Origin of the targets' heartbeats.
    epoch: Instant,
    token: CancellationToken,
}

/// Reports handled in one go before the routing snapshot is updated: a mass outage is a
/// few rebuilds, not one per endpoint.
const REPORT_BATCH: usize = 4096;

/// Sleeps until `deadline` (wall clock; a moment past it, so the sweep finds it due), or
/// forever without one.
async fn drain_deadline(deadline: Option<std::time::SystemTime>) {
    match deadline {
        Some(deadline) => {
            let left = deadline
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(left + Duration::from_millis(1)).await;
        }
        None => std::future::pending().await,
    }
}

impl Monitor {
    async fn run(
        mut self,
        mut control: mpsc::Receiver<Control>,
        mut reports: mpsc::Receiver<Report>,
        mut simulated: mpsc::Receiver<Vec<(EndpointKey, bool, u32)>>,
        token: CancellationToken,
    ) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(REPORT_BATCH);
        // Drains and windows change only by the control messages that say so and by
        // sweeps, never by probe reports or votes: the deadline is computed again after
        // those alone (a scan of every
        // endpoint per batch of reports was most of the monitor's CPU at 10,000).
        let mut deadline = self.next_drain_deadline();
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
                Some(outcomes) = simulated.recv() => {
                    let reports = self.simulated(outcomes);
                    self.on_reports(reports).await;
                }
                Some(control) = control.recv() => {
                    let drains = control.may_change_drains();
                    self.on_control(control).await;
                    if drains {
                        deadline = self.next_drain_deadline();
                    }
                }
                _ = sweep.tick() => {
                    self.sweep().await;
                    deadline = self.next_drain_deadline();
                }
                // A drain's end or a window's start, on time rather than at the next sweep.
                () = drain_deadline(deadline) => {
                    self.sweep_drains().await;
                    deadline = self.next_drain_deadline();
                }
                () = token.cancelled() => break,
            }
        }
        for target in self.targets.values() {
            target.token.cancel();
        }
        self.limit.close();
        self.exec_slots.close();
        // The last write always happens, whatever the gap since the one before.
        if let Some(sink) = self.state.take() {
            let file = self.state_file_now();
            sink.writer.close(Some((sink.seq, file))).await;
        }
    }

    /// One request from the handle (admin API, fleet, reloads).
    async fn on_control(&mut self, control: Control) {
        match control {
            Control::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Control::Drain(key, until, note, reply) => {
                let result = self.set_drain(&key, Some((until, note)), "requested").await;
                let _ = reply.send(result.map(|applied| self.saved_by(applied)));
            }
            Control::DrainSet(keys, planned, why, reply) => {
                let result = self.set_drains(&keys, planned, why).await;
                let _ = reply.send(result.map(|(statuses, published)| {
                    crate::health::handle::AppliedMany {
                        statuses,
                        seq: self.saving(),
                        published,
                    }
                }));
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
                self.runtime = loaded.runtime.clone();
                self.latency = loaded.config.latency.clone();
                self.apply(&loaded, &HashMap::new());
                // Endpoints the reload removed have no measurements any more.
                let members = &self.members;
                self.rum.retain_endpoints(|key| members.contains_key(key));
                self.reconsider_all("the config changed").await;
                let _ = done.send(());
                self.persist().await;
            }
            // The batch's slot is free once it is applied.
            Control::Votes(changes, _slot) => self.take_votes(changes).await,
            Control::ReplaceVotes(all) => {
                let mut all = all;
                let me = self.voter.as_ref().map(|me| me.instance.as_str());
                let region = self.voter.as_ref().and_then(|me| me.region.as_deref());
                for table in self.tables.values_mut() {
                    table.clear();
                }
                for (key, t) in self.members.iter() {
                    let Some(table) = self.tables.get_mut(&key.pool) else {
                        continue;
                    };
                    let votes = all.remove(key).unwrap_or_default();
                    for (voter, vote) in votes {
                        if Some(voter.as_str()) != me {
                            table.set(self.voters.id(&voter), t.seat, Some(vote), region);
                        }
                    }
                }
                for key in self.order.clone() {
                    self.send_rtts(&key).await;
                }
                self.reconsider_all("the fleet's votes were read again")
                    .await;
            }
            Control::Voting(voting) => {
                if voting && self.grace_until.take().is_some() {
                    // The fleet's votes are here: decide with them from now on.
                    self.voting = true;
                    self.reconsider_all("the fleet's votes count").await;
                } else if self.voting != voting {
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
            Control::Rum(batch, reply) => {
                let checked = batch.check(|key| self.members.contains_key(key));
                let result = match checked {
                    Ok(measurements) => {
                        let taken = measurements.len();
                        let max = self.latency.rum_max_prefixes;
                        self.rum.add(measurements, Instant::now(), max);
                        self.send_rum().await;
                        Ok((taken, self.rum.len()))
                    }
                    Err(errors) => Err(errors),
                };
                let _ = reply.send(result);
            }
            #[cfg(test)]
            Control::KillProbes => {
                for target in self.targets.values() {
                    target.token.cancel();
                }
            }
        }
    }

    /// Hands the builder the real-user measurements kept.
    async fn send_rum(&self) {
        let change = crate::routing::Change::SetRum(self.rum.prefixes());
        let _ = self.to_builder(BuildEvent::new(change)).await;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{EndpointStatus, Health, PoolVoteChanges, VoteChanges, restore};
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
        loaded_from(CONFIG)
    }

    /// `config` loaded from a file beside the embedded zone.
    fn loaded_from(config: &str) -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("zones")).unwrap();
        std::fs::write(
            dir.path().join("zones/gto.example.com.zone"),
            crate::config::EMBEDDED_ZONE,
        )
        .unwrap();
        std::fs::write(dir.path().join("gto.toml"), config).unwrap();
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
            drained_by: (member == "b").then(|| "oncall@192.0.2.7".to_string()),
            drain_reason: (member == "b").then(|| "maintenance".to_string()),
            load: None,
            v6: None,
            window: None,
        };
        let file = StateFile {
            version: store::VERSION,
            written: 1,
            runtime_members: Vec::new(),
            members: vec![record("a"), record("b"), record("gone")],
        };
        let states = restore(&loaded, Some(&file));
        let key = |member: &str| EndpointKey {
            pool: "p".into(),
            member: member.into(),
        };
        let down: Vec<_> = states
            .endpoints
            .iter()
            .filter(|(_, s)| s.down)
            .map(|(k, _)| k)
            .collect();
        let drained: Vec<_> = states
            .endpoints
            .iter()
            .filter(|(_, s)| s.drained)
            .map(|(k, _)| k)
            .collect();
        assert_eq!(down, vec![&key("a")]);
        assert_eq!(drained, vec![&key("b")]);
        let (events, _builder) = mpsc::channel(16);
        let token = CancellationToken::new();
        let (handle, task) = spawn(&loaded, Some(file), None, Some(events), token.clone());
        let status = handle.status().await;
        assert_eq!((status[0].health, status[0].stale), (Health::Down, true));
        assert_eq!((status[1].health, status[1].stale), (Health::Up, false));
        assert!(status[1].drain.is_some(), "drains survive a restart");
        assert_eq!(
            status[1].drain_note.reason.as_deref(),
            Some("maintenance"),
            "and who drained it and why"
        );
        token.cancel();
        task.await.unwrap();
    }

    /// [`CONFIG`] in a fleet (its etcd never answers: the votes come from the test), its
    /// members probed daily (the first probe comes within a quarter interval), so that
    /// within a test only votes move them.
    fn in_a_fleet() -> Loaded {
        loaded_from(&fleet_config())
    }

    /// The text of [`in_a_fleet`]'s config.
    fn fleet_config() -> String {
        CONFIG
            .replace(
                "check = { kind = \"none\" }\n",
                "\n[cluster]\netcd = [\"http://127.0.0.1:9\"]\nname = \"t\"\ninstance = \"me\"\n",
            )
            .replace("interval = \"2s\"", "interval = \"24h\"")
    }

    /// A vote written at `at`.
    fn vote(up: bool, at: u64) -> Vote {
        Vote {
            up,
            since: at,
            error: (!up).then(|| format!("refused at {at}").into()),
            rtt_us: None,
            region: None,
            stale: false,
            at,
            v4: None,
            v6: None,
        }
    }

    /// The votes held on `member` as (voter, up, `when` of the vote).
    fn held(
        status: &[EndpointStatus],
        member: &str,
        when: fn(&Vote) -> u64,
    ) -> Vec<(String, bool, u64)> {
        status
            .iter()
            .find(|s| s.key.member == member)
            .map(|s| {
                s.votes
                    .iter()
                    .map(|(voter, v)| (voter.clone(), v.up, when(v)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Changed votes on pool `p`.
    fn pool(members: Vec<(&str, Option<Vote>)>) -> Vec<PoolVoteChanges> {
        let mut changes = PoolVoteChanges::with_capacity("p".to_string(), members.len());
        for (member, vote) in members {
            changes.push(member, vote);
        }
        vec![changes]
    }

    #[tokio::test]
    async fn votes_read_together_land_on_each_endpoint_in_the_order_read() {
        let loaded = in_a_fleet();
        let (events, _builder) = mpsc::channel(16);
        let token = CancellationToken::new();
        let (handle, task) = spawn(&loaded, None, None, Some(events), token.clone());
        // Three documents of two voters and one of this instance, read together; the
        // second lists its members out of order (removals come after changes).
        let mut changes = VoteChanges::default();
        changes.push(
            "v1".into(),
            pool(vec![
                ("a", Some(vote(false, 1))),
                ("b", Some(vote(true, 1))),
            ]),
        );
        changes.push(
            "v2".into(),
            pool(vec![
                ("b", Some(vote(false, 2))),
                ("a", Some(vote(true, 2))),
            ]),
        );
        changes.push("me".into(), pool(vec![("a", Some(vote(false, 3)))]));
        changes.push("v1".into(), pool(vec![("a", Some(vote(true, 4)))]));
        assert_eq!(changes.len(), 6);
        handle.set_votes(changes).await;
        let held = |status: &[EndpointStatus], member: &str| held(status, member, |v| v.since);
        let status = handle.status().await;
        // v1's later document wins on a; this instance's own is never a vote.
        assert_eq!(
            held(&status, "a"),
            [("v1".into(), true, 4), ("v2".into(), true, 2)]
        );
        assert_eq!(
            held(&status, "b"),
            [("v1".into(), true, 1), ("v2".into(), false, 2)]
        );

        // A withdrawal and an unknown member beside a vote, in one more batch.
        let mut changes = VoteChanges::default();
        changes.push(
            "v2".into(),
            pool(vec![("b", None), ("zz", Some(vote(false, 5)))]),
        );
        handle.set_votes(changes).await;
        let status = handle.status().await;
        assert_eq!(held(&status, "b"), [("v1".to_string(), true, 1)]);
        assert_eq!(held(&status, "a").len(), 2);
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn applied_vote_lists_go_back_to_the_reader_unless_they_are_big() {
        let loaded = in_a_fleet();
        let (events, _builder) = mpsc::channel(16);
        let token = CancellationToken::new();
        let (handle, task) = spawn(&loaded, None, None, Some(events), token.clone());
        let big = super::super::handle::SPARE_LIST_VOTES + 1;
        for room in [big, 100] {
            let mut list = PoolVoteChanges::with_capacity("p".into(), room);
            list.push("a", Some(vote(false, 1)));
            let mut changes = VoteChanges::default();
            changes.push("v1".into(), vec![list]);
            handle.set_votes(changes).await;
            // Applied once status answers (the control channel is in order).
            let status = handle.status().await;
            assert_eq!(held(&status, "a", |v| v.at), [("v1".into(), false, 1)]);
            let again = handle.vote_list("q");
            if room == big {
                assert_eq!(again.capacity(), 0, "a big pool's list is not kept");
            } else {
                assert!(
                    again.capacity() >= room,
                    "the list comes back with its room"
                );
                assert!(again.is_empty());
                assert_eq!(again.pool, "q");
            }
        }
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn votes_stay_on_their_endpoints_when_a_reload_changes_the_members() {
        let fleet = in_a_fleet();
        let (events, _builder) = mpsc::channel(16);
        let token = CancellationToken::new();
        let (handle, task) = spawn(&fleet, None, None, Some(events), token.clone());
        let mut changes = VoteChanges::default();
        changes.push(
            "v1".into(),
            pool(vec![
                ("a", Some(vote(false, 1))),
                ("b", Some(vote(false, 1))),
            ]),
        );
        changes.push("v2".into(), pool(vec![("b", Some(vote(false, 2)))]));
        handle.set_votes(changes).await;
        let held = |status: &[EndpointStatus], member: &str| held(status, member, |v| v.at);
        // "a" goes, "0" comes before "b" and "c" after it: every seat moves.
        let config = fleet_config()
            .replace("name = \"a\"", "name = \"0\"")
            .replace(
                "[[pool.member]]\nname = \"b\"",
                "[[pool.member]]\nname = \"c\"\naddresses = [\"127.0.0.1\"]\n[[pool.member]]\nname = \"b\"",
            );
        handle.reconfigure(Arc::new(loaded_from(&config))).await;
        let status = handle.status().await;
        let members: Vec<&str> = status.iter().map(|s| s.key.member.as_str()).collect();
        assert_eq!(members, ["0", "c", "b"]);
        assert_eq!(
            held(&status, "b"),
            [("v1".into(), false, 1), ("v2".into(), false, 2)],
            "the votes on a member that stays are kept"
        );
        assert!(held(&status, "0").is_empty() && held(&status, "c").is_empty());
        // Later votes land on the endpoints they name in their new seats.
        let mut changes = VoteChanges::default();
        changes.push(
            "v2".into(),
            pool(vec![
                ("0", Some(vote(false, 3))),
                ("b", Some(vote(true, 3))),
                ("c", Some(vote(true, 3))),
            ]),
        );
        handle.set_votes(changes).await;
        let status = handle.status().await;
        assert_eq!(held(&status, "0"), [("v2".into(), false, 3)]);
        assert_eq!(held(&status, "c"), [("v2".into(), true, 3)]);
        assert_eq!(
            held(&status, "b"),
            [("v1".into(), false, 1), ("v2".into(), true, 3)]
        );
        token.cancel();
        task.await.unwrap();
    }

    /// A reader of the fleet's documents gets ahead of a busy monitor by at most
    /// [`super::super::handle::VOTES_IN_FLIGHT`] batches: the next waits until one is
    /// applied, and none is lost or reordered.
    #[tokio::test(start_paused = true)]
    async fn a_busy_monitor_holds_back_the_votes_read_for_it() {
        // Probed every 2 s (port 9 refuses): a flip comes soon, and the monitor waits for
        // the snapshot that shows it, which this builder gives when the test says.
        let fleet = CONFIG.replace(
            "check = { kind = \"none\" }\n",
            "\n[cluster]\netcd = [\"http://127.0.0.1:9\"]\nname = \"t\"\ninstance = \"me\"\n",
        );
        let loaded = loaded_from(&fleet);
        let (events, mut builder) = mpsc::channel(16);
        let token = CancellationToken::new();
        let (handle, task) = spawn(&loaded, None, None, Some(events), token.clone());
        let done = loop {
            let event = builder.recv().await.expect("a flip reaches the builder");
            if let Some(done) = event.done {
                break done;
            }
        };
        let down = |voter: &str, at: u64| {
            let mut changes = VoteChanges::default();
            changes.push(voter.into(), pool(vec![("a", Some(vote(false, at)))]));
            changes
        };
        // Two batches go out while the monitor is busy; the next waits for a slot (that
        // it does not go out cannot be awaited: a minute of the paused clock is given).
        handle.set_votes(down("v1", 1)).await;
        handle.set_votes(down("v2", 2)).await;
        let third = handle.set_votes(down("v3", 3));
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut third)
                .await
                .is_err(),
            "a third batch went out while two were unapplied"
        );
        // The snapshot is live (and every later one at once): the third goes out.
        let _ = done.send(1);
        let answering = tokio::spawn(async move {
            while let Some(event) = builder.recv().await {
                if let Some(done) = event.done {
                    let _ = done.send(1);
                }
            }
        });
        third.await;
        let status = handle.status().await;
        let voters: Vec<(String, u64)> = status
            .iter()
            .find(|s| s.key.member == "a")
            .map(|s| {
                s.votes
                    .iter()
                    .map(|(voter, v)| (voter.clone(), v.at))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            voters,
            [("v1".into(), 1), ("v2".into(), 2), ("v3".into(), 3)]
        );
        token.cancel();
        task.await.unwrap();
        answering.abort();
    }
}
