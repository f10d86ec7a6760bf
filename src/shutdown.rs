//! Process signals: SIGTERM and SIGINT stop gto, SIGHUP reloads its config, SIGUSR2 starts
//! a replacement that takes over its sockets ([`crate::handover`]).

use tokio::signal::unix::{Signal as UnixSignal, SignalKind, signal};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: read the config and zones again.
    Reload,
    /// SIGTERM or SIGINT: finish in-flight queries and exit 0.
    Stop,
    /// SIGUSR2: start a replacement on the same sockets (it stops this process once it
    /// serves).
    Replace,
}

/// The signals gto listens to.
#[derive(Debug)]
pub struct Signals {
    hangup: UnixSignal,
    interrupt: UnixSignal,
    terminate: UnixSignal,
    replace: UnixSignal,
}

impl Signals {
    /// Installs the handlers.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            replace: signal(SignalKind::user_defined2())?,
        })
    }

    /// Waits for the next signal.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.hangup.recv() => Signal::Reload,
            _ = self.interrupt.recv() => Signal::Stop,
            _ = self.terminate.recv() => Signal::Stop,
            _ = self.replace.recv() => Signal::Replace,
        }
    }
}
