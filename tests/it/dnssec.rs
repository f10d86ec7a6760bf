//! Issue 14: DNSSEC end to end. Keys are made with the real `gto dnssec keygen`, the DS
//! comes from `gto dnssec ds`, and a real validating resolver (unbound) anchored on it
//! judges gto's answers: AD for GSLB answers with and without ECS, static names, a CNAME
//! into a GSLB name, denials (compact, RFC 9824), NODATA, wildcards and delegations;
//! SERVFAIL with a wrong anchor. Answers to queries without DO are byte for byte those of
//! the unsigned zone.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::{Edns, Message};
use hickory_proto::rr::RecordType;

use crate::authority;
use crate::geo::geo_config;
use crate::real::{metrics, real_config};
use crate::support::unbound::Unbound;
use crate::support::{
    RealGto, TestServer, ZONE, dig, gto_bin, query, sample, udp_raw, wait_answering,
};

/// The zone of the authority tests plus a delegation with a DS (a secure child).
pub(crate) fn zone() -> String {
    format!(
        "{0}secure    IN NS    ns.secure\n\
         ns.secure IN A     192.0.2.98\n\
         secure    IN DS    12345 13 2 49FD46E6C4B45C55D4AC69CBD3CD34AC1AFE51DE49FD46E6C4B45C55D4AC69CB\n\
         medium    IN TXT   \"{1}\" \"{1}\"\n",
        authority::zone(),
        "m".repeat(200)
    )
}

#[tokio::test]
async fn signed_answers_that_do_not_fit_are_truncated() {
    let server = signed_server(&[]).await;
    // 400 bytes of TXT fit 512 bytes; with their signature they do not.
    let plain = dig(
        server.addr,
        &[
            "+norec",
            "+bufsize=512",
            "+ignore",
            "medium.gto.example.com",
            "TXT",
        ],
    )
    .await;
    assert!(
        plain.contains("ANSWER: 1,") && !plain.contains(" tc"),
        "{plain}"
    );
    let signed = dig(
        server.addr,
        &[
            "+norec",
            "+dnssec",
            "+bufsize=512",
            "+ignore",
            "medium.gto.example.com",
            "TXT",
        ],
    )
    .await;
    assert!(
        signed.contains(" tc;") && signed.contains("ANSWER: 0,"),
        "{signed}"
    );
    // Over TCP (dig retries there without +ignore) the signed answer is whole.
    let tcp = dig(
        server.addr,
        &[
            "+norec",
            "+dnssec",
            "+bufsize=512",
            "medium.gto.example.com",
            "TXT",
        ],
    )
    .await;
    assert!(
        tcp.contains("ANSWER: 2,") && tcp.contains("RRSIG\tTXT"),
        "{tcp}"
    );
    // A GSLB answer with its signature fits; the earliest expiry is exported.
    let gslb = dig(
        server.addr,
        &[
            "+norec",
            "+dnssec",
            "+bufsize=512",
            "vpn.gto.example.com",
            "A",
        ],
    )
    .await;
    assert!(
        gslb.contains("RRSIG\tA 13 4 20") && !gslb.contains(" tc"),
        "{gslb}"
    );
    let (_, metrics) = crate::support::http(server.admin(), "GET", "/metrics", None, "").await;
    let left = crate::support::sample(
        &metrics,
        "gto_dnssec_signature_expiry_seconds",
        &["zone=\"gto.example.com.\""],
    );
    assert!(
        left > 13.0 * 86_400.0 && left <= 14.0 * 86_400.0,
        "{left}\n{metrics}"
    );
    let expires = crate::support::sample(
        &metrics,
        "gto_dnssec_signature_expiry_timestamp_seconds",
        &["zone=\"gto.example.com.\""],
    );
    let from_now = expires - gto::time::unix_now() as f64;
    assert!(
        (from_now - left).abs() < 120.0,
        "{expires} vs {left} s left"
    );
    let (_, status) =
        crate::support::http_json(server.admin(), "GET", "/v1/status", None, "").await;
    let zone = &status["dnssec"][0];
    assert_eq!(zone["zone"], "gto.example.com.");
    assert_eq!(zone["signing_keys"][0]["role"], "csk");
    assert_eq!(zone["signing_keys"][0]["algorithm"], 13);
    assert!(zone["cached_sets"].as_u64().unwrap() >= 1, "{status}");
}

/// A signed child zone that gto serves too, delegated from the signed parent with the DS
/// `gto dnssec keygen` printed: unbound follows the chain of trust from the parent's anchor
/// through the DS (answered and signed by the parent) to the child's keys.
#[tokio::test]
async fn the_chain_of_trust_reaches_a_signed_child_zone() {
    let dir = tempfile::tempdir().unwrap();
    let printed = keygen(dir.path(), "keys", &[]);
    assert!(printed.contains(" IN DS "));
    let output = gto_bin()
        .args([
            "dnssec",
            "keygen",
            "--zone",
            "child.gto.example.com.",
            "--dir",
        ])
        .arg(dir.path().join("childkeys"))
        .output()
        .unwrap();
    assert!(output.status.success());
    let child_ds: String = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.contains(" IN DS "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(child_ds.lines().count(), 1);
    let parent = format!(
        "{}child IN NS ns1.gto.example.com.\n{child_ds}",
        crate::support::ZONE
    );
    let child = "$ORIGIN child.gto.example.com.\n\
                 @ 300 SOA ns1.gto.example.com. h.example.com. 1 3600 600 86400 60\n\
                 @ 300 NS ns1.gto.example.com.\n\
                 www 300 A 192.0.2.150\n";
    let config = format!(
        "{}\n[[zone]]\norigin = \"child.gto.example.com.\"\nfile = \"child.zone\"\n\
         dnssec = {{ keys = \"childkeys\" }}\n",
        signed(&crate::support::config(""))
    );
    std::fs::write(dir.path().join("gto.toml"), config).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), parent).unwrap();
    std::fs::write(dir.path().join("child.zone"), child).unwrap();
    let server = TestServer::start_in(dir).await;
    let anchors: String = ds_of(server.dir.path())
        .lines()
        .filter(|l| l.starts_with("gto.example.com.") && l.contains(" IN DS "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        anchors.lines().count(),
        1,
        "the parent's DS only: {anchors}"
    );
    let unbound = Unbound::start("gto.example.com.", server.addr, &anchors).await;
    let ds = expect_ad(&unbound, &["child.gto.example.com", "DS"], "NOERROR").await;
    assert_eq!(ds.len(), 1, "{ds:?}");
    let www = expect_ad(&unbound, &["www.child.gto.example.com", "A"], "NOERROR").await;
    assert_eq!(www, ["192.0.2.150"]);
    let none = expect_ad(&unbound, &["nope.child.gto.example.com", "A"], "NOERROR").await;
    assert!(none.is_empty());
}

