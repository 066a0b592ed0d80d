//! `rolegate test`: policy test tables (YAML: principal + request → expected
//! decision), run through the same normalise → route → policy code as the
//! proxy, without a server or tokens.
//!
//! A case marked `pending: "<issue>: <what>"` encodes a row that needs a
//! later stage: it is run and shown, but its result does not fail the
//! table, so the row is recorded rather than dropped. Relations are never
//! pulled here: a case states the ones it needs (`relations:`), any other
//! is unknown. Sessions are not checked unless a case says how long ago the
//! session's last activity was (`idle_for:`); then the session stage is run
//! as the gateway runs it, on a session table of its own.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use std::time::Duration;

use crate::config::{Runtime, parse_duration};
use crate::error::{Deny, Refusal};
use crate::explain::split_url;
use crate::policy::{self, Decision, Principal, Relations, Stated};
use crate::route::canonicalize;
use crate::session::Verdict;
use crate::session::table::{Table as SessionTable, Touch};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    pub name: String,
    #[serde(default)]
    pub principals: BTreeMap<String, TablePrincipal>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TablePrincipal {
    pub sub: String,
    pub roles: Vec<String>,
    pub partners: Vec<String>,
    pub teams: Vec<String>,
    pub profiles: Vec<String>,
    pub grants: Vec<String>,
    pub claims: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Name of a principal in `principals`.
    #[serde(rename = "as")]
    pub who: String,
    /// `"METHOD /path"` or `"METHOD http://host/path"`.
    pub request: String,
    pub expect: Expect,
    /// Expected deny code (`missing_capability`, `not_member`, …).
    #[serde(default)]
    pub code: Option<String>,
    /// Expected masking of an allowed response on a masked route: `true` =
    /// the principal lacks the mask's `unmask_with`, `false` = sees it
    /// unmasked.
    #[serde(default)]
    pub masked: Option<bool>,
    /// Which seed row or role description this case encodes.
    #[serde(default)]
    pub row: Option<String>,
    /// The later issue this row waits for.
    #[serde(default)]
    pub pending: Option<String>,
    /// Relations stated for this case, for its principal:
    /// `"active_conversation(c1)": true`. Any other relation is unknown
    /// (as when its source cannot answer).
    #[serde(default)]
    pub relations: BTreeMap<String, bool>,
    /// The request comes this long (`16m`) after the session's last
    /// activity: the session stage runs with the principal's idle timeout
    /// as in the gateway (`session_expired` when it is exceeded). Absent:
    /// no session check.
    #[serde(default)]
    pub idle_for: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    Allow,
    Deny,
    NoRoute,
    BadRequest,
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
            Expect::NoRoute => "no_route",
            Expect::BadRequest => "bad_request",
        })
    }
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub table: String,
    pub index: usize,
    pub label: String,
    pub expected: String,
    pub got: String,
    pub pass: bool,
    pub pending: Option<String>,
}

/// Totals over all tables.
#[derive(Debug, Default)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub pending: usize,
    pub results: Vec<CaseResult>,
    /// Tables that could not be read or parsed, or cases naming unknown principals.
    pub errors: Vec<String>,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.errors.is_empty()
    }
}

/// The outcome of one request: decision, deny code, and whether an
/// allowed response would be masked (None: the route has no mask).
struct Outcome {
    expect: Expect,
    code: Option<String>,
    masked: Option<bool>,
}

/// Phase 4 for a session whose first and last activity were `idle_for`
/// ago: the gateway's session table and the principal's idle timeout as
/// the gateway resolves it ([`Runtime::idle_timeout`]), `max_lifetime`
/// included. `touch` as the gateway: only allowed, non-passive requests.
fn session_after(rt: &Runtime, p: &Principal, idle_for: Duration, touch: bool) -> Verdict {
    let table = SessionTable::new();
    // Any instant will do: the table only compares differences.
    let last: u64 = 1_700_000_000_000;
    let idle_ms = rt.idle_timeout(p).as_millis() as u64;
    let then = Touch {
        issuer: &p.issuer,
        subject: &p.subject,
        session: "policy-test",
        now_ms: last,
        idle_ms,
        max_lifetime_ms: rt.sessions.max_lifetime.map(|m| m.as_millis() as u64),
        token_exp_ms: u64::MAX,
        token_iat_ms: None,
        touch: true,
        key: None,
    };
    // The last activity: the session's first request, allowed.
    table.check(&then);
    let now = Touch {
        now_ms: last.saturating_add(idle_for.as_millis() as u64),
        touch,
        ..then
    };
    table.check(&now).0
}

