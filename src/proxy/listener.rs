//! Accept loops: TCP accept, TLS (rustls: certificates by SNI, TLS 1.2/1.3,
//! ALPN `h2`/`http/1.1`, client certificates), HTTP/1.1 and HTTP/2 serving
//! (hyper-util `auto`) with header size and header-read-time limits,
//! several listeners, graceful shutdown.
//!
//! Owns connections only; every request goes to `Gateway::handle` with the
//! facts of its connection ([`Conn`]: peer, TLS, verified client
//! certificate). On HTTP/1.1 connections every request also carries its raw
//! head as the connection's `wire::Tap` read it (a `RawHead` extension); an
//! HTTP/2 connection has no tap (the pipeline checks the h2 request itself).
//! Heads hyper itself refuses (a bad request line, a control character in a
//! header name, a head over `listen.max_header_bytes`) are answered by
//! hyper with a bare status and never reach the pipeline; they are logged
//! here as access lines.
//!
//! Connection limits are applied at accept: past `listen.max_connections`
//! (all public listeners together) or `listen.max_connections_per_ip`, a
//! new connection is closed at once, before any TLS or HTTP work (a warn
//! line at most every 10 s says how many). Each admitted connection holds
//! a [`ConnSlot`] until its task ends (an open websocket holds it too).
//! A connection with no request in flight is closed gracefully after
//! `listen.keepalive_timeout` (before its first request: after
//! `header_read_timeout`); HTTP/2 gets a GOAWAY.
//!
//! Which protocol a connection speaks is decided here, once: TLS by ALPN
//! (`h2` → HTTP/2 only, else HTTP/1.1 only), a plain listener HTTP/1.1 only
//! unless `h2c` (then the HTTP/2 preface, prior knowledge, selects HTTP/2).
//! A failed or slow TLS handshake (bounded by `listen.header_read_timeout`)
//! closes that connection and logs at debug; nothing else notices.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use super::body::ClientBody;
use super::h1server;
use super::limits::{Activity, ConnSlot, OverStreamLimit, SendTimedOut, SendTimeout, Tracked};
use super::pipeline::Gateway;
use super::tls::ClientCert;
use super::upstream::find_cause;
use super::wire::{H2Facts, H2Tap, Heads, Tap};
use crate::config::{ListenSettings, Redirect};

/// What the pipeline may know about the connection a request came on.
#[derive(Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    /// `peer` as text (access lines) and its address as the
    /// `X-Forwarded-For` value, made once per connection.
    pub peer_text: Arc<str>,
    pub peer_ip: http::HeaderValue,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// The client certificate rustls verified against the listener's CA
    /// bundle (`tls.client_auth`), if one was presented.
    pub client_cert: Option<ClientCert>,
    /// A `redirect_https` listener: every request is answered 308.
    pub redirect: Option<Redirect>,
    /// What the HTTP/2 mirror saw (connections that may speak HTTP/2);
    /// an HTTP/2 request on a connection without one is refused.
    pub h2: Option<Arc<H2Facts>>,
    /// The connection's place under `listen.max_connections` (handed to
    /// a websocket relay, which keeps the connection open).
    pub slot: Option<Arc<ConnSlot>>,
    /// The last `Host` header read on this connection and the routing
    /// host it gave: a kept-alive connection sends the same one with every
    /// request, which is then not parsed again.
    pub host_memo: HostMemo,
    /// The last token verified on this connection (`auth::ConnToken`).
    pub token_memo: crate::auth::ConnToken,
    /// The connection's upstream-head timer, kept between its requests
    /// (see [`HeadTimer`]).
    pub head_timer: HeadTimer,
}

/// A timer kept for the next request's upstream-head timeout
/// (`upstream::send`): moving a registered timer's deadline later is a
/// compare-and-swap, where a new timer per request is registered with
/// the timer wheel and removed again. Taken by a request (`try_lock`: an
/// HTTP/2 stream that finds it taken makes its own) and put back after;
/// dropped with the connection.
pub type HeadTimer = std::sync::Mutex<Option<std::pin::Pin<Box<tokio::time::Sleep>>>>;

