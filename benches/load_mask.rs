//! Load: what masking a ~1 KB customer profile costs end to end, measured
//! on the release gateway binary with the gateway alone on one core.
//!
//! Layout (2-core machine): the `rolegate` binary runs pinned to CPU 0; this
//! process (a minimal hyper upstream) and `wrk` (the load generator, 32
//! keep-alive connections) run pinned to CPU 1. The gateway is the
//! bottleneck, so its throughput and its own CPU time per request (read
//! from `/proc/<pid>/stat`, user + system) say what each scenario costs:
//!
//! - `plain`: the profile on a route without a mask policy (its path and
//!   name as long as the masked route's, so only the mask differs);
//! - `masked`: the same route with the `pii` mask, read by a principal
//!   without `unmask_with` (the body is parsed and rewritten);
//! - `unmasked`: the masked route read by a principal holding
//!   `unmask_with` (forwarded as is, plus the audit record).
//!
//! Scenarios alternate for `LOAD_ROUNDS` rounds (default 20) of `LOAD_SECS`
//! seconds (default 2) each (`LOAD_ONLY=<name>[,<name>…]` runs only those
//! scenarios, e.g. one to profile the gateway, or `plain,masked` for more
//! rounds in the same time; the summary needs `plain`). The host's speed drifts over minutes, so each
//! scenario's slice is compared with the mean of the two `plain` slices
//! around it (the one before it in its round and the first of the next
//! round), which cancels a linear drift; the median of these ratios is
//! printed with a 95 % confidence interval (distribution-free: order
//! statistics of the binomial, so no assumption on the noise's shape).
//! Needs `wrk` and `taskset` on PATH. Run: `cargo bench --bench load_mask`.

#[path = "common/fixtures.rs"]
mod fixtures;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/stats.rs"]
mod stats;
#[path = "common/upstream.rs"]
mod upstream;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use fixtures::{PII_MASK_YAML, PROFILE};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use procs::{env_or, free_port, pin, ticks_per_sec, wait_listening};
use serde_json::json;
use stats::{median, median_ci};
use upstream::json_upstream;

struct Scenario {
    name: &'static str,
    path: &'static str,
    roles: &'static [&'static str],
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "plain",
        path: "/plain-pii/c-1001",
        roles: &["agent"],
    },
    Scenario {
        name: "masked",
        path: "/customers/c-1001",
        roles: &["agent"],
    },
    Scenario {
        name: "unmasked",
        path: "/customers/c-1001",
        roles: &["agent", "pii"],
    },
];

