//! Issue 14: DNSSEC on an injected clock ([`gto::dnssec::set_clock`], process-wide, hence
//! this separate test binary): key rollovers driven through their stages with a real
//! validating resolver (unbound) judging the answers at every stage, and the signing
//! budget under a flood of new names.
//!
//! The injected clock starts two days before the real one and moves forward by the
//! rollover's own timings (derived from TTLs), so every signature made on it is still
//! valid by unbound's real clock (inception an hour back, validity 14 days).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub,
    dead_code
)]

#[path = "it/support/mod.rs"]
mod support;

use std::path::Path;

use gto::cluster::keys::KeysetOutcome;
use gto::dnssec::keys::{self, KeyAlgorithm, Role, Timeline};
use hickory_proto::rr::Name;
use support::unbound::Unbound;
use support::{TestServer, ZONE, config, dig};

const DAY: u64 = 86_400;

/// The clock is one per process: tests of this binary take turns (`cargo test` runs them
/// on threads of one process; nextest runs each in its own).
static CLOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// DNSKEY TTL 300 + propagation 60.
const PUBLISH_INTERVAL: u64 = 360;
/// Largest TTL of the zone (3600) + propagation 60; the parent's DS TTL (600) is less.
const RETIRE_INTERVAL: u64 = 3660;

fn real_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn signed_server(dir: tempfile::TempDir, roles: &[Role], t0: u64) -> TestServer {
    signed_server_with(dir, roles, t0, "parent = \"manual\"").await
}

/// [`signed_server`] with more `dnssec` settings (`parent`).
async fn signed_server_with(
    dir: tempfile::TempDir,
    roles: &[Role],
    t0: u64,
    more: &str,
) -> TestServer {
    let config = config("").replacen(
        "file = \"gto.example.com.zone\"\n",
        &format!(
            "file = \"gto.example.com.zone\"\n\
             dnssec = {{ keys = \"keys\", dnskey_ttl = 300, parent_ds_ttl = 600, \
             propagation = \"60s\", lifetime = \"1d\", {more} }}\n"
        ),
        1,
    );
    std::fs::write(dir.path().join("gto.toml"), config).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let timeline = Timeline::from(t0);
    for role in roles {
        keys::generate(
            &dir.path().join("keys"),
            &Name::from_ascii("gto.example.com.").unwrap(),
            *role,
            KeyAlgorithm::EcdsaP256,
            timeline,
            300,
        )
        .unwrap();
    }
    TestServer::start_in(dir).await
}

/// Moves the injected clock and has the builder re-sign (what the background check does
/// every 2 s), after checking that the check would have asked for it.
async fn advance(server: &TestServer, to: u64) {
    gto::dnssec::set_clock(to);
    let snapshot = server.app.routing().load_full();
    assert!(
        gto::routing::resign::check(&snapshot, to),
        "the background check sees a key event due at {to}"
    );
    server.app.resigner().resign(true).await.unwrap();
}

/// Moves the injected clock and has the builder re-sign, whether or not a key event is due.
async fn advance_to(server: &TestServer, to: u64) {
    gto::dnssec::set_clock(to);
    server.app.resigner().resign(true).await.unwrap();
}

/// The records of a type at the apex, as dig prints them (`+short`).
async fn apex(server: &TestServer, qtype: &str) -> Vec<String> {
    dig(
        server.addr,
        &["+short", "+norec", "gto.example.com.", qtype],
    )
    .await
    .lines()
    .map(str::to_string)
    .collect()
}

/// The DS RRset a parent following the CDS records would hold.
async fn parent_ds(server: &TestServer) -> String {
    apex(server, "CDS")
        .await
        .iter()
        .map(|cds| format!("gto.example.com. IN DS {cds}\n"))
        .collect()
}

/// unbound anchored on `anchors` validates a GSLB answer, a static one and a denial.
async fn valid_with(server: &TestServer, anchors: &str, stage: &str) {
    let unbound = Unbound::start("gto.example.com.", server.addr, anchors).await;
    for name in [
        "vpn.gto.example.com",
        "www.gto.example.com",
        "nope.gto.example.com",
    ] {
        let verdict = unbound.ask(&[name, "A"]).await;
        assert!(
            verdict.ad && verdict.status == "NOERROR",
            "{stage}: {name} with anchors\n{anchors}\n{}\n{}",
            verdict.text,
            unbound.log()
        );
    }
}

