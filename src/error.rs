//! Typed refusals: every way a request can end without an upstream answer.
//!
//! A [`Refusal`] is either a [`Deny`] (an expected, policy-driven "no": bad
//! target, no route, no valid credentials, not allowed) or a [`Fault`] (our
//! side or the upstream failed). Each maps to one HTTP status and one stable
//! snake_case `error` code that clients and the README can rely on. This
//! module owns that mapping and the JSON error body; it does not decide
//! anything and does no I/O.

use http::StatusCode;

use crate::auth::AuthError;
use crate::policy::Denial;
use crate::route::PathError;
use crate::session::EndReason;

/// An expected refusal: the request was understood and rolegate said no.
#[derive(Debug, thiserror::Error)]
pub enum Deny {
    /// The request target failed canonicalisation (path tricks, bad escapes).
    #[error("malformed request target: {0}")]
    BadTarget(PathError),
    /// The Host header (or absolute-form authority) is missing or ambiguous.
    #[error("{0}")]
    BadHost(&'static str),
    /// No route matches (host, method, path): default deny.
    #[error("no route matches this request")]
    NoRoute,
    /// No usable credentials, or credentials that failed verification.
    #[error("{0}")]
    Unauthenticated(AuthError),
    /// Authenticated, but the policy said no.
    #[error("{}", .0.reason)]
    Forbidden(Denial),
    /// The request body exceeded `listen.max_body_bytes`.
    #[error("request body exceeds the configured limit")]
    BodyTooLarge,
    /// The session ended: idle, lifetime, logout or revoked. The message is
    /// the bare reason (`idle`, …), which is what the JSON `reason` carries.
    #[error("{}", .0.as_str())]
    SessionEnded(EndReason),
    /// The user is deactivated (admin API): every token is refused.
    #[error("deactivated")]
    UserDeactivated,
    /// A malformed request outside the target: method spelling, framing,
    /// missing Host, a broken body. The message is the bare code.
    #[error("{}", .0.code())]
    BadRequest(BadRequest),
    /// A websocket upgrade on a route without `websocket: true`.
    #[error("this route does not allow websockets")]
    WebsocketNotAllowed,
    /// A cookie-authenticated websocket upgrade from a page of another
    /// origin (cross-site websocket hijacking).
    #[error("websocket origin not allowed")]
    WebsocketOrigin,
    /// A cookie-authenticated logout from a page of another origin
    /// (cross-site request forgery ending the victim's session).
    #[error("logout origin not allowed")]
    LogoutOrigin,
    /// A cookie-authenticated request with an unsafe method from a page of
    /// another origin (cross-site request forgery).
    #[error("cross-origin request not allowed")]
    CookieOrigin,
    /// The route demands a verified client certificate (`client_cert:`)
    /// and the connection has none, or one the route does not list.
    #[error("{}", .0.reason())]
    ClientCert(ClientCertDenial),
    /// The request target is longer than `listen.max_uri_bytes`.
    #[error("request target exceeds the configured limit")]
    UriTooLong,
    /// The request has more header fields than `listen.max_headers`.
    #[error("too many header fields")]
    TooManyHeaders,
    /// The client did not deliver its request in time
    /// (`listen.request_timeout`, `listen.body_read_timeout`).
    #[error("{}", .0.code())]
    RequestTimeout(RequestTimeout),
    /// A `listen.rate_limit` bucket is empty; `retry_after` is in whole
    /// seconds (rounded up, at least 1).
    #[error("{}", .limit.code())]
    RateLimited { limit: RateLimit, retry_after: u64 },
}

/// Which request-receive timeout fired (`408 request_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestTimeout {
    /// The whole request (head and body) took longer than
    /// `listen.request_timeout`.
    Whole,
    /// No byte of the request body for `listen.body_read_timeout`.
    BodyRead,
}

