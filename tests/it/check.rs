//! `gto check`: every problem at once, with its location, exit 64; the shipped files pass.

use std::fs;

use crate::real::{a_records, real_config, real_config_without_admin};
use crate::support::{ZONE, config, gto_bin, repo};

pub(crate) fn check(dir: &std::path::Path) -> (i32, String, String) {
    let output = gto_bin()
        .arg("check")
        .arg("--config")
        .arg(dir.join("gto.toml"))
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn three_mistakes_are_all_reported_with_locations_and_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let text = r#"[server]
listen = ["127.0.0.1:5353"]

[[zone]]
origin = "gto.example.com."
file = "gto.example.com.zone"

[[service]]
name = "vpn.gto.example.com."
pool = "no-such-pool"

[[pool]]
name = "sma"
[[pool.member]]
name = "fra-1"
addresses = ["198.51.100.300"]
[[pool.member]]
name = "fra-1"
addresses = ["198.51.100.2"]
"#;
    fs::write(dir.path().join("gto.toml"), text).unwrap();
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, 64, "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].contains("gto.toml:10: service[0].pool: unknown pool \"no-such-pool\""),
        "{stderr}"
    );
    assert!(
        lines[1].contains(
            "gto.toml:16: pool.sma.member[0].addresses[0]: \"198.51.100.300\" is not an IP address"
        ),
        "{stderr}"
    );
    assert!(
        lines[2]
            .contains("gto.toml:18: pool.sma.member[1].name: member \"fra-1\" is defined twice"),
        "{stderr}"
    );
    assert!(stderr.contains("3 problem(s) found"));
}

#[test]
fn names_outside_zones_static_collisions_and_unknown_keys_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let extra = r#"
[[service]]
name = "www.gto.example.com."
pool = "sma"
[[service]]
name = "vpn.example.net."
pool = "sma"
polcy = "failover"
"#;
    fs::write(dir.path().join("gto.toml"), config(extra)).unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 64);
    assert!(
        stderr.contains("service[1].name: GSLB name www.gto.example.com. is also a static name"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "service[2].name: GSLB name vpn.example.net. is outside every configured zone"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("service[2].polcy: unknown key"), "{stderr}");
}

#[test]
fn zone_file_errors_carry_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let zone = format!("{ZONE}bad1 IN A 300.1.1.1\nfine IN A 192.0.2.9\nbad2 IN AAAA zzz\n");
    fs::write(dir.path().join("gto.example.com.zone"), &zone).unwrap();
    fs::write(dir.path().join("gto.toml"), config("")).unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 64);
    let first = ZONE.lines().count() + 1;
    assert!(
        stderr.contains(&format!("gto.example.com.zone:{first}: bad record")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("gto.example.com.zone:{}: bad record", first + 2)),
        "{stderr}"
    );
    assert!(stderr.contains("2 problem(s) found"), "{stderr}");
}

#[test]
fn missing_files_are_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 64);
    assert!(stderr.contains("cannot read config"), "{stderr}");
    fs::write(dir.path().join("gto.toml"), config("")).unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 64);
    assert!(stderr.contains("cannot read zone file"), "{stderr}");
}

#[test]
fn toml_syntax_errors_are_located() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("gto.toml"),
        "[server]\nlisten = [\"127.0.0.1:53\"\n",
    )
    .unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 64);
    assert!(stderr.contains("gto.toml:"), "{stderr}");
}

#[test]
fn shipped_configs_and_every_zone_file_are_valid() {
    for example in ["examples/gto.toml", "examples/full.toml"] {
        let output = gto_bin()
            .args(["check", "--config"])
            .arg(repo().join(example))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).starts_with("ok:"));
    }
    for entry in fs::read_dir(repo().join("zones")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "zone") {
            let origin = path.file_stem().unwrap().to_string_lossy().to_string();
            let origin = hickory_proto::rr::Name::from_ascii(format!("{origin}.")).unwrap();
            let text = fs::read_to_string(&path).unwrap();
            gto::zone::parse(&text, &origin, path.clone())
                .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        }
    }
}