async fn invalid_with(server: &TestServer, anchors: &str, stage: &str) {
    let unbound = Unbound::start("gto.example.com.", server.addr, anchors).await;
    let verdict = unbound.ask(&["www.gto.example.com", "A"]).await;
    assert_eq!(verdict.status, "SERVFAIL", "{stage}: {}", verdict.text);
}

fn status(dir: &Path) -> String {
    let loaded = gto::ConfigSource::File(dir.join("gto.toml"))
        .load()
        .unwrap();
    gto::cli::dnssec::status(&loaded)
}

#[tokio::test]
async fn a_csk_rollover_stays_valid_at_every_stage() {
    let _turn = CLOCK.lock().await;
    let t0 = real_now() - 2 * DAY;
    gto::dnssec::set_clock(t0);
    let dir = tempfile::tempdir().unwrap();
    let server = signed_server(dir, &[Role::Csk], t0).await;

    // Stage 0: one CSK, the parent holds its DS.
    assert_eq!(apex(&server, "DNSKEY").await.len(), 1);
    let old_ds = parent_ds(&server).await;
    valid_with(&server, &old_ds, "one key").await;

    // Lifetime up: a successor is published (pre-publication), not signing yet; CDS
    // still names the old key only.
    let rolled = t0 + DAY + 1;
    advance(&server, rolled).await;
    assert_eq!(apex(&server, "DNSKEY").await.len(), 2);
    assert_eq!(parent_ds(&server).await, old_ds);
    let text = status(server.dir.path());
    assert!(text.contains("published (not yet signing)"), "{text}");
    valid_with(&server, &old_ds, "successor published").await;

    // The successor signs; the old key still signs the DNSKEY RRset (the parent may
    // still hold its DS) and CDS names the new key.
    advance(&server, rolled + PUBLISH_INTERVAL + 1).await;
    let new_ds = parent_ds(&server).await;
    assert_ne!(new_ds, old_ds);
    assert_eq!(apex(&server, "DNSKEY").await.len(), 2);
    valid_with(&server, &old_ds, "new key active, parent not yet moved").await;
    valid_with(&server, &new_ds, "new key active, parent moved").await;
    let text = status(server.dir.path());
    assert!(
        text.contains("retired, waiting for the parent's DS of its successor"),
        "{text}"
    );

    // Past the time a timer would have removed it: nobody updated the parent, so the old
    // key stays published and keeps signing the DNSKEY RRset; both DS validate.
    let late = rolled + PUBLISH_INTERVAL + RETIRE_INTERVAL + 60;
    advance_to(&server, late).await;
    assert_eq!(apex(&server, "DNSKEY").await.len(), 2);
    valid_with(&server, &old_ds, "past the old schedule, parent not moved").await;
    valid_with(&server, &new_ds, "past the old schedule, parent moved").await;
    assert!(
        !status(server.dir.path()).contains("leaves"),
        "nothing scheduled"
    );

    // The operator updated the parent and says so: the old key leaves once the parent's
    // old DS can have left every cache, then only the new DS validates.
    let loaded = gto::ConfigSource::File(server.dir.path().join("gto.toml"))
        .load()
        .unwrap();
    let said = gto::cli::dnssec::ds_seen(&loaded, 0).unwrap();
    assert!(said.contains("leaves the DNSKEY RRset"), "{said}");
    assert!(
        gto::cli::dnssec::ds_seen(&loaded, 0).is_ok(),
        "the same ring still names the waiting key"
    );
    server.app.resigner().resign(false).await.unwrap();
    valid_with(&server, &old_ds, "parent moved, old DS still cached").await;
    advance(&server, late + RETIRE_INTERVAL + 1).await;
    assert_eq!(apex(&server, "DNSKEY").await.len(), 1);
    assert_eq!(parent_ds(&server).await, new_ds);
    valid_with(&server, &new_ds, "old key removed").await;
    invalid_with(&server, &old_ds, "old key removed, parent on the old DS").await;
}

