//! The Redis store: several gateway instances share sessions through one
//! Redis server. Serves phase 4 (session) of the pipeline, like the
//! embedded store, with the same interface.
//!
//! Owns a local mirror ([`Table`]) of the sessions this instance has seen,
//! the Redis connections (one [`ConnectionManager`] for commands, one
//! pub/sub connection for events) and two background tasks (activity
//! flush, event subscriber). It must not decide anything the local mirror
//! cannot vouch for: whenever the mirror might be stale it asks Redis.
//!
//! # Per request ([`RedisStore::check`])
//! - **Fast path, no round trip**: the session is in the mirror and either
//!   ended, or not ended and, by the mirror's clock, neither idle
//!   (`now - last <= idle`) nor past its lifetime. The mirror decides and
//!   touches locally; the touch is queued for the next activity flush.
//! - **Slow path, one round trip**: unknown session, or the mirror says
//!   idle/lifetime (another instance may have kept it alive), or the token
//!   carries a later `exp` than recorded. One atomic Lua script on Redis
//!   refuses a deactivated subject and a token cut off by its subject's
//!   not-before (issued at or before the last deactivation, or without
//!   `iat`), answers an ended session, creates an
//!   unknown one (ended at once if its id was revoked), ends an idle or
//!   expired one (judged from *Redis's* `last`, which holds every flushed
//!   touch of every instance) and publishes the end, or else touches it.
//!   The answer is applied to the mirror.
//!
//! # Keys (prefix `rolegate:`; standalone Redis, not Redis Cluster: the
//! scripts build some key names themselves)
//! - `rolegate:sess:{key}`: one session; `{key}` is the lowercase hex
//!   SHA-256 of the issuer, subject and session id, each prefixed with its
//!   length as a big-endian u64 ([`super::table::Key`]), so a session of
//!   one user can never be addressed with another user's token. Hash
//!   `iss sub sid created last idle exp ended ended_at` (milliseconds since
//!   the epoch), expiring at `max(token exp, ended_at + retention)` (for an
//!   active session `ended_at` is taken as `last + idle`, when it would end
//!   idle);
//! - `rolegate:u:{sub}`: set of a user's session keys (`end_user`,
//!   `deactivate`, `sessions_of`), expiring with its longest-lived session;
//! - `rolegate:sid:{sid}`: set of the session keys with that session id
//!   (admin revocation by id), expiring likewise;
//! - `rolegate:revoked:{sid}`: a session id revoked by the admin API for
//!   every user (value: revoked at, ms), expiring `retention` after, or
//!   when the last token of the sessions it ended expires if later; its
//!   expiry is only ever extended;
//! - `rolegate:deact`: hash subject → deactivated since (ms);
//! - `rolegate:notbefore`: hash subject → time of its last deactivation
//!   (ms), the not-before cut-off for its tokens' `iat`; kept after
//!   reactivation and never expires (one number per user ever deactivated);
//! - `rolegate:epoch`: a marker telling whether Redis lost its data;
//! - `rolegate:s:{sid}`: the previous version's session records (keyed by
//!   id alone); `open` turns each into a `rolegate:revoked:{sid}` and
//!   deletes it (see [`LUA_MIGRATE`]);
//! - channel `rolegate:events` (`rolegate:events:{db}` for a database other
//!   than 0, since pub/sub ignores databases).
//!
//! # Staleness bound (activity is coalesced)
//! Activity is written to Redis every `flush_interval` (default 250 ms), in
//! one pipeline of Lua `touch` calls (`last = max(last, t)`), not once per
//! request. So an idle decision taken on one instance can miss at most the
//! last `flush_interval` (plus one Redis round trip) of another instance's
//! activity: a session idle for between `idle - flush_interval` and `idle`
//! may be ended; one idle for less is never ended, one idle for longer
//! always is. Revocations (logout, admin revoke, end of user's sessions),
//! deactivations (with their not-before cut-off) and reactivations are
//! written to Redis first and then
//! published; every instance applies them to its mirror within pub/sub
//! latency (milliseconds; well under 1 s). Instance clocks are compared with
//! each other, so keep them NTP-synchronised: skew adds to the bound.
//!
//! # Failing closed
//! Every Redis error or a reply slower than 1 s is a [`StoreError`] (the
//! pipeline answers 503 by default). While the subscriber connection is
//! down, the mirror could miss revocations, so `check` refuses with
//! `StoreError` even on the fast path until the subscription is back (an
//! event that cannot be read counts as a lost subscription). On
//! re-subscription the deactivated users and the not-before cut-offs are
//! reloaded from Redis and the
//! mirror forgets its active sessions (they are re-read from Redis on their
//! next request); ended ones stay ended. If Redis lost its data meanwhile
//! (restart without persistence, `FLUSHALL`: the epoch marker changed),
//! each instance first writes back the ended sessions, deactivations and
//! not-before cut-offs it knows, so revocations survive; active sessions then start afresh (their
//! idle timer and lifetime restart). Run Redis with persistence
//! (`appendonly yes`) so that this stays the exception.
//!
//! # Mirror housekeeping
//! Every 30 s the mirror forgets its active sessions (after flushing their
//! activity; each costs one slow path on its next request) and drops ended
//! ones whose token has expired: the mirror cannot judge idleness of a
//! session active elsewhere, so it never sweeps sessions to ended itself.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use redis::{Client, ErrorKind, RedisResult, Script, ServerErrorKind};
use tokio::task::JoinHandle;

use super::shared::{Expect as SharedExpect, Op as SharedOp};
use super::table::{
    Change, EndReason, Key, Record, RevokedId, SessionRef, Table, Touch, Verdict, issuer_user_key,
    sort_records, split_user_key,
};
use super::{SessionSettings, StoreError, now_ms};

/// Every key and the channel start with this.
const PREFIX: &str = "rolegate:";
/// A Redis command (or pipeline) answers within this or counts as failed:
/// a dead Redis must fail requests fast, not hang them.
const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// `open` gives up after this (connection retries included).
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts to re-establish the subscription.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(200);
/// The subscriber pings this often, to notice a half-open connection.
const PING_EVERY: Duration = Duration::from_secs(1);
/// The mirror forgets its active sessions and drops old ended ones this often.
const MIRROR_REFRESH: Duration = Duration::from_secs(30);
/// Ended sessions stay in the mirror this long past their token's expiry
/// (Redis keeps them for the full `retention`).
const MIRROR_RETENTION_MS: u64 = 120_000;
/// Touches per flush pipeline.
const FLUSH_BATCH: usize = 1_000;
/// Unwritten activity kept across failed flushes, at most.
const MAX_PENDING: usize = 1_000_000;
/// Times are clamped to this (≈ 142,000 years) so Lua's doubles stay exact.
const MAX_MS: u64 = 1 << 52;

/// Shared Lua prelude. `ARGV[1..4]` are always: key prefix, now (ms),
/// retention (ms), event channel.
const LUA_PRELUDE: &str = r#"
local P, NOW, RET, CH = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local function s(n) return string.format('%d', n) end
local function load(skey)
  local h = redis.call('HMGET', skey, 'iss', 'sub', 'sid', 'created', 'last', 'idle', 'exp', 'ended', 'ended_at')
  if not h[4] then return nil end
  return { iss = h[1] or '', sub = h[2] or '', sid = h[3] or '', created = tonumber(h[4]),
           last = tonumber(h[5] or h[4]), idle = tonumber(h[6] or '0'), exp = tonumber(h[7] or '0'),
           ended = h[8], ended_at = tonumber(h[9] or '0') }
end
local function keep_until(r)
  if r.ended then return math.max(r.exp, r.ended_at + RET) end
  return math.max(r.exp, r.last + r.idle + RET)
end
local function extend(key, at)
  local pt = redis.call('PTTL', key)
  if pt == -1 or (pt >= 0 and NOW + pt < at) then redis.call('PEXPIREAT', key, s(at)) end
end
local function expire_at(skey, r)
  local at = keep_until(r)
  redis.call('PEXPIREAT', skey, s(at))
  if r.sub ~= '' then extend(P .. 'u:' .. r.sub, at) end
  extend(P .. 'sid:' .. r.sid, at)
end
local function create(skey, hex, iss, sub, sid, at, idle, exp)
  local r = { iss = iss, sub = sub, sid = sid, created = at, last = at, idle = idle, exp = exp,
              ended = false, ended_at = 0 }
  redis.call('HSET', skey, 'iss', iss, 'sub', sub, 'sid', sid, 'created', s(at), 'last', s(at),
    'idle', s(idle), 'exp', s(exp))
  if sub ~= '' then redis.call('SADD', P .. 'u:' .. sub, hex) end
  redis.call('SADD', P .. 'sid:' .. sid, hex)
  return r
end
local function reply(r)
  return { r.iss, r.sub, r.sid, s(r.created), s(r.last), s(r.idle), s(r.exp), r.ended or '', s(r.ended_at) }
