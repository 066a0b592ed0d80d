//! The Redis session store against a real `redis-server` (no mocks): two
//! store instances share one server, as two gateways behind a load
//! balancer would. Each test starts its own server on a free loopback
//! port and kills it on drop. Where `redis-server` is not installed the
//! tests print `SKIPPED` and pass; `.ci/run` installs it, so CI never skips.
//!
//! Timeouts are short (idle 1 s, flush 100 ms); waits poll, they don't sleep.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::Duration;

use rolegate::session::{
    EndReason, OnStoreError, SessionRef, SessionSettings, SharedExpect, SharedOp, Store, StoreKind,
    Touch, Verdict, now_ms,
};
use tokio::time::{Instant, sleep};

/// A `redis-server` child process on 127.0.0.1, killed on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// More `redis-server` arguments.
    args: Vec<String>,
}

impl RedisServer {
    /// None (after printing why) when `redis-server` is not installed.
    fn start() -> Option<RedisServer> {
        Self::start_with(&[])
    }

    fn start_with(args: &[&str]) -> Option<RedisServer> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            println!("SKIPPED: redis-server not installed");
            return None;
        }
        let mut s = RedisServer {
            port: free_port(),
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        Some(s)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = std::time::Duration::from_secs(10);
        let mut waited = Duration::ZERO;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(waited < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
            waited += Duration::from_millis(20);
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A fresh server on the same port (empty: no persistence).
    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A plain client, for looking at what the store wrote.
    async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn settings(url: &str, idle: Duration) -> SessionSettings {
    SessionSettings {
        idle_timeout: idle,
        max_lifetime: None,
        store: StoreKind::Redis { url: url.into() },
        flush_interval: Duration::from_millis(100),
        retention: Duration::from_secs(60),
        logout_path: "/.rolegate/logout".into(),
        login_url: None,
        on_store_error: OnStoreError::Deny,
    }
}

async fn open(redis: &RedisServer, idle_ms: u64) -> Store {
    Store::open(&settings(&redis.url(), Duration::from_millis(idle_ms)))
        .await
        .expect("open the redis store")
}

/// The `exp` of every test token (in ms): one fixed instant, as a real
/// token's is.
static TOKEN_EXP: LazyLock<u64> = LazyLock::new(|| now_ms() + 3_600_000);

/// One request of `subject` on `session`, now.
fn req<'a>(session: &'a str, subject: &'a str, idle_ms: u64, touch: bool) -> Touch<'a> {
    Touch {
        issuer: ISS,
        subject,
        session,
        now_ms: now_ms(),
        idle_ms,
        max_lifetime_ms: None,
        token_exp_ms: *TOKEN_EXP,
        // Issued just now: after any deactivation the test made before.
        token_iat_ms: Some(now_ms() + 1),
        touch,
        key: None,
    }
}

async fn check(store: &Store, session: &str, subject: &str, idle_ms: u64) -> Verdict {
    store
        .check(&req(session, subject, idle_ms, true))
        .await
        .expect("store answers")
}

/// Polls `f` every 10 ms until it holds or `limit` passes.
async fn within(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

const ISS: &str = "https://idp.test";

/// Session `session` of `subject` (issuer [`ISS`]).
fn sid<'a>(session: &'a str, subject: &'a str) -> SessionRef<'a> {
    SessionRef {
        issuer: ISS,
        subject,
        session,
    }
}

fn mirror(store: &Store) -> &rolegate::session::table::Table {
    match store {
        Store::Redis(s) => s.table(),
        Store::Embedded(_) => panic!("not the redis store"),
    }
}

const LONG: u64 = 60_000;

/// A conditional batch is judged in Redis, not on the writer's mirror:
/// what another instance wrote since the read refuses it, whatever this
/// instance has seen yet; an expired value counts as none.
#[tokio::test]
async fn a_conditional_shared_batch_is_judged_on_what_redis_holds() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, LONG).await;
    let b = open(&redis, LONG).await;
    let put = |k: &str, v: &str, x: Option<u64>| SharedOp::Put {
        ns: "users".into(),
        k: k.into(),
        v: v.into(),
        x,
    };
    let read = |k: &str, v: Option<&str>| SharedExpect {
        ns: "users".into(),
        k: k.into(),
        v: v.map(str::to_string),
    };
    assert!(
        a.shared_apply_if(&[read("u", None)], vec![put("u", "1", None)])
            .await
            .unwrap()
    );
    // B read "1"; A writes "2"; B's write on its read is refused at once,
    // before or after B's mirror hears of A's.
    assert!(
        within(Duration::from_secs(2), async || b
            .shared()
            .get("users", "u", now_ms())
            .as_deref()
            == Some("1"))
        .await
    );
    a.shared_apply(vec![put("u", "2", None)]).await.unwrap();
    let stale = [read("u", Some("1")), read("v", None)];
    let batch = vec![put("u", "3", None), put("v", "3", None)];
    assert!(!b.shared_apply_if(&stale, batch.clone()).await.unwrap());
    sleep(Duration::from_millis(100)).await;
    for s in [&a, &b] {
        assert_eq!(s.shared().get("users", "u", now_ms()).as_deref(), Some("2"));
        assert_eq!(s.shared().get("users", "v", now_ms()), None);
    }
    let fresh = [read("u", Some("2")), read("v", None)];
    assert!(b.shared_apply_if(&fresh, batch).await.unwrap());
    assert!(
        within(Duration::from_secs(2), async || a
            .shared()
            .get("users", "v", now_ms())
            .as_deref()
            == Some("3"))
        .await
    );
    // An expired value reads as none, in Redis as on the mirror.
    a.shared_apply(vec![put("w", "old", Some(now_ms() - 1))])
        .await
        .unwrap();
    assert!(
        !a.shared_apply_if(&[read("w", Some("old"))], vec![put("w", "x", None)])
            .await
            .unwrap()
    );
    assert!(
        a.shared_apply_if(&[read("w", None)], vec![put("w", "new", None)])
            .await
            .unwrap()
    );
    assert_eq!(
        a.shared().get("users", "w", now_ms()).as_deref(),
        Some("new")
    );
    // Values with spaces, the empty value (not the same as none), a
    // failing condition after a holding one; and conditions alone.
    a.shared_apply(vec![put("s", "two words", None), put("e", "", None)])
        .await
        .unwrap();
    let holding = [read("s", Some("two words")), read("e", Some(""))];
    assert!(b.shared_holds(&holding).await.unwrap());
    assert!(!b.shared_holds(&[read("e", None)]).await.unwrap());
    assert!(
        !b.shared_holds(&[read("s", Some("two")), read("e", Some(""))])
            .await
            .unwrap()
    );
    let second_fails = [read("s", Some("two words")), read("e", Some("x"))];
    assert!(!b.shared_holds(&second_fails).await.unwrap());
    assert!(
        !b.shared_apply_if(&second_fails, vec![put("s", "y", None)])
            .await
            .unwrap()
    );
    assert!(
        b.shared_apply_if(&holding, vec![put("s", "y z", None)])
            .await
            .unwrap()
    );
    assert_eq!(
        b.shared().get("users", "s", now_ms()).as_deref(),
        Some("y z")
    );
}

#[tokio::test]
async fn session_created_on_one_instance_is_known_on_the_other() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, LONG).await;
    let b = open(&redis, LONG).await;
    assert_eq!(check(&a, "s1", "alice", LONG).await, Verdict::Active);
    let created = a.sessions_of("alice").await.unwrap()[0].created_ms;
    sleep(Duration::from_millis(5)).await;
    assert_eq!(check(&b, "s1", "alice", LONG).await, Verdict::Active);
    // B adopted A's session (same start), it did not start a new one.
    assert_eq!(
        mirror(&b).get(sid("s1", "alice")).unwrap().created_ms,
        created
    );
    let listed = b.sessions_of("alice").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].created_ms, created);
    assert!(a.ready().await && b.ready().await);
}

