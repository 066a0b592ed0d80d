//! The streaming JSON masker (phase 7, respond): bytes of one JSON document in, masked
//! minified JSON out, push-based and chunk-resumable.
//!
//! Owns JSON validation and rewriting for one document: selector matching against the path
//! of every value, applying [`Strategy`]s and detectors ([`crate::mask::strategy`]), and the
//! resource limits of [`Limits`](crate::mask::policy::Limits).
//!
//! Must not: do I/O, block, know HTTP/hyper/tokio, decode compression or framing (NDJSON, SSE,
//! CSV live beside it), buffer a whole document, or panic on any input (upstream bodies are
//! attacker-ish). It never falls back to passing bytes through: every error is returned and
//! the caller fails closed.
//!
//! # Semantics
//!
//! - **Push-based and chunk-resumable.** Any split of the input into chunks (down to 1 byte)
//!   gives identical output. Memory is bounded: the path stack (≤ `max_depth` frames plus the
//!   selector states active at each) and at most one string/number being buffered
//!   (≤ `max_string_bytes`). Output is emitted as soon as it is decided: unmasked strings and
//!   numbers stream through as they arrive, so the first elements of a huge array come out long
//!   before its end.
//! - **Validating.** Anything that is not one valid RFC 8259 JSON value (optional whitespace
//!   around it; strings with valid escapes, surrogate pairs only in pairs, valid UTF-8, no raw
//!   control characters; numbers per the grammar: no leading zeros, no `NaN`/`Infinity`;
//!   literals `true`/`false`/`null`) is an error. On error the caller discards everything
//!   (fail closed); a value that should be masked is never emitted before it is masked.
//! - **Output** is semantically identical to the input except for masked values. Insignificant
//!   whitespace is dropped (minified). Unmasked strings and keys are re-emitted byte-identical
//!   (escapes kept); unmasked numbers keep their literal text.
//! - **Keys** are matched after decoding escapes (`"ph\u006fne"` is `phone`); with
//!   `case_insensitive`, ASCII case is ignored. Duplicate keys: every occurrence is checked and
//!   masked.
//! - **Scalars.** A selector match on a string, number or boolean applies the strategy to its
//!   text (a string's decoded text; a number's literal text; `true`/`false`). The result is
//!   emitted as a JSON string; `null` strategy → `null`; `remove` drops the member (key, value
//!   and its comma) from an object, or the element from an array. A matched `null` stays `null`
//!   (nothing to hide) except that `remove` drops it.
//! - **Containers.** A match on an object/array: `redact` → `"[REDACTED]"`, `null` → `null`,
//!   `remove` → dropped, any other strategy → `"[REDACTED]"` (fail closed). The subtree is not
//!   emitted but is still validated.
//! - **Several rules.** When several field selectors match one value, the first rule in the
//!   policy wins. Nothing below a masked value is looked at again.
//! - **Detectors.** With `DetectScope::All` every string value (not keys) not already masked by
//!   a field rule is scrubbed; with `Fields(sels)` only string values under those selectors (the
//!   selected value if it is a string, or every string inside a selected object/array). A
//!   scrubbed string that did not change is emitted byte-identical. Numbers are not scrubbed.
//! - **Limits.** Nesting deeper than `max_depth` → `TooDeep`; a string (between its quotes, as
//!   written) or number longer than `max_string_bytes` bytes → `StringTooLong`, even when it
//!   would have been streamed unmasked.
//! - `masked_count` counts values changed: field-rule matches (including removed values and
//!   replaced containers, not a matched `null` that stays `null`) plus strings changed by a
//!   detector.
//!
//! # LIFECYCLE
//!
//! States (`Mode`): `Value` (a value is expected: document start, after `:`, after `,` in an
//! array) · `ArrayStart` (after `[`) · `ObjectStart` (after `{`) · `Key` (after `,` in an
//! object) · `Colon` · `After` (a value ended inside a container: `,` or the closer) · `Str`,
//! `Num`, `Lit` (inside a scalar) · `Done` (the top-level value ended; only whitespace may
//! follow) · `Failed` (sticky).
//!
//! Per value, a *slot* is decided before its first byte — from the parent's active selector
//! states and the key or index: `Pass` (emit as is), `Mask(rule)` (buffer, then emit the masked
//! text or placeholder) or `Skip` (validate, emit nothing: removed values, masked subtrees). The
//! decision needs only the path, never the value, so `,`/`"key":` are emitted (or withheld for
//! `remove`) when the slot is decided, and a container is replaced the moment its `{`/`[`
//! arrives.
//!
//! Chunk boundaries may fall anywhere, including inside a `\u` escape, a surrogate pair, a UTF-8
//! sequence, a number or a literal: the scanner keeps that small sub-state (escape position,
//! UTF-8 bytes still expected, number grammar state, literal position) in the struct and resumes
//! on the next `push`. A pass-through string or number emits what it has at the end of each
//! chunk; a key or a string that may be masked or scrubbed is buffered until its closing quote
//! (≤ `max_string_bytes`). A number is only known complete at the next delimiter, so a
//! top-level number completes in [`JsonMasker::finish`].
//!
//! Speed (the gateway masks small answers on every request): the selector tables are built
//! once per policy ([`Compiled`]); a container whose states are all `..key` steps hands the
//! same state range to children that no selector names instead of copying it
//! (`Frame::descend_only`, `Frame::base`), also when a key completes `..key` selectors
//! without starting new ones; a document that arrives complete in the first push (a buffered
//! answer, one NDJSON line or SSE event) goes through the whole-document lane (`whole`), one
//! pass that copies unchanged runs of the input verbatim and declines (state untouched) to
//! the general path on anything unusual; and in the general path a fast lane
//! (`JsonMasker::fast_members`) takes runs of plain members (ASCII keys without escapes; plain
//! strings, numbers, literals, objects, arrays of objects; all within the chunk) through the
//! same helpers without the per-token dispatch. Pushing a document whole uses the lanes,
//! pushing it byte by byte never does: the chunking-invariance properties compare the two.
//!
//! Failure modes: `Syntax { offset }` (absolute byte offset of the first bad byte), `TooDeep`,
//! `StringTooLong`, `Truncated` (`finish` before the value ended, including an empty body) and
//! `TrailingData` (non-whitespace after the value). Output is chunking-invariant; which error a
//! broken document gets can depend on the chunking when it breaks two rules at once (a string
//! over the limit that also holds invalid UTF-8: the limit is checked at chunk and quote
//! boundaries), always an error either way. After an error every later `push`/`finish`
//! returns the same error; output written so far must be discarded or the stream aborted (it
//! never contains an unmasked value that should have been masked, but it is not valid JSON).
//! `finish` after success is idempotent.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use smallvec::SmallVec;

use super::policy::{DetectScope, Policy, Step, Strategy};
use super::strategy::{self, REDACTED};

mod whole;

#[cfg(test)]
mod difftest;

/// Why a document could not be masked. Every variant means: refuse the body (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error("invalid JSON at byte {offset}")]
    Syntax { offset: u64 },
    #[error("JSON nested deeper than the masking limit")]
    TooDeep,
    #[error("JSON string or number longer than the masking limit")]
    StringTooLong,
    #[error("JSON document ended early")]
    Truncated,
    #[error("data after the end of the JSON document")]
    TrailingData,
}

impl MaskError {
    /// Stable machine code for logs, metrics labels and the client error body.
    pub fn code(&self) -> &'static str {
        match self {
            MaskError::Syntax { .. } => "invalid_json",
            MaskError::TooDeep => "too_deep",
            MaskError::StringTooLong => "string_too_long",
            MaskError::Truncated => "truncated",
            MaskError::TrailingData => "trailing_data",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Value,
    ArrayStart,
    ObjectStart,
    Key,
    Colon,
    After,
    Str,
    Num,
    Lit,
    Done,
    Failed,
}

/// What to do with the next value (decided from its path before its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Pass,
    Skip,
    /// Index into `policy.fields`; never a `Remove` rule (that is `Skip`).
    Mask(usize),
}

/// What the current string / number is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A key streamed straight out (its object has no active selectors).
    KeyPass,
    /// A key buffered for matching.
    KeyBuf,
    /// A key inside a skipped subtree.
    KeySkip,
    /// A value streamed straight out.
    Pass,
    /// A value buffered for masking or scrubbing.
    Buf,
    /// A value validated only.
    Skip,
}

/// Escape sub-state inside a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    /// After `\`.
    Backslash,
    /// In `\uXXXX`: digits seen, value so far.
    U(u8, u16),
    /// After a high surrogate: `\` of the low half expected.
    LowBackslash,
    /// `u` of the low half expected.
    LowU,
    /// Hex digits of the low half.
    LowHex(u8, u16),
}

/// Number grammar sub-state (RFC 8259 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Begin,
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Num {
    fn terminal(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }
}

const LITERALS: [&[u8]; 3] = [b"true", b"false", b"null"];
const LIT_NULL: u8 = 2;

/// The literal starting at `v` when it is there whole: its index in [`LITERALS`] and the
/// position after it.
fn literal_at(input: &[u8], v: usize) -> Option<(u8, usize)> {
    let lit = match *input.get(v)? {
        b't' => 0,
        b'f' => 1,
        b'n' => LIT_NULL,
        _ => return None,
    };
    let text = LITERALS[usize::from(lit)];
    (input.get(v..v + text.len()) == Some(text)).then_some((lit, v + text.len()))
}

/// One open object or array.
#[derive(Debug, Clone, Copy)]
struct Frame {
    obj: bool,
    /// Its content is emitted (false inside removed / masked subtrees).
    emit: bool,
    /// A member/element has been emitted, so the next one needs a comma.
    has_out: bool,
    /// Inside a `DetectScope::Fields` selection: scrub string values.
    detect: bool,
    /// Selector states active for this container's children: `nfa[states.0..states.1]`.
    states: (usize, usize),
    /// Where `nfa` is cut back to when this container closes (the parent's end; a container
    /// that inherits its parent's states shares the parent's range, which must survive).
    base: usize,
    /// Every state in `states` is a `..key` step: a key no selector names, or any array
    /// index, leaves them unchanged, so the child inherits the range instead of copying it.
    descend_only: bool,
    /// Index of the current array element.
    index: u64,
}

/// Selector step operation (see [`Step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Key,
    AnyKey,
    Index,
    AnyIndex,
    Descend,
}

/// One selector step, flattened out of the policy so the per-key loop touches one small
/// contiguous table instead of chasing `Policy → Selector → Vec<Step> → String`.
#[derive(Debug, Clone, Copy)]
struct Flat {
    op: Op,
    /// Last step of its selector: advancing past it means the selector matches.
    last: bool,
    /// Selector number: `< policy.fields.len()` is a field rule (its index), else a
    /// `DetectScope::Fields` selector.
    sel: u32,
    /// `Key`/`Descend`: the key's bytes in `JsonMasker::keys` (start, len).
    key: (u32, u32),
    /// `Index`: the array index.
    index: u64,
}

/// A policy's selectors flattened for the masker: built once per policy, on first use, and
/// shared by every masker of that policy (see [`Compiled`]).
#[derive(Debug)]
struct Tables {
    /// Every selector's steps, field rules first; a selector's steps are consecutive, so
    /// advancing a state is `+ 1`.
    flat: Vec<Flat>,
    /// Key bytes referenced by `flat`.
    keys: Vec<u8>,
    /// One bit per selector key ([`key_bit`]), all ones if a `.*` step exists: a key whose
    /// bit is clear advances no state, so deciding it needs no comparisons.
    key_bloom: u64,
    /// The root's states: the first step of every non-empty selector.
    start: Vec<u32>,
    /// Detectors run on every string value.
    scrub_all: bool,
    /// Detectors run on selected string values.
    scrub_sel: bool,
    /// The HMAC key of `hash` rules, set up on first use and shared by every masker of the
    /// policy (a key inline in each masker made the masker too big for the allocator's
    /// per-thread cache, and set it up again for every answer).
    hmac: OnceLock<aws_lc_rs::hmac::Key>,
}

