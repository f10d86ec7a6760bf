//! EDNS(0), EDNS Client Subnet, truncation, and the same seen through real `dig`.

use hickory_proto::op::{Edns, ResponseCode};
use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};

use crate::support::{TestServer, ZONE, answers, config, dig, edns, query, tcp, udp, udp_raw};

fn with_subnet(payload: u16, subnet: ClientSubnet) -> Edns {
    let mut edns = edns(payload);
    edns.options_mut().insert(EdnsOption::Subnet(subnet));
    edns
}

#[tokio::test]
async fn opt_is_echoed_with_our_payload_size_only_when_asked() {
    let server = TestServer::default().await;
    let (reply, _) = udp(
        server.addr,
        &query("vpn.gto.example.com.", RecordType::A, Some(edns(4096))),
    )
    .await;
    let opt = reply.edns.as_ref().expect("OPT echoed");
    assert_eq!(opt.max_payload(), 1232);
    assert_eq!(opt.version(), 0);
    assert!(!opt.flags().dnssec_ok);
    let (reply, _) = udp(
        server.addr,
        &query("vpn.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert!(reply.edns.is_none(), "no OPT without one in the query");
    // Negative answers and REFUSED carry OPT too.
    let (reply, _) = udp(
        server.addr,
        &query("nope.gto.example.com.", RecordType::A, Some(edns(1232))),
    )
    .await;
    assert!(reply.edns.is_some());
    let (reply, _) = udp(
        server.addr,
        &query("example.net.", RecordType::A, Some(edns(1232))),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert!(reply.edns.is_some());
}

#[tokio::test]
async fn do_bit_is_copied() {
    let server = TestServer::default().await;
    let mut with_do = edns(1232);
    with_do.set_dnssec_ok(true);
    let (reply, _) = udp(
        server.addr,
        &query("vpn.gto.example.com.", RecordType::A, Some(with_do)),
    )
    .await;
    assert!(reply.edns.unwrap().flags().dnssec_ok);
}

#[tokio::test]
async fn edns_version_above_zero_is_badvers() {
    let server = TestServer::default().await;
    let mut v1 = edns(1232);
    v1.set_version(1);
    for reply in [
        udp(
            server.addr,
            &query("vpn.gto.example.com.", RecordType::A, Some(v1.clone())),
        )
        .await
        .0,
        tcp(
            server.addr,
            &query("vpn.gto.example.com.", RecordType::A, Some(v1)),
        )
        .await,
    ] {
        // BADVERS is 16 (RFC 6891); hickory decodes 16 as BADSIG, which shares the code.
        assert_eq!(
            u16::from(reply.metadata.response_code),
            u16::from(ResponseCode::BADVERS)
        );
        assert!(reply.answers.is_empty());
        assert_eq!(reply.edns.as_ref().map(|e| e.version()), Some(0));
    }
}

#[tokio::test]
async fn client_subnet_is_echoed_with_scope_zero() {
    let server = TestServer::default().await;
    for subnet in [
        ClientSubnet::new("198.51.100.0".parse().unwrap(), 24, 0),
        ClientSubnet::new("2001:db8:abcd::".parse().unwrap(), 48, 0),
        ClientSubnet::new("203.0.113.7".parse().unwrap(), 32, 0),
    ] {
        let message = query(
            "vpn.gto.example.com.",
            RecordType::A,
            Some(with_subnet(1232, subnet)),
        );
        for reply in [
            udp(server.addr, &message).await.0,
            tcp(server.addr, &message).await,
        ] {
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
            assert_eq!(answers(&reply).len(), 2);
            let echoed = reply.edns.as_ref().and_then(|e| e.option(EdnsCode::Subnet));
            let Some(EdnsOption::Subnet(echoed)) = echoed else {
                panic!("ECS not echoed: {:?}", reply.edns);
            };
            assert_eq!(echoed.addr(), subnet.addr());
            assert_eq!(echoed.source_prefix(), subnet.source_prefix());
            assert_eq!(
                echoed.scope_prefix(),
                0,
                "the failover answer does not depend on the client"
            );
        }
    }
}

#[tokio::test]
async fn client_subnet_with_host_bits_is_formerr() {
    let server = TestServer::default().await;
    // Only whole bytes of the prefix go on the wire, so the stray bit must sit inside the
    // last one: 198.51.101.0/23 has bit 24 set.
    let dirty = ClientSubnet::new("198.51.101.0".parse().unwrap(), 23, 0);
    let (reply, _) = udp(
        server.addr,
        &query(
            "vpn.gto.example.com.",
            RecordType::A,
            Some(with_subnet(1232, dirty)),
        ),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // An ECS source prefix longer than the family is malformed too.
    let mut raw = query(
        "vpn.gto.example.com.",
        RecordType::A,
        Some(with_subnet(
            1232,
            ClientSubnet::new("198.51.100.0".parse().unwrap(), 24, 0),
        )),
    )
    .to_vec()
    .unwrap();
    // The option's SOURCE PREFIX-LENGTH byte: family (2), source (1), scope (1), address (3) at the end.
    let at = raw.len() - 3 - 2;
    raw[at] = 40;
    let reply = udp_raw(server.addr, &raw).await.expect("an answer");
    let reply = hickory_proto::op::Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
}

/// A zone with TXT sets of known size: `mid` (~900 bytes) and `huge` (~2,400 bytes).
fn zone_with_big_records() -> String {
    let chunk = "x".repeat(200);
    let mut zone = ZONE.to_string();
    for i in 0..4 {
        zone.push_str(&format!("mid IN TXT \"{i}{chunk}\"\n"));
    }
    for i in 0..11 {
        zone.push_str(&format!("huge IN TXT \"{i}{chunk}\"\n"));
    }
    zone
}

#[tokio::test]
async fn answers_too_big_for_udp_are_truncated_and_complete_over_tcp() {
    let server = TestServer::start(&config(""), &zone_with_big_records()).await;
    // No EDNS: 512 bytes.
    let (reply, size) = udp(
        server.addr,
        &query("mid.gto.example.com.", RecordType::TXT, None),
    )
    .await;
    assert!(reply.metadata.truncation, "TC expected");
    assert!(size <= 512);
    assert!(reply.answers.is_empty());
    assert_eq!(reply.queries.len(), 1);
    // A client that advertises 512 over EDNS gets TC too, and still our own size in OPT.
    let (reply, size) = udp(
        server.addr,
        &query("mid.gto.example.com.", RecordType::TXT, Some(edns(512))),
    )
    .await;
    assert!(reply.metadata.truncation);
    assert!(size <= 512);
    assert_eq!(reply.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    // EDNS 1232 fits it.
    let (reply, size) = udp(
        server.addr,
        &query("mid.gto.example.com.", RecordType::TXT, Some(edns(1232))),
    )
    .await;
    assert!(!reply.metadata.truncation);
    assert_eq!(reply.answers.len(), 4);
    assert!(size <= 1232);
    // A client asking for 4096 still gets at most our 1232, with OPT kept.
    let (reply, size) = udp(
        server.addr,
        &query("huge.gto.example.com.", RecordType::TXT, Some(edns(4096))),
    )
    .await;
    assert!(reply.metadata.truncation);
    assert!(size <= 1232);
    assert!(reply.edns.is_some(), "OPT stays in a truncated answer");
    // TCP has room for all of it.
    let reply = tcp(
        server.addr,
        &query("huge.gto.example.com.", RecordType::TXT, Some(edns(4096))),
    )
    .await;
    assert!(!reply.metadata.truncation);
    assert_eq!(reply.answers.len(), 11);
}

#[tokio::test]
async fn dig_sees_aa_answers_over_udp_and_tcp() {
    let server = TestServer::default().await;
    for transport in ["+notcp", "+tcp"] {
        let out = dig(server.addr, &[transport, "vpn.gto.example.com", "A"]).await;
        assert!(out.contains("status: NOERROR"), "{out}");
        assert!(out.contains("flags: qr aa rd;"), "{out}");
        assert!(
            out.contains("198.51.100.10") && out.contains("198.51.100.20"),
            "{out}"
        );
        assert!(!out.contains("203.0.113.30"), "answers = 2: {out}");
    }
    let out = dig(
        server.addr,
        &["+subnet=198.51.100.0/24", "vpn.gto.example.com", "AAAA"],
    )
    .await;
    assert!(out.contains("CLIENT-SUBNET: 198.51.100.0/24/0"), "{out}");
    assert!(out.contains("2001:db8:100::10"), "{out}");
}

#[tokio::test]
async fn dig_retries_truncated_answers_over_tcp() {
    let server = TestServer::start(&config(""), &zone_with_big_records()).await;
    let out = dig(server.addr, &["+noedns", "mid.gto.example.com", "TXT"]).await;
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(out.contains("ANSWER: 4"), "{out}");
    assert!(out.contains("(TCP)"), "{out}");
}
