//! Contextual relations answered by a pull source: a real hyper upstream
//! answers `GET /relations/...?subject=..&issuer=..&object=..` (recording
//! every call) and serves the protected routes. True allows, false denies,
//! a source that is down, slow or answers garbage is unknown (fail closed:
//! `relation_unavailable`), and answers are cached on their own TTLs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::common::*;

/// The console upstream: relation answers by object, plus any other path
/// answered 200 `{"upstream":"ok"}`. Records the URI of every relation call.
struct Console {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Console {
    async fn start() -> Console {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls: Arc<Mutex<Vec<String>>> = Arc::default();
        let rec = calls.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let rec = rec.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let rec = rec.clone();
                        async move {
                            let uri = req.uri().to_string();
                            let (status, body) = if req.uri().path().starts_with("/relations/") {
                                rec.lock().unwrap().push(uri.clone());
                                let q = req.uri().query().unwrap_or_default().to_string();
                                let object = q
                                    .split('&')
                                    .find_map(|kv| kv.strip_prefix("object="))
                                    .unwrap_or_default()
                                    .to_string();
                                match object.as_str() {
                                    "c1" => (200, json!({ "allowed": true }).to_string()),
                                    "c2" => (200, json!({ "allowed": false }).to_string()),
                                    "slow" => {
                                        tokio::time::sleep(Duration::from_secs(5)).await;
                                        (200, json!({ "allowed": true }).to_string())
                                    }
                                    "garbage" => (200, "yes".to_string()),
                                    _ => (500, "{}".to_string()),
                                }
                            } else {
                                (
                                    200,
                                    json!({ "upstream": "ok", "uri": uri, "email": "jane.doe@example.com" })
                                        .to_string(),
                                )
                            };
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Console { addr, calls }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

async fn start(console: &Console) -> Gw {
    let dir = scratch_dir("relations");
    // A port nobody listens on: the `down` source's connect fails.
    let down = free_port();
    let cfg = format!(
        r#"listen: {{ addr: "127.0.0.1:0" }}
{identity}upstreams:
  console: {{ url: "http://{console}", timeout: 2s }}
  down: {{ url: "http://127.0.0.1:{down}", connect_timeout: 1s }}
relations:
  active_conversation:
    pull: {{ upstream: console, path: /relations/active_conversation, timeout: 300ms, cache_ttl: 60s, negative_ttl: 60s }}
  watching:
    pull: {{ upstream: console, path: /relations/watching, timeout: 300ms, cache_ttl: 60s, negative_ttl: 0s }}
  down_rel:
    pull: {{ upstream: down, path: /relations/x }}
masks:
  pii:
    unmask_with: customer.pii.view
    fields:
      - {{ path: "$..email", as: redact }}
roles:
  agent: {{ grants: [customer.view.assigned] }}
  senior: {{ grants: [customer.view.any, customer.view.assigned] }}
routes:
  - name: customer
    match: {{ methods: [GET], path: "/api/customers/{{customer}}" }}
    upstream: console
    mask: pii
    require:
      any:
        - customer.view.any
        - all: [customer.view.assigned, "relation:active_conversation({{customer}})"]
  - name: watched
    match: {{ methods: [GET], path: "/api/watched/{{customer}}" }}
    upstream: console
    require: {{ all: [customer.view.assigned, "relation:watching({{customer}})"] }}
  - name: down
    match: {{ methods: [GET], path: "/api/down/{{customer}}" }}
    upstream: console
    require: {{ all: [customer.view.assigned, "relation:down_rel({{customer}})"] }}
  - name: nowhere
    match: {{ methods: [GET], path: "/api/nowhere/{{customer}}" }}
    upstream: console
    require: {{ all: [customer.view.assigned, "relation:nowhere({{customer}})"] }}
"#,
        identity = identity_yaml(),
        console = console.addr,
    );
    start_with_config(&dir, &cfg).await
}

fn agent() -> String {
    token_with(json!({ "sub": "agent 1", "sid": "s-agent-1", "roles": ["agent"] }))
}

#[track_caller]
fn assert_unavailable(r: &Resp, what: &str) {
    assert_eq!(
        r.status,
        403,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.error(), "forbidden", "{what}");
    let reason = r.json()["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("relation unavailable"), "{what}: {reason}");
}

#[tokio::test]
async fn agent_in_an_active_conversation_views_the_customer() {
    let console = Console::start().await;
    let gw = start(&console).await;
    let r = req(gw.addr, "GET", "/api/customers/c1", Some(&agent()), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["uri"], "/api/customers/c1");
    // Allowed by the relation, still masked: the agent lacks `unmask_with`.
    assert_ne!(r.json()["email"], "jane.doe@example.com");
    assert!(!String::from_utf8_lossy(&r.body).contains("jane.doe"));
    // The question names the principal (percent-encoded), its issuer and the object.
    let calls = console.calls();
    assert_eq!(
        calls,
        vec![format!(
            "/relations/active_conversation?subject=agent%201&issuer={}&object=c1",
            ISS_RSA.replace(':', "%3A").replace('/', "%2F")
        )]
    );
}

#[tokio::test]
async fn agent_without_active_conversation_gets_403() {
    let console = Console::start().await;
    let gw = start(&console).await;
    let r = req(gw.addr, "GET", "/api/customers/c2", Some(&agent()), &[]).await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error(), "forbidden");
    let reason = r.json()["reason"].as_str().unwrap_or_default().to_string();
    assert!(!reason.contains("relation unavailable"), "{reason}");
}

#[tokio::test]
async fn a_decision_that_does_not_depend_on_the_relation_asks_nothing() {
    let console = Console::start().await;
    let gw = start(&console).await;
    let senior = token_with(json!({ "sub": "senior-1", "sid": "s-senior-1", "roles": ["senior"] }));
    let r = req(gw.addr, "GET", "/api/customers/c2", Some(&senior), &[]).await;
    assert_eq!(r.status, 200);
    assert!(console.calls().is_empty(), "{:?}", console.calls());
}

#[tokio::test]
async fn an_unreachable_slow_or_broken_source_fails_closed() {
    let console = Console::start().await;
    let gw = start(&console).await;
    let t = agent();
    let r = req(gw.addr, "GET", "/api/down/c1", Some(&t), &[]).await;
    assert_unavailable(&r, "connect refused");
    let r = req(gw.addr, "GET", "/api/customers/slow", Some(&t), &[]).await;
    assert_unavailable(&r, "beyond the timeout");
    let r = req(gw.addr, "GET", "/api/customers/garbage", Some(&t), &[]).await;
    assert_unavailable(&r, "not JSON");
    let r = req(gw.addr, "GET", "/api/customers/c500", Some(&t), &[]).await;
    assert_unavailable(&r, "500");
    // Unknowns are not cached: the next request asks again.
    let before = console.calls().len();
    let r = req(gw.addr, "GET", "/api/customers/c500", Some(&t), &[]).await;
    assert_unavailable(&r, "500 again");
    assert_eq!(console.calls().len(), before + 1);
}

#[tokio::test]
async fn a_relation_without_a_source_is_unknown() {
    let console = Console::start().await;
    let gw = start(&console).await;
    let r = req(gw.addr, "GET", "/api/nowhere/c1", Some(&agent()), &[]).await;
    assert_unavailable(&r, "unconfigured");
    assert!(console.calls().is_empty());
}

#[tokio::test]
async fn answers_are_cached_within_their_ttl_negative_separately() {
    let console = Console::start().await;
    let gw = start(&console).await;
    let t = agent();
    // Positive and negative answers of active_conversation: both cached.
    for _ in 0..2 {
        assert_eq!(
            req(gw.addr, "GET", "/api/customers/c1", Some(&t), &[])
                .await
                .status,
            200
        );
        assert_eq!(
            req(gw.addr, "GET", "/api/customers/c2", Some(&t), &[])
                .await
                .status,
            403
        );
    }
    assert_eq!(console.calls().len(), 2, "{:?}", console.calls());
    // `watching` keeps positives only (negative_ttl: 0s).
    for _ in 0..2 {
        assert_eq!(
            req(gw.addr, "GET", "/api/watched/c1", Some(&t), &[])
                .await
                .status,
            200
        );
        assert_eq!(
            req(gw.addr, "GET", "/api/watched/c2", Some(&t), &[])
                .await
                .status,
            403
        );
    }
    let watching: Vec<_> = console
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("/relations/watching"))
        .collect();
    assert_eq!(watching.len(), 3, "c1 once, c2 twice: {watching:?}");
    // Another principal is another question.
    let other = token_with(json!({ "sub": "agent-2", "sid": "s-agent-2", "roles": ["agent"] }));
    assert_eq!(
        req(gw.addr, "GET", "/api/customers/c1", Some(&other), &[])
            .await
            .status,
        200
    );
    assert_eq!(console.calls().len(), 6);
}
