//! Request-target canonicalisation: the ONE place where a raw origin-form
//! target (`/a/b?x=1`) becomes the path that is matched, authorised and
//! forwarded.
//!
//! Owns: [`canonicalize`], its options and refusal codes, and
//! [`decode_param`]. Must not: look at hosts, methods or routes; decode
//! anything a second time (callers match and forward the *same* canonical
//! path, so there is nothing for a later layer to re-interpret); inspect or
//! rewrite the query string; resolve dot segments. Anything ambiguous is
//! refused rather than repaired, because a repair that differs from the
//! backend's own normalisation is exactly how auth-proxy bypasses happen.
//!
//! # Rules, applied in this order
//!
//! 1. **Form.** The target must start with `/` (origin form). Anything else —
//!    asterisk form `*`, absolute form `http://x/`, an empty string, a bare
//!    `?q` — is refused with `not_origin_form`. (The caller strips the
//!    `scheme://authority` of absolute-form requests before calling.)
//! 2. **Query.** The target is split at the first `?`. The query is returned
//!    byte-for-byte and never inspected: `None` when there was no `?`,
//!    `Some("")` for a bare trailing `?`, so forwarding can reproduce it.
//! 3. **Fragment.** A `#` anywhere in the path is refused (`fragment`);
//!    clients never send fragments, so one here is an attack or a bug.
//! 4. **Percent-encoding.** `%` must be followed by two hex digits
//!    (`bad_percent`). Escapes of RFC 3986 §2.3 *unreserved* characters
//!    (`A-Z a-z 0-9 - . _ ~`) and of the delimiters a segment holds as data
//!    (`: @ ! $ & ' ( ) * + , =`) are decoded; every other escape stays
//!    encoded, normalised to upper-case hex (`%3f` → `%3F`). The printable
//!    characters a path may not hold raw (`"`, `<`, `>`, `[`, `]`, `^`, the
//!    backtick, `{`, `|`, `}`) are escaped. So every printable character
//!    has one spelling: a literal route segment cannot be dodged by escaping
//!    one of its characters (or by not escaping it), which a backend decodes
//!    back. `+` is not a space in a path and is left alone.
//! 5. **Forbidden bytes**, raw or encoded: `%2F` (`encoded_slash`), `%5C`
//!    (`encoded_backslash`), raw `\` (`backslash`), raw NUL or `%00` (`nul`),
//!    raw C0 controls, space and DEL (`control_char`), raw non-ASCII
//!    (`non_ascii`; impossible for an `http::Uri` but refused rather than
//!    trusted), and a path whose fully decoded bytes are not UTF-8
//!    (`invalid_utf8`). Other encoded controls (`%0A`, `%20`, ...) are legal
//!    data and stay encoded.
//! 6. **Semicolon.** A raw `;` in the path is refused (`semicolon`) unless
//!    [`CanonOptions::allow_semicolon`]: Tomcat/Jetty treat `;…` as path
//!    parameters, so `/admin;x=/` reaches `/admin` on a Java backend while
//!    looking like a different path to us. An *encoded* `%3B` is data, kept
//!    encoded, and allowed.
//! 7. **Dot segments.** After rule 4, a segment equal to `.` or `..` is
//!    refused (`dot_segment`) — never resolved: browsers resolve them before
//!    sending, and a resolver that disagrees with the backend is a bypass.
//!    With `allow_semicolon`, the part of a segment before its first `;` is
//!    tested, so Tomcat's `/..;/` trick is still refused.
//! 8. **Duplicate slashes.** With [`CanonOptions::merge_slashes`] (default)
//!    runs of `/` collapse to one (`//a///b` → `/a/b`); otherwise they are
//!    kept as received.
//! 9. A trailing slash is kept (it is significant for matching) and case is
//!    kept (paths are case-sensitive).
//!
//! When a target breaks several rules the reported code is the first one
//! found: `not_origin_form`, then `fragment`, then whichever offending byte
//! of rules 4–6 comes first in the path, then `invalid_utf8`, then
//! `dot_segment`. Error messages never echo the input (it is attacker
//! controlled and ends up in logs).
//!
//! The output is a fixed point: `canonicalize(c.path) == c.path`.

use std::fmt::Write as _;

/// Knobs for [`canonicalize`]. Both defaults are the safe choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanonOptions {
    /// Collapse runs of `/` into one. Default `true`: most backends do the
    /// same, so matching the merged form avoids `//admin` slipping past an
    /// `/admin` rule.
    pub merge_slashes: bool,
    /// Accept raw `;` in the path. Default `false` (see rule 6).
    pub allow_semicolon: bool,
}

