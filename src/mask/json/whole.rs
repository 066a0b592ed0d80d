//! The whole-document lane of the JSON masker: a document that arrives complete in the
//! first `push` (a buffered answer, one NDJSON line, one SSE event) is validated and masked
//! in one tight pass that copies unchanged runs of the input verbatim instead of re-emitting
//! it token by token.
//!
//! Owns only the scan: every decision is the general path's own — selector states and
//! slots ([`JsonMasker::decide`], `open_container`), strategies and detectors
//! (`string_value_done`, `mask_scalar`), limits. It never reports an error: anything it does
//! not take whole (invalid or truncated input, an escaped key, a surrogate escape, a scalar
//! at the top level, a limit reached) makes it hand back the masker untouched, and the general
//! path redoes the chunk from the start and gives the exact answer, error or not. So the lane
//! can only change speed, never output: the chunking-invariance property tests compare a whole
//! push (this lane) with byte-by-byte pushes (never this lane).
//!
//! Edits to the verbatim copy, in input order: insignificant whitespace is cut (the output
//! is minified, as on the general path), masked values are replaced, removed members and
//! elements are cut with their separators. Commas follow one rule: a comma is kept when a
//! member was emitted before it in its container and the member after it is emitted too.
//!
//! Speed: runs of plain members (keys no selector can name, plain scalar values) are taken
//! without touching the masker's state (`plain_run`); a container that shares its parent's
//! selector states (under `$..key` policies, nearly all) gets no frame, only a place on the
//! lane's own stack of open containers; and strings are scanned sixteen bytes at a time with
//! SSE2 on x86-64 (`plain_len`).
//!
//! Must not: write anything it may have to take back except into `out` past its mark, or
//! leave the masker other than as a fresh one when it declines (a `hash` rule's HMAC key,
//! set up on first use, may stay: it is the same key).

use super::{Act, JsonMasker, LIT_NULL, Label, Mode, literal_at};
use super::{emit_placeholder, hex, key_bit, plain_prefix, skip_ws};
use smallvec::SmallVec;

/// How the top frame decides its children's slots without running the automaton.
#[derive(Clone, Copy)]
enum Quick {
    /// No selector states: everything passes.
    Empty,
    /// Only `..key` states: a key outside the bloom filter and any index pass, inheriting.
    Descend,
    /// Anything else: [`JsonMasker::decide`].
    General,
}

/// A copy of the top frame's fields the scan reads per member (`has_out` and `index` are
/// kept here and written back before a child frame is pushed).
#[derive(Clone, Copy)]
struct Top {
    obj: bool,
    has_out: bool,
    index: u64,
    quick: Quick,
    detect: bool,
    /// The end of its selector states (`Frame::states.1`).
    end: usize,
}

/// The output side: `input[copied..]` is not written yet.
struct Copy<'a> {
    input: &'a [u8],
    out: &'a mut Vec<u8>,
    copied: usize,
}

impl Copy<'_> {
    /// Writes the input up to `at` (edits are made in input order, so `at >= copied`).
    #[inline(always)]
    fn flush(&mut self, at: usize) {
        if let Some(run) = self.input.get(self.copied..at) {
            self.out.extend_from_slice(run);
        }
        self.copied = at.max(self.copied);
    }

    /// Leaves `input[from..to]` out of the output.
    #[inline(always)]
    fn cut(&mut self, from: usize, to: usize) {
        if to > from {
            self.flush(from);
            self.copied = to;
        }
    }
}

impl JsonMasker {
    /// Masks `input` as one complete document into `out`, if it qualifies (see the module
    /// docs); returns false with the masker and `out` untouched otherwise.
    pub(super) fn whole(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        if self.consumed != 0 || self.mode != Mode::Value {
            return false;
        }
        // A chunk that cannot be a whole object or array (the first chunk of a longer body)
        // is not scanned twice.
        let last = input
            .iter()
            .rev()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if !matches!(last, Some(b'}' | b']')) {
            return false;
        }
        let mark = out.len();
        let mut w = Copy {
            input,
            out,
            copied: 0,
        };
        if self.whole_scan(&mut w).is_some() {
            w.flush(input.len());
            self.mode = Mode::Done;
            return true;
        }
        out.truncate(mark);
        self.restart();
        false
    }

