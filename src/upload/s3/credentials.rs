//! Where an S3 remote's keys come from, the way S3 users keep them: an access key id with its
//! secret in a file (read by `crate::secret`), a named profile of `~/.aws/credentials` and
//! `~/.aws/config`, or the AWS default chain (environment, profiles, SSO, web identity for
//! IRSA, ECS task roles, EC2 instance metadata), which `reqsign-aws-core` resolves over our own
//! reqwest; a profile that assumes a role gets its keys from STS (`sts`). Temporary keys are
//! cached and renewed in the background shortly before they expire, so no request waits for
//! the renewal; while they are still good, a renewal that fails leaves them in use, as the AWS
//! SDKs do, so a credential service that is down for a moment fails no upload. No key ever
//! reaches a message or a log line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqsign_aws_core::StaticCredentialProvider;
use reqsign_core::time::Timestamp;
use reqsign_core::{Context, OsEnv, ProvideCredential};
use tokio::sync::Mutex;

use super::keys::{NamedProfile, Provider, default_chain, environment_first, role_provider};
use super::role::AssumeRole;
use super::sts::StsEndpoint;
use crate::upload::http::CaCert;

/// Temporary keys are renewed from this long before they expire.
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// Keys are not used in the last minute of their life: a request signed then may arrive after.
const LAST_USE_BEFORE_EXPIRY: Duration = Duration::from_secs(60);
/// After a renewal failed, the current keys are used this long before it is tried again.
const RENEW_RETRY: Duration = Duration::from_secs(15);
/// Time allowed to the metadata services (ECS, EC2) and STS: a machine without them should
/// learn that quickly.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(5);

/// How an S3 remote finds its keys.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `access_key_id` with `secret_access_key_file`.
    Keys {
        access_key_id: String,
        secret_access_key: String,
    },
    /// `profile = "name"`: that profile of the shared files, and nothing else.
    Profile(String),
    /// Neither: the AWS default chain, its web identity (IRSA) asking this STS.
    Chain(Box<StsEndpoint>),
    /// The profile named, or the default chain's profile, assumes a role.
    Role(Box<RoleSource>),
}

/// A role to assume, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSource {
    pub role: AssumeRole,
    pub sts: StsEndpoint,
    /// In the default chain, the environment's keys come first, as the AWS CLI takes them.
    pub environment_first: bool,
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialSource::Keys { access_key_id, .. } => f
                .debug_struct("Keys")
                .field("access_key_id", access_key_id)
                .field("secret_access_key", &"<redacted>")
                .finish(),
            CredentialSource::Profile(name) => f.debug_tuple("Profile").field(name).finish(),
            CredentialSource::Chain(sts) => f.debug_tuple("Chain").field(sts).finish(),
            CredentialSource::Role(role) => f.debug_tuple("Role").field(role).finish(),
        }
    }
}

impl CredentialSource {
    /// Where the keys come from, for `config check` and messages.
    pub fn describe(&self) -> String {
        match self {
            CredentialSource::Keys { access_key_id, .. } => {
                format!("access key {access_key_id} (secret from its file)")
            }
            CredentialSource::Profile(name) => format!("profile {name:?}"),
            CredentialSource::Chain(sts) => match &sts.from {
                Some(_) => format!("the AWS default chain ({})", sts.describe()),
                None => "the AWS default chain".to_string(),
            },
            CredentialSource::Role(source) => {
                let first = match source.environment_first {
                    true => "the environment's keys, else ",
                    false => "",
                };
                let (role, sts) = (source.role.describe(), source.sts.describe());
                format!("{first}{role} ({sts})")
            }
        }
    }
}

/// Keys as the signer takes them.
pub type Keys = Arc<rusty_s3::Credentials>;

/// Why there are no keys, and whether asking again later may bring them (a credential service
/// that did not answer, or throttled).
#[derive(Debug)]
pub struct NoKeys {
    pub message: String,
    pub retryable: bool,
}

/// Hands out current keys, fetching them when needed.
pub struct Credentials {
    shared: Arc<Shared>,
}

/// What `Credentials` and its background renewal share.
struct Shared {
    context: Context,
    provider: Provider,
    describe: String,
    cached: Mutex<Option<Cached>>,
    /// A renewal runs in the background: requests go on with the current keys meanwhile.
    renewing: AtomicBool,
}

