//! Admin API for the user directory (`directory:`): users (memberships,
//! role bindings, profile assignments, active state) and versioned
//! profiles. Callable with the admin token, or with a user's own token
//! under the seeds' rules ([`crate::directory::check_change`]): a Partner
//! Admin manages the users of their partners, a bot's Super Admin shares
//! that bot.
//!
//! Owns the request bodies, their validation and the store writes (one
//! all-or-nothing batch per call). Must not decide requests: the pipeline
//! resolves principals from what is stored here.

use std::collections::HashSet;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::caller::{Caller, forbidden};
use super::{Resp, error, reply};
use crate::config::Runtime;
use crate::directory::{
    DirectorySettings, PROFILES, ProfileVersion, ProfileVersions, Refused, USERS, UserRecord,
    check_change, check_requirements,
};
use crate::route::decode_param;
use crate::session::{SharedExpect, SharedOp, Store, now_ms};

/// A directory body larger than this is refused (413); CSV imports have
/// their own limit.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Versions kept of a directory profile (see `save_profile`).
pub const MAX_PROFILE_VERSIONS: usize = 100;

/// An answer and the audit lines it writes (action, object, result).
pub type Answer = (Resp, Vec<(&'static str, String, Value)>);

fn refused(r: Refused) -> Resp {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    error(status, r.code, &r.reason)
}

fn unavailable(e: crate::session::StoreError) -> Resp {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "session_store_unavailable",
        &e.0,
    )
}

fn bad(reason: String) -> Resp {
    error(StatusCode::BAD_REQUEST, "bad_request", &reason)
}

/// A call to `/directory/...`: what the handler reads of the request.
pub struct Call<'a> {
    pub method: &'a Method,
    /// The path after `directory`.
    pub rest: &'a [&'a str],
    pub query: Option<&'a str>,
    pub body: Option<&'a [u8]>,
    /// `If-Match` and `If-None-Match` (a write of one entry).
    pub preconditions: Preconditions,
}

/// The conditions of a write on the entry's revision (RFC 9110 §13.1.1,
/// §13.1.2): its `ETag` is `"<revision>"`.
#[derive(Debug, Default)]
pub struct Preconditions {
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
}

impl Preconditions {
    /// Whether a write may go ahead on an entry whose revision is
    /// `current` (`None`: no entry); otherwise 412 `precondition_failed`,
    /// with the current revision when the caller may read the entry
    /// (`shown`; else `null`: a write that changes nothing passes the
    /// rights of any caller, and must not tell it the revision).
    #[allow(clippy::result_large_err)]
    fn check(&self, current: Option<&str>, shown: bool) -> Result<(), Resp> {
        // `*`, or a list of entity tags; `If-Match` compares strongly (a
        // weak tag never matches), `If-None-Match` weakly.
        let matches = |field: &str, strong: bool| {
            field.split(',').map(str::trim).any(|t| {
                if t == "*" {
                    return current.is_some();
                }
                let (weak, tag) = match t.strip_prefix("W/") {
                    Some(rest) => (true, rest),
                    None => (false, t),
                };
                let tag = tag.trim_matches('"');
                !(strong && weak) && current == Some(tag)
            })
        };
        let ok = self.if_match.as_deref().is_none_or(|f| matches(f, true))
            && self
                .if_none_match
                .as_deref()
                .is_none_or(|f| !matches(f, false));
        if ok {
            return Ok(());
        }
        Err(reply(
            StatusCode::PRECONDITION_FAILED,
            json!({
                "error": "precondition_failed",
                "reason": match current {
                    Some(_) => "the entry is not at the revision the request names (changed since it was read, or created)",
                    None => "there is no entry (removed since it was read, or never written)",
                },
                "revision": current.filter(|_| shown),
            }),
        ))
    }
}

/// The stored entry of `sub`, if any (an unreadable one is an error,
/// answered as it is: admin calls are rare, the size does not matter).
#[allow(clippy::result_large_err)]
pub fn user(store: &Store, sub: &str) -> Result<Option<UserRecord>, Resp> {
    user_read(store, sub).map(|(rec, _)| rec)
}

