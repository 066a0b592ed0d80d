//! Configuration: YAML files → validated [`Runtime`].
//!
//! `file` is the raw serde schema; `build` cross-checks it and compiles the
//! router, the policy, the issuers and the upstreams, collecting *all*
//! errors (with file:line) so `rolegate check` reports everything at once.
//! A config with any error never becomes a `Runtime`: there is no partial
//! config. Nothing here touches a request.

mod build;
pub mod file;

use std::net::SocketAddr;
use std::time::Duration;

pub use build::{
    Diagnostic, Loaded, RulesSource, Severity, Sources, load, load_from_text, parse_duration,
    rules_files,
};

use crate::auth::Authenticator;
use crate::mask;
use crate::policy::{Policy, Principal, RoutePolicy};
use crate::route::{CanonOptions, RouteSpec, Router};
use crate::session::SessionSettings;
use std::sync::Arc;

/// Everything a request needs, compiled once and swapped whole on reload,
/// so one request never sees two rule sets.
pub struct Runtime {
    pub listen: ListenSettings,
    pub canon: CanonOptions,
    pub router: Router,
    /// Indexed like the router's `RouteMatch::route`.
    pub routes: Vec<Route>,
    pub policy: Policy,
    pub auth: Authenticator,
    pub upstreams: Vec<Upstream>,
    pub forward: Arc<ForwardSettings>,
    /// `errors.expose_reason`: show the policy/token reason to clients.
    pub expose_reason: bool,
    pub sessions: SessionSettings,
    pub admin: Option<AdminSettings>,
    pub masking: MaskingSettings,
    /// `relations:` — where each named relation is answered (a relation
    /// leaf whose name is not here is always unknown).
    pub relations: std::collections::BTreeMap<String, RelationSource>,
    /// Pulled relation answers. Part of the runtime, so a reload (which may
    /// repoint a source or shorten its TTLs) starts with none, and a
    /// request still running on the old runtime fills only the old cache.
    pub relation_cache: crate::relations::Cache,
    /// The user directory (`directory:`), if configured.
    pub directory: Option<crate::directory::DirectorySettings>,
    /// Masks with `owner_columns`, by name (the admin API's `/masks/...`).
    pub owner_masks: std::collections::BTreeMap<String, Arc<OwnerColumns>>,
    /// `reload:`: the file watcher.
    pub reload: ReloadSettings,
    /// `shutdown.drain_timeout`: how long in-flight requests and
    /// websockets get to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// This runtime's number among those built by the process (values
    /// derived from a principal under one runtime are kept per number).
    pub generation: std::num::NonZeroU32,
    /// Raised by each reload that closes websockets (set by the gateway
    /// when it swaps this runtime in): a websocket opened under an older
    /// number is closed.
    pub websocket_epoch: u64,
    /// Raised by each reload that cuts streams (set like
    /// `websocket_epoch`): an answer authorized under an older number is
    /// cut at its next check.
    pub stream_epoch: u64,
}

/// The next runtime's `generation`: 1, 2, … (0 skipped if it ever wraps).
pub fn next_generation() -> std::num::NonZeroU32 {
    static LAST: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    loop {
        let n = LAST
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(1);
        if let Some(n) = std::num::NonZeroU32::new(n) {
            return n;
        }
    }
}

/// `reload:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadSettings {
    /// Reload when a watched file changes.
    pub watch: bool,
    /// How often the watched files' metadata is read.
    pub watch_interval: Duration,
    /// A reload that changes the policy closes open websockets
    /// (`reload.websockets: close`).
    pub close_websockets: bool,
    /// A reload that changes the policy cuts answers still being sent
    /// (`reload.streams: close`).
    pub cut_streams: bool,
}

/// Where a relation's answers come from (`relations.NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelationSource {
    Pull(PullSource),
    Push(PushSource),
}

impl Runtime {
    /// Starts the active health checkers of the upstreams that have one
    /// (once each; they stop when this runtime is dropped). Called when a
    /// runtime starts serving; `upstream::send` also calls it, so a
    /// runtime that was never started this way checks from its first
    /// request on.
    pub fn start_health_checks(&self) {
        for u in &self.upstreams {
            u.pool.start_checks();
        }
    }

    /// The inactivity timeout the session stage applies to `p`: the
    /// smallest `idle_timeout` among the roles it holds
    /// ([`Policy::idle_timeout`]), else `sessions.idle_timeout`. The one
    /// place this rule is resolved (requests, websockets, streamed answers,
    /// policy test cases with `idle_for`).
    pub fn idle_timeout(&self, p: &Principal) -> Duration {
        p.idle_timeout.get_or_init(self.generation, || {
            self.policy
                .idle_timeout(p)
                .unwrap_or(self.sessions.idle_timeout)
        })
    }
}

