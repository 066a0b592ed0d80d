//! THE request pipeline: every phase, in order, for one request.
//!
//! `handle` is the outer shell (pingora's `logging` always runs, errors
//! included); `handle_inner` reads top to bottom, one line per phase. Each
//! phase is a plain function returning `Result<_, Refusal>`. The runtime is
//! loaded once per request, so a hot reload never mixes two rule sets in
//! one decision.
//!
//! ```text
//! 0 limits       target length, header count,      proxy::limits          (414/431/429)
//!                per-IP rate, HTTP/2 streams per IP
//! 1 normalize    canonical path, host              route::canonicalize
//! 2 route        (host, method, path) → route      route::Router::at      (404 default deny)
//! 3 authenticate token → Principal                 auth::Authenticator    (401)
//!                per-principal rate                proxy::limits          (429)
//! 4 session      idle / revoked / deactivated      session::Store (401)
//! 5 authorize    policy::decide                    policy                 (403)
//! 6 forward      headers, stream body upstream     proxy::headers, upstream (502/504/413)
//!                pick a server (balance, health)   proxy::pool            (503 all down / busy)
//! 7 respond      mask or audit, stream back        mask::BodyMasker (502 if unmaskable,
//!                                                    503 HTTP/1.0 over max_held_bytes)
//!                websocket: 101 → relay            proxy::websocket (400 if not allowed)
//! 8 log          access + decision line            always
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use super::body::{
    BodyTooLarge, ClientBody, Limited, MalformedBody, MaskedBody, Primed, SessionBound, Timed,
    TooSlow,
};
use super::headers::{self, ForwardedFor};
use super::limits::{ConnCounts, HeldBytes, Holding, OverStreamLimit, RateLimiters};
use super::listener::{Conn, HostMemo};
use super::relayed::Relayed;
use super::standing::Standing;
use super::upstream::{self, BodyIdleTimeout, BoxError, UpstreamBody, has_cause};
use super::websocket;
use super::wire::{Framing, RawHead};

use crate::auth::Verified;
use crate::config::{ClientCertRule, Redirect, Route, RouteMask, Runtime};
use crate::directory::{self, UserRecord};
use crate::error::{BadRequest, ClientCertDenial, Deny, Fault, RateLimit, Refusal, error_body};
use crate::mask;
use crate::policy::{self, Decision, Denial, NoRelations, Principal, Relations};
use crate::relations;
use crate::route::{Canonical, PathError, canonicalize};
use crate::session::{
    EndReason, OnStoreError, SessionRef, Store, StoreError, Touch, Verdict, now_ms,
};
use crate::telemetry::AuditLog;

/// The response body type sent to clients.
pub type RespBody = BoxBody<Bytes, BoxError>;

/// Parsed directory entries kept at most (then the cache starts over).
const DIRECTORY_CACHE: usize = 100_000;
/// Parsed directory profiles kept at most.
const PROFILE_CACHE: usize = 10_000;

/// The gateway: the current runtime plus process-wide state.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    ids: RequestIds,
    /// Shared with session-bound response bodies, which outlive `handle`.
    store: Arc<Store>,
    /// Unmasked-PII access records (`masking.audit_log`).
    audit: AuditLog,
    /// Mask policies extended with owner-chosen columns.
    owner_masks: mask::owner::OwnerCache,
    /// Parsed directory entries, by subject (a changed entry is parsed
    /// again), and profiles, by name.
    directory: directory::ParsedCache<UserRecord>,
    profiles: directory::ParsedCache<directory::ProfileVersions>,
    /// Hot reload: what the runtime in force was read from, the last
    /// attempt.
    reloader: crate::reload::Reloader,
    /// What open websockets are told: the gateway shuts down (1001), or a
    /// reload changed the policy (1012). Every relay holds a receiver
    /// until it has closed.
    going_away: tokio::sync::watch::Sender<RelaySignal>,
    /// Open client connections (`listen.max_connections*`); outlives
    /// reloads, like the buckets below.
    conns: Arc<ConnCounts>,
    /// `listen.rate_limit` buckets.
    rates: RateLimiters,
    /// Bytes of masked answers held whole (`masking.max_held_bytes`).
    held: Arc<HeldBytes>,
    /// One counter per public listener, raised by a reload that changes
    /// who the listener admits (client certificate mode or CA bundle,
    /// `redirect_https`, `h2c`): its open connections are then closed
    /// gracefully, so none keeps what the new configuration took away.
    listener_epochs: tokio::sync::watch::Sender<Vec<u64>>,
    /// The `stream_epoch` of the runtime in force, raised by a reload that
    /// cuts streams: an answer still being sent under an older one is cut
    /// at its next check (`session_bound`).
    stream_epoch: Arc<AtomicU64>,
}

/// What the gateway tells open websockets (see `Gateway::going_away`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RelaySignal {
    /// The gateway shuts down.
    pub away: bool,
    /// The `websocket_epoch` of the runtime in force.
    pub epoch: u64,
}

/// Whether two versions of a listener admit the same clients the same way.
/// Certificates and limits do not count: open connections may keep them.
fn same_admission(a: &crate::config::Listener, b: &crate::config::Listener) -> bool {
    a.client_auth == b.client_auth
        && a.client_ca_digest == b.client_ca_digest
        && a.redirect == b.redirect
        && a.h2c == b.h2c
        && a.tls.is_some() == b.tls.is_some()
}

/// Per-request context: what the log line needs, filled in as phases run.
pub struct Ctx {
    /// The gateway's own id of this request: unique, in every log and
    /// audit line and error body.
    pub request_id: String,
    /// The client's `X-Request-Id`, when valid: forwarded and returned as
    /// the request's `X-Request-Id` (so a trace spans hops), logged beside
    /// ours, never trusted to be unique.
    pub client_request_id: Option<String>,
    pub started: Instant,
    /// The wall clock at `started`: the request's clock for token expiry,
    /// session activity and the log line (one read per request, as nginx
    /// reads the time once per event-loop turn).
    pub wall: SystemTime,
    pub peer: SocketAddr,
    /// `peer` as text, and its address as a header value (the
    /// connection's, made once).
    pub peer_text: Arc<str>,
    pub peer_ip: HeaderValue,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// The request came over HTTP/2 (no raw head; no `Connection` header
    /// in answers).
    pub h2: bool,
    /// The request is HTTP/1.0: its answer cannot be chunked, so a cut
    /// body looks complete (masked answers are masked whole first).
    pub http10: bool,
    pub method: http::Method,
    pub path: String,
    pub route: Option<Arc<str>>,
    /// The verified principal, once authenticated (its subject is logged).
    pub principal: Option<Arc<Principal>>,
    pub refusal: Option<(&'static str, &'static str, String)>,
    /// The credential came from the cookie (cleared when the session ends).
    pub from_cookie: bool,
    /// `Accept: text/html`: a browser navigation (login redirect).
    pub accept_html: bool,
    /// A websocket upgrade: the client's handshake headers, kept aside
    /// while the hop-by-hop strip runs (set in phase 6).
    pub websocket: Option<websocket::Handshake>,
    /// A websocket upgrade: the connection's place under
    /// `listen.max_connections`, handed to the relay (set in phase 6).
    pub slot: Option<Arc<super::limits::ConnSlot>>,
    /// The answer is written by `h1server`, which takes an upstream's
    /// answer fields as their bytes (`relayed.rs`).
    relay: bool,
    /// The request's raw head, when `h1server` read it (hyper's requests
    /// carry the tap's among their extensions).
    raw: Option<RawHead>,
    /// The upstream's answer fields as its bytes, cleaned (phase 7), for
    /// `h1server` to write.
    relayed: Option<Box<Relayed>>,
    /// [`Ctx::trace_id`] as a header value, made once for the upstream
    /// request and the answer.
    trace_value: Option<HeaderValue>,
    /// The connection's upstream-head timer, while this request has it
    /// (`listener::HeadTimer`).
    head_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

/// The normalised request target.
struct Target {
    /// (Shared with the connection's memo of its last `Host`.)
    host: Option<Arc<str>>,
    /// `canon.path` is forwarded as is; routing uses `canon.routing_path()`.
    canon: Canonical,
}

impl Ctx {
    /// The verified subject, or empty.
    pub fn subject(&self) -> &str {
        self.principal.as_ref().map_or("", |p| p.subject.as_str())
    }

    /// The `X-Request-Id` sent upstream and returned: the client's when
    /// valid, else ours.
    pub fn trace_id(&self) -> &str {
        self.client_request_id
            .as_deref()
            .unwrap_or(&self.request_id)
    }

    /// [`Ctx::trace_id`] as a header value (made on first use; `None` if
    /// it is not one, which the id's checks rule out).
    fn trace_value(&mut self) -> Option<HeaderValue> {
        if self.trace_value.is_none() {
            self.trace_value = HeaderValue::from_str(self.trace_id()).ok();
        }
        self.trace_value.clone()
    }
}

impl Gateway {
    /// A gateway serving `runtime`, with sessions in `store`. The store
    /// lives outside the runtime: a config reload keeps every session.
    pub fn new(runtime: Runtime, store: Store) -> Arc<Self> {
        runtime.start_health_checks();
        let audit = AuditLog::new(runtime.masking.audit_log.clone());
        Arc::new(Gateway {
            runtime: ArcSwap::from_pointee(runtime),
            ids: RequestIds::new(),
            store: Arc::new(store),
            audit,
            owner_masks: Default::default(),
            directory: directory::ParsedCache::new(DIRECTORY_CACHE),
            profiles: directory::ParsedCache::new(PROFILE_CACHE),
            reloader: Default::default(),
            going_away: tokio::sync::watch::Sender::new(RelaySignal::default()),
            conns: Arc::default(),
            held: Arc::default(),
            rates: RateLimiters::default(),
            listener_epochs: tokio::sync::watch::Sender::new(Vec::new()),
            stream_epoch: Arc::default(),
        })
    }

    /// Hot reload of this gateway's configuration.
    pub fn reloader(&self) -> &crate::reload::Reloader {
        &self.reloader
    }

    /// Tells open websockets to close (1001, going away) and waits until
    /// they have, at most `limit`. Returns how many were still open then.
    pub async fn close_websockets(&self, limit: std::time::Duration) -> usize {
        self.going_away.send_modify(|s| s.away = true);
        let _ = tokio::time::timeout(limit, self.going_away.closed()).await;
        self.going_away.receiver_count()
    }