/// [`user`], with the condition that a write replacing what was read
/// lands only on it ([`Store::shared_apply_if`]).
#[allow(clippy::result_large_err)]
fn user_read(store: &Store, sub: &str) -> Result<(Option<UserRecord>, SharedExpect), Resp> {
    let raw = store.shared().get(USERS, sub, now_ms());
    let rec = match &raw {
        None => None,
        Some(raw) => Some(serde_json::from_str(raw).map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "directory_damaged",
                &format!("stored entry of {sub} unreadable: {e}"),
            )
        })?),
    };
    let read = SharedExpect {
        ns: USERS.into(),
        k: sub.to_string(),
        v: raw.map(|r| r.to_string()),
    };
    Ok((rec, read))
}

/// The answer to a write whose entries changed between the read its checks
/// were made on and the write (another gateway wrote them meanwhile):
/// nothing was written. 412 when the request named a revision (it was no
/// longer current), else 409 `write_conflict`.
fn changed_meanwhile(preconditions: Option<&Preconditions>) -> Resp {
    if preconditions.is_some_and(|p| p.if_match.is_some() || p.if_none_match.is_some()) {
        let body = json!({
            "error": "precondition_failed",
            "reason": "the entry changed while this write was being applied",
            "revision": null,
        });
        return reply(StatusCode::PRECONDITION_FAILED, body);
    }
    error(
        StatusCode::CONFLICT,
        "write_conflict",
        "the directory changed while this write was being applied (another gateway wrote it): nothing was written; read it again and retry",
    )
}

/// Directory writes of this process, one at a time: each reads, checks
/// (rights, revisions) and writes as one step. Across gateways sharing a
/// Redis store the write itself is conditional on what was read
/// ([`changed_meanwhile`]).
static WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a directory write waits for the one before it: past that,
/// 503 `directory_busy`.
const WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Every entry (for listings and exports), optionally of one partner.
pub fn users(store: &Store, partner: Option<&str>) -> Vec<(String, UserRecord)> {
    users_read(store)
        .into_iter()
        .map(|(k, r, _)| (k, r))
        .filter(|(_, r)| partner.is_none_or(|p| r.partners.iter().any(|x| x == p)))
        .collect()
}

/// Every entry, with the condition that a write replacing it lands only on
/// what was read.
fn users_read(store: &Store) -> Vec<(String, UserRecord, SharedExpect)> {
    store
        .shared()
        .list(USERS, now_ms())
        .into_iter()
        .filter_map(|(k, e)| {
            let rec = serde_json::from_str::<UserRecord>(&e.value).ok()?;
            let read = SharedExpect {
                ns: USERS.into(),
                k: k.clone(),
                v: Some(e.value.to_string()),
            };
            Some((k, rec, read))
        })
        .collect()
}

fn profile(store: &Store, name: &str) -> Option<ProfileVersions> {
    store
        .shared()
        .get(PROFILES, name, now_ms())
        .and_then(|s| serde_json::from_str(&s).ok())
}

/// Data rules for a record, whoever writes it: known roles, role
/// requirements, known profiles (a directory profile's version is pinned
/// to its latest when left out and must exist when given).
pub fn validate(rt: &Runtime, store: &Store, rec: &mut UserRecord) -> Result<(), Refused> {
    rec.normalise();
    let requires = |name: &str| rt.policy.role(name).map(|r| r.requires.clone());
    check_requirements(rec, &requires)?;
    for p in &mut rec.profiles {
        match profile(store, &p.name) {
            Some(versions) => match p.version {
                None => p.version = versions.latest().map(|v| v.version),
                Some(n) if versions.get(n).is_some() => {}
                Some(n) => {
                    return Err(Refused {
                        status: 400,
                        code: "unknown_profile",
                        reason: format!("profile {} has no version {n}", p.name),
                    });
                }
            },
            None if rt.policy.profile(&p.name).is_some() => {
                if p.version.is_some() {
                    return Err(Refused {
                        status: 400,
                        code: "unknown_profile",
                        reason: format!(
                            "profile {} is defined in the configuration, which has no versions",
                            p.name
                        ),
                    });
                }
            }
            None => {
                return Err(Refused {
                    status: 400,
                    code: "unknown_profile",
                    reason: format!("no profile named {}", p.name),
                });
            }
        }
    }
    for (what, v) in [("partner", &rec.partners), ("team", &rec.teams)] {
        if let Some(bad) = v
            .iter()
            .find(|x| x.is_empty() || x.chars().any(char::is_control))
        {
            return Err(Refused {
                status: 400,
                code: "bad_request",
                reason: format!("{what} {bad:?} is not a name"),
            });
        }
    }
    for g in &rec.grants {
        if crate::policy::parse_binding(g).is_none_or(|b| !crate::policy::is_valid_grant(b.name)) {
            return Err(Refused {
                status: 400,
                code: "bad_request",
                reason: format!("{g:?} is not a grant"),
            });
        }
    }
    Ok(())
}