end
local function flat(out, r)
  for _, v in ipairs(reply(r)) do out[#out + 1] = v end
end
local function end_session(skey, r, reason, at, publish)
  r.ended = reason
  r.ended_at = at
  redis.call('HSET', skey, 'ended', reason, 'ended_at', s(at), 'exp', s(r.exp))
  expire_at(skey, r)
  if publish then
    redis.call('PUBLISH', CH, 'end ' .. reason .. ' ' .. s(at) .. ' ' .. s(r.exp) .. ' '
      .. s(#r.iss) .. ':' .. r.iss .. s(#r.sub) .. ':' .. r.sub .. r.sid)
  end
end
-- Raises subject `sub`'s cut-off in hash `key` to `at` (ms); returns it.
local function raise_nb(key, sub, at)
  local nb = tonumber(redis.call('HGET', key, sub) or '0')
  if at > nb then
    nb = at
    redis.call('HSET', key, sub, s(at))
  end
  return s(nb)
end
-- Ends every active session in the set `set` (session keys), of issuer `iss`
-- only when given; returns them flattened.
local function end_all(set, reason, iss)
  local out = {}
  for _, hex in ipairs(redis.call('SMEMBERS', set)) do
    local skey = P .. 'sess:' .. hex
    local r = load(skey)
    if not r then
      redis.call('SREM', set, hex)
    elseif not r.ended and (iss == nil or iss == '' or r.iss == iss) then
      end_session(skey, r, reason, NOW, true)
      flat(out, r)
    end
  end
  return out
end
"#;

/// The per-request check. KEYS: session, deact, revoked id, notbefore.
/// ARGV[5..]: session key (hex), iss, sub, sid, idle, max lifetime (0:
/// none), token exp, touch (1/0), token iat ('': none), the subject's
/// issuer user key (deactivations and cut-offs of this issuer only).
/// Returns `{'deact', since}`, `{'notbefore', cut-off, user key}` (the
/// token is refused as revoked, no session is made) or `{'ok', record...}`.
const LUA_CHECK: &str = r#"
local hex, iss, sub, sid = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local idle, maxl, texp = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local users = { sub, ARGV[14] }
for _, u in ipairs(users) do
  local since = redis.call('HGET', KEYS[2], u)
  if since then return { 'deact', since } end
end
for _, u in ipairs(users) do
  local nb = redis.call('HGET', KEYS[4], u)
  if nb and (ARGV[13] == '' or tonumber(ARGV[13]) < math.floor(tonumber(nb) / 1000) * 1000) then return { 'notbefore', nb, u } end
end
local revoked = redis.call('EXISTS', KEYS[3]) == 1
local r = load(KEYS[1])
if not r then
  r = create(KEYS[1], hex, iss, sub, sid, NOW, idle, texp)
  if revoked then
    end_session(KEYS[1], r, 'revoked', NOW, false)
  else
    expire_at(KEYS[1], r)
  end
  return { 'ok', unpack(reply(r)) }
end
if texp > r.exp then
  r.exp = texp
  redis.call('HSET', KEYS[1], 'exp', s(texp))
end
if r.ended then
  expire_at(KEYS[1], r)
  return { 'ok', unpack(reply(r)) }
end
local reason = false
if revoked then
  reason = 'revoked'
elseif NOW - r.last > math.min(r.idle, idle) then
  reason = 'idle'
elseif maxl > 0 and NOW - r.created > maxl then
  reason = 'lifetime'
end
if reason then
  end_session(KEYS[1], r, reason, NOW, true)
  return { 'ok', unpack(reply(r)) }
end
r.idle = idle
if ARGV[12] == '1' and NOW > r.last then r.last = NOW end
redis.call('HSET', KEYS[1], 'last', s(r.last), 'idle', s(idle))
expire_at(KEYS[1], r)
return { 'ok', unpack(reply(r)) }
"#;

/// Ends one session (creating an ended record for an unknown one).
/// KEYS: session. ARGV[5..]: session key (hex), iss, sub, sid, reason,
/// keep until, publish (1/0), ended at. Returns `{changed, record...}`.
const LUA_END: &str = r#"
local kexp, at = tonumber(ARGV[10]), tonumber(ARGV[12])
local r = load(KEYS[1])
if not r then
  r = create(KEYS[1], ARGV[5], ARGV[6], ARGV[7], ARGV[8], at, 0, kexp)
end
r.exp = math.max(r.exp, kexp)
if r.ended then
  redis.call('HSET', KEYS[1], 'exp', s(r.exp))
  expire_at(KEYS[1], r)
  return { '0', unpack(reply(r)) }
end
end_session(KEYS[1], r, ARGV[9], at, ARGV[11] == '1')
return { '1', unpack(reply(r)) }
"#;

/// Revokes a session id for every user. KEYS: revoked id, sid set.
/// ARGV[5..]: sid, until. Ends every active session with that id, records
/// the id (refused whoever presents it until the later of `until` and the
/// latest token expiry among the sessions it ended; an existing
/// revocation is only ever extended, never shortened) and publishes it.
/// Returns the newly ended records, flattened.
const LUA_REVOKE_ID: &str = r#"
local sid, untl = ARGV[5], tonumber(ARGV[6])
local at = tonumber(redis.call('GET', KEYS[1]) or s(NOW))
local out = end_all(KEYS[2], 'revoked')
for i = 7, #out, 9 do untl = math.max(untl, tonumber(out[i])) end
redis.call('SET', KEYS[1], s(at), 'KEEPTTL')
extend(KEYS[1], untl)
redis.call('PUBLISH', CH, 'revid ' .. s(at) .. ' ' .. s(untl) .. ' ' .. sid)
return out
"#;

/// Coalesced activity of one session. KEYS: session. ARGV[5..]: last,
/// token exp, idle. Never creates a session, never touches an ended one.
const LUA_TOUCH: &str = r#"
local r = load(KEYS[1])
if not r then return 0 end
r.exp = math.max(r.exp, tonumber(ARGV[6]))
if r.ended then
  redis.call('HSET', KEYS[1], 'exp', s(r.exp))
else
  r.last = math.max(r.last, tonumber(ARGV[5]))
  if tonumber(ARGV[7]) > 0 then r.idle = tonumber(ARGV[7]) end
  redis.call('HSET', KEYS[1], 'last', s(r.last), 'exp', s(r.exp), 'idle', s(r.idle))
end
expire_at(KEYS[1], r)
return 1
"#;

/// Ends every active session of a user. KEYS: user set. ARGV[5]: the
/// issuer whose sessions end ('': every issuer's).
/// Returns the newly ended records, flattened.
const LUA_END_USER: &str = r#"
return end_all(KEYS[1], 'revoked', ARGV[5])
"#;

/// A user's sessions; ends those idle or past their lifetime by Redis's
/// view (as `check` would). KEYS: user set. ARGV[5]: max lifetime (0: none).
const LUA_LIST: &str = r#"
local maxl = tonumber(ARGV[5])
local out = {}
for _, hex in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local skey = P .. 'sess:' .. hex
  local r = load(skey)
  if not r then
    redis.call('SREM', KEYS[1], hex)
  else
    if not r.ended then
      if redis.call('EXISTS', P .. 'revoked:' .. r.sid) == 1 then
        end_session(skey, r, 'revoked', NOW, true)
      elseif NOW - r.last > r.idle then
        end_session(skey, r, 'idle', NOW, true)
      elseif maxl > 0 and NOW - r.created > maxl then
        end_session(skey, r, 'lifetime', NOW, true)
      end
    end
    flat(out, r)
  end
end
return out
"#;

/// Raises a subject's not-before cut-off (never lowers it). KEYS:
/// notbefore. ARGV[5]: subject, ARGV[6]: time (ms). Returns the cut-off.
const LUA_RAISE_NOT_BEFORE: &str = r#"
return raise_nb(KEYS[1], ARGV[5], tonumber(ARGV[6]))
"#;

/// Deactivates a user and ends every session the user has, in one step,
/// and raises the user's not-before cut-off to now (also when it was
/// deactivated already), or past the one it had: two deactivations never
/// share a cut-off. KEYS: deact, user set, notbefore. ARGV[5]: user key,
/// ARGV[6]: the issuer whose sessions end ('': every issuer's).
/// Returns `{changed, since, cut-off, ended records...}`.
const LUA_DEACTIVATE: &str = r#"
local at = NOW
local cur = tonumber(redis.call('HGET', KEYS[3], ARGV[5]) or '0')
if at <= cur then at = cur + 1 end
local nb = raise_nb(KEYS[3], ARGV[5], at)
redis.call('PUBLISH', CH, 'notbefore ' .. nb .. ' ' .. ARGV[5])
local changed = redis.call('HSETNX', KEYS[1], ARGV[5], s(NOW))
local since = redis.call('HGET', KEYS[1], ARGV[5])
redis.call('PUBLISH', CH, 'deact ' .. since .. ' ' .. ARGV[5])
local out = { s(changed), since, nb }
for _, v in ipairs(end_all(KEYS[2], 'revoked', ARGV[6])) do out[#out + 1] = v end
return out
"#;

/// KEYS: deact, notbefore. ARGV[5]: subject. Returns whether it was
/// deactivated. The cut-off stays; it is raised to the deactivation's
/// `since` in case that deactivation was written without one.
const LUA_REACTIVATE: &str = r#"
local since = redis.call('HGET', KEYS[1], ARGV[5])
if since then raise_nb(KEYS[2], ARGV[5], tonumber(since)) end
local changed = redis.call('HDEL', KEYS[1], ARGV[5])
redis.call('PUBLISH', CH, 'react ' .. ARGV[5])
return s(changed)
"#;

/// A batch of shared records (`shared.rs`). ARGV[5]: the batch as JSON
/// (passed on in the event as it is); then per op five arguments: kind
/// (`put`/`del`), namespace, key, expiry (`-` for none), value. A record is
/// stored as `<expiry or -> <value>` in the hash `state:{ns}`; the
/// namespace joins the set `state-ns`. Conditions come first, five
/// arguments each too: `want`, namespace, key, `=` and the value it must
/// hold, or `-` and `` for no live value; if one does not hold, nothing is
/// written and the script returns `conflict`. Otherwise it returns the
/// batch's sequence number (`state-seq`), which its event carries; or,
/// when ARGV[5] is empty (conditions only), `holds`.
const LUA_SHARED: &str = r#"
local i = 6
while ARGV[i] do
  if ARGV[i] == 'want' then
    local cur = redis.call('HGET', P .. 'state:' .. ARGV[i + 1], ARGV[i + 2])
    local val = false
    if cur then
      local sp = string.find(cur, ' ', 1, true)
      local x = string.sub(cur, 1, sp - 1)
      if x == '-' or tonumber(x) > NOW then val = string.sub(cur, sp + 1) end
    end
    if ARGV[i + 3] == '-' then
      if val then return 'conflict' end
    elseif val ~= ARGV[i + 4] then
      return 'conflict'
    end
  end
  i = i + 5
end
if ARGV[5] == '' then return 'holds' end
local seq = redis.call('INCR', P .. 'state-seq')
i = 6
while ARGV[i] do
  local key = P .. 'state:' .. ARGV[i + 1]
  if ARGV[i] == 'put' then
    redis.call('HSET', key, ARGV[i + 2], ARGV[i + 3] .. ' ' .. ARGV[i + 4])
    redis.call('SADD', P .. 'state-ns', ARGV[i + 1])
  elseif ARGV[i] == 'del' then
    redis.call('HDEL', key, ARGV[i + 2])
  end
  i = i + 5
end
redis.call('PUBLISH', CH, 'state ' .. s(seq) .. ' ' .. ARGV[5])
return s(seq)
"#;

/// One pre-upgrade session record (`rolegate:s:{sid}`, keyed by session id
/// alone: hash `sub created last idle exp ended ended_at`). KEYS: the old
/// key, the id's revocation. ARGV[5..]: sid, max lifetime (0: none).
/// Whatever the record says (ended, idle or past its lifetime by now, or
/// still active: it cannot be moved under the new keys, and keeping it
/// active would be a guess), its id is revoked for every user until the
/// later of its token's expiry and `retention` after it ended (now, if it
/// had not), and published; then the old key is deleted. Idempotent.
/// Returns what the record said: ended, idle, lifetime or active.
const LUA_MIGRATE: &str = r#"
local sid, maxl = ARGV[5], tonumber(ARGV[6])
local h = redis.call('HMGET', KEYS[1], 'created', 'last', 'idle', 'exp', 'ended', 'ended_at')
local created = tonumber(h[1] or s(NOW))
local last = tonumber(h[2] or s(created))
local idle, exp = tonumber(h[3] or '0'), tonumber(h[4] or '0')
local kind, at = 'active', NOW
if h[5] and h[5] ~= '' then
  kind, at = 'ended', tonumber(h[6] or s(NOW))
elseif NOW - last > idle then
  kind = 'idle'
elseif maxl > 0 and NOW - created > maxl then
  kind = 'lifetime'
end
local untl = math.max(exp, at + RET)
if untl > NOW then
  local prev = redis.call('GET', KEYS[2])
  if prev then at = math.min(at, tonumber(prev)) end
  redis.call('SET', KEYS[2], s(at), 'KEEPTTL')
  extend(KEYS[2], untl)
  redis.call('PUBLISH', CH, 'revid ' .. s(at) .. ' ' .. s(untl) .. ' ' .. sid)
end
redis.call('DEL', KEYS[1])
return kind
"#;

struct Scripts {
    migrate: Script,
    check: Script,
    end: Script,
    revoke_id: Script,
    touch: Script,
    end_user: Script,
    list: Script,
    deactivate: Script,
    reactivate: Script,
    raise_not_before: Script,
    shared: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{LUA_PRELUDE}{body}"));
        Scripts {
            migrate: s(LUA_MIGRATE),
            check: s(LUA_CHECK),
            end: s(LUA_END),
            revoke_id: s(LUA_REVOKE_ID),
            touch: s(LUA_TOUCH),
            end_user: s(LUA_END_USER),
            list: s(LUA_LIST),
            deactivate: s(LUA_DEACTIVATE),
            reactivate: s(LUA_REACTIVATE),
            raise_not_before: s(LUA_RAISE_NOT_BEFORE),
            shared: s(LUA_SHARED),
        }
    }
}

/// One message on the events channel. Wire format (the arbitrary strings
/// last, issuer and subject length-prefixed):
/// `end <reason> <at_ms> <exp_ms> <iss_len>:<iss><sub_len>:<sub><sid>`,
/// `revid <at_ms> <until_ms> <sid>`, `deact <since_ms> <sub>`,
/// `notbefore <cut_off_ms> <sub>`, `react <sub>`, `state <seq> <JSON batch>`.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    End {
        reason: EndReason,
        at: u64,
        exp: u64,
        issuer: String,
        subject: String,
        session: String,
    },
    RevokeId {
        at: u64,
        until: u64,
        session: String,
    },
    Deactivate {
        since: u64,
        subject: String,
    },
    NotBefore {
        at: u64,
        subject: String,
    },
    Reactivate {
        subject: String,
    },
    /// A batch of shared records and its sequence number.
    Shared {
        seq: u64,
        ops: Vec<SharedOp>,
    },
}

/// Splits `<len>:<text><rest>` into `(text, rest)`.
fn length_prefixed(s: &str) -> Option<(&str, &str)> {
    let (len, tail) = s.split_once(':')?;
    let len: usize = len.parse().ok()?;
    Some((tail.get(..len)?, tail.get(len..)?))
}

impl Event {
    fn parse(s: &str) -> Option<Event> {
        let (kind, rest) = s.split_once(' ')?;
        match kind {
            "end" => {
                let mut it = rest.splitn(4, ' ');
                let reason = EndReason::parse(it.next()?)?;
                let at = it.next()?.parse().ok()?;
                let exp = it.next()?.parse().ok()?;
                let (issuer, tail) = length_prefixed(it.next()?)?;
                let (subject, session) = length_prefixed(tail)?;
                Some(Event::End {
                    reason,
                    at,
                    exp,
                    issuer: issuer.to_string(),
                    subject: subject.to_string(),
                    session: session.to_string(),
                })
            }
            "revid" => {
                let mut it = rest.splitn(3, ' ');
                Some(Event::RevokeId {
                    at: it.next()?.parse().ok()?,
                    until: it.next()?.parse().ok()?,
                    session: it.next()?.to_string(),
                })
            }
            "deact" => {
                let (since, subject) = rest.split_once(' ')?;
                Some(Event::Deactivate {
                    since: since.parse().ok()?,
                    subject: subject.to_string(),
                })
            }
            "notbefore" => {
                let (at, subject) = rest.split_once(' ')?;
                Some(Event::NotBefore {
                    at: at.parse().ok()?,
                    subject: subject.to_string(),
                })
            }
            "react" => Some(Event::Reactivate {
                subject: rest.to_string(),
            }),
            "state" => {
                let (seq, ops) = rest.split_once(' ')?;
                Some(Event::Shared {
                    seq: seq.parse().ok()?,
                    ops: serde_json::from_str(ops).ok()?,
                })
            }
            _ => None,
        }
    }
}

/// Runs one Redis call with the [`OP_TIMEOUT`] bound.
async fn bounded<T>(
    what: &str,
    fut: impl Future<Output = RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StoreError(format!("redis {what}: {e}"))),
        Err(_) => Err(StoreError(format!(
            "redis {what}: no answer within {} ms",
            OP_TIMEOUT.as_millis()
        ))),
    }
}

