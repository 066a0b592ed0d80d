//! Phase 6 transport, HTTP/1.1: the upstream connections rolegate keeps
//! itself and drives inside the request's own task.
//!
//! A connection is taken from its server's idle list, written and read
//! (`h1codec.rs`) by the request while the answer's head is awaited and by
//! the answer's body ([`Answer`]) while it streams, and put back when the
//! body has ended, reusable, with nothing left unread; whether the server
//! has closed it or sent anything since is probed when it is taken again
//! (a closed or stray-bytes connection is dropped there). A body
//! that does not end (cut, timed out, dropped by the client) drops its
//! connection, which closes it. No task, channel or waker crosses between
//! the request and its connection.
//!
//! Owns the idle lists (newest first out, each connection kept
//! at most two [`TICK`]s), connecting, the `Host` header of a request that has
//! none, and sending again a request found unsent on a kept connection the
//! server had closed. Not the bytes (`h1codec.rs`), the keep-alive race
//! retry, timeouts, health or errors' meaning (`upstream.rs`, `pool.rs`);
//! websocket upgrades and HTTP/2 stay on hyper-util's client.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri, header};
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tower_service::Service;

use super::h1codec::{Decode, Head, Io, SCRATCH_KEPT, Upload, Wire, WireError};
use super::relayed::Relayed;
use super::upstream::{BoxError, UpBody};

/// How long an idle connection is kept (hyper-util's default, which the
/// HTTP/2 and websocket client keeps too).
pub const IDLE_FOR: Duration = Duration::from_secs(60);

/// Opens the byte streams: hyper-util's connectors (plain TCP with the
/// connect timeout and `TCP_NODELAY`; rustls on top for `https://`).
pub trait Connector: Clone + Send + Sync + 'static {
    type Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + Sync + 'static;
    fn connect(&self, uri: Uri) -> impl Future<Output = Result<Self::Io, BoxError>> + Send;
}

impl<S> Connector for S
where
    S: Service<Uri> + Clone + Send + Sync + 'static,
    S::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + Sync + 'static,
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

type Connecting = Pin<Box<dyn Future<Output = Result<Box<dyn Io>, BoxError>> + Send>>;

/// Why an exchange produced no answer.
pub enum Failure {
    /// No connection: refused, unreachable, timed out, TLS handshake.
    Connect(BoxError),
    /// On a connection: closed, reset, a malformed answer, the request
    /// body's own error; with the request, ready to be sent again, if it
    /// has no body.
    Exchange(WireError, Option<Resend>),
}

/// A request without a body, encoded, to be sent again on a new connection
/// ([`Conns::resend`]).
pub struct Resend {
    upload: Upload,
    method: Method,
    relay: bool,
}

/// The kept connections of one upstream, per server.
pub struct Conns {
    connect: Box<dyn Fn(Uri) -> Connecting + Send + Sync>,
    slots: Mutex<Vec<Slot>>,
    /// The expiry task runs (started with the first connection put back).
    reaping: std::sync::atomic::AtomicBool,
    /// The reaper's tick count (one every [`TICK`]): idle
    /// connections are aged in ticks, not read from the clock per request.
    ticks: std::sync::atomic::AtomicU64,
}

/// The HTTP/1.1 connections of an upstream, plain or TLS alike.
pub type H1 = Arc<Conns>;

struct Slot {
    scheme: Scheme,
    authority: Authority,
    /// `Host` for requests that do not carry the client's.
    host: HeaderValue,
    /// Oldest first.
    idle: VecDeque<Idle>,
}

struct Idle {
    wire: Box<Wire>,
    /// The reaper's tick when it was checked in.
    since: u64,
}

/// The reaper's tick: a third of [`IDLE_FOR`], so that two ticks, the
/// most a kept connection lives idle, stay well inside it whatever the
/// timer's lateness.
const TICK: Duration = Duration::from_secs(IDLE_FOR.as_secs() / 3);

/// Whether a connection checked in at tick `since` may still be used at
/// tick `now`: two ticks later it has been idle at least one [`TICK`] and
/// at most two, so it goes (early, never late).
fn fresh_at(since: u64, now: u64) -> bool {
    now.saturating_sub(since) < 2
}

/// A connection lent to one exchange.
struct Held {
    home: Arc<Conns>,
    slot: usize,
    wire: Box<Wire>,
}

