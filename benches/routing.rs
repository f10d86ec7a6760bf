//! Snapshot rebuild cost: what the builder pays on every health flip, for 100 pools x 100
//! endpoints (DESIGN target: under 1 ms); and the per-query ranking cost of a GSLB name
//! with 100 endpoints (choose the order for a client, pick the answer records).
//! `cargo bench --bench routing`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gto::ConfigSource;
use std::net::IpAddr;

use gto::routing::{Client, EndpointStates, build, build_prepared, prepare};
use hickory_proto::rr::{LowerName, Name, RecordType};

fn config(pools: usize, per_pool: usize) -> String {
    let mut text = String::from("[[zone]]\norigin = \"gto.example.com.\"\nfile = \"zone\"\n");
    for pool in 0..pools {
        write!(text, "[[service]]\nname = \"s{pool}.gto.example.com.\"\npool = \"p{pool}\"\n[[pool]]\nname = \"p{pool}\"\n").unwrap();
        for member in 0..per_pool {
            let (a, b) = (member / 250, member % 250 + 1);
            write!(
                text,
                "[[pool.member]]\nname = \"m{member}\"\naddresses = [\"10.{pool}.{a}.{b}\", \"2001:db8:{pool:x}::{member:x}\"]\n"
            )
            .unwrap();
        }
    }
    text
}

fn rebuild(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("zone"), gto::config::EMBEDDED_ZONE).unwrap();
    std::fs::write(dir.path().join("gto.toml"), config(100, 100)).unwrap();
    let loaded = ConfigSource::File(dir.path().join("gto.toml"))
        .load()
        .unwrap();
    let states = EndpointStates::default();
    // A reload: everything, records encoded again.
    c.bench_function(
        "routing/build_from_scratch_100_pools_x_100_endpoints",
        |b| b.iter(|| black_box(build(black_box(&loaded), &states, 2))),
    );
    // A health flip: the config part is prepared already; only ranking runs.
    let prepared = prepare(&loaded, &states);
    c.bench_function(
        "routing/rebuild_after_flip_100_pools_x_100_endpoints",
        |b| b.iter(|| black_box(build_prepared(&prepared, black_box(&loaded), &states, 2))),
    );
}

/// Issue 14: the same 100 x 100 config with the zone signed (one ECDSA P-256 CSK): the
/// preparation signs every static RRset and every GSLB name's NODATA proofs; the build
/// signs (or finds in the cache) every answer set the rankings produce.
fn rebuild_signed(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("zone"), gto::config::EMBEDDED_ZONE).unwrap();
    let text = config(100, 100).replacen(
        "file = \"zone\"\n",
        "file = \"zone\"\ndnssec = { keys = \"keys\" }\n",
        1,
    );
    std::fs::write(dir.path().join("gto.toml"), text).unwrap();
    let now = gto::dnssec::now();
    gto::dnssec::keys::generate(
        &dir.path().join("keys"),
        &Name::from_ascii("gto.example.com.").unwrap(),
        gto::dnssec::keys::Role::Csk,
        gto::dnssec::keys::KeyAlgorithm::EcdsaP256,
        gto::dnssec::keys::Timeline::from(now),
        3600,
    )
    .unwrap();
    let loaded = ConfigSource::File(dir.path().join("gto.toml"))
        .load()
        .unwrap();
    let states = EndpointStates::default();
    let snapshot = build(&loaded, &states, 2);
    assert_eq!(snapshot.zones_signed(), 1);
    // A reload or re-signing: every signature made again (fresh cache).
    c.bench_function(
        "routing/signed_build_from_scratch_100_pools_x_100_endpoints",
        |b| b.iter(|| black_box(build(black_box(&loaded), &states, 2))),
    );
    // A health flip: answer sets seen before come from the cache.
    let prepared = prepare(&loaded, &states);
    let _ = build_prepared(&prepared, &loaded, &states, 2);
    c.bench_function(
        "routing/signed_rebuild_after_flip_100_pools_x_100_endpoints",
        |b| b.iter(|| black_box(build_prepared(&prepared, black_box(&loaded), &states, 2))),
    );
    // A flip that takes the first endpoint of every pool down: each pool's answer sets
    // are new and signed once (measured on a fresh preparation each time).
    let mut down = EndpointStates::default();
    for pool in 0..100 {
        let key = gto::routing::EndpointKey {
            pool: format!("p{pool}"),
            member: "m0".into(),
        };
        down.update(key, |state| state.down = true);
    }
    c.bench_function(
        "routing/signed_rebuild_with_new_sets_100_pools_x_100_endpoints",
        |b| {
            b.iter_batched(
                || {
                    let prepared = prepare(&loaded, &states);
                    let _ = build_prepared(&prepared, &loaded, &states, 2);
                    prepared
                },
                |prepared| black_box(build_prepared(&prepared, &loaded, &down, 3)),
                criterion::BatchSize::LargeInput,
            )
        },
    );
}