/// See [`Conn::host_memo`].
pub type HostMemo = std::sync::Mutex<Option<(http::HeaderValue, Arc<str>)>>;

impl Conn {
    /// A plain connection from `peer`; the listener fills in the rest.
    pub fn plain(peer: SocketAddr) -> Self {
        let ip = peer.ip().to_string();
        Conn {
            peer,
            peer_text: peer.to_string().into(),
            // An IP address's text is always a valid header value.
            peer_ip: http::HeaderValue::from_str(&ip)
                .unwrap_or_else(|_| http::HeaderValue::from_static("")),
            tls: false,
            client_cert: None,
            redirect: None,
            h2: None,
            slot: None,
            host_memo: HostMemo::default(),
            token_memo: Default::default(),
            head_timer: HeadTimer::default(),
        }
    }
}

/// The protocol a connection is served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
    /// HTTP/1.1, or HTTP/2 when the client opens with its preface (h2c).
    Sniff,
}

/// Runs a hyper connection to its end; when the listener shuts down
/// (`drain` changes) or the connection has been idle too long (`idle`
/// resolves), asks it to finish gracefully and waits for that: after an
/// idle shutdown, only until `settled` (a client that never finishes its
/// HTTP/2 preface would otherwise hold it forever). The receiver is held
/// until the connection is done: the listener's drain waits for every
/// receiver to be gone.
macro_rules! drained {
    ($conn:expr, $drain:expr, $idle:expr, $stalled:expr, $settled:expr, $first:expr) => {{
        let mut drain = $drain;
        let conn = $conn;
        tokio::pin!(conn);
        let idle = $idle;
        tokio::pin!(idle);
        let stalled = $stalled;
        tokio::pin!(stalled);
        let r = tokio::select! {
            r = conn.as_mut() => r,
            // A client that stopped taking an HTTP/2 stream's data: the
            // connection is dropped (its streams, and the upstream
            // exchanges behind them, with it).
            _ = &mut stalled => Ok(()),
            _ = drain.changed() => {
                // A connection accepted just before the drain whose first
                // request is still on its way is served, not closed.
                let arriving = $first;
                tokio::select! {
                    r = conn.as_mut() => r,
                    _ = arriving => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
            _ = &mut idle => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    biased;
                    r = conn.as_mut() => r,
                    _ = $settled => Ok(()),
                }
            }
        };
        drop(drain);
        r
    }};
}

use h1server::FIRST_REQUEST_GRACE;

/// Per-connection settings, copied out of the runtime at accept.
#[derive(Clone)]
struct Settings {
    tls: Option<Arc<rustls::ServerConfig>>,
    h2c: bool,
    redirect: Option<Redirect>,
    max_header_bytes: usize,
    header_read_timeout: Duration,
    keepalive_timeout: Duration,
    send_timeout: Duration,
    max_concurrent_streams: u32,
    /// HTTP/2 requests in flight from one client key, all its connections
    /// together.
    max_streams_per_ip: usize,
    /// hyper's own header-count limit: above `listen.max_headers`, so the
    /// pipeline answers a few too many with JSON (see `hyper_max_headers`).
    max_headers: usize,
}

/// hyper's header-count limit for `max_headers`: twice ours, at least
/// hyper's default (kept on the stack by hyper, so no allocation per head
/// unless raised). Between ours and this, the pipeline answers 431 JSON;
/// above it, hyper answers a bare 431.
fn hyper_max_headers(max_headers: usize) -> usize {
    max_headers.saturating_mul(2).max(super::wire::MAX_HEADERS)
}

/// A connection's end of its listener's drain signal.
type Drain = tokio::sync::watch::Receiver<()>;

