//! Websockets (phases 6 and 7 for an `Upgrade: websocket` request): the
//! handshake on both sides, the frame relay, and the close when the
//! session ends.
//!
//! Owns: what a valid client handshake is, which handshake headers go
//! upstream, what a valid upstream `101` is, and the relay task of one open
//! websocket. Must not: decide who may open one (the pipeline ran every
//! phase before calling here), mask frames (a route with `mask` cannot
//! allow websockets: `config::build` refuses it), or hold a map guard across
//! an `.await`.
//!
//! LIFECYCLE of one websocket:
//! ```text
//!  request ─ phases 1–5 ─ check_handshake ─ forward (handshake headers kept)
//!    upstream answers 101 + valid Sec-WebSocket-Accept → client gets 101, relay task spawned
//!    upstream answers anything else → passed on as a normal response (no websocket)
//!  relay: frames both ways, bounded (max message = listen.max_websocket_message_bytes)
//!    client Text/Binary → session touched (at most every min(1 s, idle/4); not on passive routes)
//!    the subject's user-directory entry changes → client: close 1008 "user changed"
//!    a pushed relation tuple it was allowed on is removed or expires, or a
//!    pulled relation (asked again every cache_ttl) answers false
//!      → client: close 1008 "relation removed" (cannot be answered: 1011)
//!    session ends (notification from the session table, or the idle/lifetime deadline)
//!      → client: close 1008 + reason; upstream: close 1000 + reason; no frame relayed after
//!    either side closes → the close is passed on; the other side's answer awaited ≤ 1 s
//!    either side fails → the other side gets a close (client 1011, upstream 1001)
//!    a side's frame or fragmented message not whole within websocket_message_timeout
//!      → that side: close 1008 "websocket message timeout"; the other: its failure close
//!    no data message either way for websocket_idle_timeout → close 1001 both ways
//!    a reload changes the policy (reload.websockets: close) or a listener's admission
//!      → client 1012, upstream 1001
//! ```
//!
//! Session end is pushed, not polled: the socket subscribes to its session
//! in the table's [`crate::session::watch::Watchers`] (fired on logout,
//! revocation, deactivation, idle or lifetime ends, local or from Redis
//! pub/sub), and keeps one timer armed at the session's own idle (or
//! lifetime) deadline, re-armed from the store's view when it fires. An
//! idle socket costs one timer and one channel receiver, and nothing scans
//! the open sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::limits::SendTimeout;
use super::standing::{Lost, Standing};
use super::ws_progress::{Started, Watched};
use crate::error::{BadRequest, Deny, Refusal};
use crate::session::{
    EndReason, OnStoreError, SessionRef, SessionWatch, Store, Touch, Verdict, now_ms,
};

const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
const SEC_WEBSOCKET_PROTOCOL: HeaderName = HeaderName::from_static("sec-websocket-protocol");
const SEC_WEBSOCKET_EXTENSIONS: HeaderName = HeaderName::from_static("sec-websocket-extensions");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// How long a closing side gets to answer a close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Each side's read buffer, allocated up front by tungstenite, and the most
/// it reads per call: small, so that many idle sockets stay cheap (two per
/// websocket were 44 % of an idle socket's heap at 4 KiB; see BENCHMARKS.md);
/// a larger frame grows the buffer as needed, at the cost of more reads.
const READ_BUFFER: usize = 1024;
/// Client activity reaches the session store at most this often (and at
/// most every quarter of the idle timeout, so a touch always lands well
/// before the session would idle out).
const TOUCH_EVERY: Duration = Duration::from_secs(1);

/// Does the request ask for a websocket (`Upgrade` lists `websocket`)?
/// Other upgrade protocols (`h2c`, …) are not websockets: their `Upgrade`
/// header is dropped as hop-by-hop and the request is forwarded as usual.
pub fn requested(h: &HeaderMap) -> bool {
    has_token(h, &header::UPGRADE, "websocket")
}

fn has_token(h: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    crate::fields::all(h, name).any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Exactly one value of `name`, readable.
fn single<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut it = h.get_all(name).iter();
    match (it.next(), it.next()) {
        (Some(v), None) => v.to_str().ok(),
        _ => None,
    }
}

/// RFC 6455 §4.2.1: a GET over HTTP/1.1 with `Connection: upgrade`,
/// `Sec-WebSocket-Version: 13` and one key that is 16 bytes in base64; no
/// request body. HTTP/2 websockets (RFC 8441 extended CONNECT) are not
/// supported.
pub fn check_handshake<B>(req: &Request<B>) -> Result<(), Refusal> {
    let h = req.headers();
    let bad = || Refusal::from(Deny::BadRequest(BadRequest::WebsocketHandshake));
    if req.method() != Method::GET || req.version() != Version::HTTP_11 {
        return Err(bad());
    }
    if !has_token(h, &header::CONNECTION, "upgrade")
        || single(h, &SEC_WEBSOCKET_VERSION).map(str::trim) != Some("13")
    {
        return Err(bad());
    }
    let key = single(h, &SEC_WEBSOCKET_KEY).ok_or_else(bad)?;
    if !valid_key(key.trim()) {
        return Err(bad());
    }
    let body = h.contains_key(header::TRANSFER_ENCODING)
        || h.get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if body {
        return Err(bad());
    }
    Ok(())
}

