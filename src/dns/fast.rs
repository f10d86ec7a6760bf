//! The UDP fast path: answers the common queries straight from bytes, with no `Message`,
//! no lock and no heap allocation once its buffers are warm.
//!
//! It handles a standard QUERY with one question of class IN for a name that exists in
//! the [`FastIndex`] (a GSLB name, or a static name without a CNAME), optionally with one
//! OPT record (version 0, any options; ECS is read). Everything else — unknown names
//! (NXDOMAIN), names outside our zones, ANY, zone transfers, other opcodes, malformed or
//! unusual packets, answers that would not fit — returns `None` and goes to the general
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
//! Response rate limiting ([`crate::routing::rrl`]) applies here as on the general path: a dropped
//! answer is returned as length 0 (send nothing), a slipped one is rewritten in place to
//! the general path's truncated form.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::RecordType;

use super::{QTYPE_LABELS, qtype_index};
use crate::routing::rrl::{ResponseClass, Verdict};
use crate::routing::wire::{Entry, FastIndex, Tail, encode_tail};
use crate::routing::{Client, Scratch, Snapshot};

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
    /// Answers sent, by response code ([`RCODE_LABELS`]) and query type bucket
    /// ([`QTYPE_LABELS`]); the worker folds them into the metrics.
    pub answered: [[u64; QTYPE_BUCKETS]; 2],
    /// Responses rate limiting dropped (0) and slipped (1); the worker folds them too.
    pub rate_limited: [u64; 2],
}

/// Response codes the fast path gives.
pub const RCODE_LABELS: [&str; 2] = ["NOERROR", "NXDOMAIN"];
/// Number of counter buckets: one per query-type label.
pub const QTYPE_BUCKETS: usize = QTYPE_LABELS.len();

fn qtype_bucket(qtype: u16) -> usize {
    qtype_index(Some(RecordType::from(qtype)))
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
    ecs: Option<Ecs<'q>>,
}

/// Reads the OPT record at `at`, which must end the packet. None: not for the fast path.
fn parse_opt(query: &[u8], at: usize) -> Option<Opt<'_>> {
    if *query.get(at)? != 0 || u16_at(query, at + 1)? != 41 {
        return None;
    }
    let payload = u16_at(query, at + 3)?;
    let (ext_rcode, version, flags) = (
        *query.get(at + 5)?,
        *query.get(at + 6)?,
        u16_at(query, at + 7)?,
    );
    if ext_rcode != 0 || version != 0 {
        return None;
    }
    let length = usize::from(u16_at(query, at + 9)?);
    let mut pos = at + 11;
    if pos + length != query.len() {
        return None;
    }
    let mut opt = Opt {
        payload,
        dnssec_ok: flags & 0x8000 != 0,
        ecs: None,
    };
    while pos < query.len() {
        let code = u16_at(query, pos)?;
        let len = usize::from(u16_at(query, pos + 2)?);
        let data = query.get(pos + 4..pos + 4 + len)?;
        if code == 3 {
            return None; // NSID: the general path adds our identity
        }
        if code == 8 {
            if opt.ecs.is_some() {
                return None;
            }
            opt.ecs = Some(parse_ecs(data)?);
        }
        pos += 4 + len;
    }
    Some(opt)
}

/// Checks an ECS option like the general path does (RFC 7871); None sends the query there.
fn parse_ecs(data: &[u8]) -> Option<Ecs<'_>> {
    let family = u16_at(data, 0)?;
    let source = *data.get(2)?;
    let bits = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    let bytes = usize::from(source).div_ceil(8);
    if source > bits || data.len() != 4 + bytes {
        return None;
    }
    let address = &data[4..];
    if let Some(last) = address.last() {
        let used = source % 8;
        if used != 0 && last & (0xffu8 >> used) != 0 {
            return None;
        }
    }
    let ip = if family == 1 {
        let mut octets = [0u8; 4];
        octets[..bytes].copy_from_slice(address);
        IpAddr::V4(Ipv4Addr::from(octets))
    } else {
        let mut octets = [0u8; 16];
        octets[..bytes].copy_from_slice(address);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    Some(Ecs {
        data,
        address: (source > 0).then_some(ip),
    })
}