/// `gto dnssec rollover` on a running server's key directory: the server notices the
/// changed directory by itself and publishes the successor (pre-publication), still
/// signing with the old key, so the parent's DS keeps validating.
#[tokio::test]
async fn a_rollover_started_by_hand_is_picked_up_by_the_running_server() {
    let server = signed_server(&[]).await;
    let anchors = ds_of(server.dir.path());
    let output = gto_bin()
        .args([
            "dnssec",
            "rollover",
            "--zone",
            "gto.example.com",
            "--config",
        ])
        .arg(server.path("gto.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("CSK rollover") && stdout.contains("published now"),
        "{stdout}"
    );
    let keys = || async {
        dig(
            server.addr,
            &["+short", "+norec", "gto.example.com", "DNSKEY"],
        )
        .await
        .lines()
        .count()
    };
    // The server checks its key directory every 2 s: poll its answer until then.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while keys().await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the successor was not published"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status = gto_bin()
        .args(["dnssec", "status", "--config"])
        .arg(server.path("gto.toml"))
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("published (not yet signing)"), "{status}");
    let unbound = Unbound::start("gto.example.com.", server.addr, &anchors).await;
    expect_ad(&unbound, &["vpn.gto.example.com", "A"], "NOERROR").await;
    expect_ad(&unbound, &["gto.example.com", "DNSKEY"], "NOERROR").await;
}

/// Affinity spreads clients over answer sets that are not all prepared in advance (three
/// candidates, two addresses per answer): every set a client gets validates, the ones met
/// first at query time included, and so do the new sets after an endpoint is drained.
#[tokio::test]
async fn every_affinity_set_validates_before_and_after_a_drain() {
    let dir = tempfile::tempdir().unwrap();
    let token = crate::admin::TOKEN;
    let config = signed(&crate::support::config(""))
        .replace(
            "pool = \"sma\"\nanswers = 2",
            "pool = \"sma\"\npolicy = \"weighted\"\nanswers = 2",
        )
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"",
        );
    assert!(config.contains("policy = \"weighted\""));
    std::fs::write(dir.path().join("gto.toml"), config).unwrap();
    std::fs::write(
        dir.path().join("gto.example.com.zone"),
        crate::support::ZONE,
    )
    .unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{token}\n")).unwrap();
    keygen(dir.path(), "keys", &[]);
    let server = TestServer::start_in(dir).await;
    let anchors = ds_of(server.dir.path());

    let sets = |unbound: Unbound| async move {
        let mut seen = std::collections::BTreeSet::new();
        for net in 1..=24 {
            let subnet = format!("+subnet=10.{net}.7.0/24");
            let mut answer = expect_ad(
                &unbound,
                &[subnet.as_str(), "vpn.gto.example.com", "A"],
                "NOERROR",
            )
            .await;
            answer.sort();
            seen.insert(answer);
        }
        seen
    };
    let before = sets(Unbound::start("gto.example.com.", server.addr, &anchors).await).await;
    assert!(before.len() >= 3, "affinity spreads clients: {before:?}");
    let (code, body) = crate::support::http_json(
        server.admin(),
        "POST",
        "/v1/members/sma/ams-1/drain",
        Some(token),
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let after = sets(Unbound::start("gto.example.com.", server.addr, &anchors).await).await;
    assert!(
        after
            .iter()
            .all(|set| !set.contains(&"198.51.100.20".to_string())),
        "{after:?}"
    );
    assert_eq!(
        after.len(),
        1,
        "two endpoints left, both answered: {after:?}"
    );
}