impl Conns {
    pub fn new<C: Connector>(connector: C) -> Arc<Self> {
        let connect = move |uri: Uri| -> Connecting {
            let c = connector.clone();
            Box::pin(async move {
                let io = c.connect(uri).await?;
                Ok(Box::new(TokioIo::new(io)) as Box<dyn Io>)
            })
        };
        Arc::new(Conns {
            connect: Box::new(connect),
            slots: Mutex::new(Vec::new()),
            reaping: std::sync::atomic::AtomicBool::new(false),
            ticks: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Sends `req` (origin-form URI) to `scheme://authority`, on a kept
    /// connection unless `fresh`, and waits for the answer's head, writing
    /// the request's body meanwhile. `extra` fields, then `extra` lines
    /// (encoded header lines), are written after the request's own; with
    /// `relay`, the answer's fields come as its bytes (see `relayed.rs`).
    pub async fn exchange(
        self: &Arc<Self>,
        scheme: &Scheme,
        authority: &Authority,
        req: Request<UpBody>,
        extra: (&[(HeaderName, HeaderValue)], &[u8]),
        relay: bool,
        fresh: bool,
    ) -> Result<Response<Box<Answer>>, Failure> {
        let (slot, host, mut kept) = self.checkout(scheme, authority, fresh);
        let (mut parts, body) = req.into_parts();
        let host = (!parts.headers.contains_key(header::HOST)).then_some((header::HOST, host));
        // A kept connection's own head buffer, else a new one.
        let mut scratch = match &mut kept {
            Some(h) => std::mem::take(&mut h.wire.scratch),
            None => BytesMut::with_capacity(1024),
        };
        let upload = Upload::new(&mut parts, host.as_slice(), extra, body, &mut scratch)
            .map_err(|e| Failure::Exchange(e, None))?;
        // The buffer's size from the head on: what is left of it is its
        // capacity now, the head took the rest. (A head that fit where an
        // earlier one ended leaves the size as it was, checked then.)
        let keep_scratch = upload.head_len() + scratch.capacity() <= SCRATCH_KEPT;
        let method = parts.method;
        let reused = kept.is_some();
        let mut held = match kept {
            Some(h) => h,
            None => self.connect(slot, scheme, authority).await?,
        };
        if keep_scratch {
            held.wire.scratch = scratch;
        }
        let (e, upload) = match send_on(held, upload, &method, relay).await {
            Ok(r) => return Ok(r),
            // A kept connection found closed or broken before a byte of the
            // request went out: sent once more on a new connection,
            // whatever its method (what the body gave is still queued).
            // Nothing of it reached the server.
            Err((WireError::Io(_) | WireError::Closed { .. }, upload))
                if reused && upload.untouched() =>
            {
                let held = self.connect(slot, scheme, authority).await?;
                match send_on(held, upload, &method, relay).await {
                    Ok(r) => return Ok(r),
                    Err(failed) => failed,
                }
            }
            Err(failed) => failed,
        };
        let again = upload.again().map(|upload| Resend {
            upload,
            method,
            relay,
        });
        Err(Failure::Exchange(e, again))
    }

    /// Sends a request again on a new connection (the keep-alive race
    /// retry of `upstream.rs`, which decides when).
    pub async fn resend(
        self: &Arc<Self>,
        scheme: &Scheme,
        authority: &Authority,
        again: Resend,
    ) -> Result<Response<Box<Answer>>, Failure> {
        let (slot, _, _) = self.checkout(scheme, authority, true);
        let held = self.connect(slot, scheme, authority).await?;
        send_on(held, again.upload, &again.method, again.relay)
            .await
            .map_err(|(e, _)| Failure::Exchange(e, None))
    }

    /// The server's slot, its `Host`, and its newest idle connection that
    /// is still open (unless `fresh`).
    fn checkout(
        self: &Arc<Self>,
        scheme: &Scheme,
        authority: &Authority,
        fresh: bool,
    ) -> (usize, HeaderValue, Option<Held>) {
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
            // Probed outside the lock: a connection the server closed (or
            // sent stray bytes on) while it sat idle ends here and the next
            // one is tried.
            let now = self.ticks.load(std::sync::atomic::Ordering::Relaxed);
            if fresh_at(idle.since, now) && idle.wire.idle_and_open() {
                let held = Held {
                    home: self.clone(),
                    slot,
                    wire: idle.wire,
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
    ) -> Result<Held, Failure> {
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| Failure::Connect(e.into()))?;
        let io = (self.connect)(uri).await.map_err(Failure::Connect)?;
        Ok(Held {
            home: self.clone(),
            slot,
            wire: Box::new(Wire::new(io)),
        })
    }

    fn checkin(self: &Arc<Self>, slot: usize, mut wire: Box<Wire>) {
        wire.shrink();
        let idle = Idle {
            wire,
            since: self.ticks.load(std::sync::atomic::Ordering::Relaxed),
        };
        {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots[slot].idle.push_back(idle);
        }
        self.start_reaping();
    }

    /// Closes connections idle for two [`TICK`]s, every tick, for as
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
                tokio::time::sleep(TICK).await;
                let Some(conns) = weak.upgrade() else { return };
                conns.ticks.fetch_add(1, Relaxed);
                let expired = conns.expired();
                drop(conns);
                drop(expired);
            }
        });
    }

