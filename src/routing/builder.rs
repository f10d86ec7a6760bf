//! The builder task: the only writer of the routing table. It folds changes (reloads,
//! flips, drains, loads, re-signing) into the next snapshot, built by [`super::build`]'s
//! pure functions, and publishes it with one atomic store; a burst of changes costs one
//! build.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::build::{EndpointStates, Prepared, build_prepared, prepare, prepare_after};
use super::handle::RoutingHandle;
use super::wire::FastIndex;
use super::{EndpointKey, Selection};
use crate::loaded::Loaded;
use crate::metrics::{SERVICE_SELECTION, SNAPSHOT_BUILD_SECONDS, SNAPSHOT_GENERATION};
use crate::policy::load::LoadView;

/// A change for the builder to fold into the next snapshot, and who waits for it.
#[derive(Debug)]
pub struct BuildEvent {
    /// What changed.
    pub change: Change,
    /// Told the generation once a snapshot reflecting the change is live (or, when the
    /// change changes nothing, the current one).
    pub done: Option<oneshot::Sender<u64>>,
}

impl BuildEvent {
    /// A change nobody waits for.
    pub fn new(change: Change) -> Self {
        Self { change, done: None }
    }

    /// A change, and the receiver told the generation that reflects it.
    pub fn waited(change: Change) -> (Self, oneshot::Receiver<u64>) {
        let (done, published) = oneshot::channel();
        (
            Self {
                change,
                done: Some(done),
            },
            published,
        )
    }
}

/// What a [`BuildEvent`] changes.
#[derive(Debug)]
pub enum Change {
    /// Replace config and zones.
    Reload(Arc<Loaded>),
    /// An operator drained an endpoint (no new answers) or undrained it.
    SetDrained {
        /// Which endpoint.
        key: EndpointKey,
        /// Drained or not.
        drained: bool,
    },
    /// Several endpoints drained or undrained together (a site, a region, a pool, a
    /// window): one rebuild.
    SetDrainedMany(Vec<(EndpointKey, bool)>),
    /// An endpoint's load, as ranking sees it, changed.
    SetLoad {
        /// Which endpoint.
        key: EndpointKey,
        /// The new view.
        view: LoadView,
    },
    /// Sign everything again when `due` (signatures near expiry, or a key event is due)
    /// or when `rekeyed` brings keys that differ from those in use. The keys were read
    /// (and due rollovers started) off the builder's task ([`super::resign`]); a re-read
    /// that found nothing new (or only a file it cannot use) signs nothing.
    Resign {
        /// Signatures must be made again whatever the keys (expiry, a key event).
        due: bool,
        /// The config with its key directories read again, if they changed.
        rekeyed: Option<Rekeyed>,
    },
    /// Liveness check (the watchdog): answered with the current generation, nothing built.
    Ping,
    /// The fresh real-user measurements changed (a report came, or some aged out).
    SetRum(Arc<[crate::health::rum::RumPrefix]>),
    /// The round trips measured to an endpoint, by vantage, changed.
    SetRtt {
        /// Which endpoint.
        key: EndpointKey,
        /// Its round trips now.
        rtts: Arc<[crate::policy::latency::VantageRtt]>,
    },
    /// Health checks took an endpoint up or down.
    SetMemberUp {
        /// Which endpoint.
        key: EndpointKey,
        /// Its new state.
        up: bool,
    },
    /// An up endpoint's address families left out of answers changed (`family = "each"`).
    SetWithheld {
        /// Which endpoint.
        key: EndpointKey,
        /// The families its own probes say are down.
        withheld: super::build::Withheld,
    },
}

/// Key directories read again for a config: applied only while the builder still serves
/// `base` (a reload in between read its own keys).
#[derive(Debug)]
pub struct Rekeyed {
    /// The config the keys were read for.
    pub base: Arc<Loaded>,
    /// `base` with the keys (and the directories' fingerprints) read again.
    pub fresh: Arc<Loaded>,
    /// Whether any zone's keys differ from `base`'s.
    pub keys_changed: bool,
}

