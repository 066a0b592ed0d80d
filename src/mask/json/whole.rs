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
//! Speed: runs of plain members (keys no selector can name, plain scalar values, and
//! containers below such keys, entered and left in the same run) are taken without touching
//! the masker's state (`plain_run`); a container that shares its parent's selector states
//! (under `$..key` policies, nearly all) gets no frame, only a place on the lane's own
//! fixed-size stack of open containers (`Nest`); and strings are scanned sixteen bytes at a
//! time with SSE2 on x86-64 (`plain_len`).
//!
//! Must not: write anything it may have to take back except into `out` past its mark, or
//! leave the masker other than as a fresh one when it declines.

use super::{Act, JsonMasker, LIT_NULL, Label, Mode, literal_at};
use super::{emit_placeholder, hex, key_bit, plain_prefix, skip_ws};

/// The containers the lane keeps open below the root at most (a deeper document goes to the
/// general path, which has its own limit).
const LANE_DEPTH: usize = 16;

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

/// Where the scan is in the tree: the innermost open container's facts, and the containers
/// open around it below the root, innermost last (`open[..depth]`): the parent's facts to go
/// back to, and whether the container has a frame of its own (see `Pass` in the scan). A
/// fixed array: no spill checks per container; deeper documents are left to the general path.
struct Nest {
    top: Top,
    open: [(Top, bool); LANE_DEPTH],
    depth: usize,
}

impl Nest {
    /// Whether one more container fits: the general path's frame limit (it gives the error)
    /// and the array's size.
    #[inline(always)]
    fn has_room(&self, max_depth: usize) -> bool {
        self.depth < LANE_DEPTH && 1 + self.depth < max_depth
    }

    /// Opens a child of the top container (the caller checked `has_room`); `framed`: it has
    /// a frame of its own, whose facts the caller puts in `top`.
    #[inline(always)]
    fn push(&mut self, framed: bool) -> Option<()> {
        *self.open.get_mut(self.depth)? = (self.top, framed);
        self.depth += 1;
        Some(())
    }

    /// Opens a child that shares the top frame's selector states and detector flag, so every
    /// decision below is the top frame's: no frame of its own, only its own shape and progress.
    #[inline(always)]
    fn push_shared(&mut self, obj: bool) -> Option<()> {
        self.push(false)?;
        self.top.obj = obj;
        self.top.has_out = false;
        self.top.index = 0;
        Some(())
    }

    /// Closes the top container: whether it had a frame; `None` for the root.
    #[inline(always)]
    fn pop(&mut self) -> Option<bool> {
        let d = self.depth.checked_sub(1)?;
        let (parent, framed) = *self.open.get(d)?;
        self.depth = d;
        self.top = parent;
        Some(framed)
    }

