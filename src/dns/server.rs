//! Listeners: each configured address is bound for UDP and TCP on the same port. UDP is
//! served by the fast-path workers (`workers` > 0) or by one plain loop on the general
//! path (`workers = 0`); TCP by our own listener. Every query the fast path does not take
//! goes through the one general path, [`Handler`] (built on hickory-server's request
//! types); hickory's `Server` loop is not used.
//!
//! Port 0 (used by tests) picks a free UDP port and binds TCP to the same one, retrying
//! when the TCP port is taken, so a client can use one address for both transports.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tracing::info;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Handler;
use super::tcp::{TcpLimits, TcpShared, TcpThreads};
use super::udp::{UdpWorkers, bind_reuseport};
use crate::config::ServerSettings;
use crate::handover::DnsSockets;
use crate::routing::RoutingHandle;

/// How many free ports to try for a port-0 listener before giving up.
const PORT_ATTEMPTS: usize = 16;

/// Why listeners could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A socket could not be bound.
    #[error("cannot listen on {addr} ({transport}): {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// "udp" or "tcp".
        transport: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("DNS server failed: {0}")]
    Serve(String),
}

/// Running DNS listeners.
pub struct DnsServer {
    local_addrs: Vec<SocketAddr>,
    workers: Vec<UdpWorkers>,
    tcp_tasks: Vec<tokio::task::JoinHandle<()>>,
    tcp_token: CancellationToken,
    /// The threads serving TCP: ended (dropped) after its listeners have stopped.
    tcp_threads: Option<TcpThreads>,
    /// Duplicates of every listening socket, with what they are: passed to a replacement
    /// ([`crate::handover`]).
    sockets: Vec<crate::handover::Passed>,
    /// A replacement serves on the same sockets: stopping must not shut them.
    shared: bool,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("local_addrs", &self.local_addrs)
            .finish()
    }
}

impl DnsServer {
    /// Binds every listener and starts serving from `routing`. With `workers` > 0, UDP is
    /// served by that many fast-path workers per address (`SO_REUSEPORT`); with 0, by one
    /// plain loop per address that answers everything on the general path. TCP clients are
    /// capped at `tcp_max_connections`, or at `default_tcp_connections` when it is unset
    /// (sized by the caller from the open-file limit).
    pub async fn start(
        settings: &ServerSettings,
        default_tcp_connections: usize,
        routing: RoutingHandle,
    ) -> Result<Self, DnsError> {
        Self::start_with(
            settings,
            default_tcp_connections,
            routing,
            &mut crate::handover::Inherited::default(),
        )
        .await
    }

