//! The embedded store (default): the session table in memory, made durable
//! by the journal in `state_dir`.
//!
//! Durability: an ended session, a deactivation or a reactivation is
//! written to the journal *before* the request or admin call is answered,
//! so a restart (also `kill -9`) forgets none of them. Activity times are
//! coalesced and written every `flush_interval` (default 250 ms): after a
//! crash a session's last activity is at most that much older than it
//! really was, so its idle timer can only run *ahead* by that bound, never
//! be reset. A background task also sweeps idle sessions to ended and
//! drops records once their token has expired and `retention` has passed.
//!
//! Deactivating a user ends every session the user has (for good: a
//! reactivated user must log in again), in the same journaled step.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::journal::Journal;
use super::table::{Change, EndReason, Record, RevokedId, SessionRef, Table, Touch, Verdict};
use super::{SessionSettings, StoreError, now_ms};

/// Sweep and compaction run every this many flush ticks.
const SWEEP_EVERY: u32 = 40;
/// Compact once this many lines were appended (and more than twice the
/// live entries), so the journal stays proportional to live state.
const COMPACT_AFTER: usize = 100_000;

struct Inner {
    table: Table,
    journal: Journal,
    retention_ms: u64,
    /// Deactivate/reactivate change memory and journal under one lock, so
    /// the journal's order is memory's order and a restart replays the
    /// last word, not an interleaving.
    user_ops: std::sync::Mutex<()>,
}

pub struct EmbeddedStore {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn io_err(e: std::io::Error) -> StoreError {
    tracing::error!(error = %e, "session journal write failed");
    StoreError(format!("journal write failed: {e}"))
}

impl Inner {
    fn flush(&self) {
        let dirty = self.table.take_dirty();
        if dirty.is_empty() {
            return;
        }
        match self.journal.records(&dirty) {
            // Activity is most of what is appended: it is what makes the
            // journal grow, so it is what compacts it.
            Ok(appended) => self.maybe_compact(appended),
            Err(e) => {
                tracing::error!(error = %e, sessions = dirty.len(), "session activity flush failed")
            }
        }
    }

    /// Makes a change already applied to memory durable: `write` appends its
    /// lines, and the file is synced (an acknowledged logout, revocation or
    /// deactivation must survive a power loss, not only a crash of this
    /// process). If that fails, or an earlier write failed (the journal may
    /// lack changes memory holds), the journal is rewritten from memory
    /// instead, which holds this change too. Err: the change is not known
    /// to be on disk, so the caller must not report success.
    fn persist(
        &self,
        write: impl FnOnce(&Journal) -> std::io::Result<usize>,
    ) -> Result<usize, StoreError> {
        match write(&self.journal).and_then(|n| self.journal.sync().map(|()| n)) {
            Ok(n) => Ok(n),
            Err(e) => {
                tracing::error!(error = %e, "session journal append failed; rewriting it from memory");
                self.journal.compact(&self.table).map_err(io_err)?;
                Ok(0)
            }
        }
    }

    fn housekeeping(&self) {
        // A failed write left changes only in memory: retry the rewrite.
        if self.journal.needs_rewrite()
            && let Err(e) = self.journal.compact(&self.table)
        {
            tracing::error!(error = %e, "session journal rewrite failed (retried)");
        }
        let ended = self.table.sweep(self.table.sweep_now(), self.retention_ms);
        match self.journal.records(&ended) {
            Ok(appended) => self.maybe_compact(appended),
            Err(e) => tracing::error!(error = %e, "session sweep journal write failed"),
        }
    }