    /// A receiver of the shutdown and policy signals for one websocket
    /// relay.
    pub(crate) fn going_away(&self) -> tokio::sync::watch::Receiver<RelaySignal> {
        self.going_away.subscribe()
    }

    /// The runtime requests currently see.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Replaces the runtime (a reload); requests in flight finish on the
    /// old one, except answers still being sent a second after their
    /// request began when the reload cuts streams (`reload.streams`).
    /// `policy_changed`: the config or rules text differs from the runtime
    /// in force, and with `reload.websockets: close` every open
    /// websocket is closed (1012), so that its client reconnects and is
    /// authorized anew (as it is, whatever the setting, when a listener's
    /// admission changed).
    pub fn swap_policy(&self, mut runtime: Runtime, policy_changed: bool) {
        runtime.start_health_checks();
        let old = self.runtime();
        let changed: Vec<usize> = (runtime.listen.listeners.iter().enumerate())
            .filter(|(i, l)| {
                old.listen
                    .listeners
                    .get(*i)
                    .is_none_or(|o| !same_admission(o, l))
            })
            .map(|(i, _)| i)
            .collect();
        // A listener that now admits other clients (a CA bundle or CRL
        // changed): its upgraded websockets, detached from their
        // connections, are closed too, whatever `reload.websockets` says.
        let close = (policy_changed && runtime.reload.close_websockets) || !changed.is_empty();
        let epoch = self.going_away.borrow().epoch + u64::from(close);
        runtime.websocket_epoch = epoch;
        // Answers still being sent: cut by the same changes, under their
        // own setting. Raised after the swap, and compared as "newer than
        // the authorizing runtime's", so a request of the new runtime that
        // starts in between is never cut.
        let cut = (policy_changed && runtime.reload.cut_streams) || !changed.is_empty();
        let streams = old.stream_epoch + u64::from(cut);
        runtime.stream_epoch = streams;
        self.runtime.swap(Arc::new(runtime));
        if cut {
            self.stream_epoch.fetch_max(streams, Ordering::AcqRel);
            tracing::info!(target: "rolegate::reload", "policy or listener admission changed: cutting answers still being sent");
        }
        if close {
            // After the swap: a relay of the old runtime that subscribes
            // later still sees a newer epoch than its own.
            self.going_away.send_modify(|s| s.epoch = epoch);
            let open = self.going_away.receiver_count();
            if open > 0 {
                tracing::info!(target: "rolegate::reload", websockets = open, "policy or listener admission changed: closing open websockets");
            }
        }
        if !changed.is_empty() {
            tracing::info!(
                target: "rolegate::reload",
                listeners = ?changed.iter().map(|i| i + 1).collect::<Vec<_>>(),
                "listener admission changed (client certificates, redirect_https or h2c): closing its open connections gracefully"
            );
            self.listener_epochs.send_modify(|epochs| {
                for i in changed {
                    if epochs.len() <= i {
                        epochs.resize(i + 1, 0);
                    }
                    epochs[i] += 1;
                }
            });
        }
        // A rotated audit log file is written anew from here on.
        self.audit.reopen();
    }

    /// Opens the audit log anew at its next record (after log rotation:
    /// SIGUSR1, and every reload attempt, failed ones included).
    pub fn reopen_audit(&self) {
        self.audit.reopen();
    }

    /// Changes of who the public listeners admit (see `listener_epochs`).
    pub(crate) fn listener_epochs(&self) -> tokio::sync::watch::Receiver<Vec<u64>> {
        self.listener_epochs.subscribe()
    }

    /// Open client connections (the listener counts them at accept).
    pub fn connections(&self) -> &Arc<ConnCounts> {
        &self.conns
    }

    /// The session store (admin API, shutdown flush).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A request's context before any phase ran.
    fn start(
        &self,
        req: &Request<ClientBody>,
        conn: &Conn,
        relay: bool,
        raw: Option<RawHead>,
    ) -> Ctx {
        let (request_id, client_request_id) = self.ids.take(req.headers());
        Ctx {
            request_id,
            client_request_id,
            started: Instant::now(),
            wall: SystemTime::now(),
            peer: conn.peer,
            peer_text: conn.peer_text.clone(),
            peer_ip: conn.peer_ip.clone(),
            https: conn.tls,
            h2: req.version() == http::Version::HTTP_2,
            http10: req.version() == http::Version::HTTP_10,
            method: req.method().clone(),
            path: String::new(),
            route: None,
            principal: None,
            refusal: None,
            from_cookie: false,
            accept_html: accepts_html(req.headers()),
            websocket: None,
            slot: None,
            relay,
            raw,
            relayed: None,
            trace_value: None,
            head_timer: None,
        }
    }

    /// Handles one request: the inner pipeline, then the log line, always.
    pub async fn handle(&self, req: Request<ClientBody>, conn: &Conn) -> Response<RespBody> {
        let (resp, relayed) = self.handle_with(Box::new(req), None, conn, false).await;
        debug_assert!(relayed.is_none(), "relayed fields nobody asked for");
        resp
    }