impl RequestTimeout {
    /// Stable snake_case code (JSON `reason`, log `detail`).
    pub fn code(&self) -> &'static str {
        match self {
            RequestTimeout::Whole => "request_timeout",
            RequestTimeout::BodyRead => "body_read_timeout",
        }
    }
}

/// Which `listen.rate_limit` bucket refused a request (`429 rate_limited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// `rate_limit.per_ip`: the client address (IPv6: its /64).
    Ip,
    /// `rate_limit.per_principal`: the authenticated issuer + subject.
    Principal,
    /// `listen.max_streams_per_ip`: HTTP/2 requests in flight from the
    /// client address (IPv6: its /64).
    Streams,
}

impl RateLimit {
    /// Stable snake_case code (JSON `reason`, log `detail`).
    pub fn code(&self) -> &'static str {
        match self {
            RateLimit::Ip => "per_ip",
            RateLimit::Principal => "per_principal",
            RateLimit::Streams => "max_streams_per_ip",
        }
    }
}

/// Why a route's `client_cert:` requirement failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertDenial {
    /// No verified client certificate on this connection (none presented,
    /// a plain listener, or a listener without `tls.client_auth`).
    Missing,
    /// A verified certificate whose names are not in `client_cert.allow`.
    NotAllowed,
    /// The connection's certificate is outside its validity period now
    /// (it expired while the connection stayed open).
    Expired,
}

impl ClientCertDenial {
    /// Stable snake_case code (log `detail`).
    pub fn code(&self) -> &'static str {
        match self {
            ClientCertDenial::Missing => "client_cert_missing",
            ClientCertDenial::NotAllowed => "client_cert_not_allowed",
            ClientCertDenial::Expired => "client_cert_expired",
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ClientCertDenial::Missing => "this route requires a verified client certificate",
            ClientCertDenial::NotAllowed => "the client certificate is not one this route allows",
            ClientCertDenial::Expired => "the client certificate is outside its validity period",
        }
    }
}

/// Why a request (not its target or host) is malformed. Each is a 400
/// `bad_request` whose `reason` and log `detail` are [`BadRequest::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// A standard method in another case (`get`): many backends fold case.
    MethodCase,
    /// An HTTP/1.1 request (or an HTTP/1.0 one in origin form) without Host.
    MissingHost,
    /// Both `Content-Length` and `Transfer-Encoding`.
    ContentLengthAndTransferEncoding,
    /// A `Transfer-Encoding` other than exactly one `chunked`.
    TransferEncoding,
    /// Several `Content-Length` headers.
    ContentLength,
    /// The request body broke (bad chunk framing, cut short).
    MalformedBody,
    /// The request head could not be followed on the wire.
    MalformedHead,
    /// An `Upgrade: websocket` request that is not a valid RFC 6455
    /// handshake (not a GET on HTTP/1.1, no `Connection: upgrade`,
    /// `Sec-WebSocket-Version` not 13, missing or malformed key, a body).
    WebsocketHandshake,
    /// A `GET` or `HEAD` with a body: it has no meaning (RFC 9110 §9.3.1),
    /// and an upstream that skips it would read it as a request of its own.
    BodyOnGetOrHead,
}

impl BadRequest {
    /// Stable snake_case code (JSON `reason`, log `detail`).
    pub fn code(&self) -> &'static str {
        match self {
            BadRequest::MethodCase => "method_case",
            BadRequest::MissingHost => "missing_host",
            BadRequest::ContentLengthAndTransferEncoding => "content_length_and_transfer_encoding",
            BadRequest::TransferEncoding => "transfer_encoding",
            BadRequest::ContentLength => "content_length",
            BadRequest::MalformedBody => "malformed_body",
            BadRequest::MalformedHead => "malformed_head",
            BadRequest::WebsocketHandshake => "websocket_handshake",
            BadRequest::BodyOnGetOrHead => "body_on_get_or_head",
        }
    }

    /// The request's framing cannot be trusted: answer, then close the
    /// connection (what follows on it might be a smuggled request).
    pub fn closes_connection(&self) -> bool {
        !matches!(
            self,
            BadRequest::MethodCase | BadRequest::MissingHost | BadRequest::WebsocketHandshake
        )
    }
}

