//! `gto ctl`: the command-line client of a running server's admin API, for the daily work
//! of an operator (as `gdnsdctl`, `knotc` or `pdns_control` are for theirs): the status as
//! a table, drains, explain, reload, the event stream, and the fleet's agreement.
//!
//! Where the server is: `--api ADDR`, else `GTO_ADMIN`, else the `[admin] listen` of
//! `--config FILE` (default `/etc/gto/gto.toml` when it exists), else 127.0.0.1:8053. The
//! token: `--token-file`, else `GTO_TOKEN_FILE`, else the config's `token_file`. Reads need
//! no token. `--json` prints the API's JSON instead of text.
//!
//! Exit status: 0 done; 1 the server refused the request (its reason on stderr; for
//! `check-fleet`, the fleet disagrees); 2 bad usage; 64 a reload refused (the config's
//! problems on stderr); 69 the server cannot be reached; 77 the token is missing or lacks
//! the role.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::reload::{Target, block_on, connect, request, strings, unavailable};

/// Exit status when the token is missing or lacks the role (EX_NOPERM).
const EXIT_NO_PERMISSION: u8 = 77;

/// The config file read for the admin address and token when none is given.
const DEFAULT_CONFIG: &str = "/etc/gto/gto.toml";

/// `gto ctl`'s options and command.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Where the server is: --api, else GTO_ADMIN, else the [admin] listen of --config (default \
/etc/gto/gto.toml when it exists), else 127.0.0.1:8053. The token: --token-file, else \
GTO_TOKEN_FILE, else the config's token_file. Reads need no token; drain and undrain need \
an operate token, reload an admin one.