#[tokio::test]
async fn touches_on_b_keep_the_session_alive_for_a() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, 1_000).await;
    let b = open(&redis, 1_000).await;
    assert_eq!(check(&a, "s", "alice", 1_000).await, Verdict::Active);
    // Only B sees traffic, for 1.6 s: longer than the idle timeout.
    for _ in 0..8 {
        assert_eq!(check(&b, "s", "alice", 1_000).await, Verdict::Active);
        sleep(Duration::from_millis(200)).await;
    }
    b.flush().await;
    // A's mirror alone would call it idle; Redis has B's activity.
    let stale = mirror(&a).get(sid("s", "alice")).unwrap();
    assert!(now_ms() - stale.last_ms > 1_000);
    let passive = req("s", "alice", 1_000, false);
    assert_eq!(a.check(&passive).await.unwrap(), Verdict::Active);
}

#[tokio::test]
async fn idle_expiry_decided_on_a_is_seen_on_b() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, 1_000).await;
    let b = open(&redis, 1_000).await;
    assert_eq!(check(&a, "s", "alice", 1_000).await, Verdict::Active);
    assert_eq!(check(&b, "s", "alice", 1_000).await, Verdict::Active);
    sleep(Duration::from_millis(1_200)).await;
    assert_eq!(
        check(&a, "s", "alice", 1_000).await,
        Verdict::Ended(EndReason::Idle)
    );
    // B's mirror learns it from the event, without asking.
    assert!(
        within(Duration::from_secs(1), async || mirror(&b)
            .get(sid("s", "alice"))
            .unwrap()
            .ended
            .is_some_and(|(r, _)| r == EndReason::Idle))
        .await
    );
    // Ended for good: even a "fresh" request with a long timeout is refused.
    assert_eq!(
        check(&b, "s", "alice", LONG).await,
        Verdict::Ended(EndReason::Idle)
    );
}

