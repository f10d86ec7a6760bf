//! The admin HTTP API (axum), on 127.0.0.1:8053 by default.
//!
//! | route | method | what |
//! |---|---|---|
//! | `/v1/status` | GET | GSLB names, endpoints with health, drain, load, answer share |
//! | `/v1/explain?name=&client=&type=` | GET | the answer a client would get, and why |
//! | `/v1/members/{pool}/{member}/drain` | POST | no new answers (body: `{"until": RFC 3339}` or `{"for": "30m"}`, optional) |
//! | `/v1/members/{pool}/{member}/undrain` | POST | answer it again |
//! | `/v1/members/{pool}/{member}/load` | PUT | push load: `{"sessions": N, "capacity": M}` |
//! | `/v1/reload` | POST | reload config and zones; problems come back as JSON |
//! | `/v1/rtt` | POST | real-user round trips: `{"measurements": [{"prefix", "pool", "member", "rtt_ms"}]}` (operate) |
//! | `/metrics` | GET | Prometheus text |
//! | `/healthz` | GET | the process is alive |
//! | `/readyz` | GET | 200 once the first routing snapshot is published |
//!
//! Reads are open on the listener. Every change needs `Authorization: Bearer <token>` with
//! the token from `[admin] token_file` (compared in constant time); without a configured
//! token, changes are refused (403). Request bodies are capped at 64 KiB and every request
//! at 10 s; a client has `[admin] header_timeout` (5 s) to send its headers, and at most
//! `[admin] max_connections` (64) connections are open at once: a connection arriving
//! when all are taken evicts an idle one (no request in progress) of the source address
//! holding the most, its oldest first (`slots.rs`), so that silent connections from one
//! source cannot lock anyone else out. Event streams are bounded the same way
//! ([`MAX_EVENT_STREAMS`]). Shutdown closes whatever is still open after 2 s. Errors are
//! JSON: `{"error": "..."}`.
//!
//! Against DNS rebinding (a web page whose name resolves to 127.0.0.1), a request whose
//! `Host` is a name other than `localhost`, this machine's host name or one of `[admin]
//! hosts` gets 421; IP literals are always accepted. Every response carries
//! `Content-Security-Policy` (nothing but the page's own script and style, no framing),
//! `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and `Referrer-Policy:
//! no-referrer`.

mod error;
mod page;
mod routes;
mod slots;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::routing::{get, post, put};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::{info, warn};

pub use error::ApiError;

use crate::config::AdminSettings;
use crate::health::HealthHandle;
use crate::metrics::ADMIN_REQUESTS_TOTAL;
use crate::reload::Reloader;
use crate::routing::RoutingHandle;

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;
/// Longest a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the routes read and change.
#[derive(Clone)]
pub struct AdminState {
    /// The routing table (status, explain).
    pub routing: RoutingHandle,
    /// Endpoint state (status, drains, load).
    pub health: HealthHandle,
    /// Reloads config and zones.
    pub reloader: Reloader,
    /// The admin settings (bearer token, drain bound), swapped on reload.
    pub settings: Arc<ArcSwap<AdminSettings>>,
    /// Renders `/metrics`.
    pub metrics: crate::metrics::MetricsHandle,
    /// Opens once the first snapshot is published.
    pub ready: Arc<AtomicBool>,
    /// When gto started, for status.
    pub started: std::time::SystemTime,
    /// The fleet, with `[cluster]`: drains go through it.
    pub fleet: Option<crate::cluster::Fleet>,
    /// Changes as they happen (`GET /v1/events`).
    pub events: crate::events::Events,
    /// Open event streams ([`MAX_EVENT_STREAMS`] at most): a new one evicts the oldest of
    /// the source holding the most.
    pub event_streams: EventStreams,
}

/// The slots of open event streams (see [`AdminState::event_streams`]).
#[derive(Debug, Clone)]
pub struct EventStreams(pub(crate) slots::Slots);

impl Default for EventStreams {
    fn default() -> Self {
        Self(slots::Slots::new(MAX_EVENT_STREAMS, "event_stream"))
    }
}

/// The client's address, added to each request of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) std::net::IpAddr);

/// Event streams open at once, so that they cannot take every admin connection.
pub const MAX_EVENT_STREAMS: usize = 16;

/// The admin router; testable with `oneshot`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(page::page))
        .route("/v1/status", get(routes::status))
        .route("/v1/events", get(routes::events))
        .route("/v1/explain", get(routes::explain))
        .route(
            "/v1/pools/{pool}/members/{member}",
            put(routes::put_member).delete(routes::delete_member),
        )
        .route("/v1/drain", post(routes::drain_selected))
        .route("/v1/undrain", post(routes::undrain_selected))
        .route("/v1/members/{pool}/{member}/drain", post(routes::drain))
        .route("/v1/members/{pool}/{member}/undrain", post(routes::undrain))
        .route("/v1/members/{pool}/{member}/load", put(routes::load))
        .route("/v1/reload", post(routes::reload))
        .route("/v1/rtt", post(routes::rtt))
        .route("/metrics", get(routes::metrics))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_host,
        ))
        .layer(axum::middleware::from_fn(count_requests))
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // Outermost, so the limit and timeout layers' errors become JSON too.
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Refuses (421) a request whose `Host` names a host this API does not know: DNS
/// rebinding gives a web page a name of its own that resolves to this listener.
async fn check_host(
    axum::extract::State(state): axum::extract::State<AdminState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string());
    if let Some(host) = host
        && !host_allowed(&host, &state.settings.load().hosts)
    {
        return ApiError::Misdirected(format!(
            "Host {host:?} is not a name of this server; add it to [admin] hosts"
        ))
        .into_response();
    }
    next.run(request).await
}

