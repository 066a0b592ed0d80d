//! Response-body masking: PII in upstream bodies is masked before it reaches a
//! principal who lacks the policy's `unmask_with` capability (phase 7,
//! respond).
//!
//! Owns: the masked answer's header values ([`headers`]), choosing how a
//! body is read ([`body_kind`], [`encoding`]) and the
//! per-body pipeline [`BodyMasker`]: decode ([`decode`]) → frame
//! ([`framing`] for NDJSON/SSE, [`csv`]) → mask ([`json`], [`strategy`] under a
//! [`policy::Policy`]). Must not: do I/O, know about hyper/tokio/HTTP types,
//! buffer a whole body, or ever pass bytes through unmasked. Every failure is
//! a [`BodyError`]; there is no fallback (fail closed).
//!
//! ```text
//!   chunk ─► decode (identity|gzip|deflate|br|zstd, bomb guard)
//!            └─► BOM gate ─► frame: Json   one JsonMasker for the body
//!                                   Ndjson one JsonMasker per line
//!                                   Sse    one JsonMasker per event's data
//!                                   Csv    header → column plan → rows
//!                              └─► masked, identity-encoded bytes into `out`
//! ```
//!
//! # LIFECYCLE
//!
//! States of a [`BodyMasker`]: **open** (`push` any number of times) →
//! **finished** (`finish` returned `Ok`) or **failed** (any call returned
//! `Err`). Finished and failed are final: later calls return an error and
//! add nothing to `out`.
//!
//! Inside one `push`, the chunk flows synchronously through three stages:
//! 1. *decoding* — the codec turns the chunk into decoded pieces of at most
//!    32 KiB (zstd: one block, ≤ 128 KiB). Each piece is counted first; the
//!    piece that would take the body over `max_decoded_bytes` is refused with
//!    [`BodyError::TooLarge`] before anything of it is framed (zip-bomb
//!    guard). The cap applies to identity bodies too (it is the masking
//!    limit); pass `u64::MAX` for endless streams such as SSE.
//! 2. *framing* — a leading UTF-8 BOM is passed through untouched; then the
//!    bytes are cut into units: the whole document (JSON), lines (NDJSON),
//!    events (SSE), records (CSV).
//! 3. *masking* — each unit is masked and its output appended to `out`.
//!
//! Chunk boundaries carry no meaning: every stage keeps its partial state
//! (codec window, partial line, pending `\r`, partial event, partial CSV
//! record, the JSON masker's own state) across calls, so any split of the
//! body — down to 1-byte chunks — gives byte-identical output. Output is
//! emitted as soon as it is decided: JSON and NDJSON stream through the
//! JSON masker (which never emits a byte of a selected value before it is
//! masked); an SSE event leaves when its blank line arrives; a CSV row leaves
//! when its record ends. Memory is bounded: codec window + one SSE event or
//! CSV record (≤ 4 × `limits.max_string_bytes`, at least 1 KiB; larger →
//! error) + the JSON masker's bounded state (NDJSON lines are not buffered:
//! they stream through their masker, whose limits bound them). The output of one `push` is proportional to what that chunk
//! decodes to, so the proxy should push upstream frames as they come
//! (typically ≤ 64 KiB) and forward `out` after every call.
//!
//! `finish` drains the codec, checks the compressed stream is complete
//! (trailer, checksum), flushes the last unterminated line/event/record and
//! checks the JSON document is complete.
//!
//! On error: `out` is left exactly as it was before the failing call (the
//! failing call appends nothing), and the masker is failed. The caller stops
//! forwarding: if no body byte was sent yet it answers 502 with a JSON error
//! (code from [`BodyError::code`]); otherwise it aborts the response (reset
//! the stream / close the connection) so the client sees a truncated body,
//! never a complete-looking one. What was already sent was masked output
//! only: masked output never contains an unmasked selected value, because
//! only masked units (or, for JSON, bytes the masker has already decided)
//! are ever emitted.

pub mod csv;
pub mod decode;
pub mod framing;
pub mod headers;
pub mod json;
pub mod owner;
pub mod policy;
pub mod strategy;

use std::sync::Arc;

pub use json::{JsonMasker, MaskError};
pub use policy::{DetectScope, Detector, Limits, Policy, Selector, Strategy};

use decode::{Decoder, Sink};

/// How a response body is framed, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// One JSON document (`application/json`, `application/*+json`).
    Json,
    /// Newline-delimited JSON documents.
    Ndjson,
    /// Server-sent events whose `data` carries JSON.
    Sse,
    /// RFC 4180 CSV with a header record.
    Csv,
}

/// From a Content-Type header value: `application/json`, `application/*+json`
/// (e.g. `application/problem+json`, `application/vnd.api+json`) → Json;
/// `application/x-ndjson`, `application/ndjson`, `application/jsonl`,
/// `application/x-jsonlines` → Ndjson; `text/event-stream` → Sse; `text/csv` →
/// Csv. Case-insensitive; parameters are ignored except `charset` (must be
/// absent or `utf-8`/`utf8`, else `None`) and, for CSV, `header=absent`
/// (→ `None`: the first record must be the header). Anything else (text/plain,
/// text/html, octet-stream, malformed, missing) → `None`: the caller refuses
/// (fail closed).
pub fn body_kind(content_type: Option<&str>) -> Option<BodyKind> {
    let content_type = content_type?;
    // The usual JSON answers, without the general parser's allocations.
    for plain in ["application/json", "application/json; charset=utf-8"] {
        if content_type.eq_ignore_ascii_case(plain) {
            return Some(BodyKind::Json);
        }
    }
    let (essence, params) = split_media_type(content_type)?;
    let kind = match essence.as_str() {
        "application/json" => BodyKind::Json,
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines" => BodyKind::Ndjson,
        "text/event-stream" => BodyKind::Sse,
        "text/csv" => BodyKind::Csv,
        e => match e.strip_prefix("application/") {
            Some(sub) if sub.len() > "+json".len() && sub.ends_with("+json") => BodyKind::Json,
            _ => return None,
        },
    };
    for (name, value) in params {
        match name.as_str() {
            "charset" if value != "utf-8" && value != "utf8" => return None,
            "header" if kind == BodyKind::Csv && value == "absent" => return None,
            _ => {}
        }
    }
    Some(kind)
}

