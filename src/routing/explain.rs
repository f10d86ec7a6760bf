//! Explain: the answer a client would get for a name, and why, read from the same
//! [`Snapshot::resolve`] the query path uses, so the two cannot disagree.

use std::net::IpAddr;
use std::str::FromStr;

use hickory_proto::rr::{LowerName, Name, RecordType};
use serde::Serialize;

use super::{Client, Snapshot, rcode_name};
use crate::geo::Placement;
use crate::policy::affinity;
use crate::policy::geo::distance_km;

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
    /// What breaks the policy's ties ("config-order" or "latency").
    pub tie: &'static str,
    /// With `policy = "latency"` or `tie = "latency"`: where the round trips that ranked
    /// this client were measured (a vantage region, every vantage, or the real-user
    /// measurements of the client's prefix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    /// "normal", or which `when_all_down` rule applied.
    pub selection: &'static str,
    /// Where the client was placed, when the policy looks at location.
    pub location: Option<LocationView>,
    /// The `[[override]]` whose endpoints the client got first (its index and networks),
    /// when one applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_applied: Option<serde_json::Value>,
    /// Addresses per answer.
    pub answers_limit: usize,
    /// Answer TTL.
    pub ttl: u32,
    /// How many of the best endpoints share clients by affinity.
    pub affinity_candidates: usize,
    /// Every endpoint, best first for this client.
    pub candidates: Vec<CandidateExplanation>,
}

/// Where a client was placed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocationView {
    /// "network 203.0.113.0/24", "database", "default" or "unknown".
    pub source: String,
    /// Latitude, when known.
    pub lat: Option<f64>,
    /// Longitude, when known.
    pub lon: Option<f64>,
    /// Region, when known.
    pub region: Option<String>,
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
    /// Added at run time rather than by the config file.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub runtime: bool,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// "up" or "down".
    pub health: &'static str,
    /// Drained by an operator.
    pub drained: bool,
    /// Over its load high-watermark.
    pub overloaded: bool,
    /// Smoothed load (sessions / capacity), when known and fresh.
    pub load: Option<f64>,
    /// Great-circle distance to the client, when both have coordinates.
    pub distance_km: Option<f64>,
    /// Its rendezvous score for this client, when it was an affinity candidate.
    pub affinity_score: Option<f64>,
    /// Round trips to it, when the ranking uses them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt: Option<RttView>,
    /// It is in this answer.
    pub answered: bool,
    /// Why it is or is not in the answer.
    pub reason: String,
}

/// The round trips to one endpoint, as ranking saw them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RttView {
    /// The round trip that ranked it, in milliseconds (None: not measured from there).
    pub ms: Option<f64>,
    /// Where that was measured: "region eu", "every vantage", "real users in 198.51.100.0/24".
    pub from: String,
    /// Every vantage's smoothed round trip.
    pub vantages: Vec<serde_json::Value>,
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
    // An internationalised name (bücher.example) is asked for in its A-label form
    // (xn--bcher-kva.example), as a resolver would.
    let parsed = if name.is_ascii() {
        Name::from_ascii(name)
    } else {
        Name::from_utf8(name)
    };
    let mut parsed = parsed.map_err(|e| QuestionError(format!("name {name:?}: {e}")))?;
    parsed.set_fqdn(true);
    let qtype = match qtype {
        None => RecordType::A,
        Some(text) => RecordType::from_str(&text.to_ascii_uppercase())
            .map_err(|_| QuestionError(format!("type {text:?} is not a record type")))?,
    };
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return Err(QuestionError(format!(
            "type {qtype} is a zone transfer, which gto refuses (REFUSED): nothing to explain"
        )));
    }
    if qtype == RecordType::OPT || (128..=254).contains(&u16::from(qtype)) {
        return Err(QuestionError(format!(
            "type {qtype} is a meta-type, not a question (FORMERR)"
        )));
    }
    Ok((LowerName::from(parsed), qtype, parse_client(client)?))
}

