//! The builder: the only writer of the routing table. It turns the loaded config, the zones
//! and the current member state into a [`Snapshot`] ([`build`], pure) and publishes it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::handle::RoutingHandle;
use super::table::{GslbNode, Node, Snapshot, ZoneTable};
use crate::config::{Loaded, Member, Pool, Service, WhenAllDown};
use crate::policy;
use crate::zone::RrSet;

/// The identity of an endpoint across reloads: its pool's name and its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey {
    /// Pool name.
    pub pool: String,
    /// Member name within the pool.
    pub member: String,
}

/// A change for the builder to fold into the next snapshot.
#[derive(Debug)]
pub enum BuildEvent {
    /// Replace config and zones; answers with the new snapshot's generation.
    Reload {
        /// The validated config and zones.
        loaded: Arc<Loaded>,
        /// Told the generation once the new snapshot is live.
        done: Option<oneshot::Sender<u64>>,
    },
    /// An endpoint went up or down (health checks, drains).
    SetMemberUp {
        /// Which endpoint.
        key: MemberKey,
        /// Its new state.
        up: bool,
        /// Told the generation once the snapshot reflecting it is live.
        done: Option<oneshot::Sender<u64>>,
    },
}

/// Owns everything a snapshot is built from, and the handle it publishes to.
#[derive(Debug)]
pub struct Builder {
    loaded: Arc<Loaded>,
    /// Endpoints known to be down. Absent means up: a brand-new endpoint is answered at once.
    down: HashSet<MemberKey>,
    generation: u64,
    handle: RoutingHandle,
}

impl Builder {
    /// Builds and publishes the first snapshot (generation 1), every endpoint up.
    pub fn new(loaded: Loaded) -> Self {
        Self::with_down(Arc::new(loaded), [])
    }

    /// Like [`Builder::new`], with endpoints known to be down (restored from the state file).
    pub fn with_down(loaded: Arc<Loaded>, down: impl IntoIterator<Item = MemberKey>) -> Self {
        let down: HashSet<MemberKey> = down.into_iter().collect();
        let handle = RoutingHandle::new(build(&loaded, &down, 1));
        Self {
            loaded,
            down,
            generation: 1,
            handle,
        }
    }

    /// The handle the query path reads.
    pub fn handle(&self) -> RoutingHandle {
        self.handle.clone()
    }

    /// The config the current snapshot was built from.
    pub fn loaded(&self) -> Arc<Loaded> {
        self.loaded.clone()
    }

    /// Folds one event in and publishes a new snapshot if anything changed.
    pub fn apply(&mut self, event: BuildEvent) {
        match event {
            BuildEvent::Reload { loaded, done } => {
                self.loaded = loaded;
                // State of endpoints that no longer exist is dropped; the rest carries over.
                let loaded = self.loaded.clone();
                self.down.retain(|key| {
                    loaded.config.pools.iter().any(|p| {
                        p.name == key.pool && p.members.iter().any(|m| m.name == key.member)
                    })
                });
                self.publish();
                if let Some(done) = done {
                    // The reloader may have gone away; the snapshot is live either way.
                    let _ = done.send(self.generation);
                }
            }
            BuildEvent::SetMemberUp { key, up, done } => {
                let changed = if up {
                    self.down.remove(&key)
                } else {
                    self.down.insert(key)
                };
                if changed {
                    self.publish();
                }
                if let Some(done) = done {
                    // The sender may have gone away; the snapshot is live either way.
                    let _ = done.send(self.generation);
                }
            }
        }
    }

    fn publish(&mut self) {
        self.generation += 1;
        self.handle
            .store(build(&self.loaded, &self.down, self.generation));
        info!(generation = self.generation, "routing snapshot published");
    }

    /// Applies events until the channel closes or `token` is cancelled.
    pub async fn run(mut self, mut events: mpsc::Receiver<BuildEvent>, token: CancellationToken) {
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.apply(event),
                    None => break,
                },
                () = token.cancelled() => break,
            }
        }
    }
}

