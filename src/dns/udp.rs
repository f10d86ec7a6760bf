//! UDP workers: one `SO_REUSEPORT` socket and one OS thread per worker, batched receive
//! and send (`recvmmsg`/`sendmmsg` through `nix`), answering on the [fast path](super::fast)
//! and handing everything else to the general path on the tokio runtime.
//!
//! Per batch a worker loads the routing snapshot once. Per query it allocates nothing on
//! the fast path: buffers are per worker and reused, counters are per worker and folded
//! into the metrics once per batch. A bad packet is counted and answered or dropped as the
//! general path decides; nothing stops the loop but shutdown.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrLike, SockaddrStorage, recvmmsg, sendmmsg};
use socket2::{Domain, Socket, Type};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::Handler;
use super::fast::{FastScratch, QTYPE_LABELS, RCODE_LABELS, respond};
use super::handler::answer_bytes;
use crate::metrics::{
    DNS_BAD_QUERIES_TOTAL, DNS_QUERIES_TOTAL, DNS_QUERY_SECONDS, DNS_RATE_LIMITED_TOTAL,
};
use crate::routing::RoutingHandle;

/// Datagrams read or written per system call.
const BATCH: usize = 32;
/// Largest query read; longer datagrams are truncated and left to the general path.
const MAX_QUERY: usize = 4096;
/// How often a blocked worker looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// Queries waiting for the general path; more are dropped (and counted).
const FALLBACK_QUEUE: usize = 4096;

/// Binds `count` UDP sockets to `addr` with `SO_REUSEPORT`, so the kernel spreads queries
/// over them. Port 0 picks one free port for all of them.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> std::io::Result<Vec<UdpSocket>> {
    let mut sockets = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(
            Domain::for_address(bound),
            Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if bound.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_port(true)?;
        // A deeper queue absorbs bursts; the kernel caps it at net.core.rmem_max.
        let _ = socket.set_recv_buffer_size(4 << 20);
        socket.set_read_timeout(Some(POLL))?;
        socket.bind(&bound.into())?;
        let socket: UdpSocket = socket.into();
        bound = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Running UDP workers for one listen address.
#[derive(Debug)]
pub struct UdpWorkers {
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    fallback: tokio::task::JoinHandle<()>,
}

impl UdpWorkers {
    /// Starts one worker thread per socket and the general-path task on `runtime`.
    pub fn start(
        sockets: Vec<UdpSocket>,
        routing: RoutingHandle,
        runtime: &tokio::runtime::Handle,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (queue, receiver) = mpsc::channel(FALLBACK_QUEUE);
        // Answers from the general path leave through a duplicate of the first worker's
        // socket (same address and port). It stays blocking and is not registered with the
        // runtime: registering it (or making it non-blocking) would change the shared socket
        // under the worker and wake the runtime for every datagram.
        let reply = sockets
            .first()
            .map(UdpSocket::try_clone)
            .transpose()?
            .map(Arc::new);
        let fallback = runtime.spawn(general(receiver, Handler::new(routing.clone()), reply));
        let mut threads = Vec::with_capacity(sockets.len());
        for (index, socket) in sockets.into_iter().enumerate() {
            let routing = routing.clone();
            let stop = stop.clone();
            let queue = queue.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("gto-udp-{index}"))
                    .spawn(move || worker(socket, routing, queue, stop))?,
            );
        }
        Ok(Self {
            threads,
            stop,
            fallback,
        })
    }

    /// Stops the workers after their current batch and waits for them.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        let threads = std::mem::take(&mut self.threads);
        // Workers notice within one poll interval; join off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
        self.fallback.abort();
    }
}

