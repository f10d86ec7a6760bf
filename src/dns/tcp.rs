//! DNS over TCP (RFC 7766): length-prefixed messages answered in order, on the fast path
//! when it can (as UDP datagrams are) and on the general path otherwise, with the limits
//! an internet-facing server needs: a cap on open connections (more are closed at once),
//! an idle timeout per connection, a cap on queries per connection, and a write timeout
//! so a client that does not read cannot hold a task.
//!
//! TCP has threads of its own ([`TcpThreads`], `tcp_threads`, 2 by default, as gdnsd's),
//! each an event loop (a current-thread runtime) that accepts on every listener and keeps
//! the connections it accepted: a query wakes that one thread and nothing else, and is
//! answered there on the fast path. On the shared multi-threaded runtime a query woke a
//! second thread as often as not (work stealing), which cost ~4 µs of CPU per query and a
//! p99 above gdnsd's. What the fast path does not answer (signing on first use, transfers,
//! the rest) goes to the general path on the main runtime, so a long answer does not hold
//! up the other connections of its thread.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hickory_server::net::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};
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

/// What every TCP listener of a server shares.
#[derive(Debug, Clone)]
pub struct TcpShared {
    /// The general path.
    pub handler: Arc<Handler>,
    /// The runtime the general path runs on (the main one).
    pub general: Handle,
    /// The limits.
    pub limits: TcpLimits,
    /// Open connections across every listener and thread, at most `max_connections`.
    pub slots: Arc<Semaphore>,
    /// Cancelled at shutdown: accepting stops, connections finish their current query.
    pub token: CancellationToken,
}

/// The threads serving TCP, each with its own event loop (see the module's docs). They
/// end when this is dropped, cancelling whatever still runs on them: stop the listeners
/// first (cancel [`TcpShared::token`] and await [`TcpThreads::serve`]'s tasks).
#[derive(Debug)]
pub struct TcpThreads {
    runtimes: Vec<Handle>,
    /// Dropped to end the threads.
    _stop: Vec<oneshot::Sender<()>>,
}

impl TcpThreads {
    /// Starts `count` threads (at least one), each running an event loop until this is
    /// dropped.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut runtimes = Vec::with_capacity(count.max(1));
        let mut stops = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let (stop, stopped) = oneshot::channel::<()>();
            let (started, handle) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("gto-tcp-{index}"))
                .spawn(move || {
                    // Built and dropped on its own thread (a runtime may not be dropped
                    // where blocking is not allowed).
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .enable_time()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            let _ = started.send(Err(error));
                            return;
                        }
                    };
                    let _ = started.send(Ok(runtime.handle().clone()));
                    // Runs the listeners' and connections' tasks until told to end;
                    // dropping the runtime then drops what is left.
                    runtime.block_on(async move {
                        let _ = stopped.await;
                    });
                })?;
            // The thread sends its handle at once: a brief wait, at start only.
            let handle = handle
                .recv()
                .map_err(|_| std::io::Error::other("a TCP thread ended as it started"))??;
            runtimes.push(handle);
            stops.push(stop);
        }
        Ok(Self {
            runtimes,
            _stop: stops,
        })
    }

    /// Serves `listener` on every thread (each accepts on a duplicate of it and keeps
    /// the connections it accepts) until `shared.token` is cancelled. The tasks end once
    /// their connections have finished their current query.
    pub fn serve(
        &self,
        listener: &std::net::TcpListener,
        shared: &TcpShared,
    ) -> std::io::Result<Vec<JoinHandle<()>>> {
        listener.set_nonblocking(true)?;
        let mut tasks = Vec::with_capacity(self.runtimes.len());
        for runtime in &self.runtimes {
            let listener = listener.try_clone()?;
            let shared = shared.clone();
            tasks.push(runtime.spawn(async move {
                // Registered with this thread's event loop, from within it.
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, shared).await,
                    Err(error) => warn!(%error, "TCP listener could not be served"),
                }
            }));
        }
        Ok(tasks)
    }
}

/// Serves `listener` until `shared.token` is cancelled; then waits for open connections to
/// finish their current query. `shared.slots` caps open connections across every listener.
async fn serve(listener: TcpListener, shared: TcpShared) {
    let TcpShared {
        handler,
        general,
        limits,
        slots,
        token,
    } = shared;
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
        let general = general.clone();
        let token = token.clone();
        connections.spawn(async move {
            let mut stream = stream;
            let paths = (&handler, &general);
            let reason = connection(&mut stream, peer, paths, limits, &token).await;
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
/// of pipelined queries costs one read and one write, not three calls per query. The
/// general path's answers are made on the `general` runtime (`paths`: the handler and it).
async fn connection(
    stream: &mut TcpStream,
    peer: SocketAddr,
    (handler, general): (&Arc<Handler>, &Handle),
    limits: TcpLimits,
    token: &CancellationToken,
) -> &'static str {
    let server = stream.local_addr().ok();
    // Bytes read and not yet answered: whole messages first, then at most a part of one.
    let mut input: Vec<u8> = Vec::with_capacity(READ_AT_ONCE);
    // Framed answers not yet written.
    let mut output: Vec<u8> = Vec::with_capacity(READ_AT_ONCE);
    let mut queries = 0;
    // The idle deadline runs from the last whole message. Its timer is set lazily: once
    // per idle timeout, not per message (when it fires early it is set again to the
    // deadline then due), and shutdown is one registration per connection.
    let mut last = Instant::now();
    let idle = tokio::time::sleep_until(last + limits.idle_timeout);
    let cancelled = token.cancelled();
    tokio::pin!(idle, cancelled);
    loop {
        let mut used = 0;
        while let Some(message) = whole_message(&input[used..]) {
            used += 2 + message.len();
            queries += 1;
            if !answer_fast(handler, message, peer, server, &mut output) {
                let handler = handler.clone();
                let message = message.to_vec();
                let made = general.spawn(async move {
                    answer_bytes(&handler, &message, peer, server, Protocol::Tcp).await
                });
                let Ok(made) = made.await else {
                    return "error"; // the general path panicked, or the runtime is ending
                };
                // None: nothing to answer (no readable header, or a response).
                if let Some(answer) = made {
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
            last = Instant::now();
        }
        if !output.is_empty() {
            // Answers nearly always fit the socket's send buffer: written at once, with
            // no timer; the rest waits for room, for at most the idle timeout.
            let written = match stream.try_write(&output) {
                Ok(written) => written,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(_) => return "closed",
            };
            if let Some(rest) = output.get(written..).filter(|rest| !rest.is_empty()) {
                match tokio::time::timeout(limits.idle_timeout, stream.write_all(rest)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return "closed",
                    Err(_) => return "write_timeout",
                }
            }
            output.clear();
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
            biased;
            () = &mut cancelled => return "shutdown",
            read = stream.read_buf(&mut input) => Some(read),
            () = &mut idle => None,
        };
        match read {
            None => {
                let due = last + limits.idle_timeout;
                if Instant::now() >= due {
                    return "idle";
                }
                idle.as_mut().reset(due);
            }
            Some(Err(_) | Ok(0)) => return "closed",
            Some(Ok(_)) => {}
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
