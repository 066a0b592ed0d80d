//! Websockets end to end: a real websocket upstream (tokio-tungstenite
//! server), the real gateway on loopback, a real websocket client. Relay
//! both ways, refusals, cookie sessions, activity, and the close (1008 with
//! a reason) when the session ends: idle, logout, admin revocation,
//! deactivation, lifetime, and across two gateways sharing a real Redis.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const RULES: &str = r#"
roles:
  viewer: { grants: [chat.view] }
  quick: { idle_timeout: 1s }
routes:
  - { name: live, match: { methods: [GET], path: /ws/echo }, upstream: app, require: chat.view, websocket: true }
  - { name: tick, match: { methods: [GET], path: /ws/tick }, upstream: app, require: chat.view, websocket: true }
  - { name: flood, match: { methods: [GET], path: /ws/flood }, upstream: app, require: chat.view, websocket: true }
  - { name: deaf, match: { methods: [GET], path: /ws/deaf }, upstream: app, require: chat.view, websocket: true }
  - { name: passive, match: { methods: [GET], path: /ws/passive }, upstream: app, require: chat.view, websocket: true, activity: passive }
  - { name: cross, match: { methods: [GET], path: /ws/cross }, upstream: app, require: chat.view, websocket: true, websocket_origins: ["https://console.example"] }
  - { name: refuse, match: { methods: [GET], path: /ws/refuse }, upstream: app, require: chat.view, websocket: true }
  - { name: fragment, match: { methods: [GET], path: /ws/fragment }, upstream: app, require: chat.view, websocket: true }
  - { name: public-echo, match: { methods: [GET], path: /ws/public }, upstream: app, public: true, websocket: true }
  - { name: conversation, match: { methods: [GET], path: "/ws/conv/{customer}" }, upstream: app, require: "relation:active_conversation({customer})", websocket: true }
  - { name: either, match: { methods: [GET], path: "/ws/either/{customer}" }, upstream: app, require: { any: ["relation:active_conversation({customer})", "relation:supervises({customer})"] }, websocket: true }
  - { name: plain, match: { methods: [GET], path: /ws/plain }, upstream: app, require: chat.view }
  - { name: ping, match: { methods: [GET], path: /api/ping }, upstream: http, require: chat.view }
"#;

const ADMIN_TOKEN: &str = "admin-token-for-websocket-tests-01";

// ------------------------------------------------------------ upstream

/// What the websocket upstream saw.
#[derive(Default)]
struct Seen {
    /// Request headers of each handshake.
    heads: Vec<Vec<(String, String)>>,
    /// Close frames received (code, reason).
    closes: Vec<(u16, String)>,
    /// `/ws/flood` websockets that ended (their sending failed or their
    /// connection closed).
    floods_ended: usize,
}

