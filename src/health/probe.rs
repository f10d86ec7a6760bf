//! Probes: one attempt to reach an endpoint, by TCP connect, HTTP(S) GET or TLS handshake
//! here, or by a DNS question, an ICMP echo or an external command ([`super::kinds`]).
//!
//! HTTP goes through hyper and TLS through rustls (ring); nothing here parses HTTP or TLS
//! by hand. The caller applies the timeout; a probe only says how it went.

use std::sync::Arc;
use std::time::SystemTime;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{HttpProbe, Probe, TlsSettings};

/// Why a probe failed. `Clone`, with a stable label for metrics ([`ProbeError::as_str`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The body did not contain the expected text.
    #[error("body does not contain {0:?}")]
    Body(String),
    /// The body was longer than `max_body` and the expected text was not in what was read.
    #[error("body too large (over {0} bytes) without the expected text")]
    BodyTooLarge(usize),
    /// The certificate expires too soon.
    #[error("certificate expires in {days} day(s)")]
    CertExpiring {
        /// Whole days left (negative when expired).
        days: i64,
    },
    /// TCP connect failed (other than refused).
    #[error("connect failed: {0}")]
    Connect(String),
    /// The HTTP exchange failed.
    #[error("HTTP failed: {0}")]
    Http(String),
    /// A failure on our side (out of file descriptors, no buffer space): says nothing
    /// about the endpoint, so its health does not change.
    #[error("local resource failure: {0}")]
    Local(String),
    /// TCP connect was refused.
    #[error("connection refused")]
    Refused,
    /// The HTTP status was not one of those expected.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The probe did not finish within its timeout, in this phase.
    #[error("timed out {0}")]
    Timeout(Phase),
    /// The TLS handshake failed (including certificate verification).
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The DNS reply had another rcode than the one expected.
    #[error("DNS rcode {got}, expected {expected}")]
    Rcode {
        /// The reply's.
        got: String,
        /// The check's `rcode`.
        expected: String,
    },
    /// The DNS reply lacked an expected answer.
    #[error("DNS answer lacks {0:?}")]
    Answer(String),
    /// The DNS exchange failed (no readable reply, the connection closed).
    #[error("DNS failed: {0}")]
    Dns(String),
    /// The ICMP echo failed (unreachable).
    #[error("ICMP echo failed: {0}")]
    Icmp(String),
    /// The command of an exec check could not run.
    #[error("command failed: {0}")]
    Exec(String),
    /// The command exited other than with 0.
    #[error("command ended with {status}: {line}")]
    Exit {
        /// Its exit status, or the signal that ended it.
        status: String,
        /// The first line of its output.
        line: String,
    },
    /// The command printed more than `max_output` (and was killed).
    #[error("command printed more than {0} bytes and was killed")]
    Output(usize),
}

impl ProbeError {
    /// True for a failure of gto's own resources, not of the endpoint (waiting for a free
    /// exec slot included).
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            ProbeError::Local(_) | ProbeError::Timeout(Phase::Queued)
        )
    }

    /// Stable metric label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProbeError::Body(_) => "body",
            ProbeError::BodyTooLarge(_) => "body_too_large",
            ProbeError::CertExpiring { .. } => "cert_expiring",
            ProbeError::Connect(_) => "connect",
            ProbeError::Http(_) => "http",
            ProbeError::Local(_) => "local",
            ProbeError::Refused => "refused",
            ProbeError::Status(_) => "status",
            ProbeError::Timeout(_) => "timeout",
            ProbeError::Tls(_) => "tls",
            ProbeError::Rcode { .. } => "rcode",
            ProbeError::Answer(_) => "answer",
            ProbeError::Dns(_) => "dns",
            ProbeError::Icmp(_) => "icmp",
            ProbeError::Exec(_) => "exec",
            ProbeError::Exit { .. } => "exit",
            ProbeError::Output(_) => "output",
        }
    }
}

/// A probe ready to run: the spec plus what is expensive to build (the TLS client config).
pub struct Prober {
    probe: Probe,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Source addresses (`[health] source`, `source6`).
    sources: crate::config::HealthSettings,
    /// Where the probe running now is, for a timeout's reason.
    phase: std::sync::atomic::AtomicU8,
    /// At most `[health] exec_limit` exec checks at once.
    exec_slots: Option<Arc<tokio::sync::Semaphore>>,
}

impl Clone for Prober {
    /// Another prober of the same probe, with a phase of its own.
    fn clone(&self) -> Self {
        Self {
            probe: self.probe.clone(),
            tls: self.tls.clone(),
            sources: self.sources.clone(),
            phase: std::sync::atomic::AtomicU8::new(0),
            exec_slots: self.exec_slots.clone(),
        }
    }
}

