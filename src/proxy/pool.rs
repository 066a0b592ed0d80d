//! Phase 6, before the transport: which server of an upstream a request
//! goes to, and what the gateway knows about each server's health.
//!
//! Owns the server list of one upstream, the balancing (`round_robin`,
//! `least_outstanding`), the in-flight counts and their cap
//! (`max_requests`), passive health (consecutive
//! transport failures eject a server for a back-off that doubles while it
//! keeps failing) and the optional active checker task. Everything a
//! request touches is an atomic: no lock is taken, nothing is held across
//! an `.await`.
//!
//! Must not touch requests or responses (URIs, headers, bodies, the
//! mapping of errors to statuses are `upstream.rs`'s) and decides nothing
//! about routes. It only hears "this attempt succeeded / failed" from
//! `upstream::send`.
//!
//! # Lifecycle of a server
//!
//! ```text
//!  usable ──N consecutive failures──▶ ejected (eject_for · 2^k, ≤ max_eject_for)
//!    ▲  ▲                                  │ back-off over
//!    │  └──────── success ─── probation ◀──┘ (one failure ejects again, k+1)
//!    │
//!  down ◀── active check fails │ passes ──▶ (back to usable/ejected)
//! ```
//!
//! A server that is `down` (active check) is never picked; if every server
//! is down the upstream answers 503 at once. A server that is only ejected
//! is skipped while another is usable; when all usable ones are ejected,
//! the ejected ones are tried anyway ("panic routing", as Envoy does), so a
//! burst of failures never turns into a back-off-long outage of its own.
//!
//! The checker task holds only a [`Weak`] reference and a stop signal
//! dropped with the pool, so it ends as soon as the `Runtime` holding the
//! upstream is dropped (a reload swaps in a new one with fresh health).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http_body_util::{BodyExt, Empty, Limited};
use tokio::time::Instant;

use super::h1::H1;
use super::upstream::{Clients, HttpClient};

/// `balance:` — how a request picks among the usable servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each request the next server in turn.
    RoundRobin,
    /// The server with the fewest requests in flight (head or body still
    /// streaming); ties go round robin.
    LeastOutstanding,
}

/// `health:` of one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Consecutive failures that eject a server; 0: never ejected.
    pub failures: u32,
    /// The first ejection's length; each further one (without a success
    /// in between) doubles it.
    pub eject_for: Duration,
    /// The longest ejection.
    pub max_eject_for: Duration,
    pub check: Option<Check>,
}

/// `health.check`: `GET path` on every server every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Sent as is (not under the upstream URL's base path).
    pub path: PathAndQuery,
    pub interval: Duration,
    /// A check without a 2xx head within this marks the server down.
    pub timeout: Duration,
}

/// A body read from a check answer at most (then the connection is
/// dropped instead of reused).
const CHECK_BODY_BYTES: usize = 64 * 1024;

/// One server of an upstream.
pub struct Server {
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    /// `scheme://authority`, for logs.
    pub label: String,
    in_flight: AtomicUsize,
    /// Consecutive failures since the last success or ejection.
    fails: AtomicU32,
    /// Ejections since the last success (0: not on probation).
    ejections: AtomicU32,
    /// Milliseconds after the pool's epoch the ejection ends; 0: never
    /// ejected.
    ejected_until: AtomicU64,
    /// The last active check failed.
    down: AtomicBool,
}

impl Server {
    pub fn new(scheme: Scheme, authority: Authority) -> Server {
        Server {
            label: format!("{scheme}://{authority}"),
            scheme,
            authority,
            in_flight: AtomicUsize::new(0),
            fails: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
        }
    }
}

