//! Load: the TLS edge against nginx with TLS, on the same machine, in the
//! same run, interleaved.
//!
//! Layout (2-core machine): the release `rolegate` binary (`serve`, a TLS
//! listener, a public route) and nginx (one worker, TLS, keep-alive,
//! `proxy_pass` to the same upstream over kept-alive connections, access log
//! buffered) both run pinned to CPU 0; only one of them is loaded at a
//! time. This process (a minimal hyper upstream answering 11 bytes of JSON,
//! and the handshake client) and `wrk` / `h2load` run pinned to CPU 1.
//! Both servers use the same rcgen ECDSA P-256 certificate, TLS 1.2 and
//! 1.3; clients negotiate TLS 1.3 with X25519.
//!
//! Three measurements, each for both servers in every round, the order of
//! the two servers alternating between rounds (A B, B A, …):
//!
//! - `handshake`: new connection per request: `LOAD_CONC` (default 16)
//!   tokio-rustls clients loop for `LOAD_SECS` seconds doing TCP connect,
//!   a full TLS 1.3 handshake (no session resumption), one
//!   `GET /public` with `Connection: close`, and reading the answer;
//! - `keepalive`: `wrk -t1 -c32` over https on the same route (HTTP/1.1);
//! - `h2`: `h2load -c32 -m10` over https (ALPN h2), when `h2load` is
//!   installed.
//!
//! Figures: the median over rounds of each server's rate, with 95 %
//! confidence intervals (sign-test order statistics, as `load_mask`), the
//! median of the per-round ratio rolegate / nginx, and each server's own
//! CPU time per request (`/proc/<pid>/stat`, nginx master + worker), which
//! says what a request costs the server even when the client side is what
//! limits the rate. `LOAD_ROUNDS` (default 10), `LOAD_SECS` (default 2),
//! `LOAD_ONLY=handshake,keepalive,h2` selects measurements.
//!
//! Needs `nginx`, `wrk` and `taskset` on PATH (`h2load` optional). Run:
//! `cargo bench --bench load_tls`.

#[path = "common/certs.rs"]
mod certs;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/stats.rs"]
mod stats;
#[path = "common/upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use procs::*;
use rustls::pki_types::ServerName;
use stats::{median, show};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &[u8] = br#"{"ok":true}"#;
const SERVERS: [&str; 2] = ["rolegate", "nginx"];
const KINDS: [&str; 3] = ["handshake", "keepalive", "h2"];

