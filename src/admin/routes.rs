//! The admin routes. Reads build JSON from the routing snapshot and the endpoint monitor;
//! changes check the bearer token first, then go through the monitor or the reloader.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{AdminState, ApiError, constant_time_eq};
use crate::health::{Changed, EndpointStatus, StateError};
use crate::routing::EndpointKey;
use crate::routing::explain::{Explanation, explain as explain_answer, parse_question};

/// An endpoint as status shows it.
#[derive(Debug, Serialize)]
struct EndpointView {
    pool: String,
    member: String,
    addresses: Vec<IpAddr>,
    health: &'static str,
    since: String,
    last_check: Option<String>,
    last_error: Option<String>,
    stale: bool,
    probe: &'static str,
    drained: bool,
    drained_until: Option<String>,
    /// Who drained it (admin token name and client address), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    drained_by: Option<String>,
    /// The reason given with the drain.
    #[serde(skip_serializing_if = "Option::is_none")]
    drain_reason: Option<String>,
    /// A maintenance window not yet begun: its start, end, who and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<serde_json::Value>,
    /// Added at run time rather than by the config file.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    runtime: bool,
    load: Option<LoadView>,
    /// Smoothed load as ranking sees it (None: unknown or stale).
    load_smoothed: Option<f64>,
    /// Over its high-watermark: no new clients while another endpoint can serve.
    overloaded: bool,
    /// When the certificate its TLS or HTTPS probe read expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_expires: Option<String>,
    /// That certificate is within `cert_min_days`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cert_expiring: bool,
    /// Answers that included it since start (GSLB names only).
    #[serde(skip_serializing_if = "Option::is_none")]
    answered: Option<u64>,
    /// Its share of this GSLB name's answers since start, 0..1.
    #[serde(skip_serializing_if = "Option::is_none")]
    share: Option<f64>,
    /// With a fleet: this instance's verdict, every other voter's, the rule and outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    votes: Option<serde_json::Value>,
    /// `family = "each"` on a dual-stack endpoint: each address family's own check (A
    /// answers follow "v4", AAAA "v6"; the endpoint is up while either is).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    families: Vec<FamilyView>,
    /// Smoothed round trips by vantage (this instance's and the fleet's), as latency
    /// ranking reads them: `[{"vantage", "region", "ms"}]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rtt: Vec<serde_json::Value>,
    /// This instance's last successful probe: `{"connect_ms", "first_byte_ms"}` (each
    /// when the check has it), and its smoothed round trip (`smoothed_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_probe: Option<serde_json::Value>,
}

