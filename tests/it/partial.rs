//! Issue 23: the fleet under partial failure. Three gto instances on a three-member etcd
//! cluster (real etcd processes on loopback): one member killed (the leader, then a
//! follower) or frozen with SIGSTOP changes nothing an operator sees — every drain and
//! undrain succeeds, every instance stays connected and agrees within 1 s; forged votes
//! and malformed or out-of-bounds values under the fleet prefix change nothing, and a
//! running and a freshly started instance reach the same state from the same keys.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::admin::TOKEN;
use crate::fleet::{change, connected, fleet_config, within};
use crate::support::{TestServer, ZONE, free_port, http, sample};

const DRAINED: [&str; 2] = ["198.51.100.20", "203.0.113.30"];
const ALL: [&str; 2] = ["198.51.100.10", "198.51.100.20"];

/// One member of a test etcd cluster.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A three-member etcd cluster on loopback, each member ended (by its PID) when dropped.
struct Cluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = Cluster { members, dir };
        for i in 0..3 {
            cluster.run(i);
        }
        cluster.wait_serving().await;
        cluster
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// The endpoints as the `etcd = [...]` list's inside.
    fn endpoints(&self) -> String {
        (0..3)
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join("\", \"")
    }

    fn run(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let data: PathBuf = self.dir.path().join(&self.members[i].name);
        let url = self.url(i);
        let member = &mut self.members[i];
        let child = Command::new("etcd")
            .arg(format!("--name={}", member.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{}",
                member.peer_port
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                member.peer_port
            ))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=gto-test")
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .arg("--log-level=error")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join(format!("{}.log", member.name)))
                    .map_or_else(|_| Stdio::null(), Stdio::from),
            )
            .spawn()
            .expect("etcd is not installed: `tests/run` installs it");
        member.child = Some(child);
    }

    /// Waits until a write through every endpoint succeeds.
    async fn wait_serving(&self) {
        let started = Instant::now();
        for i in 0..3 {
            if self.members[i].child.is_none() {
                continue;
            }
            while TcpStream::connect(("127.0.0.1", self.members[i].client_port))
                .await
                .is_err()
            {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "etcd {} did not listen: {}",
                    self.members[i].name,
                    std::fs::read_to_string(
                        self.dir
                            .path()
                            .join(format!("{}.log", self.members[i].name))
                    )
                    .unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            loop {
                if let Ok(mut client) = etcd_client::Client::connect([self.url(i)], None).await
                    && client.put("/probe", "1", None).await.is_ok()
                {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "etcd not ready"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The index of the current leader.
    async fn leader(&self) -> usize {
        for _ in 0..100 {
            for i in 0..3 {
                if self.members[i].child.is_none() {
                    continue;
                }
                let Ok(mut client) = etcd_client::Client::connect([self.url(i)], None).await else {
                    continue;
                };
                if let Ok(status) = client.status().await
                    && let Some(header) = status.header()
                    && status.leader() == header.member_id()
                {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no etcd leader");
    }

    fn pid(&self, i: usize) -> String {
        self.members[i].child.as_ref().unwrap().id().to_string()
    }

    fn signal(&self, i: usize, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid(i)])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn restart(&mut self, i: usize) {
        self.run(i);
        self.wait_serving().await;
    }

    async fn client(&self) -> etcd_client::Client {
        let urls: Vec<String> = (0..3)
            .filter(|i| self.members[*i].child.is_some())
            .map(|i| self.url(i))
            .collect();
        etcd_client::Client::connect(urls, None).await.unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..3 {
            if self.members[i].child.is_some() {
                // A frozen member must be thawed to die cleanly.
                let _ = Command::new("kill").args(["-CONT", &self.pid(i)]).status();
            }
            self.kill(i);
        }
    }
}

async fn instance_of(cluster: &Cluster, name: &str) -> TestServer {
    TestServer::start_with_files(
        &fleet_config(&cluster.endpoints(), name, ""),
        ZONE,
        &[("admin.token", &format!("{TOKEN}\n"))],
    )
    .await
}

/// The chaos fleet: three instances probing three HTTP appliances (majority votes), with
/// a token for drains, on the three-member cluster.
struct Chaos {
    cluster: Cluster,
    appliances: Vec<crate::support::appliance::Appliance>,
    instances: Vec<TestServer>,
}

async fn chaos_fleet() -> Chaos {
    use crate::votes::SOURCES;
    let cluster = Cluster::start().await;
    let (appliances, ports) = crate::votes::appliances().await;
    let mut instances = Vec::new();
    for source in SOURCES {
        let text = crate::votes::config(
            &cluster.endpoints(),
            source,
            "down_when = \"majority\"",
            ports,
        )
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"",
        );
        let token = format!("{TOKEN}\n");
        instances.push(TestServer::start_with_files(&text, ZONE, &[("admin.token", &token)]).await);
    }
    for server in &instances {
        within(Duration::from_secs(10), "connected and up", || async {
            connected(server).await && crate::votes::has_fra(server).await
        })
        .await;
    }
    Chaos {
        cluster,
        appliances,
        instances,
    }
}

/// The answers (a set) of an instance of the chaos fleet.
async fn chaos_answers(server: &TestServer) -> std::collections::BTreeSet<String> {
    crate::support::answers(
        &crate::support::udp(
            server.addr,
            &crate::support::query(
                "vpn.gto.example.com.",
                hickory_proto::rr::RecordType::A,
                None,
            ),
        )
        .await
        .0,
    )
    .into_iter()
    .collect()
}

/// `rounds` drains and undrains of ams-1, through each instance in turn: every call
/// succeeds, every instance stays connected, and all follow within 1 s.
async fn chaos_drains(chaos: &Chaos, rounds: usize, what: &str) {
    for round in 0..rounds {
        let through = &chaos.instances[round % chaos.instances.len()];
        let action = if round % 2 == 0 { "drain" } else { "undrain" };
        let (code, body) = change(through, "ams-1", action).await;
        assert_eq!(code, 200, "{what}: {action} #{round} failed: {body}");
        for (i, server) in chaos.instances.iter().enumerate() {
            within(
                Duration::from_secs(1),
                &format!("{what}: instance {i} follows {action}"),
                || async {
                    chaos_answers(server).await.contains("127.0.1.2") == (action == "undrain")
                },
            )
            .await;
            assert!(
                connected(server).await,
                "{what}: instance {i} flapped to unreachable"
            );
        }
    }
}

/// Kills fra-1's appliance and brings it back: every instance drops it within
/// interval x fall + 1 s and takes it back within interval x rise + 1 s (rise 1).
/// Returns how long each instance took, out and back.
async fn chaos_appliance_cycle(chaos: &mut Chaos, what: &str) -> Vec<(Duration, Duration)> {
    use crate::votes::{FALL, INTERVAL_MS};
    let down_bound = Duration::from_millis(INTERVAL_MS * FALL + 1000);
    let up_bound = Duration::from_millis(INTERVAL_MS + 1000);
    let mut took = vec![(Duration::ZERO, Duration::ZERO); chaos.instances.len()];
    let started = Instant::now();
    chaos.appliances[0].stop().await;
    for (i, server) in chaos.instances.iter().enumerate() {
        within(
            down_bound,
            &format!("{what}: dead appliance out of instance {i}"),
            || async { !crate::votes::has_fra(server).await },
        )
        .await;
        took[i].0 = started.elapsed();
    }
    let started = Instant::now();
    chaos.appliances[0].resume();
    for (i, server) in chaos.instances.iter().enumerate() {
        within(
            up_bound,
            &format!("{what}: appliance back in instance {i}"),
            || async { crate::votes::has_fra(server).await },
        )
        .await;
        took[i].1 = started.elapsed();
    }
    took
}

/// Each etcd member in turn killed, then frozen (SIGSTOP): meanwhile drains and undrains
/// all succeed and reach every instance within 1 s, no instance flaps to unreachable,
/// and a dead appliance leaves (and comes back to) every instance within the failover
/// bound. Then the quorum is lost and comes back: every instance is connected again and
/// agrees within 1 s.
#[tokio::test]
async fn each_etcd_member_killed_and_frozen_in_turn_changes_nothing() {
    let mut chaos = chaos_fleet().await;
    chaos_drains(&chaos, 2, "all members up").await;
    for member in 0..3 {
        let role = if chaos.cluster.leader().await == member {
            "leader"
        } else {
            "follower"
        };
        chaos.cluster.kill(member);
        let what = format!("member {member} ({role}) killed");
        chaos_drains(&chaos, 4, &what).await;
        chaos_appliance_cycle(&mut chaos, &what).await;
        chaos.cluster.restart(member).await;
        let role = if chaos.cluster.leader().await == member {
            "leader"
        } else {
            "follower"
        };
        chaos.cluster.signal(member, "STOP");
        let what = format!("member {member} ({role}) frozen");
        chaos_drains(&chaos, 4, &what).await;
        chaos_appliance_cycle(&mut chaos, &what).await;
        chaos.cluster.signal(member, "CONT");
    }
    let (_, status) =
        crate::support::http_json(chaos.instances[0].admin(), "GET", "/v1/status", None, "").await;
    assert_eq!(
        status["cluster"]["members"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );

    // Quorum lost (two of three down), then back.
    chaos.cluster.kill(0);
    chaos.cluster.kill(1);
    for server in &chaos.instances {
        within(Duration::from_secs(10), "quorum lost", || async {
            !connected(server).await
        })
        .await;
    }
    chaos.cluster.run(0);
    chaos.cluster.run(1);
    chaos.cluster.wait_serving().await;
    let back = Instant::now();
    for server in &chaos.instances {
        within(
            Duration::from_secs(1),
            "connected within 1 s of the quorum's return",
            || connected(server),
        )
        .await;
    }
    eprintln!(
        "all instances connected {:?} after the quorum answered",
        back.elapsed()
    );
    chaos_drains(&chaos, 2, "quorum back").await;
}

/// With one etcd member dead, votes stay fresh: over 24 kill/restart cycles of an
/// appliance, every instance drops it within interval x fall + 1 s and takes it back
/// within interval x rise + 1 s; prints max and p99 per instance.
#[tokio::test]
async fn failover_bound_holds_over_24_cycles_with_one_etcd_member_dead() {
    let mut chaos = chaos_fleet().await;
    let leader = chaos.cluster.leader().await;
    chaos.cluster.kill(leader);
    // The bound is for a fleet whose store runs on two members of three: the cycles start
    // once the two left have elected a leader (a CI run under load once spent the first
    // cycle's 1.6 s in that election).
    chaos.cluster.leader().await;
    let mut out: Vec<Vec<Duration>> = vec![Vec::new(); chaos.instances.len()];
    let mut back: Vec<Vec<Duration>> = vec![Vec::new(); chaos.instances.len()];
    for cycle in 0..24 {
        let took = chaos_appliance_cycle(&mut chaos, &format!("cycle {cycle}, leader dead")).await;
        for (i, (o, b)) in took.into_iter().enumerate() {
            out[i].push(o);
            back[i].push(b);
        }
    }
    for i in 0..chaos.instances.len() {
        let p99 = |v: &mut Vec<Duration>| {
            v.sort();
            (v[(v.len() * 99).div_ceil(100) - 1], v[v.len() - 1])
        };
        let (out_p99, out_max) = p99(&mut out[i]);
        let (back_p99, back_max) = p99(&mut back[i]);
        eprintln!(
            "instance {i}: out p99 {out_p99:?} max {out_max:?}; back p99 {back_p99:?} max {back_max:?}"
        );
    }
}

#[tokio::test]
async fn broken_values_count_as_absent_and_a_fresh_instance_agrees() {
    let cluster = Cluster::start().await;
    let a = instance_of(&cluster, "a").await;
    let b = instance_of(&cluster, "b").await;
    for server in [&a, &b] {
        within(Duration::from_secs(10), "connected", || connected(server)).await;
    }
    let mut etcd = cluster.client().await;
    let ignored = |server: &TestServer, reason: &'static str| {
        let admin = server.admin();
        async move {
            let (_, metrics) = http(admin, "GET", "/metrics", None, "").await;
            sample(
                &metrics,
                "gto_cluster_ignored_values_total",
                &[&format!("reason=\"{reason}\"")],
            )
        }
    };

    // A valid drain, then garbage over it: every instance undrains (garbage is no drain).
    let (code, _) = change(&a, "fra-1", "drain").await;
    assert_eq!(code, 200);
    for server in [&a, &b] {
        within(Duration::from_secs(1), "drained", || async {
            server.vpn().await == DRAINED
        })
        .await;
    }
    etcd.put("/gto/test/drain/sma/fra-1", "{not json", None)
        .await
        .unwrap();
    for server in [&a, &b] {
        within(Duration::from_secs(1), "garbage is no drain", || async {
            server.vpn().await == ALL
        })
        .await;
    }
    // A drain until the year 5138 (past max_drain): ignored too.
    etcd.put(
        "/gto/test/drain/sma/ams-1",
        r#"{"since": 1, "until": 99999999999, "by": "someone"}"#,
        None,
    )
    .await
    .unwrap();
    for server in [&a, &b] {
        within(Duration::from_secs(1), "far drain ignored", || async {
            ignored(server, "invalid").await >= 2.0
        })
        .await;
        assert_eq!(server.vpn().await, ALL);
    }
    // A fresh instance reaches the same state from the same keys.
    let c = instance_of(&cluster, "c").await;
    within(Duration::from_secs(10), "connected", || connected(&c)).await;
    within(
        Duration::from_secs(2),
        "fresh instance resynced",
        || async { ignored(&c, "invalid").await >= 2.0 },
    )
    .await;
    assert_eq!(
        c.vpn().await,
        ALL,
        "a restarted instance agrees with the running ones"
    );
    assert_eq!(a.vpn().await, ALL);
}

#[tokio::test]
async fn forged_votes_count_for_nothing() {
    let cluster = Cluster::start().await;
    let (_appliances, ports) = crate::votes::appliances().await;
    let rule = "down_when = \"majority\"\nmin_voters = 2";
    let mut instances = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3"] {
        let text = crate::votes::config(&cluster.endpoints(), source, rule, ports);
        instances.push(TestServer::start(&text, ZONE).await);
    }
    for server in &instances {
        within(Duration::from_secs(10), "connected and up", || async {
            connected(server).await && crate::votes::has_fra(server).await
        })
        .await;
    }
    // Four "down" votes for fra-1 by voters that are neither instances nor agents, and
    // one in the per-endpoint format of an older gto.
    let mut etcd = cluster.client().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for voter in ["x1", "x2", "x3", "x4"] {
        let votes = serde_json::json!({ "at": now, "down": { "fra-1": "forged" } });
        etcd.put(
            format!("/gto/votes/votes/sma/{voter}"),
            votes.to_string(),
            None,
        )
        .await
        .unwrap();
    }
    let old = serde_json::json!({ "up": false, "since": now, "error": "forged", "at": now });
    etcd.put("/gto/votes/vote/sma/fra-1/x5", old.to_string(), None)
        .await
        .unwrap();
    for server in &instances {
        within(
            Duration::from_secs(2),
            "forged votes seen and ignored",
            || async {
                let (_, metrics) = http(server.admin(), "GET", "/metrics", None, "").await;
                sample(
                    &metrics,
                    "gto_cluster_ignored_values_total",
                    &["reason=\"not_a_member\""],
                ) >= 4.0
                    && sample(
                        &metrics,
                        "gto_cluster_ignored_values_total",
                        &["reason=\"unknown_key\""],
                    ) >= 1.0
            },
        )
        .await;
    }
    // An instance's own document overwritten with a forged one (no lease, fra-1 down):
    // the instance writes its own back, under its lease.
    let own = "/gto/votes/votes/sma/at-127.0.0.2";
    let forged = serde_json::json!({ "at": now, "down": { "fra-1": "forged", "ams-1": "" } });
    etcd.put(own, forged.to_string(), None).await.unwrap();
    within(Duration::from_secs(2), "own votes written back", || {
        let mut etcd = etcd.clone();
        async move {
            let response = etcd.get(own, None).await.unwrap();
            response.kvs().first().is_some_and(|kv| {
                let document: serde_json::Value =
                    serde_json::from_slice(kv.value()).unwrap_or_default();
                kv.lease() != 0 && document["down"].as_object().is_some_and(|d| d.is_empty())
            })
        }
    })
    .await;
    // Deleted: written back too.
    etcd.delete(own, None).await.unwrap();
    within(Duration::from_secs(2), "own votes written again", || {
        let mut etcd = etcd.clone();
        async move { !etcd.get(own, None).await.unwrap().kvs().is_empty() }
    })
    .await;
    // Two probe cycles later fra-1 is still answered everywhere: "2 of 6 say down" never
    // happened.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for server in &instances {
        assert!(
            crate::votes::has_fra(server).await,
            "forged votes took fra-1 out"
        );
    }
}

/// Drift is about meaning: two hosts of one fleet that differ only in per-host settings
/// (listen addresses, identity, state file, admin, probe source, instance name), comments
/// and the order of their zone file's records show equal digests and no drift; a real
/// difference in a pool is drift naming the pool.
#[tokio::test]
async fn drift_counts_meaning_not_per_host_text() {
    let etcd = crate::fleet::Etcd::start().await;
    let zone_reordered = {
        let mut lines: Vec<&str> = ZONE.lines().collect();
        let records: Vec<&str> = lines.split_off(lines.len() - 4);
        let mut text = lines.join("\n") + "\n; reordered, with a comment\n";
        for line in records.iter().rev() {
            text.push_str(line);
            text.push('\n');
        }
        text
    };
    let host = |name: &str, extra_server: &str, zone: String, pool_extra: &str| {
        let text = fleet_config(&etcd.url(), name, "")
            .replace("[server]\n", &format!("[server]\n{extra_server}\n"))
            .replace(
                "addresses = [\"203.0.113.30\"]",
                &format!("addresses = [\"203.0.113.30\"]\n{pool_extra}"),
            );
        (format!("# host {name}\n{text}"), zone)
    };
    let (ns1, zone1) = host(
        "ns1",
        "identity = \"ns1\"\nworkers = 1",
        ZONE.to_string(),
        "",
    );
    let (ns2, zone2) = host(
        "ns2",
        "identity = \"ns2\"\nworkers = 2\ntcp_idle_timeout = \"12s\"",
        zone_reordered,
        "",
    );
    // Per-host probe source and region too.
    let ns2 = ns2.replace("lease_ttl = \"2s\"", "lease_ttl = \"2s\"\nregion = \"eu\"")
        + "\n[health]\nsource = \"127.0.0.1\"\n";
    let (ns3, zone3) = host("ns3", "", ZONE.to_string(), "weight = 7");
    let token = [("admin.token", format!("{TOKEN}\n"))];
    let files: Vec<(&str, &str)> = token.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let a = TestServer::start_with_files(&ns1, &zone1, &files).await;
    let b = TestServer::start_with_files(&ns2, &zone2, &files).await;
    for server in [&a, &b] {
        within(Duration::from_secs(10), "connected", || connected(server)).await;
    }
    let status = |server: &TestServer| {
        let admin = server.admin();
        async move {
            crate::support::http_json(admin, "GET", "/v1/status", None, "")
                .await
                .1
        }
    };
    within(Duration::from_secs(2), "both see each other", || async {
        status(&a).await["cluster"]["instances"]
            .as_array()
            .map_or(0, Vec::len)
            == 2
    })
    .await;
    let (sa, sb) = (status(&a).await, status(&b).await);
    assert_eq!(sa["config_digest"], sb["config_digest"], "{sa}\n{sb}");
    for s in [&sa, &sb] {
        assert_eq!(s["cluster"]["config_drift"], false, "{s}");
    }
    // A real difference: ns3's pool gives nyc-1 another weight.
    let c = TestServer::start_with_files(&ns3, &zone3, &files).await;
    within(Duration::from_secs(10), "connected", || connected(&c)).await;
    within(Duration::from_secs(2), "drift seen", || async {
        status(&a).await["cluster"]["config_drift"] == true
    })
    .await;
    let sa = status(&a).await;
    let ns3_seen = sa["cluster"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == "ns3")
        .unwrap()
        .clone();
    assert_eq!(
        ns3_seen["config_differs"],
        serde_json::json!(["pool sma"]),
        "{ns3_seen}"
    );
    let (_, metrics) = http(a.admin(), "GET", "/metrics", None, "").await;
    assert_eq!(sample(&metrics, "gto_cluster_config_drift", &[]), 1.0);
}

/// Liveness: an instance's `last_seen` follows its heartbeat (every half lease), so a
/// live instance is seen again and again, and a frozen one (SIGSTOP: no heartbeat, no
/// keep-alive) is shown as not alive and then gone within its lease.
#[tokio::test]
async fn last_seen_is_a_heartbeat_and_a_frozen_instance_goes() {
    let etcd = crate::fleet::Etcd::start().await;
    let a = crate::fleet::instance(&etcd.url(), "a").await;
    within(Duration::from_secs(10), "connected", || connected(&a)).await;
    let dir = tempfile::tempdir().unwrap();
    let text = fleet_config(&etcd.url(), "b", "")
        .replace("token_file = \"admin.token\"", "")
        .replace("listen = \"127.0.0.1:0\"", "enabled = false");
    std::fs::write(dir.path().join("gto.toml"), text).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let mut b = crate::support::RealGto::run(&dir.path().join("gto.toml"));
    b.wait_for_log("fleet store connected").await;
    let seen_b = || async {
        let status = crate::support::http_json(a.admin(), "GET", "/v1/status", None, "")
            .await
            .1;
        status["cluster"]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["instance"] == "b")
            .cloned()
    };
    within(Duration::from_secs(2), "b seen", || async {
        seen_b().await.is_some()
    })
    .await;
    let (_, metrics) = http(a.admin(), "GET", "/metrics", None, "").await;
    assert_eq!(sample(&metrics, "gto_cluster_instances", &[]), 2.0);
    let first = seen_b().await.unwrap()["last_seen"].clone();
    within(
        Duration::from_secs(3),
        "b's heartbeat moves last_seen",
        || async {
            seen_b()
                .await
                .is_some_and(|b| b["last_seen"] != first && b["alive"] == true)
        },
    )
    .await;
    b.signal("STOP");
    within(
        Duration::from_secs(3),
        "b not alive within its lease (2 s)",
        || async { seen_b().await.is_none_or(|b| b["alive"] == false) },
    )
    .await;
    within(
        Duration::from_secs(5),
        "b gone once its lease expired",
        || async { seen_b().await.is_none() },
    )
    .await;
    let (_, metrics) = http(a.admin(), "GET", "/metrics", None, "").await;
    assert_eq!(
        sample(&metrics, "gto_cluster_instances", &[]),
        1.0,
        "only a is left"
    );
    b.signal("CONT");
}

/// No health flip on a reconnect or resync: an instance that loses etcd (its own
/// verdicts decide) and gets it back (the fleet's votes count again, read afresh) flips
/// nothing while every appliance stays up.
#[tokio::test]
async fn no_health_flip_on_reconnect() {
    use crate::votes::SOURCES;
    let etcd = crate::fleet::Etcd::start().await;
    let relay = crate::fleet::Relay::start(etcd.port).await;
    let (_appliances, ports) = crate::votes::appliances().await;
    let rule = "down_when = \"majority\"\nmin_voters = 2";
    let through_relay = format!("http://{}", relay.addr);
    let a = TestServer::start(
        &crate::votes::config(&through_relay, SOURCES[0], rule, ports),
        ZONE,
    )
    .await;
    let b = TestServer::start(
        &crate::votes::config(&etcd.url(), SOURCES[1], rule, ports),
        ZONE,
    )
    .await;
    for server in [&a, &b] {
        within(Duration::from_secs(10), "connected and up", || async {
            connected(server).await && crate::votes::has_fra(server).await
        })
        .await;
    }
    let flips = |server: &TestServer| {
        let admin = server.admin();
        async move {
            let (_, metrics) = http(admin, "GET", "/metrics", None, "").await;
            sample(&metrics, "gto_health_flips_total", &[])
        }
    };
    let before = (flips(&a).await, flips(&b).await);
    for _ in 0..3 {
        relay.cut();
        within(Duration::from_secs(8), "A loses etcd", || async {
            !connected(&a).await
        })
        .await;
        relay.restore();
        within(Duration::from_secs(8), "A back", || connected(&a)).await;
    }
    assert_eq!(
        (flips(&a).await, flips(&b).await),
        before,
        "a reconnect flipped health"
    );
}

/// Members added at run time and maintenance windows with one etcd member of three dead,
/// then (the dead one back) with one frozen (SIGSTOP): written through one instance, they
/// reach the other.
#[tokio::test]
async fn members_and_windows_reach_the_fleet_with_one_etcd_member_dead_or_frozen() {
    let mut cluster = Cluster::start().await;
    let a = instance_of(&cluster, "a").await;
    let b = instance_of(&cluster, "b").await;
    within(Duration::from_secs(10), "connected", || async {
        connected(&a).await && connected(&b).await
    })
    .await;
    let member_on_b = |name: &'static str| {
        let b = &b;
        async move {
            let s = crate::fleet::status(b).await;
            s["endpoints"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["member"] == name))
        }
    };
    for (round, name) in [("dead", "lon-1"), ("frozen", "lon-2")] {
        let victim = cluster.leader().await;
        if round == "dead" {
            cluster.kill(victim);
        } else {
            cluster.signal(victim, "STOP");
        }
        let (code, body) = crate::support::http_json(
            a.admin(),
            "PUT",
            &format!("/v1/pools/sma/members/{name}"),
            Some(TOKEN),
            r#"{"addresses": ["192.0.2.77"]}"#,
        )
        .await;
        assert_eq!(code, 200, "{round}: {body}");
        within(Duration::from_secs(5), "the member reaches b", || {
            member_on_b(name)
        })
        .await;
        let at = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + Duration::from_secs(3600),
        )
        .to_string();
        let (code, body) = crate::support::http_json(
            a.admin(),
            "POST",
            "/v1/drain",
            Some(TOKEN),
            &format!(r#"{{"members": ["sma/{name}"], "at": "{at}", "for": "1h"}}"#),
        )
        .await;
        assert_eq!(code, 200, "{round}: {body}");
        within(Duration::from_secs(5), "the window reaches b", || async {
            let s = crate::fleet::status(&b).await;
            crate::real::member(&s, name)["window"]["from"] == at
        })
        .await;
        if round == "frozen" {
            cluster.signal(victim, "CONT");
        } else {
            cluster.run(victim);
        }
        cluster.wait_serving().await;
    }
}