/// Splits `type/subtype; name=value; name="quoted"` into the lowercased
/// essence and lowercased parameters. `None` when malformed.
fn split_media_type(value: &str) -> Option<(String, Vec<(String, String)>)> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        match c {
            _ if escaped => {
                cur.push(c);
                escaped = false;
            }
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if quoted {
        return None;
    }
    parts.push(cur);
    let mut parts = parts.into_iter();
    let essence = parts.next()?.trim().to_ascii_lowercase();
    let (ty, sub) = essence.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if !token(ty) || !token(sub) {
        return None;
    }
    let mut params = Vec::new();
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (name, value) = p.split_once('=')?;
        params.push((
            name.trim().to_ascii_lowercase(),
            value.trim().to_ascii_lowercase(),
        ));
    }
    Some((essence, params))
}

/// A `Content-Encoding` the masker can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Br,
    Zstd,
}

/// From Content-Encoding: absent, empty or `identity` → Identity; `gzip` /
/// `x-gzip`, `deflate`, `br`, `zstd` (case-insensitive; `identity` entries
/// in a list are ignored). Several codings (`gzip, br`) or an unknown one →
/// [`BodyError::UnsupportedEncoding`] (fail closed).
pub fn encoding(content_encoding: Option<&str>) -> Result<Encoding, BodyError> {
    let Some(value) = content_encoding else {
        return Ok(Encoding::Identity);
    };
    let unsupported = || BodyError::UnsupportedEncoding(value.chars().take(100).collect());
    let mut found = Encoding::Identity;
    for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let e = match token.to_ascii_lowercase().as_str() {
            "identity" => continue,
            "gzip" | "x-gzip" => Encoding::Gzip,
            "deflate" => Encoding::Deflate,
            "br" => Encoding::Br,
            "zstd" => Encoding::Zstd,
            _ => return Err(unsupported()),
        };
        if found != Encoding::Identity {
            return Err(unsupported());
        }
        found = e;
    }
    Ok(found)
}

/// Why a body could not be masked. Messages never contain body content.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// A JSON document (the body, an NDJSON line, SSE event data) is invalid
    /// or over a limit.
    #[error("cannot mask JSON: {0}")]
    Mask(#[from] MaskError),
    /// The compressed stream is corrupt or truncated.
    #[error("cannot decode body: {0}")]
    Decode(String),
    /// The decoded body exceeds `max_decoded_bytes`.
    #[error("decoded body exceeds the masking limit")]
    TooLarge,
    /// The CSV body cannot be masked (ragged row, invalid UTF-8, row too big).
    #[error("cannot mask CSV: {0}")]
    Csv(String),
    /// The event stream cannot be masked (non-JSON data, event too big).
    #[error("cannot mask event stream: {0}")]
    Sse(String),
    /// Content-Encoding the gateway cannot decode.
    #[error("unsupported content-encoding {0:?}")]
    UnsupportedEncoding(String),
}

impl BodyError {
    /// Stable snake_case code for logs, metrics labels and the JSON error
    /// body: the [`MaskError::code`] for `Mask`, else `decode_failed`,
    /// `decoded_too_large`, `invalid_csv`, `invalid_sse`, `unsupported_encoding`.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::Mask(e) => e.code(),
            BodyError::Decode(_) => "decode_failed",
            BodyError::TooLarge => "decoded_too_large",
            BodyError::Csv(_) => "invalid_csv",
            BodyError::Sse(_) => "invalid_sse",
            BodyError::UnsupportedEncoding(_) => "unsupported_encoding",
        }
    }
}

/// The upper bound on one buffered line, event or CSV record.
pub(crate) fn unit_limit(policy: &Policy) -> usize {
    policy.limits.max_string_bytes.saturating_mul(4).max(1024)
}

/// One response body: decode → frame → mask, push-based. Output is always
/// identity-encoded (uncompressed). See the LIFECYCLE section above.
pub struct BodyMasker {
    /// `Err` when the decoder could not be set up (zstd context); reported
    /// by the first `push`/`finish`.
    pipeline: Result<Decoder<Stage>, Option<BodyError>>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Finished,
    Failed,
}

impl BodyMasker {
    /// `max_decoded_bytes` caps the decoded body (after decompression; the
    /// raw body for identity): more → [`BodyError::TooLarge`].
    pub fn new(
        policy: Arc<Policy>,
        kind: BodyKind,
        encoding: Encoding,
        max_decoded_bytes: u64,
    ) -> BodyMasker {
        let frame = match kind {
            BodyKind::Json => Frame::Json(Box::new(JsonMasker::new(policy))),
            BodyKind::Ndjson => Frame::Ndjson(Box::new(framing::Ndjson::new(policy))),
            BodyKind::Sse => Frame::Sse(Box::new(framing::Sse::new(policy))),
            BodyKind::Csv => Frame::Csv(Box::new(csv::CsvMasker::new(policy))),
        };
        let stage = Stage {
            bom: BomGate::default(),
            frame,
            out: Vec::new(),
        };
        BodyMasker {
            pipeline: Decoder::new(encoding, stage, max_decoded_bytes).map_err(Some),
            state: State::Open,
        }
    }