#[tokio::test]
async fn end_on_a_is_refused_on_b_within_a_second() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, LONG).await;
    let b = open(&redis, LONG).await;
    assert_eq!(check(&a, "s", "alice", LONG).await, Verdict::Active);
    // B holds the session in its mirror: its checks take the fast path.
    assert_eq!(check(&b, "s", "alice", LONG).await, Verdict::Active);
    assert_eq!(check(&b, "s", "alice", LONG).await, Verdict::Active);
    let exp = now_ms() + 3_600_000;
    assert!(
        a.end(sid("s", "alice"), EndReason::Logout, exp)
            .await
            .unwrap()
    );
    assert!(
        !a.end(sid("s", "alice"), EndReason::Logout, exp)
            .await
            .unwrap()
    );
    assert!(
        within(Duration::from_secs(1), async || check(
            &b, "s", "alice", LONG
        )
        .await
            == Verdict::Ended(EndReason::Logout))
        .await
    );
    // A fresh login (new session id) works.
    assert_eq!(check(&b, "s-new", "alice", LONG).await, Verdict::Active);
}

#[tokio::test]
async fn deactivation_on_b_is_refused_on_a_within_a_second_and_ends_every_session_for_good() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, LONG).await;
    let b = open(&redis, LONG).await;
    assert_eq!(check(&a, "s", "bob", LONG).await, Verdict::Active);
    let (first, cut) = b.deactivate("bob").await.unwrap();
    let (again, later) = b.deactivate("bob").await.unwrap();
    assert!(first && !again);
    // Each deactivation has its own cut-off, even in the same millisecond.
    assert!(later > cut, "{later} after {cut}");
    assert!(
        within(Duration::from_secs(1), async || check(&a, "s", "bob", LONG)
            .await
            == Verdict::Deactivated)
        .await
    );
    // Every token of the subject, also a brand-new session.
    assert_eq!(check(&a, "s2", "bob", LONG).await, Verdict::Deactivated);
    assert!(a.is_deactivated("bob").await.unwrap());
    assert_eq!(check(&a, "s-carol", "carol", LONG).await, Verdict::Active);

    assert!(b.reactivate("bob").await.unwrap());
    // Reactivated: new sessions work on both instances, but the session
    // held before the deactivation stays ended (a new login is needed).
    assert!(
        within(Duration::from_secs(1), async || check(
            &a, "s-new", "bob", LONG
        )
        .await
            == Verdict::Active)
        .await
    );
    let revoked = Verdict::Ended(EndReason::Revoked);
    assert_eq!(check(&a, "s", "bob", LONG).await, revoked);
    assert_eq!(check(&b, "s", "bob", LONG).await, revoked);
    // Also on an instance that never saw it (asks Redis).
    let c = open(&redis, LONG).await;
    assert_eq!(check(&c, "s", "bob", LONG).await, revoked);
    assert!(!a.is_deactivated("bob").await.unwrap());
    assert!(!a.reactivate("bob").await.unwrap());
}

/// One request of `subject` on `session` with a token issued at `iat_ms`.
async fn check_iat(store: &Store, session: &str, subject: &str, iat_ms: Option<u64>) -> Verdict {
    let t = Touch {
        token_iat_ms: iat_ms,
        ..req(session, subject, LONG, true)
    };
    store.check(&t).await.expect("store answers")
}