/// Cross-site websocket hijacking guard, for cookie-authenticated upgrades
/// only (a bearer token cannot be attached by another site's page): a
/// browser always sends `Origin` on a websocket handshake, and a page of
/// another site must not ride the user's cookie into a live socket. The
/// origin's host must be the request's host (cookies are scoped by host,
/// not port or scheme), or the whole origin one of the route's
/// `websocket_origins`. No `Origin` at all is not a browser and passes;
/// `Origin: null` (sandboxed frames, file pages) and anything unreadable do
/// not.
pub fn check_origin(h: &HeaderMap, host: Option<&str>, allowed: &[String]) -> Result<(), Refusal> {
    if same_origin(h, host, allowed) {
        Ok(())
    } else {
        Err(Deny::WebsocketOrigin.into())
    }
}

/// Whether a browser page may send this cookie-authenticated request
/// with an unsafe method (and the logout). `Sec-Fetch-Site` first, which
/// pages cannot set: `same-origin` or `none` (typed, bookmarked) passes, as
/// in Go's `CrossOriginProtection`; browsers send `Origin: null` on
/// same-origin posts of pages with `Referrer-Policy: no-referrer`. Else the
/// `Origin` test of [`same_origin`]; a `same-site` or `cross-site` request
/// without `Origin` does not pass.
pub fn cookie_request_allowed(h: &HeaderMap, host: Option<&str>, allowed: &[String]) -> bool {
    let mut site = h.get_all("sec-fetch-site").iter();
    let site = match (site.next(), site.next()) {
        (Some(v), None) => Some(v.as_bytes()),
        _ => None,
    };
    match site {
        Some(b"same-origin" | b"none") => true,
        Some(_) if h.get(header::ORIGIN).is_none() => false,
        _ => same_origin(h, host, allowed),
    }
}

/// The `Origin` test of [`check_origin`] and [`cookie_request_allowed`].
pub fn same_origin(h: &HeaderMap, host: Option<&str>, allowed: &[String]) -> bool {
    let mut values = h.get_all(header::ORIGIN).iter();
    let origin = match (values.next(), values.next()) {
        (None, _) => return true,
        (Some(v), None) => v.to_str().ok(),
        (Some(_), Some(_)) => None,
    };
    let origin = origin.map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase());
    origin.as_deref().is_some_and(|o| {
        if allowed.iter().any(|a| a == o) {
            return true;
        }
        let Ok(uri) = o.parse::<http::Uri>() else {
            return false;
        };
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|oh| Some(oh) == host)
    })
}

fn valid_key(key: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16)
}

/// Whether an offered subprotocol looks like a credential: a JWT (three
/// dot-separated base64url parts, the first a JSON header: `eyJ`), or an
/// item naming a bearer token or authorization.
fn carries_credential(p: &str) -> bool {
    let lower = p.to_ascii_lowercase();
    let jwt = p.starts_with("eyJ")
        && p.split('.').count() == 3
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='));
    jwt || lower.contains("bearer") || lower.contains("authorization")
}

/// Whether an offered subprotocol announces that the next one is a token
/// (`access_token, <token>`, as several websocket client libraries send).
fn is_token_marker(p: &str) -> bool {
    [
        "access_token",
        "token",
        "auth",
        "jwt",
        "bearer",
        "authorization",
    ]
    .iter()
    .any(|m| p.eq_ignore_ascii_case(m))
}

/// The handshake headers of the client's request, kept aside before the
/// hop-by-hop strip.
pub struct Handshake {
    key: HeaderValue,
    version: HeaderValue,
    protocols: Vec<HeaderValue>,
}