#[tokio::test]
async fn a_zsk_rollover_keeps_the_ds_and_stays_valid() {
    let _turn = CLOCK.lock().await;
    let t0 = real_now() - 2 * DAY;
    gto::dnssec::set_clock(t0);
    let dir = tempfile::tempdir().unwrap();
    let server = signed_server(dir, &[Role::Ksk, Role::Zsk], t0).await;
    let ds = parent_ds(&server).await;
    assert_eq!(ds.lines().count(), 1, "the KSK's DS only: {ds}");
    valid_with(&server, &ds, "KSK and ZSK").await;

    let rolled = t0 + DAY + 1;
    for (stage, at, keys) in [
        ("successor ZSK published", rolled, 3),
        ("successor ZSK signs", rolled + PUBLISH_INTERVAL + 1, 3),
        (
            "old ZSK removed",
            rolled + PUBLISH_INTERVAL + RETIRE_INTERVAL + 1,
            2,
        ),
    ] {
        advance(&server, at).await;
        assert_eq!(apex(&server, "DNSKEY").await.len(), keys, "{stage}");
        assert_eq!(
            parent_ds(&server).await,
            ds,
            "{stage}: the DS never changes"
        );
        valid_with(&server, &ds, stage).await;
    }
}

/// The parent zone `example.com.`, served by another gto, delegating `gto.example.com.`
/// with the DS records `ds` (lines of `DS` rdata, as `CDS` prints them).
fn parent_zone(ds: &str) -> String {
    let mut zone = String::from(
        "$TTL 600\n\
         @ IN SOA ns.example.com. hostmaster.example.com. 1 3600 600 86400 600\n\
         @ IN NS ns.example.com.\n\
         ns IN A 127.0.0.1\n\
         gto IN NS ns1.gto.example.com.\n\
         ns1.gto IN A 127.0.0.1\n",
    );
    for line in ds.lines() {
        let rdata = line.trim_start_matches("gto.example.com. IN DS ");
        zone.push_str(&format!("gto IN DS {rdata}\n"));
    }
    zone
}

async fn parent_server(ds: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gto.toml"),
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[zone]]\norigin = \"example.com.\"\nfile = \"example.com.zone\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("example.com.zone"), parent_zone(ds)).unwrap();
    TestServer::start_in(dir).await
}

/// The retired entry point's line in `gto dnssec status`.
fn waits(dir: &Path) -> bool {
    status(dir).contains("retired, waiting for the parent's DS of its successor")
}

