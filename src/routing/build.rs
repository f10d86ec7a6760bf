//! The builder: the only writer of the routing table. It turns the loaded config, the zones
//! and the current member state into a [`Snapshot`] ([`build`], pure) and publishes it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{LowerName, RData, Record};

use super::rrl::RateLimiter;
use super::wire::FastIndex;
use super::zones::{PreparedZone, gslb_families, prepare_zone};
use super::{
    Endpoint, EndpointInfo, EndpointKey, GslbNode, OverrideRanking, Selection, ServiceInfo,
    Snapshot, ZoneTable,
};
use crate::config::{Location, OverrideTarget, Policy, Region, Service, WhenAllDown};
use crate::geo::GeoTable;
use crate::loaded::Loaded;
use crate::metrics::ANSWERS_TOTAL;
use crate::policy;
use crate::policy::Ranking;
use crate::policy::load::LoadView;
use crate::policy::{Candidate, affinity};

/// What the builder knows of one endpoint besides the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointState {
    /// Health checks say down.
    pub down: bool,
    /// An operator drained it.
    pub drained: bool,
    /// Its load as ranking sees it.
    pub load: LoadView,
    /// Address families whose own probe says down while the endpoint is up.
    pub withheld: Withheld,
}

/// The address families of an up endpoint left out of answers: with `family = "each"`, a
/// dual-stack endpoint whose IPv4 (or IPv6) probe fails gives no A (or AAAA) records while
/// the other family's probe succeeds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Withheld {
    /// No A records.
    pub v4: bool,
    /// No AAAA records.
    pub v6: bool,
}

impl Withheld {
    /// Whether the family (`v6` or IPv4) is left out.
    pub fn of(self, v6: bool) -> bool {
        if v6 { self.v6 } else { self.v4 }
    }
}

impl Default for EndpointState {
    /// A brand-new endpoint: up (answered at once), not drained, load unknown.
    fn default() -> Self {
        Self {
            down: false,
            drained: false,
            load: LoadView::UNKNOWN,
            withheld: Withheld::default(),
        }
    }
}

/// Per-endpoint state the snapshot is built from, besides the config: one entry per
/// endpoint whose state is not the default.
#[derive(Debug, Default, Clone)]
pub struct EndpointStates {
    /// Endpoints that are down, drained or have a known load.
    pub endpoints: HashMap<EndpointKey, EndpointState>,
    /// Round trips measured to endpoints, by vantage (endpoints nothing measured have none).
    pub rtts: HashMap<EndpointKey, Arc<[crate::policy::latency::VantageRtt]>>,
    /// Fresh real-user measurements, by client prefix.
    pub rum: Arc<[crate::health::rum::RumPrefix]>,
    /// Answer counters, kept across rebuilds so status can show each endpoint's share.
    /// Keyed by GSLB name and endpoint: two names sharing a pool count apart.
    pub answered: HashMap<(String, EndpointKey), Arc<AtomicU64>>,
}

impl EndpointStates {
    /// One endpoint's state (the default when nothing is known of it).
    pub fn of(&self, key: &EndpointKey) -> EndpointState {
        self.endpoints.get(key).copied().unwrap_or_default()
    }

    /// Changes one endpoint's state; returns whether anything changed.
    pub fn update(&mut self, key: EndpointKey, change: impl FnOnce(&mut EndpointState)) -> bool {
        let before = self.of(&key);
        let mut after = before;
        change(&mut after);
        if after == before {
            return false;
        }
        if after == EndpointState::default() {
            self.endpoints.remove(&key);
        } else {
            self.endpoints.insert(key, after);
        }
        true
    }

    /// How many endpoints are down, and how many drained.
    pub fn counts(&self) -> (usize, usize) {
        let down = self.endpoints.values().filter(|s| s.down).count();
        let drained = self.endpoints.values().filter(|s| s.drained).count();
        (down, drained)
    }

