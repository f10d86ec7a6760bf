//! Issue 12: health seen from several places. Three gto instances share a real etcd,
//! each probing from its own source address (127.0.0.2, .3, .4, `[health] source`); the
//! test appliances cut off probes from chosen source addresses (a broken path from one
//! vantage point), and the pool's rule decides for all.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::fleet::{Etcd, within};
use crate::support::appliance::{Appliance, Speaks};
use crate::support::{TestServer, ZONE, http_json};

pub(crate) const SOURCES: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
pub(crate) const INTERVAL_MS: u64 = 300;
pub(crate) const FALL: u64 = 2;

/// Three HTTP appliances on 127.0.1.1-3 (fra-1, ams-1, nyc-1) and their ports.
pub(crate) async fn appliances() -> (Vec<Appliance>, [u16; 3]) {
    let mut appliances = Vec::new();
    for ip in ["127.0.1.1", "127.0.1.2", "127.0.1.3"] {
        appliances.push(Appliance::start(ip, Speaks::Http).await.0);
    }
    let ports = [
        appliances[0].addr.port(),
        appliances[1].addr.port(),
        appliances[2].addr.port(),
    ];
    (appliances, ports)
}

/// A config probing the three appliances from `source`, in the fleet at `url`.
pub(crate) fn config(url: &str, source: &str, rule: &str, ports: [u16; 3]) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[admin]
listen = "127.0.0.1:0"

[health]
source = "{source}"

[cluster]
etcd = ["{url}"]
name = "votes"
instance = "at-{source}"
lease_ttl = "2s"

[[zone]]
origin = "gto.example.com."
file = "gto.example.com.zone"

[[service]]
name = "vpn.gto.example.com."
pool = "sma"
answers = 3
ttl = 5

[[pool]]
name = "sma"
check = {{ kind = "http", path = "/", interval = "{INTERVAL_MS}ms", timeout = "200ms", rise = 1, fall = {FALL} }}
{rule}
[[pool.member]]
name = "fra-1"
addresses = ["127.0.1.1"]
check = {{ port = {} }}
[[pool.member]]
name = "ams-1"
addresses = ["127.0.1.2"]
check = {{ port = {} }}
[[pool.member]]
name = "nyc-1"
addresses = ["127.0.1.3"]
check = {{ port = {} }}
"#,
        ports[0], ports[1], ports[2]
    )
}

struct Fleet {
    etcd: Etcd,
    appliances: Vec<Appliance>,
    instances: Vec<TestServer>,
}

async fn fleet(rule: &str, sources: &[&str]) -> Fleet {
    let etcd = Etcd::start().await;
    let (appliances, ports) = appliances().await;
    let mut instances = Vec::new();
    for source in sources {
        instances.push(TestServer::start(&config(&etcd.url(), source, rule, ports), ZONE).await);
    }
    let fleet = Fleet {
        etcd,
        appliances,
        instances,
    };
    // Every instance connected and seeing every other one's verdict on fra-1.
    for server in &fleet.instances {
        within(Duration::from_secs(10), "all verdicts seen", || async {
            let status = http_json(server.admin(), "GET", "/v1/status", None, "")
                .await
                .1;
            voters(&status, "fra-1") + 1 >= sources.len() as u64
        })
        .await;
    }
    fleet
}

fn endpoint(status: &serde_json::Value, member: &str) -> serde_json::Value {
    status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["member"] == member)
        .cloned()
        .unwrap()
}

fn voters(status: &serde_json::Value, member: &str) -> u64 {
    endpoint(status, member)["votes"]["voters"]
        .as_array()
        .map_or(0, |v| v.len() as u64)
}

async fn addresses(server: &TestServer) -> BTreeSet<String> {
    server.vpn().await.into_iter().collect()
}

pub(crate) async fn has_fra(server: &TestServer) -> bool {
    addresses(server).await.contains("127.0.1.1")
}

fn block(appliance: &Appliance, source: &str) {
    appliance
        .blocked
        .lock()
        .unwrap()
        .insert(source.parse().unwrap());
}

