//! Malformed requests, byte for byte: method case, fragments, ambiguous
//! body framing (request smuggling), broken chunked bodies, missing Host,
//! and heads the HTTP library refuses itself. Every refusal the gateway
//! sees is a JSON 400 and never reaches the upstream.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

fn editor() -> String {
    token_with(json!({ "roles": ["editor", "partner-admin"], "partners": ["acme"] }))
}

/// A JSON 400 `bad_request` whose reason is (or names) `reason`.
#[track_caller]
fn assert_bad_request(r: &Resp, reason: &str, what: &str) {
    assert_eq!(
        r.status,
        400,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
    let j = r.json();
    assert_eq!(j["error"], "bad_request", "{what}");
    let got = j["reason"].as_str().unwrap_or_default();
    assert!(
        got.contains(reason),
        "{what}: reason {got:?}, want {reason:?}"
    );
    assert!(j["request_id"].is_string(), "{what}");
}

// ------------------------------------------------------------------ methods

#[tokio::test]
async fn standard_methods_in_another_case_are_refused_before_routing() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let t = editor();
    // GET/PUT routes, an any-method route, a public route.
    let cases = [
        ("get", "/bots/1/flows"),
        ("Get", "/bots/1/flows"),
        ("heAD", "/bots/1/flows"),
        ("put", "/bots/1/flows"),
        ("pOST", "/bots/1/flows"),
        ("get", "/partners/acme/users"),
        ("delete", "/partners/acme/users"),
        ("Patch", "/partners/acme/users"),
        ("options", "/partners/acme/users"),
        ("trace", "/partners/acme/users"),
        ("get", "/api/status"),
        ("get", "/nowhere"),
    ];
    for (method, path) in cases {
        let r = req(gw.addr, method, path, Some(&t), &[]).await;
        assert_bad_request(&r, "method_case", &format!("{method} {path}"));
        assert_eq!(r.json()["reason"], "method_case");
    }
    assert_eq!(up.count(), 0, "a case-folded method reached the upstream");

    // Exact methods still work; a method no route lists is 404, and an
    // extension method on an any-method route is forwarded as sent.
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&t), &[]).await;
    assert_eq!(r.status, 200);
    let r = req(gw.addr, "PURGE", "/bots/1/flows", Some(&t), &[]).await;
    assert_eq!((r.status, r.error().as_str()), (404, "no_route"));
    let r = req(gw.addr, "propfind", "/partners/acme/users", Some(&t), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().method, "propfind");
    assert_eq!(up.count(), 2);
}

// ---------------------------------------------------------------- fragments

