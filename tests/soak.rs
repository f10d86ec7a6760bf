//! Soak under churn, on demand (not in CI): the real `gto` binary under sustained UDP and
//! TCP load, a hostile flood (random names and ECS subnets, maximum-size and garbage
//! datagrams) from a rate-limited prefix, while every second an appliance goes down or
//! comes back, an endpoint is drained or undrained, and the config is reloaded (admin API
//! or SIGHUP, alternating between two valid configs, now and then an invalid one).
//!
//! Run it (about `SOAK_SECONDS`, default 180, plus the build):
//!
//! ```text
//! SOAK_SECONDS=180 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! Afterwards it asserts: no panic, exit 0 on SIGTERM, every query of the regular clients
//! answered (UDP and TCP), every query of the limited prefix either answered or counted as
//! dropped by rate limiting, RSS flat after warm-up (within 8 MiB), and a state file that
//! says exactly what the end state is (which endpoint is down, which is drained). It prints
//! the figures.
#![allow(
    missing_docs,
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

#[path = "it/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RecordType};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use support::appliance::{Appliance, Speaks};
use support::{ZONE, gto_bin, http, http_json, sample};

const TOKEN: &str = "soak-token-0123456789";
const MEMBERS: usize = 4;

fn config(ttl: u32, appliances: &[SocketAddr]) -> String {
    let mut text = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
state_file = "gto.state"

[admin]
listen = "127.0.0.1:0"
token_file = "token"

[rrl]
responses_per_second = 100
exempt = ["127.0.0.0/24"]

[[zone]]
origin = "gto.example.com."
file = "gto.example.com.zone"

[[service]]
name = "vpn.gto.example.com."
pool = "sma"
answers = 2
ttl = {ttl}

[[pool]]
name = "sma"
check = {{ kind = "tcp", interval = "250ms", timeout = "100ms", rise = 1, fall = 1 }}
"#
    );
    for (i, appliance) in appliances.iter().enumerate() {
        text.push_str(&format!(
            "[[pool.member]]\nname = \"m{i}\"\naddresses = [\"192.0.2.{}\", \"2001:db8::{}\"]\ncheck = {{ address = \"{}\", port = {} }}\n",
            i + 1,
            i + 1,
            appliance.ip(),
            appliance.port()
        ));
    }
    text
}

/// Counters shared by the load tasks.
#[derive(Default)]
struct Load {
    udp_sent: AtomicU64,
    udp_answered: AtomicU64,
    udp_servfail: AtomicU64,
    tcp_sent: AtomicU64,
    tcp_answered: AtomicU64,
    flood_sent: AtomicU64,
    flood_replies: AtomicU64,
    flood_slipped: AtomicU64,
    garbage_sent: AtomicU64,
    /// Regular UDP latency in µs buckets (the last: 10 ms and more), before churn starts
    /// and during it.
    quiet: Latency,
    churn: Latency,
    churning: AtomicBool,
}

/// A latency histogram with 1 µs buckets up to 10 ms.
struct Latency(Vec<AtomicU64>);

impl Default for Latency {
    fn default() -> Self {
        Self((0..=10_000).map(|_| AtomicU64::new(0)).collect())
    }
}

impl Latency {
    fn record(&self, elapsed: Duration) {
        let micros = usize::try_from(elapsed.as_micros()).unwrap_or(usize::MAX);
        self.0[micros.min(10_000)].fetch_add(1, Ordering::Relaxed);
    }

    /// The latency (µs) under which `fraction` of the samples fall.
    fn quantile(&self, fraction: f64) -> usize {
        let counts: Vec<u64> = self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let mut seen = 0;
        for (micros, count) in counts.iter().enumerate() {
            seen += count;
            if seen as f64 >= fraction * total as f64 {
                return micros;
            }
        }
        10_000
    }

    fn summary(&self) -> String {
        format!(
            "p50 {} µs, p99 {} µs, p99.9 {} µs",
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(0.999)
        )
    }
}

fn random_query(rng: &mut impl RngExt, id: u16) -> Vec<u8> {
    let (name, qtype) = match rng.random_range(0..6) {
        0 | 1 => ("vpn.gto.example.com.".to_string(), RecordType::A),
        2 => ("VPN.gto.Example.com.".to_string(), RecordType::AAAA),
        3 => ("www.gto.example.com.".to_string(), RecordType::A),
        4 => ("gto.example.com.".to_string(), RecordType::SOA),
        _ => (
            format!("r{}.gto.example.com.", rng.random::<u32>()),
            RecordType::A,
        ),
    };
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(&name).unwrap(), qtype));
    if rng.random_bool(0.5) {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        let ip = std::net::Ipv4Addr::from(rng.random::<u32>() & 0xffff_ff00);
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(ip.into(), 24, 0)));
        message.edns = Some(edns);
    }
    message.to_vec().unwrap()
}

