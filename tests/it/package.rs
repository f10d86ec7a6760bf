//! Deploying like a DNS server (issue 16): the real binary under a `NOTIFY_SOCKET` of the
//! test's own, and the Debian package that `tests/run` builds (`GTO_DEB`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{RealGto, ZONE, config, wait_answering};

/// Reads notify datagrams until one contains `wanted` (at most 20 s); returns it.
async fn next_containing(socket: &tokio::net::UnixDatagram, wanted: &str) -> String {
    let mut buffer = [0u8; 4096];
    let wait = async {
        loop {
            let n = socket.recv(&mut buffer).await.unwrap();
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            if text.contains(wanted) {
                return text;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("no {wanted:?} from gto within 20 s"))
}

#[tokio::test]
async fn systemd_notify_ready_reloading_watchdog_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let text = config("").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nenabled = false",
    );
    std::fs::write(dir.path().join("gto.toml"), text).unwrap();
    std::fs::write(dir.path().join("gto.example.com.zone"), ZONE).unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let config_path = dir.path().join("gto.toml");
    let mut gto = RealGto::spawn_env(
        &[
            OsStr::new("run"),
            OsStr::new("--config"),
            config_path.as_os_str(),
        ],
        &[
            ("NOTIFY_SOCKET", socket_path.as_os_str()),
            ("WATCHDOG_USEC", OsStr::new("400000")),
        ],
    );
    next_containing(&socket, "READY=1").await;
    let addr = gto.dns_addr().await;
    // Ready means bound and serving: the very next query is answered.
    let reply = crate::support::udp_raw_within(
        addr,
        &crate::support::query(
            "vpn.gto.example.com.",
            hickory_proto::rr::RecordType::A,
            None,
        )
        .to_vec()
        .unwrap(),
        1000,
    )
    .await;
    assert!(reply.is_some(), "READY=1 before the listener answered");
    // Pings at half the 400 ms period, while the query path and builder answer.
    for _ in 0..3 {
        next_containing(&socket, "WATCHDOG=1").await;
    }
    gto.signal("HUP");
    let reloading = next_containing(&socket, "RELOADING=1").await;
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    next_containing(&socket, "READY=1").await;
    wait_answering(addr, "vpn.gto.example.com.").await;
    gto.signal("TERM");
    next_containing(&socket, "STOPPING=1").await;
    assert!(gto.exit().await.success());
}

/// The package `tests/run` built; its path is in `GTO_DEB`.
fn package() -> PathBuf {
    let path = std::env::var_os("GTO_DEB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "GTO_DEB is not set: run `tests/run`, which builds the Debian package \
             (cargo build --release; gto assets target/assets; cargo deb --no-build) first"
            )
        });
    assert!(path.is_file(), "GTO_DEB={} is not a file", path.display());
    path
}

