//! `ferry serve`: the reference receiver of the native protocol (`shared/PROTOCOL.md`).
//!
//! It owns its `--storage DIR` and nothing else: sessions and parts live under `DIR/.ferry/`
//! and survive restarts; completed files appear atomically at `DIR/<workspace_id>/<filename>`.
//! Hostile input is refused with the protocol's status and code and never escapes `DIR`.
//!
//! `serve` takes a bound listener and a cancellation token, so tests and the daemon's embedded
//! receiver run it in-process on `127.0.0.1:0`.

mod error;
mod handler;
mod listen;
mod live;
mod metrics;
mod part;
pub mod storage;
pub mod validate;
mod webhook;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
use storage::Storage;

pub use webhook::WebhookConfig;

/// Version reported by `GET /v1/health`.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Limits a receiver announces at init and enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_part_size: u64,
    pub max_part_size: u64,
    pub max_parts: u32,
    pub max_file_size: u64,
}

impl Default for Limits {
    /// The protocol's example limits (S3's too), and a 1 TiB file cap.
    fn default() -> Self {
        Limits {
            min_part_size: 256 * 1024,
            max_part_size: 5 * 1024 * 1024 * 1024,
            max_parts: 10_000,
            max_file_size: 1 << 40,
        }
    }
}

/// What a client may hold of the receiver, so that slow or abusive clients cannot starve the
/// others (see `docs/security.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guards {
    /// A request's headers must arrive within this; an idle keep-alive connection is closed
    /// after it too.
    pub header_timeout: Duration,
    /// A part body that sends nothing for this long is abandoned with `408`.
    pub body_idle_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Sessions open at once; an init past it is refused with `429` and `Retry-After`.
    pub max_open_sessions: usize,
}

/// Headers in 30 s: generous for any client, short enough that a slowloris attack holds
/// each connection briefly (nginx and Apache default to 60 s).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// A minute without body bytes: the client's own stall timeout gives up at the same point.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Half of the common 1,024 open-file limit, leaving the rest for part files and the store.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Far more than any client's parallel uploads, far fewer than would exhaust inodes.
pub const DEFAULT_MAX_OPEN_SESSIONS: usize = 1024;

impl Default for Guards {
    fn default() -> Self {
        Guards {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_open_sessions: DEFAULT_MAX_OPEN_SESSIONS,
        }
    }
}

/// Everything `serve` needs besides its listener.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub storage: PathBuf,
    pub token: String,
    /// Workspaces accepted; empty means any.
    pub workspaces: Vec<String>,
    pub limits: Limits,
    /// How long a session stays usable after init.
    pub session_ttl: Duration,
    pub guards: Guards,
    /// Told of every completed upload (`ferry serve --webhook`).
    pub webhook: Option<WebhookConfig>,
    /// Serve `/metrics` for Prometheus (`ferry serve --metrics`).
    pub metrics: bool,
}

impl ServeConfig {
    /// A receiver on `storage` taking `token`, every other setting at its default: any
    /// workspace, the default limits, guards and session lifetime, no webhook, no metrics.
    pub fn new(storage: PathBuf, token: String) -> ServeConfig {
        ServeConfig {
            storage,
            token,
            workspaces: Vec::new(),
            limits: Limits::default(),
            session_ttl: DEFAULT_SESSION_TTL,
            guards: Guards::default(),
            webhook: None,
            metrics: false,
        }
    }
}

/// Default session lifetime: a day, as the protocol's example shows.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// Fatal receiver errors: those that stop `serve`, not those answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open storage folder {path}")]
    Storage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read token file {path}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token")]
    Token(#[source] crate::secret::SecretError),
    #[error("limits are inconsistent: {0}")]
    Limits(String),
    #[error("the receiver stopped with an I/O error")]
    Serve(#[source] std::io::Error),
}

/// Where the bearer token came from, for the start-up message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    File(PathBuf),
    Environment,
    Generated(PathBuf),
}

