//! Contextual relations (`relation:NAME(args)` in a requirement), pulled
//! from an upstream and cached. Serves phase 5 (authorize): the pipeline
//! asks [`resolve`] for the relations a decision needs, then hands the
//! [`Answers`] to `policy::decide`, so `policy` stays free of I/O.
//!
//! Owns the pull call, its timeout and the answer cache. It decides
//! nothing: a relation that cannot be answered is *unknown* (`None`), and
//! the policy's three-valued logic turns an outcome that depends on it into
//! a `relation_unavailable` deny (fail closed).
//!
//! The call: `GET <upstream URL><path>?subject=S&issuer=I&object=A1[&object=A2…]`
//! (values percent-encoded, the relation's arguments in order), answered
//! by a 2xx with the JSON object `{"allowed": true|false}` (other fields
//! ignored). A timeout, a connect failure, a non-2xx status, a body over
//! [`MAX_ANSWER_BYTES`] or any other body is unknown and logged (WARN,
//! target `rolegate::relations`); unknowns are never cached.
//!
//! Staleness: a `true` answer is reused for `cache_ttl`, a `false` one for
//! `negative_ttl`, per (relation, subject, issuer, arguments). The cache is
//! bounded per relation (`cache_entries`): when full, expired entries are
//! dropped, and if it is still full the new answer is used but not kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use bytes::Bytes;
use dashmap::DashMap;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Empty, Limited};
use tokio::time::Instant;

use crate::config::{PullSource, RelationSource, Runtime, Upstream};
use crate::policy::{Principal, Relations};
use crate::session::{SharedOp, Store, now_ms};

/// An answer body larger than this is not an answer (unknown).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One question: a relation and its argument values (the subject is the
/// request's principal).
pub type Question = (String, Vec<String>);

/// The answers for one request's principal. Anything not asked is unknown.
#[derive(Debug, Default)]
pub struct Answers(HashMap<Question, Option<bool>>);

impl Answers {
    pub fn insert(&mut self, name: &str, args: Vec<String>, answer: Option<bool>) {
        self.0.insert((name.to_string(), args), answer);
    }

    /// The questions of pushed (`pushed`) or pulled relations that
    /// answered true.
    fn held<'a>(&'a self, rt: &'a Runtime, pushed: bool) -> impl Iterator<Item = &'a Question> {
        self.0
            .iter()
            .filter(move |((name, _), answer)| {
                **answer == Some(true)
                    && match rt.relations.get(name) {
                        Some(RelationSource::Push(_)) => pushed,
                        Some(RelationSource::Pull(_)) => !pushed,
                        None => false,
                    }
            })
            .map(|(q, _)| q)
    }

    /// The stored tuples (shared-records namespace and key) of the pushed
    /// relations that answered true: what a websocket or a long-lived
    /// answer authorized with these answers depends on (re-checked while
    /// it lasts).
    pub fn pushed_true(&self, rt: &Runtime, p: &Principal) -> Vec<(String, String)> {
        self.held(rt, true)
            .map(|(name, args)| (tuple_ns(name), tuple_key(&p.issuer, &p.subject, args)))
            .collect()
    }

    /// The pulled relations that answered true: asked again while a
    /// websocket or a long-lived answer authorized with these answers
    /// lasts.
    pub fn pulled_true(&self, rt: &Runtime) -> Vec<Question> {
        self.held(rt, false).cloned().collect()
    }
}

/// How often an open websocket or a long-lived answer asks its pulled
/// relations again: the
/// shortest `cache_ttl` among them (an answer is never older than that
/// for a request either), at least a second.
pub fn ask_again_every(rt: &Runtime, questions: &[Question]) -> std::time::Duration {
    questions
        .iter()
        .filter_map(|(name, _)| match rt.relations.get(name) {
            Some(RelationSource::Pull(src)) => Some(src.cache_ttl),
            _ => None,
        })
        .min()
        .unwrap_or_default()
        .max(std::time::Duration::from_secs(1))
}