    /// Back to the state of a fresh masker (after an abandoned whole-document scan).
    fn restart(&mut self) {
        self.frames.clear();
        self.nfa.clear();
        self.nfa.extend_from_slice(&self.tables.start);
        self.act = Act::Pass;
        self.inherit = false;
        self.detect = false;
        self.escaped = false;
        self.masked = 0;
        self.mode = Mode::Value;
    }

    /// The scan proper; `None`: not taken (the caller restarts).
    fn whole_scan(&mut self, w: &mut Copy<'_>) -> Option<()> {
        let input = w.input;
        let max = self.policy.limits.max_string_bytes;
        let (bloom, scrub_all, scrub_sel) = {
            let t = &*self.tables;
            (t.key_bloom, t.scrub_all, t.scrub_sel)
        };
        let mut i = skip_ws(input, 0);
        w.cut(0, i);
        let &b = input.get(i)?;
        if b != b'{' && b != b'[' {
            return None;
        }
        self.open_container(b == b'{').ok()?;
        let mut top = self.top()?;
        // The containers open below the root, innermost last: the parent's facts to go back
        // to, and whether the container has a frame of its own (see `Pass` below).
        let mut open: SmallVec<[(Top, bool); 16]> = SmallVec::new();
        let max_depth = self.policy.limits.max_depth;
        i += 1;
        // `i` is right after an opening bracket (`first`) or after a value.
        let mut first = true;
        loop {
            let j = skip_ws(input, i);
            let &c = input.get(j)?;
            let sep = if c == b',' && !first {
                w.cut(i, j);
                j
            } else if c == if top.obj { b'}' } else { b']' } {
                w.cut(i, j);
                i = j + 1;
                first = false;
                let Some((parent, framed)) = open.pop() else {
                    // The root.
                    self.frames.pop()?;
                    let end = skip_ws(input, i);
                    w.cut(i, end);
                    return (end == input.len()).then_some(());
                };
                if framed {
                    let f = self.frames.pop()?;
                    self.nfa.truncate(f.base);
                }
                top = parent;
                continue;
            } else if first {
                i
            } else {
                return None;
            };
            let comma = !first;
            first = false;
            // The member or element starts at `q`; decide its slot.
            let q = if comma { skip_ws(input, sep + 1) } else { j };
            if !matches!(top.quick, Quick::General) {
                let plain = !(scrub_all || (scrub_sel && top.detect));
                if let Some(end) = plain_run(w, &mut top, (sep, comma, q), bloom, max, plain) {
                    i = end;
                    continue;
                }
            }
            let (v, colon_ws) = if top.obj {
                if input.get(q) != Some(&b'"') {
                    return None;
                }
                let (k1, escaped) = scan_string(input, q + 1)?;
                if escaped || k1 - q - 1 > max {
                    return None;
                }
                let key = &input[q + 1..k1];
                match top.quick {
                    // As `decide` for a key that advances nothing (see there).
                    Quick::Descend if bloom & key_bit(key) == 0 => {
                        self.pass(top, true);
                    }
                    Quick::Empty => self.pass(top, false),
                    _ => self.decide(Label::Key(key)),
                }
                let colon = skip_ws(input, k1 + 1);
                if input.get(colon) != Some(&b':') {
                    return None;
                }
                (skip_ws(input, colon + 1), Some((k1 + 1, colon)))
            } else {
                if comma {
                    top.index += 1;
                }
                match top.quick {
                    // `decide` for an index under `..key` states only (or none: an empty
                    // frame counts as descend-only there).
                    Quick::Descend | Quick::Empty => self.pass(top, true),
                    Quick::General => self.decide(Label::Index(top.index)),
                }
                (q, None)
            };
            let act = self.act;
            if matches!(act, Act::Skip) {
                // Removed, with the separator before it (or, for the first one emitted, the
                // whitespace before it; the comma after it then goes by the rule).
                let end = self.skip_value(input, v, 1 + open.len())?;
                w.cut(sep, end);
                i = end;
                continue;
            }
            // Emitted: keep the comma only between two emitted members.
            w.cut(if top.has_out { sep + 1 } else { sep }, q);
            top.has_out = true;
            if let Some((k1, colon)) = colon_ws {
                w.cut(k1, colon);
                w.cut(colon + 1, v);
            }
            let &b = input.get(v)?;
            i = match b {
                b'"' => {
                    let (e, escaped) = scan_string(input, v + 1)?;
                    if e - v - 1 > max {
                        return None;
                    }
                    if !matches!(act, Act::Pass) || scrub_all || (scrub_sel && self.detect) {
                        w.flush(v);
                        self.escaped = escaped;
                        self.string_value_done(&input[v + 1..e], e, w.out).ok()?;
                        w.copied = e + 1;
                    }
                    e + 1
                }
                b'{' | b'[' => match act {
                    Act::Pass => {
                        // The general path's frame limit (it gives the error).
                        if 1 + open.len() >= max_depth {
                            return None;
                        }
                        open.push((top, true));
                        if self.inherit && self.detect == top.detect {
                            // It shares the top frame's selector states and detector flag, so
                            // every decision below is the top frame's: no frame of its own,
                            // only its own shape and progress.
                            open.last_mut()?.1 = false;
                            top.obj = b == b'{';
                            top.has_out = false;
                            top.index = 0;
                        } else {
                            self.open_container(b == b'{').ok()?;
                            top = self.top()?;
                        }
                        first = true;
                        v + 1
                    }
                    _ => {
                        let end = self.skip_value(input, v, 1 + open.len())?;
                        if let Act::Mask(rule) = act {
                            self.masked += 1;
                            w.flush(v);
                            emit_placeholder(&self.policy, rule, w.out);
                            w.copied = end;
                        }
                        end
                    }
                },
                b'-' | b'0'..=b'9' => {
                    let e = scan_number(input, v)?;
                    if e - v > max {
                        return None;
                    }
                    if let Act::Mask(rule) = act {
                        // The number grammar admits ASCII only.
                        let text = std::str::from_utf8(&input[v..e]).ok()?;
                        w.flush(v);
                        self.mask_scalar(rule, text, w.out);
                        w.copied = e;
                    }
                    e
                }
                b't' | b'f' | b'n' => {
                    let (lit, e) = literal_at(input, v)?;
                    // A masked `null` stays `null`: nothing to hide.
                    if let (Act::Mask(rule), false) = (act, lit == LIT_NULL) {
                        w.flush(v);
                        self.mask_scalar(rule, if lit == 0 { "true" } else { "false" }, w.out);
                        w.copied = e;
                    }
                    e
                }
                _ => return None,
            };
        }
    }

