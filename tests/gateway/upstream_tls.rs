//! TLS and HTTP/2 towards upstreams: a real rustls upstream on loopback
//! (certificates from a test CA made at test time) that records what
//! reached its handler, behind the real gateway. Verification failures are
//! 502 and never reach the handler; HTTP/2 is spoken only when asked for.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::common::*;

/// A request as the TLS upstream's handler saw it, with its connection.
#[derive(Debug, Clone)]
struct Seen {
    version: http::Version,
    /// The SNI the client sent (`None` for an IP address or plain TCP).
    sni: Option<String>,
    /// The ALPN protocol agreed on (`None` for plain TCP or no ALPN).
    alpn: Option<String>,
    /// The URI's authority (HTTP/2 `:authority`).
    authority: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The request's trailer fields, if it had any.
    trailers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the upstream listens.
struct Listen<'a> {
    /// Server certificate; `None` = plain TCP.
    cert: Option<&'a Leaf>,
    /// Require a client certificate issued by this CA.
    client_ca: Option<&'a TestCa>,
}

struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TlsUpstream {
    /// HTTP/1.1 and HTTP/2 (ALPN `h2`, `http/1.1`; prior knowledge on
    /// plain TCP) on one port.
    async fn start(l: Listen<'_>) -> TlsUpstream {
        let acceptor = l.cert.map(|cert| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(&cert.cert_path)
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key = PrivateKeyDer::from_pem_file(&cert.key_path).unwrap();
            let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap();
            let builder = match l.client_ca {
                Some(ca) => {
                    let mut roots = rustls::RootCertStore::empty();
                    for c in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
                        roots.add(c.unwrap()).unwrap();
                    }
                    let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider,
                    )
                    .build()
                    .unwrap();
                    builder.with_client_cert_verifier(v)
                }
                None => builder.with_no_client_auth(),
            };
            let mut cfg = builder.with_single_cert(chain, key).unwrap();
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let rec = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let rec = rec.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            // A failed handshake never reaches the handler.
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let conn = tls.get_ref().1;
                            let sni = conn.server_name().map(str::to_string);
                            let alpn = conn
                                .alpn_protocol()
                                .map(|p| String::from_utf8_lossy(p).into_owned());
                            serve(TokioIo::new(tls), rec, sni, alpn).await;
                        }
                        None => serve(TokioIo::new(tcp), rec, None, None).await,
                    }
                });
            }
        });
        TlsUpstream { addr, seen }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no request")
    }
}

async fn serve<I>(io: I, rec: Arc<Mutex<Vec<Seen>>>, sni: Option<String>, alpn: Option<String>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let fields = |h: &http::HeaderMap| -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    };
    let svc = service_fn(move |req: hyper::Request<Incoming>| {
        let (rec, sni, alpn) = (rec.clone(), sni.clone(), alpn.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.ok();
            rec.lock().unwrap().push(Seen {
                version: parts.version,
                sni,
                alpn,
                authority: parts.uri.authority().map(|a| a.to_string()),
                headers: fields(&parts.headers),
                trailers: (body.as_ref().and_then(|b| b.trailers()))
                    .map(fields)
                    .unwrap_or_default(),
                body: body.map(|b| b.to_bytes().to_vec()).unwrap_or_default(),
            });
            let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"{\"tls\":\"ok\"}")));
            resp.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, svc)
        .await;
}

fn viewer() -> String {
    token_with(json!({ "roles": ["viewer"] }))
}

/// The gateway config with one upstream `app` whose settings are `upstream`
/// (a YAML flow mapping's inside).
fn config(dir: &Path, upstream: &str) -> String {
    std::fs::write(dir.join("rules.yaml"), TEST_RULES).unwrap();
    format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{}upstreams:\n  app: {{ {upstream}, timeout: 5s }}\nrules: rules.yaml\n",
        identity_yaml()
    )
}

/// A gateway in a directory of its own (each has its own state
/// directory), with copies of the certificates and keys in `dir`.
async fn gateway(dir: &Path, upstream: &str) -> Gw {
    let own = scratch_dir("up-gw");
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if matches!(p.extension().and_then(|e| e.to_str()), Some("pem" | "key")) {
            std::fs::copy(&p, own.join(p.file_name().unwrap())).unwrap();
        }
    }
    start_with_config(&own, &config(&own, upstream)).await
}