/// `relations.NAME.pull`: the relation is answered by
/// `GET <upstream><path>?subject=..&issuer=..&object=..` (see `relations`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSource {
    /// Index into `Runtime::upstreams`: its client, TLS and base path.
    pub upstream: usize,
    /// Starts with `/`; appended to the upstream's base path.
    pub path: String,
    /// The whole call (connect, head and body) must finish within this.
    pub timeout: Duration,
    /// How long a `true` answer is reused.
    pub cache_ttl: Duration,
    /// How long a `false` answer is reused.
    pub negative_ttl: Duration,
    /// Cached answers kept for this relation at most.
    pub cache_entries: usize,
}

/// `relations.NAME.push`: the relation holds exactly for the tuples pushed
/// through the admin API (kept in the session store).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushSource {
    /// Expiry of a tuple pushed without a `ttl`; `None`: until removed.
    pub default_ttl: Option<Duration>,
    /// Longest `ttl` accepted; `None`: no bound.
    pub max_ttl: Option<Duration>,
}

/// The admin listener.
pub struct AdminSettings {
    pub addr: SocketAddr,
    /// The bearer token admin calls must present.
    pub token: String,
}

/// `listen` (and `listeners`): the public listeners and the limits they
/// share.
pub struct ListenSettings {
    /// The first listener's address (the only one with the `listen.addr`
    /// form).
    pub addr: SocketAddr,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    /// Largest websocket message or frame (each is held whole while it is
    /// relayed, unlike a streamed body).
    pub max_websocket_message_bytes: u64,
    /// Also bounds the TLS handshake.
    pub header_read_timeout: Duration,
    /// HTTP/2: streams open at once per connection.
    pub max_concurrent_streams: u32,
    /// A connection with no request in flight is closed after this
    /// (HTTP/1.1: also bounded by `header_read_timeout`, see the README).
    pub keepalive_timeout: Duration,
    /// The whole request, head and body, must be received within this.
    pub request_timeout: Duration,
    /// Longest wait for the next byte of a request body.
    pub body_read_timeout: Duration,
    /// A connection whose client accepts no bytes of what the gateway is
    /// sending it for this long is closed (nginx `send_timeout`).
    pub send_timeout: Duration,
    /// A websocket frame or fragmented message (either way) must be read
    /// whole within this of its first byte.
    pub websocket_message_timeout: Duration,
    /// A websocket without a data message (either way) for this long is
    /// closed.
    pub websocket_idle_timeout: Duration,
    /// Longest request target (path and query) in bytes: 414 above.
    pub max_uri_bytes: usize,
    /// Most header fields in a request: 431 above.
    pub max_headers: usize,
    /// Client connections open at once over every public listener.
    pub max_connections: usize,
    /// Client connections open at once from one address (IPv6: one /64).
    pub max_connections_per_ip: usize,
    /// HTTP/2 requests in flight at once from one address, over all its
    /// connections: 429 above.
    pub max_streams_per_ip: usize,
    pub rate_limit: RateLimits,
    /// Every public listener, in config order (at least one).
    pub listeners: Vec<Listener>,
}

/// `listen.rate_limit`: token buckets checked by the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Checked before authentication, keyed by client address.
    pub per_ip: Option<Rate>,
    /// Checked after authentication, keyed by issuer + subject.
    pub per_principal: Option<Rate>,
}

/// One token bucket: `count` requests per `period`, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

/// One public listener.
pub struct Listener {
    pub addr: SocketAddr,
    /// TLS: the rustls config (certificates, SNI, client auth, ALPN).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The listener asks for client certificates (`tls.client_auth`).
    pub client_auth: Option<crate::proxy::tls::ClientAuth>,
    /// SHA-256 of the `client_auth.ca` bundle file: a reload that changes
    /// it changes who may connect, so the listener's open connections are
    /// closed (gracefully) and clients handshake again.
    pub client_ca_digest: Option<Vec<u8>>,
    /// HTTP/2 with prior knowledge on a plain listener.
    pub h2c: bool,
    /// Every request is answered with a redirect to https.
    pub redirect: Option<Redirect>,
}

/// Where a `redirect_https` listener sends clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// `https://<request host>:<port><target>` (no `:443`).
    Port(u16),
    /// `<base URL><target>` (the base without a trailing `/`).
    Url(String),
}

/// A route's `client_cert:` requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCertRule {
    /// Any certificate the listener's CA bundle verified.
    Required,
    /// A verified certificate whose common name (exact) or a DNS name
    /// (case-insensitive) is in the list.
    Allow(Vec<String>),
}

