//! Upstream pools, health and faults: several servers behind one upstream
//! name (balancing, passive ejection and recovery, active checks, all
//! down), the keep-alive race retry, and upstreams that break in every
//! way a raw TCP server can (reset mid-body, malformed head, silence,
//! a body that stalls). Every server is real and on loopback; no test
//! measures time, each waits for a condition with a generous deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::common::*;

/// How long a condition may take before a test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds, or fails the test after [`DEADLINE`].
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(tokio::time::Instant::now() < give_up, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ------------------------------------------------------------- backends

/// What a backend knows and is told.
#[derive(Default)]
struct State {
    /// Requests other than health checks.
    hits: AtomicUsize,
    /// Health checks received.
    checks: AtomicUsize,
    /// Health checks answer 503 while set.
    sick: AtomicBool,
    /// `/p/slow` requests received (they wait for `release`).
    slow: AtomicUsize,
    release: tokio::sync::Notify,
}

/// A real hyper server that names itself in every answer, can hold a
/// request, fail its health check, die (listener and every connection)
/// and come back on the same port.
struct Backend {
    name: &'static str,
    addr: SocketAddr,
    state: Arc<State>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let task = Some(tokio::spawn(serve(name, listener, state.clone())));
        Backend {
            name,
            addr,
            state,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.state.hits.load(SeqCst)
    }

    fn checks(&self) -> usize {
        self.state.checks.load(SeqCst)
    }

    /// Closes the listener and every open connection.
    async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens on the same port again.
    async fn revive(&mut self) {
        let give_up = tokio::time::Instant::now() + DEADLINE;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < give_up, "rebind: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.task = Some(tokio::spawn(serve(self.name, listener, self.state.clone())));
    }
}

/// The accept loop; connections live in a `JoinSet` so that aborting the
/// loop closes them too.
async fn serve(name: &'static str, listener: TcpListener, state: Arc<State>) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                let state = state.clone();
                async move {
                    let path = req.uri().path().to_string();
                    let status = if path == "/health" {
                        state.checks.fetch_add(1, SeqCst);
                        if state.sick.load(SeqCst) { 503 } else { 200 }
                    } else {
                        state.hits.fetch_add(1, SeqCst);
                        if path == "/p/slow" {
                            let released = state.release.notified();
                            state.slow.fetch_add(1, SeqCst);
                            released.await;
                        }
                        200
                    };
                    // Relation questions (`relations.NAME.pull`) are answered yes.
                    let body = json!({ "server": name, "path": path, "allowed": true }).to_string();
                    let resp = hyper::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A gateway with one upstream `app` (the YAML body of `upstreams.app`)
/// and one public route for `/p/**`.
async fn gateway(app: &str) -> Gw {
    let dir = scratch_dir("pools");
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\nupstreams:\n  app:\n{app}\nroutes:\n  - {{ name: all, match: {{ path: \"/p/**\" }}, public: true }}\n"
    );
    start_with_config(&dir, &cfg).await
}

fn servers(backends: &[&Backend]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"http://{}\"", b.addr))
        .collect();
    format!("    servers: [{}]\n", list.join(", "))
}

/// `GET path`; the status and the name of the server that answered.
async fn get(gw: &Gw, path: &str) -> (u16, String) {
    let r = req(gw.addr, "GET", path, None, &[]).await;
    let server = match r.status {
        200 => r.json()["server"].as_str().unwrap_or_default().to_string(),
        _ => r.error(),
    };
    (r.status, server)
}

// ------------------------------------------------------------ balancing

#[tokio::test]
async fn round_robin_spreads_requests_over_both_servers() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = gateway(&servers(&[&a, &b])).await;
    for _ in 0..10 {
        assert_eq!(get(&gw, "/p/x").await.0, 200);
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));
}

#[tokio::test]
async fn least_outstanding_sends_to_the_idle_server_while_the_other_is_busy() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = gateway(&format!(
        "{}    balance: least_outstanding\n",
        servers(&[&a, &b])
    ))
    .await;
    let addr = gw.addr;
    let slow = tokio::spawn(async move { req(addr, "GET", "/p/slow", None, &[]).await });
    wait_for("the slow request reached a server", || {
        a.state.slow.load(SeqCst) + b.state.slow.load(SeqCst) == 1
    })
    .await;
    let (busy, idle) = if a.state.slow.load(SeqCst) == 1 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    for _ in 0..6 {
        assert_eq!(get(&gw, "/p/fast").await, (200, idle.name.to_string()));
    }
    assert_eq!(busy.hits(), 1, "only the slow request");
    busy.state.release.notify_one();
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["server"], busy.name);
}

