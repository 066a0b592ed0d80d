//! Differential tests of the whole-document lane ([`JsonMasker::whole`]): for generated
//! documents and policies, the lane's output (a whole push) must equal the general path's (a
//! whole push that skips the lane) and that of pushes of one byte each, which never take the
//! lane; or the lane must decline. Valid, broken and adversarial documents alike: escapes,
//! surrogates, invalid UTF-8, bad numbers and literals, stray separators, truncation, tight
//! depth and string limits, bloom-filter collisions, minified runs of plain members.
//!
//! The defaults take about a second. Larger runs, after any change to the lane:
//! `DIFF_CASES=3000000 DIFF_SEED=7 EXH_LEN=5 cargo test --release --lib difftest`.
//! Error kinds may differ only where the general whole push agrees with the byte-wise one
//! (a doubly broken string reports the error its chunking meets first).
use super::*;
use crate::mask::policy::{Detector, Limits, Selector};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pct(&mut self, p: usize) -> bool {
        self.below(100) < p
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

const KEYS: &[&[u8]] = &[
    b"a",
    b"b",
    b"c",
    b"x",
    b"phone",
    b"Phone",
    b"PHONE",
    b"email",
    b"card",
    b"name",
    b"A",
    b"ab",
    b"",
    b"x y",
    "é".as_bytes(),
    b"q\\\"",
    b"ph\\u006fne",
    b"\\u0061",
    b"e",
    b"B",
    // bloom collisions (same length, first and last letter as a selector key) and long keys
    b"prone",
    b"plane",
    b"PlanE",
    b"easel",
    b"EmaiL",
    b"cord",
    b"nine",
    b"AB",
    b"aB",
    b"xx",
    b"abcdefghijklmno",
    b"abcdefghijklmnop",
    b"abcdefghijklmnopq",
    b"phone_number_of_the_user",
    b"a\x7fb",
    b"k\xc3\xa9y",
    b"p\\u0068one",
];
const SELS: &[&str] = &[
    "$..abcdefghijklmnop",
    "$..cord",
    "$..phone",
    "$..PHONE",
    "$.a",
    "$.a.b",
    "$..a[1]",
    "$[0]",
    "$[*]",
    "$.*",
    "$..x",
    "$.*.email",
    "$..b.*",
    "$..card",
    "$..é",
    "$..name",
    "$[1].a",
    "$..a",
    "$.a[*]",
    "$[*].phone",
    "$..b",
    "$['q\"']",
    "$..c[0]",
    "$..A.x",
    "$..ab",
    "$[0][0]",
    "$..e",
    "$.*.*",
    "$[*][*]",
    "$..a..b",
    "$..x[*]",
    "$..c",
    "$.b",
    "$['x y']",
    "$..email",
];
const STRATS: &[&str] = &[
    "redact", "remove", "null", "last4", "keep1", "keep2", "email", "hash", "remove",
];
const WS: &[&[u8]] = &[
    b"", b"", b"", b"", b" ", b"  ", b"\n", b"\n  ", b"\t", b"\r\n", b"\n    ",
];
const NUMS_OK: &[&[u8]] = &[
    b"0",
    b"-0",
    b"1",
    b"-1",
    b"12",
    b"1.5",
    b"-0.0",
    b"1e5",
    b"1E+5",
    b"1e-05",
    b"0.5e10",
    b"123456789012345678901234567890",
    b"1.0e+308",
    b"-9",
    b"5551234567",
    b"0e0",
    b"-0E-0",
    b"4111111111111111",
    b"10",
    b"9.99",
];
const NUMS_BAD: &[&[u8]] = &[
    b"01",
    b"-",
    b"1.",
    b"1e",
    b"1e+",
    b".5",
    b"+1",
    b"00",
    b"-01",
    b"1.e3",
    b"0x1",
    b"1..2",
    b"--1",
    b"1e5.5",
    b"Infinity",
    b"NaN",
    b"-a",
    b"1ee",
    b"0-",
    b"1.5.",
    b"-.5",
];
const LITS_OK: &[&[u8]] = &[b"true", b"false", b"null"];
const LITS_BAD: &[&[u8]] = &[b"tru", b"nul", b"nulll", b"True", b"fals", b"nil", b"truee"];
const STR_OK: &[&[u8]] = &[
    b"abc",
    b"x y",
    b" ",
    b"\\n",
    b"\\\"",
    b"\\\\",
    b"\\/",
    b"\\b",
    b"\\f",
    b"\\r",
    b"\\t",
    b"\\u00e9",
    b"\\u0000",
    b"\\u001f",
    b"\\u00E9",
    b"\\uD83D\\uDE00",
    b"\\udbff\\udfff",
    "é".as_bytes(),
    "€".as_bytes(),
    "😀".as_bytes(),
    "\u{10FFFF}".as_bytes(),
    b"\x7f",
    "\u{80}".as_bytes(),
    "\u{7FF}".as_bytes(),
    "\u{800}".as_bytes(),
    "\u{FFFF}".as_bytes(),
    "\u{D7FF}".as_bytes(),
    "\u{E000}".as_bytes(),
    b"john.doe@example.com",
    b"+1 555 123 4567",
    b"4111 1111 1111 1111",
    b"5551234567",
    b"a@b.co",
    b"pii-ABCDEFGHIJKL",
    b"\\u0041",
];
const STR_BAD: &[&[u8]] = &[
    b"\\ud83d",
    b"\\ude00",
    b"\\ud83dx",
    b"\\ud83d\\u0041",
    b"\\u12G4",
    b"\\x",
    b"\\u00",
    b"\\U0041",
    b"\xC0\x80",
    b"\xC1\xBF",
    b"\xED\xA0\x80",
    b"\xED\xBF\xBF",
    b"\xF4\x90\x80\x80",
    b"\xE2\x82",
    b"\x80",
    b"\xFF",
    b"\xC3",
    b"\xF0\x9F\x98",
    b"\xE0\x80\x80",
    b"\xF0\x80\x80\x80",
    b"\xF5\x80\x80\x80",
    b"\x01",
    b"\x1f",
    b"\n",
    b"\t",
    b"\\",
    b"\\'",
    b"\xE2\x82\xAC\xAC",
];

struct Gen<'r> {
    r: &'r mut Rng,
    bad: usize, // percent of picking a broken token
    lens: Vec<usize>,
    maxd: usize,
    wsp: usize,
    clean: bool,
}

