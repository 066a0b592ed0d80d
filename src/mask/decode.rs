//! Push decoders for `Content-Encoding`: identity, gzip, deflate, br, zstd.
//!
//! Owns: turning compressed response-body chunks into decoded bytes, handed
//! synchronously to a [`Sink`] (the framing/masking stage), while counting the
//! decoded bytes against a cap (the zip-bomb guard). Serves phase 7 (respond)
//! through [`BodyMasker`](super::BodyMasker).
//!
//! Must not: buffer the body, block, touch hyper/tokio, or let a truncated,
//! corrupt or over-long stream look like a good one. Every failure is a
//! [`BodyError`] and the caller stops forwarding (fail closed).
//!
//! How each coding is decoded:
//! - gzip (`gzip`, `x-gzip`): own member parser (header fields skipped as
//!   they stream by, nothing buffered) + raw inflate + CRC-32/ISIZE trailer
//!   check. Several members are decoded one after another; anything else
//!   after a member is an error.
//! - deflate: zlib-wrapped (RFC 1950, Adler-32 checked) when the first two
//!   bytes are a valid zlib header, raw deflate (RFC 1951) otherwise, as
//!   browsers do. Data after the end of the stream is an error.
//! - br: `brotli::DecompressorWriter` (pure Rust, window ≤ 16 MiB).
//! - zstd: `zstd::stream::write::Decoder` with the window capped at 8 MiB
//!   (`WindowLogMax(23)`, the limit RFC 9659 sets for HTTP); several frames are
//!   allowed.
//!
//! Memory per body: one 32 KiB output buffer plus the codec's window (32 KiB
//! deflate, ≤ 16 MiB brotli, ≤ 8 MiB zstd). Decoded bytes leave in pieces of
//! at most 32 KiB (brotli: the buffer size; zstd: its block size, ≤ 128 KiB).
//!
//! A zero-length body decodes to zero bytes under every coding (servers send
//! `Content-Encoding: gzip` on empty bodies); any other stream must be
//! complete at [`Decoder::finish`], else `Decode("truncated …")`.

use std::io::{self, Write};

use flate2::{Crc, Decompress, FlushDecompress, Status};

use super::{BodyError, Encoding};

/// Decoded output is produced in pieces of this size.
const OUT_BUF: usize = 32 * 1024;

/// zstd window cap (2^23 = 8 MiB, RFC 9659 §3 for the `zstd` content coding).
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Where decoded bytes go. Called synchronously from [`Decoder::push`] and
/// [`Decoder::finish`], never with more than one decoder buffer at a time.
pub trait Sink {
    /// Takes the next decoded bytes. An error stops the decoder and is
    /// returned unchanged from `push`/`finish`.
    fn accept(&mut self, decoded: &[u8]) -> Result<(), BodyError>;
}

/// The bomb guard between a codec and the sink: counts decoded bytes, refuses
/// the piece that would cross the cap, and keeps the sink's error so it
/// survives the trip through a codec's `io::Error`.
struct Tap<S> {
    sink: S,
    decoded: u64,
    cap: u64,
    /// First error from the sink or the cap; also set when the decoder is
    /// closed so that codec drop glue cannot push more work into the sink.
    error: Option<BodyError>,
}

impl<S: Sink> Tap<S> {
    fn accept(&mut self, bytes: &[u8]) -> Result<(), BodyError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.decoded = self.decoded.saturating_add(bytes.len() as u64);
        if self.decoded > self.cap {
            return Err(BodyError::TooLarge);
        }
        self.sink.accept(bytes)
    }

    /// Maps a codec's `io::Error`: the sink's own error if it caused it,
    /// otherwise a decode error naming the coding.
    fn io_error(&mut self, e: io::Error, what: &str) -> BodyError {
        self.error
            .take()
            .unwrap_or_else(|| BodyError::Decode(format!("corrupt {what} stream: {e}")))
    }
}

