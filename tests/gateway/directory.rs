//! The user directory end to end: a real gateway in front of a real
//! upstream, entries written through the admin API (with the admin token,
//! and with a Partner Admin's or a bot Super Admin's own token), requests
//! decided on what the directory says rather than what the token says.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

const DIR_ADMIN_TOKEN: &str = "admin-token-for-the-directory-0123";

const RULES: &str = r#"
roles:
  viewer: { grants: [bot.flows.view] }
  editor: { includes: [viewer], grants: [bot.flows.edit] }
  developer: { scope: bot, grants: [bot.flows.view, bot.code.edit] }
  approver: { scope: bot, requires: [developer], grants: [bot.publish] }
  super-admin: { scope: bot, grants: [bot.access.share, bot.flows.view] }
  partner-admin: { grants: [partner.users.manage] }
routes:
  - { name: flows-view, match: { methods: [GET], path: "/bots/{bot}/flows" }, require: bot.flows.view, scope: { bot: "{bot}" } }
  - { name: flows-edit, match: { methods: [PUT], path: "/bots/{bot}/flows" }, require: bot.flows.edit, scope: { bot: "{bot}" } }
  - { name: publish, match: { methods: [POST], path: "/bots/{bot}/publish" }, require: bot.publish, scope: { bot: "{bot}" } }
  - { name: partner-users, match: { methods: [GET], path: "/partners/{partner}/users" }, require: partner.users.manage, scope: { partner: "{partner}" } }
"#;

