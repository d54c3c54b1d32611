//! The client side of the control socket, used by the CLI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;

use super::protocol::{
    Command, FrameError, Outcome, PROTOCOL_VERSION, Reply, Request, Response, read_frame,
    write_frame,
};

/// How long the CLI waits for the daemon's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens on the socket: the CLI exits with code 3.
    #[error("the ferry daemon is not running (no answer on {socket}); start it with `ferry run`")]
    NotRunning {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket (or a folder on its way) may not be used by this user: exit code 4, as
    /// systemctl gives for a lack of privileges.
    #[error(
        "permission denied on {socket}: only the user running the daemon (or root) may control it"
    )]
    PermissionDenied {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the daemon on {socket} failed")]
    Frame {
        socket: PathBuf,
        #[source]
        source: FrameError,
    },
    #[error("the daemon did not answer within {CALL_TIMEOUT:?}")]
    Timeout,
    #[error("the daemon refused: {code}: {message}")]
    Refused { code: String, message: String },
}

/// Sends one command and returns the daemon's reply.
pub async fn call(socket: &Path, command: Command) -> Result<Reply, ControlError> {
    let exchange = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(|source| connect_error(socket, source))?;
        let frame_error = |source| ControlError::Frame {
            socket: socket.to_path_buf(),
            source,
        };
        let sent = write_frame(
            &mut stream,
            &Request {
                version: PROTOCOL_VERSION,
                command,
            },
        )
        .await;
        // A daemon that refuses the peer answers without reading the request and hangs up,
        // which can break our write: its answer is still there to read, and says more.
        let bytes = match (sent, read_frame(&mut stream).await) {
            (_, Ok(bytes)) => bytes,
            (Err(error), Err(_)) | (Ok(()), Err(error)) => return Err(frame_error(error)),
        };
        let response: Response =
            serde_json::from_slice(&bytes).map_err(|e| frame_error(FrameError::Malformed(e)))?;
        match response.outcome {
            Outcome::Ok(reply) => Ok(reply),
            Outcome::Error { code, message } if code == "forbidden" => {
                Err(ControlError::PermissionDenied {
                    socket: socket.to_path_buf(),
                    source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, message),
                })
            }
            Outcome::Error { code, message } => Err(ControlError::Refused { code, message }),
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| ControlError::Timeout)?
}

fn connect_error(socket: &Path, source: std::io::Error) -> ControlError {
    let socket = socket.to_path_buf();
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        ControlError::PermissionDenied { socket, source }
    } else {
        ControlError::NotRunning { socket, source }
    }
}