fn parse_u64(s: &str) -> Result<u64, StoreError> {
    s.parse()
        .map_err(|_| StoreError(format!("redis: unexpected number {s:?} in a script reply")))
}

/// Fields per record in the scripts' `reply`.
const RECORD_FIELDS: usize = 9;

/// A record from the fields of the scripts' `reply`.
fn parse_record(f: &[String]) -> Result<Record, StoreError> {
    let [iss, sub, sid, created, last, idle, exp, ended, ended_at] = f else {
        return Err(StoreError("redis: malformed session record".into()));
    };
    let ended = match ended.as_str() {
        "" => None,
        r => Some((
            EndReason::parse(r).ok_or_else(|| StoreError(format!("redis: end reason {r:?}")))?,
            parse_u64(ended_at)?,
        )),
    };
    Ok(Record {
        issuer: iss.clone(),
        subject: sub.clone(),
        session: sid.clone(),
        created_ms: parse_u64(created)?,
        last_ms: parse_u64(last)?,
        idle_ms: parse_u64(idle)?,
        exp_ms: parse_u64(exp)?,
        ended,
    })
}

fn parse_records(v: &[String]) -> Result<Vec<Record>, StoreError> {
    if !v.len().is_multiple_of(RECORD_FIELDS) {
        return Err(StoreError("redis: malformed session list".into()));
    }
    v.chunks(RECORD_FIELDS).map(parse_record).collect()
}

