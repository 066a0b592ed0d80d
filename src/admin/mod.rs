//! The admin listener: session revocation, user (de)activation, session
//! listing, health and readiness, reload and status. A separate listener (default
//! `127.0.0.1:9901`), never the public port.
//!
//! Every endpoint but `/healthz` and `/readyz` requires `Authorization:
//! Bearer <admin token>` (the token from `admin.token_file`, compared in
//! constant time). Every state-changing call writes one audit line (target
//! `rolegate::audit`: actor, action, object, result). It owns no state: it
//! calls the gateway's session store.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

mod caller;
mod directory;
pub mod masks;
mod relations;

use caller::Caller;

use crate::proxy::Gateway;
use crate::route::decode_param;
use crate::session::{Record, now_ms};

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, v: Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, code: &str, reason: &str) -> Resp {
    reply(status, json!({ "error": code, "reason": reason }))
}

/// Compares digests, so the time taken says nothing about the token.
pub(crate) fn token_matches(given: &str, expected: &str) -> bool {
    use aws_lc_rs::digest::{SHA256, digest};
    let (a, b) = (
        digest(&SHA256, given.as_bytes()),
        digest(&SHA256, expected.as_bytes()),
    );
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn session_json(r: &Record, now: u64) -> Value {
    json!({
        "session": r.session,
        "issuer": r.issuer,
        "state": if r.ended.is_some() { "ended" } else { "active" },
        "ended_reason": r.ended.map(|(reason, _)| reason.as_str()),
        "ended_at_ms": r.ended.map(|(_, t)| t),
        "created_ms": r.created_ms,
        "last_activity_ms": r.last_ms,
        "idle_seconds": now.saturating_sub(r.last_ms) as f64 / 1000.0,
        "idle_timeout_seconds": r.idle_ms as f64 / 1000.0,
    })
}

/// When the request must have been received whole (`listen.request_timeout`
/// after its head); set by [`serve`].
#[derive(Clone, Copy)]
struct ReceiveBy(tokio::time::Instant);

/// The request body, up to `limit` bytes (413 `body_too_large` above),
/// received by its [`ReceiveBy`] deadline (408 `request_timeout` after).
/// Only receiving is timed: once a change starts it runs to its end, so a
/// slow client never leaves one half applied.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Resp> {
    use http_body_util::{BodyExt, Limited};
    let by = req.extensions().get::<ReceiveBy>().copied();
    let body = Limited::new(req.into_body(), limit).collect();
    let received = match by {
        Some(ReceiveBy(at)) => match tokio::time::timeout_at(at, body).await {
            Ok(r) => r,
            Err(_) => {
                let mut r = error(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request was not received within listen.request_timeout",
                );
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Err(r);
            }
        },
        None => body.await,
    };
    match received {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("the body is over {limit} bytes"),
        )),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body could not be read",
        )),
    }
}

