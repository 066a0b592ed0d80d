//! Shared records besides sessions: small keyed values every gateway
//! instance must agree on, kept in memory and made durable by the session
//! store (a journal line in the embedded store; a Redis hash plus an event
//! in the Redis store). Used for relation tuples pushed through the admin
//! API (`relations` with a `push` source).
//!
//! Owns the in-memory map (namespace → key → entry) and the batch format.
//! Must not: persist anything itself (the store writes first, then applies
//! the batch here), or know what a namespace means.
//!
//! A batch of [`Op`]s is applied as a whole: it is one journal line or one
//! Redis script, so after a crash or on another instance it is either all
//! there or not at all. An entry may carry an expiry (ms since the epoch);
//! an expired entry reads as absent and is dropped at the next compaction
//! (embedded) or resync (Redis).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// One change in a batch. Wire and journal format (JSON):
/// `{"o":"put","ns":…,"k":…,"v":…,"x":<expiry ms, optional>}` or
/// `{"o":"del","ns":…,"k":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "o", rename_all = "lowercase")]
pub enum Op {
    Put {
        ns: String,
        k: String,
        v: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        x: Option<u64>,
    },
    Del {
        ns: String,
        k: String,
    },
}

/// A condition of a batch: when the batch is applied, `k` in `ns` holds
/// `v` (`None`: no live value). A batch whose conditions do not all hold
/// is not applied at all (a compare-and-set: what a read-check-write of
/// the admin API read is still what it overwrites). Checked by the store
/// where the batch is made durable; never part of the batch's wire or
/// journal format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub ns: String,
    pub k: String,
    pub v: Option<String>,
}

/// One stored value (shared: a read is a reference count, not a copy,
/// and readers that cache what they parse from it tell an unchanged
/// value by its pointer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Arc<str>,
    /// Expiry in ms since the epoch; `None`: until deleted.
    pub exp_ms: Option<u64>,
}

impl Entry {
    fn live(&self, now_ms: u64) -> bool {
        self.exp_ms.is_none_or(|x| x > now_ms)
    }
}

/// The in-memory records. Reads take a shared lock (one per relation
/// question on routes that ask one); writes are rare admin calls.
#[derive(Debug, Default)]
pub struct Shared {
    map: RwLock<HashMap<String, BTreeMap<String, Entry>>>,
}