/// Which of `subs` (subjects without an entry) a user's own token may not
/// create the entry of: those this gateway has seen sign in (a session of
/// theirs is known), whose tokens carry claims the directory cannot see
/// when the entry is written, their partners among them (seed 002: a user
/// is added only by whoever has access to every partner they belong to,
/// which cannot be told here). Their entries are created with the admin
/// token. One store read for all of them (a CSV import asks for every
/// new row at once). `Err`: the store could not say (503).
#[allow(clippy::result_large_err)]
async fn seen_before(
    store: &Store,
    caller: &Caller,
    subs: &HashSet<&str>,
) -> Result<HashSet<String>, Resp> {
    if matches!(caller, Caller::Operator) {
        return Ok(HashSet::new());
    }
    store.subjects_seen(subs).await.map_err(unavailable)
}

fn seen_refusal() -> Refused {
    crate::directory::forbidden(
        "this user has signed in before, with token claims (partners, roles) the directory cannot see: only the admin token creates their entry".into(),
    )
}

/// The ops that write `new` for `sub` (or remove it), with the store's
/// session side effects applied first: deactivating an entry ends every
/// session the directory's issuer gave the user and sets the not-before
/// cut-off of that issuer's tokens; reactivating it lifts that
/// deactivation. The directory speaks for its issuer only: the same
/// subject's tokens from other issuers, and a deactivation by the admin
/// API (`POST /users/{user}/deactivate`, every issuer), are not touched.
/// The record written (the directory's deactivation time kept in it) is
/// returned with the op.
#[allow(clippy::result_large_err)]
pub async fn write_user(
    store: &Store,
    issuer: &str,
    sub: &str,
    old: Option<&UserRecord>,
    new: Option<&UserRecord>,
) -> Result<(SharedOp, Option<UserRecord>), Resp> {
    let was = old.is_none_or(|o| o.active);
    let is = new.is_none_or(|n| n.active);
    let mut new = new.cloned();
    if let Some(n) = &mut new {
        // Never the caller's: the time of the directory's own
        // deactivation, kept while the entry stays inactive.
        n.deactivated_ms = if n.active {
            None
        } else {
            old.and_then(|o| o.deactivated_ms)
        };
    }
    let user = crate::session::issuer_user_key(issuer, sub);
    if was && !is {
        let (_, cut_off) = store.deactivate(&user).await.map_err(unavailable)?;
        if let Some(n) = &mut new {
            n.deactivated_ms = Some(cut_off);
        }
    } else if !was && is && new.is_some() {
        store.reactivate(&user).await.map_err(unavailable)?;
    }
    let op = match &new {
        Some(n) => SharedOp::Put {
            ns: USERS.into(),
            k: sub.to_string(),
            v: serde_json::to_string(n).unwrap_or_default(),
            x: None,
        },
        None => SharedOp::Del {
            ns: USERS.into(),
            k: sub.to_string(),
        },
    };
    Ok((op, new))
}

/// Whether `caller` may read the entry `rec`: the admin token, or
/// `manage_with` on one of its partners (no entry: nothing to read).
fn sees(rt: &Runtime, caller: &Caller, dir: &DirectorySettings, rec: Option<&UserRecord>) -> bool {
    operator(caller)
        || rec.is_some_and(|r| {
            r.partners
                .iter()
                .any(|p| caller.may(rt, &dir.manage_with, Some(("partner", p))))
        })
}

fn may<'a>(
    rt: &'a Runtime,
    caller: &'a Caller,
) -> impl Fn(&str, Option<(&str, &str)>) -> bool + 'a {
    move |cap, scope| caller.may(rt, cap, scope)
}