impl Handshake {
    /// Only after [`check_handshake`] passed. Offered subprotocols that
    /// carry a credential (browsers cannot set headers on a websocket, so
    /// apps put tokens there: `access_token, <jwt>`, Kubernetes'
    /// `base64url.bearer.authorization.k8s.io.<token>`) are left out: the
    /// gateway never checked them, and a backend that reads them would
    /// take a forged one for the user (the `Authorization` rule).
    pub fn take(h: &HeaderMap) -> Option<Handshake> {
        let items: Vec<&str> = h
            .get_all(&SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        // An item after a marker (`access_token, <opaque token>`) is the
        // token, whatever it looks like.
        let offered: Vec<&str> = items
            .iter()
            .enumerate()
            .filter(|&(i, p)| {
                let after_marker = i > 0 && is_token_marker(items[i - 1]);
                !carries_credential(p) && !after_marker
            })
            .map(|(_, p)| *p)
            .collect();
        let protocols = if offered.is_empty() {
            Vec::new()
        } else {
            vec![HeaderValue::from_str(&offered.join(", ")).ok()?]
        };
        Some(Handshake {
            key: h.get(&SEC_WEBSOCKET_KEY)?.clone(),
            version: h.get(&SEC_WEBSOCKET_VERSION)?.clone(),
            protocols,
        })
    }

    /// Puts the upgrade back on the upstream request, after the hop-by-hop
    /// and spoofing strips ran over it: `Upgrade: websocket`, `Connection:
    /// Upgrade`, the key, version and offered subprotocols. Extensions
    /// (`permessage-deflate`) are never offered upstream: the relay reads
    /// frames, and compressed ones could not be read.
    pub fn restore(&self, h: &mut HeaderMap) {
        h.remove(&SEC_WEBSOCKET_EXTENSIONS);
        h.remove(&SEC_WEBSOCKET_PROTOCOL);
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(SEC_WEBSOCKET_KEY, self.key.clone());
        h.insert(SEC_WEBSOCKET_VERSION, self.version.clone());
        for p in &self.protocols {
            h.append(SEC_WEBSOCKET_PROTOCOL, p.clone());
        }
    }

    /// Checks the upstream's `101`: `Upgrade: websocket`, `Connection:
    /// upgrade`, the right `Sec-WebSocket-Accept`, no extension, and at
    /// most one subprotocol, one the client offered. Returns the accept
    /// value, or why the answer is not a websocket handshake.
    pub fn check_upstream(&self, h: &HeaderMap) -> Result<HeaderValue, &'static str> {
        if !has_token(h, &header::UPGRADE, "websocket") {
            return Err("101 without Upgrade: websocket");
        }
        if !has_token(h, &header::CONNECTION, "upgrade") {
            return Err("101 without Connection: upgrade");
        }
        let accept = derive_accept_key(self.key.as_bytes());
        if single(h, &SEC_WEBSOCKET_ACCEPT).map(str::trim) != Some(accept.as_str()) {
            return Err("101 with a wrong Sec-WebSocket-Accept");
        }
        if h.contains_key(&SEC_WEBSOCKET_EXTENSIONS) {
            return Err("101 with an extension that was not offered");
        }
        let mut chosen = h.get_all(&SEC_WEBSOCKET_PROTOCOL).iter();
        match (chosen.next(), chosen.next()) {
            (None, _) => {}
            (Some(p), None) => {
                let offered = self
                    .protocols
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|o| p.to_str().is_ok_and(|p| o.trim() == p.trim()));
                if !offered {
                    return Err("101 with a subprotocol that was not offered");
                }
            }
            _ => return Err("101 with several subprotocols"),
        }
        HeaderValue::from_str(&accept).map_err(|_| "unusable accept value")
    }
}

/// The `101` sent to the client: the upstream's (already cleaned) headers
/// with the upgrade put back.
pub fn switching<B>(mut headers: HeaderMap, accept: HeaderValue, body: B) -> Response<B> {
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = headers;
    resp
}

/// Why the gateway closed a websocket (the close frame's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Idle,
    Logout,
    Revoked,
    Deactivated,
    Lifetime,
    /// The store could not answer and `on_store_error` is `deny`.
    StoreUnavailable,
    /// The subject's user-directory entry changed (roles, partners,
    /// grants…): the socket was authorized on the old one.
    UserChanged,
    /// A pushed relation tuple the socket was authorized on was removed
    /// or expired, or a pulled relation answers false now.
    RelationRemoved,
    /// A pulled relation the socket was authorized on could not be
    /// answered when it was asked again (fail closed, as for a request).
    RelationUnavailable,
}

impl CloseReason {
    /// The close frame's reason text (documented in the README).
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Idle => "session idle timeout",
            CloseReason::Logout => "logged out",
            CloseReason::Revoked => "session revoked",
            CloseReason::Deactivated => "user deactivated",
            CloseReason::Lifetime => "session lifetime exceeded",
            CloseReason::StoreUnavailable => "session store unavailable",
            CloseReason::UserChanged => "user changed",
            CloseReason::RelationRemoved => "relation removed",
            CloseReason::RelationUnavailable => "relation unavailable",
        }
    }

    /// The client's close code: 1008 (policy violation) when the session
    /// ended, 1011 when it cannot be checked.
    fn client_code(self) -> CloseCode {
        match self {
            CloseReason::StoreUnavailable | CloseReason::RelationUnavailable => CloseCode::Error,
            _ => CloseCode::Policy,
        }
    }

    fn from_end(r: EndReason) -> CloseReason {
        match r {
            EndReason::Idle => CloseReason::Idle,
            EndReason::Lifetime => CloseReason::Lifetime,
            EndReason::Logout => CloseReason::Logout,
            EndReason::Revoked => CloseReason::Revoked,
        }
    }
}

/// The session an open websocket is bound to (none on public routes).
pub struct Binding {
    pub store: Arc<Store>,
    pub issuer: String,
    pub subject: String,
    pub session: String,
    /// The principal's idle timeout.
    pub idle_ms: u64,
    pub max_lifetime_ms: Option<u64>,
    pub token_exp_ms: u64,
    /// The token's `iat` in ms (the not-before cut-off is checked on it).
    pub token_iat_ms: Option<u64>,
    /// Client frames touch the session (false on `activity: passive`).
    pub active: bool,
    pub on_store_error: OnStoreError,
    /// What else it was authorized on: the subject's directory entry, the
    /// pushed relation tuples.
    pub standing: Standing,
    /// The pulled relations that answered true, asked again while it is
    /// open (boxed: most sockets have none).
    pub pulls: Option<Box<Pulls>>,
}