impl Shared {
    /// Applies a batch (already durable).
    pub fn apply(&self, ops: &[Op]) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        for op in ops {
            match op {
                Op::Put { ns, k, v, x } => {
                    map.entry(ns.clone()).or_default().insert(
                        k.clone(),
                        Entry {
                            value: Arc::from(v.as_str()),
                            exp_ms: *x,
                        },
                    );
                }
                Op::Del { ns, k } => {
                    if let Some(m) = map.get_mut(ns) {
                        m.remove(k);
                        if m.is_empty() {
                            map.remove(ns);
                        }
                    }
                }
            }
        }
    }

    /// A live value.
    pub fn get(&self, ns: &str, k: &str, now_ms: u64) -> Option<Arc<str>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(ns)?
            .get(k)
            .filter(|e| e.live(now_ms))
            .map(|e| e.value.clone())
    }

    /// Whether every condition holds now.
    pub fn holds(&self, expect: &[Expect], now_ms: u64) -> bool {
        expect
            .iter()
            .all(|e| self.get(&e.ns, &e.k, now_ms).as_deref() == e.v.as_deref())
    }

    /// The batch that puts back what `ops` would change (applied after
    /// `ops`, it restores the state before them).
    pub fn inverse(&self, ops: &[Op]) -> Vec<Op> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut back: Vec<Op> = ops
            .iter()
            .map(|op| {
                let (Op::Put { ns, k, .. } | Op::Del { ns, k }) = op;
                match map.get(ns).and_then(|m| m.get(k)) {
                    Some(e) => Op::Put {
                        ns: ns.clone(),
                        k: k.clone(),
                        v: e.value.to_string(),
                        x: e.exp_ms,
                    },
                    None => Op::Del {
                        ns: ns.clone(),
                        k: k.clone(),
                    },
                }
            })
            .collect();
        // A key changed twice in the batch: its first state is the one to
        // put back, so the first inverse must be applied last.
        back.reverse();
        back
    }

    /// The namespaces starting with `prefix` that hold a live value.
    pub fn namespaces(&self, prefix: &str, now_ms: u64) -> Vec<String> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(ns, m)| ns.starts_with(prefix) && m.values().any(|e| e.live(now_ms)))
            .map(|(ns, _)| ns.clone())
            .collect()
    }

    /// Whether a live value exists (no copy).
    pub fn contains(&self, ns: &str, k: &str, now_ms: u64) -> bool {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(ns)
            .and_then(|m| m.get(k))
            .is_some_and(|e| e.live(now_ms))
    }

    /// A live value's expiry: `Some(None)` for one kept until deleted,
    /// `None` when there is no live value.
    pub fn live_until(&self, ns: &str, k: &str, now_ms: u64) -> Option<Option<u64>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(ns)?
            .get(k)
            .filter(|e| e.live(now_ms))
            .map(|e| e.exp_ms)
    }

    /// The live entries of a namespace, in key order.
    pub fn list(&self, ns: &str, now_ms: u64) -> Vec<(String, Entry)> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(ns)
            .map(|m| {
                m.iter()
                    .filter(|(_, e)| e.live(now_ms))
                    .map(|(k, e)| (k.clone(), e.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every live entry as `put` ops (compaction, writing back to a Redis
    /// that lost its data).
    pub fn snapshot(&self, now_ms: u64) -> Vec<Op> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .flat_map(|(ns, m)| {
                m.iter()
                    .filter(|(_, e)| e.live(now_ms))
                    .map(|(k, e)| Op::Put {
                        ns: ns.clone(),
                        k: k.clone(),
                        v: e.value.to_string(),
                        x: e.exp_ms,
                    })
            })
            .collect()
    }

    /// Replaces everything with `ops`' puts (a resync from Redis).
    pub fn replace_all(&self, ops: &[Op]) {
        let fresh = Shared::default();
        fresh.apply(ops);
        let fresh = fresh.map.into_inner().unwrap_or_else(|p| p.into_inner());
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(ns: &str, k: &str, v: &str, x: Option<u64>) -> Op {
        Op::Put {
            ns: ns.into(),
            k: k.into(),
            v: v.into(),
            x,
        }
    }

    #[test]
    fn batches_apply_in_order_and_expired_entries_read_as_absent() {
        let s = Shared::default();
        s.apply(&[
            put("a", "1", "one", None),
            put("a", "2", "two", Some(100)),
            put("b", "1", "x", None),
            Op::Del {
                ns: "b".into(),
                k: "1".into(),
            },
        ]);
        assert_eq!(s.get("a", "1", 50).as_deref(), Some("one"));
        assert!(s.contains("a", "2", 99));
        assert!(!s.contains("a", "2", 100), "expired at its expiry");
        assert_eq!(s.get("b", "1", 0), None);
        assert_eq!(s.list("a", 100).len(), 1);
        assert_eq!(s.snapshot(100), vec![put("a", "1", "one", None)]);
    }

    #[test]
    fn ops_round_trip_through_json() {
        let ops = vec![
            put("rel.x", "[\"i\",\"s\"]", "", Some(5)),
            Op::Del {
                ns: "rel.x".into(),
                k: "k".into(),
            },
        ];
        let text = serde_json::to_string(&ops).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Op>>(&text).unwrap(), ops);
    }

    #[test]
    fn replace_all_drops_what_is_not_in_the_new_state() {
        let s = Shared::default();
        s.apply(&[put("a", "1", "one", None)]);
        s.replace_all(&[put("a", "2", "two", None)]);
        assert!(!s.contains("a", "1", 0));
        assert!(s.contains("a", "2", 0));
    }
}
