//! Sessions belong to one user: issuer + subject + session id. A token of
//! another subject (or issuer) carrying someone else's `sid` gets a session
//! of its own and can never read, touch, extend or end the other one: not
//! by logging out, not by its requests, not through a second gateway on
//! the same Redis. Also: the admin API's revocation by id, deactivation
//! ending every session for good, and the not-before cut-off refusing
//! tokens issued before a deactivation after the reactivation. Real
//! gateways, real upstream, real redis-server; short timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const RULES: &str = r#"
roles:
  viewer: { grants: [bot.flows.view] }
  quick: { idle_timeout: 1s }
routes:
  - { name: flows, match: { methods: [GET], path: "/bots/{bot}/flows" }, require: bot.flows.view }
"#;

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// A gateway (library server, loopback) with an admin listener; `store`:
/// `None` for the embedded store, else a Redis URL.
async fn gateway(upstream: SocketAddr, store: Option<&str>) -> Gw {
    let dir = scratch_dir("owner");
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    std::fs::write(dir.join("admin.token"), ADMIN_TOKEN).unwrap();
    let store = store
        .map(|u| format!("  store: \"{u}\"\n"))
        .unwrap_or_default();
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{}upstreams:\n  app: {{ url: \"http://{upstream}\" }}\nrules: rules.yaml\n\
         admin: {{ addr: \"127.0.0.1:0\", token_file: admin.token }}\n\
         sessions:\n  idle_timeout: 10s\n  flush_interval: 50ms\n  state_dir: state\n{store}",
        identity_yaml()
    );
    start_with_config(&dir, &cfg).await
}

fn tok(sub: &str, sid: &str, roles: &[&str]) -> String {
    token_with(json!({ "sub": sub, "sid": sid, "roles": roles }))
}

async fn flows(gw: &Gw, t: &str) -> Resp {
    req(gw.addr, "GET", "/bots/1/flows", Some(t), &[]).await
}

async fn logout(gw: &Gw, t: &str) -> Resp {
    req(gw.addr, "POST", "/.rolegate/logout", Some(t), &[]).await
}

async fn admin(gw: &Gw, method: &str, path: &str) -> Resp {
    req(gw.admin.unwrap(), method, path, Some(ADMIN_TOKEN), &[]).await
}

fn refused(r: &Resp) -> (u16, String, String) {
    let reason = r.json()["reason"].as_str().unwrap_or_default().to_string();
    (r.status, r.error(), reason)
}

fn ended(reason: &str) -> (u16, String, String) {
    (401, "session_ended".into(), reason.into())
}

/// The attack, on one gateway or across two (`a` and `b` may be the same).
async fn another_subject_cannot_touch_the_session(a: &Gw, b: &Gw) {
    let alice = tok("alice", "shared-sid", &["viewer"]);
    // Mallory holds a token of her own whose `sid` is Alice's, with a 1 s
    // idle timeout.
    let mallory = tok("mallory", "shared-sid", &["viewer", "quick"]);
    assert_eq!(flows(a, &alice).await.status, 200);
    // Mallory's requests are her own session: allowed, and they neither
    // end nor shorten Alice's.
    assert_eq!(flows(b, &mallory).await.status, 200);
    // Her logout ends only her own session.
    assert_eq!(logout(b, &mallory).await.status, 200);
    assert_eq!(refused(&flows(b, &mallory).await), ended("logout"));
    assert_eq!(refused(&flows(a, &mallory).await), ended("logout"));
    // Alice's session is alive on both gateways, also past Mallory's 1 s
    // idle timeout (it was not written onto Alice's session).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(flows(a, &alice).await.status, 200);
    assert_eq!(flows(b, &alice).await.status, 200);
    // The same sid from another issuer (same subject name even) is yet
    // another session.
    let other_iss = sign(
        Algorithm::HS256,
        None,
        &claims(
            ISS_HMAC,
            json!({ "sub": "alice", "sid": "shared-sid", "roles": ["viewer"] }),
        ),
    );
    assert_eq!(flows(b, &other_iss).await.status, 200);
    assert_eq!(logout(b, &other_iss).await.status, 200);
    assert_eq!(flows(a, &alice).await.status, 200);
    // Alice logs out: her refusal is hers; a new token of Mallory with the
    // same sid learns nothing of it (it is her own, ended, session).
    assert_eq!(logout(a, &alice).await.status, 200);
    assert_eq!(refused(&flows(b, &alice).await), ended("logout"));
    let eve = tok("eve", "shared-sid", &["viewer"]);
    assert_eq!(flows(b, &eve).await.status, 200);
    // The listing shows each user only their own sessions (a user is a
    // subject: "alice" at both issuers), each with its issuer.
    for (user, n) in [("alice", 2), ("mallory", 1), ("eve", 1)] {
        let l = admin(a, "GET", &format!("/users/{user}/sessions"))
            .await
            .json();
        assert_eq!(l["sessions"].as_array().unwrap().len(), n, "{user}: {l}");
    }
    let l = admin(a, "GET", "/users/alice/sessions").await.json();
    let mut issuers: Vec<&str> = l["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["issuer"].as_str().unwrap())
        .collect();
    issuers.sort();
    assert_eq!(issuers, [ISS_HMAC, ISS_RSA]);
}

#[tokio::test]
async fn embedded_another_subject_with_the_same_sid_cannot_end_or_touch_the_session() {
    let up = Upstream::start().await;
    let gw = gateway(up.addr, None).await;
    another_subject_cannot_touch_the_session(&gw, &gw).await;
}

#[tokio::test]
async fn redis_another_subject_with_the_same_sid_cannot_end_or_touch_the_session() {
    let redis = TestRedis::start();
    let up = Upstream::start().await;
    let a = gateway(up.addr, Some(&redis.url())).await;
    let b = gateway(up.addr, Some(&redis.url())).await;
    another_subject_cannot_touch_the_session(&a, &b).await;
}

/// `POST /sessions/{id}/revoke`: every session with that id, of any user;
/// an id never seen is revoked ahead (`was_active: false`).
async fn revoke_by_id(a: &Gw, b: &Gw) {
    let r = admin(a, "POST", "/sessions/never-seen/revoke").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["was_active"], false, "{}", r.json());
    assert_eq!(r.json()["revoked"], true);
    let ghost = tok("carol", "never-seen", &["viewer"]);
    assert_eq!(refused(&flows(b, &ghost).await), ended("revoked"));

    let alice = tok("alice", "dup", &["viewer"]);
    let bob = tok("bob", "dup", &["viewer"]);
    let keep = tok("alice", "other", &["viewer"]);
    for t in [&alice, &bob, &keep] {
        assert_eq!(flows(a, t).await.status, 200);
    }
    let r = admin(b, "POST", "/sessions/dup/revoke").await.json();
    assert_eq!(r["was_active"], true, "{r}");
    for gw in [a, b] {
        for t in [&alice, &bob] {
            within(Duration::from_secs(1), || async {
                refused(&flows(gw, t).await) == ended("revoked")
            })
            .await;
        }
        assert_eq!(flows(gw, &keep).await.status, 200);
    }
    // Nothing active any more under that id.
    let r = admin(a, "POST", "/sessions/dup/revoke").await.json();
    assert_eq!(r["was_active"], false, "{r}");
}

#[tokio::test]
async fn embedded_revoking_a_session_id_ends_it_for_every_user_and_reports_was_active() {
    let up = Upstream::start().await;
    let gw = gateway(up.addr, None).await;
    revoke_by_id(&gw, &gw).await;
}

#[tokio::test]
async fn redis_revoking_a_session_id_ends_it_for_every_user_and_reports_was_active() {
    let redis = TestRedis::start();
    let up = Upstream::start().await;
    let a = gateway(up.addr, Some(&redis.url())).await;
    let b = gateway(up.addr, Some(&redis.url())).await;
    revoke_by_id(&a, &b).await;
}

/// Deactivation ends every session of the user: after reactivation the
/// old tokens (with a `sid`, and without `sid`/`jti`, whose session id is
/// the token's digest) stay refused; only a new login works.
async fn deactivation_ends_sessions_for_good(a: &Gw, b: &Gw) {
    let with_sid = tok("dave", "d-1", &["viewer"]);
    let no_sid = token_with(json!({ "sub": "dave", "sid": null, "roles": ["viewer"] }));
    let other = tok("erin", "e-1", &["viewer"]);
    for t in [&with_sid, &no_sid, &other] {
        assert_eq!(flows(a, t).await.status, 200);
    }
    assert_eq!(admin(b, "POST", "/users/dave/deactivate").await.status, 200);
    for gw in [a, b] {
        within(Duration::from_secs(1), || async {
            flows(gw, &with_sid).await.error() == "user_deactivated"
        })
        .await;
    }
    let r = admin(a, "POST", "/users/dave/reactivate").await.json();
    assert_eq!(r["changed"], true);
    for gw in [a, b] {
        within(Duration::from_secs(1), || async {
            // A new login: issued after the deactivation's second.
            let new = token_with(json!({ "sub": "dave", "sid": "d-new", "roles": ["viewer"] }));
            flows(gw, &new).await.status == 200
        })
        .await;
        for t in [&with_sid, &no_sid] {
            assert_eq!(refused(&flows(gw, t).await), ended("revoked"));
        }
        assert_eq!(flows(gw, &other).await.status, 200);
    }
    let l = admin(a, "GET", "/users/dave/sessions").await.json();
    let states: Vec<&str> = l["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.iter().filter(|s| **s == "ended").count(), 2, "{l}");
}

#[tokio::test]
async fn embedded_reactivation_does_not_revive_sessions_held_before_deactivation() {
    let up = Upstream::start().await;
    let gw = gateway(up.addr, None).await;
    deactivation_ends_sessions_for_good(&gw, &gw).await;
}

#[tokio::test]
async fn redis_reactivation_does_not_revive_sessions_held_before_deactivation() {
    let redis = TestRedis::start();
    let up = Upstream::start().await;
    let a = gateway(up.addr, Some(&redis.url())).await;
    let b = gateway(up.addr, Some(&redis.url())).await;
    deactivation_ends_sessions_for_good(&a, &b).await;
}

/// The not-before cut-off: a token issued before a deactivation but first
/// presented after the reactivation (no session was there to end) is
/// refused, as is one without `iat`; one issued in the deactivation's own
/// second or later (a new login) works.
async fn tokens_issued_before_a_deactivation_stay_refused(a: &Gw, b: &Gw) {
    let iat = |sid: &str, iat: Value| {
        token_with(json!({ "sub": "frank", "sid": sid, "roles": ["viewer"], "iat": iat }))
    };
    // Issued a second ago, presented for the first time after the
    // reactivation.
    let before = iat("f-old", json!(now() - 1));
    let no_iat = iat("f-no-iat", Value::Null);
    // Issued a second ago with the session id the new login will have.
    let before_same_sid = iat("f-new", json!(now() - 1));
    // A malformed `iat` is an invalid token, deactivation or not.
    let r = flows(a, &iat("f-bad", json!("yesterday"))).await;
    assert_eq!((r.status, r.error().as_str()), (401, "invalid_token"));
    // So is one issued in the future beyond the leeway (5 s here): it would
    // pass any later cut-off. Within the leeway it is clock skew.
    let r = flows(a, &iat("f-future", json!(now() + 3600))).await;
    assert_eq!((r.status, r.error().as_str()), (401, "invalid_token"));
    let skewed =
        token_with(json!({ "sub": "heidi", "sid": "h-1", "roles": ["viewer"], "iat": now() + 3 }));
    assert_eq!(flows(a, &skewed).await.status, 200);
    // No deactivation yet: no cut-off, and a token without `iat` works.
    let grace =
        token_with(json!({ "sub": "grace", "sid": "g-1", "roles": ["viewer"], "iat": null }));
    assert_eq!(flows(a, &grace).await.status, 200);
    let l = admin(a, "GET", "/users/frank/sessions").await.json();
    assert_eq!(l["not_before_ms"], Value::Null, "{l}");

    assert_eq!(
        admin(b, "POST", "/users/frank/deactivate").await.status,
        200
    );
    assert_eq!(
        admin(a, "POST", "/users/frank/reactivate").await.status,
        200
    );
    let l = admin(a, "GET", "/users/frank/sessions").await.json();
    assert_eq!(l["deactivated"], false, "{l}");
    let nb = l["not_before_ms"].as_u64().expect("not_before_ms");
    let second = nb / 1000;
    assert!(second >= now() - 1, "the test took over a second");
    // A new login right after the reactivation, in the deactivation's own
    // second: `iat` has whole seconds, and this must work.
    let new_login = iat("f-new", json!(second));
    for gw in [a, b] {
        within(Duration::from_secs(1), || async {
            flows(gw, &new_login).await.status == 200
        })
        .await;
        for t in [&before, &no_iat, &before_same_sid] {
            assert_eq!(refused(&flows(gw, t).await), ended("revoked"));
        }
        // The new login's session is not harmed by the refusals.
        assert_eq!(flows(gw, &new_login).await.status, 200);
        let l = admin(gw, "GET", "/users/frank/sessions").await.json();
        assert_eq!(l["not_before_ms"], nb, "{l}");
    }
    // The refused tokens made no session: only the new login's is listed.
    let l = admin(b, "GET", "/users/frank/sessions").await.json();
    let sessions: Vec<&str> = l["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session"].as_str().unwrap())
        .collect();
    assert_eq!(sessions, ["f-new"], "{l}");
    // Other users are not concerned.
    assert_eq!(flows(b, &grace).await.status, 200);
}

#[tokio::test]
async fn embedded_tokens_issued_before_a_deactivation_stay_refused_after_reactivation() {
    let up = Upstream::start().await;
    let gw = gateway(up.addr, None).await;
    tokens_issued_before_a_deactivation_stay_refused(&gw, &gw).await;
}

#[tokio::test]
async fn redis_tokens_issued_before_a_deactivation_stay_refused_after_reactivation() {
    let redis = TestRedis::start();
    let up = Upstream::start().await;
    let a = gateway(up.addr, Some(&redis.url())).await;
    let b = gateway(up.addr, Some(&redis.url())).await;
    tokens_issued_before_a_deactivation_stay_refused(&a, &b).await;
}

// ------------------------------------------------------------------ helpers

/// Polls until `f` is true (panics after `limit`).
async fn within<F, Fut>(limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not met within {limit:?}");
}
