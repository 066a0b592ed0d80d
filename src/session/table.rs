//! The in-memory session table: the state machine both stores share.
//!
//! Owns per-session state (subject, created, last activity, idle timeout,
//! latest token expiry, ended) and the set of deactivated users, with every
//! transition done under the session's DashMap entry lock, so concurrent
//! requests of one session can never race an expired session back to life.
//! Pure and synchronous: time comes in as `now_ms`, durability (journal,
//! Redis) is the caller's business, driven by the returned [`Change`].
//!
//! LIFECYCLE of one session id:
//! ```text
//!   (unknown) --first request--> active --request within idle--> active (last = now)
//!                                  |  \--request after idle / lifetime--> ended(idle|lifetime)
//!                                  \----logout / admin revoke / sweep-----> ended(logout|revoked|idle)
//!   ended --any request--> ended (never active again)
//!   ended|active --token expiry + retention passed--> dropped by `sweep`
//! ```

use dashmap::DashMap;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Idle,
    Lifetime,
    Logout,
    Revoked,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Idle => "idle",
            EndReason::Lifetime => "lifetime",
            EndReason::Logout => "logout",
            EndReason::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<EndReason> {
        Some(match s {
            "idle" => EndReason::Idle,
            "lifetime" => EndReason::Lifetime,
            "logout" => EndReason::Logout,
            "revoked" => EndReason::Revoked,
            _ => return None,
        })
    }
}

/// The session stage's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Active,
    Ended(EndReason),
    Deactivated,
}

/// One request's view of its session.
#[derive(Debug, Clone, Copy)]
pub struct Touch<'a> {
    pub session: &'a str,
    pub subject: &'a str,
    pub now_ms: u64,
    /// The principal's idle timeout (smallest among its roles, else default).
    pub idle_ms: u64,
    pub max_lifetime_ms: Option<u64>,
    /// The token's `exp`, in ms: the session record is kept at least this long.
    pub token_exp_ms: u64,
    /// Refresh last activity (false on passive routes and denied requests).
    pub touch: bool,
}

/// What a transition changed, for the durability layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    None,
    /// Created or touched; already queued for the next activity flush.
    Activity,
    /// Ended just now: must be made durable before answering.
    Ended(Record),
}

/// A session's state, as journaled or listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub session: String,
    pub subject: String,
    pub created_ms: u64,
    pub last_ms: u64,
    pub idle_ms: u64,
    pub exp_ms: u64,
    pub ended: Option<(EndReason, u64)>,
}

/// Kept small: one million of these must fit well under 512 MB.
struct Entry {
    subject: Box<str>,
    created: u64,
    last: u64,
    exp: u64,
    /// When it ended (meaningful only with `ended`).
    ended_at: u64,
    /// Milliseconds; u32 holds 49 days, far beyond any idle timeout.
    idle: u32,
    ended: Option<EndReason>,
    /// Touched since the last flush.
    dirty: bool,
}

fn idle_u32(ms: u64) -> u32 {
    u32::try_from(ms).unwrap_or(u32::MAX)
}

impl Entry {
    fn new(subject: &str, now: u64, idle_ms: u64, exp: u64) -> Entry {
        Entry {
            subject: subject.into(),
            created: now,
            last: now,
            exp,
            ended_at: 0,
            idle: idle_u32(idle_ms),
            ended: None,
            dirty: false,
        }
    }

    fn ended(&self) -> Option<(EndReason, u64)> {
        self.ended.map(|r| (r, self.ended_at))
    }

    fn end(&mut self, reason: EndReason, at: u64) {
        self.ended = Some(reason);
        self.ended_at = at;
    }

    fn record(&self, session: &str) -> Record {
        Record {
            session: session.to_string(),
            subject: self.subject.to_string(),
            created_ms: self.created,
            last_ms: self.last,
            idle_ms: u64::from(self.idle),
            exp_ms: self.exp,
            ended: self.ended(),
        }
    }
}

