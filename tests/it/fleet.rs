//! Issue 11: a fleet of gto instances sharing drains, load and presence through a real
//! etcd (the Debian `etcd-server` package, installed by `tests/run`), started here on
//! loopback ports with its own data directory. Instances reach etcd directly or through
//! a TCP relay the test can cut, to make one instance lose the store while the others
//! keep it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::admin::{TOKEN, admin_config};
use crate::support::{TestServer, ZONE, answers, http_json, query};

pub use crate::support::etcd::{Etcd, Tls};

/// A TCP relay in front of etcd that the test can cut (every connection closed, new ones
/// refused) and restore; it counts the bytes it carries.
pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    /// Bytes carried both ways.
    pub bytes: Arc<AtomicU64>,
}

impl Relay {
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (o, g, b) = (open.clone(), generation.clone(), bytes.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let born = g.load(Ordering::SeqCst);
                let (g, b) = (g.clone(), b.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.split();
                    let (mut ro, mut wo) = outbound.split();
                    let mut up = [0u8; 16384];
                    let mut down = [0u8; 16384];
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    loop {
                        if g.load(Ordering::SeqCst) != born {
                            return;
                        }
                        tokio::select! {
                            n = ri.read(&mut up) => match n {
                                Ok(n) if n > 0 => {
                                    b.fetch_add(n as u64, Ordering::Relaxed);
                                    if wo.write_all(&up[..n]).await.is_err() { return; }
                                }
                                _ => return,
                            },
                            n = ro.read(&mut down) => match n {
                                Ok(n) if n > 0 => {
                                    b.fetch_add(n as u64, Ordering::Relaxed);
                                    if wi.write_all(&down[..n]).await.is_err() { return; }
                                }
                                _ => return,
                            },
                            () = tokio::time::sleep(Duration::from_millis(50)) => {}
                        }
                    }
                });
            }
        });
        Self {
            addr,
            open,
            generation,
            bytes,
        }
    }

    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// The admin test config (token, state file) in a fleet reaching etcd at `url`.
pub fn fleet_config(url: &str, instance: &str, extra: &str) -> String {
    format!(
        "{}\n[cluster]\netcd = [\"{url}\"]\nname = \"test\"\ninstance = \"{instance}\"\nlease_ttl = \"2s\"\n{extra}",
        admin_config()
    )
}

pub async fn instance(url: &str, name: &str) -> TestServer {
    TestServer::start_with_files(
        &fleet_config(url, name, ""),
        ZONE,
        &[("admin.token", &format!("{TOKEN}\n"))],
    )
    .await
}

/// Waits until `check` holds, up to `limit`; returns how long it took.
pub async fn within<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Drains or undrains (`action`) a member of pool sma through `server`'s API.
pub async fn change(server: &TestServer, member: &str, action: &str) -> (u16, serde_json::Value) {
    http_json(
        server.admin(),
        "POST",
        &format!("/v1/members/sma/{member}/{action}"),
        Some(TOKEN),
        "",
    )
    .await
}

pub async fn status(server: &TestServer) -> serde_json::Value {
    http_json(server.admin(), "GET", "/v1/status", None, "")
        .await
        .1
}

pub async fn connected(server: &TestServer) -> bool {
    status(server).await["cluster"]["connected"] == true
}

const DRAINED: [&str; 2] = ["198.51.100.20", "203.0.113.30"];
const ALL: [&str; 2] = ["198.51.100.10", "198.51.100.20"];

async fn wait_connected(servers: &[&TestServer]) {
    for server in servers {
        within(Duration::from_secs(10), "connected to etcd", || {
            connected(server)
        })
        .await;
    }
}