fn session_key(key: &Key) -> String {
    format!("{PREFIX}sess:{}", key.hex())
}

fn user_key(sub: &str) -> String {
    format!("{PREFIX}u:{sub}")
}

fn sid_key(sid: &str) -> String {
    format!("{PREFIX}sid:{sid}")
}

fn revoked_key(sid: &str) -> String {
    format!("{PREFIX}revoked:{sid}")
}

fn deact_key() -> String {
    format!("{PREFIX}deact")
}

fn not_before_key() -> String {
    format!("{PREFIX}notbefore")
}

fn shared_key(ns: &str) -> String {
    format!("{PREFIX}state:{ns}")
}

/// A shared record's hash value: `<expiry ms or -> <value>`.
fn shared_value(x: Option<u64>, v: &str) -> String {
    match x {
        Some(x) => format!("{} {v}", x.min(MAX_MS)),
        None => format!("- {v}"),
    }
}

fn parse_shared(raw: &str) -> Option<(Option<u64>, &str)> {
    let (x, v) = raw.split_once(' ')?;
    let x = match x {
        "-" => None,
        n => Some(n.parse().ok()?),
    };
    Some((x, v))
}

fn epoch_key() -> String {
    format!("{PREFIX}epoch")
}

fn new_epoch() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        now_ms(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Merges freshly dirty records into the unwritten ones (max activity wins).
fn merge_pending(pending: &mut Vec<Record>, dirty: Vec<Record>) {
    if pending.is_empty() {
        *pending = dirty;
        return;
    }
    let mut at: HashMap<Key, usize> = pending
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id().key(), i))
        .collect();
    for r in dirty {
        let key = r.id().key();
        match at.get(&key) {
            Some(&i) => {
                let p = &mut pending[i];
                p.last_ms = p.last_ms.max(r.last_ms);
                p.exp_ms = p.exp_ms.max(r.exp_ms);
                p.idle_ms = r.idle_ms;
            }
            None => {
                at.insert(key, pending.len());
                pending.push(r);
            }
        }
    }
    if pending.len() > MAX_PENDING {
        let dropped = pending.len() - MAX_PENDING;
        pending.truncate(MAX_PENDING);
        tracing::warn!(
            sessions = dropped,
            "redis session store: unwritten activity dropped (Redis unreachable too long)"
        );
    }
}

struct Inner {
    table: Table,
    /// Commands; reconnects by itself. Cloned per call (an `Arc`).
    conn: ConnectionManager,
    /// For the subscriber's own connection.
    client: Client,
    channel: String,
    scripts: Scripts,
    retention_ms: u64,
    max_lifetime_ms: Option<u64>,
    /// The subscription is up and the mirror was resynced after it came
    /// up. False → `check` fails closed (the mirror may miss revocations).
    subscribed: AtomicBool,
    /// Bumped whenever the subscription goes down or comes back: a slow-path
    /// answer read under another generation is not mirrored (it could
    /// otherwise re-insert a session the resync just forgot).
    generation: AtomicU64,
    /// Serialises flushes and holds activity a failed flush could not write.
    pending: tokio::sync::Mutex<Vec<Record>>,
    /// Ends this gateway decided (and answered) but could not write to
    /// Redis; the flush task retries them.
    unwritten_ends: Mutex<Vec<Record>>,
    /// The `rolegate:epoch` value of the dataset we are in sync with.
    epoch: Mutex<String>,
    /// The sequence number of the last shared-records batch applied to
    /// the mirror (events arrive in the order Redis ran the batches).
    shared_seq: tokio::sync::watch::Sender<u64>,
}