/// A client as an address (`203.0.113.7`) or as the prefix an ECS option carries
/// (`10.3.1.0/24`): the prefix's network address, host bits cleared as ECS clears them.
fn parse_client(client: &str) -> Result<IpAddr, QuestionError> {
    if let Ok(address) = client.parse::<IpAddr>() {
        return Ok(address);
    }
    match client.parse::<ipnet::IpNet>() {
        Ok(net) if net.prefix_len() == 0 => Err(QuestionError(format!(
            "client {client:?}: a /0 prefix carries no address (an ECS option with prefix 0 \
             asks for the resolver's address to be used: give that address)"
        ))),
        Ok(net) => Ok(net.network()),
        Err(_) => Err(QuestionError(format!(
            "client {client:?} is not an IP address or a prefix (e.g. 10.3.1.0/24)"
        ))),
    }
}

/// Why an endpoint is (or is not) in the answer, for a person.
fn candidate_reason(
    node: &crate::routing::GslbNode,
    m: &crate::routing::Endpoint,
    is_answered: bool,
    qtype: RecordType,
) -> String {
    let state = if m.drained { "drained" } else { "down" };
    let fail_open = node.mode == crate::routing::Selection::FailOpen;
    if is_answered && (!m.up || m.drained) {
        format!("{state}, served by when_all_down: no endpoint can serve (fail open)")
    } else if fail_open && (!m.up || m.drained) {
        format!(
            "{state}, served by when_all_down only (fail open); ranked below the first {} address(es)",
            node.answers
        )
    } else if is_answered && m.overloaded {
        "answered although overloaded: no endpoint under its watermark can serve".to_string()
    } else if is_answered {
        "answered".to_string()
    } else if m.drained && !m.available {
        "drained by an operator".to_string()
    } else if !m.available && !m.up {
        "down (health checks)".to_string()
    } else if !m.available {
        "not answered: no endpoint can serve and when_all_down is empty".to_string()
    } else if m.overloaded {
        "overloaded: answered only when no other endpoint can serve".to_string()
    } else if m.withheld.of(qtype == RecordType::AAAA) {
        format!(
            "up, but its {} address's own check says down (family = \"each\"): no {qtype} records",
            if qtype == RecordType::AAAA {
                "IPv6"
            } else {
                "IPv4"
            }
        )
    } else if m.records(qtype == RecordType::AAAA).is_empty() {
        format!("has no {qtype} address")
    } else {
        format!(
            "available, ranked below the first {} address(es)",
            node.answers
        )
    }
}

/// Where the client was placed, and by what.
fn location_view(
    snapshot: &Snapshot,
    placement: &Placement,
    client_location: Option<&crate::config::Location>,
) -> LocationView {
    let source = match placement {
        Placement::Network(i) => snapshot
            .geo
            .network(*i)
            .map_or_else(|| "network".to_string(), |net| format!("network {net}")),
        Placement::Database(_) => "database".to_string(),
        Placement::Default => "default".to_string(),
        Placement::Unknown => "unknown".to_string(),
    };
    LocationView {
        source,
        lat: client_location.and_then(|l| l.coordinates).map(|c| c.0),
        lon: client_location.and_then(|l| l.coordinates).map(|c| c.1),
        region: client_location.and_then(|l| l.region.clone()),
    }
}

