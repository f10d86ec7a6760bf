//! Issue 13: a zone served faithfully over real UDP and TCP — wildcards (RFC 4592, with
//! its own example zone as test vectors), referrals at delegations with glue (RFC 1034
//! section 4.3.2, RFC 9471), DS at the cut, occluded names, CNAMEs into a wildcard and
//! into a delegation, the question's letter case, and the exact ECS echo (RFC 7871).

use std::net::SocketAddr;

use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{Record, RecordType};

use crate::support::{PREAMBLE, TestServer, ZONE, config, query, tcp, udp, udp_raw};

/// The example zone with wildcards, a delegation with in-domain, in-zone and
/// out-of-zone servers, data hidden below it, and CNAMEs into both.
pub fn zone() -> String {
    format!(
        "{ZONE}\
*.wild    IN A     192.0.2.180
*.wild    IN TXT   \"wild\"
*.wild    IN MX    10 mail
exists.wild IN A   192.0.2.181
a.b.wild  IN A     192.0.2.182
*.cn      IN CNAME mail
sub       IN NS    ns.sub
sub       IN NS    ns1
sub       IN NS    ns.other.net.
ns.sub    IN A     192.0.2.99
ns.sub    IN AAAA  2001:db8::99
www.sub   IN A     192.0.2.100
tosub     IN CNAME x.sub
towild    IN CNAME foo.wild
"
    )
}

/// RFC 4592 section 2.2.1's example zone (SOA and SRV data filled in).
pub const RFC4592_ZONE: &str = "$ORIGIN example.
example.                 3600 IN  SOA   ns.example.com. hostmaster.example.com. 1 3600 600 86400 300
example.                 3600     NS    ns.example.com.
example.                 3600     NS    ns.example.net.
*.example.               3600     TXT   \"this is a wildcard\"
*.example.               3600     MX    10 host1.example.
sub.*.example.           3600     TXT   \"this is not a wildcard\"
host1.example.           3600     A     192.0.2.1
_ssh._tcp.host1.example. 3600     SRV   0 0 22 host1.example.
_ssh._tcp.host2.example. 3600     SRV   0 0 22 host1.example.
subdel.example.          3600     NS    ns.example.com.
subdel.example.          3600     NS    ns.example.net.
";

async fn server() -> TestServer {
    let config = format!(
        "{}\n[[zone]]\norigin = \"example.\"\nfile = \"example.zone\"\n",
        config("")
    );
    TestServer::start_with_files(&config, &zone(), &[("example.zone", RFC4592_ZONE)]).await
}

/// The reply over UDP and over TCP, which must agree.
async fn ask(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let message = query(name, qtype, Some(Edns::new()));
    let (over_udp, _) = udp(addr, &message).await;
    let over_tcp = tcp(addr, &message).await;
    assert_eq!(
        over_udp.to_vec().unwrap(),
        over_tcp.to_vec().unwrap(),
        "UDP and TCP differ for {name} {qtype}"
    );
    over_udp
}

fn texts(records: &[Record]) -> Vec<String> {
    let mut texts: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {}", r.name.to_lowercase(), r.record_type(), r.data))
        .collect();
    texts.sort();
    texts
}

fn assert_nodata(reply: &Message, what: &str) {
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NoError,
        "{what}"
    );
    assert!(reply.metadata.authoritative, "{what}: AA");
    assert!(reply.answers.is_empty(), "{what}: {:?}", reply.answers);
    assert_eq!(reply.authorities.len(), 1, "{what}");
    assert_eq!(
        reply.authorities[0].record_type(),
        RecordType::SOA,
        "{what}"
    );
}

fn assert_nxdomain(reply: &Message, what: &str) {
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NXDomain,
        "{what}"
    );
    assert!(reply.metadata.authoritative, "{what}: AA");
    assert!(reply.answers.is_empty(), "{what}");
    assert_eq!(
        reply.authorities[0].record_type(),
        RecordType::SOA,
        "{what}"
    );
}

