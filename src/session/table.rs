//! The in-memory session table: the state machine both stores share.
//!
//! Owns per-session state (issuer, subject, session id, created, last
//! activity, idle timeout, latest token expiry, ended), the set of
//! deactivated users, each user's not-before cut-off (the time of the
//! user's last deactivation) and the session ids revoked by the admin API, with
//! every transition done under the session's DashMap entry lock, so
//! concurrent requests of one session can never race an expired session
//! back to life. Synchronous: request time comes in as `now_ms` (the
//! table's own clock only says when to sweep, see [`Table::sweep_now`]),
//! durability (journal, Redis) is the caller's business, driven by the
//! returned [`Change`]. It wakes the open websockets of sessions it ends,
//! and of subjects whose user-directory entry a shared batch changes
//! ([`Table::shared_changed`]).
//!
//! A session is keyed by **issuer + subject + session id** ([`SessionRef`],
//! hashed into a [`Key`]): session ids are only unique per user, so a token
//! of another subject (or issuer) carrying the same `sid` has a session of
//! its own and can never read, touch, extend or end someone else's.
//!
//! LIFECYCLE of one session:
//! ```text
//!   (unknown) --first request--> active --request within idle--> active (last = now)
//!                                  |  \--request after idle / lifetime--> ended(idle|lifetime)
//!                                  \--logout / admin revoke / deactivation / sweep--> ended(logout|revoked|idle)
//!   ended --any request--> ended (never active again)
//!   ended|active --token expiry + retention passed--> dropped by `sweep`
//! ```
//!
//! Not-before: deactivating a user records the deactivation time as the
//! user's cut-off, kept after reactivation and never dropped (one number per
//! user ever deactivated). A token of that subject issued at or before it
//! (`iat`), or without `iat`, is refused as a revoked session without
//! creating one: after a reactivation only new logins work, also for tokens
//! the gateway never saw before the deactivation.
//!
//! Deactivations and cut-offs are keyed by a *user key*: a plain subject
//! (the admin API's: every issuer's tokens of that subject) or an
//! [`issuer_user_key`] (the user directory's: its issuer's tokens only).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;

use super::watch::Watchers;
use crate::hashing::{AdminKeyed, DigestState};

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

/// Whose session: the three parts that identify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRef<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub session: &'a str,
}

/// A session's table key: SHA-256 over the length-prefixed issuer, subject
/// and session id (so no choice of strings makes two triples collide by
/// concatenation). Fixed size: no allocation to look a session up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Lowercase hex (the Redis store's key names).
    pub fn hex(&self) -> String {
        use std::fmt::Write;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

impl SessionRef<'_> {
    pub fn key(&self) -> Key {
        // One one-shot digest over a stack buffer (the usual triple fits):
        // cheaper per request than a streaming context fed six times.
        let mut buf: smallvec::SmallVec<[u8; 256]> = smallvec::SmallVec::new();
        for part in [self.issuer, self.subject, self.session] {
            buf.extend_from_slice(&(part.len() as u64).to_be_bytes());
            buf.extend_from_slice(part.as_bytes());
        }
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &buf);
        let mut k = [0u8; 32];
        k.copy_from_slice(d.as_ref());
        Key(k)
    }
}

/// One request's view of its session.
#[derive(Debug, Clone, Copy)]
pub struct Touch<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub session: &'a str,
    pub now_ms: u64,
    /// The principal's idle timeout (smallest among its roles, else default).
    pub idle_ms: u64,
    pub max_lifetime_ms: Option<u64>,
    /// The token's `exp`, in ms: the session record is kept at least this long.
    pub token_exp_ms: u64,
    /// The token's `iat`, in ms (`None`: the token has no `iat`). Checked
    /// against the subject's not-before cut-off.
    pub token_iat_ms: Option<u64>,
    /// Refresh last activity (false on passive routes and denied requests).
    pub touch: bool,
    /// The session's key, when the caller has it already (the pipeline
    /// keeps it with the principal); `None`: made from the three ids.
    pub key: Option<&'a [u8; 32]>,
}

impl<'a> Touch<'a> {
    pub fn id(&self) -> SessionRef<'a> {
        SessionRef {
            issuer: self.issuer,
            subject: self.subject,
            session: self.session,
        }
    }

    /// The session's table key: `key` when given, else made from the ids.
    pub fn key(&self) -> Key {
        match self.key {
            Some(&k) => {
                let k = Key(k);
                debug_assert_eq!(k, self.id().key(), "a Touch's key must be its ids'");
                k
            }
            None => self.id().key(),
        }
    }
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
    pub issuer: String,
    pub subject: String,
    pub session: String,
    pub created_ms: u64,
    pub last_ms: u64,
    pub idle_ms: u64,
    pub exp_ms: u64,
    pub ended: Option<(EndReason, u64)>,
}