/// A failure on our side or the upstream's.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// Could not connect to the upstream (refused, unreachable, DNS).
    #[error("upstream {0} is unavailable")]
    UpstreamUnavailable(String),
    /// The TLS handshake with an `https://` upstream failed (untrusted or
    /// expired certificate, wrong name, client certificate refused). The
    /// client sees `upstream_unavailable` like any unreachable upstream;
    /// the access log's `detail` says `upstream_tls`, and the second
    /// field, the TLS library's error text, is logged as `cause`, never
    /// sent to the client.
    #[error("upstream {0} is unavailable")]
    UpstreamTls(String, String),
    /// The upstream did not send a response head in time.
    #[error("upstream {0} timed out")]
    UpstreamTimeout(String),
    /// Every server of the upstream is known to be down (its active
    /// health check fails on all of them): answered at once, nothing is
    /// tried.
    #[error("upstream {0} has no healthy server")]
    NoHealthyUpstream(String),
    /// The upstream's `max_requests` are in flight: answered at once,
    /// nothing is sent.
    #[error("upstream {0} has max_requests in flight")]
    UpstreamBusy(String),
    /// The session store cannot answer (Redis down) and
    /// `sessions.on_store_error` is `deny`. The field is the store's error
    /// text: logged, never sent to the client.
    #[error("session store unavailable")]
    StoreUnavailable(String),
    /// A response on a masked route could not be masked (unknown content
    /// type or encoding, invalid body, over the limit): never forwarded raw.
    #[error("response cannot be masked: {0}")]
    Unmaskable(String),
    /// An answer to an HTTP/1.0 client must be masked whole, and the
    /// answers held whole already take `masking.max_held_bytes`.
    #[error("masking buffers full (masking.max_held_bytes)")]
    MaskingBusy,
    /// The audit log of unmasked access could not be written. The field is
    /// the I/O error text: logged, never sent to the client.
    #[error("audit log unavailable")]
    AuditUnavailable(String),
    /// The upstream connection failed after it was established. The
    /// second field is the HTTP library's error text: logged, never sent
    /// to the client.
    #[error("upstream {0} failed")]
    UpstreamFailed(String, String),
}

/// Why a request ended without an upstream answer.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Deny(#[from] Deny),
    #[error(transparent)]
    Fault(#[from] Fault),
}

