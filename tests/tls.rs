//! The public edge end to end: TLS listeners (certificates by SNI, TLS 1.2
//! and 1.3 only, ALPN), client certificates (required and optional
//! listeners, routes that demand one), HTTP/2 over TLS and h2c, the attack
//! table run over HTTP/1.1 and HTTP/2 alike, the https redirect listener,
//! and certificate errors in `rolegate check`. Real servers on loopback,
//! certificates made at test time by `TestCa`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

// ------------------------------------------------------------------ setup

/// Routes of the TLS tests on top of `TEST_RULES`: one that any verified
/// client certificate opens (no token), one that needs a listed one.
const CERT_ROUTES: &str = r#"
  - { name: machine, match: { methods: [GET], path: /machine/status }, public: true, client_cert: required }
  - { name: ops, match: { methods: [GET], path: "/ops/{x}" }, require: bot.flows.view, client_cert: { allow: [ops-console] } }
"#;

/// The certificates of one test: a server CA with a default certificate
/// (also valid for 127.0.0.1, for clients without SNI), one for `a.test`
/// and a wildcard one; a client CA with two clients; a foreign CA's client.
struct Pki {
    dir: PathBuf,
    ca: TestCa,
    default: Leaf,
    a: Leaf,
    wild: Leaf,
    client: Leaf,
    ops: Leaf,
    foreign: Leaf,
    /// The client CA (it signs revocation lists).
    clients: TestCa,
}

impl Pki {
    fn new() -> Pki {
        let dir = scratch_dir("tls");
        let ca = TestCa::new("rolegate test server CA");
        let default = ca.server(&dir, "default", &["default.test", "127.0.0.1"]);
        let a = ca.server(&dir, "a", &["a.test"]);
        let wild = ca.server(&dir, "wild", &["*.wild.test"]);
        let clients = TestCa::new("rolegate test client CA");
        clients.write(&dir, "clients-ca.pem");
        let client = clients.client(&dir, "client", "batch-job");
        let ops = clients.client(&dir, "ops", "ops-console");
        let foreign = TestCa::new("someone else").client(&dir, "foreign", "ops-console");
        Pki {
            dir,
            ca,
            default,
            a,
            wild,
            client,
            ops,
            foreign,
            clients,
        }
    }
}

/// The TLS block of a listener with the default, `a.test` and wildcard
/// certificates and the given client auth mode.
fn tls_block(client_auth: Option<&str>) -> String {
    let ca = client_auth
        .map(|m| format!("\n      client_auth: {{ mode: {m}, ca: clients-ca.pem }}"))
        .unwrap_or_default();
    format!(
        r#"
    tls:
      cert: default.pem
      key: default.key
      sni:
        - {{ names: [a.test], cert: a.pem, key: a.key }}
        - {{ names: ["*.wild.test"], cert: wild.pem, key: wild.key }}{ca}"#
    )
}

/// Starts the gateway with `listeners` (YAML list items) in front of `up`;
/// returns each listener's bound address, in order.
async fn start(pki: &Pki, up: SocketAddr, listeners: &str) -> Vec<SocketAddr> {
    start_gw(pki, up, listeners).await.0
}

/// [`start`], also returning the gateway (its reloader reads `pki.dir`).
async fn start_gw(
    pki: &Pki,
    up: SocketAddr,
    listeners: &str,
) -> (Vec<SocketAddr>, Arc<rolegate::Gateway>) {
    std::fs::write(
        pki.dir.join("rules.yaml"),
        format!("{TEST_RULES}{CERT_ROUTES}"),
    )
    .unwrap();
    let cfg = format!(
        "listen: {{ max_body_bytes: 1024 }}\nlisteners:{listeners}\n{}upstreams:\n  app: {{ url: \"http://{up}\", timeout: 2s }}\nrules: rules.yaml\n",
        identity_yaml()
    );
    let path = pki.dir.join("rolegate.yaml");
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
    let bound = rolegate::proxy::listener::bind(&loaded.runtime.listen)
        .await
        .unwrap();
    let addrs = bound.iter().map(|l| l.local_addr().unwrap()).collect();
    let store = rolegate::session::Store::open(&loaded.runtime.sessions)
        .await
        .unwrap();
    let gw = rolegate::Gateway::new(loaded.runtime, store);
    gw.reloader().configure(Some(path), loaded.sources);
    tokio::spawn(rolegate::proxy::listener::run_all(
        gw.clone(),
        bound,
        None,
        std::future::pending(),
    ));
    (addrs, gw)
}

/// The usual gateway of these tests: [0] plain, [1] TLS with optional
/// client certificates, [2] TLS requiring them, [3] plain with h2c.
async fn gateway(pki: &Pki, up: SocketAddr) -> Vec<SocketAddr> {
    let listeners = format!(
        "\n  - {{ addr: \"127.0.0.1:0\" }}\n  - addr: \"127.0.0.1:0\"{}\n  - addr: \"127.0.0.1:0\"{}\n  - {{ addr: \"127.0.0.1:0\", h2c: true }}",
        tls_block(Some("optional")),
        tls_block(Some("required")),
    );
    start(pki, up, &listeners).await
}

fn viewer() -> String {
    token_with(json!({ "roles": ["viewer"] }))
}

// ----------------------------------------------------------------- clients

/// A client config trusting the test server CA, optionally presenting a
/// client certificate, offering `alpn` and only `versions`.
fn client_config(
    pki: &Pki,
    cert: Option<&Leaf>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match cert {
        Some(l) => {
            let chain = CertificateDer::pem_slice_iter(l.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

async fn connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// Writes a raw HTTP/1.1 request and reads until the server closes (a
/// missing close_notify or a reset after the data still counts).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, request: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    if s.write_all(request).await.is_err() {
        return buf;
    }
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no response in time"),
        }
    }
    buf
}

