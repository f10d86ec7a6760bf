//! DNS over TCP: pipelining, and the limits that keep slow or greedy clients from
//! exhausting the server.

use std::ffi::OsStr;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::real::{cpu_ticks, member};
use crate::support::{
    RealGto, TestServer, ZONE, answers, config, http_json, query, tcp_receive, wait_answering,
};

fn limited(settings: &str) -> String {
    config("").replace(
        "[server]\nlisten = [\"127.0.0.1:0\"]",
        &format!("[server]\nlisten = [\"127.0.0.1:0\"]\n{settings}"),
    )
}

fn framed(id: u16, name: &str) -> Vec<u8> {
    let mut message = query(name, RecordType::A, None);
    message.metadata.id = id;
    let bytes = message.to_vec().unwrap();
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    out
}

/// Reads one framed answer; None when the server closed the connection.
async fn read_answer(stream: &mut TcpStream) -> Option<Message> {
    let mut length = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut length))
        .await
        .expect("no answer and no close within 5 s")
        .ok()?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut body).await.ok()?;
    Some(Message::from_vec(&body).unwrap())
}

#[tokio::test]
async fn pipelined_queries_are_answered_in_order() {
    let server = TestServer::default().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut burst = Vec::new();
    for (id, name) in [
        (1, "vpn.gto.example.com."),
        (2, "www.gto.example.com."),
        (3, "nope.gto.example.com."),
    ] {
        burst.extend(framed(id, name));
    }
    stream.write_all(&burst).await.unwrap();
    let first = read_answer(&mut stream).await.unwrap();
    let second = read_answer(&mut stream).await.unwrap();
    let third = read_answer(&mut stream).await.unwrap();
    assert_eq!(
        (first.metadata.id, second.metadata.id, third.metadata.id),
        (1, 2, 3)
    );
    assert_eq!(answers(&first).len(), 2);
    assert_eq!(answers(&second), vec!["192.0.2.80"]);
    assert!(third.answers.is_empty());
}

