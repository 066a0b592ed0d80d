//! Limits that outlive a request: open connections (in total and per
//! client address) and each address's HTTP/2 streams in flight, the
//! per-connection activity that closes idle connections, the send timeout
//! that closes connections whose client stopped reading, the
//! `listen.rate_limit` token buckets, and the bytes of masked answers held
//! whole (`masking.max_held_bytes`).
//!
//! Owns counters and buckets only; the listener asks at accept (connection
//! limits, [`Activity`]) and per HTTP/2 request (stream count), the
//! pipeline asks per request (phase 0 per-IP bucket and stream marker,
//! phase 3c per-principal bucket, phase 7 held bytes). The numbers themselves come
//! from the runtime each time, so a reload applies at the next accept or
//! request; the state lives in the `Gateway`, so a reload keeps every
//! count. A reload that changes a bucket's rate starts that bucket afresh
//! (every client gets a full bucket); one that does not keeps it.
//!
//! Client addresses are keyed by IPv4 address or IPv6 /64 prefix: one
//! IPv6 host usually holds a whole /64, so a per-address key would give it
//! 2^64 connection slots and buckets.

use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use dashmap::DashMap;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::config::Rate;
use crate::session::now_ms;

/// The key a client address is counted and limited under: the IPv4
/// address (an IPv4-mapped IPv6 address counts as IPv4), or the IPv6 /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Open client connections, in total and per client key.
#[derive(Default)]
pub struct ConnCounts {
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, PerIp>,
    /// Connections refused since the last warning (rate-limited log).
    refused: AtomicU64,
    last_warn_ms: AtomicU64,
}

/// One client key's open connections, and its HTTP/2 streams in flight
/// (shared with each of its connections' slots, so counting a stream
/// takes no lookup).
#[derive(Default)]
struct PerIp {
    connections: usize,
    streams: Arc<AtomicUsize>,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefused {
    /// `listen.max_connections` are open.
    Total,
    /// `listen.max_connections_per_ip` are open from this client.
    PerIp,
}

impl ConnRefused {
    pub fn code(&self) -> &'static str {
        match self {
            ConnRefused::Total => "max_connections",
            ConnRefused::PerIp => "max_connections_per_ip",
        }
    }
}

/// How often a refused connection may log a warning.
const WARN_EVERY_MS: u64 = 10_000;

impl ConnCounts {
    /// Counts a new connection from `ip`, or refuses it when a limit is
    /// reached. The slot is given back when the returned guard drops.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<ConnSlot, ConnRefused> {
        let key = client_key(ip);
        if self.total.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(ConnRefused::Total);
        }
        // The shard guard ends with this block (before any other access).
        let admitted = {
            let mut n = self.per_ip.entry(key).or_default();
            if n.connections >= max_per_ip {
                None
            } else {
                n.connections += 1;
                Some(n.streams.clone())
            }
        };
        let Some(streams) = admitted else {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(ConnRefused::PerIp);
        };
        Ok(ConnSlot {
            counts: self.clone(),
            key,
            streams,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Client keys with an open connection (bounded by `open`).
    pub fn clients(&self) -> usize {
        self.per_ip.len()
    }

    /// Logs a refused connection at warn, at most once per 10 s, with the
    /// number refused since the last line.
    pub fn warn_refused(&self, peer: std::net::SocketAddr, why: ConnRefused) {
        let refused = self.refused.fetch_add(1, Ordering::AcqRel) + 1;
        let now = now_ms();
        let last = self.last_warn_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) < WARN_EVERY_MS
            || self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            tracing::debug!(peer = %peer, limit = why.code(), "connection refused");
            return;
        }
        self.refused.fetch_sub(refused, Ordering::AcqRel);
        tracing::warn!(
            peer = %peer,
            limit = why.code(),
            refused,
            open = self.open(),
            "connection limit reached: connections closed at accept"
        );
    }
}

