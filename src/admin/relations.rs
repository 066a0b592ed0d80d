//! Admin API for pushed relations (`relations.NAME.push`): add, remove and
//! list tuples. A backend calls it when an assignment changes (an agent
//! picks up or leaves a conversation), so the gateway can decide
//! `relation:NAME(...)` without asking anyone per request.
//!
//! Owns the request bodies and their validation. Must not decide: the
//! tuples go to the session store's shared records, which the relations
//! stage (`crate::relations`) reads per request.

use std::time::Duration;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Resp, error, reply};
use crate::config::{PushSource, RelationSource, Runtime, parse_duration};
use crate::relations::{parse_tuple_key, tuple_key, tuple_ns, tuple_op};
use crate::route::decode_param;
use crate::session::{SharedOp, Store, StoreError, now_ms};

/// A push body larger than this is refused (413).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Tuples in one call at most.
pub const MAX_TUPLES: usize = 10_000;

/// One tuple as the API takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TupleIn {
    subject: String,
    #[serde(default)]
    issuer: Option<String>,
    object: Objects,
    /// Only on additions: `30m`, `8h`, …
    #[serde(default)]
    ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Objects {
    One(String),
    Many(Vec<String>),
}

/// A push body: one tuple (added), or a batch.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Body {
    Batch(Batch),
    One(TupleIn),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    #[serde(default)]
    add: Vec<TupleIn>,
    #[serde(default)]
    remove: Vec<TupleIn>,
}

/// A validated tuple.
struct Tuple {
    issuer: String,
    subject: String,
    object: Vec<String>,
    exp_ms: Option<u64>,
}

impl Tuple {
    fn key(&self) -> String {
        tuple_key(&self.issuer, &self.subject, &self.object)
    }

    fn json(&self) -> Value {
        json!({
            "subject": self.subject,
            "issuer": self.issuer,
            "object": self.object,
            "expires_at_ms": self.exp_ms,
        })
    }
}

type Refused = (StatusCode, &'static str, String);

fn bad(code: &'static str, reason: String) -> Refused {
    (StatusCode::BAD_REQUEST, code, reason)
}

fn validate(rt: &Runtime, src: &PushSource, t: TupleIn, adding: bool) -> Result<Tuple, Refused> {
    if t.subject.is_empty() {
        return Err(bad("bad_request", "subject is empty".into()));
    }
    let object = match t.object {
        Objects::One(o) => vec![o],
        Objects::Many(v) => v,
    };
    if object.is_empty() {
        return Err(bad("bad_request", "object is empty".into()));
    }
    let issuers = rt.auth.issuers();
    let issuer = match t.issuer {
        Some(i) if issuers.iter().any(|x| x.iss == i) => i,
        Some(i) => {
            return Err(bad(
                "unknown_issuer",
                format!("issuer {i:?} is not configured"),
            ));
        }
        None if issuers.len() == 1 => issuers[0].iss.clone(),
        None => {
            return Err(bad(
                "issuer_required",
                "several issuers are configured: say which one the subject belongs to".into(),
            ));
        }
    };
    let exp_ms = if adding {
        let ttl = match &t.ttl {
            Some(v) => {
                Some(parse_duration(v).map_err(|e| bad("bad_request", format!("ttl: {e}")))?)
            }
            None => src.default_ttl,
        };
        if let (Some(ttl), Some(max)) = (ttl, src.max_ttl)
            && ttl > max
        {
            return Err(bad(
                "ttl_too_long",
                format!("ttl is above this relation's max_ttl ({})", secs(max)),
            ));
        }
        match ttl {
            Some(d) if d.is_zero() => return Err(bad("bad_request", "ttl must be above 0".into())),
            Some(d) => Some(now_ms().saturating_add(d.as_millis() as u64)),
            None => None,
        }
    } else {
        if t.ttl.is_some() {
            return Err(bad("bad_request", "ttl only applies to additions".into()));
        }
        None
    };
    Ok(Tuple {
        issuer,
        subject: t.subject,
        object,
        exp_ms,
    })
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// `GET|POST|DELETE /relations/{name}`. Returns the response and, for a
/// change, the audit line's action and result.
pub async fn handle(
    rt: &Runtime,
    store: &Store,
    method: &Method,
    name: &str,
    query: Option<&str>,
    body: Option<&[u8]>,
) -> (Resp, Option<(&'static str, Value)>) {
    let src = match rt.relations.get(name) {
        Some(RelationSource::Push(p)) => p,
        Some(RelationSource::Pull(_)) => {
            return (
                error(
                    StatusCode::CONFLICT,
                    "relation_not_pushed",
                    "this relation is pulled from an upstream; only `push` relations take tuples",
                ),
                None,
            );
        }
        None => {
            return (
                error(
                    StatusCode::NOT_FOUND,
                    "unknown_relation",
                    "no relation of that name",
                ),
                None,
            );
        }
    };
    match *method {
        Method::GET => (list(store, name, query), None),
        Method::POST | Method::DELETE => {
            let body = body.unwrap_or_default();
            let parsed: Result<Body, _> = serde_json::from_slice(body);
            let (add, remove) = match (method, parsed) {
                (&Method::POST, Ok(Body::One(t))) => (vec![t], vec![]),
                (&Method::POST, Ok(Body::Batch(b))) => (b.add, b.remove),
                (&Method::DELETE, Ok(Body::One(t))) => (vec![], vec![t]),
                (&Method::DELETE, Ok(Body::Batch(b))) if b.add.is_empty() => (vec![], b.remove),
                (_, Ok(_)) => {
                    return (
                        error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            "DELETE only removes tuples",
                        ),
                        None,
                    );
                }
                (_, Err(e)) => {
                    return (
                        error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            &format!("body is not a tuple or a batch: {e}"),
                        ),
                        None,
                    );
                }
            };
            match change(rt, store, src, name, add, remove).await {
                Ok(result) => (
                    reply(StatusCode::OK, result.clone()),
                    Some(("push_relation", result)),
                ),
                Err((status, code, reason)) => (error(status, code, &reason), None),
            }
        }
        _ => (
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "see the README's admin API",
            ),
            None,
        ),
    }
}

