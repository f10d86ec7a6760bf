//! Real appliances for health-check tests: TCP, HTTP and HTTPS listeners on 127.0.0.x,
//! which can be stopped and started again on the same address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// What an appliance speaks.
#[derive(Clone)]
pub enum Speaks {
    /// Accepts connections and closes them.
    Tcp,
    /// Answers every GET with the current status and body "sessions=3 OK".
    Http,
    /// HTTP inside TLS with this certificate.
    Https(TlsAcceptor),
}

/// One appliance endpoint.
pub struct Appliance {
    pub addr: SocketAddr,
    speaks: Speaks,
    /// Status code answered to HTTP requests (changeable while running).
    pub status: Arc<AtomicU16>,
    /// The next this-many HTTP requests get 500, whatever `status` says.
    pub fail_next: Arc<AtomicU16>,
    /// The HTTP response body.
    pub body: Arc<std::sync::Mutex<String>>,
    /// One message per HTTP request served (the status sent).
    pub served: mpsc::UnboundedSender<u16>,
    /// Probes from these source addresses are cut off (accepted and closed at once): a
    /// broken path from one vantage point.
    pub blocked: Arc<std::sync::Mutex<std::collections::HashSet<std::net::IpAddr>>>,
    /// How long an HTTP answer waits before it is sent (a far appliance's round trip), by
    /// the probe's source address; `None` for any other source.
    pub delay: Delays,
    task: Option<JoinHandle<()>>,
}

/// An answer's delay by the asker's address (`None`: everyone else).
pub type Delays =
    Arc<std::sync::Mutex<std::collections::HashMap<Option<std::net::IpAddr>, std::time::Duration>>>;

/// Sets the delay of answers to probes from `source` (None: from anywhere else).
pub fn set_delay(delays: &Delays, source: Option<&str>, millis: u64) {
    let source = source.map(|s| s.parse().unwrap());
    delays
        .lock()
        .unwrap()
        .insert(source, std::time::Duration::from_millis(millis));
}

impl Appliance {
    /// Starts on `ip` with a free port; returns the appliance and a receiver of served requests.
    pub async fn start(ip: &str, speaks: Speaks) -> (Self, mpsc::UnboundedReceiver<u16>) {
        let (served, requests) = mpsc::unbounded_channel();
        let mut appliance = Self {
            addr: format!("{ip}:0").parse().unwrap(),
            speaks,
            status: Arc::new(AtomicU16::new(200)),
            fail_next: Arc::new(AtomicU16::new(0)),
            body: Arc::new(std::sync::Mutex::new("sessions=3 OK".into())),
            served,
            blocked: Arc::default(),
            delay: Arc::default(),
            task: None,
        };
        appliance.resume();
        (appliance, requests)
    }

    /// Stops listening: once this returns, new connections are refused.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Wait until the task (and with it the listener) is gone.
            let _ = task.await;
        }
    }

    /// Listens again on the same address.
    pub fn resume(&mut self) {
        assert!(self.task.is_none(), "stop() first");
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        let listener = socket.listen(128).unwrap();
        self.addr = listener.local_addr().unwrap();
        self.task = Some(tokio::spawn(serve(
            listener,
            self.speaks.clone(),
            Knobs {
                status: self.status.clone(),
                fail_next: self.fail_next.clone(),
                body: self.body.clone(),
                served: self.served.clone(),
                blocked: self.blocked.clone(),
                delays: self.delay.clone(),
            },
        )));
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What a running appliance reads as it serves (shared with its [`Appliance`]).
struct Knobs {
    status: Arc<AtomicU16>,
    fail_next: Arc<AtomicU16>,
    body: Arc<std::sync::Mutex<String>>,
    served: mpsc::UnboundedSender<u16>,
    blocked: Arc<std::sync::Mutex<std::collections::HashSet<std::net::IpAddr>>>,
    delays: Delays,
}

async fn serve(listener: TcpListener, speaks: Speaks, knobs: Knobs) {
    let Knobs {
        status,
        fail_next,
        body,
        served,
        blocked,
        delays,
    } = knobs;
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        if blocked.lock().unwrap().contains(&peer.ip()) {
            drop(stream);
            continue;
        }
        let status = status.clone();
        let fail_next = fail_next.clone();
        let served = served.clone();
        let body = body.clone();
        let delay = {
            let delays = delays.lock().unwrap();
            delays
                .get(&Some(peer.ip()))
                .or(delays.get(&None))
                .copied()
                .unwrap_or_default()
        };
        let service = service_fn(move |_request: Request<hyper::body::Incoming>| {
            let failing = fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let code = if failing {
                500
            } else {
                status.load(Ordering::SeqCst)
            };
            let _ = served.send(code);
            let text = body.lock().map(|b| b.clone()).unwrap_or_default();
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(code)
                        .body(Full::new(Bytes::from(text)))
                        .unwrap(),
                )
            }
        });
        match &speaks {
            Speaks::Tcp => drop(stream),
            Speaks::Http => {
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Speaks::Https(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        }
    }
}

/// A self-signed certificate for `names` (DNS names or IPs) valid for `days`, as a TLS
/// acceptor and the PEM of the certificate (to trust it as a CA).
pub fn certificate(names: &[&str], days: i64) -> (TlsAcceptor, String) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let pem = cert.pem();
    let der = cert.der().clone();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key_der)
        .unwrap();
    (TlsAcceptor::from(Arc::new(config)), pem)
}
