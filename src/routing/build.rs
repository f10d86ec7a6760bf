//! The builder: the only writer of the routing table. It turns the loaded config, the zones
//! and the current member state into a [`Snapshot`] ([`build`], pure) and publishes it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{LowerName, RData, Record, RecordType};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::handle::RoutingHandle;
use super::node::Node;
use super::rrl::RateLimiter;
use super::table::{
    Endpoint, EndpointInfo, EndpointKey, GslbNode, Selection, ServiceInfo, Snapshot, ZoneTable,
};
use super::wire::FastIndex;
use crate::config::{Location, Policy, Region, Service, WhenAllDown};
use crate::geo::GeoTable;
use crate::loaded::Loaded;
use crate::metrics::{
    ANSWERS_TOTAL, SERVICE_SELECTION, SNAPSHOT_BUILD_SECONDS, SNAPSHOT_GENERATION,
};
use crate::policy;
use crate::policy::load::LoadView;
use crate::policy::{Candidate, affinity};
use crate::routing::ZoneSigning;
use crate::zone::RrSet;

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
    /// Health checks took an endpoint up or down.
    SetMemberUp {
        /// Which endpoint.
        key: EndpointKey,
        /// Its new state.
        up: bool,
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

/// Per-endpoint state the snapshot is built from, besides the config.
#[derive(Debug, Default, Clone)]
pub struct EndpointStates {
    /// Endpoints known to be down. Absent means up: a brand-new endpoint is answered at once.
    pub down: HashSet<EndpointKey>,
    /// Endpoints an operator drained.
    pub drained: HashSet<EndpointKey>,
    /// Answer counters, kept across rebuilds so status can show each endpoint's share.
    /// Keyed by GSLB name and endpoint: two names sharing a pool count apart.
    pub answered: HashMap<(String, EndpointKey), Arc<AtomicU64>>,
    /// Load as ranking sees it; absent means unknown.
    pub load: HashMap<EndpointKey, LoadView>,
}

impl EndpointStates {
    /// Drops the state of endpoints `loaded` no longer has.
    fn retain_existing(&mut self, loaded: &Loaded) {
        let exists = |key: &EndpointKey| {
            loaded
                .config
                .pools
                .iter()
                .any(|p| p.name == key.pool && p.members.iter().any(|m| m.name == key.member))
        };
        self.down.retain(exists);
        self.drained.retain(exists);
        self.load.retain(|key, _| exists(key));
        self.answered.retain(|(service, key), _| {
            exists(key)
                && loaded
                    .config
                    .services
                    .iter()
                    .any(|s| s.name.to_string() == *service)
        });
    }

    /// Makes sure every endpoint of `loaded` has an answer counter.
    fn add_counters(&mut self, loaded: &Loaded) {
        let config = &loaded.config;
        for service in &config.services {
            let mut pools = vec![service.pool.0];
            if let WhenAllDown::Fallback(id) = service.when_all_down {
                pools.push(id.0);
            }
            for pool in pools.into_iter().filter_map(|i| config.pools.get(i)) {
                for member in &pool.members {
                    self.answered
                        .entry((service.name.to_string(), EndpointKey::of(pool, member)))
                        .or_default();
                }
            }
        }
    }
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
    /// The config in use, for key maintenance ([`Builder::configs`]).
    configs: watch::Sender<Arc<Loaded>>,
}

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
        record_build(1, started);
        let mut builder = Self {
            configs: watch::Sender::new(loaded.clone()),
            loaded,
            prepared,
            states,
            generation: 1,
            handle,
            selections: HashMap::new(),
        };
        builder.report_selections();
        builder
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
                true
            }
            Change::SetDrained { key, drained } => {
                if drained {
                    self.states.drained.insert(key)
                } else {
                    self.states.drained.remove(&key)
                }
            }
            Change::SetLoad { key, view } => {
                if view == LoadView::UNKNOWN {
                    self.states.load.remove(&key).is_some()
                } else {
                    self.states.load.insert(key, view) != Some(view)
                }
            }
            Change::Ping => false,
            Change::Resign { due, rekeyed } => {
                let mut keys_changed = false;
                if let Some(rekeyed) = rekeyed.filter(|r| Arc::ptr_eq(&r.base, &self.loaded)) {
                    keys_changed = rekeyed.keys_changed;
                    self.set_loaded(rekeyed.fresh);
                }
                if due || keys_changed {
                    self.prepared = prepare_after(&self.loaded, &self.states, Some(&self.prepared));
                }
                due || keys_changed
            }
            Change::SetMemberUp { key, up } => {
                if up {
                    self.states.down.remove(&key)
                } else {
                    self.states.down.insert(key)
                }
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
        self.handle.store(build_prepared(
            &self.prepared,
            &self.loaded,
            &self.states,
            self.generation,
        ));
        record_build(self.generation, started);
        debug!(generation = self.generation, "routing snapshot published");
        self.report_selections();
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
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                received = events.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        break;
                    }
                    self.apply_all(std::mem::take(&mut batch));
                }
                () = token.cancelled() => break,
            }
        }
    }
}

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

