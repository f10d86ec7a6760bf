//! DNS behaviour over real UDP and TCP: GSLB names, static names, negative answers,
//! REFUSED, opcodes, malformed input.

use std::ffi::OsStr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use crate::real::{a_records, real_config};
use crate::support::{
    RealGto, TestServer, ZONE, answers, config, dig, edns, http, query, tcp, tcp_raw, udp, udp_raw,
    wait_answering,
};

#[tokio::test]
async fn gslb_name_answers_pool_addresses_over_udp_and_tcp() {
    let server = TestServer::default().await;
    for qtype in [RecordType::A, RecordType::AAAA] {
        let message = query("vpn.gto.example.com.", qtype, None);
        let (over_udp, _) = udp(server.addr, &message).await;
        let over_tcp = tcp(server.addr, &message).await;
        for reply in [&over_udp, &over_tcp] {
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
            assert!(reply.metadata.authoritative, "AA must be set");
            assert!(reply.metadata.recursion_desired, "RD is copied");
            assert!(!reply.metadata.recursion_available, "RA stays clear");
            assert_eq!(reply.metadata.id, 0x1234);
            assert!(reply.answers.iter().all(|r| r.ttl == 20));
        }
        let expected = match qtype {
            RecordType::A => vec!["198.51.100.10", "198.51.100.20"],
            _ => vec!["2001:db8:100::10", "2001:db8:100::20"],
        };
        assert_eq!(answers(&over_udp), expected);
        assert_eq!(answers(&over_tcp), expected);
    }
}

#[tokio::test]
async fn question_is_echoed_with_the_clients_letter_case() {
    let server = TestServer::default().await;
    let message = query("VpN.GTO.example.COM.", RecordType::A, None);
    let bytes = message.to_vec().unwrap();
    let question = &bytes[12..];
    let reply = udp_raw(server.addr, &bytes).await.unwrap();
    assert_eq!(&reply[12..12 + question.len()], question);
    let reply = tcp_raw(server.addr, &bytes).await;
    assert_eq!(&reply[12..12 + question.len()], question);
    let decoded = Message::from_vec(&reply).unwrap();
    assert_eq!(answers(&decoded).len(), 2, "case-insensitive match");
}

#[tokio::test]
async fn rd_clear_is_copied_too() {
    let server = TestServer::default().await;
    let mut message = query("vpn.gto.example.com.", RecordType::A, None);
    message.metadata.recursion_desired = false;
    let (reply, _) = udp(server.addr, &message).await;
    assert!(!reply.metadata.recursion_desired);
    assert!(reply.metadata.authoritative);
}

/// NODATA: NOERROR, no answer, the zone's SOA in authority with the negative TTL.
fn assert_nodata(reply: &Message) {
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.authoritative);
    assert!(reply.answers.is_empty(), "{:?}", reply.answers);
    assert_eq!(reply.authorities.len(), 1);
    let soa = &reply.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.name, Name::from_ascii("gto.example.com.").unwrap());
    // min(SOA TTL 3600, MINIMUM 60): RFC 2308 section 5.
    assert_eq!(soa.ttl, 60);
}

#[tokio::test]
async fn gslb_name_other_types_are_nodata() {
    let server = TestServer::default().await;
    for qtype in [
        RecordType::TXT,
        RecordType::MX,
        RecordType::CNAME,
        RecordType::SRV,
    ] {
        let (reply, _) = udp(server.addr, &query("vpn.gto.example.com.", qtype, None)).await;
        assert_nodata(&reply);
    }
}