/// A real websocket upstream: `/ws/tick` sends a text every 100 ms,
/// `/ws/flood` sends 64 KiB messages as fast as they are taken,
/// `/ws/fragment` sends the first frame of a message and never the rest,
/// `/ws/refuse` answers 404, every other path echoes.
struct WsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl WsUpstream {
    async fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let rec = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let rec = rec.clone();
                tokio::spawn(serve_one(stream, rec));
            }
        });
        WsUpstream { addr, seen }
    }

    fn last_head(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().heads.last().cloned().unwrap()
    }

    fn closes(&self) -> Vec<(u16, String)> {
        self.seen.lock().unwrap().closes.clone()
    }

    fn floods_ended(&self) -> usize {
        self.seen.lock().unwrap().floods_ended
    }

    /// Waits (up to 3 s) until at least `n` close frames reached the
    /// upstream; the caller asserts what they were.
    async fn wait_for_closes(&self, n: usize) {
        let start = Instant::now();
        while self.closes().len() < n && start.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[allow(clippy::result_large_err)] // the callback type is tungstenite's
async fn serve_one(stream: TcpStream, rec: Arc<Mutex<Seen>>) {
    let path = Arc::new(Mutex::new(String::new()));
    let p = path.clone();
    let r = rec.clone();
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        *p.lock().unwrap() = req.uri().path().to_string();
        r.lock().unwrap().heads.push(
            req.headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
        );
        if req.uri().path() == "/ws/refuse" {
            let mut e = ErrorResponse::new(Some("no websocket here".into()));
            *e.status_mut() = http::StatusCode::NOT_FOUND;
            return Err(e);
        }
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    if path.lock().unwrap().as_str() == "/ws/deaf" {
        // Takes the handshake, then reads nothing.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(ws);
        return;
    }
    let tick = path.lock().unwrap().as_str() == "/ws/tick";
    if path.lock().unwrap().as_str() == "/ws/flood" {
        let (mut tx, _rx) = ws.split();
        let message = Message::binary(vec![b'x'; 64 * 1024]);
        while tx.send(message.clone()).await.is_ok() {}
        rec.lock().unwrap().floods_ended += 1;
        return;
    }
    let (mut tx, mut rx) = ws.split();
    if path.lock().unwrap().as_str() == "/ws/fragment" && tx.send(first_fragment()).await.is_err() {
        return;
    }
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            m = rx.next() => match m {
                Some(Ok(Message::Close(f))) => {
                    let f = f.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                    rec.lock().unwrap().closes.push(f);
                    let _ = tx.close().await;
                    return;
                }
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            _ = every.tick(), if tick => {
                if tx.send(Message::text("incoming chat")).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The first frame of a text message whose other frames never come.
fn first_fragment() -> Message {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    let header = FrameHeader {
        is_final: false,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    Message::Frame(Frame::from_payload(header, "the start of a message".into()))
}

// ------------------------------------------------------------ gateway

fn config(dir: &Path, upstream: SocketAddr, http: SocketAddr, sessions: &str) -> String {
    // `max_websocket_message_bytes`, `send_timeout` and `websocket_*`
    // lines in `sessions` (a test shortcut) go to `listen`, `app.KEY: V`
    // lines to the upstream `app`, `directory: …` and `relations: …` lines
    // to the top level.
    let mut listen = String::new();
    let mut app = String::new();
    let mut top = String::new();
    let mut rest = String::new();
    for line in sessions.lines() {
        match line.strip_prefix("max_websocket_message_bytes: ") {
            Some(n) => listen.push_str(&format!(", max_websocket_message_bytes: {}", n.trim())),
            None if line.starts_with("send_timeout: ") || line.starts_with("websocket_") => {
                listen.push_str(&format!(", {line}"));
            }
            None if line.starts_with("app.") => app.push_str(&format!(", {}", &line[4..])),
            None if line.starts_with("directory: ") || line.starts_with("relations: ") => {
                top.push_str(line);
                top.push('\n');
            }
            None => {
                rest.push_str(line);
                rest.push('\n');
            }
        }
    }
    let sessions = rest;
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    std::fs::write(dir.join("admin.token"), ADMIN_TOKEN).unwrap();
    format!(
        "listen: {{ addr: \"127.0.0.1:0\"{listen} }}\n{}upstreams:\n  app: {{ url: \"http://{upstream}\", timeout: 2s{app} }}\n  http: {{ url: \"http://{http}\" }}\nrules: rules.yaml\n\
         admin: {{ addr: \"127.0.0.1:0\", token_file: admin.token }}\n\
         {top}sessions:\n  idle_timeout: 10s\n  flush_interval: 50ms\n{sessions}",
        identity_yaml()
    )
}

async fn start(sessions: &str) -> (WsUpstream, Gw) {
    let up = WsUpstream::start().await;
    let http = Upstream::start().await;
    let dir = scratch_dir("ws");
    let sessions = if sessions.contains("store:") {
        sessions.to_string()
    } else {
        format!("  state_dir: state\n{sessions}")
    };
    let gw = start_with_config(&dir, &config(&dir, up.addr, http.addr, &sessions)).await;
    (up, gw)
}

fn tok(sid: &str, sub: &str, roles: &[&str]) -> String {
    token_with(json!({ "sid": sid, "sub": sub, "roles": roles }))
}

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a websocket through the gateway with `header` (e.g.
/// `("authorization", "Bearer …")`).
async fn open(
    gw: SocketAddr,
    path: &str,
    header: Option<(&str, String)>,
) -> Result<Client, WsError> {
    open_with(gw, path, header.as_slice()).await
}

/// Opens a websocket through the gateway with these extra headers.
async fn open_with(
    gw: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
) -> Result<Client, WsError> {
    let mut req = format!("ws://app.test{path}")
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let tcp = TcpStream::connect(gw).await.unwrap();
    tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp))
        .await
        .map(|(ws, _)| ws)
}

fn bearer(t: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {t}")))
}

async fn open_ok(gw: SocketAddr, path: &str, t: &str) -> Client {
    match open(gw, path, bearer(t)).await {
        Ok(ws) => ws,
        Err(e) => panic!("websocket refused: {e:?}"),
    }
}

/// The refusal of an upgrade: status and JSON `error`.
async fn refused(
    gw: SocketAddr,
    path: &str,
    header: Option<(&str, String)>,
) -> (u16, serde_json::Value) {
    match open(gw, path, header).await {
        Ok(_) => panic!("upgrade on {path} was accepted"),
        Err(WsError::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            )
        }
        Err(e) => panic!("unexpected error: {e:?}"),
    }
}

/// Reads until the gateway's close frame; panics if none comes within
/// `limit`. Returns the close frame and how long it took.
async fn closed_within(ws: &mut Client, limit: Duration) -> (CloseFrame, Duration) {
    let start = Instant::now();
    let r = tokio::time::timeout(limit, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return f,
                Some(Ok(Message::Close(None))) => panic!("close without a code"),
                Some(Ok(_)) => {}
                other => panic!("connection ended without a close frame: {other:?}"),
            }
        }
    })
    .await;
    match r {
        Ok(f) => (f, start.elapsed()),
        Err(_) => panic!("websocket not closed within {limit:?}"),
    }
}

async fn assert_closed(ws: &mut Client, limit: Duration, reason: &str) {
    let (f, _) = closed_within(ws, limit).await;
    assert_eq!(f.code, CloseCode::Policy, "{f}");
    assert_eq!(f.reason.as_str(), reason);
}

/// Sends a ping every 100 ms (or after each frame that comes) until the
/// gateway's close frame, which it returns; fails with `what` if none
/// comes within 5 s.
async fn closed_while_pinging(ws: &mut Client, what: &str) -> CloseFrame {
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let _ = ws.send(Message::Ping("still here".into())).await;
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(Message::Close(Some(f)))) => return f,
                    Some(Ok(_)) => {}
                    other => panic!("ended without a close frame: {other:?}"),
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });
    close.await.expect(what)
}

async fn echo(ws: &mut Client, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let deadline = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == text => return,
                Some(Ok(_)) => {}
                other => panic!("no echo: {other:?}"),
            }
        }
    });
    deadline.await.expect("echo within 2 s");
}

async fn admin(gw: &Gw, path: &str) -> Resp {
    req(gw.admin.unwrap(), "POST", path, Some(ADMIN_TOKEN), &[]).await
}

// ------------------------------------------------------------ relay

#[tokio::test]
async fn frames_are_relayed_both_ways_and_the_handshake_is_forwarded_with_identity() {
    let (up, gw) = start("").await;
    let t = tok("s-relay", "user-relay", &["viewer"]);
    let mut ws = open_ok(gw.addr, "/ws/echo", &t).await;
    echo(&mut ws, "hello").await;
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &[0u8, 1, 2, 255]),
        other => panic!("no binary echo: {other:?}"),
    }
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Some(Ok(Message::Pong(p))) = ws.next().await {
                return p;
            }
        }
    })
    .await
    .expect("pong");
    assert_eq!(&pong[..], b"are you there");
    // A large message passes whole.
    let big = "x".repeat(200_000);
    echo(&mut ws, &big).await;

    let head = up.last_head();
    let h = |n: &str| {
        head.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(h("x-rolegate-user").as_deref(), Some("user-relay"));
    assert_eq!(h("authorization"), None, "the token reached the upstream");
    assert_eq!(h("upgrade").as_deref(), Some("websocket"));
    assert_eq!(h("sec-websocket-version").as_deref(), Some("13"));
    assert_eq!(h("sec-websocket-extensions"), None);

    // The client closes: the upstream gets the close.
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    up.wait_for_closes(1).await;
    assert_eq!(up.closes(), vec![(1000, "bye".to_string())]);
}