impl Gen<'_> {
    fn ws(&mut self, out: &mut Vec<u8>) {
        if self.r.pct(self.wsp) {
            let w = self.r.pick(WS);
            out.extend_from_slice(w);
            if self.r.pct(1) {
                out.push(self.r.pick(&[0x0Bu8, 0x0C, 0xA0]));
            }
        }
    }
    fn string(&mut self, out: &mut Vec<u8>) {
        out.push(b'"');
        let s = out.len();
        let n = if self.r.pct(35) { 0 } else { self.r.below(5) };
        for _ in 0..n {
            if self.r.pct(self.bad / 2 + 1) && self.r.pct(50) {
                out.extend_from_slice(self.r.pick(STR_BAD));
            } else {
                let mut x = self.r.pick(STR_OK);
                while self.clean && x.windows(3).any(|w| w == b"\\uD" || w == b"\\ud") {
                    x = self.r.pick(STR_OK);
                }
                out.extend_from_slice(x);
            }
        }
        if self.r.pct(if self.clean { 40 } else { 15 }) {
            let len = if self.r.pct(50) {
                self.r
                    .pick(&[14usize, 15, 16, 17, 18, 30, 31, 32, 33, 34, 47, 48, 49])
            } else {
                self.r.below(70)
            };
            let odd = if self.r.pct(30) {
                Some(self.r.below(len + 1))
            } else {
                None
            };
            for k in 0..len {
                if Some(k) == odd {
                    let x: &[u8] = self.r.pick(&[
                        &b"\\n"[..],
                        "\u{e9}".as_bytes(),
                        b"\\u0041",
                        "\u{20ac}".as_bytes(),
                        b"\x7f",
                        b"\\\"",
                        b"/",
                    ]);
                    out.extend_from_slice(x);
                } else {
                    out.push(self.r.pick(b"abcxyz0189 -_.@AZ~!#"));
                }
            }
        }
        self.lens.push(out.len() - s);
        out.push(b'"');
    }
    fn key(&mut self, out: &mut Vec<u8>) {
        if !self.clean && self.r.pct(10) {
            return self.string(out);
        }
        out.push(b'"');
        let mut k = self.r.pick(KEYS);
        while self.clean && k.contains(&b'\\') {
            k = self.r.pick(KEYS);
        }
        out.extend_from_slice(k);
        self.lens.push(k.len());
        out.push(b'"');
    }
    fn scalar(&mut self, out: &mut Vec<u8>) {
        match self.r.below(4) {
            0 | 1 => self.string(out),
            2 => {
                let n: &[u8] = if self.r.pct(self.bad) {
                    self.r.pick(NUMS_BAD)
                } else if self.r.pct(30) {
                    let mut v = Vec::new();
                    if self.r.pct(30) {
                        v.push(b'-');
                    }
                    v.push(b'1' + self.r.below(9) as u8);
                    for _ in 0..self.r.below(20) {
                        v.push(b'0' + self.r.below(10) as u8);
                    }
                    self.lens.push(v.len());
                    out.extend_from_slice(&v);
                    return;
                } else {
                    self.r.pick(NUMS_OK)
                };
                self.lens.push(n.len());
                out.extend_from_slice(n);
            }
            _ => {
                let l: &[u8] = if self.r.pct(self.bad) {
                    self.r.pick(LITS_BAD)
                } else {
                    self.r.pick(LITS_OK)
                };
                out.extend_from_slice(l);
            }
        }
    }
    fn value(&mut self, out: &mut Vec<u8>, depth: usize, budget: &mut usize) {
        self.maxd = self.maxd.max(depth);
        let container = *budget > 0 && depth < 40 && self.r.pct(if depth < 3 { 60 } else { 35 });
        if !container {
            return self.scalar(out);
        }
        *budget -= 1;
        let obj = self.r.pct(55);
        out.push(if obj { b'{' } else { b'[' });
        self.maxd = self.maxd.max(depth + 1);
        let n = if self.clean && self.r.pct(40) {
            self.r.below(14)
        } else {
            self.r.below(6)
        };
        for k in 0..n {
            self.ws(out);
            if k > 0 {
                if !self.r.pct(self.bad / 4) {
                    out.push(b',');
                } else if self.r.pct(50) {
                    out.extend_from_slice(b",,");
                }
                self.ws(out);
            } else if self.r.pct(self.bad / 6) {
                out.push(b',');
            }
            if obj {
                self.key(out);
                self.ws(out);
                if !self.r.pct(self.bad / 6) {
                    out.push(b':');
                }
                self.ws(out);
            }
            self.value(out, depth + 1, budget);
        }
        self.ws(out);
        if n > 0 && self.r.pct(self.bad / 6) {
            out.push(b',');
            self.ws(out);
        }
        let close = if obj { b'}' } else { b']' };
        out.push(if self.r.pct(self.bad / 8) {
            if obj { b']' } else { b'}' }
        } else {
            close
        });
    }
}