impl Refusal {
    /// The HTTP status sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Deny(d) => match d {
                Deny::BadTarget(_)
                | Deny::BadHost(_)
                | Deny::BadRequest(_)
                | Deny::WebsocketNotAllowed => StatusCode::BAD_REQUEST,
                Deny::NoRoute => StatusCode::NOT_FOUND,
                Deny::Unauthenticated(_) | Deny::SessionEnded(_) | Deny::UserDeactivated => {
                    StatusCode::UNAUTHORIZED
                }
                Deny::Forbidden(_)
                | Deny::WebsocketOrigin
                | Deny::LogoutOrigin
                | Deny::CookieOrigin
                | Deny::ClientCert(_) => StatusCode::FORBIDDEN,
                Deny::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                Deny::UriTooLong => StatusCode::URI_TOO_LONG,
                Deny::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Deny::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
                Deny::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            },
            Refusal::Fault(f) => match f {
                Fault::UpstreamUnavailable(_)
                | Fault::UpstreamTls(..)
                | Fault::UpstreamFailed(..) => StatusCode::BAD_GATEWAY,
                Fault::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
                Fault::StoreUnavailable(_)
                | Fault::AuditUnavailable(_)
                | Fault::NoHealthyUpstream(_)
                | Fault::UpstreamBusy(_)
                | Fault::MaskingBusy => StatusCode::SERVICE_UNAVAILABLE,
                Fault::Unmaskable(_) => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// The stable `error` code of the JSON body (documented in the README).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Deny(d) => match d {
                Deny::BadTarget(_) => "bad_request",
                Deny::BadHost(_) => "bad_request",
                Deny::BadRequest(_) => "bad_request",
                Deny::NoRoute => "no_route",
                Deny::Unauthenticated(e) => e.code(),
                Deny::Forbidden(_)
                | Deny::WebsocketOrigin
                | Deny::LogoutOrigin
                | Deny::CookieOrigin => "forbidden",
                Deny::ClientCert(_) => "client_cert_required",
                Deny::BodyTooLarge => "body_too_large",
                Deny::SessionEnded(EndReason::Idle | EndReason::Lifetime) => "session_expired",
                Deny::SessionEnded(_) => "session_ended",
                Deny::UserDeactivated => "user_deactivated",
                Deny::WebsocketNotAllowed => "websocket_not_allowed",
                Deny::UriTooLong => "uri_too_long",
                Deny::TooManyHeaders => "too_many_headers",
                Deny::RequestTimeout(_) => "request_timeout",
                Deny::RateLimited { .. } => "rate_limited",
            },
            Refusal::Fault(f) => match f {
                Fault::UpstreamUnavailable(_) | Fault::UpstreamTls(..) => "upstream_unavailable",
                Fault::UpstreamTimeout(_) => "upstream_timeout",
                Fault::NoHealthyUpstream(_) => "no_healthy_upstream",
                Fault::UpstreamBusy(_) => "upstream_busy",
                Fault::MaskingBusy => "masking_busy",
                Fault::UpstreamFailed(..) => "upstream_failed",
                Fault::StoreUnavailable(_) => "session_store_unavailable",
                Fault::Unmaskable(_) => "unmaskable_response",
                Fault::AuditUnavailable(_) => "audit_unavailable",
            },
        }
    }

    /// A finer machine-readable cause (path error code, auth failure, policy
    /// denial code), logged always and shown to clients with the reason.
    pub fn detail(&self) -> &'static str {
        match self {
            Refusal::Deny(Deny::BadTarget(e)) => e.code(),
            Refusal::Deny(Deny::BadHost(_)) => "bad_host",
            Refusal::Deny(Deny::BadRequest(b)) => b.code(),
            Refusal::Deny(Deny::Unauthenticated(e)) => e.detail(),
            Refusal::Deny(Deny::Forbidden(d)) => d.code,
            Refusal::Deny(Deny::WebsocketOrigin) => "websocket_origin",
            Refusal::Deny(Deny::LogoutOrigin) => "logout_origin",
            Refusal::Deny(Deny::CookieOrigin) => "cookie_origin",
            Refusal::Deny(Deny::ClientCert(c)) => c.code(),
            Refusal::Deny(Deny::RequestTimeout(t)) => t.code(),
            Refusal::Deny(Deny::RateLimited { limit, .. }) => limit.code(),
            Refusal::Fault(Fault::UpstreamTls(..)) => "upstream_tls",
            _ => self.code(),
        }
    }

    /// The reason text when `errors.expose_reason` is false: says what kind
    /// of refusal it was and nothing about the policy or the token.
    pub fn generic_reason(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "malformed request",
            StatusCode::NOT_FOUND => "not found",
            StatusCode::UNAUTHORIZED => "authentication required",
            StatusCode::FORBIDDEN => "access denied",
            StatusCode::PAYLOAD_TOO_LARGE => "request body too large",
            StatusCode::REQUEST_TIMEOUT => "request not received in time",
            StatusCode::URI_TOO_LONG => "request target too long",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "too many header fields",
            StatusCode::TOO_MANY_REQUESTS => "too many requests",
            StatusCode::GATEWAY_TIMEOUT => "upstream timed out",
            StatusCode::SERVICE_UNAVAILABLE => "temporarily unavailable",
            _ => "upstream unavailable",
        }
    }

    /// Session-stage refusals (ended session, deactivated user).
    pub fn is_session(&self) -> bool {
        matches!(
            self,
            Refusal::Deny(Deny::SessionEnded(_) | Deny::UserDeactivated)
        )
    }

    /// The `WWW-Authenticate` challenge of a 401 (RFC 6750 §3).
    pub fn challenge(&self) -> http::HeaderValue {
        http::HeaderValue::from_static(match self {
            Refusal::Deny(Deny::Unauthenticated(crate::auth::AuthError::Missing)) => {
                "Bearer realm=\"rolegate\""
            }
            Refusal::Deny(Deny::SessionEnded(EndReason::Idle)) => {
                "Bearer error=\"invalid_token\", error_description=\"session idle timeout\""
            }
            Refusal::Deny(Deny::SessionEnded(EndReason::Lifetime)) => {
                "Bearer error=\"invalid_token\", error_description=\"session lifetime exceeded\""
            }
            Refusal::Deny(Deny::SessionEnded(_)) => {
                "Bearer error=\"invalid_token\", error_description=\"session ended\""
            }
            Refusal::Deny(Deny::UserDeactivated) => {
                "Bearer error=\"invalid_token\", error_description=\"user deactivated\""
            }
            _ => "Bearer error=\"invalid_token\"",
        })
    }

    /// The connection must close after this answer: ambiguous framing, or
    /// a request body that was not read to its end (a timeout).
    pub fn closes_connection(&self) -> bool {
        match self {
            Refusal::Deny(Deny::BadRequest(b)) => b.closes_connection(),
            Refusal::Deny(Deny::RequestTimeout(_)) => true,
            _ => false,
        }
    }

    /// The `Retry-After` seconds of a rate-limit refusal.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Refusal::Deny(Deny::RateLimited { retry_after, .. }) => Some(*retry_after),
            _ => None,
        }
    }

    /// The library's error text behind a fault, for the log only.
    pub fn cause(&self) -> &str {
        match self {
            Refusal::Fault(
                Fault::UpstreamFailed(_, cause)
                | Fault::UpstreamTls(_, cause)
                | Fault::StoreUnavailable(cause)
                | Fault::AuditUnavailable(cause),
            ) => cause,
            _ => "",
        }
    }

    /// Refusals that are our own or the upstream's fault log at warn; policy
    /// refusals are routine and log at info.
    pub fn is_fault(&self) -> bool {
        matches!(self, Refusal::Fault(_))
    }
}

