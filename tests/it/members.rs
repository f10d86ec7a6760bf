//! Members added at run time, in a fleet of two real `gto` processes over a real etcd:
//! added with `gto ctl members add` on instance A, answered by A and B within a second and
//! after both restart; removed on B, gone from both; a member with a bad address refused
//! with its fields named, nothing changed; an operate token cannot add one; a member the
//! config file defines cannot be replaced; garbage in etcd counts for nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::admin::TOKEN;
use crate::fleet::{Etcd, fleet_config, within};
use crate::support::{RealGto, ZONE, answers, gto_bin, http_json, query, udp};

/// One instance: the real binary, its directory, its DNS and admin addresses.
struct Instance {
    gto: RealGto,
    dir: PathBuf,
    dns: SocketAddr,
    admin: SocketAddr,
}

impl Instance {
    async fn start(dir: &Path) -> Self {
        let mut gto = RealGto::run(&dir.join("gto.toml"));
        let (dns, admin) = (gto.dns_addr().await, gto.admin_addr().await);
        gto.wait_for_log("fleet store connected").await;
        Self {
            gto,
            dir: dir.to_path_buf(),
            dns,
            admin,
        }
    }

    async fn restart(mut self) -> Self {
        self.gto.signal("TERM");
        assert!(self.gto.exit().await.success());
        Self::start(&self.dir).await
    }

    async fn vpn(&self) -> Vec<String> {
        answers(
            &udp(
                self.dns,
                &query("vpn.gto.example.com.", RecordType::A, None),
            )
            .await
            .0,
        )
    }

    async fn status(&self) -> serde_json::Value {
        http_json(self.admin, "GET", "/v1/status", None, "").await.1
    }
}

