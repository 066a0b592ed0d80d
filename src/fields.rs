//! Looking a field up in a request's or an answer's header map.
//!
//! Most maps the gateway reads on a request hold a handful of fields
//! (`Host`, `Authorization`, `Accept`, …), and each request asks them for
//! about ten names. Comparing a few names costs less than hashing one, so
//! small maps are looked through in order; larger ones are looked up as
//! usual. The answers are exactly `HeaderMap::get` and `get_all`'s (same
//! values, same order; proptested). Names are made the same way: the
//! common ones by a comparison, the rest by `HeaderName::from_bytes`.
//!
//! Owns: the lookups. Must not: change a map, or decide anything.

use http::HeaderMap;
use http::header::{GetAll, HeaderName, HeaderValue, InvalidHeaderName, Iter};

/// Maps with at most this many fields are looked through.
const SCAN_MAX: usize = 8;

/// The first value of `name`: `map.get(name)`.
pub fn first<'m>(map: &'m HeaderMap, name: &HeaderName) -> Option<&'m HeaderValue> {
    if map.len() <= SCAN_MAX {
        map.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    } else {
        map.get(name)
    }
}

/// Every value of `name`, in order: `map.get_all(name).iter()`.
pub fn all<'m, 'n>(map: &'m HeaderMap, name: &'n HeaderName) -> All<'m, 'n> {
    if map.len() <= SCAN_MAX {
        All::Scan(map.iter(), name)
    } else {
        All::Hashed(map.get_all(name).into_iter())
    }
}

/// The values [`all`] finds.
pub enum All<'m, 'n> {
    Scan(Iter<'m, HeaderValue>, &'n HeaderName),
    Hashed(<GetAll<'m, HeaderValue> as IntoIterator>::IntoIter),
}

impl<'m> Iterator for All<'m, '_> {
    type Item = &'m HeaderValue;

    fn next(&mut self) -> Option<&'m HeaderValue> {
        match self {
            All::Scan(it, name) => it.find(|(n, _)| *n == *name).map(|(_, v)| v),
            All::Hashed(it) => it.next(),
        }
    }
}

/// `HeaderName::from_bytes(b)`, with the names most heads carry told
/// apart by length and a case-blind comparison first (`from_bytes` folds
/// every name to lower case in a buffer before it looks it up).
pub fn name(b: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    use http::header as h;
    let is = |n: &[u8]| b.eq_ignore_ascii_case(n);
    let known = match b.len() {
        4 if is(b"host") => h::HOST,
        4 if is(b"date") => h::DATE,
        4 if is(b"etag") => h::ETAG,
        6 if is(b"accept") => h::ACCEPT,
        6 if is(b"cookie") => h::COOKIE,
        6 if is(b"server") => h::SERVER,
        10 if is(b"user-agent") => h::USER_AGENT,
        10 if is(b"connection") => h::CONNECTION,
        12 if is(b"content-type") => h::CONTENT_TYPE,
        13 if is(b"authorization") => h::AUTHORIZATION,
        13 if is(b"cache-control") => h::CACHE_CONTROL,
        13 if is(b"last-modified") => h::LAST_MODIFIED,
        13 if is(b"accept-ranges") => h::ACCEPT_RANGES,
        14 if is(b"content-length") => h::CONTENT_LENGTH,
        15 if is(b"accept-encoding") => h::ACCEPT_ENCODING,
        15 if is(b"accept-language") => h::ACCEPT_LANGUAGE,
        _ => return HeaderName::from_bytes(b),
    };
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Names standard and not, a few spellings of each.
    const NAMES: [&str; 8] = [
        "host",
        "authorization",
        "cookie",
        "accept",
        "x-request-id",
        "content-length",
        "x-a",
        "connection",
    ];

    proptest! {
        /// The known names, in any case, and any other bytes, make the
        /// name (or the refusal) `from_bytes` makes.
        #[test]
        fn names_are_from_bytes_names(
            known in proptest::sample::select(&[
                "host", "date", "etag", "accept", "cookie", "server", "user-agent",
                "connection", "content-type", "authorization", "cache-control",
                "last-modified", "accept-ranges", "content-length", "accept-encoding",
                "accept-language", "x-request-id", "hosts", "accepted",
            ][..]),
            upper in proptest::collection::vec(any::<bool>(), 16),
            other in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let cased: Vec<u8> = known
                .bytes()
                .zip(upper.iter().cycle())
                .map(|(b, &u)| if u { b.to_ascii_uppercase() } else { b })
                .collect();
            for b in [cased, other] {
                prop_assert_eq!(name(&b).ok(), HeaderName::from_bytes(&b).ok(), "{:?}", b);
            }
        }

        /// Small maps (looked through) and large ones (looked up) answer
        /// as the map's own lookups, repeated names and all.
        #[test]
        fn lookups_answer_as_the_map_does(
            fields in proptest::collection::vec((0..NAMES.len(), "[a-z0-9]{0,3}"), 0..14),
        ) {
            let mut map = HeaderMap::new();
            for (n, v) in &fields {
                map.append(
                    HeaderName::from_static(NAMES[*n]),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            for name in NAMES {
                let name = HeaderName::from_static(name);
                prop_assert_eq!(first(&map, &name), map.get(&name));
                let ours: Vec<_> = all(&map, &name).collect();
                let theirs: Vec<_> = map.get_all(&name).iter().collect();
                prop_assert_eq!(ours, theirs);
            }
        }
    }
}