/// One address family's own check.
#[derive(Debug, Serialize)]
struct FamilyView {
    family: &'static str,
    /// The address and port probed.
    probed: Option<String>,
    health: &'static str,
    /// This instance's own verdict (the same as `health` without votes).
    local: &'static str,
    /// Whether this family's records are in answers.
    in_answers: bool,
    since: String,
    last_check: Option<String>,
    last_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct LoadView {
    sessions: u32,
    capacity: u32,
    ratio: f64,
    reported: String,
}

use crate::time::rfc3339;

fn view(status: &EndpointStatus, found: Found<'_>) -> EndpointView {
    let addresses = found.map(|m| m.addresses.clone()).unwrap_or_default();
    let rtt = found
        .map(|m| {
            m.rtt
                .iter()
                .map(|r| {
                    json!({
                        "vantage": r.vantage,
                        "region": r.region,
                        "ms": f64::from(r.micros) / 1000.0,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    EndpointView {
        pool: status.key.pool.clone(),
        member: status.key.member.clone(),
        addresses,
        health: status.health.as_str(),
        since: rfc3339(status.since),
        last_check: status.last_check.map(rfc3339),
        last_error: status.last_error.clone(),
        stale: status.stale,
        probe: status.probe,
        drained: status.drain.is_some(),
        drained_until: status.drain.and_then(|d| d.until).map(rfc3339),
        drained_by: status.drain.and(status.drain_note.by.clone()),
        drain_reason: status.drain.and(status.drain_note.reason.clone()),
        runtime: false,
        window: status.window.as_ref().map(|w| {
            json!({
                "from": rfc3339(w.from),
                "until": w.until.map(rfc3339),
                "by": w.note.by,
                "reason": w.note.reason,
            })
        }),
        load: status.load.map(|l| LoadView {
            sessions: l.sessions,
            capacity: l.capacity,
            ratio: l.ratio(),
            reported: rfc3339(l.at),
        }),
        load_smoothed: status.load_smoothed,
        overloaded: status.overloaded,
        cert_expires: status
            .cert
            .map(|c| crate::time::rfc3339_unix(u64::try_from(c.not_after).unwrap_or(0))),
        cert_expiring: status.cert.is_some_and(|c| c.expiring),
        answered: None,
        share: None,
        votes: votes_view(status),
        families: status
            .families
            .iter()
            .map(|f| FamilyView {
                family: f.family.as_str(),
                probed: f.address.map(|a| a.to_string()),
                health: f.health.as_str(),
                local: f.local.as_str(),
                in_answers: f.health == crate::health::state::Health::Up && status.drain.is_none(),
                since: rfc3339(f.since),
                last_check: f.last_check.map(rfc3339),
                last_error: f.last_error.clone(),
            })
            .collect(),
        rtt,
        last_probe: last_probe(status),
    }
}

/// The last successful probe's timings and the smoothed round trip, when there are any.
fn last_probe(status: &EndpointStatus) -> Option<serde_json::Value> {
    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let timings = status.timings;
    if timings.connect.is_none() && timings.first_byte.is_none() {
        return None;
    }
    Some(json!({
        "connect_ms": ms(timings.connect),
        "first_byte_ms": ms(timings.first_byte),
        "smoothed_ms": status.rtt_smoothed.map(|us| f64::from(us) / 1000.0),
    }))
}

/// An endpoint as the snapshot has it, if it answers for a GSLB name.
type Found<'s> = Option<&'s crate::routing::Endpoint>;

/// The fleet's verdicts on an endpoint and how they were combined (None without votes).
fn votes_view(status: &EndpointStatus) -> Option<serde_json::Value> {
    if !status.fleet {
        return None;
    }
    let now = crate::time::unix(SystemTime::now());
    let voters: Vec<_> = status
        .votes
        .iter()
        .map(|(voter, vote)| {
            json!({
                "instance": voter,
                "verdict": if vote.up { "up" } else { "down" },
                "v4": vote.v4.map(|up| if up { "up" } else { "down" }),
                "v6": vote.v6.map(|up| if up { "up" } else { "down" }),
                "since": rfc3339(crate::time::from_unix_clamped(vote.since)),
                "age_seconds": now.saturating_sub(vote.at),
                "error": vote.error,
                "rtt_ms": vote.rtt_us.map(|us| f64::from(us) / 1000.0),
                "region": vote.region,
                "stale": vote.stale,
            })
        })
        .collect();
    let decided_by = match status.tally {
        Some((voters, down)) => format!("{down} of {voters} voters say down"),
        None if status.voting => "this instance alone (too few fresh voters)".into(),
        None => "this instance alone (the fleet store is unreachable)".into(),
    };
    Some(json!({
        "local": status.local.as_str(),
        "rule": {
            "down_when": status.rule.down_when.as_str(),
            "min_voters": status.rule.min_voters,
            "vote_scope": match status.rule.scope {
                crate::config::VoteScope::All => "all",
                crate::config::VoteScope::Region => "region",
            },
        },
        "voting": status.voting,
        "decided_by": decided_by,
        "outcome": status.health.as_str(),
        "voters": voters,
    }))
}

/// `GET /v1/status`.
pub(super) async fn status(State(state): State<AdminState>) -> Response {
    let snapshot = state.routing.load_full();
    let members = state.health.status().await;
    let by_key: HashMap<&EndpointKey, &EndpointStatus> =
        members.iter().map(|m| (&m.key, m)).collect();
    let services: Vec<_> = snapshot
        .services
        .iter()
        .map(|service| {
            let node = snapshot.gslb_node(&service.name);
            let candidates = node.map(|n| n.members.as_slice()).unwrap_or_default();
            let total: u64 = candidates
                .iter()
                .map(|c| c.answered.load(Ordering::Relaxed))
                .sum();
            let members: Vec<EndpointView> = candidates
                .iter()
                .filter_map(|c| {
                    let status = by_key.get(&c.key)?;
                    let answered = c.answered.load(Ordering::Relaxed);
                    let mut view = view(status, Some(c));
                    view.runtime = c.runtime;
                    view.answered = Some(answered);
                    view.share = Some(if total == 0 {
                        0.0
                    } else {
                        answered as f64 / total as f64
                    });
                    Some(view)
                })
                .collect();
            json!({
                "name": service.name.to_string(),
                "pool": service.pool,
                "policy": service.policy.as_str(),
                "tie": node.map(|n| n.tie.as_str()),
                "answers": service.answers,
                "ttl": service.ttl,
                "selection": node.map(|n| n.mode.as_str()),
                "members": members,
                "overrides": node.map(|n| {
                    n.overrides
                        .iter()
                        .map(|o| json!({
                            "override": o.position,
                            "networks": o.networks.iter().map(ToString::to_string).collect::<Vec<_>>(),
                            "serving": o.serving,
                        }))
                        .collect::<Vec<_>>()
                }).unwrap_or_default(),
            })
        })
        .collect();
    // Every endpoint at once: one pass, not one search per endpoint.
    let found: HashMap<&EndpointKey, &crate::routing::Endpoint> = snapshot
        .services
        .iter()
        .filter_map(|s| snapshot.gslb_node(&s.name))
        .flat_map(|n| n.members.iter())
        .map(|c| (&c.key, c))
        .collect();
    let runtime = state.reloader.runtime();
    let pools: Vec<_> = members
        .iter()
        .map(|m| {
            let mut view = view(m, found.get(&m.key).copied());
            view.runtime = runtime
                .iter()
                .any(|r| r.pool == m.key.pool && r.name == m.key.member);
            view
        })
        .collect();
    Json(json!({
        "instance": {
            "pid": std::process::id(),
            "replacement": crate::handover::status(),
            "version": env!("CARGO_PKG_VERSION"),
            "commit": env!("GTO_COMMIT"),
            "identity": snapshot.identity.as_ref().map(|id| String::from_utf8_lossy(id).into_owned()),
            "started": rfc3339(state.started),
            "config_digest": state.reloader.digest().as_str(),
            "last_reload": state.reloader.last().as_deref(),
        },
        "cluster": state.fleet.as_ref().map(crate::cluster::Fleet::status_json),
        "generation": snapshot.generation,
        "dnssec": crate::routing::status_json(&snapshot),
        "services": services,
        "endpoints": pools,
    }))
    .into_response()
}

fn endpoint_of<'s>(snapshot: &'s crate::routing::Snapshot, key: &EndpointKey) -> Found<'s> {
    snapshot
        .services
        .iter()
        .filter_map(|s| snapshot.gslb_node(&s.name))
        .flat_map(|n| n.members.iter())
        .find(|c| c.key == *key)
}

/// `GET /v1/events`: Server-Sent Events for every change, from `Last-Event-ID` (or
/// `?since=ID`) on when given, else from now. A stream that falls behind resumes from the
/// kept history; when even that has moved on it is sent a `reset` event (re-read status).
pub(super) async fn events(
    State(state): State<AdminState>,
    Query(query): Query<EventsQuery>,
    peer: Option<axum::Extension<super::Peer>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use std::collections::VecDeque;
    use tokio::sync::broadcast::error::RecvError;

    let source = peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.0.0);
    // A full set evicts the oldest stream of the source holding the most (an
    // EventSource reconnects and resumes by id).
    let Some(slot) = state.event_streams.0.admit(source) else {
        return Err(ApiError::Busy(format!(
            "{} event streams are open already",
            super::MAX_EVENT_STREAMS
        )));
    };
    let bus = state.events.clone();
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(query.since);
    // Subscribe before reading the history, so nothing falls between the two.
    let live = bus.subscribe();
    let last = resume.unwrap_or_else(|| bus.last_id());
    let (backlog, complete) = bus.since(last);
    let mut queue: VecDeque<Option<std::sync::Arc<crate::events::Event>>> = VecDeque::new();
    if !complete {
        queue.push_back(None);
    }
    queue.extend(backlog.into_iter().map(Some));
    let stream = futures_util::stream::unfold(
        (live, queue, last, bus, slot),
        |(mut live, mut queue, mut sent, bus, slot)| async move {
            loop {
                match queue.pop_front() {
                    Some(Some(event)) if event.id <= sent => continue,
                    Some(Some(event)) => {
                        sent = event.id;
                        let sse = SseEvent::default()
                            .id(event.id.to_string())
                            .event(event.kind)
                            .data(serde_json::to_string(&*event).unwrap_or_default());
                        return Some((Ok::<_, Infallible>(sse), (live, queue, sent, bus, slot)));
                    }
                    Some(None) => {
                        let sse = SseEvent::default()
                            .event("reset")
                            .data(r#"{"reason":"events were missed; read /v1/status again"}"#);
                        return Some((Ok(sse), (live, queue, sent, bus, slot)));
                    }
                    None => {}
                }
                let received = tokio::select! {
                    received = live.recv() => received,
                    // Evicted for a newcomer: the stream ends.
                    () = slot.evicted.cancelled() => return None,
                };
                match received {
                    Ok(event) => queue.push_back(Some(event)),
                    Err(RecvError::Lagged(_)) => {
                        // Too slow for the live buffer: catch up from the history.
                        let (missed, complete) = bus.since(sent);
                        if !complete {
                            queue.push_back(None);
                        }
                        queue.extend(missed.into_iter().map(Some));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

/// `GET /v1/events` query.
#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    since: Option<u64>,
}

/// `GET /v1/explain` query.
#[derive(Debug, Deserialize)]
pub(super) struct ExplainQuery {
    name: String,
    client: String,
    #[serde(rename = "type")]
    qtype: Option<String>,
}

/// `GET /v1/explain?name=vpn.gto.example.com&client=203.0.113.7&type=A`.
pub(super) async fn explain(
    State(state): State<AdminState>,
    Query(query): Query<ExplainQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (name, qtype, client) = parse_question(&query.name, query.qtype.as_deref(), &query.client)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let snapshot = state.routing.load_full();
    let explanation: Explanation = explain_answer(&snapshot, &name, qtype, client);
    let mut value = serde_json::to_value(&explanation)
        .map_err(|e| ApiError::BadRequest(format!("cannot show the explanation: {e}")))?;
    // With a fleet, each candidate's health comes with the verdicts behind it.
    if state.fleet.is_some()
        && let Some(candidates) = value["gslb"]["candidates"].as_array_mut()
    {
        let statuses = state.health.status().await;
        for candidate in candidates {
            let status = statuses.iter().find(|s| {
                candidate["pool"] == s.key.pool.as_str()
                    && candidate["member"] == s.key.member.as_str()
            });
            if let Some(votes) = status.and_then(votes_view) {
                candidate["votes"] = votes;
            }
        }
    }
    Ok(Json(value))
}

/// Checks the bearer token of a change.
/// Who asks for a change: the bearer token's name (never the token) and the client's
/// address, for the audit trail.
#[derive(Debug, Clone)]
struct Caller {
    token: String,
    source: String,
}

/// The caller of a change needing `needed`: its token must match one of `[admin]`'s
/// (each compared in constant time, every one of them), and its role must allow the
/// change. A refusal is logged (token name when known, source, action, target) and
/// answered 401 (no or unknown token) or 403 (the role does not allow it).
fn authorize(
    state: &AdminState,
    headers: &HeaderMap,
    peer: Option<&axum::Extension<super::Peer>>,
    needed: crate::config::Role,
    action: &str,
    target: &str,
) -> Result<Caller, ApiError> {
    let settings = state.settings.load();
    let source = peer.map_or_else(|| "unknown".to_string(), |p| p.0.0.to_string());
    if !settings.changes_enabled() {
        return Err(ApiError::ChangesDisabled);
    }
    let refuse = |token: &str, why: &str| {
        tracing::warn!(token = %token, source = %source, action = %action, target = %target, why, "admin change refused");
    };
    // The scheme is case-insensitive (RFC 7235 section 2.1).
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, credentials) = v.trim_start().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(credentials)
        })
    else {
        refuse("(none)", "no bearer token");
        return Err(ApiError::Unauthorized);
    };
    let given = given.trim().as_bytes();
    let default = settings.token.as_ref().map(|secret| {
        (
            crate::config::AdminSettings::DEFAULT_TOKEN,
            crate::config::Role::Admin,
            secret,
        )
    });
    let named = settings
        .tokens
        .iter()
        .map(|t| (t.name.as_str(), t.role, &t.secret));
    let mut matched = None;
    for (name, role, secret) in default.into_iter().chain(named) {
        // No early exit: the time taken does not tell which token came close.
        if constant_time_eq(given, secret.expose().as_bytes()) && matched.is_none() {
            matched = Some((name, role));
        }
    }
    let Some((name, role)) = matched else {
        refuse("(unknown)", "the bearer token matches none");
        return Err(ApiError::Unauthorized);
    };
    if role < needed {
        refuse(name, "the token's role does not allow it");
        return Err(ApiError::Forbidden(format!(
            "token {name:?} has the role {}; {action} needs {}",
            role.as_str(),
            needed.as_str()
        )));
    }
    Ok(Caller {
        token: name.to_string(),
        source,
    })
}

/// Records a change about to be applied: a log line (token name, source, action,
/// target, end and reason) and an `audit` event.
fn audit(
    state: &AdminState,
    caller: &Caller,
    action: &str,
    target: &str,
    until: Option<SystemTime>,
    reason: Option<&str>,
) {
    audit_with(state, caller, action, target, (None, until), reason);
}

/// The audit record of a drain, with its start when it is a maintenance window.
fn audit_drain(
    state: &AdminState,
    caller: &Caller,
    target: &str,
    times: (Option<SystemTime>, Option<SystemTime>),
    reason: Option<&str>,
) {
    audit_with(state, caller, "drain", target, times, reason);
}

fn audit_with(
    state: &AdminState,
    caller: &Caller,
    action: &str,
    target: &str,
    (from, until): (Option<SystemTime>, Option<SystemTime>),
    reason: Option<&str>,
) {
    let until = until.map(rfc3339);
    let from = from.map(rfc3339);
    tracing::info!(
        token = %caller.token,
        caller = %caller.source,
        action = %action,
        target = %target,
        at = from.as_deref(),
        until = until.as_deref(),
        reason,
        "{action} requested through the admin API"
    );
    let mut record = json!({
        "token": caller.token,
        "source": caller.source,
        "action": action,
        "target": target,
        "until": until,
        "reason": reason,
    });
    if let Some(from) = from {
        record["at"] = json!(from);
    }
    if let Some(path) = &state.settings.load().audit_file {
        append_audit(path, &record);
    }
    state.events.emit("audit", record);
}

/// Appends one audit record, with its time, as a JSON line to `[admin] audit_file`. A
/// write that fails is logged and counted; the change still applies (the log line and
/// the event hold it).
fn append_audit(path: &std::path::Path, record: &serde_json::Value) {
    use std::io::Write;
    let mut line = json!({ "at": rfc3339(SystemTime::now()) });
    if let (Some(line), Some(fields)) = (line.as_object_mut(), record.as_object()) {
        line.extend(fields.clone());
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| writeln!(file, "{line}"));
    if let Err(error) = written {
        metrics::counter!(crate::metrics::AUDIT_WRITE_FAILURES_TOTAL).increment(1);
        tracing::warn!(%error, file = %path.display(), "audit record not written to the audit file");
    }
}

/// Drain request body (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    /// RFC 3339 time at which the drain starts (a maintenance window); default now.
    at: Option<String>,
    /// RFC 3339 time at which the drain ends by itself.
    until: Option<String>,
    /// Duration after which the drain ends by itself ("30m"), from `at` when given.
    #[serde(rename = "for")]
    duration: Option<String>,
    /// Why, for the audit trail (at most 200 bytes).
    reason: Option<String>,
}

/// A drain of several endpoints at once: those of a pool, a site or a region (or named
/// ones), with the fields of a one-member drain.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorBody {
    pool: Option<String>,
    site: Option<String>,
    region: Option<String>,
    /// `POOL/MEMBER` names.
    members: Option<Vec<String>>,
    at: Option<String>,
    until: Option<String>,
    #[serde(rename = "for")]
    duration: Option<String>,
    reason: Option<String>,
}

/// When a drain starts (None: now) and ends, checked against `[admin] max_drain`.
fn drain_times(
    at: Option<&str>,
    until: Option<&str>,
    duration: Option<&str>,
    max_drain: std::time::Duration,
) -> Result<(Option<SystemTime>, Option<SystemTime>), ApiError> {
    let now = SystemTime::now();
    let too_far = || {
        ApiError::BadRequest(format!(
            "a drain may start and end at most {} ahead ([admin] max_drain); undrain by hand \
             for longer",
            humantime::format_duration(max_drain)
        ))
    };
    let beyond = |t: SystemTime| t.duration_since(now).is_ok_and(|d| d > max_drain);
    let from = match at {
        None => None,
        Some(at) => {
            let from = humantime::parse_rfc3339_weak(at)
                .map_err(|e| ApiError::BadRequest(format!("at {at:?}: {e}")))?;
            if beyond(from) {
                return Err(too_far());
            }
            // A start already past is now.
            (from > now).then_some(from)
        }
    };
    let start = from.unwrap_or(now);
    let until = match (until, duration) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give `until` or `for`, not both".into(),
            ));
        }
        (Some(until), None) => Some(
            humantime::parse_rfc3339_weak(until)
                .map_err(|e| ApiError::BadRequest(format!("until {until:?}: {e}")))?,
        ),
        (None, Some(duration)) => {
            let duration = humantime::parse_duration(duration)
                .map_err(|e| ApiError::BadRequest(format!("for {duration:?}: {e}")))?;
            if duration > max_drain {
                return Err(too_far());
            }
            Some(start.checked_add(duration).ok_or_else(too_far)?)
        }
        (None, None) => None,
    };
    if until.is_some_and(|u| u <= start) {
        return Err(ApiError::BadRequest(if from.is_some() {
            "`until` is not after `at`".into()
        } else {
            "`until` is in the past".into()
        }));
    }
    if until.is_some_and(beyond) {
        return Err(too_far());
    }
    Ok((from, until))
}

fn check_reason(reason: Option<&str>) -> Result<(), ApiError> {
    if reason.is_some_and(|r| r.len() > 200) {
        return Err(ApiError::BadRequest(
            "`reason` may be at most 200 bytes".into(),
        ));
    }
    Ok(())
}

/// What every write to one member starts with: the caller authorized, the endpoint the
/// path names, and the body parsed (an empty body is the default).
fn member_request<T: for<'de> Deserialize<'de> + Default>(
    state: &AdminState,
    headers: &HeaderMap,
    peer: Option<&axum::Extension<super::Peer>>,
    action: &str,
    (pool, member): (String, String),
    body: &Bytes,
) -> Result<(Caller, EndpointKey, T), ApiError> {
    let target = format!("{pool}/{member}");
    let caller = authorize(
        state,
        headers,
        peer,
        crate::config::Role::Operate,
        action,
        &target,
    )?;
    Ok((caller, EndpointKey { pool, member }, parse_body(body)?))
}

fn parse_body<T: for<'de> Deserialize<'de> + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))
}

