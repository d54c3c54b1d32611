//! Accepting connections with the limits a receiver facing untrusted clients needs: a cap on
//! connections served at once, and hyper's header-read timeout, which also ends connections
//! left idle between requests, so slow-header (slowloris) clients hold nothing for long.
//! (axum's own `serve` sets no timer, so hyper applies no timeout at all.)

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Guards;

/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown`; then lets requests in progress finish.
pub async fn accept(
    listener: TcpListener,
    router: Router,
    guards: Guards,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(guards.max_connections));
    let connections = TaskTracker::new();
    loop {
        // At the cap nothing more is accepted: new clients wait in the listen backlog until
        // a connection closes (or a timeout closes it).
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(guards.header_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}
