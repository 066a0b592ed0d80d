//! Phase 6 transport, HTTP/1.1 bytes towards an upstream: one request
//! written and its answer read, on a connection `h1.rs` holds.
//!
//! Written here rather than driving hyper's client connection, for the
//! cost (BENCHMARKS.md, issue 23): hyper's client hands each request
//! through a channel to a dispatcher and a callback back, and polls a
//! connection future of its own; a proxy that already holds the
//! connection in the request's task needs only the framing. The parser
//! is hyper's (`httparse`, strict default configuration) with hyper's
//! client limits (100 header fields, a head of at most 400 KiB), and the
//! answer's framing follows RFC 9112 §6.3 as hyper's client decoder does,
//! stricter where the RFC lets a recipient refuse:
//! - `Transfer-Encoding` with `Content-Length`: the length is removed and
//!   the connection is not used again (§6.3 item 3);
//! - a `Transfer-Encoding` other than `chunked` alone is refused (a coding
//!   before it would be passed on undecoded and unlabelled);
//! - chunk lines must end in CRLF; a size line is at most 4 KiB (and the
//!   extensions of a body 16 KiB, its trailer section 16 KiB, as hyper);
//! - a `101` to a request that asked for no upgrade is refused.
//!
//! Requests always go out as HTTP/1.1 (the client's version is its own
//! hop's); header values are `http::HeaderValue`s, which cannot hold CR or
//! LF, so no field can split the request. The body's framing is decided
//! here (a caller's `Transfer-Encoding` is dropped): its `Content-Length`,
//! which it must match, else its exact size, else chunked — except on
//! `GET`, `HEAD` and `CONNECT`, where a body of unknown length is not sent,
//! as hyper's client does. Request trailers are not sent (`Trailer` is
//! hop-by-hop and stripped, so none are declared).
//!
//! Owns: encoding the request head, framing its body (its
//! `Content-Length`, else chunked), parsing the answer's head, decoding its
//! body (a length, chunked, until close; none after `HEAD`, 1xx, 204, 304)
//! and whether the connection can carry another request afterwards. Not:
//! which connection, connecting, timeouts or retries (`h1.rs`,
//! `upstream.rs`), and no header policy (`headers.rs`).

use std::collections::VecDeque;
use std::future::Future as _;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::request;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header};
use http_body::{Body, Frame};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite};

use super::relayed::{Place, Relayed};
use super::upstream::{BoxError, UpBody};

/// Header fields an answer's head may have (hyper's client default).
pub const MAX_HEADERS: usize = 100;
/// The largest answer head (and trailer section) read: hyper's default
/// buffer limit.
pub const MAX_HEAD: usize = 8192 + 4096 * 100;
/// The longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Chunk extensions of one body, all together, and its trailer section
/// (hyper's limits).
const MAX_CHUNK_EXT: usize = 16 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// At most this much of a request body is taken from it before being
/// written (buffers, bytes).
const QUEUED_BUFS: usize = 48;
const QUEUED_BYTES: usize = 64 * 1024;
/// Room made in the read buffer before a read: from the first size,
/// doubled after each read that fills it, up to the last (a large body is
/// read, and passed on, in large pieces, as hyper's adaptive reads do);
/// halved after a read of under an eighth.
const READ_FIRST: usize = 16 * 1024;
const READ_MOST: usize = 256 * 1024;

/// A connection's byte stream (plain TCP, or TLS over it).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> Io for T {}

/// One upstream connection: its stream and what was read from it and not
/// yet used.
pub struct Wire {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    /// What the current answer's chunk extensions may still take.
    ext_left: usize,
    /// Room to make before the next read (see [`READ_FIRST`]).
    read_size: usize,
    /// Where the requests sent on this connection have their heads
    /// encoded ([`Upload::new`]): kept with it, so that each head after
    /// the first reuses the buffer its predecessor (gone by then) took.
    pub scratch: BytesMut,
}

/// A connection keeps its head buffer while it is at most this large
/// (one a large head grew is let go).
pub const SCRATCH_KEPT: usize = 8 * 1024;

/// Why an exchange or an answer's body failed.
#[derive(Debug)]
pub enum WireError {
    Io(io::Error),
    /// The server closed the connection before the answer was whole.
    Closed {
        /// Some byte of an answer had arrived.
        answer_started: bool,
    },
    /// The answer's head could not be parsed.
    Parse(httparse::Error),
    /// The answer broke the framing rules (see the module doc), or the
    /// request body did not match its own `Content-Length`.
    Malformed(&'static str),
    /// The answer's head (or trailer section) is over [`MAX_HEAD`].
    HeadTooLarge,
    /// The request body's own error (the client's upload broke).
    Body(BoxError),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "connection error: {e}"),
            WireError::Closed {
                answer_started: false,
            } => f.write_str("connection closed before an answer"),
            WireError::Closed {
                answer_started: true,
            } => f.write_str("connection closed before the answer was complete"),
            WireError::Parse(e) => write!(f, "invalid answer head: {e}"),
            WireError::Malformed(what) => write!(f, "invalid answer: {what}"),
            WireError::HeadTooLarge => write!(f, "answer head over {MAX_HEAD} bytes"),
            WireError::Body(e) => write!(f, "request body: {e}"),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Io(e) => Some(e),
            WireError::Body(e) => Some(&**e),
            _ => None,
        }
    }
}

impl WireError {
    /// The connection ended before any byte of an answer (the keep-alive
    /// race when the connection was kept).
    pub fn before_answer(&self) -> bool {
        matches!(
            self,
            WireError::Closed {
                answer_started: false
            }
        )
    }
}

/// A request on its way out: what is queued to be written and the body
/// still to be read.
pub struct Upload {
    out: VecDeque<Bytes>,
    body: Option<UpBody>,
    framing: Framing,
    /// Some byte of the request was written.
    wrote: bool,
    /// The encoded head of a request without a body, to send it again.
    bodiless: Option<Bytes>,
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    /// Bytes the body still owes to its `Content-Length`.
    Length(u64),
    Chunked,
}

