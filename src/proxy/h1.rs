//! Phase 6 transport, HTTP/1.1: the upstream connections rolegate keeps
//! itself and drives inside the request's own task.
//!
//! hyper-util's pooled client runs every connection as a task of its own
//! and spawns one more task per request to put the connection back in its
//! pool, so each request crosses two channels and several task wake-ups
//! between tasks. Here a connection (hyper's own HTTP/1 codec, unchanged)
//! is taken from its server's idle list, polled by the request while the
//! answer's head is awaited and by the answer's body while it streams, and
//! put back when the body has ended with the connection ready for another
//! request. A body that does not end (cut, timed out, dropped by the
//! client) drops its connection, which closes it.
//!
//! Owns the idle lists (newest first out, each connection kept
//! [`IDLE_FOR`]), connecting, the `Host` header of a request that has
//! none, and sending again a request hyper gives back unsent from a kept
//! connection found closed. Not the keep-alive race retry, timeouts,
//! health or errors' meaning (`upstream.rs`, `pool.rs`); websocket
//! upgrades and HTTP/2 stay on hyper-util's client.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{Builder, Connection, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use super::upstream::{BoxError, UpBody};

/// How long an idle connection is kept (hyper-util's default, which the
/// HTTP/2 and websocket client keeps too).
pub const IDLE_FOR: Duration = Duration::from_secs(60);

/// Opens the byte streams: hyper-util's connectors (plain TCP with the
/// connect timeout and `TCP_NODELAY`; rustls on top for `https://`).
pub trait Connector: Clone + Send + Sync + 'static {
    type Io: Stream;
    fn connect(&self, uri: Uri) -> impl Future<Output = Result<Self::Io, BoxError>> + Send;
}

impl<S> Connector for S
where
    S: Service<Uri> + Clone + Send + Sync + 'static,
    S::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Io = S::Response;

    async fn connect(&self, uri: Uri) -> Result<Self::Io, BoxError> {
        let mut c = self.clone();
        poll_fn(|cx| c.poll_ready(cx)).await.map_err(Into::into)?;
        c.call(uri).await.map_err(Into::into)
    }
}

/// A connection's byte stream.
pub trait Stream: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static {}

impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static> Stream for T {}

/// Why an exchange produced no answer.
pub enum Failure {
    /// No connection: refused, unreachable, timed out, TLS handshake.
    Connect(BoxError),
    /// On a connection: closed, reset, a malformed answer, the request
    /// body's own error.
    Exchange(hyper::Error),
}

/// The kept connections of one upstream, per server.
pub struct Conns<C: Connector> {
    connector: C,
    builder: Builder,
    slots: Mutex<Vec<Slot<C::Io>>>,
    /// The expiry task runs (started with the first connection put back).
    reaping: std::sync::atomic::AtomicBool,
}

struct Slot<Io: Stream> {
    scheme: Scheme,
    authority: Authority,
    /// `Host` for requests that do not carry the client's.
    host: HeaderValue,
    /// Oldest first.
    idle: VecDeque<Idle<Io>>,
}

struct Idle<Io: Stream> {
    send: SendRequest<UpBody>,
    conn: Box<Connection<Io, UpBody>>,
    since: Instant,
}

/// A connection lent to one request, until its answer's body ends.
pub struct Held<C: Connector> {
    home: Arc<Conns<C>>,
    slot: usize,
    send: SendRequest<UpBody>,
    /// `None` once the connection's future has ended. Boxed once when it
    /// is made (its buffers are inline, hundreds of bytes), so lending it
    /// and putting it back move a pointer.
    conn: Option<Box<Connection<C::Io, UpBody>>>,
}

