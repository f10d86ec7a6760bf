//! The fast path against the general (hickory-based) path, over UDP and TCP: for a
//! corpus of queries, whatever the fast path answers must be byte for byte what the
//! general path answers over the same transport.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use gto::ConfigSource;
use gto::dns::Handler;
use gto::dns::fast::{FastScratch, Reply, respond, respond_tcp};
use gto::dns::handler::answer_bytes;
use gto::routing::{Builder, Snapshot};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_server::net::xfer::Protocol;

use crate::support::{ZONE, answers};

fn corpus() -> Vec<Vec<u8>> {
    let names = [
        "vpn.gto.example.com.",
        "VPN.Gto.Example.COM.",
        "plain.gto.example.com.",
        "www.gto.example.com.",
        "WwW.gto.example.com.",
        "api.gto.example.com.",
        "mail.gto.example.com.",
        "gto.example.com.",
        "GTO.EXAMPLE.COM.",
        "_tcp.gto.example.com.",
        "_vpn._tcp.gto.example.com.",
        "remote.gto.example.com.",
        "docs.gto.example.com.",
        "nope.gto.example.com.",
        "example.org.",
        "big.gto.example.com.",
        // A zone with wildcards and a delegation (the general path answers these).
        "lab.gto.example.com.",
        "x.wild.lab.gto.example.com.",
        "X.Wild.LAB.gto.example.com.",
        "exists.wild.lab.gto.example.com.",
        "q.cn.lab.gto.example.com.",
        "sub.lab.gto.example.com.",
        "x.sub.lab.gto.example.com.",
        "ns.sub.lab.gto.example.com.",
        "tosub.lab.gto.example.com.",
        "towild.lab.gto.example.com.",
        "nope.lab.gto.example.com.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::MX,
        RecordType::NS,
        RecordType::SOA,
        RecordType::SRV,
        RecordType::CNAME,
        RecordType::ANY,
        RecordType::CAA,
        RecordType::DS,
    ];
    let subnets: Vec<Option<ClientSubnet>> = vec![
        None,
        Some(ClientSubnet::new("198.51.100.0".parse().unwrap(), 24, 0)),
        Some(ClientSubnet::new("203.0.113.77".parse().unwrap(), 32, 0)),
        Some(ClientSubnet::new("0.0.0.0".parse().unwrap(), 0, 0)),
        Some(ClientSubnet::new("10.9.8.0".parse().unwrap(), 24, 0)),
        Some(ClientSubnet::new("2001:db8:e0::".parse().unwrap(), 48, 0)),
        Some(ClientSubnet::new(
            "2001:db8:1:2300::".parse().unwrap(),
            56,
            0,
        )),
        Some(ClientSubnet::new("198.51.101.0".parse().unwrap(), 23, 0)), // host bit set
        Some(ClientSubnet::new("198.51.100.0".parse().unwrap(), 20, 7)), // scope in a query
    ];
    let mut corpus = Vec::new();
    let mut id = 0u16;
    for name in names {
        for qtype in types {
            for (e, edns) in [
                None,
                Some((512u16, false)),
                Some((1232, false)),
                Some((4096, true)),
                Some((600, false)),
            ]
            .into_iter()
            .enumerate()
            {
                for subnet in &subnets {
                    if edns.is_none() && subnet.is_some() {
                        continue;
                    }
                    id = id.wrapping_add(7919);
                    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
                    message.metadata.recursion_desired = !id.is_multiple_of(3);
                    message.metadata.checking_disabled = id.is_multiple_of(5);
                    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
                    if let Some((payload, dnssec_ok)) = edns {
                        let mut opt = Edns::new();
                        opt.set_max_payload(payload);
                        opt.set_dnssec_ok(dnssec_ok || e == 2 && id.is_multiple_of(2));
                        if let Some(subnet) = subnet {
                            opt.options_mut().insert(EdnsOption::Subnet(*subnet));
                        }
                        message.edns = Some(opt);
                    }
                    corpus.push(message.to_vec().unwrap());
                }
            }
        }
    }
    // Odd shapes: a CH-class question, two questions, a response, a status query,
    // EDNS version 1, trailing garbage, a truncated packet, a pointer in the question.
    let mut chaos = Message::new(1, MessageType::Query, OpCode::Query);
    let mut q = Query::query(
        Name::from_ascii("vpn.gto.example.com.").unwrap(),
        RecordType::A,
    );
    q.set_query_class(DNSClass::CH);
    chaos.add_query(q);
    corpus.push(chaos.to_vec().unwrap());
    let mut two = Message::new(2, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(
        Name::from_ascii("vpn.gto.example.com.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("www.gto.example.com.").unwrap(),
        RecordType::A,
    ));
    corpus.push(two.to_vec().unwrap());
    let mut response = Message::new(3, MessageType::Response, OpCode::Query);
    response.add_query(Query::query(
        Name::from_ascii("vpn.gto.example.com.").unwrap(),
        RecordType::A,
    ));
    corpus.push(response.to_vec().unwrap());
    let mut status = Message::new(4, MessageType::Query, OpCode::Status);
    status.add_query(Query::query(
        Name::from_ascii("vpn.gto.example.com.").unwrap(),
        RecordType::A,
    ));
    corpus.push(status.to_vec().unwrap());
    let mut v1 = Message::new(5, MessageType::Query, OpCode::Query);
    v1.add_query(Query::query(
        Name::from_ascii("vpn.gto.example.com.").unwrap(),
        RecordType::A,
    ));
    let mut opt = Edns::new();
    opt.set_version(1);
    v1.edns = Some(opt);
    corpus.push(v1.to_vec().unwrap());
    // ECS with an ADDRESS longer than its prefix needs (192.0.2.0/24 in four octets).
    let mut long_ecs = Message::new(6, MessageType::Query, OpCode::Query);
    long_ecs.add_query(Query::query(
        Name::from_ascii("vpn.gto.example.com.").unwrap(),
        RecordType::A,
    ));
    long_ecs.edns = Some(Edns::new());
    let mut bytes = long_ecs.to_vec().unwrap();
    bytes.truncate(bytes.len() - 2);
    bytes.extend_from_slice(&[0, 12, 0, 8, 0, 8, 0, 1, 24, 0, 192, 0, 2, 0]);
    corpus.push(bytes);
    let mut trailing = corpus[0].clone();
    trailing.extend_from_slice(&[1, 2, 3]);
    corpus.push(trailing);
    corpus.push(corpus[0][..20].to_vec());
    corpus
}

fn zone() -> String {
    let chunk = "y".repeat(200);
    let mut zone = ZONE.to_string();
    for i in 0..4 {
        zone.push_str(&format!("big IN TXT \"{i}{chunk}\"\n"));
    }
    zone
}

/// A child zone with wildcards, a delegation and CNAMEs into both.
const LAB_ZONE: &str = "$ORIGIN lab.gto.example.com.
$TTL 300
@ SOA ns1 hostmaster 1 3600 600 86400 60
@ NS ns1
ns1 A 192.0.2.53
mail A 192.0.2.25
*.wild A 192.0.2.80
*.wild MX 10 mail
exists.wild A 192.0.2.81
*.cn CNAME mail
sub NS ns.sub
sub NS ns1
ns.sub A 192.0.2.99
tosub CNAME x.sub
towild CNAME foo.wild
";

/// Both paths over the geo test config (plus `extra`), the big zone and the lab zone.
fn paths(extra: &str) -> (Handler, Arc<Snapshot>) {
    paths_signed(extra, false)
}

/// [`paths`], with both zones signed (a CSK each, made in the test directory) when
/// `signed`.
fn paths_signed(extra: &str, signed: bool) -> (Handler, Arc<Snapshot>) {
    paths_of(extra, signed, &zone())
}

/// [`paths_signed`] with `zone` as the example zone's text.
fn paths_of(extra: &str, signed: bool, zone: &str) -> (Handler, Arc<Snapshot>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = format!(
        "{}\n[[zone]]\norigin = \"lab.gto.example.com.\"\nfile = \"lab.zone\"\n",
        crate::geo::geo_config(extra)
    );
    if signed {
        config = config
            .replace(
                "file = \"gto.example.com.zone\"\n",
                "file = \"gto.example.com.zone\"\ndnssec = { keys = \"keys\" }\n",
            )
            .replace(
                "file = \"lab.zone\"\n",
                "file = \"lab.zone\"\ndnssec = { keys = \"keys\" }\n",
            );
        let now = gto::dnssec::now();
        let timeline = gto::dnssec::keys::Timeline::from(now);
        for zone in ["gto.example.com.", "lab.gto.example.com."] {
            gto::dnssec::keys::generate(
                &dir.path().join("keys"),
                &Name::from_ascii(zone).unwrap(),
                gto::dnssec::keys::Role::Csk,
                gto::dnssec::keys::KeyAlgorithm::EcdsaP256,
                timeline,
                3600,
            )
            .unwrap();
        }
    }
    std::fs::write(dir.path().join("gto.toml"), config).unwrap();
    std::fs::write(dir.path().join("lab.zone"), LAB_ZONE).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), zone).unwrap();
    let loaded = ConfigSource::File(dir.path().join("gto.toml"))
        .load()
        .unwrap();
    let routing = Builder::new(loaded).handle();
    (Handler::new(routing.clone()), routing.load_full())
}