/// One admitted connection's place in [`ConnCounts`]; held by the
/// connection task (and a websocket relay it hands over to) and given back
/// on drop, whatever way the connection ends.
pub struct ConnSlot {
    counts: Arc<ConnCounts>,
    key: IpAddr,
    /// The client key's HTTP/2 streams in flight, over all its connections.
    streams: Arc<AtomicUsize>,
}

impl ConnSlot {
    /// An HTTP/2 request of this connection starts: counted against its
    /// client key until the guard drops. The count includes it.
    pub fn stream(&self) -> (StreamSlot, usize) {
        let n = self.streams.fetch_add(1, Ordering::AcqRel) + 1;
        (StreamSlot(self.streams.clone()), n)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut e) = self.counts.per_ip.entry(self.key) {
            if e.get().connections <= 1 {
                e.remove();
            } else {
                e.get_mut().connections -= 1;
            }
        }
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Put in an HTTP/2 request's extensions by the listener when its client
/// key had more than `listen.max_streams_per_ip` streams in flight with
/// it: the pipeline refuses it (429) before anything else.
#[derive(Debug, Clone, Copy)]
pub struct OverStreamLimit;

/// One HTTP/2 request in flight under its client key's
/// `listen.max_streams_per_ip` (see [`ConnSlot::stream`]). A stream that
/// outlives its connection's slot keeps counting on the count it started
/// on; a new connection of that client after all others closed starts a
/// fresh one.
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for ConnSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnSlot").field("key", &self.key).finish()
    }
}

// ------------------------------------------------------- held answers

/// Bytes of masked answers held whole in memory, all requests together,
/// against `masking.max_held_bytes`: each answer masked whole takes its
/// share as its buffer grows and gives it back when its body is dropped
/// (sent, or the client gone).
#[derive(Default)]
pub struct HeldBytes(AtomicU64);

impl HeldBytes {
    /// An empty share for one answer.
    pub fn share(self: &Arc<Self>) -> HeldShare {
        HeldShare {
            all: self.clone(),
            n: 0,
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// One answer's share of [`HeldBytes`]; given back on drop.
pub struct HeldShare {
    all: Arc<HeldBytes>,
    n: u64,
}

impl HeldShare {
    /// Grows the share to `n` bytes if all answers together stay within
    /// `max`; false (and unchanged) otherwise.
    pub fn grow_to(&mut self, n: u64, max: u64) -> bool {
        let Some(more) = n.checked_sub(self.n).filter(|m| *m > 0) else {
            return true;
        };
        let grown = self
            .all
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(more).filter(|total| *total <= max)
            });
        if grown.is_ok() {
            self.n = n;
        }
        grown.is_ok()
    }
}

impl Drop for HeldShare {
    fn drop(&mut self) {
        self.all.0.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// A response body that keeps its [`HeldShare`] until it is dropped (its
/// bytes may sit in the connection's buffers until then: an HTTP/2 answer
/// is handed over in pieces as the client's window opens).
pub struct Holding<B> {
    inner: B,
    _share: HeldShare,
}

impl<B> Holding<B> {
    pub fn new(inner: B, share: HeldShare) -> Self {
        Holding {
            inner,
            _share: share,
        }
    }
}

impl<B: Body + Unpin> Body for Holding<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ------------------------------------------------------------- idleness

/// Whether a connection has a request in flight, and since when it has
/// had none: the listener closes it (gracefully) once it has been idle
/// too long. A request is in flight from the moment hyper hands it to the
/// service until its response body is done (or dropped).
pub struct Activity {
    inflight: AtomicUsize,
    /// Milliseconds after `base` the last request ended (0: none yet).
    idle_since_ms: AtomicU64,
    /// A request has been seen on this connection.
    served: AtomicBool,
    base: tokio::time::Instant,
    ended: Notify,
    /// The wait clocks of this connection's HTTP/2 response bodies (see
    /// [`Activity::send_stalled`]); dead ones are dropped as it goes.
    clocks: std::sync::Mutex<Vec<Weak<WaitClock>>>,
}

/// Since when a response body has been waiting for the client to take the
/// frame it last handed over (milliseconds after its [`Activity`]'s base,
/// plus one; 0: not waiting on the client).
pub struct WaitClock(AtomicU64);

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            inflight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            base: tokio::time::Instant::now(),
            ended: Notify::new(),
            clocks: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// A request starts; it ends when the guard drops.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.served.store(true, Ordering::Release);
        self.inflight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Resolves once the connection has had no request in flight for
    /// `first` (before its first request) or `keepalive` (after one).
    ///
    /// One timer for the connection's life, set to the earliest moment it
    /// could be idle long enough and moved on when it fires early: a
    /// request ending wakes nobody (at most it leaves `ended` a permit).
    pub async fn idle(&self, first: Duration, keepalive: Duration) {
        let sleep = tokio::time::sleep_until(self.idle_deadline(first, keepalive));
        tokio::pin!(sleep);
        loop {
            (&mut sleep).await;
            if self.inflight.load(Ordering::Acquire) > 0 {
                self.ended.notified().await;
                continue;
            }
            let deadline = self.idle_deadline(first, keepalive);
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            sleep.as_mut().reset(deadline);
        }
    }

    /// When the connection will have been idle long enough if no request
    /// starts before then.
    fn idle_deadline(&self, first: Duration, keepalive: Duration) -> tokio::time::Instant {
        let limit = if self.served.load(Ordering::Acquire) {
            keepalive
        } else {
            first
        };
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        self.base + since + limit
    }
}

impl Activity {
    /// A wait clock for one HTTP/2 response body, watched by
    /// [`Activity::send_stalled`].
    pub fn clock(&self) -> Arc<WaitClock> {
        let clock = Arc::new(WaitClock(AtomicU64::new(0)));
        let mut clocks = self.clocks.lock().unwrap_or_else(|p| p.into_inner());
        // Live clocks are at most the connection's streams in flight.
        if clocks.len() >= 64 {
            clocks.retain(|c| c.strong_count() > 0);
        }
        clocks.push(Arc::downgrade(&clock));
        clock
    }