/// Owns everything a snapshot is built from, and the handle it publishes to.
#[derive(Debug)]
pub struct Builder {
    loaded: Arc<Loaded>,
    prepared: Prepared,
    states: EndpointStates,
    generation: u64,
    handle: RoutingHandle,
    /// How each GSLB name selected its endpoints in the last snapshot.
    selections: HashMap<String, Selection>,
    /// Latency-ranked names: the first endpoint per (name, client region), to tell when
    /// a region's best endpoint changes.
    leaders: HashMap<(String, String), String>,
    /// Where changes are reported as events, once set.
    bus: Option<crate::events::Events>,
    /// The config in use, for key maintenance ([`Builder::configs`]).
    configs: watch::Sender<Arc<Loaded>>,
    /// Counts preparations: an index built for an earlier one is dropped.
    epoch: u64,
    /// The preparation whose index a thread is building, if any.
    indexing: Option<u64>,
    /// Snapshots replaced, with when: held for [`RETIRE_AFTER`] and then dropped here, so
    /// that a query thread that still read one never frees a zone's tables itself.
    retired: Vec<(Arc<super::Snapshot>, Instant)>,
    /// Indexes built off the builder's task, with the preparation they are of.
    indexed: (
        mpsc::UnboundedSender<Indexed>,
        mpsc::UnboundedReceiver<Indexed>,
    ),
    /// True while a thread signs whole the zones a preparation signs on first use.
    filling: bool,
    /// Signings on first use whose whole signing failed: not tried again (they keep
    /// serving) until a preparation replaces them.
    unfilled: Vec<std::sync::Weak<super::ZoneSigning>>,
    /// Whole signings made off the builder's task, each with the signing on first use it
    /// replaces.
    filled: (
        mpsc::UnboundedSender<Vec<Filled>>,
        mpsc::UnboundedReceiver<Vec<Filled>>,
    ),
}

/// A zone's signing on first use, and its whole signing (None when it failed).
type Filled = (Arc<super::ZoneSigning>, Option<Arc<super::ZoneSigning>>);

/// An index of the fast path, and the preparation it is of.
type Indexed = (u64, Arc<FastIndex>);

impl Builder {
    /// Builds and publishes the first snapshot (generation 1), every endpoint up.
    pub fn new(loaded: Loaded) -> Self {
        Self::with_states(Arc::new(loaded), EndpointStates::default())
    }

    /// Like [`Builder::new`], with endpoints known to be down or drained (restored from the
    /// state file).
    pub fn with_states(loaded: Arc<Loaded>, mut states: EndpointStates) -> Self {
        states.retain_existing(&loaded);
        states.add_counters(&loaded);
        let started = Instant::now();
        let prepared = prepare(&loaded, &states);
        let handle = RoutingHandle::new(build_prepared(&prepared, &loaded, &states, 1));
        if let Some(tap) = &prepared.dnstap {
            tap.attach(&handle);
        }
        record_build(1, started);
        let mut builder = Self {
            configs: watch::Sender::new(loaded.clone()),
            loaded,
            prepared,
            states,
            generation: 1,
            handle,
            selections: HashMap::new(),
            leaders: HashMap::new(),
            bus: None,
            epoch: 1,
            indexing: None,
            retired: Vec::new(),
            indexed: mpsc::unbounded_channel(),
            filling: false,
            unfilled: Vec::new(),
            filled: mpsc::unbounded_channel(),
        };
        builder.report_selections();
        builder.report_leaders();
        builder
    }

    /// Reports changes as events (`latency`: a region's best endpoint changed).
    pub fn report_to(&mut self, bus: crate::events::Events) {
        self.bus = Some(bus);
    }

