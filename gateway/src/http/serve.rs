//! The HTTP server's accept loop, bounded where a peer can hold resources: a connection must
//! send its request head within [`HEADER_TIMEOUT`] (a kept-alive connection that sends nothing
//! is closed after it too), and at most [`max_connections`] are open at once — past that new
//! ones are closed at once, so silent sockets cannot take the descriptors workers and voice
//! connections need. WebSockets live on after their upgrade; they end with the node's stop.

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::warn;

/// Time to send a request head, and the longest a kept-alive connection may sit idle.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time requests in progress get to finish when the node stops.
const DRAIN: Duration = Duration::from_secs(5);

/// Open connections allowed: half the descriptors the process may open (the rest are for
/// workers, voice and sources), between 16 and 10,000.
pub fn max_connections() -> usize {
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    (soft / 2).clamp(16, 10_000) as usize
}

/// Serves `app` on `listener` until `stop`, then lets requests in progress finish.
pub async fn serve(listener: TcpListener, app: Router, stop: CancellationToken) {
    let open = Arc::new(Semaphore::new(max_connections()));
    let connections = TaskTracker::new();
    let mut refused_logged = Instant::now() - Duration::from_secs(60);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to free up.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            crate::telemetry::record_http_connection_refused();
            if refused_logged.elapsed() >= Duration::from_secs(10) {
                refused_logged = Instant::now();
                warn!(%remote, limit = max_connections(), "too many open HTTP connections; closing new ones");
            }
            continue;
        };
        let (app, stop) = (app.clone(), stop.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                app.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn).await;
                }
            }
            drop(permit);
        });
    }
    connections.close();
    let _ = tokio::time::timeout(DRAIN, connections.wait()).await;
}
