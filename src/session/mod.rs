//! Phase 4, session: inactivity auto-logout, lifetime, logout, revocation
//! and user deactivation, enforced at the edge.
//!
//! Owns the session stores and their settings. A session is identified by
//! the principal's issuer, subject and session id (claim `sid`, else `jti`,
//! else a digest of the token): session ids are only unique per user, so
//! another user's token carrying the same id has a session of its own.
//! Per request the pipeline calls [`Store::check`] once: it refuses a
//! deactivated user, a session id revoked by the admin API or an ended
//! session, ends a session idle past its timeout (or past `max_lifetime`),
//! and otherwise refreshes its last activity when asked to (not on
//! `activity: passive` routes, not on denied requests). An ended session
//! never works again; deactivating a user ends all of the user's sessions
//! and sets its not-before cut-off: after reactivation a token issued at or
//! before the deactivation (by `iat`), or without `iat`, is refused too.
//!
//! Two stores share the [`table::Table`] state machine:
//! - `embedded`: in memory + an append-only journal under `state_dir`
//!   (see `journal.rs` for the durability bound);
//! - `redis`: a local mirror of Redis with coalesced activity writes and
//!   pub/sub fan-out of revocations (see `redis.rs`).
//!
//! It knows nothing of HTTP; the pipeline turns verdicts into responses.

mod embedded;
mod journal;
pub mod redis;
pub mod shared;
pub mod table;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use embedded::EmbeddedStore;
pub use redis::RedisStore;
pub use shared::{Entry as SharedEntry, Expect as SharedExpect, Op as SharedOp};
pub use table::{EndReason, Record, SessionRef, Touch, Verdict, issuer_user_key};

/// An open websocket's subscription to its session's end (see `watch.rs`);
/// unsubscribes when dropped.
pub struct SessionWatch {
    store: Arc<Store>,
    key: table::Key,
    rx: Option<tokio::sync::watch::Receiver<watch::Wakes>>,
    /// The session count of the last wake seen.
    session_wakes: u64,
}

impl SessionWatch {
    /// Resolves when the session may have ended or its subject changed (the
    /// caller re-checks): true when the session may have ended (the caller
    /// asks the store), false when only its subject changed. Never resolves
    /// again once the channel is gone.
    pub async fn changed(&mut self) -> bool {
        let seen = match self.rx.as_mut() {
            Some(rx) => match rx.changed().await {
                Ok(()) => Some(rx.borrow_and_update().session),
                Err(_) => None,
            },
            None => None,
        };
        match seen {
            Some(n) => {
                let moved = n != self.session_wakes;
                self.session_wakes = n;
                moved
            }
            None => {
                self.rx = None;
                std::future::pending::<bool>().await
            }
        }
    }
}

impl Drop for SessionWatch {
    fn drop(&mut self) {
        // Our receiver first, so `release` sees the true count.
        self.rx = None;
        self.store.table().watchers().release(&self.key);
    }
}

/// Where sessions live.
#[derive(Debug, Clone)]
pub enum StoreKind {
    Embedded { state_dir: PathBuf },
    Redis { url: String },
}

/// What to do when the store cannot answer (Redis down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Refuse with 503 (default): no session check, no access.
    Deny,
    /// Let requests through without session checks (availability over
    /// idle enforcement); logged at warn on every such request.
    Allow,
}

/// `sessions:` settings.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub idle_timeout: Duration,
    pub max_lifetime: Option<Duration>,
    pub store: StoreKind,
    pub flush_interval: Duration,
    pub retention: Duration,
    pub logout_path: String,
    pub login_url: Option<String>,
    pub on_store_error: OnStoreError,
}

/// The store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("session store unavailable: {0}")]
pub struct StoreError(pub String);

/// A session store (chosen by `sessions.store`).
pub enum Store {
    Embedded(EmbeddedStore),
    Redis(RedisStore),
}

