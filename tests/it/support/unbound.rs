//! A real validating resolver: Debian's `unbound` (installed by `tests/run`), started on a
//! loopback port with gto as the stub for one zone and a trust anchor file, so that what
//! it says (AD, SERVFAIL) is a validator's verdict on gto's signatures.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{dig, free_port};

/// unbound, ended when dropped.
pub struct Unbound {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a validating resolver answered.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`...
    pub status: String,
    /// The AD bit.
    pub ad: bool,
    /// The answer section's data, one per record (types other than RRSIG).
    pub answers: Vec<String>,
    /// dig's whole output, for messages.
    pub text: String,
}

impl Unbound {
    /// Starts unbound validating `zone` (served by gto at `stub`) with the trust anchors in
    /// `anchors` (DS or DNSKEY lines, as `gto dnssec ds` prints them). ECS from clients is
    /// forwarded to gto (the subnetcache module).
    pub async fn start(zone: &str, stub: SocketAddr, anchors: &str) -> Self {
        let binary = ["/usr/sbin/unbound", "/usr/bin/unbound"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect(
                "unbound is not installed: `tests/run` installs it (apt-get install -y unbound)",
            );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("anchors"), anchors).unwrap();
        let conf = format!(
            "server:
  interface: 127.0.0.1@{port}
  port: {port}
  do-daemonize: no
  chroot: \"\"
  username: \"\"
  directory: \"{dir}\"
  pidfile: \"\"
  use-syslog: no
  logfile: \"\"
  verbosity: 1
  val-log-level: 2
  do-not-query-localhost: no
  do-ip6: no
  trust-anchor-file: \"{dir}/anchors\"
  module-config: \"subnetcache validator iterator\"
  send-client-subnet: 127.0.0.1
  max-client-subnet-ipv4: 24
  qname-minimisation: no
  aggressive-nsec: no
  val-permissive-mode: no
  infra-host-ttl: 1
stub-zone:
  name: \"{zone}\"
  stub-addr: {}@{}
",
            stub.ip(),
            stub.port(),
            dir = dir.path().display()
        );
        std::fs::write(dir.path().join("unbound.conf"), conf).unwrap();
        let child = Command::new(binary)
            .arg("-d")
            .arg("-c")
            .arg(dir.path().join("unbound.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("unbound.log")).unwrap())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let unbound = Self { child, addr, dir };
        // Ready when it answers anything (a local zone query needs no upstream).
        for _ in 0..100 {
            let out = dig(addr, &["+norec", "version.bind", "CH", "TXT"]).await;
            if out.contains("status:") {
                return unbound;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("unbound did not start: {}", unbound.log());
    }

    /// unbound's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("unbound.log")).unwrap_or_default()
    }

    /// Asks unbound (recursion desired) with extra dig arguments.
    pub async fn ask(&self, args: &[&str]) -> Verdict {
        let text = dig(self.addr, args).await;
        let status = text
            .split("status: ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or("no answer")
            .to_string();
        let ad = text
            .lines()
            .find(|l| l.starts_with(";; flags:"))
            .and_then(|l| l.split(';').nth(2))
            .is_some_and(|flags| flags.split_whitespace().any(|f| f == "ad"));
        let mut answers = Vec::new();
        let mut in_answer = false;
        for line in text.lines() {
            if line.starts_with(";; ANSWER SECTION") {
                in_answer = true;
                continue;
            }
            if in_answer {
                if line.trim().is_empty() || line.starts_with(";;") {
                    break;
                }
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.get(3) != Some(&"RRSIG") {
                    answers.push(fields.get(4..).map(|f| f.join(" ")).unwrap_or_default());
                }
            }
        }
        Verdict {
            status,
            ad,
            answers,
            text,
        }
    }
}
