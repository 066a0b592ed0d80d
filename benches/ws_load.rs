//! Load: websockets through the gateway. Frames relayed per second, memory
//! per open idle websocket, and the cost of the session-end close with many
//! sockets open.
//!
//! Layout (2-core machine): the release `rolegate` binary (`serve`, a plain
//! and a TLS listener, an admin listener, the embedded session store, one
//! websocket route that needs a token) pinned to CPU 0, so that its RSS and
//! CPU time can be read from `/proc/<pid>`; on CPU 1 this process (the
//! websocket clients) and a tokio-tungstenite echo upstream, which is this
//! same bench binary started again as a separate process (so that neither
//! process needs more than one file descriptor per socket).
//!
//! 1. **Frames**: `WS_CLIENTS` (default 32) authenticated websockets per
//!    listener, each sending a 64-byte text message and awaiting its echo
//!    in a loop for `WS_SECS` (default 2) seconds; plain and TLS alternate
//!    for `WS_ROUNDS` (default 10) rounds. One echoed message is two frames
//!    relayed by the gateway (client → upstream, upstream → client).
//! 2. **Memory** (a fresh gateway per listener kind): the gateway's
//!    `VmRSS` after a warm-up, then with `WS_SOCKETS` idle websockets open
//!    (default 10,000, or as many as the open-file limit allows: the
//!    gateway holds two descriptors per socket; the harness raises its soft
//!    limit to the hard one with `prlimit`). Every socket has its own
//!    session (its own token), so the figure includes the session record.
//! 3. **Close cost**: with 100 and then with `WS_SOCKETS` sockets open,
//!    `WS_REVOKES` (default 15) times: open one more socket, revoke its
//!    session through the admin API, time from sending the revoke to the
//!    client receiving its 1008 close; and the gateway's CPU time while
//!    idle for `WS_IDLE_SECS` (default 10) seconds (`/proc/<pid>/task/*/
//!    schedstat`, nanoseconds).
//!
//! Needs `taskset` and `prlimit` (util-linux). Run: `cargo bench --bench
//! ws_load` (`WS_SKIP_FRAMES=1` / `WS_SKIP_MEMORY=1` to run one part;
//! `WS_GATEWAY_WRAP="valgrind --tool=massif"` to profile the gateway's heap).

#[path = "common/certs.rs"]
mod certs;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/stats.rs"]
mod stats;

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use procs::*;
use rustls::pki_types::ServerName;
use serde_json::json;
use stats::{median, show};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const ROLE: &str = "ROLEGATE_WS_LOAD_ROLE";
const ADMIN_TOKEN: &str = "admin-token-for-the-ws-load-bench";
const PAYLOAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Ws = WebSocketStream<Box<dyn Io>>;

/// Small buffers on the bench's side (tungstenite's default read buffer is
/// 128 KiB, allocated up front): 10,000 clients stay cheap.
fn small() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("upstream") {
        return upstream_main();
    }
    for tool in ["taskset", "prlimit"] {
        if Command::new(tool).arg("--version").output().is_err() {
            println!("ws_load: skipped ({tool} not installed)");
            return;
        }
    }
    let nofile = raise_nofile();
    let fit = ((nofile.saturating_sub(200)) / 2 / 100 * 100) as usize;
    let mut sockets: usize = env_or("WS_SOCKETS", 10_000);
    if sockets > fit {
        println!(
            "ws_load: open-file limit {nofile} (hard) fits {fit} sockets through the gateway (2 descriptors each), not {sockets}: measuring {fit}"
        );
        sockets = fit;
    }
    pin(std::process::id(), "1");

    let dir = std::env::temp_dir().join(format!("rolegate-ws-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = certs::server_cert(&dir);
    std::fs::write(dir.join("admin.token"), ADMIN_TOKEN).unwrap();
    let secret = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/hmac.secret");
    let hmac = std::fs::read_to_string(&secret).unwrap();
    let key_enc = EncodingKey::from_secret(hmac.trim().as_bytes());

    let mut upstream = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, "upstream")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the echo upstream");
    let mut line = String::new();
    std::io::BufReader::new(upstream.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let up: SocketAddr = line.trim().parse().expect("upstream address");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let env = Env {
        dir: dir.clone(),
        cert,
        key,
        secret,
        up,
        enc: key_enc,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if std::env::var("WS_SKIP_FRAMES").is_err() {
            rt.block_on(frames(&env));
        }
        if std::env::var("WS_SKIP_MEMORY").is_err() {
            let mut rows = Vec::new();
            for tls in [false, true] {
                rows.push(rt.block_on(memory(&env, tls, sockets)));
            }
            println!(
                "\n| listener | sockets | RSS before | RSS with sockets open | per socket | revoke → 1008, 100 open | revoke → 1008, {sockets} open | idle CPU, 100 open | idle CPU, {sockets} open |"
            );
            println!("|---|---|---|---|---|---|---|---|---|");
            for r in rows {
                println!("{r}");
            }
        }
    }));
    drop(upstream.stdin.take());
    stop(&mut upstream);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

