//! Notifications for open websockets (`proxy::websocket`): their session
//! may have ended, or their subject's user-directory entry changed.
//!
//! Owns one `tokio::sync::watch` channel per *watched* session (a session
//! with at least one open websocket), keyed like the session table, and an
//! index of the watched sessions by subject. The table fires a session's
//! channel whenever it ends that session (logout, admin revocation,
//! deactivation, idle or lifetime, locally or applied from another
//! gateway's pub/sub event), and a subject's channels when a shared batch
//! changes its directory entry, so a websocket learns of it at once instead
//! of polling. Cost is flat in the number of sockets: firing is one map
//! lookup per ended session (per watched session of the subject), and
//! nothing scans the sockets.
//!
//! A notification carries two counters ([`Wakes`]): one moved by session
//! events, one by subject events. The socket re-checks its session (a
//! store call, a round trip with Redis when its mirror forgot the session)
//! only when the first moved, and what else it was authorized on (memory
//! only) at every wake; the reason is read from the store. A
//! notification sent before the socket subscribed is never needed: the
//! socket subscribes first and then checks, and the table marks a session
//! ended before firing.
//!
//! Must not: hold a map guard across an `.await` (nothing here is async),
//! or take the subject index's guard while holding a session's (the order
//! is subject, then session).

use dashmap::DashMap;
use tokio::sync::watch;

use super::table::Key;

/// What a watched session's channel carries: how many times it was woken
/// for its session (ended, or the store resubscribed) and for its subject
/// (directory entry or relation tuples changed).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wakes {
    pub session: u64,
    pub subject: u64,
}

/// The watched sessions of one table, and which subject each is of (so
/// a change to a subject's user-directory entry wakes only its sockets).
#[derive(Default)]
pub struct Watchers {
    map: DashMap<Key, (watch::Sender<Wakes>, Box<str>)>,
    by_subject: DashMap<Box<str>, Vec<Key>>,
}

impl Watchers {
    /// A receiver that changes whenever `key`'s session (of `subject`)
    /// may have ended.
    pub fn subscribe(&self, key: Key, subject: &str) -> watch::Receiver<Wakes> {
        // Guards are taken in one order everywhere: the subject's entry,
        // then the session's (see `release`).
        let mut keys = self.by_subject.entry(subject.into()).or_default();
        let rx = self
            .map
            .entry(key)
            .or_insert_with(|| (watch::channel(Wakes::default()).0, subject.into()))
            .0
            .subscribe();
        if !keys.contains(&key) {
            keys.push(key);
        }
        rx
    }

    /// Wakes every socket of `key`'s session (no-op when none is open).
    pub fn fire(&self, key: &Key) {
        if let Some(e) = self.map.get(key) {
            e.0.send_modify(|w| w.session += 1);
        }
    }

    /// Wakes every socket of `subject`'s sessions (its directory entry
    /// changed: each re-checks what it was authorized on).
    pub fn fire_subject(&self, subject: &str) {
        let keys = match self.by_subject.get(subject) {
            Some(keys) => keys.clone(),
            None => return,
        };
        for k in &keys {
            if let Some(e) = self.map.get(k) {
                e.0.send_modify(|w| w.subject += 1);
            }
        }
    }

    /// Wakes every watched socket (the Redis store after re-subscribing:
    /// events may have been missed, each socket re-checks its session).
    pub fn fire_all(&self) {
        for kv in self.map.iter() {
            kv.value().0.send_modify(|w| w.session += 1);
        }
    }

    /// Forgets `key`'s channel once its last receiver is gone.
    pub fn release(&self, key: &Key) {
        let Some(subject) = self.map.get(key).map(|e| e.1.clone()) else {
            return;
        };
        // The subject's entry, then the session's, as in `subscribe`: a
        // socket of this session subscribing meanwhile waits, and keeps its
        // key listed.
        let unwatched =
            |_: &Key, (tx, _): &(watch::Sender<Wakes>, Box<str>)| tx.receiver_count() == 0;
        match self.by_subject.entry(subject) {
            dashmap::Entry::Occupied(mut keys) => {
                if self.map.remove_if(key, unwatched).is_some() {
                    keys.get_mut().retain(|k| k != key);
                    if keys.get().is_empty() {
                        keys.remove();
                    }
                }
            }
            dashmap::Entry::Vacant(_) => {
                self.map.remove_if(key, unwatched);
            }
        }
    }

    /// Sessions with at least one open websocket.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fire_wakes_subscribers_and_release_forgets_unwatched_sessions() {
        let w = Watchers::default();
        let (a, b) = (Key([1; 32]), Key([2; 32]));
        let mut ra = w.subscribe(a, "alice");
        let mut ra2 = w.subscribe(a, "alice");
        let rb = w.subscribe(b, "bob");
        assert_eq!(w.len(), 2);
        w.fire(&a);
        assert!(ra.has_changed().unwrap());
        assert!(ra2.has_changed().unwrap());
        assert!(!rb.has_changed().unwrap());
        ra.changed().await.unwrap();
        ra2.mark_unchanged();
        // One receiver left: kept.
        drop(ra);
        w.release(&a);
        assert_eq!(w.len(), 2);
        drop(ra2);
        w.release(&a);
        assert_eq!(w.len(), 1);
        // Firing an unwatched session does nothing.
        w.fire(&a);
        w.fire_all();
        assert!(rb.has_changed().unwrap());
    }

    #[tokio::test]
    async fn fire_subject_wakes_only_that_subjects_sessions_while_watched() {
        let w = Watchers::default();
        let (a1, a2, b) = (Key([1; 32]), Key([2; 32]), Key([3; 32]));
        let mut ra1 = w.subscribe(a1, "alice");
        let ra2 = w.subscribe(a2, "alice");
        let mut rb = w.subscribe(b, "bob");
        w.fire_subject("alice");
        assert!(ra1.has_changed().unwrap() && ra2.has_changed().unwrap());
        assert!(!rb.has_changed().unwrap());
        // A subject's wake is told apart from a session's.
        assert_eq!(
            *ra1.borrow(),
            Wakes {
                session: 0,
                subject: 1
            }
        );
        w.fire(&a1);
        assert_eq!(
            *ra1.borrow(),
            Wakes {
                session: 1,
                subject: 1
            }
        );
        ra1.mark_unchanged();
        drop(ra2);
        w.release(&a2);
        assert_eq!(w.by_subject.get("alice").unwrap().as_slice(), &[a1]);
        drop(ra1);
        w.release(&a1);
        assert!(
            w.by_subject.get("alice").is_none(),
            "forgotten with its last socket"
        );
        w.fire_subject("alice");
        w.fire_subject("bob");
        assert!(rb.has_changed().unwrap());
        rb.mark_unchanged();
    }
}