/// Decides one request for one principal; with `idle_for`, the session
/// stage too (before the policy's answer is applied, as in the gateway).
fn decide(
    rt: &Runtime,
    p: &Principal,
    request: &str,
    rel: &dyn Relations,
    idle_for: Option<Duration>,
) -> Result<Outcome, String> {
    let (method, url) = request
        .split_once(' ')
        .ok_or_else(|| format!("request {request:?} is not \"METHOD /path\""))?;
    let (host, pq) = split_url(url.trim());
    let outcome = |expect, code, masked| {
        Ok(Outcome {
            expect,
            code,
            masked,
        })
    };
    if crate::route::is_miscased_method(method) {
        return outcome(Expect::BadRequest, None, None);
    }
    let canon = match canonicalize(&pq, &rt.canon) {
        Ok(c) => c,
        Err(_) => return outcome(Expect::BadRequest, None, None),
    };
    let Some(m) = rt.router.at(host.as_deref(), method, canon.routing_path()) else {
        return outcome(Expect::NoRoute, None, None);
    };
    let route = &rt.routes[m.route];
    let masked = route.mask.as_ref().map(|mk| {
        route.policy.public || !policy::decide(&rt.policy, p, &mk.unmask, &m.params, rel).is_allow()
    });
    if route.policy.public {
        // Public routes skip authentication and the session stage.
        return outcome(Expect::Allow, None, masked);
    }
    let decision = policy::decide(&rt.policy, p, &route.policy, &m.params, rel);
    if let Some(idle_for) = idle_for {
        let touch = decision.is_allow() && !route.passive;
        let refusal = match session_after(rt, p, idle_for, touch) {
            Verdict::Active => None,
            Verdict::Ended(reason) => Some(Refusal::from(Deny::SessionEnded(reason))),
            Verdict::Deactivated => Some(Refusal::from(Deny::UserDeactivated)),
        };
        if let Some(r) = refusal {
            // The same code (and 401) the gateway answers.
            return outcome(Expect::Deny, Some(r.detail().to_string()), None);
        }
    }
    match decision {
        Decision::Allow => outcome(Expect::Allow, None, masked),
        Decision::Deny(d) => outcome(Expect::Deny, Some(d.code.to_string()), None),
    }
}