    /// Resolves once one of this connection's HTTP/2 response bodies has
    /// waited `limit` for the client to take a frame it handed over
    /// (`listen.send_timeout` for a stream whose flow-control window the
    /// client keeps shut: no write to the socket blocks, so
    /// [`SendTimeout`] never sees it). Checked every quarter of `limit`.
    pub async fn send_stalled(&self, limit: Duration) {
        let every = (limit / 4).max(Duration::from_millis(10));
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::time::sleep(every).await;
            let now = self.clock_ms();
            let mut clocks = self.clocks.lock().unwrap_or_else(|p| p.into_inner());
            clocks.retain(|c| c.strong_count() > 0);
            let stalled = clocks.iter().filter_map(Weak::upgrade).any(|c| {
                let since = c.0.load(Ordering::Acquire);
                since != 0 && now.saturating_sub(since) >= limit_ms
            });
            if stalled {
                return;
            }
        }
    }

    /// Milliseconds since `base`, plus one (never 0).
    fn clock_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Resolves once a request has started on this connection (at once if
    /// one has), or after `limit`.
    pub async fn first_request(&self, limit: Duration) {
        let wait = async {
            while !self.served.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    /// After an idle connection was asked to shut down: resolves once
    /// `grace` has passed and no request is in flight (one that raced the
    /// shutdown finishes first); at once if it never had a request (there
    /// is nothing to finish, and an HTTP/2 client still inside its preface
    /// cannot be sent a GOAWAY).
    pub async fn settled(&self, grace: Duration) {
        if !self.served.load(Ordering::Acquire) {
            return;
        }
        tokio::time::sleep(grace).await;
        while self.inflight.load(Ordering::Acquire) > 0 {
            self.ended.notified().await;
        }
    }
}

/// A request in flight on its connection (see [`Activity`]).
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        let now = a.base.elapsed().as_millis() as u64;
        a.idle_since_ms.fetch_max(now, Ordering::AcqRel);
        if a.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.ended.notify_one();
        }
    }
}

/// A response body that keeps its request in flight until it is done;
/// on HTTP/2, it also tells its wait clock whether it is waiting on the
/// client (it handed over a frame and has not been asked for the next),
/// and hands data over in pieces of at most [`H2_PIECE`]: h2 takes a whole
/// frame once the stream has any window, so a large last frame would be
/// buffered whole, the body done, and no clock left to see the client
/// never open its window.
pub struct Tracked<B> {
    inner: B,
    busy: Busy,
    /// HTTP/2: the request's place under `max_streams_per_ip`.
    _stream: Option<StreamSlot>,
    waiting: Option<Arc<WaitClock>>,
    /// What is left of a data frame cut into pieces (HTTP/2).
    rest: Bytes,
}

/// The largest piece of data an HTTP/2 answer hands over at once (the
/// protocol's default frame size).
const H2_PIECE: usize = 16 * 1024;

impl<B> Tracked<B> {
    pub fn new(
        inner: B,
        busy: Busy,
        waiting: Option<Arc<WaitClock>>,
        stream: Option<StreamSlot>,
    ) -> Self {
        Tracked {
            inner,
            busy,
            _stream: stream,
            waiting,
            rest: Bytes::new(),
        }
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if this.waiting.is_none() {
            return Pin::new(&mut this.inner).poll_frame(cx);
        }
        let r = if this.rest.is_empty() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) if data.len() > H2_PIECE => {
                        this.rest = data.split_off(H2_PIECE);
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                other => other,
            }
        } else {
            let n = this.rest.len().min(H2_PIECE);
            Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(n)))))
        };
        let since = match &r {
            Poll::Ready(Some(Ok(_))) => this.busy.0.clock_ms(),
            _ => 0,
        };
        if let Some(w) = &this.waiting {
            w.0.store(since, Ordering::Release);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        // The upper bound first: a lower bound above it panics.
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint.set_lower(hint.lower().saturating_add(rest));
        hint
    }
}