/// Answers `query` on the fast path as it came over `protocol`.
fn respond_over(
    protocol: Protocol,
    snapshot: &Snapshot,
    query: &[u8],
    ip: IpAddr,
    scratch: &mut FastScratch,
    out: &mut Vec<u8>,
) -> Reply {
    match protocol {
        Protocol::Udp => respond(snapshot, &snapshot.fast, query, ip, scratch, out),
        _ => respond_tcp(snapshot, &snapshot.fast, query, ip, scratch, out),
    }
}

/// Every query of the corpus from three sources on both paths, over UDP and over TCP,
/// each three times with different IDs (the second time the fast path keeps its answer,
/// the third it sends the kept answer): where the fast path answers, its bytes are the
/// general path's over the same transport. Returns (fast answers, queries counted) over UDP; over TCP the fast path
/// answers at least those (and the ones too big for a datagram).
async fn differential(handler: &Handler, snapshot: &Snapshot) -> (usize, usize) {
    let mut scratch = FastScratch::default();
    let mut out = Vec::new();
    let (mut fast, mut total) = (0, 0);
    let mut fast_tcp = 0;
    for source in ["127.0.0.1", "127.0.1.1", "::1"] {
        let ip: IpAddr = source.parse().unwrap();
        let src = SocketAddr::new(ip, 5300);
        for query in corpus() {
            // The lab zone's names are mostly the general path's: not counted.
            let in_lab = Message::from_vec(&query).is_ok_and(|m| {
                m.queries.first().is_some_and(|q| {
                    q.name()
                        .to_lowercase()
                        .to_ascii()
                        .ends_with(".lab.gto.example.com.")
                        || q.name().to_lowercase().to_ascii() == "lab.gto.example.com."
                })
            });
            total += usize::from(!in_lab);
            // Each query twice, the second time with another ID: the fast path's kept
            // answer must be the general path's too.
            let [again, third] = [0xa5, 0x5a].map(|flip| {
                let mut again = query.clone();
                if let Some(id) = again.get_mut(..2) {
                    id[0] ^= flip;
                    id[1] ^= 0x3c;
                }
                again
            });
            let asked = [&query, &again, &third];
            let thrice = asked.map(|q| (Protocol::Udp, q));
            let thrice = thrice.into_iter().chain(asked.map(|q| (Protocol::Tcp, q)));
            for (protocol, query) in thrice {
                let general = answer_bytes(handler, query, src, None, protocol).await;
                let reply = respond_over(protocol, snapshot, query, ip, &mut scratch, &mut out);
                let Reply::Send(len) = reply else {
                    assert!(
                        reply == Reply::General,
                        "{protocol:?}: {reply:?} without rate limiting"
                    );
                    continue;
                };
                match protocol {
                    _ if query != asked[0] => {}
                    Protocol::Udp => fast += usize::from(!in_lab),
                    _ => fast_tcp += usize::from(!in_lab),
                }
                let general =
                    general.unwrap_or_else(|| panic!("general path gave nothing for {query:?}"));
                assert_eq!(
                    out[..len],
                    general[..],
                    "fast and general differ over {protocol:?} for {:?}\nfast:    {:?}\ngeneral: {:?}",
                    Message::from_vec(query).map(|m| m.queries),
                    Message::from_vec(&out[..len]),
                    Message::from_vec(&general)
                );
            }
        }
    }
    assert!(
        fast_tcp >= fast,
        "over TCP the fast path answered {fast_tcp}, over UDP {fast}"
    );
    (fast, total)
}