/// Keys in use, until when, and when renewing them last failed.
struct Cached {
    keys: Keys,
    expires: Option<Timestamp>,
    renewal_failed: Option<Timestamp>,
}

/// What to do with the cached keys at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// Use them.
    Keep,
    /// Use them, and fetch new ones in the background; if that fails, these stay in use.
    Try,
    /// Fetch new ones first; these are no longer to be used.
    Must,
}

impl Credentials {
    /// Keys from `source`; the services that hand out temporary keys (STS, ECS, EC2) are
    /// reached trusting `ca_cert` beside the system's CA certificates.
    pub fn new(source: &CredentialSource, ca_cert: Option<&CaCert>) -> Result<Credentials, String> {
        let client = crate::upload::http::client_builder(ca_cert, None)
            .connect_timeout(PROVIDER_TIMEOUT)
            .timeout(PROVIDER_TIMEOUT * 2)
            .build()
            .map_err(|error| format!("cannot build the credential client: {error}"))?;
        let context = Context::new()
            .with_file_read(FileRead)
            .with_http_send(HttpSend(client))
            .with_env(OsEnv);
        let shared = Shared {
            provider: provider(&context, source),
            context,
            describe: source.describe(),
            cached: Mutex::new(None),
            renewing: AtomicBool::new(false),
        };
        Ok(Credentials {
            shared: Arc::new(shared),
        })
    }

    /// Current keys: the cached ones, or fresh ones when there are none or they are about to
    /// lapse. Keys that expire soon are renewed in the background, so that no request waits
    /// for a credential service (or a `credential_process` waiting for its user).
    pub async fn get(&self) -> Result<Keys, NoKeys> {
        let mut cached = self.shared.cached.lock().await;
        let due = cached.as_ref().map_or(Renewal::Must, |current| {
            renewal(current.expires, current.renewal_failed, Timestamp::now())
        });
        match (due, cached.as_ref()) {
            (Renewal::Keep, Some(current)) => return Ok(current.keys.clone()),
            (Renewal::Try, Some(current)) => {
                self.renew_in_background();
                return Ok(current.keys.clone());
            }
            _ => {}
        }
        let fresh = self.shared.fetch().await?;
        Ok(cached.insert(fresh).keys.clone())
    }

    /// Starts fetching new keys unless that is under way; they replace the current ones when
    /// they come, and a failure leaves the current ones in use until they lapse.
    fn renew_in_background(&self) {
        if self.shared.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let fresh = shared.fetch().await;
            let mut cached = shared.cached.lock().await;
            match (fresh, cached.as_mut()) {
                (Ok(fresh), _) => *cached = Some(fresh),
                (Err(no_keys), Some(current)) => {
                    tracing::warn!(
                        "{}; the current S3 keys stay in use until they expire",
                        no_keys.message
                    );
                    current.renewal_failed = Some(Timestamp::now());
                }
                // Forgotten meanwhile: the next request fetches keys itself, and says why not.
                (Err(_), None) => {}
            }
            shared.renewing.store(false, Ordering::Release);
        });
    }

    /// Forgets the cached keys (the remote said they expired).
    pub async fn expire(&self) {
        *self.shared.cached.lock().await = None;
    }
}

impl Shared {
    /// New keys from the provider.
    async fn fetch(&self) -> Result<Cached, NoKeys> {
        let found = self
            .provider
            .provide_credential(&self.context)
            .await
            .map_err(|error| NoKeys {
                message: format!("cannot load S3 credentials from {}: {error}", self.describe)
                    .trim_end()
                    .to_string(),
                retryable: error.is_retryable(),
            })?;
        let Some(credential) = found else {
            return Err(NoKeys {
                message: format!(
                    "no S3 credentials found in {} (give access_key_id and secret_access_key_file, a profile, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
                    self.describe
                ),
                retryable: false,
            });
        };
        let keys = Arc::new(match credential.session_token {
            Some(token) => rusty_s3::Credentials::new_with_token(
                credential.access_key_id,
                credential.secret_access_key,
                token,
            ),
            None => {
                rusty_s3::Credentials::new(credential.access_key_id, credential.secret_access_key)
            }
        });
        Ok(Cached {
            keys,
            expires: credential.expires_in,
            renewal_failed: None,
        })
    }
}

