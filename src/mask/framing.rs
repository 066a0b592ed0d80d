//! Framing for streamed JSON bodies: NDJSON lines and server-sent events.
//!
//! Owns: cutting decoded bytes into JSON documents (one per NDJSON line, one
//! per SSE event's joined `data`), running each through a fresh
//! [`JsonMasker`], and re-assembling the stream around the masked output.
//! Serves phase 7 (respond) via [`BodyMasker`](super::BodyMasker). Must not:
//! interpret JSON itself, pass a `data` value or a line through unmasked, or
//! buffer more than one line/event (≤ [`unit_limit`](super::unit_limit)).
//!
//! **NDJSON** ([`Ndjson`]): lines end at `\n`; a `\r` right before it belongs
//! to the line ending and is re-emitted as is. Each line that has a
//! non-whitespace byte is one JSON document, masked by its own `JsonMasker`
//! as its bytes arrive (no line buffer: the masker's limits bound the line).
//! Blank lines (empty or whitespace only) are passed through as empty lines,
//! keeping their line ending; leading whitespace of a JSON line is dropped
//! (the masker may drop insignificant whitespace too). A line that is not one
//! valid JSON document → [`BodyError::Mask`]. A last line without `\n` is
//! masked and emitted without a line ending.
//!
//! **SSE** ([`Sse`], WHATWG HTML "server-sent events"): lines end at LF, CRLF
//! or CR. Field name = text before the first `:` (the whole line if none);
//! value = text after it, minus one leading space. The `data` values of one
//! event (up to the blank line) are joined with `\n` and masked as ONE JSON
//! document; the event is re-emitted with one `data: <masked json>` line at
//! the position of the first data line (if the masker's output contains line
//! breaks — only possible as insignificant whitespace — it is split over
//! several `data:` lines, which clients re-join into the same JSON). Other
//! fields (`event`, `id`, `retry`, unknown ones) and comments (`:` …) pass
//! through unchanged and in order; line endings are kept. Lines before an
//! event's first data line are emitted at once (so heartbeat comments are not
//! delayed); later ones wait for the event. An event is emitted as soon as
//! its blank line arrives. Event data that is not JSON → [`BodyError::Sse`]
//! (a masked route ends the stream); an event whose data is exactly empty
//! (`data` / `data:`) is passed through as `data:`. An event buffered beyond
//! the unit limit → `Sse` error. At the end of the body an unterminated last
//! line is processed and a pending event is masked and emitted without its
//! blank line (clients drop such an event anyway).

use std::sync::Arc;

use memchr::{memchr, memchr2};

use super::{BodyError, JsonMasker, MaskError, Policy, unit_limit};

/// NDJSON framer: one JSON document per non-blank line.
pub struct Ndjson {
    policy: Arc<Policy>,
    /// Masker of the current line, created at its first non-whitespace byte.
    line: Option<JsonMasker>,
    /// The previous chunk ended in `\r`: part of `\r\n` or line content.
    held_cr: bool,
    /// `masked_count` of the finished lines.
    masked: u64,
}

impl Ndjson {
    pub fn new(policy: Arc<Policy>) -> Self {
        Ndjson {
            policy,
            line: None,
            held_cr: false,
            masked: 0,
        }
    }

    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        if input.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.held_cr) {
            if input[0] == b'\n' {
                self.end_line(b"\r\n", out)?;
                input = &input[1..];
            } else {
                self.feed(b"\r", out)?; // a lone CR inside the line: JSON whitespace
            }
        }
        while let Some(p) = memchr(b'\n', input) {
            let (body, ending): (&[u8], &[u8]) = match input[..p].strip_suffix(b"\r") {
                Some(body) => (body, b"\r\n"),
                None => (&input[..p], b"\n"),
            };
            self.feed(body, out)?;
            self.end_line(ending, out)?;
            input = &input[p + 1..];
        }
        match input.strip_suffix(b"\r") {
            Some(body) => {
                self.feed(body, out)?;
                self.held_cr = true;
            }
            None => self.feed(input, out)?,
        }
        Ok(())
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        self.end_line(b"", out)?;
        if std::mem::take(&mut self.held_cr) {
            out.push(b'\r');
        }
        Ok(())
    }

    pub fn masked_count(&self) -> u64 {
        self.masked + self.line.as_ref().map_or(0, JsonMasker::masked_count)
    }

    fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        if self.line.is_none() {
            let start = bytes
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\r'));
            let Some(start) = start else { return Ok(()) }; // still blank
            bytes = &bytes[start..];
            self.line = Some(JsonMasker::new(self.policy.clone()));
        }
        match &mut self.line {
            Some(m) => Ok(m.push(bytes, out)?),
            None => Ok(()),
        }
    }

    fn end_line(&mut self, ending: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        if let Some(mut m) = self.line.take() {
            m.finish(out)?;
            self.masked += m.masked_count();
        }
        out.extend_from_slice(ending);
        Ok(())
    }
}