// ------------------------------------------------------- send timeout

/// A client connection's writes, cut when the client accepts nothing for
/// `limit` (`listen.send_timeout`, nginx's `send_timeout`): a write that
/// stays blocked that long fails with `TimedOut`, which ends the
/// connection (and the upstream exchange feeding it). Any progress starts
/// the clock again, so a slow reader is served; only a stalled one is cut.
/// The timer exists only while a write is blocked: a client that keeps up
/// costs nothing.
///
/// Reads pass through untouched.
pub struct SendTimeout<IO> {
    io: IO,
    limit: Duration,
    /// Armed while a write is blocked; made on the first stall.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl<IO> SendTimeout<IO> {
    pub fn new(io: IO, limit: Duration) -> Self {
        SendTimeout {
            io,
            limit,
            stall: None,
            armed: false,
        }
    }

    /// The inner connection (for socket options and peeking).
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// `r`, the outcome of a write (`write`) or of a flush or shutdown: a
    /// write that completes disarms the timer (a flush says nothing of
    /// the client); a block arms it (once per stall) and fails once it has
    /// run out.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
        write: bool,
    ) -> Poll<std::io::Result<T>> {
        if r.is_ready() {
            if write {
                self.armed = false;
            }
            return r;
        }
        let limit = self.limit;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if !self.armed {
            stall.as_mut().reset(tokio::time::Instant::now() + limit);
            self.armed = true;
        }
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.armed = false;
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    SendTimedOut(self.limit),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The error a stalled write fails with (found in hyper's error chain by
/// the listener, to log it as a send timeout).
#[derive(Debug)]
pub struct SendTimedOut(pub Duration);

impl std::fmt::Display for SendTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the client accepted no data for {:?} (listen.send_timeout)",
            self.0
        )
    }
}

impl std::error::Error for SendTimedOut {}

impl<IO: AsyncRead + Unpin> AsyncRead for SendTimeout<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SendTimeout<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.guard(cx, r, true)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.guard(cx, r, true)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.guard(cx, r, false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.guard(cx, r, false)
    }
}

// ---------------------------------------------------------- rate limits