impl Inner {
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// An invocation with the prelude's ARGV filled in.
    fn invocation<'a>(&self, script: &'a Script, now: u64) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.arg(PREFIX)
            .arg(now)
            .arg(self.retention_ms)
            .arg(&self.channel);
        inv
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        what: &str,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut c = self.conn();
        bounded(what, inv.invoke_async(&mut c)).await
    }

    /// Applies a slow-path answer to the mirror (unless the subscription
    /// flapped meanwhile).
    fn mirror(&self, r: &Record, generation: u64) {
        if self.subscribed.load(Ordering::Acquire)
            && self.generation.load(Ordering::Acquire) == generation
        {
            self.table.apply(r);
        }
    }

    async fn slow_check(&self, t: &Touch<'_>) -> Result<Verdict, StoreError> {
        let generation = self.generation.load(Ordering::Acquire);
        let key = t.key();
        let mut inv = self.invocation(&self.scripts.check, t.now_ms);
        inv.key(session_key(&key))
            .key(deact_key())
            .key(revoked_key(t.session))
            .key(not_before_key())
            .arg(key.hex())
            .arg(t.issuer)
            .arg(t.subject)
            .arg(t.session)
            .arg(t.idle_ms.min(MAX_MS))
            .arg(t.max_lifetime_ms.unwrap_or(0).min(MAX_MS))
            .arg(t.token_exp_ms.min(MAX_MS))
            .arg(if t.touch { "1" } else { "0" })
            .arg(
                t.token_iat_ms
                    .map(|i| i.min(MAX_MS).to_string())
                    .unwrap_or_default(),
            )
            .arg(issuer_user_key(t.issuer, t.subject));
        let v: Vec<String> = self.invoke("check", &inv).await?;
        match v.first().map(String::as_str) {
            Some("deact") => Ok(Verdict::Deactivated),
            Some("notbefore") => {
                // A cut-off only ever rises: safe to mirror whenever read.
                if let (Some(nb), Some(user)) = (v.get(1), v.get(2)) {
                    self.table.set_not_before(user, parse_u64(nb)?);
                }
                Ok(Verdict::Ended(EndReason::Revoked))
            }
            Some("ok") => {
                let r = parse_record(&v[1..])?;
                self.mirror(&r, generation);
                Ok(match r.ended {
                    Some((reason, _)) => Verdict::Ended(reason),
                    None => Verdict::Active,
                })
            }
            _ => Err(StoreError("redis check: unexpected reply".into())),
        }
    }

    /// Writes an end the mirror decided by itself (rare races) and
    /// publishes it.
    async fn persist_end(&self, r: &Record) -> Result<(), StoreError> {
        let (reason, at) = r.ended.unwrap_or((EndReason::Idle, now_ms()));
        self.end_in_redis(r.id(), reason, at, r.exp_ms, true)
            .await
            .map(|_| ())
    }

    /// Writes an end decided here; on failure keeps it for the flush task
    /// to retry. The refusal itself is answered either way.
    async fn persist_or_queue_end(&self, r: Record) {
        if let Err(e) = self.persist_end(&r).await {
            tracing::error!(error = %e, "redis session store: a session end could not be written (refused anyway; retried)");
            self.unwritten_ends
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(r);
        }
    }

    /// Retries the ends [`Self::persist_or_queue_end`] could not write.
    async fn retry_unwritten_ends(&self) {
        let ends = std::mem::take(
            &mut *self
                .unwritten_ends
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let mut failed = Vec::new();
        for r in ends {
            if self.persist_end(&r).await.is_err() {
                failed.push(r);
            }
        }
        if !failed.is_empty() {
            self.unwritten_ends
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(failed);
        }
    }

    async fn end_in_redis(
        &self,
        id: SessionRef<'_>,
        reason: EndReason,
        at: u64,
        keep_until: u64,
        publish: bool,
    ) -> Result<(bool, Record), StoreError> {
        let key = id.key();
        let mut inv = self.invocation(&self.scripts.end, now_ms());
        inv.key(session_key(&key))
            .arg(key.hex())
            .arg(id.issuer)
            .arg(id.subject)
            .arg(id.session)
            .arg(reason.as_str())
            .arg(keep_until.min(MAX_MS))
            .arg(if publish { "1" } else { "0" })
            .arg(at.min(MAX_MS));
        let v: Vec<String> = self.invoke("end", &inv).await?;
        let changed = v.first().is_some_and(|c| c == "1");
        let r = parse_record(v.get(1..).unwrap_or(&[]))?;
        Ok((changed, r))
    }

    /// One pipeline of `touch` calls; reloads the script if Redis lost it.
    async fn touch_batch(&self, batch: &[Record]) -> Result<(), StoreError> {
        let now = now_ms();
        let hash = self.scripts.touch.get_hash();
        let mut pipe = redis::pipe();
        for r in batch {
            pipe.cmd("EVALSHA")
                .arg(hash)
                .arg(1)
                .arg(session_key(&r.id().key()))
                .arg(PREFIX)
                .arg(now)
                .arg(self.retention_ms)
                .arg(&self.channel)
                .arg(r.last_ms.min(MAX_MS))
                .arg(r.exp_ms.min(MAX_MS))
                .arg(r.idle_ms.min(MAX_MS))
                .ignore();
        }
        let mut c = self.conn();
        let raw = tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(&mut c)).await;
        match raw {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                bounded("script load", self.scripts.touch.load_async(&mut c)).await?;
                bounded("flush", pipe.query_async::<()>(&mut c)).await
            }
            Ok(Err(e)) => Err(StoreError(format!("redis flush: {e}"))),
            Err(_) => Err(StoreError("redis flush: no answer in time".into())),
        }
    }

    /// Writes the activity queued since the last flush (and any left over
    /// from a failed one).
    async fn flush_activity(&self) -> Result<(), StoreError> {
        let mut pending = self.pending.lock().await;
        merge_pending(&mut pending, self.table.take_dirty());
        let mut done = 0;
        let mut result = Ok(());
        for chunk in pending.chunks(FLUSH_BATCH) {
            if let Err(e) = self.touch_batch(chunk).await {
                result = Err(e);
                break;
            }
            done += chunk.len();
        }
        pending.drain(..done);
        result
    }

    /// Periodic: flush, forget active sessions, drop old ended ones.
    async fn refresh_mirror(&self) {
        {
            let mut pending = self.pending.lock().await;
            // Taken and forgotten with nothing awaited in between: at most
            // a touch racing this very instant is lost (and that session's
            // next request re-reads and touches it in Redis anyway).
            merge_pending(&mut pending, self.table.take_dirty());
            self.table.forget_active();
        }
        // Only sessions re-read from Redis in the last instant can be active
        // here, and only one idle by Redis's own view can be ended: make that
        // decision known.
        let ended = self.table.sweep(
            self.table.sweep_now(),
            MIRROR_RETENTION_MS.min(self.retention_ms),
        );
        for r in &ended {
            if let Err(e) = self.persist_end(r).await {
                tracing::warn!(error = %e, "redis session store: could not write a swept end");
            }
        }
        if let Err(e) = self.flush_activity().await {
            tracing::warn!(error = %e, "redis session store: activity flush failed");
        }
    }

    /// After (re)subscribing: catch up with what the subscription may have
    /// missed. Must run after SUBSCRIBE and before any event is applied.
    async fn resync(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        let current: Option<String> = bounded(
            "resync",
            redis::cmd("GET").arg(epoch_key()).query_async(&mut c),
        )
        .await?;
        let known = self.epoch.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if current.as_deref() != Some(known.as_str()) {
            tracing::warn!(
                "redis session store: Redis lost its data; writing back known revocations"
            );
            self.reseed().await?;
            let mut set = redis::cmd("SET");
            set.arg(epoch_key()).arg(new_epoch()).arg("NX");
            bounded("resync", set.query_async::<()>(&mut c)).await?;
            let now: String = bounded(
                "resync",
                redis::cmd("GET").arg(epoch_key()).query_async(&mut c),
            )
            .await?;
            *self.epoch.lock().unwrap_or_else(|p| p.into_inner()) = now;
        }
        let deact: HashMap<String, u64> = bounded(
            "resync",
            redis::cmd("HGETALL").arg(deact_key()).query_async(&mut c),
        )
        .await?;
        for (sub, _) in self.table.deactivated() {
            if !deact.contains_key(&sub) {
                self.table.reactivate(&sub);
            }
        }
        for (sub, since) in &deact {
            self.table.set_deactivated(sub, *since);
        }
        let not_before: HashMap<String, u64> = bounded(
            "resync",
            redis::cmd("HGETALL")
                .arg(not_before_key())
                .query_async(&mut c),
        )
        .await?;
        for (sub, at) in &not_before {
            self.table.set_not_before(sub, *at);
        }
        self.resync_shared().await?;
        self.reread_active().await?;
        // Keep the activity not yet written; the next flush retries it.
        let mut pending = self.pending.lock().await;
        merge_pending(&mut pending, self.table.take_dirty());
        self.table.forget_active();
        Ok(())
    }

    /// Ends published while the subscription was down were missed: the
    /// sessions the mirror holds as active are read back from Redis once,
    /// and those that ended meanwhile end in the mirror too (their open
    /// websockets and long-lived answers, which judge the session on the
    /// mirror alone, stop).
    async fn reread_active(&self) -> Result<(), StoreError> {
        const FIELDS: [&str; RECORD_FIELDS] = [
            "iss", "sub", "sid", "created", "last", "idle", "exp", "ended", "ended_at",
        ];
        let mut c = self.conn();
        for chunk in self.table.active_keys().chunks(FLUSH_BATCH) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("HMGET").arg(session_key(key)).arg(&FIELDS[..]);
            }
            let rows: Vec<Vec<Option<String>>> =
                bounded("resync", pipe.query_async(&mut c)).await?;
            for row in rows {
                // Gone (expired) or still active: nothing to learn.
                let (Some(created), Some(Some(_))) = (row.get(3).cloned().flatten(), row.get(7))
                else {
                    continue;
                };
                let field = |i: usize, default: &str| {
                    row.get(i)
                        .cloned()
                        .flatten()
                        .unwrap_or_else(|| default.to_string())
                };
                let fields = [
                    field(0, ""),
                    field(1, ""),
                    field(2, ""),
                    created.clone(),
                    field(4, &created),
                    field(5, "0"),
                    field(6, "0"),
                    field(7, ""),
                    field(8, "0"),
                ];
                self.table.apply(&parse_record(&fields)?);
            }
        }
        Ok(())
    }

    /// Reloads the shared records from Redis (a missed event may have
    /// removed one); drops expired ones from Redis on the way.
    async fn resync_shared(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        let seq: Option<u64> = bounded(
            "resync",
            redis::cmd("GET")
                .arg(format!("{PREFIX}state-seq"))
                .query_async(&mut c),
        )
        .await?;
        let namespaces: Vec<String> = bounded(
            "resync",
            redis::cmd("SMEMBERS")
                .arg(format!("{PREFIX}state-ns"))
                .query_async(&mut c),
        )
        .await?;
        let now = now_ms();
        let mut ops = Vec::new();
        let mut expired = redis::pipe();
        for ns in namespaces {
            let key = shared_key(&ns);
            let h: HashMap<String, String> = bounded(
                "resync",
                redis::cmd("HGETALL").arg(&key).query_async(&mut c),
            )
            .await?;
            for (k, raw) in h {
                let (x, v) = parse_shared(&raw)
                    .ok_or_else(|| StoreError(format!("unreadable shared record in {key}: {k}")))?;
                if x.is_some_and(|x| x <= now) {
                    expired.cmd("HDEL").arg(&key).arg(&k).ignore();
                    continue;
                }
                ops.push(SharedOp::Put {
                    ns: ns.clone(),
                    k,
                    v: v.to_string(),
                    x,
                });
            }
        }
        self.table.shared().replace_all(&ops);
        self.shared_seq.send_replace(seq.unwrap_or(0));
        if !expired.is_empty()
            && let Err(e) = bounded("resync", expired.query_async::<()>(&mut c)).await
        {
            tracing::warn!(error = %e, "redis session store: expired shared records not dropped");
        }
        Ok(())
    }

    /// Writes back the ended sessions and deactivations of the mirror.
    async fn reseed(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        bounded("script load", self.scripts.end.load_async(&mut c)).await?;
        bounded(
            "script load",
            self.scripts.raise_not_before.load_async(&mut c),
        )
        .await?;
        let deact = self.table.deactivated();
        let ended: Vec<Record> = self
            .table
            .snapshot()
            .into_iter()
            .filter(|r| r.ended.is_some())
            .collect();
        let now = now_ms();
        let mut pipe = redis::pipe();
        for (sub, since) in &deact {
            pipe.cmd("HSETNX")
                .arg(deact_key())
                .arg(sub)
                .arg(since)
                .ignore();
        }
        for (sub, at) in self.table.not_befores() {
            pipe.cmd("EVALSHA")
                .arg(self.scripts.raise_not_before.get_hash())
                .arg(1)
                .arg(not_before_key())
                .arg(PREFIX)
                .arg(now)
                .arg(self.retention_ms)
                .arg(&self.channel)
                .arg(sub)
                .arg(at.min(MAX_MS))
                .ignore();
        }
        for (sid, r) in self.table.revoked_ids() {
            if r.until_ms <= now {
                continue;
            }
            // Created with its expiry, or an existing one only extended
            // (another gateway may have written a later one already).
            let key = revoked_key(&sid);
            let until = r.until_ms.min(MAX_MS);
            pipe.cmd("SET")
                .arg(&key)
                .arg(r.at_ms)
                .arg("NX")
                .arg("PXAT")
                .arg(until)
                .ignore()
                .cmd("PEXPIREAT")
                .arg(&key)
                .arg(until)
                .arg("GT")
                .ignore();
        }
        for r in &ended {
            let (reason, at) = r.ended.unwrap_or((EndReason::Revoked, now));
            let key = r.id().key();
            pipe.cmd("EVALSHA")
                .arg(self.scripts.end.get_hash())
                .arg(1)
                .arg(session_key(&key))
                .arg(PREFIX)
                .arg(now)
                .arg(self.retention_ms)
                .arg(&self.channel)
                .arg(key.hex())
                .arg(&r.issuer)
                .arg(&r.subject)
                .arg(&r.session)
                .arg(reason.as_str())
                .arg(r.exp_ms.min(MAX_MS))
                .arg("0")
                .arg(at.min(MAX_MS))
                .ignore();
            if pipe.len() >= FLUSH_BATCH {
                bounded("reseed", pipe.query_async::<()>(&mut c)).await?;
                pipe = redis::pipe();
            }
        }
        for op in self.table.shared().snapshot(now) {
            if let SharedOp::Put { ns, k, v, x } = op {
                pipe.cmd("HSETNX")
                    .arg(shared_key(&ns))
                    .arg(k)
                    .arg(shared_value(x, &v))
                    .ignore()
                    .cmd("SADD")
                    .arg(format!("{PREFIX}state-ns"))
                    .arg(ns)
                    .ignore();
            }
            if pipe.len() >= FLUSH_BATCH {
                bounded("reseed", pipe.query_async::<()>(&mut c)).await?;
                pipe = redis::pipe();
            }
        }
        if !pipe.is_empty() {
            bounded("reseed", pipe.query_async::<()>(&mut c)).await?;
        }
        Ok(())
    }

    /// The one-time upgrade from sessions keyed by id alone: every
    /// `rolegate:s:{sid}` record left by an older version becomes a
    /// revocation of its id (see [`LUA_MIGRATE`]), so no session ended
    /// before the upgrade comes back. Run at every `open`; finds nothing
    /// once done. Returns how many records were migrated, by kind.
    async fn migrate_legacy(&self) -> Result<Migrated, StoreError> {
        let mut c = self.conn();
        let old = format!("{PREFIX}s:");
        let pattern = format!("{old}*");
        let mut n = Migrated::default();
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1_000)
                .arg("TYPE")
                .arg("hash");
            let (next, keys): (u64, Vec<String>) =
                bounded("upgrade scan", scan.query_async(&mut c)).await?;
            for key in &keys {
                let Some(sid) = key.strip_prefix(&old) else {
                    continue;
                };
                let mut inv = self.invocation(&self.scripts.migrate, now_ms());
                inv.key(key)
                    .key(revoked_key(sid))
                    .arg(sid)
                    .arg(self.max_lifetime_ms.unwrap_or(0).min(MAX_MS));
                let kind: String = self.invoke("upgrade", &inv).await?;
                match kind.as_str() {
                    "ended" => n.ended += 1,
                    "idle" => n.idle += 1,
                    "lifetime" => n.lifetime += 1,
                    _ => n.active += 1,
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(n);
            }
        }
    }

    /// Connects the subscriber, subscribes, resyncs; then `check` may answer.
    async fn subscribe(&self) -> Result<(PubSubSink, PubSubStream), StoreError> {
        let pubsub = bounded("subscribe", self.client.get_async_pubsub()).await?;
        let (mut sink, stream) = pubsub.split();
        bounded("subscribe", sink.subscribe(&self.channel)).await?;
        // Events published from here on are buffered in `stream` and applied
        // after the resync, in order.
        self.resync().await?;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.subscribed.store(true, Ordering::Release);
        // Ends published while the subscription was down were missed: every
        // open websocket re-checks its session (the mirror forgot the active
        // ones, so each check asks Redis once).
        self.table.watchers().fire_all();
        Ok((sink, stream))
    }

    fn subscription_lost(&self) {
        self.subscribed.store(false, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Applies one event to the mirror; false when it cannot be read.
    fn apply_event(&self, payload: &str) -> bool {
        match Event::parse(payload) {
            Some(Event::End {
                reason,
                at,
                exp,
                issuer,
                subject,
                session,
            }) => {
                let id = SessionRef {
                    issuer: &issuer,
                    subject: &subject,
                    session: &session,
                };
                self.table.end(id, reason, at, exp);
            }
            Some(Event::RevokeId { at, until, session }) => {
                self.table.set_revoked_id(
                    &session,
                    RevokedId {
                        at_ms: at,
                        until_ms: until,
                    },
                );
            }
            Some(Event::Deactivate { since, subject }) => {
                self.table.set_deactivated(&subject, since)
            }
            Some(Event::NotBefore { at, subject }) => self.table.set_not_before(&subject, at),
            Some(Event::Reactivate { subject }) => {
                self.table.reactivate(&subject);
            }
            Some(Event::Shared { seq, ops }) => {
                self.table.shared().apply(&ops);
                self.table.shared_changed(&ops);
                self.shared_seq.send_replace(seq);
            }
            None => return false,
        }
        true
    }

    /// Applies events until the subscriber connection is lost.
    async fn serve_events(&self, sink: &mut PubSubSink, stream: &mut PubSubStream) {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    // An event that cannot be read may have been an end, a
                    // revocation or a deactivation: the mirror can no longer
                    // vouch for itself, exactly as after a lost connection.
                    // Treated as one: fail closed, resubscribe, resync.
                    Some(m) => match m.get_payload::<String>() {
                        Ok(p) if self.apply_event(&p) => {}
                        Ok(_) => {
                            tracing::error!("redis session store: unreadable event; treated as a lost subscription (resync)");
                            return;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "redis session store: bad event payload; treated as a lost subscription (resync)");
                            return;
                        }
                    },
                    None => return,
                },
                _ = ping.tick() => {
                    if let Err(e) = bounded("ping", sink.ping::<redis::Value>()).await {
                        tracing::warn!(error = %e, "redis session store: subscriber ping failed");
                        return;
                    }
                }
            }
        }
    }
}

