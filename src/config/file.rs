//! The raw configuration schema, exactly as written in YAML.
//!
//! Only serde structs live here (sozu's `FileConfig` split): no validation,
//! no defaults that need logic, no cross-references. Every struct denies
//! unknown fields so a typo is an error, not a silently ignored key.
//! `build.rs` turns these into the runtime types.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// `rolegate.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub listen: FileListen,
    /// Several public listeners (instead of `listen.addr`/`tls`/`h2c`/
    /// `redirect_https`); `listen`'s limits apply to all of them.
    #[serde(default)]
    pub listeners: Vec<Spanned<FileListener>>,
    #[serde(default)]
    pub identity: FileIdentity,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<FileUpstream>>,
    #[serde(default)]
    pub path: FilePath,
    #[serde(default)]
    pub forward: FileForward,
    #[serde(default)]
    pub errors: FileErrors,
    #[serde(default)]
    pub sessions: FileSessions,
    /// The admin listener; absent = no admin listener.
    #[serde(default)]
    pub admin: Option<FileAdmin>,
    #[serde(default)]
    pub masking: FileMasking,
    #[serde(default)]
    pub masks: BTreeMap<String, Spanned<FileMask>>,
    /// Contextual relations (`relation:NAME(...)` in requirements) and
    /// where their answers come from.
    #[serde(default)]
    pub relations: BTreeMap<String, Spanned<FileRelation>>,
    /// The user directory; absent = none (roles come from tokens).
    #[serde(default)]
    pub directory: Option<FileDirectory>,
    /// Hot reload: the file watcher.
    #[serde(default)]
    pub reload: FileReload,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: FileShutdown,
    /// Rules directory (or file), relative to the config file.
    pub rules: Option<String>,
    /// Rules may also be written inline in the main file (same keys as a
    /// rules file; kept as separate fields because serde's `flatten` would
    /// lose both `deny_unknown_fields` and the source spans).
    /// Capability level ladders (see [`FileRules::capability_levels`]).
    #[serde(default)]
    pub capability_levels: BTreeMap<String, Spanned<Vec<String>>>,
    #[serde(default)]
    pub roles: BTreeMap<String, Spanned<FileRole>>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Spanned<FileProfile>>,
    #[serde(default)]
    pub routes: Vec<Spanned<FileRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileListen {
    /// `None`: the default address, unless `listeners:` is used.
    pub addr: Option<String>,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    /// Largest websocket message (and frame) relayed either way.
    pub max_websocket_message_bytes: u64,
    pub header_read_timeout: String,
    /// HTTP/2 streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Keys below are `Spanned` (absent: the default) so `check` can name
    /// their line.
    /// An idle connection (no request in flight) is closed after this.
    pub keepalive_timeout: Option<Spanned<String>>,
    /// The whole request (head and body) must arrive within this.
    pub request_timeout: Option<Spanned<String>>,
    /// Longest wait for the next byte of a request body.
    pub body_read_timeout: Option<Spanned<String>>,
    /// Longest a client may accept no bytes of what is sent to it.
    pub send_timeout: Option<Spanned<String>>,
    /// A websocket frame or fragmented message must end within this of
    /// its first byte.
    pub websocket_message_timeout: Option<Spanned<String>>,
    /// A websocket with no data message either way for this long closes.
    pub websocket_idle_timeout: Option<Spanned<String>>,
    /// Longest request target (path and query), in bytes.
    pub max_uri_bytes: Option<Spanned<u64>>,
    /// Most header fields in one request.
    pub max_headers: Option<Spanned<u64>>,
    /// Client connections open at once, all public listeners together.
    pub max_connections: Option<Spanned<u64>>,
    /// Client connections open at once from one client address.
    pub max_connections_per_ip: Option<Spanned<u64>>,
    /// HTTP/2 requests in flight at once from one client address.
    pub max_streams_per_ip: Option<Spanned<u64>>,
    /// Token-bucket request rate limits; absent: none.
    pub rate_limit: Option<Spanned<FileRateLimit>>,
    pub tls: Option<FileTls>,
    pub h2c: Option<bool>,
    pub redirect_https: Option<FileRedirect>,
}

impl Default for FileListen {
    fn default() -> Self {
        FileListen {
            addr: None,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_websocket_message_bytes: 1024 * 1024,
            header_read_timeout: "10s".into(),
            max_concurrent_streams: 100,
            keepalive_timeout: None,
            request_timeout: None,
            body_read_timeout: None,
            send_timeout: None,
            websocket_message_timeout: None,
            websocket_idle_timeout: None,
            max_uri_bytes: None,
            max_headers: None,
            max_connections: None,
            max_connections_per_ip: None,
            max_streams_per_ip: None,
            rate_limit: None,
            tls: None,
            h2c: None,
            redirect_https: None,
        }
    }
}