async fn start(store: &str, tag: &str) -> (Upstream, Gw) {
    let up = Upstream::start().await;
    let dir = scratch_dir(tag);
    std::fs::write(dir.join("admin.token"), DIR_ADMIN_TOKEN).unwrap();
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{}upstreams:\n  app: {{ url: \"http://{}\" }}\nrules: rules.yaml\n\
         admin: {{ addr: \"127.0.0.1:0\", token_file: admin.token }}\n\
         sessions: {{ {store} }}\n\
         directory: {{ issuer: \"{ISS_RSA}\" }}\n",
        identity_yaml(),
        up.addr
    );
    let gw = start_with_config(&dir, &cfg).await;
    (up, gw)
}

fn tok(sub: &str, roles: &[&str]) -> String {
    token_with(json!({ "sub": sub, "sid": format!("s-{sub}"), "roles": roles }))
}

async fn call(gw: &Gw, token: &str, method: &str, path: &str, body: &Value) -> Resp {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    req_json(gw.admin.unwrap(), method, path, Some(token), &body).await
}

async fn put_user(gw: &Gw, token: &str, sub: &str, rec: Value) -> Resp {
    call(gw, token, "PUT", &format!("/directory/users/{sub}"), &rec).await
}

async fn status(gw: &Gw, method: &str, path: &str, t: &str) -> u16 {
    req(gw.addr, method, path, Some(t), &[]).await.status
}

#[track_caller]
fn ok(r: &Resp) {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[track_caller]
fn forbidden(r: &Resp) {
    assert_eq!(
        (r.status, r.error().as_str()),
        (403, "forbidden"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// `POST /directory/users.csv` with `csv`.
async fn import(gw: &Gw, token: &str, csv: &str) -> Resp {
    req_json(
        gw.admin.unwrap(),
        "POST",
        "/directory/users.csv",
        Some(token),
        csv,
    )
    .await
}

#[tokio::test]
async fn an_entry_replaces_the_tokens_roles_and_deactivation_applies_at_once() {
    let (_up, gw) = start("state_dir: state", "dir-override").await;
    // The token claims editor; without an entry it is believed.
    let t = tok("alice", &["editor"]);
    assert_eq!(status(&gw, "PUT", "/bots/1/flows", &t).await, 200);
    // The directory says viewer: the same, already issued token loses edit.
    ok(&put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "alice",
        json!({ "roles": ["viewer"] }),
    )
    .await);
    assert_eq!(status(&gw, "PUT", "/bots/1/flows", &t).await, 403);
    assert_eq!(status(&gw, "GET", "/bots/1/flows", &t).await, 200);
    // A token with no roles at all gets the directory's.
    let bare = token_with(json!({ "sub": "alice", "sid": "s-alice-2" }));
    assert_eq!(status(&gw, "GET", "/bots/1/flows", &bare).await, 200);
    // Another issuer's subject of the same name is not affected.
    let other = sign(
        jsonwebtoken::Algorithm::HS256,
        None,
        &claims(
            ISS_HMAC,
            json!({ "sub": "alice", "sid": "s-h", "roles": ["editor"] }),
        ),
    );
    assert_eq!(status(&gw, "PUT", "/bots/1/flows", &other).await, 200);

    // Deactivated in the directory: refused at once, session ended.
    let r = put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "alice",
        json!({ "roles": ["viewer"], "active": false }),
    )
    .await;
    ok(&r);
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&t), &[]).await;
    assert_eq!((r.status, r.error().as_str()), (401, "user_deactivated"));
    // The directory speaks for its issuer only: the other issuer's
    // `alice` (maybe an operator of another identity provider) is not
    // deactivated, and her session goes on.
    assert_eq!(status(&gw, "PUT", "/bots/1/flows", &other).await, 200);
    let r = call(
        &gw,
        DIR_ADMIN_TOKEN,
        "GET",
        "/users/alice/sessions",
        &Value::Null,
    )
    .await;
    assert_eq!(r.json()["deactivated"], true);
    // Removing the entry gives the token's word back (but the deactivation
    // stays until reactivated).
    ok(&call(
        &gw,
        DIR_ADMIN_TOKEN,
        "DELETE",
        "/directory/users/alice",
        &Value::Null,
    )
    .await);
    assert_eq!(status(&gw, "GET", "/bots/1/flows", &t).await, 401);
    assert_eq!(status(&gw, "PUT", "/bots/1/flows", &other).await, 200);
    // The admin API's reactivation lifts it; the tokens issued before the
    // deactivation stay refused (not-before cut-off), a new login works.
    ok(&call(
        &gw,
        DIR_ADMIN_TOKEN,
        "POST",
        "/users/alice/reactivate",
        &Value::Null,
    )
    .await);
    assert_eq!(status(&gw, "GET", "/bots/1/flows", &t).await, 401);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = token_with(
        json!({ "sub": "alice", "sid": "s-alice-3", "roles": ["viewer"], "iat": now() }),
    );
    assert_eq!(status(&gw, "GET", "/bots/1/flows", &fresh).await, 200);
}

/// A Partner Admin creates entries only for subjects never seen signing
/// in, and lifts the deactivations the directory made; an operator's
/// (admin API, every issuer) is not the directory's to lift, whoever
/// writes the entry.
#[tokio::test]
async fn a_partner_admin_never_takes_over_a_known_user_nor_lifts_an_operators_deactivation() {
    let (_up, gw) = start("state_dir: state", "dir-react").await;
    ok(&put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "pat",
        json!({ "partners": ["acme"], "roles": ["partner-admin"] }),
    )
    .await);
    let pat = tok("pat", &[]);
    let entry =
        |active: bool| json!({ "partners": ["acme"], "roles": ["viewer"], "active": active });
    // A subject that signed in already (its token's claims unknown to the
    // directory) gets its entry only from the admin token: Pat cannot
    // take it over (demote, move, deactivate).
    let kim = token_with(
        json!({ "sub": "kim", "sid": "s-kim", "roles": ["editor"], "partners": ["globex"] }),
    );
    assert_eq!(status(&gw, "PUT", "/bots/1/flows", &kim).await, 200);
    for body in [entry(true), entry(false)] {
        forbidden(&put_user(&gw, &pat, "kim", body).await);
    }
    // In a file of new users, kim's row alone is refused (and so the file).
    let r = import(
        &gw,
        &pat,
        "user,partners,roles\nnew1,acme,viewer\nkim,acme,viewer\nnew2,acme,viewer\n",
    )
    .await;
    forbidden(&r);
    assert_eq!(r.json()["rows"].as_array().map(Vec::len), Some(1));
    assert_eq!(r.json()["rows"][0]["user"], json!("kim"));
    forbidden(&import(&gw, &pat, "user,partners,roles\nkim,acme,viewer\n").await);
    assert_eq!(status(&gw, "PUT", "/bots/1/flows", &kim).await, 200);
    ok(&put_user(&gw, DIR_ADMIN_TOKEN, "kim", entry(true)).await);
    assert_eq!(status(&gw, "PUT", "/bots/1/flows", &kim).await, 403);
    for who in ["mia", "max"] {
        ok(&put_user(&gw, &pat, who, entry(true)).await);
    }
    // The directory's own deactivation: Pat lifts it.
    let r = put_user(&gw, &pat, "mia", entry(false)).await;
    ok(&r);
    assert!(
        r.json()["record"]["deactivated_ms"].as_u64().is_some(),
        "{}",
        r.json()
    );
    ok(&put_user(&gw, &pat, "mia", entry(true)).await);
    let deactivated = |who: &'static str| {
        let gw = &gw;
        async move {
            call(
                gw,
                DIR_ADMIN_TOKEN,
                "GET",
                &format!("/users/{who}/sessions"),
                &Value::Null,
            )
            .await
            .json()["deactivated"]
                .clone()
        }
    };
    assert_eq!(deactivated("mia").await, json!(false));
    // A value sent for `deactivated_ms` is not taken.
    let mut forged = entry(false);
    forged["deactivated_ms"] = json!(1);
    let r = put_user(&gw, &pat, "mia", forged).await;
    ok(&r);
    assert_ne!(r.json()["record"]["deactivated_ms"], json!(1));
    ok(&put_user(&gw, &pat, "mia", entry(true)).await);

    // The operator deactivates max first; Pat's false-then-true sets the
    // entry back to active but does not lift it, nor one the operator
    // made after Pat's; nor does a CSV import or the admin token's entry.
    let op = |path: &'static str| call(&gw, DIR_ADMIN_TOKEN, "POST", path, &Value::Null);
    let max = tok("max", &["viewer"]);
    ok(&op("/users/max/deactivate").await);
    ok(&put_user(&gw, &pat, "max", entry(false)).await);
    ok(&put_user(&gw, &pat, "max", entry(true)).await);
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&max), &[]).await;
    assert_eq!((r.status, r.error().as_str()), (401, "user_deactivated"));
    assert_eq!(deactivated("max").await, json!(true));
    ok(&put_user(&gw, &pat, "max", entry(false)).await);
    let r = import(
        &gw,
        &pat,
        "user,partners,roles,active\nmax,acme,viewer,true\n",
    )
    .await;
    ok(&r);
    assert_eq!(deactivated("max").await, json!(true));
    ok(&op("/users/max/reactivate").await);
    assert_eq!(deactivated("max").await, json!(false));
    ok(&put_user(&gw, &pat, "max", entry(false)).await);
    // (In the same millisecond or not: every deactivation has its own
    // cut-off.)
    ok(&op("/users/max/deactivate").await);
    ok(&put_user(&gw, &pat, "max", entry(true)).await);
    ok(&put_user(&gw, DIR_ADMIN_TOKEN, "max", entry(true)).await);
    let late = tok("max", &["viewer"]);
    assert_eq!(status(&gw, "GET", "/bots/1/flows", &late).await, 401);
    assert_eq!(deactivated("max").await, json!(true));
    ok(&op("/users/max/reactivate").await);
    assert_eq!(deactivated("max").await, json!(false));
}

