//! The credential cookie: the one parser that both finds it (phase 3,
//! authenticate) and removes it (phase 6, forward), so the gateway and the
//! backend can never disagree about which cookie is the credential.
//!
//! Backends parse `Cookie` headers leniently, and differently: PHP turns
//! `.`, ` ` and `[` in a name into `_` and percent-decodes names, ASP.NET
//! compares names ignoring case, many parsers trim spaces around the name,
//! and RFC 2965-era parsers also split on `,`. So a cookie *looks like* the
//! credential when its name, folded the way the most lenient of them would
//! (percent-decoded, trimmed, lower-cased, `.`/` `/`[` → `_`), equals the
//! configured name folded the same way — in any `;`-separated pair or any
//! `,`-separated part of one. Exactly one credential-like cookie with
//! exactly the configured name is a credential; two or more are refused
//! (cookie tossing); any look-alike that is not the verified credential is
//! removed before forwarding.
//!
//! Hand-written: cookie crates parse the way *one* server does; this module
//! has to recognise every spelling *any* backend might accept.

use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};

/// What the request's `Cookie` headers hold of the credential cookie.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan<'h> {
    /// `;`-separated pairs that a lenient backend could read as the
    /// credential cookie (the exact one included).
    pub lookalikes: usize,
    /// The value of a pair named exactly like the credential cookie (the
    /// last one, if several; a valid credential needs `lookalikes == 1`).
    pub exact: Option<&'h str>,
}

/// Scans every `Cookie` header for the credential cookie `name`.
pub fn scan<'h>(headers: &'h HeaderMap, name: &str) -> Scan<'h> {
    let mut out = Scan::default();
    for header in headers.get_all(COOKIE) {
        // A non-UTF-8 header is scanned as bytes: an opaque byte in a value
        // must not hide a look-alike name from us.
        let text = String::from_utf8_lossy(header.as_bytes());
        for pair in text.split(';') {
            if looks_like(pair, name) {
                out.lookalikes += 1;
            }
        }
        if let Ok(text) = header.to_str() {
            for pair in text.split(';') {
                let pair = pair.trim_matches(OWS);
                if let Some((k, v)) = pair.split_once('=')
                    && k == name
                {
                    out.exact = Some(v.trim_matches(OWS).trim_matches('"'));
                }
            }
        }
    }
    out
}

/// Removes every credential-like cookie from the `Cookie` headers (joined
/// into one header, the HTTP/1.1 form). Returns how many pairs went.
pub fn strip(headers: &mut HeaderMap, name: &str) -> usize {
    if scan(headers, name).lookalikes == 0 {
        return 0;
    }
    let mut kept: Vec<String> = Vec::new();
    let mut removed = 0;
    for header in headers.get_all(COOKIE) {
        let text = String::from_utf8_lossy(header.as_bytes());
        for pair in text.split(';') {
            if looks_like(pair, name) {
                removed += 1;
            } else {
                let pair = pair.trim_matches(OWS);
                if !pair.is_empty() {
                    kept.push(pair.to_string());
                }
            }
        }
    }
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(COOKIE, v);
    }
    removed
}

/// Whether a `Set-Cookie` value (from an upstream) sets a cookie that looks
/// like the credential cookie.
pub fn sets_lookalike(set_cookie: &[u8], name: &str) -> bool {
    let text = String::from_utf8_lossy(set_cookie);
    let first = text.split(';').next().unwrap_or("");
    let cookie_name = first.split_once('=').map_or(first, |(k, _)| k);
    same_folded(cookie_name, name)
}

const OWS: &[char] = &[' ', '\t'];

/// One `;`-separated pair: does its name, or the name of any `,`-separated
/// part of it, fold to the credential cookie's name?
fn looks_like(pair: &str, name: &str) -> bool {
    pair.split(',').any(|part| {
        let k = part.split_once('=').map_or(part, |(k, _)| k);
        same_folded(k, name)
    })
}

fn same_folded(candidate: &str, name: &str) -> bool {
    let a = fold(candidate);
    !a.is_empty() && a == fold(name)
}

