//! The daemon's uploaders, one per configured remote (its backend from `crate::remotes`, its
//! bandwidth limit from `Limiters`), and the receiver the daemon embeds when the configuration
//! has no remote of its own. The rest of the daemon sees only `Uploader`s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::DaemonError;
use crate::config::{Config, RemoteConfig};
use crate::queue::Store;
use crate::server::{self, ServeConfig};
use crate::upload::bwlimit::{Bandwidth, Limiter};
use crate::upload::{NativeConfig, Uploader};

/// The embedded receiver's remote (its name and how to reach it), and its URL and storage.
pub(super) type Embedded = (Option<(String, NativeConfig)>, Option<(String, PathBuf)>);

/// Starts the embedded receiver if the configuration has one; returns its remote and URL.
pub(super) async fn start_embedded_receiver(
    config: &Config,
    services: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<Embedded, DaemonError> {
    let Some((name, storage)) = embedded_storage(config) else {
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
    let serve_config = ServeConfig::new(storage.clone(), token.clone());
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
        ca_cert: None,
    };
    Ok((Some((name, native)), Some((url, storage))))
}

/// The embedded receiver's remote name and storage folder, if the configuration has one.
fn embedded_storage(config: &Config) -> Option<(String, PathBuf)> {
    config
        .remotes
        .iter()
        .find_map(|(name, remote)| match remote {
            RemoteConfig::Embedded { storage } => Some((name.clone(), storage.clone())),
            RemoteConfig::Native { .. } | RemoteConfig::S3(_) => None,
        })
}

/// The bandwidth limits in force: one shared by every remote without a limit of its own, and
/// each remote's own. They outlive reloads (a reload sets them anew, so what a bucket holds
/// carries over), and `ferry bwlimit` sets them all until the next reload or restart.
#[derive(Debug, Default)]
pub(super) struct Limiters {
    shared: Arc<Limiter>,
    own: Mutex<BTreeMap<String, Arc<Limiter>>>,
}

impl Limiters {
    /// The limiter the remote `name` draws from under `config`.
    fn for_remote(&self, config: &Config, name: &str) -> Arc<Limiter> {
        if !config.remote_bandwidth.contains_key(name) {
            return self.shared.clone();
        }
        let mut own = self.own.lock().expect("limiters lock is never poisoned");
        own.entry(name.to_string()).or_default().clone()
    }

    /// Sets the limits `config` names (at start, and once a reload is applied).
    pub(super) fn apply(&self, config: &Config) {
        self.shared.set(config.bandwidth.clone());
        let own = self.own.lock().expect("limiters lock is never poisoned");
        for (name, limiter) in own.iter() {
            let bandwidth = config.remote_bandwidth.get(name).cloned();
            limiter.set(bandwidth.unwrap_or_default());
        }
    }

    /// Sets every limit to `bandwidth` (`ferry bwlimit`).
    pub(super) fn set_all(&self, bandwidth: Bandwidth) {
        let own = self.own.lock().expect("limiters lock is never poisoned");
        for limiter in own.values().chain([&self.shared]) {
            limiter.set(bandwidth.clone());
        }
    }
}

/// An uploader per configured remote, drawing from the bandwidth limit `limiters` has for it.
pub(super) fn build_uploaders(
    config: &Config,
    store: &Store,
    embedded: Option<&(String, NativeConfig)>,
    limiters: &Limiters,
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
        let limiter = limiters.for_remote(config, name);
        let uploader =
            Uploader::new(backend, store.sessions(), settings).with_limiter(Some(limiter));
        uploaders.insert(name.clone(), Arc::new(uploader));
    }
    Ok(uploaders)
}
