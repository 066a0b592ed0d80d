//! Test harness: a real recording upstream (hyper), the real gateway on a
//! loopback port, a raw HTTP/1.1 client (so path tricks reach the gateway
//! byte for byte) and token minting with the fixture keys.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn key(name: &str) -> PathBuf {
    fixtures().join("keys").join(name)
}

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A real HTTP upstream that records every request it receives.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let rec = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let rec = rec.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let rec = rec.clone();
                        async move {
                            let method = req.method().to_string();
                            let uri = req.uri().to_string();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let n = body.len();
                            rec.lock().unwrap().push(Seen {
                                method,
                                uri: uri.clone(),
                                headers,
                                body,
                            });
                            let reply = json!({ "upstream": "ok", "uri": uri, "body_len": n });
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from(reply.to_string())));
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            resp.headers_mut().insert(
                                "connection",
                                "keep-alive, x-upstream-private".parse().unwrap(),
                            );
                            resp.headers_mut()
                                .insert("x-upstream-private", "hop".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }
}

/// A unique scratch directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "rolegate-test-{}-{}-{}",
        tag,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    // A directory of an earlier run whose process had the same id (pids
    // repeat in a fresh PID namespace, as CI's are) holds its state: a
    // journal of sessions ended there would end this run's.
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub const ISS_RSA: &str = "https://idp.test";
pub const ISS_HMAC: &str = "https://hmac.test";
pub const ISS_EC: &str = "https://ec.test";
pub const ISS_ED: &str = "https://ed.test";
pub const ISS_JWKS: &str = "https://jwks.test";
pub const AUD: &str = "dashboards";

/// The identity section used by the gateway tests: one issuer per key type.
pub fn identity_yaml() -> String {
    let k = |n: &str| key(n).display().to_string();
    format!(
        r#"identity:
  bearer: true
  cookie: rg_session
  leeway: 5s
  issuers:
    - iss: "{ISS_RSA}"
      audiences: ["{AUD}"]
      algorithms: [RS256, RS384, RS512, PS256]
      keys: {{ pem: [{{ file: "{rsa}" }}] }}
    - iss: "{ISS_HMAC}"
      audiences: ["{AUD}"]
      algorithms: [HS256, HS384, HS512]
      keys: {{ hmac_secret_file: "{hmac}" }}
      dev: true
    - iss: "{ISS_EC}"
      audiences: ["{AUD}"]
      algorithms: [ES256, ES384]
      keys: {{ pem: [{{ file: "{ec256}", kid: p256 }}, {{ file: "{ec384}", kid: p384 }}] }}
    - iss: "{ISS_ED}"
      audiences: ["{AUD}"]
      algorithms: [EdDSA]
      keys: {{ pem: [{{ file: "{ed}" }}] }}
    - iss: "{ISS_JWKS}"
      audiences: ["{AUD}"]
      algorithms: [RS256, ES256]
      keys: {{ jwks_file: "{jwks}" }}
"#,
        rsa = k("rsa.pub"),
        hmac = k("hmac.secret"),
        ec256 = k("ec256.pub"),
        ec384 = k("ec384.pub"),
        ed = k("ed25519.pub"),
        jwks = k("jwks.json"),
    )
}

/// Rules used by the gateway tests.
pub const TEST_RULES: &str = r#"
roles:
  viewer: { grants: [bot.flows.view] }
  editor: { includes: [viewer], grants: [bot.flows.edit] }
  developer: { scope: bot, grants: [bot.code.edit] }
  approver: { scope: bot, requires: [developer], grants: [bot.publish] }
  partner-admin: { grants: [partner.users.manage] }
routes:
  - { name: status, match: { methods: [GET], path: /api/status }, public: true }
  - { name: flows-view, match: { methods: [GET], path: "/bots/{bot}/flows" }, require: bot.flows.view, scope: { bot: "{bot}" } }
  - { name: flows-edit, match: { methods: [PUT, POST], path: "/bots/{bot}/flows" }, require: bot.flows.edit, scope: { bot: "{bot}" } }
  - { name: publish, match: { methods: [POST], path: "/bots/{bot}/publish" }, require: bot.publish, scope: { bot: "{bot}" } }
  - { name: partner-users, match: { path: "/partners/{partner}/users" }, require: partner.users.manage, scope: { partner: "{partner}" } }
  - { name: items, match: { methods: [GET], path: "/items/{id:[0-9]+}" }, require: bot.flows.view }
  - { name: files, match: { methods: [GET, POST], path: "/files/**" }, require: bot.flows.view }
