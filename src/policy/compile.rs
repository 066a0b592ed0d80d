//! [`Policy::compile`]: turns a [`PolicySpec`] into the immutable, shareable
//! [`Policy`] the request path reads, and lints the catalog
//! ([`PolicyIssue`]) and each route ([`Policy::check_route`]).
//!
//! Everything that can be computed without a request is computed here, once:
//! name → index maps, resolved `includes`/`requires` edges, the transitive
//! closure of held roles per role, and per-role own and transitive grant
//! sets, with the lower levels each grant implies (`capability_levels`,
//! see `levels.rs`) already added. Broken parts of the catalog never abort compilation: every problem
//! is collected (the config layer refuses to start on any `Error`), and the
//! compiled policy drops the broken part so that it fails closed (unknown
//! includes are skipped, a role whose `requires` can never be met grants
//! nothing, invalid grants grant nothing).
//!
//! This file must not look at requests or principals beyond
//! [`Policy::idle_timeout`], and must not panic on any spec.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use crate::hashing::AdminKeyed;

use super::levels::Levels;
use super::model::{
    PolicySpec, Principal, ProfileDef, RoleDef, is_valid_capability, is_valid_grant, is_valid_name,
    is_valid_scope_kind, parse_binding,
};
use super::requirement::{
    MAX_DEPTH, Operand, Requirement, RoutePolicy, is_valid_claim_path, is_valid_param_name,
    is_valid_relation_name,
};

/// What a [`PolicyIssue`] is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IssueSubject {
    Role(String),
    Profile(String),
    Route(String),
    /// A `capability_levels` ladder, by prefix.
    Levels(String),
}

/// `Error` issues must stop the config from loading; `Warning`s are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One lint finding about the catalog or a route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{severity}: {subject}: {message}")]
pub struct PolicyIssue {
    pub subject: IssueSubject,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for IssueSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IssueSubject::Role(n) => write!(f, "role `{n}`"),
            IssueSubject::Profile(n) => write!(f, "profile `{n}`"),
            IssueSubject::Route(n) => write!(f, "route `{n}`"),
            IssueSubject::Levels(n) => write!(f, "capability_levels `{n}`"),
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// A set of valid grants with O(depth) coverage checks: exact names in one
/// hash map, `prefix.*` grants stored as `prefix` in a set, so covering
/// `a.b.c` is three lookups (`a.b.c` exact, `a` and `a.b` below). The lower
/// levels a grant implies (`capability_levels`) are exact entries too, added
/// at compile time, so they cost nothing more per request.
#[derive(Debug, Default, Clone)]
pub(crate) struct GrantSet {
    /// Concrete capabilities covered: `true` = granted as written, `false`
    /// = only implied by a higher level of its ladder.
    exact: HashMap<String, bool, foldhash::fast::RandomState>,
    below: HashSet<String, foldhash::fast::RandomState>,
    /// Grants as written, in declaration order, deduplicated: for traces
    /// only (implied levels are not listed; see [`Levels::implied`]).
    pub(crate) list: Vec<String>,
}

impl GrantSet {
    /// Caller guarantees `g` is a valid grant.
    fn insert(&mut self, g: &str, levels: &Levels) {
        self.add(g);
        for lower in levels.implied(g) {
            self.exact.entry(lower).or_insert(false);
        }
    }

    /// Adds a grant as written (without its implied levels).
    fn add(&mut self, g: &str) {
        let fresh = match g.strip_suffix(".*") {
            Some(prefix) => self.below.insert(prefix.to_string()),
            None => !self.exact.insert(g.to_string(), true).unwrap_or(false),
        };
        if fresh {
            self.list.push(g.to_string());
        }
    }

    fn extend(&mut self, other: &GrantSet) {
        for g in &other.list {
            self.add(g);
        }
        for (cap, written) in &other.exact {
            if !written {
                self.exact.entry(cap.clone()).or_insert(false);
            }
        }
    }

    /// Caller guarantees `cap` is a valid capability: an unvalidated `a.*`
    /// would otherwise be "covered" by the grant `a.*`.
    pub(crate) fn covers(&self, cap: &str) -> bool {
        if self.exact.contains_key(cap) {
            return true;
        }
        if self.below.is_empty() {
            return false;
        }
        cap.match_indices('.')
            .any(|(i, _)| self.below.contains(&cap[..i]))
    }
}

/// A role after resolution. Indices point into `Policy::roles`.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRole {
    /// Resolved `includes`, minus unknown names and scope-violating edges.
    pub(crate) includes: Vec<usize>,
    /// Resolved `requires` (unknown names make `never` true instead).
    pub(crate) requires: Vec<usize>,
    /// Some requirement can never be met: the role never grants anything.
    pub(crate) never: bool,
    /// Roles held by holding this one: itself plus everything reachable
    /// through `includes`. Sorted, for binary search on the hot path.
    pub(crate) closure: Vec<usize>,
    pub(crate) own: GrantSet,
    /// Union of `own` over `closure`; only valid when `!gated`.
    pub(crate) transitive: GrantSet,
    /// Some role in the closure has `requires`: grants depend on the request
    /// context and must be computed per request.
    pub(crate) gated: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledProfile {
    pub(crate) def: ProfileDef,
    /// Known *global* roles; scoped ones can't be bound by a profile.
    pub(crate) roles: Vec<usize>,
    pub(crate) grants: GrantSet,
}

/// The compiled, immutable policy. Cheap to share (`Send + Sync`); build a
/// new one on reload rather than mutating.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) roles: Vec<RoleDef>,
    pub(crate) compiled: Vec<CompiledRole>,
    /// (Looked up for each of a principal's roles on every request; keyed
    /// by configuration only.)
    role_index: HashMap<String, usize, AdminKeyed>,
    pub(crate) profiles: Vec<CompiledProfile>,
    profile_index: HashMap<String, usize, AdminKeyed>,
    /// Every valid grant of every role and profile, for `grants_cover`.
    all_grants: GrantSet,
    /// `capability_levels`: which grants imply which lower levels.
    pub(crate) levels: Levels,
}

