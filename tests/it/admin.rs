//! The admin API against a running server: drains, load, explain, reload, metrics, auth.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};

use crate::real::{all_down, get_with_host, metrics, real_config};
use crate::support::{
    RealGto, TestServer, ZONE, answers, config, edns, http, http_json, query, sample, tcp, udp,
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
    assert_eq!(server.vpn().await, vec!["198.51.100.10", "198.51.100.20"]);

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
        assert_eq!(server.vpn().await, vec!["198.51.100.20", "203.0.113.30"]);
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
    assert_eq!(server.vpn().await, vec!["198.51.100.20", "203.0.113.30"]);
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
    assert_eq!(server.vpn().await, vec!["198.51.100.10", "198.51.100.20"]);
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
    assert_eq!(server.vpn().await[0], "198.51.100.20");
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
    assert_eq!(server.vpn().await[0], "198.51.100.10");
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
    assert_eq!(server.vpn().await, vec!["198.51.100.10", "198.51.100.20"]);
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
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("the report gives none and the member has no `capacity`")),
        "{body}"
    );
    let (code, body) = http_json(
        admin,
        "PUT",
        "/v1/members/sma/ams-1/load",
        Some(TOKEN),
        r#"{"sessions": 5, "capacity": 0}"#,
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("capacity 0")),
        "{body}"
    );
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
        server.vpn().await;
    }
    udp(
        server.addr,
        &query("nope.gto.example.com.", RecordType::A, None),
    )
    .await;
    // Over TCP (the fast path answers these too): counted by transport, and the
    // endpoints' answers with the others.
    let over_tcp = |m: &str| {
        sample(
            m,
            "gto_dns_queries_total",
            &["transport=\"tcp\"", "qtype=\"A\"", "rcode=\"NOERROR\""],
        )
    };
    for _ in 0..3 {
        let answer = tcp(
            server.addr,
            &query("vpn.gto.example.com.", RecordType::A, None),
        )
        .await;
        assert_eq!(answer.answers.len(), 2);
    }
    let (_, after) = http(admin, "GET", "/metrics", None, "").await;
    assert_eq!(queries(&after) - queries(&before), 5.0, "{after}");
    assert_eq!(over_tcp(&after) - over_tcp(&before), 3.0, "{after}");
    assert_eq!(fra(&after) - fra(&before), 8.0, "{after}");
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
        assert_eq!(server.vpn().await, vec!["198.51.100.10", "198.51.100.20"]);
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