impl Relations for Answers {
    fn check(&self, name: &str, args: &[String], _principal: &Principal) -> Option<bool> {
        // Allocation-free lookup is not worth a custom key here: a handful
        // of questions per request, only on routes that need them.
        self.0
            .get(&(name.to_string(), args.to_vec()))
            .copied()
            .flatten()
    }
}

/// Answers nothing, remembering every question it was asked: a first
/// `decide` with it tells which relations the decision depends on.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Vec<Question>>);

impl Recorder {
    /// The questions asked, without duplicates.
    pub fn into_questions(self) -> Vec<Question> {
        let mut q = self.0.into_inner().unwrap_or_else(|e| e.into_inner());
        q.sort();
        q.dedup();
        q
    }
}

impl Relations for Recorder {
    fn check(&self, name: &str, args: &[String], _principal: &Principal) -> Option<bool> {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.push((name.to_string(), args.to_vec()));
        None
    }
}

/// (subject, issuer, arguments) within one relation.
type Key = (String, String, Vec<String>);

struct Entry {
    allowed: bool,
    until: Instant,
}

/// The answer cache, one bounded map per relation name. It belongs to the
/// runtime: a reload starts with an empty one (answers cached under the
/// old sources, paths or TTLs are never served under the new ones).
#[derive(Default)]
pub struct Cache {
    by_relation: DashMap<String, Arc<DashMap<Key, Entry>>>,
}

impl Cache {
    fn shard(&self, name: &str) -> Arc<DashMap<Key, Entry>> {
        if let Some(s) = self.by_relation.get(name) {
            return Arc::clone(&s);
        }
        Arc::clone(&self.by_relation.entry(name.to_string()).or_default())
    }

