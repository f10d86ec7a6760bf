//! The fast path: answers the common queries straight from bytes, with no `Message`, no
//! lock and no heap allocation once its buffers are warm. The UDP workers ([`super::udp`])
//! answer datagrams with [`respond`], the TCP connections ([`super::tcp`]) their messages
//! with [`respond_tcp`].
//!
//! It handles a standard QUERY with one question of class IN for a name that exists in
//! the [`FastIndex`] (a GSLB name, or a static name without a CNAME and above every
//! delegation), or that does not exist in a zone without wildcards and delegations
//! (NXDOMAIN), optionally with one OPT record (version 0, any options; ECS is read).
//! Everything else — names outside our zones, referrals, wildcard synthesis, ANY, zone
//! transfers, other opcodes, malformed or unusual packets, ECS the general path refuses,
//! answers that would not fit — returns [`Reply::General`] and goes to the general
//! path ([`super::handler`]), which is the reference: for every query the fast path
//! answers, its bytes are exactly the general path's (checked by a differential test).
//!
//! The bytes after the question are prepared per config with hickory's own encoder: for
//! static names the whole answer/authority/additional tail of each type (and the NODATA
//! tail), for GSLB names each address record in its first-in-the-answer form and in its
//! compressed form (owner name as a pointer to the first answer). Per query only the
//! header, the question (copied, so the client's letter case stays), the chosen records
//! and the OPT record are written.
//!
//! In a signed zone a query with DO gets the signed form of the same answers: static
//! names' signed tails (prepared like the others), a GSLB answer followed by the prepared
//! signature of its set (owner compressed to the first answer), a GSLB name's signed NODATA
//! for the families it has now, and the compact denial of a name that does not exist once
//! the general path has signed it into the zone's cache (a client that sets CO goes to the
//! general path for NXDOMAIN).
//!
//! Response rate limiting ([`crate::routing::rrl`]) applies to UDP answers here as on the
//! general path: a dropped answer is returned as [`Reply::Drop`] (send nothing), a slipped
//! one is rewritten in place to the general path's truncated form.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::QTYPE_LABELS;
use crate::metrics::{DNS_QUERIES_TOTAL, DNS_RATE_LIMITED_TOTAL};
use crate::routing::rrl::{ResponseClass, Verdict};
use crate::routing::wire::{Entry, FastIndex, FastZone, Tail, encode_tail};
use crate::routing::{Client, GslbNode, Scratch, Snapshot};

/// Per-worker buffers and counters, reused across queries.
#[derive(Debug, Default)]
pub struct FastScratch {
    key: Vec<u8>,
    /// NXDOMAIN tails by (zone, question length), for the index they were made for (its
    /// address; a new config brings a new index and an empty cache). At most one per
    /// zone and question length, so it stays small.
    nxdomain: HashMap<(usize, usize), Tail>,
    nxdomain_for: usize,
    choice: Scratch,
    picks: Vec<(usize, usize)>,
    /// GSLB choices made for recent clients, and the endpoints' answer counts not yet
    /// folded into their counters.
    choices: Choices,
    /// The slot of `choices` the current answer's picks are kept in, if any.
    chosen_slot: Option<usize>,
    /// Whole answers made for recent queries, sent again to the same query.
    kept: KeptAnswers,
    addresses: Vec<IpAddr>,
    sig_key: Vec<u8>,
    /// Answers sent, by response code ([`RCODE_LABELS`]) and query type bucket
    /// ([`QTYPE_LABELS`]); the worker folds them into the metrics.
    pub answered: [[u64; QTYPE_BUCKETS]; 2],
    /// Responses rate limiting dropped (0) and slipped (1); the worker folds them too.
    pub rate_limited: [u64; 2],
}

/// Slots in a worker's cache of GSLB choices (a power of two).
const CHOICE_SLOTS: usize = 512;
/// Most records an answer may have for its choice to be kept.
const CHOICE_PICKS: usize = 8;

/// A worker's cache of GSLB choices: for a (service, family, client address), the records
/// [`GslbNode::choose_into`] and [`GslbNode::answer_into`] picked and the ECS scope, valid
/// for one snapshot (a choice is a function of the snapshot and the address, see
/// [`GslbNode::choice_repeats`]). Direct-mapped: a colliding client replaces the slot.
/// Resolvers ask again and again, so most answers skip geography, ranking and the
/// affinity draw; and the endpoints' answer counts are kept per slot and folded into
/// their counters once per batch ([`fold_endpoint_counts`]) rather than by two atomic
/// adds per endpoint per answer.
#[derive(Debug)]
struct Choices {
    /// The [`Snapshot::serial`] the slots are for (0: none yet).
    serial: u64,
    slots: Box<[ChoiceSlot]>,
    /// Slots with answers not yet counted.
    counted: Vec<usize>,
    /// The generation of the last slot filled.
    filled: u64,
}

#[derive(Debug, Clone)]
struct ChoiceSlot {
    used: bool,
    service: usize,
    v6: bool,
    address: IpAddr,
    via_ecs: bool,
    picks: [(u16, u16); CHOICE_PICKS],
    len: u8,
    scope: u8,
    /// Answers sent from this choice since the last fold.
    answered: u64,
    /// The signatures of the chosen set, once a signed answer was made from it: repeated
    /// signed answers skip sorting the addresses, the set's key and its lookup.
    signature: Option<std::sync::Arc<crate::dnssec::Signed>>,
    /// Which filling of the slot this is (unique while the snapshot stands): a kept
    /// answer counts its endpoints here only while the slot still holds its choice.
    generation: u64,
}

