//! Issue 15 (part): webhooks against real HTTP and HTTPS receivers in the test — the
//! signature verified independently, retries after 500s, and a queue that overflows is
//! counted rather than grown.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admin::{TOKEN, admin_config};
use crate::fleet::within;
use crate::support::{TestServer, ZONE, http, http_json, sample};

const SECRET: &str = "webhook-secret-for-tests";

#[derive(Debug, Clone)]
struct Delivery {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Delivery {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A receiver: records every request; answers the queued statuses first, then 200. With
/// `hang`, it never answers.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Delivery>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    async fn start(tls: Option<TlsAcceptor>, hang: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let statuses: Arc<Mutex<VecDeque<u16>>> = Arc::default();
        let (g, s) = (got.clone(), statuses.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (g, s, tls) = (g.clone(), s.clone(), tls.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let (g, s) = (g.clone(), s.clone());
                            async move {
                                let headers = request
                                    .headers()
                                    .iter()
                                    .map(|(n, v)| {
                                        (n.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect();
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .unwrap()
                                    .to_bytes()
                                    .to_vec();
                                g.lock().unwrap().push(Delivery { headers, body });
                                if hang {
                                    std::future::pending::<()>().await;
                                }
                                let status = s.lock().unwrap().pop_front().unwrap_or(200);
                                Ok::<_, Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            got,
            statuses,
        }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }
}

async fn server(url: &str, extra: &str, files: &[(&str, &str)]) -> TestServer {
    let text = format!(
        "{}\n[[notify.webhook]]\nurl = \"{url}\"\nevents = [\"drain\"]\nsecret_file = \"webhook.secret\"\n{extra}",
        admin_config()
    );
    let mut all = vec![
        ("admin.token", format!("{TOKEN}\n")),
        ("webhook.secret", format!("{SECRET}\n")),
    ];
    for (name, text) in files {
        all.push((name, text.to_string()));
    }
    let all: Vec<(&str, &str)> = all.iter().map(|(a, b)| (*a, b.as_str())).collect();
    TestServer::start_with_files(&text, ZONE, &all).await
}

async fn drain(server: &TestServer, action: &str) {
    let (code, body) = http_json(
        server.admin(),
        "POST",
        &format!("/v1/members/sma/fra-1/{action}"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
}

fn verify(delivery: &Delivery) {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&delivery.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        delivery.header("x-gto-signature"),
        Some(format!("sha256={expected}").as_str()),
        "signature"
    );
}

#[tokio::test]
async fn webhooks_are_signed_retried_after_500s_and_filtered_by_kind() {
    let receiver = Receiver::start(None, false).await;
    receiver.statuses.lock().unwrap().extend([500, 500]);
    let gto = server(&format!("http://{}/hook", receiver.addr), "", &[]).await;
    drain(&gto, "drain").await;
    // A reload is not a "drain" event: not sent.
    let (code, _) = http_json(gto.admin(), "POST", "/v1/reload", Some(TOKEN), "").await;
    assert_eq!(code, 200);
    within(
        Duration::from_secs(5),
        "delivered after two 500s",
        || async { receiver.deliveries().len() >= 3 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deliveries = receiver.deliveries();
    assert_eq!(
        deliveries.len(),
        3,
        "two refused, one accepted; no reload event"
    );
    for delivery in &deliveries {
        verify(delivery);
        assert_eq!(delivery.header("x-gto-event"), Some("drain"));
        let event: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
        assert_eq!(event["data"]["member"], "fra-1");
        assert_eq!(
            delivery.header("x-gto-delivery"),
            Some(event["id"].to_string().as_str())
        );
    }
    let (_, metrics) = http(gto.admin(), "GET", "/metrics", None, "").await;
    assert_eq!(
        sample(&metrics, "gto_notify_sent_total", &["webhook=\"webhook0\""]),
        1.0
    );
}

#[tokio::test]
async fn webhooks_over_https_with_a_ca_file() {
    let (acceptor, pem) = crate::support::appliance::certificate(&["localhost"], 30);
    let receiver = Receiver::start(Some(acceptor), false).await;
    let url = format!("https://localhost:{}/hook", receiver.addr.port());
    let gto = server(
        &url,
        "ca_file = \"receiver.pem\"\n",
        &[("receiver.pem", &pem)],
    )
    .await;
    drain(&gto, "drain").await;
    within(Duration::from_secs(5), "delivered over TLS", || async {
        !receiver.deliveries().is_empty()
    })
    .await;
    verify(&receiver.deliveries()[0]);
}

#[tokio::test]
async fn a_stuck_receiver_fills_a_bounded_queue_and_the_rest_is_counted() {
    let receiver = Receiver::start(None, true).await;
    let url = format!("http://{}/hook", receiver.addr);
    let gto = server(&url, "queue = 4\n", &[]).await;
    // 40 drain events: one in flight (stuck), four queued, the rest dropped.
    for i in 0..20 {
        drain(&gto, if i % 2 == 0 { "drain" } else { "undrain" }).await;
        drain(&gto, if i % 2 == 0 { "undrain" } else { "drain" }).await;
    }
    let (_, metrics) = http(gto.admin(), "GET", "/metrics", None, "").await;
    let dropped = sample(
        &metrics,
        "gto_notify_dropped_total",
        &["webhook=\"webhook0\""],
    );
    assert!(dropped >= 30.0, "dropped {dropped}");
    // The query path and the admin API are unaffected.
    let (code, _) = http_json(gto.admin(), "GET", "/v1/status", None, "").await;
    assert_eq!(code, 200);
}

/// Issue 30 item 6: a URL's credentials (userinfo, query) are in neither `/metrics` nor
/// the log, and `user:pass@` goes out as Basic authorization, never in `Host`.
#[tokio::test]
async fn webhook_credentials_stay_out_of_metrics_logs_and_host() {
    let receiver = Receiver::start(None, false).await;
    let closed = crate::support::ClosedPort::new();
    let closed_port = closed.port();
    let dir = tempfile::tempdir().unwrap();
    crate::real::real_config_with_token(dir.path(), ZONE, |text| {
        format!(
            "{text}\n[[notify.webhook]]\nname = \"chat\"\nurl = \"http://bot:pa%40ss-S3CRET@{}/hook?key=Q-S3CRET\"\n\
             [[notify.webhook]]\nurl = \"http://ops:U-S3CRET@127.0.0.1:{closed_port}/down?t=T-S3CRET\"\n",
            receiver.addr
        )
    });
    let mut gto = crate::support::RealGto::run(&dir.path().join("gto.toml"));
    let admin = gto.admin_addr().await;
    crate::events::drain(admin, "drain").await;
    within(Duration::from_secs(5), "delivered", || async {
        !receiver.deliveries().is_empty()
    })
    .await;
    let delivery = &receiver.deliveries()[0];
    assert_eq!(
        delivery.header("host"),
        Some(receiver.addr.to_string().as_str())
    );
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("bot:pa@ss-S3CRET");
    assert_eq!(
        delivery.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    // The unreachable one is logged by name and by its URL without credentials.
    let warning = gto.wait_for_log("webhook unreachable").await;
    assert!(
        warning.contains("webhook1") && warning.contains("/down"),
        "{warning}"
    );
    assert!(!warning.contains("S3CRET"), "{warning}");
    // Counted once the receiver's reply is read, which may be just after it saw the post:
    // the drain's audit record and the drain (the webhook takes every kind).
    within(Duration::from_secs(5), "counted as sent", || async {
        let (_, metrics) = http(admin, "GET", "/metrics", None, "").await;
        sample(&metrics, "gto_notify_sent_total", &["webhook=\"chat\""]) == 2.0
    })
    .await;
    let (_, metrics) = http(admin, "GET", "/metrics", None, "").await;
    assert!(!metrics.contains("S3CRET"), "{metrics}");
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}
