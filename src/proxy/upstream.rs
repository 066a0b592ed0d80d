//! Phase 6 transport: the clients of each upstream, their TLS and HTTP
//! version, and the mapping of their failures to [`Fault`]s.
//!
//! Owns the connectors (plain TCP, or rustls for `https://` upstreams),
//! which client a request takes (HTTP/1.1: the request-driven connections
//! of `h1.rs`; HTTP/2 and websocket upgrades: hyper-util's pooled client),
//! the response-head and body idle timeouts and the keep-alive race retry.
//! Which server a request goes to, and their health, is `pool.rs`'s; this
//! module only reports each attempt's outcome to it. It does not touch
//! headers (that is `headers.rs`) or decide anything. TLS settings arrive
//! already read and parsed (`config::build` reads the PEM files, so `check`
//! can report them); this module only turns them into a client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::{ConfigBuilderExt, FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::headers;
use crate::config::{ForwardSettings, Upstream};
use crate::error::{BadRequest, Deny, Fault, Refusal};
use crate::proxy::body::{BodyTooLarge, MalformedBody, TooSlow};
use crate::proxy::h1::{Answer, Conns, Failure, H1, IDLE_FOR};
use crate::proxy::h1codec::WireError;
use crate::proxy::pool::{NoPick, Pick, Server};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body type sent upstream (the client's body, streamed, with a size limit).
pub type UpBody = BoxBody<Bytes, BoxError>;

/// One pooled client per upstream. Two variants rather than one
/// `https_or_http` connector, so the plain `http://` path stays exactly the
/// bare `HttpConnector` (no TLS wrapper around its streams), and an
/// `https://` upstream can never be reached in clear.
pub enum HttpClient {
    Plain(Client<HttpConnector, UpBody>),
    Tls(Client<HttpsConnector<HttpConnector>, UpBody>),
}

impl HttpClient {
    pub(crate) fn request(&self, req: http::Request<UpBody>) -> ResponseFuture {
        match self {
            HttpClient::Plain(c) => c.request(req),
            HttpClient::Tls(c) => c.request(req),
        }
    }
}

/// The clients of one upstream (see [`new_clients`]).
pub struct Clients {
    /// hyper-util's pooled client: HTTP/2 upstreams, websocket upgrades
    /// and the active health checks.
    pub pooled: HttpClient,
    /// The same without idle connections (the keep-alive race retry's).
    pub fresh: HttpClient,
    /// HTTP/1.1 upstreams: the connections driven in the request's task
    /// (`h1.rs`), for every request but websocket upgrades.
    pub h1: Option<H1>,
}

/// How to reach one upstream.
pub struct ClientSettings {
    pub connect_timeout: Duration,
    /// `http2: true`: HTTP/2 only (ALPN `h2` over TLS, prior knowledge
    /// over plain TCP); otherwise HTTP/1.1 only.
    pub http2: bool,
    /// Present for `https://` upstreams.
    pub tls: Option<TlsSettings>,
}

/// TLS towards an `https://` upstream.
pub struct TlsSettings {
    pub roots: Roots,
    /// `client_cert` + `client_key`: the chain and its key, for upstream mTLS.
    pub client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// `server_name`: the name sent as SNI and checked in the certificate,
    /// instead of the URL's host.
    pub server_name: Option<ServerName<'static>>,
}

/// Which certificates an upstream's chain must lead to.
pub enum Roots {
    /// The Mozilla bundle compiled in (webpki-roots).
    Default,
    /// `ca_file`: only these.
    Only(RootCertStore),
    /// `insecure_skip_verify: true`: any certificate for any name. The
    /// handshake signature is still checked (the peer holds the key of the
    /// certificate it sent), which proves nothing about who it is.
    Unverified,
}

/// The rustls client configuration of an `https://` upstream: TLS 1.3 and
/// 1.2 only, aws-lc-rs, ALPN left to the connector (set from `http2`).
fn tls_config(tls: TlsSettings) -> Result<ClientConfig, rustls::Error> {
    let provider = crate::proxy::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(crate::proxy::tls::VERSIONS)?;
    let builder = match tls.roots {
        Roots::Default => builder.with_webpki_roots(),
        Roots::Only(store) => builder.with_root_certificates(store),
        Roots::Unverified => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider))),
    };
    let config = match tls.client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// The clients of an upstream, built on one connector: the pooled one
