//! Replacing a running gto without losing a query (`gto replace`, or SIGUSR2 to the
//! running process), as nginx upgrades its binary and gdnsd's `replace` does.
//!
//! ```text
//! old gto ──SIGUSR2──> spawns the binary at its path again (the new one after an upgrade),
//!                      its listening sockets as descriptors 3.. (LISTEN_FDS, described
//!                      in GTO_LISTEN_FDS), its pid in GTO_REPLACES
//! new gto ──loads config, zones, state file; serves on the same sockets; MAINPID=, READY=1
//!         ──SIGTERM──> old gto: stops reading (the sockets stay open in the new one),
//!                      answers what it holds, finishes its TCP connections, exits 0
//! ```
//!
//! No socket is closed or bound again, so nothing queued in one is lost, and both
//! processes answer while they overlap. A replacement that cannot start (a bad config,
//! a zone that does not load) exits before it reads a socket, and the old process, which
//! never stopped, goes on serving; `gto replace` then exits non-zero.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};

/// What each passed descriptor is, in order from descriptor 3: `ROLE ADDR KIND` entries
/// separated by `;` (ROLE `dns` or `admin`, ADDR the configured listen address, KIND
/// `udp` for a fast-path worker's socket, `udp-general` for the general path's, `tcp`).
pub const DESCRIBE: &str = "GTO_LISTEN_FDS";

/// The process id of the gto being replaced: told to stop once the new one serves.
pub const REPLACES: &str = "GTO_REPLACES";

/// The first descriptor passed (the systemd convention `LISTEN_FDS` follows).
const FIRST_FD: i32 = 3;

