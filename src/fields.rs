//! Looking a field up in a request's or an answer's header map.
//!
//! Most maps the gateway reads on a request hold a handful of fields
//! (`Host`, `Authorization`, `Accept`, …), and each request asks them for
//! about ten names. Comparing a few names costs less than hashing one, so
//! small maps are looked through in order; larger ones are looked up as
//! usual. The answers are exactly `HeaderMap::get` and `get_all`'s (same
//! values, same order; proptested).
//!
//! Owns: the lookups. Must not: change a map, or decide anything.

use http::HeaderMap;
use http::header::{GetAll, HeaderName, HeaderValue, Iter};

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