    /// [`Gateway::handle`] for `h1server`, with the head it read; the
    /// upstream's answer fields come back as they came, cleaned, where the
    /// route reads none of them (`relayed.rs`), for it to write.
    pub fn handle_h1<'a>(
        &'a self,
        req: Box<Request<ClientBody>>,
        raw: RawHead,
        conn: &'a Conn,
    ) -> impl std::future::Future<Output = (Response<RespBody>, Option<Box<Relayed>>)> + 'a {
        self.handle_with(req, Some(raw), conn, true)
    }

    async fn handle_with(
        &self,
        req: Box<Request<ClientBody>>,
        raw: Option<RawHead>,
        conn: &Conn,
        relay: bool,
    ) -> (Response<RespBody>, Option<Box<Relayed>>) {
        let rt = self.runtime.load_full();
        let mut ctx = self.start(&req, conn, relay, raw);
        ctx.head_timer = conn.head_timer.try_lock().ok().and_then(|mut t| t.take());
        let (resp, relayed) = match self.handle_inner(&rt, &mut ctx, conn, req).await {
            Ok(resp) => (resp, ctx.relayed.take()),
            // An upstream's fields never go with a refusal.
            Err(refusal) => (refuse(&rt, &mut ctx, refusal), None),
        };
        if let Some(t) = ctx.head_timer.take()
            && let Ok(mut kept) = conn.head_timer.try_lock()
        {
            *kept = Some(t);
        }
        (finish(&mut ctx, resp), relayed)
    }

    /// A `redirect_https` listener's answer to every request: 308 to the
    /// same target over https (no routing, nothing upstream), logged like
    /// any request. A request without a usable host is refused as usual.
    pub fn redirect(
        &self,
        req: Request<ClientBody>,
        conn: &Conn,
        to: &Redirect,
    ) -> Response<RespBody> {
        let rt = self.runtime.load_full();
        let mut ctx = self.start(&req, conn, false, None);
        ctx.path = req.uri().path().to_string();
        ctx.route = Some("(redirect_https)".into());
        if let Err(refusal) = self.admit(&rt, conn, &req, None) {
            let resp = refuse(&rt, &mut ctx, refusal);
            return finish(&mut ctx, resp);
        }
        let h2 = ctx.h2;
        let location = || -> Result<HeaderValue, Refusal> {
            let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            let url = match to {
                Redirect::Url(base) => format!("{base}{target}"),
                Redirect::Port(port) => {
                    let host = if h2 {
                        h2_host(&req)?.map(Arc::from)
                    } else {
                        request_host(&req, None)?
                    };
                    let host = host.ok_or(Deny::BadRequest(BadRequest::MissingHost))?;
                    match port {
                        443 => format!("https://{host}{target}"),
                        p => format!("https://{host}:{p}{target}"),
                    }
                }
            };
            HeaderValue::from_str(&url)
                .map_err(|_| Deny::BadHost("cannot redirect this target").into())
        };
        let resp = match location() {
            Ok(loc) => {
                let mut resp =
                    Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
                *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
                resp.headers_mut().insert(header::LOCATION, loc);
                resp
            }
            Err(refusal) => refuse(&rt, &mut ctx, refusal),
        };
        finish(&mut ctx, resp)
    }

    async fn handle_inner(
        &self,
        rt: &Arc<Runtime>,
        ctx: &mut Ctx,
        conn: &Conn,
        mut req: Box<Request<ClientBody>>,
    ) -> Result<Response<RespBody>, Refusal> {
        // 0 limits: target length, header count, the client's rate.
        self.admit(rt, conn, &req, ctx.raw.as_ref())?;
        // 1 normalize: one canonical path, decided once and forwarded as is.
        let target = normalize(rt, ctx, conn, &req)?;
        if req.method() == Method::POST && target.canon.path == rt.sessions.logout_path {
            return self.logout(rt, ctx, &req, target.host.as_deref()).await;
        }
        // 2 route: default deny.
        let m = rt
            .router
            .at(
                target.host.as_deref(),
                req.method().as_str(),
                target.canon.routing_path(),
            )
            .ok_or(Deny::NoRoute)?;
        let route = &rt.routes[m.route];
        ctx.route = Some(route.name.clone());
        // 2b the route's transport requirement: a verified client
        //    certificate (checked before any token: no token makes up for it).
        if let Some(rule) = &route.client_cert {
            check_client_cert(rule, conn, unix_secs(ctx.wall))?;
        }
        // 2b websocket: only on routes that allow it, only a valid handshake.
        let websocket = websocket::requested(req.headers());
        if websocket {
            if !route.websocket {
                return Err(Deny::WebsocketNotAllowed.into());
            }
            websocket::check_handshake(&req)?;
        }
        // 3 authenticate (public routes skip it, and the session stage, and
        //   get no identity).
        let verified = match authenticate(rt, ctx, conn, route, &req)? {
            Some(v) => Some(self.directory_principal(rt, v)?),
            None => None,
        };
        // 3c the principal's rate (after authentication: a forged token
        //    never spends someone else's bucket).
        if let Some(v) = &verified {
            self.principal_rate(rt, &v.principal)?;
        }
        if websocket && ctx.from_cookie {
            websocket::check_origin(
                req.headers(),
                target.host.as_deref(),
                &route.websocket_origins,
            )?;
        }
        // 3d cross-site request forgery: a browser sends the cookie with a
        //    form or fetch from any site (`SameSite=None`, or a sibling
        //    subdomain under `Lax`); it always says which page sent it.
        if ctx.from_cookie
            && !is_safe_method(req.method())
            && !websocket::cookie_request_allowed(
                req.headers(),
                target.host.as_deref(),
                &rt.forward.cookie_origins,
            )
        {
            return Err(Deny::CookieOrigin.into());
        }
        // Whether the principal holds the mask's `unmask_with` (no principal:
        // it does not).
        let mut unmask = false;
        // The pushed relation tuples that answered true (re-checked while
        // a websocket or a long-lived answer lasts).
        let mut tuples = Vec::new();
        // The pulled relations that answered true (asked again while a
        // websocket or a long-lived answer lasts).
        let mut pulled = Vec::new();
        if let Some(v) = &verified {
            // 5a decide first (pure), so that 4 knows whether to touch:
            //    only allowed, non-passive requests keep a session alive.
            //    A masked route's `unmask_with` is decided in the same pass.
            let (pr, rp) = (&*v.principal, &route.policy);
            let decide = |rel: &dyn Relations| match &route.mask {
                Some(mk) => policy::decide_pair(&rt.policy, pr, rp, &mk.unmask, &m.params, rel),
                None => (policy::decide(&rt.policy, pr, rp, &m.params, rel), false),
            };
            // 5a' relations: a first pass with every relation unknown tells
            //    which ones the outcome depends on (three-valued logic: a
            //    definite outcome stays so whatever they answer); only then
            //    are they pulled (concurrently, cached) and decided again.
            let recorder = relations::Recorder::default();
            let (mut decision, mut u) = decide(&recorder);
            let questions = recorder.into_questions();
            let unknown = |d: &Decision| matches!(d, Decision::Deny(d) if d.code == Denial::RELATION_UNAVAILABLE);
            // The unmask half is undecided only if, alone, it is unknown.
            let unmask_unknown = || match &route.mask {
                Some(mk) if decision.is_allow() && !u => unknown(&policy::decide(
                    &rt.policy,
                    pr,
                    &mk.unmask,
                    &m.params,
                    &NoRelations,
                )),
                _ => false,
            };
            // A session this gateway knows is refused causes no lookup
            // (the session stage below answers 401).
            let known_refused = || {
                let id = SessionRef {
                    issuer: &pr.issuer,
                    subject: &pr.subject,
                    session: pr.session.as_deref().unwrap_or(""),
                };
                self.store
                    .known_refused(id, v.iat.map(|s| s.saturating_mul(1000)))
            };
            if !questions.is_empty() && (unknown(&decision) || unmask_unknown()) && !known_refused()
            {
                let answers =
                    relations::resolve(rt, &rt.relation_cache, self.store(), pr, questions).await;
                (decision, u) = decide(&answers);
                tuples = answers.pushed_true(rt, pr);
                pulled = answers.pulled_true(rt);
            }
            unmask = u;
            // 4 session: ended, idle, deactivated → 401 whatever the decision.
            //   Judged at the request's clock (its start): a pull relation
            //   asked above may have taken up to its timeout since, so an
            //   idle or lifetime end can land that much later, never sooner.
            self.session(
                rt,
                v,
                decision.is_allow() && !route.passive,
                unix_ms(ctx.wall),
            )
            .await?;
            // 5b authorize.
            if let Decision::Deny(d) = decision {
                return Err(Deny::Forbidden(d).into());
            }
        }
        let principal = verified.as_ref().map(|v| &*v.principal);
        if websocket {
            // 6 + 7 for a websocket (never masked: `check` refuses a mask on
            //   a websocket route).
            let client = hyper::upgrade::on(&mut *req);
            ctx.slot = conn.slot.clone();
            let resp = forward(rt, ctx, route, &target, principal, false, req).await?;
            let authorized = verified.as_ref().map(|v| (v, standing(v, tuples), pulled));
            return self.upgrade(rt, ctx, route, authorized, client, resp).await;
        }
        // 7a mask plan, decided before forwarding (a masked answer is fetched
        //    whole: no Range, identity encoding preferred).
        let mask = route.mask.as_ref().map(|mk| (mk, unmask));
        let masking = mask.is_some_and(|(_, unmasked)| !unmasked);
        let head = req.method() == Method::HEAD;
        // 6 forward.
        let resp = forward(rt, ctx, route, &target, principal, masking, req).await?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // Only a websocket handshake (above) may switch protocols; a
            // 101 to anything else would hand the client a connection
            // nobody relays.
            return Err(Fault::UpstreamFailed(
                rt.upstreams[route.upstream].name.clone(),
                "101 Switching Protocols to a request that is not a websocket handshake".into(),
            )
            .into());
        }
        // 7 respond: as is, unmasked with an audit record, or masked.
        let resp = match mask {
            None => {
                let (resp, relayed) = respond(rt, ctx, resp);
                ctx.relayed = relayed;
                resp
            }
            Some((_, true)) => {
                let record = route
                    .record
                    .as_deref()
                    .and_then(|p| m.params.iter().find(|(k, _)| k == p))
                    .map(|(_, v)| v.as_str());
                self.audit_unmasked(ctx, route, verified.as_ref(), record, resp.status(), head)?;
                let (mut resp, relayed) = respond(rt, ctx, resp);
                debug_assert!(relayed.is_none(), "fields relayed on a masked route");
                make_private(resp.headers_mut());
                resp
            }
            Some((mk, false)) => {
                let policy = self.mask_policy(mk, &m.params)?;
                let upstream = &rt.upstreams[route.upstream].name;
                mask_response(rt, ctx, policy, upstream, resp, head, &self.held).await?
            }
        };
        // A response that outlives its session (an event stream, a slow
        // download) is cut when the session ends, or what else it was
        // authorized on changes.
        Ok(match &verified {
            Some(v) => self.session_bound(rt, v, standing(v, tuples), pulled, ctx.started, resp),
            None => resp,
        })
    }

    /// Phase 7 for a websocket: a `101` with a valid handshake starts the
    /// relay; any other answer is passed on as a normal response. The
    /// socket is bound to the principal's session and to what else it was
    /// authorized on (`authorized`; none on a public route).
    async fn upgrade(
        &self,
        rt: &Arc<Runtime>,
        ctx: &Ctx,
        route: &Route,
        authorized: Option<(&Verified, Standing, Vec<relations::Question>)>,
        client: hyper::upgrade::OnUpgrade,
        mut resp: Response<UpstreamBody>,
    ) -> Result<Response<RespBody>, Refusal> {
        let up = &rt.upstreams[route.upstream].name;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (resp, relayed) = respond(rt, ctx, resp);
            debug_assert!(relayed.is_none(), "fields relayed to a websocket handshake");
            return Ok(match authorized {
                Some((v, standing, pulled)) => {
                    self.session_bound(rt, v, standing, pulled, ctx.started, resp)
                }
                None => resp,
            });
        }
        let failed = |why: String| Refusal::from(Fault::UpstreamFailed(up.clone(), why));
        let handshake = ctx
            .websocket
            .as_ref()
            .ok_or_else(|| failed("101 to a request that was not an upgrade".into()))?;
        let accept = handshake
            .check_upstream(resp.headers())
            .map_err(|why| failed(format!("invalid websocket handshake: {why}")))?;
        let upstream = hyper::upgrade::on(&mut resp)
            .await
            .map_err(|e| failed(format!("upstream upgrade failed: {e}")))?;
        // The upgraded connection stays counted against `max_requests`.
        let pick = resp.body_mut().take_pick();
        let (mut parts, _) = resp.into_parts();
        clean_response(rt, ctx, &mut parts.headers, None);
        let binding = authorized.map(|(v, standing, pulled)| {
            let p = &v.principal;
            websocket::Binding {
                store: self.store.clone(),
                issuer: p.issuer.clone(),
                subject: p.subject.clone(),
                session: p.session.clone().unwrap_or_default(),
                idle_ms: rt.idle_timeout(p).as_millis() as u64,
                max_lifetime_ms: rt.sessions.max_lifetime.map(|m| m.as_millis() as u64),
                token_exp_ms: v.exp.saturating_mul(1000),
                token_iat_ms: v.iat.map(|s| s.saturating_mul(1000)),
                active: !route.passive,
                on_store_error: rt.sessions.on_store_error,
                standing,
                pulls: (!pulled.is_empty()).then(|| {
                    Box::new(websocket::Pulls {
                        every: relations::ask_again_every(rt, &pulled),
                        rt: rt.clone(),
                        principal: p.clone(),
                        questions: pulled,
                    })
                }),
            }
        });
        websocket::spawn(
            client,
            upstream,
            websocket::Relay {
                binding,
                max_message: usize::try_from(rt.listen.max_websocket_message_bytes)
                    .unwrap_or(usize::MAX),
                request_id: ctx.request_id.clone(),
                route: route.name.to_string(),
                subject: ctx.subject().to_string(),
                epoch: rt.websocket_epoch,
                slot: ctx.slot.clone(),
                pick,
                send_timeout: rt.listen.send_timeout,
                message_timeout: rt.listen.websocket_message_timeout,
                idle_timeout: rt.listen.websocket_idle_timeout,
            },
            self.going_away(),
        );
        let body = Full::new(Bytes::new()).map_err(|e| match e {}).boxed();
        Ok(websocket::switching(parts.headers, accept, body))
    }

    /// Phase 0: the head limits of `listen` (a JSON 414/431 where the HTTP
    /// layer would answer bare, or not at all) and the client's per-IP
    /// bucket, before anything costs more than a hash lookup.
    fn admit(
        &self,
        rt: &Runtime,
        conn: &Conn,
        req: &Request<ClientBody>,
        raw: Option<&RawHead>,
    ) -> Result<(), Refusal> {
        // First of all: every request a client sends counts, refused or not.
        self.rates
            .check_ip(rt.listen.rate_limit.per_ip.as_ref(), conn.peer.ip())
            .map_err(|retry_after| {
                Refusal::from(Deny::RateLimited {
                    limit: RateLimit::Ip,
                    retry_after,
                })
            })?;
        // HTTP/2: the listener counted this stream over the client's limit.
        if req.extensions().get::<OverStreamLimit>().is_some() {
            return Err(Deny::RateLimited {
                limit: RateLimit::Streams,
                retry_after: 1,
            }
            .into());
        }
        // The target as sent (HTTP/1.1: the raw head's copy, fragment and
        // absolute form included); HTTP/2: `:path`.
        let target = match raw.or_else(|| req.extensions().get::<RawHead>()) {
            Some(raw) => raw.target_len(),
            None => req.uri().path_and_query().map_or(0, |pq| pq.as_str().len()),
        };
        if target > rt.listen.max_uri_bytes {
            return Err(Deny::UriTooLong.into());
        }
        if req.headers().len() > rt.listen.max_headers {
            return Err(Deny::TooManyHeaders.into());
        }
        Ok(())
    }

    /// Wraps the body so it stops once the session is over or what else
    /// it was authorized on changed (`standing`, checked every second
    /// against this gateway's view; pulled relations, asked again by a task
    /// of their own: [`PulledWatch`]).
    fn session_bound(
        &self,
        rt: &Arc<Runtime>,
        v: &Verified,
        standing: Standing,
        pulled: Vec<relations::Question>,
        since: Instant,
        resp: Response<RespBody>,
    ) -> Response<RespBody> {
        let store = self.store.clone();
        let p = v.principal.clone();
        let idle_ms = rt.idle_timeout(&p).as_millis() as u64;
        let max_life = rt.sessions.max_lifetime.map(|m| m.as_millis() as u64);
        fn id(p: &Principal) -> SessionRef<'_> {
            SessionRef {
                issuer: &p.issuer,
                subject: &p.subject,
                session: p.session.as_deref().unwrap_or(""),
            }
        }
        // The key the session check made (no second digest per request).
        let created = max_life.and_then(|_| {
            let key = *p.session_key.get_or_init(|| id(&p).key().0);
            store.created_ms(&crate::session::table::Key(key))
        });
        let (epochs, authorized_in) = (self.stream_epoch.clone(), rt.stream_epoch);
        // Pulled relations are asked again (every `cache_ttl`, at least a
        // second) by a task started at the answer's first check, which ends
        // with the answer; a false or unanswerable one cuts it.
        let pulls = (!pulled.is_empty()).then(|| PulledWatch {
            rt: rt.clone(),
            questions: pulled,
            task: std::sync::OnceLock::new(),
        });
        let still_valid = move || {
            let now = now_ms();
            epochs.load(Ordering::Acquire) <= authorized_in
                && store.still_valid(id(&p), now, idle_ms, max_life, created)
                && standing.check(&store, &p.subject, now).is_ok()
                && pulls.as_ref().is_none_or(|w| w.holds(&store, &p))
        };
        let every = std::time::Duration::from_secs(1);
        resp.map(|b| SessionBound::new(b, every, since, still_valid).boxed())
    }

    /// Phase 3b: with a user directory, the principal of a subject that has
    /// an entry comes from the entry (roles, partners, teams, profiles,
    /// grants; a deactivated entry is refused), whatever the token says.
    /// Fails closed while this instance's copy of the directory may be
    /// stale (Redis events down) or an entry cannot be read.
    pub(crate) fn directory_principal(
        &self,
        rt: &Runtime,
        mut v: Verified,
    ) -> Result<Verified, Refusal> {
        let Some(dir) = &rt.directory else {
            return Ok(v);
        };
        if v.principal.issuer != dir.issuer {
            return Ok(v);
        }
        if !self.store.shared_fresh() {
            return Err(Fault::StoreUnavailable("directory not in sync".into()).into());
        }
        let shared = self.store.shared();
        let now = now_ms();
        let entry = shared.get(directory::USERS, &v.principal.subject, now);
        v.directory_entry = Some(entry.clone());
        let Some(raw) = entry else {
            return Ok(v);
        };
        let rec = self
            .directory
            .get(&v.principal.subject, raw)
            .map_err(|e| Fault::StoreUnavailable(format!("unreadable directory entry: {e}")))?;
        if !rec.active {
            return Err(Deny::UserDeactivated.into());
        }
        let profile = |name: &str| {
            let raw = shared.get(directory::PROFILES, name, now)?;
            self.profiles.get(name, raw).ok()
        };
        v.principal = Arc::new(directory::resolve(&v.principal, &rec, &profile));
        Ok(v)
    }

    /// The mask policy for this response: the route's, plus the columns
    /// the resource's owner chose (`owner_columns`), read from the session
    /// store's shared records. Fails closed: a choice that cannot be read,
    /// or a store copy that may be stale (Redis events down), refuses the
    /// answer (502 `unmaskable_response`).
    fn mask_policy(
        &self,
        mk: &RouteMask,
        params: &[(String, String)],
    ) -> Result<Arc<mask::Policy>, Refusal> {
        let Some(owner) = &mk.owner else {
            return Ok(mk.policy.clone());
        };
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let unmaskable = |why: &str| Refusal::from(Fault::Unmaskable(why.to_string()));
        if !self.store.shared_fresh() {
            return Err(unmaskable(
                "owner-chosen columns unknown: session store events not in sync",
            ));
        }
        let resource = param(&owner.scope_param).unwrap_or_default();
        let record = owner
            .record_param
            .as_deref()
            .and_then(param)
            .unwrap_or_default();
        // The choice for every record of the resource and for this record
        // (any case: choices of older versions are folded at start).
        let ns = mask::owner::choice_ns(&mk.policy.name);
        let now = now_ms();
        let shared = self.store.shared();
        // Under the id as written and every integer a lenient parser may
        // read it as (a backend reading `042` or `0x2a` as 42 must not
        // serve it without 42's choice).
        let readings = mask::owner::canonical_numbers(resource);
        let mut keys = Vec::with_capacity(2 + 2 * readings.len());
        for id in std::iter::once(resource).chain(readings.iter().map(String::as_str)) {
            keys.push(mask::owner::choice_key(id, record));
            if !record.is_empty() {
                keys.push(mask::owner::choice_key(id, ""));
            }
        }
        let stored: Vec<Arc<str>> = keys
            .iter()
            .filter_map(|k| shared.get(&ns, k, now))
            .collect();
        let merged = match stored.as_slice() {
            [] => return Ok(mk.policy.clone()),
            [one] => Some(one.clone()),
            several => mask::owner::merge_choices(several.iter().map(|s| &**s)).map(Arc::from),
        };
        merged
            .and_then(|s| {
                self.owner_masks
                    .policy(&mk.policy, &s, &owner.spec.strategy)
            })
            .ok_or_else(|| unmaskable("owner-chosen columns unreadable"))
    }

    /// Writes the audit record of a response carrying unmasked PII; a
    /// failed write refuses the answer (no unmasked data without a trace).
    fn audit_unmasked(
        &self,
        ctx: &Ctx,
        route: &Route,
        v: Option<&Verified>,
        record: Option<&str>,
        status: StatusCode,
        head: bool,
    ) -> Result<(), Refusal> {
        let (Some(v), Some(mk)) = (v, &route.mask) else {
            return Ok(());
        };
        // Any answer with a body may carry the record (a 409 or 422 that
        // echoes it too), so every bodied answer is audited.
        let bodyless = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        if bodyless || head {
            return Ok(());
        }
        let rec = crate::telemetry::UnmaskedAccess {
            at_ms: now_ms(),
            event: "unmasked_access",
            user: &v.principal.subject,
            issuer: &v.principal.issuer,
            session: v.principal.session.as_deref(),
            route: &route.name,
            mask: &mk.policy.name,
            record,
            method: ctx.method.as_str(),
            path: &ctx.path,
            status: status.as_u16(),
            request_id: &ctx.request_id,
            client_request_id: ctx.client_request_id.as_deref(),
        };
        self.audit.write(&rec).map_err(|e| {
            tracing::error!(target: "rolegate::audit", error = %e, path = %self.audit.path().display(), "audit log write failed");
            Refusal::from(Fault::AuditUnavailable(e.to_string()))
        })
    }

    /// Phase 4: one store call per request.
    pub(crate) async fn session(
        &self,
        rt: &Runtime,
        v: &Verified,
        touch: bool,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        match self.session_verdict(rt, v, touch, now_ms).await {
            Ok(r) => r,
            Err(e) => self.store_failed(rt, e),
        }
    }

    /// The session check with a store that cannot answer refused (503)
    /// whatever `sessions.on_store_error` says: the admin API's user
    /// callers, who change what others may see, never act unchecked.
    pub(crate) async fn session_strict(&self, rt: &Runtime, v: &Verified) -> Result<(), Refusal> {
        self.session_verdict(rt, v, false, now_ms())
            .await
            .unwrap_or_else(|e| Err(Fault::StoreUnavailable(e.0).into()))
    }

    /// The store's verdict on `v`'s session (`Err`: the store could not
    /// answer).
    async fn session_verdict(
        &self,
        rt: &Runtime,
        v: &Verified,
        touch: bool,
        now_ms: u64,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let p = &v.principal;
        let idle = rt.idle_timeout(p);
        let id = SessionRef {
            issuer: &p.issuer,
            subject: &p.subject,
            session: p.session.as_deref().unwrap_or(""),
        };
        let key = p.session_key.get_or_init(|| id.key().0);
        let t = Touch {
            issuer: id.issuer,
            subject: id.subject,
            session: id.session,
            now_ms,
            idle_ms: idle.as_millis() as u64,
            max_lifetime_ms: rt.sessions.max_lifetime.map(|m| m.as_millis() as u64),
            token_exp_ms: v.exp.saturating_mul(1000),
            // The start of `iat`'s second: a token issued in the second of
            // a deactivation counts as issued before it (fail closed).
            token_iat_ms: v.iat.map(|s| s.saturating_mul(1000)),
            touch,
            key: Some(key),
        };
        Ok(match self.store.check(&t).await? {
            Verdict::Active => Ok(()),
            Verdict::Ended(reason) => Err(Deny::SessionEnded(reason).into()),
            Verdict::Deactivated => Err(Deny::UserDeactivated.into()),
        })
    }

    fn store_failed(&self, rt: &Runtime, e: StoreError) -> Result<(), Refusal> {
        match rt.sessions.on_store_error {
            OnStoreError::Deny => Err(Fault::StoreUnavailable(e.0).into()),
            OnStoreError::Allow => {
                tracing::warn!(target: "rolegate::decision", error = %e, "session store unavailable: request allowed without session check (on_store_error: allow)");
                Ok(())
            }
        }
    }

    /// `POST {sessions.logout_path}`: ends the caller's session for good.
    /// `listen.rate_limit.per_principal` for an authenticated principal.
    fn principal_rate(&self, rt: &Runtime, p: &Principal) -> Result<(), Refusal> {
        self.rates
            .check_principal(
                rt.listen.rate_limit.per_principal.as_ref(),
                &p.issuer,
                &p.subject,
            )
            .map_err(|retry_after| {
                Deny::RateLimited {
                    limit: RateLimit::Principal,
                    retry_after,
                }
                .into()
            })
    }

    async fn logout(
        &self,
        rt: &Runtime,
        ctx: &mut Ctx,
        req: &Request<ClientBody>,
        host: Option<&str>,
    ) -> Result<Response<RespBody>, Refusal> {
        ctx.route = Some("(logout)".into());
        let v = rt
            .auth
            .authenticate(req.headers())
            .map_err(Deny::Unauthenticated)?;
        // A page of another site must not end the session its visitor's
        // cookie carries (a cross-site form POST, `SameSite=None` cookies).
        if v.from_cookie
            && !websocket::cookie_request_allowed(req.headers(), host, &rt.forward.cookie_origins)
        {
            return Err(Deny::LogoutOrigin.into());
        }
        ctx.principal = Some(v.principal.clone());
        // Logouts are the principal's requests too (each costs store work).
        self.principal_rate(rt, &v.principal)?;
        // Every token of a deactivated user answers 401, this path too
        // (its sessions are ended already).
        if self
            .store
            .is_deactivated(&v.principal.subject)
            .await
            .map_err(|e| Fault::StoreUnavailable(e.0))?
        {
            return Err(Deny::UserDeactivated.into());
        }
        let sid = v.principal.session.as_deref().unwrap_or("");
        let id = SessionRef {
            issuer: &v.principal.issuer,
            subject: &v.principal.subject,
            session: sid,
        };
        self.store
            .end(id, EndReason::Logout, v.exp.saturating_mul(1000))
            .await
            .map_err(|e| Fault::StoreUnavailable(e.0))?;
        // The admin API's actor form: a subject can never pass for the
        // operator (`admin@…`).
        tracing::info!(target: "rolegate::audit", actor = %format_args!("user:{}@{}", v.principal.subject, ctx.peer), action = "logout", object = sid, "session ended");
        let body = serde_json::json!({ "logged_out": true, "session": sid }).to_string();
        let mut resp = json_response(StatusCode::OK, body);
        if let Some(name) = &rt.forward.cookie {
            resp.headers_mut()
                .insert(header::SET_COOKIE, clear_cookie(name, ctx.https));
        }
        Ok(resp)
    }
}

