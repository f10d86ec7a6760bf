//! Snapshot rebuild cost: what the builder pays on every health flip, for 100 pools x 100
//! endpoints (DESIGN target: under 1 ms). `cargo bench --bench routing`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gto::ConfigSource;
use gto::routing::{MemberStates, build};

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
    let states = MemberStates::default();
    c.bench_function("routing/build_100_pools_x_100_endpoints", |b| {
        b.iter(|| black_box(build(black_box(&loaded), &states, 2)))
    });
}

criterion_group!(benches, rebuild);
criterion_main!(benches);
