//! Latency keys: the round trip to an endpoint as measured from the client's region.
//!
//! Every instance and probe agent measures each endpoint it probes (its smoothed round
//! trip, [`crate::health::rtt`]) and shares it with its region. A client placed in region
//! R is ranked by the measurements of R's vantages; when R has none, by those of the first
//! region in R's `[[geo.region]] prefer` list that has some; else by every vantage's. The
//! same vantage region is used for every endpoint of one ranking, so endpoints are
//! compared by measurements from one place; an endpoint nothing there measured ranks
//! after those measured.

use crate::config::Region;

/// One vantage's smoothed round trip to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VantageRtt {
    /// Its region (None: a vantage without one, e.g. an instance without a fleet).
    pub region: Option<String>,
    /// Who measured: an instance or probe agent id, or `local` without a fleet.
    pub vantage: String,
    /// The smoothed round trip, in microseconds.
    pub micros: u32,
}

/// Where a ranking's round trips are measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VantageFrom<'a> {
    /// The vantages of this region.
    Region(&'a str),
    /// Every vantage (the median of all).
    Everywhere,
}

impl VantageFrom<'_> {
    /// For explain and status.
    pub fn describe(&self) -> String {
        match self {
            VantageFrom::Region(region) => format!("measured from region {region}"),
            VantageFrom::Everywhere => "measured from every vantage (median)".into(),
        }
    }
}

/// The vantage region for clients in `client_region`: itself when something measures
/// from it, else the first region of its preference list that has vantages, else all.
/// `measured` holds the regions with any measurement of the pool.
pub fn vantage_for<'a>(
    client_region: Option<&'a str>,
    measured: &[&'a str],
    regions: &'a [Region],
) -> VantageFrom<'a> {
    let Some(client) = client_region else {
        return VantageFrom::Everywhere;
    };
    if measured.contains(&client) {
        return VantageFrom::Region(client);
    }
    regions
        .iter()
        .find(|r| r.name == client)
        .and_then(|r| {
            r.prefer
                .iter()
                .find(|p| measured.contains(&p.as_str()))
                .map(|p| VantageFrom::Region(p.as_str()))
        })
        .unwrap_or(VantageFrom::Everywhere)
}

/// The regions with a measurement in `rtts`, each once, sorted.
pub fn measured_regions<'a>(rtts: impl Iterator<Item = &'a VantageRtt>) -> Vec<&'a str> {
    let mut regions: Vec<&str> = rtts.filter_map(|r| r.region.as_deref()).collect();
    regions.sort_unstable();
    regions.dedup();
    regions
}

/// The endpoint's round trip seen from `from` (µs): the median of the matching
/// vantages' (the lower middle of an even count); None when none measured it.
pub fn key(rtts: &[VantageRtt], from: VantageFrom<'_>) -> Option<u32> {
    let mut seen: Vec<u32> = rtts
        .iter()
        .filter(|r| match from {
            VantageFrom::Region(region) => r.region.as_deref() == Some(region),
            VantageFrom::Everywhere => true,
        })
        .map(|r| r.micros)
        .collect();
    if seen.is_empty() {
        return None;
    }
    seen.sort_unstable();
    seen.get((seen.len() - 1) / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtt(region: &str, vantage: &str, ms: u32) -> VantageRtt {
        VantageRtt {
            region: Some(region.into()),
            vantage: vantage.into(),
            micros: ms * 1000,
        }
    }

    #[test]
    fn a_client_region_without_vantages_borrows_its_preferred_regions() {
        let regions = vec![Region {
            name: "ap".into(),
            prefer: vec!["me".into(), "eu".into(), "us".into()],
        }];
        let measured = ["eu", "us"];
        assert_eq!(
            vantage_for(Some("eu"), &measured, &regions),
            VantageFrom::Region("eu")
        );
        // ap has no vantage; me neither: eu is the first of its list that has one.
        assert_eq!(
            vantage_for(Some("ap"), &measured, &regions),
            VantageFrom::Region("eu")
        );
        assert_eq!(
            vantage_for(Some("sa"), &measured, &regions),
            VantageFrom::Everywhere
        );
        assert_eq!(
            vantage_for(None, &measured, &regions),
            VantageFrom::Everywhere
        );
    }

    #[test]
    fn keys_are_the_median_of_the_regions_vantages() {
        let rtts = vec![
            rtt("eu", "a", 5),
            rtt("eu", "b", 9),
            rtt("eu", "c", 400),
            rtt("us", "d", 80),
        ];
        // One slow vantage in eu does not move the median.
        assert_eq!(key(&rtts, VantageFrom::Region("eu")), Some(9_000));
        assert_eq!(key(&rtts, VantageFrom::Region("us")), Some(80_000));
        assert_eq!(key(&rtts, VantageFrom::Region("ap")), None);
        assert_eq!(key(&rtts, VantageFrom::Everywhere), Some(9_000));
        assert_eq!(measured_regions(rtts.iter()), vec!["eu", "us"]);
    }
}