Exit status: 0 done; 1 the server refused the request (its reason on stderr), or \
check-fleet found an instance gone or with another config; 2 bad usage; 64 a reload \
refused (the config's problems on stderr, the running config keeps serving); 69 the \
server cannot be reached; 77 the token is missing or lacks the role.")]
pub struct Ctl {
    /// The admin API's address (default: GTO_ADMIN, else the config's admin listen address).
    #[arg(long = "api", global = true, value_name = "ADDR")]
    api: Option<SocketAddr>,
    /// A file holding the admin token (default: GTO_TOKEN_FILE, else the config's
    /// token_file).
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The server's config file, for the admin address and token (default
    /// /etc/gto/gto.toml when it exists).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Print the API's JSON rather than text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

/// What `gto ctl` does.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Every endpoint: pool, member, health, drain (until, by whom, why), load, last error;
    /// and the fleet when there is one.
    Status,
    /// Take a member (or every member of a site, region or pool) out of new answers, now
    /// or from --at (a maintenance window); fleet-wide in a fleet.
    Drain {
        /// The member's pool (with MEMBER).
        pool: Option<String>,
        /// The member.
        member: Option<String>,
        /// Every member of a site, region or pool instead of one.
        #[command(flatten)]
        selection: Selection,
        /// Start the drain at this time (RFC 3339): a maintenance window.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// End the drain after this long ("30m", "2h"; from --at when given).
        #[arg(long = "for", value_name = "DURATION", conflicts_with = "until")]
        duration: Option<String>,
        /// End the drain at this time (RFC 3339, "2026-12-06T18:00:00Z").
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Why, for the audit trail and the status.
        #[arg(long)]
        reason: Option<String>,
    },
    /// End a member's drain (or those of a site, region or pool), and cancel windows.
    Undrain {
        /// The member's pool (with MEMBER).
        pool: Option<String>,
        /// The member.
        member: Option<String>,
        /// Every member of a site, region or pool instead of one.
        #[command(flatten)]
        selection: Selection,
    },
    /// The answer CLIENT gets for NAME now, and why.
    Explain {
        /// The name asked for.
        name: String,
        /// The client's address, or the prefix its resolver's ECS carries.
        client: String,
        /// Record type.
        #[arg(long = "type", short = 't', default_value = "A")]
        qtype: String,
    },
    /// Have the server read its config and zones again; exit 64 with the problems when it
    /// refuses them.
    Reload,
    /// Add or remove members at run time (fleet-wide with a fleet; kept across restarts).
    #[command(subcommand)]
    Members(MembersCommand),
    /// Follow the event stream: one line per event (health, drain, reload, fleet, ...).
    Events {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Every instance of the fleet: alive, version, config digest, endpoints up; exit 1
    /// when one is not alive or runs another config.
    CheckFleet,
}

/// `gto ctl members`.
#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Add (or replace) a member of a pool, validated as the config is.
    Add {
        /// The pool.
        pool: String,
        /// The member's name.
        name: String,
        /// An address answered for it (repeat for more).
        #[arg(long = "address", required = true)]
        addresses: Vec<String>,
        /// Its weight under weighted ranking.
        #[arg(long)]
        weight: Option<i64>,
        /// Sessions it can carry.
        #[arg(long)]
        capacity: Option<i64>,
        /// Its site (data centre).
        #[arg(long)]
        site: Option<String>,
        /// Its region (location).
        #[arg(long)]
        region: Option<String>,
        /// Its latitude (with --lon).
        #[arg(long, requires = "lon", allow_hyphen_values = true)]
        lat: Option<f64>,
        /// Its longitude (with --lat).
        #[arg(long, requires = "lat", allow_hyphen_values = true)]
        lon: Option<f64>,
        /// Its own check fields over the pool's, as JSON (`{"port": 8443}`).
        #[arg(long, value_name = "JSON")]
        check: Option<String>,
    },
    /// Remove a member added at run time.
    Remove {
        /// The pool.
        pool: String,
        /// The member's name.
        name: String,
    },
}

/// Every member of a site, a region or a pool, instead of one member.
#[derive(Debug, Args)]
pub struct Selection {
    /// Every member with this `site`.
    #[arg(long, conflicts_with_all = ["region", "all_of_pool"])]
    site: Option<String>,
    /// Every member whose location has this region.
    #[arg(long, conflicts_with_all = ["site", "all_of_pool"])]
    region: Option<String>,
    /// Every member of this pool.
    #[arg(long = "pool", id = "all_of_pool", value_name = "POOL")]
    all_of_pool: Option<String>,
}

impl Selection {
    /// The selector's field and value, when one is given.
    fn selector(&self) -> Option<(&'static str, &str)> {
        match (&self.site, &self.region, &self.all_of_pool) {
            (Some(site), _, _) => Some(("site", site)),
            (_, Some(region), _) => Some(("region", region)),
            (_, _, Some(pool)) => Some(("pool", pool)),
            _ => None,
        }
    }
}

/// The API path and body of a drain or undrain: one member's, or a selection's.
fn target_of(
    action: &str,
    pool: Option<&String>,
    member: Option<&String>,
    selection: &Selection,
) -> Result<(String, serde_json::Map<String, serde_json::Value>), Failure> {
    match (pool, member, selection.selector()) {
        (Some(pool), Some(member), None) => Ok((
            format!("/v1/members/{}/{}/{action}", segment(pool), segment(member)),
            serde_json::Map::new(),
        )),
        (None, None, Some((field, value))) => {
            let mut body = serde_json::Map::new();
            body.insert(field.into(), value.into());
            Ok((format!("/v1/{action}"), body))
        }
        _ => Err(Failure::Usage(format!(
            "give POOL MEMBER, or one of --site, --region, --pool: gto ctl {action} sma fra-1 \
             | gto ctl {action} --site fra"
        ))),
    }
}

/// Runs `gto ctl`.
pub(super) fn ctl(ctl: Ctl) -> ExitCode {
    block_on(async move {
        let target = match target(&ctl) {
            Ok(target) => target,
            Err(message) => return unavailable(&message),
        };
        match run(&ctl, &target).await {
            Ok(code) => code,
            Err(Failure::Unreachable(message)) => unavailable(&message),
            Err(Failure::Usage(message)) => {
                let _ = writeln!(std::io::stderr(), "Error: {message}");
                ExitCode::from(2)
            }
            Err(Failure::Refused(status, message)) => {
                let _ = writeln!(std::io::stderr(), "Error: {message}");
                ExitCode::from(if status == 401 || status == 403 {
                    EXIT_NO_PERMISSION
                } else {
                    1
                })
            }
        }
    })
}

/// Why a command failed.
enum Failure {
    /// The server cannot be reached (69).
    Unreachable(String),
    /// The server answered with an error status and this reason.
    Refused(u16, String),
    /// The command line does not say what to do (2).
    Usage(String),
}

/// Where the server is and its token, from the flags, the environment and the config.
fn target(ctl: &Ctl) -> Result<Target, String> {
    let config = ctl.config.clone().or_else(|| {
        Path::new(DEFAULT_CONFIG)
            .exists()
            .then(|| DEFAULT_CONFIG.into())
    });
    let from_config = match &config {
        Some(config) => Target::of(config)?,
        None => None,
    };
    let admin = match (ctl.api, std::env::var("GTO_ADMIN").ok()) {
        (Some(admin), _) => admin,
        (None, Some(text)) => text
            .parse()
            .map_err(|_| format!("GTO_ADMIN {text:?} is not an address:port"))?,
        (None, None) => match &from_config {
            Some(target) => target.admin,
            None if config.is_some() => {
                return Err("the config's admin API is off ([admin] enabled = false)".into());
            }
            None => SocketAddr::from(([127, 0, 0, 1], 8053)),
        },
    };
    let token_file = ctl
        .token_file
        .clone()
        .or_else(|| std::env::var_os("GTO_TOKEN_FILE").map(PathBuf::from));
    let token = match token_file {
        Some(file) => Some(
            crate::files::read_to_string(&file, 1 << 16)
                .map(|t| t.trim().to_string())
                .map_err(|e| format!("token file {}: {e}", file.display()))?,
        ),
        None => from_config.and_then(|t| t.token),
    };
    Ok(Target { admin, token })
}

/// A request; the JSON of a 2xx answer, else why not.
async fn call(
    target: &Target,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, Failure> {
    let body = body.map(|b| b.to_string().into_bytes());
    let (status, bytes) = request(target.admin, method, path, target.token.as_deref(), body)
        .await
        .map_err(Failure::Unreachable)?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).trim().to_string())
    });
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let mut reason = value["error"]
        .as_str()
        .map(ToString::to_string)
        .unwrap_or_else(|| value.to_string());
    for problem in strings(&value["problems"]) {
        reason.push_str(&format!("\n  {problem}"));
    }
    Err(Failure::Refused(
        status,
        format!("{method} {path} answered {status}: {reason}"),
    ))
}

