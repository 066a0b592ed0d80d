//! Hot reload through the admin API and the file watcher, in-process: a
//! new rules file swapped in whole under traffic, a broken one refused
//! with the old policy kept, a change that needs a restart refused, and
//! `GET /status` telling which policy is in force.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use super::common::*;

const ADMIN: &str = "admin-token-for-reload-tests-0123456";

/// Rules A: `cap.a` (role r1) reaches upstream `one`. Rules B: `cap.b`
/// (role r2) reaches upstream `two`. Both upstreams are the same server
/// under different base paths, so the path it sees says which rules
/// decided.
const RULES_A: &str = r#"
roles:
  r1: { grants: [cap.a] }
  r2: { grants: [cap.b] }
routes:
  - { name: v, match: { methods: [GET], path: /v }, require: cap.a, upstream: one }
"#;
const RULES_B: &str = r#"
roles:
  r1: { grants: [cap.a] }
  r2: { grants: [cap.b] }
routes:
  - { name: v, match: { methods: [GET], path: /v }, require: cap.b, upstream: two }
"#;

fn config(up: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"listen: {{ addr: "127.0.0.1:0" }}
{identity}upstreams:
  one: {{ url: "http://{up}/one", timeout: 2s }}
  two: {{ url: "http://{up}/two", timeout: 2s }}
admin: {{ addr: "127.0.0.1:0", token_file: admin.token }}
rules: rules.yaml
{extra}"#,
        identity = identity_yaml(),
    )
}

async fn start(up: &Upstream, extra: &str) -> Gw {
    let dir = scratch_dir("reload");
    std::fs::write(dir.join("admin.token"), ADMIN).unwrap();
    std::fs::write(dir.join("rules.yaml"), RULES_A).unwrap();
    start_with_config(&dir, &config(up.addr, extra)).await
}

async fn admin(gw: &Gw, method: &str, path: &str) -> Resp {
    req(gw.admin.unwrap(), method, path, Some(ADMIN), &[]).await
}

/// Writes `text` to `dir/name` through a temporary file and a rename, as
/// editors and deployment tools do: a reader never sees half a file.
fn replace(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn tok(role: &str) -> String {
    token_with(json!({ "roles": [role] }))
}

/// Which rules decided, from one request of each role: `Some('A')` or
/// `Some('B')`, `None` for a mix (the test's failure).
async fn in_force(gw: &Gw) -> Option<char> {
    let (a, b) = (
        req(gw.addr, "GET", "/v", Some(&tok("r1")), &[]).await,
        req(gw.addr, "GET", "/v", Some(&tok("r2")), &[]).await,
    );
    match (a.status, b.status) {
        (200, 403) if a.json()["uri"] == "/one/v" => Some('A'),
        (403, 200) if b.json()["uri"] == "/two/v" => Some('B'),
        _ => None,
    }
}

#[tokio::test]
async fn admin_reload_swaps_the_rules_and_a_broken_file_keeps_the_old_ones() {
    let up = Upstream::start().await;
    let gw = start(&up, "").await;
    assert_eq!(in_force(&gw).await, Some('A'));
    let status = admin(&gw, "GET", "/status").await;
    assert_eq!(status.status, 200);
    let hash_a = status.json()["policy"]["hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(hash_a.len(), 64);
    assert_eq!(status.json()["last_reload"], serde_json::Value::Null);

    replace(&gw.dir, "rules.yaml", RULES_B);
    let r = admin(&gw, "POST", "/reload").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["result"], "reloaded");
    assert_eq!(r.json()["trigger"], "admin");
    let hash_b = r.json()["policy_hash"].as_str().unwrap().to_string();
    assert_ne!(hash_a, hash_b);
    assert_eq!(in_force(&gw).await, Some('B'));

    // Broken: a route naming a capability no role grants and an unknown
    // upstream (line 6) — every error is reported, nothing changes.
    let broken = format!(
        "{RULES_B}  - {{ name: w, match: {{ path: /w }}, require: cap.b, upstream: nowhere }}\n"
    );
    replace(&gw.dir, "rules.yaml", &broken);
    let r = admin(&gw, "POST", "/reload").await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error(), "reload_failed");
    let errors = r.json()["errors"].as_array().unwrap().clone();
    assert!(
        errors
            .iter()
            .any(|e| e["file"].as_str().unwrap().ends_with("rules.yaml")
                && e["line"] == 7
                && e["message"].as_str().unwrap().contains("nowhere")),
        "{errors:?}"
    );
    assert_eq!(
        in_force(&gw).await,
        Some('B'),
        "the old rules stay in force"
    );
    let status = admin(&gw, "GET", "/status").await.json();
    assert_eq!(status["policy"]["hash"], hash_b.as_str());
    assert_eq!(status["policy"]["trigger"], "admin");
    assert_eq!(status["last_reload"]["result"], "failed");
    assert!(
        !status["last_reload"]["errors"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A YAML syntax error, too.
    replace(&gw.dir, "rules.yaml", "roles: [\n");
    let r = admin(&gw, "POST", "/reload").await;
    assert_eq!(r.status, 422);
    assert_eq!(in_force(&gw).await, Some('B'));

    // Fixed: reloads again.
    replace(&gw.dir, "rules.yaml", RULES_A);
    let r = admin(&gw, "POST", "/reload").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["policy_hash"], hash_a.as_str());
    assert_eq!(in_force(&gw).await, Some('A'));

    // Only the admin token may reload or read the status.
    let user = tok("r1");
    let r = req(gw.admin.unwrap(), "POST", "/reload", Some(&user), &[]).await;
    assert!(r.status == 401 || r.status == 403, "{}", r.status);
    let r = req(gw.admin.unwrap(), "GET", "/status", None, &[]).await;
    assert_eq!(r.status, 401);
    let r = admin(&gw, "GET", "/reload").await;
    assert_eq!(r.status, 405);
}

/// A token a kept-alive connection verified before a reload is verified
/// again by the new configuration: here the issuers no longer accept its
/// audience, so the next request on the same connection is refused.
#[tokio::test]
async fn a_reload_makes_kept_alive_connections_verify_their_token_again() {
    let up = Upstream::start().await;
    let gw = start(&up, "").await;
    let t = tok("r1");
    let mut c = KeptAlive::open(gw.addr).await;
    assert_eq!(c.get("/v", Some(&t)).await.status, 200);
    let moved = config(up.addr, "").replace(
        &format!("audiences: [\"{AUD}\"]"),
        "audiences: [\"elsewhere\"]",
    );
    assert_ne!(moved, config(up.addr, ""));
    replace(&gw.dir, "rolegate.yaml", &moved);
    let r = admin(&gw, "POST", "/reload").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = c.get("/v", Some(&t)).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "invalid_token");
}

