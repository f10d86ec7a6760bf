//! dnstap through the real binary, read back by independent readers: golang-dnstap's
//! `dnstap` (a file, and a Unix socket it listens on) and `dnstap-ldns` (a file). Queries
//! of every path (UDP fast path, UDP general path, TCP) with the right addresses, ports,
//! messages and types; a reader that goes away and comes back; sampling and message
//! selection; config mistakes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::{DNSClass, RecordType};

use crate::support::{PREAMBLE, RealGto, ZONE, answers, config, query, tcp};

/// Writes the example zone and `gto.toml` (the standard GSLB config plus `dnstap`) into
/// `dir`.
fn write_config(dir: &Path, dnstap: &str) {
    std::fs::write(dir.join("gto.example.com.zone"), ZONE).unwrap();
    std::fs::write(
        dir.join("gto.toml"),
        format!("{}\n[dnstap]\n{dnstap}\n", config("")),
    )
    .unwrap();
}

/// Sends `message` from a socket of its own; returns the reply and the socket's address.
async fn udp_from(server: SocketAddr, message: &Message) -> (Message, SocketAddr) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&message.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    (
        Message::from_vec(&buffer[..n]).unwrap(),
        socket.local_addr().unwrap(),
    )
}

/// Every message of a dnstap file, as golang-dnstap's `dnstap -j` prints them.
fn read_json(file: &Path) -> Vec<serde_json::Value> {
    let output = std::process::Command::new("dnstap")
        .arg("-r")
        .arg(file)
        .arg("-j")
        .output()
        .expect("golang-dnstap's dnstap (tests/run installs it)");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The `extra` field of every message in a Frame Streams file, read from the frames
/// (neither reader prints it): field 3 of each Dnstap message.
fn extras(file: &Path) -> Vec<Option<String>> {
    let bytes = std::fs::read(file).unwrap();
    let mut extras = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let length = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 4;
        if length == 0 {
            // A control frame: its length, then its body.
            let control = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            at += 4 + control;
            continue;
        }
        let frame = &bytes[at..at + length];
        at += length;
        extras.push(protobuf_field(frame, 3).map(|b| String::from_utf8(b.to_vec()).unwrap()));
    }
    extras
}

/// The first length-delimited field `tag` of a protobuf message.
fn protobuf_field(mut bytes: &[u8], tag: u64) -> Option<&[u8]> {
    let varint = |bytes: &mut &[u8]| -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = bytes[0];
            *bytes = &bytes[1..];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    };
    while !bytes.is_empty() {
        let key = varint(&mut bytes);
        match key & 7 {
            0 => {
                varint(&mut bytes);
            }
            2 => {
                let length = varint(&mut bytes) as usize;
                let (value, rest) = bytes.split_at(length);
                if key >> 3 == tag {
                    return Some(value);
                }
                bytes = rest;
            }
            5 => bytes = &bytes[4..],
            1 => bytes = &bytes[8..],
            _ => return None,
        }
    }
    None
}