/// All sessions and deactivated users one gateway knows about.
///
/// Activity to flush is found by scanning for `dirty` entries (a few ms
/// per million sessions, once per `flush_interval`) rather than by queueing
/// ids on the request path: no lock and no allocation per request.
#[derive(Default)]
pub struct Table {
    sessions: DashMap<Box<str>, Entry>,
    deactivated: DashMap<Box<str>, u64>,
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn is_deactivated(&self, subject: &str) -> bool {
        self.deactivated.contains_key(subject)
    }

    /// The per-request transition: check, and touch unless told not to.
    pub fn check(&self, t: &Touch<'_>) -> (Verdict, Change) {
        if self.is_deactivated(t.subject) {
            return (Verdict::Deactivated, Change::None);
        }
        if let Some(mut e) = self.sessions.get_mut(t.session) {
            e.exp = e.exp.max(t.token_exp_ms);
            if let Some(reason) = e.ended {
                return (Verdict::Ended(reason), Change::None);
            }
            // Session ids are only unique per issuer; a second user
            // presenting the same id must not ride on (or end) the first
            // user's session: refused, the session itself untouched.
            if &*e.subject != t.subject && !e.subject.is_empty() {
                return (Verdict::Ended(EndReason::Revoked), Change::None);
            }
            // The timeout of *this* request's principal applies: a token with
            // fewer roles cannot stretch a shorter timeout seen before.
            let idle = u64::from(e.idle).min(t.idle_ms);
            let reason = if t.now_ms.saturating_sub(e.last) > idle {
                Some(EndReason::Idle)
            } else if t
                .max_lifetime_ms
                .is_some_and(|m| t.now_ms.saturating_sub(e.created) > m)
            {
                Some(EndReason::Lifetime)
            } else {
                None
            };
            if let Some(reason) = reason {
                e.end(reason, t.now_ms);
                return (Verdict::Ended(reason), Change::Ended(e.record(t.session)));
            }
            e.idle = idle_u32(t.idle_ms);
            if t.touch && t.now_ms > e.last {
                e.last = t.now_ms;
                e.dirty = true;
                return (Verdict::Active, Change::Activity);
            }
            return (Verdict::Active, Change::None);
        }
        // First sight of this session id: it starts now. `or_insert` keeps a
        // concurrent first request's entry if that one won the race.
        let mut e = Entry::new(t.subject, t.now_ms, t.idle_ms, t.token_exp_ms);
        e.dirty = true;
        drop(self.sessions.entry(t.session.into()).or_insert(e));
        (Verdict::Active, Change::Activity)
    }

    /// Ends a session for good. Unknown sessions get an ended record too (a
    /// revoked id must stay revoked even if it was never seen). Returns the
    /// record when it was not ended before.
    pub fn end(
        &self,
        session: &str,
        subject: &str,
        reason: EndReason,
        now_ms: u64,
        keep_until_ms: u64,
    ) -> Option<Record> {
        let mut e = self
            .sessions
            .entry(session.into())
            .or_insert_with(|| Entry::new(subject, now_ms, 0, keep_until_ms));
        e.exp = e.exp.max(keep_until_ms);
        if e.ended.is_some() {
            return None;
        }
        e.end(reason, now_ms);
        Some(e.record(session))
    }

    /// Ends every active session of `subject`; returns the newly ended ones.
    pub fn end_user(&self, subject: &str, reason: EndReason, now_ms: u64) -> Vec<Record> {
        let mut out = Vec::new();
        for mut kv in self.sessions.iter_mut() {
            if &*kv.subject == subject && kv.ended.is_none() {
                kv.end(reason, now_ms);
                out.push(kv.record(kv.key()));
            }
        }
        out
    }

    /// Returns true when the state changed.
    pub fn deactivate(&self, subject: &str, now_ms: u64) -> bool {
        self.deactivated.insert(subject.into(), now_ms).is_none()
    }

    pub fn reactivate(&self, subject: &str) -> bool {
        self.deactivated.remove(subject).is_some()
    }

    pub fn deactivated(&self) -> Vec<(String, u64)> {
        self.deactivated
            .iter()
            .map(|kv| (kv.key().to_string(), *kv.value()))
            .collect()
    }

