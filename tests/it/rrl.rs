//! Response rate limiting end to end over real UDP, on the fast path (workers) and on the
//! general path (hickory-server's UDP loop): a flood from one client prefix is cut to its
//! rate, with slipped (TC) answers that send a real client to TCP, while another prefix is
//! answered as usual.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::real::{do_query, metrics, real_config};
use crate::support::{
    RealGto, TestServer, ZONE, config, dig, http, query, sample, tcp, wait_answering,
};

/// A burst of 5 at `rate` per second, nothing exempt (the test's clients are on loopback).
fn limited(workers: u32, slip: u32, rate: u32) -> String {
    config(&format!(
        "[rrl]\nresponses_per_second = {rate}\nburst = 5\nslip = {slip}\nexempt = []\n"
    ))
    .replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"127.0.0.1:0\"]\nworkers = {workers}"),
    )
}

/// What came back for a burst of queries from one socket.
#[derive(Debug, Default)]
struct Tally {
    full: usize,
    slipped: usize,
}

impl Tally {
    fn add(&mut self, reply: &Message) {
        if reply.metadata.truncation {
            assert!(reply.answers.is_empty(), "a slip carries no records");
            self.slipped += 1;
        } else {
            assert_eq!(reply.answers.len(), 2, "a full answer: {reply:?}");
            self.full += 1;
        }
    }
}

/// Sends `count` queries for vpn A at once from `socket`.
async fn flood(socket: &UdpSocket, server: SocketAddr, count: u16) {
    for id in 0..count {
        let mut message = query("vpn.gto.example.com.", RecordType::A, None);
        message.metadata.id = id;
        socket
            .send_to(&message.to_vec().unwrap(), server)
            .await
            .unwrap();
    }
}

async fn receive(socket: &UdpSocket, wait: Duration) -> Option<Message> {
    let mut buffer = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(wait, socket.recv_from(&mut buffer))
        .await
        .ok()?
        .unwrap();
    Some(Message::from_vec(&buffer[..len]).unwrap())
}

