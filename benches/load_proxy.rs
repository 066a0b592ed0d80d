//! Load: rolegate authorizing and forwarding, side by side with nginx as a
//! plain reverse proxy and HAProxy verifying the same JWTs with ACLs, on
//! the same machine, in one interleaved run (issue 23's harness).
//!
//! Layout (2-core machine): the proxies under test (the release `rolegate`
//! binary, nginx with one worker, HAProxy with one thread) run pinned to
//! CPU 0 and only one is loaded at a time. The upstream is a second nginx
//! serving fixed JSON files (32 B, the 1 KB customer profile, a 100 KB and
//! a 1 MB list) with keep-alive; it, Redis (for the Redis-store scenario)
//! and `wrk -t1 -c32` run pinned to CPU 1. Each proxy writes an access
//! line per request: rolegate its JSON access log to a file (stdout
//! redirected; rolegate buffers it), nginx `combined` to a file with
//! `buffer=64k flush=1s`, HAProxy `option httplog` to stdout (redirected to
//! a file; one write per line, as HAProxy does).
//!
//! Scenarios, each once per round, the order rotating from round to round
//! (the body is the 1 KB profile unless the name says otherwise):
//!
//! - `direct`: wrk straight to the upstream (the latency baseline);
//! - `nginx`: nginx `proxy_pass` with kept-alive upstream connections, no
//!   authentication (what "plain proxy" means in the targets);
//! - `rg-hs256`, `rg-rs256`, `rg-es256`: rolegate on a route that requires
//!   a capability, the token signed with that algorithm (the verified-token
//!   cache on, as by default);
//! - `ha-hs256`, `ha-rs256`, `ha-es256`: HAProxy checking the same token:
//!   `jwt_verify` of the signature for the token's `alg` (HS256, RS256,
//!   ES256 allowed), `iss`, `aud`, `exp`, and an ACL on the `roles` claim;
//! - `rg-mask`: rolegate masking four PII fields of the profile (HS256);
//! - `rg-redis`: rolegate with the Redis session store (HS256);
//! - `rg-many`: rolegate with 1000 principals, each its own token and
//!   session, rotated per request (a wrk Lua script);
//! - `nginx-2w`, `rg-2w`, `rg-2w-many`: nginx and rolegate on both cores
//!   (two workers), rolegate with one session and 1000 sessions. wrk and
//!   the upstream share those cores, so requests/s cannot show the
//!   scaling; the CPU per request against the one-worker case can (equal
//!   CPU per request = no contention), and nginx's own ratio says how much
//!   of it the shared machine costs any proxy. `× nginx` of the two-worker
//!   cases is against `nginx-2w`;
//! - `direct-32b`, `nginx-32b`, `rg-32b` and the same for `100kb` and
//!   `1mb`: the other body sizes (HS256);
//! - `rg-base`, only with `LOAD_BASELINE=<path>`: another rolegate binary
//!   (an earlier commit's release build) as `rg-hs256`, to tell a change
//!   in the code from a change in the machine: its `CPU ÷ reference` is
//!   its CPU per request over this build's (`rg-hs256`) in the same round.
//!
//! Figures: medians over rounds with 95 % confidence intervals (sign-test
//! order statistics), each proxy's own CPU time per request
//! (`/proc/<pid>/stat`; nginx master + worker), wrk's p99 latency, the
//! per-round ratio to nginx with the same body and to HAProxy with the
//! same algorithm, and the p99 added over `direct` with the same body in
//! the same round. `LOAD_ROUNDS` (default 10), `LOAD_SECS` (default 2),
//! `LOAD_ONLY=<name>,…` (ratios need their reference scenario),
//! `LOAD_RECORD=1` appends the table to BENCHMARKS.md with the date, the
//! machine and the command. Needs `wrk`, `taskset`, `nginx`, `haproxy`
//! (2.5 or later, for `jwt_verify`) and `redis-server`; run as root on a
//! machine without them, it installs them from Debian's packages first.
//! Run: `cargo bench --bench load_proxy`.

#[path = "common/fixtures.rs"]
mod fixtures;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/stats.rs"]
mod stats;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fixtures::{PII_MASK_YAML, PROFILE, redis_args};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use procs::*;
use serde_json::json;
use stats::show;

