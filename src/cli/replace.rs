//! `gto replace --config FILE [--pid PID]`: replaces the running server with the binary
//! at its path (after an upgrade, the new one) without losing a query
//! ([`crate::handover`]), and reports the outcome: exit 0 once the new process serves
//! and the old one has exited, 1 when the replacement failed (the running server goes on
//! serving; the log says why), 69 when the outcome cannot be learned.
//!
//! It sends SIGUSR2 to the server (`--pid`, else the pid `GET /v1/status` reports) and
//! watches the process and `instance.replacement` of `GET /v1/status`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::reload::{Target, block_on, request, unavailable};

/// How long the replacement is waited for: its config and zones load meanwhile.
const WAIT: Duration = Duration::from_secs(120);

/// Runs `gto replace`.
pub(super) fn replace(config: &Path, pid: Option<i32>) -> ExitCode {
    block_on(async {
        let target = match Target::of(config) {
            Ok(target) => target,
            Err(message) => return unavailable(&message),
        };
        let first = match &target {
            Some(target) => status(target).await.ok(),
            None => None,
        };
        let Some(pid) = pid.or_else(|| {
            first
                .as_ref()
                .and_then(|s| s.pointer("/instance/pid"))
                .and_then(serde_json::Value::as_i64)
                .and_then(|pid| i32::try_from(pid).ok())
        }) else {
            return unavailable(
                "the server's pid is unknown: give --pid (its admin API did not answer)",
            );
        };
        let before = first
            .as_ref()
            .and_then(|s| s.pointer("/instance/replacement/number"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if let Err(error) = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGUSR2,
        ) {
            return unavailable(&format!("cannot signal process {pid}: {error}"));
        }
        let waiting = async {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if !running(pid) {
                    return Ok(());
                }
                let Some(target) = &target else {
                    continue;
                };
                // Either process may answer (they share the listener): only the old
                // one's report of this attempt's failure counts.
                let Ok(now) = status(target).await else {
                    continue;
                };
                let replacement = &now["instance"]["replacement"];
                let answered_by_old =
                    now.pointer("/instance/pid").and_then(|p| p.as_i64()) == Some(i64::from(pid));
                if answered_by_old
                    && replacement["number"].as_u64().unwrap_or(0) > before
                    && replacement["state"] == "failed"
                {
                    return Err(replacement["reason"]
                        .as_str()
                        .unwrap_or("unknown")
                        .to_string());
                }
            }
        };
        match tokio::time::timeout(WAIT, waiting).await {
            Ok(Ok(())) => {
                let new = match &target {
                    Some(target) => status(target)
                        .await
                        .ok()
                        .and_then(|s| s.pointer("/instance/pid").and_then(|p| p.as_i64())),
                    None => None,
                };
                let _ = match new {
                    Some(new) => writeln!(std::io::stdout(), "replaced: pid {pid} by pid {new}"),
                    None => writeln!(std::io::stdout(), "replaced: pid {pid} has handed over"),
                };
                ExitCode::SUCCESS
            }
            Ok(Err(reason)) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "error: the replacement failed: {reason}\n\
                     pid {pid} goes on serving; its log has the replacement's problems"
                );
                ExitCode::FAILURE
            }
            Err(_) => unavailable(&format!(
                "pid {pid} still runs after {} s: see its log",
                WAIT.as_secs()
            )),
        }
    })
}

/// `GET /v1/status` as JSON.
async fn status(target: &Target) -> Result<serde_json::Value, String> {
    let (code, body) = request(target.admin, "GET", "/v1/status", None, None).await?;
    if code != 200 {
        return Err(format!("GET /v1/status answered {code}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET /v1/status: {e}"))
}

/// Whether `pid` runs (an exited process not yet reaped by its parent does not).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