/// Long enough for a probe cycle to fail `FALL` times and the verdicts to travel.
const SETTLE: Duration = Duration::from_millis(INTERVAL_MS * (FALL + 3));

#[tokio::test]
async fn majority_keeps_what_one_vantage_point_loses_and_drops_what_two_do() {
    let fleet = fleet("down_when = \"majority\"\nmin_voters = 2", &SOURCES).await;
    let fra = &fleet.appliances[0];
    block(fra, SOURCES[0]);
    // The instance at .2 sees fra-1 down ...
    let first = &fleet.instances[0];
    within(
        Duration::from_secs(5),
        "its own verdict goes down",
        || async {
            let status = http_json(first.admin(), "GET", "/v1/status", None, "")
                .await
                .1;
            endpoint(&status, "fra-1")["votes"]["local"] == "down"
        },
    )
    .await;
    // ... but the majority keeps it in every instance's answers.
    tokio::time::sleep(SETTLE).await;
    for server in &fleet.instances {
        assert!(has_fra(server).await, "one broken path must not drop fra-1");
    }
    let status = http_json(first.admin(), "GET", "/v1/status", None, "")
        .await
        .1;
    let votes = &endpoint(&status, "fra-1")["votes"];
    assert_eq!(votes["decided_by"], "1 of 3 voters say down", "{votes}");
    assert_eq!(votes["outcome"], "up");
    assert_eq!(votes["voters"].as_array().unwrap().len(), 2, "{votes}");
    // Their own source addresses are per-host settings, not config drift.
    assert_eq!(
        status["cluster"]["config_drift"], false,
        "{}",
        status["cluster"]
    );
    // Explain shows the same, per candidate.
    let (_, explained) = http_json(
        first.admin(),
        "GET",
        "/v1/explain?name=vpn.gto.example.com.&client=192.0.2.1",
        None,
        "",
    )
    .await;
    let candidate = explained["gslb"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["member"] == "fra-1")
        .cloned()
        .unwrap();
    assert_eq!(candidate["health"], "up", "{candidate}");
    assert_eq!(candidate["votes"]["local"], "down", "{candidate}");
    assert_eq!(candidate["votes"]["decided_by"], "1 of 3 voters say down");

    // Unreachable from two: out of all three, also from the one that still reaches it.
    block(fra, SOURCES[1]);
    for server in &fleet.instances {
        within(Duration::from_secs(5), "two of three drop it", || async {
            !has_fra(server).await
        })
        .await;
    }
    let third = &fleet.instances[2];
    let status = http_json(third.admin(), "GET", "/v1/status", None, "")
        .await
        .1;
    let votes = &endpoint(&status, "fra-1")["votes"];
    assert_eq!(votes["local"], "up", "{votes}");
    assert_eq!(votes["outcome"], "down");
    let (_, metrics) = crate::support::http(third.admin(), "GET", "/metrics", None, "").await;
    assert_eq!(
        crate::support::sample(
            &metrics,
            "gto_member_votes",
            &["member=\"fra-1\"", "verdict=\"down\""]
        ),
        2.0
    );
    drop(fleet.etcd);
}

#[tokio::test]
async fn all_waits_for_every_voter_and_any_needs_one() {
    let all = fleet("down_when = \"all\"", &SOURCES).await;
    block(&all.appliances[0], SOURCES[0]);
    block(&all.appliances[0], SOURCES[1]);
    tokio::time::sleep(SETTLE).await;
    for server in &all.instances {
        assert!(
            has_fra(server).await,
            "under all, two of three are not enough"
        );
    }
    block(&all.appliances[0], SOURCES[2]);
    for server in &all.instances {
        within(Duration::from_secs(5), "every voter says down", || async {
            !has_fra(server).await
        })
        .await;
    }
    drop(all);

    let any = fleet("down_when = \"any\"", &SOURCES).await;
    block(&any.appliances[0], SOURCES[1]);
    for server in &any.instances {
        within(Duration::from_secs(5), "one voter is enough", || async {
            !has_fra(server).await
        })
        .await;
    }
}

