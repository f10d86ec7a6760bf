//! DNS over TCP (RFC 7766): length-prefixed messages answered in order, on the fast path
//! when it can (as UDP datagrams are) and on the general path otherwise, with the limits
//! an internet-facing server needs: a cap on open connections (more are closed at once),
//! an idle timeout per connection, a cap on queries per connection, and a write timeout
//! so a client that does not read cannot hold a task.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hickory_server::net::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Handler;
use super::fast::{FastCounters, FastScratch, Reply, fold_endpoint_counts, respond_tcp};
use super::handler::answer_bytes;
use crate::metrics::{DNS_QUERY_SECONDS, DNS_TCP_CLOSED_TOTAL};

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

/// What a connection reads at once at least: a burst of pipelined queries. A read that
/// returns less than this also tells the runtime the socket is drained, so the next read
/// waits for readiness without another system call.
const READ_AT_ONCE: usize = 4096;

/// Answers one connection's queries in order; returns why it closed.
///
/// Reads what the client sent in one system call, answers every whole message in it (on
/// the fast path when it can, [`answer_fast`]) and writes their answers in one: a burst
/// of pipelined queries costs one read and one write, not three calls per query.
async fn connection(
    stream: &mut TcpStream,
    peer: SocketAddr,
    handler: &Handler,
    limits: TcpLimits,
    token: &CancellationToken,
) -> &'static str {
    let server = stream.local_addr().ok();
    // Bytes read and not yet answered: whole messages first, then at most a part of one.
    let mut input: Vec<u8> = Vec::with_capacity(READ_AT_ONCE);
    // Framed answers not yet written.
    let mut output: Vec<u8> = Vec::with_capacity(READ_AT_ONCE);
    let mut queries = 0;
    let mut deadline = Instant::now() + limits.idle_timeout;
    loop {
        let mut used = 0;
        while let Some(message) = whole_message(&input[used..]) {
            used += 2 + message.len();
            queries += 1;
            if !answer_fast(handler, message, peer, server, &mut output) {
                // None: nothing to answer (no readable header, or a response).
                if let Some(answer) =
                    answer_bytes(handler, message, peer, server, Protocol::Tcp).await
                {
                    let Ok(length) = u16::try_from(answer.len()) else {
                        return "error";
                    };
                    output.extend_from_slice(&length.to_be_bytes());
                    output.extend_from_slice(&answer);
                }
            }
            if queries == limits.max_queries {
                break;
            }
        }
        if used > 0 {
            input.drain(..used);
            deadline = Instant::now() + limits.idle_timeout;
        }
        if !output.is_empty() {
            match tokio::time::timeout(limits.idle_timeout, stream.write_all(&output)).await {
                Ok(Ok(())) => output.clear(),
                Ok(Err(_)) => return "closed",
                Err(_) => return "write_timeout",
            }
        }
        if queries == limits.max_queries {
            return "query_limit";
        }
        // Room for the rest of a message begun, and for a burst after it.
        let begun = match *input.as_slice() {
            [high, low, ..] => 2 + usize::from(u16::from_be_bytes([high, low])),
            _ => 0,
        };
        input.reserve(begun.saturating_sub(input.len()).max(READ_AT_ONCE));
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, stream.read_buf(&mut input)) => read,
            () = token.cancelled() => return "shutdown",
        };
        match read {
            Err(_) => return "idle",
            Ok(Err(_) | Ok(0)) => return "closed",
            Ok(Ok(_)) => {}
        }
    }
}

/// The first whole length-prefixed message of `input`, if it holds one.
fn whole_message(input: &[u8]) -> Option<&[u8]> {
    let [high, low, rest @ ..] = input else {
        return None;
    };
    rest.get(..usize::from(u16::from_be_bytes([*high, *low])))
}

/// The fast path's buffers and counters for the TCP connections of one runtime thread: a
/// connection answers a message without an `.await` between reading the snapshot and
/// writing the answer, so the tasks of one thread can share them.
struct FastTcp {
    scratch: FastScratch,
    counters: FastCounters,
    seconds: metrics::Histogram,
    answer: Vec<u8>,
}

thread_local! {
    static FAST_TCP: RefCell<Option<FastTcp>> = const { RefCell::new(None) };
}

/// Answers `message` on the fast path and appends the framed answer to `output` when the
/// fast path can (the general path answers the rest); counts it and logs it to dnstap as
/// the general path would.
fn answer_fast(
    handler: &Handler,
    message: &[u8],
    peer: SocketAddr,
    server: Option<SocketAddr>,
    output: &mut Vec<u8>,
) -> bool {
    let started = Instant::now();
    let snapshot = handler.routing().load();
    // When the query was read, for dnstap (as the general path takes it).
    let received = snapshot.dnstap.as_ref().map(|_| SystemTime::now());
    FAST_TCP.with_borrow_mut(|fast| {
        let fast = fast.get_or_insert_with(|| FastTcp {
            scratch: FastScratch::default(),
            counters: FastCounters::new("tcp"),
            seconds: metrics::histogram!(DNS_QUERY_SECONDS, "transport" => "tcp"),
            answer: Vec::with_capacity(512),
        });
        let reply = respond_tcp(
            &snapshot,
            &snapshot.fast,
            message,
            peer.ip(),
            &mut fast.scratch,
            &mut fast.answer,
        );
        let Reply::Send(length) = reply else {
            return false; // never Drop: TCP answers are not rate-limited
        };
        let answer = &fast.answer[..length];
        if let (Some(tap), Some(received)) = (snapshot.dnstap.as_deref(), received) {
            let transport = crate::dnstap::Transport::Tcp;
            tap.exchange(transport, (peer, server), message, Some(answer), received);
        }
        // At most 65,535 octets (`respond_tcp`).
        output.extend_from_slice(&(length as u16).to_be_bytes());
        output.extend_from_slice(answer);
        fold_endpoint_counts(&snapshot, &mut fast.scratch);
        fast.counters.fold(&mut fast.scratch);
        fast.seconds.record(started.elapsed().as_secs_f64());
        true
    })
}