/// The subscriber task: serve events, and on loss fail closed and retry.
async fn run_subscriber(inner: Arc<Inner>, mut conn: Option<(PubSubSink, PubSubStream)>) {
    loop {
        if let Some((mut sink, mut stream)) = conn.take() {
            inner.serve_events(&mut sink, &mut stream).await;
            inner.subscription_lost();
            tracing::warn!(
                "redis session store: subscription lost; session checks fail closed until it is back"
            );
        }
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
        match inner.subscribe().await {
            Ok(c) => {
                tracing::info!("redis session store: subscription re-established, mirror resynced");
                conn = Some(c);
            }
            Err(e) => tracing::debug!(error = %e, "redis session store: resubscribe failed"),
        }
    }
}

/// The flush task: activity every `flush_interval`, mirror housekeeping
/// every [`MIRROR_REFRESH`].
async fn run_flusher(inner: Arc<Inner>, every: Duration) {
    let refresh_every = (MIRROR_REFRESH.as_millis() / every.as_millis().max(1)).max(1) as u64;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n = n.wrapping_add(1);
        inner.retry_unwritten_ends().await;
        if n.is_multiple_of(refresh_every) {
            inner.refresh_mirror().await;
        } else if let Err(e) = inner.flush_activity().await {
            tracing::warn!(error = %e, "redis session store: activity flush failed (retried)");
        }
    }
}

/// Whether Redis may drop rolegate's keys to free memory (`CONFIG GET
/// maxmemory-policy`, `maxmemory`). Revocations and ended sessions are keys
/// with a TTL, so any `volatile-*` policy may evict them; `allkeys-*` may
/// also drop `rolegate:deact` and `rolegate:notbefore`. A dropped
/// revocation is a session that works again: only `noeviction` is safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eviction {
    /// `noeviction`: Redis refuses writes when full, never drops keys.
    Never,
    /// Another policy. With `maxmemory` 0 (no limit) nothing is evicted
    /// yet, but setting a limit at run time would start it.
    Possible { policy: String, maxmemory: u64 },
    /// `CONFIG` is not available (managed Redis often disables it).
    Unknown(String),
}

/// Asks Redis for its eviction settings (see [`Eviction`]).
pub async fn eviction(c: &mut impl redis::aio::ConnectionLike) -> Eviction {
    let get = |name: &'static str| {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg(name);
        cmd
    };
    let policy = bounded(
        "config get",
        get("maxmemory-policy").query_async::<HashMap<String, String>>(c),
    )
    .await;
    let maxmemory = bounded(
        "config get",
        get("maxmemory").query_async::<HashMap<String, String>>(c),
    )
    .await;
    let (policy, maxmemory) = match (policy, maxmemory) {
        (Ok(p), Ok(m)) => (p, m),
        (Err(e), _) | (_, Err(e)) => return Eviction::Unknown(e.0),
    };
    let Some(policy) = policy.get("maxmemory-policy") else {
        return Eviction::Unknown("CONFIG GET maxmemory-policy answered nothing".into());
    };
    if policy == "noeviction" {
        return Eviction::Never;
    }
    Eviction::Possible {
        policy: policy.clone(),
        maxmemory: maxmemory
            .get("maxmemory")
            .and_then(|m| m.parse().ok())
            .unwrap_or(0),
    }
}

/// Pre-upgrade session records turned into revocations at `open`, by what
/// the record said.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub ended: usize,
    pub idle: usize,
    pub lifetime: usize,
    /// Still active: revoked too (a forced re-login; see the README).
    pub active: usize,
}

impl Migrated {
    pub fn total(&self) -> usize {
        self.ended + self.idle + self.lifetime + self.active
    }
}