impl<C: Connector> Conns<C> {
    pub fn new(connector: C) -> Arc<Self> {
        let mut builder = Builder::new();
        // The bodies forwarded are the client's, streamed: a head and a
        // body chunk go out in one `writev`, not copied together.
        builder.writev(true);
        Arc::new(Conns {
            connector,
            builder,
            slots: Mutex::new(Vec::new()),
            reaping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Sends `req` (origin-form URI) to `scheme://authority`, on a kept
    /// connection unless `fresh`, and waits for the answer's head, driving
    /// the connection meanwhile.
    pub async fn exchange(
        self: &Arc<Self>,
        scheme: &Scheme,
        authority: &Authority,
        mut req: Request<UpBody>,
        fresh: bool,
    ) -> Result<(Response<Incoming>, Held<C>), Failure> {
        let (slot, host, kept) = self.checkout(scheme, authority, fresh);
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, host);
        }
        let reused = kept.is_some();
        let held = match kept {
            Some(h) => h,
            None => self.connect(slot, scheme, authority).await?,
        };
        match Self::send_on(held, req).await {
            Ok(r) => Ok(r),
            // A kept connection found closed before a byte of the request
            // went out (hyper hands the request back): sent once more on a
            // new connection, whatever its method, as hyper-util's
            // `retry_canceled_requests` does. Nothing of it reached the
            // server.
            Err(mut e) if reused => match e.take_message() {
                Some(req) => {
                    let held = self.connect(slot, scheme, authority).await?;
                    Self::send_on(held, req)
                        .await
                        .map_err(|e| Failure::Exchange(e.into_error()))
                }
                None => Err(Failure::Exchange(e.into_error())),
            },
            Err(e) => Err(Failure::Exchange(e.into_error())),
        }
    }

    async fn send_on(
        mut held: Held<C>,
        req: Request<UpBody>,
    ) -> Result<(Response<Incoming>, Held<C>), TrySendError<Request<UpBody>>> {
        let mut answer = pin!(held.send.try_send_request(req));
        let resp = poll_fn(|cx| {
            held.drive(cx);
            answer.as_mut().poll(cx)
        })
        .await?;
        Ok((resp, held))
    }

    /// The server's slot, its `Host`, and its newest idle connection that
    /// is still open (unless `fresh`).
    fn checkout(
        self: &Arc<Self>,
        scheme: &Scheme,
        authority: &Authority,
        fresh: bool,
    ) -> (usize, HeaderValue, Option<Held<C>>) {
        loop {
            let (slot, host, idle) = {
                let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                let i = match slots
                    .iter()
                    .position(|s| s.authority == *authority && s.scheme == *scheme)
                {
                    Some(i) => i,
                    None => {
                        slots.push(Slot {
                            scheme: scheme.clone(),
                            authority: authority.clone(),
                            host: host_value(scheme, authority),
                            idle: VecDeque::new(),
                        });
                        slots.len() - 1
                    }
                };
                let s = &mut slots[i];
                let idle = if fresh { None } else { s.idle.pop_back() };
                (i, s.host.clone(), idle)
            };
            let Some(mut idle) = idle else {
                return (slot, host, None);
            };
            // Polled outside the lock: a connection the server closed while
            // it sat idle ends here (its end of stream is already seen)
            // and the next one is tried.
            if idle.since.elapsed() < IDLE_FOR && open_and_ready(&mut idle.send, &mut idle.conn) {
                let held = Held {
                    home: self.clone(),
                    slot,
                    send: idle.send,
                    conn: Some(idle.conn),
                };
                return (slot, host, Some(held));
            }
        }
    }

    async fn connect(
        self: &Arc<Self>,
        slot: usize,
        scheme: &Scheme,
        authority: &Authority,
    ) -> Result<Held<C>, Failure> {
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| Failure::Connect(e.into()))?;
        let io = self
            .connector
            .connect(uri)
            .await
            .map_err(Failure::Connect)?;
        let (send, conn) = self
            .builder
            .handshake(io)
            .await
            .map_err(Failure::Exchange)?;
        Ok(Held {
            home: self.clone(),
            slot,
            send,
            conn: Some(Box::new(conn)),
        })
    }

    fn checkin(self: &Arc<Self>, held: Held<C>) {
        let Held {
            slot, send, conn, ..
        } = held;
        let Some(conn) = conn else { return };
        let idle = Idle {
            send,
            conn,
            since: Instant::now(),
        };
        {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots[slot].idle.push_back(idle);
        }
        self.start_reaping();
    }

    /// Closes connections idle for [`IDLE_FOR`], every half of it, for as
    /// long as the upstream exists (a reload drops it, and the task ends).
    fn start_reaping(self: &Arc<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.reaping.load(Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.reaping.swap(true, Relaxed) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(IDLE_FOR / 2).await;
                let Some(conns) = weak.upgrade() else { return };
                let expired = conns.expired();
                drop(conns);
                drop(expired);
            }
        });
    }

    /// Takes the expired connections out (they close when dropped, after
    /// the lock is released).
    fn expired(&self) -> Vec<Idle<C::Io>> {
        let mut out = Vec::new();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for s in slots.iter_mut() {
            while s
                .idle
                .front()
                .is_some_and(|i| i.since.elapsed() >= IDLE_FOR)
            {
                out.extend(s.idle.pop_front());
            }
        }
        out
    }

    /// Idle connections kept, all servers together.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        let slots = self.slots.lock().unwrap();
        slots.iter().map(|s| s.idle.len()).sum()
    }
}