#[tokio::test]
async fn upgrades_are_refused_without_token_role_route_or_valid_handshake() {
    let (up, gw) = start("").await;
    let t = tok("s-refuse", "user-refuse", &["viewer"]);
    // No token.
    let (status, body) = refused(gw.addr, "/ws/echo", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_token"))
    );
    // A role without the capability.
    let other = tok("s-refuse-2", "user-refuse-2", &["quick"]);
    let (status, body) = refused(gw.addr, "/ws/echo", bearer(&other)).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    // A route without `websocket: true`.
    let (status, body) = refused(gw.addr, "/ws/plain", bearer(&t)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("websocket_not_allowed"))
    );
    // An unknown path: 404, as for any request.
    let (status, _) = refused(gw.addr, "/ws/none", bearer(&t)).await;
    assert_eq!(status, 404);
    // The upstream refuses the upgrade: its answer is passed on.
    let (status, _) = refused(gw.addr, "/ws/refuse", bearer(&t)).await;
    assert_eq!(status, 404);
    assert_eq!(
        up.seen.lock().unwrap().heads.len(),
        1,
        "only /ws/refuse went upstream"
    );

    // Invalid handshakes: 400 bad_request websocket_handshake.
    for bad in [
        "Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=",
    ] {
        let raw_req = format!(
            "GET /ws/echo HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n{bad}\r\nAuthorization: Bearer {t}\r\n\r\n"
        );
        let r = raw(gw.addr, raw_req.as_bytes()).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.error(), "bad_request");
        assert_eq!(r.json()["reason"], "websocket_handshake");
    }
    assert_eq!(up.seen.lock().unwrap().heads.len(), 1);
}

#[tokio::test]
async fn a_masked_route_cannot_allow_websockets() {
    let dir = scratch_dir("ws-mask");
    std::fs::write(
        dir.join("rules.yaml"),
        r#"
roles:
  viewer: { grants: [chat.view, pii.view] }
masks:
  pii: { unmask_with: pii.view, fields: [ { path: "$..phone", as: last4 } ] }
routes:
  - { name: live, match: { methods: [GET], path: /ws }, require: chat.view, websocket: true, mask: pii }
  - { name: post, match: { methods: [POST], path: /ws2 }, require: chat.view, websocket: true }
"#,
    )
    .unwrap();
    let cfg = format!(
        "{}upstreams:\n  app: {{ url: \"http://127.0.0.1:1\" }}\nrules: rules.yaml\n",
        identity_yaml()
    );
    std::fs::write(dir.join("rolegate.yaml"), cfg).unwrap();
    let errors = match rolegate::config::load(&dir.join("rolegate.yaml")) {
        Ok(_) => panic!("a masked websocket route was accepted"),
        Err(d) => d
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    };
    assert!(
        errors.contains("route live: websocket: true cannot be combined with mask"),
        "{errors}"
    );
    assert!(
        errors.contains("route post: websocket: true needs the route to match GET"),
        "{errors}"
    );
}

#[tokio::test]
async fn a_cookie_session_opens_a_websocket() {
    let (up, gw) = start("").await;
    let t = tok("s-cookie", "user-cookie", &["viewer", "quick"]);
    let mut ws = open(
        gw.addr,
        "/ws/echo",
        Some(("cookie", format!("theme=dark; rg_session={t}"))),
    )
    .await
    .expect("cookie upgrade");
    echo(&mut ws, "via cookie").await;
    let head = up.last_head();
    let cookie = head
        .iter()
        .find(|(k, _)| k == "cookie")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        !cookie.contains("rg_session"),
        "credential cookie forwarded: {cookie}"
    );
    // And its session ends it like any other.
    assert_closed(&mut ws, Duration::from_secs(4), "session idle timeout").await;
}

#[tokio::test]
async fn a_cookie_websocket_from_another_sites_page_is_refused() {
    let (_up, gw) = start("").await;
    let t = tok("s-origin", "user-origin", &["viewer"]);
    let cookie = ("cookie", format!("rg_session={t}"));
    let with_origin = |origin: &str| vec![cookie.clone(), ("origin", origin.to_string())];
    // Cross-site websocket hijacking: another site's page rides the cookie.
    for (path, origin) in [
        ("/ws/echo", "https://evil.example"),
        ("/ws/echo", "null"),
        ("/ws/echo", "https://app.test.evil.example"),
        ("/ws/cross", "https://evil.example"),
    ] {
        match open_with(gw.addr, path, &with_origin(origin)).await {
            Ok(_) => panic!("{origin} opened a cookie websocket on {path}"),
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 403, "{origin}");
                let body: serde_json::Value =
                    serde_json::from_slice(&resp.body().clone().unwrap_or_default()).unwrap();
                assert_eq!(body["error"], "forbidden");
                assert_eq!(body["reason"], "websocket origin not allowed");
            }
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    // The gateway's own host (any scheme or port), a listed origin, no
    // Origin at all (not a browser), and a bearer token (no other site's
    // page can attach one) all open.
    for (path, headers) in [
        ("/ws/echo", with_origin("http://app.test")),
        ("/ws/echo", with_origin("https://APP.test:8443")),
        ("/ws/cross", with_origin("https://console.example")),
        ("/ws/echo", vec![cookie.clone()]),
        (
            "/ws/echo",
            vec![
                ("authorization", format!("Bearer {t}")),
                ("origin", "https://evil.example".to_string()),
            ],
        ),
    ] {
        let mut ws = open_with(gw.addr, path, &headers)
            .await
            .unwrap_or_else(|e| panic!("{headers:?} refused: {e:?}"));
        echo(&mut ws, "origin ok").await;
    }
}

// ------------------------------------------------------------ activity