#[tokio::test]
async fn tokens_issued_before_the_last_deactivation_are_refused_on_every_instance() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, LONG).await;
    let b = open(&redis, LONG).await;
    // Issued before the deactivation, never presented before it.
    let old = now_ms();
    assert_eq!(a.not_before("bob").await.unwrap(), None);
    assert!(b.deactivate("bob").await.unwrap().0);
    sleep(Duration::from_millis(5)).await;
    // Deactivated again: the later time is the cut-off.
    assert!(!b.deactivate("bob").await.unwrap().0);
    let nb = b.not_before("bob").await.unwrap().expect("a cut-off");
    assert!(nb > old);
    assert!(b.reactivate("bob").await.unwrap());
    // Fanned out: a's mirror has the cut-off of the second deactivation.
    assert!(
        within(Duration::from_secs(1), async || mirror(&a)
            .not_before("bob")
            == Some(nb)
            && !mirror(&a).is_deactivated("bob"))
        .await
    );
    // A new instance reads it from Redis.
    let c = open(&redis, LONG).await;
    assert_eq!(mirror(&c).not_before("bob"), Some(nb));
    let revoked = Verdict::Ended(EndReason::Revoked);
    // `iat` has whole seconds: the cut-off's own second is a new login.
    let (sec, old) = (nb / 1000 * 1000, old.min(nb / 1000 * 1000 - 1));
    for (n, store) in [&a, &b, &c].into_iter().enumerate() {
        assert_eq!(
            check_iat(store, &format!("same-{n}"), "bob", Some(sec)).await,
            Verdict::Active
        );
        for iat in [Some(old), Some(sec - 1), None] {
            assert_eq!(
                check_iat(store, "old", "bob", iat).await,
                revoked,
                "{n} {iat:?}"
            );
        }
        let new = format!("new-{n}");
        assert_eq!(
            check_iat(store, &new, "bob", Some(nb + 1)).await,
            Verdict::Active
        );
        // Held in the mirror: the mirror refuses an older token of it.
        assert_eq!(check_iat(store, &new, "bob", Some(old)).await, revoked);
        assert_eq!(
            check_iat(store, &new, "bob", Some(nb + 1)).await,
            Verdict::Active
        );
    }
    // The refusals made no session: only the three new ones exist.
    assert_eq!(a.sessions_of("bob").await.unwrap().len(), 6);
    assert_eq!(check_iat(&a, "x", "carol", None).await, Verdict::Active);

    // A cut-off the mirror has not heard of (written behind its back):
    // Redis's check script refuses, and the mirror learns it.
    let mut raw = redis.client().await;
    let _: () = redis::cmd("HSET")
        .arg("rolegate:notbefore")
        .arg("zed")
        .arg(nb)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(mirror(&a).not_before("zed"), None);
    assert_eq!(check_iat(&a, "z", "zed", Some(sec - 1)).await, revoked);
    assert_eq!(mirror(&a).not_before("zed"), Some(nb));
    assert_eq!(
        check_iat(&a, "z", "zed", Some(nb + 1)).await,
        Verdict::Active
    );
}

#[tokio::test]
async fn end_user_ends_every_session_of_the_user_on_every_instance() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, LONG).await;
    let b = open(&redis, LONG).await;
    assert_eq!(check(&a, "s1", "alice", LONG).await, Verdict::Active);
    assert_eq!(check(&b, "s2", "alice", LONG).await, Verdict::Active);
    assert_eq!(check(&a, "s3", "bob", LONG).await, Verdict::Active);
    assert_eq!(a.end_user("alice").await.unwrap(), 2);
    let revoked = Verdict::Ended(EndReason::Revoked);
    assert!(
        within(Duration::from_secs(1), async || check(
            &b, "s2", "alice", LONG
        )
        .await
            == revoked)
        .await
    );
    assert_eq!(check(&a, "s1", "alice", LONG).await, revoked);
    assert_eq!(check(&b, "s1", "alice", LONG).await, revoked);
    assert_eq!(check(&b, "s3", "bob", LONG).await, Verdict::Active);
    assert_eq!(b.end_user("alice").await.unwrap(), 0);
}

