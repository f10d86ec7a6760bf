//! Webhooks (`[[notify.webhook]]`): each event of the kinds a webhook asks for is POSTed
//! to its URL as the JSON of [`crate::events::Event`], with `X-Gto-Event`,
//! `X-Gto-Delivery` (the event id) and, with a `secret_file`, `X-Gto-Signature:
//! sha256=<hex HMAC-SHA256 of the body>`. HTTPS goes through rustls (the web PKI, or the
//! webhook's `ca_file`).
//!
//! Nothing waits for a receiver: each webhook has a bounded queue filled without blocking
//! from the event bus; what does not fit is dropped and counted in
//! `gto_notify_dropped_total`. A failed POST (an error, or a status other than 2xx) is
//! retried with backoff (0.5 s doubling, [`ATTEMPTS`] attempts), then given up and
//! counted in `gto_notify_failed_total`.
//!
//! A webhook is named in metrics and logs by its `name` (and in logs by its URL without
//! userinfo or query), never by its URL, which may carry credentials. A `user:pass@` in
//! the URL is sent as HTTP Basic authorization, never in the `Host` header.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Webhook;
use crate::events::{Event, Events};

/// `gto_notify_dropped_total{webhook}`: events a webhook's full queue could not take.
pub const NOTIFY_DROPPED_TOTAL: &str = "gto_notify_dropped_total";
/// `gto_notify_sent_total{webhook}`: events delivered (2xx).
pub const NOTIFY_SENT_TOTAL: &str = "gto_notify_sent_total";
/// `gto_notify_failed_total{webhook}`: events given up after every attempt.
pub const NOTIFY_FAILED_TOTAL: &str = "gto_notify_failed_total";

/// POST attempts per event.
pub const ATTEMPTS: u32 = 5;
/// One attempt may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts one sender per webhook and the dispatcher that feeds them from `events`.
pub fn start(
    webhooks: &[Webhook],
    events: &Events,
    token: CancellationToken,
) -> Vec<JoinHandle<()>> {
    if webhooks.is_empty() {
        return Vec::new();
    }
    let mut tasks = Vec::new();
    let mut queues = Vec::new();
    for hook in webhooks {
        let (sender, receiver) = mpsc::channel(hook.queue);
        metrics::counter!(NOTIFY_DROPPED_TOTAL, "webhook" => hook.name.clone()).absolute(0);
        metrics::counter!(NOTIFY_SENT_TOTAL, "webhook" => hook.name.clone()).absolute(0);
        metrics::counter!(NOTIFY_FAILED_TOTAL, "webhook" => hook.name.clone()).absolute(0);
        tasks.push(tokio::spawn(send_all(
            hook.clone(),
            receiver,
            token.child_token(),
        )));
        queues.push((hook.clone(), sender));
    }
    let mut live = events.subscribe();
    tasks.push(tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                () = token.cancelled() => return,
            };
            match received {
                Ok(event) => {
                    for (hook, queue) in &queues {
                        let wanted = hook.events.is_empty()
                            || hook.events.iter().any(|kind| kind == event.kind);
                        if wanted && queue.try_send(event.clone()).is_err() {
                            metrics::counter!(NOTIFY_DROPPED_TOTAL, "webhook" => hook.name.clone())
                                .increment(1);
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    for (hook, _) in &queues {
                        metrics::counter!(NOTIFY_DROPPED_TOTAL, "webhook" => hook.name.clone())
                            .increment(missed);
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }));
    tasks
}

/// Delivers a webhook's queue, one event at a time, with retries.
async fn send_all(hook: Webhook, mut queue: mpsc::Receiver<Arc<Event>>, token: CancellationToken) {
    let tls = match tls_connector(&hook) {
        Ok(tls) => tls,
        Err(error) => {
            warn!(webhook = %hook.name, url = %crate::config::redacted_url(&hook.url), %error, "webhook disabled: its TLS settings do not work");
            return;
        }
    };
    loop {
        let event = tokio::select! {
            event = queue.recv() => match event {
                Some(event) => event,
                None => return,
            },
            () = token.cancelled() => return,
        };
        let body = serde_json::to_vec(&*event).unwrap_or_default();
        let mut delay = Duration::from_millis(500);
        let mut delivered = false;
        for attempt in 1..=ATTEMPTS {
            match tokio::time::timeout(ATTEMPT_TIMEOUT, post(&hook, &tls, &event, &body)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    delivered = true;
                    break;
                }
                Ok(Ok(status)) => {
                    warn!(webhook = %hook.name, url = %crate::config::redacted_url(&hook.url), id = event.id, attempt, status, "webhook refused an event");
                }
                Ok(Err(error)) => {
                    warn!(webhook = %hook.name, url = %crate::config::redacted_url(&hook.url), id = event.id, attempt, %error, "webhook unreachable");
                }
                Err(_) => {
                    warn!(webhook = %hook.name, url = %crate::config::redacted_url(&hook.url), id = event.id, attempt, "webhook timed out")
                }
            }
            if attempt < ATTEMPTS {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = token.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
        let counter = if delivered {
            NOTIFY_SENT_TOTAL
        } else {
            NOTIFY_FAILED_TOTAL
        };
        metrics::counter!(counter, "webhook" => hook.name.clone()).increment(1);
    }
}

/// The signature header's value for `body`: `sha256=<hex HMAC-SHA256>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn tls_connector(hook: &Webhook) -> Result<Option<tokio_rustls::TlsConnector>, String> {
    if !hook.url.starts_with("https://") {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &hook.ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| e.to_string())?;
                roots.add(cert).map_err(|e| e.to_string())?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(config))))
}