pub(super) fn issue(subject: IssueSubject, severity: Severity, message: String) -> PolicyIssue {
    PolicyIssue {
        subject,
        severity,
        message,
    }
}

fn scope_name(s: &Option<String>) -> String {
    match s {
        None => "global".to_string(),
        Some(k) => format!("scoped to `{k}`"),
    }
}

/// Can a role of scope `inner` be held in the context of a role of scope `outer`?
/// Global roles can be held anywhere; a scoped role only under its own kind.
fn scope_compatible(outer: &Option<String>, inner: &Option<String>) -> bool {
    inner.is_none() || inner == outer
}

fn check_grants(
    subject: &IssueSubject,
    grants: &[String],
    levels: &Levels,
    out: &mut Vec<PolicyIssue>,
) -> GrantSet {
    let mut set = GrantSet::default();
    for g in grants {
        if is_valid_grant(g) {
            if let Some(msg) = levels.check(g) {
                // Still granted as written: it just implies nothing.
                out.push(issue(subject.clone(), Severity::Error, msg));
            }
            set.insert(g, levels);
        } else if g == "*" {
            out.push(issue(
                subject.clone(),
                Severity::Error,
                "bare `*` is not a valid grant: grant a named subtree such as `bot.*`".to_string(),
            ));
        } else {
            out.push(issue(
                subject.clone(),
                Severity::Error,
                format!("invalid capability `{g}` (expected [a-z0-9_-] segments separated by dots, optionally ending in `.*`)"),
            ));
        }
    }
    set
}

/// Breadth-first reachability from the successors of `start` (so `start`
/// is in the result only if it lies on a cycle). Iterative: no recursion
/// depth to exhaust on a long chain.
fn reach_strict(edges: &[Vec<usize>], start: usize) -> Vec<bool> {
    let mut seen = vec![false; edges.len()];
    let mut queue: VecDeque<usize> = edges.get(start).into_iter().flatten().copied().collect();
    while let Some(x) = queue.pop_front() {
        if let Some(slot) = seen.get_mut(x)
            && !*slot
        {
            *slot = true;
            queue.extend(edges.get(x).into_iter().flatten().copied());
        }
    }
    seen
}

/// Shortest cycle through `start`, as a list of nodes starting and ending at `start`.
fn shortest_cycle(edges: &[Vec<usize>], start: usize) -> Option<Vec<usize>> {
    let mut parent: Vec<Option<usize>> = vec![None; edges.len()];
    let mut queue = VecDeque::new();
    for &s in edges.get(start)? {
        if s == start {
            return Some(vec![start, start]);
        }
        if parent.get(s)?.is_none() {
            parent[s] = Some(start);
            queue.push_back(s);
        }
    }
    while let Some(x) = queue.pop_front() {
        for &y in edges.get(x)? {
            if y == start {
                let mut path = vec![start, x];
                let mut cur = x;
                while let Some(p) = parent.get(cur).copied().flatten() {
                    path.push(p);
                    if p == start {
                        break;
                    }
                    cur = p;
                }
                path.reverse();
                return Some(path);
            }
            if parent.get(y)?.is_none() {
                parent[y] = Some(x);
                queue.push_back(y);
            }
        }
    }
    None
}