/// The per-policy cache of the masker's selector tables ([`Policy::compiled`]); policies are
/// built with `Compiled::default()` and the first masker (which holds the policy in an `Arc`,
/// so it no longer changes) fills it. A clone starts empty: a cloned policy may be edited.
#[derive(Debug, Default)]
pub struct Compiled(OnceLock<Arc<Tables>>);

impl Clone for Compiled {
    fn clone(&self) -> Compiled {
        Compiled::default()
    }
}

impl Tables {
    fn build(policy: &Policy) -> Tables {
        let has_detectors = !policy.detectors.is_empty();
        let scrub_all = has_detectors && matches!(policy.detect_in, DetectScope::All);
        let scrub_sel = has_detectors && matches!(policy.detect_in, DetectScope::Fields(_));
        let detect_sels = match (&policy.detect_in, scrub_sel) {
            (DetectScope::Fields(s), true) => s.as_slice(),
            _ => &[],
        };
        let mut flat = Vec::new();
        let mut keys = Vec::new();
        let mut start = Vec::new();
        let mut key_bloom = 0u64;
        let selectors = policy.fields.iter().map(|f| &f.0).chain(detect_sels);
        for (sel, selector) in selectors.enumerate() {
            if !selector.steps.is_empty() {
                start.push(flat.len() as u32);
            }
            for (j, step) in selector.steps.iter().enumerate() {
                let mut f = Flat {
                    op: Op::AnyKey,
                    last: j + 1 == selector.steps.len(),
                    sel: sel as u32,
                    key: (0, 0),
                    index: 0,
                };
                match step {
                    Step::Key(k) | Step::Descend(k) => {
                        f.op = if matches!(step, Step::Key(_)) {
                            Op::Key
                        } else {
                            Op::Descend
                        };
                        f.key = (keys.len() as u32, k.len() as u32);
                        keys.extend_from_slice(k.as_bytes());
                        key_bloom |= key_bit(k.as_bytes());
                    }
                    Step::AnyKey => {
                        f.op = Op::AnyKey;
                        key_bloom = u64::MAX;
                    }
                    Step::Index(n) => {
                        f.op = Op::Index;
                        f.index = *n;
                    }
                    Step::AnyIndex => f.op = Op::AnyIndex,
                }
                flat.push(f);
            }
        }
        Tables {
            flat,
            keys,
            key_bloom,
            start,
            scrub_all,
            scrub_sel,
            hmac: OnceLock::new(),
        }
    }
}

/// Streaming masker for exactly ONE JSON document. See the module docs for the lifecycle.
pub struct JsonMasker {
    policy: Arc<Policy>,
    tables: Arc<Tables>,
    mode: Mode,
    error: Option<MaskError>,
    /// Inline up to 8 levels: no allocation for the common document.
    frames: SmallVec<[Frame; 8]>,
    /// Selector automaton states (indexes into `flat`). A stack: each frame owns a range,
    /// the slot being decided owns the tail; each frame holds at most one entry per step.
    nfa: SmallVec<[u32; 16]>,
    /// Slot of the value about to start / in progress.
    act: Act,
    /// The slot's states are its parent's (see [`Frame::descend_only`]), not the nfa tail.
    inherit: bool,
    detect: bool,
    /// Current string / number.
    kind: Kind,
    buf: Vec<u8>,
    len: usize,
    esc: Esc,
    /// The current string has a `\` escape (so it must be decoded before use).
    escaped: bool,
    utf8_need: u8,
    utf8_lo: u8,
    utf8_hi: u8,
    num: Num,
    lit: u8,
    lit_pos: u8,
    /// Bytes consumed by earlier pushes (for error offsets).
    consumed: u64,
    masked: u64,
}

// The proxy moves maskers between threads with the body.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<JsonMasker>();
};

impl JsonMasker {
    /// A masker for exactly one JSON document. Cheap: the selector tables are built once per
    /// policy and shared (one masker per NDJSON line is fine).
    pub fn new(policy: Arc<Policy>) -> JsonMasker {
        let tables = Arc::clone(
            policy
                .compiled
                .0
                .get_or_init(|| Arc::new(Tables::build(&policy))),
        );
        let nfa = SmallVec::from_slice(&tables.start);
        JsonMasker {
            policy,
            tables,
            mode: Mode::Value,
            error: None,
            frames: SmallVec::new(),
            nfa,
            act: Act::Pass,
            inherit: false,
            detect: false,
            kind: Kind::Pass,
            buf: Vec::new(),
            len: 0,
            esc: Esc::None,
            escaped: false,
            utf8_need: 0,
            utf8_lo: 0x80,
            utf8_hi: 0xBF,
            num: Num::Begin,
            lit: 0,
            lit_pos: 0,
            consumed: 0,
            masked: 0,
        }
    }

