//! Property tests of the ranking invariants.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;
use crate::config::Location;

fn candidate(
    available: bool,
    overloaded: bool,
    load: Option<f64>,
    weight: f64,
) -> Candidate<'static> {
    Candidate {
        location: None,
        weight,
        load,
        overloaded,
        available,
        rtt: &[],
    }
}

fn policies() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::Failover),
        Just(Policy::Geo),
        Just(Policy::LeastLoad),
        Just(Policy::Weighted),
        Just(Policy::Latency)
    ]
}

fn client(i: u32) -> u64 {
    affinity::client_key(IpAddr::V4(Ipv4Addr::from(i << 8)), 24, 56)
}

proptest! {
    /// An unavailable endpoint is never ranked before an available one, and an overloaded
    /// one never before one under its watermark; affinity only reorders within the best.
    #[test]
    fn unavailable_never_before_available(
        policy in policies(),
        members in prop::collection::vec((any::<bool>(), any::<bool>(), prop::option::of(0.0f64..2.0), 1.0f64..100.0), 1..20),
        k in 1usize..5,
        prefix in any::<u32>(),
    ) {
        let members: Vec<_> = members.into_iter().map(|(a, o, l, w)| candidate(a, o, l, w)).collect();
        let seeds: Vec<u64> = (0..members.len()).map(|i| affinity::seed("p", &i.to_string())).collect();
        let ranking = rank(policy, Tie::ConfigOrder, &members, None, &[], k);
        let order = order_for_client(&ranking, |i| members[i].weight, client(prefix), &seeds);
        let available = members.iter().filter(|m| m.available).count();
        prop_assert_eq!(ranking.available, available);
        prop_assert!(order[..available].iter().all(|i| members[*i as usize].available));
        let groups: Vec<u8> = order.iter().map(|i| group(&members[*i as usize])).collect();
        prop_assert!(groups.windows(2).all(|w| w[0] <= w[1]), "{:?}", groups);
        // Same input, same order.
        prop_assert_eq!(&rank(policy, Tie::ConfigOrder, &members, None, &[], k), &ranking);
        prop_assert_eq!(order_for_client(&ranking, |i| members[i].weight, client(prefix), &seeds), order);
    }
}