/// `POST /v1/members/{pool}/{member}/drain`.
pub(super) async fn drain(
    State(state): State<AdminState>,
    Path((pool, member)): Path<(String, String)>,
    peer: Option<axum::Extension<super::Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (caller, key, body): (_, _, DrainBody) = member_request(
        &state,
        &headers,
        peer.as_ref(),
        "drain",
        (pool, member),
        &body,
    )?;
    let max_drain = state.settings.load().max_drain;
    let (from, until) = drain_times(
        body.at.as_deref(),
        body.until.as_deref(),
        body.duration.as_deref(),
        max_drain,
    )?;
    check_reason(body.reason.as_deref())?;
    audit_drain(
        &state,
        &caller,
        &format!("{}/{}", key.pool, key.member),
        (from, until),
        body.reason.as_deref(),
    );
    let note = crate::health::DrainNote {
        by: Some(format!("{}@{}", caller.token, caller.source)),
        reason: body.reason.clone(),
    };
    if from.is_some() {
        // A maintenance window: the way of several endpoints, with one.
        let planned = crate::health::Planned { from, until, note };
        let keys = vec![key];
        if let Some(fleet) = &state.fleet {
            known(&state, &keys[0]).await?;
            fleet.drain_many(&keys, Some(&planned)).await?;
        }
        let changed = state.health.drain_set(keys, Some(planned)).await?;
        let status = crate::health::Changed {
            status: changed
                .statuses
                .into_iter()
                .next()
                .ok_or(ApiError::ShuttingDown)?,
            not_saved: changed.not_saved,
        };
        return Ok(member_json(&state, &status));
    }
    if let Some(fleet) = &state.fleet {
        // The fleet first: a drain the fleet did not take is applied nowhere.
        known(&state, &key).await?;
        fleet.drain(&key, until, &note).await?;
    }
    let status = state.health.drain(key, until, note).await?;
    Ok(member_json(&state, &status))
}