/// A KSK (with a ZSK) or CSK rollover whose parent is another server: gto asks the parent
/// itself; while it serves the old DS only, the old key stays past its old schedule and
/// both DS validate; once the parent serves the new DS, gto schedules the old key's
/// removal by itself and after it only the new DS validates.
async fn rollover_completes_when_the_parent_serves_the_new_ds(roles: &[Role]) {
    let t0 = real_now() - 2 * DAY;
    gto::dnssec::set_clock(t0);
    let dir = tempfile::tempdir().unwrap();
    // The parent starts with the key the child will make: find it first.
    let keys_dir = dir.path().join("keys");
    for role in roles {
        keys::generate(
            &keys_dir,
            &Name::from_ascii("gto.example.com.").unwrap(),
            *role,
            KeyAlgorithm::EcdsaP256,
            Timeline::from(t0),
            300,
        )
        .unwrap();
    }
    let parent = parent_server("").await;
    let server = signed_server_with(
        dir,
        &[],
        t0,
        &format!("parent = [\"{}\"], parent_check = \"1d\"", parent.addr),
    )
    .await;
    let old_ds = parent_ds(&server).await;
    std::fs::write(parent.path("example.com.zone"), parent_zone(&old_ds)).unwrap();
    parent.app.reload().await.unwrap();
    let served = dig(parent.addr, &["+short", "+norec", "gto.example.com.", "DS"]).await;
    assert_eq!(
        served.lines().count(),
        1,
        "the parent serves the DS: {served}"
    );
    valid_with(&server, &old_ds, "one entry point").await;
    let before = apex(&server, "DNSKEY").await.len();

    // Lifetime up (a CSK rolls by itself; a KSK when the operator says so, beside the
    // ZSK's own rollover), then the successor signs: the old entry point waits.
    let rolled = t0 + DAY + 1;
    if roles.contains(&Role::Ksk) {
        gto::dnssec::set_clock(rolled);
        let loaded = gto::ConfigSource::File(server.dir.path().join("gto.toml"))
            .load()
            .unwrap();
        gto::cli::dnssec::rollover(&loaded, 0, Role::Ksk).unwrap();
    }
    advance(&server, rolled).await;
    advance(&server, rolled + PUBLISH_INTERVAL + 1).await;
    let new_ds = parent_ds(&server).await;
    assert_ne!(new_ds, old_ds);
    assert!(waits(server.dir.path()), "{}", status(server.dir.path()));
    let mut events = server.app.changes().subscribe();

    // The parent still serves the old DS only: not seen, nothing scheduled, past the old
    // schedule too; both DS validate.
    let checks = server.app.resigner().check_parent().await;
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert!(!checks[0].seen(), "{checks:?}");
    assert!(checks[0].scheduled.is_empty());
    let late = rolled + PUBLISH_INTERVAL + RETIRE_INTERVAL + 60;
    advance_to(&server, late).await;
    let checks = server.app.resigner().check_parent().await;
    assert!(!checks[0].seen(), "{checks:?}");
    assert_eq!(apex(&server, "DNSKEY").await.len(), before + 1);
    assert!(waits(server.dir.path()));
    valid_with(&server, &old_ds, "past the old schedule, parent not moved").await;
    valid_with(&server, &new_ds, "past the old schedule, parent moved").await;
    let (_, text) = support::http(server.admin(), "GET", "/v1/status", None, "").await;
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        json["dnssec"][0]["waiting_for_parent"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{text}"
    );
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
        .await
        .expect("an event")
        .unwrap();
    assert_eq!(event.kind, "dnssec");
    assert_eq!(event.data["change"], "waiting-for-ds", "{:?}", event.data);

    // The parent moves to the new DS: the next check sees it at every server and
    // schedules the old key's removal (whichever check, this or the background one,
    // came first); the old DS still validates while caches may hold it.
    std::fs::write(parent.path("example.com.zone"), parent_zone(&new_ds)).unwrap();
    parent.app.reload().await.unwrap();
    server.app.resigner().check_parent().await;
    assert!(!waits(server.dir.path()), "{}", status(server.dir.path()));
    assert!(
        status(server.dir.path()).contains("is removed from the DNSKEY RRset"),
        "{}",
        status(server.dir.path())
    );
    let event = loop {
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
            .await
            .expect("an event")
            .unwrap();
        if event.data["change"] == "ds-seen" {
            break event;
        }
    };
    assert_eq!(event.data["zone"], "gto.example.com.");
    valid_with(&server, &old_ds, "parent moved, old DS still cached").await;
    let (_, metrics) = support::http(server.admin(), "GET", "/metrics", None, "").await;
    for result in ["seen", "not_seen"] {
        assert!(
            support::sample(
                &metrics,
                "gto_dnssec_parent_checks_total",
                &["zone=\"gto.example.com.\"", &format!("result=\"{result}\"")]
            ) >= 1.0,
            "{result}: {metrics}"
        );
    }

    // After the retire interval the old key is gone: only the new DS validates.
    advance(&server, late + RETIRE_INTERVAL + 1).await;
    assert_eq!(apex(&server, "DNSKEY").await.len(), before);
    valid_with(&server, &new_ds, "old key removed").await;
    invalid_with(&server, &old_ds, "old key removed, parent on the old DS").await;
}

#[tokio::test]
async fn a_ksk_rollover_completes_when_the_parent_serves_the_new_ds() {
    let _turn = CLOCK.lock().await;
    rollover_completes_when_the_parent_serves_the_new_ds(&[Role::Ksk, Role::Zsk]).await;
}

#[tokio::test]
async fn a_csk_rollover_completes_when_the_parent_serves_the_new_ds() {
    let _turn = CLOCK.lock().await;
    rollover_completes_when_the_parent_serves_the_new_ds(&[Role::Csk]).await;
}

