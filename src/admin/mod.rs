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
//! | `/metrics` | GET | Prometheus text |
//! | `/healthz` | GET | the process is alive |
//! | `/readyz` | GET | 200 once the first routing snapshot is published |
//!
//! Reads are open on the listener. Every change needs `Authorization: Bearer <token>` with
//! the token from `[admin] token_file` (compared in constant time); without a configured
//! token, changes are refused (403). Request bodies are capped at 64 KiB and every request
//! at 10 s. Errors are JSON: `{"error": "..."}`.

mod error;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::{info, warn};

pub use error::ApiError;

use crate::app::Reloader;
use crate::config::AdminSettings;
use crate::health::HealthHandle;
use crate::metrics::ADMIN_REQUESTS_TOTAL;
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
    pub metrics: PrometheusHandle,
    /// Opens once the first snapshot is published.
    pub ready: Arc<AtomicBool>,
}

/// The admin router; testable with `oneshot`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/status", get(routes::status))
        .route("/v1/explain", get(routes::explain))
        .route("/v1/members/{pool}/{member}/drain", post(routes::drain))
        .route("/v1/members/{pool}/{member}/undrain", post(routes::undrain))
        .route("/v1/members/{pool}/{member}/load", put(routes::load))
        .route("/v1/reload", post(routes::reload))
        .route("/metrics", get(routes::metrics))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn(count_requests))
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// A running admin listener.
#[derive(Debug)]
pub struct AdminServer {
    /// Where it listens.
    pub local_addr: SocketAddr,
    task: JoinHandle<()>,
    token: CancellationToken,
}

impl AdminServer {
    /// Binds and serves `router(state)`.
    pub async fn start(addr: SocketAddr, state: AdminState) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        info!(%local_addr, "admin API listening");
        let token = CancellationToken::new();
        let shutdown = token.clone().cancelled_owned();
        let app = router(state);
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                warn!(%error, "admin API stopped");
            }
        });
        Ok(Self {
            local_addr,
            task,
            token,
        })
    }

    /// Stops accepting and waits for requests in flight (each bounded by the timeout).
    pub async fn shutdown(self) {
        self.token.cancel();
        let _ = self.task.await;
    }
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
