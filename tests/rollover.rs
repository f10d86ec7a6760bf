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
    let config = config("").replacen(
        "file = \"gto.example.com.zone\"\n",
        "file = \"gto.example.com.zone\"\n\
         dnssec = { keys = \"keys\", dnskey_ttl = 300, parent_ds_ttl = 600, \
         propagation = \"60s\", lifetime = \"1d\" }\n",
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
