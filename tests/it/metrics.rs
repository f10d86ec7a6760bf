//! Metrics as Prometheus reads them: series per member that follow the config, counters
//! from zero, and the all-down selection exported and logged.

use std::time::Duration;

use crate::admin::{TOKEN, start as start_admin};
use crate::real::{all_down, metrics_text};
use crate::support::{ZONE, http_json};

#[tokio::test]
async fn all_down_selection_is_exported_and_logged() {
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
async fn member_series_follow_the_config_and_counters_start_at_zero() {
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
async fn load_read_by_checks_is_exported() {
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

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .current_dir(crate::support::repo().join("examples"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is not installed: `tests/run` installs it (apt-get install prometheus)");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// `/metrics` passes `promtool check metrics` with nothing to say (HELP and TYPE on every
/// series, names and units as Prometheus wants them) after real traffic and a reload; the
/// shipped alert rules pass `promtool check rules` and their unit tests.
#[tokio::test]
async fn metrics_pass_promtool_and_the_shipped_alert_rules_are_tested() {
    let server = start_admin().await;
    for name in [
        "vpn.gto.example.com.",
        "www.gto.example.com.",
        "nope.gto.example.com.",
    ] {
        crate::support::udp(
            server.addr,
            &crate::support::query(name, hickory_proto::rr::RecordType::A, None),
        )
        .await;
    }
    server.app.reload().await.unwrap();
    let text = metrics_text(&server).await;
    let (ok, said) = promtool(&["check", "metrics"], Some(&text));
    assert!(ok && said.trim().is_empty(), "{said}");
    let (ok, said) = promtool(&["check", "rules", "alerts.yml"], None);
    assert!(ok, "{said}");
    let (ok, said) = promtool(&["test", "rules", "alerts.test.yml"], None);
    assert!(ok, "{said}");
}

/// Every metric gto defines (each `gto_...` name constant in the source) is in the
/// README's metrics section, so an operator finds what a series means.
#[test]
fn the_readme_lists_every_series() {
    let readme = std::fs::read_to_string(crate::support::repo().join("README.md")).unwrap();
    let start = readme.find("\n## Metrics").expect("a Metrics section");
    let end = readme[start + 1..]
        .find("\n## ")
        .map_or(readme.len(), |e| start + 1 + e);
    let section = &readme[start..end];
    let mut names = Vec::new();
    let mut stack = vec![crate::support::repo().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            // `pub const NAME: &str = "gto_..."`, possibly wrapped onto the next line.
            for piece in text.split("pub const ").skip(1) {
                let Some(value) = piece
                    .split_once(": &str =")
                    .map(|(_, rest)| rest.trim_start())
                    .and_then(|rest| rest.strip_prefix("\"gto_"))
                else {
                    continue;
                };
                let name: String = value
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                names.push(format!("gto_{name}"));
            }
        }
    }
    assert!(names.len() > 30, "found only {names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !section.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the README's metrics table: {missing:?}"
    );
}