impl Upload {
    /// The request's head encoded in `scratch` (origin-form target,
    /// HTTP/1.1) and its body framed: by its `Content-Length` if it has
    /// one, by its exact size when known, else chunked. Fails on a
    /// `Content-Length` that is not one number. `first` and `last` are
    /// fields written before and after the map's (`Host`, the injected
    /// forwarding fields; `last.1`: the injected identity fields as encoded
    /// header lines): names the map does not have, and never framing fields.
    pub fn new(
        parts: &mut request::Parts,
        first: &[(HeaderName, HeaderValue)],
        last: (&[(HeaderName, HeaderValue)], &[u8]),
        body: UpBody,
        scratch: &mut BytesMut,
    ) -> Result<Upload, WireError> {
        let (last, lines) = last;
        // The framing is decided here, never taken from the caller.
        parts.headers.remove(header::TRANSFER_ENCODING);
        let mut ended = body.is_end_stream();
        let framing = if parts.headers.contains_key(header::CONTENT_LENGTH) {
            let n = content_length(&parts.headers)
                .ok_or(WireError::Malformed("request Content-Length"))?;
            if ended && n > 0 {
                return Err(WireError::Malformed(
                    "request body shorter than its Content-Length",
                ));
            }
            Framing::Length(n)
        } else if ended {
            Framing::Length(0)
        } else if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT)
            && body.size_hint().exact().is_none()
        {
            // As hyper's client: a body of unknown length on these is not
            // sent (never as chunks an upstream that ignores bodies on
            // `GET` would read as a second, unauthorized request).
            ended = true;
            Framing::Length(0)
        } else if let Some(n) = body.size_hint().exact() {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            Framing::Length(n)
        } else {
            parts.headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            Framing::Chunked
        };
        scratch.extend_from_slice(parts.method.as_str().as_bytes());
        scratch.extend_from_slice(b" ");
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        scratch.extend_from_slice(target.as_bytes());
        scratch.extend_from_slice(b" HTTP/1.1\r\n");
        let fields = first.iter().map(|(n, v)| (n, v));
        for (name, value) in fields
            .chain(&parts.headers)
            .chain(last.iter().map(|(n, v)| (n, v)))
        {
            scratch.extend_from_slice(name.as_str().as_bytes());
            scratch.extend_from_slice(b": ");
            scratch.extend_from_slice(value.as_bytes());
            scratch.extend_from_slice(b"\r\n");
        }
        scratch.extend_from_slice(lines);
        scratch.extend_from_slice(b"\r\n");
        let head = scratch.split().freeze();
        let bodiless = ended.then(|| head.clone());
        let mut out = VecDeque::with_capacity(4);
        out.push_back(head);
        Ok(Upload {
            out,
            body: (!ended).then_some(body),
            framing,
            wrote: false,
            bodiless,
        })
    }

    /// Queues a frame of the body, framed; at its end, the last chunk.
    fn take(&mut self, frame: Option<Result<Frame<Bytes>, BoxError>>) -> Result<(), WireError> {
        match frame {
            Some(Ok(frame)) => {
                // Trailers are dropped (see the module doc).
                let Ok(data) = frame.into_data() else {
                    return Ok(());
                };
                if data.is_empty() {
                    return Ok(());
                }
                match &mut self.framing {
                    Framing::Length(left) => {
                        let n = data.len() as u64;
                        if n > *left {
                            self.body = None;
                            return Err(WireError::Malformed(
                                "request body longer than its Content-Length",
                            ));
                        }
                        *left -= n;
                        self.out.push_back(data);
                    }
                    Framing::Chunked => {
                        self.out
                            .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                        self.out.push_back(data);
                        self.out.push_back(Bytes::from_static(b"\r\n"));
                    }
                }
                Ok(())
            }
            Some(Err(e)) => {
                self.body = None;
                Err(WireError::Body(e))
            }
            None => {
                self.body = None;
                match self.framing {
                    Framing::Length(0) => Ok(()),
                    Framing::Length(_) => Err(WireError::Malformed(
                        "request body shorter than its Content-Length",
                    )),
                    Framing::Chunked => {
                        self.out.push_back(Bytes::from_static(b"0\r\n\r\n"));
                        Ok(())
                    }
                }
            }
        }
    }

    fn queued(&self) -> usize {
        self.out.iter().map(Bytes::len).sum()
    }

    /// The same request, to be sent again from its first byte, if it has
    /// no body (a body is streamed and not kept).
    pub fn again(&self) -> Option<Upload> {
        let head = self.bodiless.clone()?;
        Some(Upload {
            out: VecDeque::from([head.clone()]),
            body: None,
            framing: Framing::Length(0),
            wrote: false,
            bodiless: Some(head),
        })
    }

    /// No byte of the request was written: what the body gave so far is
    /// still queued, so the whole request can go out on another
    /// connection.
    pub fn untouched(&self) -> bool {
        !self.wrote
    }

    /// The encoded head's length, while it is still queued whole.
    pub fn head_len(&self) -> usize {
        self.out.front().map_or(0, Bytes::len)
    }
}

/// How an answer's body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the server closes the connection.
    Eof,
    /// Ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, or the final CRLF.
    Trailers,
}

impl Decode {
    pub fn is_done(&self) -> bool {
        *self == Decode::Done
    }

    pub fn exact_len(&self) -> Option<u64> {
        match self {
            Decode::Length(n) => Some(*n),
            Decode::Done => Some(0),
            _ => None,
        }
    }
}

/// An answer's head: the response without its body, how to read the
/// body, and whether the connection may carry another request after it.
pub struct Head {
    pub response: Response<()>,
    /// The fields kept as the head's bytes, when asked for.
    pub relayed: Option<Box<Relayed>>,
    pub decode: Decode,
    pub reusable: bool,
}

enum Parsed {
    Partial,
    Informational,
    Final(Head),
}

impl Wire {
    pub fn new(io: Box<dyn Io>) -> Wire {
        Wire {
            io,
            rbuf: BytesMut::new(),
            ext_left: MAX_CHUNK_EXT,
            read_size: READ_FIRST,
            scratch: BytesMut::new(),
        }
    }

