//! The one place that turns a configured remote into a backend of its kind (native or S3; tus
//! adds its own here), for the daemon, `ferry push --remote` and `ferry config check --connect`
//! (`probe`).

use std::sync::Arc;

use crate::config::RemoteConfig;
use crate::upload::backend::{CreateRequest, SessionRef};
use crate::upload::{Backend, BackendError, NativeBackend, NativeConfig, S3Backend};

/// The backend of the remote `name`; `None` for the embedded receiver when `embedded` (its
/// name and address, once started) is not it.
pub fn backend(
    name: &str,
    remote: &RemoteConfig,
    embedded: Option<&(String, NativeConfig)>,
) -> Result<Option<Arc<dyn Backend>>, BackendError> {
    let native = match remote {
        RemoteConfig::Native {
            url,
            workspace_id,
            token,
            ca_cert,
        } => NativeConfig {
            url: url.clone(),
            workspace_id: workspace_id.clone(),
            token: token.0.clone(),
            ca_cert: ca_cert.clone(),
        },
        RemoteConfig::Embedded { .. } => match embedded {
            Some((embedded_name, native)) if embedded_name == name => native.clone(),
            _ => return Ok(None),
        },
        RemoteConfig::S3(s3) => return Ok(Some(Arc::new(S3Backend::new(s3)?))),
    };
    Ok(Some(Arc::new(NativeBackend::new(native)?)))
}

/// What a remote is, for `ferry status`: its kind and where it stores.
pub fn describe(remote: &RemoteConfig) -> (&'static str, String) {
    match remote {
        RemoteConfig::Native {
            url, workspace_id, ..
        } => (
            "native",
            format!("{} workspace {workspace_id}", crate::redact::url(url)),
        ),
        RemoteConfig::Embedded { storage } => ("embedded", storage.display().to_string()),
        RemoteConfig::S3(s3) => ("s3", format!("bucket {} prefix {:?}", s3.bucket, s3.prefix)),
    }
}

/// What opening and aborting an upload at a remote found (`ferry config check --connect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The remote path of the upload opened and aborted.
    pub remote_path: String,
    pub elapsed: std::time::Duration,
    /// What the remote was seen to ignore (`Backend::notices`).
    pub notices: Vec<String>,
}

/// Opens an upload of `remote_path` at `backend` and aborts it. That shows the endpoint answers,
/// its TLS is trusted, the credentials are taken, the bucket or workspace is there, and the
/// credentials may write there and abort; nothing is left behind.
pub async fn probe(backend: &dyn Backend, remote_path: &str) -> Result<Probe, BackendError> {
    let started = std::time::Instant::now();
    let request = CreateRequest {
        remote_path: remote_path.to_string(),
        size: 1,
        mime_type: None,
        metadata: Default::default(),
        sha256: None,
        mtime_ns: None,
    };
    let session = backend.create(&request).await?;
    let session = SessionRef {
        id: &session.id,
        remote_path,
    };
    backend.abort(session).await?;
    Ok(Probe {
        remote_path: remote_path.to_string(),
        elapsed: started.elapsed(),
        notices: backend.notices(),
    })
}