/// The admin token: the only caller for whom "every partner" means all
/// (a Partner Admin's `manage_with` is bound to its own partners).
fn operator(caller: &Caller) -> bool {
    matches!(caller, Caller::Operator)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileSave {
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    grants: Vec<String>,
    /// "Save and apply": every holder moves to the new version. Otherwise
    /// ("save") only users assigned from now on get it.
    #[serde(default)]
    apply: bool,
}

/// `/directory/...` (the path after `directory`).
pub async fn handle(rt: &Runtime, store: &Store, caller: &Caller, call: &Call<'_>) -> Answer {
    let (method, rest, query, body) = (call.method, call.rest, call.query, call.body);
    let Some(dir) = &rt.directory else {
        let r = error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no user directory is configured (`directory:`)",
        );
        return (r, vec![]);
    };
    // A user's rights over an entry are judged from the entries as this
    // instance holds them: while its copy may be stale (Redis events
    // down), a Partner Admin is refused rather than judged on old
    // memberships. The operator may still act.
    if !operator(caller) && !store.shared_fresh() {
        let r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "session_store_unavailable",
            "the directory's copy may be stale (session store events not in sync)",
        );
        return (r, vec![]);
    }
    let _one_write_at_a_time = if method == Method::GET {
        None
    } else {
        match tokio::time::timeout(WRITE_WAIT, WRITES.lock()).await {
            Ok(guard) => Some(guard),
            Err(_) => {
                let r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "directory_busy",
                    "another directory write has been running for too long (a large import on a slow store?): try again",
                );
                return (r, vec![]);
            }
        }
    };
    match (method, rest) {
        (&Method::GET, ["users"]) => (list(rt, store, caller, dir, query), vec![]),
        (&Method::GET, ["users.csv"]) => (export_csv(rt, store, caller, dir, query), vec![]),
        (&Method::POST, ["users.csv"]) => import_csv(rt, store, caller, dir, body).await,
        (&Method::GET, ["users", sub]) => (get_user(rt, store, caller, dir, sub), vec![]),
        (&Method::PUT, ["users", sub]) => put_user(rt, store, caller, dir, sub, call).await,
        (&Method::DELETE, ["users", sub]) => delete_user(rt, store, caller, dir, sub, call).await,
        (&Method::GET, ["profiles", name]) => match profile(store, name) {
            Some(v) => (
                reply(
                    StatusCode::OK,
                    json!({ "profile": name, "versions": v.versions }),
                ),
                vec![],
            ),
            None => (
                error(
                    StatusCode::NOT_FOUND,
                    "unknown_profile",
                    "no directory profile of that name",
                ),
                vec![],
            ),
        },
        (&Method::PUT, ["profiles", name]) => {
            save_profile(rt, store, caller, dir, name, body).await
        }
        (_, ["users"] | ["users.csv"] | ["users", _] | ["profiles", _]) => (
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "see the README's admin API",
            ),
            vec![],
        ),
        _ => (
            error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
            vec![],
        ),
    }
}

fn partner_param(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "partner").then(|| decode_param(v))
    })
}

/// The `?partner=` of a listing or export, if the caller may see that
/// partner's users (`manage_with` on it; without `partner`, every user:
/// the admin token only).
#[allow(clippy::result_large_err)]
fn partner_users(
    rt: &Runtime,
    caller: &Caller,
    dir: &DirectorySettings,
    query: Option<&str>,
    what: &str,
) -> Result<Option<String>, Resp> {
    let partner = partner_param(query);
    let allowed = match partner.as_deref() {
        Some(p) => caller.may(rt, &dir.manage_with, Some(("partner", p))),
        None => operator(caller),
    };
    if allowed {
        Ok(partner)
    } else {
        Err(forbidden(&format!(
            "{what} users requires {} on the partner (`?partner=`; every partner: the admin token)",
            dir.manage_with
        )))
    }
}

/// Users of a partner (a Partner Admin: their partner), or all (operator).
fn list(
    rt: &Runtime,
    store: &Store,
    caller: &Caller,
    dir: &DirectorySettings,
    query: Option<&str>,
) -> Resp {
    let partner = match partner_users(rt, caller, dir, query, "listing") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let list: Vec<Value> = users(store, partner.as_deref())
        .into_iter()
        .map(|(sub, r)| json!({ "user": sub, "revision": r.revision(), "record": r }))
        .collect();
    reply(StatusCode::OK, json!({ "partner": partner, "users": list }))
}