/// 100 endpoints on 10 sites, 50 client networks, geo policy.
fn geo_config() -> String {
    let mut text = String::from(
        "[[zone]]\norigin = \"gto.example.com.\"\nfile = \"zone\"\n[geo]\ndefault = { lat = 0.0, lon = 0.0 }\n",
    );
    for n in 0..50 {
        write!(
            text,
            "[[geo.network]]\ncidr = \"10.{n}.0.0/16\"\nlocation = {{ lat = {}.5, lon = {}.5 }}\n",
            (n * 3) % 80,
            (n * 7) % 170
        )
        .unwrap();
    }
    text.push_str("[[service]]\nname = \"vpn.gto.example.com.\"\npool = \"p\"\npolicy = \"geo\"\nanswers = 2\n[[pool]]\nname = \"p\"\n");
    for member in 0..100 {
        let site = member / 10;
        write!(
            text,
            "[[pool.member]]\nname = \"m{member}\"\naddresses = [\"192.0.2.{}\", \"2001:db8::{member:x}\"]\nlocation = {{ lat = {}.0, lon = {}.0 }}\n",
            member + 1,
            site * 8,
            site * 17
        )
        .unwrap();
    }
    text
}

fn rank_query(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("zone"), gto::config::EMBEDDED_ZONE).unwrap();
    std::fs::write(dir.path().join("gto.toml"), geo_config()).unwrap();
    let loaded = ConfigSource::File(dir.path().join("gto.toml"))
        .load()
        .unwrap();
    let snapshot = build(&loaded, &EndpointStates::default(), 1);
    let name = LowerName::from(Name::from_ascii("vpn.gto.example.com.").unwrap());
    let node = snapshot.gslb_node(&name).unwrap();
    assert_eq!(node.members.len(), 100);
    let clients: Vec<Client> = (0..64u8)
        .map(|i| {
            let ip = IpAddr::from([10, i % 50, i, 1]);
            Client {
                source: ip,
                subnet: Some(ip),
            }
        })
        .collect();
    let mut next = 0usize;
    c.bench_function("rank/geo_100_endpoints_choose_and_answer", |b| {
        b.iter(|| {
            let client = clients[next % clients.len()];
            next += 1;
            let choice = node.choose(&snapshot.geo, &snapshot.regions, Some(black_box(client)));
            black_box(node.answer(&choice, false).0.len())
        })
    });
    let ip = IpAddr::from([10, 3, 0, 1]);
    c.bench_function("rank/resolve_gslb_a_with_ecs", |b| {
        b.iter(|| {
            black_box(
                snapshot
                    .resolve(
                        &name,
                        RecordType::A,
                        Some(Client {
                            source: ip,
                            subnet: Some(ip),
                        }),
                    )
                    .answers
                    .len(),
            )
        })
    });
}

criterion_group!(benches, rebuild, rebuild_signed, rank_query);
criterion_main!(benches);