#[tokio::test]
async fn a_drain_on_one_instance_reaches_the_other_and_expires_on_both() {
    let etcd = Etcd::start().await;
    let a = instance(&etcd.url(), "a").await;
    let b = instance(&etcd.url(), "b").await;
    wait_connected(&[&a, &b]).await;
    assert_eq!(b.vpn().await, ALL);

    let (code, body) = change(&a, "fra-1", "drain").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(a.vpn().await, DRAINED, "A at once");
    let took = within(Duration::from_secs(1), "B leaves fra-1", || async {
        b.vpn().await == DRAINED
    })
    .await;
    eprintln!("drain reached B in {took:?}");

    // Undrain on B reaches A.
    let (code, _) = change(&b, "fra-1", "undrain").await;
    assert_eq!(code, 200);
    within(Duration::from_secs(1), "A takes fra-1 back", || async {
        a.vpn().await == ALL
    })
    .await;

    // A drain `for` 2 s ends on both.
    let (code, body) = http_json(
        b.admin(),
        "POST",
        "/v1/members/sma/fra-1/drain",
        Some(TOKEN),
        r#"{"for": "2s", "reason": "switch swap"}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    within(Duration::from_secs(1), "A drains", || async {
        a.vpn().await == DRAINED
    })
    .await;
    // A shows who drained it on B, and why.
    let seen_on_a = status(&a).await;
    let fra = crate::real::member(&seen_on_a, "fra-1");
    assert_eq!(fra["drain_reason"], "switch swap", "{fra}");
    assert_eq!(fra["drained_by"], "default@127.0.0.1", "{fra}");
    for server in [&a, &b] {
        within(Duration::from_secs(5), "the drain expires", || async {
            server.vpn().await == ALL
        })
        .await;
    }
    // And it is gone from etcd too: its lease ends with it (TTL rounded up a second).
    within(
        Duration::from_secs(3),
        "the drain's lease deletes it",
        || async {
            let mut client = etcd.client().await;
            let left = client
                .get(
                    "/gto/test/drain/",
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .unwrap();
            left.kvs().is_empty()
        },
    )
    .await;

    // The fleet view: both instances, same config, no drift.
    let view = status(&a).await;
    let instances = view["cluster"]["instances"].as_array().unwrap();
    let names: Vec<&str> = instances
        .iter()
        .map(|i| i["instance"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    assert!(instances.iter().all(|i| i["config_matches"] == true));
    assert_eq!(view["cluster"]["config_drift"], false);
}

#[tokio::test]
async fn a_load_report_to_one_instance_moves_the_others_ranking() {
    let etcd = Etcd::start().await;
    let extra = "";
    let config = |name: &str| {
        fleet_config(&etcd.url(), name, extra).replace(
            "pool = \"sma\"\n",
            "pool = \"sma\"\npolicy = \"least-load\"\n",
        )
    };
    let files = [("admin.token", format!("{TOKEN}\n"))];
    let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let a = TestServer::start_with_files(&config("a"), ZONE, &files).await;
    let b = TestServer::start_with_files(&config("b"), ZONE, &files).await;
    wait_connected(&[&a, &b]).await;
    let before = b.vpn().await;
    // fra-1 full, the others idle: B must rank fra-1 last.
    for (member, sessions) in [("fra-1", 100), ("ams-1", 0), ("nyc-1", 0)] {
        let (code, body) = http_json(
            a.admin(),
            "PUT",
            &format!("/v1/members/sma/{member}/load"),
            Some(TOKEN),
            &format!(r#"{{"sessions": {sessions}, "capacity": 100}}"#),
        )
        .await;
        assert_eq!(code, 200, "{body}");
    }
    within(Duration::from_secs(2), "B sees the load", || async {
        let view = status(&b).await;
        view["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["member"] == "fra-1" && e["load"]["sessions"] == 100)
    })
    .await;
    within(Duration::from_secs(2), "B moves fra-1 out", || async {
        !b.vpn().await.contains(&"198.51.100.10".to_string())
    })
    .await;
    eprintln!("before: {before:?}, after: {:?}", b.vpn().await);
}

#[tokio::test]
async fn instances_with_different_configs_show_drift() {
    let etcd = Etcd::start().await;
    let a = instance(&etcd.url(), "a").await;
    let other = fleet_config(&etcd.url(), "b", "").replace("ttl = 20", "ttl = 30");
    let b =
        TestServer::start_with_files(&other, ZONE, &[("admin.token", &format!("{TOKEN}\n"))]).await;
    wait_connected(&[&a, &b]).await;
    within(Duration::from_secs(2), "drift on A", || async {
        status(&a).await["cluster"]["config_drift"] == true
    })
    .await;
    let view = status(&a).await;
    let b_view = view["cluster"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == "b")
        .cloned()
        .unwrap();
    assert_eq!(b_view["config_matches"], false);
    let (_, metrics) = crate::support::http(a.admin(), "GET", "/metrics", None, "").await;
    assert_eq!(
        crate::support::sample(&metrics, "gto_cluster_config_drift", &[]),
        1.0
    );
}

#[tokio::test]
async fn etcd_down_answers_go_on_drains_are_refused_and_all_converge_after() {
    let mut etcd = Etcd::start().await;
    let a = instance(&etcd.url(), "a").await;
    let b = instance(&etcd.url(), "b").await;
    wait_connected(&[&a, &b]).await;
    let (code, _) = change(&a, "fra-1", "drain").await;
    assert_eq!(code, 200);
    within(Duration::from_secs(1), "B drains", || async {
        b.vpn().await == DRAINED
    })
    .await;

    // Query load on both while etcd dies: every query answered, none SERVFAIL.
    let load = |addr: SocketAddr| {
        tokio::spawn(async move {
            let (mut answered, mut bad) = (0, 0);
            let message = query("vpn.gto.example.com.", RecordType::A, None);
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                let bytes =
                    crate::support::udp_raw_within(addr, &message.to_vec().unwrap(), 1000).await;
                match bytes.and_then(|b| hickory_proto::op::Message::from_vec(&b).ok()) {
                    Some(reply)
                        if reply.metadata.response_code
                            == hickory_proto::op::ResponseCode::NoError
                            && answers(&reply) == DRAINED =>
                    {
                        answered += 1
                    }
                    _ => bad += 1,
                }
            }
            (answered, bad)
        })
    };
    let (la, lb) = (load(a.addr), load(b.addr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.kill();
    for server in [&a, &b] {
        within(Duration::from_secs(8), "sees etcd gone", || async {
            !connected(server).await
        })
        .await;
    }
    let (code, body) = change(&b, "ams-1", "drain").await;
    assert_eq!(code, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("etcd"), "{body}");
    let (_, after) = http_json(b.admin(), "GET", "/v1/status", None, "").await;
    let ams = after["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["member"] == "ams-1")
        .unwrap()
        .clone();
    assert_eq!(ams["drained"], false, "a refused drain changes nothing");
    for handle in [la, lb] {
        let (answered, bad) = handle.await.unwrap();
        assert!(answered > 100, "{answered}");
        assert_eq!(bad, 0, "unanswered or wrong answers while etcd died");
    }

    // etcd back: both converge within 2 s, and drains work again.
    etcd.run().await;
    let started = Instant::now();
    for server in [&a, &b] {
        within(Duration::from_secs(2), "reconnects", || connected(server)).await;
    }
    eprintln!("converged {:?} after etcd answered", started.elapsed());
    let (code, _) = change(&b, "fra-1", "undrain").await;
    assert_eq!(code, 200);
    within(Duration::from_secs(1), "A follows", || async {
        a.vpn().await == ALL
    })
    .await;
}

#[tokio::test]
async fn an_instance_restarted_while_etcd_is_down_serves_the_cached_drains() {
    let mut etcd = Etcd::start().await;
    let a = instance(&etcd.url(), "a").await;
    wait_connected(&[&a]).await;
    let (code, _) = change(&a, "fra-1", "drain").await;
    assert_eq!(code, 200);
    etcd.kill();
    let dir = a.dir;
    a.app.shutdown().await.unwrap();
    let restarted = TestServer::start_in(dir).await;
    assert!(!connected(&restarted).await);
    assert_eq!(
        restarted.vpn().await,
        DRAINED,
        "the drain cached in the state file"
    );
}

#[tokio::test]
async fn compacted_revisions_lead_to_a_full_resync() {
    let etcd = Etcd::start().await;
    let relay = Relay::start(etcd.port).await;
    let a = instance(&etcd.url(), "a").await;
    let b = instance(&format!("http://{}", relay.addr), "b").await;
    wait_connected(&[&a, &b]).await;
    relay.cut();
    within(Duration::from_secs(8), "B loses etcd", || async {
        !connected(&b).await
    })
    .await;
    // Changes B misses, then compaction of everything before now.
    for member in ["fra-1", "ams-1"] {
        let (code, _) = change(&a, member, "drain").await;
        assert_eq!(code, 200);
    }
    let (code, _) = change(&a, "ams-1", "undrain").await;
    assert_eq!(code, 200);
    let mut client = etcd.client().await;
    let revision = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(
            revision,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    assert_eq!(b.vpn().await, ALL, "B missed the drain");
    let (_, metrics) = crate::support::http(b.admin(), "GET", "/metrics", None, "").await;
    let resyncs = crate::support::sample(&metrics, "gto_cluster_resyncs_total", &[]);
    relay.restore();
    within(Duration::from_secs(5), "B resyncs", || async {
        b.vpn().await == DRAINED
    })
    .await;
    let (_, metrics) = crate::support::http(b.admin(), "GET", "/metrics", None, "").await;
    assert!(crate::support::sample(&metrics, "gto_cluster_resyncs_total", &[]) > resyncs);
}

#[tokio::test]
async fn concurrent_drains_and_undrains_end_in_one_state_everywhere() {
    let etcd = Etcd::start().await;
    let a = instance(&etcd.url(), "a").await;
    let b = instance(&etcd.url(), "b").await;
    wait_connected(&[&a, &b]).await;
    for round in 0..10 {
        let (first, second) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let drain = change(first, "fra-1", "drain");
        let undrain = change(second, "fra-1", "undrain");
        let ((c1, _), (c2, _)) = tokio::join!(drain, undrain);
        assert!(
            [200, 409].contains(&c1) && [200, 409].contains(&c2),
            "{c1} {c2}"
        );
        let mut client = etcd.client().await;
        let stored = !client
            .get("/gto/test/drain/sma/fra-1", None)
            .await
            .unwrap()
            .kvs()
            .is_empty();
        let expected = if stored { DRAINED } else { ALL };
        for server in [&a, &b] {
            within(Duration::from_secs(2), "one state everywhere", || async {
                server.vpn().await == expected
            })
            .await;
        }
    }
}

/// Certificates for a CA, etcd (127.0.0.1) and a gto client.
fn make_tls() -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    server_params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server = server_params.signed_by(&server_key, &issuer).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["gto".to_string()]).unwrap();
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &issuer).unwrap();
    Tls {
        ca: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

#[tokio::test]
async fn tls_to_etcd_with_client_certificates() {
    let tls = make_tls();
    let etcd = Etcd::start_with(Some(tls.clone())).await;
    let files = [
        ("admin.token", format!("{TOKEN}\n")),
        ("ca.pem", tls.ca.clone()),
        ("client.pem", tls.client_cert.clone()),
        ("client.key", tls.client_key.clone()),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let extra =
        "tls = { ca_file = \"ca.pem\", cert_file = \"client.pem\", key_file = \"client.key\" }\n";
    let a =
        TestServer::start_with_files(&fleet_config(&etcd.url(), "a", extra), ZONE, &files).await;
    let b =
        TestServer::start_with_files(&fleet_config(&etcd.url(), "b", extra), ZONE, &files).await;
    wait_connected(&[&a, &b]).await;
    let (code, body) = change(&a, "fra-1", "drain").await;
    assert_eq!(code, 200, "{body}");
    within(Duration::from_secs(1), "B over TLS", || async {
        b.vpn().await == DRAINED
    })
    .await;
    // Without the client certificate etcd refuses gto.
    let bare = "tls = { ca_file = \"ca.pem\" }\n";
    let c = TestServer::start_with_files(&fleet_config(&etcd.url(), "c", bare), ZONE, &files).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!connected(&c).await, "no client certificate, no fleet");
}

#[tokio::test]
async fn a_killed_instance_leaves_the_fleet_view_when_its_lease_expires() {
    let etcd = Etcd::start().await;
    let a = instance(&etcd.url(), "a").await;
    let dir = tempfile::tempdir().unwrap();
    let text = fleet_config(&etcd.url(), "doomed", "")
        .replace("token_file = \"admin.token\"", "")
        .replace("listen = \"127.0.0.1:0\"", "enabled = false");
    std::fs::write(dir.path().join("gto.toml"), text).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let mut doomed = crate::support::RealGto::run(&dir.path().join("gto.toml"));
    doomed.wait_for_log("fleet store connected").await;
    let has_doomed = || async {
        status(&a).await["cluster"]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["instance"] == "doomed")
    };
    within(
        Duration::from_secs(2),
        "A sees the new instance",
        has_doomed,
    )
    .await;
    // SIGKILL: no chance to revoke its lease; it ends after lease_ttl (2 s).
    doomed.signal("KILL");
    let took = within(Duration::from_secs(6), "the lease expires", || async {
        !has_doomed().await
    })
    .await;
    eprintln!("left the fleet view {took:?} after SIGKILL");
}

/// The figures of the closing note: drain propagation (p50/p99 over 100 drains) and etcd
/// traffic per instance at rest and under churn (bytes through a relay).
#[tokio::test]
async fn drain_propagation_and_etcd_traffic() {
    let etcd = Etcd::start().await;
    let relay = Relay::start(etcd.port).await;
    let a = instance(&etcd.url(), "a").await;
    let b = instance(&format!("http://{}", relay.addr), "b").await;
    wait_connected(&[&a, &b]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = relay.bytes.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let at_rest = relay.bytes.load(Ordering::Relaxed) - before;

    let mut took = Vec::new();
    let before = relay.bytes.load(Ordering::Relaxed);
    let churn = Instant::now();
    for i in 0..100 {
        let action = if i % 2 == 0 { "drain" } else { "undrain" };
        let expected = if i % 2 == 0 { DRAINED } else { ALL };
        let started = Instant::now();
        let (code, _) = change(&a, "fra-1", action).await;
        assert_eq!(code, 200);
        within(Duration::from_secs(1), "B follows", || async {
            b.vpn().await == expected
        })
        .await;
        took.push(started.elapsed());
    }
    let churn_bytes = relay.bytes.load(Ordering::Relaxed) - before;
    let churn_secs = churn.elapsed().as_secs_f64();
    took.sort();
    let (p50, p99) = (took[49], took[98]);
    eprintln!(
        "drain propagation A->B (API call to B's answers) p50 {p50:?} p99 {p99:?}; etcd \
         traffic of B: at rest {:.0} B/s, under churn {:.0} B/s ({:.0} B per change)",
        at_rest as f64 / 5.0,
        churn_bytes as f64 / churn_secs,
        churn_bytes as f64 / 100.0
    );
    assert!(p99 < Duration::from_secs(1));
}

#[tokio::test]
async fn load_read_by_one_instances_probes_reaches_the_others() {
    use crate::support::appliance::Speaks;
    let etcd = Etcd::start().await;
    let all = crate::health::appliances(Speaks::Http).await;
    for (appliance, _) in &all {
        *appliance.body.lock().unwrap() = r#"{"stats": {"sessions": 37, "capacity": 100}}"#.into();
    }
    let check = r#"{ kind = "http", path = "/status", interval = "300ms", timeout = "200ms", load_fields = { sessions = "stats.sessions", capacity = "stats.capacity" } }"#;
    let probing = format!(
        "{}\n[cluster]\netcd = [\"{}\"]\nname = \"test\"\ninstance = \"prober\"\nlease_ttl = \"2s\"\n",
        crate::health::health_config(crate::health::ports(&all), check, false),
        etcd.url()
    );
    let a = TestServer::start(&probing, ZONE).await;
    let b = instance(&etcd.url(), "b").await;
    wait_connected(&[&a, &b]).await;
    within(
        Duration::from_secs(3),
        "B has the load A's probe read",
        || async {
            status(&b).await["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["member"] == "fra-1" && e["load"]["sessions"] == 37)
        },
    )
    .await;
}

#[test]
fn cluster_mistakes_are_located_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[cluster]\netcd = [\"etcd:2379\"]\nname = \"a/b\"\nlease_ttl = \"1s\"\nuser = \"gto\"\ntls = {{ ca_file = \"missing.pem\" }}\n",
        admin_config()
    );
    std::fs::write(dir.path().join("gto.toml"), text).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let (code, _, stderr) = crate::check::check(dir.path());
    assert_eq!(code, 64, "{stderr}");
    for expected in [
        "cluster.etcd: \"etcd:2379\" is not http://host:port",
        "cluster.name:",
        "cluster.lease_ttl:",
        "cluster.user: user and password_file go together",
        "cluster.tls.ca_file: cannot read",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}

#[tokio::test]
async fn etcd_authentication_with_a_user_limited_to_the_fleet_prefix() {
    use etcd_client::{Permission, PermissionType};
    let etcd = Etcd::start().await;
    let mut admin = etcd.client().await;
    admin.user_add("root", "root-password", None).await.unwrap();
    let _ = admin.role_add("root").await;
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("gto").await.unwrap();
    admin
        .role_grant_permission(
            "gto",
            Permission::new(PermissionType::Readwrite, "/gto/test/").with_prefix(),
        )
        .await
        .unwrap();
    admin
        .user_add("gto", "gto-password-123", None)
        .await
        .unwrap();
    admin.user_grant_role("gto", "gto").await.unwrap();
    admin.auth_enable().await.unwrap();

    let files = [
        ("admin.token", format!("{TOKEN}\n")),
        ("etcd.password", "gto-password-123\n".to_string()),
        ("wrong.password", "not-the-password\n".to_string()),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let auth = "user = \"gto\"\npassword_file = \"etcd.password\"\n";
    let a = TestServer::start_with_files(&fleet_config(&etcd.url(), "a", auth), ZONE, &files).await;
    let b = TestServer::start_with_files(&fleet_config(&etcd.url(), "b", auth), ZONE, &files).await;
    wait_connected(&[&a, &b]).await;
    let (code, body) = change(&a, "fra-1", "drain").await;
    assert_eq!(code, 200, "{body}");
    within(Duration::from_secs(1), "B with authentication", || async {
        b.vpn().await == DRAINED
    })
    .await;
    // A wrong password: no fleet, and drains are refused rather than applied alone.
    let wrong = "user = \"gto\"\npassword_file = \"wrong.password\"\n";
    let c =
        TestServer::start_with_files(&fleet_config(&etcd.url(), "c", wrong), ZONE, &files).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!connected(&c).await, "a wrong password must not connect");
    let (code, _) = change(&c, "ams-1", "drain").await;
    assert_eq!(code, 503);
}

#[tokio::test]
async fn a_load_pushed_while_etcd_is_unreachable_is_shared_when_it_is_back() {
    let etcd = Etcd::start().await;
    let relay = Relay::start(etcd.port).await;
    let a = instance(&format!("http://{}", relay.addr), "a").await;
    let b = instance(&etcd.url(), "b").await;
    wait_connected(&[&a, &b]).await;
    relay.cut();
    within(Duration::from_secs(8), "A loses etcd", || async {
        !connected(&a).await
    })
    .await;
    let (code, body) = http_json(
        a.admin(),
        "PUT",
        "/v1/members/sma/fra-1/load",
        Some(TOKEN),
        r#"{"sessions": 42, "capacity": 100}"#,
    )
    .await;
    assert_eq!(code, 200, "applied locally: {body}");
    let b_has = || async {
        status(&b).await["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["member"] == "fra-1" && e["load"]["sessions"] == 42)
    };
    assert!(!b_has().await);
    relay.restore();
    within(
        Duration::from_secs(5),
        "B gets the report made during the outage",
        b_has,
    )
    .await;
}