fn run(program: &str, args: &[&OsStr]) -> (bool, String, String) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is missing ({e}); `tests/run` installs it"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_package_holds_what_a_dns_server_package_should_and_passes_lintian() {
    let deb = package();
    let (ok, listing, stderr) = run("dpkg-deb", &[OsStr::new("-c"), deb.as_os_str()]);
    assert!(ok, "{stderr}");
    for path in [
        "./usr/bin/gto",
        "./etc/gto/gto.toml",
        "./etc/gto/zones/gto.example.com.zone",
        "./usr/lib/systemd/system/gto.service",
        "./usr/share/man/man1/gto.1.gz",
        "./usr/share/man/man1/gto-run.1.gz",
        "./usr/share/man/man1/gto-check.1.gz",
        "./usr/share/man/man1/gto-explain.1.gz",
        "./usr/share/man/man1/gto-probe.1.gz",
        "./usr/share/man/man1/gto-dnssec.1.gz",
        "./usr/share/man/man1/gto-reload.1.gz",
        "./usr/share/man/man1/gto-replace.1.gz",
        "./usr/share/man/man1/gto-ctl.1.gz",
        "./usr/share/man/man5/gto.toml.5.gz",
        "./usr/share/bash-completion/completions/gto",
        "./usr/share/zsh/vendor-completions/_gto",
        "./usr/share/fish/vendor_completions.d/gto.fish",
        "./usr/share/doc/gto/examples/grafana-dashboard.json",
        "./usr/share/doc/gto/examples/prometheus.yml",
        "./usr/share/doc/gto/examples/alerts.yml",
        "./usr/share/doc/gto/examples/alerts.test.yml",
        "./usr/share/doc/gto/copyright",
        "./usr/share/doc/gto/changelog.Debian.gz",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} missing from the package:\n{listing}"
        );
    }
    // Config and zone are conffiles; no maintainer script creates users or directories
    // (DynamicUser= and StateDirectory= do).
    let control = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(
        "dpkg-deb",
        &[
            OsStr::new("-e"),
            deb.as_os_str(),
            control.path().as_os_str(),
        ],
    );
    assert!(ok, "{stderr}");
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap();
    assert!(conffiles.contains("/etc/gto/gto.toml"), "{conffiles}");
    assert!(
        conffiles.contains("/etc/gto/zones/gto.example.com.zone"),
        "{conffiles}"
    );
    maintainer_scripts_manage_the_service(control.path());
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        if let Ok(text) = std::fs::read_to_string(control.path().join(script)) {
            for creating in ["adduser", "useradd", "mkdir", "chown"] {
                assert!(
                    !text.contains(creating),
                    "{script} runs {creating}:\n{text}"
                );
            }
        }
    }

    let root = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run(
        "dpkg-deb",
        &[OsStr::new("-x"), deb.as_os_str(), root.path().as_os_str()],
    );
    assert!(ok, "{stderr}");
    // The shipped config is valid, and the man page renders.
    let gto = root.path().join("usr/bin/gto");
    let etc = root.path().join("etc/gto/gto.toml");
    let (ok, _, stderr) = run(
        gto.to_str().unwrap(),
        &[OsStr::new("check"), OsStr::new("--config"), etc.as_os_str()],
    );
    assert!(
        ok,
        "the shipped /etc/gto/gto.toml does not pass gto check: {stderr}"
    );

    unit_is_valid_and_hardened(root.path());
    man_pages_are_written_and_render_cleanly(root.path());

    // Lintian clean: no error and no warning (one override, for the ITP bug a package
    // that is not uploaded to Debian cannot close).
    let (ok, out, stderr) = run(
        "lintian",
        &[
            OsStr::new("--fail-on"),
            OsStr::new("warning"),
            deb.as_os_str(),
        ],
    );
    assert!(ok, "lintian errors or warnings:\n{out}{stderr}");
    assert!(
        !out.lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "{out}"
    );
}

/// The maintainer scripts: the unit enabled and started on install (after a
/// daemon-reload), replaced without a lost query on upgrade (`gto replace`), stopped on
/// remove; and purge, run for real
/// in a mount namespace of its own over an empty /var/lib, removes the state directory
/// that `remove` keeps.
fn maintainer_scripts_manage_the_service(control: &Path) {
    let script = |name: &str| std::fs::read_to_string(control.join(name)).unwrap();
    for name in ["postinst", "prerm", "postrm"] {
        let (ok, _, stderr) = run("sh", &[OsStr::new("-n"), control.join(name).as_os_str()]);
        assert!(ok, "{name}: {stderr}");
    }
    let postinst = script("postinst");
    for wanted in [
        "deb-systemd-helper enable gto.service",
        "systemctl --system daemon-reload",
        "deb-systemd-invoke start gto.service",
        // An upgrade hands the sockets over rather than restarting.
        "/usr/bin/gto replace --config /etc/gto/gto.toml --pid",
    ] {
        assert!(
            postinst.contains(wanted),
            "no {wanted:?} in postinst:\n{postinst}"
        );
    }
    let prerm = script("prerm");
    assert!(
        prerm.contains("\"$1\" = remove") && prerm.contains("deb-systemd-invoke stop gto.service"),
        "prerm:\n{prerm}"
    );
    let postrm = control.join("postrm");
    let (ok, out, stderr) = run(
        "unshare",
        &[
            OsStr::new("-rm"),
            OsStr::new("sh"),
            OsStr::new("-ec"),
            OsStr::new(
                "mount -t tmpfs none /var/lib; mkdir -p /var/lib/private/gto; \
                 echo '{}' > /var/lib/private/gto/gto.state; ln -s private/gto /var/lib/gto; \
                 sh \"$0\" remove; test -e /var/lib/gto/gto.state; echo kept; \
                 sh \"$0\" purge; test ! -e /var/lib/private/gto; test ! -L /var/lib/gto; \
                 echo purged",
            ),
            postrm.as_os_str(),
        ],
    );
    assert!(ok && out == "kept\npurged\n", "{out}{stderr}");
}

