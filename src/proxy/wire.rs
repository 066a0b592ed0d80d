//! The raw request heads of a client connection: what hyper's parser hides
//! from the pipeline (phase 0, below phase 1 normalize).
//!
//! hyper turns each HTTP/1.1 head into an `http::Request`, and by then two
//! facts a gateway must refuse on are gone:
//! - a `#fragment` in the request target: http's URI parser cuts it off,
//!   and a query after it with it (`/x#f?q` arrives as `/x`);
//! - `Content-Length` next to `Transfer-Encoding`: hyper drops the
//!   `Content-Length` and frames the body as chunked (the request-smuggling
//!   ambiguity a gateway must not pass on).
//!
//! [`Tap`] wraps the client connection's reads. It re-parses every head
//! with the parser hyper uses (`httparse`, default configuration), queues
//! what it saw as a [`RawHead`] in the connection's [`Heads`], and follows
//! the body framing (Content-Length, or chunked exactly as hyper's decoder
//! reads it) to find the next head. The listener pops one [`RawHead`] per
//! request and attaches it to the request; the pipeline checks that it
//! describes the same request (method and target) before trusting it.
//!
//! Owns: byte-level head and framing facts. Must not: answer, decide, or
//! change a byte (it only looks at what hyper reads).
//!
//! Upgraded connections (websockets, `proxy::websocket`): the tap stays
//! under the upgraded stream, so after the `101` it is fed websocket
//! frames. A client frame never starts like a head (its first byte is
//! `0x00`–`0x0f` or `0x80`–`0x8f`, never a method's token character;
//! masked frames follow with the mask bit set), so the tracker loses the
//! stream on the first frame and from then on passes every byte at no
//! cost. A connection is only upgraded when its last request was, so no
//! later request ever needs a head.
//!
//! Fails closed: whenever the tap cannot follow the stream (a head hyper
//! will refuse anyway, a head over `listen.max_header_bytes`, a framing the
//! pipeline refuses, a chunked body hyper would fail), it stops, and every
//! later request on the connection finds no head and is refused.
//!
//! HTTP/2 has no such framing ambiguity (h2 itself refuses
//! `transfer-encoding` and the other connection-specific headers), but
//! the fragment problem is the same: h2 parses `:path` with http's URI
//! parser, which cuts `#…` off silently. [`H2Tap`] reads an HTTP/2
//! connection's frames a second time with h2's own codec (the same frame
//! and HPACK decoder hyper's server runs) and records in [`H2Facts`] that
//! a `:path` carried `#`, before hyper can hand that request on; the
//! pipeline then refuses every later request of the connection. A stream
//! the mirror cannot follow marks the connection lost (refused too).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// hyper's default limit on headers per request (`h1_max_headers`); a
/// tracker follows heads of up to this many on the stack, more (when the
/// listener raises hyper's limit) in a vector.
pub const MAX_HEADERS: usize = 100;

/// One request head as it was on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHead(Seen);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Read by a connection's [`Tap`] beside hyper's parser, to be
    /// compared with the request hyper made.
    Tapped {
        /// The method token, as sent.
        method: bytes::Bytes,
        /// The request target, as sent (a fragment included).
        target: bytes::Bytes,
        /// What the `Content-Length` / `Transfer-Encoding` headers say.
        framing: Framing,
    },
    /// Parsed by `h1server` into the very request it is handed with (one
    /// parse made both, so there is nothing to compare): a target of this
    /// length, without a fragment, with a clean framing (the only heads it
    /// serves).
    Served { target_len: usize },
}

/// The body framing a head declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body headers, one plain `Content-Length`, or exactly one
    /// `Transfer-Encoding: chunked` (case-insensitive).
    Clean,
    /// Both `Content-Length` and `Transfer-Encoding`.
    ContentLengthAndTransferEncoding,
    /// A `Transfer-Encoding` other than exactly one `chunked`: several
    /// headers, several codings (`gzip, chunked`, `chunked, chunked`).
    TransferEncoding,
    /// Several `Content-Length` headers (hyper itself refuses differing
    /// values and lists).
    ContentLength,
}

impl RawHead {
    /// A head the tap read.
    pub fn tapped(method: bytes::Bytes, target: bytes::Bytes, framing: Framing) -> RawHead {
        RawHead(Seen::Tapped {
            method,
            target,
            framing,
        })
    }

    /// The head of a request `h1server` parsed (see [`Seen::Served`]).
    pub fn served(target_len: usize) -> RawHead {
        RawHead(Seen::Served { target_len })
    }