/// Handles one admin request.
pub async fn handle(gw: &Gateway, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let path = req.uri().path().to_string();
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(decode_param)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let store = gw.store();
    match (req.method(), segs.as_slice()) {
        (&Method::GET, ["healthz"]) => return reply(StatusCode::OK, json!({ "status": "ok" })),
        (&Method::GET, ["readyz"]) => {
            return if store.ready().await {
                reply(StatusCode::OK, json!({ "ready": true }))
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "ready": false, "error": "session_store_unavailable" }),
                )
            };
        }
        // Open paths: a wrong method is told without asking for a token.
        (_, ["healthz" | "readyz"]) => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "see the README's admin API",
            );
        }
        _ => {}
    }
    let rt = gw.runtime();
    let Some(admin) = &rt.admin else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "admin API is not configured",
        );
    };
    let caller = match caller::identify(gw, &rt, req.headers(), &admin.token).await {
        Ok(c) => c,
        Err(r) => {
            tracing::warn!(target: "rolegate::audit", actor = %format!("unauthenticated@{peer}"), path, "admin call refused");
            return r;
        }
    };
    // Endpoints a user may call with their own token dispatch here, before
    // the operator-only ones.
    if let ["masks", mask, "columns", resource, record @ ..] = segs.as_slice()
        && record.len() <= 1
        && !resource.is_empty()
    {
        let (mask, resource) = (mask.to_string(), resource.to_string());
        let record = record.first().map(|r| r.to_string()).unwrap_or_default();
        let method = req.method().clone();
        let body = if method == Method::PUT {
            match read_body(req, masks::MAX_BODY_BYTES).await {
                Ok(b) => Some(b),
                Err(r) => return r,
            }
        } else {
            None
        };
        let (resp, audited) = masks::handle(
            &rt,
            store,
            &caller,
            &method,
            (&mask, &resource, &record),
            body.as_deref(),
        )
        .await;
        if let Some((object, result)) = audited {
            caller::audit(&caller, peer, "mask_columns", &object, &result);
        }
        return resp;
    }
    if let ["directory", rest @ ..] = segs.as_slice() {
        let method = req.method().clone();
        let query = req.uri().query().map(str::to_string);
        let field = |name: header::HeaderName| {
            // Not text: kept as read, so that it matches no revision.
            let values: Vec<String> = req
                .headers()
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        };
        let preconditions = directory::Preconditions {
            if_match: field(header::IF_MATCH),
            if_none_match: field(header::IF_NONE_MATCH),
        };
        let body = if method == Method::PUT || method == Method::POST {
            let limit = if rest == ["users.csv"] {
                crate::directory::csv::MAX_IMPORT_BYTES
            } else {
                directory::MAX_BODY_BYTES
            };
            match read_body(req, limit).await {
                Ok(b) => Some(b),
                Err(r) => return r,
            }
        } else {
            None
        };
        let call = directory::Call {
            method: &method,
            rest,
            query: query.as_deref(),
            body: body.as_deref(),
            preconditions,
        };
        let (resp, audited) = directory::handle(&rt, store, &caller, &call).await;
        for (action, object, result) in audited {
            caller::audit(&caller, peer, action, &object, &result);
        }
        return resp;
    }
    if !matches!(caller, Caller::Operator) {
        return caller::forbidden("this endpoint needs the admin token");
    }
    let unavailable = |e: crate::session::StoreError| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "session_store_unavailable",
            &e.0,
        )
    };
    if let ["relations", name] = segs.as_slice() {
        let name = name.to_string();
        let method = req.method().clone();
        let query = req.uri().query().map(str::to_string);
        let body = if method == Method::GET {
            None
        } else {
            match read_body(req, relations::MAX_BODY_BYTES).await {
                Ok(b) => Some(b),
                Err(r) => return r,
            }
        };
        let (resp, audited) = relations::handle(
            &rt,
            store,
            &method,
            &name,
            query.as_deref(),
            body.as_deref(),
        )
        .await;
        if let Some((action, result)) = audited {
            caller::audit(&caller, peer, action, &name, &result);
        }
        return resp;
    }
    match (req.method(), segs.as_slice()) {
        (&Method::GET, ["status"]) => {
            return reply(StatusCode::OK, gw.reloader().status(rt.reload.watch));
        }
        (&Method::POST, ["reload"]) => {
            drop(rt);
            let attempt = gw
                .reloader()
                .reload(gw, crate::reload::Trigger::Admin)
                .await;
            return reload_reply(&caller, peer, &attempt);
        }
        (_, ["status" | "reload"]) => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "see the README's admin API",
            );
        }
        _ => {}
    }
    let keep_until = now_ms() + rt.sessions.retention.as_millis() as u64;
    let (action, object, result) = match (req.method(), segs.as_slice()) {
        (&Method::POST, ["sessions", sid, "revoke"]) if !sid.is_empty() => {
            match store.revoke_id(sid, keep_until).await {
                Ok(was_active) => (
                    "revoke_session",
                    *sid,
                    json!({ "session": sid, "revoked": true, "was_active": was_active }),
                ),
                Err(e) => return unavailable(e),
            }
        }
        (&Method::POST, ["users", user, "revoke"]) if !user.is_empty() => {
            match store.end_user(user).await {
                Ok(n) => (
                    "revoke_user_sessions",
                    *user,
                    json!({ "user": user, "revoked": n }),
                ),
                Err(e) => return unavailable(e),
            }
        }
        (&Method::POST, ["users", user, "deactivate"]) if !user.is_empty() => {
            match store.deactivate(user).await {
                Ok((changed, _)) => (
                    "deactivate_user",
                    *user,
                    json!({ "user": user, "deactivated": true, "changed": changed }),
                ),
                Err(e) => return unavailable(e),
            }
        }
        (&Method::POST, ["users", user, "reactivate"]) if !user.is_empty() => {
            // Also the directory's deactivation of its issuer's tokens (an
            // entry still inactive keeps refusing them: see the directory).
            let directory = match &rt.directory {
                Some(d) => {
                    store
                        .reactivate(&crate::session::issuer_user_key(&d.issuer, user))
                        .await
                }
                None => Ok(false),
            };
            let all = match directory {
                Ok(d) => store.reactivate(user).await.map(|a| a || d),
                Err(e) => Err(e),
            };
            match all {
                Ok(changed) => (
                    "reactivate_user",
                    *user,
                    json!({ "user": user, "deactivated": false, "changed": changed }),
                ),
                Err(e) => return unavailable(e),
            }
        }
        (&Method::GET, ["users", user, "sessions"]) if !user.is_empty() => {
            // Deactivated for every issuer, or by the directory for its own.
            let users: Vec<String> = std::iter::once(user.to_string())
                .chain(
                    rt.directory
                        .as_ref()
                        .map(|d| crate::session::issuer_user_key(&d.issuer, user)),
                )
                .collect();
            let mut deactivated = false;
            let mut not_before: Option<u64> = None;
            for u in &users {
                match (store.is_deactivated(u).await, store.not_before(u).await) {
                    (Ok(d), Ok(nb)) => {
                        deactivated |= d;
                        not_before = not_before.max(nb);
                    }
                    (Err(e), _) | (_, Err(e)) => return unavailable(e),
                }
            }
            let sessions = match store.sessions_of(user).await {
                Ok(s) => s,
                Err(e) => return unavailable(e),
            };
            let now = now_ms();
            let list: Vec<Value> = sessions.iter().map(|r| session_json(r, now)).collect();
            return reply(
                StatusCode::OK,
                json!({
                    "user": user,
                    "deactivated": deactivated,
                    "not_before_ms": not_before,
                    "sessions": list,
                }),
            );
        }
        (
            _,
            ["sessions", _, "revoke"]
            | [
                "users",
                _,
                "revoke" | "deactivate" | "reactivate" | "sessions",
            ],
        ) => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "see the README's admin API",
            );
        }
        _ => return error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    };
    caller::audit(&caller, peer, action, object, &result);
    reply(StatusCode::OK, result)
}