    /// The sessions of one user (admin listing; a full scan).
    pub fn sessions_of(&self, subject: &str) -> Vec<Record> {
        let mut v: Vec<Record> = self
            .sessions
            .iter()
            .filter(|kv| &*kv.subject == subject)
            .map(|kv| kv.record(kv.key()))
            .collect();
        v.sort_by(|a, b| {
            a.created_ms
                .cmp(&b.created_ms)
                .then_with(|| a.session.cmp(&b.session))
        });
        v
    }

    pub fn get(&self, session: &str) -> Option<Record> {
        self.sessions.get(session).map(|e| e.record(session))
    }

    /// Sessions touched since the last call, for the activity flush.
    pub fn take_dirty(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for mut kv in self.sessions.iter_mut() {
            if kv.dirty {
                kv.dirty = false;
                out.push(kv.record(kv.key()));
            }
        }
        out
    }

    /// Every record (journal compaction).
    pub fn snapshot(&self) -> Vec<Record> {
        self.sessions.iter().map(|kv| kv.record(kv.key())).collect()
    }

    /// Housekeeping: ends sessions idle past their timeout (so listings and
    /// other instances see them ended) and drops records that can no longer
    /// matter: token expired and `retention_ms` passed since it ended or was
    /// last active. Returns the newly ended records.
    pub fn sweep(&self, now_ms: u64, retention_ms: u64) -> Vec<Record> {
        let mut ended = Vec::new();
        self.sessions.retain(|id, e| {
            if e.ended.is_none() && now_ms.saturating_sub(e.last) > u64::from(e.idle) {
                e.end(EndReason::Idle, now_ms);
                ended.push(e.record(id));
            }
            let since = if e.ended.is_some() {
                e.ended_at
            } else {
                e.last
            };
            e.exp > now_ms || now_ms.saturating_sub(since) <= retention_ms
        });
        ended
    }

    /// Applies a record from the journal or another instance: never brings
    /// an ended session back, never moves activity backwards.
    pub fn apply(&self, r: &Record) {
        let mut e = self
            .sessions
            .entry(r.session.as_str().into())
            .or_insert_with(|| Entry::new(&r.subject, r.created_ms, r.idle_ms, r.exp_ms));
        e.last = e.last.max(r.last_ms);
        e.created = e.created.min(r.created_ms);
        e.exp = e.exp.max(r.exp_ms);
        if r.idle_ms > 0 {
            e.idle = idle_u32(r.idle_ms);
        }
        if e.ended.is_none()
            && let Some((reason, at)) = r.ended
        {
            e.end(reason, at);
        }
    }

    /// Forgets everything not ended (Redis store: after a reconnect the
    /// local mirror is re-read from Redis).
    pub fn forget_active(&self) {
        self.sessions.retain(|_, e| e.ended.is_some());
    }