#[tokio::test]
async fn a_partner_admin_adds_an_existing_user_only_with_access_to_all_their_partners() {
    let (_up, gw) = start("state_dir: state", "dir-partners").await;
    ok(&put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "pat",
        json!({ "partners": ["acme"], "roles": ["partner-admin"] }),
    )
    .await);
    ok(&put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "uma",
        json!({ "partners": ["globex"], "roles": ["viewer"] }),
    )
    .await);
    // Pat's token claims nothing; the directory makes Pat a Partner Admin of acme.
    let pat = tok("pat", &[]);
    assert_eq!(status(&gw, "GET", "/partners/acme/users", &pat).await, 200);
    assert_eq!(
        status(&gw, "GET", "/partners/globex/users", &pat).await,
        403
    );

    let add = json!({ "partners": ["acme", "globex"], "roles": ["viewer"] });
    let r = put_user(&gw, &pat, "uma", add.clone()).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (403, "forbidden"),
        "{}",
        r.json()
    );
    assert!(r.json()["reason"].as_str().unwrap().contains("globex"));
    // A new user in Pat's partner: fine.
    ok(&put_user(
        &gw,
        &pat,
        "neo",
        json!({ "partners": ["acme"], "roles": ["viewer"] }),
    )
    .await);
    // Pat may not touch another partner's membership, nor list it.
    let r = put_user(&gw, &pat, "zed", json!({ "partners": ["globex"] })).await;
    assert_eq!(r.status, 403);
    let r = call(
        &gw,
        &pat,
        "GET",
        "/directory/users?partner=globex",
        &Value::Null,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = call(
        &gw,
        &pat,
        "GET",
        "/directory/users?partner=acme",
        &Value::Null,
    )
    .await;
    ok(&r);
    let listed: Vec<String> = r.json()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ["neo", "pat"], "only acme's users");
    // Once Pat also covers globex, adding Uma to acme works.
    ok(&put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "pat",
        json!({ "partners": ["acme", "globex"], "roles": ["partner-admin"] }),
    )
    .await);
    ok(&put_user(&gw, &pat, "uma", add).await);
    // An operator-only endpoint stays closed to Pat.
    let r = call(&gw, &pat, "POST", "/users/uma/revoke", &Value::Null).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn a_partner_admin_is_bound_to_its_partners_and_hands_out_no_grant_it_lacks() {
    let (_up, gw) = start("state_dir: state", "dir-ceiling").await;
    ok(&put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "pat",
        json!({ "partners": ["acme"], "roles": ["partner-admin"], "grants": ["profiles.manage"] }),
    )
    .await);
    for (sub, rec) in [
        (
            "uma",
            json!({ "partners": ["globex"], "roles": ["viewer"] }),
        ),
        ("ops1", json!({ "roles": ["viewer"] })),
    ] {
        ok(&put_user(&gw, DIR_ADMIN_TOKEN, sub, rec).await);
    }
    let pat = tok("pat", &[]);
    // Every user, or a user of no partner: the admin token only.
    for path in [
        "/directory/users",
        "/directory/users.csv",
        "/directory/users/ops1",
    ] {
        forbidden(&call(&gw, &pat, "GET", path, &Value::Null).await);
        assert_eq!(
            call(&gw, DIR_ADMIN_TOKEN, "GET", path, &Value::Null)
                .await
                .status,
            200,
            "{path}"
        );
    }
    forbidden(
        &put_user(
            &gw,
            &pat,
            "ops1",
            json!({ "roles": ["viewer"], "active": false }),
        )
        .await,
    );
    forbidden(&put_user(&gw, &pat, "fresh", json!({ "roles": ["viewer"] })).await);
    forbidden(&call(&gw, &pat, "DELETE", "/directory/users/ops1", &Value::Null).await);
    // Pat's own entry, with grants Pat does not hold: refused (a wildcard
    // would reach every bot of every tenant), and nothing changed.
    let me = |grants: &[&str]| json!({ "partners": ["acme"], "roles": ["partner-admin"], "grants": grants });
    for g in [
        &["profiles.manage", "bot.*"][..],
        &["profiles.manage", "bot.flows.edit"],
    ] {
        let r = put_user(&gw, &pat, "pat", me(g)).await;
        forbidden(&r);
        assert!(
            r.json()["reason"].as_str().unwrap().contains(g[1]),
            "{}",
            r.json()
        );
    }
    assert_eq!(status(&gw, "PUT", "/bots/7/flows", &pat).await, 403);
    // A grant Pat holds is Pat's to hand out to its partner's users.
    ok(&put_user(
        &gw,
        &pat,
        "neo",
        json!({ "partners": ["acme"], "grants": ["profiles.manage"] }),
    )
    .await);
    // The same ceiling for a profile's grants (they reach every holder).
    let save = |grants: &[&str]| json!({ "roles": ["viewer"], "grants": grants, "apply": true });
    let r = call(
        &gw,
        &pat,
        "PUT",
        "/directory/profiles/p1",
        &save(&["bot.*"]),
    )
    .await;
    forbidden(&r);
    ok(&call(
        &gw,
        &pat,
        "PUT",
        "/directory/profiles/p1",
        &save(&["profiles.manage"]),
    )
    .await);
    ok(&call(
        &gw,
        DIR_ADMIN_TOKEN,
        "PUT",
        "/directory/profiles/p1",
        &save(&["bot.*"]),
    )
    .await);
    // "Save and apply" moves every holder: with a holder Pat does not
    // manage (a user in no partner), Pat may save but not apply.
    ok(&put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "ops1",
        json!({ "roles": ["viewer"], "profiles": [{ "name": "p1" }] }),
    )
    .await);
    forbidden(
        &call(
            &gw,
            &pat,
            "PUT",
            "/directory/profiles/p1",
            &save(&["profiles.manage"]),
        )
        .await,
    );
    let keep = json!({ "roles": ["viewer"], "grants": ["profiles.manage"], "apply": false });
    ok(&call(&gw, &pat, "PUT", "/directory/profiles/p1", &keep).await);
    // The listing of Pat's own partner still works.
    ok(&call(
        &gw,
        &pat,
        "GET",
        "/directory/users?partner=acme",
        &Value::Null,
    )
    .await);

    // A file without an `active` column leaves a deactivated user so (a
    // stale or trimmed export is no reactivation); a new user is active.
    ok(&put_user(
        &gw,
        &pat,
        "neo",
        json!({ "partners": ["acme"], "active": false }),
    )
    .await);
    ok(&import(
        &gw,
        &pat,
        "user,partners,roles\nneo,acme,viewer\nnew1,acme,viewer\n",
    )
    .await);
    let entry = |sub: &'static str| {
        let gw = &gw;
        async move {
            call(
                gw,
                DIR_ADMIN_TOKEN,
                "GET",
                &format!("/directory/users/{sub}"),
                &Value::Null,
            )
            .await
            .json()["record"]["active"]
                .clone()
        }
    };
    assert_eq!(entry("neo").await, json!(false));
    assert_eq!(entry("new1").await, json!(true));
    // With the column, the file says it.
    ok(&import(
        &gw,
        &pat,
        "user,partners,roles,active\nneo,acme,viewer,true\n",
    )
    .await);
    assert_eq!(entry("neo").await, json!(true));
}