pub struct RedisStore {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RedisStore {
    /// Connects (`redis://host:port[/db]`), subscribes and starts the
    /// background tasks. Fails if Redis is unreachable.
    pub async fn open(url: &str, settings: &SessionSettings) -> Result<RedisStore, String> {
        let client = Client::open(url).map_err(|e| format!("redis url: {e}"))?;
        let db = client.get_connection_info().redis_settings().db();
        let channel = if db == 0 {
            format!("{PREFIX}events")
        } else {
            format!("{PREFIX}events:{db}")
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = match tokio::time::timeout(
            OPEN_TIMEOUT,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(format!("cannot connect to redis: {e}")),
            Err(_) => return Err("cannot connect to redis: timed out".into()),
        };
        let mut c = conn.clone();
        // Evicted revocations are sessions that work again: refuse to start
        // on a Redis that evicts now; say so loudly when it could.
        match eviction(&mut c).await {
            Eviction::Never => {}
            Eviction::Possible { policy, maxmemory } if maxmemory > 0 => {
                return Err(format!(
                    "redis evicts keys (maxmemory {maxmemory}, maxmemory-policy {policy}): it could drop \
                     revocations and deactivations, and those sessions would work again; run Redis with \
                     maxmemory-policy noeviction"
                ));
            }
            Eviction::Possible { policy, .. } => tracing::error!(
                policy = %policy,
                "redis session store: maxmemory-policy is not noeviction; with no maxmemory set nothing \
                 is evicted yet, but setting one would let Redis drop revocations. Set maxmemory-policy \
                 noeviction"
            ),
            Eviction::Unknown(e) => tracing::warn!(
                error = %e,
                "redis session store: could not check maxmemory-policy (CONFIG unavailable); make sure it \
                 is noeviction, or revocations may be evicted"
            ),
        }
        let mut set = redis::cmd("SET");
        set.arg(epoch_key()).arg(new_epoch()).arg("NX");
        bounded("open", set.query_async::<()>(&mut c))
            .await
            .map_err(|e| e.0)?;
        let epoch: String = bounded(
            "open",
            redis::cmd("GET").arg(epoch_key()).query_async(&mut c),
        )
        .await
        .map_err(|e| e.0)?;
        let inner = Arc::new(Inner {
            table: Table::new(),
            conn,
            client,
            channel,
            scripts: Scripts::new(),
            retention_ms: settings.retention.as_millis() as u64,
            max_lifetime_ms: settings.max_lifetime.map(|m| m.as_millis() as u64),
            subscribed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            pending: tokio::sync::Mutex::new(Vec::new()),
            unwritten_ends: Mutex::new(Vec::new()),
            epoch: Mutex::new(epoch),
            shared_seq: tokio::sync::watch::Sender::new(0),
        });
        let migrated = inner.migrate_legacy().await.map_err(|e| e.0)?;
        if migrated.total() > 0 {
            tracing::warn!(
                ended = migrated.ended,
                idle = migrated.idle,
                lifetime = migrated.lifetime,
                active = migrated.active,
                "redis session store: pre-upgrade sessions (keyed by session id alone) revoked by id; \
                 their users must log in again"
            );
        }
        let sub = inner.subscribe().await.map_err(|e| e.0)?;
        let every = settings.flush_interval.max(Duration::from_millis(10));
        let tasks = vec![
            tokio::spawn(run_subscriber(inner.clone(), Some(sub))),
            tokio::spawn(run_flusher(inner.clone(), every)),
        ];
        Ok(RedisStore { inner, tasks })
    }

    /// The per-request check (and touch): see the module doc for the fast
    /// and slow paths.
    ///
    /// Refusals this gateway already knows (a deactivated user, a revoked
    /// id, a not-before cut-off, an ended session) are answered first, from
    /// the mirror, also while Redis or the subscription is down: an ended
    /// session never comes back, so they cannot be stale in the dangerous
    /// direction, and a store error here would let `on_store_error: allow`
    /// forward the request. Only then does a lost subscription fail.
    pub async fn check(&self, t: &Touch<'_>) -> Result<Verdict, StoreError> {
        let inner = &*self.inner;
        if inner.table.user_deactivated(t.issuer, t.subject) {
            return Ok(Verdict::Deactivated);
        }
        if inner.table.is_revoked_id(t.session)
            || inner
                .table
                .user_cut_off(t.issuer, t.subject, t.token_iat_ms)
        {
            return Ok(Verdict::Ended(EndReason::Revoked));
        }
        let local = inner.table.get_key(&t.key());
        if let Some((reason, at)) = local.as_ref().and_then(|r| r.ended) {
            // Ended for good. A newer token of that session: make Redis
            // keep the record until it expires too (best effort: the
            // refusal stands either way).
            if local
                .as_ref()
                .is_some_and(|r| t.token_exp_ms.min(MAX_MS) > r.exp_ms)
            {
                match inner
                    .end_in_redis(t.id(), reason, at, t.token_exp_ms, false)
                    .await
                {
                    Ok((_, rec)) => inner.table.apply(&rec),
                    Err(e) => {
                        tracing::warn!(error = %e, "redis session store: could not extend an ended session's record")
                    }
                }
            }
            return Ok(Verdict::Ended(reason));
        }
        if !inner.subscribed.load(Ordering::Acquire) {
            return Err(StoreError(
                "redis event subscription is down (revocations could be missed)".into(),
            ));
        }
        if let Some(r) = local {
            if !mirror_can_decide(&r, t) {
                return inner.slow_check(t).await;
            }
            let (verdict, change) = inner.table.check(t);
            if let Change::Ended(r) = change {
                // A concurrent request of the same session with a shorter
                // timeout (or a deactivation racing this request) made the
                // mirror end it: make that known, and refuse either way.
                inner.persist_or_queue_end(r).await;
            }
            return Ok(verdict);
        }
        inner.slow_check(t).await
    }

    /// Ends one session (logout) in Redis, publishes it, and mirrors it.
    /// Returns whether it was not ended before.
    pub async fn end(
        &self,
        id: SessionRef<'_>,
        reason: EndReason,
        keep_until_ms: u64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let (changed, r) = self
            .inner
            .end_in_redis(id, reason, now, keep_until_ms.max(now), true)
            .await?;
        self.inner.table.apply(&r);
        Ok(changed)
    }

    /// Revokes a session id for every user (see [`LUA_REVOKE_ID`]) and
    /// mirrors it. Returns whether a session with that id was active.
    pub async fn revoke_id(&self, session: &str, keep_until_ms: u64) -> Result<bool, StoreError> {
        let now = now_ms();
        let until = keep_until_ms.max(now).min(MAX_MS);
        let mut inv = self.inner.invocation(&self.inner.scripts.revoke_id, now);
        inv.key(revoked_key(session))
            .key(sid_key(session))
            .arg(session)
            .arg(until);
        let v: Vec<String> = self.inner.invoke("revoke_id", &inv).await?;
        let ended = parse_records(&v)?;
        // As the script keeps it: until the last of these tokens expires.
        let until = ended.iter().map(|r| r.exp_ms).fold(until, u64::max);
        self.inner.table.set_revoked_id(
            session,
            RevokedId {
                at_ms: now,
                until_ms: until,
            },
        );
        for r in &ended {
            self.inner.table.apply(r);
        }
        Ok(!ended.is_empty())
    }

    /// Ends every active session of a user; returns how many there were.
    pub async fn end_user(&self, user: &str) -> Result<usize, StoreError> {
        let (issuer, subject) = split_user_key(user);
        let mut inv = self
            .inner
            .invocation(&self.inner.scripts.end_user, now_ms());
        inv.key(user_key(subject)).arg(issuer.unwrap_or(""));
        let v: Vec<String> = self.inner.invoke("end_user", &inv).await?;
        let ended = parse_records(&v)?;
        for r in &ended {
            self.inner.table.apply(r);
        }
        Ok(ended.len())
    }

    /// Deactivates a user everywhere. Returns whether it was active before.
    pub async fn deactivate(&self, subject: &str) -> Result<(bool, u64), StoreError> {
        let mut inv = self
            .inner
            .invocation(&self.inner.scripts.deactivate, now_ms());
        let (issuer, sub) = split_user_key(subject);
        inv.key(deact_key())
            .key(user_key(sub))
            .key(not_before_key())
            .arg(subject)
            .arg(issuer.unwrap_or(""));
        let v: Vec<String> = self.inner.invoke("deactivate", &inv).await?;
        let [changed, since, not_before, ended @ ..] = v.as_slice() else {
            return Err(StoreError("redis deactivate: unexpected reply".into()));
        };
        let not_before = parse_u64(not_before)?;
        self.inner.table.set_not_before(subject, not_before);
        self.inner.table.set_deactivated(subject, parse_u64(since)?);
        for r in &parse_records(ended)? {
            self.inner.table.apply(r);
        }
        Ok((changed == "1", not_before))
    }

    /// Reactivates a user everywhere. Returns whether it was deactivated.
    pub async fn reactivate(&self, subject: &str) -> Result<bool, StoreError> {
        let mut inv = self
            .inner
            .invocation(&self.inner.scripts.reactivate, now_ms());
        inv.key(deact_key()).key(not_before_key()).arg(subject);
        let changed: String = self.inner.invoke("reactivate", &inv).await?;
        self.inner.table.reactivate(subject);
        Ok(changed == "1")
    }

    /// Asks Redis (the source of truth), not the mirror.
    pub async fn is_deactivated(&self, subject: &str) -> Result<bool, StoreError> {
        let mut c = self.inner.conn();
        bounded(
            "is_deactivated",
            redis::cmd("HEXISTS")
                .arg(deact_key())
                .arg(subject)
                .query_async(&mut c),
        )
        .await
    }

    /// The subject's not-before cut-off (ms), asked of Redis.
    pub async fn not_before(&self, subject: &str) -> Result<Option<u64>, StoreError> {
        let mut c = self.inner.conn();
        bounded(
            "not_before",
            redis::cmd("HGET")
                .arg(not_before_key())
                .arg(subject)
                .query_async(&mut c),
        )
        .await
    }

    /// A user's sessions (active and ended), oldest first, as Redis has
    /// them after this instance's pending activity is written.
    pub async fn sessions_of(&self, subject: &str) -> Result<Vec<Record>, StoreError> {
        self.inner.flush_activity().await?;
        let mut inv = self.inner.invocation(&self.inner.scripts.list, now_ms());
        inv.key(user_key(subject))
            .arg(self.inner.max_lifetime_ms.unwrap_or(0).min(MAX_MS));
        let v: Vec<String> = self.inner.invoke("sessions_of", &inv).await?;
        let mut out = parse_records(&v)?;
        for r in out.iter().filter(|r| r.ended.is_some()) {
            self.inner.table.apply(r);
        }
        sort_records(&mut out);
        Ok(out)
    }

    /// Which of `subjects` have a session on record: a user's index key
    /// lives as long as the longest-kept of its records.
    pub async fn subjects_seen(
        &self,
        subjects: &std::collections::HashSet<&str>,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut seen = std::collections::HashSet::new();
        let subjects: Vec<&str> = subjects.iter().copied().collect();
        let mut c = self.inner.conn();
        for chunk in subjects.chunks(FLUSH_BATCH) {
            let mut pipe = redis::pipe();
            for sub in chunk {
                pipe.cmd("EXISTS").arg(user_key(sub));
            }
            let found: Vec<bool> = bounded("subjects_seen", pipe.query_async(&mut c)).await?;
            seen.extend(
                chunk
                    .iter()
                    .zip(found)
                    .filter(|(_, f)| *f)
                    .map(|(s, _)| s.to_string()),
            );
        }
        Ok(seen)
    }

    /// Whether the event subscription is up (the mirror is in sync).
    pub fn subscribed(&self) -> bool {
        self.inner.subscribed.load(Ordering::Acquire)
    }

    /// Writes a batch of shared records in one script (which publishes it)
    /// and waits, up to [`OP_TIMEOUT`], until this instance's subscriber
    /// has applied it, so a caller reads its own write. Another instance
    /// applies it when the event reaches it (milliseconds).
    ///
    /// `expect`: conditions checked in the same script, against what Redis
    /// holds (not this instance's mirror); `Ok(false)` when one does not
    /// hold, nothing written.
    pub async fn shared_apply(
        &self,
        expect: &[SharedExpect],
        ops: &[SharedOp],
    ) -> Result<bool, StoreError> {
        let inner = &*self.inner;
        let json = serde_json::to_string(ops).map_err(|e| StoreError(e.to_string()))?;
        let mut inv = inner.invocation(&inner.scripts.shared, now_ms());
        inv.arg(json);
        want_args(&mut inv, expect);
        for op in ops {
            match op {
                SharedOp::Put { ns, k, v, x } => {
                    inv.arg("put").arg(ns).arg(k).arg(match x {
                        Some(x) => x.min(&MAX_MS).to_string(),
                        None => "-".to_string(),
                    });
                    inv.arg(v);
                }
                SharedOp::Del { ns, k } => {
                    inv.arg("del").arg(ns).arg(k).arg("-").arg("");
                }
            }
        }
        let seq: String = inner.invoke("shared records", &inv).await?;
        if seq == "conflict" {
            return Ok(false);
        }
        let seq: u64 = parse_u64(&seq)?;
        let mut rx = inner.shared_seq.subscribe();
        if tokio::time::timeout(OP_TIMEOUT, rx.wait_for(|s| *s >= seq))
            .await
            .is_err()
        {
            tracing::warn!(
                seq,
                "redis session store: shared records written, event not seen yet (applied at the next resync)"
            );
        }
        Ok(true)
    }

    /// Whether every condition holds in Redis now (nothing written).
    pub async fn shared_holds(&self, expect: &[SharedExpect]) -> Result<bool, StoreError> {
        let inner = &*self.inner;
        let mut inv = inner.invocation(&inner.scripts.shared, now_ms());
        inv.arg("");
        want_args(&mut inv, expect);
        let answer: String = inner.invoke("shared records", &inv).await?;
        Ok(answer == "holds")
    }

    /// Ready when the subscription is up and Redis answers a PING in time.
    pub async fn ready(&self) -> bool {
        if !self.inner.subscribed.load(Ordering::Acquire) {
            return false;
        }
        let mut c = self.inner.conn();
        bounded("ping", redis::cmd("PING").query_async::<String>(&mut c))
            .await
            .is_ok()
    }

    /// Writes pending activity now (shutdown; tests).
    pub async fn flush(&self) {
        if let Err(e) = self.inner.flush_activity().await {
            tracing::warn!(error = %e, "redis session store: activity flush failed");
        }
    }

    /// The local mirror, for benchmarks and tests.
    pub fn table(&self) -> &Table {
        &self.inner.table
    }

    /// Mirror housekeeping now (the flush task runs it every 30 s): writes
    /// pending activity, forgets active sessions, drops old ended ones.
    #[doc(hidden)]
    pub async fn refresh_mirror(&self) {
        self.inner.refresh_mirror().await;
    }
}

/// The conditions of a shared batch, as [`LUA_SHARED`] reads them.
fn want_args(inv: &mut redis::ScriptInvocation<'_>, expect: &[SharedExpect]) {
    for e in expect {
        inv.arg("want").arg(&e.ns).arg(&e.k);
        match &e.v {
            Some(v) => inv.arg("=").arg(v),
            None => inv.arg("-").arg(""),
        };
    }
}

/// Whether the mirror alone may answer this request for an active session
/// (the fast path): fresh by the mirror's view, and no newer token expiry
/// to record in Redis.
fn mirror_can_decide(r: &Record, t: &Touch<'_>) -> bool {
    if t.token_exp_ms.min(MAX_MS) > r.exp_ms {
        return false;
    }
    let idle = r.idle_ms.min(t.idle_ms);
    t.now_ms.saturating_sub(r.last_ms) <= idle
        && t.max_lifetime_ms
            .is_none_or(|m| t.now_ms.saturating_sub(r.created_ms) <= m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_the_wire_format() {
        assert_eq!(
            Event::parse("end revoked 10 20 3:i:s5:al ceid with spaces"),
            Some(Event::End {
                reason: EndReason::Revoked,
                at: 10,
                exp: 20,
                issuer: "i:s".into(),
                subject: "al ce".into(),
                session: "id with spaces".into(),
            })
        );
        assert_eq!(
            Event::parse("revid 10 20 id with spaces"),
            Some(Event::RevokeId {
                at: 10,
                until: 20,
                session: "id with spaces".into(),
            })
        );
        assert_eq!(
            Event::parse("deact 7 bob smith"),
            Some(Event::Deactivate {
                since: 7,
                subject: "bob smith".into()
            })
        );
        assert_eq!(
            Event::parse("notbefore 9 bob smith"),
            Some(Event::NotBefore {
                at: 9,
                subject: "bob smith".into()
            })
        );
        assert_eq!(
            Event::parse("react x"),
            Some(Event::Reactivate {
                subject: "x".into()
            })
        );
        assert_eq!(
            Event::parse(r#"state 4 [{"o":"del","ns":"rel.a b","k":"[\"i\",\"s\"]"}]"#),
            Some(Event::Shared {
                seq: 4,
                ops: vec![SharedOp::Del {
                    ns: "rel.a b".into(),
                    k: r#"["i","s"]"#.into(),
                }],
            })
        );
        assert_eq!(Event::parse("state 4 [{\"o\":\"nope\"}]"), None);
        assert_eq!(
            parse_shared(&shared_value(Some(5), "a b")),
            Some((Some(5), "a b"))
        );
        assert_eq!(parse_shared(&shared_value(None, "")), Some((None, "")));
        assert_eq!(Event::parse("end revoked 10 20 99:short"), None);
        assert_eq!(Event::parse("end revoked 10 20 1:i99:short"), None);
        assert_eq!(Event::parse("bogus"), None);
    }

    #[test]
    fn mirror_decides_only_fresh_sessions_with_a_known_token_expiry() {
        let r = Record {
            issuer: "i".into(),
            subject: "u".into(),
            session: "s".into(),
            created_ms: 1_000,
            last_ms: 1_000,
            idle_ms: 500,
            exp_ms: 10_000,
            ended: None,
        };
        let t = Touch {
            issuer: "i",
            subject: "u",
            session: "s",
            now_ms: 1_400,
            idle_ms: 500,
            max_lifetime_ms: None,
            token_exp_ms: 10_000,
            token_iat_ms: Some(0),
            touch: true,
            key: None,
        };
        assert!(mirror_can_decide(&r, &t));
        // Locally idle: another instance may have kept it alive.
        assert!(!mirror_can_decide(&r, &Touch { now_ms: 1_600, ..t }));
        // A later token expiry must reach Redis.
        assert!(!mirror_can_decide(
            &r,
            &Touch {
                token_exp_ms: 20_000,
                ..t
            }
        ));
        let mut lifetime = t;
        lifetime.max_lifetime_ms = Some(300);
        assert!(!mirror_can_decide(&r, &lifetime));
    }

    #[test]
    fn pending_activity_merges_by_session() {
        let r = |s: &str, last| Record {
            issuer: "i".into(),
            subject: "u".into(),
            session: s.into(),
            created_ms: 0,
            last_ms: last,
            idle_ms: 1,
            exp_ms: 1,
            ended: None,
        };
        let mut p = vec![r("a", 5), r("b", 5)];
        merge_pending(&mut p, vec![r("a", 9), r("c", 1)]);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].last_ms, 9);
        assert_eq!(p[2].session, "c");
    }
}