/// Resolves the receiver's token: `--token-file`, else `FERRY_SERVE_TOKEN` (passed in as
/// `from_env`), else the token generated earlier into `DIR/.ferry/token`, else a new one
/// written there with mode 0600.
pub fn resolve_token(
    storage_dir: &Path,
    token_file: Option<&Path>,
    from_env: Option<String>,
) -> Result<(String, TokenSource), ServerError> {
    if let Some(path) = token_file {
        let token = read_token(path)?;
        return Ok((token, TokenSource::File(path.to_path_buf())));
    }
    if let Some(token) = from_env
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
    {
        return Ok((token, TokenSource::Environment));
    }
    let storage = Storage::open(storage_dir).map_err(|source| ServerError::Storage {
        path: storage_dir.to_path_buf(),
        source,
    })?;
    let path = storage.token_path();
    if path.exists() {
        return Ok((read_token(&path)?, TokenSource::Generated(path)));
    }
    let token = format!("{:032x}", rand::random::<u128>());
    write_private(&path, &token).map_err(|source| ServerError::TokenFile {
        path: path.clone(),
        source,
    })?;
    Ok((token, TokenSource::Generated(path)))
}

/// Reads a token file, trimming surrounding whitespace.
fn read_token(path: &Path) -> Result<String, ServerError> {
    crate::secret::read_file(path).map_err(ServerError::Token)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// State shared by all handlers.
pub(crate) struct AppState {
    storage: Storage,
    config: ServeConfig,
    locks: SessionLocks,
    live: live::LiveSessions,
    open_sessions: OpenSessions,
    webhook: Option<webhook::Webhook>,
    metrics: metrics::ServeMetrics,
}

/// How many sessions are open, against `Guards::max_open_sessions`.
struct OpenSessions {
    count: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl OpenSessions {
    /// Counts one more open session, unless that would pass the cap.
    fn take(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok()
    }

    /// `closed` sessions are no longer open (completed, aborted, expired).
    /// Sessions open now.
    fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    fn release(&self, closed: usize) {
        use std::sync::atomic::Ordering;
        let _ = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                Some(open.saturating_sub(closed))
            });
    }
}

/// One async lock per session, serialising part commits against complete and abort. The map
/// itself sits behind a std mutex: it is held only to look up or insert an entry, never across
/// an await.
#[derive(Default)]
struct SessionLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl SessionLocks {
    async fn lock(&self, upload_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().expect("session lock map is never poisoned");
            map.entry(upload_id.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Drops the locks nobody holds, so the map does not grow with every session ever seen.
    fn prune(&self) {
        let mut map = self.0.lock().expect("session lock map is never poisoned");
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
    }
}

/// Runs the receiver on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let limits = config.limits;
    if limits.min_part_size > limits.max_part_size || limits.max_parts == 0 {
        return Err(ServerError::Limits(format!(
            "min part size {} must not exceed max part size {}, and max parts must be at least 1",
            limits.min_part_size, limits.max_part_size
        )));
    }
    let (storage, open) = open_storage(&config.storage).await?;
    let open_sessions = OpenSessions {
        count: open.into(),
        max: config.guards.max_open_sessions,
    };
    let metrics = metrics::ServeMetrics::new();
    let (webhook, webhook_sweep) =
        start_webhook(config.webhook.as_ref(), &storage, &metrics, &shutdown).await;
    let app = Arc::new(AppState {
        storage,
        webhook,
        metrics,
        config,
        locks: SessionLocks::default(),
        live: live::LiveSessions::default(),
        open_sessions,
    });
    let sweeper = tokio::spawn(sweep(app.clone(), shutdown.clone()));
    let guards = app.config.guards;
    listen::accept(listener, router(app), guards, shutdown.clone()).await;
    shutdown.cancel();
    let _ = sweeper.await;
    if let Some(webhook_sweep) = webhook_sweep {
        let _ = webhook_sweep.await;
    }
    Ok(())
}

/// The storage folder at `path`, opened on a blocking thread, and its sessions open.
async fn open_storage(path: &std::path::Path) -> Result<(Storage, usize), ServerError> {
    let dir = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let storage = Storage::open(&dir)?;
        let open = storage.count_open()?;
        Ok::<_, std::io::Error>((storage, open))
    })
    .await
    .expect("opening storage does not panic")
    .map_err(|source| ServerError::Storage {
        path: path.to_path_buf(),
        source,
    })
}