/// What snapshots built from one config share: the static part of every zone, the geo
/// table, and each GSLB name's endpoints with their encoded records. Prepared once per
/// config (at start and on reload), so a health flip only re-ranks.
#[derive(Debug)]
pub struct Prepared {
    zones: Vec<PreparedZone>,
    geo: Arc<GeoTable>,
    /// Endpoints by (service index, pool index): a service's own pool and its fallback.
    endpoints: HashMap<(usize, usize), Vec<Arc<EndpointInfo>>>,
    /// What the UDP fast path can answer.
    fast: Arc<FastIndex>,
    /// Response rate limiting: one table per config, so flips and drains keep its state.
    rrl: Option<Arc<RateLimiter>>,
    /// `[server] identity` as NSID bytes, and the CH TXT records that tell it.
    identity: Option<Arc<[u8]>>,
    chaos: Arc<[Record]>,
}

/// The static part of one zone.
#[derive(Debug)]
struct PreparedZone {
    origin: LowerName,
    negative_soa: Record,
    nodes: Arc<HashMap<LowerName, Node>>,
    cuts: Arc<HashSet<LowerName>>,
    has_wildcards: bool,
    signing: Option<Arc<ZoneSigning>>,
}

/// The address families (A, AAAA) each GSLB name can answer by config: its pool's and its
/// fallback's addresses.
fn gslb_families(loaded: &Loaded) -> HashMap<LowerName, (bool, bool)> {
    let config = &loaded.config;
    let mut families = HashMap::new();
    for service in &config.services {
        let mut pools = vec![service.pool.0];
        if let WhenAllDown::Fallback(id) = service.when_all_down {
            pools.push(id.0);
        }
        let addresses = || {
            pools
                .iter()
                .filter_map(|p| config.pools.get(*p))
                .flat_map(|p| &p.members)
                .flat_map(|m| &m.addresses)
        };
        families.insert(
            LowerName::from(&service.name),
            (
                addresses().any(IpAddr::is_ipv4),
                addresses().any(IpAddr::is_ipv6),
            ),
        );
    }
    families
}

