//! What an open websocket or a long-lived response was authorized on
//! besides its session, kept from phases 3b and 5 and re-checked while it
//! lasts: the subject's user-directory entry, and the pushed relation
//! tuples that answered true.
//!
//! Owns the comparison only. Must not: decide again (there is no policy
//! here: a change is enough to end the socket or the stream, and the
//! client's next request is decided afresh), or read anything but this
//! instance's in-memory shared records.

use std::sync::Arc;

use crate::session::Store;

/// The grounds of one authorization that can change while its answer
/// lasts.
#[derive(Debug, Default)]
pub struct Standing {
    /// The subject's user-directory entry it was authorized on
    /// (`Some(None)`: none); `None` without a directory for its issuer.
    pub directory_entry: Option<Option<Arc<str>>>,
    /// The pushed relation tuples (shared-records namespace, key) that
    /// answered true.
    pub tuples: Box<[(String, String)]>,
}

/// Why the authorization no longer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The subject's directory entry was created, changed or removed.
    UserChanged,
    /// A tuple was removed or has expired.
    RelationRemoved,
}

impl Standing {
    /// Whether it still stands at `now_ms` (ms since the epoch); while it
    /// does, the earliest expiry among its tuples (the moment to look
    /// again). Judged on this instance's copy even while it may be stale
    /// (Redis events down): what the copy shows gone or expired is, at
    /// worst, gone too early (fail closed); a removal it missed is seen
    /// once the store has resynced, which wakes every socket.
    pub fn check(&self, store: &Store, subject: &str, now_ms: u64) -> Result<Option<u64>, Lost> {
        if self.directory_entry.is_none() && self.tuples.is_empty() {
            return Ok(None);
        }
        let shared = store.shared();
        if let Some(then) = &self.directory_entry
            && shared.get(crate::directory::USERS, subject, now_ms) != *then
        {
            return Err(Lost::UserChanged);
        }
        let mut first = None::<u64>;
        for (ns, k) in &self.tuples {
            match shared.live_until(ns, k, now_ms) {
                None => return Err(Lost::RelationRemoved),
                Some(Some(x)) => first = Some(first.map_or(x, |f| f.min(x))),
                Some(None) => {}
            }
        }
        Ok(first)
    }
}