impl Default for ChoiceSlot {
    fn default() -> Self {
        Self {
            used: false,
            service: 0,
            v6: false,
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            via_ecs: false,
            picks: [(0, 0); CHOICE_PICKS],
            len: 0,
            scope: 0,
            answered: 0,
            signature: None,
            generation: 0,
        }
    }
}

impl Default for Choices {
    fn default() -> Self {
        Self {
            serial: 0,
            slots: vec![ChoiceSlot::default(); CHOICE_SLOTS].into_boxed_slice(),
            counted: Vec::with_capacity(crate::dns::udp::BATCH),
            filled: 0,
        }
    }
}

impl Choices {
    /// Counts one answer made from the choice kept at `at` (its endpoints' counters are
    /// added to when the batch is folded).
    fn count_answer(&mut self, at: usize) {
        let Some(slot) = self.slots.get_mut(at) else {
            return;
        };
        if slot.answered == 0 {
            self.counted.push(at);
        }
        slot.answered += 1;
    }

    /// The slot for a key (a multiplicative hash of its parts).
    fn slot_of(service: usize, v6: bool, address: IpAddr) -> usize {
        let bits = match address {
            IpAddr::V4(ip) => u64::from(u32::from(ip)),
            IpAddr::V6(ip) => {
                let bits = u128::from(ip);
                (bits as u64) ^ ((bits >> 64) as u64) ^ (1 << 63)
            }
        };
        let key = bits ^ ((service as u64) << 33) ^ u64::from(v6) << 32;
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - CHOICE_SLOTS.trailing_zeros())) as usize
    }

    /// Empties the cache when the snapshot changed (its counts are folded every batch).
    fn for_snapshot(&mut self, serial: u64) {
        if self.serial != serial {
            self.slots.fill(ChoiceSlot::default());
            self.counted.clear();
            self.serial = serial;
        }
    }
}

/// Slots in a worker's cache of whole answers (a power of two).
const KEPT_SLOTS: usize = 256;
/// Longest query (after its ID) whose answer is kept.
const KEPT_QUERY: usize = 128;
/// Longest answer kept.
const KEPT_ANSWER: usize = 1232;

/// A worker's kept answers: the whole answer the fast path made for a query, by the
/// query's bytes after its ID, the client's address and the transport, valid for one
/// snapshot. An answer is a function of those and the snapshot (static names, NXDOMAIN,
/// and GSLB names whose choice repeats, see [`GslbNode::choice_repeats`]), so the same
/// query again is answered by copying it and writing the new ID: resolvers and the
/// clients behind them ask the same questions again and again. Counted, rate-limited and
/// its endpoints counted as when it was made. Direct-mapped, and an answer is kept when
/// its query is seen a second time in a row at its slot (then it replaces what the slot
/// held): a query asked once, such as a random name of a flood, costs a hash and leaves
/// the kept answers alone. Each slot's buffers are reused, so the memory is bounded by
/// the slot count, [`KEPT_QUERY`] and [`KEPT_ANSWER`].
#[derive(Debug, Default)]
struct KeptAnswers {
    /// The [`Snapshot::serial`] the slots are for (0: none yet).
    serial: u64,
    /// Empty until the first answer is kept.
    slots: Vec<KeptAnswer>,
    /// The slot and hash of the query being answered, when it may be kept and was not.
    missed: Option<(usize, u64)>,
}

#[derive(Debug, Clone)]
struct KeptAnswer {
    /// The hash of the last query not kept here: the same again is kept.
    seen: u64,
    used: bool,
    udp: bool,
    source: IpAddr,
    /// The query after its ID.
    query: Vec<u8>,
    /// The answer as sent, with the ID of the query it was made for.
    answer: Vec<u8>,
    /// The lower-cased name: rate limiting's key.
    key: Vec<u8>,
    qtype: u16,
    class: ResponseClass,
    /// Its counter's response code ([`RCODE_LABELS`]).
    rcode: usize,
    /// Where the question ends, and where our OPT begins (if any): a slip is made of them.
    question_end: usize,
    opt_at: Option<usize>,
    /// The kept choice its endpoints are counted in: the slot and its generation.
    choice: Option<(usize, u64)>,
}

impl Default for KeptAnswer {
    fn default() -> Self {
        Self {
            seen: 0,
            used: false,
            udp: false,
            source: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            query: Vec::new(),
            answer: Vec::new(),
            key: Vec::new(),
            qtype: 0,
            class: ResponseClass::Answer,
            rcode: 0,
            question_end: 0,
            opt_at: None,
            choice: None,
        }
    }
}

impl KeptAnswers {
    /// The slot for a query after its ID, from `source`, over UDP or not, and its hash.
    fn slot_of(asked: &[u8], source: IpAddr, udp: bool) -> (usize, u64) {
        use std::hash::BuildHasher;
        let hash = foldhash::fast::FixedState::with_seed(0).hash_one((asked, source, udp));
        ((hash >> (64 - KEPT_SLOTS.trailing_zeros())) as usize, hash)
    }

    /// Forgets every answer when the snapshot changed (the buffers stay).
    fn for_snapshot(&mut self, serial: u64) {
        if self.serial != serial {
            for slot in &mut self.slots {
                slot.used = false;
            }
            self.serial = serial;
        }
    }
}

