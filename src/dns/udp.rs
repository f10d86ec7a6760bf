//! UDP workers: one `SO_REUSEPORT` socket and one OS thread per worker, batched receive
//! and send (`recvmmsg`/`sendmmsg` through `nix`), answering on the [fast path](super::fast)
//! and handing everything else to the general path on the tokio runtime.
//!
//! On a wildcard address (`0.0.0.0`, `[::]`) each query's destination address comes with
//! it (`IP_PKTINFO`, `IPV6_RECVPKTINFO`) and its answer leaves from that address, as a
//! resolver expects (an answer from another address is dropped as a spoof).
//!
//! A worker blocks for the first datagram and takes whatever else is queued with it. Under
//! moderate load that means a wake-up, two system calls and a cross-CPU wake-up of the
//! client per query or two; after a small batch the worker therefore pauses for
//! `udp_coalesce` (100 µs by default) so that the next batch is bigger — interrupt
//! moderation, as network cards do it — but only while queries arrive fast enough that
//! the pause gathers more, or while handling its batches keeps the worker busy a third
//! of the time or more (`Pace`): below both a pause would only delay answers.
//! Answers of a batch to one destination leave in one UDP GSO send.
//!
//! Per batch a worker loads the routing snapshot once. Per query it allocates nothing on
//! the fast path: buffers are per worker and reused, counters are per worker and folded
//! into the metrics once per batch. A bad packet is counted and answered or dropped as the
//! general path decides; nothing stops the loop but shutdown.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrLike, SockaddrStorage,
    recvmmsg, sendmmsg,
};
use socket2::{Domain, Socket, Type};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::Handler;
use super::fast::{FastCounters, FastScratch, Reply, fold_endpoint_counts, respond};
use super::handler::answer_bytes;
use crate::metrics::{DNS_BAD_QUERIES_TOTAL, DNS_FAST_BATCH_SECONDS};
use crate::routing::RoutingHandle;

/// Datagrams read or written per system call.
pub(crate) const BATCH: usize = 32;
/// Largest query read; longer datagrams are truncated and left to the general path.
const MAX_QUERY: usize = 4096;
/// Most datagrams one GSO send carries (the kernel's `UDP_MAX_SEGMENTS`).
const GSO_SEGMENTS: usize = 64;
/// Largest answer sent by GSO: a segment must fit the path MTU (1232 is DNS's safe size).
const GSO_SEGMENT_MAX: usize = 1232;
/// Most bytes one GSO send carries (below the 64 KiB IP datagram limit).
const GSO_BYTES: usize = 60_000;
/// Batches smaller than this are followed by the coalescing pause; bigger ones mean the
/// queue is filling by itself.
const COALESCE_BELOW: usize = BATCH / 4;
/// How often a blocked worker looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// Queries waiting for the general path; more are dropped (and counted).
const FALLBACK_QUEUE: usize = 4096;

/// Where a query arrived, on a wildcard socket: its destination address (and for IPv6 the
/// interface, for link-local addresses), which its answer leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddr {
    ip: std::net::IpAddr,
    ifindex: u32,
}

impl LocalAddr {
    fn of(message: ControlMessageOwned) -> Option<Self> {
        match message {
            ControlMessageOwned::Ipv4PacketInfo(info) => Some(Self {
                ip: std::net::Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)).into(),
                ifindex: 0,
            }),
            ControlMessageOwned::Ipv6PacketInfo(info) => Some(Self {
                ip: std::net::Ipv6Addr::from(info.ipi6_addr.s6_addr).into(),
                ifindex: info.ipi6_ifindex,
            }),
            _ => None,
        }
    }
}

/// The packet-info control message that makes an answer leave from `local`.
enum PacketInfo {
    V4(libc::in_pktinfo),
    V6(libc::in6_pktinfo),
}

impl PacketInfo {
    fn new(local: LocalAddr) -> Self {
        match local.ip {
            std::net::IpAddr::V4(ip) => PacketInfo::V4(libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            }),
            std::net::IpAddr::V6(ip) => PacketInfo::V6(libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: local.ifindex,
            }),
        }
    }

    fn message(&self) -> ControlMessage<'_> {
        match self {
            PacketInfo::V4(info) => ControlMessage::Ipv4PacketInfo(info),
            PacketInfo::V6(info) => ControlMessage::Ipv6PacketInfo(info),
        }
    }
}

/// Binds `count` UDP sockets to `addr` with `SO_REUSEPORT`, so the kernel spreads queries
/// over them. Port 0 picks one free port for all of them. With `udp_payload` (our largest
/// UDP answer) at most [`DONT_FRAGMENT_MAX`], answers leave with DF set.
pub fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
    udp_payload: u16,
) -> std::io::Result<Vec<UdpSocket>> {
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
        // On a wildcard address, learn each query's destination to answer from it.
        if bound.ip().is_unspecified() {
            use nix::sys::socket::{setsockopt, sockopt};
            let set = if bound.is_ipv6() {
                setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)
            } else {
                setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)
            };
            set.map_err(std::io::Error::from)?;
        }
        socket.set_reuse_port(true)?;
        if udp_payload <= DONT_FRAGMENT_MAX {
            dont_fragment(&socket, bound.is_ipv6())?;
        }
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

