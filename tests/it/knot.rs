//! Issue 13: gto against a reference authoritative server. Knot DNS (the Debian `knot`
//! package, installed by `tests/run`) is started on loopback with the same zone files,
//! and a corpus of names and types covering wildcards, empty non-terminals, delegations,
//! glue, occluded data, CNAME chains and negative answers is asked of both over UDP.
//! Every difference is a failure. The one difference the comparison allows is the letter
//! case of names inside RDATA (see [`summary`]); ANY is left out of the corpus (RFC 8482
//! lets each server pick the RRset it answers with).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hickory_proto::op::{Edns, Message};
use hickory_proto::rr::{Record, RecordType};

use crate::authority::{RFC4592_ZONE, zone};
use crate::support::{TestServer, config, free_port, query, udp_raw_within};

/// knotd, ended when dropped.
struct Knot {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn knotd() -> &'static str {
    for path in ["/usr/sbin/knotd", "/usr/bin/knotd"] {
        if Path::new(path).exists() {
            return path;
        }
    }
    panic!("knotd is not installed: `tests/run` installs it (apt-get install -y knot)");
}

async fn start_knot(zones: &[(&str, &str)]) -> Knot {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut conf = format!(
        "server:\n  rundir: \"{0}\"\n  listen: 127.0.0.1@{port}\n\
         database:\n  storage: \"{0}\"\n\
         log:\n  - target: stderr\n    any: warning\n\
         template:\n  - id: default\n    storage: \"{0}\"\n    zonefile-sync: -1\n\
         \x20   zonefile-load: whole\n    journal-content: none\n\
         zone:\n",
        dir.path().display()
    );
    for (origin, text) in zones {
        let file = format!("{origin}zone");
        std::fs::write(dir.path().join(&file), text).unwrap();
        conf.push_str(&format!("  - domain: {origin}\n    file: \"{file}\"\n"));
    }
    std::fs::write(dir.path().join("knot.conf"), conf).unwrap();
    let child = Command::new(knotd())
        .arg("-c")
        .arg(dir.path().join("knot.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let knot = Knot {
        child,
        addr,
        _dir: dir,
    };
    // Ready when it answers every zone's SOA authoritatively.
    let probe = |origin: &str| query(origin, RecordType::SOA, None).to_vec().unwrap();
    for attempt in 0.. {
        let mut ready = true;
        for (origin, _) in zones {
            let answered = udp_raw_within(addr, &probe(origin), 200)
                .await
                .and_then(|bytes| Message::from_vec(&bytes).ok())
                .is_some_and(|m| m.metadata.authoritative && !m.answers.is_empty());
            ready &= answered;
        }
        if ready {
            break;
        }
        assert!(attempt < 100, "knotd did not start serving within 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    knot
}

/// What is compared of a reply: flags, code and every section as sorted text. Names are
/// compared without regard to case (RFC 4343 section 3): Knot compresses names in RDATA
/// against the question, so a question in mixed case puts its case into the SOA's names;
/// gto writes them as the zone file has them. (That wildcard owners keep the question's
/// case is tested apart.)
fn summary(reply: &Message) -> String {
    let section = |records: &[Record]| {
        let mut lines: Vec<String> = records
            .iter()
            .map(|r| {
                let data = match r.record_type() {
                    RecordType::SOA
                    | RecordType::NS
                    | RecordType::CNAME
                    | RecordType::MX
                    | RecordType::SRV => r.data.to_string().to_lowercase(),
                    _ => r.data.to_string(),
                };
                format!(
                    "  {} {} {} {data}",
                    r.name.to_lowercase(),
                    r.ttl,
                    r.record_type(),
                )
            })
            .collect();
        lines.sort();
        lines.join("\n")
    };
    format!(
        "{} aa={} tc={}\nanswer:\n{}\nauthority:\n{}\nadditional:\n{}",
        reply.metadata.response_code,
        reply.metadata.authoritative,
        reply.metadata.truncation,
        section(&reply.answers),
        section(&reply.authorities),
        section(&reply.additionals)
    )
}

#[tokio::test]
async fn answers_match_knot_on_the_same_zone_files() {
    let gto_zone = zone();
    let gto = {
        let config = format!(
            "{}\n[[zone]]\norigin = \"example.\"\nfile = \"example.zone\"\n",
            config("")
        );
        TestServer::start_with_files(&config, &gto_zone, &[("example.zone", RFC4592_ZONE)]).await
    };
    let knot = start_knot(&[
        ("gto.example.com.", gto_zone.as_str()),
        ("example.", RFC4592_ZONE),
    ])
    .await;

    let names = [
        "gto.example.com.",
        "ns1.gto.example.com.",
        "www.gto.example.com.",
        "WWW.Gto.Example.com.",
        "api.gto.example.com.",
        "mail.gto.example.com.",
        "docs.gto.example.com.",
        "nope.gto.example.com.",
        "a.nope.gto.example.com.",
        "x.wild.gto.example.com.",
        "X.WILD.gto.example.com.",
        "deep.x.wild.gto.example.com.",
        "exists.wild.gto.example.com.",
        "sub.exists.wild.gto.example.com.",
        "b.wild.gto.example.com.",
        "a.b.wild.gto.example.com.",
        "c.b.wild.gto.example.com.",
        "wild.gto.example.com.",
        "*.wild.gto.example.com.",
        "q.cn.gto.example.com.",
        "cn.gto.example.com.",
        "sub.gto.example.com.",
        "x.sub.gto.example.com.",
        "ns.sub.gto.example.com.",
        "www.sub.gto.example.com.",
        "tosub.gto.example.com.",
        "towild.gto.example.com.",
        "example.",
        "host1.example.",
        "host3.example.",
        "foo.bar.example.",
        "sub.*.example.",
        "*.example.",
        "_ssh._tcp.host1.example.",
        "_tcp.host1.example.",
        "_telnet._tcp.host1.example.",
        "host.subdel.example.",
        "subdel.example.",
        "ghost.*.example.",
        "host2.example.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::MX,
        RecordType::NS,
        RecordType::SOA,
        RecordType::SRV,
        RecordType::CNAME,
        RecordType::DS,
        RecordType::CAA,
    ];
    let mut differences = Vec::new();
    let mut compared = 0;
    for name in names {
        for qtype in types {
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            let bytes = query(name, qtype, Some(edns)).to_vec().unwrap();
            let ours = udp_raw_within(gto.addr, &bytes, 2000).await;
            let theirs = udp_raw_within(knot.addr, &bytes, 2000).await;
            let (Some(ours), Some(theirs)) = (ours, theirs) else {
                differences.push(format!("{name} {qtype}: no reply from one side"));
                continue;
            };
            let ours = summary(&Message::from_vec(&ours).unwrap());
            let theirs = summary(&Message::from_vec(&theirs).unwrap());
            compared += 1;
            if ours != theirs {
                differences.push(format!(
                    "{name} {qtype}:\n-- gto:\n{ours}\n-- knot:\n{theirs}"
                ));
            }
        }
    }
    assert_eq!(compared, names.len() * types.len());
    assert!(
        differences.is_empty(),
        "{} of {compared} answers differ from Knot's:\n{}",
        differences.len(),
        differences.join("\n\n")
    );
}