impl<S: Sink> Write for Tap<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.error.is_some() {
            return Err(io::Error::other("decoded-bytes sink already failed"));
        }
        match self.accept(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                self.error = Some(e);
                Err(io::Error::other("decoded-bytes sink failed"))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A push decoder for one response body: compressed chunks in, decoded
/// bytes out to the [`Sink`].
pub struct Decoder<S: Sink> {
    engine: Engine<S>,
    /// Compressed bytes seen, to let an empty body through every coding.
    input_bytes: u64,
}

enum Engine<S: Sink> {
    /// identity, gzip and deflate: our own loop around `flate2::Decompress`.
    Own {
        tap: Tap<S>,
        codec: Codec,
    },
    Br(Box<brotli::DecompressorWriter<Tap<S>>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Tap<S>>>),
}

enum Codec {
    Identity,
    Gzip(Box<Gzip>),
    Deflate(Box<Deflate>),
}

impl<S: Sink> Decoder<S> {
    /// A decoder for `encoding` that hands at most `max_decoded_bytes`
    /// decoded bytes to `sink` (more → [`BodyError::TooLarge`]).
    pub fn new(encoding: Encoding, sink: S, max_decoded_bytes: u64) -> Result<Self, BodyError> {
        let tap = Tap {
            sink,
            decoded: 0,
            cap: max_decoded_bytes,
            error: None,
        };
        let engine = match encoding {
            Encoding::Identity => Engine::Own {
                tap,
                codec: Codec::Identity,
            },
            Encoding::Gzip => Engine::Own {
                tap,
                codec: Codec::Gzip(Box::new(Gzip::new())),
            },
            Encoding::Deflate => Engine::Own {
                tap,
                codec: Codec::Deflate(Box::new(Deflate::new())),
            },
            Encoding::Br => Engine::Br(Box::new(brotli::DecompressorWriter::new(tap, OUT_BUF))),
            Encoding::Zstd => {
                let mut raw = zstd::stream::raw::Decoder::new()
                    .map_err(|e| BodyError::Decode(format!("zstd init: {e}")))?;
                raw.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(
                    ZSTD_WINDOW_LOG_MAX,
                ))
                .map_err(|e| BodyError::Decode(format!("zstd init: {e}")))?;
                Engine::Zstd(Box::new(zstd::stream::write::Decoder::with_decoder(
                    tap, raw,
                )))
            }
        };
        Ok(Decoder {
            engine,
            input_bytes: 0,
        })
    }

    /// Decodes one chunk of the body (any size, including empty).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), BodyError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.input_bytes = self.input_bytes.saturating_add(chunk.len() as u64);
        match &mut self.engine {
            Engine::Own { tap, codec } => match codec {
                Codec::Identity => tap.accept(chunk),
                Codec::Gzip(g) => g.push(chunk, tap),
                Codec::Deflate(d) => d.push(chunk, tap),
            },
            Engine::Br(w) => w
                .write_all(chunk)
                .map_err(|e| w.get_mut().io_error(e, "brotli")),
            Engine::Zstd(w) => w
                .write_all(chunk)
                .map_err(|e| w.get_mut().io_error(e, "zstd")),
        }
    }

    /// Ends the body: drains the codec and checks that the stream was
    /// complete (trailer, checksum, final block).
    pub fn finish(&mut self) -> Result<(), BodyError> {
        let empty = self.input_bytes == 0;
        match &mut self.engine {
            Engine::Own { tap, codec } => match codec {
                Codec::Identity => Ok(()),
                _ if empty => Ok(()),
                Codec::Gzip(g) => g.finish(tap),
                Codec::Deflate(d) => d.finish(tap),
            },
            _ if empty => Ok(()),
            Engine::Br(w) => w.close().map_err(|e| match w.get_mut().error.take() {
                Some(err) => err,
                None => BodyError::Decode(format!("truncated or corrupt brotli stream: {e}")),
            }),
            Engine::Zstd(w) => w.do_finish().map_err(|e| w.get_mut().io_error(e, "zstd")),
        }
    }

    /// Decoded bytes handed to the sink so far.
    pub fn decoded_bytes(&self) -> u64 {
        self.tap().decoded
    }

    pub fn sink(&self) -> &S {
        &self.tap().sink
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.tap_mut().sink
    }

    fn tap(&self) -> &Tap<S> {
        match &self.engine {
            Engine::Own { tap, .. } => tap,
            Engine::Br(w) => w.get_ref(),
            Engine::Zstd(w) => w.get_ref(),
        }
    }

    fn tap_mut(&mut self) -> &mut Tap<S> {
        match &mut self.engine {
            Engine::Own { tap, .. } => tap,
            Engine::Br(w) => w.get_mut(),
            Engine::Zstd(w) => w.get_mut(),
        }
    }
}