    /// The target carries a `#` (clients never send fragments).
    pub fn has_fragment(&self) -> bool {
        match &self.0 {
            Seen::Tapped { target, .. } => target.contains(&b'#'),
            Seen::Served { .. } => false,
        }
    }

    /// The length of the target as sent.
    pub fn target_len(&self) -> usize {
        match &self.0 {
            Seen::Tapped { target, .. } => target.len(),
            Seen::Served { target_len } => *target_len,
        }
    }

    /// What the head's framing fields say.
    pub fn framing(&self) -> Framing {
        match &self.0 {
            Seen::Tapped { framing, .. } => *framing,
            Seen::Served { .. } => Framing::Clean,
        }
    }

    /// Whether this is the head hyper parsed into `method` and `uri`: the
    /// same method, and a target whose part before any `#` is exactly the
    /// URI: `scheme://authority` (scheme in any case) in absolute form, the
    /// authority alone in authority form, then the path and query. Exact,
    /// so a head for `/admin/x` never vouches for a request for `/x`.
    /// A served head describes the request it was handed with.
    pub fn describes(&self, method: &http::Method, uri: &http::Uri) -> bool {
        let (sent, target) = match &self.0 {
            Seen::Tapped { method, target, .. } => (method, target),
            Seen::Served { .. } => return true,
        };
        if sent != method.as_str().as_bytes() {
            return false;
        }
        let mut rest = match target.iter().position(|&b| b == b'#') {
            Some(i) => &target[..i],
            None => &target[..],
        };
        if let Some(scheme) = uri.scheme_str() {
            let n = scheme.len();
            if rest.len() < n + 3
                || !rest[..n].eq_ignore_ascii_case(scheme.as_bytes())
                || &rest[n..n + 3] != b"://"
            {
                return false;
            }
            rest = &rest[n + 3..];
        }
        if (uri.scheme().is_some() || uri.path_and_query().is_none())
            && let Some(a) = uri.authority()
        {
            match rest.strip_prefix(a.as_str().as_bytes()) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        match uri.path_and_query() {
            // `http://a` (no path) is parsed with the path `/`.
            Some(pq) => {
                rest == pq.as_str().as_bytes()
                    || (rest.is_empty() && uri.scheme().is_some() && pq.as_str() == "/")
            }
            None => rest.is_empty(),
        }
    }
}

/// The heads a connection's [`Tap`] has read and the service has not yet
/// taken, oldest first (HTTP/1.1 answers requests in order).
#[derive(Debug, Clone, Default)]
pub struct Heads(Arc<Mutex<VecDeque<RawHead>>>);

impl Heads {
    /// The head of the next request hyper hands the service; `None` when
    /// the tap lost the stream.
    pub fn pop(&self) -> Option<RawHead> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    fn push(&self, head: RawHead) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(head);
    }
}

/// A connection whose reads are followed by a [`Tracker`]. Writes pass
/// through untouched.
pub struct Tap<IO> {
    io: IO,
    tracker: Tracker,
}

impl<IO> Tap<IO> {
    /// Follows `io`'s reads; heads longer than `max_head` bytes lose the
    /// stream (hyper answers them 431 itself).
    pub fn new(io: IO, heads: Heads, max_head: usize) -> Self {
        Tap {
            io,
            tracker: Tracker::new(heads, max_head),
        }
    }

    /// Follows heads of up to `n` header fields (hyper's `max_headers`
    /// of this connection; at least [`MAX_HEADERS`]).
    pub fn max_headers(mut self, n: usize) -> Self {
        self.tracker.max_headers = n.max(MAX_HEADERS);
        self
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tap<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.tracker.feed(&buf.filled()[before..]);
        }
        r
    }
}

/// Both taps only read: writes go straight to the connection.
macro_rules! write_through {
    ($tap:ident) => {
        impl<IO: AsyncWrite + Unpin> AsyncWrite for $tap<IO> {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
        }
    };
}

write_through!(Tap);

/// Where in the byte stream the tracker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a head (bytes collect in `head_buf`).
    Head,
    /// Skipping this many more body bytes.
    Length(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// Gave up: every later request finds no head.
    Lost,
}

/// hyper's chunked decoder states (`proto::h1::decode::ChunkedState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

/// Follows one connection's request stream, byte by byte (heads) and
/// length by length (bodies).
#[derive(Debug)]
pub struct Tracker {
    heads: Heads,
    state: State,
    head_buf: Vec<u8>,
    max_head: usize,
    /// Header fields a head may have (as many as hyper accepts).
    max_headers: usize,
    /// The last head asked for an upgrade: the connection is likely to
    /// become a long-lived websocket, so `head_buf` is not kept for reuse.
    upgrade_asked: bool,
}