    pub fn set_deactivated(&self, subject: &str, since_ms: u64) {
        self.deactivated.insert(subject.into(), since_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(session: &'static str, now_ms: u64, idle_ms: u64) -> Touch<'static> {
        Touch {
            session,
            subject: "u1",
            now_ms,
            idle_ms,
            max_lifetime_ms: None,
            token_exp_ms: 10_000_000,
            touch: true,
        }
    }

    #[test]
    fn idle_session_ends_and_never_comes_back() {
        let t = Table::new();
        assert_eq!(t.check(&touch("s", 1_000, 500)).0, Verdict::Active);
        assert_eq!(t.check(&touch("s", 1_400, 500)).0, Verdict::Active);
        // 600 ms after the last activity: idle.
        let (v, c) = t.check(&touch("s", 2_000, 500));
        assert_eq!(v, Verdict::Ended(EndReason::Idle));
        assert!(matches!(c, Change::Ended(_)));
        // Even a request "in time" later, or with a longer timeout, stays ended.
        assert_eq!(
            t.check(&touch("s", 2_001, 1_000_000)).0,
            Verdict::Ended(EndReason::Idle)
        );
    }

    #[test]
    fn passive_requests_do_not_refresh() {
        let t = Table::new();
        t.check(&touch("s", 1_000, 500));
        let mut p = touch("s", 1_400, 500);
        p.touch = false;
        assert_eq!(t.check(&p).0, Verdict::Active);
        let mut p = touch("s", 1_600, 500);
        p.touch = false;
        assert_eq!(t.check(&p).0, Verdict::Ended(EndReason::Idle));
    }

    #[test]
    fn shorter_timeout_of_the_current_token_applies() {
        let t = Table::new();
        t.check(&touch("s", 1_000, 10_000));
        assert_eq!(
            t.check(&touch("s", 2_000, 500)).0,
            Verdict::Ended(EndReason::Idle)
        );
    }

    #[test]
    fn lifetime_and_deactivation() {
        let t = Table::new();
        let mut a = touch("s", 1_000, 10_000);
        a.max_lifetime_ms = Some(2_000);
        t.check(&a);
        a.now_ms = 2_500;
        assert_eq!(t.check(&a).0, Verdict::Active);
        a.now_ms = 3_500;
        assert_eq!(t.check(&a).0, Verdict::Ended(EndReason::Lifetime));
        assert!(t.deactivate("u1", 5));
        assert_eq!(
            t.check(&touch("other", 4_000, 10_000)).0,
            Verdict::Deactivated
        );
        assert!(t.reactivate("u1"));
        assert_eq!(t.check(&touch("other", 4_000, 10_000)).0, Verdict::Active);
    }

    #[test]
    fn revoking_an_unknown_session_keeps_it_revoked() {
        let t = Table::new();
        assert!(
            t.end("never-seen", "u9", EndReason::Revoked, 100, 5_000)
                .is_some()
        );
        assert!(
            t.end("never-seen", "u9", EndReason::Revoked, 100, 5_000)
                .is_none()
        );
        assert_eq!(
            t.check(&touch("never-seen", 200, 10_000)).0,
            Verdict::Ended(EndReason::Revoked)
        );
    }

    #[test]
    fn end_user_and_sweep() {
        let t = Table::new();
        t.check(&touch("a", 1_000, 10_000));
        t.check(&touch("b", 1_000, 10_000));
        let mut other = touch("c", 1_000, 500);
        other.subject = "u2";
        t.check(&other);
        assert_eq!(t.end_user("u1", EndReason::Revoked, 1_100).len(), 2);
        assert_eq!(
            t.sessions_of("u1")
                .iter()
                .filter(|r| r.ended.is_some())
                .count(),
            2
        );
        // c is idle at 2000: the sweep ends it; nothing is dropped before token expiry.
        let ended = t.sweep(2_000, 1_000);
        assert_eq!(ended.len(), 1);
        assert_eq!(t.len(), 3);
        // After token expiry plus retention everything goes.
        assert_eq!(t.sweep(20_000_000, 1_000).len(), 0);
        assert!(t.is_empty());
    }

    #[test]
    fn apply_never_revives_or_rewinds() {
        let t = Table::new();
        t.end("s", "u1", EndReason::Logout, 1_000, 9_000);
        let mut r = t.get("s").unwrap();
        r.ended = None;
        r.last_ms = 50;
        t.apply(&r);
        let now = t.get("s").unwrap();
        assert_eq!(now.ended.map(|e| e.0), Some(EndReason::Logout));
        assert_eq!(now.last_ms, 1_000);
    }

    #[test]
    fn dirty_sessions_are_flushed_once() {
        let t = Table::new();
        t.check(&touch("s", 1_000, 10_000));
        t.check(&touch("s", 1_001, 10_000));
        let d = t.take_dirty();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].last_ms, 1_001);
        assert!(t.take_dirty().is_empty());
    }

    #[test]
    fn another_user_presenting_the_same_session_id_is_refused() {
        let t = Table::new();
        assert_eq!(t.check(&touch("shared", 1_000, 10_000)).0, Verdict::Active);
        let mut other = touch("shared", 1_100, 10_000);
        other.subject = "u2";
        assert_eq!(t.check(&other).0, Verdict::Ended(EndReason::Revoked));
        // The first user's session is untouched.
        assert_eq!(t.check(&touch("shared", 1_200, 10_000)).0, Verdict::Active);
    }
}
