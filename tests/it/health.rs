//! Health checks end to end: real appliances on 127.0.0.x, real probes, real DNS answers.

use std::ffi::OsStr;
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gto::config::{HttpProbe, Probe, TlsSettings};
use gto::health::Flip;
use gto::health::probe::{ProbeError, Prober};
use gto::health::state::Health;
use gto::{App, ConfigSource};
use hickory_proto::rr::RecordType;
use tokio::sync::broadcast;

use crate::real::{outage_config, real_config_without_admin};
use crate::support::appliance::{Appliance, Speaks, certificate, set_delay};
use crate::support::{
    PREAMBLE, RealGto, TestServer, ZONE, answers, config, query, tcp, udp, wait_answering,
};

const INTERVAL: Duration = Duration::from_millis(300);
const FALL: u32 = 2;
const RISE: u32 = 2;

/// Three endpoints on 127.0.0.2..4, checked by `check` (a TOML inline table without port;
/// each member sets its own port).
pub(crate) fn health_config(ports: [u16; 3], check: &str, state_file: bool) -> String {
    let preamble = if state_file {
        PREAMBLE.replace(
            "listen = [\"127.0.0.1:0\"]",
            "listen = [\"127.0.0.1:0\"]\nstate_file = \"gto.state\"",
        )
    } else {
        PREAMBLE.to_string()
    };
    format!(
        r#"{preamble}
[[service]]
name = "vpn.gto.example.com."
pool = "sma"
answers = 2
ttl = 5

[[pool]]
name = "sma"
check = {check}
[[pool.member]]
name = "fra-1"
addresses = ["127.0.0.2"]
check = {{ port = {} }}
[[pool.member]]
name = "ams-1"
addresses = ["127.0.0.3"]
check = {{ port = {} }}
[[pool.member]]
name = "nyc-1"
addresses = ["127.0.0.4"]
check = {{ port = {} }}
"#,
        ports[0], ports[1], ports[2]
    )
}

const TCP_CHECK: &str =
    r#"{ kind = "tcp", interval = "300ms", timeout = "200ms", rise = 2, fall = 2 }"#;

pub(crate) async fn appliances(
    speaks: Speaks,
) -> Vec<(Appliance, tokio::sync::mpsc::UnboundedReceiver<u16>)> {
    let mut all = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        all.push(Appliance::start(ip, speaks.clone()).await);
    }
    all
}

pub(crate) fn ports(all: &[(Appliance, tokio::sync::mpsc::UnboundedReceiver<u16>)]) -> [u16; 3] {
    [
        all[0].0.addr.port(),
        all[1].0.addr.port(),
        all[2].0.addr.port(),
    ]
}

async fn next_flip(flips: &mut broadcast::Receiver<Flip>, within: Duration) -> Flip {
    tokio::time::timeout(within, flips.recv())
        .await
        .unwrap_or_else(|_| panic!("no flip within {within:?}"))
        .unwrap()
}

async fn a_records(server: &TestServer) -> Vec<String> {
    // UDP and TCP answer from the same snapshot; a flip may publish a new one between the
    // two queries, so they are asked again then (a few times at most).
    let mut seen = Vec::new();
    for _ in 0..5 {
        let (reply, _) = udp(
            server.addr,
            &query("vpn.gto.example.com.", RecordType::A, None),
        )
        .await;
        let over_tcp = tcp(
            server.addr,
            &query("vpn.gto.example.com.", RecordType::A, None),
        )
        .await;
        if answers(&reply) == answers(&over_tcp) {
            return answers(&reply);
        }
        seen.push((answers(&reply), answers(&over_tcp)));
    }
    panic!("UDP and TCP kept answering differently: {seen:?}");
}