#[test]
fn an_unknown_key_anywhere_in_the_shipped_config_is_rejected() {
    let text = fs::read_to_string(repo().join("examples/gto.toml")).unwrap();
    // After each table header, an unknown key.
    let headers: Vec<usize> = text.match_indices("\n[").map(|(i, _)| i).collect();
    assert!(headers.len() >= 5);
    for at in headers {
        let line_end = at + 1 + text[at + 1..].find('\n').unwrap();
        let mut mutated = text.clone();
        mutated.insert_str(line_end + 1, "surprise = 1\n");
        let errors = gto::config::parse(&mutated, std::path::Path::new("gto.toml")).unwrap_err();
        assert!(
            errors.iter().any(|e| e.path.ends_with("surprise")),
            "{errors}"
        );
    }
}

#[test]
fn bad_health_checks_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let text = config("").replace(
        "[[pool]]\nname = \"sma\"",
        "[[pool]]\nname = \"sma\"\ncheck = { kind = \"tcp\", interval = \"1s\", timeout = \"2s\" }",
    ) + r#"
[[service]]
name = "x.gto.example.com."
pool = "x"
[[pool]]
name = "x"
check = { kind = "gopher", port = 70 }
[[pool.member]]
name = "m"
addresses = ["192.0.2.1"]
check = { kind = "https", ca_file = "missing.pem", cert_min_days = -1, cert_expiring = "maybe", family = "sideways" }
[[pool.member]]
name = "n"
addresses = ["192.0.2.2", "2001:db8::2"]
check = { kind = "tcp", port = 22, family = "each", address = "192.0.2.9" }
"#;
    fs::write(dir.path().join("gto.toml"), text).unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 64);
    for expected in [
        "pool.sma.check.timeout: must be shorter than the interval",
        "pool.sma.check.port: a tcp check needs a port",
        "pool.x.member[0].check.ca_file: cannot read",
        "pool.x.member[0].check.cert_min_days: must be a number of days",
        "pool.x.member[0].check.cert_expiring: \"maybe\" is not \"warn\" or \"down\"",
        "pool.x.member[0].check.family: \"sideways\" is not \"each\" or \"first\"",
        "pool.x.member[1].check.family: \"each\" probes each address family's own address",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // The pool-level problem is reported once, not once per member.
    assert_eq!(
        stderr.matches("must be shorter than the interval").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn rate_limiting_coalescing_and_thread_mistakes_are_reported_with_locations() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let text = config(
        "[rrl]\nresponses_per_second = 0\nslip = 11\nipv4_prefix = 33\nexempt = [\"10.0.0.0/33\"]\nwindow = 5\n",
    )
    .replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\"]\nudp_coalesce = \"5ms\"\ntcp_threads = 0",
    );
    fs::write(dir.path().join("gto.toml"), &text).unwrap();
    let line = |needle: &str| 1 + text.lines().position(|l| l.starts_with(needle)).unwrap();
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, 64, "{stdout}{stderr}");
    for (key, message) in [
        (
            "responses_per_second",
            "rrl.responses_per_second: must be between 1 and 1000000",
        ),
        ("slip", "rrl.slip: must be between 0 and 10"),
        (
            "udp_coalesce",
            "server.udp_coalesce: not a duration of at most 1ms",
        ),
        (
            "tcp_threads",
            "server.tcp_threads: must be between 1 and 256",
        ),
        ("ipv4_prefix", "rrl.ipv4_prefix: must be between 8 and 32"),
        (
            "exempt",
            "rrl.exempt[0]: \"10.0.0.0/33\" is not a CIDR network",
        ),
    ] {
        let expected = format!("gto.toml:{}: {message}", line(key));
        assert!(stderr.contains(&expected), "{expected} not in\n{stderr}");
    }
    assert!(stderr.contains("rrl.window"), "the unknown key: {stderr}");
}