/// Signs a zone when its config asks for it and a key signs now; adds the DNSKEY, CDS and
/// CDNSKEY RRsets to the apex. Failures are logged and leave the zone unsigned.
#[allow(clippy::too_many_arguments)]
fn sign_zone(
    loaded: &Loaded,
    index: usize,
    records_digest: &[u8; 32],
    before: Option<&Arc<ZoneSigning>>,
    origin: &LowerName,
    nodes: &mut HashMap<LowerName, Node>,
    cuts: &HashSet<LowerName>,
    negative_soa: &Record,
    families: &HashMap<LowerName, (bool, bool)>,
) -> Option<Arc<ZoneSigning>> {
    let spec = loaded.config.zones.get(index)?.dnssec.as_ref()?;
    let ring = loaded.keys.get(index)?.as_ref()?;
    let now = crate::dnssec::now();
    let apex = hickory_proto::rr::Name::from(origin);
    if let Some(Node::Static(sets)) = nodes.get_mut(origin) {
        for (record_type, records) in crate::dnssec::apex_sets(&apex, ring, now, spec.dnskey_ttl) {
            sets.retain(|s| s.record_type != record_type);
            sets.push(RrSet {
                record_type,
                records,
            });
        }
    }
    let inputs = {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(records_digest);
        let mut gslb: Vec<_> = families
            .iter()
            .filter(|(name, _)| origin.zone_of(name))
            .collect();
        gslb.sort();
        hasher.update(format!("{gslb:?}{spec:?}{negative_soa:?}").as_bytes());
        for key in &ring.keys {
            hasher.update(format!(
                "{}{:?}{:?}{:?}",
                key.tag, key.role, key.timeline, key.dnskey
            ));
        }
        if let Some(Node::Static(sets)) = nodes.get(origin) {
            hasher.update(format!("{sets:?}").as_bytes());
        }
        let digest: [u8; 32] = hasher.finalize().into();
        digest
    };
    if let Some(before) = before.filter(|b| b.inputs == inputs && b.fresh_at(now)) {
        debug!(zone = %origin, "zone unchanged: its signatures are reused");
        return Some(before.clone());
    }
    let content = crate::routing::ZoneContent {
        origin,
        nodes,
        cuts,
        negative_soa,
        gslb_families: families,
    };
    match ZoneSigning::new(&content, ring, now) {
        Ok(Some(mut signing)) => {
            signing.inputs = inputs;
            // The next time this preparation goes stale: a key event, or a rollover due.
            let lifetime_due = spec.lifetime.and_then(|lifetime| {
                ring.keys
                    .iter()
                    .filter(|k| k.role.signs_zone() && k.active(now) && k.timeline.retire.is_none())
                    .map(|k| k.timeline.active.saturating_add(lifetime.as_secs()))
                    .min()
            });
            signing.next_event = [ring.next_event(now), lifetime_due]
                .into_iter()
                .flatten()
                .min();
            signing.keys_dir = Some((
                spec.keys.clone(),
                loaded.keys_changed.get(index).copied().flatten(),
            ));
            metrics::counter!(crate::metrics::DNSSEC_SIGNED_AT_LOAD_TOTAL)
                .increment(signing.signed);
            Some(Arc::new(signing))
        }
        Ok(None) => {
            warn!(zone = %origin, "no DNSSEC key signs this zone now; serving it unsigned");
            None
        }
        Err(error) => {
            warn!(zone = %origin, %error, "could not sign the zone; serving it unsigned");
            None
        }
    }
}

/// Prepares the config-only part of snapshots.
pub fn prepare(loaded: &Loaded, states: &EndpointStates) -> Prepared {
    prepare_after(loaded, states, None)
}