"#;

/// A running gateway in front of `upstream`.
pub struct Gw {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    /// The admin listener, when the config has one.
    pub admin: Option<SocketAddr>,
    /// The gateway itself (reloader, store).
    pub gateway: std::sync::Arc<rolegate::Gateway>,
}

/// Starts the real gateway (library server on loopback) with the test
/// identity, `TEST_RULES` and `extra` YAML appended to the config.
pub async fn start_gateway(upstream: SocketAddr, extra: &str) -> Gw {
    let dir = scratch_dir("gw");
    std::fs::write(dir.join("rules.yaml"), TEST_RULES).unwrap();
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\", max_body_bytes: 1024 }}\n{}upstreams:\n  app: {{ url: \"http://{upstream}\", timeout: 2s }}\nrules: rules.yaml\n{extra}",
        identity_yaml()
    );
    start_with_config(&dir, &cfg).await
}

/// Starts the gateway from a config text written into `dir`.
pub async fn start_with_config(dir: &std::path::Path, cfg: &str) -> Gw {
    let path = dir.join("rolegate.yaml");
    std::fs::write(&path, cfg).unwrap();
    let loaded = match rolegate::config::load(&path) {
        Ok(l) => l,
        Err(d) => panic!(
            "config did not load: {}",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    };
    let listener = TcpListener::bind(loaded.runtime.listen.addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = match &loaded.runtime.admin {
        Some(a) => Some(TcpListener::bind(a.addr).await.unwrap()),
        None => None,
    };
    let admin_addr = admin.as_ref().map(|l| l.local_addr().unwrap());
    let store = rolegate::session::Store::open(&loaded.runtime.sessions)
        .await
        .expect("session store");
    let gw = rolegate::Gateway::new(loaded.runtime, store);
    gw.reloader().configure(Some(path), loaded.sources);
    tokio::spawn(rolegate::proxy::listener::run(
        gw.clone(),
        listener,
        admin,
        std::future::pending(),
    ));
    Gw {
        admin: admin_addr,
        addr,
        dir: dir.to_path_buf(),
        gateway: gw,
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
    /// The stable `error` code of a refusal body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Sends raw bytes and reads the whole response (the request should carry
/// `Connection: close`).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("complete head");
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..i])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[i + 2 + size + 2..];
    }
    out
}

/// `METHOD target` with optional bearer token and extra header lines.
pub async fn req(
    addr: SocketAddr,
    method: &str,
    target: &str,
    token: Option<&str>,
    extra: &[&str],
) -> Resp {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    raw(addr, r.as_bytes()).await
}

/// One kept-alive HTTP/1.1 client connection: requests one after another,
/// each answer read by its `Content-Length` (or chunks), the connection
/// left open.
pub struct KeptAlive(TcpStream, Vec<u8>);

impl KeptAlive {
    pub async fn open(addr: SocketAddr) -> KeptAlive {
        KeptAlive(TcpStream::connect(addr).await.unwrap(), Vec::new())
    }