/// Answers `query` from the kept answers when it is one of them: the answer copied with
/// the query's ID, counted, rate-limited and its endpoints counted as [`finish`] does.
/// None: not kept (or its choice is no longer kept), the caller makes the answer.
#[inline]
fn send_kept(
    udp: bool,
    snapshot: &Snapshot,
    query: &[u8],
    source: IpAddr,
    scratch: &mut FastScratch,
    out: &mut Vec<u8>,
) -> Option<Reply> {
    let kept = &mut scratch.kept;
    kept.missed = None;
    let asked = query.get(2..).filter(|a| a.len() <= KEPT_QUERY)?;
    kept.for_snapshot(snapshot.serial);
    let (at, hash) = KeptAnswers::slot_of(asked, source, udp);
    kept.missed = Some((at, hash));
    let entry = kept.slots.get(at)?;
    if !entry.used || entry.udp != udp || entry.source != source || entry.query != asked {
        return None;
    }
    let choices = &mut scratch.choices;
    if let Some((at, generation)) = entry.choice {
        let slot = choices.slots.get(at)?;
        if choices.serial != snapshot.serial || !slot.used || slot.generation != generation {
            return None;
        }
    }
    kept.missed = None;
    out.clear();
    out.extend_from_slice(&entry.answer);
    out.get_mut(..2)?.copy_from_slice(query.get(..2)?);
    scratch.answered[entry.rcode][qtype_bucket(entry.qtype)] += 1;
    if udp {
        let asked = (source, entry.class, entry.key.as_slice(), entry.qtype);
        let parts = (entry.question_end, entry.opt_at);
        if let Some(reply) = rate_limit(snapshot, asked, parts, &mut scratch.rate_limited, out) {
            return Some(reply);
        }
    }
    if let Some((at, _)) = entry.choice {
        choices.count_answer(at);
    }
    Some(Reply::Send(out.len()))
}

/// Keeps the answer just made in `out` (before rate limiting) for the same query again,
/// when it may be: its query seen at its slot before, not too long, and with its
/// endpoints counted in a kept choice.
fn keep(
    udp: bool,
    question: &Question<'_>,
    written: &Written<'_>,
    opt_at: usize,
    scratch: &mut FastScratch,
    out: &[u8],
) {
    let kept = &mut scratch.kept;
    // Set by `send_kept` for this query, for this snapshot.
    let Some((at, hash)) = kept.missed.take() else {
        return;
    };
    if kept.slots.is_empty() {
        kept.slots.resize(KEPT_SLOTS, KeptAnswer::default());
    }
    let (Some(asked), Some(entry)) = (question.query.get(2..), kept.slots.get_mut(at)) else {
        return;
    };
    if entry.seen != hash {
        entry.seen = hash; // seen once: kept if it comes again
        return;
    }
    if out.len() > KEPT_ANSWER {
        return;
    }
    let choice = match (written.node, scratch.chosen_slot) {
        (None, _) => None,
        (Some(_), Some(at)) => match scratch.choices.slots.get(at) {
            Some(slot) => Some((at, slot.generation)),
            None => return,
        },
        // Counted by the endpoints' counters each time: not kept.
        (Some(_), None) => return,
    };
    entry.used = true;
    entry.udp = udp;
    entry.source = question.source;
    entry.query.clear();
    entry.query.extend_from_slice(asked);
    entry.answer.clear();
    entry.answer.extend_from_slice(out);
    entry.key.clear();
    entry.key.extend_from_slice(&scratch.key);
    entry.qtype = question.qtype;
    entry.class = written.class;
    entry.rcode = usize::from(written.rcode == 3);
    entry.question_end = question.end;
    entry.opt_at = question.opt.is_some().then_some(opt_at);
    entry.choice = choice;
}

/// The query counters a caller of the fast path folds its [`FastScratch`]'s counts into,
/// looked up once.
#[derive(Debug)]
pub struct FastCounters {
    /// By response code ([`RCODE_LABELS`]) and query type ([`QTYPE_LABELS`]).
    answered: Vec<Vec<metrics::Counter>>,
    /// Rate limiting: dropped, slipped.
    rate_limited: [metrics::Counter; 2],
}

impl FastCounters {
    /// The counters of queries over `transport` ("udp" or "tcp").
    pub fn new(transport: &'static str) -> Self {
        FastCounters {
            answered: RCODE_LABELS
                .iter()
                .map(|rcode| {
                    QTYPE_LABELS
                        .iter()
                        .map(|qtype| {
                            metrics::counter!(DNS_QUERIES_TOTAL, "transport" => transport, "qtype" => *qtype, "rcode" => *rcode)
                        })
                        .collect()
                })
                .collect(),
            rate_limited: [
                metrics::counter!(DNS_RATE_LIMITED_TOTAL, "action" => "dropped"),
                metrics::counter!(DNS_RATE_LIMITED_TOTAL, "action" => "slipped"),
            ],
        }
    }

    /// Adds what `scratch` counted since the last fold: one atomic add per kind of answer
    /// seen, not one per answer.
    pub fn fold(&self, scratch: &mut FastScratch) {
        for (counter, count) in self.rate_limited.iter().zip(&mut scratch.rate_limited) {
            if *count > 0 {
                counter.increment(std::mem::take(count));
            }
        }
        for (counters, counts) in self.answered.iter().zip(scratch.answered.iter_mut()) {
            for (counter, count) in counters.iter().zip(counts.iter_mut()) {
                if *count > 0 {
                    counter.increment(std::mem::take(count));
                }
            }
        }
    }
}

