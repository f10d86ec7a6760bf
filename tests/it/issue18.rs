//! Regression tests for issue 18: defects found trying gto as an attacker and as an
//! operator. Each test is named after the item it pins down.

use std::ffi::OsStr;
use std::os::unix::fs::FileTypeExt;
use std::time::Duration;

use crate::admin::{TOKEN, start as start_admin};
use crate::support::{RealGto, ZONE, config, free_port, http_json, wait_answering};

fn member<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["member"] == name)
        .unwrap()
}

/// A config for the real binary on a free port, written to `dir`.
fn real_config(dir: &std::path::Path, extra_server: &str) -> std::net::SocketAddr {
    let port = free_port();
    let text = config("")
        .replace(
            "[server]\nlisten = [\"127.0.0.1:0\"]",
            &format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\n{extra_server}"),
        )
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nenabled = false",
        );
    std::fs::write(dir.join("gto.toml"), text).unwrap();
    std::fs::write(dir.join("gto.example.com.zone"), ZONE).unwrap();
    format!("127.0.0.1:{port}").parse().unwrap()
}

#[tokio::test]
async fn issue_18_1_far_future_drains_are_refused_and_status_keeps_working() {
    let server = start_admin().await;
    let admin = server.admin();
    let path = "/v1/members/sma/fra-1/drain";
    for body in [
        r#"{"for": "8000years"}"#,
        r#"{"for": "500000000years"}"#,
        r#"{"until": "9999-12-31T00:00:00Z"}"#,
        r#"{"for": "367days"}"#,
    ] {
        let (code, reply) = http_json(admin, "POST", path, Some(TOKEN), body).await;
        assert_eq!(code, 400, "{body}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains("max_drain"),
            "{reply}"
        );
    }
    let (code, status) = http_json(admin, "GET", "/v1/status", None, "").await;
    assert_eq!(code, 200);
    assert_eq!(member(&status, "fra-1")["drained"], false);
    // Within the bound it works, and reads back as RFC 3339.
    let (code, reply) = http_json(admin, "POST", path, Some(TOKEN), r#"{"for": "300d"}"#).await;
    assert_eq!(code, 200, "{reply}");
    assert!(
        reply["endpoint"]["drained_until"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let (code, _) = http_json(admin, "GET", "/v1/status", None, "").await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn issue_18_2_out_of_range_state_file_entries_are_dropped_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let addr = real_config(dir.path(), "state_file = \"gto.state\"");
    let max = u64::MAX;
    let state = format!(
        r#"{{"version": 1, "written": 1, "members": [
        {{"pool": "sma", "member": "fra-1", "health": "up", "since": 1, "checked": null,
          "reason": null, "drained": true, "drained_until": {max}}},
        {{"pool": "sma", "member": "ams-1", "health": "up", "since": {max}, "checked": {max},
          "reason": null}},
        {{"pool": "sma", "member": "nyc-1", "health": "up", "since": 1, "checked": 1,
          "reason": null, "drained": true, "drained_until": null}}]}}"#
    );
    std::fs::write(dir.path().join("gto.state"), state).unwrap();
    let config = dir.path().join("gto.toml");

    // `gto explain` reads the same file: no panic, and the valid drain (nyc-1) counts.
    let output = crate::support::gto_bin()
        .args([
            OsStr::new("explain"),
            OsStr::new("--config"),
            config.as_os_str(),
        ])
        .args(["vpn.gto.example.com.", "198.51.100.1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("out of range"), "{stderr}");
    let explanation: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        explanation["answers"],
        serde_json::json!(["198.51.100.10", "198.51.100.20"]),
        "fra-1's bad drain dropped, nyc-1's kept: {explanation}"
    );

    // `gto run` starts and answers; the bad entries were dropped and logged.
    let mut gto = RealGto::run(&config);
    gto.wait_for_log("out of range").await;
    let reply = wait_answering(addr, "vpn.gto.example.com.").await;
    let answers = crate::support::answers(&reply);
    assert_eq!(
        answers,
        vec!["198.51.100.10", "198.51.100.20"],
        "nyc-1 stays drained"
    );
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

#[test]
fn issue_18_3_config_named_files_that_are_devices_or_huge_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        r#"
[[pool]]
name = "tls"
check = { kind = "https", port = 443, ca_file = "/dev/zero" }
[[pool.member]]
name = "x"
addresses = ["192.0.2.1"]
"#,
    )
    .replace("file = \"gto.example.com.zone\"", "file = \"big.zone\"")
    .replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"/dev/urandom\"",
    )
    .replace("[server]\n", "[server]\nmax_file_size = \"1KiB\"\n");
    std::fs::write(dir.path().join("gto.toml"), text).unwrap();
    std::fs::write(dir.path().join("big.zone"), ZONE.repeat(3)).unwrap();
    let output = crate::support::gto_bin()
        .arg("check")
        .arg("--config")
        .arg(dir.path().join("gto.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("/dev/zero: is a character device"),
        "{stderr}"
    );
    assert!(
        stderr.contains("/dev/urandom: is a character device"),
        "{stderr}"
    );
    assert!(
        stderr.contains("big.zone: larger than the limit of 1024 bytes"),
        "{stderr}"
    );
}

