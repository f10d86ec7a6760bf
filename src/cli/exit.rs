//! How a command ends: the problems of a config that does not load (exit 64) or another
//! failure (exit 1), on stderr.

use std::io::Write;
use std::process::ExitCode;

use crate::EXIT_BAD_CONFIG;
use crate::config::ConfigErrors;

/// Prints every problem of a config that does not load; exit 64.
pub(crate) fn report(errors: &ConfigErrors) -> ExitCode {
    let mut stderr = std::io::stderr();
    for error in errors.iter() {
        let _ = writeln!(stderr, "error: {error}");
    }
    let _ = writeln!(stderr, "{} problem(s) found", errors.len());
    ExitCode::from(EXIT_BAD_CONFIG)
}

/// Prints an error; exit 1.
pub(crate) fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "Error: {error}");
    ExitCode::FAILURE
}