#[tokio::test]
async fn max_requests_in_flight_over_all_servers_answers_503_upstream_busy() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = gateway(&format!("{}    max_requests: 2\n", servers(&[&a, &b]))).await;
    let addr = gw.addr;
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { req(addr, "GET", "/p/slow", None, &[]).await }))
        .collect();
    let held = || a.state.slow.load(SeqCst) + b.state.slow.load(SeqCst);
    wait_for("both slow requests reached a server", || held() == 2).await;
    let hits = a.hits() + b.hits();
    let r = req(gw.addr, "GET", "/p/fast", None, &[]).await;
    assert_eq!((r.status, r.error()), (503, "upstream_busy".to_string()));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.json()["request_id"].is_string());
    assert_eq!(a.hits() + b.hits(), hits, "nothing was sent upstream");
    for s in [&a, &b] {
        for _ in 0..s.state.slow.load(SeqCst) {
            s.state.release.notify_one();
        }
    }
    for t in slow {
        assert_eq!(t.await.unwrap().status, 200);
    }
    // Slots come back as the answers end.
    assert_eq!(get(&gw, "/p/fast").await.0, 200);
}

// --------------------------------------------------------------- health

#[tokio::test]
async fn a_dead_server_is_ejected_then_used_again_after_the_back_off() {
    let (mut a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = gateway(&format!(
        "{}    health: {{ failures: 2, eject_for: 3s, max_eject_for: 3s }}\n",
        servers(&[&a, &b])
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(get(&gw, "/p/x").await.0, 200);
    }
    assert_eq!((a.hits(), b.hits()), (1, 1));
    a.kill().await;

    // Until `a` has failed twice, every other request is a 502.
    let mut errors = 0;
    let mut sent = 0;
    while errors < 2 {
        sent += 1;
        assert!(sent <= 10, "a was never ejected");
        match get(&gw, "/p/x").await {
            (200, s) => assert_eq!(s, "b"),
            (502, e) => {
                assert_eq!(e, "upstream_unavailable");
                errors += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Ejected: no further errors, everything on `b`.
    let on_b = b.hits();
    for _ in 0..10 {
        assert_eq!(get(&gw, "/p/x").await, (200, "b".to_string()));
    }
    assert_eq!(b.hits(), on_b + 10);

    // Back on its port: used again once the back-off is over.
    a.revive().await;
    let give_up = tokio::time::Instant::now() + DEADLINE;
    while a.hits() == 1 {
        assert!(tokio::time::Instant::now() < give_up, "a never used again");
        let (status, _) = get(&gw, "/p/x").await;
        assert_eq!(status, 200, "no error while a is ejected or back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const CHECKED: &str = "    health: { check: { path: /health, interval: 50ms, timeout: 1s } }\n";

/// Waits until `b` answered two more checks than `since`: the first of
/// them has been acted on (a round starts after the previous one ended).
async fn two_more_checks(b: &Backend, since: usize) {
    wait_for(&format!("two more checks of {}", b.name), || {
        b.checks() >= since + 2
    })
    .await;
}

#[tokio::test]
async fn the_active_check_marks_a_server_down_and_up_again() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = gateway(&format!("{}{CHECKED}", servers(&[&a, &b]))).await;

    a.state.sick.store(true, SeqCst);
    two_more_checks(&a, a.checks()).await;
    for _ in 0..6 {
        assert_eq!(get(&gw, "/p/x").await, (200, "b".to_string()));
    }
    assert_eq!(a.hits(), 0);

    a.state.sick.store(false, SeqCst);
    two_more_checks(&a, a.checks()).await;
    for _ in 0..4 {
        assert_eq!(get(&gw, "/p/x").await.0, 200);
    }
    assert_eq!(a.hits(), 2, "a takes its turns again");
}

#[tokio::test]
async fn every_server_down_is_an_immediate_503_and_nothing_is_sent() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    a.state.sick.store(true, SeqCst);
    b.state.sick.store(true, SeqCst);
    let gw = gateway(&format!("{}{CHECKED}", servers(&[&a, &b]))).await;
    two_more_checks(&a, 0).await;
    two_more_checks(&b, 0).await;
    let r = req(gw.addr, "GET", "/p/x", None, &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.error(), "no_healthy_upstream");
    assert!(r.json()["request_id"].is_string());
    assert_eq!((a.hits(), b.hits()), (0, 0));

    // One passing check is enough to be used again.
    b.state.sick.store(false, SeqCst);
    two_more_checks(&b, b.checks()).await;
    assert_eq!(get(&gw, "/p/x").await, (200, "b".to_string()));
}

#[tokio::test]
async fn relations_are_pulled_through_the_same_servers_and_health() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dir = scratch_dir("pools-relations");
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{identity}upstreams:\n  app:\n{servers}{CHECKED}relations:\n  member:\n    pull: {{ upstream: app, path: /rel/member, cache_ttl: 0s, negative_ttl: 0s }}\nroutes:\n  - {{ name: team, match: {{ path: \"/p/{{team}}\" }}, require: \"relation:member({{team}})\" }}\n",
        identity = identity_yaml(),
        servers = servers(&[&a, &b]),
    );
    let gw = start_with_config(&dir, &cfg).await;
    let t = token_with(json!({ "sub": "u1", "sid": "s-u1" }));
    // Each request is one pull and one forward, both balanced: 8 calls.
    for _ in 0..4 {
        let r = req(gw.addr, "GET", "/p/t1", Some(&t), &[]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!((a.hits(), b.hits()), (4, 4));

    // Every server down: the relation is unknown (fail closed), and the
    // question is not even sent.
    a.state.sick.store(true, SeqCst);
    b.state.sick.store(true, SeqCst);
    two_more_checks(&a, a.checks()).await;
    two_more_checks(&b, b.checks()).await;
    let r = req(gw.addr, "GET", "/p/t1", Some(&t), &[]).await;
    assert_eq!((r.status, r.error().as_str()), (403, "forbidden"));
    assert_eq!((a.hits(), b.hits()), (4, 4));
}

// ------------------------------------------------------------- raw TCP

/// A raw TCP upstream: `conn(stream, n)` serves its `n`th connection.
async fn raw_upstream<F, Fut>(conn: F) -> SocketAddr
where
    F: Fn(TcpStream, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for n in 0.. {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(conn(s, n));
        }
    });
    addr
}

/// Reads one request (head and `Content-Length` body) from `s`; its
/// method, or `None` at the end of the connection.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.trim().parse().unwrap());
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..end + 4 + len);
            return head.split(' ').next().map(str::to_string);
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Waits until the peer closed `s` (the gateway let go of the connection).
async fn closed_by_peer(mut s: TcpStream, closed: Arc<AtomicBool>) {
    let mut sink = [0u8; 1024];
    loop {
        match s.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    closed.store(true, SeqCst);
}

/// Reads everything the gateway sends until it closes (or resets) the
/// connection; fails the test if it never does.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the gateway hung instead of ending the response");
    out
}

async fn send_raw(gw: &Gw, request: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_until_closed(&mut s).await
}

fn raw_gateway(addr: SocketAddr, extra: &str) -> String {
    format!("    url: \"http://{addr}\"\n    timeout: 2s\n{extra}")
}

/// An upstream that answers the first request of each connection and keeps
/// it alive, then closes the connection when the next request arrives on
/// it, without an answer: what the gateway sees when the upstream closes
/// an idle connection just as a request goes out on it.
async fn closing_upstream() -> (SocketAddr, Arc<Mutex<Vec<(String, bool)>>>) {
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let log = seen.clone();
    let addr = raw_upstream(move |mut s, _| {
        let log = log.clone();
        async move {
            let mut buf = Vec::new();
            let Some(method) = read_request(&mut s, &mut buf).await else {
                return;
            };
            log.lock().unwrap().push((method, true));
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok",
                )
                .await;
            if let Some(method) = read_request(&mut s, &mut buf).await {
                log.lock().unwrap().push((method, false));
            }
            // Dropped: closed with no answer.
        }
    })
    .await;
    (addr, seen)
}

#[tokio::test]
async fn a_get_on_a_connection_the_upstream_just_closed_is_retried_once() {
    let (addr, seen) = closing_upstream().await;
    let gw = gateway(&raw_gateway(addr, "")).await;
    for i in 0..6 {
        let r = req(gw.addr, "GET", "/p/x", None, &[]).await;
        assert_eq!(
            r.status,
            200,
            "GET {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.body, b"ok");
    }
    let seen = seen.lock().unwrap();
    let dropped = seen.iter().filter(|(_, answered)| !answered).count();
    assert!(
        dropped >= 1,
        "no request went out on a kept-alive connection"
    );
    // Each dropped GET was sent once more, and answered.
    assert_eq!(seen.iter().filter(|(_, answered)| *answered).count(), 6);
    assert_eq!(seen.len(), 6 + dropped);
}

#[tokio::test]
async fn a_post_on_a_connection_the_upstream_just_closed_is_not_retried() {
    let (addr, seen) = closing_upstream().await;
    let gw = gateway(&raw_gateway(addr, "")).await;
    let mut failed = 0;
    for _ in 0..6 {
        assert_eq!(req(gw.addr, "GET", "/p/x", None, &[]).await.status, 200);
        let r = req_json(gw.addr, "POST", "/p/x", None, "{\"n\":1}").await;
        match r.status {
            200 => {}
            502 => {
                assert_eq!(r.error(), "upstream_failed");
                failed += 1;
            }
            s => panic!("POST answered {s}"),
        }
    }
    let seen = seen.lock().unwrap();
    let posts: Vec<bool> = seen
        .iter()
        .filter(|(m, _)| m == "POST")
        .map(|(_, answered)| *answered)
        .collect();
    assert_eq!(
        posts.len(),
        6,
        "every POST reached the upstream exactly once"
    );
    let dropped = posts.iter().filter(|a| !**a).count();
    assert!(dropped >= 1, "no POST went out on a kept-alive connection");
    assert_eq!(failed, dropped, "each dropped POST is a 502, never resent");
}

#[tokio::test]
async fn an_upstream_reset_mid_body_cuts_the_response() {
    let addr = raw_upstream(|mut s, _| async move {
        let mut buf = Vec::new();
        if read_request(&mut s, &mut buf).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                .await;
            let _ = s.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            // RST instead of FIN (a zero linger does not block on drop).
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
        }
    })
    .await;
    let gw = gateway(&raw_gateway(addr, "")).await;
    for _ in 0..2 {
        let got = send_raw(
            &gw,
            "GET /p/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        let text = String::from_utf8_lossy(&got);
        let end = text.find("\r\n\r\n").expect("a head");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            text[..end]
                .to_ascii_lowercase()
                .contains("content-length: 100")
        );
        assert!(
            got.len() - (end + 4) < 100,
            "the cut body was not passed off as complete"
        );
    }
}

#[tokio::test]
async fn a_malformed_response_head_is_502() {
    let addr = raw_upstream(|mut s, _| async move {
        let mut buf = Vec::new();
        if read_request(&mut s, &mut buf).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.1 2OO Fine\r\nbroken header\r\n\r\n")
                .await;
            let _ = read_request(&mut s, &mut buf).await;
        }
    })
    .await;
    let gw = gateway(&raw_gateway(addr, "")).await;
    for _ in 0..2 {
        let r = req(gw.addr, "GET", "/p/x", None, &[]).await;
        assert_eq!((r.status, r.error().as_str()), (502, "upstream_failed"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_504_and_its_connection_is_dropped() {
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    let addr = raw_upstream(move |mut s, _| {
        let flag = flag.clone();
        async move {
            let mut buf = Vec::new();
            if read_request(&mut s, &mut buf).await.is_some() {
                closed_by_peer(s, flag).await;
            }
        }
    })
    .await;
    let gw = gateway(&format!("    url: \"http://{addr}\"\n    timeout: 300ms\n")).await;
    let r = req(gw.addr, "GET", "/p/x", None, &[]).await;
    assert_eq!((r.status, r.error().as_str()), (504, "upstream_timeout"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    wait_for("the gateway closed the silent connection", || {
        closed.load(SeqCst)
    })
    .await;
}

#[tokio::test]
async fn a_body_that_stalls_past_body_idle_timeout_is_cut_and_its_connection_dropped() {
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    let addr = raw_upstream(move |mut s, _| {
        let flag = flag.clone();
        async move {
            let mut buf = Vec::new();
            if read_request(&mut s, &mut buf).await.is_some() {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
                    .await;
                closed_by_peer(s, flag).await;
            }
        }
    })
    .await;
    let gw = gateway(&raw_gateway(addr, "    body_idle_timeout: 300ms\n")).await;
    let got = send_raw(
        &gw,
        "GET /p/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("hello"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the stalled body was ended as if complete: {text:?}"
    );
    wait_for("the gateway closed the stalled connection", || {
        closed.load(SeqCst)
    })
    .await;
}
