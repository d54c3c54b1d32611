//! Accepting control connections: ownership checks, one request per connection, a deadline for
//! the whole exchange.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::protocol::{
    Command, Outcome, PROTOCOL_VERSION, Reply, Request, Response, read_frame, write_frame,
};

/// Time a client has to send its request, and the daemon to answer it.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the daemon does with a command. A refusal is an `Outcome::Error`, not a transport
/// failure.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, command: Command) -> Result<Reply, (String, String)>;
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another ferry daemon is already listening on {path}")]
    InUse { path: PathBuf },
    #[error("cannot create the control socket at {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the control socket at `path`, taking over a stale socket file.
pub async fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let bind_error = |source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    // tokio::fs: the file system work runs on blocking threads, not on the runtime.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !tokio::fs::try_exists(parent).await.unwrap_or(false)
    {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(bind_error)?;
        tokio::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(bind_error)?;
    }
    if tokio::fs::try_exists(path).await.unwrap_or(false) {
        if UnixStream::connect(path).await.is_ok() {
            return Err(SocketError::InUse {
                path: path.to_path_buf(),
            });
        }
        tracing::info!(path = %path.display(), "removing a stale control socket");
        tokio::fs::remove_file(path).await.map_err(bind_error)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .await
        .map_err(bind_error)?;
    Ok(listener)
}

/// Answers control connections until `shutdown`; removes the socket file at the end.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    path: PathBuf,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own_uid = unsafe { libc::geteuid() };
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, own_uid, handler))
                .await
                .is_err()
            {
                tracing::debug!("control client timed out");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

/// A refusal with `code`.
fn refuse(code: &str, message: String) -> Response {
    Response {
        version: PROTOCOL_VERSION,
        outcome: Outcome::Error {
            code: code.into(),
            message,
        },
    }
}

async fn exchange<H: Handler>(mut stream: UnixStream, own_uid: u32, handler: Arc<H>) {
    // Root may: it could read the store anyway, and `sudo ferry status` is how one looks at a
    // system service running as its own user.
    let peer_uid = stream.peer_cred().map(|cred| cred.uid());
    if !matches!(peer_uid, Ok(uid) if uid == own_uid || uid == 0) {
        let response = refuse(
            "forbidden",
            "only the user running the daemon (or root) may control it".into(),
        );
        let _ = write_frame(&mut stream, &response).await;
        return;
    }
    let response = match read_frame(&mut stream).await {
        Err(error) => refuse("bad_request", error.to_string()),
        Ok(bytes) => match serde_json::from_slice::<Request>(&bytes) {
            Err(error) => refuse("bad_request", format!("malformed request: {error}")),
            Ok(request) if request.version != PROTOCOL_VERSION => refuse(
                "unsupported_version",
                format!(
                    "request version {} is not {PROTOCOL_VERSION}; use a matching ferry",
                    request.version
                ),
            ),
            Ok(request) => match handler.handle(request.command).await {
                Ok(reply) => Response {
                    version: PROTOCOL_VERSION,
                    outcome: Outcome::Ok(reply),
                },
                Err((code, message)) => refuse(&code, message),
            },
        },
    };
    if let Err(error) = write_frame(&mut stream, &response).await {
        tracing::debug!(%error, "could not answer a control client");
    }
}
