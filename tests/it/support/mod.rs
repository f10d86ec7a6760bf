//! Shared harness: start gto in-process on 127.0.0.1:0 from real config and zone files,
//! query it over real UDP and TCP sockets, and run real `dig`.

pub mod appliance;
pub mod etcd;
pub mod unbound;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gto::{App, ConfigSource};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The repository's example zone, used by most tests.
pub const ZONE: &str = include_str!("../../../zones/gto.example.com.zone");

/// Listeners on free ports and the example zone: the start of every test config.
pub const PREAMBLE: &str = r#"
[server]
listen = ["127.0.0.1:0"]

[admin]
listen = "127.0.0.1:0"

[[zone]]
origin = "gto.example.com."
file = "gto.example.com.zone"
"#;

/// A config serving the example zone with one GSLB name on a free port.
pub fn config(extra: &str) -> String {
    format!(
        r#"{PREAMBLE}
[[service]]
name = "vpn.gto.example.com."
pool = "sma"
answers = 2
ttl = 20

[[pool]]
name = "sma"
[[pool.member]]
name = "fra-1"
addresses = ["198.51.100.10", "2001:db8:100::10"]
[[pool.member]]
name = "ams-1"
addresses = ["198.51.100.20", "2001:db8:100::20"]
[[pool.member]]
name = "nyc-1"
addresses = ["203.0.113.30"]
{extra}
"#
    )
}

/// A running server and the directory holding its files.
pub struct TestServer {
    pub app: App,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// The addresses `vpn.gto.example.com. A` gets over UDP, in answer order.
    pub async fn vpn(&self) -> Vec<String> {
        answers(
            &udp(
                self.addr,
                &query("vpn.gto.example.com.", RecordType::A, None),
            )
            .await
            .0,
        )
    }

    /// Writes `config` and `zone` (as gto.example.com.zone) to a fresh directory and starts.
    pub async fn start(config: &str, zone: &str) -> Self {
        Self::start_with_files(config, zone, &[]).await
    }

    /// Like [`TestServer::start`], with more files written beside the config first.
    pub async fn start_with_files(config: &str, zone: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gto.toml"), config).unwrap();
        std::fs::write(dir.path().join("gto.example.com.zone"), zone).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Self::start_in(dir).await
    }

    /// Starts from the files already in `dir`.
    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        let source = ConfigSource::File(dir.path().join("gto.toml"));
        let loaded = source
            .load()
            .unwrap_or_else(|e| panic!("config does not load:\n{e}"));
        let app = App::start(source, loaded).await.unwrap();
        let addr = app.dns_addrs()[0];
        Self { app, addr, dir }
    }

    /// The default test config and the example zone.
    pub async fn default() -> Self {
        Self::start(&config(""), ZONE).await
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The admin API's address.
    pub fn admin(&self) -> SocketAddr {
        self.app.admin_addr().expect("admin API enabled")
    }
}

/// A query message with RD set and (optionally) EDNS.
pub fn query(name: &str, qtype: RecordType, edns: Option<Edns>) -> Message {
    let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message.edns = edns;
    message
}

/// EDNS(0) with a payload size.
pub fn edns(payload: u16) -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    edns
}

/// Sends raw bytes over UDP and waits up to 2 s for one reply.
pub async fn udp_raw(addr: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, addr).await.unwrap();
    let mut buffer = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buffer)).await {
        Ok(Ok((len, _))) => Some(buffer[..len].to_vec()),
        _ => None,
    }
}

/// Sends a message over UDP and decodes the reply; also returns its size.
pub async fn udp(addr: SocketAddr, message: &Message) -> (Message, usize) {
    let bytes = udp_raw(addr, &message.to_vec().unwrap())
        .await
        .expect("no UDP reply");
    (Message::from_vec(&bytes).unwrap(), bytes.len())
}

/// Sends raw bytes over TCP (length-prefixed) and reads one reply.
pub async fn tcp_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    tcp_send(&mut stream, bytes).await;
    tcp_receive(&mut stream).await
}

/// Sends one message's bytes on a TCP connection, after their length.
pub async fn tcp_send(stream: &mut TcpStream, bytes: &[u8]) {
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.unwrap();
}

/// Reads one length-prefixed message from a TCP connection (within 2 s).
pub async fn tcp_receive(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut len))
        .await
        .expect("TCP reply timed out")
        .unwrap();
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await.unwrap();
    reply
}

/// Sends a message over TCP and decodes the reply.
pub async fn tcp(addr: SocketAddr, message: &Message) -> Message {
    Message::from_vec(&tcp_raw(addr, &message.to_vec().unwrap()).await).unwrap()
}

/// The answer section's data as text.
pub fn answers(message: &Message) -> Vec<String> {
    message.answers.iter().map(|r| r.data.to_string()).collect()
}

/// Runs the system `dig` against `addr` and returns its stdout. dig is installed by .ci/run.
pub async fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new("dig");
    command
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=2", "+tries=1"])
        .args(args);
    let output = command
        .output()
        .await
        .expect("dig is not installed (apt-get install bind9-dnsutils)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The built `gto` binary.
pub fn gto_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gto"))
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One HTTP/1.1 request to the admin API; returns status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    http_on(
        TcpStream::connect(addr).await.unwrap(),
        method,
        path,
        token,
        body,
    )
    .await
}

/// [`http`] over a connection already made (e.g. from a chosen source address).
pub async fn http_on(
    stream: TcpStream,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A request whose answer is JSON.
pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let (status, text) = http(addr, method, path, token, body).await;
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, json)
}

