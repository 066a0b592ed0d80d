//! Sessions end to end (embedded store): per-role idle timeouts, passive
//! routes, ended sessions staying ended, logout, the admin API, restarts
//! (graceful and `kill -9`) and concurrent requests around the expiry
//! instant. Real gateway, real upstream, short timeouts.

mod common;
#[path = "sessions/journal.rs"]
mod journal;
#[path = "sessions/ownership.rs"]
mod ownership;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const RULES: &str = r#"
roles:
  viewer: { grants: [bot.flows.view] }
  quick: { idle_timeout: 1s }
  slow: { idle_timeout: 5s }
  quick-bot: { scope: bot, idle_timeout: 1s }
routes:
  - { name: flows, match: { methods: [GET], path: "/bots/{bot}/flows" }, require: bot.flows.view }
  - { name: edit, match: { methods: [PUT], path: "/bots/{bot}/flows" }, require: bot.flows.edit }
  - { name: notifications, match: { methods: [GET], path: /api/notifications }, require: bot.flows.view, activity: passive }
  - { name: events, match: { methods: [GET], path: /api/events }, require: bot.flows.view }
  - { name: conversation-events, match: { methods: [GET], path: "/api/conv/{customer}/events" }, require: "relation:active_conversation({customer})" }
"#;

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

fn config(
    dir: &Path,
    upstream: std::net::SocketAddr,
    listen: &str,
    admin: &str,
    extra: &str,
) -> String {
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    std::fs::write(dir.join("admin.token"), ADMIN_TOKEN).unwrap();
    format!(
        "listen: {{ addr: \"{listen}\" }}\n{}upstreams:\n  app: {{ url: \"http://{upstream}\" }}\nrules: rules.yaml\n\
         admin: {{ addr: \"{admin}\", token_file: admin.token }}\n\
         sessions:\n  idle_timeout: 10s\n  flush_interval: 50ms\n  state_dir: state\n{extra}",
        identity_yaml()
    )
}

async fn start(extra: &str) -> (Upstream, Gw) {
    let up = Upstream::start().await;
    let dir = scratch_dir("sess");
    let cfg = config(&dir, up.addr, "127.0.0.1:0", "127.0.0.1:0", extra);
    let gw = start_with_config(&dir, &cfg).await;
    (up, gw)
}

fn tok(sid: &str, roles: &[&str]) -> String {
    token_with(json!({ "sid": sid, "roles": roles }))
}

async fn get(gw: &Gw, path: &str, t: &str) -> Resp {
    req(gw.addr, "GET", path, Some(t), &[]).await
}

/// `GET /bots/1/flows` on gateway `gw` with token `t`.
async fn flows(gw: std::net::SocketAddr, t: &str) -> Resp {
    req(gw, "GET", "/bots/1/flows", Some(t), &[]).await
}

async fn admin(addr: std::net::SocketAddr, method: &str, path: &str) -> Resp {
    req(addr, method, path, Some(ADMIN_TOKEN), &[]).await
}

fn assert_expired(r: &Resp) {
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error(), "session_expired");
    assert_eq!(r.json()["reason"], "idle");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\", error_description=\"session idle timeout\"")
    );
}