/// Where a probe was when its timeout ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening the TCP connection.
    Connect,
    /// The TLS handshake.
    Tls,
    /// Waiting for the HTTP response (status, headers or body).
    Response,
    /// Waiting for the DNS reply.
    Answer,
    /// Waiting for the ICMP echo reply.
    Echo,
    /// Waiting for a free exec slot (`[health] exec_limit`): gto's delay, not the
    /// endpoint's.
    Queued,
    /// Waiting for the command to end.
    Running,
}

impl Phase {
    const ALL: [Phase; 7] = [
        Phase::Connect,
        Phase::Tls,
        Phase::Response,
        Phase::Answer,
        Phase::Echo,
        Phase::Queued,
        Phase::Running,
    ];
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connecting",
            Phase::Tls => "in the TLS handshake",
            Phase::Response => "waiting for the HTTP response",
            Phase::Answer => "waiting for the DNS reply",
            Phase::Echo => "waiting for the echo reply",
            Phase::Queued => "waiting for a free exec slot",
            Phase::Running => "waiting for the command (killed)",
        })
    }
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("probe", &self.probe)
            .finish()
    }
}

impl Prober {
    /// Prepares a probe. Fails only for a TLS server name that cannot be used.
    pub fn new(probe: Probe) -> Result<Self, ProbeError> {
        let tls = match &probe {
            Probe::Http(HttpProbe { tls: Some(tls), .. }) | Probe::Tls { tls, .. } => {
                Some(connector(tls)?)
            }
            _ => None,
        };
        Ok(Self {
            probe,
            tls,
            sources: crate::config::HealthSettings::default(),
            phase: std::sync::atomic::AtomicU8::new(0),
            exec_slots: None,
        })
    }

    /// Exec checks wait for one of these slots (`[health] exec_limit`).
    pub fn with_exec_slots(mut self, slots: Arc<tokio::sync::Semaphore>) -> Self {
        self.exec_slots = Some(slots);
        self
    }

    /// Probes from these source addresses (`[health] source`, `source6`).
    pub fn with_sources(mut self, sources: crate::config::HealthSettings) -> Self {
        self.sources = sources;
        self
    }

    fn source_for(&self, target: std::net::SocketAddr) -> Option<std::net::IpAddr> {
        match target {
            std::net::SocketAddr::V4(_) => self.sources.source.map(std::net::IpAddr::V4),
            std::net::SocketAddr::V6(_) => self.sources.source6.map(std::net::IpAddr::V6),
        }
    }

    /// Runs one probe (no timeout here: the scheduler applies it). An HTTP(S) probe with
    /// `load_fields` also returns the load its JSON body reports; a TLS or HTTPS probe the
    /// certificate's expiry.
    pub async fn run(&self) -> Result<ProbeOutcome, ProbeError> {
        self.enter(Phase::Connect);
        let enter = |phase| self.enter(phase);
        let started = tokio::time::Instant::now();
        let mut outcome = match &self.probe {
            Probe::None => return Ok(ProbeOutcome::default()),
            Probe::Dns(dns) => {
                let outcome = super::kinds::dns(dns, self.source_for(dns.target), &enter).await?;
                // The exchange is the round trip.
                ProbeOutcome {
                    connect: Some(started.elapsed()),
                    ..outcome
                }
            }
            Probe::Icmp { target } => {
                let source = self.source_for(std::net::SocketAddr::new(*target, 0));
                let outcome = super::kinds::icmp(*target, source, &enter).await?;
                ProbeOutcome {
                    connect: Some(started.elapsed()),
                    ..outcome
                }
            }
            Probe::Exec(exec) => {
                return super::kinds::exec(exec, self.exec_slots.as_ref(), &enter).await;
            }
            Probe::Tcp { target } => {
                if let Some(up) = super::simulate::scripted(*target) {
                    return if up {
                        Ok(ProbeOutcome::default())
                    } else {
                        Err(ProbeError::Refused)
                    };
                }
                let stream = connect(*target, self.source_for(*target)).await?;
                let connected = started.elapsed();
                // Close with RST: no FIN exchange and no TIME_WAIT left behind per probe,
                // which at thousands of probes a second is most of the kernel's work.
                let _ = stream.set_zero_linger();
                ProbeOutcome {
                    connect: Some(connected),
                    ..ProbeOutcome::default()
                }
            }
            Probe::Tls { target, tls } => {
                let tcp = connect(*target, self.source_for(*target)).await?;
                let connected = started.elapsed();
                self.enter(Phase::Tls);
                let stream = self.handshake(tcp).await?;
                let first_byte = started.elapsed();
                let cert = check_expiry(&stream, tls)?;
                ProbeOutcome {
                    load: None,
                    cert,
                    connect: Some(connected),
                    first_byte: Some(first_byte),
                }
            }
            Probe::Http(http) => {
                let tcp = connect(http.target, self.source_for(http.target)).await?;
                let connected = started.elapsed();
                match &http.tls {
                    None => {
                        self.enter(Phase::Response);
                        let (load, first_byte) = exchange(tcp, http, started).await?;
                        ProbeOutcome {
                            load,
                            cert: None,
                            connect: Some(connected),
                            first_byte: Some(first_byte),
                        }
                    }
                    Some(tls) => {
                        self.enter(Phase::Tls);
                        let stream = self.handshake(tcp).await?;
                        let cert = check_expiry(&stream, tls)?;
                        self.enter(Phase::Response);
                        let (load, first_byte) = exchange(stream, http, started).await?;
                        ProbeOutcome {
                            load,
                            cert,
                            connect: Some(connected),
                            first_byte: Some(first_byte),
                        }
                    }
                }
            }
        };
        // A round trip of zero says nothing (a clock that did not move): none.
        outcome.connect = outcome.connect.filter(|d| !d.is_zero());
        outcome.first_byte = outcome.first_byte.filter(|d| !d.is_zero());
        Ok(outcome)
    }