/// A CA, a server certificate for `localhost` from it, and the CA file.
fn pki(tag: &str) -> (std::path::PathBuf, TestCa, Leaf) {
    let dir = scratch_dir(tag);
    let ca = TestCa::new("upstream test CA");
    ca.write(&dir, "ca.pem");
    let leaf = ca.server(&dir, "upstream", &["localhost"]);
    (dir, ca, leaf)
}

#[tokio::test]
async fn https_upstream_trusted_via_ca_file_gets_the_request_with_its_own_sni_and_host() {
    let (dir, _ca, leaf) = pki("up-tls-ok");
    let up = TlsUpstream::start(Listen {
        cert: Some(&leaf),
        client_ca: None,
    })
    .await;
    let port = up.addr.port();
    let gw = gateway(
        &dir,
        &format!("url: \"https://localhost:{port}\", ca_file: ca.pem"),
    )
    .await;
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["tls"], "ok");
    let seen = up.last();
    assert_eq!(seen.sni.as_deref(), Some("localhost"));
    assert_eq!(
        seen.header("host"),
        Some(format!("localhost:{port}").as_str())
    );
    // HTTP/1.1 by default, even though the upstream offers h2.
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.alpn, None);
    assert!(seen.header("x-rolegate-user").is_some());
}

#[tokio::test]
async fn upstream_certificate_from_an_untrusted_ca_is_502_and_nothing_reaches_it() {
    let (dir, _ca, _leaf) = pki("up-tls-untrusted");
    // The upstream's certificate comes from another CA than `ca.pem`.
    let other = TestCa::new("someone else's CA");
    let leaf = other.server(&dir, "other", &["localhost"]);
    let up = TlsUpstream::start(Listen {
        cert: Some(&leaf),
        client_ca: None,
    })
    .await;
    let gw = gateway(
        &dir,
        &format!(
            "url: \"https://localhost:{}\", ca_file: ca.pem",
            up.addr.port()
        ),
    )
    .await;
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (502, "upstream_unavailable")
    );
    // The TLS library's text stays in the log.
    let body = String::from_utf8_lossy(&r.body).to_lowercase();
    assert!(
        !body.contains("certificate") && !body.contains("issuer"),
        "{body}"
    );
    assert_eq!(up.count(), 0);

    // Without `ca_file` the default (public) roots do not trust it either.
    let gw = gateway(
        &dir,
        &format!("url: \"https://localhost:{}\"", up.addr.port()),
    )
    .await;
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (502, "upstream_unavailable")
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn upstream_certificate_for_another_name_is_502_unless_server_name_says_so() {
    let (dir, ca, _leaf) = pki("up-tls-name");
    let leaf = ca.server(&dir, "named", &["backend.internal"]);
    let up = TlsUpstream::start(Listen {
        cert: Some(&leaf),
        client_ca: None,
    })
    .await;
    let port = up.addr.port();
    let gw = gateway(
        &dir,
        &format!("url: \"https://localhost:{port}\", ca_file: ca.pem"),
    )
    .await;
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (502, "upstream_unavailable")
    );
    assert_eq!(up.count(), 0);

    // An IP-addressed upstream whose certificate names it otherwise.
    let gw = gateway(
        &dir,
        &format!(
            "url: \"https://127.0.0.1:{port}\", ca_file: ca.pem, server_name: backend.internal"
        ),
    )
    .await;
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(up.last().sni.as_deref(), Some("backend.internal"));
}