#[tokio::test]
async fn far_future_drains_are_refused_and_status_keeps_working() {
    let server = start().await;
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
async fn a_drain_the_state_file_cannot_hold_is_applied_with_a_warning() {
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

#[tokio::test]
async fn silent_admin_clients_are_cut_off_and_cannot_block_shutdown() {
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

#[tokio::test]
async fn status_explain_nsid_and_chaos_identity() {
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

    // Without an identity, the identity is not disclosed; the version is, as BIND, Knot
    // and NSD answer it, unless `[server] version = false`.
    let plain = crate::support::TestServer::default().await;
    let out = crate::support::dig(plain.addr, &["CH", "TXT", "id.server."]).await;
    assert!(out.contains("REFUSED"), "{out}");
    let out = crate::support::dig(plain.addr, &["+short", "CH", "TXT", "version.bind."]).await;
    assert_eq!(out.trim(), format!("\"gto {}\"", env!("CARGO_PKG_VERSION")));
    let hidden = crate::support::TestServer::start(
        &config("").replace("[server]\n", "[server]\nversion = false\n"),
        ZONE,
    )
    .await;
    let out = crate::support::dig(hidden.addr, &["CH", "TXT", "version.bind."]).await;
    assert!(out.contains("REFUSED"), "{out}");
}

#[tokio::test]
async fn explain_names_fail_open_endpoints_as_down() {
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
async fn api_errors_are_json_and_bearer_is_case_insensitive() {
    let server = start().await;
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

/// Item 8: a `Host` that names another site (DNS rebinding) is refused; IP literals,
/// localhost and `[admin] hosts` are served; every response has the security headers.
#[tokio::test]
async fn foreign_host_headers_are_refused_and_security_headers_sent() {
    let dir = tempfile::tempdir().unwrap();
    real_config(dir.path(), ZONE, |text| {
        text.replace(
            "[admin]\nlisten",
            "[admin]\nhosts = [\"gto-admin.example.net\"]\nlisten",
        )
    });
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let admin = gto.admin_addr().await;
    let port = admin.port();
    for host in [
        "rebind.attacker.example".to_string(),
        format!("rebind.attacker.example:{port}"),
        format!("localhost.attacker.example:{port}"),
    ] {
        for path in ["/", "/v1/status", "/metrics"] {
            let (status, _) = get_with_host(admin, path, &host).await;
            assert_eq!(status, 421, "{host} {path}");
        }
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "LOCALHOST".to_string(),
        format!("gto-admin.example.net:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, headers) = get_with_host(admin, "/", &host).await;
        assert_eq!(status, 200, "{host}");
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(header("referrer-policy"), "no-referrer");
        let csp = header("content-security-policy");
        assert!(
            csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'sha256-"),
            "{csp}"
        );
    }
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// Item 7: silent connections from one source cannot lock the admin API: with every
/// slot held by 30 idle connections, `/healthz` (and any request) from the same source
/// or another is answered at once, by evicting the silent ones.
#[tokio::test]
async fn silent_connections_cannot_lock_out_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    real_config(dir.path(), ZONE, |text| {
        text.replace(
            "[admin]\nlisten",
            "[admin]\nmax_connections = 4\nheader_timeout = \"30s\"\nlisten",
        )
    });
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let admin = gto.admin_addr().await;
    let mut silent = Vec::new();
    for _ in 0..30 {
        silent.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    for source in ["127.0.0.1", "127.0.0.2"] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let stream = socket.connect(admin).await.unwrap();
        let (code, _) = tokio::time::timeout(
            Duration::from_secs(3),
            crate::support::http_on(stream, "GET", "/healthz", None, ""),
        )
        .await
        .unwrap_or_else(|_| panic!("/healthz from {source} locked out"));
        assert_eq!(code, 200);
    }
    let text = metrics(admin).await;
    assert!(
        sample(&text, "gto_admin_evicted_total", &["kind=\"connection\""]) >= 26.0,
        "{text}"
    );
    // The event streams likewise: 16 silent ones, and a 17th from elsewhere is served.
    let mut streams = Vec::new();
    for _ in 0..16 {
        streams.push(crate::events::Stream::open(admin, None).await);
    }
    let mut watcher = crate::events::Stream::open(admin, None).await;
    drop(streams);
    drop(silent);
    gto.signal("HUP");
    assert_eq!(watcher.next().await.kind, "reload");
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// The packaged unit runs gto as a `DynamicUser` that cannot read root's files; secrets
/// reach it through systemd credentials (`LoadCredential=` fills `$CREDENTIALS_DIRECTORY`
/// with copies it can read). Run as an unprivileged user (uid 65534, as the unit's
/// dynamic user would be) with the directory set as the unit sets it: the token named
/// `${CREDENTIALS_DIRECTORY}/admin.token` is read and guards changes; a token file only
/// root can read is refused with exit 64; without the variable, `gto check` names it.
#[tokio::test]
async fn secrets_come_from_the_credentials_directory_of_an_unprivileged_process() {
    use std::os::unix::fs::{PermissionsExt, chown};
    let root = running_as_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("admin.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("root.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(
        dir.path().join("root.token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(
        creds.join("admin.token"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o500)).unwrap();
    if root {
        chown(creds.join("admin.token"), Some(65_534), Some(65_534)).unwrap();
        chown(&creds, Some(65_534), Some(65_534)).unwrap();
    }
    let write = |token_file: &str| {
        real_config(dir.path(), ZONE, |text| {
            text.replace(
                "[admin]\nlisten",
                &format!("[admin]\ntoken_file = \"{token_file}\"\nlisten"),
            )
        });
    };
    // As the unit's user: setpriv to uid/gid 65534 when the test runs as root.
    let gto = env!("CARGO_BIN_EXE_gto");
    let config = dir.path().join("gto.toml");
    let unprivileged: Vec<std::ffi::OsString> = if root {
        ["--reuid=65534", "--regid=65534", "--clear-groups", gto]
            .iter()
            .map(Into::into)
            .collect()
    } else {
        vec![gto.into()]
    };
    let program = if root { "setpriv" } else { gto };
    let args = |rest: &[&std::ffi::OsStr]| -> Vec<std::ffi::OsString> {
        let skip = usize::from(!root);
        unprivileged[skip..]
            .iter()
            .cloned()
            .chain(rest.iter().map(|a| a.to_os_string()))
            .collect()
    };
    let run = args(&["run".as_ref(), "--config".as_ref(), config.as_os_str()]);
    let run: Vec<&std::ffi::OsStr> = run.iter().map(|a| a.as_os_str()).collect();

    write("${CREDENTIALS_DIRECTORY}/admin.token");
    let mut server = RealGto::start_with_env(
        program,
        &run,
        &[("CREDENTIALS_DIRECTORY", creds.as_os_str())],
    );
    let admin = server.admin_addr().await;
    let path = "/v1/members/sma/fra-1/drain";
    let (code, body) = http(admin, "POST", path, None, "").await;
    assert_eq!(code, 401, "changes need the token: {body}");
    let (code, body) = http(admin, "POST", path, Some(TOKEN), "").await;
    assert_eq!(code, 200, "the credential's token: {body}");
    server.signal("TERM");
    assert!(server.exit().await.success());

    if root {
        // What the packaged config suggested before: a root-only file the user cannot read.
        write("root.token");
        let mut refused = RealGto::start_with_env(program, &run, &[]);
        let status = refused.exit().await;
        let log = refused.log_to_end().await;
        assert_eq!(status.code(), Some(64), "{log}");
        assert!(log.contains("Permission denied"), "{log}");
    }

    // Outside a unit, the variable is not set: located, exit 64.
    write("${CREDENTIALS_DIRECTORY}/admin.token");
    let output = crate::support::gto_bin()
        .args(["check", "--config"])
        .arg(&config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("admin.token_file: names ${CREDENTIALS_DIRECTORY}, which is not set"),
        "{stderr}"
    );
}

/// Whether the test runs as root (then it can act as another user).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Named tokens with roles, through the real binary: a read token cannot drain (403,
/// and the refusal is logged with its name), an operate token drains (the audit line
/// names the token, the client's address, the end and the reason) but cannot reload,
/// and `token_file`'s token (named `default`, role admin) reloads.
#[tokio::test]
async fn tokens_have_roles_and_every_change_names_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let viewer = "viewer-token-0123456789";
    let oncall = "oncall-token-0123456789";
    std::fs::write(dir.path().join("viewer.token"), viewer).unwrap();
    std::fs::write(dir.path().join("oncall.token"), format!("{oncall}\n")).unwrap();
    crate::real::real_config_with_token(dir.path(), ZONE, |text| {
        format!(
            "{}\n[[admin.token]]\nname = \"viewer\"\nfile = \"viewer.token\"\nrole = \"read\"\n\
             [[admin.token]]\nname = \"oncall\"\nfile = \"oncall.token\"\nrole = \"operate\"\n",
            text.replace("[admin]\n", "[admin]\naudit_file = \"audit.jsonl\"\n")
        )
    });
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let admin = gto.admin_addr().await;
    let drain = "/v1/members/sma/fra-1/drain";
    let (code, body) = http_json(admin, "POST", drain, Some(viewer), "").await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("read") && e.contains("operate")),
        "{body}"
    );
    let refused = gto.wait_for_log("admin change refused").await;
    assert!(
        refused.contains("token=viewer") && refused.contains("source=127.0.0.1"),
        "{refused}"
    );
    let (code, body) = http_json(
        admin,
        "POST",
        drain,
        Some(oncall),
        "{\"for\": \"30m\", \"reason\": \"firmware upgrade\"}",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let line = gto
        .wait_for_log("drain requested through the admin API")
        .await;
    for wanted in [
        "token=oncall",
        "caller=127.0.0.1",
        "target=sma/fra-1",
        "until=",
        "firmware upgrade",
    ] {
        assert!(line.contains(wanted), "no {wanted:?} in {line}");
    }
    assert!(!line.contains(oncall), "a token is never logged: {line}");
    // Status and the page say who drained it and why.
    let (_, status) = http_json(admin, "GET", "/v1/status", None, "").await;
    let fra = crate::real::member(&status, "fra-1");
    assert_eq!(fra["drained_by"], "oncall@127.0.0.1", "{fra}");
    assert_eq!(fra["drain_reason"], "firmware upgrade", "{fra}");
    let (_, page) = crate::support::http(admin, "GET", "/", None, "").await;
    assert!(
        page.contains("by oncall@127.0.0.1: firmware upgrade"),
        "{page}"
    );
    let (code, _) = http_json(admin, "POST", "/v1/reload", Some(oncall), "").await;
    assert_eq!(code, 403);
    let (code, body) = http_json(admin, "POST", "/v1/reload", Some(TOKEN), "").await;
    assert_eq!(code, 200, "{body}");
    let line = gto
        .wait_for_log("reload requested through the admin API")
        .await;
    assert!(line.contains("token=default"), "{line}");
    let (code, _) = http_json(
        admin,
        "POST",
        "/v1/members/sma/fra-1/undrain",
        Some("not-a-token-of-this-gto"),
        "",
    )
    .await;
    assert_eq!(code, 401);
    // Every change is appended to the audit file, one JSON line each, refusals not.
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r["token"].as_str().unwrap(), r["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        vec![("oncall", "drain"), ("default", "reload")],
        "{audit}"
    );
    assert_eq!(records[0]["reason"], "firmware upgrade");
    assert_eq!(records[0]["source"], "127.0.0.1");
    assert!(records[0]["at"].is_string());
    assert!(!audit.contains(oncall), "a token is never written");
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}
