//! Issue 15 (part): `GET /v1/events`, Server-Sent Events over a real TCP connection —
//! drains and reloads as they happen, resuming with `Last-Event-ID`, nothing lost across a
//! reload, and a consumer that does not read cannot make gto buffer without bound.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::admin::{TOKEN, start};
use crate::real::real_config_with_token;
use crate::support::{RealGto, ZONE, http_json};

/// An open event stream: reads `id:`/`event:`/`data:` blocks.
pub(crate) struct Stream {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) id: Option<u64>,
    pub(crate) kind: String,
    pub(crate) data: serde_json::Value,
}

impl Stream {
    pub(crate) async fn open(addr: SocketAddr, last_event_id: Option<u64>) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        stream
            .write_all(
                format!(
                    "GET /v1/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{resume}\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut lines = BufReader::new(stream).lines();
        // Status line and headers.
        let status = lines.next_line().await.unwrap().unwrap();
        assert!(status.contains("200"), "{status}");
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.is_empty() {
                break;
            }
        }
        Self { lines }
    }

    /// The next event other than an `audit` record (each change asked through the API
    /// is preceded by one), within 5 s.
    pub(crate) async fn next(&mut self) -> Received {
        loop {
            let event = self.next_any().await;
            if event.kind != "audit" {
                return event;
            }
        }
    }

    /// The next event of any kind (keep-alive comments and chunk sizes skipped), within 5 s.
    pub(crate) async fn next_any(&mut self) -> Received {
        let read = async {
            let (mut id, mut kind, mut data) = (None, String::new(), String::new());
            loop {
                let line = self.lines.next_line().await.unwrap().expect("stream ended");
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                } else if line.is_empty() && !kind.is_empty() {
                    return Received {
                        id,
                        kind,
                        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
                    };
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("no event within 5 s")
    }
}

pub(crate) async fn drain(admin: SocketAddr, action: &str) {
    let (code, body) = http_json(
        admin,
        "POST",
        &format!("/v1/members/sma/fra-1/{action}"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn drains_and_reloads_stream_as_events_and_resume_by_id() {
    let server = start().await;
    let admin = server.admin();
    let mut stream = Stream::open(admin, None).await;
    drain(admin, "drain").await;
    // Each change asked through the API: its audit record, then the change itself.
    let audit = stream.next_any().await;
    assert_eq!(audit.kind, "audit", "{audit:?}");
    assert_eq!(audit.data["data"]["token"], "default");
    assert_eq!(audit.data["data"]["target"], "sma/fra-1");
    let first = stream.next_any().await;
    assert_eq!(first.kind, "drain", "{first:?}");
    assert_eq!(first.id, audit.id.map(|id| id + 1));
    assert_eq!(first.data["data"]["member"], "fra-1");
    assert_eq!(first.data["data"]["action"], "drain");
    let first_id = first.id.unwrap();

    // A reload between two changes: ids go on without a gap, nothing is lost.
    let (code, _) = http_json(admin, "POST", "/v1/reload", Some(TOKEN), "").await;
    assert_eq!(code, 200);
    drain(admin, "undrain").await;
    let reload = stream.next().await;
    assert_eq!(reload.kind, "reload");
    assert_eq!(reload.data["data"]["result"], "ok");
    let undrain = stream.next().await;
    assert_eq!(undrain.kind, "drain");
    assert_eq!(undrain.data["data"]["action"], "undrain");
    // Between them, the reload's and the undrain's audit records.
    assert_eq!(
        (reload.id.unwrap(), undrain.id.unwrap()),
        (first_id + 2, first_id + 4)
    );
    drop(stream);

    // Disconnected, two more changes; resuming after the first event replays the rest.
    drain(admin, "drain").await;
    drain(admin, "undrain").await;
    let mut resumed = Stream::open(admin, Some(first_id)).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(resumed.next_any().await.id.unwrap());
    }
    assert_eq!(ids, (first_id + 1..=first_id + 8).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_consumer_that_does_not_read_cannot_grow_memory() {
    let server = start().await;
    let admin = server.admin();
    let mut stream = Stream::open(admin, None).await;
    // Far more events than the live buffer and the history hold, while the client reads
    // nothing: gto keeps at most its fixed history, and tells the client what it missed.
    let bus = server.app.changes().clone();
    for i in 0..(gto::events::HISTORY * 4) {
        bus.emit("health", serde_json::json!({ "i": i }));
    }
    let mut kinds = Vec::new();
    for _ in 0..3 {
        kinds.push(stream.next().await.kind);
    }
    assert!(
        kinds.contains(&"reset".to_string()),
        "a lagging stream is told to re-read status: {kinds:?}"
    );
    let (kept, complete) = bus.since(0);
    assert_eq!(kept.len(), gto::events::HISTORY);
    assert!(!complete);
}

#[tokio::test]
async fn event_streams_are_capped() {
    let server = start().await;
    let admin = server.admin();
    let mut open = Vec::new();
    for _ in 0..gto::admin::MAX_EVENT_STREAMS {
        open.push(Stream::open(admin, None).await);
    }
    // One more (issue 30 item 7): it is served, and the oldest stream is ended for it,
    // so the number open stays bounded and silent streams cannot take every slot.
    let mut newest = Stream::open(admin, None).await;
    let oldest = &mut open[0].lines;
    tokio::time::timeout(Duration::from_secs(5), async {
        // The response's last chunk (size 0), or the end of the connection.
        while let Ok(Some(line)) = oldest.next_line().await {
            if line == "0" {
                break;
            }
        }
    })
    .await
    .expect("the oldest stream was not ended");
    drain(admin, "drain").await;
    assert_eq!(newest.next().await.kind, "drain");
    drop(open);
}

/// Item 3: event ids keep growing across a restart, and a stream resumed with an id from
/// before the restart (what a browser's EventSource sends by itself) or one from the
/// future gets a `reset`, not silence.
#[tokio::test]
async fn event_ids_survive_a_restart_and_unknown_ids_get_a_reset() {
    use crate::events::{Stream, drain};
    let dir = tempfile::tempdir().unwrap();
    real_config_with_token(dir.path(), ZONE, |text| text);
    let config = dir.path().join("gto.toml");
    let mut gto = RealGto::run(&config);
    let admin = gto.admin_addr().await;
    let mut stream = Stream::open(admin, None).await;
    drain(admin, "drain").await;
    let before = stream.next().await;
    assert_eq!(before.kind, "drain");
    let old = before.id.unwrap();
    drop(stream);
    gto.signal("TERM");
    assert!(gto.exit().await.success());

    let mut gto = RealGto::run(&config);
    let admin = gto.admin_addr().await;
    // Resuming from the earlier run: told to start again.
    let mut resumed = Stream::open(admin, Some(old)).await;
    let first = resumed.next().await;
    assert_eq!(first.kind, "reset", "{first:?}");
    drain(admin, "undrain").await;
    let undrain = resumed.next().await;
    assert_eq!(undrain.kind, "drain");
    let new = undrain.id.unwrap();
    assert!(new > old, "ids grow across a restart: {old} then {new}");
    // An id this run has not reached.
    let mut future = Stream::open(admin, Some(new + 1_000)).await;
    assert_eq!(future.next().await.kind, "reset");
    // Resuming from this run's own id: the events after it, no reset.
    drain(admin, "drain").await;
    let mut own = Stream::open(admin, Some(new)).await;
    let next = own.next().await;
    // After the undrain: the drain's audit record, then the drain.
    assert_eq!((next.kind.as_str(), next.id), ("drain", Some(new + 2)));
    gto.signal("TERM");
    assert!(gto.exit().await.success());
}
