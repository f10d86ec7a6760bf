//! The general query path: a hickory-server [`RequestHandler`] that answers from the
//! current routing [`Snapshot`].
//!
//! Per query: one snapshot load, header and EDNS checks, one [`Snapshot::resolve`], and the
//! answer handed to hickory for encoding. Protocol rules applied here:
//!
//! - AA on every answer from our zones (NOERROR, NODATA, NXDOMAIN) except a referral to a
//!   delegation with no CNAME of ours before it; RD copied; RA clear; the question echoed
//!   as the client wrote it (hickory keeps its bytes), and so is the owner of a wildcard
//!   answer.
//! - Names outside our zones, classes other than IN, and zone transfers: REFUSED.
//!   Opcodes other than QUERY: NOTIMP. Not exactly one question: FORMERR.
//! - EDNS(0): our OPT (payload size, DO copied) only when the query had one; a version
//!   above 0 gets BADVERS. ECS is checked and echoed with a scope.
//! - UDP answers larger than the client's payload size (512 without EDNS) first lose the
//!   additional records they can go without (RFC 2181 section 9; a referral's glue below
//!   the cut is not one of them, RFC 9471); if still too large they are sent empty with TC
//!   set, so the client retries over TCP.
//! - ECS with an ADDRESS of the wrong length or bits beyond the prefix: FORMERR, the
//!   option echoed as it came (RFC 7871 section 6).
//! - DNSSEC, for a query with DO in a signed zone ([`crate::routing::decorate`]): RRSIGs
//!   after each RRset, the signed SOA and NSEC of negative answers (compact denial, RFC
//!   9824: a name that does not exist is NOERROR unless the query set CO), DS or its
//!   absence proven in referrals. Queries without DO get exactly the unsigned answers.
//! - UDP answers pass [response rate limiting](crate::routing::rrl): dropped, or sent empty with TC
//!   (slipped), when one client prefix asks for more than its rate.
//!
//! [`Snapshot::resolve`]: crate::routing::Snapshot::resolve

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hickory_proto::op::{Edns, Header, HeaderCounts, LowerQuery, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption, NSIDPayload};
use hickory_proto::rr::{DNSClass, LowerName, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::time::Instant;
use tracing::debug;

use super::ecs;
use crate::metrics::{
    DNS_BAD_QUERIES_TOTAL, DNS_QUERIES_TOTAL, DNS_QUERY_SECONDS, DNS_RATE_LIMITED_TOTAL,
    DNS_TRUNCATED_TOTAL,
};
use crate::routing::rrl::{ResponseClass, Verdict, name_key};
use crate::routing::{Client, Outcome, Resolution, RoutingHandle, Snapshot, rcode_name};

/// Size of a DNS header on the wire.
const HEADER_LEN: usize = 12;
/// Size of an OPT record without options: root name, type, class, TTL, RDLENGTH.
const OPT_LEN: usize = 11;

/// Answers queries from the routing table.
#[derive(Clone, Debug)]
pub struct Handler {
    routing: RoutingHandle,
}

impl Handler {
    /// A handler reading `routing`.
    pub fn new(routing: RoutingHandle) -> Self {
        Self { routing }
    }

    /// The routing table it reads (the TCP fast path reads it too).
    pub(super) fn routing(&self) -> &RoutingHandle {
        &self.routing
    }
}

/// What the handler decided before encoding.
struct Reply<'s> {
    metadata: Metadata,
    resolution: Resolution<'s>,
    edns: Option<Edns>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        // Owned, because the answer is sent across an `.await` (STYLE rule 4).
        self.respond(request, None, response).await
    }
}

impl Handler {
    /// Answers `request`; `raw_ecs` is its ECS option's data as sent, when known, so that
    /// the option is checked and echoed exactly as the client wrote it.
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        raw_ecs: Option<&[u8]>,
        mut response: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let snapshot: Arc<Snapshot> = self.routing.load_full();
        let protocol = request.protocol();
        let mut reply = answer(&snapshot, request, raw_ecs);

        let qtype = request.queries.queries().first().map(|q| q.query_type());
        metrics::counter!(
            DNS_QUERIES_TOTAL,
            "transport" => transport_label(protocol),
            "qtype" => qtype_label(qtype),
            "rcode" => rcode_name(reply.metadata.response_code),
        )
        .increment(1);