/// The sum of a metric's samples in a Prometheus text page whose labels contain all of
/// `labels` (e.g. `rcode="NXDOMAIN"`).
pub fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A loopback port for a server that is not gto and cannot report a port it was given as
/// 0 (etcd, knotd, unbound, chromium's debugging port): free on UDP and TCP when chosen,
/// so another process could take it in between; gto itself is always given port 0 and
/// read back ([`RealGto::dns_addr`]). Chosen at random below the kernel's ephemeral range
/// (`ip_local_port_range`), where the test's own outgoing connections never land, so a
/// server restarted on its port (an etcd member killed and started again) finds it free.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let floor = 10_000u16.min(low.saturating_sub(1_000));
    for _ in 0..1_000 {
        let port = floor + (rand::random::<u16>() % (low - floor).max(1));
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port below {low} after 1,000 tries");
}

/// A TCP port nothing listens on, held (bound on every address, never listening) for as
/// long as this lives: connections to it are refused, and no other process can take it.
pub struct ClosedPort(socket2::Socket);

impl ClosedPort {
    pub fn new() -> Self {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into())
            .unwrap();
        Self(socket)
    }

    pub fn port(&self) -> u16 {
        self.0.local_addr().unwrap().as_socket().unwrap().port()
    }
}

/// The real `gto` binary running `args`, with stderr captured; killed when dropped.
pub struct RealGto {
    pub child: tokio::process::Child,
    stderr: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    /// Every stderr line read so far.
    seen: Vec<String>,
    /// The next line [`RealGto::wait_for_log`] looks at.
    cursor: usize,
}

impl RealGto {
    pub fn spawn(args: &[&std::ffi::OsStr]) -> Self {
        Self::spawn_with(env!("CARGO_BIN_EXE_gto"), args)
    }

    /// `gto run --config CONFIG`.
    pub fn run(config: &Path) -> Self {
        Self::spawn(&[
            std::ffi::OsStr::new("run"),
            std::ffi::OsStr::new("--config"),
            config.as_os_str(),
        ])
    }

    /// Like [`RealGto::spawn`], with more environment variables for gto.
    pub fn spawn_env(args: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]) -> Self {
        Self::start(env!("CARGO_BIN_EXE_gto"), args, env)
    }

    /// Runs `program` (gto itself, or a wrapper such as `prlimit` that runs it).
    pub fn spawn_with(program: &str, args: &[&std::ffi::OsStr]) -> Self {
        Self::start(program, args, &[])
    }

    /// Runs `program` (a wrapper that runs gto) with more environment variables.
    pub fn start_with_env(
        program: &str,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        Self::start(program, args, env)
    }

    /// Everything gto wrote to stderr, read to its end (after it exited).
    pub async fn log_to_end(&mut self) -> String {
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(10), self.stderr.next_line()).await
        {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    fn start(program: &str, args: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env("GTO_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        Self {
            child,
            stderr: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr)),
            seen: Vec::new(),
            cursor: 0,
        }
    }

    /// The next stderr line from `from` on that contains `text` (reading more as needed,
    /// at most 60 s); returns its index.
    async fn find(&mut self, from: usize, text: &str) -> usize {
        let wait = async {
            let mut at = from;
            loop {
                while at < self.seen.len() {
                    if self.seen[at].contains(text) {
                        return at;
                    }
                    at += 1;
                }
                match self.stderr.next_line().await.unwrap() {
                    Some(line) => self.seen.push(line),
                    None => panic!(
                        "gto's stderr ended before {text:?}:\n{}",
                        self.seen.join("\n")
                    ),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("no {text:?} in gto's log within 60 s"))
    }

    /// Waits for the next stderr line (after those waited for before) that contains
    /// `text` (at most 60 s); returns that line.
    pub async fn wait_for_log(&mut self, text: &str) -> String {
        let at = self.find(self.cursor, text).await;
        self.cursor = at + 1;
        self.seen[at].clone()
    }

    /// The address gto's first DNS listener bound (configs give port 0), from its log.
    pub async fn dns_addr(&mut self) -> SocketAddr {
        let at = self.find(0, "serving DNS on").await;
        field(&self.seen[at], "local")
    }

    /// The address the admin API bound (configs give port 0), from gto's log.
    pub async fn admin_addr(&mut self) -> SocketAddr {
        let at = self.find(0, "admin API listening").await;
        field(&self.seen[at], "local_addr")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Sends a signal by PID.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (at most 20 s) for the exit status.
    pub async fn exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("gto did not exit within 20 s")
            .unwrap()
    }
}

/// The address in a log line's `name=ADDR` field.
fn field(line: &str, name: &str) -> SocketAddr {
    let start = line
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"));
    let value = &line[start + name.len() + 1..];
    let value = value.split_whitespace().next().unwrap_or_default();
    // ANSI colour codes never reach a pipe; strip a stray one anyway.
    value
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap()
}

/// Polls `addr` over UDP (bounded) until `name` gets an answer.
pub async fn wait_answering(addr: SocketAddr, name: &str) -> Message {
    let message = query(name, RecordType::A, None);
    for _ in 0..300 {
        if let Some(bytes) = udp_raw_within(addr, &message.to_vec().unwrap(), 200).await {
            return Message::from_vec(&bytes).unwrap();
        }
    }
    panic!("{addr} never answered {name}");
}

/// Like [`udp_raw`], waiting `millis` for the reply.
pub async fn udp_raw_within(addr: SocketAddr, bytes: &[u8], millis: u64) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, addr).await.unwrap();
    let mut buffer = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_millis(millis), socket.recv_from(&mut buffer)).await {
        Ok(Ok((len, _))) => Some(buffer[..len].to_vec()),
        _ => None,
    }
}