/// (idle connections kept 60 s), one that keeps no idle connection (the
/// keep-alive race retry's) and, for HTTP/1.1, the request-driven
/// connections. All have the connect timeout. Fails only when rustls
/// refuses the TLS settings (e.g. a client key that does not match its
/// certificate).
pub fn new_clients(settings: ClientSettings) -> Result<Clients, rustls::Error> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(settings.connect_timeout));
    connector.set_nodelay(true);
    let mut pooled = Client::builder(TokioExecutor::new());
    pooled
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_FOR)
        // hyper-util's own retry (the default, kept explicit): a request
        // handed a pooled connection found dead before a byte was written
        // is sent again on another one. `send` adds the case it leaves out.
        .retry_canceled_requests(true)
        .http2_only(settings.http2);
    let mut fresh = pooled.clone();
    fresh.pool_max_idle_per_host(0);
    match settings.tls {
        None => {
            // The request URI is always built from the upstream's own
            // origin, never from client input, so enforcing http keeps an
            // `https` URI from ever going out in clear on this client.
            connector.enforce_http(true);
            Ok(Clients {
                pooled: HttpClient::Plain(pooled.build(connector.clone())),
                fresh: HttpClient::Plain(fresh.build(connector.clone())),
                h1: (!settings.http2).then(|| Conns::new(connector)),
            })
        }
        Some(mut tls) => {
            let server_name = tls.server_name.take();
            let config = tls_config(tls)?;
            // The TLS layer hands `https` URIs to the TCP connector.
            connector.enforce_http(false);
            let b = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only();
            let b = match server_name {
                Some(name) => b.with_server_name_resolver(FixedServerNameResolver::new(name)),
                None => b,
            };
            let connector = if settings.http2 {
                b.enable_http2().wrap_connector(connector)
            } else {
                b.enable_http1().wrap_connector(connector)
            };
            Ok(Clients {
                pooled: HttpClient::Tls(pooled.build(connector.clone())),
                fresh: HttpClient::Tls(fresh.build(connector.clone())),
                h1: (!settings.http2).then(|| Conns::new(connector)),
            })
        }
    }
}

