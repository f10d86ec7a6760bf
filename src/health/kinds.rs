//! The probes that are not a TCP connect, an HTTP(S) request or a TLS handshake: a DNS
//! question (`dns`), an ICMP echo over an unprivileged ping socket (`icmp`) and an
//! external command (`exec`, as gdnsd's `extmon`). [`super::probe::Prober`] runs them;
//! the scheduler applies the timeout (dropping a probe kills its command).
//!
//! DNS messages are built and read with hickory-proto; nothing here parses DNS by hand.
//! The ICMP echo is the only packet written here: eight bytes of header (RFC 792, RFC
//! 4443), whose identifier and checksum the kernel fills in for ping sockets.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use super::probe::{Phase, ProbeError, ProbeOutcome, load_from_json};
use crate::config::{DnsProbe, ExecProbe, rcode_mnemonic};

/// The largest DNS reply read over UDP (the EDNS size we advertise).
const UDP_PAYLOAD: u16 = 1232;

/// Asks the question of a `dns` check (over UDP, again over TCP when the reply is
/// truncated, or over TCP alone) and judges the reply. `enter` notes the phase.
pub(super) async fn dns(
    probe: &DnsProbe,
    source: Option<IpAddr>,
    enter: &(dyn Fn(Phase) + Sync),
) -> Result<ProbeOutcome, ProbeError> {
    let id: u16 = rand::random();
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(probe.name.clone(), probe.qtype));
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD);
    query.edns = Some(edns);
    let wire = query
        .to_vec()
        .map_err(|e| ProbeError::Local(format!("cannot encode the DNS query: {e}")))?;
    let reply = if probe.tcp {
        dns_tcp(probe.target, source, &wire, enter).await?
    } else {
        match dns_udp(probe.target, source, &wire, id, enter).await? {
            reply if reply.metadata.truncation => {
                dns_tcp(probe.target, source, &wire, enter).await?
            }
            reply => reply,
        }
    };
    judge(probe, &query, &reply)?;
    Ok(ProbeOutcome::default())
}

/// One exchange over UDP: replies that are not to this question (another ID, another
/// question) are ignored, as a resolver does.
async fn dns_udp(
    target: SocketAddr,
    source: Option<IpAddr>,
    wire: &[u8],
    id: u16,
    enter: &(dyn Fn(Phase) + Sync),
) -> Result<Message, ProbeError> {
    let local = source.unwrap_or(if target.is_ipv4() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        IpAddr::from([0u16; 8])
    });
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))
        .await
        .map_err(local_or_dns)?;
    socket.connect(target).await.map_err(local_or_dns)?;
    socket.send(wire).await.map_err(dns_error)?;
    enter(Phase::Answer);
    let mut buffer = vec![0; usize::from(UDP_PAYLOAD)];
    loop {
        let n = socket.recv(&mut buffer).await.map_err(dns_error)?;
        let Ok(reply) = Message::from_vec(&buffer[..n]) else {
            continue;
        };
        if reply.metadata.id == id && reply.metadata.message_type == MessageType::Response {
            return Ok(reply);
        }
    }
}

/// One exchange over TCP (two-octet length prefix, RFC 1035 section 4.2.2).
async fn dns_tcp(
    target: SocketAddr,
    source: Option<IpAddr>,
    wire: &[u8],
    enter: &(dyn Fn(Phase) + Sync),
) -> Result<Message, ProbeError> {
    enter(Phase::Connect);
    let mut stream = super::probe::connect(target, source).await?;
    let length = u16::try_from(wire.len())
        .map_err(|_| ProbeError::Local("DNS query too long".into()))?
        .to_be_bytes();
    let mut framed = Vec::with_capacity(wire.len() + 2);
    framed.extend_from_slice(&length);
    framed.extend_from_slice(wire);
    stream.write_all(&framed).await.map_err(dns_error)?;
    enter(Phase::Answer);
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).await.map_err(dns_error)?;
    let mut reply = vec![0; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut reply).await.map_err(dns_error)?;
    let _ = stream.set_zero_linger();
    Message::from_vec(&reply).map_err(|e| ProbeError::Dns(format!("unreadable reply: {e}")))
}

/// Up when the reply answers our question with the expected rcode and holds every
/// expected answer.
fn judge(probe: &DnsProbe, query: &Message, reply: &Message) -> Result<(), ProbeError> {
    if reply.metadata.id != query.metadata.id || reply.queries != query.queries {
        return Err(ProbeError::Dns("the reply is to another question".into()));
    }
    let rcode = reply.metadata.response_code;
    if rcode != probe.rcode {
        return Err(ProbeError::Rcode {
            got: rcode_mnemonic(rcode),
            expected: rcode_mnemonic(probe.rcode),
        });
    }
    for expected in &probe.answers {
        if !reply.answers.iter().any(|record| holds(record, expected)) {
            return Err(ProbeError::Answer(expected.clone()));
        }
    }
    Ok(())
}