/// Waits (bounded) for the writer to have written `count` messages to `file`.
async fn wait_messages(file: &Path, count: usize) -> Vec<serde_json::Value> {
    let started = tokio::time::Instant::now();
    loop {
        // The file is flushed after each batch; a reader stops at its last whole frame.
        let messages = read_json(file);
        if messages.len() >= count || started.elapsed() > Duration::from_secs(5) {
            return messages;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn queries_of_every_path_are_logged_to_a_file_that_independent_readers_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gto.dnstap");
    write_config(
        dir.path(),
        &format!("file = \"{}\"\nidentity = \"ns-test\"", file.display()),
    );
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let dns = gto.dns_addr().await;
    // UDP fast path (a GSLB name, a static name, NXDOMAIN), UDP general path (CH TXT),
    // TCP.
    let (gslb, gslb_client) =
        udp_from(dns, &query("vpn.gto.example.com.", RecordType::A, None)).await;
    let (_, static_client) =
        udp_from(dns, &query("www.gto.example.com.", RecordType::A, None)).await;
    let (nx, _) = udp_from(dns, &query("nope.gto.example.com.", RecordType::A, None)).await;
    assert_eq!(
        nx.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );
    let mut chaos = query("version.bind.", RecordType::TXT, None);
    chaos.queries[0].set_query_class(DNSClass::CH);
    udp_from(dns, &chaos).await;
    tcp(dns, &query("vpn.gto.example.com.", RecordType::AAAA, None)).await;

    let messages = wait_messages(&file, 10).await;
    assert_eq!(messages.len(), 10, "{messages:#?}");
    let kinds: Vec<(&str, &str, String)> = messages
        .iter()
        .map(|m| {
            let message = &m["message"];
            let text = message["query_message"].as_str().unwrap_or_default();
            let question = text
                .lines()
                .skip_while(|l| !l.starts_with(";; QUESTION"))
                .nth(1)
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            (
                message["type"].as_str().unwrap(),
                message["socket_protocol"].as_str().unwrap(),
                question,
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (
                "AUTH_QUERY",
                "UDP",
                ";vpn.gto.example.com. IN A".to_string()
            ),
            ("AUTH_RESPONSE", "UDP", ";vpn.gto.example.com. IN A".into()),
            ("AUTH_QUERY", "UDP", ";www.gto.example.com. IN A".into()),
            ("AUTH_RESPONSE", "UDP", ";www.gto.example.com. IN A".into()),
            ("AUTH_QUERY", "UDP", ";nope.gto.example.com. IN A".into()),
            ("AUTH_RESPONSE", "UDP", ";nope.gto.example.com. IN A".into()),
            ("AUTH_QUERY", "UDP", ";version.bind. CH TXT".into()),
            ("AUTH_RESPONSE", "UDP", ";version.bind. CH TXT".into()),
            ("AUTH_QUERY", "TCP", ";vpn.gto.example.com. IN AAAA".into()),
            (
                "AUTH_RESPONSE",
                "TCP",
                ";vpn.gto.example.com. IN AAAA".into()
            ),
        ]
    );
    for (m, client) in messages
        .iter()
        .zip([gslb_client, gslb_client, static_client])
    {
        assert_eq!(m["identity"], "ns-test");
        let message = &m["message"];
        assert_eq!(message["query_address"], client.ip().to_string());
        assert_eq!(message["query_port"], client.port());
        assert_eq!(message["response_address"], dns.ip().to_string());
        assert_eq!(message["response_port"], dns.port());
    }
    // The response is the one the client got, as the reader decodes it.
    let response = messages[1]["message"]["response_message"].as_str().unwrap();
    for address in answers(&gslb) {
        assert!(response.contains(&address), "{address} not in {response}");
    }
    let nx_response = messages[5]["message"]["response_message"].as_str().unwrap();
    assert!(!response.contains("NXDOMAIN") && nx_response.contains("NXDOMAIN"));
    // A GSLB answer names the endpoints it gave, in answer order.
    let extras = extras(&file);
    let members: Vec<&str> = answers(&gslb)
        .iter()
        .map(|a| match a.as_str() {
            "198.51.100.10" => "sma/fra-1",
            "198.51.100.20" => "sma/ams-1",
            "203.0.113.30" => "sma/nyc-1",
            other => panic!("unexpected address {other}"),
        })
        .collect();
    assert_eq!(
        extras[1].as_deref(),
        Some(format!("gslb vpn.gto.example.com. {}", members.join(" ")).as_str())
    );
    assert_eq!(extras[0], None, "a query carries no extra");
    assert_eq!(extras[3], None, "a static answer carries no extra");

    // The stream is ended at shutdown, and dnstap-ldns reads the same messages.
    gto.signal("TERM");
    assert!(gto.exit().await.success());
    let ldns = std::process::Command::new("dnstap-ldns")
        .arg("-r")
        .arg(&file)
        .arg("-q")
        .output()
        .expect("dnstap-ldns (tests/run installs it)");
    let text = String::from_utf8_lossy(&ldns.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10, "{text}");
    assert!(
        lines[0].contains(" AQ 127.0.0.1 UDP ")
            && lines[0].contains("\"vpn.gto.example.com.\" IN A"),
        "{text}"
    );
    assert!(
        lines[9].contains(" AR 127.0.0.1 TCP ") && lines[9].contains("IN AAAA"),
        "{text}"
    );
}

/// A reader on a Unix socket (golang-dnstap's `dnstap -u`): messages arrive over the
/// bidirectional handshake; when the reader goes away gto keeps answering, drops and
/// counts what it cannot send, and reconnects when a reader listens again.
#[tokio::test]
async fn a_socket_reader_gets_the_messages_and_a_restarted_one_gets_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("dnstap.sock");
    let reader = |out: &str| {
        let _ = std::fs::remove_file(&socket);
        tokio::process::Command::new("dnstap")
            .arg("-u")
            .arg(&socket)
            .arg("-j")
            .arg("-w")
            .arg(dir.path().join(out))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("golang-dnstap's dnstap (tests/run installs it)")
    };
    let wait_socket = || async {
        let started = tokio::time::Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the reader never listened"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let lines = |out: &str| {
        std::fs::read_to_string(dir.path().join(out))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let wait_lines = |out: &'static str, count: usize| async move {
        let started = tokio::time::Instant::now();
        loop {
            let got = lines(out);
            if got.len() >= count {
                return got;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{} of {count} messages",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut first = reader("first.json");
    wait_socket().await;
    write_config(dir.path(), &format!("socket = \"{}\"", socket.display()));
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let (dns, admin) = (gto.dns_addr().await, gto.admin_addr().await);
    gto.wait_for_log("dnstap log started").await;
    udp_from(dns, &query("vpn.gto.example.com.", RecordType::A, None)).await;
    let got = wait_lines("first.json", 2).await;
    assert_eq!(got[0]["message"]["type"], "AUTH_QUERY");
    assert_eq!(got[1]["message"]["type"], "AUTH_RESPONSE");

    // The reader goes away: answers go on; what is logged meanwhile is dropped, counted.
    first.kill().await.unwrap();
    let _ = std::fs::remove_file(&socket);
    let started = tokio::time::Instant::now();
    loop {
        let (reply, _) = udp_from(dns, &query("www.gto.example.com.", RecordType::A, None)).await;
        assert_eq!(answers(&reply), ["192.0.2.80"]);
        let metrics = crate::real::metrics(admin).await;
        if crate::support::sample(&metrics, "gto_dnstap_dropped_total", &[]) > 0.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "nothing counted as dropped:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A reader listens again: gto reconnects (within its retry second) and logs again.
    let _second = reader("second.json");
    wait_socket().await;
    let started = tokio::time::Instant::now();
    loop {
        udp_from(dns, &query("vpn.gto.example.com.", RecordType::AAAA, None)).await;
        if lines("second.json").iter().any(|m| {
            m["message"]["query_message"]
                .as_str()
                .is_some_and(|q| q.contains("IN\t AAAA"))
        }) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no message after the reader came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// `messages` picks the message types; `sample` logs about that fraction of queries.
#[tokio::test]
async fn message_selection_and_sampling_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gto.dnstap");
    write_config(
        dir.path(),
        &format!(
            "file = \"{}\"\nmessages = [\"auth-response\"]\nsample = 0.5",
            file.display()
        ),
    );
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let dns = gto.dns_addr().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let bytes = query("www.gto.example.com.", RecordType::A, None)
        .to_vec()
        .unwrap();
    for _ in 0..400 {
        socket.send_to(&bytes, dns).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buffer))
            .await
            .unwrap()
            .unwrap();
    }
    gto.signal("TERM");
    assert!(gto.exit().await.success());
    let messages = read_json(&file);
    assert!(
        messages
            .iter()
            .all(|m| m["message"]["type"] == "AUTH_RESPONSE")
    );
    // Binomial(400, 0.5): outside 120..=280 has a probability below 1e-15.
    assert!(
        (120..=280).contains(&messages.len()),
        "{} of 400 logged",
        messages.len()
    );
}

#[test]
fn dnstap_mistakes_are_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    std::fs::write(
        dir.path().join("gto.toml"),
        format!(
            "{PREAMBLE}\n[dnstap]\nsocket = \"a.sock\"\nfile = \"a.fstrm\"\n\
             messages = [\"client-query\"]\nsample = 0.0\nqueue = 0\n"
        ),
    )
    .unwrap();
    let (code, _, stderr) = crate::check::check(dir.path());
    assert_eq!(code, 64, "{stderr}");
    for expected in [
        "dnstap: set `socket` or `file`, not both",
        "dnstap.messages[0]: \"client-query\" is not \"auth-query\" or \"auth-response\"",
        "dnstap.sample: must be a fraction above 0 and at most 1",
        "dnstap.queue: ",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}