/// Pulled relations an open websocket was allowed on, and what asking them
/// again needs.
pub struct Pulls {
    /// The configuration that authorized the socket (its relation
    /// sources, cache and upstreams), also after a reload that keeps the
    /// socket open (`reload.websockets: keep`).
    pub rt: Arc<crate::config::Runtime>,
    pub principal: Arc<crate::policy::Principal>,
    pub questions: Vec<crate::relations::Question>,
    /// How often ([`crate::relations::ask_again_every`]).
    pub every: Duration,
}

impl Pulls {
    /// Asks every question again (from the answer cache when it can):
    /// `Some(reason)` once one is false or cannot be answered.
    pub(crate) async fn ask(&self, store: &Store) -> Option<CloseReason> {
        let rt = &self.rt;
        let answers = crate::relations::resolve(
            rt,
            &rt.relation_cache,
            store,
            &self.principal,
            self.questions.clone(),
        )
        .await;
        let mut reason = None;
        for (name, args) in &self.questions {
            use crate::policy::Relations;
            match answers.check(name, args, &self.principal) {
                Some(true) => {}
                Some(false) => return Some(CloseReason::RelationRemoved),
                None => reason = Some(CloseReason::RelationUnavailable),
            }
        }
        reason
    }
}

impl Binding {
    fn id(&self) -> SessionRef<'_> {
        SessionRef {
            issuer: &self.issuer,
            subject: &self.subject,
            session: &self.session,
        }
    }

    /// How often client frames may touch the session.
    fn touch_every(&self) -> Duration {
        TOUCH_EVERY
            .min(Duration::from_millis(self.idle_ms / 4))
            .max(Duration::from_millis(10))
    }

    /// The session stage, as a request would run it (touching or not):
    /// `Some(reason)` once the session is over.
    async fn check(&self, touch: bool) -> Option<CloseReason> {
        let t = Touch {
            issuer: &self.issuer,
            subject: &self.subject,
            session: &self.session,
            now_ms: now_ms(),
            idle_ms: self.idle_ms,
            max_lifetime_ms: self.max_lifetime_ms,
            token_exp_ms: self.token_exp_ms,
            token_iat_ms: self.token_iat_ms,
            touch,
            key: None,
        };
        match self.store.check(&t).await {
            Ok(Verdict::Active) => None,
            Ok(Verdict::Ended(r)) => Some(CloseReason::from_end(r)),
            Ok(Verdict::Deactivated) => Some(CloseReason::Deactivated),
            Err(e) => match self.on_store_error {
                OnStoreError::Deny => {
                    tracing::warn!(target: "rolegate::decision", error = %e, "session store unavailable: websocket closed");
                    Some(CloseReason::StoreUnavailable)
                }
                OnStoreError::Allow => None,
            },
        }
    }

    /// When the session would end by itself (idle or lifetime) by this
    /// gateway's view, in ms since the epoch; just after, so that the check
    /// then finds it over. Made after each session check and kept until
    /// the next one (a wake for the subject alone must not move it).
    fn session_end_ms(&self) -> u64 {
        match self.store.local_record(self.id()) {
            Some(r) => {
                let idle = match r.idle_ms {
                    0 => self.idle_ms,
                    i => i.min(self.idle_ms),
                };
                let idle_end = r.last_ms.saturating_add(idle);
                let life_end = self
                    .max_lifetime_ms
                    .map_or(u64::MAX, |m| r.created_ms.saturating_add(m));
                idle_end.min(life_end).saturating_add(1)
            }
            // Not in this gateway's view (a Redis mirror forgets active
            // sessions): check again one idle period from now.
            None => now_ms().saturating_add(self.idle_ms),
        }
    }

    /// Resolves with the reason once the session is over: checked now
    /// (the subscription came after phase 4), then whenever the table
    /// signals an end, and at each idle/lifetime deadline; or once what
    /// else the socket was authorized on is gone (checked at every wake).
    async fn over(&self, watch: &mut SessionWatch) -> CloseReason {
        let mut next_pull = self
            .pulls
            .as_ref()
            .map(|p| tokio::time::Instant::now() + p.every);
        // The session is asked first, then after every wake but one for
        // the subject alone (a directory or tuple change: a store call, a
        // Redis round trip, per socket of the subject, would buy nothing).
        let mut session_check = true;
        let mut session_end = 0;
        loop {
            if session_check {
                if let Some(r) = self.check(false).await {
                    return r;
                }
                session_end = self.session_end_ms();
            }
            // The table wakes the subject's sockets when its directory
            // entry or one of its tuples changes.
            let tuple_exp = match self.standing.check(&self.store, &self.subject, now_ms()) {
                Ok(x) => x,
                Err(Lost::UserChanged) => return CloseReason::UserChanged,
                Err(Lost::RelationRemoved) => return CloseReason::RelationRemoved,
            };
            let at = tuple_exp.map_or(session_end, |x| session_end.min(x.saturating_add(1)));
            // Never a busy loop, whatever the clocks say.
            let wait = at.saturating_sub(now_ms()).max(20);
            let deadline = tokio::time::Instant::now() + Duration::from_millis(wait);
            // One timer for both (a second one would be held in the relay
            // task's future for the socket's whole life).
            let wake = next_pull.map_or(deadline, |at| at.min(deadline));
            tokio::select! {
                moved = watch.changed() => session_check = moved,
                _ = tokio::time::sleep_until(wake) => {
                    session_check = true;
                    if let (Some(p), Some(at)) = (&self.pulls, next_pull)
                        && tokio::time::Instant::now() >= at
                    {
                        // Boxed: the pull's state is not held inline either.
                        if let Some(r) = Box::pin(p.ask(&self.store)).await {
                            return r;
                        }
                        next_pull = Some(tokio::time::Instant::now() + p.every);
                    }
                }
            }
        }
    }
}