    /// Pushes one chunk of the upstream body (as received, still encoded)
    /// and appends whatever masked output is ready to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        self.run(out, |d| d.push(chunk))
    }

    /// Ends the body: appends the rest of the masked output, or fails if the
    /// body was incomplete (truncated stream, unfinished JSON, …).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        let r = self.run(out, |d| {
            d.finish()?;
            let stage = d.sink_mut();
            stage.bom.finish(&mut stage.frame, &mut stage.out)?;
            stage.frame.finish(&mut stage.out)
        });
        if r.is_ok() {
            self.state = State::Finished;
        }
        r
    }

    /// Values masked so far (JSON values, CSV cells), for tests and audit.
    pub fn masked_count(&self) -> u64 {
        match &self.pipeline {
            Ok(d) => d.sink().frame.masked_count(),
            Err(_) => 0,
        }
    }

    fn run(
        &mut self,
        out: &mut Vec<u8>,
        step: impl FnOnce(&mut Decoder<Stage>) -> Result<(), BodyError>,
    ) -> Result<(), BodyError> {
        let closed = match self.state {
            State::Open => None,
            State::Finished => Some("body masker already finished"),
            State::Failed => Some("body masker already failed"),
        };
        let decoder = match (&mut self.pipeline, closed) {
            (_, Some(why)) => return Err(BodyError::Decode(why.into())),
            (Err(e), None) => {
                self.state = State::Failed;
                return Err(e
                    .take()
                    .unwrap_or(BodyError::Decode("decoder setup failed".into())));
            }
            (Ok(d), None) => d,
        };
        let mark = out.len();
        decoder.sink_mut().out = std::mem::take(out);
        let r = step(decoder);
        *out = std::mem::take(&mut decoder.sink_mut().out);
        if r.is_err() {
            out.truncate(mark);
            self.state = State::Failed;
        }
        r
    }
}

/// The decoder's sink: BOM gate, framing and masking for one body.
struct Stage {
    bom: BomGate,
    frame: Frame,
    /// The caller's `out`, lent for the duration of one call.
    out: Vec<u8>,
}

impl Sink for Stage {
    fn accept(&mut self, decoded: &[u8]) -> Result<(), BodyError> {
        self.bom.pass(decoded, &mut self.frame, &mut self.out)
    }
}

/// Passes leading UTF-8 BOMs through to the output unparsed, so framers and
/// the CSV header match see the content (a BOM glued to `data` or to a
/// header name would otherwise hide a field from masking).
#[derive(Default)]
struct BomGate {
    /// Bytes of a possible BOM seen so far (a prefix of `BOM`).
    matched: usize,
    done: bool,
}

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

impl BomGate {
    fn pass(
        &mut self,
        mut input: &[u8],
        frame: &mut Frame,
        out: &mut Vec<u8>,
    ) -> Result<(), BodyError> {
        if !self.done {
            while let Some((&b, rest)) = input.split_first() {
                if b != BOM[self.matched] {
                    break;
                }
                input = rest;
                self.matched += 1;
                if self.matched == BOM.len() {
                    out.extend_from_slice(BOM);
                    self.matched = 0;
                }
            }
            if input.is_empty() {
                return Ok(()); // still undecided
            }
            self.done = true;
            let partial = self.matched;
            self.matched = 0;
            frame.push(&BOM[..partial], out)?;
        }
        frame.push(input, out)
    }

    fn finish(&mut self, frame: &mut Frame, out: &mut Vec<u8>) -> Result<(), BodyError> {
        let partial = std::mem::take(&mut self.matched);
        self.done = true;
        frame.push(&BOM[..partial], out)
    }
}

/// The framing + masking stage of one body.
enum Frame {
    Json(Box<JsonMasker>),
    Ndjson(Box<framing::Ndjson>),
    Sse(Box<framing::Sse>),
    Csv(Box<csv::CsvMasker>),
}

impl Frame {
    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        if bytes.is_empty() {
            return Ok(());
        }
        match self {
            Frame::Json(m) => Ok(m.push(bytes, out)?),
            Frame::Ndjson(f) => f.push(bytes, out),
            Frame::Sse(f) => f.push(bytes, out),
            Frame::Csv(c) => c.push(bytes, out),
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        match self {
            Frame::Json(m) => Ok(m.finish(out)?),
            Frame::Ndjson(f) => f.finish(out),
            Frame::Sse(f) => f.finish(out),
            Frame::Csv(c) => c.finish(out),
        }
    }

