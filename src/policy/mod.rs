//! Authorization policy: role catalog, route requirements, and the pure
//! allow/deny decision rolegate makes after authenticating a request
//! (JWT → [`Principal`]) and matching its route.
//!
//! Files: `model` (catalog input types, [`Principal`], binding and
//! capability syntax), `requirement` ([`Requirement`] and its text form,
//! [`RoutePolicy`]), `levels` (capability level ladders), `compile`
//! ([`Policy::compile`] and all lints), `decide` ([`decide`], [`explain`],
//! [`Relations`]). The module does no I/O, keeps no
//! state, uses nothing else from the crate, and never panics on token or
//! request input.
//!
//! # Semantics
//!
//! **Capabilities** are dotted names, `[a-z0-9_-]+(\.[a-z0-9_-]+)*`. A grant
//! is a capability or a capability followed by `.*`, which grants everything
//! strictly below it: `channel.whatsapp.*` covers `channel.whatsapp.x` and
//! `channel.whatsapp.support.reply`, but not `channel.whatsapp` itself, and
//! `bot.flow.*` does not cover `bot.flows.x` (segments match whole). A bare
//! `*` is not a valid grant. Routes require concrete capabilities (no `*`).
//!
//! **Levels** ([`LevelLadder`], `capability_levels:`): a ladder such as
//! `channel: [view, reply, manage]` orders the levels of every capability
//! strictly below its prefix whose last segment is a level; a grant at one
//! level also grants the same capability at each lower level
//! (`channel.whatsapp.support.manage` grants `…support.reply` and
//! `…support.view`), never a higher one and never another capability.
//! `none` is no level: it is the absence of a grant. Roles' and profiles'
//! implied levels are added to their grant sets at compile time; a token's
//! own grants are compared level by level at request time. Ladders cannot
//! nest, and under a ladder every concrete capability written in the
//! config must end in one of its levels (a `check` error otherwise).
//!
//! **Bindings.** `principal.roles` holds `role` (global binding) or
//! `role@kind:id` (bound to one resource); `principal.grants` holds `cap` or
//! `cap@kind:id`. A route may declare a scope `(kind, param)`; its resource is
//! `kind:value` with `value` the path parameter `param`. For a request:
//! - global bindings of global roles, the roles of the principal's profiles,
//!   profile grants and unscoped `principal.grants` apply everywhere;
//! - `role@K:v` / `cap@K:v` apply only when the route's resource is exactly
//!   `K:v`; on any other route (or an unscoped one) they are ignored;
//! - a role with `scope: Some(k)` is effective only through a binding scoped
//!   to kind `k`; bound globally (or to another kind) it is ignored. A global
//!   role bound with `@kind:id` is ignored too. A profile binds its roles
//!   globally, so scoped roles in a profile are never effective;
//! - unknown roles/profiles and malformed bindings (`a@`, `a@bot`, `@bot:1`,
//!   `a@bot:`, whitespace, a second `@`) are ignored, never an error; grants
//!   that are not valid grant names (including `*`) are ignored;
//! - `includes` brings in the included roles' grants, transitively. A
//!   scoped role can only be included by a role of the same scope; a global
//!   role can be included by any role and then applies in the includer's
//!   context;
//! - `requires`: a role's grants count only if every required role is
//!   *held* in the same context. Held = bound directly (and not ignored) or
//!   reached through `includes` of a held role, regardless of that role's
//!   own `requires`. The context is global for roles reached from a global
//!   binding, and the route's resource for roles reached from a resource
//!   binding — so `approver@bot:1` needs `developer@bot:1` (or a role
//!   including it on bot 1); a global binding of a required *global* role
//!   also satisfies a scoped role. Requires is checked on the bound role and
//!   on every included role separately: an included role whose requires
//!   fail contributes nothing and its own includes are not followed from
//!   it, while the including role keeps its other grants (includes don't
//!   carry requires). A role that requires an unknown role, itself, or a
//!   role it can never hold in the same context never grants anything.
//!
//! **Decision order** for `decide(policy, principal, route, params, relations)`:
//! 1. `public: true` → Allow, without looking at anything else.
//! 2. Scoped route whose scope parameter is missing, empty or given twice
//!    with different values → Deny `condition_failed` (fail closed).
//! 3. Scope kind `partner` → the value must be in `principal.partners`; kind
//!    `team` → in `principal.teams`; otherwise Deny `not_member`. Other kinds
//!    (e.g. `bot`) have no membership list. This comes before capabilities.
//! 4. `require: None` → Deny `missing_capability` (default deny).
//! 5. Evaluate the requirement; true → Allow.
//!
//! **Requirements** use three-valued logic (true/false/unknown):
//! - `Capability(c)`: true iff some effective grant equals `c`, is
//!   `prefix.*` with `c` strictly below `prefix`, or is `c` at a higher level
//!   of its ladder;
//! - `Authenticated`: always true (the principal was verified);
//! - `Any` = OR, `All` = AND, evaluated left to right with short-circuit;
//!   `Any(true, unknown)` = true, `All(false, unknown)` = false,
//!   `Any(false, unknown)` = `All(true, unknown)` = unknown. Empty `Any` is
//!   false, empty `All` is true (both are linted);
//! - `In(a, b)`: the single value of `a` is an element of list `b`; `Eq(a, b)`:
//!   the single values are equal. Single values: a path param, a literal,
//!   `principal.sub`, or a list claim with exactly one element; lists:
//!   `principal.partners|teams|roles|claims.NAME`, or a single value as a
//!   one-element list. A missing param/claim or an empty value makes the
//!   condition false;
//! - `Relation { name, args }`: args are single values (a missing one makes
//!   it false); the answer of `relations.check` — `None` is unknown.
//!
//! A true root allows. A false root denies with the code of the node that
//! decided it — `missing_capability` for a capability, `condition_failed` for
//! a condition or relation answering false, and for `any(...)` the code of
//! its first alternative — and a reason naming it: `requires bot.publish on
//! bot:42`, `requires {team} in principal.teams`, or for an `any` the whole
//! list, `requires any of [customer.view.any, all(customer.view.assigned,
//! relation:active_conversation({customer}))]`. An unknown root denies with
//! `relation_unavailable`, naming the first relation that could not be
//! evaluated. [`explain`] runs the same evaluator and returns the same
//! decision plus a [`Trace`].
//!
//! **Lints** ([`Policy::compile`], [`Policy::check_route`]) are all collected.
//! Errors: unknown role in includes/requires/profile roles; include cycles
//! (named, e.g. `a -> b -> a`); invalid capability names; a scoped role
//! included by a role of another scope; a route requirement referring to a
//! param not in the route path; invalid scope kind/param; a route neither
//! public nor with a requirement; duplicate or invalid role/profile names;
//! an empty ladder, a level listed twice, an invalid level or `none`, nested
//! ladders; a capability under a ladder not ending in one of its levels.
//! Warnings: `requires` that makes a role useless (requires itself, or a role
//! of incompatible scope); a role with no grants, no includes and no idle
//! timeout; empty `any()`/`all()`; a required capability no role or profile
//! grants; `requires` on a role included by others; a scoped role in a
//! profile; a public route with a requirement; a ladder with a single level.
//!
//! **Idle timeout** ([`Policy::idle_timeout`]): the minimum over every role
//! the principal holds (global and scoped bindings, whatever the route, and
//! profile roles) and everything they include; whether a binding is
//! effective and `requires` are ignored (a timeout only restricts).

mod compile;
mod decide;
mod levels;
mod model;
mod requirement;

#[cfg(test)]
mod fixtures;

pub use compile::{IssueSubject, Policy, PolicyIssue, Severity};
pub use decide::{
    BindingKind, BindingTrace, Decision, Denial, NoRelations, Relations, Stated, Trace, decide,
    decide_pair, explain,
};
pub(crate) use model::is_valid_name;
pub use model::{
    Binding, LevelLadder, PolicySpec, Principal, ProfileDef, RoleDef, grant_covers,
    is_valid_capability, is_valid_grant, is_valid_scope_kind, parse_binding,
};
pub(crate) use requirement::is_valid_relation_name;
pub use requirement::{MAX_DEPTH, Operand, Requirement, RoutePolicy};