impl<S: Sink> Drop for Decoder<S> {
    fn drop(&mut self) {
        // brotli's writer decodes what it still holds when dropped; make the
        // tap refuse it so an aborted body costs no more masking work. Our
        // own loop has no such drop glue: nothing to refuse, and no error
        // string to build on every masked answer.
        if matches!(self.engine, Engine::Own { .. }) {
            return;
        }
        let tap = self.tap_mut();
        if tap.error.is_none() {
            tap.error = Some(BodyError::Decode("decoder dropped".into()));
        }
    }
}

/// Raw inflate (or zlib-wrapped) around `flate2::Decompress`, pushing output
/// through the tap in `OUT_BUF` pieces.
struct Inflate {
    z: Decompress,
    buf: Box<[u8]>,
    /// CRC-32 of the output (gzip members only).
    crc: Option<Crc>,
}

impl Inflate {
    fn new(zlib_header: bool, crc: bool) -> Self {
        Inflate {
            z: Decompress::new(zlib_header),
            buf: vec![0; OUT_BUF].into_boxed_slice(),
            crc: crc.then(Crc::new),
        }
    }

    fn reset(&mut self) {
        self.z.reset(false);
        if let Some(crc) = &mut self.crc {
            crc.reset();
        }
    }

    /// Inflates as much of `input` as belongs to the stream. Returns the
    /// bytes consumed and whether the end of the stream was reached (then
    /// the rest of `input` is not part of it).
    fn run<S: Sink>(
        &mut self,
        input: &[u8],
        flush: FlushDecompress,
        tap: &mut Tap<S>,
    ) -> Result<(usize, bool), BodyError> {
        let mut pos = 0;
        loop {
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let status = self
                .z
                .decompress(&input[pos..], &mut self.buf, flush)
                .map_err(|e| BodyError::Decode(format!("corrupt deflate data: {e}")))?;
            let used = usize::try_from(self.z.total_in() - in0).unwrap_or(usize::MAX);
            let made = usize::try_from(self.z.total_out() - out0).unwrap_or(usize::MAX);
            pos = pos.saturating_add(used).min(input.len());
            let produced = self.buf.get(..made).unwrap_or(&[]);
            if let Some(crc) = &mut self.crc {
                crc.update(produced);
            }
            tap.accept(produced)?;
            if status == Status::StreamEnd {
                return Ok((pos, true));
            }
            if made == self.buf.len() {
                continue; // the buffer was full: there may be more output
            }
            if pos >= input.len() || (used == 0 && made == 0) {
                return Ok((pos, false));
            }
        }
    }

    /// At the end of the body: the stream must end here.
    fn finish<S: Sink>(&mut self, tap: &mut Tap<S>, what: &str) -> Result<(), BodyError> {
        match self.run(&[], FlushDecompress::Finish, tap) {
            Ok((_, true)) => Ok(()),
            Ok((_, false)) => Err(BodyError::Decode(format!("truncated {what} stream"))),
            Err(BodyError::Decode(_)) => Err(BodyError::Decode(format!("truncated {what} stream"))),
            Err(e) => Err(e),
        }
    }
}

/// `Content-Encoding: deflate`: zlib-wrapped, or raw when the zlib header is
/// absent.
struct Deflate {
    head: [u8; 2],
    got: usize,
    inflate: Option<Inflate>,
    ended: bool,
}