impl Policy {
    /// Compiles the catalog. Always returns a usable policy (broken parts
    /// are dropped, failing closed) plus ALL issues found.
    pub fn compile(spec: PolicySpec) -> (Policy, Vec<PolicyIssue>) {
        let mut issues = Vec::new();

        // Ladders first: every grant set below adds the levels they imply.
        let levels = Levels::compile(&spec.levels, &mut issues);

        // Names first: everything else resolves through these maps. The
        // first definition of a duplicated name wins; later ones are dropped
        // so a role can't be silently redefined further down a file.
        let mut roles: Vec<RoleDef> = Vec::with_capacity(spec.roles.len());
        let mut role_index = HashMap::default();
        for r in spec.roles {
            let subject = IssueSubject::Role(r.name.clone());
            if !is_valid_name(&r.name) {
                issues.push(issue(
                    subject.clone(),
                    Severity::Error,
                    "invalid role name (must be non-empty, without `@` or whitespace)".to_string(),
                ));
            }
            if role_index.contains_key(&r.name) {
                issues.push(issue(
                    subject,
                    Severity::Error,
                    "duplicate role definition; this one is ignored".to_string(),
                ));
                continue;
            }
            role_index.insert(r.name.clone(), roles.len());
            roles.push(r);
        }

        let n = roles.len();
        let mut compiled: Vec<CompiledRole> = Vec::with_capacity(n);
        // All resolved include edges, scope-violating ones too: cycles are
        // reported on what the author wrote.
        let mut written_edges: Vec<Vec<usize>> = Vec::with_capacity(n);
        for r in &roles {
            let subject = IssueSubject::Role(r.name.clone());
            if let Some(k) = &r.scope
                && !is_valid_scope_kind(k)
            {
                issues.push(issue(
                    subject.clone(),
                    Severity::Error,
                    format!("invalid scope kind `{k}` (expected [a-z0-9_-]+)"),
                ));
            }
            let own = check_grants(&subject, &r.grants, &levels, &mut issues);

            let mut includes = Vec::new();
            let mut written = Vec::new();
            for inc in &r.includes {
                match role_index.get(inc) {
                    None => issues.push(issue(
                        subject.clone(),
                        Severity::Error,
                        format!("includes unknown role `{inc}`"),
                    )),
                    Some(&j) => {
                        written.push(j);
                        let inner = &roles[j].scope;
                        if scope_compatible(&r.scope, inner) {
                            includes.push(j);
                        } else {
                            issues.push(issue(
                                subject.clone(),
                                Severity::Error,
                                format!(
                                    "includes `{inc}`, which is {}, but this role is {}: a scoped role can only be included by a role of the same scope (the include is ignored)",
                                    scope_name(inner),
                                    scope_name(&r.scope)
                                ),
                            ));
                        }
                    }
                }
            }

            let mut requires = Vec::new();
            let mut never = false;
            for req in &r.requires {
                match role_index.get(req) {
                    None => {
                        never = true;
                        issues.push(issue(
                            subject.clone(),
                            Severity::Error,
                            format!(
                                "requires unknown role `{req}`: this role can never grant anything"
                            ),
                        ));
                    }
                    Some(&j) if roles[j].name == r.name => {
                        never = true;
                        issues.push(issue(
                            subject.clone(),
                            Severity::Warning,
                            "requires itself: this role can never grant anything".to_string(),
                        ));
                    }
                    Some(&j) => {
                        let inner = &roles[j].scope;
                        if !scope_compatible(&r.scope, inner) {
                            never = true;
                            issues.push(issue(
                                subject.clone(),
                                Severity::Warning,
                                format!(
                                    "requires `{req}`, which is {}, but this role is {}: it can never be held in the same context, so this role never grants anything",
                                    scope_name(inner),
                                    scope_name(&r.scope)
                                ),
                            ));
                        }
                        requires.push(j);
                    }
                }
            }

            if r.grants.is_empty() && r.includes.is_empty() && r.idle_timeout.is_none() {
                issues.push(issue(
                    subject,
                    Severity::Warning,
                    "grants nothing, includes nothing and sets no idle timeout: it has no effect"
                        .to_string(),
                ));
            }

            written_edges.push(written);
            compiled.push(CompiledRole {
                includes,
                requires,
                never,
                closure: Vec::new(),
                own,
                transitive: GrantSet::default(),
                gated: false,
            });
        }

        // Cycles: report each strongly connected component once, from its
        // first-declared member, naming one concrete cycle.
        let reach: Vec<Vec<bool>> = (0..n).map(|i| reach_strict(&written_edges, i)).collect();
        for v in 0..n {
            if !reach[v][v] {
                continue;
            }
            let first_in_scc = (0..v).all(|u| !(reach[v][u] && reach[u][v]));
            if !first_in_scc {
                continue;
            }
            if let Some(cycle) = shortest_cycle(&written_edges, v) {
                let names: Vec<&str> = cycle.iter().map(|&i| roles[i].name.as_str()).collect();
                issues.push(issue(
                    IssueSubject::Role(roles[v].name.clone()),
                    Severity::Error,
                    format!("cycle in includes: {}", names.join(" -> ")),
                ));
            }
        }

        // Closures over the edges that survived. Cycles are harmless here:
        // reachability just makes every member hold every other member.
        let kept_edges: Vec<Vec<usize>> = compiled.iter().map(|c| c.includes.clone()).collect();
        for (i, c) in compiled.iter_mut().enumerate() {
            let strict = reach_strict(&kept_edges, i);
            c.closure = (0..n).filter(|&j| j == i || strict[j]).collect();
        }
        let derived: Vec<(bool, GrantSet)> = compiled
            .iter()
            .map(|c| {
                let gated = c
                    .closure
                    .iter()
                    .any(|&j| compiled[j].never || !compiled[j].requires.is_empty());
                let mut transitive = GrantSet::default();
                // A gated role's grants depend on the request; leave its
                // transitive set empty so nothing can use it by mistake.
                if !gated {
                    for &j in &c.closure {
                        transitive.extend(&compiled[j].own);
                    }
                }
                (gated, transitive)
            })
            .collect();
        for (c, (gated, transitive)) in compiled.iter_mut().zip(derived) {
            c.gated = gated;
            c.transitive = transitive;
        }

        // `requires` is checked on every role separately, so an including role
        // does not inherit it; authors often expect the opposite.
        for (j, r) in roles.iter().enumerate() {
            if r.requires.is_empty() {
                continue;
            }
            let includers: Vec<&str> = (0..n)
                .filter(|&i| i != j && compiled[i].includes.contains(&j))
                .map(|i| roles[i].name.as_str())
                .collect();
            if !includers.is_empty() {
                issues.push(issue(
                    IssueSubject::Role(r.name.clone()),
                    Severity::Warning,
                    format!(
                        "has `requires` [{}] and is included by [{}]: includes don't carry requires — holding [{}] does not itself require [{}], \
                         but this role's grants reach their holders only when [{}] is also held in the same context",
                        r.requires.join(", "),
                        includers.join(", "),
                        includers.join(", "),
                        r.requires.join(", "),
                        r.requires.join(", "),
                    ),
                ));
            }
        }

        let mut profiles = Vec::with_capacity(spec.profiles.len());
        let mut profile_index = HashMap::default();
        for p in spec.profiles {
            let subject = IssueSubject::Profile(p.name.clone());
            if !is_valid_name(&p.name) {
                issues.push(issue(
                    subject.clone(),
                    Severity::Error,
                    "invalid profile name (must be non-empty, without `@` or whitespace)"
                        .to_string(),
                ));
            }
            if profile_index.contains_key(&p.name) {
                issues.push(issue(
                    subject,
                    Severity::Error,
                    "duplicate profile definition; this one is ignored".to_string(),
                ));
                continue;
            }
            let mut prof_roles = Vec::new();
            for rn in &p.roles {
                match role_index.get(rn) {
                    None => issues.push(issue(subject.clone(), Severity::Error, format!("unknown role `{rn}`"))),
                    Some(&j) => match &roles[j].scope {
                        None => prof_roles.push(j),
                        Some(k) => issues.push(issue(
                            subject.clone(),
                            Severity::Warning,
                            format!(
                                "role `{rn}` is scoped to `{k}`; a profile binds roles globally, so it is never effective here (bind it as `{rn}@{k}:<id>`)"
                            ),
                        )),
                    },
                }
            }
            let grants = check_grants(&subject, &p.grants, &levels, &mut issues);
            if p.roles.is_empty() && p.grants.is_empty() {
                issues.push(issue(
                    subject,
                    Severity::Warning,
                    "has no roles and no grants: it has no effect".to_string(),
                ));
            }
            profile_index.insert(p.name.clone(), profiles.len());
            profiles.push(CompiledProfile {
                def: p,
                roles: prof_roles,
                grants,
            });
        }

        let mut all_grants = GrantSet::default();
        for c in &compiled {
            all_grants.extend(&c.own);
        }
        for p in &profiles {
            all_grants.extend(&p.grants);
        }

        (
            Policy {
                roles,
                compiled,
                role_index,
                profiles,
                profile_index,
                all_grants,
                levels,
            },
            issues,
        )
    }