    fn maybe_compact(&self, appended: usize) {
        if appended > COMPACT_AFTER
            && appended > 2 * self.table.len()
            && let Err(e) = self.journal.compact(&self.table)
        {
            tracing::error!(error = %e, "session journal compaction failed");
        }
    }
}

impl EmbeddedStore {
    pub fn open(state_dir: &Path, settings: &SessionSettings) -> Result<EmbeddedStore, String> {
        let table = Table::new();
        let retention_ms = settings.retention.as_millis() as u64;
        let journal = Journal::open(state_dir, &table, retention_ms)?;
        let inner = Arc::new(Inner {
            table,
            journal,
            retention_ms,
            user_ops: std::sync::Mutex::new(()),
        });
        let bg = inner.clone();
        let every = settings.flush_interval.max(Duration::from_millis(10));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u32 = 0;
            loop {
                tick.tick().await;
                bg.flush();
                n = n.wrapping_add(1);
                if n.is_multiple_of(SWEEP_EVERY) {
                    bg.housekeeping();
                }
            }
        });
        Ok(EmbeddedStore { inner, task })
    }

    pub fn check(&self, t: &Touch<'_>) -> Result<Verdict, StoreError> {
        let (verdict, change) = self.inner.table.check(t);
        if let Change::Ended(r) = change {
            // The refusal is decided and holds in memory: answered as such
            // even if it cannot be written (a store error here would let
            // `on_store_error: allow` forward the request). The journal is
            // then rewritten from memory at the next write or housekeeping.
            match self.inner.persist(|j| j.records(&[r])) {
                Ok(n) => self.inner.maybe_compact(n),
                Err(e) => {
                    tracing::error!(error = %e, ?verdict, "session end not yet durable; refused anyway")
                }
            }
        }
        Ok(verdict)
    }

    pub fn end(
        &self,
        id: SessionRef<'_>,
        reason: EndReason,
        keep_until_ms: u64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        match self
            .inner
            .table
            .end(id, reason, now, keep_until_ms.max(now))
        {
            Some(r) => {
                self.inner.persist(|j| j.records(&[r]))?;
                Ok(true)
            }
            // Ended before; a retry after a failed write must not answer
            // before that end is on disk.
            None => {
                self.inner.persist(|j| j.records(&[]))?;
                Ok(false)
            }
        }
    }

    /// Revokes a session id for every user; returns whether a session with
    /// that id was active.
    pub fn revoke_id(&self, session: &str, keep_until_ms: u64) -> Result<bool, StoreError> {
        let now = now_ms();
        let r = RevokedId {
            at_ms: now,
            until_ms: keep_until_ms.max(now),
        };
        let ended = self.inner.table.revoke_id(session, r.at_ms, r.until_ms);
        self.inner.persist(|j| j.revoke_id(session, r, &ended))?;
        Ok(!ended.is_empty())
    }

    pub fn end_user(&self, subject: &str) -> Result<usize, StoreError> {
        let ended = self
            .inner
            .table
            .end_user(subject, EndReason::Revoked, now_ms());
        self.inner.persist(|j| j.records(&ended))?;
        Ok(ended.len())
    }

    /// Deactivates a user and ends every session the user has: recorded
    /// first (so requests in flight are refused), then the sessions are
    /// ended, both journaled before the call returns.
    /// Deactivates `subject`: whether it was not deactivated yet, and the
    /// cut-off it now has (later than any before: two deactivations never
    /// share one, so a cut-off names the deactivation that set it).
    pub fn deactivate(&self, subject: &str) -> Result<(bool, u64), StoreError> {
        let _order = self
            .inner
            .user_ops
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        let at = self
            .inner
            .table
            .not_before(subject)
            .map_or(now, |nb| now.max(nb + 1));
        let changed = self.inner.table.deactivate(subject, at);
        // Ended in memory before anything is written: open websockets and
        // streams close at once even when the journal cannot take it (the
        // call then fails, and is retried).
        let ended = self.inner.table.end_user(subject, EndReason::Revoked, now);
        // One write: a crash never keeps the deactivation without the
        // sessions it ended.
        self.inner.persist(|j| j.deactivate(subject, at, &ended))?;
        Ok((changed, at))
    }

    pub fn reactivate(&self, subject: &str) -> Result<bool, StoreError> {
        let _order = self
            .inner
            .user_ops
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let changed = self.inner.table.reactivate(subject);
        self.inner.persist(|j| j.reactivate(subject))?;
        Ok(changed)
    }

    /// A batch of shared records: memory, then the journal (a failed
    /// append is rewritten from memory, as for every other change, and the
    /// call fails only if that fails too: then memory is put back, so a
    /// failed call changed nothing). One lock orders batches, so the
    /// journal replays them in memory's order.
    /// `Ok(false)`: a condition in `expect` did not hold, nothing written.
    pub fn shared_apply(
        &self,
        expect: &[super::SharedExpect],
        ops: &[super::SharedOp],
    ) -> Result<bool, StoreError> {
        let _order = self
            .inner
            .user_ops
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let shared = self.inner.table.shared();
        if !shared.holds(expect, super::now_ms()) {
            return Ok(false);
        }
        let undo = shared.inverse(ops);
        shared.apply(ops);
        if let Err(e) = self.inner.persist(|j| j.state(ops)) {
            shared.apply(&undo);
            // A socket authorized on the batch while it was visible
            // re-checks against what is back.
            self.inner.table.shared_changed(ops);
            return Err(e);
        }
        self.inner.table.shared_changed(ops);
        Ok(true)
    }

    pub fn is_deactivated(&self, subject: &str) -> bool {
        self.inner.table.is_deactivated(subject)
    }

    pub fn sessions_of(&self, subject: &str) -> Vec<Record> {
        self.inner.table.sessions_of(subject)
    }

    pub fn flush(&self) {
        self.inner.flush();
    }

    /// The table, for benchmarks and memory measurements.
    pub fn table(&self) -> &Table {
        &self.inner.table
    }
}

