//! The HTTP/1.1 server side for plain requests (phase 0, below the tap).
//!
//! Most requests a gateway sees are bodiless `GET`s on keep-alive
//! connections. For those, hyper's server parses each head, the wire tap
//! (`proxy::wire`) parses it a second time to see what hyper hides, and
//! hyper's dispatcher drives the exchange. This module serves them itself:
//! each head is parsed once, with the parser hyper uses (`httparse`,
//! default configuration), into the `http::Request` and a [`RawHead`]
//! saying it was parsed here, from the head as sent (no fragment, a clean
//! framing: nothing for the pipeline to compare; handed beside the
//! request, not among its extensions: that would cost a map per request);
//! the answer is encoded
//! as hyper encodes it (same status line, header order, framing and `date`
//! header), an upstream's relayed fields (`relayed.rs`) written as they
//! came.
//!
//! It takes only what it can serve exactly as hyper would, and hands the
//! connection over for good on the first head it does not take: HTTP/1.0,
//! `CONNECT`, a request body (`Content-Length` other than `0`,
//! `Transfer-Encoding`), `Expect`, `Upgrade` (websockets), `TE`, a `#` in
//! the target, more than [`MAX_HEADERS`] fields, a head it cannot parse or
//! over `listen.max_header_bytes`. The caller then serves the rest of the
//! connection with hyper and the tap, starting from the bytes read so far
//! ([`Rewind`]), so every refusal and edge case stays hyper's.
//!
//! Owns: reading heads, the head/keep-alive timers, encoding answers.
//! Must not: decide anything about a request (the pipeline does), or
//! answer anything itself: a head it cannot serve goes to hyper.

use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::body::ClientBody;
use super::pipeline::RespBody;
use super::relayed::Relayed;
use super::wire::RawHead;

/// Header fields a head may have to be served here (hyper's default
/// limit; a head with more goes to hyper, whose limit the listener sets).
pub const MAX_HEADERS: usize = 100;

/// Longest request target hyper takes (it answers a longer one `414`).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;

/// Read size for heads (hyper's initial read buffer).
const READ_SIZE: usize = 8 * 1024;

/// Data frames up to this size are copied behind the head or chunk line
/// and written with it; larger ones are written from where they are.
const COPY_MAX: usize = 8 * 1024;

/// What has been buffered is written once it is this large.
const FLUSH_AT: usize = 64 * 1024;

/// At shutdown, how long a connection that has not sent its first request
/// yet gets to start one (it was accepted, so its client is sending).
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// The connection limits this side enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `listen.max_header_bytes`: a head this long or longer goes to hyper.
    pub max_header_bytes: usize,
    /// `listen.header_read_timeout`: from the moment the connection waits
    /// for a head to its last byte.
    pub header_read_timeout: Duration,
    /// `listen.keepalive_timeout`: idle time before the first byte of the
    /// next head (never more than `header_read_timeout`).
    pub keepalive_timeout: Duration,
}

/// How a connection left this side.
#[derive(Debug)]
pub enum Outcome {
    /// Closed (by either end, a timeout, a drain, or an answer that
    /// cannot be followed by another).
    Closed,
    /// A head this side does not serve: hyper serves the rest of the
    /// connection, starting with these bytes.
    Handover(BytesMut),
}

/// What the service answers: the response, and an upstream's fields
/// relayed as its bytes (written before the response's own).
pub type Served = (Response<RespBody>, Option<Box<Relayed>>);