    fn masked_count(&self) -> u64 {
        match self {
            Frame::Json(m) => m.masked_count(),
            Frame::Ndjson(f) => f.masked_count(),
            Frame::Sse(f) => f.masked_count(),
            Frame::Csv(c) => c.masked_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use proptest::prelude::{ProptestConfig, any, prop_assert, proptest};

    use super::strategy::{mask_text, scrub};
    use super::*;

    const ALL_ENCODINGS: [Encoding; 5] = [
        Encoding::Identity,
        Encoding::Gzip,
        Encoding::Deflate,
        Encoding::Br,
        Encoding::Zstd,
    ];
    const ALL_KINDS: [BodyKind; 4] = [
        BodyKind::Json,
        BodyKind::Ndjson,
        BodyKind::Sse,
        BodyKind::Csv,
    ];

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    fn policy_with(
        fields: &[(&str, &str)],
        detectors: &[&str],
        detect_in: DetectScope,
        case_insensitive: bool,
    ) -> Arc<Policy> {
        Arc::new(Policy {
            name: "test".into(),
            fields: fields
                .iter()
                .map(|(s, st)| (sel(s), Strategy::parse(st).unwrap()))
                .collect(),
            detectors: detectors
                .iter()
                .map(|d| Detector::parse(d).unwrap())
                .collect(),
            detect_in,
            case_insensitive,
            hash_key: b"test-key".to_vec(),
            limits: Limits {
                max_depth: 64,
                max_string_bytes: 1 << 20,
            },
            compiled: Default::default(),
        })
    }

    /// `$..phone last4, $..email email, $..name redact`.
    fn pii_policy() -> Arc<Policy> {
        policy_with(
            &[
                ("$..phone", "last4"),
                ("$..email", "email"),
                ("$..name", "redact"),
            ],
            &[],
            DetectScope::None,
            false,
        )
    }

    const PHONE: &str = "+1 555 0100";
    const EMAIL: &str = "jane.roe@example.com";
    const NAME: &str = "Jane Roe";

    fn customer(i: usize) -> String {
        format!(r#"{{"id":{i},"name":"{NAME}","phone":"{PHONE}","email":"{EMAIL}","tier":"gold"}}"#)
    }

    fn fixture(kind: BodyKind) -> Vec<u8> {
        match kind {
            BodyKind::Json => {
                let items: Vec<String> = (0..200).map(customer).collect();
                format!(r#"{{"customers":[{}],"total":200}}"#, items.join(",")).into_bytes()
            }
            BodyKind::Ndjson => {
                let mut s = String::new();
                for i in 0..200 {
                    s += &customer(i);
                    s += if i % 3 == 0 { "\r\n" } else { "\n" };
                    if i % 50 == 0 {
                        s += "\n";
                    }
                }
                s.into_bytes()
            }
            BodyKind::Sse => {
                let mut s = String::from(": stream start\n\n");
                for i in 0..200 {
                    s += &format!("event: customer\nid: {i}\ndata: {}\n\n", customer(i));
                }
                s.into_bytes()
            }
            BodyKind::Csv => {
                let mut s = String::from("id,name,phone,email,tier\r\n");
                for i in 0..200 {
                    s += &format!("{i},{NAME},{PHONE},\"{EMAIL}\",\"gold, \"\"vip\"\"\"\r\n");
                }
                s.into_bytes()
            }
        }
    }

    fn encode(enc: Encoding, data: &[u8]) -> Vec<u8> {
        match enc {
            Encoding::Identity => data.to_vec(),
            Encoding::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Encoding::Deflate => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Encoding::Br => {
                let mut v = Vec::new();
                {
                    let mut w = brotli::CompressorWriter::new(&mut v, 4096, 4, 22);
                    for c in data.chunks(1 << 16) {
                        w.write_all(c).unwrap();
                    }
                }
                v
            }
            Encoding::Zstd => zstd::stream::encode_all(data, 1).unwrap(),
        }
    }

    fn run_chunks(
        policy: &Arc<Policy>,
        kind: BodyKind,
        enc: Encoding,
        chunks: &mut dyn Iterator<Item = &[u8]>,
        cap: u64,
    ) -> Result<(Vec<u8>, u64), BodyError> {
        let mut m = BodyMasker::new(policy.clone(), kind, enc, cap);
        let mut out = Vec::new();
        for c in chunks {
            m.push(c, &mut out)?;
        }
        m.finish(&mut out)?;
        Ok((out, m.masked_count()))
    }

    fn run(
        policy: &Arc<Policy>,
        kind: BodyKind,
        enc: Encoding,
        body: &[u8],
        chunk: usize,
    ) -> Result<Vec<u8>, BodyError> {
        run_chunks(policy, kind, enc, &mut body.chunks(chunk.max(1)), u64::MAX).map(|r| r.0)
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    fn masked_phone() -> String {
        mask_text(&Strategy::Keep(4), PHONE, b"").unwrap()
    }

    fn masked_email() -> String {
        mask_text(&Strategy::Email, EMAIL, b"").unwrap()
    }

    /// Checks one masked customer object.
    fn check_customer(v: &serde_json::Value) {
        assert_eq!(v["name"], strategy::REDACTED);
        assert_eq!(v["phone"], masked_phone().as_str());
        assert_eq!(v["email"], masked_email().as_str());
        assert_eq!(v["tier"], "gold");
    }

    /// Semantic checks of a masked fixture, per kind.
    fn check_masked(kind: BodyKind, out: &[u8]) {
        for pii in [PHONE, EMAIL, NAME] {
            assert!(!contains(out, pii), "{kind:?}: {pii} survived");
        }
        let text = std::str::from_utf8(out).unwrap();
        match kind {
            BodyKind::Json => {
                let v: serde_json::Value = serde_json::from_slice(out).unwrap();
                assert_eq!(v["total"], 200);
                let list = v["customers"].as_array().unwrap();
                assert_eq!(list.len(), 200);
                list.iter().for_each(check_customer);
            }
            BodyKind::Ndjson => {
                let lines: Vec<&str> = text.split('\n').collect();
                assert_eq!(lines.len(), 205); // 200 docs + 4 blank lines + "" after the last \n
                let docs: Vec<&str> = lines
                    .iter()
                    .map(|l| l.trim_end_matches('\r'))
                    .filter(|l| !l.is_empty())
                    .collect();
                assert_eq!(docs.len(), 200);
                for (i, d) in docs.iter().enumerate() {
                    let v: serde_json::Value = serde_json::from_str(d).unwrap();
                    assert_eq!(v["id"], i);
                    check_customer(&v);
                }
                assert_eq!(text.matches("\r\n").count(), 67);
            }
            BodyKind::Sse => {
                assert!(
                    text.starts_with(":\n\nevent: customer\nid: 0\ndata: "),
                    "comment text is dropped"
                );
                let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
                assert_eq!(events.len(), 201);
                for (i, e) in events[1..].iter().enumerate() {
                    let lines: Vec<&str> = e.split('\n').collect();
                    assert_eq!(lines[..2], ["event: customer", &format!("id: {i}")]);
                    assert_eq!(lines.len(), 3);
                    let v: serde_json::Value =
                        serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
                    check_customer(&v);
                }
            }
            BodyKind::Csv => {
                let want_row = format!(
                    "[REDACTED],{},{},\"gold, \"\"vip\"\"\"\r\n",
                    masked_phone(),
                    masked_email()
                );
                let mut want = String::from("id,name,phone,email,tier\r\n");
                for i in 0..200 {
                    want += &format!("{i},{want_row}");
                }
                assert_eq!(text, want);
            }
        }
    }

    #[test]
    fn every_kind_by_every_encoding_round_trips() {
        let policy = pii_policy();
        for kind in ALL_KINDS {
            let plain = fixture(kind);
            let want = run(&policy, kind, Encoding::Identity, &plain, usize::MAX).unwrap();
            check_masked(kind, &want);
            for enc in ALL_ENCODINGS {
                let body = encode(enc, &plain);
                for chunk in [7, 4096, usize::MAX] {
                    let got = run(&policy, kind, enc, &body, chunk)
                        .unwrap_or_else(|e| panic!("{kind:?} {enc:?} {chunk}: {e}"));
                    assert!(got == want, "{kind:?} {enc:?} chunk {chunk}");
                }
            }
        }
    }

    #[test]
    fn one_byte_chunks_equal_one_chunk() {
        let policy = pii_policy();
        for kind in ALL_KINDS {
            let plain = fixture(kind);
            for enc in [Encoding::Identity, Encoding::Gzip] {
                let body = encode(enc, &plain);
                let whole = run(&policy, kind, enc, &body, usize::MAX).unwrap();
                let bytes = run(&policy, kind, enc, &body, 1).unwrap();
                assert!(whole == bytes, "{kind:?} {enc:?}");
            }
        }
    }

    #[test]
    fn masked_count_counts_values() {
        let policy = pii_policy();
        for kind in ALL_KINDS {
            let (_, n) = run_chunks(
                &policy,
                kind,
                Encoding::Identity,
                &mut [&fixture(kind)[..]].into_iter(),
                u64::MAX,
            )
            .unwrap();
            assert_eq!(n, 600, "{kind:?}");
        }
    }

    #[test]
    fn zip_bomb_is_too_large_during_push() {
        // 16 MiB of JSON whitespace: valid for every masker, tiny compressed.
        let mut bomb = vec![b' '; 16 << 20];
        bomb[0] = b'[';
        bomb[(16 << 20) - 1] = b']';
        let policy = pii_policy();
        for enc in [
            Encoding::Gzip,
            Encoding::Deflate,
            Encoding::Br,
            Encoding::Zstd,
        ] {
            let body = encode(enc, &bomb);
            assert!(body.len() < 100_000, "{enc:?} {}", body.len());
            let mut m = BodyMasker::new(policy.clone(), BodyKind::Json, enc, 1 << 20);
            let mut out = Vec::new();
            let mut err = None;
            for c in body.chunks(16 * 1024) {
                if let Err(e) = m.push(c, &mut out) {
                    err = Some(e);
                    break;
                }
            }
            let err = err.unwrap_or_else(|| panic!("{enc:?}: no error during push"));
            assert!(matches!(err, BodyError::TooLarge), "{enc:?}: {err}");
            assert_eq!(err.code(), "decoded_too_large");
            assert!(out.len() <= 1 << 20);
            // Failed is final.
            assert!(m.push(b"", &mut out).is_err());
            assert!(m.finish(&mut out).is_err());
        }
        // Identity bodies are capped too.
        let r = run_chunks(
            &policy,
            BodyKind::Json,
            Encoding::Identity,
            &mut bomb.chunks(1 << 16),
            1 << 20,
        );
        assert!(matches!(r, Err(BodyError::TooLarge)));
    }

    #[test]
    fn corrupt_or_truncated_gzip_is_an_error() {
        let policy = pii_policy();
        let body = encode(Encoding::Gzip, &fixture(BodyKind::Json));
        let mut flipped = body.clone();
        flipped[body.len() / 2] ^= 0x55;
        let mut not_gzip = body.clone();
        not_gzip[0] = b'{';
        for bad in [&flipped[..], &body[..body.len() - 4], &not_gzip[..]] {
            let err = run(&policy, BodyKind::Json, Encoding::Gzip, bad, 1000).unwrap_err();
            assert!(
                matches!(err, BodyError::Decode(_) | BodyError::Mask(_)),
                "{err}"
            );
        }
        let err = run(
            &policy,
            BodyKind::Json,
            Encoding::Gzip,
            &body[..body.len() - 4],
            1000,
        )
        .unwrap_err();
        assert!(matches!(err, BodyError::Decode(_)), "{err}");
        assert_eq!(err.code(), "decode_failed");
        // A plain body labelled gzip.
        let err = run(&policy, BodyKind::Json, Encoding::Gzip, b"{\"a\":1}", 1000).unwrap_err();
        assert!(matches!(err, BodyError::Decode(_)), "{err}");
    }

    #[test]
    fn encoding_table() {
        let ok = [
            (None, Encoding::Identity),
            (Some(""), Encoding::Identity),
            (Some("identity"), Encoding::Identity),
            (Some("gzip"), Encoding::Gzip),
            (Some("X-GZIP"), Encoding::Gzip),
            (Some(" deflate "), Encoding::Deflate),
            (Some("br"), Encoding::Br),
            (Some("zstd"), Encoding::Zstd),
            (Some("identity, gzip"), Encoding::Gzip),
        ];
        for (header, want) in ok {
            assert_eq!(encoding(header).unwrap(), want, "{header:?}");
        }
        for header in [
            "gzip, br",
            "gzip,gzip",
            "compress",
            "x-compress",
            "gzip;q=1",
            "bzip2",
            "*",
        ] {
            let err = encoding(Some(header)).unwrap_err();
            assert!(matches!(err, BodyError::UnsupportedEncoding(_)), "{header}");
            assert_eq!(err.code(), "unsupported_encoding");
        }
    }

    #[test]
    fn body_kind_table() {
        use BodyKind::*;
        let table: &[(Option<&str>, Option<BodyKind>)] = &[
            (Some("application/json"), Some(Json)),
            (Some("Application/JSON; charset=UTF-8"), Some(Json)),
            (Some("application/json;charset=\"utf-8\""), Some(Json)),
            (Some("application/json; charset=utf8"), Some(Json)),
            (Some("application/problem+json"), Some(Json)),
            (Some("application/vnd.api+json"), Some(Json)),
            (Some("application/x-ndjson"), Some(Ndjson)),
            (Some("application/ndjson"), Some(Ndjson)),
            (Some("application/jsonl"), Some(Ndjson)),
            (Some("application/x-jsonlines; charset=utf-8"), Some(Ndjson)),
            (Some("text/event-stream"), Some(Sse)),
            (Some("text/csv"), Some(Csv)),
            (Some("text/csv; header=present; charset=utf-8"), Some(Csv)),
            (Some("text/csv; header=absent"), None),
            (Some("application/json; charset=iso-8859-1"), None),
            (Some("application/json; charset=utf-16"), None),
            (Some("text/plain"), None),
            (Some("text/html; charset=utf-8"), None),
            (Some("application/octet-stream"), None),
            (Some("text/json"), None),
            (Some("application/+json"), None),
            (Some("application/json, text/html"), None),
            (Some("application/json; charset=\"utf-8"), None),
            (Some(""), None),
            (Some("json"), None),
            (None, None),
        ];
        for (ct, want) in table {
            assert_eq!(body_kind(*ct), *want, "{ct:?}");
        }
    }

    #[test]
    fn ndjson_bad_line_is_an_error_and_leaves_out_untouched() {
        let policy = pii_policy();
        let mut m = BodyMasker::new(
            policy.clone(),
            BodyKind::Ndjson,
            Encoding::Identity,
            u64::MAX,
        );
        let mut out = Vec::new();
        m.push(format!("{}\n", customer(1)).as_bytes(), &mut out)
            .unwrap();
        let sent = out.clone();
        assert!(
            !sent.is_empty(),
            "the first line streams out before the body ends"
        );
        let err = m
            .push(
                format!("{}\n{{\"name\": oops}}\n", customer(2)).as_bytes(),
                &mut out,
            )
            .unwrap_err();
        assert!(matches!(err, BodyError::Mask(_)), "{err}");
        assert_eq!(out, sent, "a failing push appends nothing");
        // Other broken shapes.
        for body in [
            "{\"a\":1} {\"b\":2}\n",
            "{\"a\":\n1}\n",
            "[1,2\n",
            "{\"a\":1}\nnot json\n",
            "{\"a\":1}\n{",
        ] {
            assert!(
                run(
                    &policy,
                    BodyKind::Ndjson,
                    Encoding::Identity,
                    body.as_bytes(),
                    3
                )
                .is_err(),
                "{body:?}"
            );
        }
    }

    #[test]
    fn ndjson_line_endings_and_blank_lines() {
        let policy = pii_policy();
        let body = b"{\"a\":1}\r\n\n   \r\n\t\n{\"b\":2}\r\r\n{\"c\":3}\r";
        let want = run(
            &policy,
            BodyKind::Ndjson,
            Encoding::Identity,
            body,
            usize::MAX,
        )
        .unwrap();
        for chunk in 1..5 {
            assert_eq!(
                run(&policy, BodyKind::Ndjson, Encoding::Identity, body, chunk).unwrap(),
                want
            );
        }
        let text = String::from_utf8(want).unwrap();
        let parts: Vec<&str> = text.split('\n').collect();
        assert_eq!(parts.len(), 6);
        assert!(parts[0].ends_with('\r'));
        assert_eq!(parts[1..4], ["", "\r", ""]);
        assert!(parts[5].ends_with('\r'));
        for (p, key) in [(parts[0], "a"), (parts[4], "b"), (parts[5], "c")] {
            let v: serde_json::Value = serde_json::from_str(p.trim_end_matches('\r')).unwrap();
            assert!(v.get(key).is_some());
        }
    }

    #[test]
    fn sse_multiline_data_comments_and_fields() {
        let policy = pii_policy();
        let body = format!(
            ": keepalive\n\nevent: update\nid: 7\ndata: {{\"name\":\"{NAME}\",\ndata:  \"phone\":\"{PHONE}\"}}\n: mid-event comment\nretry: 5000\n\n"
        );
        let out = run(
            &policy,
            BodyKind::Sse,
            Encoding::Identity,
            body.as_bytes(),
            1,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[..4], [":", "", "event: update", "id: 7"]);
        let data = lines[4].strip_prefix("data: ").unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["name"], strategy::REDACTED);
        assert_eq!(v["phone"], masked_phone().as_str());
        assert_eq!(lines[5..], [":", "retry: 5000", "", ""]);
        assert!(!text.contains(PHONE) && !text.contains(NAME));
    }

    #[test]
    fn sse_crlf_and_cr_line_endings_and_bom() {
        let policy = pii_policy();
        let body = format!(
            "\u{FEFF}data: {}\r\n\r\n: c\rdata\rid: 1\r\r{}",
            customer(1),
            "event: x\r\ndata:{\"phone\":\"+1 555 0100\"}\r\n\r\n"
        );
        let want = run(
            &policy,
            BodyKind::Sse,
            Encoding::Identity,
            body.as_bytes(),
            usize::MAX,
        )
        .unwrap();
        for chunk in 1..4 {
            assert_eq!(
                run(
                    &policy,
                    BodyKind::Sse,
                    Encoding::Identity,
                    body.as_bytes(),
                    chunk
                )
                .unwrap(),
                want
            );
        }
        let text = String::from_utf8(want).unwrap();
        assert!(
            text.starts_with("\u{FEFF}data: {"),
            "BOM kept, data masked: {text:?}"
        );
        assert!(!text.contains(PHONE) && !text.contains(NAME) && !text.contains(EMAIL));
        assert!(
            text.contains("}\r\n\r\n:\rdata:\rid: 1\r\revent: x\r\ndata: {"),
            "{text:?}"
        );
        assert!(text.ends_with("}\r\n\r\n"));
    }

    #[test]
    fn sse_streams_each_event_when_its_blank_line_arrives() {
        let policy = pii_policy();
        let mut m = BodyMasker::new(policy, BodyKind::Sse, Encoding::Identity, u64::MAX);
        let mut out = Vec::new();
        m.push(b": hi\n", &mut out).unwrap();
        assert_eq!(
            out, b":\n",
            "lines before data are not delayed (comment text dropped)"
        );
        m.push(format!("data: {}\n", customer(1)).as_bytes(), &mut out)
            .unwrap();
        assert_eq!(out, b":\n", "the event waits for its blank line");
        m.push(b"\n", &mut out).unwrap();
        assert!(out.ends_with(b"}\n\n"));
        m.finish(&mut out).unwrap();
    }

    #[test]
    fn sse_non_json_data_is_an_error() {
        let policy = pii_policy();
        for body in [
            "data: hello world\n\n",
            "data: {\"a\":1}\ndata: x\n\n",
            "data: {\"a\":\n\n",
            "data: {\"a\":1}}\n\n",
            "data:\ndata:\n\n",
        ] {
            let err = run(
                &policy,
                BodyKind::Sse,
                Encoding::Identity,
                body.as_bytes(),
                2,
            )
            .unwrap_err();
            assert!(matches!(err, BodyError::Sse(_)), "{body:?}: {err}");
            assert_eq!(err.code(), "invalid_sse");
        }
        // A final event without its blank line is still checked.
        let err = run(
            &policy,
            BodyKind::Sse,
            Encoding::Identity,
            b"data: nope",
            100,
        )
        .unwrap_err();
        assert!(matches!(err, BodyError::Sse(_)));
        // Empty data passes as `data:`.
        let out = run(
            &policy,
            BodyKind::Sse,
            Encoding::Identity,
            b"event: ping\ndata\n\n",
            100,
        )
        .unwrap();
        assert_eq!(out, b"event: ping\ndata:\n\n");
    }

    #[test]
    fn sse_event_size_is_bounded() {
        let mut p = (*pii_policy()).clone();
        p.limits.max_string_bytes = 256; // unit limit 1 KiB
        let policy = Arc::new(p);
        let big = format!("data: [{}1]\n\n", "1,".repeat(600));
        let err = run(
            &policy,
            BodyKind::Sse,
            Encoding::Identity,
            big.as_bytes(),
            100,
        )
        .unwrap_err();
        assert!(matches!(err, BodyError::Sse(_)), "{err}");
        let many = "data: 1\n".repeat(300);
        let err = run(
            &policy,
            BodyKind::Sse,
            Encoding::Identity,
            many.as_bytes(),
            7,
        )
        .unwrap_err();
        assert!(matches!(err, BodyError::Sse(_)), "{err}");
        // Comment-only streams are not buffered, however long.
        let comments = ": ping\n".repeat(1000);
        let out = run(
            &policy,
            BodyKind::Sse,
            Encoding::Identity,
            comments.as_bytes(),
            7,
        )
        .unwrap();
        assert_eq!(out, ":\n".repeat(1000).as_bytes());
    }

    #[test]
    fn csv_quoting_of_commas_quotes_and_newlines() {
        let policy = policy_with(&[("$..notes", "redact")], &[], DetectScope::None, false);
        let body = "id,comment,notes\n1,\"a, b\",x\n2,\"say \"\"hi\"\"\",y\n3,\"two\nlines\",z\n4,\"cr\r\nlf\",\"secret, \"\"quoted\"\"\"\n5,,\n6,plain,z";
        let out = run(
            &policy,
            BodyKind::Csv,
            Encoding::Identity,
            body.as_bytes(),
            1,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id,comment,notes\r\n1,\"a, b\",[REDACTED]\r\n2,\"say \"\"hi\"\"\",[REDACTED]\r\n3,\"two\nlines\",[REDACTED]\r\n4,\"cr\r\nlf\",[REDACTED]\r\n5,,[REDACTED]\r\n6,plain,[REDACTED]\r\n"
        );
    }

    #[test]
    fn csv_column_removal_null_and_strategies() {
        let policy = policy_with(
            &[
                ("$[*].email", "remove"),
                ("$.phone", "last4"),
                ("$..ssn", "null"),
                ("$.name", "keep2"),
            ],
            &[],
            DetectScope::None,
            false,
        );
        let body = format!(
            "name,email,phone,ssn,city\nJane,{EMAIL},{PHONE},123-45-6789,Oslo\nBo,b@x.io,12,000,Rome\n"
        );
        let (out, count) = run_chunks(
            &policy,
            BodyKind::Csv,
            Encoding::Identity,
            &mut [body.as_bytes()].into_iter(),
            u64::MAX,
        )
        .unwrap();
        let keep2 = |s: &str| mask_text(&Strategy::Keep(2), s, b"").unwrap();
        let keep4 = |s: &str| mask_text(&Strategy::Keep(4), s, b"").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "name,phone,ssn,city\r\n{},{},,Oslo\r\n{},{},,Rome\r\n",
                keep2("Jane"),
                keep4(PHONE),
                keep2("Bo"),
                keep4("12")
            )
        );
        assert_eq!(count, 8);
    }

    #[test]
    fn csv_header_match_case_trim_and_bom() {
        let body = format!("\u{FEFF}Name, PHONE ,x\n{NAME},{PHONE},1\n");
        let sensitive = policy_with(
            &[("$..phone", "redact"), ("$..name", "redact")],
            &[],
            DetectScope::None,
            false,
        );
        let out = run(
            &sensitive,
            BodyKind::Csv,
            Encoding::Identity,
            body.as_bytes(),
            1,
        )
        .unwrap();
        assert!(
            contains(&out, NAME) && contains(&out, PHONE),
            "case-sensitive: no match"
        );
        let insensitive = policy_with(
            &[("$..phone", "redact"), ("$..name", "redact")],
            &[],
            DetectScope::None,
            true,
        );
        let out = run(
            &insensitive,
            BodyKind::Csv,
            Encoding::Identity,
            body.as_bytes(),
            1,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\u{FEFF}Name, PHONE ,x\r\n[REDACTED],[REDACTED],1\r\n"
        );
        // `.*` as last segment selects every column.
        let all = policy_with(&[("$[*].*", "redact")], &[], DetectScope::None, false);
        let out = run(&all, BodyKind::Csv, Encoding::Identity, b"a,b\n1,2\n", 100).unwrap();
        assert_eq!(out, b"a,b\r\n[REDACTED],[REDACTED]\r\n");
    }

    #[test]
    fn csv_detectors_everywhere_and_in_selected_columns() {
        let note = format!("mail {EMAIL} or call 555 0100 123 today");
        let body = format!("id,note,other\n1,{note},\"{note}\"\n");
        let dets = [Detector::Email, Detector::Phone];
        let scrubbed = scrub(&dets, &note).into_owned();
        assert_ne!(
            scrubbed, note,
            "the stand-in/real scrubber must find something"
        );
        let q = |s: &str| {
            if s.contains(',') {
                format!("\"{s}\"")
            } else {
                s.to_string()
            }
        };

        let all = policy_with(&[], &["email", "phone"], DetectScope::All, false);
        let (out, count) = run_chunks(
            &all,
            BodyKind::Csv,
            Encoding::Identity,
            &mut body.as_bytes().chunks(3),
            u64::MAX,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("id,note,other\r\n1,{},{}\r\n", q(&scrubbed), q(&scrubbed))
        );
        assert_eq!(count, 2);

        let fields = policy_with(
            &[],
            &["email", "phone"],
            DetectScope::Fields(vec![sel("$..note")]),
            false,
        );
        let out = run(
            &fields,
            BodyKind::Csv,
            Encoding::Identity,
            body.as_bytes(),
            5,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("id,note,other\r\n1,{},{}\r\n", q(&scrubbed), q(&note))
        );

        // A field rule wins over the detectors; the header goes through the
        // detectors too (it may be a row of data: a body without its header).
        let both = policy_with(&[("$.note", "redact")], &["email"], DetectScope::All, false);
        let body = format!("id,note,{EMAIL}\n1,{note},x\n");
        let out = run(&both, BodyKind::Csv, Encoding::Identity, body.as_bytes(), 5).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "id,note,{}\r\n1,[REDACTED],x\r\n",
                scrub(&[Detector::Email], EMAIL)
            )
        );
    }

