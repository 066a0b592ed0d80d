//! Session-end notifications for open websockets (`proxy::websocket`).
//!
//! Owns one `tokio::sync::watch` channel per *watched* session (a session
//! with at least one open websocket), keyed like the session table. The
//! table fires a session's channel whenever it ends that session (logout,
//! admin revocation, deactivation, idle or lifetime, locally or applied from
//! another gateway's pub/sub event), so a websocket learns of the end at
//! once instead of polling. Cost is flat in the number of sockets: firing
//! is one map lookup per ended session, and nothing scans the sockets.
//!
//! A notification carries no payload: the socket re-checks its session
//! and reads the reason from the store. A notification sent before the
//! socket subscribed is never needed: the socket subscribes first and then
//! checks the session, and the table marks a session ended before firing.
//!
//! Must not: hold a map guard across an `.await` (nothing here is async).

use dashmap::DashMap;
use tokio::sync::watch;

use super::table::Key;

/// The watched sessions of one table.
#[derive(Default)]
pub struct Watchers {
    map: DashMap<Key, watch::Sender<()>>,
}

impl Watchers {
    /// A receiver that changes whenever `key`'s session may have ended.
    pub fn subscribe(&self, key: Key) -> watch::Receiver<()> {
        self.map
            .entry(key)
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// Wakes every socket of `key`'s session (no-op when none is open).
    pub fn fire(&self, key: &Key) {
        if let Some(tx) = self.map.get(key) {
            tx.send_replace(());
        }
    }

    /// Wakes every watched socket (the Redis store after re-subscribing:
    /// events may have been missed, each socket re-checks its session).
    pub fn fire_all(&self) {
        for kv in self.map.iter() {
            kv.value().send_replace(());
        }
    }

    /// Forgets `key`'s channel once its last receiver is gone.
    pub fn release(&self, key: &Key) {
        self.map.remove_if(key, |_, tx| tx.receiver_count() == 0);
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
        let mut ra = w.subscribe(a);
        let mut ra2 = w.subscribe(a);
        let rb = w.subscribe(b);
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
}