    /// Takes the expired connections out (they close when dropped, after
    /// the lock is released).
    fn expired(&self) -> Vec<Idle> {
        let now = self.ticks.load(std::sync::atomic::Ordering::Relaxed);
        let mut out = Vec::new();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for s in slots.iter_mut() {
            while s.idle.front().is_some_and(|i| !fresh_at(i.since, now)) {
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

/// Writes the request and reads its answer's head on `held`. On failure
/// the upload comes back, to be sent again if it is still untouched.
async fn send_on(
    mut held: Held,
    mut upload: Upload,
    method: &Method,
    relay: bool,
) -> Result<Response<Box<Answer>>, (WireError, Upload)> {
    let mut sending = true;
    let head = poll_fn(|cx| {
        if sending {
            match held.wire.poll_upload(&mut upload, cx) {
                Poll::Ready(Ok(())) => sending = false,
                // A server that answers and closes before it has the whole
                // request: its answer, if it is there, is the outcome (an
                // answer read before any byte went out is not this
                // request's: the retry above takes over).
                Poll::Ready(Err(e @ WireError::Io(_))) if !upload.untouched() => {
                    return match held.wire.poll_head(method, relay, cx) {
                        Poll::Ready(Ok(head)) => {
                            sending = false;
                            Poll::Ready(Ok((head, false)))
                        }
                        _ => Poll::Ready(Err(e)),
                    };
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        // An answer that comes before the whole request went out leaves
        // the rest of it on the connection, where a server that skipped it
        // could read it as a request of its own: the connection is not
        // used again.
        let whole = !sending;
        held.wire
            .poll_head(method, relay, cx)
            .map_ok(|h| (h, whole))
    })
    .await;
    match head {
        Ok((
            Head {
                response,
                relayed,
                decode,
                reusable,
            },
            upload_ok,
        )) => {
            // Boxed: the answer goes up through several futures to the
            // writer, moved at each step (a pointer, not its 160 bytes).
            let answer = Box::new(Answer {
                relayed,
                held: Some(held),
                upload: sending.then_some(upload),
                decode,
                reusable: reusable && upload_ok,
            });
            Ok(response.map(|()| answer))
        }
        Err(e) => Err((e, upload)),
    }
}

/// An answer's body, read from its connection, which it keeps writing the
/// rest of the request to (if the server answered before it had all of
/// it) and puts back once the body has ended, if it can carry another
/// request; otherwise the connection closes when the body is dropped.
pub struct Answer {
    /// The head's fields as its bytes, when asked for (`relayed.rs`).
    relayed: Option<Box<Relayed>>,
    held: Option<Held>,
    upload: Option<Upload>,
    decode: Decode,
    reusable: bool,
}

impl Answer {
    /// The head's relayed fields (once).
    pub fn take_relayed(&mut self) -> Option<Box<Relayed>> {
        self.relayed.take()
    }

    /// Back to the idle list if whole and reusable, else closed.
    fn release(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        // Not probed here: the next checkout probes it (and a server that
        // closed meanwhile is found there, or by the reaper).
        if self.reusable
            && self.upload.is_none()
            && self.decode.is_done()
            && held.wire.nothing_unread()
        {
            let home = held.home.clone();
            home.checkin(held.slot, held.wire);
        }
    }
}

impl Drop for Answer {
    /// A body nobody read to its end is still whole when it had nothing
    /// left (a `HEAD`'s, a `204`'s, or one whose last frame was read).
    fn drop(&mut self) {
        if self.decode.is_done() {
            self.release();
        }
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(held) = this.held.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(up) = this.upload.as_mut() {
            match held.wire.poll_upload(up, cx) {
                Poll::Ready(Ok(())) => this.upload = None,
                // The answer stands; the connection, with half a request
                // on it, is not used again.
                Poll::Ready(Err(_)) => {
                    this.upload = None;
                    this.reusable = false;
                }
                Poll::Pending => {}
            }
        }
        match held.wire.poll_body(&mut this.decode, cx) {
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.held = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decode.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode.exact_len() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn an_idle_connection_is_used_for_less_than_two_ticks() {
        assert!(fresh_at(5, 5));
        assert!(fresh_at(5, 6));
        assert!(!fresh_at(5, 7));
        assert!(!fresh_at(5, 100));
        // A tick read before the check-in's (a race of two threads) is fresh.
        assert!(fresh_at(6, 5));
    }

    use super::*;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::body::Incoming;
    use hyper_util::client::legacy::connect::HttpConnector;
    use std::pin::pin;
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
        serve(move |req| {
            let host = req.headers().get(header::HOST).cloned();
            let mut resp = Response::new(Full::new(Bytes::from(vec![b'x'; 4096])));
            if let Some(h) = host {
                resp.headers_mut().insert("x-host", h);
            }
            if close {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        })
        .await
    }

    /// A hyper HTTP/1.1 server on loopback answering each request with
    /// `answer`, counting the connections it accepted.
    async fn serve<F>(answer: F) -> (Authority, Arc<AtomicUsize>)
    where
        F: Fn(Request<Incoming>) -> Response<Full<Bytes>> + Copy + Send + Sync + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(answer(req))
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

    /// The answer's body read to its end.
    async fn read_to_end(resp: Response<Box<Answer>>) -> Vec<u8> {
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    /// One exchange, its body read to the end (which puts its connection
    /// back); the body and the `x-host` answered (the `Host` seen).
    async fn fetch(conns: &Arc<Conns>, at: &Authority) -> (Vec<u8>, String) {
        let resp = match conns
            .exchange(&Scheme::HTTP, at, get(), (&[], &[]), false, false)
            .await
        {
            Ok(r) => r,
            Err(Failure::Exchange(e, _)) => panic!("exchange failed: {e}"),
            Err(Failure::Connect(e)) => panic!("connect failed: {e}"),
        };
        let host = resp
            .headers()
            .get("x-host")
            .map(|h| h.to_str().unwrap().to_string())
            .unwrap_or_default();
        (read_to_end(resp).await, host)
    }

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
        let resp = conns
            .exchange(&Scheme::HTTP, &at, get(), (&[], &[]), false, true)
            .await
            .ok()
            .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(conns.idle_count(), 1);
        drop(resp);
    }

    /// Heads encoded one after another in a connection's kept buffer
    /// reach the server whole and in order, whatever their sizes (one over
    /// the kept size lets the buffer go, the next starts a new one).
    #[tokio::test]
    async fn heads_encoded_in_a_kept_buffer_arrive_as_written() {
        let (at, accepted) = serve(|req| {
            // The pad's length, its first byte, and whether every byte is it.
            let pad = req
                .headers()
                .get("x-pad")
                .map_or(&b""[..], |v| v.as_bytes());
            let first = pad.first().copied().unwrap_or(b'-');
            let same = pad.iter().all(|&b| b == first);
            let seen = format!("{} {} {}{same}", req.uri(), pad.len(), char::from(first));
            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
            resp.headers_mut()
                .insert("x-seen", HeaderValue::from_str(&seen).unwrap());
            resp
        })
        .await;
        let conns = Conns::new(HttpConnector::new());
        for (i, pad) in [10usize, 3000, 5, 9000, 700, 1, 20_000, 2, 800, 800, 800]
            .into_iter()
            .enumerate()
        {
            let target = format!("/r/{i}/{}", "p".repeat(i * 37));
            // A letter of its own for each request's pad.
            let letter = char::from(b'a' + i as u8);
            let mut req = get();
            *req.uri_mut() = target.parse().unwrap();
            req.headers_mut().insert(
                "x-pad",
                HeaderValue::from_str(&letter.to_string().repeat(pad)).unwrap(),
            );
            let resp = match conns
                .exchange(&Scheme::HTTP, &at, req, (&[], &[]), false, false)
                .await
            {
                Ok(r) => r,
                Err(_) => panic!("request {i} failed"),
            };
            let seen = resp.headers()["x-seen"].to_str().unwrap().to_string();
            assert_eq!(seen, format!("{target} {pad} {letter}true"), "request {i}");
            assert_eq!(read_to_end(resp).await, b"ok");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection throughout"
        );
    }

    #[tokio::test]
    async fn a_connection_whose_body_was_not_read_to_its_end_is_closed() {
        let (at, accepted) = upstream(false).await;
        let conns = Conns::new(HttpConnector::new());
        let resp = conns
            .exchange(&Scheme::HTTP, &at, get(), (&[], &[]), false, false)
            .await
            .ok()
            .unwrap();
        drop(resp);
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
        // handed out as this request's answer (the checkout's probe of a
        // kept connection is outside the budget).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..1000 {
            tx.send(i).unwrap();
        }
        let mut exchange =
            pin!(conns.exchange(&Scheme::HTTP, &at, get(), (&[], &[]), false, false));
        let first = poll_fn(|cx| {
            for _ in 0..1000 {
                let _ = rx.poll_recv(cx);
            }
            std::task::Poll::Ready(exchange.as_mut().poll(cx).is_ready())
        })
        .await;
        assert!(!first, "the exchange cannot be over in its first poll");
        let Ok(resp) = exchange.await else {
            panic!("exchange failed");
        };
        assert_eq!(read_to_end(resp).await, b"good");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A raw server: its first connection answers `ok`, then 50 ms later
    /// sends a second, unasked-for answer (`EVIL`) on it; every later
    /// connection answers `good`.
    async fn stray_bytes_server() -> (Authority, Arc<AtomicUsize>) {
        stray_after("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await
    }

    /// As [`stray_bytes_server`], the first connection answering `first`.
    async fn stray_after(first: &'static str) -> (Authority, Arc<AtomicUsize>) {
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
                        let answer: &[u8] = if n == 0 {
                            first.as_bytes()
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ngood"
                        };
                        let _ = s.write_all(answer).await;
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

    /// A server that sends a body after its answer to `HEAD` (or after a
    /// 304), and late: the connection is not taken for the next request
    /// however soon it comes, so the late bytes are never its answer.
    #[tokio::test]
    async fn a_bodyless_answer_announcing_a_body_ends_its_connection() {
        for first in [
            "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 4\r\n\r\n",
        ] {
            let (at, accepted) = stray_after(first).await;
            let conns = Conns::new(HttpConnector::new());
            let mut req = get();
            if first.contains("200") {
                *req.method_mut() = Method::HEAD;
            }
            let Ok(resp) = conns
                .exchange(&Scheme::HTTP, &at, req, (&[], &[]), false, false)
                .await
            else {
                panic!("exchange failed");
            };
            assert_eq!(read_to_end(resp).await, b"", "{first:?}");
            assert_eq!(conns.idle_count(), 0, "{first:?}");
            assert_eq!(fetch(&conns, &at).await.0, b"good", "{first:?}");
            assert_eq!(accepted.load(Ordering::SeqCst), 2, "{first:?}");
        }
    }

    /// A request body sent as the test says, one chunk per message.
    struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for ChanBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn an_answer_before_the_whole_request_went_out_closes_its_connection() {
        // A raw server that answers as soon as it has the head, then reads
        // (and skips) whatever follows, keeping the connection open.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let conns = Conns::new(HttpConnector::new());
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut req = Request::new(ChanBody(rx).boxed());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = Uri::from_static("/x");
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
        let Ok(resp) = conns
            .exchange(&Scheme::HTTP, &at, req, (&[], &[]), false, false)
            .await
        else {
            panic!("exchange failed");
        };
        // The answer came first; the body goes out after it.
        tx.send(Bytes::from_static(b"body")).await.unwrap();
        drop(tx);
        assert_eq!(read_to_end(resp).await, b"ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            conns.idle_count(),
            0,
            "a connection answered early was kept"
        );
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