/// Largest `udp_payload` whose answers are sent with DF: 1452 bytes fit a 1500-byte link
/// under IPv6 and UDP headers. A bigger setting keeps the kernel's default, so its large
/// answers may still leave as fragments.
pub const DONT_FRAGMENT_MAX: u16 = 1452;

/// Answers leave with DF set and are never fragmented (RFC 9715, DNS Flag Day 2020): an
/// answer is at most `udp_payload` bytes (1232 by default, which fits any IPv6 path), and
/// a path too narrow for it makes the resolver retry over TCP rather than reassemble
/// spoofable fragments. `PROBE` sets DF without following path MTU updates, which a
/// forged ICMP message could lower. It also spares the kernel an IP ID per datagram
/// (`__ip_select_ident`: a hash and an atomic add on a shared table; a DF datagram's
/// ID is 0), 1.3-1.6 % of the CPU per answer under the peer bench's load.
fn dont_fragment(socket: &Socket, v6: bool) -> std::io::Result<()> {
    use rustix::net::sockopt;
    if v6 {
        sockopt::set_ipv6_mtu_discover(socket, sockopt::Ipv6PathMtuDiscovery::PROBE)?;
    } else {
        sockopt::set_ip_mtu_discover(socket, sockopt::Ipv4PathMtuDiscovery::PROBE)?;
    }
    Ok(())
}

/// Running UDP workers for one listen address.
#[derive(Debug)]
pub struct UdpWorkers {
    /// One per worker: sent when it has ended (its last answers sent, its socket closed),
    /// before its thread exits.
    ended: Vec<tokio::sync::oneshot::Receiver<()>>,
    stop: Arc<AtomicBool>,
    fallback: tokio::task::JoinHandle<()>,
    /// The workers' sockets (duplicates): shut for reading at stop, which wakes a worker
    /// blocked in its receive at once rather than at its next poll.
    wake: Vec<UdpSocket>,
}

impl UdpWorkers {
    /// Starts one worker thread per socket and the general-path task on `runtime`.
    pub fn start(
        sockets: Vec<UdpSocket>,
        routing: RoutingHandle,
        coalesce: Duration,
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
        let wake = sockets
            .iter()
            .map(UdpSocket::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut ended = Vec::with_capacity(sockets.len());
        for (index, socket) in sockets.into_iter().enumerate() {
            let routing = routing.clone();
            let stop = stop.clone();
            let queue = queue.clone();
            let (done, end) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name(format!("gto-udp-{index}"))
                .spawn(move || {
                    worker(socket, routing, queue, stop, coalesce);
                    let _ = done.send(());
                })?;
            ended.push(end);
        }
        Ok(Self {
            ended,
            stop,
            fallback,
            wake,
        })
    }

    /// Stops the workers after their current batch and waits until each has ended (its
    /// answers sent, its socket closed). Their threads exit on their own: the exit itself
    /// (the allocator giving the thread's pages back, a millisecond and more) is not
    /// waited for, so a stopping process exits sooner.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake_workers();
        // Woken by the shutdown above, workers end after their batch. A worker that
        // panicked dropped its sender: ended too.
        for ended in std::mem::take(&mut self.ended) {
            let _ = ended.await;
        }
        // The general path's task holds a duplicate of the first socket: gone too when
        // this returns (the port is free once the server is dropped).
        self.fallback.abort();
        let _ = (&mut self.fallback).await;
    }
}

impl UdpWorkers {
    /// Stops the workers without shutting their sockets: a replacement reads the same
    /// sockets ([`crate::handover`]). Each worker ends after its batch, within one poll
    /// interval, answering what it received; the rest stays queued for the replacement.
    pub async fn stop_sharing(mut self) {
        self.wake.clear();
        self.stop().await;
    }
}

impl Drop for UdpWorkers {
    /// Dropped without [`UdpWorkers::stop`] (an aborted start, an embedding that just
    /// drops the server): the threads still end, within one poll interval.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake_workers();
    }
}