/// Whether a `Host` header's value names this server: an IP literal, `localhost`, this
/// machine's host name, or one of `hosts` (ports ignored, case-insensitive).
pub(crate) fn host_allowed(host: &str, hosts: &[String]) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name);
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" {
        return true;
    }
    static HOSTNAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let own = HOSTNAME.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .map(|h| h.to_ascii_lowercase())
    });
    own.as_deref() == Some(name.as_str()) || hosts.contains(&name)
}

/// Adds the headers that keep a browser from sniffing, framing or leaking the API's
/// responses, and confine the status page to its own script and style.
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::HeaderValue;
    use axum::http::header;
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(policy) = HeaderValue::from_str(page::content_security_policy()) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A running admin listener.
#[derive(Debug)]
pub struct AdminServer {
    /// Where it listens.
    pub local_addr: SocketAddr,
    task: JoinHandle<()>,
    token: CancellationToken,
    /// A duplicate of the listening socket, for a replacement ([`crate::handover`]).
    socket: std::os::fd::OwnedFd,
}

/// Time open admin connections get to finish once shutdown starts; then they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl AdminServer {
    /// Binds and serves `router(state)`: at most `max_connections` connections at once
    /// (more wait in the listen queue), each closed when it does not send a request's
    /// headers within `header_timeout`.
    pub async fn start(addr: SocketAddr, state: AdminState) -> std::io::Result<Self> {
        Self::start_on(TcpListener::bind(addr).await?, state)
    }

    /// [`AdminServer::start`] on a listener already bound (passed on by a replaced gto).
    pub fn start_on(listener: TcpListener, state: AdminState) -> std::io::Result<Self> {
        let socket = crate::handover::duplicate(&listener)?;
        let local_addr = listener.local_addr()?;
        let settings = state.settings.load_full();
        info!(%local_addr, "admin API listening");
        let token = CancellationToken::new();
        let app = router(state);
        let task = tokio::spawn(serve(
            listener,
            app,
            settings.max_connections,
            settings.header_timeout,
            token.clone(),
        ));
        Ok(Self {
            local_addr,
            task,
            token,
            socket,
        })
    }

    /// A duplicate of the listening socket, for a replacement.
    pub fn passable(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.socket.try_clone()
    }

    /// Stops accepting, lets requests in flight finish (each bounded by the request
    /// timeout) for at most 2 s, then closes whatever is left: shutdown
    /// completes within a bound whatever the clients do.
    pub async fn shutdown(self) {
        self.token.cancel();
        let _ = self.task.await;
    }
}

async fn serve(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    header_timeout: Duration,
    token: CancellationToken,
) {
    let slots = slots::Slots::new(max_connections, "connection");
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "admin accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = token.cancelled() => break,
                    }
                    continue;
                }
            },
            () = token.cancelled() => break,
        };
        // Every connection busy with a request (each bounded by the request timeout): no
        // room, this one is closed at once.
        let Some(slot) = slots.admit(peer.ip()) else {
            metrics::counter!(crate::metrics::ADMIN_EVICTED_TOTAL, "kind" => "refused")
                .increment(1);
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone().layer(axum::Extension(Peer(peer.ip()))));
        let busy = slot.busy.clone();
        // Counts the requests in progress, so that a busy connection is never evicted.
        let service = hyper::service::service_fn(move |request| {
            use hyper::service::Service as _;
            busy.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let response = service.call(request);
            let busy = busy.clone();
            async move {
                let response = response.await;
                busy.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                response
            }
        });
        let token = token.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = slot.evicted.cancelled() => {}
                () = token.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }
    let finish = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, finish).await.is_err() {
        warn!(
            open = connections.len(),
            "admin connections still open after the shutdown grace; closing them"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// Turns every error that is not JSON yet (axum's extractor rejections, 405, the body
/// limit's 413, the timeout's 408) into `{"error": "..."}`, so clients parse one format.
async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    let message = if text.is_empty() {
        reason
    } else {
        format!("{reason}: {text}")
    };
    let mut json = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

/// Counts every request by route template (bounded) and status.
async fn count_requests(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    metrics::counter!(
        ADMIN_REQUESTS_TOTAL,
        "route" => route,
        "status" => response.status().as_u16().to_string(),
    )
    .increment(1);
    response
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