#[tokio::test]
async fn rfc4592_example_zone_gives_the_rfcs_results() {
    let server = server().await;
    let addr = server.addr;

    // Synthesized from a wildcard.
    let reply = ask(addr, "host3.example.", RecordType::MX).await;
    assert!(reply.metadata.authoritative);
    assert_eq!(
        texts(&reply.answers),
        vec!["host3.example. MX 10 host1.example."]
    );
    assert_eq!(
        texts(&reply.additionals),
        vec!["host1.example. A 192.0.2.1"],
        "the MX target's address in additional"
    );
    assert_nodata(&ask(addr, "host3.example.", RecordType::A).await, "host3 A");
    let reply = ask(addr, "foo.bar.example.", RecordType::TXT).await;
    assert_eq!(
        texts(&reply.answers),
        vec!["foo.bar.example. TXT this is a wildcard"]
    );

    // Not synthesized.
    assert_nodata(&ask(addr, "host1.example.", RecordType::MX).await, "host1");
    assert_nodata(&ask(addr, "sub.*.example.", RecordType::MX).await, "sub.*");
    assert_nxdomain(
        &ask(addr, "_telnet._tcp.host1.example.", RecordType::SRV).await,
        "_telnet._tcp.host1 (the empty non-terminal _tcp.host1 is the closest encloser)",
    );
    let referral = ask(addr, "host.subdel.example.", RecordType::A).await;
    assert_eq!(referral.metadata.response_code, ResponseCode::NoError);
    assert!(!referral.metadata.authoritative, "a referral is not AA");
    assert!(referral.answers.is_empty());
    assert_eq!(
        texts(&referral.authorities),
        vec![
            "subdel.example. NS ns.example.com.",
            "subdel.example. NS ns.example.net."
        ]
    );
    assert_nxdomain(
        &ask(addr, "ghost.*.example.", RecordType::MX).await,
        "ghost.* (the closest encloser *.example has no wildcard child)",
    );
    // The wildcard's own name is an ordinary name.
    let reply = ask(addr, "*.example.", RecordType::TXT).await;
    assert_eq!(
        texts(&reply.answers),
        vec!["*.example. TXT this is a wildcard"]
    );
}

#[tokio::test]
async fn wildcards_synthesize_every_type_follow_cnames_and_keep_the_question_case() {
    let server = server().await;
    let addr = server.addr;
    let reply = ask(addr, "deep.x.wild.gto.example.com.", RecordType::A).await;
    assert!(reply.metadata.authoritative);
    assert_eq!(
        texts(&reply.answers),
        vec!["deep.x.wild.gto.example.com. A 192.0.2.180"]
    );
    let reply = ask(addr, "x.wild.gto.example.com.", RecordType::TXT).await;
    assert_eq!(
        texts(&reply.answers),
        vec!["x.wild.gto.example.com. TXT wild"]
    );
    assert_nodata(
        &ask(addr, "x.wild.gto.example.com.", RecordType::AAAA).await,
        "no AAAA at the wildcard",
    );
    // Existing names and empty non-terminals are never synthesized.
    assert_nodata(
        &ask(addr, "exists.wild.gto.example.com.", RecordType::TXT).await,
        "exists.wild",
    );
    assert_nodata(
        &ask(addr, "b.wild.gto.example.com.", RecordType::A).await,
        "b.wild is an empty non-terminal",
    );
    assert_nxdomain(
        &ask(addr, "c.b.wild.gto.example.com.", RecordType::A).await,
        "below the empty non-terminal b.wild there is no wildcard",
    );
    assert_nodata(
        &ask(addr, "wild.gto.example.com.", RecordType::A).await,
        "the wildcard's parent",
    );

    // A wildcard CNAME, followed.
    let reply = ask(addr, "q.cn.gto.example.com.", RecordType::A).await;
    assert_eq!(
        texts(&reply.answers),
        vec![
            "mail.gto.example.com. A 192.0.2.25",
            "q.cn.gto.example.com. CNAME mail.gto.example.com."
        ]
    );
    // A CNAME into a wildcard.
    let reply = ask(addr, "towild.gto.example.com.", RecordType::A).await;
    assert!(reply.metadata.authoritative);
    assert_eq!(
        texts(&reply.answers),
        vec![
            "foo.wild.gto.example.com. A 192.0.2.180",
            "towild.gto.example.com. CNAME foo.wild.gto.example.com."
        ]
    );

    // The owner is the question's name, letter case and all, on both transports.
    for name in ["X.Wild.GTO.example.COM.", "host3.EXAMPLE."] {
        let qtype = if name.starts_with('X') {
            RecordType::A
        } else {
            RecordType::MX
        };
        let message = query(name, qtype, None);
        for reply in [udp(addr, &message).await.0, tcp(addr, &message).await] {
            assert_eq!(reply.answers.len(), 1, "{name}");
            assert_eq!(reply.answers[0].name.to_ascii(), name, "owner case");
        }
    }
}

