//! PII masking end to end: a real upstream serves every shape (plain,
//! gzip, br, zstd, deflate, chunked, NDJSON, SSE, CSV, lying content type,
//! invalid JSON, a 100 MB stream); an agent gets masked answers, a
//! supervisor unmasked ones (and an audit record); nothing unmaskable is
//! ever passed through.

mod common;

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

const NAME: &str = "Asha Rao";
const PHONE: &str = "+91 98200 11223";
const EMAIL: &str = "asha.rao@example.com";
const CARD: &str = "4242 4242 4242 4242";

fn customer() -> Value {
    json!({
        "customer": { "id": "c-1", "name": NAME, "phone": PHONE, "email": EMAIL, "tier": "gold" },
        "conversations": [{ "id": "cv-1", "transcript": format!("call me on {PHONE}, card {CARD}") }]
    })
}

/// The secrets that must never reach an agent, in the spellings a leak
/// would take.
fn leaks(body: &[u8]) -> Vec<&'static str> {
    let s = String::from_utf8_lossy(body);
    [
        "Asha Rao",
        "98200 11223",
        "9820011223",
        "asha.rao",
        "4242 4242 4242 4242",
        "Rao",
    ]
    .into_iter()
    .filter(|needle| s.contains(needle))
    .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn decode(enc: Option<&str>, body: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    match enc {
        Some("gzip") => flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .map(|_| ())
            .unwrap(),
        Some("deflate") => flate2::read::ZlibDecoder::new(body)
            .read_to_end(&mut out)
            .map(|_| ())
            .unwrap(),
        Some("br") => brotli::Decompressor::new(body, 4096)
            .read_to_end(&mut out)
            .map(|_| ())
            .unwrap(),
        Some("zstd") => out = zstd::decode_all(body).unwrap(),
        _ => out = body.to_vec(),
    }
    out
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;
/// Requests the shapes upstream saw: path, and the partial or conditional
/// headers among them (`None`: none).
type Seen = Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

/// Request headers a masked route must not forward: partial, conditional,
/// and asking for a digest of the (unmasked) answer.
const PARTIAL_OR_CONDITIONAL: [&str; 10] = [
    "range",
    "request-range",
    "if-range",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "want-repr-digest",
    "want-content-digest",
    "want-digest",
];

/// All of them, as a client would send them.
const PARTIAL_HEADERS: [&str; 10] = [
    "Range: bytes=0-20",
    "Request-Range: bytes=0-20",
    "If-Range: \"v1-strong\"",
    "If-None-Match: \"v1-strong\"",
    "If-Modified-Since: Tue, 01 Jan 2030 00:00:00 GMT",
    "If-Match: \"v1-strong\"",
    "If-Unmodified-Since: Tue, 01 Jan 2030 00:00:00 GMT",
    "Want-Repr-Digest: sha-256=10",
    "Want-Content-Digest: sha-256=10",
    "Want-Digest: SHA-256",
];

/// Digests of the upstream's (unmasked) body: gone from masked answers.
const DIGESTS: [&str; 3] = ["repr-digest", "content-digest", "digest"];

/// Cache directives CDNs obey before `Cache-Control`: gone from every
/// answer of a masked route.
const CDN_CACHE: [&str; 6] = [
    "surrogate-control",
    "cdn-cache-control",
    "cloudflare-cdn-cache-control",
    "vercel-cdn-cache-control",
    "edge-control",
    "x-accel-expires",
];

fn full(ct: &str, enc: Option<&str>, body: Vec<u8>) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)).boxed());
    r.headers_mut().insert("content-type", ct.parse().unwrap());
    if let Some(e) = enc {
        r.headers_mut()
            .insert("content-encoding", e.parse().unwrap());
    }
    r.headers_mut()
        .insert("etag", "\"v1-strong\"".parse().unwrap());
    r.headers_mut()
        .insert("cache-control", "public, max-age=600".parse().unwrap());
    for name in DIGESTS {
        r.headers_mut().insert(
            name,
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
                .parse()
                .unwrap(),
        );
    }
    for name in CDN_CACHE {
        r.headers_mut().insert(name, "max-age=600".parse().unwrap());
    }
    r
}

/// A chunked body from pieces (no Content-Length).
fn chunked(ct: &str, pieces: Vec<Vec<u8>>) -> hyper::Response<Body> {
    let stream = futures_util::stream::iter(
        pieces
            .into_iter()
            .map(|p| Ok::<_, Infallible>(Frame::data(Bytes::from(p)))),
    );
    let mut r = hyper::Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert("content-type", ct.parse().unwrap());
    r
}