/// SSE framer: masks each event's joined `data` as one JSON document.
pub struct Sse {
    policy: Arc<Policy>,
    /// Bytes of the current line seen so far (only when it spans chunks).
    line: Vec<u8>,
    /// The last line ended in CR: a following LF belongs to its ending.
    skip_lf: bool,
    /// Where the last line's ending went (for that LF).
    last: LastLine,
    event: Event,
    limit: usize,
    masked: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LastLine {
    /// Emitted to `out`.
    Out,
    /// Held in `event.held`.
    Held,
    /// The first data line: its ending is `event.data_end`.
    FirstData,
    /// A later data line: its ending is not re-emitted.
    Dropped,
}

#[derive(Default)]
struct Event {
    has_data: bool,
    /// `data` values joined with `\n`.
    data: Vec<u8>,
    /// Line ending of the first data line (re-used for the masked data line).
    data_end: Vec<u8>,
    /// Lines (with endings) after the first data line, re-emitted after it.
    held: Vec<u8>,
}

impl Sse {
    pub fn new(policy: Arc<Policy>) -> Self {
        let limit = unit_limit(&policy);
        Sse {
            policy,
            line: Vec::new(),
            skip_lf: false,
            last: LastLine::Out,
            event: Event::default(),
            limit,
            masked: 0,
        }
    }

    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        while !input.is_empty() {
            if std::mem::take(&mut self.skip_lf) && input[0] == b'\n' {
                match self.last {
                    LastLine::Out => out.push(b'\n'),
                    LastLine::Held => self.event.held.push(b'\n'),
                    LastLine::FirstData => self.event.data_end.push(b'\n'),
                    LastLine::Dropped => {}
                }
                input = &input[1..];
                continue;
            }
            let Some(p) = memchr2(b'\n', b'\r', input) else {
                if self.line.len() + input.len() > self.limit {
                    return Err(self.too_big());
                }
                self.line.extend_from_slice(input);
                break;
            };
            let ending: &[u8] = if input[p] == b'\r' { b"\r" } else { b"\n" };
            self.skip_lf = input[p] == b'\r';
            if self.line.is_empty() {
                self.line_done(&input[..p], ending, out)?;
            } else {
                if self.line.len() + p > self.limit {
                    return Err(self.too_big());
                }
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&input[..p]);
                let r = self.line_done(&line, ending, out);
                line.clear();
                self.line = line;
                r?;
            }
            input = &input[p + 1..];
        }
        Ok(())
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, b"", out)?;
        }
        if self.event.has_data {
            self.dispatch(b"", out)?;
        }
        Ok(())
    }

    pub fn masked_count(&self) -> u64 {
        self.masked
    }

    fn too_big(&self) -> BodyError {
        BodyError::Sse(format!("event larger than {} bytes", self.limit))
    }

    /// One complete line (without its ending).
    fn line_done(
        &mut self,
        line: &[u8],
        ending: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), BodyError> {
        if line.is_empty() {
            return self.dispatch(ending, out);
        }
        let (name, value) = match memchr(b':', line) {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        // Only the fields the SSE spec defines pass, so a body that is not
        // really an event stream (JSON labelled text/event-stream) fails
        // closed instead of flowing through as "unknown fields". Comment
        // text is dropped (a bare `:` keeps its keep-alive role) and
        // `event`/`id` values are scrubbed by the detectors: neither can
        // carry PII past the masker.
        let scrubbed;
        let line: &[u8] = match name {
            b"data" | b"retry" if name == b"retry" && !value.iter().all(u8::is_ascii_digit) => {
                return Err(BodyError::Sse("retry field is not a number".into()));
            }
            b"data" | b"retry" => line,
            b"" => b":",
            b"event" | b"id" => {
                let text = std::str::from_utf8(value)
                    .map_err(|_| BodyError::Sse("field is not UTF-8".into()))?;
                let clean = crate::mask::strategy::scrub(&self.policy.detectors, text);
                scrubbed = [name, b": ", clean.as_bytes()].concat();
                &scrubbed
            }
            _ => return Err(BodyError::Sse("unknown field: not an event stream".into())),
        };
        let ev = &mut self.event;
        if name == b"data" {
            if ev.has_data {
                ev.data.push(b'\n');
                ev.data.extend_from_slice(value);
                self.last = LastLine::Dropped;
            } else {
                ev.has_data = true;
                ev.data.extend_from_slice(value);
                ev.data_end.extend_from_slice(ending);
                self.last = LastLine::FirstData;
            }
        } else if ev.has_data {
            ev.held.extend_from_slice(line);
            ev.held.extend_from_slice(ending);
            self.last = LastLine::Held;
        } else {
            out.extend_from_slice(line);
            out.extend_from_slice(ending);
            self.last = LastLine::Out;
        }
        if ev.data.len() + ev.held.len() > self.limit {
            return Err(self.too_big());
        }
        Ok(())
    }

    /// The event's blank line (ending `ending`) arrived: emit the event.
    fn dispatch(&mut self, ending: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        let ev = &mut self.event;
        if ev.has_data {
            if ev.data.is_empty() {
                out.extend_from_slice(b"data:");
                out.extend_from_slice(&ev.data_end);
            } else {
                let mut masker = JsonMasker::new(self.policy.clone());
                let mut masked = Vec::with_capacity(ev.data.len() + 64);
                masker.push(&ev.data, &mut masked).map_err(sse_error)?;
                masker.finish(&mut masked).map_err(sse_error)?;
                self.masked += masker.masked_count();
                let masked = masked.trim_ascii();
                let mut pieces = masked.split(|b| *b == b'\n' || *b == b'\r').peekable();
                while let Some(piece) = pieces.next() {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(piece);
                    match (&ev.data_end[..], pieces.peek()) {
                        (b"", Some(_)) => out.push(b'\n'),
                        (end, _) => out.extend_from_slice(end),
                    }
                }
            }
            out.extend_from_slice(&ev.held);
        }
        out.extend_from_slice(ending);
        ev.has_data = false;
        ev.data.clear();
        ev.data_end.clear();
        ev.held.clear();
        self.last = LastLine::Out;
        Ok(())
    }
}

/// Event data that does not parse is an SSE error; limit errors stay JSON
/// masking errors.
fn sse_error(e: MaskError) -> BodyError {
    match e {
        MaskError::TooDeep | MaskError::StringTooLong => BodyError::Mask(e),
        other => BodyError::Sse(format!("event data is not JSON ({})", other.code())),
    }
}