/// `POST /reload`: the attempt, with 200 when the new configuration is in
/// force; otherwise an error code and every error (the old configuration
/// stays in force).
fn reload_reply(caller: &Caller, peer: SocketAddr, a: &crate::reload::Attempt) -> Resp {
    use crate::reload::Outcome;
    let mut body = a.to_json();
    let status = match a.result {
        Outcome::Reloaded => StatusCode::OK,
        Outcome::Failed => StatusCode::UNPROCESSABLE_ENTITY,
        Outcome::RestartRequired | Outcome::Unavailable => StatusCode::CONFLICT,
    };
    if a.result != Outcome::Reloaded {
        let (code, reason) = match a.result {
            Outcome::Failed => (
                "reload_failed",
                "the configuration has errors; the previous one stays in force",
            ),
            Outcome::RestartRequired => (
                "restart_required",
                "the configuration changes what only a restart can change; the previous one stays in force",
            ),
            _ => (
                "reload_unavailable",
                "this gateway has no configuration file to reload",
            ),
        };
        body["error"] = json!(code);
        body["reason"] = json!(reason);
    }
    caller::audit(caller, peer, "reload", "configuration", &body);
    reply(status, body)
}

/// Serves the admin API on `listener` until `shutdown` resolves.
/// Admin connections open at once; more are closed at accept. The admin
/// API is for operators and their scripts: a handful is plenty, and a cap
/// keeps a client that opens connections without end from taking the
/// process's file descriptors.
pub const MAX_CONNECTIONS: usize = 64;
/// Admin connections open at once from one client address, so that one
/// runaway client cannot take every slot from the others.
pub const MAX_CONNECTIONS_PER_IP: usize = 16;

