//! The status page at `/` on the admin listener: read-only, rendered on the server (it
//! reads without JavaScript), with nothing fetched from elsewhere. A few lines of script
//! keep it live: on every event from `/v1/events` they fetch `/?fragment=1` (the same
//! rendering, without the frame) and swap it in.
//!
//! It shows the instance and, with a fleet, every instance and whether its config
//! matches; every GSLB name with its pool, policy and members — health (and each voter's
//! verdict), since when, last check and error, drain and its expiry, load and smoothed
//! load, answer share; the recent events; and an explain form whose result is rendered by
//! the same code as `GET /v1/explain`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AdminState;
use crate::health::EndpointStatus;
use crate::routing::EndpointKey;
use crate::time::rfc3339;

/// `GET /` query: the explain form's fields, and `fragment` for the live update.
#[derive(Debug, Default, Deserialize)]
pub(super) struct PageQuery {
    fragment: Option<u8>,
    name: Option<String>,
    client: Option<String>,
    #[serde(rename = "type")]
    qtype: Option<String>,
}

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}\
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.up{color:#070}.down{color:#b00;font-weight:bold}.drained{color:#a60}\
.muted{color:#777}code{font-size:.95em}form input{margin-right:.5em}";

/// The page's live updates: each event re-reads the fragment (one read at a time, a last
/// one after a busy read). The page is live once its stream is open, not when the script
/// runs: the server subscribes before it answers, so nothing after `onopen` is missed, and
/// each (re)open re-reads once for what changed between the page's render and the stream.
const SCRIPT: &str = "(function(){if(!window.EventSource)return;\
var busy=false,again=false;function refresh(){if(busy){again=true;return}busy=true;\
fetch('/?fragment=1'+location.search.replace(/^\\?/,'&')).then(function(r){return r.text()})\
.then(function(t){document.getElementById('live').innerHTML=t}).finally(function(){busy=false;if(again){again=false;refresh()}})}\
var s=new EventSource('/v1/events');s.onmessage=refresh;setInterval(refresh,5000);\
['health','drain','reload','watermark','fleet','drift','reset'].forEach(function(k){s.addEventListener(k,refresh)});\
s.onopen=function(){refresh();document.documentElement.setAttribute('data-live','on')}})();";

/// The page's Content-Security-Policy: its own inline script and style (by hash), fetches
/// and the event stream to this origin, forms to this origin, no framing.
pub(super) fn content_security_policy() -> &'static str {
    static POLICY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        use base64::Engine;
        use sha2::{Digest, Sha256};
        let hash = |text: &str| {
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
        };
        format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
             connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
             frame-ancestors 'none'",
            hash(SCRIPT),
            hash(STYLE)
        )
    })
}