/// Why sockets could not be passed on or taken over.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// `GTO_LISTEN_FDS` does not describe the descriptors passed.
    #[error("{DESCRIBE} is not what this gto understands: {0}")]
    Describe(String),
    /// A passed descriptor is not the socket it is said to be.
    #[error("descriptor {fd} ({what}) cannot be used: {source}")]
    Descriptor {
        /// The descriptor number.
        fd: i32,
        /// What it was said to be.
        what: String,
        /// Why not.
        source: std::io::Error,
    },
    /// The replacement could not be started.
    #[error("cannot start {exe}: {source}")]
    Spawn {
        /// The binary.
        exe: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A listening socket to pass on: its role, configured address and kind, and a duplicate
/// of its descriptor.
#[derive(Debug)]
pub struct Passed {
    /// `dns` or `admin`.
    pub role: &'static str,
    /// The address as configured (port 0 stays 0: the new process finds it here).
    pub configured: SocketAddr,
    /// `udp`, `udp-general` or `tcp`.
    pub kind: &'static str,
    /// The socket.
    pub fd: OwnedFd,
}

/// One DNS listen address's sockets taken over from the replaced process.
#[derive(Debug)]
pub struct DnsSockets {
    /// The UDP sockets: the fast-path workers' (a reuse-port group), or the general path's.
    pub udp: Vec<UdpSocket>,
    /// Whether `udp` is the general path's single socket (`workers = 0`).
    pub general: bool,
    /// The TCP listener.
    pub tcp: TcpListener,
}

/// The sockets a replaced gto passed on, taken by the listeners as they start.
#[derive(Debug, Default)]
pub struct Inherited {
    dns: BTreeMap<SocketAddr, DnsSockets>,
    admin: BTreeMap<SocketAddr, TcpListener>,
    replaces: Option<i32>,
    /// Sockets this process bound ahead of its start ([`Inherited::bound_ahead`]): shared
    /// with the thread that releases them if the start has not taken them in time.
    ahead: std::sync::Arc<Mutex<BTreeMap<SocketAddr, DnsSockets>>>,
}

impl Inherited {
    /// The sockets passed to this process, when it was started as a replacement (else
    /// none).
    pub fn from_env() -> Result<Self, HandoverError> {
        let Ok(describe) = std::env::var(DESCRIBE) else {
            return Ok(Self::default());
        };
        let replaces = std::env::var(REPLACES)
            .ok()
            .and_then(|pid| pid.parse::<i32>().ok());
        let mut fds = listenfd::ListenFd::from_env();
        let mut inherited = Self {
            replaces,
            ..Self::default()
        };
        let mut udp: BTreeMap<SocketAddr, (Vec<UdpSocket>, bool)> = BTreeMap::new();
        let mut tcp: BTreeMap<SocketAddr, TcpListener> = BTreeMap::new();
        for (index, entry) in describe.split(';').filter(|e| !e.is_empty()).enumerate() {
            let fd = FIRST_FD + i32::try_from(index).unwrap_or(i32::MAX - FIRST_FD);
            let mut parts = entry.split(' ');
            let (Some(role), Some(addr), Some(kind), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(HandoverError::Describe(format!("entry {entry:?}")));
            };
            let configured: SocketAddr = addr
                .parse()
                .map_err(|_| HandoverError::Describe(format!("address {addr:?}")))?;
            let bad = |source: std::io::Error| HandoverError::Descriptor {
                fd,
                what: entry.to_string(),
                source,
            };
            let missing = || bad(std::io::Error::other("not passed"));
            match (role, kind) {
                ("dns", "udp" | "udp-general") => {
                    let socket = fds
                        .take_udp_socket(index)
                        .map_err(bad)?
                        .ok_or_else(missing)?;
                    let group = udp.entry(configured).or_default();
                    group.0.push(socket);
                    group.1 = kind == "udp-general";
                }
                ("dns", "tcp") => {
                    let listener = fds
                        .take_tcp_listener(index)
                        .map_err(bad)?
                        .ok_or_else(missing)?;
                    tcp.insert(configured, listener);
                }
                ("admin", "tcp") => {
                    let listener = fds
                        .take_tcp_listener(index)
                        .map_err(bad)?
                        .ok_or_else(missing)?;
                    inherited.admin.insert(configured, listener);
                }
                _ => return Err(HandoverError::Describe(format!("entry {entry:?}"))),
            }
        }
        for (configured, (sockets, general)) in udp {
            let Some(listener) = tcp.remove(&configured) else {
                return Err(HandoverError::Describe(format!(
                    "no TCP listener for {configured}"
                )));
            };
            inherited.dns.insert(
                configured,
                DnsSockets {
                    udp: sockets,
                    general,
                    tcp: listener,
                },
            );
        }
        Ok(inherited)
    }

    /// Whether DNS sockets are here: passed by a replaced gto, or bound ahead and not
    /// released.
    pub fn has_dns(&self) -> bool {
        !self.dns.is_empty() || !self.held().is_empty()
    }

    /// Sockets this process bound itself before its config was fully loaded
    /// ([`crate::dns::server::bind_ahead`]), taken by the listeners as passed ones are.
    /// Queries wait in them meanwhile; a start that has not taken them within `hold`
    /// releases them (closes them), so that clients are refused at once, as with no
    /// socket, rather than kept waiting for answers that would come too late to use; the
    /// listeners then bind again when the start gets to them.
    pub fn bound_ahead(&mut self, sockets: Vec<(SocketAddr, DnsSockets)>, hold: Duration) {
        self.held().extend(sockets);
        let ahead = std::sync::Arc::downgrade(&self.ahead);
        let _ = std::thread::Builder::new()
            .name("gto-bound-ahead".into())
            .spawn(move || {
                std::thread::sleep(hold);
                let Some(ahead) = ahead.upgrade() else {
                    return;
                };
                let mut held = ahead.lock().unwrap_or_else(|e| e.into_inner());
                let released = std::mem::take(&mut *held);
                drop(held);
                if !released.is_empty() {
                    tracing::info!(
                        hold_ms = hold.as_millis() as u64,
                        "the start takes longer than queries may wait: the sockets bound ahead are closed until it serves"
                    );
                }
            });
    }

    /// Closes the DNS sockets bound ahead (their config turned out to differ).
    pub fn forget_dns(&mut self) {
        self.held().clear();
    }

    /// The sockets of a DNS listen address, as configured, if they were passed (or bound
    /// ahead and still held).
    pub fn take_dns(&mut self, configured: SocketAddr) -> Option<DnsSockets> {
        self.dns
            .remove(&configured)
            .or_else(|| self.held().remove(&configured))
    }

    /// The sockets bound ahead and still held.
    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<SocketAddr, DnsSockets>> {
        self.ahead.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The admin API's listener for `configured`, if it was passed.
    pub fn take_admin(&mut self, configured: SocketAddr) -> Option<TcpListener> {
        self.admin.remove(&configured)
    }

    /// The process this one replaces, told to stop once this one serves.
    pub fn replaces(&self) -> Option<i32> {
        self.replaces
    }

    /// Addresses passed on that the config no longer lists (closed when dropped).
    pub fn unused(&self) -> Vec<SocketAddr> {
        self.dns.keys().chain(self.admin.keys()).copied().collect()
    }
}

/// A duplicate of `socket`'s descriptor, to pass on.
pub fn duplicate(socket: &impl std::os::fd::AsFd) -> std::io::Result<OwnedFd> {
    socket.as_fd().try_clone_to_owned()
}

/// Starts the replacement: `exe` with `args`, the sockets `passed` as descriptors 3..
/// and what they are in [`DESCRIBE`], this process's id in [`REPLACES`]. Its output goes
/// where this process's does.
pub fn spawn(
    exe: &Path,
    args: &[std::ffi::OsString],
    passed: Vec<Passed>,
) -> Result<tokio::process::Child, HandoverError> {
    let spawn_error = |source| HandoverError::Spawn {
        exe: exe.to_path_buf(),
        source,
    };
    let describe: Vec<String> = passed
        .iter()
        .map(|p| format!("{} {} {}", p.role, p.configured, p.kind))
        .collect();
    let count = passed.len();
    let mappings: Vec<FdMapping> = passed
        .into_iter()
        .enumerate()
        .map(|(i, p)| FdMapping {
            parent_fd: p.fd,
            child_fd: FIRST_FD + i32::try_from(i).unwrap_or(0),
        })
        .collect();
    let mut command = std::process::Command::new(exe);
    command
        .args(args)
        .env(DESCRIBE, describe.join(";"))
        .env("LISTEN_FDS", count.to_string())
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env(REPLACES, std::process::id().to_string());
    command
        .fd_mappings(mappings)
        .map_err(|_| spawn_error(std::io::Error::other("two sockets for one descriptor")))?;
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(false);
    command.spawn().map_err(spawn_error)
}

/// The binary and arguments this process was started with, read at start: after an
/// upgrade the path names the new binary (the running one is gone from it).
static INVOCATION: OnceLock<(PathBuf, Vec<OsString>)> = OnceLock::new();

/// Closes the descriptors this process inherited without asking for them (a shell's, a
/// supervisor's, a test harness's), keeping 0-2 and the sockets a replacement is handed
/// (`GTO_LISTEN_FDS`, systemd's `LISTEN_FDS`). Run first, before anything opens a
/// descriptor: what gto opens itself is close-on-exec, so after this the commands of
/// `exec` checks get no descriptor of gto's. Returns how many were closed.
pub fn close_inherited() -> usize {
    let described = std::env::var(DESCRIBE)
        .map(|d| d.split(';').filter(|e| !e.is_empty()).count())
        .unwrap_or(0);
    let systemd = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let kept = FIRST_FD + i32::try_from(described.max(systemd)).unwrap_or(0);
    // Listed first, closed after: the listing's own descriptor is gone by then.
    let inherited: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd >= kept)
            .collect(),
        Err(_) => return 0,
    };
    inherited
        .into_iter()
        .filter(|fd| nix::unistd::close(*fd).is_ok())
        .count()
}