/// The most lenient reading of a cookie name: percent-decoded (repeatedly
/// is not needed: no backend decodes twice), trimmed, ASCII lower-case,
/// cut before a `[` that a `]` follows (PHP reads `rg_session[0]` as an
/// element of an array named `rg_session`), and with `.`, ` `, `+` (a
/// space once decoded, as PHP before 8.1.11 read names) and any other `[`
/// read as `_`.
fn fold(name: &str) -> Vec<u8> {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            i += 2;
            h << 4 | l
        } else if b[i] == b'+' {
            // A space to PHP before 8.1.11, trimmed off a name's ends
            // like one (`+rg_session`).
            b' '
        } else {
            b[i]
        };
        out.push(c);
        i += 1;
    }
    let mut trimmed = out.trim_ascii();
    if let Some(open) = trimmed.iter().position(|&c| c == b'[')
        && trimmed[open..].contains(&b']')
    {
        trimmed = trimmed[..open].trim_ascii_end();
    }
    trimmed
        .iter()
        .map(|&c| match c.to_ascii_lowercase() {
            b'.' | b' ' | b'[' => b'_',
            c => c,
        })
        .collect()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn lookalike_spellings_are_recognised() {
        for v in [
            "rg_session=x",
            "rg_session =x",
            " rg_session=x",
            "rg.session=x",
            "rg%5Fsession=x",
            "rg%5fsession=x",
            "rg session=x",
            "RG_SESSION=x",
            "rg[session=x",
            "a=1, rg_session=x",
            "rg_session",
            "rg_session[0]=x",
            "rg_session[]=x",
            "rg_session[a][b]=x",
            "rg%5Fsession[x]=x",
            "rg+session=x",
            "+rg_session=x",
            "rg_session+=x",
            "RG.Session[]=x",
        ] {
            assert_eq!(scan(&headers(&[v]), "rg_session").lookalikes, 1, "{v}");
        }
        for v in [
            "rg_sessions=x",
            "xrg_session=x",
            "rg-session=x",
            "theme=rg_session",
            "rg_session_[0]=x",
            "[rg_session]=x",
        ] {
            assert_eq!(scan(&headers(&[v]), "rg_session").lookalikes, 0, "{v}");
        }
    }

    #[test]
    fn exact_value_and_count_over_every_header() {
        let h = headers(&["theme=dark; rg_session=\"tok\"", "rg_session =forged"]);
        let s = scan(&h, "rg_session");
        assert_eq!(s.exact, Some("tok"));
        assert_eq!(s.lookalikes, 2);
    }

    #[test]
    fn strip_removes_every_lookalike_and_keeps_the_rest() {
        let mut h = headers(&[
            "theme=dark; rg_session=a; rg.session=b",
            "lang=en; rg%5Fsession=c; x=1, RG_SESSION=d",
        ]);
        assert_eq!(strip(&mut h, "rg_session"), 4);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h[COOKIE], "theme=dark; lang=en");
        let mut h = headers(&["rg_session=a"]);
        strip(&mut h, "rg_session");
        assert!(!h.contains_key(COOKIE));
        let mut h = headers(&["theme=dark"]);
        assert_eq!(strip(&mut h, "rg_session"), 0);
        assert_eq!(h[COOKIE], "theme=dark");
        // PHP's array spelling, which a PHP backend reads under the name.
        let mut h = headers(&["rg_session[0]=forged; rg_session=a; rg+session=b; q[1]=2"]);
        assert_eq!(strip(&mut h, "rg_session"), 3);
        assert_eq!(h[COOKIE], "q[1]=2");
    }

    #[test]
    fn set_cookie_lookalikes() {
        assert!(sets_lookalike(b"rg_session=x; Path=/", "rg_session"));
        assert!(sets_lookalike(b"RG.Session=x", "rg_session"));
        assert!(!sets_lookalike(b"theme=rg_session; Path=/", "rg_session"));
        assert!(sets_lookalike(b"rg_session[a]=x; Path=/", "rg_session"));
        assert!(sets_lookalike(b"rg+session=x", "rg_session"));
    }
}
