//! Response headers of a masked answer: e-mail addresses in header values
//! (a file name in `Content-Disposition`, a `Location` query, a custom
//! header, a cookie's value) are masked as the `email` detector masks them
//! in free text ([`super::strategy::scrub`]).
//!
//! An address written with percent-escapes (`jane%40example.com` in a
//! `Location` query, RFC 5987's `filename*=UTF-8''jane%40example.com`) is
//! found in the value with its ASCII escapes decoded and masked where it
//! stands; the rest of the value keeps its escapes.
//!
//! Only the `email` detector runs on headers: an address is unmistakable,
//! while header values are full of ids and numbers (order ids in redirect
//! paths, snowflake ids, UUIDs, `Max-Age`, time stamps) that the `phone`
//! and `card` detectors would take for PII and rewrite, breaking
//! redirects, pagination and cookies.
//!
//! Owns which headers are looked at and what happens to a value that is
//! not text. Must not: touch the headers that describe the body, its
//! framing or caching, or a security policy ([`KEPT`]), a cookie's
//! attributes, or mask anything the mask's `email` detector would not.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::policy::Detector;
use super::strategy::{REDACTED, email_matches, scrub};

/// Headers not scrubbed: they describe the body or its transfer, caching,
/// the connection or a security policy, made of tokens, numbers and dates.
/// (The gateway may still set or remove some of them on a masked answer.)
const KEPT: [&str; 40] = [
    "accept-ranges",
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
    "access-control-expose-headers",
    "access-control-max-age",
    "age",
    "allow",
    "alt-svc",
    "cache-control",
    "connection",
    "content-encoding",
    "content-language",
    "content-length",
    "content-security-policy",
    "content-security-policy-report-only",
    "content-type",
    "cross-origin-embedder-policy",
    "cross-origin-opener-policy",
    "cross-origin-resource-policy",
    "date",
    "expires",
    "last-modified",
    "nel",
    "origin-agent-cluster",
    "permissions-policy",
    "pragma",
    "referrer-policy",
    "report-to",
    "retry-after",
    "server-timing",
    "strict-transport-security",
    "timing-allow-origin",
    "transfer-encoding",
    "vary",
    "www-authenticate",
    "x-content-type-options",
    "x-frame-options",
    "x-xss-protection",
];

/// Masks the e-mail addresses in `headers`' values when `detectors` has
/// `email`, except in [`KEPT`] headers and `own` (the gateway's own
/// fields, such as `X-Request-Id`); in `Set-Cookie`, only the cookie's
/// `name=value` (its attributes stay). A value that is not text (obs-text
/// bytes) cannot be scrubbed and is removed. Returns how many values
/// changed or went.
pub fn scrub_headers(detectors: &[Detector], headers: &mut HeaderMap, own: &[HeaderName]) -> u64 {
    if !detectors.contains(&Detector::Email) {
        return 0;
    }
    let email = [Detector::Email];
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| !KEPT.contains(&n.as_str()) && !own.contains(n))
        .cloned()
        .collect();
    let mut changed = 0;
    for name in names {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        let mut out = Vec::with_capacity(values.len());
        let mut differs = false;
        for v in values {
            let Ok(text) = v.to_str() else {
                differs = true;
                changed += 1;
                continue;
            };
            let (scrubbed, attributes) = if name == header::SET_COOKIE {
                let (pair, attributes) = text.split_at(text.find(';').unwrap_or(text.len()));
                (scrub_text(&email, pair), attributes)
            } else {
                (scrub_text(&email, text), "")
            };
            match scrubbed {
                Cow::Borrowed(_) => out.push(v),
                Cow::Owned(masked) => {
                    differs = true;
                    changed += 1;
                    // Masking only replaces characters with ASCII ones, so
                    // the result is a valid value; if not, it goes.
                    if let Ok(m) = HeaderValue::from_str(&format!("{masked}{attributes}")) {
                        out.push(m);
                    }
                }
            }
        }
        if differs {
            headers.remove(&name);
            for v in out {
                headers.append(name.clone(), v);
            }
        }
    }
    changed
}

/// [`scrub`] with the `email` detector, then the same over the value's
/// ASCII percent-escapes decoded ([`scrub_escaped`]): a value may spell
/// one address plainly and another escaped.
fn scrub_text<'a>(email: &[Detector], text: &'a str) -> Cow<'a, str> {
    let plain = scrub(email, text);
    match scrub_escaped(&plain) {
        Some(masked) => Cow::Owned(masked),
        None => plain,
    }
}