/// Binds every public listener of `listen`, in order.
pub async fn bind(listen: &ListenSettings) -> std::io::Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(listen.listeners.len());
    for l in &listen.listeners {
        let bound = TcpListener::bind(l.addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("binding {}: {e}", l.addr)))?;
        out.push(bound);
    }
    Ok(out)
}

/// Listening sockets handed over by socket activation: one per public
/// listener, in config order, then the admin listener's if one was handed
/// over.
pub struct Inherited {
    pub public: Vec<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
}

/// The listening sockets handed over by systemd socket activation, read
/// as `sd_listen_fds(3)` reads them: `LISTEN_FDS` sockets from fd 3 on,
/// only when `LISTEN_PID` names this process (else they are not ours and
/// are left alone). One per public listener, in config order, then the
/// admin listener's when the config has one and a socket is left for it
/// (otherwise it is bound as usual). Each must be a listening TCP socket
/// on its listener's configured address (any, for a configured port 0), so
/// a unit whose `ListenStream=` order differs from the config's cannot
/// serve the admin API on the public port. `Ok(None)`: nothing handed
/// over, bind as usual.
///
/// Call before the async runtime starts its threads: it clears the
/// variables from the environment, which must not race a thread reading
/// it (the log thread, the only one started earlier, never does).
pub fn inherited(
    listen: &ListenSettings,
    admin: Option<SocketAddr>,
) -> std::io::Result<Option<Inherited>> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    if std::env::var_os("LISTEN_FDS").is_none() {
        return Ok(None);
    }
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if !ours {
        tracing::warn!(
            "LISTEN_FDS is set but LISTEN_PID does not name this process: the sockets are not ours; binding as configured"
        );
        return Ok(None);
    }
    let mut fds = listenfd::ListenFd::from_env();
    let n = fds.len();
    let want = listen.listeners.len();
    if n < want || n > want + usize::from(admin.is_some()) {
        return Err(invalid(format!(
            "socket activation handed over {n} socket(s); the config has {want} public listener(s){}",
            if admin.is_some() {
                " and an admin listener"
            } else {
                ""
            }
        )));
    }
    let mut take = |i: usize, what: &str, configured: SocketAddr| {
        let l = fds.take_tcp_listener(i)?.ok_or_else(|| {
            invalid(format!(
                "socket activation: socket {i} ({what}) is not a TCP socket"
            ))
        })?;
        if !socket2::SockRef::from(&l).is_listener()? {
            return Err(invalid(format!(
                "socket activation: socket {i} ({what}) is not listening"
            )));
        }
        let actual = l.local_addr()?;
        if configured.port() != 0 && actual != configured {
            return Err(invalid(format!(
                "socket activation: socket {i} listens on {actual} but {what} is configured on {configured}; list the sockets in the config's order (public listeners, then the admin listener)"
            )));
        }
        l.set_nonblocking(true)?;
        Ok(l)
    };
    let public = listen
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| take(i, &format!("public listener {}", i + 1), l.addr))
        .collect::<std::io::Result<Vec<_>>>()?;
    let admin = match admin {
        Some(addr) if n > want => Some(take(want, "the admin listener", addr)?),
        _ => None,
    };
    Ok(Some(Inherited { public, admin }))
}

/// Serves `listener` as the first configured listener until `shutdown`
/// resolves, then drains connections.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    serve_nth(gateway, listener, 0, shutdown).await
}