/// [`prepare`], reusing from `previous` the signatures of every signed zone whose inputs
/// (records, GSLB names, keys, settings) did not change and that are still fresh: a
/// reload that leaves a big signed zone alone signs nothing of it again.
fn prepare_after(
    loaded: &Loaded,
    states: &EndpointStates,
    previous: Option<&Prepared>,
) -> Prepared {
    let config = &loaded.config;
    let service_names: Vec<LowerName> = config
        .services
        .iter()
        .map(|s| LowerName::from(&s.name))
        .collect();
    let families = gslb_families(loaded);
    let mut zones: Vec<PreparedZone> = loaded
        .zones
        .iter()
        .enumerate()
        .map(|(index, zone)| {
            let origin = zone.origin().clone();
            let mut nodes: HashMap<LowerName, Node> = zone
                .rrsets()
                .map(|(name, sets)| (name.clone(), Node::Static(sets.to_vec())))
                .collect();
            // The SOA answers SOA queries at the apex like any other RRset.
            let soa_set = RrSet {
                record_type: RecordType::SOA,
                records: vec![zone.soa().clone()],
            };
            if let Node::Static(sets) = nodes
                .entry(origin.clone())
                .or_insert_with(|| Node::Static(Vec::new()))
            {
                sets.insert(0, soa_set);
            }
            for name in &service_names {
                if origin.zone_of(name) {
                    nodes.insert(name.clone(), Node::Gslb);
                }
            }
            add_empty_non_terminals(&origin, &mut nodes);
            let mut negative_soa = zone.soa().clone();
            negative_soa.ttl = zone.negative_ttl();
            let cuts: HashSet<LowerName> = zone.cuts().iter().cloned().collect();
            let before = previous
                .and_then(|p| p.zones.iter().find(|z| z.origin == origin))
                .and_then(|z| z.signing.as_ref());
            let signing = sign_zone(
                loaded,
                index,
                zone.text_digest(),
                before,
                &origin,
                &mut nodes,
                &cuts,
                &negative_soa,
                &families,
            );
            PreparedZone {
                origin,
                negative_soa,
                nodes: Arc::new(nodes),
                cuts: Arc::new(cuts),
                has_wildcards: zone.has_wildcards(),
                signing,
            }
        })
        .collect();
    zones.sort_by_key(|z| std::cmp::Reverse(z.origin.num_labels()));

    let mut endpoints = HashMap::new();
    for (index, service) in config.services.iter().enumerate() {
        let mut pool_indices = vec![service.pool.0];
        if let WhenAllDown::Fallback(id) = service.when_all_down {
            pool_indices.push(id.0);
        }
        let label = service.name.to_string();
        let question = super::encode::gslb_question(&service.name);
        for pool_index in pool_indices {
            let Some(pool) = config.pools.get(pool_index) else {
                continue;
            };
            let infos = pool
                .members
                .iter()
                .map(|member| {
                    let key = EndpointKey::of(pool, member);
                    let record = |ip: &IpAddr| {
                        let data = match ip {
                            IpAddr::V4(v4) => RData::A(A(*v4)),
                            IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                        };
                        Record::from_rdata(service.name.clone(), service.ttl.get(), data)
                    };
                    let a: Vec<Record> = member
                        .addresses
                        .iter()
                        .filter(|a| a.is_ipv4())
                        .map(record)
                        .collect();
                    let aaaa: Vec<Record> = member
                        .addresses
                        .iter()
                        .filter(|a| a.is_ipv6())
                        .map(record)
                        .collect();
                    Arc::new(EndpointInfo {
                        wire_a: super::encode::wire_records(&question, &a),
                        wire_aaaa: super::encode::wire_records(&question, &aaaa),
                        a,
                        aaaa,
                        addresses: member.addresses.clone(),
                        location: member.location.clone(),
                        weight: f64::from(member.weight.get()),
                        seed: affinity::seed(&key.pool, &key.member),
                        answered: states
                            .answered
                            .get(&(label.clone(), key.clone()))
                            .cloned()
                            .unwrap_or_default(),
                        counter: metrics::counter!(
                            ANSWERS_TOTAL,
                            "service" => label.clone(),
                            "pool" => key.pool.clone(),
                            "member" => key.member.clone(),
                        ),
                        key,
                    })
                })
                .collect();
            endpoints.insert((index, pool_index), infos);
        }
    }
    let mut prepared = Prepared {
        zones,
        geo: Arc::new(GeoTable::new(&config.geo, loaded.geo_db.clone())),
        endpoints,
        fast: Arc::new(FastIndex::default()),
        rrl: RateLimiter::new(&config.rrl).map(Arc::new),
        identity: config
            .server
            .identity
            .as_ref()
            .map(|id| Arc::from(id.as_bytes())),
        chaos: chaos_records(config.server.identity.as_deref()).into(),
    };
    // The fast path's tails come from the general lookup of a snapshot of this config.
    let reference = build_prepared(&prepared, loaded, states, 0);
    prepared.fast = Arc::new(FastIndex::build(&reference));
    prepared
}

/// Builds a snapshot from scratch. Pure: the same inputs give the same snapshot.
pub fn build(loaded: &Loaded, states: &EndpointStates, generation: u64) -> Snapshot {
    build_prepared(&prepare(loaded, states), loaded, states, generation)
}

