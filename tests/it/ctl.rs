//! `gto ctl` against the real binary: the status table, a drain with its end and reason
//! seen in the status, undrain, explain, reload (refused: exit 64 with the problems), the
//! event stream, the exit codes for a read-only token (77) and an unreachable server (69),
//! where the address and token come from; and `check-fleet` over a real etcd.

use std::path::Path;
use std::time::Duration;

use crate::real::real_config_with_token;
use crate::support::{RealGto, ZONE, gto_bin};

/// Runs `gto ctl ARGS` (blocking, bounded by the command's own 10 s request limit) and
/// returns (exit code, stdout, stderr).
async fn ctl(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = tokio::process::Command::from(gto_bin());
    command
        .arg("ctl")
        .args(args)
        .env_remove("GTO_ADMIN")
        .env_remove("GTO_TOKEN_FILE");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("gto ctl ended")
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

#[tokio::test]
async fn an_operator_drains_explains_reloads_and_follows_events_with_gto_ctl() {
    let dir = tempfile::tempdir().unwrap();
    real_config_with_token(dir.path(), ZONE, |text| {
        text + "\n[[admin.token]]\nname = \"viewer\"\nfile = \"read.token\"\nrole = \"read\"\n"
    });
    let fixed = std::fs::read_to_string(dir.path().join("gto.toml")).unwrap();
    std::fs::write(dir.path().join("read.token"), "viewer-token-0123456789\n").unwrap();
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let admin = gto.admin_addr().await.to_string();
    let config = path(dir.path(), "gto.toml");

    // The admin token from the config file (its address is port 0 here: given apart).
    let (code, out, err) = ctl(&["--config", &config, "--api", &admin, "status"], &[]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("POOL") && lines[0].contains("LAST ERROR"),
        "{out}"
    );
    assert!(lines[1].starts_with("sma   fra-1   up"), "{out}");
    assert!(lines[0].contains("VOTES"), "{out}");

    // Follow events while draining: once it says it follows them.
    let mut events = tokio::process::Command::from(gto_bin())
        .args(["ctl", "--api", &admin, "events", "--count", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(events.stderr.take().unwrap());
    let mut first = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncBufReadExt::read_line(&mut stderr, &mut first),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(first.starts_with("following the events of "), "{first}");
    let (code, out, err) = ctl(
        &[
            "--config",
            &config,
            "--api",
            &admin,
            "drain",
            "sma",
            "fra-1",
            "--for",
            "10m",
            "--reason",
            "firmware 9.1",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("sma/fra-1 drained until "), "{out}");
    let output = tokio::time::timeout(Duration::from_secs(5), events.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    let out = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains(" audit action=drain reason=firmware 9.1 source=127.0.0.1 target=sma/fra-1 token=default until="), "{out}");
    assert!(
        lines[1].contains(" drain ") && lines[1].contains("member=fra-1"),
        "{out}"
    );
    // The status names who drained it and why; --json gives the API's document.
    let (_, out, _) = ctl(&["--api", &admin, "status"], &[]).await;
    let row = out.lines().find(|l| l.contains("fra-1")).unwrap();
    assert!(
        row.contains("drained until ") && row.contains("by default@127.0.0.1 (firmware 9.1)"),
        "{row}"
    );
    let (_, out, _) = ctl(&["--api", &admin, "--json", "status"], &[]).await;
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let fra = crate::real::member(&status, "fra-1");
    assert_eq!(fra["drained"], true);
    assert_eq!(fra["drain_reason"], "firmware 9.1");

    // Explain: the drained member is ranked out.
    let (code, out, _) = ctl(
        &[
            "--api",
            &admin,
            "explain",
            "vpn.gto.example.com",
            "192.0.2.1",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with("answer: 198.51.100.20 203.0.113.30"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("sma/fra-1") && l.contains("drained")),
        "{out}"
    );

    // A read-only token (from GTO_TOKEN_FILE, the address from GTO_ADMIN) cannot undrain:
    // 77, and nothing changes.
    let read = path(dir.path(), "read.token");
    let (code, _, err) = ctl(
        &["undrain", "sma", "fra-1"],
        &[
            ("GTO_ADMIN", admin.as_str()),
            ("GTO_TOKEN_FILE", read.as_str()),
        ],
    )
    .await;
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("403"), "{err}");
    let (code, out, _) = ctl(
        &[
            "--config", &config, "--api", &admin, "undrain", "sma", "fra-1",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "sma/fra-1 undrained");
    // An unknown member: refused, 1.
    let (code, _, err) = ctl(
        &["--config", &config, "--api", &admin, "drain", "sma", "nope"],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("404"), "{err}");

    // A broken config: reload refused, 64, the located problem printed; it keeps serving.
    std::fs::write(
        dir.path().join("gto.toml"),
        fixed.replace("answers = 2", "answers = 0"),
    )
    .unwrap();
    let (code, _, err) = ctl(
        &[
            "--api",
            &admin,
            "--token-file",
            &path(dir.path(), "admin.token"),
            "reload",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("gto.toml:") && err.contains("answers"),
        "{err}"
    );
    std::fs::write(dir.path().join("gto.toml"), &fixed).unwrap();
    let (code, out, err) = ctl(&["--config", &config, "--api", &admin, "reload"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("reloaded"), "{out}");

    gto.signal("TERM");
    assert!(gto.exit().await.success());
    // Nobody there now: 69.
    let (code, _, err) = ctl(&["--api", &admin, "status"], &[]).await;
    assert_eq!(code, 69, "{err}");
}

/// `check-fleet` asks every instance the one it is pointed at knows: all alive with one
/// config is exit 0; an instance with another config is exit 1, named.
#[tokio::test]
async fn check_fleet_says_whether_the_fleet_agrees() {
    let etcd = crate::fleet::Etcd::start().await;
    let a = crate::fleet::instance(&etcd.url(), "a").await;
    let b = crate::fleet::instance(&etcd.url(), "b").await;
    let api = a.admin().to_string();
    let agreed = || async {
        let (code, out, err) = ctl(&["--api", &api, "--json", "check-fleet"], &[]).await;
        (
            code,
            serde_json::from_str::<serde_json::Value>(&out).unwrap_or_default(),
            err,
        )
    };
    let started = tokio::time::Instant::now();
    let report = loop {
        let (code, report, err) = agreed().await;
        if code == 0 && report["instances"].as_array().is_some_and(|i| i.len() == 2) {
            break report;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{code} {report} {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The status table shows how the fleet's votes decided each endpoint.
    let (_, table, _) = ctl(&["--api", &api, "status"], &[]).await;
    let fra = table
        .lines()
        .find(|l| l.contains("fra-1"))
        .unwrap_or_default();
    assert!(
        fra.contains("voters say down") || fra.contains("this instance alone"),
        "{table}"
    );
    for instance in report["instances"].as_array().unwrap() {
        assert_eq!(instance["alive"], true, "{instance}");
        assert_eq!(instance["config_matches"], true, "{instance}");
        assert_eq!(instance["endpoints"], 3, "{instance}");
        assert_eq!(instance["endpoints_up"], 3, "{instance}");
    }
    // A third instance with another pool: the fleet disagrees, exit 1, and the table says
    // which and where.
    let other = crate::support::TestServer::start_with_files(
        &crate::fleet::fleet_config(&etcd.url(), "c", "").replace("nyc-1", "lon-1"),
        ZONE,
        &[("admin.token", &format!("{}\n", crate::admin::TOKEN))],
    )
    .await;
    let started = tokio::time::Instant::now();
    loop {
        let (code, out, _) = ctl(&["--api", &api, "check-fleet"], &[]).await;
        if code == 1 {
            let row = out
                .lines()
                .find(|l| l.starts_with("c "))
                .unwrap_or_default();
            assert!(row.contains("differs: [\"pool sma\"]"), "{out}");
            assert!(out.trim_end().ends_with("the fleet DISAGREES"), "{out}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{code}: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop((b, other));
}