/// RFC 1950 §2.2: CM = 8, CINFO ≤ 7, FCHECK makes the pair a multiple of 31,
/// no preset dictionary.
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8
        && cmf >> 4 <= 7
        && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
        && flg & 0x20 == 0
}

impl Deflate {
    fn new() -> Self {
        Deflate {
            head: [0; 2],
            got: 0,
            inflate: None,
            ended: false,
        }
    }

    fn push<S: Sink>(&mut self, mut input: &[u8], tap: &mut Tap<S>) -> Result<(), BodyError> {
        if self.inflate.is_none() {
            while self.got < 2 {
                let Some((&b, rest)) = input.split_first() else {
                    return Ok(());
                };
                self.head[self.got] = b;
                self.got += 1;
                input = rest;
            }
            let zlib = is_zlib_header(self.head[0], self.head[1]);
            let head = self.head;
            self.inflate = Some(Inflate::new(zlib, false));
            self.feed(&head, tap)?;
        }
        self.feed(input, tap)
    }

    fn feed<S: Sink>(&mut self, input: &[u8], tap: &mut Tap<S>) -> Result<(), BodyError> {
        if input.is_empty() {
            return Ok(());
        }
        let Some(inflate) = &mut self.inflate else {
            return Ok(());
        };
        if self.ended {
            return Err(BodyError::Decode(
                "data after the end of the deflate stream".into(),
            ));
        }
        let (used, end) = inflate.run(input, FlushDecompress::None, tap)?;
        if end {
            self.ended = true;
            if used < input.len() {
                return Err(BodyError::Decode(
                    "data after the end of the deflate stream".into(),
                ));
            }
        } else if used < input.len() {
            return Err(BodyError::Decode(
                "corrupt deflate stream: decoder stalled".into(),
            ));
        }
        Ok(())
    }

    fn finish<S: Sink>(&mut self, tap: &mut Tap<S>) -> Result<(), BodyError> {
        match &mut self.inflate {
            _ if self.ended => Ok(()),
            None => Err(BodyError::Decode("truncated deflate stream".into())),
            Some(inflate) => inflate.finish(tap, "deflate"),
        }
    }
}

/// `Content-Encoding: gzip`: one or more RFC 1952 members.
struct Gzip {
    state: GzState,
    inflate: Inflate,
}

enum GzState {
    Header(GzHeader),
    Body,
    Trailer {
        buf: [u8; 8],
        got: usize,
    },
    /// A member ended; the body may end here or another member follow.
    Between,
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

/// Streaming gzip header parser. Variable fields (extra, name, comment) are
/// skipped as they pass, so a huge header costs no memory.
struct GzHeader {
    fixed: [u8; 10],
    got: usize,
    step: HeaderStep,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HeaderStep {
    Fixed,
    XLen { lo: Option<u8> },
    Extra(usize),
    Name,
    Comment,
    Crc(usize),
    Done,
}

impl GzHeader {
    fn new() -> Self {
        GzHeader {
            fixed: [0; 10],
            got: 0,
            step: HeaderStep::Fixed,
        }
    }

    fn flags(&self) -> u8 {
        self.fixed[3]
    }

    /// The step after the fixed part / a finished optional field, in the
    /// RFC 1952 order: extra, name, comment, header CRC.
    fn next_after(&self, done: HeaderStep) -> HeaderStep {
        let f = self.flags();
        let order = [
            (FEXTRA, HeaderStep::XLen { lo: None }),
            (FNAME, HeaderStep::Name),
            (FCOMMENT, HeaderStep::Comment),
            (FHCRC, HeaderStep::Crc(2)),
        ];
        let start = match done {
            HeaderStep::Fixed => 0,
            HeaderStep::XLen { .. } | HeaderStep::Extra(_) => 1,
            HeaderStep::Name => 2,
            HeaderStep::Comment => 3,
            HeaderStep::Crc(_) | HeaderStep::Done => 4,
        };
        order
            .iter()
            .skip(start)
            .find(|(bit, _)| f & bit != 0)
            .map_or(HeaderStep::Done, |(_, step)| *step)
    }