/// One POST; the response status.
async fn post(
    hook: &Webhook,
    tls: &Option<tokio_rustls::TlsConnector>,
    event: &Event,
    body: &[u8],
) -> Result<u16, String> {
    let uri: hyper::Uri = hook.url.parse().map_err(|e| format!("{e}"))?;
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), ToString::to_string);
    let tcp = TcpStream::connect((host.trim_matches(|c| c == '[' || c == ']'), port))
        .await
        .map_err(|e| e.to_string())?;
    // Host is host[:port] only: the authority's userinfo is a credential.
    let host_header = match uri.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let mut request = hyper::Request::post(path)
        .header("host", host_header)
        .header("content-type", "application/json")
        .header("user-agent", concat!("gto/", env!("CARGO_PKG_VERSION")))
        .header("x-gto-event", event.kind)
        .header("x-gto-delivery", event.id.to_string());
    if let Some(secret) = &hook.secret {
        request = request.header("x-gto-signature", signature(secret.expose(), body));
    }
    if let Some(userinfo) = uri
        .authority()
        .and_then(|a| a.as_str().rsplit_once('@'))
        .map(|(userinfo, _)| userinfo)
    {
        use base64::Engine;
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(percent_decode(userinfo));
        request = request.header("authorization", format!("Basic {credentials}"));
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    match tls {
        None => exchange(tcp, request).await,
        Some(connector) => {
            let name =
                ServerName::try_from(host.trim_matches(|c| c == '[' || c == ']').to_string())
                    .map_err(|e| e.to_string())?;
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            exchange(stream, request).await
        }
    }
}

async fn exchange<S>(stream: S, request: hyper::Request<Full<Bytes>>) -> Result<u16, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

/// `%XX` escapes of a URL's userinfo decoded (RFC 3986 2.1); anything else kept.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_percent_decoded_and_urls_are_redacted() {
        assert_eq!(percent_decode("al%40ice:p%3Ass%zz"), b"al@ice:p:ss%zz");
        assert_eq!(
            crate::config::redacted_url("https://u:secret@hooks.example.net:8443/x/y?token=abc"),
            "https://…@hooks.example.net:8443/x/y?…"
        );
        assert_eq!(
            crate::config::redacted_url("http://127.0.0.1/hook"),
            "http://127.0.0.1/hook"
        );
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let mac = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            mac,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