/// `insecure_skip_verify`: accepts any certificate chain and name, but
/// still checks the handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sends the request to a server of `up` and waits for the response head,
/// at most `up.timeout`. The request's URI is origin-form (path and query,
/// base path included); the picked server's scheme and authority are put
/// in front. The answer's body aborts after `up.body_idle_timeout` of
/// silence and keeps the server counted in flight until it ends.
///
/// A request that is idempotent (RFC 9110 §9.2.2) and has no body is sent
/// once more, on a new connection to the same server, when the connection
/// closed or reset before any byte of an answer: the keep-alive race (the
/// server closed an idle connection as the request went out on it).
///
/// `injected` (the forwarding and identity fields) is sent after the
/// request's own fields. With `relay`, an HTTP/1.1 server's answer fields
/// come as its bytes (`relayed.rs`): only for a caller that writes them
/// out with `h1server` and reads none of them. `timer` is a timer to use
/// for the answer-head timeout (`listener::HeadTimer`), made if `None`
/// and left there for the next request.
pub async fn send(
    up: &Upstream,
    mut req: Request<UpBody>,
    injected: &mut headers::Injected<'_>,
    relay: bool,
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
) -> Result<Response<UpstreamBody>, Refusal> {
    let pool = &up.pool;
    pool.start_checks();
    let pick = pool.pick().map_err(|why| match why {
        NoPick::AllDown => Fault::NoHealthyUpstream(up.name.clone()),
        NoPick::Busy => Fault::UpstreamBusy(up.name.clone()),
    })?;
    let server = pick.server();
    let replayable = replayable(&req);
    let h1 = pool
        .h1()
        .filter(|_| !req.headers().contains_key(header::UPGRADE));
    if h1.is_none() {
        injected.insert_into(req.headers_mut());
    }
    // The identity fields as the principal's encoded lines, for the own
    // client (into the map when there are none for these names).
    let identity_lines = match (&h1, injected.encoded_identity()) {
        (Some(_), Some(lines)) => lines,
        (Some(_), None) => {
            injected.identity_into(req.headers_mut());
            &[]
        }
        (None, _) => &[],
    };
    // hyper-util's client takes the request: a copy is kept to send again.
    // (An HTTP/1.1 connection of `h1.rs` keeps the encoded request.)
    let replay = (replayable && h1.is_none()).then(|| {
        let mut again = Request::new(empty());
        *again.method_mut() = req.method().clone();
        *again.uri_mut() = req.uri().clone();
        *again.version_mut() = req.version();
        *again.headers_mut() = req.headers().clone();
        again
    });
    // The response-head timeout counts from the request's last byte: while
    // a client is still sending, its own timeouts (`request_timeout`,
    // `body_read_timeout`: 408) bound the wait, and a slow upload never
    // counts against the server's health.
    // (The request stays where it is unless its body is wrapped.)
    let body_sent = if req.body().is_end_stream() {
        None
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        req = req.map(|inner| {
            Reported {
                inner,
                done: Some(tx),
            }
            .boxed()
        });
        Some(rx)
    };
    let attempt = async {
        match h1 {
            Some(h1) => {
                origin_form(&mut req);
                let (scheme, authority) = (&server.scheme, &server.authority);
                match h1
                    .exchange(
                        scheme,
                        authority,
                        req,
                        (injected.fields(), identity_lines),
                        relay,
                        false,
                    )
                    .await
                {
                    Err(Failure::Exchange(e, Some(again))) if replayable && keepalive_race(&e) => {
                        tracing::debug!(target: "rolegate::upstream", upstream = %up.name, server = %server.label, error = %chain(&e), "connection closed before an answer: sending again on a new connection");
                        h1.resend(scheme, authority, again).await
                    }
                    r => r,
                }
                .map(|resp| resp.map(Inner::H1))
                .map_err(Attempt::from)
            }
            None => {
                let req = to_server(req, server)?;
                match pool.client().request(req).await {
                    Err(e) if keepalive_race(&e) => match replay {
                        Some(again) => {
                            tracing::debug!(target: "rolegate::upstream", upstream = %up.name, server = %server.label, error = %chain(&e), "connection closed before an answer: sending again on a new connection");
                            pool.fresh().request(to_server(again, server)?).await
                        }
                        None => Err(e),
                    },
                    r => r,
                }
                .map(|resp| resp.map(Inner::Pooled))
                .map_err(|e| Attempt::Failed {
                    connect: e.is_connect(),
                    error: Box::new(e),
                })
            }
        }
    };
    let head_timeout = async {
        if let Some(sent) = body_sent {
            // Sent, or dropped: the request is over either way.
            let _ = sent.await;
        }
        // (`sleep`'s rule for a duration past the clock's end: about 30
        // years.)
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(up.timeout)
            .unwrap_or_else(|| now + std::time::Duration::from_secs(86_400 * 365 * 30));
        let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        t.as_mut().reset(deadline);
        t.as_mut().await;
    };
    let answer = {
        // Pinned where they are: the select polls them in place (it would
        // move both, the request with them, into its own state).
        tokio::pin!(attempt, head_timeout);
        tokio::select! {
            biased;
            r = &mut attempt => Ok(r),
            _ = &mut head_timeout => Err(()),
        }
    };
    match answer {
        Err(()) => {
            pick.failure();
            Err(Fault::UpstreamTimeout(up.name.clone()).into())
        }
        Ok(Ok(resp)) => {
            pick.success();
            let idle = up.body_idle_timeout;
            Ok(resp.map(|body| UpstreamBody::new(body, idle, pick)))
        }
        Ok(Err(Attempt::Refused(r))) => Err(r),
        Ok(Err(Attempt::Failed { error, connect })) => Err(failed(up, &pick, &*error, connect)),
    }
}