#[test]
fn a_wildcard_listen_address_covers_its_port_and_needs_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let with = |listen: &str, more: &str| {
        config("").replace(
            "[server]\nlisten = [\"127.0.0.1:0\"]",
            &format!("[server]\nlisten = {listen}\n{more}"),
        )
    };
    // Both wildcards: valid.
    fs::write(
        dir.path().join("gto.toml"),
        with(r#"["0.0.0.0:5353", "[::]:5353"]"#, ""),
    )
    .unwrap();
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, 0, "{stdout}{stderr}");
    // A specific address the wildcard already covers, and the plain loop: refused.
    fs::write(
        dir.path().join("gto.toml"),
        with(
            r#"["0.0.0.0:5353", "127.0.0.1:5353", "127.0.0.1:5354"]"#,
            "workers = 0",
        ),
    )
    .unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains(
            "server.listen[1]: 127.0.0.1:5353 is already served by the wildcard 0.0.0.0:5353"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("listen[2]"),
        "another port is fine: {stderr}"
    );
    assert!(
        stderr.contains("server.workers: workers = 0 (the plain UDP loop) cannot answer"),
        "{stderr}"
    );
}

#[test]
fn checks_that_could_never_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        r#"
[[pool]]
name = "bad"
check = { kind = "https", port = 443, sni = "bad name!", host = "a\r\nX-Injected: 1", path = "/status page" }
[[pool.member]]
name = "x"
addresses = ["192.0.2.1"]
[[pool]]
name = "tcp"
check = { kind = "tcp", port = 1, max_body = "1MiB" }
[[pool.member]]
name = "y"
addresses = ["192.0.2.2"]
"#,
    );
    fs::write(dir.path().join("gto.toml"), text).unwrap();
    fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 64);
    assert!(
        stderr.contains("check.sni: \"bad name!\" is not a DNS name"),
        "{stderr}"
    );
    assert!(
        stderr.contains("check.host: \"a\\r\\nX-Injected: 1\" is not a host name"),
        "{stderr}"
    );
    assert!(
        stderr.contains("check.path: \"/status page\" is not a valid request path"),
        "{stderr}"
    );
    assert!(
        stderr.contains("check.max_body: applies to http and https checks"),
        "{stderr}"
    );
}

#[test]
fn zones_gto_would_serve_wrong_are_refused_at_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("gto.toml"), config("")).unwrap();
    let lines = ZONE.lines().count();
    let zone = format!(
        "{ZONE}both IN CNAME www\nboth IN TXT \"x\"\ntwo IN CNAME www\ntwo IN CNAME api\n\
         loop1 IN CNAME loop2\nloop2 IN CNAME loop3\nloop3 IN CNAME loop1\nself IN CNAME self\n\
         big 2147483648 IN A 192.0.2.9\n"
    );
    fs::write(dir.path().join("gto.example.com.zone"), zone).unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 64, "{stderr}");
    let at = |offset: usize, text: &str| {
        let wanted = format!("gto.example.com.zone:{}: {text}", lines + offset);
        assert!(stderr.contains(&wanted), "no {wanted:?} in:\n{stderr}");
    };
    at(2, "both.gto.example.com. has a CNAME beside other records");
    at(3, "two.gto.example.com. has 2 CNAME records");
    at(5, "loop1.gto.example.com. starts a CNAME loop");
    at(8, "self.gto.example.com. starts a CNAME loop");
    at(9, "TTL 2147483648 of big.gto.example.com. is 2^31 or more");
    assert!(stderr.contains("5 problem(s) found"), "{stderr}");
}

#[test]
fn config_named_files_that_are_devices_or_huge_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        r#"
[[pool]]
name = "tls"
check = { kind = "https", port = 443, ca_file = "/dev/zero" }
[[pool.member]]
name = "x"
addresses = ["192.0.2.1"]
"#,
    )
    .replace("file = \"gto.example.com.zone\"", "file = \"big.zone\"")
    .replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"/dev/urandom\"",
    )
    .replace("[server]\n", "[server]\nmax_file_size = \"1KiB\"\n");
    std::fs::write(dir.path().join("gto.toml"), text).unwrap();
    std::fs::write(dir.path().join("big.zone"), ZONE.repeat(3)).unwrap();
    let output = crate::support::gto_bin()
        .arg("check")
        .arg("--config")
        .arg(dir.path().join("gto.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("/dev/zero: is a character device"),
        "{stderr}"
    );
    assert!(
        stderr.contains("/dev/urandom: is a character device"),
        "{stderr}"
    );
    assert!(
        stderr.contains("big.zone: larger than the limit of 1024 bytes"),
        "{stderr}"
    );
}

