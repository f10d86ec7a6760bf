//! Issue 13: master-file syntax. `$INCLUDE` (relative to the including file, with an
//! origin, loops located), every construct gto does not serve faithfully a located
//! `gto check` error, and data hidden below a delegation a located warning.

use std::fs;
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::real::real_config;
use crate::support::{TestServer, ZONE, answers, config, gto_bin, query, udp};

fn check(dir: &Path) -> (i32, String) {
    let output = gto_bin()
        .arg("check")
        .arg("--config")
        .arg(dir.join("gto.toml"))
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn write_config(dir: &Path, zone: &str) {
    fs::write(dir.join("gto.toml"), config("")).unwrap();
    fs::write(dir.join("gto.example.com.zone"), zone).unwrap();
}

#[test]
fn every_unsupported_construct_is_a_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let constructs = [
        ("$GENERATE 1-4 host$ A 192.0.2.$", "$GENERATE"),
        ("$DATE 20260101", "unknown directive $DATE"),
        ("$ORIGIN", "takes exactly one argument"),
        ("alias DNAME elsewhere.example.", "DNAME is not supported"),
        (
            "sub2 DS 12345 8 2 49FD46E6C4B45C55D4AC69CBD3CD34AC1AFE51DE",
            "which is not a delegation",
        ),
        (
            "@ DS 12345 8 2 49FD46E6C4B45C55D4AC69CBD3CD34AC1AFE51DE",
            "belongs in the parent",
        ),
        (
            "x DNSKEY 257 3 8 AwEAAa==",
            "DNSKEY records are made by gto",
        ),
        ("x NSEC y A", "NSEC records are made by gto"),
        ("x TYPE65534 \\# 2 abcd", "RFC 3597"),
        ("x A \\# 4 c0000201", "RFC 3597"),
        (
            "x LOC 52 22 23.000 N 4 53 32.000 E -2.00m 0.00m 10000m 10m",
            "record type LOC is not supported",
        ),
        ("x CH TXT \"chaos\"", "class CH is not served"),
        ("*.w NS ns1", "NS at the wildcard"),
        ("x\\046y A 192.0.2.1", "escaped characters"),
        ("$INCLUDE missing.zone", "cannot read included file"),
        ("$INCLUDE", "$INCLUDE takes a file name"),
        ("mail A 192.0.2.26 extra", "A takes 1 field(s)"),
        ("@ MX 10 mail extra", "MX takes 2 field(s)"),
    ];
    let mut zone = ZONE.to_string();
    let first = zone.lines().count() + 1;
    for (text, _) in &constructs {
        zone.push_str(text);
        zone.push('\n');
    }
    write_config(dir.path(), &zone);
    let (code, output) = check(dir.path());
    assert_eq!(code, 64, "{output}");
    for (i, (text, expected)) in constructs.iter().enumerate() {
        let location = format!("gto.example.com.zone:{}:", first + i);
        let line = output
            .lines()
            .find(|l| l.contains(&location))
            .unwrap_or_else(|| panic!("no error located at {location} for {text:?}:\n{output}"));
        assert!(
            line.starts_with("error:") && line.contains(expected),
            "{text:?}: {line}"
        );
    }
    assert!(
        output.contains(&format!("{} problem(s) found", constructs.len())),
        "{output}"
    );
}

#[tokio::test]
async fn include_reads_relative_files_with_their_origin() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("parts")).unwrap();
    // The main file includes parts/hosts.inc with origin hosts; that file includes a
    // sibling (relative to itself) with no origin: it inherits hosts.
    let zone = format!("{ZONE}$INCLUDE parts/hosts.inc hosts\nafter IN A 192.0.2.77\n");
    fs::write(
        dir.path().join("parts/hosts.inc"),
        "alpha IN A 192.0.2.70\n$INCLUDE \"more hosts.inc\"\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("parts/more hosts.inc"),
        "beta IN A 192.0.2.71\n",
    )
    .unwrap();
    write_config(dir.path(), &zone);
    let (code, output) = check(dir.path());
    assert_eq!(code, 0, "{output}");

    let server = TestServer::start_in(dir).await;
    for (name, address) in [
        ("alpha.hosts.gto.example.com.", "192.0.2.70"),
        ("beta.hosts.gto.example.com.", "192.0.2.71"),
        // The origin is the includer's again after the $INCLUDE.
        ("after.gto.example.com.", "192.0.2.77"),
    ] {
        let (reply, _) = udp(server.addr, &query(name, RecordType::A, None)).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{name}"
        );
        assert_eq!(answers(&reply), vec![address], "{name}");
    }
}