#[tokio::test]
async fn a_reload_that_needs_a_restart_is_refused_with_the_reason() {
    let up = Upstream::start().await;
    let gw = start(&up, "").await;
    let port = free_port();
    let text = std::fs::read_to_string(gw.dir.join("rolegate.yaml"))
        .unwrap()
        .replace(
            "listen: { addr: \"127.0.0.1:0\" }",
            &format!("listen: {{ addr: \"127.0.0.1:{port}\" }}"),
        );
    replace(&gw.dir, "rolegate.yaml", &text);
    replace(&gw.dir, "rules.yaml", RULES_B);
    let r = admin(&gw, "POST", "/reload").await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error(), "restart_required");
    let why = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("listener addresses"), "{why}");
    // Nothing of it applies, not even the rules that could have.
    assert_eq!(in_force(&gw).await, Some('A'));

    // The session store cannot change either.
    let text = text.replace(
        &format!("listen: {{ addr: \"127.0.0.1:{port}\" }}"),
        "listen: { addr: \"127.0.0.1:0\" }",
    ) + "sessions: { state_dir: elsewhere }\n";
    replace(&gw.dir, "rolegate.yaml", &text);
    let r = admin(&gw, "POST", "/reload").await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("sessions.store")
    );
    assert_eq!(in_force(&gw).await, Some('A'));
}

/// A reload that shortens a role's idle timeout applies to the very next
/// request of a session already seen, with the same token: nothing derived
/// from the principal under the old configuration (its verified token,
/// its idle timeout) outlives the reload.
#[tokio::test]
async fn a_reload_that_shortens_a_role_s_idle_timeout_applies_to_sessions_already_seen() {
    let up = Upstream::start().await;
    let gw = start(&up, "").await;
    let t = token_with(json!({ "roles": ["r1"], "sid": "idle-reload" }));
    assert_eq!(req(gw.addr, "GET", "/v", Some(&t), &[]).await.status, 200);
    replace(
        &gw.dir,
        "rules.yaml",
        &RULES_A.replace(
            "r1: { grants: [cap.a] }",
            "r1: { grants: [cap.a], idle_timeout: 1s }",
        ),
    );
    let r = admin(&gw, "POST", "/reload").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    tokio::time::sleep(Duration::from_millis(1400)).await;
    let before = up.count();
    let r = req(gw.addr, "GET", "/v", Some(&t), &[]).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error(), "session_expired");
    assert_eq!(r.json()["reason"], "idle");
    assert_eq!(up.count(), before, "an idle session reached the upstream");
}