    /// Whether the top container is one `push_shared` opened.
    #[inline(always)]
    fn shared(&self) -> bool {
        self.depth
            .checked_sub(1)
            .and_then(|d| self.open.get(d))
            .is_some_and(|&(_, framed)| !framed)
    }
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
        let top = self.top()?;
        let mut nest = Nest {
            top,
            open: [(top, false); LANE_DEPTH],
            depth: 0,
        };
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
            } else if c == if nest.top.obj { b'}' } else { b']' } {
                w.cut(i, j);
                i = j + 1;
                first = false;
                let Some(framed) = nest.pop() else {
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
            if !matches!(nest.top.quick, Quick::General) {
                let run = Run {
                    bloom,
                    max,
                    max_depth,
                    plain: !(scrub_all || (scrub_sel && nest.top.detect)),
                };
                if let Some((end, opened)) = plain_run(w, &mut nest, (sep, comma, q), run) {
                    i = end;
                    first = opened;
                    continue;
                }
            }
            let (v, colon_ws) = if nest.top.obj {
                if input.get(q) != Some(&b'"') {
                    return None;
                }
                let (k1, escaped) = scan_string(input, q + 1)?;
                if escaped || k1 - q - 1 > max {
                    return None;
                }
                let key = &input[q + 1..k1];
                match nest.top.quick {
                    // As `decide` for a key that advances nothing (see there).
                    Quick::Descend if bloom & key_bit(key) == 0 => {
                        self.pass(nest.top, true);
                    }
                    Quick::Empty => self.pass(nest.top, false),
                    _ => self.decide(Label::Key(key)),
                }
                let colon = skip_ws(input, k1 + 1);
                if input.get(colon) != Some(&b':') {
                    return None;
                }
                (skip_ws(input, colon + 1), Some((k1 + 1, colon)))
            } else {
                if comma {
                    nest.top.index += 1;
                }
                match nest.top.quick {
                    // `decide` for an index under `..key` states only (or none: an empty
                    // frame counts as descend-only there).
                    Quick::Descend | Quick::Empty => self.pass(nest.top, true),
                    Quick::General => self.decide(Label::Index(nest.top.index)),
                }
                (q, None)
            };
            let act = self.act;
            if matches!(act, Act::Skip) {
                // Removed, with the separator before it (or, for the first one emitted, the
                // whitespace before it; the comma after it then goes by the rule).
                let end = self.skip_value(input, v, 1 + nest.depth)?;
                w.cut(sep, end);
                i = end;
                continue;
            }
            // Emitted: keep the comma only between two emitted members.
            w.cut(if nest.top.has_out { sep + 1 } else { sep }, q);
            nest.top.has_out = true;
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
                        if !nest.has_room(max_depth) {
                            return None;
                        }
                        let top = nest.top;
                        if self.inherit && self.detect == top.detect {
                            nest.push_shared(b == b'{')?;
                        } else {
                            nest.push(true)?;
                            self.open_container(b == b'{').ok()?;
                            nest.top = self.top()?;
                        }
                        first = true;
                        v + 1
                    }
                    _ => {
                        let end = self.skip_value(input, v, 1 + nest.depth)?;
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
    fn skip_value(&self, input: &[u8], v: usize, depth: usize) -> Option<usize> {
        let max = self.policy.limits.max_string_bytes;
        // Past the general path's limit, or past what the bit stack holds: not taken.
        let room = self.policy.limits.max_depth.saturating_sub(depth).min(128);
        // Closers expected, innermost lowest: bit set for `}`, clear for `]`; `open` of them.
        let (mut closers, mut open) = (0u128, 0usize);
        let mut i = v;
        loop {
            // A value at `i`.
            match *input.get(i)? {
                c @ (b'{' | b'[') => {
                    if open >= room {
                        return None;
                    }
                    let close = if c == b'{' { b'}' } else { b']' };
                    i = skip_ws(input, i + 1);
                    if input.get(i) == Some(&close) {
                        i += 1;
                    } else {
                        closers = closers << 1 | u128::from(c == b'{');
                        open += 1;
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
                if open == 0 {
                    return Some(i);
                }
                let obj = closers & 1 == 1;
                i = skip_ws(input, i);
                match *input.get(i)? {
                    b',' => {
                        i = skip_ws(input, i + 1);
                        if obj {
                            i = skip_key(input, i, max)?;
                        }
                        break;
                    }
                    c if c == if obj { b'}' } else { b']' } => {
                        closers >>= 1;
                        open -= 1;
                        i += 1;
                    }
                    _ => return None,
                }
            }
        }
    }
}

/// A key and its colon at `i` (inside a skipped object): the position of its value.
#[inline(always)]
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

/// What `plain_run` decides by, fixed for one document.
#[derive(Clone, Copy)]
struct Run {
    bloom: u64,
    max: usize,
    max_depth: usize,
    /// No detector runs on string values.
    plain: bool,
}

/// The members (or elements) from `q` on that need neither an edit nor a decision beyond the
/// bloom filter, taken without touching the masker's state: minified, printable-ASCII keys
/// that no selector can name (any key under no selector states), and plain ASCII strings
/// (`plain`: no detector runs on them), numbers and literals as values; and containers as
/// values where the general member step would open one that shares the top frame's
/// selector states (`Nest::push_shared`; under `..key` states, a key the bloom filter passes
/// or any index), whose members are taken the same way and which are closed here again. The
/// general member step would pass each of them as is; the selector states it would set are
/// dropped by the next decision anyway (every one cuts the nfa back to its frame first).
///
/// Returns the end of what was taken and whether that is right after an opening bracket;
/// `None` (nothing consumed) when the first member does not qualify. `at` is the first one's
/// separator start, whether that is a comma, and where the member starts.
fn plain_run(
    w: &mut Copy<'_>,
    nest: &mut Nest,
    at: (usize, bool, usize),
    run: Run,
) -> Option<(usize, bool)> {
    let input = w.input;
    let Run {
        bloom,
        max,
        max_depth,
        plain,
    } = run;
    let (mut sep, mut comma, mut q) = at;
    let mut done = None;
    'member: loop {
        let obj = nest.top.obj;
        let v = if obj {
            if input.get(q) != Some(&b'"') {
                return done;
            }
            let k1 = q + 1 + plain_len(input, q + 1);
            if input.get(k1) != Some(&b'"') || k1 - q - 1 > max || input.get(k1 + 1) != Some(&b':')
            {
                return done;
            }
            if matches!(nest.top.quick, Quick::Descend) && bloom & key_bit(&input[q + 1..k1]) != 0 {
                return done;
            }
            k1 + 2
        } else {
            q
        };
        let Some(&b) = input.get(v) else {
            return done;
        };
        let mut open = None;
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
            // Any element's container, a key's only under `..key` states: under none at all
            // the general path gives a key's container a frame of its own.
            b'{' | b'['
                if (!obj || matches!(nest.top.quick, Quick::Descend))
                    && nest.has_room(max_depth) =>
            {
                open = Some(b == b'{');
                v + 1
            }
            _ => return done,
        };
        // Taken: emitted as is, with the comma before it only after an emitted one.
        w.cut(if nest.top.has_out { sep + 1 } else { sep }, q);
        if comma && !obj {
            nest.top.index += 1;
        }
        nest.top.has_out = true;
        let mut first = false;
        if let Some(obj) = open {
            nest.push_shared(obj)?;
            first = true;
        }
        let mut pos = end;
        done = Some((pos, first));
        // What follows at once (minified): the next member, or the end of a container
        // opened here (possibly several).
        loop {
            let close = if nest.top.obj { b'}' } else { b']' };
            let next = input.get(pos);
            if next == Some(&close) && nest.shared() {
                nest.pop()?;
                pos += 1;
                first = false;
                done = Some((pos, false));
                continue;
            }
            (sep, comma, q) = if first {
                (pos, false, pos)
            } else {
                match (next, input.get(pos + 1)) {
                    (Some(b','), Some(&c)) if c == b'"' || !nest.top.obj => (pos, true, pos + 1),
                    _ => return done,
                }
            };
            continue 'member;
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