    fn enter(&self, phase: Phase) {
        self.phase
            .store(phase as u8, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where the last probe was (what a timeout interrupted).
    pub fn phase(&self) -> Phase {
        let index = self.phase.load(std::sync::atomic::Ordering::Relaxed);
        Phase::ALL
            .get(usize::from(index))
            .copied()
            .unwrap_or(Phase::Connect)
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProbeError> {
        let Some((connector, name)) = &self.tls else {
            return Err(ProbeError::Tls("no TLS settings".into()));
        };
        connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| ProbeError::Tls(e.to_string()))
    }
}

pub(super) async fn connect(
    target: std::net::SocketAddr,
    source: Option<std::net::IpAddr>,
) -> Result<TcpStream, ProbeError> {
    let connecting = async {
        let Some(source) = source else {
            return TcpStream::connect(target).await;
        };
        let socket = if target.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        socket.connect(target).await
    };
    connecting.await.map_err(|e| {
        if crate::rlimit::is_exhausted(&e) {
            return ProbeError::Local(e.to_string());
        }
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ProbeError::Refused,
            _ => ProbeError::Connect(e.to_string()),
        }
    })
}

/// What a successful probe read besides "up".
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProbeOutcome {
    /// Load its JSON body reported (HTTP(S) with `load_fields`).
    pub load: Option<LoadSample>,
    /// The server certificate's expiry (TLS and HTTPS).
    pub cert: Option<CertExpiry>,
    /// From the start to the TCP connection established (TCP, TLS, HTTP(S)), or to the
    /// answer (DNS, ICMP).
    pub connect: Option<std::time::Duration>,
    /// From the start to the first byte of the answer: the TLS handshake done (TLS), the
    /// response's head (HTTP(S)).
    pub first_byte: Option<std::time::Duration>,
}

/// When the server certificate of a TLS or HTTPS probe expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertExpiry {
    /// Its `notAfter`, in seconds since the Unix epoch.
    pub not_after: i64,
    /// Whole days left at the probe (negative when expired).
    pub days: i64,
    /// Within `cert_min_days` (with `cert_expiring = "warn"`: up, but warned about).
    pub expiring: bool,
}

/// Load read from a probe's JSON body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSample {
    /// Active sessions.
    pub sessions: f64,
    /// Capacity, when the body reports it.
    pub capacity: Option<f64>,
}

/// A number at a dotted path (`stats.sessions`) in a JSON document.
fn json_number(document: &serde_json::Value, path: &str) -> Option<f64> {
    path.split('.')
        .try_fold(document, |value, key| value.get(key))
        .and_then(serde_json::Value::as_f64)
        .filter(|n| n.is_finite() && *n >= 0.0)
}

/// The load a JSON document (an HTTP body, a command's output) reports at `fields`; None
/// when it is not JSON or lacks the sessions field.
pub(super) fn load_from_json(
    document: &[u8],
    fields: &crate::config::LoadFields,
) -> Option<LoadSample> {
    let document: serde_json::Value = serde_json::from_slice(document).ok()?;
    Some(LoadSample {
        sessions: json_number(&document, &fields.sessions)?,
        capacity: fields
            .capacity
            .as_deref()
            .and_then(|path| json_number(&document, path)),
    })
}