/// Response codes the fast path gives.
pub const RCODE_LABELS: [&str; 2] = ["NOERROR", "NXDOMAIN"];
/// Number of counter buckets: one per query-type label.
pub const QTYPE_BUCKETS: usize = QTYPE_LABELS.len();

/// [`super::qtype_index`] of a wire query type, without making a `RecordType` of it.
fn qtype_bucket(qtype: u16) -> usize {
    match qtype {
        1 => 0,    // A
        28 => 1,   // AAAA
        255 => 2,  // ANY
        5 => 3,    // CNAME
        65 => 4,   // HTTPS
        15 => 5,   // MX
        2 => 6,    // NS
        12 => 7,   // PTR
        6 => 8,    // SOA
        33 => 9,   // SRV
        64 => 10,  // SVCB
        16 => 11,  // TXT
        252 => 12, // AXFR
        251 => 13, // IXFR
        _ => 14,   // other
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// The ECS option of a query, as the fast path needs it.
#[derive(Debug, Clone, Copy)]
struct Ecs<'q> {
    /// The option's data (family, source, scope, address bytes), echoed back.
    data: &'q [u8],
    /// The client address (zero-padded), or None for source prefix 0.
    address: Option<IpAddr>,
}

/// What the query's OPT record says.
#[derive(Debug, Default)]
struct Opt<'q> {
    payload: u16,
    dnssec_ok: bool,
    /// The CO flag (RFC 9824): NXDOMAIN wanted with compact denial.
    compact_ok: bool,
    ecs: Option<Ecs<'q>>,
}

/// Reads the OPT record at `at`, which must end the packet. None: not for the fast path.
#[inline(always)]
fn parse_opt(query: &[u8], at: usize) -> Option<Opt<'_>> {
    // Root owner, type 41, payload size, extended RCODE, version, flags, RDLENGTH.
    let head: &[u8; 11] = query.get(at..at + 11)?.try_into().ok()?;
    let [0, 0, 41, p0, p1, 0, 0, f0, f1, l0, l1] = *head else {
        return None; // another owner or type, an extended RCODE or a version above 0
    };
    let flags = u16::from_be_bytes([f0, f1]);
    let mut options = query.get(at + 11..)?;
    if options.len() != usize::from(u16::from_be_bytes([l0, l1])) {
        return None;
    }
    let mut opt = Opt {
        payload: u16::from_be_bytes([p0, p1]),
        dnssec_ok: flags & 0x8000 != 0,
        compact_ok: flags & crate::routing::CO_FLAG != 0,
        ecs: None,
    };
    while let [c0, c1, n0, n1, rest @ ..] = options {
        let len = usize::from(u16::from_be_bytes([*n0, *n1]));
        let data = rest.get(..len)?;
        match u16::from_be_bytes([*c0, *c1]) {
            3 => return None, // NSID: the general path adds our identity
            8 if opt.ecs.is_some() => return None,
            8 => opt.ecs = Some(parse_ecs(data)?),
            _ => {}
        }
        options = &rest[len..];
    }
    // A partial option header left over.
    options.is_empty().then_some(opt)
}

/// Checks an ECS option like the general path does (RFC 7871); None sends the query there.
fn parse_ecs(data: &[u8]) -> Option<Ecs<'_>> {
    let [0, family, source, _scope, address @ ..] = data else {
        return None;
    };
    let bits = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    let bytes = usize::from(*source).div_ceil(8);
    if *source > bits || address.len() != bytes {
        return None;
    }
    if let Some(last) = address.last() {
        let used = source % 8;
        if used != 0 && last & (0xffu8 >> used) != 0 {
            return None;
        }
    }
    let ip = if *family == 1 {
        let mut octets = [0u8; 4];
        octets.get_mut(..bytes)?.copy_from_slice(address);
        IpAddr::V4(Ipv4Addr::from(octets))
    } else {
        let mut octets = [0u8; 16];
        octets.get_mut(..bytes)?.copy_from_slice(address);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    Some(Ecs {
        data,
        address: (*source > 0).then_some(ip),
    })
}

/// What the fast path made of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The general path must answer it (anything unusual, or an answer that would not
    /// fit the client's size).
    General,
    /// Response rate limiting held the answer back: send nothing.
    Drop,
    /// `out` holds the answer (or its truncated slip), this many bytes long.
    Send(usize),
}

/// A query the fast path can read: header checked, question lower-cased into the scratch
/// key, OPT parsed.
struct Question<'q> {
    query: &'q [u8],
    source: IpAddr,
    qtype: u16,
    /// Where the question section ends.
    end: usize,
    opt: Option<Opt<'q>>,
}

impl Question<'_> {
    /// Starts the response in `out`: the query's ID, QR and AA, RD and CD copied, `rcode`,
    /// one question (copied, so the client's letter case stays). `finish` sets the counts.
    fn write_header(&self, out: &mut Vec<u8>, rcode: u8) {
        let query = self.query;
        out.clear();
        out.extend_from_slice(&query[..2]);
        out.push(0x84 | (query[2] & 0x01)); // QR, opcode 0, AA, RD copied
        out.push((query[3] & 0x10) | rcode); // CD copied; RA, AD clear
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&query[12..self.end]);
    }

    /// The client's limit: 512 without EDNS, else its size (at least 512) capped by ours.
    fn limit(&self, ours: u16) -> usize {
        self.opt
            .as_ref()
            .map_or(512, |o| usize::from(o.payload.max(512).min(ours)))
    }
}