/// A flood of new names with DO (a random-subdomain attack on a signed zone) costs at most
/// the zone's signing budget per second: every query is still answered, the denials past
/// the budget go out without their proof and are counted, and the next second signs again.
#[tokio::test]
async fn a_flood_of_random_names_is_signed_within_a_budget() {
    let _turn = CLOCK.lock().await;
    let t0 = real_now();
    gto::dnssec::set_clock(t0);
    let dir = tempfile::tempdir().unwrap();
    let server = signed_server(dir, &[Role::Csk], t0).await;
    let budget = gto::dnssec::ONLINE_SIGNING_PER_SECOND as usize;
    let mut edns = hickory_proto::op::Edns::new();
    edns.set_max_payload(1232);
    edns.flags_mut().dnssec_ok = true;
    let ask = |name: String| {
        let edns = edns.clone();
        async move {
            let bytes = support::query(&name, hickory_proto::rr::RecordType::A, Some(edns))
                .to_vec()
                .unwrap();
            let reply = hickory_proto::op::Message::from_vec(
                &support::udp_raw(server.addr, &bytes).await.unwrap(),
            )
            .unwrap();
            assert_eq!(
                reply.metadata.response_code,
                hickory_proto::op::ResponseCode::NoError
            );
            reply
                .authorities
                .iter()
                .any(|r| r.record_type() == hickory_proto::rr::RecordType::NSEC)
        }
    };
    let total = budget + budget / 4;
    let mut with_proof = 0;
    for i in 0..total {
        with_proof += usize::from(ask(format!("r{i}x.gto.example.com.")).await);
    }
    assert_eq!(
        with_proof, budget,
        "the clock stood still: one second's budget"
    );
    let (_, metrics) = support::http(server.admin(), "GET", "/metrics", None, "").await;
    let refused = support::sample(&metrics, "gto_dnssec_signing_refused_total", &[]);
    assert_eq!(refused as usize, total - budget, "{metrics}");
    // A name already signed still has its proof; the next second signs new ones again.
    assert!(ask("r0x.gto.example.com.".into()).await);
    gto::dnssec::set_clock(t0 + 1);
    assert!(ask(format!("r{total}x.gto.example.com.")).await);
}

/// A signed instance `id` of a fleet on `etcd`, with the key files of `keys` copied in.
async fn fleet_member(etcd: &str, id: &str, keys: &Path) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    copy_keys(keys, &dir.path().join("keys"), None);
    let config = format!(
        "{}\n[cluster]\netcd = [\"{etcd}\"]\nname = \"keys\"\ninstance = \"{id}\"\nlease_ttl = \"2s\"\n",
        config("").replacen(
            "file = \"gto.example.com.zone\"\n",
            "file = \"gto.example.com.zone\"\n\
             dnssec = { keys = \"keys\", dnskey_ttl = 300, parent_ds_ttl = 600, \
             propagation = \"60s\", lifetime = \"1d\", parent = \"manual\" }\n",
            1,
        )
    );
    std::fs::write(dir.path().join("gto.toml"), config).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    TestServer::start_in(dir).await
}

/// Copies the key files (all, or those of the key `only`) from one directory to another.
fn copy_keys(from: &Path, to: &Path, only: Option<u16>) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if only.is_some_and(|tag| !name.contains(&format!("+{tag:05}."))) {
            continue;
        }
        std::fs::copy(&path, to.join(&name)).unwrap();
    }
}

/// The key tags of the RRSIGs over `www A` at a server.
async fn signers(server: &TestServer) -> Vec<String> {
    let text = dig(
        server.addr,
        &[
            "+dnssec",
            "+norec",
            "+noall",
            "+answer",
            "www.gto.example.com.",
            "A",
        ],
    )
    .await;
    let mut tags: Vec<String> = text
        .lines()
        .filter(|l| l.contains("RRSIG"))
        .filter_map(|l| l.split_whitespace().nth(10).map(str::to_string))
        .collect();
    tags.sort();
    tags
}

async fn sorted(server: &TestServer, qtype: &str) -> Vec<String> {
    let mut records = apex(server, qtype).await;
    records.sort();
    records
}

