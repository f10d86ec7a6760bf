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
#[derive(Debug, Clone)]
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

/// Adds the DNSKEY, CDS and CDNSKEY RRsets to a zone's apex when its config signs it.
fn add_apex_keys(loaded: &Loaded, index: usize, origin: &LowerName, nodes: &mut Nodes) {
    let Some(spec) = loaded
        .config
        .zones
        .get(index)
        .and_then(|z| z.dnssec.as_ref())
    else {
        return;
    };
    let Some(ring) = loaded.keys.get(index).and_then(Option::as_ref) else {
        return;
    };
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
}

/// How a preparation signs a zone whose signatures it cannot reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sign {
    /// Whole, unless the zone is big ([`crate::routing::signing::SIGN_ON_FIRST_USE_FROM`]
    /// names): then on first use, and whole later by the builder.
    AtOnceOrOnFirstUse,
    /// Whole now (the builder's thread, after a preparation that signs on first use).
    Whole,
}

/// What of a prepared zone its signing reads.
pub(super) struct ToSign<'a> {
    pub(super) origin: &'a LowerName,
    pub(super) nodes: &'a Arc<Nodes>,
    pub(super) cuts: &'a Arc<HashSet<LowerName>>,
    pub(super) negative_soa: &'a Record,
}

/// Signs a zone when its config asks for it and a key signs now (its apex's keys added by
/// [`add_apex_keys`]). Failures are logged and leave the zone unsigned.
pub(super) fn sign_zone(
    loaded: &Loaded,
    index: usize,
    records_digest: &[u8; 32],
    before: Option<&Arc<ZoneSigning>>,
    zone: &ToSign<'_>,
    families: &HashMap<LowerName, (bool, bool)>,
    how: Sign,
) -> Option<Arc<ZoneSigning>> {
    let spec = loaded.config.zones.get(index)?.dnssec.as_ref()?;
    let ring = loaded.keys.get(index)?.as_ref()?;
    let now = crate::dnssec::now();
    let ToSign {
        origin,
        nodes,
        cuts,
        negative_soa,
    } = *zone;
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
    let big = nodes.len() >= crate::routing::signing::SIGN_ON_FIRST_USE_FROM;
    let signed = if how == Sign::AtOnceOrOnFirstUse && big {
        ZoneSigning::on_first_use(&content, nodes.clone(), cuts.clone(), ring, now).map(|lazy| {
            lazy.inspect(|lazy| {
                info!(
                    zone = %origin,
                    names = nodes.len(),
                    signed = lazy.signed,
                    "zone served signed on first use; the rest is signed in the background"
                );
            })
        })
    } else {
        sign_whole(loaded, origin, &content, ring, now)
    };
    match signed {
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

/// Signs the whole zone, reusing the signatures kept beside the state file and writing
/// them again when any was made.
fn sign_whole(
    loaded: &Loaded,
    origin: &LowerName,
    content: &crate::routing::ZoneContent<'_>,
    ring: &crate::dnssec::keys::KeyRing,
    now: u64,
) -> Result<Option<ZoneSigning>, crate::dnssec::SignError> {
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
    let signed = ZoneSigning::new(content, ring, now, &mut keeping)?;
    if let Some(signing) = &signed {
        // The write is under way (a SIGTERM waits for it) before the log says so.
        if let Some(path) = kept_path.filter(|_| signing.signed > 0) {
            keeping.write_later(path, &signing.window);
        }
        info!(
            zone = %origin,
            signed = signing.signed,
            reused = signing.reused,
            "zone signed"
        );
    }
    Ok(signed)
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
    add_apex_keys(loaded, index, &origin, &mut nodes);
    let (nodes, cuts) = (Arc::new(nodes), Arc::new(cuts));
    let to_sign = ToSign {
        origin: &origin,
        nodes: &nodes,
        cuts: &cuts,
        negative_soa: &negative_soa,
    };
    let signing = sign_zone(
        loaded,
        index,
        zone.text_digest(),
        before,
        &to_sign,
        families,
        Sign::AtOnceOrOnFirstUse,
    );
    PreparedZone {
        origin,
        negative_soa,
        nodes,
        cuts,
        has_wildcards: zone.has_wildcards(),
        signing,
    }
}

/// The whole signing of a prepared zone that signs on first use (same inputs, same
/// names), for the builder to put in its place; None when the zone is no longer in
/// `loaded` or cannot be signed.
pub(super) fn sign_in_full(loaded: &Loaded, zone: &PreparedZone) -> Option<Arc<ZoneSigning>> {
    let index = loaded
        .zones
        .iter()
        .position(|z| *z.origin() == zone.origin)?;
    let to_sign = ToSign {
        origin: &zone.origin,
        nodes: &zone.nodes,
        cuts: &zone.cuts,
        negative_soa: &zone.negative_soa,
    };
    sign_zone(
        loaded,
        index,
        loaded.zones.get(index)?.text_digest(),
        None,
        &to_sign,
        &gslb_families(loaded),
        Sign::Whole,
    )
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
