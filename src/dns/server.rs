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

use tokio::net::{TcpListener, UdpSocket};
use tracing::info;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Handler;
use super::tcp::{self, TcpLimits};
use super::udp::{UdpWorkers, bind_reuseport};
use crate::config::ServerSettings;
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
        for addr in &settings.listen {
            let (local, tcp) = if settings.workers > 0 {
                let (sockets, tcp) = bind_pair(
                    *addr,
                    |addr| bind_reuseport(addr, settings.workers),
                    |sockets| sockets.first()?.local_addr().ok(),
                )
                .await?;
                let local = sockets
                    .first()
                    .and_then(|s| s.local_addr().ok())
                    .unwrap_or(*addr);
                let started = UdpWorkers::start(
                    sockets,
                    routing.clone(),
                    settings.udp_coalesce,
                    &tokio::runtime::Handle::current(),
                )
                .map_err(|source| DnsError::Bind {
                    addr: *addr,
                    transport: "udp",
                    source,
                })?;
                workers.push(started);
                info!(%local, workers = settings.workers, "serving DNS on UDP (fast path) and TCP");
                (local, tcp)
            } else {
                let (udp, tcp) = bind_pair(
                    *addr,
                    |addr| {
                        let socket = std::net::UdpSocket::bind(addr)?;
                        socket.set_nonblocking(true)?;
                        UdpSocket::from_std(socket)
                    },
                    |udp| udp.local_addr().ok(),
                )
                .await?;
                let local = udp.local_addr().unwrap_or(*addr);
                tcp_tasks.push(tokio::spawn(super::udp::serve_general(
                    udp,
                    handler.clone(),
                    tcp_token.clone(),
                )));
                info!(%local, "serving DNS on UDP and TCP");
                (local, tcp)
            };
            tcp_tasks.push(tokio::spawn(tcp::serve(
                tcp,
                handler.clone(),
                limits,
                slots.clone(),
                tcp_token.clone(),
            )));
            local_addrs.push(local);
        }
        Ok(Self {
            local_addrs,
            workers,
            tcp_tasks,
            tcp_token,
        })
    }

    /// The bound addresses (UDP and TCP share each), in config order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops accepting, lets in-flight queries finish, and waits for the listeners.
    pub async fn shutdown(mut self, grace: Duration) -> Result<(), DnsError> {
        for workers in std::mem::take(&mut self.workers) {
            workers.stop().await;
        }
        self.tcp_token.cancel();
        for task in std::mem::take(&mut self.tcp_tasks) {
            // Connections finish their current query; a join error was a panic, logged.
            let _ = tokio::time::timeout(grace, task).await;
        }
        Ok(())
    }
}

/// Binds UDP with `bind_udp` (one socket, or a reuse-port group) and TCP on the same port.
/// With port 0 the kernel picks UDP's port, and a port TCP finds taken is tried again
/// (at most [`PORT_ATTEMPTS`] times).
async fn bind_pair<U>(
    addr: SocketAddr,
    bind_udp: impl Fn(SocketAddr) -> std::io::Result<U>,
    bound: impl Fn(&U) -> Option<SocketAddr>,
) -> Result<(U, TcpListener), DnsError> {
    let attempts = if addr.port() == 0 { PORT_ATTEMPTS } else { 1 };
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
        match TcpListener::bind(port).await {
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