/// Everything the relay task needs besides the two connections.
pub struct Relay {
    pub binding: Option<Binding>,
    /// Largest message (and frame) accepted from either side.
    pub max_message: usize,
    pub request_id: String,
    pub route: String,
    pub subject: String,
    /// The websocket epoch of the runtime that authorized this socket:
    /// once the gateway's [`Signal`] carries a newer one (a reload changed
    /// the policy or a listener's admission), the socket closes (1012 to
    /// the client).
    pub epoch: u64,
    /// The client connection's place under `listen.max_connections`: an
    /// open websocket still holds its connection.
    pub slot: Option<std::sync::Arc<super::limits::ConnSlot>>,
    /// The upstream's place under its `max_requests`: an open websocket
    /// still holds its upstream connection.
    pub pick: Option<super::pool::Pick>,
    /// `listen.send_timeout`: longest the upstream may go without
    /// accepting any byte of a message.
    pub send_timeout: Duration,
    /// `listen.websocket_message_timeout`: a frame or fragmented message
    /// (either way) must be read whole within this of its first byte.
    pub message_timeout: Duration,
    /// `listen.websocket_idle_timeout`: longest without a data message
    /// either way.
    pub idle_timeout: Duration,
}

/// The client side's writes are bounded by the listener's `SendTimeout`;
/// the upstream side gets its own, so an upstream that stops reading
/// fails the relay (else a public socket, with no session to end it,
/// would hold its connection slot until TCP gave up).
type Ws = WebSocketStream<Watched<TokioIo<Upgraded>>>;
type UpWs = WebSocketStream<Watched<SendTimeout<TokioIo<Upgraded>>>>;

/// How a relay ended.
enum End {
    /// The client sent a close (or the connection ended without one).
    Client(Option<CloseFrame>),
    Upstream(Option<CloseFrame>),
    ClientFailed(String),
    UpstreamFailed(String),
    Session(CloseReason),
    /// The gateway is shutting down.
    GoingAway,
    /// A reload changed the policy that authorized the socket.
    PolicyReloaded,
    /// A side's frame or message did not end within the message timeout.
    ClientSlow,
    UpstreamSlow,
    /// No data message either way within the idle timeout.
    Idle,
}

/// The close reason sent both ways when the gateway shuts down.
const GOING_AWAY: &str = "gateway shutting down";
/// The close reason sent both ways when a reload changed the policy.
const POLICY_RELOADED: &str = "policy reloaded";
/// The close reason sent to a side whose message did not end in time.
const MESSAGE_TIMEOUT: &str = "websocket message timeout";
/// The close reason sent both ways after the idle timeout.
const IDLE_TIMEOUT: &str = "websocket idle timeout";
/// What the client is told when the upstream fails.
const UPSTREAM_FAILED: &str = "upstream failed";

fn ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(max_message.saturating_add(64 * 1024))
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Spawns the relay of one websocket: waits for the client side of the
/// upgrade (done once hyper has sent the `101`), then relays until a side
/// closes or the session ends.
pub fn spawn(client: OnUpgrade, upstream: Upgraded, relay: Relay, going_away: Signal) {
    tokio::spawn(relay_task(client, upstream, relay, going_away));
}

/// What the gateway tells a relay: it shuts down (close 1001 both ways),
/// and its websocket epoch. One receiver per open socket: the gateway
/// counts them at shutdown.
pub type Signal = tokio::sync::watch::Receiver<super::pipeline::RelaySignal>;

/// The relay task. Its future lives as long as the socket, so it is kept
/// small (see BENCHMARKS.md): both connections are split before the relay
/// starts and only the halves are held.
async fn relay_task(client: OnUpgrade, upstream: Upgraded, relay: Relay, going_away: Signal) {
    let cfg = ws_config(relay.max_message);
    let clocks = Clocks::default();
    let upstream = SendTimeout::new(TokioIo::new(upstream), relay.send_timeout);
    let upstream = Watched::new(upstream, clocks.upstream.clone(), clocks.base);
    let upstream = WebSocketStream::from_raw_socket(upstream, Role::Client, Some(cfg))
        .await
        .split();
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(request_id = %relay.request_id, error = %e, "websocket: client upgrade failed");
            return;
        }
    };
    let client = Watched::new(TokioIo::new(client), clocks.client.clone(), clocks.base);
    let client = WebSocketStream::from_raw_socket(client, Role::Server, Some(cfg))
        .await
        .split();
    run(client, upstream, &relay, &clocks, going_away).await;
}