async fn change(
    rt: &Runtime,
    store: &Store,
    src: &PushSource,
    name: &str,
    add: Vec<TupleIn>,
    remove: Vec<TupleIn>,
) -> Result<Value, Refused> {
    if add.is_empty() && remove.is_empty() {
        return Err(bad("bad_request", "nothing to add or remove".into()));
    }
    if add.len() + remove.len() > MAX_TUPLES {
        return Err(bad(
            "bad_request",
            format!("at most {MAX_TUPLES} tuples per call"),
        ));
    }
    // Validated as a whole before anything is written.
    let add = add
        .into_iter()
        .map(|t| validate(rt, src, t, true))
        .collect::<Result<Vec<_>, _>>()?;
    let remove = remove
        .into_iter()
        .map(|t| validate(rt, src, t, false))
        .collect::<Result<Vec<_>, _>>()?;
    let now = now_ms();
    let ns = tuple_ns(name);
    let existed: Vec<bool> = remove
        .iter()
        .map(|t| store.shared().contains(&ns, &t.key(), now))
        .collect();
    // Removals first: a batch that removes and re-adds a tuple keeps it.
    let mut ops: Vec<SharedOp> = remove
        .iter()
        .map(|t| tuple_op(name, t.key(), None))
        .collect();
    ops.extend(add.iter().map(|t| tuple_op(name, t.key(), Some(t.exp_ms))));
    store.shared_apply(ops).await.map_err(|e: StoreError| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "session_store_unavailable",
            e.0,
        )
    })?;
    let removed: Vec<Value> = remove
        .iter()
        .zip(existed)
        .map(|(t, existed)| {
            let mut v = t.json();
            v["existed"] = json!(existed);
            v
        })
        .collect();
    Ok(json!({
        "relation": name,
        "added": add.iter().map(Tuple::json).collect::<Vec<_>>(),
        "removed": removed,
    }))
}

/// The live tuples, optionally of one subject (and issuer).
fn list(store: &Store, name: &str, query: Option<&str>) -> Resp {
    let mut subject = None;
    let mut issuer = None;
    for pair in query.unwrap_or_default().split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "subject" => subject = Some(decode_param(v)),
            "issuer" => issuer = Some(decode_param(v)),
            _ => {}
        }
    }
    let tuples: Vec<Value> = store
        .shared()
        .list(&tuple_ns(name), now_ms())
        .into_iter()
        .filter_map(|(k, e)| {
            let (i, s, object) = parse_tuple_key(&k)?;
            let keep = subject.as_deref().is_none_or(|x| x == s)
                && issuer.as_deref().is_none_or(|x| x == i);
            keep.then(|| {
                json!({ "subject": s, "issuer": i, "object": object, "expires_at_ms": e.exp_ms })
            })
        })
        .collect();
    reply(
        StatusCode::OK,
        json!({ "relation": name, "tuples": tuples }),
    )
}