    /// Drops the state of endpoints `loaded` no longer has.
    pub(super) fn retain_existing(&mut self, loaded: &Loaded) {
        let exists = |key: &EndpointKey| {
            loaded
                .config
                .pools
                .iter()
                .any(|p| p.name == key.pool && p.members.iter().any(|m| m.name == key.member))
        };
        self.endpoints.retain(|key, _| exists(key));
        self.rtts.retain(|key, _| exists(key));
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
    pub(super) fn add_counters(&mut self, loaded: &Loaded) {
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
    /// The index is built after the first snapshot of this preparation is published
    /// (a big zone: [`DEFER_INDEX_FROM`]); until then the general path answers everything.
    index_pending: bool,
    /// Response rate limiting: one table per config, so flips and drains keep its state.
    rrl: Option<Arc<RateLimiter>>,
    /// `[server] identity` as NSID bytes, and the CH TXT records that tell it.
    identity: Option<Arc<[u8]>>,
    chaos: Arc<[Record]>,
    /// The dnstap log: kept from the preparation before while `[dnstap]` is unchanged.
    pub(super) dnstap: Option<Arc<crate::dnstap::Tap>>,
}

/// Prepares the config-only part of snapshots.
pub fn prepare(loaded: &Loaded, states: &EndpointStates) -> Prepared {
    prepare_after(loaded, states, None)
}

/// [`prepare`], reusing from `previous` the signatures of every signed zone whose inputs
/// (records, GSLB names, keys, settings) did not change and that are still fresh: a
/// reload that leaves a big signed zone alone signs nothing of it again.
pub(super) fn prepare_after(
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
            let before = previous
                .and_then(|p| p.zones.iter().find(|z| z.origin == *zone.origin()))
                .and_then(|z| z.signing.as_ref());
            prepare_zone(loaded, index, zone, &service_names, &families, before)
        })
        .collect();
    zones.sort_by_key(|z| std::cmp::Reverse(z.origin.num_labels()));

    let endpoints = prepare_endpoints(loaded, states);
    let mut prepared = Prepared {
        zones,
        geo: Arc::new(GeoTable::new(&config.geo, loaded.geo_db.clone())),
        endpoints,
        fast: Arc::new(FastIndex::default()),
        index_pending: false,
        rrl: RateLimiter::new(&config.rrl).map(Arc::new),
        identity: config
            .server
            .identity
            .as_ref()
            .map(|id| Arc::from(id.as_bytes())),
        chaos: chaos_records(config.server.identity.as_deref(), config.server.version).into(),
        dnstap: dnstap_after(config.dnstap.as_ref(), previous),
    };
    // The fast path's tails come from the general lookup of a snapshot of this config.
    let names: usize = prepared.zones.iter().map(|z| z.nodes.len()).sum();
    if names < DEFER_INDEX_FROM {
        let reference = build_prepared(&prepared, loaded, states, 0);
        prepared.fast = Arc::new(FastIndex::build(&reference));
    } else {
        prepared.index_pending = true;
    }
    prepared
}

/// Names from which the fast path's index is built after the first snapshot of a
/// preparation is published, by the builder's own thread ([`super::Builder`]): a
/// 200,000-name zone answers (by the general path) a quarter of a second sooner after a
/// start or a reload, and the fast path takes over once its index is ready.
pub(super) const DEFER_INDEX_FROM: usize = 20_000;

impl Prepared {
    /// True while the fast path's index of this preparation is still to be built.
    pub(super) fn index_pending(&self) -> bool {
        self.index_pending
    }

    /// Sets the fast path's index, built from a snapshot of this preparation.
    pub(super) fn set_index(&mut self, fast: Arc<FastIndex>) {
        self.fast = fast;
        self.index_pending = false;
    }

    /// Drops the fast path's index, to be built again after the next snapshot is
    /// published (the general path answers until then).
    pub(super) fn index_later(&mut self) {
        self.fast = Arc::new(FastIndex::default());
        self.index_pending = true;
    }

    /// The zones whose static sets are signed on first use.
    pub(super) fn zones_signed_on_first_use(&self) -> impl Iterator<Item = &PreparedZone> {
        self.zones.iter().filter(|zone| {
            zone.signing
                .as_ref()
                .is_some_and(|signing| signing.signs_on_first_use())
        })
    }

    /// Puts `whole` in place of the zone signing `lazy`; false when no zone has it.
    pub(super) fn replace_signing(
        &mut self,
        lazy: &Arc<super::ZoneSigning>,
        whole: Arc<super::ZoneSigning>,
    ) -> bool {
        let Some(zone) = self.zones.iter_mut().find(|zone| {
            zone.signing
                .as_ref()
                .is_some_and(|signing| Arc::ptr_eq(signing, lazy))
        }) else {
            return false;
        };
        zone.signing = Some(whole);
        true
    }
}

