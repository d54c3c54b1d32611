//! `ferry serve`: the reference receiver, from its command line to a running server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use super::signals::{Asked, Signals};
use crate::UsageError;
use crate::config::HookSpec;
use crate::output::errln;
use crate::server::{self, Guards, Limits, ServeConfig, TokenSource};

/// How long one webhook post may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// What `ferry serve` was asked, as its command line gave it.
pub struct ServeRequest {
    pub listen: SocketAddr,
    pub storage: PathBuf,
    /// `--token-file`; else `FERRY_SERVE_TOKEN`; else a generated one.
    pub token_file: Option<PathBuf>,
    /// Accepted workspaces; empty: any.
    pub workspaces: Vec<String>,
    pub session_ttl: Duration,
    pub limits: Limits,
    pub guards: Guards,
    /// `--webhook`: told of every completed upload.
    pub webhook: Option<String>,
    /// `--webhook-secret-file`: signs the webhook's posts.
    pub webhook_secret_file: Option<PathBuf>,
    /// `--metrics`: serve `/metrics` for Prometheus.
    pub metrics: bool,
}

/// Checks the request, listens, prints the address, and serves until SIGTERM or SIGINT.
pub async fn serve(request: ServeRequest) -> Result<()> {
    for workspace in &request.workspaces {
        crate::protocol::check_workspace_id(workspace)
            .map_err(|problem| UsageError(format!("--workspace {workspace:?}: {problem}")))?;
    }
    let webhook = webhook(request.webhook.clone(), request.webhook_secret_file.clone())?;
    let from_env = std::env::var("FERRY_SERVE_TOKEN").ok();
    let (token, source) =
        server::resolve_token(&request.storage, request.token_file.as_deref(), from_env)?;
    let mut signals = Signals::install(false)?;
    let listener = tokio::net::TcpListener::bind(request.listen)
        .await
        .with_context(|| format!("cannot listen on {}", request.listen))?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    match source {
        TokenSource::File(path) => errln(&format!("token read from {}", path.display())),
        TokenSource::Environment => errln("token read from FERRY_SERVE_TOKEN"),
        TokenSource::Generated(path) => errln(&format!("token in {}", path.display())),
    }
    // The one line scripts and tests read to learn the port.
    crate::output::outln_best_effort(&format!("ferry serve listening on http://{address}"));
    let config = serve_config(request, token, webhook);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        while signals.next().await != Asked::Stop {}
        tracing::info!("shutting down");
        stop.cancel();
    });
    server::serve(listener, config, shutdown).await?;
    Ok(())
}

/// The receiver's settings from the command line, with `token` and the `webhook` checked.
fn serve_config(request: ServeRequest, token: String, webhook: Option<HookSpec>) -> ServeConfig {
    ServeConfig {
        storage: request.storage,
        token,
        workspaces: request.workspaces,
        limits: request.limits,
        session_ttl: request.session_ttl,
        guards: Guards {
            max_connections: request.guards.max_connections.max(1),
            max_open_sessions: request.guards.max_open_sessions.max(1),
            ..request.guards
        },
        webhook: webhook.map(server::WebhookConfig::new),
        metrics: request.metrics,
    }
}

/// `--webhook` and `--webhook-secret-file` as a hook: an http or https URL, and a readable
/// secret file (read again at each post, so it can be replaced).
fn webhook(url: Option<String>, secret_file: Option<PathBuf>) -> Result<Option<HookSpec>> {
    let Some(url) = url else {
        if secret_file.is_some() {
            return Err(UsageError("--webhook-secret-file needs --webhook URL".into()).into());
        }
        return Ok(None);
    };
    let parsed = url::Url::parse(&url).map_err(|error| {
        let shown = crate::redact::url(&url);
        UsageError(format!("--webhook {shown}: {error}"))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(UsageError("--webhook: the URL must be http or https".into()).into());
    }
    if let Some(file) = &secret_file {
        crate::secret::read_file(file).map_err(|error| {
            UsageError(format!(
                "--webhook-secret-file: {}",
                crate::error::chain(&error)
            ))
        })?;
    }
    Ok(Some(HookSpec::Webhook {
        url,
        secret_file,
        timeout: WEBHOOK_TIMEOUT,
    }))
}