#[tokio::test]
async fn sessions_of_lists_active_and_ended_sessions_oldest_first() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, LONG).await;
    let b = open(&redis, LONG).await;
    assert_eq!(check(&a, "s1", "alice", LONG).await, Verdict::Active);
    sleep(Duration::from_millis(5)).await;
    assert_eq!(check(&b, "s2", "alice", LONG).await, Verdict::Active);
    assert_eq!(check(&b, "s3", "bob", LONG).await, Verdict::Active);
    assert!(
        b.end(sid("s1", "alice"), EndReason::Logout, now_ms() + 60_000)
            .await
            .unwrap()
    );
    let listed = a.sessions_of("alice").await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|r| r.session.as_str()).collect();
    assert_eq!(ids, ["s1", "s2"]);
    assert_eq!(listed[0].ended.map(|e| e.0), Some(EndReason::Logout));
    assert_eq!(listed[1].ended, None);
    assert_eq!(listed[1].idle_ms, LONG);
    assert!(a.sessions_of("nobody").await.unwrap().is_empty());
    // Records and the user's set expire by themselves.
    let mut c = redis.client().await;
    let keys = [
        format!("rolegate:sess:{}", sid("s1", "alice").key().hex()),
        format!("rolegate:sess:{}", sid("s2", "alice").key().hex()),
        "rolegate:u:alice".to_string(),
        "rolegate:sid:s1".to_string(),
    ];
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has no expiry ({ttl})");
    }
}

#[tokio::test]
async fn activity_is_coalesced_into_few_redis_writes() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, LONG).await;
    let mut c = redis.client().await;
    assert_eq!(check(&a, "s", "alice", LONG).await, Verdict::Active);
    a.flush().await;
    // As after a Redis restart: the flush must load its script again.
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    let before = evalsha_calls(&mut c).await;
    let started = Instant::now();
    // 400 requests over ≈1 s (10 flush intervals).
    let mut last = 0;
    for _ in 0..400 {
        let t = req("s", "alice", LONG, true);
        last = t.now_ms;
        assert_eq!(a.check(&t).await.unwrap(), Verdict::Active);
        sleep(Duration::from_micros(2_500)).await;
    }
    a.flush().await;
    let writes = evalsha_calls(&mut c).await - before;
    let flushes = started.elapsed().as_millis() as u64 / 100;
    println!("400 touches over {flushes} flush intervals -> {writes} Redis script calls");
    // At most one write per flush interval (plus the explicit flush and
    // the NOSCRIPT retry).
    assert!(
        writes <= flushes + 5 && writes < 100,
        "{writes} script calls for 400 touches: not coalesced"
    );
    assert!(writes >= 1, "activity never reached Redis");
    // The last touch reached Redis all the same.
    let stored: u64 = redis::cmd("HGET")
        .arg(format!("rolegate:sess:{}", sid("s", "alice").key().hex()))
        .arg("last")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(stored, last);
}

#[tokio::test]
async fn mirror_refresh_forgets_active_sessions_but_keeps_revocations_and_activity() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, LONG).await;
    assert_eq!(check(&a, "s", "alice", LONG).await, Verdict::Active);
    let created = mirror(&a).get(sid("s", "alice")).unwrap().created_ms;
    assert!(
        a.end(sid("gone", "alice"), EndReason::Logout, *TOKEN_EXP)
            .await
            .unwrap()
    );
    sleep(Duration::from_millis(5)).await;
    let t = req("s", "alice", LONG, true);
    assert_eq!(a.check(&t).await.unwrap(), Verdict::Active);
    let Store::Redis(store) = &a else {
        unreachable!()
    };
    store.refresh_mirror().await;
    assert!(
        mirror(&a).get(sid("s", "alice")).is_none(),
        "active session not forgotten"
    );
    assert!(
        mirror(&a)
            .get(sid("gone", "alice"))
            .unwrap()
            .ended
            .is_some()
    );
    // The unflushed touch was written before forgetting.
    let mut c = redis.client().await;
    let stored: u64 = redis::cmd("HGET")
        .arg(format!("rolegate:sess:{}", sid("s", "alice").key().hex()))
        .arg("last")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(stored, t.now_ms);
    // Re-read from Redis on its next request: the same session.
    assert_eq!(check(&a, "s", "alice", LONG).await, Verdict::Active);
    assert_eq!(
        mirror(&a).get(sid("s", "alice")).unwrap().created_ms,
        created
    );
    assert_eq!(
        check(&a, "gone", "alice", LONG).await,
        Verdict::Ended(EndReason::Logout)
    );
}

