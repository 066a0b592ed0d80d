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
use serde_json::{Value, json};
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

/// A session this gateway knows is over (logged out) asks the source
/// nothing: the answer is the session's 401, with no lookup made for it.
#[tokio::test]
async fn an_ended_session_causes_no_relation_lookup() {
    let console = Console::start().await;
    let gw = start(&console).await;
    let t = token_with(json!({ "sub": "agent 2", "sid": "s-agent-2", "roles": ["agent"] }));
    // `watching` caches no negative answer: every allowed request asks.
    let r = req(gw.addr, "GET", "/api/watched/c2", Some(&t), &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(console.calls().len(), 1);
    let r = req(gw.addr, "POST", "/.rolegate/logout", Some(&t), &[]).await;
    assert_eq!(r.status, 200);
    for _ in 0..3 {
        let r = req(gw.addr, "GET", "/api/watched/c2", Some(&t), &[]).await;
        assert_eq!((r.status, r.error().as_str()), (401, "session_ended"));
    }
    assert_eq!(console.calls().len(), 1, "{:?}", console.calls());
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

// --- Pushed relations: tuples through the admin API ---------------------

const PUSH_ADMIN_TOKEN: &str = "admin-token-for-relation-pushes-0123";

/// A gateway whose `active_conversation` is pushed (`max_ttl: 1h`), with
/// an admin listener, in front of `console`; `store` is the sessions'
/// store line (`state_dir: ...` or a Redis URL).
async fn start_push(console: &Console, dir: &std::path::Path, store: &str) -> Gw {
    std::fs::write(dir.join("admin.token"), PUSH_ADMIN_TOKEN).unwrap();
    let cfg = format!(
        r#"listen: {{ addr: "127.0.0.1:0" }}
{identity}upstreams:
  console: {{ url: "http://{console}", timeout: 2s }}
admin: {{ addr: "127.0.0.1:0", token_file: admin.token }}
sessions: {{ {store} }}
relations:
  active_conversation:
    push: {{ max_ttl: 1h }}
  watching:
    pull: {{ upstream: console, path: /relations/watching }}
roles:
  agent: {{ grants: [customer.view.assigned] }}
routes:
  - name: customer
    match: {{ methods: [GET], path: "/api/customers/{{customer}}" }}
    upstream: console
    require: {{ all: [customer.view.assigned, "relation:active_conversation({{customer}})"] }}
"#,
        identity = identity_yaml(),
        console = console.addr,
    );
    start_with_config(dir, &cfg).await
}

/// Sends `body` with the test issuer added to every tuple in it (the test
/// identity has several issuers, so a tuple must name one).
async fn push(gw: &Gw, method: &str, path: &str, body: &str) -> Resp {
    let body = body.replace(
        r#""subject":"#,
        &format!(r#""issuer":"{ISS_RSA}","subject":"#),
    );
    req_json(
        gw.admin.unwrap(),
        method,
        path,
        Some(PUSH_ADMIN_TOKEN),
        &body,
    )
    .await
}

async fn customer(gw: &Gw, c: &str) -> u16 {
    req(
        gw.addr,
        "GET",
        &format!("/api/customers/{c}"),
        Some(&agent()),
        &[],
    )
    .await
    .status
}

/// Polls `f` every 20 ms for up to `limit`; true once it holds.
async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_pushed_conversation_allows_until_it_is_removed_and_survives_a_restart() {
    let console = Console::start().await;
    let dir = scratch_dir("push");
    let gw = start_push(&console, &dir, "state_dir: state").await;
    // Denied before any push (a plain deny, not "unavailable").
    let r = req(gw.addr, "GET", "/api/customers/c9", Some(&agent()), &[]).await;
    assert_eq!(r.status, 403);
    assert!(!r.json()["reason"].as_str().unwrap().contains("unavailable"));

    let r = push(
        &gw,
        "POST",
        "/relations/active_conversation",
        r#"{"subject":"agent 1","object":"c9"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["added"][0]["issuer"], ISS_RSA);
    assert_eq!(r.json()["added"][0]["expires_at_ms"], Value::Null);
    assert_eq!(customer(&gw, "c9").await, 200);
    // Only that customer, only that subject.
    assert_eq!(customer(&gw, "c8").await, 403);
    let other = token_with(json!({ "sub": "agent 2", "sid": "s-agent-2", "roles": ["agent"] }));
    assert_eq!(
        req(gw.addr, "GET", "/api/customers/c9", Some(&other), &[])
            .await
            .status,
        403
    );
    // Nothing was asked of the upstream: pushed relations are local.
    assert!(console.calls().is_empty());

    let r = push(
        &gw,
        "GET",
        "/relations/active_conversation?subject=agent%201",
        "",
    )
    .await;
    assert_eq!(
        r.json()["tuples"].as_array().unwrap().len(),
        1,
        "{}",
        r.json()
    );

    // A restart on its journal keeps the tuple (the first gateway keeps
    // running and holds its state_dir lock, so the second one starts on a
    // copy of the journal as it is now).
    let dir2 = scratch_dir("push-restart");
    std::fs::create_dir_all(dir2.join("state")).unwrap();
    std::fs::copy(
        dir.join("state/sessions.journal"),
        dir2.join("state/sessions.journal"),
    )
    .unwrap();
    let gw2 = start_push(&console, &dir2, "state_dir: state").await;
    assert_eq!(customer(&gw2, "c9").await, 200, "tuple lost over a restart");

    let r = push(
        &gw2,
        "DELETE",
        "/relations/active_conversation",
        r#"{"subject":"agent 1","object":["c9"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["removed"][0]["existed"], true);
    assert_eq!(customer(&gw2, "c9").await, 403);
}

#[tokio::test]
async fn pushed_tuples_expire_and_a_batch_moves_a_conversation_atomically() {
    let console = Console::start().await;
    let gw = start_push(&console, &scratch_dir("push-ttl"), "state_dir: state").await;
    let r = push(
        &gw,
        "POST",
        "/relations/active_conversation",
        r#"{"subject":"agent 1","object":"c1","ttl":"1s"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["added"][0]["expires_at_ms"].as_u64().is_some());
    assert_eq!(customer(&gw, "c1").await, 200);
    assert!(
        eventually(Duration::from_secs(3), || async {
            customer(&gw, "c1").await == 403
        })
        .await,
        "an expired tuple still allows"
    );
    assert_eq!(
        push(&gw, "GET", "/relations/active_conversation", "")
            .await
            .json()["tuples"],
        json!([]),
        "expired tuples are not listed"
    );

    // A transfer: remove c2, add c3, in one batch.
    let r = push(
        &gw,
        "POST",
        "/relations/active_conversation",
        r#"{"subject":"agent 1","object":"c2"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = push(
        &gw,
        "POST",
        "/relations/active_conversation",
        r#"{"remove":[{"subject":"agent 1","object":"c2"}],"add":[{"subject":"agent 1","object":"c3","ttl":"10m"}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(customer(&gw, "c2").await, 403);
    assert_eq!(customer(&gw, "c3").await, 200);

    // A batch with one bad tuple changes nothing.
    let r = push(
        &gw,
        "POST",
        "/relations/active_conversation",
        r#"{"add":[{"subject":"agent 1","object":"c4"},{"subject":"agent 1","object":"c5","ttl":"2h"}]}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error(), "ttl_too_long");
    assert_eq!(
        customer(&gw, "c4").await,
        403,
        "half a refused batch was applied"
    );
}

#[tokio::test]
async fn the_push_api_refuses_what_it_cannot_apply() {
    let console = Console::start().await;
    let gw = start_push(&console, &scratch_dir("push-errors"), "state_dir: state").await;
    let path = "/relations/active_conversation";
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "POST",
            "/relations/nope",
            r#"{"subject":"a","object":"c"}"#,
            404,
            "unknown_relation",
        ),
        (
            "POST",
            "/relations/watching",
            r#"{"subject":"a","object":"c"}"#,
            409,
            "relation_not_pushed",
        ),
        ("POST", path, "not json", 400, "bad_request"),
        (
            "POST",
            path,
            r#"{"subject":"","object":"c"}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            path,
            r#"{"subject":"a","object":[]}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            path,
            r#"{"subject":"a","object":"c","ttl":"2h"}"#,
            400,
            "ttl_too_long",
        ),
        (
            "POST",
            path,
            r#"{"subject":"a","object":"c","extra":1}"#,
            400,
            "bad_request",
        ),
        (
            "DELETE",
            path,
            r#"{"subject":"a","object":"c","ttl":"1m"}"#,
            400,
            "bad_request",
        ),
        (
            "PUT",
            path,
            r#"{"subject":"a","object":"c"}"#,
            405,
            "method_not_allowed",
        ),
    ];
    for (method, p, body, status, code) in cases {
        let r = push(&gw, method, p, body).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (*status, *code),
            "{method} {p} {body}"
        );
    }
    // Several issuers: a tuple must say which; an unknown one is refused.
    let adm = gw.admin.unwrap();
    let r = req_json(
        adm,
        "POST",
        path,
        Some(PUSH_ADMIN_TOKEN),
        r#"{"subject":"a","object":"c"}"#,
    )
    .await;
    assert_eq!((r.status, r.error().as_str()), (400, "issuer_required"));
    let r = req_json(
        adm,
        "POST",
        path,
        Some(PUSH_ADMIN_TOKEN),
        r#"{"subject":"a","object":"c","issuer":"https://evil.example"}"#,
    )
    .await;
    assert_eq!((r.status, r.error().as_str()), (400, "unknown_issuer"));
    // A user's own token is not the operator's (403), a bad one is
    // nobody (401): nothing written either way.
    let body = r#"{"subject":"agent 1","object":"c7"}"#;
    let r = req_json(gw.admin.unwrap(), "POST", path, Some(&agent()), body).await;
    assert_eq!((r.status, r.error().as_str()), (403, "forbidden"));
    let r = req_json(gw.admin.unwrap(), "POST", path, Some("not-a-token"), body).await;
    assert_eq!((r.status, r.error().as_str()), (401, "unauthorized"));
    assert_eq!(customer(&gw, "c7").await, 403);
    // An oversized body: 413.
    let big = format!(
        r#"{{"subject":"a","object":"{}"}}"#,
        "x".repeat(1024 * 1024 + 1)
    );
    assert_eq!(push(&gw, "POST", path, &big).await.status, 413);
}

#[tokio::test]
async fn a_push_on_one_instance_is_enforced_by_another_through_redis() {
    let redis = TestRedis::start();
    let console = Console::start().await;
    let store = format!("store: \"{}\"", redis.url());
    let a = start_push(&console, &scratch_dir("push-redis-a"), &store).await;
    let b = start_push(&console, &scratch_dir("push-redis-b"), &store).await;
    assert_eq!(customer(&b, "c9").await, 403);
    let r = push(
        &a,
        "POST",
        "/relations/active_conversation",
        r#"{"subject":"agent 1","object":"c9"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Read-your-write on the instance that took the push.
    assert_eq!(customer(&a, "c9").await, 200);
    assert!(
        eventually(Duration::from_secs(1), || async {
            customer(&b, "c9").await == 200
        })
        .await,
        "B did not see A's push within 1 s"
    );
    let r = push(
        &b,
        "DELETE",
        "/relations/active_conversation",
        r#"{"subject":"agent 1","object":"c9"}"#,
    )
    .await;
    assert_eq!(r.json()["removed"][0]["existed"], true);
    assert!(
        eventually(Duration::from_secs(1), || async {
            customer(&a, "c9").await == 403
        })
        .await,
        "A did not see B's removal within 1 s"
    );
    // A third instance started now loads the tuples from Redis.
    push(
        &a,
        "POST",
        "/relations/active_conversation",
        r#"{"subject":"agent 1","object":"c5"}"#,
    )
    .await;
    let c = start_push(&console, &scratch_dir("push-redis-c"), &store).await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            customer(&c, "c5").await == 200
        })
        .await,
        "a new instance did not load the pushed tuples"
    );
}

/// A reload starts with no cached answers: an answer the old source gave
/// must not decide under a configuration that asks another one.
#[tokio::test]
async fn a_reload_forgets_the_answers_cached_under_the_old_configuration() {
    let console = Console::start().await;
    let gw = start(&console).await;
    let t = agent();
    let c1 = |gw: SocketAddr, t: String| async move {
        req(gw, "GET", "/api/customers/c1", Some(&t), &[]).await
    };
    assert_eq!(c1(gw.addr, t.clone()).await.status, 200);
    assert_eq!(c1(gw.addr, t.clone()).await.status, 200, "cached for 60 s");
    assert_eq!(console.calls().len(), 1);

    // The relation now asks the source that is down.
    let status = gw.gateway.reloader().status(false);
    let path = std::path::PathBuf::from(status["config"].as_str().unwrap());
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "upstream: console, path: /relations/active_conversation",
        "upstream: down, path: /relations/active_conversation",
    );
    std::fs::write(&path, text).unwrap();
    let attempt = gw
        .gateway
        .reloader()
        .reload(&gw.gateway, rolegate::reload::Trigger::Admin)
        .await;
    assert_eq!(
        attempt.to_json()["result"],
        "reloaded",
        "{:?}",
        attempt.to_json()
    );
    assert_unavailable(&c1(gw.addr, t).await, "after the reload");
    assert_eq!(console.calls().len(), 1, "the old source is not asked");
}