#[test]
fn type_errors_come_with_every_other_problem() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        r#"
[[pool]]
name = "typed"
[[pool.member]]
name = "x"
addresses = "192.0.2.1"
[[geo.region]]
name = "eu"
prefer = ["eu", "us-eats"]
"#,
    )
    .replace("answers = 2", "answers = \"two\"")
    .replace("[admin]\n", "[admin]\nbogus = 1\n")
    .replace("[server]\n", "[server]\nudp_payload = 100\n");
    std::fs::write(dir.path().join("gto.toml"), text).unwrap();
    std::fs::write(
        dir.path().join("gto.example.com.zone"),
        format!("{ZONE}bad IN A nope\n"),
    )
    .unwrap();
    let output = crate::support::gto_bin()
        .arg("check")
        .arg("--config")
        .arg(dir.path().join("gto.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    for wanted in [
        "service[0].answers: invalid type", // answers = "two": a type error
        "pool.typed.member[0].addresses: invalid type", // addresses = "...": another
        "unknown key",                      // bogus
        "server.udp_payload",               // a range error
        "gto.example.com.zone:",            // a zone error
        "no endpoint is in region \"us-eats\"",
    ] {
        assert!(stderr.contains(wanted), "no {wanted:?} in:\n{stderr}");
    }
}

#[test]
fn explain_names_a_corrupt_state_file_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    real_config_without_admin(dir.path(), "state_file = \"gto.state\"");
    std::fs::write(dir.path().join("gto.state"), "{\"version\": 1, \"memb").unwrap();
    let output = crate::support::gto_bin()
        .arg("explain")
        .arg("--config")
        .arg(dir.path().join("gto.toml"))
        .args(["vpn.gto.example.com.", "198.51.100.1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("state file"), "{stderr}");
    assert!(stderr.contains("gto.state is unreadable"), "{stderr}");
    assert!(!stderr.contains("starting without it"), "{stderr}");
}

/// Item 9, the zone and check part: a TTL over 32 bits is named as a TTL; an RRset no
/// DNS message can hold is refused at load with its line; an admin listener on a DNS
/// listener's address is refused; all of them at once, exit 64.
#[test]
fn check_names_a_huge_ttl_an_oversized_rrset_and_a_clashing_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let zone = format!(
        "{ZONE}big-ttl 4294967296 IN A 192.0.2.1\n{}",
        a_records("huge", 5_000)
    );
    // `gto check` binds nothing: one fixed address for both listeners clashes only on paper.
    real_config(dir.path(), &zone, |text| {
        text.replace(
            "[server]\nlisten = [\"127.0.0.1:0\"]",
            "[server]\nlisten = [\"127.0.0.1:5300\"]",
        )
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"127.0.0.1:5300\"",
        )
    });
    let (code, _, stderr) = crate::check::check(dir.path());
    assert_eq!(code, 64, "{stderr}");
    let huge_line = ZONE.lines().count() + 2;
    for expected in [
        "TTL 4294967296 is out of range".to_string(),
        format!("gto.example.com.zone:{huge_line}: huge.gto.example.com. A has 5000 records"),
        "admin.listen: 127.0.0.1:5300".to_string(),
        "is also a DNS listener".to_string(),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} not in:\n{stderr}");
    }
    assert!(!stderr.contains("record type"), "{stderr}");
}