/// The sum of a counter's samples in `/metrics` whose labels contain `labels`.
async fn metric(server: &TestServer, name: &str, labels: &str) -> u64 {
    let (status, text) = http(server.admin(), "GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    sample(&text, name, &[labels]) as u64
}

/// Most answers a key at 10/s with a burst of 5 may get in `elapsed`.
fn allowed(elapsed: Duration) -> usize {
    5 + (elapsed.as_secs_f64() * 10.0).ceil() as usize + 1
}

async fn other_prefix_is_answered(server: &TestServer) {
    // 127.0.1.0/24 is another client: its first five (its burst) are full answers.
    let socket = UdpSocket::bind("127.0.1.1:0").await.unwrap();
    for _ in 0..5 {
        flood(&socket, server.addr, 1).await;
        let reply = receive(&socket, Duration::from_secs(2))
            .await
            .expect("the other prefix got no answer");
        assert!(!reply.metadata.truncation);
        assert_eq!(reply.answers.len(), 2);
    }
}

async fn slip_every_limited_answer(workers: u32) {
    let server = TestServer::start(&limited(workers, 1, 10), ZONE).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let started = Instant::now();
    flood(&socket, server.addr, 200).await;
    // slip = 1: every query gets a reply, full or truncated.
    let mut tally = Tally::default();
    for _ in 0..200 {
        let reply = receive(&socket, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("a reply is missing after {tally:?}"));
        tally.add(&reply);
    }
    let elapsed = started.elapsed();
    assert!(tally.full >= 5, "the burst is answered: {tally:?}");
    assert!(tally.full <= allowed(elapsed), "{tally:?} in {elapsed:?}");
    assert_eq!(tally.full + tally.slipped, 200);

    other_prefix_is_answered(&server).await;

    // TCP is never limited: the flooding prefix still gets its answer there.
    let reply = tcp(
        server.addr,
        &query("vpn.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(reply.answers.len(), 2);
    assert!(!reply.metadata.truncation);

    // The counter reaches the number of slips (the fast path folds it after each batch).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let slipped = metric(&server, "gto_dns_rate_limited_total", "slipped").await;
        if slipped == tally.slipped as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slipped counter {slipped}, {tally:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_flood_is_slipped_on_the_fast_path_while_another_prefix_is_answered() {
    slip_every_limited_answer(1).await;
}

#[tokio::test]
async fn a_flood_is_slipped_on_the_general_path_while_another_prefix_is_answered() {
    slip_every_limited_answer(0).await;
}

/// slip = 0: limited answers are dropped. What did not come back is exactly what the
/// dropped counter says.
#[tokio::test]
async fn limited_answers_are_dropped_and_counted() {
    let server = TestServer::start(&limited(1, 0, 10), ZONE).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let started = Instant::now();
    flood(&socket, server.addr, 100).await;
    let mut tally = Tally::default();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Take what arrived, then see whether the drops account for the rest.
        while let Some(reply) = receive(&socket, Duration::from_millis(50)).await {
            tally.add(&reply);
        }
        let dropped = metric(&server, "gto_dns_rate_limited_total", "dropped").await;
        if tally.full as u64 + dropped == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "{tally:?}, {dropped} dropped");
    }
    let elapsed = started.elapsed();
    assert_eq!(tally.slipped, 0);
    assert!(
        tally.full >= 5 && tally.full <= allowed(elapsed),
        "{tally:?}"
    );
    other_prefix_is_answered(&server).await;
}

/// The real `dig`: its answer from a limited prefix arrives truncated, and dig's own
/// retry over TCP gets the records.
#[tokio::test]
async fn dig_from_a_limited_prefix_gets_its_answer_over_tcp() {
    let server = TestServer::start(&limited(1, 1, 1), ZONE).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    flood(&socket, server.addr, 50).await;
    let mut tally = Tally::default();
    for _ in 0..50 {
        tally.add(&receive(&socket, Duration::from_secs(5)).await.unwrap());
    }
    assert!(tally.slipped > 0, "{tally:?}");
    // The bucket is empty for 127.0.0.0/24 (one answer a second refills it): dig is slipped, says so, retries over TCP.
    let out = dig(
        server.addr,
        &["-b", "127.0.0.1", "vpn.gto.example.com", "A"],
    )
    .await;
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(out.contains("ANSWER: 2"), "{out}");
}

/// Item 4: a flood of random names under a wildcard from one /24 is rate limited as one
/// bucket (the wildcard's), and meanwhile every real wildcard answer from elsewhere is
/// signed: with the wildcard's own signature (label count without `*`) and the signed
/// NSEC that proves the name itself does not exist. Nothing is signed per name.
#[tokio::test]
async fn a_wildcard_flood_is_limited_and_real_wildcard_answers_stay_signed() {
    use hickory_proto::op::Message;
    use hickory_proto::rr::RecordType;
    let dir = tempfile::tempdir().unwrap();
    real_config(dir.path(), &crate::dnssec::zone(), |text| {
        format!(
            "{}\n[rrl]\nresponses_per_second = 10\nburst = 5\nslip = 2\nexempt = [\"127.0.1.0/24\"]\n",
            crate::dnssec::signed(&text)
        )
    });
    crate::dnssec::keygen(dir.path(), "keys", &[]);
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let addr = gto.dns_addr().await;
    let admin = gto.admin_addr().await;
    wait_answering(addr, "vpn.gto.example.com.").await;
    let signed_before = sample(&metrics(admin).await, "gto_dnssec_signed_on_use_total", &[]);

    // The flood: 4,000 random names under *.wild from 127.0.0.1, as fast as it goes.
    let flooder = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    const FLOOD: u16 = 4_000;
    for id in 0..FLOOD {
        let name = format!("r{id}x{}.wild.gto.example.com.", id.wrapping_mul(7919));
        flooder.send_to(&do_query(&name, id), addr).await.unwrap();
    }
    let started = tokio::time::Instant::now();
    let (mut full, mut slipped) = (0usize, 0usize);
    let mut buffer = vec![0u8; 4096];
    while let Ok(Ok((len, _))) =
        tokio::time::timeout(Duration::from_millis(500), flooder.recv_from(&mut buffer)).await
    {
        let reply = Message::from_vec(&buffer[..len]).unwrap();
        if reply.metadata.truncation {
            slipped += 1;
        } else {
            full += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = 5 + (elapsed * 10.0).ceil() as usize + 1;
    assert!(
        full <= allowed,
        "{full} full answers to the flood in {elapsed:.1} s (at most {allowed}: one bucket)"
    );
    assert!(slipped > 0, "slipped answers send a real client to TCP");

    // Real clients elsewhere: every new wildcard name is answered signed.
    let client = tokio::net::UdpSocket::bind("127.0.1.1:0").await.unwrap();
    for i in 0..40u16 {
        let name = format!("user{i}.wild.gto.example.com.");
        client.send_to(&do_query(&name, i), addr).await.unwrap();
        let (len, _) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buffer))
            .await
            .expect("answered")
            .unwrap();
        let reply = Message::from_vec(&buffer[..len]).unwrap();
        let a = reply
            .answers
            .iter()
            .filter(|r| r.record_type() == RecordType::A)
            .count();
        let sigs: Vec<_> = reply
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                hickory_proto::rr::RData::DNSSEC(
                    hickory_proto::dnssec::rdata::DNSSECRData::RRSIG(sig),
                ) => Some(sig),
                _ => None,
            })
            .collect();
        assert_eq!(a, 1, "{reply:?}");
        assert_eq!(sigs.len(), 1, "signed: {reply:?}");
        assert_eq!(sigs[0].input().num_labels, 4, "the wildcard's label count");
        assert!(
            reply
                .authorities
                .iter()
                .any(|r| r.record_type() == RecordType::NSEC),
            "the proof that {name} does not exist: {reply:?}"
        );
    }
    let signed_after = sample(&metrics(admin).await, "gto_dnssec_signed_on_use_total", &[]);
    assert_eq!(signed_after, signed_before, "nothing signed per name");
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}