/// What else than its session an authorization of `v` stands on: its
/// directory entry and the pushed relation `tuples` that answered true.
fn standing(v: &Verified, tuples: Vec<(String, String)>) -> Standing {
    Standing {
        directory_entry: v.directory_entry.clone(),
        tuples: tuples.into_boxed_slice(),
    }
}

/// The pulled relations a long-lived answer was allowed on, asked again
/// while it lasts (`Gateway::session_bound`) by a task started at the
/// answer's first check (a second after its request: shorter answers
/// never start one) and aborted when the answer is dropped.
struct PulledWatch {
    /// The configuration that authorized the answer (its sources and
    /// answer cache), as for a websocket (`websocket::Pulls`).
    rt: Arc<Runtime>,
    questions: Vec<relations::Question>,
    /// The task asking them once started, and the flag it raises when
    /// one answered false or could not be answered.
    task: std::sync::OnceLock<(tokio::task::AbortHandle, Arc<AtomicBool>)>,
}

impl PulledWatch {
    /// Whether the relations still hold as far as the task knows; starts
    /// the task on the first call (nothing is allocated for an answer
    /// that ends before its first check).
    fn holds(&self, store: &Arc<Store>, principal: &Arc<Principal>) -> bool {
        let (_, failed) = self.task.get_or_init(|| {
            let pulls = websocket::Pulls {
                every: relations::ask_again_every(&self.rt, &self.questions),
                rt: self.rt.clone(),
                principal: principal.clone(),
                questions: self.questions.clone(),
            };
            let failed = Arc::new(AtomicBool::new(false));
            let (flag, store) = (failed.clone(), store.clone());
            let task = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(pulls.every).await;
                    if let Some(why) = pulls.ask(&store).await {
                        tracing::debug!(reason = ?why, "a long-lived answer's pulled relation no longer holds: cut");
                        flag.store(true, Ordering::Release);
                        return;
                    }
                }
            });
            (task.abort_handle(), failed)
        });
        !failed.load(Ordering::Acquire)
    }
}

