//! Ranking end to end over real UDP: geography (networks table and a MaxMind database),
//! affinity, load watermarks, and the ECS scope that tells resolvers how to cache.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};

use crate::support::{PREAMBLE, TestServer, ZONE, answers, edns, http_json, query, udp};

/// Four endpoints on three sites; networks for Europe, Asia and America, a loopback block
/// for resolvers without ECS, and a second GSLB name with the failover policy.
pub fn geo_config(extra: &str) -> String {
    format!(
        r#"{PREAMBLE}
[geo]
default = {{ lat = 40.7, lon = -74.0 }}
[[geo.network]]
cidr = "198.51.100.0/24"
location = {{ lat = 48.9, lon = 2.4 }}
[[geo.network]]
cidr = "203.0.113.0/24"
location = {{ lat = 35.7, lon = 139.7 }}
[[geo.network]]
cidr = "127.0.0.0/24"
location = {{ lat = 1.35, lon = 103.8 }}
[[geo.network]]
cidr = "2001:db8:e0::/48"
location = {{ region = "eu" }}
[[geo.region]]
name = "eu"
prefer = ["eu", "us", "ap"]

[[service]]
name = "vpn.gto.example.com."
pool = "sma"
policy = "geo"
answers = 2
ttl = 20

[[service]]
name = "plain.gto.example.com."
pool = "sma"
policy = "failover"
answers = 1

[[pool]]
name = "sma"
load = {{ low = 0.7, high = 0.9, smoothing = 1.0, slow_start = "0s" }}
[[pool.member]]
name = "fra-1"
addresses = ["192.0.2.11"]
location = {{ lat = 50.1, lon = 8.7, region = "eu" }}
[[pool.member]]
name = "fra-2"
addresses = ["192.0.2.12"]
location = {{ lat = 50.1, lon = 8.7, region = "eu" }}
[[pool.member]]
name = "nyc-1"
addresses = ["192.0.2.21"]
location = {{ lat = 40.7, lon = -74.0, region = "us" }}
capacity = 100
[[pool.member]]
name = "tyo-1"
addresses = ["192.0.2.31"]
location = {{ lat = 35.7, lon = 139.7, region = "ap" }}
{extra}
"#
    )
}

pub(crate) fn ecs(subnet: &str, prefix: u8) -> Edns {
    let mut edns = edns(1232);
    edns.options_mut()
        .insert(EdnsOption::Subnet(ClientSubnet::new(
            subnet.parse().unwrap(),
            prefix,
            0,
        )));
    edns
}

pub(crate) fn scope(reply: &Message) -> Option<u8> {
    match reply.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(subnet) => Some(subnet.scope_prefix()),
        _ => None,
    }
}

async fn ask(
    server: &TestServer,
    name: &str,
    subnet: &str,
    prefix: u8,
) -> (Vec<String>, Option<u8>) {
    let (reply, _) = udp(
        server.addr,
        &query(name, RecordType::A, Some(ecs(subnet, prefix))),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    (answers(&reply), scope(&reply))
}

#[tokio::test]
async fn ecs_from_different_subnets_gets_the_nearest_site_first_with_a_matching_scope() {
    let server = TestServer::start(&geo_config(""), ZONE).await;
    // Paris: both Frankfurt endpoints (they tie, so affinity orders them), scope /24.
    let (paris, scope_paris) = ask(&server, "vpn.gto.example.com.", "198.51.100.0", 24).await;
    let mut sorted = paris.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["192.0.2.11", "192.0.2.12"]);
    assert_eq!(scope_paris, Some(24));
    // Tokyo: the Tokyo endpoint, then the next nearest (Frankfurt is nearer than New York).
    let (tokyo, scope_tokyo) = ask(&server, "vpn.gto.example.com.", "203.0.113.0", 24).await;
    assert_eq!(tokyo[0], "192.0.2.31");
    assert_eq!(scope_tokyo, Some(24), "the network's length");
    // Unplaced: the default location (New York).
    let (elsewhere, scope_elsewhere) = ask(&server, "vpn.gto.example.com.", "100.64.1.0", 24).await;
    assert_eq!(elsewhere[0], "192.0.2.21");
    assert_eq!(
        scope_elsewhere,
        Some(24),
        "unmatched: the longest configured v4 prefix"
    );
    // A region preference list: eu, then us.
    let (v6_reply, _) = udp(
        server.addr,
        &query(
            "vpn.gto.example.com.",
            RecordType::A,
            Some(ecs("2001:db8:e0::", 48)),
        ),
    )
    .await;
    let eu = answers(&v6_reply);
    assert!(
        eu.iter().all(|a| a == "192.0.2.11" || a == "192.0.2.12"),
        "{eu:?}"
    );
    assert_eq!(
        scope(&v6_reply),
        Some(56),
        "the affinity prefix is longer than the /48 network"
    );
    // The failover name does not depend on the client: scope 0, same answer everywhere.
    for subnet in ["198.51.100.0", "203.0.113.0"] {
        let (plain, plain_scope) = ask(&server, "plain.gto.example.com.", subnet, 24).await;
        assert_eq!(
            (plain, plain_scope),
            (vec!["192.0.2.11".to_string()], Some(0))
        );
    }
}

