//! The release-facing surface: the `rolegate` binary's subcommands, the
//! shipped configuration and rules, and the demo.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::*;
use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rolegate"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str], dir: &Path) -> Output {
    bin()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run rolegate")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A config dir with the test identity and `rules` as its rules file.
fn config_dir(rules: &str, upstream: &str) -> PathBuf {
    let dir = scratch_dir("cli");
    std::fs::write(dir.join("rules.yaml"), rules).unwrap();
    let cfg = format!(
        "{}upstreams:\n  app: {{ url: \"{upstream}\" }}\nrules: rules.yaml\n",
        identity_yaml()
    );
    std::fs::write(dir.join("rolegate.yaml"), cfg).unwrap();
    dir
}

// ------------------------------------------------------------------- serve

#[test]
fn serve_refuses_a_bad_worker_count() {
    for bad in ["0", "two", ""] {
        let o = bin()
            .args(["serve"])
            .current_dir(root())
            .env("TOKIO_WORKER_THREADS", bad)
            .output()
            .expect("run rolegate");
        let out = text(&o);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {out}");
        assert!(
            out.contains("TOKIO_WORKER_THREADS") && out.contains("not a positive integer"),
            "{bad:?}: {out}"
        );
    }
}

// ------------------------------------------------------------------- check

#[test]
fn shipped_config_checks_clean_and_strict() {
    let o = run(&["check", "--strict"], &root());
    assert!(
        o.status.success(),
        "rolegate check --strict on the shipped config:\n{}",
        text(&o)
    );
    assert!(text(&o).contains("ok ("));
}

#[test]
fn check_reports_every_error_with_file_and_line() {
    let rules = "roles:\n  a: { includes: [b], grants: [x.view] }\n  b: { includes: [a] }\n  c: { grant: [x.view] }\n  d: { includes: [nope], grants: [x.view] }\nroutes:\n  - { name: r1, match: { path: /x }, require: x.view }\n  - { name: r2, match: { path: /y } }\n";
    let dir = config_dir(rules, "http://127.0.0.1:9");
    let o = run(&["check"], &dir);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let out = text(&o);
    // The typo is a parse error; fix it and the semantic errors appear, all at once.
    assert!(
        out.contains("rules.yaml:4") && out.contains("unknown field"),
        "{out}"
    );
    // One line, as every diagnostic: `file:line: error: message`, then the count.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("rules.yaml:4: error: unknown field `grant`"),
        "{out}"
    );
    assert!(lines[1].ends_with("1 error(s); not loaded"), "{out}");
    let rules = rules.replace("grant:", "grants:");
    std::fs::write(dir.join("rules.yaml"), rules).unwrap();
    let o = run(&["check"], &dir);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("cycle"), "include cycle not reported: {out}");
    assert!(
        out.contains("nope"),
        "unknown included role not reported: {out}"
    );
    assert!(
        out.contains("rules.yaml:8") && out.contains("r2"),
        "route without require not reported: {out}"
    );
    assert!(
        out.lines().filter(|l| l.contains(": error: ")).count() >= 3,
        "{out}"
    );
}

#[test]
fn check_reports_bad_listen_limits_with_file_and_line() {
    let rules = "roles:\n  v: { grants: [x.view] }\nroutes:\n  - { name: r, match: { path: /x }, require: x.view }\n";
    let dir = config_dir(rules, "http://127.0.0.1:9");
    let cfg = std::fs::read_to_string(dir.join("rolegate.yaml")).unwrap();
    let listen = "\
listen:
  keepalive_timeout: 0s
  request_timeout: soon
  body_read_timeout: 30s
  max_uri_bytes: 0
  max_headers: 0
  max_connections: 0
  max_connections_per_ip: 0
  rate_limit:
    per_ip: { rate: 100/fortnight }
    per_principal: { rate: 0/s, burst: 5 }
  send_timeout: 0s
";
    std::fs::write(dir.join("rolegate.yaml"), format!("{listen}{cfg}")).unwrap();
    let o = run(&["check"], &dir);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    for want in [
        "rolegate.yaml:2: error: listen.keepalive_timeout must be greater than zero",
        "rolegate.yaml:3: error: listen.request_timeout: invalid duration",
        "rolegate.yaml:5: error: listen.max_uri_bytes must be greater than zero",
        "rolegate.yaml:6: error: listen.max_headers must be greater than zero",
        "rolegate.yaml:7: error: listen.max_connections must be greater than zero",
        "rolegate.yaml:8: error: listen.max_connections_per_ip must be greater than zero",
        "rolegate.yaml:10: error: listen.rate_limit.per_ip.rate: invalid rate \"100/fortnight\"",
        "rolegate.yaml:11: error: listen.rate_limit.per_principal.rate: invalid rate \"0/s\"",
        "rolegate.yaml:12: error: listen.send_timeout must be greater than zero",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(!out.contains("body_read_timeout"), "{out}");

    // The same keys, valid, check clean; a zero burst is refused.
    let listen = "\
listen:
  keepalive_timeout: 75s
  max_uri_bytes: 4096
  rate_limit:
    per_ip: { rate: 600/m, burst: 0 }
    per_principal: { rate: 10/30s }
";
    std::fs::write(dir.join("rolegate.yaml"), format!("{listen}{cfg}")).unwrap();
    let o = run(&["check"], &dir);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains(
            "rolegate.yaml:5: error: listen.rate_limit.per_ip.burst must be between 1 and"
        ),
        "{out}"
    );
    assert_eq!(out.matches(": error: ").count(), 1, "{out}");
    let valid = listen.replace("burst: 0", "burst: 1200");
    std::fs::write(dir.join("rolegate.yaml"), format!("{valid}{cfg}")).unwrap();
    let o = run(&["check"], &dir);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn ambiguous_or_empty_requirements_are_errors() {
    for require in [
        "{ all: [x.view], any: [x.view] }",
        "{ any: [] }",
        "{ none: [x.view] }",
    ] {
        let rules = format!(
            "roles:\n  v: {{ grants: [x.view] }}\nroutes:\n  - {{ name: r, match: {{ path: /x }}, require: {require} }}\n"
        );
        let dir = config_dir(&rules, "http://127.0.0.1:9");
        let o = run(&["check"], &dir);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{require} was accepted: {}",
            text(&o)
        );
    }
}

