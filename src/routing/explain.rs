//! Explain: the answer a client would get for a name, and why, read from the same
//! [`Snapshot::resolve`] the query path uses, so the two cannot disagree.

use std::net::IpAddr;
use std::str::FromStr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, Name, RecordType};
use serde::Serialize;

use super::table::{Outcome, Snapshot};
use crate::config::Policy;

/// The answer and the reasoning behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The name asked for (lower-cased, fully qualified).
    pub name: String,
    /// The query type.
    #[serde(rename = "type")]
    pub qtype: String,
    /// The client the answer is for (an ECS subnet address or a resolver address).
    pub client: IpAddr,
    /// The response code a query would get.
    pub rcode: String,
    /// The answer section, as record data, in order.
    pub answers: Vec<String>,
    /// The ECS scope prefix the answer would carry: how much of the client address the
    /// answer depends on (0: the same for everyone).
    pub ecs_scope: u8,
    /// Set for GSLB names: how the endpoints were ranked and chosen.
    pub gslb: Option<GslbExplanation>,
    /// The snapshot generation this was read from.
    pub generation: u64,
}

/// How a GSLB name's answer came about.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GslbExplanation {
    /// The GSLB name.
    pub service: String,
    /// The pool answered from (the fallback pool when it stood in).
    pub pool: String,
    /// The ranking policy.
    pub policy: &'static str,
    /// "normal", or which `when_all_down` rule applied.
    pub selection: &'static str,
    /// Where the client was placed (no geo data is configured yet: always none).
    pub location: Option<String>,
    /// Addresses per answer.
    pub answers_limit: usize,
    /// Answer TTL.
    pub ttl: u32,
    /// Every endpoint, best first.
    pub candidates: Vec<CandidateExplanation>,
}

/// One endpoint in an explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CandidateExplanation {
    /// 1 is best.
    pub rank: usize,
    /// Pool name.
    pub pool: String,
    /// Member name.
    pub member: String,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// "up" or "down".
    pub health: &'static str,
    /// Drained by an operator.
    pub drained: bool,
    /// It is in this answer.
    pub answered: bool,
    /// Why it is or is not in the answer.
    pub reason: String,
}

/// Why an explain question cannot be asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QuestionError(String);

/// Parses the parts of an explain question: a name, an optional type (default A) and the
/// client's address.
pub fn parse_question(
    name: &str,
    qtype: Option<&str>,
    client: &str,
) -> Result<(LowerName, RecordType, IpAddr), QuestionError> {
    let mut parsed =
        Name::from_ascii(name).map_err(|e| QuestionError(format!("name {name:?}: {e}")))?;
    parsed.set_fqdn(true);
    let qtype = match qtype {
        None => RecordType::A,
        Some(text) => RecordType::from_str(&text.to_ascii_uppercase())
            .map_err(|_| QuestionError(format!("type {text:?} is not a record type")))?,
    };
    let client: IpAddr = client
        .parse()
        .map_err(|_| QuestionError(format!("client {client:?} is not an IP address")))?;
    Ok((LowerName::from(parsed), qtype, client))
}

/// The conventional name of a response code (dig's spelling), for labels and JSON.
pub fn rcode_name(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "other",
    }
}

/// The response code a lookup outcome gets.
pub fn rcode_of(outcome: Outcome) -> ResponseCode {
    match outcome {
        Outcome::Found => ResponseCode::NoError,
        Outcome::NoSuchName => ResponseCode::NXDomain,
        Outcome::NotOurs => ResponseCode::Refused,
    }
}

/// Explains the answer to `name`/`qtype` for `client`.
pub fn explain(
    snapshot: &Snapshot,
    name: &LowerName,
    qtype: RecordType,
    client: IpAddr,
) -> Explanation {
    let resolution = snapshot.resolve(name, qtype);
    let answers = resolution
        .answers
        .iter()
        .map(|r| r.data.to_string())
        .collect();
    let gslb = resolution.service.and_then(|index| {
        let info = snapshot.services.get(index)?;
        let node = snapshot.gslb_node(&info.name)?;
        let answered: Vec<usize> = resolution
            .gslb
            .map(|(n, v6)| n.family(v6).1.to_vec())
            .unwrap_or_default();
        let candidates = node
            .candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let is_answered = answered.contains(&i);
                let reason = if is_answered && (!c.up || c.drained) {
                    "answered although not available: no endpoint can serve (fail open)".to_string()
                } else if is_answered {
                    "answered".to_string()
                } else if c.drained {
                    "drained by an operator".to_string()
                } else if !c.up {
                    "down (health checks)".to_string()
                } else if c.eligible && resolution.gslb.is_some() {
                    format!("up, ranked below the first {} address(es)", info.answers)
                } else if c.eligible {
                    "up, but has no address of the asked type".to_string()
                } else {
                    "not answered: no endpoint can serve and when_all_down is empty".to_string()
                };
                CandidateExplanation {
                    rank: i + 1,
                    pool: c.key.pool.clone(),
                    member: c.key.member.clone(),
                    addresses: c.addresses.clone(),
                    health: if c.up { "up" } else { "down" },
                    drained: c.drained,
                    answered: is_answered,
                    reason,
                }
            })
            .collect();
        Some(GslbExplanation {
            service: info.name.to_string(),
            pool: node
                .candidates
                .first()
                .map_or_else(|| info.pool.clone(), |c| c.key.pool.clone()),
            policy: match info.policy {
                Policy::Failover => "failover",
            },
            selection: node.mode.as_str(),
            location: None,
            answers_limit: info.answers,
            ttl: info.ttl,
            candidates,
        })
    });
    Explanation {
        name: name.to_string(),
        qtype: qtype.to_string(),
        client,
        rcode: rcode_name(rcode_of(resolution.outcome)).to_string(),
        answers,
        // The failover policy does not look at the client.
        ecs_scope: 0,
        gslb,
        generation: snapshot.generation,
    }
}