/// Serves requests on `io` until it closes or a head must go to hyper.
/// `drain` resolving (or its sender going away) lets the request in
/// flight finish and closes the connection after it.
pub async fn serve<I, S, F>(
    io: &mut I,
    limits: &Limits,
    drain: &mut tokio::sync::watch::Receiver<()>,
    mut service: S,
) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(Box<Request<ClientBody>>, RawHead) -> F,
    F: Future<Output = Served>,
{
    let mut rbuf = BytesMut::new();
    let mut wbuf: Vec<u8> = Vec::new();
    let mut served = false;
    let mut draining = false;
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    // One wait for the drain for the whole connection, registered once:
    // a `changed()` made afresh for every head would join and leave the
    // channel's waiter list (a lock each way) on every request.
    let mut watch = drain.clone();
    let drained = async move {
        let _ = watch.changed().await;
    };
    tokio::pin!(drained);
    loop {
        // The head: its whole within `header_read_timeout` of the moment
        // the connection waits for it, its first byte also within
        // `keepalive_timeout`.
        let start = Instant::now();
        let mut head_until = start + limits.header_read_timeout;
        let mut idle_until = start + limits.header_read_timeout.min(limits.keepalive_timeout);
        let (req, raw, keep_alive) = loop {
            if !rbuf.is_empty() {
                match parse(&mut rbuf, limits.max_header_bytes) {
                    Parsed::Request(req, raw, keep_alive) => break (req, raw, keep_alive),
                    Parsed::Partial => {}
                    Parsed::Handover => {
                        if draining {
                            // hyper is told too: it finishes this request
                            // and closes.
                            drain.mark_changed();
                        }
                        return Outcome::Handover(rbuf);
                    }
                }
            }
            if draining && rbuf.is_empty() && served {
                return Outcome::Closed;
            }
            timer.as_mut().reset(if rbuf.is_empty() {
                idle_until
            } else {
                head_until
            });
            rbuf.reserve(READ_SIZE);
            tokio::select! {
                biased;
                r = io.read_buf(&mut rbuf) => match r {
                    Ok(0) | Err(_) => return Outcome::Closed,
                    Ok(_) => {}
                },
                () = &mut drained, if !draining => {
                    // A head on its way (or a first request) gets a short
                    // grace, no more.
                    draining = true;
                    let grace = Instant::now() + FIRST_REQUEST_GRACE;
                    idle_until = idle_until.min(grace);
                    head_until = head_until.min(grace);
                }
                () = &mut timer => {
                    tracing::debug!("closing idle connection");
                    return Outcome::Closed;
                }
            }
        };
        served = true;
        let head = req.method() == Method::HEAD;
        // The exchange; a client that closes its end meanwhile takes it
        // with it (hyper's default: no half-closed connections).
        let exchange = service(req, raw);
        tokio::pin!(exchange);
        let resp = loop {
            tokio::select! {
                biased;
                resp = &mut exchange => break resp,
                // Only while nothing is buffered (as hyper: a pipelined
                // head waits its turn, and bounds what is read ahead).
                r = io.read_buf(&mut rbuf), if rbuf.is_empty() => match r {
                    Ok(0) | Err(_) => return Outcome::Closed,
                    Ok(_) => {}
                },
            }
        };
        // A drain meanwhile (or the sender gone) closes the connection
        // after this answer: read here, where the answer is framed.
        draining |= !matches!(drain.has_changed(), Ok(false));
        let (resp, relayed) = resp;
        let written = write_response(
            io,
            &mut wbuf,
            &mut rbuf,
            resp,
            relayed.as_deref(),
            head,
            keep_alive && !draining,
        )
        .await;
        if wbuf.capacity() > READ_SIZE * 2 {
            // An idle connection does not keep a large answer's buffer.
            wbuf = Vec::new();
        }
        match written {
            Ok(true) => {}
            Ok(false) => {
                let _ = io.shutdown().await;
                return Outcome::Closed;
            }
            Err(e) => {
                tracing::debug!(error = %e, "connection closed while answering");
                return Outcome::Closed;
            }
        }
    }
}

/// What [`parse`] found at the front of the buffer.
enum Parsed {
    /// A head served here, split off the buffer, with its raw head;
    /// whether the connection may be kept alive after it. (Boxed: the
    /// pipeline's phases pass it down by the pointer, not by its ~260
    /// bytes at every step.)
    Request(Box<Request<ClientBody>>, RawHead, bool),
    /// Not all there yet (and under the head limit).
    Partial,
    /// A head hyper must serve (the buffer is left as it was).
    Handover,
}

/// One request head off the front of `buf`, if it is one served here.
fn parse(buf: &mut BytesMut, max_head: usize) -> Parsed {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut spans: smallvec::SmallVec<[[u32; 4]; 16]> = smallvec::SmallVec::new();
    let mut keep_alive = true;
    let (len, method, target) = {
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) if len < max_head && len <= u32::MAX as usize => {
                len
            }
            Ok(httparse::Status::Partial) if buf.len() < max_head => return Parsed::Partial,
            // Too many fields for this side, but the head is not all
            // there: read on (under this side's head timer) so that hyper
            // gets the whole head and does not start its timer afresh.
            Err(httparse::Error::TooManyHeaders)
                if buf.len() < max_head && !has_blank_line(buf) =>
            {
                return Parsed::Partial;
            }
            _ => return Parsed::Handover,
        };
        if req.version != Some(1) {
            return Parsed::Handover;
        }
        let (Some(method), Some(path)) = (req.method, req.path) else {
            return Parsed::Handover;
        };
        if path.len() > MAX_URI_LEN || path.as_bytes().contains(&b'#') {
            return Parsed::Handover;
        }
        let base = buf.as_ptr() as usize;
        let mut length_zero = false;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                if length_zero || h.value != b"0" {
                    return Parsed::Handover;
                }
                length_zero = true;
            } else if name.eq_ignore_ascii_case(b"connection") {
                keep_alive &= !has_token(h.value, b"close");
            } else if name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"upgrade")
                || name.eq_ignore_ascii_case(b"expect")
                || name.eq_ignore_ascii_case(b"te")
            {
                return Parsed::Handover;
            }
            let n = h.name.as_ptr() as usize - base;
            let v = h.value.as_ptr() as usize - base;
            spans.push([
                n as u32,
                (n + h.name.len()) as u32,
                v as u32,
                (v + h.value.len()) as u32,
            ]);
        }
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return Parsed::Handover;
        };
        if method == Method::CONNECT {
            return Parsed::Handover;
        }
        let t = path.as_ptr() as usize - base;
        (len, method, t..t + path.len())
    };
    let head = buf.split_to(len).freeze();
    let Some((uri, headers)) = request_parts(&head, target.clone(), &spans) else {
        // Handed over as it was read (values httparse takes but http
        // refuses: never seen, but hyper's to answer).
        let mut whole = BytesMut::with_capacity(head.len() + buf.len());
        whole.extend_from_slice(&head);
        whole.extend_from_slice(buf);
        *buf = whole;
        return Parsed::Handover;
    };
    // Made by the parse that made the request: nothing of it to slice
    // again for the pipeline to compare.
    let raw_head = RawHead::served(target.len());
    let mut req = Box::new(Request::new(ClientBody::Empty));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parsed::Request(req, raw_head, keep_alive)
}

