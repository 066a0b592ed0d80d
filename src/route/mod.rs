//! Request routing for rolegate: turn a raw request target into the one
//! canonical path, then find the route it belongs to.
//!
//! Owns: path canonicalisation ([`canonicalize`], in `canonical.rs`) and the
//! route table ([`Router`], in `router.rs`). Must not: authenticate,
//! evaluate policy, touch the network or the runtime, or depend on any
//! other rolegate module — it is pure, synchronous and built only on `std`,
//! `matchit`, `regex` and `thiserror`, so it can be tested (and fuzzed) in
//! isolation.
//!
//! Per request the gateway does, in this order:
//!
//! 1. `canonicalize(target)` **once**. A refusal is a 400; nothing else runs.
//! 2. `Router::at(host, method, &canonical.path)` to find the route. No
//!    match is a deny.
//! 3. Authentication and policy (elsewhere) against the matched route.
//! 4. Forward `canonical.path` (plus the original query, unchanged) — the
//!    *same* string that was matched, so the proxy and the backend can never
//!    disagree about which path was authorised.
//!
//! Everything fails closed: ambiguous paths are refused, not repaired, and
//! a route with a configuration error is left out of the table (and
//! reported) rather than guessed at.

mod canonical;
mod router;

pub use canonical::{CanonOptions, Canonical, PathError, canonicalize, decode_param};
pub use router::{IssueKind, RouteIssue, RouteMatch, RouteSpec, Router};

/// The standard methods (RFC 9110 §9).
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// A method that spells a standard method in another case (`get`, `Post`).
/// Methods are case-sensitive, so routing never matches it as the standard
/// one, but many backends fold method case and would run it as such: the
/// gateway, `explain` and `rolegate test` all refuse it (400 `method_case`).
pub fn is_miscased_method(method: &str) -> bool {
    STANDARD_METHODS
        .iter()
        .any(|s| *s != method && s.eq_ignore_ascii_case(method))
}