    /// Writes what the upload has queued and the body as it comes, framed.
    /// `Ready(Ok)` once the whole request is written and flushed.
    pub fn poll_upload(
        &mut self,
        up: &mut Upload,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WireError>> {
        loop {
            // What the body has ready is taken before anything is written,
            // as hyper's client does: a body that fails at once (a broken
            // chunked upload) leaves the server without even the head,
            // and the frames already there go out with it in one write.
            while up.out.len() < QUEUED_BUFS && up.queued() < QUEUED_BYTES {
                let Some(body) = up.body.as_mut() else { break };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(frame) => up.take(frame)?,
                    Poll::Pending => break,
                }
            }
            if up.out.is_empty() {
                // TLS keeps records until flushed.
                ready!(Pin::new(&mut self.io).poll_flush(cx)).map_err(WireError::Io)?;
                return match up.body {
                    None => Poll::Ready(Ok(())),
                    // The body was polled above and is waiting.
                    Some(_) => Poll::Pending,
                };
            }
            let mut slices = [IoSlice::new(&[]); 4];
            let n = up
                .out
                .iter()
                .zip(slices.iter_mut())
                .map(|(b, s)| *s = IoSlice::new(b))
                .count();
            let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]))
                .map_err(WireError::Io)?;
            if written == 0 {
                return Poll::Ready(Err(WireError::Io(io::ErrorKind::WriteZero.into())));
            }
            up.wrote = true;
            advance(&mut up.out, written);
        }
    }

    /// Reads until the answer's final head (informational ones are
    /// skipped) and takes it off the buffer; with `relay`, its fields as
    /// the head's bytes (see [`parse_head`]).
    pub fn poll_head(
        &mut self,
        method: &Method,
        relay: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Head, WireError>> {
        let mut informational = false;
        loop {
            if !self.rbuf.is_empty() {
                let before = self.rbuf.len();
                match parse_head(&mut self.rbuf, method, relay)? {
                    // A whole head over the limit that came in one read.
                    Parsed::Final(_) if before - self.rbuf.len() > MAX_HEAD => {
                        return Poll::Ready(Err(WireError::HeadTooLarge));
                    }
                    Parsed::Final(head) => {
                        self.ext_left = MAX_CHUNK_EXT;
                        return Poll::Ready(Ok(head));
                    }
                    Parsed::Informational => {
                        informational = true;
                        continue;
                    }
                    Parsed::Partial => {}
                }
                if self.rbuf.len() >= MAX_HEAD {
                    return Poll::Ready(Err(WireError::HeadTooLarge));
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(WireError::Closed {
                    answer_started: informational || !self.rbuf.is_empty(),
                }));
            }
        }
    }

    /// The answer body's next frame, by `decode`, which it advances.
    pub fn poll_body(
        &mut self,
        decode: &mut Decode,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        const CUT: WireError = WireError::Closed {
            answer_started: true,
        };
        loop {
            match decode {
                Decode::Done => return Poll::Ready(None),
                Decode::Length(left) | Decode::Chunked(Chunk::Data(left)) => {
                    if !self.rbuf.is_empty() {
                        let take = (*left).min(self.rbuf.len() as u64);
                        let data = self.rbuf.split_to(take as usize).freeze();
                        *left -= take;
                        if *left == 0 {
                            *decode = match decode {
                                Decode::Length(_) => Decode::Done,
                                _ => Decode::Chunked(Chunk::DataEnd),
                            };
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Decode::Eof => {
                    if !self.rbuf.is_empty() {
                        let data = self.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if ready!(self.poll_fill(cx))? == 0 {
                        *decode = Decode::Done;
                        return Poll::Ready(None);
                    }
                    continue;
                }
                Decode::Chunked(Chunk::Size) => match chunk_size(&self.rbuf)? {
                    Some((used, size, ext)) => {
                        self.ext_left = self
                            .ext_left
                            .checked_sub(ext)
                            .ok_or(WireError::Malformed("chunk extensions over 16 KiB"))?;
                        self.rbuf.advance(used);
                        *decode = Decode::Chunked(match size {
                            0 => Chunk::Trailers,
                            n => Chunk::Data(n),
                        });
                        continue;
                    }
                    None if self.rbuf.len() > MAX_CHUNK_LINE => {
                        return Poll::Ready(Some(Err(WireError::Malformed("chunk size line"))));
                    }
                    None => {}
                },
                Decode::Chunked(Chunk::DataEnd) => {
                    if self.rbuf.len() >= 2 {
                        if &self.rbuf[..2] != b"\r\n" {
                            return Poll::Ready(Some(Err(WireError::Malformed("chunk data end"))));
                        }
                        self.rbuf.advance(2);
                        *decode = Decode::Chunked(Chunk::Size);
                        continue;
                    }
                }
                Decode::Chunked(Chunk::Trailers) => {
                    if self.rbuf.starts_with(b"\r\n") {
                        self.rbuf.advance(2);
                        *decode = Decode::Done;
                        return Poll::Ready(None);
                    }
                    if self.rbuf.len() >= 2 {
                        if let Some(end) = memchr::memmem::find(&self.rbuf, b"\r\n\r\n") {
                            if end + 4 > MAX_TRAILERS {
                                return Poll::Ready(Some(Err(WireError::Malformed(
                                    "trailer section over 16 KiB",
                                ))));
                            }
                            let fields = self.rbuf.split_to(end + 4).freeze();
                            let trailers = parse_trailers(&fields)?;
                            *decode = Decode::Done;
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        if self.rbuf.len() >= MAX_TRAILERS {
                            return Poll::Ready(Some(Err(WireError::Malformed(
                                "trailer section over 16 KiB",
                            ))));
                        }
                    }
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Some(Err(CUT)));
            }
        }
    }

    /// Nothing is left unread and the server has neither closed the
    /// connection nor sent anything since: it can carry a request. Polled
    /// once with no waker, outside tokio's cooperative budget (a task that
    /// has spent it would get `Pending` without the socket being read, and
    /// a closed connection, or one holding stray bytes, would pass).
    pub fn idle_and_open(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = tokio::task::unconstrained(std::future::poll_fn(|cx| self.poll_fill(cx)));
        Pin::new(&mut probe).poll(&mut cx).is_pending()
    }

    /// No byte of the server's is read and left over.
    pub fn nothing_unread(&self) -> bool {
        self.rbuf.is_empty()
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, WireError>> {
        if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 4 {
            self.rbuf.reserve(self.read_size);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.rbuf
        ))
        .map_err(WireError::Io)?;
        if n >= self.read_size {
            self.read_size = (self.read_size * 2).min(READ_MOST);
        } else if n < self.read_size / 8 {
            self.read_size = (self.read_size / 2).max(READ_FIRST);
        }
        Poll::Ready(Ok(n))
    }

    /// Lets go of a large read buffer before the connection sits idle.
    pub fn shrink(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > READ_FIRST {
            self.rbuf = BytesMut::new();
        }
        self.read_size = READ_FIRST;
    }
}

/// Drops `n` written bytes off the front of the queue.
fn advance(out: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = out.front_mut() else { return };
        if n < front.len() {
            front.advance(n);
            return;
        }
        n -= front.len();
        out.pop_front();
    }
}

/// One answer head off the front of `buf`, if it is all there.
///
/// With `relay`, only the framing fields go into the answer's header map;
/// the others are kept as the head's bytes in a [`Relayed`] beside it (see
/// `relayed.rs`).
fn parse_head(buf: &mut BytesMut, method: &Method, relay: bool) -> Result<Parsed, WireError> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    // Offsets of each field's name and value, so that the values can
    // share the head's bytes once it is split off the buffer.
    let mut spans: SmallVec<[[u32; 4]; 16]> = SmallVec::new();
    let (len, code, reason, minor) = {
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(e) => return Err(WireError::Parse(e)),
        };
        let base = buf.as_ptr() as usize;
        for h in res.headers.iter() {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            spans.push([
                name as u32,
                (name + h.name.len()) as u32,
                value as u32,
                (value + h.value.len()) as u32,
            ]);
        }
        let reason = res.reason.unwrap_or("");
        let code = res.code.unwrap_or(0);
        let canonical = StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            == Some(reason);
        let reason = (!canonical && !reason.is_empty())
            .then(|| hyper::ext::ReasonPhrase::try_from(reason.as_bytes()).ok())
            .flatten();
        (len, code, reason, res.version.unwrap_or(1))
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| WireError::Malformed("status code"))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(WireError::Malformed(
                "101 to a request that asked for no upgrade",
            ));
        }
        return Ok(Parsed::Informational);
    }
    let mut relayed = relay.then(|| Box::new(Relayed::new(head.clone())));
    // One more for the `X-Request-Id` every answer gets.
    let mut headers = HeaderMap::with_capacity(match relayed {
        Some(_) => 2,
        None => spans.len() + 1,
    });
    // The framing fields, noted as they pass (instead of a map lookup for
    // each question below): how many `Content-Length` fields, whether the
    // first is digits alone, whether there is a `Transfer-Encoding`.
    // And the first one's number when it is digits alone (most answers:
    // nothing to look up again).
    let (mut lengths, mut plain_length, mut te) = (0, false, false);
    let mut first_length = None;
    for [a, b, c, d] in spans {
        let name = &head[a as usize..b as usize];
        if let Some(r) = relayed.as_mut() {
            match Relayed::place(name) {
                Place::Map => {}
                Place::Connection => {
                    r.push_connection([c, d]);
                    continue;
                }
                Place::Relayed if r.push([a, b], [c, d]) => continue,
                Place::Relayed => return Err(WireError::Malformed("header name")),
            }
        }
        let name = crate::fields::name(name).map_err(|_| WireError::Malformed("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(c as usize..d as usize))
            .map_err(|_| WireError::Malformed("header value"))?;
        if name == header::CONTENT_LENGTH {
            lengths += 1;
            plain_length |= lengths == 1 && value.as_bytes().iter().all(u8::is_ascii_digit);
            if lengths == 1 && plain_length {
                first_length = one_length(value.as_bytes());
            }
        } else if name == header::TRANSFER_ENCODING {
            te = true;
        }
        headers.append(name, value);
    }
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Relayed, `Connection` is not in the map but kept apart.
    let close = match &relayed {
        Some(r) => r.connection_has(b"close"),
        None => has_token(&headers, header::CONNECTION, "close"),
    };
    let mut reusable = version == Version::HTTP_11 && !close;
    // The one number every `Content-Length` says, if they do.
    let length = match lengths {
        0 => None,
        1 if plain_length => first_length,
        _ => content_length(&headers),
    };
    // `5, 5` or two equal fields: passed on as the one number they say
    // (HEAD, 204 and 304 answers too).
    let listed = lengths > 1 || (lengths == 1 && !plain_length);
    if listed && let Some(n) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let decode = if status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || *method == Method::HEAD
    {
        // No body follows, whatever the fields say (RFC 9112 §6.3). One
        // that announces a body (a length other than 0, Transfer-Encoding)
        // may come from a server that sends it after all (a HEAD served as
        // a GET, a 304 written with its body): its bytes, arriving after
        // the connection's idle probe, would be read as the next request's
        // answer, another client's. The connection is not reused. (A HEAD
        // answer's and a 304's length is the representation's, as it
        // should be; the price is a new connection after such answers.)
        if te || (lengths > 0 && length != Some(0)) {
            reusable = false;
        }
        // A length that is no one number (`abc`, `5, 6`) is not passed on
        // for the client's parser to guess at; none is needed here.
        if lengths > 0 && length.is_none() {
            headers.remove(header::CONTENT_LENGTH);
        }
        Decode::Done
    } else if *method == Method::CONNECT && status.is_success() {
        // A tunnel: never carried here; the connection is not used again.
        reusable = false;
        Decode::Done
    } else if te {
        if version == Version::HTTP_10 {
            return Err(WireError::Malformed("Transfer-Encoding on HTTP/1.0"));
        }
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            reusable = false;
        }
        only_chunked(&headers)?;
        Decode::Chunked(Chunk::Size)
    } else if lengths > 0 {
        let Some(n) = length else {
            return Err(WireError::Malformed("Content-Length"));
        };
        if n == 0 {
            Decode::Done
        } else {
            Decode::Length(n)
        }
    } else {
        reusable = false;
        Decode::Eof
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    if let Some(reason) = reason {
        response.extensions_mut().insert(reason);
    }
    Ok(Parsed::Final(Head {
        response,
        relayed,
        decode,
        reusable,
    }))
}

/// Whether a comma-separated header has `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The answer's `Transfer-Encoding` is `chunked` alone: a coding before it
/// (`gzip, chunked`) would be taken off with the header and the coded
/// bytes passed on as if plain (a masked route would read them as the
/// body), and one without `chunked` last is read until close under a
/// coding nobody decodes; both are refused, as nginx does.
fn only_chunked(headers: &HeaderMap) -> Result<(), WireError> {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    match (codings.next(), codings.next()) {
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(WireError::Malformed("a transfer coding other than chunked")),
    }
}

/// Every `Content-Length` value (comma lists too) is the same number.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut found = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for t in v.as_bytes().split(|&b| b == b',') {
            let n = one_length(t)?;
            if found.is_some_and(|f| f != n) {
                return None;
            }
            found = Some(n);
        }
    }
    found
}