/// A request body that says when its last frame has gone to the upstream
/// connection (or it ended in an error): see `send`.
struct Reported {
    inner: UpBody,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Body for Reported {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        let over = match &r {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if over && let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why an attempt produced no response head.
enum Attempt {
    /// Before anything was sent (an unforwardable URI).
    Refused(Refusal),
    Failed {
        error: BoxError,
        /// No connection was made (refused, unreachable, timed out, TLS).
        connect: bool,
    },
}

impl From<Failure> for Attempt {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Connect(error) => Attempt::Failed {
                error,
                connect: true,
            },
            Failure::Exchange(e, _) => Attempt::Failed {
                error: Box::new(e),
                connect: false,
            },
        }
    }
}

impl From<Refusal> for Attempt {
    fn from(r: Refusal) -> Self {
        Attempt::Refused(r)
    }
}

/// The refusal for a failed attempt; transport failures count against the
/// server's health, the client's own broken body does not.
fn failed(
    up: &Upstream,
    pick: &Pick,
    e: &(dyn std::error::Error + Send + Sync + 'static),
    connect: bool,
) -> Refusal {
    let server = &pick.server().label;
    // The client's body broke while it was being sent: the client's
    // fault (400/413), not the upstream's; the upstream request was
    // aborted, so it never got a complete request.
    if has_cause::<BodyTooLarge>(e) {
        return Deny::BodyTooLarge.into();
    }
    // The client stopped sending its body: the upstream request was
    // aborted (it never saw a complete request); 408.
    if let Some(TooSlow(t)) = find_cause::<TooSlow>(e) {
        tracing::debug!(upstream = %up.name, timeout = t.code(), "request body too slow while forwarding");
        return Deny::RequestTimeout(*t).into();
    }
    if has_cause::<MalformedBody>(e) {
        tracing::debug!(upstream = %up.name, error = %chain(e), "request body broke while forwarding");
        return Deny::BadRequest(BadRequest::MalformedBody).into();
    }
    pick.failure();
    // A TLS error, in the handshake (connect) or right after it (a TLS 1.3
    // server refusing our client certificate answers the first request
    // with an alert): the request never reached the upstream's application.
    if has_cause::<rustls::Error>(e) {
        let cause = chain(e);
        tracing::warn!(upstream = %up.name, server = %server, error = %cause, "upstream TLS failed");
        return Fault::UpstreamTls(up.name.clone(), cause).into();
    }
    if connect {
        tracing::warn!(upstream = %up.name, server = %server, error = %chain(e), "upstream connect failed");
        return Fault::UpstreamUnavailable(up.name.clone()).into();
    }
    Fault::UpstreamFailed(up.name.clone(), chain(e)).into()
}

/// The request with the server's scheme and authority in front of its
/// origin-form target.
fn to_server(req: Request<UpBody>, server: &Server) -> Result<Request<UpBody>, Refusal> {
    let (mut parts, body) = req.into_parts();
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(server.scheme.clone());
    uri.authority = Some(server.authority.clone());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    parts.uri = http::Uri::from_parts(uri).map_err(|_| Deny::BadHost("unforwardable path"))?;
    Ok(Request::from_parts(parts, body))
}

/// Gives the request an origin-form target (`/path?query`), what an
/// HTTP/1.1 connection to the server sends.
fn origin_form(req: &mut Request<UpBody>) {
    if req.uri().scheme().is_none() && req.uri().path_and_query().is_some() {
        return;
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = http::Uri::from(pq);
}

pub(crate) fn empty() -> UpBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

/// Idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE)
/// and without a body, so nothing of it is lost by sending it again.
fn replayable(req: &Request<UpBody>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) && req.body().is_end_stream()
}

/// The connection ended (closed, reset, aborted) before any byte of an
/// answer, on a connection that was open: not a connect or TLS failure and
/// not a timeout. The answer's head was not started, or hyper would have
/// said it was malformed.
fn keepalive_race(e: &(dyn std::error::Error + 'static)) -> bool {
    let connect = e
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(|e| e.is_connect());
    if connect || has_cause::<rustls::Error>(e) {
        return false;
    }
    if find_cause::<WireError>(e).is_some_and(WireError::before_answer) {
        return true;
    }
    if find_cause::<hyper::Error>(e).is_some_and(|h| h.is_incomplete_message() || h.is_canceled()) {
        return true;
    }
    find_cause::<std::io::Error>(e).is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
        )
    })
}

/// The error an upstream body ends with after `body_idle_timeout` without
/// a byte.
#[derive(Debug, thiserror::Error)]
#[error("no byte of the upstream's body within the idle timeout")]
pub struct BodyIdleTimeout;

/// An upstream answer's body: the connection's, with the idle timeout, and
/// the server's in-flight count held until it ends.
///
/// The timer is armed only when the body waits (`Pending`) and moved only
/// when it fires early (data came meanwhile), so a streaming body costs one
/// clock read per frame. On timeout (and on the end, or an error) the
/// connection's body is dropped at once: a cut body's connection is closed,
/// never returned to the pool.
///
/// On an HTTP/1.1 upstream the body is read from the connection the
/// request holds (`h1::Answer`), which goes back to be kept when it ends.
pub struct UpstreamBody {
    inner: Option<Inner>,
    idle: Duration,
    /// When the body started waiting for its next frame; `None` after a
    /// frame (or the head) came and until the next wait, which reads the
    /// clock then: a body that never waits reads none.
    last: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    pick: Option<Pick>,
    /// Trailers are cleaned as the head was, by these rules, when set
    /// (answers a client can receive trailers on: HTTP/2).
    trailers: Option<Arc<ForwardSettings>>,
}