/// Serves the shapes; `/shape/stream` waits for `release` after its first
/// chunk, so a test can prove the first bytes arrive before the upstream is done.
async fn shapes_upstream(release: Arc<Notify>) -> (std::net::SocketAddr, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let rec = seen.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (release, rec) = (release.clone(), rec.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let (release, rec) = (release.clone(), rec.clone());
                    async move {
                        // The partial and conditional request headers that
                        // reached the upstream, if any.
                        let partial: Vec<String> = PARTIAL_OR_CONDITIONAL
                            .iter()
                            .filter_map(|n| {
                                let v = req.headers().get(*n)?;
                                Some(format!("{n}: {}", v.to_str().unwrap()))
                            })
                            .collect();
                        rec.lock().unwrap().push((
                            req.uri().path().to_string(),
                            (!partial.is_empty()).then(|| partial.join(", ")),
                        ));
                        let doc = customer().to_string().into_bytes();
                        let resp = match req.uri().path() {
                            "/shape/plain" => full("application/json", None, doc),
                            "/shape/problem" => full("application/problem+json; charset=utf-8", None, doc),
                            "/shape/gzip" => full("application/json", Some("gzip"), gzip(&doc)),
                            "/shape/deflate" => full("application/json", Some("deflate"), deflate(&doc)),
                            "/shape/br" => full("application/json", Some("br"), brotli(&doc)),
                            "/shape/zstd" => full("application/json", Some("zstd"), zstd(&doc)),
                            "/shape/chunked" => chunked("application/json", doc.chunks(7).map(<[u8]>::to_vec).collect()),
                            "/shape/unicode-key" => full(
                                "application/json",
                                None,
                                format!(r#"{{"ph\u006fne":"{PHONE}","NAME":"{NAME}","name":"x","name":"{NAME}","Em\u0061il":"{EMAIL}"}}"#).into_bytes(),
                            ),
                            "/shape/ndjson" => {
                                let mut b = Vec::new();
                                for _ in 0..3 {
                                    b.extend_from_slice(customer().to_string().as_bytes());
                                    b.push(b'\n');
                                }
                                chunked("application/x-ndjson", b.chunks(11).map(<[u8]>::to_vec).collect())
                            }
                            "/shape/sse" => {
                                let ev = format!("event: profile\nid: 1\ndata: {}\n\n: keepalive\n\n", customer());
                                chunked("text/event-stream", ev.as_bytes().chunks(5).map(<[u8]>::to_vec).collect())
                            }
                            "/shape/csv" => full(
                                "text/csv",
                                None,
                                format!("id,name,email,phone,notes\nu1,\"{NAME}\",{EMAIL},{PHONE},\"says \"\"hi\"\", card {CARD}\"\n").into_bytes(),
                            ),
                            "/shape/stream-broken" => chunked(
                                "application/json",
                                vec![
                                    format!(r#"[{{"name":"{NAME}","phone":"{PHONE}"}},"#).into_bytes(),
                                    format!(r#"{{"name": {NAME} {PHONE} }}]"#).into_bytes(),
                                ],
                            ),
                            p if p.starts_with("/shape/badcsv") => {
                                // `badcsvN` whole (Content-Length), `badcsvNc` chunked.
                                let rest = &p["/shape/badcsv".len()..];
                                let (n, streamed) = match rest.strip_suffix('c') {
                                    Some(n) => (n, true),
                                    None => (rest, false),
                                };
                                let body = BAD_CSV[n.parse::<usize>().unwrap()].1.as_bytes().to_vec();
                                if streamed {
                                    chunked("text/csv", body.chunks(3).map(<[u8]>::to_vec).collect())
                                } else {
                                    full("text/csv", None, body)
                                }
                            }
                            "/shape/headers" => {
                                // PII in header values, and headers that must pass.
                                let mut r = full("application/json", None, doc.clone());
                                let h = r.headers_mut();
                                let disposition = format!("attachment; filename=\"{EMAIL}.json\"");
                                h.insert("content-disposition", disposition.parse().unwrap());
                                h.insert("location", format!("/customers/12345678?email={EMAIL}").parse().unwrap());
                                h.insert("x-customer-card", CARD.parse().unwrap());
                                h.insert("x-customer", EMAIL.parse().unwrap());
                                let escaped = EMAIL.replace('@', "%40");
                                h.insert("link", format!("</customers?email={escaped}&next=%2Fx>; rel=next").parse().unwrap());
                                h.insert("set-cookie", format!("who={EMAIL}; Max-Age=2592000; Path=/").parse().unwrap());
                                h.insert("x-ratelimit-reset", "1733600000".parse().unwrap());
                                h.insert("strict-transport-security", "max-age=31536000".parse().unwrap());
                                h.insert("x-raw", hyper::header::HeaderValue::from_bytes(b"caf\xe9").unwrap());
                                r
                            }
                            "/shape/json-as-sse" => full("text/event-stream", None, doc),
                            "/shape/json-as-csv" => full("text/csv", None, doc),
                            "/shape/semicolon-csv" => {
                                full("text/csv", None, format!("id;name;phone\nu1;{NAME};{PHONE}\n").into_bytes())
                            }
                            "/shape/two-encodings" => {
                                let body = gzip(format!("data: {}\n\n", customer()).as_bytes());
                                let mut r = full("text/event-stream", Some("identity"), body);
                                r.headers_mut().append("content-encoding", "gzip".parse().unwrap());
                                r
                            }
                            "/shape/two-types" => {
                                // Valid JSON, but which of the two types is it?
                                let mut r = full("application/json", None, doc.clone());
                                r.headers_mut().append("content-type", "text/plain".parse().unwrap());
                                r
                            }
                            "/shape/partial" => {
                                // A slice of the record: a bare string no key path names.
                                let mut r = full("application/json", None, format!("\"{NAME}\"").into_bytes());
                                *r.status_mut() = hyper::StatusCode::PARTIAL_CONTENT;
                                r.headers_mut().insert("content-range", "bytes 23-32/120".parse().unwrap());
                                r
                            }
                            "/shape/range-200" => {
                                let mut r = full("application/json", None, doc.clone());
                                r.headers_mut().insert("content-range", "bytes 0-99/120".parse().unwrap());
                                r
                            }
                            "/shape/conn-encoding" => {
                                // gzip, with its label named hop-by-hop.
                                let mut r = full("application/json", Some("gzip"), gzip(&doc));
                                r.headers_mut().insert("connection", "content-encoding".parse().unwrap());
                                r
                            }
                            "/shape/reason" => {
                                let mut r = full("application/json", None, b"{}".to_vec());
                                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                r.extensions_mut().insert(
                                    hyper::ext::ReasonPhrase::try_from(format!("{EMAIL} not found").into_bytes()).unwrap(),
                                );
                                r
                            }
                            "/shape/gzip-big" => {
                                // ~2 MiB of records in a few KiB of gzip: within
                                // buffer_bytes as declared, far past it decoded.
                                let mut list = String::from("[");
                                for i in 0..2000 {
                                    if i > 0 {
                                        list.push(',');
                                    }
                                    let mut c = customer();
                                    c["pad"] = json!("x".repeat(800));
                                    list.push_str(&c.to_string());
                                }
                                list.push(']');
                                full("application/json", Some("gzip"), gzip(list.as_bytes()))
                            }
                            "/shape/empty-write" => {
                                // A write's answer: 201, no body, no type.
                                let mut r = hyper::Response::new(Full::new(Bytes::new()).boxed());
                                *r.status_mut() = hyper::StatusCode::CREATED;
                                r
                            }
                            "/shape/lying" => full("application/json", None, b"<html><body>Asha Rao 98200 11223</body></html>".to_vec()),
                            "/shape/invalid" => full("application/json", None, doc[..doc.len() - 5].to_vec()),
                            "/shape/html" => full("text/html", None, format!("<p>{NAME}</p>").into_bytes()),
                            "/shape/double-encoding" => full("application/json", Some("gzip, br"), brotli(&gzip(&doc))),
                            "/shape/not-modified" => {
                                let mut r = hyper::Response::new(Full::new(Bytes::new()).boxed());
                                *r.status_mut() = hyper::StatusCode::NOT_MODIFIED;
                                r.headers_mut().insert("etag", "\"v1-strong\"".parse().unwrap());
                                r
                            }
                            "/shape/stream" => {
                                // ~100 MB: a JSON array of customers, generated on the fly.
                                let item = customer().to_string();
                                let per_chunk = 200;
                                let chunks = (100 * 1024 * 1024) / (item.len() * per_chunk) + 1;
                                let mut one = String::new();
                                for _ in 0..per_chunk {
                                    one.push_str(&item);
                                    one.push(',');
                                }
                                let one = Bytes::from(one);
                                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                                tokio::spawn(async move {
                                    tx.send(Ok(Frame::data(Bytes::from_static(b"[")))).await.unwrap();
                                    tx.send(Ok(Frame::data(one.clone()))).await.unwrap();
                                    release.notified().await;
                                    for _ in 1..chunks {
                                        if tx.send(Ok(Frame::data(one.clone()))).await.is_err() {
                                            return;
                                        }
                                    }
                                    let _ = tx.send(Ok(Frame::data(Bytes::from(item + "]")))).await;
                                });
                                let stream = tokio_stream_from(rx);
                                let mut r = hyper::Response::new(StreamBody::new(stream).boxed());
                                r.headers_mut().insert("content-type", "application/json".parse().unwrap());
                                r
                            }
                            _ => full("application/json", None, b"{}".to_vec()),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Invalid CSV that a lenient reader would pass with the name in it.
const BAD_CSV: [(&str, &str); 5] = [
    (
        "unterminated quote",
        "id,tier,name\r\nc1,\"gold,Jane Canary\r\n",
    ),
    (
        "quote inside an unquoted field",
        "id,tier,name\r\nc1,go\"ld,Jane Canary\r\n",
    ),
    (
        "text after a closing quote",
        "id,tier,name\r\nc1,\"gold\"x,Jane Canary\r\n",
    ),
    ("short row", "id,tier,name\r\nc1,Jane Canary\r\n"),
    ("long row", "id,tier,name\r\nc1,gold,x,Jane Canary\r\n"),
];

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

const RULES: &str = r#"
roles:
  agent: { grants: [customer.view] }
  supervisor: { includes: [agent], grants: [customer.pii.view] }
masks:
  pii:
    unmask_with: customer.pii.view
    case_insensitive: true
    fields:
      - { path: "$..phone", as: last4 }
      - { path: "$..email", as: email }
      - { path: "$..name", as: redact }
    detect: [email, phone, card]
    detect_in: ["$..transcript", "$..notes"]
routes:
  - { name: shapes, match: { methods: [GET], path: "/shape/{kind}" }, require: customer.view, mask: pii, record: "{kind}" }
  - { name: shape-write, match: { methods: [PUT], path: "/shape/{kind}" }, require: customer.view, mask: pii, record: "{kind}" }
"#;

async fn setup() -> (Gw, Arc<Notify>, Seen) {
    let release = Arc::new(Notify::new());
    let (up, seen) = shapes_upstream(release.clone()).await;
    let dir = scratch_dir("mask");
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{}upstreams:\n  app: {{ url: \"http://{up}\" }}\nrules: rules.yaml\nmasking: {{ audit_log: audit.jsonl, buffer_bytes: 65536 }}\n",
        identity_yaml()
    );
    (start_with_config(&dir, &cfg).await, release, seen)
}

fn agent() -> String {
    token_with(json!({ "sub": "agent-1", "sid": "a-1", "roles": ["agent"] }))
}

fn supervisor() -> String {
    token_with(json!({ "sub": "sup-1", "sid": "s-1", "roles": ["supervisor"] }))
}

#[tokio::test]
async fn every_shape_is_masked_for_an_agent_and_unmasked_for_a_supervisor() {
    let (gw, _release, _) = setup().await;
    let (a, s) = (agent(), supervisor());
    for shape in [
        "plain",
        "problem",
        "gzip",
        "deflate",
        "br",
        "zstd",
        "chunked",
        "unicode-key",
        "ndjson",
        "sse",
        "csv",
    ] {
        let path = format!("/shape/{shape}");
        let r = req(gw.addr, "GET", &path, Some(&a), &[]).await;
        assert_eq!(
            r.status,
            200,
            "{shape}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            leaks(&r.body),
            Vec::<&str>::new(),
            "{shape} leaked to an agent: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("content-encoding"), None, "{shape}");
        assert_eq!(
            r.header("etag"),
            None,
            "{shape}: a strong ETag of the unmasked body survived"
        );
        assert_eq!(
            r.header("cache-control"),
            Some("private, no-store"),
            "{shape}"
        );
        assert!(
            r.header("vary").unwrap_or("").contains("Authorization"),
            "{shape}"
        );
        for name in DIGESTS.iter().chain(&CDN_CACHE) {
            assert_eq!(r.header(name), None, "{shape}: {name} reached an agent");
        }
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert!(
            text.contains("1223"),
            "{shape}: last4 of the phone missing: {text}"
        );
        assert!(
            text.contains("a***@example.com"),
            "{shape}: masked email missing: {text}"
        );

        let r = req(gw.addr, "GET", &path, Some(&s), &[]).await;
        assert_eq!(r.status, 200, "{shape}");
        // Unmasked answers pass through as the upstream sent them (encoded).
        let text =
            String::from_utf8_lossy(&decode(r.header("content-encoding"), &r.body)).to_string();
        assert!(
            text.contains(EMAIL) && text.contains("98200 11223"),
            "{shape}: supervisor did not get the unmasked body: {text}"
        );
        assert_eq!(
            r.header("cache-control"),
            Some("private, no-store"),
            "{shape}: an unmasked PII answer must not be shared-cached"
        );
        for name in CDN_CACHE {
            assert_eq!(r.header(name), None, "{shape}: {name} reached a supervisor");
        }
        if shape == "plain" {
            // The upstream sent them; they describe what a supervisor gets.
            for name in DIGESTS {
                assert!(r.header(name).is_some(), "{name} of the unmasked body lost");
            }
        }
    }
    // The JSON shapes parse after masking, and the structure is intact.
    let r = req(gw.addr, "GET", "/shape/gzip", Some(&a), &[]).await;
    let v = r.json();
    assert_eq!(v["customer"]["name"], "[REDACTED]");
    assert_eq!(v["customer"]["tier"], "gold");
    let stars = v["customer"]["phone"]
        .as_str()
        .unwrap()
        .chars()
        .filter(|c| *c == '*')
        .count();
    assert!(stars > 5, "phone not masked: {v}");
    assert_eq!(
        r.header("content-length")
            .map(|l| l.parse::<usize>().unwrap()),
        Some(r.body.len())
    );
    // SSE keeps its fields and comments.
    let r = req(gw.addr, "GET", "/shape/sse", Some(&a), &[]).await;
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        text.contains("event: profile")
            && text.contains("id: 1")
            && !text.contains("keepalive")
            && text.contains("\n:\n"),
        "{text}"
    );
}

/// E-mail addresses in the answer's header values are masked for an agent
/// by the mask's `email` detector (also on a bodyless answer to HEAD), and
/// pass for a supervisor; ids and numbers in headers, a cookie's
/// attributes and the headers describing the body or a security policy
/// are left alone.
#[tokio::test]
async fn pii_in_response_headers_is_masked_for_an_agent() {
    let (gw, _release, _) = setup().await;
    let (a, s) = (agent(), supervisor());
    for method in ["GET", "HEAD"] {
        let r = req(gw.addr, method, "/shape/headers", Some(&a), &[]).await;
        assert_eq!(r.status, 200, "{method}");
        let all: String = r
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect();
        assert!(
            !all.contains(EMAIL) && !all.contains(&EMAIL.replace('@', "%40")),
            "{method}: an address leaked in\n{all}"
        );
        assert_eq!(
            r.header("link"),
            Some("</customers?email=a%2A%2A%2A%40example.com&next=%2Fx>; rel=next"),
            "an escaped address is masked where it stands"
        );
        assert!(
            r.header("set-cookie")
                .is_some_and(|v| v.ends_with("; Max-Age=2592000; Path=/")),
            "{all}"
        );
        assert_eq!(
            r.header("x-customer-card"),
            Some(CARD),
            "numbers are left to the body rules"
        );
        assert!(
            r.header("content-disposition")
                .is_some_and(|v| v.starts_with("attachment; filename=")),
            "{all}"
        );
        assert!(
            r.header("location")
                .is_some_and(|v| v.starts_with("/customers/12345678?email=")),
            "{all}"
        );
        assert_eq!(r.header("x-ratelimit-reset"), Some("1733600000"));
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=31536000")
        );
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("application/json"))
        );
        assert_eq!(r.header("x-raw"), None, "a value that is not text goes");
    }
    let r = req(gw.addr, "GET", "/shape/headers", Some(&s), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-customer"), Some(EMAIL));
    assert!(
        r.header("content-disposition")
            .is_some_and(|v| v.contains(EMAIL))
    );
}

#[tokio::test]
async fn unmaskable_answers_are_refused_never_passed_through() {
    let (gw, _release, _) = setup().await;
    let a = agent();
    for shape in [
        "lying",
        "invalid",
        "html",
        "double-encoding",
        "json-as-sse",
        "json-as-csv",
        "semicolon-csv",
        "two-encodings",
        "two-types",
        "partial",
        "range-200",
        "conn-encoding",
    ] {
        let r = req(gw.addr, "GET", &format!("/shape/{shape}"), Some(&a), &[]).await;
        assert_eq!(
            r.status,
            502,
            "{shape}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.error(), "unmaskable_response", "{shape}");
        assert_eq!(leaks(&r.body), Vec::<&str>::new(), "{shape}");
    }
    // The supervisor is not masked, so the same answers pass unchanged.
    let r = req(gw.addr, "GET", "/shape/html", Some(&supervisor()), &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn ranges_heads_and_not_modified_on_masked_routes() {
    let (gw, _release, seen) = setup().await;
    let a = agent();
    let r = req(gw.addr, "GET", "/shape/plain", Some(&a), &PARTIAL_HEADERS).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("accept-ranges"), Some("none"));
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        last,
        ("/shape/plain".to_string(), None),
        "a partial or conditional request reached the upstream on a masked route"
    );
    assert_eq!(leaks(&r.body), Vec::<&str>::new());
    // From a principal who reads the route unmasked they are passed on (and
    // the upstream's record of them works).
    req(
        gw.addr,
        "GET",
        "/shape/plain",
        Some(&supervisor()),
        &PARTIAL_HEADERS,
    )
    .await;
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        last.1.map(|h| h.matches(": ").count()),
        Some(PARTIAL_HEADERS.len())
    );

    let r = req(gw.addr, "HEAD", "/shape/plain", Some(&a), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), None);

    // The upstream's own reason phrase is not passed on a masked answer
    // (nobody masks it); the status's standard one is.
    let head = |b: &[u8]| {
        String::from_utf8_lossy(&b[..b.windows(2).position(|w| w == b"\r\n").unwrap()]).into_owned()
    };
    let raw_get = |t: &str| {
        format!(
            "GET /shape/reason HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nAuthorization: Bearer {t}\r\n\r\n"
        )
    };
    let masked = raw_bytes(gw.addr, raw_get(&a).as_bytes()).await;
    assert_eq!(head(&masked), "HTTP/1.1 404 Not Found");
    // Unmasked, it is the upstream's (so the shape above is real).
    let unmasked = raw_bytes(gw.addr, raw_get(&supervisor()).as_bytes()).await;
    assert_eq!(head(&unmasked), format!("HTTP/1.1 404 {EMAIL} not found"));

    let r = req(
        gw.addr,
        "GET",
        "/shape/not-modified",
        Some(&a),
        &["If-None-Match: \"v1-strong\""],
    )
    .await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), None);
}

/// A compressed answer small enough to be masked whole as declared, but
/// decoding to more than 16 × `buffer_bytes`, is streamed from there on
/// (still masked) instead of held whole up to `max_body_bytes`.
#[tokio::test]
async fn a_small_compressed_answer_that_decodes_large_is_streamed_masked() {
    let (gw, _release, _) = setup().await;
    let r = req(gw.addr, "GET", "/shape/gzip-big", Some(&agent()), &[]).await;
    assert_eq!(
        r.status,
        200,
        "{}",
        String::from_utf8_lossy(&r.body[..200.min(r.body.len())])
    );
    assert_eq!(r.header("content-length"), None, "held whole");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.body.len() > 16 * 65536, "{}", r.body.len());
    assert_eq!(leaks(&r.body), Vec::<&str>::new());
    let list: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2000);
}

#[tokio::test]
async fn a_masked_write_keeps_its_preconditions_and_may_answer_without_a_body() {
    let (gw, _release, seen) = setup().await;
    let a = agent();
    let r = req(
        gw.addr,
        "PUT",
        "/shape/empty-write",
        Some(&a),
        &[
            "If-Match: \"v1-strong\"",
            "Range: bytes=0-20",
            "Content-Length: 0",
        ],
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // The precondition reached the upstream (dropping it would turn the
    // client's optimistic locking into a lost update); the range did not.
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        last,
        (
            "/shape/empty-write".to_string(),
            Some("if-match: \"v1-strong\"".to_string())
        )
    );
    // A write's answer with a record in it is masked as a read's is.
    let r = req(
        gw.addr,
        "PUT",
        "/shape/plain",
        Some(&a),
        &["Content-Length: 0"],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(leaks(&r.body), Vec::<&str>::new());
}

#[tokio::test]
async fn unmasked_access_is_audited() {
    let (gw, _release, _) = setup().await;
    req(gw.addr, "GET", "/shape/plain", Some(&agent()), &[]).await;
    let r = req(
        gw.addr,
        "GET",
        "/shape/gzip",
        Some(&supervisor()),
        &["X-Request-Id: audit-me"],
    )
    .await;
    assert_eq!(r.status, 200);
    // A second read with the same client id: each record still has its own.
    let r = req(
        gw.addr,
        "GET",
        "/shape/gzip",
        Some(&supervisor()),
        &["X-Request-Id: audit-me"],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("audit-me"));
    let log = std::fs::read_to_string(gw.dir.join("audit.jsonl")).expect("audit log written");
    #[cfg(unix)]
    {
        // Who saw which record: owner-only, whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(gw.dir.join("audit.jsonl"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "only the unmasked answers are audited: {log}"
    );
    let rec = &lines[0];
    assert_eq!(rec["user"], "sup-1");
    assert_eq!(rec["route"], "shapes");
    assert_eq!(rec["record"], "gzip");
    assert_eq!(rec["mask"], "pii");
    assert_eq!(rec["client_request_id"], "audit-me");
    assert!(rec["at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let (a, b) = (&lines[0]["request_id"], &lines[1]["request_id"]);
    assert!(a.is_string() && b.is_string(), "{log}");
    assert_ne!(a, b, "two audit records share a request id: {log}");
    assert_ne!(a, "audit-me");
}

#[tokio::test]
async fn a_stream_that_breaks_midway_is_cut_not_passed_through() {
    let (gw, _release, _) = setup().await;
    let a = agent();
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(format!("GET /shape/stream-broken HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {a}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all))
        .await
        .expect("connection closed");
    let text = String::from_utf8_lossy(&all).to_string();
    assert_eq!(leaks(&all), Vec::<&str>::new(), "{text}");
    // Streamed (no Content-Length): the head, then a body that never
    // terminates.
    let cut = CutResp::parse(&all);
    assert_eq!(cut.status(), Some(200), "{text}");
    assert!(!cut.terminated, "a broken body was completed: {text}");
}

#[tokio::test]
async fn a_100_mb_stream_is_masked_incrementally() {
    let (gw, release, _) = setup().await;
    let a = agent();
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(format!("GET /shape/stream HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {a}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // The upstream holds everything after its first chunk until released:
    // masked bytes must already be here.
    let mut first = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut first))
        .await
        .expect("first bytes before the upstream finished")
        .unwrap();
    assert!(n > 0);
    let head = String::from_utf8_lossy(&first[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    release.notify_one();
    // Read the rest, scanning for leaks without keeping the whole body.
    let mut total = n as u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut carry = Vec::new();
    let mut items = 0u64;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(120), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        carry.extend_from_slice(&buf[..n]);
        assert_eq!(
            leaks(&carry),
            Vec::<&str>::new(),
            "leak in the masked stream"
        );
        items += carry
            .windows(12)
            .filter(|w| w == b"\"tier\":\"gold")
            .count() as u64;
        let keep = carry.len().saturating_sub(64);
        carry.drain(..keep);
    }
    assert!(total > 60 * 1024 * 1024, "only {total} bytes came through");
    assert!(items > 100_000, "{items} items");
}

#[tokio::test]
async fn invalid_csv_is_refused_whole_and_cut_when_streamed() {
    let (gw, _release, seen) = setup().await;
    let a = agent();
    for (i, (what, _)) in BAD_CSV.iter().enumerate() {
        // Content-Length within buffer_bytes: masked whole first, a clean 502.
        let path = format!("/shape/badcsv{i}");
        let r = req(gw.addr, "GET", &path, Some(&a), &[]).await;
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert_eq!(r.status, 502, "{what}: {text}");
        assert_eq!(r.error(), "unmaskable_response", "{what}");
        assert!(
            !text.contains("Jane") && !text.contains("Canary"),
            "{what}: {text}"
        );
        assert!(
            seen.lock().unwrap().iter().any(|(p, _)| *p == path),
            "{what}: the upstream was asked"
        );
        // Chunked: streamed, so cut after the head; never the name.
        let request = format!(
            "GET /shape/badcsv{i}c HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {a}\r\nConnection: close\r\n\r\n"
        );
        let all = raw_bytes(gw.addr, request.as_bytes()).await;
        let text = String::from_utf8_lossy(&all).to_string();
        assert!(
            !text.contains("Jane") && !text.contains("Canary"),
            "{what}: {text}"
        );
        let cut = CutResp::parse(&all);
        assert_eq!(cut.status(), Some(200), "{what}: {text}");
        assert!(
            !cut.terminated,
            "{what}: a broken body was completed: {text}"
        );
    }
}

/// How the raw upstream sends `body`.
#[derive(Clone, Copy)]
enum Sending {
    /// One byte per chunk, each flushed, then the terminating chunk.
    Bytes,
    /// One byte per chunk, then the connection closes without the
    /// terminating chunk.
    BytesThenClose,
    /// The head, the whole body as one chunk and the terminating chunk in
    /// a single write: the gateway has everything before it answers.
    AllAtOnce,
    /// An HTTP/1.0 answer without a length: the body, then the close.
    Http10,
}

/// A hand-written HTTP/1.1 upstream: every request gets `body` as a
/// chunked `application/json` answer, sent as `how` says.
async fn raw_json_upstream(body: &'static [u8], how: Sending) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                if let Sending::Http10 = how {
                    let mut all =
                        b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n".to_vec();
                    all.extend_from_slice(body);
                    let _ = s.write_all(&all).await;
                    let _ = s.flush().await;
                    return;
                }
                let start: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                if let Sending::AllAtOnce = how {
                    let mut all = start.to_vec();
                    all.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                    all.extend_from_slice(body);
                    all.extend_from_slice(b"\r\n0\r\n\r\n");
                    let _ = s.write_all(&all).await;
                    let _ = s.flush().await;
                    return;
                }
                if s.write_all(start).await.is_err() {
                    return;
                }
                for &byte in body {
                    let chunk = [b'1', b'\r', b'\n', byte, b'\r', b'\n'];
                    if s.write_all(&chunk).await.is_err() || s.flush().await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
                if let Sending::Bytes = how {
                    let _ = s.write_all(b"0\r\n\r\n").await;
                    let _ = s.flush().await;
                }
                // BytesThenClose: dropped here, mid-body.
            });
        }
    });
    addr
}

async fn gateway_for(up: std::net::SocketAddr) -> Gw {
    let dir = scratch_dir("mask-raw");
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{}upstreams:\n  app: {{ url: \"http://{up}\" }}\nrules: rules.yaml\nmasking: {{ audit_log: audit.jsonl }}\n",
        identity_yaml()
    );
    start_with_config(&dir, &cfg).await
}

/// A streamed JSON answer that turns out invalid: the client always gets
/// the 200 head and the masked output that preceded the failure, then the
/// connection closes without the terminating chunk — never a byte of the
/// selected value, never zero bytes.
#[tokio::test]
async fn a_streamed_json_answer_that_turns_invalid_is_cut_after_the_head() {
    let cases: [(&str, &'static [u8], Sending, &str, usize); 5] = [
        (
            "invalid after the value",
            br#"{"name":"Jane Canary","x":tru}"#,
            Sending::Bytes,
            r#"{"name":"[REDACTED]""#,
            5,
        ),
        (
            "truncated string value",
            br#"{"id":1,"name":"Jane Can"#,
            Sending::Bytes,
            r#"{"id":1,"#,
            5,
        ),
        (
            "upstream closes inside the value",
            br#"{"id":1,"name":"Jane Can"#,
            Sending::BytesThenClose,
            r#"{"id":1,"#,
            5,
        ),
        // The failure is in the first frame the gateway masks: without the
        // deferred error hyper dropped the connection with the head unsent.
        (
            "invalid, all in one frame",
            br#"{"name":"Jane Canary","x":tru}"#,
            Sending::AllAtOnce,
            "",
            30,
        ),
        // Cut before its last chunk too, not ended by a close that would
        // look like the end of a complete HTTP/1.0 answer.
        (
            "HTTP/1.0 upstream, invalid",
            br#"{"name":"Jane Canary","x":tru}"#,
            Sending::Http10,
            "",
            5,
        ),
    ];
    let a = agent();
    for (what, body, how, prefix, rounds) in cases {
        let up = raw_json_upstream(body, how).await;
        let gw = gateway_for(up).await;
        let request = format!(
            "GET /shape/raw HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {a}\r\nConnection: close\r\n\r\n"
        );
        for round in 0..rounds {
            let all = raw_bytes(gw.addr, request.as_bytes()).await;
            let text = String::from_utf8_lossy(&all).to_string();
            for secret in ["Jane", "Canary", "\"J", "Can"] {
                assert!(
                    !text.contains(secret),
                    "{what} #{round}: leaked {secret:?}: {text}"
                );
            }
            let cut = CutResp::parse(&all);
            assert_eq!(
                cut.status(),
                Some(200),
                "{what} #{round}: no head: {text:?}"
            );
            let head = cut.head.as_deref().unwrap_or_default().to_ascii_lowercase();
            assert!(
                head.contains("transfer-encoding: chunked"),
                "{what}: {head}"
            );
            assert!(
                !cut.terminated,
                "{what} #{round}: the body was completed: {text}"
            );
            let got = String::from_utf8_lossy(&cut.body).to_string();
            assert!(
                got.starts_with(prefix),
                "{what} #{round}: the masked output before the failure is missing: {got:?}"
            );
        }
    }
}

/// An HTTP/1.0 client reads a body to the close, so a cut stream would
/// look complete to it: its masked answers are masked whole, sent with a
/// length, and a failure is a clean 502.
#[tokio::test]
async fn an_http10_client_gets_masked_answers_whole_or_a_502() {
    let a = agent();
    let request =
        format!("GET /shape/raw HTTP/1.0\r\nHost: a\r\nAuthorization: Bearer {a}\r\n\r\n");
    let cases: [(&[u8], Sending); 2] = [
        (br#"{"name":"Jane Canary","x":tru}"#, Sending::Bytes),
        (br#"{"name":"Jane Canary","x":tru}"#, Sending::Http10),
    ];
    for (body, how) in cases {
        let gw = gateway_for(raw_json_upstream(body, how).await).await;
        let all = raw_bytes(gw.addr, request.as_bytes()).await;
        let text = String::from_utf8_lossy(&all).to_string();
        assert!(text.starts_with("HTTP/1.0 502 "), "{text}");
        assert!(text.contains("unmaskable_response"), "{text}");
        assert!(!text.contains("Jane") && !text.contains("Canary"), "{text}");
    }
    // A valid streamed answer arrives whole, masked, with its length.
    let body: &'static [u8] = br#"{"id":1,"name":"Jane Canary","tier":"gold"}"#;
    let gw = gateway_for(raw_json_upstream(body, Sending::Bytes).await).await;
    let all = raw_bytes(gw.addr, request.as_bytes()).await;
    let text = String::from_utf8_lossy(&all).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200 "), "{text}");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("transfer-encoding"), "{head}");
    assert!(
        lower.contains(&format!("content-length: {}", rest.len())),
        "{text}"
    );
    assert_eq!(rest, r#"{"id":1,"name":"[REDACTED]","tier":"gold"}"#);
}

/// An HTTP/1.0 client's answer is held whole only up to 16 times
/// `buffer_bytes`: a larger one is refused, not held up to
/// `max_body_bytes`; an HTTP/1.1 client gets the same answer streamed.
#[tokio::test]
async fn an_http10_clients_masked_answer_is_held_whole_only_up_to_a_bound() {
    let a = agent();
    let mut doc = String::from(r#"{"name":"Jane Canary","notes":["#);
    while doc.len() < 20_000 {
        doc.push_str(r#""filler text","#);
    }
    doc.push_str(r#""end"]}"#);
    let body: &'static [u8] = Box::leak(doc.into_bytes().into_boxed_slice());
    let up = raw_json_upstream(body, Sending::AllAtOnce).await;
    let dir = scratch_dir("mask-http10");
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{}upstreams:\n  app: {{ url: \"http://{up}\" }}\nrules: rules.yaml\nmasking: {{ audit_log: audit.jsonl, buffer_bytes: 1024 }}\n",
        identity_yaml()
    );
    let gw = start_with_config(&dir, &cfg).await;
    let request =
        format!("GET /shape/raw HTTP/1.0\r\nHost: a\r\nAuthorization: Bearer {a}\r\n\r\n");
    let all = raw_bytes(gw.addr, request.as_bytes()).await;
    let text = String::from_utf8_lossy(&all).to_string();
    assert!(text.starts_with("HTTP/1.0 502 "), "{text}");
    assert!(text.contains("unmaskable_response"), "{text}");
    assert!(!text.contains("Jane"), "{text}");
    let r = req(gw.addr, "GET", "/shape/raw", Some(&a), &[]).await;
    assert_eq!(r.status, 200);
    let got = String::from_utf8_lossy(&r.body);
    assert!(got.starts_with(r#"{"name":"[REDACTED]""#) && got.ends_with(r#""end"]}"#));
}

/// Answers masked whole share `masking.max_held_bytes`: while one holds
/// the budget, an HTTP/1.1 answer that would be held whole is streamed
/// instead, and an HTTP/1.0 one (which must be held whole) is 503
/// `masking_busy`; once the first is sent, the budget is back.
#[tokio::test]
async fn answers_masked_whole_share_the_max_held_bytes_budget() {
    const BODY: &[u8] = br#"{"id":1,"name":"Jane Canary","tier":"gold"}"#;
    let release = Arc::new(Notify::new());
    let begun = Arc::new(Notify::new());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let (gate, told) = (release.clone(), begun.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let (gate, told) = (gate.clone(), told.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    BODY.len()
                )
                .into_bytes();
                // `?hold`: the first bytes, then the rest once released.
                let held = String::from_utf8_lossy(&head).contains("?hold");
                let cut = if held { 10 } else { BODY.len() };
                out.extend_from_slice(&BODY[..cut]);
                if s.write_all(&out).await.is_err() {
                    return;
                }
                if held {
                    let _ = s.flush().await;
                    told.notify_one();
                    gate.notified().await;
                    let _ = s.write_all(&BODY[cut..]).await;
                }
                let _ = s.flush().await;
            });
        }
    });
    let dir = scratch_dir("mask-held");
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{}upstreams:\n  app: {{ url: \"http://{up}\" }}\nrules: rules.yaml\nmasking: {{ audit_log: audit.jsonl, buffer_bytes: 64, max_held_bytes: 64 }}\n",
        identity_yaml()
    );
    let gw = start_with_config(&dir, &cfg).await;
    let a = agent();
    let http10 = format!("GET /shape/raw HTTP/1.0\r\nHost: a\r\nAuthorization: Bearer {a}\r\n\r\n");
    let http11 = format!(
        "GET /shape/raw HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {a}\r\nConnection: close\r\n\r\n"
    );
    // Before anything is held: whole, with its length.
    let text = String::from_utf8_lossy(&raw_bytes(gw.addr, http10.as_bytes()).await).to_string();
    assert!(text.starts_with("HTTP/1.0 200 "), "{text}");
    let (addr, t) = (gw.addr, a.clone());
    let first =
        tokio::spawn(async move { req(addr, "GET", "/shape/raw?hold", Some(&t), &[]).await });
    // The held answer's head is on its way to the gateway before any probe
    // is sent (a probe holding the budget first would make it stream);
    begun.notified().await;
    // Until the gateway holds the first answer's share, HTTP/1.0 answers
    // still fit.
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    let busy = loop {
        let text =
            String::from_utf8_lossy(&raw_bytes(gw.addr, http10.as_bytes()).await).to_string();
        if text.starts_with("HTTP/1.0 503 ") {
            break text;
        }
        assert!(text.starts_with("HTTP/1.0 200 "), "{text}");
        assert!(
            std::time::Instant::now() < give_up,
            "the budget was never taken"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(busy.contains("\"masking_busy\""), "{busy}");
    assert!(!busy.contains("Jane"), "{busy}");
    // HTTP/1.1: streamed (chunked, no length), masked all the same.
    let cut = CutResp::parse(&raw_bytes(gw.addr, http11.as_bytes()).await);
    let head = cut.head.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    assert!(
        head.contains("transfer-encoding: chunked") && !head.contains("content-length"),
        "{head}"
    );
    assert!(cut.terminated);
    assert_eq!(cut.body, br#"{"id":1,"name":"[REDACTED]","tier":"gold"}"#);
    // The first answer completes whole; its share comes back.
    release.notify_one();
    let r = first.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, br#"{"id":1,"name":"[REDACTED]","tier":"gold"}"#);
    let text = String::from_utf8_lossy(&raw_bytes(gw.addr, http10.as_bytes()).await).to_string();
    assert!(text.starts_with("HTTP/1.0 200 "), "{text}");
}

/// A masked answer buffered whole is one large frame; on HTTP/2 it is
/// handed over in pieces, so a client that never opens its flow-control
/// window holds the stream waiting, and `send_timeout` cuts the
/// connection (h2 would otherwise buffer the whole frame, with no clock).
#[tokio::test]
async fn an_http2_client_that_keeps_its_window_shut_on_a_large_masked_answer_is_cut() {
    let mut doc = String::from(r#"{"name":"Jane Canary","notes":"#);
    doc.push('"');
    doc.push_str(&"x".repeat(600 * 1024));
    doc.push_str("\"}");
    let doc = Bytes::from(doc);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let doc = doc.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: hyper::Request<Incoming>| {
                    let doc = doc.clone();
                    async move {
                        let mut r = hyper::Response::new(Full::new(doc));
                        r.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let dir = scratch_dir("mask-h2-window");
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\", h2c: true, send_timeout: 300ms }}\n{}upstreams:\n  app: {{ url: \"http://{up}\" }}\nrules: rules.yaml\nmasking: {{ audit_log: audit.jsonl }}\n",
        identity_yaml()
    );
    let gw = start_with_config(&dir, &cfg).await;
    let io = TokioIo::new(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    // The protocol's default window (hyper's client would open 2 MiB).
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .handshake(io)
            .await
            .unwrap();
    // The connection task reads the socket (no write of the gateway ever
    // blocks), but the body is never read: no window is given back.
    let driver = tokio::spawn(conn);
    let req = http::Request::get("http://a/shape/raw")
        .header("authorization", format!("Bearer {}", agent()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(
        ended.is_ok(),
        "the stalled client's connection was left open"
    );
    drop(resp);
}

#[tokio::test]
async fn an_unwritable_audit_log_refuses_the_unmasked_answer_without_io_details() {
    let (gw, _release, _) = setup().await;
    // A directory where the log file should be: the first write fails.
    std::fs::create_dir_all(gw.dir.join("audit.jsonl")).unwrap();
    let r = req(gw.addr, "GET", "/shape/plain", Some(&supervisor()), &[]).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error(), "audit_unavailable");
    assert_eq!(r.json()["reason"], "audit log unavailable");
    // The agent's masked answer needs no audit record.
    let r = req(gw.addr, "GET", "/shape/plain", Some(&agent()), &[]).await;
    assert_eq!(r.status, 200);
}

// --- Owner-chosen columns (seed 001) --------------------------------------

const OWNER_ADMIN_TOKEN: &str = "admin-token-for-owner-columns-0123";

/// Table rows as the bot builder serves them (JSON), or as CSV under
/// `/bots/{bot}/export/{table}`.
async fn table_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<Incoming>| async move {
                    let resp = if req.uri().path().contains("/export/") {
                        full(
                            "text/csv",
                            None,
                            b"id,phone,plan\n1,+91 98200 11223,gold\n".to_vec(),
                        )
                    } else {
                        let rows = json!({ "rows": [
                            { "id": 1, "phone": PHONE, "plan": "gold", "nick": "asha" },
                            { "id": 2, "phone": "+1 555 0100", "plan": "free", "nick": "bo" }
                        ]});
                        full("application/json", None, rows.to_string().into_bytes())
                    };
                    Ok::<_, Infallible>(resp)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn start_tables(up: std::net::SocketAddr, tag: &str, store: &str) -> Gw {
    let dir = scratch_dir(tag);
    std::fs::write(dir.join("admin.token"), OWNER_ADMIN_TOKEN).unwrap();
    let cfg = format!(
        r#"listen: {{ addr: "127.0.0.1:0" }}
{identity}upstreams:
  bots: {{ url: "http://{up}" }}
admin: {{ addr: "127.0.0.1:0", token_file: admin.token }}
sessions: {{ {store} }}
masks:
  bot-table-columns:
    unmask_with: bot.tables.columns.unmask
    owner_columns: {{ scope: bot, manage_with: bot.tables.masks.manage }}
roles:
  super-admin: {{ scope: bot, grants: [bot.tables.view, bot.tables.masks.manage, bot.tables.columns.unmask] }}
  developer: {{ scope: bot, grants: [bot.tables.view] }}
  auditor: {{ grants: [bot.tables.view] }}
routes:
  - name: table
    match: {{ methods: [GET], path: "/bots/{{bot}}/tables/{{table}}" }}
    upstream: bots
    scope: {{ bot: "{{bot}}" }}
    record: "{{table}}"
    mask: bot-table-columns
    require: bot.tables.view
  - name: export
    match: {{ methods: [GET], path: "/bots/{{bot}}/export/{{table}}" }}
    upstream: bots
    scope: {{ bot: "{{bot}}" }}
    record: "{{table}}"
    mask: bot-table-columns
    require: bot.tables.view
"#,
        identity = identity_yaml(),
    );
    start_with_config(&dir, &cfg).await
}

fn bot_user(sub: &str, role: &str) -> String {
    token_with(json!({ "sub": sub, "sid": format!("s-{sub}"), "roles": [role] }))
}

async fn rows(gw: &Gw, who: &str, table: &str) -> Value {
    let r = req(
        gw.addr,
        "GET",
        &format!("/bots/42/tables/{table}"),
        Some(who),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

async fn choose(gw: &Gw, token: &str, method: &str, path: &str, body: &str) -> Resp {
    req_json(gw.admin.unwrap(), method, path, Some(token), body).await
}

/// Renaming a mask leaves its owners' choices under the old name, where
/// no route finds them: the reload says so (a warning), and the name
/// restored brings them back.
#[tokio::test]
async fn a_renamed_mask_with_stored_owner_choices_is_warned_about() {
    use rolegate::reload::{Outcome, Trigger};
    let up = table_upstream().await;
    let gw = start_tables(up, "owner-rename", "state_dir: state").await;
    let owner = bot_user("owner-1", "super-admin@bot:42");
    let dev = bot_user("dev-1", "developer@bot:42");
    let path = "/masks/bot-table-columns/columns/42/customers";
    let r = choose(&gw, &owner, "PUT", path, r#"{"columns":["phone"]}"#).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let cfg_path = gw.dir.join("rolegate.yaml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let reload = |text: String| {
        std::fs::write(&cfg_path, text).unwrap();
        gw.gateway.reloader().reload(&gw.gateway, Trigger::Admin)
    };
    let a = reload(cfg.replace("bot-table-columns", "bot-table-cols")).await;
    assert_eq!(a.result, Outcome::Reloaded);
    let warned: Vec<String> = a.warnings.iter().map(|d| d.message.clone()).collect();
    assert!(
        warned
            .iter()
            .any(|w| w.contains("mask bot-table-columns") && w.contains("no longer masked")),
        "{warned:?}"
    );
    assert_eq!(
        rows(&gw, &dev, "customers").await["rows"][0]["phone"],
        PHONE
    );
    let a = reload(cfg).await;
    assert_eq!(a.result, Outcome::Reloaded);
    assert!(
        !a.warnings
            .iter()
            .any(|d| d.message.contains("owner-chosen")),
        "{:?}",
        a.warnings
    );
    assert_eq!(
        rows(&gw, &dev, "customers").await["rows"][0]["phone"],
        "[REDACTED]"
    );
}

/// A number spelled with leading zeros or `+`, a fraction of zeros, an
/// exponent, as a hex or binary literal or with white space is the same
/// resource to a backend that reads ids leniently (JavaScript's `Number`,
/// PHP): the owner's choice for bot 42 holds on `/bots/042/...`,
/// `/bots/42.0/...`, `/bots/0x2a/...` too (only a principal holding
/// the capability on every bot can ask for those spellings: a binding to
/// `bot:42` does not cover `bot:042`).
#[tokio::test]
async fn an_owner_choice_holds_for_every_spelling_of_a_numeric_id() {
    let up = table_upstream().await;
    let gw = start_tables(up, "owner-numeric", "state_dir: state").await;
    let owner = bot_user("owner-1", "super-admin@bot:42");
    let auditor = bot_user("auditor-1", "auditor");
    let path = "/masks/bot-table-columns/columns/42/customers";
    let r = choose(&gw, &owner, "PUT", path, r#"{"columns":["phone"]}"#).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for id in [
        "42",
        "042",
        "+42",
        "0042",
        "42.0",
        "42.",
        "4.2e1",
        "0x2a",
        "+0x2a",
        "0b101010",
        "%2042",
        "%0B42",
        "4_2",
        "052",
        "42.5",
        "%EF%BC%94%EF%BC%92",
    ] {
        let r = customers_of(&gw, id, &auditor).await;
        assert_eq!(r.status, 200, "{id}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["rows"][0]["phone"], "[REDACTED]", "{id}");
        assert_eq!(r.json()["rows"][0]["plan"], "gold", "{id}");
    }
    // Another number is another resource.
    for id in ["420", "43.5", "0x2b", "42abc"] {
        let r = customers_of(&gw, id, &auditor).await;
        assert_eq!(r.json()["rows"][0]["phone"], PHONE, "{id}");
    }
}

/// `GET /bots/{bot}/tables/customers` as `token`.
async fn customers_of(gw: &Gw, bot: &str, token: &str) -> Resp {
    let path = format!("/bots/{bot}/tables/customers");
    req(gw.addr, "GET", &path, Some(token), &[]).await
}

#[tokio::test]
async fn a_bots_super_admin_chooses_columns_others_see_masked() {
    let up = table_upstream().await;
    let gw = start_tables(up, "owner-cols", "state_dir: state").await;
    let owner = bot_user("owner-1", "super-admin@bot:42");
    let dev = bot_user("dev-1", "developer@bot:42");
    let other_owner = bot_user("owner-9", "super-admin@bot:9");
    // Nothing chosen: rows as they are.
    assert_eq!(
        rows(&gw, &dev, "customers").await["rows"][0]["phone"],
        PHONE
    );

    // Another bot's Super Admin, a developer and a bad token cannot choose.
    let path = "/masks/bot-table-columns/columns/42/customers";
    let body = r#"{"columns":["phone","nick"]}"#;
    for (who, status) in [
        (&other_owner, 403),
        (&dev, 403),
        (&"garbage".to_string(), 401),
    ] {
        let r = choose(&gw, who, "PUT", path, body).await;
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(
        rows(&gw, &dev, "customers").await["rows"][0]["phone"],
        PHONE
    );
    // A Super Admin acting with their own token may not use operator endpoints.
    let r = choose(&gw, &owner, "POST", "/users/dev-1/revoke", "").await;
    assert_eq!((r.status, r.error().as_str()), (403, "forbidden"));

    // The bot's Super Admin chooses with their own token.
    let r = choose(&gw, &owner, "PUT", path, body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["columns"], json!(["nick", "phone"]));
    let masked = rows(&gw, &dev, "customers").await;
    assert_eq!(masked["rows"][0]["phone"], "[REDACTED]");
    assert_eq!(masked["rows"][1]["nick"], "[REDACTED]");
    assert_eq!(
        masked["rows"][0]["plan"], "gold",
        "unchosen columns untouched"
    );
    // CSV of the same table: the chosen column masked by header.
    let r = req(gw.addr, "GET", "/bots/42/export/customers", Some(&dev), &[]).await;
    assert_eq!(r.status, 200);
    let csv = String::from_utf8_lossy(&r.body).to_string();
    assert!(!csv.contains("98200"), "{csv}");
    assert!(csv.contains("gold"), "{csv}");
    // The owner (who holds unmask_with) sees the data in full.
    assert_eq!(
        rows(&gw, &owner, "customers").await["rows"][0]["phone"],
        PHONE
    );
    // Only that table, only that bot.
    assert_eq!(rows(&gw, &dev, "orders").await["rows"][0]["phone"], PHONE);
    let r = choose(&gw, &owner, "GET", path, "").await;
    assert_eq!(r.json()["columns"], json!(["nick", "phone"]));

    // Bad bodies and unknown masks.
    let r = choose(&gw, &owner, "PUT", path, r#"{"columns":"phone"}"#).await;
    assert_eq!((r.status, r.error().as_str()), (400, "bad_request"));
    let r = choose(
        &gw,
        OWNER_ADMIN_TOKEN,
        "PUT",
        "/masks/nope/columns/42/t",
        body,
    )
    .await;
    assert_eq!((r.status, r.error().as_str()), (404, "unknown_mask"));

    // A spelling of the table a case-blind backend serves alike is the
    // same record.
    for spelling in ["Customers", "CUSTOMERS", "%43ustomers"] {
        assert_eq!(
            rows(&gw, &dev, spelling).await["rows"][0]["phone"],
            "[REDACTED]",
            "{spelling}"
        );
    }

    // The operator can clear it; then rows pass as they are again.
    let r = choose(&gw, OWNER_ADMIN_TOKEN, "DELETE", path, "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        rows(&gw, &dev, "customers").await["rows"][0]["phone"],
        PHONE
    );

    // A choice without a record covers every table of the bot, together
    // with a table's own choice.
    let r = choose(
        &gw,
        &owner,
        "PUT",
        "/masks/bot-table-columns/columns/42",
        r#"{"columns":["phone"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = choose(&gw, &owner, "PUT", path, r#"{"columns":["nick"]}"#).await;
    assert_eq!(r.status, 200);
    for table in ["orders", "customers"] {
        assert_eq!(
            rows(&gw, &dev, table).await["rows"][0]["phone"],
            "[REDACTED]",
            "{table}"
        );
    }
    assert_eq!(
        rows(&gw, &dev, "customers").await["rows"][1]["nick"],
        "[REDACTED]"
    );
    assert_eq!(rows(&gw, &dev, "orders").await["rows"][1]["nick"], "bo");
    // Another bot is not touched.
    let r = req(
        gw.addr,
        "GET",
        "/bots/9/tables/orders",
        Some(&bot_user("dev-9", "developer@bot:9")),
        &[],
    )
    .await;
    assert_eq!(r.json()["rows"][0]["phone"], PHONE);
}

#[tokio::test]
async fn a_column_choice_reaches_every_instance_through_redis_within_a_second() {
    let redis = TestRedis::start();
    let up = table_upstream().await;
    let store = format!("store: \"{}\"", redis.url());
    let a = start_tables(up, "owner-cols-a", &store).await;
    let b = start_tables(up, "owner-cols-b", &store).await;
    let owner = bot_user("owner-1", "super-admin@bot:42");
    let dev = bot_user("dev-1", "developer@bot:42");
    assert_eq!(rows(&b, &dev, "customers").await["rows"][0]["phone"], PHONE);
    let path = "/masks/bot-table-columns/columns/42/customers";
    let r = choose(&a, &owner, "PUT", path, r#"{"columns":["phone"]}"#).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let until = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let v = rows(&b, &dev, "customers").await;
        if v["rows"][0]["phone"] == "[REDACTED]" {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "B still shows the column: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        rows(&a, &dev, "customers").await["rows"][0]["phone"],
        "[REDACTED]"
    );
}

/// Log rotation renames the audit log, then reloads (or sends SIGUSR1):
/// the gateway opens the file anew even when the configuration on disk
/// does not load at that moment, so no record goes to the renamed file
/// after it.
#[tokio::test]
async fn a_rotated_audit_log_is_reopened_even_when_the_reload_fails() {
    let (gw, _release, _) = setup().await;
    let audited = |what: &str| {
        std::fs::read_to_string(gw.dir.join(what))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let r = req(gw.addr, "GET", "/shape/plain", Some(&supervisor()), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(audited("audit.jsonl"), 1);
    std::fs::rename(gw.dir.join("audit.jsonl"), gw.dir.join("audit.jsonl.1")).unwrap();
    std::fs::write(gw.dir.join("rules.yaml"), "roles: [").unwrap();
    let attempt = gw
        .gateway
        .reloader()
        .reload(&gw.gateway, rolegate::reload::Trigger::Signal)
        .await;
    assert_eq!(attempt.to_json()["result"], "failed");
    let r = req(gw.addr, "GET", "/shape/plain", Some(&supervisor()), &[]).await;
    assert_eq!(r.status, 200, "the old policy is still in force");
    assert_eq!(
        audited("audit.jsonl.1"),
        1,
        "nothing more went to the rotated file"
    );
    assert_eq!(
        audited("audit.jsonl"),
        1,
        "the new record went to a new file"
    );
}