#[tokio::test]
async fn without_ecs_the_resolver_address_decides() {
    let server = TestServer::start(&geo_config(""), ZONE).await;
    // 127.0.0.0/24 is placed in Singapore: Tokyo is nearest.
    let from = |ip: &str| ip.parse::<IpAddr>().unwrap();
    let reply = udp_from(
        from("127.0.0.1"),
        server.addr,
        &query("vpn.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(answers(&reply)[0], "192.0.2.31");
    assert!(reply.edns.is_none());
    // 127.0.1.1 is in no network: the default (New York).
    let reply = udp_from(
        from("127.0.1.1"),
        server.addr,
        &query("vpn.gto.example.com.", RecordType::A, None),
    )
    .await;
    assert_eq!(answers(&reply)[0], "192.0.2.21");
    // ECS /0 means "do not tailor": the resolver address decides, scope 0.
    let reply = udp_from(
        from("127.0.0.1"),
        server.addr,
        &query(
            "vpn.gto.example.com.",
            RecordType::A,
            Some(ecs("0.0.0.0", 0)),
        ),
    )
    .await;
    assert_eq!(answers(&reply)[0], "192.0.2.31");
    assert_eq!(scope(&reply), Some(0));
}

async fn udp_from(source: IpAddr, server: SocketAddr, message: &Message) -> Message {
    let socket = tokio::net::UdpSocket::bind(SocketAddr::new(source, 0))
        .await
        .unwrap();
    socket
        .send_to(&message.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buffer = [0u8; 4096];
    let len = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    Message::from_vec(&buffer[..len]).unwrap()
}

#[tokio::test]
async fn ignoring_ecs_is_a_per_service_switch() {
    let config = geo_config("").replace(
        "policy = \"geo\"\nanswers = 2",
        "policy = \"geo\"\nanswers = 2\necs = false",
    );
    let server = TestServer::start(&config, ZONE).await;
    // Tokyo's subnet in ECS, but the resolver (127.0.1.1, unplaced) decides: New York.
    let reply = udp_from(
        "127.0.1.1".parse().unwrap(),
        server.addr,
        &query(
            "vpn.gto.example.com.",
            RecordType::A,
            Some(ecs("203.0.113.0", 24)),
        ),
    )
    .await;
    assert_eq!(answers(&reply)[0], "192.0.2.21");
    assert_eq!(scope(&reply), Some(0), "ECS was not used");
}

/// First answers of 256 client /24s under 10.x.y.0/24 (all unplaced: affinity decides).
async fn first_answers(server: &TestServer, name: &str) -> Vec<String> {
    let mut firsts = Vec::new();
    for i in 0..256u32 {
        let subnet = format!("10.{}.{}.0", i / 256, i % 256);
        let (got, _) = ask(server, name, &subnet, 24).await;
        firsts.push(got[0].clone());
    }
    firsts
}

const WEIGHTED: &str = r#"
[[service]]
name = "spread.gto.example.com."
pool = "sma"
policy = "weighted"
answers = 1
"#;

#[tokio::test]
async fn an_overloaded_endpoint_gets_no_new_clients_and_gets_them_back_below_low() {
    let token = "load-token-0123456789-abcdef";
    let config = geo_config(WEIGHTED).replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"",
    );
    let server = TestServer::start_with_files(&config, ZONE, &[("admin.token", token)]).await;
    let admin = server.admin();
    let before = first_answers(&server, "spread.gto.example.com.").await;
    let counts = |firsts: &[String]| {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for f in firsts {
            *counts.entry(f.clone()).or_default() += 1;
        }
        counts
    };
    assert_eq!(
        counts(&before).len(),
        4,
        "weighted spreads over all four: {:?}",
        counts(&before)
    );
    let nyc = "192.0.2.21";

    let push = |sessions: u32| {
        let body = format!(r#"{{"sessions": {sessions}}}"#);
        async move {
            http_json(
                admin,
                "PUT",
                "/v1/members/sma/nyc-1/load",
                Some(token),
                &body,
            )
            .await
        }
    };
    let (code, body) = push(95).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["endpoint"]["overloaded"], true);
    let during = first_answers(&server, "spread.gto.example.com.").await;
    assert!(
        !during.iter().any(|f| f == nyc),
        "an overloaded endpoint got new clients"
    );
    // Only nyc-1's clients moved.
    for (b, d) in before.iter().zip(&during) {
        assert!(b == d || b == nyc, "{b} -> {d}");
    }
    // Between the watermarks it stays out (hysteresis).
    push(80).await;
    assert!(
        !first_answers(&server, "spread.gto.example.com.")
            .await
            .iter()
            .any(|f| f == nyc)
    );
    // Below low: its clients come back, the very same ones.
    let (_, body) = push(50).await;
    assert_eq!(body["endpoint"]["overloaded"], false);
    assert_eq!(
        first_answers(&server, "spread.gto.example.com.").await,
        before
    );
}

#[tokio::test]
async fn overloaded_is_still_answered_when_nothing_else_can_serve() {
    let token = "load-token-0123456789-abcdef";
    let config = geo_config("").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"",
    );
    let server = TestServer::start_with_files(&config, ZONE, &[("admin.token", token)]).await;
    let admin = server.admin();
    for member in ["fra-1", "fra-2", "tyo-1"] {
        http_json(
            admin,
            "POST",
            &format!("/v1/members/sma/{member}/drain"),
            Some(token),
            "",
        )
        .await;
    }
    http_json(
        admin,
        "PUT",
        "/v1/members/sma/nyc-1/load",
        Some(token),
        r#"{"sessions": 99}"#,
    )
    .await;
    let (got, _) = ask(&server, "vpn.gto.example.com.", "198.51.100.0", 24).await;
    assert_eq!(got, vec!["192.0.2.21"]);
    let (_, explained) = http_json(
        admin,
        "GET",
        "/v1/explain?name=vpn.gto.example.com&client=198.51.100.1",
        None,
        "",
    )
    .await;
    let first = &explained["gslb"]["candidates"][0];
    assert_eq!(first["member"], "nyc-1");
    assert_eq!(first["overloaded"], true);
    assert!(
        first["reason"].as_str().unwrap().contains("overloaded"),
        "{explained}"
    );
}

#[tokio::test]
async fn a_maxmind_database_places_clients_the_table_does_not() {
    use serde::Serialize;
    #[derive(Serialize)]
    struct Location {
        latitude: f64,
        longitude: f64,
    }
    #[derive(Serialize)]
    struct Country {
        iso_code: &'static str,
    }
    #[derive(Serialize)]
    struct City {
        location: Location,
        country: Country,
    }
    let mut writer = mmdb_writer::Writer::new("GeoLite2-City");
    let tokyo = City {
        location: Location {
            latitude: 35.7,
            longitude: 139.7,
        },
        country: Country { iso_code: "JP" },
    };
    writer
        .insert("100.64.0.0/16".parse::<ipnet::IpNet>().unwrap(), &tokyo)
        .unwrap();
    let bytes = writer.to_bytes().unwrap();
    let config = geo_config("").replace("[geo]\n", "[geo]\nmmdb = \"test.mmdb\"\n");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gto.toml"), config).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    std::fs::write(dir.path().join("test.mmdb"), bytes).unwrap();
    let server = TestServer::start_in(dir).await;
    let (got, got_scope) = ask(&server, "vpn.gto.example.com.", "100.64.9.0", 24).await;
    assert_eq!(got[0], "192.0.2.31", "placed in Tokyo by the database");
    assert_eq!(got_scope, Some(24));
    // The networks table still wins where it matches.
    let (paris, _) = ask(&server, "vpn.gto.example.com.", "198.51.100.0", 24).await;
    assert!(paris[0].starts_with("192.0.2.1"));
    let (_, explained) = http_json(
        server.admin(),
        "GET",
        "/v1/explain?name=vpn.gto.example.com&client=100.64.9.1",
        None,
        "",
    )
    .await;
    assert_eq!(explained["gslb"]["location"]["source"], "database");
    assert_eq!(explained["gslb"]["location"]["region"], "JP");
    assert_eq!(explained["ecs_scope"], 24);
}

#[tokio::test]
async fn a_broken_database_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = geo_config("").replace("[geo]\n", "[geo]\nmmdb = \"broken.mmdb\"\n");
    std::fs::write(dir.path().join("gto.toml"), config).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    std::fs::write(dir.path().join("broken.mmdb"), b"not a database").unwrap();
    let errors = gto::ConfigSource::File(dir.path().join("gto.toml"))
        .load()
        .unwrap_err();
    assert!(
        errors
            .to_string()
            .contains("geo.mmdb: cannot open MaxMind database"),
        "{errors}"
    );
}