/// One compiled route.
pub struct Route {
    pub name: Arc<str>,
    pub spec: RouteSpec,
    pub policy: RoutePolicy,
    /// Index into `Runtime::upstreams`.
    pub upstream: usize,
    /// `file:line` of the definition, for logs and `explain`.
    pub origin: String,
    /// `activity: passive`: checked, but never keeps a session alive.
    pub passive: bool,
    /// `websocket: true`: websocket upgrades are relayed (never masked).
    pub websocket: bool,
    /// `websocket_origins`, lower-cased: other page origins allowed to open
    /// a cookie-authenticated websocket (the request's own host always is).
    pub websocket_origins: Vec<String>,
    /// Forward the verified credential (route, else upstream, else
    /// `forward.pass_credentials`).
    pub pass_credentials: bool,
    /// `mask:` — the response masking of this route.
    pub mask: Option<RouteMask>,
    /// `record:` — the path parameter naming the record (audit log).
    pub record: Option<String>,
    /// `client_cert:` — a verified client certificate is required.
    pub client_cert: Option<ClientCertRule>,
}

/// A route's mask policy and who may see the unmasked response.
pub struct RouteMask {
    pub policy: Arc<mask::Policy>,
    /// The route's scope with `require: <unmask_with>`: decided like any
    /// route policy, so a scoped grant of the capability works too.
    pub unmask: RoutePolicy,
    /// The mask has `owner_columns`: where this route finds the resource
    /// and record the owner's choice is stored under.
    pub owner: Option<RouteOwnerColumns>,
}

/// `masks.NAME.owner_columns`: columns the owner of a resource (a bot's
/// Super Admin) masks at run time through the admin API, for everyone
/// without `unmask_with`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerColumns {
    /// Scope kind the choice is per (`bot`).
    pub scope: String,
    /// Capability on that resource that may choose.
    pub manage_with: String,
    pub strategy: mask::Strategy,
}

/// A masked route's way to the owner's choice for a request.
#[derive(Debug, Clone)]
pub struct RouteOwnerColumns {
    pub spec: Arc<OwnerColumns>,
    /// The path parameter holding the resource id (the route's `scope:`).
    pub scope_param: String,
    /// The path parameter of the route's `record:` (e.g. the table), if any.
    pub record_param: Option<String>,
}

/// `masking:` settings.
pub struct MaskingSettings {
    pub hash_key: Option<Vec<u8>>,
    pub max_body_bytes: u64,
    pub buffer_bytes: u64,
    /// Bytes of masked answers held whole at once, all requests together.
    pub max_held_bytes: u64,
    pub limits: mask::Limits,
    pub audit_log: std::path::PathBuf,
}

/// A named upstream: one or more servers behind one name, sharing scheme,
/// base path, TLS settings, timeouts and a connection pool.
pub struct Upstream {
    pub name: String,
    /// Path prefix from the upstream URL(s), without trailing slash ("" if
    /// none); the same for every server.
    pub base_path: String,
    /// Time to a response head.
    pub timeout: Duration,
    /// Longest silence between two reads of a response body.
    pub body_idle_timeout: Duration,
    /// `preserve_host`: send the client's Host instead of the upstream's.
    pub preserve_host: bool,
    /// `pass_credentials` of this upstream, if set (routes resolve it).
    pub pass_credentials: Option<bool>,
    /// `http2: true`: the connection speaks HTTP/2 (no websocket upgrades).
    pub http2: bool,
    /// `insecure_skip_verify: true`: the certificate is not checked
    /// (warned about by `check` and at start).
    pub insecure_skip_verify: bool,
    /// The servers, their balancing and health, and the clients.
    pub pool: Arc<crate::proxy::pool::Pool>,
}

/// Header handling on the way upstream (and back).
pub struct ForwardSettings {
    /// Lowercased identity header prefix (default `x-rolegate-`).
    pub identity_prefix: String,
    /// The identity headers' names under that prefix, made once.
    pub identity: crate::proxy::headers::IdentityNames,
    /// Exact client header names to drop: the ones always dropped, the
    /// built-in default list (minus `keep_headers`) and
    /// `forward.strip_headers` (lowercased).
    pub strip: crate::proxy::headers::NameSet,
    /// Name prefixes to drop: the built-in ones plus `strip_headers`
    /// entries ending in `*`.
    pub strip_prefixes: crate::proxy::headers::Prefixes,
    /// `forward.keep_headers`: names under a stripped prefix forwarded
    /// after all.
    pub keep: Vec<http::HeaderName>,
    /// The credential cookie name (`identity.cookie`): stripped whenever it
    /// is not the verified credential being passed on, and never accepted
    /// from an upstream's `Set-Cookie`.
    pub cookie: Option<String>,
    /// `identity.cookie_origins`, lower-cased: other page origins allowed
    /// to send cookie-authenticated requests with unsafe methods (and the
    /// logout).
    pub cookie_origins: Vec<String>,
}