    /// [`DnsServer::start`], serving on the sockets a replaced gto passed on where it
    /// passed them (binding the rest).
    pub async fn start_with(
        settings: &ServerSettings,
        default_tcp_connections: usize,
        routing: RoutingHandle,
        inherited: &mut crate::handover::Inherited,
    ) -> Result<Self, DnsError> {
        let mut sockets_kept = Vec::new();
        let mut local_addrs = Vec::new();
        let mut workers = Vec::new();
        let handler = Arc::new(Handler::new(routing.clone()));
        let max_connections = settings
            .tcp_max_connections
            .unwrap_or(default_tcp_connections);
        info!(max_connections, "TCP connection cap");
        let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
        let limits = TcpLimits {
            max_connections,
            idle_timeout: settings.tcp_idle_timeout,
            max_queries: settings.tcp_max_queries,
        };
        let tcp_token = CancellationToken::new();
        let mut tcp_tasks = Vec::new();
        let tcp_threads =
            TcpThreads::start(settings.tcp_threads).map_err(|source| DnsError::Bind {
                addr: settings
                    .listen
                    .first()
                    .copied()
                    .unwrap_or(([127, 0, 0, 1], 0).into()),
                transport: "tcp",
                source,
            })?;
        let tcp_shared = TcpShared {
            handler: handler.clone(),
            general: tokio::runtime::Handle::current(),
            limits,
            slots,
            token: tcp_token.clone(),
        };
        for addr in &settings.listen {
            let sockets = match inherited.take_dns(*addr) {
                // The sockets are served the way they were: switching between the fast
                // path and the general one (`workers`) takes a restart.
                Some(passed) => {
                    if passed.general != (settings.workers == 0) {
                        tracing::warn!(%addr, "`workers` changed between 0 and more: this replacement serves the sockets as they were; a restart applies the change");
                    }
                    passed
                }
                None => bind(*addr, settings)?,
            };
            let bind_error = |transport, source| DnsError::Bind {
                addr: *addr,
                transport,
                source,
            };
            let DnsSockets { udp, general, tcp } = sockets;
            sockets_kept.push(keep("dns", *addr, "tcp", &tcp)?);
            let local = if !general {
                for socket in &udp {
                    sockets_kept.push(keep("dns", *addr, "udp", socket)?);
                }
                let local = udp
                    .first()
                    .and_then(|s| s.local_addr().ok())
                    .unwrap_or(*addr);
                let started = UdpWorkers::start(
                    udp,
                    routing.clone(),
                    settings.udp_coalesce,
                    &tokio::runtime::Handle::current(),
                )
                .map_err(|e| bind_error("udp", e))?;
                workers.push(started);
                info!(%local, workers = settings.workers, "serving DNS on UDP (fast path) and TCP");
                local
            } else {
                let udp = udp
                    .into_iter()
                    .next()
                    .ok_or_else(|| std::io::Error::other("no UDP socket passed"))
                    .and_then(|socket| {
                        socket.set_nonblocking(true)?;
                        UdpSocket::from_std(socket)
                    })
                    .map_err(|e| bind_error("udp", e))?;
                sockets_kept.push(keep("dns", *addr, "udp-general", &udp)?);
                let local = udp.local_addr().unwrap_or(*addr);
                tcp_tasks.push(tokio::spawn(super::udp::serve_general(
                    udp,
                    handler.clone(),
                    tcp_token.clone(),
                )));
                info!(%local, "serving DNS on UDP and TCP");
                local
            };
            let served = tcp_threads
                .serve(&tcp, &tcp_shared)
                .map_err(|e| bind_error("tcp", e))?;
            tcp_tasks.extend(served);
            local_addrs.push(local);
        }
        Ok(Self {
            local_addrs,
            workers,
            tcp_tasks,
            tcp_token,
            tcp_threads: Some(tcp_threads),
            sockets: sockets_kept,
            shared: false,
        })
    }

    /// Duplicates of every listening socket, for a replacement.
    pub fn passable(&self) -> std::io::Result<Vec<crate::handover::Passed>> {
        self.sockets
            .iter()
            .map(|p| {
                Ok(crate::handover::Passed {
                    role: p.role,
                    configured: p.configured,
                    kind: p.kind,
                    fd: p.fd.try_clone()?,
                })
            })
            .collect()
    }

    /// A replacement serves on these sockets: stopping leaves them open and readable
    /// (only this process's descriptors close).
    pub fn share_sockets(&mut self) {
        self.shared = true;
    }

    /// The bound addresses (UDP and TCP share each), in config order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops accepting, lets in-flight queries finish, and waits for the listeners.
    pub async fn shutdown(mut self, grace: Duration) -> Result<(), DnsError> {
        // TCP first, UDP last: UDP carries nearly every query, and what follows its stop
        // (the process's exit) is the silence a restart leaves.
        self.tcp_token.cancel();
        for task in std::mem::take(&mut self.tcp_tasks) {
            // Connections finish their current query; a join error was a panic, logged.
            let _ = tokio::time::timeout(grace, task).await;
        }
        // Their listeners stopped: the threads end (what a grace cut short is dropped).
        self.tcp_threads = None;
        for workers in std::mem::take(&mut self.workers) {
            if self.shared {
                workers.stop_sharing().await;
            } else {
                workers.stop().await;
            }
        }
        Ok(())
    }
}

/// A listener's socket kept (duplicated) with what it is, to pass to a replacement.
fn keep(
    role: &'static str,
    configured: SocketAddr,
    kind: &'static str,
    socket: &impl std::os::fd::AsFd,
) -> Result<crate::handover::Passed, DnsError> {
    let fd = crate::handover::duplicate(socket).map_err(|source| DnsError::Bind {
        addr: configured,
        transport: if kind == "tcp" { "tcp" } else { "udp" },
        source,
    })?;
    Ok(crate::handover::Passed {
        role,
        configured,
        kind,
        fd,
    })
}

/// How long queries may wait in sockets bound ahead ([`bind_ahead`]) for the start to
/// serve them: about a resolver's first timeout (unbound: 376 ms for a server it has no
/// round trip for). An answer later than that is of no use, and a socket that holds
/// queries unanswered keeps resolvers waiting where no socket refuses them at once.
pub const AHEAD_HOLD: Duration = Duration::from_millis(500);

