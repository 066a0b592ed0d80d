//! Load: authorize-and-forward through the real gateway with the embedded
//! vs the Redis session store, to record what Redis adds under load; and a
//! ~1 KB customer profile forwarded unmasked vs masked, to record what
//! masking costs end to end.
//!
//! Everything runs in this process on loopback: a minimal hyper upstream,
//! the gateway, and 32 keep-alive clients (one session each) for 5 s per
//! store. Run: `cargo bench --bench load_sessions` (needs `redis-server` on
//! PATH for the Redis half). Prints requests/s and latency percentiles.
//! `LOAD_ONLY=<scenario>` runs one scenario alone (embedded, redis,
//! "1KB plain", "1KB mask", "1KB unmasked": the masked route read by a
//! principal holding `unmask_with`, i.e. everything but the masking itself).

#[path = "common/fixtures.rs"]
mod fixtures;
#[path = "common/upstream.rs"]
mod upstream;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rolegate::config::{RulesSource, load_from_text};
use rolegate::session::Store;
use serde_json::json;
use tokio::net::TcpListener;
use upstream::json_upstream;

const CLIENTS: usize = 32;
const DURATION: Duration = Duration::from_secs(5);

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        run("embedded", "  store: embedded\n", Body::Tiny, false).await;
        run("1KB plain", "  store: embedded\n", Body::Profile, false).await;
        run("1KB mask", "  store: embedded\n", Body::Profile, true).await;
        run("1KB unmasked", "  store: embedded\n", Body::Profile, true).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let redis = std::process::Command::new("redis-server")
            .args(fixtures::redis_args(port))
            .stdout(std::process::Stdio::null())
            .spawn();
        let Ok(mut redis) = redis else {
            println!("redis: skipped (redis-server not installed)");
            return;
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        run(
            "redis",
            &format!("  store: \"redis://127.0.0.1:{port}\"\n"),
            Body::Tiny,
            false,
        )
        .await;
        let _ = redis.kill();
        let _ = redis.wait();
    });
}

#[derive(Clone, Copy)]
enum Body {
    Tiny,
    Profile,
}

/// A ~1 KB customer profile with the usual PII fields.
const PROFILE: &str = r#"{"customer":{"id":"c-1001","name":"Asha Rao","email":"asha.rao@example.com","phone":"+91 98200 11223","tier":"gold","address":{"street":"12 Marine Drive","city":"Mumbai","zip":"400002","country":"IN"},"date_of_birth":"1988-04-12","preferences":{"language":"en","channel":"whatsapp","marketing":false},"tags":["vip","repeat","priority-support"],"orders":[{"id":"o-1","total":129.5,"currency":"INR","status":"delivered"},{"id":"o-2","total":54.0,"currency":"INR","status":"shipped"},{"id":"o-3","total":12.25,"currency":"INR","status":"pending"}],"notes":"prefers evening calls","created_at":"2024-01-03T10:00:00Z","updated_at":"2026-11-20T08:30:00Z"},"conversations":[{"id":"cv-7","channel":"whatsapp","opened_at":"2026-11-20T08:00:00Z","status":"open"}],"meta":{"source":"crm","version":17}}"#;

async fn run(name: &str, store_yaml: &str, body: Body, masked: bool) {
    // LOAD_ONLY="1KB mask" runs one scenario: scenarios run back to back
    // in one process, and earlier ones leave tasks behind that slow later
    // ones, so published comparisons run each alone.
    if std::env::var("LOAD_ONLY").is_ok_and(|only| only != name) {
        return;
    }
    let up = json_upstream(match body {
        Body::Tiny => b"{\"ok\":true}",
        Body::Profile => PROFILE.as_bytes(),
    })
    .await;
    let mask = if masked { ", mask: pii" } else { "" };
    let dir = std::env::temp_dir().join(format!("rolegate-load-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let secret = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/hmac.secret");
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\nidentity:\n  issuers:\n    - {{ iss: load, audiences: [a], algorithms: [HS256], keys: {{ hmac_secret_file: \"{}\" }} }}\n\
         upstreams:\n  app: {{ url: \"http://{up}\" }}\nsessions:\n{store_yaml}  state_dir: \"{}\"\n\
         masking: {{ audit_log: \"{}\" }}\n\
         masks:\n  pii:\n    unmask_with: customer.pii.view\n    fields: [{{ path: \"$..phone\", as: last4 }}, {{ path: \"$..email\", as: email }}, {{ path: \"$..name\", as: redact }}, {{ path: \"$..address\", as: redact }}]\n\
         roles:\n  viewer: {{ grants: [bot.flows.view] }}\n  pii: {{ grants: [customer.pii.view] }}\nroutes:\n  - {{ name: flows, match: {{ methods: [GET], path: \"/bots/{{bot}}/flows\" }}, require: bot.flows.view{mask} }}\n",
        secret.display(),
        dir.join("state").display(),
        dir.join("audit.jsonl").display()
    );
    let loaded = load_from_text("load.yaml", &cfg, &dir, RulesSource::Embedded(vec![]))
        .unwrap_or_else(|d| {
            panic!(
                "{}",
                d.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
    let store = Store::open(&loaded.runtime.sessions).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gw = rolegate::Gateway::new(loaded.runtime, store);
    tokio::spawn(rolegate::proxy::listener::run(
        gw,
        listener,
        None,
        std::future::pending(),
    ));

    let key = EncodingKey::from_secret(std::fs::read_to_string(&secret).unwrap().trim().as_bytes());
    let mut tasks = Vec::new();
    let start = Instant::now();
    let roles: Vec<&str> = if name == "1KB unmasked" {
        vec!["viewer", "pii"]
    } else {
        vec!["viewer"]
    };
    for c in 0..CLIENTS {
        let claims = json!({ "iss": "load", "aud": "a", "sub": format!("u{c}"), "sid": format!("s{c}"), "exp": 4_000_000_000u64, "roles": roles });
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        tasks.push(tokio::spawn(async move {
            let client: Client<_, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let mut lat = Vec::new();
            while start.elapsed() < DURATION {
                let req = hyper::Request::get(format!("http://{addr}/bots/1/flows"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(Empty::new())
                    .unwrap();
                let t = Instant::now();
                let resp = client.request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let _ = resp.into_body().collect().await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "{name:>8}: {:>7.0} req/s  p50 {:>5.0} µs  p99 {:>6.0} µs  ({} requests, {CLIENTS} clients, {}s)",
        all.len() as f64 / DURATION.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        all.len(),
        DURATION.as_secs()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