#[tokio::test]
async fn a_probe_only_agent_votes() {
    // Two DNS instances (.2, .3) and an agent (`gto probe`, .4).
    let fleet = fleet("down_when = \"majority\"", &SOURCES[..2]).await;
    let dir = tempfile::tempdir().unwrap();
    let ports = [
        fleet.appliances[0].addr.port(),
        fleet.appliances[1].addr.port(),
        fleet.appliances[2].addr.port(),
    ];
    std::fs::write(
        dir.path().join("gto.toml"),
        // A setting the servers do not have: the agent's config differs from theirs.
        config(
            &fleet.etcd.url(),
            SOURCES[2],
            "down_when = \"majority\"",
            ports,
        ) + "\n[rrl]\nenabled = false\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let mut agent = crate::support::RealGto::spawn(&[
        std::ffi::OsStr::new("probe"),
        std::ffi::OsStr::new("--config"),
        dir.path().join("gto.toml").as_os_str(),
    ]);
    agent.wait_for_log("fleet store connected").await;
    let first = &fleet.instances[0];
    within(
        Duration::from_secs(5),
        "the agent's verdict arrives",
        || async {
            let status = http_json(first.admin(), "GET", "/v1/status", None, "")
                .await
                .1;
            voters(&status, "fra-1") == 2
        },
    )
    .await;
    // .2 alone says down: 1 of 3, stays.
    block(&fleet.appliances[0], SOURCES[0]);
    tokio::time::sleep(SETTLE).await;
    assert!(has_fra(first).await);
    // The agent's path breaks too: 2 of 3, out everywhere.
    block(&fleet.appliances[0], SOURCES[2]);
    for server in &fleet.instances {
        within(
            Duration::from_secs(5),
            "the agent's vote counts",
            || async { !has_fra(server).await },
        )
        .await;
    }
    agent.signal("TERM");
    assert!(agent.exit().await.success());
    // Its config differs from the servers' ([rrl]): servers do not count an agent as
    // drift, and the agent does not warn about drift it does not count either.
    let log = agent.log_to_end().await;
    assert!(!log.contains("config drift"), "{log}");
}

