//! `rolegate explain`: the decision for one request, offline, with the full
//! trace — the same normalise → route → policy code the proxy runs.
//!
//! Owns only the report's shape (JSON, and a text rendering of it).

use serde_json::{Value, json};

use crate::config::Runtime;
use crate::error::{Deny, Refusal};
use crate::policy::{self, Decision, Principal, Relations};
use crate::route::canonicalize;

/// The credentials to explain with.
pub enum Credential<'a> {
    /// A JWT, verified like the proxy does (signature, exp, iss, aud).
    Token(&'a str),
    /// A claims object, *not* verified: what-if analysis.
    Claims(&'a str),
}

/// Splits `http://host[:port]/path?q` or `/path?q` into (host, path-and-query).
pub fn split_url(url: &str) -> (Option<String>, String) {
    for scheme in ["http://", "https://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let (authority, pq) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let host = authority
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(authority);
            return (Some(host.to_ascii_lowercase()), pq.to_string());
        }
    }
    (None, url.to_string())
}

/// Builds the explain report for `METHOD URL` with `cred`.
pub fn explain(
    rt: &Runtime,
    method: &str,
    url: &str,
    cred: Credential<'_>,
    relations: &dyn Relations,
) -> Value {
    let (host, pq) = split_url(url);
    let mut report = json!({ "request": { "method": method, "url": url, "host": host } });

    let finish = |mut report: Value, refusal: Option<Refusal>| {
        match refusal {
            None => {
                report["decision"] = json!("allow");
                report["status"] = json!(200);
            }
            Some(r) => {
                report["decision"] = json!("deny");
                report["status"] = json!(r.status().as_u16());
                report["error"] = json!(r.code());
                report["detail"] = json!(r.detail());
                report["reason"] = json!(r.to_string());
            }
        }
        report
    };

    // 1 normalize (the method as sent: methods are case-sensitive)
    if crate::route::is_miscased_method(method) {
        let bad = crate::error::Deny::BadRequest(crate::error::BadRequest::MethodCase);
        return finish(report, Some(bad.into()));
    }
    let canon = match canonicalize(&pq, &rt.canon) {
        Ok(c) => c,
        Err(e) => return finish(report, Some(Deny::BadTarget(e).into())),
    };
    report["normalized"] = json!({ "path": canon.path, "query": canon.query });

    // 2 route
    let not_matched: Vec<Value> = rt
        .router
        .why_not(host.as_deref(), method, canon.routing_path())
        .into_iter()
        .map(|(i, why)| json!({ "route": &*rt.routes[i].name, "why": why }))
        .collect();
    report["not_matched"] = json!(not_matched);
    let Some(m) = rt.router.at(host.as_deref(), method, canon.routing_path()) else {
        return finish(report, Some(Deny::NoRoute.into()));
    };
    let route = &rt.routes[m.route];
    let params: serde_json::Map<String, Value> = m
        .params
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    report["route"] = json!({
        "name": &*route.name,
        "defined_at": route.origin,
        "upstream": rt.upstreams[route.upstream].name,
        "params": params,
        "public": route.policy.public,
        "require": route.policy.require.as_ref().map(|r| r.to_string()),
        "scope": route.policy.scope.as_ref().map(|(k, p)| format!("{k}:{{{p}}}")),
    });
    if route.policy.public {
        report["principal"] = Value::Null;
        return finish(report, None);
    }

    // 3 authenticate
    let principal: Principal = match cred {
        Credential::Token(t) => match rt.auth.verify(t) {
            Ok((p, _)) => (*p).clone(),
            Err(e) => return finish(report, Some(Deny::Unauthenticated(e).into())),
        },
        Credential::Claims(text) => {
            let claims: serde_json::Map<String, Value> = match serde_json::from_str(text) {
                Ok(c) => c,
                Err(e) => {
                    report["claims_error"] = json!(e.to_string());
                    return finish(
                        report,
                        Some(Deny::Unauthenticated(crate::auth::AuthError::Malformed).into()),
                    );
                }
            };
            match rt.auth.principal_from_claims(&claims) {
                Ok(p) => p,
                Err(e) => return finish(report, Some(Deny::Unauthenticated(e).into())),
            }
        }
    };
    report["principal"] = json!({
        "subject": principal.subject,
        "issuer": principal.issuer,
        "session": principal.session,
        "roles": principal.roles,
        "partners": principal.partners,
        "teams": principal.teams,
        "profiles": principal.profiles,
        "grants": principal.grants,
    });

    // 5 authorize
    let (decision, trace) =
        policy::explain(&rt.policy, &principal, &route.policy, &m.params, relations);
    report["trace"] = json!({
        "bindings": trace.bindings.iter().map(|b| format!("{b}")).collect::<Vec<_>>(),
        "capabilities": trace.capabilities.iter().map(|(c, s)| json!({ "capability": c, "from": s })).collect::<Vec<_>>(),
        "scope": trace.scope,
        "requirement": trace.requirement,
    });
    if let Some(mk) = &route.mask {
        let unmasked =
            policy::decide(&rt.policy, &principal, &mk.unmask, &m.params, relations).is_allow();
        report["mask"] = json!({
            "policy": mk.policy.name,
            "unmask_with": mk.unmask.require.as_ref().map(|r| r.to_string()),
            "masked": !unmasked,
        });
    }
    match decision {
        Decision::Allow => finish(report, None),
        Decision::Deny(d) => finish(report, Some(Deny::Forbidden(d).into())),
    }
}