#[tokio::test]
async fn explain_shows_location_distance_and_affinity() {
    let server = TestServer::start(&geo_config(""), ZONE).await;
    let (_, explained) = http_json(
        server.admin(),
        "GET",
        "/v1/explain?name=vpn.gto.example.com&client=198.51.100.7",
        None,
        "",
    )
    .await;
    let gslb = &explained["gslb"];
    assert_eq!(gslb["policy"], "geo");
    assert_eq!(gslb["location"]["source"], "network 198.51.100.0/24");
    assert_eq!(gslb["affinity_candidates"], 2);
    let candidates = gslb["candidates"].as_array().unwrap();
    assert!(candidates[0]["distance_km"].as_f64().unwrap() < 500.0);
    assert!(candidates[0]["affinity_score"].is_number());
    assert!(candidates[2]["affinity_score"].is_null());
    assert_eq!(explained["ecs_scope"], 24);
    let (got, _) = ask(&server, "vpn.gto.example.com.", "198.51.100.0", 24).await;
    let explained_answers: Vec<String> = explained["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        got, explained_answers,
        "explain agrees with the real answer"
    );
}

/// `gto explain` and `GET /v1/explain` take the client as the prefix an ECS option
/// carries (`203.0.113.0/24`, host bits cleared as ECS clears them), placed as the query
/// path places that subnet; a /0 or a bad prefix is refused with the reason.
#[tokio::test]
async fn explain_takes_a_client_prefix_as_ecs_carries_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gto.toml");
    std::fs::write(&config, geo_config("")).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let explain = |client: &str| {
        crate::support::gto_bin()
            .args([
                std::ffi::OsStr::new("explain"),
                "--config".as_ref(),
                config.as_os_str(),
            ])
            .args(["vpn.gto.example.com.", client])
            .output()
            .unwrap()
    };
    let placed = |client: &str| {
        let output = explain(client);
        assert!(output.status.success(), "{client}: {output:?}");
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        (
            json["gslb"]["location"]["source"].clone(),
            json["answers"].clone(),
        )
    };
    let (source, answers) = placed("203.0.113.0/24");
    assert_eq!(source, "network 203.0.113.0/24", "{source}");
    assert_eq!(placed("203.0.113.77/24"), (source.clone(), answers.clone()));
    assert_eq!(placed("203.0.113.9"), (source, answers));
    for (bad, reason) in [
        ("0.0.0.0/0", "carries no address"),
        ("203.0.113.0/33", "not an IP address or a prefix"),
    ] {
        let output = explain(bad);
        assert!(!output.status.success(), "{bad}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason), "{bad}: {stderr}");
    }
}