/// The JSON error body: `{"error": .., "reason": .., "request_id": ..}`.
pub fn error_body(code: &str, reason: &str, request_id: &str) -> String {
    serde_json::json!({ "error": code, "reason": reason, "request_id": request_id }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_requests_map_to_400_bad_request_with_their_code() {
        let all = [
            (BadRequest::MethodCase, "method_case", false),
            (BadRequest::MissingHost, "missing_host", false),
            (
                BadRequest::ContentLengthAndTransferEncoding,
                "content_length_and_transfer_encoding",
                true,
            ),
            (BadRequest::TransferEncoding, "transfer_encoding", true),
            (BadRequest::ContentLength, "content_length", true),
            (BadRequest::MalformedBody, "malformed_body", true),
            (BadRequest::MalformedHead, "malformed_head", true),
            (BadRequest::WebsocketHandshake, "websocket_handshake", false),
        ];
        for (b, code, closes) in all {
            let r = Refusal::from(Deny::BadRequest(b));
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
            assert_eq!(r.code(), "bad_request");
            assert_eq!(r.detail(), code);
            assert_eq!(r.to_string(), code);
            assert_eq!(r.closes_connection(), closes, "{code}");
        }
    }

    #[test]
    fn client_cert_refusals_are_403_with_their_own_code() {
        for (c, detail) in [
            (ClientCertDenial::Missing, "client_cert_missing"),
            (ClientCertDenial::NotAllowed, "client_cert_not_allowed"),
            (ClientCertDenial::Expired, "client_cert_expired"),
        ] {
            let r = Refusal::from(Deny::ClientCert(c));
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
            assert_eq!(r.code(), "client_cert_required");
            assert_eq!(r.detail(), detail);
            assert!(!r.is_session() && !r.closes_connection());
        }
    }

    #[test]
    fn head_limits_map_to_414_and_431_with_their_codes() {
        let r = Refusal::from(Deny::UriTooLong);
        assert_eq!(r.status(), StatusCode::URI_TOO_LONG);
        assert_eq!((r.code(), r.detail()), ("uri_too_long", "uri_too_long"));
        assert_eq!(r.generic_reason(), "request target too long");
        let r = Refusal::from(Deny::TooManyHeaders);
        assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(r.code(), "too_many_headers");
        assert_eq!(r.generic_reason(), "too many header fields");
        assert!(!r.closes_connection() && r.retry_after().is_none());
    }

    #[test]
    fn request_timeouts_are_408_and_close_the_connection() {
        for (t, detail) in [
            (RequestTimeout::Whole, "request_timeout"),
            (RequestTimeout::BodyRead, "body_read_timeout"),
        ] {
            let r = Refusal::from(Deny::RequestTimeout(t));
            assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
            assert_eq!(r.code(), "request_timeout");
            assert_eq!(r.detail(), detail);
            assert_eq!(r.to_string(), detail);
            assert!(r.closes_connection(), "{detail}");
        }
    }

    #[test]
    fn rate_limits_are_429_with_retry_after() {
        for (limit, detail) in [
            (RateLimit::Ip, "per_ip"),
            (RateLimit::Principal, "per_principal"),
            (RateLimit::Streams, "max_streams_per_ip"),
        ] {
            let r = Refusal::from(Deny::RateLimited {
                limit,
                retry_after: 3,
            });
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(r.code(), "rate_limited");
            assert_eq!(r.detail(), detail);
            assert_eq!(r.retry_after(), Some(3));
            assert_eq!(r.generic_reason(), "too many requests");
            assert!(!r.closes_connection() && !r.is_session() && !r.is_fault());
        }
    }

    #[test]
    fn upstream_failures_never_carry_library_text_to_clients() {
        let r = Refusal::from(Fault::UpstreamFailed(
            "app".into(),
            "error reading a body from connection: invalid chunk size".into(),
        ));
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(r.to_string(), "upstream app failed");
        assert!(r.cause().contains("chunk"));
    }

    #[test]
    fn no_healthy_upstream_is_503_with_its_own_code() {
        let r = Refusal::from(Fault::NoHealthyUpstream("app".into()));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.code(), "no_healthy_upstream");
        assert_eq!(r.detail(), "no_healthy_upstream");
        assert_eq!(r.generic_reason(), "temporarily unavailable");
        assert_eq!(r.to_string(), "upstream app has no healthy server");
        assert!(r.is_fault() && r.cause().is_empty());
        let r = Refusal::from(Fault::UpstreamBusy("app".into()));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!((r.code(), r.detail()), ("upstream_busy", "upstream_busy"));
        assert_eq!(r.to_string(), "upstream app has max_requests in flight");
        assert!(r.is_fault() && r.retry_after().is_none());
        let r = Refusal::from(Fault::MaskingBusy);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!((r.code(), r.detail()), ("masking_busy", "masking_busy"));
    }

    #[test]
    fn upstream_tls_failure_is_502_unavailable_with_its_own_detail() {
        let r = Refusal::from(Fault::UpstreamTls(
            "app".into(),
            "invalid peer certificate: UnknownIssuer".into(),
        ));
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(r.code(), "upstream_unavailable");
        assert_eq!(r.detail(), "upstream_tls");
        assert_eq!(r.to_string(), "upstream app is unavailable");
        assert!(r.cause().contains("UnknownIssuer"));
    }
}