/// GET the path and judge status and body; read load from the body when asked to.
/// Returns the load read and the time from `started` to the response's head.
async fn exchange<S>(
    stream: S,
    http: &HttpProbe,
    started: tokio::time::Instant,
) -> Result<(Option<LoadSample>, std::time::Duration), ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ProbeError::Http(e.to_string()))?;
    let connection = tokio::spawn(connection);
    let result = async {
        let request = hyper::Request::get(http.path.as_str())
            .header(hyper::header::HOST, http.host.as_str())
            .header(hyper::header::USER_AGENT, "gto-health")
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ProbeError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ProbeError::Http(e.to_string()))?;
        let first_byte = started.elapsed();
        let status = response.status().as_u16();
        let accepted = if http.expect.is_empty() {
            (200..300).contains(&status)
        } else {
            http.expect.contains(&status)
        };
        if !accepted {
            return Err(ProbeError::Status(status));
        }
        if http.body.is_none() && http.load_fields.is_none() {
            return Ok((None, first_byte));
        }
        let body = read_body(response.into_body(), http).await?;
        // A body without the load fields is still a healthy endpoint: its load is unknown.
        let load = http
            .load_fields
            .as_ref()
            .and_then(|fields| load_from_json(&body, fields));
        Ok((load, first_byte))
    }
    .await;
    connection.abort();
    result
}

/// Reads the body up to `max_body` bytes. With an expected text, reading stops as soon as
/// it appears; when it has not appeared within `max_body`, the probe fails as "body too
/// large". A body that ends without it fails as "body".
async fn read_body(
    mut body: hyper::body::Incoming,
    http: &HttpProbe,
) -> Result<Vec<u8>, ProbeError> {
    let mut read: Vec<u8> = Vec::new();
    let wanted = http.body.as_deref().map(str::as_bytes);
    // Where the search resumes: each byte is looked at about once.
    let mut searched: usize = 0;
    let mut found = |read: &[u8]| {
        let Some(wanted) = wanted else {
            return false;
        };
        let from = searched.saturating_sub(wanted.len());
        searched = read.len();
        wanted.is_empty() || read[from..].windows(wanted.len()).any(|w| w == wanted)
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProbeError::Http(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let room = http.max_body - read.len();
        // Keep what fits: the expected text may still be in it.
        read.extend_from_slice(&data[..data.len().min(room)]);
        if found(&read) {
            return Ok(read);
        }
        if data.len() > room {
            return Err(ProbeError::BodyTooLarge(http.max_body));
        }
    }
    match &http.body {
        Some(text) if !found(&read) => Err(ProbeError::Body(text.clone())),
        _ => Ok(read),
    }
}

/// Fails when the peer's certificate expires within `min_days`.
/// The peer certificate's expiry. Within `cert_min_days` it fails the probe with
/// `cert_expiring = "down"`, and is marked expiring otherwise. A certificate that cannot
/// be read fails the probe only when `cert_min_days` asks for its expiry.
fn check_expiry(
    stream: &tokio_rustls::client::TlsStream<TcpStream>,
    tls: &TlsSettings,
) -> Result<Option<CertExpiry>, ProbeError> {
    let required = |error: ProbeError| {
        if tls.cert_min_days.is_some() {
            Err(error)
        } else {
            Ok(None)
        }
    };
    let Some(leaf) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    else {
        return required(ProbeError::Tls("no peer certificate".into()));
    };
    let cert = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, cert)) => cert,
        Err(e) => return required(ProbeError::Tls(format!("unreadable certificate: {e}"))),
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let not_after = cert.validity().not_after.timestamp();
    let days = (not_after - now).div_euclid(86_400);
    let expiring = tls.cert_min_days.is_some_and(|min| days < i64::from(min));
    if expiring && tls.cert_expiring_down {
        return Err(ProbeError::CertExpiring { days });
    }
    Ok(Some(CertExpiry {
        not_after,
        days,
        expiring,
    }))
}

fn connector(settings: &TlsSettings) -> Result<(TlsConnector, ServerName<'static>), ProbeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Tls(e.to_string()))?;
    let config = if settings.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        if settings.roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            for cert in &settings.roots {
                roots
                    .add(cert.clone())
                    .map_err(|e| ProbeError::Tls(e.to_string()))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    let name = ServerName::try_from(settings.sni.clone())
        .map_err(|e| ProbeError::Tls(format!("bad SNI: {e}")))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// `insecure = true`: any certificate is accepted, signatures are still checked.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