/// Whether a record's data is `expected`: the same address for A and AAAA, else the
/// same presentation text (case and a final dot aside).
fn holds(record: &Record, expected: &str) -> bool {
    let expected = expected.trim();
    match (&record.data, expected.parse::<IpAddr>()) {
        (RData::A(a), Ok(ip)) => IpAddr::V4(a.0) == ip,
        (RData::AAAA(a), Ok(ip)) => IpAddr::V6(a.0) == ip,
        (data, _) => {
            let text = data.to_string();
            let norm = |s: &str| s.trim_end_matches('.').to_ascii_lowercase();
            norm(&text) == norm(expected) || norm(text.trim_matches('"')) == norm(expected)
        }
    }
}

fn dns_error(e: std::io::Error) -> ProbeError {
    if crate::rlimit::is_exhausted(&e) {
        return ProbeError::Local(e.to_string());
    }
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => ProbeError::Refused,
        std::io::ErrorKind::UnexpectedEof => {
            ProbeError::Dns("the connection closed before the reply".into())
        }
        _ => ProbeError::Dns(e.to_string()),
    }
}

fn local_or_dns(e: std::io::Error) -> ProbeError {
    if crate::rlimit::is_exhausted(&e) || e.kind() == std::io::ErrorKind::AddrNotAvailable {
        return ProbeError::Local(e.to_string());
    }
    ProbeError::Dns(e.to_string())
}

/// An unprivileged ICMP socket (`SOCK_DGRAM`, `IPPROTO_ICMP` or `IPPROTO_ICMPV6`): what
/// Linux allows to groups in `net.ipv4.ping_group_range`. Also how the config tells
/// whether this host allows `icmp` checks.
pub fn ping_socket(v6: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let (domain, protocol) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    };
    Socket::new(domain, Type::DGRAM.cloexec(), Some(protocol))
}

/// Sends one echo request and waits for its reply (same sequence number and payload;
/// the kernel matches the identifier to the socket).
pub(super) async fn icmp(
    target: IpAddr,
    source: Option<IpAddr>,
    enter: &(dyn Fn(Phase) + Sync),
) -> Result<ProbeOutcome, ProbeError> {
    let v6 = target.is_ipv6();
    let socket = ping_socket(v6).map_err(|e| ProbeError::Local(format!("ping socket: {e}")))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| ProbeError::Local(e.to_string()))?;
    if let Some(source) = source {
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .map_err(|e| ProbeError::Local(format!("bind {source}: {e}")))?;
    }
    let socket = UdpSocket::from_std(std::net::UdpSocket::from(socket))
        .map_err(|e| ProbeError::Local(e.to_string()))?;
    socket
        .connect(SocketAddr::new(target, 0))
        .await
        .map_err(|e| ProbeError::Icmp(e.to_string()))?;
    let sequence: u16 = rand::random();
    let payload: [u8; 16] = rand::random();
    let request = echo_request(v6, sequence, &payload);
    socket
        .send(&request)
        .await
        .map_err(|e| ProbeError::Icmp(e.to_string()))?;
    enter(Phase::Echo);
    let mut buffer = [0u8; 1500];
    loop {
        let n = socket
            .recv(&mut buffer)
            .await
            .map_err(|e| ProbeError::Icmp(e.to_string()))?;
        if is_echo_reply(v6, &buffer[..n], sequence, &payload) {
            return Ok(ProbeOutcome::default());
        }
    }
}

/// An echo request (type 8, or 128 for ICMPv6), code 0, identifier 0 (the kernel's),
/// the sequence number, the payload; the IPv4 checksum computed (the kernel computes
/// ICMPv6's).
fn echo_request(v6: bool, sequence: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 0];
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(payload);
    if !v6 {
        let checksum = internet_checksum(&packet);
        packet[2..4].copy_from_slice(&checksum.to_be_bytes());
    }
    packet
}

/// RFC 1071: the ones' complement of the ones' complement sum of 16-bit words.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo reply (type 0, or 129) to our request: same sequence number and payload.
fn is_echo_reply(v6: bool, packet: &[u8], sequence: u16, payload: &[u8]) -> bool {
    packet.len() >= 8
        && packet[0] == if v6 { 129 } else { 0 }
        && packet[6..8] == sequence.to_be_bytes()
        && &packet[8..] == payload
}