/// Principals in the many-sessions scenarios.
const MANY: usize = 1000;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Body {
    B32,
    K1,
    K100,
    M1,
}

impl Body {
    /// The upstream path serving this body (rolegate's routes match it).
    fn path(self) -> &'static str {
        match self {
            Body::B32 => "/api/lists/b32",
            Body::K1 => "/api/customers/c-1001",
            Body::K100 => "/api/lists/b100k",
            Body::M1 => "/api/lists/b1m",
        }
    }

    fn content(self) -> String {
        match self {
            Body::B32 => r#"{"ok":true,"id":"c-1001","n":17}"#.to_string(),
            Body::K1 => PROFILE.to_string(),
            Body::K100 => list(100 * 1024),
            Body::M1 => list(1024 * 1024),
        }
    }
}

/// A JSON list of profiles of about `size` bytes.
fn list(size: usize) -> String {
    let n = size / (PROFILE.len() + 1);
    format!("[{}]", vec![PROFILE; n.max(1)].join(","))
}

/// Which rolegate instance serves a scenario.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Rg {
    /// Embedded store, one core.
    One,
    /// Redis store, one core.
    Redis,
    /// Embedded store, both cores.
    Two,
    /// The `LOAD_BASELINE` binary: embedded store, one core.
    Base,
}

#[derive(Clone, Copy, PartialEq)]
enum Server {
    Direct,
    Nginx,
    /// nginx with two workers on both cores (the two-worker reference).
    Nginx2,
    Rolegate(Rg),
    Haproxy,
}

struct Scenario {
    name: &'static str,
    server: Server,
    alg: Option<Algorithm>,
    body: Body,
    /// The masked route instead of the plain one.
    masked: bool,
    /// 1000 principals rotated per request instead of one.
    many: bool,
}

const fn sc(name: &'static str, server: Server, alg: Option<Algorithm>, body: Body) -> Scenario {
    Scenario {
        name,
        server,
        alg,
        body,
        masked: false,
        many: false,
    }
}

const HS: Option<Algorithm> = Some(Algorithm::HS256);
const ONE: Server = Server::Rolegate(Rg::One);

const SCENARIOS: [Scenario; 24] = [
    sc("direct", Server::Direct, None, Body::K1),
    sc("nginx", Server::Nginx, None, Body::K1),
    sc("rg-hs256", ONE, HS, Body::K1),
    sc("rg-rs256", ONE, Some(Algorithm::RS256), Body::K1),
    sc("rg-es256", ONE, Some(Algorithm::ES256), Body::K1),
    sc("ha-hs256", Server::Haproxy, HS, Body::K1),
    sc(
        "ha-rs256",
        Server::Haproxy,
        Some(Algorithm::RS256),
        Body::K1,
    ),
    sc(
        "ha-es256",
        Server::Haproxy,
        Some(Algorithm::ES256),
        Body::K1,
    ),
    Scenario {
        masked: true,
        ..sc("rg-mask", ONE, HS, Body::K1)
    },
    sc("rg-redis", Server::Rolegate(Rg::Redis), HS, Body::K1),
    Scenario {
        many: true,
        ..sc("rg-many", ONE, HS, Body::K1)
    },
    sc("nginx-2w", Server::Nginx2, None, Body::K1),
    sc("rg-2w", Server::Rolegate(Rg::Two), HS, Body::K1),
    Scenario {
        many: true,
        ..sc("rg-2w-many", Server::Rolegate(Rg::Two), HS, Body::K1)
    },
    sc("direct-32b", Server::Direct, None, Body::B32),
    sc("nginx-32b", Server::Nginx, None, Body::B32),
    sc("rg-32b", ONE, HS, Body::B32),
    sc("direct-100kb", Server::Direct, None, Body::K100),
    sc("nginx-100kb", Server::Nginx, None, Body::K100),
    sc("rg-100kb", ONE, HS, Body::K100),
    sc("direct-1mb", Server::Direct, None, Body::M1),
    sc("nginx-1mb", Server::Nginx, None, Body::M1),
    sc("rg-1mb", ONE, HS, Body::M1),
    sc("rg-base", Server::Rolegate(Rg::Base), HS, Body::K1),
];

/// One slice: requests/s, server CPU µs per request, p99 latency in µs.
#[derive(Clone, Copy, Default)]
struct Slice {
    rps: f64,
    cpu_us: f64,
    p99_us: f64,
}

