//! `[[override]]`: a client subnet answered from another pool (or some members) first,
//! over real UDP with ECS: the right endpoints, the right ECS scope inside and outside
//! the subnet, the usual answer when the override's endpoints are all drained, explain
//! naming the override, and located errors for overlapping or malformed overrides.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::admin::TOKEN;
use crate::geo::{ecs, scope};
use crate::support::{PREAMBLE, TestServer, ZONE, answers, http_json, query, udp};

fn config() -> String {
    format!(
        r#"{PREAMBLE}
[[service]]
name = "vpn.gto.example.com."
pool = "sma"
policy = "failover"
answers = 2

[[pool]]
name = "sma"
[[pool.member]]
name = "fra-1"
addresses = ["192.0.2.11"]
[[pool.member]]
name = "ams-1"
addresses = ["192.0.2.12"]
[[pool.member]]
name = "nyc-1"
addresses = ["192.0.2.21"]

[[pool]]
name = "asia"
[[pool.member]]
name = "tyo-1"
addresses = ["192.0.2.31"]

[[override]]
service = "vpn.gto.example.com"
networks = ["10.9.0.0/16", "2001:db8:9::/48"]
pool = "asia"

[[override]]
service = "vpn.gto.example.com."
networks = ["10.10.0.0/16"]
members = ["nyc-1"]
"#
    )
    .replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"",
    )
}

/// The answer and ECS scope for a client in `subnet`/`prefix`, over the fast path (UDP)
/// and the general path (TCP), which must agree.
async fn ask(server: &TestServer, subnet: &str, prefix: u8) -> (Vec<String>, Option<u8>) {
    let q = query(
        "vpn.gto.example.com.",
        RecordType::A,
        Some(ecs(subnet, prefix)),
    );
    let (reply, _) = udp(server.addr, &q).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    let over_tcp = crate::support::tcp(server.addr, &q).await;
    assert_eq!(
        answers(&reply),
        answers(&over_tcp),
        "UDP and TCP differ for {subnet}"
    );
    assert_eq!(scope(&reply), scope(&over_tcp));
    (answers(&reply), scope(&reply))
}

#[tokio::test]
async fn a_subnet_gets_its_pool_first_with_the_right_scope_and_falls_back_when_it_is_drained() {
    let server =
        TestServer::start_with_files(&config(), ZONE, &[("admin.token", &format!("{TOKEN}\n"))])
            .await;
    // Inside the asia override: tyo-1 first, then the service's first endpoint; the
    // answer holds for the whole /16.
    assert_eq!(
        ask(&server, "10.9.1.0", 24).await,
        (vec!["192.0.2.31".into(), "192.0.2.11".into()], Some(16))
    );
    assert_eq!(
        ask(&server, "2001:db8:9:1::", 56).await,
        (vec!["192.0.2.31".into(), "192.0.2.11".into()], Some(48))
    );
    // Inside the members override: nyc-1 first.
    assert_eq!(
        ask(&server, "10.10.200.0", 24).await,
        (vec!["192.0.2.21".into(), "192.0.2.11".into()], Some(16))
    );
    // Next to it (10.8/16 shares 15 bits with 10.9/16): the usual answer, scoped so that
    // a resolver does not give it to the override's clients.
    assert_eq!(
        ask(&server, "10.8.0.0", 24).await,
        (vec!["192.0.2.11".into(), "192.0.2.12".into()], Some(16))
    );
    // Far away: the usual answer; one bit tells it from every override network.
    assert_eq!(
        ask(&server, "192.0.2.0", 24).await,
        (vec!["192.0.2.11".into(), "192.0.2.12".into()], Some(1))
    );
    // Explain says which override applied.
    let (_, explained) = http_json(
        server.admin(),
        "GET",
        "/v1/explain?name=vpn.gto.example.com&client=10.9.1.0/24",
        None,
        "",
    )
    .await;
    assert_eq!(
        explained["gslb"]["override_applied"]["override"], 0,
        "{explained}"
    );
    assert_eq!(
        explained["gslb"]["override_applied"]["networks"][0],
        "10.9.0.0/16"
    );
    assert_eq!(explained["ecs_scope"], 16);
    assert_eq!(explained["gslb"]["candidates"][0]["member"], "tyo-1");

    // The asia pool drained: its clients get the usual answer (still scoped to the /16).
    let (code, body) = http_json(
        server.admin(),
        "POST",
        "/v1/drain",
        Some(TOKEN),
        r#"{"pool": "asia"}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        ask(&server, "10.9.1.0", 24).await,
        (vec!["192.0.2.11".into(), "192.0.2.12".into()], Some(16))
    );
    let (_, explained) = http_json(
        server.admin(),
        "GET",
        "/v1/explain?name=vpn.gto.example.com&client=10.9.1.0/24",
        None,
        "",
    )
    .await;
    assert!(
        explained["gslb"].get("override_applied").is_none(),
        "{explained}"
    );
    // nyc-1 down (drained): the members override's clients get the usual answer too.
    let (code, _) = http_json(
        server.admin(),
        "POST",
        "/v1/members/sma/nyc-1/drain",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        ask(&server, "10.10.1.0", 24).await.0,
        ["192.0.2.11", "192.0.2.12"]
    );
}

#[test]
fn overlapping_and_malformed_overrides_are_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let text = config().replace("token_file = \"admin.token\"", "")
        + r#"
[[override]]
service = "vpn.gto.example.com."
networks = ["10.9.128.0/17", "10.11.0.1/16", "not-a-net"]
pool = "nope"

[[override]]
service = "nope.gto.example.com."
networks = ["10.12.0.0/16"]
members = ["fra-1"]
pool = "asia"

[[override]]
service = "vpn.gto.example.com."
networks = ["10.13.0.0/16"]
members = ["lon-1"]
"#;
    std::fs::write(dir.path().join("gto.toml"), text).unwrap();
    let (code, _, stderr) = crate::check::check(dir.path());
    assert_eq!(code, 64, "{stderr}");
    for expected in [
        "override[2].networks[0]: 10.9.128.0/17 overlaps 10.9.0.0/16 of override[0] for the same service",
        "override[2].networks[1]: 10.11.0.1/16 has host bits set; write 10.11.0.0/16",
        "override[2].networks[2]: \"not-a-net\" is not a network",
        "override[2].pool: unknown pool \"nope\"",
        "override[3].service: no [[service]] named nope.gto.example.com.",
        "override[3]: give `pool` or `members`",
        "override[4].members: \"lon-1\" is not a member of the service's pool \"sma\"",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}