/// Answers `query` from `source` into `out` when the fast path can; returns the length
/// (0: rate limiting dropped the answer, send nothing). None: hand the query to the
/// general path.
pub fn respond(
    snapshot: &Snapshot,
    index: &FastIndex,
    query: &[u8],
    source: IpAddr,
    scratch: &mut FastScratch,
    out: &mut Vec<u8>,
) -> Option<usize> {
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
    let question_end = pos + 4;
    // OPT (41), meta types, zone transfers and ANY (128..=255) go to the general path.
    if qtype == 41 || qtype >= 128 {
        return None;
    }
    let opt = if additionals == 1 {
        Some(parse_opt(query, question_end)?)
    } else if question_end == query.len() {
        None
    } else {
        return None;
    };
    let Some(entry) = index.names.get(scratch.key.as_slice()) else {
        return nxdomain(
            snapshot,
            query,
            source,
            qtype,
            question_end,
            opt.as_ref(),
            scratch,
            out,
        );
    };

    // The client's limit: 512 without EDNS, else its size (at least 512) capped by ours.
    let limit = opt.as_ref().map_or(512, |o| {
        usize::from(o.payload.max(512).min(snapshot.udp_payload))
    });
    let mut scope = 0u8;
    let mut answered_from = None;
    out.clear();
    out.extend_from_slice(&query[..2]);
    out.push(0x84 | (query[2] & 0x01)); // QR, opcode 0, AA, RD copied
    out.push(query[3] & 0x10); // CD copied; RA, AD clear; NOERROR
    out.extend_from_slice(&[0, 1]);
    let counts_at = out.len();
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&query[12..question_end]);
    let (answers, authorities, tail_additionals) = match entry {
        Entry::General => return None,
        Entry::Static { types, nodata } => {
            let tail = types
                .iter()
                .find(|(t, _)| *t == qtype)
                .map_or(nodata, |(_, tail)| tail);
            out.extend_from_slice(&tail.bytes);
            (tail.answers, tail.authorities, tail.additionals)
        }
        Entry::Gslb { service, nodata } => {
            let v6 = match RecordType::from(qtype) {
                RecordType::A => Some(false),
                RecordType::AAAA => Some(true),
                _ => None,
            };
            let node = snapshot.service_node(*service);
            match (v6, node) {
                (Some(v6), Some(node)) => {
                    let client = Client {
                        source,
                        subnet: opt.as_ref().and_then(|o| o.ecs).and_then(|e| e.address),
                    };
                    let chosen = node.choose_into(
                        &snapshot.geo,
                        &snapshot.regions,
                        Some(client),
                        &mut scratch.choice,
                    );
                    node.answer_into(
                        &scratch.choice.order,
                        chosen.available,
                        v6,
                        &mut scratch.picks,
                    );
                    if scratch.picks.is_empty() {
                        out.extend_from_slice(&nodata.bytes);
                        (nodata.answers, nodata.authorities, nodata.additionals)
                    } else {
                        scope = chosen.scope;
                        answered_from = Some(node);
                        for (n, &(endpoint, record)) in scratch.picks.iter().enumerate() {
                            let wire = node.members.get(endpoint)?.wire(v6).get(record)?;
                            out.extend_from_slice(if n == 0 { &wire.first } else { &wire.later });
                        }
                        (scratch.picks.len() as u16, 0, 0)
                    }
                }
                (None, Some(_)) => {
                    out.extend_from_slice(&nodata.bytes);
                    (nodata.answers, nodata.authorities, nodata.additionals)
                }
                (_, None) => return None,
            }
        }
    };
    let mut additionals = tail_additionals;
    if let Some(opt) = &opt {
        additionals += 1;
        write_opt(out, snapshot.udp_payload, opt, scope);
    }
    if out.len() > limit {
        return None; // the general path truncates
    }
    out[counts_at..counts_at + 2].copy_from_slice(&answers.to_be_bytes());
    out[counts_at + 2..counts_at + 4].copy_from_slice(&authorities.to_be_bytes());
    out[counts_at + 4..counts_at + 6].copy_from_slice(&additionals.to_be_bytes());
    // Count what was answered: per query type here, per endpoint on the endpoint.
    scratch.answered[0][qtype_bucket(qtype)] += 1;
    let class = if answers > 0 {
        ResponseClass::Answer
    } else {
        ResponseClass::NoData
    };
    match rate_limit(
        snapshot,
        source,
        class,
        qtype,
        opt.as_ref(),
        scope,
        scratch,
        out,
    ) {
        Verdict::Send => {}
        Verdict::Drop => return Some(0),
        Verdict::Slip => return Some(out.len()),
    }
    if let Some(node) = answered_from {
        let mut last = None;
        for &(endpoint, _) in &scratch.picks {
            // Records of one endpoint are adjacent: count each endpoint once per answer.
            if last != Some(endpoint)
                && let Some(e) = node.members.get(endpoint)
            {
                e.answered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                e.counter.increment(1);
            }
            last = Some(endpoint);
        }
    }
    Some(out.len())
}

