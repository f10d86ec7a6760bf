//! systemd integration (`Type=notify`): `READY=1` once the first snapshot is published and
//! every listener is bound, `RELOADING=1` then `READY=1` around each reload, `STOPPING=1`
//! at shutdown, and `WATCHDOG=1` pings while the query path and the builder both answer.
//! Without `NOTIFY_SOCKET` (not started by systemd) every call here does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

/// Tells the service manager that gto serves.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager that this process is now the service's main process (it
/// replaced the one systemd started, [`crate::handover`]) and serves.
pub fn ready_as_main(status: &str) {
    send(&[
        NotifyState::MainPid(std::process::id()),
        NotifyState::Ready,
        NotifyState::Status(status),
    ]);
}

/// Tells the service manager that a reload started (with the monotonic time systemd 253+
/// asks for); [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Tells the service manager that gto is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// One watchdog ping: gto's query path and builder were just seen alive.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The watchdog period systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(error) = sd_notify::notify(states) {
        debug!(%error, "could not notify the service manager");
    }
}