#[tokio::test]
async fn upstream_requiring_a_client_certificate_gets_one_only_when_configured() {
    let (dir, ca, leaf) = pki("up-mtls");
    let up = TlsUpstream::start(Listen {
        cert: Some(&leaf),
        client_ca: Some(&ca),
    })
    .await;
    let port = up.addr.port();
    let gw = gateway(
        &dir,
        &format!("url: \"https://localhost:{port}\", ca_file: ca.pem"),
    )
    .await;
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error(), "upstream_unavailable");
    assert_eq!(up.count(), 0);

    ca.client(&dir, "gateway", "rolegate");
    let gw = gateway(
        &dir,
        &format!(
            "url: \"https://localhost:{port}\", ca_file: ca.pem, client_cert: gateway.pem, client_key: gateway.key"
        ),
    )
    .await;
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn insecure_skip_verify_connects_to_any_certificate_and_is_a_warning() {
    let (dir, _ca, _leaf) = pki("up-insecure");
    let other = TestCa::new("unknown CA");
    let leaf = other.server(&dir, "other", &["elsewhere.test"]);
    let up = TlsUpstream::start(Listen {
        cert: Some(&leaf),
        client_ca: None,
    })
    .await;
    let cfg = config(
        &dir,
        &format!(
            "url: \"https://localhost:{}\", insecure_skip_verify: true",
            up.addr.port()
        ),
    );
    let path = dir.join("rolegate.yaml");
    std::fs::write(&path, &cfg).unwrap();
    let loaded = match rolegate::config::load(&path) {
        Ok(l) => l,
        Err(d) => panic!("{d:?}"),
    };
    let warning = loaded
        .warnings
        .iter()
        .find(|w| w.message.contains("insecure_skip_verify"))
        .expect("a warning about insecure_skip_verify");
    assert_eq!(warning.severity, rolegate::config::Severity::Warning);
    let app_line = cfg.lines().position(|l| l.starts_with("  app:")).unwrap() as u64 + 1;
    assert_eq!(warning.line, app_line, "{warning}");

    // `rolegate check` prints it and still passes.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rolegate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: upstream app: insecure_skip_verify"),
        "{stderr}"
    );

    let gw = start_with_config(&dir, &cfg).await;
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn http2_over_tls_reaches_the_upstream_as_http2_with_headers_still_cleaned() {
    let (dir, _ca, leaf) = pki("up-h2");
    let up = TlsUpstream::start(Listen {
        cert: Some(&leaf),
        client_ca: None,
    })
    .await;
    let port = up.addr.port();
    let gw = gateway(
        &dir,
        &format!("url: \"https://localhost:{port}\", ca_file: ca.pem, http2: true"),
    )
    .await;
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        Some(&viewer()),
        &[
            "Connection: x-hop",
            "X-Hop: 1",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Upgrade: h2c",
            "X-Rolegate-User: admin",
            "X-Forwarded-User: admin",
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.alpn.as_deref(), Some("h2"));
    assert_eq!(seen.sni.as_deref(), Some("localhost"));
    // The upstream's own authority, carried as `:authority`, no `Host`.
    assert_eq!(
        seen.authority.as_deref(),
        Some(format!("localhost:{port}").as_str())
    );
    assert_eq!(seen.header("host"), None);
    for gone in [
        "connection",
        "x-hop",
        "keep-alive",
        "te",
        "upgrade",
        "transfer-encoding",
        "x-forwarded-user",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} reached the upstream");
    }
    let user = seen.header("x-rolegate-user").unwrap_or_default();
    assert!(!user.is_empty() && user != "admin", "{user}");
    assert_eq!(seen.header("x-rolegate-roles"), Some("viewer"));
}

/// A plain-TCP upstream and a gateway speaking HTTP/2 to it (h2c, prior
/// knowledge), in a scratch directory named `name`.
async fn h2c_upstream_and_gateway(name: &str) -> (TlsUpstream, Gw) {
    let up = TlsUpstream::start(Listen {
        cert: None,
        client_ca: None,
    })
    .await;
    let dir = scratch_dir(name);
    let gw = gateway(&dir, &format!("url: \"http://{}\", http2: true", up.addr)).await;
    (up, gw)
}

#[tokio::test]
async fn http2_on_a_plain_upstream_is_h2c_with_prior_knowledge() {
    let (up, gw) = h2c_upstream_and_gateway("up-h2c").await;
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.alpn, None);

    // The same upstream without `http2` is spoken to in HTTP/1.1.
    let dir = scratch_dir("up-h1c");
    let gw = gateway(&dir, &format!("url: \"http://{}\"", up.addr)).await;
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().version, http::Version::HTTP_11);
}

