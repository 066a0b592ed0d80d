//! Who is calling the admin API: the operator, with the admin token, or a
//! user acting with their own bearer token (a bot's Super Admin choosing
//! masked columns, a Partner Admin managing the partner's users). A user
//! token is verified exactly as on the public listener — signature, issuer,
//! audience, expiry — and its session must be active (a logged-out or
//! deactivated user cannot act); then each endpoint checks the capability
//! it needs with the policy, on the resource it acts on.
//!
//! Owns the caller's identification and the capability check. Must not:
//! decide what an endpoint allows (the endpoint names the capability), or
//! accept the credential cookie (a browser's ambient cookie would make the
//! admin API forgeable cross-site).

use std::net::SocketAddr;

use http::{HeaderMap, StatusCode, header};
use serde_json::Value;

use super::{Resp, error, token_matches};
use crate::config::Runtime;
use crate::policy::{self, NoRelations, Principal, Requirement, RoutePolicy};
use crate::proxy::Gateway;

/// An identified caller.
pub enum Caller {
    /// The admin token: every endpoint.
    Operator,
    /// A user's verified token with an active session: only endpoints that
    /// say which capability they need.
    User(std::sync::Arc<Principal>),
}

impl Caller {
    /// The audit line's `actor`.
    pub fn actor(&self, peer: SocketAddr) -> String {
        match self {
            Caller::Operator => format!("admin@{peer}"),
            Caller::User(p) => format!("user:{}@{peer}", p.subject),
        }
    }

    /// Whether the caller may act with `capability` on the resource
    /// `scope` (`("bot", "42")`), or globally when `None`. The operator
    /// always may.
    pub fn may(&self, rt: &Runtime, capability: &str, scope: Option<(&str, &str)>) -> bool {
        match self {
            Caller::Operator => true,
            Caller::User(p) => holds(rt, p, capability, scope),
        }
    }
}

/// Whether `p` holds `capability` on `scope` under the loaded policy
/// (roles, includes, profiles, scoped bindings, grants), as a route that
/// requires it with that scope would decide.
pub fn holds(rt: &Runtime, p: &Principal, capability: &str, scope: Option<(&str, &str)>) -> bool {
    let route = RoutePolicy {
        name: "admin".into(),
        public: false,
        require: Some(Requirement::Capability(capability.to_string())),
        scope: scope.map(|(kind, _)| (kind.to_string(), "id".to_string())),
    };
    let params: Vec<(String, String)> = scope
        .map(|(_, id)| vec![("id".to_string(), id.to_string())])
        .unwrap_or_default();
    policy::decide(&rt.policy, p, &route, &params, &NoRelations).is_allow()
}

/// Identifies the caller from `Authorization: Bearer …` (exactly one such
/// header): the admin token, or a user's token with an active session.
/// Anything else is 401 (503 when the session store cannot answer).
pub async fn identify(
    gw: &Gateway,
    rt: &Runtime,
    headers: &HeaderMap,
    admin_token: &str,
) -> Result<Caller, Resp> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let bearer = match (values.next(), values.next()) {
        (Some(v), None) => v
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim()),
        _ => None,
    };
    let Some(token) = bearer else {
        return Err(unauthorized(
            "admin token or a user's bearer token required",
        ));
    };
    if token_matches(token, admin_token) {
        return Ok(Caller::Operator);
    }
    // Only the Authorization header is looked at: the credential cookie is
    // never a credential here.
    let mut only_bearer = HeaderMap::new();
    for v in headers.get_all(header::AUTHORIZATION) {
        only_bearer.append(header::AUTHORIZATION, v.clone());
    }
    let v = match rt.auth.authenticate(&only_bearer) {
        Ok(v) if !v.from_cookie => v,
        _ => return Err(unauthorized("admin token or a valid user token required")),
    };
    // A directory entry is the caller's principal too (a Partner Admin's
    // memberships and roles as the directory says).
    let v = match gw.directory_principal(rt, v) {
        Ok(v) => v,
        Err(refusal) => return Err(refusal_answer(&refusal)),
    };
    // Fail closed even under `on_store_error: allow`: a revoked admin
    // must not keep acting while the store is away.
    if let Err(refusal) = gw.session_strict(rt, &v).await {
        return Err(refusal_answer(&refusal));
    }
    Ok(Caller::User(v.principal))
}

/// A refused user caller: 503 when the store cannot answer, else 401 with
/// the session stage's code (`session_ended`, `user_deactivated`, …).
fn refusal_answer(refusal: &crate::error::Refusal) -> Resp {
    let status = refusal.status();
    let (status, code) = if status == StatusCode::SERVICE_UNAVAILABLE {
        (status, "session_store_unavailable")
    } else {
        (StatusCode::UNAUTHORIZED, refusal.code())
    };
    error(status, code, refusal.generic_reason())
}

fn unauthorized(reason: &str) -> Resp {
    let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", reason);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"rolegate-admin\""),
    );
    r
}

/// The 403 for a user calling what needs another capability.
pub fn forbidden(what: &str) -> Resp {
    error(StatusCode::FORBIDDEN, "forbidden", what)
}

/// One audit line per state-changing call (target `rolegate::audit`). The
/// acted-on session id, user or relation is `object`, not `target`: JSON
/// log lines already carry the log target under `target`, and a second
/// `target` key would make the line ambiguous.
pub fn audit(caller: &Caller, peer: SocketAddr, action: &str, object: &str, result: &Value) {
    tracing::info!(target: "rolegate::audit", actor = %caller.actor(peer), action, object, result = %result, at_ms = crate::session::now_ms(), "admin action");
}