/// `weighted` with `affinity = false`: shares hold per query, so one resolver asking
/// 1,000 times sees the weights (80/20 within 5 points), on the fast path; with the
/// default affinity the same resolver keeps one endpoint.
#[tokio::test]
async fn weighted_per_query_shares_follow_the_weights_for_one_resolver() {
    let config = |affinity: &str| {
        format!(
            "{PREAMBLE}
[[service]]
name = \"vpn.gto.example.com.\"
pool = \"w\"
policy = \"weighted\"
answers = 1
{affinity}

[[pool]]
name = \"w\"
[[pool.member]]
name = \"big\"
addresses = [\"192.0.2.81\"]
weight = 80
[[pool.member]]
name = \"small\"
addresses = [\"192.0.2.82\"]
weight = 20

[rrl]
enabled = false
"
        )
    };
    let count = |server: TestServer| async move {
        // The whole server lives until the count is done (not just its address).
        let server = server;
        let mut big = 0;
        for _ in 0..1_000 {
            let (reply, _) = udp(
                server.addr,
                &query("vpn.gto.example.com.", RecordType::A, None),
            )
            .await;
            if answers(&reply) == vec!["192.0.2.81"] {
                big += 1;
            }
        }
        big
    };
    let per_query = count(TestServer::start(&config("affinity = false"), ZONE).await).await;
    assert!(
        (750..=850).contains(&per_query),
        "{per_query} of 1000 to the weight-80 endpoint"
    );
    let sticky = count(TestServer::start(&config(""), ZONE).await).await;
    assert!(
        sticky == 0 || sticky == 1_000,
        "one resolver, one endpoint: {sticky}"
    );
}
