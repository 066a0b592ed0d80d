//! The route table: compiles route specs once, then maps
//! (host, method, canonical path) to the route that governs the request.
//!
//! Owns: template parsing and validation, the `matchit` tree, per-template
//! candidate lists, host/method/constraint checks, build-time lints, and
//! the `explain` diagnostics ([`Router::why_not`]). Must not: normalise or
//! decode request paths (the caller passes the output of
//! [`canonicalize`](super::canonicalize) and nothing else), evaluate policy,
//! or change after [`Router::build`] — it is immutable and `Send + Sync` so
//! it can be swapped atomically on reload.
//!
//! # Template syntax
//!
//! A template starts with `/` and is a list of `/`-separated segments:
//!
//! - **literal** — matched byte-for-byte (case-sensitive) against the
//!   canonical path, so it must itself be canonical: `%7e` is refused
//!   (write `~`), as are `%3A` (write `:`) and `|` (write `%7C`); `%2F`,
//!   `.`, `..`, `\`, `?`, `#`, spaces are refused. `*`
//!   and literal braces are not allowed in a literal segment.
//! - **`{name}`** — one whole, non-empty segment. Names are
//!   `[A-Za-z_][A-Za-z0-9_]*` and unique within a template.
//! - **`{name:REGEX}`** — as `{name}`, and the *decoded* segment value must
//!   match `REGEX` in full (it is anchored at both ends). Braces may nest
//!   (`{id:[0-9]{1,6}}`); `\{`/`\}` and braces inside `[...]` do not count.
//!   The regex may not contain `/` (a segment never does).
//! - **`/**`** — only as the final segment: one or more further segments,
//!   exposed as the param `**` (e.g. `a/b`, without the leading slash; a
//!   trailing slash in the request is part of the value). `/static/**`
//!   matches `/static/a` and `/static/a/b` but not `/static` or `/static/`.
//! - A trailing `/` is significant: `/a/` and `/a` are different templates.
//!   An empty segment in the middle (`/a//b`) can only match with
//!   `merge_slashes` off, so it is a warning.
//!
//! A param must be a whole segment: `/files/{name}.txt` is an error.
//!
//! # Hosts and methods
//!
//! `host: None` matches any host, including a request with no host.
//! Otherwise an exact host (compared case-insensitively; a port in the spec
//! is dropped with a warning) or `*.example.com`, which needs one or more
//! labels in front (`a.example.com`, `a.b.example.com`, not
//! `example.com`). At match time the request host is compared with any
//! `:port` and a single trailing `.` ignored, so `Admin.Example.com.:443`
//! cannot dodge a host-specific route. Internationalised names must be
//! written in their `xn--` form.
//!
//! **The host picks the virtual host first, then the path** (nginx
//! `server_name` semantics). The routes naming one exact host form one
//! virtual host, the routes naming one wildcard another, and the host-less
//! routes the default one. A request is matched against exactly one of
//! them: the exact host's, else the longest wildcard that covers the host
//! (`*.b.example.com` before `*.example.com`), else the default. There is
//! **no fallback** between them: on a host with its own routes, a path none
//! of them matches is no route, even if a host-less (or wider wildcard)
//! route would match it — so a host-less `/public/**` can never take an
//! admin host's requests away from that host's `/**`. A host whose routes
//! all failed to build still has its (empty) virtual host. Each virtual
//! host has its own tree, so the cost stays one hash lookup (one per label
//! with wildcards) plus one tree lookup.
//!
//! `methods: []` matches any method. Names must be upper-case tokens; a
//! route listing `GET` also matches `HEAD`. Request methods are compared
//! exactly (RFC 9110: methods are case-sensitive), so `get` never matches a
//! `GET` route. The pipeline refuses a standard method in another case
//! (`get`, `Post`) before routing, so such a request cannot slide past the
//! `GET` route to a looser one either (a backend that folds case would run
//! it as `GET`).
//!
//! # Matching semantics
//!
//! Each template is normalised to a `matchit` key with positional param
//! names (`/api/customers/{p0}`, catch-all `/static/{*p0}`), inserted once,
//! so the cost of [`Router::at`] is one tree lookup — flat in the number of
//! routes — plus a scan of the few routes that share that key. Templates
//! that differ only in param names or constraints share a key; their routes
//! are kept in declaration order.
//!
//! `at` picks the virtual host, takes matchit's single best path match in
//! its tree (static segments beat params, params beat a catch-all) and
//! returns the **first** candidate on that key whose method and regex
//! constraints pass. There is
//! **no fallback** to a less specific template: if `/api/users/me` exists
//! but only for `GET`, a `POST /api/users/me` does not fall through to
//! `/api/users/{id}`; it matches nothing (and is denied). This keeps "which
//! route governs this path" a function of the host and path alone.
//!
//! # Build issues
//!
//! [`Router::build`] collects every issue instead of stopping at the first.
//! A route with an `Error` is left out of the router (so requests it would
//! have matched are denied or go to another route). Warnings: a route that
//! can never match because an earlier route of its virtual host on the
//! same key has no constraints and covers its methods (shadowed), an exact
//! duplicate, a port in a host, an empty middle segment. matchit conflicts
//! within a virtual host (e.g. `/files/{name}` next to `/files/**`) are
//! errors carrying matchit's message.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

use regex::Regex;

use super::canonical::{CanonOptions, canonicalize, decode_param};

/// One route as configured. `route` indexes in [`RouteMatch`] and
/// [`RouteIssue`] refer to positions in the slice given to
/// [`Router::build`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSpec {
    /// `None` = any host; `"example.com"` or `"*.example.com"`.
    pub host: Option<String>,
    /// Upper-case method names; empty = any method. `GET` implies `HEAD`.
    pub methods: Vec<String>,
    /// Path template, see the module docs.
    pub path: String,
}

/// A successful match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// Index of the matched spec in the slice given to [`Router::build`].
    pub route: usize,
    /// `(name, percent-decoded value)` in template order; the catch-all is
    /// named `**`.
    pub params: Vec<(String, String)>,
}