struct Env {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    secret: PathBuf,
    up: SocketAddr,
    enc: EncodingKey,
}

impl Env {
    fn token(&self, sid: &str) -> String {
        let claims = json!({ "iss": "load", "aud": "a", "sub": format!("u-{sid}"), "sid": sid, "exp": 4_000_000_000u64, "roles": ["viewer"] });
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc).unwrap()
    }
}

/// A running gateway and its ports.
struct Gateway {
    child: Child,
    plain: u16,
    tls: u16,
    admin: u16,
}

impl Gateway {
    fn start(env: &Env, name: &str) -> Gateway {
        let (plain, tls, admin) = (free_port(), free_port(), free_port());
        let state = env.dir.join(format!("state-{name}"));
        let cfg = format!(
            r#"listeners:
  - {{ addr: "127.0.0.1:{plain}" }}
  - {{ addr: "127.0.0.1:{tls}", tls: {{ cert: "{cert}", key: "{key}" }} }}
identity:
  issuers:
    - {{ iss: load, audiences: [a], algorithms: [HS256], keys: {{ hmac_secret_file: "{secret}" }} }}
upstreams:
  app: {{ url: "http://{up}" }}
sessions:
  store: embedded
  state_dir: "{state}"
  idle_timeout: 1h
admin: {{ addr: "127.0.0.1:{admin}", token_file: "{token}" }}
roles:
  viewer: {{ grants: [chat.view] }}
routes:
  - {{ name: live, match: {{ methods: [GET], path: /ws/echo }}, require: chat.view, websocket: true }}
"#,
            cert = env.cert.display(),
            key = env.key.display(),
            secret = env.secret.display(),
            up = env.up,
            state = state.display(),
            token = env.dir.join("admin.token").display(),
        );
        let path = env.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, cfg).unwrap();
        // WS_GATEWAY_WRAP: a command to run the gateway under (e.g.
        // `valgrind --tool=massif`, to see where its memory goes).
        let wrap = std::env::var("WS_GATEWAY_WRAP").unwrap_or_default();
        let child = Command::new("taskset")
            .args(["-c", "0"])
            .args(wrap.split_whitespace())
            .args([env!("CARGO_BIN_EXE_rolegate"), "serve", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the gateway");
        for p in [plain, tls, admin] {
            wait_listening(p);
        }
        Gateway {
            child,
            plain,
            tls,
            admin,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// CPU time of every thread of `pid` so far, in ns (first field of each
/// `/proc/<pid>/task/<tid>/schedstat`).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| {
            let s = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
            s.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

async fn open(port: u16, tls: bool, token: &str) -> Ws {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let io: Box<dyn Io> = if tls {
        let cfg = certs::client_config(&[b"http/1.1"]);
        let name = ServerName::try_from("bench.test").unwrap();
        Box::new(
            tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .unwrap(),
        )
    } else {
        Box::new(tcp)
    };
    let mut req = "ws://bench.test/ws/echo".into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::client_async_with_config(req, io, Some(small())).await {
        Ok((ws, _)) => ws,
        Err(e) => panic!("websocket refused: {e:?}"),
    }
}

/// Opens `n` sockets, 128 at a time, sessions `{prefix}-{i}`.
async fn open_many(env: &Env, port: u16, tls: bool, prefix: &str, n: usize) -> Vec<Ws> {
    futures_util::stream::iter(0..n)
        .map(|i| {
            let t = env.token(&format!("{prefix}-{i}"));
            async move { open(port, tls, &t).await }
        })
        .buffer_unordered(128)
        .collect()
        .await
}

// ---------------------------------------------------------------- frames

async fn frames(env: &Env) {
    let rounds: usize = env_or("WS_ROUNDS", 10).max(2);
    let secs: u64 = env_or("WS_SECS", 2);
    let clients: usize = env_or("WS_CLIENTS", 32);
    let gw = Gateway::start(env, "frames");
    let mut pools = vec![
        open_many(env, gw.plain, false, "fp", clients).await,
        open_many(env, gw.tls, true, "ft", clients).await,
    ];
    let names = ["ws (plain)", "wss (TLS)"];
    let mut slices: [Vec<(f64, f64, f64)>; 2] = Default::default();
    for round in 0..rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            if round == 0 {
                pools[k] = echo_loop(std::mem::take(&mut pools[k]), 1).await.1;
            }
            let c0 = cpu_ns(gw.pid());
            let t0 = Instant::now();
            let (n, pool) = echo_loop(std::mem::take(&mut pools[k]), secs).await;
            pools[k] = pool;
            let wall = t0.elapsed().as_secs_f64();
            let cpu = (cpu_ns(gw.pid()) - c0) as f64 / 1e9;
            let msgs = n as f64 / wall;
            let us = cpu / (2.0 * n as f64) * 1e6;
            println!(
                "round {round} {:>10}: {msgs:>8.0} messages/s echoed = {:>8.0} frames/s relayed; gateway {us:.2} µs CPU/frame ({:.0} % of a core)",
                names[k],
                2.0 * msgs,
                cpu / wall * 100.0
            );
            slices[k].push((2.0 * msgs, us, cpu / wall * 100.0));
        }
    }
    println!(
        "\n{clients} clients per listener, 64-byte text messages, {rounds} rounds of {secs} s; medians [95 % CI]"
    );
    println!("| listener | frames relayed/s | gateway CPU µs/frame | gateway CPU % |");
    println!("|---|---|---|---|");
    for k in 0..2 {
        let col = |f: fn(&(f64, f64, f64)) -> f64| slices[k].iter().map(f).collect::<Vec<_>>();
        println!(
            "| {} | {} | {} | {:.0} |",
            names[k],
            show(&col(|s| s.0), |x| format!("{x:.0}")),
            show(&col(|s| s.1), |x| format!("{x:.2}")),
            median(col(|s| s.2))
        );
    }
    drop(pools);
    let mut gw = gw;
    stop(&mut gw.child);
}

/// Every socket of `pool` sends a message and awaits its echo, in a loop,
/// for `secs` seconds; returns the number echoed and the sockets.
async fn echo_loop(pool: Vec<Ws>, secs: u64) -> (u64, Vec<Ws>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = pool
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    ws.send(Message::text(PAYLOAD)).await.unwrap();
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.as_str() == PAYLOAD => n += 1,
                        other => panic!("unexpected echo: {other:?}"),
                    }
                }
                (n, ws)
            })
        })
        .collect();
    let mut total = 0;
    let mut back = Vec::new();
    for t in tasks {
        let (n, ws) = t.await.unwrap();
        total += n;
        back.push(ws);
    }
    (total, back)
}

