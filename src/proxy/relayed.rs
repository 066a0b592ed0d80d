//! An upstream answer's fields kept as the upstream's bytes, on the one
//! path where nothing reads them between the upstream and the client: an
//! HTTP/1.1 upstream (`h1codec`), a route without a mask, no websocket
//! handshake, and a client served by `h1server`. There the fields are
//! parsed once (by `httparse`), cleaned here by the same rules as
//! `headers::clean_response`, and written out as they came (names in the
//! upstream's spelling, as nginx relays them), instead of each name being
//! parsed into a `HeaderMap`, cleaned there and encoded again.
//!
//! The framing fields (`Content-Length`, `Transfer-Encoding`) are never
//! relayed: `h1codec` puts them into the answer's header map, where the
//! framing code of both sides reads them. `Connection` (hop-by-hop: never
//! passed on) is kept apart, for the cleaning and the codec's keep-alive
//! decision. So the map holds the framing fields plus whatever the
//! gateway adds (`X-Request-Id`), and a [`Relayed`] beside the answer
//! (never among its extensions: a map per answer costs more than the
//! rest) holds the rest, from `h1codec` through the upstream's body and
//! the pipeline's context to `h1server`.
//!
//! Owns the representation, the cleaning of relayed lines and their
//! writing. Must not decide anything about masking or framing: where a
//! field must be read, it is not relayed.

use bytes::Bytes;
#[cfg(test)]
use http::header::HeaderValue;
use http::header::{HeaderMap, HeaderName};
use smallvec::SmallVec;

use crate::config::ForwardSettings;
use crate::proxy::headers::ByteSet;

/// Fields of one answer head, in the order they came, as offsets into
/// the head's bytes. Built by `h1codec` only for a caller that asked for
/// it (`Gateway::handle_h1`, whose writer is `h1server`).
#[derive(Clone)]
pub struct Relayed {
    head: Bytes,
    fields: SmallVec<[Field; 16]>,
    /// The values of the `Connection` fields.
    connection: SmallVec<[[u32; 2]; 2]>,
}

/// Where `h1codec` puts a field of a relayed answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Place {
    /// `Content-Length`, `Transfer-Encoding`: the header map.
    Map,
    /// `Connection`: [`Relayed::push_connection`].
    Connection,
    /// Anything else: [`Relayed::push`].
    Relayed,
}

/// `[start, end)` of a field's name and of its value in the head.
#[derive(Clone, Copy)]
struct Field {
    name: [u32; 2],
    value: [u32; 2],
}

/// The longest name `HeaderName` takes; a longer one is refused here too,
/// so relaying never accepts an answer the header map would not.
const MAX_NAME: usize = (1 << 16) - 1;

impl Relayed {
    pub fn new(head: Bytes) -> Relayed {
        Relayed {
            head,
            fields: SmallVec::new(),
            connection: SmallVec::new(),
        }
    }

    /// Keeps the field at these offsets of the head; `false` (nothing
    /// kept) for a name the header map would refuse (empty, or over its
    /// length limit). `httparse` has already checked the name's and the
    /// value's bytes, with the same rules as `HeaderName` and
    /// `HeaderValue`.
    #[must_use]
    pub fn push(&mut self, name: [u32; 2], value: [u32; 2]) -> bool {
        if (name[1] - name[0]) as usize > MAX_NAME || name[0] == name[1] {
            return false;
        }
        self.fields.push(Field { name, value });
        true
    }

    /// Keeps the value at these offsets as one of `Connection`'s.
    pub fn push_connection(&mut self, value: [u32; 2]) {
        self.connection.push(value);
    }