/// Settings of an embedded store in `dir` for unit tests (60 s idle,
/// no lifetime, deny on store errors).
#[cfg(test)]
pub(crate) fn embedded_test_settings(dir: &std::path::Path) -> SessionSettings {
    SessionSettings {
        idle_timeout: std::time::Duration::from_secs(60),
        max_lifetime: None,
        store: StoreKind::Embedded {
            state_dir: dir.to_path_buf(),
        },
        flush_interval: std::time::Duration::from_secs(5),
        retention: std::time::Duration::from_secs(60),
        logout_path: "/.rolegate/logout".into(),
        login_url: None,
        on_store_error: OnStoreError::Deny,
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wall clock as housekeeping reads it. Sweeps drop ended sessions
/// and revocations by their wall-clock age; a clock stepped forward (a bad
/// NTP answer, a VM restored with a wrong time) and then back would have
/// dropped records whose tokens are valid again once the clock is right —
/// a logged-out session usable anew. So this time follows the wall clock
/// only as fast as the monotonic clock runs, catching up with a wall clock
/// that stays ahead at twice that pace (a forward step of D is honoured
/// after D has passed); a step back is followed at once (sweeps come later,
/// never earlier). Requests read the real wall clock (token expiry is
/// wall-clock time); only what is dropped waits.
#[derive(Debug)]
pub struct SteadyWall {
    /// The last time given, the monotonic instant it was given at, and
    /// whether a plausible wall clock was ever read (until then it is
    /// followed as it is: it was not set when the gateway started).
    last: std::sync::Mutex<(u64, std::time::Instant, bool)>,
    /// A lag over a minute was logged (until it is caught up).
    warned: std::sync::atomic::AtomicBool,
}

impl Default for SteadyWall {
    fn default() -> Self {
        SteadyWall {
            last: std::sync::Mutex::new({
                let wall = now_ms();
                (wall, std::time::Instant::now(), wall >= PLAUSIBLE_WALL_MS)
            }),
            warned: Default::default(),
        }
    }
}

/// 2020-01-01 in ms: a wall clock behind this at start was not set, and is
/// followed as it is until it first reads later than this.
const PLAUSIBLE_WALL_MS: u64 = 1_577_836_800_000;

impl SteadyWall {
    pub fn now_ms(&self) -> u64 {
        self.at(now_ms(), std::time::Instant::now())
    }

    /// The time for a wall clock reading `wall_ms` at monotonic `mono`.
    fn at(&self, wall_ms: u64, mono: std::time::Instant) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (prev, at, set) = *last;
        let ran = u64::try_from(mono.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX);
        let t = if wall_ms <= prev.saturating_add(ran) || !set {
            wall_ms
        } else {
            wall_ms.min(prev.saturating_add(ran.saturating_mul(2)))
        };
        *last = (t, mono, set || wall_ms >= PLAUSIBLE_WALL_MS);
        drop(last);
        let lag = wall_ms.saturating_sub(t);
        let warned = self.warned.load(std::sync::atomic::Ordering::Relaxed);
        if lag > 60_000 && !warned {
            self.warned
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                lag_ms = lag,
                "the wall clock jumped ahead of the monotonic clock: session records are dropped on the monotonic time until it has caught up"
            );
        } else if lag == 0 && warned {
            self.warned
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        t
    }
}

impl Store {
    /// Opens the configured store and starts its background tasks (must be
    /// called inside a tokio runtime).
    pub async fn open(settings: &SessionSettings) -> Result<Store, String> {
        match &settings.store {
            StoreKind::Embedded { state_dir } => {
                Ok(Store::Embedded(EmbeddedStore::open(state_dir, settings)?))
            }
            StoreKind::Redis { url } => Ok(Store::Redis(RedisStore::open(url, settings).await?)),
        }
    }

    /// The per-request check (and touch). The Redis check's future (~1.8 KB
    /// of state for a network round trip) is boxed, so that every future
    /// that awaits a check — one per open websocket — stays small.
    pub async fn check(&self, t: &Touch<'_>) -> Result<Verdict, StoreError> {
        match self {
            Store::Embedded(s) => s.check(t),
            Store::Redis(s) => Box::pin(s.check(t)).await,
        }
    }

    /// Writes a batch of shared records (`shared.rs`) durably, then
    /// applies it to memory; with Redis, every instance applies it within
    /// pub/sub latency. All or nothing.
    pub async fn shared_apply(&self, ops: Vec<SharedOp>) -> Result<(), StoreError> {
        match self {
            Store::Embedded(s) => s.shared_apply(&[], &ops).map(|_| ()),
            Store::Redis(s) => Box::pin(s.shared_apply(&[], &ops)).await.map(|_| ()),
        }
    }

    /// [`Store::shared_apply`] if every condition in `expect` holds where
    /// the batch is made durable (the journal's writer; Redis, in the same
    /// script): `Ok(false)`, nothing written, when one does not.
    pub async fn shared_apply_if(
        &self,
        expect: &[SharedExpect],
        ops: Vec<SharedOp>,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(s) => s.shared_apply(expect, &ops),
            Store::Redis(s) => Box::pin(s.shared_apply(expect, &ops)).await,
        }
    }

    /// Whether every condition in `expect` holds now where the batches are
    /// made durable (checked before a write with side effects; the write
    /// itself is still conditional: [`Store::shared_apply_if`]).
    pub async fn shared_holds(&self, expect: &[SharedExpect]) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(s) => Ok(s.table().shared().holds(expect, now_ms())),
            Store::Redis(s) => s.shared_holds(expect).await,
        }
    }

    /// Whether this instance's copy of the shared records can be trusted
    /// now: always with the embedded store; with Redis only while the event
    /// subscription is up (a lost subscription may have missed a removal).
    pub fn shared_fresh(&self) -> bool {
        match self {
            Store::Embedded(_) => true,
            Store::Redis(s) => s.subscribed(),
        }
    }

    /// This instance's copy of the shared records (read per request).
    pub fn shared(&self) -> &shared::Shared {
        self.table().shared()
    }

    /// Ends one session (logout). `keep_until_ms`: keep the ended record at
    /// least until then (the token's expiry). Returns whether it was active
    /// before.
    pub async fn end(
        &self,
        id: SessionRef<'_>,
        reason: EndReason,
        keep_until_ms: u64,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(s) => s.end(id, reason, keep_until_ms),
            Store::Redis(s) => s.end(id, reason, keep_until_ms).await,
        }
    }

    /// Revokes a session id for every user (admin API): every session with
    /// this id ends, and the id is refused whoever presents it until
    /// `keep_until_ms`. Returns whether a session with that id was active
    /// (false for an id never seen).
    pub async fn revoke_id(&self, session: &str, keep_until_ms: u64) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(s) => s.revoke_id(session, keep_until_ms),
            Store::Redis(s) => s.revoke_id(session, keep_until_ms).await,
        }
    }

    /// Ends every session of a user; returns how many were active.
    pub async fn end_user(&self, subject: &str) -> Result<usize, StoreError> {
        match self {
            Store::Embedded(s) => s.end_user(subject),
            Store::Redis(s) => s.end_user(subject).await,
        }
    }

    /// Deactivates a user: every current and future token is refused, and
    /// every session of the user ends for good; the deactivation time
    /// becomes the user's not-before cut-off, so after reactivation only
    /// tokens issued later (new logins) work.
    /// Deactivates `subject`: whether it was not deactivated yet, and its
    /// cut-off now (each deactivation's its own, later than any before).
    pub async fn deactivate(&self, subject: &str) -> Result<(bool, u64), StoreError> {
        match self {
            Store::Embedded(s) => s.deactivate(subject),
            Store::Redis(s) => s.deactivate(subject).await,
        }
    }

    pub async fn reactivate(&self, subject: &str) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(s) => s.reactivate(subject),
            Store::Redis(s) => s.reactivate(subject).await,
        }
    }

    pub async fn is_deactivated(&self, subject: &str) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(s) => Ok(s.is_deactivated(subject)),
            Store::Redis(s) => s.is_deactivated(subject).await,
        }
    }

    /// The user's not-before cut-off (ms): the time of its last
    /// deactivation, if it was ever deactivated.
    pub async fn not_before(&self, subject: &str) -> Result<Option<u64>, StoreError> {
        match self {
            Store::Embedded(s) => Ok(s.table().not_before(subject)),
            Store::Redis(s) => s.not_before(subject).await,
        }
    }

    /// A user's sessions (active and ended), oldest first.
    pub async fn sessions_of(&self, subject: &str) -> Result<Vec<Record>, StoreError> {
        match self {
            Store::Embedded(s) => Ok(s.sessions_of(subject)),
            Store::Redis(s) => s.sessions_of(subject).await,
        }
    }

    /// Which of `subjects` have a session on record (ended ones included,
    /// while their records are kept): one scan of the embedded table, or
    /// one pipelined read per batch of Redis.
    pub async fn subjects_seen(
        &self,
        subjects: &std::collections::HashSet<&str>,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        match self {
            Store::Embedded(s) => Ok(s.table().subjects_seen(subjects)),
            Store::Redis(s) => s.subjects_seen(subjects).await,
        }
    }

    /// Readiness: can the store answer right now?
    pub async fn ready(&self) -> bool {
        match self {
            Store::Embedded(_) => true,
            Store::Redis(s) => s.ready().await,
        }
    }

    /// Whether this gateway already knows the session of `id` is refused
    /// (no I/O): the user deactivated, the token cut off (`iat_ms`), the
    /// session id revoked, or the session ended. For work the pipeline
    /// would do before the session stage (relation lookups), which such a
    /// request must not cause; the session stage still decides.
    pub fn known_refused(&self, id: SessionRef<'_>, iat_ms: Option<u64>) -> bool {
        let table = self.table();
        table.user_deactivated(id.issuer, id.subject)
            || table.is_revoked_id(id.session)
            || table.user_cut_off(id.issuer, id.subject, iat_ms)
            || table.get(id).is_some_and(|r| r.ended.is_some())
    }

    /// Is this session still usable, judged from this gateway's own view
    /// (no I/O)? Used to cut long-lived responses (event streams, slow
    /// downloads) whose session ended after they started: ended, revoked,
    /// user deactivated, idle past `idle_ms` or past `max_lifetime_ms`.
    ///
    /// The embedded table is authoritative, so an unknown session (swept)
    /// counts as ended and idleness is judged locally. A Redis gateway's
    /// table is only a mirror: its own `last` may be older than activity on
    /// other gateways, and it forgets active sessions periodically, so there
    /// only ended sessions (every end is published to every gateway),
    /// deactivations and the maximum lifetime cut a stream. `created_ms` is
    /// the session's start as known when the stream began ([`Store::created_ms`]),
    /// so the lifetime holds whatever the mirror forgets.
    pub fn still_valid(
        &self,
        id: SessionRef<'_>,
        now_ms: u64,
        idle_ms: u64,
        max_lifetime_ms: Option<u64>,
        created_ms: Option<u64>,
    ) -> bool {
        let (table, authoritative) = match self {
            Store::Embedded(s) => (s.table(), true),
            Store::Redis(s) => (s.table(), false),
        };
        if table.user_deactivated(id.issuer, id.subject) || table.is_revoked_id(id.session) {
            return false;
        }
        if let (Some(max), Some(created)) = (max_lifetime_ms, created_ms)
            && now_ms.saturating_sub(created) > max
        {
            return false;
        }
        match table.get(id) {
            Some(r) if r.ended.is_some() => false,
            Some(r) if authoritative => {
                now_ms.saturating_sub(r.last_ms) <= idle_ms
                    && max_lifetime_ms.is_none_or(|m| now_ms.saturating_sub(r.created_ms) <= m)
            }
            Some(_) => true,
            None => !authoritative,
        }
    }

    /// When the session of `key` started, as this gateway knows it (no I/O): right
    /// after its check, the record the check read or mirrored.
    pub fn created_ms(&self, key: &table::Key) -> Option<u64> {
        self.table().get_key(key).map(|r| r.created_ms)
    }

    /// Subscribes to the end of session `id` (an open websocket). Subscribe
    /// first, then check the session: an end between the two is then seen
    /// by the check or by the subscription.
    pub fn watch(self: &Arc<Self>, id: SessionRef<'_>) -> SessionWatch {
        let key = id.key();
        let mut rx = self.table().watchers().subscribe(key, id.subject);
        let session_wakes = rx.borrow_and_update().session;
        SessionWatch {
            store: self.clone(),
            key,
            rx: Some(rx),
            session_wakes,
        }
    }

    /// This gateway's own view of a session (no I/O): for an open
    /// websocket's next idle or lifetime deadline.
    pub fn local_record(&self, id: SessionRef<'_>) -> Option<Record> {
        self.table().get(id)
    }

    fn table(&self) -> &table::Table {
        match self {
            Store::Embedded(s) => s.table(),
            Store::Redis(s) => s.table(),
        }
    }

    /// Makes pending activity durable (shutdown).
    pub async fn flush(&self) {
        match self {
            Store::Embedded(s) => s.flush(),
            Store::Redis(s) => s.flush().await,
        }
    }
}