/// The endpoints a selector names, in config order: every member of `pool`, of `site`,
/// of `region`, or the named `POOL/MEMBER`s; at least one selector, each matching.
async fn selected(
    state: &AdminState,
    body: &SelectorBody,
) -> Result<(Vec<EndpointKey>, String), ApiError> {
    let loaded = state.reloader.running().await;
    let config = &loaded.config;
    let given = [
        body.pool.is_some(),
        body.site.is_some(),
        body.region.is_some(),
        body.members.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ApiError::BadRequest(
            "name one of `pool`, `site`, `region` or `members`".into(),
        ));
    }
    let all = config
        .pools
        .iter()
        .flat_map(|pool| pool.members.iter().map(move |member| (pool, member)));
    let (keys, target): (Vec<EndpointKey>, String) = if let Some(names) = &body.members {
        let mut keys = Vec::new();
        for name in names {
            let Some((pool, member)) = name.split_once('/') else {
                return Err(ApiError::BadRequest(format!(
                    "members: {name:?} is not POOL/MEMBER"
                )));
            };
            if !all.clone().any(|(p, m)| p.name == pool && m.name == member) {
                return Err(StateError::NotFound(pool.into(), member.into()).into());
            }
            keys.push(EndpointKey {
                pool: pool.into(),
                member: member.into(),
            });
        }
        (keys, names.join(","))
    } else {
        let (label, wanted, matches): (&str, &String, &MemberFilter<'_>) =
            match (&body.pool, &body.site, &body.region) {
                (Some(pool), _, _) => ("pool", pool, &|p, _| p.name == *pool),
                (_, Some(site), _) => ("site", site, &|_, m| m.site.as_ref() == Some(site)),
                (_, _, Some(region)) => ("region", region, &|_, m| {
                    m.location.as_ref().and_then(|l| l.region.as_ref()) == Some(region)
                }),
                _ => unreachable_selector()?,
            };
        let keys: Vec<EndpointKey> = all
            .filter(|(p, m)| matches(p, m))
            .map(|(p, m)| EndpointKey {
                pool: p.name.clone(),
                member: m.name.clone(),
            })
            .collect();
        if keys.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no member has {label} {wanted:?}"
            )));
        }
        (keys, format!("{label}={wanted}"))
    };
    Ok((keys, target))
}