impl Drop for UdpWorkers {
    /// Dropped without [`UdpWorkers::stop`] (an aborted start, an embedding that just
    /// drops the server): the threads still end, within one poll interval.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The general path for what the fast path passed on: each query on its own task.
async fn general(
    mut queue: mpsc::Receiver<(Vec<u8>, SocketAddr)>,
    handler: Handler,
    reply: Option<Arc<UdpSocket>>,
) {
    let Some(reply) = reply else { return };
    let handler = Arc::new(handler);
    while let Some((query, source)) = queue.recv().await {
        let handler = handler.clone();
        let reply = reply.clone();
        tokio::spawn(async move {
            // A UDP send does not wait for the peer; it blocks only while the socket's send
            // buffer is full, which is brief.
            if let Some(answer) = answer_bytes(&handler, &query, source, Protocol::Udp).await
                && let Err(error) = reply.send_to(&answer, source)
            {
                debug!(%error, %source, "could not send an answer");
            }
        });
    }
}

/// Pre-registered counters a worker folds its local counts into after every batch.
struct Folded {
    answered: Vec<Vec<metrics::Counter>>,
    latency: metrics::Histogram,
    dropped: metrics::Counter,
    /// Rate limiting: dropped, slipped.
    rate_limited: [metrics::Counter; 2],
}

fn worker(
    socket: UdpSocket,
    routing: RoutingHandle,
    queue: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    stop: Arc<AtomicBool>,
) {
    let fd = socket.as_raw_fd();
    let mut buffers: Box<[[u8; MAX_QUERY]; BATCH]> = Box::new([[0; MAX_QUERY]; BATCH]);
    let mut outputs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1232)).collect();
    let mut receive = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut transmit = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut scratch = FastScratch::default();
    let folded = Folded {
        answered: RCODE_LABELS
            .iter()
            .map(|rcode| {
                QTYPE_LABELS
                    .iter()
                    .map(|qtype| {
                        metrics::counter!(DNS_QUERIES_TOTAL, "transport" => "udp", "qtype" => *qtype, "rcode" => *rcode)
                    })
                    .collect()
            })
            .collect(),
        dropped: metrics::counter!(DNS_BAD_QUERIES_TOTAL, "reason" => "overload"),
        latency: metrics::histogram!(DNS_QUERY_SECONDS, "transport" => "udp"),
        rate_limited: [
            metrics::counter!(DNS_RATE_LIMITED_TOTAL, "action" => "dropped"),
            metrics::counter!(DNS_RATE_LIMITED_TOTAL, "action" => "slipped"),
        ],
    };
    let mut dropped = 0u64;
    let mut received: [(usize, Option<SockaddrStorage>, bool); BATCH] = [(0, None, false); BATCH];
    let mut answers: [(usize, Option<SockaddrStorage>); BATCH] = [(0, None); BATCH];

    while !stop.load(Ordering::Acquire) {
        // Receive up to BATCH datagrams: block for the first, take what else is queued.
        let count = {
            let mut slices = buffers.each_mut().map(|b| [IoSliceMut::new(b)]);
            match recvmmsg(
                fd,
                &mut receive,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(results) => {
                    let mut n = 0;
                    for message in results {
                        received[n] = (
                            message.bytes,
                            message.address,
                            message.flags.contains(MsgFlags::MSG_TRUNC),
                        );
                        n += 1;
                    }
                    n
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => 0,
                Err(error) => {
                    warn!(%error, "UDP receive failed");
                    std::thread::sleep(Duration::from_millis(10));
                    0
                }
            }
        };
        let mut replies = 0;
        let started = Instant::now();
        if count > 0 {
            // One snapshot for the whole batch.
            let snapshot = routing.load();
            for (i, &(len, address, truncated)) in received.iter().take(count).enumerate() {
                let Some(source) = address.and_then(socket_addr) else {
                    continue;
                };
                let query = &buffers[i][..len.min(MAX_QUERY)];
                let fast = if truncated {
                    None
                } else {
                    respond(
                        &snapshot,
                        &snapshot.fast,
                        query,
                        source.ip(),
                        &mut scratch,
                        &mut outputs[replies],
                    )
                };
                match fast {
                    // Rate limiting dropped the answer.
                    Some(0) => {}
                    Some(length) => {
                        answers[replies] = (length, address);
                        replies += 1;
                    }
                    None => {
                        if queue.try_send((query.to_vec(), source)).is_err() {
                            dropped += 1;
                        }
                    }
                }
            }
        }
        if replies > 0 {
            // Handling time per answer: one sample per batch (its mean), so the histogram
            // costs nothing per query.
            folded
                .latency
                .record(started.elapsed().as_secs_f64() / replies as f64);
            let slices: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| {
                [IoSlice::new(
                    outputs[i].get(..answers[i].0).unwrap_or_default(),
                )]
            });
            let addresses: [Option<SockaddrStorage>; BATCH] = std::array::from_fn(|i| answers[i].1);
            let mut sent = 0;
            // sendmmsg may send fewer than asked; send the rest in further calls.
            while sent < replies {
                match sendmmsg(
                    fd,
                    &mut transmit,
                    slices[sent..replies].iter(),
                    &addresses[sent..replies],
                    [],
                    MsgFlags::empty(),
                ) {
                    Ok(results) => {
                        let n = results.count();
                        if n == 0 {
                            break;
                        }
                        sent += n;
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(error) => {
                        debug!(%error, "UDP send failed");
                        sent += 1; // skip the datagram the kernel refused
                    }
                }
            }
        }
        // Once per batch: one atomic add per query type seen, not one per query.
        fold(&folded, &mut scratch, &mut dropped);
    }
}

fn fold(folded: &Folded, scratch: &mut FastScratch, dropped: &mut u64) {
    for (counter, count) in folded.rate_limited.iter().zip(&mut scratch.rate_limited) {
        if *count > 0 {
            counter.increment(std::mem::take(count));
        }
    }
    for (counters, counts) in folded.answered.iter().zip(scratch.answered.iter_mut()) {
        for (counter, count) in counters.iter().zip(counts.iter_mut()) {
            if *count > 0 {
                counter.increment(std::mem::take(count));
            }
        }
    }
    if *dropped > 0 {
        folded.dropped.increment(std::mem::take(dropped));
    }
}

fn socket_addr(address: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
        .filter(|_| address.family().is_some())
}