#[tokio::test]
async fn fragments_in_the_request_target_are_refused() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let t = editor();
    for target in [
        "/bots/1/flows#frag",
        "/bots/1/flows#",
        "/bots/1/flows?x=1#f",
        "/bots/1/flows#f?x=1",
        "/api/status#x",
        "/bots/1/publish#/../flows",
    ] {
        let r = req(gw.addr, "GET", target, Some(&t), &[]).await;
        assert_bad_request(&r, "fragment", target);
    }
    // Absolute form too.
    let r = raw(
        gw.addr,
        format!("GET http://app.test/bots/1/flows?x=1#f HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_bad_request(&r, "fragment", "absolute form");
    assert_eq!(
        up.count(),
        0,
        "a target with a fragment reached the upstream"
    );
    // `#` encoded is data, not a fragment.
    let r = req(gw.addr, "GET", "/files/a%23b", Some(&t), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/files/a%23b");
}

// ------------------------------------------------------------------ framing

/// The framing attack table: each head, with a body that is valid for its
/// chunked reading and a smuggled request behind it.
const AMBIGUOUS: &[(&str, &str)] = &[
    (
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "content_length_and_transfer_encoding",
    ),
    (
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
        "content_length_and_transfer_encoding",
    ),
    (
        "Content-Length: 0\r\nTransfer-Encoding: chunked",
        "content_length_and_transfer_encoding",
    ),
    ("Transfer-Encoding: gzip, chunked", "transfer_encoding"),
    ("Transfer-Encoding: chunked, chunked", "transfer_encoding"),
    ("Transfer-Encoding: identity, chunked", "transfer_encoding"),
    (
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        "transfer_encoding",
    ),
    (
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "transfer_encoding",
    ),
    ("Content-Length: 5\r\nContent-Length: 5", "content_length"),
];

#[tokio::test]
async fn ambiguous_body_framing_is_refused_and_the_connection_closed() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let t = editor();
    for (headers, reason) in AMBIGUOUS {
        let body = if reason == &"content_length" {
            "hello"
        } else {
            "0\r\n\r\n"
        };
        // A second, smuggled request follows on the same connection.
        let r = raw(
            gw.addr,
            format!(
                "PUT /bots/1/flows HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {t}\r\n{headers}\r\n\r\n{body}\
                 GET /api/status HTTP/1.1\r\nHost: app.test\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_bad_request(&r, reason, headers);
        assert_eq!(r.json()["reason"], *reason, "{headers}");
        assert_eq!(r.header("connection"), Some("close"), "{headers}");
        // `json()` parsed the whole rest of the stream: no second answer.
    }
    assert_eq!(
        up.count(),
        0,
        "an ambiguously framed request reached the upstream"
    );

    // What hyper refuses itself (before the gateway sees a request): a bare
    // 400, nothing upstream.
    for headers in [
        "Transfer-Encoding: identity",
        "Transfer-Encoding: gzip",
        "Transfer-Encoding: chunked, gzip",
        "Content-Length: 3\r\nContent-Length: 4",
        "Content-Length: 3, 3",
    ] {
        let r = raw(
            gw.addr,
            format!("PUT /bots/1/flows HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {t}\r\n{headers}\r\nConnection: close\r\n\r\nabc").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 400, "{headers}");
    }
    assert_eq!(up.count(), 0);

    // A plain chunked body, `Chunked` in any case, still goes through.
    let r = raw(
        gw.addr,
        format!("PUT /bots/1/flows HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body, b"hello");
}

#[tokio::test]
async fn keep_alive_requests_after_bodies_are_still_served() {
    // The tap follows bodies to find the next head: pipelined requests
    // after a sized and a chunked body are answered normally.
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let t = editor();
    let mut stream = Vec::new();
    stream.extend_from_slice(format!("PUT /bots/1/flows HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nContent-Length: 5\r\n\r\nGET /").as_bytes());
    stream.extend_from_slice(format!("PUT /bots/2/flows HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nX-Trailer: GET / HTTP/1.1\r\n\r\n").as_bytes());
    stream.extend_from_slice(
        b"GET /api/status?last=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    let r = raw(gw.addr, &stream).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let seen: Vec<String> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    assert_eq!(
        seen,
        ["/bots/1/flows", "/bots/2/flows", "/api/status?last=1"]
    );
}

// --------------------------------------------------------------------- body

/// A body on GET or HEAD never reaches the upstream: one that skips it
/// would read it as a second request (here one with forged identity
/// headers), which nobody authorized.
#[tokio::test]
async fn a_body_on_get_or_head_is_refused_and_never_reaches_the_upstream() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let t = editor();
    let smuggled =
        "GET /partners/acme/users HTTP/1.1\r\nHost: up\r\nX-Rolegate-User: admin\r\n\r\n";
    for method in ["GET", "HEAD"] {
        for framing in [
            format!("Content-Length: {}\r\n\r\n{smuggled}", smuggled.len()),
            format!(
                "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
        ] {
            let r = raw(
                gw.addr,
                format!("{method} /bots/1/flows HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\n{framing}").as_bytes(),
            )
            .await;
            let what = format!("{method} {framing:?}");
            assert_eq!(r.status, 400, "{what}");
            assert_eq!(r.header("connection"), Some("close"), "{what}");
            if method == "GET" {
                assert_bad_request(&r, "body_on_get_or_head", &what);
            }
        }
    }
    assert_eq!(up.count(), 0, "a GET or HEAD body reached the upstream");
    // No body, an empty one: forwarded as ever.
    for extra in [
        "",
        "Content-Length: 0\r\n",
        "Transfer-Encoding: chunked\r\n",
    ] {
        let body = if extra.contains("chunked") {
            "0\r\n\r\n"
        } else {
            ""
        };
        let r = raw(
            gw.addr,
            format!("GET /bots/1/flows HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\n{extra}Connection: close\r\n\r\n{body}").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{extra:?}");
    }
    assert_eq!(up.count(), 3);
}

/// `Expect: 100-continue` is the gateway's to answer: an upstream asked
/// again could answer before the body and leave it on the connection.
#[tokio::test]
async fn expect_is_answered_by_the_gateway_and_not_forwarded() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let t = editor();
    let r = req(
        gw.addr,
        "PUT",
        "/bots/1/flows",
        Some(&t),
        &["Expect: 100-continue"],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1);
    assert_eq!(up.last().header("expect"), None);
}

#[tokio::test]
async fn a_chunked_body_broken_from_its_start_never_reaches_the_upstream() {
    let up = BodyProbe::start().await;
    let gw = start_gateway(up.addr, "").await;
    let t = editor();
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX",
        "-1\r\n",
        "5;a\nb\r\n",
    ] {
        let r = raw(
            gw.addr,
            format!("PUT /bots/1/flows HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}").as_bytes(),
        )
        .await;
        assert_bad_request(&r, "malformed_body", body);
        assert_eq!(r.json()["reason"], "malformed_body");
        let text = String::from_utf8_lossy(&r.body).to_lowercase();
        assert!(!text.contains("chunk"), "library text echoed: {text}");
    }
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "the upstream saw a request with a broken body: {:?}",
        up.seen.lock().unwrap()
    );
}

#[tokio::test]
async fn a_chunked_body_breaking_mid_stream_is_400_and_the_upstream_never_gets_it_whole() {
    let up = BodyProbe::start().await;
    let gw = start_gateway(up.addr, "").await;
    let t = editor();
    let head = format!(
        "PUT /bots/1/flows HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n"
    );
    let r = raw_parts(
        gw.addr,
        &[head.as_bytes(), b"zz\r\nmore\r\n0\r\n\r\n"],
        Duration::from_millis(150),
    )
    .await;
    assert_bad_request(&r, "malformed_body", "mid-stream");
    let text = String::from_utf8_lossy(&r.body);
    assert!(!text.contains("upstream"), "{text}");
    // The upstream saw the head and the first chunk, then the connection
    // closed without the terminating chunk: a broken body, never a whole one.
    for _ in 0..100 {
        if !up.seen.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].is_err(), "{seen:?}");
    assert_eq!(up.complete(), 0, "the upstream got a complete request");
}

// --------------------------------------------------------------------- host

#[tokio::test]
async fn requests_without_host_are_refused() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let t = editor();
    for line in [
        "GET /api/status HTTP/1.1",
        "GET /bots/1/flows HTTP/1.1",
        "GET http://app.test/api/status HTTP/1.1",
        "GET /api/status HTTP/1.0",
    ] {
        let r = raw(
            gw.addr,
            format!("{line}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_bad_request(&r, "missing_host", line);
        assert_eq!(r.json()["reason"], "missing_host");
    }
    assert_eq!(up.count(), 0, "a request without Host reached the upstream");
    // HTTP/1.0 in absolute form carries its host.
    let r = raw(gw.addr, b"GET http://app.test/api/status HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("x-forwarded-host"), Some("app.test"));
}

// ------------------------------------------------- heads hyper refuses itself

/// Starts the real binary in front of `up` with its stdout (the JSON log)
/// streamed into a channel.
fn spawn_binary(up: std::net::SocketAddr) -> (Proc, u16, std::sync::mpsc::Receiver<String>) {
    let dir = scratch_dir("malformed-bin");
    std::fs::write(dir.join("rules.yaml"), TEST_RULES).unwrap();
    let port = free_port();
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:{port}\" }}\n{}upstreams:\n  app: {{ url: \"http://{up}\" }}\nrules: rules.yaml\n",
        identity_yaml()
    );
    std::fs::write(dir.join("rolegate.yaml"), cfg).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rolegate"))
        .args(["serve", "-c", "rolegate.yaml"])
        .current_dir(&dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Proc(child), port, rx)
}

/// The next access line with `detail` (waits up to 10 s).
fn access_line(rx: &std::sync::mpsc::Receiver<String>, detail: &str) -> Value {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no access line with detail {detail}"));
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["target"] == "rolegate::access" && v["detail"] == detail {
            return v;
        }
    }
}

#[tokio::test]
async fn heads_the_http_library_refuses_are_answered_bare_and_logged() {
    let up = Upstream::start().await;
    let (_child, port, rx) = spawn_binary(up.addr);
    wait_listening(port).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let bad_heads: [Vec<u8>; 3] = [
        b"GET /api/status HTTP/1.1\r\nHost: a\r\nBad\x01Name: v\r\n\r\n".to_vec(),
        b"GET /api/status HTTP/9.9\r\nHost: a\r\n\r\n".to_vec(),
        b"GET  /api/status HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
    ];
    for head in &bad_heads {
        let r = raw(addr, head).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(head));
        let line = access_line(&rx, "malformed_head");
        assert_eq!(line["status"], 400);
        assert_eq!(line["error"], "bad_request");
        assert!(line["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    // A head over `listen.max_header_bytes` (16 KiB): 431.
    let big = format!(
        "GET /api/status HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(20_000)
    );
    let r = raw(addr, big.as_bytes()).await;
    assert_eq!(r.status, 431);
    let line = access_line(&rx, "malformed_head");
    assert_eq!(line["status"], 431);

    // A refusal the gateway sees gets its JSON body and its access line.
    let r = req(addr, "get", "/api/status", None, &[]).await;
    assert_eq!(r.json()["reason"], "method_case");
    let line = access_line(&rx, "method_case");
    assert_eq!(
        (line["status"].as_u64(), line["error"].as_str()),
        (Some(400), Some("bad_request"))
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn connect_is_refused_whatever_its_target() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let t = editor();
    // An any-method route: `CONNECT /partners/acme/users` would be
    // authorized on that path and forwarded as `CONNECT upstream:port`.
    for target in ["/partners/acme/users", "app.test:443"] {
        let r = req(gw.addr, "CONNECT", target, Some(&t), &[]).await;
        assert_eq!(r.status, 400, "{target}");
        assert_eq!(r.error(), "bad_request", "{target}");
        assert!(
            r.json()["reason"]
                .as_str()
                .unwrap()
                .contains("not in origin form"),
            "{target}"
        );
    }
    assert_eq!(up.count(), 0, "a CONNECT reached the upstream");
}

#[tokio::test]
async fn an_upstream_101_to_a_plain_request_is_not_relayed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\nraw-bytes")
                    .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            });
        }
    });
    let gw = start_gateway(addr, "").await;
    let r = req(gw.addr, "GET", "/partners/acme/users", Some(&editor()), &[]).await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error(), "upstream_failed");
    assert!(!String::from_utf8_lossy(&r.body).contains("raw-bytes"));
}