/// One `Content-Length` number (surrounding spaces allowed).
fn one_length(t: &[u8]) -> Option<u64> {
    digits_length(t.trim_ascii())
}

/// A `Content-Length` value of digits alone (hyper's rule for one value):
/// 1 to 19 of them, which always fit a `u64`.
pub fn digits_length(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 19 {
        return None;
    }
    t.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// A chunk-size line at the front of `buf`: the bytes it takes, the size
/// and the length of its extensions. `None` until its CRLF has arrived.
fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64, usize)>, WireError> {
    const BAD: WireError = WireError::Malformed("chunk size line");
    let Some(lf) = memchr::memchr(b'\n', buf) else {
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' || lf >= MAX_CHUNK_LINE {
        return Err(BAD);
    }
    let line = &buf[..lf - 1];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(BAD);
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| {
        (n << 4) | u64::from((d as char).to_digit(16).unwrap_or(0))
    });
    // Extensions (`;name=value`) are skipped; spaces and tabs may come
    // before them, nothing else (a bare CR is not whitespace here).
    let rest = &line[digits..];
    let blank = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let rest = &rest[blank..];
    if !rest.is_empty()
        && (rest[0] != b';' || rest.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f))
    {
        return Err(BAD);
    }
    Ok(Some((lf + 1, size, rest.len())))
}