/// What was written after the question, for the header counts and the counters.
struct Written<'s> {
    answers: u16,
    authorities: u16,
    additionals: u16,
    class: ResponseClass,
    /// The response code written (0 or 3), for the counters.
    rcode: u8,
    /// ECS scope the answer depends on.
    scope: u8,
    /// The GSLB node answered from, whose endpoints (`scratch.picks`) are counted.
    node: Option<&'s GslbNode>,
}

/// Answers `query`, a datagram from `source`, into `out` when the fast path can: parse,
/// decide and write, then count and rate-limit.
pub fn respond(
    snapshot: &Snapshot,
    index: &FastIndex,
    query: &[u8],
    source: IpAddr,
    scratch: &mut FastScratch,
    out: &mut Vec<u8>,
) -> Reply {
    respond_over(true, snapshot, index, query, source, scratch, out)
}

/// Answers `query`, a message read from a TCP connection with `source`, into `out` when
/// the fast path can. As the general path does over TCP: the answer is whole (up to
/// 65,535 octets, whatever size the client's OPT gives) and not rate-limited; never
/// [`Reply::Drop`].
pub fn respond_tcp(
    snapshot: &Snapshot,
    index: &FastIndex,
    query: &[u8],
    source: IpAddr,
    scratch: &mut FastScratch,
    out: &mut Vec<u8>,
) -> Reply {
    respond_over(false, snapshot, index, query, source, scratch, out)
}

#[inline(always)]
fn respond_over(
    udp: bool,
    snapshot: &Snapshot,
    index: &FastIndex,
    query: &[u8],
    source: IpAddr,
    scratch: &mut FastScratch,
    out: &mut Vec<u8>,
) -> Reply {
    if let Some(reply) = send_kept(udp, snapshot, query, source, scratch, out) {
        return reply;
    }
    let Some(question) = parse(query, source, scratch) else {
        return Reply::General;
    };
    let written = match index.names.get(scratch.key.as_slice()) {
        Some(entry) => write_answer(snapshot, entry, &question, scratch, out),
        None => write_nxdomain(index, &question, scratch, out),
    };
    // Nothing the fast path can answer.
    let Some(mut written) = written else {
        return Reply::General;
    };
    let opt_at = out.len();
    if let Some(opt) = &question.opt {
        written.additionals += 1;
        write_opt(out, snapshot.udp_payload, opt, written.scope);
    }
    let limit = if udp {
        question.limit(snapshot.udp_payload)
    } else {
        usize::from(u16::MAX)
    };
    if out.len() > limit {
        return Reply::General; // too big: the general path truncates
    }
    finish(udp, snapshot, &question, &written, opt_at, scratch, out)
}

/// Checks the header (a QUERY, one question, at most one OPT) and reads the question.
#[inline(always)]
fn parse<'q>(query: &'q [u8], source: IpAddr, scratch: &mut FastScratch) -> Option<Question<'q>> {
    // Header: a query (QR 0), opcode QUERY, not truncated, one question, one OPT at most.
    let flags = u16_at(query, 2)?;
    if flags & 0xfa00 != 0
        || u16_at(query, 4)? != 1
        || u16_at(query, 6)? != 0
        || u16_at(query, 8)? != 0
    {
        return None;
    }
    let additionals = u16_at(query, 10)?;
    if additionals > 1 {
        return None;
    }
    // Question: labels, lower-cased into the key.
    scratch.key.clear();
    let mut pos = 12;
    loop {
        let len = usize::from(*query.get(pos)?);
        if len == 0 {
            scratch.key.push(0);
            pos += 1;
            break;
        }
        if len > 63 || scratch.key.len() + len + 2 > 255 {
            return None;
        }
        scratch.key.push(len as u8);
        scratch.key.extend(
            query
                .get(pos + 1..pos + 1 + len)?
                .iter()
                .map(u8::to_ascii_lowercase),
        );
        pos += 1 + len;
    }
    let qtype = u16_at(query, pos)?;
    if u16_at(query, pos + 2)? != 1 {
        return None;
    }
    let end = pos + 4;
    // OPT (41), meta types, zone transfers and ANY (128..=255) go to the general path; so
    // do RRSIG (46) and NSEC (47), which a signed zone holds at every name without their
    // being sets of it: they are answered, not denied (`routing::decorate`).
    if qtype == 41 || qtype >= 128 || qtype == 46 || qtype == 47 {
        return None;
    }
    let opt = if additionals == 1 {
        Some(parse_opt(query, end)?)
    } else if end == query.len() {
        None
    } else {
        return None;
    };
    Some(Question {
        query,
        source,
        qtype,
        end,
        opt,
    })
}