/// Serves `listener` as listener `index` of `listen.listeners` (its TLS,
/// h2c and redirect settings) until `shutdown` resolves, then drains.
pub async fn serve_nth(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    index: usize,
    shutdown: impl Future<Output = ()>,
) {
    // Connection drain: every connection holds a receiver until it ends.
    let (mut drain, _) = tokio::sync::watch::channel(());
    // The drains of connections accepted before a reload changed who this
    // listener admits: told to close at once, awaited at shutdown.
    let mut retired: Vec<tokio::sync::watch::Sender<()>> = Vec::new();
    let mut epochs = gateway.listener_epochs();
    let epoch = |e: &Vec<u64>| e.get(index).copied().unwrap_or(0);
    let mut seen = epoch(&epochs.borrow_and_update());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Ok(()) = epochs.changed() => {
                let now = epoch(&epochs.borrow_and_update());
                if now != seen {
                    seen = now;
                    let old = std::mem::replace(&mut drain, tokio::sync::watch::channel(()).0);
                    let _ = old.send(());
                    retired.retain(|d| !d.is_closed());
                    retired.push(old);
                }
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (settings, slot) = {
                    let rt = gateway.runtime();
                    // Fail closed: a listener the runtime does not describe
                    // serves nothing.
                    let Some(l) = rt.listen.listeners.get(index) else {
                        continue;
                    };
                    // Over a connection limit: closed now (dropped), before
                    // any TLS or HTTP work.
                    let counts = gateway.connections();
                    let slot = match counts.admit(
                        peer.ip(),
                        rt.listen.max_connections,
                        rt.listen.max_connections_per_ip,
                    ) {
                        Ok(slot) => slot,
                        Err(why) => {
                            counts.warn_refused(peer, why);
                            continue;
                        }
                    };
                    let settings = Settings {
                        tls: l.tls.clone(),
                        h2c: l.h2c,
                        redirect: l.redirect.clone(),
                        max_header_bytes: rt.listen.max_header_bytes,
                        header_read_timeout: rt.listen.header_read_timeout,
                        keepalive_timeout: rt.listen.keepalive_timeout,
                        send_timeout: rt.listen.send_timeout,
                        max_concurrent_streams: rt.listen.max_concurrent_streams,
                        max_streams_per_ip: rt.listen.max_streams_per_ip,
                        max_headers: hyper_max_headers(rt.listen.max_headers),
                    };
                    (settings, Arc::new(slot))
                };
                let _ = stream.set_nodelay(true);
                let rx = drain.subscribe();
                tokio::spawn(connection(gateway.clone(), stream, peer, settings, slot, rx));
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = drain.send(());
    retired.push(drain);
    let limit = gateway.runtime().drain_timeout;
    let all_closed = futures_util::future::join_all(retired.iter().map(|d| d.closed()));
    tokio::select! {
        _ = all_closed => {}
        _ = tokio::time::sleep(limit) => tracing::warn!(
            open = retired.iter().map(|d| d.receiver_count()).sum::<usize>(),
            "shutdown: connections still open after shutdown.drain_timeout; closing them"
        ),
    }
}

/// One accepted connection: TLS handshake if any, then HTTP.
async fn connection(
    gw: Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
    s: Settings,
    slot: Arc<ConnSlot>,
    drain: Drain,
) {
    let stream = SendTimeout::new(stream, s.send_timeout);
    let Some(cfg) = s.tls.clone() else {
        let mut conn = Conn {
            redirect: s.redirect.clone(),
            slot: Some(slot),
            ..Conn::plain(peer)
        };
        if !s.h2c {
            return http1(gw, stream, conn, &s, drain).await;
        }
        let heads = Heads::default();
        // The HTTP/2 preface (or the first bytes that rule it out) within
        // `header_read_timeout`: hyper-util's protocol sniff itself waits
        // without a timer, and a silent client must not hold the socket.
        // Read, then replayed to the taps and hyper.
        let mut stream = stream;
        let Some(first) = preface_in_time(&mut stream, s.header_read_timeout).await else {
            tracing::debug!(peer = %peer, "connection closed: no request within header_read_timeout");
            return;
        };
        let stream = h1server::Rewind::new(first, stream);
        // h2c: both taps see the bytes until the first ones tell which
        // protocol it is; the other gives up at once and costs nothing
        // more (HTTP/2 requests never look for a head, HTTP/1.1 ones never
        // at the mirror).
        let facts = Arc::new(H2Facts::default());
        conn.h2 = Some(facts.clone());
        let io = H2Tap::new(stream, facts, s.max_header_bytes);
        let io = Tap::new(io, heads.clone(), s.max_header_bytes).max_headers(s.max_headers);
        return http(gw, io, Proto::Sniff, Some(heads), conn, &s, drain).await;
    };
    let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(stream);
    let tls = match tokio::time::timeout(s.header_read_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(target: "rolegate::tls", peer = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(target: "rolegate::tls", peer = %peer, "TLS handshake timed out");
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let h2 = session.alpn_protocol() == Some(b"h2");
    // rustls verified any certificate presented (listeners without
    // client_auth never ask for one).
    let client_cert = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(ClientCert::from_der);
    let mut conn = Conn {
        tls: true,
        client_cert,
        slot: Some(slot),
        ..Conn::plain(peer)
    };
    if h2 {
        let facts = Arc::new(H2Facts::default());
        conn.h2 = Some(facts.clone());
        let io = H2Tap::new(tls, facts, s.max_header_bytes);
        http(gw, io, Proto::Http2, None, conn, &s, drain).await
    } else {
        http1(gw, tls, conn, &s, drain).await
    }
}

/// HTTP/1.1 on `io`: served by `h1server` while its heads are ones it
/// takes, then (from the first one it does not) by hyper under the tap.
async fn http1<I>(gw: Arc<Gateway>, mut io: I, conn: Conn, s: &Settings, mut drain: Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = h1server::Limits {
        max_header_bytes: s.max_header_bytes,
        header_read_timeout: s.header_read_timeout,
        keepalive_timeout: s.keepalive_timeout,
    };
    let outcome = {
        let (gw, conn) = (&*gw, &conn);
        h1server::serve(&mut io, &limits, &mut drain, |mut req, raw| async move {
            match &conn.redirect {
                Some(to) => {
                    // Where hyper's requests have it (rare enough to cost
                    // the extension map).
                    req.extensions_mut().insert(raw);
                    (gw.redirect(*req, conn, to), None)
                }
                None => gw.handle_h1(req, raw, conn).await,
            }
        })
        .await
    };
    let h1server::Outcome::Handover(read) = outcome else {
        return;
    };
    let heads = Heads::default();
    let io = h1server::Rewind::new(read, io);
    let io = Tap::new(io, heads.clone(), s.max_header_bytes).max_headers(s.max_headers);
    http(gw, io, Proto::Http1, Some(heads), conn, s, drain).await
}

/// Serves HTTP on `io` until the connection ends (or is drained).
async fn http<I>(
    gw: Arc<Gateway>,
    io: I,
    proto: Proto,
    heads: Option<Heads>,
    conn: Conn,
    s: &Settings,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let conn = Arc::new(conn);
    let activity = Activity::new();
    let watch = activity.clone();
    // Before the first request the head timeout applies, after it the
    // keep-alive timeout; an idle connection shut down gracefully gets as
    // long again to be gone.
    let first = s.header_read_timeout.min(s.keepalive_timeout);
    let idle = async {
        watch.idle(first, s.keepalive_timeout).await;
        tracing::debug!(peer = %peer, "closing idle connection");
    };
    // HTTP/2 streams whose window the client keeps shut (HTTP/1.1 has no
    // such thing: a client that stops reading blocks the socket, which
    // `SendTimeout` watches).
    let send_timeout = s.send_timeout;
    let stalled = async {
        if matches!(proto, Proto::Http1) {
            std::future::pending::<()>().await;
        }
        watch.send_stalled(send_timeout).await;
        tracing::info!(peer = %peer, send_timeout = ?send_timeout, "connection closed: the client stopped reading (listen.send_timeout)");
    };
    let max_streams = s.max_streams_per_ip;
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mut req = req.map(ClientBody::Hyper);
        let gw = gw.clone();
        let conn = conn.clone();
        // In flight until the response body is done (keep-alive timeout).
        let busy = activity.begin();
        let (waiting, stream) = if req.version() == http::Version::HTTP_2 {
            let stream = conn.slot.as_ref().map(|slot| {
                let (stream, open) = slot.stream();
                if open > max_streams {
                    req.extensions_mut().insert(OverStreamLimit);
                }
                stream
            });
            (Some(activity.clock()), stream)
        } else {
            (None, None)
        };
        // The head the tap read for this request (HTTP/1.1 answers in
        // order); none if it lost the stream, or on HTTP/2.
        if let Some(h) = heads.as_ref().and_then(Heads::pop) {
            req.extensions_mut().insert(h);
        }
        async move {
            let resp = match &conn.redirect {
                Some(to) => gw.redirect(req, &conn, to),
                None => gw.handle(req, &conn).await,
            };
            Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked::new(b, busy, waiting, stream)))
        }
    });
    let io = TokioIo::new(io);
    // hyper's own h1 and h2 builders where the protocol is known (auto's
    // `*_only` settings do nothing with upgrades on: it would still accept
    // the other protocol); auto only to tell h2c from HTTP/1.1.
    let result = match proto {
        Proto::Http1 => {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(s.header_read_timeout)
                .max_buf_size(s.max_header_bytes);
            if s.max_headers > super::wire::MAX_HEADERS {
                b.max_headers(s.max_headers);
            }
            let conn = b
                .serve_connection(io, service)
                // Websockets.
                .with_upgrades();
            drained!(
                conn,
                drain,
                idle,
                stalled,
                watch.settled(first),
                watch.first_request(FIRST_REQUEST_GRACE)
            )
            .map_err(Into::into)
        }
        Proto::Http2 => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            h2_limits(&mut b, s);
            let conn = b.serve_connection(io, service);
            drained!(
                conn,
                drain,
                idle,
                stalled,
                watch.settled(first),
                watch.first_request(FIRST_REQUEST_GRACE)
            )
            .map_err(Into::into)
        }
        Proto::Sniff => {
            let mut b = auto::Builder::new(TokioExecutor::new());
            let mut h1 = b.http1();
            h1.timer(TokioTimer::new())
                .header_read_timeout(s.header_read_timeout)
                .max_buf_size(s.max_header_bytes);
            if s.max_headers > super::wire::MAX_HEADERS {
                h1.max_headers(s.max_headers);
            }
            let mut h2 = b.http2();
            h2.timer(TokioTimer::new())
                .max_concurrent_streams(s.max_concurrent_streams)
                .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
                .keep_alive_interval(Some(H2_PING_INTERVAL))
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .max_send_buf_size(H2_SEND_BUF);
            let conn = b.serve_connection_with_upgrades(io, service);
            drained!(
                conn,
                drain,
                idle,
                stalled,
                watch.settled(first),
                watch.first_request(FIRST_REQUEST_GRACE)
            )
        }
    };
    if let Err(e) = result {
        log_error(peer, e.as_ref());
    }
}

