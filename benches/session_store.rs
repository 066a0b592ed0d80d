//! Per-request cost of the session stage (`Store::check`, with touch):
//! - `embedded_hot`: the embedded store, one hot session;
//! - `redis_fast_path`: the Redis store, one hot session served by its
//!   local mirror (no round trip; activity is flushed in the background);
//! - `redis_slow_path`: the Redis store, a new session every iteration
//!   (one Lua round trip to a local `redis-server`).
//!
//! All three go through the same `Runtime::block_on`, so the difference is
//! the store's. The Redis benches start their own `redis-server` on a free
//! loopback port, or print a note and measure nothing where it is absent.
//! Run: cargo bench --bench session_store

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::Duration;

use rolegate::session::{OnStoreError, SessionSettings, Store, StoreKind, Touch, Verdict, now_ms};

fn main() {
    divan::main();
}

const IDLE_MS: u64 = 15 * 60 * 1000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
}

fn settings(store: StoreKind) -> SessionSettings {
    SessionSettings {
        idle_timeout: Duration::from_millis(IDLE_MS),
        max_lifetime: None,
        store,
        flush_interval: Duration::from_millis(250),
        retention: Duration::from_secs(24 * 3600),
        logout_path: "/.rolegate/logout".into(),
        login_url: None,
        on_store_error: OnStoreError::Deny,
    }
}

/// A token's `exp` is fixed; a later one would make the Redis store record it.
static TOKEN_EXP: LazyLock<u64> = LazyLock::new(|| now_ms() + 3_600_000);

fn touch(session: &str) -> Touch<'_> {
    Touch {
        issuer: "https://idp.example",
        session,
        subject: "bench-user",
        now_ms: now_ms(),
        idle_ms: IDLE_MS,
        max_lifetime_ms: None,
        token_exp_ms: *TOKEN_EXP,
        token_iat_ms: Some(0),
        touch: true,
        key: None,
    }
}

/// A `redis-server` on a free loopback port, killed on drop.
struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    fn start() -> Option<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            println!("note: redis-server not installed; Redis store benches skipped");
            return None;
        };
        let server = RedisServer { port, child };
        for _ in 0..500 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        println!("note: redis-server did not start; Redis store benches skipped");
        None
    }

    fn store_kind(&self) -> StoreKind {
        StoreKind::Redis {
            url: format!("redis://127.0.0.1:{}/", self.port),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Measures `check` on one hot session of `store`.
fn hot_session(bencher: divan::Bencher, rt: &tokio::runtime::Runtime, store: &Store) {
    let warm = rt.block_on(store.check(&touch("hot")));
    assert!(matches!(warm, Ok(Verdict::Active)), "{warm:?}");
    bencher.bench_local(|| rt.block_on(store.check(divan::black_box(&touch("hot")))));
}

#[divan::bench]
fn embedded_hot(bencher: divan::Bencher) {
    let rt = runtime();
    let dir = std::env::temp_dir().join(format!("rolegate-bench-{}", std::process::id()));
    let store = rt
        .block_on(Store::open(&settings(StoreKind::Embedded {
            state_dir: dir.clone(),
        })))
        .unwrap_or_else(|e| panic!("embedded store: {e}"));
    hot_session(bencher, &rt, &store);
    let _enter = rt.enter();
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
}

#[divan::bench]
fn redis_fast_path(bencher: divan::Bencher) {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let rt = runtime();
    let store = rt
        .block_on(Store::open(&settings(redis.store_kind())))
        .unwrap_or_else(|e| panic!("redis store: {e}"));
    hot_session(bencher, &rt, &store);
    let _enter = rt.enter();
    drop(store);
}

#[divan::bench]
fn redis_slow_path(bencher: divan::Bencher) {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let rt = runtime();
    let store = rt
        .block_on(Store::open(&settings(redis.store_kind())))
        .unwrap_or_else(|e| panic!("redis store: {e}"));
    let mut n: u64 = 0;
    bencher.bench_local(|| {
        n += 1;
        let sid = format!("new-{n}");
        rt.block_on(store.check(divan::black_box(&touch(&sid))))
    });
    let _enter = rt.enter();
    drop(store);
}