#[tokio::test]
async fn only_a_bots_super_admin_shares_it_and_approver_needs_developer() {
    let (_up, gw) = start("state_dir: state", "dir-bots").await;
    ok(&put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "sam",
        json!({ "roles": ["super-admin@bot:42"] }),
    )
    .await);
    ok(&put_user(&gw, DIR_ADMIN_TOKEN, "dev", json!({ "roles": [] })).await);
    let sam = tok("sam", &[]);
    ok(&put_user(&gw, &sam, "dev", json!({ "roles": ["developer@bot:42"] })).await);
    let dev = tok("dev", &[]);
    assert_eq!(status(&gw, "GET", "/bots/42/flows", &dev).await, 200);
    assert_eq!(status(&gw, "GET", "/bots/7/flows", &dev).await, 403);
    // Not Sam's bot.
    let r = put_user(
        &gw,
        &sam,
        "dev",
        json!({ "roles": ["developer@bot:42", "developer@bot:7"] }),
    )
    .await;
    assert_eq!(r.status, 403);
    // Approver without Developer on the same bot: refused for everyone.
    let r = put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "dev",
        json!({ "roles": ["approver@bot:42"] }),
    )
    .await;
    assert_eq!((r.status, r.error().as_str()), (409, "role_requirement"));
    ok(&put_user(
        &gw,
        &sam,
        "dev",
        json!({ "roles": ["developer@bot:42", "approver@bot:42"] }),
    )
    .await);
    assert_eq!(status(&gw, "POST", "/bots/42/publish", &dev).await, 200);
    // Unknown roles and fields are refused.
    let r = put_user(&gw, DIR_ADMIN_TOKEN, "dev", json!({ "roles": ["wizard"] })).await;
    assert_eq!((r.status, r.error().as_str()), (400, "unknown_role"));
    let r = put_user(&gw, DIR_ADMIN_TOKEN, "dev", json!({ "rolez": [] })).await;
    assert_eq!((r.status, r.error().as_str()), (400, "bad_request"));
}