#[tokio::test]
async fn idle_timeout_is_the_smallest_among_the_roles_and_ends_the_session_for_good() {
    let (up, gw) = start("").await;
    let short = tok("s-short", &["viewer", "slow", "quick"]);
    let long = tok("s-long", &["viewer", "slow"]);
    assert_eq!(get(&gw, "/bots/1/flows", &short).await.status, 200);
    assert_eq!(get(&gw, "/bots/1/flows", &long).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let before = up.count();
    assert_expired(&get(&gw, "/bots/1/flows", &short).await);
    assert_eq!(
        up.count(),
        before,
        "an expired session reached the upstream"
    );
    // The 5 s role keeps the other session alive.
    assert_eq!(get(&gw, "/bots/1/flows", &long).await.status, 200);
    // Ended for good: the same session id never works again, even with a
    // freshly issued, valid token and a long-timeout role set.
    assert_expired(&get(&gw, "/bots/1/flows", &short).await);
    let reissued = tok("s-short", &["viewer"]);
    assert_eq!(get(&gw, "/bots/1/flows", &reissued).await.status, 401);
    // A fresh login (new session id) works.
    assert_eq!(
        get(
            &gw,
            "/bots/1/flows",
            &tok("s-short-2", &["viewer", "quick"])
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn a_scoped_role_s_idle_timeout_applies_whatever_the_route() {
    let (_up, gw) = start("").await;
    // `quick-bot@bot:1` (1 s) on a route of bot 2, and on bot 1.
    let other_bot = tok("s-scoped-2", &["viewer", "quick-bot@bot:1"]);
    let same_bot = tok("s-scoped-1", &["viewer", "quick-bot@bot:1"]);
    let unscoped = tok("s-unscoped", &["viewer"]);
    assert_eq!(get(&gw, "/bots/2/flows", &other_bot).await.status, 200);
    assert_eq!(get(&gw, "/bots/1/flows", &same_bot).await.status, 200);
    assert_eq!(get(&gw, "/bots/1/flows", &unscoped).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_expired(&get(&gw, "/bots/2/flows", &other_bot).await);
    assert_expired(&get(&gw, "/bots/1/flows", &same_bot).await);
    // Without the role, the default 10 s applies.
    assert_eq!(get(&gw, "/bots/1/flows", &unscoped).await.status, 200);
}

#[tokio::test]
async fn activity_keeps_a_session_alive_and_passive_routes_do_not() {
    let (_up, gw) = start("").await;
    let active = tok("s-active", &["viewer", "quick"]);
    let passive = tok("s-passive", &["viewer", "quick"]);
    for t in [&active, &passive] {
        assert_eq!(get(&gw, "/bots/1/flows", t).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(&gw, "/bots/1/flows", &active).await.status, 200);
    assert_eq!(get(&gw, "/api/notifications", &passive).await.status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    // 1.2 s after its last *active* request the polling session is idle, even
    // though it polled 0.6 s ago; the one touched 0.6 s ago is alive.
    assert_expired(&get(&gw, "/api/notifications", &passive).await);
    assert_eq!(get(&gw, "/bots/1/flows", &active).await.status, 200);
}

#[tokio::test]
async fn denied_requests_do_not_keep_a_session_alive() {
    let (_up, gw) = start("").await;
    let t = tok("s-denied", &["viewer", "quick"]);
    assert_eq!(get(&gw, "/bots/1/flows", &t).await.status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        req(gw.addr, "PUT", "/bots/1/flows", Some(&t), &[])
            .await
            .status,
        403
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_expired(&get(&gw, "/bots/1/flows", &t).await);
}

#[tokio::test]
async fn logout_ends_the_session_and_clears_the_cookie() {
    let (_up, gw) = start("  login_url: \"https://login.example/start\"\n").await;
    let t = tok("s-logout", &["viewer"]);
    assert_eq!(get(&gw, "/bots/1/flows", &t).await.status, 200);
    let r = req(gw.addr, "POST", "/.rolegate/logout", Some(&t), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["logged_out"], true);
    let r = get(&gw, "/bots/1/flows", &t).await;
    assert_eq!((r.status, r.error().as_str()), (401, "session_ended"));
    assert_eq!(r.json()["reason"], "logout");
    // Logout without credentials is refused.
    assert_eq!(
        req(gw.addr, "POST", "/.rolegate/logout", None, &[])
            .await
            .status,
        401
    );

    // Cookie session: the expired cookie is cleared, and a browser
    // navigation is sent to the login page.
    let c = tok("s-cookie", &["viewer", "quick"]);
    let cookie = format!("Cookie: rg_session={c}");
    assert_eq!(
        req(gw.addr, "GET", "/bots/1/flows", None, &[&cookie])
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        None,
        &[&cookie, "Accept: text/html,application/xhtml+xml"],
    )
    .await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://login.example/start"));
    assert!(
        r.header("set-cookie").unwrap().starts_with("rg_session=;"),
        "{:?}",
        r.header("set-cookie")
    );
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    // An API client gets the JSON 401.
    let r = req(gw.addr, "GET", "/bots/1/flows", None, &[&cookie]).await;
    assert_expired(&r);
}

#[tokio::test]
async fn a_page_of_another_site_cannot_log_its_visitor_out() {
    let (_up, gw) = start("").await;
    let c = tok("s-csrf", &["viewer"]);
    let cookie = format!("Cookie: rg_session={c}");
    let with_cookie = [cookie.as_str()];
    let flows = || req(gw.addr, "GET", "/bots/1/flows", None, &with_cookie);
    assert_eq!(flows().await.status, 200);
    // A cross-site form POST carries the cookie and the attacker's Origin.
    for origin in [
        "Origin: https://evil.example",
        "Origin: null",
        "Origin: http://app.test.evil.example",
    ] {
        let r = req(
            gw.addr,
            "POST",
            "/.rolegate/logout",
            None,
            &[&cookie, origin],
        )
        .await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (403, "forbidden"),
            "{origin}"
        );
        assert_eq!(r.json()["reason"], "logout origin not allowed");
        assert_eq!(flows().await.status, 200, "{origin}: the session was ended");
    }
    // The site's own page (same host) logs out.
    let r = req(
        gw.addr,
        "POST",
        "/.rolegate/logout",
        None,
        &[&cookie, "Origin: https://app.test"],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(flows().await.status, 401);
    // A bearer token is not ambient: no Origin check.
    let t = tok("s-csrf-bearer", &["viewer"]);
    let r = req(
        gw.addr,
        "POST",
        "/.rolegate/logout",
        Some(&t),
        &["Origin: https://evil.example"],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn admin_api_revokes_deactivates_and_lists() {
    let (_up, gw) = start("").await;
    let adm = gw.admin.unwrap();
    // Health and readiness need no token; everything else does.
    assert_eq!(req(adm, "GET", "/healthz", None, &[]).await.status, 200);
    assert_eq!(
        req(adm, "GET", "/readyz", None, &[]).await.json()["ready"],
        true
    );
    // Their wrong methods are 405, with or without a token.
    for path in ["/healthz", "/readyz"] {
        let r = req(adm, "POST", path, None, &[]).await;
        assert_eq!((r.status, r.error().as_str()), (405, "method_not_allowed"));
        assert_eq!(admin(adm, "DELETE", path).await.status, 405);
    }
    let r = req(adm, "POST", "/users/alice/deactivate", None, &[]).await;
    assert_eq!((r.status, r.error().as_str()), (401, "unauthorized"));
    let r = req(
        adm,
        "POST",
        "/users/alice/deactivate",
        Some("wrong-token-wrong-token"),
        &[],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(admin(adm, "GET", "/nope").await.status, 404);
    assert_eq!(admin(adm, "GET", "/users/alice/revoke").await.status, 405);

    let alice1 = token_with(json!({ "sub": "alice", "sid": "a-1", "roles": ["viewer"] }));
    let alice2 = token_with(json!({ "sub": "alice", "sid": "a-2", "roles": ["viewer"] }));
    let bob = token_with(json!({ "sub": "bob", "sid": "b-1", "roles": ["viewer"] }));
    for t in [&alice1, &alice2, &bob] {
        assert_eq!(get(&gw, "/bots/1/flows", t).await.status, 200);
    }
    let list = admin(adm, "GET", "/users/alice/sessions").await.json();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(list["sessions"][0]["state"], "active");
    assert!(list["sessions"][0]["idle_seconds"].as_f64().unwrap() < 5.0);

    // Revoke one session.
    let r = admin(adm, "POST", "/sessions/a-1/revoke").await.json();
    assert_eq!(r["revoked"], true);
    let r = get(&gw, "/bots/1/flows", &alice1).await;
    assert_eq!((r.status, r.error().as_str()), (401, "session_ended"));
    assert_eq!(r.json()["reason"], "revoked");
    assert_eq!(get(&gw, "/bots/1/flows", &alice2).await.status, 200);

    // Revoke all sessions of a user.
    assert_eq!(
        admin(adm, "POST", "/users/alice/revoke").await.json()["revoked"],
        1
    );
    assert_eq!(get(&gw, "/bots/1/flows", &alice2).await.status, 401);
    assert_eq!(get(&gw, "/bots/1/flows", &bob).await.status, 200);

    // Deactivate: current and future tokens of bob refused until reactivated.
    assert_eq!(
        admin(adm, "POST", "/users/bob/deactivate").await.json()["deactivated"],
        true
    );
    let r = get(&gw, "/bots/1/flows", &bob).await;
    assert_eq!((r.status, r.error().as_str()), (401, "user_deactivated"));
    // Issued after the deactivation (a new login, `iat` now).
    let bob_new = token_with(json!({ "sub": "bob", "sid": "b-2", "roles": ["viewer"] }));
    assert_eq!(
        get(&gw, "/bots/1/flows", &bob_new).await.error(),
        "user_deactivated"
    );
    // Its logout path too.
    let r = req(gw.addr, "POST", "/.rolegate/logout", Some(&bob_new), &[]).await;
    assert_eq!((r.status, r.error().as_str()), (401, "user_deactivated"));
    assert_eq!(
        admin(adm, "GET", "/users/bob/sessions").await.json()["deactivated"],
        true
    );
    assert_eq!(
        admin(adm, "POST", "/users/bob/reactivate").await.json()["deactivated"],
        false
    );
    assert_eq!(get(&gw, "/bots/1/flows", &bob_new).await.status, 200);
    // Revoking a session id never seen keeps it revoked when it shows up.
    admin(adm, "POST", "/sessions/never-seen/revoke").await;
    let ghost = token_with(json!({ "sub": "carol", "sid": "never-seen", "roles": ["viewer"] }));
    assert_eq!(get(&gw, "/bots/1/flows", &ghost).await.status, 401);
}

#[tokio::test]
async fn concurrent_requests_never_race_an_expired_session_back_to_life() {
    let (_up, gw) = start("").await;
    let t = tok("s-race", &["viewer", "quick"]);
    assert_eq!(get(&gw, "/bots/1/flows", &t).await.status, 200);
    let origin = Instant::now();
    // 60 requests spread over 0.8 s .. 1.4 s after the last activity, on a
    // passive route so none of them moves the expiry instant (1 s), which
    // falls in the middle of them.
    let mut tasks = Vec::new();
    for i in 0..60u64 {
        let (addr, t) = (gw.addr, t.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800 + i * 10)).await;
            let start = origin.elapsed();
            let r = req(addr, "GET", "/api/notifications", Some(&t), &[]).await;
            (start, origin.elapsed(), r.status)
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert!(
        results.iter().any(|r| r.2 == 200),
        "no request landed before the expiry instant"
    );
    let first_401_end = results
        .iter()
        .filter(|r| r.2 == 401)
        .map(|r| r.1)
        .min()
        .expect("the session expired");
    for (start, _, status) in &results {
        assert!(
            !(*status == 200 && *start > first_401_end),
            "a request started after the session was reported expired got 200"
        );
    }
    assert_eq!(get(&gw, "/bots/1/flows", &t).await.status, 401);
}

// ---------------------------------------------------------------- restarts

async fn spawn_serve(dir: &Path, port: u16) -> Proc {
    let proc = Proc(
        Command::new(env!("CARGO_BIN_EXE_rolegate"))
            .args(["serve", "-c", "rolegate.yaml"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port).await;
    proc
}

fn sigterm(p: &mut Proc) {
    // Graceful: SIGTERM, then wait.
    let _ = Command::new("kill")
        .args(["-TERM", &p.0.id().to_string()])
        .status();
    let _ = p.0.wait();
}

#[tokio::test]
async fn revocations_and_idle_timers_survive_restart_and_kill_9() {
    let up = Upstream::start().await;
    let dir = scratch_dir("restart");
    let (port, admin_port) = (free_port(), free_port());
    let cfg = config(
        &dir,
        up.addr,
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{admin_port}"),
        "",
    );
    std::fs::write(dir.join("rolegate.yaml"), cfg).unwrap();
    let gw: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let adm: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();

    let revoked = tok("r-1", &["viewer"]);
    let idle = token_with(json!({ "sid": "i-1", "roles": ["viewer", "quick"] }));
    let alive = tok("k-1", &["viewer"]);
    let deact = token_with(json!({ "sub": "dave", "sid": "d-1", "roles": ["viewer"] }));

    let mut p = spawn_serve(&dir, port).await;
    for t in [&revoked, &idle, &alive, &deact] {
        assert_eq!(
            req(gw, "GET", "/bots/1/flows", Some(t), &[]).await.status,
            200
        );
    }
    assert_eq!(admin(adm, "POST", "/sessions/r-1/revoke").await.status, 200);
    assert_eq!(
        admin(adm, "POST", "/users/dave/deactivate").await.status,
        200
    );
    // Graceful restart.
    sigterm(&mut p);
    let mut p = spawn_serve(&dir, port).await;
    assert_eq!(flows(gw, &revoked).await.error(), "session_ended");
    assert_eq!(flows(gw, &deact).await.error(), "user_deactivated");
    assert_eq!(flows(gw, &alive).await.status, 200);

    // kill -9 right after a revocation and an activity touch: the revocation
    // was written before the admin call returned; the touch is flushed
    // within flush_interval (50 ms here).
    let touched_at = Instant::now();
    assert_eq!(flows(gw, &idle).await.status, 200);
    assert_eq!(admin(adm, "POST", "/users/anyone/revoke").await.status, 200);
    assert_eq!(admin(adm, "POST", "/sessions/k-1/revoke").await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.0.kill().unwrap();
    p.0.wait().unwrap();
    let _p = spawn_serve(&dir, port).await;
    assert_eq!(flows(gw, &alive).await.error(), "session_ended");
    assert_eq!(flows(gw, &revoked).await.error(), "session_ended");
    assert_eq!(flows(gw, &deact).await.error(), "user_deactivated");
    // The idle timer was not reset by the restart: 1 s after the last touch
    // (before the crash) the session is idle, although the new process has
    // seen no request for it yet.
    let wait = Duration::from_millis(1250).saturating_sub(touched_at.elapsed());
    tokio::time::sleep(wait).await;
    let r = flows(gw, &idle).await;
    assert_expired(&r);
    let v: Value = r.json();
    assert!(v["request_id"].is_string());
}

#[tokio::test]
async fn a_not_before_cut_off_survives_restarts_after_reactivation() {
    let up = Upstream::start().await;
    let dir = scratch_dir("notbefore");
    let (port, admin_port) = (free_port(), free_port());
    let cfg = config(
        &dir,
        up.addr,
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{admin_port}"),
        "",
    );
    std::fs::write(dir.join("rolegate.yaml"), cfg).unwrap();
    let gw: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let adm: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let frank = |sid: &str, iat: Value| {
        token_with(json!({ "sub": "frank", "sid": sid, "roles": ["viewer"], "iat": iat }))
    };
    // Issued before the deactivation, never presented before it: in an
    // earlier second (one issued in the deactivation's own second counts as
    // a new login since cut-offs compare whole seconds).
    let before = frank("f-old", json!(now() - 1));
    let no_iat = frank("f-no-iat", Value::Null);

    let mut p = spawn_serve(&dir, port).await;
    for action in ["deactivate", "reactivate"] {
        let path = format!("/users/frank/{action}");
        assert_eq!(admin(adm, "POST", &path).await.status, 200);
    }
    let nb = admin(adm, "GET", "/users/frank/sessions").await.json()["not_before_ms"]
        .as_u64()
        .expect("not_before_ms");
    let new_login = frank("f-new", json!(nb / 1000 + 1));
    // Graceful restart (replays the journal), then kill -9 and start again
    // (replays the snapshot the first restart compacted it into).
    sigterm(&mut p);
    let mut p = spawn_serve(&dir, port).await;
    for _ in 0..2 {
        for t in [&before, &no_iat] {
            let r = flows(gw, t).await;
            assert_eq!((r.status, r.error().as_str()), (401, "session_ended"));
            assert_eq!(r.json()["reason"], "revoked");
        }
        assert_eq!(flows(gw, &new_login).await.status, 200);
        let l = admin(adm, "GET", "/users/frank/sessions").await.json();
        assert_eq!(
            (l["deactivated"].clone(), l["not_before_ms"].clone()),
            (json!(false), json!(nb))
        );
        p.0.kill().unwrap();
        p.0.wait().unwrap();
        p = spawn_serve(&dir, port).await;
    }
}

// ------------------------------------------------------------ redis store

/// Polls until `f` is true; returns how long it took (panics after `limit`).
async fn within<F, Fut>(limit: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not met within {limit:?}");
}

#[tokio::test]
async fn two_gateways_share_sessions_through_redis_and_fail_closed_without_it() {
    let redis = TestRedis::start();
    let up = Upstream::start().await;
    let mut gws = Vec::new();
    for _ in 0..2 {
        let dir = scratch_dir("redis-gw");
        let (port, admin_port) = (free_port(), free_port());
        let extra = format!("  store: \"redis://127.0.0.1:{}\"\n", redis.port);
        let cfg = config(
            &dir,
            up.addr,
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{admin_port}"),
            &extra,
        );
        std::fs::write(dir.join("rolegate.yaml"), cfg).unwrap();
        let p = spawn_serve(&dir, port).await;
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let adm: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        gws.push((p, addr, adm));
    }
    let (a, b) = (gws[0].1, gws[1].1);
    let (adm_a, adm_b) = (gws[0].2, gws[1].2);

    // Activity on B keeps a session alive for A (idle 1 s).
    let t = tok("shared-1", &["viewer", "quick"]);
    assert_eq!(flows(a, &t).await.status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(flows(b, &t).await.status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        flows(a, &t).await.status,
        200,
        "B's activity did not reach A"
    );
    // Idle expiry decided on one instance holds on the other.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_expired(&flows(b, &t).await);
    assert_eq!(flows(a, &t).await.status, 401);

    // A revocation on A is enforced by B within 1 s.
    let r1 = tok("shared-2", &["viewer"]);
    assert_eq!(flows(b, &r1).await.status, 200);
    assert_eq!(
        admin(adm_a, "POST", "/sessions/shared-2/revoke")
            .await
            .status,
        200
    );
    let took = within(Duration::from_secs(1), || {
        let r1 = r1.clone();
        async move { flows(b, &r1).await.status == 401 }
    })
    .await;
    eprintln!("revocation reached the other gateway in {took:?}");

    // A deactivation on B is enforced by A within 1 s; after reactivation
    // only a new login works.
    let erin = token_with(json!({ "sub": "erin", "sid": "e-1", "roles": ["viewer"] }));
    assert_eq!(flows(a, &erin).await.status, 200);
    assert_eq!(
        admin(adm_b, "POST", "/users/erin/deactivate").await.status,
        200
    );
    within(Duration::from_secs(1), || {
        let erin = erin.clone();
        async move { flows(a, &erin).await.error() == "user_deactivated" }
    })
    .await;
    assert_eq!(
        admin(adm_a, "GET", "/users/erin/sessions").await.json()["deactivated"],
        true
    );
    assert_eq!(
        admin(adm_b, "POST", "/users/erin/reactivate").await.status,
        200
    );
    let erin2 = token_with(json!({ "sub": "erin", "sid": "e-2", "roles": ["viewer"] }));
    within(Duration::from_secs(1), || {
        let erin2 = erin2.clone();
        async move { flows(a, &erin2).await.status == 200 }
    })
    .await;
    assert_eq!(flows(a, &erin).await.error(), "session_ended");
    assert_eq!(flows(b, &erin).await.error(), "session_ended");

    // Redis dies: both gateways fail closed with a JSON 503, and readiness says so.
    let live = tok("shared-3", &["viewer"]);
    assert_eq!(flows(a, &live).await.status, 200);
    drop(redis);
    for gw in [a, b] {
        within(Duration::from_secs(5), || {
            let live = live.clone();
            async move {
                let r = flows(gw, &live).await;
                r.status == 503 && r.error() == "session_store_unavailable"
            }
        })
        .await;
    }
    assert_eq!(req(adm_a, "GET", "/readyz", None, &[]).await.status, 503);
    let before = up.count();
    let r = flows(b, &live).await;
    assert_eq!(r.status, 503);
    // The store's own error text (Redis, I/O) is logged, never sent.
    assert_eq!(r.json()["reason"], "session store unavailable");
    assert_eq!(
        up.count(),
        before,
        "a request reached the upstream without a session check"
    );
}

#[tokio::test]
async fn on_store_error_allow_never_lets_a_known_revoked_session_through() {
    let redis = TestRedis::start();
    let extra = format!(
        "  store: \"redis://127.0.0.1:{}\"\n  on_store_error: allow\n",
        redis.port
    );
    let (up, gw) = start(&extra).await;
    let adm = gw.admin.unwrap();
    let revoked = tok("allow-revoked", &["viewer"]);
    let out = tok("allow-out", &["viewer"]);
    for t in [&revoked, &out] {
        assert_eq!(flows(gw.addr, t).await.status, 200);
    }
    assert_eq!(
        admin(adm, "POST", "/sessions/allow-revoked/revoke")
            .await
            .status,
        200
    );
    let r = req(gw.addr, "POST", "/.rolegate/logout", Some(&out), &[]).await;
    assert_eq!(r.status, 200);

    drop(redis);
    within(Duration::from_secs(5), || async {
        req(adm, "GET", "/readyz", None, &[]).await.status == 503
    })
    .await;
    // The store cannot answer for a session it does not know: allowed
    // without a session check (and logged), as configured.
    let unknown = tok("allow-unknown", &["viewer"]);
    let before = up.count();
    assert_eq!(flows(gw.addr, &unknown).await.status, 200);
    assert_eq!(up.count(), before + 1);
    // What the gateway knows was revoked or logged out stays refused.
    let r = flows(gw.addr, &revoked).await;
    assert_eq!((r.status, r.error()), (401, "session_ended".into()));
    let r = flows(gw.addr, &out).await;
    assert_eq!((r.status, r.error()), (401, "session_ended".into()));
    assert_eq!(up.count(), before + 1);
    // The admin API never identifies a user it cannot check: 503, not
    // `allow` (a revoked admin would otherwise keep acting).
    let caller = tok("allow-admin-caller", &["viewer"]);
    let r = req(adm, "GET", "/sessions", Some(&caller), &[]).await;
    assert_eq!(
        (r.status, r.error()),
        (503, "session_store_unavailable".into())
    );
}

// ------------------------------------------------------- long-lived streams

/// An upstream whose every answer is an endless event stream (a tick every
/// 100 ms for up to 30 s).
async fn streaming_upstream() -> std::net::SocketAddr {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let (tx, mut rx) = tokio::sync::mpsc::channel::<
                        Result<Frame<Bytes>, std::convert::Infallible>,
                    >(1);
                    tokio::spawn(async move {
                        for i in 0..300 {
                            if tx
                                .send(Ok(Frame::data(Bytes::from(format!(
                                    "data: {{\"tick\":{i}}}\n\n"
                                )))))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    });
                    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
                    let mut r = hyper::Response::new(StreamBody::new(stream).boxed());
                    r.headers_mut()
                        .insert("content-type", "text/event-stream".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Opens `path` (an event stream) and returns how long the stream lasted
/// after `after` resolved (the stream must still be flowing then).
async fn stream_lifetime<F: std::future::Future<Output = ()>>(
    gw: std::net::SocketAddr,
    path: &str,
    token: &str,
    after: F,
) -> Duration {
    let mut s = open_stream(gw, path, token).await;
    after.await;
    stream_lifetime_of(&mut s).await
}

/// `sessions.max_lifetime` cuts a stream that outlives it, also with the
/// Redis store (whose local view forgets active sessions: the session's
/// start is taken when the stream begins).
#[tokio::test]
async fn open_streams_are_cut_at_the_maximum_lifetime_with_either_store() {
    let redis = TestRedis::start();
    let up = streaming_upstream().await;
    for store in [
        String::new(),
        format!("  store: \"redis://127.0.0.1:{}\"\n", redis.port),
    ] {
        let dir = scratch_dir("stream-life");
        let extra = format!("{store}  max_lifetime: 2s\n");
        let cfg = config(&dir, up, "127.0.0.1:0", "127.0.0.1:0", &extra);
        let gw = start_with_config(&dir, &cfg).await;
        let t = tok("st-life", &["viewer"]);
        let opened = Instant::now();
        let took = stream_lifetime(gw.addr, "/api/events", &t, async {}).await;
        let lived = opened.elapsed();
        assert!(
            lived >= Duration::from_millis(1500) && took < Duration::from_secs(4),
            "{store:?}: cut after {lived:?}"
        );
        assert_eq!(
            get(&gw, "/bots/1/flows", &t).await.status,
            401,
            "{store:?}: the session outlived its lifetime"
        );
    }
}

#[tokio::test]
async fn open_streams_are_cut_when_the_session_is_revoked_or_idles_out() {
    let up = streaming_upstream().await;
    let dir = scratch_dir("stream");
    let cfg = config(&dir, up, "127.0.0.1:0", "127.0.0.1:0", "");
    let gw = start_with_config(&dir, &cfg).await;
    let adm = gw.admin.unwrap();

    // Revoked while streaming: cut within about a second.
    let t = tok("st-1", &["viewer"]);
    let took = stream_lifetime(gw.addr, "/api/events", &t, async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            admin(adm, "POST", "/sessions/st-1/revoke").await.status,
            200
        );
    })
    .await;
    assert!(took < Duration::from_secs(3), "cut after {took:?}");

    // Idle (1 s role) with no other activity: the stream is cut too.
    let t = tok("st-2", &["viewer", "quick"]);
    let took = stream_lifetime(gw.addr, "/api/events", &t, async {}).await;
    assert!(took < Duration::from_secs(4), "cut after {took:?}");
    assert_expired(&get(&gw, "/bots/1/flows", &t).await);
}

/// A long-lived answer allowed by a *pulled* relation asks it again while
/// it lasts (every `cache_ttl`, at least a second), as a websocket does:
/// cut when the source answers false or cannot answer; flowing while it
/// answers true.
#[tokio::test]
async fn an_open_stream_allowed_by_a_pulled_relation_is_cut_when_it_no_longer_holds() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    let answer = Arc::new(AtomicU8::new(1));
    let asked = Arc::new(AtomicUsize::new(0));
    let source = relation_source(answer.clone(), asked.clone()).await;
    let up = streaming_upstream().await;
    let dir = scratch_dir("stream-pull");
    let extra = "relations: { active_conversation: { pull: { upstream: rel, path: /relations/conv, cache_ttl: 1s, negative_ttl: 0s } } }\n";
    let cfg = config(&dir, up, "127.0.0.1:0", "127.0.0.1:0", extra).replace(
        "upstreams:\n",
        &format!("upstreams:\n  rel: {{ url: \"http://{source}\" }}\n"),
    );
    // Two upstreams: every route names its own.
    let rules = std::fs::read_to_string(dir.join("rules.yaml")).unwrap();
    let rules = rules.replace(", match: {", ", upstream: app, match: {");
    std::fs::write(dir.join("rules.yaml"), rules).unwrap();
    let gw = start_with_config(&dir, &cfg).await;
    let t = token_with(json!({ "sid": "st-pull", "sub": "agent-pull", "roles": [] }));
    for (fails_with, how) in [(0, "false"), (2, "unanswerable")] {
        answer.store(1, Ordering::SeqCst);
        let mut s = open_stream(gw.addr, "/api/conv/c-1/events", &t).await;
        let at_open = asked.load(Ordering::SeqCst);
        assert!(
            still_flowing_after(&mut s, Duration::from_millis(3000)).await,
            "cut while the relation held"
        );
        let again = asked.load(Ordering::SeqCst) - at_open;
        assert!((1..=3).contains(&again), "asked {again} times in 3 s");
        answer.store(fails_with, Ordering::SeqCst);
        let took = stream_lifetime_of(&mut s).await;
        assert!(took < Duration::from_secs(4), "{how}: cut after {took:?}");
    }
    // A stream the client walks away from while the relation holds: its
    // relation is asked no more.
    answer.store(1, Ordering::SeqCst);
    let mut s = open_stream(gw.addr, "/api/conv/c-1/events", &t).await;
    let before = asked.load(Ordering::SeqCst);
    assert!(still_flowing_after(&mut s, Duration::from_millis(2500)).await);
    assert!(asked.load(Ordering::SeqCst) > before, "never asked again");
    drop(s);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = asked.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        asked.load(Ordering::SeqCst),
        after,
        "still asking for a stream nobody reads"
    );
}

/// How long an open stream lasts from now (it must end within 8 s).
async fn stream_lifetime_of(s: &mut tokio::net::TcpStream) -> Duration {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut ticks = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(n)) => ticks += String::from_utf8_lossy(&buf[..n]).matches("tick").count(),
            Err(_) => panic!("the stream neither ended nor sent anything for 10 s"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "the stream was never cut ({ticks} ticks)"
        );
    }
}

/// A reload that changes the policy cuts the answers still being sent
/// under the old one (`reload.streams: close`, the default), as it closes
/// websockets, and a stream opened under the new one flows; with `keep`
/// they run on. A reload that changes no text cuts nothing.
#[tokio::test]
async fn a_policy_reload_cuts_open_streams_unless_they_are_kept() {
    let up = streaming_upstream().await;
    for (extra, cut) in [("", true), ("reload: { streams: keep }\n", false)] {
        let dir = scratch_dir("stream-reload");
        let cfg = config(&dir, up, "127.0.0.1:0", "127.0.0.1:0", extra);
        let gw = start_with_config(&dir, &cfg).await;
        let adm = gw.admin.unwrap();
        let t = tok("st-reload", &["viewer"]);
        let mut s = open_stream(gw.addr, "/api/events", &t).await;
        assert_eq!(admin(adm, "POST", "/reload").await.status, 200);
        assert!(
            still_flowing_after(&mut s, Duration::from_millis(1500)).await,
            "{extra:?}: a reload that changed nothing cut the stream"
        );
        let rules = std::fs::read_to_string(dir.join("rules.yaml")).unwrap();
        let tmp = dir.join(".rules.yaml.tmp");
        std::fs::write(&tmp, format!("{rules}\n# changed\n")).unwrap();
        std::fs::rename(&tmp, dir.join("rules.yaml")).unwrap();
        let r = admin(adm, "POST", "/reload").await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let flowing = still_flowing_after(&mut s, Duration::from_millis(2500)).await;
        assert_eq!(flowing, !cut, "{extra:?}: flowing after a policy reload");
        let mut fresh = open_stream(gw.addr, "/api/events", &t).await;
        assert!(
            still_flowing_after(&mut fresh, Duration::from_millis(1500)).await,
            "{extra:?}: a stream of the new policy was cut"
        );
        // The next policy reload cuts it in turn.
        std::fs::write(&tmp, format!("{rules}\n# changed again\n")).unwrap();
        std::fs::rename(&tmp, dir.join("rules.yaml")).unwrap();
        assert_eq!(admin(adm, "POST", "/reload").await.status, 200);
        let flowing = still_flowing_after(&mut fresh, Duration::from_millis(2500)).await;
        assert_eq!(flowing, !cut, "{extra:?}: flowing after a second reload");
    }
}

/// Opens `path` (an event stream) on a connection of its own; the answer's
/// head has been read.
async fn open_stream(gw: std::net::SocketAddr, path: &str, token: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s
}

/// Whether the stream still sends ticks after `d` (read until then).
async fn still_flowing_after(s: &mut tokio::net::TcpStream, d: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let until = Instant::now() + d;
    let mut buf = vec![0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                if Instant::now() >= until {
                    return true;
                }
            }
            _ => return false,
        }
    }
}

/// What else a stream was authorized on besides its session: a stream
/// allowed by a pushed relation tuple is cut when the tuple is removed, one
/// of a subject with a directory entry when the entry changes; the session
/// stays. Streams whose grounds did not change keep flowing: the same
/// subject's stream on another tuple, and a subject whose entry was
/// rewritten unchanged.
#[tokio::test]
async fn open_streams_are_cut_when_their_tuple_goes_or_their_directory_entry_changes() {
    let up = streaming_upstream().await;
    let dir = scratch_dir("stream-standing");
    let extra = format!(
        "relations: {{ active_conversation: {{ push: {{}} }} }}\ndirectory: {{ issuer: \"{ISS_RSA}\" }}\n"
    );
    let cfg = config(&dir, up, "127.0.0.1:0", "127.0.0.1:0", &extra);
    let gw = start_with_config(&dir, &cfg).await;
    let adm = gw.admin.unwrap();
    let call = |method: &'static str, path: &'static str, body: String| async move {
        let r = req_json(adm, method, path, Some(ADMIN_TOKEN), &body).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    };
    let tuple =
        |c: &str| json!({ "subject": "agent-s", "issuer": ISS_RSA, "object": c }).to_string();
    let entry = json!({ "roles": ["viewer"] }).to_string();
    call("POST", "/relations/active_conversation", tuple("c-1")).await;
    call("POST", "/relations/active_conversation", tuple("c-2")).await;
    call("PUT", "/directory/users/user-ctl", entry.clone()).await;
    let t = token_with(json!({ "sid": "st-rel", "sub": "agent-s", "roles": [] }));
    let ctl = token_with(json!({ "sid": "st-ctl", "sub": "user-ctl", "roles": [] }));
    let mut other_tuple = open_stream(gw.addr, "/api/conv/c-2/events", &t).await;
    let mut same_entry = open_stream(gw.addr, "/api/events", &ctl).await;
    let took = stream_lifetime(gw.addr, "/api/conv/c-1/events", &t, async {
        // Past the streams' first check.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        call("DELETE", "/relations/active_conversation", tuple("c-1")).await;
        call("PUT", "/directory/users/user-ctl", entry.clone()).await;
    })
    .await;
    assert!(took < Duration::from_secs(3), "cut after {took:?}");
    assert!(
        still_flowing_after(&mut other_tuple, Duration::from_millis(2500)).await,
        "a stream on a tuple that stayed was cut"
    );
    assert!(
        still_flowing_after(&mut same_entry, Duration::from_millis(500)).await,
        "a stream whose entry was rewritten unchanged was cut"
    );
    // Refused now, on the relation (403), not on the session (401).
    let r = get(&gw, "/api/conv/c-1/events", &t).await;
    assert_eq!(r.status, 403);

    let u = token_with(json!({ "sid": "st-dir", "sub": "user-dir-s", "roles": ["viewer"] }));
    let took = stream_lifetime(gw.addr, "/api/events", &u, async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        call("PUT", "/directory/users/user-dir-s", entry.clone()).await;
    })
    .await;
    assert!(took < Duration::from_secs(3), "cut after {took:?}");
    // The session stays: 403 on a route its roles do not reach, not 401.
    let r = req(gw.addr, "PUT", "/bots/1/flows", Some(&u), &[]).await;
    assert_eq!(r.status, 403);
    assert!(
        still_flowing_after(&mut same_entry, Duration::from_millis(500)).await,
        "another subject's entry change cut a stream"
    );
}