    #[test]
    fn csv_ragged_rows_invalid_utf8_and_huge_rows_fail() {
        let policy = pii_policy();
        let err = run(
            &policy,
            BodyKind::Csv,
            Encoding::Identity,
            b"a,b\n1,2\n1,2,3\n",
            4,
        )
        .unwrap_err();
        assert!(matches!(err, BodyError::Csv(_)), "{err}");
        assert_eq!(err.code(), "invalid_csv");
        // Short rows too: the cells would not be in their columns.
        let err = run(
            &policy,
            BodyKind::Csv,
            Encoding::Identity,
            b"a,name\n1\n",
            4,
        )
        .unwrap_err();
        assert!(matches!(err, BodyError::Csv(_)), "{err}");
        let err = run(
            &policy,
            BodyKind::Csv,
            Encoding::Identity,
            b"a,name\n1,\xff\xfe\n",
            4,
        )
        .unwrap_err();
        assert!(matches!(err, BodyError::Csv(_)), "{err}");
        let mut p = (*policy).clone();
        p.limits.max_string_bytes = 256;
        let small = Arc::new(p);
        let big = format!("a\n\"{}\"\n", "x".repeat(5000));
        let err = run(
            &small,
            BodyKind::Csv,
            Encoding::Identity,
            big.as_bytes(),
            100,
        )
        .unwrap_err();
        assert!(matches!(err, BodyError::Csv(_)), "{err}");
        let wide = format!("a\n{}\n", ",".repeat(5000));
        assert!(
            run(
                &small,
                BodyKind::Csv,
                Encoding::Identity,
                wide.as_bytes(),
                100
            )
            .is_err()
        );
    }