impl RouteMatch {
    /// The decoded value of param `name`, if the template has it.
    #[must_use]
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Severity of a [`RouteIssue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueKind {
    /// The route was left out of the router.
    Error,
    /// The route is loaded but probably not doing what was meant.
    Warning,
}

/// A problem found by [`Router::build`] in one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteIssue {
    /// Index of the offending spec.
    pub route: usize,
    /// Whether the route was dropped.
    pub kind: IssueKind,
    /// Human-readable explanation, naming the offending part.
    pub message: String,
}

impl fmt::Display for RouteIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            IssueKind::Error => "error",
            IssueKind::Warning => "warning",
        };
        write!(f, "route {}: {kind}: {}", self.route, self.message)
    }
}

/// The compiled, immutable route table. See the module docs for semantics.
#[derive(Debug)]
pub struct Router {
    /// One path tree per virtual host; `vhosts[DEFAULT]` holds the
    /// host-less routes.
    vhosts: Vec<Vhost>,
    /// Exact host (lower-case, no port, no trailing dot) → index in `vhosts`.
    exact: HashMap<String, usize>,
    /// Wildcard suffix (`.example.com` for `*.example.com`) → index in
    /// `vhosts`.
    wildcard: HashMap<String, usize>,
    routes: Vec<Compiled>,
    /// Routes left out because of errors; kept only for `why_not`.
    rejected: Vec<Rejected>,
}

/// The virtual host of host-less routes.
const DEFAULT: usize = 0;

/// The routes of one virtual host (one `match.host`, or none).
#[derive(Debug)]
struct Vhost {
    /// The host rule every route of this vhost has.
    host: HostRule,
    /// Path tree; the value is an index into `slots`.
    tree: matchit::Router<usize>,
    /// Per matchit key: indexes into `routes`, in declaration order.
    slots: Vec<Vec<usize>>,
    /// matchit key → index in `slots`.
    slot_of: HashMap<String, usize>,
}

impl Vhost {
    fn new(host: HostRule) -> Vhost {
        Vhost {
            host,
            tree: matchit::Router::new(),
            slots: Vec::new(),
            slot_of: HashMap::new(),
        }
    }
}

#[derive(Debug)]
struct Compiled {
    index: usize,
    template: Template,
    host: HostRule,
    methods: MethodRule,
    /// Index of its virtual host in `Router::vhosts`.
    vhost: usize,
}

#[derive(Debug)]
struct Rejected {
    index: usize,
    template: Option<Template>,
}

#[derive(Debug)]
struct Template {
    source: String,
    segs: Vec<Seg>,
    params: Vec<Param>,
    /// The matchit key, e.g. `/api/{p0}/x/{*p1}`.
    key: String,
}

#[derive(Debug)]
enum Seg {
    Lit(String),
    Param,
    CatchAll,
}

#[derive(Debug)]
struct Param {
    name: String,
    constraint: Option<Constraint>,
}

#[derive(Debug)]
struct Constraint {
    source: String,
    /// `source` wrapped as `\A(?:source)\z`.
    anchored: Regex,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Any,
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MethodRule {
    Any,
    /// Sorted, deduplicated, `HEAD` added when `GET` is present.
    Only(Vec<String>),
}

/// Issues for one route before they get their route index.
type Found = Vec<(IssueKind, String)>;

impl Router {
    /// Compile `specs`. Returns the router and every issue found; routes
    /// with an [`IssueKind::Error`] are not in the router. Issues are
    /// ordered by route index.
    #[must_use]
    pub fn build(specs: &[RouteSpec]) -> (Router, Vec<RouteIssue>) {
        let mut issues = Vec::new();
        let mut vhosts = vec![Vhost::new(HostRule::Any)];
        let mut exact: HashMap<String, usize> = HashMap::new();
        let mut wildcard: HashMap<String, usize> = HashMap::new();
        let mut routes: Vec<Compiled> = Vec::new();
        let mut rejected = Vec::new();

        for (index, spec) in specs.iter().enumerate() {
            let mut found = Found::new();
            let template = parse_template(&spec.path, &mut found).ok();
            let host = parse_host(spec.host.as_deref(), &mut found);
            let methods = parse_methods(&spec.methods, &mut found);
            let failed = found.iter().any(|(k, _)| *k == IssueKind::Error);
            issues.extend(found.into_iter().map(|(kind, message)| RouteIssue {
                route: index,
                kind,
                message,
            }));
            // The host's virtual host exists even if this route is dropped:
            // requests for that host must not reach the host-less routes
            // because one of its own routes failed to build.
            let vhost = host.as_ref().map(|h| {
                let (map, name) = match h {
                    HostRule::Any => return DEFAULT,
                    HostRule::Exact(name) => (&mut exact, name),
                    HostRule::Suffix(suffix) => (&mut wildcard, suffix),
                };
                *map.entry(name.clone()).or_insert_with(|| {
                    vhosts.push(Vhost::new(h.clone()));
                    vhosts.len() - 1
                })
            });
            let (template, host, methods, vhost) = match (template, host, methods, vhost) {
                (Some(t), Some(h), Some(m), Some(v)) if !failed => (t, h, m, v),
                (template, ..) => {
                    rejected.push(Rejected { index, template });
                    continue;
                }
            };

            let vh = &mut vhosts[vhost];
            let slot = match vh.slot_of.get(&template.key) {
                Some(&slot) => slot,
                None => match vh.tree.insert(template.key.clone(), vh.slots.len()) {
                    Ok(()) => {
                        vh.slot_of.insert(template.key.clone(), vh.slots.len());
                        vh.slots.push(Vec::new());
                        vh.slots.len() - 1
                    }
                    Err(e) => {
                        let mut message = format!(
                            "template `{}` cannot be added to the router: {e}",
                            spec.path
                        );
                        // matchit names the other route by our positional
                        // key; point at the route the user actually wrote.
                        if let matchit::InsertError::Conflict { with } = &e
                            && let Some(&other) = vh.slot_of.get(with)
                        {
                            let other = &routes[vh.slots[other][0]];
                            let _ = write!(
                                message,
                                " (route {} `{}`)",
                                other.index, other.template.source
                            );
                        }
                        issues.push(RouteIssue {
                            route: index,
                            kind: IssueKind::Error,
                            message,
                        });
                        rejected.push(Rejected {
                            index,
                            template: Some(template),
                        });
                        continue;
                    }
                },
            };
            vh.slots[slot].push(routes.len());
            routes.push(Compiled {
                index,
                template,
                host,
                methods,
                vhost,
            });
        }

        for vh in &vhosts {
            lint_shadowing(&vh.slots, &routes, &mut issues);
        }
        // Stable: per route, parse issues stay in the order they were found.
        issues.sort_by_key(|i| i.route);
        let router = Router {
            vhosts,
            exact,
            wildcard,
            routes,
            rejected,
        };
        (router, issues)
    }

    /// The virtual host that serves `host`: its exact host's routes if any
    /// route names it, else the routes of the longest wildcard that covers
    /// it, else the host-less routes. Costs a hash lookup (plus one per
    /// label when wildcards exist), whatever the number of routes.
    fn vhost(&self, host: Option<&str>) -> usize {
        let Some(host) = host else {
            return DEFAULT;
        };
        if self.exact.is_empty() && self.wildcard.is_empty() {
            return DEFAULT;
        }
        let view = host_view(host);
        let lower;
        let h = if view.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = view.to_ascii_lowercase();
            lower.as_str()
        } else {
            view
        };
        if let Some(&v) = self.exact.get(h) {
            return v;
        }
        if !self.wildcard.is_empty() {
            // Left to right: the longest suffix first.
            for (i, _) in h.match_indices('.') {
                let suffix = &h[i..];
                if let Some(&v) = self.wildcard.get(suffix)
                    && suffix_match(suffix, h)
                {
                    return v;
                }
            }
        }
        DEFAULT
    }

    /// Find the route for a request. `host` is the request host (lower-case,
    /// without port; tolerated otherwise), `path` MUST be
    /// [`Canonical::path`](super::Canonical::path). `None` means no route:
    /// deny.
    #[must_use]
    pub fn at(&self, host: Option<&str>, method: &str, path: &str) -> Option<RouteMatch> {
        let vh = self.vhosts.get(self.vhost(host))?;
        let m = vh.tree.at(path).ok()?;
        // matchit yields params in path order, which is template order.
        let values: smallvec::SmallVec<[String; 4]> =
            m.params.iter().map(|(_, v)| decode_param(v)).collect();
        let route = vh.slots[*m.value]
            .iter()
            .map(|&r| &self.routes[r])
            .find(|r| r.accepts(host, method, &values))?;
        let names = route.template.params.iter().map(|p| p.name.clone());
        Some(RouteMatch {
            route: route.index,
            params: names.zip(values).collect(),
        })
    }

    /// For `rolegate explain`: why each relevant route did not match this
    /// request, as `(route index, reason)` sorted by index. Relevant means:
    /// the routes on the template matchit picked in the request's virtual
    /// host (the one that would match is omitted, later ones that would
    /// also pass are reported as shadowed), routes of that virtual host
    /// whose template also fits the path but lost to a more specific one,
    /// routes of other virtual hosts whose template fits the path (with why
    /// their host does not apply), and routes dropped at build time whose
    /// template fits. If no template of the virtual host fits the path,
    /// every route is listed.
    #[must_use]
    pub fn why_not(&self, host: Option<&str>, method: &str, path: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let v = self.vhost(host);
        let Some(vh) = self.vhosts.get(v) else {
            return out;
        };
        let picked = vh.tree.at(path).ok();
        match &picked {
            Some(m) => {
                let values: Vec<String> = m.params.iter().map(|(_, v)| decode_param(v)).collect();
                let slot = &vh.slots[*m.value];
                let mut winner = None;
                for route in slot.iter().map(|&r| &self.routes[r]) {
                    let reasons = route.reasons(host, method, &values);
                    match (reasons.is_empty(), winner) {
                        (true, None) => winner = Some(route.index),
                        (true, Some(w)) => out.push((
                            route.index,
                            format!("shadowed: route {w} on the same template matched first"),
                        )),
                        (false, _) => out.push((route.index, reasons.join("; "))),
                    }
                }
                let picked = &self.routes[slot[0]].template;
                for route in self.routes.iter().filter(|r| r.vhost == v) {
                    if route.template.key != picked.key && route.template.matches(path) {
                        out.push((
                            route.index,
                            format!(
                                "template `{}` also fits, but the more specific `{}` takes this path (no fallback)",
                                route.template.source, picked.source
                            ),
                        ));
                    }
                }
            }
            None => {
                for route in self.routes.iter().filter(|r| r.vhost == v) {
                    out.push((
                        route.index,
                        format!("path does not match template `{}`", route.template.source),
                    ));
                }
            }
        }
        // Routes of other virtual hosts.
        for route in self.routes.iter().filter(|r| r.vhost != v) {
            let values = route.template.fit(path);
            if picked.is_some() && values.is_none() {
                continue;
            }
            let mut reasons = match &values {
                Some(values) => route.reasons(host, method, values),
                None => vec![format!(
                    "path does not match template `{}`",
                    route.template.source
                )],
            };
            if route.host.allows(host) {
                // Its host rule fits, but a more specific one wins.
                reasons.insert(
                    0,
                    format!(
                        "host {} is served by the routes for {} (a host's own routes take precedence; no fallback to routes for {})",
                        host.unwrap_or("<none>"),
                        vh.host,
                        route.host
                    ),
                );
            }
            out.push((route.index, reasons.join("; ")));
        }
        for r in &self.rejected {
            if picked.is_none() || r.template.as_ref().is_some_and(|t| t.matches(path)) {
                out.push((r.index, "not loaded: the route has build errors".into()));
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out
    }
}

impl Compiled {
    fn accepts(&self, host: Option<&str>, method: &str, values: &[String]) -> bool {
        self.methods.allows(method)
            && self.host.allows(host)
            && self
                .template
                .params
                .iter()
                .zip(values)
                .all(|(p, v)| p.constraint.as_ref().is_none_or(|c| c.anchored.is_match(v)))
    }

    /// Same checks as `accepts`, spelled out for humans.
    fn reasons(&self, host: Option<&str>, method: &str, values: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        if !self.methods.allows(method) {
            out.push(format!("method {method} not allowed ({})", self.methods));
        }
        if !self.host.allows(host) {
            out.push(format!(
                "host {} does not match {}",
                host.unwrap_or("<none>"),
                self.host
            ));
        }
        for (p, v) in self.template.params.iter().zip(values) {
            if let Some(c) = &p.constraint
                && !c.anchored.is_match(v)
            {
                out.push(format!(
                    "param `{}` = {v:?} fails constraint `{}`",
                    p.name, c.source
                ));
            }
        }
        out
    }
}

impl Template {
    /// Does this template fit `path`, ignoring matchit priorities? Same
    /// rules as the tree: params are non-empty single segments, the
    /// catch-all is a non-empty rest. Only used for diagnostics.
    fn matches(&self, path: &str) -> bool {
        self.fit(path).is_some()
    }

    /// The decoded param values if this template fits `path` (as
    /// [`Template::matches`]). Only used for diagnostics.
    fn fit(&self, path: &str) -> Option<Vec<String>> {
        let mut rest = path.strip_prefix('/')?;
        let mut values = Vec::new();
        for (k, seg) in self.segs.iter().enumerate() {
            let (head, tail) = match rest.split_once('/') {
                Some((h, t)) => (h, Some(t)),
                None => (rest, None),
            };
            let ok = match seg {
                Seg::CatchAll => {
                    values.push(decode_param(rest));
                    return (!rest.is_empty()).then_some(values);
                }
                Seg::Lit(s) => head == s,
                Seg::Param => {
                    values.push(decode_param(head));
                    !head.is_empty()
                }
            };
            if !ok {
                return None;
            }
            match tail {
                Some(t) if k + 1 < self.segs.len() => rest = t,
                None if k + 1 == self.segs.len() => return Some(values),
                _ => return None,
            }
        }
        None
    }

    fn has_constraints(&self) -> bool {
        self.params.iter().any(|p| p.constraint.is_some())
    }

    fn constraint_sources(&self) -> impl Iterator<Item = Option<&str>> {
        self.params
            .iter()
            .map(|p| p.constraint.as_ref().map(|c| c.source.as_str()))
    }
}

impl HostRule {
    fn allows(&self, host: Option<&str>) -> bool {
        match self {
            HostRule::Any => true,
            HostRule::Exact(want) => host.is_some_and(|h| host_view(h).eq_ignore_ascii_case(want)),
            HostRule::Suffix(suffix) => host.is_some_and(|h| suffix_match(suffix, host_view(h))),
        }
    }

    /// Does every host `other` accepts also pass `self`?
    fn covers(&self, other: &HostRule) -> bool {
        match (self, other) {
            (HostRule::Any, _) => true,
            (_, HostRule::Any) => false,
            (HostRule::Exact(a), HostRule::Exact(b)) => a == b,
            (HostRule::Exact(_), HostRule::Suffix(_)) => false,
            (HostRule::Suffix(s), HostRule::Exact(b)) => suffix_match(s, b),
            (HostRule::Suffix(s), HostRule::Suffix(t)) => t.ends_with(s.as_str()),
        }
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostRule::Any => f.write_str("any host"),
            HostRule::Exact(h) => f.write_str(h),
            HostRule::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

impl MethodRule {
    fn allows(&self, method: &str) -> bool {
        match self {
            MethodRule::Any => true,
            MethodRule::Only(set) => set.iter().any(|m| m == method),
        }
    }

    fn covers(&self, other: &MethodRule) -> bool {
        match (self, other) {
            (MethodRule::Any, _) => true,
            (MethodRule::Only(_), MethodRule::Any) => false,
            (MethodRule::Only(a), MethodRule::Only(b)) => b.iter().all(|m| a.contains(m)),
        }
    }
}

impl fmt::Display for MethodRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MethodRule::Any => f.write_str("any method"),
            MethodRule::Only(set) => write!(f, "route allows {}", set.join(", ")),
        }
    }
}

/// `host` ends with `suffix` (`.example.com`) after at least one non-empty
/// label. Byte-wise so a non-ASCII host can never hit a char boundary.
fn suffix_match(suffix: &str, host: &str) -> bool {
    let (h, s) = (host.as_bytes(), suffix.as_bytes());
    if h.len() <= s.len() {
        return false;
    }
    let (front, back) = h.split_at(h.len() - s.len());
    back.eq_ignore_ascii_case(s) && !front.starts_with(b".") && !front.ends_with(b".")
}

/// The request host as compared: without `:port` and one trailing `.`.
/// The caller should already have done this; doing it again is cheap and
/// closes the "same host, different spelling" bypass if it did not.
fn host_view(host: &str) -> &str {
    let host = strip_port(host);
    host.strip_suffix('.').unwrap_or(host)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: the port, if any, follows the `]`.
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

fn parse_template(src: &str, found: &mut Found) -> Result<Template, ()> {
    let fail = |found: &mut Found, msg: String| {
        found.push((IssueKind::Error, msg));
        Err(())
    };
    if !src.starts_with('/') {
        return fail(found, format!("template `{src}` must start with `/`"));
    }
    let bytes = src.as_bytes();
    let mut segs = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    let mut ok = true;
    let mut i = 1;
    loop {
        if bytes.get(i) == Some(&b'{') {
            let (end, name, regex) = match scan_param(src, i) {
                Ok(p) => p,
                Err(msg) => return fail(found, format!("template `{src}`: {msg}")),
            };
            i = end;
            if i < bytes.len() && bytes[i] != b'/' {
                let seg_end = src[i..].find('/').map_or(src.len(), |p| i + p);
                ok = false;
                found.push((
                    IssueKind::Error,
                    format!(
                        "template `{src}`: a parameter must be a whole segment (found trailing `{}` after `{{{name}}}`)",
                        &src[i..seg_end]
                    ),
                ));
                i = seg_end;
            }
            ok &= check_param(src, name, regex, &mut params, found);
            segs.push(Seg::Param);
        } else {
            let end = src[i..].find('/').map_or(src.len(), |p| i + p);
            let lit = &src[i..end];
            let last = end == src.len();
            if lit == "**" && last {
                params.push(Param {
                    name: "**".into(),
                    constraint: None,
                });
                segs.push(Seg::CatchAll);
            } else {
                ok &= check_literal(src, lit, last, found);
                segs.push(Seg::Lit(lit.to_owned()));
            }
            i = end;
        }
        if i >= bytes.len() {
            break;
        }
        i += 1; // the `/`; a trailing one yields a final empty literal
    }
    if !ok {
        return Err(());
    }

    let mut key = String::with_capacity(src.len());
    let mut p = 0;
    for seg in &segs {
        key.push('/');
        match seg {
            Seg::Lit(s) => key.push_str(s),
            // Writing to a String cannot fail.
            Seg::Param => {
                let _ = write!(key, "{{p{p}}}");
                p += 1;
            }
            Seg::CatchAll => {
                let _ = write!(key, "{{*p{p}}}");
                p += 1;
            }
        }
    }
    Ok(Template {
        source: src.to_owned(),
        segs,
        params,
        key,
    })
}

/// Scan `{name}` / `{name:regex}` starting at the `{` at `start`. Returns
/// (index after the closing `}`, name, regex). Nested braces in the regex
/// are balanced; escaped braces and braces inside character classes are
/// skipped so `{id:[0-9]{1,6}}` and `{x:[{}]+}` parse.
fn scan_param(src: &str, start: usize) -> Result<(usize, &str, Option<&str>), String> {
    const UNCLOSED: &str = "unclosed `{`";
    let b = src.as_bytes();
    let mut j = start + 1;
    while j < b.len() && !matches!(b[j], b':' | b'}' | b'/') {
        j += 1;
    }
    if j >= b.len() || b[j] == b'/' {
        return Err(UNCLOSED.into());
    }
    let name = &src[start + 1..j];
    if b[j] == b'}' {
        return Ok((j + 1, name, None));
    }
    j += 1;
    let re_start = j;
    let (mut depth, mut class) = (0usize, 0usize);
    while j < b.len() {
        match b[j] {
            // Escaped byte: skip it (a UTF-8 continuation byte that follows
            // can never be mistaken for a delimiter).
            b'\\' => j += 1,
            b'/' => {
                return Err(format!(
                    "the constraint of `{name}` may not contain `/` (a segment never does)"
                ));
            }
            b'[' => {
                class += 1;
                // `]` right after `[` or `[^` is a literal.
                if b.get(j + 1) == Some(&b'^') {
                    j += 1;
                }
                if b.get(j + 1) == Some(&b']') {
                    j += 1;
                }
            }
            b']' if class > 0 => class -= 1,
            b'{' if class == 0 => depth += 1,
            b'}' if class == 0 => {
                if depth == 0 {
                    return Ok((j + 1, name, Some(&src[re_start..j])));
                }
                depth -= 1;
            }
            _ => {}
        }
        j += 1;
    }
    Err(UNCLOSED.into())
}

fn check_param(
    src: &str,
    name: &str,
    regex: Option<&str>,
    params: &mut Vec<Param>,
    found: &mut Found,
) -> bool {
    let mut ok = true;
    let mut err = |msg: String| {
        found.push((IssueKind::Error, format!("template `{src}`: {msg}")));
        ok = false;
    };
    let valid_name = name
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    if !valid_name {
        err(format!(
            "invalid parameter name `{name}` (expected [A-Za-z_][A-Za-z0-9_]*)"
        ));
    }
    if params.iter().any(|p| p.name == name) {
        err(format!("duplicate parameter name `{name}`"));
    }
    let constraint = match regex {
        None => None,
        Some("") => {
            err(format!("empty constraint for `{name}`"));
            None
        }
        // Compiled on its own first: a fragment like `a)|(b` is only valid
        // once wrapped, and would silently break the anchoring.
        Some(re) => match Regex::new(re).and_then(|_| Regex::new(&format!(r"\A(?:{re})\z"))) {
            Ok(anchored) => Some(Constraint {
                source: re.to_owned(),
                anchored,
            }),
            Err(e) => {
                err(format!("invalid constraint for `{name}`: {e}"));
                None
            }
        },
    };
    params.push(Param {
        name: name.to_owned(),
        constraint,
    });
    ok
}

fn check_literal(src: &str, lit: &str, last: bool, found: &mut Found) -> bool {
    let problem = if lit.contains(['{', '}']) {
        Some(format!(
            "segment `{lit}`: a parameter must be a whole segment (`/files/{{name}}`), and literal braces are not supported"
        ))
    } else if lit == "**" {
        Some("`**` is only allowed as the final segment".to_owned())
    } else if lit.contains('*') {
        Some(format!(
            "segment `{lit}`: `*` is not a wildcard here; use `{{name}}` for one segment or a final `/**`"
        ))
    } else if lit.contains(['?', '#']) {
        Some(format!(
            "segment `{lit}`: `?` and `#` cannot appear in a path template"
        ))
    } else if lit.is_empty() {
        if !last {
            found.push((
                IssueKind::Warning,
                format!(
                    "template `{src}` has an empty segment, which never matches while merge_slashes is on"
                ),
            ));
        }
        None
    } else {
        // Requests are matched in canonical form, so a literal that is not
        // canonical could never match: refuse it rather than lose a route.
        let opts = CanonOptions {
            merge_slashes: false,
            allow_semicolon: true,
        };
        match canonicalize(&format!("/{lit}"), &opts) {
            Err(e) => Some(format!(
                "segment `{lit}` would be refused by canonicalize ({})",
                e.code()
            )),
            Ok(c) if c.path[1..] != *lit => Some(format!(
                "segment `{lit}` is not canonical and could never match; write `{}`",
                &c.path[1..]
            )),
            Ok(_) => None,
        }
    };
    match problem {
        Some(msg) => {
            found.push((IssueKind::Error, format!("template `{src}`: {msg}")));
            false
        }
        None => true,
    }
}

fn parse_host(host: Option<&str>, found: &mut Found) -> Option<HostRule> {
    let Some(raw) = host else {
        return Some(HostRule::Any);
    };
    let lower = raw.to_ascii_lowercase();
    let no_port = host_view(&lower);
    if strip_port(&lower) != lower {
        found.push((
            IssueKind::Warning,
            format!("host `{raw}`: the port is ignored, hosts are matched without it"),
        ));
    }
    let mut err = |msg: String| {
        found.push((IssueKind::Error, format!("host `{raw}`: {msg}")));
        None
    };
    let (wild, name) = match no_port.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, no_port),
    };
    if name.is_empty() {
        return err("empty host".into());
    }
    if name.contains('*') {
        return err("`*` is only allowed as a whole leading label (`*.example.com`)".into());
    }
    if !name.is_ascii() {
        return err("internationalised names must be written in their `xn--` form".into());
    }
    let ipv6 = name.starts_with('[') && name.ends_with(']');
    let valid = if ipv6 {
        name[1..name.len() - 1]
            .bytes()
            .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
    } else {
        name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
    };
    if !valid || (wild && ipv6) {
        return err("not a valid host name".into());
    }
    Some(if wild {
        HostRule::Suffix(format!(".{name}"))
    } else {
        HostRule::Exact(name.to_owned())
    })
}

fn parse_methods(methods: &[String], found: &mut Found) -> Option<MethodRule> {
    if methods.is_empty() {
        return Some(MethodRule::Any);
    }
    let mut ok = true;
    for m in methods {
        let token = m.bytes().next().is_some_and(|c| c.is_ascii_uppercase())
            && m.bytes()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
        if !token {
            ok = false;
            found.push((
                IssueKind::Error,
                format!(
                    "method `{m}` must be an upper-case name like `GET` (use an empty list for any method)"
                ),
            ));
        }
    }
    if !ok {
        return None;
    }
    let mut set = methods.to_vec();
    if set.iter().any(|m| m == "GET") {
        set.push("HEAD".into());
    }
    set.sort_unstable();
    set.dedup();
    Some(MethodRule::Only(set))
}

/// Warn about routes that can never be chosen because an earlier route on
/// the same key always wins.
fn lint_shadowing(slots: &[Vec<usize>], routes: &[Compiled], issues: &mut Vec<RouteIssue>) {
    for slot in slots {
        for (j, later) in slot.iter().map(|&r| &routes[r]).enumerate() {
            for earlier in slot[..j].iter().map(|&r| &routes[r]) {
                let duplicate = earlier.host == later.host
                    && earlier.methods == later.methods
                    && earlier
                        .template
                        .constraint_sources()
                        .eq(later.template.constraint_sources());
                let shadowed = !earlier.template.has_constraints()
                    && earlier.host.covers(&later.host)
                    && earlier.methods.covers(&later.methods);
                let what = if duplicate {
                    "is an exact duplicate of"
                } else if shadowed {
                    "is shadowed by"
                } else {
                    continue;
                };
                issues.push(RouteIssue {
                    route: later.index,
                    kind: IssueKind::Warning,
                    message: format!(
                        "`{}` {what} route {} `{}` and can never match",
                        later.template.source, earlier.index, earlier.template.source
                    ),
                });
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: Option<&str>, methods: &[&str], path: &str) -> RouteSpec {
        RouteSpec {
            host: host.map(str::to_owned),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            path: path.to_owned(),
        }
    }

    fn any(path: &str) -> RouteSpec {
        spec(None, &[], path)
    }

    /// Build and insist there are no issues at all.
    fn clean(specs: &[RouteSpec]) -> Router {
        let (router, issues) = Router::build(specs);
        assert!(issues.is_empty(), "unexpected issues: {issues:#?}");
        router
    }

    fn route_of(r: &Router, host: Option<&str>, method: &str, path: &str) -> Option<usize> {
        r.at(host, method, path).map(|m| m.route)
    }

    #[test]
    fn router_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Router>();
    }

    #[test]
    fn static_beats_param_regardless_of_order() {
        let r = clean(&[any("/api/users/{id}"), any("/api/users/me")]);
        let cases = [
            ("/api/users/me", Some(1)),
            ("/api/users/42", Some(0)),
            ("/api/users/me/", None),
            ("/api/users", None),
            ("/api/users/", None),
            ("/API/users/me", None),
        ];
        for (path, want) in cases {
            assert_eq!(route_of(&r, None, "GET", path), want, "{path}");
        }
        let m = r.at(None, "GET", "/api/users/42").unwrap();
        assert_eq!(m.params, vec![("id".to_owned(), "42".to_owned())]);
        assert_eq!(m.param("id"), Some("42"));
    }

    #[test]
    fn no_fallback_to_less_specific_template() {
        let r = clean(&[
            spec(None, &["GET"], "/api/users/me"),
            any("/api/users/{id}"),
        ]);
        assert_eq!(route_of(&r, None, "GET", "/api/users/me"), Some(0));
        // POST /api/users/me does not fall through to the param route.
        assert_eq!(route_of(&r, None, "POST", "/api/users/me"), None);
        assert_eq!(route_of(&r, None, "POST", "/api/users/7"), Some(1));
    }

    #[test]
    fn regex_constraints_are_anchored_and_fall_through_on_same_key() {
        let r = clean(&[
            any("/items/{id:[0-9]{1,6}}"),
            any("/items/{slug:[a-z]+}"),
            any("/v/{name:j.rg}"),
        ]);
        let cases = [
            ("/items/123", Some(0)),
            ("/items/123456", Some(0)),
            ("/items/1234567", None),
            ("/items/12a", None),
            ("/items/abc", Some(1)),
            ("/items/ABC", None),
            // Constraints see the decoded value.
            ("/v/j%C3%B6rg", Some(2)),
            ("/v/xjorg", None),
        ];
        for (path, want) in cases {
            assert_eq!(route_of(&r, None, "GET", path), want, "{path}");
        }
        assert_eq!(r.at(None, "GET", "/items/abc").unwrap().params[0].0, "slug");
    }

    #[test]
    fn methods_filter_with_head_implied_by_get() {
        let r = clean(&[
            spec(None, &["GET"], "/a"),
            spec(None, &["POST", "PUT"], "/a"),
            spec(None, &["HEAD"], "/h"),
            spec(None, &[], "/any"),
        ]);
        let cases = [
            ("GET", "/a", Some(0)),
            ("HEAD", "/a", Some(0)),
            ("get", "/a", None),
            ("Put", "/a", None),
            ("POST", "/a", Some(1)),
            ("PUT", "/a", Some(1)),
            ("DELETE", "/a", None),
            ("HEAD", "/h", Some(2)),
            ("GET", "/h", None),
            ("PROPFIND", "/any", Some(3)),
        ];
        for (method, path, want) in cases {
            assert_eq!(route_of(&r, None, method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn hosts_exact_and_wildcard() {
        let r = clean(&[
            spec(Some("admin.example.com"), &[], "/x"),
            spec(Some("*.example.com"), &[], "/x"),
            spec(None, &[], "/x"),
            spec(Some("Only.Example.org"), &[], "/y"),
        ]);
        let cases = [
            (Some("admin.example.com"), "/x", Some(0)),
            (Some("ADMIN.example.COM"), "/x", Some(0)),
            (Some("admin.example.com."), "/x", Some(0)),
            (Some("admin.example.com:8443"), "/x", Some(0)),
            (Some("a.example.com"), "/x", Some(1)),
            (Some("a.b.example.com"), "/x", Some(1)),
            (Some("example.com"), "/x", Some(2)),
            (Some(".example.com"), "/x", Some(2)),
            (Some("evilexample.com"), "/x", Some(2)),
            (None, "/x", Some(2)),
            (Some("only.example.org"), "/y", Some(3)),
            (Some("x.only.example.org"), "/y", None),
            (None, "/y", None),
        ];
        for (host, path, want) in cases {
            assert_eq!(route_of(&r, host, "GET", path), want, "{host:?} {path}");
        }
    }

    #[test]
    fn a_hosts_own_routes_take_precedence_with_no_fallback() {
        let r = clean(&[
            any("/public/**"),                                   // 0
            spec(Some("admin.example"), &[], "/**"),             // 1
            spec(Some("*.example.com"), &[], "/api/{x}"),        // 2
            spec(Some("a.example.com"), &[], "/other"),          // 3
            spec(Some("*.b.example.com"), &[], "/api/{x}"),      // 4
            any("/api/{x}"),                                     // 5
            spec(Some("admin.example"), &["GET"], "/public/ro"), // 6
        ]);
        let cases = [
            // The admin vhost's `/**` wins over the more specific host-less
            // `/public/**`: the host is decided before the path.
            (Some("admin.example"), "GET", "/public/x", Some(1)),
            (Some("ADMIN.Example.:8443"), "GET", "/public/x", Some(1)),
            (Some("admin.example"), "GET", "/public/ro", Some(6)),
            // No fallback: a method or a path the vhost does not route is
            // no route, not the host-less route.
            (Some("admin.example"), "POST", "/public/ro", None),
            (Some("admin.example"), "GET", "/", None),
            (Some("admin.example"), "GET", "/api/1", Some(1)),
            (Some("other.test"), "GET", "/public/x", Some(0)),
            (None, "GET", "/public/x", Some(0)),
            (Some("admin.example.org"), "GET", "/public/x", Some(0)),
            (Some("z.example.com"), "GET", "/api/1", Some(2)),
            (Some("z.example.com"), "GET", "/public/x", None),
            // Exact before wildcard, and no fallback from exact to wildcard.
            (Some("a.example.com"), "GET", "/other", Some(3)),
            (Some("a.example.com."), "GET", "/other", Some(3)),
            (Some("a.example.com"), "GET", "/api/1", None),
            // The longest wildcard wins.
            (Some("x.b.example.com"), "GET", "/api/1", Some(4)),
            (Some("x.y.b.example.com"), "GET", "/api/1", Some(4)),
            (Some("b.example.com"), "GET", "/api/1", Some(2)),
            (Some("x..b.example.com"), "GET", "/api/1", Some(2)),
            (Some("example.com"), "GET", "/api/1", Some(5)),
            (Some(".example.com"), "GET", "/api/1", Some(5)),
        ];
        for (host, method, path, want) in cases {
            assert_eq!(
                route_of(&r, host, method, path),
                want,
                "{host:?} {method} {path}"
            );
        }
        // explain says why the host-less route did not apply.
        let why = r.why_not(Some("admin.example"), "GET", "/public/x");
        let (_, reason) = why.iter().find(|(i, _)| *i == 0).unwrap();
        assert!(
            reason.contains("served by the routes for admin.example")
                && reason.contains("no fallback"),
            "{reason}"
        );
        assert!(why.iter().all(|(i, _)| *i != 1), "{why:?}");
        // A host whose only route failed to build still owns its requests.
        let (r, _) = Router::build(&[any("/**"), spec(Some("admin.example"), &[], "/x/{")]);
        assert_eq!(route_of(&r, Some("admin.example"), "GET", "/x/1"), None);
        assert_eq!(route_of(&r, Some("other.example"), "GET", "/x/1"), Some(0));
    }

    #[test]
    fn catch_all_needs_at_least_one_segment() {
        let r = clean(&[any("/static/**"), any("/o/{org}/r/{repo}/**"), any("/")]);
        let cases: &[(&str, Option<(usize, &str)>)] = &[
            ("/static/a", Some((0, "a"))),
            ("/static/a/b", Some((0, "a/b"))),
            ("/static/a/b/", Some((0, "a/b/"))),
            ("/static/a%20b/c", Some((0, "a b/c"))),
            ("/static", None),
            ("/static/", None),
            ("/", Some((2, ""))),
        ];
        for (path, want) in cases {
            let got = r
                .at(None, "GET", path)
                .map(|m| (m.route, m.param("**").unwrap_or("").to_owned()));
            assert_eq!(got, want.map(|(i, v)| (i, v.to_owned())), "{path}");
        }
        let m = r.at(None, "GET", "/o/acme/r/gate/src/main.rs").unwrap();
        let names: Vec<_> = m
            .params
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            names,
            [("org", "acme"), ("repo", "gate"), ("**", "src/main.rs")]
        );

        let root = clean(&[any("/**")]);
        assert_eq!(route_of(&root, None, "GET", "/"), None);
        assert_eq!(route_of(&root, None, "GET", "/a"), Some(0));
    }

    #[test]
    fn first_candidate_on_a_key_wins() {
        let r = clean(&[
            spec(None, &["GET"], "/p/{a}"),
            spec(Some("x.test"), &[], "/p/{c}"),
            spec(None, &[], "/p/{b}"),
        ]);
        let cases = [
            (None, "GET", (0, "a")),
            // x.test has its own routes: the host-less ones do not apply.
            (Some("x.test"), "GET", (1, "c")),
            (Some("x.test"), "POST", (1, "c")),
            (None, "POST", (2, "b")),
            (Some("y.test"), "POST", (2, "b")),
        ];
        for (host, method, want) in cases {
            let m = r.at(host, method, "/p/1").unwrap();
            assert_eq!((m.route, m.params[0].0.as_str()), want, "{host:?} {method}");
        }
    }

    #[test]
    fn trailing_slash_and_empty_segments_are_significant() {
        let (r, issues) = Router::build(&[any("/a"), any("/a/"), any("/m/{x}/b"), any("/e//f")]);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!((issues[0].route, issues[0].kind), (3, IssueKind::Warning));
        assert_eq!(route_of(&r, None, "GET", "/a"), Some(0));
        assert_eq!(route_of(&r, None, "GET", "/a/"), Some(1));
        // A param never matches an empty segment (merge_slashes off input).
        assert_eq!(route_of(&r, None, "GET", "/m//b"), None);
        assert_eq!(route_of(&r, None, "GET", "/e//f"), Some(3));
    }

    #[test]
    fn params_are_decoded() {
        let r = clean(&[any("/u/{name}")]);
        let cases = [
            ("/u/j%C3%B6rg", "jörg"),
            ("/u/a%20b", "a b"),
            ("/u/q%3F", "q?"),
            ("/u/x%25y", "x%y"),
            ("/u/a+b", "a+b"),
        ];
        for (path, want) in cases {
            assert_eq!(r.at(None, "GET", path).unwrap().params[0].1, want, "{path}");
        }
    }

    #[test]
    fn lints_shadowed_and_duplicate_routes() {
        let specs = [
            any("/s/{a}"),                                // 0
            spec(None, &["GET"], "/s/{b}"),               // 1 shadowed by 0
            spec(None, &["GET"], "/d/{x:[0-9]+}"),        // 2
            spec(None, &["GET"], "/d/{y:[0-9]+}"),        // 3 duplicate of 2
            any("/c/{x:[0-9]+}"),                         // 4
            any("/c/{y}"),                                // 5 fine: 4 is constrained
            spec(Some("a.test"), &[], "/h"),              // 6
            any("/h"),                                    // 7 fine: 6 is host-specific
            spec(Some("*.test"), &["GET", "POST"], "/w"), // 8
            spec(Some("a.b.test"), &["HEAD"], "/w"),      // 9 fine: own vhost
            spec(Some("*.b.test"), &["GET"], "/w"),       // 10 fine: own vhost
            spec(None, &["GET"], "/w"),                   // 11 fine: any host
            spec(None, &["GET"], "/m"),                   // 12
            spec(None, &["GET", "DELETE"], "/m"),         // 13 fine: DELETE new
            spec(Some("*.test"), &["GET"], "/w"),         // 14 shadowed by 8
            spec(Some("A.b.test"), &["HEAD"], "/w"),      // 15 duplicate of 9
        ];
        let (_, issues) = Router::build(&specs);
        let got: Vec<(usize, IssueKind, bool)> = issues
            .iter()
            .map(|i| (i.route, i.kind, i.message.contains("duplicate")))
            .collect();
        assert_eq!(
            got,
            [
                (1, IssueKind::Warning, false),
                (3, IssueKind::Warning, true),
                (14, IssueKind::Warning, false),
                (15, IssueKind::Warning, true),
            ],
            "{issues:#?}"
        );
        assert!(
            issues[0].message.contains("shadowed by route 0"),
            "{}",
            issues[0]
        );
    }

    #[test]
    fn template_errors_drop_the_route() {
        let bad = [
            "files/{x}",
            "",
            "/files/{name}.txt",
            "/files/x{name}",
            "/a/{x}/{x}",
            "/a/**/b",
            "/a/**x",
            "/a/*",
            "/a/{x:a/b}",
            "/a/{x:[^/]+}",
            "/a/{x:(}",
            "/a/{x:[0-9]+)|(.*}",
            "/a/{}",
            "/a/{1x}",
            "/a/{x-y}",
            "/a/{**}",
            "/a/{x:}",
            "/a/{x",
            "/a/{x:[0-9]{1,6}",
            "/a/}",
            "/a/%7e",
            "/a/jobs%3Apurge",
            "/a/b|c",
            "/a/[b]",
            "/a/%2F",
            "/a/..",
            "/a/./b",
            "/a b",
            "/a?b",
            "/a#b",
        ];
        for path in bad {
            let (r, issues) = Router::build(&[any(path)]);
            assert!(
                issues
                    .iter()
                    .any(|i| i.kind == IssueKind::Error && i.route == 0),
                "{path:?} should be an error, got {issues:?}"
            );
            assert!(r.routes.is_empty(), "{path:?} should not be loaded");
        }
    }