    /// The top frame's facts the scan decides by, read once per container.
    #[inline]
    fn top(&self) -> Option<Top> {
        let f = self.frames.last()?;
        let quick = if f.states.0 == f.states.1 {
            Quick::Empty
        } else if f.descend_only {
            Quick::Descend
        } else {
            Quick::General
        };
        Some(Top {
            obj: f.obj,
            has_out: f.has_out,
            index: f.index,
            quick,
            detect: f.detect,
            end: f.states.1,
        })
    }

    /// The slot of a member or element that advances no selector state: passed, with the
    /// frame's detector flag, and (`inherit`) sharing the frame's states; as `decide` and
    /// `decide_key` leave it.
    #[inline(always)]
    fn pass(&mut self, top: Top, inherit: bool) {
        self.nfa.truncate(top.end);
        self.act = Act::Pass;
        self.inherit = inherit;
        self.detect = top.detect;
    }

    /// Validates the value at `v` without looking inside for selectors (a removed or masked
    /// value), with `depth` containers open around it; returns the position after it. Nested
    /// containers count towards the depth limit as on the general path (its frames for such
    /// a subtree).
    fn skip_value(&mut self, input: &[u8], v: usize, depth: usize) -> Option<usize> {
        let max = self.policy.limits.max_string_bytes;
        let room = self.policy.limits.max_depth.saturating_sub(depth);
        // Closers expected, innermost last (the string buffer is free during this lane).
        let stack = &mut self.buf;
        stack.clear();
        let mut i = v;
        loop {
            // A value at `i`.
            match *input.get(i)? {
                c @ (b'{' | b'[') => {
                    if stack.len() >= room {
                        return None;
                    }
                    let close = if c == b'{' { b'}' } else { b']' };
                    i = skip_ws(input, i + 1);
                    if input.get(i) == Some(&close) {
                        i += 1;
                    } else {
                        stack.push(close);
                        if c == b'{' {
                            i = skip_key(input, i, max)?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    let (e, _) = scan_string(input, i + 1)?;
                    if e - i - 1 > max {
                        return None;
                    }
                    i = e + 1;
                }
                b'-' | b'0'..=b'9' => {
                    let e = scan_number(input, i)?;
                    if e - i > max {
                        return None;
                    }
                    i = e;
                }
                b't' | b'f' | b'n' => i = literal_at(input, i)?.1,
                _ => return None,
            }
            // After a value: commas and closers until the next value or the end.
            loop {
                let Some(&close) = stack.last() else {
                    return Some(i);
                };
                i = skip_ws(input, i);
                match *input.get(i)? {
                    b',' => {
                        i = skip_ws(input, i + 1);
                        if close == b'}' {
                            i = skip_key(input, i, max)?;
                        }
                        break;
                    }
                    c if c == close => {
                        stack.pop();
                        i += 1;
                    }
                    _ => return None,
                }
            }
        }
    }
}

/// A key and its colon at `i` (inside a skipped object): the position of its value.
fn skip_key(input: &[u8], i: usize, max: usize) -> Option<usize> {
    if input.get(i) != Some(&b'"') {
        return None;
    }
    let (e, _) = scan_string(input, i + 1)?;
    let colon = skip_ws(input, e + 1);
    if e - i - 1 > max || input.get(colon) != Some(&b':') {
        return None;
    }
    Some(skip_ws(input, colon + 1))
}

/// The closing quote of the string whose content starts at `i`, and whether it holds an
/// escape. `None` for a raw control character, a bad escape, a `\u` surrogate (left to the
/// general path, which checks their pairing), invalid UTF-8 or no closing quote.
#[inline(always)]
fn scan_string(input: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        i += plain_len(input, i);
        match *input.get(i)? {
            b'"' => return Some((i, escaped)),
            b'\\' => {
                escaped = true;
                match *input.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' => {
                        let mut u = 0u16;
                        for &h in input.get(i + 2..i + 6)? {
                            u = (u << 4) | hex(h)?;
                        }
                        if (0xD800..=0xDFFF).contains(&u) {
                            return None;
                        }
                        i += 6;
                    }
                    _ => return None,
                }
            }
            b if b >= 0x80 => i += utf8_char(input.get(i..)?)?,
            _ => return None,
        }
    }
}