/// Runs one parsed table.
pub fn run_table(rt: &Runtime, file: &str, table: &Table, summary: &mut Summary) {
    for (i, case) in table.cases.iter().enumerate() {
        let Some(tp) = table.principals.get(&case.who) else {
            summary.errors.push(format!(
                "{file}: case {}: unknown principal {:?}",
                i + 1,
                case.who
            ));
            continue;
        };
        let p = Principal {
            subject: tp.sub.clone(),
            issuer: "policy-test".into(),
            session: None,
            roles: tp.roles.clone(),
            partners: tp.partners.clone(),
            teams: tp.teams.clone(),
            profiles: tp.profiles.clone(),
            grants: tp.grants.clone(),
            claims: tp.claims.clone(),
            identity_values: Default::default(),
            identity_block: Default::default(),
            session_is_token: false,
            session_key: Default::default(),
            idle_timeout: Default::default(),
        };
        let stated = match Stated::parse(case.relations.iter().map(|(k, v)| (k.as_str(), *v))) {
            Ok(s) => s,
            Err(e) => {
                summary.errors.push(format!("{file}: case {}: {e}", i + 1));
                continue;
            }
        };
        let idle_for = match case.idle_for.as_deref().map(parse_duration).transpose() {
            Ok(d) => d,
            Err(e) => {
                summary
                    .errors
                    .push(format!("{file}: case {}: idle_for: {e}", i + 1));
                continue;
            }
        };
        let o = match decide(rt, &p, &case.request, &stated, idle_for) {
            Ok(x) => x,
            Err(e) => {
                summary.errors.push(format!("{file}: case {}: {e}", i + 1));
                continue;
            }
        };
        let pass = o.expect == case.expect
            && case
                .code
                .as_ref()
                .is_none_or(|c| Some(c) == o.code.as_ref())
            && case.masked.is_none_or(|want| o.masked == Some(want));
        let describe = |e: Expect, code: Option<&String>, masked: Option<bool>| {
            let mut s = e.to_string();
            if let Some(c) = code {
                s.push_str(&format!(" ({c})"));
            }
            match masked {
                Some(true) => s.push_str(", masked"),
                Some(false) => s.push_str(", unmasked"),
                None => {}
            }
            s
        };
        let expected = describe(case.expect, case.code.as_ref(), case.masked);
        let got_s = describe(
            o.expect,
            o.code.as_ref(),
            if case.masked.is_some() {
                o.masked
            } else {
                None
            },
        );
        let label = format!(
            "{} {}{}{}",
            case.who,
            case.request,
            case.idle_for
                .as_ref()
                .map(|d| format!(" after {d} idle"))
                .unwrap_or_default(),
            case.row
                .as_ref()
                .map(|r| format!("  [{r}]"))
                .unwrap_or_default()
        );
        match (&case.pending, pass) {
            (Some(_), _) => summary.pending += 1,
            (None, true) => summary.passed += 1,
            (None, false) => summary.failed += 1,
        }
        summary.results.push(CaseResult {
            table: table.name.clone(),
            index: i + 1,
            label,
            expected,
            got: got_s,
            pass,
            pending: case.pending.clone(),
        });
    }
}

/// Runs every `*.yaml` table in `dir` (or the single file `dir`).
pub fn run_path(rt: &Runtime, dir: &Path) -> Summary {
    let mut summary = Summary::default();
    let mut files: Vec<PathBuf> = if dir.is_file() {
        vec![dir.to_path_buf()]
    } else {
        match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect(),
            Err(e) => {
                summary.errors.push(format!("{}: {e}", dir.display()));
                return summary;
            }
        }
    };
    files.sort();
    if files.is_empty() {
        summary
            .errors
            .push(format!("{}: no test tables found", dir.display()));
    }
    for f in files {
        let name = f.display().to_string();
        match std::fs::read_to_string(&f) {
            Ok(text) => run_text(rt, &name, &text, &mut summary),
            Err(e) => summary.errors.push(format!("{name}: {e}")),
        }
    }
    summary
}

/// Parses and runs one table given as text.
pub fn run_text(rt: &Runtime, name: &str, text: &str, summary: &mut Summary) {
    match serde_saphyr::from_str::<Table>(text) {
        Ok(table) => run_table(rt, name, &table, summary),
        Err(e) => summary.errors.push(format!("{name}: {e}")),
    }
}

/// The text report printed by `rolegate test`.
pub fn render(summary: &Summary, verbose: bool) -> String {
    let mut out = String::new();
    for r in &summary.results {
        let status = match (&r.pending, r.pass) {
            (Some(_), _) => "PENDING",
            (None, true) => "ok",
            (None, false) => "FAIL",
        };
        if verbose || status != "ok" {
            out.push_str(&format!(
                "{status:<7} {} #{}: {}",
                r.table, r.index, r.label
            ));
            if !r.pass || r.pending.is_some() {
                out.push_str(&format!("  expected {}, got {}", r.expected, r.got));
            }
            if let Some(p) = &r.pending {
                out.push_str(&format!("  (waits for {p})"));
            }
            out.push('\n');
        }
    }
    for e in &summary.errors {
        out.push_str(&format!("error   {e}\n"));
    }
    out.push_str(&format!(
        "policy tests: {} passed, {} failed, {} pending\n",
        summary.passed, summary.failed, summary.pending
    ));
    out
}