/// Several clients send requests without pause while the rules flip
/// between A and B (and a broken file is tried in between): every answer
/// is wholly A's or wholly B's, and after the last reload its rules hold.
#[tokio::test]
async fn reloads_under_traffic_never_decide_a_request_by_a_mix() {
    let up = Upstream::start().await;
    let gw = Arc::new(start(&up, "").await);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (gw, stop, seen) = (gw.clone(), stop.clone(), seen.clone());
        let role = if i % 2 == 0 { "r1" } else { "r2" };
        clients.push(tokio::spawn(async move {
            let t = tok(role);
            let mut mixes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = req(gw.addr, "GET", "/v", Some(&t), &[]).await;
                seen.fetch_add(1, Ordering::Relaxed);
                let uri = if r.status == 200 {
                    r.json()["uri"].as_str().unwrap_or("").to_string()
                } else {
                    String::new()
                };
                let ok = match (role, r.status) {
                    (_, 403) => true,
                    ("r1", 200) => uri == "/one/v",
                    ("r2", 200) => uri == "/two/v",
                    _ => false,
                };
                if !ok {
                    mixes.push(format!("{role}: {} {uri}", r.status));
                }
            }
            mixes
        }));
    }
    let unknown_upstream = RULES_A.replace("upstream: one", "upstream: nowhere");
    for round in 0..16 {
        let (text, want) = match round % 4 {
            0 => (RULES_B, 200),
            1 => ("routes: [ {", 422),
            2 => (RULES_A, 200),
            _ => (unknown_upstream.as_str(), 422),
        };
        replace(&gw.dir, "rules.yaml", text);
        let r = admin(&gw, "POST", "/reload").await;
        assert_eq!(
            r.status,
            want,
            "round {round}: {}",
            String::from_utf8_lossy(&r.body)
        );
        // Let some traffic through each state.
        let before = seen.load(Ordering::Relaxed);
        while seen.load(Ordering::Relaxed) < before + 8 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let mixes = c.await.unwrap();
        assert!(
            mixes.is_empty(),
            "answers decided by neither rule set: {mixes:?}"
        );
    }
    // The last good reload (A) is in force; the broken one after it not.
    assert_eq!(in_force(&gw).await, Some('A'));
}

