//! Response headers of a masked answer: e-mail addresses in header values
//! (a file name in `Content-Disposition`, a `Location` query, a custom
//! header, a cookie's value) are masked as the `email` detector masks them
//! in free text ([`super::strategy::scrub`]).
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
use super::strategy::scrub;

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
                (scrub(&email, pair), attributes)
            } else {
                (scrub(&email, text), "")
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let owners: Vec<&str> = h
            .get_all("x-owner")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(owners.len(), 2);
        assert!(!owners[0].contains("jane@example.com"), "{owners:?}");
        assert_eq!(owners[1], "nobody");
        // Only addresses: numbers in headers are left to the body rules.
        assert_eq!(h["x-card"], "4111 1111 1111 1111");
        let cookies: Vec<&str> = h
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
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
        // Without the `email` detector, nothing is looked at.
        let mut h = map(&[("location", b"/x?e=jane@example.com")]);
        assert_eq!(scrub_headers(&[Detector::Phone], &mut h, &own), 0);
        assert_eq!(h["location"], "/x?e=jane@example.com");
    }
}