/// Queries pipelined in one burst, mixing what the fast path answers (a GSLB name with and
/// without ECS, a static name, NXDOMAIN) with what only the general path does (CHAOS, ANY,
/// a name outside the zones), and sent in pieces cut inside a length and inside a message:
/// nothing is answered before a message is whole, then every one is answered, in order,
/// with the very bytes the same query gets over UDP.
#[tokio::test]
async fn a_pipelined_burst_in_pieces_gets_the_answers_udp_gets_in_order() {
    let server = TestServer::default().await;
    let mut ecs = hickory_proto::op::Edns::new();
    ecs.options_mut()
        .insert(hickory_proto::rr::rdata::opt::EdnsOption::Subnet(
            hickory_proto::rr::rdata::opt::ClientSubnet::new(
                "198.51.100.0".parse().unwrap(),
                24,
                0,
            ),
        ));
    let mut chaos = query("version.bind.", RecordType::TXT, None);
    chaos.queries[0].set_query_class(hickory_proto::rr::DNSClass::CH);
    let messages: Vec<Vec<u8>> = [
        query("vpn.gto.example.com.", RecordType::A, None),
        chaos,
        query("www.gto.example.com.", RecordType::A, None),
        query("vpn.gto.example.com.", RecordType::AAAA, Some(ecs)),
        query("gto.example.com.", RecordType::ANY, None),
        query("nope.gto.example.com.", RecordType::A, None),
        query("example.org.", RecordType::A, None),
        query("gto.example.com.", RecordType::SOA, None),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, mut message)| {
        message.metadata.id = 100 + i as u16;
        message.to_vec().unwrap()
    })
    .collect();
    let mut burst = Vec::new();
    for message in &messages {
        burst.extend_from_slice(&(message.len() as u16).to_be_bytes());
        burst.extend_from_slice(message);
    }
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    // Half a length, then the rest of it and part of the message: no answer yet.
    let mut at = 0;
    for cut in [1, 9] {
        stream.write_all(&burst[at..cut]).await.unwrap();
        at = cut;
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut byte)).await;
        assert!(
            early.is_err(),
            "answered before the message was whole: {early:?}"
        );
    }
    stream.write_all(&burst[at..]).await.unwrap();
    for message in &messages {
        let answer = tcp_receive(&mut stream).await;
        let over_udp = crate::support::udp_raw(server.addr, message).await;
        assert_eq!(
            Some(&answer),
            over_udp.as_ref(),
            "TCP and UDP differ for {:?}: {:?}",
            Message::from_vec(message).map(|m| m.queries),
            Message::from_vec(&answer)
        );
    }
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_the_others_keep_working() {
    let server = TestServer::start(&limited("tcp_max_connections = 2"), ZONE).await;
    let mut held = Vec::new();
    for id in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(&framed(id, "vpn.gto.example.com."))
            .await
            .unwrap();
        assert!(read_answer(&mut stream).await.is_some());
        held.push(stream);
    }
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    let _ = extra.write_all(&framed(9, "vpn.gto.example.com.")).await;
    assert!(
        read_answer(&mut extra).await.is_none(),
        "a third connection was served"
    );
    // The held connections still answer, and closing one frees a slot.
    held[0]
        .write_all(&framed(5, "www.gto.example.com."))
        .await
        .unwrap();
    assert_eq!(read_answer(&mut held[0]).await.unwrap().metadata.id, 5);
    drop(held.pop());
    let mut retry = None;
    for _ in 0..50 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let _ = stream.write_all(&framed(6, "www.gto.example.com.")).await;
        if let Some(answer) = read_answer(&mut stream).await {
            retry = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        retry.expect("the freed slot was never reused").metadata.id,
        6
    );
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_timeout() {
    let server = TestServer::start(&limited("tcp_idle_timeout = \"500ms\""), ZONE).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    assert!(
        read_answer(&mut stream).await.is_none(),
        "the server kept an idle connection"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    // Half a length prefix is idle too.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&[0]).await.unwrap();
    assert!(read_answer(&mut stream).await.is_none());
}

/// The idle timeout runs from the last whole message, not from the connection's start nor
/// from the last byte: queries 350 ms apart keep a connection open well past its first
/// deadline (500 ms), and a message trickled a byte per 100 ms, never whole, does not.
#[tokio::test]
async fn the_idle_timeout_runs_from_the_last_whole_message() {
    let server = TestServer::start(&limited("tcp_idle_timeout = \"500ms\""), ZONE).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let mut answered = tokio::time::Instant::now();
    for id in 1..=4 {
        tokio::time::sleep_until(answered + Duration::from_millis(350)).await;
        writer
            .write_all(&framed(id, "www.gto.example.com."))
            .await
            .unwrap();
        let mut length = [0u8; 2];
        reader.read_exact(&mut length).await.unwrap_or_else(|e| {
            panic!("closed before query {id}, 350 ms after the one before: {e}")
        });
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(length))];
        reader.read_exact(&mut body).await.unwrap();
        assert_eq!(Message::from_vec(&body).unwrap().metadata.id, id);
        answered = tokio::time::Instant::now();
    }
    let frame = framed(5, "www.gto.example.com.");
    let trickle = tokio::spawn(async move {
        for byte in &frame[..frame.len() - 1] {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut rest = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut rest)).await;
    let after = answered.elapsed();
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "not closed: {closed:?}"
    );
    assert!(
        after >= Duration::from_millis(450) && after < Duration::from_millis(1500),
        "closed {after:?} after the last whole message (timeout 500 ms)"
    );
    trickle.abort();
}

/// With one TCP thread or several (each accepting on the listener and keeping its
/// connections), every one of many concurrent connections is served, and a burst mixing
/// the fast and the general path gets what UDP gets, in order.
#[tokio::test]
async fn every_connection_is_served_whatever_the_tcp_threads() {
    for threads in [1, 3] {
        let server = TestServer::start(&limited(&format!("tcp_threads = {threads}")), ZONE).await;
        let names = [
            ("vpn.gto.example.com.", RecordType::A),
            ("gto.example.com.", RecordType::ANY),
            ("www.gto.example.com.", RecordType::A),
            ("example.org.", RecordType::A),
        ];
        let mut expected = Vec::new();
        let mut burst = Vec::new();
        for (id, (name, kind)) in names.iter().enumerate() {
            let mut message = query(name, *kind, None);
            message.metadata.id = id as u16;
            let bytes = message.to_vec().unwrap();
            expected.push(crate::support::udp_raw(server.addr, &bytes).await);
            burst.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            burst.extend_from_slice(&bytes);
        }
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..24 {
            let (addr, burst) = (server.addr, burst.clone());
            clients.spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream.write_all(&burst).await.unwrap();
                let mut got = Vec::new();
                for _ in 0..4 {
                    got.push(Some(tcp_receive(&mut stream).await));
                }
                got
            });
        }
        while let Some(got) = clients.join_next().await {
            assert_eq!(got.unwrap(), expected, "tcp_threads = {threads}");
        }
    }
}