#[tokio::test]
async fn issue_18_4_sighup_and_sigterm_during_startup_do_not_kill_gto() {
    // A zone big enough that loading it takes a while.
    let mut zone = ZONE.to_string();
    for i in 0..60_000 {
        zone.push_str(&format!("h{i} IN A 192.0.2.{}\n", i % 250 + 1));
    }
    for signal in ["HUP", "TERM"] {
        let dir = tempfile::tempdir().unwrap();
        let addr = real_config(dir.path(), "");
        std::fs::write(dir.path().join("gto.example.com.zone"), &zone).unwrap();
        let config = dir.path().join("gto.toml");
        let mut gto = RealGto::run(&config);
        gto.wait_for_log("loading the config").await;
        gto.signal(signal);
        if signal == "HUP" {
            // The reload is queued and runs once gto serves.
            gto.wait_for_log("SIGHUP arrived during start-up").await;
            gto.wait_for_log("config reloaded").await;
            let reply = wait_answering(addr, "h59999.gto.example.com.").await;
            assert_eq!(crate::support::answers(&reply).len(), 1);
            gto.signal("TERM");
        }
        let status = gto.exit().await;
        assert_eq!(status.code(), Some(0), "after SIG{signal}: {status:?}");
    }
}

#[tokio::test]
async fn issue_18_7_a_fifo_config_path_neither_hangs_check_nor_reload_and_sigterm_wins() {
    let dir = tempfile::tempdir().unwrap();
    let addr = real_config(dir.path(), "");
    let config = dir.path().join("gto.toml");
    let mut gto = RealGto::run(&config);
    wait_answering(addr, "vpn.gto.example.com.").await;
    // The zone file becomes a FIFO nobody writes to.
    let zone = dir.path().join("gto.example.com.zone");
    std::fs::remove_file(&zone).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&zone)
        .status()
        .unwrap();
    assert!(status.success());
    gto.signal("HUP");
    gto.wait_for_log("is a FIFO, not a regular file").await;
    // A later reload still runs (nothing holds the reload lock).
    gto.signal("HUP");
    gto.wait_for_log("is a FIFO, not a regular file").await;
    wait_answering(addr, "vpn.gto.example.com.").await;
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::from(crate::support::gto_bin())
            .args([
                OsStr::new("check"),
                OsStr::new("--config"),
                config.as_os_str(),
            ])
            .output(),
    )
    .await
    .expect("gto check hung on a FIFO")
    .unwrap();
    assert_eq!(output.status.code(), Some(64));
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// A pool of `n` endpoints whose checks all go to a port nothing listens on, each its own
/// target (127.3.x.y), so every probe is refused.
fn outage_config(n: usize, port: u16) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_8_a_mass_outage_is_a_few_rebuilds_and_no_false_staleness() {
    let closed = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let n = 1_000;
    let server = crate::support::TestServer::start(&outage_config(n, port), ZONE).await;
    let start = server.app.routing().load().generation;
    let name = hickory_proto::rr::LowerName::from(
        hickory_proto::rr::Name::from_ascii("vpn.gto.example.com.").unwrap(),
    );
    let up = || {
        let snapshot = server.app.routing().load_full();
        let node = snapshot.gslb_node(&name).unwrap();
        node.members
            .iter()
            .filter(|m| m.up && m.key.member != "spare")
            .count()
    };
    assert_eq!(up(), n, "new endpoints are up until probed");
    // First probes within a quarter interval, a recheck a quarter interval after the
    // first failure: all are down well within interval x fall + 1 s = 5 s.
    let began = tokio::time::Instant::now();
    while up() > 0 {
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "{} endpoints still answered after 5 s",
            up()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Flips that arrive together share a rebuild (one each before: n rebuilds, each
    // followed by a state file fsync).
    let rebuilds = server.app.routing().load().generation - start;
    assert!(
        rebuilds < n as u64 / 2,
        "{n} flips took {rebuilds} rebuilds"
    );
    let status = server.app.health().status().await;
    assert!(
        status.iter().all(|s| !s.stale),
        "probes report, nothing is stale"
    );
    // The state file holds the outcome (written coalesced, and at shutdown).
    let path = server.path("gto.state");
    server.app.shutdown().await.unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let down = file["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["health"] == "down")
        .count();
    assert_eq!(down, n);
}

#[tokio::test]
async fn issue_18_9_a_drain_the_state_file_cannot_hold_is_applied_with_a_warning() {
    let config = crate::admin::admin_config().replace(
        "state_file = \"gto.state\"",
        "state_file = \"sub/gto.state\"",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("gto.toml"), config).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let server = crate::support::TestServer::start_in(dir).await;
    let admin = server.admin();
    let path = "/v1/members/sma/fra-1/drain";
    let (code, reply) = http_json(admin, "POST", path, Some(TOKEN), "").await;
    assert_eq!(code, 200);
    assert!(reply.get("warning").is_none(), "{reply}");
    assert!(server.path("sub/gto.state").exists());
    // The disk goes away under gto.
    std::fs::remove_dir_all(server.path("sub")).unwrap();
    let path = "/v1/members/sma/ams-1/drain";
    let (code, reply) = http_json(admin, "POST", path, Some(TOKEN), "").await;
    assert_eq!(code, 200, "{reply}");
    let warning = reply["warning"].as_str().unwrap();
    assert!(warning.contains("not saved to the state file"), "{warning}");
    assert_eq!(reply["endpoint"]["drained"], true);
    let (_, metrics) = crate::support::http(admin, "GET", "/metrics", None, "").await;
    assert!(crate::support::sample(&metrics, "gto_state_write_failures_total", &[]) >= 1.0);
}

#[test]
fn issue_18_15_state_file_paths_that_are_not_regular_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        elsewhere.path().join("x.state"),
        dir.path().join("out.state"),
    )
    .unwrap();
    std::os::unix::fs::symlink("real.state", dir.path().join("in.state")).unwrap();
    let check = |state_file: &str, extra: &str| {
        let text = config("").replace(
            "[server]\n",
            &format!("[server]\nstate_file = \"{state_file}\"\n{extra}"),
        );
        std::fs::write(dir.path().join("gto.toml"), text).unwrap();
        let output = crate::support::gto_bin()
            .arg("check")
            .arg("--config")
            .arg(dir.path().join("gto.toml"))
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = check("/dev/null", "");
    assert_eq!(code, Some(64));
    assert!(
        stderr.contains("/dev/null is a character device"),
        "{stderr}"
    );
    let (code, stderr) = check(".", "");
    assert_eq!(code, Some(64));
    assert!(stderr.contains("is a directory"), "{stderr}");
    let (code, stderr) = check("out.state", "");
    assert_eq!(code, Some(64));
    assert!(
        stderr.contains("symbolic link out of its directory"),
        "{stderr}"
    );
    assert_eq!(
        check("out.state", "state_file_follow_symlinks = true\n").0,
        Some(0)
    );
    assert_eq!(check("in.state", "").0, Some(0));
}

#[test]
fn issue_18_15_the_state_writer_keeps_a_symlink_and_writes_its_target() {
    use gto::health::store::{StateFile, VERSION, save};
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("real.state", dir.path().join("gto.state")).unwrap();
    let file = StateFile {
        version: VERSION,
        written: 1,
        members: Vec::new(),
    };
    save(&dir.path().join("gto.state"), &file, false).unwrap();
    let link = std::fs::symlink_metadata(dir.path().join("gto.state")).unwrap();
    assert!(link.file_type().is_symlink());
    assert!(dir.path().join("real.state").is_file());
    // A device at the path is never replaced.
    assert!(save(std::path::Path::new("/dev/null"), &file, false).is_err());
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_5_idle_tcp_connections_cannot_exhaust_descriptors_or_fail_probes() {
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
    let port = free_port();
    let admin_port = free_port();
    let text = config(&format!(
        "[[pool]]\nname = \"watched\"\ncheck = {{ kind = \"tcp\", port = {appliance_port}, interval = \"500ms\", timeout = \"250ms\" }}\n[[pool.member]]\nname = \"w\"\naddresses = [\"127.0.0.1\"]\n"
    ))
    .replace(
        "[server]\nlisten = [\"127.0.0.1:0\"]",
        &format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\ntcp_idle_timeout = \"60s\""),
    )
    .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{admin_port}\""));
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
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
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

#[tokio::test]
async fn issue_18_6_silent_admin_clients_are_cut_off_and_cannot_block_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let text = config("").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\nheader_timeout = \"1s\"\nmax_connections = 2",
    );
    let server = crate::support::TestServer::start(&text, ZONE).await;
    let admin = server.admin();
    // Two clients take both slots: one silent, one stuck halfway through its headers.
    let mut silent = tokio::net::TcpStream::connect(admin).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(admin).await.unwrap();
    partial
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A third request waits for a slot, which the header timeout frees.
    let (code, _) = tokio::time::timeout(
        Duration::from_secs(5),
        crate::support::http(admin, "GET", "/healthz", None, ""),
    )
    .await
    .expect("a slot never freed up");
    assert_eq!(code, 200);
    let mut buffer = [0u8; 512];
    for stream in [&mut silent, &mut partial] {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "still open: {read:?}"
        );
    }
    // New stuck clients do not hold up shutdown.
    let _silent = tokio::net::TcpStream::connect(admin).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(admin).await.unwrap();
    slow.write_all(b"POST /v1/reload HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(8), server.app.shutdown())
        .await
        .expect("shutdown waited for stuck admin clients")
        .unwrap();
}