    /// Where a field goes, by its name.
    pub fn place(name: &[u8]) -> Place {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            10 if is(b"connection") => Place::Connection,
            14 if is(b"content-length") => Place::Map,
            17 if is(b"transfer-encoding") => Place::Map,
            _ => Place::Relayed,
        }
    }

    /// Whether a `Connection` field has this option.
    pub fn connection_has(&self, option: &[u8]) -> bool {
        options(&self.head, &self.connection).any(|o| o.eq_ignore_ascii_case(option))
    }

    fn bytes(&self, span: [u32; 2]) -> &[u8] {
        &self.head[span[0] as usize..span[1] as usize]
    }

    /// Each field's name and value, as the upstream wrote them.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|f| (self.bytes(f.name), self.bytes(f.value)))
    }

    /// Cleans the answer as `headers::clean_response` cleans a header
    /// map, in place of it: drops the hop-by-hop fields and those the
    /// `Connection` fields name, fields under the identity prefix and
    /// `Set-Cookie`s of the credential cookie (any spelling); and
    /// `X-Request-Id`, which the gateway sets. `map` is the answer's
    /// (framing fields only). Returns the names dropped for the second
    /// reason (to be logged; empty, without allocating, in the normal
    /// case).
    pub fn clean(&mut self, map: &mut HeaderMap, fwd: &ForwardSettings) -> Vec<HeaderName> {
        debug_assert!(
            map.keys()
                .all(|k| k == http::header::CONTENT_LENGTH || k == http::header::TRANSFER_ENCODING),
            "a relayed answer's map holds framing fields only"
        );
        let head = &self.head;
        let listed: SmallVec<[&[u8]; 4]> = options(head, &self.connection).collect();
        // The map holds one or two fields: looked through, not looked up.
        if map.keys().any(|k| k == http::header::TRANSFER_ENCODING) {
            map.remove(http::header::TRANSFER_ENCODING);
        }
        if listed
            .iter()
            .any(|o| o.eq_ignore_ascii_case(b"content-length"))
        {
            map.remove(http::header::CONTENT_LENGTH);
        }
        let prefix = fwd.identity_prefix.as_bytes();
        let cookie = fwd.cookie.as_deref();
        // The first bytes (lower-case) of every name dropped for its own
        // sake: most fields start with none of them and are decided by
        // one bit (and the `Connection` options, if any). (An empty prefix,
        // which the configuration refuses, would cover every name.)
        let firsts = prefix
            .first()
            .map_or(ByteSet::ALL, |&b| DROPPED_FIRSTS.with(b));
        let verdict = |f: &Field| {
            let name = &head[f.name[0] as usize..f.name[1] as usize];
            let listed_here = || listed.iter().any(|o| o.eq_ignore_ascii_case(name));
            if name
                .first()
                .is_none_or(|&b| !firsts.has(b.to_ascii_lowercase()))
            {
                return if listed_here() {
                    Verdict::Drop
                } else {
                    Verdict::Keep
                };
            }
            if is_hop_by_hop(name) || listed_here() {
                return Verdict::Drop;
            }
            let gateway_s = (name.len() >= prefix.len()
                && name[..prefix.len()].eq_ignore_ascii_case(prefix))
                || cookie.is_some_and(|c| {
                    name.eq_ignore_ascii_case(b"set-cookie")
                        && crate::auth::cookie::sets_lookalike(
                            &head[f.value[0] as usize..f.value[1] as usize],
                            c,
                        )
                });
            if gateway_s {
                Verdict::Forged(name)
            } else if name.eq_ignore_ascii_case(b"x-request-id") {
                Verdict::Drop
            } else {
                Verdict::Keep
            }
        };
        let mut removed = Vec::new();
        // Most answers keep every field: then nothing is moved.
        if !self
            .fields
            .iter()
            .all(|f| matches!(verdict(f), Verdict::Keep))
        {
            self.fields.retain(|f| match verdict(f) {
                Verdict::Keep => true,
                Verdict::Drop => false,
                Verdict::Forged(name) => {
                    if let Ok(n) = HeaderName::from_bytes(name)
                        && !removed.contains(&n)
                    {
                        removed.push(n);
                    }
                    false
                }
            });
        }
        // Hop-by-hop itself.
        drop(listed);
        self.connection.clear();
        removed
    }

    /// Appends every field to `map`: what a header-map reading of the
    /// same head has (the tests compare the two). `h1codec` checked each
    /// name and value when it kept them; a field refused here is dropped.
    #[cfg(test)]
    pub fn into_map(self, map: &mut HeaderMap) {
        map.reserve(self.fields.len() + self.connection.len());
        for &v in &self.connection {
            if let Ok(v) =
                HeaderValue::from_maybe_shared(self.head.slice(v[0] as usize..v[1] as usize))
            {
                map.append(http::header::CONNECTION, v);
            }
        }
        for f in &self.fields {
            let name = HeaderName::from_bytes(self.bytes(f.name));
            let value = HeaderValue::from_maybe_shared(
                self.head.slice(f.value[0] as usize..f.value[1] as usize),
            );
            if let (Ok(n), Ok(v)) = (name, value) {
                map.append(n, v);
            }
        }
    }

    /// Writes every field as `name: value` lines; whether one of them
    /// was `Date`. Fields the upstream wrote one after the other in
    /// exactly that form are copied as one piece.
    pub fn write(&self, dst: &mut Vec<u8>) -> bool {
        let head = &self.head[..];
        let mut date = false;
        // The piece of the head not yet copied: `[start, end)`.
        let (mut start, mut end) = (0, 0);
        for f in &self.fields {
            let [n0, n1] = f.name.map(|x| x as usize);
            let [v0, v1] = f.value.map(|x| x as usize);
            date |= n1 - n0 == 4 && head[n0..n1].eq_ignore_ascii_case(b"date");
            // `name: value\r\n` to the letter, right after the piece.
            let as_written = v0 == n1 + 2
                && &head[n1..v0] == b": "
                && head.get(v1..v1 + 2) == Some(b"\r\n".as_slice());
            if as_written && n0 == end && end > start {
                end = v1 + 2;
                continue;
            }
            dst.extend_from_slice(&head[start..end]);
            if as_written {
                (start, end) = (n0, v1 + 2);
            } else {
                (start, end) = (0, 0);
                dst.reserve(n1 - n0 + v1 - v0 + 4);
                dst.extend_from_slice(&head[n0..n1]);
                dst.extend_from_slice(b": ");
                dst.extend_from_slice(&head[v0..v1]);
                dst.extend_from_slice(b"\r\n");
            }
        }
        dst.extend_from_slice(&head[start..end]);
        date
    }

    /// [`Relayed::write`] a field at a time (what the tests compare it
    /// with).
    #[cfg(test)]
    fn write_each(&self, dst: &mut Vec<u8>) -> bool {
        let mut date = false;
        for (name, value) in self.fields() {
            date |= name.len() == 4 && name.eq_ignore_ascii_case(b"date");
            dst.extend_from_slice(name);
            dst.extend_from_slice(b": ");
            dst.extend_from_slice(value);
            dst.extend_from_slice(b"\r\n");
        }
        date
    }
}