impl UdpWorkers {
    /// Shuts the sockets for reading: a blocked receive returns at once (Linux), and the
    /// workers see the stop flag. Answers still leave (only reading is shut).
    fn wake_workers(&self) {
        for socket in &self.wake {
            let _ =
                nix::sys::socket::shutdown(socket.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        }
    }
}

/// The general path for what the fast path passed on: each query on its own task.
async fn general(
    mut queue: mpsc::Receiver<Passed>,
    handler: Handler,
    reply: Option<Arc<UdpSocket>>,
) {
    let Some(reply) = reply else { return };
    let handler = Arc::new(handler);
    let bound = reply.local_addr().ok();
    while let Some((query, source, local)) = queue.recv().await {
        let handler = handler.clone();
        let reply = reply.clone();
        tokio::spawn(async move {
            // A UDP send does not wait for the peer; it blocks only while the socket's send
            // buffer is full, which is brief.
            let server = server_addr(bound, local);
            if let Some(answer) =
                answer_bytes(&handler, &query, source, server, Protocol::Udp).await
                && let Err(error) = send_one(&reply, &answer, source, local)
            {
                debug!(%error, %source, "could not send an answer");
            }
        });
    }
}

/// A query the fast path passed on: its bytes, its source, and (on a wildcard socket)
/// its destination.
type Passed = (Vec<u8>, SocketAddr, Option<LocalAddr>);

/// Sends one answer, from `local` when the socket is a wildcard's.
fn send_one(
    socket: &UdpSocket,
    answer: &[u8],
    to: SocketAddr,
    local: Option<LocalAddr>,
) -> std::io::Result<()> {
    let Some(local) = local else {
        return socket.send_to(answer, to).map(drop);
    };
    let info = PacketInfo::new(local);
    let destination = SockaddrStorage::from(to);
    nix::sys::socket::sendmsg(
        socket.as_raw_fd(),
        &[IoSlice::new(answer)],
        &[info.message()],
        MsgFlags::empty(),
        Some(&destination),
    )
    .map(drop)
    .map_err(std::io::Error::from)
}

/// Our address a query came to: the socket's, or on a wildcard socket the datagram's
/// destination with the socket's port.
fn server_addr(bound: Option<SocketAddr>, local: Option<LocalAddr>) -> Option<SocketAddr> {
    match (bound, local) {
        (Some(bound), Some(local)) => Some(SocketAddr::new(local.ip, bound.port())),
        (bound, _) => bound,
    }
}

/// Pre-registered counters a worker folds its local counts into after every batch.
struct Folded {
    fast: FastCounters,
    latency: metrics::Histogram,
    dropped: metrics::Counter,
}

impl Folded {
    /// The worker's counters, looked up once.
    fn new() -> Self {
        Folded {
            fast: FastCounters::new("udp"),
            dropped: metrics::counter!(DNS_BAD_QUERIES_TOTAL, "reason" => "overload"),
            latency: metrics::histogram!(DNS_FAST_BATCH_SECONDS),
        }
    }
}

/// A datagram received: its length, source, whether it was cut short, and its destination
/// on a wildcard socket.
type Received = (usize, Option<SocketAddr>, bool, Option<LocalAddr>);

/// An answer to send: its length, destination, where it is in the outputs, and the address
/// it leaves from on a wildcard socket.
type Answer = (usize, SocketAddr, usize, Option<LocalAddr>);

/// Receives up to `slots` (at most [`BATCH`]) datagrams: blocks for the first, takes
/// what else is queued. Fills `received` with each one's length, source, whether it was
/// cut short and (on a `wildcard` socket) its destination; returns how many arrived (0
/// after an interruption or a receive error, which is logged).
fn receive_batch(
    fd: std::os::fd::RawFd,
    receive: &mut MultiHeaders<SockaddrStorage>,
    buffers: &mut [[u8; MAX_QUERY]; BATCH],
    received: &mut [Received; BATCH],
    (slots, wildcard): (usize, bool),
) -> usize {
    let mut slices = buffers.each_mut().map(|b| [IoSliceMut::new(b)]);
    match recvmmsg(
        fd,
        receive,
        slices.iter_mut().take(slots),
        MsgFlags::MSG_WAITFORONE,
        None,
    ) {
        Ok(results) => {
            let mut n = 0;
            for message in results {
                let local = wildcard
                    .then(|| message.cmsgs().ok()?.find_map(LocalAddr::of))
                    .flatten();
                received[n] = (
                    message.bytes,
                    message.address.and_then(socket_addr),
                    message.flags.contains(MsgFlags::MSG_TRUNC),
                    local,
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
}

fn worker(
    socket: UdpSocket,
    routing: RoutingHandle,
    queue: mpsc::Sender<Passed>,
    stop: Arc<AtomicBool>,
    coalesce: Duration,
) {
    let fd = socket.as_raw_fd();
    let mut buffers: Box<[[u8; MAX_QUERY]; BATCH]> = Box::new([[0; MAX_QUERY]; BATCH]);
    let mut outputs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1232)).collect();
    // A wildcard socket's datagrams carry their destination: room for it, exactly (the
    // kernel writes the length back, and nix reuses it for the next receive).
    let bound = socket.local_addr().ok();
    let wildcard = bound.is_some_and(|a| a.ip().is_unspecified());
    let control = wildcard.then(|| {
        if bound.is_some_and(|a| a.is_ipv6()) {
            nix::cmsg_space!(libc::in6_pktinfo)
        } else {
            nix::cmsg_space!(libc::in_pktinfo)
        }
    });
    let mut receive = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, control);
    let mut transmit = Transmit::new();
    let mut scratch = FastScratch::default();
    let folded = Folded::new();
    let mut dropped = 0u64;
    let mut received: [Received; BATCH] = [(0, None, false, None); BATCH];
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut answers: [Answer; BATCH] = [(0, unspecified, 0, None); BATCH];

    let mut pace = Pace::new(coalesce);
    let mut slots = BATCH;
    while !stop.load(Ordering::Acquire) {
        // Receive up to `slots` datagrams: block for the first, take what else is queued.
        let count = receive_batch(
            fd,
            &mut receive,
            &mut buffers,
            &mut received,
            (slots, wildcard),
        );
        let asked = slots;
        slots = receive_slots(slots, count);
        let mut replies = 0;
        let started = Instant::now();
        pace.batch(count, started);
        if count > 0 {
            // One snapshot for the whole batch.
            let snapshot = routing.load();
            let tap = snapshot.dnstap.as_deref();
            let read_at = tap.map(|_| std::time::SystemTime::now());
            for (i, &(len, address, truncated, local)) in received.iter().take(count).enumerate() {
                let Some(source) = address else {
                    continue;
                };
                let query = &buffers[i][..len.min(MAX_QUERY)];
                let fast = if truncated {
                    Reply::General
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
                if let (Some(tap), Some(read_at)) = (tap, read_at)
                    && fast != Reply::General
                {
                    let response = match fast {
                        Reply::Send(length) => Some(&outputs[replies][..length]),
                        _ => None,
                    };
                    let addresses = (source, server_addr(bound, local));
                    tap.exchange(
                        crate::dnstap::Transport::Udp,
                        addresses,
                        query,
                        response,
                        read_at,
                    );
                }
                match fast {
                    Reply::Drop => {}
                    Reply::Send(length) => {
                        answers[replies] = (length, source, replies, local);
                        replies += 1;
                    }
                    Reply::General => {
                        if queue.try_send((query.to_vec(), source, local)).is_err() {
                            dropped += 1;
                        }
                    }
                }
            }
            fold_endpoint_counts(&snapshot, &mut scratch);
        }
        // Once per batch: one atomic add per query type seen, not one per query; before
        // the answers leave, so a scrape after an answer always counts it.
        fold(&folded, &mut scratch, &mut dropped);
        if replies > 0 {
            if wildcard {
                send_from_each(fd, &mut transmit, &outputs, &mut answers[..replies]);
            } else {
                send_batch(fd, &mut transmit, &outputs, &answers[..replies], None);
            }
        }
        if count > 0 {
            // Received to sent, read once for both uses.
            let handled = started.elapsed();
            pace.handled(handled);
            if replies > 0 {
                // Per answer: one sample per batch (its mean), so the histogram costs
                // nothing per query.
                let per_answer = handled.as_secs_f64() / replies as f64;
                folded.latency.record(per_answer);
            }
        }
        // A small batch: let queries gather for a moment rather than sleep and wake for
        // each one (see `ServerSettings::udp_coalesce`). Its answers are already sent.
        // A batch that filled its slots is not small: more may be queued.
        if count > 0 && count < COALESCE_BELOW.min(asked) && pace.pause() {
            std::thread::sleep(coalesce);
            // The pause fills the queue: take all of it at once.
            slots = BATCH;
        }
    }
}

/// Fewest datagrams a receive asks for.
const MIN_SLOTS: usize = 4;

/// How many datagrams the next receive asks for, after one asked for `slots` and got
/// `count`: all [`BATCH`] after a full batch (more may be queued), else twice the batch
/// just received (a power of two, at least [`MIN_SLOTS`]). Every slot offered is a
/// message header prepared before the call, ~20 instructions each: at low rates, where
/// a batch is one query, 32 of them were a fifth of a query's handling (callgrind).
/// Unchanged after a receive that got nothing (a timeout or an interruption). After a
/// coalescing pause the worker asks for all of them whatever this says: the pause fills
/// the queue.
fn receive_slots(slots: usize, count: usize) -> usize {
    match count {
        0 => slots,
        full if full >= slots => BATCH,
        count => (count * 2).next_power_of_two().clamp(MIN_SLOTS, BATCH),
    }
}

/// When the `udp_coalesce` pause pays. Either of two things says so:
///
/// - queries arrive fast enough that a pause gathers at least [`Pace::GATHERS`] more for
///   the next batch (160,000 queries/s per worker with the default 100 µs; at 8, 80,000
///   q/s, one worker that the kernel gave 100,000 q/s paused, and its p50 was 0.105 ms
///   against gdnsd's 0.014);
/// - or the worker is busy: handling its batches (received to sent) takes a third of the
///   time between them or more, pauses left out (the receive call itself is not timed,
///   and where system calls are dear it is much of a batch: at half, a saturated
///   worker there paused only every other time). Where system calls are dear (a nested
///   virtual machine: 20-25 µs for a `recvmmsg` and a `sendmmsg` of a few datagrams), a
///   worker is saturated at 140,000 queries/s with 6 queries a batch, never reaches the
///   rate above, and spent 1.4-1.5x the kernel floor's CPU per answer for want of the
///   pause; with it, 17-20 a batch, as the floor's, and about the floor's CPU (README,
///   Performance). A worker that busy makes its queries wait for its batches anyway,
///   so the pause costs little latency (at 20,000 queries/s there: p50 0.053-0.058 ms
///   paused, gdnsd's 0.054-0.062).
///
/// Below both, a pause would only delay answers (at 10,000 queries/s per worker on a
/// fast machine it tripled gto's latency). The rate is a moving average of each batch's
/// queries over the time since the batch before (processing, sending and any pause
/// included, so pausing does not make the rate look higher than it is); the busy share
/// is the moving average of handling times over that of the times between batches less
/// the pause (so that pausing, which fills the queue, does not keep itself going).
struct Pace {
    pause_ns: u64,
    /// Moving average of the time per query between batches, in nanoseconds.
    per_query_ns: u64,
    last: Option<Instant>,
    /// Moving average of a batch's handling time (received to sent), in nanoseconds.
    busy_ns: u64,
    /// Moving average of the time between batches less any pause, in nanoseconds.
    span_ns: u64,
    /// Whether the worker paused after the last batch.
    paused: bool,
}

impl Pace {
    /// A pause must gather at least this many queries to pay.
    const GATHERS: u64 = 16;

    fn new(pause: Duration) -> Self {
        Self {
            pause_ns: u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX),
            // Start as idle: no pause until the rate or the work says so.
            per_query_ns: u64::MAX / 8,
            last: None,
            busy_ns: 0,
            span_ns: 0,
            paused: false,
        }
    }

    /// A batch of `count` queries was received at `now`.
    fn batch(&mut self, count: usize, now: Instant) {
        let Some(last) = self.last.replace(now) else {
            return;
        };
        let mut gap = u64::try_from(now.duration_since(last).as_nanos()).unwrap_or(u64::MAX);
        let sample = gap / (count.max(1) as u64);
        // One eighth of the new sample: a burst does not flip it, a sustained rate does.
        self.per_query_ns = self.per_query_ns - self.per_query_ns / 8 + sample / 8;
        if std::mem::take(&mut self.paused) {
            gap = gap.saturating_sub(self.pause_ns);
        }
        let gap = gap.min(u64::MAX / 8);
        self.span_ns = match self.span_ns {
            0 => gap, // the first
            span => span - span / 8 + gap / 8,
        };
    }

    /// The batch received last was handled (its answers sent) in `took`.
    fn handled(&mut self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).map_or(u64::MAX / 8, |ns| ns.min(u64::MAX / 8));
        self.busy_ns = self.busy_ns - self.busy_ns / 8 + took / 8;
    }

    /// Whether pausing now would pay; if so, the caller pauses (see [`Pace`]).
    fn pause(&mut self) -> bool {
        let fast = self.per_query_ns.saturating_mul(Self::GATHERS) <= self.pause_ns;
        let busy = self.span_ns > 0 && self.busy_ns.saturating_mul(3) >= self.span_ns;
        self.paused = self.pause_ns > 0 && (fast || busy);
        self.paused
    }
}

/// Per-worker send state: headers for plain datagrams and for GSO sends, whose control
/// buffer (one `UDP_SEGMENT` message each) is allocated once here.
struct Transmit {
    plain: MultiHeaders<SockaddrStorage>,
    gso: MultiHeaders<SockaddrStorage>,
    /// The same with the source address (wildcard sockets), IPv4 and IPv6: a control
    /// buffer holds exactly its messages (the kernel refuses trailing room).
    plain_from: [MultiHeaders<SockaddrStorage>; 2],
    gso_from: [MultiHeaders<SockaddrStorage>; 2],
    /// Off once the kernel refused a GSO send.
    gso_on: bool,
    /// Destinations of one `sendmmsg` (reused: a `SockaddrStorage` is 128 bytes).
    addresses: Vec<Option<SockaddrStorage>>,
}

impl Transmit {
    fn new() -> Self {
        let headers = |space: Option<Vec<u8>>| MultiHeaders::preallocate(BATCH, space);
        Self {
            plain: headers(None),
            gso: headers(Some(nix::cmsg_space!(u16))),
            plain_from: [
                headers(Some(nix::cmsg_space!(libc::in_pktinfo))),
                headers(Some(nix::cmsg_space!(libc::in6_pktinfo))),
            ],
            gso_from: [
                headers(Some(nix::cmsg_space!(u16, libc::in_pktinfo))),
                headers(Some(nix::cmsg_space!(u16, libc::in6_pktinfo))),
            ],
            gso_on: true,
            addresses: Vec::with_capacity(BATCH),
        }
    }
}

/// Sends a wildcard socket's batch once per address its answers leave from (the source
/// address is one control message for a whole `sendmmsg`).
fn send_from_each(fd: RawFd, transmit: &mut Transmit, outputs: &[Vec<u8>], answers: &mut [Answer]) {
    // Grouped by source address, in the order they arrived within each.
    answers.sort_by_key(|a| (a.3.map(|l| (l.ip, l.ifindex)), a.2));
    let mut start = 0;
    while start < answers.len() {
        let local = answers[start].3;
        let end = answers[start..]
            .iter()
            .position(|a| a.3 != local)
            .map_or(answers.len(), |n| start + n);
        send_batch(fd, transmit, outputs, &answers[start..end], local);
        start = end;
    }
}

/// Answers of one length to one destination: one GSO message when there are several.
#[derive(Clone, Copy)]
struct Group {
    /// Payload length of each answer in it (the GSO segment size).
    length: usize,
    /// Where they go.
    address: SocketAddr,
    /// How many answers it holds.
    members: usize,
    /// Where its payloads start in the batch's flat list.
    start: usize,
    /// How many of its payloads are placed in the flat list so far.
    placed: usize,
    /// The kernel refused GSO: its answers go one by one.
    refused: bool,
}

impl Group {
    fn new(length: usize, address: SocketAddr) -> Self {
        Self {
            length,
            address,
            members: 0,
            start: 0,
            placed: 0,
            refused: false,
        }
    }
}

/// Groups the answers of a batch by equal (length, destination), at most
/// [`GSO_SEGMENTS`] and [`GSO_BYTES`] each (one group per answer without GSO); fills
/// `group_of` (answer -> group) and returns how many groups there are.
fn group_answers(
    gso_on: bool,
    answers: &[Answer],
    groups: &mut [Group; BATCH],
    group_of: &mut [usize; BATCH],
) -> usize {
    let mut count = 0;
    for (i, &(length, address, ..)) in answers.iter().enumerate() {
        let joinable = |g: &Group| {
            g.length == length
                && g.address == address
                && g.members < GSO_SEGMENTS
                && (g.members + 1) * length <= GSO_BYTES
        };
        let joined = (gso_on && length <= GSO_SEGMENT_MAX)
            .then(|| groups[..count].iter().rposition(joinable))
            .flatten();
        let g = joined.unwrap_or_else(|| {
            groups[count] = Group::new(length, address);
            count += 1;
            count - 1
        });
        groups[g].members += 1;
        group_of[i] = g;
    }
    count
}

/// Sends a batch of answers. Answers of one length to one destination (a resolver with
/// several queries in flight) leave as one message with `UDP_SEGMENT` (UDP GSO, Linux
/// 4.18): the kernel runs its UDP/IP output path once for the group and cuts it into
/// datagrams at the end, which saves most of the per-datagram cost of sending. Groups of
/// one length share a `sendmmsg`, and most batches take one (see the GSO calls below).
/// If the kernel refuses GSO, it is turned off for this worker and the groups go out
/// datagram by datagram.
fn send_batch(
    fd: RawFd,
    transmit: &mut Transmit,
    outputs: &[Vec<u8>],
    answers: &[Answer],
    local: Option<LocalAddr>,
) {
    let info = local.map(PacketInfo::new);
    // A batch of one answer (nearly every batch at low rates) is one plain datagram:
    // nothing to group. The grouping below costs ~900 instructions for it (callgrind),
    // more than the rest of the query's handling.
    if let [(length, address, output, _)] = *answers {
        let payload = outputs.get(output).and_then(|o| o.get(..length));
        let iov = [IoSlice::new(payload.unwrap_or_default())];
        transmit.addresses.clear();
        transmit
            .addresses
            .push(Some(SockaddrStorage::from(address)));
        send_plain(fd, transmit, &[&iov], info.as_ref());
        return;
    }
    let family = usize::from(matches!(info, Some(PacketInfo::V6(_))));
    let mut groups = [Group::new(0, SocketAddr::from(([0, 0, 0, 0], 0))); BATCH];
    let mut group_of = [0usize; BATCH];
    let count = group_answers(transmit.gso_on, answers, &mut groups, &mut group_of);
    // One flat list of payloads, group after group; each group is a run of it.
    let mut next = 0;
    for group in &mut groups[..count] {
        group.start = next;
        next += group.members;
    }
    // Position in the flat list -> answer.
    let mut answer_at = [0usize; BATCH];
    for (i, &g) in group_of.iter().enumerate().take(answers.len()) {
        let group = &mut groups[g];
        answer_at[group.start + group.placed] = i;
        group.placed += 1;
    }
    let flat: [IoSlice<'_>; BATCH] = std::array::from_fn(|k| {
        let payload = (k < answers.len())
            .then(|| {
                let (length, _, output, _) = answers[answer_at[k]];
                outputs.get(output).and_then(|o| o.get(..length))
            })
            .flatten();
        IoSlice::new(payload.unwrap_or_default())
    });
    let run = |group: &Group| &flat[group.start..group.start + group.members];

