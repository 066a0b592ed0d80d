//! `listen` limits on the real gateway: target length (414), header count
//! (431), request receive timeouts (408), connection limits in total and
//! per client address (closed at accept, slots given back), keep-alive
//! idle timeouts (HTTP/1.1 and HTTP/2), slowloris heads, clients that stop
//! reading (send timeout), HTTP/2 stream
//! limit, and the per-IP and per-principal rate limits (429 + Retry-After).
//!
//! Timeouts are configured short (300 ms) and waited for with generous
//! deadlines; no test measures a duration.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::common::*;

/// A gateway whose `listen:` has `listen` (indented YAML lines) and whose
/// config ends with `extra`.
async fn gateway(up: SocketAddr, listen: &str, extra: &str) -> Gw {
    let dir = scratch_dir("limits");
    std::fs::write(dir.join("rules.yaml"), TEST_RULES).unwrap();
    let cfg = format!(
        "listen:\n  addr: \"127.0.0.1:0\"\n{listen}{}upstreams:\n  app: {{ url: \"http://{up}\", timeout: 5s }}\nrules: rules.yaml\n{extra}",
        identity_yaml()
    );
    start_with_config(&dir, &cfg).await
}

fn viewer_as(sub: &str) -> String {
    token_with(json!({ "roles": ["viewer"], "sub": sub, "sid": format!("sid-{sub}") }))
}

/// A JSON refusal with this status, error code and reason.
#[track_caller]
fn assert_refused(r: &Resp, status: u16, error: &str, reason: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["error"], error);
    assert_eq!(j["reason"], reason);
    assert!(j["request_id"].is_string());
}

