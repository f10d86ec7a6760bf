//! The admin API against a running server: drains, load, explain, reload, metrics, auth.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};

use crate::support::{
    TestServer, ZONE, answers, config, edns, http, http_json, query, sample, udp,
};

pub(crate) const TOKEN: &str = "s3cret-token-for-tests-0123456789";

/// The default test config with a token and a state file.
pub(crate) fn admin_config() -> String {
    config("")
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"",
        )
        .replace(
            "[server]\nlisten = [\"127.0.0.1:0\"]",
            "[server]\nlisten = [\"127.0.0.1:0\"]\nstate_file = \"gto.state\"",
        )
}

pub(crate) async fn start() -> TestServer {
    TestServer::start_with_files(
        &admin_config(),
        ZONE,
        &[("admin.token", &format!("{TOKEN}\n"))],
    )
    .await
}

async fn vpn(server: &TestServer) -> Vec<String> {
    answers(
        &udp(
            server.addr,
            &query("vpn.gto.example.com.", RecordType::A, None),
        )
        .await
        .0,
    )
}

fn member<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["services"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["member"] == name)
        .unwrap()
}

#[tokio::test]
async fn drain_takes_an_endpoint_out_survives_a_restart_and_undrain_brings_it_back() {
    let server = start().await;
    let admin = server.admin();
    assert_eq!(vpn(&server).await, vec!["198.51.100.10", "198.51.100.20"]);

    let (code, body) = http_json(
        admin,
        "POST",
        "/v1/members/sma/fra-1/drain",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["endpoint"]["drained"], true);
    // Share goes to zero in fresh answers.
    let (_, before) = http_json(admin, "GET", "/v1/status", None, "").await;
    let answered_before = member(&before, "fra-1")["answered"].as_u64().unwrap();
    for _ in 0..20 {
        assert_eq!(vpn(&server).await, vec!["198.51.100.20", "203.0.113.30"]);
    }
    let (_, status) = http_json(admin, "GET", "/v1/status", None, "").await;
    assert_eq!(
        member(&status, "fra-1")["answered"].as_u64().unwrap(),
        answered_before
    );
    assert_eq!(member(&status, "fra-1")["drained"], true);
    assert!(member(&status, "ams-1")["share"].as_f64().unwrap() > 0.0);

    // Survives a restart (state file).
    let TestServer { app, dir, .. } = server;
    app.shutdown().await.unwrap();
    let server = TestServer::start_in(dir).await;
    let admin = server.admin();
    assert_eq!(vpn(&server).await, vec!["198.51.100.20", "203.0.113.30"]);
    let (_, status) = http_json(admin, "GET", "/v1/status", None, "").await;
    assert_eq!(member(&status, "fra-1")["drained"], true);

    let (code, body) = http_json(
        admin,
        "POST",
        "/v1/members/sma/fra-1/undrain",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(vpn(&server).await, vec!["198.51.100.10", "198.51.100.20"]);
}

#[tokio::test]
async fn a_drain_with_a_deadline_ends_by_itself() {
    let server = start().await;
    let admin = server.admin();
    let (code, body) = http_json(
        admin,
        "POST",
        "/v1/members/sma/fra-1/drain",
        Some(TOKEN),
        r#"{"for": "1s"}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body["endpoint"]["drained_until"].is_string());
    assert_eq!(vpn(&server).await[0], "198.51.100.20");
    // The monitor's one-second sweep ends it; wait for the state, bounded.
    let mut undrained = false;
    for _ in 0..50 {
        let (_, status) = http_json(admin, "GET", "/v1/status", None, "").await;
        if member(&status, "fra-1")["drained"] == false {
            undrained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(undrained, "drain did not expire");
    assert_eq!(vpn(&server).await[0], "198.51.100.10");
    let (code, _) = http_json(
        admin,
        "POST",
        "/v1/members/sma/fra-1/drain",
        Some(TOKEN),
        r#"{"until": "2001-01-01T00:00:00Z"}"#,
    )
    .await;
    assert_eq!(code, 400, "a past deadline is refused");
}

#[tokio::test]
async fn changes_without_the_token_are_refused_and_change_nothing() {
    let server = start().await;
    let admin = server.admin();
    for (method, path, body) in [
        ("POST", "/v1/members/sma/fra-1/drain", ""),
        (
            "PUT",
            "/v1/members/sma/fra-1/load",
            r#"{"sessions": 10, "capacity": 100}"#,
        ),
        ("POST", "/v1/reload", ""),
    ] {
        for token in [None, Some("wrong-token-wrong-token-wrong")] {
            let (code, body) = http_json(admin, method, path, token, body).await;
            assert_eq!(code, 401, "{method} {path}: {body}");
            assert!(body["error"].as_str().unwrap().contains("token"));
        }
    }
    let (_, status) = http_json(admin, "GET", "/v1/status", None, "").await;
    assert_eq!(member(&status, "fra-1")["drained"], false);
    assert!(member(&status, "fra-1")["load"].is_null());
    assert_eq!(status["generation"], 1, "no reload happened");
    assert_eq!(vpn(&server).await, vec!["198.51.100.10", "198.51.100.20"]);
}

#[tokio::test]
async fn without_a_configured_token_every_change_is_forbidden() {
    let server = TestServer::default().await;
    let (code, body) = http_json(
        server.admin(),
        "POST",
        "/v1/members/sma/fra-1/drain",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("token_file"));
}

#[tokio::test]
async fn load_reports_show_in_status_and_bad_requests_are_explained() {
    let server = start().await;
    let admin = server.admin();
    let (code, body) = http_json(
        admin,
        "PUT",
        "/v1/members/sma/ams-1/load",
        Some(TOKEN),
        r#"{"sessions": 250, "capacity": 1000}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["endpoint"]["load"]["ratio"], 0.25);
    let (code, body) = http_json(
        admin,
        "PUT",
        "/v1/members/sma/nope/load",
        Some(TOKEN),
        r#"{"sessions": 1, "capacity": 2}"#,
    )
    .await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = http_json(
        admin,
        "PUT",
        "/v1/members/sma/ams-1/load",
        Some(TOKEN),
        r#"{"sessions": "many"}"#,
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = http_json(
        admin,
        "PUT",
        "/v1/members/sma/ams-1/load",
        Some(TOKEN),
        r#"{"sessions": 5}"#,
    )
    .await;
    assert_eq!(code, 400, "no capacity configured or given: {body}");
    let (code, body) = http_json(admin, "GET", "/v1/nothing-here", None, "").await;
    assert_eq!(code, 404);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn explain_agrees_with_what_a_real_query_gets() {
    let server = start().await;
    let admin = server.admin();
    http_json(
        admin,
        "POST",
        "/v1/members/sma/ams-1/drain",
        Some(TOKEN),
        "",
    )
    .await;
    for (client, qtype) in [
        ("203.0.113.7", RecordType::A),
        ("198.51.100.1", RecordType::AAAA),
        ("2001:db8::1", RecordType::A),
    ] {
        let (code, explained) = http_json(
            admin,
            "GET",
            &format!("/v1/explain?name=vpn.gto.example.com&client={client}&type={qtype}"),
            None,
            "",
        )
        .await;
        assert_eq!(code, 200, "{explained}");
        let ip: std::net::IpAddr = client.parse().unwrap();
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        let mut with_ecs = edns(1232);
        with_ecs
            .options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(ip, prefix, 0)));
        let (reply, _) = udp(
            server.addr,
            &query("vpn.gto.example.com.", qtype, Some(with_ecs)),
        )
        .await;
        let expected: Vec<serde_json::Value> =
            answers(&reply).into_iter().map(Into::into).collect();
        assert_eq!(
            explained["answers"].as_array().unwrap(),
            &expected,
            "{explained}"
        );
        assert_eq!(explained["rcode"], "NOERROR");
        let candidates = explained["gslb"]["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 3);
        // Best first for this client: the drained endpoint goes last.
        assert_eq!(candidates[2]["member"], "ams-1");
        assert_eq!(candidates[2]["rank"], 3);
        assert_eq!(candidates[2]["drained"], true);
        assert_eq!(candidates[2]["reason"], "drained by an operator");
    }
    let (_, explained) = http_json(
        admin,
        "GET",
        "/v1/explain?name=nope.gto.example.com&client=192.0.2.1",
        None,
        "",
    )
    .await;
    assert_eq!(explained["rcode"], "NXDOMAIN");
    let (code, _) = http_json(
        admin,
        "GET",
        "/v1/explain?name=vpn.gto.example.com&client=banana",
        None,
        "",
    )
    .await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn reloads_under_load_lose_no_query_and_invalid_ones_keep_the_old_config() {
    let server = start().await;
    let admin = server.admin();
    let good = admin_config();
    let bad = good.replace("pool = \"sma\"", "pool = \"missing\"");
    let addr = server.addr;
    // A bounded query loop: 4 clients x 400 queries, each waiting for its answer.
    let mut clients = Vec::new();
    for client in 0..4u16 {
        clients.push(tokio::spawn(async move {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut failures = Vec::new();
            for i in 0..400u16 {
                let mut message = query("vpn.gto.example.com.", RecordType::A, None);
                message.metadata.id = client * 1000 + i;
                socket
                    .send_to(&message.to_vec().unwrap(), addr)
                    .await
                    .unwrap();
                let mut buffer = [0u8; 1500];
                match tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buffer)).await {
                    Ok(Ok(len)) => {
                        let reply = hickory_proto::op::Message::from_vec(&buffer[..len]).unwrap();
                        if reply.metadata.response_code != ResponseCode::NoError
                            || reply.answers.is_empty()
                        {
                            failures.push(format!("{i}: {:?}", reply.metadata.response_code));
                        }
                    }
                    _ => failures.push(format!("{i}: no answer")),
                }
            }
            failures
        }));
    }
    let mut generations = Vec::new();
    for round in 0..8 {
        let text = if round % 2 == 0 { &bad } else { &good };
        std::fs::write(server.path("gto.toml"), text).unwrap();
        let (code, body) = http_json(admin, "POST", "/v1/reload", Some(TOKEN), "").await;
        if round % 2 == 0 {
            assert_eq!(code, 422, "{body}");
            assert!(
                body["problems"][0]
                    .as_str()
                    .unwrap()
                    .contains("unknown pool \"missing\""),
                "{body}"
            );
        } else {
            assert_eq!(code, 200, "{body}");
            generations.push(body["generation"].as_u64().unwrap());
        }
        tokio::task::yield_now().await;
    }
    for client in clients {
        let failures = client.await.unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }
    assert!(
        generations.windows(2).all(|w| w[0] < w[1]),
        "{generations:?}"
    );
    let (_, status) = http_json(admin, "GET", "/v1/status", None, "").await;
    assert_eq!(status["generation"].as_u64(), generations.last().copied());
}

#[tokio::test]
async fn metrics_move_with_real_queries() {
    let server = start().await;
    let admin = server.admin();
    let (code, before) = http(admin, "GET", "/metrics", None, "").await;
    assert_eq!(code, 200);
    let queries = |m: &str| {
        sample(
            m,
            "gto_dns_queries_total",
            &["transport=\"udp\"", "qtype=\"A\"", "rcode=\"NOERROR\""],
        )
    };
    let fra = |m: &str| sample(m, "gto_answers_total", &["member=\"fra-1\""]);
    let nx = |m: &str| sample(m, "gto_dns_queries_total", &["rcode=\"NXDOMAIN\""]);
    for _ in 0..5 {
        vpn(&server).await;
    }
    udp(
        server.addr,
        &query("nope.gto.example.com.", RecordType::A, None),
    )
    .await;
    let (_, after) = http(admin, "GET", "/metrics", None, "").await;
    assert_eq!(queries(&after) - queries(&before), 5.0, "{after}");
    assert_eq!(fra(&after) - fra(&before), 5.0, "{after}");
    assert_eq!(nx(&after) - nx(&before), 1.0);
    for name in [
        "gto_snapshot_generation",
        "gto_dns_fast_batch_seconds_bucket",
        "gto_snapshot_build_seconds",
    ] {
        assert!(after.contains(name), "{name} missing from:\n{after}");
    }
    let (code, text) = http(admin, "GET", "/healthz", None, "").await;
    assert_eq!((code, text.trim()), (200, "ok"));
    let (code, _) = http(admin, "GET", "/readyz", None, "").await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn curl_drives_the_api_as_an_operator_would() {
    let server = start().await;
    let base = format!("http://{}", server.admin());
    // The server runs on this test's runtime: curl must not block it.
    let run = |args: Vec<String>| async move {
        let output = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .args(args)
            .output()
            .await
            .expect("curl is not installed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let drained = run(vec![
        "-X".into(),
        "POST".into(),
        "-H".into(),
        format!("Authorization: Bearer {TOKEN}"),
        format!("{base}/v1/members/sma/fra-1/drain"),
    ])
    .await;
    assert!(drained.contains("\"drained\":true"), "{drained}");
    let explained = run(vec![format!(
        "{base}/v1/explain?name=vpn.gto.example.com&client=203.0.113.7"
    )])
    .await;
    assert!(
        explained.contains("\"answers\":[\"198.51.100.20\",\"203.0.113.30\"]"),
        "{explained}"
    );
    let refused = run(vec![
        "-w".into(),
        "%{http_code}".into(),
        "-X".into(),
        "POST".into(),
        format!("{base}/v1/reload"),
    ])
    .await;
    assert!(refused.ends_with("401"), "{refused}");
}

/// A state file cut off mid-write (or otherwise corrupt) at start: gto says so, starts with
/// every endpoint up until checked, serves, and the next write replaces it with a valid one.
#[tokio::test]
async fn a_corrupt_state_file_gives_a_safe_start_and_is_rewritten() {
    let server = start().await;
    let admin = server.admin();
    let drain = "/v1/members/sma/fra-1/drain";
    assert_eq!(http(admin, "POST", drain, Some(TOKEN), "").await.0, 200);
    let TestServer { app, dir, .. } = server;
    app.shutdown().await.unwrap();
    let path = dir.path().join("gto.state");
    let whole = std::fs::read_to_string(&path).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&whole).unwrap();
    assert_eq!(saved["members"][0]["drained"], true, "{whole}");

    for broken in [
        &whole[..whole.len() / 2],
        "",
        "\0\0\0garbage",
        "{\"version\": 99}",
    ] {
        std::fs::write(&path, broken).unwrap();
        let dir_copy = tempfile::tempdir().unwrap();
        for file in [
            "gto.toml",
            "gto.example.com.zone",
            "admin.token",
            "gto.state",
        ] {
            std::fs::copy(dir.path().join(file), dir_copy.path().join(file)).unwrap();
        }
        let server = TestServer::start_in(dir_copy).await;
        // The drain in the lost file is gone: all three endpoints answer again.
        assert_eq!(vpn(&server).await, vec!["198.51.100.10", "198.51.100.20"]);
        let (_, status) = http_json(server.admin(), "GET", "/v1/status", None, "").await;
        assert_eq!(member(&status, "fra-1")["drained"], false);
        // The next change writes a whole, valid file over the broken one.
        let other = "/v1/members/sma/ams-1/drain";
        assert_eq!(
            http(server.admin(), "POST", other, Some(TOKEN), "").await.0,
            200
        );
        let TestServer {
            app, dir: written, ..
        } = server;
        app.shutdown().await.unwrap();
        let text = std::fs::read_to_string(written.path().join("gto.state")).unwrap();
        let state: serde_json::Value = serde_json::from_str(&text).unwrap();
        let drained: Vec<&str> = state["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["drained"] == true)
            .map(|m| m["member"].as_str().unwrap())
            .collect();
        assert_eq!(drained, ["ams-1"], "{text}");
    }
}