impl Default for CanonOptions {
    fn default() -> Self {
        CanonOptions {
            merge_slashes: true,
            allow_semicolon: false,
        }
    }
}

/// A canonical request target: the path to match and forward, plus the
/// untouched query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    /// Canonical path; always starts with `/`.
    pub path: String,
    /// Everything after the first `?`, byte-for-byte; `None` if no `?`.
    pub query: Option<String>,
    /// With `allow_semicolon`, the path with every segment's `;params`
    /// removed: what Java servlet containers route on, so rolegate routes
    /// and authorizes on it too (while forwarding `path`). `None` when it
    /// equals `path`.
    pub route_path: Option<String>,
}

impl Canonical {
    /// The path to match routes on (see `route_path`).
    #[must_use]
    pub fn routing_path(&self) -> &str {
        self.route_path.as_deref().unwrap_or(&self.path)
    }

    /// The origin-form target to send upstream: `path` plus `?query` when a
    /// query was present (an empty one included).
    #[must_use]
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

/// Why a request target was refused. One variant per rule; see
/// [`PathError::code`] for the stable identifiers used in logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PathError {
    /// Not origin form (`*`, `http://…`, empty, …).
    #[error("request target is not in origin form")]
    NotOriginForm,
    /// `#` in the path.
    #[error("fragment in request path")]
    Fragment,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding in request path")]
    BadPercent,
    /// `%2F`.
    #[error("encoded slash in request path")]
    EncodedSlash,
    /// `%5C`.
    #[error("encoded backslash in request path")]
    EncodedBackslash,
    /// Raw `\`.
    #[error("backslash in request path")]
    Backslash,
    /// Raw NUL or `%00`.
    #[error("NUL byte in request path")]
    Nul,
    /// Raw control character, space or DEL.
    #[error("control character or space in request path")]
    ControlChar,
    /// Raw byte outside ASCII.
    #[error("raw non-ASCII byte in request path")]
    NonAscii,
    /// Percent-decoded path is not UTF-8.
    #[error("request path does not decode to valid UTF-8")]
    InvalidUtf8,
    /// Raw `;` while `allow_semicolon` is off.
    #[error("semicolon in request path")]
    Semicolon,
    /// A `.` or `..` segment (raw or encoded).
    #[error("dot segment in request path")]
    DotSegment,
    /// `%25` followed by the escape of an ASCII character (`%252E`,
    /// `%2561`): harmless to us, but a backend that decodes twice would see
    /// a dot segment, a separator or a letter of a path the gateway never
    /// routed on.
    #[error("double-encoded character in request path")]
    DoubleEncoding,
}

impl PathError {
    /// Stable snake_case identifier, safe to use as a metric label or in an
    /// API error body.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            PathError::NotOriginForm => "not_origin_form",
            PathError::Fragment => "fragment",
            PathError::BadPercent => "bad_percent",
            PathError::EncodedSlash => "encoded_slash",
            PathError::EncodedBackslash => "encoded_backslash",
            PathError::Backslash => "backslash",
            PathError::Nul => "nul",
            PathError::ControlChar => "control_char",
            PathError::NonAscii => "non_ascii",
            PathError::InvalidUtf8 => "invalid_utf8",
            PathError::Semicolon => "semicolon",
            PathError::DotSegment => "dot_segment",
            PathError::DoubleEncoding => "double_encoding",
        }
    }
}