    /// Consumes header bytes from `input`; returns how many.
    fn feed(&mut self, input: &[u8]) -> Result<usize, BodyError> {
        let mut i = 0;
        while i < input.len() {
            let rest = &input[i..];
            match self.step {
                HeaderStep::Done => break,
                HeaderStep::Fixed => {
                    let take = (10 - self.got).min(rest.len());
                    self.fixed[self.got..self.got + take].copy_from_slice(&rest[..take]);
                    self.got += take;
                    i += take;
                    if self.got == 10 {
                        if self.fixed[0] != 0x1f || self.fixed[1] != 0x8b {
                            return Err(BodyError::Decode("not a gzip stream".into()));
                        }
                        if self.fixed[2] != 8 {
                            return Err(BodyError::Decode("unsupported gzip method".into()));
                        }
                        if self.flags() & 0xe0 != 0 {
                            return Err(BodyError::Decode("reserved gzip header flags set".into()));
                        }
                        self.step = self.next_after(HeaderStep::Fixed);
                    }
                }
                HeaderStep::XLen { lo: None } => {
                    self.step = HeaderStep::XLen { lo: Some(rest[0]) };
                    i += 1;
                }
                HeaderStep::XLen { lo: Some(lo) } => {
                    let len = usize::from(u16::from_le_bytes([lo, rest[0]]));
                    i += 1;
                    self.step = if len == 0 {
                        self.next_after(HeaderStep::Extra(0))
                    } else {
                        HeaderStep::Extra(len)
                    };
                }
                HeaderStep::Extra(left) | HeaderStep::Crc(left) => {
                    let take = left.min(rest.len());
                    i += take;
                    let left = left - take;
                    self.step = match (self.step, left) {
                        (HeaderStep::Extra(_), 0) => self.next_after(HeaderStep::Extra(0)),
                        (HeaderStep::Extra(_), n) => HeaderStep::Extra(n),
                        (_, 0) => HeaderStep::Done,
                        (_, n) => HeaderStep::Crc(n),
                    };
                }
                HeaderStep::Name | HeaderStep::Comment => match memchr::memchr(0, rest) {
                    Some(p) => {
                        i += p + 1;
                        self.step = self.next_after(self.step);
                    }
                    None => i = input.len(),
                },
            }
        }
        Ok(i)
    }
}

impl Gzip {
    fn new() -> Self {
        Gzip {
            state: GzState::Header(GzHeader::new()),
            inflate: Inflate::new(false, true),
        }
    }

    fn push<S: Sink>(&mut self, mut input: &[u8], tap: &mut Tap<S>) -> Result<(), BodyError> {
        while !input.is_empty() {
            match &mut self.state {
                GzState::Between => {
                    // Another member must follow: its header is checked by
                    // the parser, so trailing garbage is an error.
                    self.state = GzState::Header(GzHeader::new());
                }
                GzState::Header(h) => {
                    let used = h.feed(input)?;
                    input = &input[used..];
                    if h.step == HeaderStep::Done {
                        self.inflate.reset();
                        self.state = GzState::Body;
                    }
                }
                GzState::Body => {
                    let (used, end) = self.inflate.run(input, FlushDecompress::None, tap)?;
                    input = &input[used..];
                    if end {
                        self.state = GzState::Trailer {
                            buf: [0; 8],
                            got: 0,
                        };
                    } else if !input.is_empty() {
                        return Err(BodyError::Decode(
                            "corrupt gzip stream: decoder stalled".into(),
                        ));
                    }
                }
                GzState::Trailer { buf, got } => {
                    let take = (8 - *got).min(input.len());
                    buf[*got..*got + take].copy_from_slice(&input[..take]);
                    *got += take;
                    input = &input[take..];
                    if *got == 8 {
                        let crc = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                        let size = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
                        let (sum, amount) = self
                            .inflate
                            .crc
                            .as_ref()
                            .map_or((0, 0), |c| (c.sum(), c.amount()));
                        // ISIZE is the member's size mod 2^32 (RFC 1952 §2.3.1).
                        let total = self.inflate.z.total_out() as u32;
                        if crc != sum || size != total || size != amount {
                            return Err(BodyError::Decode("gzip checksum mismatch".into()));
                        }
                        self.state = GzState::Between;
                    }
                }
            }
        }
        Ok(())
    }