/// Human-readable rendering of the report.
pub fn render_text(r: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    out.push_str(&format!(
        "request     {} {}\n",
        s(&r["request"]["method"]),
        s(&r["request"]["url"])
    ));
    if let Some(n) = r.get("normalized") {
        out.push_str(&format!("normalized  {}", s(&n["path"])));
        if let Some(q) = n["query"].as_str() {
            out.push_str(&format!("?{q}"));
        }
        out.push('\n');
    }
    if let Some(route) = r.get("route") {
        out.push_str(&format!(
            "route       {} ({}) -> upstream {}\n",
            s(&route["name"]),
            s(&route["defined_at"]),
            s(&route["upstream"])
        ));
        out.push_str(&format!("  params    {}\n", route["params"]));
        out.push_str(&format!("  require   {}\n", s(&route["require"])));
        if !route["scope"].is_null() {
            out.push_str(&format!("  scope     {}\n", s(&route["scope"])));
        }
    }
    if let Some(list) = r.get("not_matched").and_then(Value::as_array) {
        for nm in list {
            out.push_str(&format!("  not {}: {}\n", s(&nm["route"]), s(&nm["why"])));
        }
    }
    if let Some(p) = r.get("principal").filter(|p| !p.is_null()) {
        out.push_str(&format!(
            "principal   {} (issuer {})\n",
            s(&p["subject"]),
            s(&p["issuer"])
        ));
        for k in ["roles", "partners", "teams", "profiles", "grants"] {
            out.push_str(&format!("  {k:<9} {}\n", p[k]));
        }
    }
    if let Some(t) = r.get("trace") {
        out.push_str("bindings\n");
        for b in t["bindings"].as_array().into_iter().flatten() {
            out.push_str(&format!("  {}\n", s(b)));
        }
        out.push_str("capabilities\n");
        for c in t["capabilities"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {:<40} from {}\n",
                s(&c["capability"]),
                s(&c["from"])
            ));
        }
        if !t["scope"].is_null() {
            out.push_str(&format!("scope       {}\n", s(&t["scope"])));
        }
        out.push_str("requirement\n");
        for line in t["requirement"].as_array().into_iter().flatten() {
            out.push_str(&format!("  {}\n", s(line)));
        }
    }
    if let Some(mk) = r.get("mask") {
        let how = if mk["masked"] == true {
            "masked"
        } else {
            "unmasked (audited)"
        };
        out.push_str(&format!(
            "mask        {} ({}): response {how}\n",
            s(&mk["policy"]),
            s(&mk["unmask_with"])
        ));
    }
    out.push_str(&format!(
        "decision    {} (status {})",
        s(&r["decision"]).to_uppercase(),
        s(&r["status"])
    ));
    if let Some(reason) = r.get("reason") {
        out.push_str(&format!(
            ": {} [{}] {}",
            s(&r["error"]),
            s(&r["detail"]),
            s(reason)
        ));
    }
    out.push('\n');
    out
}