/// For an A or AAAA question at a GSLB name: the endpoints' records for this client, in
/// `scratch.picks`; returns the family (AAAA: true) and the ECS scope, or None for another
/// type or when nothing can be answered.
#[inline]
fn pick(
    snapshot: &Snapshot,
    node: &GslbNode,
    question: &Question<'_>,
    scratch: &mut FastScratch,
) -> Option<(bool, u8)> {
    let v6 = match question.qtype {
        1 => Some(false), // A
        28 => Some(true), // AAAA
        _ => None,
    };
    scratch.chosen_slot = None;
    let v6 = v6?;
    let client = Client {
        source: question.source,
        subnet: question
            .opt
            .as_ref()
            .and_then(|o| o.ecs)
            .and_then(|e| e.address),
    };
    if !node.choice_repeats() {
        return choose(snapshot, node, client, v6, scratch);
    }
    let (address, via_ecs) = node.address_of(client);
    scratch.choices.for_snapshot(snapshot.serial);
    let at = Choices::slot_of(node.service, v6, address);
    let slot = scratch.choices.slots.get(at)?;
    if slot.used
        && slot.service == node.service
        && slot.v6 == v6
        && slot.address == address
        && slot.via_ecs == via_ecs
    {
        scratch.picks.clear();
        let picks = slot.picks.get(..usize::from(slot.len))?;
        scratch
            .picks
            .extend(picks.iter().map(|&(e, r)| (usize::from(e), usize::from(r))));
        scratch.chosen_slot = Some(at);
        return (!scratch.picks.is_empty()).then_some((v6, slot.scope));
    }
    let (v6, scope) = choose(snapshot, node, client, v6, scratch)?;
    // Kept when it fits a slot; a slot with uncounted answers is left alone.
    let mut kept = [(0u16, 0u16); CHOICE_PICKS];
    let fits = scratch.picks.len() <= CHOICE_PICKS
        && scratch
            .picks
            .iter()
            .zip(kept.iter_mut())
            .all(|(&(e, r), k)| match (u16::try_from(e), u16::try_from(r)) {
                (Ok(e), Ok(r)) => {
                    *k = (e, r);
                    true
                }
                _ => false,
            });
    let choices = &mut scratch.choices;
    if let Some(slot) = choices.slots.get_mut(at)
        && fits
        && slot.answered == 0
    {
        choices.filled += 1;
        *slot = ChoiceSlot {
            used: true,
            service: node.service,
            v6,
            address,
            via_ecs,
            picks: kept,
            len: scratch.picks.len() as u8,
            scope,
            answered: 0,
            signature: None,
            generation: choices.filled,
        };
        scratch.chosen_slot = Some(at);
    }
    Some((v6, scope))
}

/// Chooses the endpoints for `client` afresh, into `scratch.picks`.
fn choose(
    snapshot: &Snapshot,
    node: &GslbNode,
    client: Client,
    v6: bool,
    scratch: &mut FastScratch,
) -> Option<(bool, u8)> {
    let choice = node.choose_into(
        &snapshot.geo,
        &snapshot.regions,
        Some(client),
        &mut scratch.choice,
    );
    node.answer_into(&choice.order, choice.available, v6, &mut scratch.picks);
    (!scratch.picks.is_empty()).then_some((v6, choice.scope))
}

/// Writes the answer for a name the index knows: header, question, the prepared tail (or
/// the chosen GSLB records), our OPT. None: the general path answers.
fn write_answer<'s>(
    snapshot: &'s Snapshot,
    entry: &Entry,
    question: &Question<'_>,
    scratch: &mut FastScratch,
    out: &mut Vec<u8>,
) -> Option<Written<'s>> {
    question.write_header(out, 0);
    let mut scope = 0u8;
    let mut node_answered = None;
    let dnssec_ok = question.opt.as_ref().is_some_and(|o| o.dnssec_ok);
    let (answers, authorities, additionals) = match entry {
        Entry::General => return None,
        Entry::Static {
            types,
            nodata,
            signed,
        } => {
            let (types, nodata) = match signed {
                Some(signed) if dnssec_ok => (&signed.types, &signed.nodata),
                _ => (types, nodata),
            };
            let tail = types
                .iter()
                .find(|(t, _)| *t == question.qtype)
                .map_or(nodata, |(_, tail)| tail);
            out.extend_from_slice(&tail.bytes);
            (tail.answers, tail.authorities, tail.additionals)
        }
        Entry::Gslb {
            service,
            nodata,
            signed,
            signed_nodata,
        } => {
            let signed = *signed && dnssec_ok;
            let node = snapshot.service_node(*service)?;
            let picked = pick(snapshot, node, question, scratch);
            match picked {
                Some((v6, chosen_scope)) => {
                    scope = chosen_scope;
                    node_answered = Some(node);
                    for (n, &(endpoint, record)) in scratch.picks.iter().enumerate() {
                        let wire = node.members.get(endpoint)?.wire(v6).get(record)?;
                        out.extend_from_slice(if n == 0 { &wire.first } else { &wire.later });
                    }
                    let mut count = scratch.picks.len();
                    if signed {
                        // The set's signatures, owner compressed to the first answer: kept
                        // with the choice, else looked up (and then kept with it).
                        let slot = scratch.chosen_slot;
                        let kept = slot
                            .and_then(|at| scratch.choices.slots.get(at))
                            .and_then(|slot| slot.signature.as_deref());
                        if let Some(signatures) = kept {
                            out.extend_from_slice(&signatures.wire);
                            count += signatures.sigs.len();
                        } else {
                            let signatures = node.signatures_of(
                                &scratch.picks,
                                v6,
                                &mut scratch.addresses,
                                &mut scratch.sig_key,
                            )?;
                            out.extend_from_slice(&signatures.wire);
                            count += signatures.sigs.len();
                            if let Some(slot) =
                                slot.and_then(|at| scratch.choices.slots.get_mut(at))
                            {
                                slot.signature = Some(signatures.shared());
                            }
                        }
                    }
                    (count as u16, 0, 0)
                }
                // NODATA with DNSSEC: the proof for the families the name has now.
                None if signed => {
                    let now = (node.has_family(false), node.has_family(true));
                    let (_, tail) = signed_nodata.iter().find(|(f, _)| *f == now)?;
                    out.extend_from_slice(&tail.bytes);
                    (tail.answers, tail.authorities, tail.additionals)
                }
                None => {
                    out.extend_from_slice(&nodata.bytes);
                    (nodata.answers, nodata.authorities, nodata.additionals)
                }
            }
        }
    };
    Some(Written {
        answers,
        authorities,
        additionals,
        class: if answers > 0 {
            ResponseClass::Answer
        } else {
            ResponseClass::NoData
        },
        rcode: 0,
        scope,
        node: node_answered,
    })
}

