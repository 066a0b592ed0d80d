//! The request-time decision: [`decide`] (hot path) and [`explain`] (same
//! decision plus a human [`Trace`]), the [`Relations`] extension point, and
//! the [`Decision`]/[`Denial`] result.
//!
//! Both entry points run the SAME code: one evaluator generic over a
//! `Tracer`. `decide` instantiates it with a no-op tracer whose methods take
//! closures that are never called, so the hot path builds no trace strings;
//! `explain` instantiates it with [`Trace`]. That is how the two can never
//! disagree (and a proptest checks it anyway).
//!
//! This file must stay pure (no I/O, no clock, no globals: relations are
//! answered by the caller's [`Relations`]), must fail closed on anything
//! unexpected, and must never panic: the principal comes from a token and the
//! params from a request path, both attacker-controlled.

use std::fmt;

use smallvec::SmallVec;

use super::compile::Policy;
use super::model::{Principal, is_valid_capability, is_valid_grant, parse_binding};
use super::requirement::{LIST_CLAIMS, MAX_DEPTH, Operand, Requirement, RoutePolicy};

/// Answers external relations (`relation:name(args)`), e.g. "agent has an
/// active conversation with customer X". `None` means unknown/unavailable,
/// which denies whenever the outcome depends on it.
pub trait Relations {
    fn check(&self, name: &str, args: &[String], principal: &Principal) -> Option<bool>;
}

/// Knows no relation: every relation is unknown (fail closed).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRelations;

impl Relations for NoRelations {
    fn check(&self, _name: &str, _args: &[String], _principal: &Principal) -> Option<bool> {
        None
    }
}

/// Relations stated by hand (policy test cases, `explain --relation`):
/// `"NAME(arg, ...)"` → true/false for the principal at hand; anything
/// else is unknown.
#[derive(Debug, Clone, Default)]
pub struct Stated(Vec<(String, Vec<String>, bool)>);

impl Stated {
    /// Parses `("active_conversation(c1)", true)` pairs. Arguments are
    /// comma-separated and trimmed (no quoting: a value with a comma
    /// cannot be stated).
    pub fn parse<'a>(entries: impl IntoIterator<Item = (&'a str, bool)>) -> Result<Stated, String> {
        let mut out = Vec::new();
        for (k, v) in entries {
            let bad = || format!("relation {k:?} is not \"name(arg, ...)\"");
            let (name, rest) = k.split_once('(').ok_or_else(bad)?;
            let args = rest.trim_end().strip_suffix(')').ok_or_else(bad)?;
            let name = name.trim();
            if !super::requirement::is_valid_relation_name(name) {
                return Err(bad());
            }
            let args = if args.trim().is_empty() {
                Vec::new()
            } else {
                args.split(',').map(|a| a.trim().to_string()).collect()
            };
            out.push((name.to_string(), args, v));
        }
        Ok(Stated(out))
    }
}

impl Relations for Stated {
    fn check(&self, name: &str, args: &[String], _p: &Principal) -> Option<bool> {
        self.0
            .iter()
            .find(|(n, a, _)| n == name && a.as_slice() == args)
            .map(|(_, _, v)| *v)
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Denial),
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Why a request was denied: a stable machine `code` and a human `reason`
/// naming the first missing capability or condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: &'static str,
    pub reason: String,
}

impl Denial {
    /// A required capability (or an `any` of them) is not granted; also the
    /// default deny of a non-public route without a requirement.
    pub const MISSING_CAPABILITY: &'static str = "missing_capability";
    /// The route's partner/team is not in the principal's membership list.
    pub const NOT_MEMBER: &'static str = "not_member";
    /// A condition (`in`, `==`, a relation answering false, a missing scope
    /// parameter) is false.
    pub const CONDITION_FAILED: &'static str = "condition_failed";
    /// The outcome depends on a relation that could not be evaluated.
    pub const RELATION_UNAVAILABLE: &'static str = "relation_unavailable";
}

fn deny(code: &'static str, reason: String) -> Decision {
    Decision::Deny(Denial { code, reason })
}

/// Which principal field a [`BindingTrace`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingKind {
    /// An entry of `principal.roles`.
    Role,
    /// An entry of `principal.profiles`.
    Profile,
    /// An entry of `principal.grants`.
    Grant,
}

/// What happened to one raw role/profile/grant of the principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingTrace {
    pub kind: BindingKind,
    pub raw: String,
    /// Whether it contributes anything on this route.
    pub used: bool,
    /// Why it is used or ignored.
    pub note: String,
}

/// The explanation [`explain`] returns alongside its decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// Each raw role/profile/grant of the principal: used, or ignored and why.
    pub bindings: Vec<BindingTrace>,
    /// Effective grant → where it comes from, e.g.
    /// `("bot.flows.view", "role bot-builder-view via bot-builder-edit@bot:42")`;
    /// a lower level a grant implies (`capability_levels`) names that grant:
    /// `("channel.a.b.view", "profile p (implied by channel.a.b.manage)")`.
    pub capabilities: Vec<(String, String)>,
    /// The route's resource, e.g. `partner:acme (member)`; `None` if unscoped.
    pub scope: Option<String>,
    /// One line per evaluated requirement node, indented by depth, with its
    /// value (`true`/`false`/`unknown`).
    pub requirement: Vec<String>,
}

/// One line, e.g. `role "developer@bot:7": ignored: bound to bot:7, but this route acts on bot:42`.
impl fmt::Display for BindingTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            BindingKind::Role => "role",
            BindingKind::Profile => "profile",
            BindingKind::Grant => "grant",
        };
        let mark = if self.used { "used" } else { "ignored" };
        write!(f, "{kind} {:?}: {mark}: {}", self.raw, self.note)
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "bindings:")?;
        for b in &self.bindings {
            writeln!(f, "  {b}")?;
        }
        writeln!(f, "capabilities:")?;
        for (c, src) in &self.capabilities {
            writeln!(f, "  {c} <- {src}")?;
        }
        if let Some(s) = &self.scope {
            writeln!(f, "scope: {s}")?;
        }
        writeln!(f, "requirement:")?;
        for l in &self.requirement {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

/// Decides one request. Pure; allocates at most a few small vectors (no
/// trace). See the module overview for the semantics.
pub fn decide(
    policy: &Policy,
    p: &Principal,
    route: &RoutePolicy,
    params: &[(String, String)],
    rel: &dyn Relations,
) -> Decision {
    run(policy, p, route, params, rel, &mut NoTrace)
}

/// Same decision as [`decide`], plus a [`Trace`] of how it was reached.
pub fn explain(
    policy: &Policy,
    p: &Principal,
    route: &RoutePolicy,
    params: &[(String, String)],
    rel: &dyn Relations,
) -> (Decision, Trace) {
    let mut trace = Trace::default();
    let d = run(policy, p, route, params, rel, &mut trace);
    (d, trace)
}

// ---------------------------------------------------------------- tracing

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    True,
    False,
    Unknown,
}

impl Tri {
    fn of(b: bool) -> Tri {
        if b { Tri::True } else { Tri::False }
    }
}

