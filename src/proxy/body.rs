//! Body adapters: the request-body size limit and receive timeouts, the
//! masked response body and the session-bound response body.
//!
//! Bodies are streamed, never buffered: the limit counts bytes as they pass
//! and fails the stream once `listen.max_body_bytes` is exceeded (a
//! declared Content-Length over the limit is refused before anything is
//! sent upstream).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::upstream::BoxError;

/// A client's request body as the listener hands it to the pipeline:
/// hyper's, or none (a request read by the listener's own HTTP/1.1 side,
/// `proxy::h1server`, which only takes requests without a body).
#[derive(Debug)]
pub enum ClientBody {
    Hyper(hyper::body::Incoming),
    Empty,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The error a limited body yields past its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the configured limit")]
pub struct BodyTooLarge;

/// The error a client's request body yields when it breaks (bad chunk
/// framing, the connection cut mid-body): the client's fault, a 400, never
/// the upstream's. The library's text stays in `source` (logs only).
#[derive(Debug, thiserror::Error)]
#[error("malformed request body")]
pub struct MalformedBody(#[source] pub BoxError);

/// The error a timed request body yields when the client is too slow
/// (`listen.request_timeout`, `listen.body_read_timeout`).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.code())]
pub struct TooSlow(pub crate::error::RequestTimeout);

/// A client's request body with its receive timeouts: fails once no frame
/// has come for `gap` while it was being waited for (`body_read_timeout`,
/// nginx's `client_body_timeout`), or once `deadline` (the end of
/// `request_timeout`) passes while waiting. Time only counts while the
/// body is polled and has nothing: an upstream that reads slowly never
/// makes the client late. After the last frame it is inert, so a long
/// response (or a websocket) is never cut by a request timeout.
pub struct Timed<B> {
    inner: B,
    deadline: tokio::time::Instant,
    gap: std::time::Duration,
    /// The wait for the next frame, armed when a poll finds none (so a
    /// body that never has to be waited for, an empty one, costs no timer).
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl<B> Timed<B> {
    pub fn new(inner: B, deadline: tokio::time::Instant, gap: std::time::Duration) -> Self {
        Timed {
            inner,
            deadline,
            gap,
            waiting: None,
            done: false,
        }
    }
}

impl<B> Body for Timed<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending if !this.done => {}
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            other => {
                this.waiting = None;
                return other;
            }
        }
        use crate::error::RequestTimeout;
        // One timer: the earlier of the gap's end and the deadline.
        let (gap, deadline) = (this.gap, this.deadline);
        let waiting = this.waiting.get_or_insert_with(|| {
            let gap_end = tokio::time::Instant::now() + gap;
            Box::pin(tokio::time::sleep_until(gap_end.min(deadline)))
        });
        if waiting.as_mut().poll(cx).is_ready() {
            this.done = true;
            let which = if tokio::time::Instant::now() >= deadline {
                RequestTimeout::Whole
            } else {
                RequestTimeout::BodyRead
            };
            return Poll::Ready(Some(Err(Box::new(TooSlow(which)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body whose first frame was already read (before the upstream request
/// started, so a body broken from its start never reaches the upstream),
/// followed by the rest. The client's trailer fields are dropped, on every
/// upstream path (the HTTP/1.1 client never sends them; over HTTP/2 they
/// would reach the upstream past the header strips, and some backends
/// read trailers as headers).
pub struct Primed<B> {
    first: Option<Frame<Bytes>>,
    inner: B,
}

impl<B> Primed<B> {
    pub fn new(first: Option<Frame<Bytes>>, inner: B) -> Self {
        Primed { first, inner }
    }
}

impl<B> Body for Primed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(f) = self.first.take()
            && f.is_data()
        {
            return Poll::Ready(Some(Ok(f)));
        }
        loop {
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(f)) if !f.is_data() => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let extra = self
            .first
            .as_ref()
            .and_then(|f| f.data_ref())
            .map_or(0, |d| d.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(extra));
        if let Some(u) = inner.upper() {
            hint.set_upper(u.saturating_add(extra));
        }
        hint
    }
}

/// Wraps a body and fails it once more than `remaining` bytes have passed.
pub struct Limited<B> {
    inner: B,
    remaining: u64,
}

impl<B> Limited<B> {
    pub fn new(inner: B, limit: u64) -> Self {
        Limited {
            inner,
            remaining: limit,
        }
    }
}

impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    self.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Called once when a masked body ends: `Ok(values masked)` or `Err(code)`.
pub type OnEnd = Box<dyn FnOnce(Result<u64, String>) + Send + Sync>;

/// The masked response body: upstream frames → `mask::BodyMasker` →
/// masked frames, as they come (bounded memory: the masker holds at most
/// one unfinished unit — a JSON value, an NDJSON line, an SSE event, a CSV
/// row). Upstream trailers are dropped.
///
/// On a failure (masking, or the upstream body breaking) the stream ends
/// with an error, which makes hyper abort the response: no terminating
/// chunk, the connection is closed, the client sees a broken transfer and
/// never unmasked bytes (the failing push writes nothing). The error is
/// **deferred by one poll**: the failing poll returns `Pending` (and wakes
/// itself), the next one returns the error. hyper buffers the response head
/// and body frames and flushes them only after the body goes `Pending`; an
/// error returned while they are still buffered makes it drop the
/// connection with them unsent — a client would get zero bytes, not even
/// the `200` head, depending on whether the upstream's bad bytes arrived
/// together with earlier ones. The extra `Pending` lets hyper flush first,
/// so the client always gets the head and every frame masked before the
/// failure, then the cut.
pub struct MaskedBody<B> {
    inner: B,
    /// Masked bytes to send first (an answer begun whole, see
    /// `with_prefix`).
    prefix: Option<Bytes>,
    masker: crate::mask::BodyMasker,
    finished: bool,
    /// A failure waiting for hyper to flush what went before it.
    failed: Option<BoxError>,
    /// Called once with the masker's result when the body ends.
    on_end: Option<OnEnd>,
}

impl<B> MaskedBody<B> {
    pub fn new(inner: B, masker: crate::mask::BodyMasker, on_end: OnEnd) -> Self {
        MaskedBody {
            inner,
            prefix: None,
            masker,
            finished: false,
            failed: None,
            on_end: Some(on_end),
        }
    }

    /// Sends `masked` first: what the masker already gave for the start of
    /// `inner`'s answer (`masker` carries on from there).
    pub fn with_prefix(mut self, masked: Bytes) -> Self {
        self.prefix = (!masked.is_empty()).then_some(masked);
        self
    }

    /// Records the failure and yields once (see the type's docs).
    fn fail(
        &mut self,
        cx: &mut Context<'_>,
        code: String,
        e: BoxError,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.on_end.take() {
            f(Err(code));
        }
        self.failed = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<B> Body for MaskedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(e) = self.failed.take() {
                self.finished = true;
                return Poll::Ready(Some(Err(e)));
            }
            if self.finished {
                return Poll::Ready(None);
            }
            if let Some(first) = self.prefix.take() {
                return Poll::Ready(Some(Ok(Frame::data(first))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    return self.fail(cx, "upstream_failed".into(), e.into());
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let mut out = Vec::with_capacity(data.len() + data.len() / 8);
                    if let Err(e) = self.masker.push(&data, &mut out) {
                        return self.fail(cx, e.code().to_string(), Box::new(e));
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                Poll::Ready(None) => {
                    let mut out = Vec::new();
                    if let Err(e) = self.masker.finish(&mut out) {
                        return self.fail(cx, e.code().to_string(), Box::new(e));
                    }
                    self.finished = true;
                    let n = self.masker.masked_count();
                    if let Some(f) = self.on_end.take() {
                        f(Ok(n));
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

/// The error a session-bound body ends with once its session is over.
#[derive(Debug, thiserror::Error)]
#[error("the session ended while the response was streaming")]
pub struct SessionOver;

/// Cuts a long-lived response once its session has ended (logout,
/// revocation, deactivation, idle or lifetime timeout): the check runs at
/// most every `every`, on data and — through a timer armed when the
/// upstream goes quiet — on silent streams too. Short responses finish
/// long before the first check and pay one `Instant` read per frame.
pub struct SessionBound<B, F> {
    inner: B,
    still_valid: F,
    every: std::time::Duration,
    last_check: std::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl<B, F: Fn() -> bool> SessionBound<B, F> {
    /// Checks `still_valid` every `every`, the first time `every` after
    /// `since` (the request's start: no clock read of its own).
    pub fn new(
        inner: B,
        every: std::time::Duration,
        since: std::time::Instant,
        still_valid: F,
    ) -> Self {
        SessionBound {
            inner,
            still_valid,
            every,
            last_check: since,
            timer: None,
            done: false,
        }
    }

    /// Runs the check if it is due; true = cut the stream.
    fn over(&mut self) -> bool {
        if self.last_check.elapsed() < self.every {
            return false;
        }
        self.last_check = std::time::Instant::now();
        !(self.still_valid)()
    }
}

impl<B, F: Fn() -> bool + Unpin> Body for SessionBound<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(t) = self.timer.as_mut()
            && t.as_mut().poll(cx).is_ready()
        {
            self.timer = None;
        }
        if self.over() {
            self.done = true;
            return Poll::Ready(Some(Err(Box::new(SessionOver))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {
                if self.timer.is_none() {
                    let mut t = Box::pin(tokio::time::sleep(self.every));
                    // Registers the waker: the stream is re-polled when due.
                    let _ = t.as_mut().poll(cx);
                    self.timer = Some(t);
                }
                Poll::Pending
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn trailers(name: &'static str) -> Frame<Bytes> {
        let mut t = http::HeaderMap::new();
        t.insert(name, http::HeaderValue::from_static("admin"));
        Frame::trailers(t)
    }

    /// A client's trailer section never goes upstream: not after the
    /// data, not as the body's only frame (then read first, ahead of the
    /// request).
    #[tokio::test]
    async fn a_primed_body_carries_the_data_and_never_the_trailers() {
        let frames = |v: Vec<Frame<Bytes>>| {
            StreamBody::new(futures_util::stream::iter(
                v.into_iter().map(Ok::<_, std::convert::Infallible>),
            ))
        };
        let rest = frames(vec![
            Frame::data(Bytes::from_static(b"b")),
            trailers("x-rolegate-user"),
        ]);
        let got = Primed::new(Some(Frame::data(Bytes::from_static(b"a"))), rest)
            .collect()
            .await
            .unwrap();
        assert!(got.trailers().is_none(), "{:?}", got.trailers());
        assert_eq!(got.to_bytes(), "ab");

        let only = Primed::new(Some(trailers("x-forwarded-for")), frames(vec![]))
            .collect()
            .await
            .unwrap();
        assert!(only.trailers().is_none());
        assert!(only.to_bytes().is_empty());
    }
}