impl Record {
    pub fn id(&self) -> SessionRef<'_> {
        SessionRef {
            issuer: &self.issuer,
            subject: &self.subject,
            session: &self.session,
        }
    }
}

/// A session id revoked by the admin API (`POST /sessions/{id}/revoke`):
/// every session with this id, of any user, is refused until `until_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokedId {
    pub at_ms: u64,
    pub until_ms: u64,
}

/// Kept small: one million of these must fit well under 512 MB.
struct Entry {
    /// Interned: a handful of issuers are shared by every session.
    issuer: Arc<str>,
    subject: Box<str>,
    session: Box<str>,
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
    fn ended(&self) -> Option<(EndReason, u64)> {
        self.ended.map(|r| (r, self.ended_at))
    }

    fn end(&mut self, reason: EndReason, at: u64) {
        self.ended = Some(reason);
        self.ended_at = at;
    }

    fn record(&self) -> Record {
        Record {
            issuer: self.issuer.to_string(),
            subject: self.subject.to_string(),
            session: self.session.to_string(),
            created_ms: self.created,
            last_ms: self.last,
            idle_ms: u64::from(self.idle),
            exp_ms: self.exp,
            ended: self.ended(),
        }
    }
}

/// All sessions, deactivated users and revoked session ids one gateway
/// knows about.
///
/// Activity to flush is found by scanning for `dirty` entries (a few ms
/// per million sessions, once per `flush_interval`) rather than by queueing
/// ids on the request path: no lock and no allocation per request.
#[derive(Default)]
pub struct Table {
    sessions: DashMap<Key, Entry, DigestState>,
    deactivated: Seldom<u64>,
    /// Subject → time of its last deactivation (ms): tokens issued at or
    /// before it are refused. Only ever raised, never dropped.
    not_before: Seldom<u64>,
    revoked_ids: Seldom<RevokedId>,
    /// Open websockets' session-end notifications: fired after every
    /// transition to ended (see `watch.rs`).
    watchers: Watchers,
    issuers: DashMap<Box<str>, Arc<str>, AdminKeyed>,
    /// Shared records besides sessions (relation tuples), persisted by
    /// the store like the rest of the table.
    shared: super::shared::Shared,
    /// The time sweeps run at (see [`Table::sweep_now`]).
    steady: super::SteadyWall,
    /// Some deactivation or cut-off was ever keyed by issuer and subject
    /// ([`issuer_user_key`]): only then does a check make that key.
    any_issuer_keyed: AtomicBool,
}

/// A map of what the admin side records (deactivations, cut-offs,
/// revoked ids) and every request looks up. Almost always empty: a flag,
/// set before the first insert and never cleared, lets a lookup skip the
/// hashing and the shard lock while nothing was ever recorded.
struct Seldom<V> {
    ever: AtomicBool,
    map: DashMap<Box<str>, V, AdminKeyed>,
}

impl<V> Default for Seldom<V> {
    fn default() -> Self {
        Seldom {
            ever: AtomicBool::new(false),
            map: DashMap::default(),
        }
    }
}

impl<V> Seldom<V> {
    fn get(&self, key: &str) -> Option<dashmap::mapref::one::Ref<'_, Box<str>, V>> {
        if !self.ever.load(Ordering::Acquire) {
            return None;
        }
        self.map.get(key)
    }

    fn contains_key(&self, key: &str) -> bool {
        self.ever.load(Ordering::Acquire) && self.map.contains_key(key)
    }

    fn entry(&self, key: Box<str>) -> dashmap::mapref::entry::Entry<'_, Box<str>, V> {
        self.ever.store(true, Ordering::Release);
        self.map.entry(key)
    }

    fn insert(&self, key: Box<str>, v: V) -> Option<V> {
        self.ever.store(true, Ordering::Release);
        self.map.insert(key, v)
    }
}

/// The user key of a deactivation (and its not-before cut-off) that
/// concerns one issuer's subject only — the user directory's, which speaks
/// for its issuer alone: `\0{issuer}\0{subject}`. A plain subject is the
/// admin API's: every issuer's tokens of that subject. (Issuers cannot hold
/// NUL, so the key splits back unambiguously; a subject holding one can
/// only ever name itself.)
pub fn issuer_user_key(issuer: &str, subject: &str) -> String {
    format!("\0{issuer}\0{subject}")
}