/// An end the subscription missed (written while it was down) is learnt
/// when it comes back: the sessions the mirror held as active are read
/// back, so a long-lived answer judging its session on the mirror stops.
#[tokio::test]
async fn an_end_missed_while_the_subscription_was_down_reaches_the_mirror() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, LONG).await;
    assert_eq!(check(&a, "s", "alice", LONG).await, Verdict::Active);
    assert_eq!(check(&a, "t", "alice", LONG).await, Verdict::Active);
    let valid = |session: &str| a.still_valid(sid(session, "alice"), now_ms(), LONG, None, None);
    assert!(valid("s"));
    // Ended in Redis with no event: as if published while nobody listened.
    let mut c = redis.client().await;
    let _: () = redis::cmd("HSET")
        .arg(format!("rolegate:sess:{}", sid("s", "alice").key().hex()))
        .arg("ended")
        .arg("logout")
        .arg("ended_at")
        .arg(now_ms())
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(valid("s"), "the mirror cannot know yet");
    // The subscription drops and comes back.
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        within(Duration::from_secs(5), async || !valid("s")).await,
        "the missed end never reached the mirror"
    );
    assert_eq!(
        mirror(&a)
            .get(sid("s", "alice"))
            .unwrap()
            .ended
            .map(|e| e.0),
        Some(EndReason::Logout)
    );
    // The other session is untouched.
    assert!(valid("t"));
    assert_eq!(check(&a, "t", "alice", LONG).await, Verdict::Active);
}

async fn evalsha_calls(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn redis_down_fails_closed_and_recovers_after_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, LONG).await;
    assert_eq!(check(&a, "s", "alice", LONG).await, Verdict::Active);
    assert!(
        a.end(sid("gone", "alice"), EndReason::Revoked, now_ms() + 60_000)
            .await
            .unwrap()
    );
    assert!(a.deactivate("mallory").await.unwrap().0);
    assert!(a.deactivate("oscar").await.unwrap().0);
    assert!(a.reactivate("oscar").await.unwrap());
    let nb = a.not_before("oscar").await.unwrap().expect("a cut-off");

    redis.kill();
    let killed = Instant::now();
    // Fail closed, promptly: also the session the mirror holds as active.
    assert!(
        within(Duration::from_secs(3), async || a
            .check(&req("s", "alice", LONG, true))
            .await
            .is_err())
        .await,
        "checks still answered with Redis down"
    );
    println!(
        "fail closed {} ms after the kill",
        killed.elapsed().as_millis()
    );
    assert!(killed.elapsed() < Duration::from_secs(3));
    // Every call keeps failing fast, none hangs.
    let t0 = Instant::now();
    assert!(a.check(&req("other", "bob", LONG, true)).await.is_err());
    assert!(a.end_user("alice").await.is_err());
    assert!(t0.elapsed() < Duration::from_millis(2_500));
    assert!(!a.ready().await);

    // Same port, empty data (no persistence).
    redis.restart();
    assert!(
        within(Duration::from_secs(10), async || a
            .check(&req("s", "alice", LONG, true))
            .await
            .is_ok_and(|v| v == Verdict::Active))
        .await,
        "did not recover after Redis came back"
    );
    assert!(a.ready().await);
    // The instance wrote back what Redis forgot: a new instance sees the
    // revocation and the deactivation.
    let c = open(&redis, LONG).await;
    assert_eq!(
        check(&c, "gone", "alice", LONG).await,
        Verdict::Ended(EndReason::Revoked)
    );
    assert_eq!(check(&c, "m1", "mallory", LONG).await, Verdict::Deactivated);
    // And the not-before cut-off of the reactivated user.
    assert_eq!(c.not_before("oscar").await.unwrap(), Some(nb));
    assert_eq!(
        check_iat(&c, "o1", "oscar", Some(nb / 1000 * 1000 - 1)).await,
        Verdict::Ended(EndReason::Revoked)
    );
}

#[tokio::test]
async fn open_fails_when_redis_is_unreachable() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Nothing listens on a fresh free port.
    drop(redis);
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let t0 = Instant::now();
    let r = Store::open(&settings(&url, Duration::from_secs(60))).await;
    assert!(r.is_err());
    assert!(t0.elapsed() < Duration::from_secs(6));
}

/// Writes a session record in the layout of the version before sessions
/// were keyed by issuer + subject + session id (`git show
/// 04b4810:src/session/redis.rs`): `rolegate:s:{sid}`, hash `sub created
/// last idle exp ended ended_at`.
async fn old_session(
    c: &mut redis::aio::MultiplexedConnection,
    sid: &str,
    last: u64,
    idle: u64,
    exp: u64,
    ended: Option<(&str, u64)>,
) {
    let mut cmd = redis::cmd("HSET");
    cmd.arg(format!("rolegate:s:{sid}"))
        .arg("sub")
        .arg("alice")
        .arg("created")
        .arg(last.saturating_sub(1_000))
        .arg("last")
        .arg(last)
        .arg("idle")
        .arg(idle)
        .arg("exp")
        .arg(exp);
    if let Some((reason, at)) = ended {
        cmd.arg("ended").arg(reason).arg("ended_at").arg(at);
    }
    let () = cmd.query_async(c).await.unwrap();
}