/// `GET /`.
pub(super) async fn page(
    State(state): State<AdminState>,
    Query(query): Query<PageQuery>,
) -> Response {
    let body = render(&state, &query).await;
    let html = if query.fragment == Some(1) {
        body
    } else {
        format!(
            "<!doctype html><html lang=en><head><meta charset=utf-8>\
             <meta name=viewport content=\"width=device-width\"><title>gto status</title>\
             <style>{STYLE}</style></head><body><h1>gto</h1><div id=live>{body}</div>\
             <script>{SCRIPT}</script></body></html>"
        )
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// The page's content (also the live fragment).
pub(super) async fn render(state: &AdminState, query: &PageQuery) -> String {
    let snapshot = state.routing.load_full();
    let statuses = state.health.status().await;
    let by_key: HashMap<&EndpointKey, &EndpointStatus> =
        statuses.iter().map(|s| (&s.key, s)).collect();
    let mut out = String::with_capacity(16 * 1024 + statuses.len() * 400);

    // The instance, and the fleet.
    let identity = snapshot
        .identity
        .as_ref()
        .map(|id| String::from_utf8_lossy(id).into_owned());
    // The fleet's view, read once for the instance's id and the fleet's table.
    let fleet = state.fleet.as_ref().map(crate::cluster::Fleet::status_json);
    let instance = fleet
        .as_ref()
        .and_then(|view| view["instance"].as_str().map(str::to_string));
    let _ = write!(
        out,
        "<h2>Instance</h2><table><tr><th>instance</th><td id=instance>{}</td></tr>\
         <tr><th>identity (NSID)</th><td>{}</td></tr>\
         <tr><th>version</th><td>{} <span class=muted>commit {}, built {}</span></td></tr>\
         <tr><th>started</th><td>{}</td></tr><tr><th>config digest</th><td><code>{}</code></td></tr>\
         <tr><th>snapshot generation</th><td id=generation>{}</td></tr></table>",
        esc(instance.as_deref().unwrap_or("(no fleet)")),
        esc(identity.as_deref().unwrap_or("(none)")),
        esc(env!("CARGO_PKG_VERSION")),
        esc(env!("GTO_COMMIT")),
        esc(env!("GTO_BUILD_DATE")),
        rfc3339(state.started),
        esc(state.reloader.digest().as_str()),
        snapshot.generation
    );
    if let Some(view) = &fleet {
        fleet_section(&mut out, view);
    }

    // Every GSLB name and its members.
    gslb_section(&mut out, &snapshot, &by_key);

    // Recent events.
    let (recent, _) = state
        .events
        .since(state.events.last_id().saturating_sub(30));
    out.push_str("<h2>Recent events</h2><ul id=events>");
    for event in recent.iter().rev() {
        let _ = write!(
            out,
            "<li data-event=\"{}\"><span class=muted>#{} {}</span> <b>{}</b> {}</li>",
            event.id,
            event.id,
            esc(&event.at),
            event.kind,
            esc(&event_text(&event.data))
        );
    }
    out.push_str("</ul>");

    explain_section(&mut out, &snapshot, query);
    out
}

/// "12 s ago (2026-12-06T01:02:03Z)" for an instance's last heartbeat (the page
/// refreshes itself every few seconds, so the age stays current).
fn seen_ago(instance: &serde_json::Value) -> String {
    let at = esc(instance["last_seen"].as_str().unwrap_or_default());
    match instance["last_seen_seconds_ago"].as_u64() {
        Some(ago) => {
            format!("<span data-seen-ago={ago}>{ago} s ago</span> <span class=muted>({at})</span>")
        }
        None => at,
    }
}

/// An event's data in words: `pool/member` first, then `key: value` for the rest
/// (strings unquoted, lists joined), not raw JSON.
fn event_text(data: &serde_json::Value) -> String {
    let Some(fields) = data.as_object() else {
        return plain(data);
    };
    let mut parts = Vec::new();
    if let (Some(pool), Some(member)) = (fields.get("pool"), fields.get("member")) {
        parts.push(format!("{}/{}", plain(pool), plain(member)));
    }
    if let (Some(from), Some(to)) = (fields.get("from"), fields.get("to")) {
        parts.push(format!("{} \u{2192} {}", plain(from), plain(to)));
    }
    for (key, value) in fields {
        if matches!(key.as_str(), "pool" | "member" | "from" | "to") || value.is_null() {
            continue;
        }
        parts.push(format!("{key}: {}", plain(value)));
    }
    parts.join(", ")
}

/// A JSON value as text: strings without quotes, arrays joined, objects as `k=v`.
fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(" "),
        serde_json::Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// The fleet's instances: version, listeners, heartbeat and config drift.
fn fleet_section(out: &mut String, view: &serde_json::Value) {
    let _ = write!(
        out,
        "<h2>Fleet <span class=muted>{}</span></h2><p>etcd: {}; config drift: {}</p>\
         <table><tr><th>instance</th><th>version</th><th>listen</th><th>started</th>\
         <th>last seen</th><th>config</th></tr>",
        esc(view["name"].as_str().unwrap_or_default()),
        if view["connected"] == true {
            "<span class=up>connected</span>"
        } else {
            "<span class=down>unreachable</span>"
        },
        if view["config_drift"] == true {
            "<span class=down>yes</span>"
        } else {
            "no"
        },
    );
    for instance in view["instances"].as_array().into_iter().flatten() {
        let matches = instance["config_matches"] == true;
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(instance["instance"].as_str().unwrap_or_default()),
            esc(instance["version"].as_str().unwrap_or_default()),
            esc(&instance["listen"].to_string()),
            esc(instance["started"].as_str().unwrap_or_default()),
            if instance["alive"] == false {
                format!(
                    "<span class=down>{} (no heartbeat)</span>",
                    seen_ago(instance)
                )
            } else {
                seen_ago(instance)
            },
            if matches {
                "same".to_string()
            } else {
                format!(
                    "<span class=down>differs: {}</span>",
                    esc(&instance["config_differs"]
                        .as_array()
                        .map(|sections| {
                            sections
                                .iter()
                                .filter_map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default())
                )
            },
        );
    }
    out.push_str("</table>");
}

/// Every GSLB name and its members, with their answer shares.
fn gslb_section(
    out: &mut String,
    snapshot: &crate::routing::Snapshot,
    by_key: &HashMap<&EndpointKey, &EndpointStatus>,
) {
    out.push_str("<h2>GSLB names</h2>");
    for service in &snapshot.services {
        let node = snapshot.gslb_node(&service.name);
        let members = node.map(|n| n.members.as_slice()).unwrap_or_default();
        let total: u64 = members
            .iter()
            .map(|m| m.answered.load(Ordering::Relaxed))
            .sum();
        let selection = match node.map(|n| n.mode) {
            Some(crate::routing::Selection::Normal) | None => {
                "<span class=up data-selection=normal>normal</span>".to_string()
            }
            Some(crate::routing::Selection::FailOpen) => {
                "<span class=down data-selection=fail-open>\
                 fail open: no endpoint can serve, every one is answered</span>"
                    .to_string()
            }
            Some(crate::routing::Selection::Fallback) => {
                "<span class=down data-selection=fallback>\
                 fallback: no endpoint can serve, the fallback pool is answered</span>"
                    .to_string()
            }
            Some(crate::routing::Selection::Empty) => "<span class=down data-selection=empty>\
                 empty: no endpoint can serve, NODATA</span>"
                .to_string(),
        };
        let _ = write!(
            out,
            "<h3>{} <span class=muted>pool {}, policy {}, {} per answer, TTL {}</span></h3>\
             <p>selection: {selection}</p>\
             <table class=members><tr><th>member</th><th>addresses</th><th>health</th><th>in answers</th>\
             <th>overloaded</th><th>since</th><th>last check</th><th>drain</th><th>load</th><th>smoothed</th>\
             <th>share</th><th>voters</th><th>round trip</th></tr>",
            esc(&service.name.to_string()),
            esc(&service.pool),
            service.policy.as_str(),
            service.answers,
            service.ttl
        );
        for member in members {
            let Some(status) = by_key.get(&member.key) else {
                continue;
            };
            let answered = member.answered.load(Ordering::Relaxed);
            let share = if total == 0 {
                0.0
            } else {
                answered as f64 / total as f64
            };
            member_row(out, status, member, share);
        }
        out.push_str("</table>");
    }
}

/// The explain form and, when it was filled in, the decision for that query.
fn explain_section(out: &mut String, snapshot: &crate::routing::Snapshot, query: &PageQuery) {
    let name = query.name.as_deref().unwrap_or("");
    let client = query.client.as_deref().unwrap_or("");
    let qtype = query.qtype.as_deref().unwrap_or("A");
    let _ = write!(
        out,
        "<h2>Explain</h2><form method=get action=\"/\"><label>name <input name=name value=\"{}\" size=30></label>\
         <label>client <input name=client value=\"{}\" size=20></label>\
         <label>type <input name=type value=\"{}\" size=5></label><button>explain</button></form>",
        esc(name),
        esc(client),
        esc(qtype)
    );
    if !name.is_empty() && !client.is_empty() {
        match crate::routing::explain::parse_question(name, Some(qtype), client) {
            Ok((name, qtype, client)) => {
                let explanation = crate::routing::explain::explain(snapshot, &name, qtype, client);
                let _ = write!(
                    out,
                    "<div id=explained><p>{} gets <b>{}</b>: <code id=explain-answers>{}</code></p>",
                    esc(&client.to_string()),
                    esc(&explanation.rcode),
                    esc(&explanation.answers.join(" "))
                );
                if let Some(gslb) = &explanation.gslb {
                    out.push_str("<ol>");
                    for candidate in &gslb.candidates {
                        let _ = write!(
                            out,
                            "<li>{} ({}){}{}</li>",
                            esc(&candidate.member),
                            candidate.health,
                            if candidate.drained { ", drained" } else { "" },
                            if candidate.overloaded {
                                ", overloaded"
                            } else {
                                ""
                            }
                        );
                    }
                    out.push_str("</ol>");
                }
                out.push_str("</div>");
            }
            Err(error) => {
                let _ = write!(out, "<p class=down>{}</p>", esc(&error.to_string()));
            }
        }
    }
}

fn member_row(
    out: &mut String,
    status: &EndpointStatus,
    member: &crate::routing::Endpoint,
    share: f64,
) {
    let health = status.health.as_str();
    // A drained member is not shown green: it gets no new clients.
    let class = if status.drain.is_some() && status.health == crate::health::state::Health::Up {
        "drained"
    } else {
        health
    };
    let shown = if class == "drained" {
        "up, drained"
    } else {
        health
    };
    let addresses: Vec<String> = member.addresses.iter().map(ToString::to_string).collect();
    let in_answers = match (member.available, member.withheld.v4, member.withheld.v6) {
        (false, _, _) => "<span class=down>no</span>",
        (true, true, _) => "<span class=drained>AAAA only</span>",
        (true, _, true) => "<span class=drained>A only</span>",
        (true, false, false) => "<span class=up>yes</span>",
    };
    let overloaded = if member.overloaded {
        "<span class=drained>yes</span>"
    } else {
        "no"
    };
    let drain = match status.drain {
        // A maintenance window not yet begun.
        None => status
            .window
            .as_ref()
            .map(|w| {
                format!(
                    "<span class=muted>window from {}{}</span>",
                    rfc3339(w.from),
                    w.until
                        .map(|u| format!(" until {}", rfc3339(u)))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default(),
        Some(drain) => format!(
            "<span class=drained>drained</span>{}{}{}",
            drain
                .until
                .map(|u| format!(" until {}", rfc3339(u)))
                .unwrap_or_default(),
            status
                .drain_note
                .by
                .as_deref()
                .map(|by| format!(" by {}", esc(by)))
                .unwrap_or_default(),
            status
                .drain_note
                .reason
                .as_deref()
                .map(|reason| format!(": {}", esc(reason)))
                .unwrap_or_default()
        ),
    };
    let load = status
        .load
        .map(|l| format!("{}/{}", l.sessions, l.capacity))
        .unwrap_or_default();
    let smoothed = status
        .load_smoothed
        .map(|l| format!("{:.0} %", l * 100.0))
        .unwrap_or_default();
    let check = match (&status.last_check, &status.last_error) {
        (Some(at), Some(error)) => {
            format!("{} <span class=down>{}</span>", rfc3339(*at), esc(error))
        }
        (Some(at), None) => rfc3339(*at),
        (None, _) => "<span class=muted>none yet</span>".into(),
    };
    // Each address family's own check, when probed apart (A follows v4, AAAA v6).
    let families: String = status
        .families
        .iter()
        .map(|f| {
            let health = f.health.as_str();
            let error = f
                .last_error
                .as_deref()
                .map(|e| format!(": {}", esc(e)))
                .unwrap_or_default();
            format!(
                "<br><span class={health} data-family=\"{}\">{} {health}{error}</span>",
                f.family.as_str(),
                f.family.as_str()
            )
        })
        .collect();
    let now = crate::time::unix(std::time::SystemTime::now());
    let voters: Vec<String> = status
        .votes
        .iter()
        .map(|(voter, vote)| {
            format!(
                "{} {} ({} s)",
                esc(voter),
                if vote.up { "up" } else { "down" },
                now.saturating_sub(vote.at)
            )
        })
        .collect();
    let voters = if status.fleet {
        format!("own {}; {}", status.local.as_str(), voters.join(", "))
    } else {
        String::new()
    };
    // Each vantage's smoothed round trip (what latency ranking reads).
    let rtt: Vec<String> = member
        .rtt
        .iter()
        .map(|r| {
            format!(
                "<span data-vantage=\"{}\">{}{} {:.1} ms</span>",
                esc(&r.vantage),
                esc(&r.vantage),
                r.region
                    .as_deref()
                    .map(|region| format!(" ({})", esc(region)))
                    .unwrap_or_default(),
                f64::from(r.micros) / 1000.0
            )
        })
        .collect();
    let name = format!(
        "{}{}",
        esc(&status.key.member),
        if member.runtime {
            " <span class=muted>(run-time)</span>"
        } else {
            ""
        }
    );
    let _ = write!(
        out,
        "<tr data-member=\"{}\" data-health=\"{health}\" data-drained=\"{}\" data-in-answers=\"{}\"><td>{}</td><td>{}</td>\
         <td class={class}>{shown}{}{families}</td><td>{in_answers}</td><td>{overloaded}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{:.0} %</td><td>{}</td><td class=rtt>{}</td></tr>",
        esc(&status.key.member),
        status.drain.is_some(),
        member.available,
        name,
        esc(&addresses.join(" ")),
        if status.stale {
            " <span class=muted>(stale)</span>"
        } else {
            ""
        },
        rfc3339(status.since),
        check,
        drain,
        load,
        smoothed,
        share * 100.0,
        voters,
        rtt.join("<br>")
    );
}