#[tokio::test]
async fn delegations_refer_with_glue_and_never_answer_below_the_cut() {
    let server = server().await;
    let addr = server.addr;
    let ns_set = vec![
        "sub.gto.example.com. NS ns.other.net.",
        "sub.gto.example.com. NS ns.sub.gto.example.com.",
        "sub.gto.example.com. NS ns1.gto.example.com.",
    ];
    let glue = vec![
        "ns.sub.gto.example.com. A 192.0.2.99",
        "ns.sub.gto.example.com. AAAA 2001:db8::99",
        "ns1.gto.example.com. A 127.0.0.53",
    ];
    // Below the cut, at the cut for any type but DS, the glue names, occluded data.
    for (name, qtype) in [
        ("x.sub.gto.example.com.", RecordType::A),
        ("a.b.sub.gto.example.com.", RecordType::TXT),
        ("sub.gto.example.com.", RecordType::NS),
        ("sub.gto.example.com.", RecordType::A),
        ("ns.sub.gto.example.com.", RecordType::A),
        ("www.sub.gto.example.com.", RecordType::A),
        ("x.sub.gto.example.com.", RecordType::DS),
    ] {
        let reply = ask(addr, name, qtype).await;
        let what = format!("{name} {qtype}");
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{what}"
        );
        assert!(
            !reply.metadata.authoritative,
            "{what}: a referral has AA clear"
        );
        assert!(reply.answers.is_empty(), "{what}: {:?}", reply.answers);
        assert_eq!(texts(&reply.authorities), ns_set, "{what}");
        assert_eq!(texts(&reply.additionals), glue, "{what}");
    }
    // DS at the cut is the parent's: NODATA with the SOA, authoritative.
    assert_nodata(
        &ask(addr, "sub.gto.example.com.", RecordType::DS).await,
        "DS at the cut",
    );
    // A CNAME into the delegation: our CNAME (AA) and the referral.
    let reply = ask(addr, "tosub.gto.example.com.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.authoritative, "the CNAME is ours");
    assert_eq!(
        texts(&reply.answers),
        vec!["tosub.gto.example.com. CNAME x.sub.gto.example.com."]
    );
    assert_eq!(texts(&reply.authorities), ns_set);
    assert_eq!(texts(&reply.additionals), glue);
}

/// A referral that does not fit: TC only when the in-domain glue does not fit; other
/// addresses are left out quietly.
#[tokio::test]
async fn oversized_referrals_truncate_only_for_required_glue() {
    let mut zone = ZONE.to_string();
    for i in 0..12 {
        zone.push_str(&format!(
            "big IN NS ns{i}.big\nns{i}.big IN AAAA 2001:db8::{i}\nns{i}.big IN A 192.0.2.{i}\n"
        ));
        zone.push_str(&format!(
            "wide IN NS ns{i}.servers\nns{i}.servers IN AAAA 2001:db8:1::{i}\nns{i}.servers IN A 192.0.2.{}\n",
            100 + i
        ));
    }
    let server = TestServer::start(&config(""), &zone).await;
    let addr = server.addr;

    let message = query("host.big.gto.example.com.", RecordType::A, None);
    let (reply, size) = udp(addr, &message).await;
    assert!(size <= 512);
    assert!(
        reply.metadata.truncation,
        "required glue does not fit in 512"
    );
    let over_tcp = tcp(addr, &message).await;
    assert!(!over_tcp.metadata.truncation);
    assert_eq!(over_tcp.authorities.len(), 12);
    assert_eq!(over_tcp.additionals.len(), 24, "all the glue over TCP");

    let message = query("host.wide.gto.example.com.", RecordType::A, None);
    let (reply, size) = udp(addr, &message).await;
    assert!(size <= 512);
    assert!(
        !reply.metadata.truncation,
        "servers outside the cut are not required glue: {size} {reply:?}"
    );
    assert_eq!(reply.authorities.len(), 12, "the whole NS set");
    assert!(
        !reply.additionals.is_empty() && reply.additionals.len() < 24,
        "as many addresses as fit: {}",
        reply.additionals.len()
    );
    let over_tcp = tcp(addr, &message).await;
    assert_eq!(over_tcp.additionals.len(), 24);
}

