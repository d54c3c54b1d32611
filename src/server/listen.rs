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
            accepted = next_stream(&listener) => match accepted {
                Some(stream) => stream,
                None => continue,
            },
        };
        let serving = serve(
            stream,
            router.clone(),
            guards.header_timeout,
            shutdown.clone(),
        );
        connections.spawn(async move {
            serving.await;
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

/// The next connection, ready to serve; `None` after a failed accept (out of file
/// descriptors, say) and a pause.
async fn next_stream(listener: &TcpListener) -> Option<tokio::net::TcpStream> {
    match listener.accept().await {
        Ok((stream, _)) => {
            let _ = stream.set_nodelay(true);
            Some(stream)
        }
        Err(error) => {
            tracing::warn!(%error, "accepting a connection failed");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            None
        }
    }
}

/// Serves one connection until the client closes it, or until `shutdown`, when the request in
/// progress is let finish.
async fn serve(
    stream: tokio::net::TcpStream,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