#[test]
fn capability_level_mistakes_are_check_errors_with_file_and_line() {
    let rules = "capability_levels:\n  channel: [view, reply, view]\n  empty: []\nroles:\n  v: { grants: [channel.a.b.edit] }\nroutes:\n  - { name: r, match: { path: /x }, require: channel.a.b.none }\n";
    let dir = config_dir(rules, "http://127.0.0.1:9");
    let o = run(&["check"], &dir);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    for want in [
        "rules.yaml:2: error: capability_levels channel: level `view` is listed twice",
        "rules.yaml:3: error: capability_levels empty: empty ladder",
    ] {
        assert!(out.contains(want), "missing {want:?}: {out}");
    }
    // With the ladder fixed, the capabilities that do not end in a level.
    let rules = rules.replace("[view, reply, view]", "[view, reply, manage]");
    let rules = rules.replace("  empty: []\n", "");
    std::fs::write(dir.join("rules.yaml"), rules).unwrap();
    let o = run(&["check"], &dir);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains(
            "rules.yaml:4: error: role v: `channel.a.b.edit` is under the level ladder `channel`"
        ),
        "{out}"
    );
    assert!(
        out.contains("rules.yaml:6: error: route r: `channel.a.b.none`: `none` is not a level"),
        "{out}"
    );
}

