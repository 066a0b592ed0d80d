//! Phase 6 transport: the pooled hyper client per upstream, its TLS and
//! HTTP version, and the mapping of its failures to [`Fault`]s.
//!
//! Owns connecting (plain TCP, or rustls for `https://` upstreams),
//! pooling and the response-head timeout. It does not touch headers (that
//! is `headers.rs`) or decide anything. TLS settings arrive already read
//! and parsed (`config::build` reads the PEM files, so `check` can report
//! them); this module only turns them into a client.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_rustls::{ConfigBuilderExt, FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::Upstream;
use crate::error::{BadRequest, Deny, Fault, Refusal};
use crate::proxy::body::{BodyTooLarge, MalformedBody, TooSlow};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body type sent upstream (the client's body, streamed, with a size limit).
pub type UpBody = BoxBody<Bytes, BoxError>;

/// One pooled client per upstream. Two variants rather than one
/// `https_or_http` connector, so the plain `http://` path stays exactly the
/// bare `HttpConnector` (no TLS wrapper around its streams), and an
/// `https://` upstream can never be reached in clear.
pub enum HttpClient {
    Plain(Client<HttpConnector, UpBody>),
    Tls(Client<HttpsConnector<HttpConnector>, UpBody>),
}

impl HttpClient {
    pub(crate) fn request(&self, req: http::Request<UpBody>) -> ResponseFuture {
        match self {
            HttpClient::Plain(c) => c.request(req),
            HttpClient::Tls(c) => c.request(req),
        }
    }
}

/// How to reach one upstream.
pub struct ClientSettings {
    pub connect_timeout: Duration,
    /// `http2: true`: HTTP/2 only (ALPN `h2` over TLS, prior knowledge
    /// over plain TCP); otherwise HTTP/1.1 only.
    pub http2: bool,
    /// Present for `https://` upstreams.
    pub tls: Option<TlsSettings>,
}

/// TLS towards an `https://` upstream.
pub struct TlsSettings {
    pub roots: Roots,
    /// `client_cert` + `client_key`: the chain and its key, for upstream mTLS.
    pub client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// `server_name`: the name sent as SNI and checked in the certificate,
    /// instead of the URL's host.
    pub server_name: Option<ServerName<'static>>,
}

/// Which certificates an upstream's chain must lead to.
pub enum Roots {
    /// The Mozilla bundle compiled in (webpki-roots).
    Default,
    /// `ca_file`: only these.
    Only(RootCertStore),
    /// `insecure_skip_verify: true`: any certificate for any name. The
    /// handshake signature is still checked (the peer holds the key of the
    /// certificate it sent), which proves nothing about who it is.
    Unverified,
}

/// The rustls client configuration of an `https://` upstream: TLS 1.3 and
/// 1.2 only, aws-lc-rs, ALPN left to the connector (set from `http2`).
fn tls_config(tls: TlsSettings) -> Result<ClientConfig, rustls::Error> {
    let provider = crate::proxy::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(crate::proxy::tls::VERSIONS)?;
    let builder = match tls.roots {
        Roots::Default => builder.with_webpki_roots(),
        Roots::Only(store) => builder.with_root_certificates(store),
        Roots::Unverified => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider))),
    };
    let config = match tls.client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// A pooled client (idle connections kept 60 s) with a connect timeout.
/// Fails only when rustls refuses the TLS settings (e.g. a client key that
/// does not match its certificate).
pub fn new_client(settings: ClientSettings) -> Result<HttpClient, rustls::Error> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(settings.connect_timeout));
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .http2_only(settings.http2);
    match settings.tls {
        None => {
            // The request URI is always built from the upstream's own
            // origin, never from client input, so enforcing http keeps an
            // `https` URI from ever going out in clear on this client.
            connector.enforce_http(true);
            Ok(HttpClient::Plain(builder.build(connector)))
        }
        Some(mut tls) => {
            let server_name = tls.server_name.take();
            let config = tls_config(tls)?;
            // The TLS layer hands `https` URIs to the TCP connector.
            connector.enforce_http(false);
            let b = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only();
            let b = match server_name {
                Some(name) => b.with_server_name_resolver(FixedServerNameResolver::new(name)),
                None => b,
            };
            let connector = if settings.http2 {
                b.enable_http2().wrap_connector(connector)
            } else {
                b.enable_http1().wrap_connector(connector)
            };
            Ok(HttpClient::Tls(builder.build(connector)))
        }
    }
}