    #[test]
    fn an_escaped_delimiter_matches_the_literal_it_spells() {
        let r = clean(&[
            any("/v1/jobs:purge"),
            any("/v1/**"),
            any("/u/a%7Cb"),
            any("/u/**"),
        ]);
        for (path, want) in [
            ("/v1/jobs%3Apurge", 0),
            ("/v1/jobs%3apurge", 0),
            ("/v1/jobs:purge", 0),
            ("/u/a|b", 2),
            ("/u/a%7cb", 2),
        ] {
            let c = canonicalize(path, &CanonOptions::default()).unwrap();
            let m = r.at(None, "GET", c.routing_path()).unwrap();
            assert_eq!(m.route, want, "{path}");
        }
    }

    #[test]
    fn tricky_templates_parse() {
        let r = clean(&[
            any("/a/{id:[0-9]{1,6}}"),
            any("/b/{x:[{}]+}/z"),
            any("/c/{x:a\\}b}"),
            any("/d/{x:[]a]+}"),
            any("/e/{x:[^]a]{2}}/{_y2}"),
            any("/f;v=1/{x:(?i)ab}"),
        ]);
        assert_eq!(route_of(&r, None, "GET", "/a/123456"), Some(0));
        assert_eq!(route_of(&r, None, "GET", "/b/%7B%7D/z"), Some(1));
        assert_eq!(route_of(&r, None, "GET", "/c/a%7Db"), Some(2));
        assert_eq!(route_of(&r, None, "GET", "/d/a%5D"), Some(3));
        assert_eq!(route_of(&r, None, "GET", "/e/xy/z"), Some(4));
        assert_eq!(route_of(&r, None, "GET", "/f;v=1/AB"), Some(5));
        // Same key, different names and constraints: no matchit conflict.
        let r = clean(&[any("/api/c/{cid:[0-9]+}"), any("/api/c/{id}")]);
        assert_eq!(r.at(None, "GET", "/api/c/7").unwrap().params[0].0, "cid");
        assert_eq!(r.at(None, "GET", "/api/c/x").unwrap().params[0].0, "id");
    }

