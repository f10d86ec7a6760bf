//! `gto reload --config FILE [--pid PID]`: has the running server read its config and
//! zones again, waits for the outcome and reports it: exit 0 when applied (the changes on
//! stdout), 64 when refused (every problem on stderr; the running config keeps serving),
//! 69 when the outcome cannot be learned. What the packaged unit's `ExecReload` runs, so
//! `systemctl reload gto` fails when the config is refused.
//!
//! With `--pid` (the unit passes `$MAINPID`) it sends SIGHUP and watches the admin API's
//! `GET /v1/status` (reads need no token) until `last_reload.number` grows; without it,
//! it asks `POST /v1/reload` with the token of `[admin] token_file`. The admin address and
//! token come from the config file, read leniently: the file may be the broken one. With
//! the admin API off there is no outcome to watch: the config is loaded here first (a
//! refused one exits 64 with its problems, and no signal is sent), then SIGHUP alone.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// How long the outcome of a reload is waited for.
const WAIT: Duration = Duration::from_secs(60);
/// Exit status when the outcome cannot be learned (EX_UNAVAILABLE).
pub(super) const EXIT_UNAVAILABLE: u8 = 69;

/// Runs `future` on a runtime of its own (a client command's); exit 69 without one.
pub(super) fn block_on(future: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(future),
        Err(error) => unavailable(&format!("no runtime: {error}")),
    }
}

/// Runs `gto reload`.
pub(super) fn reload(config: &Path, pid: Option<i32>) -> ExitCode {
    block_on(async {
        let target = match (Target::of(config), pid) {
            (Ok(Some(target)), _) => target,
            // No admin API to ask: the config is checked here first (a refused one is
            // reported and not signalled), then the signal alone, as `kill -HUP` would.
            (Ok(None), Some(pid)) => {
                let source = crate::ConfigSource::File(config.to_path_buf());
                let checked = tokio::task::spawn_blocking(move || {
                    source.load_within(crate::loaded::LOAD_TIMEOUT)
                })
                .await;
                if let Ok(Err(errors)) = checked {
                    let mut stderr = std::io::stderr();
                    for error in errors.iter() {
                        let _ = writeln!(stderr, "error: {error}");
                    }
                    let _ = writeln!(
                        stderr,
                        "reload refused: {} problem(s) found (checked here; no signal sent); \
                         the running config keeps serving",
                        errors.len()
                    );
                    return ExitCode::from(crate::EXIT_BAD_CONFIG);
                }
                return match hang_up(pid) {
                    Ok(()) => {
                        let _ = writeln!(
                            std::io::stdout(),
                            "sent SIGHUP to {pid}; the config checks here, and the admin API \
                             is off ([admin] enabled = false), so the outcome is only in the log"
                        );
                        ExitCode::SUCCESS
                    }
                    Err(message) => unavailable(&message),
                };
            }
            (Ok(None), None) => {
                return unavailable(
                    "[admin] enabled = false: the outcome cannot be learned; give --pid to \
                     send SIGHUP, and read the log",
                );
            }
            (Err(message), _) => return unavailable(&message),
        };
        let outcome = match pid {
            Some(pid) => by_signal(&target, pid).await,
            None => by_request(&target).await,
        };
        match outcome {
            Ok(outcome) => report(&outcome),
            Err(message) => unavailable(&message),
        }
    })
}

/// Where the running server's admin API is, and its token, from the config file.
pub(super) struct Target {
    pub(super) admin: SocketAddr,
    pub(super) token: Option<String>,
}

impl Target {
    /// None when the admin API is off.
    pub(super) fn of(config: &Path) -> Result<Option<Self>, String> {
        let text = crate::files::read_to_string(config, 1 << 20)
            .map_err(|e| format!("{}: {e}", config.display()))?;
        // Only [admin] matters here, and the rest of the file may be what is wrong.
        let value: toml::Table = toml::from_str(&text).unwrap_or_default();
        let admin = value.get("admin").and_then(toml::Value::as_table);
        if admin
            .and_then(|a| a.get("enabled"))
            .and_then(toml::Value::as_bool)
            == Some(false)
        {
            return Ok(None);
        }
        let listen = admin
            .and_then(|a| a.get("listen"))
            .and_then(toml::Value::as_str)
            .unwrap_or(crate::config::compile::DEFAULT_ADMIN_LISTEN);
        let admin: SocketAddr = listen
            .parse()
            .map_err(|_| format!("[admin] listen {listen:?} is not an address:port"))?;
        let base = config.parent().unwrap_or(Path::new("."));
        let token = value
            .get("admin")
            .and_then(|a| a.get("token_file"))
            .and_then(toml::Value::as_str)
            .map(|file| {
                let file = crate::config::located::expand_credentials(file).ok_or_else(|| {
                    "names ${CREDENTIALS_DIRECTORY}, which is not set".to_string()
                })?;
                crate::files::read_to_string(&base.join(file), 1 << 16)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| e.to_string())
            })
            .transpose()
            .map_err(|e| format!("[admin] token_file: {e}"))?;
        // A wildcard admin address is asked on loopback.
        let admin = if admin.ip().is_unspecified() {
            let ip: std::net::IpAddr = if admin.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            SocketAddr::new(ip, admin.port())
        } else {
            admin
        };
        Ok(Some(Self { admin, token }))
    }
}