/// A user key's issuer (for an [`issuer_user_key`]) and subject.
pub fn split_user_key(key: &str) -> (Option<&str>, &str) {
    match key.strip_prefix('\0').and_then(|k| k.split_once('\0')) {
        Some((issuer, subject)) => (Some(issuer), subject),
        None => (None, key),
    }
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// The time to [`Table::sweep`] at: the wall clock, held back to the
    /// monotonic time since the table was made (a clock stepped forward
    /// drops nothing early).
    pub fn sweep_now(&self) -> u64 {
        self.steady.now_ms()
    }

    pub fn shared(&self) -> &super::shared::Shared {
        &self.shared
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn is_deactivated(&self, subject: &str) -> bool {
        self.deactivated.contains_key(subject)
    }

    pub fn is_revoked_id(&self, session: &str) -> bool {
        self.revoked_ids.contains_key(session)
    }

    /// The subject's not-before cut-off (ms), if it was ever deactivated.
    pub fn not_before(&self, subject: &str) -> Option<u64> {
        self.not_before.get(subject).map(|v| *v)
    }

    /// Is a token of `subject` issued at `iat_ms` (`None`: no `iat`) cut
    /// off? True when the subject has a cut-off and the token was issued in
    /// an earlier second than it, or cannot say when it was issued (fail
    /// closed). `iat` has whole seconds, so the deactivation's own second
    /// counts as after it (Keycloak's not-before compares the same way):
    /// a new login right after a reactivation must work.
    pub fn is_cut_off(&self, subject: &str, iat_ms: Option<u64>) -> bool {
        self.not_before(subject)
            .is_some_and(|nb| iat_ms.is_none_or(|iat| iat < nb / 1000 * 1000))
    }

    /// Is `subject` of `issuer` deactivated, by the admin API (every
    /// issuer) or for this issuer only (the directory)?
    pub fn user_deactivated(&self, issuer: &str, subject: &str) -> bool {
        self.is_deactivated(subject)
            || (self.any_issuer_keyed() && self.is_deactivated(&issuer_user_key(issuer, subject)))
    }

    /// [`Table::is_cut_off`] for a token of `issuer`: the later of the
    /// subject's cut-off and its cut-off for this issuer.
    pub fn user_cut_off(&self, issuer: &str, subject: &str, iat_ms: Option<u64>) -> bool {
        self.is_cut_off(subject, iat_ms)
            || (self.any_issuer_keyed()
                && self.is_cut_off(&issuer_user_key(issuer, subject), iat_ms))
    }

    fn any_issuer_keyed(&self) -> bool {
        self.any_issuer_keyed.load(Ordering::Relaxed)
    }

    fn note_key(&self, key: &str) {
        if key.starts_with('\0') {
            self.any_issuer_keyed.store(true, Ordering::Relaxed);
        }
    }

    /// Raises the subject's cut-off to `at_ms` (deactivation, journal
    /// replay, another instance); a later cut-off always wins.
    pub fn set_not_before(&self, subject: &str, at_ms: u64) {
        self.note_key(subject);
        let mut e = self.not_before.entry(subject.into()).or_insert(at_ms);
        *e = (*e).max(at_ms);
    }

    /// Every cut-off (journal compaction, Redis reseed).
    pub fn not_befores(&self) -> Vec<(String, u64)> {
        self.not_before
            .map
            .iter()
            .map(|kv| (kv.key().to_string(), *kv.value()))
            .collect()
    }

    fn issuer(&self, iss: &str) -> Arc<str> {
        if let Some(i) = self.issuers.get(iss) {
            return i.clone();
        }
        self.issuers
            .entry(iss.into())
            .or_insert_with(|| Arc::from(iss))
            .clone()
    }

    fn entry(&self, id: SessionRef<'_>, now: u64, idle_ms: u64, exp: u64) -> Entry {
        Entry {
            issuer: self.issuer(id.issuer),
            subject: id.subject.into(),
            session: id.session.into(),
            created: now,
            last: now,
            exp,
            ended_at: 0,
            idle: idle_u32(idle_ms),
            ended: None,
            dirty: false,
        }
    }

    /// The per-request transition: check, and touch unless told not to.
    pub fn check(&self, t: &Touch<'_>) -> (Verdict, Change) {
        let (verdict, change) = self.check_inner(t);
        if matches!(change, Change::Ended(_)) {
            self.watchers.fire(&t.key());
        }
        (verdict, change)
    }

    /// The open websockets' session-end notifications.
    pub fn watchers(&self) -> &Watchers {
        &self.watchers
    }

    /// A batch of shared records was applied: the sockets of each subject
    /// whose user-directory entry or pushed relation tuples it changes
    /// re-check what they were authorized on.
    pub fn shared_changed(&self, ops: &[super::SharedOp]) {
        if self.watchers.is_empty() {
            return;
        }
        for op in ops {
            let (super::SharedOp::Put { ns, k, .. } | super::SharedOp::Del { ns, k }) = op;
            if ns == crate::directory::USERS {
                self.watchers.fire_subject(k);
            } else if ns.starts_with(crate::relations::TUPLE_NS_PREFIX)
                && let Some((_, subject, _)) = crate::relations::parse_tuple_key(k)
            {
                self.watchers.fire_subject(&subject);
            }
        }
    }

    fn check_inner(&self, t: &Touch<'_>) -> (Verdict, Change) {
        if self.user_deactivated(t.issuer, t.subject) {
            self.outlive_token(t);
            return (Verdict::Deactivated, Change::None);
        }
        if self.is_revoked_id(t.session) || self.user_cut_off(t.issuer, t.subject, t.token_iat_ms) {
            self.outlive_token(t);
            return (Verdict::Ended(EndReason::Revoked), Change::None);
        }
        let key = t.key();
        let (verdict, change, mut e) = match self.sessions.get_mut(&key) {
            Some(mut e) => {
                let raised = t.token_exp_ms > e.exp;
                e.exp = e.exp.max(t.token_exp_ms);
                if let Some(reason) = e.ended {
                    // A newer token of an ended session: its record must now
                    // outlive that token, across restarts too (written with
                    // the next activity flush).
                    if raised {
                        e.dirty = true;
                    }
                    return (Verdict::Ended(reason), Change::None);
                }
                // The timeout of *this* request's principal applies: a token
                // with fewer roles cannot stretch a shorter timeout seen before.
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
                    return (Verdict::Ended(reason), Change::Ended(e.record()));
                }
                e.idle = idle_u32(t.idle_ms);
                if t.touch && t.now_ms > e.last {
                    e.last = t.now_ms;
                    e.dirty = true;
                    (Verdict::Active, Change::Activity, e)
                } else {
                    (Verdict::Active, Change::None, e)
                }
            }
            None => {
                // First sight of this session: it starts now. `or_insert`
                // keeps a concurrent first request's entry if that one won.
                let mut fresh = self.entry(t.id(), t.now_ms, t.idle_ms, t.token_exp_ms);
                fresh.dirty = true;
                let e = self.sessions.entry(key).or_insert(fresh);
                (Verdict::Active, Change::Activity, e)
            }
        };
        // A deactivation (or an id revocation) that raced this request: it
        // was recorded before its scan of sessions started, so either the
        // scan sees this entry or this re-check sees the record. Either way
        // the session ends and stays ended.
        let revoked = self.is_revoked_id(t.session);
        if revoked || self.user_deactivated(t.issuer, t.subject) {
            e.end(EndReason::Revoked, t.now_ms);
            let v = if revoked {
                Verdict::Ended(EndReason::Revoked)
            } else {
                Verdict::Deactivated
            };
            return (v, Change::Ended(e.record()));
        }
        (verdict, change)
    }

    /// A refused request's token: the session's (ended) record must outlive
    /// it, as for an ended session's newer token, so the session stays
    /// ended once the revocation or deactivation that refused it is gone
    /// (written with the next activity flush).
    fn outlive_token(&self, t: &Touch<'_>) {
        if let Some(mut e) = self.sessions.get_mut(&t.key())
            && t.token_exp_ms > e.exp
        {
            e.exp = t.token_exp_ms;
            e.dirty = true;
        }
    }

    /// Ends one session for good. An unknown session gets an ended record
    /// too (it must stay ended if it shows up). Returns the record when it
    /// was not ended before.
    pub fn end(
        &self,
        id: SessionRef<'_>,
        reason: EndReason,
        now_ms: u64,
        keep_until_ms: u64,
    ) -> Option<Record> {
        let key = id.key();
        let mut e = self
            .sessions
            .entry(key)
            .or_insert_with(|| self.entry(id, now_ms, 0, keep_until_ms));
        if keep_until_ms > e.exp {
            e.exp = keep_until_ms;
            e.dirty = true;
        }
        if e.ended.is_some() {
            return None;
        }
        e.end(reason, now_ms);
        let r = e.record();
        drop(e);
        self.watchers.fire(&key);
        Some(r)
    }

    /// Revokes a session id for every user (admin API): records the id, so
    /// that it is refused whoever presents it until `until_ms`, then ends
    /// every active session with that id. Returns the newly ended records
    /// (empty for an id never seen).
    pub fn revoke_id(&self, session: &str, now_ms: u64, until_ms: u64) -> Vec<Record> {
        self.set_revoked_id(
            session,
            RevokedId {
                at_ms: now_ms,
                until_ms,
            },
        );
        let mut out = Vec::new();
        let mut keys = Vec::new();
        for mut kv in self.sessions.iter_mut() {
            if &*kv.session == session && kv.ended.is_none() {
                kv.end(EndReason::Revoked, now_ms);
                out.push(kv.record());
                keys.push(*kv.key());
            }
        }
        self.fire_each(&keys);
        out
    }

    fn fire_each(&self, keys: &[Key]) {
        if self.watchers.is_empty() {
            return;
        }
        for k in keys {
            self.watchers.fire(k);
        }
    }

    /// Records a revoked id (journal replay, another instance); the later
    /// `until` wins.
    pub fn set_revoked_id(&self, session: &str, r: RevokedId) {
        let mut e = self.revoked_ids.entry(session.into()).or_insert(r);
        e.until_ms = e.until_ms.max(r.until_ms);
        e.at_ms = e.at_ms.min(r.at_ms);
    }

    pub fn revoked_ids(&self) -> Vec<(String, RevokedId)> {
        self.revoked_ids
            .map
            .iter()
            .map(|kv| (kv.key().to_string(), *kv.value()))
            .collect()
    }

    /// Ends every active session of a user key (a subject: of every
    /// issuer; an [`issuer_user_key`]: of that issuer); returns the newly
    /// ended ones.
    pub fn end_user(&self, user: &str, reason: EndReason, now_ms: u64) -> Vec<Record> {
        let (issuer, subject) = split_user_key(user);
        let mut out = Vec::new();
        let mut keys = Vec::new();
        for mut kv in self.sessions.iter_mut() {
            if &*kv.subject == subject
                && issuer.is_none_or(|i| *kv.issuer == *i)
                && kv.ended.is_none()
            {
                kv.end(reason, now_ms);
                out.push(kv.record());
                keys.push(*kv.key());
            }
        }
        self.fire_each(&keys);
        out
    }

    /// Deactivates `subject` and raises its not-before cut-off to `now_ms`
    /// (also when it was deactivated already). Returns true when the state
    /// changed.
    pub fn deactivate(&self, subject: &str, now_ms: u64) -> bool {
        self.set_not_before(subject, now_ms);
        self.deactivated.insert(subject.into(), now_ms).is_none()
    }

    pub fn reactivate(&self, subject: &str) -> bool {
        self.deactivated.map.remove(subject).is_some()
    }

    pub fn deactivated(&self) -> Vec<(String, u64)> {
        self.deactivated
            .map
            .iter()
            .map(|kv| (kv.key().to_string(), *kv.value()))
            .collect()
    }

    /// Which of `subjects` have a session on record here (one full scan,
    /// however many are asked).
    pub fn subjects_seen(
        &self,
        subjects: &std::collections::HashSet<&str>,
    ) -> std::collections::HashSet<String> {
        let mut seen = std::collections::HashSet::new();
        if subjects.is_empty() {
            return seen;
        }
        for kv in self.sessions.iter() {
            if subjects.contains(&*kv.subject) && !seen.contains(&*kv.subject) {
                seen.insert(kv.subject.to_string());
            }
        }
        seen
    }

    /// The sessions of one user (admin listing; a full scan).
    pub fn sessions_of(&self, subject: &str) -> Vec<Record> {
        let mut v: Vec<Record> = self
            .sessions
            .iter()
            .filter(|kv| &*kv.subject == subject)
            .map(|kv| kv.record())
            .collect();
        sort_records(&mut v);
        v
    }

    pub fn get(&self, id: SessionRef<'_>) -> Option<Record> {
        self.get_key(&id.key())
    }

    /// [`Table::get`] by the session's key.
    pub fn get_key(&self, key: &Key) -> Option<Record> {
        self.sessions.get(key).map(|e| e.record())
    }

    /// Sessions touched since the last call, for the activity flush.
    pub fn take_dirty(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for mut kv in self.sessions.iter_mut() {
            if kv.dirty {
                kv.dirty = false;
                out.push(kv.record());
            }
        }
        out
    }

    /// Every record (journal compaction).
    pub fn snapshot(&self) -> Vec<Record> {
        self.sessions.iter().map(|kv| kv.record()).collect()
    }

    /// Housekeeping: ends sessions idle past their timeout (so listings and
    /// other instances see them ended) and drops records that can no longer
    /// matter: ended, token expired and `retention_ms` passed since the end;
    /// revoked ids past their `until`. A session not ended is kept, however
    /// long its idle timeout: dropped, its next token (same session id)
    /// would start it afresh, its maximum lifetime counted anew; except a
    /// token's own session (no session id: `t:` and its digest), which no
    /// other token continues. Returns the newly ended records.
    pub fn sweep(&self, now_ms: u64, retention_ms: u64) -> Vec<Record> {
        let mut ended = Vec::new();
        let mut keys = Vec::new();
        self.sessions.retain(|k, e| {
            if e.ended.is_none() && now_ms.saturating_sub(e.last) > u64::from(e.idle) {
                e.end(EndReason::Idle, now_ms);
                ended.push(e.record());
                keys.push(*k);
            }
            // A token that is its own session (`t:` + its digest) is never
            // continued by another token: kept as before, `retention`
            // after its last activity once it has expired.
            let since = if e.ended.is_some() {
                e.ended_at
            } else {
                e.last
            };
            (e.ended.is_none() && !e.session.starts_with("t:"))
                || e.exp > now_ms
                || now_ms.saturating_sub(since) <= retention_ms
        });
        self.revoked_ids.map.retain(|_, r| r.until_ms > now_ms);
        self.fire_each(&keys);
        ended
    }

    /// Applies a record from the journal or another instance: never brings
    /// an ended session back, never moves activity backwards.
    pub fn apply(&self, r: &Record) {
        let key = r.id().key();
        let mut e = self
            .sessions
            .entry(key)
            .or_insert_with(|| self.entry(r.id(), r.created_ms, r.idle_ms, r.exp_ms));
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
            drop(e);
            self.watchers.fire(&key);
        }
    }

    /// The keys of the sessions not ended.
    pub fn active_keys(&self) -> Vec<Key> {
        self.sessions
            .iter()
            .filter(|kv| kv.ended.is_none())
            .map(|kv| *kv.key())
            .collect()
    }

    /// Forgets everything not ended (Redis store: after a reconnect the
    /// local mirror is re-read from Redis).
    pub fn forget_active(&self) {
        self.sessions.retain(|_, e| e.ended.is_some());
    }

    /// Records a deactivation (journal replay, another instance): a user
    /// deactivated at `since_ms` has a cut-off at least that late.
    pub fn set_deactivated(&self, subject: &str, since_ms: u64) {
        self.set_not_before(subject, since_ms);
        self.deactivated.insert(subject.into(), since_ms);
    }
}