#[tokio::test]
async fn a_failed_endpoint_leaves_the_answers_within_interval_times_fall_and_comes_back() {
    let mut all = appliances(Speaks::Tcp).await;
    let server = TestServer::start(&health_config(ports(&all), TCP_CHECK, false), ZONE).await;
    let mut flips = server.app.health().subscribe();
    assert_eq!(a_records(&server).await, vec!["127.0.0.2", "127.0.0.3"]);

    all[0].0.stop().await;
    let deadline = INTERVAL * FALL + Duration::from_secs(1);
    let flip = next_flip(&mut flips, deadline).await;
    assert_eq!(
        (flip.key.member.as_str(), flip.from, flip.to),
        ("fra-1", Health::Up, Health::Down)
    );
    assert!(flip.reason.contains("refused"), "{}", flip.reason);
    // The snapshot is live when the flip is announced: fresh answers exclude fra-1.
    assert_eq!(a_records(&server).await, vec!["127.0.0.3", "127.0.0.4"]);
    let status = server.app.health().status().await;
    assert_eq!(status[0].health, Health::Down);
    assert!(
        status[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("refused")
    );

    all[0].0.resume();
    // rise successes, each an interval (+10 % jitter) apart, after the next probe.
    let back = INTERVAL.mul_f64(1.1) * (RISE + 1) + Duration::from_secs(1);
    let flip = next_flip(&mut flips, back).await;
    assert_eq!((flip.key.member.as_str(), flip.to), ("fra-1", Health::Up));
    assert_eq!(a_records(&server).await, vec!["127.0.0.2", "127.0.0.3"]);
    assert!(flips.try_recv().is_err(), "no other endpoint flipped");
}

#[tokio::test]
async fn one_lost_probe_never_removes_an_endpoint() {
    let mut all = appliances(Speaks::Http).await;
    let check = r#"{ kind = "http", path = "/status", expect = [200], body = "OK", interval = "300ms", timeout = "200ms", rise = 2, fall = 2 }"#;
    let server = TestServer::start(&health_config(ports(&all), check, false), ZONE).await;
    let mut flips = server.app.health().subscribe();
    let requests = &mut all[0].1;
    // Steady state first, then exactly one failed probe, then several good ones.
    assert_eq!(requests.recv().await, Some(200));
    all[0]
        .0
        .fail_next
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let requests = &mut all[0].1;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.push(requests.recv().await.unwrap());
    }
    assert_eq!(seen.iter().filter(|s| **s == 500).count(), 1, "{seen:?}");
    assert!(
        flips.try_recv().is_err(),
        "a single lost probe flipped something"
    );
    assert_eq!(a_records(&server).await, vec!["127.0.0.2", "127.0.0.3"]);
    let status = server.app.health().status().await;
    assert!(
        status
            .iter()
            .all(|s| s.health == Health::Up && !s.stale && s.probe == "http")
    );

    // A real outage (status 503 from now on) does remove it.
    all[0]
        .0
        .status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    let flip = next_flip(&mut flips, INTERVAL * FALL + Duration::from_secs(1)).await;
    assert_eq!((flip.key.member.as_str(), flip.to), ("fra-1", Health::Down));
    assert!(flip.reason.contains("503"), "{}", flip.reason);
    assert_eq!(a_records(&server).await, vec!["127.0.0.3", "127.0.0.4"]);
}

#[tokio::test]
async fn a_restart_keeps_a_down_endpoint_out_of_the_first_answers() {
    // HTTP, so that a probe's answer can be held back: what the restarted instance shows
    // before its first probe of ams-1 has an answer is then not a race with that probe.
    let mut all = appliances(Speaks::Http).await;
    let check = r#"{ kind = "http", path = "/status", expect = [200], interval = "1s", timeout = "900ms", rise = 2, fall = 2 }"#;
    let interval = Duration::from_secs(1);
    let server = TestServer::start(&health_config(ports(&all), check, true), ZONE).await;
    let mut flips = server.app.health().subscribe();
    all[1].0.status.store(503, Ordering::SeqCst);
    let flip = next_flip(&mut flips, interval * FALL + Duration::from_secs(1)).await;
    assert_eq!((flip.key.member.as_str(), flip.to), ("ams-1", Health::Down));
    let TestServer { app, dir, .. } = server;
    app.shutdown().await.unwrap();

    // Start again from the same files: the first answers already exclude ams-1, and while
    // its first probe waits for an answer (held 850 ms), the restored verdict is stale.
    set_delay(&all[1].0.delay, None, 850);
    while all[1].1.try_recv().is_ok() {}
    let source = ConfigSource::File(dir.path().join("gto.toml"));
    let app = App::start(source.clone(), source.load().unwrap())
        .await
        .unwrap();
    let server = TestServer {
        addr: app.dns_addrs()[0],
        app,
        dir,
    };
    assert_eq!(a_records(&server).await, vec!["127.0.0.2", "127.0.0.4"]);
    let first = tokio::time::timeout(interval, all[1].1.recv()).await;
    assert_eq!(first, Ok(Some(503)), "the first probe is in flight");
    let status = server.app.health().status().await;
    let ams = status.iter().find(|s| s.key.member == "ams-1").unwrap();
    assert_eq!(ams.health, Health::Down);
    assert!(ams.stale, "restored state is stale until re-checked");

    // It comes back after rise successes.
    let mut flips = server.app.health().subscribe();
    all[1].0.status.store(200, Ordering::SeqCst);
    set_delay(&all[1].0.delay, None, 0);
    let flip = next_flip(
        &mut flips,
        interval.mul_f64(1.1) * (RISE + 1) + Duration::from_secs(1),
    )
    .await;
    assert_eq!((flip.key.member.as_str(), flip.to), ("ams-1", Health::Up));
    assert_eq!(a_records(&server).await, vec!["127.0.0.2", "127.0.0.3"]);
    assert!(!server.app.health().status().await[1].stale);
}