/// The end of the number starting at `i` (RFC 8259 §6), which must be followed by a byte
/// that is not part of it (a number at the input's end is left to the general path).
fn scan_number(input: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let s = i;
        while input.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > s).then_some(i)
    };
    if input.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match *input.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i)?,
        _ => return None,
    };
    if input.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(input.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(input.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    // `01`: a digit after a leading zero is an error, not a second number.
    input.get(i).filter(|b| !b.is_ascii_digit()).map(|_| i)
}

/// The length of the UTF-8 sequence `s` starts with, `None` if it is not a valid one (std's
/// validation: the same well-formedness table, RFC 3629, as the general path's).
fn utf8_char(s: &[u8]) -> Option<usize> {
    let head = s.get(..4).unwrap_or(s);
    let valid = match std::str::from_utf8(head) {
        Ok(v) => v,
        Err(e) => std::str::from_utf8(head.get(..e.valid_up_to())?).ok()?,
    };
    valid.chars().next().map(char::len_utf8)
}

/// The members (or elements) from `q` on that need neither an edit nor a decision beyond the
/// bloom filter, taken without touching the masker's state: minified, printable-ASCII keys
/// that no selector can name (any key under no selector states), and plain ASCII strings
/// (`plain`: no detector runs on them), numbers and literals as values. The general member
/// step would pass each of them as is; the selector states it would set are dropped by the
/// next decision anyway (every one cuts the nfa back to its frame first). Returns the end of
/// the last one taken, `None` (nothing consumed) when the first does not qualify. `at` is the
/// first one's separator start, whether that is a comma, and where the member starts.
fn plain_run(
    w: &mut Copy<'_>,
    top: &mut Top,
    at: (usize, bool, usize),
    bloom: u64,
    max: usize,
    plain: bool,
) -> Option<usize> {
    let input = w.input;
    let (sep, mut comma, mut q) = at;
    let mut done = None;
    loop {
        let v = if top.obj {
            if input.get(q) != Some(&b'"') {
                return done;
            }
            let k1 = q + 1 + plain_len(input, q + 1);
            if input.get(k1) != Some(&b'"') || k1 - q - 1 > max || input.get(k1 + 1) != Some(&b':')
            {
                return done;
            }
            if matches!(top.quick, Quick::Descend) && bloom & key_bit(&input[q + 1..k1]) != 0 {
                return done;
            }
            k1 + 2
        } else {
            q
        };
        let Some(&b) = input.get(v) else {
            return done;
        };
        let end = match b {
            b'"' if plain => {
                let e = v + 1 + plain_len(input, v + 1);
                if input.get(e) != Some(&b'"') || e - v - 1 > max {
                    return done;
                }
                e + 1
            }
            b'-' | b'0'..=b'9' => match scan_number(input, v) {
                Some(e) if e - v <= max => e,
                _ => return done,
            },
            b't' | b'f' | b'n' => match literal_at(input, v) {
                Some((_, e)) => e,
                None => return done,
            },
            _ => return done,
        };
        // Taken: emitted as is, with the comma before it only after an emitted one.
        if done.is_none() {
            w.cut(if top.has_out { sep + 1 } else { sep }, q);
        }
        if comma && !top.obj {
            top.index += 1;
        }
        top.has_out = true;
        done = Some(end);
        // The next one, when it follows at once (minified).
        match (input.get(end), input.get(end + 1)) {
            (Some(b','), Some(&c)) if c == b'"' || !top.obj => {
                q = end + 1;
                comma = true;
            }
            _ => return done,
        }
    }
}

/// `plain_prefix(&input[i..])` (0 past the end): the run of plain string bytes at `i`,
/// sixteen bytes at a time with SSE2 on x86-64 (every such CPU has it). `safe_arch` wraps
/// the intrinsics in safe functions, so the crate keeps no `unsafe`; the last bytes of the
/// input and other targets use the eight-byte scan. A byte is flagged when it is `"`, `\`, or
/// below 0x20 or from 0x80 as a signed comparison with 0x20 has it: the same set as
/// `plain_prefix`.
#[inline(always)]
fn plain_len(input: &[u8], i: usize) -> usize {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use safe_arch::{
            bitor_m128i, cmp_eq_mask_i8_m128i, cmp_lt_mask_i8_m128i, m128i, move_mask_i8_m128i,
            set_splat_i8_m128i,
        };
        let mut k = i;
        while let Some(Ok(block)) = input.get(k..k + 16).map(<[u8; 16]>::try_from) {
            let x = m128i::from(block);
            let quote = cmp_eq_mask_i8_m128i(x, set_splat_i8_m128i(b'"' as i8));
            let back = cmp_eq_mask_i8_m128i(x, set_splat_i8_m128i(b'\\' as i8));
            let other = cmp_lt_mask_i8_m128i(x, set_splat_i8_m128i(0x20));
            let m = move_mask_i8_m128i(bitor_m128i(bitor_m128i(quote, back), other));
            if m != 0 {
                return k - i + m.trailing_zeros() as usize;
            }
            k += 16;
        }
        k - i + plain_prefix(input.get(k..).unwrap_or_default())
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    plain_prefix(input.get(i..).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::{plain_len, plain_prefix};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The sixteen-byte scan flags exactly the bytes the eight-byte one does.
        #[test]
        fn plain_len_is_plain_prefix(
            bytes in prop::collection::vec(prop_oneof![12 => 32u8..127, 1 => any::<u8>()], 0..96),
            at in 0usize..100,
        ) {
            let want = plain_prefix(bytes.get(at..).unwrap_or_default());
            prop_assert_eq!(plain_len(&bytes, at), want);
        }
    }
}