fn main() {
    let rounds: usize = env_or("LOAD_ROUNDS", 20).max(2);
    // LOAD_ONLY=masked runs one scenario (e.g. to profile the gateway).
    let only = std::env::var("LOAD_ONLY").ok();
    let selected = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|x| x.trim() == name))
    };
    let secs: u64 = env_or("LOAD_SECS", 2);
    for tool in ["wrk", "taskset"] {
        if Command::new(tool).arg("--version").output().is_err() {
            println!("load_mask: skipped ({tool} not installed)");
            return;
        }
    }
    // This process (the upstream) shares CPU 1 with wrk.
    pin(std::process::id(), "1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let upstream = rt.block_on(json_upstream(PROFILE.as_bytes()));
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));

    let dir = std::env::temp_dir().join(format!("rolegate-load-mask-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let secret = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/hmac.secret");
    let port = free_port();
    let config = dir.join("load.yaml");
    std::fs::write(&config, config_text(&secret, &dir, port, upstream)).unwrap();
    let mut gateway = Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_rolegate"), "serve", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway");
    wait_listening(port);
    let key = EncodingKey::from_secret(std::fs::read_to_string(&secret).unwrap().trim().as_bytes());

    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); SCENARIOS.len()];
    for round in 0..rounds {
        for (i, s) in SCENARIOS.iter().enumerate() {
            if !selected(s.name) {
                continue;
            }
            let claims = json!({ "iss": "load", "aud": "a", "sub": format!("u-{}", s.name), "sid": format!("s-{}", s.name), "exp": 4_000_000_000u64, "roles": s.roles });
            let token =
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
            let url = format!("http://127.0.0.1:{port}{}", s.path);
            // Warm-up (first round): token cache, session, allocator.
            if round == 0 {
                wrk(&url, &token, 1);
            }
            let (user0, sys0) = cpu_ticks(&gateway);
            let t0 = Instant::now();
            let rps = wrk(&url, &token, secs);
            let wall = t0.elapsed().as_secs_f64();
            let (user1, sys1) = cpu_ticks(&gateway);
            let tick = 1.0 / ticks_per_sec();
            let (user, sys) = ((user1 - user0) as f64 * tick, (sys1 - sys0) as f64 * tick);
            let cpu = user + sys;
            let requests = rps * secs as f64;
            let us_per_req = cpu / requests * 1e6;
            println!(
                "round {round} {:>9}: {rps:>8.0} req/s  gateway CPU {:>5.1} µs/request (user {:.1}, system {:.1}; {:.0} % of a core)",
                s.name,
                us_per_req,
                user / requests * 1e6,
                sys / requests * 1e6,
                cpu / wall * 100.0
            );
            results[i].push((rps, us_per_req));
        }
    }
    let _ = gateway.kill();
    let _ = gateway.wait();
    let _ = std::fs::remove_dir_all(&dir);

    if !selected("plain") {
        return;
    }
    println!(
        "\n{rounds} rounds of {secs} s; change to plain: median of the ratios to the plain slices around each slice, [95 % CI]"
    );
    for (i, s) in SCENARIOS.iter().enumerate() {
        if !selected(s.name) {
            continue;
        }
        let (rps, cpu) = (
            median(results[i].iter().map(|r| r.0).collect()),
            median(results[i].iter().map(|r| r.1).collect()),
        );
        let ratios = |f: fn(&(f64, f64)) -> f64| -> Vec<f64> {
            let plain = &results[0];
            (0..rounds)
                .map(|r| {
                    let around = match plain.get(r + 1) {
                        Some(next) => (f(&plain[r]) + f(next)) / 2.0,
                        None => f(&plain[r]),
                    };
                    f(&results[i][r]) / around
                })
                .collect()
        };
        let show = |v: Vec<f64>| {
            let (lo, hi) = median_ci(&v);
            format!(
                "{:+5.1} % [{:+5.1}, {:+5.1}]",
                (median(v) - 1.0) * 100.0,
                (lo - 1.0) * 100.0,
                (hi - 1.0) * 100.0
            )
        };
        println!(
            "{:>9}: {rps:>8.0} req/s {}   {cpu:>5.1} µs CPU/request {}",
            s.name,
            show(ratios(|r| r.0)),
            show(ratios(|r| r.1))
        );
    }
}

fn config_text(secret: &Path, dir: &Path, port: u16, up: std::net::SocketAddr) -> String {
    format!(
        r#"listen: {{ addr: "127.0.0.1:{port}" }}
identity:
  issuers:
    - {{ iss: load, audiences: [a], algorithms: [HS256], keys: {{ hmac_secret_file: "{secret}" }} }}
upstreams:
  app: {{ url: "http://{up}" }}
sessions:
  store: embedded
  state_dir: "{state}"
masking: {{ audit_log: "{audit}" }}
{masks}roles:
  agent: {{ grants: [customer.profile.view] }}
  pii: {{ grants: [customer.pii.view] }}
routes:
  - {{ name: plain, match: {{ methods: [GET], path: "/plain-pii/{{id}}" }}, require: customer.profile.view }}
  - {{ name: masked, match: {{ methods: [GET], path: "/customers/{{id}}" }}, require: customer.profile.view, mask: pii, record: "{{id}}" }}
"#,
        secret = secret.display(),
        state = dir.join("state").display(),
        audit = dir.join("audit.jsonl").display(),
        masks = PII_MASK_YAML,
    )
}

/// Runs wrk on CPU 1 for `secs` seconds and returns its requests/s; any
/// non-2xx answer or socket error fails the benchmark (a refusal is cheap
/// and would flatter the figures).
fn wrk(url: &str, token: &str, secs: u64) -> f64 {
    let out = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1", "-c32"])
        .arg(format!("-d{secs}s"))
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url)
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

/// The gateway's user and system CPU time so far, in clock ticks (fields 14
/// and 15 of its stat).
fn cpu_ticks(child: &Child) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    (f[11].parse().unwrap(), f[12].parse().unwrap())
}
