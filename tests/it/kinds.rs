//! The check kinds beyond TCP, HTTP(S) and TLS, against real targets: a DNS listener that
//! answers, answers wrong and is silent; ICMP echo to 127.0.0.1 and ::1; commands that
//! exit 0, exit 1, hang and flood their output. Then both through the real binary, where
//! the answers follow them.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use gto::config::{DnsProbe, ExecProbe, LoadFields, Probe};
use gto::health::probe::{Phase, ProbeError, Prober};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::support::{PREAMBLE, RealGto, ZONE, answers, query, udp};

/// How the test's DNS listener behaves.
const RIGHT: u8 = 0;
const WRONG_ADDRESS: u8 = 1;
const SERVFAIL: u8 = 2;
const SILENT: u8 = 3;

/// A DNS listener on `ip` (UDP and TCP on one port) answering every question with an A
/// record of 192.0.2.53, or as `mode` says. Runs until the test ends.
async fn dns_listener(ip: &str, mode: Arc<AtomicU8>) -> SocketAddr {
    let udp = tokio::net::UdpSocket::bind(format!("{ip}:0"))
        .await
        .unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    let reply = move |request: &[u8], mode: u8| -> Option<Vec<u8>> {
        let request = Message::from_vec(request).ok()?;
        let mut response = Message::new(
            request.metadata.id,
            MessageType::Response,
            request.metadata.op_code,
        );
        response.metadata.authoritative = true;
        response.add_queries(request.queries.clone());
        match mode {
            SILENT => return None,
            SERVFAIL => response.metadata.response_code = ResponseCode::ServFail,
            _ => {
                let address = if mode == WRONG_ADDRESS {
                    [192, 0, 2, 99]
                } else {
                    [192, 0, 2, 53]
                };
                let name = request.queries.first()?.name().clone();
                response.add_answer(Record::from_rdata(
                    name,
                    60,
                    RData::A(A::from(std::net::Ipv4Addr::from(address))),
                ));
            }
        }
        response.to_vec().ok()
    };
    let udp_mode = mode.clone();
    tokio::spawn(async move {
        let mut buffer = [0u8; 1500];
        while let Ok((n, from)) = udp.recv_from(&mut buffer).await {
            if let Some(bytes) = reply(&buffer[..n], udp_mode.load(Ordering::Relaxed)) {
                let _ = udp.send_to(&bytes, from).await;
            }
        }
    });
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = tcp.accept().await {
            let mode = mode.clone();
            tokio::spawn(async move {
                let mut length = [0u8; 2];
                if stream.read_exact(&mut length).await.is_err() {
                    return;
                }
                let mut request = vec![0; usize::from(u16::from_be_bytes(length))];
                if stream.read_exact(&mut request).await.is_err() {
                    return;
                }
                match reply(&request, mode.load(Ordering::Relaxed)) {
                    Some(bytes) => {
                        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
                        framed.extend(bytes);
                        let _ = stream.write_all(&framed).await;
                    }
                    // Silent: the connection is held open, never answered.
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    addr
}

fn dns_probe(target: SocketAddr, tcp: bool, answers: &[&str]) -> Probe {
    Probe::Dns(DnsProbe {
        target,
        name: Name::from_ascii("appliance.example.").unwrap(),
        qtype: RecordType::A,
        tcp,
        rcode: ResponseCode::NoError,
        answers: answers.iter().map(|a| a.to_string()).collect(),
    })
}

/// Runs a probe under a timeout, as the scheduler does: a timeout is reported with the
/// phase it interrupted.
async fn run_within(
    prober: &Prober,
    millis: u64,
) -> Result<gto::health::probe::ProbeOutcome, ProbeError> {
    match tokio::time::timeout(Duration::from_millis(millis), prober.run()).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(prober.phase())),
    }
}

#[tokio::test]
async fn dns_checks_tell_a_right_answer_from_a_wrong_one_a_bad_rcode_and_silence() {
    let mode = Arc::new(AtomicU8::new(RIGHT));
    let target = dns_listener("127.0.0.9", mode.clone()).await;
    for tcp in [false, true] {
        let expecting = Prober::new(dns_probe(target, tcp, &["192.0.2.53"])).unwrap();
        let any = Prober::new(dns_probe(target, tcp, &[])).unwrap();
        mode.store(RIGHT, Ordering::Relaxed);
        run_within(&expecting, 1000).await.unwrap();
        run_within(&any, 1000).await.unwrap();

        mode.store(WRONG_ADDRESS, Ordering::Relaxed);
        let wrong = run_within(&expecting, 1000).await.unwrap_err();
        assert_eq!(wrong, ProbeError::Answer("192.0.2.53".into()), "tcp: {tcp}");
        assert_eq!(wrong.as_str(), "answer");
        run_within(&any, 1000).await.unwrap();

        mode.store(SERVFAIL, Ordering::Relaxed);
        let failed = run_within(&any, 1000).await.unwrap_err();
        assert_eq!(failed.to_string(), "DNS rcode SERVFAIL, expected NOERROR");
        assert_eq!(failed.as_str(), "rcode");

        mode.store(SILENT, Ordering::Relaxed);
        let silent = run_within(&any, 300).await.unwrap_err();
        assert_eq!(silent, ProbeError::Timeout(Phase::Answer), "tcp: {tcp}");
        assert_eq!(silent.to_string(), "timed out waiting for the DNS reply");
    }
    // Nothing listening on the port: ICMP port unreachable, refused at once.
    let closed = tokio::net::UdpSocket::bind("127.0.0.9:0").await.unwrap();
    let nobody = closed.local_addr().unwrap();
    drop(closed);
    let refused = run_within(&Prober::new(dns_probe(nobody, false, &[])).unwrap(), 1000)
        .await
        .unwrap_err();
    assert_eq!(refused, ProbeError::Refused);
}

/// ICMP echo over an unprivileged ping socket, to both loopback addresses; skipped (with a
/// message) where the host forbids ping sockets, which `gto check` then reports.
#[tokio::test]
async fn icmp_checks_ping_the_loopback_addresses() {
    if let Err(e) = gto::health::kinds::ping_socket(false) {
        eprintln!(
            "SKIPPED: this host forbids unprivileged ping sockets ({e}); allow them with \
             sysctl net.ipv4.ping_group_range=\"0 2147483647\""
        );
        return;
    }
    for target in ["127.0.0.1", "::1"] {
        let prober = Prober::new(Probe::Icmp {
            target: target.parse().unwrap(),
        })
        .unwrap();
        for _ in 0..3 {
            run_within(&prober, 1000)
                .await
                .unwrap_or_else(|e| panic!("ping {target}: {e}"));
        }
    }
}

/// Where ping sockets are forbidden an `icmp` check is a located config error; where they
/// are allowed the same config is good.
#[test]
fn an_icmp_check_where_the_host_forbids_ping_sockets_is_a_located_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    std::fs::write(
        dir.path().join("gto.toml"),
        format!(
            "{PREAMBLE}\n[[service]]\nname = \"vpn.gto.example.com.\"\npool = \"p\"\n\
             [[pool]]\nname = \"p\"\ncheck = {{ kind = \"icmp\" }}\n\
             [[pool.member]]\nname = \"a\"\naddresses = [\"127.0.0.1\"]\n"
        ),
    )
    .unwrap();
    let (code, _, stderr) = crate::check::check(dir.path());
    match gto::health::kinds::ping_socket(false) {
        Ok(_) => assert_eq!(code, 0, "{stderr}"),
        Err(_) => {
            assert_eq!(code, 64, "{stderr}");
            assert!(
                stderr.contains("gto.toml:") && stderr.contains("pool.p.check.kind"),
                "{stderr}"
            );
            assert!(stderr.contains("ping_group_range"), "{stderr}");
        }
    }
}

/// Writes an executable script into `dir`.
fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

fn exec_probe(command: &[&str], max_output: usize) -> ExecProbe {
    ExecProbe {
        command: command.iter().map(|c| c.to_string()).collect(),
        address: "127.0.0.7".parse().unwrap(),
        port: Some(4433),
        member: "fra-1".into(),
        pool: "sma".into(),
        max_output,
        load_fields: Some(LoadFields {
            sessions: "sessions".into(),
            capacity: Some("capacity".into()),
        }),
    }
}

#[tokio::test]
async fn exec_checks_run_a_command_and_judge_its_exit_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let up = script(
        dir.path(),
        "up.sh",
        r#"[ "$1 $2 $3 $4" = "127.0.0.7 4433 fra-1 sma" ] || { echo "args: $*"; exit 2; }
echo '{"sessions": 5, "capacity": 50}'"#,
    );
    let outcome = run_within(
        &Prober::new(Probe::Exec(exec_probe(
            &[&up, "{address}", "{port}", "{name}", "{pool}"],
            4096,
        )))
        .unwrap(),
        2000,
    )
    .await
    .unwrap();
    let load = outcome.load.expect("the JSON on its output gives load");
    assert_eq!((load.sessions, load.capacity), (5.0, Some(50.0)));

    let down = script(
        dir.path(),
        "down.sh",
        "echo\necho '  license pool exhausted '\necho more\nexit 3",
    );
    let error = run_within(
        &Prober::new(Probe::Exec(exec_probe(&[&down], 4096))).unwrap(),
        2000,
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "command ended with exit status 3: license pool exhausted"
    );
    assert_eq!(error.as_str(), "exit");

    // A flood of output is cut at max_output: killed, down, counted.
    let flood = Prober::new(Probe::Exec(exec_probe(&["/usr/bin/yes"], 4096))).unwrap();
    let error = run_within(&flood, 2000).await.unwrap_err();
    assert_eq!(error, ProbeError::Output(4096));

    // A hung command (and its child) is killed at the timeout.
    let pids = dir.path().join("pids");
    let hang = script(
        dir.path(),
        "hang.sh",
        &format!("sleep 30 &\necho $$ $! > {}\nwait", pids.display()),
    );
    let prober = Prober::new(Probe::Exec(exec_probe(&[&hang], 4096))).unwrap();
    let error = run_within(&prober, 300).await.unwrap_err();
    assert_eq!(error, ProbeError::Timeout(Phase::Running));
    let started = tokio::time::Instant::now();
    let text = std::fs::read_to_string(&pids).unwrap();
    for pid in text.split_whitespace() {
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting to be reaped: killed either way.
            if state.is_empty() || state.split_whitespace().nth(2) == Some("Z") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{pid} still runs: {state}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// At most `exec_limit` commands run at once: a probe that waits for a slot past its
/// timeout is gto's delay (local, unknown), not the endpoint's failure.
#[tokio::test]
async fn exec_checks_wait_for_a_free_slot_and_waiting_is_not_the_endpoints_fault() {
    let dir = tempfile::tempdir().unwrap();
    let slow = script(dir.path(), "slow.sh", "sleep 1");
    let slots = Arc::new(tokio::sync::Semaphore::new(1));
    let first = Prober::new(Probe::Exec(exec_probe(&[&slow], 4096)))
        .unwrap()
        .with_exec_slots(slots.clone());
    let second = first.clone();
    let running = tokio::spawn(async move { run_within(&first, 3000).await });
    while slots.available_permits() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued = run_within(&second, 200).await.unwrap_err();
    assert_eq!(queued, ProbeError::Timeout(Phase::Queued));
    assert!(queued.is_local());
    running.await.unwrap().unwrap();
}

/// Through the real binary: one member checked by DNS (the test's listener), one by a
/// command (which reads a flag file); each leaves the answers when its check fails, with
/// the reason in the status, and comes back.
#[tokio::test]
async fn dns_and_exec_checks_steer_the_answers_of_the_real_binary() {
    let mode = Arc::new(AtomicU8::new(RIGHT));
    let target = dns_listener("127.0.0.10", mode.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("healthy");
    std::fs::write(&flag, "").unwrap();
    script(
        dir.path(),
        "check.sh",
        &format!(
            "echo $(ls /proc/self/fd) > {fds}\n[ -e {flag} ] || {{ echo \"$1 is in maintenance\"; exit 1; }}",
            fds = dir.path().join("fds").display(),
            flag = flag.display()
        ),
    );
    // Whatever descriptors this test inherited and passes on, gto closes at start: its
    // commands get none of them.
    let _inherited = std::fs::File::open("/dev/null").map(std::os::fd::OwnedFd::from);
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    std::fs::write(
        dir.path().join("gto.toml"),
        format!(
            "{PREAMBLE}\n[health]\nexec_limit = 4\n\
             [[service]]\nname = \"vpn.gto.example.com.\"\npool = \"p\"\nanswers = 2\n\
             [[pool]]\nname = \"p\"\n\
             [[pool.member]]\nname = \"dns\"\naddresses = [\"192.0.2.1\"]\n\
             check = {{ kind = \"dns\", address = \"{ip}\", port = {port}, query = \"appliance.example\", \
             answer = [\"192.0.2.53\"], interval = \"300ms\", timeout = \"200ms\", rise = 1, fall = 1 }}\n\
             [[pool.member]]\nname = \"exec\"\naddresses = [\"192.0.2.2\"]\n\
             check = {{ kind = \"exec\", command = [\"check.sh\", \"{{name}}\"], interval = \"300ms\", \
             timeout = \"250ms\", rise = 1, fall = 1 }}\n",
            ip = target.ip(),
            port = target.port()
        ),
    )
    .unwrap();
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let (dns, admin) = (gto.dns_addr().await, gto.admin_addr().await);
    let settled = |want: &'static [&'static str]| async move {
        let started = tokio::time::Instant::now();
        loop {
            let mut got = answers(
                &udp(dns, &query("vpn.gto.example.com.", RecordType::A, None))
                    .await
                    .0,
            );
            got.sort();
            if got == want {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "answers {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let last_error = |name: &'static str| async move {
        let (_, text) = crate::support::http(admin, "GET", "/v1/status", None, "").await;
        let status: serde_json::Value = serde_json::from_str(&text).unwrap();
        crate::real::member(&status, name)["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    settled(&["192.0.2.1", "192.0.2.2"]).await;
    // Only the command's input, its output pipes and the directory `ls` lists (once the
    // first run has written them).
    let started = tokio::time::Instant::now();
    let fds = loop {
        match std::fs::read_to_string(dir.path().join("fds")) {
            Ok(text) if text.ends_with('\n') => break text,
            _ if started.elapsed() > Duration::from_secs(5) => panic!("the command never ran"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(fds.trim(), "0 1 2 3");

    mode.store(WRONG_ADDRESS, Ordering::Relaxed);
    settled(&["192.0.2.2"]).await;
    assert_eq!(last_error("dns").await, "DNS answer lacks \"192.0.2.53\"");
    mode.store(RIGHT, Ordering::Relaxed);
    settled(&["192.0.2.1", "192.0.2.2"]).await;

    std::fs::remove_file(&flag).unwrap();
    settled(&["192.0.2.1"]).await;
    assert_eq!(
        last_error("exec").await,
        "command ended with exit status 1: exec is in maintenance"
    );
    std::fs::write(&flag, "").unwrap();
    settled(&["192.0.2.1", "192.0.2.2"]).await;
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// Mistakes in the new kinds' fields are located errors, all at once.
#[test]
fn mistakes_in_dns_and_exec_checks_are_reported_with_their_locations() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    std::fs::write(
        dir.path().join("gto.toml"),
        format!(
            "{PREAMBLE}\n[health]\nexec_limit = 0\n\
             [[service]]\nname = \"vpn.gto.example.com.\"\npool = \"p\"\n\
             [[pool]]\nname = \"p\"\n\
             [[pool.member]]\nname = \"a\"\naddresses = [\"192.0.2.1\"]\n\
             check = {{ kind = \"dns\", qtype = \"BOGUS\", rcode = \"MAYBE\", transport = \"quic\" }}\n\
             [[pool.member]]\nname = \"b\"\naddresses = [\"192.0.2.2\"]\n\
             check = {{ kind = \"exec\", command = [\"/no/such/program\", \"{{adress}}\"], query = \"x\" }}\n"
        ),
    )
    .unwrap();
    let (code, _, stderr) = crate::check::check(dir.path());
    assert_eq!(code, 64, "{stderr}");
    for expected in [
        "health.exec_limit: must be between 1 and 1024",
        "pool.p.member[0].check.query: a dns check needs `query`",
        "pool.p.member[0].check.qtype: \"BOGUS\" is not a record type",
        "pool.p.member[0].check.rcode: \"MAYBE\" is not an rcode",
        "pool.p.member[0].check.transport: \"quic\" is not \"udp\" or \"tcp\"",
        "pool.p.member[1].check.command: cannot run /no/such/program",
        "pool.p.member[1].check.command: unknown placeholder {adress}",
        "pool.p.member[1].check.query: applies to dns checks, not exec",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}