/// Issue 14: in signed zones, queries with DO (a third of the corpus) get signed answers,
/// and the fast path's are byte for byte the general path's; the common signed queries
/// take the fast path.
#[tokio::test]
async fn signed_answers_are_the_same_on_both_paths() {
    let (handler, snapshot) = paths_signed("", true);
    assert!(snapshot.zones_signed() == 2);
    let (fast, total) = differential(&handler, &snapshot).await;
    assert!(
        fast * 100 > total * 30,
        "fast path answered only {fast} of {total}"
    );
    let mut scratch = FastScratch::default();
    let mut out = Vec::new();
    for (name, qtype) in [
        ("vpn.gto.example.com.", RecordType::A),
        ("www.gto.example.com.", RecordType::A),
        ("www.gto.example.com.", RecordType::TXT),
        ("gto.example.com.", RecordType::DNSKEY),
        // NODATA of a GSLB name, and the compact denial of a name that does not exist.
        ("vpn.gto.example.com.", RecordType::TXT),
        ("nope.gto.example.com.", RecordType::A),
    ] {
        let mut message = Message::new(9, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        let mut opt = Edns::new();
        opt.set_max_payload(1232);
        opt.set_dnssec_ok(true);
        message.edns = Some(opt);
        let query = message.to_vec().unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let Reply::Send(len) = respond(
            &snapshot,
            &snapshot.fast,
            &query,
            ip,
            &mut scratch,
            &mut out,
        ) else {
            panic!("{name} {qtype} with DO did not take the fast path");
        };
        let reply = Message::from_vec(&out[..len]).unwrap();
        let signatures = reply
            .answers
            .iter()
            .chain(&reply.authorities)
            .filter(|r| r.record_type() == RecordType::RRSIG)
            .count();
        assert!(signatures >= 1, "{name} {qtype}: {reply:?}");
    }
}

#[tokio::test]
async fn the_fast_path_answers_byte_for_byte_like_the_general_path() {
    let (handler, snapshot) = paths("");
    assert!(
        snapshot.fast.len() > 10,
        "names indexed: {}",
        snapshot.fast.len()
    );

    let (fast, total) = differential(&handler, &snapshot).await;
    let mut scratch = FastScratch::default();
    let mut out = Vec::new();
    // A good part of the corpus outside the lab zone is positive or NODATA for names the
    // fast path knows.
    assert!(
        fast * 100 > total * 40,
        "fast path answered only {fast} of {total}"
    );
    // The common queries always take it.
    for (name, qtype, edns) in [
        ("vpn.gto.example.com.", RecordType::A, None),
        (
            "vpn.gto.example.com.",
            RecordType::AAAA,
            Some(ClientSubnet::new("198.51.100.0".parse().unwrap(), 24, 0)),
        ),
        ("www.gto.example.com.", RecordType::A, None),
        ("gto.example.com.", RecordType::SOA, None),
        ("gto.example.com.", RecordType::NS, None),
        ("vpn.gto.example.com.", RecordType::TXT, None),
        ("nope.gto.example.com.", RecordType::A, None),
    ] {
        let mut message = Message::new(9, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(subnet) = edns {
            let mut opt = Edns::new();
            opt.options_mut().insert(EdnsOption::Subnet(subnet));
            message.edns = Some(opt);
        }
        let query = message.to_vec().unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(
            respond(
                &snapshot,
                &snapshot.fast,
                &query,
                ip,
                &mut scratch,
                &mut out
            ) != Reply::General,
            "{name} {qtype} did not take the fast path"
        );
    }
}

/// Rate limiting on both paths: once a client's bucket is empty (the paused clock never
/// refills it), every answer is slipped, and the fast path's truncated answer is byte for
/// byte the general path's; over TCP neither path limits it.
#[tokio::test(start_paused = true)]
async fn slipped_answers_are_the_same_on_both_paths() {
    let (handler, snapshot) =
        paths("[rrl]\nresponses_per_second = 1\nburst = 1\nslip = 1\nexempt = []\n");
    assert!(snapshot.rrl.is_some());

    let mut scratch = FastScratch::default();
    let mut out = Vec::new();
    let (mut slipped, mut whole) = (0, 0);
    for source in ["127.0.0.1", "::1"] {
        let ip: IpAddr = source.parse().unwrap();
        let src = SocketAddr::new(ip, 5300);
        for query in corpus() {
            // The first answer of a key may still be sent; this empties its bucket.
            answer_bytes(&handler, &query, src, None, Protocol::Udp).await;
            let general = answer_bytes(&handler, &query, src, None, Protocol::Udp).await;
            let reply = respond_over(Protocol::Udp, &snapshot, &query, ip, &mut scratch, &mut out);
            let Reply::Send(len) = reply else {
                continue;
            };
            let general =
                general.unwrap_or_else(|| panic!("general path gave nothing for {query:?}"));
            let fast = &out[..len];
            assert_eq!(fast, &general[..], "fast and general slips differ");
            let message = Message::from_vec(fast).unwrap();
            assert!(message.metadata.truncation, "not slipped: {message:?}");
            assert!(message.answers.is_empty() && message.authorities.is_empty());
            slipped += 1;
            // Twice again with other IDs: the answer is kept, then slipped from the kept
            // answer, as the general path slips it.
            for flip in [0xff, 0x0f] {
                let mut again = query.clone();
                again[0] ^= flip;
                let general = answer_bytes(&handler, &again, src, None, Protocol::Udp).await;
                let reply =
                    respond_over(Protocol::Udp, &snapshot, &again, ip, &mut scratch, &mut out);
                let Reply::Send(len) = reply else {
                    panic!("asked again, {reply:?} for {again:?}");
                };
                assert_eq!(Some(&out[..len]), general.as_deref(), "kept slips differ");
            }
            // Over TCP, where rate limiting does not apply, the same query is answered
            // whole on both paths.
            let general = answer_bytes(&handler, &query, src, None, Protocol::Tcp).await;
            let reply = respond_over(Protocol::Tcp, &snapshot, &query, ip, &mut scratch, &mut out);
            let Reply::Send(len) = reply else {
                panic!("a query slipped over UDP is not answered over TCP: {query:?}");
            };
            assert_eq!(Some(&out[..len]), general.as_deref());
            let message = Message::from_vec(&out[..len]).unwrap();
            assert!(
                !message.metadata.truncation,
                "truncated over TCP: {message:?}"
            );
            whole += usize::from(!message.answers.is_empty());
        }
    }
    assert!(slipped > 1000, "only {slipped} fast-path slips compared");
    assert!(whole > 500, "only {whole} whole answers over TCP");
}

mod mutations {
    //! Random packets and random mutations of valid queries: the fast path never panics,
    //! and whenever it answers, the general path answers the same bytes over the same
    //! transport.

    use std::net::{IpAddr, SocketAddr};

    use proptest::prelude::*;

    use super::*;

    /// Built once for all cases: the server side and the corpus.
    struct Fixture {
        handler: Handler,
        snapshot: std::sync::Arc<gto::routing::Snapshot>,
        corpus: Vec<Vec<u8>>,
        runtime: tokio::runtime::Runtime,
    }

    /// Unsigned zones, or (issue 14) signed zones, where a third of the corpus has DO.
    fn fixture(signed: bool) -> &'static Fixture {
        static FIXTURES: [std::sync::OnceLock<Fixture>; 2] =
            [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
        FIXTURES[usize::from(signed)].get_or_init(|| {
            let (handler, snapshot) = super::paths_signed("", signed);
            Fixture {
                handler,
                snapshot,
                corpus: corpus(),
                runtime: tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap(),
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        #[test]
        fn mutated_queries_never_diverge(
            seed in 0usize..400,
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in prop::option::of(any::<prop::sample::Index>()),
            garbage in prop::collection::vec(any::<u8>(), 0..64),
            random in any::<bool>(),
            signed in any::<bool>(),
            tcp in any::<bool>(),
        ) {
            let Fixture { handler, snapshot, corpus, runtime } = fixture(signed);
            let mut packet = if random { garbage } else { corpus[seed * 37 % corpus.len()].clone() };
            if !packet.is_empty() {
                for (at, value) in &flips {
                    let i = at.index(packet.len());
                    packet[i] = *value;
                }
                if let Some(cut) = cut {
                    packet.truncate(cut.index(packet.len() + 1));
                }
            }
            let ip: IpAddr = "127.0.0.1".parse().unwrap();
            let mut scratch = FastScratch::default();
            let mut out = Vec::new();
            let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
            let fast = super::respond_over(protocol, snapshot, &packet, ip, &mut scratch, &mut out);
            if let Reply::Send(len) = fast {
                let general = runtime.block_on(answer_bytes(handler, &packet, SocketAddr::new(ip, 5300), None, protocol));
                prop_assert_eq!(Some(out[..len].to_vec()), general, "packet {:?}", packet);
            }
        }
    }
}

/// A worker keeps the GSLB choices it made per client address for one snapshot: each
/// client still gets its own answer, a new snapshot (even one with the same generation,
/// from another builder) is never answered from the old one's choices, and the answers
/// given from kept choices reach the endpoints' counters once the batch is folded.
#[tokio::test]
async fn kept_choices_follow_the_client_and_the_snapshot() {
    kept_choices(false).await;
}

/// A worker keeps whole answers per query and client: the same question (same bytes, ID
/// aside) from 750 resolvers in three networks that the geography answers differently,
/// more than the kept answers have slots: every answer is the general path's for that
/// resolver, whichever other resolver's answer its slot held, and counts the endpoints
/// it names once.
#[tokio::test]
async fn kept_answers_are_each_clients_own() {
    // Without rate limiting: 250 answers to a /24 would empty its bucket.
    let (handler, snapshot) = paths("[rrl]\nenabled = false\n");
    let mut message = Message::new(5, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(
        Name::from_ascii("vpn.gto.example.com.").unwrap(),
        RecordType::A,
    ));
    let query = message.to_vec().unwrap();
    let node = snapshot.service_node(0).unwrap();
    let counts = || -> Vec<u64> {
        node.members
            .iter()
            .map(|m| m.answered.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    };
    let mut scratch = FastScratch::default();
    let mut out = Vec::new();
    let mut answers = std::collections::HashSet::new();
    // Each resolver asks three times in a row (its answer is made, kept, sent kept), in
    // two rounds; between them the others take its slots.
    let asks = (0..2).flat_map(|_| {
        (1..=250u8).flat_map(|host| {
            [[198, 51, 100], [203, 0, 113], [192, 0, 2]]
                .into_iter()
                .flat_map(move |net| [IpAddr::from([net[0], net[1], net[2], host]); 3])
        })
    });
    for ip in asks {
        let before = counts();
        let reply = respond(
            &snapshot,
            &snapshot.fast,
            &query,
            ip,
            &mut scratch,
            &mut out,
        );
        let Reply::Send(len) = reply else {
            panic!("{ip}: {reply:?}");
        };
        // As a worker does after each batch: the kept choices' counts are folded.
        // The answer is counted once, for the endpoints it names, whether it was
        // made or kept (in the choice it was made from).
        gto::dns::fast::fold_endpoint_counts(&snapshot, &mut scratch);
        let named: Vec<IpAddr> = Message::from_vec(&out[..len])
            .unwrap()
            .answers
            .iter()
            .filter_map(|r| r.data.ip_addr())
            .collect();
        let after = counts();
        for (m, member) in node.members.iter().enumerate() {
            let expected = member.info.addresses.iter().any(|a| named.contains(a));
            assert_eq!(
                after[m] - before[m],
                u64::from(expected),
                "{ip}: {}",
                member.info.key.member
            );
        }
        let general = answer_bytes(
            &handler,
            &query,
            SocketAddr::new(ip, 53),
            None,
            Protocol::Udp,
        )
        .await;
        assert_eq!(Some(&out[..len]), general.as_deref(), "{ip}");
        answers.insert(out[..len].to_vec());
    }
    assert!(
        answers.len() >= 3,
        "the networks are answered alike: {answers:?}"
    );
}

/// Kept answers are for one snapshot: a static name whose address changed, and a name
/// that did not exist and now does, asked three times (kept) before a new snapshot and
/// once after, get the new snapshot's answer.
#[tokio::test]
async fn kept_answers_are_for_one_snapshot() {
    let (_, before) = paths_of("", false, &zone());
    let changed = zone().replace("192.0.2.80", "192.0.2.81") + "new IN A 192.0.2.82\n";
    let (handler, after) = paths_of("", false, &changed);
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let mut scratch = FastScratch::default();
    let mut out = Vec::new();
    for name in ["www.gto.example.com.", "new.gto.example.com."] {
        let query = |id| {
            let mut message = Message::new(id, MessageType::Query, OpCode::Query);
            message.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
            message.to_vec().unwrap()
        };
        for id in 1..=3 {
            let reply = respond(
                &before,
                &before.fast,
                &query(id),
                ip,
                &mut scratch,
                &mut out,
            );
            assert!(matches!(reply, Reply::Send(_)), "{name}: {reply:?}");
        }
        let Reply::Send(len) = respond(&after, &after.fast, &query(4), ip, &mut scratch, &mut out)
        else {
            panic!("{name} not answered on the fast path");
        };
        let src = SocketAddr::new(ip, 53);
        let general = answer_bytes(&handler, &query(4), src, None, Protocol::Udp).await;
        assert_eq!(Some(&out[..len]), general.as_deref(), "{name}");
        let answer = Message::from_vec(&out[..len]).unwrap();
        assert_eq!(answers(&answer).len(), 1, "{name}: {answer:?}");
    }
}

/// [`kept_choices_follow_the_client_and_the_snapshot`] in signed zones with DO: the
/// signatures kept with a choice are the chosen set's, and a new snapshot (its own keys)
/// never answers with the old one's.
#[tokio::test]
async fn kept_choices_keep_their_signatures_for_one_snapshot() {
    kept_choices(true).await;
}

async fn kept_choices(signed: bool) {
    let (handler1, snapshot1) = paths_signed("", signed);
    // A Paris appliance: the Paris subnet's first choice changes.
    let (handler2, snapshot2) = paths_signed(
        "[[pool.member]]\nname = \"par-1\"\naddresses = [\"192.0.2.13\"]\n\
         location = { lat = 48.9, lon = 2.4, region = \"eu\" }\n",
        signed,
    );
    assert_eq!(snapshot1.generation, snapshot2.generation);
    let query = |subnet: Option<(&str, u8)>| {
        let mut message = Message::new(77, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(
            Name::from_ascii("vpn.gto.example.com.").unwrap(),
            RecordType::A,
        ));
        if let Some((subnet, prefix)) = subnet {
            message.edns = Some(crate::geo::ecs(subnet, prefix));
        }
        if signed {
            message
                .edns
                .get_or_insert_with(|| {
                    let mut opt = Edns::new();
                    opt.set_max_payload(1232);
                    opt
                })
                .set_dnssec_ok(true);
        }
        message.to_vec().unwrap()
    };
    let clients = [
        Some(("198.51.100.0", 24)),
        Some(("203.0.113.0", 24)),
        None,
        Some(("2001:db8:e0::", 48)),
        Some(("192.0.2.0", 24)),
    ];
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let src = SocketAddr::new(ip, 5300);
    let mut scratch = FastScratch::default();
    let mut out = Vec::new();
    let mut paris = Vec::new();
    for (handler, snapshot) in [
        (&handler1, &snapshot1),
        (&handler2, &snapshot2),
        (&handler1, &snapshot1),
    ] {
        for round in 0..3 {
            for client in clients {
                let query = query(client);
                let Reply::Send(len) =
                    respond(snapshot, &snapshot.fast, &query, ip, &mut scratch, &mut out)
                else {
                    panic!("{client:?} did not take the fast path");
                };
                let general = answer_bytes(handler, &query, src, None, Protocol::Udp)
                    .await
                    .unwrap();
                assert_eq!(out[..len], general[..], "{client:?} round {round}");
                if signed {
                    let reply = Message::from_vec(&out[..len]).unwrap();
                    assert!(
                        reply
                            .answers
                            .iter()
                            .any(|r| r.record_type() == RecordType::RRSIG),
                        "{client:?} round {round}: {reply:?}"
                    );
                }
                if round == 0 && client == clients[0] {
                    paris.push(out[..len].to_vec());
                }
            }
        }
    }
    // The two configs answer the Paris subnet differently, so a stale choice would show.
    assert_ne!(paris[0], paris[1]);
    assert_eq!(paris[0], paris[2]);

    // Counted: ten answers to Paris reach its endpoints' counters when folded.
    let node = snapshot1.service_node(0).unwrap();
    let answered = |name: &str| {
        node.members
            .iter()
            .find(|m| m.info.key.member == name)
            .unwrap()
            .answered
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut scratch = FastScratch::default();
    gto::dns::fast::fold_endpoint_counts(&snapshot1, &mut scratch);
    let before = (answered("fra-1"), answered("fra-2"), answered("tyo-1"));
    for _ in 0..10 {
        respond(
            &snapshot1,
            &snapshot1.fast,
            &query(clients[0]),
            ip,
            &mut scratch,
            &mut out,
        );
    }
    gto::dns::fast::fold_endpoint_counts(&snapshot1, &mut scratch);
    assert_eq!(
        (answered("fra-1"), answered("fra-2"), answered("tyo-1")),
        (before.0 + 10, before.1 + 10, before.2)
    );
}