/// The servers of one upstream, their clients and their health.
pub struct Pool {
    /// The upstream's name, for logs.
    name: String,
    servers: Box<[Server]>,
    balance: Balance,
    health: Health,
    /// The round-robin position (also the tie-break of least_outstanding).
    cursor: AtomicUsize,
    /// Requests in flight to all the servers together, and their cap
    /// (`max_requests`).
    in_flight: AtomicUsize,
    max_requests: usize,
    /// Shared by every server: one pool of kept-alive connections per
    /// `scheme://authority`.
    client: HttpClient,
    /// The same settings without idle connections: the keep-alive race
    /// retry always gets a new connection.
    fresh: HttpClient,
    /// HTTP/1.1 upstreams: connections driven by the requests themselves.
    h1: Option<H1>,
    /// Ejection deadlines count from here.
    epoch: Instant,
    checker_started: AtomicBool,
    /// Dropped with the pool: a running checker stops at once.
    stop: tokio::sync::watch::Sender<()>,
}

impl Pool {
    pub fn new(
        name: String,
        servers: Vec<Server>,
        balance: Balance,
        health: Health,
        max_requests: usize,
        clients: Clients,
    ) -> Pool {
        Pool {
            name,
            servers: servers.into_boxed_slice(),
            balance,
            health,
            cursor: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_requests,
            client: clients.pooled,
            fresh: clients.fresh,
            h1: clients.h1,
            epoch: Instant::now(),
            checker_started: AtomicBool::new(false),
            stop: tokio::sync::watch::Sender::new(()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    pub(crate) fn client(&self) -> &HttpClient {
        &self.client
    }

    pub(crate) fn fresh(&self) -> &HttpClient {
        &self.fresh
    }

    pub(crate) fn h1(&self) -> Option<&H1> {
        self.h1.as_ref()
    }

    /// Milliseconds since the epoch, at least 1 (0 means "never ejected").
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// A server for one request, counted in flight until the returned
    /// [`Pick`] is dropped; refused (503) when every server is down or
    /// `max_requests` are in flight.
    pub fn pick(self: &Arc<Self>) -> Result<Pick, NoPick> {
        if self.in_flight.fetch_add(1, Relaxed) >= self.max_requests {
            self.in_flight.fetch_sub(1, Relaxed);
            return Err(NoPick::Busy);
        }
        // Counted from here: dropped on the way out if no server is up.
        let mut pick = Pick {
            pool: self.clone(),
            idx: usize::MAX,
        };
        let turn = if self.servers.len() == 1 {
            0
        } else {
            self.cursor.fetch_add(1, Relaxed)
        };
        let mut now = None;
        let idx = self
            .choose(turn, |s| {
                if s.down.load(Relaxed) {
                    return false;
                }
                let until = s.ejected_until.load(Relaxed);
                until == 0 || until <= *now.get_or_insert_with(|| self.now_ms())
            })
            // Every server that is up is ejected: try them anyway.
            .or_else(|| self.choose(turn, |s| !s.down.load(Relaxed)))
            .ok_or(NoPick::AllDown)?;
        self.servers[idx].in_flight.fetch_add(1, Relaxed);
        pick.idx = idx;
        Ok(pick)
    }

    /// `max_requests`.
    pub fn max_requests(&self) -> usize {
        self.max_requests
    }

    /// Requests in flight to this upstream now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Round robin: the first server that is `ok` from the `turn`th on.
    /// Least outstanding: among the `ok` servers with the fewest requests
    /// in flight, the `turn`th (modulo their number), so equals take turns.
    fn choose(&self, turn: usize, mut ok: impl FnMut(&Server) -> bool) -> Option<usize> {
        let n = self.servers.len();
        match self.balance {
            Balance::RoundRobin => (0..n)
                .map(|i| (turn + i) % n)
                .find(|&i| ok(&self.servers[i])),
            Balance::LeastOutstanding => {
                let mut least = usize::MAX;
                let mut ties: smallvec::SmallVec<[usize; 8]> = smallvec::SmallVec::new();
                for (i, s) in self.servers.iter().enumerate() {
                    if !ok(s) {
                        continue;
                    }
                    let load = s.in_flight.load(Relaxed);
                    if load < least {
                        least = load;
                        ties.clear();
                    }
                    if load == least {
                        ties.push(i);
                    }
                }
                (!ties.is_empty()).then(|| ties[turn % ties.len()])
            }
        }
    }

    fn success(&self, s: &Server) {
        // Loads first: the common case writes nothing (no cache-line
        // ping-pong between cores).
        if s.fails.load(Relaxed) != 0 {
            s.fails.store(0, Relaxed);
        }
        if s.ejections.load(Relaxed) != 0 {
            s.ejections.store(0, Relaxed);
            tracing::info!(target: "rolegate::upstream", upstream = %self.name, server = %s.label, "upstream server recovered");
        }
    }

    fn failure(&self, s: &Server) {
        let h = &self.health;
        if h.failures == 0 {
            return;
        }
        let now = self.now_ms();
        // Requests sent before the ejection that fail after it do not
        // extend it.
        if s.ejected_until.load(Relaxed) > now {
            return;
        }
        let n = s.fails.fetch_add(1, Relaxed) + 1;
        // On probation (back from an ejection, no success yet) one failure
        // is enough.
        let threshold = if s.ejections.load(Relaxed) > 0 {
            1
        } else {
            h.failures
        };
        // Only the failure that reached the threshold last ejects.
        if n < threshold || s.fails.compare_exchange(n, 0, Relaxed, Relaxed).is_err() {
            return;
        }
        let k = s.ejections.fetch_add(1, Relaxed).min(16);
        let eject = h.eject_for.saturating_mul(1 << k).min(h.max_eject_for);
        s.ejected_until
            .store(now + eject.as_millis() as u64, Relaxed);
        tracing::warn!(target: "rolegate::upstream", upstream = %self.name, server = %s.label, failures = n, eject_ms = eject.as_millis() as u64, ejections = k + 1, "upstream server ejected");
    }

    /// Starts the active checker once, if the upstream has one and a tokio
    /// runtime is running (otherwise the next call tries again). Cheap to
    /// call on every request.
    pub fn start_checks(self: &Arc<Self>) {
        if self.health.check.is_none() || self.checker_started.load(Relaxed) {
            return;
        }
        let _ = self.spawn_checker();
    }

    /// The checker task, if this call started it.
    fn spawn_checker(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let check = self.health.check.clone()?;
        let handle = tokio::runtime::Handle::try_current().ok()?;
        if self.checker_started.swap(true, Relaxed) {
            return None;
        }
        let weak = Arc::downgrade(self);
        let stop = self.stop.subscribe();
        Some(handle.spawn(run_checks(weak, stop, check.interval)))
    }

    /// One round: every server checked at once; each result sets its
    /// server down or up.
    async fn check_all(&self, check: &Check) {
        let rounds = self.servers.iter().map(|s| async move {
            let ok = self.check_one(s, check).await;
            let was_down = s.down.swap(!ok, Relaxed);
            match (was_down, ok) {
                (false, false) => {
                    tracing::warn!(target: "rolegate::upstream", upstream = %self.name, server = %s.label, "upstream server down (health check failed)")
                }
                (true, true) => {
                    tracing::info!(target: "rolegate::upstream", upstream = %self.name, server = %s.label, "upstream server up (health check passed)")
                }
                _ => {}
            }
        });
        futures_util::future::join_all(rounds).await;
    }

    /// `GET path` answered with a 2xx head within the timeout.
    async fn check_one(&self, s: &Server, check: &Check) -> bool {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(s.scheme.clone());
        parts.authority = Some(s.authority.clone());
        parts.path_and_query = Some(check.path.clone());
        let Ok(uri) = http::Uri::from_parts(parts) else {
            return false;
        };
        let body = Empty::<Bytes>::new().map_err(|e| match e {}).boxed();
        let Ok(req) = http::Request::get(uri)
            .header(http::header::USER_AGENT, "rolegate-health-check")
            .body(body)
        else {
            return false;
        };
        let call = async {
            let resp = self.client.request(req).await.ok()?;
            let ok = resp.status().is_success();
            // Read to the end so the connection can be reused.
            let _ = Limited::new(resp.into_body(), CHECK_BODY_BYTES)
                .collect()
                .await;
            Some(ok)
        };
        matches!(
            tokio::time::timeout(check.timeout, call).await,
            Ok(Some(true))
        )
    }
}

/// The checker: a round, then a pause, until the pool is gone.
async fn run_checks(weak: Weak<Pool>, mut stop: tokio::sync::watch::Receiver<()>, every: Duration) {
    loop {
        {
            let Some(pool) = weak.upgrade() else { return };
            let Some(check) = &pool.health.check else {
                return;
            };
            // The pool (and so the stop signal) lives while a round runs;
            // a round ends within the check timeout.
            pool.check_all(check).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            // Only ever an error: the sender is dropped with the pool.
            _ = stop.changed() => return,
        }
    }
}

/// Why a request got no server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPick {
    /// Every server is down (active health check): 503
    /// `no_healthy_upstream`.
    AllDown,
    /// `max_requests` are in flight: 503 `upstream_busy`.
    Busy,
}

/// A server picked for one request: counted in flight until dropped
/// (`upstream.rs` keeps it in the response body until the body ends; a
/// websocket relay holds it until the socket closes).
pub struct Pick {
    pool: Arc<Pool>,
    idx: usize,
}

impl Pick {
    pub fn server(&self) -> &Server {
        &self.pool.servers[self.idx]
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A response head arrived.
    pub fn success(&self) {
        self.pool.success(self.server());
    }

    /// No response head: connect failure, timeout, reset or garbage.
    pub fn failure(&self) {
        self.pool.failure(self.server());
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        if let Some(s) = self.pool.servers.get(self.idx) {
            s.in_flight.fetch_sub(1, Relaxed);
        }
        self.pool.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::upstream::{ClientSettings, new_clients};

    fn pool(n: usize, balance: Balance, health: Health) -> Arc<Pool> {
        let clients = new_clients(ClientSettings {
            connect_timeout: Duration::from_secs(1),
            http2: false,
            tls: None,
        })
        .unwrap();
        let servers = (0..n)
            .map(|i| {
                Server::new(
                    Scheme::HTTP,
                    Authority::try_from(format!("127.0.0.1:{}", 9 + i)).unwrap(),
                )
            })
            .collect();
        Arc::new(Pool::new(
            "app".into(),
            servers,
            balance,
            health,
            1024,
            clients,
        ))
    }

    fn health(failures: u32) -> Health {
        Health {
            failures,
            eject_for: Duration::from_secs(10),
            max_eject_for: Duration::from_secs(25),
            check: None,
        }
    }

    fn picks(p: &Arc<Pool>, n: usize) -> Vec<usize> {
        (0..n).map(|_| p.pick().unwrap().idx).collect()
    }

    #[test]
    fn round_robin_takes_turns_and_skips_ejected_servers() {
        let p = pool(3, Balance::RoundRobin, health(2));
        assert_eq!(picks(&p, 6), [0, 1, 2, 0, 1, 2]);
        let s1 = &p.servers[1];
        p.failure(s1);
        assert_eq!(
            picks(&p, 3),
            [0, 1, 2],
            "one failure is below the threshold"
        );
        p.failure(s1);
        assert!(s1.ejected_until.load(Relaxed) > 0);
        assert_eq!(picks(&p, 4), [0, 2, 2, 0]);
    }

    #[test]
    fn least_outstanding_prefers_idle_servers_and_breaks_ties_in_turn() {
        let p = pool(3, Balance::LeastOutstanding, health(3));
        let held = p.pick().unwrap();
        assert_eq!(held.idx, 0);
        // 1 and 2 are idle: they alternate, 0 is never picked.
        assert_eq!(picks(&p, 4), [2, 1, 2, 1]);
        drop(held);
        assert_eq!(p.servers[0].in_flight.load(Relaxed), 0);
        assert_eq!(picks(&p, 3), [2, 0, 1]);
    }

    #[test]
    fn repeated_ejections_double_up_to_the_cap_and_a_success_resets() {
        let p = pool(2, Balance::RoundRobin, health(2));
        let s = &p.servers[0];
        let ejected_for = |s: &Server| {
            let until = s.ejected_until.load(Relaxed);
            // Seconds, rounded: the clock moved a little meanwhile.
            (until.saturating_sub(p.now_ms()) + 500) / 1000
        };
        p.failure(s);
        p.failure(s);
        assert_eq!(ejected_for(s), 10);
        // Failures while ejected (requests sent before) change nothing.
        p.failure(s);
        assert_eq!(ejected_for(s), 10);
        // Back from the back-off: on probation, one failure ejects again.
        s.ejected_until.store(1, Relaxed);
        p.failure(s);
        assert_eq!(ejected_for(s), 20);
        s.ejected_until.store(1, Relaxed);
        p.failure(s);
        assert_eq!(ejected_for(s), 25, "capped at max_eject_for");
        s.ejected_until.store(1, Relaxed);
        p.success(s);
        p.failure(s);
        assert_eq!(ejected_for(s), 0, "a success ends probation");
        p.failure(s);
        assert_eq!(ejected_for(s), 10);
    }

    #[test]
    fn all_ejected_still_routes_but_all_down_does_not() {
        let p = pool(2, Balance::RoundRobin, health(1));
        p.failure(&p.servers[0]);
        p.failure(&p.servers[1]);
        assert_eq!(picks(&p, 2).len(), 2, "panic routing over ejected servers");
        p.servers[0].down.store(true, Relaxed);
        assert_eq!(picks(&p, 3), [1, 1, 1]);
        p.servers[1].down.store(true, Relaxed);
        assert_eq!(p.pick().err(), Some(NoPick::AllDown));
        assert_eq!(p.in_flight(), 0, "a refused pick is not counted");
    }

    #[test]
    fn max_requests_caps_the_requests_in_flight_over_all_servers() {
        let p = pool(2, Balance::RoundRobin, health(0));
        let held: Vec<Pick> = (0..1024).map(|_| p.pick().unwrap()).collect();
        assert_eq!(p.in_flight(), 1024);
        assert_eq!(p.pick().err(), Some(NoPick::Busy));
        assert_eq!(p.in_flight(), 1024, "a refused pick is not counted");
        assert_eq!(p.servers[0].in_flight.load(Relaxed), 512);
        drop(held);
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.servers[1].in_flight.load(Relaxed), 0);
        assert!(p.pick().is_ok(), "slots come back when requests end");
    }

    #[test]
    fn failures_zero_never_ejects() {
        let p = pool(2, Balance::RoundRobin, health(0));
        for _ in 0..10 {
            p.failure(&p.servers[0]);
        }
        assert_eq!(picks(&p, 4), [0, 1, 0, 1]);
    }

    #[tokio::test]
    async fn the_checker_stops_when_the_pool_is_dropped() {
        let mut h = health(3);
        h.check = Some(Check {
            path: PathAndQuery::from_static("/health"),
            interval: Duration::from_secs(3600),
            timeout: Duration::from_millis(200),
        });
        let p = pool(1, Balance::RoundRobin, h);
        let task = p.spawn_checker().unwrap();
        assert!(p.spawn_checker().is_none(), "started once");
        let weak = Arc::downgrade(&p);
        drop(p);
        // The task ends (it held no strong reference across its pause).
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("checker stopped")
            .unwrap();
        assert!(weak.upgrade().is_none());
    }
}