#[tokio::test]
async fn pre_upgrade_sessions_are_revoked_by_id_at_open() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut c = redis.client().await;
    let now = now_ms();
    let exp = now + 3_600_000;
    let long_ago = now - 10 * 86_400_000;
    old_session(
        &mut c,
        "old-logout",
        now - 5_000,
        LONG,
        exp,
        Some(("logout", now - 4_000)),
    )
    .await;
    old_session(&mut c, "old-idle", now - 120_000, LONG, exp, None).await;
    old_session(&mut c, "old-active", now, LONG, exp, None).await;
    // Token expired and retention passed long ago: nothing left to refuse.
    old_session(
        &mut c,
        "old-gone",
        long_ago,
        LONG,
        long_ago,
        Some(("idle", long_ago)),
    )
    .await;

    let a = open(&redis, LONG).await;
    for s in ["old-logout", "old-idle", "old-active"] {
        // The old id is refused whoever presents it (the old keys had no issuer).
        for user in ["alice", "bob"] {
            assert_eq!(
                check(&a, s, user, LONG).await,
                Verdict::Ended(EndReason::Revoked),
                "{s} of {user}"
            );
        }
        // Kept at least until the token expires.
        let pttl: i64 = redis::cmd("PTTL")
            .arg(format!("rolegate:revoked:{s}"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(pttl > 3_000_000, "{s}: {pttl}");
    }
    let exists: u64 = redis::cmd("EXISTS")
        .arg("rolegate:revoked:old-gone")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    // The old keys are gone; a second instance has nothing left to migrate
    // and new sessions work.
    let old: Vec<String> = redis::cmd("KEYS")
        .arg("rolegate:s:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(old.is_empty(), "{old:?}");
    let b = open(&redis, LONG).await;
    assert_eq!(
        check(&b, "old-idle", "carol", LONG).await,
        Verdict::Ended(EndReason::Revoked)
    );
    assert_eq!(check(&b, "new-1", "alice", LONG).await, Verdict::Active);
}

#[tokio::test]
async fn with_redis_down_known_refusals_are_still_answered_and_only_unknowns_fail() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, LONG).await;
    assert_eq!(check(&a, "live", "alice", LONG).await, Verdict::Active);
    assert_eq!(check(&a, "out", "alice", LONG).await, Verdict::Active);
    assert!(
        a.end(sid("out", "alice"), EndReason::Logout, now_ms() + 60_000)
            .await
            .unwrap()
    );
    assert!(!a.revoke_id("revoked-1", now_ms() + 60_000).await.unwrap());
    assert!(a.deactivate("mallory").await.unwrap().0);
    assert!(a.deactivate("oscar").await.unwrap().0);
    assert!(a.reactivate("oscar").await.unwrap());
    let nb = a.not_before("oscar").await.unwrap().expect("a cut-off");

    redis.kill();
    // The subscription is lost: sessions the mirror holds as active fail.
    assert!(
        within(Duration::from_secs(3), async || a
            .check(&req("live", "alice", LONG, true))
            .await
            .is_err())
        .await
    );
    // What this gateway knows is refused is still refused (never a store
    // error that `on_store_error: allow` would let through).
    let refused = async |s: &str, u: &str, iat: Option<u64>| {
        let mut t = req(s, u, LONG, true);
        t.token_iat_ms = iat;
        a.check(&t).await
    };
    let now = Some(now_ms() + 1);
    assert_eq!(
        refused("out", "alice", now).await.unwrap(),
        Verdict::Ended(EndReason::Logout)
    );
    assert_eq!(
        refused("revoked-1", "bob", now).await.unwrap(),
        Verdict::Ended(EndReason::Revoked)
    );
    assert_eq!(
        refused("m1", "mallory", now).await.unwrap(),
        Verdict::Deactivated
    );
    assert_eq!(
        refused("o1", "oscar", Some(nb / 1000 * 1000 - 1))
            .await
            .unwrap(),
        Verdict::Ended(EndReason::Revoked)
    );
    // An unknown session cannot be judged: a store error.
    assert!(refused("unknown", "carol", now).await.is_err());
}