/// Canonicalise an origin-form request target. See the module docs for the
/// rules; the result's `path` is what must be matched *and* forwarded.
///
/// # Errors
///
/// A [`PathError`] naming the first rule the target breaks; the request
/// must then be refused (400), never passed on.
pub fn canonicalize(target: &str, opts: &CanonOptions) -> Result<Canonical, PathError> {
    if !target.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let (raw, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    // Checked before the byte scan so a fragment is always reported as such.
    // (Byte searches here and below: paths are short, and a `str` pattern
    // search costs more to set up than the scan.)
    if raw.as_bytes().contains(&b'#') {
        return Err(PathError::Fragment);
    }

    // Most paths are written the way the scan writes them: copied whole.
    let (path, saw_high_escape, saw_escaped_percent) = if unchanged(raw.as_bytes(), opts) {
        (raw.to_owned(), false, false)
    } else {
        rewrite(raw.as_bytes(), opts)?
    };

    if saw_high_escape && std::str::from_utf8(&percent_decode(path.as_bytes())).is_err() {
        return Err(PathError::InvalidUtf8);
    }

    for seg in path.as_bytes().split(|&b| b == b'/') {
        // With path parameters allowed, Tomcat sees `..;x` as `..`.
        let seg = if opts.allow_semicolon {
            seg.split(|&b| b == b';').next().unwrap_or(seg)
        } else {
            seg
        };
        if seg == b"." || seg == b".." {
            return Err(PathError::DotSegment);
        }
    }

    // `%25` is kept encoded, but the two characters after it are literal
    // and may be either case: `%25` then the escape of an ASCII character
    // (`%2561`, `%252F`, `%2525`) is one.
    if saw_escaped_percent {
        debug_assert!(path.contains("%25"));
        let b = path.as_bytes();
        let double = b.windows(5).any(|w| {
            w.starts_with(b"%25") && hex_val(w[3]).is_some_and(|h| h < 8) && hex_val(w[4]).is_some()
        });
        if double {
            return Err(PathError::DoubleEncoding);
        }
    }

    let route_path = (opts.allow_semicolon && path.contains(';')).then(|| {
        let mut routed = String::with_capacity(path.len());
        for (i, seg) in path.split('/').enumerate() {
            if i > 0 {
                routed.push('/');
            }
            routed.push_str(seg.split(';').next().unwrap_or(seg));
        }
        if opts.merge_slashes {
            // A segment of parameters only (`/;x/admin`) leaves `//` once
            // they are cut, which a servlet container merges: merged here
            // too, or the backend's `/admin` would be routed as `//admin`.
            let mut merged = String::with_capacity(routed.len());
            for c in routed.chars() {
                if !(c == '/' && merged.ends_with('/')) {
                    merged.push(c);
                }
            }
            routed = merged;
        }
        routed
    });
    Ok(Canonical {
        path,
        query,
        route_path,
    })
}

/// The bytes [`rewrite`] copies as they are (`/` aside, which it merges):
/// unreserved characters and the segment delimiters.
const KEPT: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c == b'/' || is_unreserved(c) || is_segment_delim(c);
        b += 1;
    }
    t
};

/// Whether [`rewrite`] would give `raw` back as it is: every byte one it
/// copies, and no run of slashes it would merge.
fn unchanged(raw: &[u8], opts: &CanonOptions) -> bool {
    raw.iter().all(|&b| KEPT[usize::from(b)])
        && !(opts.merge_slashes && raw.windows(2).any(|w| w == b"//"))
}

/// The path part of a target, each byte written in its one spelling:
/// escapes of unreserved characters and segment delimiters decoded, other
/// escapes upper-cased, characters a path may not hold raw escaped, runs
/// of `/` merged (`merge_slashes`); refused on an encoded separator, a NUL,
/// a control or non-ASCII byte, a bad escape, a `;` (unless allowed).
/// With it, whether an escape of a byte >= 0x80 and whether a `%25` was
/// written.
fn rewrite(bytes: &[u8], opts: &CanonOptions) -> Result<(String, bool, bool), PathError> {
    let mut path = String::with_capacity(bytes.len());
    // Only escapes >= 0x80 can make the decoded path non-UTF-8, so the
    // (allocating) validation is skipped for the common all-ASCII case.
    let mut saw_high_escape = false;
    // A `%25` (an escaped `%`) is in the output.
    let mut saw_escaped_percent = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let v = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => match (hex_val(h), hex_val(l)) {
                        (Some(h), Some(l)) => (h << 4) | l,
                        _ => return Err(PathError::BadPercent),
                    },
                    _ => return Err(PathError::BadPercent),
                };
                match v {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    0 => return Err(PathError::Nul),
                    v if is_unreserved(v) || is_segment_delim(v) => path.push(char::from(v)),
                    v => {
                        saw_high_escape |= v >= 0x80;
                        saw_escaped_percent |= v == b'%';
                        // Writing to a String cannot fail.
                        let _ = write!(path, "%{v:02X}");
                    }
                }
                i += 3;
                continue;
            }
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            0x01..=0x20 | 0x7F => return Err(PathError::ControlChar),
            0x80.. => return Err(PathError::NonAscii),
            b';' if !opts.allow_semicolon => return Err(PathError::Semicolon),
            b if must_escape(b) => {
                // Writing to a String cannot fail.
                let _ = write!(path, "%{b:02X}");
            }
            // Only raw `/` ever reaches the output as `/` (an encoded one is
            // refused above), so "ends with `/`" means "inside a run".
            b'/' if opts.merge_slashes && path.ends_with('/') => {}
            _ => path.push(char::from(b)),
        }
        i += 1;
    }
    Ok((path, saw_high_escape, saw_escaped_percent))
}