/// A server whose one GSLB name's endpoints (`members`, on 127.0.0.x) are all checked
/// against a closed port; returns once every one of them has flipped down.
async fn all_down(members: &[&str], service_extra: &str) -> crate::support::TestServer {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
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

async fn metrics_text(server: &crate::support::TestServer) -> String {
    crate::support::http(server.admin(), "GET", "/metrics", None, "")
        .await
        .1
}

#[tokio::test]
async fn issue_18_17_all_down_selection_is_exported_and_logged() {
    let server = all_down(&["only"], "").await;
    let metrics = metrics_text(&server).await;
    let selection = |name: &str| {
        crate::support::sample(
            &metrics,
            "gto_service_selection",
            &[
                "service=\"vpn.gto.example.com.\"",
                &format!("selection=\"{name}\""),
            ],
        )
    };
    assert_eq!(selection("all_down_fail_open"), 1.0, "{metrics}");
    assert_eq!(selection("normal"), 0.0);
}

#[tokio::test]
async fn issue_18_18_19_20_member_series_follow_the_config_and_counters_start_at_zero() {
    let server = start_admin().await;
    let admin = server.admin();
    let metrics = metrics_text(&server).await;
    for line in [
        "gto_config_reloads_total{result=\"ok\"} 0",
        "gto_config_reloads_total{result=\"error\"} 0",
        "gto_drains_total{action=\"drain\"} 0",
        "gto_health_flips_total{to=\"down\"} 0",
        "gto_dns_truncated_total 0",
        "gto_state_write_failures_total 0",
        "gto_member_up{pool=\"sma\",member=\"nyc-1\"} 1",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    for name in [
        "gto_build_info{",
        "process_start_time_seconds ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
    ] {
        assert!(metrics.contains(name), "no {name} in\n{metrics}");
    }
    // Load from the push API shows as gto_member_load (load from checks takes the same
    // path: the endpoint's last reported load, rendered at scrape).
    let body = r#"{"sessions": 50, "capacity": 100}"#;
    let (code, _) = http_json(
        admin,
        "PUT",
        "/v1/members/sma/ams-1/load",
        Some(TOKEN),
        body,
    )
    .await;
    assert_eq!(code, 200);
    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("gto_member_load{pool=\"sma\",member=\"ams-1\"} 0.5"),
        "{metrics}"
    );
    // A reload removes nyc-1: its series go.
    let without = crate::admin::admin_config().replace(
        "[[pool.member]]\nname = \"nyc-1\"\naddresses = [\"203.0.113.30\"]",
        "",
    );
    std::fs::write(server.path("gto.toml"), without).unwrap();
    server.app.reload().await.unwrap();
    let metrics = metrics_text(&server).await;
    let member_lines = metrics.lines().filter(|l| l.starts_with("gto_member_"));
    assert!(
        member_lines
            .clone()
            .all(|l| !l.contains("member=\"nyc-1\"")),
        "{metrics}"
    );
    assert!(member_lines.clone().any(|l| l.contains("member=\"fra-1\"")));
    assert!(metrics.contains("gto_config_reloads_total{result=\"ok\"} 1"));
}

#[tokio::test]
async fn issue_18_19_load_read_by_checks_is_exported() {
    use crate::support::appliance::{Appliance, Speaks};
    let (appliance, _requests) = Appliance::start("127.0.0.8", Speaks::Http).await;
    *appliance.body.lock().unwrap() = r#"{"sessions": 30, "capacity": 120}"#.into();
    let text = crate::support::PREAMBLE.to_string()
        + &format!(
            r#"
[[service]]
name = "vpn.gto.example.com."
pool = "p"
[[pool]]
name = "p"
check = {{ kind = "http", port = {}, interval = "300ms", timeout = "200ms", load_fields = {{ sessions = "sessions", capacity = "capacity" }} }}
[[pool.member]]
name = "a"
addresses = ["127.0.0.8"]
"#,
            appliance.addr.port()
        );
    let server = crate::support::TestServer::start(&text, ZONE).await;
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = metrics_text(&server).await;
        if metrics.contains("gto_member_load{pool=\"p\",member=\"a\"} 0.25") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("load from the check never exported:\n{metrics}");
}

#[test]
fn issue_18_21_type_errors_come_with_every_other_problem() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        r#"
[[pool]]
name = "typed"
[[pool.member]]
name = "x"
addresses = "192.0.2.1"
[[geo.region]]
name = "eu"
prefer = ["eu", "us-eats"]
"#,
    )
    .replace("answers = 2", "answers = \"two\"")
    .replace("[admin]\n", "[admin]\nbogus = 1\n")
    .replace("[server]\n", "[server]\nudp_payload = 100\n");
    std::fs::write(dir.path().join("gto.toml"), text).unwrap();
    std::fs::write(
        dir.path().join("gto.example.com.zone"),
        format!("{ZONE}bad IN A nope\n"),
    )
    .unwrap();
    let output = crate::support::gto_bin()
        .arg("check")
        .arg("--config")
        .arg(dir.path().join("gto.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    for wanted in [
        "service.0",             // answers = "two": a type error
        "pool.1",                // addresses = "...": another
        "unknown key",           // bogus
        "server.udp_payload",    // a range error
        "gto.example.com.zone:", // a zone error
        "no endpoint is in region \"us-eats\"",
    ] {
        assert!(stderr.contains(wanted), "no {wanted:?} in:\n{stderr}");
    }
}