/// A regular resolver: `window` queries in flight, each must be answered (2 s timeout).
async fn udp_client(server: SocketAddr, load: Arc<Load>, stop: Arc<AtomicBool>) -> u64 {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut unanswered = 0;
    let mut buffer = vec![0u8; 4096];
    let mut id: u16 = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut pending = HashMap::new();
        for _ in 0..16 {
            id = id.wrapping_add(1);
            socket
                .send_to(&random_query(&mut rng, id), server)
                .await
                .unwrap();
            pending.insert(id, Instant::now());
            load.udp_sent.fetch_add(1, Ordering::Relaxed);
        }
        while !pending.is_empty() {
            match tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buffer)).await
            {
                Ok(Ok((len, _))) => {
                    let reply = Message::from_vec(&buffer[..len]).unwrap();
                    if let Some(sent) = pending.remove(&reply.metadata.id) {
                        load.udp_answered.fetch_add(1, Ordering::Relaxed);
                        if load.churning.load(Ordering::Relaxed) {
                            load.churn.record(sent.elapsed());
                        } else {
                            load.quiet.record(sent.elapsed());
                        }
                        if reply.metadata.response_code == hickory_proto::op::ResponseCode::ServFail
                        {
                            load.udp_servfail.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                _ => {
                    unanswered += pending.len() as u64;
                    break;
                }
            }
        }
    }
    unanswered
}

/// A TCP client: batches of 10 pipelined queries, 100 per connection (the server's limit).
async fn tcp_client(server: SocketAddr, load: Arc<Load>, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut unanswered = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut stream = TcpStream::connect(server).await.unwrap();
        for _ in 0..10 {
            let mut batch = Vec::new();
            for id in 0..10u16 {
                let query = random_query(&mut rng, id);
                batch.extend_from_slice(&(query.len() as u16).to_be_bytes());
                batch.extend_from_slice(&query);
            }
            stream.write_all(&batch).await.unwrap();
            load.tcp_sent.fetch_add(10, Ordering::Relaxed);
            for _ in 0..10 {
                let mut len = [0u8; 2];
                let read = tokio::time::timeout(Duration::from_secs(2), async {
                    stream.read_exact(&mut len).await?;
                    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    stream.read_exact(&mut reply).await
                })
                .await;
                match read {
                    Ok(Ok(_)) => {
                        load.tcp_answered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => unanswered += 1,
                }
            }
        }
    }
    unanswered
}