    fn get(&self, name: &str, key: &Key, now: Instant) -> Option<bool> {
        let shard = self.shard(name);
        let hit = shard.get(key).map(|e| (e.allowed, e.until));
        match hit {
            Some((allowed, until)) if until > now => Some(allowed),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&self, name: &str, src: &PullSource, key: Key, allowed: bool, now: Instant) {
        let ttl = if allowed {
            src.cache_ttl
        } else {
            src.negative_ttl
        };
        if ttl.is_zero() || src.cache_entries == 0 {
            return;
        }
        let shard = self.shard(name);
        if shard.len() >= src.cache_entries {
            shard.retain(|_, e| e.until > now);
            if shard.len() >= src.cache_entries {
                return;
            }
        }
        shard.insert(
            key,
            Entry {
                allowed,
                until: now + ttl,
            },
        );
    }
}

/// Answers `questions` for `principal`: pushed relations from the store's
/// shared records, pulled ones from the cache, else by one concurrent pull
/// per question. A relation without a source is unknown.
pub async fn resolve(
    rt: &Runtime,
    cache: &Cache,
    store: &Store,
    principal: &Principal,
    questions: Vec<Question>,
) -> Answers {
    let asks = questions.into_iter().map(|(name, args)| async move {
        let answer = match rt.relations.get(&name) {
            Some(RelationSource::Push(_)) => pushed(store, principal, &name, &args),
            Some(RelationSource::Pull(src)) => {
                answer(rt, src, cache, principal, &name, &args).await
            }
            None => None,
        };
        (name, args, answer)
    });
    let mut out = Answers::default();
    for (name, args, answer) in join_all(asks).await {
        out.insert(&name, args, answer);
    }
    out
}

/// A pushed relation holds iff its tuple is stored (and not expired).
/// Unknown while this instance's copy may be stale (Redis subscription
/// down): a removal could have been missed.
fn pushed(store: &Store, p: &Principal, name: &str, args: &[String]) -> Option<bool> {
    if !store.shared_fresh() {
        tracing::warn!(target: "rolegate::relations", relation = name, "relation unavailable: session store events not in sync");
        return None;
    }
    let key = tuple_key(&p.issuer, &p.subject, args);
    Some(store.shared().contains(&tuple_ns(name), &key, now_ms()))
}

/// What the shared-records namespaces of pushed relations start with.
pub const TUPLE_NS_PREFIX: &str = "rel.";

/// The shared-records namespace of a pushed relation's tuples.
pub fn tuple_ns(name: &str) -> String {
    format!("{TUPLE_NS_PREFIX}{name}")
}

/// A tuple's key: the JSON array `[issuer, subject, arg…]` (unambiguous
/// whatever the strings contain).
pub fn tuple_key(issuer: &str, subject: &str, args: &[String]) -> String {
    let mut v: Vec<&str> = vec![issuer, subject];
    v.extend(args.iter().map(String::as_str));
    serde_json::to_string(&v).unwrap_or_default()
}

/// The parts of a tuple key (`None` if it is not one).
pub fn parse_tuple_key(key: &str) -> Option<(String, String, Vec<String>)> {
    let mut v: Vec<String> = serde_json::from_str(key).ok()?;
    if v.len() < 2 {
        return None;
    }
    let rest = v.split_off(2);
    let subject = v.pop()?;
    let issuer = v.pop()?;
    Some((issuer, subject, rest))
}

/// The batch that adds (with expiry `exp_ms`) or removes one tuple.
pub fn tuple_op(name: &str, key: String, add: Option<Option<u64>>) -> SharedOp {
    match add {
        Some(x) => SharedOp::Put {
            ns: tuple_ns(name),
            k: key,
            v: String::new(),
            x,
        },
        None => SharedOp::Del {
            ns: tuple_ns(name),
            k: key,
        },
    }
}

async fn answer(
    rt: &Runtime,
    src: &PullSource,
    cache: &Cache,
    p: &Principal,
    name: &str,
    args: &[String],
) -> Option<bool> {
    let up = rt.upstreams.get(src.upstream)?;
    let key: Key = (p.subject.clone(), p.issuer.clone(), args.to_vec());
    if let Some(hit) = cache.get(name, &key, Instant::now()) {
        return Some(hit);
    }
    let got = tokio::time::timeout(src.timeout, pull(up, src, p, args)).await;
    let allowed = match got {
        Ok(Ok(allowed)) => allowed,
        Ok(Err(why)) => {
            tracing::warn!(target: "rolegate::relations", relation = name, upstream = %up.name, error = %why, "relation unavailable");
            return None;
        }
        Err(_) => {
            tracing::warn!(target: "rolegate::relations", relation = name, upstream = %up.name, timeout_ms = src.timeout.as_millis() as u64, "relation unavailable: timed out");
            return None;
        }
    };
    cache.put(name, src, key, allowed, Instant::now());
    Some(allowed)
}

/// The pull call itself (without the timeout).
async fn pull(
    up: &Upstream,
    src: &PullSource,
    p: &Principal,
    args: &[String],
) -> Result<bool, String> {
    let uri = query_uri(up, src, p, args)?;
    let body = Empty::<Bytes>::new().map_err(|e| match e {}).boxed();
    let req = http::Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .body(body)
        .map_err(|e| format!("bad request: {e}"))?;
    // The upstream's own servers, balancing and health, like a route's.
    let resp = crate::proxy::upstream::send(up, req, &mut Default::default(), false, &mut None)
        .await
        .map_err(|e| match e.cause() {
            "" => format!("call failed: {e}"),
            cause => format!("call failed: {e}: {cause}"),
        })?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("answer body: {e}"))?
        .to_bytes();
    parse_answer(&bytes)
}