/// Header fields the pipeline may add to a request's map before it goes
/// upstream: `Host` (`preserve_host`) and `Accept-Encoding` on masked
/// routes. (The forwarding and identity fields are written beside the map
/// by the HTTP/1.1 client; hyper's clients reserve room for them.)
const FORWARD_HEADROOM: usize = 2;

/// The URI and header map of a head split off the buffer (sharing its
/// bytes); `None` if http refuses one of them.
fn request_parts(
    head: &Bytes,
    target: std::ops::Range<usize>,
    spans: &[[u32; 4]],
) -> Option<(http::Uri, HeaderMap)> {
    let uri = http::Uri::from_maybe_shared(head.slice(target)).ok()?;
    // Room for what the forward phase adds: the map is not grown and
    // rehashed on the way upstream.
    let mut headers = HeaderMap::with_capacity(spans.len() + FORWARD_HEADROOM);
    for &[a, b, c, d] in spans {
        let name = crate::fields::name(&head[a as usize..b as usize]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(c as usize..d as usize)).ok()?;
        headers.append(name, value);
    }
    Some((uri, headers))
}

/// Whether `buf` holds the blank line that ends a head (CRLF or bare LF
/// line ends, as `httparse` takes them).
fn has_blank_line(buf: &[u8]) -> bool {
    memchr::memmem::find(buf, b"\n\r\n").is_some() || memchr::memmem::find(buf, b"\n\n").is_some()
}

/// Whether a comma-separated header value has `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// How an answer's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing1 {
    /// Exactly this many bytes more (`Content-Length`, or none at all).
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 answer of unknown length).
    Close,
}

/// What a response body says of its length (hyper's view: `None` for a
/// body that is already at its end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLength {
    Known(u64),
    Unknown,
}

/// Statuses and methods whose answers have a body (hyper's rules; no
/// `CONNECT` is served here).
fn can_have_body(head: bool, status: StatusCode) -> bool {
    !head && can_have_content_length(status)
}

fn can_have_content_length(status: StatusCode) -> bool {
    !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

/// The encoded answer head, in `dst`: how its body is framed and whether
/// the connection must close after it. `Err` when the answer's own
/// framing headers contradict each other (hyper then closes the
/// connection without an answer).
fn encode_head(
    parts: &mut http::response::Parts,
    relayed: Option<&Relayed>,
    body: Option<BodyLength>,
    head: bool,
    keep_alive: bool,
    dst: &mut Vec<u8>,
) -> Result<(Framing1, bool), ()> {
    let mut relayed = relayed;
    let mut is_last = !keep_alive;
    if is_last
        && !parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"close"))
    {
        // The client is told (as hyper tells it).
        parts
            .headers
            .append(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let mut body = body;
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        is_last = true;
    } else if parts.status.is_informational() {
        // hyper answers a 1xx with an empty 500 and closes.
        parts.status = StatusCode::INTERNAL_SERVER_ERROR;
        parts.version = Version::HTTP_11;
        parts.headers.clear();
        parts.extensions.clear();
        relayed = None;
        body = None;
        is_last = true;
    }
    let http10 = parts.version == Version::HTTP_10;
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if !http10 && parts.status == StatusCode::OK && reason.is_none() {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        dst.extend_from_slice(parts.status.as_str().as_bytes());
        dst.push(b' ');
        match reason {
            Some(r) => dst.extend_from_slice(r.as_bytes()),
            None => dst.extend_from_slice(
                parts
                    .status
                    .canonical_reason()
                    .unwrap_or("<none>")
                    .as_bytes(),
            ),
        }
        dst.extend_from_slice(b"\r\n");
    }
    let can_chunk = !http10 && can_have_body(head, parts.status);
    let mut framing = Framing1::Length(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    let mut prev_len: Option<u64> = None;
    // A joined line (content-length, transfer-encoding, connection,
    // trailer) still open; and whether `chunked` must end it.
    let mut open: Option<HeaderName> = None;
    let mut must_chunk = false;
    let close_open = |dst: &mut Vec<u8>, open: &mut Option<HeaderName>, must_chunk: bool| {
        if open.take().is_some() {
            dst.extend_from_slice(if must_chunk {
                b", chunked\r\n"
            } else {
                b"\r\n"
            });
        }
    };
    // An upstream's fields as it wrote them (`relayed.rs`), then the map's
    // (framing, and what the gateway adds).
    if let Some(relayed) = relayed {
        wrote_date = relayed.write(dst);
    }
    let mut last: Option<&HeaderName> = None;
    for (name, value) in parts.headers.iter() {
        let same = last == Some(name);
        last = Some(name);
        if !same {
            close_open(dst, &mut open, must_chunk);
        }
        let continues = open.as_ref() == Some(name);
        if *name == header::CONTENT_LENGTH {
            if wrote_len && !continues {
                return Err(());
            }
            match body {
                Some(BodyLength::Known(n)) => {
                    if !continues {
                        framing = Framing1::Length(n);
                        dst.extend_from_slice(b"content-length: ");
                        dst.extend_from_slice(value.as_bytes());
                        wrote_len = true;
                        open = Some(name.clone());
                    }
                    continue;
                }
                Some(BodyLength::Unknown) => {
                    let Some(n) = super::h1codec::digits_length(value.as_bytes()) else {
                        return Err(());
                    };
                    if let Some(p) = prev_len {
                        if p != n {
                            return Err(());
                        }
                        continue;
                    }
                    framing = Framing1::Length(n);
                    dst.extend_from_slice(b"content-length: ");
                    dst.extend_from_slice(value.as_bytes());
                    wrote_len = true;
                    open = Some(name.clone());
                    prev_len = Some(n);
                    continue;
                }
                None if !head => continue,
                None => wrote_len = true,
            }
        } else if *name == header::TRANSFER_ENCODING {
            if wrote_len && !continues {
                return Err(());
            }
            if !can_chunk {
                continue;
            }
            wrote_len = true;
            must_chunk = !is_chunked(value.as_bytes());
            if continues {
                dst.extend_from_slice(b", ");
            } else {
                framing = Framing1::Chunked;
                dst.extend_from_slice(b"transfer-encoding: ");
                open = Some(name.clone());
            }
            dst.extend_from_slice(value.as_bytes());
            continue;
        } else if *name == header::CONNECTION || *name == header::TRAILER {
            if *name == header::CONNECTION {
                is_last |= has_token(value.as_bytes(), b"close");
            } else if !can_chunk {
                continue;
            }
            if continues {
                dst.extend_from_slice(b", ");
            } else {
                dst.extend_from_slice(name.as_str().as_bytes());
                dst.extend_from_slice(b": ");
                open = Some(name.clone());
            }
            dst.extend_from_slice(value.as_bytes());
            continue;
        } else if *name == header::DATE {
            wrote_date = true;
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    close_open(dst, &mut open, must_chunk);
    if !wrote_len {
        framing = match body {
            Some(BodyLength::Unknown) if can_chunk => {
                dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing1::Chunked
            }
            Some(BodyLength::Unknown) => Framing1::Close,
            None | Some(BodyLength::Known(0)) => {
                if can_have_content_length(parts.status) && !head {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing1::Length(0)
            }
            Some(BodyLength::Known(n)) => {
                if can_have_content_length(parts.status) {
                    dst.extend_from_slice(b"content-length: ");
                    dst.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    dst.extend_from_slice(b"\r\n");
                    Framing1::Length(n)
                } else {
                    Framing1::Length(0)
                }
            }
        };
    }
    if !can_have_body(head, parts.status) {
        framing = Framing1::Length(0);
    }
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        http_date(dst);
        dst.extend_from_slice(b"\r\n\r\n");
    } else {
        dst.extend_from_slice(b"\r\n");
    }
    if framing == Framing1::Close {
        is_last = true;
    }
    Ok((framing, is_last))
}

/// The `date` header's value for now (RFC 9110 IMF-fixdate), made once
/// per second per thread, as hyper caches it.
fn http_date(dst: &mut Vec<u8>) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, [u8; 29])> =
            const { std::cell::RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != secs {
            let date = httpdate::fmt_http_date(now);
            if date.len() == text.len() {
                text.copy_from_slice(date.as_bytes());
                *second = secs;
            }
        }
        dst.extend_from_slice(text);
    });
}