impl<C: Connector> Held<C> {
    /// Lets the connection read and write as far as it can; remembers when
    /// it has ended. Its errors reach the request or the body it serves.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = self.conn.as_mut()
            && Pin::new(&mut **conn).poll(cx).is_ready()
        {
            self.conn = None;
        }
    }

    /// The answer's body has ended: back to the idle list if the
    /// connection can take another request, else closed.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.as_mut()
            && open_and_ready(&mut self.send, conn)
        {
            let home = self.home.clone();
            home.checkin(self);
        }
    }
}

/// Polls an idle connection once (no one is woken by it): whether it is
/// still open and waiting for a request. Outside tokio's cooperative
/// budget: a task that has spent it would get `Pending` without the socket
/// being read, and a connection the server closed, or one with stray bytes
/// after its last answer, would pass for idle.
fn open_and_ready<Io: Stream>(
    send: &mut SendRequest<UpBody>,
    conn: &mut Box<Connection<Io, UpBody>>,
) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut poll = tokio::task::unconstrained(&mut **conn);
    Pin::new(&mut poll).poll(&mut cx).is_pending() && send.is_ready()
}

/// `host[:port]`, the port left out when it is the scheme's default (what
/// hyper-util's client sends).
fn host_value(scheme: &Scheme, authority: &Authority) -> HeaderValue {
    let default = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    let text = match authority.port_u16() {
        Some(p) if p != default => format!("{}:{p}", authority.host()),
        _ => authority.host().to_string(),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The kept connections of an upstream, for either kind of stream.
pub enum H1 {
    Plain(Arc<Conns<HttpConnector>>),
    Tls(Arc<Conns<HttpsConnector<HttpConnector>>>),
}

/// A connection lent to one answer (see [`Held`]).
pub enum Lease {
    Plain(Held<HttpConnector>),
    Tls(Held<HttpsConnector<HttpConnector>>),
}

impl H1 {
    pub async fn exchange(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        req: Request<UpBody>,
        fresh: bool,
    ) -> Result<(Response<Incoming>, Lease), Failure> {
        match self {
            H1::Plain(c) => {
                let (r, h) = c.exchange(scheme, authority, req, fresh).await?;
                Ok((r, Lease::Plain(h)))
            }
            H1::Tls(c) => {
                let (r, h) = c.exchange(scheme, authority, req, fresh).await?;
                Ok((r, Lease::Tls(h)))
            }
        }
    }
}

impl Lease {
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        match self {
            Lease::Plain(h) => h.drive(cx),
            Lease::Tls(h) => h.drive(cx),
        }
    }

    pub fn release(self) {
        match self {
            Lease::Plain(h) => h.release(),
            Lease::Tls(h) => h.release(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn host_leaves_out_the_default_port_only() {
        let a = |s: &str| Authority::try_from(s).unwrap();
        assert_eq!(host_value(&Scheme::HTTP, &a("app:80")), "app");
        assert_eq!(host_value(&Scheme::HTTP, &a("app:8080")), "app:8080");
        assert_eq!(host_value(&Scheme::HTTPS, &a("app:443")), "app");
        assert_eq!(host_value(&Scheme::HTTPS, &a("app:80")), "app:80");
        assert_eq!(host_value(&Scheme::HTTP, &a("[::1]:81")), "[::1]:81");
    }

    /// A hyper upstream answering 4 KB (the `Host` it got in `x-host`),
    /// counting the connections it accepted; `close` answers with
    /// `Connection: close`.
    async fn upstream(close: bool) -> (Authority, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let host = req.headers().get(header::HOST).cloned();
                    let mut resp = Response::new(Full::new(Bytes::from(vec![b'x'; 4096])));
                    if let Some(h) = host {
                        resp.headers_mut().insert("x-host", h);
                    }
                    if close {
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        });
        (Authority::try_from(addr.to_string()).unwrap(), accepted)
    }

    fn get() -> Request<UpBody> {
        let body = Empty::<Bytes>::new().map_err(|e| match e {}).boxed();
        let mut req = Request::new(body);
        *req.uri_mut() = Uri::from_static("/x");
        req
    }

    /// The answer's body read to its end, its connection driven meanwhile.
    async fn read_to_end(resp: Response<Incoming>, held: &mut Held<HttpConnector>) -> Vec<u8> {
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(f) = poll_fn(|cx| {
            held.drive(cx);
            Pin::new(&mut body).poll_frame(cx)
        })
        .await
        {
            out.extend_from_slice(&f.unwrap().into_data().unwrap_or_default());
        }
        out
    }

    /// One exchange, its body read to the end, then the connection
    /// released; the body and the `x-host` answered (the `Host` seen).
    async fn fetch(conns: &Arc<Conns<HttpConnector>>, at: &Authority) -> (Vec<u8>, String) {
        let (resp, mut held) = match conns.exchange(&Scheme::HTTP, at, get(), false).await {
            Ok(r) => r,
            Err(Failure::Exchange(e)) => panic!("exchange failed: {e}"),
            Err(Failure::Connect(e)) => panic!("connect failed: {e}"),
        };
        let host = resp
            .headers()
            .get("x-host")
            .map(|h| h.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = read_to_end(resp, &mut held).await;
        held.release();
        (body, host)
    }

    use http_body::Body as _;

    #[tokio::test]
    async fn a_connection_is_kept_and_used_again_once_its_body_has_ended() {
        let (at, accepted) = upstream(false).await;
        let conns = Conns::new(HttpConnector::new());
        for _ in 0..3 {
            let (body, host) = fetch(&conns, &at).await;
            assert_eq!(body.len(), 4096);
            assert_eq!(host, at.as_str(), "the Host a request without one gets");
            assert_eq!(conns.idle_count(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // `fresh` never takes the kept one.
        let (resp, held) = conns
            .exchange(&Scheme::HTTP, &at, get(), true)
            .await
            .ok()
            .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(conns.idle_count(), 1);
        drop((resp, held));
    }

    #[tokio::test]
    async fn a_connection_whose_body_was_not_read_to_its_end_is_closed() {
        let (at, accepted) = upstream(false).await;
        let conns = Conns::new(HttpConnector::new());
        let (resp, held) = conns
            .exchange(&Scheme::HTTP, &at, get(), false)
            .await
            .ok()
            .unwrap();
        drop(resp);
        drop(held);
        assert_eq!(conns.idle_count(), 0);
        fetch(&conns, &at).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_server_closes_are_not_kept() {
        let (at, accepted) = upstream(true).await;
        let conns = Conns::new(HttpConnector::new());
        for n in 1..=2 {
            assert_eq!(fetch(&conns, &at).await.0.len(), 4096);
            assert_eq!(conns.idle_count(), 0);
            assert_eq!(accepted.load(Ordering::SeqCst), n);
        }
    }

    /// A server that closes each connection 50 ms after its answer,
    /// between our requests, without `Connection: close`.
    async fn closing_after_answer() -> (Authority, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"{}"),
                        )))
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    let _ = tokio::time::timeout(Duration::from_millis(50), conn).await;
                });
            }
        });
        (at, accepted)
    }

    #[tokio::test]
    async fn an_idle_connection_the_server_closed_is_skipped_at_checkout() {
        let (at, accepted) = closing_after_answer().await;
        let conns = Conns::new(HttpConnector::new());
        fetch(&conns, &at).await;
        assert_eq!(conns.idle_count(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The kept connection is found closed before anything is sent on
        // it: no error, a new connection.
        fetch(&conns, &at).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_stray_answer_is_never_taken_for_the_next_request_even_on_a_spent_budget() {
        let (at, accepted) = stray_bytes_server().await;
        let conns = Conns::new(HttpConnector::new());
        assert_eq!(fetch(&conns, &at).await.0, b"ok");
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Spend tokio's cooperative budget, then start the exchange (its
        // checkout runs in its first poll) in the same poll of this task:
        // the stray answer waiting on the kept connection must never be
        // handed out as this request's answer. (Two guards hold here: the
        // checkout's poll is outside the budget, and hyper reads a kept
        // connection before writing to it, giving the request back.)
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..1000 {
            tx.send(i).unwrap();
        }
        let mut exchange = pin!(conns.exchange(&Scheme::HTTP, &at, get(), false));
        let first = poll_fn(|cx| {
            for _ in 0..1000 {
                let _ = rx.poll_recv(cx);
            }
            std::task::Poll::Ready(exchange.as_mut().poll(cx).is_ready())
        })
        .await;
        assert!(!first, "the exchange cannot be over in its first poll");
        let Ok((resp, mut held)) = exchange.await else {
            panic!("exchange failed");
        };
        assert_eq!(read_to_end(resp, &mut held).await, b"good");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A raw server: its first connection answers `ok`, then 50 ms later
    /// sends a second, unasked-for answer (`EVIL`) on it; every later
    /// connection answers `good`.
    async fn stray_bytes_server() -> (Authority, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let body: &[u8] = if n == 0 { b"ok" } else { b"good" };
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        let _ = s.write_all(&[head.as_bytes(), body].concat()).await;
                        if n == 0 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL")
                                .await;
                        }
                    }
                });
            }
        });
        (at, accepted)
    }

    #[tokio::test]
    async fn bytes_after_an_answer_make_its_connection_unusable() {
        let (at, accepted) = stray_bytes_server().await;
        let conns = Conns::new(HttpConnector::new());
        assert_eq!(fetch(&conns, &at).await.0, b"ok");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(fetch(&conns, &at).await.0, b"good");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
