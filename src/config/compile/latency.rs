//! `[latency]`: how round trips are measured and smoothed, the real-user measurements'
//! bounds, and the checks that a latency ranking has somewhere to measure from.

use std::collections::HashSet;

use crate::config::located::{Collector, parse_duration};
use crate::config::raw::{RawConfig, RawLatency};
use crate::config::{
    ClusterSettings, GeoSettings, LatencySettings, Measure, Policy, Pool, Service, Tie,
};

/// Compiles `[latency]` (the defaults when absent).
pub(super) fn compile_latency(raw: &RawConfig, errors: &mut Collector<'_>) -> LatencySettings {
    let defaults = LatencySettings::default();
    let Some(latency) = &raw.latency else {
        return defaults;
    };
    let RawLatency {
        measure,
        window,
        relative_band,
        absolute_band,
        vantages,
        rum_max_prefixes,
        rum_max_age,
    } = latency.get_ref();
    let measure = errors.setting(
        measure.as_ref(),
        "latency.measure",
        defaults.measure,
        |v| match v.as_str() {
            "connect" => Some(Measure::Connect),
            "first-byte" => Some(Measure::FirstByte),
            _ => None,
        },
        "expected \"connect\" or \"first-byte\"",
    );
    let max_window = LatencySettings::MAX_WINDOW as i64;
    let window = window
        .as_ref()
        .and_then(|v| errors.ranged(v, "latency.window", 1..=max_window))
        .map_or(defaults.window, |v| v as usize);
    let relative_band = errors.setting(
        relative_band.as_ref(),
        "latency.relative_band",
        defaults.relative_band,
        |v| (v.is_finite() && (0.0..=1.0).contains(v)).then_some(*v),
        "must be between 0 and 1 (a fraction of the last round trip, e.g. 0.2)",
    );
    let absolute_band = errors.setting(
        absolute_band.as_ref(),
        "latency.absolute_band",
        defaults.absolute_band,
        |v| parse_duration(v).filter(|d| *d <= LatencySettings::MAX_ABSOLUTE_BAND),
        "not a duration of at most 10s (e.g. \"5ms\")",
    );
    let max_prefixes = LatencySettings::MAX_RUM_PREFIXES as i64;
    let rum_max_prefixes = rum_max_prefixes
        .as_ref()
        .and_then(|v| errors.ranged(v, "latency.rum_max_prefixes", 1..=max_prefixes))
        .map_or(defaults.rum_max_prefixes, |v| v as usize);
    let rum_max_age = errors.setting(
        rum_max_age.as_ref(),
        "latency.rum_max_age",
        defaults.rum_max_age,
        |v| {
            parse_duration(v)
                .filter(|d| *d >= std::time::Duration::from_secs(1) && d.as_secs() <= 86_400)
        },
        "not a duration between 1s and 24h (e.g. \"10m\")",
    );
    let mut names = Vec::new();
    for (i, vantage) in vantages.iter().flatten().enumerate() {
        let name = vantage.get_ref().trim();
        if name.is_empty() {
            errors.at(
                vantage,
                format!("latency.vantages[{i}]"),
                "empty region name",
            );
        } else if names.iter().any(|n| n == name) {
            errors.at(
                vantage,
                format!("latency.vantages[{i}]"),
                format!("region {name:?} is listed twice"),
            );
        } else {
            names.push(name.to_string());
        }
    }
    LatencySettings {
        measure,
        window,
        relative_band,
        absolute_band,
        vantages: names,
        rum_max_prefixes,
        rum_max_age,
    }
}

/// Every region something measures from: the declared vantages and this instance's own.
pub(crate) fn vantage_regions<'c>(
    latency: &'c LatencySettings,
    cluster: Option<&'c ClusterSettings>,
) -> Vec<&'c str> {
    let mut regions: Vec<&str> = latency.vantages.iter().map(String::as_str).collect();
    if let Some(own) = cluster.and_then(|c| c.region.as_deref())
        && !regions.contains(&own)
    {
        regions.push(own);
    }
    regions
}

/// Checks that each service ranking by latency has a vantage to measure from, and that
/// every declared vantage is a region the config uses.
pub(super) fn check_latency(
    raw: &RawConfig,
    latency: &LatencySettings,
    services: &[Service],
    pools: &[Pool],
    geo: &GeoSettings,
    cluster: Option<&ClusterSettings>,
    errors: &mut Collector<'_>,
) {
    let regions = vantage_regions(latency, cluster);
    for service in services {
        let uses = service.policy == Policy::Latency || service.tie == Tie::Latency;
        // Without a fleet the instance's own probes measure for every client.
        if uses && cluster.is_some() && regions.is_empty() {
            let Some(raw_service) = raw.service.get(service.position) else {
                continue;
            };
            let (what, field) = if service.policy == Policy::Latency {
                ("policy = \"latency\"", "policy")
            } else {
                ("tie = \"latency\"", "tie")
            };
            errors.at(
                raw_service,
                format!("service[{}].{field}", service.position),
                format!(
                    "{what} in a fleet has no vantage in any region: set [cluster] region \
                     (and list the fleet's other regions in [latency] vantages)"
                ),
            );
        }
    }
    let Some(raw_latency) = &raw.latency else {
        return;
    };
    let mut used: HashSet<&str> = HashSet::new();
    let members = pools.iter().flat_map(|p| &p.members);
    used.extend(members.filter_map(|m| m.location.as_ref()?.region.as_deref()));
    used.extend(
        geo.networks
            .iter()
            .filter_map(|n| n.location.region.as_deref()),
    );
    used.extend(geo.default.as_ref().and_then(|l| l.region.as_deref()));
    for region in &geo.regions {
        used.insert(region.name.as_str());
        used.extend(region.prefer.iter().map(String::as_str));
    }
    used.extend(cluster.and_then(|c| c.region.as_deref()));
    let listed = raw_latency.get_ref().vantages.iter().flatten().enumerate();
    for (i, vantage) in listed {
        let name = vantage.get_ref().trim();
        if !name.is_empty() && !used.contains(name) {
            errors.at(
                vantage,
                format!("latency.vantages[{i}]"),
                format!(
                    "no client network, member, [[geo.region]] or [cluster] region is in region \
                     {name:?} (check the spelling)"
                ),
            );
        }
    }
}
