//! A `[remotes.NAME]` table: its kind, then the keys of that kind.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::DeTable;

use super::aws::{self, DEFAULT_REGION};
use super::{Reader, UPLOAD_KEYS, join};
use crate::config::{RemoteConfig, Secret};
use crate::upload::http::CaCert;
use crate::upload::s3::profile::SharedFiles;
use crate::upload::s3::sts::StsEndpoint;
use crate::upload::s3::{
    CANNED_ACLS, Checksum, CredentialSource, CustomerKey, Encryption, S3Config,
};

const NATIVE_KEYS: &[&str] = &[
    "kind",
    "url",
    "workspace_id",
    "token_file",
    "token_env",
    "ca_cert",
];
const S3_KEYS: &[&str] = &[
    "kind",
    "endpoint",
    "region",
    "bucket",
    "prefix",
    "path_style",
    "storage_class",
    "checksum",
    "profile",
    "access_key_id",
    "secret_access_key_file",
    "server_side_encryption",
    "sse_kms_key_id",
    "sse_customer_key_file",
    "acl",
    "ca_cert",
];
/// `value` as the remote gave it, else what `find` finds, with where it came from.
fn or_found(
    value: Option<String>,
    find: impl FnOnce() -> Option<(String, String)>,
) -> (Option<String>, Option<String>) {
    match value {
        Some(value) => (Some(value), None),
        None => find().map_or((None, None), |(value, from)| (Some(value), Some(from))),
    }
}