#[tokio::test]
async fn without_etcd_each_instance_falls_back_to_its_own_verdict() {
    let mut fleet = fleet("down_when = \"majority\"", &SOURCES).await;
    block(&fleet.appliances[0], SOURCES[0]);
    tokio::time::sleep(SETTLE).await;
    let first = &fleet.instances[0];
    assert!(has_fra(first).await, "kept by the majority");
    fleet.etcd.kill();
    within(
        Duration::from_secs(8),
        "its own verdict decides",
        || async { !has_fra(first).await },
    )
    .await;
    let status = http_json(first.admin(), "GET", "/v1/status", None, "")
        .await
        .1;
    let votes = &endpoint(&status, "fra-1")["votes"];
    assert_eq!(votes["voting"], false, "{votes}");
    assert!(
        votes["decided_by"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{votes}"
    );
    // The others still reach fra-1 and keep it.
    for server in &fleet.instances[1..] {
        assert!(has_fra(server).await);
    }
}

/// The failover bound with voting: a dead appliance leaves every instance's answers
/// within interval × fall + 1 s.
#[tokio::test]
async fn a_dead_appliance_leaves_every_instance_within_the_bound() {
    let mut fleet = fleet("down_when = \"majority\"", &SOURCES).await;
    let started = Instant::now();
    fleet.appliances[0].stop().await;
    let bound = Duration::from_millis(INTERVAL_MS * FALL + 1000);
    let mut worst = Duration::ZERO;
    for server in &fleet.instances {
        within(bound, "dead appliance out", || async {
            !has_fra(server).await
        })
        .await;
        worst = worst.max(started.elapsed());
    }
    eprintln!(
        "a dead appliance left all three instances' answers {worst:?} after it stopped (bound {bound:?})"
    );
}

/// Vote traffic at 100 pools × 100 endpoints × 3 instances: the first verdicts go out as
/// one document per pool and instance (300 keys for 30,000 verdicts), in batched requests,
/// and in steady state (nothing changing) no verdict is written, however short the probe
/// interval.
#[tokio::test]
async fn vote_traffic_at_100_pools_of_100_endpoints_on_3_instances() {
    let etcd = Etcd::start().await;
    let (appliance, _) = Appliance::start("127.0.1.9", Speaks::Tcp).await;
    let port = appliance.addr.port();
    let mut pools = String::new();
    for p in 0..100 {
        pools.push_str(&format!(
            "[[pool]]\nname = \"p{p}\"\ncheck = {{ kind = \"tcp\", port = {port}, interval = \"250ms\", timeout = \"200ms\" }}\n"
        ));
        for m in 0..100 {
            pools.push_str(&format!(
                "[[pool.member]]\nname = \"m{m}\"\naddresses = [\"127.0.1.9\"]\n"
            ));
        }
    }
    let mut instances = Vec::new();
    for source in SOURCES {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nenabled = false\n[health]\nsource = \"{source}\"\n\
             [cluster]\netcd = [\"{}\"]\nname = \"scale\"\ninstance = \"at-{source}\"\nlease_ttl = \"10s\"\n\
             [[zone]]\norigin = \"gto.example.com.\"\nfile = \"gto.example.com.zone\"\n\
             [[service]]\nname = \"vpn.gto.example.com.\"\npool = \"p0\"\n{pools}",
            etcd.url()
        );
        instances.push(TestServer::start(&text, ZONE).await);
    }
    let mut client = etcd.client().await;
    let count = |client: &mut etcd_client::Client| {
        let mut client = client.clone();
        async move {
            client
                .get(
                    "/gto/scale/votes/",
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_count_only(),
                    ),
                )
                .await
                .unwrap()
                .count()
        }
    };
    // Every document holds a verdict on each of its pool's 100 endpoints.
    let all_published = |client: &mut etcd_client::Client| {
        let mut client = client.clone();
        async move {
            let response = client
                .get(
                    "/gto/scale/votes/",
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .unwrap();
            response.kvs().iter().all(|kv| {
                serde_json::from_slice::<gto::cluster::votes::PoolVotes>(kv.value())
                    .is_ok_and(|document| document.up.len() + document.down.len() == 100)
            })
        }
    };
    let started = Instant::now();
    let before = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    loop {
        if count(&mut client).await == 300 && all_published(&mut client).await {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "verdicts not all published"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let published = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
        - before;
    let took = started.elapsed();
    // Steady state: nothing changes for 10 s of probes every 250 ms.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quiet_from = client
        .get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Verdicts written since (instances' heartbeats, every half lease, are not verdicts).
    let quiet = client
        .get(
            "/gto/scale/votes/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_min_mod_revision(quiet_from + 1),
            ),
        )
        .await
        .unwrap()
        .kvs()
        .len();
    eprintln!(
        "30,000 verdicts (100 pools x 100 endpoints x 3 instances) published in {took:?} with \
         {published} etcd writes (revisions); steady state: {quiet} documents written in 10 s at a \
         250 ms probe interval"
    );
    assert!(
        published <= 60,
        "{published} writes for 300 documents in requests of up to {}",
        gto::cluster::VOTE_BATCH
    );
    assert_eq!(quiet, 0, "verdicts were written while nothing changed");
    drop(instances);
}

#[test]
fn voting_and_source_mistakes_are_located_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        "http://127.0.0.1:2379",
        "not-an-ip",
        "down_when = \"most\"\nmin_voters = 0\nvote_scope = \"planet\"",
        [1, 2, 3],
    );
    std::fs::write(dir.path().join("gto.toml"), text).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let (code, _, stderr) = crate::check::check(dir.path());
    assert_eq!(code, 64, "{stderr}");
    for expected in [
        "health.source: \"not-an-ip\" is not an IPv4 address",
        "pool.sma.down_when: not \"majority\", \"all\" or \"any\"",
        "pool.sma.min_voters: must be between 1 and 1000",
        "pool.sma.vote_scope: not \"all\" or \"region\"",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    // gto probe without a fleet says why, exit 64.
    let plain = crate::support::config("");
    std::fs::write(dir.path().join("plain.toml"), plain).unwrap();
    let output = crate::support::gto_bin()
        .args(["probe", "--config"])
        .arg(dir.path().join("plain.toml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs a [cluster] table"));
}

/// Regional health: two instances in "eu" cannot reach the appliance, the one in "us" can.
/// With `vote_scope = "region"` (and one voter enough), eu drops it and us keeps it.
#[tokio::test]
async fn regional_scope_judges_with_the_instances_own_region() {
    let etcd = Etcd::start().await;
    let (appliances, ports) = appliances().await;
    let rule = "down_when = \"majority\"\nmin_voters = 1\nvote_scope = \"region\"";
    let mut instances = Vec::new();
    for (source, region) in SOURCES.iter().zip(["eu", "eu", "us"]) {
        let text = config(&etcd.url(), source, rule, ports).replace(
            "lease_ttl = \"2s\"",
            &format!("lease_ttl = \"2s\"\nregion = \"{region}\""),
        );
        instances.push(TestServer::start(&text, ZONE).await);
    }
    for server in &instances {
        within(Duration::from_secs(10), "all verdicts seen", || async {
            let status = http_json(server.admin(), "GET", "/v1/status", None, "")
                .await
                .1;
            voters(&status, "fra-1") == 2
        })
        .await;
    }
    block(&appliances[0], SOURCES[0]);
    block(&appliances[0], SOURCES[1]);
    for server in &instances[..2] {
        within(Duration::from_secs(5), "eu drops it", || async {
            !has_fra(server).await
        })
        .await;
    }
    tokio::time::sleep(SETTLE).await;
    assert!(
        has_fra(&instances[2]).await,
        "us still reaches it and keeps it"
    );
    let status = http_json(instances[2].admin(), "GET", "/v1/status", None, "")
        .await
        .1;
    let votes = &endpoint(&status, "fra-1")["votes"];
    assert_eq!(votes["decided_by"], "0 of 1 voters say down", "{votes}");
}

/// A restarting vantage point that cannot reach an appliance the others reach does not
/// take it out of its answers on its own verdict before it has the fleet's votes (the
/// start-up grace); once the votes count, the majority keeps it in.
#[tokio::test]
async fn a_restarting_vantage_waits_for_the_fleets_votes() {
    let rule = "down_when = \"majority\"\nmin_voters = 2";
    let fleet = fleet(rule, &SOURCES[..2]).await;
    let ports = [
        fleet.appliances[0].addr.port(),
        fleet.appliances[1].addr.port(),
        fleet.appliances[2].addr.port(),
    ];
    // The vantage at .2 restarts, its path to fra-1 broken, and etcd out of its reach.
    block(&fleet.appliances[0], SOURCES[0]);
    let relay = crate::fleet::Relay::start(fleet.etcd.port).await;
    relay.cut();
    let url = format!("http://{}", relay.addr);
    let restarted = TestServer::start(&config(&url, SOURCES[0], rule, ports), ZONE).await;
    // Its own verdict goes down within a few probes, yet fra-1 stays in its answers.
    within(
        Duration::from_secs(5),
        "its own verdict goes down",
        || async {
            let status = http_json(restarted.admin(), "GET", "/v1/status", None, "")
                .await
                .1;
            endpoint(&status, "fra-1")["votes"]["local"] == "down"
        },
    )
    .await;
    assert!(
        has_fra(&restarted).await,
        "one vantage point's verdict must not drop fra-1 before the fleet's votes"
    );
    // etcd reachable again: the votes count, and the majority keeps fra-1.
    relay.restore();
    within(
        Duration::from_secs(10),
        "the fleet's votes count",
        || async {
            let status = http_json(restarted.admin(), "GET", "/v1/status", None, "")
                .await
                .1;
            voters(&status, "fra-1") >= 1
        },
    )
    .await;
    tokio::time::sleep(SETTLE).await;
    assert!(has_fra(&restarted).await, "the majority keeps fra-1");
    assert!(gto::health::START_GRACE > Duration::from_secs(SETTLE.as_secs() + 1));
}
