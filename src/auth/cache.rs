//! Bounded cache of verified tokens, so an RS256/ES256 signature (20–60 µs)
//! is checked once per token, not once per request.
//!
//! Keyed by the SHA-256 digest of the raw token (never the token itself, so
//! a heap dump holds no bearer credentials); an entry is only returned while
//! the token's `exp` has not passed. Bounded by `identity.cache_entries`:
//! when full, expired entries are swept; if it is still full the new token is
//! simply not cached (a miss costs one verification, never correctness).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use dashmap::DashMap;

use crate::policy::Principal;

type Digest = [u8; 32];

pub struct TokenCache {
    entries: DashMap<Digest, (u64, Arc<Principal>)>,
    max_entries: usize,
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
            entries: DashMap::new(),
            max_entries,
        }
    }

    /// The principal and `exp` of a token verified earlier, if it has not expired.
    pub fn get(&self, token: &str) -> Option<(Arc<Principal>, u64)> {
        if self.max_entries == 0 {
            return None;
        }
        let key = digest_of(token);
        let hit = self.entries.get(&key).map(|e| (e.0, e.1.clone()));
        match hit {
            Some((exp, p)) if now_unix() < exp => Some((p, exp)),
            Some(_) => {
                self.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers a verified token until its `exp` (unix seconds).
    pub fn insert(&self, token: &str, exp: u64, principal: Arc<Principal>) {
        if self.max_entries == 0 {
            return;
        }
        if self.entries.len() >= self.max_entries {
            let now = now_unix();
            self.entries.retain(|_, (e, _)| *e > now);
            if self.entries.len() >= self.max_entries {
                return;
            }
        }
        self.entries.insert(digest_of(token), (exp, principal));
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
        c.insert("a", now_unix() - 1, p.clone());
        c.insert("b", now_unix() + 100, p);
        assert!(c.get("a").is_none());
        assert!(c.get("b").is_some());
    }

    #[test]
    fn bounded() {
        let c = TokenCache::new(2);
        let p = Arc::new(Principal::default());
        for t in ["a", "b", "c"] {
            c.insert(t, now_unix() + 100, p.clone());
        }
        assert_eq!(c.len(), 2);
        assert!(c.get("c").is_none());
    }
}