#[cfg(test)]
mod steady_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_wall_clock_stepped_forward_is_caught_up_at_twice_the_monotonic_pace() {
        let now = now_ms();
        let m0 = Instant::now();
        let s = SteadyWall {
            last: std::sync::Mutex::new((now, m0, true)),
            warned: Default::default(),
        };
        let day = 86_400_000;
        let at = |wall: u64, secs: u64| s.at(wall, m0 + Duration::from_secs(secs));
        // One second later, the clock 10 days ahead: two seconds of it.
        assert_eq!(at(now + 10 * day, 1), now + 2_000);
        // It stays ahead: catches up two seconds a second.
        assert_eq!(at(now + 10 * day + 1_000, 2), now + 4_000);
        // Followed as it is once caught up (here: stepped back).
        assert_eq!(at(now + 3_000, 3), now + 3_000);
        // A clock stepped back is taken as it is: sweeps come later.
        assert_eq!(at(now - 5_000, 4), now - 5_000);
        // And a clock moving normally is followed exactly.
        assert_eq!(at(now - 4_000, 5), now - 4_000);
    }

    #[test]
    fn a_wall_clock_unset_at_start_is_followed_once_set() {
        let m0 = Instant::now();
        let s = SteadyWall {
            last: std::sync::Mutex::new((0, m0, false)),
            warned: Default::default(),
        };
        let now = now_ms();
        assert_eq!(s.at(now, m0 + Duration::from_secs(1)), now);
        // Once set, a step back to 1970 and forward again is not followed
        // at once.
        assert_eq!(s.at(5, m0 + Duration::from_secs(2)), 5);
        assert_eq!(s.at(now + 86_400_000, m0 + Duration::from_secs(3)), 2_005);
    }
}