/// Applies response rate limiting to the answer in `out`. A slip rewrites it as the
/// general path's truncated answer: header with TC and no records, the question, our OPT.
#[allow(clippy::too_many_arguments)]
fn rate_limit(
    snapshot: &Snapshot,
    source: IpAddr,
    class: ResponseClass,
    qtype: u16,
    opt: Option<&Opt<'_>>,
    scope: u8,
    scratch: &mut FastScratch,
    out: &mut Vec<u8>,
) -> Verdict {
    let Some(rrl) = &snapshot.rrl else {
        return Verdict::Send;
    };
    let verdict = rrl.check(source, class, &scratch.key, qtype);
    match verdict {
        Verdict::Send => {}
        Verdict::Drop => scratch.rate_limited[0] += 1,
        Verdict::Slip => {
            scratch.rate_limited[1] += 1;
            // Question: from the header to its end (name, type, class).
            let question_end = 12 + scratch.key.len() + 4;
            out.truncate(question_end);
            out[2] |= 0x02;
            out[6..12].copy_from_slice(&[0, 0, 0, 0, 0, u8::from(opt.is_some())]);
            if let Some(opt) = opt {
                write_opt(out, snapshot.udp_payload, opt, scope);
            }
        }
    }
    verdict
}

/// Appends our OPT record: our payload size, DO copied, the ECS option echoed with `scope`
/// (0 when the subnet was /0 and so not used).
fn write_opt(out: &mut Vec<u8>, payload: u16, opt: &Opt<'_>, scope: u8) {
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&payload.max(512).to_be_bytes());
    out.extend_from_slice(&[0, 0, if opt.dnssec_ok { 0x80 } else { 0 }, 0]);
    match opt.ecs {
        Some(ecs) => {
            out.extend_from_slice(&((ecs.data.len() + 4) as u16).to_be_bytes());
            out.extend_from_slice(&[0, 8]);
            out.extend_from_slice(&(ecs.data.len() as u16).to_be_bytes());
            out.extend_from_slice(&ecs.data[..3]);
            out.push(if ecs.address.is_some() { scope } else { 0 });
            out.extend_from_slice(&ecs.data[4..]);
        }
        None => out.extend_from_slice(&[0, 0]),
    }
}

/// NXDOMAIN for a name under one of our zones that the index does not know; None for a
/// name outside them (REFUSED comes from the general path).
#[allow(clippy::too_many_arguments)]
fn nxdomain(
    snapshot: &Snapshot,
    query: &[u8],
    source: IpAddr,
    qtype: u16,
    question_end: usize,
    opt: Option<&Opt<'_>>,
    scratch: &mut FastScratch,
    out: &mut Vec<u8>,
) -> Option<usize> {
    let index = snapshot.fast.as_ref();
    let key = scratch.key.as_slice();
    let zone = index.zones.iter().position(|(origin, _)| {
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
    let identity = std::ptr::from_ref(index) as usize;
    if scratch.nxdomain_for != identity {
        scratch.nxdomain.clear();
        scratch.nxdomain_for = identity;
    }
    let question = &query[12..question_end];
    let tail = match scratch.nxdomain.get(&(zone, question.len())) {
        Some(tail) => tail,
        None => {
            let soa = &index.zones.get(zone)?.1;
            let tail = encode_tail(question, &[], &[soa], &[])?;
            scratch
                .nxdomain
                .entry((zone, question.len()))
                .or_insert(tail)
        }
    };
    let limit = opt.map_or(512, |o| {
        usize::from(o.payload.max(512).min(snapshot.udp_payload))
    });
    out.clear();
    out.extend_from_slice(&query[..2]);
    out.push(0x84 | (query[2] & 0x01)); // QR, opcode 0, AA, RD copied
    out.push((query[3] & 0x10) | 3); // CD copied; NXDOMAIN
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&tail.answers.to_be_bytes());
    out.extend_from_slice(&tail.authorities.to_be_bytes());
    out.extend_from_slice(&(tail.additionals + u16::from(opt.is_some())).to_be_bytes());
    out.extend_from_slice(question);
    out.extend_from_slice(&tail.bytes);
    if let Some(opt) = opt {
        write_opt(out, snapshot.udp_payload, opt, 0);
    }
    if out.len() > limit {
        return None;
    }
    scratch.answered[1][qtype_bucket(qtype)] += 1;
    match rate_limit(
        snapshot,
        source,
        ResponseClass::NxDomain,
        qtype,
        opt,
        0,
        scratch,
        out,
    ) {
        Verdict::Drop => Some(0),
        Verdict::Send | Verdict::Slip => Some(out.len()),
    }
}