/// Whether a member of a pool is selected.
type MemberFilter<'a> = dyn Fn(&crate::config::Pool, &crate::config::Member) -> bool + 'a;

/// `selected` checks that exactly one selector is given.
fn unreachable_selector<T>() -> Result<T, ApiError> {
    Err(ApiError::BadRequest(
        "name one of `pool`, `site`, `region` or `members`".into(),
    ))
}

/// `POST /v1/drain`: drains every member of a pool, a site or a region (or named
/// members) at once, now or at `at` (a maintenance window): one fleet write, one rebuild.
pub(super) async fn drain_selected(
    State(state): State<AdminState>,
    peer: Option<axum::Extension<super::Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: SelectorBody = parse_body(&body)?;
    let caller = authorize(
        &state,
        &headers,
        peer.as_ref(),
        crate::config::Role::Operate,
        "drain",
        "selection",
    )?;
    let (keys, target) = selected(&state, &body).await?;
    let max_drain = state.settings.load().max_drain;
    let (from, until) = drain_times(
        body.at.as_deref(),
        body.until.as_deref(),
        body.duration.as_deref(),
        max_drain,
    )?;
    check_reason(body.reason.as_deref())?;
    audit_drain(
        &state,
        &caller,
        &target,
        (from, until),
        body.reason.as_deref(),
    );
    let planned = crate::health::Planned {
        from,
        until,
        note: crate::health::DrainNote {
            by: Some(format!("{}@{}", caller.token, caller.source)),
            reason: body.reason.clone(),
        },
    };
    if let Some(fleet) = &state.fleet {
        fleet.drain_many(&keys, Some(&planned)).await?;
    }
    let changed = state.health.drain_set(keys, Some(planned)).await?;
    Ok(members_json(&state, &changed))
}