/// Oldest first (ties by session id), as listings show them.
pub fn sort_records(v: &mut [Record]) {
    v.sort_by(|a, b| {
        a.created_ms
            .cmp(&b.created_ms)
            .then_with(|| a.session.cmp(&b.session))
            .then_with(|| a.issuer.cmp(&b.issuer))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://idp.test";

    fn touch(session: &'static str, now_ms: u64, idle_ms: u64) -> Touch<'static> {
        Touch {
            issuer: ISS,
            subject: "u1",
            session,
            now_ms,
            idle_ms,
            max_lifetime_ms: None,
            token_exp_ms: 10_000_000,
            token_iat_ms: Some(500),
            touch: true,
            key: None,
        }
    }

    fn id(session: &'static str) -> SessionRef<'static> {
        touch(session, 0, 0).id()
    }

    /// A deactivation keyed by issuer and subject (the directory's)
    /// refuses and ends that issuer's sessions of the subject only; a plain
    /// one (the admin API's) every issuer's.
    #[test]
    fn an_issuer_keyed_deactivation_concerns_that_issuer_only() {
        let t = Table::new();
        let touch = |issuer: &'static str, session: &'static str, iat: u64| Touch {
            issuer,
            subject: "u1",
            session,
            now_ms: 10_000,
            idle_ms: 60_000,
            max_lifetime_ms: None,
            token_exp_ms: 100_000,
            token_iat_ms: Some(iat),
            touch: true,
            key: None,
        };
        assert_eq!(t.check(&touch("a", "s1", 1_000)).0, Verdict::Active);
        assert_eq!(t.check(&touch("b", "s2", 1_000)).0, Verdict::Active);
        let key = issuer_user_key("a", "u1");
        assert_eq!(split_user_key(&key), (Some("a"), "u1"));
        assert_eq!(split_user_key("u1"), (None, "u1"));
        assert!(t.deactivate(&key, 5_000));
        let ended = t.end_user(&key, EndReason::Revoked, 5_000);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].issuer, "a");
        assert_eq!(t.check(&touch("a", "s3", 9_000)).0, Verdict::Deactivated);
        assert_eq!(t.check(&touch("b", "s2", 1_000)).0, Verdict::Active);
        assert!(!t.is_deactivated("u1"));
        // Reactivated: issuer a's tokens from before the cut-off stay out.
        assert!(t.reactivate(&key));
        assert_eq!(
            t.check(&touch("a", "s4", 1_000)).0,
            Verdict::Ended(EndReason::Revoked)
        );
        assert_eq!(t.check(&touch("a", "s5", 6_000)).0, Verdict::Active);
        // A plain deactivation: every issuer.
        assert!(t.deactivate("u1", 7_000));
        assert_eq!(t.end_user("u1", EndReason::Revoked, 7_000).len(), 2);
        for iss in ["a", "b"] {
            assert_eq!(t.check(&touch(iss, "s6", 8_000)).0, Verdict::Deactivated);
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
    fn after_reactivation_only_tokens_issued_after_the_last_deactivation_work() {
        let t = Table::new();
        let at = |iat: Option<u64>, session: &'static str| Touch {
            token_iat_ms: iat,
            ..touch(session, 9_000, 10_000)
        };
        // Never deactivated: no cut-off, `iat` does not matter.
        assert_eq!(t.check(&at(None, "a")).0, Verdict::Active);
        t.deactivate("u1", 2_000);
        t.deactivate("u1", 3_000); // again: the later time wins
        t.set_deactivated("u1", 2_500); // an older report never lowers it
        assert!(t.reactivate("u1"));
        assert_eq!(t.not_before("u1"), Some(3_000));
        let revoked = Verdict::Ended(EndReason::Revoked);
        // Issued in an earlier second, or unknown: refused, no session made.
        for (iat, s) in [(Some(2_000), "b"), (Some(2_999), "c"), (None, "d")] {
            assert_eq!(t.check(&at(iat, s)), (revoked, Change::None), "{iat:?}");
            assert_eq!(t.get(id(s)), None);
        }
        // Issued in the cut-off's own second: a new login.
        assert_eq!(t.check(&at(Some(3_000), "c2")).0, Verdict::Active);
        // Also on a session a newer token of the user keeps alive.
        assert_eq!(t.check(&at(Some(3_001), "e")).0, Verdict::Active);
        assert_eq!(t.check(&at(Some(1_000), "e")).0, revoked);
        assert_eq!(t.check(&at(Some(3_001), "e")).0, Verdict::Active);
        // Other subjects are not concerned.
        let mut other = at(None, "f");
        other.subject = "u2";
        assert_eq!(t.check(&other).0, Verdict::Active);
        // The cut-off outlives every sweep.
        t.sweep(u64::MAX / 2, 0);
        assert_eq!(t.not_befores(), vec![("u1".to_string(), 3_000)]);
    }

    #[test]
    fn revoking_an_id_refuses_it_for_everyone_and_reports_only_active_sessions() {
        let t = Table::new();
        // Never seen: nothing was active, and the id stays refused.
        assert!(t.revoke_id("never-seen", 100, 5_000).is_empty());
        assert_eq!(
            t.check(&touch("never-seen", 200, 10_000)).0,
            Verdict::Ended(EndReason::Revoked)
        );
        // Two users with the same id: both sessions end.
        t.check(&touch("shared", 1_000, 10_000));
        let mut other = touch("shared", 1_000, 10_000);
        other.subject = "u2";
        t.check(&other);
        assert_eq!(t.revoke_id("shared", 1_100, 5_000).len(), 2);
        assert_eq!(t.check(&other).0, Verdict::Ended(EndReason::Revoked));
        // The revoked id is dropped once its `until` has passed.
        t.sweep(20_000_000, 1_000);
        assert!(!t.is_revoked_id("never-seen"));
    }

    /// A revoked session whose client keeps presenting refreshed tokens
    /// (same `sid`) stays ended after the revoked id is dropped: its record
    /// outlives the newest token it showed.
    #[test]
    fn a_revoked_session_stays_ended_while_its_tokens_are_refreshed() {
        let t = Table::new();
        let mut first = touch("s9", 1_000, 60_000);
        first.token_exp_ms = 300_000;
        assert_eq!(t.check(&first).0, Verdict::Active);
        assert_eq!(t.revoke_id("s9", 2_000, 400_000).len(), 1);
        let mut refreshed = touch("s9", 3_000, 60_000);
        refreshed.token_exp_ms = 50_000_000;
        assert_eq!(t.check(&refreshed).0, Verdict::Ended(EndReason::Revoked));
        assert!(t.take_dirty().iter().any(|r| r.exp_ms == 50_000_000));
        // Past the revoked id's end and the retention after the end.
        t.sweep(10_000_000, 1_000);
        assert!(!t.is_revoked_id("s9"));
        refreshed.now_ms = 10_000_001;
        assert_eq!(t.check(&refreshed).0, Verdict::Ended(EndReason::Revoked));
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
        // Ended sessions are on record too; a subject never seen is not.
        let asked = std::collections::HashSet::from(["u1", "u3"]);
        assert_eq!(
            t.subjects_seen(&asked),
            std::collections::HashSet::from(["u1".to_string()])
        );
        // c is idle at 2000: the sweep ends it; nothing is dropped before token expiry.
        let ended = t.sweep(2_000, 1_000);
        assert_eq!(ended.len(), 1);
        assert_eq!(t.len(), 3);
        // After token expiry plus retention everything goes.
        assert_eq!(t.sweep(20_000_000, 1_000).len(), 0);
        assert!(t.is_empty());
    }

    /// An idle timeout longer than `retention`: a session whose token has
    /// expired but that is not idle yet is kept, so the next token of the
    /// session continues it (its lifetime counted from its start).
    #[test]
    fn a_session_within_its_idle_timeout_outlives_retention() {
        let t = Table::new();
        let mut a = touch("long", 1_000, 100_000);
        a.token_exp_ms = 2_000;
        a.max_lifetime_ms = Some(60_000);
        t.check(&a);
        // Token expired, retention (1 s) long past, idle timeout not reached.
        assert!(t.sweep(50_000, 1_000).is_empty());
        assert_eq!(t.get(id("long")).map(|r| r.created_ms), Some(1_000));
        // A new token of the session: the lifetime still counts from 1 s.
        let mut b = touch("long", 62_000, 100_000);
        b.max_lifetime_ms = Some(60_000);
        assert_eq!(t.check(&b).0, Verdict::Ended(EndReason::Lifetime));
        // Idle past its timeout: ended by the sweep, dropped after retention.
        let mut c = touch("idle", 1_000, 10_000);
        c.token_exp_ms = 2_000;
        t.check(&c);
        assert_eq!(t.sweep(12_000, 1_000).len(), 1);
        assert!(t.get(id("idle")).is_some());
        t.sweep(13_500, 1_000);
        assert!(t.get(id("idle")).is_none());
        // A token's own session is not kept past its token for that.
        let mut own = touch("t:0123", 1_000, 100_000);
        own.token_exp_ms = 2_000;
        t.check(&own);
        t.sweep(1_900, 1_000);
        assert!(t.get(id("t:0123")).is_some());
        t.sweep(2_500, 1_000);
        assert!(t.get(id("t:0123")).is_none());
    }

    #[test]
    fn apply_never_revives_or_rewinds() {
        let t = Table::new();
        t.end(id("s"), EndReason::Logout, 1_000, 9_000);
        let mut r = t.get(id("s")).unwrap();
        r.ended = None;
        r.last_ms = 50;
        t.apply(&r);
        let now = t.get(id("s")).unwrap();
        assert_eq!(now.ended.map(|e| e.0), Some(EndReason::Logout));
        assert_eq!(now.last_ms, 1_000);
    }

    #[test]
    fn a_newer_token_of_an_ended_session_makes_its_record_durable_again() {
        let t = Table::new();
        t.check(&touch("s", 1_000, 10_000));
        t.end(id("s"), EndReason::Logout, 1_100, 0);
        t.take_dirty();
        let mut newer = touch("s", 1_200, 10_000);
        newer.token_exp_ms = 90_000_000;
        assert_eq!(t.check(&newer).0, Verdict::Ended(EndReason::Logout));
        let d = t.take_dirty();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].exp_ms, 90_000_000);
        assert_eq!(d[0].ended.map(|e| e.0), Some(EndReason::Logout));
        // The same token again changes nothing.
        t.check(&newer);
        assert!(t.take_dirty().is_empty());
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
    fn another_subject_or_issuer_with_the_same_session_id_has_its_own_session() {
        let t = Table::new();
        assert_eq!(t.check(&touch("shared", 1_000, 10_000)).0, Verdict::Active);
        let mut other = touch("shared", 1_100, 500);
        other.subject = "u2";
        let mut foreign = touch("shared", 1_100, 500);
        foreign.issuer = "https://other.test";
        for o in [&other, &foreign] {
            // Its own, new session: active, and nothing of u1's is visible.
            assert_eq!(t.check(o).0, Verdict::Active);
            // Ending it leaves u1's session alone.
            assert!(t.end(o.id(), EndReason::Logout, 1_200, 9_000).is_some());
            assert_eq!(t.check(o).0, Verdict::Ended(EndReason::Logout));
        }
        // u1's session: untouched, and its idle timeout was not shortened
        // to the other token's 500 ms.
        let mine = t.get(id("shared")).unwrap();
        assert_eq!((mine.ended, mine.idle_ms), (None, 10_000));
        assert_eq!(t.check(&touch("shared", 5_000, 10_000)).0, Verdict::Active);
    }

    #[test]
    fn keys_do_not_collide_by_concatenation() {
        let a = SessionRef {
            issuer: "i",
            subject: "ab",
            session: "c",
        };
        let b = SessionRef {
            issuer: "i",
            subject: "a",
            session: "bc",
        };
        assert_ne!(a.key(), b.key());
        assert_eq!(a.key().hex().len(), 64);
    }
}