/// The trace sink. Every text argument is a closure so the no-op sink
/// never formats anything.
trait Tracer {
    const ON: bool;
    fn binding(
        &mut self,
        kind: BindingKind,
        raw: &str,
        used: bool,
        note: impl FnOnce() -> String,
    ) -> usize;
    fn scope(&mut self, s: impl FnOnce() -> String);
    fn line(&mut self, s: impl FnOnce() -> String);
    fn enter(&mut self, depth: usize, node: &Requirement) -> usize;
    fn leave(&mut self, slot: usize, v: Tri);
    fn finish(&mut self, req: &Request<'_>);
}

struct NoTrace;

impl Tracer for NoTrace {
    const ON: bool = false;
    #[inline]
    fn binding(&mut self, _: BindingKind, _: &str, _: bool, _: impl FnOnce() -> String) -> usize {
        0
    }
    #[inline]
    fn scope(&mut self, _: impl FnOnce() -> String) {}
    #[inline]
    fn line(&mut self, _: impl FnOnce() -> String) {}
    #[inline]
    fn enter(&mut self, _: usize, _: &Requirement) -> usize {
        0
    }
    #[inline]
    fn leave(&mut self, _: usize, _: Tri) {}
    #[inline]
    fn finish(&mut self, _: &Request<'_>) {}
}

impl Tracer for Trace {
    const ON: bool = true;
    fn binding(
        &mut self,
        kind: BindingKind,
        raw: &str,
        used: bool,
        note: impl FnOnce() -> String,
    ) -> usize {
        self.bindings.push(BindingTrace {
            kind,
            raw: raw.to_string(),
            used,
            note: note(),
        });
        self.bindings.len() - 1
    }
    fn scope(&mut self, s: impl FnOnce() -> String) {
        self.scope = Some(s());
    }
    fn line(&mut self, s: impl FnOnce() -> String) {
        self.requirement.push(s());
    }
    fn enter(&mut self, depth: usize, node: &Requirement) -> usize {
        let label = match node {
            Requirement::Any(v) => format!("any ({} alternatives)", v.len()),
            Requirement::All(v) => format!("all ({} conditions)", v.len()),
            leaf => leaf.to_string(),
        };
        self.requirement
            .push(format!("{}{label}", "  ".repeat(depth.min(MAX_DEPTH + 1))));
        self.requirement.len() - 1
    }
    fn leave(&mut self, slot: usize, v: Tri) {
        if let Some(l) = self.requirement.get_mut(slot) {
            l.push_str(match v {
                Tri::True => " -> true",
                Tri::False => " -> false",
                Tri::Unknown => " -> unknown",
            });
        }
    }
    fn finish(&mut self, req: &Request<'_>) {
        req.trace_capabilities(self);
    }
}

// ---------------------------------------------------------------- request state

/// Where a bound role applies: everywhere, or on the route's resource only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Global,
    Resource,
}

#[derive(Debug, Clone, Copy)]
enum Via<'a> {
    Binding(&'a str),
    Profile(&'a str),
}

/// A role effectively bound for this request (its `requires` are checked
/// later, per role, in its context).
#[derive(Debug, Clone, Copy)]
struct Bound<'a> {
    role: usize,
    ctx: Ctx,
    via: Via<'a>,
    /// Index of its `Trace::bindings` entry (0 and unused without a trace).
    slot: usize,
}

/// Why a raw binding is ignored (formatted only for traces).
enum Ignored<'a> {
    Malformed,
    UnknownRole,
    GlobalRoleScoped(&'a str),
    ScopedRoleGlobal(&'a str, &'a str),
    /// (role, its kind, the binding's kind)
    KindMismatch(&'a str, &'a str, &'a str),
    /// Bound to a resource other than the route's (or the route has none).
    Elsewhere(&'a str, &'a str),
    InvalidCapability,
    UnknownProfile,
}

impl Ignored<'_> {
    fn describe(&self, scope: Option<(&str, &str)>) -> String {
        let here = match scope {
            Some((k, v)) => format!("this route acts on {k}:{v}"),
            None => "this route has no scope".to_string(),
        };
        match self {
            Ignored::Malformed => {
                "malformed binding (expected `name` or `name@kind:id`)".to_string()
            }
            Ignored::UnknownRole => "unknown role".to_string(),
            Ignored::GlobalRoleScoped(name) => {
                format!("`{name}` is a global role; it cannot be bound to one resource")
            }
            Ignored::ScopedRoleGlobal(name, kind) => {
                format!(
                    "`{name}` is scoped to `{kind}`; it only works bound as `{name}@{kind}:<id>`"
                )
            }
            Ignored::KindMismatch(name, kind, bound) => {
                format!("`{name}` is scoped to `{kind}`, but bound to a `{bound}`")
            }
            Ignored::Elsewhere(k, v) => format!("bound to {k}:{v}, but {here}"),
            Ignored::InvalidCapability => "not a valid grant".to_string(),
            Ignored::UnknownProfile => "unknown profile".to_string(),
        }
    }
}

/// A scoped binding applies only on exactly its resource.
fn on_resource<'a>(
    bound_to: (&'a str, &'a str),
    scope: Option<(&str, &str)>,
) -> Result<(), Ignored<'a>> {
    match scope {
        Some(s) if s == bound_to => Ok(()),
        _ => Err(Ignored::Elsewhere(bound_to.0, bound_to.1)),
    }
}

fn classify_role<'a>(
    policy: &'a Policy,
    raw: &'a str,
    scope: Option<(&str, &str)>,
) -> Result<(usize, Ctx), Ignored<'a>> {
    let b = parse_binding(raw).ok_or(Ignored::Malformed)?;
    let idx = policy.role_idx(b.name).ok_or(Ignored::UnknownRole)?;
    let role_scope = policy.roles.get(idx).and_then(|r| r.scope.as_deref());
    match (role_scope, b.scope) {
        (None, None) => Ok((idx, Ctx::Global)),
        (None, Some(_)) => Err(Ignored::GlobalRoleScoped(b.name)),
        (Some(k), None) => Err(Ignored::ScopedRoleGlobal(b.name, k)),
        (Some(k), Some((bk, id))) => {
            if k != bk {
                return Err(Ignored::KindMismatch(b.name, k, bk));
            }
            on_resource((bk, id), scope)?;
            Ok((idx, Ctx::Resource))
        }
    }
}

fn classify_grant<'a>(raw: &'a str, scope: Option<(&str, &str)>) -> Result<&'a str, Ignored<'a>> {
    let b = parse_binding(raw).ok_or(Ignored::Malformed)?;
    if !is_valid_grant(b.name) {
        return Err(Ignored::InvalidCapability);
    }
    if let Some(bound_to) = b.scope {
        on_resource(bound_to, scope)?;
    }
    Ok(b.name)
}

/// A path parameter's value. Missing, empty, or given twice with different
/// values → `None` (fail closed rather than guess which one the router meant).
fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut found: Option<&'a str> = None;
    for (k, v) in params {
        if k == name {
            match found {
                None => found = Some(v),
                Some(f) if f == v => {}
                Some(_) => return None,
            }
        }
    }
    found.filter(|v| !v.is_empty())
}

/// Everything known about one request once the route scope is resolved.
struct Request<'a> {
    policy: &'a Policy,
    p: &'a Principal,
    /// `(kind, value)` of the route's resource.
    scope: Option<(&'a str, &'a str)>,
    params: &'a [(String, String)],
    rel: &'a dyn Relations,
    /// (Kept inline up to a few: most principals hold one or two roles,
    /// and a decision per request should not allocate for them.)
    bound: SmallVec<[Bound<'a>; 4]>,
    /// Indices of the principal's known profiles (for their grants).
    profiles: SmallVec<[(usize, usize); 2]>,
    /// Applicable `principal.grants`: (raw, grant).
    grants: SmallVec<[(&'a str, &'a str); 2]>,
}

fn run<T: Tracer>(
    policy: &Policy,
    p: &Principal,
    route: &RoutePolicy,
    params: &[(String, String)],
    rel: &dyn Relations,
    t: &mut T,
) -> Decision {
    if route.public {
        t.line(|| "public route: allowed without looking at the principal".to_string());
        return Decision::Allow;
    }
    let scope = match resource(route, params, t) {
        Ok(scope) => scope,
        Err(d) => return d,
    };
    let req = Request::new(policy, p, scope, params, rel, t);
    let d = req.decide(route, t);
    if T::ON {
        t.finish(&req);
    }
    d
}

/// The `(kind, value)` of the route's resource, or the denial when its
/// parameter is missing or ambiguous.
fn resource<'a, T: Tracer>(
    route: &'a RoutePolicy,
    params: &'a [(String, String)],
    t: &mut T,
) -> Result<Option<(&'a str, &'a str)>, Decision> {
    match &route.scope {
        None => Ok(None),
        Some((kind, name)) => match param(params, name) {
            Some(v) => Ok(Some((kind.as_str(), v))),
            None => {
                t.scope(|| format!("{kind}:? (parameter {{{name}}} missing or ambiguous)"));
                Err(deny(
                    Denial::CONDITION_FAILED,
                    format!("scope parameter {{{name}}} is missing or ambiguous"),
                ))
            }
        },
    }
}

/// [`decide`] for two route policies of one request — a route's own and its
/// mask's `unmask_with` — resolving the principal's roles, profiles and
/// grants once when both act on the same resource. The same answers as two
/// [`decide`] calls, the second as "allowed?" only (no denial reason is
/// built: it is asked on every masked answer and only steers masking).
pub fn decide_pair(
    policy: &Policy,
    p: &Principal,
    first: &RoutePolicy,
    second: &RoutePolicy,
    params: &[(String, String)],
    rel: &dyn Relations,
) -> (Decision, bool) {
    if first.public || second.public || first.scope != second.scope {
        return (
            decide(policy, p, first, params, rel),
            decide(policy, p, second, params, rel).is_allow(),
        );
    }
    let scope = match resource(first, params, &mut NoTrace) {
        Ok(scope) => scope,
        Err(d) => return (d, false),
    };
    let req = Request::new(policy, p, scope, params, rel, &mut NoTrace);
    (req.decide(first, &mut NoTrace), req.allows(second))
}