async fn run(ctl: &Ctl, target: &Target) -> Result<ExitCode, Failure> {
    let out = |text: &str| {
        let _ = writeln!(std::io::stdout(), "{text}");
    };
    let json = |value: &serde_json::Value| {
        out(&serde_json::to_string_pretty(value).unwrap_or_default());
    };
    match &ctl.command {
        CtlCommand::Status => {
            let status = call(target, "GET", "/v1/status", None).await?;
            if ctl.json {
                json(&status);
            } else {
                out(&status_table(&status));
            }
        }
        CtlCommand::Drain {
            pool,
            member,
            selection,
            at,
            duration,
            until,
            reason,
        } => {
            let (path, mut body) = target_of("drain", pool.as_ref(), member.as_ref(), selection)?;
            for (field, value) in [
                ("at", at),
                ("for", duration),
                ("until", until),
                ("reason", reason),
            ] {
                if let Some(value) = value {
                    body.insert(field.into(), value.clone().into());
                }
            }
            let answer = call(target, "POST", &path, Some(body.into())).await?;
            if ctl.json {
                json(&answer);
            } else {
                for endpoint in endpoints(&answer) {
                    out(&drain_line(endpoint));
                }
                warning(&answer);
            }
        }
        CtlCommand::Undrain {
            pool,
            member,
            selection,
        } => {
            let (path, body) = target_of("undrain", pool.as_ref(), member.as_ref(), selection)?;
            let body = (!body.is_empty()).then(|| body.into());
            let answer = call(target, "POST", &path, body).await?;
            if ctl.json {
                json(&answer);
            } else {
                for endpoint in endpoints(&answer) {
                    out(&format!(
                        "{}/{} undrained",
                        cell(&endpoint["pool"]),
                        cell(&endpoint["member"])
                    ));
                }
                warning(&answer);
            }
        }
        CtlCommand::Explain {
            name,
            client,
            qtype,
        } => {
            let path = format!(
                "/v1/explain?name={}&client={}&type={}",
                segment(name),
                segment(client),
                segment(qtype)
            );
            let answer = call(target, "GET", &path, None).await?;
            if ctl.json {
                json(&answer);
            } else {
                out(&explain_text(&answer));
            }
        }
        CtlCommand::Reload => {
            let (status, bytes) = request(
                target.admin,
                "POST",
                "/v1/reload",
                target.token.as_deref(),
                None,
            )
            .await
            .map_err(Failure::Unreachable)?;
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if ctl.json {
                json(&value);
            }
            return Ok(match status {
                200 => {
                    if !ctl.json {
                        out("reloaded");
                        for change in strings(&value["changes"]) {
                            out(&format!("  {change}"));
                        }
                    }
                    ExitCode::SUCCESS
                }
                422 => {
                    let mut stderr = std::io::stderr();
                    let problems: Vec<String> = strings(&value["problems"])
                        .into_iter()
                        .chain(strings(&value["errors"]))
                        .collect();
                    for problem in &problems {
                        let _ = writeln!(stderr, "error: {problem}");
                    }
                    let _ = writeln!(
                        stderr,
                        "reload refused: {} problem(s) found; the running config keeps serving",
                        problems.len()
                    );
                    ExitCode::from(crate::EXIT_BAD_CONFIG)
                }
                status => {
                    return Err(Failure::Refused(
                        status,
                        format!(
                            "POST /v1/reload answered {status}: {}",
                            value["error"].as_str().unwrap_or_default()
                        ),
                    ));
                }
            });
        }
        CtlCommand::Members(MembersCommand::Add {
            pool,
            name,
            addresses,
            weight,
            capacity,
            site,
            region,
            lat,
            lon,
            check,
        }) => {
            let mut body = serde_json::Map::new();
            body.insert("addresses".into(), addresses.clone().into());
            for (field, value) in [("weight", weight), ("capacity", capacity)] {
                if let Some(value) = value {
                    body.insert(field.into(), (*value).into());
                }
            }
            if let Some(site) = site {
                body.insert("site".into(), site.clone().into());
            }
            let mut location = serde_json::Map::new();
            if let (Some(lat), Some(lon)) = (lat, lon) {
                location.insert("lat".into(), (*lat).into());
                location.insert("lon".into(), (*lon).into());
            }
            if let Some(region) = region {
                location.insert("region".into(), region.clone().into());
            }
            if !location.is_empty() {
                body.insert("location".into(), location.into());
            }
            if let Some(check) = check {
                let check: serde_json::Value = serde_json::from_str(check)
                    .map_err(|e| Failure::Usage(format!("--check is not JSON: {e}")))?;
                body.insert("check".into(), check);
            }
            let path = format!("/v1/pools/{}/members/{}", segment(pool), segment(name));
            match call(target, "PUT", &path, Some(body.into())).await {
                Ok(answer) if ctl.json => json(&answer),
                Ok(answer) => {
                    out(&format!("{pool}/{name} added"));
                    for change in strings(&answer["changes"]) {
                        out(&format!("  {change}"));
                    }
                }
                Err(Failure::Refused(422, message)) => {
                    let _ = writeln!(std::io::stderr(), "Error: {message}");
                    return Ok(ExitCode::from(1));
                }
                Err(other) => return Err(other),
            }
        }
        CtlCommand::Members(MembersCommand::Remove { pool, name }) => {
            let path = format!("/v1/pools/{}/members/{}", segment(pool), segment(name));
            let answer = call(target, "DELETE", &path, None).await?;
            if ctl.json {
                json(&answer);
            } else {
                out(&format!("{pool}/{name} removed"));
            }
        }
        CtlCommand::Events { count } => return events(target, *count, ctl.json).await,
        CtlCommand::CheckFleet => return check_fleet(target, ctl.json).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// A path segment or query value, percent-encoded.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The endpoints a drain or undrain answered with: one (`endpoint`) or several.
fn endpoints(answer: &serde_json::Value) -> Vec<&serde_json::Value> {
    match answer["endpoints"].as_array() {
        Some(all) => all.iter().collect(),
        None => vec![&answer["endpoint"]],
    }
}

/// `POOL/MEMBER drained [until T]`, or `... drain scheduled from T [until U]`.
fn drain_line(endpoint: &serde_json::Value) -> String {
    let name = format!("{}/{}", cell(&endpoint["pool"]), cell(&endpoint["member"]));
    if let Some(window) = endpoint["window"].as_object() {
        let until = window
            .get("until")
            .and_then(|u| u.as_str())
            .map(|u| format!(" until {u}"))
            .unwrap_or_default();
        return format!(
            "{name} drain scheduled from {}{until}",
            window.get("from").map(cell).unwrap_or_default()
        );
    }
    let until = endpoint["drained_until"]
        .as_str()
        .map(|u| format!(" until {u}"))
        .unwrap_or_default();
    format!("{name} drained{until}")
}

/// A change applied but not saved (the state file could not be written).
fn warning(answer: &serde_json::Value) {
    if let Some(warning) = answer["warning"].as_str() {
        let _ = writeln!(std::io::stderr(), "warning: {warning}");
    }
}

/// Text of a JSON value in a table cell: strings bare, null as "-".
fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    std::iter::once(line(header.iter().map(|h| h.to_string()).collect()))
        .chain(rows.iter().map(|row| line(row.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `gto ctl status`: one row per endpoint, then the fleet.
fn status_table(status: &serde_json::Value) -> String {
    let rows: Vec<Vec<String>> = status["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let drain = if e["drained"] == true {
                let mut text = "drained".to_string();
                if let Some(until) = e["drained_until"].as_str() {
                    text.push_str(&format!(" until {until}"));
                }
                if let Some(by) = e["drained_by"].as_str() {
                    text.push_str(&format!(" by {by}"));
                }
                if let Some(reason) = e["drain_reason"].as_str() {
                    text.push_str(&format!(" ({reason})"));
                }
                text
            } else if let Some(window) = e["window"].as_object() {
                format!(
                    "window from {}{}",
                    window.get("from").map(cell).unwrap_or_default(),
                    window
                        .get("until")
                        .and_then(|u| u.as_str())
                        .map(|u| format!(" until {u}"))
                        .unwrap_or_default()
                )
            } else {
                "-".into()
            };
            let load = match (&e["load"]["sessions"], &e["load"]["capacity"]) {
                (serde_json::Value::Null, _) => "-".into(),
                (sessions, capacity) => format!("{}/{}", cell(sessions), cell(capacity)),
            };
            let mut health = cell(&e["health"]);
            if e["stale"] == true {
                health.push_str(" (stale)");
            }
            let mut member = cell(&e["member"]);
            if e["runtime"] == true {
                member.push_str(" (run-time)");
            }
            // In a fleet: how the voters' verdicts decided its health.
            let votes = e["votes"]["decided_by"]
                .as_str()
                .map_or_else(|| "-".to_string(), ToString::to_string);
            vec![
                cell(&e["pool"]),
                member,
                health,
                cell(&e["probe"]),
                drain,
                load,
                votes,
                cell(&e["last_error"]),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "POOL",
            "MEMBER",
            "HEALTH",
            "CHECK",
            "DRAIN",
            "LOAD",
            "VOTES",
            "LAST ERROR",
        ],
        &rows,
    );
    let instance = &status["instance"];
    text.push_str(&format!(
        "\n\ngto {} (pid {}, config {}, snapshot {})",
        cell(&instance["version"]),
        cell(&instance["pid"]),
        cell(&instance["config_digest"]),
        cell(&status["generation"])
    ));
    if let Some(cluster) = status["cluster"].as_object() {
        let rows: Vec<Vec<String>> = cluster
            .get("instances")
            .and_then(|i| i.as_array())
            .into_iter()
            .flatten()
            .map(|i| {
                vec![
                    cell(&i["instance"]),
                    if i["alive"] == true { "alive" } else { "gone" }.into(),
                    cell(&i["version"]),
                    cell(&i["config_digest"]),
                    if i["config_matches"] == true {
                        "same"
                    } else {
                        "differs"
                    }
                    .into(),
                    cell(&i["last_seen_seconds_ago"]),
                ]
            })
            .collect();
        text.push_str(&format!(
            "\nfleet {} ({}connected to etcd)\n",
            cluster.get("name").map(cell).unwrap_or_default(),
            if cluster.get("connected") == Some(&serde_json::Value::Bool(true)) {
                ""
            } else {
                "NOT "
            }
        ));
        text.push_str(&table(
            &[
                "INSTANCE",
                "STATE",
                "VERSION",
                "CONFIG",
                "VS THIS ONE",
                "SEEN S AGO",
            ],
            &rows,
        ));
    }
    text
}

/// `gto ctl explain`: the answer, then each candidate in rank order with why.
fn explain_text(explain: &serde_json::Value) -> String {
    let mut text = format!(
        "answer: {}\necs scope: {}",
        strings(&explain["answers"]).join(" "),
        cell(&explain["ecs_scope"])
    );
    if let Some(location) = explain["location"].as_object() {
        text.push_str(&format!(
            "\nclient location: {}",
            serde_json::Value::Object(location.clone())
        ));
    }
    if let Some(latency) = explain["gslb"]["latency"].as_str() {
        text.push_str(&format!("\nround trips: {latency}"));
    }
    let rows: Vec<Vec<String>> = explain["gslb"]["candidates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            vec![
                cell(&c["rank"]),
                format!("{}/{}", cell(&c["pool"]), cell(&c["member"])),
                cell(&c["health"]),
                cell(&c["distance_km"]),
                cell(&c["rtt"]["ms"]),
                cell(&c["reason"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        text.push('\n');
        text.push_str(&table(
            &["RANK", "ENDPOINT", "HEALTH", "KM", "RTT MS", "WHY"],
            &rows,
        ));
    }
    text
}

/// `gto ctl events`: the Server-Sent Events of `GET /v1/events`, one line each.
async fn events(target: &Target, count: Option<u64>, json: bool) -> Result<ExitCode, Failure> {
    use http_body_util::BodyExt;
    let unreachable = |e: &dyn std::fmt::Display| {
        Failure::Unreachable(format!("admin API at {}: {e}", target.admin))
    };
    let mut sender = connect(target.admin).await.map_err(Failure::Unreachable)?;
    let mut builder = hyper::Request::get("/v1/events")
        .header(hyper::header::HOST, target.admin.to_string())
        .header(hyper::header::ACCEPT, "text/event-stream");
    if let Some(token) = &target.token {
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = builder
        .body(http_body_util::Full::new(hyper::body::Bytes::new()))
        .map_err(|e| unreachable(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(&e))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        return Err(Failure::Refused(
            status,
            format!("GET /v1/events answered {status}"),
        ));
    }
    // On stderr, so scripts reading stdout see events only.
    let _ = writeln!(
        std::io::stderr(),
        "following the events of {} (interrupt to stop)",
        target.admin
    );
    let mut pending = String::new();
    let mut printed = 0u64;
    while count.is_none_or(|count| printed < count) {
        let Some(frame) = body.frame().await else {
            return Err(Failure::Unreachable("the event stream ended".into()));
        };
        let frame = frame.map_err(|e| unreachable(&e))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(&data));
        // Events end with a blank line.
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(line) = event_line(&event, json) else {
                continue;
            };
            let _ = writeln!(std::io::stdout(), "{line}");
            printed += 1;
            if count.is_some_and(|count| printed >= count) {
                break;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One Server-Sent Event as a line: `AT KIND key=value ...`, or its JSON. None for a
/// keep-alive comment.
fn event_line(event: &str, json: bool) -> Option<String> {
    let mut kind = None;
    let mut data = String::new();
    for line in event.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            kind = Some(value.trim().to_string());
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.trim_start());
        }
    }
    let kind = kind?;
    let value: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
    if json {
        return Some(value.to_string());
    }
    let fields = value["data"]
        .as_object()
        .map(|fields| {
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k}={}", cell(v)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| cell(&value));
    Some(format!("{} {kind} {fields}", cell(&value["at"])))
}

/// `gto ctl check-fleet`: every instance this one knows, asked for its own status.
async fn check_fleet(target: &Target, json: bool) -> Result<ExitCode, Failure> {
    let status = call(target, "GET", "/v1/status", None).await?;
    let Some(cluster) = status["cluster"].as_object() else {
        return Err(Failure::Refused(
            0,
            "this server runs no fleet (no [cluster] in its config)".into(),
        ));
    };
    let mut report = Vec::new();
    let mut agreed = true;
    for instance in cluster
        .get("instances")
        .and_then(|i| i.as_array())
        .into_iter()
        .flatten()
    {
        let alive = instance["alive"] == true;
        let same = instance["config_matches"] == true;
        // Its own view of its endpoints, when its admin API answers here.
        let own = match instance["admin"].as_str().and_then(|a| a.parse().ok()) {
            Some(admin) => {
                let other = Target { admin, token: None };
                call(&other, "GET", "/v1/status", None).await.ok()
            }
            None => None,
        };
        let (up, total) = own.as_ref().and_then(|s| s["endpoints"].as_array()).map_or(
            (None, None),
            |endpoints| {
                (
                    Some(endpoints.iter().filter(|e| e["health"] == "up").count()),
                    Some(endpoints.len()),
                )
            },
        );
        agreed &= alive && same;
        report.push(serde_json::json!({
            "instance": instance["instance"],
            "alive": alive,
            "version": instance["version"],
            "config_digest": instance["config_digest"],
            "config_matches": same,
            "config_differs": instance["config_differs"],
            "endpoints_up": up,
            "endpoints": total,
            "reachable": own.is_some(),
        }));
    }
    if json {
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "agreed": agreed, "instances": report })
            )
            .unwrap_or_default()
        );
    } else {
        let rows: Vec<Vec<String>> = report
            .iter()
            .map(|r| {
                vec![
                    cell(&r["instance"]),
                    if r["alive"] == true { "alive" } else { "gone" }.into(),
                    cell(&r["version"]),
                    cell(&r["config_digest"]),
                    if r["config_matches"] == true {
                        "same".into()
                    } else {
                        format!("differs: {}", cell(&r["config_differs"]))
                    },
                    match (&r["endpoints_up"], &r["endpoints"]) {
                        (serde_json::Value::Null, _) => "unreachable".into(),
                        (up, total) => format!("{}/{} up", cell(up), cell(total)),
                    },
                ]
            })
            .collect();
        let _ = writeln!(
            std::io::stdout(),
            "{}\n{}",
            table(
                &[
                    "INSTANCE",
                    "STATE",
                    "VERSION",
                    "CONFIG",
                    "VS THIS ONE",
                    "ENDPOINTS"
                ],
                &rows
            ),
            if agreed {
                "the fleet agrees"
            } else {
                "the fleet DISAGREES"
            }
        );
    }
    Ok(if agreed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_one_line_each() {
        let event = "id: 7\nevent: drain\ndata: {\"id\":7,\"at\":\"2026-12-06T10:00:00Z\",\"kind\":\"drain\",\"data\":{\"pool\":\"sma\",\"member\":\"fra-1\",\"until\":null}}\n\n";
        assert_eq!(
            event_line(event, false).as_deref(),
            Some("2026-12-06T10:00:00Z drain member=fra-1 pool=sma")
        );
        assert_eq!(event_line(": keep-alive\n\n", false), None);
    }

    #[test]
    fn tables_line_up_and_segments_are_encoded() {
        assert_eq!(
            table(&["A", "BB"], &[vec!["long".into(), "x".into()]]),
            "A     BB\nlong  x"
        );
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(segment("10.0.0.0/24"), "10.0.0.0%2F24");
    }
}
