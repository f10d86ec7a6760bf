//! DNS over TCP: pipelining, and the limits that keep slow or greedy clients from
//! exhausting the server.

use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestServer, ZONE, answers, config, query};

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
async fn issue_18_12_pipelining_past_the_query_limit_loses_no_answer() {
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
