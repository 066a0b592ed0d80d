//! rolegate: a reverse-proxy authorization gateway.
//!
//! It stands in front of dashboards built without fine-grained access
//! control and, for every request, decides at the edge who may do what.
//!
//! # Layout
//!
//! ```text
//! accept ─ proxy::listener          TCP/TLS accept (proxy::tls), ALPN → HTTP/1.1 (with upgrades) or HTTP/2, h2c,
//!                                   header limits, connection limits and keep-alive idle timeout
//!                                   (proxy::limits), several listeners, graceful shutdown
//!   │  per request: runtime loaded once (ArcSwap) → proxy::pipeline::Gateway::handle
//!   ▼
//! 0 limits       proxy::limits               target length 414, header count 431, per-IP rate 429
//! 1 normalize    route::canonicalize         one canonical path, or 400
//! 2 route        route::Router::at           (host, method, path) → route, or 404
//! 3 authenticate auth::Authenticator         bearer/cookie JWT → Principal, or 401; per-principal rate 429
//! 4 session      session::Store::check       per-role idle timeout, lifetime, revocation, deactivation, or 401
//! 5 authorize    policy::decide              capabilities ∩ scope ∩ conditions, or 403;
//!                relations::resolve          relations the decision depends on, pulled + cached
//! 6 forward      proxy::headers, upstream    strip spoofable headers, inject identity, stream
//!                proxy::pool                 pick a server of the upstream (balancing, passive +
//!                                            active health); 503 when all are down
//!                proxy::body                 (request body: size limit, receive timeouts → 408)
//! 7 respond      mask::BodyMasker            PII masked unless the principal holds `unmask_with` (then audited);
//!                                            a long response is cut when its session ends
//!                proxy::websocket            websocket routes: frames relayed both ways, closed (1008)
//!                                            within a second of the session's end (pushed, not polled)
//! 8 log          proxy::pipeline::log        access + decision line, always
//! ```
//!
//! Modules:
//! - [`route`], [`policy`], [`mask`]: pure leaves, no I/O.
//! - [`config`]: YAML → validated [`Runtime`]; collects every error.
//! - [`auth`]: token extraction, JWT verification, verified-token cache.
//! - [`session`]: the session table, its journal, the embedded and Redis stores.
//! - [`mask`]: streaming, validating JSON masker; NDJSON/SSE/CSV framing;
//!   gzip/deflate/br/zstd decoding (a leaf: no tokio, no hyper).
//! - [`relations`]: contextual relations pulled from an upstream and
//!   cached; the pipeline hands the answers to `policy::decide`.
//! - [`admin`]: the admin listener (revoke, deactivate, list, health,
//!   reload, status).
//! - [`reload`]: hot reload (SIGHUP, file watcher, admin call): a whole
//!   new runtime swapped in, or none.
//! - [`proxy`]: the listener, the pipeline and its pieces.
//! - [`error`]: typed refusals → status + stable JSON error code.
//! - [`explain`], [`policytest`]: offline decisions for `rolegate explain`
//!   and `rolegate test`, using the same code paths as the proxy.
//! - [`demo`]: the built-in sample upstream and embedded demo config.
//! - [`telemetry`]: log setup and the unmasked-access audit log.

// No panics on the request path: `unwrap`/`expect` only in tests
// (`clippy.toml` allows them there).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod demo;
pub mod directory;
pub mod error;
pub mod explain;
pub mod fields;
pub mod hashing;
pub mod mask;
pub mod policy;
pub mod policytest;
pub mod proxy;
pub mod relations;
pub mod reload;
pub mod route;
pub mod session;
pub mod telemetry;
pub mod token;

pub use config::Runtime;
pub use error::{Deny, Fault, Refusal};
pub use proxy::Gateway;
