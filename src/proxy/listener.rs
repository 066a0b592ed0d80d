//! Accept loop: TCP accept, HTTP/1.1 connection serving with header size
//! and header-read-time limits, graceful shutdown.
//!
//! Owns connections only; every request goes to `Gateway::handle`, with
//! its raw head as the connection's `wire::Tap` read it (a `RawHead`
//! extension). Heads hyper itself refuses (a bad request line, a control
//! character in a header name, a head over `listen.max_header_bytes`) are
//! answered by hyper with a bare status and never reach the pipeline; they
//! are logged here as access lines. TLS, HTTP/2 and connection limits slot
//! in here (TLS issue).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::pipeline::Gateway;
use super::wire::{Heads, Tap};

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown` resolves, then drains connections.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    // Graceful shutdown by hand: hyper-util's `GracefulShutdown` does not
    // take an HTTP/1.1 connection with upgrades. `stop` asks every
    // connection to finish; each holds an `alive` sender until it is done.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let rt = gateway.runtime();
                let gw = gateway.clone();
                let heads = Heads::default();
                let stream = Tap::new(stream, heads.clone(), rt.listen.max_header_bytes);
                let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    let gw = gw.clone();
                    // The head the tap read for this request (HTTP/1.1
                    // answers in order); none if it lost the stream.
                    if let Some(h) = heads.pop() {
                        req.extensions_mut().insert(h);
                    }
                    async move { Ok::<_, std::convert::Infallible>(gw.handle(req, peer).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(rt.listen.header_read_timeout)
                    .max_buf_size(rt.listen.max_header_bytes)
                    .serve_connection(TokioIo::new(stream), service)
                    // Websockets (`proxy::websocket`): the upgraded stream
                    // leaves this connection once its 101 is sent.
                    .with_upgrades();
                let mut stop = stop_rx.clone();
                let alive = alive_tx.clone();
                tokio::spawn(async move {
                    let mut conn = std::pin::pin!(conn);
                    let done = tokio::select! {
                        r = conn.as_mut() => r,
                        _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = done {
                        log_connection_error(peer, &e);
                    }
                    drop(alive);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    tokio::select! {
        // `None` once every connection has dropped its sender.
        _ = alive_rx.recv() => {}
        _ = tokio::time::sleep(DRAIN) => tracing::warn!("shutdown: connections still open after drain time"),
    }
}

/// A connection ended with an error. A head hyper refused was answered by
/// hyper itself (a bare 400, or 431 for a head over `max_buf_size`, 414 for
/// a target over 65,534 bytes) before any request reached the pipeline: it gets
/// its access line here (no request id, method or path: there was no
/// request). Other errors (a client gone mid-body, the header read
/// timeout) only log at debug.
fn log_connection_error(peer: std::net::SocketAddr, e: &hyper::Error) {
    if !e.is_parse() || e.is_parse_version_h2() {
        tracing::debug!(peer = %peer, error = %e, "connection ended with error");
        return;
    }
    let reason = e.to_string();
    let status: u16 = if !e.is_parse_too_large() {
        400
    } else if reason.contains("URI") {
        414
    } else {
        431
    };
    tracing::info!(
        target: "rolegate::access",
        request_id = "",
        peer = %peer,
        method = "",
        path = "",
        route = "",
        subject = "",
        status,
        error = "bad_request",
        detail = "malformed_head",
        reason = %reason,
        duration_us = 0u64,
    );
}

/// Runs the public listener and, when given, the admin listener until
/// `shutdown` resolves; then drains connections and makes pending session
/// activity durable.
pub async fn run(
    gateway: Arc<Gateway>,
    public: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let admin_task = admin.map(|l| {
        let mut rx = rx.clone();
        tokio::spawn(crate::admin::serve(gateway.clone(), l, async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }))
    });
    serve(gateway.clone(), public, async move {
        shutdown.await;
        let _ = tx.send(true);
    })
    .await;
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    gateway.store().flush().await;
}