    /// `GET target` with an optional bearer token; panics if the gateway
    /// closes the connection instead of answering.
    pub async fn get(&mut self, target: &str, token: Option<&str>) -> Resp {
        let mut r = format!("GET {target} HTTP/1.1\r\nHost: app.test\r\n");
        if let Some(t) = token {
            r.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        r.push_str("\r\n");
        self.0.write_all(r.as_bytes()).await.unwrap();
        loop {
            if let Some(n) = complete_response(&self.1) {
                let resp = parse_response(&self.1[..n]);
                self.1.drain(..n);
                return resp;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.0.read(&mut chunk))
                .await
                .expect("response in time")
                .unwrap();
            assert!(n > 0, "the gateway closed the connection");
            self.1.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The length of the first complete response in `buf`, if there is one.
fn complete_response(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let field = |name: &str| {
        head.split("\r\n")
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    if let Some(len) = field("content-length:") {
        let total = end + len.parse::<usize>().unwrap();
        return (buf.len() >= total).then_some(total);
    }
    if field("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        let last = buf[end..].windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(end + last + 5);
    }
    Some(end)
}

/// `METHOD target` with a bearer token and a JSON body.
pub async fn req_json(
    addr: SocketAddr,
    method: &str,
    target: &str,
    token: Option<&str>,
    body: &str,
) -> Resp {
    let len = format!("Content-Length: {}", body.len());
    let mut r = format!(
        "{method} {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nContent-Type: application/json\r\n{len}\r\n"
    );
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(body);
    raw(addr, r.as_bytes()).await
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Standard claims for `iss`: sub, aud, exp in an hour, plus `extra`.
pub fn claims(iss: &str, extra: Value) -> Value {
    let mut c = json!({ "iss": iss, "aud": AUD, "sub": "user-1", "sid": "s-1", "exp": now() + 3600, "iat": now() });
    if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if v.is_null() {
                m.remove(k);
            } else {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

/// Signs `claims` with the fixture key for `alg` (and optional `kid`).
pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let read = |n: &str| std::fs::read(key(n)).unwrap();
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(
            std::fs::read_to_string(key("hmac.secret"))
                .unwrap()
                .trim()
                .as_bytes(),
        ),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read("ec256.key")).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(&read("ec384.key")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&read("ed25519.key")).unwrap(),
        _ => EncodingKey::from_rsa_pem(&read("rsa.key")).unwrap(),
    };
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

/// An RS256 token from the main issuer with these roles.
pub fn token_with(extra: Value) -> String {
    sign(Algorithm::RS256, None, &claims(ISS_RSA, extra))
}

pub fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A token assembled by hand (for forgeries): header JSON, payload JSON, signature bytes.
pub fn forge(header: &Value, payload: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes()),
        b64(sig)
    )
}

/// A child process killed (and reaped) on drop, so a failing test never
/// leaves a gateway or redis-server behind.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`.
pub async fn wait_listening(port: u16) {
    for _ in 0..400 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listening on {port}");
}

/// Sends raw bytes and returns every byte the server sent until it closed
/// the connection (panics if it does not within 10 s).
pub async fn raw_bytes(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    // A reset after the data is still a closed connection.
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the connection was closed in time");
    buf
}

/// A response read to the connection's end, possibly cut mid-body.
#[derive(Debug)]
pub struct CutResp {
    /// The head (status line and headers), `None` if no complete head came.
    pub head: Option<String>,
    /// The body data received (de-chunked if chunked), complete or not.
    pub body: Vec<u8>,
    /// For a chunked body: whether the terminating zero-length chunk came.
    pub terminated: bool,
}

impl CutResp {
    pub fn parse(buf: &[u8]) -> CutResp {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return CutResp {
                head: None,
                body: Vec::new(),
                terminated: false,
            };
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut b = &buf[end + 4..];
        if !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return CutResp {
                head: Some(head),
                body: b.to_vec(),
                terminated: false,
            };
        }
        let mut body = Vec::new();
        let mut terminated = false;
        while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
            let Ok(size) = usize::from_str_radix(
                std::str::from_utf8(&b[..i])
                    .unwrap_or("x")
                    .split(';')
                    .next()
                    .unwrap_or("x")
                    .trim(),
                16,
            ) else {
                break;
            };
            if size == 0 {
                terminated = b[i + 2..].starts_with(b"\r\n");
                break;
            }
            let data = &b[i + 2..];
            body.extend_from_slice(&data[..size.min(data.len())]);
            if data.len() < size + 2 {
                break;
            }
            b = &data[size + 2..];
        }
        CutResp {
            head: Some(head),
            body,
            terminated,
        }
    }

    pub fn status(&self) -> Option<u16> {
        self.head.as_deref()?.split(' ').nth(1)?.parse().ok()
    }
}

/// Sends `parts` one write at a time with `pause` between them (a body that
/// breaks only after its first frame went upstream), then reads the whole
/// response.
pub async fn raw_parts(addr: SocketAddr, parts: &[&[u8]], pause: Duration) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        // The gateway may already have answered and closed.
        if s.write_all(p).await.is_err() {
            break;
        }
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("response in time");
    parse_response(&buf)
}

/// An upstream that records, per request, whether its body arrived whole
/// (`Ok(len)`) or broke (`Err`), and answers 200 only to whole ones.
pub struct BodyProbe {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Result<usize, String>>>>,
}

impl BodyProbe {
    pub async fn start() -> BodyProbe {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Result<usize, String>>>> = Arc::default();
        let rec = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let rec = rec.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let rec = rec.clone();
                        async move {
                            let r = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().len())
                                .map_err(|e| e.to_string());
                            let ok = r.is_ok();
                            rec.lock().unwrap().push(r);
                            let mut resp = hyper::Response::new(Full::new(Bytes::from("{}")));
                            if !ok {
                                *resp.status_mut() = hyper::StatusCode::BAD_REQUEST;
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        BodyProbe { addr, seen }
    }

    /// Requests whose body arrived complete.
    pub fn complete(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.is_ok())
            .count()
    }
}

// ----------------------------------------------------------- certificates

/// A test certificate authority made at test time (rcgen, ECDSA P-256):
/// nothing is checked in. `server`/`client` issue leaves signed by it and
/// write them as PEM files into `dir`.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The CA certificate in PEM (what clients and upstream verification trust).
    pub pem: String,
}

