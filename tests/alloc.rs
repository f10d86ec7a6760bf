//! The UDP fast path allocates nothing per query once its buffers are warm: counted with
//! dhat's allocator over thousands of real queries (GSLB with and without ECS, static,
//! NODATA, NXDOMAIN). A test binary of its own, as the allocator is process-wide.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use gto::ConfigSource;
use gto::dns::fast::{FastScratch, Reply, respond};
use gto::routing::Builder;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RecordType};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

fn query(name: &str, qtype: RecordType, subnet: Option<&str>) -> Vec<u8> {
    let mut message = Message::new(7, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(subnet) = subnet {
        let mut edns = Edns::new();
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(
                subnet.parse().unwrap(),
                24,
                0,
            )));
        message.edns = Some(edns);
    }
    message.to_vec().unwrap()
}

#[test]
fn the_fast_path_allocates_nothing_per_query() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/peers/gto.toml"
    ))
    .unwrap()
    .replace("@PORT@", "0")
    .replace(
        "@ZONE@",
        concat!(env!("CARGO_MANIFEST_DIR"), "/zones/gto.example.com.zone"),
    );
    std::fs::write(dir.path().join("gto.toml"), config).unwrap();
    let loaded = ConfigSource::File(dir.path().join("gto.toml"))
        .load()
        .unwrap();
    let snapshot = Builder::new(loaded).handle().load_full();
    let queries = [
        query("vpn.gto.example.com.", RecordType::A, None),
        query(
            "VPN.gto.example.com.",
            RecordType::AAAA,
            Some("198.51.100.0"),
        ),
        query("vpn.gto.example.com.", RecordType::A, Some("203.0.113.0")),
        query("www.gto.example.com.", RecordType::A, None),
        query("gto.example.com.", RecordType::NS, None),
        query("vpn.gto.example.com.", RecordType::MX, None),
        query("nope.gto.example.com.", RecordType::A, Some("192.0.2.0")),
    ];
    // One resolver asking again and again (answers kept, then sent kept), and 1,000
    // taking turns, more than the kept answers' slots (answers made each time).
    let one: [IpAddr; 1] = ["127.0.0.1".parse().unwrap()];
    let many: Vec<IpAddr> = (0..1000u32)
        .map(|i| IpAddr::from((0x0a00_0000 + i * 97).to_be_bytes()))
        .collect();
    for sources in [&one[..], &many[..]] {
        let mut scratch = FastScratch::default();
        let mut out = Vec::with_capacity(1232);
        let mut turn = 0;
        let mut ask = |scratch: &mut FastScratch, out: &mut Vec<u8>| {
            for q in &queries {
                let source = sources[turn % sources.len()];
                turn += 1;
                assert!(
                    respond(&snapshot, &snapshot.fast, q, source, scratch, out) != Reply::General
                );
            }
        };
        // Warm the buffers (the NXDOMAIN cache, the kept answers' slots) over every
        // source three times.
        for _ in 0..3 * sources.len() {
            ask(&mut scratch, &mut out);
        }
        // The counts are process-wide, and the test harness may allocate now and then on
        // its own threads: measure three windows and keep the least. Any allocation of the
        // fast path itself would show in every window (2,000 rounds each).
        let rounds = 2_000;
        let mut allocations = u64::MAX;
        for _ in 0..3 {
            let before = dhat::HeapStats::get();
            for _ in 0..rounds {
                ask(&mut scratch, &mut out);
            }
            allocations =
                allocations.min(dhat::HeapStats::get().total_blocks - before.total_blocks);
        }
        eprintln!(
            "fast path, {} sources: {} queries, {allocations} allocations ({} per query)",
            sources.len(),
            rounds * queries.len(),
            allocations as f64 / (rounds * queries.len()) as f64
        );
        dhat::assert_eq!(allocations, 0);
    }
}