fn deep(r: &mut Rng, d: usize, out: &mut Vec<u8>) {
    // Nesting exactly `d` deep, with a member at every level.
    let mut closers = Vec::new();
    for _ in 0..d {
        if r.pct(50) {
            out.extend_from_slice(b"{\"");
            out.extend_from_slice(r.pick(KEYS));
            out.extend_from_slice(b"\":");
            closers.push(b'}');
        } else {
            out.push(b'[');
            if r.pct(50) {
                out.extend_from_slice(b"1,");
            }
            closers.push(b']');
        }
    }
    out.extend_from_slice(b"\"5551234567\"");
    while let Some(c) = closers.pop() {
        if r.pct(30) {
            out.extend_from_slice(if c == b'}' { b",\"x\":1" } else { b",[2]" });
        }
        out.push(c);
    }
}

fn mutate(r: &mut Rng, d: &mut Vec<u8>) {
    const BYTES: &[u8] =
        b"{}[]\",:\\u0123456789eE.-+tfnlrsa \t\n\x00\x1f\x7f\xc3\xa9\xed\xa0\xff\x80";
    for _ in 0..1 + r.below(3) {
        let b = r.pick(BYTES);
        if d.is_empty() {
            d.push(b);
            continue;
        }
        let at = r.below(d.len());
        match r.below(3) {
            0 => d[at] = b,
            1 => d.insert(at, b),
            _ => {
                d.remove(at);
            }
        }
    }
}