/// Where `source`'s keys come from.
fn provider(context: &Context, source: &CredentialSource) -> Provider {
    match source {
        CredentialSource::Keys {
            access_key_id,
            secret_access_key,
        } => Arc::new(StaticCredentialProvider::new(
            access_key_id,
            secret_access_key,
        )),
        CredentialSource::Profile(name) => Arc::new(NamedProfile(Some(name.clone()))),
        CredentialSource::Chain(sts) => default_chain(sts),
        CredentialSource::Role(source) => {
            let role = role_provider(context, &source.role, &source.sts);
            match source.environment_first {
                true => environment_first(role),
                false => role,
            }
        }
    }
}

/// What to do at `now` with keys that expire at `expires` (never, if `None`), whose renewal
/// last failed at `failed`: keep them until `RENEW_BEFORE_EXPIRY` before they expire, then try
/// to renew them (at most every `RENEW_RETRY` while that fails), and stop using them
/// `LAST_USE_BEFORE_EXPIRY` before they expire, so a request signed now does not arrive with
/// keys that have lapsed.
fn renewal(expires: Option<Timestamp>, failed: Option<Timestamp>, now: Timestamp) -> Renewal {
    let Some(expires) = expires else {
        return Renewal::Keep;
    };
    let failed_lately = failed.is_some_and(|at| now < at + RENEW_RETRY);
    if expires <= now + LAST_USE_BEFORE_EXPIRY {
        Renewal::Must
    } else if expires > now + RENEW_BEFORE_EXPIRY || failed_lately {
        Renewal::Keep
    } else {
        Renewal::Try
    }
}

/// The shared files and web identity tokens are read on a blocking thread.
#[derive(Debug)]
struct FileRead;

impl reqsign_core::FileRead for FileRead {
    async fn file_read(&self, path: &str) -> reqsign_core::Result<Vec<u8>> {
        tokio::fs::read(path).await.map_err(|error| {
            reqsign_core::Error::unexpected(format!("cannot read {path}")).with_source(error)
        })
    }
}

/// The credential services (STS, ECS, SSO, EC2 metadata) are asked on our reqwest, and their
/// replies read as the remotes' are: to `http::MAX_REPLY_BYTES` at most, so a broken or
/// hostile service cannot make the daemon hold an endless body.
#[derive(Debug)]
struct HttpSend(reqwest::Client);

impl reqsign_core::HttpSend for HttpSend {
    async fn http_send(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> reqsign_core::Result<http::Response<bytes::Bytes>> {
        let failed = |what: &str| reqsign_core::Error::unexpected(what.to_string());
        let request = reqwest::Request::try_from(request)
            .map_err(|error| failed("cannot make the request").with_source(error))?;
        let response = self.0.execute(request).await;
        let response = response.map_err(|error| failed("no answer").with_source(error))?;
        let (status, headers) = (response.status(), response.headers().clone());
        let body = crate::upload::http::body(response).await;
        let body = body.map_err(|error| failed("cannot read the reply").with_source(error))?;
        let mut reply = http::Response::new(bytes::Bytes::from(body));
        *reply.status_mut() = status;
        *reply.headers_mut() = headers;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn keys_are_renewed_from_five_minutes_before_they_expire_and_dropped_at_one() {
        let second = |at: i64| Timestamp::from_second(1_800_000_000 + at).unwrap();
        let now = second(0);
        use Renewal::{Keep, Must, Try};
        let cases = [
            (None, None, Keep),
            (None, Some(second(-1)), Keep),
            (Some(second(3_600)), None, Keep),
            (Some(second(301)), None, Keep),
            (Some(second(300)), None, Try),
            (Some(second(61)), None, Try),
            (Some(second(60)), None, Must),
            (Some(second(-1)), None, Must),
            // A renewal failed: the keys are kept, then renewal is tried again.
            (Some(second(200)), Some(second(-14)), Keep),
            (Some(second(200)), Some(second(-15)), Try),
            // Lapsing keys are not kept because a renewal failed a moment ago.
            (Some(second(30)), Some(second(-1)), Must),
        ];
        for (expires, failed, due) in cases {
            assert_eq!(renewal(expires, failed, now), due, "{expires:?} {failed:?}");
        }
    }
}