/// The `listen.rate_limit` buckets: per client key and per principal.
#[derive(Default)]
pub struct RateLimiters {
    ip: Keyed<IpAddr>,
    principal: Keyed<(String, String)>,
}

impl RateLimiters {
    /// Takes a token from `ip`'s bucket; `Err(seconds)` to wait when empty.
    /// `None` (no `per_ip` configured) drops any old buckets.
    pub fn check_ip(&self, rate: Option<&Rate>, ip: IpAddr) -> Result<(), u64> {
        self.ip.check(rate, || client_key(ip))
    }

    /// Takes a token from the principal's bucket (issuer + subject).
    pub fn check_principal(
        &self,
        rate: Option<&Rate>,
        issuer: &str,
        subject: &str,
    ) -> Result<(), u64> {
        // The key is only built when a limit is configured.
        self.principal
            .check(rate, || (issuer.to_string(), subject.to_string()))
    }
}

/// One keyed limiter, rebuilt when its configured rate changes.
struct Keyed<K: Hash + Eq + Clone> {
    current: ArcSwapOption<Bucket<K>>,
    last_sweep_ms: AtomicU64,
}

impl<K: Hash + Eq + Clone> Default for Keyed<K> {
    fn default() -> Self {
        Keyed {
            current: ArcSwapOption::empty(),
            last_sweep_ms: AtomicU64::new(0),
        }
    }
}

struct Bucket<K: Hash + Eq + Clone> {
    rate: Rate,
    limiter: DefaultKeyedRateLimiter<K>,
}

/// How often idle keys are dropped (`retain_recent`): a key is idle once
/// its bucket has refilled, so memory follows the clients active within
/// one refill time.
const SWEEP_EVERY_MS: u64 = 1_000;

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn check(&self, rate: Option<&Rate>, key: impl FnOnce() -> K) -> Result<(), u64> {
        let Some(rate) = rate else {
            if self.current.load().is_some() {
                self.current.store(None);
            }
            return Ok(());
        };
        let bucket = match self.current.load_full() {
            Some(b) if b.rate == *rate => b,
            _ => {
                let Some(quota) = quota(rate) else {
                    return Ok(());
                };
                let b = Arc::new(Bucket {
                    rate: *rate,
                    limiter: DefaultKeyedRateLimiter::dashmap(quota),
                });
                self.current.store(Some(b.clone()));
                b
            }
        };
        let now = now_ms();
        let last = self.last_sweep_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) >= SWEEP_EVERY_MS
            && self
                .last_sweep_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.limiter.retain_recent();
        }
        bucket.limiter.check_key(&key()).map_err(|not_until| {
            retry_after_secs(not_until.wait_time_from(bucket.limiter.clock().now()))
        })
    }
}

/// `count` per `period`, `burst` at once; `None` if it cannot be one
/// (`check` refuses such rates).
fn quota(rate: &Rate) -> Option<Quota> {
    let per_token = rate.period.checked_div(rate.count)?;
    Some(Quota::with_period(per_token)?.allow_burst(NonZeroU32::new(rate.burst)?))
}