impl Tracker {
    pub fn new(heads: Heads, max_head: usize) -> Self {
        Tracker {
            heads,
            state: State::Head,
            head_buf: Vec::new(),
            max_head,
            max_headers: MAX_HEADERS,
            upgrade_asked: false,
        }
    }

    /// Takes the next bytes the connection read.
    pub fn feed(&mut self, data: &[u8]) {
        let used = self.skip_body(data);
        let data = &data[used..];
        if data.is_empty() || self.state != State::Head {
            return;
        }
        self.head_buf.extend_from_slice(data);
        // Iterative, not recursive: one read may hold many pipelined heads.
        loop {
            let Some(len) = self.parse_head() else { return };
            let mut pending = std::mem::take(&mut self.head_buf);
            pending.drain(..len);
            let used = self.skip_body(&pending);
            if self.state != State::Head {
                return;
            }
            pending.drain(..used);
            if pending.is_empty() {
                // Kept for the next head, except under an upgrade.
                if !self.upgrade_asked {
                    self.head_buf = pending;
                }
                return;
            }
            self.head_buf = pending;
        }
    }

    /// Skips body bytes while in a body; returns how many were body (all
    /// of them once lost). Stops where the next head starts.
    fn skip_body(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Head => return i,
                State::Lost => return data.len(),
                State::Length(n) => {
                    let take = n.min((data.len() - i) as u64);
                    i += take as usize;
                    self.state = if n == take {
                        State::Head
                    } else {
                        State::Length(n - take)
                    };
                }
                State::Chunked(Chunk::Data(n)) => {
                    let take = n.min((data.len() - i) as u64);
                    i += take as usize;
                    self.state = State::Chunked(if n == take {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(n - take)
                    });
                }
                State::Chunked(c) => {
                    self.state = match chunk_step(c, data[i]) {
                        Some(Some(next)) => State::Chunked(next),
                        Some(None) => State::Head,
                        None => State::Lost,
                    };
                    i += 1;
                }
            }
        }
        i
    }

    /// Parses `head_buf`; on a complete head queues it, sets the body
    /// state and returns the head's length. `None`: incomplete, or lost.
    fn parse_head(&mut self) -> Option<usize> {
        let mut stack = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut heap;
        let headers: &mut [httparse::Header<'_>] = if self.max_headers <= MAX_HEADERS {
            &mut stack
        } else {
            heap = vec![httparse::EMPTY_HEADER; self.max_headers];
            &mut heap
        };
        let mut req = httparse::Request::new(headers);
        let len = match req.parse(&self.head_buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if self.head_buf.len() >= self.max_head {
                    self.lose();
                }
                return None;
            }
            // hyper refuses the same head and closes the connection.
            Err(_) => {
                self.lose();
                return None;
            }
        };
        let (mut cl, mut te) = (Vec::new(), Vec::new());
        let mut upgrade_asked = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                cl.push(h.value);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te.push(h.value);
            }
            upgrade_asked |= h.name.eq_ignore_ascii_case("upgrade");
        }
        self.upgrade_asked = upgrade_asked;
        let http10 = req.version == Some(0);
        // hyper: chunked iff the last Transfer-Encoding line ends in
        // `chunked`; any other Transfer-Encoding (or one on HTTP/1.0) is
        // its own 400.
        let hyper_chunked = te.last().is_some_and(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        });
        let (framing, body) = if !te.is_empty() {
            if http10 || !hyper_chunked {
                self.lose();
                return None;
            }
            let exactly_chunked =
                te.len() == 1 && te[0].trim_ascii().eq_ignore_ascii_case(b"chunked");
            let framing = if !cl.is_empty() {
                Framing::ContentLengthAndTransferEncoding
            } else if !exactly_chunked {
                Framing::TransferEncoding
            } else {
                Framing::Clean
            };
            (framing, State::Chunked(Chunk::Start))
        } else if let Some(first) = cl.first() {
            // hyper: each value one plain decimal number, all equal.
            let Some(n) = digits(first) else {
                self.lose();
                return None;
            };
            if cl.iter().any(|v| digits(v) != Some(n)) {
                self.lose();
                return None;
            }
            let framing = if cl.len() > 1 {
                Framing::ContentLength
            } else {
                Framing::Clean
            };
            (
                framing,
                if n == 0 {
                    State::Head
                } else {
                    State::Length(n)
                },
            )
        } else {
            (Framing::Clean, State::Head)
        };
        self.heads.push(RawHead::tapped(
            bytes::Bytes::copy_from_slice(req.method.unwrap_or_default().as_bytes()),
            bytes::Bytes::copy_from_slice(req.path.unwrap_or_default().as_bytes()),
            framing,
        ));
        // An unclean framing is refused and the connection closed: there is
        // no next request to find.
        self.state = if framing == Framing::Clean {
            body
        } else {
            State::Lost
        };
        Some(len)
    }

    fn lose(&mut self) {
        self.state = State::Lost;
        self.head_buf = Vec::new();
    }
}