/// Builds a snapshot from a prepared config: ranks every GSLB name for the current
/// endpoint state. Pure.
pub fn build_prepared(
    prepared: &Prepared,
    loaded: &Loaded,
    states: &EndpointStates,
    generation: u64,
) -> Snapshot {
    let config = &loaded.config;
    let mut zones: Vec<ZoneTable> = prepared
        .zones
        .iter()
        .map(|zone| ZoneTable {
            origin: zone.origin.clone(),
            negative_soa: zone.negative_soa.clone(),
            nodes: zone.nodes.clone(),
            gslb: HashMap::new(),
            cuts: zone.cuts.clone(),
            has_wildcards: zone.has_wildcards,
            signing: zone.signing.clone(),
        })
        .collect();
    let mut services = Vec::with_capacity(config.services.len());
    let mut service_nodes = vec![None; config.services.len()];
    for (index, service) in config.services.iter().enumerate() {
        let name = LowerName::from(&service.name);
        let pool_name = config
            .pools
            .get(service.pool.0)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        services.push(ServiceInfo {
            name: name.clone(),
            pool: pool_name,
            policy: service.policy,
            answers: service.answers.get(),
            ttl: service.ttl.get(),
            when_all_down: service.when_all_down,
        });
        let Some(zone) = zones.iter_mut().find(|z| z.origin.zone_of(&name)) else {
            continue; // config::load rejects this; nothing to serve.
        };
        let mut node = gslb_node(index, service, states, prepared, &config.geo.regions);
        if let Some(signing) = &zone.signing {
            node.signing = Some(signing.clone());
            node.signatures = prepared_signatures(&node);
        }
        let node = Arc::new(node);
        service_nodes[index] = Some(node.clone());
        zone.gslb.insert(name, node);
    }
    Snapshot {
        generation,
        udp_payload: config.server.udp_payload,
        zones,
        services,
        service_nodes,
        geo: prepared.geo.clone(),
        regions: config.geo.regions.clone(),
        fast: prepared.fast.clone(),
        rrl: prepared.rrl.clone(),
        identity: prepared.identity.clone(),
        chaos: prepared.chaos.clone(),
    }
}

/// `id.server.` and `hostname.bind.` (the identity), `version.server.` and `version.bind.`
/// (gto's version) as CH TXT records, when an identity is configured; none otherwise.
fn chaos_records(identity: Option<&str>) -> Vec<Record> {
    let Some(identity) = identity else {
        return Vec::new();
    };
    let version = format!("gto {}", env!("CARGO_PKG_VERSION"));
    [
        ("id.server.", identity),
        ("hostname.bind.", identity),
        ("version.server.", version.as_str()),
        ("version.bind.", version.as_str()),
    ]
    .into_iter()
    .filter_map(|(name, text)| {
        let name = hickory_proto::rr::Name::from_ascii(name).ok()?;
        let mut record = Record::from_rdata(
            name,
            0,
            RData::TXT(hickory_proto::rr::rdata::TXT::new(vec![text.to_string()])),
        );
        record.dns_class = hickory_proto::rr::DNSClass::CH;
        Some(record)
    })
    .collect()
}