/// The answer is gone: its relations are asked no more.
impl Drop for PulledWatch {
    fn drop(&mut self) {
        if let Some((task, _)) = self.task.get() {
            task.abort();
        }
    }
}

/// Unix seconds of `t` (0 before the epoch).
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix milliseconds of `t` (0 before the epoch).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn accepts_html(h: &http::HeaderMap) -> bool {
    crate::fields::all(h, &header::ACCEPT)
        .any(|v| v.to_str().is_ok_and(|v| v.contains("text/html")))
}

/// Methods a browser page of another site may send with the cookie
/// without asking (RFC 9110 §9.2.1 safe methods): they must not change
/// state, so no origin check.
fn is_safe_method(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The `Set-Cookie` that clears the credential cookie. Browsers ignore a
/// `__Host-`/`__Secure-` cookie without `Secure` (the clearing one too),
/// and refuse `Secure` from a plain-HTTP page: `Secure` when the name has
/// such a prefix or the connection is TLS.
fn clear_cookie(name: &str, https: bool) -> HeaderValue {
    let secure = https || name.starts_with("__Host-") || name.starts_with("__Secure-");
    HeaderValue::from_str(&format!(
        "{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("rg_session=; Path=/; Max-Age=0"))
}

fn json_response(status: StatusCode, body: String) -> Response<RespBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn normalize(
    rt: &Runtime,
    ctx: &mut Ctx,
    conn: &Conn,
    req: &Request<ClientBody>,
) -> Result<Target, Refusal> {
    // CONNECT asks for a tunnel, never a resource, whatever its target:
    // with a path (`CONNECT /x`) it would be authorized on `/x` and then
    // forwarded as `CONNECT upstream:port` by the HTTP client.
    if req.method() == Method::CONNECT {
        return Err(Deny::BadTarget(PathError::NotOriginForm).into());
    }
    let host = if ctx.h2 {
        // HTTP/2 has no framing headers to disagree (h2 refuses
        // `transfer-encoding` and the other connection-specific headers
        // itself) and its target is the `:path` pseudo-header, which the
        // connection's mirror read before http cut a fragment off
        // (`proxy::wire::H2Tap`). No mirror, or one that lost the stream:
        // refused, fail closed.
        let facts = conn
            .h2
            .as_deref()
            .filter(|f| !f.lost())
            .ok_or(Deny::BadRequest(BadRequest::MalformedHead))?;
        check_method(req.method())?;
        let host = h2_host(req)?.map(Arc::from);
        if facts.saw_fragment() {
            return Err(Deny::BadTarget(PathError::Fragment).into());
        }
        host
    } else {
        // What hyper's parser hid: the framing headers as sent, and the
        // target with its fragment (see `proxy::wire`).
        let raw = raw_head(req, ctx.raw.as_ref())?;
        check_method(req.method())?;
        let host = request_host(req, Some(&conn.host_memo))?;
        if raw.has_fragment() {
            return Err(Deny::BadTarget(PathError::Fragment).into());
        }
        host
    };
    let pq = match req.uri().path_and_query() {
        Some(pq) => pq.as_str(),
        // `http://host` with no path is `/`; authority-form (`CONNECT
        // host:443`, `GET host:80`) is not a resource request at all.
        None if req.uri().scheme().is_some() => "/",
        None => return Err(Deny::BadTarget(PathError::NotOriginForm).into()),
    };
    let canon = canonicalize(pq, &rt.canon).map_err(Deny::BadTarget)?;
    ctx.path = canon.path.clone();
    Ok(Target { host, canon })
}

/// The request's raw head as the listener's tap read it (`proxy::wire`),
/// if it is the head of this very request and its framing is unambiguous.
/// No head (the tap lost the stream) or another one: refused, fail closed.
fn raw_head<'a>(
    req: &'a Request<ClientBody>,
    read: Option<&'a RawHead>,
) -> Result<&'a RawHead, Refusal> {
    let bad = |b| Refusal::from(Deny::BadRequest(b));
    let raw = read
        .or_else(|| req.extensions().get::<RawHead>())
        .filter(|h| h.describes(req.method(), req.uri()))
        .ok_or_else(|| bad(BadRequest::MalformedHead))?;
    match raw.framing() {
        Framing::Clean => Ok(raw),
        Framing::ContentLengthAndTransferEncoding => {
            Err(bad(BadRequest::ContentLengthAndTransferEncoding))
        }
        Framing::TransferEncoding => Err(bad(BadRequest::TransferEncoding)),
        Framing::ContentLength => Err(bad(BadRequest::ContentLength)),
    }
}

fn check_method(method: &Method) -> Result<(), Refusal> {
    if crate::route::is_miscased_method(method.as_str()) {
        return Err(Deny::BadRequest(BadRequest::MethodCase).into());
    }
    Ok(())
}

/// The host used for routing: the absolute-form authority if the request
/// line has one (RFC 9112 §3.2.2), else the single Host header; lowercased,
/// without port. RFC 9112 §3.2: an HTTP/1.1 request without Host, or any
/// request with several, is a 400; so is an HTTP/1.0 one without Host in
/// origin form (nothing to route on or to tell the upstream). A `Host`
/// header's host is remembered in `memo` (the connection's) for the next
/// request that sends the same header.
fn request_host(
    req: &Request<ClientBody>,
    memo: Option<&HostMemo>,
) -> Result<Option<Arc<str>>, Refusal> {
    let mut hosts = crate::fields::all(req.headers(), &header::HOST);
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(Deny::BadHost("more than one Host header").into());
    }
    let absolute = req.uri().authority();
    if first.is_none() && (req.version() != http::Version::HTTP_10 || absolute.is_none()) {
        return Err(Deny::BadRequest(BadRequest::MissingHost).into());
    }
    let (raw, header) = match (absolute, first) {
        (Some(a), _) => (a.as_str(), None),
        (None, Some(h)) => {
            if let Some(Ok(m)) = memo.map(|m| m.try_lock())
                && let Some((seen, host)) = m.as_ref()
                && seen == h
            {
                return Ok(Some(host.clone()));
            }
            let raw = h
                .to_str()
                .map_err(|_| Deny::BadHost("Host header is not ASCII"))?;
            (raw, Some(h))
        }
        (None, None) => return Err(Deny::BadRequest(BadRequest::MissingHost).into()),
    };
    let host: Arc<str> = routing_host(raw)?.into();
    if let (Some(h), Some(Ok(mut m))) = (header, memo.map(|m| m.try_lock())) {
        *m = Some((h.clone(), host.clone()));
    }
    Ok(Some(host))
}