fn keys() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys")
}

/// What the harness needs on PATH, and the Debian package of each.
const TOOLS: [(&str, &str, &str); 5] = [
    ("wrk", "--version", "wrk"),
    ("nginx", "-v", "nginx"),
    ("haproxy", "-v", "haproxy"),
    ("redis-server", "--version", "redis-server"),
    ("taskset", "--version", "util-linux"),
];

fn missing_tools() -> Vec<&'static str> {
    TOOLS
        .iter()
        .filter(|(bin, arg, _)| Command::new(bin).arg(arg).output().is_err())
        .map(|t| t.2)
        .collect()
}

/// Installs the missing tools from Debian's packages when running as root
/// with apt-get; false when something is still missing.
fn ensure_tools() -> bool {
    let missing = missing_tools();
    if missing.is_empty() {
        return true;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root && Command::new("apt-get").arg("--version").output().is_ok() {
        println!("load_proxy: installing {}", missing.join(" "));
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .status();
    }
    let missing = missing_tools();
    if !missing.is_empty() {
        println!("load_proxy: skipped (missing: {})", missing.join(" "));
    }
    missing.is_empty()
}

/// A process the harness started, stopped by pid when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

fn spawn(cpus: &str, program: &str, args: &[&str], log: Option<&Path>) -> Proc {
    let out = |p: Option<&Path>| match p {
        Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
        None => Stdio::null(),
    };
    Proc(
        Command::new("taskset")
            .args(["-c", cpus, program])
            .args(args)
            .stdout(out(log))
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}")),
    )
}