/// Fully percent-decode a path parameter taken from a canonical path.
///
/// Lossless for canonical input (which is valid UTF-8 once decoded). For
/// other input it never fails: a `%` not followed by two hex digits is kept
/// literally and invalid UTF-8 becomes U+FFFD. `+` is not decoded (this is a
/// path, not a form body).
#[must_use]
pub fn decode_param(raw: &str) -> String {
    if !raw.contains('%') {
        return raw.to_owned();
    }
    match String::from_utf8(percent_decode(raw.as_bytes())) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex_val),
                bytes.get(i + 2).copied().and_then(hex_val),
            )
        {
            out.push((h << 4) | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3.
const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The delimiters a path segment holds as data (RFC 3986 §3.3 `pchar`:
/// the sub-delims and `:` `@`), `;` excepted (rule 6): written raw, their
/// escapes decoded, so that `/jobs%3Apurge` is routed as the `/jobs:purge`
/// a backend decodes it to.
const fn is_segment_delim(b: u8) -> bool {
    matches!(
        b,
        b':' | b'@' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'='
    )
}

/// Printable ASCII a path may not hold raw (RFC 3986 §3.3) that parsers
/// let through anyway: always written escaped, so `/a|b` is routed as the
/// `/a%7Cb` a backend decodes the same way.
fn must_escape(b: u8) -> bool {
    matches!(
        b,
        b'"' | b'<' | b'>' | b'[' | b']' | b'^' | b'`' | b'{' | b'|' | b'}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(t: &str) -> Result<Canonical, PathError> {
        canonicalize(t, &CanonOptions::default())
    }

    #[test]
    fn refusals_carry_the_right_code() {
        let cases: &[(&str, &str)] = &[
            ("*", "not_origin_form"),
            ("http://x/", "not_origin_form"),
            ("", "not_origin_form"),
            ("?x=1", "not_origin_form"),
            ("a/b", "not_origin_form"),
            ("/a#x", "fragment"),
            ("/a%2", "bad_percent"),
            ("/a%zz", "bad_percent"),
            ("/a%", "bad_percent"),
            ("/a/%2F/b", "encoded_slash"),
            ("/a/%2f/b", "encoded_slash"),
            ("/a%5cb", "encoded_backslash"),
            ("/a%5Cb", "encoded_backslash"),
            ("/a\\b", "backslash"),
            ("/a%00", "nul"),
            ("/a\0", "nul"),
            ("/a b", "control_char"),
            ("/a\tb", "control_char"),
            ("/a\x7f", "control_char"),
            ("/a\r\nX: y", "control_char"),
            ("/caf\u{e9}", "non_ascii"),
            ("/%ff", "invalid_utf8"),
            ("/%C3", "invalid_utf8"),
            ("/%C0%AE", "invalid_utf8"),
            ("/admin;x=1/", "semicolon"),
            ("/admin;", "semicolon"),
            ("/%2e%2e/admin", "dot_segment"),
            ("/a/%2e%2e/b", "dot_segment"),
            ("/a/./b", "dot_segment"),
            ("/a/..", "dot_segment"),
            ("/a/.", "dot_segment"),
            ("/a/.%2E/b", "dot_segment"),
            ("/a/%2E/b", "dot_segment"),
            ("/a//../b", "dot_segment"),
        ];
        for (input, code) in cases {
            match canon(input) {
                Err(e) => assert_eq!(e.code(), *code, "input {input:?} gave {e:?}"),
                Ok(c) => panic!("input {input:?} accepted as {c:?}, expected {code}"),
            }
        }
    }

    #[test]
    fn accepted_targets_canonicalise() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("/", "/", None),
            ("/a/%41", "/a/A", None),
            ("/a/%7e", "/a/~", None),
            ("/a/%7E%2d%2E%5f", "/a/~-._", None),
            ("/a/%3f", "/a/%3F", None),
            ("/a/%c3%b6", "/a/%C3%B6", None),
            ("/a/%3b", "/a/%3B", None),
            ("/v1/jobs%3apurge", "/v1/jobs:purge", None),
            (
                "/u/%40me/%21%24%26%27%28%29%2A%2B%2C%3D",
                "/u/@me/!$&'()*+,=",
                None,
            ),
            (
                "/a|b/{c}/\"q\"/[d]/^`<>",
                "/a%7Cb/%7Bc%7D/%22q%22/%5Bd%5D/%5E%60%3C%3E",
                None,
            ),
            ("/a/%7c", "/a/%7C", None),
            ("/a/%20b", "/a/%20b", None),
            ("//a///b", "/a/b", None),
            ("/a//b/", "/a/b/", None),
            ("/a/b/", "/a/b/", None),
            ("/A/b", "/A/b", None),
            ("/a+b", "/a+b", None),
            ("/a/...", "/a/...", None),
            ("/a/.b/..c", "/a/.b/..c", None),
            ("/a?x=%2F..&y", "/a", Some("x=%2F..&y")),
            ("/a?", "/a", Some("")),
            ("/a?b?c#d", "/a", Some("b?c#d")),
            ("/a/?q=/../", "/a/", Some("q=/../")),
        ];
        for (input, path, query) in cases {
            let c = canon(input).unwrap_or_else(|e| panic!("{input:?} refused: {e:?}"));
            assert_eq!(c.path, *path, "input {input:?}");
            assert_eq!(c.query.as_deref(), *query, "input {input:?}");
        }
    }

    #[test]
    fn options_change_behaviour() {
        let keep = CanonOptions {
            merge_slashes: false,
            ..CanonOptions::default()
        };
        assert_eq!(canonicalize("//a///b/", &keep).unwrap().path, "//a///b/");

        let semi = CanonOptions {
            allow_semicolon: true,
            ..CanonOptions::default()
        };
        assert_eq!(canonicalize("/a;v=1/b", &semi).unwrap().path, "/a;v=1/b");
        for attack in ["/a/..;/admin", "/a/.;x/b", "/a/%2e%2e;/admin"] {
            assert_eq!(
                canonicalize(attack, &semi),
                Err(PathError::DotSegment),
                "{attack}"
            );
        }
    }

    #[test]
    fn target_reassembles_path_and_query() {
        assert_eq!(canon("/a//b?x=%2f").unwrap().target(), "/a/b?x=%2f");
        assert_eq!(canon("/a?").unwrap().target(), "/a?");
        assert_eq!(canon("/a").unwrap().target(), "/a");
    }

    #[test]
    fn decode_param_is_full_and_total() {
        let cases = [
            ("j%C3%B6rg", "jörg"),
            ("a%20b", "a b"),
            ("a%3Fb", "a?b"),
            ("a%252F", "a%2F"),
            ("a+b", "a+b"),
            ("plain", "plain"),
            ("100%", "100%"),
            ("%zz", "%zz"),
            ("%ff", "\u{fffd}"),
        ];
        for (raw, want) in cases {
            assert_eq!(decode_param(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn codes_are_unique() {
        let all = [
            PathError::NotOriginForm,
            PathError::Fragment,
            PathError::BadPercent,
            PathError::EncodedSlash,
            PathError::EncodedBackslash,
            PathError::Backslash,
            PathError::Nul,
            PathError::ControlChar,
            PathError::NonAscii,
            PathError::InvalidUtf8,
            PathError::Semicolon,
            PathError::DotSegment,
            PathError::DoubleEncoding,
        ];
        let mut codes: Vec<_> = all.iter().map(PathError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }

    /// ASCII strings biased towards the characters that matter here, so the
    /// interesting escapes and dot/slash runs actually get generated.
    fn nasty_ascii() -> impl Strategy<Value = String> {
        let interesting = prop::sample::select(vec![
            "/", "/", "/", ".", ".", "%", "%2", "%2e", "%2E", "%2f", "%2F", "%5c", "%00", "%41",
            "%7e", "%3f", "%c3%b6", "%ff", ";", "?", "#", "\\", " ", "a", "B", "~", "-", "%3a",
            "%40", "%2b", "%7C", "|", ":", "{",
        ]);
        let any_char = (0u8..0x80).prop_map(|b| char::from(b).to_string());
        let piece = prop_oneof![3 => interesting.prop_map(str::to_owned), 1 => any_char];
        prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn canonical_is_idempotent_and_clean(tail in nasty_ascii(), merge in any::<bool>()) {
            let opts = CanonOptions { merge_slashes: merge, ..CanonOptions::default() };
            let input = format!("/{tail}");
            if let Ok(c) = canonicalize(&input, &opts) {
                let again = canonicalize(&c.path, &opts);
                prop_assert_eq!(again.map(|a| a.path), Ok(c.path.clone()));
                let upper = c.path.to_ascii_uppercase();
                for bad in ["%2F", "%5C", "%00"] {
                    prop_assert!(!upper.contains(bad), "{} in {:?}", bad, c.path);
                }
                for bad in ["/./", "/../", "#", "?", "\\"] {
                    prop_assert!(!c.path.contains(bad), "{} in {:?}", bad, c.path);
                }
                prop_assert!(!c.path.ends_with("/.") && !c.path.ends_with("/.."));
                // One spelling per character: nothing escaped that is
                // written raw, nothing raw that is written escaped.
                let b = c.path.as_bytes();
                for (i, &ch) in b.iter().enumerate() {
                    prop_assert!(!must_escape(ch), "raw {:?} in {:?}", ch as char, c.path);
                    if ch == b'%' {
                        let v = u8::from_str_radix(&c.path[i + 1..i + 3], 16).unwrap();
                        prop_assert!(
                            !is_unreserved(v) && !is_segment_delim(v),
                            "escaped {:?} in {:?}", v as char, c.path
                        );
                    }
                }
                if merge {
                    prop_assert!(!c.path.contains("//"), "// in {:?}", c.path);
                }
            }
        }

        /// A path taken whole is what the byte-by-byte rewrite gives.
        #[test]
        fn paths_taken_whole_are_what_the_rewrite_gives(
            tail in nasty_ascii(),
            merge in any::<bool>(),
            semi in any::<bool>(),
        ) {
            let opts = CanonOptions { merge_slashes: merge, allow_semicolon: semi };
            let raw = format!("/{tail}");
            let raw = raw.split(['?', '#']).next().unwrap_or("/");
            if unchanged(raw.as_bytes(), &opts) {
                prop_assert_eq!(rewrite(raw.as_bytes(), &opts), Ok((raw.to_string(), false, false)));
            }
        }

        #[test]
        fn arbitrary_ascii_never_panics(s in "[\\x00-\\x7f]{0,32}") {
            if let Ok(c) = canon(&s) {
                prop_assert!(c.path.starts_with('/'));
                prop_assert_eq!(canon(&c.path).map(|a| a.path), Ok(c.path.clone()));
            }
        }
    }

    #[test]
    fn double_encoded_separators_and_dots_are_refused() {
        let o = CanonOptions::default();
        for t in [
            "/x/%252e%252e/admin",
            "/x/%252F",
            "/a%255cb",
            "/a%2500",
            "/a/%252E",
            // Any ASCII character: a letter of a literal route segment,
            // a `;` or `?` a twice-decoding backend splits on, `%` itself.
            "/%2561dmin",
            "/api/%2541DMIN",
            "/a%253Bx=1",
            "/a%253f",
            "/a%2525",
            "/a%257e",
        ] {
            assert_eq!(canonicalize(t, &o), Err(PathError::DoubleEncoding), "{t}");
        }
        // A literal percent sign elsewhere is fine, as is one before text
        // that is no ASCII escape.
        for t in ["/a/100%25", "/a/100%25x", "/a/%25g1", "/a/%25C3%25A9"] {
            assert_eq!(canonicalize(t, &o).unwrap().path, t);
        }
    }

    #[test]
    fn semicolon_params_are_removed_for_routing_only() {
        let o = CanonOptions {
            allow_semicolon: true,
            ..CanonOptions::default()
        };
        let c = canonicalize("/p/acme/users/export.csv;x=1/y;jsessionid=2", &o).unwrap();
        assert_eq!(c.path, "/p/acme/users/export.csv;x=1/y;jsessionid=2");
        assert_eq!(c.routing_path(), "/p/acme/users/export.csv/y");
        let c = canonicalize("/plain", &o).unwrap();
        assert_eq!((c.routing_path(), c.route_path.is_none()), ("/plain", true));
        // A segment of parameters only: routed as the servlet container
        // reads it (the `//` it leaves merged), forwarded as sent.
        for (t, routed) in [
            ("/;x/admin/users", "/admin/users"),
            ("/api/;x/admin", "/api/admin"),
            ("/a/;x;y/;z/b", "/a/b"),
            ("/a/;x", "/a/"),
            ("/;x", "/"),
        ] {
            let c = canonicalize(t, &o).unwrap();
            assert_eq!((c.path.as_str(), c.routing_path()), (t, routed), "{t}");
        }
        // Slashes not merged: neither are these.
        let o = CanonOptions {
            merge_slashes: false,
            ..o
        };
        assert_eq!(
            canonicalize("/;x/admin", &o).unwrap().routing_path(),
            "//admin"
        );
    }
}