#[tokio::test]
async fn a_reload_keeps_the_state_of_unchanged_identities() {
    let mut all = appliances(Speaks::Tcp).await;
    let config = health_config(ports(&all), TCP_CHECK, false);
    let server = TestServer::start(&config, ZONE).await;
    let mut flips = server.app.health().subscribe();
    all[0].0.stop().await;
    next_flip(&mut flips, INTERVAL * FALL + Duration::from_secs(1)).await;

    // Same identities, a different check schedule, and one new endpoint.
    let changed = config.replace("interval = \"300ms\"", "interval = \"400ms\"").replace(
        "[[pool.member]]\nname = \"fra-1\"",
        "[[pool.member]]\nname = \"new-1\"\naddresses = [\"127.0.0.9\"]\ncheck = { kind = \"none\" }\n[[pool.member]]\nname = \"fra-1\"",
    );
    std::fs::write(server.path("gto.toml"), changed).unwrap();
    server.app.reload().await.unwrap();
    let status = server.app.health().status().await;
    let health = |name: &str| status.iter().find(|s| s.key.member == name).unwrap().health;
    assert_eq!(health("fra-1"), Health::Down, "state kept across reload");
    assert_eq!(health("new-1"), Health::Up, "a new endpoint is up at once");
    assert_eq!(a_records(&server).await, vec!["127.0.0.9", "127.0.0.3"]);
}

#[tokio::test]
async fn endpoints_with_the_same_probe_share_one_task() {
    let all = appliances(Speaks::Tcp).await;
    let port = all[0].0.addr.port();
    let config = format!(
        "{}\n[[service]]\nname = \"other.gto.example.com.\"\npool = \"copy\"\n[[pool]]\nname = \"copy\"\ncheck = {TCP_CHECK}\n[[pool.member]]\nname = \"same\"\naddresses = [\"127.0.0.2\"]\ncheck = {{ port = {port} }}\n",
        health_config(ports(&all), TCP_CHECK, false)
    );
    let server = TestServer::start(&config, ZONE).await;
    let status = server.app.health().status().await;
    let target = |pool: &str, member: &str| {
        status
            .iter()
            .find(|s| s.key.pool == pool && s.key.member == member)
            .unwrap()
            .target
    };
    assert!(target("sma", "fra-1").is_some());
    assert_eq!(target("sma", "fra-1"), target("copy", "same"));
    assert_ne!(target("sma", "fra-1"), target("sma", "ams-1"));
}

fn http(target: std::net::SocketAddr, tls: Option<TlsSettings>) -> HttpProbe {
    HttpProbe {
        target,
        path: "/status".into(),
        host: "appliance.test".into(),
        expect: Vec::new(),
        body: Some("OK".into()),
        tls,
        load_fields: None,
        max_body: HttpProbe::DEFAULT_MAX_BODY,
    }
}

fn tls_settings(pem: &str, sni: &str, min_days: Option<u32>) -> TlsSettings {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    TlsSettings {
        sni: sni.into(),
        insecure: false,
        roots: CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(Result::unwrap)
            .collect(),
        cert_min_days: min_days,
        cert_expiring_down: true,
    }
}

async fn run(probe: Probe) -> Result<(), ProbeError> {
    Prober::new(probe).unwrap().run().await.map(drop)
}