/// The trailer section (its fields and the final CRLF).
fn parse_trailers(fields: &Bytes) -> Result<HeaderMap, WireError> {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let list = match httparse::parse_headers(fields, &mut parsed) {
        // The whole block, or bytes after its end would be dropped unseen
        // (`X: a\n\nJUNK\r\n\r\n`) on a connection then used again.
        Ok(httparse::Status::Complete((n, list))) if n == fields.len() => list,
        Ok(httparse::Status::Complete(_)) => {
            return Err(WireError::Malformed("bytes after the trailer section"));
        }
        Ok(httparse::Status::Partial) => return Err(WireError::Malformed("trailer section")),
        Err(e) => return Err(WireError::Parse(e)),
    };
    let mut map = HeaderMap::with_capacity(list.len());
    for h in list {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| WireError::Malformed("trailer name"))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| WireError::Malformed("trailer value"))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// What a client made of an answer: status, header fields (without
    /// `content-length`, which this codec drops next to
    /// `Transfer-Encoding`), body, trailer fields; `None` if it failed.
    type Outcome = Option<(u16, Vec<(String, Vec<u8>)>, Vec<u8>, Vec<(String, Vec<u8>)>)>;

    fn fields(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = map
            .iter()
            .filter(|(n, _)| **n != header::CONTENT_LENGTH)
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        v.sort();
        v
    }

    /// A server that reads one request head, then writes `answer` in two
    /// pieces (split at `split`) and closes.
    async fn serve(mut io: DuplexStream, answer: Vec<u8>, split: usize) {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let split = split.min(answer.len());
        let _ = io.write_all(&answer[..split]).await;
        tokio::task::yield_now().await;
        let _ = io.write_all(&answer[split..]).await;
        let _ = io.shutdown().await;
    }

    fn request(method: &Method) -> (request::Parts, UpBody) {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = method.clone();
        parts.uri = http::Uri::from_static("/x");
        parts
            .headers
            .insert(header::HOST, HeaderValue::from_static("up"));
        (parts, Empty::new().map_err(|e| match e {}).boxed())
    }

    /// This codec's reading; with `relay`, the relayed fields put back
    /// into the header map.
    async fn ours(method: Method, answer: Vec<u8>, split: usize, relay: bool) -> Outcome {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, answer, split));
        let mut wire = Wire::new(Box::new(client));
        let (mut parts, body) = request(&method);
        let mut up = Upload::new(&mut parts, &[], (&[], &[]), body, &mut BytesMut::new()).ok()?;
        std::future::poll_fn(|cx| wire.poll_upload(&mut up, cx))
            .await
            .ok()?;
        let head = std::future::poll_fn(|cx| wire.poll_head(&method, relay, cx))
            .await
            .ok()?;
        let mut decode = head.decode;
        let (mut body, mut trailers) = (Vec::new(), Vec::new());
        while let Some(frame) = std::future::poll_fn(|cx| wire.poll_body(&mut decode, cx)).await {
            match frame.ok()?.into_data() {
                Ok(d) => body.extend_from_slice(&d),
                Err(f) => trailers = fields(f.trailers_ref()?),
            }
        }
        let mut r = head.response;
        if let Some(relayed) = head.relayed {
            assert!(relay, "fields relayed that were not asked for");
            relayed.into_map(r.headers_mut());
        }
        Some((r.status().as_u16(), fields(r.headers()), body, trailers))
    }

    async fn hypers(method: Method, answer: Vec<u8>, split: usize) -> Outcome {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, answer, split));
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, UpBody>(
            hyper_util::rt::TokioIo::new(client),
        )
        .await
        .ok()?;
        tokio::spawn(conn);
        let (parts, body) = request(&method);
        let resp = send
            .send_request(http::Request::from_parts(parts, body))
            .await
            .ok()?;
        let (head, mut incoming) = resp.into_parts();
        let (mut body, mut trailers) = (Vec::new(), Vec::new());
        while let Some(frame) = incoming.frame().await {
            match frame.ok()?.into_data() {
                Ok(d) => body.extend_from_slice(&d),
                Err(f) => trailers = fields(f.trailers_ref()?),
            }
        }
        Some((head.status.as_u16(), fields(&head.headers), body, trailers))
    }

    const STATUS: &[&str] = &[
        "HTTP/1.1 200 OK",
        "HTTP/1.0 200 OK",
        "HTTP/1.1 204 No Content",
        "HTTP/1.1 304 Not Modified",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK",
        "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Made",
        "HTTP/1.1 101 Switching Protocols",
        "HTTP/1.1 404 Gone Away",
        "HTTP/1.1 20 X",
        "HTTP/1.1 999 Odd",
        "HTTP/2 200 OK",
    ];
    const FIELDS: &[&str] = &[
        "Content-Length: 5",
        "Content-Length: 3",
        "Content-Length: 5, 5",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: +5",
        "Content-Length: 0",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: chunked, gzip",
        "Transfer-Encoding: gzip",
        "Connection: close",
        "CONNECTION: Keep-Alive",
        "content-LENGTH: 5",
        "Date: Sun, 06 Dec 2026 20:00:00 GMT",
        "Set-Cookie: a=b; Path=/",
        "X-A: b",
        "X-A: c",
        "X-Bad : x",
        "X-Fold: a\r\n b",
        "X-Nul: a\x00b",
        "Bad Name: x",
    ];
    const BODIES: &[&str] = &[
        "",
        "hello",
        "hel",
        "hello world",
        "5\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        "5;e=1\r\nhello\r\n0\r\n\r\n",
        "5 \r\nhello\r\n0\r\n\r\n",
        "5\nhello\n0\n\n",
        "5\r\nhelloXX0\r\n\r\n",
        "3\r\nabc\r\n",
        "zz\r\nabc\r\n0\r\n\r\n",
        "0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        "5\r\r\nhello\r\n0\r\n\r\n",
        "5\x0c\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\nX-T: 1\n\n",
        "5\r\nhello\r\n0 ; a=\"b\"\r\n\r\n",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Differential check against hyper's client on the same bytes:
        /// whatever this codec accepts, hyper accepts too and reads the
        /// same status, fields, body and trailers (this codec may refuse
        /// more, never less). Relaying the fields as bytes changes
        /// nothing of that: the same answers are accepted, and their
        /// fields put back in a map are the map's.
        #[test]
        fn never_reads_an_answer_differently_from_hyper(
            status in 0..STATUS.len(),
            picked in proptest::collection::vec(0..FIELDS.len(), 0..4),
            body in 0..BODIES.len(),
            head in any::<bool>(),
            split in 0usize..80,
        ) {
            let mut answer = format!("{}\r\n", STATUS[status]);
            for f in &picked {
                answer.push_str(FIELDS[*f]);
                answer.push_str("\r\n");
            }
            answer.push_str("\r\n");
            answer.push_str(BODIES[body]);
            let method = if head { Method::HEAD } else { Method::GET };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let bytes = answer.clone().into_bytes();
            let (a, b) = rt.block_on(async {
                let a = ours(method.clone(), bytes.clone(), split, false).await;
                let relayed = ours(method.clone(), bytes.clone(), split, true).await;
                prop_assert_eq!(&relayed, &a, "answer relayed: {:?}", answer);
                let b = hypers(method, bytes, split).await;
                Ok((a, b))
            })?;
            if a.is_some() {
                prop_assert_eq!(&a, &b, "answer: {:?}", answer);
            }
        }
    }

    /// A trailer block that ends early (bare LFs) with bytes after it, up to
    /// the CRLF CRLF the block is cut at: refused, not read as trailers with
    /// the rest dropped unseen.
    #[tokio::test]
    async fn bytes_after_the_trailer_section_are_refused() {
        let answer =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX: a\n\nJUNK\r\n\r\n";
        for split in [0, 40, 1000] {
            assert_eq!(ours(Method::GET, answer.to_vec(), split, false).await, None);
        }
        // A well-formed block is still taken.
        let ok =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX: a\r\n\r\n";
        assert!(ours(Method::GET, ok.to_vec(), 0, false).await.is_some());
    }

    /// The same reading as hyper's on answers both must take, so that the
    /// differential check below is not vacuous.
    #[tokio::test]
    async fn reads_what_hyper_reads_on_well_formed_answers() {
        let cases: &[(&str, &[u8], &[u8])] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                b"hello",
                b"",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\n",
                b"hello!",
                b"x-t",
            ),
            (
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                b"ok",
                b"",
            ),
            ("HTTP/1.0 200 OK\r\n\r\nuntil close", b"until close", b""),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                b"",
                b"",
            ),
        ];
        for (answer, body, trailer) in cases {
            for (split, relay) in [(0, false), (7, true), (20, false), (1000, true)] {
                let a = ours(Method::GET, answer.as_bytes().to_vec(), split, relay).await;
                let b = hypers(Method::GET, answer.as_bytes().to_vec(), split).await;
                let (_, _, got, trailers) =
                    a.clone().unwrap_or_else(|| panic!("refused: {answer:?}"));
                assert_eq!(&got, body, "{answer:?}");
                assert_eq!(
                    trailers.first().map(|t| t.0.as_bytes()).unwrap_or(b""),
                    *trailer
                );
                assert_eq!(a, b, "{answer:?}");
            }
        }
        // HEAD: the length describes a body that is not sent.
        let a = ours(
            Method::HEAD,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec(),
            3,
            true,
        )
        .await;
        assert_eq!(a.unwrap().2, b"");
    }

    /// The bytes a request puts on the wire, its body given as `chunks`
    /// of unknown total length.
    async fn sent(
        method: Method,
        fields: &[(&str, &str)],
        chunks: &[&'static str],
    ) -> Result<String, WireError> {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let (mut parts, _) = request(&method);
        for (n, v) in fields {
            parts.headers.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let mut up = Upload::new(&mut parts, &[], (&[], &[]), body, &mut BytesMut::new())?;
        let mut wire = Wire::new(Box::new(client));
        std::future::poll_fn(|cx| wire.poll_upload(&mut up, cx)).await?;
        drop(wire);
        let mut out = String::new();
        server.read_to_string(&mut out).await.unwrap();
        Ok(out)
    }

    #[tokio::test]
    async fn request_bodies_are_framed_here_and_never_smuggled() {
        // Unknown length: chunked, the caller's Transfer-Encoding ignored.
        let out = sent(
            Method::POST,
            &[("transfer-encoding", "gzip")],
            &["hello", "!"],
        )
        .await
        .unwrap();
        assert!(out.starts_with("POST /x HTTP/1.1\r\n"), "{out}");
        assert!(
            out.ends_with("\r\n\r\n5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"),
            "{out}"
        );
        assert_eq!(out.matches("transfer-encoding").count(), 1, "{out}");
        assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
        // A Content-Length is kept and must be matched.
        let out = sent(Method::PUT, &[("content-length", "6")], &["hello", "!"])
            .await
            .unwrap();
        assert!(out.contains("content-length: 6\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nhello!"), "{out}");
        assert!(matches!(
            sent(Method::PUT, &[("content-length", "3")], &["hello"]).await,
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            sent(Method::PUT, &[("content-length", "9")], &["hello"]).await,
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            sent(Method::POST, &[("content-length", "5")], &[]).await,
            Err(WireError::Malformed(_))
        ));
        // A body of unknown length on GET is not sent: an upstream that
        // ignores bodies on GET would read it as a second request.
        let out = sent(Method::GET, &[], &["0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n"])
            .await
            .unwrap();
        assert!(out.ends_with("host: up\r\n\r\n"), "{out}");
        assert!(
            !out.contains("/admin") && !out.contains("transfer-encoding"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_large_answer_is_read_in_growing_pieces_and_the_buffer_let_go_after() {
        let size = 1 << 20;
        let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").into_bytes();
        answer.extend(std::iter::repeat_n(b'x', size));
        let (client, server) = tokio::io::duplex(2 << 20);
        tokio::spawn(serve(server, answer, usize::MAX));
        let mut wire = Wire::new(Box::new(client));
        let (mut parts, body) = request(&Method::GET);
        let mut up = Upload::new(&mut parts, &[], (&[], &[]), body, &mut BytesMut::new()).unwrap();
        std::future::poll_fn(|cx| wire.poll_upload(&mut up, cx))
            .await
            .unwrap();
        let head = std::future::poll_fn(|cx| wire.poll_head(&Method::GET, false, cx))
            .await
            .unwrap();
        let mut decode = head.decode;
        let (mut total, mut largest) = (0, 0);
        while let Some(frame) = std::future::poll_fn(|cx| wire.poll_body(&mut decode, cx)).await {
            let n = frame.unwrap().into_data().unwrap().len();
            total += n;
            largest = largest.max(n);
        }
        assert_eq!(total, size);
        assert!(largest >= 128 * 1024, "largest piece {largest}");
        assert!(wire.read_size > READ_FIRST);
        wire.shrink();
        assert_eq!(wire.read_size, READ_FIRST);
        assert!(wire.rbuf.capacity() <= READ_FIRST);
    }

    #[test]
    fn only_a_request_without_a_body_can_be_sent_again_and_then_byte_for_byte() {
        let (mut parts, body) = request(&Method::GET);
        let up = Upload::new(&mut parts, &[], (&[], &[]), body, &mut BytesMut::new()).unwrap();
        let again = up.again().expect("a bodiless request is kept");
        assert_eq!(again.out, up.out);
        assert!(again.untouched() && again.body.is_none());
        let (mut parts, _) = request(&Method::PUT);
        let body = http_body_util::Full::new(Bytes::from_static(b"x"))
            .map_err(|e| match e {})
            .boxed();
        let up = Upload::new(&mut parts, &[], (&[], &[]), body, &mut BytesMut::new()).unwrap();
        assert!(up.again().is_none(), "a body is streamed, not kept");
    }

    /// Answer fields for the relay-vs-map comparison: every kind the
    /// cleaning treats apart, in odd spellings and bytes.
    const CLEANED: &[&str] = &[
        "Content-Type: application/json",
        "content-length: 2",
        "Content-Length: 2",
        "Transfer-Encoding: chunked",
        "Connection: keep-alive, X-Secret",
        "CONNECTION: close",
        "Connection: X-Secret, \u{e9}",
        "Connection: Content-Length",
        "Keep-Alive: timeout=5",
        "Proxy-Connection: keep-alive",
        "TE: trailers",
        "Trailer: X-T",
        "Upgrade: h2c",
        "Proxy-Authenticate: Basic",
        "Proxy-Authorization: Basic eA==",
        "X-Secret: 1",
        "X-Rolegate-User: admin",
        "x-ROLEGATE-roles: root",
        "Set-Cookie: rg_session=forged; Path=/",
        "Set-Cookie: RG.Session=forged",
        "Set-Cookie: theme=dark",
        "X-Request-Id: made-upstream",
        "Date: Sun, 06 Dec 2026 20:00:00 GMT",
        "X-Del: a\u{7f}b",
        "X-Obs: \u{e9}\u{ff}",
        "X-Tab: a\tb",
        "X-Empty:",
        "X-Bad : x",
    ];

    /// An answer head read both ways and cleaned as the pipeline cleans
    /// it: the fields left (the upstream's `X-Request-Id` replaced
    /// afterwards on both paths), the removals logged, the body's framing
    /// and the connection's reuse; `None` if refused.
    type Cleaned = Option<(Vec<(String, Vec<u8>)>, Vec<String>, Decode, bool)>;

    fn read_and_clean(head: &[u8], method: &Method, relay: bool) -> Cleaned {
        let fwd = crate::proxy::headers::sample_forward();
        let Ok(Parsed::Final(h)) = parse_head(&mut BytesMut::from(head), method, relay) else {
            return None;
        };
        let mut map = h.response.headers().clone();
        let mut removed = match h.relayed {
            Some(mut relayed) => {
                let removed = relayed.clean(&mut map, &fwd);
                relayed.into_map(&mut map);
                removed
            }
            None => {
                assert!(!relay, "nothing relayed");
                let removed = crate::proxy::headers::clean_response(&mut map, &fwd);
                map.remove("x-request-id");
                removed
            }
        };
        let mut removed: Vec<String> = removed.drain(..).map(|n| n.to_string()).collect();
        removed.sort();
        let mut fields: Vec<_> = map
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        fields.sort();
        Some((fields, removed, h.decode, h.reusable))
    }

    proptest! {
        /// Relaying an answer's fields (`relayed.rs`) and cleaning them
        /// there leaves what reading them into a header map and cleaning
        /// that leaves: the same answers accepted, the same fields kept,
        /// the same removals logged, the same framing and reuse.
        #[test]
        fn relayed_answers_are_read_and_cleaned_as_header_maps_are(
            picked in proptest::collection::vec(0..CLEANED.len(), 0..12),
            status in prop::sample::select(vec!["HTTP/1.1 200 OK", "HTTP/1.1 204 No Content", "HTTP/1.1 304 Not Modified", "HTTP/1.0 200 OK"]),
            bare_lf in any::<bool>(),
            head in any::<bool>(),
        ) {
            let eol = if bare_lf { "\n" } else { "\r\n" };
            let mut text = format!("{status}{eol}");
            for &i in &picked {
                text.push_str(CLEANED[i]);
                text.push_str(eol);
            }
            text.push_str(eol);
            let method = if head { Method::HEAD } else { Method::GET };
            let by_map = read_and_clean(text.as_bytes(), &method, false);
            let relayed = read_and_clean(text.as_bytes(), &method, true);
            prop_assert_eq!(relayed, by_map, "head: {:?}", text);
        }
    }

    #[test]
    fn connection_close_ends_the_connection_whether_fields_are_relayed_or_not() {
        let reusable = |answer: &[u8], relay: bool| match parse_head(
            &mut BytesMut::from(answer),
            &Method::GET,
            relay,
        ) {
            Ok(Parsed::Final(h)) => h.reusable,
            _ => panic!("not a final head"),
        };
        for relay in [false, true] {
            let close =
                b"HTTP/1.1 200 OK\r\nX-A: 1\r\nconnection: Foo, Close\r\nContent-Length: 0\r\n\r\n";
            assert!(!reusable(close, relay), "relay: {relay}");
            let keep = b"HTTP/1.1 200 OK\r\nCONNECTION: keep-alive\r\nContent-Length: 0\r\n\r\n";
            assert!(reusable(keep, relay), "relay: {relay}");
        }
    }

    /// A 204, a 304 or a HEAD answer that announces a body (a length
    /// other than 0, Transfer-Encoding): no body is read, and the
    /// connection is not used again (late bytes must not become the next
    /// request's answer). One that announces none is reused.
    #[test]
    fn bodyless_answers_announcing_a_body_end_the_connection() {
        let head = |answer: &str, method: Method| match parse_head(
            &mut BytesMut::from(answer.as_bytes()),
            &method,
            false,
        ) {
            Ok(Parsed::Final(h)) => (h.reusable, matches!(h.decode, Decode::Done)),
            _ => panic!("not a final head: {answer:?}"),
        };
        for a in [
            "HTTP/1.1 204 No Content\r\nContent-Length: 120\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 120\r\n\r\n",
        ] {
            assert_eq!(head(a, Method::GET), (false, true), "{a:?}");
        }
        for a in [
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert_eq!(head(a, Method::GET), (true, true), "{a:?}");
        }
        for a in [
            "HTTP/1.1 200 OK\r\nContent-Length: 120\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(head(a, Method::HEAD), (false, true), "{a:?}");
        }
        for a in [
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert_eq!(head(a, Method::HEAD), (true, true), "{a:?}");
        }
        // A length that is no one number is dropped, not passed on.
        for (a, method) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
                Method::HEAD,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
                Method::HEAD,
            ),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: x\r\n\r\n",
                Method::GET,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\n",
                Method::GET,
            ),
        ] {
            for relay in [false, true] {
                let Ok(Parsed::Final(h)) =
                    parse_head(&mut BytesMut::from(a.as_bytes()), &method, relay)
                else {
                    panic!("not a final head: {a:?}");
                };
                assert!(
                    !h.response.headers().contains_key(header::CONTENT_LENGTH),
                    "{a:?} relay {relay}"
                );
            }
        }
    }

    /// `Content-Length: 5, 5` (or the field twice) is passed on as `5`, so
    /// every client reads one number whatever the route.
    #[test]
    fn equal_content_lengths_are_passed_on_as_one() {
        for a in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello",
        ] {
            for (relay, method) in [
                (false, Method::GET),
                (true, Method::GET),
                (false, Method::HEAD),
                (true, Method::HEAD),
            ] {
                let Ok(Parsed::Final(h)) = parse_head(&mut BytesMut::from(a), &method, relay)
                else {
                    panic!("not a final head");
                };
                if method == Method::GET {
                    assert!(matches!(h.decode, Decode::Length(5)));
                } else {
                    assert!(matches!(h.decode, Decode::Done));
                }
                let lengths: Vec<_> = h
                    .response
                    .headers()
                    .get_all(header::CONTENT_LENGTH)
                    .iter()
                    .collect();
                assert_eq!(lengths, [&HeaderValue::from(5)], "relay {relay}");
            }
        }
    }

    /// The head and trailer limits hold when the whole section arrives in
    /// one read, not only while it is incomplete.
    #[tokio::test]
    async fn head_and_trailer_limits_hold_for_sections_read_whole() {
        let big = "a".repeat(20 * 1024);
        let trailers = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX: {big}\r\n\r\n"
        );
        assert_eq!(
            ours(Method::GET, trailers.into_bytes(), 0, false).await,
            None
        );
        let field = "b".repeat(4000);
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..99 {
            head.push_str(&format!("X-{i}: {field}\r\n"));
        }
        head.push_str("Content-Length: 0\r\n\r\n");
        assert!(head.len() < MAX_HEAD, "{}", head.len());
        assert!(
            ours(Method::GET, head.into_bytes(), 0, false)
                .await
                .is_some()
        );
        let field = "b".repeat(4300);
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..99 {
            head.push_str(&format!("X-{i}: {field}\r\n"));
        }
        head.push_str("Content-Length: 0\r\n\r\n");
        assert!(head.len() > MAX_HEAD, "{}", head.len());
        assert_eq!(ours(Method::GET, head.into_bytes(), 0, false).await, None);
    }

    #[test]
    fn chunk_size_lines() {
        assert_eq!(chunk_size(b"1a\r\nx").unwrap(), Some((4, 26, 0)));
        assert_eq!(chunk_size(b"0\r\n").unwrap(), Some((3, 0, 0)));
        assert_eq!(chunk_size(b"5 ;ext=1\r\n").unwrap(), Some((10, 5, 6)));
        assert_eq!(chunk_size(b"5\t;e\r\n").unwrap(), Some((6, 5, 2)));
        assert_eq!(
            chunk_size(b"ffffffffffffffff\r\n").unwrap(),
            Some((18, u64::MAX, 0))
        );
        assert_eq!(chunk_size(b"5").unwrap(), None);
        let long = format!("5;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert!(
            chunk_size(long.as_bytes()).is_err(),
            "a size line over 4 KiB"
        );
        for bad in [
            &b"5\n"[..],
            b"\r\n",
            b"x\r\n",
            b"10000000000000000\r\n",
            b"5 6\r\n",
            b"5;a\x01\r\n",
            b"+5\r\n",
            // A bare CR or a form feed is not whitespace (hyper refuses both).
            b"5\r\r\n",
            b"5\x0c\r\n",
            b"5;a\rb\r\n",
        ] {
            assert!(
                chunk_size(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn content_lengths_must_agree() {
        let map = |vals: &[&str]| {
            let mut m = HeaderMap::new();
            for v in vals {
                m.append(header::CONTENT_LENGTH, HeaderValue::from_str(v).unwrap());
            }
            m
        };
        assert_eq!(content_length(&map(&["42"])), Some(42));
        assert_eq!(content_length(&map(&["42", "42"])), Some(42));
        assert_eq!(content_length(&map(&["42, 42"])), Some(42));
        assert_eq!(content_length(&map(&["42", "43"])), None);
        assert_eq!(content_length(&map(&["-1"])), None);
        assert_eq!(content_length(&map(&["+1"])), None);
        assert_eq!(content_length(&map(&[""])), None);
        assert_eq!(content_length(&map(&["99999999999999999999"])), None);
        // The most digits taken: 19, whose largest number fits.
        assert_eq!(
            content_length(&map(&["9999999999999999999"])),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(content_length(&map(&["0000000000000000042"])), Some(42));
        assert_eq!(content_length(&map(&["00000000000000000042"])), None);
        assert_eq!(content_length(&map(&["4 2"])), None);
        assert_eq!(content_length(&map(&["42a"])), None);
        assert_eq!(content_length(&map(&["0x2a"])), None);
    }

    proptest::proptest! {
        /// One number as the standard parse reads it: digits alone, at
        /// most 19 of them, spaces and tabs around allowed.
        #[test]
        fn one_length_reads_what_the_standard_parse_reads(t in "[ \t0-9a+-]{0,22}") {
            let trimmed = t.trim_matches(|c: char| c.is_ascii_whitespace());
            let standard = (!trimmed.is_empty()
                && trimmed.len() <= 19
                && trimmed.bytes().all(|b| b.is_ascii_digit()))
            .then(|| trimmed.parse::<u64>().ok())
            .flatten();
            proptest::prop_assert_eq!(one_length(t.as_bytes()), standard);
        }
    }

    #[test]
    fn transfer_codings() {
        let map = |vals: &[&str]| {
            let mut m = HeaderMap::new();
            for v in vals {
                m.append(header::TRANSFER_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            m
        };
        assert!(only_chunked(&map(&["chunked"])).is_ok());
        assert!(only_chunked(&map(&[" Chunked "])).is_ok());
        for bad in [
            &["gzip, Chunked"][..],
            &["gzip", "chunked"],
            &["gzip"],
            &["chunked, gzip"],
            &["chunked", "chunked"],
            &["chunked, "],
            &["identity"],
        ] {
            assert!(only_chunked(&map(bad)).is_err(), "{bad:?}");
        }
    }
}