/// Waits (at most 5 s) until the peer closes `s`; true if it did. Bytes
/// sent before the close are returned through `got`.
async fn closed_by_peer(s: &mut TcpStream, got: &mut Vec<u8>) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// One keep-alive request on an open connection; reads exactly one
/// response (bodies carry Content-Length here).
async fn keepalive_get(s: &mut TcpStream, target: &str) -> Resp {
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return parse_response(&buf[..end + 4 + len]);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A connection from `local` (another loopback address is another client).
async fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{local}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

/// Whether a new connection from `local` is served (a 200 for the public
/// status route) rather than closed at accept.
async fn served(local: &str, to: SocketAddr) -> bool {
    let mut s = connect_from(local, to).await;
    let req = b"GET /api/status HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
    if s.write_all(req).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answer or close in time");
    buf.starts_with(b"HTTP/1.1 200")
}

/// A new keep-alive connection from `local` that got a 200 for one request,
/// retried (slots are given back just after a client's close is seen).
async fn keepalive_conn(local: &str, to: SocketAddr) -> TcpStream {
    for _ in 0..100 {
        let mut s = connect_from(local, to).await;
        let req = b"GET /api/status HTTP/1.1\r\nHost: app.test\r\n\r\n";
        if s.write_all(req).await.is_ok() {
            let mut b = [0u8; 12];
            let read = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b))
                .await
                .expect("answer or close in time");
            if read.is_ok() {
                assert_eq!(&b, b"HTTP/1.1 200");
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no connection from {local} was served: a connection slot leaked");
}

/// Retries `served` until it is true (slots are given back when the
/// gateway's connection task ends, just after the client closes).
async fn eventually_served(local: &str, to: SocketAddr) {
    for _ in 0..100 {
        if served(local, to).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("a new connection from {local} was never served again: a connection slot leaked");
}

/// An upstream answering each request after `delay`.
async fn slow_upstream(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("{}"))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// An upstream that reads the whole request, then streams `parts` chunks
/// of its answer `gap` apart.
async fn dribbling_upstream(parts: usize, gap: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let (tx, rx) =
                        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                    tokio::spawn(async move {
                        for i in 0..parts {
                            tokio::time::sleep(gap).await;
                            let chunk = Bytes::from(format!("part-{i};"));
                            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                                return;
                            }
                        }
                    });
                    let body = StreamBody::new(tokio_stream_from(rx));
                    Ok::<_, Infallible>(hyper::Response::new(body))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// An mpsc receiver as a `Stream` (no tokio-stream dependency).
fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ------------------------------------------------------------ head limits

#[tokio::test]
async fn a_target_over_max_uri_bytes_is_414_json_and_never_forwarded() {
    let up = Upstream::start().await;
    let gw = gateway(up.addr, "  max_uri_bytes: 64\n", "").await;
    let base = "/api/status?q=";
    let at_limit = format!("{base}{}", "a".repeat(64 - base.len()));
    let over = format!("{at_limit}a");
    let r = req(gw.addr, "GET", &at_limit, None, &[]).await;
    assert_eq!(r.status, 200, "a target of exactly max_uri_bytes passes");
    let r = req(gw.addr, "GET", &over, None, &[]).await;
    assert_refused(
        &r,
        414,
        "uri_too_long",
        "request target exceeds the configured limit",
    );
    // Checked before routing and authentication.
    let r = req(
        gw.addr,
        "GET",
        &format!("/nowhere/{}", "x".repeat(80)),
        None,
        &[],
    )
    .await;
    assert_eq!((r.status, r.error().as_str()), (414, "uri_too_long"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn more_than_max_headers_is_431_json_and_never_forwarded() {
    let up = Upstream::start().await;
    let gw = gateway(up.addr, "  max_headers: 10\n", "").await;
    // `req` sends Host and Connection: 8 more make 10, 9 more make 11.
    let extra: Vec<String> = (0..9).map(|i| format!("X-Extra-{i}: v")).collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let r = req(gw.addr, "GET", "/api/status", None, &extra[..8]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = req(gw.addr, "GET", "/api/status", None, &extra).await;
    assert_refused(&r, 431, "too_many_headers", "too many header fields");
    assert_eq!(up.count(), 1);
}

// --------------------------------------------------------------- timeouts

#[tokio::test]
async fn a_body_that_never_starts_is_408_before_anything_goes_upstream() {
    let probe = BodyProbe::start().await;
    let gw = gateway(probe.addr, "  body_read_timeout: 300ms\n", "").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /files/a HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n",
        viewer_as("u-408a")
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    assert!(
        closed_by_peer(&mut s, &mut got).await,
        "connection held open"
    );
    let r = parse_response(&got);
    assert_refused(&r, 408, "request_timeout", "body_read_timeout");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        probe.seen.lock().unwrap().is_empty(),
        "the upstream was called"
    );
}

#[tokio::test]
async fn a_body_that_stalls_midway_is_408_and_the_upstream_never_gets_it_whole() {
    let probe = BodyProbe::start().await;
    let gw = gateway(probe.addr, "  body_read_timeout: 300ms\n", "").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /files/a HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n0123456789",
        viewer_as("u-408b")
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    assert!(
        closed_by_peer(&mut s, &mut got).await,
        "connection held open"
    );
    let r = parse_response(&got);
    assert_refused(&r, 408, "request_timeout", "body_read_timeout");
    // The upstream got the head and the first bytes, then an aborted body.
    for _ in 0..100 {
        if !probe.seen.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = probe.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].is_err(),
        "the upstream saw a complete body: {seen:?}"
    );
}

#[tokio::test]
async fn a_body_trickled_past_request_timeout_is_408() {
    let probe = BodyProbe::start().await;
    let gw = gateway(
        probe.addr,
        "  request_timeout: 400ms\n  body_read_timeout: 10s\n",
        "",
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /files/a HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {}\r\nContent-Length: 1000\r\n\r\n",
        viewer_as("u-408c")
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // One byte every 50 ms: never a gap of body_read_timeout, but the
    // whole body would take 50 s.
    let writer = tokio::spawn(async move {
        for _ in 0..1000 {
            if wr.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut got)).await;
    writer.abort();
    assert!(closed.is_ok(), "connection held open");
    let r = parse_response(&got);
    assert_refused(&r, 408, "request_timeout", "request_timeout");
    assert_eq!(probe.complete(), 0);
}

#[tokio::test]
async fn a_long_response_is_not_cut_by_the_request_timeouts() {
    // The answer takes about 1.2 s, four times both receive timeouts.
    let up = dribbling_upstream(6, Duration::from_millis(200)).await;
    let gw = gateway(
        up,
        "  request_timeout: 300ms\n  body_read_timeout: 300ms\n",
        "",
    )
    .await;
    let r = req_json(
        gw.addr,
        "POST",
        "/files/a",
        Some(&viewer_as("u-long")),
        "{\"a\":1}",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "part-0;part-1;part-2;part-3;part-4;part-5;"
    );
}

// ------------------------------------------------ idle and slow connections

#[tokio::test]
async fn an_idle_keepalive_connection_is_closed_by_the_gateway() {
    let up = Upstream::start().await;
    // header_read_timeout stays long: only keepalive_timeout can close it
    // within the wait below.
    let gw = gateway(
        up.addr,
        "  keepalive_timeout: 300ms\n  header_read_timeout: 30s\n",
        "",
    )
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // Requests keep it open...
    for _ in 0..3 {
        assert_eq!(keepalive_get(&mut s, "/api/status").await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...idleness closes it.
    let mut got = Vec::new();
    assert!(
        closed_by_peer(&mut s, &mut got).await,
        "idle keep-alive connection left open"
    );
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
}

/// An HTTP/2 client (prior knowledge) on a new connection to `addr`: its
/// request handle and the connection future, for the test to drive.
async fn h2c(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    hyper::client::conn::http2::Connection<TokioIo<TcpStream>, Full<Bytes>, TokioExecutor>,
) {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_with_goaway() {
    let up = Upstream::start().await;
    let gw = gateway(
        up.addr,
        "  h2c: true\n  keepalive_timeout: 300ms\n  header_read_timeout: 30s\n",
        "",
    )
    .await;
    let (mut send, conn) = h2c(gw.addr).await;
    let driver = tokio::spawn(conn);
    let req = http::Request::get("http://app.test/api/status")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    // The server ends the connection (GOAWAY, then close): the client's
    // connection task finishes on its own.
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(ended.is_ok(), "idle HTTP/2 connection left open");
}

#[tokio::test]
async fn a_slowloris_head_is_cut_by_header_read_timeout() {
    let up = Upstream::start().await;
    let gw = gateway(up.addr, "  header_read_timeout: 300ms\n", "").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /api/status HTTP/1.1\r\nHost: app.test\r\n")
        .await
        .unwrap();
    // One header line every 100 ms, never the end of the head.
    let trickle = async {
        for i in 0..100 {
            if s.write_all(format!("X-Slow-{i}: v\r\n").as_bytes())
                .await
                .is_err()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    let cut_while_writing = tokio::time::timeout(Duration::from_secs(5), trickle)
        .await
        .unwrap_or(false);
    let mut got = Vec::new();
    assert!(
        cut_while_writing || closed_by_peer(&mut s, &mut got).await,
        "a trickled head kept its connection"
    );
    assert_eq!(up.count(), 0);
}

/// An upstream streaming its answer without end, 64 KiB at a time, as
/// fast as it is taken; `ended` is set once the gateway dropped it.
async fn endless_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ended = std::sync::Arc::new(AtomicBool::new(false));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flag = ended.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let flag = flag.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: hyper::Request<Incoming>| {
                    let flag = flag.clone();
                    async move {
                        let (tx, rx) =
                            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                        tokio::spawn(async move {
                            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                            while tx.send(Ok(Frame::data(chunk.clone()))).await.is_ok() {}
                            flag.store(true, Ordering::Release);
                        });
                        let body = StreamBody::new(tokio_stream_from(rx));
                        Ok::<_, Infallible>(hyper::Response::new(body))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, ended)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_by_send_timeout_and_the_upstream_released() {
    use std::sync::atomic::Ordering;
    let (up, upstream_ended) = endless_upstream().await;
    let gw = gateway(up, "  send_timeout: 300ms\n", "").await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(gw.addr).await.unwrap();
    let token = viewer_as("u-stalled");
    s.write_all(
        format!(
            "GET /files/endless HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The client reads nothing: the buffers on the way fill, the gateway's
    // writes block, and after send_timeout it drops the exchange, which
    // ends the upstream's endless answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !upstream_ended.load(Ordering::Acquire) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream exchange of a client that stopped reading was kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the client's connection is closed: what was in flight, then the
    // end (the answer itself has no end).
    let mut got = Vec::new();
    assert!(
        closed_by_peer(&mut s, &mut got).await,
        "the stalled client's connection was left open"
    );
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
}

#[tokio::test]
async fn an_http2_stream_whose_window_the_client_keeps_shut_is_cut_by_send_timeout() {
    use std::sync::atomic::Ordering;
    let (up, upstream_ended) = endless_upstream().await;
    let gw = gateway(up, "  h2c: true\n  send_timeout: 300ms\n", "").await;
    let (mut send, conn) = h2c(gw.addr).await;
    // The client's connection task keeps reading the socket (so no write
    // of the gateway ever blocks), but the body is never read: hyper's
    // client gives no window back, and the stream stalls once the first
    // 64 KiB are in.
    let driver = tokio::spawn(conn);
    let req = http::Request::get("http://app.test/files/endless")
        .header(
            "authorization",
            format!("Bearer {}", viewer_as("u-h2-stalled")),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !upstream_ended.load(Ordering::Acquire) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream exchange of a stalled HTTP/2 stream was kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The whole connection was closed.
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(
        ended.is_ok(),
        "the stalled client's connection was left open"
    );
    drop(resp);
}

#[tokio::test]
async fn an_http2_answer_read_as_it_comes_is_not_cut_by_send_timeout() {
    // Pauses of 500 ms between parts, longer than send_timeout: waiting on
    // the upstream is not waiting on the client.
    let up = dribbling_upstream(4, Duration::from_millis(500)).await;
    let gw = gateway(up, "  h2c: true\n  send_timeout: 300ms\n", "").await;
    let (mut send, conn) = h2c(gw.addr).await;
    tokio::spawn(conn);
    let req = http::Request::get("http://app.test/files/slow")
        .header(
            "authorization",
            format!("Bearer {}", viewer_as("u-h2-slow")),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        "part-0;part-1;part-2;part-3;"
    );
}

#[tokio::test]
async fn an_answer_with_pauses_longer_than_send_timeout_is_not_cut() {
    // The upstream pauses 500 ms before each part: nothing is written to
    // the client for longer than send_timeout, but no write waits on it.
    let up = dribbling_upstream(4, Duration::from_millis(500)).await;
    let gw = gateway(up, "  send_timeout: 300ms\n", "").await;
    let r = req(
        gw.addr,
        "GET",
        "/files/slow",
        Some(&viewer_as("u-slow")),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "part-0;part-1;part-2;part-3;"
    );
}

// ------------------------------------------------------ connection limits

#[tokio::test]
async fn connections_over_max_connections_are_closed_at_accept_and_slots_come_back() {
    let up = Upstream::start().await;
    let gw = gateway(up.addr, "  max_connections: 3\n", "").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(keepalive_conn("127.0.0.1", gw.addr).await);
    }
    // The fourth, from any address, is closed without an answer.
    for local in ["127.0.0.1", "127.0.0.2"] {
        let mut s = connect_from(local, gw.addr).await;
        let _ = s
            .write_all(b"GET /api/status HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await;
        let mut got = Vec::new();
        assert!(
            closed_by_peer(&mut s, &mut got).await,
            "{local}: not closed"
        );
        assert!(
            got.is_empty(),
            "{local}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    // Closing one frees its slot; closing all frees all of them.
    open.pop();
    eventually_served("127.0.0.2", gw.addr).await;
    open.clear();
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(keepalive_conn("127.0.0.1", gw.addr).await);
    }
    assert!(!served("127.0.0.1", gw.addr).await, "the limit still holds");
}

#[tokio::test]
async fn connections_over_max_connections_per_ip_are_closed_for_that_client_only() {
    let up = Upstream::start().await;
    let gw = gateway(up.addr, "  max_connections_per_ip: 2\n", "").await;
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(keepalive_conn("127.0.0.1", gw.addr).await);
    }
    assert!(
        !served("127.0.0.1", gw.addr).await,
        "a third connection was served"
    );
    // Another client address is not affected.
    assert!(served("127.0.0.2", gw.addr).await);
    // Closing both gives the slots back.
    open.clear();
    let mut again = Vec::new();
    for _ in 0..2 {
        again.push(keepalive_conn("127.0.0.1", gw.addr).await);
    }
    assert!(!served("127.0.0.1", gw.addr).await, "the limit still holds");
}

// ----------------------------------------------------------------- HTTP/2

/// A raw HTTP/2 frame.
fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A GET as an HPACK block of literals without indexing (short values).
fn get_block(path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (k, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "app.test"),
        (":path", path),
    ] {
        block.push(0);
        block.push(k.len() as u8);
        block.extend_from_slice(k.as_bytes());
        block.push(v.len() as u8);
        block.extend_from_slice(v.as_bytes());
    }
    block
}

/// Reads frames until stream `id` ends: its answer complete (`Ok`, a
/// frame with END_STREAM) or reset (`Err(error code)`).
async fn stream_outcome<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    id: u32,
) -> Result<(), u32> {
    loop {
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let f: Vec<u8> = buf.drain(..9 + len).collect();
            let (ty, flags) = (f[3], f[4]);
            let sid = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
            if ty == 4 && flags & 1 == 0 {
                // Acknowledge the server's SETTINGS.
                s.write_all(&frame(4, 1, 0, &[])).await.unwrap();
            }
            if sid == id && (ty == 0 || ty == 1) && flags & 1 == 1 {
                return Ok(());
            }
            if sid == id && ty == 3 {
                return Err(u32::from_be_bytes([f[9], f[10], f[11], f[12]]));
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a frame in time")
            .unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn streams_over_max_concurrent_streams_are_refused() {
    // The upstream holds every answer for a second: the first two streams
    // are still open when the third arrives.
    let up = slow_upstream(Duration::from_secs(1)).await;
    let gw = gateway(up, "  h2c: true\n  max_concurrent_streams: 2\n", "").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&frame(4, 0, 0, &[])).await.unwrap();
    let mut buf = Vec::new();
    // A first stream, answered and closed: SETTINGS exchanged and
    // acknowledged.
    s.write_all(&frame(1, 0x5, 1, &get_block("/api/status")))
        .await
        .unwrap();
    assert_eq!(stream_outcome(&mut s, &mut buf, 1).await, Ok(()));
    let mut all = Vec::new();
    for id in [3u32, 5, 7] {
        all.extend(frame(1, 0x5, id, &get_block("/api/status")));
    }
    s.write_all(&all).await.unwrap();
    // 7 is the third open stream: refused (REFUSED_STREAM = 0x7).
    assert_eq!(stream_outcome(&mut s, &mut buf, 7).await, Err(0x7));
    assert_eq!(stream_outcome(&mut s, &mut buf, 3).await, Ok(()));
    assert_eq!(stream_outcome(&mut s, &mut buf, 5).await, Ok(()));
}

/// An upstream that holds every answer until `release` turns true;
/// `arrived` counts the requests it holds.
async fn held_upstream() -> (
    SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::sync::watch::Sender<bool>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrived = std::sync::Arc::new(AtomicUsize::new(0));
    let (release, rx) = tokio::sync::watch::channel(false);
    let count = arrived.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (count, rx) = (count.clone(), rx.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req: hyper::Request<Incoming>| {
                    let (count, mut rx) = (count.clone(), rx.clone());
                    async move {
                        count.fetch_add(1, SeqCst);
                        let _ = rx.wait_for(|go| *go).await;
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("{}"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, arrived, release)
}

#[tokio::test]
async fn http2_streams_over_max_streams_per_ip_across_connections_are_429() {
    use std::sync::atomic::Ordering::SeqCst;
    let (up, arrived, release) = held_upstream().await;
    let gw = gateway(up, "  h2c: true\n  max_streams_per_ip: 3\n", "").await;
    let t = viewer_as("u-streams");
    let h2_from = |local: &'static str| async move {
        let io = TokioIo::new(connect_from(local, gw.addr).await);
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    };
    let get = |mut send: hyper::client::conn::http2::SendRequest<Full<Bytes>>, t: String| async move {
        let req = http::Request::get("http://app.test/bots/1/flows")
            .header("authorization", format!("Bearer {t}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, retry, body)
    };
    let (a, b) = (h2_from("127.0.0.1").await, h2_from("127.0.0.1").await);
    // Three streams held upstream, over two connections of one client.
    let held = vec![
        tokio::spawn(get(a.clone(), t.clone())),
        tokio::spawn(get(a.clone(), t.clone())),
        tokio::spawn(get(b.clone(), t.clone())),
    ];
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    while arrived.load(SeqCst) < 3 {
        assert!(std::time::Instant::now() < give_up, "streams never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A fourth, on either connection, is refused before authentication
    // (no token: 429, not 401) or anything upstream.
    let (status, retry, body) =
        tokio::time::timeout(Duration::from_secs(10), get(b.clone(), String::new()))
            .await
            .expect("the fourth stream was held (forwarded) instead of refused");
    assert_eq!((status, retry.as_deref()), (429, Some("1")));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "rate_limited");
    assert_eq!(json["reason"], "max_streams_per_ip");
    // Another client address is not affected.
    let other = tokio::spawn(get(h2_from("127.0.0.2").await, t.clone()));
    while arrived.load(SeqCst) < 4 {
        assert!(
            std::time::Instant::now() < give_up,
            "the other client's stream never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        arrived.load(SeqCst),
        4,
        "the refused stream never went upstream"
    );
    release.send(true).unwrap();
    for h in held {
        assert_eq!(h.await.unwrap().0, 200);
    }
    assert_eq!(other.await.unwrap().0, 200);
    // Every place comes back as the answers end, the refused one's too:
    // three held at once again.
    release.send(false).unwrap();
    let before = arrived.load(SeqCst);
    let again: Vec<_> = (0..3)
        .map(|i| tokio::spawn(get(if i == 0 { b.clone() } else { a.clone() }, t.clone())))
        .collect();
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    while arrived.load(SeqCst) < before + 3 {
        assert!(
            std::time::Instant::now() < give_up,
            "places were not given back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release.send(true).unwrap();
    for h in again {
        assert_eq!(h.await.unwrap().0, 200);
    }
}

// ------------------------------------------------------------ rate limits

#[tokio::test]
async fn the_per_ip_rate_limit_is_429_with_retry_after_before_authentication() {
    let up = Upstream::start().await;
    let gw = gateway(
        up.addr,
        "  rate_limit:\n    per_ip: { rate: 1/m, burst: 2 }\n",
        "",
    )
    .await;
    let addr = gw.addr;
    let send = move |local: &'static str, token: Option<String>| async move {
        let mut s = connect_from(local, addr).await;
        let mut r =
            "GET /bots/1/flows HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n".to_string();
        if let Some(t) = token {
            r.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        r.push_str("\r\n");
        s.write_all(r.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        parse_response(&buf)
    };
    let t = viewer_as("u-ip");
    assert_eq!(send("127.0.0.1", Some(t.clone())).await.status, 200);
    // A refused request spends a token too (no credentials: 401).
    assert_eq!(send("127.0.0.1", None).await.status, 401);
    for token in [Some(t.clone()), None] {
        let r = send("127.0.0.1", token).await;
        assert_refused(&r, 429, "rate_limited", "per_ip");
        let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&after), "Retry-After {after}");
    }
    // Checked first of all: a target over `max_uri_bytes` from the empty
    // bucket is 429 too, not 414.
    let mut s = connect_from("127.0.0.1", addr).await;
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        "a".repeat(9000)
    );
    s.write_all(long.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_refused(&parse_response(&buf), 429, "rate_limited", "per_ip");
    // Another client address has its own bucket.
    assert_eq!(send("127.0.0.2", Some(t)).await.status, 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn the_per_principal_rate_limit_is_429_per_issuer_and_subject() {
    let up = Upstream::start().await;
    let gw = gateway(
        up.addr,
        "  rate_limit:\n    per_principal: { rate: 2/h, burst: 2 }\n",
        "",
    )
    .await;
    let a = viewer_as("u-rate-a");
    for _ in 0..2 {
        assert_eq!(
            req(gw.addr, "GET", "/bots/1/flows", Some(&a), &[])
                .await
                .status,
            200
        );
    }
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&a), &[]).await;
    assert_refused(&r, 429, "rate_limited", "per_principal");
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=1800).contains(&after), "Retry-After {after}");
    // Another subject, anonymous requests and bad tokens are not counted
    // against this principal (a bad token is a 401, never a 429).
    let b = viewer_as("u-rate-b");
    assert_eq!(
        req(gw.addr, "GET", "/bots/1/flows", Some(&b), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        req(gw.addr, "GET", "/api/status", None, &[]).await.status,
        200
    );
    let r = req(gw.addr, "GET", "/bots/1/flows", Some("not.a.token"), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(up.count(), 4);
    // Logouts spend the principal's bucket too (each costs store work).
    let c = viewer_as("u-rate-c");
    for _ in 0..2 {
        let r = req(gw.addr, "POST", "/.rolegate/logout", Some(&c), &[]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let r = req(gw.addr, "POST", "/.rolegate/logout", Some(&c), &[]).await;
    assert_refused(&r, 429, "rate_limited", "per_principal");
}

// ------------------------------------------------------ the admin listener

/// The admin listener has its own guards: a silent or trickled head is
/// cut by `listen.header_read_timeout`, and at most
/// `rolegate::admin::MAX_CONNECTIONS` connections are open at once (more
/// are closed at accept; slots come back when connections end).
#[tokio::test]
async fn the_admin_listener_cuts_slow_heads_and_caps_its_connections() {
    let up = Upstream::start().await;
    let dir = scratch_dir("limits-admin");
    std::fs::write(
        dir.join("admin.token"),
        "admin-token-for-limit-tests-0123456",
    )
    .unwrap();
    std::fs::write(dir.join("rules.yaml"), TEST_RULES).unwrap();
    let cfg = format!(
        "listen:\n  addr: \"127.0.0.1:0\"\n  header_read_timeout: 2s\n{}upstreams:\n  app: {{ url: \"http://{}\", timeout: 5s }}\nadmin: {{ addr: \"127.0.0.1:0\", token_file: admin.token }}\nrules: rules.yaml\n",
        identity_yaml(),
        up.addr
    );
    let gw = start_with_config(&dir, &cfg).await;
    let admin = gw.admin.unwrap();

    // Slowloris on the admin port: cut.
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    assert!(
        closed_by_peer(&mut s, &mut got).await,
        "a silent admin head kept its connection"
    );

    // One address fills its own slots with unfinished heads (the caps are
    // checked at once, before the head timeout ends them): its next
    // connection is closed, another address's is served.
    let per_ip = rolegate::admin::MAX_CONNECTIONS_PER_IP;
    let mut held = Vec::new();
    for _ in 0..per_ip {
        let mut c = connect_from("127.0.0.1", admin).await;
        c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_closed_unanswered(
        connect_from("127.0.0.1", admin).await,
        "over the per-address cap",
    )
    .await;
    assert_eq!(
        try_get_from("127.0.0.2", admin, "/healthz").await,
        Some(200)
    );
    // Every address together: the total cap.
    let total = rolegate::admin::MAX_CONNECTIONS;
    for i in 0..total - per_ip {
        let local = format!("127.0.0.{}", 2 + i / per_ip);
        let mut c = connect_from(&local, admin).await;
        c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_closed_unanswered(
        connect_from("127.0.0.99", admin).await,
        "over the total cap",
    )
    .await;
    // Once they are gone (closed by the head timeout), the admin API answers again.
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = tokio::time::timeout(Duration::from_secs(1), try_get(admin, "/healthz")).await;
        if let Ok(Some(200)) = r {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the admin API did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a request on `s` and expects the connection closed without an
/// answer.
async fn assert_closed_unanswered(mut s: TcpStream, what: &str) {
    let _ = s
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await;
    let mut got = Vec::new();
    assert!(closed_by_peer(&mut s, &mut got).await, "{what}: not closed");
    assert!(
        got.is_empty(),
        "{what}: answered {:?}",
        String::from_utf8_lossy(&got)
    );
}

/// `GET target` on a fresh connection: the status, or `None` if the
/// connection closed without one.
async fn try_get(addr: SocketAddr, target: &str) -> Option<u16> {
    try_get_from("127.0.0.1", addr, target).await
}

/// `try_get` from the local address `local`.
async fn try_get_from(local: &str, addr: SocketAddr, target: &str) -> Option<u16> {
    let mut s = connect_from(local, addr).await;
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let line = String::from_utf8_lossy(&buf);
    line.split(' ').nth(1)?.parse().ok()
}

/// A slow but steady upload is bounded by the client-side timeouts
/// (`body_read_timeout`, `request_timeout`), not by the upstream's
/// response timeout, which counts from the request's last byte: the upload
/// goes through, and the server is never blamed for the client's pace.
#[tokio::test]
async fn a_slow_upload_is_not_an_upstream_timeout() {
    let probe = BodyProbe::start().await;
    let dir = scratch_dir("limits-upload");
    std::fs::write(dir.join("rules.yaml"), TEST_RULES).unwrap();
    let cfg = format!(
        "listen:\n  addr: \"127.0.0.1:0\"\n  body_read_timeout: 2s\n{}upstreams:\n  app: {{ url: \"http://{}\", timeout: 300ms, health: {{ failures: 1, eject_for: 60s }} }}\nrules: rules.yaml\n",
        identity_yaml(),
        probe.addr
    );
    let gw = start_with_config(&dir, &cfg).await;
    for round in 0..2 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST /files/a HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {}\r\nContent-Length: 4\r\nConnection: close\r\n\r\n",
            viewer_as("u-upload")
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // One byte every 200 ms: 800 ms in all, well past the upstream's
        // 300 ms, each gap well within body_read_timeout.
        for b in b"abcd" {
            tokio::time::sleep(Duration::from_millis(200)).await;
            s.write_all(&[*b]).await.unwrap();
        }
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let r = parse_response(&got);
        assert_eq!(
            r.status,
            200,
            "round {round}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(*probe.seen.lock().unwrap(), vec![Ok(4), Ok(4)]);
}