/// `POST /v1/undrain`: ends the drains (and cancels the windows) of a selection.
pub(super) async fn undrain_selected(
    State(state): State<AdminState>,
    peer: Option<axum::Extension<super::Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body: SelectorBody = parse_body(&body)?;
    if body.at.is_some() || body.until.is_some() || body.duration.is_some() {
        return Err(ApiError::BadRequest(
            "an undrain takes a selection only (`at`, `until` and `for` are a drain's)".into(),
        ));
    }
    let caller = authorize(
        &state,
        &headers,
        peer.as_ref(),
        crate::config::Role::Operate,
        "undrain",
        "selection",
    )?;
    let (keys, target) = selected(&state, &body).await?;
    audit(
        &state,
        &caller,
        "undrain",
        &target,
        None,
        body.reason.as_deref(),
    );
    if let Some(fleet) = &state.fleet {
        fleet.drain_many(&keys, None).await?;
    }
    let changed = state.health.drain_set(keys, None).await?;
    Ok(members_json(&state, &changed))
}

fn members_json(
    state: &AdminState,
    changed: &crate::health::ChangedMany,
) -> Json<serde_json::Value> {
    let snapshot = state.routing.load();
    let endpoints: Vec<_> = changed
        .statuses
        .iter()
        .map(|status| view(status, endpoint_of(&snapshot, &status.key)))
        .collect();
    let reply = json!({ "generation": snapshot.generation, "endpoints": endpoints });
    Json(with_saved_warning(reply, changed.not_saved.as_deref()))
}

/// A change's reply, with a warning when the state file does not hold it.
fn with_saved_warning(mut reply: serde_json::Value, not_saved: Option<&str>) -> serde_json::Value {
    if let Some(error) = not_saved {
        reply["warning"] = json!(format!(
            "applied, but not saved to the state file ({error}); a restart would lose it"
        ));
    }
    reply
}