/// The routing host of an HTTP/2 request: `:authority` (the URI's
/// authority), else a single `Host` header (RFC 9113 §8.3.1). A `Host`
/// next to `:authority` must name the same authority, or the request is
/// refused: the upstream gets one of them, the router the other.
fn h2_host(req: &Request<ClientBody>) -> Result<Option<String>, Refusal> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(Deny::BadHost("more than one Host header").into());
    }
    let raw = match (req.uri().authority(), first) {
        (Some(a), Some(h)) => {
            if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
                return Err(Deny::BadHost("Host header conflicts with :authority").into());
            }
            a.as_str()
        }
        (Some(a), None) => a.as_str(),
        (None, Some(h)) => h
            .to_str()
            .map_err(|_| Deny::BadHost("Host header is not ASCII"))?,
        (None, None) => return Err(Deny::BadRequest(BadRequest::MissingHost).into()),
    };
    Ok(Some(routing_host(raw)?))
}

/// The routing host of a client's authority (`Host`, an absolute-form
/// target's or HTTP/2's `:authority`), lower-cased, without its port. The
/// whole value goes upstream as sent (`X-Forwarded-Host`, `preserve_host`),
/// so it must be a host name and nothing else: `http`'s URI grammar also
/// takes sub-delimiters, percent-escapes and any port text, which a backend
/// may read as another host (`a.example,evil.example`, `a.example:1,evil`)
/// or which the router would not match to the host's own routes
/// (`a.example..`, `.a.example`, `a.example%2e`). Refused: user info, a
/// name with other than letters, digits, `-`, `_` and `.`, an empty label
/// (one trailing dot is allowed), a port other than 1 to 5 digits.
fn routing_host(raw: &str) -> Result<String, Refusal> {
    let bad = |why| Refusal::from(Deny::BadHost(why));
    if raw.as_bytes().contains(&b'@') {
        return Err(bad("Host must not carry user info"));
    }
    let authority: http::uri::Authority = raw.parse().map_err(|_| bad("invalid Host header"))?;
    let host = authority.host();
    // `http` checked the brackets of an IP-literal; its text is the host.
    let port = raw.get(host.len()..).unwrap_or_default();
    let port_ok = match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(p) => p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()),
    };
    if !port_ok {
        return Err(bad("invalid port in Host header"));
    }
    if !host.starts_with('[') {
        let name = host.strip_suffix('.').unwrap_or(host);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name.split('.').all(label_ok) {
            return Err(bad("invalid host name in Host header"));
        }
    }
    Ok(host.to_ascii_lowercase())
}

/// A route's `client_cert:` against the connection's verified certificate.
/// Checked per request: a connection outlives the certificate's validity
/// (resumption is off on listeners that ask for certificates).
fn check_client_cert(rule: &ClientCertRule, conn: &Conn, now: u64) -> Result<(), Refusal> {
    let Some(cert) = &conn.client_cert else {
        return Err(Deny::ClientCert(ClientCertDenial::Missing).into());
    };
    if !cert.valid_at(now) {
        return Err(Deny::ClientCert(ClientCertDenial::Expired).into());
    }
    match rule {
        ClientCertRule::Required => Ok(()),
        ClientCertRule::Allow(names) if cert.is_allowed(names) => Ok(()),
        ClientCertRule::Allow(_) => Err(Deny::ClientCert(ClientCertDenial::NotAllowed).into()),
    }
}

fn authenticate(
    rt: &Runtime,
    ctx: &mut Ctx,
    conn: &Conn,
    route: &Route,
    req: &Request<ClientBody>,
) -> Result<Option<Verified>, Refusal> {
    if route.policy.public {
        return Ok(None);
    }
    let v = rt
        .auth
        .authenticate_at(req.headers(), unix_secs(ctx.wall), Some(&conn.token_memo))
        .map_err(Deny::Unauthenticated)?;
    ctx.principal = Some(v.principal.clone());
    ctx.from_cookie = v.from_cookie;
    Ok(Some(v))
}

async fn forward(
    rt: &Runtime,
    ctx: &mut Ctx,
    route: &Route,
    target: &Target,
    principal: Option<&Principal>,
    masking: bool,
    req: Box<Request<ClientBody>>,
) -> Result<Response<UpstreamBody>, Refusal> {
    let max = rt.listen.max_body_bytes;
    let declared = crate::fields::first(req.headers(), &header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(Deny::BodyTooLarge.into());
    }
    // A body on GET or HEAD means nothing (RFC 9110 §9.3.1), and an
    // upstream that skips it reads it as a second request, one nobody
    // authorized (CL.0 smuggling): refused, whatever its framing. (One of
    // unknown length that starts empty is never sent: `h1codec`.)
    let bodiless = matches!(*req.method(), Method::GET | Method::HEAD);
    if bodiless && declared.is_some_and(|n| n > 0) {
        return Err(Deny::BadRequest(BadRequest::BodyOnGetOrHead).into());
    }
    let up = &rt.upstreams[route.upstream];
    let (mut parts, body) = (*req).into_parts();
    // The client's host as it sent it (port included), checked in phase 1:
    // the absolute-form authority (HTTP/2: `:authority`), else `Host`.
    let sent_host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => crate::fields::first(&parts.headers, &header::HOST).cloned(),
    };
    // The client's body errors are the client's (400), told apart from the
    // upstream's by type (`upstream::send`). Its first frame is read before
    // the upstream request starts, so a body broken from its start never
    // reaches the upstream; one that breaks later aborts the upstream
    // request (it never sees a complete request).
    // The receive timeouts: the whole request within `request_timeout` of
    // its head, no gap over `body_read_timeout` (see `body::Timed`).
    let deadline = tokio::time::Instant::from_std(ctx.started) + rt.listen.request_timeout;
    let body = Timed::new(
        body.map_err(|e| Box::new(MalformedBody(Box::new(e))) as BoxError),
        deadline,
        rt.listen.body_read_timeout,
    );
    let mut body = Limited::new(body, max);
    let first = if body.is_end_stream() {
        None
    } else {
        match body.frame().await {
            None => None,
            Some(Ok(frame)) => Some(frame),
            Some(Err(e)) if has_cause::<BodyTooLarge>(e.as_ref()) => {
                return Err(Deny::BodyTooLarge.into());
            }
            Some(Err(e)) => match e.downcast_ref::<TooSlow>() {
                Some(TooSlow(t)) => return Err(Deny::RequestTimeout(*t).into()),
                None => return Err(Deny::BadRequest(BadRequest::MalformedBody).into()),
            },
        }
    };
    if bodiless
        && first
            .as_ref()
            .and_then(http_body::Frame::data_ref)
            .is_some_and(|d| !d.is_empty())
    {
        return Err(Deny::BadRequest(BadRequest::BodyOnGetOrHead).into());
    }

    // Origin-form: `upstream::send` puts the picked server in front. The
    // client's own target when it is already the canonical one in origin
    // form (most requests: nothing to build and parse again).
    let as_sent = up.base_path.is_empty()
        && parts.uri.scheme().is_none()
        && parts.uri.authority().is_none()
        && parts.uri.path() == target.canon.path
        && parts.uri.query() == target.canon.query.as_deref();
    if !as_sent {
        let mut pq = String::with_capacity(up.base_path.len() + target.canon.path.len() + 16);
        pq.push_str(&up.base_path);
        pq.push_str(&target.canon.path);
        if let Some(q) = &target.canon.query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq: http::uri::PathAndQuery = pq
            .parse()
            .map_err(|_| Deny::BadHost("unforwardable path"))?;
        parts.uri = http::Uri::from(pq);
    }
    parts.version = http::Version::HTTP_11;

    // On a masked route the whole representation is needed to mask it: no
    // partial content; and uncompressed saves a decode (a compressed answer
    // anyway is still decoded and masked). Conditional requests too:
    // 304-vs-200 answers to validators the upstream computed over the
    // unmasked body would let a masked client confirm guesses of hidden
    // values. Dropped in the spoofing pass over the client's headers.
    // The client's `X-Request-Id` goes too: the request's trace id (the
    // client's, when valid) is sent in its place with the injected fields.
    // A write's preconditions (`If-Match`, `If-Unmodified-Since`, …)
    // govern the write, not the answer's representation: dropping them
    // would turn optimistic locking into lost updates, so only reads lose
    // them (a conditional read would answer with the unmasked one's
    // validators, or a 304 to a masked body).
    let safe = matches!(parts.method, Method::GET | Method::HEAD);
    let unforwarded: &[HeaderName] = match (masking, safe) {
        (true, true) => &PARTIAL_OR_CONDITIONAL_OR_REPLACED,
        (true, false) => &PARTIAL_OR_REPLACED,
        (false, _) => &REPLACED,
    };
    // A websocket handshake (checked in phase 2b) is kept aside: the
    // upgrade headers are hop-by-hop, and go back on after the strips.
    let handshake = if route.websocket && websocket::requested(&parts.headers) {
        websocket::Handshake::take(&parts.headers)
    } else {
        None
    };
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_spoofable(&mut parts.headers, &rt.forward, unforwarded);
    let credential = match (principal.is_some(), ctx.from_cookie) {
        (false, _) => headers::Credential::Unverified,
        (true, false) => headers::Credential::Bearer,
        (true, true) => headers::Credential::Cookie,
    };
    headers::strip_credentials(
        &mut parts.headers,
        rt.forward.cookie.as_deref(),
        credential,
        route.pass_credentials,
    );
    headers::join_cookies(&mut parts.headers);
    // The upstream's own host unless it asks for the client's: a route that
    // matches any host must not let the client pick a virtual host behind it.
    // (Removed here, after the strips, as ever: a removal moves the map's
    // last field into the gap, so where it happens decides the order the
    // upstream sees.)
    parts.headers.remove(header::HOST);
    if up.preserve_host
        && let Some(v) = &sent_host
    {
        parts.headers.insert(header::HOST, v.clone());
    }
    let request_id = ctx.trace_value();
    let ff = ForwardedFor {
        client_ip: &ctx.peer_ip,
        proto: if ctx.https { "https" } else { "http" },
        host: sent_host,
        request_id,
    };
    let mut injected = headers::Injected::new(&rt.forward, &ff, principal);
    debug_assert!(
        injected
            .names()
            .all(|name| !parts.headers.contains_key(name)),
        "an injected field survived the strip pass"
    );
    if masking {
        // After the hop-by-hop strip, so `Connection: accept-encoding`
        // cannot take it out again.
        headers::set(
            &mut parts.headers,
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }

    if let Some(hs) = handshake {
        hs.restore(&mut parts.headers);
        ctx.websocket = Some(hs);
    }
    // The answer's fields as their bytes where nothing reads them on the
    // way (no mask, no handshake) and `h1server` writes them.
    let relay = ctx.relay && route.mask.is_none() && ctx.websocket.is_none();
    let body = if first.is_none() && body.is_end_stream() {
        // Nothing to send (most requests): no wrappers to box and poll.
        upstream::empty()
    } else {
        Primed::new(first, body).boxed()
    };
    let req = Request::from_parts(parts, body);
    upstream::send(up, req, &mut injected, relay, &mut ctx.head_timer).await
}

