//! Start, reload, shutdown; and the embedded default as a newcomer runs it.

use std::ffi::OsStr;
use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::real::{real_config, real_config_with_token, real_config_without_admin, rss_kib};
use crate::support::{RealGto, TestServer, ZONE, answers, config, query, tcp, udp, wait_answering};

#[tokio::test]
async fn reload_swaps_config_and_a_bad_reload_keeps_the_old_one() {
    let server = TestServer::default().await;
    let generation = server.app.routing().load().generation;
    // Reorder the pool: nyc-1 first.
    let reordered = config("").replace(
        "[[pool.member]]\nname = \"fra-1\"",
        "[[pool.member]]\nname = \"nyc-0\"\naddresses = [\"203.0.113.99\"]\n[[pool.member]]\nname = \"fra-1\"",
    );
    std::fs::write(server.path("gto.toml"), &reordered).unwrap();
    let new_generation = server.app.reload().await.unwrap().generation;
    assert!(new_generation > generation);
    let (reply, _) = udp(
        server.addr,
        &query("vpn.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(answers(&reply), vec!["203.0.113.99", "198.51.100.10"]);

    // A broken config and a broken zone: rejected, the running config keeps serving.
    std::fs::write(
        server.path("gto.toml"),
        reordered.replace("pool = \"sma\"", "pool = \"gone\""),
    )
    .unwrap();
    let errors = server.app.reload().await.unwrap_err();
    assert!(errors.to_string().contains("unknown pool"), "{errors}");
    std::fs::write(server.path("gto.toml"), &reordered).unwrap();
    std::fs::write(
        server.path("gto.example.com.zone"),
        format!("{ZONE}oops IN A nope\n"),
    )
    .unwrap();
    assert!(server.app.reload().await.is_err());
    assert_eq!(server.app.routing().load().generation, new_generation);
    let reply = tcp(
        server.addr,
        &query("vpn.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(answers(&reply), vec!["203.0.113.99", "198.51.100.10"]);

    // Zone files reload too.
    std::fs::write(
        server.path("gto.example.com.zone"),
        format!("{ZONE}new IN A 192.0.2.77\n"),
    )
    .unwrap();
    server.app.reload().await.unwrap();
    let (reply, _) = udp(
        server.addr,
        &query("new.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(answers(&reply), vec!["192.0.2.77"]);
}

#[tokio::test]
async fn shutdown_completes_and_frees_the_port() {
    let server = TestServer::default().await;
    let addr = server.addr;
    let (reply, _) = udp(addr, &query("vpn.gto.example.com.", RecordType::A, None)).await;
    assert_eq!(answers(&reply).len(), 2);
    tokio::time::timeout(Duration::from_secs(10), server.app.shutdown())
        .await
        .expect("shutdown overran")
        .unwrap();
    std::net::UdpSocket::bind(addr).expect("UDP port free again");
    std::net::TcpListener::bind(addr).expect("TCP port free again");
}

/// The README's first command: `gto` with no arguments serves the embedded default on
/// 127.0.0.1:5353 (UDP and TCP, as `dig` asks), and SIGTERM stops it with exit 0. Run in a
/// network namespace of its own (`unshare -rn`: a private loopback), so the fixed port can
/// clash with nothing on the machine (an mDNS responder holds 5353 on many hosts).
#[tokio::test]
async fn embedded_default_serves_on_5353_and_stops_on_sigterm() {
    let script = r#"
        ip link set lo up || exit 90
        "$0" & pid=$!
        # Until the listener is up: bounded, dig returns at once while the port is closed.
        for _ in $(seq 200); do
            udp=$(dig +short +tries=1 +time=1 @127.0.0.1 -p 5353 vpn.gto.example.com A) && [ -n "$udp" ] && break
            kill -0 $pid 2>/dev/null || { echo "gto exited early"; exit 91; }
            sleep 0.05
        done
        echo "udp: $(echo $udp)"
        echo "aa: $(dig +norec +tries=1 @127.0.0.1 -p 5353 vpn.gto.example.com A | grep -c ' aa')"
        echo "tcp: $(dig +tcp +short @127.0.0.1 -p 5353 www.gto.example.com A)"
        kill -TERM $pid
        wait $pid
        echo "exit: $?"
    "#;
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("unshare")
            .args(["--user", "--map-root-user", "--net", "sh", "-c", script])
            .arg(env!("CARGO_BIN_EXE_gto"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the namespaced run finished within 60 s")
    .expect("unshare runs (util-linux, user namespaces enabled)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("udp: 198.51.100.10 198.51.100.20"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("aa: 1"), "authoritative: {stdout}");
    assert!(stdout.contains("tcp: 192.0.2.80"), "{stdout}\n{stderr}");
    assert!(stdout.contains("exit: 0"), "{stdout}\n{stderr}");
}

#[tokio::test]
async fn a_zone_caught_half_written_is_refused_until_its_serial_rises() {
    let mut zone = ZONE.to_string();
    for i in 0..40 {
        zone.push_str(&format!("h{i} IN A 192.0.2.{}\n", i + 1));
    }
    let server = TestServer::start(&config(""), &zone).await;
    // Half the file, as a reader sees it while an editor rewrites it in place.
    let cut = zone.find("h10 IN").unwrap();
    std::fs::write(server.path("gto.example.com.zone"), &zone[..cut]).unwrap();
    let errors = server.app.reload().await.unwrap_err().to_string();
    assert!(errors.contains("would shrink from"), "{errors}");
    assert!(errors.contains("atomically"), "{errors}");
    let reply = tcp(
        server.addr,
        &query("h30.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(
        answers(&reply),
        vec!["192.0.2.31"],
        "the old zone keeps serving"
    );
    // Meant: the serial went up.
    let smaller = zone[..cut].replace("2026112501", "2026112502");
    std::fs::write(server.path("gto.example.com.zone"), smaller).unwrap();
    let reloaded = server.app.reload().await.unwrap();
    assert!(
        reloaded
            .changes
            .iter()
            .any(|c| c.contains("serial 2026112501 -> 2026112502")),
        "{reloaded:?}"
    );
    let reply = tcp(
        server.addr,
        &query("h30.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert!(answers(&reply).is_empty());
}

#[tokio::test]
async fn settings_a_reload_cannot_apply_are_named() {
    let server = TestServer::default().await;
    let text = config("").replace(
        "[server]\nlisten = [\"127.0.0.1:0\"]",
        "[server]\nlisten = [\"127.0.0.1:0\", \"127.0.0.2:0\"]\ntcp_max_queries = 5\nstate_file = \"other.state\"",
    );
    std::fs::write(server.path("gto.toml"), text).unwrap();
    let reloaded = server.app.reload().await.unwrap();
    assert_eq!(
        reloaded.needs_restart,
        vec![
            "server.listen",
            "server.tcp_max_queries",
            "server.state_file"
        ]
    );
}

#[tokio::test]
async fn workers_0_answers_udp_on_the_general_path_and_stops() {
    let text = config("").replace(
        "[server]\nlisten = [\"127.0.0.1:0\"]",
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 0",
    );
    let server = TestServer::start(&text, ZONE).await;
    let addr = server.addr;
    let (reply, _) = udp(addr, &query("vpn.gto.example.com.", RecordType::A, None)).await;
    assert!(reply.metadata.authoritative);
    assert_eq!(answers(&reply), vec!["198.51.100.10", "198.51.100.20"]);
    let (reply, _) = udp(addr, &query("nope.gto.example.com.", RecordType::A, None)).await;
    assert_eq!(
        reply.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );
    tokio::time::timeout(Duration::from_secs(10), server.app.shutdown())
        .await
        .expect("shutdown overran")
        .unwrap();
    std::net::UdpSocket::bind(addr).expect("UDP port free again");
}

#[tokio::test]
async fn sighup_and_sigterm_during_startup_do_not_kill_gto() {
    // A zone big enough that loading it takes a while.
    let mut zone = ZONE.to_string();
    for i in 0..60_000 {
        zone.push_str(&format!("h{i} IN A 192.0.2.{}\n", i % 250 + 1));
    }
    for signal in ["HUP", "TERM"] {
        let dir = tempfile::tempdir().unwrap();
        real_config_without_admin(dir.path(), "");
        std::fs::write(dir.path().join("gto.example.com.zone"), &zone).unwrap();
        let config = dir.path().join("gto.toml");
        let mut gto = RealGto::run(&config);
        gto.wait_for_log("loading the config").await;
        gto.signal(signal);
        if signal == "HUP" {
            // The reload is queued and runs once gto serves.
            gto.wait_for_log("SIGHUP arrived during start-up").await;
            gto.wait_for_log("config reloaded").await;
            let addr = gto.dns_addr().await;
            let reply = wait_answering(addr, "h59999.gto.example.com.").await;
            assert_eq!(crate::support::answers(&reply).len(), 1);
            gto.signal("TERM");
        }
        let status = gto.exit().await;
        assert_eq!(status.code(), Some(0), "after SIG{signal}: {status:?}");
    }
}

/// SIGTERM while the first snapshot is prepared (a signed zone just below the size
/// signed on first use is signed whole before the first answer: 38,000 signatures, over
/// a second in a debug build) stops gto at once with exit 0, before it serves, rather
/// than once the signing is done.
#[tokio::test]
async fn sigterm_while_a_signed_zone_is_first_signed_stops_gto_before_it_serves() {
    let mut zone = ZONE.to_string();
    for i in 0..19_000 {
        zone.push_str(&format!("h{i} IN A 192.0.2.{}\n", i % 250 + 1));
    }
    assert!(19_000 + ZONE.lines().count() < gto::routing::signing::SIGN_ON_FIRST_USE_FROM);
    let dir = tempfile::tempdir().unwrap();
    real_config(dir.path(), &zone, |text| crate::dnssec::signed(&text));
    crate::dnssec::keygen(dir.path(), "keys", &[]);
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    // Loaded: what follows is the first snapshot, 38,000 signatures and more.
    gto.wait_for_log("zone loaded").await;
    gto.signal("TERM");
    let log = gto.log_to_end().await;
    let status = gto.exit().await;
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("stopped while starting"), "{log}");
    assert!(
        !log.contains("zone signed")
            && !log.contains("zone served signed")
            && !log.contains("serving DNS"),
        "{log}"
    );
}

#[tokio::test]
async fn a_fifo_config_path_neither_hangs_check_nor_reload_and_sigterm_wins() {
    let dir = tempfile::tempdir().unwrap();
    real_config_without_admin(dir.path(), "");
    let config = dir.path().join("gto.toml");
    let mut gto = RealGto::run(&config);
    let addr = gto.dns_addr().await;
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

#[tokio::test]
async fn logs_have_no_debug_formatting_or_colour_and_say_what_started() {
    let dir = tempfile::tempdir().unwrap();
    real_config_without_admin(dir.path(), "");
    let config = dir.path().join("gto.toml");
    let mut gto = RealGto::run(&config);
    let addr = gto.dns_addr().await;
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

/// Item 10: the reload reply names a restart-only setting while it differs from what
/// runs, and no longer once it is changed back.
#[tokio::test]
async fn needs_restart_is_measured_against_what_runs() {
    let dir = tempfile::tempdir().unwrap();
    real_config_with_token(dir.path(), ZONE, |text| text);
    let config = dir.path().join("gto.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let mut gto = RealGto::run(&config);
    let addr = gto.dns_addr().await;
    let admin = gto.admin_addr().await;
    wait_answering(addr, "vpn.gto.example.com.").await;
    let reload = || async {
        let (code, body) =
            crate::support::http_json(admin, "POST", "/v1/reload", Some(crate::admin::TOKEN), "")
                .await;
        assert_eq!(code, 200, "{body}");
        body["needs_restart"].clone()
    };
    std::fs::write(
        &config,
        original.replace("[server]\n", "[server]\nudp_payload = 1400\n"),
    )
    .unwrap();
    assert_eq!(reload().await, serde_json::json!(["server.udp_payload"]));
    std::fs::write(&config, &original).unwrap();
    assert_eq!(reload().await, serde_json::json!([]));
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// Item 2 (memory): reloads of a big zone do not grow resident memory: after 5 reloads
/// it is within 1.3x of what it was after the first (before: each reload kept about a
/// zone's worth more, in the allocator's per-thread arenas).
#[tokio::test]
async fn reloads_of_a_big_zone_do_not_grow_memory() {
    let dir = tempfile::tempdir().unwrap();
    let zone = format!(
        "{ZONE}{}",
        (0..20_000)
            .map(|i| format!("h{i} IN A 10.{}.{}.{}\n", i >> 16, (i >> 8) & 255, i & 255))
            .collect::<String>()
    );
    real_config(dir.path(), &zone, |t| t);
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let addr = gto.dns_addr().await;
    gto.wait_for_log("serving DNS").await;
    wait_answering(addr, "vpn.gto.example.com.").await;
    let pid = gto.child.id().unwrap();
    let mut after = Vec::new();
    for _ in 0..5 {
        gto.signal("HUP");
        gto.wait_for_log("config reloaded").await;
        after.push(rss_kib(pid));
    }
    let (first, last) = (after[0], after[4]);
    assert!(
        last * 10 <= first * 13,
        "RSS after each reload (KiB): {after:?}"
    );
    // Over 20,000 names the fast path's index is built after the snapshot is published
    // (the general path answers until then), by several threads: names from every share
    // answer, with their own data (the fast path's, and over TCP the general path's).
    gto.wait_for_log("fast path index ready").await;
    for (i, want) in [
        (0, "10.0.0.0"),
        (9_999, "10.0.39.15"),
        (19_999, "10.0.78.31"),
    ] {
        let name = format!("h{i}.gto.example.com.");
        let (reply, _) = udp(addr, &query(&name, RecordType::A, None)).await;
        assert_eq!(answers(&reply), vec![want], "{name}");
        let over_tcp = tcp(addr, &query(&name, RecordType::A, None)).await;
        assert_eq!(answers(&over_tcp), vec![want], "{name} over TCP");
    }
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// `gto reload` (the packaged unit's ExecReload) waits for the outcome: a broken config
/// exits 64 with the located problems and the old config keeps serving; a good one exits
/// 0 and names the change; without `--pid` and without a token it says why it cannot.
#[tokio::test]
async fn gto_reload_reports_a_refused_config_with_its_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", crate::support::free_port());
    crate::real::real_config(dir.path(), ZONE, |text| {
        text.replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"{admin}\""),
        )
    });
    let config = dir.path().join("gto.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    let mut gto = RealGto::run(&config);
    let dns = gto.dns_addr().await;
    gto.admin_addr().await;
    let reload = |pid: Option<u32>| {
        let mut command = crate::support::gto_bin();
        command.args([
            std::ffi::OsStr::new("reload"),
            "--config".as_ref(),
            config.as_os_str(),
        ]);
        if let Some(pid) = pid {
            command.args(["--pid", &pid.to_string()]);
        }
        command.output().unwrap()
    };
    let broken = good.replace(
        "addresses = [\"203.0.113.30\"]",
        "addresses = [\"203.0.113.300\"]",
    );
    assert_ne!(broken, good);
    std::fs::write(&config, &broken).unwrap();
    let output = reload(Some(gto.pid()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("pool.sma.member[2].addresses[0]: \"203.0.113.300\" is not an IP address"),
        "{stderr}"
    );
    assert!(stderr.contains("gto.toml:"), "located: {stderr}");
    assert!(
        stderr.contains("the running config keeps serving"),
        "{stderr}"
    );
    let reply = udp(dns, &query("vpn.gto.example.com.", RecordType::A, None))
        .await
        .0;
    assert!(!answers(&reply).is_empty(), "still serving");

    std::fs::write(&config, good.replace("203.0.113.30", "203.0.113.31")).unwrap();
    let output = reload(Some(gto.pid()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("reloaded"), "{stdout}");

    let output = reload(None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("--pid"), "{stderr}");

    // With a token in the config, no PID is needed: it asks POST /v1/reload.
    std::fs::write(
        dir.path().join("admin.token"),
        format!("{}\n", crate::admin::TOKEN),
    )
    .unwrap();
    let with_token = good.replace(
        "[admin]\nlisten",
        "[admin]\ntoken_file = \"admin.token\"\nlisten",
    );
    std::fs::write(&config, &with_token).unwrap();
    assert_eq!(reload(Some(gto.pid())).status.code(), Some(0));
    std::fs::write(&config, with_token.replace("203.0.113.30", "203.0.113.300")).unwrap();
    let output = reload(None);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("is not an IP address"), "{stderr}");
    std::fs::write(&config, &with_token).unwrap();
    let output = reload(None);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// `gto --version` names the release, the commit and the build date.
#[test]
fn version_names_the_commit_and_the_build_date() {
    let output = crate::support::gto_bin().arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    let rest = text
        .trim()
        .strip_prefix(&format!("gto {} (commit ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{text}"));
    let (commit, built) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", built "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{text}"
    );
    let date: Vec<&str> = built.split('-').collect();
    assert!(
        date.len() == 3 && date[0].len() == 4 && date.iter().all(|p| p.parse::<u32>().is_ok()),
        "{text}"
    );
}

/// The embedded default takes `--listen` (repeatable) and `--admin`, checked as a file's
/// addresses are; `gto config example` prints it.
#[tokio::test]
async fn the_embedded_default_listens_where_asked_and_prints_itself() {
    let mut gto = RealGto::spawn(&[
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--admin"),
        OsStr::new("127.0.0.1:0"),
    ]);
    let dns = gto.dns_addr().await;
    let admin = gto.admin_addr().await;
    assert_ne!(dns.port(), 5353);
    let reply = wait_answering(dns, "vpn.gto.example.com.").await;
    assert_eq!(answers(&reply), vec!["198.51.100.10", "198.51.100.20"]);
    let (code, _) = crate::support::http(admin, "GET", "/healthz", None, "").await;
    assert_eq!(code, 200);
    gto.signal("TERM");
    assert!(gto.exit().await.success());

    let output = crate::support::gto_bin()
        .args(["run", "--listen", "not-an-address"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("server.listen[0]"), "{stderr}");
    let output = crate::support::gto_bin()
        .args(["run", "--config", "x.toml", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "--config and --listen conflict"
    );

    let output = crate::support::gto_bin()
        .args(["config", "example"])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        std::fs::read_to_string(crate::support::repo().join("examples/gto.toml")).unwrap()
    );
}

/// Sends UDP queries one after the other (each waited for at most 1 s) until `stop` is
/// set (and at most 200,000 or 60 s); returns how many were sent and how many got no
/// answer.
async fn unanswered(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, usize) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let started = tokio::time::Instant::now();
    let (mut sent, mut lost) = (0, 0);
    let mut buf = vec![0u8; 4096];
    while !stop.load(std::sync::atomic::Ordering::Relaxed)
        && sent < 200_000
        && started.elapsed() < Duration::from_secs(60)
    {
        let mut message = query("vpn.gto.example.com.", RecordType::A, None);
        let id = u16::try_from(sent % 65_536).unwrap();
        message.metadata.id = id;
        socket
            .send_to(&message.to_vec().unwrap(), addr)
            .await
            .unwrap();
        sent += 1;
        let answered = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let (len, _) = socket.recv_from(&mut buf).await.unwrap();
                if len >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                    return;
                }
            }
        })
        .await;
        if answered.is_err() {
            lost += 1;
        }
    }
    (sent, lost)
}

/// The pid in the log line "replacement started" (the new gto, a child of the old one).
fn started_pid(line: &str) -> i32 {
    let start = line.find("pid=").expect("pid= in the line") + 4;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Issue 35: `gto replace` hands the sockets to a new process without losing a query.
/// While a client sends UDP queries back to back, and with TCP queries pipelined on an
/// open connection, the running gto is replaced: every UDP query is answered, the TCP
/// ones too, the old process exits 0, and the new one answers on the same port.
#[tokio::test]
async fn a_replacement_takes_over_the_sockets_without_losing_a_query() {
    let dir = tempfile::tempdir().unwrap();
    real_config(dir.path(), ZONE, |text| text);
    let mut old = RealGto::run(&dir.path().join("gto.toml"));
    let dns = old.dns_addr().await;
    wait_answering(dns, "vpn.gto.example.com.").await;

    // TCP queries in flight across the handover: three sent before it starts.
    let mut stream = tokio::net::TcpStream::connect(dns).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut pipelined = Vec::new();
    for id in 1..=3u16 {
        let mut message = query("vpn.gto.example.com.", RecordType::A, None);
        message.metadata.id = id;
        let bytes = message.to_vec().unwrap();
        pipelined.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
        pipelined.extend_from_slice(&bytes);
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = tokio::spawn(unanswered(dns, stop.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(&pipelined).await.unwrap();
    let replace = tokio::process::Command::new(env!("CARGO_BIN_EXE_gto"))
        .args(["replace", "--config"])
        .arg(dir.path().join("gto.toml"))
        .arg("--pid")
        .arg(old.pid().to_string())
        .output();
    let replaced = tokio::time::timeout(Duration::from_secs(60), replace)
        .await
        .expect("gto replace within 60 s")
        .unwrap();
    assert!(
        replaced.status.success(),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    let new_pid = started_pid(&old.wait_for_log("replacement started").await);
    assert!(old.exit().await.success(), "the old process exits 0");
    for id in 1..=3u16 {
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).await.unwrap();
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut reply).await.unwrap();
        assert_eq!(u16::from_be_bytes([reply[0], reply[1]]), id, "in order");
    }
    // Queries go on against the new process for a while, then the client stops.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, lost) = client.await.unwrap();
    assert_eq!(lost, 0, "UDP queries lost across the handover, of {sent}");
    assert!(
        sent > 100,
        "the client ran across the handover: {sent} queries"
    );
    // The new process serves the same port, on UDP and TCP.
    let (reply, _) = udp(dns, &query("vpn.gto.example.com.", RecordType::A, None)).await;
    assert!(!answers(&reply).is_empty());
    let over_tcp = tcp(dns, &query("vpn.gto.example.com.", RecordType::A, None)).await;
    assert_eq!(answers(&over_tcp), answers(&reply));
    // Ended by its PID (a child of the process this test started).
    let status = std::process::Command::new("kill")
        .args(["-TERM", &new_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    old.wait_for_log("shutting down").await;
}

/// A replacement that cannot start (the config became invalid) exits before it reads a
/// socket: `gto replace` exits 1 naming why, and the running gto goes on answering.
#[tokio::test]
async fn a_replacement_that_cannot_start_leaves_the_running_gto_serving() {
    let dir = tempfile::tempdir().unwrap();
    let admin_port = crate::support::free_port();
    real_config(dir.path(), ZONE, |text| {
        text.replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\""),
        )
    });
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let dns = gto.dns_addr().await;
    gto.admin_addr().await;
    wait_answering(dns, "vpn.gto.example.com.").await;
    let good = std::fs::read_to_string(dir.path().join("gto.toml")).unwrap();
    std::fs::write(dir.path().join("gto.toml"), format!("{good}\nbogus = 1\n")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = tokio::spawn(unanswered(dns, stop.clone()));
    let replaced = tokio::process::Command::new(env!("CARGO_BIN_EXE_gto"))
        .args(["replace", "--config"])
        .arg(dir.path().join("gto.toml"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&replaced.stderr);
    assert_eq!(replaced.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exit status: 64"), "{stderr}");
    gto.wait_for_log("unknown key").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, lost) = client.await.unwrap();
    assert_eq!(lost, 0, "queries lost to a failed replacement, of {sent}");
    let (reply, _) = udp(dns, &query("vpn.gto.example.com.", RecordType::A, None)).await;
    assert!(!answers(&reply).is_empty());
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// The listeners are bound before the zones load (`bind_ahead`, as `gto run` does first):
/// a query sent before the server starts waits in its socket and is answered once the
/// server serves, over UDP and TCP, instead of finding no socket (a restart's silence). A
/// config that does not parse binds nothing ahead, and neither does a port already taken.
#[tokio::test]
async fn queries_sent_before_the_server_starts_are_answered_once_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    real_config(dir.path(), ZONE, |text| {
        text.replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"127.0.0.1:{port}\"]"),
        )
    });
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let source = gto::ConfigSource::File(dir.path().join("gto.toml"));

    // Not parsed: nothing bound, the port stays free.
    std::fs::write(dir.path().join("broken.toml"), "[server]\nlisten = 5\n").unwrap();
    let broken = gto::ConfigSource::File(dir.path().join("broken.toml"));
    let mut none = gto::handover::Inherited::default();
    let hold = Duration::from_secs(60);
    assert!(gto::dns::server::bind_ahead(&broken, &mut none, hold).is_none());
    assert!(!none.has_dns());

    let mut inherited = gto::handover::Inherited::default();
    let ahead = gto::dns::server::bind_ahead(&source, &mut inherited, hold).expect("bound ahead");
    assert_eq!(ahead.listen, vec![addr]);
    // Taken now: a second bind ahead on the same port binds nothing.
    let mut second = gto::handover::Inherited::default();
    assert!(gto::dns::server::bind_ahead(&source, &mut second, hold).is_none());
    assert!(!second.has_dns());

    // Sent while nothing serves: a UDP query, and a TCP connection with a query on it.
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let asked = query("vpn.gto.example.com.", RecordType::A, None)
        .to_vec()
        .unwrap();
    client.send_to(&asked, addr).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let asked_tcp = query("www.gto.example.com.", RecordType::A, None)
        .to_vec()
        .unwrap();
    crate::support::tcp_send(&mut stream, &asked_tcp).await;

    let loaded = source.load().unwrap();
    let app = gto::App::start_with(source.clone(), loaded, inherited)
        .await
        .unwrap();
    assert_eq!(app.dns_addrs(), &[addr]);
    let mut reply = vec![0u8; 1500];
    let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut reply))
        .await
        .expect("the query sent before the start is answered")
        .unwrap();
    let reply = hickory_proto::op::Message::from_vec(&reply[..n]).unwrap();
    assert_eq!(answers(&reply).len(), 2);
    let reply = crate::support::tcp_receive(&mut stream).await;
    let reply = hickory_proto::op::Message::from_vec(&reply).unwrap();
    assert!(!answers(&reply).is_empty(), "{reply:?}");
    app.shutdown().await.unwrap();

    // A start slower than the hold: the sockets are closed when it ends (clients are
    // refused rather than kept waiting), and the start binds again.
    let mut slow = gto::handover::Inherited::default();
    let short = Duration::from_millis(50);
    gto::dns::server::bind_ahead(&source, &mut slow, short).expect("bound ahead again");
    assert!(std::net::TcpListener::bind(addr).is_err(), "held");
    let mut released = false;
    for _ in 0..250 {
        if !slow.has_dns() {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(released, "released after the hold");
    drop(std::net::TcpListener::bind(addr).expect("the port is free once released"));
    let loaded = source.load().unwrap();
    let app = gto::App::start_with(source, loaded, slow).await.unwrap();
    let (reply, _) = udp(addr, &query("vpn.gto.example.com.", RecordType::A, None)).await;
    assert_eq!(answers(&reply).len(), 2);
    app.shutdown().await.unwrap();
}

/// `gto reload --pid` with the admin API off has no outcome to watch: it checks the
/// config itself first, so a broken one exits 64 with its located problems and no signal
/// (the running config keeps serving), and a good one is signalled (exit 0) and applied.
#[tokio::test]
async fn gto_reload_without_the_admin_api_refuses_a_broken_config_before_signalling() {
    let dir = tempfile::tempdir().unwrap();
    real_config_without_admin(dir.path(), "");
    let config = dir.path().join("gto.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    let mut gto = RealGto::run(&config);
    let dns = gto.dns_addr().await;
    wait_answering(dns, "vpn.gto.example.com.").await;
    let reload = || {
        crate::support::gto_bin()
            .args([
                OsStr::new("reload"),
                "--config".as_ref(),
                config.as_os_str(),
            ])
            .args(["--pid", &gto.pid().to_string()])
            .output()
            .unwrap()
    };
    std::fs::write(&config, good.replace("203.0.113.30", "203.0.113.300")).unwrap();
    let output = reload();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("is not an IP address") && stderr.contains("gto.toml:"),
        "{stderr}"
    );
    assert!(stderr.contains("no signal sent"), "{stderr}");
    std::fs::write(&config, good.replace("203.0.113.30", "203.0.113.31")).unwrap();
    let output = reload();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = gto.wait_for_log("config reloaded").await;
    assert!(line.contains("pool sma"), "{line}");
    let reply = udp(dns, &query("vpn.gto.example.com.", RecordType::A, None))
        .await
        .0;
    assert!(!answers(&reply).is_empty(), "still serving");
    gto.signal("TERM");
    // The broken config never reached the server.
    let log = gto.log_to_end().await;
    assert!(!log.contains("reload rejected"), "{log}");
    assert!(gto.exit().await.success());
}

/// A second gto started on the port a running one serves fails on its TCP listener
/// before its UDP sockets exist, so it never joins the running gto's reuse-port group
/// and takes none of its queries: twenty such attempts while four clients ask back to
/// back lose none, and each says which listener it could not bind.
#[tokio::test]
async fn a_second_gto_on_a_taken_port_takes_no_query_from_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    real_config(dir.path(), ZONE, |text| {
        text.replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"127.0.0.1:{port}\"]"),
        )
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nenabled = false",
        )
    });
    let mut first = RealGto::run(&dir.path().join("gto.toml"));
    let dns = first.dns_addr().await;
    wait_answering(dns, "vpn.gto.example.com.").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four clients at once, so queries are always in flight while a second gto tries.
    let clients: Vec<_> = (0..4)
        .map(|_| tokio::spawn(unanswered(dns, stop.clone())))
        .collect();
    for _ in 0..20 {
        let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_gto"))
            .args(["run", "--config"])
            .arg(dir.path().join("gto.toml"))
            .output();
        let second = tokio::time::timeout(Duration::from_secs(20), second)
            .await
            .expect("the second gto exits")
            .unwrap();
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert_eq!(second.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("(tcp)"), "{stderr}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut sent, mut lost) = (0, 0);
    for client in clients {
        let (s, l) = client.await.unwrap();
        (sent, lost) = (sent + s, lost + l);
    }
    assert_eq!(
        lost, 0,
        "queries taken by a gto that could not start, of {sent}"
    );
    first.signal("TERM");
    assert!(first.exit().await.success());
}