/// The prepared endpoints of every GSLB name, by (service index, pool index): its own
/// pool's and its fallback pool's, with their records in both wire forms and their answer
/// counters (kept across rebuilds in `states`).
fn prepare_endpoints(
    loaded: &Loaded,
    states: &EndpointStates,
) -> HashMap<(usize, usize), Vec<Arc<EndpointInfo>>> {
    let config = &loaded.config;
    let mut endpoints = HashMap::new();
    for (index, service) in config.services.iter().enumerate() {
        let mut pool_indices = vec![service.pool.0];
        if let WhenAllDown::Fallback(id) = service.when_all_down {
            pool_indices.push(id.0);
        }
        // The pools of its overrides: their clients are answered from them.
        for o in &service.overrides {
            if let OverrideTarget::Pool(id) = o.target
                && !pool_indices.contains(&id.0)
            {
                pool_indices.push(id.0);
            }
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
                        runtime: loaded
                            .runtime
                            .iter()
                            .any(|r| r.pool == key.pool && r.name == key.member),
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
    endpoints
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
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Snapshot {
        generation,
        serial: SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
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
        dnstap: prepared.dnstap.clone(),
    }
}

/// The dnstap log of a config: the previous one while its setting is the same (the
/// stream goes on), else a new one (the old one ends when its last snapshot goes).
fn dnstap_after(
    settings: Option<&crate::config::DnstapSettings>,
    previous: Option<&Prepared>,
) -> Option<Arc<crate::dnstap::Tap>> {
    let settings = settings?;
    if let Some(tap) = previous.and_then(|p| p.dnstap.as_ref())
        && tap.settings() == settings
    {
        return Some(tap.clone());
    }
    crate::dnstap::Tap::start(settings.clone())
        .inspect_err(|error| tracing::error!(%error, "dnstap log cannot start"))
        .ok()
}

/// `id.server.` and `hostname.bind.` (the identity) when an identity is configured, and
/// `version.server.` and `version.bind.` (gto's version) unless `[server] version = false`,
/// as CH TXT records.
fn chaos_records(identity: Option<&str>, version: bool) -> Vec<Record> {
    let text = format!("gto {}", env!("CARGO_PKG_VERSION"));
    let identity = identity
        .map(|id| [("id.server.", id), ("hostname.bind.", id)])
        .into_iter()
        .flatten();
    let version = version
        .then_some([
            ("version.server.", text.as_str()),
            ("version.bind.", text.as_str()),
        ])
        .into_iter()
        .flatten();
    identity
        .chain(version)
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
    let infos_of = |pool: usize| {
        prepared
            .endpoints
            .get(&(index, pool))
            .map(Vec::as_slice)
            .unwrap_or_default()
    };
    let serves = |info: &EndpointInfo| {
        let state = states.of(&info.key);
        !state.down && !state.drained
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
    let endpoint = |info: &Arc<EndpointInfo>, mode: Selection| {
        let state = states.of(&info.key);
        let (up, drained) = (!state.down, state.drained);
        let available = match mode {
            Selection::Empty => false,
            Selection::FailOpen => true,
            Selection::Fallback | Selection::Normal => up && !drained,
        };
        let load = state.load;
        // Failing open answers every address, as with every endpoint down.
        let withheld = match mode {
            Selection::FailOpen | Selection::Empty => Withheld::default(),
            Selection::Fallback | Selection::Normal => state.withheld,
        };
        Endpoint {
            info: info.clone(),
            up,
            drained,
            available,
            withheld,
            overloaded: load.overloaded,
            load: load.ratio(),
            weight: info.weight * load.ramp_factor(),
            rtt: states
                .rtts
                .get(&info.key)
                .cloned()
                .unwrap_or_else(|| Arc::new([])),
        }
    };
    let mut members: Vec<Endpoint> = infos_of(pool)
        .iter()
        .map(|info| endpoint(info, mode))
        .collect();
    let normal = members.len();
    // Each override's endpoints: members of the pool answered now, or another pool's
    // (appended; only its clients get them), ranked by the policy without geography.
    let mut overrides = Vec::with_capacity(service.overrides.len());
    for o in &service.overrides {
        let indices: Vec<usize> = match &o.target {
            OverrideTarget::Members(names) => (0..normal)
                .filter(|&i| service.pool.0 == pool && names.contains(&members[i].info.key.member))
                .collect(),
            OverrideTarget::Pool(id) if id.0 == pool => (0..normal).collect(),
            OverrideTarget::Pool(id) => {
                let start = members.len();
                members.extend(
                    infos_of(id.0)
                        .iter()
                        .map(|info| endpoint(info, Selection::Normal)),
                );
                (start..members.len()).collect()
            }
        };
        let candidates: Vec<Candidate<'_>> =
            indices.iter().map(|&i| members[i].candidate()).collect();
        let ranked = policy::rank(
            service.policy,
            service.tie,
            &candidates,
            None,
            regions,
            service.affinity.candidates,
        );
        let to_member = |i: &u16| {
            indices
                .get(usize::from(*i))
                .and_then(|&m| u16::try_from(m).ok())
        };
        let own: Vec<u16> = ranked.order.iter().filter_map(to_member).collect();
        overrides.push((o, own, ranked.available, ranked.candidates));
    }
    let normal_members = &members[..normal];
    let seeds = members.iter().map(|m| m.seed).collect();
    let candidates: Vec<Candidate<'_>> = normal_members.iter().map(Endpoint::candidate).collect();
    let k = service.affinity.candidates;
    let rank = |client: Option<&Location>| {
        policy::rank(service.policy, service.tie, &candidates, client, regions, k)
    };
    let uses_location = matches!(service.policy, Policy::Geo | Policy::Latency)
        || service.tie == crate::config::Tie::Latency;
    let uses_location = uses_location && !geo.is_empty();
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
    let rum = (service.policy == Policy::Latency && !states.rum.is_empty())
        .then(|| rum_index(&states.rum, normal_members, &candidates, geo, regions, k))
        .filter(|index| !index.is_empty())
        .map(Box::new);
    drop(candidates);
    // An override's clients get its own endpoints first, then the service's others (by
    // the ranking without location), the ones that can serve ahead of the rest.
    let overrides = overrides
        .into_iter()
        .map(|(o, own, own_available, own_candidates)| {
            let rest = |from: usize, to: usize| {
                unknown_ranking
                    .order
                    .iter()
                    .take(to)
                    .skip(from)
                    .filter(|i| !own.contains(i))
                    .copied()
                    .collect::<Vec<u16>>()
            };
            let rest_available = rest(0, unknown_ranking.available);
            let rest_down = rest(unknown_ranking.available, unknown_ranking.order.len());
            let available = own_available + rest_available.len();
            let mut order = own[..own_available].to_vec();
            order.extend(rest_available);
            order.extend_from_slice(&own[own_available..]);
            order.extend(rest_down);
            OverrideRanking {
                position: o.position,
                networks: o.networks.clone(),
                serving: own_available,
                ranking: Ranking {
                    order,
                    candidates: if own_available > 0 {
                        own_candidates
                    } else {
                        unknown_ranking.candidates
                    },
                    available,
                },
            }
        })
        .collect();
    GslbNode {
        service: index,
        policy: service.policy,
        tie: service.tie,
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
        normal,
        overrides,
        rum,
    }
}

/// A latency service's rankings for the client prefixes with real-user measurements of
/// its endpoints: the measured endpoints by their round trips, then the others as the
/// vantages rank them for the prefix's location.
fn rum_index(
    prefixes: &[crate::health::rum::RumPrefix],
    members: &[Endpoint],
    candidates: &[Candidate<'_>],
    geo: &GeoTable,
    regions: &[Region],
    k: usize,
) -> super::rum::RumIndex {
    let mut cells = Vec::new();
    // The regions something measured from are the pool's, whatever the prefix.
    let measured = policy::latency::measured_regions(candidates.iter().flat_map(|c| c.rtt.iter()));
    for prefix in prefixes {
        let rtts: Vec<Option<u32>> = members
            .iter()
            .map(|m| prefix.rtts.get(&m.key).copied())
            .collect();
        if rtts.iter().all(Option::is_none) {
            continue;
        }
        let (placement, _) = geo.place(prefix.prefix.network());
        let location = geo.location_of(&placement);
        let client_region = location.and_then(|l| l.region.as_deref());
        let from = policy::latency::vantage_for(client_region, &measured, regions);
        let ranking = policy::rank_by(
            candidates,
            |i, c| match rtts.get(i).copied().flatten() {
                Some(micros) => (0.0, f64::from(micros)),
                None => (1.0, policy::latency_key(c, from)),
            },
            k,
        );
        cells.push(super::rum::RumCell {
            prefix: prefix.prefix,
            ranking,
            rtts,
        });
    }
    super::rum::RumIndex::new(cells)
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
                if let Some(super::Signature::Cached(signed)) = signed {
                    signatures.insert(key.as_slice().into(), signed);
                }
            }
        }
    }
    signatures
}