fn main() {
    let rounds: usize = env_or("LOAD_ROUNDS", 10).max(2);
    let secs: u64 = env_or("LOAD_SECS", 2);
    let conc: usize = env_or("LOAD_CONC", 16);
    let only = std::env::var("LOAD_ONLY").ok();
    for tool in ["wrk", "taskset"] {
        if Command::new(tool).arg("--version").output().is_err() {
            println!("load_tls: skipped ({tool} not installed)");
            return;
        }
    }
    if Command::new("nginx").arg("-v").output().is_err() {
        println!("load_tls: skipped (nginx not installed)");
        return;
    }
    let has_h2load = Command::new("h2load").arg("--version").output().is_ok();
    let selected = |k: &str| {
        (k != "h2" || has_h2load)
            && only
                .as_deref()
                .is_none_or(|o| o.split(',').any(|x| x.trim() == k))
    };
    if !has_h2load {
        println!("load_tls: h2load not installed, HTTP/2 skipped");
    }

    pin(std::process::id(), "1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let up = rt.block_on(upstream::json_upstream(BODY));
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));

    let dir = std::env::temp_dir().join(format!("rolegate-load-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = certs::server_cert(&dir);

    let gw_port = free_port();
    let gw_cfg = dir.join("rolegate.yaml");
    std::fs::write(&gw_cfg, gateway_config(&dir, gw_port, up, &cert, &key)).unwrap();
    let mut gateway = Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_rolegate"), "serve", "-c"])
        .arg(&gw_cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway");

    let ng_port = free_port();
    let ng_cfg = dir.join("nginx.conf");
    std::fs::write(&ng_cfg, nginx_config(&dir, ng_port, up, &cert, &key)).unwrap();
    let mut nginx = Command::new("taskset")
        .args(["-c", "0", "nginx", "-c"])
        .arg(&ng_cfg)
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let result = std::panic::catch_unwind(|| {
        wait_listening(gw_port);
        wait_listening(ng_port);
        std::thread::sleep(Duration::from_millis(200));
        let ports = [gw_port, ng_port];
        let pids = |i: usize| -> Vec<u32> {
            match i {
                0 => vec![gateway.id()],
                _ => {
                    let mut p = vec![nginx.id()];
                    p.extend(children(nginx.id()));
                    p
                }
            }
        };
        measure(rounds, secs, conc, &ports, &pids, &selected);
    });
    stop(&mut gateway);
    stop(&mut nginx);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// One slice: (requests per second, server CPU µs per request, server CPU %).
type Slice = (f64, f64, f64);

fn measure(
    rounds: usize,
    secs: u64,
    conc: usize,
    ports: &[u16; 2],
    pids: &dyn Fn(usize) -> Vec<u32>,
    selected: &dyn Fn(&str) -> bool,
) {
    let tick = 1.0 / ticks_per_sec();
    // results[kind][server] = slices
    let mut results: Vec<[Vec<Slice>; 2]> = vec![Default::default(); KINDS.len()];
    for round in 0..rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for (k, kind) in KINDS.iter().enumerate() {
            if !selected(kind) {
                continue;
            }
            for &s in &order {
                let port = ports[s];
                if round == 0 {
                    run(kind, port, conc, 1); // warm-up
                }
                let p = pids(s);
                let c0 = cpu_ticks_all(&p);
                let t0 = Instant::now();
                let rps = run(kind, port, conc, secs);
                let wall = t0.elapsed().as_secs_f64();
                let cpu = (cpu_ticks_all(&p) - c0) as f64 * tick;
                let us = cpu / (rps * wall) * 1e6;
                println!(
                    "round {round} {kind:>9} {:>8}: {rps:>8.0} req/s  server CPU {us:>6.1} µs/request ({:.0} % of a core)",
                    SERVERS[s],
                    cpu / wall * 100.0
                );
                results[k][s].push((rps, us, cpu / wall * 100.0));
            }
        }
    }
    println!("\n{rounds} rounds of {secs} s; medians [95 % CI]");
    println!(
        "| measurement | rolegate req/s | nginx req/s | rolegate / nginx | rolegate CPU µs/req | nginx CPU µs/req | server CPU % (rg / nginx) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (k, kind) in KINDS.iter().enumerate() {
        if !selected(kind) {
            continue;
        }
        let [rg, ng] = &results[k];
        let col = |v: &[Slice], f: fn(&Slice) -> f64| v.iter().map(f).collect::<Vec<f64>>();
        let ratio: Vec<f64> = rg.iter().zip(ng).map(|(a, b)| a.0 / b.0).collect();
        println!(
            "| {kind} | {} | {} | {} | {} | {} | {:.0} / {:.0} |",
            show(&col(rg, |s| s.0), |x| format!("{x:.0}")),
            show(&col(ng, |s| s.0), |x| format!("{x:.0}")),
            show(&ratio, |x| format!("{x:.2}")),
            show(&col(rg, |s| s.1), |x| format!("{x:.1}")),
            show(&col(ng, |s| s.1), |x| format!("{x:.1}")),
            median(col(rg, |s| s.2)),
            median(col(ng, |s| s.2)),
        );
    }
}

/// Runs one measurement against `port` for `secs` seconds; requests/s.
fn run(kind: &str, port: u16, conc: usize, secs: u64) -> f64 {
    match kind {
        "handshake" => handshakes(port, conc, secs),
        "keepalive" => wrk(port, secs),
        _ => h2load(port, secs),
    }
}

/// `conc` clients each doing connect + full handshake + one request +
/// close in a loop for `secs` seconds, on a current-thread runtime (this
/// process is on CPU 1). Any failure fails the bench.
fn handshakes(port: u16, conc: usize, secs: u64) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = certs::client_config(&[b"http/1.1"]);
    let done = Arc::new(AtomicU64::new(0));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..conc {
            let (cfg, done) = (cfg.clone(), done.clone());
            set.spawn(async move {
                while Instant::now() < deadline {
                    if let Err(e) = one_connection(addr, cfg.clone()).await {
                        panic!("handshake client: {e}");
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
    });
    done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

async fn one_connection(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("bench.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await?;
    tls.write_all(b"GET /public HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::with_capacity(512);
    match tls.read_to_end(&mut buf).await {
        Ok(_) => {}
        // A server that closes without close_notify after the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e),
    }
    if !buf.starts_with(b"HTTP/1.1 200") || !buf.ends_with(BODY) {
        return Err(std::io::Error::other(format!(
            "unexpected answer: {:?}",
            String::from_utf8_lossy(&buf)
        )));
    }
    Ok(())
}

/// wrk over https (HTTP/1.1 keep-alive), 1 thread, 32 connections, on CPU 1.
fn wrk(port: u16, secs: u64) -> f64 {
    let out = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1", "-c32"])
        .arg(format!("-d{secs}s"))
        .arg(format!("https://127.0.0.1:{port}/public"))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "wrk saw failures:\n{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"))
}

/// h2load over https (ALPN h2), 32 connections, 10 streams each, on CPU 1.
fn h2load(port: u16, secs: u64) -> f64 {
    let out = Command::new("taskset")
        .args(["-c", "1", "h2load", "-t1", "-c32", "-m10", "-D"])
        .arg(secs.to_string())
        .arg(format!("https://127.0.0.1:{port}/public"))
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    let ok = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .is_some_and(|l| l.contains(" 0 failed, 0 errored"));
    assert!(ok && text.contains("h2"), "h2load saw failures:\n{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.trim_end_matches(" req/s").parse().ok())
        .unwrap_or_else(|| panic!("no req/s in h2load output:\n{text}"))
}

fn gateway_config(dir: &Path, port: u16, up: SocketAddr, cert: &Path, key: &Path) -> String {
    let secret = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys/hmac.secret");
    format!(
        r#"listen: {{ addr: "127.0.0.1:{port}", tls: {{ cert: "{cert}", key: "{key}" }} }}
identity:
  issuers:
    - {{ iss: load, audiences: [a], algorithms: [HS256], keys: {{ hmac_secret_file: "{secret}" }} }}
upstreams:
  app: {{ url: "http://{up}" }}
sessions:
  store: embedded
  state_dir: "{state}"
routes:
  - {{ name: public, match: {{ methods: [GET], path: /public }}, public: true }}
"#,
        cert = cert.display(),
        key = key.display(),
        secret = secret.display(),
        state = dir.join("state").display(),
    )
}

/// nginx as a TLS reverse proxy doing what the gateway does for a public
/// route: one worker (the gateway is pinned to one core too), TLS 1.2/1.3,
/// HTTP/1.1 and HTTP/2 (ALPN), client keep-alive, kept-alive upstream
/// connections, an access line per request (buffered).
fn nginx_config(dir: &Path, port: u16, up: SocketAddr, cert: &Path, key: &Path) -> String {
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
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"#,
        cert = cert.display(),
        key = key.display(),
    )
}