#[test]
fn check_locates_every_key_problem() {
    let dir = tempfile::tempdir().unwrap();
    // Zone one: its key directory does not exist. Zone two: a private key others can read.
    let config = format!(
        "{}\n[[zone]]\norigin = \"lab.gto.example.com.\"\nfile = \"lab.zone\"\n\
         dnssec = {{ keys = \"labkeys\", lifetime = \"5m\" }}\n",
        signed(&crate::support::config("")).replace("keys = \"keys\"", "keys = \"missing\"")
    );
    std::fs::write(dir.path().join("gto.toml"), config).unwrap();
    std::fs::write(
        dir.path().join("gto.example.com.zone"),
        crate::support::ZONE,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("lab.zone"),
        "$ORIGIN lab.gto.example.com.\n@ 300 SOA ns1 h 1 3600 600 86400 60\n@ 300 NS ns1\nns1 300 A 192.0.2.1\n",
    )
    .unwrap();
    let output = gto_bin()
        .args([
            "dnssec",
            "keygen",
            "--zone",
            "lab.gto.example.com.",
            "--dir",
        ])
        .arg(dir.path().join("labkeys"))
        .output()
        .unwrap();
    assert!(output.status.success());
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir.path().join("labkeys")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "private") {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let (code, _, stderr) = crate::check::check(dir.path());
    assert_eq!(code, 64, "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].contains("gto.toml:")
            && lines[0].contains("zone[0].dnssec.keys")
            && lines[0].contains("is not a directory"),
        "{stderr}"
    );
    assert!(lines.iter().any(|l| l.contains("zone[1].dnssec.keys") && l.contains("readable by group or others")), "{stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("zone[1].dnssec.lifetime") && l.contains("at least 1h")),
        "{stderr}"
    );
    // Bad arguments to keygen: exit 64 with the reason.
    let output = gto_bin()
        .args([
            "dnssec",
            "keygen",
            "--zone",
            "x.",
            "--dir",
            "/tmp",
            "--algorithm",
            "rsa",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--algorithm"));
}

pub(crate) fn signed(config: &str) -> String {
    config.replacen(
        "file = \"gto.example.com.zone\"\n",
        "file = \"gto.example.com.zone\"\ndnssec = { keys = \"keys\" }\n",
        1,
    )
}

pub(crate) fn keygen(dir: &Path, keys: &str, extra: &[&str]) -> String {
    let output = gto_bin()
        .args(["dnssec", "keygen", "--zone", "gto.example.com.", "--dir"])
        .arg(dir.join(keys))
        .args(extra)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn ds_of(dir: &Path) -> String {
    let output = gto_bin()
        .args(["dnssec", "ds", "--config"])
        .arg(dir.join("gto.toml"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// A signed server: keys made by the CLI, the geo config (answers depend on ECS).
async fn signed_server(extra_keygen: &[&[&str]]) -> TestServer {
    signed_server_with(extra_keygen, &zone()).await
}

async fn signed_server_with(extra_keygen: &[&[&str]], zone: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gto.toml"), signed(&geo_config(""))).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), zone).unwrap();
    if extra_keygen.is_empty() {
        keygen(dir.path(), "keys", &[]);
    }
    for args in extra_keygen {
        keygen(dir.path(), "keys", args);
    }
    TestServer::start_in(dir).await
}

async fn expect_ad(unbound: &Unbound, args: &[&str], status: &str) -> Vec<String> {
    let verdict = unbound.ask(args).await;
    assert!(
        verdict.ad && verdict.status == status,
        "{args:?}: expected {status} with AD\n{}\nunbound log:\n{}",
        verdict.text,
        unbound.log()
    );
    verdict.answers
}

async fn validated_by_unbound(server: &TestServer) {
    validated_at(server.dir.path(), server.addr).await;
}

/// Every kind of answer of the server at `addr` (config and keys in `dir`) validates.
async fn validated_at(dir: &Path, addr: std::net::SocketAddr) {
    let anchors = ds_of(dir);
    assert!(anchors.contains(" IN DS "), "{anchors}");
    let unbound = Unbound::start("gto.example.com.", addr, &anchors).await;

    // GSLB, without ECS and with ECS from two places: different signed sets, all valid.
    let plain = expect_ad(&unbound, &["vpn.gto.example.com", "A"], "NOERROR").await;
    assert!(!plain.is_empty());
    let tokyo = expect_ad(
        &unbound,
        &["+subnet=203.0.113.0/24", "vpn.gto.example.com", "A"],
        "NOERROR",
    )
    .await;
    assert!(tokyo.contains(&"192.0.2.31".to_string()), "{tokyo:?}");
    let paris = expect_ad(
        &unbound,
        &["+subnet=198.51.100.0/24", "vpn.gto.example.com", "A"],
        "NOERROR",
    )
    .await;
    assert!(paris.contains(&"192.0.2.11".to_string()), "{paris:?}");
    assert!(!paris.contains(&"192.0.2.31".to_string()), "{paris:?}");
    // A second GSLB name, and NODATA at a GSLB name (no IPv6 endpoint).
    expect_ad(&unbound, &["plain.gto.example.com", "A"], "NOERROR").await;
    let none = expect_ad(&unbound, &["vpn.gto.example.com", "AAAA"], "NOERROR").await;
    assert!(none.is_empty(), "{none:?}");
    // Static names, the apex, MX, a CNAME into the GSLB name.
    let www = expect_ad(&unbound, &["www.gto.example.com", "A"], "NOERROR").await;
    assert_eq!(www, ["192.0.2.80"]);
    expect_ad(&unbound, &["gto.example.com", "MX"], "NOERROR").await;
    expect_ad(&unbound, &["gto.example.com", "SOA"], "NOERROR").await;
    let remote = expect_ad(&unbound, &["remote.gto.example.com", "A"], "NOERROR").await;
    assert!(remote.len() >= 2, "{remote:?}");
    // Denial of existence (compact: NOERROR, no answer), and NODATA at a static name and
    // at an empty non-terminal.
    let nothing = expect_ad(&unbound, &["nope.gto.example.com", "A"], "NOERROR").await;
    assert!(nothing.is_empty());
    let nothing = expect_ad(&unbound, &["a.b.c.nope.gto.example.com", "TXT"], "NOERROR").await;
    assert!(nothing.is_empty());
    let nothing = expect_ad(&unbound, &["www.gto.example.com", "TXT"], "NOERROR").await;
    assert!(nothing.is_empty());
    expect_ad(&unbound, &["b.wild.gto.example.com", "A"], "NOERROR").await;
    // Wildcards: synthesized answers, NODATA of a synthesized name, a CNAME into one.
    let wild = expect_ad(&unbound, &["anything.wild.gto.example.com", "A"], "NOERROR").await;
    assert_eq!(wild, ["192.0.2.180"]);
    let wild = expect_ad(&unbound, &["x.y.wild.gto.example.com", "TXT"], "NOERROR").await;
    assert_eq!(wild, ["\"wild\""]);
    let none = expect_ad(
        &unbound,
        &["anything.wild.gto.example.com", "AAAA"],
        "NOERROR",
    )
    .await;
    assert!(none.is_empty());
    expect_ad(&unbound, &["towild.gto.example.com", "A"], "NOERROR").await;
    // Delegations: an insecure one (no DS, proven by NSEC) and a secure one (DS).
    let none = expect_ad(&unbound, &["sub.gto.example.com", "DS"], "NOERROR").await;
    assert!(none.is_empty());
    let ds = expect_ad(&unbound, &["secure.gto.example.com", "DS"], "NOERROR").await;
    assert_eq!(ds.len(), 1, "{ds:?}");
    // DNSKEY and CDS at the apex.
    expect_ad(&unbound, &["gto.example.com", "DNSKEY"], "NOERROR").await;
    expect_ad(&unbound, &["gto.example.com", "CDS"], "NOERROR").await;
}

#[tokio::test]
async fn unbound_validates_every_kind_of_answer() {
    let server = signed_server(&[]).await;
    validated_by_unbound(&server).await;
}

/// 20,000 names `bulk<i>` with an A record each, for zones big enough to be signed by
/// several threads, on first use, and indexed after the first snapshot.
fn bulk_names() -> String {
    (0..20_000)
        .map(|i| format!("bulk{i} IN A 10.0.{}.{}\n", (i >> 8) & 255, i & 255))
        .collect()
}

/// Names of [`bulk_names`] from every share validate through unbound at `addr` (keys and
/// config in `dir`), with their NODATA, and so does a name that does not exist among them.
async fn bulk_validates(dir: &Path, addr: std::net::SocketAddr) {
    let anchors = ds_of(dir);
    let unbound = Unbound::start("gto.example.com.", addr, &anchors).await;
    for (i, want) in [
        (0, "10.0.0.0"),
        (7_777, "10.0.30.97"),
        (19_999, "10.0.78.31"),
    ] {
        let name = format!("bulk{i}.gto.example.com");
        let answers = expect_ad(&unbound, &[&name, "A"], "NOERROR").await;
        assert_eq!(answers, [want], "{name}");
        let nodata = expect_ad(&unbound, &[&name, "TXT"], "NOERROR").await;
        assert!(nodata.is_empty(), "{name} TXT: {nodata:?}");
    }
    let nothing = expect_ad(&unbound, &["bulk20000x.gto.example.com", "A"], "NOERROR").await;
    assert!(nothing.is_empty());
}

/// A zone of over 20,000 names is signed on first use at start, then whole by several
/// threads (their shares merged), and its fast path's index is built after: every kind of
/// answer validates, whichever of these answers it, and so do names from every share,
/// their NODATA and a name that does not exist among them.
#[tokio::test]
async fn unbound_validates_a_big_zone_signed_by_several_threads() {
    let server = signed_server_with(&[], &format!("{}{}", zone(), bulk_names())).await;
    validated_by_unbound(&server).await;
    bulk_validates(server.dir.path(), server.addr).await;
}

/// A signed config with a state file (so the zone's signatures are kept beside it), the
/// zone file `zone` and a key made by `gto dnssec keygen`, in a fresh directory.
fn signed_with_state(zone: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config =
        signed(&geo_config("")).replacen("[server]\n", "[server]\nstate_file = \"gto.state\"\n", 1);
    std::fs::write(dir.path().join("gto.toml"), config).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), zone).unwrap();
    keygen(dir.path(), "keys", &[]);
    dir
}

/// The status of the one signed zone of `routing`'s live snapshot.
fn zone_status(routing: &gto::routing::RoutingHandle) -> serde_json::Value {
    let status = gto::routing::status_json(&routing.load_full());
    assert_eq!(status.len(), 1, "{status:?}");
    status[0].clone()
}

/// A big signed zone `zone` (with a state file, in the returned directory) served by a
/// real DNS server on a snapshot whose builder is held back: the first snapshot stays as
/// it starts, signing on first use, with only the GSLB names' proofs and the SOA signed
/// (under 100 signatures; a wildcard's chain is signed link by link as answers need it).
async fn served_on_first_use(
    zone: &str,
) -> (
    tempfile::TempDir,
    gto::routing::Builder,
    gto::routing::RoutingHandle,
    gto::dns::DnsServer,
) {
    let dir = signed_with_state(zone);
    let loaded = gto::ConfigSource::File(dir.path().join("gto.toml"))
        .load()
        .unwrap();
    let settings = loaded.config.server.clone();
    let builder = gto::routing::Builder::new(loaded);
    let routing = builder.handle();
    let status = zone_status(&routing);
    assert_eq!(status["signed_on_first_use"], true, "{status}");
    let at_start = status["signed_at_preparation"].as_u64().unwrap();
    assert!(at_start < 100, "{status}");
    let dns = gto::dns::DnsServer::start(&settings, 64, routing.clone())
        .await
        .unwrap();
    (dir, builder, routing, dns)
}

/// The builder of [`served_on_first_use`], run until the zone is signed whole (off its
/// task) and served; stopped by [`SigningWhole::stop`].
struct SigningWhole {
    events: tokio::sync::mpsc::Sender<gto::routing::BuildEvent>,
    token: tokio_util::sync::CancellationToken,
    run: tokio::task::JoinHandle<()>,
}

impl SigningWhole {
    /// Runs `builder` and waits until the zone `routing` serves is signed whole; returns
    /// the signatures its preparation made.
    async fn start(
        builder: gto::routing::Builder,
        routing: &gto::routing::RoutingHandle,
    ) -> (Self, u64) {
        let (events, receiver) = tokio::sync::mpsc::channel(16);
        let token = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(builder.run(receiver, token.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while zone_status(routing)["signed_on_first_use"] == true {
            assert!(tokio::time::Instant::now() < deadline, "never signed whole");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = zone_status(routing);
        let signed = status["signed_at_preparation"].as_u64().unwrap();
        let this = Self { events, token, run };
        (this, signed)
    }

    /// Stops the builder and waits for it.
    async fn stop(self) {
        self.token.cancel();
        drop(self.events);
        self.run.await.unwrap();
    }
}

/// Issue 35: a big zone's first preparation answers before its signatures are made: the
/// static sets are signed when first asked (unbound validates every kind of answer, the
/// names of the zone's bulk and their NODATA), while the builder signs the whole zone in
/// a thread of its own and then serves that, keeping its signatures beside the state file;
/// a restart answers signed on first use again and fills from the kept signatures,
/// signing nothing.
#[tokio::test]
async fn a_big_zone_answers_signed_on_first_use_until_it_is_signed_whole() {
    let (dir, builder, routing, dns) =
        served_on_first_use(&format!("{}{}", zone(), bulk_names())).await;
    let addr = dns.local_addrs()[0];
    validated_at(dir.path(), addr).await;
    bulk_validates(dir.path(), addr).await;
    assert_eq!(zone_status(&routing)["signed_on_first_use"], true);

    // The builder runs: the zone is signed whole off its task and served.
    let (builder, whole) = SigningWhole::start(builder, &routing).await;
    // An A set and a NODATA proof for each of the 20,000 names, at least.
    assert!(whole > 40_000, "{whole}");
    validated_at(dir.path(), addr).await;
    bulk_validates(dir.path(), addr).await;
    builder.stop().await;
    dns.shutdown(Duration::from_secs(1)).await.unwrap();
    gto::dnssec::kept::finish_writes();
    let kept = dir.path().join("gto.state.signatures.gto.example.com");
    assert!(kept.is_file(), "no kept signatures at {}", kept.display());

    // A restart answers at once and fills from the kept signatures.
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    gto.wait_for_log("zone served signed on first use").await;
    let line = gto.wait_for_log("zone signed").await;
    assert_eq!(signed_counts(&line), (0, whole), "{line}");
    validated_at(dir.path(), gto.dns_addr().await).await;
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// A big zone with a wildcard at its apex (every name is in the wildcard's NSEC chain):
/// its first preparation signs none of the chain, each link an answer needs is signed when
/// first asked; then the whole signing signs the chain's 20,000 links by several threads.
/// Answers synthesized from the wildcard, NODATA there and the zone's own names validate
/// through unbound before and after.
#[tokio::test]
async fn an_apex_wildcard_chain_is_signed_on_first_use_then_whole() {
    let (dir, builder, routing, dns) =
        served_on_first_use(&format!("{}* IN TXT \"any\"\n{}", zone(), bulk_names())).await;
    let addr = dns.local_addrs()[0];
    apex_wildcard_validates(dir.path(), addr).await;
    let (builder, whole) = SigningWhole::start(builder, &routing).await;
    // An A set, a NODATA proof and a chain link for each of the 20,000 names, at least.
    assert!(whole > 60_000, "{whole}");
    apex_wildcard_validates(dir.path(), addr).await;
    builder.stop().await;
    dns.shutdown(Duration::from_secs(1)).await.unwrap();
}

/// At `addr` (keys in `dir`), names the apex wildcard answers (TXT, and NODATA for A) and
/// a name of the zone validate.
async fn apex_wildcard_validates(dir: &Path, addr: std::net::SocketAddr) {
    let anchors = ds_of(dir);
    let unbound = Unbound::start("gto.example.com.", addr, &anchors).await;
    for name in [
        "zz.gto.example.com",
        "a.b.bulk5x.gto.example.com",
        "bulk19999a.gto.example.com",
    ] {
        let text = expect_ad(&unbound, &[name, "TXT"], "NOERROR").await;
        assert_eq!(text, ["\"any\""], "{name}");
        let none = expect_ad(&unbound, &[name, "A"], "NOERROR").await;
        assert!(none.is_empty(), "{name} A: {none:?}");
    }
    let bulk = expect_ad(&unbound, &["bulk7777.gto.example.com", "A"], "NOERROR").await;
    assert_eq!(bulk, ["10.0.30.97"]);
}

/// Issue 35: a reload while a big zone is signed whole in the background (its first
/// preparation signs on first use) ends signed whole too: the reload's preparation signs
/// on first use again and is filled in turn, whatever the first filling had done by then
/// (its result, for a preparation no longer served, is dropped). The new name validates.
#[tokio::test]
async fn a_reload_while_a_big_zone_is_signed_in_the_background_ends_signed_whole() {
    let dir = signed_with_state(&format!("{}{}", zone(), bulk_names()));
    let zone_file = dir.path().join("gto.example.com.zone");
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    gto.wait_for_log("zone served signed on first use").await;
    // At once, while the first preparation is signed whole: a new name and serial.
    let text = std::fs::read_to_string(&zone_file).unwrap();
    let bumped = text.replacen("2026112501 ; serial", "2026112502 ; serial", 1);
    assert_ne!(bumped, text, "the zone's serial was not found");
    std::fs::write(&zone_file, format!("{bumped}added IN A 192.0.2.99\n")).unwrap();
    gto.signal("HUP");
    gto.wait_for_log("config reloaded").await;
    let admin = gto.admin_addr().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, status) = crate::support::http_json(admin, "GET", "/v1/status", None, "").await;
        let zones = status["dnssec"].as_array().cloned().unwrap_or_default();
        assert_eq!(zones.len(), 1, "{status}");
        if zones[0]["signed_on_first_use"] == false {
            // Signed whole: every name's A set and NODATA proof, at least, made or
            // reused from what the first filling kept.
            let signed = zones[0]["signed_at_preparation"].as_u64().unwrap();
            let reused = zones[0]["reused_at_preparation"].as_u64().unwrap();
            assert!(signed + reused > 40_000, "{status}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never signed whole: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = gto.dns_addr().await;
    let anchors = ds_of(dir.path());
    let unbound = Unbound::start("gto.example.com.", addr, &anchors).await;
    let added = expect_ad(&unbound, &["added.gto.example.com", "A"], "NOERROR").await;
    assert_eq!(added, ["192.0.2.99"]);
    drop(unbound);
    bulk_validates(dir.path(), addr).await;
    validated_at(dir.path(), addr).await;
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// The `signed=` and `reused=` counts of a "zone signed" log line.
fn signed_counts(line: &str) -> (u64, u64) {
    let count = |name: &str| -> u64 {
        let at = line
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no {name}= in {line:?}"));
        line[at + name.len() + 1..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (count("signed"), count("reused"))
}

/// Issue 35: a signed zone's signatures are kept beside the state file. A restart signs
/// nothing again, a reload that adds a name signs only what changed, and the answers of
/// both validate in unbound; a damaged file is ignored and the zone signed whole.
#[tokio::test]
async fn kept_signatures_are_reused_after_a_restart_and_a_reload() {
    let dir = signed_with_state(&zone());
    let kept = dir.path().join("gto.state.signatures.gto.example.com");
    let config = dir.path().join("gto.toml");

    // First start: everything signed, nothing to reuse; the file is written.
    let mut gto = RealGto::run(&config);
    let (made, reused) = signed_counts(&gto.wait_for_log("zone signed").await);
    assert!(made > 20 && reused == 0, "made {made}, reused {reused}");
    gto.signal("TERM");
    assert!(gto.exit().await.success());
    assert!(kept.is_file(), "no kept signatures at {}", kept.display());

    // A restart reuses every signature and validates.
    let mut gto = RealGto::run(&config);
    let line = gto.wait_for_log("zone signed").await;
    assert_eq!(signed_counts(&line), (0, made), "{line}");
    validated_at(dir.path(), gto.dns_addr().await).await;

    // A reload with one more name and a new serial: its A set, its NSEC and the SOA are
    // signed (the SOA also for negative answers), the rest reused.
    let zone_file = dir.path().join("gto.example.com.zone");
    let text = std::fs::read_to_string(&zone_file).unwrap();
    let bumped = text.replacen("2026112501 ; serial", "2026112502 ; serial", 1);
    assert_ne!(bumped, text, "the zone's serial was not found");
    std::fs::write(&zone_file, format!("{bumped}added IN A 192.0.2.99\n")).unwrap();
    gto.signal("HUP");
    let line = gto.wait_for_log("zone signed").await;
    let (fresh, again) = signed_counts(&line);
    assert!((2..=4).contains(&fresh), "{line}");
    assert_eq!(fresh + again, made + 2, "{line}");
    gto.wait_for_log("config reloaded").await;
    let addr = gto.dns_addr().await;
    let anchors = ds_of(dir.path());
    let unbound = Unbound::start("gto.example.com.", addr, &anchors).await;
    let added = expect_ad(&unbound, &["added.gto.example.com", "A"], "NOERROR").await;
    assert_eq!(added, ["192.0.2.99"]);
    expect_ad(&unbound, &["www.gto.example.com", "A"], "NOERROR").await;
    drop(unbound);
    gto.signal("TERM");
    assert!(gto.exit().await.success());

    // A damaged file (one byte flipped) is ignored: the zone is signed whole, and valid.
    let mut bytes = std::fs::read(&kept).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&kept, bytes).unwrap();
    let mut gto = RealGto::run(&config);
    gto.wait_for_log("kept signatures ignored").await;
    let line = gto.wait_for_log("zone signed").await;
    assert_eq!(signed_counts(&line), (made + 2, 0), "{line}");
    validated_at(dir.path(), gto.dns_addr().await).await;
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

#[tokio::test]
async fn unbound_validates_an_ed25519_ksk_zsk_split() {
    let server = signed_server(&[
        &["--role", "ksk", "--algorithm", "ed25519"],
        &["--role", "zsk", "--algorithm", "ed25519"],
    ])
    .await;
    let ds = ds_of(server.dir.path());
    assert_eq!(
        ds.matches(" IN DS ").count(),
        1,
        "only the KSK goes to the parent: {ds}"
    );
    assert!(ds.contains(" 15 2 "), "{ds}");
    validated_by_unbound(&server).await;
}

#[tokio::test]
async fn a_wrong_trust_anchor_gives_servfail() {
    let server = signed_server(&[]).await;
    // The DS of another key of the same zone: gto's signatures do not chain to it.
    let other = tempfile::tempdir().unwrap();
    let printed = keygen(other.path(), "keys", &[]);
    let anchor: String = printed.lines().filter(|l| l.contains(" IN DS ")).collect();
    let unbound = Unbound::start("gto.example.com.", server.addr, &anchor).await;
    for name in [
        "vpn.gto.example.com",
        "www.gto.example.com",
        "nope.gto.example.com",
    ] {
        let verdict = unbound.ask(&[name, "A"]).await;
        assert_eq!(verdict.status, "SERVFAIL", "{name}: {}", verdict.text);
        assert!(!verdict.ad);
    }
}

#[tokio::test]
async fn referrals_carry_the_ds_or_the_proof_there_is_none() {
    let server = signed_server(&[]).await;
    let insecure = dig(
        server.addr,
        &["+dnssec", "+norec", "www.sub.gto.example.com", "A"],
    )
    .await;
    assert!(
        insecure.contains("flags: qr;"),
        "a referral is not authoritative: {insecure}"
    );
    assert!(
        insecure.contains(
            "sub.gto.example.com.\t60\tIN\tNSEC\t\\000.sub.gto.example.com. NS RRSIG NSEC"
        ),
        "{insecure}"
    );
    assert!(insecure.contains("RRSIG\tNSEC 13 4 60"), "{insecure}");
    let secure = dig(
        server.addr,
        &["+dnssec", "+norec", "x.secure.gto.example.com", "A"],
    )
    .await;
    assert!(
        secure.contains("secure.gto.example.com.\t3600\tIN\tDS\t12345 13 2"),
        "{secure}"
    );
    assert!(secure.contains("RRSIG\tDS 13 4 3600"), "{secure}");
    assert!(!secure.contains("NSEC"), "{secure}");
    // Without DO: the plain referral.
    let plain = dig(server.addr, &["+norec", "x.secure.gto.example.com", "A"]).await;
    assert!(
        !plain.contains("RRSIG") && !plain.contains("\tDS\t"),
        "{plain}"
    );
}

#[tokio::test]
async fn compact_denial_is_nxdomain_for_a_client_that_sets_co() {
    let server = signed_server(&[]).await;
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.flags_mut().dnssec_ok = true;
    edns.flags_mut().z = gto::dnssec::CO_FLAG;
    let bytes = query("nope.gto.example.com.", RecordType::A, Some(edns))
        .to_vec()
        .unwrap();
    let reply = Message::from_vec(&udp_raw(server.addr, &bytes).await.unwrap()).unwrap();
    assert_eq!(
        reply.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );
    assert!(reply.edns.unwrap().flags().z & gto::dnssec::CO_FLAG != 0);
    let nsec = reply
        .authorities
        .iter()
        .find(|r| r.record_type() == RecordType::NSEC)
        .expect("an NSEC");
    let hickory_proto::rr::RData::DNSSEC(hickory_proto::dnssec::rdata::DNSSECRData::NSEC(nsec)) =
        &nsec.data
    else {
        panic!("not an NSEC: {nsec}");
    };
    let types: Vec<u16> = nsec.type_bit_maps().map(u16::from).collect();
    assert_eq!(types, [46, 47, 128], "RRSIG, NSEC and NXNAME");
}

#[tokio::test]
async fn answers_without_do_are_byte_for_byte_unchanged() {
    let unsigned = TestServer::start(&geo_config(""), &zone()).await;
    let server = signed_server(&[]).await;
    let names = [
        "vpn.gto.example.com.",
        "plain.gto.example.com.",
        "www.gto.example.com.",
        "gto.example.com.",
        "remote.gto.example.com.",
        "nope.gto.example.com.",
        "foo.wild.gto.example.com.",
        "b.wild.gto.example.com.",
        "x.sub.gto.example.com.",
        "secure.gto.example.com.",
        "x.secure.gto.example.com.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::MX,
        RecordType::NS,
        RecordType::SOA,
        RecordType::DS,
    ];
    let mut compared = 0;
    for name in names {
        for qtype in types {
            for edns in [None, Some(crate::support::edns(1232))] {
                let bytes = query(name, qtype, edns).to_vec().unwrap();
                let a = udp_raw(unsigned.addr, &bytes).await.unwrap();
                let b = udp_raw(server.addr, &bytes).await.unwrap();
                assert_eq!(a, b, "{name} {qtype}");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, names.len() * types.len() * 2);
}

/// Item 1: a key shipped with mode 0644 is warned about once, and nothing is re-signed
/// for it every 2 s; once its mode is fixed it is read and published.
#[tokio::test]
async fn a_bad_key_file_is_warned_once_and_re_signs_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    real_config(dir.path(), ZONE, |text| crate::dnssec::signed(&text));
    crate::dnssec::keygen(dir.path(), "keys", &[]);
    let mut gto = RealGto::run(&dir.path().join("gto.toml"));
    let addr = gto.dns_addr().await;
    let admin = gto.admin_addr().await;
    wait_answering(addr, "vpn.gto.example.com.").await;
    let dnskeys = |text: String| {
        text.lines()
            .filter(|l| !l.starts_with(';') && l.contains("\tDNSKEY\t"))
            .count()
    };
    let apex = ["+norec", "+dnssec", "gto.example.com.", "DNSKEY"];
    assert_eq!(dnskeys(dig(addr, &apex).await), 1);

    // A second key, made elsewhere and copied in as `cp` would: the private key 0644.
    crate::dnssec::keygen(dir.path(), "elsewhere", &[]);
    let mut private = None;
    for entry in std::fs::read_dir(dir.path().join("elsewhere")).unwrap() {
        let from = entry.unwrap().path();
        let to = dir.path().join("keys").join(from.file_name().unwrap());
        std::fs::copy(&from, &to).unwrap();
        if to.extension() == Some(OsStr::new("private")) {
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
            private = Some(to);
        }
    }
    let warning = gto.wait_for_log("could not read the zone's keys").await;
    assert!(warning.contains("chmod 600"), "{warning}");
    let before = metrics(admin).await;
    let signed = sample(&before, "gto_dnssec_signed_at_load_total", &[]);
    let generation = sample(&before, "gto_snapshot_generation", &[]);
    let pid = gto.child.id().unwrap();
    let cpu = crate::real::cpu_ticks(pid);

    // Three of the background check's 2 s ticks: no second warning (before the fix: one
    // per tick, each after re-signing the whole zone).
    let again = tokio::time::timeout(
        Duration::from_millis(6_500),
        gto.wait_for_log("could not read the zone's keys"),
    )
    .await;
    assert!(again.is_err(), "warned again: {again:?}");
    let after = metrics(admin).await;
    assert_eq!(
        sample(&after, "gto_dnssec_signed_at_load_total", &[]),
        signed,
        "nothing re-signed"
    );
    assert_eq!(
        sample(&after, "gto_snapshot_generation", &[]),
        generation,
        "no new snapshot"
    );
    assert_eq!(
        sample(&after, "gto_dnssec_key_read_failures_total", &[]),
        1.0
    );
    let spent = crate::real::cpu_ticks(pid) - cpu;
    assert!(spent < 50, "{spent} ticks of CPU in 6.5 s while idle");
    // The old key still signs: answers validate as before.
    assert_eq!(dnskeys(dig(addr, &apex).await), 1);

    // `chmod 600` (no file added, the directory's own time unchanged) is seen.
    std::fs::set_permissions(private.unwrap(), std::fs::Permissions::from_mode(0o600)).unwrap();
    gto.wait_for_log("the key directory changed").await;
    let mut published = 0;
    for _ in 0..50 {
        published = dnskeys(dig(addr, &apex).await);
        if published == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(published, 2, "the fixed key is published");
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// Item 2 (signing): a reload that leaves a signed zone's records, names and keys alone
/// reuses its signatures (nothing signed); one that changes the zone signs it again.
#[tokio::test]
async fn a_reload_of_an_unchanged_signed_zone_signs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let many: String = (0..500)
        .map(|i| format!("m{i} IN A 192.0.2.{}\n", i % 250))
        .collect();
    let zone = format!("{ZONE}{many}");
    real_config(dir.path(), &zone, |text| crate::dnssec::signed(&text));
    crate::dnssec::keygen(dir.path(), "keys", &[]);
    let config = dir.path().join("gto.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let mut gto = RealGto::run(&config);
    let addr = gto.dns_addr().await;
    let admin = gto.admin_addr().await;
    wait_answering(addr, "vpn.gto.example.com.").await;
    let signed = || async {
        sample(
            &metrics(admin).await,
            "gto_dnssec_signed_at_load_total",
            &[],
        )
    };
    let at_start = signed().await;
    assert!(at_start > 500.0, "{at_start}");
    // A change elsewhere in the config (a GSLB name's TTL): nothing signed again.
    std::fs::write(&config, original.replace("ttl = 20", "ttl = 30")).unwrap();
    gto.signal("HUP");
    gto.wait_for_log("config reloaded").await;
    assert_eq!(
        signed().await,
        at_start,
        "the unchanged zone's signatures are reused"
    );
    let answer = dig(addr, &["+norec", "+dnssec", "m7.gto.example.com", "A"]).await;
    assert!(answer.contains("RRSIG\tA"), "{answer}");
    // A changed zone is signed again, and serves its new record signed.
    let zone = zone.replace("2026112501", "2026112502") + "fresh IN A 192.0.2.99\n";
    std::fs::write(dir.path().join("gto.example.com.zone"), zone).unwrap();
    gto.signal("HUP");
    gto.wait_for_log("config reloaded").await;
    assert!(signed().await > at_start);
    let answer = dig(addr, &["+norec", "+dnssec", "fresh.gto.example.com", "A"]).await;
    assert!(answer.contains("RRSIG\tA"), "{answer}");
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// Queries for DNSSEC's own types validate through unbound: NSEC and RRSIG at names that
/// exist, do not exist, or are covered by a wildcard, and the other meta and DNSSEC types
/// at and away from the apex. None gets a proof that contradicts itself.
#[tokio::test]
async fn queries_for_dnssec_types_validate() {
    let server = signed_server(&[]).await;
    let anchors = ds_of(server.dir.path());
    let unbound = Unbound::start("gto.example.com.", server.addr, &anchors).await;
    for name in [
        "www.gto.example.com",
        "gto.example.com",
        "vpn.gto.example.com",
        "nope.gto.example.com",
        "anything.wild.gto.example.com",
    ] {
        let nsec = unbound.ask(&[name, "NSEC"]).await;
        assert_eq!(nsec.status, "NOERROR", "{name} NSEC: {}", nsec.text);
        assert!(nsec.ad, "{name} NSEC validates: {}", nsec.text);
        assert!(
            nsec.answers.iter().any(|a| a.contains("NSEC")),
            "{name}: the NSEC itself is the answer: {}",
            nsec.text
        );
        // unbound passes RRSIG answers on without validating them as data (no AD, as for
        // any server); what matters is that they come, and no failed proof.
        let rrsig = unbound.ask(&[name, "RRSIG"]).await;
        assert_eq!(
            rrsig.status,
            "NOERROR",
            "{name} RRSIG: {}\n{}",
            rrsig.text,
            unbound.log()
        );
        assert!(
            rrsig.text.contains("RRSIG\tNSEC"),
            "{name}: the name's signatures, its NSEC's among them: {}",
            rrsig.text
        );
    }
    for (name, qtype) in [
        ("www.gto.example.com", "DNSKEY"),
        ("www.gto.example.com", "CDS"),
        ("gto.example.com", "NSEC3PARAM"),
        ("gto.example.com", "NSEC3"),
        ("gto.example.com", "TYPE0"),
        ("gto.example.com", "ANY"),
        ("gto.example.com", "CDNSKEY"),
    ] {
        let verdict = unbound.ask(&[name, qtype]).await;
        assert_eq!(
            verdict.status, "NOERROR",
            "{name} {qtype}: {}",
            verdict.text
        );
        assert!(verdict.ad, "{name} {qtype} validates: {}", verdict.text);
    }
    // DS at the apex is the parent's (not served here, so unbound cannot be asked): gto's
    // answer is NODATA whose proof does not list DS.
    let ds = dig(server.addr, &["+dnssec", "+norec", "gto.example.com", "DS"]).await;
    assert!(
        ds.contains("status: NOERROR") && ds.contains("ANSWER: 0"),
        "{ds}"
    );
    let nsec = ds
        .lines()
        .find(|l| l.contains("\tNSEC\t"))
        .unwrap_or_else(|| panic!("a proof: {ds}"));
    assert!(!nsec.contains(" DS "), "{nsec}");
}

/// `dnssec.parent = "resolve"` (the default) through the real binary: the parent zone's
/// servers are found through the system's resolver. In a namespace of its own (`unshare
/// -rnm`: a private loopback and `/etc/resolv.conf` bound to one naming 127.0.0.1), a gto
/// serves the parent zone `example.com.` on 127.0.0.1:53 (its NS, the NS's address and
/// the child's new DS); the child gto, whose CSK rollover waits for the parent, finds the
/// parent's server through the resolver, sees the new DS there and schedules the old
/// key's removal by itself.
#[tokio::test]
async fn the_parent_is_found_through_the_system_resolver() {
    use gto::dnssec::keys::{self, KeyAlgorithm, Role, Timeline};
    let dir = tempfile::tempdir().unwrap();
    let zone = hickory_proto::rr::Name::from_ascii("gto.example.com.").unwrap();
    let now = gto::time::unix_now();
    let hour = 3600;
    // A rollover under way: the old CSK retired an hour ago, waiting for the parent; the
    // new one signs.
    let old = keys::generate(
        &dir.path().join("keys"),
        &zone,
        Role::Csk,
        KeyAlgorithm::EcdsaP256,
        Timeline {
            retire: Some(now - hour),
            ..Timeline::from(now - 48 * hour)
        },
        300,
    )
    .unwrap();
    let new = keys::generate(
        &dir.path().join("keys"),
        &zone,
        Role::Csk,
        KeyAlgorithm::EcdsaP256,
        Timeline {
            active: now - hour,
            ..Timeline::from(now - 24 * hour)
        },
        300,
    )
    .unwrap();
    let digest = new
        .dnskey
        .to_digest(&zone, hickory_proto::dnssec::DigestType::SHA256)
        .unwrap();
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    std::fs::write(
        dir.path().join("example.com.zone"),
        format!(
            "$TTL 600\n\
             @ IN SOA ns.example.com. hostmaster.example.com. 1 3600 600 86400 600\n\
             @ IN NS ns.example.com.\n\
             ns IN A 127.0.0.1\n\
             gto IN NS ns1.gto.example.com.\n\
             ns1.gto IN A 127.0.0.1\n\
             gto IN DS {} 13 2 {hex}\n",
            new.tag
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("parent.toml"),
        "[server]\nlisten = [\"127.0.0.1:53\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[zone]]\norigin = \"example.com.\"\nfile = \"example.com.zone\"\n",
    )
    .unwrap();
    real_config(dir.path(), ZONE, |text| {
        text.replacen(
            "file = \"gto.example.com.zone\"\n",
            "file = \"gto.example.com.zone\"\n\
             dnssec = { keys = \"keys\", dnskey_ttl = 300, propagation = \"60s\", parent_check = \"1s\" }\n",
            1,
        )
    });
    std::fs::write(dir.path().join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    let script = r#"
        ip link set lo up || exit 90
        mount --bind "$1/resolv.conf" /etc/resolv.conf || exit 91
        "$0" run --config "$1/parent.toml" 2>"$1/parent.log" & parent=$!
        "$0" run --config "$1/gto.toml" 2>"$1/child.log" & child=$!
        for _ in $(seq 200); do
            grep -q "every server of the parent serves the new DS" "$1/child.log" && break
            sleep 0.05
        done
        kill -TERM $child $parent
        wait $child $parent
        cat "$1/child.log"
    "#;
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("unshare")
            .args(["--user", "--map-root-user", "--net", "--mount"])
            .args(["sh", "-c", script])
            .arg(env!("CARGO_BIN_EXE_gto"))
            .arg(dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the namespaced run finished within 60 s")
    .expect("unshare runs (util-linux, user namespaces enabled)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("every server of the parent serves the new DS"),
        "{stdout}\n{stderr}\n{}",
        std::fs::read_to_string(dir.path().join("parent.log")).unwrap_or_default()
    );
    let ring = keys::read_dir(&dir.path().join("keys"), &zone).unwrap();
    let old = ring.keys.iter().find(|k| k.tag == old.tag).unwrap();
    assert!(
        old.timeline.remove.is_some_and(|r| r > now),
        "the old key leaves later: {:?}",
        old.timeline
    );
}