#[test]
fn dnssec_parent_mistakes_are_reported_with_locations() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let signed = |dnssec: &str| {
        config("").replacen(
            "file = \"gto.example.com.zone\"\n",
            &format!("file = \"gto.example.com.zone\"\ndnssec = {{ keys = \"keys\", {dnssec} }}\n"),
            1,
        )
    };
    let text = signed(r#"parent = ["127.0.0.1:99999", "ns1", "[::1]:53"], parent_check = "0s""#);
    fs::write(dir.path().join("gto.toml"), &text).unwrap();
    let line = 1 + text.lines().position(|l| l.starts_with("dnssec")).unwrap();
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, 64, "{stdout}{stderr}");
    for message in [
        r#"zone[0].dnssec.parent[0]: "127.0.0.1:99999" is not an address, ADDR:PORT or [V6]:PORT"#,
        r#"zone[0].dnssec.parent[1]: "ns1" is not an address"#,
        "zone[0].dnssec.parent_check: not a duration from 1s to 1d",
    ] {
        let expected = format!("gto.toml:{line}: {message}");
        assert!(stderr.contains(&expected), "{expected} not in\n{stderr}");
    }
    assert!(!stderr.contains("parent[2]"), "[::1]:53 is fine: {stderr}");

    let text = signed("parent = 5");
    fs::write(dir.path().join("gto.toml"), &text).unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains(r#"expected "resolve", "manual" or a list of "ADDR[:PORT]""#),
        "{stderr}"
    );

    let text = signed(r#"parent = "sometimes""#);
    fs::write(dir.path().join("gto.toml"), &text).unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains(r#"zone[0].dnssec.parent: "sometimes" is not "resolve", "manual""#),
        "{stderr}"
    );
    gto::dnssec::keys::generate(
        &dir.path().join("keys"),
        &hickory_proto::rr::Name::from_ascii("gto.example.com.").unwrap(),
        gto::dnssec::keys::Role::Csk,
        gto::dnssec::keys::KeyAlgorithm::EcdsaP256,
        gto::dnssec::keys::Timeline::from(gto::time::unix_now()),
        3600,
    )
    .unwrap();
    for good in [r#"parent = "manual""#, r#"parent = ["127.0.0.1", "::1"]"#] {
        fs::write(dir.path().join("gto.toml"), signed(good)).unwrap();
        let (code, stdout, stderr) = check(dir.path());
        assert_eq!(code, 0, "{good}: {stdout}{stderr}");
    }
}

#[test]
fn affinity_is_false_or_a_table_whose_unknown_keys_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let with = |affinity: &str| {
        config("").replace("ttl = 20\n", &format!("ttl = 20\naffinity = {affinity}\n"))
    };
    for (affinity, expected) in [
        (
            "{ v4 = 24, bogus = 1 }",
            "service[0].affinity.bogus: unknown key",
        ),
        ("\"yes\"", "expected false (per-query shares) or a table"),
    ] {
        fs::write(dir.path().join("gto.toml"), with(affinity)).unwrap();
        let (code, _, stderr) = check(dir.path());
        assert_eq!(code, 64, "{affinity}: {stderr}");
        assert!(stderr.contains(expected), "{affinity}: {stderr}");
    }
    for good in ["false", "true", "{ v4 = 16, candidates = 2 }"] {
        fs::write(dir.path().join("gto.toml"), with(good)).unwrap();
        let (code, stdout, stderr) = check(dir.path());
        assert_eq!(code, 0, "{good}: {stdout}{stderr}");
    }
}

/// `--log-json`: `gto check` prints each problem as a JSON line (file, line, path,
/// message), and the server's log lines are flat JSON (the message and the event's fields
/// at the top level, no nested `fields`).
#[tokio::test]
async fn log_json_gives_json_problems_and_flat_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let text = config("").replace("answers = 2\n", "answers = 0\n");
    fs::write(dir.path().join("gto.toml"), &text).unwrap();
    let output = gto_bin()
        .args(["check", "--log-json", "--config"])
        .arg(dir.path().join("gto.toml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(lines.len() >= 2, "{lines:?}");
    let first = &lines[0];
    assert_eq!(first["level"], "ERROR");
    assert!(
        first["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("service[0]")),
        "{first}"
    );
    assert!(first["line"].as_u64().is_some(), "{first}");
    assert!(first["message"].is_string(), "{first}");
    assert_eq!(lines.last().unwrap()["problems"], lines.len() - 1);

    real_config(dir.path(), ZONE, |t| t);
    let mut gto = crate::support::RealGto::spawn(&[
        std::ffi::OsStr::new("--log-json"),
        std::ffi::OsStr::new("run"),
        std::ffi::OsStr::new("--config"),
        dir.path().join("gto.toml").as_os_str(),
    ]);
    let line = gto.wait_for_log("serving DNS").await;
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        event["message"], "serving DNS on UDP (fast path) and TCP",
        "{event}"
    );
    assert!(
        event["local"].is_string(),
        "fields at the top level: {event}"
    );
    assert!(event.get("fields").is_none(), "{event}");
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}

/// `gto check` warns (exit 0) when none of a zone's name server addresses is a listen
/// address: the delegation points elsewhere. Listing one silences it.
#[test]
fn a_delegation_to_addresses_gto_does_not_listen_on_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    fs::write(dir.path().join("gto.toml"), config("")).unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning:")
            && stderr.contains("server.listen: zone gto.example.com.: its name servers' addresses")
            && stderr.contains("ns1.gto.example.com. 127.0.0.53"),
        "{stderr}"
    );
    fs::write(
        dir.path().join("gto.toml"),
        config("").replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.53:0\"]"),
    )
    .unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("name servers' addresses"), "{stderr}");
}