/// Remembers how this process was started (call first thing in `main`).
pub fn remember_invocation() {
    let _ = INVOCATION.get_or_init(read_invocation);
}

fn read_invocation() -> (PathBuf, Vec<OsString>) {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("gto"));
    (exe, std::env::args_os().skip(1).collect())
}

/// The binary and arguments a replacement runs: this process's own.
pub fn invocation() -> (PathBuf, Vec<OsString>) {
    INVOCATION.get_or_init(read_invocation).clone()
}

/// The last replacement this process started, for `GET /v1/status`.
static LAST: Mutex<Option<serde_json::Value>> = Mutex::new(None);

/// Replacements asked for (SIGUSR2) since start: `number` in the status, so `gto
/// replace` tells its own attempt's outcome from an earlier one.
static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records that a replacement started (`pid`).
pub fn record_started(pid: u32) {
    let number = ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    set_last(serde_json::json!({
        "number": number,
        "pid": pid,
        "state": "starting",
        "at": crate::time::rfc3339(std::time::SystemTime::now()),
    }));
}

/// Records (and logs) that a replacement failed: this process goes on serving. A failure
/// before the replacement started counts as an attempt of its own.
pub fn record_failure(reason: &str) {
    tracing::error!(%reason, "replacement failed; this gto goes on serving");
    let number = match status().get("state").and_then(serde_json::Value::as_str) {
        Some("starting") => ATTEMPTS.load(std::sync::atomic::Ordering::Relaxed),
        _ => ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
    };
    set_last(serde_json::json!({
        "number": number,
        "state": "failed",
        "reason": reason,
        "at": crate::time::rfc3339(std::time::SystemTime::now()),
    }));
}

fn set_last(value: serde_json::Value) {
    if let Ok(mut last) = LAST.lock() {
        *last = Some(value);
    }
}

/// The last replacement's state (`null` when none was started).
pub fn status() -> serde_json::Value {
    LAST.lock()
        .ok()
        .and_then(|last| last.clone())
        .unwrap_or(serde_json::Value::Null)
}