#[test]
fn include_loops_and_errors_in_included_files_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let zone = format!("{ZONE}$INCLUDE a.inc\n");
    let main_line = zone.lines().count();
    fs::write(
        dir.path().join("a.inc"),
        "ok IN A 192.0.2.1\nbad IN A 999.1.1.1\n$INCLUDE b.inc\n",
    )
    .unwrap();
    fs::write(dir.path().join("b.inc"), "; back to a\n$INCLUDE a.inc\n").unwrap();
    write_config(dir.path(), &zone);
    let (code, output) = check(dir.path());
    assert_eq!(code, 64, "{output}");
    assert!(output.contains("a.inc:2: bad record"), "{output}");
    let looped = output
        .lines()
        .find(|l| l.contains("$INCLUDE loop"))
        .unwrap_or_else(|| panic!("no loop reported:\n{output}"));
    assert!(
        looped.contains("b.inc:2:"),
        "located at the include: {looped}"
    );
    assert!(!output.contains(&format!("zone:{main_line}:")), "{output}");
}

#[test]
fn occluded_data_is_a_located_warning_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let zone = format!(
        "{ZONE}sub IN NS ns.sub\nns.sub IN A 192.0.2.99\nwww.sub IN A 192.0.2.100\nsub IN TXT \"hidden\"\n"
    );
    let www_line = zone.lines().count() - 1;
    write_config(dir.path(), &zone);
    let (code, output) = check(dir.path());
    assert_eq!(code, 0, "{output}");
    // The zone file's warnings (the config's own, about listen addresses, aside).
    let warnings: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("warning:") && l.contains(".zone:"))
        .collect();
    assert_eq!(warnings.len(), 2, "glue is not warned about: {output}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&format!("zone:{www_line}:"))
                && w.contains("www.sub.gto.example.com. A")
                && w.contains("occluded")),
        "{output}"
    );
    assert!(output.contains("ok:"), "{output}");
}

/// Item 5: a fan-out of `$INCLUDE`s (7 tiny files, each including the one before ten
/// times: 10^6 includes) is stopped at 10,000 includes with one located problem, at
/// once, instead of reading on for gigabytes.
#[test]
fn an_include_fan_out_is_cut_off_at_the_include_limit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("level0.zone"), "leaf IN TXT \"x\"\n").unwrap();
    for level in 1..=6 {
        let text = format!("$INCLUDE level{}.zone\n", level - 1).repeat(10);
        std::fs::write(dir.path().join(format!("level{level}.zone")), text).unwrap();
    }
    real_config(dir.path(), &format!("{ZONE}$INCLUDE level6.zone\n"), |t| t);
    let started = tokio::time::Instant::now();
    let (code, _, stderr) = crate::check::check(dir.path());
    let took = started.elapsed();
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("more than 10000 $INCLUDEs"), "{stderr}");
    assert_eq!(
        stderr.matches("$INCLUDEs").count(),
        1,
        "reported once: {stderr}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

/// Item 10: `include_outside_config_dir = false` keeps `$INCLUDE` inside the config's
/// directory tree (by default it may read anywhere, as documented).
#[test]
fn includes_can_be_kept_inside_the_config_directory() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("extra.zone"), "extra IN A 192.0.2.7\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(
        dir.path().join("sub/inside.zone"),
        "inside IN A 192.0.2.8\n",
    )
    .unwrap();
    let include = format!(
        "{ZONE}$INCLUDE sub/inside.zone\n$INCLUDE {}\n",
        outside.path().join("extra.zone").display()
    );
    real_config(dir.path(), &include, |t| t);
    let (code, _, stderr) = crate::check::check(dir.path());
    assert_eq!(code, 0, "by default includes read anywhere: {stderr}");
    real_config(dir.path(), &include, |t| {
        t.replace(
            "[server]\n",
            "[server]\ninclude_outside_config_dir = false\n",
        )
    });
    let (code, _, stderr) = crate::check::check(dir.path());
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("extra.zone is outside") && !stderr.contains("inside.zone"),
        "{stderr}"
    );
}
