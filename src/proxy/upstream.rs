//! Phase 6 transport: the pooled hyper client per upstream and the mapping
//! of its failures to [`Fault`]s.
//!
//! Owns connecting, pooling and the response-head timeout. It does not
//! touch headers (that is `headers.rs`) or decide anything.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Upstream;
use crate::error::{BadRequest, Deny, Fault, Refusal};
use crate::proxy::body::{BodyTooLarge, MalformedBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body type sent upstream (the client's body, streamed, with a size limit).
pub type UpBody = BoxBody<Bytes, BoxError>;
pub type HttpClient = Client<HttpConnector, UpBody>;

/// A pooled HTTP/1.1 client with a connect timeout.
pub fn new_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    // The request URI is always built from the upstream's own origin, never
    // from client input, so enforcing http keeps an `https` typo from
    // silently going out in clear.
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
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
            if has_cause::<MalformedBody>(&e) {
                tracing::debug!(upstream = %up.name, error = %chain(&e), "request body broke while forwarding");
                return Err(Deny::BadRequest(BadRequest::MalformedBody).into());
            }
            if e.is_connect() {
                tracing::warn!(upstream = %up.name, error = %chain(&e), "upstream connect failed");
                return Err(Fault::UpstreamUnavailable(up.name.clone()).into());
            }
            Err(Fault::UpstreamFailed(up.name.clone(), chain(&e)).into())
        }
    }
}

pub(crate) fn has_cause<T: std::error::Error + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
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
