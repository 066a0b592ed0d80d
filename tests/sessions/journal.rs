//! A damaged embedded-store journal never silently forgets a revocation:
//! a torn last line (a crash mid-append) is skipped and the gateway starts
//! with every earlier revocation and deactivation enforced; an unreadable
//! line in the middle refuses the start, naming the file and the line, and
//! leaves the journal untouched. Real gateway, real upstream.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use crate::common::*;
use serde_json::json;

const RULES: &str = r#"
roles:
  viewer: { grants: [bot.flows.view] }
routes:
  - { name: flows, match: { methods: [GET], path: "/bots/{bot}/flows" }, require: bot.flows.view }
"#;

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

fn config(dir: &Path, upstream: SocketAddr) -> String {
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    std::fs::write(dir.join("admin.token"), ADMIN_TOKEN).unwrap();
    format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{}upstreams:\n  app: {{ url: \"http://{upstream}\" }}\nrules: rules.yaml\n\
         admin: {{ addr: \"127.0.0.1:0\", token_file: admin.token }}\n\
         sessions:\n  idle_timeout: 10s\n  flush_interval: 50ms\n  state_dir: state\n",
        identity_yaml()
    )
}

fn tok(sub: &str, sid: &str) -> String {
    token_with(json!({ "sub": sub, "sid": sid, "roles": ["viewer"] }))
}

async fn flows(gw: &Gw, t: &str) -> Resp {
    req(gw.addr, "GET", "/bots/1/flows", Some(t), &[]).await
}

async fn admin(gw: &Gw, path: &str) -> Resp {
    req(gw.admin.unwrap(), "POST", path, Some(ADMIN_TOKEN), &[]).await
}

/// Runs a gateway in `dir` that sees four sessions, revokes one by id, logs
/// one out and deactivates a user; returns their tokens (revoked, logged
/// out, deactivated, alive). That gateway keeps running (and holds its
/// `state_dir` lock), so the tests work on a copy of its journal.
async fn record_revocations(dir: &Path, up: SocketAddr) -> [String; 4] {
    let gw = start_with_config(dir, &config(dir, up)).await;
    let toks = [
        tok("alice", "revoked-1"),
        tok("bob", "logout-1"),
        tok("dave", "deact-1"),
        tok("erin", "alive-1"),
    ];
    for t in &toks {
        assert_eq!(flows(&gw, t).await.status, 200);
    }
    assert_eq!(admin(&gw, "/sessions/revoked-1/revoke").await.status, 200);
    let r = req(gw.addr, "POST", "/.rolegate/logout", Some(&toks[1]), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(admin(&gw, "/users/dave/deactivate").await.status, 200);
    toks
}

/// A copy of the state directory (the running gateway keeps its lock).
fn copy_state(from: &Path) -> std::path::PathBuf {
    let to = scratch_dir("journal-copy");
    std::fs::create_dir_all(to.join("state")).unwrap();
    std::fs::copy(
        from.join("state/sessions.journal"),
        to.join("state/sessions.journal"),
    )
    .unwrap();
    to
}

#[tokio::test]
async fn a_torn_last_line_is_skipped_and_earlier_revocations_still_hold() {
    let up = Upstream::start().await;
    let dir = scratch_dir("journal-torn");
    let toks = record_revocations(&dir, up.addr).await;
    let copy = copy_state(&dir);
    // A crash in the middle of an append.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(copy.join("state/sessions.journal"))
        .unwrap();
    f.write_all(b"{\"op\":\"end\",\"s\":\"alive-1\",\"u\":\"er")
        .unwrap();
    drop(f);
    let gw = start_with_config(&copy, &config(&copy, up.addr)).await;
    let refusal = |r: Resp| (r.status, r.error(), r.json()["reason"].clone());
    assert_eq!(
        refusal(flows(&gw, &toks[0]).await),
        (401, "session_ended".into(), json!("revoked"))
    );
    assert_eq!(
        refusal(flows(&gw, &toks[1]).await),
        (401, "session_ended".into(), json!("logout"))
    );
    assert_eq!(flows(&gw, &toks[2]).await.error(), "user_deactivated");
    assert_eq!(flows(&gw, &toks[3]).await.status, 200);
}

#[tokio::test]
async fn a_damaged_line_in_the_middle_refuses_to_start() {
    let up = Upstream::start().await;
    let dir = scratch_dir("journal-damaged");
    record_revocations(&dir, up.addr).await;
    let copy = copy_state(&dir);
    let path = copy.join("state/sessions.journal");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    // Damage the first line; the revocations come after it.
    lines[0] = "{\"op\":\"seen\",\"s\":";
    let damaged = lines.join("\n") + "\n";
    std::fs::write(&path, &damaged).unwrap();

    let cfg = config(&copy, up.addr);
    std::fs::write(copy.join("rolegate.yaml"), &cfg).unwrap();
    let loaded = match rolegate::config::load(&copy.join("rolegate.yaml")) {
        Ok(l) => l,
        Err(_) => panic!("config did not load"),
    };
    let err = match rolegate::session::Store::open(&loaded.runtime.sessions).await {
        Ok(_) => panic!("the gateway started over a damaged journal"),
        Err(e) => e,
    };
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("line 1"), "{err}");
    assert!(err.contains("refusing to start"), "{err}");
    // Not compacted over: the operator finds the journal as it was.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), damaged);
}
