//! Load: rolegate authorizing and forwarding, side by side with nginx as a
//! plain reverse proxy and HAProxy verifying the same JWTs with ACLs, on
//! the same machine, in one interleaved run.
//!
//! Layout (2-core machine): every server (the release `rolegate` binary,
//! nginx with one worker, HAProxy with one thread) runs pinned to CPU 0 and
//! only one is loaded at a time; this process (a minimal hyper upstream
//! answering a 1 KB customer profile) and `wrk -t1 -c32` run pinned to
//! CPU 1. Each server writes an access line per request: rolegate its JSON
//! access log to a file (stdout redirected), nginx `combined` to a file
//! with `buffer=64k flush=1s`, HAProxy `option httplog` to stdout
//! (redirected to a file; one write per line, as HAProxy does).
//!
//! Scenarios, each once per round, the order rotating from round to round:
//!
//! - `direct`: wrk straight to the upstream (the latency baseline);
//! - `nginx`: nginx `proxy_pass` with kept-alive upstream connections, no
//!   authentication (what "plain proxy" means in the targets);
//! - `rg-hs256`, `rg-rs256`, `rg-es256`: rolegate on a route that requires
//!   a capability, the token signed with that algorithm (the verified-token
//!   cache on, as by default);
//! - `ha-hs256`, `ha-rs256`, `ha-es256`: HAProxy checking the same token:
//!   `jwt_verify` of the signature for the token's `alg` (HS256, RS256,
//!   ES256 allowed), `iss`, `aud`, `exp`, and an ACL on the `roles` claim.
//!
//! Figures: medians over rounds with 95 % confidence intervals (sign-test
//! order statistics), each server's own CPU time per request
//! (`/proc/<pid>/stat`; nginx master + worker), wrk's p99 latency, the
//! per-round ratio to nginx and to HAProxy with the same algorithm, and
//! the p99 added over `direct` in the same round. `LOAD_ROUNDS` (default
//! 10), `LOAD_SECS` (default 2), `LOAD_ONLY=<name>,…` (ratios need their
//! reference scenario). Needs `wrk`, `taskset`, `nginx` and `haproxy`
//! (2.5 or later, for `jwt_verify`) on PATH; skipped without them. Run:
//! `cargo bench --bench load_proxy`.

#[path = "common/procs.rs"]
mod procs;
#[path = "common/stats.rs"]
mod stats;
#[path = "common/upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use procs::*;
use serde_json::json;
use stats::show;

/// A 1 KB customer profile (the same document as `load_mask`).
const PROFILE: &str = r#"{"customer":{"id":"c-1001","name":"Asha Rao","email":"asha.rao@example.com","phone":"+91 98200 11223","tier":"gold","address":{"street":"12 Marine Drive","city":"Mumbai","zip":"400002","country":"IN"},"date_of_birth":"1988-04-12","preferences":{"language":"en","channel":"whatsapp","marketing":false,"locale":"en-IN"},"tags":["vip","repeat","priority-support","early-adopter"],"orders":[{"id":"o-1","total":129.5,"currency":"INR","status":"delivered"},{"id":"o-2","total":54.0,"currency":"INR","status":"shipped"},{"id":"o-3","total":12.25,"currency":"INR","status":"pending"}],"notes":"prefers evening calls; asked about the annual plan renewal and a refund for order o-2","created_at":"2024-01-03T10:00:00Z","updated_at":"2026-11-20T08:30:00Z"},"conversations":[{"id":"cv-7","channel":"whatsapp","opened_at":"2026-11-20T08:00:00Z","status":"open"},{"id":"cv-6","channel":"email","opened_at":"2026-11-02T14:12:00Z","status":"closed","rating":5}],"meta":{"source":"crm","version":17,"segment":"retail-west","owner":"team-7"}}"#;

const PATH: &str = "/api/customers/c-1001";

#[derive(Clone, Copy, PartialEq)]
enum Server {
    Direct,
    Nginx,
    Rolegate,
    Haproxy,
}

struct Scenario {
    name: &'static str,
    server: Server,
    alg: Option<Algorithm>,
}