    #[test]
    fn host_and_method_errors() {
        let cases: &[(Option<&str>, &[&str], IssueKind)] = &[
            (None, &["get"], IssueKind::Error),
            (None, &["*"], IssueKind::Error),
            (None, &[""], IssueKind::Error),
            (None, &["GET", "Post"], IssueKind::Error),
            (Some(""), &[], IssueKind::Error),
            (Some("*example.com"), &[], IssueKind::Error),
            (Some("a.*.com"), &[], IssueKind::Error),
            (Some("*"), &[], IssueKind::Error),
            (Some("*."), &[], IssueKind::Error),
            (Some("a..com"), &[], IssueKind::Error),
            (Some("b\u{fc}cher.de"), &[], IssueKind::Error),
            (Some("a.com/x"), &[], IssueKind::Error),
            (Some("example.com:8080"), &[], IssueKind::Warning),
        ];
        for (host, methods, kind) in cases {
            let (r, issues) = Router::build(&[spec(*host, methods, "/x")]);
            let kinds: Vec<_> = issues.iter().map(|i| i.kind).collect();
            assert_eq!(kinds, [*kind], "{host:?} {methods:?}: {issues:?}");
            assert_eq!(r.routes.len(), usize::from(*kind == IssueKind::Warning));
        }
        // The port is dropped from the spec, so the route still matches.
        let (r, _) = Router::build(&[spec(Some("Example.com:8080"), &["M-SEARCH"], "/x")]);
        assert_eq!(route_of(&r, Some("example.com"), "M-SEARCH", "/x"), Some(0));
    }