/// Trailer fields come after the body, past every header removal: a
/// client's never reach an HTTP/2 upstream (which could carry them), and
/// its body does.
#[tokio::test]
async fn a_client_s_request_trailers_never_reach_an_http2_upstream() {
    let (up, gw) = h2c_upstream_and_gateway("up-h2-trailers").await;
    let request = format!(
        "POST /files/a HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\nTrailer: X-Rolegate-User, X-Forwarded-For\r\n\
         Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\
         X-Rolegate-User: admin\r\nX-Forwarded-For: 10.6.6.6\r\nX-Note: 1\r\n\r\n",
        viewer()
    );
    let r = raw(gw.addr, request.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.body, b"hello");
    assert!(seen.trailers.is_empty(), "{:?}", seen.trailers);
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test]
async fn upstream_tls_mistakes_are_all_reported_by_check_with_file_and_line() {
    let dir = scratch_dir("up-tls-check");
    std::fs::write(dir.join("rules.yaml"), TEST_RULES).unwrap();
    std::fs::write(
        dir.join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\n%%%\n",
    )
    .unwrap();
    std::fs::write(dir.join("empty.pem"), "nothing here\n").unwrap();
    // A certificate and someone else's key.
    let ca = TestCa::new("check CA");
    ca.client(&dir, "a", "a");
    ca.client(&dir, "b", "b");
    let cfg = format!(
        r#"listen: {{ addr: "127.0.0.1:0" }}
{}upstreams:
  plain:
    url: "http://127.0.0.1:1"
    ca_file: ca.pem
  keyonly:
    url: "https://localhost:1"
    client_key: client.key
  missing:
    url: "https://localhost:1"
    ca_file: does-not-exist.pem
  garbage:
    url: "https://localhost:1"
    ca_file: garbage.pem
    client_cert: empty.pem
    client_key: empty.pem
  mismatch:
    url: "https://mismatch.test:1"
    client_cert: a.pem
    client_key: b.key
  h2host:
    url: "https://h2host.test:1"
    http2: true
    preserve_host: true
  ftp:
    url: "ftp://ftp.test:1"
rules: rules.yaml
routes:
  - {{ name: ws, match: {{ path: /ws }}, public: true, websocket: true, upstream: h2c }}
"#,
        identity_yaml()
    )
    .replace(
        "  ftp:",
        "  h2c:\n    url: \"http://127.0.0.1:1\"\n    http2: true\n  ftp:",
    );
    let path = dir.join("rolegate.yaml");
    std::fs::write(&path, &cfg).unwrap();
    let diags = match rolegate::config::load(&path) {
        Ok(_) => panic!("config with TLS mistakes loaded"),
        Err(d) => d,
    };
    let line_of = |needle: &str| -> u64 {
        cfg.lines()
            .position(|l| l.contains(needle))
            .map(|i| i as u64 + 1)
            .unwrap_or_else(|| panic!("{needle} not in config"))
    };
    let expect = [
        (
            "upstream plain: ca_file applies to https:// upstreams only",
            line_of("ca_file: ca.pem"),
        ),
        (
            "upstream keyonly: client_key needs client_cert",
            line_of("client_key: client.key"),
        ),
        ("upstream missing: ca_file", line_of("does-not-exist.pem")),
        ("upstream garbage: ca_file", line_of("ca_file: garbage.pem")),
        (
            "upstream garbage: client_cert",
            line_of("client_cert: empty.pem"),
        ),
        (
            "upstream garbage: client_key",
            line_of("client_key: empty.pem"),
        ),
        (
            "upstream h2host: preserve_host cannot be combined with http2",
            line_of("h2host.test"),
        ),
        (
            "upstream ftp: url must start with http:// or https://",
            line_of("ftp.test"),
        ),
        (
            "route ws: websocket: true needs an HTTP/1.1 upstream",
            line_of("name: ws"),
        ),
    ];
    let all = diags
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for (msg, line) in expect {
        let d = diags
            .iter()
            .find(|d| d.message.starts_with(msg))
            .unwrap_or_else(|| panic!("no diagnostic {msg:?} in:\n{all}"));
        assert_eq!(d.severity, rolegate::config::Severity::Error, "{d}");
        assert_eq!(d.line, line, "{d}");
        assert!(d.file.ends_with("rolegate.yaml"), "{d}");
    }
}
