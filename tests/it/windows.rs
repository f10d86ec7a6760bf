//! Maintenance windows and drains of a whole site: a window set 2 s ahead on one instance
//! of a fleet drains on every instance then and ends on time, written to etcd in one
//! transaction; a site drain is one snapshot rebuild; a pending window survives a
//! restart; `gto ctl` sets and cancels them.

use std::time::{Duration, SystemTime};

use hickory_proto::rr::RecordType;
use tokio::time::Instant;

use crate::admin::TOKEN;
use crate::fleet::{Etcd, connected, fleet_config, within};
use crate::support::{RealGto, TestServer, ZONE, answers, gto_bin, http_json, query, udp};

/// fra-1, ams-1 and a third member, lon-1, are in site "eu" (nyc-1 is not).
fn with_sites(config: String) -> String {
    config
        .replace("name = \"fra-1\"\n", "name = \"fra-1\"\nsite = \"eu\"\n")
        .replace("name = \"ams-1\"\n", "name = \"ams-1\"\nsite = \"eu\"\n")
        .replace(
            "addresses = [\"203.0.113.30\"]\n",
            "addresses = [\"203.0.113.30\"]\n[[pool.member]]\nname = \"lon-1\"\n\
             addresses = [\"192.0.2.44\"]\nsite = \"eu\"\n",
        )
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The next whole second at least `ahead` from now (windows are set in whole seconds).
fn whole_second_after(ahead: Duration) -> SystemTime {
    let at = SystemTime::now() + ahead;
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + 1;
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

async fn vpn(server: &TestServer) -> Vec<String> {
    let mut got = answers(
        &udp(
            server.addr,
            &query("vpn.gto.example.com.", RecordType::A, None),
        )
        .await
        .0,
    );
    got.sort();
    got
}

/// Waits until `server` answers without (or with) the eu members; returns when.
async fn until_answers(server: &TestServer, drained: bool, limit: Duration) -> SystemTime {
    let started = Instant::now();
    loop {
        let got = vpn(server).await;
        let eu = got
            .iter()
            .any(|a| a == "198.51.100.10" || a == "198.51.100.20");
        if eu != drained {
            return SystemTime::now();
        }
        assert!(started.elapsed() < limit, "answers stayed {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_window_set_on_one_instance_drains_the_site_on_every_instance_on_time() {
    let etcd = Etcd::start().await;
    let start = |name: &'static str| {
        let config = with_sites(fleet_config(&etcd.url(), name, ""));
        async move {
            TestServer::start_with_files(&config, ZONE, &[("admin.token", &format!("{TOKEN}\n"))])
                .await
        }
    };
    let (a, b) = (start("a").await, start("b").await);
    within(Duration::from_secs(10), "both connected", || async {
        connected(&a).await && connected(&b).await
    })
    .await;
    let from = whole_second_after(Duration::from_secs(2));
    let until = from + Duration::from_secs(2);
    let (code, reply) = http_json(
        a.admin(),
        "POST",
        "/v1/drain",
        Some(TOKEN),
        &serde_json::json!({
            "site": "eu", "at": rfc3339(from), "until": rfc3339(until), "reason": "firmware",
        })
        .to_string(),
    )
    .await;
    assert_eq!(code, 200, "{reply}");
    let endpoints = reply["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 3, "{reply}");
    for endpoint in endpoints {
        assert_eq!(endpoint["drained"], false, "not yet: {endpoint}");
        assert_eq!(endpoint["window"]["from"], rfc3339(from));
        assert_eq!(endpoint["window"]["reason"], "firmware");
    }
    // One write: both drain keys carry the same revision.
    let mut client = etcd.client().await;
    let stored = client
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let revisions: Vec<i64> = stored
        .kvs()
        .iter()
        .filter(|kv| kv.key_str().unwrap_or_default().contains("/drain/"))
        .map(|kv| kv.mod_revision())
        .collect();
    assert_eq!(revisions.len(), 3, "{:?}", stored.kvs());
    assert!(
        revisions.iter().all(|r| *r == revisions[0]),
        "one transaction for the site's three members: {revisions:?}"
    );
    // Both instances know the window before it begins, and still answer the site.
    within(Duration::from_secs(2), "b knows the window", || async {
        let status = crate::fleet::status(&b).await;
        crate::real::member(&status, "fra-1")["window"]["from"] == rfc3339(from)
    })
    .await;
    assert!(
        SystemTime::now() < from,
        "the test was too slow to see the window pending"
    );
    for server in [&a, &b] {
        assert_eq!(vpn(server).await, ["198.51.100.10", "198.51.100.20"]);
    }
    // It begins on both at `from` (not before; within the polling's 20 ms and a little).
    let (began_a, began_b) = tokio::join!(
        until_answers(&a, true, Duration::from_secs(5)),
        until_answers(&b, true, Duration::from_secs(5))
    );
    for began in [began_a, began_b] {
        assert!(began >= from, "began before its time");
        assert!(
            began.duration_since(from).unwrap() < Duration::from_millis(500),
            "began late"
        );
    }
    assert_eq!(vpn(&b).await, ["203.0.113.30"]);
    // And ends on both at `until`.
    let (ended_a, ended_b) = tokio::join!(
        until_answers(&a, false, Duration::from_secs(5)),
        until_answers(&b, false, Duration::from_secs(5))
    );
    for ended in [ended_a, ended_b] {
        assert!(ended >= until, "ended before its time");
        assert!(
            ended.duration_since(until).unwrap() < Duration::from_millis(500),
            "ended late"
        );
    }
}

/// Through the real binary and `gto ctl`: a site drain now is one rebuild and drains
/// both of its members; a window set for later survives a restart and is cancelled by an
/// undrain of the site.
#[tokio::test]
async fn a_site_drain_is_one_rebuild_and_a_window_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    crate::real::real_config_with_token(dir.path(), ZONE, |text| {
        with_sites(text).replace(
            "[server]\nlisten = [\"127.0.0.1:0\"]",
            "[server]\nlisten = [\"127.0.0.1:0\"]\nstate_file = \"gto.state\"",
        )
    });
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let admin = gto.admin_addr().await.to_string();
    let token = dir.path().join("admin.token");
    let ctl = |args: Vec<String>| {
        let admin = admin.clone();
        let token = token.clone();
        async move {
            let output = tokio::process::Command::from(gto_bin())
                .arg("ctl")
                .arg("--api")
                .arg(&admin)
                .arg("--token-file")
                .arg(&token)
                .args(&args)
                .output()
                .await
                .unwrap();
            (
                output.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        }
    };
    let generation = || {
        let admin = admin.clone();
        async move {
            http_json(admin.parse().unwrap(), "GET", "/v1/status", None, "")
                .await
                .1["generation"]
                .as_u64()
                .unwrap()
        }
    };
    let before = generation().await;
    let (code, out, err) = ctl(vec![
        "drain".into(),
        "--site".into(),
        "eu".into(),
        "--reason".into(),
        "fibre cut".into(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "sma/fra-1 drained\nsma/ams-1 drained\nsma/lon-1 drained\n"
    );
    assert_eq!(
        generation().await,
        before + 1,
        "one rebuild for the site's three members"
    );
    let (code, out, _) = ctl(vec!["undrain".into(), "--site".into(), "eu".into()]).await;
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "sma/fra-1 undrained\nsma/ams-1 undrained\nsma/lon-1 undrained\n"
    );
    assert_eq!(
        generation().await,
        before + 2,
        "one rebuild for the undrain"
    );

    // A window an hour ahead: pending, kept across a restart, cancelled by an undrain.
    let from = rfc3339(whole_second_after(Duration::from_secs(3600)));
    let (code, out, err) = ctl(vec![
        "drain".into(),
        "sma".into(),
        "nyc-1".into(),
        "--at".into(),
        from.clone(),
        "--for".into(),
        "2h".into(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("sma/nyc-1 drain scheduled from {from} until ")),
        "{out}"
    );
    gto.signal("TERM");
    assert!(gto.exit().await.success());
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let admin = gto.admin_addr().await;
    let status = http_json(admin, "GET", "/v1/status", None, "").await.1;
    let nyc = crate::real::member(&status, "nyc-1");
    assert_eq!(nyc["window"]["from"], from, "{nyc}");
    assert_eq!(nyc["drained"], false);
    let ctl_again = |args: &[&str]| {
        let mut command = gto_bin();
        command
            .arg("ctl")
            .arg("--api")
            .arg(admin.to_string())
            .arg("--token-file")
            .arg(&token)
            .args(args);
        command.output().unwrap()
    };
    let output = ctl_again(&["undrain", "sma", "nyc-1"]);
    assert!(output.status.success());
    let status = http_json(admin, "GET", "/v1/status", None, "").await.1;
    assert!(
        crate::real::member(&status, "nyc-1")
            .get("window")
            .is_none(),
        "{status}"
    );
    // No such site: refused, 1; neither a member nor a selection: usage, 2.
    let output = ctl_again(&["drain", "--site", "mars"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no member has site \"mars\""));
    let output = ctl_again(&["drain"]);
    assert_eq!(output.status.code(), Some(2));
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}
