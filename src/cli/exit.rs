//! How a command ends: the problems of a config that does not load (exit 64) or another
//! failure (exit 1), on stderr.

use std::io::Write;
use std::process::ExitCode;

use crate::EXIT_BAD_CONFIG;
use crate::config::ConfigErrors;

/// `--log-json` was given: problems are printed as JSON lines too.
pub(crate) static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints every problem of a config that does not load; exit 64. With `--log-json`, one
/// JSON object per problem (`level`, `file`, `line`, `path`, `message`) and a summary.
pub(crate) fn report(errors: &ConfigErrors) -> ExitCode {
    let mut stderr = std::io::stderr();
    let json = JSON.load(std::sync::atomic::Ordering::Relaxed);
    for error in errors.iter() {
        if json {
            let line = serde_json::json!({
                "level": "ERROR",
                "file": error.file.display().to_string(),
                "line": error.line,
                "path": error.path,
                "message": error.message,
            });
            let _ = writeln!(stderr, "{line}");
        } else {
            let _ = writeln!(stderr, "error: {error}");
        }
    }
    if json {
        let summary = serde_json::json!({
            "level": "ERROR",
            "message": format!("{} problem(s) found", errors.len()),
            "problems": errors.len(),
        });
        let _ = writeln!(stderr, "{summary}");
    } else {
        let _ = writeln!(stderr, "{} problem(s) found", errors.len());
    }
    ExitCode::from(EXIT_BAD_CONFIG)
}

/// Prints an error; exit 1.
pub(crate) fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "Error: {error}");
    ExitCode::FAILURE
}

/// How the binary ends the process at once ([`set_stop_at_once`]).
static AT_ONCE: std::sync::OnceLock<fn() -> !> = std::sync::OnceLock::new();

/// Sets how `gto run` ends the process once stopped: the binary's `_exit(0)`, which runs
/// no exit handlers. Once per process; later calls do nothing. (The library has no
/// `unsafe` code.)
pub fn set_stop_at_once(exit: fn() -> !) {
    let _ = AT_ONCE.set(exit);
}

/// Ends `gto run` with exit 0 once it has stopped in order (listeners shut, state and
/// signatures written, logs on stderr, which is unbuffered), without joining its idle
/// threads or, when the binary set it ([`set_stop_at_once`]), running the exit handlers
/// (the allocator handing its pages back, range by range). Under load those took
/// milliseconds, all of them added to a restart's silence.
pub(crate) fn stopped() -> ! {
    match AT_ONCE.get() {
        Some(exit) => exit(),
        None => std::process::exit(0),
    }
}