/// NXDOMAIN for a name under one of our zones that the index does not know; None for a
/// name outside them (REFUSED comes from the general path) and for a zone with wildcards
/// or delegations (the general path synthesizes or refers).
fn write_nxdomain<'s>(
    index: &FastIndex,
    question: &Question<'_>,
    scratch: &mut FastScratch,
    out: &mut Vec<u8>,
) -> Option<Written<'s>> {
    let key = scratch.key.as_slice();
    let zone = index.zones.iter().position(|FastZone { origin, .. }| {
        // The origin must end the name at a label boundary.
        let mut pos = 0;
        loop {
            if key.get(pos..) == Some(&origin[..]) {
                return true;
            }
            match key.get(pos) {
                Some(&len) if len > 0 => pos += usize::from(len) + 1,
                _ => return false,
            }
        }
    })?;
    let fast_zone = index.zones.get(zone)?;
    if !fast_zone.plain {
        // A wildcard may synthesize the name, or a delegation refer it.
        return None;
    }
    if let (Some(signing), Some(opt)) = (&fast_zone.signing, &question.opt)
        && opt.dnssec_ok
    {
        return write_denial(signing, opt, question, scratch, out);
    }
    let identity = std::ptr::from_ref(index) as usize;
    if scratch.nxdomain_for != identity {
        scratch.nxdomain.clear();
        scratch.nxdomain_for = identity;
    }
    let query = question.query;
    let question_bytes = &query[12..question.end];
    let tail = match scratch.nxdomain.get(&(zone, question_bytes.len())) {
        Some(tail) => tail,
        None => {
            let soa = &index.zones.get(zone)?.soa;
            let tail = encode_tail(question_bytes, &[], &[soa], &[])?;
            scratch
                .nxdomain
                .entry((zone, question_bytes.len()))
                .or_insert(tail)
        }
    };
    question.write_header(out, 3);
    out.extend_from_slice(&tail.bytes);
    Some(Written {
        answers: tail.answers,
        authorities: tail.authorities,
        additionals: tail.additionals,
        class: ResponseClass::NxDomain,
        rcode: 3,
        scope: 0,
        node: None,
    })
}

/// Compact denial (RFC 9824) of a name that does not exist in a signed zone, for a query
/// with DO: NOERROR, the signed SOA and the NSEC at the name (NXNAME) with its signature,
/// when the zone's cache holds it; the first query for a name goes to the general path,
/// which signs it. A client that set CO gets NXDOMAIN from the general path.
fn write_denial<'s>(
    signing: &crate::routing::ZoneSigning,
    opt: &Opt<'_>,
    question: &Question<'_>,
    scratch: &FastScratch,
    out: &mut Vec<u8>,
) -> Option<Written<'s>> {
    if opt.compact_ok {
        return None;
    }
    use hickory_proto::serialize::binary::BinDecodable;
    let name = hickory_proto::rr::Name::from_bytes(&scratch.key).ok()?;
    // Signed before (by the general path, which signs within the zone's budget)?
    let denial = signing.cached_denial(&hickory_proto::rr::LowerName::from(name))?;
    if denial.wire.is_empty() {
        return None;
    }
    question.write_header(out, 0);
    out.extend_from_slice(&denial.wire);
    // The SOA and its signatures, the NSEC and one signature per zone-signing key (a
    // denial keeps only its wire form).
    let authorities = 2 + signing.negative_soa_sigs.len() + signing.zone_signers.len();
    Some(Written {
        answers: 0,
        authorities: u16::try_from(authorities).ok()?,
        additionals: 0,
        class: ResponseClass::NxDomain,
        rcode: 0,
        scope: 0,
        node: None,
    })
}

/// Sets the header counts, counts the answer, applies response rate limiting to a `udp`
/// answer (a slip rewrites `out` as the general path's truncated answer) and counts the
/// endpoints.
fn finish(
    udp: bool,
    snapshot: &Snapshot,
    question: &Question<'_>,
    written: &Written<'_>,
    opt_at: usize,
    scratch: &mut FastScratch,
    out: &mut Vec<u8>,
) -> Reply {
    out[6..8].copy_from_slice(&written.answers.to_be_bytes());
    out[8..10].copy_from_slice(&written.authorities.to_be_bytes());
    out[10..12].copy_from_slice(&written.additionals.to_be_bytes());
    let rcode = usize::from(written.rcode == 3);
    scratch.answered[rcode][qtype_bucket(question.qtype)] += 1;
    keep(udp, question, written, opt_at, scratch, out);
    if udp {
        let asked = (
            question.source,
            written.class,
            scratch.key.as_slice(),
            question.qtype,
        );
        let parts = (question.end, question.opt.is_some().then_some(opt_at));
        if let Some(reply) = rate_limit(snapshot, asked, parts, &mut scratch.rate_limited, out) {
            return reply;
        }
    }
    if let Some(node) = written.node {
        let choices = &mut scratch.choices;
        match scratch.chosen_slot {
            // Counted when the batch is folded.
            Some(at) if at < choices.slots.len() => choices.count_answer(at),
            _ => count_endpoints(node, scratch.picks.iter().map(|&(e, _)| e), 1),
        }
    }
    Reply::Send(out.len())
}