#[tokio::test]
async fn a_redis_that_may_evict_keys_is_reported_and_one_that_evicts_now_refused() {
    use rolegate::session::redis::{Eviction, eviction};
    let Some(safe) = RedisServer::start() else {
        return;
    };
    assert_eq!(eviction(&mut safe.client().await).await, Eviction::Never);
    // A policy that may evict, but no memory limit yet: reported (the store
    // opens and logs an error).
    let later = RedisServer::start_with(&["--maxmemory-policy", "volatile-lru"]).unwrap();
    assert_eq!(
        eviction(&mut later.client().await).await,
        Eviction::Possible {
            policy: "volatile-lru".into(),
            maxmemory: 0
        }
    );
    open(&later, LONG).await;
    // Evicting now: the store refuses to start.
    let now =
        RedisServer::start_with(&["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"])
            .unwrap();
    match Store::open(&settings(&now.url(), Duration::from_secs(60))).await {
        Ok(_) => panic!("opened on a Redis that evicts keys"),
        Err(e) => assert!(e.contains("noeviction") && e.contains("allkeys-lru"), "{e}"),
    }
    // CONFIG renamed away, as managed Redis often does: cannot be checked.
    let managed = RedisServer::start_with(&["--rename-command", "CONFIG", ""]);
    if let Some(managed) = managed {
        assert!(matches!(
            eviction(&mut managed.client().await).await,
            Eviction::Unknown(_)
        ));
        open(&managed, LONG).await;
    }
}

#[tokio::test]
async fn an_unreadable_event_is_a_lost_subscription_and_the_mirror_resyncs() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, LONG).await;
    assert_eq!(check(&a, "s1", "alice", LONG).await, Verdict::Active);
    assert!(mirror(&a).get(sid("s1", "alice")).is_some());
    // A deactivation whose event is lost (garbled in transit, or written by
    // a newer version this one cannot read): only in Redis.
    let mut c = redis.client().await;
    let () = redis::cmd("HSET")
        .arg("rolegate:deact")
        .arg("mallory")
        .arg(now_ms())
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!mirror(&a).is_deactivated("mallory"));
    let _: u64 = redis::cmd("PUBLISH")
        .arg("rolegate:events")
        .arg("deact garbled")
        .query_async(&mut c)
        .await
        .unwrap();
    // Resynced: the deactivation is read from Redis, and the mirror forgot
    // its active sessions (each is re-read on its next request).
    assert!(
        within(Duration::from_secs(3), async || mirror(&a)
            .is_deactivated("mallory"))
        .await,
        "the garbled event did not trigger a resync"
    );
    // The deactivations are read before the active sessions are forgotten,
    // at the end of the same resync: waited for, not raced.
    assert!(
        within(Duration::from_secs(3), async || mirror(&a)
            .get(sid("s1", "alice"))
            .is_none())
        .await,
        "the resync did not forget the active session"
    );
    assert!(
        within(Duration::from_secs(3), async || a
            .check(&req("s1", "alice", LONG, true))
            .await
            .is_ok_and(|v| v == Verdict::Active))
        .await
    );
}

async fn pttl(c: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(c).await.unwrap()
}

#[tokio::test]
async fn a_revoked_id_is_kept_until_its_tokens_expire_and_never_shortened() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = open(&redis, LONG).await;
    let mut c = redis.client().await;
    // Revoked again with an earlier `until`: the first one stands.
    assert!(!a.revoke_id("twice", now_ms() + 600_000).await.unwrap());
    assert!(!a.revoke_id("twice", now_ms() + 60_000).await.unwrap());
    let t = pttl(&mut c, "rolegate:revoked:twice").await;
    assert!(t > 500_000, "shortened to {t} ms");
    // Revoking an id whose session holds a token valid for an hour keeps
    // the id refused until that token expires, not just `retention`.
    assert_eq!(check(&a, "held", "alice", LONG).await, Verdict::Active);
    assert!(a.revoke_id("held", now_ms() + 60_000).await.unwrap());
    let t = pttl(&mut c, "rolegate:revoked:held").await;
    assert!(t > 3_000_000, "kept only {t} ms");
    assert!(
        mirror(&a)
            .revoked_ids()
            .iter()
            .any(|(s, r)| s == "held" && r.until_ms >= *TOKEN_EXP)
    );
}