        // The client's size (512 without EDNS, RFC 6891 6.2.5), capped by ours.
        let limit = request
            .edns
            .as_ref()
            .map_or(512, |e| e.max_payload().max(512))
            .min(snapshot.udp_payload);
        let truncate = if protocol == Protocol::Udp {
            match rate_limit(&snapshot, request, &reply) {
                Verdict::Send => {
                    let fits = fit(&mut reply, request, usize::from(limit));
                    if !fits {
                        metrics::counter!(DNS_TRUNCATED_TOTAL).increment(1);
                    }
                    !fits
                }
                Verdict::Slip => true,
                Verdict::Drop => {
                    return ResponseInfo::from(Header {
                        metadata: reply.metadata,
                        counts: HeaderCounts::default(),
                    });
                }
            }
        } else {
            // Over TCP an answer is whole or not at all (65,535 octets): what still does
            // not fit is SERVFAIL, never a partial RRset (zone loading refuses sets that
            // big; this is the backstop).
            if !fit(&mut reply, request, usize::from(u16::MAX)) {
                bad("too_big");
                reply.metadata.response_code = ResponseCode::ServFail;
                reply.metadata.authoritative = false;
                reply.resolution.answers.clear();
                reply.resolution.authorities.clear();
                reply.resolution.additionals.clear();
                reply.resolution.gslb = None;
            }
            false
        };
        if truncate {
            reply.metadata.truncation = true;
            reply.resolution.answers.clear();
            reply.resolution.authorities.clear();
            reply.resolution.additionals.clear();
        }

        if !reply.metadata.truncation {
            count_answered(&reply.resolution);
        }

        let Reply {
            metadata,
            resolution,
            edns,
        } = reply;
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let message = builder.build(
            metadata,
            resolution.answers.iter().map(AsRef::as_ref),
            records_of(&resolution.authorities),
            std::iter::empty(),
            resolution.additionals.iter(),
        );
        let sent = response.send_response(message).await;
        metrics::histogram!(DNS_QUERY_SECONDS, "transport" => transport_label(protocol))
            .record(started.elapsed().as_secs_f64());
        match sent {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, "could not send a response");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// Whether the reply fits in `limit` octets once the additionals it can go without are
/// left out (RFC 2181 section 9); when it does not, TC over UDP (RFC 9471).
fn fit(reply: &mut Reply<'_>, request: &Request, limit: usize) -> bool {
    let mut fit = fits(reply, request, limit);
    while !fit && reply.resolution.additionals.len() > reply.resolution.required_additionals {
        reply.resolution.additionals.pop();
        fit = fits(reply, request, limit);
    }
    fit
}

/// Counts a GSLB answer for each endpoint in it, once per answer.
fn count_answered(resolution: &Resolution<'_>) {
    let Some((node, _, from)) = resolution.gslb.as_ref() else {
        return;
    };
    let mut last = None;
    for &index in from {
        // Records of one endpoint are adjacent: count each endpoint once per answer.
        if last != Some(index) {
            if let Some(endpoint) = node.members.get(index) {
                endpoint.answered.fetch_add(1, Ordering::Relaxed);
                endpoint.counter.increment(1);
            }
            last = Some(index);
        }
    }
}

/// The CH TXT records (`id.server`, `hostname.bind` with an identity; `version.bind`,
/// `version.server` unless turned off) a CHAOS query asks for, when it names one.
fn chaos_answer<'s>(snapshot: &'s Snapshot, query: &LowerQuery) -> Option<Vec<&'s Record>> {
    if query.query_class() != DNSClass::CH || snapshot.chaos.is_empty() {
        return None;
    }
    let name = query.name();
    let found: Vec<&Record> = snapshot
        .chaos
        .iter()
        .filter(|r| LowerName::from(&r.name) == *name)
        .collect();
    (!found.is_empty()).then_some(found)
}

/// A question no zone answers: another class (REFUSED), a zone transfer (REFUSED), or a
/// meta-type (RFC 6895 section 3.1: FORMERR); with the reason counted.
fn refused_question(query: &LowerQuery) -> Option<(ResponseCode, &'static str)> {
    let qtype = query.query_type();
    if query.query_class() != DNSClass::IN {
        return Some((ResponseCode::Refused, "class"));
    }
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return Some((ResponseCode::Refused, "transfer"));
    }
    if qtype == RecordType::OPT || (128..=254).contains(&u16::from(qtype)) {
        return Some((ResponseCode::FormErr, "meta_type"));
    }
    None
}

/// NSID (RFC 5001): our identity, to a client that asks.
fn add_nsid(identity: &[u8], client: Option<&Edns>, ours: &mut Edns) {
    if client.is_some_and(|e| e.options().get(EdnsCode::NSID).is_some())
        && let Ok(payload) = NSIDPayload::new(identity.to_vec())
    {
        ours.options_mut().insert(EdnsOption::NSID(payload));
    }
}