/// A reload's outcome as the admin API reports it.
#[derive(Debug, serde::Deserialize)]
struct Outcome {
    #[serde(default)]
    number: u64,
    result: String,
    #[serde(default)]
    details: Vec<String>,
    #[serde(default)]
    needs_restart: Vec<String>,
}

/// SIGHUP to `pid`, then `GET /v1/status` until a newer reload's outcome shows.
/// When the admin API cannot be read first, the signal is still sent (the reload happens,
/// as with `kill -HUP`), and the outcome is unknown.
async fn by_signal(target: &Target, pid: i32) -> Result<Outcome, String> {
    let before = match last_reload(target).await {
        Ok(last) => last.map_or(0, |o| o.number),
        Err(message) => {
            hang_up(pid)?;
            return Err(format!(
                "sent SIGHUP to {pid}, but the outcome cannot be learned: {message}"
            ));
        }
    };
    hang_up(pid)?;
    let waiting = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            match last_reload(target).await {
                Ok(Some(outcome)) if outcome.number > before => return Ok(outcome),
                Ok(_) => {}
                Err(message) => return Err(message),
            }
        }
    };
    tokio::time::timeout(WAIT, waiting)
        .await
        .map_err(|_| format!("no reload outcome within {} s", WAIT.as_secs()))?
}

/// SIGHUP to the server.
fn hang_up(pid: i32) -> Result<(), String> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|e| format!("cannot signal process {pid}: {e}"))
}

/// `last_reload` of `GET /v1/status`.
async fn last_reload(target: &Target) -> Result<Option<Outcome>, String> {
    let (status, body) = request(target.admin, "GET", "/v1/status", None, None).await?;
    if status != 200 {
        return Err(format!("GET /v1/status answered {status}"));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("GET /v1/status: {e}"))?;
    match value.pointer("/instance/last_reload") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(outcome) => serde_json::from_value(outcome.clone())
            .map(Some)
            .map_err(|e| format!("GET /v1/status: last_reload: {e}")),
    }
}

/// `POST /v1/reload` with the token: the outcome is the answer.
async fn by_request(target: &Target) -> Result<Outcome, String> {
    let Some(token) = &target.token else {
        return Err(
            "no [admin] token_file in the config: give the server's PID (--pid) to reload it \
             by signal"
                .into(),
        );
    };
    let (status, body) = request(target.admin, "POST", "/v1/reload", Some(token), None).await?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("POST /v1/reload answered {status}: {e}"))?;
    match status {
        200 => Ok(Outcome {
            number: 0,
            result: "ok".into(),
            details: strings(&value["changes"]),
            needs_restart: strings(&value["needs_restart"]),
        }),
        422 => Ok(Outcome {
            number: 0,
            result: "rejected".into(),
            details: strings(&value["problems"])
                .into_iter()
                .chain(strings(&value["errors"]))
                .collect(),
            needs_restart: Vec::new(),
        }),
        _ => Err(format!(
            "POST /v1/reload answered {status}: {}",
            value["error"].as_str().unwrap_or("")
        )),
    }
}

/// The strings of a JSON array (other items as JSON text).
pub(super) fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map_or_else(|| item.to_string(), ToString::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One HTTP/1.1 request to the admin API; the status and body.
pub(super) async fn request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<(u16, Bytes), String> {
    let unreachable = |e: &dyn std::fmt::Display| format!("admin API at {admin}: {e}");
    let exchange = async {
        let mut sender = connect(admin).await?;
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, admin.to_string());
        if let Some(token) = token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(body.map(Bytes::from).unwrap_or_default()))
            .map_err(|e| unreachable(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("admin API at {admin}: no answer within 10 s"))?
}

/// An HTTP/1.1 connection to the admin API, ready for requests.
pub(super) async fn connect(
    admin: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let unreachable = |e: &dyn std::fmt::Display| format!("admin API at {admin}: {e}");
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .map_err(|e| unreachable(&e))?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Prints the outcome; exit 0 when applied, 64 when refused.
fn report(outcome: &Outcome) -> ExitCode {
    if outcome.result == "ok" {
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "reloaded");
        for change in &outcome.details {
            let _ = writeln!(stdout, "  {change}");
        }
        for setting in &outcome.needs_restart {
            let _ = writeln!(stdout, "  needs a restart: {setting}");
        }
        return ExitCode::SUCCESS;
    }
    let mut stderr = std::io::stderr();
    for problem in &outcome.details {
        let _ = writeln!(stderr, "error: {problem}");
    }
    let _ = writeln!(
        stderr,
        "reload refused: {} problem(s) found; the running config keeps serving",
        outcome.details.len()
    );
    ExitCode::from(crate::EXIT_BAD_CONFIG)
}

pub(super) fn unavailable(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "Error: {message}");
    ExitCode::from(EXIT_UNAVAILABLE)
}
