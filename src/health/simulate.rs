//! Scripted probe outcomes for the fleet simulator (`benches/fleet.rs`), which runs many
//! instances' real fleet code in one process against a real etcd: not part of gto's
//! surface (nothing in the binary or the config installs a script).
//!
//! Two hooks: once a [`Script`] is installed, TCP checks ask it instead of connecting;
//! and [`crate::health::HealthHandle::simulate_reports`] hands the monitor probe outcomes
//! at the times a simulated schedule says, so that 30 instances of 10,000 endpoints need
//! not run 300,000 probe tasks on one machine. Rise/fall, verdicts, votes, the fleet
//! store and the vote rules all run as they do for real probes.

use std::net::SocketAddr;
use std::sync::OnceLock;

/// Decides a scripted TCP probe's outcome.
pub trait Script: Send + Sync {
    /// Whether a connection to `target` would succeed now.
    fn up(&self, target: SocketAddr) -> bool;
}

static SCRIPT: OnceLock<&'static dyn Script> = OnceLock::new();

/// Installs `script` for the rest of the process; false when one was installed already.
pub fn install(script: &'static dyn Script) -> bool {
    SCRIPT.set(script).is_ok()
}

/// The scripted outcome of a TCP probe to `target`, when a script is installed.
pub(crate) fn scripted(target: SocketAddr) -> Option<bool> {
    SCRIPT.get().map(|script| script.up(target))
}