/// The webhook `config` asks for, with the posts it kept counted (before any upload can
/// complete) and its sweep started until `shutdown`.
async fn start_webhook(
    config: Option<&WebhookConfig>,
    storage: &Storage,
    metrics: &metrics::ServeMetrics,
    shutdown: &CancellationToken,
) -> (
    Option<webhook::Webhook>,
    Option<tokio::task::JoinHandle<()>>,
) {
    let Some(config) = config else {
        return (None, None);
    };
    let counted = metrics.webhook.clone();
    let webhook = webhook::Webhook::new(config.clone(), storage.clone(), counted);
    webhook.count_kept().await;
    let sweep = tokio::spawn(webhook.clone().sweep(shutdown.clone()));
    (Some(webhook), Some(sweep))
}

fn router(app: Arc<AppState>) -> Router {
    let authenticated = Router::new()
        .route("/v1/uploads/chunked/init", post(handler::init))
        .route(
            "/v1/uploads/chunked/{upload_id}",
            get(handler::query).delete(handler::abort),
        )
        .route(
            "/v1/uploads/chunked/{upload_id}/parts",
            put(handler::put_part),
        )
        .route(
            "/v1/uploads/chunked/{upload_id}/complete",
            post(handler::complete),
        )
        .route(
            "/v1/workspaces/{workspace_id}/files/{*path}",
            get(handler::file_metadata),
        )
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate));
    let mut open = Router::new().route("/v1/health", get(handler::health));
    if app.config.metrics {
        open = open.route("/metrics", get(metrics::scrape));
    }
    open.merge(authenticated)
        .fallback(handler::not_found)
        .method_not_allowed_fallback(handler::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            app.clone(),
            metrics::count_refusals,
        ))
        .with_state(app)
}

/// Checks `Authorization: Bearer <token>` before any authenticated handler runs.
async fn authenticate(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.trim().as_bytes(), app.config.token.as_bytes()) => {
            next.run(request).await
        }
        _ => ApiError::new(
            crate::protocol::ErrorCode::Unauthorized,
            "missing or unknown bearer token",
        )
        .into_response(),
    }
}

/// Compares without an early exit, so response timing does not reveal a token prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn sweep(app: Arc<AppState>, shutdown: CancellationToken) {
    let interval =
        (app.config.session_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let storage = app.storage.clone();
        match tokio::task::spawn_blocking(move || storage.sweep_expired(SystemTime::now())).await {
            Ok(Ok(removed)) if removed.is_empty() => {}
            Ok(Ok(removed)) => {
                tracing::info!(removed = removed.len(), "swept expired upload sessions");
                app.live
                    .retain(|id| !removed.iter().any(|(gone, _)| gone == id));
                app.open_sessions
                    .release(removed.iter().filter(|(_, was_open)| *was_open).count());
            }
            Ok(Err(error)) => tracing::warn!(%error, "sweeping expired sessions failed"),
            Err(error) => tracing::warn!(%error, "sweeping expired sessions panicked"),
        }
        app.locks.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_generated_once_with_mode_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (first, source) = resolve_token(dir.path(), None, None).unwrap();
        let TokenSource::Generated(path) = source else {
            panic!("expected a generated token")
        };
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (second, _) = resolve_token(dir.path(), None, None).unwrap();
        assert_eq!(first, second);
        let (from_env, source) = resolve_token(dir.path(), None, Some("env-token".into())).unwrap();
        assert_eq!(
            (from_env.as_str(), source),
            ("env-token", TokenSource::Environment)
        );
    }

    #[test]
    fn constant_time_eq_table() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