/// Random names and ECS subnets from a prefix that is rate limited, open loop (about
/// 2,000 a second), read concurrently.
async fn flood(server: SocketAddr, load: Arc<Load>, stop: Arc<AtomicBool>) {
    let socket = Arc::new(UdpSocket::bind("127.0.3.1:0").await.unwrap());
    let reader = {
        let socket = socket.clone();
        let load = load.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok((len, _)) = socket.recv_from(&mut buffer).await {
                load.flood_replies.fetch_add(1, Ordering::Relaxed);
                if Message::from_vec(&buffer[..len]).is_ok_and(|m| m.metadata.truncation) {
                    load.flood_slipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut id = 0u16;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let batch: Vec<Vec<u8>> = {
            let mut rng = rand::rng();
            (0..20)
                .map(|_| {
                    id = id.wrapping_add(1);
                    random_query(&mut rng, id)
                })
                .collect()
        };
        for query in batch {
            socket.send_to(&query, server).await.unwrap();
            load.flood_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Let the last replies arrive before the reader stops.
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.abort();
}

/// Garbage: maximum-size datagrams, random bytes, truncated headers (about 500 a second).
async fn garbage(server: SocketAddr, load: Arc<Load>, stop: Arc<AtomicBool>) {
    let socket = UdpSocket::bind("127.0.4.1:0").await.unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let packets: Vec<Vec<u8>> = {
            let mut rng = rand::rng();
            (0..5)
                .map(|i| {
                    let len = match i {
                        0 => 65_507,
                        1 => rng.random_range(0..12),
                        _ => rng.random_range(12..600),
                    };
                    let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    if i == 2 && bytes.len() > 3 {
                        bytes[2] &= 0x7f; // a query, so it reaches the parser
                    }
                    bytes
                })
                .collect()
        };
        for packet in packets {
            let _ = socket.send_to(&packet, server).await;
            load.garbage_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Everything gto wrote to stderr.
type Log = Arc<std::sync::Mutex<Vec<String>>>;

/// Reads the JSON log until both listeners are announced, then keeps reading it (a pipe
/// that fills would block gto) into the returned log.
async fn addresses(stderr: tokio::process::ChildStderr) -> (SocketAddr, SocketAddr, Log) {
    let mut lines = BufReader::new(stderr).lines();
    let (mut dns, mut admin) = (None, None);
    let log = Log::default();
    while dns.is_none() || admin.is_none() {
        let line = lines.next_line().await.unwrap().expect("gto exited");
        log.lock().unwrap().push(line.clone());
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let fields = &json["fields"];
        if let Some(local) = fields["local"].as_str() {
            dns = local.parse().ok();
        }
        if let Some(local) = fields["local_addr"].as_str() {
            admin = local.parse().ok();
        }
    }
    let rest = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            rest.lock().unwrap().push(line);
        }
    });
    (dns.unwrap(), admin.unwrap(), log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: SOAK_SECONDS=180 cargo test --release --test soak -- --ignored --nocapture"]
async fn soak_under_churn() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let dir = tempfile::tempdir().unwrap();
    let mut appliances = Vec::new();
    for i in 0..MEMBERS {
        let (appliance, _) = Appliance::start(&format!("127.0.0.{}", i + 2), Speaks::Tcp).await;
        appliances.push(appliance);
    }
    let targets: Vec<SocketAddr> = appliances.iter().map(|a| a.addr).collect();
    std::fs::write(dir.path().join("gto.toml"), config(20, &targets)).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();

    let mut child = tokio::process::Command::from(gto_bin())
        .args(["--log-json", "run", "--config"])
        .arg(dir.path().join("gto.toml"))
        .env("GTO_LOG", "warn,gto=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let log = child.stderr.take().unwrap();
    let (server, admin, log) = addresses(log).await;
    println!("gto pid {pid}: DNS {server}, admin {admin}; {seconds} s");

    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut udp_tasks = Vec::new();
    for _ in 0..4 {
        udp_tasks.push(tokio::spawn(udp_client(server, load.clone(), stop.clone())));
    }
    let mut tcp_tasks = Vec::new();
    for _ in 0..2 {
        tcp_tasks.push(tokio::spawn(tcp_client(server, load.clone(), stop.clone())));
    }
    let flood_task = tokio::spawn(flood(server, load.clone(), stop.clone()));
    let garbage_task = tokio::spawn(garbage(server, load.clone(), stop.clone()));

    // Load alone first (a tenth of the time, at least 10 s): the latency baseline.
    tokio::time::sleep(Duration::from_secs((seconds / 10).max(10))).await;
    load.churning.store(true, Ordering::Relaxed);
    // Churn, once a second.
    let started = Instant::now();
    let mut rss = Vec::new();
    let (mut reloads_ok, mut reloads_rejected, mut hups, mut drains) = (0, 0, 0, 0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut second = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        second += 1;
        // An appliance goes down for two seconds, in turn.
        let which = (second / 4) % MEMBERS;
        match second % 4 {
            1 => appliances[which].stop().await,
            3 => appliances[which].resume(),
            _ => {}
        }
        // Drain one endpoint, undrain it the next second.
        let member = (second / 2) % MEMBERS;
        let action = if second.is_multiple_of(2) {
            "drain"
        } else {
            "undrain"
        };
        let (status, body) = http(
            admin,
            "POST",
            &format!("/v1/members/sma/m{member}/{action}"),
            Some(TOKEN),
            "{}",
        )
        .await;
        assert_eq!(status, 200, "{action}: {body}");
        drains += 1;
        // Reload: two valid configs in turn; every 7th second an invalid one (rejected,
        // the running config keeps serving); every 5th by SIGHUP instead of the API.
        let path = dir.path().join("gto.toml");
        let invalid = second.is_multiple_of(7);
        let text = if invalid {
            config(20, &targets).replace("pool = \"sma\"", "pool = \"nope\"")
        } else {
            config(if second.is_multiple_of(2) { 20 } else { 30 }, &targets)
        };
        std::fs::write(&path, text).unwrap();
        if second.is_multiple_of(5) && !invalid {
            let status = std::process::Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            hups += 1;
        } else {
            let (status, body) = http(admin, "POST", "/v1/reload", Some(TOKEN), "").await;
            if invalid {
                assert_eq!(status, 422, "{body}");
                reloads_rejected += 1;
            } else {
                assert_eq!(status, 200, "{body}");
                reloads_ok += 1;
            }
        }
        rss.push(rss_kib(pid));
    }
    stop.store(true, Ordering::Relaxed);
    let mut udp_unanswered = 0;
    for task in udp_tasks {
        udp_unanswered += task.await.unwrap();
    }
    let mut tcp_unanswered = 0;
    for task in tcp_tasks {
        tcp_unanswered += task.await.unwrap();
    }
    flood_task.await.unwrap();
    garbage_task.await.unwrap();

    // The end state: m0 down, m3 drained, the others up.
    std::fs::write(dir.path().join("gto.toml"), config(20, &targets)).unwrap();
    http(admin, "POST", "/v1/reload", Some(TOKEN), "").await;
    for (i, appliance) in appliances.iter_mut().enumerate() {
        appliance.stop().await;
        if i != 0 {
            appliance.resume();
        }
    }
    for i in 0..MEMBERS {
        let action = if i == 3 { "drain" } else { "undrain" };
        let path = format!("/v1/members/sma/m{i}/{action}");
        assert_eq!(http(admin, "POST", &path, Some(TOKEN), "{}").await.0, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = http_json(admin, "GET", "/v1/status", None, "").await;
        let health: Vec<(String, bool)> = status["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["member"].as_str().unwrap().to_string(),
                    e["health"] == "up",
                )
            })
            .collect();
        if health.iter().all(|(name, up)| *up == (name != "m0")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health did not settle: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = http(admin, "GET", "/metrics", None, "").await;
    let metric = |name: &str, labels: &str| sample(&metrics, name, &[labels]) as u64;
    let dropped = metric("gto_dns_rate_limited_total", "dropped");
    let slipped = metric("gto_dns_rate_limited_total", "slipped");
    let flips = metric("gto_health_flips_total", "");
    let bad = metric("gto_dns_bad_queries_total", "");

    // SIGTERM: a clean exit, and the state file as the end state left it.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("gto did not stop within 10 s")
        .unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("gto.state")).unwrap())
            .unwrap();
    let members = state["members"].as_array().unwrap();

    let load = &*load;
    let warm = rss.get(rss.len() / 4).copied().unwrap_or_default();
    let peak = rss.iter().copied().max().unwrap_or_default();
    let end = rss.last().copied().unwrap_or_default();
    println!(
        "soak {seconds} s: UDP {} sent, {} answered ({} SERVFAIL), {udp_unanswered} unanswered; \
         TCP {} sent, {} answered, {tcp_unanswered} unanswered",
        load.udp_sent.load(Ordering::Relaxed),
        load.udp_answered.load(Ordering::Relaxed),
        load.udp_servfail.load(Ordering::Relaxed),
        load.tcp_sent.load(Ordering::Relaxed),
        load.tcp_answered.load(Ordering::Relaxed),
    );
    println!(
        "flood {} sent, {} replies ({} slipped seen), rate limiting dropped {dropped} and slipped {slipped}; \
         garbage {} sent, bad queries counted {bad}",
        load.flood_sent.load(Ordering::Relaxed),
        load.flood_replies.load(Ordering::Relaxed),
        load.flood_slipped.load(Ordering::Relaxed),
        load.garbage_sent.load(Ordering::Relaxed),
    );
    println!(
        "churn: {reloads_ok} API reloads, {reloads_rejected} rejected, {hups} SIGHUPs, {drains} drains/undrains, {flips} health flips"
    );
    println!(
        "UDP latency: load alone {}; under churn {}",
        load.quiet.summary(),
        load.churn.summary()
    );
    println!("RSS KiB: after warm-up {warm}, peak {peak}, end {end}; exit {exit}");
    let series: Vec<String> = rss.iter().step_by(15).map(u64::to_string).collect();
    println!("RSS KiB every 15 s: {}", series.join(" "));
    println!("state file: {}", serde_json::to_string(members).unwrap());

    let log = log.lock().unwrap();
    let mut warnings: HashMap<String, usize> = HashMap::new();
    for line in log.iter() {
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(line)
            && json["level"] == "WARN"
        {
            *warnings
                .entry(
                    json["fields"]["message"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string(),
                )
                .or_default() += 1;
        }
    }
    println!("log: {} lines; warnings: {warnings:?}", log.len());
    assert!(
        !log.iter().any(|l| l.contains("panicked")),
        "gto panicked:\n{}",
        log.join("\n")
    );
    assert!(exit.success(), "exit status {exit}");
    assert_eq!(udp_unanswered, 0);
    assert_eq!(tcp_unanswered, 0);
    assert_eq!(load.udp_servfail.load(Ordering::Relaxed), 0);
    let flood_sent = load.flood_sent.load(Ordering::Relaxed);
    assert_eq!(
        load.flood_replies.load(Ordering::Relaxed) + dropped,
        flood_sent,
        "every flood query is answered, slipped or counted as dropped"
    );
    assert!(dropped > 0 && slipped > 0, "the flood was limited");
    assert!(
        peak.saturating_sub(warm) < 8 * 1024,
        "RSS grew from {warm} to {peak} KiB"
    );
    assert!(flips >= seconds / 4, "{flips} flips");
    for member in members {
        let name = member["member"].as_str().unwrap();
        assert_eq!(member["health"] == "up", name != "m0", "{member}");
        assert_eq!(member["drained"] == true, name == "m3", "{member}");
    }
}