    #[test]
    fn all_issues_are_collected_in_route_order() {
        let specs = [
            spec(Some("*bad"), &["get"], "/a/{x}.txt"), // three errors
            any("/ok"),
            any("/files/{name}"),
            any("/files/**"), // matchit conflict with route 2
        ];
        let (r, issues) = Router::build(&specs);
        let routes: Vec<_> = issues.iter().map(|i| i.route).collect();
        assert_eq!(routes, [0, 0, 0, 3], "{issues:#?}");
        assert!(issues.iter().all(|i| i.kind == IssueKind::Error));
        assert!(
            issues[3].message.contains("route 2 `/files/{name}`"),
            "{}",
            issues[3]
        );
        assert!(issues[3].to_string().starts_with("route 3: error: "));
        assert_eq!(route_of(&r, None, "GET", "/ok"), Some(1));
        assert_eq!(route_of(&r, None, "GET", "/files/a"), Some(2));
        assert_eq!(route_of(&r, None, "GET", "/files/a/b"), None);
    }

    #[test]
    fn why_not_explains() {
        let specs = [
            spec(Some("a.test"), &["GET"], "/u/{id:[0-9]+}"), // 0
            spec(None, &["POST"], "/u/{id}"),                 // 1
            any("/u/{name}"),                                 // 2 winner for GET
            any("/u/{other}"),                                // 3 shadowed
            any("/{*}"),                                      // 4 rejected (bad name)
            any("/**"),                                       // 5 less specific
            any("/other"),                                    // 6 unrelated
        ];
        let (r, _) = Router::build(&specs);
        let why = r.why_not(Some("b.test"), "GET", "/u/abc");
        let idx: Vec<_> = why.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, [0, 1, 3, 5], "{why:#?}");
        assert!(why[0].1.contains("host b.test"), "{}", why[0].1);
        assert!(
            why[0].1.contains("fails constraint `[0-9]+`"),
            "{}",
            why[0].1
        );
        assert!(why[1].1.contains("method GET not allowed"), "{}", why[1].1);
        assert!(why[2].1.contains("shadowed: route 2"), "{}", why[2].1);
        assert!(why[3].1.contains("no fallback"), "{}", why[3].1);