/// Runs the command of an `exec` check once a slot is free (at most `[health]
/// exec_limit` at once; waiting for one is gto's delay, not the endpoint's). No shell, no
/// input, no descriptors but its output pipes (Rust opens every descriptor close-on-exec),
/// its own process group, killed with it when the probe is dropped (the timeout). Exit 0
/// is up; otherwise down with the first line of its output. More output than
/// `max_output` kills it: down.
pub(super) async fn exec(
    probe: &ExecProbe,
    slots: Option<&Arc<Semaphore>>,
    enter: &(dyn Fn(Phase) + Sync),
) -> Result<ProbeOutcome, ProbeError> {
    enter(Phase::Queued);
    let _slot = match slots {
        Some(slots) => Some(
            slots
                .acquire()
                .await
                .map_err(|_| ProbeError::Local("exec checks have stopped".into()))?,
        ),
        None => None,
    };
    enter(Phase::Running);
    let argv = probe.argv();
    let Some((program, args)) = argv.split_first() else {
        return Err(ProbeError::Exec("no command".into()));
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            if crate::rlimit::is_exhausted(&e) {
                ProbeError::Local(format!("cannot start {program}: {e}"))
            } else {
                ProbeError::Exec(format!("cannot start {program}: {e}"))
            }
        })?;
    // Kills the whole group (a script's children too) if the probe ends before it does.
    let group = GroupGuard(child.id().and_then(|pid| i32::try_from(pid).ok()));
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ProbeError::Local("no output pipes".into()));
    };
    let limit = probe.max_output;
    let (out, err) = tokio::join!(bounded(stdout, limit), bounded(stderr, limit));
    let (out, out_over) = out.map_err(|e| ProbeError::Exec(format!("reading its output: {e}")))?;
    let (err, err_over) = err.map_err(|e| ProbeError::Exec(format!("reading its output: {e}")))?;
    if out_over || err_over {
        metrics::counter!(crate::metrics::CHECK_EXEC_KILLED_TOTAL, "reason" => "output")
            .increment(1);
        return Err(ProbeError::Output(limit));
    }
    let status = child
        .wait()
        .await
        .map_err(|e| ProbeError::Exec(format!("waiting for it: {e}")))?;
    group.disarm();
    if !status.success() {
        let line = first_line(&out).or_else(|| first_line(&err));
        return Err(ProbeError::Exit {
            status: match status.code() {
                Some(code) => format!("exit status {code}"),
                None => format!("{status}"),
            },
            line: line.unwrap_or_default(),
        });
    }
    let load = probe
        .load_fields
        .as_ref()
        .and_then(|fields| load_from_json(&out, fields));
    Ok(ProbeOutcome {
        load,
        ..ProbeOutcome::default()
    })
}

/// Reads a pipe to its end, keeping at most `limit` bytes; true when there was more.
async fn bounded<R: tokio::io::AsyncRead + Unpin>(
    mut pipe: R,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = pipe.read(&mut chunk).await?;
        if n == 0 {
            return Ok((kept, false));
        }
        if kept.len() + n > limit {
            return Ok((kept, true));
        }
        kept.extend_from_slice(&chunk[..n]);
    }
}

/// The first non-empty line of some output, trimmed and at most 200 characters.
fn first_line(output: &[u8]) -> Option<String> {
    String::from_utf8_lossy(output)
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(|line| line.chars().take(200).collect())
}

/// Kills a command's process group when dropped, unless disarmed (it exited).
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // The leader has not been waited for, so its process group ID is still ours.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_carries_a_valid_checksum_and_its_reply_is_recognised() {
        let request = echo_request(false, 0x1234, b"abcdefgh");
        // A packet with its checksum sums to 0xffff: its checksum recomputed is 0.
        assert_eq!(internet_checksum(&request), 0);
        assert_eq!(request[0], 8);
        let mut reply = request.clone();
        reply[0] = 0;
        assert!(is_echo_reply(false, &reply, 0x1234, b"abcdefgh"));
        assert!(!is_echo_reply(false, &reply, 0x1235, b"abcdefgh"));
        assert!(!is_echo_reply(false, &reply, 0x1234, b"abcdefgX"));
        assert!(!is_echo_reply(false, &request, 0x1234, b"abcdefgh"));
        let v6 = echo_request(true, 7, b"xy");
        assert_eq!(v6[0], 128);
        let mut v6_reply = v6.clone();
        v6_reply[0] = 129;
        assert!(is_echo_reply(true, &v6_reply, 7, b"xy"));
    }

    #[test]
    fn expected_answers_match_addresses_and_names_loosely() {
        let a = Record::from_rdata(
            hickory_proto::rr::Name::root(),
            60,
            RData::A(
                "192.0.2.1"
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST)
                    .into(),
            ),
        );
        assert!(holds(&a, "192.0.2.1"));
        assert!(!holds(&a, "192.0.2.2"));
        let cname = Record::from_rdata(
            hickory_proto::rr::Name::root(),
            60,
            RData::CNAME(hickory_proto::rr::rdata::CNAME(
                hickory_proto::rr::Name::from_ascii("Target.Example.").unwrap_or_default(),
            )),
        );
        assert!(holds(&cname, "target.example"));
        assert!(holds(&cname, "target.example."));
        assert!(!holds(&cname, "other.example."));
    }

    #[test]
    fn the_first_line_of_output_is_the_reason() {
        assert_eq!(
            first_line(b"\n  license pool exhausted  \nmore").as_deref(),
            Some("license pool exhausted")
        );
        assert_eq!(first_line(b""), None);
    }
}