/// `listen.rate_limit`: one token bucket per client address and/or per
/// principal.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimit {
    #[serde(default)]
    pub per_ip: Option<Spanned<FileRate>>,
    #[serde(default)]
    pub per_principal: Option<Spanned<FileRate>>,
}

/// One bucket: `rate: "100/s"` (`N/s`, `N/m`, `N/h` or `N/<duration>`)
/// and the requests allowed at once (`burst`, default N).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRate {
    pub rate: Spanned<String>,
    #[serde(default)]
    pub burst: Option<Spanned<u64>>,
}

/// One entry of `listeners:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub addr: String,
    #[serde(default)]
    pub tls: Option<FileTls>,
    /// HTTP/2 with prior knowledge on a plain listener.
    #[serde(default)]
    pub h2c: bool,
    /// Answer every request 308 to https instead of serving it.
    #[serde(default)]
    pub redirect_https: Option<FileRedirect>,
}

/// `tls:` of a listener. File names carry their line for `check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// PEM certificate chain, leaf first: the default certificate.
    pub cert: Spanned<String>,
    /// PEM private key of `cert`.
    pub key: Spanned<String>,
    /// More certificates, chosen by the client's SNI name.
    #[serde(default)]
    pub sni: Vec<Spanned<FileSniCert>>,
    #[serde(default)]
    pub client_auth: Option<Spanned<FileClientAuth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSniCert {
    /// `a.example.com` or `*.example.com`.
    pub names: Vec<String>,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClientAuth {
    /// `required` or `optional`.
    pub mode: String,
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca: String,
    /// PEM files of certificate revocation lists (one per issuing CA).
    #[serde(default)]
    pub crls: Vec<String>,
}

/// `redirect_https:` — an https port on the same host, or a base URL.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileRedirect {
    Port(u16),
    Url(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileIdentity {
    pub bearer: bool,
    pub cookie: Option<String>,
    pub cookie_origins: Vec<String>,
    pub max_token_bytes: usize,
    pub leeway: String,
    pub cache_entries: usize,
    pub issuers: Vec<Spanned<FileIssuer>>,
    pub claims: FileClaims,
}

impl Default for FileIdentity {
    fn default() -> Self {
        FileIdentity {
            bearer: true,
            cookie: None,
            cookie_origins: Vec::new(),
            max_token_bytes: 8 * 1024,
            leeway: "30s".into(),
            cache_entries: 100_000,
            issuers: Vec::new(),
            claims: FileClaims::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIssuer {
    pub iss: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub keys: FileKeys,
    #[serde(default)]
    pub dev: bool,
    /// The header `typ` values accepted (RFC 8725 §3.11); empty: any.
    #[serde(default)]
    pub types: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileKeys {
    pub pem: Vec<FilePemKey>,
    pub jwks_file: Option<String>,
    pub hmac_secret_file: Option<String>,
    /// HMAC secrets with key ids (`[{ file, kid }]`): several per issuer
    /// for rotation, selected by the token's `kid` like public keys.
    pub hmac: Vec<FileSecretKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSecretKey {
    pub file: String,
    #[serde(default)]
    pub kid: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePemKey {
    pub file: String,
    #[serde(default)]
    pub kid: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileClaims {
    pub subject: String,
    pub session: String,
    pub roles: String,
    pub partners: String,
    pub teams: String,
    pub profiles: String,
    pub grants: String,
}

impl Default for FileClaims {
    fn default() -> Self {
        FileClaims {
            subject: "sub".into(),
            session: "sid".into(),
            roles: "roles".into(),
            partners: "partners".into(),
            teams: "teams".into(),
            profiles: "profiles".into(),
            grants: "grants".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    /// One server (`url:`); exactly one of `url` and `servers`.
    #[serde(default)]
    pub url: Option<String>,
    /// Several servers, each a full URL; they must share scheme and base
    /// path (TLS settings are the upstream's, shared by all).
    #[serde(default)]
    pub servers: Option<Vec<Spanned<String>>>,
    /// How a request picks a server.
    #[serde(default)]
    pub balance: FileBalance,
    /// Passive (and optionally active) health of the servers.
    #[serde(default)]
    pub health: Option<Spanned<FileHealth>>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "default_upstream_timeout")]
    pub timeout: String,
    /// Longest silence between two reads of the response body.
    #[serde(default = "default_body_idle_timeout")]
    pub body_idle_timeout: String,
    /// Requests in flight to this upstream at once (all servers).
    #[serde(default)]
    pub max_requests: Option<Spanned<u64>>,
    #[serde(default)]
    pub preserve_host: bool,
    /// Forward the verified credential to this upstream (overrides
    /// `forward.pass_credentials`; a route's own setting overrides this).
    #[serde(default)]
    pub pass_credentials: Option<bool>,
    /// `https://` only: PEM bundle of the CAs trusted for this upstream
    /// (replaces the default roots).
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// `https://` only: PEM certificate chain presented to the upstream.
    #[serde(default)]
    pub client_cert: Option<Spanned<String>>,
    /// `https://` only: PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<Spanned<String>>,
    /// `https://` only: the TLS name (SNI and certificate check) instead
    /// of the URL's host.
    #[serde(default)]
    pub server_name: Option<Spanned<String>>,
    /// `https://` only: accept any certificate (a warning).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Speak HTTP/2 to this upstream (h2 ALPN over TLS, prior knowledge
    /// over plain http).
    #[serde(default)]
    pub http2: bool,
}

/// `reload:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileReload {
    /// Reload when the config file, a rules file or a file they name
    /// changes.
    pub watch: bool,
    /// How often the watched files' metadata is read.
    pub watch_interval: String,
    /// What a reload that changes the policy does to open websockets.
    pub websockets: FileReloadWebsockets,
    /// What it does to answers still being sent (event streams, long
    /// downloads): `close` cuts them, `keep` lets them run.
    pub streams: FileReloadWebsockets,
}

/// `reload.websockets` and `reload.streams`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileReloadWebsockets {
    /// Closed (1012), so the client reconnects under the new policy.
    #[default]
    Close,
    /// Kept open under the policy that opened them.
    Keep,
}

impl Default for FileReload {
    fn default() -> Self {
        FileReload {
            watch: true,
            watch_interval: "1s".into(),
            websockets: FileReloadWebsockets::Close,
            streams: FileReloadWebsockets::Close,
        }
    }
}

/// `upstreams.NAME.balance`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileBalance {
    #[default]
    RoundRobin,
    LeastOutstanding,
}

/// `upstreams.NAME.health`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileHealth {
    /// Consecutive failures that eject a server (0: never).
    pub failures: u32,
    /// The first ejection's length.
    pub eject_for: String,
    /// The longest ejection (each repeated one doubles).
    pub max_eject_for: String,
    /// The active check; absent: passive health only.
    pub check: Option<Spanned<FileHealthCheck>>,
}

impl Default for FileHealth {
    fn default() -> Self {
        FileHealth {
            failures: 3,
            eject_for: "10s".into(),
            max_eject_for: "5m".into(),
            check: None,
        }
    }
}

/// `shutdown:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileShutdown {
    /// How long in-flight requests and websockets get after SIGTERM.
    pub drain_timeout: String,
}

impl Default for FileShutdown {
    fn default() -> Self {
        FileShutdown {
            drain_timeout: "30s".into(),
        }
    }
}

/// `upstreams.NAME.health.check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    /// The path asked (`GET`), as sent: not under the URL's base path.
    pub path: String,
    #[serde(default = "default_check_interval")]
    pub interval: String,
    #[serde(default = "default_check_timeout")]
    pub timeout: String,
}

fn default_check_interval() -> String {
    "5s".into()
}

fn default_check_timeout() -> String {
    "2s".into()
}

fn default_body_idle_timeout() -> String {
    "5m".into()
}

/// `directory:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDirectory {
    /// Default: the only configured issuer.
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default = "default_dir_manage_with")]
    pub manage_with: String,
    #[serde(default = "default_dir_share_with")]
    pub share_with: String,
    #[serde(default = "default_dir_profiles_with")]
    pub profiles_with: String,
}