/// Client request headers the gateway sends its own value of instead.
static REPLACED: [HeaderName; 1] = [headers::X_REQUEST_ID];

/// Request headers a masked route does not forward (see `forward`): the
/// partial and conditional ones, the asks for a digest of the answer
/// (RFC 9530, RFC 3230), and [`REPLACED`].
static PARTIAL_OR_CONDITIONAL_OR_REPLACED: [HeaderName; 11] = [
    header::RANGE,
    // The pre-RFC 2616 spelling, still honoured by Apache httpd.
    HeaderName::from_static("request-range"),
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    HeaderName::from_static("want-repr-digest"),
    HeaderName::from_static("want-content-digest"),
    HeaderName::from_static("want-digest"),
    headers::X_REQUEST_ID,
];

/// [`PARTIAL_OR_CONDITIONAL_OR_REPLACED`] without the preconditions: what
/// a masked route's writes do not forward.
static PARTIAL_OR_REPLACED: [HeaderName; 7] = [
    header::RANGE,
    HeaderName::from_static("request-range"),
    header::IF_RANGE,
    HeaderName::from_static("want-repr-digest"),
    HeaderName::from_static("want-content-digest"),
    HeaderName::from_static("want-digest"),
    headers::X_REQUEST_ID,
];

/// Response headers describing the upstream's unmasked representation:
/// its validators and range, and its digests (a hash of the unmasked body
/// would let a client confirm guesses of the values masked in it).
static UNMASKED_REPRESENTATION: [HeaderName; 7] = [
    header::ETAG,
    header::CONTENT_RANGE,
    header::LAST_MODIFIED,
    HeaderName::from_static("content-md5"),
    HeaderName::from_static("repr-digest"),
    HeaderName::from_static("content-digest"),
    HeaderName::from_static("digest"),
];

/// Cache directives that CDNs and caching proxies obey before
/// `Cache-Control` (Fastly, Akamai, Cloudflare, Vercel, RFC 9213, nginx's
/// `proxy_cache`): removed from masked routes' answers, whose
/// `Cache-Control: private, no-store` must be the one that counts.
static SHARED_CACHE_DIRECTIVES: [HeaderName; 6] = [
    HeaderName::from_static("surrogate-control"),
    HeaderName::from_static("cdn-cache-control"),
    HeaderName::from_static("cloudflare-cdn-cache-control"),
    HeaderName::from_static("vercel-cdn-cache-control"),
    HeaderName::from_static("edge-control"),
    HeaderName::from_static("x-accel-expires"),
];

/// The upstream's answer, cleaned; its fields relayed as its bytes, when
/// they were asked for (`forward`), beside it.
fn respond(
    rt: &Runtime,
    ctx: &Ctx,
    resp: Response<UpstreamBody>,
) -> (Response<RespBody>, Option<Box<Relayed>>) {
    let (mut parts, mut body) = resp.into_parts();
    let mut relayed = body.take_relayed();
    if !ctx.relay {
        // Answers hyper writes can carry trailers (to HTTP/2 clients);
        // `h1server`'s never do.
        body.clean_trailers(rt.forward.clone());
    }
    clean_response(rt, ctx, &mut parts.headers, relayed.as_deref_mut());
    (Response::from_parts(parts, body.boxed()), relayed)
}

/// The upstream's response headers (relayed ones too), cleaned; an
/// upstream setting the gateway's cookie or identity headers is logged (it
/// could be minting or fixing a session).
fn clean_response(rt: &Runtime, ctx: &Ctx, h: &mut http::HeaderMap, relayed: Option<&mut Relayed>) {
    let removed = match relayed {
        Some(relayed) => relayed.clean(h, &rt.forward),
        None => headers::clean_response(h, &rt.forward),
    };
    if !removed.is_empty() {
        let names: Vec<&str> = removed.iter().map(HeaderName::as_str).collect();
        tracing::warn!(target: "rolegate::decision", request_id = %ctx.request_id, route = ctx.route.as_deref().unwrap_or(""), headers = ?names, "upstream response carried the gateway's credential cookie or identity headers: removed");
    }
}

/// Responses of masked routes, masked or not, are never stored by shared
/// caches and never reused across credentials.
fn make_private(h: &mut http::HeaderMap) {
    headers::remove_each(h, &SHARED_CACHE_DIRECTIVES);
    headers::set(
        h,
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    h.append(
        header::VARY,
        HeaderValue::from_static("Authorization, Cookie"),
    );
}

/// Phase 7 for a principal without `unmask_with`: decode → mask → send
/// identity-encoded. Bodies whose declared length is at most
/// `masking.buffer_bytes` are masked whole first, so a failure is a clean
/// 502; others stream through `MaskedBody`, which aborts on failure.
async fn mask_response(
    rt: &Runtime,
    ctx: &Ctx,
    policy: Arc<mask::Policy>,
    upstream: &str,
    resp: Response<UpstreamBody>,
    head: bool,
    held: &Arc<HeldBytes>,
) -> Result<Response<RespBody>, Refusal> {
    let (mut parts, body) = resp.into_parts();
    let unmaskable = |why: String| Refusal::from(Fault::Unmaskable(why));
    // A slice of the document (asked for in a way the gateway did not
    // strip) is no document: a string cut out of a record matches no key.
    if parts.status == StatusCode::PARTIAL_CONTENT
        || parts.headers.contains_key(header::CONTENT_RANGE)
    {
        return Err(unmaskable("partial content (206, Content-Range)".into()));
    }
    // The body's description must survive the hop-by-hop strip: a
    // `Connection: content-encoding` would have the masker read coded
    // bytes as plain ones.
    if [
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::CONTENT_LENGTH,
    ]
    .iter()
    .any(|name| headers::connection_names(&parts.headers, name.as_str()))
    {
        return Err(unmaskable(
            "Connection names a header describing the body".into(),
        ));
    }
    // Sent as HTTP/1.1 whatever the upstream spoke: a streamed answer
    // whose masking fails is cut before its last chunk, which a client
    // can tell from a complete one; an HTTP/1.0 answer of unknown length
    // would end at the close either way.
    parts.version = http::Version::HTTP_11;
    // The upstream's own reason phrase is text nobody masks (`404 jane@x
    // not found`): the status's standard phrase goes instead.
    parts.extensions.remove::<hyper::ext::ReasonPhrase>();
    let h = &mut parts.headers;
    clean_response(rt, ctx, h, None);
    make_private(h);
    // The masked representation is a different one: validators and range
    // support of the upstream's do not describe it.
    headers::remove_each(h, &UNMASKED_REPRESENTATION);
    headers::set(h, header::ACCEPT_RANGES, HeaderValue::from_static("none"));
    // E-mail addresses in header values (a file name, a redirect's query)
    // are masked too, bodyless answers included (`mask::headers`).
    let scrubbed = mask::headers::scrub_headers(&policy.detectors, h, &[headers::X_REQUEST_ID]);
    if scrubbed > 0 {
        tracing::debug!(target: "rolegate::mask", request_id = %ctx.request_id, headers = scrubbed, "masked addresses in response headers");
    }
    let status = parts.status;
    // An empty body needs no type (a write's `201` with `Content-Length:
    // 0`): nothing to mask, nothing refused.
    let empty = h
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .all(|v| v.as_bytes() == b"0")
        && h.contains_key(header::CONTENT_LENGTH)
        && !h.contains_key(header::TRANSFER_ENCODING);
    let bodyless = head
        || empty
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if bodyless {
        h.remove(header::CONTENT_LENGTH);
        return Ok(Response::from_parts(
            parts,
            Full::new(Bytes::new()).map_err(|e| match e {}).boxed(),
        ));
    }
    // One readable value each, or the body's format is not known for sure.
    let single = |name: header::HeaderName| {
        let mut values = h.get_all(&name).iter();
        match (values.next().map(|v| v.to_str()), values.next()) {
            (None, _) => Ok(None),
            (Some(Ok(v)), None) => Ok(Some(v)),
            _ => Err(unmaskable(format!("several or unreadable {name} headers"))),
        }
    };
    let ct = single(header::CONTENT_TYPE)?;
    let kind = mask::body_kind(ct).ok_or_else(|| {
        unmaskable(format!(
            "content type {:?} cannot be masked",
            ct.unwrap_or("(none)")
        ))
    })?;
    let ce = single(header::CONTENT_ENCODING)?;
    let encoding = mask::encoding(ce).map_err(|e| unmaskable(e.code().to_string()))?;
    let encoded = ce.is_some();
    let declared = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|l| l > rt.masking.max_body_bytes) {
        return Err(unmaskable("body exceeds masking.max_body_bytes".into()));
    }
    if encoded {
        // Sent decoded (identity).
        h.remove(header::CONTENT_ENCODING);
    }
    let mut masker = mask::BodyMasker::new(policy, kind, encoding, rt.masking.max_body_bytes);

    // What an answer masked whole may grow to once decoded.
    let whole_max = rt
        .masking
        .buffer_bytes
        .saturating_mul(DECODED_WHOLE)
        .min(rt.masking.max_body_bytes);
    let too_large_for_http10 =
        || unmaskable("answer too large to mask whole for an HTTP/1.0 client".into());
    let max_held = rt.masking.max_held_bytes;
    let mut share = held.share();
    let whole = match declared {
        Some(len) if len <= rt.masking.buffer_bytes => Some(len),
        // An HTTP/1.0 client reads a body to the close: it could not tell
        // a stream cut by a masking failure from a complete answer. Masked
        // whole (up to `DECODED_WHOLE` times the buffer) and sent with its
        // length; a larger one is refused rather than held.
        _ if ctx.http10 => match declared {
            Some(len) if len > whole_max => return Err(too_large_for_http10()),
            _ => Some(declared.unwrap_or(whole_max)),
        },
        _ => None,
    };
    // Over `max_held_bytes` (every answer held whole together): streamed
    // instead, or, to an HTTP/1.0 client, which could not tell a cut
    // stream from a whole answer, refused.
    let whole = match whole {
        Some(len) if !share.grow_to(len.min(rt.masking.buffer_bytes), max_held) => {
            if ctx.http10 {
                return Err(Fault::MaskingBusy.into());
            }
            None
        }
        w => w,
    };
    if let Some(len) = whole {
        // Masked frame by frame as they arrive (the masker streams), but
        // sent only once the whole body is masked, so a failure is a 502.
        let mut body = Limited::new(body, len);
        let mut out = Vec::with_capacity(len.min(rt.masking.buffer_bytes) as usize);
        // Done once the declared length has arrived (as hyper's server side
        // decides for a streamed body): asking for a frame after the last one
        // costs a trip through the reactor per answer. With the HTTP/1
        // upstream client, hyper says so only when every declared byte reached
        // us (recheck when an HTTP/2 upstream arrives).
        while !body.is_end_stream() {
            let Some(frame) = body.frame().await else {
                break;
            };
            let frame = frame.map_err(|e| {
                Refusal::from(if has_cause::<BodyIdleTimeout>(e.as_ref()) {
                    Fault::UpstreamTimeout(upstream.to_string())
                } else if has_cause::<BodyTooLarge>(e.as_ref()) && ctx.http10 {
                    return too_large_for_http10();
                } else if has_cause::<BodyTooLarge>(e.as_ref()) {
                    Fault::Unmaskable("body exceeds masking.max_body_bytes".into())
                } else {
                    Fault::UpstreamFailed(upstream.to_string(), e.to_string())
                })
            })?;
            if let Some(data) = frame.data_ref() {
                masker
                    .push(data, &mut out)
                    .map_err(|e| unmaskable(e.code().to_string()))?;
            }
            // A small compressed answer may decode to far more than it
            // declared: past `DECODED_WHOLE` times the buffer, it is sent
            // as a stream from here on (what is masked first), rather than
            // held whole in memory up to `max_body_bytes`.
            let over_budget = !share.grow_to(out.capacity() as u64, max_held);
            if out.len() as u64 > whole_max || over_budget {
                if ctx.http10 && over_budget {
                    return Err(Fault::MaskingBusy.into());
                }
                if ctx.http10 {
                    return Err(too_large_for_http10());
                }
                parts.headers.remove(header::CONTENT_LENGTH);
                let streamed = MaskedBody::new(body, masker, masking_failed(ctx))
                    .with_prefix(Bytes::from(out));
                return Ok(Response::from_parts(
                    parts,
                    Holding::new(streamed, share).boxed(),
                ));
            }
        }
        masker
            .finish(&mut out)
            .map_err(|e| unmaskable(e.code().to_string()))?;
        // What `finish` added (a CSV or JSON tail) is held like the rest,
        // beyond the budget if need be: the answer is complete.
        share.grow_to(out.capacity() as u64, u64::MAX);
        headers::set(
            &mut parts.headers,
            header::CONTENT_LENGTH,
            HeaderValue::from(out.len()),
        );
        let body = Full::new(Bytes::from(out)).map_err(|e| match e {});
        return Ok(Response::from_parts(
            parts,
            Holding::new(body, share).boxed(),
        ));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(
        parts,
        MaskedBody::new(body, masker, masking_failed(ctx)).boxed(),
    ))
}

