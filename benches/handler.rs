//! In-process cost of answering: the snapshot lookup alone, the whole general path
//! (hickory: decode request, resolve, encode answer) and the UDP fast path (bytes in,
//! bytes out). Inputs are built outside `b.iter`. Run: `cargo bench --bench handler`.
//!
//! Response rate limiting is on (the default), so each query comes from another of 65,536
//! client prefixes: every answer takes the limiter's bucket update and none is limited.
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

/// Clients in 65,536 different /24s, far below any prefix's rate at bench speed.
fn clients() -> Vec<std::net::IpAddr> {
    (0..=u16::MAX)
        .map(|i| std::net::IpAddr::from([10, (i >> 8) as u8, i as u8, 1]))
        .collect()
}

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
    let sources: Vec<SocketAddr> = clients()
        .into_iter()
        .map(|ip| SocketAddr::new(ip, 5300))
        .collect();
    let src = sources[0];
    let mut next = 0usize;
    for (label, name, qtype) in [
        ("handler/gslb_a", "vpn.gto.example.com.", RecordType::A),
        ("handler/static_a", "www.gto.example.com.", RecordType::A),
        ("handler/nxdomain", "nope.gto.example.com.", RecordType::A),
    ] {
        let bytes = query_bytes(name, qtype);
        // The input must produce an answer before it is worth timing.
        let answer = runtime
            .block_on(answer_bytes(&handler, &bytes, src, None, Protocol::Udp))
            .unwrap();
        assert_eq!(
            Message::from_vec(&answer).unwrap().queries.len(),
            1,
            "{label}"
        );
        c.bench_function(label, |b| {
            b.iter(|| {
                next = (next + 1) & 0xffff;
                runtime.block_on(answer_bytes(
                    &handler,
                    black_box(&bytes),
                    sources[next],
                    None,
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
    let sources = clients();
    let source = sources[0];
    let mut next = 0usize;
    for (label, name, qtype) in [
        ("fast/gslb_a", "vpn.gto.example.com.", RecordType::A),
        ("fast/static_a", "www.gto.example.com.", RecordType::A),
        ("fast/nxdomain", "nope.gto.example.com.", RecordType::A),
    ] {
        let bytes = query_bytes(name, qtype);
        let length = gto::dns::fast::respond(
            &snapshot,
            &snapshot.fast,
            &bytes,
            source,
            &mut scratch,
            &mut out,
        );
        assert!(
            matches!(length, gto::dns::fast::Reply::Send(l) if l > 0),
            "{label}: {length:?}"
        );
        c.bench_function(label, |b| {
            b.iter(|| {
                next = (next + 1) & 0xffff;
                gto::dns::fast::respond(
                    &snapshot,
                    &snapshot.fast,
                    black_box(&bytes),
                    sources[next],
                    &mut scratch,
                    &mut out,
                )
            })
        });
        // One client asking again and again: the worker's kept answer, ID rewritten.
        c.bench_function(&label.replace("fast/", "fast/again_"), |b| {
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

/// The UDP fast path with dnstap on (every query logged, the writer thread writing to
/// /dev/null) against off: what the worker adds per query is the copy of query and answer
/// into the writer's queue (`Tap::exchange`).
fn fast_path_dnstap(c: &mut Criterion) {
    let text = format!(
        "{}\n[dnstap]\nfile = \"/dev/null\"\n",
        gto::config::EMBEDDED_CONFIG
    );
    let loaded = ConfigSource::EmbeddedEdited(text.into()).load().unwrap();
    let builder = Builder::new(loaded);
    let snapshot = builder.handle().load_full();
    let tap = snapshot.dnstap.clone().expect("dnstap is on");
    let mut scratch = gto::dns::fast::FastScratch::default();
    let mut out = Vec::with_capacity(1232);
    let sources = clients();
    let mut next = 0usize;
    let bytes = query_bytes("vpn.gto.example.com.", RecordType::A);
    let server: SocketAddr = "127.0.0.1:53".parse().unwrap();
    for (label, on) in [("dnstap/off/gslb_a", false), ("dnstap/on/gslb_a", true)] {
        c.bench_function(label, |b| {
            b.iter(|| {
                next = (next + 1) & 0xffff;
                // As the worker: the clock is read only with dnstap on.
                let received = on.then(std::time::SystemTime::now);
                let reply = gto::dns::fast::respond(
                    &snapshot,
                    &snapshot.fast,
                    black_box(&bytes),
                    sources[next],
                    &mut scratch,
                    &mut out,
                );
                if let (Some(received), gto::dns::fast::Reply::Send(length)) = (received, reply) {
                    tap.exchange(
                        gto::dnstap::Transport::Udp,
                        (SocketAddr::new(sources[next], 5300), Some(server)),
                        &bytes,
                        Some(&out[..length]),
                        received,
                    );
                }
                reply
            })
        });
    }
}

fn query_bytes_do(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::new(1, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    let mut edns = hickory_proto::op::Edns::new();
    edns.set_max_payload(1232);
    edns.set_dnssec_ok(true);
    message.edns = Some(edns);
    message.to_vec().unwrap()
}

/// Issue 14: the fast path answering DO queries, the embedded default unsigned and signed
/// (one ECDSA P-256 CSK): the signed answer costs the signature's bytes, no signing.
fn fast_path_signed(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("zone"), gto::config::EMBEDDED_ZONE).unwrap();
    let config = gto::config::EMBEDDED_CONFIG.replace(
        "file = \"../zones/gto.example.com.zone\"",
        "file = \"zone\"",
    );
    std::fs::write(dir.path().join("unsigned.toml"), &config).unwrap();
    std::fs::write(
        dir.path().join("signed.toml"),
        config.replace(
            "file = \"zone\"",
            "file = \"zone\"\ndnssec = { keys = \"keys\" }",
        ),
    )
    .unwrap();
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
    let sources = clients();
    let mut next = 0usize;
    for (file, prefix) in [
        ("unsigned.toml", "fast/do_unsigned"),
        ("signed.toml", "fast/do_signed"),
    ] {
        let loaded = ConfigSource::File(dir.path().join(file)).load().unwrap();
        let snapshot = Builder::new(loaded).handle().load_full();
        let mut scratch = gto::dns::fast::FastScratch::default();
        let mut out = Vec::with_capacity(1232);
        for (label, name, qtype) in [
            ("gslb_a", "vpn.gto.example.com.", RecordType::A),
            ("static_a", "www.gto.example.com.", RecordType::A),
        ] {
            let bytes = query_bytes_do(name, qtype);
            let length = gto::dns::fast::respond(
                &snapshot,
                &snapshot.fast,
                &bytes,
                sources[0],
                &mut scratch,
                &mut out,
            );
            assert!(
                matches!(length, gto::dns::fast::Reply::Send(l) if l > 0),
                "{prefix}/{label}: {length:?}"
            );
            c.bench_function(&format!("{prefix}/{label}"), |b| {
                b.iter(|| {
                    next = (next + 1) & 0xffff;
                    gto::dns::fast::respond(
                        &snapshot,
                        &snapshot.fast,
                        black_box(&bytes),
                        sources[next],
                        &mut scratch,
                        &mut out,
                    )
                })
            });
        }
    }
}

criterion_group!(
    handler,
    benches,
    fast_path,
    fast_path_signed,
    fast_path_dnstap
);
criterion_main!(handler);