fn main() {
    let rounds: usize = env_or("LOAD_ROUNDS", 10).max(2);
    let secs: u64 = env_or("LOAD_SECS", 2);
    let only = std::env::var("LOAD_ONLY").ok();
    let baseline = std::env::var("LOAD_BASELINE").ok().map(PathBuf::from);
    if let Some(b) = &baseline {
        assert!(b.is_file(), "LOAD_BASELINE: no file at {}", b.display());
    }
    let selected = |name: &str| {
        (name != "rg-base" || baseline.is_some())
            && only
                .as_deref()
                .is_none_or(|o| o.split(',').any(|x| x.trim() == name))
    };
    if !ensure_tools() {
        return;
    }
    raise_nofile();
    pin(std::process::id(), "1");

    let dir = std::env::temp_dir().join(format!("rolegate-load-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in [
        "www/api/customers",
        "www/api/lists",
        "www/masked/customers",
        "up",
        "ng",
        "ng2",
        "state1",
        "state2",
        "state3",
        "state4",
    ] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    for body in [Body::B32, Body::K1, Body::K100, Body::M1] {
        std::fs::write(dir.join("www").join(&body.path()[1..]), body.content()).unwrap();
    }
    std::fs::write(dir.join("www/masked/customers/c-1001"), PROFILE).unwrap();
    std::fs::write(dir.join("many.tokens"), many_tokens().join("\n")).unwrap();
    std::fs::write(dir.join("many.lua"), many_script(&dir.join("many.tokens"))).unwrap();

    let procs = start_all(&dir, baseline.as_deref());
    let result = std::panic::catch_unwind(|| {
        sanity(&procs);
        let target = |s: &Scenario| -> (u16, Vec<u32>) {
            match s.server {
                Server::Direct => (procs.up_port, vec![]),
                Server::Nginx | Server::Nginx2 => {
                    let (port, n) = if s.server == Server::Nginx {
                        (procs.ng_port, &procs.nginx)
                    } else {
                        (procs.ng2_port, &procs.nginx2)
                    };
                    let id = n.0.id();
                    let mut p = vec![id];
                    p.extend(children(id));
                    (port, p)
                }
                Server::Rolegate(rg) => {
                    let (port, p) = procs.rolegate(rg);
                    (port, vec![p.0.id()])
                }
                Server::Haproxy => (procs.ha_port, vec![procs.haproxy.0.id()]),
            }
        };
        let table = measure(rounds, secs, &selected, &target, &dir);
        if std::env::var("LOAD_RECORD").is_ok_and(|v| v == "1") {
            record(&table, rounds, secs);
        }
    });
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Everything the harness runs, with the port each listens on.
struct Procs {
    up_port: u16,
    ng_port: u16,
    ng2_port: u16,
    ha_port: u16,
    /// In [`Rg`]'s order; the baseline's only with `LOAD_BASELINE`.
    rg: Vec<(u16, Proc)>,
    nginx: Proc,
    nginx2: Proc,
    haproxy: Proc,
    // Dropped last: the proxies above stop first.
    _upstream: Proc,
    _redis: Proc,
}

impl Procs {
    fn rolegate(&self, rg: Rg) -> (u16, &Proc) {
        let (port, p) = &self.rg[rg as usize];
        (*port, p)
    }
}

fn start_all(dir: &Path, baseline: Option<&Path>) -> Procs {
    let up_port = free_port();
    let up_conf = dir.join("up/nginx.conf");
    std::fs::write(&up_conf, upstream_config(dir, up_port)).unwrap();
    let upstream = nginx_proc("1", &up_conf, &dir.join("up"));

    let redis_port = free_port();
    let redis = spawn(
        "1",
        "redis-server",
        &redis_args(redis_port)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        None,
    );
    wait_listening(redis_port);

    let this = Path::new(env!("CARGO_BIN_EXE_rolegate"));
    let mut instances = vec![
        ("rg1", "0", "embedded".to_string(), "state1", this),
        (
            "rg-redis",
            "0",
            format!("redis://127.0.0.1:{redis_port}"),
            "state3",
            this,
        ),
        ("rg2", "0,1", "embedded".to_string(), "state2", this),
    ];
    if let Some(bin) = baseline {
        instances.push(("rg-base", "0", "embedded".to_string(), "state4", bin));
    }
    let rg: Vec<(u16, Proc)> = instances
        .into_iter()
        .map(|(name, cpus, store, state, bin)| {
            let port = free_port();
            let conf = dir.join(format!("{name}.yaml"));
            std::fs::write(
                &conf,
                rolegate_config(dir, port, up_port, &store, &dir.join(state)),
            )
            .unwrap();
            let p = spawn(
                cpus,
                bin.to_str().unwrap(),
                &["serve", "-c", conf.to_str().unwrap()],
                Some(&dir.join(format!("{name}-access.jsonl"))),
            );
            (port, p)
        })
        .collect();

    let ng_port = free_port();
    let ng_conf = dir.join("ng/nginx.conf");
    std::fs::write(&ng_conf, nginx_config(&dir.join("ng"), ng_port, up_port, 1)).unwrap();
    let nginx = nginx_proc("0", &ng_conf, &dir.join("ng"));
    let ng2_port = free_port();
    let ng2_conf = dir.join("ng2/nginx.conf");
    std::fs::write(
        &ng2_conf,
        nginx_config(&dir.join("ng2"), ng2_port, up_port, 2),
    )
    .unwrap();
    let nginx2 = nginx_proc("0,1", &ng2_conf, &dir.join("ng2"));

    let ha_port = free_port();
    std::fs::write(dir.join("haproxy.cfg"), haproxy_config(ha_port, up_port)).unwrap();
    let haproxy = spawn(
        "0",
        "haproxy",
        &["-db", "-f", dir.join("haproxy.cfg").to_str().unwrap()],
        Some(&dir.join("haproxy-access.log")),
    );
    for p in [up_port, ng_port, ng2_port, ha_port]
        .into_iter()
        .chain(rg.iter().map(|r| r.0))
    {
        wait_listening(p);
    }
    std::thread::sleep(Duration::from_millis(200));
    Procs {
        up_port,
        ng_port,
        ng2_port,
        ha_port,
        rg,
        nginx,
        nginx2,
        haproxy,
        _upstream: upstream,
        _redis: redis,
    }
}

fn nginx_proc(cpus: &str, conf: &Path, prefix: &Path) -> Proc {
    spawn(
        cpus,
        "nginx",
        &[
            "-c",
            conf.to_str().unwrap(),
            "-p",
            prefix.to_str().unwrap(),
            "-e",
            prefix.join("error.log").to_str().unwrap(),
        ],
        None,
    )
}

/// Every proxy must answer the real request with the upstream's body, and
/// both verifiers must refuse a forged token and a wrong role, or the
/// comparison is void.
fn sanity(p: &Procs) {
    for body in [Body::B32, Body::K1, Body::K100, Body::M1] {
        let want = body.content().len();
        let tok = token(Algorithm::HS256);
        for port in [p.up_port, p.ng_port, p.ng2_port]
            .into_iter()
            .chain(p.rg.iter().map(|r| r.0))
        {
            let (code, len) = get(port, body.path(), Some(&tok));
            assert_eq!((code, len), (200, want), "{body:?} on {port}");
        }
    }
    let (code, len) = get(
        p.rg[0].0,
        "/masked/customers/c-1001",
        Some(&token(Algorithm::HS256)),
    );
    assert_eq!(code, 200, "masked route");
    assert_ne!(len, PROFILE.len(), "the masked profile must differ");
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
        let good = token(alg);
        let forged = format!("{}AAAA", &good[..good.len() - 4]);
        let viewer = token_for(alg, "viewer", 0);
        for port in [p.rg[0].0, p.ha_port]
            .into_iter()
            .chain(p.rg.get(Rg::Base as usize).map(|r| r.0))
        {
            let path = Body::K1.path();
            assert_eq!(get(port, path, Some(&good)).0, 200, "{alg:?} on {port}");
            assert_eq!(
                get(port, path, Some(&forged)).0,
                401,
                "forged {alg:?} on {port}"
            );
            assert_eq!(
                get(port, path, Some(&viewer)).0,
                403,
                "viewer {alg:?} on {port}"
            );
        }
    }
}

/// The printed table's rows (already formatted).
type Table = Vec<String>;

fn measure(
    rounds: usize,
    secs: u64,
    selected: &dyn Fn(&str) -> bool,
    target: &dyn Fn(&Scenario) -> (u16, Vec<u32>),
    dir: &Path,
) -> Table {
    let tick = 1.0 / ticks_per_sec();
    let tokens: Vec<Option<String>> = SCENARIOS.iter().map(|s| s.alg.map(token)).collect();
    let script = dir.join("many.lua");
    let mut results: Vec<Vec<Slice>> = vec![Vec::new(); SCENARIOS.len()];
    let picked: Vec<usize> = (0..SCENARIOS.len())
        .filter(|&i| selected(SCENARIOS[i].name))
        .collect();
    for round in 0..rounds {
        // Rotate the order so that no scenario always follows another.
        let n = picked.len();
        for k in 0..n {
            let i = picked[(k + round) % n];
            let s = &SCENARIOS[i];
            let (port, pids) = target(s);
            let path = if s.masked {
                "/masked/customers/c-1001"
            } else {
                s.body.path()
            };
            let url = format!("http://127.0.0.1:{port}{path}");
            let load = if s.many {
                Load::Script(&script)
            } else {
                Load::Token(tokens[i].as_deref())
            };
            if round == 0 {
                wrk(&url, &load, 1); // warm-up: caches, sessions, pools
            }
            let c0 = cpu_ticks_all(&pids);
            let t0 = Instant::now();
            let (rps, p99_us) = wrk(&url, &load, secs);
            let wall = t0.elapsed().as_secs_f64();
            let cpu = (cpu_ticks_all(&pids) - c0) as f64 * tick;
            let cpu_us = if pids.is_empty() {
                f64::NAN
            } else {
                cpu / (rps * wall) * 1e6
            };
            println!(
                "round {round} {:>12}: {rps:>8.0} req/s  p99 {:>7.0} µs  server CPU {cpu_us:>6.1} µs/request ({:.0} % of a core)",
                s.name,
                p99_us,
                cpu / wall * 100.0
            );
            results[i].push(Slice {
                rps,
                cpu_us,
                p99_us,
            });
        }
    }
    summarize(rounds, secs, &picked, &results)
}

fn summarize(rounds: usize, secs: u64, picked: &[usize], results: &[Vec<Slice>]) -> Table {
    let find = |f: &dyn Fn(&Scenario) -> bool| SCENARIOS.iter().position(f);
    // Per-round ratio of scenario `a` to scenario `b` under `f`.
    let ratio = |a: usize, b: Option<usize>, f: fn(&Slice) -> f64| -> String {
        match b {
            Some(b) if b != a && !results[a].is_empty() && !results[b].is_empty() => {
                let v: Vec<f64> = results[a]
                    .iter()
                    .zip(&results[b])
                    .map(|(x, y)| f(x) / f(y))
                    .collect();
                show(&v, |x| format!("{x:.2}"))
            }
            _ => "–".into(),
        }
    };
    let mut table = vec![
        format!("{rounds} rounds of {secs} s, wrk -t1 -c32; medians [95 % CI]"),
        String::new(),
        "| scenario | req/s | × nginx | × HAProxy (same alg) | CPU ÷ reference | proxy CPU µs/req | CPU ÷ nginx's | p99 µs | p99 added over direct, µs |".into(),
        "|---|---|---|---|---|---|---|---|---|".into(),
    ];
    for &i in picked {
        let s = &SCENARIOS[i];
        let col = |f: fn(&Slice) -> f64| results[i].iter().map(f).collect::<Vec<f64>>();
        // Two workers compare with nginx on two workers.
        let ng = match s.server {
            Server::Rolegate(Rg::Two) => Server::Nginx2,
            _ => Server::Nginx,
        };
        let nginx = find(&|x| x.server == ng && x.body == s.body);
        let direct = find(&|x| x.server == Server::Direct && x.body == s.body);
        let vs_ha = match (s.server, s.alg) {
            (Server::Rolegate(_), Some(a)) if s.body == Body::K1 && !s.masked => ratio(
                i,
                find(&|x| x.server == Server::Haproxy && x.alg == Some(a)),
                |x| x.rps,
            ),
            _ => "–".into(),
        };
        // The CPU reference of a variant: the same case on one worker,
        // the embedded store, one session (how much the variant adds).
        let reference = match s.server {
            Server::Nginx2 => ratio(i, find(&|x| x.name == "nginx"), |x| x.cpu_us),
            Server::Rolegate(rg) if rg != Rg::One || s.many || s.masked => {
                let one = if rg == Rg::Two {
                    find(&|x| {
                        x.server == ONE
                            && x.many == s.many
                            && x.body == s.body
                            && x.alg == s.alg
                            && !x.masked
                    })
                } else {
                    find(&|x| x.name == "rg-hs256")
                };
                ratio(i, one, |x| x.cpu_us)
            }
            _ => "–".into(),
        };
        let added = match direct {
            Some(d) if d != i && !results[d].is_empty() => {
                let v: Vec<f64> = results[i]
                    .iter()
                    .zip(&results[d])
                    .map(|(x, y)| x.p99_us - y.p99_us)
                    .collect();
                show(&v, |x| format!("{x:.0}"))
            }
            _ => "–".into(),
        };
        let proxy = !matches!(s.server, Server::Direct);
        table.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.name,
            show(&col(|x| x.rps), |x| format!("{x:.0}")),
            if proxy {
                ratio(i, nginx, |x| x.rps)
            } else {
                "–".into()
            },
            vs_ha,
            reference,
            if proxy {
                show(&col(|x| x.cpu_us), |x| format!("{x:.1}"))
            } else {
                "–".into()
            },
            if proxy {
                ratio(i, nginx, |x| x.cpu_us)
            } else {
                "–".into()
            },
            show(&col(|x| x.p99_us), |x| format!("{x:.0}")),
            added,
        ));
    }
    println!();
    for line in &table {
        println!("{line}");
    }
    table
}