/// Wildcard answers are owned by the question's name as the client wrote it.
fn owned_as_asked(resolution: &mut Resolution<'_>, query: &LowerQuery) {
    if !resolution.asked_synthesized {
        return;
    }
    for answer in &mut resolution.answers {
        if let Cow::Owned(record) = answer
            && LowerName::from(&record.name) == *query.name()
        {
            record.name = query.original().name().clone();
        }
    }
}

/// RFC 9824: a denied name is NOERROR, unless the client understands NXDOMAIN with
/// compact denial (CO), which is echoed.
fn compact_denial(client: Option<&Edns>, metadata: &mut Metadata, ours: Option<&mut Edns>) {
    let co = client.is_some_and(|e| e.flags().z & crate::routing::CO_FLAG != 0);
    if co {
        if let Some(ours) = ours {
            ours.flags_mut().z |= crate::routing::CO_FLAG;
        }
    } else {
        metadata.response_code = ResponseCode::NoError;
    }
}

/// Decides the answer to one request. Pure apart from counters.
fn answer<'s>(snapshot: &'s Snapshot, request: &Request, raw_ecs: Option<&[u8]>) -> Reply<'s> {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    let client_edns = request.edns.as_ref();
    let mut edns = client_edns.map(|theirs| {
        let mut ours = Edns::new();
        ours.set_max_payload(snapshot.udp_payload);
        ours.set_version(0);
        ours.set_dnssec_ok(theirs.flags().dnssec_ok);
        ours
    });
    let reply = |code: ResponseCode, metadata: Metadata, edns: Option<Edns>| {
        let mut metadata = metadata;
        metadata.response_code = code;
        Reply {
            metadata,
            resolution: Resolution::default(),
            edns,
        }
    };

    if let (Some(identity), Some(ours)) = (&snapshot.identity, edns.as_mut()) {
        add_nsid(identity, client_edns, ours);
    }
    if request.metadata.op_code != OpCode::Query {
        bad("opcode");
        return reply(ResponseCode::NotImp, metadata, edns);
    }
    if client_edns.is_some_and(|e| e.version() > 0) {
        bad("edns_version");
        return reply(ResponseCode::BADVERS, metadata, edns);
    }
    let [query] = request.queries.queries() else {
        bad("question_count");
        return reply(ResponseCode::FormErr, metadata, edns);
    };
    let subnet = raw_ecs
        .map_or(Ok(()), ecs::check_raw)
        .and_then(|()| ecs::client_subnet(client_edns));
    let subnet: Option<ClientSubnet> = match subnet {
        Ok(subnet) => subnet,
        Err(error) => {
            // RFC 7871 section 6: FORMERR, with the option echoed as it came.
            bad(error.as_str());
            if let (Some(raw), Some(edns)) = (raw_ecs, edns.as_mut()) {
                edns.options_mut().insert(ecs::echo_raw(raw));
            }
            return reply(ResponseCode::FormErr, metadata, edns);
        }
    };
    if let (Some(subnet), Some(edns)) = (&subnet, edns.as_mut()) {
        // Scope 0 unless a GSLB answer below depends on the client.
        edns.options_mut().insert(ecs::echo(subnet, 0));
    }

    let qtype = query.query_type();
    if let Some(found) = chaos_answer(snapshot, query) {
        metadata.authoritative = true;
        let mut answered = reply(ResponseCode::NoError, metadata, edns);
        if matches!(qtype, RecordType::TXT | RecordType::ANY) {
            answered.resolution.answers = found.into_iter().map(Cow::Borrowed).collect();
        }
        return answered;
    }
    if let Some((code, reason)) = refused_question(query) {
        bad(reason);
        return reply(code, metadata, edns);
    }

    let client = Client {
        source: request.src().ip(),
        subnet: subnet
            .as_ref()
            .filter(|s| s.source_prefix() > 0)
            .map(|s| s.addr()),
    };
    let mut resolution = snapshot.resolve(query.name(), qtype, Some(client));
    owned_as_asked(&mut resolution, query);
    // DNSSEC records for a client that asked for them (DO), in signed zones only.
    let dnssec_ok = client_edns.is_some_and(|e| e.flags().dnssec_ok);
    let compact_nxdomain =
        dnssec_ok && crate::routing::decorate(snapshot, query.name(), qtype, &mut resolution);
    if let (Some(subnet), Some(edns)) = (&subnet, edns.as_mut())
        && resolution.scope > 0
        && subnet.source_prefix() > 0
    {
        edns.options_mut().remove(EdnsCode::Subnet);
        edns.options_mut()
            .insert(ecs::echo(subnet, resolution.scope));
    }
    metadata.response_code = resolution.outcome.rcode();
    if compact_nxdomain {
        compact_denial(client_edns, &mut metadata, edns.as_mut());
    }
    metadata.authoritative = resolution.authoritative();
    Reply {
        metadata,
        resolution,
        edns,
    }
}