/// Whether the last coding of a `Transfer-Encoding` value is `chunked`.
fn is_chunked(v: &[u8]) -> bool {
    v.rsplit(|&b| b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Writes one answer; whether the connection may carry another.
async fn write_response<I>(
    io: &mut I,
    wbuf: &mut Vec<u8>,
    rbuf: &mut BytesMut,
    resp: Response<RespBody>,
    relayed: Option<&Relayed>,
    head: bool,
    keep_alive: bool,
) -> io::Result<bool>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let (mut parts, mut body) = resp.into_parts();
    let length = if body.is_end_stream() {
        None
    } else {
        Some(match body.size_hint().exact() {
            Some(n) => BodyLength::Known(n),
            None => BodyLength::Unknown,
        })
    };
    wbuf.clear();
    let Ok((mut framing, is_last)) =
        encode_head(&mut parts, relayed, length, head, keep_alive, wbuf)
    else {
        tracing::warn!("answer with contradictory framing headers: connection closed");
        return Ok(false);
    };
    if framing == Framing1::Length(0) {
        // Nothing of the body is sent (HEAD, 204, 304, or empty).
        write_all(io, wbuf, &[]).await?;
        return Ok(!is_last);
    }
    loop {
        let frame = match futures_util::FutureExt::now_or_never(body.frame()) {
            Some(f) => f,
            None => {
                // Nothing more yet: what is there goes out first; while
                // the body waits, a client that closes its end ends the
                // exchange (the upstream's with it).
                write_all(io, wbuf, &[]).await?;
                loop {
                    tokio::select! {
                        biased;
                        f = body.frame() => break f,
                        r = io.read_buf(rbuf), if rbuf.is_empty() => match r {
                            Ok(0) | Err(_) => return Ok(false),
                            Ok(_) => {}
                        },
                    }
                }
            }
        };
        let data = match frame {
            None => {
                match framing {
                    Framing1::Chunked => wbuf.extend_from_slice(b"0\r\n\r\n"),
                    Framing1::Close => {}
                    Framing1::Length(_) => {
                        // Shorter than it said: the connection is cut (what
                        // is not written yet is dropped, as hyper does).
                        return Ok(false);
                    }
                }
                break;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "answer body failed: connection closed");
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                // Empty frames, and trailers (never asked for: a request
                // with `TE` goes to hyper).
                _ => continue,
            },
        };
        let data = match &mut framing {
            Framing1::Length(left) => {
                let n = (*left).min(data.len() as u64) as usize;
                *left -= n as u64;
                data.slice(..n)
            }
            Framing1::Chunked => {
                write_chunk_size(wbuf, data.len());
                data
            }
            Framing1::Close => data,
        };
        if data.len() > COPY_MAX {
            write_all(io, wbuf, &data).await?;
        } else {
            wbuf.extend_from_slice(&data);
        }
        if framing == Framing1::Chunked {
            wbuf.extend_from_slice(b"\r\n");
        }
        if framing == Framing1::Length(0) {
            break;
        }
        if wbuf.len() >= FLUSH_AT {
            write_all(io, wbuf, &[]).await?;
        }
    }
    write_all(io, wbuf, &[]).await?;
    Ok(!is_last)
}