pub async fn serve(gw: Arc<Gateway>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_ip: Arc<dashmap::DashMap<std::net::IpAddr, usize>> = Arc::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "admin: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(peer = %peer, limit = MAX_CONNECTIONS, "admin: connection limit reached; connection closed");
                    continue;
                };
                let Some(ip_slot) = IpSlot::take(&per_ip, peer.ip()) else {
                    tracing::warn!(peer = %peer, limit = MAX_CONNECTIONS_PER_IP, "admin: per-address connection limit reached; connection closed");
                    continue;
                };
                let gw = gw.clone();
                tokio::spawn(async move {
                    let _slots = (slot, ip_slot);
                    let (head, whole) = {
                        let rt = gw.runtime();
                        (rt.listen.header_read_timeout, rt.listen.request_timeout)
                    };
                    let svc = service_fn(move |mut req: Request<Incoming>| {
                        let gw = gw.clone();
                        req.extensions_mut()
                            .insert(ReceiveBy(tokio::time::Instant::now() + whole));
                        async move { Ok::<_, Infallible>(handle(&gw, req, peer).await) }
                    });
                    // The head within `listen.header_read_timeout`, which on
                    // HTTP/1.1 also bounds the idle time between requests.
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(head)
                        .serve_connection(TokioIo::new(stream), svc);
                    // A client that stops reading its answers holds its
                    // slot no longer than this (admin calls are short).
                    let _ = tokio::time::timeout(head + whole + whole, conn).await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
}

/// One admin connection counted against its client address.
struct IpSlot {
    map: Arc<dashmap::DashMap<std::net::IpAddr, usize>>,
    ip: std::net::IpAddr,
}

impl IpSlot {
    fn take(
        map: &Arc<dashmap::DashMap<std::net::IpAddr, usize>>,
        ip: std::net::IpAddr,
    ) -> Option<IpSlot> {
        let mut n = map.entry(ip).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_IP {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            map: map.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.map.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The keys of one JSON object, in order, duplicates kept (a
    /// `serde_json::Value` would silently keep only the last one).
    struct Keys(Vec<String>);

    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Keys, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }

    #[test]
    fn the_audit_line_has_each_key_once() {
        let buf = Buf::default();
        let w = buf.clone();
        // The same JSON layout as `telemetry::init`.
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            caller::audit(
                &Caller::Operator,
                "127.0.0.1:9".parse().unwrap(),
                "revoke_session",
                "s-1",
                &json!({ "session": "s-1", "revoked": true }),
            );
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line = text.lines().next().expect("one audit line");
        let Keys(keys) = serde_json::from_str(line).unwrap();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len(), "a key appears twice: {line}");
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["target"], "rolegate::audit");
        assert_eq!(v["object"], "s-1");
        assert_eq!(v["action"], "revoke_session");
        assert_eq!(v["actor"], "admin@127.0.0.1:9");
    }
}