    pub(crate) fn role_idx(&self, name: &str) -> Option<usize> {
        self.role_index.get(name).copied()
    }

    pub(crate) fn profile_idx(&self, name: &str) -> Option<usize> {
        self.profile_index.get(name).copied()
    }

    /// The definition of a role, by exact name.
    pub fn role(&self, name: &str) -> Option<&RoleDef> {
        self.role_idx(name).and_then(|i| self.roles.get(i))
    }

    /// The definition of a profile, by exact name.
    pub fn profile(&self, name: &str) -> Option<&ProfileDef> {
        self.profile_idx(name)
            .and_then(|i| self.profiles.get(i))
            .map(|p| &p.def)
    }

    /// All roles, in declaration order (duplicates dropped).
    pub fn roles(&self) -> impl Iterator<Item = &RoleDef> {
        self.roles.iter()
    }

    /// All profiles, in declaration order (duplicates dropped).
    pub fn profiles(&self) -> impl Iterator<Item = &ProfileDef> {
        self.profiles.iter().map(|p| &p.def)
    }

    /// Does some role or profile grant `cap` (exactly or through a `.*`
    /// grant)? A route requiring a capability nobody can be granted is
    /// almost certainly a typo. Per-user `principal.grants` are not known
    /// here and don't count.
    pub fn grants_cover(&self, cap: &str) -> bool {
        is_valid_capability(cap) && self.all_grants.covers(cap)
    }

    /// Does `grant` (as written in a role, profile or token) cover the
    /// capability `cap`: equal, a `prefix.*` strictly above it, or `cap` at
    /// a higher level of its `capability_levels` ladder? Invalid names
    /// cover nothing.
    pub fn grant_covers(&self, grant: &str, cap: &str) -> bool {
        is_valid_grant(grant) && is_valid_capability(cap) && self.levels.covers(grant, cap)
    }

    /// The `capability_levels` lint for a concrete capability written in
    /// the config: under a ladder it must end in one of the ladder's levels.
    /// `Some(message)` when it does not.
    pub fn check_capability(&self, cap: &str) -> Option<String> {
        self.levels.check(cap)
    }

    /// The shortest `idle_timeout` over every role the principal holds: each
    /// well-formed binding of a known role, global or scoped (`role@bot:1`
    /// counts whatever the route: a session is one per login, not per
    /// resource), the roles of its profiles, and everything those include.
    /// Whether the binding would be effective on some route (scope matches,
    /// `requires` met) is ignored on purpose: a timeout only restricts, so
    /// applying it whenever the role is named errs on the safe side.
    pub fn idle_timeout(&self, p: &Principal) -> Option<Duration> {
        let mut best: Option<Duration> = None;
        let mut consider = |role: usize| {
            for &j in self
                .compiled
                .get(role)
                .map(|c| c.closure.as_slice())
                .unwrap_or(&[])
            {
                if let Some(t) = self.roles.get(j).and_then(|r| r.idle_timeout) {
                    best = Some(best.map_or(t, |b| b.min(t)));
                }
            }
        };
        for raw in &p.roles {
            let Some(b) = parse_binding(raw) else {
                continue;
            };
            if let Some(i) = self.role_idx(b.name) {
                consider(i);
            }
        }
        for name in &p.profiles {
            if let Some(pi) = self.profile_idx(name) {
                for &i in &self.profiles[pi].roles {
                    consider(i);
                }
            }
        }
        best
    }