/// The HTTP/2 limits of `listen`: concurrent streams, the header list
/// size bounded like an HTTP/1.1 head (`max_header_bytes`), and keep-alive
/// pings that drop a peer gone silent (HTTP/2 has no per-request head
/// timeout to do it).
fn h2_limits(b: &mut hyper::server::conn::http2::Builder<TokioExecutor>, s: &Settings) {
    b.timer(TokioTimer::new())
        .max_concurrent_streams(s.max_concurrent_streams)
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_send_buf_size(H2_SEND_BUF);
}

/// Bytes of a response an HTTP/2 stream buffers beyond what the client's
/// window lets out (hyper's default is 400 KiB): a client that opens a
/// large window and then stops reading holds this much per stream until
/// `send_timeout`.
const H2_SEND_BUF: usize = 64 * 1024;

/// HTTP/2 keep-alive pings: every 30 s; no answer within 20 s closes it.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP/2 client preface, as hyper-util's sniff compares it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the first bytes either hold the whole HTTP/2 preface or
/// rule it out, at most `limit`: the bytes read (to be replayed), `None`
/// on timeout or a closed connection. Each read waits for the socket (a
/// client trickling the preface costs a read per arrival, no polling).
async fn preface_in_time<I: tokio::io::AsyncRead + Unpin>(
    stream: &mut I,
    limit: Duration,
) -> Option<bytes::BytesMut> {
    use tokio::io::AsyncReadExt;
    let wait = async {
        let mut buf = bytes::BytesMut::with_capacity(H2_PREFACE.len());
        loop {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let n = buf.len().min(H2_PREFACE.len());
            if buf.len() >= H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] {
                return Some(buf);
            }
            // A partial preface: more is on its way (or never comes).
            buf.reserve(H2_PREFACE.len());
        }
    };
    tokio::time::timeout(limit, wait).await.ok().flatten()
}

