//! The daemon's uploaders, one per configured remote (its backend from `crate::remotes`), and
//! the receiver the daemon embeds when the configuration has no remote of its own. The rest of
//! the daemon sees only `Uploader`s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::DaemonError;
use crate::config::{Config, RemoteConfig};
use crate::queue::Store;
use crate::server::{self, ServeConfig};
use crate::upload::{NativeConfig, Uploader};

/// The embedded receiver's remote (its name and how to reach it), and its URL and storage.
pub(super) type Embedded = (Option<(String, NativeConfig)>, Option<(String, PathBuf)>);

/// Starts the embedded receiver if the configuration has one; returns its remote and URL.
pub(super) async fn start_embedded_receiver(
    config: &Config,
    services: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<Embedded, DaemonError> {
    let Some((name, storage)) = config
        .remotes
        .iter()
        .find_map(|(name, remote)| match remote {
            RemoteConfig::Embedded { storage } => Some((name.clone(), storage.clone())),
            RemoteConfig::Native { .. } | RemoteConfig::S3(_) => None,
        })
    else {
        return Ok((None, None));
    };
    let (token, _) = server::resolve_token(&storage, None, None)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DaemonError::Receiver)?;
    let url = format!(
        "http://{}",
        listener.local_addr().map_err(DaemonError::Receiver)?
    );
    let serve_config = ServeConfig {
        storage: storage.clone(),
        token: token.clone(),
        workspaces: Vec::new(),
        limits: server::Limits::default(),
        session_ttl: server::DEFAULT_SESSION_TTL,
        guards: server::Guards::default(),
    };
    let shutdown = services.clone();
    tracker.spawn(async move {
        if let Err(error) = server::serve(listener, serve_config, shutdown).await {
            tracing::error!(error = %crate::error::chain(&error), "the embedded receiver stopped");
        }
    });
    let native = NativeConfig {
        url: url.clone(),
        workspace_id: "default".into(),
        token,
    };
    Ok((Some((name, native)), Some((url, storage))))
}

/// An uploader per configured remote.
pub(super) fn build_uploaders(
    config: &Config,
    store: &Store,
    embedded: Option<&(String, NativeConfig)>,
) -> Result<BTreeMap<String, Arc<Uploader>>, DaemonError> {
    let mut uploaders = BTreeMap::new();
    for (name, remote) in &config.remotes {
        let backend = crate::remotes::backend(name, remote, embedded).map_err(|source| {
            DaemonError::Remote {
                name: name.clone(),
                source: Box::new(source),
            }
        })?;
        let Some(backend) = backend else {
            continue;
        };
        let settings = config.upload_for(name);
        let uploader = Uploader::new(backend, store.sessions(), settings);
        uploaders.insert(name.clone(), Arc::new(uploader));
    }
    Ok(uploaders)
}