/// A leaf certificate and key written to disk, with their PEM text.
pub struct Leaf {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate's serial number (what a CRL lists).
    pub serial: rcgen::SerialNumber,
}

/// A positive 16-byte serial, different per certificate.
fn rand_serial() -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&t.to_be_bytes());
    s[8..].copy_from_slice(&(n ^ u64::from(std::process::id())).to_be_bytes());
    s[0] = (s[0] & 0x7f) | 0x01;
    s
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let pem = issuer.pem();
        TestCa { issuer, pem }
    }

    /// Writes the CA certificate to `dir/<file>` and returns the path.
    pub fn write(&self, dir: &std::path::Path, file: &str) -> PathBuf {
        let p = dir.join(file);
        std::fs::write(&p, &self.pem).unwrap();
        p
    }

    /// A leaf for `names`, valid until `not_after` (Unix seconds) if given.
    fn leaf(
        &self,
        dir: &std::path::Path,
        stem: &str,
        names: &[&str],
        cn: &str,
        usage: rcgen::ExtendedKeyUsagePurpose,
        not_after: Option<u64>,
    ) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some(t) = not_after {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(t);
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let serial = rcgen::SerialNumber::from_slice(&rand_serial());
        params.serial_number = Some(serial.clone());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let leaf = Leaf {
            cert_path: dir.join(format!("{stem}.pem")),
            key_path: dir.join(format!("{stem}.key")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        };
        std::fs::write(&leaf.cert_path, &leaf.cert_pem).unwrap();
        std::fs::write(&leaf.key_path, &leaf.key_pem).unwrap();
        leaf
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, dir: &std::path::Path, stem: &str, names: &[&str]) -> Leaf {
        self.leaf(
            dir,
            stem,
            names,
            names.first().copied().unwrap_or("server"),
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            None,
        )
    }

    /// Writes to `dir/<file>` this CA's revocation list naming `revoked`,
    /// issued 2026-01-01 with its next update on `next` (y, m, d): a date
    /// past makes an expired list.
    pub fn crl(&self, dir: &std::path::Path, file: &str, revoked: &[&Leaf], next: (i32, u8, u8)) {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(next.0, next.1, next.2),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|l| rcgen::RevokedCertParams {
                    serial_number: l.serial.clone(),
                    revocation_time: rcgen::date_time_ymd(2026, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).unwrap();
        std::fs::write(dir.join(file), crl.pem().unwrap()).unwrap();
    }

    /// A client certificate with subject common name `cn`.
    pub fn client(&self, dir: &std::path::Path, stem: &str, cn: &str) -> Leaf {
        self.leaf(
            dir,
            stem,
            &[],
            cn,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            None,
        )
    }

    /// A client certificate valid until `not_after` (Unix seconds).
    pub fn client_until(
        &self,
        dir: &std::path::Path,
        stem: &str,
        cn: &str,
        not_after: u64,
    ) -> Leaf {
        self.leaf(
            dir,
            stem,
            &[],
            cn,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            Some(not_after),
        )
    }
}

/// A real redis-server on a free loopback port, without persistence,
/// killed when dropped. The Redis tests need it (`.ci/run` installs it):
/// a missing redis-server fails them rather than skipping them.
pub struct TestRedis {
    _proc: Proc,
    pub port: u16,
}

impl TestRedis {
    pub fn start() -> TestRedis {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is required for this test (.ci/run installs it)");
        let proc = Proc(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return TestRedis { _proc: proc, port };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// A relation source answering `{"allowed": …}` as `answer` says: 1 true,
/// 0 false, anything else 500; `asked` counts the calls.
pub async fn relation_source(
    answer: Arc<std::sync::atomic::AtomicU8>,
    asked: Arc<std::sync::atomic::AtomicUsize>,
) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (answer, asked) = (answer.clone(), asked.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let a = answer.load(std::sync::atomic::Ordering::SeqCst);
                    async move {
                        let (status, body) = match a {
                            1 => (200, r#"{"allowed":true}"#),
                            0 => (200, r#"{"allowed":false}"#),
                            _ => (500, "down"),
                        };
                        let mut r = hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(body.as_bytes()),
                        ));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}