    #[test]
    fn csv_index_selector_names_the_column_of_the_key_before_it() {
        // `$.a[0]` masks the JSON list's item; in CSV the list is one cell
        // of column `a`: the whole cell goes (fail closed).
        let policy = policy_with(&[("$.a[0]", "redact")], &[], DetectScope::None, false);
        let out = run(&policy, BodyKind::Csv, Encoding::Identity, b"a,b\n1,2\n", 1).unwrap();
        assert_eq!(out, b"a,b\r\n[REDACTED],2\r\n");
        // Indexes alone name no column.
        let policy = policy_with(&[("$[0]", "redact")], &[], DetectScope::None, false);
        let out = run(&policy, BodyKind::Csv, Encoding::Identity, b"a\n1\n", 1).unwrap();
        assert_eq!(out, b"a\r\n1\r\n");
    }

    #[test]
    fn json_body_errors_and_bom() {
        let policy = pii_policy();
        let err = run(&policy, BodyKind::Json, Encoding::Identity, b"{\"a\":", 2).unwrap_err();
        assert!(matches!(err, BodyError::Mask(_)), "{err}");
        assert!(run(&policy, BodyKind::Json, Encoding::Identity, b"{} {}", 2).is_err());
        assert!(run(&policy, BodyKind::Json, Encoding::Identity, b"", 2).is_err());
        let out = run(
            &policy,
            BodyKind::Json,
            Encoding::Identity,
            format!("\u{FEFF}{}", customer(1)).as_bytes(),
            1,
        )
        .unwrap();
        assert!(out.starts_with("\u{FEFF}".as_bytes()));
        let v: serde_json::Value = serde_json::from_slice(&out[3..]).unwrap();
        check_customer(&v);
    }