    fn finish<S: Sink>(&mut self, tap: &mut Tap<S>) -> Result<(), BodyError> {
        match self.state {
            GzState::Between => Ok(()),
            GzState::Body => {
                // Output the inflater still holds, then fail: the trailer is
                // missing whatever the inflater says.
                self.inflate.finish(tap, "gzip")?;
                Err(BodyError::Decode("truncated gzip stream".into()))
            }
            _ => Err(BodyError::Decode("truncated gzip stream".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects decoded bytes.
    #[derive(Default)]
    struct Collect(Vec<u8>);
    impl Sink for Collect {
        fn accept(&mut self, decoded: &[u8]) -> Result<(), BodyError> {
            self.0.extend_from_slice(decoded);
            Ok(())
        }
    }

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode(enc: Encoding, body: &[u8], chunk: usize, cap: u64) -> Result<Vec<u8>, BodyError> {
        let mut d = Decoder::new(enc, Collect::default(), cap)?;
        for c in body.chunks(chunk.max(1)) {
            d.push(c)?;
        }
        d.finish()?;
        Ok(std::mem::take(&mut d.sink_mut().0))
    }

    fn sample() -> Vec<u8> {
        (0..50_000u32)
            .flat_map(|i| format!("line {i} {}\n", i * 7919).into_bytes())
            .collect()
    }

    #[test]
    fn gzip_multi_member_and_header_fields_in_tiny_chunks() {
        let data = sample();
        let mut b = flate2::GzBuilder::new()
            .filename("x".repeat(5000))
            .comment("c")
            .extra(vec![1, 2, 3])
            .write(Vec::new(), flate2::Compression::default());
        b.write_all(&data[..1000]).unwrap();
        let mut body = b.finish().unwrap();
        body.extend(gzip(&data[1000..]));
        for chunk in [1, 3, 4096, usize::MAX] {
            assert_eq!(
                decode(Encoding::Gzip, &body, chunk, u64::MAX).unwrap(),
                data
            );
        }
    }

    #[test]
    fn gzip_truncation_corruption_and_trailing_garbage_fail() {
        let body = gzip(&sample());
        for cut in [1, 5, 10, 20, body.len() / 2, body.len() - 8, body.len() - 1] {
            assert!(
                decode(Encoding::Gzip, &body[..cut], 1000, u64::MAX).is_err(),
                "cut {cut}"
            );
        }
        let mut bad = body.clone();
        let n = bad.len();
        bad[n - 6] ^= 0xff; // ISIZE
        assert!(matches!(
            decode(Encoding::Gzip, &bad, 777, u64::MAX),
            Err(BodyError::Decode(_))
        ));
        let mut bad = body.clone();
        bad[n - 8] ^= 0xff; // CRC
        assert!(decode(Encoding::Gzip, &bad, 777, u64::MAX).is_err());
        let mut trailing = body.clone();
        trailing.extend_from_slice(b"garbage!!!!");
        assert!(decode(Encoding::Gzip, &trailing, 777, u64::MAX).is_err());
    }

    #[test]
    fn deflate_zlib_and_raw() {
        let data = sample();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        let zlib = z.finish().unwrap();
        let mut r = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        r.write_all(&data).unwrap();
        let raw = r.finish().unwrap();
        for chunk in [1, 2, 999, usize::MAX] {
            assert_eq!(
                decode(Encoding::Deflate, &zlib, chunk, u64::MAX).unwrap(),
                data
            );
            assert_eq!(
                decode(Encoding::Deflate, &raw, chunk, u64::MAX).unwrap(),
                data
            );
        }
        assert!(decode(Encoding::Deflate, &zlib[..zlib.len() - 3], 64, u64::MAX).is_err());
        assert!(decode(Encoding::Deflate, &raw[..raw.len() / 2], 64, u64::MAX).is_err());
        assert!(decode(Encoding::Deflate, &zlib[..1], 64, u64::MAX).is_err());
        let mut bad = zlib.clone();
        let n = bad.len();
        bad[n - 1] ^= 1; // Adler-32
        assert!(decode(Encoding::Deflate, &bad, 64, u64::MAX).is_err());
        let mut trailing = raw.clone();
        trailing.push(0);
        assert!(decode(Encoding::Deflate, &trailing, 64, u64::MAX).is_err());
    }

    #[test]
    fn brotli_and_zstd_truncation_and_trailing() {
        let data = sample();
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(&data).unwrap();
        }
        let zs = zstd::stream::encode_all(&data[..], 3).unwrap();
        for (enc, body) in [(Encoding::Br, &br), (Encoding::Zstd, &zs)] {
            assert_eq!(decode(enc, body, 1, u64::MAX).unwrap(), data);
            assert_eq!(decode(enc, body, 5000, u64::MAX).unwrap(), data);
            assert!(
                decode(enc, &body[..body.len() - 2], 100, u64::MAX).is_err(),
                "{enc:?}"
            );
            let mut trailing = body.clone();
            trailing.extend_from_slice(b"\x01\x02garbage");
            assert!(
                decode(enc, &trailing, 100, u64::MAX).is_err(),
                "{enc:?} trailing"
            );
        }
        // zstd: several frames are one body.
        let mut two = zs.clone();
        two.extend(zstd::stream::encode_all(&b"tail"[..], 1).unwrap());
        let mut want = data.clone();
        want.extend_from_slice(b"tail");
        assert_eq!(decode(Encoding::Zstd, &two, 333, u64::MAX).unwrap(), want);
    }

    #[test]
    fn cap_counts_decoded_bytes_for_every_coding() {
        let data = sample();
        let len = data.len() as u64;
        for enc in [
            Encoding::Identity,
            Encoding::Gzip,
            Encoding::Deflate,
            Encoding::Br,
            Encoding::Zstd,
        ] {
            let body = match enc {
                Encoding::Identity => data.clone(),
                Encoding::Gzip => gzip(&data),
                Encoding::Deflate => {
                    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), Default::default());
                    z.write_all(&data).unwrap();
                    z.finish().unwrap()
                }
                Encoding::Br => {
                    let mut v = Vec::new();
                    brotli::CompressorWriter::new(&mut v, 4096, 5, 22)
                        .write_all(&data)
                        .unwrap();
                    v
                }
                Encoding::Zstd => zstd::stream::encode_all(&data[..], 3).unwrap(),
            };
            assert_eq!(decode(enc, &body, 4096, len).unwrap().len() as u64, len);
            assert!(matches!(
                decode(enc, &body, 4096, len - 1),
                Err(BodyError::TooLarge)
            ));
        }
    }

    #[test]
    fn empty_body_is_empty_under_every_coding() {
        for enc in [
            Encoding::Identity,
            Encoding::Gzip,
            Encoding::Deflate,
            Encoding::Br,
            Encoding::Zstd,
        ] {
            assert_eq!(decode(enc, b"", 1, 0).unwrap(), b"");
        }
    }

    #[test]
    fn zlib_header_detection() {
        assert!(is_zlib_header(0x78, 0x9c));
        assert!(is_zlib_header(0x78, 0x01));
        assert!(is_zlib_header(0x78, 0xda));
        assert!(!is_zlib_header(0x78, 0xbb)); // FDICT
        assert!(!is_zlib_header(0xcb, 0x48)); // raw deflate of "Hello"
    }
}