/// First choice of each of `clients` prefixes.
fn first_choices(members: &[Candidate<'_>], names: &[&str], clients: u32) -> Vec<String> {
    let seeds: Vec<u64> = names.iter().map(|n| affinity::seed("p", n)).collect();
    let ranking = rank(Policy::Weighted, Tie::ConfigOrder, members, None, &[], 3);
    (0..clients)
        .map(|c| {
            names[usize::from(
                order_for_client(&ranking, |i| members[i].weight, client(c), &seeds)[0],
            )]
            .to_string()
        })
        .collect()
}

#[test]
fn losing_one_of_n_moves_only_its_clients_about_one_in_n() {
    for n in [3usize, 5, 10] {
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let all: Vec<_> = (0..n).map(|_| candidate(true, false, None, 1.0)).collect();
        let before = first_choices(&all, &names, 20_000);
        // m1 goes down.
        let mut without = all.clone();
        without[1].available = false;
        let after = first_choices(&without, &names, 20_000);
        let moved: Vec<usize> = (0..before.len())
            .filter(|i| before[*i] != after[*i])
            .collect();
        assert!(
            moved.iter().all(|i| before[*i] == "m1"),
            "only m1's clients move (n = {n})"
        );
        assert!(after.iter().all(|c| c != "m1"));
        let share = moved.len() as f64 / before.len() as f64;
        let expected = 1.0 / n as f64;
        assert!(
            (share - expected).abs() < 0.02,
            "n = {n}: moved {share}, expected {expected}"
        );
    }
}

#[test]
fn weights_are_respected_within_a_tolerance() {
    let names = ["a", "b", "c", "d"];
    let weights = [1.0, 2.0, 3.0, 4.0];
    let members: Vec<_> = weights
        .iter()
        .map(|w| candidate(true, false, None, *w))
        .collect();
    let choices = first_choices(&members, &names, 40_000);
    for (name, weight) in names.iter().zip(weights) {
        let share = choices.iter().filter(|c| c == name).count() as f64 / choices.len() as f64;
        let expected = weight / 10.0;
        assert!(
            (share - expected).abs() < 0.015,
            "{name}: {share} vs {expected}"
        );
    }
}

#[test]
fn geo_ranks_nearest_first_and_ties_on_one_site_share_clients() {
    let fra = Location {
        coordinates: Some((50.1, 8.7)),
        region: None,
    };
    let nyc = Location {
        coordinates: Some((40.7, -74.0)),
        region: None,
    };
    let members = [
        Candidate {
            location: Some(&nyc),
            ..candidate(true, false, None, 1.0)
        },
        Candidate {
            location: Some(&fra),
            ..candidate(true, false, None, 1.0)
        },
        Candidate {
            location: Some(&fra),
            ..candidate(true, false, None, 1.0)
        },
    ];
    let london = Location {
        coordinates: Some((51.5, -0.1)),
        region: None,
    };
    let ranking = rank(
        Policy::Geo,
        Tie::ConfigOrder,
        &members,
        Some(&london),
        &[],
        1,
    );
    assert_eq!(ranking.order, vec![1, 2, 0]);
    assert_eq!(ranking.candidates, 2, "both Frankfurt endpoints tie");
    // No location: config order.
    assert_eq!(
        rank(Policy::Geo, Tie::ConfigOrder, &members, None, &[], 1).order,
        vec![0, 1, 2]
    );
}

#[test]
fn overloaded_endpoints_go_last_while_others_can_serve() {
    let members = [
        candidate(true, true, Some(0.95), 1.0),
        candidate(true, false, Some(0.5), 1.0),
        candidate(false, false, None, 1.0),
    ];
    let ranking = rank(Policy::Failover, Tie::ConfigOrder, &members, None, &[], 1);
    assert_eq!(ranking.order, vec![1, 0, 2]);
    assert_eq!(
        ranking.available, 2,
        "overloaded but available: still answerable last"
    );
    let least = rank(
        Policy::LeastLoad,
        Tie::ConfigOrder,
        &[
            candidate(true, false, Some(0.6), 1.0),
            candidate(true, false, Some(0.2), 1.0),
        ],
        None,
        &[],
        1,
    );
    assert_eq!(least.order, vec![1, 0]);
}

fn measured(region: &str, ms: u32) -> latency::VantageRtt {
    latency::VantageRtt {
        region: Some(region.into()),
        vantage: format!("{region}-1"),
        micros: ms * 1000,
    }
}

#[test]
fn latency_ranks_by_the_clients_regions_measurements() {
    let a = [measured("eu", 5), measured("us", 80)];
    let b = [measured("eu", 80), measured("us", 5)];
    let c: [latency::VantageRtt; 0] = [];
    let members = [
        Candidate {
            rtt: &c,
            ..candidate(true, false, None, 1.0)
        },
        Candidate {
            rtt: &b,
            ..candidate(true, false, None, 1.0)
        },
        Candidate {
            rtt: &a,
            ..candidate(true, false, None, 1.0)
        },
    ];
    let in_region = |name: &str| Location {
        coordinates: None,
        region: Some(name.into()),
    };
    let eu = rank(
        Policy::Latency,
        Tie::ConfigOrder,
        &members,
        Some(&in_region("eu")),
        &[],
        1,
    );
    assert_eq!(eu.order, vec![2, 1, 0], "eu: A, then B; unmeasured last");
    assert_eq!(eu.candidates, 1);
    let us = rank(
        Policy::Latency,
        Tie::ConfigOrder,
        &members,
        Some(&in_region("us")),
        &[],
        1,
    );
    assert_eq!(us.order, vec![1, 2, 0]);
    // A region without vantages borrows its preferred region's; without one, the median
    // of all (A: 5 and 80 -> 5; B: 80 and 5 -> 5: a tie, config order).
    let regions = [Region {
        name: "ap".into(),
        prefer: vec!["us".into()],
    }];
    let ap = rank(
        Policy::Latency,
        Tie::ConfigOrder,
        &members,
        Some(&in_region("ap")),
        &regions,
        1,
    );
    assert_eq!(ap.order, vec![1, 2, 0]);
    let anywhere = rank(
        Policy::Latency,
        Tie::ConfigOrder,
        &members,
        None,
        &regions,
        1,
    );
    assert_eq!(anywhere.order, vec![1, 2, 0]);
    assert_eq!(
        anywhere.candidates, 2,
        "equal round trips tie and share clients"
    );
    // Unavailable endpoints stay last whatever their round trip.
    let mut down = members.clone();
    down[2].available = false;
    let eu = rank(
        Policy::Latency,
        Tie::ConfigOrder,
        &down,
        Some(&in_region("eu")),
        &[],
        1,
    );
    assert_eq!(eu.order, vec![1, 0, 2]);
}

#[test]
fn a_latency_tie_orders_a_sites_endpoints() {
    let fast = [measured("eu", 3)];
    let slow = [measured("eu", 40)];
    let site = Location {
        coordinates: None,
        region: Some("fra".into()),
    };
    let members = [
        Candidate {
            location: Some(&site),
            rtt: &slow,
            ..candidate(true, false, None, 1.0)
        },
        Candidate {
            location: Some(&site),
            rtt: &fast,
            ..candidate(true, false, None, 1.0)
        },
    ];
    let client = Location {
        coordinates: None,
        region: Some("eu".into()),
    };
    let plain = rank(
        Policy::Geo,
        Tie::ConfigOrder,
        &members,
        Some(&client),
        &[],
        1,
    );
    assert_eq!((plain.order.clone(), plain.candidates), (vec![0, 1], 2));
    let tied = rank(Policy::Geo, Tie::Latency, &members, Some(&client), &[], 1);
    assert_eq!((tied.order.clone(), tied.candidates), (vec![1, 0], 1));
}