/// Appends the table to BENCHMARKS.md with the date, the machine and the
/// command that produced it.
fn record(table: &Table, rounds: usize, secs: u64) {
    let sh = |cmd: &str| {
        Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    let text = format!(
        "\n## {} — load_proxy (recorded by the harness)\n\nMachine: {}, {} cores ({}), {}. Versions: {}; {}; {}.\n\nCommand: `LOAD_RECORD=1 LOAD_ROUNDS={rounds} LOAD_SECS={secs} {}cargo bench --bench load_proxy`\n\n{}\n",
        sh("date -u +%Y-%m-%d"),
        sh("uname -srm"),
        sh("nproc --all"),
        cpu.trim(),
        sh("free -g | awk '/Mem:/ {print $2 \" GiB\"}'"),
        sh("nginx -v 2>&1"),
        sh("haproxy -v | head -1"),
        sh("wrk --version 2>&1 | head -1"),
        ["LOAD_ONLY", "LOAD_BASELINE"]
            .iter()
            .filter_map(|k| Some(format!("{k}={} ", std::env::var(k).ok()?)))
            .collect::<String>(),
        table.join("\n"),
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let mut all = std::fs::read_to_string(&path).unwrap_or_default();
    all.push_str(&text);
    std::fs::write(&path, all).unwrap();
    println!("load_proxy: table appended to {}", path.display());
}

/// A token every server accepts for the profile route: issuer `load-<alg>`
/// (rolegate has one issuer per key), audience `a`, role `agent`.
fn token(alg: Algorithm) -> String {
    token_for(alg, "agent", 0)
}

/// [`token`] with another role, for principal number `n`.
fn token_for(alg: Algorithm, role: &str, n: usize) -> String {
    let (iss, key) = match alg {
        Algorithm::HS256 => (
            "load-hs",
            EncodingKey::from_secret(hmac_secret().as_bytes()),
        ),
        Algorithm::RS256 => (
            "load-rs",
            EncodingKey::from_rsa_pem(&std::fs::read(keys().join("rsa.key")).unwrap()).unwrap(),
        ),
        Algorithm::ES256 => (
            "load-es",
            EncodingKey::from_ec_pem(&std::fs::read(keys().join("ec256.key")).unwrap()).unwrap(),
        ),
        other => panic!("no key for {other:?}"),
    };
    let claims = json!({
        "iss": iss, "aud": "a", "sub": format!("u-{iss}-{n}"), "sid": format!("s-{iss}-{n}"),
        "exp": 4_000_000_000u64, "roles": [role],
    });
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
}

fn many_tokens() -> Vec<String> {
    (0..MANY)
        .map(|n| token_for(Algorithm::HS256, "agent", n))
        .collect()
}

/// A wrk script sending each request with the next of the tokens in
/// `file` (one per line).
fn many_script(file: &Path) -> String {
    format!(
        r#"local tokens = {{}}
for line in io.lines("{}") do tokens[#tokens + 1] = "Bearer " .. line end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format(nil, nil, {{ ["Authorization"] = tokens[i] }})
end
"#,
        file.display()
    )
}

fn hmac_secret() -> String {
    std::fs::read_to_string(keys().join("hmac.secret"))
        .unwrap()
        .trim()
        .to_string()
}

/// How wrk authenticates: one token (or none) on every request, or a
/// script rotating tokens.
enum Load<'a> {
    Token(Option<&'a str>),
    Script(&'a Path),
}

/// Runs wrk (on CPU 1) for `secs` seconds: requests/s and p99 latency in
/// µs. Any non-2xx answer or socket error fails the bench (a refusal is
/// cheap and would flatter the figures).
fn wrk(url: &str, load: &Load, secs: u64) -> (f64, f64) {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", "wrk", "-t1", "-c32", "--latency"])
        .arg(format!("-d{secs}s"));
    match load {
        Load::Token(Some(t)) => {
            cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        Load::Token(None) => {}
        Load::Script(s) => {
            cmd.arg("-s").arg(s);
        }
    }
    let out = cmd.arg(url).output().expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "wrk saw failures on {url}:\n{text}"
    );
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| micros(v.trim()))
        .unwrap_or_else(|| panic!("no 99% latency in wrk output:\n{text}"));
    (rps, p99)
}

/// The status and body length of one `GET path` on a fresh connection.
fn get(port: u16, path: &str, token: Option<&str>) -> (u16, usize) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let len = if chunked {
        dechunked_len(&buf[head_end..])
    } else {
        buf.len() - head_end
    };
    (code, len)
}

/// The payload length of a chunked body.
fn dechunked_len(mut b: &[u8]) -> usize {
    let mut total = 0;
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return total;
        };
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return total;
        }
        total += size;
        b = &b[(eol + 2 + size + 2).min(b.len())..];
    }
}