/// Whole seconds, rounded up, at least 1 (`Retry-After`).
fn retry_after_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_shares_stay_within_the_budget_and_come_back_on_drop() {
        let all = Arc::new(HeldBytes::default());
        let mut a = all.share();
        let mut b = all.share();
        assert!(a.grow_to(600, 1000));
        assert!(a.grow_to(500, 1000), "shrinking is a no-op");
        assert!(!b.grow_to(500, 1000), "600 + 500 is over 1000");
        assert_eq!(all.held(), 600, "a refused growth takes nothing");
        assert!(b.grow_to(400, 1000));
        assert_eq!(all.held(), 1000);
        drop(a);
        assert_eq!(all.held(), 400);
        assert!(b.grow_to(1000, 1000));
        drop(b);
        assert_eq!(all.held(), 0);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_prefix_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    /// Virtual time (paused clock): the sleeps below take no real time.
    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_never_accepts_fails_after_send_timeout() {
        use tokio::io::AsyncWriteExt;
        let (a, _reader_never_reads) = tokio::io::duplex(64);
        let mut w = SendTimeout::new(a, Duration::from_secs(60));
        let started = tokio::time::Instant::now();
        let err = w.write_all(&[7u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(err.get_ref().is_some_and(|e| e.is::<SendTimedOut>()));
        assert!(started.elapsed() >= Duration::from_secs(60));
    }

    /// An HTTP/2 body's wait clock: waiting on the client for the limit
    /// trips the watchdog; a body that is asked for more, or is gone, does
    /// not (virtual time).
    #[tokio::test(start_paused = true)]
    async fn the_stream_watchdog_trips_only_on_a_body_left_waiting_on_the_client() {
        let a = Activity::new();
        let limit = Duration::from_secs(60);
        let handed = |c: &WaitClock| c.0.store(a.clock_ms(), Ordering::Release);
        // Waits on the upstream, then a body that keeps being asked for
        // more (every 30 s), then one that is dropped while waiting: no
        // stall in ten minutes.
        let busy = a.clock();
        let gone = a.clock();
        handed(&gone);
        drop(gone);
        let quiet = async {
            for _ in 0..20 {
                handed(&busy);
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        };
        tokio::select! {
            _ = a.send_stalled(limit) => panic!("a body that was read tripped the watchdog"),
            _ = quiet => {}
        }
        // Left waiting: tripped within a quarter of the limit after it.
        handed(&busy);
        let started = tokio::time::Instant::now();
        a.send_stalled(limit).await;
        let took = started.elapsed();
        assert!(took >= limit && took <= limit + limit / 4, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_never_cut() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = SendTimeout::new(a, Duration::from_secs(60));
        // 64 bytes every 45 s: every stall shorter than the limit, the
        // whole write (16 stalls, 12 minutes) far longer.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                tokio::time::sleep(Duration::from_secs(45)).await;
                match b.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let started = tokio::time::Instant::now();
        w.write_all(&[7u8; 1024]).await.unwrap();
        assert!(started.elapsed() > Duration::from_secs(60));
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap(), vec![7u8; 1024]);
    }

    #[test]
    fn connection_slots_are_counted_per_client_and_given_back_on_drop() {
        let c = Arc::new(ConnCounts::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let a = c.admit(ip, 3, 2).unwrap();
        let b = c.admit(ip, 3, 2).unwrap();
        assert_eq!(c.admit(ip, 3, 2).unwrap_err(), ConnRefused::PerIp);
        let d = c.admit(other, 3, 2).unwrap();
        assert_eq!(c.admit(other, 3, 2).unwrap_err(), ConnRefused::Total);
        assert_eq!((c.open(), c.clients()), (3, 2));
        drop((a, b, d));
        assert_eq!((c.open(), c.clients()), (0, 0));
        let _again = c.admit(ip, 3, 2).unwrap();
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
    }

    #[test]
    fn a_bucket_refuses_after_its_burst_and_is_rebuilt_when_the_rate_changes() {
        let l = RateLimiters::default();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let slow = Rate {
            count: 1,
            period: Duration::from_secs(60),
            burst: 2,
        };
        assert!(l.check_ip(Some(&slow), ip).is_ok());
        assert!(l.check_ip(Some(&slow), ip).is_ok());
        let wait = l.check_ip(Some(&slow), ip).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        // Another client has its own bucket.
        assert!(
            l.check_ip(Some(&slow), "192.0.2.10".parse().unwrap())
                .is_ok()
        );
        // A new rate: a fresh bucket.
        let other = Rate { burst: 3, ..slow };
        assert!(l.check_ip(Some(&other), ip).is_ok());
        // No limit configured: everything passes.
        for _ in 0..10 {
            assert!(l.check_ip(None, ip).is_ok());
        }
        assert!(l.check_principal(Some(&slow), "iss", "sub").is_ok());
        assert!(l.check_principal(Some(&slow), "iss", "sub").is_ok());
        assert!(l.check_principal(Some(&slow), "iss", "sub").is_err());
        assert!(l.check_principal(Some(&slow), "iss", "other").is_ok());
    }
}