    /// For each GSLB name ranked by latency and each client region (a configured
    /// network's, the default location's, or "anywhere"), the first endpoint; logs and
    /// reports (event `latency`) each that changed.
    fn report_leaders(&mut self) {
        let snapshot = self.handle.load();
        let mut now = HashMap::new();
        for service in &snapshot.services {
            let Some(node) = snapshot.gslb_node(&service.name) else {
                continue;
            };
            let by_latency = node.policy == crate::config::Policy::Latency
                || node.tie == crate::config::Tie::Latency;
            if !by_latency {
                continue;
            }
            let name = service.name.to_string();
            let locations = snapshot.geo.network_locations();
            let cells = node
                .rankings
                .iter()
                .zip(locations)
                .map(|(ranking, location)| (ranking, location.region.clone()))
                .chain([
                    (
                        &node.default_ranking,
                        snapshot
                            .geo
                            .default_location()
                            .and_then(|l| l.region.clone()),
                    ),
                    (&node.unknown_ranking, None),
                ]);
            for (ranking, region) in cells {
                let region = region.unwrap_or_else(|| "anywhere".into());
                let first = ranking
                    .order
                    .first()
                    .filter(|_| ranking.available > 0)
                    .and_then(|&i| node.members.get(usize::from(i)));
                if let Some(first) = first {
                    now.entry((name.clone(), region))
                        .or_insert_with(|| first.key.member.clone());
                }
            }
        }
        for ((service, region), member) in &now {
            let before = self.leaders.get(&(service.clone(), region.clone()));
            let Some(before) = before.filter(|b| *b != member) else {
                continue;
            };
            info!(%service, %region, from = %before, to = %member, "the best endpoint by latency for a region changed");
            if let Some(bus) = &self.bus {
                bus.emit(
                    "latency",
                    serde_json::json!({
                        "service": service,
                        "region": region,
                        "from": before,
                        "to": member,
                    }),
                );
            }
        }
        self.leaders = now;
    }

    /// Builds the fast path's index of a big zone's preparation in a thread of its own,
    /// from the snapshot just published (its general lookup gives the tails); [`run`]
    /// publishes it.
    ///
    /// [`run`]: Builder::run
    fn index_if_pending(&mut self) {
        if !self.prepared.index_pending() || self.indexing == Some(self.epoch) {
            return;
        }
        self.indexing = Some(self.epoch);
        let snapshot = self.handle.load_full();
        let sender = self.indexed.0.clone();
        let epoch = self.epoch;
        let spawned = std::thread::Builder::new()
            .name("gto-index".into())
            .spawn(move || {
                let started = Instant::now();
                let fast = FastIndex::build(&snapshot);
                debug!(names = fast.len(), took = ?started.elapsed(), "fast path index built");
                drop(snapshot);
                let _ = sender.send((epoch, Arc::new(fast)));
            });
        if let Err(error) = spawned {
            warn!(%error, "cannot start a thread to index the zones; the general path answers");
        }
    }