fn default_dir_manage_with() -> String {
    "partner.users.manage".into()
}

fn default_dir_share_with() -> String {
    "bot.access.share".into()
}

fn default_dir_profiles_with() -> String {
    "profiles.manage".into()
}

/// One relation source: exactly one of `pull` and `push`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRelation {
    #[serde(default)]
    pub pull: Option<FilePull>,
    #[serde(default)]
    pub push: Option<FilePush>,
}

/// `relations.NAME.push`: tuples pushed through the admin API, kept in the
/// session store.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePush {
    /// Expiry of a tuple pushed without `ttl` (absent: until removed).
    #[serde(default)]
    pub default_ttl: Option<String>,
    /// Longest `ttl` a push may ask for (absent: no bound).
    #[serde(default)]
    pub max_ttl: Option<String>,
}

/// `relations.NAME.pull`: ask an upstream, cache the answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePull {
    /// The name of an entry of `upstreams:` (its client, TLS and base path).
    pub upstream: String,
    /// Path appended to the upstream's URL; must start with `/`.
    pub path: String,
    #[serde(default = "default_relation_timeout")]
    pub timeout: String,
    #[serde(default = "default_relation_cache_ttl")]
    pub cache_ttl: String,
    #[serde(default = "default_relation_negative_ttl")]
    pub negative_ttl: String,
    #[serde(default = "default_relation_cache_entries")]
    pub cache_entries: usize,
}