/// `PUT /v1/pools/{pool}/members/{name}`: adds (or replaces) a member at run time. The
/// body is its table as in the config (`addresses`, `location`, `weight`, `capacity`,
/// `site`, `check`), validated exactly as the config is, every problem at once by field
/// (422, nothing changes); with `[cluster]` written to the fleet first, so every instance
/// gets it. A member the config file defines cannot be replaced (409).
pub(super) async fn put_member(
    State(state): State<AdminState>,
    Path((pool, name)): Path<(String, String)>,
    peer: Option<axum::Extension<super::Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let target = format!("{pool}/{name}");
    let caller = authorize(
        &state,
        &headers,
        peer.as_ref(),
        crate::config::Role::Admin,
        "member_add",
        &target,
    )?;
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|e| {
            ApiError::BadRequest(format!("body: a JSON object of the member's fields: {e}"))
        })?;
    let unknown: Vec<&String> = fields
        .keys()
        .filter(|k| !crate::runtime::FIELDS.contains(&k.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "unknown field(s) {unknown:?}; a member has {}",
            crate::runtime::FIELDS.join(", ")
        )));
    }
    let running = state.reloader.running().await;
    let runtime = state.reloader.runtime();
    if in_config_file(&running, &runtime, &pool, &name) {
        return Err(ApiError::Conflict(format!(
            "{target} is defined in the config file; change it there"
        )));
    }
    if !running.config.pools.iter().any(|p| p.name == pool) {
        return Err(ApiError::NotFound(format!("no pool {pool:?}")));
    }
    let member = crate::runtime::RuntimeMember {
        pool: pool.clone(),
        name: name.clone(),
        fields,
    };
    if let Some(why) = crate::runtime::refused(&member) {
        return Err(ApiError::MemberRefused(vec![why]));
    }
    let mut wanted = without(runtime, &pool, &name);
    wanted.push(member.clone());
    // Read and validated as the config is before anything is written; applied as read.
    let loaded = state
        .reloader
        .load_with_runtime(wanted)
        .await
        .map_err(|errors| ApiError::MemberRefused(member_problems(&errors, &pool)))?;
    audit(&state, &caller, "member_add", &target, None, None);
    if let Some(fleet) = &state.fleet {
        fleet.put_member(&member).await?;
    }
    let reloaded = state.reloader.apply_loaded(loaded).await;
    let mut reply = member_changed(&state, &caller, reloaded, (&pool, &name), "add")?;
    reply["member"] = json!(member);
    Ok(Json(reply))
}

/// `DELETE /v1/pools/{pool}/members/{name}`: removes a member added at run time (one the
/// config file defines is removed there: 409).
pub(super) async fn delete_member(
    State(state): State<AdminState>,
    Path((pool, name)): Path<(String, String)>,
    peer: Option<axum::Extension<super::Peer>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let target = format!("{pool}/{name}");
    let caller = authorize(
        &state,
        &headers,
        peer.as_ref(),
        crate::config::Role::Admin,
        "member_remove",
        &target,
    )?;
    let runtime = state.reloader.runtime();
    if !runtime.iter().any(|m| m.pool == pool && m.name == name) {
        let running = state.reloader.running().await;
        return Err(if in_config_file(&running, &runtime, &pool, &name) {
            ApiError::Conflict(format!(
                "{target} is defined in the config file; remove it there"
            ))
        } else {
            ApiError::NotFound(format!("no member {target} was added at run time"))
        });
    }
    audit(&state, &caller, "member_remove", &target, None, None);
    if let Some(fleet) = &state.fleet {
        fleet
            .delete_member(&EndpointKey {
                pool: pool.clone(),
                member: name.clone(),
            })
            .await?;
    }
    let reloaded = state
        .reloader
        .set_runtime(without(runtime, &pool, &name))
        .await;
    Ok(Json(member_changed(
        &state,
        &caller,
        reloaded,
        (&pool, &name),
        "remove",
    )?))
}

/// Whether the config file (not a run-time addition) defines `pool`/`name`.
fn in_config_file(
    running: &crate::loaded::Loaded,
    runtime: &[crate::runtime::RuntimeMember],
    pool: &str,
    name: &str,
) -> bool {
    let added = runtime.iter().any(|m| m.pool == pool && m.name == name);
    !added
        && running
            .config
            .pools
            .iter()
            .filter(|p| p.name == pool)
            .flat_map(|p| &p.members)
            .any(|m| m.name == name)
}

/// The run-time members but `pool`/`name`.
fn without(
    runtime: Vec<crate::runtime::RuntimeMember>,
    pool: &str,
    name: &str,
) -> Vec<crate::runtime::RuntimeMember> {
    runtime
        .into_iter()
        .filter(|m| !(m.pool == pool && m.name == name))
        .collect()
}

/// The reply to a run-time member's change once applied (its `member` event sent), or
/// its problems.
fn member_changed(
    state: &AdminState,
    caller: &Caller,
    reloaded: Result<crate::reload::Reloaded, crate::config::ConfigErrors>,
    (pool, name): (&str, &str),
    action: &str,
) -> Result<serde_json::Value, ApiError> {
    let reloaded =
        reloaded.map_err(|errors| ApiError::MemberRefused(member_problems(&errors, pool)))?;
    state.events.emit(
        "member",
        json!({
            "pool": pool,
            "member": name,
            "action": action,
            "by": format!("{}@{}", caller.token, caller.source),
        }),
    );
    Ok(json!({
        "generation": reloaded.generation,
        "changes": reloaded.changes,
    }))
}

/// A refused load's problems as a run-time member's fields (`addresses[0]: ...`): those
/// located in the member's table lose the table's path; any other is given whole.
fn member_problems(errors: &crate::config::ConfigErrors, pool: &str) -> Vec<String> {
    let prefix = format!("pool.{pool}.member[");
    errors
        .iter()
        .map(|error| match error.path.strip_prefix(&prefix) {
            Some(rest) => {
                let field = rest.split_once("].").map_or("", |(_, field)| field);
                format!("{field}: {}", error.message)
            }
            None => error.to_string(),
        })
        .collect()
}