/// Rate limiting of a UDP answer about to leave, made or kept alike: None to send `out`
/// as it is; else the reply, counted: nothing, or `out` slipped ([`slip`]). `asked`: the
/// client, the kind of answer, the name's key and the type; `parts`: where the question
/// ends and our OPT starts in `out`.
fn rate_limit(
    snapshot: &Snapshot,
    (source, class, key, qtype): (IpAddr, ResponseClass, &[u8], u16),
    (question_end, opt_at): (usize, Option<usize>),
    rate_limited: &mut [u64; 2],
    out: &mut Vec<u8>,
) -> Option<Reply> {
    match snapshot.rrl.as_ref()?.check(source, class, key, qtype) {
        Verdict::Send => None,
        Verdict::Drop => {
            rate_limited[0] += 1;
            Some(Reply::Drop)
        }
        Verdict::Slip => {
            rate_limited[1] += 1;
            slip(out, question_end, opt_at);
            Some(Reply::Send(out.len()))
        }
    }
}

/// Rewrites the answer in `out` as the general path's truncated form of it (a rate
/// limiter's slip): TC, no records, the question, and our OPT record, which starts at
/// `opt_at` when the answer has one, moved up behind the question.
fn slip(out: &mut Vec<u8>, question_end: usize, opt_at: Option<usize>) {
    let opt_len = opt_at.map_or(0, |at| {
        let len = out.len().saturating_sub(at);
        out.copy_within(at.., question_end);
        len
    });
    out.truncate(question_end + opt_len);
    out[2] |= 0x02;
    out[6..12].copy_from_slice(&[0, 0, 0, 0, 0, u8::from(opt_at.is_some())]);
}

/// Adds `answers` to the answer counters of the endpoints of one answer's picks.
fn count_endpoints(node: &GslbNode, picks: impl Iterator<Item = usize>, answers: u64) {
    let mut last = None;
    for endpoint in picks {
        // Records of one endpoint are adjacent: count each endpoint once per answer.
        if last != Some(endpoint)
            && let Some(e) = node.members.get(endpoint)
        {
            e.answered
                .fetch_add(answers, std::sync::atomic::Ordering::Relaxed);
            e.counter.increment(answers);
        }
        last = Some(endpoint);
    }
}

/// Folds the answers counted in the worker's kept choices into the endpoints' counters;
/// the worker calls it after each batch, with the batch's snapshot, before the answers
/// leave (so a scrape after an answer counts it).
pub fn fold_endpoint_counts(snapshot: &Snapshot, scratch: &mut FastScratch) {
    let choices = &mut scratch.choices;
    if choices.serial != snapshot.serial {
        // Counts are folded every batch; a new snapshot finds none.
        choices.counted.clear();
        return;
    }
    for at in choices.counted.drain(..) {
        let Some(slot) = choices.slots.get_mut(at) else {
            continue;
        };
        let answers = std::mem::take(&mut slot.answered);
        if let Some(node) = snapshot.service_node(slot.service) {
            let picks = slot.picks.get(..usize::from(slot.len)).unwrap_or_default();
            count_endpoints(node, picks.iter().map(|&(e, _)| usize::from(e)), answers);
        }
    }
}

/// Appends our OPT record: our payload size, DO copied, the ECS option echoed with `scope`
/// (0 when the subnet was /0 and so not used).
fn write_opt(out: &mut Vec<u8>, payload: u16, opt: &Opt<'_>, scope: u8) {
    let [p0, p1] = payload.max(512).to_be_bytes();
    let flags = if opt.dnssec_ok { 0x80 } else { 0 };
    match opt.ecs {
        Some(ecs) => {
            let [d0, d1] = (ecs.data.len() as u16).to_be_bytes();
            let [r0, r1] = ((ecs.data.len() + 4) as u16).to_be_bytes();
            let scope = if ecs.address.is_some() { scope } else { 0 };
            // Family, source prefix, then our scope, then the address as it came.
            let [f0, f1, source, ..] = *ecs.data else {
                return;
            };
            out.extend_from_slice(&[
                0, 0, 41, p0, p1, 0, 0, flags, 0, r0, r1, 0, 8, d0, d1, f0, f1, source, scope,
            ]);
            out.extend_from_slice(ecs.data.get(4..).unwrap_or_default());
        }
        None => out.extend_from_slice(&[0, 0, 41, p0, p1, 0, 0, flags, 0, 0, 0]),
    }
}

#[cfg(test)]
mod tests {
    use super::super::qtype_index;
    use super::*;
    use hickory_proto::rr::RecordType;

    #[test]
    fn query_type_buckets_are_the_general_paths() {
        for qtype in 0..=u16::MAX {
            assert_eq!(
                qtype_bucket(qtype),
                qtype_index(Some(RecordType::from(qtype))),
                "{qtype}"
            );
        }
    }
}