/// hyper's `from_digits`: a non-empty run of ASCII digits, no overflow.
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// One byte of chunked framing, as hyper's decoder reads it.
/// `Some(Some(next))`: go on; `Some(None)`: the body ended; `None`: hyper
/// fails the body here.
fn chunk_step(c: Chunk, b: u8) -> Option<Option<Chunk>> {
    let hex = |size: u64| {
        let d = (b as char).to_digit(16)?;
        size.checked_mul(16)?.checked_add(u64::from(d))
    };
    let next = match c {
        Chunk::Start => Chunk::Size(hex(0)?),
        Chunk::Size(n) => match b {
            b'\t' | b' ' => Chunk::SizeLws(n),
            b';' => Chunk::Extension(n),
            b'\r' => Chunk::SizeLf(n),
            _ => Chunk::Size(hex(n)?),
        },
        Chunk::SizeLws(n) => match b {
            b'\t' | b' ' => Chunk::SizeLws(n),
            b';' => Chunk::Extension(n),
            b'\r' => Chunk::SizeLf(n),
            _ => return None,
        },
        Chunk::Extension(n) => match b {
            b'\r' => Chunk::SizeLf(n),
            b'\n' => return None,
            _ => Chunk::Extension(n),
        },
        Chunk::SizeLf(n) => match (b, n) {
            (b'\n', 0) => Chunk::EndCr,
            (b'\n', n) => Chunk::Data(n),
            _ => return None,
        },
        // Data is skipped in bulk by `feed`; a zero-length one is done.
        Chunk::Data(_) => return chunk_step(Chunk::DataCr, b),
        Chunk::DataCr => (b == b'\r').then_some(Chunk::DataLf)?,
        Chunk::DataLf => (b == b'\n').then_some(Chunk::Start)?,
        Chunk::Trailer => match b {
            b'\r' => Chunk::TrailerLf,
            _ => Chunk::Trailer,
        },
        Chunk::TrailerLf => (b == b'\n').then_some(Chunk::EndCr)?,
        Chunk::EndCr => match b {
            b'\r' => Chunk::EndLf,
            _ => Chunk::Trailer,
        },
        Chunk::EndLf => return (b == b'\n').then_some(None),
    };
    Some(Some(next))
}

// ------------------------------------------------------------------ HTTP/2

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What an HTTP/2 connection's [`H2Tap`] found, shared with the pipeline.
#[derive(Debug, Default)]
pub struct H2Facts {
    fragment: std::sync::atomic::AtomicBool,
    lost: std::sync::atomic::AtomicBool,
}