#[tokio::test]
async fn https_and_tls_probes_verify_certificates_and_expiry() {
    let (acceptor, pem) = certificate(&["appliance.test", "127.0.0.5"], 30);
    let (appliance, _requests) = Appliance::start("127.0.0.5", Speaks::Https(acceptor)).await;
    let target = appliance.addr;

    assert_eq!(
        run(Probe::Http(http(
            target,
            Some(tls_settings(&pem, "appliance.test", None))
        )))
        .await,
        Ok(())
    );
    assert_eq!(
        run(Probe::Tls {
            target,
            tls: tls_settings(&pem, "appliance.test", Some(7))
        })
        .await,
        Ok(())
    );
    // By IP address as the server name, too.
    assert_eq!(
        run(Probe::Tls {
            target,
            tls: tls_settings(&pem, "127.0.0.5", None)
        })
        .await,
        Ok(())
    );
    // Expires in 30 days: a 60-day minimum fails.
    let expiring = run(Probe::Tls {
        target,
        tls: tls_settings(&pem, "appliance.test", Some(60)),
    })
    .await;
    assert!(
        matches!(expiring, Err(ProbeError::CertExpiring { days: 29 | 30 })),
        "{expiring:?}"
    );
    // A name the certificate does not carry fails verification.
    let wrong = run(Probe::Tls {
        target,
        tls: tls_settings(&pem, "other.test", None),
    })
    .await;
    assert!(matches!(wrong, Err(ProbeError::Tls(_))), "{wrong:?}");
    // Not trusted (Mozilla roots only) fails; insecure accepts it.
    let mut untrusted = tls_settings(&pem, "appliance.test", None);
    untrusted.roots.clear();
    let result = run(Probe::Http(http(target, Some(untrusted.clone())))).await;
    assert!(matches!(result, Err(ProbeError::Tls(_))), "{result:?}");
    untrusted.insecure = true;
    assert_eq!(
        run(Probe::Http(http(target, Some(untrusted)))).await,
        Ok(())
    );
}

#[tokio::test]
async fn http_probes_judge_status_and_body() {
    let (appliance, _requests) = Appliance::start("127.0.0.6", Speaks::Http).await;
    let target = appliance.addr;
    assert_eq!(run(Probe::Http(http(target, None))).await, Ok(()));
    let mut wants_body = http(target, None);
    wants_body.body = Some("READY".into());
    assert_eq!(
        run(Probe::Http(wants_body)).await,
        Err(ProbeError::Body("READY".into()))
    );
    let mut wants_204 = http(target, None);
    wants_204.expect = vec![204];
    assert_eq!(
        run(Probe::Http(wants_204)).await,
        Err(ProbeError::Status(200))
    );
    appliance
        .status
        .store(500, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        run(Probe::Http(http(target, None))).await,
        Err(ProbeError::Status(500))
    );
    let mut appliance = appliance;
    appliance.stop().await;
    assert_eq!(run(Probe::Tcp { target }).await, Err(ProbeError::Refused));
}