/// What [`Relayed::clean`] does with a field.
enum Verdict<'a> {
    Keep,
    Drop,
    /// Dropped, and logged: a field only the gateway may set (this name).
    Forged(&'a [u8]),
}

/// The options of `Connection` values (the fields they name).
fn options<'a>(head: &'a [u8], values: &'a [[u32; 2]]) -> impl Iterator<Item = &'a [u8]> {
    values
        .iter()
        .flat_map(move |v| head[v[0] as usize..v[1] as usize].split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|o| !o.is_empty())
}

/// The first bytes of the names [`Relayed::clean`] drops whatever the
/// configuration: the hop-by-hop set, `set-cookie`, `x-request-id`.
const DROPPED_FIRSTS: ByteSet = {
    let names = crate::proxy::headers::HOP_BY_HOP_NAMES;
    let mut set = ByteSet::EMPTY.with(b's').with(b'x');
    let mut i = 0;
    while i < names.len() {
        set = set.with(names[i].as_bytes()[0]);
        i += 1;
    }
    set
};

/// Whether a name (any case) is one of `headers::HOP_BY_HOP_NAMES`, the
/// one list both cleanings go by; lengths compared first.
fn is_hop_by_hop(name: &[u8]) -> bool {
    crate::proxy::headers::HOP_BY_HOP_NAMES
        .iter()
        .any(|h| h.len() == name.len() && name.eq_ignore_ascii_case(h.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Fields an upstream may send, in the spellings that matter here.
    const FIELDS: &[(&str, &str)] = &[
        ("Content-Type", "application/json"),
        ("content-length", "5"),
        ("Connection", "keep-alive, X-Secret"),
        ("CONNECTION", "close"),
        ("Connection", "Content-Length, Date"),
        ("Transfer-Encoding", "chunked"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Upgrade", "h2c"),
        ("Proxy-Authenticate", "Basic"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Connection", "X-Secret, \u{e9}"),
        ("X-Secret", "1"),
        ("x-secret", "2"),
        ("X-Rolegate-User", "admin"),
        ("x-ROLEGATE-roles", "root"),
        ("X-Rolegate", "not under the prefix"),
        ("Set-Cookie", "rg_session=forged; Path=/"),
        ("Set-Cookie", "RG.Session=forged"),
        ("Set-Cookie", "theme=dark"),
        ("set-cookie", "rg_session2=x"),
        ("X-Request-Id", "upstream-id"),
        ("Date", "Sun, 06 Dec 2026 20:00:00 GMT"),
        ("ETag", "\"a\""),
        ("X-Empty", ""),
        ("Connection", "accept-RANGES"),
        ("Accept-Ranges", "bytes"),
    ];

    /// `picked` fields as one head: its bytes, the framing fields in a map
    /// and the rest relayed (as `h1codec` splits them).
    fn split(picked: &[usize]) -> (HeaderMap, Relayed) {
        split_styled(&picked.iter().map(|&i| (i, 0)).collect::<Vec<_>>())
    }

    /// [`split`], each field written in one of four ways: `n: v`, `n:v`,
    /// `n:  v  ` and `n: v ` (httparse trims the spaces around a value).
    fn split_styled(picked: &[(usize, usize)]) -> (HeaderMap, Relayed) {
        let mut text = String::from("HTTP/1.1 200 OK\r\n");
        for &(i, style) in picked {
            let (n, v) = FIELDS[i];
            text.push_str(&match style {
                0 => format!("{n}: {v}\r\n"),
                1 => format!("{n}:{v}\r\n"),
                2 => format!("{n}:  {v}  \r\n"),
                _ => format!("{n}: {v} \r\n"),
            });
        }
        text.push_str("\r\n");
        let head = Bytes::from(text);
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut res = httparse::Response::new(&mut fields);
        assert!(res.parse(&head).unwrap().is_complete());
        let mut map = HeaderMap::new();
        let mut relayed = Relayed::new(head.clone());
        let at = |s: &[u8]| (s.as_ptr() as usize - head.as_ptr() as usize) as u32;
        for h in res.headers.iter() {
            let (name, value) = (h.name.as_bytes(), h.value);
            let (n, v) = (at(name), at(value));
            let (n, v) = ([n, n + name.len() as u32], [v, v + value.len() as u32]);
            match Relayed::place(name) {
                Place::Map => {
                    map.append(
                        HeaderName::from_bytes(name).unwrap(),
                        HeaderValue::from_bytes(value).unwrap(),
                    );
                }
                Place::Connection => relayed.push_connection(v),
                Place::Relayed => assert!(relayed.push(n, v)),
            }
        }
        (map, relayed)
    }

    fn sorted(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = map
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        v.sort();
        v
    }

    proptest! {
        /// Cleaning relayed lines leaves what cleaning the header map
        /// leaves (then the gateway's `X-Request-Id` replacing the
        /// upstream's), and reports the same removals.
        #[test]
        fn relayed_lines_are_cleaned_as_the_header_map_is(
            picked in proptest::collection::vec(0..FIELDS.len(), 0..10),
        ) {
            let fwd = crate::proxy::headers::sample_forward();
            let (mut whole, relayed) = split(&picked);
            relayed.clone().into_map(&mut whole);
            let mut removed_whole = crate::proxy::headers::clean_response(&mut whole, &fwd);
            whole.remove("x-request-id");

            let (mut map, mut relayed) = split(&picked);
            let mut removed = relayed.clean(&mut map, &fwd);
            relayed.into_map(&mut map);

            prop_assert_eq!(sorted(&map), sorted(&whole));
            removed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            removed_whole.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            removed.dedup();
            removed_whole.dedup();
            prop_assert_eq!(removed, removed_whole);
        }
    }

    proptest! {
        /// Copying the fields the upstream wrote as `name: value` lines
        /// one after the other in pieces writes what writing each field
        /// does, cleaned or not, whatever the spacing around values.
        #[test]
        fn fields_copied_in_pieces_are_what_writing_each_gives(
            picked in proptest::collection::vec((0..FIELDS.len(), 0..4usize), 0..12),
            clean in any::<bool>(),
        ) {
            let (mut map, mut relayed) = split_styled(&picked);
            if clean {
                let _ = relayed.clean(&mut map, &crate::proxy::headers::sample_forward());
            }
            let (mut pieces, mut each) = (b"x".to_vec(), b"x".to_vec());
            let dated = relayed.write(&mut pieces);
            prop_assert_eq!(dated, relayed.write_each(&mut each));
            prop_assert_eq!(pieces, each);
        }
    }

    #[test]
    fn written_lines_keep_the_upstream_s_spelling_and_say_whether_date_was_one() {
        let (_, relayed) = split(&[0, 24, 25]);
        let mut out = Vec::new();
        assert!(relayed.write(&mut out));
        assert_eq!(
            out,
            b"Content-Type: application/json\r\nDate: Sun, 06 Dec 2026 20:00:00 GMT\r\nETag: \"a\"\r\n"
        );
        let (_, relayed) = split(&[0]);
        assert!(!relayed.write(&mut Vec::new()));
    }

    #[test]
    fn the_framing_fields_are_never_relayed() {
        let (map, relayed) = split(&[1, 2, 3, 0]);
        assert!(relayed.connection_has(b"x-secret"));
        assert!(relayed.connection_has(b"Close"));
        assert!(!relayed.connection_has(b"x-other"));
        let relayed: Vec<&[u8]> = relayed.fields().map(|(n, _)| n).collect();
        assert_eq!(relayed, [b"Content-Type".as_slice()]);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("content-length"));
    }

    #[test]
    fn a_name_the_header_map_would_refuse_is_refused() {
        let mut r = Relayed::new(Bytes::from(vec![b'a'; 70_000]));
        assert!(!r.push([0, 65_536], [65_536, 65_537]));
        assert!(!r.push([0, 0], [0, 1]));
        assert!(r.push([0, 65_535], [65_536, 65_537]));
        assert_eq!(r.fields().count(), 1);
    }
}