/// The shipped config signs its dev issuer's tokens with a secret published
/// in the repository: on a listener that is not loopback it is an error
/// (anyone could mint tokens), on loopback it checks clean.
#[test]
fn the_published_dev_secret_is_refused_off_loopback() {
    let shipped = std::fs::read_to_string(root().join("rolegate.yaml")).unwrap();
    let secret = root().join("demo/dev-hmac.secret");
    let rules = root().join("rules");
    let at = |addr: &str| {
        let dir = scratch_dir("published");
        let cfg = shipped
            .replace("\"127.0.0.1:8080\"", &format!("\"{addr}\""))
            .replace("demo/dev-hmac.secret", &secret.display().to_string())
            .replace("rules: rules", &format!("rules: {}", rules.display()));
        assert!(cfg.contains(addr));
        std::fs::write(dir.join("rolegate.yaml"), cfg).unwrap();
        dir
    };
    let o = run(&["check"], &at("0.0.0.0:8080"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("secret published in rolegate's repository"),
        "{}",
        text(&o)
    );
    let o = run(&["check", "--strict"], &at("127.0.0.1:8080"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // A secret of one's own is not refused.
    let dir = at("0.0.0.0:8080");
    std::fs::write(
        dir.join("own.secret"),
        "0123456789abcdef0123456789abcdef-own",
    )
    .unwrap();
    let cfg = std::fs::read_to_string(dir.join("rolegate.yaml"))
        .unwrap()
        .replace(&secret.display().to_string(), "own.secret");
    std::fs::write(dir.join("rolegate.yaml"), cfg).unwrap();
    let o = run(&["check"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn strict_check_fails_on_warnings_only() {
    // A role that grants nothing, and one whose grants no route requires, are warnings.
    let rules = "roles:\n  empty: {}\n  orphan: { grants: [y.view] }\n  v: { grants: [x.view] }\nroutes:\n  - { name: r, match: { path: /x }, require: x.view }\n";
    let dir = config_dir(rules, "http://127.0.0.1:9");
    let o = run(&["check"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("warning"), "{}", text(&o));
    assert!(text(&o).contains("role orphan: unused"), "{}", text(&o));
    let o = run(&["check", "--strict"], &dir);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn a_role_that_only_unmasks_is_used() {
    let rules = "roles:\n  v: { grants: [x.view] }\n  pii: { grants: [x.pii.view] }\nmasks:\n  m: { unmask_with: x.pii.view, fields: [{ path: $..phone, as: last4 }] }\nroutes:\n  - { name: r, match: { path: /x }, require: x.view, mask: m }\n";
    let dir = config_dir(rules, "http://127.0.0.1:9");
    let o = run(&["check", "--strict"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains("role pii: unused"), "{}", text(&o));
}

#[test]
fn admin_listener_on_the_public_address_is_an_error() {
    let dir = scratch_dir("cli-admin");
    std::fs::write(dir.join("admin.token"), "0123456789abcdef0123").unwrap();
    for (listen, admin) in [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "127.0.0.1:8080"),
    ] {
        let cfg = format!(
            "listen: {{ addr: \"{listen}\" }}\nadmin: {{ addr: \"{admin}\", token_file: admin.token }}\nupstreams: {{ app: {{ url: \"http://127.0.0.1:9\" }} }}\nroutes:\n  - {{ name: s, match: {{ path: /s }}, public: true }}\n"
        );
        std::fs::write(dir.join("rolegate.yaml"), cfg).unwrap();
        let o = run(&["check"], &dir);
        assert_eq!(o.status.code(), Some(2), "{listen} / {admin}: {}", text(&o));
        assert!(text(&o).contains("admin.addr"), "{}", text(&o));
    }
}

// ------------------------------------------------------- token and explain

/// A dev issuer with `types` mints tokens of its first type, which it then
/// accepts.
#[test]
fn minted_tokens_carry_the_dev_issuer_s_first_type() {
    let dir = config_dir(TEST_RULES, "http://127.0.0.1:9");
    let cfg = std::fs::read_to_string(dir.join("rolegate.yaml")).unwrap();
    let typed = cfg.replacen("dev: true", "dev: true\n      types: [at+jwt, JWT]", 1);
    assert_ne!(cfg, typed);
    std::fs::write(dir.join("rolegate.yaml"), typed).unwrap();
    let o = run(&["token", "--sub", "dana", "--roles", "viewer"], &dir);
    assert!(o.status.success(), "{}", text(&o));
    let token = String::from_utf8(o.stdout).unwrap().trim().to_string();
    use base64::Engine;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    let header: Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["typ"], "at+jwt");
    let o = run(
        &[
            "explain",
            "--token",
            &token,
            "--json",
            "GET",
            "/bots/7/flows",
        ],
        &dir,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn token_minting_needs_a_dev_issuer_and_explain_verifies_it() {
    let dir = config_dir(TEST_RULES, "http://127.0.0.1:9");
    let o = run(
        &[
            "token", "--sub", "dana", "--roles", "viewer", "--ttl", "10m",
        ],
        &dir,
    );
    assert!(o.status.success(), "{}", text(&o));
    let token = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3);

    let o = run(
        &[
            "explain",
            "--token",
            &token,
            "--json",
            "GET",
            "/bots/7/flows",
        ],
        &dir,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["decision"], "allow");
    assert_eq!(report["principal"]["subject"], "dana");
    assert_eq!(report["route"]["name"], "flows-view");
    assert!(
        report["trace"]["capabilities"]
            .to_string()
            .contains("bot.flows.view")
    );

    let o = run(
        &[
            "explain",
            "--token",
            &token,
            "--json",
            "PUT",
            "/bots/7/flows",
        ],
        &dir,
    );
    assert_eq!(o.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (report["decision"].as_str(), report["status"].as_u64()),
        (Some("deny"), Some(403))
    );
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("bot.flows.edit")
    );

    // A tampered token is refused by explain exactly like by the gateway.
    let mut bad = token.clone();
    bad.push('x');
    let o = run(
        &["explain", "--token", &bad, "--json", "GET", "/bots/7/flows"],
        &dir,
    );
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["status"], 401);

    // No dev issuer: refuse to mint.
    let cfg = std::fs::read_to_string(dir.join("rolegate.yaml"))
        .unwrap()
        .replace("dev: true", "dev: false");
    std::fs::write(dir.join("rolegate.yaml"), cfg).unwrap();
    let o = run(&["token", "--sub", "dana"], &dir);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("dev: true"), "{}", text(&o));
}

#[test]
fn explain_shows_normalisation_routing_and_trace() {
    let dir = config_dir(TEST_RULES, "http://127.0.0.1:9");
    let claims = r#"{"sub":"ann","roles":["approver@bot:1","developer@bot:2"]}"#;
    let o = run(
        &["explain", "--claims", claims, "POST", "/bots/1/publish"],
        &dir,
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("route       publish"), "{out}");
    assert!(out.contains("approver@bot:1"), "{out}");
    assert!(out.contains("DENY (status 403)"), "{out}");

    let o = run(
        &[
            "explain",
            "--claims",
            claims,
            "--json",
            "GET",
            "/bots/1/%2e%2e/publish",
        ],
        &dir,
    );
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (report["status"].as_u64(), report["detail"].as_str()),
        (Some(400), Some("dot_segment"))
    );

    let o = run(
        &["explain", "--claims", claims, "--json", "GET", "/nowhere"],
        &dir,
    );
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["error"], "no_route");

    // The method as sent: `get` is refused as the gateway refuses it, not
    // decided as GET.
    let o = run(
        &[
            "explain",
            "--claims",
            claims,
            "--json",
            "get",
            "/bots/1/flows",
        ],
        &dir,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (report["status"].as_u64(), report["detail"].as_str()),
        (Some(400), Some("method_case"))
    );
}

#[test]
fn explain_says_whether_the_answer_would_be_masked() {
    for (roles, masked) in [(r#"["agent"]"#, true), (r#"["agent","supervisor"]"#, false)] {
        let claims = format!(r#"{{"sub":"x","roles":{roles}}}"#);
        let o = run(
            &[
                "explain",
                "--claims",
                &claims,
                "--json",
                "GET",
                "/api/customers/c-1/history",
            ],
            &root(),
        );
        let report: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["decision"], "allow", "{report}");
        assert_eq!(report["mask"]["policy"], "customer-pii");
        assert_eq!(report["mask"]["masked"], masked, "{roles}");
    }
}

// -------------------------------------------------------------- test tables

#[test]
fn relation_sources_are_checked_and_a_relation_without_one_is_a_warning() {
    let rules = "roles:\n  v: { grants: [x.view] }\nroutes:\n  - { name: r, match: { path: \"/x/{c}\" }, require: { all: [x.view, \"relation:active({c})\"] } }\n";
    let dir = config_dir(rules, "http://127.0.0.1:9");
    let o = run(&["check"], &dir);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("relation \"active\" has no source"), "{out}");
    let cfg = std::fs::read_to_string(dir.join("rolegate.yaml")).unwrap();
    let bad = format!(
        "{cfg}relations:\n  active: {{ pull: {{ upstream: nope, path: rel, timeout: 0s, cache_ttl: soon }} }}\n  Bad: {{ pull: {{ upstream: app, path: /r }} }}\n"
    );
    std::fs::write(dir.join("rolegate.yaml"), bad).unwrap();
    let o = run(&["check"], &dir);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    for want in [
        "unknown upstream \"nope\"",
        "pull.path \"rel\"",
        "pull.timeout must be above 0",
        "pull.cache_ttl",
        "relations.Bad: invalid relation name",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let good = format!(
        "{cfg}relations:\n  active: {{ pull: {{ upstream: app, path: /relations/active }} }}\n"
    );
    std::fs::write(dir.join("rolegate.yaml"), good).unwrap();
    let o = run(&["check", "--strict"], &dir);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_table_case_may_state_relations() {
    let rules = "roles:\n  v: { grants: [x.view] }\nroutes:\n  - { name: r, match: { path: \"/x/{c}\" }, require: { all: [x.view, \"relation:active({c}, 'k')\"] } }\n";
    let dir = config_dir(rules, "http://127.0.0.1:9");
    let table = "name: t\nprincipals:\n  v: { sub: v, roles: [v] }\ncases:\n  - { as: v, request: \"GET /x/c1\", expect: allow, relations: { \"active(c1, k)\": true } }\n  - { as: v, request: \"GET /x/c1\", expect: deny, code: condition_failed, relations: { \"active(c1, k)\": false } }\n  - { as: v, request: \"GET /x/c2\", expect: deny, code: relation_unavailable, relations: { \"active(c1, k)\": true } }\n  - { as: v, request: \"GET /x/c1\", expect: deny, code: relation_unavailable }\n";
    std::fs::write(dir.join("t.yaml"), table).unwrap();
    let o = run(&["test", "t.yaml"], &dir);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("4 passed, 0 failed, 0 pending"), "{out}");
    let broken = "name: t\nprincipals:\n  v: { sub: v, roles: [v] }\ncases:\n  - { as: v, request: \"GET /x/c1\", expect: allow, relations: { \"active c1\": true } }\n";
    std::fs::write(dir.join("t.yaml"), broken).unwrap();
    let o = run(&["test", "t.yaml"], &dir);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("is not \"name(arg, ...)\""),
        "{}",
        text(&o)
    );
}

#[test]
fn a_table_case_may_say_how_long_the_session_was_idle() {
    let rules = "roles:\n  v: { grants: [x.view] }\n  quick: { idle_timeout: 5m }\nroutes:\n  - { name: r, match: { methods: [GET], path: /x }, require: x.view }\n  - { name: s, match: { path: /status }, public: true }\n";
    let dir = config_dir(rules, "http://127.0.0.1:9");
    // `quick` holders: 5m; everyone else: sessions.idle_timeout (default 30m).
    let table = "name: t\nprincipals:\n  q: { sub: q, roles: [v, quick] }\n  v: { sub: v, roles: [v] }\n  n: { sub: n }\ncases:\n  - { as: q, request: \"GET /x\", idle_for: 6m, expect: deny, code: session_expired }\n  - { as: q, request: \"GET /x\", idle_for: 5m, expect: allow }\n  - { as: q, request: \"GET /status\", idle_for: 6m, expect: allow }\n  - { as: v, request: \"GET /x\", idle_for: 6m, expect: allow }\n  - { as: v, request: \"GET /x\", idle_for: 31m, expect: deny, code: session_expired }\n  - { as: n, request: \"GET /x\", idle_for: 31m, expect: deny, code: session_expired }\n  - { as: n, request: \"GET /x\", idle_for: 1m, expect: deny, code: missing_capability }\n";
    std::fs::write(dir.join("t.yaml"), table).unwrap();
    let o = run(&["test", "t.yaml"], &dir);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("7 passed, 0 failed, 0 pending"), "{out}");
    let wrong = "name: t\nprincipals:\n  q: { sub: q, roles: [v, quick] }\ncases:\n  - { as: q, request: \"GET /x\", idle_for: 6m, expect: allow }\n  - { as: q, request: \"GET /x\", idle_for: soon, expect: allow }\n";
    std::fs::write(dir.join("t.yaml"), wrong).unwrap();
    let o = run(&["test", "t.yaml"], &dir);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("after 6m idle") && out.contains("got deny (session_expired)"),
        "{out}"
    );
    assert!(out.contains("case 2: idle_for: invalid duration"), "{out}");
}

#[test]
fn explain_takes_stated_relations() {
    let rules = "roles:\n  v: { grants: [x.view] }\nroutes:\n  - { name: r, match: { path: \"/x/{c}\" }, require: { all: [x.view, \"relation:active({c})\"] } }\n";
    let dir = config_dir(rules, "http://127.0.0.1:9");
    let claims = r#"{"sub":"v","roles":["v"]}"#;
    let explain = |extra: &[&str]| {
        let mut args = vec!["explain", "--claims", claims, "--json"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["GET", "/x/c1"]);
        run(&args, &dir)
    };
    let o = explain(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("relation_unavailable"), "{}", text(&o));
    let o = explain(&["--relation", "active(c1)=true"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = explain(&["--relation", "active(c1)=false"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("condition_failed"), "{}", text(&o));
    let o = explain(&["--relation", "active(c1)"]);
    assert!(
        !o.status.success() && o.status.code() != Some(1),
        "{}",
        text(&o)
    );
}

#[test]
fn shipped_policy_tables_pass() {
    let o = run(&["test", "rules/tests"], &root());
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let summary = out.lines().last().unwrap();
    let passed: usize = summary.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(passed >= 100, "too few policy cases ran: {summary}");
}

#[test]
fn a_wrong_expectation_fails_the_table() {
    let dir = config_dir(TEST_RULES, "http://127.0.0.1:9");
    let table = "name: t\nprincipals:\n  v: { sub: v, roles: [viewer] }\ncases:\n  - { as: v, request: \"GET /bots/1/flows\", expect: allow }\n  - { as: v, request: \"PUT /bots/1/flows\", expect: allow }\n  - { as: v, request: \"GET /bots/1/%2e%2e/x\", expect: bad_request }\n  - { as: v, request: \"GET /zzz\", expect: no_route }\n  - { as: v, request: \"get /bots/1/flows\", expect: bad_request }\n  - { as: v, request: \"PUT /bots/1/flows\", expect: allow, pending: \"later issue\" }\n";
    std::fs::write(dir.join("t.yaml"), table).unwrap();
    let o = run(&["test", "t.yaml"], &dir);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("FAIL") && out.contains("#2"), "{out}");
    assert!(out.contains("4 passed, 1 failed, 1 pending"), "{out}");
}

// ------------------------------------------------------------ serve & demo

#[tokio::test]
async fn serve_runs_the_binary_in_front_of_an_upstream() {
    let up = Upstream::start().await;
    let dir = config_dir(TEST_RULES, &format!("http://{}", up.addr));
    let port = free_port();
    let cfg = std::fs::read_to_string(dir.join("rolegate.yaml")).unwrap();
    std::fs::write(
        dir.join("rolegate.yaml"),
        format!("listen: {{ addr: \"127.0.0.1:{port}\" }}\n{cfg}"),
    )
    .unwrap();
    let _child = Proc(
        bin()
            .args(["serve", "-c", "rolegate.yaml"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let t = token_with(serde_json::json!({ "roles": ["viewer"] }));
    let r = req(addr, "GET", "/bots/3/flows", Some(&t), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/bots/3/flows");
    let r = req(addr, "PUT", "/bots/3/flows", Some(&t), &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(up.count(), 1);
}

#[test]
fn serve_refuses_to_start_on_a_bad_config() {
    let dir = config_dir(
        "routes:\n  - { name: r, match: { path: /x }, require: nope.cap, upstream: missing }\n",
        "http://127.0.0.1:9",
    );
    let o = run(&["serve"], &dir);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("unknown upstream"), "{}", text(&o));
}

// ------------------------------------------------------------ users (CSV)

/// A token file with a 32-character token, in `dir`.
fn token_file(dir: &Path, name: &str) -> PathBuf {
    let f = dir.join(name);
    std::fs::write(&f, "0123456789abcdef0123456789abcdef\n").unwrap();
    f
}

#[test]
fn users_subcommands_refuse_bad_arguments_with_exit_2() {
    let dir = scratch_dir("users-args");
    let tok = token_file(&dir, "admin.token");
    let tok = tok.to_str().unwrap();
    let rows: &[(&[&str], &str)] = &[
        (&["users"], "Usage: rolegate users"),
        (&["users", "import"], "<FILE>"),
        (&["users", "export", "--bogus"], "--bogus"),
        (&["users", "export", "--partner"], "--partner"),
        (
            &[
                "users",
                "export",
                "--admin",
                "http://127.0.0.1:9",
                "--token-file",
                tok,
            ],
            "expected HOST:PORT",
        ),
        (
            &[
                "users",
                "export",
                "--admin",
                "127.0.0.1",
                "--token-file",
                tok,
            ],
            "expected HOST:PORT",
        ),
        (
            &[
                "users",
                "export",
                "--admin",
                "127.0.0.1:9",
                "--token-file",
                "nope.token",
            ],
            "--token-file nope.token",
        ),
        (
            &[
                "users",
                "import",
                "missing.csv",
                "--admin",
                "127.0.0.1:9",
                "--token-file",
                tok,
            ],
            "reading missing.csv",
        ),
        // No flags: the config is needed, and there is none here.
        (&["users", "export"], "rolegate.yaml: error: cannot read"),
    ];
    for (args, says) in rows {
        let o = run(args, &dir);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains(says),
            "{args:?} should say {says:?}: {}",
            text(&o)
        );
        assert!(
            o.stdout.is_empty() || args.len() == 1,
            "{args:?}: {}",
            text(&o)
        );
    }
}

#[test]
fn users_commands_need_an_admin_section_or_both_flags() {
    let dir = config_dir(TEST_RULES, "http://127.0.0.1:9");
    for args in [
        &["users", "export"][..],
        &["users", "import", "users.csv", "--admin", "127.0.0.1:9"],
    ] {
        std::fs::write(dir.join("users.csv"), "user\n").unwrap();
        let o = run(args, &dir);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("rolegate.yaml: no `admin:` section"),
            "{args:?}: {}",
            text(&o)
        );
    }
}

#[test]
fn users_commands_report_a_refused_connection_with_exit_2() {
    let dir = scratch_dir("users-refused");
    let tok = token_file(&dir, "admin.token");
    let csv = dir.join("users.csv");
    std::fs::write(&csv, "user,roles\r\nalice,agent\r\n").unwrap();
    let port = free_port(); // free a moment ago: nothing listens there
    let admin = format!("127.0.0.1:{port}");
    let tok = tok.to_str().unwrap();
    let csv = csv.to_str().unwrap();
    for args in [
        &[
            "users",
            "export",
            "--partner",
            "acme",
            "--admin",
            &admin,
            "--token-file",
            tok,
        ][..],
        &[
            "users",
            "import",
            csv,
            "--admin",
            &admin,
            "--token-file",
            tok,
        ],
    ] {
        let o = run(args, &dir);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}");
        assert!(
            out.contains(&format!(
                "error: cannot reach the admin API at http://{admin}"
            )),
            "{args:?}: {out}"
        );
        assert!(out.to_lowercase().contains("connection refused"), "{out}");
        assert!(o.stdout.is_empty(), "{args:?}: {out}");
    }
}

#[test]
fn users_commands_take_the_admin_address_and_token_from_the_config() {
    // `admin.token_file` resolves against the config's directory, not the
    // working directory; an unspecified `admin.addr` is called on loopback.
    let dir = config_dir(TEST_RULES, "http://127.0.0.1:9");
    token_file(&dir, "admin.token");
    let port = free_port();
    let cfg = std::fs::read_to_string(dir.join("rolegate.yaml")).unwrap();
    std::fs::write(
        dir.join("rolegate.yaml"),
        format!("admin: {{ addr: \"0.0.0.0:{port}\", token_file: admin.token }}\n{cfg}"),
    )
    .unwrap();
    let elsewhere = scratch_dir("users-cwd");
    let config = dir.join("rolegate.yaml");
    let o = run(
        &["users", "export", "-c", config.to_str().unwrap()],
        &elsewhere,
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains(&format!(
            "cannot reach the admin API at http://127.0.0.1:{port}"
        )),
        "{out}"
    );
}

#[tokio::test]
async fn users_commands_exit_1_when_the_gateway_refuses_them() {
    // A real gateway with an admin listener; a wrong admin token is refused
    // (401) before any endpoint is looked up.
    let dir = config_dir(TEST_RULES, "http://127.0.0.1:9");
    token_file(&dir, "admin.token");
    let (port, admin_port) = (free_port(), free_port());
    let cfg = std::fs::read_to_string(dir.join("rolegate.yaml")).unwrap();
    std::fs::write(
        dir.join("rolegate.yaml"),
        format!(
            "listen: {{ addr: \"127.0.0.1:{port}\" }}\nadmin: {{ addr: \"127.0.0.1:{admin_port}\", token_file: admin.token }}\n{cfg}"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("wrong.token"), "not-the-admin-token-at-all\n").unwrap();
    std::fs::write(dir.join("users.csv"), "user\r\nalice\r\n").unwrap();
    let _gateway = Proc(
        bin()
            .args(["serve", "-c", "rolegate.yaml"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(admin_port).await;

    let o = run(&["users", "export", "--token-file", "wrong.token"], &dir);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(o.stdout.is_empty(), "no CSV on a refusal: {out}");
    assert!(
        out.contains("error: the gateway refused the export (401 Unauthorized): unauthorized"),
        "{out}"
    );

    let o = run(
        &[
            "users",
            "import",
            "users.csv",
            "--token-file",
            "wrong.token",
        ],
        &dir,
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    // The answer on stdout, the refusal on stderr.
    let answer: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(answer["error"], "unauthorized", "{out}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("refused the import (401 Unauthorized)"),
        "{out}"
    );
}

/// Reads the demo's banner up to the line that ends it.
fn read_banner(child: &mut Child) -> String {
    let out = child.stdout.take().unwrap();
    let mut reader = BufReader::new(out);
    let mut banner = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("demo exited early:\n{banner}");
        }
        banner.push_str(&line);
        if line.contains("Ctrl-C stops the demo") {
            // Keep draining so the demo never blocks on a full pipe.
            std::thread::spawn(move || for _ in reader.lines() {});
            return banner;
        }
    }
}

fn banner_var(banner: &str, name: &str) -> String {
    banner
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} not in banner:\n{banner}"))
        .to_string()
}

#[tokio::test]
async fn demo_runs_with_zero_files_and_shows_allowed_and_denied() {
    let port = free_port();
    let empty = scratch_dir("demo");
    let admin_port = free_port();
    let mut child = bin()
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            &format!("127.0.0.1:{admin_port}"),
        ])
        .current_dir(&empty)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let banner = read_banner(&mut child);
    let _child = Proc(child);
    wait_listening(port).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(banner.contains("curl -i"), "{banner}");

    let r = req(addr, "GET", "/api/status", None, &[]).await;
    assert_eq!(r.status, 200);
    let r = req(addr, "GET", "/api/customers/c-1001", None, &[]).await;
    assert_eq!(r.status, 401);

    let senior = banner_var(&banner, "SENIOR");
    let r = req(addr, "GET", "/api/customers/c-1001", Some(&senior), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["customer"]["id"], "c-1001");
    assert_eq!(r.json()["seen_by"]["user"], "senior-sam");

    // The same customer history: masked for the agent, in full for the supervisor.
    let agent = banner_var(&banner, "AGENT");
    let sup = banner_var(&banner, "SUPER");
    let masked = req(
        addr,
        "GET",
        "/api/customers/c-1001/history",
        Some(&agent),
        &[],
    )
    .await;
    let full = req(
        addr,
        "GET",
        "/api/customers/c-1001/history",
        Some(&sup),
        &[],
    )
    .await;
    assert_eq!((masked.status, full.status), (200, 200));
    let (masked, full) = (
        String::from_utf8_lossy(&masked.body).to_string(),
        String::from_utf8_lossy(&full.body).to_string(),
    );
    for secret in [
        "Asha Rao",
        "asha.rao@example.com",
        "98200 11223",
        "4242 4242 4242 4242",
    ] {
        assert!(
            !masked.contains(secret),
            "{secret} reached the agent: {masked}"
        );
        assert!(
            full.contains(secret),
            "{secret} missing for the supervisor: {full}"
        );
    }
    let r = req(addr, "GET", "/api/supervisor/dashboard", Some(&agent), &[]).await;
    assert_eq!(r.status, 403);
    let r = req(addr, "GET", "/api/supervisor/dashboard", Some(&sup), &[]).await;
    assert_eq!(r.status, 200);

    // The agent is denied c-1002 until the console pushes the conversation
    // (the banner's admin call), then allowed with PII masked, and denied
    // again once it is removed.
    let r = req(addr, "GET", "/api/customers/c-1002", Some(&agent), &[]).await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let admin_token = banner_var(&banner, "ADMIN");
    let push_line = banner
        .lines()
        .find(|l| l.contains("-X POST") && l.contains("/relations/active_conversation"))
        .unwrap_or_else(|| panic!("no push hint:\n{banner}"));
    let body = push_line.split('\'').nth(1).unwrap();
    let admin_addr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let tuple_path = "/relations/active_conversation";
    let r = req_json(admin_addr, "POST", tuple_path, Some(&admin_token), body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = req(addr, "GET", "/api/customers/c-1002", Some(&agent), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["customer"]["id"], "c-1002");
    let profile = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        !profile.contains("daniel.cohen@example.org"),
        "PII reached the agent: {profile}"
    );
    let r = req_json(admin_addr, "DELETE", tuple_path, Some(&admin_token), body).await;
    assert_eq!(r.status, 200);
    let r = req(addr, "GET", "/api/customers/c-1002", Some(&agent), &[]).await;
    assert_eq!(r.status, 403);

    // The banner says where the audit log is, and the supervisor's
    // unmasked read is in it.
    let audit = banner
        .lines()
        .find_map(|l| l.strip_prefix("#   "))
        .unwrap_or_else(|| panic!("no audit log path in the banner:\n{banner}"));
    let audited = std::fs::read_to_string(audit.trim()).unwrap();
    assert!(audited.contains("\"user\":\"super-sue\""), "{audited}");
    // The explain hint works exactly as printed (a shell with $AGENT set).
    let hint = banner
        .lines()
        .find(|l| l.contains(" explain -c "))
        .unwrap_or_else(|| panic!("no explain hint:\n{banner}"));
    let o = Command::new("sh")
        .args(["-c", hint])
        .env("AGENT", &agent)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "explain as printed: {}", text(&o));
    assert!(text(&o).contains("relation_unavailable"), "{}", text(&o));
    // Its secret is the owner's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let cfg = hint.split('"').nth(3).unwrap();
        let secret = Path::new(cfg).parent().unwrap().join("dev-hmac.secret");
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", secret.display());
    }

    // The live feed (websocket), as the banner shows it: events arrive
    // through the gateway (closing on session end: tests/websocket.rs).
    assert!(
        banner.contains("websocat -H \"Authorization: Bearer $IDLE\" ws://"),
        "{banner}"
    );
    assert!(banner.contains("1008"), "{banner}");
    {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let idle = banner_var(&banner, "IDLE");
        let mut ws_req = format!("ws://127.0.0.1:{port}/api/live/chats")
            .into_client_request()
            .unwrap();
        ws_req
            .headers_mut()
            .insert("authorization", format!("Bearer {idle}").parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(ws_req, tcp)
            .await
            .expect("demo websocket");
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("an event within 10 s");
        match first {
            Some(Ok(Message::Text(t))) => {
                assert!(t.contains("incoming_chat"), "{t}");
                assert!(t.contains("idle-ida"), "{t}");
            }
            other => panic!("no event: {other:?}"),
        }
        // (Not logged out here: the persona lines below still use $IDLE.)
        ws.close(None).await.unwrap();
    }

    let viewer = banner_var(&banner, "VIEWER");
    assert_eq!(
        req(addr, "GET", "/bots/42/flows", Some(&viewer), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        req(addr, "PUT", "/bots/42/flows", Some(&viewer), &[])
            .await
            .status,
        403
    );

    let padmin = banner_var(&banner, "PADMIN");
    assert_eq!(
        req(addr, "GET", "/partners/acme/users", Some(&padmin), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        req(addr, "GET", "/partners/globex/users", Some(&padmin), &[])
            .await
            .status,
        403
    );

    // Every request the banner prints gets the status its comment promises.
    let promised = |l: &&str| l.contains("   # allowed") || l.contains("   # denied");
    for line in banner
        .lines()
        .filter(|l| l.starts_with("curl -i -X"))
        .filter(promised)
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let method = parts[3];
        let var = parts[7].trim_start_matches('$').trim_end_matches('"');
        let path = parts[8].trim_start_matches(&format!("http://127.0.0.1:{port}"));
        let comment = line.split('#').nth(1).unwrap().trim();
        let want = if comment.starts_with("allowed") {
            200
        } else {
            403
        };
        let tok = banner_var(&banner, var);
        assert_eq!(
            req(addr, method, path, Some(&tok), &[]).await.status,
            want,
            "{line}"
        );
    }
}

/// `rolegate serve` started in `dir` on `port`, its log lines sent to the
/// returned receiver.
fn serve_logging(dir: &Path, port: u16) -> (Proc, std::sync::mpsc::Receiver<String>) {
    serve_logging_with(dir, port, &[])
}

/// [`serve_logging`] with environment variables set.
fn serve_logging_with(
    dir: &Path,
    port: u16,
    env: &[(&str, &str)],
) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let cfg = std::fs::read_to_string(dir.join("rolegate.yaml")).unwrap();
    std::fs::write(
        dir.join("rolegate.yaml"),
        format!("listen: {{ addr: \"127.0.0.1:{port}\" }}\n{cfg}"),
    )
    .unwrap();
    let mut child = Proc(
        bin()
            .args(["serve", "-c", "rolegate.yaml"])
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The next log line containing `needle` (panics after 20 s without one,
/// showing the lines that came instead).
fn wait_log(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let mut seen = Vec::new();
    loop {
        let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(20)) else {
            panic!("no log line with {needle:?}; got:\n{}", seen.join("\n"));
        };
        if line.contains(needle) {
            return line;
        }
        seen.push(line);
    }
}

fn signal(child: &Proc, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Audit lines stay on when `RUST_LOG` lowers the level, access lines do
/// not; a logout's actor has the admin API's `user:` form.
#[tokio::test]
async fn audit_lines_survive_a_lower_log_level() {
    let up = Upstream::start().await;
    let dir = config_dir(TEST_RULES, &format!("http://{}", up.addr));
    let port = free_port();
    let (mut child, rx) = serve_logging_with(&dir, port, &[("RUST_LOG", "warn")]);
    wait_listening(port).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let viewer = token_with(serde_json::json!({ "roles": ["viewer"] }));
    assert_eq!(
        req(addr, "GET", "/bots/1/flows", Some(&viewer), &[])
            .await
            .status,
        200
    );
    let r = req(addr, "POST", "/.rolegate/logout", Some(&viewer), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Stopped gracefully: every buffered line is written, then stdout ends.
    signal(&child, "-TERM");
    let _ = child.0.wait();
    let lines: Vec<String> = rx.iter().collect();
    let logout: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("\"action\":\"logout\""))
        .collect();
    assert_eq!(logout.len(), 1, "{lines:#?}");
    assert!(
        logout[0].contains("\"actor\":\"user:user-1@127.0.0.1:"),
        "{}",
        logout[0]
    );
    assert!(
        !lines.iter().any(|l| l.contains("rolegate::access")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_directory_import_audits_every_user_it_changes_and_a_profile_what_it_grants() {
    let dir = config_dir(TEST_RULES, "http://127.0.0.1:9");
    token_file(&dir, "admin.token");
    let admin_port = free_port();
    let cfg = std::fs::read_to_string(dir.join("rolegate.yaml")).unwrap();
    std::fs::write(
        dir.join("rolegate.yaml"),
        format!(
            "admin: {{ addr: \"127.0.0.1:{admin_port}\", token_file: admin.token }}\ndirectory: {{ issuer: \"{ISS_RSA}\" }}\n{cfg}"
        ),
    )
    .unwrap();
    let port = free_port();
    let (mut child, rx) = serve_logging(&dir, port);
    wait_listening(admin_port).await;
    let admin = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let token = "0123456789abcdef0123456789abcdef";
    let csv = "user,roles\nann,viewer\nbob,editor\n";
    let r = req_json(admin, "POST", "/directory/users.csv", Some(token), csv).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The same file again changes nothing: no user line.
    let r = req_json(admin, "POST", "/directory/users.csv", Some(token), csv).await;
    assert_eq!(r.status, 200);
    let save = r#"{"roles":["viewer","viewer"],"grants":["bot.flows.view"]}"#;
    let r = req_json(
        admin,
        "PUT",
        "/directory/profiles/support",
        Some(token),
        save,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    signal(&child, "-TERM");
    let _ = child.0.wait();
    let lines: Vec<Value> = rx
        .iter()
        .filter(|l| l.contains("rolegate::audit"))
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    let field = |l: &Value, k: &str| l[k].as_str().unwrap_or_default().to_string();
    let users: Vec<String> = lines
        .iter()
        .filter(|l| field(l, "action") == "directory_user")
        .map(|l| field(l, "object"))
        .collect();
    assert_eq!(users, ["ann", "bob"], "{lines:#?}");
    let bob = lines
        .iter()
        .find(|l| field(l, "object") == "bob")
        .map(|l| field(l, "result"))
        .unwrap();
    assert!(
        bob.contains("\"editor\"") && bob.contains("users.csv"),
        "{bob}"
    );
    let imports = lines
        .iter()
        .filter(|l| field(l, "action") == "directory_import")
        .count();
    assert_eq!(imports, 2, "{lines:#?}");
    let profile = lines
        .iter()
        .find(|l| field(l, "action") == "directory_profile")
        .map(|l| field(l, "result"))
        .unwrap();
    let profile: Value = serde_json::from_str(&profile).unwrap();
    assert_eq!(profile["roles"], serde_json::json!(["viewer"]));
    assert_eq!(profile["grants"], serde_json::json!(["bot.flows.view"]));
}

#[tokio::test]
async fn sighup_reloads_and_a_broken_config_keeps_the_old_policy() {
    let up = Upstream::start().await;
    let dir = config_dir(TEST_RULES, &format!("http://{}", up.addr));
    // The watcher is off: only the signal reloads here.
    let cfg = std::fs::read_to_string(dir.join("rolegate.yaml")).unwrap();
    std::fs::write(
        dir.join("rolegate.yaml"),
        format!("{cfg}reload: {{ watch: false }}\n"),
    )
    .unwrap();
    let port = free_port();
    let (mut child, rx) = serve_logging(&dir, port);
    wait_listening(port).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let viewer = token_with(serde_json::json!({ "roles": ["viewer"] }));
    assert_eq!(
        req(addr, "GET", "/bots/3/flows", Some(&viewer), &[])
            .await
            .status,
        200
    );

    // Viewing flows now needs the edit capability.
    let tighter = TEST_RULES.replace(
        "require: bot.flows.view, scope: { bot: \"{bot}\" } }",
        "require: bot.flows.edit, scope: { bot: \"{bot}\" } }",
    );
    assert_ne!(tighter, TEST_RULES);
    std::fs::write(dir.join("rules.yaml"), &tighter).unwrap();
    signal(&child, "-HUP");
    let line = wait_log(&rx, "configuration reloaded");
    assert!(line.contains("sighup"), "{line}");
    assert_eq!(
        req(addr, "GET", "/bots/3/flows", Some(&viewer), &[])
            .await
            .status,
        403
    );

    // Broken: refused with file:line in the log, the gateway keeps serving
    // the rules in force.
    std::fs::write(dir.join("rules.yaml"), format!("{tighter}  - {{ name: x\n")).unwrap();
    signal(&child, "-HUP");
    let err = wait_log(&rx, "reload: ");
    assert!(err.contains("rules.yaml:"), "{err}");
    wait_log(&rx, "NOT reloaded");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGHUP ended the gateway"
    );
    assert_eq!(
        req(addr, "GET", "/bots/3/flows", Some(&viewer), &[])
            .await
            .status,
        403
    );
    assert_eq!(req(addr, "GET", "/api/status", None, &[]).await.status, 200);

    // SIGUSR1 (log rotation) only reopens the audit log: the gateway
    // keeps running on the same policy.
    signal(&child, "-USR1");
    wait_log(&rx, "SIGUSR1 received");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGUSR1 ended the gateway"
    );
    assert_eq!(
        req(addr, "GET", "/bots/3/flows", Some(&viewer), &[])
            .await
            .status,
        403
    );
}

// ------------------------------------------------- restart, socket activation

/// `rolegate serve` in `dir`, handed `socket` as fd 3 with `LISTEN_FDS=1`,
/// as systemd socket activation does; log lines go to the receiver.
fn serve_activated(
    dir: &Path,
    socket: &std::net::TcpListener,
) -> (Proc, std::sync::mpsc::Receiver<String>) {
    serve_handed(dir, socket, "$$")
}

/// As `serve_activated`, with `LISTEN_PID` set to `pid` (`$$`: the
/// gateway's own).
fn serve_handed(
    dir: &Path,
    socket: &std::net::TcpListener,
    pid: &str,
) -> (Proc, std::sync::mpsc::Receiver<String>) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = socket.as_raw_fd();
    // `LISTEN_PID` must name the gateway's process: a shell sets it to its
    // own pid, then execs the gateway in its place.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(r#"LISTEN_PID={pid} exec "$0" "$@""#))
        .arg(env!("CARGO_BIN_EXE_rolegate"))
        .args(["serve", "-c", "rolegate.yaml"])
        .current_dir(dir)
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID")
        .stdout(Stdio::piped());
    // SAFETY: only dup2, which is async-signal-safe, between fork and exec;
    // the copy on fd 3 is not close-on-exec, so the gateway inherits it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = Proc(cmd.spawn().unwrap());
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_exit(child: &mut Proc) -> std::process::ExitStatus {
    for _ in 0..800 {
        if let Some(s) = child.0.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("the gateway did not exit after SIGTERM");
}

/// Requests without pause from three clients, each on a fresh
/// connection, counted until `stop`. Plain threads with blocking sockets:
/// the test's own blocking waits (log lines, process exit) cannot stall
/// them between connecting and sending, which the gateway would rightly
/// treat as a silent client.
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    clients: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Traffic {
    fn start(addr: std::net::SocketAddr) -> Traffic {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let clients = (0..3)
            .map(|_| {
                let (stop, ok) = (stop.clone(), ok.clone());
                std::thread::spawn(move || {
                    let t = token_with(serde_json::json!({ "roles": ["viewer"] }));
                    let mut errors = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match try_req(addr, &t) {
                            Ok(200) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => errors.push(format!("{other:?}")),
                        }
                    }
                    errors
                })
            })
            .collect();
        Traffic { stop, ok, clients }
    }

    fn answered(&self) -> usize {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `n` more requests were answered 200.
    fn served(&self, n: usize) {
        let target = self.answered() + n;
        for _ in 0..2000 {
            if self.answered() >= target {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the clients got no answers for 20 s");
    }

    /// Stops the clients; every request that failed.
    fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut errors = Vec::new();
        for c in self.clients {
            errors.extend(c.join().unwrap());
        }
        errors
    }
}

/// A config dir for the restart tests: the listener on `socket`'s address,
/// `store` as the sessions' store line.
fn restart_dir(up: &Upstream, socket: &std::net::TcpListener, store: &str) -> PathBuf {
    let dir = config_dir(TEST_RULES, &format!("http://{}", up.addr));
    let cfg = std::fs::read_to_string(dir.join("rolegate.yaml")).unwrap();
    std::fs::write(
        dir.join("rolegate.yaml"),
        format!(
            "listen: {{ addr: \"{}\" }}\nshutdown: {{ drain_timeout: 5s }}\nsessions: {{ {store} }}\n{cfg}",
            socket.local_addr().unwrap()
        ),
    )
    .unwrap();
    dir
}

/// The restart the README documents for one instance: the listening
/// socket belongs to systemd (here: the test), so while the old gateway
/// drains and the new one starts, connections wait in the socket's queue
/// instead of being refused. Requests sent while no gateway runs are
/// answered by the next one: not one fails.
// The upstream runs on the runtime's workers; the body blocks freely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_activated_restart_refuses_no_connection() {
    let up = Upstream::start().await;
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = restart_dir(&up, &socket, "store: embedded");
    let (mut a, a_log) = serve_activated(&dir, &socket);
    wait_log(&a_log, "rolegate listening");
    let traffic = Traffic::start(socket.local_addr().unwrap());
    traffic.served(30);
    // A client that connected but is slow to send: accepted by `a`, it
    // still gets its answer from `a` after the SIGTERM.
    let mut slow = std::net::TcpStream::connect(socket.local_addr().unwrap()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));

    signal(&a, "-TERM");
    std::thread::sleep(std::time::Duration::from_millis(300));
    {
        use std::io::{Read, Write};
        let t = token_with(serde_json::json!({ "roles": ["viewer"] }));
        write!(slow, "GET /bots/1/flows HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        slow.read_to_end(&mut buf).unwrap();
        assert_eq!(parse_response(&buf).status, 200);
    }
    assert!(wait_exit(&mut a).success());
    // Nothing serves the socket now; clients wait in its queue.
    let before = traffic.answered();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (_b, b_log) = serve_activated(&dir, &socket);
    wait_log(&b_log, "rolegate listening");
    traffic.served(30);
    assert!(traffic.answered() > before);
    let errors = traffic.finish();
    assert!(errors.is_empty(), "{} failed: {errors:?}", errors.len());
}

/// With the Redis store, two gateways may run at once on the same socket:
/// the new one starts, then the old one is told to stop. Not one request
/// fails (the embedded store's journal has one writer, so there the
/// restart is stop-and-start, above).
// The upstream runs on the runtime's workers; the body blocks freely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_gateways_on_one_socket_refuse_no_connection() {
    let redis = TestRedis::start();
    let up = Upstream::start().await;
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = restart_dir(&up, &socket, &format!("store: \"{}\"", redis.url()));
    let (mut a, a_log) = serve_activated(&dir, &socket);
    wait_log(&a_log, "rolegate listening");
    let traffic = Traffic::start(socket.local_addr().unwrap());
    traffic.served(30);
    let (_b, b_log) = serve_activated(&dir, &socket);
    wait_log(&b_log, "rolegate listening");
    traffic.served(30);
    signal(&a, "-TERM");
    assert!(wait_exit(&mut a).success());
    traffic.served(30);
    let errors = traffic.finish();
    assert!(errors.is_empty(), "{} failed: {errors:?}", errors.len());
}

/// One request on a fresh connection: the status, or what went wrong.
fn try_req(addr: std::net::SocketAddr, token: &str) -> Result<u16, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET /bots/1/flows HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(format!(
            "incomplete answer: {:?}",
            String::from_utf8_lossy(&buf)
        ));
    }
    Ok(parse_response(&buf).status)
}

/// Handed-over sockets are used only when `LISTEN_PID` names the gateway
/// (else they belong to someone else: it binds as configured), and only on
/// the configured addresses (a unit listing its sockets in another order
/// than the config must not serve one listener on another's socket).
// The upstream runs on the runtime's workers; the body blocks freely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_over_sockets_must_be_ours_and_on_the_configured_address() {
    let up = Upstream::start().await;
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = restart_dir(&up, &elsewhere, "store: embedded");
    let configured = elsewhere.local_addr().unwrap();
    drop(elsewhere);

    // Ours, but on another address than the config's: refused at start.
    let (mut g, _log) = serve_activated(&dir, &socket);
    assert_eq!(wait_exit(&mut g).code(), Some(2));

    // Not ours (another LISTEN_PID): ignored, the configured address is
    // bound and served.
    let (_g, log) = serve_handed(&dir, &socket, "1");
    wait_log(&log, "rolegate listening");
    let t = token_with(serde_json::json!({ "roles": ["viewer"] }));
    let status = tokio::task::spawn_blocking(move || try_req(configured, &t))
        .await
        .unwrap();
    assert_eq!(status, Ok(200));
}