/// Response rate limiting for a UDP reply (see [`super::rrl`]); counts what it holds back.
fn rate_limit(snapshot: &Snapshot, request: &Request, reply: &Reply<'_>) -> Verdict {
    let Some(rrl) = &snapshot.rrl else {
        return Verdict::Send;
    };
    let query = request.queries.queries().first();
    let class = match reply.metadata.response_code {
        // A compact denial (NOERROR with DNSSEC) is limited as the NXDOMAIN it stands for,
        // so random names share one bucket.
        _ if reply.resolution.outcome == Outcome::NoSuchName => ResponseClass::NxDomain,
        ResponseCode::NoError if reply.resolution.answers.is_empty() => ResponseClass::NoData,
        ResponseCode::NoError => ResponseClass::Answer,
        ResponseCode::NXDomain => ResponseClass::NxDomain,
        _ => ResponseClass::Error,
    };
    let name = match (class, query) {
        // A referral is keyed by its delegation, so random names below it share a bucket.
        (ResponseClass::NoData, _) if reply.resolution.outcome == Outcome::Referral => reply
            .resolution
            .authorities
            .first()
            .map(|ns| name_key(&LowerName::from(&ns.name)))
            .unwrap_or_default(),
        // Answers synthesized from a wildcard are keyed by the wildcard, as BIND and Knot
        // do: random names under it share one bucket, as random NXDOMAINs do.
        (ResponseClass::Answer | ResponseClass::NoData, _)
            if reply.resolution.wildcard.is_some() =>
        {
            reply
                .resolution
                .wildcard
                .as_ref()
                .map(|wildcard| name_key(wildcard))
                .unwrap_or_default()
        }
        (ResponseClass::Answer | ResponseClass::NoData, Some(query)) => name_key(query.name()),
        _ => Vec::new(),
    };
    let qtype = query.map_or(0, |q| u16::from(q.query_type()));
    let verdict = rrl.check(request.src().ip(), class, &name, qtype);
    match verdict {
        Verdict::Send => {}
        Verdict::Drop => {
            metrics::counter!(DNS_RATE_LIMITED_TOTAL, "action" => "dropped").increment(1);
        }
        Verdict::Slip => {
            metrics::counter!(DNS_RATE_LIMITED_TOTAL, "action" => "slipped").increment(1);
        }
    }
    verdict
}

/// True when the reply fits the client's UDP payload size. Uses a cheap upper bound first
/// and encodes only when the bound is over the limit.
fn fits(reply: &Reply<'_>, request: &Request, limit: usize) -> bool {
    let records = || {
        reply
            .resolution
            .answers
            .iter()
            .map(AsRef::as_ref)
            .chain(reply.resolution.authorities.iter().map(AsRef::as_ref))
            .chain(reply.resolution.additionals.iter())
    };
    let opt = reply.edns.as_ref().map_or(0, |e| {
        OPT_LEN
            + e.options()
                .as_ref()
                .iter()
                .map(|(_, o)| 4 + usize::from(o.len()))
                .sum::<usize>()
    });
    let fixed = HEADER_LEN + request.queries.as_bytes().len() + opt;
    let bound: usize = records().map(upper_len).sum();
    if fixed + bound <= limit {
        return true;
    }
    // Name compression may still make it fit: encode as the answer will be, to know.
    let mut buffer = Vec::with_capacity(limit);
    let mut encoder = BinEncoder::new(&mut buffer);
    encoder.set_max_size(u16::try_from(limit).unwrap_or(u16::MAX));
    let message = MessageResponseBuilder::new(&request.queries, reply.edns.as_ref()).build(
        reply.metadata,
        records_of(&reply.resolution.answers),
        records_of(&reply.resolution.authorities),
        std::iter::empty(),
        reply.resolution.additionals.iter(),
    );
    message
        .destructive_emit(&mut encoder)
        .is_ok_and(|info| !info.truncation)
}