    /// Lints one route against this policy. `path_params` are the parameter
    /// names of the route's path template.
    pub fn check_route(&self, route: &RoutePolicy, path_params: &[String]) -> Vec<PolicyIssue> {
        let subject = IssueSubject::Route(route.name.clone());
        let mut out = Vec::new();
        let mut push = |sev: Severity, msg: String| out.push(issue(subject.clone(), sev, msg));

        match (&route.require, route.public) {
            (None, false) => push(
                Severity::Error,
                "neither public nor has a requirement: every request would be denied".to_string(),
            ),
            (Some(_), true) => push(
                Severity::Warning,
                "is public, so its requirement is never evaluated".to_string(),
            ),
            _ => {}
        }

        if let Some((kind, param)) = &route.scope {
            if !is_valid_scope_kind(kind) {
                push(
                    Severity::Error,
                    format!("invalid scope kind `{kind}` (expected [a-z0-9_-]+)"),
                );
            }
            if !is_valid_param_name(param) {
                push(
                    Severity::Error,
                    format!("invalid scope parameter name `{param}`"),
                );
            } else if !path_params.iter().any(|p| p == param) {
                push(
                    Severity::Error,
                    format!(
                        "scope parameter `{{{param}}}` is not a parameter of the route path (every request would be denied)"
                    ),
                );
            }
        }

        if let Some(req) = &route.require {
            let check_operand = |push: &mut dyn FnMut(Severity, String), op: &Operand| match op {
                Operand::Param(p) => {
                    if !path_params.iter().any(|x| x == p) {
                        push(
                            Severity::Error,
                            format!(
                                "requirement refers to `{{{p}}}`, which is not a parameter of the route path"
                            ),
                        );
                    }
                }
                Operand::Claim(c) => {
                    if !is_valid_claim_path(c) {
                        push(
                            Severity::Error,
                            format!(
                                "requirement refers to unknown principal field `principal.{c}`"
                            ),
                        );
                    }
                }
                Operand::Literal(l) => {
                    if l.is_empty() {
                        push(
                            Severity::Warning,
                            "empty literal never matches anything".to_string(),
                        );
                    }
                }
            };
            req.walk(&mut |node, depth| {
                if depth > MAX_DEPTH {
                    push(
                        Severity::Error,
                        format!("requirement nested deeper than {MAX_DEPTH} levels (evaluates to false)"),
                    );
                    return;
                }
                match node {
                    Requirement::Capability(c) => {
                        if !is_valid_capability(c) {
                            push(
                                Severity::Error,
                                format!("invalid required capability `{c}` (one concrete name, no wildcard)"),
                            );
                        } else if let Some(msg) = self.levels.check(c) {
                            push(Severity::Error, msg);
                        } else if !self.grants_cover(c) {
                            push(
                                Severity::Warning,
                                format!("requires `{c}`, which no role or profile grants (only per-user grants could satisfy it)"),
                            );
                        }
                    }
                    // Errors, as the mapping forms `{ any: [] }` and
                    // `{ all: [] }` are: an empty all() would let anyone
                    // authenticated in.
                    Requirement::Any(v) if v.is_empty() => {
                        push(Severity::Error, "empty any() is always false".to_string())
                    }
                    Requirement::All(v) if v.is_empty() => {
                        push(Severity::Error, "empty all() is always true".to_string())
                    }
                    Requirement::In(a, b) | Requirement::Eq(a, b) => {
                        check_operand(&mut push, a);
                        check_operand(&mut push, b);
                    }
                    Requirement::Relation { name, args } => {
                        if !is_valid_relation_name(name) {
                            push(Severity::Error, format!("invalid relation name `{name}`"));
                        }
                        for a in args {
                            check_operand(&mut push, a);
                        }
                    }
                    _ => {}
                }
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{catalog, role};
    use super::*;

    fn has(issues: &[PolicyIssue], sev: Severity, subject: &IssueSubject, needle: &str) -> bool {
        issues
            .iter()
            .any(|i| i.severity == sev && &i.subject == subject && i.message.contains(needle))
    }

    fn r(name: &str) -> IssueSubject {
        IssueSubject::Role(name.into())
    }

    #[test]
    fn policy_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Policy>();
    }

    #[test]
    fn fixture_catalog_has_only_expected_warnings() {
        let (_, issues) = Policy::compile(catalog());
        let errors: Vec<_> = issues
            .iter()
            .filter(|i| i.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
        // release-manager includes approver, which has requires.
        assert!(
            has(
                &issues,
                Severity::Warning,
                &r("approver"),
                "includes don't carry requires"
            ),
            "{issues:#?}"
        );
    }

    #[test]
    fn catalog_lints() {
        struct Case {
            name: &'static str,
            roles: Vec<RoleDef>,
            profiles: Vec<ProfileDef>,
            expect: Vec<(Severity, IssueSubject, &'static str)>,
        }
        let prof = |name: &str, roles: &[&str], grants: &[&str]| ProfileDef {
            name: name.into(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            grants: grants.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let cases = vec![
            Case {
                name: "two-role cycle is named",
                roles: vec![
                    role("a", None, &["x"], &["b"], &[]),
                    role("b", None, &["y"], &["a"], &[]),
                ],
                profiles: vec![],
                expect: vec![(Severity::Error, r("a"), "cycle in includes: a -> b -> a")],
            },
            Case {
                name: "self include is a cycle",
                roles: vec![role("a", None, &["x"], &["a"], &[])],
                profiles: vec![],
                expect: vec![(Severity::Error, r("a"), "cycle in includes: a -> a")],
            },
            Case {
                name: "longer cycle reported once from its first member",
                roles: vec![
                    role("z", None, &["x"], &["a"], &[]),
                    role("a", None, &["x"], &["b"], &[]),
                    role("b", None, &["x"], &["c"], &[]),
                    role("c", None, &["x"], &["a"], &[]),
                ],
                profiles: vec![],
                expect: vec![(
                    Severity::Error,
                    r("a"),
                    "cycle in includes: a -> b -> c -> a",
                )],
            },
            Case {
                name: "unknown include",
                roles: vec![role("a", None, &["x"], &["nope"], &[])],
                profiles: vec![],
                expect: vec![(Severity::Error, r("a"), "includes unknown role `nope`")],
            },
            Case {
                name: "unknown requires",
                roles: vec![role("a", None, &["x"], &[], &["nope"])],
                profiles: vec![],
                expect: vec![(Severity::Error, r("a"), "requires unknown role `nope`")],
            },
            Case {
                name: "unknown profile role",
                roles: vec![role("a", None, &["x"], &[], &[])],
                profiles: vec![prof("p", &["nope"], &[])],
                expect: vec![(
                    Severity::Error,
                    IssueSubject::Profile("p".into()),
                    "unknown role `nope`",
                )],
            },
            Case {
                name: "invalid grant names",
                roles: vec![role("a", None, &["A.B", "*", "a..b", "ok.*"], &[], &[])],
                profiles: vec![prof("p", &[], &["bad cap"])],
                expect: vec![
                    (Severity::Error, r("a"), "invalid capability `A.B`"),
                    (Severity::Error, r("a"), "bare `*`"),
                    (Severity::Error, r("a"), "invalid capability `a..b`"),
                    (
                        Severity::Error,
                        IssueSubject::Profile("p".into()),
                        "invalid capability `bad cap`",
                    ),
                ],
            },
            Case {
                name: "scoped role included by a global role",
                roles: vec![
                    role("dev", Some("bot"), &["x"], &[], &[]),
                    role("g", None, &["y"], &["dev"], &[]),
                ],
                profiles: vec![],
                expect: vec![(
                    Severity::Error,
                    r("g"),
                    "includes `dev`, which is scoped to `bot`, but this role is global",
                )],
            },
            Case {
                name: "scoped role included by a role of another scope",
                roles: vec![
                    role("dev", Some("bot"), &["x"], &[], &[]),
                    role("t", Some("team"), &["y"], &["dev"], &[]),
                ],
                profiles: vec![],
                expect: vec![(Severity::Error, r("t"), "scoped to `team`")],
            },
            Case {
                name: "invalid scope kind",
                roles: vec![role("a", Some("Bot"), &["x"], &[], &[])],
                profiles: vec![],
                expect: vec![(Severity::Error, r("a"), "invalid scope kind `Bot`")],
            },
            Case {
                name: "requires itself",
                roles: vec![role("a", None, &["x"], &[], &["a"])],
                profiles: vec![],
                expect: vec![(Severity::Warning, r("a"), "requires itself")],
            },
            Case {
                name: "global role requiring a scoped role",
                roles: vec![
                    role("dev", Some("bot"), &["x"], &[], &[]),
                    role("g", None, &["y"], &[], &["dev"]),
                ],
                profiles: vec![],
                expect: vec![(
                    Severity::Warning,
                    r("g"),
                    "can never be held in the same context",
                )],
            },
            Case {
                name: "role that does nothing",
                roles: vec![role("empty", None, &[], &[], &[])],
                profiles: vec![],
                expect: vec![(Severity::Warning, r("empty"), "has no effect")],
            },
            Case {
                name: "requires on an included role",
                roles: vec![
                    role("dev", Some("bot"), &["x"], &[], &[]),
                    role("appr", Some("bot"), &["p"], &[], &["dev"]),
                    role("rm", Some("bot"), &["r"], &["appr"], &[]),
                ],
                profiles: vec![],
                expect: vec![(
                    Severity::Warning,
                    r("appr"),
                    "included by [rm]: includes don't carry requires",
                )],
            },
            Case {
                name: "duplicate role",
                roles: vec![
                    role("a", None, &["x"], &[], &[]),
                    role("a", None, &["y"], &[], &[]),
                ],
                profiles: vec![],
                expect: vec![(Severity::Error, r("a"), "duplicate role")],
            },
            Case {
                name: "invalid role name",
                roles: vec![role("a@b", None, &["x"], &[], &[])],
                profiles: vec![],
                expect: vec![(Severity::Error, r("a@b"), "invalid role name")],
            },
            Case {
                name: "scoped role in a profile",
                roles: vec![role("dev", Some("bot"), &["x"], &[], &[])],
                profiles: vec![prof("p", &["dev"], &[])],
                expect: vec![(
                    Severity::Warning,
                    IssueSubject::Profile("p".into()),
                    "never effective",
                )],
            },
            Case {
                name: "empty profile",
                roles: vec![],
                profiles: vec![prof("p", &[], &[])],
                expect: vec![(
                    Severity::Warning,
                    IssueSubject::Profile("p".into()),
                    "has no effect",
                )],
            },
        ];
        for c in cases {
            let (_, issues) = Policy::compile(PolicySpec {
                roles: c.roles,
                profiles: c.profiles,
                levels: vec![],
            });
            for (sev, subject, needle) in &c.expect {
                assert!(
                    has(&issues, *sev, subject, needle),
                    "{}: expected {sev:?} {subject:?} {needle:?} in {issues:#?}",
                    c.name
                );
            }
        }
    }

    #[test]
    fn clean_roles_raise_no_issue() {
        // The negative side of the lints above: none of them fires on a sane catalog.
        let (_, issues) = Policy::compile(PolicySpec {
            roles: vec![
                role("view", Some("bot"), &["bot.view"], &[], &[]),
                role("edit", Some("bot"), &["bot.edit"], &["view", "g"], &[]),
                role("g", None, &["g.x.*"], &[], &[]),
                role("needs-g", Some("bot"), &["bot.y"], &[], &["g"]),
                RoleDef {
                    name: "timeout-only".into(),
                    idle_timeout: Some(Duration::from_secs(60)),
                    ..Default::default()
                },
            ],
            profiles: vec![ProfileDef {
                name: "p".into(),
                roles: vec!["g".into()],
                ..Default::default()
            }],
            levels: vec![],
        });
        assert!(issues.is_empty(), "{issues:#?}");
    }

    #[test]
    fn cycles_compile_to_finite_closures() {
        let (policy, _) = Policy::compile(PolicySpec {
            roles: vec![
                role("a", None, &["a.x"], &["b"], &[]),
                role("b", None, &["b.x"], &["a"], &[]),
            ],
            profiles: vec![],
            levels: vec![],
        });
        let a = policy.role_idx("a").unwrap();
        assert_eq!(policy.compiled[a].closure.len(), 2);
        assert!(policy.compiled[a].transitive.covers("b.x"));
    }

    #[test]
    fn scope_violating_include_is_dropped() {
        let (policy, _) = Policy::compile(PolicySpec {
            roles: vec![
                role("dev", Some("bot"), &["bot.x"], &[], &[]),
                role("g", None, &["y"], &["dev"], &[]),
            ],
            profiles: vec![],
            levels: vec![],
        });
        let g = policy.role_idx("g").unwrap();
        assert!(!policy.compiled[g].transitive.covers("bot.x"));
    }

    #[test]
    fn route_lints() {
        let (policy, _) = Policy::compile(catalog());
        let req = |s: &str| Some(Requirement::parse(s).unwrap());
        let route =
            |public: bool, require: Option<Requirement>, scope: Option<(&str, &str)>| RoutePolicy {
                name: "r".into(),
                public,
                require,
                scope: scope.map(|(k, p)| (k.into(), p.into())),
            };
        let params: Vec<String> = vec!["bot".into(), "team".into()];
        let rt = IssueSubject::Route("r".into());
        let cases: Vec<(RoutePolicy, Option<(Severity, &str)>)> = vec![
            (
                route(false, None, None),
                Some((Severity::Error, "neither public nor has a requirement")),
            ),
            (route(true, None, None), None),
            (
                route(true, req("bot.publish"), None),
                Some((Severity::Warning, "is public")),
            ),
            (route(false, req("bot.publish"), Some(("bot", "bot"))), None),
            (
                route(false, req("bot.publish"), Some(("bot", "missing"))),
                Some((Severity::Error, "scope parameter `{missing}`")),
            ),
            (
                route(false, req("bot.publish"), Some(("Bot", "bot"))),
                Some((Severity::Error, "invalid scope kind")),
            ),
            (
                route(false, req("bot.publish"), Some(("bot", "a b"))),
                Some((Severity::Error, "invalid scope parameter")),
            ),
            (
                route(false, req("{customer} in principal.teams"), None),
                Some((Severity::Error, "`{customer}`, which is not a parameter")),
            ),
            (route(false, req("{team} in principal.teams"), None), None),
            (
                route(false, req("relation:x({nope})"), None),
                Some((Severity::Error, "`{nope}`")),
            ),
            (
                route(false, req("any()"), None),
                Some((Severity::Error, "empty any()")),
            ),
            (
                route(false, req("all()"), None),
                Some((Severity::Error, "empty all()")),
            ),
            (
                route(false, req("any(bot.publish, all())"), None),
                Some((Severity::Error, "empty all()")),
            ),
            (
                route(false, req("no.such.cap"), None),
                Some((Severity::Warning, "which no role or profile grants")),
            ),
            // Covered through a wildcard grant: no warning.
            (
                route(false, req("channel.whatsapp.support.reply"), None),
                None,
            ),
            (
                route(false, Some(Requirement::Capability("bot.*".into())), None),
                Some((Severity::Error, "invalid required capability")),
            ),
            (
                route(
                    false,
                    Some(Requirement::Eq(
                        Operand::Claim("email".into()),
                        Operand::Param("bot".into()),
                    )),
                    None,
                ),
                Some((Severity::Error, "unknown principal field")),
            ),
            (
                route(
                    false,
                    Some(Requirement::Relation {
                        name: "X".into(),
                        args: vec![],
                    }),
                    None,
                ),
                Some((Severity::Error, "invalid relation name")),
            ),
        ];
        for (rp, want) in cases {
            let issues = policy.check_route(&rp, &params);
            match want {
                None => assert!(issues.is_empty(), "{rp:?}: {issues:#?}"),
                Some((sev, needle)) => assert!(
                    has(&issues, sev, &rt, needle),
                    "{rp:?}: want {needle:?} in {issues:#?}"
                ),
            }
        }
    }

    #[test]
    fn capabilities_under_a_ladder_must_end_in_a_level() {
        use super::super::model::LevelLadder;
        let ladder = LevelLadder {
            prefix: "channel".into(),
            levels: vec!["view".into(), "reply".into(), "manage".into()],
        };
        let (policy, issues) = Policy::compile(PolicySpec {
            roles: vec![role(
                "a",
                None,
                &["channel.x.y.edit", "channel.x.y.manage", "channel.x.*"],
                &[],
                &[],
            )],
            profiles: vec![ProfileDef {
                name: "p".into(),
                grants: vec!["channel.x.y.none".into(), "channel.x".into()],
                ..Default::default()
            }],
            levels: vec![
                ladder.clone(),
                LevelLadder {
                    prefix: "bad".into(),
                    levels: vec![],
                },
            ],
        });
        let p = IssueSubject::Profile("p".into());
        for (subject, needle) in [
            (
                &r("a"),
                "`channel.x.y.edit` is under the level ladder `channel`",
            ),
            (&p, "`none` is not a level of `channel`"),
            (&p, "`channel.x` is under the level ladder `channel`"),
            (&IssueSubject::Levels("bad".into()), "empty ladder"),
        ] {
            assert!(
                has(&issues, Severity::Error, subject, needle),
                "{needle:?} in {issues:#?}"
            );
        }
        assert_eq!(issues.len(), 4, "{issues:#?}");
        // The broken grant is still granted as written; it implies nothing.
        let a = policy.role_idx("a").unwrap();
        assert!(policy.compiled[a].own.covers("channel.x.y.edit"));
        assert!(policy.compiled[a].own.covers("channel.x.y.view"));
        assert!(policy.check_capability("channel.x.y.edit").is_some());
        assert_eq!(policy.check_capability("channel.x.y.reply"), None);

        // Route requirements get the same lint.
        let (policy, _) = Policy::compile(PolicySpec {
            levels: vec![ladder],
            ..catalog()
        });
        let rp = |c: &str| RoutePolicy {
            name: "r".into(),
            public: false,
            require: Some(Requirement::parse(c).unwrap()),
            scope: None,
        };
        let issues = policy.check_route(&rp("channel.whatsapp.support.none"), &[]);
        assert!(
            has(
                &issues,
                Severity::Error,
                &IssueSubject::Route("r".into()),
                "`none` is not a level"
            ),
            "{issues:#?}"
        );
        assert!(
            policy
                .check_route(&rp("channel.whatsapp.support.manage"), &[])
                .is_empty()
        );
    }

    #[test]
    fn grant_sets_hold_the_implied_levels() {
        let (policy, _) = Policy::compile(catalog());
        let cases = [
            ("channel.facebook.messenger.manage", true), // messenger-lead
            ("channel.facebook.messenger.reply", true),  // implied
            ("channel.facebook.messenger.view", true),   // implied
            ("channel.webchat.site.reply", true),        // profile webchat
            ("channel.webchat.site.view", true),         // implied
            ("channel.webchat.site.manage", false),      // never upwards
            ("channel.facebook.page.view", false),       // never sideways
        ];
        for (cap, want) in cases {
            assert_eq!(policy.grants_cover(cap), want, "{cap}");
        }
        let lead = policy.role_idx("messenger-lead").unwrap();
        // Traces list grants as written; implied levels are derived.
        assert_eq!(
            policy.compiled[lead].own.list,
            ["channel.facebook.messenger.manage"]
        );
        assert!(policy.grant_covers("channel.a.manage", "channel.a.view"));
        assert!(!policy.grant_covers("channel.a.view", "channel.a.manage"));
        assert!(!policy.grant_covers("channel.a.*", "channel.a.*"));
        assert!(!policy.grant_covers("Channel.a.manage", "channel.a.view"));
    }

    proptest::proptest! {
        /// A compiled grant set (implied levels added once) answers like
        /// asking every grant as written, level by level.
        #[test]
        fn grant_set_equals_grant_by_grant(
            grants in proptest::collection::vec(proptest::sample::select(&[
                "channel.a.x.manage", "channel.a.x.reply", "channel.a.x.view", "channel.a.*",
                "channel.b.manage", "channel.*", "channel", "report.q.write", "report.q.read",
                "report.*", "bot.manage", "channel.a.x.edit",
            ][..]), 0..5),
            cap in proptest::sample::select(&[
                "channel.a.x.manage", "channel.a.x.reply", "channel.a.x.view", "channel.a.y.view",
                "channel.b.view", "channel.b.reply", "channel", "channel.a", "report.q.read",
                "report.q.write", "bot.view", "bot.manage", "channel.a.x.edit",
            ][..]),
        ) {
            use super::super::model::LevelLadder;
            let ladder = |p: &str, ls: &[&str]| LevelLadder {
                prefix: p.into(),
                levels: ls.iter().map(|s| s.to_string()).collect(),
            };
            let mut issues = Vec::new();
            let levels = Levels::compile(
                &[ladder("channel", &["view", "reply", "manage"]), ladder("report", &["read", "write"])],
                &mut issues,
            );
            let mut one = GrantSet::default();
            for g in &grants {
                one.insert(g, &levels);
            }
            // Built in two halves and merged, as transitive sets are.
            let (l, r) = grants.split_at(grants.len() / 2);
            let (mut left, mut right) = (GrantSet::default(), GrantSet::default());
            l.iter().for_each(|g| left.insert(g, &levels));
            r.iter().for_each(|g| right.insert(g, &levels));
            left.extend(&right);
            let want = grants.iter().any(|g| levels.covers(g, cap));
            proptest::prop_assert_eq!(one.covers(cap), want);
            proptest::prop_assert_eq!(left.covers(cap), want);
        }
    }

    #[test]
    fn grants_cover_uses_roles_profiles_and_wildcards() {
        let (policy, _) = Policy::compile(catalog());
        let cases = [
            ("bot.publish", true),                    // approver
            ("tickets.view", true),                   // profile support
            ("channel.whatsapp.support.reply", true), // agent: channel.whatsapp.support.*
            ("channel.whatsapp.support", false),      // not strictly below
            ("bot.settings.anything", true),          // bot-builder-admin: bot.settings.*
            ("nope", false),
            ("bot.settings.*", false), // not a capability
            ("", false),
        ];
        for (cap, want) in cases {
            assert_eq!(policy.grants_cover(cap), want, "{cap}");
        }
    }

    #[test]
    fn idle_timeout_is_min_over_every_role_held_scoped_or_not() {
        let (policy, _) = Policy::compile(catalog());
        let min = |m: u64| Some(Duration::from_secs(m * 60));
        let p = |roles: &[&str], profiles: &[&str]| Principal {
            roles: roles.iter().map(|s| s.to_string()).collect(),
            profiles: profiles.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let cases = [
            (p(&[], &[]), None),
            (p(&["agent"], &[]), None),
            (p(&["supervisor"], &[]), min(60)),
            // analytics-admin (30) includes analytics-edit includes analytics-view (45): min via includes.
            (p(&["analytics-admin"], &[]), min(30)),
            (p(&["analytics-edit"], &[]), min(45)),
            (p(&["supervisor", "short-session"], &[]), min(10)),
            // Profile roles count, and their includes too.
            (p(&[], &["analyst"]), min(45)),
            (p(&["supervisor"], &["analyst"]), min(45)),
            // Unknown and malformed bindings don't.
            (p(&["nope", "@x", "short-session@"], &["nope"]), None),
            // Scoped bindings do, whatever the route (and whether or not
            // the binding's scope fits the role's).
            (p(&["timed-bot@bot:1"], &[]), min(5)),
            (p(&["supervisor", "short-session@bot:1"], &[]), min(10)),
            // A role named at all counts: a timeout only restricts.
            (p(&["timed-bot"], &[]), min(5)),
        ];
        for (principal, want) in cases {
            assert_eq!(policy.idle_timeout(&principal), want, "{principal:?}");
        }
    }

    #[test]
    fn role_lookup() {
        let (policy, _) = Policy::compile(catalog());
        assert_eq!(
            policy.role("approver").map(|r| r.requires.clone()),
            Some(vec!["developer".to_string()])
        );
        assert!(policy.role("nope").is_none());
        assert!(policy.profile("support").is_some());
        assert!(policy.roles().count() > 5);
    }
}
