//! Issue 15 (part): the status page in a real headless browser (Debian `chromium`,
//! installed by `tests/run`), driven over the DevTools protocol: it renders every member
//! with its state, shows a drain and a stopped appliance within 2 s without a reload, and
//! its explain form gives the answer a real query gets. The test saves a screenshot
//! (`target/status-page.png`; the README's is one of these).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hickory_proto::rr::RecordType;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::admin::TOKEN;
use crate::fleet::within;
use crate::support::appliance::{Appliance, Speaks};
use crate::support::{TestServer, ZONE, answers, http, http_json, query, udp};

fn chromium() -> &'static str {
    for path in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if Path::new(path).exists() {
            return path;
        }
    }
    panic!("chromium is not installed: `tests/run` installs it (apt-get install -y chromium)");
}

/// Opens a page through the DevTools HTTP endpoint; None until it answers.
async fn new_target(devtools: SocketAddr, url: &str) -> Option<serde_json::Value> {
    tokio::net::TcpStream::connect(devtools).await.ok()?;
    // The helper panics on a refused connection (chromium may still be starting).
    let path = format!("/json/new?{url}");
    let (code, body) = tokio::spawn(async move { http(devtools, "PUT", &path, None, "").await })
        .await
        .ok()?;
    if code != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// A headless chromium with one page open, ended (by its PID) when dropped.
struct Browser {
    child: Child,
    _dir: tempfile::TempDir,
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    async fn open(url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1200,900",
                // Port 0: chromium picks one and writes it to DevToolsActivePort.
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", dir.path().display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let active = dir.path().join("DevToolsActivePort");
        let devtools: SocketAddr = loop {
            let port = std::fs::read_to_string(&active)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<u16>().ok());
            if let Some(port) = port {
                break SocketAddr::from(([127, 0, 0, 1], port));
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromium did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let target = loop {
            if let Some(target) = new_target(devtools, url).await {
                break target;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromium did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Chromium builds the URL from the request's Host header ("localhost", without
        // the port): use the address it listens on.
        let given = target["webSocketDebuggerUrl"].as_str().unwrap();
        let path = &given[given.find("/devtools/").unwrap()..];
        let ws = format!("ws://{devtools}{path}");
        let (socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
        Self {
            child,
            _dir: dir,
            socket,
            next_id: 1,
        }
    }

    /// Calls a DevTools method and returns its result.
    async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = serde_json::json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Ws::Text(request.to_string().into()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("no DevTools reply")
                .unwrap()
                .unwrap();
            if let Ws::Text(text) = message {
                let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
                if reply["id"] == id {
                    return reply["result"].clone();
                }
            }
        }
    }

    /// Evaluates JavaScript in the page; its value.
    async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let result = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        result["result"]["value"].clone()
    }
}

/// JavaScript giving a member row's `data-<field>`.
fn member_state(member: &str, field: &str) -> String {
    format!(
        "(function(){{var r=document.querySelector('tr[data-member=\"{member}\"]');return r?r.dataset.{field}:''}})()"
    )
}

/// Polls `expression` in the page until it equals `expected`, up to `limit`.
async fn wait_page(
    browser: &mut Browser,
    limit: Duration,
    what: &str,
    expression: &str,
    expected: serde_json::Value,
) -> Duration {
    let started = Instant::now();
    loop {
        if browser.eval(expression).await == expected {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_page_shows_members_live_and_explains_like_a_real_query() {
    let mut appliances = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        appliances.push(Appliance::start(ip, Speaks::Tcp).await.0);
    }
    let check = r#"{ kind = "tcp", interval = "300ms", timeout = "200ms", rise = 1, fall = 2 }"#;
    let config = crate::health::health_config(
        [
            appliances[0].addr.port(),
            appliances[1].addr.port(),
            appliances[2].addr.port(),
        ],
        check,
        true,
    )
    .replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"",
    );
    let server =
        TestServer::start_with_files(&config, ZONE, &[("admin.token", &format!("{TOKEN}\n"))])
            .await;
    let admin = server.admin();
    // Up once every appliance answered a probe.
    within(Duration::from_secs(5), "all checked", || async {
        server.app.health().checked() == 3
    })
    .await;

    // Without JavaScript the page already says it all.
    let (code, html) = http(admin, "GET", "/", None, "").await;
    assert_eq!(code, 200);
    for member in ["fra-1", "ams-1", "nyc-1"] {
        assert!(
            html.contains(&format!("data-member=\"{member}\" data-health=\"up\"")),
            "{member}"
        );
    }
    assert!(html.len() < 64 * 1024, "size budget: {} bytes", html.len());

    let mut browser = Browser::open(&format!("http://{admin}/")).await;
    wait_page(
        &mut browser,
        Duration::from_secs(10),
        "the page is live",
        "document.documentElement.dataset.live",
        serde_json::json!("on"),
    )
    .await;
    wait_page(
        &mut browser,
        Duration::from_secs(5),
        "every member rendered",
        "document.querySelectorAll('table.members tr[data-member]').length",
        serde_json::json!(3),
    )
    .await;
    for member in ["fra-1", "ams-1", "nyc-1"] {
        assert_eq!(browser.eval(&member_state(member, "health")).await, "up");
    }

    // A drain through the API appears within 2 s, no reload.
    let (code, _) = http_json(
        admin,
        "POST",
        "/v1/members/sma/fra-1/drain",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, 200);
    let took = wait_page(
        &mut browser,
        Duration::from_secs(2),
        "the drain on the page",
        &member_state("fra-1", "drained"),
        serde_json::json!("true"),
    )
    .await;
    eprintln!("drain shown after {took:?}");

    // An appliance stopped: down on the page within 2 s.
    appliances[1].stop().await;
    let took = wait_page(
        &mut browser,
        Duration::from_secs(2),
        "the stopped appliance on the page",
        &member_state("ams-1", "health"),
        serde_json::json!("down"),
    )
    .await;
    eprintln!("appliance down shown after {took:?}");

    let shot = browser
        .call(
            "Page.captureScreenshot",
            serde_json::json!({ "format": "png" }),
        )
        .await;
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let path = crate::support::repo().join("target/status-page.png");
    std::fs::write(&path, &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"));

    // The explain form, submitted in the page, gives what a real query gets.
    browser
        .eval(
            "document.querySelector('input[name=name]').value='vpn.gto.example.com.';\
             document.querySelector('input[name=client]').value='198.51.100.7';\
             document.querySelector('form').submit();",
        )
        .await;
    let explained = wait_page(
        &mut browser,
        Duration::from_secs(5),
        "the explanation",
        "document.getElementById('explain-answers') !== null",
        serde_json::json!(true),
    )
    .await;
    let shown = browser
        .eval("document.getElementById('explain-answers').textContent")
        .await;
    let mut shown: Vec<String> = shown
        .as_str()
        .unwrap()
        .split(' ')
        .map(String::from)
        .collect();
    let mut real = answers(
        &udp(
            server.addr,
            &query("vpn.gto.example.com.", RecordType::A, None),
        )
        .await
        .0,
    );
    shown.sort();
    real.sort();
    assert_eq!(shown, real, "after {explained:?}");
}

/// What an operator reads off the page without a browser: this instance's identity and
/// commit; a drained member shown "up, drained" (not green), out of the answers; the
/// name's selection; and the recent events as words, each numbered once.
#[tokio::test]
async fn the_page_says_what_is_answered_and_events_in_words() {
    let config = crate::support::config("")
        .replace(
            "[server]\nlisten = [\"127.0.0.1:0\"]",
            "[server]\nlisten = [\"127.0.0.1:0\"]\nidentity = \"ns-page\"",
        )
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"",
        );
    let server =
        TestServer::start_with_files(&config, ZONE, &[("admin.token", &format!("{TOKEN}\n"))])
            .await;
    let admin = server.admin();
    let (code, _) = http_json(
        admin,
        "POST",
        "/v1/members/sma/fra-1/drain",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(code, 200);
    let (code, html) = http(admin, "GET", "/", None, "").await;
    assert_eq!(code, 200);
    assert!(html.contains("ns-page"), "identity");
    assert!(html.contains(env!("CARGO_PKG_VERSION")) && html.contains("commit "));
    let row = html
        .split("<tr ")
        .find(|r| r.starts_with("data-member=\"fra-1\""))
        .expect("fra-1's row");
    assert!(
        row.contains("data-in-answers=\"false\"") && row.contains("<td class=drained>up, drained"),
        "{row}"
    );
    assert!(
        !row.contains("class=up>up"),
        "a drained member is not green: {row}"
    );
    let ams = html
        .split("<tr ")
        .find(|r| r.starts_with("data-member=\"ams-1\""))
        .expect("ams-1's row");
    assert!(ams.contains("data-in-answers=\"true\""), "{ams}");
    assert!(html.contains("data-selection=normal"), "selection shown");
    let events = &html[html.find("<ul id=events>").expect("events")..];
    let drain = events
        .split("<li ")
        .find(|e| e.contains("<b>drain</b>"))
        .expect("the drain event");
    assert!(
        drain.contains("sma/fra-1") && drain.contains("action: drain"),
        "{drain}"
    );
    assert!(
        !drain.contains("{&quot;") && !drain.contains("{\""),
        "no raw JSON: {drain}"
    );
    assert!(!html.contains("<ol id=events"), "numbered once, by its id");
}