#[tokio::test]
async fn the_watcher_reloads_a_changed_rules_file_unless_turned_off() {
    let up = Upstream::start().await;
    let gw = start(&up, "reload: { watch: true, watch_interval: 50ms }\n").await;
    tokio::spawn(rolegate::reload::watch(Arc::downgrade(&gw.gateway)));
    assert_eq!(in_force(&gw).await, Some('A'));
    replace(&gw.dir, "rules.yaml", RULES_B);
    wait_for_rules(&gw, 'B').await;
    let status = admin(&gw, "GET", "/status").await.json();
    assert_eq!(status["policy"]["trigger"], "watch");
    assert_eq!(status["watch"], true);

    // A broken file is seen, refused, and the rules in force stay.
    replace(&gw.dir, "rules.yaml", "roles: [\n");
    loop {
        let s = admin(&gw, "GET", "/status").await.json();
        if s["last_reload"]["result"] == "failed" {
            assert_eq!(s["last_reload"]["trigger"], "watch");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(in_force(&gw).await, Some('B'));

    // Turned off (by a reload): later changes wait for a signal or call.
    let cfg = std::fs::read_to_string(gw.dir.join("rolegate.yaml"))
        .unwrap()
        .replace("watch: true", "watch: false");
    replace(&gw.dir, "rolegate.yaml", &cfg);
    replace(&gw.dir, "rules.yaml", RULES_B);
    let r = admin(&gw, "POST", "/reload").await;
    assert_eq!(r.status, 200);
    replace(&gw.dir, "rules.yaml", RULES_A);
    // Twenty intervals: long enough for the watcher to have acted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(in_force(&gw).await, Some('B'));
    assert_eq!(admin(&gw, "GET", "/status").await.json()["watch"], false);
    assert_eq!(admin(&gw, "POST", "/reload").await.status, 200);
    assert_eq!(in_force(&gw).await, Some('A'));
}

/// A reload that fails on a file the configuration in force does not name
/// (so the watcher does not look at it) is tried again: once the file is
/// written, it loads without another change to the watched files.
#[tokio::test]
async fn a_failed_reload_is_tried_again_until_it_loads() {
    let up = Upstream::start().await;
    let gw = start(&up, "reload: { watch: true, watch_interval: 50ms }\n").await;
    tokio::spawn(rolegate::reload::watch(Arc::downgrade(&gw.gateway)));
    assert_eq!(in_force(&gw).await, Some('A'));
    let cfg = std::fs::read_to_string(gw.dir.join("rolegate.yaml"))
        .unwrap()
        .replace("rules: rules.yaml", "rules: rules-next.yaml");
    replace(&gw.dir, "rolegate.yaml", &cfg);
    let failed_at = {
        let mut s = admin(&gw, "GET", "/status").await.json();
        for _ in 0..500 {
            if s["last_reload"]["result"] == "failed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            s = admin(&gw, "GET", "/status").await.json();
        }
        assert_eq!(s["last_reload"]["result"], "failed", "{s}");
        s["last_reload"]["at_ms"].as_u64().unwrap()
    };
    assert_eq!(in_force(&gw).await, Some('A'));
    // Tried again on its own (the first retry a second later), and
    // failing again while the file is missing.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = admin(&gw, "GET", "/status").await.json();
        if s["last_reload"]["at_ms"].as_u64().unwrap() > failed_at {
            assert_eq!(s["last_reload"]["result"], "failed");
            assert_eq!(s["last_reload"]["trigger"], "watch");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failed reload was never tried again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    replace(&gw.dir, "rules-next.yaml", RULES_B);
    wait_for_rules(&gw, 'B').await;
    assert_eq!(
        admin(&gw, "GET", "/status").await.json()["last_reload"]["result"],
        "reloaded"
    );
}

/// A rules file rewritten while a reload is reading the files is not taken
/// as seen: the watcher's next look loads it (the last change wins).
#[tokio::test]
async fn a_change_written_during_a_reload_is_loaded_by_the_watcher() {
    use rolegate::reload::{Outcome, Trigger};
    let up = Upstream::start().await;
    let gw = start(&up, "reload: { watch: true, watch_interval: 50ms }\n").await;
    assert_eq!(in_force(&gw).await, Some('A'));
    replace(&gw.dir, "rules.yaml", RULES_B);
    let dir = gw.dir.clone();
    let a = gw
        .gateway
        .reloader()
        .reload_with(&gw.gateway, Trigger::Admin, move |path| {
            let loaded = rolegate::config::load(path);
            // Saved after the load read B, before the reload ends.
            replace(&dir, "rules.yaml", RULES_A);
            loaded
        })
        .await;
    assert_eq!(a.result, Outcome::Reloaded);
    assert_eq!(in_force(&gw).await, Some('B'));
    tokio::spawn(rolegate::reload::watch(Arc::downgrade(&gw.gateway)));
    wait_for_rules(&gw, 'A').await;
}

/// A secret file any user may read is warned about on every reload,
/// until only its owner and group may.
#[cfg(unix)]
#[tokio::test]
async fn a_secret_file_others_may_read_is_warned_about() {
    use rolegate::reload::Trigger;
    use std::os::unix::fs::PermissionsExt;
    let up = Upstream::start().await;
    let gw = start(&up, "").await;
    let token = gw.dir.join("admin.token");
    let warned = |a: &rolegate::reload::Attempt| {
        a.warnings
            .iter()
            .any(|d| d.file.ends_with("admin.token") && d.message.contains("any user may read"))
    };
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let a = gw
        .gateway
        .reloader()
        .reload(&gw.gateway, Trigger::Admin)
        .await;
    assert!(warned(&a), "{:?}", a.warnings);
    assert!(a.warnings.iter().any(|d| d.message.contains("mode 644")));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
    let a = gw
        .gateway
        .reloader()
        .reload(&gw.gateway, Trigger::Admin)
        .await;
    assert!(!warned(&a), "{:?}", a.warnings);
}

/// Waits (at most 10 s) until `want`'s rules are in force.
async fn wait_for_rules(gw: &Gw, want: char) {
    for _ in 0..500 {
        if in_force(gw).await == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("rules {want} never came into force");
}