impl<'a> Request<'a> {
    fn new<T: Tracer>(
        policy: &'a Policy,
        p: &'a Principal,
        scope: Option<(&'a str, &'a str)>,
        params: &'a [(String, String)],
        rel: &'a dyn Relations,
        t: &mut T,
    ) -> Request<'a> {
        let mut bound = SmallVec::new();
        for raw in &p.roles {
            match classify_role(policy, raw, scope) {
                Ok((role, ctx)) => {
                    let slot = t.binding(BindingKind::Role, raw, true, || match (ctx, scope) {
                        (Ctx::Resource, Some((k, v))) => format!("applies on {k}:{v}"),
                        _ => "global role: applies everywhere".to_string(),
                    });
                    bound.push(Bound {
                        role,
                        ctx,
                        via: Via::Binding(raw),
                        slot,
                    });
                }
                Err(why) => {
                    t.binding(BindingKind::Role, raw, false, || why.describe(scope));
                }
            }
        }
        let mut profiles = SmallVec::new();
        for raw in &p.profiles {
            match policy.profile_idx(raw) {
                Some(pi) => {
                    let prof = &policy.profiles[pi];
                    let slot = t.binding(BindingKind::Profile, raw, true, || {
                        let roles: Vec<&str> = prof
                            .roles
                            .iter()
                            .map(|&r| policy.roles[r].name.as_str())
                            .collect();
                        format!(
                            "roles [{}], grants [{}]",
                            roles.join(", "),
                            prof.grants.list.join(", ")
                        )
                    });
                    profiles.push((pi, slot));
                    for &role in &prof.roles {
                        bound.push(Bound {
                            role,
                            ctx: Ctx::Global,
                            via: Via::Profile(raw),
                            slot,
                        });
                    }
                }
                None => {
                    t.binding(BindingKind::Profile, raw, false, || {
                        Ignored::UnknownProfile.describe(scope)
                    });
                }
            }
        }
        let mut grants = SmallVec::new();
        for raw in &p.grants {
            match classify_grant(raw, scope) {
                Ok(g) => {
                    t.binding(BindingKind::Grant, raw, true, || {
                        match (raw.contains('@'), scope) {
                            (true, Some((k, v))) => format!("applies on {k}:{v}"),
                            _ => "applies everywhere".to_string(),
                        }
                    });
                    grants.push((raw.as_str(), g));
                }
                Err(why) => {
                    t.binding(BindingKind::Grant, raw, false, || why.describe(scope));
                }
            }
        }
        Request {
            policy,
            p,
            scope,
            params,
            rel,
            bound,
            profiles,
            grants,
        }
    }

    /// The tenant list a scope kind is checked against (`None`: a kind
    /// without membership, such as a bot).
    fn members(&self, kind: &str) -> Option<&'a [String]> {
        match kind {
            "partner" => Some(&self.p.partners),
            "team" => Some(&self.p.teams),
            _ => None,
        }
    }

    /// [`Request::decide`]'s answer as a bool, without a trace or a denial
    /// reason.
    fn allows(&self, route: &RoutePolicy) -> bool {
        if let Some((kind, v)) = self.scope
            && self
                .members(kind)
                .is_some_and(|list| !list.iter().any(|m| m == v))
        {
            return false;
        }
        route
            .require
            .as_ref()
            .is_some_and(|root| self.eval(root, 0, &mut NoTrace).tri == Tri::True)
    }

    fn decide<T: Tracer>(&self, route: &RoutePolicy, t: &mut T) -> Decision {
        // Tenant isolation comes before any capability: a partner admin of
        // acme must not reach globex's routes whatever else it holds.
        if let Some((kind, v)) = self.scope {
            match self.members(kind) {
                Some(list) => {
                    let member = list.iter().any(|m| m == v);
                    t.scope(|| {
                        format!(
                            "{kind}:{v} ({})",
                            if member { "member" } else { "not a member" }
                        )
                    });
                    if !member {
                        return deny(Denial::NOT_MEMBER, format!("not a member of {kind} {v}"));
                    }
                }
                None => t.scope(|| format!("{kind}:{v}")),
            }
        }
        let Some(root) = &route.require else {
            t.line(|| "no requirement: default deny".to_string());
            return deny(
                Denial::MISSING_CAPABILITY,
                format!("route `{}` has no requirement (default deny)", route.name),
            );
        };
        let out = self.eval(root, 0, t);
        match out.tri {
            Tri::True => Decision::Allow,
            Tri::False => deny(out.code, self.reason(out.culprit)),
            Tri::Unknown => deny(
                Denial::RELATION_UNAVAILABLE,
                format!("cannot evaluate {}: relation unavailable", out.culprit),
            ),
        }
    }

    fn reason(&self, culprit: &Requirement) -> String {
        let on = match self.scope {
            Some((k, v)) => format!(" on {k}:{v}"),
            None => String::new(),
        };
        match culprit {
            Requirement::Capability(c) => format!("requires {c}{on}"),
            Requirement::Any(v) => {
                let items: Vec<String> = v.iter().map(ToString::to_string).collect();
                format!("requires any of [{}]{on}", items.join(", "))
            }
            other => format!("requires {other}"),
        }
    }

    // ------------------------------------------------------------ roles

    /// Is role `d` held in context `ctx`? Held = bound (and not ignored) or
    /// reached through `includes` of such a binding, whatever that role's
    /// own `requires`. Global bindings count everywhere; resource bindings
    /// only in the resource context.
    fn held(&self, d: usize, ctx: Ctx) -> bool {
        self.bound.iter().any(|b| {
            (ctx == Ctx::Resource || b.ctx == Ctx::Global)
                && self
                    .policy
                    .compiled
                    .get(b.role)
                    .is_some_and(|c| c.closure.binary_search(&d).is_ok())
        })
    }

    fn requires_met(&self, x: usize, ctx: Ctx) -> bool {
        match self.policy.compiled.get(x) {
            Some(c) => !c.never && c.requires.iter().all(|&d| self.held(d, ctx)),
            None => false,
        }
    }

    /// Visits the roles whose grants count for binding `b`: depth-first
    /// through `includes`, not entering a role whose `requires` fail in
    /// `b`'s context (its grants and includes don't flow from there).
    /// `on_active` returns true to stop early; the result says whether it did.
    fn for_each_active(
        &self,
        b: &Bound<'_>,
        on_active: &mut dyn FnMut(usize) -> bool,
        on_skipped: &mut dyn FnMut(usize),
    ) -> bool {
        let n = self.policy.compiled.len();
        let mut visited = vec![false; n];
        let mut stack = vec![b.role];
        while let Some(x) = stack.pop() {
            match visited.get_mut(x) {
                Some(v) if !*v => *v = true,
                _ => continue,
            }
            // Requirement checks don't depend on the path taken, only on
            // the context, so marking a skipped role visited is exact.
            if !self.requires_met(x, b.ctx) {
                on_skipped(x);
                continue;
            }
            if on_active(x) {
                return true;
            }
            if let Some(c) = self.policy.compiled.get(x) {
                stack.extend(c.includes.iter().rev());
            }
        }
        false
    }

    fn has_capability(&self, cap: &str) -> bool {
        // Validating first matters: a "capability" like `a.*` would otherwise
        // be covered by the grant `a.*`.
        if !is_valid_capability(cap) {
            return false;
        }
        let compiled = &self.policy.compiled;
        for b in &self.bound {
            let Some(c) = compiled.get(b.role) else {
                continue;
            };
            let hit = if c.gated {
                self.for_each_active(
                    b,
                    &mut |x| compiled.get(x).is_some_and(|r| r.own.covers(cap)),
                    &mut |_| {},
                )
            } else {
                // Precomputed: no requires anywhere below, so the grants are
                // the same in every context.
                c.transitive.covers(cap)
            };
            if hit {
                return true;
            }
        }
        self.profiles.iter().any(|&(pi, _)| {
            self.policy
                .profiles
                .get(pi)
                .is_some_and(|p| p.grants.covers(cap))
        }) || self
            .grants
            .iter()
            .any(|&(_, g)| self.policy.levels.covers(g, cap))
    }

    // ------------------------------------------------------------ conditions

    fn list_claim(&self, path: &str) -> Option<&'a [String]> {
        match path {
            "partners" => Some(&self.p.partners),
            "teams" => Some(&self.p.teams),
            "roles" => Some(&self.p.roles),
            _ => match path.strip_prefix("claims.") {
                Some(name) => self.p.claims.get(name).map(Vec::as_slice),
                None => None,
            },
        }
    }

    /// One value: params, literals, `sub`, or a list claim holding exactly
    /// one element. Missing or empty → `None` (the condition is false).
    fn single<'o>(&'o self, op: &'o Operand) -> Option<&'o str> {
        let v: &str = match op {
            Operand::Param(name) => param(self.params, name)?,
            Operand::Literal(l) => l,
            Operand::Claim(path) => match self.list_claim(path) {
                Some([one]) => one,
                Some(_) => return None,
                None if path == "sub" => &self.p.subject,
                None => return None,
            },
        };
        (!v.is_empty()).then_some(v)
    }

    /// Is `x` an element of the list operand `b`? Single operands act as
    /// one-element lists.
    fn contains(&self, b: &Operand, x: &str) -> bool {
        if let Operand::Claim(path) = b
            && (LIST_CLAIMS.contains(&path.as_str()) || path.starts_with("claims."))
        {
            return self
                .list_claim(path)
                .is_some_and(|l| l.iter().any(|e| e == x));
        }
        self.single(b) == Some(x)
    }

    // ------------------------------------------------------------ evaluation

    fn eval<'r, T: Tracer>(&self, node: &'r Requirement, depth: usize, t: &mut T) -> Outcome<'r> {
        let slot = t.enter(depth, node);
        let out = self.eval_node(node, depth, t);
        t.leave(slot, out.tri);
        out
    }

    fn eval_node<'r, T: Tracer>(
        &self,
        node: &'r Requirement,
        depth: usize,
        t: &mut T,
    ) -> Outcome<'r> {
        let leaf = |tri: Tri, code: &'static str| Outcome {
            tri,
            culprit: node,
            code,
        };
        if depth > MAX_DEPTH {
            // Mirrors the parser's limit; only a hand-built tree gets here.
            return leaf(Tri::False, Denial::CONDITION_FAILED);
        }
        match node {
            Requirement::Authenticated => leaf(Tri::True, Denial::CONDITION_FAILED),
            Requirement::Capability(c) => {
                leaf(Tri::of(self.has_capability(c)), Denial::MISSING_CAPABILITY)
            }
            Requirement::In(a, b) => {
                let ok = self.single(a).is_some_and(|x| self.contains(b, x));
                leaf(Tri::of(ok), Denial::CONDITION_FAILED)
            }
            Requirement::Eq(a, b) => {
                let ok = matches!((self.single(a), self.single(b)), (Some(x), Some(y)) if x == y);
                leaf(Tri::of(ok), Denial::CONDITION_FAILED)
            }
            Requirement::Relation { name, args } => {
                let mut values = Vec::with_capacity(args.len());
                for a in args {
                    match self.single(a) {
                        Some(v) => values.push(v.to_string()),
                        // Can't even ask: the condition is false, like any
                        // condition on a missing operand.
                        None => return leaf(Tri::False, Denial::CONDITION_FAILED),
                    }
                }
                match self.rel.check(name, &values, self.p) {
                    Some(true) => leaf(Tri::True, Denial::CONDITION_FAILED),
                    Some(false) => leaf(Tri::False, Denial::CONDITION_FAILED),
                    None => leaf(Tri::Unknown, Denial::RELATION_UNAVAILABLE),
                }
            }
            Requirement::Any(children) => {
                // Kleene OR: true wins; otherwise unknown beats false.
                let mut first_false: Option<Outcome<'r>> = None;
                let mut first_unknown: Option<Outcome<'r>> = None;
                for c in children {
                    let o = self.eval(c, depth + 1, t);
                    match o.tri {
                        Tri::True => return o,
                        Tri::False => {
                            first_false.get_or_insert(o);
                        }
                        Tri::Unknown => {
                            first_unknown.get_or_insert(o);
                        }
                    }
                }
                match first_unknown {
                    Some(u) => u,
                    // The reason lists every alternative, so the culprit is the any() itself.
                    None => leaf(
                        Tri::False,
                        first_false.map_or(Denial::CONDITION_FAILED, |f| f.code),
                    ),
                }
            }
            Requirement::All(children) => {
                // Kleene AND: false wins; otherwise unknown beats true.
                let mut first_unknown: Option<Outcome<'r>> = None;
                for c in children {
                    let o = self.eval(c, depth + 1, t);
                    match o.tri {
                        Tri::False => return o,
                        Tri::Unknown => {
                            first_unknown.get_or_insert(o);
                        }
                        Tri::True => {}
                    }
                }
                first_unknown.unwrap_or_else(|| leaf(Tri::True, Denial::CONDITION_FAILED))
            }
        }
    }

    // ------------------------------------------------------------ trace only

    fn missing_requires(&self, x: usize, ctx: Ctx) -> String {
        let Some(c) = self.policy.compiled.get(x) else {
            return String::new();
        };
        if c.never {
            return "requirements that can never be met".to_string();
        }
        let missing: Vec<&str> = c
            .requires
            .iter()
            .filter(|&&d| !self.held(d, ctx))
            .filter_map(|&d| self.policy.roles.get(d).map(|r| r.name.as_str()))
            .collect();
        let place = match (ctx, self.scope) {
            (Ctx::Resource, Some((k, v))) => format!("on {k}:{v}"),
            _ => "globally".to_string(),
        };
        format!("requires [{}], not held {place}", missing.join(", "))
    }

    fn trace_capabilities(&self, trace: &mut Trace) {
        let name = |i: usize| self.policy.roles.get(i).map_or("?", |r| r.name.as_str());
        // A grant as written, then each lower level it implies
        // (`capability_levels`), naming the grant that implied it.
        let levels = &self.policy.levels;
        let push = |caps: &mut Vec<(String, String)>, g: &str, from: String| {
            caps.push((g.to_string(), from.clone()));
            for lower in levels.implied(g) {
                caps.push((lower, format!("{from} (implied by {g})")));
            }
        };
        for b in &self.bound {
            let via = match b.via {
                Via::Binding(raw) => raw.to_string(),
                Via::Profile(p) => format!("profile {p}"),
            };
            let mut skipped = Vec::new();
            self.for_each_active(
                b,
                &mut |x| {
                    if let Some(c) = self.policy.compiled.get(x) {
                        for g in &c.own.list {
                            push(
                                &mut trace.capabilities,
                                g,
                                format!("role {} via {via}", name(x)),
                            );
                        }
                    }
                    false
                },
                &mut |x| skipped.push(x),
            );
            for x in skipped {
                let why = self.missing_requires(x, b.ctx);
                if let Some(entry) = trace.bindings.get_mut(b.slot) {
                    if x == b.role && matches!(b.via, Via::Binding(_)) {
                        entry.used = false;
                        entry.note = format!("{}, but grants nothing: {why}", entry.note);
                    } else {
                        entry.note = format!("{}; role `{}` inactive: {why}", entry.note, name(x));
                    }
                }
            }
        }
        for &(pi, _) in &self.profiles {
            if let Some(p) = self.policy.profiles.get(pi) {
                for g in &p.grants.list {
                    push(
                        &mut trace.capabilities,
                        g,
                        format!("profile {}", p.def.name),
                    );
                }
            }
        }
        for &(raw, g) in &self.grants {
            push(&mut trace.capabilities, g, format!("grant {raw}"));
        }
        // The same grant through the same source twice (duplicate bindings) says nothing new.
        let mut seen = std::collections::HashSet::new();
        trace.capabilities.retain(|pair| seen.insert(pair.clone()));
    }
}