// ------------------------------------------------------ memory and close

async fn memory(env: &Env, tls: bool, n: usize) -> String {
    let name = if tls { "mem-tls" } else { "mem-plain" };
    let gw = Gateway::start(env, name);
    let port = if tls { gw.tls } else { gw.plain };
    // Warm-up: the runtime's threads, the allocator, the route.
    let mut warm = open_many(env, port, tls, &format!("{name}-w"), 10).await;
    for ws in &mut warm {
        ws.send(Message::text(PAYLOAD)).await.unwrap();
        ws.next().await.unwrap().unwrap();
        ws.close(None).await.unwrap();
    }
    drop(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = status_kb(gw.pid(), "VmRSS");

    let few = open_many(env, port, tls, &format!("{name}-a"), 100).await;
    let revoke_few = revokes(env, &gw, port, tls, &format!("{name}-r100")).await;
    let idle_few = idle_cpu(gw.pid()).await;
    let rest = open_many(env, port, tls, &format!("{name}-b"), n - 100).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = status_kb(gw.pid(), "VmRSS");
    let hwm = status_kb(gw.pid(), "VmHWM");
    let revoke_many = revokes(env, &gw, port, tls, &format!("{name}-rn")).await;
    let idle_many = idle_cpu(gw.pid()).await;
    let per = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / n as f64;
    println!(
        "{name}: RSS {rss0} kB → {rss1} kB with {n} idle websockets (VmHWM {hwm} kB): {per:.0} bytes/socket; \
         10,000 sockets ≈ {:.0} MiB",
        per * 10_000.0 / 1048576.0
    );
    let ms = |v: &[f64]| show(v, |x| format!("{x:.2}"));
    println!(
        "{name}: revoke → 1008 close (ms): 100 open {}, {n} open {}",
        ms(&revoke_few),
        ms(&revoke_many)
    );
    println!(
        "{name}: gateway CPU while idle: 100 open {idle_few:.3} ms/s, {n} open {idle_many:.3} ms/s"
    );
    drop(few);
    drop(rest);
    let mut gw = gw;
    stop(&mut gw.child);
    format!(
        "| {} | {n} | {:.1} MiB | {:.1} MiB | **{per:.0} B** | {} ms | {} ms | {idle_few:.2} ms/s | {idle_many:.2} ms/s |",
        if tls { "TLS" } else { "plain" },
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        ms(&revoke_few),
        ms(&revoke_many)
    )
}

/// `WS_REVOKES` times: opens a socket, revokes its session through the
/// admin API and times until the client has its 1008 close.
async fn revokes(env: &Env, gw: &Gateway, port: u16, tls: bool, prefix: &str) -> Vec<f64> {
    let n: usize = env_or("WS_REVOKES", 15);
    let mut out = Vec::new();
    for i in 0..n {
        let sid = format!("{prefix}-{i}");
        let mut ws = open(port, tls, &env.token(&sid)).await;
        let reader = tokio::spawn(async move {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(Some(f)))) => {
                        return (Instant::now(), u16::from(f.code), f.reason.to_string());
                    }
                    Some(Ok(_)) => {}
                    other => panic!("no close frame: {other:?}"),
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t0 = Instant::now();
        admin_revoke(gw.admin, &sid).await;
        let (at, code, reason) = reader.await.unwrap();
        assert_eq!((code, reason.as_str()), (1008, "session revoked"));
        out.push(at.duration_since(t0).as_secs_f64() * 1e3);
    }
    out
}

async fn admin_revoke(port: u16, sid: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = format!(
        "POST /sessions/{sid}/revoke HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "revoke: {}",
        String::from_utf8_lossy(&buf)
    );
}

/// The gateway's CPU time per second of wall time while nothing is sent.
async fn idle_cpu(pid: u32) -> f64 {
    let secs: u64 = env_or("WS_IDLE_SECS", 10);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c0 = cpu_ns(pid);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    (cpu_ns(pid) - c0) as f64 / 1e6 / t0.elapsed().as_secs_f64()
}

// -------------------------------------------------------------- upstream

/// The echo upstream (this binary started again): prints its address, then
/// echoes text and binary messages until its stdin closes.
fn upstream_main() {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", l.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        loop {
            let Ok((s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async_with_config(s, Some(small())).await
                else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                while let Some(Ok(m)) = rx.next().await {
                    if m.is_close() {
                        let _ = tx.close().await;
                        return;
                    }
                    let echo = m.is_text() || m.is_binary();
                    if echo && tx.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}