/// Fails with 404 unless `key` is an endpoint of the running config.
async fn known(state: &AdminState, key: &EndpointKey) -> Result<(), ApiError> {
    if state.health.drain_of(key.clone()).await.is_some() {
        Ok(())
    } else {
        Err(StateError::NotFound(key.pool.clone(), key.member.clone()).into())
    }
}

/// `POST /v1/members/{pool}/{member}/undrain`.
pub(super) async fn undrain(
    State(state): State<AdminState>,
    Path((pool, member)): Path<(String, String)>,
    peer: Option<axum::Extension<super::Peer>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let target = format!("{pool}/{member}");
    let caller = authorize(
        &state,
        &headers,
        peer.as_ref(),
        crate::config::Role::Operate,
        "undrain",
        &target,
    )?;
    let key = EndpointKey { pool, member };
    audit(&state, &caller, "undrain", &target, None, None);
    if let Some(fleet) = &state.fleet {
        known(&state, &key).await?;
        fleet.undrain(&key).await?;
    }
    let status = state.health.undrain(key).await?;
    Ok(member_json(&state, &status))
}

/// Load push body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBody {
    sessions: Option<u32>,
    capacity: Option<u32>,
}

/// `PUT /v1/members/{pool}/{member}/load`.
pub(super) async fn load(
    State(state): State<AdminState>,
    Path((pool, member)): Path<(String, String)>,
    peer: Option<axum::Extension<super::Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (_caller, key, body): (_, _, LoadBody) = member_request(
        &state,
        &headers,
        peer.as_ref(),
        "load",
        (pool, member),
        &body,
    )?;
    let sessions = body.sessions.ok_or_else(|| {
        ApiError::BadRequest("body needs \"sessions\" (and \"capacity\" unless configured)".into())
    })?;
    let status = state
        .health
        .set_load(key.clone(), sessions, body.capacity)
        .await?;
    if let (Some(fleet), Some(load)) = (&state.fleet, status.status.load) {
        fleet.publish_load(&key, load.sessions, load.capacity).await;
    }
    Ok(member_json(&state, &status))
}

/// The reply to a change. A change the state file could not hold is still applied (it is
/// served at once); the reply says so in `warning`, and `gto_state_write_failures_total`
/// counts it.
fn member_json(state: &AdminState, changed: &Changed) -> Json<serde_json::Value> {
    let snapshot = state.routing.load();
    let view = view(&changed.status, endpoint_of(&snapshot, &changed.status.key));
    let reply = json!({ "generation": snapshot.generation, "endpoint": view });
    Json(with_saved_warning(reply, changed.not_saved.as_deref()))
}

/// `POST /v1/rtt`: real-user measurements, `{"measurements": [{"prefix":
/// "198.51.100.0/24", "pool": "sma", "member": "fra-1", "rtt_ms": 12.5}, ...]}` (role
/// operate). Taken whole or refused whole (400 with every problem).
pub(super) async fn rtt(
    State(state): State<AdminState>,
    peer: Option<axum::Extension<super::Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(
        &state,
        &headers,
        peer.as_ref(),
        crate::config::Role::Operate,
        "rtt",
        "measurements",
    )?;
    let batch: crate::health::rum::RumBatch = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "body: {{\"measurements\": [{{\"prefix\", \"pool\", \"member\", \"rtt_ms\"}}, ...]}}: {e}"
        ))
    })?;
    let (accepted, prefixes) = state
        .health
        .report_rtts(batch)
        .await
        .map_err(ApiError::BatchRefused)?;
    Ok(Json(json!({ "accepted": accepted, "prefixes": prefixes })))
}

/// `POST /v1/reload`.
pub(super) async fn reload(
    State(state): State<AdminState>,
    peer: Option<axum::Extension<super::Peer>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authorize(
        &state,
        &headers,
        peer.as_ref(),
        crate::config::Role::Admin,
        "reload",
        "config",
    )?;
    audit(&state, &caller, "reload", "config", None, None);
    let reloaded = state
        .reloader
        .reload()
        .await
        .map_err(ApiError::InvalidConfig)?;
    Ok(Json(json!(reloaded)))
}

/// `GET /metrics`.
pub(super) async fn metrics(State(state): State<AdminState>) -> Response {
    let handle = state.metrics;
    let mut text = match handle.try_render() {
        Some(text) => text,
        // In the first moments of the process: the recorder is being built.
        None => tokio::task::spawn_blocking(move || handle.render())
            .await
            .unwrap_or_default(),
    };
    // Per-endpoint gauges come from the running config's endpoints at scrape time, so an
    // endpoint a reload removed has no series left.
    let members = state.health.status().await;
    text.push_str(&crate::metrics::render_members(members.iter().map(|m| {
        crate::metrics::EndpointSample {
            pool: &m.key.pool,
            member: &m.key.member,
            up: m.health == crate::health::state::Health::Up,
            stale: m.stale,
            drained: m.drain.is_some(),
            load: m.load.map(|l| l.ratio()),
            families: &m.families,
        }
    })));
    text.push_str(&crate::metrics::render_process());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `GET /healthz`.
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`.
pub(super) async fn readyz(State(state): State<AdminState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Unknown routes.
pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see the admin API reference in the README".into())
}