    /// Signs whole, in a thread of its own, the zones this preparation signs on first use
    /// (a big zone's first preparation); [`run`] puts each in its place
    /// ([`Builder::take_filled`]). One such thread at a time.
    ///
    /// [`run`]: Builder::run
    fn fill_if_pending(&mut self) {
        if self.filling {
            return;
        }
        self.unfilled.retain(|weak| weak.strong_count() > 0);
        let unfilled = &self.unfilled;
        let zones: Vec<_> = self
            .prepared
            .zones_signed_on_first_use()
            .filter(|zone| {
                !unfilled.iter().any(|weak| {
                    zone.signing
                        .as_ref()
                        .is_some_and(|signing| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(signing)))
                })
            })
            .cloned()
            .collect();
        if zones.is_empty() {
            return;
        }
        self.filling = true;
        let loaded = self.loaded.clone();
        let sender = self.filled.0.clone();
        let spawned = std::thread::Builder::new()
            .name("gto-sign".into())
            .spawn(move || {
                // The chains around wildcards first (a fraction of a second), so that
                // answers from a wildcard need not make them.
                for zone in &zones {
                    if let Some(signing) = &zone.signing {
                        signing.prepare_wildcard_chains();
                    }
                }
                let filled: Vec<Filled> = zones
                    .iter()
                    .filter_map(|zone| {
                        let lazy = zone.signing.clone()?;
                        Some((lazy, super::zones::sign_in_full(&loaded, zone)))
                    })
                    .collect();
                drop(zones);
                let _ = sender.send(filled);
            });
        if let Err(error) = spawned {
            self.filling = false;
            warn!(%error, "cannot start a thread to sign the zones; their sets stay signed on first use");
        }
    }

    /// Puts whole signings in place of the signings on first use they were made for, where
    /// the current preparation still has them (a reload that left the zone alone keeps
    /// its signing), and publishes; the fast path's index is built again.
    fn take_filled(&mut self, filled: Vec<Filled>) {
        self.filling = false;
        let mut replaced = false;
        for (lazy, whole) in filled {
            match whole {
                Some(whole) => replaced |= self.prepared.replace_signing(&lazy, whole),
                None => {
                    warn!("a zone could not be signed whole; its sets stay signed on first use");
                    self.unfilled.push(Arc::downgrade(&lazy));
                }
            }
        }
        if replaced {
            self.epoch += 1;
            self.prepared.index_later();
            self.publish();
            crate::memory::trim();
        } else {
            self.fill_if_pending();
        }
    }

    /// Drops the snapshots replaced at least [`RETIRE_AFTER`] ago (a reload's old zone is
    /// freed here, off the query path), and gives what that freed back to the system.
    fn release_retired(&mut self) {
        let now = Instant::now();
        let before = self.retired.len();
        self.retired.retain(|(_, at)| now < *at + RETIRE_AFTER);
        if self.retired.len() < before {
            crate::memory::trim();
        }
    }

    /// Takes an index built off the task, when it is of the current preparation.
    fn take_index(&mut self, epoch: u64, fast: Arc<FastIndex>) {
        if epoch != self.epoch {
            return;
        }
        let names = fast.len();
        self.prepared.set_index(fast);
        self.publish();
        info!(names, generation = self.generation, "fast path index ready");
        crate::memory::trim();
    }

    /// Lets a new dnstap log name the endpoints of GSLB answers.
    fn attach_dnstap(&self) {
        if let Some(tap) = &self.prepared.dnstap {
            tap.attach(&self.handle);
        }
    }

    /// The handle the query path reads.
    pub fn handle(&self) -> RoutingHandle {
        self.handle.clone()
    }

    /// The config in use, as it changes: key maintenance reads key directories for it.
    pub fn configs(&self) -> watch::Receiver<Arc<Loaded>> {
        self.configs.subscribe()
    }

    /// The config the current snapshot was built from.
    pub fn loaded(&self) -> Arc<Loaded> {
        self.loaded.clone()
    }

    /// Folds one event in and publishes a new snapshot if anything changed.
    pub fn apply(&mut self, event: BuildEvent) {
        self.apply_all(vec![event]);
    }

    /// Folds a batch of events in and publishes at most one snapshot for all of them, then
    /// tells every waiter. A burst of health or load changes costs one rebuild.
    pub fn apply_all(&mut self, events: Vec<BuildEvent>) {
        let mut changed = false;
        let mut waiting = Vec::new();
        for event in events {
            let (event_changed, done) = self.fold(event);
            changed |= event_changed;
            waiting.extend(done);
        }
        if changed {
            self.publish();
        }
        for done in waiting {
            // The sender may have gone away; the snapshot is live either way.
            let _ = done.send(self.generation);
        }
    }

    fn fold(&mut self, event: BuildEvent) -> (bool, Option<oneshot::Sender<u64>>) {
        let changed = match event.change {
            Change::Reload(loaded) => {
                self.set_loaded(loaded);
                // State of endpoints that no longer exist is dropped; the rest carries over.
                self.states.retain_existing(&self.loaded);
                self.states.add_counters(&self.loaded);
                self.prepared = prepare_after(&self.loaded, &self.states, Some(&self.prepared));
                self.epoch += 1;
                self.attach_dnstap();
                crate::memory::trim();
                true
            }
            Change::SetDrained { key, drained } => {
                self.states.update(key, |state| state.drained = drained)
            }
            Change::SetDrainedMany(changes) => {
                let mut any = false;
                for (key, drained) in changes {
                    any |= self.states.update(key, |state| state.drained = drained);
                }
                any
            }
            Change::SetLoad { key, view } => self.states.update(key, |state| state.load = view),
            Change::Ping => false,
            Change::Resign { due, rekeyed } => {
                let mut keys_changed = false;
                if let Some(rekeyed) = rekeyed.filter(|r| Arc::ptr_eq(&r.base, &self.loaded)) {
                    keys_changed = rekeyed.keys_changed;
                    self.set_loaded(rekeyed.fresh);
                }
                if due || keys_changed {
                    self.prepared = prepare_after(&self.loaded, &self.states, Some(&self.prepared));
                    self.epoch += 1;
                    self.attach_dnstap();
                }
                due || keys_changed
            }
            Change::SetMemberUp { key, up } => self.states.update(key, |state| state.down = !up),
            Change::SetRum(prefixes) => {
                let changed = *self.states.rum != *prefixes;
                self.states.rum = prefixes;
                changed
            }
            Change::SetRtt { key, rtts } => {
                if rtts.is_empty() {
                    self.states.rtts.remove(&key).is_some()
                } else {
                    self.states.rtts.insert(key, rtts.clone()).as_deref() != Some(&*rtts)
                }
            }
            Change::SetWithheld { key, withheld } => {
                self.states.update(key, |state| state.withheld = withheld)
            }
        };
        (changed, event.done)
    }

    /// Replaces the config and tells those who read keys for it ([`Builder::configs`]).
    fn set_loaded(&mut self, loaded: Arc<Loaded>) {
        self.loaded = loaded;
        self.configs.send_replace(self.loaded.clone());
    }

    fn publish(&mut self) {
        self.generation += 1;
        let started = Instant::now();
        let replaced = self.handle.swap(build_prepared(
            &self.prepared,
            &self.loaded,
            &self.states,
            self.generation,
        ));
        self.retired.push((replaced, Instant::now()));
        record_build(self.generation, started);
        debug!(generation = self.generation, "routing snapshot published");
        self.report_selections();
        self.report_leaders();
        self.index_if_pending();
        self.fill_if_pending();
    }

    /// Logs (once per change) and exports how each GSLB name selects its endpoints: an
    /// all-down mode (fail open, fallback, empty) is something an operator must know.
    fn report_selections(&mut self) {
        let snapshot = self.handle.load();
        let mut now = HashMap::new();
        for service in &snapshot.services {
            let Some(node) = snapshot.gslb_node(&service.name) else {
                continue;
            };
            let name = service.name.to_string();
            let mode = node.mode;
            if self.selections.get(&name) != Some(&mode) {
                let previous = self.selections.get(&name).copied();
                if mode == Selection::Normal {
                    if previous.is_some() {
                        info!(service = %name, selection = mode.as_str(), "GSLB name answers from its up endpoints again");
                    }
                } else {
                    warn!(
                        service = %name,
                        selection = mode.as_str(),
                        "no endpoint of this GSLB name can serve; answering by when_all_down"
                    );
                }
                export_selection(&name, Some(mode));
            }
            now.insert(name, mode);
        }
        for gone in self.selections.keys().filter(|k| !now.contains_key(*k)) {
            export_selection(gone, None);
        }
        self.selections = now;
    }

    /// Applies events until the channel closes or `token` is cancelled; events that queue
    /// up while a snapshot is being built are folded into the next one together.
    pub async fn run(mut self, mut events: mpsc::Receiver<BuildEvent>, token: CancellationToken) {
        const BATCH: usize = 1024;
        // The first snapshot's index is started here, once the builder runs, which is
        // after the sockets are bound: at start-up it would take a core from that.
        self.index_if_pending();
        self.fill_if_pending();
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let release = self.retired.first().map(|(_, at)| *at + RETIRE_AFTER);
            let released = async {
                match release {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = released => self.release_retired(),
                received = events.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        break;
                    }
                    self.apply_all(std::mem::take(&mut batch));
                }
                Some((epoch, fast)) = self.indexed.1.recv() => self.take_index(epoch, fast),
                Some(filled) = self.filled.1.recv() => self.take_filled(filled),
                () = token.cancelled() => break,
            }
        }
        // The process is ending: a big zone's tables are left to the exit, not freed one
        // allocation at a time after the sockets have closed (a 200,000-record zone took
        // tens of milliseconds, which a restart's gap counted).
        std::mem::forget(self);
    }
}

