//! Mass outage, on demand (not in CI): 10,000 endpoints, each with its own TCP check
//! target, all fail at once. Prints how long until every one is out of the published
//! answers (the README promises interval x fall + 1 s, 5 s here), and the drain
//! throughput of the admin API with a 10,000-endpoint state file (one client, then eight).
//!
//! ```text
//! cargo test --release --test outage -- --ignored --nocapture
//! ```
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

use std::fmt::Write as _;
use std::time::Duration;

use gto::{App, ConfigSource};
use hickory_proto::rr::LowerName;
use tokio::time::Instant;

/// Endpoints in the outage: `OUTAGE_ENDPOINTS`, default 10,000.
fn endpoints() -> usize {
    std::env::var("OUTAGE_ENDPOINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}
const TOKEN: &str = "outage-token-0123456789";

fn config(port: u16) -> String {
    let mut text = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
state_file = "gto.state"

[admin]
listen = "127.0.0.1:0"
token_file = "token"

[[zone]]
origin = "gto.example.com."
file = "gto.example.com.zone"

[[service]]
name = "vpn.gto.example.com."
pool = "big"
answers = 2

[[pool]]
name = "big"
check = {{ kind = "tcp", port = {port}, interval = "2s", timeout = "1s", rise = 2, fall = 2 }}
[[pool.member]]
name = "spare"
addresses = ["192.0.2.1"]
check = {{ kind = "none" }}
"#
    );
    for i in 0..endpoints() {
        let (a, b) = (i / 250, i % 250 + 1);
        writeln!(
            text,
            "[[pool.member]]\nname = \"m{i}\"\naddresses = [\"10.9.{a}.{b}\"]\ncheck = {{ address = \"127.1.{a}.{b}\" }}"
        )
        .unwrap();
    }
    text
}

fn up_in_snapshot(app: &App) -> usize {
    let snapshot = app.routing().load_full();
    let name =
        LowerName::from(hickory_proto::rr::Name::from_ascii("vpn.gto.example.com.").unwrap());
    snapshot
        .gslb_node(&name)
        .map(|n| {
            n.members
                .iter()
                .filter(|m| m.up && m.key.member != "spare")
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "on demand: cargo test --release --test outage -- --ignored --nocapture"]
async fn ten_thousand_endpoints_fail_at_once() {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gto.toml"), config(port)).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), support::ZONE).unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    let source = ConfigSource::File(dir.path().join("gto.toml"));
    let app = App::start(source.clone(), source.load().unwrap())
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    while app.health().checked() < endpoints() {
        assert!(Instant::now() < deadline, "not every endpoint was probed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up_in_snapshot(&app), endpoints());
    // Settle one more interval, then every target refuses at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    acceptor.abort();
    let _ = acceptor.await;
    let generation = app.routing().load().generation;
    let failed = Instant::now();
    let mut half = None;
    let deadline = failed + Duration::from_secs(400);
    loop {
        let up = up_in_snapshot(&app);
        if up <= endpoints() / 2 && half.is_none() {
            half = Some(failed.elapsed());
        }
        if up == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{up} endpoints still answered after 400 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = failed.elapsed();
    let rebuilds = app.routing().load().generation - generation;
    println!(
        "mass outage: {} endpoints out of the answers: half after {:.2} s, all after {:.2} s, {rebuilds} snapshot rebuilds (target: interval 2 s x fall 2 + 1 s = 5 s)",
        endpoints(),
        half.unwrap_or_default().as_secs_f64(),
        all.as_secs_f64()
    );

    // Drain throughput with a large state file (members m0.. and m1000.. must exist).
    if endpoints() >= 2_000 {
        drain_throughput(app.admin_addr().unwrap()).await;
    }
    tokio::time::timeout(Duration::from_secs(30), app.shutdown())
        .await
        .unwrap()
        .unwrap();
}

/// Drains from one client, then from eight, each acknowledged once its state file write
/// is done.
async fn drain_throughput(admin: std::net::SocketAddr) {
    let n = 200;
    let started = Instant::now();
    for i in 0..n {
        let (code, _) = support::http(
            admin,
            "POST",
            &format!("/v1/members/big/m{i}/drain"),
            Some(TOKEN),
            "",
        )
        .await;
        assert_eq!(code, 200);
    }
    let serial = f64::from(n) / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..8 {
        clients.push(tokio::spawn(async move {
            for i in 0..n / 8 {
                let member = 1000 + c * 100 + i;
                let (code, _) = support::http(
                    admin,
                    "POST",
                    &format!("/v1/members/big/m{member}/drain"),
                    Some(TOKEN),
                    "",
                )
                .await;
                assert_eq!(code, 200);
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let parallel = f64::from(n) / started.elapsed().as_secs_f64();
    println!(
        "drains: {serial:.0}/s from one client, {parallel:.0}/s from eight (each acknowledged after the state file is written)"
    );
}