/// RFC 7871 section 6: an ADDRESS longer (or shorter) than SOURCE PREFIX-LENGTH needs
/// gets FORMERR; the option is echoed with FAMILY, SOURCE PREFIX-LENGTH and ADDRESS as the
/// client sent them. A well-formed option is echoed exactly too.
#[tokio::test]
async fn ecs_is_echoed_byte_for_byte() {
    let server = TestServer::start(&config(""), ZONE).await;
    let ecs_query = |data: &[u8]| {
        let mut message = query("vpn.gto.example.com.", RecordType::A, None);
        message.edns = Some(Edns::new());
        let mut bytes = message.to_vec().unwrap();
        // Replace the empty OPT RDATA with one ECS option as given.
        let opt_len_at = bytes.len() - 2;
        let option_len = (data.len() as u16).to_be_bytes();
        bytes.truncate(opt_len_at);
        bytes.extend_from_slice(&((data.len() + 4) as u16).to_be_bytes());
        bytes.extend_from_slice(&[0, 8, option_len[0], option_len[1]]);
        bytes.extend_from_slice(data);
        bytes
    };
    let echoed = |reply: &[u8]| -> Vec<u8> {
        let message = Message::from_vec(reply).unwrap();
        match message
            .edns
            .and_then(|e| e.option(EdnsCode::Subnet).cloned())
        {
            Some(option) => Vec::<u8>::try_from(&option).unwrap(),
            None => Vec::new(),
        }
    };
    // 192.0.2.0/24 with a fourth (zero) octet; and 2001:db8::/32 with 16 octets.
    let long_v4 = [0, 1, 24, 0, 192, 0, 2, 0];
    let mut long_v6 = vec![0, 2, 32, 0, 0x20, 0x01, 0x0d, 0xb8];
    long_v6.extend_from_slice(&[0; 12]);
    for data in [&long_v4[..], &long_v6[..]] {
        let reply = udp_raw(server.addr, &ecs_query(data)).await.unwrap();
        let message = Message::from_vec(&reply).unwrap();
        assert_eq!(message.metadata.response_code, ResponseCode::FormErr);
        let option = message
            .edns
            .as_ref()
            .and_then(|e| e.option(EdnsCode::Subnet).cloned());
        let Some(EdnsOption::Subnet(_) | EdnsOption::Unknown(8, _)) = option else {
            panic!("no ECS echo in {message:?}");
        };
        // The echo on the wire, as sent (the scope is 0 in both).
        let wire = &reply[reply.len() - data.len()..];
        assert_eq!(wire, data, "echo copied byte for byte");
    }
    // Well-formed: answered, echoed with the same family, source and address.
    let good = [0, 1, 24, 0, 198, 51, 100];
    let reply = udp_raw(server.addr, &ecs_query(&good)).await.unwrap();
    let message = Message::from_vec(&reply).unwrap();
    assert_eq!(message.metadata.response_code, ResponseCode::NoError);
    let echo = echoed(&reply);
    assert_eq!(&echo[..3], &good[..3]);
    assert_eq!(&echo[4..], &good[4..]);
}

/// GSLB names at or below a delegation, or that are wildcards, are config errors.
#[tokio::test]
async fn gslb_names_below_a_cut_are_refused() {
    for (name, expected) in [
        ("vpn.sub.gto.example.com.", "at or below the delegation"),
        ("sub.gto.example.com.", "at or below the delegation"),
        ("*.any.gto.example.com.", "cannot be a wildcard"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{PREAMBLE}\n[[service]]\nname = \"{name}\"\npool = \"p\"\n[[pool]]\nname = \"p\"\n\
             [[pool.member]]\nname = \"a\"\naddresses = [\"192.0.2.1\"]\n"
        );
        std::fs::write(dir.path().join("gto.toml"), &text).unwrap();
        std::fs::write(dir.path().join("gto.example.com.zone"), zone()).unwrap();
        let errors = gto::ConfigSource::File(dir.path().join("gto.toml"))
            .load()
            .unwrap_err();
        let text = errors.to_string();
        assert!(text.contains(expected), "{name}: {text}");
        assert!(text.contains("gto.toml:"), "located: {text}");
    }
}

/// When we serve both sides of a delegation, the child zone answers below the cut and DS
/// at the child's apex comes from the parent (RFC 4035 section 3.1.4.1).
#[tokio::test]
async fn a_child_zone_we_also_serve_answers_below_its_cut() {
    let parent = format!("{ZONE}lab IN NS ns1\n");
    let child = "$ORIGIN lab.gto.example.com.\n$TTL 300\n@ SOA ns1.gto.example.com. h 7 3600 600 86400 30\n@ NS ns1.gto.example.com.\nhost A 192.0.2.123\n";
    let config = format!(
        "{}\n[[zone]]\norigin = \"lab.gto.example.com.\"\nfile = \"lab.zone\"\n",
        config("")
    );
    let server = TestServer::start_with_files(&config, &parent, &[("lab.zone", child)]).await;
    let reply = ask(server.addr, "host.lab.gto.example.com.", RecordType::A).await;
    assert!(reply.metadata.authoritative);
    assert_eq!(
        texts(&reply.answers),
        vec!["host.lab.gto.example.com. A 192.0.2.123"]
    );
    // DS at the child's apex: the parent's NODATA (the parent's SOA, serial 2026112501).
    let reply = ask(server.addr, "lab.gto.example.com.", RecordType::DS).await;
    assert_nodata(&reply, "DS at the child apex");
    assert_eq!(
        reply.authorities[0].name.to_lowercase().to_ascii(),
        "gto.example.com."
    );
    // Any other type at the child apex: the child's.
    let reply = ask(server.addr, "lab.gto.example.com.", RecordType::SOA).await;
    assert!(reply.metadata.authoritative);
    assert_eq!(
        reply.answers[0].name.to_lowercase().to_ascii(),
        "lab.gto.example.com."
    );
}
