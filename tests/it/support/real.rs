//! Helpers for tests that run the real `gto` binary: configs written to a directory,
//! and what such tests read from the process (CPU ticks, RSS, metrics).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::support::{ZONE, config, http};

pub(crate) fn member<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["member"] == name)
        .unwrap()
}

/// A config for the real binary, DNS on port 0 (read back with [`RealGto::dns_addr`]) and
/// no admin API, written to `dir`.
pub(crate) fn real_config_without_admin(dir: &std::path::Path, extra_server: &str) {
    let text = config("")
        .replace(
            "[server]\nlisten = [\"127.0.0.1:0\"]",
            &format!("[server]\nlisten = [\"127.0.0.1:0\"]\n{extra_server}"),
        )
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nenabled = false",
        );
    std::fs::write(dir.join("gto.toml"), text).unwrap();
    std::fs::write(dir.join("gto.example.com.zone"), ZONE).unwrap();
}

/// A pool of `n` endpoints whose checks all go to a port nothing listens on, each its own
/// target (127.3.x.y), so every probe is refused.
pub(crate) fn outage_config(n: usize, port: u16) -> String {
    let mut text = format!(
        r#"{}
[[service]]
name = "vpn.gto.example.com."
pool = "big"

[[pool]]
name = "big"
check = {{ kind = "tcp", port = {port}, interval = "2s", timeout = "1s", fall = 2 }}
[[pool.member]]
name = "spare"
addresses = ["192.0.2.1"]
check = {{ kind = "none" }}
"#,
        crate::support::PREAMBLE.replace(
            "[server]\nlisten = [\"127.0.0.1:0\"]",
            "[server]\nlisten = [\"127.0.0.1:0\"]\nstate_file = \"gto.state\"",
        )
    );
    for i in 0..n {
        let (a, b) = (i / 250, i % 250 + 1);
        text.push_str(&format!(
            "[[pool.member]]\nname = \"m{i}\"\naddresses = [\"10.9.{a}.{b}\"]\ncheck = {{ address = \"127.3.{a}.{b}\" }}\n"
        ));
    }
    text
}

/// User plus system CPU time of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A server whose one GSLB name's endpoints (`members`, on 127.0.0.x) are all checked
/// against a closed port; returns once every one of them has flipped down.
pub(crate) async fn all_down(members: &[&str], service_extra: &str) -> crate::support::TestServer {
    // Held for the rest of the test process: the probes go on after this returns.
    let closed = Box::leak(Box::new(crate::support::ClosedPort::new()));
    let port = closed.port();
    let mut text = format!(
        "{}\n[[service]]\nname = \"vpn.gto.example.com.\"\npool = \"p\"\n{service_extra}\n\
         [[pool]]\nname = \"p\"\ncheck = {{ kind = \"tcp\", port = {port}, interval = \"300ms\", timeout = \"200ms\", fall = 1 }}\n",
        crate::support::PREAMBLE
    );
    for (i, name) in members.iter().enumerate() {
        text.push_str(&format!(
            "[[pool.member]]\nname = \"{name}\"\naddresses = [\"127.0.0.{}\"]\n",
            i + 1
        ));
    }
    let server = crate::support::TestServer::start(&text, ZONE).await;
    // Polled, bounded: a flip may come before a subscription could.
    for _ in 0..250 {
        let status = server.app.health().status().await;
        if status
            .iter()
            .all(|s| s.health == gto::health::state::Health::Down)
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the endpoints never went down");
}

pub(crate) async fn metrics_text(server: &crate::support::TestServer) -> String {
    crate::support::http(server.admin(), "GET", "/metrics", None, "")
        .await
        .1
}

/// A config for the real binary with DNS and the admin API on port 0 (read back with
/// [`RealGto::dns_addr`] and [`RealGto::admin_addr`]), written to `dir` with `zone` as its
/// zone file; `edit` changes the config text first.
pub(crate) fn real_config(dir: &Path, zone: &str, edit: impl FnOnce(String) -> String) {
    std::fs::write(dir.join("gto.toml"), edit(config(""))).unwrap();
    std::fs::write(dir.join("gto.example.com.zone"), zone).unwrap();
}

/// [`real_config`] with `[admin] token_file` set and the test token written beside it.
pub(crate) fn real_config_with_token(dir: &Path, zone: &str, edit: impl FnOnce(String) -> String) {
    std::fs::write(
        dir.join("admin.token"),
        format!("{}\n", crate::admin::TOKEN),
    )
    .unwrap();
    real_config(dir, zone, |text| {
        edit(text.replace(
            "[admin]\nlisten",
            "[admin]\ntoken_file = \"admin.token\"\nlisten",
        ))
    })
}

pub(crate) async fn metrics(admin: SocketAddr) -> String {
    let (code, text) = http(admin, "GET", "/metrics", None, "").await;
    assert_eq!(code, 200);
    text
}

/// A raw HTTP/1.1 GET with a given `Host`; the status line and the headers (lower case).
pub(crate) async fn get_with_host(
    addr: SocketAddr,
    path: &str,
    host: &str,
) -> (u16, Vec<(String, String)>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    let head = text.split("\r\n\r\n").next().unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// `count` A records at `owner`, as zone file lines.
pub(crate) fn a_records(owner: &str, count: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "{owner} IN A 10.{}.{}.{}\n",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            )
        })
        .collect()
}

/// A query for `name` A with DO (payload 1232) and id `id`, as bytes.
pub(crate) fn do_query(name: &str, id: u16) -> Vec<u8> {
    let mut edns = crate::support::edns(1232);
    edns.set_dnssec_ok(true);
    let mut message = crate::support::query(name, hickory_proto::rr::RecordType::A, Some(edns));
    message.metadata.id = id;
    message.to_vec().unwrap()
}

/// Resident memory of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