/// A numeric setting from the environment (larger runs), or its default.
fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A policy of these parts (the `hash` strategy's key fixed).
fn build(
    fields: Vec<(Selector, Strategy)>,
    detectors: Vec<Detector>,
    detect_in: DetectScope,
    case_insensitive: bool,
    limits: Limits,
) -> Arc<Policy> {
    Arc::new(Policy {
        name: "diff".to_owned(),
        fields,
        detectors,
        detect_in,
        case_insensitive,
        hash_key: b"k".to_vec(),
        limits,
        compiled: Default::default(),
    })
}

fn policy(r: &mut Rng, lens: &[usize], maxd: usize) -> Arc<Policy> {
    let nf = r.below(6);
    let fields = (0..nf)
        .map(|_| {
            (
                Selector::parse(r.pick(SELS)).unwrap(),
                Strategy::parse(r.pick(STRATS)).unwrap(),
            )
        })
        .collect();
    let mut detectors = Vec::new();
    for d in [Detector::Email, Detector::Phone, Detector::Card] {
        if r.pct(40) {
            detectors.push(d);
        }
    }
    let detect_in = match r.below(3) {
        0 => DetectScope::None,
        1 => DetectScope::All,
        _ => DetectScope::Fields(
            (0..1 + r.below(2))
                .map(|_| Selector::parse(r.pick(SELS)).unwrap())
                .collect(),
        ),
    };
    let mut limits = Limits::default();
    if r.pct(50) {
        let base = if lens.is_empty() {
            r.below(20)
        } else {
            r.pick(lens)
        };
        limits.max_string_bytes = (base + r.below(3)).saturating_sub(1);
    }
    if r.pct(40) {
        limits.max_depth = (maxd + r.below(3)).saturating_sub(1);
    }
    let ci = r.pct(50);
    build(fields, detectors, detect_in, ci, limits)
}

type Outcome = (Result<Vec<u8>, MaskError>, u64);

fn lane(p: &Arc<Policy>, doc: &[u8]) -> (Outcome, bool) {
    let mut probe = JsonMasker::new(Arc::clone(p));
    let taken = probe.whole(doc, &mut Vec::new());
    let mut m = JsonMasker::new(Arc::clone(p));
    let mut out = Vec::new();
    let r = m
        .push(doc, &mut out)
        .and_then(|()| m.finish(&mut out))
        .map(|()| out);
    ((r, m.masked_count()), taken)
}

fn general_whole(p: &Arc<Policy>, doc: &[u8]) -> Outcome {
    let mut m = JsonMasker::new(Arc::clone(p));
    let mut out = Vec::new();
    let r = m.run(doc, &mut out);
    m.consumed += doc.len() as u64;
    if let Err(e) = &r {
        m.fail(e.clone());
    }
    let r = r.and_then(|()| m.finish(&mut out)).map(|()| out);
    (r, m.masked_count())
}

fn bytewise(p: &Arc<Policy>, doc: &[u8]) -> Outcome {
    let mut m = JsonMasker::new(Arc::clone(p));
    let mut out = Vec::new();
    let mut r = Ok(());
    for b in doc.chunks(1) {
        r = m.push(b, &mut out);
        if r.is_err() {
            break;
        }
    }
    let r = r.and_then(|()| m.finish(&mut out)).map(|()| out);
    (r, m.masked_count())
}

fn show(o: &Outcome) -> String {
    match &o.0 {
        Ok(v) => format!("Ok({}) n={}", String::from_utf8_lossy(v), o.1),
        Err(e) => format!("Err({e:?}) n={}", o.1),
    }
}

/// Prints a divergence: the document, the policy, and the three outcomes.
fn report(label: &str, case: u64, taken: bool, doc: &[u8], p: &Policy, [a, b, c]: [&Outcome; 3]) {
    let detect_in = match &p.detect_in {
        DetectScope::Fields(s) => format!(
            "Fields({:?})",
            s.iter().map(|s| s.as_str()).collect::<Vec<_>>()
        ),
        DetectScope::All => "All".into(),
        DetectScope::None => "None".into(),
    };
    eprintln!(
        "{label} case {case} taken={taken}\n doc={:?}\n fields={:?}\n detectors={:?} in={detect_in} ci={} limits={:?}\n lane   ={}\n general={}\n bytes  ={}",
        String::from_utf8_lossy(doc),
        p.fields
            .iter()
            .map(|(s, st)| (s.as_str().to_owned(), st.clone()))
            .collect::<Vec<_>>(),
        p.detectors,
        p.case_insensitive,
        p.limits,
        show(a),
        show(b),
        show(c),
    );
}

#[test]
fn lane_equals_general_path_on_generated_documents() {
    let cases: u64 = knob("DIFF_CASES", 6000);
    let seed: u64 = knob("DIFF_SEED", 1);
    let mut r = Rng(seed);
    let (mut taken_n, mut ok_n, mut fails, mut err_kind_diff) = (0u64, 0u64, 0u64, 0u64);
    let mut taken_masked = 0u64;
    for case in 0..cases {
        let clean = r.pct(50);
        let bad = if clean {
            0
        } else {
            r.pick(&[0usize, 0, 2, 5, 15, 40])
        };
        let wsp = r.pick(&[0usize, 0, 0, 3, 10, 30, 80]);
        let mut g = Gen {
            r: &mut r,
            bad,
            lens: Vec::new(),
            maxd: 0,
            wsp,
            clean,
        };
        let mut doc = Vec::new();
        g.ws(&mut doc);
        let shape = g.r.below(20);
        if shape == 0 {
            let d = 1 + g.r.below(12);
            g.maxd = d;
            deep(g.r, d, &mut doc);
        } else if shape == 1 {
            g.scalar(&mut doc);
        } else {
            let mut budget = 1 + g.r.below(25);
            // Force a container at the top.
            let obj = g.r.pct(50);
            doc.push(if obj { b'{' } else { b'[' });
            let mut inner = Vec::new();
            let n = if g.r.pct(40) {
                g.r.below(16)
            } else {
                g.r.below(7)
            };
            g.maxd = 1;
            for k in 0..n {
                if k > 0 {
                    inner.push(b',');
                }
                g.ws(&mut inner);
                if obj {
                    g.key(&mut inner);
                    g.ws(&mut inner);
                    inner.push(b':');
                    g.ws(&mut inner);
                }
                g.value(&mut inner, 1, &mut budget);
                g.ws(&mut inner);
            }
            doc.extend_from_slice(&inner);
            doc.push(if obj { b'}' } else { b']' });
        }
        g.ws(&mut doc);
        let (lens, maxd) = (std::mem::take(&mut g.lens), g.maxd);
        if !clean && r.pct(10) {
            mutate(&mut r, &mut doc);
        }
        if !clean && r.pct(3) {
            let at = r.below(doc.len() + 1);
            doc.truncate(at);
        }
        if !clean && r.pct(2) {
            doc.extend_from_slice(r.pick(&[&b" x"[..], b"{}", b"1", b"\x00", b" "]));
        }
        let p = policy(&mut r, &lens, maxd);
        let ((a, taken), b, c) = (lane(&p, &doc), general_whole(&p, &doc), bytewise(&p, &doc));
        if taken {
            taken_n += 1;
            if a.1 > 0 {
                taken_masked += 1;
            }
        }
        if a.0.is_ok() {
            ok_n += 1;
        }
        let bad_lane = a != b;
        let bad_bytes = match (&a.0, &c.0) {
            (Ok(_), _) | (_, Ok(_)) => a != c,
            (Err(x), Err(y)) => {
                if x != y {
                    err_kind_diff += 1;
                    if std::env::var("SHOW_ERRDIFF").is_ok() && err_kind_diff <= 8 {
                        eprintln!(
                            "ERRDIFF doc={:?} limits={:?} whole={x:?} bytes={y:?}",
                            String::from_utf8_lossy(&doc),
                            p.limits
                        );
                    }
                    // Only the lane's fault if the general whole push agrees with bytewise.
                    b.0 == c.0
                } else {
                    false
                }
            }
        };
        if bad_lane || bad_bytes {
            fails += 1;
            if fails <= 30 {
                report("DIVERGENCE", case, taken, &doc, &p, [&a, &b, &c]);
            }
        }
    }
    eprintln!(
        "cases={cases} seed={seed} lane_taken={taken_n} (with masking: {taken_masked}) ok={ok_n} err_kind_diff(general)={err_kind_diff} divergences={fails}"
    );
    assert_eq!(fails, 0);
}

fn mkpol(
    fields: &[(&str, &str)],
    det: &[Detector],
    scope: DetectScope,
    ci: bool,
    lim: Limits,
) -> Arc<Policy> {
    let fields = fields
        .iter()
        .map(|(s, st)| (Selector::parse(s).unwrap(), Strategy::parse(st).unwrap()))
        .collect();
    build(fields, det.to_vec(), scope, ci, lim)
}

/// Every `opener + middle + closer` with a middle of up to `EXH_LEN` bytes over a small
/// alphabet: where the lane takes it, it must equal the bytewise result.
#[test]
fn lane_equals_bytewise_on_every_small_document() {
    let maxlen: usize = knob("EXH_LEN", 3);
    let alpha: &[u8] = b"{}[]\",:01-.ea\\ ";
    let pols = [
        mkpol(
            &[("$[0]", "remove"), ("$..a", "last4")],
            &[],
            DetectScope::None,
            false,
            Limits::default(),
        ),
        mkpol(
            &[("$..a", "remove")],
            &[Detector::Phone],
            DetectScope::All,
            false,
            Limits::default(),
        ),
        mkpol(
            &[("$.*", "redact"), ("$[*]", "null")],
            &[],
            DetectScope::None,
            true,
            Limits {
                max_depth: 2,
                max_string_bytes: 1,
            },
        ),
        mkpol(
            &[("$[1]", "remove"), ("$..e", "remove"), ("$.a", "null")],
            &[],
            DetectScope::None,
            false,
            Limits {
                max_depth: 3,
                max_string_bytes: 2,
            },
        ),
    ];
    let (mut n, mut taken, mut fails) = (0u64, 0u64, 0u64);
    let mut mid = Vec::new();
    for len in 0..=maxlen {
        let total = alpha.len().pow(len as u32);
        for code in 0..total {
            mid.clear();
            let mut c = code;
            for _ in 0..len {
                mid.push(alpha[c % alpha.len()]);
                c /= alpha.len();
            }
            for open in [b'{', b'['] {
                for close in [b'}', b']'] {
                    let mut doc = Vec::with_capacity(len + 2);
                    doc.push(open);
                    doc.extend_from_slice(&mid);
                    doc.push(close);
                    for p in &pols {
                        n += 1;
                        let mut probe = JsonMasker::new(Arc::clone(p));
                        let mut out = Vec::new();
                        if !probe.whole(&doc, &mut out) {
                            continue;
                        }
                        taken += 1;
                        let a = (Ok(out), probe.masked_count());
                        let c = bytewise(p, &doc);
                        if a != c {
                            fails += 1;
                            if fails < 20 {
                                eprintln!(
                                    "EXH DIVERGENCE doc={:?} pol={:?}\n lane={}\n bytes={}",
                                    String::from_utf8_lossy(&doc),
                                    p.fields.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
                                    show(&a),
                                    show(&c)
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    eprintln!("exhaustive maxlen={maxlen} runs={n} taken={taken} divergences={fails}");
    assert_eq!(fails, 0);
}

/// Hand-picked documents: separators with whitespace, removed first members, duplicate keys,
/// masked containers, limits just met and just exceeded.
#[test]
fn lane_equals_bytewise_on_spot_documents() {
    let p = mkpol(
        &[
            ("$..x", "remove"),
            ("$..c", "null"),
            ("$..d", "redact"),
            ("$[*].e", "last4"),
        ],
        &[Detector::Email],
        DetectScope::Fields(vec![Selector::parse("$..m").unwrap()]),
        true,
        Limits {
            max_depth: 4,
            max_string_bytes: 10,
        },
    );
    for doc in [
        &b"{ \"X\" : 1 , \"a\" : 2 }"[..],
        b"[ {\"x\":[1,{}]} , {\"E\":12345} ]",
        b"{\"x\":1,\"x\":{\"y\":2}}",
        b"{\"c\":{\"a\":[1]},\"d\":[[{}]],\"m\":[\"a@b.co\",\"zz\"]}",
        b"{\"a\":-0,\"b\":[1e5,0.5]}",
        b"{\"a\":{\"b\":{\"c\":{\"d\":[[1]]}}}}",
        b"{\"a\":{\"b\":{\"x\":{\"d\":{}}}}}",
        b"{\"a\":\"0123456789\"}",
        b"{\"a\":\"01234567890\"}",
    ] {
        let ((got, _), want) = (lane(&p, doc), bytewise(&p, doc));
        assert_eq!(
            show(&got),
            show(&want),
            "{:?}",
            String::from_utf8_lossy(doc)
        );
    }
}

/// Documents built for `plain_run`: minified runs of plain members/elements interrupted by
/// selected (removed/masked), escaped-key, non-ASCII, escaped-value and container members,
/// with separators that are mostly bare commas.
fn run_value(r: &mut Rng, out: &mut Vec<u8>, depth: usize) {
    match r.below(if depth < 4 { 12 } else { 9 }) {
        0..=2 => {
            // plain ASCII string of interesting length
            let len = if r.pct(50) {
                r.pick(&[
                    0usize, 1, 14, 15, 16, 17, 18, 30, 31, 32, 33, 46, 47, 48, 49,
                ])
            } else {
                r.below(60)
            };
            out.push(b'"');
            for _ in 0..len {
                out.push(r.pick(b"abcxyz0189 -_.@AZ~!#/'{}[]:,\x7f"));
            }
            out.push(b'"');
        }
        3 => {
            // string with an odd byte somewhere (escape, non-ASCII, control)
            let len = r.below(40);
            let at = r.below(len + 1);
            out.push(b'"');
            for k in 0..len {
                if k == at {
                    let x: &[u8] = r.pick(
                        &[
                            &b"\\n"[..],
                            "\u{e9}".as_bytes(),
                            b"\\u0041",
                            "\u{20ac}".as_bytes(),
                            b"\\\"",
                            b"\\\\",
                            "😀".as_bytes(),
                            b"\\ud83d\\ude00",
                            b"\x01",
                            b"\xff",
                        ][..if RUN_CLEAN
                            .load(std::sync::atomic::Ordering::Relaxed)
                        {
                            7
                        } else {
                            10
                        }],
                    );
                    out.extend_from_slice(x);
                } else {
                    out.push(b'a' + r.below(26) as u8);
                }
            }
            out.push(b'"');
        }
        4 | 5 => out.extend_from_slice(r.pick(NUMS_OK)),
        6 if RUN_CLEAN.load(std::sync::atomic::Ordering::Relaxed) => {
            out.extend_from_slice(r.pick(NUMS_OK))
        }
        6 => out.extend_from_slice(r.pick(&[
            &b"01"[..],
            b"1.",
            b"-",
            b"1e",
            b"tru",
            b"nul",
            b"truex",
            b"nullx",
            b"1x",
        ])),
        7 | 8 => out.extend_from_slice(r.pick(LITS_OK)),
        _ => run_container(r, out, depth + 1),
    }
}

static RUN_CLEAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
const RUN_KEYS_PLAIN: &[&[u8]] = &[
    b"a",
    b"b",
    b"c",
    b"k",
    b"id",
    b"prone",
    b"plane",
    b"PHONE",
    b"Phone",
    b"easel",
    b"EMAIL",
    b"cord",
    b"CARD",
    b"abcdefghijklmnop",
    b"abcdefghijklmnopq",
    b"abcdefghijklmnoq",
    b"aXcdefghijklmnop",
    b"",
    b"x y",
    b"a\x7f",
    b"n:me",
    b"a,b",
    b"xx",
    b"X",
];
const RUN_KEYS_ODD: &[&[u8]] = &[
    b"ph\\u006fne",
    b"q\\\"",
    b"\\u0061",
    "é".as_bytes(),
    "phoné".as_bytes(),
    b"a\\nb",
    b"\x01",
    b"\xc3",
];

fn run_sep(r: &mut Rng, out: &mut Vec<u8>) {
    if r.pct(75) {
        out.push(b',');
    } else {
        out.extend_from_slice(r.pick(
            &[&b", "[..], b",\n  ", b" ,", b" , ", b",\t", b",,", b""]
                [..if RUN_CLEAN.load(std::sync::atomic::Ordering::Relaxed) {
                    5
                } else {
                    7
                }],
        ));
    }
}

fn run_container(r: &mut Rng, out: &mut Vec<u8>, depth: usize) {
    let obj = r.pct(55);
    out.push(if obj { b'{' } else { b'[' });
    if r.pct(10) {
        out.push(b' ');
    }
    let n = r.below(if depth < 2 { 20 } else { 8 });
    for k in 0..n {
        if k > 0 {
            run_sep(r, out);
        }
        if obj {
            out.push(b'"');
            let key = if r.pct(10) {
                let o = r.pick(RUN_KEYS_ODD);
                if RUN_CLEAN.load(std::sync::atomic::Ordering::Relaxed)
                    && (o == b"\x01" || o == b"\xc3")
                {
                    b"a"
                } else {
                    o
                }
            } else if r.pct(25) {
                r.pick(&[
                    &b"phone"[..],
                    b"x",
                    b"email",
                    b"card",
                    b"a",
                    b"cord",
                    b"abcdefghijklmnop",
                ])
            } else {
                r.pick(RUN_KEYS_PLAIN)
            };
            out.extend_from_slice(key);
            out.push(b'"');
            if r.pct(5) {
                out.extend_from_slice(r.pick(&[&b" :"[..], b": ", b" : "]));
            } else {
                out.push(b':');
            }
        }
        run_value(r, out, depth);
    }
    if r.pct(5) {
        out.extend_from_slice(r.pick(
            &[&b" "[..], b"\n", b","][..if RUN_CLEAN.load(std::sync::atomic::Ordering::Relaxed) {
                2
            } else {
                3
            }],
        ));
    }
    out.push(if obj { b'}' } else { b']' });
}

fn run_policy(r: &mut Rng) -> Arc<Policy> {
    const DSELS: &[&str] = &[
        "$..phone",
        "$..x",
        "$..email",
        "$..card",
        "$..a",
        "$..cord",
        "$..abcdefghijklmnop",
        "$..é",
        "$..k",
        "$..b",
    ];
    let nf = r.below(4);
    let fields = (0..nf)
        .map(|_| {
            let s = if r.pct(85) {
                r.pick(DSELS)
            } else {
                r.pick(SELS)
            };
            (
                Selector::parse(s).unwrap(),
                Strategy::parse(r.pick(STRATS)).unwrap(),
            )
        })
        .collect();
    let mut detectors = Vec::new();
    for d in [Detector::Email, Detector::Phone, Detector::Card] {
        if r.pct(25) {
            detectors.push(d);
        }
    }
    let detect_in = match r.below(4) {
        0 | 1 => DetectScope::None,
        2 => DetectScope::All,
        _ => DetectScope::Fields(vec![Selector::parse(r.pick(DSELS)).unwrap()]),
    };
    let mut limits = Limits::default();
    if r.pct(30) {
        limits.max_string_bytes = r.pick(&[0usize, 1, 5, 14, 15, 16, 17, 18, 31, 32, 33, 48]);
    }
    if r.pct(20) {
        limits.max_depth = 1 + r.below(4);
    }
    let ci = r.pct(50);
    build(fields, detectors, detect_in, ci, limits)
}

#[test]
fn lane_equals_general_path_on_plain_runs() {
    let cases: u64 = knob("DIFF_CASES", 6000);
    let seed: u64 = knob("DIFF_SEED", 1);
    let mut r = Rng(seed ^ 0x5eed);
    let (mut taken_n, mut fails) = (0u64, 0u64);
    for case in 0..cases {
        let mut doc = Vec::new();
        let clean = r.pct(60);
        RUN_CLEAN.store(clean, std::sync::atomic::Ordering::Relaxed);
        if r.pct(10) {
            doc.extend_from_slice(r.pick(&[&b" "[..], b"\n"]));
        }
        run_container(&mut r, &mut doc, 0);
        if r.pct(10) {
            doc.extend_from_slice(r.pick(
                &[&b" "[..], b"\n", b"\r\n", b" x", b"}", b"]"][..if clean { 3 } else { 6 }],
            ));
        }
        if !clean && r.pct(3) {
            let at = r.below(doc.len() + 1);
            doc.truncate(at);
        }
        let p = run_policy(&mut r);
        let ((a, taken), b, c) = (lane(&p, &doc), general_whole(&p, &doc), bytewise(&p, &doc));
        taken_n += u64::from(taken);
        let bad_bytes = match (&a.0, &c.0) {
            (Ok(_), _) | (_, Ok(_)) => a != c,
            (Err(x), Err(y)) => x != y && b.0 == c.0,
        };
        if a != b || bad_bytes {
            fails += 1;
            if fails <= 30 {
                report("RUN DIVERGENCE", case, taken, &doc, &p, [&a, &b, &c]);
            }
        }
    }
    eprintln!("runs cases={cases} seed={seed} lane_taken={taken_n} divergences={fails}");
    assert_eq!(fails, 0);
}