/// `GET /directory/users.csv[?partner=P]`: the partner's users as CSV
/// (`directory::csv`), for editing in a spreadsheet.
fn export_csv(
    rt: &Runtime,
    store: &Store,
    caller: &Caller,
    dir: &DirectorySettings,
    query: Option<&str>,
) -> Resp {
    let partner = match partner_users(rt, caller, dir, query, "exporting") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let text = crate::directory::csv::export(&users(store, partner.as_deref()));
    let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// `POST /directory/users.csv`: every row replaces that user's entry, all
/// or nothing. The whole file is validated first — format, data rules and
/// the caller's right to make each row's change — and every bad row is
/// reported; nothing is applied unless every row passes.
async fn import_csv(
    rt: &Runtime,
    store: &Store,
    caller: &Caller,
    dir: &DirectorySettings,
    body: Option<&[u8]>,
) -> Answer {
    let file = match crate::directory::csv::import_rows(body.unwrap_or_default()) {
        Ok(file) => file,
        Err(e) => {
            let body = json!({ "error": "invalid_import", "reason": e.reason(), "rows": e.rows });
            return (reply(StatusCode::BAD_REQUEST, body), vec![]);
        }
    };
    let mut problems: Vec<Value> = Vec::new();
    let mut status = StatusCode::BAD_REQUEST;
    let mut changes = Vec::new();
    let mut rows = Vec::with_capacity(file.rows.len());
    // Rows whose entry is not at the revision the file gives: the file is
    // older than a change made since (judged after the rights, below, so
    // that a caller learns nothing of entries it may not change).
    let mut stale = HashSet::new();
    let mut reads = Vec::with_capacity(file.rows.len());
    for (row, sub, rec, revision) in file.rows {
        match user_read(store, &sub) {
            Ok((old, read)) => {
                reads.push(read);
                // Digested only when the file has the column.
                let now = old
                    .as_ref()
                    .filter(|_| file.revision_given)
                    .map(UserRecord::revision);
                if file.revision_given && revision != now {
                    stale.insert(row);
                }
                rows.push((row, sub, rec, old, revision, now));
            }
            Err(r) => return (r, vec![]),
        }
    }
    let new_subs: HashSet<&str> = rows
        .iter()
        .filter(|r| r.3.is_none())
        .map(|r| r.1.as_str())
        .collect();
    let seen = match seen_before(store, caller, &new_subs).await {
        Ok(seen) => seen,
        Err(r) => return (r, vec![]),
    };
    let mut conflict = false;
    for (row, sub, mut rec, old, given, now) in rows {
        // A file without the column says nothing of the state: an
        // existing user keeps it (a stale export never reactivates).
        if !file.active_given
            && let Some(o) = &old
        {
            rec.active = o.active;
        }
        let mut checked = validate(rt, store, &mut rec).and_then(|()| {
            check_change(
                dir,
                operator(caller),
                old.as_ref(),
                Some(&rec),
                &may(rt, caller),
            )
        });
        if checked.is_ok() && old.is_none() && seen.contains(&sub) {
            checked = Err(seen_refusal());
        }
        // A stale row that would change nothing is no conflict (the user
        // deactivated again since, say, with the same entry).
        let no_op = old.as_ref().is_some_and(|o| o.same_entry(&rec));
        if checked.is_ok() && stale.contains(&row) && !no_op {
            conflict = true;
            let shown = sees(rt, caller, dir, old.as_ref());
            let reason = match (given, now) {
                (Some(g), Some(n)) if shown => format!(
                    "the entry changed since the file was exported (revision {g}, now {n}): export again"
                ),
                (Some(g), Some(_)) => format!(
                    "the entry changed since the file was exported (revision {g}): export again"
                ),
                (Some(g), None) => format!(
                    "the entry was removed since the file was exported (revision {g}): export again, or empty the revision cell to create it"
                ),
                (None, _) => "the entry was created since the file was exported (the row has no revision): export again".to_string(),
            };
            problems.push(json!({ "row": row, "user": sub, "reason": reason }));
            continue;
        }
        match checked {
            Ok(()) => changes.push((sub, old, rec)),
            Err(r) => {
                if r.status == 403 {
                    status = StatusCode::FORBIDDEN;
                }
                problems.push(json!({ "row": row, "user": sub, "reason": r.reason }));
            }
        }
    }
    if !problems.is_empty() {
        let code = if status == StatusCode::FORBIDDEN {
            "forbidden"
        } else if conflict {
            status = StatusCode::CONFLICT;
            "import_conflict"
        } else {
            "invalid_import"
        };
        let body = json!({
            "error": code,
            "reason": format!("{} row(s) refused; nothing was applied", problems.len()),
            "rows": problems,
        });
        return (reply(status, body), vec![]);
    }
    let (mut created, mut updated) = (0, 0);
    let mut ops = Vec::new();
    // One audit line per user the file changed, as a `PUT` writes; and
    // when the write fails, the activations already changed in the store.
    let mut lines = Vec::new();
    let mut states = Vec::new();
    // Before the store's side effects, as for one entry (`put_user`).
    match store.shared_holds(&reads).await {
        Ok(true) => {}
        Ok(false) => return (changed_meanwhile(None), vec![]),
        Err(e) => return (unavailable(e), vec![]),
    }
    for (sub, old, rec) in &changes {
        let changed = old.as_ref().is_none_or(|o| !o.same_entry(rec));
        if old.is_none() {
            created += 1;
        } else if changed {
            updated += 1;
        }
        match write_user(store, &dir.issuer, sub, old.as_ref(), Some(rec)).await {
            Ok((op, written)) => {
                ops.push(op);
                if changed {
                    let record = written.unwrap_or_else(|| rec.clone());
                    let result = json!({ "user": sub, "record": record, "created": old.is_none(), "via": "users.csv" });
                    lines.push(("directory_user", sub.clone(), result));
                }
            }
            Err(r) => return (r, states),
        }
        if let Some(line) = state_change(sub, old.as_ref(), Some(rec)) {
            states.push(line);
        }
    }
    match store.shared_apply_if(&reads, ops).await {
        Ok(true) => {}
        Ok(false) => return (changed_meanwhile(None), states),
        Err(e) => return (unavailable(e), states),
    }
    let result = json!({ "imported": changes.len(), "created": created, "updated": updated });
    lines.push(("directory_import", "users.csv".to_string(), result.clone()));
    (reply(StatusCode::OK, result), lines)
}

/// The audit line of an activation changed in the store for an entry
/// whose write then failed (`write_user` applies it first): the entry
/// still says otherwise, the store's state stands.
fn state_change(
    sub: &str,
    old: Option<&UserRecord>,
    new: Option<&UserRecord>,
) -> Option<(&'static str, String, Value)> {
    let was = old.is_none_or(|o| o.active);
    let is = new.is_none_or(|n| n.active);
    (was != is && new.is_some()).then(|| {
        let result = json!({ "user": sub, "active": is, "entry_written": false });
        ("directory_user_state", sub.to_string(), result)
    })
}

fn get_user(
    rt: &Runtime,
    store: &Store,
    caller: &Caller,
    dir: &DirectorySettings,
    sub: &str,
) -> Resp {
    let rec = match user(store, sub) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_user",
                "no directory entry for this user",
            );
        }
        Err(r) => return r,
    };
    if !sees(rt, caller, dir, Some(&rec)) {
        return forbidden(&format!(
            "viewing this user requires {} on one of their partners",
            dir.manage_with
        ));
    }
    let revision = rec.revision();
    let mut r = reply(
        StatusCode::OK,
        json!({ "user": sub, "revision": revision, "record": rec }),
    );
    if let Ok(tag) = http::HeaderValue::from_str(&format!("\"{revision}\"")) {
        r.headers_mut().insert(http::header::ETAG, tag);
    }
    r
}