/// How long a replaced snapshot is held before the builder drops it: far longer than a
/// query reads one (a batch of answers), so the query threads never hold the last
/// reference.
const RETIRE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Sets `gto_service_selection` for one GSLB name: 1 for `mode`, 0 for the others (all 0
/// for a name a reload removed).
fn export_selection(service: &str, mode: Option<Selection>) {
    for selection in [
        Selection::Normal,
        Selection::FailOpen,
        Selection::Fallback,
        Selection::Empty,
    ] {
        metrics::gauge!(
            SERVICE_SELECTION,
            "service" => service.to_string(),
            "selection" => selection.as_str(),
        )
        .set(if Some(selection) == mode { 1.0 } else { 0.0 });
    }
}

fn record_build(generation: u64, started: Instant) {
    metrics::gauge!(SNAPSHOT_GENERATION).set(generation as f64);
    metrics::histogram!(SNAPSHOT_BUILD_SECONDS).record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::{LowerName, RecordType};

    use super::*;
    use crate::loaded::ConfigSource;
    use crate::routing::Snapshot;
    use hickory_proto::rr::Name;

    fn addresses(snapshot: &Snapshot, qtype: RecordType) -> Vec<String> {
        let name = LowerName::from(Name::from_ascii("vpn.gto.example.com.").unwrap());
        snapshot
            .resolve(&name, qtype, None)
            .answers
            .iter()
            .map(|r| r.data.to_string())
            .collect()
    }

    #[test]
    fn member_down_leaves_the_answer_and_comes_back() {
        let loaded = ConfigSource::Embedded.load().unwrap();
        let first = loaded.config.pools[0].members[0].name.clone();
        let pool = loaded.config.pools[0].name.clone();
        let mut builder = Builder::new(loaded);
        let handle = builder.handle();
        let before = addresses(&handle.load(), RecordType::A);
        assert_eq!(before.len(), 2);

        let key = EndpointKey {
            pool,
            member: first,
        };
        builder.apply(BuildEvent::new(Change::SetMemberUp {
            key: key.clone(),
            up: false,
        }));
        let snapshot = handle.load();
        assert_eq!(snapshot.generation, 2);
        let during = addresses(&snapshot, RecordType::A);
        assert!(!during.contains(&before[0]), "{during:?}");
        assert_eq!(during[0], before[1]);

        // A repeated state is not a change: no new snapshot.
        builder.apply(BuildEvent::new(Change::SetMemberUp {
            key: key.clone(),
            up: false,
        }));
        assert_eq!(handle.load().generation, 2);

        builder.apply(BuildEvent::new(Change::SetMemberUp { key, up: true }));
        assert_eq!(addresses(&handle.load(), RecordType::A), before);
        assert_eq!(handle.load().generation, 3);
    }

    /// A replaced snapshot outlives its replacement by a while, held by the builder (a
    /// query thread that still reads it never frees a zone), and is then freed by it.
    #[tokio::test(start_paused = true)]
    async fn replaced_snapshots_are_freed_by_the_builder_after_a_while() {
        let loaded = ConfigSource::Embedded.load().unwrap();
        let key = EndpointKey {
            pool: loaded.config.pools[0].name.clone(),
            member: loaded.config.pools[0].members[0].name.clone(),
        };
        let builder = Builder::new(loaded);
        let handle = builder.handle();
        let first = Arc::downgrade(&handle.load_full());
        let (events, receiver) = mpsc::channel(8);
        let token = CancellationToken::new();
        let task = tokio::spawn(builder.run(receiver, token.clone()));
        let (event, done) = BuildEvent::waited(Change::SetMemberUp { key, up: false });
        events.send(event).await.unwrap();
        assert_eq!(done.await.unwrap(), 2);
        tokio::time::sleep(RETIRE_AFTER / 2).await;
        assert!(
            first.upgrade().is_some(),
            "freed while a query may still read it"
        );
        tokio::time::sleep(RETIRE_AFTER).await;
        for _ in 0..100 {
            if first.upgrade().is_none() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            first.upgrade().is_none(),
            "the replaced snapshot is still held"
        );
        token.cancel();
        task.await.unwrap();
    }

    #[test]
    fn all_down_fails_open_by_default() {
        let loaded = ConfigSource::Embedded.load().unwrap();
        let pool = loaded.config.pools[0].clone();
        let mut builder = Builder::new(loaded);
        let before = addresses(&builder.handle().load(), RecordType::A);
        for member in &pool.members {
            builder.apply(BuildEvent::new(Change::SetMemberUp {
                key: EndpointKey {
                    pool: pool.name.clone(),
                    member: member.name.clone(),
                },
                up: false,
            }));
        }
        assert_eq!(addresses(&builder.handle().load(), RecordType::A), before);
    }
}