/// The addresses `text` spells with percent-escapes, masked where they
/// stand: the escapes of printable ASCII characters (`%40` is `@`) are
/// decoded, remembering the bytes each decoded character came from; each
/// address found is replaced, over the bytes it came from, by its mask,
/// escaped in turn (all but unreserved characters: `j%2A%2A%2A%40…`), so
/// the value stays what it was (a URL, an RFC 5987 `ext-value`). `None`
/// when there is none (or no escape at all).
fn scrub_escaped(text: &str) -> Option<String> {
    // An address has an `@`, plain or escaped; a header value's text is
    // ASCII (the byte map below relies on it).
    let at_sign = text.contains('@') || text.contains("%40");
    if !text.contains('%') || !at_sign || !text.is_ascii() {
        return None;
    }
    let raw = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let (mut decoded, mut from) = (
        String::with_capacity(raw.len()),
        Vec::with_capacity(raw.len()),
    );
    let mut i = 0;
    while i < raw.len() {
        let digit = |at: usize| raw.get(at).and_then(|&b| hex(b));
        let escaped = match (raw[i], digit(i + 1), digit(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                Some((high * 16 + low) as u8).filter(|c| (0x20..0x7f).contains(c))
            }
            _ => None,
        };
        match escaped {
            Some(c) => {
                decoded.push(char::from(c));
                from.push(i..i + 3);
                i += 3;
            }
            None => {
                // A header value's text is visible ASCII (`to_str`).
                decoded.push(char::from(raw[i]));
                from.push(i..i + 1);
                i += 1;
            }
        }
    }
    let Some(found) = email_matches(&decoded) else {
        // The detector could not be built: fail closed.
        return Some(REDACTED.to_owned());
    };
    if found.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (range, masked) in found {
        let (start, end) = (from[range.start].start, from[range.end - 1].end);
        out.push_str(&text[at..start]);
        for b in masked.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        at = end;
    }
    out.push_str(&text[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of `name`, as text.
    fn values<'h>(h: &'h HeaderMap, name: &str) -> Vec<&'h str> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    fn map(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn addresses_in_headers_are_masked_and_ids_numbers_and_attributes_are_kept() {
        let all = [Detector::Email, Detector::Phone, Detector::Card];
        let mut h = map(&[
            (
                "content-disposition",
                b"attachment; filename=\"jane.doe@example.com.csv\"",
            ),
            ("location", b"/orders/12345678?email=jane@example.com"),
            ("link", b"</items?after=1234567890123456789>; rel=next"),
            ("x-owner", b"jane@example.com"),
            ("x-owner", b"nobody"),
            ("x-card", b"4111 1111 1111 1111"),
            (
                "set-cookie",
                b"who=jane@example.com; Max-Age=2592000; Path=/; HttpOnly",
            ),
            ("set-cookie", b"sid=a716446655440000; Max-Age=2592000"),
            ("strict-transport-security", b"max-age=31536000"),
            ("content-type", b"application/json"),
            ("x-request-id", b"jane@example.com"),
            ("x-bytes", b"caf\xe9"),
        ]);
        let own = [HeaderName::from_static("x-request-id")];
        let n = scrub_headers(&all, &mut h, &own);
        assert_eq!(n, 5);
        let cd = h["content-disposition"].to_str().unwrap();
        assert!(!cd.contains("jane.doe@example.com"), "{cd}");
        let loc = h["location"].to_str().unwrap();
        assert!(loc.starts_with("/orders/12345678?email="), "{loc}");
        assert!(!loc.contains("jane@example.com"), "{loc}");
        assert_eq!(h["link"], "</items?after=1234567890123456789>; rel=next");
        let owners = values(&h, "x-owner");
        assert_eq!(owners.len(), 2);
        assert!(!owners[0].contains("jane@example.com"), "{owners:?}");
        assert_eq!(owners[1], "nobody");
        // Only addresses: numbers in headers are left to the body rules.
        assert_eq!(h["x-card"], "4111 1111 1111 1111");
        let cookies = values(&h, "set-cookie");
        assert!(!cookies[0].contains("jane@example.com"), "{cookies:?}");
        assert!(
            cookies[0].ends_with("; Max-Age=2592000; Path=/; HttpOnly"),
            "{cookies:?}"
        );
        assert_eq!(cookies[1], "sid=a716446655440000; Max-Age=2592000");
        assert_eq!(h["strict-transport-security"], "max-age=31536000");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-request-id"], "jane@example.com");
        assert!(!h.contains_key("x-bytes"), "a value that is not text goes");
        // Addresses written with percent-escapes are masked where they
        // stand; the value's other escapes stay.
        let mut h = map(&[
            (
                "location",
                b"/cb?user=jane.doe%40example.com&next=%2Fhome%3Fa%3D1",
            ),
            (
                "content-disposition",
                b"attachment; filename*=UTF-8''jane%40example%2Ecom.csv",
            ),
            ("x-trace", b"jane%2540example.com"),
            ("x-path", b"/files/%7Ebob/report%20final.pdf"),
            ("x-both", b"jane@example.com, bob%40example.com"),
            ("x-lower", b"j%61ne%40example%2ecom"),
        ]);
        assert_eq!(scrub_headers(&all, &mut h, &own), 4);
        assert_eq!(h["x-lower"], "j%2A%2A%2A%40example.com");
        assert_eq!(h["x-both"], "j***@example.com, b%2A%2A%2A%40example.com");
        assert_eq!(
            h["location"],
            "/cb?user=j%2A%2A%2A%40example.com&next=%2Fhome%3Fa%3D1"
        );
        assert_eq!(
            h["content-disposition"],
            "attachment; filename*=UTF-8''j%2A%2A%2A%40example.com.csv"
        );
        // Escapes are decoded once, as a URL parser does: `%2540` is `%40`.
        assert_eq!(h["x-trace"], "jane%2540example.com");
        assert_eq!(h["x-path"], "/files/%7Ebob/report%20final.pdf");
        // Without the `email` detector, nothing is looked at.
        let mut h = map(&[("location", b"/x?e=jane@example.com")]);
        assert_eq!(scrub_headers(&[Detector::Phone], &mut h, &own), 0);
        assert_eq!(h["location"], "/x?e=jane@example.com");
    }
}