/// One run reports every problem, and no problem brings false ones: a mistyped value in a
/// pool's check does not drop the pool (no "unknown pool"), a mistyped member field does
/// not hide the next member's missing location, an unknown check kind is reported once
/// (no port or "applies to" errors), a pool's problem is not repeated for a member that
/// overrides another field, a member that changes its check's kind is not held to the
/// pool's fields of the other kind (`cert_min_days` for a tcp check), an unknown key in an
/// inline table has its line and names its pool, and a state file whose directory does
/// not exist is an error.
#[test]
fn every_problem_is_reported_once_and_none_is_a_consequence_of_another() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let text = r#"[server]
listen = ["127.0.0.1:0"]
state_file = "missing/gto.state"

[[zone]]
origin = "gto.example.com."
file = "gto.example.com.zone"

[[service]]
name = "vpn.gto.example.com."
pool = "sma"
policy = "geo"

[[pool]]
name = "sma"
check = { kind = "HTTPS", port = "443", cert_min_days = 10 }
[[pool.member]]
name = "fra-1"
addresses = ["198.51.100.10"]
weight = "heavy"
location = { region = "eu" }
[[pool.member]]
name = "ams-1"
addresses = ["198.51.100.20"]
check = { interval = "5s", bogus = 1 }
[[pool.member]]
name = "nyc-1"
addresses = ["203.0.113.30"]
location = { region = "us" }
check = { kind = "tcp", port = 443 }
"#;
    fs::write(dir.path().join("gto.toml"), text).unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 64);
    let expected = [
        ":9: service[0].policy: policy \"geo\" needs a location on every endpoint; sma/ams-1 has none",
        ":16: pool.sma.check.port: invalid type: string \"443\", expected i64",
        ":16: pool.sma.check.kind: unknown check kind \"HTTPS\"",
        ":20: pool.sma.member[0].weight: invalid type: string \"heavy\", expected i64",
        ":25: pool.sma.member[1].check.bogus: unknown key",
    ];
    for wanted in expected {
        assert!(stderr.contains(wanted), "missing {wanted:?} in:\n{stderr}");
    }
    assert!(
        stderr.contains(&format!("{} problem(s) found", expected.len())),
        "only these problems, each once:\n{stderr}"
    );
}