fn default_relation_timeout() -> String {
    "500ms".into()
}

fn default_relation_cache_ttl() -> String {
    "5s".into()
}

fn default_relation_negative_ttl() -> String {
    "2s".into()
}

fn default_relation_cache_entries() -> usize {
    10_000
}

fn default_connect_timeout() -> String {
    "2s".into()
}

fn default_upstream_timeout() -> String {
    "30s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilePath {
    pub merge_slashes: bool,
    pub allow_semicolon: bool,
}

impl Default for FilePath {
    fn default() -> Self {
        FilePath {
            merge_slashes: true,
            allow_semicolon: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileForward {
    pub identity_header_prefix: String,
    pub strip_headers: Vec<String>,
    /// Names of the built-in strip list that are forwarded after all.
    pub keep_headers: Vec<String>,
    pub pass_credentials: bool,
}

impl Default for FileForward {
    fn default() -> Self {
        FileForward {
            identity_header_prefix: "X-Rolegate-".into(),
            strip_headers: Vec::new(),
            keep_headers: Vec::new(),
            pass_credentials: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileErrors {
    pub expose_reason: bool,
}

impl Default for FileErrors {
    fn default() -> Self {
        FileErrors {
            expose_reason: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSessions {
    pub idle_timeout: String,
    pub max_lifetime: Option<String>,
    /// `embedded` or a `redis://host:port[/db]` URL.
    pub store: String,
    pub state_dir: String,
    pub flush_interval: String,
    pub retention: String,
    pub logout_path: String,
    pub login_url: Option<String>,
    /// `deny` (503) or `allow`.
    pub on_store_error: String,
}

impl Default for FileSessions {
    fn default() -> Self {
        FileSessions {
            idle_timeout: "30m".into(),
            max_lifetime: None,
            store: "embedded".into(),
            state_dir: "var/rolegate".into(),
            flush_interval: "250ms".into(),
            retention: "24h".into(),
            logout_path: "/.rolegate/logout".into(),
            login_url: None,
            on_store_error: "deny".into(),
        }
    }
}

/// `masking:` — process-wide settings of the response masking stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileMasking {
    /// HMAC key file for the `hash` strategy.
    pub hash_key_file: Option<String>,
    /// Largest (decoded) response body masked; larger → refused/aborted.
    pub max_body_bytes: u64,
    /// Bodies with a Content-Length up to this are masked whole before the
    /// answer starts, so a failure is a clean 502.
    pub buffer_bytes: u64,
    /// Bytes of masked answers held whole at once, all requests together.
    pub max_held_bytes: u64,
    pub max_depth: usize,
    pub max_string_bytes: usize,
    /// JSON-lines audit log of unmasked PII access.
    pub audit_log: String,
}

impl Default for FileMasking {
    fn default() -> Self {
        FileMasking {
            hash_key_file: None,
            max_body_bytes: 2 * 1024 * 1024 * 1024,
            buffer_bytes: 1024 * 1024,
            max_held_bytes: 256 * 1024 * 1024,
            max_depth: 64,
            max_string_bytes: 1024 * 1024,
            audit_log: "var/rolegate/audit.jsonl".into(),
        }
    }
}

/// One mask policy (`masks.NAME`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMask {
    /// The capability that sees the unmasked response.
    pub unmask_with: String,
    #[serde(default)]
    pub fields: Vec<FileMaskField>,
    /// Free-text detectors: `email`, `phone`, `card`.
    #[serde(default)]
    pub detect: Vec<String>,
    /// Where detectors run: selectors, or `all` (every string). Default: all.
    #[serde(default)]
    pub detect_in: Option<FileDetectIn>,
    #[serde(default)]
    pub case_insensitive: bool,
    /// Columns chosen at run time by the owner of each resource.
    #[serde(default)]
    pub owner_columns: Option<FileOwnerColumns>,
}

/// `masks.NAME.owner_columns`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOwnerColumns {
    /// The scope kind the choice is made per (`bot`): routes using the mask
    /// must have a `scope:` of this kind.
    pub scope: String,
    /// The capability, on that resource, that may choose the columns.
    pub manage_with: String,
    /// The strategy for chosen columns.
    #[serde(rename = "as", default = "default_owner_strategy")]
    pub strategy: String,
}

fn default_owner_strategy() -> String {
    "redact".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMaskField {
    pub path: String,
    #[serde(rename = "as")]
    pub strategy: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileDetectIn {
    All(String),
    Paths(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    #[serde(default = "default_admin_addr")]
    pub addr: String,
    pub token_file: String,
}

fn default_admin_addr() -> String {
    "127.0.0.1:9901".into()
}

/// One rules file (`rules/*.yaml`), or the inline part of the main file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileRules {
    /// `capability_levels:` — ordered level ladders by capability prefix,
    /// lowest level first: `{ channel: [view, reply, manage] }`.
    pub capability_levels: BTreeMap<String, Spanned<Vec<String>>>,
    pub roles: BTreeMap<String, Spanned<FileRole>>,
    pub profiles: BTreeMap<String, Spanned<FileProfile>>,
    pub routes: Vec<Spanned<FileRoute>>,
    pub masks: BTreeMap<String, Spanned<FileMask>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileRole {
    pub description: Option<String>,
    pub grants: Vec<String>,
    pub includes: Vec<String>,
    pub requires: Vec<String>,
    pub idle_timeout: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileProfile {
    pub description: Option<String>,
    pub roles: Vec<String>,
    pub grants: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: FileMatch,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub require: Option<FileRequire>,
    /// `{ kind: "{param}" }`, e.g. `{ partner: "{partner}" }`.
    #[serde(default)]
    pub scope: Option<BTreeMap<String, String>>,
    /// `active` (default) or `passive`: passive requests never refresh
    /// the session's last activity.
    #[serde(default)]
    pub activity: Option<String>,
    /// A mask policy name: responses are masked for principals without
    /// its `unmask_with` capability.
    #[serde(default)]
    pub mask: Option<String>,
    /// Websocket upgrades (`Upgrade: websocket`) are allowed on this route;
    /// without it they are refused. Not with `mask` (frames are not masked).
    #[serde(default)]
    pub websocket: bool,
    /// Page origins (`https://console.example`) allowed to open a
    /// cookie-authenticated websocket besides the request's own host.
    #[serde(default)]
    pub websocket_origins: Vec<String>,
    /// `"{param}"` naming the record a response is about, for the audit log.
    #[serde(default)]
    pub record: Option<String>,
    /// Forward the verified credential on this route (overrides the
    /// upstream's and `forward.pass_credentials`).
    #[serde(default)]
    pub pass_credentials: Option<bool>,
    /// `required`, or `{ allow: [names] }`: the request must come over a
    /// TLS connection with a verified client certificate (whose common
    /// name or a DNS name is listed).
    #[serde(default)]
    pub client_cert: Option<FileClientCert>,
}

/// A route's `client_cert:`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileClientCert {
    Required(String),
    Allow(FileClientCertAllow),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClientCertAllow {
    pub allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMatch {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    pub path: String,
}

/// A requirement: a leaf string, or `any:` / `all:` of requirements.
#[derive(Debug)]
pub enum FileRequire {
    Leaf(String),
    Any { any: Vec<FileRequire> },
    All { all: Vec<FileRequire> },
}

/// Written by hand rather than `#[serde(untagged)]`: untagged would accept
/// `{ all: [a], any: [b] }` as `any: [b]`, silently dropping the `all`, and
/// ignore unknown keys. Here a mapping must have exactly one key, `any` or
/// `all`.
impl<'de> Deserialize<'de> for FileRequire {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FileRequire;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a requirement string, or a mapping with exactly one key: any or all")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FileRequire, E> {
                Ok(FileRequire::Leaf(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<FileRequire, A::Error> {
                use serde::de::Error;
                let Some(key) = map.next_key::<String>()? else {
                    return Err(A::Error::custom(
                        "empty requirement mapping: use any: [...] or all: [...]",
                    ));
                };
                let items: Vec<FileRequire> = match key.as_str() {
                    "any" | "all" => map.next_value()?,
                    other => {
                        return Err(A::Error::custom(format!(
                            "unknown requirement key `{other}`, expected any or all"
                        )));
                    }
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(A::Error::custom(format!(
                        "a requirement mapping has exactly one key; found `{key}` and `{extra}` (nest them instead)"
                    )));
                }
                Ok(if key == "any" {
                    FileRequire::Any { any: items }
                } else {
                    FileRequire::All { all: items }
                })
            }
        }
        d.deserialize_any(V)
    }
}
