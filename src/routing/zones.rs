//! The static part of each zone, prepared once per config (and per re-signing): its names
//! with the SOA at the apex, the GSLB names and the empty non-terminals, its delegations,
//! its negative SOA, and its signatures, reused from the preparation before while their
//! inputs are unchanged and fresh.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::{LowerName, Record};
use tracing::{debug, info, warn};

use super::node::{Node, Nodes};
use crate::config::WhenAllDown;
use crate::loaded::Loaded;
use crate::routing::ZoneSigning;
use crate::zone::RrSet;

/// The static part of one zone.
#[derive(Debug)]
pub(super) struct PreparedZone {
    pub(super) origin: LowerName,
    pub(super) negative_soa: Record,
    pub(super) nodes: Arc<Nodes>,
    pub(super) cuts: Arc<HashSet<LowerName>>,
    pub(super) has_wildcards: bool,
    pub(super) signing: Option<Arc<ZoneSigning>>,
}

/// The address families (A, AAAA) each GSLB name can answer by config: its pool's and its
/// fallback's addresses.
pub(super) fn gslb_families(loaded: &Loaded) -> HashMap<LowerName, (bool, bool)> {
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
pub(super) fn sign_zone(
    loaded: &Loaded,
    index: usize,
    records_digest: &[u8; 32],
    before: Option<&Arc<ZoneSigning>>,
    origin: &LowerName,
    nodes: &mut Nodes,
    cuts: &HashSet<LowerName>,
    negative_soa: &Record,
    families: &HashMap<LowerName, (bool, bool)>,
) -> Option<Arc<ZoneSigning>> {
    let spec = loaded.config.zones.get(index)?.dnssec.as_ref()?;
    let ring = loaded.keys.get(index)?.as_ref()?;
    let now = crate::dnssec::now();
    let apex = hickory_proto::rr::Name::from(origin);
    // The apex's own copy (the zone keeps its sets).
    nodes.edit_sets(origin, |sets| {
        for (record_type, records) in crate::dnssec::apex_sets(&apex, ring, now, spec.dnskey_ttl) {
            sets.retain(|s| s.record_type != record_type);
            let ttl = records.first().map_or(spec.dnskey_ttl, |r| r.ttl);
            sets.push(RrSet::new(
                record_type,
                ttl,
                records.into_iter().map(|r| r.data),
            ));
        }
    });
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
    // Signatures kept beside the state file by the last preparation (this process's or
    // the one before a restart): what still signs the same bytes is reused.
    let kept_path = loaded
        .config
        .server
        .state_file
        .as_deref()
        .map(|state| crate::dnssec::kept::path_for(state, &origin.to_string()));
    let mut keeping = kept_path
        .as_deref()
        .map(|path| crate::dnssec::kept::Keeping::read(path, now))
        .unwrap_or_default();
    match ZoneSigning::new(&content, ring, now, &mut keeping) {
        Ok(Some(mut signing)) => {
            info!(
                zone = %origin,
                signed = signing.signed,
                reused = signing.reused,
                "zone signed"
            );
            if let Some(path) = kept_path.filter(|_| signing.signed > 0) {
                keeping.write_later(path, &signing.window);
            }
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
            signing.waiting_for_parent = ring
                .keys
                .iter()
                .filter(|k| k.waits_for_parent(now))
                .map(|k| k.tag)
                .collect();
            signing.keys_dir = Some((
                spec.keys.clone(),
                loaded.keys_changed.get(index).copied().flatten(),
            ));
            metrics::counter!(crate::metrics::DNSSEC_SIGNED_AT_LOAD_TOTAL)
                .increment(signing.signed);
            metrics::counter!(crate::metrics::DNSSEC_REUSED_AT_LOAD_TOTAL)
                .increment(signing.reused);
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

/// The static part of one zone: its names (with the SOA at the apex, GSLB names and empty
/// non-terminals), delegations, negative SOA, and signatures (reused from `before` when
/// its inputs are unchanged and fresh).
pub(super) fn prepare_zone(
    loaded: &Loaded,
    index: usize,
    zone: &crate::zone::Zone,
    service_names: &[LowerName],
    families: &HashMap<LowerName, (bool, bool)>,
    before: Option<&Arc<ZoneSigning>>,
) -> PreparedZone {
    let origin = zone.origin().clone();
    let mut nodes = Nodes::of_file(zone.names().clone());
    // The SOA answers SOA queries at the apex like any other RRset.
    let soa_set = RrSet::of_records(vec![zone.soa().clone()]);
    nodes.edit_sets(&origin, |sets| sets.insert(0, soa_set));
    for name in service_names {
        if origin.zone_of(name) {
            nodes.set_gslb(name.clone());
        }
    }
    add_empty_non_terminals(&origin, &mut nodes);
    let mut negative_soa = zone.soa().clone();
    negative_soa.ttl = zone.negative_ttl();
    let cuts: HashSet<LowerName> = zone.cuts().iter().cloned().collect();
    let signing = sign_zone(
        loaded,
        index,
        zone.text_digest(),
        before,
        &origin,
        &mut nodes,
        &cuts,
        &negative_soa,
        families,
    );
    PreparedZone {
        origin,
        negative_soa,
        nodes: Arc::new(nodes),
        cuts: Arc::new(cuts),
        has_wildcards: zone.has_wildcards(),
        signing,
    }
}

/// Every ancestor of an existing name, up to the apex, exists too.
pub(super) fn add_empty_non_terminals(origin: &LowerName, nodes: &mut Nodes) {
    let mut missing = Vec::new();
    for (name, _) in nodes.iter() {
        let mut parent = name.base_name();
        while origin.zone_of(&parent) && parent != *origin && !nodes.contains_key(&parent) {
            missing.push(parent.clone());
            parent = parent.base_name();
        }
    }
    for name in missing {
        nodes.add_empty_non_terminal(name);
    }
}
