//! DNS over TCP (RFC 7766): length-prefixed messages answered in order on the general path,
//! with the limits an internet-facing server needs: a cap on open connections (more are
//! closed at once), an idle timeout per connection, a cap on queries per connection, and a
//! write timeout so a client that does not read cannot hold a task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Handler;
use super::handler::answer_bytes;
use crate::metrics::DNS_TCP_CLOSED_TOTAL;

/// Limits of the TCP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// Open connections at most; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// A connection with no complete query for this long is closed.
    pub idle_timeout: Duration,
    /// Queries answered on one connection before it is closed.
    pub max_queries: usize,
}

/// How long the accept loop pauses when the process is out of descriptors: accepting
/// again at once would spin on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `listener` until `token` is cancelled; then waits for open connections to
/// finish their current query. `slots` caps open connections across every listener.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<Handler>,
    limits: TcpLimits,
    slots: Arc<Semaphore>,
    token: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if crate::rlimit::is_exhausted(&error) {
                        metrics::counter!(DNS_TCP_CLOSED_TOTAL, "reason" => "accept_no_resources").increment(1);
                        warn!(%error, "TCP accept failed: out of descriptors or memory; pausing accepts");
                        tokio::select! {
                            () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                            () = token.cancelled() => break,
                        }
                    } else {
                        debug!(%error, "TCP accept failed");
                    }
                    continue;
                }
            },
            () = token.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(DNS_TCP_CLOSED_TOTAL, "reason" => "connection_limit").increment(1);
            drop(stream);
            continue;
        };
        // Answers leave as soon as they are written: with Nagle's algorithm, the second
        // and later answers to pipelined queries waited for the client's ACK (~20-40 ms).
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let token = token.clone();
        connections.spawn(async move {
            let mut stream = stream;
            let reason = connection(&mut stream, peer, &handler, limits, &token).await;
            if reason == "query_limit" {
                close_gracefully(stream).await;
            }
            metrics::counter!(DNS_TCP_CLOSED_TOTAL, "reason" => reason).increment(1);
            drop(slot);
        });
        // Reap finished connections without waiting.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

/// How long a connection closed at its query limit is drained of unread queries.
const LINGER: Duration = Duration::from_secs(1);
/// How much of them is read and dropped at most.
const LINGER_BYTES: usize = 64 * 1024;

/// Closes without losing answers (RFC 7766 section 6.2.4): reading stops, writing is shut
/// down after the last answer (FIN), and what the client pipelined beyond the limit is
/// read and dropped for a moment. Closing with unread input would send a reset, and the
/// client's kernel would drop answers it has not read yet.
async fn close_gracefully(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let drain = async {
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Answers one connection's queries in order; returns why it closed.
async fn connection(
    stream: &mut TcpStream,
    peer: SocketAddr,
    handler: &Handler,
    limits: TcpLimits,
    token: &CancellationToken,
) -> &'static str {
    let mut message = Vec::with_capacity(512);
    let server = stream.local_addr().ok();
    for _ in 0..limits.max_queries {
        let mut length = [0u8; 2];
        let read = tokio::select! {
            read = tokio::time::timeout(limits.idle_timeout, stream.read_exact(&mut length)) => read,
            () = token.cancelled() => return "shutdown",
        };
        match read {
            Err(_) => return "idle",
            Ok(Err(_)) => return "closed",
            Ok(Ok(_)) => {}
        }
        message.resize(usize::from(u16::from_be_bytes(length)), 0);
        match tokio::time::timeout(limits.idle_timeout, stream.read_exact(&mut message)).await {
            Err(_) => return "idle",
            Ok(Err(_)) => return "closed",
            Ok(Ok(_)) => {}
        }
        let Some(answer) = answer_bytes(handler, &message, peer, server, Protocol::Tcp).await
        else {
            continue; // nothing to answer (no readable header, or a response)
        };
        let Ok(length) = u16::try_from(answer.len()) else {
            return "error";
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&answer);
        match tokio::time::timeout(limits.idle_timeout, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return "closed",
            Err(_) => return "write_timeout",
        }
    }
    "query_limit"
}