async fn put_user(
    rt: &Runtime,
    store: &Store,
    caller: &Caller,
    dir: &DirectorySettings,
    sub: &str,
    call: &Call<'_>,
) -> Answer {
    let body = call.body;
    if sub.is_empty() || sub.chars().any(char::is_control) {
        return (
            bad("the user (token `sub`) must be a non-empty name".into()),
            vec![],
        );
    }
    let mut new: UserRecord = match serde_json::from_slice(body.unwrap_or_default()) {
        Ok(r) => r,
        Err(e) => return (bad(format!("body is not a directory entry: {e}")), vec![]),
    };
    if let Err(r) = validate(rt, store, &mut new) {
        return (refused(r), vec![]);
    }
    let (old, read) = match user_read(store, sub) {
        Ok(o) => o,
        Err(r) => return (r, vec![]),
    };
    if let Err(r) = check_change(
        dir,
        operator(caller),
        old.as_ref(),
        Some(&new),
        &may(rt, caller),
    ) {
        return (refused(r), vec![]);
    }
    // After the rights: a caller who may not change the entry learns
    // nothing of its revision.
    if let Err(r) = call.preconditions.check(
        old.as_ref().map(UserRecord::revision).as_deref(),
        sees(rt, caller, dir, old.as_ref()),
    ) {
        return (r, vec![]);
    }
    if old.is_none() {
        match seen_before(store, caller, &HashSet::from([sub])).await {
            Ok(seen) if seen.is_empty() => {}
            Ok(_) => return (refused(seen_refusal()), vec![]),
            Err(r) => return (r, vec![]),
        }
    }
    // Before the store's side effects (ending sessions on deactivation):
    // a copy that missed another gateway's write is found out here.
    match store.shared_holds(std::slice::from_ref(&read)).await {
        Ok(true) => {}
        Ok(false) => return (changed_meanwhile(Some(&call.preconditions)), vec![]),
        Err(e) => return (unavailable(e), vec![]),
    }
    let (op, new) = match write_user(store, &dir.issuer, sub, old.as_ref(), Some(&new)).await {
        Ok((op, written)) => (op, written.unwrap_or(new)),
        Err(r) => return (r, vec![]),
    };
    match store.shared_apply_if(&[read], vec![op]).await {
        Ok(true) => {}
        Ok(false) => {
            let state = state_change(sub, old.as_ref(), Some(&new));
            let r = changed_meanwhile(Some(&call.preconditions));
            return (r, state.into_iter().collect());
        }
        Err(e) => {
            let state = state_change(sub, old.as_ref(), Some(&new));
            return (unavailable(e), state.into_iter().collect());
        }
    }
    let result =
        json!({ "user": sub, "revision": new.revision(), "record": new, "created": old.is_none() });
    (
        reply(StatusCode::OK, result.clone()),
        vec![("directory_user", sub.to_string(), result)],
    )
}