/// Binds the DNS listeners of the config `source` names before the rest of a start (its
/// zones and keys, the metrics clock, the state file, the first snapshot), into
/// `inherited`, where [`DnsServer::start_with`] takes them: a query sent meanwhile waits in
/// a socket and is answered once the workers start, where it would otherwise find no
/// socket (a restart's silence, up to the sockets' buffers). Sockets not taken within
/// `hold` ([`AHEAD_HOLD`] for `gto run`) are closed, and bound again later. Returns the
/// settings bound with, or `None` when nothing was bound: sockets passed by a replaced
/// gto, a config that does not parse (the full load reports it), or an address that does
/// not bind (the start binds again and reports it; a port another gto serves fails on TCP
/// before any UDP socket could join its group).
pub fn bind_ahead(
    source: &crate::loaded::ConfigSource,
    inherited: &mut crate::handover::Inherited,
    hold: Duration,
) -> Option<ServerSettings> {
    if inherited.has_dns() {
        return None;
    }
    let settings = source.server_settings()?;
    let mut bound = Vec::with_capacity(settings.listen.len());
    for addr in &settings.listen {
        match bind(*addr, &settings) {
            Ok(sockets) => bound.push((*addr, sockets)),
            Err(error) => {
                tracing::debug!(%error, "not bound ahead of loading");
                return None;
            }
        }
    }
    inherited.bound_ahead(bound, hold);
    Some(settings)
}

/// Whether sockets bound with `ahead` ([`bind_ahead`]) are what `settings` would bind.
pub fn binds_alike(ahead: &ServerSettings, settings: &ServerSettings) -> bool {
    ahead.listen == settings.listen
        && ahead.workers == settings.workers
        && ahead.udp_payload == settings.udp_payload
}

/// Binds one listen address as `settings` say: a reuse-port group of `workers` UDP
/// sockets (or, with `workers = 0`, one socket for the general path) and a TCP listener on
/// the same port.
pub fn bind(addr: SocketAddr, settings: &ServerSettings) -> Result<DnsSockets, DnsError> {
    if settings.workers > 0 {
        let (udp, tcp) = bind_pair(
            addr,
            |addr| bind_reuseport(addr, settings.workers, settings.udp_payload),
            |sockets| sockets.first()?.local_addr().ok(),
        )?;
        Ok(DnsSockets {
            udp,
            general: false,
            tcp,
        })
    } else {
        let (udp, tcp) = bind_pair(addr, std::net::UdpSocket::bind, |udp| udp.local_addr().ok())?;
        Ok(DnsSockets {
            udp: vec![udp],
            general: true,
            tcp,
        })
    }
}

/// A TCP listener as tokio binds one: address reuse (a restart binds while the old
/// process's connections linger in TIME_WAIT) and a backlog of 1024.
fn listen_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Binds UDP with `bind_udp` (one socket, or a reuse-port group) and TCP on the same port:
/// TCP first for a given port; with port 0 the kernel picks UDP's port, and a port TCP
/// finds taken is tried again (at most [`PORT_ATTEMPTS`] times).
fn bind_pair<U>(
    addr: SocketAddr,
    bind_udp: impl Fn(SocketAddr) -> std::io::Result<U>,
    bound: impl Fn(&U) -> Option<SocketAddr>,
) -> Result<(U, std::net::TcpListener), DnsError> {
    if addr.port() != 0 {
        // TCP first: its listener takes no reuse-port group, so a port another gto serves
        // fails here, before this process's UDP sockets could join that gto's group and
        // take queries meant for it.
        let tcp = listen_tcp(addr).map_err(|source| DnsError::Bind {
            addr,
            transport: "tcp",
            source,
        })?;
        let udp = bind_udp(addr).map_err(|source| DnsError::Bind {
            addr,
            transport: "udp",
            source,
        })?;
        return Ok((udp, tcp));
    }
    let attempts = PORT_ATTEMPTS;
    let mut last_error = None;
    for _ in 0..attempts {
        let udp = bind_udp(addr).map_err(|source| DnsError::Bind {
            addr,
            transport: "udp",
            source,
        })?;
        let Some(port) = bound(&udp) else {
            continue;
        };
        match listen_tcp(port) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => last_error = Some(source),
        }
    }
    Err(DnsError::Bind {
        addr,
        transport: "tcp",
        source: last_error.unwrap_or_else(|| std::io::Error::other("no attempt made")),
    })
}