#[tokio::test]
async fn issue_18_24_status_explain_nsid_and_chaos_identity() {
    use hickory_proto::op::Message;
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption, NSIDPayload};
    use hickory_proto::rr::{DNSClass, RecordType};
    let text = config(
        r#"
[[service]]
name = "other.gto.example.com."
pool = "sma"
"#,
    )
    .replace("[server]\n", "[server]\nidentity = \"ns1-test\"\n");
    let server = crate::support::TestServer::start(&text, ZONE).await;
    // Per-service answer counts: only vpn is asked.
    for _ in 0..3 {
        crate::support::udp(
            server.addr,
            &crate::support::query("vpn.gto.example.com.", RecordType::A, None),
        )
        .await;
    }
    let (_, status) = http_json(server.admin(), "GET", "/v1/status", None, "").await;
    let answered = |service: usize| -> u64 {
        status["services"][service]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["answered"].as_u64().unwrap())
            .sum()
    };
    assert_eq!((answered(0), answered(1)), (6, 0), "{status}");
    assert_eq!(status["instance"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["instance"]["identity"], "ns1-test");
    assert_eq!(
        status["instance"]["config_digest"].as_str().unwrap().len(),
        16
    );
    assert!(
        status["instance"]["started"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    server.app.reload().await.unwrap();
    let (_, status) = http_json(server.admin(), "GET", "/v1/status", None, "").await;
    assert_eq!(
        status["instance"]["last_reload"]["result"], "ok",
        "{status}"
    );

    // NSID (RFC 5001) to a client that asks, on the fast path's port.
    let mut edns = crate::support::edns(1232);
    edns.options_mut()
        .insert(EdnsOption::NSID(NSIDPayload::new(Vec::new()).unwrap()));
    let message = crate::support::query("vpn.gto.example.com.", RecordType::A, Some(edns));
    let (reply, _) = crate::support::udp(server.addr, &message).await;
    let nsid = reply.edns.as_ref().unwrap().options().get(EdnsCode::NSID);
    assert!(
        matches!(nsid, Some(EdnsOption::NSID(p)) if p.as_ref() == b"ns1-test"),
        "{nsid:?}"
    );
    assert_eq!(crate::support::answers(&reply).len(), 2);
    // CH TXT id.server. and version.server., as dig asks.
    let out = crate::support::dig(server.addr, &["+short", "CH", "TXT", "id.server."]).await;
    assert_eq!(out.trim(), "\"ns1-test\"");
    let out = crate::support::dig(server.addr, &["+short", "CH", "TXT", "version.server."]).await;
    assert!(out.contains("gto "), "{out}");
    let mut ch = crate::support::query("id.server.", RecordType::TXT, None);
    ch.queries[0].set_query_class(DNSClass::CH);
    let reply: Message = crate::support::tcp(server.addr, &ch).await;
    assert!(reply.metadata.authoritative);

    // Without an identity, nothing is disclosed.
    let plain = crate::support::TestServer::default().await;
    let out = crate::support::dig(plain.addr, &["CH", "TXT", "id.server."]).await;
    assert!(out.contains("REFUSED"), "{out}");
}

#[tokio::test]
async fn issue_18_24_explain_names_fail_open_endpoints_as_down() {
    let server = all_down(&["a", "b"], "answers = 1").await;
    let (_, explanation) = http_json(
        server.admin(),
        "GET",
        "/v1/explain?name=vpn.gto.example.com&client=192.0.2.1",
        None,
        "",
    )
    .await;
    let reasons: Vec<&str> = explanation["gslb"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .all(|r| r.starts_with("down, served by when_all_down")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn issue_18_25_api_errors_are_json_and_bearer_is_case_insensitive() {
    let server = start_admin().await;
    let admin = server.admin();
    // Wrong method, bad JSON body, bad query: all JSON.
    for (method, path, body) in [
        ("DELETE", "/v1/status", ""),
        ("POST", "/v1/members/sma/fra-1/drain", "{not json"),
        ("GET", "/v1/explain?name=x", ""),
    ] {
        let (code, text) = crate::support::http(admin, method, path, Some(TOKEN), body).await;
        assert!(code >= 400, "{method} {path}: {code}");
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        assert!(json["error"].is_string(), "{json}");
    }
    // A body over the limit: JSON 413.
    let big = format!("{{\"for\": \"{}\"}}", "x".repeat(70_000));
    let (code, text) = crate::support::http(
        admin,
        "POST",
        "/v1/members/sma/fra-1/drain",
        Some(TOKEN),
        &big,
    )
    .await;
    assert_eq!(code, 413);
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_ok(),
        "{text}"
    );
    // "bearer" in any letter case (RFC 7235).
    let stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::post("/v1/members/sma/fra-1/undrain")
        .header("host", "localhost")
        .header("authorization", format!("bEaReR {TOKEN}"))
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[test]
fn issue_18_25_explain_names_a_corrupt_state_file_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    real_config(dir.path(), "state_file = \"gto.state\"");
    std::fs::write(dir.path().join("gto.state"), "{\"version\": 1, \"memb").unwrap();
    let output = crate::support::gto_bin()
        .arg("explain")
        .arg("--config")
        .arg(dir.path().join("gto.toml"))
        .args(["vpn.gto.example.com.", "198.51.100.1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("state file"), "{stderr}");
    assert!(stderr.contains("gto.state is unreadable"), "{stderr}");
    assert!(!stderr.contains("starting without it"), "{stderr}");
}

#[tokio::test]
async fn issue_18_23_logs_have_no_debug_formatting_or_colour_and_say_what_started() {
    let dir = tempfile::tempdir().unwrap();
    let addr = real_config(dir.path(), "");
    let config = dir.path().join("gto.toml");
    let mut gto = RealGto::run(&config);
    let line = gto.wait_for_log("gto starting").await;
    assert!(
        line.contains("version=") && line.contains("gto.toml"),
        "{line}"
    );
    assert!(!line.contains('\u{1b}'), "ANSI colour in a pipe: {line:?}");
    let line = gto.wait_for_log("zone loaded").await;
    assert!(line.contains("serial=2026112501"), "{line}");
    wait_answering(addr, "vpn.gto.example.com.").await;
    gto.signal("HUP");
    let line = gto.wait_for_log("config reloaded").await;
    assert!(line.contains("changes="), "{line}");
    assert!(!line.contains("Some("), "{line}");
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}