    // GSO calls, one sendmmsg per segment length that several answers to a destination
    // share. The call of the longest such length also takes every answer that is alone
    // and no longer (the kernel sends a message no longer than its segment size as one
    // plain datagram), so a batch takes one system call per such length, plus one for
    // the longer lone answers, if any. Groups of another length do not ride as plain
    // datagrams: measured with a mix of names and types, sending their answers one by
    // one cost more than the call it saved, even where system calls are dear. A batch of
    // lone answers (every batch at low rates) goes plain, in one call, with no GSO
    // option: the kernel builds a plain datagram faster than a GSO one of one segment.
    let largest = groups[..count]
        .iter()
        .filter(|g| g.members > 1)
        .map(|g| g.length)
        .filter(|&length| transmit.gso_on && length <= GSO_SEGMENT_MAX)
        .max();
    // The segment length of the call each group goes in; None: a plain datagram each.
    let mut call_of = [None; BATCH];
    for (call, group) in call_of.iter_mut().zip(&groups[..count]) {
        *call = match largest {
            Some(largest) if group.members == 1 && group.length <= largest => Some(largest),
            Some(_) if group.members > 1 && group.length <= GSO_SEGMENT_MAX => Some(group.length),
            _ => None,
        };
    }
    for g in 0..count {
        let Some(segment) = call_of[g] else {
            continue;
        };
        if call_of[..g].contains(&Some(segment)) {
            continue; // that call has run
        }
        if !transmit.gso_on {
            // Refused by an earlier call: plain datagrams below.
            for (group, call) in groups[..count].iter_mut().zip(&call_of) {
                group.refused |= *call == Some(segment);
            }
            continue;
        }
        // Its messages: one per group, GSO when the group has several answers.
        let mut runs: [&[IoSlice<'_>]; BATCH] = [&[]; BATCH];
        let mut n = 0;
        transmit.addresses.clear();
        for (group, _) in groups[..count]
            .iter()
            .zip(&call_of)
            .skip(g)
            .filter(|(_, call)| **call == Some(segment))
        {
            runs[n] = run(group);
            transmit
                .addresses
                .push(Some(SockaddrStorage::from(group.address)));
            n += 1;
        }
        let length = segment as u16;
        let gso = ControlMessage::UdpGsoSegments(&length);
        let (one, two);
        let (headers, cmsgs): (_, &[ControlMessage<'_>]) = match &info {
            None => {
                one = [gso];
                (&mut transmit.gso, &one)
            }
            Some(info) => {
                two = [gso, info.message()];
                (&mut transmit.gso_from[family], &two)
            }
        };
        if let Err(error) = send_all(fd, headers, &runs[..n], &transmit.addresses, cmsgs, true) {
            warn!(%error, "UDP GSO refused; this worker sends datagrams one by one");
            transmit.gso_on = false;
            // What this call carried goes with the plain datagrams below.
            for (group, call) in groups[..count].iter_mut().zip(&call_of) {
                if *call == Some(segment) {
                    group.refused = true;
                }
            }
        }
    }

    // Answers GSO cannot carry (or that it refused), one datagram each.
    let mut singles: [&[IoSlice<'_>]; BATCH] = [&[]; BATCH];
    transmit.addresses.clear();
    let mut n = 0;
    for (group, _) in groups[..count]
        .iter()
        .zip(&call_of)
        .filter(|(g, call)| call.is_none() || g.refused)
    {
        for k in group.start..group.start + group.members {
            singles[n] = &flat[k..k + 1];
            transmit
                .addresses
                .push(Some(SockaddrStorage::from(group.address)));
            n += 1;
        }
    }
    if n > 0 {
        send_plain(fd, transmit, &singles[..n], info.as_ref());
    }
}

/// Sends `messages` as plain datagrams, each to its address in `transmit.addresses`
/// (from `info`'s address on a wildcard socket).
fn send_plain(
    fd: RawFd,
    transmit: &mut Transmit,
    messages: &[&[IoSlice<'_>]],
    info: Option<&PacketInfo>,
) {
    let one;
    let (headers, cmsgs): (_, &[ControlMessage<'_>]) = match info {
        None => (&mut transmit.plain, &[]),
        Some(info) => {
            let family = usize::from(matches!(info, PacketInfo::V6(_)));
            one = [info.message()];
            (&mut transmit.plain_from[family], &one)
        }
    };
    if let Err(error) = send_all(fd, headers, messages, &transmit.addresses, cmsgs, false) {
        debug!(%error, "UDP send failed");
    }
}

/// One `sendmmsg` for all `messages` (more calls when the kernel takes fewer). A datagram
/// the kernel refuses is skipped; with `gso`, refusals GSO can cause are returned at once.
fn send_all(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    messages: &[&[IoSlice<'_>]],
    addresses: &[Option<SockaddrStorage>],
    cmsgs: &[ControlMessage<'_>],
    gso: bool,
) -> Result<(), Errno> {
    let mut sent = 0;
    while sent < messages.len() {
        match sendmmsg(
            fd,
            headers,
            messages[sent..].iter(),
            &addresses[sent..],
            cmsgs,
            MsgFlags::empty(),
        ) {
            Ok(results) => {
                let n = results.count();
                if n == 0 {
                    break;
                }
                sent += n;
            }
            Err(Errno::EINTR) => {}
            Err(error @ (Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP))
                if gso && sent == 0 =>
            {
                return Err(error);
            }
            Err(error) => {
                debug!(%error, "UDP send failed");
                sent += 1; // skip the datagram the kernel refused
            }
        }
    }
    Ok(())
}

fn fold(folded: &Folded, scratch: &mut FastScratch, dropped: &mut u64) {
    folded.fast.fold(scratch);
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

/// Answers in flight at most on a plain UDP loop; more are dropped and counted.
const GENERAL_IN_FLIGHT: usize = 4096;

/// `workers = 0`: one plain loop on `socket` that answers every query on the general path
/// (each on its own task, at most 4,096 at once), until `token` is
/// cancelled.
pub async fn serve_general(
    socket: tokio::net::UdpSocket,
    handler: Arc<Handler>,
    token: tokio_util::sync::CancellationToken,
) {
    let socket = Arc::new(socket);
    let bound = socket.local_addr().ok();
    let slots = Arc::new(tokio::sync::Semaphore::new(GENERAL_IN_FLIGHT));
    let overload = metrics::counter!(DNS_BAD_QUERIES_TOTAL, "reason" => "overload");
    let mut buffer = vec![0u8; MAX_QUERY];
    loop {
        let (len, source) = tokio::select! {
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(error) => {
                    debug!(%error, "UDP receive failed");
                    continue;
                }
            },
            () = token.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            overload.increment(1);
            continue;
        };
        let query = buffer[..len].to_vec();
        let (handler, socket) = (handler.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(answer) = answer_bytes(&handler, &query, source, bound, Protocol::Udp).await
                && let Err(error) = socket.send_to(&answer, source).await
            {
                debug!(%error, %source, "could not send an answer");
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_leave_unfragmented_unless_udp_payload_is_above_a_link() {
        use rustix::net::sockopt::{
            Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery, ip_mtu_discover, ipv6_mtu_discover,
        };
        let v4 = "127.0.0.1:0".parse().unwrap();
        for socket in bind_reuseport(v4, 2, 1232).unwrap() {
            assert_eq!(
                ip_mtu_discover(&socket).unwrap(),
                Ipv4PathMtuDiscovery::PROBE
            );
        }
        for socket in bind_reuseport(v4, 1, 4096).unwrap() {
            assert_ne!(
                ip_mtu_discover(&socket).unwrap(),
                Ipv4PathMtuDiscovery::PROBE
            );
        }
        // IPv6 where the machine has it.
        if let Ok(sockets) = bind_reuseport("[::1]:0".parse().unwrap(), 1, 1452) {
            for socket in sockets {
                assert_eq!(
                    ipv6_mtu_discover(&socket).unwrap(),
                    Ipv6PathMtuDiscovery::PROBE
                );
            }
        }
    }

    #[test]
    fn a_receive_asks_for_as_many_datagrams_as_the_traffic_brings() {
        // A lone query: the next receive asks for the fewest.
        assert_eq!(receive_slots(BATCH, 1), MIN_SLOTS);
        assert_eq!(receive_slots(MIN_SLOTS, 1), MIN_SLOTS);
        // A full batch, however small: all of them next (more may be queued).
        assert_eq!(receive_slots(MIN_SLOTS, MIN_SLOTS), BATCH);
        assert_eq!(receive_slots(BATCH, BATCH), BATCH);
        // In between: room for twice the batch, a power of two.
        assert_eq!(receive_slots(BATCH, 3), 8);
        assert_eq!(receive_slots(BATCH, 5), 16);
        assert_eq!(receive_slots(16, 9), BATCH);
        // Nothing received (a timeout): unchanged.
        assert_eq!(receive_slots(8, 0), 8);
    }

    /// Feeds `batches` batches of `count` queries, `every` apart, each handled in `took`
    /// (and followed by a pause when one pays); whether a pause pays after them.
    fn after(
        pace: &mut Pace,
        start: Instant,
        batches: u32,
        (count, every, took): (usize, Duration, Duration),
    ) -> bool {
        let pause = Duration::from_nanos(pace.pause_ns);
        let mut at = start;
        for _ in 0..batches {
            pace.batch(count, at);
            pace.handled(took);
            at += every;
            if pace.pause() {
                // The pause adds to the time between batches.
                at += pause;
            }
        }
        pace.pause()
    }

    #[test]
    fn a_pause_pays_only_when_queries_come_fast_enough() {
        let us = Duration::from_micros;
        let start = Instant::now();
        let mut pace = Pace::new(us(100));
        assert!(!pace.pause(), "idle at start");
        // 10,000 queries/s: one every 100 us, handled in 5; a 100 us pause would gather one.
        assert!(!after(&mut pace, start, 200, (1, us(100), us(5))));
        // 100,000 queries/s per worker: 4 per 40 us batch, handled in 10; a pause would
        // gather ten, too few to pay for the wait.
        let later = start + Duration::from_secs(1);
        assert!(!after(&mut pace, later, 200, (4, us(40), us(10))));
        // 400,000 queries/s per worker (saturation): 4 per 10 us; a pause gathers forty.
        let later = start + Duration::from_millis(1500);
        assert!(after(&mut pace, later, 200, (4, us(10), us(5))));
        // Back to 1,000 queries/s: no more pauses.
        let later = start + Duration::from_secs(2);
        assert!(!after(
            &mut pace,
            later,
            200,
            (1, Duration::from_millis(1), us(5))
        ));
        // Off when configured off.
        let mut off = Pace::new(Duration::ZERO);
        assert!(!after(&mut off, later, 200, (4, us(1), us(1))));
    }

    #[test]
    fn a_busy_worker_pauses_whatever_the_rate_and_stops_when_the_work_ends() {
        let us = Duration::from_micros;
        let start = Instant::now();
        let mut pace = Pace::new(us(100));
        // Where system calls are dear: 6 queries every 45 us (133,000 q/s, too slow for
        // the rate alone), each batch taking 35 us to handle: busy, so it pauses; and it
        // keeps pausing once the pauses fill its batches (then 20 per 100 us pause + 45).
        assert!(after(&mut pace, start, 50, (6, us(45), us(35))));
        assert!(after(
            &mut pace,
            start + us(10_000),
            200,
            (20, us(45), us(40))
        ));
        // The same work at 20,000 queries/s on a fast machine (a batch of one handled in
        // 5 us of its 50): no pause.
        let later = start + Duration::from_secs(1);
        assert!(!after(&mut pace, later, 200, (1, us(50), us(5))));
        // Busy again, then the load ends: a few batches later the pause stops, although
        // every batch it gathers is still handled slowly.
        let later = start + Duration::from_secs(2);
        assert!(after(&mut pace, later, 200, (1, us(40), us(30))));
        let later = start + Duration::from_secs(3);
        assert!(!after(
            &mut pace,
            later,
            40,
            (1, Duration::from_millis(1), us(30))
        ));
    }
}