/// How many times `masking.buffer_bytes` an answer masked whole may grow
/// to once decoded before it is streamed instead.
const DECODED_WHOLE: u64 = 16;

/// The log line of a masked stream that fails midway.
fn masking_failed(ctx: &Ctx) -> crate::proxy::body::OnEnd {
    let (rid, route) = (
        ctx.request_id.clone(),
        ctx.route.as_deref().unwrap_or_default().to_string(),
    );
    Box::new(move |r: Result<u64, String>| {
        if let Err(code) = r {
            tracing::warn!(target: "rolegate::decision", request_id = %rid, route = %route, error = "unmaskable_response", detail = %code, "masking failed mid-stream: response aborted");
        }
    })
}

/// Turns a refusal into the JSON error response (and records it for the log).
fn refuse(rt: &Runtime, ctx: &mut Ctx, refusal: Refusal) -> Response<RespBody> {
    let full_reason = refusal.to_string();
    // Session refusals always say why (`idle`, `revoked`, …): clients need
    // it to tell "log in again" from "you were logged out", and it reveals
    // nothing about the policy.
    let reason = if rt.expose_reason || refusal.is_session() {
        full_reason.as_str()
    } else {
        refusal.generic_reason()
    };
    let mut resp = json_response(
        refusal.status(),
        error_body(refusal.code(), reason, &ctx.request_id),
    );
    let h = resp.headers_mut();
    if refusal.status() == StatusCode::UNAUTHORIZED {
        h.insert(header::WWW_AUTHENTICATE, refusal.challenge());
    }
    if let Some(secs) = refusal.retry_after() {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if refusal.closes_connection() && !ctx.h2 {
        // Ambiguous framing or a broken body: nothing after it on this
        // connection can be trusted to be the request it looks like.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if refusal.is_session() {
        if ctx.from_cookie
            && let Some(name) = &rt.forward.cookie
        {
            h.insert(header::SET_COOKIE, clear_cookie(name, ctx.https));
        }
        if ctx.accept_html
            && let Some(url) = &rt.sessions.login_url
            && let Ok(v) = HeaderValue::from_str(url)
        {
            h.insert(header::LOCATION, v);
            *resp.status_mut() = StatusCode::FOUND;
        }
    }
    ctx.refusal = Some((refusal.code(), refusal.detail(), full_reason));
    if refusal.is_fault() {
        tracing::warn!(target: "rolegate::decision", request_id = %ctx.request_id, error = refusal.code(), reason = %refusal, cause = refusal.cause(), "refused");
    }
    resp
}

/// Every answer carries the request's `X-Request-Id` and writes its access
/// line (phase 8), refusals included.
fn finish(ctx: &mut Ctx, mut resp: Response<RespBody>) -> Response<RespBody> {
    if let Some(v) = ctx.trace_value() {
        resp.headers_mut().insert(headers::X_REQUEST_ID, v);
    }
    log(ctx, resp.status());
    resp
}

/// Phase 8: one access line per request, refusals included.
fn log(ctx: &Ctx, status: StatusCode) {
    let took = ctx.started.elapsed();
    let (error, detail, reason) = match &ctx.refusal {
        Some((c, d, r)) => (*c, *d, r.as_str()),
        None => ("", "", ""),
    };
    crate::telemetry::access(&crate::telemetry::Access {
        request_id: &ctx.request_id,
        client_request_id: ctx.client_request_id.as_deref().unwrap_or(""),
        peer: &ctx.peer_text,
        method: ctx.method.as_str(),
        path: &ctx.path,
        route: ctx.route.as_deref().unwrap_or(""),
        subject: ctx.subject(),
        status: status.as_u16(),
        error,
        detail,
        reason,
        duration_us: took.as_micros() as u64,
        at: ctx.wall + took,
    });
}

/// Request ids: every request gets a process-unique id made from a random
/// prefix and a counter (no syscall per request); a valid incoming
/// `X-Request-Id` is kept beside it.
struct RequestIds {
    /// A random prefix, in hex (written once).
    prefix: String,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let mut b = [0u8; 8];
        // A failed RNG only makes ids less unique across restarts.
        let _ = aws_lc_rs::rand::fill(&mut b);
        let mut prefix = String::with_capacity(16);
        push_hex(&mut prefix, u64::from_le_bytes(b), 16);
        RequestIds {
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    /// (our id, the client's valid `X-Request-Id` if any).
    fn take(&self, headers: &http::HeaderMap) -> (String, Option<String>) {
        let client = crate::fields::first(headers, &headers::X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 128
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            })
            .map(str::to_string);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(24);
        id.push_str(&self.prefix);
        push_hex(&mut id, n, 8);
        (id, client)
    }
}

/// `v` in lower-case hex, zero-padded to `width` digits (at most 16): what
/// `format!("{v:0width$x}")` writes, without the formatting machinery (one
/// id per request).
fn push_hex(out: &mut String, v: u64, width: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let needed = (64 - v.leading_zeros() as usize).div_ceil(4);
    for i in (0..needed.max(width).min(16)).rev() {
        out.push(char::from(DIGITS[((v >> (i * 4)) & 0xf) as usize]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixed_cookies_are_cleared_with_secure_even_over_plain_http() {
        let c = |name, https| clear_cookie(name, https).to_str().unwrap().to_string();
        assert_eq!(
            c("rg_session", false),
            "rg_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
        );
        assert!(c("rg_session", true).ends_with("; Secure"));
        assert!(c("__Host-rg", false).ends_with("; Secure"));
        assert!(c("__Secure-rg", false).ends_with("; Secure"));
    }

    #[test]
    fn request_ids_are_the_prefix_and_counter_in_hex_as_format_writes_them() {
        for v in [
            0u64,
            1,
            0xa,
            0xdead_beef,
            u32::MAX as u64,
            1 << 32,
            u64::MAX,
        ] {
            for width in [8, 16] {
                let mut s = String::new();
                push_hex(&mut s, v, width);
                assert_eq!(s, format!("{v:0width$x}"), "{v:#x} width {width}");
            }
        }
        let ids = RequestIds::new();
        let (a, client) = ids.take(&http::HeaderMap::new());
        let (b, _) = ids.take(&http::HeaderMap::new());
        assert_eq!(client, None);
        assert_eq!((a.len(), b.len()), (24, 24));
        assert_eq!(a[..16], b[..16]);
        assert_eq!(
            u64::from_str_radix(&b[16..], 16).unwrap(),
            u64::from_str_radix(&a[16..], 16).unwrap() + 1
        );
    }
}