async fn delete_user(
    rt: &Runtime,
    store: &Store,
    caller: &Caller,
    dir: &DirectorySettings,
    sub: &str,
    call: &Call<'_>,
) -> Answer {
    let (old, read) = match user_read(store, sub) {
        Ok((Some(o), read)) => (o, read),
        Ok((None, _)) => {
            return (
                error(
                    StatusCode::NOT_FOUND,
                    "unknown_user",
                    "no directory entry for this user",
                ),
                vec![],
            );
        }
        Err(r) => return (r, vec![]),
    };
    if let Err(r) = check_change(dir, operator(caller), Some(&old), None, &may(rt, caller)) {
        return (refused(r), vec![]);
    }
    if let Err(r) = call
        .preconditions
        .check(Some(&old.revision()), sees(rt, caller, dir, Some(&old)))
    {
        return (r, vec![]);
    }
    let op = SharedOp::Del {
        ns: USERS.into(),
        k: sub.to_string(),
    };
    match store.shared_apply_if(&[read], vec![op]).await {
        Ok(true) => {}
        Ok(false) => return (changed_meanwhile(Some(&call.preconditions)), vec![]),
        Err(e) => return (unavailable(e), vec![]),
    }
    let result = json!({ "user": sub, "removed": true });
    (
        reply(StatusCode::OK, result.clone()),
        vec![("directory_user_removed", sub.to_string(), result)],
    )
}