/// The fleet config with a token of each role, written to `dir`.
fn write_instance(dir: &Path, etcd: &Etcd, name: &str) {
    let text = fleet_config(&etcd.url(), name, "")
        + "\n[[admin.token]]\nname = \"oncall\"\nfile = \"operate.token\"\nrole = \"operate\"\n";
    std::fs::write(dir.join("gto.toml"), text).unwrap();
    std::fs::write(dir.join("gto.example.com.zone"), ZONE).unwrap();
    std::fs::write(dir.join("admin.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.join("operate.token"), "operate-token-0123456789\n").unwrap();
}

async fn ctl(server: &Instance, args: &[&str]) -> (i32, String, String) {
    ctl_as(server, "admin.token", args).await
}

async fn ctl_as(server: &Instance, token: &str, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::from(gto_bin())
        .arg("ctl")
        .arg("--api")
        .arg(server.admin.to_string())
        .arg("--token-file")
        .arg(server.dir.join(token))
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// fra-1 and ams-1 are drained fleet-wide, so a failover answer of two is nyc-1 and, once
/// added, lon-1.
const WITH: [&str; 2] = ["203.0.113.30", "192.0.2.77"];
const WITHOUT: [&str; 1] = ["203.0.113.30"];

#[tokio::test]
async fn a_member_added_on_one_instance_is_answered_by_all_and_survives_restarts() {
    let etcd = Etcd::start().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_instance(dir_a.path(), &etcd, "a");
    write_instance(dir_b.path(), &etcd, "b");
    let (a, b) = (
        Instance::start(dir_a.path()).await,
        Instance::start(dir_b.path()).await,
    );
    let (code, body) = http_json(
        a.admin,
        "POST",
        "/v1/drain",
        Some(TOKEN),
        r#"{"members": ["sma/fra-1", "sma/ams-1"]}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    within(Duration::from_secs(2), "drains on both", || async {
        a.vpn().await == WITHOUT && b.vpn().await == WITHOUT
    })
    .await;

    // A bad member: refused with its fields named; nothing changes anywhere.
    let (code, _, err) = ctl(
        &a,
        &[
            "members",
            "add",
            "sma",
            "bad-1",
            "--address",
            "300.1.2.3",
            "--weight",
            "0",
        ],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("422") && err.contains("addresses[0]: \"300.1.2.3\" is not an IP address"),
        "{err}"
    );
    assert!(err.contains("weight: must be between 1 and"), "{err}");
    // An operate token may drain but not add members: 403 (audited), exit 77.
    let (code, _, err) = ctl_as(
        &a,
        "operate.token",
        &["members", "add", "sma", "lon-1", "--address", "192.0.2.77"],
    )
    .await;
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("403"), "{err}");
    // One the config file defines: 409.
    let (code, _, err) = ctl(
        &a,
        &["members", "add", "sma", "fra-1", "--address", "192.0.2.1"],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("409") && err.contains("defined in the config file"),
        "{err}"
    );

    // A member cannot bring a command to run on every instance: exec checks come only
    // from the config file.
    let (code, body) = http_json(
        a.admin,
        "PUT",
        "/v1/pools/sma/members/evil",
        Some(TOKEN),
        r#"{"addresses": ["192.0.2.66"], "check": {"kind": "exec", "command": ["/bin/true"]}}"#,
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["problems"][0]
            .as_str()
            .unwrap_or_default()
            .contains("exec check"),
        "{body}"
    );
    // Added on A: answered by A and B within a second.
    let (code, out, err) = ctl(
        &a,
        &[
            "members",
            "add",
            "sma",
            "lon-1",
            "--address",
            "192.0.2.77",
            "--site",
            "uk",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("sma/lon-1 added"), "{out}");
    let took = within(
        Duration::from_secs(1),
        "lon-1 answered by A and B",
        || async { a.vpn().await == WITH && b.vpn().await == WITH },
    )
    .await;
    assert!(took < Duration::from_secs(1));
    for server in [&a, &b] {
        let s = server.status().await;
        let lon = crate::real::member(&s, "lon-1");
        assert_eq!(lon["runtime"], true, "{lon}");
        let (_, metrics) = crate::support::http(server.admin, "GET", "/metrics", None, "").await;
        assert_eq!(
            crate::support::sample(&metrics, "gto_runtime_members", &[]),
            1.0
        );
    }
    let (_, explained) = http_json(
        b.admin,
        "GET",
        "/v1/explain?name=vpn.gto.example.com&client=192.0.2.1",
        None,
        "",
    )
    .await;
    let candidate = explained["gslb"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["member"] == "lon-1")
        .cloned()
        .unwrap();
    assert_eq!(candidate["runtime"], true, "{candidate}");

    // Both restart: lon-1 is still answered (state file, and the fleet's store).
    let a = a.restart().await;
    let b = b.restart().await;
    within(
        Duration::from_secs(2),
        "lon-1 answered after restarts",
        || async { a.vpn().await == WITH && b.vpn().await == WITH },
    )
    .await;

    // Removed on B: gone from both.
    let (code, out, err) = ctl(&b, &["members", "remove", "sma", "lon-1"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "sma/lon-1 removed");
    within(
        Duration::from_secs(1),
        "lon-1 gone from A and B",
        || async { a.vpn().await == WITHOUT && b.vpn().await == WITHOUT },
    )
    .await;
    for server in [&a, &b] {
        let s = server.status().await;
        assert!(
            s["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["member"] != "lon-1"),
            "{s}"
        );
    }
    // Garbage and a member stored under another's key count for nothing.
    let mut client = etcd.client().await;
    client
        .put("/gto/test/member/sma/evil", "garbage", None)
        .await
        .unwrap();
    client
        .put(
            "/gto/test/member/sma/forged",
            r#"{"pool":"sma","name":"other","fields":{"addresses":["192.0.2.66"]}}"#,
            None,
        )
        .await
        .unwrap();
    within(Duration::from_secs(2), "both values ignored", || async {
        let (_, metrics) = crate::support::http(a.admin, "GET", "/metrics", None, "").await;
        crate::support::sample(
            &metrics,
            "gto_cluster_ignored_values_total",
            &["reason=\"invalid\""],
        ) >= 2.0
    })
    .await;
    assert_eq!(a.vpn().await, WITHOUT);
    assert_eq!(b.vpn().await, WITHOUT);
    // Removing it again: 404, exit 1.
    let (code, _, err) = ctl(&a, &["members", "remove", "sma", "lon-1"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("404"), "{err}");
    // Each change's audit record names the token and the source address (the removal was
    // asked of B).
    let mut gto = b.gto;
    let log = gto.wait_for_log("member_remove requested").await;
    assert!(
        log.contains("token=default") && log.contains("caller=127.0.0.1"),
        "{log}"
    );
    assert!(log.contains("target=sma/lon-1"), "{log}");
    gto.signal("TERM");
    assert!(gto.exit().await.success());
    let mut gto = a.gto;
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}