const SCENARIOS: [Scenario; 8] = [
    Scenario {
        name: "direct",
        server: Server::Direct,
        alg: None,
    },
    Scenario {
        name: "nginx",
        server: Server::Nginx,
        alg: None,
    },
    Scenario {
        name: "rg-hs256",
        server: Server::Rolegate,
        alg: Some(Algorithm::HS256),
    },
    Scenario {
        name: "rg-rs256",
        server: Server::Rolegate,
        alg: Some(Algorithm::RS256),
    },
    Scenario {
        name: "rg-es256",
        server: Server::Rolegate,
        alg: Some(Algorithm::ES256),
    },
    Scenario {
        name: "ha-hs256",
        server: Server::Haproxy,
        alg: Some(Algorithm::HS256),
    },
    Scenario {
        name: "ha-rs256",
        server: Server::Haproxy,
        alg: Some(Algorithm::RS256),
    },
    Scenario {
        name: "ha-es256",
        server: Server::Haproxy,
        alg: Some(Algorithm::ES256),
    },
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

fn main() {
    let rounds: usize = env_or("LOAD_ROUNDS", 10).max(2);
    let secs: u64 = env_or("LOAD_SECS", 2);
    let only = std::env::var("LOAD_ONLY").ok();
    let selected = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|x| x.trim() == name))
    };
    for tool in ["wrk", "taskset"] {
        if Command::new(tool).arg("--version").output().is_err() {
            println!("load_proxy: skipped ({tool} not installed)");
            return;
        }
    }
    for tool in [["nginx", "-v"], ["haproxy", "-v"]] {
        if Command::new(tool[0]).arg(tool[1]).output().is_err() {
            println!("load_proxy: skipped ({} not installed)", tool[0]);
            return;
        }
    }

    pin(std::process::id(), "1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let up = rt.block_on(upstream::json_upstream(PROFILE.as_bytes()));
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));

    let dir = std::env::temp_dir().join(format!("rolegate-load-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let rg_port = free_port();
    std::fs::write(
        dir.join("rolegate.yaml"),
        rolegate_config(&dir, rg_port, up),
    )
    .unwrap();
    let mut rolegate = Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_rolegate"), "serve", "-c"])
        .arg(dir.join("rolegate.yaml"))
        .stdout(std::fs::File::create(dir.join("rolegate-access.jsonl")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rolegate");

    let ng_port = free_port();
    std::fs::write(dir.join("nginx.conf"), nginx_config(&dir, ng_port, up)).unwrap();
    let mut nginx = Command::new("taskset")
        .args(["-c", "0", "nginx", "-c"])
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");

    let ha_port = free_port();
    std::fs::write(dir.join("haproxy.cfg"), haproxy_config(ha_port, up)).unwrap();
    let mut haproxy = Command::new("taskset")
        .args(["-c", "0", "haproxy", "-db", "-f"])
        .arg(dir.join("haproxy.cfg"))
        .stdout(std::fs::File::create(dir.join("haproxy-access.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("haproxy-errors.log")).unwrap())
        .spawn()
        .expect("start haproxy");

    let result = std::panic::catch_unwind(|| {
        for p in [rg_port, ng_port, ha_port] {
            wait_listening(p);
        }
        std::thread::sleep(Duration::from_millis(200));
        // Both verifying servers must refuse a token with a broken
        // signature and accept the real ones, or the comparison is void.
        for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
            let good = token(alg);
            let forged = format!("{}AAAA", &good[..good.len() - 4]);
            let viewer = token_for(alg, "viewer");
            for port in [rg_port, ha_port] {
                assert_eq!(status(port, &good), 200, "{alg:?} on {port}");
                assert_eq!(status(port, &forged), 401, "forged {alg:?} on {port}");
                assert_eq!(status(port, &viewer), 403, "viewer {alg:?} on {port}");
            }
        }
        let target = |s: &Scenario| -> (u16, Vec<u32>) {
            match s.server {
                Server::Direct => (up.port(), vec![]),
                Server::Nginx => {
                    let mut p = vec![nginx.id()];
                    p.extend(children(nginx.id()));
                    (ng_port, p)
                }
                Server::Rolegate => (rg_port, vec![rolegate.id()]),
                Server::Haproxy => (ha_port, vec![haproxy.id()]),
            }
        };
        measure(rounds, secs, &selected, &target);
    });
    stop(&mut rolegate);
    stop(&mut nginx);
    stop(&mut haproxy);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn measure(
    rounds: usize,
    secs: u64,
    selected: &dyn Fn(&str) -> bool,
    target: &dyn Fn(&Scenario) -> (u16, Vec<u32>),
) {
    let tick = 1.0 / ticks_per_sec();
    let tokens: Vec<Option<String>> = SCENARIOS.iter().map(|s| s.alg.map(token)).collect();
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
            let url = format!("http://127.0.0.1:{port}{PATH}");
            let token = tokens[i].as_deref();
            if round == 0 {
                wrk(&url, token, 1); // warm-up: caches, sessions, pools
            }
            let c0 = cpu_ticks_all(&pids);
            let t0 = Instant::now();
            let (rps, p99_us) = wrk(&url, token, secs);
            let wall = t0.elapsed().as_secs_f64();
            let cpu = (cpu_ticks_all(&pids) - c0) as f64 * tick;
            let cpu_us = if pids.is_empty() {
                f64::NAN
            } else {
                cpu / (rps * wall) * 1e6
            };
            println!(
                "round {round} {:>9}: {rps:>8.0} req/s  p99 {:>7.0} µs  server CPU {cpu_us:>6.1} µs/request ({:.0} % of a core)",
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

    let idx = |name: &str| SCENARIOS.iter().position(|s| s.name == name).unwrap();
    // Per-round ratio of scenario `a` to scenario `b` under `f`.
    let ratio = |a: usize, b: &str, f: fn(&Slice) -> f64| -> Option<Vec<f64>> {
        let b = idx(b);
        if results[a].is_empty() || results[b].is_empty() {
            return None;
        }
        Some(
            results[a]
                .iter()
                .zip(&results[b])
                .map(|(x, y)| f(x) / f(y))
                .collect(),
        )
    };
    let direct = idx("direct");
    println!("\n{rounds} rounds of {secs} s, wrk -t1 -c32; medians [95 % CI]");
    println!(
        "| scenario | req/s | × nginx | × HAProxy (same alg) | server CPU µs/req | CPU ÷ nginx's | p99 µs | p99 added over direct, µs |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &i in &picked {
        let s = &SCENARIOS[i];
        let col = |f: fn(&Slice) -> f64| results[i].iter().map(f).collect::<Vec<f64>>();
        let fmt2 =
            |v: Option<Vec<f64>>| v.map_or("–".into(), |v| show(&v, |x| format!("{x:.2}")));
        let vs_ha = match (s.server, s.alg) {
            (Server::Rolegate, Some(a)) => {
                let name = format!("ha-{}", format!("{a:?}").to_lowercase());
                fmt2(ratio(i, &name, |x| x.rps))
            }
            _ => "–".into(),
        };
        let added = if i != direct && !results[direct].is_empty() {
            let d: Vec<f64> = results[i]
                .iter()
                .zip(&results[direct])
                .map(|(x, y)| x.p99_us - y.p99_us)
                .collect();
            show(&d, |x| format!("{x:.0}"))
        } else {
            "–".into()
        };
        let cpu = if s.server == Server::Direct {
            "–".into()
        } else {
            show(&col(|x| x.cpu_us), |x| format!("{x:.1}"))
        };
        let cpu_vs = if matches!(s.server, Server::Direct | Server::Nginx) {
            "–".into()
        } else {
            fmt2(ratio(i, "nginx", |x| x.cpu_us))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            s.name,
            show(&col(|x| x.rps), |x| format!("{x:.0}")),
            if s.server == Server::Nginx {
                "1".into()
            } else {
                fmt2(ratio(i, "nginx", |x| x.rps))
            },
            vs_ha,
            cpu,
            cpu_vs,
            show(&col(|x| x.p99_us), |x| format!("{x:.0}")),
            added,
        );
    }
}

/// A token every server accepts for the profile route: issuer `load-<alg>`
/// (rolegate has one issuer per key), audience `a`, role `agent`.
fn token(alg: Algorithm) -> String {
    token_for(alg, "agent")
}

/// [`token`] with another role.
fn token_for(alg: Algorithm, role: &str) -> String {
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
        "iss": iss, "aud": "a", "sub": format!("u-{iss}"), "sid": format!("s-{iss}"),
        "exp": 4_000_000_000u64, "roles": [role],
    });
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
}

fn hmac_secret() -> String {
    std::fs::read_to_string(keys().join("hmac.secret"))
        .unwrap()
        .trim()
        .to_string()
}

/// Runs wrk (on CPU 1) for `secs` seconds: requests/s and p99 latency in
/// µs. Any non-2xx answer or socket error fails the bench (a refusal is
/// cheap and would flatter the figures).
fn wrk(url: &str, token: Option<&str>, secs: u64) -> (f64, f64) {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", "wrk", "-t1", "-c32", "--latency"])
        .arg(format!("-d{secs}s"));
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
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

/// The status of one `GET PATH` with `token` on a fresh connection.
fn status(port: u16, token: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {PATH} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
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

fn rolegate_config(dir: &Path, port: u16, up: SocketAddr) -> String {
    let k = keys();
    format!(
        r#"listen: {{ addr: "127.0.0.1:{port}" }}
identity:
  issuers:
    - {{ iss: load-hs, audiences: [a], algorithms: [HS256], keys: {{ hmac_secret_file: "{hs}" }} }}
    - {{ iss: load-rs, audiences: [a], algorithms: [RS256], keys: {{ pem: [{{ file: "{rs}" }}] }} }}
    - {{ iss: load-es, audiences: [a], algorithms: [ES256], keys: {{ pem: [{{ file: "{es}" }}] }} }}
upstreams:
  app: {{ url: "http://{up}" }}
sessions:
  store: embedded
  state_dir: "{state}"
reload: {{ watch: false }}
roles:
  agent: {{ grants: [customer.profile.view] }}
routes:
  - {{ name: profile, match: {{ methods: [GET], path: "/api/customers/{{id}}" }}, require: customer.profile.view }}
"#,
        hs = k.join("hmac.secret").display(),
        rs = k.join("rsa.pub").display(),
        es = k.join("ec256.pub").display(),
        state = dir.join("state").display(),
    )
}

/// nginx as a plain reverse proxy: one worker (the servers are pinned to
/// one core), client and upstream keep-alive, an access line per request
/// (buffered).
fn nginx_config(dir: &Path, port: u16, up: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes 1;
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
  upstream app {{ server {up}; keepalive 64; }}
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
fn haproxy_config(port: u16, up: SocketAddr) -> String {
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
  server s1 {up}
"#,
        secret = hmac_secret(),
        rs = k.join("rsa.pub").display(),
        es = k.join("ec256.pub").display(),
    )
}