/// A state file whose directory does not exist: `gto check` warns (the packaged unit's
/// StateDirectory= makes /var/lib/gto only when it starts), `gto run` refuses to start
/// with exit 64, since no change could ever be saved.
#[test]
fn a_state_file_in_a_missing_directory_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let text = config("").replace(
        "[server]\nlisten = [\"127.0.0.1:0\"]",
        "[server]\nlisten = [\"127.0.0.1:0\"]\nstate_file = \"missing/gto.state\"",
    );
    fs::write(dir.path().join("gto.toml"), text).unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("server.state_file: its directory"),
        "{stderr}"
    );
    let output = crate::support::gto_bin()
        .args(["run", "--config"])
        .arg(dir.path().join("gto.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}

/// `[[admin.token]]` mistakes, all in one run: a bad role, a name taken (also `default`,
/// which is `token_file`'s), a token held by two, and one too short.
#[test]
fn admin_token_mistakes_are_located() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    fs::write(dir.path().join("a.token"), "a-token-of-16-chars-or-more").unwrap();
    fs::write(dir.path().join("b.token"), "a-token-of-16-chars-or-more").unwrap();
    fs::write(dir.path().join("short.token"), "short").unwrap();
    let text = config("")
        + r#"
[[admin.token]]
name = "ops"
file = "a.token"
role = "superuser"
[[admin.token]]
name = "ops"
file = "b.token"
[[admin.token]]
name = "default"
file = "short.token"
"#;
    fs::write(dir.path().join("gto.toml"), text).unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 64, "{stderr}");
    for wanted in [
        "admin.token[0].role: \"superuser\" is not \"read\", \"operate\" or \"admin\"",
        "admin.token[1].name: token name \"ops\" is taken",
        "admin.token[1].file: holds the same token as another",
        "admin.token[2].name: token name \"default\" is taken",
        "admin.token[2].file:",
    ] {
        assert!(stderr.contains(wanted), "missing {wanted:?} in:\n{stderr}");
    }
}

#[test]
fn latency_mistakes_are_reported_with_locations() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    // A fleet without a region and no declared vantages; bands out of range; a vantage
    // region nothing uses; tie = "latency" on a latency policy.
    let text = config(
        "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\n\n\
         [latency]\nmeasure = \"ttfb\"\nwindow = 0\nrelative_band = 1.5\nabsolute_band = \"20s\"\n\
         vantages = [\"eu\", \"mars\"]\nrum_max_prefixes = 0\nrum_max_age = \"0s\"\n\n\
         [[geo.network]]\ncidr = \"10.1.0.0/16\"\nlocation = { region = \"eu\" }\n",
    )
    .replace(
        "answers = 2\n",
        "answers = 2\npolicy = \"latency\"\ntie = \"latency\"\n",
    );
    fs::write(dir.path().join("gto.toml"), &text).unwrap();
    let line = |needle: &str| 1 + text.lines().position(|l| l.starts_with(needle)).unwrap();
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, 64, "{stdout}{stderr}");
    for (key, message) in [
        (
            "measure",
            "latency.measure: expected \"connect\" or \"first-byte\"",
        ),
        ("window", "latency.window: must be between 1 and 32"),
        (
            "relative_band",
            "latency.relative_band: must be between 0 and 1",
        ),
        (
            "absolute_band",
            "latency.absolute_band: not a duration of at most 10s",
        ),
        (
            "vantages",
            "latency.vantages[1]: no client network, member, [[geo.region]] or [cluster] region is in region \"mars\"",
        ),
        (
            "rum_max_prefixes",
            "latency.rum_max_prefixes: must be between 1 and 1000000",
        ),
        (
            "rum_max_age",
            "latency.rum_max_age: not a duration between 1s and 24h",
        ),
        (
            "tie",
            "service[0].tie: policy \"latency\" ranks by latency already",
        ),
    ] {
        let expected = format!("gto.toml:{}: {message}", line(key));
        assert!(stderr.contains(&expected), "{expected} not in\n{stderr}");
    }
    // No vantage at all in a fleet: the policy is refused (vantages gone, no region).
    let text = config("[cluster]\netcd = [\"http://127.0.0.1:2379\"]\n")
        .replace("answers = 2\n", "answers = 2\npolicy = \"latency\"\n");
    fs::write(dir.path().join("gto.toml"), &text).unwrap();
    let (code, _, stderr) = check(dir.path());
    assert_eq!(code, 64, "{stderr}");
    let expected = format!(
        "gto.toml:{}: service[0].policy: policy = \"latency\" in a fleet has no vantage in any region",
        line("[[service]]")
    );
    assert!(stderr.contains(&expected), "{expected} not in\n{stderr}");
    // Without a fleet the instance measures for everyone: accepted.
    let text = config("").replace("answers = 2\n", "answers = 2\npolicy = \"latency\"\n");
    fs::write(dir.path().join("gto.toml"), &text).unwrap();
    let (code, stdout, stderr) = check(dir.path());
    assert_eq!(code, 0, "{stdout}{stderr}");
}