#[tokio::test]
async fn save_keeps_holders_on_their_version_save_and_apply_moves_them() {
    let (_up, gw) = start("state_dir: state", "dir-profiles").await;
    let save = |roles: Value, apply: bool| json!({ "roles": roles, "apply": apply });
    let r = call(
        &gw,
        DIR_ADMIN_TOKEN,
        "PUT",
        "/directory/profiles/support",
        &save(json!(["viewer"]), false),
    )
    .await;
    ok(&r);
    assert_eq!(r.json()["version"], 1);
    ok(&put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "old",
        json!({ "profiles": [{ "name": "support" }] }),
    )
    .await);
    // "Save": version 2 with editor; the existing holder keeps version 1.
    let r = call(
        &gw,
        DIR_ADMIN_TOKEN,
        "PUT",
        "/directory/profiles/support",
        &save(json!(["editor"]), false),
    )
    .await;
    assert_eq!(
        (
            r.json()["version"].clone(),
            r.json()["holders_updated"].clone()
        ),
        (json!(2), json!(0))
    );
    let old = tok("old", &[]);
    assert_eq!(status(&gw, "PUT", "/bots/1/flows", &old).await, 403);
    let r = call(
        &gw,
        DIR_ADMIN_TOKEN,
        "GET",
        "/directory/users/old",
        &Value::Null,
    )
    .await;
    assert_eq!(r.json()["record"]["profiles"][0]["version"], 1);
    // A user assigned from now on gets version 2.
    ok(&put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "new",
        json!({ "profiles": [{ "name": "support" }] }),
    )
    .await);
    let new = tok("new", &[]);
    assert_eq!(status(&gw, "PUT", "/bots/1/flows", &new).await, 200);
    // "Save and apply": every holder gets version 3 (viewer only again).
    let r = call(
        &gw,
        DIR_ADMIN_TOKEN,
        "PUT",
        "/directory/profiles/support",
        &save(json!(["viewer"]), true),
    )
    .await;
    assert_eq!(r.json()["holders_updated"], 2);
    assert_eq!(status(&gw, "PUT", "/bots/1/flows", &new).await, 403);
    assert_eq!(status(&gw, "GET", "/bots/1/flows", &old).await, 200);
    // A version that does not exist cannot be assigned.
    let r = put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "x",
        json!({ "profiles": [{ "name": "support", "version": 9 }] }),
    )
    .await;
    assert_eq!((r.status, r.error().as_str()), (400, "unknown_profile"));
    // Saving profiles is not for users' own tokens without profiles.manage.
    let r = call(
        &gw,
        &old,
        "PUT",
        "/directory/profiles/support",
        &save(json!([]), true),
    )
    .await;
    assert_eq!(r.status, 403);

    // Repeated roles are stored once; past 100 versions the oldest one no
    // user holds goes, not a held one (version 1, pinned) nor the latest.
    ok(&put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "pinned",
        json!({ "profiles": [{ "name": "support", "version": 1 }] }),
    )
    .await);
    let put = |roles: Value| {
        let body = save(roles, false);
        let gw = &gw;
        async move {
            call(
                gw,
                DIR_ADMIN_TOKEN,
                "PUT",
                "/directory/profiles/support",
                &body,
            )
            .await
        }
    };
    let r = put(json!(["viewer", "viewer"])).await;
    assert_eq!(r.json()["version"], 4);
    for _ in 5..=101 {
        ok(&put(json!(["viewer"])).await);
    }
    let r = call(
        &gw,
        DIR_ADMIN_TOKEN,
        "GET",
        "/directory/profiles/support",
        &Value::Null,
    )
    .await;
    let versions = r.json()["versions"].as_array().cloned().unwrap();
    let numbers: Vec<u64> = versions
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers.len(), 100);
    assert_eq!(&numbers[..3], [1, 3, 4], "version 2 (unheld) went");
    assert_eq!(numbers.last(), Some(&101));
    assert_eq!(versions[2]["roles"], json!(["viewer"]));
    assert_eq!(
        status(&gw, "GET", "/bots/1/flows", &tok("pinned", &[])).await,
        200
    );
}