#[cfg(test)]
mod tests {
    use super::super::journal::Fault;
    use super::*;

    pub(super) fn open(tag: &str) -> (EmbeddedStore, std::path::PathBuf) {
        let d =
            std::env::temp_dir().join(format!("rolegate-embedded-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let settings = super::super::embedded_test_settings(&d);
        (EmbeddedStore::open(&d, &settings).unwrap(), d)
    }

    pub(super) fn touch(session: &str, now_ms: u64, idle_ms: u64) -> Touch<'_> {
        Touch {
            issuer: "https://idp.test",
            subject: "u1",
            session,
            now_ms,
            idle_ms,
            max_lifetime_ms: None,
            token_exp_ms: u64::MAX / 4,
            token_iat_ms: Some(0),
            touch: true,
            key: None,
        }
    }

    #[tokio::test]
    async fn a_retried_logout_is_not_acknowledged_before_the_end_is_on_disk() {
        let (store, d) = open("retry");
        let t = touch("s1", now_ms(), 60_000);
        assert_eq!(store.check(&t).unwrap(), Verdict::Active);
        store.flush();
        // The disk is full: the logout fails (its end is already in memory).
        store.inner.journal.inject(Some(Fault::Full));
        assert!(store.end(t.id(), EndReason::Logout, 0).is_err());
        // Retried while the disk is still full: still not acknowledged.
        assert!(store.end(t.id(), EndReason::Logout, 0).is_err());
        assert!(store.end_user("u1").is_err());
        // Space again: the retry rewrites the journal from memory.
        store.inner.journal.inject(None);
        assert!(!store.end(t.id(), EndReason::Logout, 0).unwrap());
        let text = std::fs::read_to_string(d.join("sessions.journal")).unwrap();
        assert!(
            text.lines()
                .any(|l| l.contains("\"op\":\"end\"") && l.contains("\"s\":\"s1\"")),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// An acknowledged end is synced to the disk; a sync that fails is a
    /// failed write (the journal is rewritten from memory, and synced,
    /// before the call answers).
    #[tokio::test]
    async fn acknowledged_ends_are_synced_to_the_disk() {
        let (store, d) = open("sync");
        let t = touch("s1", now_ms(), 60_000);
        assert_eq!(store.check(&t).unwrap(), Verdict::Active);
        store.inner.journal.inject(Some(Fault::Sync));
        assert!(store.end(t.id(), EndReason::Logout, 0).unwrap());
        assert_eq!(store.inner.journal.fault(), None, "the end was not synced");
        // The failed sync had the journal rewritten (and synced) from memory.
        assert!(!store.inner.journal.needs_rewrite());
        let text = std::fs::read_to_string(d.join("sessions.journal")).unwrap();
        assert!(
            text.lines()
                .any(|l| l.contains("\"op\":\"end\"") && l.contains("\"s\":\"s1\"")),
            "{text}"
        );
        // Repeated logouts of the ended session append nothing: no sync.
        let syncs = store.inner.journal.syncs();
        for _ in 0..100 {
            assert!(!store.end(t.id(), EndReason::Logout, 0).unwrap());
        }
        assert_eq!(store.inner.journal.syncs(), syncs);
        assert!(store.deactivate("u1").unwrap().0);
        assert!(
            store.inner.journal.syncs() > syncs,
            "the deactivation was not synced"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Activity is what makes the journal grow: its flushes compact it
    /// (not only a request that ends a session).
    #[tokio::test]
    async fn activity_flushes_keep_the_journal_compact() {
        let (store, d) = open("compact");
        let now = now_ms();
        let ids: Vec<String> = (0..1_000).map(|i| format!("s{i}")).collect();
        for round in 0..(COMPACT_AFTER as u64 / 1_000 + 2) {
            for id in &ids {
                let t = touch(id, now + round, 60_000);
                assert_eq!(store.check(&t).unwrap(), Verdict::Active);
            }
            store.flush();
        }
        let lines = std::fs::read_to_string(d.join("sessions.journal"))
            .unwrap()
            .lines()
            .count();
        assert!(
            lines < 4 * ids.len(),
            "{lines} lines for {} sessions",
            ids.len()
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A rewrite whose rename cannot be made durable (the directory sync
    /// fails) is not taken as done: it stays pending, and the next write
    /// rewrites again before it answers.
    #[tokio::test]
    async fn a_rewrite_is_done_only_once_its_directory_is_synced() {
        let (store, d) = open("dirsync");
        let t = touch("s1", now_ms(), 60_000);
        assert_eq!(store.check(&t).unwrap(), Verdict::Active);
        store.inner.journal.inject(Some(Fault::DirSync));
        assert!(store.inner.journal.compact(store.table()).is_err());
        assert!(store.inner.journal.needs_rewrite());
        assert!(store.end(t.id(), EndReason::Logout, 0).unwrap());
        assert!(!store.inner.journal.needs_rewrite());
        let text = std::fs::read_to_string(d.join("sessions.journal")).unwrap();
        assert!(text.lines().any(|l| l.contains("\"op\":\"end\"")), "{text}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A shared record without an expiry.
    fn shared_put(ns: &str, k: &str, v: &str) -> super::super::SharedOp {
        super::super::SharedOp::Put {
            ns: ns.into(),
            k: k.into(),
            v: v.into(),
            x: None,
        }
    }

    /// A shared batch the journal cannot take fails and changes nothing
    /// (a pusher told 503 may retry or give up; nothing half-applied).
    #[tokio::test]
    async fn a_failed_shared_batch_changes_nothing() {
        use super::super::SharedOp;
        let (store, d) = open("shared-undo");
        let put = |k: &str, v: &str| shared_put("rel.t", k, v);
        assert!(store.shared_apply(&[], &[put("a", "1")]).unwrap());
        store.inner.journal.inject(Some(Fault::Full));
        let batch = [
            put("a", "2"),
            put("b", "1"),
            SharedOp::Del {
                ns: "rel.t".into(),
                k: "a".into(),
            },
        ];
        assert!(store.shared_apply(&[], &batch).is_err());
        let shared = store.table().shared();
        assert_eq!(shared.get("rel.t", "a", 0).as_deref(), Some("1"));
        assert_eq!(shared.get("rel.t", "b", 0), None);
        // Space again: the rewrite from memory has the first batch only.
        store.inner.journal.inject(None);
        store.inner.housekeeping();
        let text = std::fs::read_to_string(d.join("sessions.journal")).unwrap();
        assert!(!text.contains("\"b\""), "{text}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A batch with conditions is written only when each holds: a key
    /// holding the value read, or nothing when nothing was read.
    #[tokio::test]
    async fn a_conditional_batch_is_written_only_on_what_was_read() {
        use super::super::SharedExpect;
        let (store, d) = open("shared-cas");
        let put = |k: &str, v: &str| shared_put("users", k, v);
        let read = |k: &str, v: Option<&str>| SharedExpect {
            ns: "users".into(),
            k: k.into(),
            v: v.map(str::to_string),
        };
        let shared = store.table().shared();
        assert!(
            store
                .shared_apply(&[read("a", None)], &[put("a", "1")])
                .unwrap()
        );
        // Read "1", someone wrote "2" since: refused, nothing written.
        assert!(store.shared_apply(&[], &[put("a", "2")]).unwrap());
        let stale = [read("a", Some("1")), read("b", None)];
        assert!(
            !store
                .shared_apply(&stale, &[put("a", "3"), put("b", "3")])
                .unwrap()
        );
        assert_eq!(shared.get("users", "a", 0).as_deref(), Some("2"));
        assert_eq!(shared.get("users", "b", 0), None);
        // Created meanwhile: a write that read nothing is refused.
        assert!(
            !store
                .shared_apply(&[read("a", None)], &[put("a", "4")])
                .unwrap()
        );
        let fresh = [read("a", Some("2")), read("b", None)];
        assert!(
            store
                .shared_apply(&fresh, &[put("a", "3"), put("b", "3")])
                .unwrap()
        );
        assert_eq!(shared.get("users", "a", 0).as_deref(), Some("3"));
        let text = std::fs::read_to_string(d.join("sessions.journal")).unwrap();
        assert!(!text.contains("\"4\""), "{text}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Every deactivation has a cut-off of its own, later than the last
    /// one, however close together they come.
    #[tokio::test]
    async fn each_deactivation_has_its_own_cut_off() {
        let (store, d) = open("cutoffs");
        let (first, a) = store.deactivate("u2").unwrap();
        let (again, b) = store.deactivate("u2").unwrap();
        assert!(first && !again);
        assert!(b > a, "{b} after {a}");
        assert_eq!(store.table().not_before("u2"), Some(b));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A deactivation the journal cannot take still ends the user's
    /// sessions in memory at once (their websockets and streams close).
    #[tokio::test]
    async fn an_unwritable_deactivation_still_ends_the_sessions() {
        let (store, d) = open("deact");
        let t = touch("s1", now_ms(), 60_000);
        assert_eq!(store.check(&t).unwrap(), Verdict::Active);
        let ended = store
            .inner
            .table
            .watchers()
            .subscribe(t.id().key(), t.subject);
        store.inner.journal.inject(Some(Fault::Full));
        assert!(store.deactivate("u1").is_err());
        assert!(store.inner.table.get(t.id()).unwrap().ended.is_some());
        assert!(
            ended.has_changed().unwrap_or(true),
            "the session's watchers were not told"
        );
        assert_eq!(store.check(&t).unwrap(), Verdict::Deactivated);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn a_decided_refusal_is_answered_even_when_it_cannot_be_written() {
        let (store, d) = open("refusal");
        let now = now_ms();
        assert_eq!(
            store.check(&touch("s1", now, 1_000)).unwrap(),
            Verdict::Active
        );
        store.inner.journal.inject(Some(Fault::Full));
        // Idle: ended in memory, not writable: still the refusal, not a
        // store error that `on_store_error: allow` would let through.
        assert_eq!(
            store.check(&touch("s1", now + 5_000, 1_000)).unwrap(),
            Verdict::Ended(EndReason::Idle)
        );
        assert_eq!(
            store.check(&touch("s1", now + 5_001, 1_000)).unwrap(),
            Verdict::Ended(EndReason::Idle)
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