async fn save_profile(
    rt: &Runtime,
    store: &Store,
    caller: &Caller,
    dir: &DirectorySettings,
    name: &str,
    body: Option<&[u8]>,
) -> Answer {
    if !caller.may(rt, &dir.profiles_with, None) {
        return (
            forbidden(&format!("saving profiles requires {}", dir.profiles_with)),
            vec![],
        );
    }
    if rt.policy.profile(name).is_some() {
        let reason = format!(
            "profile {name} is defined in the configuration; directory profiles need another name"
        );
        return (
            error(StatusCode::CONFLICT, "profile_in_config", &reason),
            vec![],
        );
    }
    if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return (
            bad("a profile name has no spaces or control characters".into()),
            vec![],
        );
    }
    let mut save: ProfileSave = match serde_json::from_slice(body.unwrap_or_default()) {
        Ok(s) => s,
        Err(e) => return (bad(format!("body is not a profile: {e}")), vec![]),
    };
    for v in [&mut save.roles, &mut save.grants] {
        v.sort();
        v.dedup();
    }
    // Global roles only: a profile is assigned to users, not to resources.
    if let Some(r) = save
        .roles
        .iter()
        .find(|r| rt.policy.role(r).is_none_or(|d| d.scope.is_some()))
    {
        let reason = format!("{r} is not a global role");
        return (
            error(StatusCode::BAD_REQUEST, "unknown_role", &reason),
            vec![],
        );
    }
    if let Some(g) = save
        .grants
        .iter()
        .find(|g| !crate::policy::is_valid_grant(g))
    {
        return (bad(format!("{g:?} is not a grant")), vec![]);
    }
    // A profile's grants reach every holder: a user's own token puts in
    // only what it holds itself (as for an entry's global grants).
    if !operator(caller)
        && let Some(g) = save
            .grants
            .iter()
            .find(|g| !crate::directory::may_grant(&may(rt, caller), g))
    {
        return (
            forbidden(&format!(
                "a profile granting {g} requires holding it yourself (wildcards: the admin token only)"
            )),
            vec![],
        );
    }
    let raw = store.shared().get(PROFILES, name, now_ms());
    let mut versions: ProfileVersions = raw
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let mut reads = vec![SharedExpect {
        ns: PROFILES.into(),
        k: name.to_string(),
        v: raw.map(|r| r.to_string()),
    }];
    // One read of the entries for everything below: the held versions,
    // the rights over the holders, the holders' writes and their
    // conditions.
    let entries = users_read(store);
    let version = versions.latest().map_or(1, |v| v.version + 1);
    // Bounded: past the cap the oldest versions no user holds go (never
    // the latest); when every one is held, the save is refused.
    if versions.versions.len() >= MAX_PROFILE_VERSIONS {
        let held: HashSet<u64> = entries
            .iter()
            .flat_map(|(_, rec, _)| rec.profiles.iter())
            .filter(|p| p.name == name)
            .filter_map(|p| p.version)
            .collect();
        if !versions.make_room(&held, MAX_PROFILE_VERSIONS) {
            let reason = format!(
                "profile {name} has {MAX_PROFILE_VERSIONS} versions, each held by a user or the latest: move holders to a newer version first"
            );
            return (
                error(StatusCode::CONFLICT, "too_many_versions", &reason),
                vec![],
            );
        }
    }
    let (roles, grants) = (save.roles.clone(), save.grants.clone());
    versions.versions.push(ProfileVersion {
        version,
        roles: save.roles,
        grants: save.grants,
        saved_ms: now_ms(),
    });
    let mut ops = vec![SharedOp::Put {
        ns: PROFILES.into(),
        k: name.to_string(),
        v: serde_json::to_string(&versions).unwrap_or_default(),
        x: None,
    }];
    let mut applied = 0;
    if save.apply {
        // Moving holders to the new version changes their roles: with a
        // user's own token, only holders the caller manages (every
        // partner of each; a holder in no partner: the admin token).
        let may_all = may(rt, caller);
        let foreign = entries.iter().find(|(_, rec, _)| {
            rec.profiles.iter().any(|p| p.name == name)
                && !operator(caller)
                && (rec.partners.is_empty()
                    || !rec
                        .partners
                        .iter()
                        .all(|p| may_all(&dir.manage_with, Some(("partner", p)))))
        });
        if foreign.is_some() {
            return (
                forbidden(&format!(
                    "\"apply\" moves every holder of {name}: some are users you do not manage ({} on each of their partners; users in no partner: the admin token)",
                    dir.manage_with
                )),
                vec![],
            );
        }
        for (sub, mut rec, read) in entries {
            let mut held = false;
            for p in &mut rec.profiles {
                if p.name == name {
                    p.version = Some(version);
                    held = true;
                }
            }
            if held {
                applied += 1;
                reads.push(read);
                ops.push(SharedOp::Put {
                    ns: USERS.into(),
                    k: sub,
                    v: serde_json::to_string(&rec).unwrap_or_default(),
                    x: None,
                });
            }
        }
    }
    match store.shared_apply_if(&reads, ops).await {
        Ok(true) => {}
        Ok(false) => return (changed_meanwhile(None), vec![]),
        Err(e) => return (unavailable(e), vec![]),
    }
    let result = json!({
        "profile": name,
        "version": version,
        "applied": save.apply,
        "holders_updated": applied,
    });
    // The audit line says what the version grants too.
    let mut audited = result.clone();
    audited["roles"] = json!(roles);
    audited["grants"] = json!(grants);
    (
        reply(StatusCode::OK, result),
        vec![("directory_profile", name.to_string(), audited)],
    )
}