#[tokio::test]
async fn client_frames_keep_the_session_alive_and_a_passive_route_does_not() {
    let (_up, gw) = start("").await;
    let t = tok("s-active", "user-active", &["viewer", "quick"]);
    let p = tok("s-passive", "user-passive", &["viewer", "quick"]);
    let mut active = open_ok(gw.addr, "/ws/echo", &t).await;
    let mut passive = open_ok(gw.addr, "/ws/passive", &p).await;
    // 2.5 s of client frames every 200 ms: far past the 1 s idle timeout.
    let start = Instant::now();
    let mut passive_closed = None;
    while start.elapsed() < Duration::from_millis(2500) {
        echo(&mut active, "typing").await;
        if passive_closed.is_none() {
            let _ = passive.send(Message::text("typing")).await;
            if let Ok(Some(Ok(Message::Close(Some(f))))) =
                tokio::time::timeout(Duration::from_millis(200), async {
                    loop {
                        match passive.next().await {
                            Some(Ok(Message::Text(_))) => continue,
                            other => return other,
                        }
                    }
                })
                .await
            {
                passive_closed = Some(f);
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let f = passive_closed.expect("the passive websocket was kept open by client frames");
    assert_eq!(
        (f.code, f.reason.as_str()),
        (CloseCode::Policy, "session idle timeout")
    );
    // The active session is alive: the socket relays and HTTP requests pass.
    echo(&mut active, "still here").await;
    assert_eq!(
        req(gw.addr, "GET", "/api/ping", Some(&t), &[]).await.status,
        200
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_its_websocket_is_cut_by_send_timeout() {
    let (up, gw) = start("send_timeout: 300ms").await;
    let t = tok("s-flood", "user-flood", &["viewer"]);
    let mut req = "ws://app.test/ws/flood".into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {t}").parse().unwrap());
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(gw.addr).await.unwrap();
    // The handshake, then nothing read: the flood fills the buffers on
    // the way and the gateway's writes to the client block.
    let (_ws, resp) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    let start = Instant::now();
    while up.floods_ended() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the websocket of a client that stopped reading was kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_upstream_that_stops_reading_its_websocket_is_cut_by_send_timeout() {
    let (_up, gw) = start("send_timeout: 300ms").await;
    let t = tok("s-deaf", "user-deaf", &["viewer"]);
    let ws = open_ok(gw.addr, "/ws/deaf", &t).await;
    let (mut tx, mut rx) = ws.split();
    // The client keeps sending; the upstream takes nothing, so the
    // gateway's writes to it block once the buffers on the way are full.
    let sender = tokio::spawn(async move {
        let message = Message::binary(vec![b'x'; 64 * 1024]);
        while tx.send(message.clone()).await.is_ok() {}
    });
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => {}
                other => panic!("the socket ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("the websocket of an upstream that stopped reading was kept");
    let f = close.expect("a close frame with a code");
    assert_eq!(
        (u16::from(f.code), f.reason.as_str()),
        (1011, "upstream failed")
    );
    sender.abort();
}

#[tokio::test]
async fn an_open_websocket_holds_its_place_under_the_upstreams_max_requests() {
    let (_up, gw) = start("app.max_requests: 1").await;
    let t = tok("s-cap", "user-cap", &["viewer"]);
    let mut ws = open_ok(gw.addr, "/ws/echo", &t).await;
    echo(&mut ws, "held").await;
    let (status, body) = refused(gw.addr, "/ws/echo", bearer(&t)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("upstream_busy"))
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    // The slot comes back once the relay has ended.
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        match open(gw.addr, "/ws/echo", bearer(&t)).await {
            Ok(mut again) => {
                echo(&mut again, "again").await;
                break;
            }
            Err(e) => assert!(Instant::now() < give_up, "slot not given back: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn server_frames_never_count_as_activity() {
    let (up, gw) = start("").await;
    let t = tok("s-tick", "user-tick", &["viewer", "quick"]);
    let mut ws = open_ok(gw.addr, "/ws/tick", &t).await;
    let (f, took) = closed_within(&mut ws, Duration::from_secs(4)).await;
    assert_eq!(
        (f.code, f.reason.as_str()),
        (CloseCode::Policy, "session idle timeout")
    );
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the idle timeout"
    );
    // The upstream got a normal close.
    up.wait_for_closes(1).await;
    assert_eq!(
        up.closes(),
        vec![(1000, "session idle timeout".to_string())]
    );
    // The session is over for HTTP too.
    let r = req(gw.addr, "GET", "/api/ping", Some(&t), &[]).await;
    assert_eq!((r.status, r.error()), (401, "session_expired".to_string()));
}

#[tokio::test]
async fn a_message_over_the_limit_ends_the_websocket() {
    let (up, gw) = start("max_websocket_message_bytes: 1024").await;
    let t = tok("s-big", "user-big", &["viewer"]);
    let mut ws = open_ok(gw.addr, "/ws/echo", &t).await;
    echo(&mut ws, &"a".repeat(1000)).await;
    let _ = ws.send(Message::text("b".repeat(4000))).await;
    let end = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => panic!("relayed {} bytes over the limit", t.len()),
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the websocket stayed open");
    up.wait_for_closes(1).await;
    assert_eq!(up.closes().first().map(|c| c.0), Some(1001));
}

#[tokio::test]
async fn a_client_message_left_unfinished_is_cut_by_the_message_timeout_despite_pings_between_fragments()
 {
    let (up, gw) = start("websocket_message_timeout: 400ms").await;
    let t = tok("s-trickle", "user-trickle", &["viewer"]);
    let mut ws = open_ok(gw.addr, "/ws/echo", &t).await;
    // Whole messages, however long the socket lives, are never timed.
    for i in 0..8 {
        echo(&mut ws, &format!("whole {i}")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ws.send(first_fragment()).await.unwrap();
    // Control frames may come between fragments: they do not end it.
    let f = closed_while_pinging(
        &mut ws,
        "an unfinished message was kept past the message timeout",
    )
    .await;
    assert_eq!(
        (f.code, f.reason.as_str()),
        (CloseCode::Policy, "websocket message timeout")
    );
    up.wait_for_closes(1).await;
    assert_eq!(up.closes(), vec![(1001, String::new())]);
}

#[tokio::test]
async fn a_steady_stream_of_whole_messages_is_never_cut_by_the_message_timeout() {
    let (up, gw) = start("websocket_message_timeout: 300ms").await;
    let t = tok("s-steady", "user-steady", &["viewer"]);
    // 64 KiB messages back to back: nearly every read the gateway makes
    // ends inside a frame, and a reader slower than the upstream keeps the
    // gateway waiting on the client with the upstream's next frame begun.
    let mut ws = open_ok(gw.addr, "/ws/flood", &t).await;
    let start = Instant::now();
    let mut got = 0usize;
    while start.elapsed() < Duration::from_millis(1500) {
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got += b.len(),
            Ok(Some(Ok(Message::Close(f)))) => panic!("cut after {got} bytes: {f:?}"),
            Ok(Some(Ok(_))) => {}
            other => panic!("the stream ended after {got} bytes: {other:?}"),
        }
        if got > 4 << 20 {
            // Slower than the upstream from here on.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(got > 4 << 20, "only {got} bytes relayed");
    assert_eq!(up.floods_ended(), 0);
}

#[tokio::test]
async fn an_upstream_message_left_unfinished_is_cut_by_the_message_timeout() {
    let (up, gw) = start("websocket_message_timeout: 400ms").await;
    let t = tok("s-up-trickle", "user-up-trickle", &["viewer"]);
    let mut ws = open_ok(gw.addr, "/ws/fragment", &t).await;
    let (f, _) = closed_within(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(
        (u16::from(f.code), f.reason.as_str()),
        (1011, "upstream failed")
    );
    up.wait_for_closes(1).await;
    assert_eq!(
        up.closes(),
        vec![(1008, "websocket message timeout".to_string())]
    );
}

#[tokio::test]
async fn a_websocket_without_data_messages_either_way_is_closed_by_the_idle_timeout() {
    let (up, gw) = start("websocket_idle_timeout: 600ms").await;
    let t = tok("s-ws-quiet", "user-quiet", &["viewer"]);
    // The upstream's messages count: a ticking socket stays open.
    let mut ticking = open_ok(gw.addr, "/ws/tick", &t).await;
    let mut quiet = open_ok(gw.addr, "/ws/echo", &t).await;
    echo(&mut quiet, "one message").await;
    // Pings are not data: they do not keep a socket open.
    let f = closed_while_pinging(
        &mut quiet,
        "a socket without data messages was kept past the idle timeout",
    )
    .await;
    assert_eq!(
        (f.code, f.reason.as_str()),
        (CloseCode::Away, "websocket idle timeout")
    );
    up.wait_for_closes(1).await;
    assert_eq!(
        up.closes(),
        vec![(1001, "websocket idle timeout".to_string())]
    );
    // Well past the idle timeout, the ticking socket still relays.
    let ticks = tokio::time::timeout(Duration::from_secs(2), async {
        let mut n = 0;
        while n < 5 {
            match ticking.next().await {
                Some(Ok(Message::Text(_))) => n += 1,
                Some(Ok(Message::Close(f))) => panic!("ticking socket closed: {f:?}"),
                Some(Ok(_)) => {}
                other => panic!("ticking socket ended: {other:?}"),
            }
        }
    });
    ticks.await.expect("ticks kept coming");
}

/// A reload that changes the policy closes open websockets (1012), so
/// their clients reconnect and are authorized under the new one; a reload
/// that changes nothing (log rotation's SIGHUP) keeps them, and so does
/// `reload.websockets: keep`.
#[tokio::test]
async fn a_reload_that_changes_the_policy_closes_open_websockets() {
    for keep in [false, true] {
        let up = WsUpstream::start().await;
        let http = Upstream::start().await;
        let dir = scratch_dir("ws-reload");
        let mut cfg = config(&dir, up.addr, http.addr, "  state_dir: state\n");
        cfg.push_str(if keep {
            "reload: { watch: false, websockets: keep }\n"
        } else {
            "reload: { watch: false }\n"
        });
        let gw = start_with_config(&dir, &cfg).await;
        let t = tok("s-ws-reload", "user-reload", &["viewer"]);
        let mut ws = open_ok(gw.addr, "/ws/echo", &t).await;
        // A public socket (no session behind it) is closed the same way.
        let mut public = open(gw.addr, "/ws/public", None).await.unwrap();
        // Nothing changed: kept.
        assert_eq!(admin(&gw, "/reload").await.status, 200);
        echo(&mut ws, "after a reload that changed nothing").await;
        echo(&mut public, "public, after a reload that changed nothing").await;
        // The rules change.
        let rules = std::fs::read_to_string(dir.join("rules.yaml")).unwrap();
        std::fs::write(dir.join("rules.yaml"), format!("{rules}\n# tightened\n")).unwrap();
        assert_eq!(admin(&gw, "/reload").await.status, 200);
        if keep {
            echo(&mut ws, "kept").await;
            echo(&mut public, "kept too").await;
            // A listener that now admits clients another way (here: h2c)
            // closes its websockets whatever `reload.websockets` says.
            let cfg = cfg.replacen(
                "listen: { addr: \"127.0.0.1:0\"",
                "listen: { addr: \"127.0.0.1:0\", h2c: true",
                1,
            );
            std::fs::write(dir.join("rolegate.yaml"), cfg).unwrap();
            assert_eq!(admin(&gw, "/reload").await.status, 200);
            for sock in [&mut ws, &mut public] {
                let (f, _) = closed_within(sock, Duration::from_secs(5)).await;
                assert_eq!(
                    (u16::from(f.code), f.reason.as_str()),
                    (1012, "policy reloaded")
                );
            }
            continue;
        }
        for sock in [&mut ws, &mut public] {
            let (f, _) = closed_within(sock, Duration::from_secs(5)).await;
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (1012, "policy reloaded")
            );
        }
        up.wait_for_closes(2).await;
        assert_eq!(up.closes(), vec![(1001, "policy reloaded".to_string()); 2]);
        // Reconnecting is authorized under the new policy.
        let mut again = open_ok(gw.addr, "/ws/echo", &t).await;
        echo(&mut again, "again").await;
    }
}

/// With a user directory, a socket is authorized on its subject's entry:
/// a change to that entry (created, roles changed, removed) closes the
/// subject's sockets (1008 `user changed`), so they reconnect under what
/// the directory says now; other subjects' sockets are untouched.
#[tokio::test]
async fn a_change_to_the_subjects_directory_entry_closes_its_websockets() {
    let up = WsUpstream::start().await;
    let http = Upstream::start().await;
    let dir = scratch_dir("ws-directory");
    let mut cfg = config(&dir, up.addr, http.addr, "  state_dir: state\n");
    cfg.push_str(&format!("directory: {{ issuer: \"{ISS_RSA}\" }}\n"));
    let gw = start_with_config(&dir, &cfg).await;
    let put = |sub: &'static str, rec: serde_json::Value| {
        let admin = gw.admin.unwrap();
        async move {
            let r = req_json(
                admin,
                "PUT",
                &format!("/directory/users/{sub}"),
                Some(ADMIN_TOKEN),
                &rec.to_string(),
            )
            .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    };
    let t = tok("s-ws-dir", "user-dir", &["viewer"]);
    let mut ws = open_ok(gw.addr, "/ws/echo", &t).await;
    echo(&mut ws, "on the token's claims").await;
    // Another subject's entry: nothing happens here.
    put("user-else", json!({ "roles": ["viewer"] })).await;
    echo(&mut ws, "still open").await;
    // An entry for this subject: its claims are no longer what decides.
    put("user-dir", json!({ "roles": ["viewer"] })).await;
    let (f, _) = closed_within(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(
        (f.code, f.reason.as_str()),
        (CloseCode::Policy, "user changed")
    );
    let mut ws = open_ok(gw.addr, "/ws/echo", &t).await;
    echo(&mut ws, "on the directory's entry").await;
    // The entry is removed: the token's claims decide again.
    let r = req_json(
        gw.admin.unwrap(),
        "DELETE",
        "/directory/users/user-dir",
        Some(ADMIN_TOKEN),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (f, _) = closed_within(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(f.reason.as_str(), "user changed");
    let mut ws = open_ok(gw.addr, "/ws/echo", &t).await;
    echo(&mut ws, "on the token's claims again").await;
    // The role is taken away: closed, and refused when it reconnects.
    put("user-dir", json!({ "roles": [] })).await;
    let (f, _) = closed_within(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(f.reason.as_str(), "user changed");
    let (status, _) = refused(gw.addr, "/ws/echo", bearer(&t)).await;
    assert_eq!(status, 403);
    // The session itself did not end: the token still authenticates
    // (403 on what the entry no longer grants, not 401).
    let r = req(gw.addr, "GET", "/api/ping", Some(&t), &[]).await;
    assert_eq!(r.status, 403);
}

/// A websocket allowed by a pushed relation tuple is closed when the tuple
/// is removed or expires, and only then: another subject's or another
/// customer's tuple changing leaves it open.
#[tokio::test]
async fn a_websocket_is_closed_when_the_pushed_tuple_it_was_allowed_on_goes() {
    let (_up, gw) =
        start("relations: { active_conversation: { push: {} }, supervises: { push: {} } }\n").await;
    let tuple = |rel: &'static str, method: &'static str, body: serde_json::Value| {
        let admin = gw.admin.unwrap();
        async move {
            let r = req_json(
                admin,
                method,
                &format!("/relations/{rel}"),
                Some(ADMIN_TOKEN),
                &body.to_string(),
            )
            .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    };
    let conv = |sub: &str, customer: &str| json!({ "subject": sub, "issuer": ISS_RSA, "object": customer });
    let t = tok("s-ws-rel", "agent-rel", &[]);
    assert_eq!(refused(gw.addr, "/ws/conv/c-1", bearer(&t)).await.0, 403);
    tuple("active_conversation", "POST", conv("agent-rel", "c-1")).await;
    tuple("active_conversation", "POST", conv("agent-rel", "c-2")).await;
    let mut ws = open_ok(gw.addr, "/ws/conv/c-1", &t).await;
    echo(&mut ws, "in the conversation").await;
    // Other tuples come and go: nothing happens to this socket.
    tuple("active_conversation", "POST", conv("agent-else", "c-1")).await;
    tuple("active_conversation", "DELETE", conv("agent-else", "c-1")).await;
    tuple("active_conversation", "DELETE", conv("agent-rel", "c-2")).await;
    echo(&mut ws, "still in it").await;
    // The conversation ends: closed, and refused when it reconnects.
    tuple("active_conversation", "DELETE", conv("agent-rel", "c-1")).await;
    let (f, _) = closed_within(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(
        (f.code, f.reason.as_str()),
        (CloseCode::Policy, "relation removed")
    );
    assert_eq!(refused(gw.addr, "/ws/conv/c-1", bearer(&t)).await.0, 403);
    // The session did not end: the token still opens what it may.
    tuple("active_conversation", "POST", conv("agent-rel", "c-1")).await;
    let mut ws = open_ok(gw.addr, "/ws/conv/c-1", &t).await;
    echo(&mut ws, "back in it").await;
    // A tuple pushed again with a ttl expires: the socket is closed then,
    // without any other change to wake it.
    let mut with_ttl = conv("agent-rel", "c-1");
    with_ttl["ttl"] = json!("1s");
    tuple("active_conversation", "POST", with_ttl).await;
    let (f, _) = closed_within(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(f.reason.as_str(), "relation removed");
    // Allowed on either of two tuples: removing one of them is enough to
    // close it (the socket keeps no decision to re-run), and reconnecting
    // on the other is allowed.
    tuple("active_conversation", "POST", conv("agent-rel", "c-3")).await;
    tuple("supervises", "POST", conv("agent-rel", "c-3")).await;
    let mut ws = open_ok(gw.addr, "/ws/either/c-3", &t).await;
    echo(&mut ws, "on both").await;
    tuple("supervises", "DELETE", conv("agent-rel", "c-3")).await;
    let (f, _) = closed_within(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(f.reason.as_str(), "relation removed");
    let mut ws = open_ok(gw.addr, "/ws/either/c-3", &t).await;
    echo(&mut ws, "on one").await;
}

/// A websocket allowed by a *pulled* relation asks it again while it is
/// open (every `cache_ttl`, at least a second): closed when the source
/// answers false (1008 `relation removed`) or cannot answer (1011
/// `relation unavailable`, fail closed), open while it answers true.
#[tokio::test]
async fn a_websocket_allowed_by_a_pulled_relation_is_closed_when_it_no_longer_holds() {
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    let answer = Arc::new(AtomicU8::new(1));
    let asked = Arc::new(AtomicUsize::new(0));
    let source = relation_source(answer.clone(), asked.clone()).await;
    let up = WsUpstream::start().await;
    let http = Upstream::start().await;
    let dir = scratch_dir("ws-pull");
    let cfg = config(
        &dir,
        up.addr,
        http.addr,
        "  state_dir: state\nrelations: { active_conversation: { pull: { upstream: rel, path: /relations/conv, cache_ttl: 1s, negative_ttl: 0s } } }\n",
    )
    .replace("upstreams:\n", &format!("upstreams:\n  rel: {{ url: \"http://{source}\" }}\n"));
    let gw = start_with_config(&dir, &cfg).await;
    let t = tok("s-ws-pull", "agent-pull", &[]);
    let mut ws = open_ok(gw.addr, "/ws/conv/c-1", &t).await;
    let at_open = asked.load(Ordering::SeqCst);
    assert_eq!(at_open, 1, "asked once for the handshake");
    // Asked again meanwhile (every second, the cached answer expiring each
    // time), still true: open.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = asked.load(Ordering::SeqCst) - at_open;
    assert!((1..=3).contains(&again), "asked {again} times in 2.5 s");
    echo(&mut ws, "still in the conversation").await;
    answer.store(0, Ordering::SeqCst);
    let (f, _) = closed_within(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(
        (f.code, f.reason.as_str()),
        (CloseCode::Policy, "relation removed")
    );
    assert_eq!(refused(gw.addr, "/ws/conv/c-1", bearer(&t)).await.0, 403);
    // The source fails: closed too, as a request would be refused.
    answer.store(1, Ordering::SeqCst);
    let mut ws = open_ok(gw.addr, "/ws/conv/c-1", &t).await;
    echo(&mut ws, "back in it").await;
    answer.store(2, Ordering::SeqCst);
    let (f, _) = closed_within(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(
        (f.code, f.reason.as_str()),
        (CloseCode::Error, "relation unavailable")
    );
}

// ------------------------------------------------------------ session end

#[tokio::test]
async fn logout_closes_the_websocket() {
    let (_up, gw) = start("").await;
    let t = tok("s-ws-logout", "user-logout", &["viewer"]);
    let mut ws = open_ok(gw.addr, "/ws/echo", &t).await;
    echo(&mut ws, "before").await;
    let r = req(gw.addr, "POST", "/.rolegate/logout", Some(&t), &[]).await;
    assert_eq!(r.status, 200);
    assert_closed(&mut ws, Duration::from_secs(2), "logged out").await;
}

#[tokio::test]
async fn admin_revocation_and_deactivation_close_the_websocket() {
    let (_up, gw) = start("").await;
    let t = tok("s-ws-revoke", "user-revoke", &["viewer"]);
    let d = tok("s-ws-deact", "user-deact", &["viewer"]);
    let mut revoked = open_ok(gw.addr, "/ws/echo", &t).await;
    let mut deact = open_ok(gw.addr, "/ws/echo", &d).await;
    let mut deact2 = open_ok(
        gw.addr,
        "/ws/tick",
        &tok("s-ws-deact-2", "user-deact", &["viewer"]),
    )
    .await;
    assert_eq!(admin(&gw, "/sessions/s-ws-revoke/revoke").await.status, 200);
    assert_closed(&mut revoked, Duration::from_secs(2), "session revoked").await;
    echo(&mut deact, "unaffected").await;
    assert_eq!(admin(&gw, "/users/user-deact/deactivate").await.status, 200);
    assert_closed(&mut deact, Duration::from_secs(2), "user deactivated").await;
    assert_closed(&mut deact2, Duration::from_secs(2), "user deactivated").await;
}

#[tokio::test]
async fn the_maximum_lifetime_closes_the_websocket() {
    let (_up, gw) = start("  max_lifetime: 2s\n").await;
    let t = tok("s-ws-life", "user-life", &["viewer"]);
    let mut ws = open_ok(gw.addr, "/ws/echo", &t).await;
    let start = Instant::now();
    // Activity does not stretch a lifetime.
    let closed = loop {
        ws.send(Message::text("busy")).await.ok();
        match tokio::time::timeout(Duration::from_millis(250), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => break f,
            Ok(Some(Ok(_))) | Err(_) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not closed at the lifetime"
        );
    };
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (CloseCode::Policy, "session lifetime exceeded")
    );
    assert!(start.elapsed() >= Duration::from_millis(1500));
}

// ------------------------------------------------------------ redis

#[tokio::test]
async fn with_redis_a_session_ended_on_another_gateway_closes_the_websocket() {
    let redis = TestRedis::start();
    let store = format!(
        "  store: \"redis://127.0.0.1:{}\"\ndirectory: {{ issuer: \"{ISS_RSA}\" }}\n\
         relations: {{ active_conversation: {{ push: {{}} }} }}\n",
        redis.port
    );
    let (_up_a, a) = start(&store).await;
    let (_up_b, b) = start(&store).await;
    // Logout on B closes the socket on A.
    let t = tok("s-redis-logout", "user-redis", &["viewer"]);
    let mut ws = open_ok(a.addr, "/ws/echo", &t).await;
    echo(&mut ws, "on a").await;
    assert_eq!(
        req(b.addr, "GET", "/api/ping", Some(&t), &[]).await.status,
        200
    );
    assert_eq!(
        req(b.addr, "POST", "/.rolegate/logout", Some(&t), &[])
            .await
            .status,
        200
    );
    assert_closed(&mut ws, Duration::from_secs(2), "logged out").await;
    // Deactivation through B's admin API closes a socket on A.
    let d = tok("s-redis-deact", "user-redis-2", &["viewer"]);
    let mut ws = open_ok(a.addr, "/ws/echo", &d).await;
    assert_eq!(
        admin(&b, "/users/user-redis-2/deactivate").await.status,
        200
    );
    assert_closed(&mut ws, Duration::from_secs(2), "user deactivated").await;
    // A directory entry written through B closes the subject's socket on A.
    let e = tok("s-redis-dir", "user-redis-4", &["viewer"]);
    let mut ws = open_ok(a.addr, "/ws/echo", &e).await;
    let r = req_json(
        b.admin.unwrap(),
        "PUT",
        "/directory/users/user-redis-4",
        Some(ADMIN_TOKEN),
        r#"{"roles":["viewer"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_closed(&mut ws, Duration::from_secs(2), "user changed").await;
    // A relation tuple removed through B closes the socket it allowed on A.
    let tuple =
        json!({ "subject": "user-redis-5", "issuer": ISS_RSA, "object": "c-9" }).to_string();
    let r = req_json(
        b.admin.unwrap(),
        "POST",
        "/relations/active_conversation",
        Some(ADMIN_TOKEN),
        &tuple,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let c = tok("s-redis-rel", "user-redis-5", &[]);
    let mut ws = open_ok(a.addr, "/ws/conv/c-9", &c).await;
    echo(&mut ws, "in the conversation").await;
    let r = req_json(
        b.admin.unwrap(),
        "DELETE",
        "/relations/active_conversation",
        Some(ADMIN_TOKEN),
        &tuple,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_closed(&mut ws, Duration::from_secs(2), "relation removed").await;
    // Idle: a socket on A with a 1 s role, silent, is closed.
    let q = tok("s-redis-idle", "user-redis-3", &["viewer", "quick"]);
    let mut ws = open_ok(a.addr, "/ws/tick", &q).await;
    assert_closed(&mut ws, Duration::from_secs(4), "session idle timeout").await;
    // Also while its subject's tuples keep changing (each change wakes the
    // socket, for its subject alone): those wakes must not put off the
    // idle deadline.
    let q = tok("s-redis-idle-2", "user-redis-6", &["viewer", "quick"]);
    let mut ws = open_ok(a.addr, "/ws/tick", &q).await;
    // A's mirror forgets active sessions (its housekeeping does so every
    // 30 s): its deadline can no longer be read from there.
    let rolegate::session::Store::Redis(store) = a.gateway.store() else {
        unreachable!("a Redis store")
    };
    store.refresh_mirror().await;
    let admin_b = b.admin.unwrap();
    let churn = tokio::spawn(async move {
        for i in 0..40 {
            let t =
                json!({ "subject": "user-redis-6", "issuer": ISS_RSA, "object": format!("c-{i}") });
            req_json(
                admin_b,
                "POST",
                "/relations/active_conversation",
                Some(ADMIN_TOKEN),
                &t.to_string(),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    assert_closed(&mut ws, Duration::from_secs(4), "session idle timeout").await;
    churn.abort();
    // And the end is shared: B refuses the session too.
    let r = req(b.addr, "GET", "/api/ping", Some(&q), &[]).await;
    assert_eq!((r.status, r.error()), (401, "session_expired".to_string()));
}

// ------------------------------------------------------------ shutdown

/// SIGTERM to the real binary with a slow request and a websocket in
/// flight: the request is answered, the websocket is closed with 1001
/// (going away) both ways, new connections are refused, the process exits
/// 0 and the session it saw is in the journal.
#[tokio::test]
async fn sigterm_finishes_requests_and_closes_websockets_with_1001() {
    use std::io::{BufRead, BufReader};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = WsUpstream::start().await;
    // A slow HTTP upstream: answers each request a second after reading it.
    let slow = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap();
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = slow.accept().await {
            let got_tx = got_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                }
                let _ = got_tx.send(());
                tokio::time::sleep(Duration::from_secs(1)).await;
                let body = r#"{"slow":true}"#;
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    let dir = scratch_dir("ws-term");
    let port = free_port();
    let cfg = config(&dir, up.addr, slow_addr, "  state_dir: state\n").replacen(
        "listen: { addr: \"127.0.0.1:0\"",
        &format!("listen: {{ addr: \"127.0.0.1:{port}\""),
        1,
    ) + "shutdown: { drain_timeout: 10s }\n";
    std::fs::write(dir.join("rolegate.yaml"), cfg).unwrap();
    let mut child = Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_rolegate"))
            .args(["serve", "-c", "rolegate.yaml"])
            .current_dir(&dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = child.0.stdout.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    wait_listening(port).await;
    let gw: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t = tok("s-term", "u-term", &["viewer"]);
    let mut ws = open_ok(gw, "/ws/echo", &t).await;
    echo(&mut ws, "before").await;
    let t2 = t.clone();
    let in_flight = tokio::spawn(async move { req(gw, "GET", "/api/ping", Some(&t2), &[]).await });
    tokio::time::timeout(Duration::from_secs(10), got.recv())
        .await
        .expect("the slow request reached the upstream");

    let st = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());

    let (f, _) = closed_within(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(f.code, CloseCode::Away, "{f}");
    assert_eq!(f.reason.as_str(), "gateway shutting down");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["slow"], true);
    // The process ends by itself, successfully; nothing listens then.
    let mut status = None;
    for _ in 0..400 {
        if let Some(s) = child.0.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = status.expect("the gateway exited after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(gw).await.is_err());
    assert!(
        up.closes().iter().any(|(code, _)| *code == 1001),
        "{:?}",
        up.closes()
    );
    let journal = std::fs::read_to_string(dir.join("state").join("sessions.journal")).unwrap();
    assert!(journal.contains("s-term"), "{journal}");
    let log = log.lock().unwrap().join("\n");
    assert!(log.contains("shutting down"), "{log}");
}