/// What the relay's timer looks at: since when each side has had a frame
/// or message pending, and when the last data message went either way
/// (milliseconds after `base`).
struct Clocks {
    base: Instant,
    client: Arc<Started>,
    upstream: Arc<Started>,
    last_data_ms: std::sync::atomic::AtomicU64,
}

impl Default for Clocks {
    fn default() -> Self {
        Clocks {
            base: Instant::now(),
            client: Arc::default(),
            upstream: Arc::default(),
            last_data_ms: Default::default(),
        }
    }
}

impl Clocks {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A data message went one way or the other.
    fn data(&self) {
        self.last_data_ms
            .store(self.now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves once a side's frame or message has been pending for
    /// `message`, or no data message went either way for `idle`; checked
    /// every quarter of the shorter one.
    async fn expired(&self, message: Duration, idle: Duration) -> End {
        let every = (message.min(idle) / 4).max(Duration::from_millis(10));
        let (message, idle) = (ms(message), ms(idle));
        loop {
            tokio::time::sleep(every).await;
            let now = self.now_ms();
            let late = |s: &Started| s.pending_for(now).is_some_and(|t| t >= message);
            if late(&self.client) {
                return End::ClientSlow;
            }
            if late(&self.upstream) {
                return End::UpstreamSlow;
            }
            let last = self.last_data_ms.load(std::sync::atomic::Ordering::Relaxed);
            if now.saturating_sub(last) >= idle {
                return End::Idle;
            }
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

type Halves<W> = (SplitSink<W, Message>, SplitStream<W>);

async fn run(
    mut client: Halves<Ws>,
    mut upstream: Halves<UpWs>,
    relay: &Relay,
    clocks: &Clocks,
    going_away: Signal,
) {
    let started = Instant::now();
    // Subscribed before the first check (in `Binding::over`).
    let mut watch = relay.binding.as_ref().map(|b| b.store.watch(b.id()));
    let (c_tx, c_rx) = &mut client;
    let (u_tx, u_rx) = &mut upstream;
    let end = {
        let b = relay.binding.as_ref();
        let up = async {
            let mut last_touch = Instant::now();
            loop {
                let msg = match c_rx.next().await {
                    None => return End::Client(None),
                    Some(Err(e)) => return End::ClientFailed(e.to_string()),
                    Some(Ok(Message::Close(f))) => return End::Client(f),
                    Some(Ok(m)) => m,
                };
                let data = matches!(msg, Message::Text(_) | Message::Binary(_));
                if data {
                    clocks.data();
                }
                // Only data frames are activity: pings and pongs are sent by
                // client libraries (and browsers, answering the upstream's
                // pings) on their own, without the user doing anything.
                if let Some(b) = b
                    && b.active
                    && data
                    && last_touch.elapsed() >= b.touch_every()
                {
                    last_touch = Instant::now();
                    if let Some(r) = b.check(true).await {
                        return End::Session(r);
                    }
                }
                // Only a data message can be followed by a message of this
                // side already begun (read ahead); a control frame between
                // fragments does not stop the clock.
                if data {
                    clocks.client.hold(|| clocks.now_ms());
                }
                if let Err(e) = u_tx.send(msg).await {
                    return End::UpstreamFailed(e.to_string());
                }
                clocks.client.resume(|| clocks.now_ms());
            }
        };
        let down = async {
            loop {
                let msg = match u_rx.next().await {
                    None => return End::Upstream(None),
                    Some(Err(e)) => return End::UpstreamFailed(e.to_string()),
                    Some(Ok(Message::Close(f))) => return End::Upstream(f),
                    Some(Ok(m)) => m,
                };
                let data = matches!(msg, Message::Text(_) | Message::Binary(_));
                if data {
                    clocks.data();
                    clocks.upstream.hold(|| clocks.now_ms());
                }
                if let Err(e) = c_tx.send(msg).await {
                    return End::ClientFailed(e.to_string());
                }
                clocks.upstream.resume(|| clocks.now_ms());
            }
        };
        let over = async {
            match (b, watch.as_mut()) {
                (Some(b), Some(w)) => End::Session(b.over(w).await),
                _ => std::future::pending().await,
            }
        };
        let away = async {
            // Checked at once: a reload between the authorization and here
            // closes the socket too. An error: the gateway itself is gone,
            // which is going away too.
            let epoch = relay.epoch;
            let mut going_away = going_away;
            match going_away.wait_for(|s| s.away || s.epoch > epoch).await {
                Ok(s) if !s.away => End::PolicyReloaded,
                _ => End::GoingAway,
            }
        };
        let expired = clocks.expired(relay.message_timeout, relay.idle_timeout);
        tokio::select! {
            e = up => e,
            e = down => e,
            e = over => e,
            e = away => e,
            e = expired => e,
        }
    };
    drop(watch);
    let (closed_by, code, reason) = match &end {
        End::Session(r) => ("gateway", r.client_code().into(), r.text().to_string()),
        End::GoingAway => ("gateway", CloseCode::Away.into(), GOING_AWAY.to_string()),
        End::PolicyReloaded => (
            "gateway",
            CloseCode::Restart.into(),
            POLICY_RELOADED.to_string(),
        ),
        End::ClientSlow => (
            "gateway",
            CloseCode::Policy.into(),
            MESSAGE_TIMEOUT.to_string(),
        ),
        End::UpstreamSlow => (
            "gateway",
            CloseCode::Error.into(),
            "upstream message timeout".to_string(),
        ),
        End::Idle => ("gateway", CloseCode::Away.into(), IDLE_TIMEOUT.to_string()),
        End::Client(f) => ("client", close_code(f), close_reason(f)),
        End::Upstream(f) => ("upstream", close_code(f), close_reason(f)),
        End::ClientFailed(e) => ("client_error", 0u16, e.clone()),
        End::UpstreamFailed(e) => ("upstream_error", 0u16, e.clone()),
    };
    // Nothing is relayed from here on: each side gets its close frame and
    // up to CLOSE_WAIT to answer it. Boxed: the closing handshake's state
    // is only needed once, at the end, not for the socket's whole life.
    Box::pin(close_both(end, &mut client, &mut upstream)).await;
    tracing::info!(
        target: "rolegate::access",
        event = "websocket_closed",
        request_id = %relay.request_id,
        route = %relay.route,
        subject = %relay.subject,
        closed_by,
        code,
        reason = %reason,
        duration_ms = started.elapsed().as_millis() as u64,
    );
}

/// Completes the closing handshake on both sides after the relay ended.
async fn close_both(end: End, client: &mut Halves<Ws>, upstream: &mut Halves<UpWs>) {
    let (c_tx, c_rx) = client;
    let (u_tx, u_rx) = upstream;
    match end {
        End::Session(r) => {
            let to_client = close(r.client_code(), r.text());
            let to_upstream = close(CloseCode::Normal, r.text());
            tokio::join!(
                finish(c_tx, c_rx, Some(to_client)),
                finish(u_tx, u_rx, Some(to_upstream)),
            );
        }
        End::GoingAway => {
            tokio::join!(
                finish(c_tx, c_rx, Some(close(CloseCode::Away, GOING_AWAY))),
                finish(u_tx, u_rx, Some(close(CloseCode::Away, GOING_AWAY))),
            );
        }
        End::PolicyReloaded => {
            tokio::join!(
                finish(c_tx, c_rx, Some(close(CloseCode::Restart, POLICY_RELOADED))),
                finish(u_tx, u_rx, Some(close(CloseCode::Away, POLICY_RELOADED))),
            );
        }
        End::Client(f) => {
            // The client's close is passed on; tungstenite answers it.
            tokio::join!(
                finish(u_tx, u_rx, Some(Message::Close(f))),
                finish(c_tx, c_rx, None),
            );
        }
        End::Upstream(f) => {
            tokio::join!(
                finish(c_tx, c_rx, Some(Message::Close(f))),
                finish(u_tx, u_rx, None),
            );
        }
        End::ClientFailed(_) => {
            finish(u_tx, u_rx, Some(close(CloseCode::Away, ""))).await;
        }
        End::UpstreamFailed(_) => {
            finish(c_tx, c_rx, Some(close(CloseCode::Error, UPSTREAM_FAILED))).await;
        }
        End::ClientSlow => {
            tokio::join!(
                finish(c_tx, c_rx, Some(close(CloseCode::Policy, MESSAGE_TIMEOUT))),
                finish(u_tx, u_rx, Some(close(CloseCode::Away, ""))),
            );
        }
        End::UpstreamSlow => {
            tokio::join!(
                finish(c_tx, c_rx, Some(close(CloseCode::Error, UPSTREAM_FAILED))),
                finish(u_tx, u_rx, Some(close(CloseCode::Policy, MESSAGE_TIMEOUT))),
            );
        }
        End::Idle => {
            tokio::join!(
                finish(c_tx, c_rx, Some(close(CloseCode::Away, IDLE_TIMEOUT))),
                finish(u_tx, u_rx, Some(close(CloseCode::Away, IDLE_TIMEOUT))),
            );
        }
    }
}

fn close(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

fn close_code(f: &Option<CloseFrame>) -> u16 {
    f.as_ref().map_or(1005, |f| f.code.into())
}

fn close_reason(f: &Option<CloseFrame>) -> String {
    f.as_ref().map(|f| f.reason.to_string()).unwrap_or_default()
}

/// Sends `msg` (if any) and completes the close on one side: flushes, then
/// reads (and drops) until that side's close or end, within CLOSE_WAIT.
async fn finish<S, R>(tx: &mut S, rx: &mut R, msg: Option<Message>)
where
    S: futures_util::Sink<Message> + Unpin,
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if let Some(m) = msg {
            let _ = tx.send(m).await;
        }
        let _ = tx.flush().await;
        while let Some(Ok(m)) = rx.next().await {
            if m.is_close() {
                break;
            }
        }
        let _ = tx.close().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(f: impl FnOnce(&mut Request<()>)) -> Request<()> {
        let mut r = Request::builder()
            .method("GET")
            .uri("/ws")
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        f(&mut r);
        r
    }

    #[test]
    fn client_handshake_is_validated() {
        assert!(requested(req(|_| {}).headers()));
        assert!(check_handshake(&req(|_| {})).is_ok());
        let bad: [fn(&mut Request<()>); 7] = [
            |r| *r.method_mut() = Method::POST,
            |r| *r.version_mut() = Version::HTTP_10,
            |r| {
                r.headers_mut().remove("connection");
            },
            |r| {
                r.headers_mut()
                    .insert("sec-websocket-version", HeaderValue::from_static("8"));
            },
            |r| {
                r.headers_mut().remove("sec-websocket-key");
            },
            |r| {
                r.headers_mut()
                    .insert("sec-websocket-key", HeaderValue::from_static("c2hvcnQ="));
            },
            |r| {
                r.headers_mut()
                    .insert("content-length", HeaderValue::from_static("5"));
            },
        ];
        for (i, f) in bad.into_iter().enumerate() {
            assert!(check_handshake(&req(f)).is_err(), "case {i}");
        }
        assert!(!requested(
            req(|r| {
                r.headers_mut()
                    .insert("upgrade", HeaderValue::from_static("h2c"));
            })
            .headers()
        ));
    }

    #[test]
    fn credentials_in_offered_subprotocols_are_not_forwarded() {
        let jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";
        let r = req(|r| {
            r.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&format!(
                    "graphql-transport-ws, access_token, {jwt}, base64url.bearer.authorization.k8s.io.dG9r, token, opaque123, chat"
                ))
                .unwrap(),
            );
        });
        let hs = Handshake::take(r.headers()).unwrap();
        let mut fwd = HeaderMap::new();
        hs.restore(&mut fwd);
        assert_eq!(
            fwd["sec-websocket-protocol"],
            "graphql-transport-ws, access_token, token, chat"
        );
        // Only credentials offered: no header at all.
        let r = req(|r| {
            r.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(jwt).unwrap(),
            );
        });
        let mut fwd = HeaderMap::new();
        Handshake::take(r.headers()).unwrap().restore(&mut fwd);
        assert!(!fwd.contains_key("sec-websocket-protocol"));
    }

    #[test]
    fn upstream_101_is_validated() {
        let r = req(|r| {
            r.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static("chat, v2"),
            );
        });
        let hs = Handshake::take(r.headers()).unwrap();
        let mut up = HeaderMap::new();
        up.insert("upgrade", HeaderValue::from_static("websocket"));
        up.insert("connection", HeaderValue::from_static("upgrade"));
        up.insert(
            "sec-websocket-accept",
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        assert!(hs.check_upstream(&up).is_ok());
        up.insert("sec-websocket-protocol", HeaderValue::from_static("v2"));
        assert!(hs.check_upstream(&up).is_ok());
        up.insert("sec-websocket-protocol", HeaderValue::from_static("other"));
        assert!(hs.check_upstream(&up).is_err());
        up.remove("sec-websocket-protocol");
        up.insert(
            "sec-websocket-extensions",
            HeaderValue::from_static("permessage-deflate"),
        );
        assert!(hs.check_upstream(&up).is_err());
        up.remove("sec-websocket-extensions");
        up.insert("sec-websocket-accept", HeaderValue::from_static("wrong"));
        assert!(hs.check_upstream(&up).is_err());

        let mut fwd = HeaderMap::new();
        fwd.insert(
            "sec-websocket-extensions",
            HeaderValue::from_static("permessage-deflate"),
        );
        hs.restore(&mut fwd);
        assert!(!fwd.contains_key("sec-websocket-extensions"));
        assert_eq!(fwd["upgrade"], "websocket");
        assert_eq!(fwd["sec-websocket-protocol"], "chat, v2");
    }

    /// The relay task's future lives as long as its socket: a store call's
    /// state (the Redis check is ~1.8 KB) or the closing handshake's must
    /// not be held inline for the socket's whole life (it was 6.4 KB; about
    /// 2.5 KB since, the upstream side's send timer, the message and idle
    /// timer, the reload signal, the directory entry, the relation tuples,
    /// the pulled relations' clock and the session's wake count included).
    #[test]
    fn relay_task_future_stays_small() {
        fn size<A, B, C, F: std::future::Future>(_: impl Fn(A, B, C) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let task = size(|c, u, (r, g)| relay_task(c, u, r, g));
        assert!(task <= 2656, "relay task future is {task} bytes");
        let check = size::<&'static Binding, bool, (), _>(|b, touch, ()| b.check(touch));
        assert!(check <= 256, "session check future is {check} bytes");
    }
}