/// Where an answer's body comes from.
pub enum Inner {
    /// hyper-util's pooled client (HTTP/2, websocket upgrades).
    Pooled(Incoming),
    /// A connection of `h1.rs`.
    H1(Box<Answer>),
}

impl Inner {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Inner::Pooled(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            Inner::H1(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inner::Pooled(b) => b.is_end_stream(),
            Inner::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inner::Pooled(b) => b.size_hint(),
            Inner::H1(b) => b.size_hint(),
        }
    }
}

impl UpstreamBody {
    /// The answer's fields as its bytes, when they were asked for
    /// (`send`'s `relay`); taken once.
    pub fn take_relayed(&mut self) -> Option<Box<super::relayed::Relayed>> {
        match self.inner.as_mut() {
            Some(Inner::H1(answer)) => answer.take_relayed(),
            _ => None,
        }
    }

    /// The server's place in flight, for a websocket relay that holds the
    /// upgraded connection after this (empty) body is gone.
    pub fn take_pick(&mut self) -> Option<Pick> {
        self.pick.take()
    }

    fn new(inner: Inner, idle: Duration, pick: Pick) -> Self {
        UpstreamBody {
            inner: Some(inner),
            idle,
            last: None,
            timer: None,
            pick: Some(pick),
            trailers: None,
        }
    }

    /// Cleans the answer's trailers as its head was cleaned (hop-by-hop
    /// fields, the identity prefix, the credential cookie's `Set-Cookie`).
    pub fn clean_trailers(&mut self, rules: Arc<ForwardSettings>) {
        self.trailers = Some(rules);
    }

    /// Over (ended, cut short, timed out): the body is dropped, and with
    /// it its connection, which is kept only if the body had ended.
    fn done(&mut self) {
        self.inner = None;
        self.timer = None;
        self.pick = None;
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.last = None;
                let frame = match (&this.trailers, frame.into_trailers()) {
                    (Some(rules), Ok(mut t)) => {
                        let removed = headers::clean_response(&mut t, rules);
                        if !removed.is_empty() {
                            tracing::warn!(target: "rolegate::upstream", headers = ?removed, "upstream trailers carried the gateway's credential cookie or identity headers: removed");
                        }
                        Frame::trailers(t)
                    }
                    (_, Ok(t)) => Frame::trailers(t),
                    (_, Err(frame)) => frame,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.done();
                Poll::Ready(None)
            }
            Poll::Pending => loop {
                // Silent from the first wait after the last frame (the
                // same poll that took that frame, or the next one).
                let last = *this.last.get_or_insert_with(tokio::time::Instant::now);
                let deadline = last + this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if deadline <= tokio::time::Instant::now() {
                    if let Some(p) = &this.pick {
                        tracing::warn!(target: "rolegate::upstream", upstream = %p.pool().name(), server = %p.server().label, idle_ms = this.idle.as_millis() as u64, "upstream body idle timeout: response aborted");
                    }
                    this.done();
                    return Poll::Ready(Some(Err(Box::new(BodyIdleTimeout))));
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// Whether `e` or anything in its source chain is a `T`.
pub(crate) fn has_cause<T: std::error::Error + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> bool {
    find_cause::<T>(e).is_some()
}

/// The first `T` in `e`'s source chain. Looks inside `io::Error`s too:
/// their `source()` skips the error they wrap (it returns that error's own
/// source), and TLS errors arrive wrapped twice.
pub(crate) fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => err.source(),
        };
    }
    None
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_errors_are_found_inside_nested_io_errors() {
        // hyper-rustls wraps tokio-rustls' io::Error, which wraps rustls'.
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let nested =
            std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        assert!(has_cause::<rustls::Error>(&nested));
        assert!(chain(&nested).contains("UnknownIssuer"));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(!has_cause::<rustls::Error>(&plain));
    }

    #[test]
    fn tls_settings_build_for_every_kind_of_roots() {
        for roots in [
            Roots::Default,
            Roots::Only(RootCertStore::empty()),
            Roots::Unverified,
        ] {
            let cfg = tls_config(TlsSettings {
                roots,
                client_auth: None,
                server_name: None,
            })
            .unwrap();
            assert!(cfg.alpn_protocols.is_empty());
        }
    }
}
