//! dnstap: queries and responses logged as dnstap messages (the protobuf schema of
//! dnstap.info) in Frame Streams, to a reader's Unix socket or to a file, as Knot, BIND,
//! Unbound and PowerDNS write them, so their tools (`dnstap`, `dnstap-ldns`,
//! `fstrm_capture`) read gto's.
//!
//! ```text
//! query path ──Event──> bounded lock-free queue ──> writer thread ──frames──> socket/file
//!   (copies the query       (full: dropped,            (encodes protobuf, names the
//!    and answer bytes)        counted)                  GSLB endpoints, reconnects)
//! ```
//!
//! The query path only copies bytes into an [`Event`] and pushes it (never blocks, never
//! waits for the reader); with dnstap off it tests one `Option`. Everything else happens
//! on the writer thread: encoding, the `extra` field of a GSLB answer (`gslb NAME
//! POOL/MEMBER ...`, the endpoints whose addresses it holds, in answer order, from the
//! snapshot then current), the Frame Streams handshake (READY, ACCEPT, START ... STOP,
//! FINISH on a socket; START ... STOP in a file) and reconnecting to a reader that went
//! away (what is logged meanwhile is dropped and counted).
//!
//! Frame Streams is written here (a few dozen lines of the published protocol): the Rust
//! crates for it are unmaintained and built on tokio 0.1-era `mio`.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use crossbeam_queue::ArrayQueue;
use tracing::{info, warn};

use crate::config::{DnstapOutput, DnstapSettings};
use crate::metrics::{DNSTAP_DROPPED_TOTAL, DNSTAP_MESSAGES_TOTAL};
use crate::routing::{RoutingHandle, WeakRouting};

/// The Frame Streams content type of dnstap.
const CONTENT_TYPE: &[u8] = b"protobuf:dnstap.Dnstap";

/// How long the writer waits for more when the queue is empty.
const IDLE: Duration = Duration::from_millis(10);
/// How long between attempts to reach a reader (or open the file) that failed.
const RETRY: Duration = Duration::from_secs(1);
/// Frames encoded into one write at most, in bytes.
const BATCH_BYTES: usize = 256 * 1024;

/// The transport a query came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

/// One query and what was answered, as the query path hands it over.
#[derive(Debug)]
pub struct Event {
    /// UDP or TCP.
    pub transport: Transport,
    /// The client (the query's source).
    pub client: SocketAddr,
    /// Our address the query came to, when known.
    pub server: Option<SocketAddr>,
    /// The query's bytes.
    pub query: Box<[u8]>,
    /// The response's bytes; None when nothing was sent (rate limiting dropped it).
    pub response: Option<Box<[u8]>>,
    /// When the query was read.
    pub received: SystemTime,
    /// When the response was made.
    pub answered: SystemTime,
}

/// The running log of one `[dnstap]` setting: the queue the query path pushes to and the
/// writer thread behind it. Shared by the snapshots of the configs with this setting; when
/// the last goes (a reload changed it, or shutdown), the writer drains the queue, ends the
/// stream and stops.
#[derive(Debug)]
pub struct Tap {
    settings: DnstapSettings,
    queue: Arc<ArrayQueue<Event>>,
    /// Sampling: a query is logged when a random u64 is below this.
    threshold: Option<u64>,
    shared: Arc<Shared>,
    /// Told when the writer has ended the stream.
    done: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

/// What the writer shares with the [`Tap`].
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// The routing table, for the endpoints of GSLB answers (weak: the snapshots hold the
    /// tap).
    routing: OnceLock<WeakRouting>,
}