#[tokio::test]
async fn pool_without_that_family_is_nodata_never_nxdomain() {
    let extra = r#"
[[service]]
name = "v4only.gto.example.com."
pool = "v4"
[[pool]]
name = "v4"
[[pool.member]]
name = "only"
addresses = ["192.0.2.200"]
"#;
    let server = TestServer::start(&config(extra), crate::support::ZONE).await;
    let (reply, _) = udp(
        server.addr,
        &query("v4only.gto.example.com.", RecordType::AAAA, None),
    )
    .await;
    assert_nodata(&reply);
    let (reply, _) = udp(
        server.addr,
        &query("v4only.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(answers(&reply), vec!["192.0.2.200"]);
}

#[tokio::test]
async fn static_names_come_from_the_zone_file() {
    let server = TestServer::default().await;
    let (reply, _) = udp(
        server.addr,
        &query("www.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(answers(&reply), vec!["192.0.2.80"]);
    assert!(reply.metadata.authoritative);
    assert_eq!(reply.answers[0].ttl, 3600);
    let reply = tcp(
        server.addr,
        &query("www.gto.example.com.", RecordType::AAAA, None),
    )
    .await;
    assert_eq!(answers(&reply), vec!["2001:db8::80"]);
    let (reply, _) = udp(
        server.addr,
        &query("api.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(answers(&reply), vec!["192.0.2.81", "192.0.2.82"]);
    let (reply, _) = udp(
        server.addr,
        &query("gto.example.com.", RecordType::MX, None),
    )
    .await;
    assert_eq!(answers(&reply), vec!["10 mail.gto.example.com."]);
    let (reply, _) = udp(
        server.addr,
        &query("gto.example.com.", RecordType::SOA, None),
    )
    .await;
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(reply.answers[0].record_type(), RecordType::SOA);
    // A static name without the asked type: NODATA.
    let (reply, _) = udp(
        server.addr,
        &query("mail.gto.example.com.", RecordType::AAAA, None),
    )
    .await;
    assert_nodata(&reply);
}

#[tokio::test]
async fn ns_answers_carry_glue() {
    let server = TestServer::default().await;
    let (reply, _) = udp(
        server.addr,
        &query("gto.example.com.", RecordType::NS, None),
    )
    .await;
    assert_eq!(
        answers(&reply),
        vec!["ns1.gto.example.com.", "ns2.gto.example.com."]
    );
    let glue: Vec<_> = reply
        .additionals
        .iter()
        .map(|r| (r.name.to_string(), r.data.to_string()))
        .collect();
    assert!(
        glue.contains(&("ns1.gto.example.com.".into(), "127.0.0.53".into())),
        "{glue:?}"
    );
    assert!(
        glue.contains(&("ns2.gto.example.com.".into(), "127.0.0.54".into())),
        "{glue:?}"
    );
}

#[tokio::test]
async fn static_cname_into_a_gslb_name_is_followed() {
    let server = TestServer::default().await;
    for reply in [
        udp(
            server.addr,
            &query("remote.gto.example.com.", RecordType::A, None),
        )
        .await
        .0,
        tcp(
            server.addr,
            &query("remote.gto.example.com.", RecordType::A, None),
        )
        .await,
    ] {
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.metadata.authoritative);
        assert_eq!(
            answers(&reply),
            vec!["vpn.gto.example.com.", "198.51.100.10", "198.51.100.20"]
        );
        assert_eq!(reply.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(
            reply.answers[1].name,
            Name::from_ascii("vpn.gto.example.com.").unwrap()
        );
    }
    // Asking for the CNAME itself gives just the CNAME.
    let (reply, _) = udp(
        server.addr,
        &query("remote.gto.example.com.", RecordType::CNAME, None),
    )
    .await;
    assert_eq!(answers(&reply), vec!["vpn.gto.example.com."]);
    // A CNAME out of our zones is returned for the resolver to follow.
    let (reply, _) = udp(
        server.addr,
        &query("docs.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answers(&reply), vec!["www.example.org."]);
}

#[tokio::test]
async fn missing_names_are_nxdomain_with_soa() {
    let server = TestServer::default().await;
    for message in [
        query("nope.gto.example.com.", RecordType::A, None),
        query("deep.under.vpn.gto.example.com.", RecordType::AAAA, None),
    ] {
        for reply in [
            udp(server.addr, &message).await.0,
            tcp(server.addr, &message).await,
        ] {
            assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
            assert!(reply.metadata.authoritative);
            assert!(reply.answers.is_empty());
            assert_eq!(reply.authorities.len(), 1);
            assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
            assert_eq!(reply.authorities[0].ttl, 60);
        }
    }
}

#[tokio::test]
async fn empty_non_terminals_are_nodata() {
    // `_vpn._tcp` exists, so `_tcp` exists without records of its own (RFC 4592 2.2.2).
    let server = TestServer::default().await;
    let (reply, _) = udp(
        server.addr,
        &query("_tcp.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert_nodata(&reply);
}

#[tokio::test]
async fn names_outside_our_zones_are_refused() {
    let server = TestServer::default().await;
    for name in ["example.com.", "www.example.org.", "."] {
        for reply in [
            udp(server.addr, &query(name, RecordType::A, None)).await.0,
            tcp(server.addr, &query(name, RecordType::A, None)).await,
        ] {
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::Refused,
                "{name}"
            );
            assert!(!reply.metadata.authoritative);
            assert!(reply.answers.is_empty());
        }
    }
}

#[tokio::test]
async fn zone_transfers_and_other_classes_are_refused() {
    let server = TestServer::default().await;
    for qtype in [RecordType::AXFR, RecordType::IXFR] {
        let reply = tcp(server.addr, &query("gto.example.com.", qtype, None)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        let (reply, _) = udp(server.addr, &query("gto.example.com.", qtype, None)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    }
    let mut message = query("vpn.gto.example.com.", RecordType::A, None);
    let mut chaos = Query::query(
        Name::from_ascii("vpn.gto.example.com.").unwrap(),
        RecordType::TXT,
    );
    chaos.set_query_class(DNSClass::CH);
    message.queries = vec![chaos];
    let (reply, _) = udp(server.addr, &message).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn any_gets_a_minimal_answer() {
    let server = TestServer::default().await;
    let (reply, _) = udp(
        server.addr,
        &query("vpn.gto.example.com.", RecordType::ANY, None),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.authoritative);
    let types: Vec<_> = reply.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(
        types,
        vec![RecordType::A, RecordType::A],
        "one RRset only (RFC 8482)"
    );
    let (reply, _) = udp(
        server.addr,
        &query("www.gto.example.com.", RecordType::ANY, None),
    )
    .await;
    let first = reply.answers[0].record_type();
    assert!(!reply.answers.is_empty());
    assert!(
        reply.answers.iter().all(|r| r.record_type() == first),
        "{:?}",
        reply.answers
    );
}

#[tokio::test]
async fn other_opcodes_are_notimp() {
    let server = TestServer::default().await;
    for opcode in [OpCode::Status, OpCode::Notify, OpCode::Update] {
        let mut message = query("gto.example.com.", RecordType::SOA, None);
        message.metadata.op_code = opcode;
        let (reply, _) = udp(server.addr, &message).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NotImp,
            "{opcode:?}"
        );
        assert_eq!(reply.metadata.op_code, opcode);
    }
}

#[tokio::test]
async fn wrong_question_counts_are_formerr() {
    let server = TestServer::default().await;
    let mut two = query("vpn.gto.example.com.", RecordType::A, None);
    two.add_query(Query::query(
        Name::from_ascii("www.gto.example.com.").unwrap(),
        RecordType::A,
    ));
    let (reply, _) = udp(server.addr, &two).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    let none = Message::new(7, MessageType::Query, OpCode::Query);
    let reply = Message::from_vec(&tcp_raw(server.addr, &none.to_vec().unwrap()).await).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
}

#[tokio::test]
async fn malformed_packets_get_formerr_or_silence_and_serving_goes_on() {
    let server = TestServer::default().await;
    // A readable header that claims a question the packet does not hold.
    let mut truncated = query("vpn.gto.example.com.", RecordType::A, None)
        .to_vec()
        .unwrap();
    truncated.truncate(20);
    let reply = udp_raw(server.addr, &truncated)
        .await
        .expect("FORMERR expected");
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(reply.metadata.id, 0x1234);
    // Shorter than a header: nothing to answer to.
    assert_eq!(udp_raw(server.addr, &[0x12, 0x34, 0x01]).await, None);
    // A response (QR=1) is never answered: no reflection.
    let mut response = query("vpn.gto.example.com.", RecordType::A, None);
    response.metadata.message_type = MessageType::Response;
    assert_eq!(
        udp_raw(server.addr, &response.to_vec().unwrap()).await,
        None
    );
    // Garbage label lengths.
    let mut garbage = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0x3f, b'a', 0xff, 0xff]);
    let reply = udp_raw(server.addr, &garbage)
        .await
        .map(|b| Message::from_vec(&b).unwrap());
    assert_eq!(
        reply.map(|r| r.metadata.response_code),
        Some(ResponseCode::FormErr)
    );
    // The server still answers.
    let (reply, _) = udp(
        server.addr,
        &query("vpn.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(answers(&reply).len(), 2);
    let reply = tcp(
        server.addr,
        &query("vpn.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(answers(&reply).len(), 2);
}

#[tokio::test]
async fn answers_follow_the_pool_order_and_count() {
    let extra = r#"
[[service]]
name = "one.gto.example.com."
pool = "sma"
answers = 1
ttl = 5
"#;
    let server = TestServer::start(&config(extra), crate::support::ZONE).await;
    let (reply, _) = udp(
        server.addr,
        &query("one.gto.example.com.", RecordType::A, Some(edns(1232))),
    )
    .await;
    assert_eq!(answers(&reply), vec!["198.51.100.10"]);
    assert_eq!(reply.answers[0].ttl, 5);
    match &reply.answers[0].data {
        RData::A(a) => assert_eq!(a.0.to_string(), "198.51.100.10"),
        other => panic!("unexpected {other:?}"),
    }
}

/// The next answer on `socket`, within 5 s.
async fn recv(socket: &tokio::net::UdpSocket) -> Message {
    let mut buffer = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.recv_from(&mut buffer),
    )
    .await
    .expect("an answer is missing")
    .unwrap();
    Message::from_vec(&buffer[..len]).unwrap()
}

/// Many queries in flight from one socket (a busy resolver): the fast path sends the
/// answers of one size to it as one UDP GSO message, which must still arrive as one
/// datagram per answer, each whole and for its own query.
#[tokio::test]
async fn a_burst_from_one_socket_gets_one_datagram_per_answer() {
    const BURST: u16 = 256;
    let config = config("").replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\"]\nworkers = 1",
    );
    let server = TestServer::start(&config, crate::support::ZONE).await;
    // A receive buffer deep enough for the whole burst, as a resolver's would be.
    let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    raw.set_recv_buffer_size(4 << 20).unwrap();
    raw.set_nonblocking(true).unwrap();
    raw.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    let socket = tokio::net::UdpSocket::from_std(raw.into()).unwrap();
    let names = [
        ("vpn.gto.example.com.", RecordType::A),
        ("www.gto.example.com.", RecordType::A),
        ("vpn.gto.example.com.", RecordType::AAAA),
        ("nope.gto.example.com.", RecordType::A),
    ];
    let mut expected = std::collections::HashMap::new();
    for round in 0..8u16 {
        for id in 0..BURST {
            let (name, qtype) = names[usize::from(id) % names.len()];
            let mut message = query(name, qtype, None);
            message.metadata.id = round * BURST + id;
            expected.insert(message.metadata.id, (name, qtype));
            socket
                .send_to(&message.to_vec().unwrap(), server.addr)
                .await
                .unwrap();
        }
        for _ in 0..BURST {
            let reply = recv(&socket).await;
            let (name, qtype) = expected
                .remove(&reply.metadata.id)
                .unwrap_or_else(|| panic!("unexpected or repeated id {}", reply.metadata.id));
            assert_eq!(reply.queries[0].name().to_ascii(), name);
            assert_eq!(reply.queries[0].query_type(), qtype);
            let rcode = if name.starts_with("nope") {
                ResponseCode::NXDomain
            } else {
                ResponseCode::NoError
            };
            assert_eq!(reply.metadata.response_code, rcode);
            if rcode == ResponseCode::NoError {
                assert!(!reply.answers.is_empty(), "{reply:?}");
            }
        }
    }
    assert!(expected.is_empty());

    // A burst beside clients with one query each: their answers, shorter (www A) or
    // longer (NXDOMAIN with the SOA) than the burst's, ride in the burst's GSO send or
    // leave alone; every client gets exactly its own, whole.
    let mut others = Vec::new();
    for _ in 0..6 {
        others.push(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    for round in 0..8u16 {
        for id in 0..24u16 {
            let mut message = query("vpn.gto.example.com.", RecordType::AAAA, None);
            message.metadata.id = round * 100 + id;
            let bytes = message.to_vec().unwrap();
            socket.send_to(&bytes, server.addr).await.unwrap();
        }
        for (i, other) in others.iter().enumerate() {
            let name = if i % 2 == 0 {
                "www.gto.example.com."
            } else {
                "nope.gto.example.com."
            };
            let mut message = query(name, RecordType::A, None);
            message.metadata.id = round * 100 + 50 + i as u16;
            let bytes = message.to_vec().unwrap();
            other.send_to(&bytes, server.addr).await.unwrap();
        }
        let mut ids = std::collections::BTreeSet::new();
        for _ in 0..24 {
            let reply = recv(&socket).await;
            assert_eq!(reply.queries[0].query_type(), RecordType::AAAA);
            assert_eq!(reply.answers.len(), 2, "{reply:?}");
            ids.insert(reply.metadata.id);
        }
        assert_eq!(ids, (round * 100..round * 100 + 24).collect());
        for (i, other) in others.iter().enumerate() {
            let reply = recv(other).await;
            assert_eq!(reply.metadata.id, round * 100 + 50 + i as u16);
            let rcode = if i % 2 == 0 {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            };
            assert_eq!(reply.metadata.response_code, rcode, "{reply:?}");
        }
    }

    // Small groups of a shorter length beside longer single answers (the batch's GSO
    // segment size): two www A answers per client go in a GSO send of their own length,
    // never cut at another's; every client gets each of its answers whole.
    for round in 0..8u16 {
        for (i, other) in others.iter().enumerate() {
            for (k, (name, qtype)) in [
                ("www.gto.example.com.", RecordType::A),
                ("www.gto.example.com.", RecordType::A),
                ("vpn.gto.example.com.", RecordType::AAAA),
            ]
            .into_iter()
            .enumerate()
            {
                let mut message = query(name, qtype, None);
                message.metadata.id = 1000 + round * 100 + i as u16 * 10 + k as u16;
                let bytes = message.to_vec().unwrap();
                other.send_to(&bytes, server.addr).await.unwrap();
            }
        }
        for (i, other) in others.iter().enumerate() {
            let mut ids = std::collections::BTreeSet::new();
            for _ in 0..3 {
                let reply = recv(other).await;
                let k = reply.metadata.id - (1000 + round * 100 + i as u16 * 10);
                let qtype = if k == 2 {
                    RecordType::AAAA
                } else {
                    RecordType::A
                };
                assert_eq!(reply.queries[0].query_type(), qtype, "{reply:?}");
                assert_eq!(reply.answers.len(), if k == 2 { 2 } else { 1 }, "{reply:?}");
                assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
                ids.insert(k);
            }
            assert_eq!(ids, (0..3).collect());
        }
    }
}

/// Item 9, the serving part, through the real binary and dig: QCLASS ANY is REFUSED; a
/// large RRset (1,600 records, about 59 KB uncompressed) goes out whole over TCP, and signed with DO;
/// `gto explain` takes an IDN name and refuses AXFR, on the command line and the API.
#[tokio::test]
async fn class_any_refused_big_sets_whole_over_tcp_and_explain_questions() {
    let dir = tempfile::tempdir().unwrap();
    let zone = format!("{ZONE}{}", a_records("large", 1_600));
    real_config(dir.path(), &zone, |text| crate::dnssec::signed(&text));
    crate::dnssec::keygen(dir.path(), "keys", &[]);
    let config = dir.path().join("gto.toml");
    let mut gto = RealGto::run(&config);
    let addr = gto.dns_addr().await;
    let admin = gto.admin_addr().await;
    wait_answering(addr, "vpn.gto.example.com.").await;

    let any = dig(
        addr,
        &["+norec", "-c", "ANY", "-t", "A", "vpn.gto.example.com"],
    )
    .await;
    assert!(
        any.contains("status: REFUSED") && !any.contains("status: NOERROR"),
        "{any}"
    );
    let rows = |text: &str, kind: &str| {
        text.lines()
            .filter(|l| !l.starts_with(';') && l.contains(&format!("\t{kind}\t")))
            .count()
    };
    let plain = dig(addr, &["+norec", "+tcp", "large.gto.example.com", "A"]).await;
    assert!(plain.contains("status: NOERROR"), "{plain}");
    assert_eq!(rows(&plain, "A"), 1_600, "whole over TCP");
    let signed = dig(
        addr,
        &["+norec", "+tcp", "+dnssec", "large.gto.example.com", "A"],
    )
    .await;
    assert_eq!(rows(&signed, "A"), 1_600, "whole with DO");
    assert_eq!(rows(&signed, "RRSIG"), 1, "and signed");

    // `gto explain`: an IDN name in its U-label form, and AXFR refused.
    let explain = |args: &[&str]| {
        crate::support::gto_bin()
            .args([
                OsStr::new("explain"),
                OsStr::new("--config"),
                config.as_os_str(),
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let idn = explain(&["bücher.gto.example.com.", "192.0.2.1"]);
    assert!(idn.status.success(), "{idn:?}");
    let idn: serde_json::Value = serde_json::from_slice(&idn.stdout).unwrap();
    assert_eq!(idn["rcode"], "NXDOMAIN", "{idn}");
    let axfr = explain(&["gto.example.com.", "192.0.2.1", "-t", "AXFR"]);
    assert!(!axfr.status.success());
    assert!(
        String::from_utf8_lossy(&axfr.stderr).contains("zone transfer"),
        "{axfr:?}"
    );
    let (code, body) = http(
        admin,
        "GET",
        "/v1/explain?name=gto.example.com&client=192.0.2.1&type=AXFR",
        None,
        "",
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = http(
        admin,
        "GET",
        "/v1/explain?name=b%C3%BCcher.gto.example.com&client=192.0.2.1",
        None,
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// On a wildcard address (`0.0.0.0`, `[::]`) every answer leaves from the address the
/// query was sent to: the fast path's (GSLB A) and the general path's (ANY), over IPv4
/// to two loopback addresses and over IPv6; `dig` (which rejects an answer from another
/// address) gets them; TCP too.
#[tokio::test]
async fn a_wildcard_listener_answers_from_the_address_asked() {
    let text = config("").replace(
        "[server]\nlisten = [\"127.0.0.1:0\"]",
        "[server]\nlisten = [\"0.0.0.0:0\", \"[::]:0\"]",
    );
    let server = TestServer::start(&text, ZONE).await;
    let addrs = server.app.dns_addrs().to_vec();
    let (v4, v6) = (addrs[0].port(), addrs[1].port());
    assert!(addrs[0].ip().is_unspecified() && addrs[1].ip().is_unspecified());
    for (asked, qtype) in [
        ("127.0.0.2", RecordType::A),
        ("127.0.0.3", RecordType::A),
        ("127.0.0.2", RecordType::ANY),
        ("::1", RecordType::A),
        ("::1", RecordType::ANY),
    ] {
        let ip: std::net::IpAddr = asked.parse().unwrap();
        let target = std::net::SocketAddr::new(ip, if ip.is_ipv4() { v4 } else { v6 });
        let local = if ip.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let socket = tokio::net::UdpSocket::bind(local).await.unwrap();
        let bytes = query("vpn.gto.example.com.", qtype, None).to_vec().unwrap();
        socket.send_to(&bytes, target).await.unwrap();
        let mut buffer = [0u8; 4096];
        let (len, from) = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            socket.recv_from(&mut buffer),
        )
        .await
        .expect("an answer")
        .unwrap();
        assert_eq!(from, target, "{qtype} to {target}: answered from {from}");
        let reply = Message::from_vec(&buffer[..len]).unwrap();
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{qtype}"
        );
        assert!(!reply.answers.is_empty(), "{qtype} to {target}");
    }
    // A burst from one client: answers of one length leave together (one GSO send, when
    // they share a batch), still from the address asked.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = std::net::SocketAddr::from(([127, 0, 0, 2], v4));
    let bytes = query("vpn.gto.example.com.", RecordType::A, None)
        .to_vec()
        .unwrap();
    for _ in 0..32 {
        socket.send_to(&bytes, target).await.unwrap();
    }
    for _ in 0..32 {
        let mut buffer = [0u8; 4096];
        let (_, from) = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            socket.recv_from(&mut buffer),
        )
        .await
        .expect("every answer of the burst")
        .unwrap();
        assert_eq!(from, target);
    }
    // dig drops an answer from an address it did not ask.
    let answer = dig(
        std::net::SocketAddr::from(([127, 0, 0, 2], v4)),
        &["+short", "vpn.gto.example.com.", "A"],
    )
    .await;
    assert!(answer.contains("198.51.100.10"), "{answer}");
    let tcp_answer = dig(
        std::net::SocketAddr::from(([127, 0, 0, 3], v4)),
        &["+tcp", "+short", "www.gto.example.com.", "A"],
    )
    .await;
    assert!(tcp_answer.contains("192.0.2.80"), "{tcp_answer}");
}