/// wrk's `1.23ms` / `812.00us` / `1.02s` in µs.
fn micros(v: &str) -> Option<f64> {
    for (unit, scale) in [("us", 1.0), ("ms", 1e3), ("s", 1e6)] {
        if let Some(n) = v.strip_suffix(unit) {
            return n.parse::<f64>().ok().map(|n| n * scale);
        }
    }
    None
}

fn rolegate_config(dir: &Path, port: u16, up: u16, store: &str, state: &Path) -> String {
    let k = keys();
    format!(
        r#"listen: {{ addr: "127.0.0.1:{port}" }}
identity:
  issuers:
    - {{ iss: load-hs, audiences: [a], algorithms: [HS256], keys: {{ hmac_secret_file: "{hs}" }} }}
    - {{ iss: load-rs, audiences: [a], algorithms: [RS256], keys: {{ pem: [{{ file: "{rs}" }}] }} }}
    - {{ iss: load-es, audiences: [a], algorithms: [ES256], keys: {{ pem: [{{ file: "{es}" }}] }} }}
upstreams:
  app: {{ url: "http://127.0.0.1:{up}" }}
sessions:
  store: "{store}"
  state_dir: "{state}"
reload: {{ watch: false }}
masking: {{ audit_log: "{audit}" }}
{masks}roles:
  agent: {{ grants: [customer.profile.view] }}
routes:
  - {{ name: profile, match: {{ methods: [GET], path: "/api/customers/{{id}}" }}, require: customer.profile.view }}
  - {{ name: lists, match: {{ methods: [GET], path: "/api/lists/{{name}}" }}, require: customer.profile.view }}
  - {{ name: masked, match: {{ methods: [GET], path: "/masked/customers/{{id}}" }}, require: customer.profile.view, mask: pii, record: "{{id}}" }}
"#,
        hs = k.join("hmac.secret").display(),
        rs = k.join("rsa.pub").display(),
        es = k.join("ec256.pub").display(),
        state = state.display(),
        audit = dir.join("audit.jsonl").display(),
        masks = PII_MASK_YAML,
    )
}