/// The records of an answer section, borrowed.
fn records_of<'a>(answers: &'a [Cow<'_, Record>]) -> impl Iterator<Item = &'a Record> + Send {
    answers.iter().map(AsRef::as_ref)
}

/// Uncompressed wire length of a record: an upper bound of what it takes in a message.
fn upper_len(record: &Record) -> usize {
    let mut buffer = Vec::with_capacity(64);
    let mut encoder = BinEncoder::new(&mut buffer);
    match record.emit(&mut encoder) {
        Ok(()) => buffer.len(),
        Err(_) => usize::MAX / 4,
    }
}

fn bad(reason: &'static str) {
    metrics::counter!(DNS_BAD_QUERIES_TOTAL, "reason" => reason).increment(1);
}

fn transport_label(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Udp => "udp",
        Protocol::Tcp => "tcp",
        _ => "other",
    }
}

/// Query types get a label of their own only when they are common; the rest share one.
fn qtype_label(qtype: Option<RecordType>) -> &'static str {
    super::QTYPE_LABELS[super::qtype_index(qtype)]
}

/// Collects the encoded answer instead of sending it, encoding exactly as hickory-server's
/// `ResponseHandle` does (UDP: the response's EDNS payload size, or 512).
#[derive(Clone, Default)]
struct Collect {
    protocol: Option<Protocol>,
    bytes: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Collect {
    async fn send_response<'a>(
        &mut self,
        response: hickory_server::zone_handler::MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let id = response.metadata().id;
        let max = match self.protocol {
            Some(Protocol::Udp) => response.edns().map_or(512, |e| e.max_payload()),
            _ => u16::MAX,
        };
        let mut buffer = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut buffer);
        encoder.set_max_size(max);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(error) => {
                // As hickory-server does: a bare SERVFAIL.
                debug!(%error, "could not encode a response");
                buffer.clear();
                let mut encoder = BinEncoder::new(&mut buffer);
                let mut metadata =
                    Metadata::new(id, hickory_proto::op::MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                header.emit(&mut encoder)?;
                ResponseInfo::from(header)
            }
        };
        if let Ok(mut slot) = self.bytes.lock() {
            *slot = Some(buffer);
        }
        Ok(info)
    }
}

/// Answers raw request bytes on the general path exactly as hickory-server's listener
/// would: no answer to packets without a readable header or to responses (QR=1); FORMERR
/// (no question, no EDNS) when the rest does not parse; otherwise the [`Handler`]'s answer.
/// `server`: our address the query came to, for the dnstap log (when on).
pub async fn answer_bytes(
    handler: &Handler,
    bytes: &[u8],
    src: std::net::SocketAddr,
    server: Option<std::net::SocketAddr>,
    protocol: Protocol,
) -> Option<Vec<u8>> {
    let received = std::time::SystemTime::now();
    let answer = answer_bytes_untapped(handler, bytes, src, protocol).await;
    // Shorter than a header is not a DNS message (nor is what a socket shut for reading
    // returns at shutdown): nothing to log.
    if bytes.len() >= 12
        && let Some(tap) = handler.routing.load().dnstap.as_deref()
    {
        let transport = match protocol {
            Protocol::Tcp => crate::dnstap::Transport::Tcp,
            _ => crate::dnstap::Transport::Udp,
        };
        tap.exchange(transport, (src, server), bytes, answer.as_deref(), received);
    }
    answer
}

async fn answer_bytes_untapped(
    handler: &Handler,
    bytes: &[u8],
    src: std::net::SocketAddr,
    protocol: Protocol,
) -> Option<Vec<u8>> {
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
    use hickory_server::zone_handler::Queries;

    let mut decoder = BinDecoder::new(bytes);
    let header = Header::read(&mut decoder).ok()?;
    let collect = Collect {
        protocol: Some(protocol),
        bytes: Arc::default(),
    };
    match Request::from_bytes(bytes.to_vec(), src, protocol) {
        Ok(request) => {
            if request.metadata.message_type == hickory_proto::op::MessageType::Response {
                return None;
            }
            let raw_ecs = super::ecs::raw_option(bytes);
            handler.respond(&request, raw_ecs, collect.clone()).await;
        }
        Err(_) => {
            bad("malformed");
            let mut empty = BinDecoder::new(&[]);
            let queries = Queries::read(&mut empty, 0).ok()?;
            let response = MessageResponseBuilder::new(&queries, None)
                .error_msg(&header.metadata, ResponseCode::FormErr);
            let mut sender = collect.clone();
            sender.send_response(response).await.ok()?;
        }
    }
    collect.bytes.lock().ok()?.take()
}