    /// Feeds the next chunk; appends whatever output is decided to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), MaskError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let r = if self.consumed == 0 && self.whole(input, out) {
            Ok(())
        } else {
            self.run(input, out)
        };
        self.consumed += input.len() as u64;
        if let Err(e) = &r {
            self.fail(e.clone());
        }
        r
    }

    /// Ends the input: errors if the document is incomplete (or empty).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), MaskError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let r = match self.mode {
            Mode::Done => Ok(()),
            Mode::Num if self.frames.is_empty() && self.num.terminal() => self.number_done(out),
            _ => Err(MaskError::Truncated),
        };
        if let Err(e) = &r {
            self.fail(e.clone());
        }
        r
    }

    /// Values masked so far (for tests / audit); see the module docs for what counts.
    pub fn masked_count(&self) -> u64 {
        self.masked
    }

    fn fail(&mut self, e: MaskError) {
        self.mode = Mode::Failed;
        self.error = Some(e);
    }

    fn syntax(&self, i: usize) -> MaskError {
        MaskError::Syntax {
            offset: self.consumed + i as u64,
        }
    }

    fn run(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), MaskError> {
        let n = input.len();
        let mut i = 0;
        while i < n {
            match self.mode {
                Mode::Str => i = self.string(input, i, out)?,
                Mode::Num => i = self.number(input, i, out)?,
                Mode::Lit => {
                    let lit = LITERALS[usize::from(self.lit)];
                    while i < n && usize::from(self.lit_pos) < lit.len() {
                        if input[i] != lit[usize::from(self.lit_pos)] {
                            return Err(self.syntax(i));
                        }
                        self.lit_pos += 1;
                        i += 1;
                    }
                    if usize::from(self.lit_pos) == lit.len() {
                        self.literal_done(out);
                    }
                }
                Mode::Failed => {
                    return Err(self.error.clone().unwrap_or(MaskError::Truncated));
                }
                mode => {
                    i = skip_ws(input, i);
                    if i == n {
                        break;
                    }
                    let b = input[i];
                    match mode {
                        Mode::Value => {
                            self.start_value(b, i, out)?;
                            // Numbers re-read their first byte in `number`.
                            if self.mode != Mode::Num {
                                i += 1;
                            }
                        }
                        Mode::ArrayStart => {
                            if b == b']' {
                                self.close(out);
                                i += 1;
                            } else {
                                self.array_slot(out);
                                self.mode = Mode::Value;
                            }
                        }
                        Mode::ObjectStart | Mode::Key => {
                            if b == b'"' {
                                let p = self.fast_members(input, i, out)?;
                                if p == i {
                                    self.start_key(out);
                                    i += 1;
                                } else {
                                    i = p;
                                }
                            } else if b == b'}' && mode == Mode::ObjectStart {
                                self.close(out);
                                i += 1;
                            } else {
                                return Err(self.syntax(i));
                            }
                        }
                        Mode::Colon => {
                            if b != b':' {
                                return Err(self.syntax(i));
                            }
                            self.mode = Mode::Value;
                            i += 1;
                        }
                        Mode::After => {
                            let Some(top) = self.frames.last_mut() else {
                                return Err(self.syntax(i));
                            };
                            match (b, top.obj) {
                                (b',', true) => self.mode = Mode::Key,
                                (b',', false) => {
                                    top.index += 1;
                                    self.array_slot(out);
                                    self.mode = Mode::Value;
                                }
                                (b'}', true) | (b']', false) => self.close(out),
                                _ => return Err(self.syntax(i)),
                            }
                            i += 1;
                        }
                        Mode::Done => return Err(MaskError::TrailingData),
                        _ => return Err(self.syntax(i)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Start of the nfa region for the slot being decided (right after the parent's states).
    fn pending_start(&self) -> usize {
        self.frames.last().map_or(0, |f| f.states.1)
    }

    fn start_value(&mut self, b: u8, i: usize, out: &mut Vec<u8>) -> Result<(), MaskError> {
        match b {
            b'{' | b'[' => {
                self.open_container(b == b'{')?;
                match self.act {
                    Act::Pass => out.push(b),
                    Act::Mask(rule) => {
                        self.masked += 1;
                        emit_placeholder(&self.policy, rule, out);
                    }
                    Act::Skip => {}
                }
                self.mode = if b == b'{' {
                    Mode::ObjectStart
                } else {
                    Mode::ArrayStart
                };
            }
            b'"' => {
                self.kind = match self.act {
                    Act::Skip => Kind::Skip,
                    Act::Mask(_) => Kind::Buf,
                    Act::Pass
                        if self.tables.scrub_all || (self.tables.scrub_sel && self.detect) =>
                    {
                        Kind::Buf
                    }
                    Act::Pass => {
                        out.push(b'"');
                        Kind::Pass
                    }
                };
                self.begin_string();
            }
            b'-' | b'0'..=b'9' => {
                self.kind = match self.act {
                    Act::Skip => Kind::Skip,
                    Act::Mask(_) => Kind::Buf,
                    Act::Pass => Kind::Pass,
                };
                self.buf.clear();
                self.len = 0;
                self.num = Num::Begin;
                self.mode = Mode::Num;
            }
            b't' | b'f' | b'n' => {
                self.lit = match b {
                    b't' => 0,
                    b'f' => 1,
                    _ => LIT_NULL,
                };
                self.lit_pos = 1;
                self.mode = Mode::Lit;
            }
            _ => return Err(self.syntax(i)),
        }
        Ok(())
    }

    /// Pushes the frame of a container whose slot (`act`) is decided: the selector states
    /// its children start from, or none inside a masked or removed subtree (which is still
    /// validated, and counts towards the depth limit). Writes no output.
    fn open_container(&mut self, obj: bool) -> Result<(), MaskError> {
        if self.frames.len() >= self.policy.limits.max_depth {
            return Err(MaskError::TooDeep);
        }
        let ps = self.pending_start();
        let mut inherited = None;
        let (emit, detect, states) = match self.act {
            Act::Pass => {
                let states = match self.frames.last() {
                    Some(top) if self.inherit => {
                        inherited = Some(top.descend_only);
                        top.states
                    }
                    _ => (ps, self.nfa.len()),
                };
                (true, self.detect, states)
            }
            Act::Mask(_) | Act::Skip => {
                self.nfa.truncate(ps);
                (false, false, (ps, ps))
            }
        };
        let flat = &self.tables.flat;
        let descend_only = inherited.unwrap_or_else(|| {
            self.nfa.get(states.0..states.1).is_some_and(|s| {
                s.iter()
                    .all(|&st| flat.get(st as usize).is_some_and(|f| f.op == Op::Descend))
            })
        });
        self.frames.push(Frame {
            obj,
            emit,
            has_out: false,
            detect,
            states,
            base: ps,
            descend_only,
            index: 0,
        });
        Ok(())
    }

    fn begin_string(&mut self) {
        self.escaped = false;
        self.buf.clear();
        self.len = 0;
        self.esc = Esc::None;
        self.utf8_need = 0;
        self.mode = Mode::Str;
    }

    /// Fast lane for the common shape of a document: members whose key is plain ASCII without
    /// escapes and whose value is a plain string, a number, a literal or an object, wholly
    /// inside this chunk, and the commas and closing brackets between them (arrays of objects
    /// included). `i` is at a key's opening quote (mode `Key`/`ObjectStart`). Every step is
    /// the general path's own (same helpers, same state), only without a trip through
    /// [`JsonMasker::run`]'s dispatch per token; it stops wherever something else comes (an
    /// escape, non-ASCII, a masked or scrubbed value, an array value, the chunk's end) and
    /// returns that position with the state the general path expects there. Returns `i`
    /// untouched when the first key does not qualify.
    fn fast_members(
        &mut self,
        input: &[u8],
        mut i: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, MaskError> {
        let max = self.policy.limits.max_string_bytes;
        'member: loop {
            let Some(top) = self.frames.last() else {
                return Ok(i);
            };
            if !top.emit {
                return Ok(i);
            }
            let k0 = i + 1;
            let k1 = k0 + plain_prefix(input.get(k0..).unwrap_or(&[]));
            if input.get(k1) != Some(&b'"') || k1 - k0 > max {
                return Ok(i);
            }
            let key = &input[k0..k1];
            // The key: as `start_key` + `string_done` would.
            if top.states.0 == top.states.1 {
                let (detect, ps) = (top.detect, top.states.1);
                self.nfa.truncate(ps);
                self.act = Act::Pass;
                self.inherit = false;
                self.detect = detect;
            } else {
                self.escaped = false;
                self.decide(Label::Key(key));
            }
            let colon = skip_ws(input, k1 + 1);
            if input.get(colon) != Some(&b':') {
                self.emit_key(key, out);
                self.mode = Mode::Colon;
                return Ok(colon);
            }
            let v = skip_ws(input, colon + 1);
            let pass = self.act == Act::Pass
                && !(self.tables.scrub_all || (self.tables.scrub_sel && self.detect));
            let Some(&b) = input.get(v).filter(|_| pass) else {
                // Masked, removed or scrubbed: the general way.
                self.emit_key(key, out);
                self.mode = Mode::Value;
                return Ok(v);
            };
            if b == b'"' {
                let v1 = v + 1 + plain_prefix(input.get(v + 1..).unwrap_or(&[]));
                if input.get(v1) != Some(&b'"') || v1 - v - 1 > max {
                    self.emit_key(key, out);
                    self.mode = Mode::Value;
                    return Ok(v);
                }
                if colon == k1 + 1 && v == colon + 1 {
                    // `"key":"value"` as written: one copy.
                    self.member_separator(out);
                    out.extend_from_slice(&input[i..=v1]);
                } else {
                    self.emit_key(key, out);
                    out.extend_from_slice(&input[v..=v1]);
                }
                self.value_done();
                i = v1 + 1;
            } else {
                self.emit_key(key, out);
                self.mode = Mode::Value;
                match self.fast_value(input, v, out)? {
                    Some(next) => i = next,
                    None => return Ok(v),
                }
                match self.mode {
                    Mode::ObjectStart if input.get(i) == Some(&b'"') => continue 'member,
                    Mode::After | Mode::ObjectStart => {}
                    _ => return Ok(i),
                }
            }
            // After a value: commas and closing brackets up to the next key.
            loop {
                i = skip_ws(input, i);
                let Some(top) = self.frames.last_mut() else {
                    return Ok(i);
                };
                match (input.get(i), top.obj, self.mode) {
                    (Some(b'}'), true, Mode::After | Mode::ObjectStart)
                    | (Some(b']'), false, Mode::After) => {
                        self.close(out);
                        i += 1;
                    }
                    (Some(b','), true, Mode::After) => {
                        let next = skip_ws(input, i + 1);
                        if input.get(next) != Some(&b'"') {
                            return Ok(i);
                        }
                        self.mode = Mode::Key;
                        i = next;
                        continue 'member;
                    }
                    (Some(b','), false, Mode::After) => {
                        // The next array element, when it is an object.
                        let next = skip_ws(input, i + 1);
                        if input.get(next) != Some(&b'{') {
                            return Ok(i);
                        }
                        top.index += 1;
                        self.array_slot(out);
                        self.mode = Mode::Value;
                        if self.act != Act::Pass {
                            return Ok(next);
                        }
                        self.start_value(b'{', next, out)?;
                        i = skip_ws(input, next + 1);
                        if input.get(i) == Some(&b'"') {
                            continue 'member;
                        }
                    }
                    _ => return Ok(i),
                }
            }
        }
    }

    /// A passed-through number, literal or object opening at `v` (mode `Value`), for
    /// [`JsonMasker::fast_members`]: returns the position after it (mode `After`, or
    /// `ObjectStart` after a `{`), or `None` to leave it to the general path, untouched.
    fn fast_value(
        &mut self,
        input: &[u8],
        v: usize,
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>, MaskError> {
        let Some(&b) = input.get(v) else {
            return Ok(None);
        };
        match b {
            b'-' | b'0'..=b'9' => {
                self.start_value(b, v, out)?;
                let next = self.number(input, v, out)?;
                // A number that runs to the chunk's end is still open (mode `Num`).
                Ok(Some(next))
            }
            b't' | b'f' | b'n' => {
                let Some((lit, end)) = literal_at(input, v) else {
                    return Ok(None);
                };
                self.lit = lit;
                self.literal_done(out);
                Ok(Some(end))
            }
            b'{' => {
                self.start_value(b, v, out)?;
                Ok(Some(skip_ws(input, v + 1)))
            }
            _ => Ok(None),
        }
    }

    /// The comma before a member or element that is emitted (none before the first).
    fn member_separator(&mut self, out: &mut Vec<u8>) {
        if let Some(top) = self.frames.last_mut() {
            if top.has_out {
                out.push(b',');
            }
            top.has_out = true;
        }
    }

    /// Emits `"key":` (with its separator) unless the member is removed.
    fn emit_key(&mut self, key: &[u8], out: &mut Vec<u8>) {
        if self.act != Act::Skip {
            self.member_separator(out);
            out.reserve(key.len() + 3);
            out.push(b'"');
            out.extend_from_slice(key);
            out.extend_from_slice(b"\":");
        }
    }

    fn start_key(&mut self, out: &mut Vec<u8>) {
        self.kind = match self.frames.last_mut() {
            Some(top) if top.emit && top.states.0 == top.states.1 => {
                if top.has_out {
                    out.push(b',');
                }
                top.has_out = true;
                out.push(b'"');
                Kind::KeyPass
            }
            Some(top) if top.emit => Kind::KeyBuf,
            _ => Kind::KeySkip,
        };
        self.begin_string();
    }

    /// A value finished: back to the container, or done with the document.
    fn value_done(&mut self) {
        self.mode = if self.frames.is_empty() {
            Mode::Done
        } else {
            Mode::After
        };
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some(f) = self.frames.pop() {
            if f.emit {
                out.push(if f.obj { b'}' } else { b']' });
            }
            self.nfa.truncate(f.base);
        }
        self.value_done();
    }

    /// Decides the slot of the current array element (and emits its comma).
    fn array_slot(&mut self, out: &mut Vec<u8>) {
        let Some(top) = self.frames.last() else {
            return;
        };
        if !top.emit {
            self.act = Act::Skip;
            self.detect = false;
            return;
        }
        self.decide(Label::Index(top.index));
        if self.act != Act::Skip {
            self.member_separator(out);
        }
    }

    /// Runs the selector automaton one step from the top frame's states: sets `act`/`detect`
    /// and leaves the child's states at the nfa tail.
    #[inline]
    fn decide(&mut self, label: Label<'_>) {
        let Some(top) = self.frames.last() else {
            return;
        };
        let miss = match label {
            Label::Key(key) => self.tables.key_bloom & key_bit(key) == 0,
            Label::Index(_) => false,
        };
        self.act = Act::Pass;
        self.detect = top.detect;
        // Nothing can advance and every state stays: the child's states are the frame's own.
        // The common case under `$..x` policies: most keys, every array element.
        self.inherit = top.descend_only && (miss || matches!(label, Label::Index(_)));
        let e = top.states.1;
        self.nfa.truncate(e);
        if !self.inherit {
            self.step(label, miss);
        }
    }

    /// The automaton step proper (see [`JsonMasker::decide`]).
    #[inline(never)]
    fn step(&mut self, label: Label<'_>, miss: bool) {
        let Some(&top) = self.frames.last() else {
            return;
        };
        let (s, e) = top.states;
        let nf = self.policy.fields.len();
        let ci = self.policy.case_insensitive;
        let (flat, keys, nfa) = (&self.tables.flat, &self.tables.keys, &mut self.nfa);
        if miss {
            // No selector names this key: only `..key` states carry over (the frame's states
            // are already distinct).
            for k in s..e {
                if let Some(&st) = nfa.get(k)
                    && flat.get(st as usize).is_some_and(|f| f.op == Op::Descend)
                {
                    nfa.push(st);
                }
            }
            return;
        }
        let key_is = |f: &Flat, key: &[u8]| {
            let (at, len) = (f.key.0 as usize, f.key.1 as usize);
            len == key.len()
                && keys.get(at..at + len).is_some_and(|k| {
                    if ci {
                        k.eq_ignore_ascii_case(key)
                    } else {
                        k == key
                    }
                })
        };
        let mut best: Option<usize> = None;
        let mut detect = top.detect;
        if let (true, Label::Key(key)) = (top.descend_only, label) {
            // Every state is a `..key` step and stays. When every one this key advances is
            // its selector's last step, nothing is added: the child shares the frame's range
            // (as for a miss) and only the match is left to decide. A bloom hit is usually
            // such a key (`$..phone`) or a false positive.
            let mut grows = false;
            for &st in nfa.get(s..e).unwrap_or(&[]) {
                let Some(f) = flat.get(st as usize) else {
                    continue;
                };
                if !key_is(f, key) {
                    continue;
                }
                if !f.last {
                    grows = true;
                    break;
                }
                let sel = f.sel as usize;
                if sel < nf {
                    best = Some(best.map_or(sel, |b| b.min(sel)));
                } else {
                    detect = true;
                }
            }
            if !grows {
                self.inherit = true;
                self.settle(best, detect);
                return;
            }
            best = None;
            detect = top.detect;
        }
        for k in s..e {
            let Some(&st) = nfa.get(k) else { break };
            let Some(f) = flat.get(st as usize) else {
                continue;
            };
            let (stay, advance) = match (f.op, label) {
                (Op::Descend, Label::Key(key)) => (true, key_is(f, key)),
                (Op::Descend, Label::Index(_)) => (true, false),
                (Op::Key, Label::Key(key)) => (false, key_is(f, key)),
                (Op::AnyKey, Label::Key(_)) | (Op::AnyIndex, Label::Index(_)) => (false, true),
                (Op::Index, Label::Index(i)) => (false, f.index == i),
                _ => (false, false),
            };
            if stay && !nfa.get(e..).unwrap_or(&[]).contains(&st) {
                nfa.push(st);
            }
            if advance {
                if f.last {
                    let sel = f.sel as usize;
                    if sel < nf {
                        best = Some(best.map_or(sel, |b| b.min(sel)));
                    } else {
                        detect = true;
                    }
                } else if !nfa.get(e..).unwrap_or(&[]).contains(&(st + 1)) {
                    nfa.push(st + 1);
                }
            }
        }
        self.settle(best, detect);
    }

    /// The slot from the automaton step's outcome: the first field rule that matched (a
    /// `remove` rule skips the value), and whether detectors run below.
    fn settle(&mut self, best: Option<usize>, detect: bool) {
        self.detect = detect;
        self.act = match best {
            None => Act::Pass,
            Some(rule) => {
                if matches!(self.policy.fields.get(rule), Some((_, Strategy::Remove))) {
                    self.masked += 1;
                    Act::Skip
                } else {
                    Act::Mask(rule)
                }
            }
        };
    }

    /// Scans string bytes from `i`; returns where it stopped (end of chunk or after the quote).
    fn string(&mut self, input: &[u8], i0: usize, out: &mut Vec<u8>) -> Result<usize, MaskError> {
        let n = input.len();
        let mut i = i0;
        loop {
            if self.utf8_need > 0 {
                let Some(&b) = input.get(i) else { break };
                if b < self.utf8_lo || b > self.utf8_hi {
                    return Err(self.syntax(i));
                }
                self.utf8_need -= 1;
                self.utf8_lo = 0x80;
                self.utf8_hi = 0xBF;
                i += 1;
                continue;
            }
            if self.esc != Esc::None {
                let Some(&b) = input.get(i) else { break };
                self.esc = match self.esc {
                    Esc::Backslash => match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Esc::None,
                        b'u' => Esc::U(0, 0),
                        _ => return Err(self.syntax(i)),
                    },
                    Esc::U(k, acc) => {
                        let Some(h) = hex(b) else {
                            return Err(self.syntax(i));
                        };
                        let acc = (acc << 4) | h;
                        if k < 3 {
                            Esc::U(k + 1, acc)
                        } else if (0xD800..=0xDBFF).contains(&acc) {
                            Esc::LowBackslash
                        } else if (0xDC00..=0xDFFF).contains(&acc) {
                            return Err(self.syntax(i));
                        } else {
                            Esc::None
                        }
                    }
                    Esc::LowBackslash if b == b'\\' => Esc::LowU,
                    Esc::LowU if b == b'u' => Esc::LowHex(0, 0),
                    Esc::LowHex(k, acc) => {
                        let Some(h) = hex(b) else {
                            return Err(self.syntax(i));
                        };
                        let acc = (acc << 4) | h;
                        if k < 3 {
                            Esc::LowHex(k + 1, acc)
                        } else if (0xDC00..=0xDFFF).contains(&acc) {
                            Esc::None
                        } else {
                            return Err(self.syntax(i));
                        }
                    }
                    _ => return Err(self.syntax(i)),
                };
                i += 1;
                continue;
            }
            i += plain_prefix(input.get(i..).unwrap_or(&[]));
            let Some(&b) = input.get(i) else { break };
            match b {
                b'"' => {
                    let seg = &input[i0..i];
                    if self.kind == Kind::Pass {
                        // The common value: streamed out as is.
                        self.count(seg.len())?;
                        out.reserve(seg.len() + 1);
                        out.extend_from_slice(seg);
                        out.push(b'"');
                        self.value_done();
                        return Ok(i + 1);
                    }
                    if matches!(self.kind, Kind::KeyBuf | Kind::Buf) && self.buf.is_empty() {
                        // Wholly inside this chunk: use it in place, no copy.
                        self.count(seg.len())?;
                        self.string_done(Some(seg), i, out)?;
                    } else {
                        self.segment(seg, out)?;
                        self.string_done(None, i, out)?;
                    }
                    return Ok(i + 1);
                }
                b'\\' => {
                    self.esc = Esc::Backslash;
                    self.escaped = true;
                }
                0xC2..=0xDF => self.utf8(1, 0x80, 0xBF),
                0xE0 => self.utf8(2, 0xA0, 0xBF),
                0xE1..=0xEC | 0xEE..=0xEF => self.utf8(2, 0x80, 0xBF),
                0xED => self.utf8(2, 0x80, 0x9F),
                0xF0 => self.utf8(3, 0x90, 0xBF),
                0xF1..=0xF3 => self.utf8(3, 0x80, 0xBF),
                0xF4 => self.utf8(3, 0x80, 0x8F),
                // Control characters, stray continuation bytes, overlong / out-of-range leads.
                _ => return Err(self.syntax(i)),
            }
            i += 1;
        }
        self.segment(&input[i0..n], out)?;
        Ok(n)
    }

    fn utf8(&mut self, need: u8, lo: u8, hi: u8) {
        self.utf8_need = need;
        self.utf8_lo = lo;
        self.utf8_hi = hi;
    }

    /// A piece of the current string/number in this chunk: count it, then emit/buffer/drop it.
    fn segment(&mut self, seg: &[u8], out: &mut Vec<u8>) -> Result<(), MaskError> {
        self.count(seg.len())?;
        match self.kind {
            Kind::KeyPass | Kind::Pass => out.extend_from_slice(seg),
            Kind::KeyBuf | Kind::Buf => self.buf.extend_from_slice(seg),
            Kind::KeySkip | Kind::Skip => {}
        }
        Ok(())
    }

    /// Counts `n` more bytes of the current string/number against the limit.
    fn count(&mut self, n: usize) -> Result<(), MaskError> {
        self.len += n;
        if self.len > self.policy.limits.max_string_bytes {
            return Err(MaskError::StringTooLong);
        }
        Ok(())
    }

    /// The closing quote at `i` arrived. `direct` is the whole content of a buffered kind
    /// when it lies in the current chunk (then `buf` is empty and unused).
    fn string_done(
        &mut self,
        direct: Option<&[u8]>,
        i: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), MaskError> {
        match self.kind {
            Kind::KeyPass => {
                out.extend_from_slice(b"\":");
                let detect = self.frames.last().is_some_and(|f| f.detect);
                let ps = self.pending_start();
                self.nfa.truncate(ps);
                self.act = Act::Pass;
                self.inherit = false;
                self.detect = detect;
                self.mode = Mode::Colon;
            }
            Kind::KeySkip => {
                self.act = Act::Skip;
                self.detect = false;
                self.mode = Mode::Colon;
            }
            Kind::KeyBuf => {
                if let Some(raw) = direct {
                    self.key_done(raw, i, out)?;
                } else {
                    let raw = std::mem::take(&mut self.buf);
                    let r = self.key_done(&raw, i, out);
                    self.buf = raw;
                    r?;
                }
                self.mode = Mode::Colon;
            }
            Kind::Pass => {
                out.push(b'"');
                self.value_done();
            }
            Kind::Buf => {
                if let Some(raw) = direct {
                    self.string_value_done(raw, i, out)?;
                } else {
                    let raw = std::mem::take(&mut self.buf);
                    let r = self.string_value_done(&raw, i, out);
                    self.buf = raw;
                    r?;
                }
                self.value_done();
            }
            Kind::Skip => self.value_done(),
        }
        Ok(())
    }

    #[inline]
    fn key_done(&mut self, raw: &[u8], i: usize, out: &mut Vec<u8>) -> Result<(), MaskError> {
        // Escapes are rare in keys: compare the raw bytes unless there is one.
        let decoded;
        let key = if self.escaped {
            decoded = decode(raw, true).ok_or_else(|| self.syntax(i))?;
            decoded.as_bytes()
        } else {
            raw
        };
        self.decide(Label::Key(key));
        // Written as received (escapes and all).
        self.emit_key(raw, out);
        Ok(())
    }

    fn string_value_done(
        &mut self,
        raw: &[u8],
        i: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), MaskError> {
        let text = decode(raw, self.escaped).ok_or_else(|| self.syntax(i))?;
        let pol = &*self.policy;
        match self.act {
            Act::Mask(rule) => self.mask_scalar(rule, &text, out),
            Act::Pass | Act::Skip => match strategy::scrub(&pol.detectors, &text) {
                Cow::Owned(s) if s != *text => {
                    self.masked += 1;
                    write_json_str(out, &s);
                }
                _ => {
                    out.push(b'"');
                    out.extend_from_slice(raw);
                    out.push(b'"');
                }
            },
        }
        Ok(())
    }

    /// Scans number bytes from `i`; returns where it stopped (end of chunk or the delimiter,
    /// which is not consumed).
    fn number(&mut self, input: &[u8], i0: usize, out: &mut Vec<u8>) -> Result<usize, MaskError> {
        let n = input.len();
        let mut i = i0;
        while i < n {
            let b = input[i];
            let next = match (self.num, b) {
                (Num::Begin, b'-') => Num::Minus,
                (Num::Begin | Num::Minus, b'0') => Num::Zero,
                (Num::Begin | Num::Minus, b'1'..=b'9') => Num::Int,
                (Num::Int, b'0'..=b'9') => Num::Int,
                (Num::Zero | Num::Int, b'.') => Num::Dot,
                (Num::Dot | Num::Frac, b'0'..=b'9') => Num::Frac,
                (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::Exp,
                (Num::Exp, b'+' | b'-') => Num::ExpSign,
                (Num::Exp | Num::ExpSign | Num::ExpDigits, b'0'..=b'9') => Num::ExpDigits,
                (state, _) if state.terminal() && !b.is_ascii_digit() => {
                    self.segment(&input[i0..i], out)?;
                    self.number_done(out)?;
                    return Ok(i);
                }
                _ => return Err(self.syntax(i)),
            };
            self.num = next;
            i += 1;
        }
        self.segment(&input[i0..n], out)?;
        Ok(n)
    }

    fn number_done(&mut self, out: &mut Vec<u8>) -> Result<(), MaskError> {
        if let (Kind::Buf, Act::Mask(rule)) = (self.kind, self.act) {
            let buf = std::mem::take(&mut self.buf);
            // The number grammar admits ASCII only.
            self.mask_scalar(rule, std::str::from_utf8(&buf).unwrap_or(""), out);
            self.buf = buf;
        }
        self.value_done();
        Ok(())
    }

    fn literal_done(&mut self, out: &mut Vec<u8>) {
        let lit = LITERALS[usize::from(self.lit)];
        match self.act {
            Act::Pass => out.extend_from_slice(lit),
            Act::Skip => {}
            Act::Mask(_) if self.lit == LIT_NULL => out.extend_from_slice(b"null"),
            Act::Mask(rule) => {
                let text = if self.lit == 0 { "true" } else { "false" };
                self.mask_scalar(rule, text, out);
            }
        }
        self.value_done();
    }

    /// A scalar matched by field rule `rule` (its decoded text: a string's content, a
    /// number's literal, `true`/`false`): counted, and written masked as a JSON value.
    /// The output is [`strategy::mask_text`]'s, as a JSON string (`None` → `null`); `redact`,
    /// `email` and `keepN` of ASCII text are written in place, and `hash` uses the policy's
    /// shared HMAC key (set up on first use).
    fn mask_scalar(&mut self, rule: usize, text: &str, out: &mut Vec<u8>) {
        self.masked += 1;
        let pol = &*self.policy;
        let masked = match pol.fields.get(rule).map(|f| &f.1) {
            // `None` is unreachable in practice (rules are indexes we produced): fail closed.
            Some(Strategy::Redact) | None => return out.extend_from_slice(REDACTED_JSON),
            Some(&Strategy::Keep(n)) if text.is_ascii() => {
                // One byte per char: as `mask_text`, without the intermediate string.
                let hidden = if text.len() <= n {
                    text.len()
                } else {
                    text.len() - n
                };
                out.push(b'"');
                out.resize(out.len() + hidden, b'*');
                write_json_content(out, text.get(hidden..).unwrap_or(""));
                out.push(b'"');
                return;
            }
            Some(Strategy::Email) => {
                // As `mask_text`, without the intermediate string.
                let Some((first, domain)) = strategy::email_parts(text) else {
                    return out.extend_from_slice(REDACTED_JSON);
                };
                out.push(b'"');
                write_json_content(out, first);
                out.extend_from_slice(b"***@");
                write_json_content(out, domain);
                out.push(b'"');
                return;
            }
            Some(Strategy::Hash) => {
                let key = self.tables.hmac.get_or_init(|| {
                    aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &pol.hash_key)
                });
                Some(strategy::hmac_hex_with(key, text))
            }
            Some(strat) => strategy::mask_text(strat, text, &pol.hash_key),
        };
        match masked {
            Some(s) => write_json_str(out, &s),
            None => out.extend_from_slice(b"null"),
        }
    }
}

/// What a masked object or array is replaced with: `null` under the `null` strategy, else
/// the redaction placeholder (whatever the strategy: fail closed).
fn emit_placeholder(pol: &Policy, rule: usize, out: &mut Vec<u8>) {
    match pol.fields.get(rule).map(|f| &f.1) {
        Some(Strategy::Null) => out.extend_from_slice(b"null"),
        _ => write_json_str(out, REDACTED),
    }
}

/// [`REDACTED`] as a JSON string (it needs no escape): written as is, not through
/// [`write_json_str`].
const REDACTED_JSON: &[u8] = b"\"[REDACTED]\"";

/// Masks a complete document (convenience for small bodies and tests).
pub fn mask_document(policy: &Arc<Policy>, input: &[u8]) -> Result<Vec<u8>, MaskError> {
    let mut m = JsonMasker::new(Arc::clone(policy));
    let mut out = Vec::with_capacity(input.len());
    m.push(input, &mut out)?;
    m.finish(&mut out)?;
    Ok(out)
}

/// The edge a value hangs on: an object key (decoded) or an array index.
#[derive(Debug, Clone, Copy)]
enum Label<'a> {
    Key(&'a [u8]),
    Index(u64),
}

/// Bloom bit of a key: length, first and last byte (with bit 5 set, which folds ASCII case,
/// so it serves both the case-sensitive and the case-insensitive comparison).
#[inline(always)]
fn key_bit(key: &[u8]) -> u64 {
    let first = key.first().map_or(0, |b| b | 0x20);
    let last = key.last().map_or(0, |b| b | 0x20);
    let h = (key.len() as u32)
        .wrapping_mul(7)
        .wrapping_add(u32::from(first) * 3)
        .wrapping_add(u32::from(last));
    1 << (h % 64)
}

#[inline(always)]
fn skip_ws(input: &[u8], mut i: usize) -> usize {
    // Minified JSON has no whitespace: one comparison decides the common case.
    while let Some(&b) = input.get(i) {
        if b > b' ' || !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            break;
        }
        i += 1;
    }
    i
}

fn hex(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some(u16::from(b - b'0')),
        b'a'..=b'f' => Some(u16::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Length of the prefix of `s` that is plain string content: printable ASCII other than `"`
/// and `\`. Eight bytes at a time (SWAR); the first flagged byte of each word is exact.
#[inline(always)]
fn plain_prefix(s: &[u8]) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(w) = s.get(i..i + 8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        let x = u64::from_le_bytes(a);
        let ctrl = x.wrapping_sub(LO * 0x20) & !x;
        let q = x ^ (LO * u64::from(b'"'));
        let quote = q.wrapping_sub(LO) & !q;
        let bs = x ^ (LO * u64::from(b'\\'));
        let back = bs.wrapping_sub(LO) & !bs;
        let m = (ctrl | quote | back | x) & HI;
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = s.get(i) {
        if b < 0x20 || b == b'"' || b == b'\\' || b >= 0x80 {
            break;
        }
        i += 1;
    }
    i
}

/// Decodes the (already validated) content of a JSON string (`escaped`: it holds a `\`, so
/// it needs unescaping, not only a UTF-8 view); `None` if it is not valid after
/// all, which the caller reports as a syntax error.
fn decode(raw: &[u8], escaped: bool) -> Option<Cow<'_, str>> {
    if !escaped {
        return std::str::from_utf8(raw).ok().map(Cow::Borrowed);
    }
    let mut s = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let run_end = raw[i..]
            .iter()
            .position(|&b| b == b'\\')
            .map_or(raw.len(), |p| i + p);
        s.push_str(std::str::from_utf8(&raw[i..run_end]).ok()?);
        i = run_end;
        if i >= raw.len() {
            break;
        }
        let e = *raw.get(i + 1)?;
        i += 2;
        let c = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(raw.get(i..i + 4)?)?;
                i += 4;
                if (0xD800..=0xDBFF).contains(&hi) {
                    if raw.get(i..i + 2)? != b"\\u" {
                        return None;
                    }
                    let lo = hex4(raw.get(i + 2..i + 6)?)?;
                    i += 6;
                    if !(0xDC00..=0xDFFF).contains(&lo) {
                        return None;
                    }
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                } else {
                    char::from_u32(hi)?
                }
            }
            _ => return None,
        };
        s.push(c);
    }
    Some(Cow::Owned(s))
}

fn hex4(b: &[u8]) -> Option<u32> {
    b.iter()
        .try_fold(0u32, |acc, &d| Some((acc << 4) | u32::from(hex(d)?)))
}

/// Writes `s` as a JSON string: `"` and `\` escaped, control characters as `\n`-style or
/// `\u00XX` escapes, everything else (including non-ASCII) as UTF-8.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    write_json_content(out, s);
    out.push(b'"');
}

/// The content of [`write_json_str`], without its quotes.
fn write_json_content(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    // Nothing to escape (masked values usually are plain): printable ASCII, or else no
    // byte that needs it.
    if plain_prefix(b) == b.len() || !b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\') {
        out.extend_from_slice(b);
        return;
    }
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0..=0x1F => &[],
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 15)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::policy::{Detector, Limits, Selector};
    use proptest::prelude::{ProptestConfig, any, prop, prop_oneof, proptest};
    use proptest::strategy::{Just, Strategy as PStrategy};
    use serde_json::Value;

    #[test]
    fn redacted_json_is_the_placeholder() {
        let mut out = Vec::new();
        write_json_str(&mut out, REDACTED);
        assert_eq!(out, REDACTED_JSON);
    }

    fn policy_with(
        fields: &[(&str, &str)],
        detectors: &[Detector],
        detect_in: DetectScope,
        ci: bool,
    ) -> Arc<Policy> {
        Arc::new(Policy {
            name: "t".to_owned(),
            fields: fields
                .iter()
                .map(|(s, st)| (Selector::parse(s).unwrap(), Strategy::parse(st).unwrap()))
                .collect(),
            detectors: detectors.to_vec(),
            detect_in,
            case_insensitive: ci,
            hash_key: b"k".to_vec(),
            limits: Limits::default(),
            compiled: Default::default(),
        })
    }

    fn pol(fields: &[(&str, &str)]) -> Arc<Policy> {
        policy_with(fields, &[], DetectScope::None, false)
    }

    fn mask(p: &Arc<Policy>, input: &str) -> Result<String, MaskError> {
        mask_document(p, input.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    /// The whole-document lane takes exactly the complete, valid documents it is meant for,
    /// gives the general path's output, and leaves the masker untouched when it declines.
    #[test]
    fn whole_document_lane() {
        let p = policy_with(
            &[
                ("$..phone", "last4"),
                ("$..x", "remove"),
                ("$..card", "redact"),
            ],
            &[],
            DetectScope::None,
            false,
        );
        let taken = [
            r#"{"a":1,"phone":"5551234567","x":{"y":[1,2]},"b":[true,null,-1.5e3]}"#,
            " [ {\"x\" : 1 } , \"é\\n\\u00e9\" , {\"card\":{\"n\":[1]},\"z\":\"\"} ] \n",
            r#"{"x":1,"x":2}"#,
            "[]",
            "[\"\u{80}\u{10FFFF}\"]",
            // Runs of plain members around a removed one, a masked one and whitespace.
            r#"{"x":1,"a":2,"b":"s","c":true}"#,
            r#"{"a":"x","phone":"5551234567","b":1,"x":null,"c":[1,2, 3,"a",null,{"phone":"123456"}]}"#,
            r#"[1,{"x":[]},2,{"a":0}]"#,
        ];
        for doc in taken {
            let mut m = JsonMasker::new(Arc::clone(&p));
            let mut out = Vec::new();
            assert!(m.whole(doc.as_bytes(), &mut out), "{doc}");
            assert_eq!(Ok(out), mask_chunked(&p, doc.as_bytes(), &[1]), "{doc}");
        }
        let declined = [
            r#"{"a":1"#,               // truncated
            r#"{"a":1} x"#,            // trailing data
            r#"{"ph\u006fne":"555"}"#, // escaped key: the general path decodes it
            r#"["\ud83d\ude00"]"#,     // surrogate escapes: the general path pairs them
            r#"{"a":01}"#,             // invalid number
            "{\"a\":\"\u{1}\"}",       // raw control character
            "42",                      // a scalar at the top level
        ];
        for doc in declined {
            let mut m = JsonMasker::new(Arc::clone(&p));
            let mut out = b"kept".to_vec();
            assert!(!m.whole(doc.as_bytes(), &mut out), "{doc}");
            assert_eq!(out, b"kept", "{doc}");
            assert_eq!((m.frames.len(), m.masked, m.mode), (0, 0, Mode::Value));
            assert_eq!(m.nfa.as_slice(), m.tables.start.as_slice());
        }
        let mut m = JsonMasker::new(Arc::clone(&p));
        assert!(
            !m.whole(b"[\"\xC3\x28\"]", &mut Vec::new()),
            "invalid UTF-8"
        );
        // Only the first push of a document can take the lane.
        let mut m = JsonMasker::new(Arc::clone(&p));
        m.push(b" ", &mut Vec::new()).unwrap();
        assert!(!m.whole(b"[]", &mut Vec::new()));
    }

    fn mask_chunked(p: &Arc<Policy>, input: &[u8], sizes: &[usize]) -> Result<Vec<u8>, MaskError> {
        let mut m = JsonMasker::new(Arc::clone(p));
        let mut out = Vec::new();
        let mut rest = input;
        let mut k = 0;
        while !rest.is_empty() {
            let n = sizes
                .get(k % sizes.len().max(1))
                .copied()
                .unwrap_or(1)
                .clamp(1, rest.len());
            k += 1;
            m.push(&rest[..n], &mut out)?;
            rest = &rest[n..];
        }
        m.finish(&mut out)?;
        Ok(out)
    }

    fn hash(v: &str) -> String {
        strategy::mask_text(&Strategy::Hash, v, b"k").unwrap()
    }

    #[test]
    fn error_codes() {
        let t = [
            (MaskError::Syntax { offset: 3 }, "invalid_json"),
            (MaskError::TooDeep, "too_deep"),
            (MaskError::StringTooLong, "string_too_long"),
            (MaskError::Truncated, "truncated"),
            (MaskError::TrailingData, "trailing_data"),
        ];
        for (e, code) in t {
            assert_eq!(e.code(), code);
        }
        assert_eq!(
            MaskError::Syntax { offset: 3 }.to_string(),
            "invalid JSON at byte 3"
        );
    }

    #[test]
    fn selector_forms() {
        let doc = r#"{"customer":{"phone":"5551234567","name":"Ann"},"phone":"5550000000",
            "items":[{"email":"a@x.io","n":1},{"email":"b@y.io"}],
            "deep":{"a":[{"phone":"5559999999"}]},"odd key":"v","rows":[[1,2],[3,4]],
            "obj":{"p":1,"q":"s"}}"#;
        let cases: Vec<(&str, &str, &str)> = vec![
            (
                "$.customer.phone",
                "redact",
                r#"{"customer":{"phone":"[REDACTED]","name":"Ann"},"phone":"5550000000","items":[{"email":"a@x.io","n":1},{"email":"b@y.io"}],"deep":{"a":[{"phone":"5559999999"}]},"odd key":"v","rows":[[1,2],[3,4]],"obj":{"p":1,"q":"s"}}"#,
            ),
            (
                "$..phone",
                "last4",
                r#"{"customer":{"phone":"******4567","name":"Ann"},"phone":"******0000","items":[{"email":"a@x.io","n":1},{"email":"b@y.io"}],"deep":{"a":[{"phone":"******9999"}]},"odd key":"v","rows":[[1,2],[3,4]],"obj":{"p":1,"q":"s"}}"#,
            ),
            (
                "$.items[*].email",
                "email",
                r#"{"customer":{"phone":"5551234567","name":"Ann"},"phone":"5550000000","items":[{"email":"a***@x.io","n":1},{"email":"b***@y.io"}],"deep":{"a":[{"phone":"5559999999"}]},"odd key":"v","rows":[[1,2],[3,4]],"obj":{"p":1,"q":"s"}}"#,
            ),
            (
                "$.items[1].email",
                "null",
                r#"{"customer":{"phone":"5551234567","name":"Ann"},"phone":"5550000000","items":[{"email":"a@x.io","n":1},{"email":null}],"deep":{"a":[{"phone":"5559999999"}]},"odd key":"v","rows":[[1,2],[3,4]],"obj":{"p":1,"q":"s"}}"#,
            ),
            (
                "$['odd key']",
                "redact",
                r#"{"customer":{"phone":"5551234567","name":"Ann"},"phone":"5550000000","items":[{"email":"a@x.io","n":1},{"email":"b@y.io"}],"deep":{"a":[{"phone":"5559999999"}]},"odd key":"[REDACTED]","rows":[[1,2],[3,4]],"obj":{"p":1,"q":"s"}}"#,
            ),
            (
                "$.rows[*][1]",
                "keep1",
                r#"{"customer":{"phone":"5551234567","name":"Ann"},"phone":"5550000000","items":[{"email":"a@x.io","n":1},{"email":"b@y.io"}],"deep":{"a":[{"phone":"5559999999"}]},"odd key":"v","rows":[[1,"*"],[3,"*"]],"obj":{"p":1,"q":"s"}}"#,
            ),
            (
                "$.obj.*",
                "redact",
                r#"{"customer":{"phone":"5551234567","name":"Ann"},"phone":"5550000000","items":[{"email":"a@x.io","n":1},{"email":"b@y.io"}],"deep":{"a":[{"phone":"5559999999"}]},"odd key":"v","rows":[[1,2],[3,4]],"obj":{"p":"[REDACTED]","q":"[REDACTED]"}}"#,
            ),
            (
                "$..a[0].phone",
                "remove",
                r#"{"customer":{"phone":"5551234567","name":"Ann"},"phone":"5550000000","items":[{"email":"a@x.io","n":1},{"email":"b@y.io"}],"deep":{"a":[{}]},"odd key":"v","rows":[[1,2],[3,4]],"obj":{"p":1,"q":"s"}}"#,
            ),
            (
                "$.nothing.here",
                "redact",
                r#"{"customer":{"phone":"5551234567","name":"Ann"},"phone":"5550000000","items":[{"email":"a@x.io","n":1},{"email":"b@y.io"}],"deep":{"a":[{"phone":"5559999999"}]},"odd key":"v","rows":[[1,2],[3,4]],"obj":{"p":1,"q":"s"}}"#,
            ),
        ];
        for (sel, strat, want) in cases {
            let p = pol(&[(sel, strat)]);
            assert_eq!(mask(&p, doc).as_deref(), Ok(want), "{sel} {strat}");
        }
    }

    #[test]
    fn strategies_on_every_value_type() {
        let doc =
            r#"{"s":"5551234567","n":-12.5e3,"t":true,"f":false,"z":null,"o":{"a":1},"a":[1,2]}"#;
        let fields = ["s", "n", "t", "f", "z", "o", "a"];
        let cases: Vec<(&str, [String; 7])> = vec![
            (
                "redact",
                [
                    r#""[REDACTED]""#.into(),
                    r#""[REDACTED]""#.into(),
                    r#""[REDACTED]""#.into(),
                    r#""[REDACTED]""#.into(),
                    "null".into(),
                    r#""[REDACTED]""#.into(),
                    r#""[REDACTED]""#.into(),
                ],
            ),
            (
                "last4",
                [
                    r#""******4567""#.into(),
                    r#""***.5e3""#.into(),
                    r#""****""#.into(),
                    r#""*alse""#.into(),
                    "null".into(),
                    r#""[REDACTED]""#.into(),
                    r#""[REDACTED]""#.into(),
                ],
            ),
            (
                "email",
                [
                    r#""[REDACTED]""#.into(),
                    r#""[REDACTED]""#.into(),
                    r#""[REDACTED]""#.into(),
                    r#""[REDACTED]""#.into(),
                    "null".into(),
                    r#""[REDACTED]""#.into(),
                    r#""[REDACTED]""#.into(),
                ],
            ),
            (
                "hash",
                [
                    format!("{:?}", hash("5551234567")),
                    format!("{:?}", hash("-12.5e3")),
                    format!("{:?}", hash("true")),
                    format!("{:?}", hash("false")),
                    "null".into(),
                    r#""[REDACTED]""#.into(),
                    r#""[REDACTED]""#.into(),
                ],
            ),
            (
                "null",
                [
                    "null".into(),
                    "null".into(),
                    "null".into(),
                    "null".into(),
                    "null".into(),
                    "null".into(),
                    "null".into(),
                ],
            ),
        ];
        for (strat, outs) in cases {
            for (field, want) in fields.iter().zip(outs.iter()) {
                let p = pol(&[(&format!("$.{field}"), strat)]);
                let got = mask(&p, doc).unwrap();
                let v: Value = serde_json::from_str(&got).unwrap();
                let want: Value = serde_json::from_str(want).unwrap();
                assert_eq!(v[*field], want, "{strat} on {field}: {got}");
                // Everything else unchanged.
                let orig: Value = serde_json::from_str(doc).unwrap();
                for other in fields.iter().filter(|f| *f != field) {
                    assert_eq!(v[*other], orig[*other], "{strat} on {field}");
                }
            }
        }
        // remove drops each of them, null included.
        for field in fields {
            let p = pol(&[(&format!("$.{field}"), "remove")]);
            let v: Value = serde_json::from_str(&mask(&p, doc).unwrap()).unwrap();
            assert!(v.get(field).is_none(), "{field}");
            assert_eq!(v.as_object().unwrap().len(), 6);
        }
    }

    #[test]
    fn masked_strings_are_escaped() {
        let p = pol(&[("$.a", "keep3")]);
        assert_eq!(
            mask(&p, r#"{"a":"x\"\\\n\u0001yz"}"#).unwrap(),
            r#"{"a":"****\u0001yz"}"#
        );
        let p = pol(&[("$.a", "keep4")]);
        assert_eq!(
            mask(&p, r#"{"a":"abc\"\\"}"#).unwrap(),
            r#"{"a":"*bc\"\\"}"#
        );
        let p = pol(&[("$.a", "keep2")]);
        assert_eq!(
            mask(&p, r#"{"a":"\uD83D\uDE00\u00e9x"}"#).unwrap(),
            r#"{"a":"*éx"}"#
        );
    }

    #[test]
    fn remove_comma_handling() {
        let p = pol(&[("$..x", "remove")]);
        let cases = [
            (r#"{"x":1,"a":2,"b":3}"#, r#"{"a":2,"b":3}"#),
            (r#"{"a":1,"x":2,"b":3}"#, r#"{"a":1,"b":3}"#),
            (r#"{"a":1,"b":2,"x":3}"#, r#"{"a":1,"b":2}"#),
            (r#"{"x":1}"#, r#"{}"#),
            (r#"{"x":1,"x":{"y":[1,2]},"x":null}"#, r#"{}"#),
            (r#"{ "x" : [ 1 , { } ] , "a" : "x" }"#, r#"{"a":"x"}"#),
            (r#"[{"x":1},{"x":2,"y":3}]"#, r#"[{},{"y":3}]"#),
        ];
        for (input, want) in cases {
            assert_eq!(mask(&p, input).as_deref(), Ok(want), "{input}");
        }
        let arr = "[10,20,30]";
        let cases = [
            ("$[0]", "[20,30]"),
            ("$[1]", "[10,30]"),
            ("$[2]", "[10,20]"),
            ("$[*]", "[]"),
            ("$[3]", "[10,20,30]"),
        ];
        for (sel, want) in cases {
            assert_eq!(
                mask(&pol(&[(sel, "remove")]), arr).as_deref(),
                Ok(want),
                "{sel}"
            );
        }
        let p = pol(&[("$.a[0]", "remove")]);
        assert_eq!(mask(&p, r#"{"a":[5]}"#).as_deref(), Ok(r#"{"a":[]}"#));
        let p = pol(&[("$.a[*]", "remove")]);
        assert_eq!(
            mask(&p, r#"{"a":[{"b":1},[2],"s",null,true]}"#).as_deref(),
            Ok(r#"{"a":[]}"#)
        );
    }

    #[test]
    fn unicode_escaped_duplicate_and_case_keys() {
        let p = pol(&[("$..phone", "last4")]);
        assert_eq!(
            mask(&p, r#"{"ph\u006fne":"5551234567"}"#).as_deref(),
            Ok(r#"{"ph\u006fne":"******4567"}"#)
        );
        assert_eq!(
            mask(&p, r#"{"\u0070\u0068\u006F\u006E\u0065":5551234567}"#).as_deref(),
            Ok(r#"{"\u0070\u0068\u006F\u006E\u0065":"******4567"}"#)
        );
        assert_eq!(
            mask(&p, r#"{"phone":"1111111","a":1,"phone":"2222222"}"#).as_deref(),
            Ok(r#"{"phone":"***1111","a":1,"phone":"***2222"}"#)
        );
        // Case-sensitive by default.
        assert_eq!(
            mask(&p, r#"{"PHONE":"5551234567"}"#).as_deref(),
            Ok(r#"{"PHONE":"5551234567"}"#)
        );
        let ci = policy_with(&[("$..phone", "last4")], &[], DetectScope::None, true);
        assert_eq!(
            mask(&ci, r#"{"PHONE":"5551234567","Ph\u004Fne":"1234567"}"#).as_deref(),
            Ok(r#"{"PHONE":"******4567","Ph\u004Fne":"***4567"}"#)
        );
        // ASCII-only folding: the Kelvin sign is not `k`.
        let ci = policy_with(&[("$.k", "redact")], &[], DetectScope::None, true);
        assert_eq!(
            mask(&ci, "{\"\u{212A}\":1}").as_deref(),
            Ok("{\"\u{212A}\":1}")
        );
        // Unusual keys selected with ['..'].
        let p = pol(&[("$['a\"b']", "redact"), ("$['é']", "redact")]);
        assert_eq!(
            mask(&p, r#"{"a\"b":1,"\u00e9":2,"é":3}"#).as_deref(),
            Ok(r#"{"a\"b":"[REDACTED]","\u00e9":"[REDACTED]","é":"[REDACTED]"}"#)
        );
    }

    #[test]
    fn first_matching_rule_wins_and_descent() {
        let p = pol(&[("$.a.phone", "last4"), ("$..phone", "redact")]);
        assert_eq!(
            mask(
                &p,
                r#"{"a":{"phone":"5551234567"},"b":{"phone":"5551234567"}}"#
            )
            .as_deref(),
            Ok(r#"{"a":{"phone":"******4567"},"b":{"phone":"[REDACTED]"}}"#)
        );
        let p = pol(&[("$..phone", "redact"), ("$.a.phone", "last4")]);
        assert_eq!(
            mask(&p, r#"{"a":{"phone":"5551234567"}}"#).as_deref(),
            Ok(r#"{"a":{"phone":"[REDACTED]"}}"#)
        );
        // A matched container is replaced whole, nothing below is looked at.
        let p = pol(&[("$..contact", "last4"), ("$..phone", "hash")]);
        assert_eq!(
            mask(&p, r#"{"contact":{"phone":"1"},"x":[{"contact":[1]}]}"#).as_deref(),
            Ok(r#"{"contact":"[REDACTED]","x":[{"contact":"[REDACTED]"}]}"#)
        );
        // ..a..b, recursive descent nested inside itself.
        let p = pol(&[("$..a..b", "redact")]);
        assert_eq!(
            mask(
                &p,
                r#"{"b":1,"a":{"b":2,"a":{"x":{"b":3}}},"c":[{"a":[{"b":4}]}]}"#
            )
            .as_deref(),
            Ok(
                r#"{"b":1,"a":{"b":"[REDACTED]","a":{"x":{"b":"[REDACTED]"}}},"c":[{"a":[{"b":"[REDACTED]"}]}]}"#
            )
        );
        let p = pol(&[("$..address.street", "remove")]);
        assert_eq!(
            mask(
                &p,
                r#"[{"address":{"street":"Main 1","city":"X"}},{"street":"keep"}]"#
            )
            .as_deref(),
            Ok(r#"[{"address":{"city":"X"}},{"street":"keep"}]"#)
        );
    }

    #[test]
    fn detectors_all_and_fields() {
        use Detector::*;
        let all = policy_with(
            &[("$.id", "hash")],
            &[Email, Phone, Card],
            DetectScope::All,
            false,
        );
        assert_eq!(
            mask(
                &all,
                r#"{"id":"x","chat":["mail me at john@example.com","card 4111 1111 1111 1111","bad 4111 1111 1111 1112","call +1 (555) 123-4567"],"john@example.com":"k","n":5551234567,"plain":"a\u00e9"}"#
            )
            .as_deref(),
            Ok(format!(
                r#"{{"id":"{}","chat":["mail me at j***@example.com","card ****-****-****-1111","bad **** **** **** **12","call +* (***) ***-**67"],"john@example.com":"k","n":5551234567,"plain":"a\u00e9"}}"#,
                hash("x")
            )
            .as_str())
        );
        let sel = policy_with(
            &[("$.t.secret", "redact")],
            &[Email, Card],
            DetectScope::Fields(vec![
                Selector::parse("$.t").unwrap(),
                Selector::parse("$.u").unwrap(),
            ]),
            false,
        );
        assert_eq!(
            mask(
                &sel,
                r#"{"t":{"x":["a@b.io",{"y":"4111111111111111"}],"secret":"s"},"u":"c@d.io","v":"e@f.io"}"#
            )
            .as_deref(),
            Ok(r#"{"t":{"x":["a***@b.io",{"y":"****-****-****-1111"}],"secret":"[REDACTED]"},"u":"c***@d.io","v":"e@f.io"}"#)
        );
        // Escaped text is decoded before detection; unchanged strings keep their escapes.
        assert_eq!(
            mask(&all, r#"["john\u0040example.com","x\/y"]"#).as_deref(),
            Ok(r#"["j***@example.com","x\/y"]"#)
        );
        // Detectors without a scope do nothing.
        let none = policy_with(&[], &[Email], DetectScope::None, false);
        assert_eq!(mask(&none, r#"["a@b.io"]"#).as_deref(), Ok(r#"["a@b.io"]"#));
        let mut m = JsonMasker::new(all);
        let mut out = Vec::new();
        m.push(br#"["a@b.io","x","c@d.io"]"#, &mut out).unwrap();
        m.finish(&mut out).unwrap();
        assert_eq!(m.masked_count(), 2);
    }

    #[test]
    fn passthrough_is_byte_identical_and_minified() {
        let p = pol(&[("$..zzz", "redact")]);
        let input = " {\n \"a\\u0041\" : [ 1 , -0.5E+10 , \"x\\ud83d\\ude00\\/\\\"\" , true , false , null ] ,\t\"é\":{} , \"b\":[]}\r\n";
        assert_eq!(
            mask(&p, input).as_deref(),
            Ok(r#"{"a\u0041":[1,-0.5E+10,"x\ud83d\ude00\/\"",true,false,null],"é":{},"b":[]}"#)
        );
        for scalar in ["0", "-0", "1e5", "\"s\"", "true", "null", " 12 "] {
            assert_eq!(mask(&p, scalar).as_deref(), Ok(scalar.trim()), "{scalar}");
        }
    }

    #[test]
    fn streams_early_and_never_leaks_before_masking() {
        let p = pol(&[("$..phone", "last4")]);
        let mut m = JsonMasker::new(Arc::clone(&p));
        let mut out = Vec::new();
        m.push(br#"[{"id":1,"note":"hel"#, &mut out).unwrap();
        assert_eq!(out, br#"[{"id":1,"note":"hel"#);
        m.push(br#"lo"},{"phone":"555123"#, &mut out).unwrap();
        assert_eq!(out, br#"[{"id":1,"note":"hello"},{"phone":"#);
        m.push(br#"4567"}"#, &mut out).unwrap();
        assert_eq!(out, br#"[{"id":1,"note":"hello"},{"phone":"******4567"}"#);
        m.push(b"]", &mut out).unwrap();
        m.finish(&mut out).unwrap();
        assert_eq!(m.masked_count(), 1);
        // A number value is buffered when masked, streamed when not.
        let mut m = JsonMasker::new(p);
        let mut out = Vec::new();
        m.push(br#"{"a":123"#, &mut out).unwrap();
        assert_eq!(out, br#"{"a":123"#);
        m.push(br#"4,"phone":555"#, &mut out).unwrap();
        assert_eq!(out, br#"{"a":1234,"phone":"#);
    }

    #[test]
    fn depth_limit() {
        let p = pol(&[("$.x", "redact")]);
        let nest = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        assert_eq!(mask(&p, &nest(64)).as_deref(), Ok(nest(64).as_str()));
        assert_eq!(mask(&p, &nest(65)), Err(MaskError::TooDeep));
        let objs = |d: usize| format!("{}1{}", r#"{"a":"#.repeat(d), "}".repeat(d));
        assert!(mask(&p, &objs(64)).is_ok());
        assert_eq!(mask(&p, &objs(65)), Err(MaskError::TooDeep));
        // Also inside a masked subtree (it is still validated, with bounded memory).
        assert_eq!(
            mask(&p, &format!(r#"{{"x":{}}}"#, nest(64))),
            Err(MaskError::TooDeep)
        );
        let mut small = (*p).clone();
        small.limits.max_depth = 2;
        let small = Arc::new(small);
        assert!(mask(&small, "[[1]]").is_ok());
        assert_eq!(mask(&small, "[[[1]]]"), Err(MaskError::TooDeep));
        // A million-deep attack fails fast without recursion.
        assert_eq!(mask(&p, &"[".repeat(1_000_000)), Err(MaskError::TooDeep));
    }

    #[test]
    fn string_limit() {
        let mut p = (*pol(&[("$.m", "redact")])).clone();
        p.limits.max_string_bytes = 8;
        let p = Arc::new(p);
        assert!(mask(&p, r#"{"a":"12345678","m":"12345678","k2345678":1}"#).is_ok());
        for bad in [
            r#"{"a":"123456789"}"#,
            r#"{"m":"123456789"}"#,
            r#"{"k23456789":1}"#,
            r#"{"a":123456789}"#,
            r#"{"m":-12345678}"#,
            "123456789",
        ] {
            assert_eq!(mask(&p, bad), Err(MaskError::StringTooLong), "{bad}");
            assert_eq!(
                mask_chunked(&p, bad.as_bytes(), &[1]).map(|_| ()),
                Err(MaskError::StringTooLong),
                "{bad} chunked"
            );
        }
    }

    #[test]
    fn invalid_inputs() {
        let p = pol(&[("$..phone", "last4")]);
        let syntax =
            |s: &[u8]| -> bool { matches!(mask_document(&p, s), Err(MaskError::Syntax { .. })) };
        let bad: Vec<&[u8]> = vec![
            // bad escapes
            br#"["\x"]"#,
            br#"["\u12"]"#,
            br#"["\u12G4"]"#,
            br#"["\U0041"]"#,
            br#"["\'"]"#,
            // lone / broken surrogates
            br#"["\ud800"]"#,
            br#"["\udc00"]"#,
            br#"["\ud800x"]"#,
            br#"["\ud800\n"]"#,
            br#"["\ud800\u0041"]"#,
            br#"["\ud800\ud800"]"#,
            br#"{"phone":"\udfff"}"#,
            br#"{"\ud800":1}"#,
            // invalid UTF-8
            b"[\"\xff\"]",
            b"[\"\xc0\x80\"]",
            b"[\"\xc3\"]",
            b"[\"\x80\"]",
            b"[\"\xed\xa0\x80\"]",
            b"[\"\xf4\x90\x80\x80\"]",
            b"[\"\xe0\x80\xaf\"]",
            b"[\"\xf5\x80\x80\x80\"]",
            b"{\"phone\":\"\xe2\x82\"}",
            b"[\xc3\xa9]",
            b"\xef\xbb\xbf[]",
            // control characters
            b"[\"a\nb\"]",
            b"[\"\x00\"]",
            b"[\"\x1f\"]",
            // numbers
            b"01",
            b"[01]",
            b"-01",
            b"[-]",
            b"[+1]",
            b"[.5]",
            b"[1.]",
            b"[1.e5]",
            b"[1e]",
            b"[1e+]",
            b"[NaN]",
            b"[Infinity]",
            b"[-Infinity]",
            b"[0x10]",
            b"[1_000]",
            b"{\"phone\":01}",
            // literals
            b"[tru]",
            b"[True]",
            b"[nul]",
            b"[nulll]",
            b"[falsey]",
            b"[undefined]",
            // structure
            b"[1,]",
            b"{\"a\":1,}",
            b"[,1]",
            b"{,}",
            b"{\"a\" 1}",
            b"{\"a\":}",
            b"{1:2}",
            b"{'a':1}",
            b"[1 2]",
            b"{\"a\":1 \"b\":2}",
            b"[}",
            b"{]",
            b"]",
            b"}",
            b",",
            b":",
            b"[\"a\":1]",
            b"{\"a\"}",
            b"\"abc",
            b"[\"abc]",
        ];
        for b in bad {
            let r = mask_document(&p, b);
            assert!(
                matches!(r, Err(MaskError::Syntax { .. }) | Err(MaskError::Truncated)),
                "{:?} gave {r:?}",
                String::from_utf8_lossy(b)
            );
        }
        assert!(syntax(br#"["\x"]"#));
        for t in [
            "", " ", "[", "[1", "[1,", "{", "{\"a\"", "{\"a\":", "{\"a\":1", "\"abc", "-", "tr",
            "[\"\\u00",
        ] {
            assert_eq!(mask(&p, t), Err(MaskError::Truncated), "{t:?}");
        }
        for t in [
            "{}x",
            "[] []",
            "1 2",
            "null,",
            "\"a\"\"b\"",
            "{}}",
            "truex",
            "0 0",
        ] {
            assert_eq!(mask(&p, t), Err(MaskError::TrailingData), "{t:?}");
        }
        // Offsets are absolute across chunks.
        let mut m = JsonMasker::new(Arc::clone(&p));
        let mut out = Vec::new();
        m.push(b"[1, ", &mut out).unwrap();
        assert_eq!(
            m.push(b" x]", &mut out),
            Err(MaskError::Syntax { offset: 5 })
        );
        // Sticky.
        assert_eq!(m.push(b"]", &mut out), Err(MaskError::Syntax { offset: 5 }));
        assert_eq!(m.finish(&mut out), Err(MaskError::Syntax { offset: 5 }));
        // Valid edge cases.
        for ok in [
            "[\"\\ud83d\\ude00\"]",
            "[\"\u{10FFFF}\"]",
            "[\"\u{7f}\"]",
            "[-0.0e-0]",
            "[1E+2]",
            "[\"\\u0000\"]",
            "{\"\":\"\"}",
            "[[],{},\"\"]",
            "\t\n\r [ ] \t\n\r",
        ] {
            assert!(mask(&p, ok).is_ok(), "{ok:?}");
        }
        // finish after success is idempotent.
        let mut m = JsonMasker::new(p);
        let mut out = Vec::new();
        m.push(b"42", &mut out).unwrap();
        m.finish(&mut out).unwrap();
        m.finish(&mut out).unwrap();
        assert_eq!(out, b"42");
    }

    #[test]
    fn every_split_point_gives_identical_output() {
        let p = policy_with(
            &[
                ("$..phone", "last4"),
                ("$..x", "remove"),
                ("$..h", "hash"),
                ("$..n", "null"),
            ],
            &[Detector::Email, Detector::Phone, Detector::Card],
            DetectScope::Fields(vec![Selector::parse("$..t").unwrap()]),
            true,
        );
        let docs: Vec<&[u8]> = vec![
            "{\"ph\\u006Fne\":\"\\ud83d\\ude00 é 日本 5551234567\",\"x\":[1,{\"a\":\"\\u00e9\"}],\"h\":-1.5e-3,\"n\":true,\"t\":[\"mail a@b.io\",\"4111 1111 1111 1111\"],\"k\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\",\"z\":[null,false,0,12.25E+1]}".as_bytes(),
            b"  [ \"plain\" , 123 , {\"PHONE\" : 4111111111111111 } ]  ",
            "\"\u{10348}\u{20AC}\u{A2}$\"".as_bytes(),
            b"[\"\\ud800\\u0041\"]",
            b"{\"a\":[1,2,]}",
            b"-12.5e+10",
        ];
        for doc in docs {
            let whole = mask_document(&p, doc);
            assert_eq!(mask_chunked(&p, doc, &[1]), whole, "1-byte chunks");
            for cut in 0..=doc.len() {
                let mut m = JsonMasker::new(Arc::clone(&p));
                let mut out = Vec::new();
                let r = m
                    .push(&doc[..cut], &mut out)
                    .and_then(|()| m.push(&doc[cut..], &mut out))
                    .and_then(|()| m.finish(&mut out))
                    .map(|()| out);
                assert_eq!(
                    r,
                    whole,
                    "cut at {cut} of {:?}",
                    String::from_utf8_lossy(doc)
                );
            }
        }
    }

    #[test]
    fn empty_pushes_and_plain_prefix() {
        let p = pol(&[]);
        let mut m = JsonMasker::new(p);
        let mut out = Vec::new();
        m.push(b"", &mut out).unwrap();
        m.push(b"[\"abcdefghijklmnopqrstuvwxyz", &mut out).unwrap();
        m.push(b"", &mut out).unwrap();
        m.push(b"\"]", &mut out).unwrap();
        m.finish(&mut out).unwrap();
        assert_eq!(out, b"[\"abcdefghijklmnopqrstuvwxyz\"]");
        for s in [
            &b"abcdefgh\""[..],
            b"abcdefghi\\",
            b"abcdefg\x1f",
            b"abcdefghijklmnop\x80",
            b"\"",
            b"abc",
            b"abcdefgh",
            b"a\x7fb\"",
            b" ~!#$%&'()*+,-./0123456789:;<=>?@[]^_`{|}~\"",
        ] {
            let want = s
                .iter()
                .position(|&b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x80)
                .unwrap_or(s.len());
            assert_eq!(plain_prefix(s), want, "{:?}", String::from_utf8_lossy(s));
        }
    }

    // ---- property tests ------------------------------------------------------------------

    fn key() -> impl PStrategy<Value = String> {
        prop_oneof![
            3 => prop_oneof![Just("phone"), Just("email"), Just("name")].prop_map(str::to_owned),
            2 => prop_oneof![Just("a"), Just("b"), Just("Phone"), Just("x y"), Just("é"), Just("q\"")]
                .prop_map(str::to_owned),
            1 => "[a-z]{1,6}",
        ]
    }

    fn pii() -> impl PStrategy<Value = String> {
        prop_oneof![
            "pii-[A-Za-z0-9]{12}",
            "pii[a-z0-9]{10}@example\\.com",
            "pii\"é\n\\\\[a-z]{10}",
            "\\+1 555 [0-9]{3} [0-9]{4}",
        ]
    }

    fn arb_json() -> impl PStrategy<Value = Value> {
        let leaf = prop_oneof![
            1 => Just(Value::Null),
            1 => any::<bool>().prop_map(Value::Bool),
            1 => any::<i64>().prop_map(Value::from),
            1 => (-4000i32..4000).prop_map(|n| Value::from(f64::from(n) / 4.0)),
            1 => "[a-z ]{0,8}".prop_map(Value::String),
            1 => any::<String>().prop_map(Value::String),
            3 => pii().prop_map(Value::String),
        ];
        leaf.prop_recursive(8, 96, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn oracle_policy() -> Arc<Policy> {
        pol(&[
            ("$..phone", "last4"),
            ("$..email", "email"),
            ("$..name", "redact"),
        ])
    }

    /// The masking rules applied to a `serde_json::Value` tree: the test oracle.
    fn oracle(v: &Value, p: &Policy) -> Value {
        let strat_for = |k: &str| match k {
            "phone" => Some(Strategy::Keep(4)),
            "email" => Some(Strategy::Email),
            "name" => Some(Strategy::Redact),
            _ => None,
        };
        let apply = |s: &Strategy, v: &Value| -> Value {
            let text = match v {
                Value::Null => return Value::Null,
                Value::Object(_) | Value::Array(_) => {
                    return Value::String(REDACTED.to_owned());
                }
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
            };
            strategy::mask_text(s, &text, &p.hash_key).map_or(Value::Null, Value::String)
        };
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        let nv = match strat_for(k) {
                            Some(s) => apply(&s, v),
                            None => oracle(v, p),
                        };
                        (k.clone(), nv)
                    })
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|v| oracle(v, p)).collect()),
            other => other.clone(),
        }
    }

    /// Texts of every scalar inside a PII-keyed subtree (`hidden`) and outside (`open`).
    fn collect(v: &Value, under_pii: bool, hidden: &mut Vec<String>, open: &mut Vec<String>) {
        let dst = |u: bool, h: &mut Vec<String>, o: &mut Vec<String>, s: String| {
            if u { h.push(s) } else { o.push(s) }
        };
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    open.push(k.clone());
                    let pii = under_pii || matches!(k.as_str(), "phone" | "email" | "name");
                    collect(v, pii, hidden, open);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| collect(v, under_pii, hidden, open)),
            Value::String(s) => dst(under_pii, hidden, open, s.clone()),
            Value::Number(n) => dst(under_pii, hidden, open, n.to_string()),
            _ => {}
        }
    }

    fn mutate(doc: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
        const BYTES: &[u8] =
            b"{}[]\",:\\u0123456789eE.-+tfnlrsa \t\n\x00\x1f\x7f\xc3\xa9\xed\xa0\xff\x80";
        let mut d = doc.to_vec();
        for &(pos, op, b) in edits {
            let b = BYTES[usize::from(b) % BYTES.len()];
            if d.is_empty() {
                d.push(b);
                continue;
            }
            let at = pos % d.len();
            match op % 3 {
                0 => d[at] = b,
                1 => d.insert(at, b),
                _ => {
                    d.remove(at);
                }
            }
        }
        d
    }

    /// Exact paths, wildcards and indexes (frames whose states are not all `..key`), and
    /// case-insensitive keys.
    fn paths_policy() -> Arc<Policy> {
        policy_with(
            &[
                ("$.a.phone", "last4"),
                ("$.*.email", "email"),
                ("$.b[*].name", "redact"),
                ("$..a[1]", "remove"),
                ("$..b.*", "null"),
            ],
            &[],
            DetectScope::None,
            true,
        )
    }

    fn scrub_policy() -> Arc<Policy> {
        policy_with(
            &[
                ("$..phone", "last4"),
                ("$..b", "remove"),
                ("$..a[*]", "hash"),
                ("$..Phone", "null"),
            ],
            &[Detector::Email, Detector::Phone, Detector::Card],
            DetectScope::All,
            false,
        )
    }

    proptest! {
        // 256 cases by default; `PROPTEST_CASES=N` runs more (when hunting for a divergence).
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
        ))]

        /// (1) Chunking invariance: random splits ≡ one push, valid or not.
        #[test]
        fn prop_chunking_invariance(
            v in arb_json(),
            pretty in any::<bool>(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..3),
            sizes in prop::collection::vec(1usize..40, 1..8),
            which in 0u8..3,
        ) {
            let doc = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
            let doc = mutate(&doc, &edits);
            let p = match which {
                0 => oracle_policy(),
                1 => scrub_policy(),
                _ => paths_policy(),
            };
            let whole = mask_document(&p, &doc);
            proptest::prop_assert_eq!(mask_chunked(&p, &doc, &sizes), whole.clone());
            proptest::prop_assert_eq!(mask_chunked(&p, &doc, &[1]), whole);
        }

        /// Strategies written in place give `mask_text`'s output, JSON-encoded.
        #[test]
        fn prop_mask_scalar_is_mask_text(
            text in prop_oneof!["\\PC{0,12}", "[a-z.\\-]{0,6}@[a-z0-9.\\-]{0,8}", "[ -~]{0,10}"],
            which in 0usize..5,
        ) {
            let strat = ["redact", "email", "last4", "keep2", "hash"][which];
            let p = pol(&[("$..x", strat)]);
            let mut m = JsonMasker::new(Arc::clone(&p));
            let mut ours = Vec::new();
            m.mask_scalar(0, &text, &mut ours);
            let mut want = Vec::new();
            match strategy::mask_text(&p.fields[0].1, &text, &p.hash_key) {
                Some(s) => write_json_str(&mut want, &s),
                None => want.extend_from_slice(b"null"),
            }
            proptest::prop_assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(want).unwrap());
        }

        /// (2) Oracle: no planted value survives; output parses and equals the Value oracle.
        #[test]
        fn prop_oracle(v in arb_json(), pretty in any::<bool>(), sizes in prop::collection::vec(1usize..64, 1..4)) {
            let doc = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
            let p = oracle_policy();
            let out = mask_chunked(&p, &doc, &sizes).unwrap();
            let parsed: Value = serde_json::from_slice(&out).unwrap();
            let input: Value = serde_json::from_slice(&doc).unwrap();
            proptest::prop_assert_eq!(&parsed, &oracle(&input, &p));
            let (mut hidden, mut open) = (Vec::new(), Vec::new());
            collect(&input, false, &mut hidden, &mut open);
            for h in hidden.iter().filter(|h| h.chars().count() >= 8) {
                if open.iter().any(|o| o.contains(h.as_str())) {
                    continue;
                }
                let escaped = serde_json::to_string(h).unwrap();
                let escaped = &escaped[1..escaped.len() - 1];
                proptest::prop_assert!(!contains(&out, h.as_bytes()), "{h:?} survived in {}", String::from_utf8_lossy(&out));
                proptest::prop_assert!(!contains(&out, escaped.as_bytes()), "{escaped:?} survived");
            }
        }

        /// (3) Mutated documents: an error or output that parses — never a panic; and the
        /// masker accepts exactly what serde_json accepts (bar numbers out of f64 range).
        #[test]
        fn prop_mutations(
            v in arb_json(),
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4),
            scrub in any::<bool>(),
        ) {
            let doc = mutate(&serde_json::to_vec(&v).unwrap(), &edits);
            let p = if scrub { scrub_policy() } else { oracle_policy() };
            let ours = mask_document(&p, &doc);
            let theirs = serde_json::from_slice::<Value>(&doc);
            let out_of_range = |e: &serde_json::Error| e.to_string().contains("number out of range");
            match (&ours, &theirs) {
                (Ok(out), Ok(_)) => proptest::prop_assert!(serde_json::from_slice::<Value>(out).is_ok(), "unparseable output {}", String::from_utf8_lossy(out)),
                (Ok(_), Err(e)) => proptest::prop_assert!(out_of_range(e), "we accepted, serde_json: {e}: {:?}", String::from_utf8_lossy(&doc)),
                (Err(e), Ok(_)) => proptest::prop_assert!(false, "we rejected ({e:?}), serde_json accepted {:?}", String::from_utf8_lossy(&doc)),
                _ => {}
            }
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
    }
}