impl H2Facts {
    /// A `:path` on this connection carried `#`.
    pub fn saw_fragment(&self) -> bool {
        self.fragment.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The mirror could not follow the connection (bad preface, a frame
    /// or header block h2 fails on).
    pub fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set(flag: &std::sync::atomic::AtomicBool) {
        flag.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// A connection whose reads also go through h2's frame codec. Writes pass
/// through untouched.
pub struct H2Tap<IO> {
    io: IO,
    mirror: Option<Mirror>,
}

struct Mirror {
    /// Preface bytes still to be checked.
    preface: usize,
    codec: h2::Codec<Feed, bytes::Bytes>,
    facts: Arc<H2Facts>,
}

/// The codec's input: the bytes the connection read, nothing written.
#[derive(Default)]
struct Feed(bytes::BytesMut);

impl AsyncRead for Feed {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.0.is_empty() {
            // Polled again after the next read feeds it.
            return Poll::Pending;
        }
        let n = this.0.len().min(buf.remaining());
        buf.put_slice(&this.0.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Feed {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl<IO> H2Tap<IO> {
    /// Follows `io`'s reads as an HTTP/2 client connection; header lists
    /// are bounded like hyper's (`max_header_list`).
    pub fn new(io: IO, facts: Arc<H2Facts>, max_header_list: usize) -> Self {
        let mut codec = h2::Codec::new(Feed::default());
        codec.set_max_recv_header_list_size(max_header_list);
        H2Tap {
            io,
            mirror: Some(Mirror {
                preface: 0,
                codec,
                facts,
            }),
        }
    }
}

impl Mirror {
    /// Takes the next bytes; `false` once it gave up.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        if self.preface < H2_PREFACE.len() {
            let n = data.len().min(H2_PREFACE.len() - self.preface);
            if data[..n] != H2_PREFACE[self.preface..self.preface + n] {
                // Not HTTP/2 (an h2c listener's HTTP/1.1 connection):
                // nothing to follow, and no HTTP/2 request will come.
                H2Facts::set(&self.facts.lost);
                return false;
            }
            self.preface += n;
            data = &data[n..];
        }
        if data.is_empty() {
            return true;
        }
        self.codec.get_mut().0.extend_from_slice(data);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            match futures_util::StreamExt::poll_next_unpin(&mut self.codec, &mut cx) {
                Poll::Ready(Some(Ok(h2::frame::Frame::Headers(mut h)))) => {
                    if h.pseudo_mut()
                        .path
                        .as_ref()
                        .is_some_and(|p| p.contains('#'))
                    {
                        H2Facts::set(&self.facts.fragment);
                    }
                }
                Poll::Ready(Some(Ok(_))) => {}
                // A stream-level error (a malformed header block): h2
                // resets that stream and the connection goes on.
                Poll::Ready(Some(Err(h2::proto::Error::Reset(..)))) => {}
                Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                    H2Facts::set(&self.facts.lost);
                    return false;
                }
                Poll::Pending => return true,
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for H2Tap<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(m)) = (&r, &mut this.mirror)
            && !m.feed(&buf.filled()[before..])
        {
            this.mirror = None;
        }
        r
    }
}

write_through!(H2Tap);

#[cfg(test)]
mod tests {
    use super::*;

    fn heads_of(stream: &[u8], split: usize) -> (Vec<RawHead>, State) {
        let heads = Heads::default();
        let mut t = Tracker::new(heads.clone(), 16384);
        // Fed in pieces of `split` bytes: the result must not depend on it.
        for piece in stream.chunks(split) {
            t.feed(piece);
        }
        let mut out = Vec::new();
        while let Some(h) = heads.pop() {
            out.push(h);
        }
        (out, t.state)
    }

    fn targets(hs: &[RawHead]) -> Vec<String> {
        hs.iter()
            .map(|h| match &h.0 {
                Seen::Tapped { target, .. } => String::from_utf8_lossy(target).into_owned(),
                Seen::Served { .. } => unreachable!("the tap makes no served heads"),
            })
            .collect()
    }

    #[test]
    fn websocket_frames_after_an_upgrade_lose_the_stream_at_once() {
        let mut stream = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
        // A masked text frame "GET / HTTP/1.1" (FIN + text, mask bit + 14).
        let payload = b"GET / HTTP/1.1";
        let mask = [1u8, 2, 3, 4];
        stream.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
        stream.extend_from_slice(&mask);
        stream.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        // A non-final continuation frame starts with 0x00.
        stream.extend_from_slice(&[0x00, 0x80, 0, 0, 0, 0]);
        for split in [1, 3, stream.len()] {
            let (hs, state) = heads_of(&stream, split);
            assert_eq!(targets(&hs), ["/ws"], "split {split}");
            assert_eq!(state, State::Lost, "split {split}");
        }
    }

    /// An idle websocket keeps its tap for its whole life: after an upgrade
    /// head the head buffer is released, not kept for a next request.
    #[test]
    fn releases_the_head_buffer_after_an_upgrade_head() {
        let upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\n\r\n";
        let plain = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut t = Tracker::new(Heads::default(), 16384);
        t.feed(plain);
        assert!(t.head_buf.capacity() > 0, "kept for the next head");
        t.feed(upgrade);
        assert_eq!(t.head_buf.capacity(), 0);
        assert_eq!(t.state, State::Head);
    }

    #[test]
    fn follows_pipelined_requests_across_bodies_at_any_split() {
        let stream = b"GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nGET /\
            PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
            4;ext=1\r\nGET \r\n3  \r\n/x \r\n0\r\nTrailer: GET /y HTTP/1.1\r\n\r\n\
            \r\nDELETE /d?q=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in [1, 2, 3, 7, 64, stream.len()] {
            let (hs, state) = heads_of(stream, split);
            assert_eq!(
                targets(&hs),
                ["/a#frag", "/b", "/c", "/d?q=1"],
                "split {split}"
            );
            assert!(hs[0].has_fragment() && !hs[1].has_fragment());
            assert!(hs.iter().all(|h| h.framing() == Framing::Clean));
            assert!(matches!(&hs[3].0, Seen::Tapped { method, .. } if method == &b"DELETE"[..]));
            assert_eq!(state, State::Head, "split {split}");
        }
    }

    #[test]
    fn ambiguous_framings_are_flagged_and_end_tracking() {
        let cases: &[(&str, Framing)] = &[
            (
                "Content-Length: 3\r\nTransfer-Encoding: chunked",
                Framing::ContentLengthAndTransferEncoding,
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 3",
                Framing::ContentLengthAndTransferEncoding,
            ),
            (
                "Transfer-Encoding: gzip, chunked",
                Framing::TransferEncoding,
            ),
            (
                "Transfer-Encoding: chunked, chunked",
                Framing::TransferEncoding,
            ),
            (
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
                Framing::TransferEncoding,
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                Framing::TransferEncoding,
            ),
            (
                "Content-Length: 3\r\nContent-Length: 3",
                Framing::ContentLength,
            ),
            ("Transfer-Encoding:  Chunked ", Framing::Clean),
            ("Content-Length: 3", Framing::Clean),
        ];
        for (headers, want) in cases {
            let req = format!(
                "POST /p HTTP/1.1\r\nHost: x\r\n{headers}\r\n\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n"
            );
            let (hs, state) = heads_of(req.as_bytes(), 5);
            assert_eq!(hs[0].framing(), *want, "{headers}");
            if *want != Framing::Clean {
                assert_eq!(hs.len(), 1, "{headers}: tracking must stop");
                assert_eq!(state, State::Lost);
            }
        }
    }

    #[test]
    fn heads_hyper_refuses_lose_the_stream() {
        for req in [
            "GET /x HTTP/1.1\r\nBad\x01Name: v\r\n\r\n",
            "POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST /x HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            "POST /x HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
        ] {
            let (hs, state) = heads_of(req.as_bytes(), 4);
            assert!(hs.is_empty(), "{req:?}");
            assert_eq!(state, State::Lost, "{req:?}");
        }
        // A head that never ends within the limit.
        let heads = Heads::default();
        let mut t = Tracker::new(heads.clone(), 64);
        t.feed(format!("GET /{} HTTP/1.1\r\n", "a".repeat(100)).as_bytes());
        assert_eq!(t.state, State::Lost);
    }

    #[test]
    fn malformed_chunked_bodies_lose_the_stream() {
        for body in [
            "zz\r\n",
            "5\r\nabcdeXX",
            "3;a\nb",
            "1 2\r\n",
            "ffffffffffffffffff\r\n",
        ] {
            let req = format!(
                "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}GET /n HTTP/1.1\r\n\r\n"
            );
            let (hs, state) = heads_of(req.as_bytes(), 3);
            assert_eq!(hs.len(), 1, "{body:?}");
            assert_eq!(state, State::Lost, "{body:?}");
        }
    }

    #[test]
    fn describes_matches_hyper_view() {
        let h = |m: &str, t: &str| {
            RawHead::tapped(
                bytes::Bytes::copy_from_slice(m.as_bytes()),
                bytes::Bytes::copy_from_slice(t.as_bytes()),
                Framing::Clean,
            )
        };
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert!(h("GET", "/x?q#f").describes(&http::Method::GET, &uri("/x?q")));
        assert!(h("GET", "/x#f?q").describes(&http::Method::GET, &uri("/x")));
        assert!(h("GET", "http://a/x").describes(&http::Method::GET, &uri("http://a/x")));
        assert!(!h("GET", "/y").describes(&http::Method::GET, &uri("/x")));
        assert!(!h("get", "/x").describes(&http::Method::GET, &uri("/x")));
        // Exact, not a suffix: another target never vouches for this one.
        assert!(!h("GET", "/admin/x").describes(&http::Method::GET, &uri("/x")));
        assert!(!h("GET", "http://a/b/x").describes(&http::Method::GET, &uri("http://a/x")));
        assert!(h("GET", "HTTP://a/x").describes(&http::Method::GET, &uri("http://a/x")));
        assert!(h("GET", "http://a").describes(&http::Method::GET, &uri("http://a")));
    }
}