/// Builds a snapshot. Pure: the same inputs give the same snapshot.
pub fn build(loaded: &Loaded, down: &HashSet<MemberKey>, generation: u64) -> Snapshot {
    let config = &loaded.config;
    let mut zones: Vec<ZoneTable> = loaded
        .zones
        .iter()
        .map(|zone| {
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
                .entry(zone.origin().clone())
                .or_insert_with(|| Node::Static(Vec::new()))
            {
                sets.insert(0, soa_set);
            }
            let mut negative_soa = zone.soa().clone();
            negative_soa.ttl = zone.negative_ttl();
            ZoneTable {
                origin: zone.origin().clone(),
                negative_soa,
                nodes,
            }
        })
        .collect();
    zones.sort_by_key(|z| std::cmp::Reverse(z.origin.num_labels()));

    let is_up = |pool: &Pool, member: &Member| {
        !down.contains(&MemberKey {
            pool: pool.name.clone(),
            member: member.name.clone(),
        })
    };
    for (index, service) in config.services.iter().enumerate() {
        let name = LowerName::from(&service.name);
        let Some(zone) = zones.iter_mut().find(|z| z.origin.zone_of(&name)) else {
            continue; // config::load rejects this; nothing to serve.
        };
        let members = answered_members(service, &config.pools, &is_up);
        let node = GslbNode {
            service: index,
            a: address_records(&service.name, service, &members, false),
            aaaa: address_records(&service.name, service, &members, true),
        };
        zone.nodes.insert(name, Node::Gslb(node));
    }

    for zone in &mut zones {
        add_empty_non_terminals(zone);
    }

    Snapshot {
        generation,
        udp_payload: config.server.udp_payload,
        zones,
        services: config
            .services
            .iter()
            .map(|s| LowerName::from(&s.name))
            .collect(),
    }
}

/// The endpoints a service answers, best first, after `when_all_down` is applied.
fn answered_members<'c>(
    service: &Service,
    pools: &'c [Pool],
    is_up: &impl Fn(&Pool, &Member) -> bool,
) -> Vec<&'c Member> {
    let Some(pool) = pools.get(service.pool.0) else {
        return Vec::new();
    };
    let up: Vec<&Member> = pool.members.iter().filter(|m| is_up(pool, m)).collect();
    if !up.is_empty() {
        return policy::rank(service.policy, up);
    }
    let all = || policy::rank(service.policy, pool.members.iter().collect());
    match service.when_all_down {
        WhenAllDown::All => all(),
        WhenAllDown::Empty => Vec::new(),
        WhenAllDown::Fallback(id) => match pools.get(id.0) {
            Some(fallback) => {
                let up: Vec<&Member> = fallback
                    .members
                    .iter()
                    .filter(|m| is_up(fallback, m))
                    .collect();
                // A fallback that is down too fails open to the service's own pool.
                if up.is_empty() {
                    all()
                } else {
                    policy::rank(service.policy, up)
                }
            }
            None => all(),
        },
    }
}

/// The first `answers` addresses of one family, in ranked order.
fn address_records(name: &Name, service: &Service, members: &[&Member], v6: bool) -> Vec<Record> {
    members
        .iter()
        .flat_map(|m| crate::config::addresses_of(m, v6))
        .take(service.answers.get())
        .map(|ip| {
            let data = match ip {
                std::net::IpAddr::V4(v4) => RData::A(A(v4)),
                std::net::IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            };
            Record::from_rdata(name.clone(), service.ttl.get(), data)
        })
        .collect()
}

/// Every ancestor of an existing name, up to the apex, exists too.
fn add_empty_non_terminals(zone: &mut ZoneTable) {
    let names: Vec<LowerName> = zone.nodes.keys().cloned().collect();
    for name in names {
        let mut parent = name.base_name();
        while zone.origin.zone_of(&parent) && parent != zone.origin {
            zone.nodes
                .entry(parent.clone())
                .or_insert(Node::EmptyNonTerminal);
            parent = parent.base_name();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;

    fn addresses(snapshot: &Snapshot, qtype: RecordType) -> Vec<String> {
        let name = LowerName::from(Name::from_ascii("vpn.gto.example.com.").unwrap());
        snapshot
            .resolve(&name, qtype)
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

        let key = MemberKey {
            pool,
            member: first,
        };
        builder.apply(BuildEvent::SetMemberUp {
            key: key.clone(),
            up: false,
            done: None,
        });
        let snapshot = handle.load();
        assert_eq!(snapshot.generation, 2);
        let during = addresses(&snapshot, RecordType::A);
        assert!(!during.contains(&before[0]), "{during:?}");
        assert_eq!(during[0], before[1]);

        // A repeated state is not a change: no new snapshot.
        builder.apply(BuildEvent::SetMemberUp {
            key: key.clone(),
            up: false,
            done: None,
        });
        assert_eq!(handle.load().generation, 2);

        builder.apply(BuildEvent::SetMemberUp {
            key,
            up: true,
            done: None,
        });
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
            builder.apply(BuildEvent::SetMemberUp {
                key: MemberKey {
                    pool: pool.name.clone(),
                    member: member.name.clone(),
                },
                up: false,
                done: None,
            });
        }
        assert_eq!(addresses(&builder.handle().load(), RecordType::A), before);
    }
}
