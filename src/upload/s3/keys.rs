//! The providers behind a remote's key source, built so that their errors reach the user:
//! reqsign's chain logs a provider's error and moves on, so a `credential_process` that failed
//! was reported as "no S3 credentials found". A named profile is asked through the one
//! provider its contents call for; a role through STS with its source's keys.

use std::sync::Arc;

use reqsign_aws_core::{
    Credential, ECSCredentialProvider, EnvCredentialProvider, ProfileCredentialProvider,
    SSOCredentialProvider,
};
use reqsign_core::{Context, ProvideCredential, ProvideCredentialDyn};

use super::imds::InstanceMetadata;
use super::process::ProcessKeys;
use super::profile::{KeysIn, SharedFiles};
use super::role::{AssumeRole, RoleSource};
use super::sts::{AssumeRoleProvider, StsEndpoint, WebIdentityProvider};

/// A provider of keys.
pub type Provider = Arc<dyn ProvideCredentialDyn<Credential = Credential>>;

/// One profile's keys (the default profile's, `$AWS_PROFILE` or `default`, for `None`), as the
/// AWS CLI's `--profile` takes them: its SSO session, its keys or its `credential_process`,
/// never the environment's keys or a machine role. The shared files are read again each time
/// (on a blocking thread), as the AWS CLI reads them at each start.
#[derive(Debug)]
pub struct NamedProfile(pub Option<String>);

impl ProvideCredential for NamedProfile {
    type Credential = Credential;

    async fn provide_credential(
        &self,
        context: &Context,
    ) -> reqsign_core::Result<Option<Credential>> {
        let named = self.0.clone();
        let read = tokio::task::spawn_blocking(move || {
            let files = SharedFiles::read(|var| std::env::var(var).ok())?;
            let name = files.profile_name(named.as_deref()).to_string();
            Ok::<_, String>((files.keys_in(&name), name))
        });
        let (keys_in, name) = read
            .await
            .map_err(|error| reqsign_core::Error::unexpected(error.to_string()))?
            .map_err(reqsign_core::Error::config_invalid)?;
        match keys_in {
            KeysIn::Sso => {
                let sso = SSOCredentialProvider::new().with_profile(name);
                sso.provide_credential(context).await
            }
            KeysIn::Process(command) => ProcessKeys { command }.provide_credential(context).await,
            KeysIn::Keys => {
                let keys = ProfileCredentialProvider::new().with_profile(name);
                keys.provide_credential(context).await
            }
        }
    }
}

/// `role` assumed at `sts` with its source's keys (a role of its own, in a chain), or with a
/// web identity token.
pub fn role_provider(context: &Context, role: &AssumeRole, sts: &StsEndpoint) -> Provider {
    let source: Provider = match &role.source {
        RoleSource::WebIdentity(file) => {
            return Arc::new(WebIdentityProvider::from_profile(sts, role, file));
        }
        RoleSource::Profile(name) => Arc::new(NamedProfile(Some(name.clone()))),
        RoleSource::Role(inner) => role_provider(context, inner, sts),
        RoleSource::Environment => Arc::new(EnvCredentialProvider::new()),
        RoleSource::Ec2InstanceMetadata => Arc::new(InstanceMetadata),
        RoleSource::EcsContainer => Arc::new(ECSCredentialProvider::new()),
    };
    Arc::new(AssumeRoleProvider::new(context, role, sts, source))
}

/// The AWS default chain in the AWS CLI's order: the environment's keys, a web identity
/// (asking `sts`, so `$AWS_ENDPOINT_URL_STS` is honoured and its refusal said), the default
/// profile's SSO session, keys or process, a container's role (its endpoint set in the
/// environment, so its failure is said, and retried when it may answer later), then the
/// instance's role (`imds`: whose absence, on a machine that is no EC2 instance, is no error).
pub fn default_chain(sts: &StsEndpoint) -> Provider {
    Arc::new(FirstOf(vec![
        Arc::new(EnvCredentialProvider::new()),
        Arc::new(WebIdentityProvider::from_environment(sts)),
        Arc::new(NamedProfile(None)),
        Arc::new(ECSCredentialProvider::new()),
        Arc::new(InstanceMetadata),
    ]))
}

/// The environment's keys when it has them, else `then`'s: a role in the default chain.
pub fn environment_first(then: Provider) -> Provider {
    let environment: Provider = Arc::new(EnvCredentialProvider::new());
    Arc::new(FirstOf(vec![environment, then]))
}

/// The first keys found, in order; an error stops the search (each provider here answers
/// nothing when it is not configured, so its error is what the user needs to see).
#[derive(Debug)]
pub struct FirstOf(pub Vec<Provider>);

impl ProvideCredential for FirstOf {
    type Credential = Credential;

    async fn provide_credential(
        &self,
        context: &Context,
    ) -> reqsign_core::Result<Option<Credential>> {
        for provider in &self.0 {
            if let Some(keys) = provider.provide_credential(context).await? {
                return Ok(Some(keys));
            }
        }
        Ok(None)
    }
}