#[tokio::test]
async fn a_connection_is_closed_after_its_query_limit() {
    let server = TestServer::start(&limited("tcp_max_queries = 3"), ZONE).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for id in 0..3 {
        stream
            .write_all(&framed(id, "vpn.gto.example.com."))
            .await
            .unwrap();
        assert_eq!(read_answer(&mut stream).await.unwrap().metadata.id, id);
    }
    let _ = stream.write_all(&framed(3, "vpn.gto.example.com.")).await;
    assert!(read_answer(&mut stream).await.is_none());
}

#[tokio::test]
async fn pipelining_past_the_query_limit_loses_no_answer() {
    let server = TestServer::start(&limited("tcp_max_queries = 100"), ZONE).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut burst = Vec::new();
    for id in 1..=150 {
        burst.extend(framed(id, "www.gto.example.com."));
    }
    stream.write_all(&burst).await.unwrap();
    // Read slowly, after the server has stopped: every answer it sent must arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids = Vec::new();
    while let Some(answer) = read_answer(&mut stream).await {
        ids.push(answer.metadata.id);
    }
    assert_eq!(ids, (1..=100).collect::<Vec<u16>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_cannot_exhaust_descriptors_or_fail_probes() {
    let limit = gto::rlimit::raise_nofile().unwrap();
    assert!(
        limit >= 1400,
        "this test needs 1400 descriptors, the hard limit is {limit}"
    );
    // An appliance the health check can reach.
    let appliance = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let appliance_port = appliance.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = appliance.accept().await {
                drop(stream);
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let text = config(&format!(
        "[[pool]]\nname = \"watched\"\ncheck = {{ kind = \"tcp\", port = {appliance_port}, interval = \"500ms\", timeout = \"250ms\" }}\n[[pool.member]]\nname = \"w\"\naddresses = [\"127.0.0.1\"]\n"
    ))
    .replace(
        "[server]\nlisten = [\"127.0.0.1:0\"]",
        "[server]\nlisten = [\"127.0.0.1:0\"]\ntcp_idle_timeout = \"60s\"",
    );
    std::fs::write(dir.path().join("gto.toml"), text).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let config_path = dir.path().join("gto.toml");
    // The usual soft and hard limit of 1024: gto cannot raise it.
    let mut gto = RealGto::spawn_with(
        "prlimit",
        &[
            OsStr::new("--nofile=1024:1024"),
            OsStr::new(env!("CARGO_BIN_EXE_gto")),
            OsStr::new("run"),
            OsStr::new("--config"),
            config_path.as_os_str(),
        ],
    );
    let addr = gto.dns_addr().await;
    let admin = gto.admin_addr().await;
    wait_answering(addr, "vpn.gto.example.com.").await;
    let mut idle = Vec::new();
    for _ in 0..1_100 {
        if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
            idle.push(stream);
        }
    }
    // Health checks keep working: the watched endpoint stays up over many intervals.
    let cpu_before = cpu_ticks(gto.child.id().unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_used = cpu_ticks(gto.child.id().unwrap()) - cpu_before;
    let (code, status) = http_json(admin, "GET", "/v1/status", None, "").await;
    assert_eq!(code, 200);
    assert_eq!(member(&status, "w")["health"], "up", "{status}");
    assert!(
        member(&status, "w")["last_error"].is_null(),
        "{}",
        member(&status, "w")
    );
    // No accept loop spinning: well under a core over 3 s (100 ticks a second).
    assert!(
        cpu_used < 100,
        "gto used {cpu_used} ticks of CPU in 3 s while idle"
    );
    // DNS still answers, and the cap closed the connections over it.
    wait_answering(addr, "vpn.gto.example.com.").await;
    let (_, metrics) = crate::support::http(admin, "GET", "/metrics", None, "").await;
    let limited = crate::support::sample(
        &metrics,
        "gto_dns_tcp_closed_total",
        &["reason=\"connection_limit\""],
    );
    assert!(limited > 0.0, "{limited}");
    drop(idle);
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}