        let none = clean(&[any("/a"), any("/b/{x}")]);
        let why = none.why_not(None, "GET", "/c");
        assert_eq!(why.len(), 2);
        assert!(why[1].1.contains("does not match template `/b/{x}`"));
    }

    #[test]
    fn ten_thousand_routes_build_and_match() {
        let specs: Vec<_> = (0..10_000)
            .map(|i| spec(None, &["GET"], &format!("/api/svc{i}/items/{{id}}")))
            .collect();
        let r = clean(&specs);
        for i in [0, 1, 4_999, 9_998, 9_999] {
            let m = r
                .at(None, "GET", &format!("/api/svc{i}/items/{i}"))
                .unwrap();
            assert_eq!(m.route, i);
            assert_eq!(m.params, [("id".to_owned(), i.to_string())]);
        }
        assert_eq!(route_of(&r, None, "GET", "/api/svc10000/items/1"), None);
        assert_eq!(route_of(&r, None, "GET", "/api/svc1/items"), None);
    }

    #[test]
    fn template_matches_agrees_with_tree() {
        let templates = [
            "/", "/a", "/a/", "/a/{x}", "/a/{x}/b", "/a/**", "/**", "/a/{x}/",
        ];
        let paths = [
            "/", "/a", "/a/", "/a/b", "/a/b/", "/a/b/c", "/a//b", "/a/x/b", "/b", "/a/b/b/",
        ];
        for t in templates {
            let r = clean(&[any(t)]);
            for p in paths {
                assert_eq!(
                    r.routes[0].template.matches(p),
                    r.at(None, "GET", p).is_some(),
                    "template {t} path {p}"
                );
            }
        }
    }
}