/// The upstream: nginx serving the fixed JSON files, keep-alive, no log.
fn upstream_config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes 1;
daemon off;
master_process on;
pid {d}/up/nginx.pid;
error_log {d}/up/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/up/client_body;
  proxy_temp_path {d}/up/proxy;
  fastcgi_temp_path {d}/up/fastcgi;
  uwsgi_temp_path {d}/up/uwsgi;
  scgi_temp_path {d}/up/scgi;
  keepalive_timeout 60s;
  keepalive_requests 1000000;
  sendfile on;
  tcp_nopush on;
  default_type application/json;
  server {{
    listen 127.0.0.1:{port};
    root {d}/www;
  }}
}}
"#
    )
}

/// nginx as a plain reverse proxy: `workers` workers (one: the proxies
/// are pinned to one core; two for the two-worker reference), client and
/// upstream keep-alive, an access line per request (buffered).
fn nginx_config(dir: &Path, port: u16, up: u16, workers: u8) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {d}/access.log combined buffer=64k flush=1s;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_timeout 60s;
  keepalive_requests 1000000;
  upstream app {{ server 127.0.0.1:{up}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"#
    )
}
/// HAProxy verifying the token as rolegate does: the signature with the
/// key of the token's algorithm (HS256, RS256 or ES256 allowed), the
/// issuer, the audience and the expiry, then an ACL on the roles claim
/// (its first entry: HAProxy 2.6's JSON query cannot search an array).
fn haproxy_config(port: u16, up: u16) -> String {
    let k = keys();
    format!(
        r#"global
  nbthread 1
  maxconn 4096
  log stdout format raw local0 info
defaults
  mode http
  log global
  option httplog
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:{port}
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request set-var(txn.now) date
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  acl hs var(txn.alg) -m str HS256
  acl rs var(txn.alg) -m str RS256
  acl es var(txn.alg) -m str ES256
  acl hs_ok var(txn.bearer),jwt_verify(txn.alg,"{secret}") -m int 1
  acl rs_ok var(txn.bearer),jwt_verify(txn.alg,"{rs}") -m int 1
  acl es_ok var(txn.bearer),jwt_verify(txn.alg,"{es}") -m int 1
  http-request deny deny_status 401 unless hs hs_ok or rs rs_ok or es es_ok
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.iss') -m beg load- }}
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.aud') -m str a }}
  http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
  http-request deny deny_status 403 unless {{ path_beg /api/customers/ }} {{ var(txn.bearer),jwt_payload_query('$.roles[0]') -m str agent }}
  default_backend app
backend app
  http-reuse always
  server s1 127.0.0.1:{up}
"#,
        secret = hmac_secret(),
        rs = k.join("rsa.pub").display(),
        es = k.join("ec256.pub").display(),
    )
}