#[tokio::test]
async fn a_directory_change_on_one_instance_holds_on_another_through_redis() {
    let redis = TestRedis::start();
    let store = format!("store: \"{}\"", redis.url());
    let (_ua, a) = start(&store, "dir-redis-a").await;
    let (_ub, b) = start(&store, "dir-redis-b").await;
    let t = tok("rita", &["editor"]);
    assert_eq!(status(&b, "PUT", "/bots/1/flows", &t).await, 200);
    ok(&put_user(&a, DIR_ADMIN_TOKEN, "rita", json!({ "roles": ["viewer"] })).await);
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while status(&b, "PUT", "/bots/1/flows", &t).await != 403 {
        assert!(
            std::time::Instant::now() < until,
            "B still allows what A's directory removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A deactivation through A's directory: B refuses rita's tokens of the
    // directory's issuer (an old token and one B never saw), not another
    // issuer's `rita`.
    let other = sign(
        jsonwebtoken::Algorithm::HS256,
        None,
        &claims(
            ISS_HMAC,
            json!({ "sub": "rita", "sid": "s-rita-h", "roles": ["editor"] }),
        ),
    );
    assert_eq!(status(&b, "PUT", "/bots/1/flows", &other).await, 200);
    ok(&put_user(
        &a,
        DIR_ADMIN_TOKEN,
        "rita",
        json!({ "roles": ["viewer"], "active": false }),
    )
    .await);
    let unseen = token_with(json!({ "sub": "rita", "sid": "s-rita-2", "roles": ["viewer"] }));
    for tk in [&t, &unseen] {
        let r = req(b.addr, "GET", "/bots/1/flows", Some(tk), &[]).await;
        assert_eq!((r.status, r.error().as_str()), (401, "user_deactivated"));
    }
    assert_eq!(status(&b, "PUT", "/bots/1/flows", &other).await, 200);
    // Reactivated through the directory: tokens issued before stay
    // refused (B has never seen `older`), in B's mirror and in Redis.
    let older = token_with(
        json!({ "sub": "rita", "sid": "s-rita-3", "roles": ["viewer"], "iat": now() - 5 }),
    );
    ok(&put_user(&a, DIR_ADMIN_TOKEN, "rita", json!({ "roles": ["viewer"] })).await);
    let r = req(b.addr, "GET", "/bots/1/flows", Some(&older), &[]).await;
    assert_eq!((r.status, r.error().as_str()), (401, "session_ended"));
    assert_eq!(status(&b, "PUT", "/bots/1/flows", &other).await, 200);

    // A subject that signed in on B (its session is in Redis) is not
    // created by a Partner Admin on A; the file's other new users would be.
    ok(&put_user(
        &a,
        DIR_ADMIN_TOKEN,
        "pat",
        json!({ "partners": ["acme"], "roles": ["partner-admin"] }),
    )
    .await);
    let pat = tok("pat", &[]);
    assert_eq!(
        status(&b, "PUT", "/bots/1/flows", &tok("ned", &["editor"])).await,
        200
    );
    let file = "user,partners,roles\nnew1,acme,viewer\nned,acme,viewer\nnew2,acme,viewer\n";
    let r = import(&a, &pat, file).await;
    forbidden(&r);
    let rows = r.json()["rows"].clone();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["user"], json!("ned"));
    forbidden(
        &put_user(
            &a,
            &pat,
            "ned",
            json!({ "partners": ["acme"], "roles": ["viewer"] }),
        )
        .await,
    );
    ok(&import(&a, &pat, &file.replace("ned,acme,viewer\n", "")).await);
}

/// `rolegate users …` against the running gateway's admin listener (run
/// off the runtime's threads: the gateway answers on them).
async fn cli(gw: &Gw, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rolegate"));
    cmd.arg("users")
        .args(args)
        .args(["--admin", &gw.admin.unwrap().to_string()])
        .args(["--token-file", gw.dir.join("admin.token").to_str().unwrap()]);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn csv_export_edit_import_round_trip_and_a_bad_file_changes_nothing() {
    let (_up, gw) = start("state_dir: state", "dir-csv").await;
    ok(&put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "ann",
        json!({ "partners": ["acme"], "roles": ["viewer"], "name": "Ann, \"the\" first" }),
    )
    .await);
    ok(&put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "bob",
        json!({ "partners": ["acme"], "roles": ["viewer"] }),
    )
    .await);
    ok(&put_user(
        &gw,
        DIR_ADMIN_TOKEN,
        "cyd",
        json!({ "partners": ["globex"], "roles": ["viewer"] }),
    )
    .await);
    let out = cli(&gw, &["export", "--partner", "acme"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(
        csv.contains("ann") && csv.contains("bob") && !csv.contains("cyd"),
        "{csv}"
    );

    // Edit as a spreadsheet would: Bob becomes an editor.
    let edited = csv.replace("bob,,,acme,,viewer", "bob,,,acme,,editor");
    assert_ne!(
        edited, csv,
        "the export's row for bob changed shape:\n{csv}"
    );
    let file = gw.dir.join("users.csv");
    std::fs::write(&file, &edited).unwrap();
    let bob = tok("bob", &[]);
    assert_eq!(status(&gw, "PUT", "/bots/1/flows", &bob).await, 403);
    let out = cli(&gw, &["import", file.to_str().unwrap()]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status(&gw, "PUT", "/bots/1/flows", &bob).await, 200);
    let r = call(
        &gw,
        DIR_ADMIN_TOKEN,
        "GET",
        "/directory/users/ann",
        &Value::Null,
    )
    .await;
    assert_eq!(
        r.json()["record"]["name"],
        "Ann, \"the\" first",
        "round trip kept the name"
    );

    // A file with a bad row (unknown role) and a good one: nothing applied,
    // every bad row reported, by its row in the file (skipped blank and
    // empty rows counted, as a spreadsheet shows them).
    let bad = "user,roles\nbob,viewer\n\n,\nann,wizard\ndan,approver@bot:1\n";
    let r = req_json(
        gw.admin.unwrap(),
        "POST",
        "/directory/users.csv",
        Some(DIR_ADMIN_TOKEN),
        bad,
    )
    .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let rows = r.json()["rows"].as_array().unwrap().clone();
    let numbers: Vec<u64> = rows.iter().map(|x| x["row"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [5, 6], "{rows:?}");
    assert_eq!(
        status(&gw, "PUT", "/bots/1/flows", &bob).await,
        200,
        "bob's row was applied"
    );
    // A syntactically broken file is refused as a whole too.
    let r = req_json(
        gw.admin.unwrap(),
        "POST",
        "/directory/users.csv",
        Some(DIR_ADMIN_TOKEN),
        "nope,x\n1,2\n",
    )
    .await;
    assert_eq!((r.status, r.error().as_str()), (400, "invalid_import"));
}

/// `PUT` or `DELETE` of one entry with the admin token and the given
/// precondition header lines.
async fn write_if(gw: &Gw, method: &str, sub: &str, body: &Value, conditions: &[&str]) -> Resp {
    write_as(gw, DIR_ADMIN_TOKEN, method, sub, body, conditions).await
}

/// [`write_if`] with `token`.
async fn write_as(
    gw: &Gw,
    token: &str,
    method: &str,
    sub: &str,
    body: &Value,
    conditions: &[&str],
) -> Resp {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let mut r = format!(
        "{method} /directory/users/{sub} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for c in conditions {
        r.push_str(c);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.push_str(&body);
    raw(gw.admin.unwrap(), r.as_bytes()).await
}

#[track_caller]
fn precondition_failed(r: &Resp) {
    assert_eq!(
        (r.status, r.error().as_str()),
        (412, "precondition_failed"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// Entries have revisions: a write that names the revision it read
/// (`If-Match`) is refused once the entry has changed since, and a CSV
/// file exported before a change cannot undo it (a stale file re-imported
/// neither reactivates a user deactivated since nor gives back a role
/// taken since).
#[tokio::test]
async fn a_write_or_an_import_older_than_the_entry_is_refused() {
    let (_up, gw) = start("state_dir: state", "dir-revision").await;
    let admin = DIR_ADMIN_TOKEN;
    let get = |sub: &'static str| {
        let gw = &gw;
        async move {
            let path = format!("/directory/users/{sub}");
            call(gw, admin, "GET", &path, &Value::Null).await
        }
    };
    let r = put_user(
        &gw,
        admin,
        "eve",
        json!({ "partners": ["acme"], "roles": ["editor"] }),
    )
    .await;
    ok(&r);
    let first = r.json()["revision"].as_str().unwrap().to_string();
    let r = get("eve").await;
    assert_eq!(r.json()["revision"], first.as_str());
    assert_eq!(r.header("etag"), Some(format!("\"{first}\"").as_str()));
    let listed = call(&gw, admin, "GET", "/directory/users", &Value::Null).await;
    assert_eq!(listed.json()["users"][0]["revision"], first.as_str());

    // Written at the revision read: applied, with a new revision.
    let tag = format!("If-Match: \"{first}\"");
    let r = write_if(
        &gw,
        "PUT",
        "eve",
        &json!({ "partners": ["acme"], "roles": ["viewer"] }),
        &[&tag],
    )
    .await;
    ok(&r);
    let second = r.json()["revision"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    // The same condition again: the entry moved on; nothing written.
    let r = write_if(
        &gw,
        "PUT",
        "eve",
        &json!({ "partners": ["acme"], "roles": ["editor"] }),
        &[&tag],
    )
    .await;
    precondition_failed(&r);
    assert_eq!(r.json()["revision"], second.as_str());
    let eve = tok("eve", &[]);
    assert_eq!(status(&gw, "PUT", "/bots/1/flows", &eve).await, 403);
    // A weak tag never matches If-Match; `*` needs an entry; If-None-Match
    // `*` only creates.
    let weak = format!("If-Match: W/\"{second}\"");
    precondition_failed(&write_if(&gw, "DELETE", "eve", &Value::Null, &[&weak]).await);
    let none = json!({ "partners": ["acme"] });
    let r = write_if(&gw, "PUT", "nobody", &none, &["If-Match: *"]).await;
    precondition_failed(&r);
    assert_eq!(r.json()["revision"], Value::Null);
    // A Partner Admin of another partner: refused on its rights (403),
    // never told the revision; sending the entry unchanged (which its
    // rights let through) it gets 412 without the revision.
    ok(&put_user(
        &gw,
        admin,
        "pat",
        json!({ "partners": ["globex"], "roles": ["partner-admin"] }),
    )
    .await);
    let pat = tok("pat", &[]);
    let r = write_as(
        &gw,
        &pat,
        "PUT",
        "eve",
        &json!({ "partners": ["acme"], "roles": ["editor"] }),
        &[&tag],
    )
    .await;
    forbidden(&r);
    assert!(
        !String::from_utf8_lossy(&r.body).contains(&second),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let same = json!({ "partners": ["acme"], "roles": ["viewer"] });
    let r = write_as(&gw, &pat, "PUT", "eve", &same, &[&tag]).await;
    precondition_failed(&r);
    assert_eq!(r.json()["revision"], Value::Null);
    precondition_failed(&write_if(&gw, "PUT", "eve", &none, &["If-None-Match: *"]).await);
    ok(&write_if(&gw, "PUT", "fay", &none, &["If-None-Match: *"]).await);
    // A DELETE at an old revision is refused; at the current one, done.
    precondition_failed(&write_if(&gw, "DELETE", "eve", &Value::Null, &[&tag]).await);
    let now = format!("If-Match: \"{second}\"");
    ok(&write_if(&gw, "DELETE", "eve", &Value::Null, &[&now]).await);

    // The spreadsheet flow: a file exported, then the user deactivated and
    // a role taken away; the old file imported again changes nothing.
    ok(&put_user(
        &gw,
        admin,
        "gus",
        json!({ "partners": ["acme"], "roles": ["editor"] }),
    )
    .await);
    let out = cli(&gw, &["export", "--partner", "acme"]).await;
    assert_eq!(out.status.code(), Some(0));
    let old = String::from_utf8(out.stdout).unwrap();
    assert!(old.contains(",revision\r\n"), "{old}");
    ok(&put_user(
        &gw,
        admin,
        "gus",
        json!({ "partners": ["acme"], "roles": ["viewer"], "active": false }),
    )
    .await);
    let r = import(&gw, admin, &old).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (409, "import_conflict"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let rows = r.json()["rows"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["user"], "gus");
    assert!(
        rows[0]["reason"]
            .as_str()
            .unwrap()
            .contains("changed since the file was exported")
    );
    let r = get("gus").await;
    assert_eq!(r.json()["record"]["active"], false);
    assert_eq!(r.json()["record"]["roles"], json!(["viewer"]));
    // The CLI says so and exits 1.
    let file = gw.dir.join("old.csv");
    std::fs::write(&file, &old).unwrap();
    let out = cli(&gw, &["import", file.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("import_conflict"));
    // Exported again, the same edit goes through; a file without the
    // column is last-writer-wins, as before.
    let out = cli(&gw, &["export", "--partner", "acme"]).await;
    let fresh = String::from_utf8(out.stdout).unwrap();
    let edited = fresh.replace("gus,,,acme,,viewer,,,false", "gus,,,acme,,editor,,,false");
    assert_ne!(edited, fresh, "{fresh}");
    ok(&import(&gw, admin, &edited).await);
    assert_eq!(
        get("gus").await.json()["record"]["roles"],
        json!(["editor"])
    );
    ok(&import(&gw, admin, "user,partners,roles\ngus,acme,viewer\n").await);
    assert_eq!(
        get("gus").await.json()["record"]["roles"],
        json!(["viewer"])
    );

    // Which way a row is stale: removed since, or created since (an empty
    // cell); a stale row that would change nothing passes.
    let gus = get("gus").await.json()["revision"]
        .as_str()
        .unwrap()
        .to_string();
    let stale = format!(
        "user,partners,roles,active,revision\nzed,acme,viewer,true,{first}\ngus,acme,editor,false,\n"
    );
    let r = import(&gw, admin, &stale).await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    let reasons: Vec<String> = r.json()["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(reasons[0].contains("removed since"), "{reasons:?}");
    assert!(reasons[1].contains("created since"), "{reasons:?}");
    ok(&import(
        &gw,
        admin,
        &format!("user,partners,roles,active,revision\ngus,acme,viewer,false,{first}\n"),
    )
    .await);
    // A stale row the caller may not write: 403, and no revision named.
    let r = import(
        &gw,
        &pat,
        &format!("user,partners,roles,active,revision\ngus,acme,editor,false,{first}\n"),
    )
    .await;
    forbidden(&r);
    assert!(
        !String::from_utf8_lossy(&r.body).contains(&gus),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// With gateways sharing Redis, a write is made on what Redis holds, not on
/// the writer's copy: a gateway whose copy has not yet heard of another's
/// write refuses its own (412 when it named the revision it read, else 409
/// `write_conflict`) instead of writing over the other's, and nothing of it
/// is written.
#[tokio::test]
async fn a_write_judged_on_a_stale_copy_is_refused_not_written_over_anothers() {
    let redis = TestRedis::start();
    let store = format!("store: \"{}\"", redis.url());
    let (_ua, a) = start(&store, "dir-cas-a").await;
    let (_ub, b) = start(&store, "dir-cas-b").await;
    let admin = DIR_ADMIN_TOKEN;
    let mirror = |gw: &Gw| {
        gw.gateway.store().shared().get(
            rolegate::directory::USERS,
            "vera",
            rolegate::session::now_ms(),
        )
    };
    let seen_by_b = async |want: &str| {
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while mirror(&b).as_deref() != Some(want) {
            assert!(std::time::Instant::now() < until, "B never saw A's write");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let r = put_user(&a, admin, "vera", json!({ "roles": ["viewer"] })).await;
    ok(&r);
    let first = r.json()["revision"].as_str().unwrap().to_string();
    let first_raw = mirror(&a).unwrap().to_string();
    seen_by_b(&first_raw).await;
    let r = put_user(&a, admin, "vera", json!({ "roles": ["editor"] })).await;
    ok(&r);
    let second = r.json()["revision"].as_str().unwrap().to_string();
    seen_by_b(&mirror(&a).unwrap()).await;
    // B's copy as if A's second write had not reached it yet.
    b.gateway
        .store()
        .shared()
        .apply(&[rolegate::session::SharedOp::Put {
            ns: rolegate::directory::USERS.into(),
            k: "vera".into(),
            v: first_raw,
            x: None,
        }]);
    let path = "/directory/users/vera";
    let r = call(&b, admin, "GET", path, &Value::Null).await;
    assert_eq!(r.json()["revision"], first.as_str(), "B's copy is stale");
    let tag = format!("If-Match: \"{first}\"");
    let body = json!({ "roles": ["viewer"], "active": false });
    let r = write_as(&b, admin, "PUT", "vera", &body, &[&tag]).await;
    precondition_failed(&r);
    let r = write_as(&b, admin, "PUT", "vera", &body, &[]).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (409, "write_conflict"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = write_as(&b, admin, "DELETE", "vera", &Value::Null, &[]).await;
    assert_eq!((r.status, r.error().as_str()), (409, "write_conflict"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = call(&a, admin, "GET", path, &Value::Null).await;
    assert_eq!(r.json()["revision"], second.as_str(), "A's write stands");
    assert_eq!(r.json()["record"]["roles"], json!(["editor"]));
    assert_eq!(r.json()["record"]["active"], json!(true));
    // The refused deactivation ended nothing: vera still gets in.
    for gw in [&a, &b] {
        assert_eq!(
            status(gw, "GET", "/bots/1/flows", &tok("vera", &[])).await,
            200
        );
    }
    // A file imported on the stale copy: refused whole.
    let r = import(&b, admin, "user,roles\nvera,viewer\nwalt,viewer\n").await;
    assert_eq!((r.status, r.error().as_str()), (409, "write_conflict"));
    let r = call(&a, admin, "GET", "/directory/users/walt", &Value::Null).await;
    assert_eq!(r.status, 404, "no row of the refused file was written");

    // A profile saved on a stale copy would have numbered its version as
    // the one another gateway saved meanwhile, with other roles.
    let profile = "/directory/profiles/desk";
    ok(&call(&a, admin, "PUT", profile, &json!({ "roles": ["viewer"] })).await);
    let raw = |gw: &Gw| {
        gw.gateway
            .store()
            .shared()
            .get("dir.profile", "desk", rolegate::session::now_ms())
            .map(|v| v.to_string())
    };
    let v1 = raw(&a).expect("the profile is stored under dir.profile");
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while raw(&b).as_deref() != Some(v1.as_str()) {
        assert!(std::time::Instant::now() < until, "B never saw the profile");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ok(&call(&a, admin, "PUT", profile, &json!({ "roles": ["editor"] })).await);
    let v2 = raw(&a).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while raw(&b).as_deref() != Some(v2.as_str()) {
        assert!(std::time::Instant::now() < until, "B never saw version 2");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.gateway
        .store()
        .shared()
        .apply(&[rolegate::session::SharedOp::Put {
            ns: "dir.profile".into(),
            k: "desk".into(),
            v: v1,
            x: None,
        }]);
    let r = call(&b, admin, "PUT", profile, &json!({ "roles": ["viewer"] })).await;
    assert_eq!((r.status, r.error().as_str()), (409, "write_conflict"));
    let r = call(&a, admin, "GET", profile, &Value::Null).await;
    let versions = r.json()["versions"].clone();
    assert_eq!(versions.as_array().unwrap().len(), 2);
    assert_eq!(
        versions[1]["roles"],
        json!(["editor"]),
        "A's version 2 stands"
    );
}