/// Explains the answer to `name`/`qtype` for a client at `client` (taken both as the
/// resolver's address and as its ECS subnet).
pub fn explain(
    snapshot: &Snapshot,
    name: &LowerName,
    qtype: RecordType,
    client: IpAddr,
) -> Explanation {
    let who = Client {
        source: client,
        subnet: Some(client),
    };
    let resolution = snapshot.resolve(name, qtype, Some(who));
    let answers = resolution
        .answers
        .iter()
        .map(|r| r.data.to_string())
        .collect();
    let gslb = resolution.service.and_then(|index| {
        let info = snapshot.services.get(index)?;
        let node = snapshot.gslb_node(&info.name)?;
        // The same choice the query made (or, for NODATA, the one it would make).
        let (choice, answered) = match &resolution.gslb {
            Some((_, choice, from)) => (choice.clone(), from.clone()),
            None => (
                node.choose(&snapshot.geo, &snapshot.regions, Some(who)),
                Vec::new(),
            ),
        };
        let client_location = choice
            .placement
            .as_ref()
            .and_then(|p| snapshot.geo.location_of(p));
        let location = choice
            .placement
            .as_ref()
            .map(|placement| location_view(snapshot, placement, client_location));
        let key = affinity::client_key(client, node.affinity.v4, node.affinity.v6);
        let by_latency = node.policy == crate::config::Policy::Latency
            || node.tie == crate::config::Tie::Latency;
        let normal: Vec<crate::policy::Candidate<'_>> = node.members[..node.normal]
            .iter()
            .map(crate::routing::Endpoint::candidate)
            .collect();
        let from = crate::policy::vantage_of(&normal, client_location, &snapshot.regions);
        let measured = choice
            .measured_prefix
            .and_then(|prefix| node.rum.as_ref()?.cells.iter().find(|c| c.prefix == prefix));
        let latency = by_latency.then(|| match measured {
            Some(cell) => format!("real-user measurements of {}", cell.prefix),
            None => from.describe(),
        });
        let rtt_of = |i: usize, m: &crate::routing::Endpoint| {
            let vantages = m
                .rtt
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "vantage": r.vantage,
                        "region": r.region,
                        "ms": f64::from(r.micros) / 1000.0,
                    })
                })
                .collect();
            let (micros, from) = match measured {
                Some(cell) => match cell.rtts.get(i).copied().flatten() {
                    Some(micros) => (Some(micros), format!("real users in {}", cell.prefix)),
                    None => (
                        crate::policy::latency::key(&m.rtt, from),
                        format!("{} (no real-user measurement)", from.describe()),
                    ),
                },
                None => (crate::policy::latency::key(&m.rtt, from), from.describe()),
            };
            RttView {
                ms: micros.map(|us| f64::from(us) / 1000.0),
                from,
                vantages,
            }
        };
        let candidates = choice
            .order
            .iter()
            .enumerate()
            .filter_map(|(rank, &i)| {
                let i = usize::from(i);
                let m = node.members.get(i)?;
                let is_answered = answered.contains(&i);
                let is_candidate = rank < choice.candidates && choice.candidates > 1;
                let mut reason = candidate_reason(node, m, is_answered, qtype);
                let rtt = by_latency.then(|| rtt_of(i, m));
                if let Some(rtt) = &rtt {
                    match rtt.ms {
                        Some(ms) => {
                            reason.push_str(&format!("; round trip {ms:.1} ms ({})", rtt.from))
                        }
                        None => reason.push_str(&format!(
                            "; no round trip measured ({}): ranked after the measured",
                            rtt.from
                        )),
                    }
                }
                Some(CandidateExplanation {
                    rank: rank + 1,
                    pool: m.key.pool.clone(),
                    member: m.key.member.clone(),
                    runtime: m.runtime,
                    addresses: m.addresses.clone(),
                    health: if m.up { "up" } else { "down" },
                    drained: m.drained,
                    overloaded: m.overloaded,
                    load: m.load,
                    distance_km: client_location
                        .and_then(|c| c.coordinates)
                        .zip(m.location.as_ref().and_then(|l| l.coordinates))
                        .map(|(c, e)| distance_km(c, e).round()),
                    affinity_score: is_candidate.then(|| {
                        affinity::score(
                            key,
                            node.seeds.get(i).copied().unwrap_or_default(),
                            m.weight,
                        )
                    }),
                    answered: is_answered,
                    rtt,
                    reason,
                })
            })
            .collect();
        Some(GslbExplanation {
            service: info.name.to_string(),
            pool: node
                .members
                .first()
                .filter(|_| node.normal > 0)
                .map_or_else(|| info.pool.clone(), |m| m.key.pool.clone()),
            policy: node.policy.as_str(),
            tie: node.tie.as_str(),
            latency,
            selection: node.mode.as_str(),
            location,
            override_applied: choice.overridden.and_then(|position| {
                let o = node.overrides.iter().find(|o| o.position == position)?;
                Some(serde_json::json!({
                    "override": position,
                    "networks": o.networks.iter().map(ToString::to_string).collect::<Vec<_>>(),
                }))
            }),
            answers_limit: info.answers,
            ttl: info.ttl,
            affinity_candidates: choice.candidates,
            candidates,
        })
    });
    Explanation {
        name: name.to_string(),
        qtype: qtype.to_string(),
        client,
        rcode: rcode_name(resolution.outcome.rcode()).to_string(),
        answers,
        ecs_scope: resolution.scope,
        gslb,
        generation: snapshot.generation,
    }
}