/// `insecure_skip_verify`: accepts any certificate chain and name, but
/// still checks the handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sends the request and waits for the response head, at most `timeout`.
pub async fn send(
    up: &Upstream,
    req: http::Request<UpBody>,
) -> Result<http::Response<Incoming>, Refusal> {
    match tokio::time::timeout(up.timeout, up.client.request(req)).await {
        Err(_) => Err(Fault::UpstreamTimeout(up.name.clone()).into()),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => {
            // The client's body broke while it was being sent: the client's
            // fault (400/413), not the upstream's; the upstream request was
            // aborted, so it never got a complete request.
            if has_cause::<BodyTooLarge>(&e) {
                return Err(Deny::BodyTooLarge.into());
            }
            // The client stopped sending its body: the upstream request
            // was aborted (it never saw a complete request); 408.
            if let Some(TooSlow(t)) = find_cause::<TooSlow>(&e) {
                tracing::debug!(upstream = %up.name, timeout = t.code(), "request body too slow while forwarding");
                return Err(Deny::RequestTimeout(*t).into());
            }
            if has_cause::<MalformedBody>(&e) {
                tracing::debug!(upstream = %up.name, error = %chain(&e), "request body broke while forwarding");
                return Err(Deny::BadRequest(BadRequest::MalformedBody).into());
            }
            // A TLS error, in the handshake (connect) or right after it (a
            // TLS 1.3 server refusing our client certificate answers the
            // first request with an alert): the request never reached the
            // upstream's application.
            if has_cause::<rustls::Error>(&e) {
                let cause = chain(&e);
                tracing::warn!(upstream = %up.name, error = %cause, "upstream TLS failed");
                return Err(Fault::UpstreamTls(up.name.clone(), cause).into());
            }
            if e.is_connect() {
                tracing::warn!(upstream = %up.name, error = %chain(&e), "upstream connect failed");
                return Err(Fault::UpstreamUnavailable(up.name.clone()).into());
            }
            Err(Fault::UpstreamFailed(up.name.clone(), chain(&e)).into())
        }
    }
}

/// Whether `e` or anything in its source chain is a `T`. Looks inside
/// `io::Error`s too: their `source()` skips the error they wrap (it returns
/// that error's own source), and TLS errors arrive wrapped twice.
pub(crate) fn has_cause<T: std::error::Error + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> bool {
    find_cause::<T>(e).is_some()
}

/// The first `T` in `e`'s source chain (as [`has_cause`] looks).
pub(crate) fn find_cause<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => err.source(),
        };
    }
    None
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_errors_are_found_inside_nested_io_errors() {
        // hyper-rustls wraps tokio-rustls' io::Error, which wraps rustls'.
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let nested =
            std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        assert!(has_cause::<rustls::Error>(&nested));
        assert!(chain(&nested).contains("UnknownIssuer"));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(!has_cause::<rustls::Error>(&plain));
    }

    #[test]
    fn tls_settings_build_for_every_kind_of_roots() {
        for roots in [
            Roots::Default,
            Roots::Only(RootCertStore::empty()),
            Roots::Unverified,
        ] {
            let cfg = tls_config(TlsSettings {
                roots,
                client_auth: None,
                server_name: None,
            })
            .unwrap();
            assert!(cfg.alpn_protocols.is_empty());
        }
    }
}