impl Tap {
    /// Starts the writer thread of `settings`.
    pub fn start(settings: DnstapSettings) -> std::io::Result<Arc<Self>> {
        let queue = Arc::new(ArrayQueue::new(settings.queue.max(1)));
        let shared = Arc::new(Shared::default());
        let threshold =
            (settings.sample < 1.0).then_some((settings.sample * u64::MAX as f64) as u64);
        let writer = Writer {
            settings: settings.clone(),
            queue: queue.clone(),
            shared: shared.clone(),
        };
        let (done_tx, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("gto-dnstap".into())
            .spawn(move || {
                writer.run();
                let _ = done_tx.send(());
            })?;
        Ok(Arc::new(Self {
            settings,
            queue,
            threshold,
            shared,
            done: std::sync::Mutex::new(Some(done)),
        }))
    }

    /// At shutdown, once no query is answered any more: the writer writes what is queued,
    /// ends the stream (STOP; FINISH from a socket reader) and stops, waited for at most
    /// `within`.
    pub async fn finish(&self, within: Duration) {
        self.shared.stop.store(true, Ordering::Release);
        let done = self.done.lock().ok().and_then(|mut done| done.take());
        if let Some(done) = done {
            let _ = tokio::time::timeout(within, done).await;
        }
    }

    /// The setting it logs for.
    pub fn settings(&self) -> &DnstapSettings {
        &self.settings
    }

    /// Lets the writer name the endpoints of GSLB answers from this routing table.
    pub fn attach(&self, routing: &RoutingHandle) {
        let _ = self.shared.routing.set(routing.downgrade());
    }

    /// Whether this query is logged (`sample`): decide before copying anything.
    pub fn sampled(&self) -> bool {
        self.threshold
            .is_none_or(|threshold| rand::random::<u64>() < threshold)
    }

    /// Logs one exchange when it is sampled: copies the query and the response (None:
    /// nothing was sent) into an [`Event`] for the writer. The whole cost on the query
    /// path.
    pub fn exchange(
        &self,
        transport: Transport,
        (client, server): (SocketAddr, Option<SocketAddr>),
        query: &[u8],
        response: Option<&[u8]>,
        received: SystemTime,
    ) {
        if !self.sampled() {
            return;
        }
        self.log(Event {
            transport,
            client,
            server,
            query: query.into(),
            response: response.map(Into::into),
            received,
            answered: SystemTime::now(),
        });
    }

    /// Hands an event to the writer; when the queue is full it is dropped and counted.
    pub fn log(&self, event: Event) {
        if self.queue.push(event).is_err() {
            metrics::counter!(DNSTAP_DROPPED_TOTAL, "reason" => "queue_full").increment(1);
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

/// The writer thread's side.
struct Writer {
    settings: DnstapSettings,
    queue: Arc<ArrayQueue<Event>>,
    shared: Arc<Shared>,
}

/// Where frames are written, once started.
enum Output {
    Socket(UnixStream),
    File(std::io::BufWriter<std::fs::File>),
}

impl Writer {
    fn run(self) {
        let mut output: Option<Output> = None;
        let mut retry_at = tokio::time::Instant::now();
        let mut failing = false;
        let mut frames = Vec::with_capacity(BATCH_BYTES);
        loop {
            let stopping = self.shared.stop.load(Ordering::Acquire);
            if output.is_none() && tokio::time::Instant::now() >= retry_at {
                match open(&self.settings.output) {
                    Ok(opened) => {
                        info!(output = %describe(&self.settings.output), "dnstap log started");
                        failing = false;
                        output = Some(opened);
                    }
                    Err(error) => {
                        if !failing {
                            warn!(output = %describe(&self.settings.output), %error, "dnstap log cannot be written; retrying every second, dropping messages meanwhile");
                        }
                        failing = true;
                        retry_at = tokio::time::Instant::now() + RETRY;
                    }
                }
            }
            frames.clear();
            let mut messages = 0u64;
            let routing = self
                .shared
                .routing
                .get()
                .and_then(WeakRouting::upgrade)
                .map(|handle| handle.load_full());
            while frames.len() < BATCH_BYTES {
                let Some(event) = self.queue.pop() else {
                    break;
                };
                messages += self.encode(&event, routing.as_deref(), &mut frames);
            }
            if messages > 0 {
                match output.as_mut().map(|out| out.write_frames(&frames)) {
                    Some(Ok(())) => {
                        metrics::counter!(DNSTAP_MESSAGES_TOTAL).increment(messages);
                    }
                    Some(Err(error)) => {
                        warn!(output = %describe(&self.settings.output), %error, "dnstap write failed; reconnecting");
                        metrics::counter!(DNSTAP_DROPPED_TOTAL, "reason" => "write_error")
                            .increment(messages);
                        output = None;
                        failing = true;
                        retry_at = tokio::time::Instant::now() + RETRY;
                    }
                    None => {
                        metrics::counter!(DNSTAP_DROPPED_TOTAL, "reason" => "no_output")
                            .increment(messages);
                    }
                }
            }
            if stopping && self.queue.is_empty() {
                if let Some(output) = output.take() {
                    output.finish();
                }
                return;
            }
            if messages == 0 {
                std::thread::sleep(IDLE);
            }
        }
    }

    /// Appends the frames of one event (its query and response messages, as configured);
    /// returns how many.
    fn encode(
        &self,
        event: &Event,
        routing: Option<&crate::routing::Snapshot>,
        frames: &mut Vec<u8>,
    ) -> u64 {
        let mut count = 0;
        let (family, query_address, query_port) = address(event.client);
        let (response_address, response_port) = match event.server {
            Some(server) => {
                let (_, address, port) = address(server);
                (Some(address), Some(port))
            }
            None => (None, None),
        };
        let (query_sec, query_nsec) = since_epoch(event.received);
        let (response_sec, response_nsec) = since_epoch(event.answered);
        let base = proto::Message {
            r#type: 0,
            socket_family: Some(family),
            socket_protocol: Some(match event.transport {
                Transport::Udp => 1,
                Transport::Tcp => 2,
            }),
            query_address: Some(query_address),
            response_address,
            query_port: Some(query_port),
            response_port,
            query_time_sec: Some(query_sec),
            query_time_nsec: Some(query_nsec),
            query_message: None,
            query_zone: None,
            response_time_sec: None,
            response_time_nsec: None,
            response_message: None,
        };
        if self.settings.queries {
            let message = proto::Message {
                r#type: proto::AUTH_QUERY,
                query_message: Some(event.query.to_vec()),
                ..base.clone()
            };
            push_frame(frames, &self.frame(message, None));
            count += 1;
        }
        if self.settings.responses
            && let Some(response) = &event.response
        {
            let extra = routing.and_then(|snapshot| gslb_extra(snapshot, response));
            let message = proto::Message {
                r#type: proto::AUTH_RESPONSE,
                query_message: Some(event.query.to_vec()),
                response_time_sec: Some(response_sec),
                response_time_nsec: Some(response_nsec),
                response_message: Some(response.to_vec()),
                ..base
            };
            push_frame(frames, &self.frame(message, extra));
            count += 1;
        }
        count
    }

    fn frame(&self, message: proto::Message, extra: Option<String>) -> Vec<u8> {
        use prost::Message as _;
        proto::Dnstap {
            identity: Some(self.settings.identity.as_bytes().to_vec()),
            version: Some(format!("gto {}", env!("CARGO_PKG_VERSION")).into_bytes()),
            extra: extra.map(String::into_bytes),
            r#type: proto::MESSAGE,
            message: Some(message),
        }
        .encode_to_vec()
    }
}

/// For a response to a GSLB name: `gslb NAME POOL/MEMBER ...`, the endpoints whose
/// addresses the answer holds, in answer order.
fn gslb_extra(snapshot: &crate::routing::Snapshot, response: &[u8]) -> Option<String> {
    use hickory_proto::rr::{LowerName, RData};
    let message = hickory_proto::op::Message::from_vec(response).ok()?;
    let name = LowerName::from(message.queries.first()?.name());
    let index = snapshot.services.iter().position(|s| s.name == name)?;
    let node = snapshot.service_nodes.get(index)?.as_ref()?;
    let mut extra = format!("gslb {name}");
    for record in &message.answers {
        let ip = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        if let Some(endpoint) = node.members.iter().find(|m| m.info.addresses.contains(&ip)) {
            extra.push_str(&format!(
                " {}/{}",
                endpoint.info.key.pool, endpoint.info.key.member
            ));
        }
    }
    Some(extra)
}

/// Family (1 INET, 2 INET6), address bytes and port of a socket address.
fn address(addr: SocketAddr) -> (i32, Vec<u8>, u32) {
    match addr.ip() {
        IpAddr::V4(ip) => (1, ip.octets().to_vec(), u32::from(addr.port())),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => (1, v4.octets().to_vec(), u32::from(addr.port())),
            None => (2, ip.octets().to_vec(), u32::from(addr.port())),
        },
    }
}

fn since_epoch(at: SystemTime) -> (u64, u32) {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    (since.as_secs(), since.subsec_nanos())
}

fn describe(output: &DnstapOutput) -> String {
    match output {
        DnstapOutput::Socket(path) => format!("socket {}", path.display()),
        DnstapOutput::File(path) => format!("file {}", path.display()),
    }
}

/// A data frame: its length, then its bytes.
fn push_frame(frames: &mut Vec<u8>, payload: &[u8]) {
    frames.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frames.extend_from_slice(payload);
}

/// Frame Streams control frame types.
mod control {
    pub(super) const ACCEPT: u32 = 1;
    pub(super) const START: u32 = 2;
    pub(super) const STOP: u32 = 3;
    pub(super) const READY: u32 = 4;
    pub(super) const FINISH: u32 = 5;
    /// The content type field.
    pub(super) const CONTENT_TYPE: u32 = 1;
}

/// A control frame: the escape (a zero length), its length, its type and, for READY,
/// ACCEPT and START, the content type field.
fn control_frame(kind: u32) -> Vec<u8> {
    let mut body = kind.to_be_bytes().to_vec();
    if kind != control::STOP && kind != control::FINISH {
        body.extend_from_slice(&control::CONTENT_TYPE.to_be_bytes());
        body.extend_from_slice(&(CONTENT_TYPE.len() as u32).to_be_bytes());
        body.extend_from_slice(CONTENT_TYPE);
    }
    let mut frame = 0u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend(body);
    frame
}

/// Reads one control frame from a reader and returns its type.
fn read_control(stream: &mut UnixStream) -> std::io::Result<u32> {
    let mut word = [0u8; 4];
    stream.read_exact(&mut word)?;
    if u32::from_be_bytes(word) != 0 {
        return Err(std::io::Error::other("expected a control frame"));
    }
    stream.read_exact(&mut word)?;
    let length = u32::from_be_bytes(word) as usize;
    if !(4..=512).contains(&length) {
        return Err(std::io::Error::other("control frame of a wrong length"));
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok(u32::from_be_bytes([body[0], body[1], body[2], body[3]]))
}

/// Opens the output and starts the stream: on a socket the bidirectional handshake
/// (READY, the reader's ACCEPT, START); in a file START.
fn open(output: &DnstapOutput) -> std::io::Result<Output> {
    match output {
        DnstapOutput::Socket(path) => {
            let mut stream = UnixStream::connect(path)?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.set_write_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(&control_frame(control::READY))?;
            if read_control(&mut stream)? != control::ACCEPT {
                return Err(std::io::Error::other("the reader did not accept dnstap"));
            }
            stream.write_all(&control_frame(control::START))?;
            Ok(Output::Socket(stream))
        }
        DnstapOutput::File(path) => {
            // The log before (of the last start, or of a gto this one replaces, which
            // goes on writing to it until it stops) is kept as FILE.1.
            if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
                let mut kept = path.as_os_str().to_owned();
                kept.push(".1");
                std::fs::rename(path, kept)?;
            }
            let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
            file.write_all(&control_frame(control::START))?;
            file.flush()?;
            Ok(Output::File(file))
        }
    }
}

impl Output {
    fn write_frames(&mut self, frames: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Socket(stream) => stream.write_all(frames),
            Output::File(file) => {
                file.write_all(frames)?;
                file.flush()
            }
        }
    }

    /// Ends the stream: STOP (and on a socket the reader's FINISH).
    fn finish(self) {
        match self {
            Output::Socket(mut stream) => {
                if stream.write_all(&control_frame(control::STOP)).is_ok() {
                    let _ = read_control(&mut stream);
                }
            }
            Output::File(mut file) => {
                let _ = file.write_all(&control_frame(control::STOP));
                let _ = file.flush();
            }
        }
    }
}

/// The dnstap protobuf schema (dnstap.proto of dnstap.info), the parts gto writes.
mod proto {
    /// `Dnstap.Type.MESSAGE`.
    pub(super) const MESSAGE: i32 = 1;
    /// `Message.Type.AUTH_QUERY`.
    pub(super) const AUTH_QUERY: i32 = 1;
    /// `Message.Type.AUTH_RESPONSE`.
    pub(super) const AUTH_RESPONSE: i32 = 2;

    /// `message Dnstap`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Dnstap {
        #[prost(bytes = "vec", optional, tag = "1")]
        pub(super) identity: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub(super) version: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "3")]
        pub(super) extra: Option<Vec<u8>>,
        #[prost(message, optional, tag = "14")]
        pub(super) message: Option<Message>,
        #[prost(int32, required, tag = "15")]
        pub(super) r#type: i32,
    }

    /// `message Message`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Message {
        #[prost(int32, required, tag = "1")]
        pub(super) r#type: i32,
        #[prost(int32, optional, tag = "2")]
        pub(super) socket_family: Option<i32>,
        #[prost(int32, optional, tag = "3")]
        pub(super) socket_protocol: Option<i32>,
        #[prost(bytes = "vec", optional, tag = "4")]
        pub(super) query_address: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "5")]
        pub(super) response_address: Option<Vec<u8>>,
        #[prost(uint32, optional, tag = "6")]
        pub(super) query_port: Option<u32>,
        #[prost(uint32, optional, tag = "7")]
        pub(super) response_port: Option<u32>,
        #[prost(uint64, optional, tag = "8")]
        pub(super) query_time_sec: Option<u64>,
        #[prost(fixed32, optional, tag = "9")]
        pub(super) query_time_nsec: Option<u32>,
        #[prost(bytes = "vec", optional, tag = "10")]
        pub(super) query_message: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "11")]
        pub(super) query_zone: Option<Vec<u8>>,
        #[prost(uint64, optional, tag = "12")]
        pub(super) response_time_sec: Option<u64>,
        #[prost(fixed32, optional, tag = "13")]
        pub(super) response_time_nsec: Option<u32>,
        #[prost(bytes = "vec", optional, tag = "14")]
        pub(super) response_message: Option<Vec<u8>>,
    }
}