fn log_error(peer: SocketAddr, e: &(dyn std::error::Error + Send + Sync + 'static)) {
    if let Some(t) = find_cause::<SendTimedOut>(e) {
        tracing::info!(peer = %peer, send_timeout = ?t.0, "connection closed: the client stopped reading (listen.send_timeout)");
        return;
    }
    match e.downcast_ref::<hyper::Error>() {
        Some(he) => log_connection_error(peer, he),
        None => tracing::debug!(peer = %peer, error = %e, "connection ended with error"),
    }
}

/// A connection ended with an error. A head hyper refused was answered by
/// hyper itself (a bare 400, or 431 for a head over `max_buf_size`, 414 for
/// a target over 65,534 bytes) before any request reached the pipeline: it gets
/// its access line here (no request id, method or path: there was no
/// request). Other errors (a client gone mid-body, the header read
/// timeout, an HTTP/2 protocol error) only log at debug.
fn log_connection_error(peer: std::net::SocketAddr, e: &hyper::Error) {
    if !e.is_parse() || e.is_parse_version_h2() {
        tracing::debug!(peer = %peer, error = %e, "connection ended with error");
        return;
    }
    let reason = e.to_string();
    let status: u16 = if !e.is_parse_too_large() {
        400
    } else if reason.contains("URI") {
        414
    } else {
        431
    };
    tracing::info!(
        target: "rolegate::access",
        request_id = "",
        peer = %peer,
        method = "",
        path = "",
        route = "",
        subject = "",
        status,
        error = "bad_request",
        detail = "malformed_head",
        reason = %reason,
        duration_us = 0u64,
    );
}

/// Runs the public listener and, when given, the admin listener until
/// `shutdown` resolves; then drains connections and makes pending session
/// activity durable.
pub async fn run(
    gateway: Arc<Gateway>,
    public: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    run_all(gateway, vec![public], admin, shutdown).await
}

/// Runs every public listener (`public[i]` is `listen.listeners[i]`, as
/// [`bind`] returns them) and the admin listener until `shutdown`
/// resolves; then drains connections and makes pending session activity
/// durable.
pub async fn run_all(
    gateway: Arc<Gateway>,
    public: Vec<TcpListener>,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = |rx: &tokio::sync::watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let admin_task =
        admin.map(|l| tokio::spawn(crate::admin::serve(gateway.clone(), l, stop(&rx))));
    let serving = futures_util::future::join_all(
        public
            .into_iter()
            .enumerate()
            .map(|(i, l)| serve_nth(gateway.clone(), l, i, stop(&rx))),
    );
    tokio::pin!(serving);
    tokio::select! {
        _ = &mut serving => {}
        _ = shutdown => {
            let limit = gateway.runtime().drain_timeout;
            tracing::info!(drain_timeout = ?limit, "shutting down: no new connections; finishing requests in flight, closing websockets (1001)");
            let _ = tx.send(true);
            let (_, open_websockets) = tokio::join!(serving, gateway.close_websockets(limit));
            if open_websockets > 0 {
                tracing::warn!(open_websockets, "shutdown: websockets still open after shutdown.drain_timeout");
            }
        }
    }
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    gateway.store().flush().await;
}