/// Compares both instances' keys with the fleet's until `done` holds for both (the
/// background comparison runs too; this only makes it prompt).
async fn settle(servers: [&TestServer; 2], what: &str, done: impl Fn(&[KeysetOutcome]) -> bool) {
    let started = tokio::time::Instant::now();
    loop {
        let mut outcomes = Vec::new();
        for server in servers {
            let fleet = server.app.fleet().unwrap();
            for (_, outcome) in fleet.sync_keys(server.app.resigner()).await {
                outcomes.push(outcome);
            }
        }
        if done(&outcomes) {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{what}: {outcomes:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Compares both instances' keys with the fleet's until `done` holds.
async fn settle_until<F, Fut>(servers: [&TestServer; 2], what: &str, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    settle(servers, what, |_| true).await;
    let started = tokio::time::Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{what}"
        );
        settle(servers, what, |_| true).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn consistent(outcomes: &[KeysetOutcome]) -> bool {
    outcomes.iter().all(|o| *o == KeysetOutcome::Consistent)
}

/// Both publish the same DNSKEY RRset and sign with the same keys, and unbound validates
/// through either of them with each DS in `anchors`.
async fn same_and_valid(a: &TestServer, b: &TestServer, anchors: &[&str], stage: &str) {
    assert_eq!(
        sorted(a, "DNSKEY").await,
        sorted(b, "DNSKEY").await,
        "{stage}: DNSKEY"
    );
    assert_eq!(signers(a).await, signers(b).await, "{stage}: signers");
    for server in [a, b] {
        for ds in anchors {
            valid_with(server, ds, stage).await;
        }
    }
}

/// Two instances with one etcd: a CSK rollover started on one (the fleet's roller) is
/// taken by both at every stage; a host whose key directory lacks the new key keeps its
/// last consistent keys, reports the mismatch, and the new key's activation is held back
/// until its files are there.
#[tokio::test]
async fn a_fleet_rolls_its_keys_together() {
    let _turn = CLOCK.lock().await;
    let t0 = real_now() - 2 * DAY;
    gto::dnssec::set_clock(t0);
    let etcd = support::etcd::Etcd::start().await;
    let source = tempfile::tempdir().unwrap();
    keys::generate(
        source.path(),
        &Name::from_ascii("gto.example.com.").unwrap(),
        Role::Csk,
        KeyAlgorithm::EcdsaP256,
        Timeline::from(t0),
        300,
    )
    .unwrap();
    let a = fleet_member(&etcd.url(), "a", source.path()).await;
    let b = fleet_member(&etcd.url(), "b", source.path()).await;
    // Both registered and agreeing (one wrote the timeline, the other found it the same).
    settle([&a, &b], "agree at start", |o| {
        o.iter()
            .all(|o| matches!(o, KeysetOutcome::Consistent | KeysetOutcome::Shared))
    })
    .await;
    let sees_both = |server: &TestServer| {
        server.app.fleet().unwrap().status_json()["instances"]
            .as_array()
            .is_some_and(|i| i.len() == 2)
    };
    let started = tokio::time::Instant::now();
    while !(sees_both(&a) && sees_both(&b)) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "members"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    settle([&a, &b], "agree", consistent).await;
    let old_ds = parent_ds(&a).await;
    same_and_valid(&a, &b, &[&old_ds], "one key").await;

    // The lifetime is up: only a (the lowest id) rolls; b's directory lacks the new key.
    let rolled = t0 + DAY + 1;
    gto::dnssec::set_clock(rolled);
    for server in [&a, &b] {
        server
            .app
            .fleet()
            .unwrap()
            .sync_keys(server.app.resigner())
            .await;
        server.app.resigner().resign(true).await.unwrap();
    }
    let old_tag: u16 = apex(&a, "CDS").await[0]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let new_tag = std::fs::read_dir(a.path("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|f| {
            f.strip_suffix(".state")?
                .rsplit('+')
                .next()?
                .parse::<u16>()
                .ok()
        })
        .find(|tag| *tag != old_tag)
        .expect("a made a successor");
    assert_eq!(
        std::fs::read_dir(b.path("keys")).unwrap().count(),
        3,
        "b did not roll"
    );
    settle([&a, &b], "b lacks the key", |o| {
        o.iter().any(|o| matches!(o, KeysetOutcome::Mismatch(_)))
    })
    .await;
    // What b tells the fleet, as a sees it (the mismatch gauge is set from the same state;
    // it is process-wide, and both instances of this test share one process).
    let b_says = |a: &TestServer| {
        let status = a.app.fleet().unwrap().status_json();
        status["instances"]
            .as_array()
            .and_then(|i| i.iter().find(|i| i["instance"] == "b").cloned())
            .map(|b| b["dnssec_keysets"]["gto.example.com."].clone())
            .unwrap_or_default()
    };
    let started = tokio::time::Instant::now();
    while b_says(&a)["consistent"] != false {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{}",
            b_says(&a)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(b_says(&a)["missing"], serde_json::json!([new_tag]));

    // a sees that b lacks the new key and holds it back: not published (for two minutes
    // from now, retried while b lacks it), the old key signing on both.
    let publish = rolled + 120;
    let active = publish + PUBLISH_INTERVAL;
    let held = format!(
        "created (not yet published)\n    published {}, active {}",
        gto::time::rfc3339_unix(publish),
        gto::time::rfc3339_unix(active)
    );
    settle_until([&a, &b], "a holds the new key back", || async {
        status(a.dir.path()).contains(&held)
    })
    .await;
    for server in [&a, &b] {
        server.app.resigner().resign(false).await.unwrap();
    }
    same_and_valid(&a, &b, &[&old_ds], "new key held back").await;
    assert_eq!(apex(&a, "DNSKEY").await.len(), 1);
    assert_eq!(signers(&a).await, vec![old_tag.to_string()]);

    // The key's files reach b: it follows the fleet, the mismatch ends.
    copy_keys(&a.path("keys"), &b.path("keys"), Some(new_tag));
    b.app.resigner().resign(false).await.unwrap();
    settle_until([&a, &b], "b has the key", || async {
        status(b.dir.path()).contains(&held)
    })
    .await;
    settle([&a, &b], "consistent", consistent).await;
    let started = tokio::time::Instant::now();
    while b_says(&a)["consistent"] != true {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{}",
            b_says(&a)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Published on both at once, then signing on both at once.
    for (at, keys, signer, anchors, stage) in [
        (
            publish + 1,
            2,
            old_tag,
            vec![old_ds.clone()],
            "new key published on both",
        ),
        (
            active + 1,
            2,
            new_tag,
            vec![old_ds.clone()],
            "new key signs on both",
        ),
    ] {
        gto::dnssec::set_clock(at);
        for server in [&a, &b] {
            server.app.resigner().resign(true).await.unwrap();
        }
        let anchors: Vec<&str> = anchors.iter().map(String::as_str).collect();
        same_and_valid(&a, &b, &anchors, stage).await;
        assert_eq!(apex(&b, "DNSKEY").await.len(), keys, "{stage}");
        assert_eq!(signers(&b).await, vec![signer.to_string()], "{stage}");
    }
    let new_ds = parent_ds(&a).await;
    assert_ne!(new_ds, old_ds);
    same_and_valid(&a, &b, &[&new_ds], "the parent may hold either DS").await;

    // The parent serves the new DS (said on a): b takes the same removal time.
    let loaded = gto::ConfigSource::File(a.dir.path().join("gto.toml"))
        .load()
        .unwrap();
    gto::cli::dnssec::ds_seen(&loaded, 0).unwrap();
    a.app.resigner().resign(false).await.unwrap();
    settle_until([&a, &b], "ds-seen shared", || async {
        [&a, &b]
            .iter()
            .all(|s| !status(s.dir.path()).contains("waiting for the parent"))
    })
    .await;
    gto::dnssec::set_clock(active + 1 + RETIRE_INTERVAL + 1);
    for server in [&a, &b] {
        server.app.resigner().resign(true).await.unwrap();
    }
    assert_eq!(apex(&a, "DNSKEY").await.len(), 1);
    same_and_valid(&a, &b, &[&new_ds], "old key removed on both").await;

    // Garbage where the timeline was is counted, ignored (both keep signing as they
    // were), and replaced by the instances' own timeline.
    let key = "/gto/keys/dnssec/gto.example.com.";
    let ignored = || async {
        let (_, metrics) = support::http(b.admin(), "GET", "/metrics", None, "").await;
        support::sample(&metrics, "gto_cluster_ignored_values_total", &["invalid"])
    };
    let ignored_before = ignored().await;
    let mut client = etcd.client().await;
    client.put(key, "{\"keys\": 7}", None).await.unwrap();
    // The instances see the garbage through their watch (not at once): compare until it
    // was counted and the stored value is a timeline of one key again.
    let started = tokio::time::Instant::now();
    loop {
        settle([&a, &b], "garbage replaced", |o| {
            o.iter()
                .all(|o| matches!(o, KeysetOutcome::Consistent | KeysetOutcome::Shared))
        })
        .await;
        let stored = client.get(key, None).await.unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(stored.kvs()[0].value()).unwrap_or_default();
        if value["keys"].as_array().map(Vec::len) == Some(1) && ignored().await > ignored_before {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "garbage not replaced: {value}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    same_and_valid(&a, &b, &[&new_ds], "after garbage").await;
}