#[tokio::test]
async fn load_read_from_the_probe_body_takes_an_overloaded_endpoint_out() {
    let all = appliances(Speaks::Http).await;
    for (appliance, _) in &all {
        *appliance.body.lock().unwrap() = r#"{"stats": {"sessions": 10, "capacity": 100}}"#.into();
    }
    let check = r#"{ kind = "http", path = "/status", interval = "500ms", timeout = "400ms", load_fields = { sessions = "stats.sessions", capacity = "stats.capacity" } }"#;
    let config = health_config(ports(&all), check, false).replace(
        "[[pool.member]]\nname = \"fra-1\"",
        "load = { low = 0.5, high = 0.8, smoothing = 1.0, slow_start = \"0s\" }\n[[pool.member]]\nname = \"fra-1\"",
    );
    let server = TestServer::start(&config, ZONE).await;
    let mut requests = all;
    // Wait for a probe of fra-1 to be served, then for status to show its load (bounded).
    requests[0].1.recv().await.unwrap();
    let status_of = |status: Vec<gto::health::EndpointStatus>| {
        status
            .into_iter()
            .find(|s| s.key.member == "fra-1")
            .unwrap()
    };
    let mut seen = None;
    for _ in 0..50 {
        let fra = status_of(server.app.health().status().await);
        if fra.load_smoothed.is_some() {
            seen = Some(fra);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fra = seen.expect("load never arrived from the probe body");
    assert_eq!(fra.load.unwrap().sessions, 10);
    assert_eq!(fra.load_smoothed, Some(0.1));
    assert_eq!(a_records(&server).await, vec!["127.0.0.2", "127.0.0.3"]);

    // 90 % full: over the high-watermark; fresh answers leave it out.
    *requests[0].0.body.lock().unwrap() = r#"{"stats": {"sessions": 90, "capacity": 100}}"#.into();
    let mut out = false;
    for _ in 0..50 {
        if a_records(&server).await == vec!["127.0.0.3", "127.0.0.4"] {
            out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(out, "an overloaded endpoint kept getting answers");
    assert!(status_of(server.app.health().status().await).overloaded);
    drop(requests);
}

#[tokio::test]
async fn large_bodies_match_on_what_was_read_and_report_too_large() {
    let (appliance, _requests) = Appliance::start("127.0.0.7", Speaks::Http).await;
    let target = appliance.addr;
    let padding = "x".repeat(100 * 1024);
    // Expected text early in a 100 KiB body: found without reading it all.
    *appliance.body.lock().unwrap() = format!("OK {padding}");
    assert_eq!(run(Probe::Http(http(target, None))).await, Ok(()));
    // Expected text past the limit: reported as such.
    *appliance.body.lock().unwrap() = format!("{padding} OK");
    assert_eq!(
        run(Probe::Http(http(target, None))).await,
        Err(ProbeError::BodyTooLarge(HttpProbe::DEFAULT_MAX_BODY))
    );
    // A bigger limit finds it.
    let mut roomy = http(target, None);
    roomy.max_body = 256 * 1024;
    assert_eq!(run(Probe::Http(roomy)).await, Ok(()));
}

#[tokio::test]
async fn out_of_range_state_file_entries_are_dropped_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    real_config_without_admin(dir.path(), "state_file = \"gto.state\"");
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
    let addr = gto.dns_addr().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_outage_is_a_few_rebuilds_and_no_false_staleness() {
    let closed = crate::support::ClosedPort::new();
    let port = closed.port();
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

#[test]
fn state_file_paths_that_are_not_regular_files_are_refused() {
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
fn the_state_writer_keeps_a_symlink_and_writes_its_target() {
    use gto::health::store::{StateFile, VERSION, save};
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("real.state", dir.path().join("gto.state")).unwrap();
    let file = StateFile {
        version: VERSION,
        written: 1,
        runtime_members: Vec::new(),
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

/// A member whose TLS check reads a certificate expiring in 10 days, with
/// `cert_min_days = 30`, through the real binary: by default it stays up and answered,
/// with a warning, a `cert` event, its expiry in status and
/// `gto_probe_cert_expiry_timestamp_seconds`; with `cert_expiring = "down"` it goes down
/// with the reason.
#[tokio::test]
async fn an_expiring_certificate_warns_and_takes_a_member_down_only_when_asked() {
    let (acceptor, pem) = certificate(&["127.0.0.6"], 10);
    let (appliance, _requests) = Appliance::start("127.0.0.6", Speaks::Https(acceptor)).await;
    for mode in ["", ", cert_expiring = \"down\""] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &pem).unwrap();
        let member = format!(
            "[[pool.member]]\nname = \"tls-1\"\naddresses = [\"127.0.0.6\"]\n\
             check = {{ kind = \"tls\", port = {}, ca_file = \"ca.pem\", cert_min_days = 30, \
             interval = \"1s\", timeout = \"500ms\"{mode} }}\n",
            appliance.addr.port()
        );
        crate::real::real_config(dir.path(), ZONE, |text| {
            text.replace(
                "[[pool.member]]\nname = \"nyc-1\"",
                &format!("{member}[[pool.member]]\nname = \"nyc-1\""),
            )
        });
        let mut gto = RealGto::run(&dir.path().join("gto.toml"));
        let admin = gto.admin_addr().await;
        let down = !mode.is_empty();
        let endpoint = loop {
            let (_, text) = crate::support::http(admin, "GET", "/v1/status", None, "").await;
            let status: serde_json::Value = serde_json::from_str(&text).unwrap();
            let endpoint = status["endpoints"]
                .as_array()
                .and_then(|e| e.iter().find(|e| e["member"] == "tls-1").cloned())
                .unwrap_or_else(|| panic!("tls-1 in {status}"));
            if endpoint["last_check"].is_string() && (!down || endpoint["health"] == "down") {
                break endpoint;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let metrics = crate::real::metrics(admin).await;
        if down {
            assert_eq!(endpoint["health"], "down", "{endpoint}");
            assert!(
                endpoint["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("certificate expires in")),
                "{endpoint}"
            );
        } else {
            assert_eq!(endpoint["health"], "up", "{endpoint}");
            assert_eq!(endpoint["cert_expiring"], true, "{endpoint}");
            assert!(endpoint["cert_expires"].is_string(), "{endpoint}");
            gto.wait_for_log("expires within cert_min_days").await;
            let expiry = crate::support::sample(
                &metrics,
                "gto_probe_cert_expiry_timestamp_seconds",
                &["member=\"tls-1\""],
            );
            let left = expiry - gto::time::unix_now() as f64;
            assert!(
                (9.0 * 86_400.0..=10.0 * 86_400.0).contains(&left),
                "{left} s left: {metrics}"
            );
        }
        gto.signal("TERM");
        assert!(gto.exit().await.success());
    }
}

/// A probe's timeout says where it stopped: in the TLS handshake (a listener that accepts
/// and says nothing), or waiting for the HTTP response; what the scheduler reports as
/// the reason ("timed out in the TLS handshake").
#[tokio::test]
async fn a_timeout_names_the_phase_it_interrupted() {
    let silent = tokio::net::TcpListener::bind("127.0.0.7:0").await.unwrap();
    let target = silent.local_addr().unwrap();
    let held = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = silent.accept().await {
            keep.lock().await.push(stream); // accepted, never answered
        }
    });
    let (_, pem) = certificate(&["appliance.test"], 30);
    for (probe, phase) in [
        (
            Probe::Tls {
                target,
                tls: tls_settings(&pem, "appliance.test", None),
            },
            "in the TLS handshake",
        ),
        (
            Probe::Http(http(target, None)),
            "waiting for the HTTP response",
        ),
    ] {
        let prober = Prober::new(probe).unwrap();
        let ran = tokio::time::timeout(Duration::from_millis(300), prober.run()).await;
        assert!(ran.is_err(), "the silent listener never answers");
        let error = ProbeError::Timeout(prober.phase());
        assert_eq!(error.to_string(), format!("timed out {phase}"));
        assert_eq!(error.as_str(), "timeout");
    }
}

/// Accepts (and drops) connections on `listener` until the task is aborted.
fn accept_all(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    })
}

/// `family = "each"` (the default) through the real binary: a dual-stack member whose IPv6
/// address refuses its check stays up, answered in A but not in AAAA (another member's
/// AAAA is given instead), with each family's state in status, explain, the metrics, the
/// page and the log; when the IPv6 side listens it rejoins AAAA answers, and when the IPv4
/// side stops it leaves A answers while the member stays up.
#[tokio::test]
async fn each_address_family_of_a_member_is_probed_and_answered_apart() {
    let v4 = tokio::net::TcpListener::bind("127.0.0.7:0").await.unwrap();
    let port = v4.local_addr().unwrap().port();
    // The same port on ::1, held (bound, not listening): refused until it listens.
    let v6 = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
    v6.bind(&std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)).into())
        .unwrap();
    let v4_task = accept_all(v4);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    std::fs::write(
        dir.path().join("gto.toml"),
        format!(
            "{PREAMBLE}\n[[service]]\nname = \"vpn.gto.example.com.\"\npool = \"p\"\n\
             policy = \"failover\"\nanswers = 1\n\
             [[pool]]\nname = \"p\"\n\
             check = {{ kind = \"tcp\", port = {port}, interval = \"1s\", timeout = \"900ms\", rise = 1, fall = 1 }}\n\
             [[pool.member]]\nname = \"dual\"\naddresses = [\"127.0.0.7\", \"::1\"]\n\
             [[pool.member]]\nname = \"spare\"\naddresses = [\"192.0.2.8\", \"2001:db8::8\"]\n\
             check = {{ kind = \"none\" }}\n"
        ),
    )
    .unwrap();
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let (dns, admin) = (gto.dns_addr().await, gto.admin_addr().await);
    let answer = |qtype: RecordType| async move {
        answers(
            &udp(dns, &query("vpn.gto.example.com.", qtype, None))
                .await
                .0,
        )
    };
    // A flip is logged just before the snapshot showing it is published: the answers are
    // asked until they show it (at most 2 s).
    let settled = |qtype: RecordType, want: &'static str| async move {
        let started = tokio::time::Instant::now();
        loop {
            let got = answer(qtype).await;
            if got == vec![want] || started.elapsed() > Duration::from_secs(2) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let dual = || async {
        let (_, text) = crate::support::http(admin, "GET", "/v1/status", None, "").await;
        let status: serde_json::Value = serde_json::from_str(&text).unwrap();
        crate::real::member(&status, "dual").clone()
    };
    let family = |endpoint: &serde_json::Value, family: &str| {
        endpoint["families"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["family"] == family).cloned())
            .unwrap_or_else(|| panic!("no {family} in {endpoint}"))
    };
    // Wait until the IPv6 check has said down (its first probe within a quarter interval).
    gto.wait_for_log("endpoint address family health changed")
        .await;
    let endpoint = dual().await;
    assert_eq!(endpoint["health"], "up", "{endpoint}");
    assert_eq!(family(&endpoint, "v4")["health"], "up", "{endpoint}");
    assert_eq!(
        family(&endpoint, "v4")["probed"],
        format!("127.0.0.7:{port}")
    );
    let v6_state = family(&endpoint, "v6");
    assert_eq!(v6_state["health"], "down", "{endpoint}");
    assert_eq!(v6_state["probed"], format!("[::1]:{port}"));
    assert_eq!(v6_state["in_answers"], false);
    assert!(
        v6_state["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused")),
        "{endpoint}"
    );
    assert_eq!(settled(RecordType::A, "127.0.0.7").await, vec!["127.0.0.7"]);
    assert_eq!(
        settled(RecordType::AAAA, "2001:db8::8").await,
        vec!["2001:db8::8"]
    );
    let metrics = crate::real::metrics(admin).await;
    assert_eq!(
        crate::support::sample(&metrics, "gto_member_up", &["member=\"dual\""]),
        1.0
    );
    assert_eq!(
        crate::support::sample(
            &metrics,
            "gto_member_family_up",
            &["member=\"dual\"", "family=\"v6\""]
        ),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        crate::support::sample(
            &metrics,
            "gto_member_family_up",
            &["member=\"dual\"", "family=\"v4\""]
        ),
        1.0
    );
    let (_, explained) = crate::support::http(
        admin,
        "GET",
        "/v1/explain?name=vpn.gto.example.com.&type=AAAA&client=192.0.2.1",
        None,
        "",
    )
    .await;
    assert!(
        explained.contains("IPv6 address's own check says down"),
        "{explained}"
    );
    let (_, page) = crate::support::http(admin, "GET", "/", None, "").await;
    assert!(page.contains("data-family=\"v6\">v6 down"), "{page}");

    // The IPv6 side answers: it rejoins AAAA answers (failover: it is first).
    v6.listen(16).unwrap();
    v6.set_nonblocking(true).unwrap();
    let v6_task = accept_all(tokio::net::TcpListener::from_std(v6.into()).unwrap());
    let line = gto
        .wait_for_log("endpoint address family health changed")
        .await;
    assert!(
        line.contains("family=\"v6\"") && line.contains("new=\"up\""),
        "{line}"
    );
    assert_eq!(settled(RecordType::AAAA, "::1").await, vec!["::1"]);

    // The IPv4 side stops: A answers move on, AAAA stay, the member stays up.
    v4_task.abort();
    let line = gto
        .wait_for_log("endpoint address family health changed")
        .await;
    assert!(
        line.contains("family=\"v4\"") && line.contains("new=\"down\""),
        "{line}"
    );
    assert_eq!(settled(RecordType::A, "192.0.2.8").await, vec!["192.0.2.8"]);
    assert_eq!(settled(RecordType::AAAA, "::1").await, vec!["::1"]);
    assert_eq!(dual().await["health"], "up");

    // Both down: the member is down (one endpoint flip), the spare answers both.
    v6_task.abort();
    gto.wait_for_log("endpoint health changed").await;
    let endpoint = dual().await;
    assert_eq!(endpoint["health"], "down", "{endpoint}");
    assert_eq!(
        settled(RecordType::AAAA, "2001:db8::8").await,
        vec!["2001:db8::8"]
    );
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}
