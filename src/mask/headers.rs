//! Response headers of a masked answer: PII the mask's detectors find in
//! header values (an e-mail address in `Content-Disposition`'s file name or
//! a `Location` query, a card number in a custom header) is masked as in
//! free text ([`super::strategy::scrub`]).
//!
//! Owns which headers are looked at and what happens to a value that is
//! not text. Must not: touch the headers that describe the body, its
//! framing or caching, or the security policy (a listed set, see
//! [`KEPT`]), nor mask anything the mask's detectors would not.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::policy::Detector;
use super::strategy::scrub;

/// Headers passed as they are: they describe the body or its transfer,
/// caching, the connection or a security policy, and are made of tokens,
/// numbers and dates (a digit run there is no phone number, and changing
/// one would break the answer). Every other header is scrubbed.
const KEPT: [&str; 32] = [
    "accept-ranges",
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
    "access-control-expose-headers",
    "access-control-max-age",
    "age",
    "allow",
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
    "permissions-policy",
    "pragma",
    "referrer-policy",
    "retry-after",
    "strict-transport-security",
    "transfer-encoding",
    "vary",
    "x-content-type-options",
    "x-frame-options",
];

/// Masks what `detectors` find in `headers`' values, except [`KEPT`]
/// ones and `own` (the gateway's own fields, such as `X-Request-Id`). A
/// value that is not text (obs-text bytes) cannot be scrubbed and is
/// removed. A value of digits only (a count, a time stamp) is looked at
/// by the card detector alone: no phone number is read into it. Returns
/// how many values changed or went.
pub fn scrub_headers(detectors: &[Detector], headers: &mut HeaderMap, own: &[HeaderName]) -> u64 {
    if detectors.is_empty() {
        return 0;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| !KEPT.contains(&n.as_str()) && !own.contains(n))
        .cloned()
        .collect();
    let cards_only: &[Detector] = if detectors.contains(&Detector::Card) {
        &[Detector::Card]
    } else {
        &[]
    };
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
            let digits = text.bytes().all(|b| b.is_ascii_digit());
            match scrub(if digits { cards_only } else { detectors }, text) {
                Cow::Borrowed(_) => out.push(v),
                Cow::Owned(masked) => {
                    differs = true;
                    changed += 1;
                    // Masking only replaces characters with ASCII ones, so
                    // the result is a valid value; if not, it goes.
                    if let Ok(m) = HeaderValue::from_str(&masked) {
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
    fn pii_in_headers_is_masked_and_structural_headers_are_kept() {
        let all = [Detector::Email, Detector::Phone, Detector::Card];
        let mut h = map(&[
            (
                "content-disposition",
                b"attachment; filename=\"jane.doe@example.com.csv\"",
            ),
            (
                "location",
                b"/customers?phone=+44%2020&email=jane@example.com",
            ),
            ("x-card", b"4111 1111 1111 1111"),
            ("x-card", b"nothing here"),
            ("x-count", b"4111111111111111"),
            ("x-reset", b"1733600000"),
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
        assert!(!loc.contains("jane@example.com"), "{loc}");
        let cards: Vec<&str> = h
            .get_all("x-card")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cards.len(), 2);
        assert!(!cards[0].contains("4111 1111 1111 1111"), "{cards:?}");
        assert_eq!(cards[1], "nothing here");
        // Digits only: a card number is masked, a time stamp is no phone
        // number; kept headers and the gateway's own pass; a value that is
        // not text goes.
        assert_ne!(h["x-count"], "4111111111111111");
        assert_eq!(h["x-reset"], "1733600000");
        assert_eq!(h["strict-transport-security"], "max-age=31536000");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-request-id"], "jane@example.com");
        assert!(!h.contains_key("x-bytes"));
        // Without detectors, nothing is looked at.
        let mut h = map(&[("location", b"/x?e=jane@example.com")]);
        assert_eq!(scrub_headers(&[], &mut h, &own), 0);
        assert_eq!(h["location"], "/x?e=jane@example.com");
    }
}