/// `<base path><path>?subject=..&issuer=..&object=..` (origin-form: the
/// server is picked when it is sent).
fn query_uri(
    up: &Upstream,
    src: &PullSource,
    p: &Principal,
    args: &[String],
) -> Result<http::Uri, String> {
    let mut q = String::new();
    let mut add = |k: &str, v: &str| {
        q.push(if q.is_empty() { '?' } else { '&' });
        q.push_str(k);
        q.push('=');
        q.push_str(&encode(v));
    };
    add("subject", &p.subject);
    add("issuer", &p.issuer);
    for a in args {
        add("object", a);
    }
    let s = format!("{}{}{q}", up.base_path, src.path);
    s.parse().map_err(|e| format!("bad URI: {e}"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `{"allowed": true|false}`; anything else is an error.
fn parse_answer(bytes: &[u8]) -> Result<bool, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        allowed: bool,
    }
    serde_json::from_slice::<Answer>(bytes)
        .map(|a| a.allowed)
        .map_err(|e| format!("answer is not {{\"allowed\": bool}}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_percent_encoded() {
        assert_eq!(encode("c1"), "c1");
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(encode("x-y.z_~"), "x-y.z_~");
    }

    #[test]
    fn only_a_boolean_allowed_is_an_answer() {
        assert_eq!(parse_answer(br#"{"allowed": true}"#), Ok(true));
        assert_eq!(
            parse_answer(br#"{"allowed": false, "why": "x"}"#),
            Ok(false)
        );
        for bad in [&b"{}"[..], b"true", br#"{"allowed": "yes"}"#, b"", b"{"] {
            assert!(parse_answer(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn recorder_collects_each_question_once() {
        let r = Recorder::default();
        let p = Principal::default();
        assert_eq!(r.check("a", &["1".into()], &p), None);
        assert_eq!(r.check("a", &["1".into()], &p), None);
        assert_eq!(r.check("b", &[], &p), None);
        assert_eq!(
            r.into_questions(),
            vec![("a".into(), vec!["1".into()]), ("b".into(), vec![])]
        );
    }

    #[test]
    fn answers_know_only_what_was_asked() {
        let mut a = Answers::default();
        a.insert("r", vec!["c1".into()], Some(true));
        a.insert("r", vec!["c2".into()], None);
        let p = Principal::default();
        assert_eq!(a.check("r", &["c1".into()], &p), Some(true));
        assert_eq!(a.check("r", &["c2".into()], &p), None);
        assert_eq!(a.check("r", &["c3".into()], &p), None);
    }

    fn source(ttl_ms: u64, neg_ms: u64, entries: usize) -> PullSource {
        PullSource {
            upstream: 0,
            path: "/r".into(),
            timeout: std::time::Duration::from_millis(500),
            cache_ttl: std::time::Duration::from_millis(ttl_ms),
            negative_ttl: std::time::Duration::from_millis(neg_ms),
            cache_entries: entries,
        }
    }

    fn key(s: &str) -> Key {
        (s.into(), "iss".into(), vec!["c1".into()])
    }

    #[test]
    fn positive_and_negative_answers_expire_on_their_own_ttl() {
        let c = Cache::default();
        let src = source(5000, 2000, 10);
        let now = Instant::now();
        c.put("r", &src, key("yes"), true, now);
        c.put("r", &src, key("no"), false, now);
        let later = now + std::time::Duration::from_millis(3000);
        assert_eq!(c.get("r", &key("yes"), later), Some(true));
        assert_eq!(
            c.get("r", &key("no"), later),
            None,
            "negative TTL is shorter"
        );
        let much_later = now + std::time::Duration::from_millis(6000);
        assert_eq!(c.get("r", &key("yes"), much_later), None);
        assert_eq!(c.get("other", &key("yes"), now), None, "per relation");
    }

    #[test]
    fn a_full_cache_drops_expired_entries_then_stops_storing() {
        let c = Cache::default();
        let src = source(1000, 1000, 2);
        let now = Instant::now();
        c.put("r", &src, key("a"), true, now);
        c.put("r", &src, key("b"), true, now);
        c.put("r", &src, key("c"), true, now);
        assert_eq!(c.get("r", &key("c"), now), None, "full: not stored");
        let later = now + std::time::Duration::from_millis(1500);
        c.put("r", &src, key("c"), true, later);
        assert_eq!(
            c.get("r", &key("c"), later),
            Some(true),
            "expired ones made room"
        );
    }
}
