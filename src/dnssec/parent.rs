//! Whether the parent zone serves the DS of a zone's new entry point: gto asks every
//! server of the parent itself (as Knot's `submission` does) before it lets a rolled KSK
//! or CSK go, so that nobody has to remember to say so.
//!
//! The servers are the ones configured (`dnssec.parent = ["ADDR[:PORT]", ...]`) or found
//! through the system's resolver: the closest enclosing zone cut above the zone (the first
//! ancestor with NS records), then each name server's addresses. Each server is asked for
//! the zone's DS without recursion, over UDP and again over TCP when the answer is
//! truncated; only an authoritative NOERROR answer counts. The DS is seen when every
//! server's DS RRset holds a DS for every key asked about.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::dnssec::PublicKey;
use hickory_proto::dnssec::rdata::{DNSKEY, DNSSECRData, DS};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one server has to answer one query.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Why a server of the parent (or the search for them) gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// The system's resolver could not be set up or did not find the parent's servers.
    #[error("finding the parent's servers: {0}")]
    Resolve(String),
    /// No answer within [`TIMEOUT`].
    #[error("no answer within {} s", TIMEOUT.as_secs())]
    Timeout,
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An answer that does not count (not authoritative, an error code, malformed).
    #[error("{0}")]
    Answer(String),
}

/// What one server of the parent said.
#[derive(Debug)]
pub struct ServerAnswer {
    /// The server asked.
    pub server: SocketAddr,
    /// Whether its DS RRset holds a DS for every key asked about.
    pub outcome: Result<bool, ParentError>,
}

/// What the parent's servers said.
#[derive(Debug, Default)]
pub struct Verdict {
    /// One answer per server.
    pub servers: Vec<ServerAnswer>,
}

impl Verdict {
    /// Every server (at least one) serves a DS for every key.
    pub fn seen(&self) -> bool {
        !self.servers.is_empty() && self.servers.iter().all(|s| matches!(s.outcome, Ok(true)))
    }

    /// One line per server, for the log and `gto dnssec status`.
    pub fn describe(&self) -> String {
        self.servers
            .iter()
            .map(|s| match &s.outcome {
                Ok(true) => format!("{}: serves the new DS", s.server),
                Ok(false) => format!("{}: does not serve the new DS yet", s.server),
                Err(error) => format!("{}: {error}", s.server),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Asks the parent's servers (`servers`, or when None the ones the system's resolver
/// finds) whether they serve a DS for each of `keys` of `zone`.
pub async fn check(
    zone: &Name,
    keys: &[DNSKEY],
    servers: Option<&[SocketAddr]>,
) -> Result<Verdict, ParentError> {
    let servers = match servers {
        Some(servers) => servers.to_vec(),
        None => resolve_servers(zone).await?,
    };
    let mut verdict = Verdict::default();
    for server in servers {
        let outcome = ask_ds(server, zone).await.map(|set| {
            keys.iter()
                .all(|key| set.iter().any(|ds| covers(ds, zone, key)))
        });
        verdict.servers.push(ServerAnswer { server, outcome });
    }
    Ok(verdict)
}

/// Whether `ds` is the DS of `key` at `zone`.
pub fn covers(ds: &DS, zone: &Name, key: &DNSKEY) -> bool {
    key.calculate_key_tag().is_ok_and(|tag| tag == ds.key_tag())
        && ds.algorithm() == key.public_key().algorithm()
        && ds.covers(zone, key).unwrap_or(false)
}

/// The addresses of the parent zone's name servers, through the system's resolver.
async fn resolve_servers(zone: &Name) -> Result<Vec<SocketAddr>, ParentError> {
    use hickory_resolver::TokioResolver;
    let resolve = |e: &dyn std::fmt::Display| ParentError::Resolve(e.to_string());
    let resolver = TokioResolver::builder_tokio()
        .map_err(|e| resolve(&e))?
        .build()
        .map_err(|e| resolve(&e))?;
    let mut ancestor = zone.base_name();
    let hosts: Vec<Name> = loop {
        match resolver.lookup(ancestor.clone(), RecordType::NS).await {
            Ok(found) => {
                let hosts: Vec<Name> = found
                    .answers()
                    .iter()
                    .filter(|r| r.name == ancestor)
                    .filter_map(|r| match &r.data {
                        RData::NS(ns) => Some(ns.0.clone()),
                        _ => None,
                    })
                    .collect();
                if !hosts.is_empty() {
                    break hosts;
                }
            }
            // No NS here (not a zone cut): the parent is further up.
            Err(error) if error.is_no_records_found() => {}
            Err(error) => return Err(resolve(&format!("NS {ancestor}: {error}"))),
        }
        if ancestor.is_root() {
            return Err(resolve(&"no zone cut above the zone"));
        }
        ancestor = ancestor.base_name();
    };
    let mut servers = Vec::new();
    for host in hosts {
        match resolver.lookup_ip(host.clone()).await {
            Ok(found) => servers.extend(found.iter().map(|ip| SocketAddr::new(ip, 53))),
            Err(error) => {
                tracing::debug!(%host, %error, "a name server of the parent has no address")
            }
        }
    }
    if servers.is_empty() {
        return Err(resolve(&format!(
            "no address for any name server of {ancestor}"
        )));
    }
    servers.sort();
    servers.dedup();
    Ok(servers)
}

/// The DS RRset of `zone` at `server`, asked without recursion.
pub async fn ask_ds(server: SocketAddr, zone: &Name) -> Result<Vec<DS>, ParentError> {
    let id: u16 = rand::random();
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(zone.clone(), RecordType::DS));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    message.edns = Some(edns);
    let query = message
        .to_vec()
        .map_err(|e| ParentError::Answer(e.to_string()))?;
    let reply = tokio::time::timeout(TIMEOUT, exchange(server, &query))
        .await
        .map_err(|_| ParentError::Timeout)??;
    let reply = Message::from_vec(&reply)
        .map_err(|e| ParentError::Answer(format!("a malformed answer: {e}")))?;
    if reply.metadata.id != id {
        return Err(ParentError::Answer("an answer to another query".into()));
    }
    if reply.metadata.response_code != ResponseCode::NoError {
        return Err(ParentError::Answer(format!(
            "answered {}",
            reply.metadata.response_code
        )));
    }
    if !reply.metadata.authoritative {
        return Err(ParentError::Answer(
            "not authoritative for the parent zone".into(),
        ));
    }
    Ok(reply
        .answers
        .iter()
        .filter(|r| r.name == *zone)
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::DS(ds)) => Some(ds.clone()),
            _ => None,
        })
        .collect())
}

/// One query over UDP, again over TCP when the answer is truncated.
async fn exchange(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>, ParentError> {
    let local: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| ParentError::Answer("no local address".into()))?;
    let socket = tokio::net::UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; 65_535];
    loop {
        let len = socket.recv(&mut buffer).await?;
        let reply = &buffer[..len];
        // Not ours (another id): wait for ours.
        if reply.len() < 12 || reply[..2] != query[..2] {
            continue;
        }
        // TC: the whole answer over TCP.
        if reply[2] & 0x02 == 0 {
            return Ok(reply.to_vec());
        }
        break;
    }
    let mut stream = tokio::net::TcpStream::connect(server).await?;
    let len =
        u16::try_from(query.len()).map_err(|_| ParentError::Answer("query too long".into()))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await?;
    Ok(reply)
}
