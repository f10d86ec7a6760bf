//! In-process cost of answering: the snapshot lookup alone, the whole general path
//! (hickory: decode request, resolve, encode answer) and the UDP fast path (bytes in,
//! bytes out). Inputs are built outside `b.iter`. Run: `cargo bench --bench handler`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use gto::ConfigSource;
use gto::dns::Handler;
use gto::dns::handler::answer_bytes;
use gto::routing::Builder;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{LowerName, Name, RecordType};
use hickory_server::net::xfer::Protocol;

fn query_bytes(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::new(1, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message.to_vec().unwrap()
}

fn benches(c: &mut Criterion) {
    let loaded = ConfigSource::Embedded.load().unwrap();
    let builder = Builder::new(loaded);
    let routing = builder.handle();

    let vpn = LowerName::from(Name::from_ascii("vpn.gto.example.com.").unwrap());
    c.bench_function("resolve/gslb_a", |b| {
        b.iter(|| {
            black_box(
                routing
                    .load()
                    .resolve(black_box(&vpn), RecordType::A, None)
                    .answers
                    .len(),
            )
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let handler = Handler::new(routing.clone());
    let src: SocketAddr = "192.0.2.1:5300".parse().unwrap();
    for (label, name, qtype) in [
        ("handler/gslb_a", "vpn.gto.example.com.", RecordType::A),
        ("handler/static_a", "www.gto.example.com.", RecordType::A),
        ("handler/nxdomain", "nope.gto.example.com.", RecordType::A),
    ] {
        let bytes = query_bytes(name, qtype);
        // The input must produce an answer before it is worth timing.
        let answer = runtime
            .block_on(answer_bytes(&handler, &bytes, src, Protocol::Udp))
            .unwrap();
        assert_eq!(
            Message::from_vec(&answer).unwrap().queries.len(),
            1,
            "{label}"
        );
        c.bench_function(label, |b| {
            b.iter(|| {
                runtime.block_on(answer_bytes(
                    &handler,
                    black_box(&bytes),
                    src,
                    Protocol::Udp,
                ))
            })
        });
    }
}

/// The UDP fast path in-process: bytes in, bytes out.
fn fast_path(c: &mut Criterion) {
    let loaded = ConfigSource::Embedded.load().unwrap();
    let builder = Builder::new(loaded);
    let snapshot = builder.handle().load_full();
    let mut scratch = gto::dns::fast::FastScratch::default();
    let mut out = Vec::with_capacity(1232);
    let source: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    for (label, name, qtype) in [
        ("fast/gslb_a", "vpn.gto.example.com.", RecordType::A),
        ("fast/static_a", "www.gto.example.com.", RecordType::A),
    ] {
        let bytes = query_bytes(name, qtype);
        assert!(
            gto::dns::fast::respond(
                &snapshot,
                &snapshot.fast,
                &bytes,
                source,
                &mut scratch,
                &mut out
            )
            .is_some()
        );
        c.bench_function(label, |b| {
            b.iter(|| {
                gto::dns::fast::respond(
                    &snapshot,
                    &snapshot.fast,
                    black_box(&bytes),
                    source,
                    &mut scratch,
                    &mut out,
                )
            })
        });
    }
}

criterion_group!(handler, benches, fast_path);
criterion_main!(handler);