/// Ranks a service's endpoints per location cell and encodes their records.
fn gslb_node(
    index: usize,
    service: &Service,
    states: &EndpointStates,
    prepared: &Prepared,
    regions: &[Region],
) -> GslbNode {
    let geo = &prepared.geo;
    let load_of = |key: &EndpointKey| states.load.get(key).copied().unwrap_or(LoadView::UNKNOWN);
    let infos_of = |pool: usize| {
        prepared
            .endpoints
            .get(&(index, pool))
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let serves = |info: &EndpointInfo| {
        !states.down.contains(&info.key) && !states.drained.contains(&info.key)
    };
    let any_up = |pool: usize| infos_of(pool).iter().any(|info| serves(info));
    let own = service.pool.0;
    let (pool, mode) = if any_up(own) {
        (own, Selection::Normal)
    } else {
        match service.when_all_down {
            WhenAllDown::All => (own, Selection::FailOpen),
            WhenAllDown::Empty => (own, Selection::Empty),
            WhenAllDown::Fallback(id) if any_up(id.0) => (id.0, Selection::Fallback),
            // A fallback that is down too fails open to the service's own pool.
            WhenAllDown::Fallback(_) => (own, Selection::FailOpen),
        }
    };
    let infos = infos_of(pool);
    let members: Vec<Endpoint> = infos
        .iter()
        .map(|info| {
            let up = !states.down.contains(&info.key);
            let drained = states.drained.contains(&info.key);
            let available = match mode {
                Selection::Empty => false,
                Selection::FailOpen => true,
                Selection::Fallback | Selection::Normal => up && !drained,
            };
            let load = load_of(&info.key);
            Endpoint {
                info: info.clone(),
                up,
                drained,
                available,
                overloaded: load.overloaded,
                load: load.ratio(),
                weight: info.weight * load.ramp_factor(),
            }
        })
        .collect();
    let seeds = members.iter().map(|m| m.seed).collect();
    let candidates: Vec<Candidate<'_>> = members.iter().map(Endpoint::candidate).collect();
    let k = service.affinity.candidates;
    let rank =
        |client: Option<&Location>| policy::rank(service.policy, &candidates, client, regions, k);
    let uses_location = service.policy == Policy::Geo && !geo.is_empty();
    let rankings = if uses_location {
        geo.network_locations()
            .iter()
            .map(|l| rank(Some(l)))
            .collect()
    } else {
        Vec::new()
    };
    let default_ranking = rank(geo.default_location());
    let unknown_ranking = rank(None);
    drop(candidates);
    GslbNode {
        service: index,
        policy: service.policy,
        affinity: service.affinity,
        use_ecs: service.use_ecs,
        answers: service.answers.get(),
        mode,
        uses_location,
        members,
        seeds,
        rankings,
        default_ranking,
        unknown_ranking,
        signing: None,
        signatures: HashMap::default(),
    }
}

/// Signs (or finds in the zone's cache) every answer set the node's rankings produce: the
/// top of each ranking per family, and with affinity each candidate leading.
fn prepared_signatures(
    node: &GslbNode,
) -> HashMap<Box<[u8]>, Arc<crate::dnssec::Signed>, foldhash::fast::RandomState> {
    let mut signatures = HashMap::default();
    let mut picks = Vec::new();
    let mut addresses = Vec::new();
    let mut key = Vec::new();
    let mut order = Vec::new();
    let rankings = node
        .rankings
        .iter()
        .chain([&node.default_ranking, &node.unknown_ranking]);
    for ranking in rankings {
        let leaders = if ranking.candidates > 1 {
            ranking.candidates
        } else {
            1
        };
        for leader in 0..leaders {
            order.clear();
            order.extend(ranking.order.get(leader).copied());
            order.extend(
                ranking
                    .order
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != leader)
                    .map(|(_, e)| *e),
            );
            for v6 in [false, true] {
                node.answer_into(&order, ranking.available, v6, &mut picks);
                if picks.is_empty() {
                    continue;
                }
                let signed = node.signatures_of(&picks, v6, &mut addresses, &mut key);
                if let Some(super::table::Signature::Cached(signed)) = signed {
                    signatures.insert(key.as_slice().into(), signed);
                }
            }
        }
    }
    signatures
}

/// Every ancestor of an existing name, up to the apex, exists too.
fn add_empty_non_terminals(origin: &LowerName, nodes: &mut HashMap<LowerName, Node>) {
    let names: Vec<LowerName> = nodes.keys().cloned().collect();
    for name in names {
        let mut parent = name.base_name();
        while origin.zone_of(&parent) && parent != *origin {
            nodes
                .entry(parent.clone())
                .or_insert(Node::EmptyNonTerminal);
            parent = parent.base_name();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loaded::ConfigSource;
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