    #[test]
    fn finished_masker_refuses_more_input() {
        let mut m = BodyMasker::new(pii_policy(), BodyKind::Ndjson, Encoding::Identity, u64::MAX);
        let mut out = Vec::new();
        m.push(b"{}\n", &mut out).unwrap();
        m.finish(&mut out).unwrap();
        let before = out.clone();
        assert!(m.push(b"{}\n", &mut out).is_err());
        assert!(m.finish(&mut out).is_err());
        assert_eq!(out, before);
    }

    #[test]
    fn body_masker_is_send() {
        fn send<T: Send>() {}
        send::<BodyMasker>();
        send::<BodyError>();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Any split of the (encoded) body gives the same output.
        #[test]
        fn random_splits_give_identical_output(
            kind_i in 0usize..4,
            enc_i in 0usize..5,
            sizes in proptest::collection::vec(1usize..300, 1..40),
        ) {
            let kind = ALL_KINDS[kind_i];
            let enc = ALL_ENCODINGS[enc_i];
            let policy = pii_policy();
            let plain = fixture(kind);
            let body = encode(enc, &plain);
            let want = run(&policy, kind, enc, &body, usize::MAX).unwrap();
            let mut rest = &body[..];
            let mut chunks = Vec::new();
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                chunks.push(&rest[..n]);
                rest = &rest[n..];
                i += 1;
            }
            let (got, _) = run_chunks(&policy, kind, enc, &mut chunks.into_iter(), u64::MAX).unwrap();
            prop_assert!(got == want);
        }

        /// Arbitrary bytes never panic, whatever the kind and encoding.
        #[test]
        fn garbage_never_panics(kind_i in 0usize..4, enc_i in 0usize..5, body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = run(&pii_policy(), ALL_KINDS[kind_i], ALL_ENCODINGS[enc_i], &body, 7);
        }
    }
}