impl Reader<'_> {
    pub(super) fn remote(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        span: Range<usize>,
        base: &Path,
    ) -> Option<RemoteConfig> {
        let kind = self.get::<String>(path, table, "kind");
        let kind = self.require(path, table, "kind", kind, Some(span.clone()))?;
        let own_keys = match kind.as_str() {
            "native" => NATIVE_KEYS,
            "s3" => S3_KEYS,
            other => {
                let message = match other {
                    "tus" => "kind \"tus\" is not supported yet; use \"native\" or \"s3\"".into(),
                    _ => format!("unknown kind {other:?}; use \"native\" or \"s3\""),
                };
                let key_span = table.get("kind").map(Spanned::span);
                self.problem(join(path, "kind"), key_span, message);
                return None;
            }
        };
        // And the remote's own part sizes and parallelism (see `upload_keys`).
        let keys: Vec<&str> = own_keys.iter().copied().chain(UPLOAD_KEYS).collect();
        self.unknown_keys(path, table, &keys);
        match kind.as_str() {
            "native" => self.native(path, table, span, base),
            _ => self.s3(path, table, span, base),
        }
    }

    fn native(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        span: Range<usize>,
        base: &Path,
    ) -> Option<RemoteConfig> {
        let url = self.get_as(path, table, "url", |url: String| {
            crate::protocol::check_base_url(&url).map(|()| url)
        });
        let url = self.require(path, table, "url", url, Some(span.clone()));
        let workspace_id = self.get_as(path, table, "workspace_id", |id: String| {
            crate::protocol::check_workspace_id(&id).map(|()| id)
        });
        let workspace_id = self.require(
            path,
            table,
            "workspace_id",
            workspace_id,
            Some(span.clone()),
        );
        let token = self.token(path, table, span, base);
        let ca_cert = self.ca_cert(path, table, base, None);
        Some(RemoteConfig::Native {
            url: url?,
            workspace_id: workspace_id?,
            token: token?,
            ca_cert: ca_cert?,
        })
    }

    fn token(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        span: Range<usize>,
        base: &Path,
    ) -> Option<Secret> {
        match (table.get("token_file"), table.get("token_env")) {
            (Some(_), Some(value)) => {
                self.problem(
                    join(path, "token_env"),
                    Some(value.span()),
                    "give token_file or token_env, not both",
                );
                None
            }
            (Some(_), None) => self.get_as(path, table, "token_file", |file: PathBuf| {
                crate::secret::read_file(&base.join(file))
                    .map(Secret)
                    .map_err(|error| crate::error::chain(&error))
            }),
            (None, Some(_)) => self.get_as(path, table, "token_env", |name: String| {
                crate::secret::read_env(&name)
                    .map(Secret)
                    .map_err(|error| error.to_string())
            }),
            (None, None) => {
                self.problem(
                    path,
                    Some(span),
                    "needs token_file or token_env (tokens are never written inline)",
                );
                None
            }
        }
    }

    fn s3(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        span: Range<usize>,
        base: &Path,
    ) -> Option<RemoteConfig> {
        let bucket = self.get_as(path, table, "bucket", bucket_name);
        let bucket = self.require(path, table, "bucket", bucket, Some(span.clone()));
        let credentials = self.s3_credentials(path, table, base);
        let profile = match &credentials {
            Some(CredentialSource::Profile(name)) => Some(name.as_str()),
            _ => None,
        };
        let files = self.shared_files(path, table, credentials.as_ref())?;
        let endpoint = self.get::<String>(path, table, "endpoint");
        let (endpoint, endpoint_source) =
            or_found(endpoint, || aws::endpoint(&files, "s3", profile));
        let region = self.get::<String>(path, table, "region");
        let (region, region_source) = or_found(region, || aws::region(&files, profile));
        let region = region.unwrap_or_else(|| DEFAULT_REGION.into());
        let credentials =
            credentials.and_then(|found| self.role(path, table, &files, found, &region));
        let config = S3Config {
            endpoint,
            endpoint_source,
            region,
            region_source,
            bucket: bucket?,
            prefix: self
                .get_as(path, table, "prefix", key_prefix)
                .unwrap_or_default(),
            path_style: self.get::<bool>(path, table, "path_style"),
            storage_class: self.get::<String>(path, table, "storage_class"),
            checksum: self
                .get_as(path, table, "checksum", |text: String| text.parse())
                .unwrap_or(Checksum::Crc32c),
            credentials: credentials?,
            encryption: self.encryption(path, table, base)?,
            acl: self.get_as(path, table, "acl", canned_acl),
            ca_cert: self.ca_cert(path, table, base, Some("AWS_CA_BUNDLE"))?,
        };
        self.bucket_url_problem(path, table, &config)?;
        self.key_in_clear_problem(path, table, &config)?;
        Some(RemoteConfig::S3(Box::new(config)))
    }

    /// `None` when an SSE-C key would travel in clear: over plain HTTP beyond this machine (AWS
    /// and Ceph's gateway refuse it too); a problem is recorded.
    fn key_in_clear_problem(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        config: &S3Config,
    ) -> Option<()> {
        let Some(Encryption::Customer(_)) = config.encryption else {
            return Some(());
        };
        let endpoint = config.endpoint_url().ok()?;
        let loopback = match endpoint.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name == "localhost",
            None => false,
        };
        if endpoint.scheme() == "https" || loopback {
            return Some(());
        }
        let key = "sse_customer_key_file";
        let message = format!(
            "{key} needs an https endpoint: the key goes with every request, and over {} it \
             would travel in clear",
            crate::redact::url(endpoint.as_str())
        );
        self.problem(join(path, key), table.get(key).map(Spanned::span), message);
        None
    }

    /// `None` when the bucket and endpoint make no URL (a problem is recorded on the key that
    /// is wrong, with where the endpoint came from).
    fn bucket_url_problem(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        config: &S3Config,
    ) -> Option<()> {
        let Err(message) = config.bucket_url() else {
            return Some(());
        };
        let (key, message) = match &config.endpoint_source {
            Some(source) => ("endpoint", format!("{message} (from {source})")),
            None if table.contains_key("endpoint") => ("endpoint", message),
            None => ("bucket", message),
        };
        self.problem(join(path, key), table.get(key).map(Spanned::span), message);
        None
    }

    /// The AWS shared files, read when the remote leaves out something they may give (its
    /// endpoint, region or keys); `None` when they do not parse (a problem is recorded).
    fn shared_files(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        credentials: Option<&CredentialSource>,
    ) -> Option<SharedFiles> {
        let keys_given = matches!(credentials, Some(CredentialSource::Keys { .. }));
        if keys_given && table.contains_key("endpoint") && table.contains_key("region") {
            return Some(SharedFiles::none());
        }
        match SharedFiles::read(|name| std::env::var(name).ok()) {
            Ok(files) => Some(files),
            Err(error) => {
                let message = format!("the AWS shared files are needed and unreadable: {error}");
                self.problem(path, None, message);
                None
            }
        }
    }

    /// `credentials`, or the role its profile assumes; `None` when that cannot be resolved (a
    /// problem is recorded).
    fn role(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        files: &SharedFiles,
        credentials: CredentialSource,
        region: &str,
    ) -> Option<CredentialSource> {
        match aws::resolve_keys(files, credentials, region) {
            Ok(credentials) => Some(credentials),
            Err((key, message)) => {
                let at = match key {
                    "" => path.to_string(),
                    key => join(path, key),
                };
                self.problem(at, table.get(key).map(Spanned::span), message);
                None
            }
        }
    }

    /// `server_side_encryption` with `sse_kms_key_id`, or `sse_customer_key_file`. `None` when
    /// they are wrong (a problem is recorded), `Some(None)` when encryption is the bucket's
    /// default.
    fn encryption(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        base: &Path,
    ) -> Option<Option<Encryption>> {
        if table.contains_key("sse_customer_key_file") {
            return self.customer_key(path, table, base).map(Some);
        }
        let key_id = self.get::<String>(path, table, "sse_kms_key_id");
        if !table.contains_key("server_side_encryption") {
            if key_id.is_some() {
                let span = table.get("sse_kms_key_id").map(Spanned::span);
                let message = "sse_kms_key_id needs server_side_encryption = \"aws:kms\"";
                self.problem(join(path, "sse_kms_key_id"), span, message);
                return None;
            }
            return Some(None);
        }
        self.get_as(
            path,
            table,
            "server_side_encryption",
            |algorithm: String| Encryption::parse(&algorithm, key_id),
        )
        .map(Some)
    }

    /// `sse_customer_key_file`: SSE-C under the key in that file, read now. `None` when it
    /// cannot be used or other encryption is asked for too (a problem is recorded).
    fn customer_key(&mut self, path: &str, table: &DeTable<'_>, base: &Path) -> Option<Encryption> {
        if let Some(other) = ["server_side_encryption", "sse_kms_key_id"]
            .into_iter()
            .find(|key| table.contains_key(*key))
        {
            let span = table.get(other).map(Spanned::span);
            let message = format!("give {other} or sse_customer_key_file, not both");
            self.problem(join(path, other), span, message);
            return None;
        }
        self.get_as(path, table, "sse_customer_key_file", |file: PathBuf| {
            let file = base.join(file);
            let content = crate::secret::read_bytes(&file).map_err(|e| crate::error::chain(&e))?;
            let key = CustomerKey::from_file(&content);
            key.map_err(|problem| format!("{} {problem}", file.display()))
        })
        .map(Encryption::Customer)
    }

    /// `ca_cert`: CA certificates to trust beside the system's, read now. Without the key, the
    /// file the environment variable `env` names, if any (the AWS CLI's `AWS_CA_BUNDLE`).
    /// `None` when it cannot be used (a problem is recorded), `Some(None)` when there is none.
    fn ca_cert(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        base: &Path,
        env: Option<&'static str>,
    ) -> Option<Option<CaCert>> {
        let read = |file: PathBuf| CaCert::read(&base.join(file)).map_err(|e| e.to_string());
        if table.contains_key("ca_cert") {
            return self.get_as(path, table, "ca_cert", read).map(Some);
        }
        let from_env = env.and_then(|name| Some((name, std::env::var_os(name)?)));
        match from_env.filter(|(_, value)| !value.is_empty()) {
            None => Some(None),
            Some((name, file)) => match read(PathBuf::from(file)) {
                Ok(ca) => Some(Some(CaCert {
                    from_env: Some(name),
                    ..ca
                })),
                Err(error) => {
                    self.problem(join(path, "ca_cert"), None, format!("{name}: {error}"));
                    None
                }
            },
        }
    }

    fn s3_credentials(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        base: &Path,
    ) -> Option<CredentialSource> {
        let profile = self.get::<String>(path, table, "profile");
        let key_id = self.get::<String>(path, table, "access_key_id");
        let secret_given = table.contains_key("secret_access_key_file");
        match (profile, key_id, secret_given) {
            // The chain's STS is found with the region, in `aws::resolve_keys`.
            (None, None, false) => Some(CredentialSource::Chain(Box::new(StsEndpoint::aws(
                DEFAULT_REGION,
            )))),
            (Some(name), None, false) => Some(CredentialSource::Profile(name)),
            (None, Some(access_key_id), true) => {
                let secret =
                    self.get_as(path, table, "secret_access_key_file", |file: PathBuf| {
                        crate::secret::read_file(&base.join(file))
                            .map_err(|error| crate::error::chain(&error))
                    })?;
                Some(CredentialSource::Keys {
                    access_key_id,
                    secret_access_key: secret,
                })
            }
            (Some(_), _, _) => {
                let span = table.get("profile").map(Spanned::span);
                let message = "give profile or access_key_id with secret_access_key_file, not both";
                self.problem(join(path, "profile"), span, message);
                None
            }
            (None, _, _) => {
                let span = table
                    .get("access_key_id")
                    .or(table.get("secret_access_key_file"));
                let message = "access_key_id and secret_access_key_file go together (secrets are never written inline)";
                self.problem(path, span.map(Spanned::span), message);
                None
            }
        }
    }
}

/// A bucket name as S3 stores allow them: today's AWS names (3 to 63 lowercase letters,
/// digits, dots and hyphens), Google Cloud Storage's (underscores too, and longer with dots)
/// and AWS's legacy ones (capitals too). Those that cannot lead a host name go by path.
fn bucket_name(name: String) -> Result<String, String> {
    let valid = (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    match valid {
        true => Ok(name),
        false => Err(format!(
            "{name:?} is not a bucket name (3 to 255 letters, digits, dots, hyphens and underscores, starting and ending with a letter or digit)"
        )),
    }
}

/// A canned ACL S3 knows.
fn canned_acl(acl: String) -> Result<String, String> {
    match CANNED_ACLS.contains(&acl.as_str()) {
        true => Ok(acl),
        false => Err(format!(
            "unknown canned ACL {acl:?}; use one of {}",
            CANNED_ACLS.join(", ")
        )),
    }
}

/// A key prefix: relative (no leading `/`), no `..` segments.
fn key_prefix(prefix: String) -> Result<String, String> {
    if prefix.starts_with('/') || prefix.split('/').any(|segment| segment == "..") {
        return Err(format!("{prefix:?} must be relative, without \"..\""));
    }
    Ok(prefix)
}