/// gto(1) has the sections clap cannot write (FILES, SIGNALS, EXIT STATUS, EXAMPLES), and
/// it and gto.toml(5) render with no warning from man.
fn man_pages_are_written_and_render_cleanly(root: &Path) {
    for (page, sections) in [
        (
            "usr/share/man/man1/gto.1.gz",
            &[
                "SYNOPSIS",
                "SUBCOMMANDS",
                "FILES",
                "SIGNALS",
                "EXIT STATUS",
                "EXAMPLES",
                "SEE ALSO",
            ][..],
        ),
        (
            "usr/share/man/man5/gto.toml.5.gz",
            &[
                "[server]",
                "[[pool]] and [[pool.member]]",
                "family",
                "EXAMPLE",
            ][..],
        ),
    ] {
        let output = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(root.join(page))
            .env("MANWIDTH", "100")
            .env("LC_ALL", "C.UTF-8")
            .output()
            .expect("man is missing (`tests/run` installs man-db)");
        let (out, stderr) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert!(
            output.status.success() && stderr.trim().is_empty(),
            "{page}: {stderr}"
        );
        for section in sections {
            assert!(out.contains(section), "no {section:?} in {page}:\n{out}");
        }
    }
}

/// `systemd-analyze verify` accepts the unit without a word (its ExecStart pointed at the
/// extracted binary, since the package is not installed here), and `systemd-analyze
/// security` rates it "OK" or better.
fn unit_is_valid_and_hardened(root: &Path) {
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/gto.service")).unwrap();
    for directive in [
        "Type=notify",
        "NotifyAccess=all",
        "ExecStart=/usr/bin/gto run --config /etc/gto/gto.toml",
        "ExecReload=/usr/bin/gto reload --config /etc/gto/gto.toml --pid $MAINPID",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE\n",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
        "DynamicUser=yes",
        "StateDirectory=gto",
        "WatchdogSec=",
        "LimitNOFILE=",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(
            unit.contains(directive),
            "no {directive:?} in the unit:\n{unit}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("gto.service");
    let binary = root.join("usr/bin/gto");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/gto", binary.to_str().unwrap()),
    )
    .unwrap();
    let (ok, out, stderr) = run(
        "systemd-analyze",
        &[
            OsStr::new("verify"),
            OsStr::new("--man=no"),
            copy.as_os_str(),
        ],
    );
    assert!(
        ok && out.trim().is_empty() && stderr.trim().is_empty(),
        "{out}{stderr}"
    );
    let (ok, out, stderr) = run(
        "systemd-analyze",
        &[
            OsStr::new("security"),
            OsStr::new("--offline=yes"),
            copy.as_os_str(),
        ],
    );
    let verdict = out
        .lines()
        .chain(stderr.lines())
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level ({ok}):\n{out}{stderr}"))
        .to_string();
    let level: f64 = verdict
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{verdict}"));
    assert!(level < 5.0, "exposure {level}, not OK or better: {verdict}");
    eprintln!("systemd-analyze security: {verdict}");
}