/// `len` in hex and CRLF: a chunk's size line.
fn write_chunk_size(dst: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b"0123456789ABCDEF"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[i..]);
    dst.extend_from_slice(b"\r\n");
}

/// Writes `first` (then empties it) and `second`, together where the
/// stream takes vectors, and flushes.
async fn write_all<I>(io: &mut I, first: &mut Vec<u8>, second: &[u8]) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    let (mut a, mut b) = (&first[..], second);
    while !a.is_empty() || !b.is_empty() {
        let n = if a.is_empty() {
            io.write(b).await?
        } else if b.is_empty() {
            io.write(a).await?
        } else {
            io.write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
                .await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    first.clear();
    io.flush().await
}

/// A connection handed over to hyper: the bytes already read, then the
/// stream. hyper's own `Rewind` is private, and this one is a few lines.
pub struct Rewind<I> {
    prefix: BytesMut,
    io: I,
}

impl<I> Rewind<I> {
    pub fn new(prefix: BytesMut, io: I) -> Self {
        Rewind { prefix, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const HEAD_LIMIT: usize = 8192;

    fn limits() -> Limits {
        Limits {
            max_header_bytes: HEAD_LIMIT,
            header_read_timeout: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
        }
    }

    /// One answer the test service gives: status, reason, header fields,
    /// body.
    #[derive(Debug, Clone)]
    struct Answer {
        status: u16,
        reason: bool,
        /// Answered as HTTP/1.0 (an HTTP/1.0 upstream's answer).
        http10: bool,
        fields: Vec<(&'static str, &'static str)>,
        body: Kind,
    }

    #[derive(Debug, Clone)]
    enum Kind {
        Empty,
        /// A body of known length.
        Full(&'static str),
        /// A body of unknown length: these frames, then these trailers.
        Stream(Vec<&'static str>, bool),
        /// What the request was, as the service saw it.
        Echo,
        /// A body of unknown length: this many frames of this many bytes
        /// (over the sizes copied into the write buffer and flushed).
        Big(usize, usize),
    }

    /// The service both servers run: answers the `n`th request of the
    /// connection with `answers[n % len]`.
    async fn service<B>(req: Request<B>, answer: Answer) -> Response<RespBody>
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Debug,
    {
        let (parts, body) = req.into_parts();
        let got = body.collect().await.map(|c| c.to_bytes());
        let body: RespBody = match answer.body {
            Kind::Empty => http_body_util::Empty::new().map_err(|e| match e {}).boxed(),
            Kind::Full(s) => Full::new(Bytes::from_static(s.as_bytes()))
                .map_err(|e| match e {})
                .boxed(),
            Kind::Stream(frames, trailers) => {
                let mut v: Vec<Result<Frame<Bytes>, crate::proxy::upstream::BoxError>> = frames
                    .into_iter()
                    .map(|f| Ok(Frame::data(Bytes::from_static(f.as_bytes()))))
                    .collect();
                if trailers {
                    let mut t = HeaderMap::new();
                    t.insert("x-t", HeaderValue::from_static("1"));
                    v.push(Ok(Frame::trailers(t)));
                }
                StreamBody::new(futures_util::stream::iter(v)).boxed()
            }
            Kind::Big(frames, size) => {
                let v: Vec<Result<Frame<Bytes>, crate::proxy::upstream::BoxError>> = (0..frames)
                    .map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + (i % 26) as u8; size]))))
                    .collect();
                StreamBody::new(futures_util::stream::iter(v)).boxed()
            }
            Kind::Echo => {
                let mut s = format!("{} {} {:?}\n", parts.method, parts.uri, parts.version);
                for (n, v) in &parts.headers {
                    s.push_str(&format!("{n}: {v:?}\n"));
                }
                s.push_str(&format!("body: {got:?}\n"));
                Full::new(Bytes::from(s)).map_err(|e| match e {}).boxed()
            }
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap();
        if answer.http10 {
            *resp.version_mut() = http::Version::HTTP_10;
        }
        for (n, v) in &answer.fields {
            resp.headers_mut().append(*n, HeaderValue::from_static(v));
        }
        if answer.reason {
            resp.extensions_mut()
                .insert(hyper::ext::ReasonPhrase::from_static(b"Fine"));
        }
        resp
    }

    fn hyper_builder() -> hyper::server::conn::http1::Builder {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits().header_read_timeout)
            .max_buf_size(HEAD_LIMIT)
            .max_headers(2 * MAX_HEADERS);
        b
    }

    /// hyper alone, as the reference.
    async fn hyper_side(io: DuplexStream, answers: Vec<Answer>) {
        let n = std::sync::atomic::AtomicUsize::new(0);
        let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let a = answers[i % answers.len()].clone();
            async move { Ok::<_, std::convert::Infallible>(service(req, a).await) }
        });
        let _ = hyper_builder()
            .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
            .await;
    }

    /// A service's answer with nothing relayed.
    async fn unrelayed(answer: impl Future<Output = Response<RespBody>>) -> Served {
        (answer.await, None)
    }

    /// This side, handing over to hyper as the listener does. Returns how
    /// many requests it served itself.
    async fn our_side(mut io: DuplexStream, answers: Vec<Answer>) -> usize {
        let n = std::sync::atomic::AtomicUsize::new(0);
        let (_tx, mut drain) = tokio::sync::watch::channel(());
        let outcome = serve(&mut io, &limits(), &mut drain, |req, _| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            unrelayed(service(*req, answers[i % answers.len()].clone()))
        })
        .await;
        let ours = n.load(std::sync::atomic::Ordering::Relaxed);
        if let Outcome::Handover(read) = outcome {
            let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let a = answers[i % answers.len()].clone();
                async move { Ok::<_, std::convert::Infallible>(service(req, a).await) }
            });
            let io = hyper_util::rt::TokioIo::new(Rewind::new(read, io));
            let _ = hyper_builder().serve_connection(io, svc).await;
        }
        ours
    }

    /// Writes `request` in two pieces and reads everything until the
    /// server closes (on a paused clock, idle connections time out at once).
    async fn exchange(mut io: DuplexStream, request: Vec<u8>, split: usize) -> Vec<u8> {
        let split = split.min(request.len());
        let _ = io.write_all(&request[..split]).await;
        tokio::task::yield_now().await;
        let _ = io.write_all(&request[split..]).await;
        let mut got = Vec::new();
        // A request whose body never comes holds both servers alike.
        let _ = tokio::time::timeout(Duration::from_secs(30), io.read_to_end(&mut got)).await;
        // The date is now's, on both.
        let text = String::from_utf8_lossy(&got).into_owned();
        let re = regex::Regex::new(r"date: [A-Za-z]{3}, \d\d [A-Za-z]{3} \d{4} \d\d:\d\d:\d\d GMT")
            .unwrap();
        re.replace_all(&text, "date: (now)")
            .into_owned()
            .into_bytes()
    }

    /// Both servers on the same bytes: what each wrote, and how many
    /// requests this side served itself.
    fn both(request: Vec<u8>, split: usize, answers: Vec<Answer>) -> (Vec<u8>, Vec<u8>, usize) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let (c1, s1) = tokio::io::duplex(64 * 1024);
            let (c2, s2) = tokio::io::duplex(64 * 1024);
            let theirs = tokio::spawn(hyper_side(s1, answers.clone()));
            let ours = tokio::spawn(our_side(s2, answers));
            let (a, b) = tokio::join!(
                exchange(c1, request.clone(), split),
                exchange(c2, request, split)
            );
            theirs.abort();
            let ours = match tokio::time::timeout(Duration::from_secs(60), ours).await {
                Ok(Ok(n)) => n,
                _ => usize::MAX,
            };
            (a, b, ours)
        })
    }

    fn plain(fields: Vec<(&'static str, &'static str)>, body: Kind) -> Answer {
        Answer {
            status: 200,
            reason: false,
            http10: false,
            fields,
            body,
        }
    }

    const METHODS: &[&str] = &["GET", "HEAD", "POST", "DELETE", "get", "CONNECT", "OPTIONS"];
    const TARGETS: &[&str] = &[
        "/a",
        "/a?b=1&c",
        "/a#f",
        "http://h/x",
        "*",
        "/%2e%2e/x",
        "h:80",
        "/a%zz",
        "/\x7f",
    ];
    const VERSIONS: &[&str] = &["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "HTTP/1.2"];
    const FIELDS: &[&str] = &[
        "Host: h",
        "Connection: close",
        "Connection: keep-alive",
        "Connection: Keep-Alive, CLOSE",
        "Content-Length: 0",
        "Content-Length: 5",
        "Content-Length: 0\r\nContent-Length: 0",
        "Content-Length: 00",
        "Transfer-Encoding: chunked",
        "Upgrade: websocket",
        "Expect: 100-continue",
        "TE: trailers",
        "X-A: b",
        "X-A: c",
        "X-O: caf\u{e9}",
        "X-Bad : x",
        "X-Fold: a\r\n b",
        "X-Empty:",
        "X-Sp:   padded   ",
        "bad name: x",
        "X-Ctl: a\x01b",
    ];
    const BODIES: &[&str] = &["", "hello", "5\r\nhello\r\n0\r\n\r\n"];

    fn answers() -> impl Strategy<Value = Vec<Answer>> {
        let kind = prop_oneof![
            Just((vec![], Kind::Empty)),
            Just((vec![], Kind::Full("hello"))),
            Just((vec![("content-length", "5")], Kind::Full("hello"))),
            Just((vec![], Kind::Stream(vec!["he", "", "llo"], false))),
            Just((vec![], Kind::Stream(vec![], false))),
            Just((vec![], Kind::Stream(vec!["x"], true))),
            Just((
                vec![("content-length", "5")],
                Kind::Stream(vec!["he", "llo"], false)
            )),
            Just((
                vec![("content-length", "3")],
                Kind::Stream(vec!["he", "llo"], false)
            )),
            Just((
                vec![("content-length", "9")],
                Kind::Stream(vec!["he", "llo"], false)
            )),
            Just((
                vec![("content-length", "x")],
                Kind::Stream(vec!["a"], false)
            )),
            Just((
                vec![("transfer-encoding", "chunked")],
                Kind::Stream(vec!["ab"], true)
            )),
            Just((
                vec![("transfer-encoding", "gzip")],
                Kind::Stream(vec!["ab"], false)
            )),
            Just((vec![("transfer-encoding", "chunked")], Kind::Full("hello"))),
            Just((vec![("trailer", "x-t")], Kind::Stream(vec!["ab"], true))),
            Just((vec![], Kind::Echo)),
            Just((vec![], Kind::Big(9, 9000))),
            Just((vec![("content-length", "27000")], Kind::Big(3, 9000))),
            Just((vec![], Kind::Big(40, 2000))),
        ];
        let extra = proptest::sample::subsequence(
            vec![
                ("content-type", "text/plain"),
                ("connection", "close"),
                ("x-m", "1"),
                ("x-m", "2"),
                ("date", "Mon, 01 Jan 2001 00:00:00 GMT"),
                ("connection", "x-y"),
            ],
            0..3,
        );
        let status = proptest::sample::select(vec![200u16, 201, 204, 304, 404, 500, 101, 103]);
        let http10 = prop_oneof![4 => Just(false), 1 => Just(true)];
        let answer = (status, any::<bool>(), http10, kind, extra).prop_map(
            |(status, reason, http10, (mut fields, body), extra)| {
                fields.extend(extra);
                Answer {
                    status,
                    reason,
                    http10,
                    fields,
                    body,
                }
            },
        );
        proptest::collection::vec(answer, 1..3)
    }

    fn one_request() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<bool>(),
            0..METHODS.len(),
            0..TARGETS.len(),
            prop_oneof![4 => Just(0usize), 1 => 0..VERSIONS.len()],
            proptest::collection::vec(0..FIELDS.len(), 0..4),
            prop_oneof![3 => Just(0usize), 1 => 0..BODIES.len()],
        )
            .prop_map(|(blank, m, t, v, fields, body)| {
                let mut r = String::new();
                if blank {
                    r.push_str("\r\n");
                }
                r.push_str(&format!(
                    "{} {} {}\r\n",
                    METHODS[m], TARGETS[t], VERSIONS[v]
                ));
                for f in fields {
                    r.push_str(FIELDS[f]);
                    r.push_str("\r\n");
                }
                r.push_str("\r\n");
                r.push_str(BODIES[body]);
                r.into_bytes()
            })
    }

    /// The requests a gateway mostly sees are served here, not handed
    /// over (so the differential check above is not vacuous), and
    /// answered byte for byte as hyper answers them.
    #[test]
    fn serves_plain_requests_itself() {
        let request = b"GET /a?b HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n\
            HEAD /b HTTP/1.1\r\nHost: h\r\n\r\n\
            DELETE /c HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .to_vec();
        let answers = vec![
            plain(vec![], Kind::Echo),
            plain(vec![("x-m", "1")], Kind::Stream(vec!["ab", "c"], false)),
        ];
        for split in [0, 7, 40, request.len()] {
            let (theirs, ours, served) = both(request.clone(), split, answers.clone());
            assert_eq!(served, 3, "split {split}");
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
            let text = String::from_utf8_lossy(&ours);
            assert!(
                text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: "),
                "{text}"
            );
            assert!(
                text.contains("GET /a?b HTTP/1.1\nhost: \"h\"\nx-a: \"1\"\n"),
                "{text}"
            );
            assert!(text.contains("connection: close\r\n"), "{text}");
        }
    }

    /// A body, an upgrade, HTTP/1.0: handed over with the bytes read, and
    /// hyper answers (the first request here, the rest there).
    #[test]
    fn hands_over_what_it_does_not_serve() {
        let answers = vec![plain(vec![], Kind::Echo)];
        for (second, served) in [
            ("POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 1),
            ("GET /w HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", 1),
            ("GET /o HTTP/1.0\r\n\r\n", 1),
            ("GET /f#x HTTP/1.1\r\n\r\n", 1),
        ] {
            let request = format!("GET /a HTTP/1.1\r\n\r\n{second}").into_bytes();
            let (theirs, ours, n) = both(request, 0, answers.clone());
            assert_eq!(n, served, "{second}");
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
            assert_eq!(
                String::from_utf8_lossy(&ours).matches("HTTP/1.").count(),
                4,
                "{second}"
            );
        }
    }

    /// A drain lets the request in flight finish, tells the client the
    /// connection closes, and closes it.
    #[tokio::test(start_paused = true)]
    async fn a_drain_finishes_the_request_in_flight_then_closes() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let (tx, mut drain) = tokio::sync::watch::channel(());
        let served = tokio::spawn(async move {
            serve(&mut server, &limits(), &mut drain, |req, _| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                unrelayed(service(*req, plain(vec![], Kind::Full("hello")))).await
            })
            .await
        });
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send(()).unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");
        assert!(matches!(served.await.unwrap(), Outcome::Closed));
    }

    /// An idle connection is closed after the smaller of the two
    /// timeouts; a head trickled in is cut at `header_read_timeout`.
    #[tokio::test(start_paused = true)]
    async fn idle_and_trickled_heads_are_closed_in_time() {
        let short = Limits {
            keepalive_timeout: Duration::from_secs(2),
            ..limits()
        };
        for (trickle, expect) in [(false, 2), (true, 5)] {
            let (mut client, mut server) = tokio::io::duplex(1024);
            let (_tx, mut drain) = tokio::sync::watch::channel(());
            let start = Instant::now();
            let task = tokio::spawn(async move {
                serve(&mut server, &short, &mut drain, |req, _| {
                    unrelayed(service(*req, plain(vec![], Kind::Empty)))
                })
                .await
            });
            if trickle {
                for b in b"GET / HTTP/1.1\r\nX: " {
                    client.write_all(&[*b]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert!(got.is_empty());
            assert!(matches!(task.await.unwrap(), Outcome::Closed));
            assert_eq!(start.elapsed().as_secs(), expect, "trickle {trickle}");
        }
    }

    /// Pipelined requests followed by a half-close are answered as hyper
    /// answers them (the request in flight when the close is seen is
    /// dropped); a client that closes while its answer's body waits ends
    /// the exchange.
    #[tokio::test(start_paused = true)]
    async fn half_closes_answer_what_was_sent_and_end_waiting_bodies() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let (_tx, mut drain) = tokio::sync::watch::channel(());
            serve(&mut server, &limits(), &mut drain, |req, _| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                unrelayed(service(*req, plain(vec![], Kind::Full("hi")))).await
            })
            .await
        });
        // Two pipelined requests, the client's end closed, all it gets.
        async fn half_closed(mut client: tokio::io::DuplexStream) -> Vec<u8> {
            client
                .write_all(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
                .await
                .unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        }
        let got = half_closed(client).await;
        assert!(matches!(task.await.unwrap(), Outcome::Closed));
        // hyper, on the same bytes.
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(hyper_side(server, vec![plain(vec![], Kind::Full("hi"))]));
        let theirs = half_closed(client).await;
        let dates = regex::Regex::new(r"date: [^\r]*").unwrap();
        let (ours, theirs) = (
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&theirs),
        );
        assert!(ours.starts_with("HTTP/1.1 200 OK\r\n"), "{ours}");
        assert_eq!(dates.replace_all(&ours, ""), dates.replace_all(&theirs, ""));

        // An answer whose body never comes: the client's close ends it.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let (_tx, mut drain) = tokio::sync::watch::channel(());
            serve(&mut server, &limits(), &mut drain, |_req, _| {
                let never = futures_util::stream::pending::<
                    Result<Frame<Bytes>, crate::proxy::upstream::BoxError>,
                >();
                unrelayed(async move { Response::new(StreamBody::new(never).boxed()) })
            })
            .await
        });
        client
            .write_all(b"GET /sse HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 17];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200 OK\r\n");
        client.shutdown().await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(1), task).await;
        assert!(matches!(ended, Ok(Ok(Outcome::Closed))));
    }

    /// A head with more fields than this side takes is read whole before
    /// it goes to hyper (its timer does not start afresh), and answered
    /// as hyper answers it.
    #[test]
    fn a_head_with_many_fields_goes_to_hyper_whole() {
        let mut request = String::from("GET /many HTTP/1.1\r\n");
        for i in 0..120 {
            request.push_str(&format!("X-F{i}: v\r\n"));
        }
        request.push_str("\r\n");
        let answers = vec![plain(vec![], Kind::Echo)];
        for split in [30, 600, request.len() - 1] {
            let (theirs, ours, served) = both(request.clone().into_bytes(), split, answers.clone());
            assert_eq!(served, 0);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
            assert!(String::from_utf8_lossy(&ours).contains("x-f119: \"v\""));
        }
    }

    /// An upstream's relayed fields are written first, as they came; its
    /// `Date` is the only one; an informational status (answered as hyper
    /// answers it, an empty 500) carries none of them.
    #[test]
    fn relayed_fields_go_first_and_their_date_is_the_only_one() {
        let head = Bytes::from_static(b"X-App1DateSun, 06 Dec 2026 20:00:00 GMT");
        let mut relayed = Relayed::new(head);
        assert!(relayed.push([0, 5], [5, 6]));
        assert!(relayed.push([6, 10], [10, 39]));
        let encode = |status: StatusCode| {
            let mut resp = Response::new(());
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert("x-request-id", HeaderValue::from_static("r1"));
            let (mut parts, ()) = resp.into_parts();
            let mut out = Vec::new();
            let known = Some(BodyLength::Known(2));
            encode_head(&mut parts, Some(&relayed), known, false, true, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            encode(StatusCode::OK),
            "HTTP/1.1 200 OK\r\nX-App: 1\r\nDate: Sun, 06 Dec 2026 20:00:00 GMT\r\nx-request-id: r1\r\ncontent-length: 2\r\n\r\n"
        );
        let early = encode(StatusCode::from_u16(103).unwrap());
        assert!(early.starts_with("HTTP/1.1 500 "), "{early}");
        assert!(
            !early.contains("X-App") && !early.contains("20:00:00"),
            "{early}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

        /// Differential check against hyper's server on the same bytes:
        /// one to three requests (pipelined, written in two pieces),
        /// answered alike; the bytes each server writes are the same
        /// (date values aside), whether this side served them or handed
        /// the connection over.
        #[test]
        fn writes_what_hyper_writes(
            requests in proptest::collection::vec(one_request(), 1..4),
            answers in answers(),
            split in 0usize..120,
        ) {
            let request = requests.concat();
            let (theirs, ours, _) = both(request.clone(), split, answers.clone());
            prop_assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs),
                "request: {:?}\nanswers: {:?}",
                String::from_utf8_lossy(&request),
                answers
            );
        }
    }
}