#[derive(Debug, Clone, Copy)]
struct Outcome<'r> {
    tri: Tri,
    /// The node that decided a false/unknown result (for the denial reason).
    culprit: &'r Requirement,
    code: &'static str,
}

#[cfg(test)]
mod tests {
    use super::super::compile::Policy;
    use super::super::fixtures::{catalog, principal, role};
    use super::super::model::{PolicySpec, grant_covers};
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    type Params = Vec<(String, String)>;
    /// Table cells: a list of strings, a list of (name, value) params.
    type Strs = &'static [&'static str];
    type Pairs = &'static [(&'static str, &'static str)];

    fn policy() -> Policy {
        Policy::compile(catalog()).0
    }

    fn route(require: &str, scope: Option<(&str, &str)>) -> RoutePolicy {
        RoutePolicy {
            name: "test".into(),
            public: false,
            require: Some(Requirement::parse(require).unwrap_or_else(|e| panic!("{require}: {e}"))),
            scope: scope.map(|(k, p)| (k.to_string(), p.to_string())),
        }
    }

    fn params(ps: &[(&str, &str)]) -> Params {
        ps.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn strs(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    /// Relations answered from a fixed table; anything else is unknown.
    struct Table(Vec<(&'static str, &'static str, bool)>);
    impl Relations for Table {
        fn check(&self, name: &str, args: &[String], _: &Principal) -> Option<bool> {
            let found = self
                .0
                .iter()
                .find(|(n, a, _)| *n == name && args.len() == 1 && args[0] == *a);
            found.map(|(_, _, v)| *v)
        }
    }

    /// Expected result: `Ok(())` = allow, `Err(code)` = deny with that code.
    type Want = Result<(), &'static str>;
    const ALLOW: Want = Ok(());
    const MISSING: Want = Err(Denial::MISSING_CAPABILITY);
    const NOT_MEMBER: Want = Err(Denial::NOT_MEMBER);
    const COND: Want = Err(Denial::CONDITION_FAILED);
    const UNAVAILABLE: Want = Err(Denial::RELATION_UNAVAILABLE);

    /// Decides with both entry points, checks they agree, returns the code.
    fn outcome(
        policy: &Policy,
        p: &Principal,
        r: &RoutePolicy,
        ps: &[(String, String)],
        rel: &dyn Relations,
    ) -> Want {
        let d = decide(policy, p, r, ps, rel);
        let (d2, trace) = explain(policy, p, r, ps, rel);
        assert_eq!(d, d2, "explain disagrees with decide\n{trace}");
        match d {
            Decision::Allow => Ok(()),
            Decision::Deny(den) => Err(den.code),
        }
    }

    /// Rows of (case name, principal roles, requirement, bot id of a route
    /// scoped to `{bot}` or `None` for an unscoped route, expected).
    type RoleRow = (
        &'static str,
        &'static [&'static str],
        &'static str,
        Option<&'static str>,
        Want,
    );

    fn run_role_rows(rows: &[RoleRow]) {
        let policy = policy();
        for &(name, roles, req, bot, want) in rows {
            let r = route(req, bot.map(|_| ("bot", "bot")));
            let ps = bot.map(|b| params(&[("bot", b)])).unwrap_or_default();
            assert_eq!(
                outcome(&policy, &principal(roles), &r, &ps, &NoRelations),
                want,
                "{name}"
            );
        }
    }

    #[test]
    #[rustfmt::skip]
    fn wildcard_grants() {
        let policy = policy();
        let rows: &[(Strs, &str, Want)] = &[
            (&["channel.whatsapp.*"], "channel.whatsapp.support.reply", ALLOW),
            (&["channel.whatsapp.*"], "channel.whatsapp.x", ALLOW),
            (&["channel.whatsapp.*"], "channel.whatsapp", MISSING),   // not the prefix itself
            (&["bot.flow.*"], "bot.flows.x", MISSING),                 // no partial segment
            (&["bot.flow.*"], "bot.flow.x", ALLOW),
            (&["*"], "bot.publish", MISSING),                          // bare star grants nothing
            (&["bot.publish"], "bot.publish", ALLOW),
            (&["bot.publish"], "bot.publish.x", MISSING),              // exact grant covers nothing below
        ];
        for (grants, cap, want) in rows {
            let p = Principal { grants: strs(grants), ..principal(&[]) };
            assert_eq!(outcome(&policy, &p, &route(cap, None), &[], &NoRelations), *want, "{grants:?} {cap}");
        }
        // Role grants follow the same rule (agent: channel.whatsapp.support.*).
        run_role_rows(&[
            ("role wildcard below", &["agent"], "channel.whatsapp.support.reply", None, ALLOW),
            ("role wildcard not self", &["agent"], "channel.whatsapp.support", None, MISSING),
            ("role wildcard whole segment", &["agent"], "channel.whatsapp.supports.x", None, MISSING),
        ]);
        // A wildcard is never a capability, even if a grant spells it exactly.
        for (roles, grants, cap) in [
            (&[][..], &["bot.*"][..], "bot.*"),
            (&["agent"][..], &[][..], "channel.whatsapp.support.*"),
        ] {
            let p = Principal { grants: strs(grants), ..principal(roles) };
            let r = RoutePolicy { require: Some(Requirement::Capability(cap.into())), ..route("x", None) };
            assert_eq!(outcome(&policy, &p, &r, &[], &NoRelations), MISSING, "{cap}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn capability_levels_grant_the_lower_levels_only() {
        // Fixture ladder: channel: [view, reply, manage].
        let policy = policy();
        let m = "channel.facebook.messenger";
        // (roles, profiles, token grants, requirement, bot, expected)
        type Row = (Strs, Strs, Strs, &'static str, Option<&'static str>, Want);
        let rows: &[Row] = &[
            // A role's level: itself and below, never above, never elsewhere.
            (&["messenger-lead"], &[], &[], "channel.facebook.messenger.manage", None, ALLOW),
            (&["messenger-lead"], &[], &[], "channel.facebook.messenger.reply", None, ALLOW),
            (&["messenger-lead"], &[], &[], "channel.facebook.messenger.view", None, ALLOW),
            (&["messenger-lead"], &[], &[], "channel.facebook.page.view", None, MISSING),
            (&["messenger-lead"], &[], &[], "channel.whatsapp.support.view", None, MISSING),
            // A profile's level.
            (&[], &["webchat"], &[], "channel.webchat.site.view", None, ALLOW),
            (&[], &["webchat"], &[], "channel.webchat.site.reply", None, ALLOW),
            (&[], &["webchat"], &[], "channel.webchat.site.manage", None, MISSING),
            // A token's own grant, global and scoped.
            (&[], &[], &["channel.whatsapp.sales.manage"], "channel.whatsapp.sales.view", None, ALLOW),
            (&[], &[], &["channel.whatsapp.sales.view"], "channel.whatsapp.sales.reply", None, MISSING),
            (&[], &[], &["channel.whatsapp.sales.reply@bot:1"], "channel.whatsapp.sales.view", Some("1"), ALLOW),
            (&[], &[], &["channel.whatsapp.sales.reply@bot:1"], "channel.whatsapp.sales.view", Some("2"), MISSING),
            // The main channel wildcard covers every level of every sub-channel.
            (&["agent"], &[], &[], "channel.whatsapp.support.manage", None, ALLOW),
            (&["agent"], &[], &[], "channel.whatsapp.support.view", None, ALLOW),
            (&[], &[], &["channel.whatsapp.*"], "channel.whatsapp.sales.manage", None, ALLOW),
            (&[], &[], &["channel.whatsapp.*"], "channel.webchat.site.view", None, MISSING),
            // Implied levels follow `requires` like the grant itself.
            (&["sms-replier"], &[], &[], "channel.sms.main.view", None, MISSING),
            (&["sms-replier", "agent"], &[], &[], "channel.sms.main.view", None, ALLOW),
            (&["sms-replier", "agent"], &[], &[], "channel.sms.main.manage", None, MISSING),
        ];
        for (roles, profiles, grants, req, bot, want) in rows {
            let p = Principal { profiles: strs(profiles), grants: strs(grants), ..principal(roles) };
            let r = route(req, bot.map(|_| ("bot", "bot")));
            let ps = bot.map(|b| params(&[("bot", b)])).unwrap_or_default();
            assert_eq!(outcome(&policy, &p, &r, &ps, &NoRelations), *want, "{roles:?} {profiles:?} {grants:?} {req} {bot:?}");
        }
        // Manage on one sub-channel cannot reply on another.
        let lead = principal(&["messenger-lead"]);
        assert_eq!(outcome(&policy, &lead, &route(&format!("{m}.reply"), None), &[], &NoRelations), ALLOW);
        assert_eq!(outcome(&policy, &lead, &route("channel.facebook.page.reply", None), &[], &NoRelations), MISSING);
        // Without the ladder the same grant is exact only.
        let (plain, _) = Policy::compile(PolicySpec { levels: vec![], ..catalog() });
        assert_eq!(outcome(&plain, &lead, &route(&format!("{m}.view"), None), &[], &NoRelations), MISSING);
        let p = Principal { grants: strs(&["channel.whatsapp.sales.manage"]), ..principal(&[]) };
        assert_eq!(outcome(&plain, &p, &route("channel.whatsapp.sales.view", None), &[], &NoRelations), MISSING);
    }

    #[test]
    fn explain_names_the_grant_that_implied_a_level() {
        let policy = policy();
        let p = Principal {
            profiles: strs(&["webchat"]),
            grants: strs(&["channel.whatsapp.sales.manage"]),
            ..principal(&["messenger-lead"])
        };
        let (d, t) = explain(
            &policy,
            &p,
            &route("channel.facebook.messenger.view", None),
            &[],
            &NoRelations,
        );
        assert_eq!(d, Decision::Allow);
        let from = |cap: &str| {
            t.capabilities
                .iter()
                .filter(|(c, _)| c == cap)
                .map(|(_, s)| s.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            from("channel.facebook.messenger.manage"),
            ["role messenger-lead via messenger-lead"]
        );
        assert_eq!(
            from("channel.facebook.messenger.view"),
            [
                "role messenger-lead via messenger-lead (implied by channel.facebook.messenger.manage)"
            ]
        );
        assert_eq!(
            from("channel.webchat.site.view"),
            ["profile webchat (implied by channel.webchat.site.reply)"]
        );
        assert_eq!(
            from("channel.whatsapp.sales.reply"),
            ["grant channel.whatsapp.sales.manage (implied by channel.whatsapp.sales.manage)"]
        );
        assert!(from("channel.webchat.site.manage").is_empty());
        assert!(
            t.to_string().contains(
                "channel.facebook.messenger.view <- role messenger-lead via messenger-lead (implied by channel.facebook.messenger.manage)"
            ),
            "{t}"
        );
    }

    #[test]
    #[rustfmt::skip]
    fn inheritance_chains() {
        run_role_rows(&[
            ("admin ⊇ edit ⊇ view", &["bot-builder-admin@bot:1"], "bot.flows.view", Some("1"), ALLOW),
            ("admin ⊇ edit", &["bot-builder-admin@bot:1"], "bot.flows.edit", Some("1"), ALLOW),
            ("admin own wildcard", &["bot-builder-admin@bot:1"], "bot.settings.webhook", Some("1"), ALLOW),
            ("edit ⊇ view", &["bot-builder-edit@bot:1"], "bot.view", Some("1"), ALLOW),
            ("edit ⊉ admin", &["bot-builder-edit@bot:1"], "bot.settings.webhook", Some("1"), MISSING),
            ("view ⊉ edit", &["bot-builder-view@bot:1"], "bot.flows.edit", Some("1"), MISSING),
            ("analytics admin ⊇ view", &["analytics-admin"], "analytics.view", None, ALLOW),
            ("analytics edit ⊇ view", &["analytics-edit"], "analytics.view", None, ALLOW),
            ("analytics view ⊉ edit", &["analytics-view"], "analytics.edit", None, MISSING),
            ("analytics edit ⊉ admin", &["analytics-edit"], "analytics.admin.users", None, MISSING),
            ("supervisor ⊇ agent", &["supervisor"], "customer.view.assigned", None, ALLOW),
            // A global role included by a scoped role applies on that resource only.
            ("scoped includes global", &["bot-analyst@bot:1"], "analytics.view", Some("1"), ALLOW),
            ("... not on another bot", &["bot-analyst@bot:1"], "analytics.view", Some("2"), MISSING),
            ("... not unscoped", &["bot-analyst@bot:1"], "analytics.view", None, MISSING),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn requires_needs_the_same_context() {
        run_role_rows(&[
            ("approver + developer on bot 1", &["approver@bot:1", "developer@bot:1"], "bot.publish", Some("1"), ALLOW),
            ("approver alone", &["approver@bot:1"], "bot.publish", Some("1"), MISSING),
            ("developer on 2, route 1", &["approver@bot:1", "developer@bot:2"], "bot.publish", Some("1"), MISSING),
            ("developer on 2, route 2", &["approver@bot:1", "developer@bot:2"], "bot.publish", Some("2"), MISSING),
            ("developer bound globally", &["approver@bot:1", "developer"], "bot.publish", Some("1"), MISSING),
            // Approver grants NOTHING without developer, not even what it includes.
            ("approver's includes, alone", &["approver@bot:1"], "bot.view", Some("1"), MISSING),
            ("approver's includes, met", &["approver@bot:1", "developer@bot:1"], "bot.view", Some("1"), ALLOW),
            // Requires on an included role: checked on that role, not lifted by the include.
            ("includer keeps own grants", &["release-manager@bot:1"], "bot.release.notes", Some("1"), ALLOW),
            ("included requires unmet", &["release-manager@bot:1"], "bot.publish", Some("1"), MISSING),
            ("included requires met", &["release-manager@bot:1", "developer@bot:1"], "bot.publish", Some("1"), ALLOW),
            ("included requires other bot", &["release-manager@bot:1", "developer@bot:2"], "bot.publish", Some("1"), MISSING),
            // A scoped role requiring a GLOBAL role: a global binding satisfies it.
            ("global req, global binding", &["bot-auditor@bot:1", "analytics-view"], "bot.audit.read", Some("1"), ALLOW),
            ("global req, via includes", &["bot-auditor@bot:1", "analytics-edit"], "bot.audit.read", Some("1"), ALLOW),
            ("global req, via same bot", &["bot-auditor@bot:1", "bot-analyst@bot:1"], "bot.audit.read", Some("1"), ALLOW),
            ("global req, via other bot", &["bot-auditor@bot:1", "bot-analyst@bot:2"], "bot.audit.read", Some("1"), MISSING),
            ("global req missing", &["bot-auditor@bot:1"], "bot.audit.read", Some("1"), MISSING),
            // A global role requiring a global role: only global holdings count.
            ("global/global via includes", &["auditor", "analytics-admin"], "audit.read", None, ALLOW),
            ("global/global missing", &["auditor"], "audit.read", None, MISSING),
            ("global/global held on a bot only", &["auditor", "bot-analyst@bot:1"], "audit.read", Some("1"), MISSING),
        ]);
        let policy = policy();
        let p = Principal { profiles: strs(&["analyst"]), ..principal(&["auditor"]) };
        assert_eq!(outcome(&policy, &p, &route("audit.read", None), &[], &NoRelations), ALLOW, "held via profile");
    }

    #[test]
    fn useless_requires_grant_nothing_at_runtime() {
        let spec = PolicySpec {
            roles: vec![
                role("selfish", None, &["a.x"], &[], &["selfish"]),
                role("ghost-needing", None, &["a.y"], &[], &["ghost"]),
                role("dev", Some("bot"), &["a.z"], &[], &[]),
                role("global-needs-scoped", None, &["a.w"], &[], &["dev"]),
            ],
            profiles: vec![],
            levels: vec![],
        };
        let policy = Policy::compile(spec).0;
        let p = principal(&[
            "selfish",
            "ghost-needing",
            "dev@bot:1",
            "global-needs-scoped",
        ]);
        let r = |cap| route(cap, Some(("bot", "bot")));
        let ps = params(&[("bot", "1")]);
        assert_eq!(outcome(&policy, &p, &r("a.z"), &ps, &NoRelations), ALLOW);
        for cap in ["a.x", "a.y", "a.w"] {
            assert_eq!(
                outcome(&policy, &p, &r(cap), &ps, &NoRelations),
                MISSING,
                "{cap}"
            );
        }
    }

    #[test]
    #[rustfmt::skip]
    fn scoped_bindings_apply_only_on_their_resource() {
        run_role_rows(&[
            ("bot A on bot A", &["developer@bot:42"], "bot.deploy.staging", Some("42"), ALLOW),
            ("bot A on bot B", &["developer@bot:42"], "bot.deploy.staging", Some("43"), MISSING),
            ("no prefix match on ids", &["developer@bot:42"], "bot.deploy.staging", Some("420"), MISSING),
            ("unscoped route", &["developer@bot:42"], "bot.deploy.staging", None, MISSING),
            ("global role bound to a resource", &["agent@bot:42"], "customer.view.assigned", Some("42"), MISSING),
            ("scoped role bound globally", &["developer"], "bot.deploy.staging", Some("42"), MISSING),
            ("role of another kind", &["team-lead@bot:42"], "team.queue.manage", Some("42"), MISSING),
            ("global binding on a scoped route", &["agent"], "customer.view.assigned", Some("42"), ALLOW),
        ]);
        // Same id under another kind: the kind is part of the resource.
        let policy = policy();
        let r = route("bot.deploy.staging", Some(("flow", "id")));
        let got = outcome(&policy, &principal(&["developer@bot:42"]), &r, &params(&[("id", "42")]), &NoRelations);
        assert_eq!(got, MISSING);
    }

    #[test]
    #[rustfmt::skip]
    fn tenant_membership() {
        let policy = policy();
        // (case, partners, roles, route partner param (None = absent), expected)
        let rows: &[(&str, Strs, Strs, Pairs, Want)] = &[
            ("member with role", &["acme"], &["partner-admin@partner:acme"], &[("partner", "acme")], ALLOW),
            ("role but not member", &["globex"], &["partner-admin@partner:acme"], &[("partner", "acme")], NOT_MEMBER),
            ("member without role", &["acme"], &[], &[("partner", "acme")], MISSING),
            ("role for another partner", &["acme", "globex"], &["partner-admin@partner:acme"], &[("partner", "globex")], MISSING),
            ("no prefix match", &["acme"], &["partner-admin@partner:acme"], &[("partner", "acm")], NOT_MEMBER),
            ("scope param missing", &["acme"], &["partner-admin@partner:acme"], &[], COND),
            ("scope param empty", &[""], &["partner-admin@partner:"], &[("partner", "")], COND),
            ("scope param ambiguous", &["acme"], &["partner-admin@partner:acme"], &[("partner", "acme"), ("partner", "globex")], COND),
        ];
        for (name, partners, roles, ps, want) in rows {
            let p = Principal { partners: strs(partners), ..principal(roles) };
            let r = route("partner.users.manage", Some(("partner", "partner")));
            assert_eq!(outcome(&policy, &p, &r, &params(ps), &NoRelations), *want, "{name}");
        }
        let team = |teams: &[&str], req: &str| {
            let p = Principal { teams: strs(teams), ..principal(&["team-lead@team:red"]) };
            outcome(&policy, &p, &route(req, Some(("team", "team"))), &params(&[("team", "red")]), &NoRelations)
        };
        assert_eq!(team(&["red"], "team.queue.manage"), ALLOW);
        assert_eq!(team(&["blue"], "team.queue.manage"), NOT_MEMBER);
        // Membership is checked before (and regardless of) the requirement.
        assert_eq!(team(&["blue"], "authenticated"), NOT_MEMBER);
    }

    #[test]
    #[rustfmt::skip]
    fn profiles_and_extra_grants() {
        let policy = policy();
        let rows: &[(Strs, Strs, &str, Option<&str>, Want)] = &[
            // (profiles, grants, requirement, bot, expected)
            (&["support"], &[], "customer.view.assigned", None, ALLOW),     // profile role
            (&["support"], &[], "tickets.view", None, ALLOW),               // profile grant
            (&["support"], &[], "customer.view.assigned", Some("1"), ALLOW), // profiles apply everywhere
            (&["exporter"], &[], "export.csv", None, ALLOW),                // grant-only profile
            (&["nope", "Support"], &[], "tickets.view", None, MISSING),     // unknown profiles ignored
            (&[], &["customer.view.any"], "customer.view.any", None, ALLOW), // per-user grant
            (&[], &["customer.view.any"], "customer.view.any", Some("1"), ALLOW),
            (&[], &["bad grant", "A.B", ""], "customer.view.any", None, MISSING),
            // Scoped extra grant: only on that exact resource.
            (&[], &["bot.publish@bot:9"], "bot.publish", Some("9"), ALLOW),
            (&[], &["bot.publish@bot:9"], "bot.publish", Some("8"), MISSING),
            (&[], &["bot.publish@bot:9"], "bot.publish", None, MISSING),
            (&[], &["bot.*@bot:9"], "bot.publish", Some("9"), ALLOW),
            (&[], &["bot.publish@flow:9"], "bot.publish", Some("9"), MISSING),
        ];
        for (profiles, grants, req, bot, want) in rows {
            let p = Principal { profiles: strs(profiles), grants: strs(grants), ..principal(&[]) };
            let r = route(req, bot.map(|_| ("bot", "bot")));
            let ps = bot.map(|b| params(&[("bot", b)])).unwrap_or_default();
            assert_eq!(outcome(&policy, &p, &r, &ps, &NoRelations), *want, "{profiles:?} {grants:?} {req} {bot:?}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn unknown_and_malformed_bindings_are_ignored() {
        run_role_rows(&[
            ("unknown next to a good one", &["nope", "agent"], "customer.view.assigned", None, ALLOW),
            ("only unknown", &["nope"], "customer.view.assigned", None, MISSING),
            ("names are case-sensitive", &["Agent"], "customer.view.assigned", None, MISSING),
            ("malformed", &["developer@", "developer@bot", "@bot:1", "developer@bot:", "developer@:1"], "bot.deploy.staging", Some("1"), MISSING),
            ("smuggled", &["developer@bot:1@bot:1", " developer@bot:1", "developer@bot:1\n"], "bot.deploy.staging", Some("1"), MISSING),
            ("malformed next to a good one", &["a@", "a@bot", "@bot:1", "a@bot:", "developer@bot:1"], "bot.deploy.staging", Some("1"), ALLOW),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn conditions() {
        let policy = policy();
        let mut claims = BTreeMap::new();
        claims.insert("dept".to_string(), strs(&["sales"]));
        claims.insert("regions".to_string(), strs(&["eu", "us"]));
        let p = Principal { teams: strs(&["red", "blue"]), claims, ..principal(&["agent"]) };
        let rows: &[(&str, Pairs, Want)] = &[
            ("{team} in principal.teams", &[("team", "red")], ALLOW),
            ("{team} in principal.teams", &[("team", "green")], COND),
            ("{team} in principal.teams", &[], COND),                  // missing param
            ("{team} in principal.teams", &[("team", "")], COND),      // empty param
            ("{user} == principal.sub", &[("user", "user-1")], ALLOW),
            ("{user} == principal.sub", &[("user", "user-2")], COND),
            ("principal.sub == {user}", &[("user", "user-1")], ALLOW),
            ("principal.claims.dept == 'sales'", &[], ALLOW),
            ("principal.claims.regions == 'eu'", &[], COND),          // a list is not a single value
            ("{r} in principal.claims.regions", &[("r", "us")], ALLOW),
            ("{r} in principal.claims.nope", &[("r", "us")], COND),    // missing claim
            ("{team} in 'red'", &[("team", "red")], ALLOW),             // literal = one-element list
            ("all({team} in principal.teams, customer.view.assigned)", &[("team", "red")], ALLOW),
            ("all({team} in principal.teams, bot.publish)", &[("team", "red")], MISSING),
        ];
        for (req, ps, want) in rows {
            assert_eq!(outcome(&policy, &p, &route(req, None), &params(ps), &NoRelations), *want, "{req} {ps:?}");
        }
        // Empty values never match, not even each other.
        let mut claims = BTreeMap::new();
        claims.insert("alias".to_string(), strs(&[""]));
        let nobody = Principal { subject: String::new(), claims, ..principal(&[]) };
        for req in ["principal.claims.alias == principal.sub", "{user} == principal.sub"] {
            let got = outcome(&policy, &nobody, &route(req, None), &params(&[("user", "")]), &NoRelations);
            assert_eq!(got, COND, "{req}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn relations_use_three_valued_logic() {
        let policy = policy();
        let p = principal(&["agent"]); // holds customer.view.assigned, not customer.view.any
        let table = Table(vec![("active_conversation", "c1", true), ("active_conversation", "c2", false)]);
        let rel = "relation:active_conversation({customer})";
        let rows: &[(&str, &str, Want)] = &[
            (rel, "c1", ALLOW),
            (rel, "c2", COND),
            (rel, "c3", UNAVAILABLE),
            ("relation:other({customer})", "c1", UNAVAILABLE),
            ("any(customer.view.assigned, relation:other({customer}))", "c3", ALLOW),
            ("any(relation:other({customer}), customer.view.assigned)", "c3", ALLOW),
            ("any(customer.view.any, relation:other({customer}))", "c3", UNAVAILABLE),
            ("all(relation:other({customer}), customer.view.any)", "c3", MISSING),
            ("all(customer.view.assigned, relation:other({customer}))", "c3", UNAVAILABLE),
            ("all(customer.view.assigned, relation:active_conversation({customer}))", "c1", ALLOW),
            ("relation:active_conversation({nope})", "c1", COND),   // missing argument
        ];
        for (req, customer, want) in rows {
            let got = outcome(&policy, &p, &route(req, None), &params(&[("customer", customer)]), &table);
            assert_eq!(got, *want, "{req} with {customer}");
        }
        let got = outcome(&policy, &p, &route(rel, None), &params(&[("customer", "c1")]), &NoRelations);
        assert_eq!(got, UNAVAILABLE, "NoRelations knows nothing");
    }

    #[test]
    fn public_and_default_deny() {
        let policy = policy();
        let public = RoutePolicy {
            name: "health".into(),
            public: true,
            require: None,
            scope: Some(("partner".into(), "partner".into())),
        };
        // Allowed for an empty principal even with the scope param missing.
        assert_eq!(
            decide(&policy, &Principal::default(), &public, &[], &NoRelations),
            Decision::Allow
        );
        let closed = RoutePolicy {
            name: "closed".into(),
            ..Default::default()
        };
        let d = decide(
            &policy,
            &principal(&["supervisor"]),
            &closed,
            &[],
            &NoRelations,
        );
        let Decision::Deny(den) = d else {
            panic!("must deny")
        };
        assert_eq!(den.code, Denial::MISSING_CAPABILITY);
        assert!(den.reason.contains("default deny"), "{}", den.reason);
    }

    #[test]
    #[rustfmt::skip]
    fn deny_reasons_name_what_is_missing() {
        let policy = policy();
        let agent = principal(&["agent"]);
        type Scope = Option<(&'static str, &'static str)>;
        let rows: &[(&str, Scope, Pairs, &str)] = &[
            ("bot.publish", Some(("bot", "bot")), &[("bot", "42")], "requires bot.publish on bot:42"),
            ("bot.publish", None, &[], "requires bot.publish"),
            ("all(customer.view.assigned, a.b, c.d)", None, &[], "requires a.b"),
            ("{team} in principal.teams", None, &[("team", "x")], "requires {team} in principal.teams"),
            ("partner.users.manage", Some(("partner", "p")), &[("p", "acme")], "not a member of partner acme"),
            (
                "any(customer.view.any, all(customer.view.assigned, relation:active_conversation({customer})))",
                None, &[("customer", "c1")],
                "cannot evaluate relation:active_conversation({customer}): relation unavailable",
            ),
            (
                "any(customer.view.any, all(nope.cap, relation:active_conversation({customer})))",
                None, &[("customer", "c1")],
                "requires any of [customer.view.any, all(nope.cap, relation:active_conversation({customer}))]",
            ),
        ];
        for (req, scope, ps, want) in rows {
            match decide(&policy, &agent, &route(req, *scope), &params(ps), &NoRelations) {
                Decision::Deny(d) => assert_eq!(d.reason, *want, "{req}"),
                Decision::Allow => panic!("{req} should deny"),
            }
        }
    }

    #[test]
    fn explain_trace_tells_the_story() {
        let policy = policy();
        let p = Principal {
            profiles: strs(&["support", "ghost"]),
            grants: strs(&["bot.publish@bot:9", "*"]),
            ..principal(&[
                "bot-builder-edit@bot:42",
                "approver@bot:42",
                "developer@bot:7",
                "nope",
                "a@",
            ])
        };
        let r = route("any(bot.publish, bot.flows.view)", Some(("bot", "bot")));
        let (d, t) = explain(&policy, &p, &r, &params(&[("bot", "42")]), &NoRelations);
        assert_eq!(d, Decision::Allow);
        let note = |raw: &str| {
            let b = t.bindings.iter().find(|b| b.raw == raw).unwrap();
            (b.used, b.note.clone())
        };
        assert_eq!(
            note("bot-builder-edit@bot:42"),
            (true, "applies on bot:42".to_string())
        );
        let (used, n) = note("approver@bot:42");
        assert!(
            !used && n.contains("requires [developer], not held on bot:42"),
            "{n}"
        );
        let (used, n) = note("developer@bot:7");
        assert!(
            !used && n.contains("bound to bot:7, but this route acts on bot:42"),
            "{n}"
        );
        assert_eq!(note("nope"), (false, "unknown role".to_string()));
        assert!(!note("a@").0 && !note("ghost").0 && note("support").0);
        assert!(!note("bot.publish@bot:9").0 && !note("*").0);
        let has = |c: &str, src: &str| t.capabilities.contains(&(c.to_string(), src.to_string()));
        assert!(
            has(
                "bot.flows.view",
                "role bot-builder-view via bot-builder-edit@bot:42"
            ),
            "{t}"
        );
        assert!(
            has(
                "bot.flows.edit",
                "role bot-builder-edit via bot-builder-edit@bot:42"
            ),
            "{t}"
        );
        assert!(
            has("customer.view.assigned", "role agent via profile support"),
            "{t}"
        );
        assert!(has("tickets.view", "profile support"), "{t}");
        assert!(
            !t.capabilities.iter().any(|(c, _)| c == "bot.publish"),
            "{t}"
        );
        assert_eq!(t.scope.as_deref(), Some("bot:42"));
        assert_eq!(
            t.requirement,
            vec![
                "any (2 alternatives) -> true",
                "  bot.publish -> false",
                "  bot.flows.view -> true"
            ],
        );

        let dev7 = t
            .bindings
            .iter()
            .find(|b| b.raw == "developer@bot:7")
            .unwrap();
        assert_eq!(
            dev7.to_string(),
            r#"role "developer@bot:7": ignored: bound to bot:7, but this route acts on bot:42"#
        );

        let pr = route("authenticated", Some(("partner", "partner")));
        let member = Principal {
            partners: strs(&["acme"]),
            ..principal(&[])
        };
        let (_, t) = explain(
            &policy,
            &member,
            &pr,
            &params(&[("partner", "acme")]),
            &NoRelations,
        );
        assert_eq!(t.scope.as_deref(), Some("partner:acme (member)"));
    }

    // ------------------------------------------------------------ properties

    const ROLE_POOL: &[&str] = &[
        "agent",
        "supervisor",
        "developer@bot:1",
        "developer@bot:2",
        "approver@bot:1",
        "approver@bot:2",
        "approver",
        "release-manager@bot:1",
        "bot-auditor@bot:1",
        "bot-analyst@bot:1",
        "analytics-view",
        "analytics-edit",
        "analytics-admin",
        "auditor",
        "bot-builder-edit@bot:1",
        "bot-builder-admin@bot:2",
        "partner-admin@partner:acme",
        "team-lead@team:red",
        "nope",
        "a@",
        "@bot:1",
        "agent@bot:1",
        "developer",
        "",
        "x@bot",
        "short-session",
        "messenger-lead",
        "sms-replier",
    ];
    const GRANT_POOL: &[&str] = &[
        "bot.publish@bot:1",
        "bot.*",
        "channel.whatsapp.*",
        "*",
        "customer.view.any",
        "bad grant",
        "bot.flows.view@bot:2",
        "x@team:red",
        "channel.whatsapp.sales.manage",
        "channel.sms.main.reply@bot:1",
    ];
    const CAPS: &[&str] = &[
        "bot.publish",
        "bot.flows.view",
        "bot.flows.edit",
        "bot.settings.x",
        "bot.view",
        "analytics.view",
        "analytics.admin.x",
        "audit.read",
        "bot.audit.read",
        "customer.view.any",
        "customer.view.assigned",
        "channel.whatsapp.support.reply",
        "channel.whatsapp.sales.view",
        "channel.whatsapp.sales.manage",
        "channel.facebook.messenger.view",
        "channel.facebook.messenger.manage",
        "channel.webchat.site.view",
        "channel.webchat.site.manage",
        "channel.sms.main.view",
        "tickets.view",
        "export.csv",
        "partner.users.manage",
        "team.queue.manage",
        "bot.release.notes",
        "bot.x",
        "bot.deploy.staging",
        "bot.analytics",
    ];
    const CONDS: &[&str] = &[
        "authenticated",
        "{team} in principal.teams",
        "{user} == principal.sub",
        "'sales' in principal.claims.dept",
        "relation:active_conversation({user})",
        "relation:other()",
        "{bot} in principal.roles",
    ];
    const SCOPES: &[Option<(&str, &str)>] = &[
        None,
        Some(("bot", "bot")),
        Some(("partner", "partner")),
        Some(("team", "team")),
        Some(("bot", "missing")),
    ];

    fn pick(pool: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(prop::sample::select(pool), 0..=max)
            .prop_map(|v| v.into_iter().map(String::from).collect())
    }

    fn arb_principal() -> impl Strategy<Value = Principal> {
        (
            pick(ROLE_POOL, 6),
            pick(&["support", "analyst", "exporter", "webchat", "nope"], 2),
            pick(GRANT_POOL, 3),
            pick(&["acme", "globex"], 2),
            pick(&["red", "blue"], 2),
            prop::sample::select(&["u1", "u2", ""][..]),
            any::<bool>(),
        )
            .prop_map(|(roles, profiles, grants, partners, teams, sub, dept)| {
                let mut claims = BTreeMap::new();
                if dept {
                    claims.insert("dept".to_string(), vec!["sales".to_string()]);
                }
                Principal {
                    subject: sub.into(),
                    roles,
                    profiles,
                    grants,
                    partners,
                    teams,
                    claims,
                    ..Default::default()
                }
            })
    }

    fn arb_requirement() -> impl Strategy<Value = Requirement> {
        let leaf = prop_oneof![
            prop::sample::select(CAPS).prop_map(|c| Requirement::Capability(c.into())),
            prop::sample::select(CONDS).prop_map(|c| Requirement::parse(c).unwrap()),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Requirement::Any),
                prop::collection::vec(inner, 0..4).prop_map(Requirement::All),
            ]
        })
    }

    fn arb_route() -> impl Strategy<Value = RoutePolicy> {
        let require = prop::option::weighted(0.95, arb_requirement());
        (
            prop::sample::select(SCOPES),
            require,
            prop::bool::weighted(0.05),
        )
            .prop_map(|(scope, require, public)| RoutePolicy {
                name: "r".into(),
                public,
                require,
                scope: scope.map(|(k, p)| (k.into(), p.into())),
            })
    }

    fn arb_params() -> impl Strategy<Value = Params> {
        (
            prop::sample::select(&["1", "2", ""][..]),
            prop::sample::select(&["acme", "globex"][..]),
            prop::sample::select(&["red", "blue"][..]),
            prop::sample::select(&["u1", "u2"][..]),
            any::<bool>(),
        )
            .prop_map(|(bot, partner, team, user, drop_bot)| {
                let mut v = params(&[("partner", partner), ("team", team), ("user", user)]);
                if !drop_bot {
                    v.push(("bot".into(), bot.into()));
                }
                v
            })
    }

    /// Deterministic pseudo-random relations: same question, same answer.
    struct Hashed(u64);
    impl Relations for Hashed {
        fn check(&self, name: &str, args: &[String], _: &Principal) -> Option<bool> {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (self.0, name, args).hash(&mut h);
            match h.finish() % 3 {
                0 => Some(true),
                1 => Some(false),
                _ => None,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// One resolution of the principal for two route policies answers
        /// as two separate decisions (same or different resources).
        #[test]
        fn decide_pair_equals_two_decisions(
            p in arb_principal(),
            r1 in arb_route(),
            r2 in arb_route(),
            same_scope in any::<bool>(),
            ps in arb_params(),
            seed in any::<u64>(),
        ) {
            let policy = policy();
            let rel = Hashed(seed);
            let r2 = if same_scope { RoutePolicy { scope: r1.scope.clone(), ..r2 } } else { r2 };
            let pair = decide_pair(&policy, &p, &r1, &r2, &ps, &rel);
            prop_assert_eq!(pair.0, decide(&policy, &p, &r1, &ps, &rel));
            prop_assert_eq!(pair.1, decide(&policy, &p, &r2, &ps, &rel).is_allow());
        }

        #[test]
        fn decide_equals_explain(p in arb_principal(), r in arb_route(), ps in arb_params(), seed in any::<u64>()) {
            let policy = policy();
            let rel = Hashed(seed);
            let d = decide(&policy, &p, &r, &ps, &rel);
            let (d2, _) = explain(&policy, &p, &r, &ps, &rel);
            prop_assert_eq!(d, d2);
        }

        /// The trace's capability list (computed role by role) agrees with the
        /// decision's fast path (precomputed transitive sets).
        #[test]
        fn traced_capabilities_match_decisions(
            p in arb_principal(),
            cap in prop::sample::select(CAPS),
            bot in prop::sample::select(&[None, Some("1"), Some("2")][..]),
        ) {
            let policy = policy();
            let r = route(cap, bot.map(|_| ("bot", "bot")));
            let ps = bot.map(|b| params(&[("bot", b)])).unwrap_or_default();
            let (d, t) = explain(&policy, &p, &r, &ps, &NoRelations);
            let listed = t.capabilities.iter().any(|(g, _)| grant_covers(g, cap));
            prop_assert_eq!(d.is_allow(), listed, "{}", t);
        }

        #[test]
        fn hostile_input_never_panics(
            roles in prop::collection::vec("\\PC{0,12}", 0..5),
            grants in prop::collection::vec("[a-z.*@:0-9 ]{0,12}", 0..5),
            profiles in prop::collection::vec("\\PC{0,8}", 0..3),
            subject in "\\PC{0,8}",
            ps in prop::collection::vec(("[a-z]{1,6}", "\\PC{0,8}"), 0..4),
            r in arb_route(),
        ) {
            let policy = policy();
            let p = Principal { subject, roles, grants, profiles, ..Default::default() };
            let d = decide(&policy, &p, &r, &ps, &NoRelations);
            let (d2, _) = explain(&policy, &p, &r, &ps, &NoRelations);
            prop_assert_eq!(d, d2);
            let _ = policy.idle_timeout(&p);
        }
    }
}