fn h1_request(method: &str, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in extra {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// One HTTP/1.1 request over a fresh TLS connection.
async fn h1_tls(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Resp {
    // The name only picks the certificate; `Host` routes the request.
    let mut s = connect(addr, "a.test", cfg).await.expect("TLS handshake");
    let buf = exchange(&mut s, &h1_request(method, path, token, extra)).await;
    parse_response(&buf)
}

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An HTTP/2 client connection (hyper) over `io`.
async fn h2_over<I>(io: I) -> H2
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// One HTTP/2 request; `scheme` is `https` or `http` (h2c).
async fn h2_req(
    send: &mut H2,
    scheme: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Resp {
    let mut b = http::Request::builder()
        .method(http::Method::from_bytes(method.as_bytes()).unwrap())
        .uri(format!("{scheme}://app.test{path}"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let resp = send
        .send_request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("h2 response");
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

/// The certificate the server presented.
fn server_cert(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(leaf: &Leaf) -> Vec<u8> {
    CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

// ----------------------------------------------------------- TLS basics

/// Certificates renewed on disk are served after a reload to new
/// connections, while a connection opened before it carries on; a broken
/// certificate is refused by the reload and the last good one stays.
#[tokio::test]
async fn certificates_reload_without_dropping_open_connections() {
    use rolegate::reload::{Outcome, Trigger};
    let pki = Pki::new();
    let up = Upstream::start().await;
    let listeners = format!("\n  - addr: \"127.0.0.1:0\"{}", tls_block(None));
    let (gw, gateway) = start_gw(&pki, up.addr, &listeners).await;
    let renewed_ca = TestCa::new("rolegate renewed CA");
    // A client trusting both CAs: the certificate it is shown tells which.
    let both = {
        let mut roots = rustls::RootCertStore::empty();
        for pem in [&pki.ca.pem, &renewed_ca.pem] {
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(BOTH)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    };
    let t = viewer();
    let before = connect(gw[0], "a.test", both.clone()).await.unwrap();
    assert_eq!(server_cert(&before), der(&pki.a));
    let mut open = h2_over(before).await;
    assert_eq!(
        h2_req(&mut open, "https", "GET", "/bots/1/flows", Some(&t), &[])
            .await
            .status,
        200
    );

    // Renewed in place (a.pem and a.key overwritten), then reloaded.
    let renewed = renewed_ca.server(&pki.dir, "a", &["a.test"]);
    let a = gateway.reloader().reload(&gateway, Trigger::Admin).await;
    assert_eq!(a.result, Outcome::Reloaded, "{:?}", a.errors);
    let after = connect(gw[0], "a.test", both.clone()).await.unwrap();
    assert_eq!(server_cert(&after), der(&renewed));
    // The connection from before the reload still serves requests.
    for _ in 0..3 {
        assert_eq!(
            h2_req(&mut open, "https", "GET", "/bots/1/flows", Some(&t), &[])
                .await
                .status,
            200
        );
    }

    // A broken certificate: the reload fails (file and line of the
    // listener) and the renewed certificate is still served.
    std::fs::write(
        pki.dir.join("a.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    let a = gateway.reloader().reload(&gateway, Trigger::Admin).await;
    assert_eq!(a.result, Outcome::Failed);
    assert!(
        a.errors
            .iter()
            .any(|d| d.file.ends_with("rolegate.yaml") && d.line > 0),
        "{:?}",
        a.errors
    );
    let again = connect(gw[0], "a.test", both).await.unwrap();
    assert_eq!(server_cert(&again), der(&renewed));
    assert_eq!(
        h2_req(&mut open, "https", "GET", "/bots/1/flows", Some(&t), &[])
            .await
            .status,
        200
    );
}

/// Whether the HTTP/2 connection `open` is closed by the gateway within
/// 5 s.
async fn closes_within_5s(open: &mut H2) -> bool {
    tokio::time::timeout(Duration::from_secs(5), async {
        while open.ready().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok()
}

/// A reload that changes who a listener admits (here: its client CA
/// bundle) closes that listener's open connections gracefully: a client
/// the new CA no longer vouches for cannot keep using a connection it
/// opened before. A reload that changes nothing about admission leaves
/// them open (certificate renewal: the test above).
#[tokio::test]
async fn a_reload_that_changes_the_client_ca_closes_open_connections() {
    use rolegate::reload::{Outcome, Trigger};
    let pki = Pki::new();
    let up = Upstream::start().await;
    let listeners = format!("\n  - addr: \"127.0.0.1:0\"{}", tls_block(Some("required")));
    let (gw, gateway) = start_gw(&pki, up.addr, &listeners).await;
    let cfg = client_config(&pki, Some(&pki.client), &[b"h2"], BOTH);
    let mut open = h2_over(connect(gw[0], "a.test", cfg).await.unwrap()).await;
    let status = |r: Resp| r.status;
    assert_eq!(
        status(h2_req(&mut open, "https", "GET", "/machine/status", None, &[]).await),
        200
    );
    let a = gateway.reloader().reload(&gateway, Trigger::Admin).await;
    assert_eq!(a.result, Outcome::Reloaded, "{:?}", a.errors);
    assert_eq!(
        status(h2_req(&mut open, "https", "GET", "/machine/status", None, &[]).await),
        200,
        "a reload that changes nothing about admission keeps connections"
    );

    TestCa::new("replacement client CA").write(&pki.dir, "clients-ca.pem");
    let a = gateway.reloader().reload(&gateway, Trigger::Admin).await;
    assert_eq!(a.result, Outcome::Reloaded, "{:?}", a.errors);
    let closed = closes_within_5s(&mut open).await;
    assert!(
        closed,
        "the connection admitted under the old CA stayed open"
    );
    // A new handshake with the old client certificate fails.
    let old = client_config(&pki, Some(&pki.client), &[], BOTH);
    if let Ok(mut s) = connect(gw[0], "a.test", old).await {
        let buf = exchange(&mut s, &h1_request("GET", "/machine/status", None, &[])).await;
        assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    }
}

/// `client_auth.crls`: a revoked client certificate is refused at the
/// handshake; a reload with a list that revokes another closes the
/// connections that list no longer admits; an expired list (past its
/// `nextUpdate`) admits nobody, as OpenSSL's does.
#[tokio::test]
async fn revoked_client_certificates_are_refused_and_a_new_list_applies_on_reload() {
    use rolegate::reload::{Outcome, Trigger};
    let pki = Pki::new();
    let up = Upstream::start().await;
    pki.clients
        .crl(&pki.dir, "clients.crl", &[&pki.ops], (2030, 1, 1));
    let block = tls_block(Some("required")).replace(
        "ca: clients-ca.pem }",
        "ca: clients-ca.pem, crls: [clients.crl] }",
    );
    assert!(block.contains("crls"), "{block}");
    let listeners = format!("\n  - addr: \"127.0.0.1:0\"{block}");
    let (gw, gateway) = start_gw(&pki, up.addr, &listeners).await;
    let admitted = |leaf: &Leaf| {
        let cfg = client_config(&pki, Some(leaf), &[], BOTH);
        let addr = gw[0];
        async move {
            match connect(addr, "a.test", cfg).await {
                Ok(mut s) => {
                    let buf =
                        exchange(&mut s, &h1_request("GET", "/machine/status", None, &[])).await;
                    !buf.is_empty() && parse_response(&buf).status == 200
                }
                Err(_) => false,
            }
        }
    };
    assert!(
        admitted(&pki.client).await,
        "a certificate the list does not name"
    );
    assert!(
        !admitted(&pki.ops).await,
        "a revoked certificate was admitted"
    );

    // A connection open under the first list; the new list also revokes
    // its certificate: the reload closes it and no new one is admitted.
    let cfg = client_config(&pki, Some(&pki.client), &[b"h2"], BOTH);
    let mut open = h2_over(connect(gw[0], "a.test", cfg).await.unwrap()).await;
    let r = h2_req(&mut open, "https", "GET", "/machine/status", None, &[]).await;
    assert_eq!(r.status, 200);
    pki.clients.crl(
        &pki.dir,
        "clients.crl",
        &[&pki.ops, &pki.client],
        (2030, 1, 1),
    );
    let a = gateway.reloader().reload(&gateway, Trigger::Admin).await;
    assert_eq!(a.result, Outcome::Reloaded, "{:?}", a.errors);
    let closed = closes_within_5s(&mut open).await;
    assert!(closed, "a connection of a revoked certificate stayed open");
    assert!(!admitted(&pki.client).await);

    // An expired list: nobody, not even a certificate it does not name.
    let fresh = pki.clients.client(&pki.dir, "fresh", "fresh-job");
    pki.clients.crl(&pki.dir, "clients.crl", &[], (2026, 1, 2));
    let a = gateway.reloader().reload(&gateway, Trigger::Admin).await;
    assert_eq!(a.result, Outcome::Reloaded, "{:?}", a.errors);
    assert!(
        !admitted(&fresh).await,
        "an expired revocation list admitted a client"
    );
    // A current list that names none of them: all admitted again.
    pki.clients.crl(&pki.dir, "clients.crl", &[], (2030, 1, 1));
    let a = gateway.reloader().reload(&gateway, Trigger::Admin).await;
    assert_eq!(a.result, Outcome::Reloaded, "{:?}", a.errors);
    assert!(admitted(&fresh).await);
    assert!(admitted(&pki.ops).await);
}

#[tokio::test]
async fn tls_requests_reach_the_upstream_marked_https_and_plain_ones_http() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;
    let t = viewer();
    let cfg = client_config(&pki, None, &[b"http/1.1"], BOTH);
    let r = h1_tls(
        gw[1],
        cfg,
        "GET",
        "/bots/1/flows",
        Some(&t),
        &[("X-Forwarded-Proto", "http")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let s = up.last();
    assert_eq!(s.header_all("x-forwarded-proto"), vec!["https"]);
    assert_eq!(s.header("x-rolegate-user"), Some("user-1"));

    // The plain listener of the same gateway says http.
    let r = req(
        gw[0],
        "GET",
        "/bots/1/flows",
        Some(&t),
        &["X-Forwarded-Proto: https"],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_all("x-forwarded-proto"), vec!["http"]);

    // The credential cookie is cleared with `Secure` over TLS (a browser
    // ignores a `__Host-`/`__Secure-` cookie without it), not over plain
    // HTTP (a browser refuses `Secure` from an http page).
    let cookie = format!("rg_session={t}");
    let cfg = client_config(&pki, None, &[b"http/1.1"], BOTH);
    let r = h1_tls(
        gw[1],
        cfg,
        "POST",
        "/.rolegate/logout",
        None,
        &[("Cookie", &cookie)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let set = r.header("set-cookie").unwrap();
    assert!(
        set.starts_with("rg_session=;") && set.ends_with("; Secure"),
        "{set}"
    );

    // Plain HTTP to the TLS port gets no answer, and the listener lives on.
    let buf = raw_bytes(gw[1], b"GET /api/status HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(
        !buf.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    let cfg = client_config(&pki, None, &[], BOTH);
    let r = h1_tls(gw[1], cfg, "GET", "/api/status", None, &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_with_a_default() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;
    let cfg = client_config(&pki, None, &[], BOTH);
    let cases: &[(&str, &Leaf)] = &[
        ("a.test", &pki.a),
        ("A.TEST", &pki.a),
        ("x.wild.test", &pki.wild),
        ("default.test", &pki.default),
        // No SNI at all (an IP address): the default.
        ("127.0.0.1", &pki.default),
    ];
    for (sni, want) in cases {
        let s = connect(gw[1], sni, cfg.clone())
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(server_cert(&s), der(want), "{sni}");
    }
    // A name no entry covers gets the default certificate, which the
    // client then rightly refuses (it is not valid for that name); the
    // wildcard covers exactly one label.
    for sni in ["other.test", "a.b.wild.test"] {
        assert!(connect(gw[1], sni, cfg.clone()).await.is_err(), "{sni}");
    }
}

#[tokio::test]
async fn tls12_only_and_tls13_only_clients_both_connect() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let cfg = client_config(&pki, None, &[], &[version]);
        let mut s = connect(gw[1], "a.test", cfg).await.unwrap();
        assert_eq!(s.get_ref().1.protocol_version(), Some(want));
        let buf = exchange(&mut s, &h1_request("GET", "/api/status", None, &[])).await;
        assert_eq!(parse_response(&buf).status, 200, "{want:?}");
    }
}

/// A ClientHello offering only TLS 1.0/1.1 (hand-made: rustls cannot
/// speak them) is refused: the server answers with an alert, never a
/// ServerHello.
#[tokio::test]
async fn tls10_and_tls11_client_hellos_are_refused() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;
    for legacy in [[3u8, 1], [3, 2]] {
        let mut hello = Vec::new();
        // client_version, random, empty session id
        hello.extend_from_slice(&legacy);
        hello.extend_from_slice(&[7u8; 32]);
        hello.push(0);
        // cipher suites: TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, TLS_RSA_WITH_AES_128_CBC_SHA
        hello.extend_from_slice(&[0, 4, 0xc0, 0x13, 0x00, 0x2f]);
        // compression: null
        hello.extend_from_slice(&[1, 0]);
        let mut handshake = vec![1u8, 0, (hello.len() >> 8) as u8, hello.len() as u8];
        handshake[1] = (hello.len() >> 16) as u8;
        handshake.extend_from_slice(&hello);
        let mut record = vec![
            0x16,
            3,
            1,
            (handshake.len() >> 8) as u8,
            handshake.len() as u8,
        ];
        record.extend_from_slice(&handshake);
        let mut s = TcpStream::connect(gw[1]).await.unwrap();
        let got = exchange(&mut s, &record).await;
        // Content type 0x15: an alert; 0x16 would be a ServerHello.
        assert!(
            got.is_empty() || got[0] == 0x15,
            "TLS {legacy:?} got a handshake reply: {got:?}"
        );
    }
    // The listener still serves.
    let r = h1_tls(
        gw[1],
        client_config(&pki, None, &[], BOTH),
        "GET",
        "/api/status",
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
}

// ------------------------------------------------------- client certificates

#[tokio::test]
async fn a_listener_requiring_client_certificates_refuses_handshakes_without_one() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;
    let t = viewer();
    // No certificate, or one from another CA: the handshake fails (with
    // TLS 1.3 the client learns it at its first read), nothing is served.
    for cert in [None, Some(&pki.foreign)] {
        let cfg = client_config(&pki, cert, &[], BOTH);
        if let Ok(mut s) = connect(gw[2], "a.test", cfg).await {
            let buf = exchange(&mut s, &h1_request("GET", "/api/status", None, &[])).await;
            assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
        }
    }
    assert_eq!(up.count(), 0);
    // A certificate from the client CA: served.
    let cfg = client_config(&pki, Some(&pki.client), &[], BOTH);
    let r = h1_tls(gw[2], cfg.clone(), "GET", "/bots/1/flows", Some(&t), &[]).await;
    assert_eq!(r.status, 200);
    let r = h1_tls(gw[2], cfg, "GET", "/machine/status", None, &[]).await;
    assert_eq!(r.status, 200);
}

/// A client certificate is judged per request: one that expires while its
/// connection stays open is refused there, and a new connection never
/// resumes the session of an earlier handshake (which would bring the
/// certificate back unchecked): it is verified afresh.
#[tokio::test]
async fn an_expired_client_certificate_is_refused_on_open_and_new_connections() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let brief = pki
        .clients
        .client_until(&pki.dir, "brief", "batch-job", now + 3);
    let cfg = client_config(&pki, Some(&brief), &[b"h2"], BOTH);
    let mut h2 = h2_over(connect(gw[1], "a.test", cfg.clone()).await.unwrap()).await;
    let r = h2_req(&mut h2, "https", "GET", "/machine/status", None, &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The first connection got no ticket or session to resume.
    let again = connect(gw[1], "a.test", cfg.clone()).await.unwrap();
    assert_eq!(
        again.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    drop(again);
    // Past `notAfter` (seconds resolution: one more to be sure).
    let expired = std::time::UNIX_EPOCH + Duration::from_secs(now + 4);
    if let Ok(wait) = expired.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(200)).await;
    }
    let before = up.count();
    let r = h2_req(&mut h2, "https", "GET", "/machine/status", None, &[]).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (403, "client_cert_required")
    );
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("validity period"),
        "{}",
        r.json()
    );
    assert_eq!(up.count(), before, "a refused request reached the upstream");
    // A new connection verifies the certificate again: the handshake (or
    // the first read after it, in TLS 1.3) fails.
    if let Ok(mut s) = connect(gw[1], "a.test", cfg).await {
        let buf = exchange(&mut s, &h1_request("GET", "/machine/status", None, &[])).await;
        assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    }
}

#[tokio::test]
async fn routes_demand_client_certificates_on_optional_listeners() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;
    let t = viewer();
    let none = client_config(&pki, None, &[], BOTH);
    let batch = client_config(&pki, Some(&pki.client), &[], BOTH);
    let ops = client_config(&pki, Some(&pki.ops), &[], BOTH);

    // Without a certificate: ordinary routes work, certificate routes are
    // 403 `client_cert_required` (a token does not make up for it).
    let r = h1_tls(gw[1], none.clone(), "GET", "/bots/1/flows", Some(&t), &[]).await;
    assert_eq!(r.status, 200);
    let before = up.count();
    for (path, token) in [("/machine/status", None), ("/ops/x", Some(t.as_str()))] {
        let r = h1_tls(gw[1], none.clone(), "GET", path, token, &[]).await;
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.error(), "client_cert_required", "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.json()["request_id"].is_string());
    }
    // Client-supplied headers claiming a certificate change nothing and
    // never reach the upstream.
    let claims = [
        ("X-SSL-Client-Verify", "SUCCESS"),
        ("X-SSL-Client-S-DN", "CN=ops-console"),
        ("X-Client-Cert", "ops-console"),
        ("Client-Cert", ":AAAA:"),
    ];
    let r = h1_tls(gw[1], none.clone(), "GET", "/machine/status", None, &claims).await;
    assert_eq!(r.status, 403);
    assert_eq!(up.count(), before, "a refused request reached the upstream");

    // Any verified certificate opens `client_cert: required`.
    let r = h1_tls(
        gw[1],
        batch.clone(),
        "GET",
        "/machine/status",
        None,
        &claims,
    )
    .await;
    assert_eq!(r.status, 200);
    let s = up.last();
    for (k, _) in claims {
        assert_eq!(s.header(k), None, "{k} reached the upstream");
    }
    // `allow` lists names: batch-job is not on it, ops-console is.
    let r = h1_tls(gw[1], batch, "GET", "/ops/x", Some(&t), &[]).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (403, "client_cert_required")
    );
    assert!(
        r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("not one this route allows")
    );
    let r = h1_tls(gw[1], ops.clone(), "GET", "/ops/x", Some(&t), &[]).await;
    assert_eq!(r.status, 200);
    // The certificate is a requirement, not an identity: a token is still
    // needed on a non-public route.
    let r = h1_tls(gw[1], ops, "GET", "/ops/x", None, &[]).await;
    assert_eq!((r.status, r.error().as_str()), (401, "missing_token"));
    // Over plain HTTP there is never a certificate.
    let r = req(gw[0], "GET", "/machine/status", None, &[]).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (403, "client_cert_required")
    );
    // A certificate another CA issued fails the handshake even where it
    // is optional.
    let cfg = client_config(&pki, Some(&pki.foreign), &[], BOTH);
    if let Ok(mut s) = connect(gw[1], "a.test", cfg).await {
        let buf = exchange(&mut s, &h1_request("GET", "/api/status", None, &[])).await;
        assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    }
}

// ------------------------------------------------------------------ HTTP/2

#[tokio::test]
async fn alpn_negotiates_h2_and_http11() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;
    let t = viewer();
    let s = connect(
        gw[1],
        "a.test",
        client_config(&pki, None, &[b"h2", b"http/1.1"], BOTH),
    )
    .await
    .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = h2_over(s).await;
    let r = h2_req(&mut h2, "https", "GET", "/bots/1/flows", Some(&t), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("app.test"));
    assert_eq!(seen.uri, "/bots/1/flows");
    // Several requests on one connection.
    for _ in 0..3 {
        let r = h2_req(&mut h2, "https", "GET", "/api/status", None, &[]).await;
        assert_eq!(r.status, 200);
    }
    let s = connect(
        gw[1],
        "a.test",
        client_config(&pki, None, &[b"http/1.1"], BOTH),
    )
    .await
    .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn h2c_prior_knowledge_only_where_enabled() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;
    let t = viewer();
    let mut h2 = h2_over(TcpStream::connect(gw[3]).await.unwrap()).await;
    let r = h2_req(&mut h2, "http", "GET", "/bots/1/flows", Some(&t), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("x-forwarded-proto"), Some("http"));
    // HTTP/1.1 still works on the h2c listener.
    let r = req(gw[3], "GET", "/bots/1/flows", Some(&t), &[]).await;
    assert_eq!(r.status, 200);
    // A preface or a head that arrives in pieces: the bytes read to tell
    // which it is reach the connection's parser as sent.
    let mut s = TcpStream::connect(gw[3]).await.unwrap();
    for piece in [&b"PRI * HTTP/2.0\r"[..], b"\n\r\nSM\r\n\r"] {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.write_all(b"\n").await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let mut c = RawH2 { s, buf: Vec::new() };
    c.send(1, &base_fields("/bots/1/flows", &format!("Bearer {t}")))
        .await;
    assert_eq!(c.outcome(1).await, Ok(200));
    let mut s = TcpStream::connect(gw[3]).await.unwrap();
    s.write_all(b"GE").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rest = format!(
        "T /bots/1/flows HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(rest.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    // Without h2c, the preface is refused.
    let (send, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(TcpStream::connect(gw[0]).await.unwrap()),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let mut send = send;
    let req = http::Request::builder()
        .uri("http://app.test/api/status")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(send.send_request(req).await.is_err());
    let _ = driver.await;
}

/// A raw HTTP/2 client: frames written by hand, so a request can carry
/// what real clients refuse to send (connection-specific headers).
struct RawH2<S> {
    s: S,
    buf: Vec<u8>,
}

/// Frame types and flags used here.
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM_HEADERS: u8 = 0x5;

impl<S: AsyncRead + AsyncWrite + Unpin> RawH2<S> {
    async fn open(mut s: S) -> RawH2<S> {
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        RawH2 { s, buf: Vec::new() }
    }

    /// Sends a request on `stream` with every field as a literal without
    /// indexing (no Huffman).
    async fn send(&mut self, stream: u32, fields: &[(&str, &str)]) {
        let mut block = Vec::new();
        for (k, v) in fields {
            block.push(0);
            hpack_len(&mut block, k.len());
            block.extend_from_slice(k.as_bytes());
            hpack_len(&mut block, v.len());
            block.extend_from_slice(v.as_bytes());
        }
        self.s
            .write_all(&frame(HEADERS, END_STREAM_HEADERS, stream, &block))
            .await
            .unwrap();
    }

    /// The next frame: (type, flags, stream, payload); `None` at the end.
    async fn next(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        loop {
            if self.buf.len() >= 9 {
                let len = (self.buf[0] as usize) << 16
                    | (self.buf[1] as usize) << 8
                    | self.buf[2] as usize;
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
                    return Some((f[3], f[4], stream, f[9..].to_vec()));
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no frame in time"),
            }
        }
    }

    /// How stream `stream` ended: `Ok(status)` for a response head whose
    /// `:status` is a static-table entry, `Err(reason)` for a reset.
    async fn outcome(&mut self, stream: u32) -> Result<u16, String> {
        while let Some((ty, _, id, payload)) = self.next().await {
            match ty {
                HEADERS if id == stream => {
                    // An indexed :status of the static table (RFC 7541 A).
                    let status = match payload.first() {
                        Some(0x88) => 200,
                        Some(0x89) => 204,
                        Some(0x8c) => 400,
                        Some(0x8d) => 404,
                        Some(0x8e) => 500,
                        // A literal :status (name index 8..=14), value raw.
                        Some(b) if b & 0xf0 == 0 || b & 0xc0 == 0x40 => {
                            let v = &payload[2..2 + (payload[1] & 0x7f) as usize];
                            std::str::from_utf8(v).unwrap().parse().unwrap()
                        }
                        other => panic!("unexpected response head {other:?}"),
                    };
                    return Ok(status);
                }
                RST_STREAM if id == stream => return Err(format!("reset {:?}", payload)),
                GOAWAY => return Err("goaway".into()),
                _ => {}
            }
        }
        Err("closed".into())
    }

    /// The server's SETTINGS as (identifier, value) pairs.
    async fn settings(&mut self) -> Vec<(u16, u32)> {
        while let Some((ty, flags, _, p)) = self.next().await {
            if ty == SETTINGS && flags & 1 == 0 {
                return p
                    .chunks(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect();
            }
        }
        panic!("no SETTINGS from the server");
    }
}

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK string length, 7-bit prefix, no Huffman.
fn hpack_len(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

fn base_fields<'a>(path: &'a str, auth: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "app.test"),
        (":path", path),
        ("authorization", auth),
    ]
}

#[tokio::test]
async fn h2_connection_specific_headers_are_refused_and_limits_advertised() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;
    let auth = format!("Bearer {}", viewer());
    let mut c = RawH2::open(TcpStream::connect(gw[3]).await.unwrap()).await;
    // The limits: 100 streams, header list = listen.max_header_bytes.
    let settings = c.settings().await;
    assert!(settings.contains(&(0x3, 100)), "{settings:?}");
    assert!(settings.contains(&(0x6, 16384)), "{settings:?}");
    // A clean request first.
    c.send(1, &base_fields("/bots/1/flows", &auth)).await;
    assert_eq!(c.outcome(1).await, Ok(200));
    let before = up.count();
    let mut id = 3;
    for (k, v) in [
        ("connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("keep-alive", "timeout=5"),
        ("upgrade", "websocket"),
        ("proxy-connection", "keep-alive"),
        ("te", "gzip"),
    ] {
        let mut f = base_fields("/bots/1/flows", &auth);
        f.push((k, v));
        c.send(id, &f).await;
        let out = c.outcome(id).await;
        assert!(out.is_err() || out == Ok(400), "{k}: {out:?}");
        id += 2;
    }
    assert_eq!(
        up.count(),
        before,
        "a connection-specific header reached the upstream"
    );
    // `te: trailers` is the one allowed TE; it is not forwarded.
    let mut f = base_fields("/bots/1/flows", &auth);
    f.push(("te", "trailers"));
    c.send(id, &f).await;
    assert_eq!(c.outcome(id).await, Ok(200));
    assert_eq!(up.last().header("te"), None);
}

/// h2 hands the pipeline a `:path` with its `#fragment` cut off (http's
/// URI parser); the connection's mirror saw it whole, so the request is
/// refused like an HTTP/1.1 one, and so is the rest of that connection.
#[tokio::test]
async fn h2_fragments_in_path_are_refused() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;
    let auth = format!("Bearer {}", viewer());
    for path in [
        "/bots/1/flows#frag",
        "/bots/1/flows?x=1#f",
        "/bots/1/flows#f?x=1",
    ] {
        let tls = connect(gw[1], "a.test", client_config(&pki, None, &[b"h2"], BOTH))
            .await
            .unwrap();
        let mut over_tls = RawH2::open(tls).await;
        let mut h2c = RawH2::open(TcpStream::connect(gw[3]).await.unwrap()).await;
        for (proto, outcome) in [
            ("h2", {
                over_tls.send(1, &base_fields("/bots/1/flows", &auth)).await;
                assert_eq!(over_tls.outcome(1).await, Ok(200));
                over_tls.send(3, &base_fields(path, &auth)).await;
                let first = over_tls.outcome(3).await;
                over_tls.send(5, &base_fields("/bots/1/flows", &auth)).await;
                (first, over_tls.outcome(5).await)
            }),
            ("h2c", {
                h2c.send(1, &base_fields(path, &auth)).await;
                let first = h2c.outcome(1).await;
                h2c.send(3, &base_fields("/bots/1/flows", &auth)).await;
                (first, h2c.outcome(3).await)
            }),
        ] {
            assert_eq!(outcome, (Ok(400), Ok(400)), "{proto} {path}");
        }
    }
    assert_eq!(
        up.count(),
        3,
        "only the clean first requests were forwarded"
    );
    // `#` encoded is data.
    let mut c = RawH2::open(TcpStream::connect(gw[3]).await.unwrap()).await;
    c.send(1, &base_fields("/files/a%23b", &auth)).await;
    assert_eq!(c.outcome(1).await, Ok(200));
    assert_eq!(up.last().uri, "/files/a%23b");
}

#[tokio::test]
async fn h2_host_must_agree_with_authority() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;
    let t = viewer();
    let s = connect(gw[1], "a.test", client_config(&pki, None, &[b"h2"], BOTH))
        .await
        .unwrap();
    let mut h2 = h2_over(s).await;
    let r = h2_req(
        &mut h2,
        "https",
        "GET",
        "/bots/1/flows",
        Some(&t),
        &[("host", "evil.test")],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error(), "bad_request");
    assert!(
        r.json()["reason"].as_str().unwrap().contains(":authority"),
        "{:?}",
        r.json()
    );
    let r = h2_req(
        &mut h2,
        "https",
        "GET",
        "/bots/1/flows",
        Some(&t),
        &[("host", "APP.test")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1);
}

// ------------------------------------------------------------ attack table

/// What one attack must get.
enum Want {
    /// This status and JSON `error`, and nothing reaches the upstream.
    Refused(u16, &'static str),
    /// 200, forwarded as this path, with the verified identity only.
    Forwarded(&'static str),
}

struct Attack {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    token: Option<String>,
    headers: Vec<(&'static str, &'static str)>,
    want: Want,
}

fn attacks() -> Vec<Attack> {
    let t = || Some(token_with(json!({ "sub": "alice", "roles": ["viewer"] })));
    let expired = sign(
        Algorithm::RS256,
        None,
        &claims(ISS_RSA, json!({ "roles": ["viewer"], "exp": now() - 120 })),
    );
    let none = forge(
        &json!({ "alg": "none", "typ": "JWT" }),
        &claims(ISS_RSA, json!({ "roles": ["editor"] })),
        b"",
    );
    let a = |what, method, path: &'static str, token: Option<String>, want| Attack {
        what,
        method,
        path,
        token,
        headers: Vec::new(),
        want,
    };
    let mut v = vec![
        a(
            "encoded dot segment",
            "GET",
            "/bots/1/%2e%2e/publish",
            t(),
            Want::Refused(400, "bad_request"),
        ),
        a(
            "dot dot",
            "GET",
            "/bots/1/../1/flows",
            t(),
            Want::Refused(400, "bad_request"),
        ),
        a(
            "dot",
            "GET",
            "/bots/1/./flows",
            t(),
            Want::Refused(400, "bad_request"),
        ),
        a(
            "encoded slash",
            "GET",
            "/bots/1%2Fflows",
            t(),
            Want::Refused(400, "bad_request"),
        ),
        a(
            "encoded backslash",
            "GET",
            "/bots/1%5Cflows",
            t(),
            Want::Refused(400, "bad_request"),
        ),
        a(
            "double encoding",
            "GET",
            "/files/%252e%252e/x",
            t(),
            Want::Refused(400, "bad_request"),
        ),
        a(
            "semicolon",
            "GET",
            "/bots/1/flows;x=1",
            t(),
            Want::Refused(400, "bad_request"),
        ),
        a(
            "method case",
            "get",
            "/bots/1/flows",
            t(),
            Want::Refused(400, "bad_request"),
        ),
        a(
            "method case on public",
            "Get",
            "/api/status",
            None,
            Want::Refused(400, "bad_request"),
        ),
        a(
            "case of path",
            "GET",
            "/BOTS/1/flows",
            t(),
            Want::Refused(404, "no_route"),
        ),
        a(
            "no token",
            "GET",
            "/bots/1/flows",
            None,
            Want::Refused(401, "missing_token"),
        ),
        a(
            "expired token",
            "GET",
            "/bots/1/flows",
            Some(expired),
            Want::Refused(401, "invalid_token"),
        ),
        a(
            "alg none",
            "GET",
            "/bots/1/flows",
            Some(none),
            Want::Refused(401, "invalid_token"),
        ),
        a(
            "garbage token",
            "GET",
            "/bots/1/flows",
            Some("x.y.z".into()),
            Want::Refused(401, "invalid_token"),
        ),
        a(
            "not allowed",
            "PUT",
            "/bots/1/flows",
            t(),
            Want::Refused(403, "forbidden"),
        ),
        a(
            "merged slashes",
            "GET",
            "//bots//1/flows",
            t(),
            Want::Forwarded("/bots/1/flows"),
        ),
        a(
            "unreserved escape",
            "GET",
            "/bots/1/%66lows",
            t(),
            Want::Forwarded("/bots/1/flows"),
        ),
    ];
    v.push(Attack {
        what: "spoofed identity",
        method: "GET",
        path: "/bots/1/flows",
        token: t(),
        headers: vec![
            ("x-rolegate-user", "admin"),
            ("x-rolegate-roles", "super-admin"),
            ("remote-user", "admin"),
            ("x-original-url", "/bots/1/publish"),
            ("x-forwarded-for", "10.9.9.9"),
            ("x-ssl-client-s-dn", "CN=ops-console"),
            ("x-amzn-mtls-clientcert-subject", "CN=ops-console"),
            ("x-amzn-mtls-clientcert", "-----BEGIN%20CERTIFICATE-----"),
            ("cloudfront-viewer-cert-present", "1"),
            ("cloudfront-viewer-address", "10.9.9.9:443"),
        ],
        want: Want::Forwarded("/bots/1/flows"),
    });
    v
}

/// Runs the attack table through `send` and checks every answer and what
/// the upstream saw.
async fn run_attacks<F, Fut>(up: &Upstream, proto: &str, mut send: F)
where
    F: FnMut(&'static str, &'static str, Option<String>, Vec<(&'static str, &'static str)>) -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    for a in attacks() {
        let before = up.count();
        let r = send(a.method, a.path, a.token, a.headers.clone()).await;
        let ctx = format!("{proto} {}: {}", a.what, String::from_utf8_lossy(&r.body));
        match a.want {
            Want::Refused(status, code) => {
                assert_eq!(r.status, status, "{ctx}");
                assert_eq!(r.error(), code, "{ctx}");
                assert_eq!(r.header("content-type"), Some("application/json"), "{ctx}");
                assert_eq!(up.count(), before, "{ctx}: reached the upstream");
            }
            Want::Forwarded(path) => {
                assert_eq!(r.status, 200, "{ctx}");
                let s = up.last();
                assert_eq!(s.uri, path, "{ctx}");
                assert_eq!(s.header_all("x-rolegate-user"), vec!["alice"], "{ctx}");
                assert_eq!(s.header_all("x-rolegate-roles"), vec!["viewer"], "{ctx}");
                for (k, _) in &a.headers {
                    if !k.starts_with("x-rolegate-") && *k != "x-forwarded-for" {
                        assert_eq!(s.header(k), None, "{ctx}: {k} reached the upstream");
                    }
                }
                assert_eq!(s.header_all("x-forwarded-for"), vec!["127.0.0.1"], "{ctx}");
            }
        }
    }
}

#[tokio::test]
async fn the_attack_table_gets_the_same_answers_over_http1_and_http2() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;

    // HTTP/1.1 over TLS.
    let cfg = client_config(&pki, None, &[b"http/1.1"], BOTH);
    let tls_addr = gw[1];
    run_attacks(&up, "h1 tls", |m, p, t, h| {
        let cfg = cfg.clone();
        async move { h1_tls(tls_addr, cfg, m, p, t.as_deref(), &h).await }
    })
    .await;

    // HTTP/2 over TLS (ALPN), one connection for the whole table.
    let s = connect(gw[1], "a.test", client_config(&pki, None, &[b"h2"], BOTH))
        .await
        .unwrap();
    let h2 = h2_over(s).await;
    run_attacks(&up, "h2 tls", |m, p, t, h| {
        let mut h2 = h2.clone();
        async move { h2_req(&mut h2, "https", m, p, t.as_deref(), &h).await }
    })
    .await;

    // h2c.
    let h2c = h2_over(TcpStream::connect(gw[3]).await.unwrap()).await;
    run_attacks(&up, "h2c", |m, p, t, h| {
        let mut h2 = h2c.clone();
        async move { h2_req(&mut h2, "http", m, p, t.as_deref(), &h).await }
    })
    .await;
}

// ---------------------------------------------------------------- redirect

#[tokio::test]
async fn redirect_listeners_answer_308_to_https() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let listeners = format!(
        "\n  - addr: \"127.0.0.1:0\"{}\n  - {{ addr: \"127.0.0.1:0\", redirect_https: 8443 }}\n  - {{ addr: \"127.0.0.1:0\", redirect_https: 443 }}\n  - {{ addr: \"127.0.0.1:0\", redirect_https: \"https://gw.example/\" }}",
        tls_block(None)
    );
    let gw = start(&pki, up.addr, &listeners).await;
    let r = req(gw[1], "GET", "/bots/1/flows?x=1", None, &[]).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://app.test:8443/bots/1/flows?x=1")
    );
    let r = req(gw[2], "POST", "/a/b", Some(&viewer()), &[]).await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://app.test/a/b"));
    let r = req(gw[3], "GET", "/", None, &[]).await;
    assert_eq!(r.header("location"), Some("https://gw.example/"));
    // No host to redirect to: refused like any request.
    let r = raw(gw[1], b"GET /x HTTP/1.0\r\n\r\n").await;
    assert_eq!((r.status, r.error().as_str()), (400, "bad_request"));
    assert_eq!(up.count(), 0, "a redirect listener forwarded a request");
    // The TLS listener of the same gateway serves.
    let r = h1_tls(
        gw[0],
        client_config(&pki, None, &[], BOTH),
        "GET",
        "/api/status",
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
}

// ------------------------------------------------------------------- check

fn check(dir: &Path) -> (i32, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rolegate"))
        .args(["check", "-c", "rolegate.yaml"])
        .current_dir(dir)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn bad_certificate_files_are_check_errors_with_file_and_line() {
    let pki = Pki::new();
    std::fs::write(pki.dir.join("garbage.pem"), "not a certificate\n").unwrap();
    pki.clients.crl(&pki.dir, "clients.crl", &[], (2030, 1, 1));
    // a.pem with default.key: a key that does not belong to the certificate.
    let cfg = r#"upstreams: { app: { url: "http://127.0.0.1:9" } }
routes:
  - { name: s, match: { path: /s }, public: true }
listeners:
  - addr: "127.0.0.1:0"
    tls:
      cert: missing.pem
      key: default.key
  - addr: "127.0.0.1:0"
    tls:
      cert: a.pem
      key: default.key
      sni:
        - { names: [b.test], cert: garbage.pem, key: a.key }
      client_auth: { mode: sometimes, ca: nowhere.pem, crls: [garbage.pem] }
  - { addr: "127.0.0.1:0", redirect_https: "http://plain.example" }
"#;
    std::fs::write(pki.dir.join("rolegate.yaml"), cfg).unwrap();
    let (code, out) = check(&pki.dir);
    assert_eq!(code, 2, "{out}");
    for (line, what) in [
        (7, "missing.pem"),
        (11, "do not belong together"),
        (14, "garbage.pem"),
        (15, "client_auth.mode"),
        (15, "nowhere.pem"),
        (15, "client_auth.crls"),
        (16, "redirect_https"),
    ] {
        assert!(
            out.contains(&format!("rolegate.yaml:{line}: error"))
                && out
                    .lines()
                    .any(|l| l.starts_with(&format!("rolegate.yaml:{line}:")) && l.contains(what)),
            "line {line} ({what}) not reported:\n{out}"
        );
    }

    // The same files, fixed: clean.
    let fixed = cfg
        .replace("missing.pem", "default.pem")
        .replace("key: default.key\n      sni", "key: a.key\n      sni")
        .replace("garbage.pem, key: a.key", "wild.pem, key: wild.key")
        .replace(
            "mode: sometimes, ca: nowhere.pem, crls: [garbage.pem]",
            "mode: optional, ca: clients-ca.pem, crls: [clients.crl]",
        )
        .replace("http://plain.example", "https://gw.example");
    std::fs::write(pki.dir.join("rolegate.yaml"), fixed).unwrap();
    let (code, out) = check(&pki.dir);
    assert_eq!(code, 0, "{out}");

    // `listen.tls` and `listeners:` together are an error, as are two
    // listeners on one address.
    let both = format!(
        "listen: {{ tls: {{ cert: default.pem, key: default.key }} }}\nupstreams: {{ app: {{ url: \"http://127.0.0.1:9\" }} }}\nroutes:\n  - {{ name: s, match: {{ path: /s }}, public: true }}\nlisteners:\n  - {{ addr: \"127.0.0.1:{p}\" }}\n  - {{ addr: \"0.0.0.0:{p}\" }}\n",
        p = free_port()
    );
    std::fs::write(pki.dir.join("rolegate.yaml"), both).unwrap();
    let (code, out) = check(&pki.dir);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot be combined"), "{out}");
    assert!(
        out.contains("rolegate.yaml:7: error") && out.contains("already used"),
        "{out}"
    );
}

/// An upstream's trailers reach an HTTP/2 client cleaned as its head is:
/// no identity field, no hop-by-hop field; the rest (`grpc-status`) kept.
#[tokio::test]
async fn upstream_trailers_reach_http2_clients_cleaned() {
    let pki = Pki::new();
    // A raw HTTP/1.1 upstream answering chunked with trailers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    got.clear();
                    let answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n2\r\nok\r\n0\r\nX-Rolegate-User: admin\r\nGrpc-Status: 0\r\nKeep-Alive: timeout=5\r\n\r\n";
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let addrs = start(&pki, up, "\n  - { addr: \"127.0.0.1:0\", h2c: true }").await;
    let mut h2 = h2_over(TcpStream::connect(addrs[0]).await.unwrap()).await;
    let t = viewer();
    let req = http::Request::builder()
        .uri("http://app.test/bots/1/flows")
        .header("authorization", format!("Bearer {t}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2.send_request(req).await.expect("h2 response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap();
    let trailers = body.trailers().cloned().expect("trailers");
    assert_eq!(body.to_bytes(), "ok");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("x-rolegate-user"), None, "{trailers:?}");
    assert_eq!(trailers.get("keep-alive"), None, "{trailers:?}");
}

#[tokio::test]
async fn h2c_listeners_close_connections_that_send_no_request_in_time() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let addrs = start(&pki, up.addr, "\n  - { addr: \"127.0.0.1:0\", h2c: true }").await;
    // header_read_timeout is 10 s by default: a silent client, or one
    // stuck inside the HTTP/2 preface, is closed after it (generous bound:
    // it must be closed at all, not held forever).
    let probes = [&b""[..], b"PRI * HTTP/2"].map(|sent| {
        let addr = addrs[0];
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(sent).await.unwrap();
            let mut buf = [0u8; 64];
            let closed = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await;
            assert!(
                matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
                "{:?}: connection not closed: {closed:?}",
                String::from_utf8_lossy(sent)
            );
        })
    });
    for p in probes {
        p.await.unwrap();
    }
}

#[tokio::test]
async fn tls_h2_connections_without_a_preface_are_closed() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;
    // ALPN chose h2; the client then sends nothing, or half the preface.
    // header_read_timeout (10 s) closes it (generous bound: closed at
    // all, not held forever as HTTP/2 itself would).
    let probes = [&b""[..], b"PRI * HTTP/2"].map(|sent| {
        let cfg = client_config(&pki, None, &[b"h2"], BOTH);
        let addr = gw[1];
        tokio::spawn(async move {
            let mut s = connect(addr, "a.test", cfg).await.unwrap();
            assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            s.write_all(sent).await.unwrap();
            s.flush().await.unwrap();
            // The server's SETTINGS may come first; then the close.
            let mut buf = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
            assert!(
                closed.is_ok(),
                "{:?}: connection not closed ({} bytes received)",
                String::from_utf8_lossy(sent),
                buf.len()
            );
        })
    });
    for p in probes {
        p.await.unwrap();
    }
}

#[tokio::test]
async fn h2_cookie_fields_reach_an_http1_upstream_as_one_header() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gw = gateway(&pki, up.addr).await;
    let mut h2 = h2_over(TcpStream::connect(gw[3]).await.unwrap()).await;
    let r = h2_req(
        &mut h2,
        "http",
        "GET",
        "/bots/1/flows",
        Some(&viewer()),
        &[("cookie", "theme=dark"), ("cookie", "lang=en")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_all("cookie"), vec!["theme=dark; lang=en"]);
}
