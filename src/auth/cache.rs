//! Bounded cache of verified tokens, so an RS256/ES256 signature (20–60 µs)
//! is checked once per token, not once per request.
//!
//! Keyed by the SHA-256 digest of the raw token (never the token itself, so
//! a heap dump holds no bearer credentials); an entry is only returned while
//! the token's `exp` has not passed. Bounded by `identity.cache_entries`:
//! when full, expired entries are swept (at most once a second: a sweep
//! reads every entry, and a cache full of live tokens would otherwise be
//! swept by every new one); if it is still full the new token is simply not
//! cached (a miss costs one verification, never correctness).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use dashmap::DashMap;

use crate::policy::Principal;

type Digest = [u8; 32];

use crate::hashing::DigestState;

/// What a verified token's cache entry holds.
#[derive(Debug, Clone)]
pub struct Times {
    /// `exp` (unix seconds).
    pub exp: u64,
    /// `iat` (unix seconds), when the token has one.
    pub iat: Option<u64>,
}

pub struct TokenCache {
    entries: DashMap<Digest, (Times, Arc<Principal>), DigestState>,
    max_entries: usize,
    /// The second (unix) of the last sweep.
    swept: std::sync::atomic::AtomicU64,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// SHA-256 of the token: the cache key, and the session id of tokens
/// without `sid` or `jti`.
pub fn digest_of(token: &str) -> Digest {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl TokenCache {
    pub fn new(max_entries: usize) -> Self {
        TokenCache {
            entries: DashMap::default(),
            max_entries,
            swept: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The principal and times of a token verified earlier, if it has not expired.
    #[cfg(test)]
    pub fn get(&self, token: &str) -> Option<(Arc<Principal>, Times)> {
        self.get_at(token, now_unix())
    }

    /// [`TokenCache::get`] at `now` (unix seconds).
    pub fn get_at(&self, token: &str, now: u64) -> Option<(Arc<Principal>, Times)> {
        if self.max_entries == 0 {
            return None;
        }
        let key = digest_of(token);
        let hit = self.entries.get(&key).map(|e| (e.0.clone(), e.1.clone()));
        match hit {
            Some((times, p)) if now < times.exp => Some((p, times)),
            Some(_) => {
                self.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers a verified token until its `exp` (unix seconds).
    pub fn insert(&self, token: &str, times: Times, principal: Arc<Principal>) {
        self.insert_at(token, times, principal, now_unix());
    }

    /// [`TokenCache::insert`] at `now` (unix seconds).
    fn insert_at(&self, token: &str, times: Times, principal: Arc<Principal>, now: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.max_entries == 0 {
            return;
        }
        if self.entries.len() >= self.max_entries {
            let last = self.swept.load(Relaxed);
            if now > last
                && self
                    .swept
                    .compare_exchange(last, now, Relaxed, Relaxed)
                    .is_ok()
            {
                self.entries.retain(|_, (t, _)| t.exp > now);
            }
            if self.entries.len() >= self.max_entries {
                return;
            }
        }
        self.entries.insert(digest_of(token), (times, principal));
    }

    /// `false` with `cache_entries: 0`, which also turns off the
    /// connections' memos (`auth::ConnToken`): every request verifies.
    pub fn enabled(&self) -> bool {
        self.max_entries > 0
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_entries_are_not_returned() {
        let c = TokenCache::new(10);
        let p = Arc::new(Principal::default());
        let t = |exp| Times { exp, iat: None };
        c.insert("a", t(now_unix() - 1), p.clone());
        c.insert("b", t(now_unix() + 100), p);
        assert!(c.get("a").is_none());
        assert!(c.get("b").is_some());
    }

    #[test]
    fn bounded() {
        let c = TokenCache::new(2);
        let p = Arc::new(Principal::default());
        for t in ["a", "b", "c"] {
            let times = Times {
                exp: now_unix() + 100,
                iat: Some(1),
            };
            c.insert(t, times, p.clone());
        }
        assert_eq!(c.len(), 2);
        assert!(c.get("c").is_none());
    }

    /// A full cache is swept of expired tokens at most once a second.
    #[test]
    fn a_full_cache_is_swept_at_most_once_a_second() {
        let c = TokenCache::new(2);
        let p = Arc::new(Principal::default());
        let now = now_unix();
        let t = |exp| Times { exp, iat: None };
        c.insert_at("live", t(now + 100), p.clone(), now);
        c.insert_at("old", t(now - 1), p.clone(), now);
        // Full: swept (the expired one goes), the new one is cached.
        c.insert_at("new", t(now - 1), p.clone(), now);
        assert_eq!(c.len(), 2);
        assert!(c.entries.contains_key(&digest_of("new")));
        assert!(!c.entries.contains_key(&digest_of("old")));
        // Full again, in the same second: no second sweep, not cached.
        c.insert_at("next", t(now + 100), p.clone(), now);
        assert!(!c.entries.contains_key(&digest_of("next")));
        // A second later: swept again, cached.
        c.insert_at("next", t(now + 100), p, now + 1);
        assert!(c.entries.contains_key(&digest_of("next")));
        assert!(!c.entries.contains_key(&digest_of("new")));
    }
}
