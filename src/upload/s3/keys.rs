//! The providers behind a remote's key source, built so that their errors reach the user:
//! reqsign's chain logs a provider's error and moves on, so a `credential_process` that failed
//! was reported as "no S3 credentials found". A named profile is asked through the one
//! provider its contents call for; a role through STS with its source's keys.

use std::process::Stdio;
use std::sync::Arc;

use reqsign_aws_core::{
    Credential, DefaultCredentialProvider, ECSCredentialProvider, EnvCredentialProvider,
    ProcessCredentialProvider, ProfileCredentialProvider, SSOCredentialProvider,
};
use reqsign_core::{
    CommandExecute, CommandOutput, Context, ProvideCredential, ProvideCredentialDyn,
};

use super::imds::InstanceMetadata;
use super::profile::{KeysIn, SharedFiles};
use super::role::{AssumeRole, RoleSource};
use super::sts::{AssumeRoleProvider, StsEndpoint, WebIdentityProvider};

/// A provider of keys.
pub type Provider = Arc<dyn ProvideCredentialDyn<Credential = Credential>>;

/// One profile's keys, as the AWS CLI's `--profile` takes them: its SSO session, its keys or
/// its `credential_process`, never the environment's keys or a machine role. The shared files
/// are read again each time (on a blocking thread), as the AWS CLI reads them at each start.
#[derive(Debug)]
pub struct NamedProfile(pub String);

impl ProvideCredential for NamedProfile {
    type Credential = Credential;

    async fn provide_credential(
        &self,
        context: &Context,
    ) -> reqsign_core::Result<Option<Credential>> {
        let name = self.0.clone();
        let read = tokio::task::spawn_blocking(move || {
            SharedFiles::read(|var| std::env::var(var).ok()).map(|files| files.keys_in(&name))
        });
        let keys_in = read
            .await
            .map_err(|error| reqsign_core::Error::unexpected(error.to_string()))?
            .map_err(reqsign_core::Error::config_invalid)?;
        let name = self.0.clone();
        match keys_in {
            KeysIn::Sso => {
                let sso = SSOCredentialProvider::new().with_profile(name);
                sso.provide_credential(context).await
            }
            KeysIn::Process => {
                let process = ProcessCredentialProvider::new().with_profile(name);
                process.provide_credential(context).await
            }
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
        RoleSource::Profile(name) => Arc::new(NamedProfile(name.clone())),
        RoleSource::Role(inner) => role_provider(context, inner, sts),
        RoleSource::Environment => Arc::new(EnvCredentialProvider::new()),
        RoleSource::Ec2InstanceMetadata => Arc::new(InstanceMetadata),
        RoleSource::EcsContainer => Arc::new(ECSCredentialProvider::new()),
    };
    Arc::new(AssumeRoleProvider::new(context, role, sts, source))
}

/// The AWS default chain in the AWS CLI's order: the environment's keys, a web identity
/// (asking `sts`, so `$AWS_ENDPOINT_URL_STS` is honoured and its refusal said), reqsign's chain
/// for the default profile's keys, SSO and process, a container's role (its endpoint set in the
/// environment, so its failure is said, and retried when it may answer later), then the
/// instance's role (`imds`: whose absence, on a machine that is no EC2 instance, is no error).
pub fn default_chain(sts: &StsEndpoint) -> Provider {
    let shared_files = DefaultCredentialProvider::builder()
        .no_env()
        .no_web_identity()
        .no_ecs()
        .no_imds()
        .build();
    Arc::new(FirstOf(vec![
        Arc::new(EnvCredentialProvider::new()),
        Arc::new(WebIdentityProvider::from_environment(sts)),
        Arc::new(shared_files),
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

/// Runs a `credential_process` (aws-vault, the 1Password and Bitwarden CLIs) on tokio, with
/// nothing on its standard input. reqsign splits the command at whitespace, which breaks quoted
/// arguments (`sh -c "op read op://vault/aws"`); the words are joined again and split as a POSIX
/// shell splits them, as the AWS CLI does (a run of spaces inside quotes becomes one).
#[derive(Debug)]
pub struct ProcessRunner;

impl CommandExecute for ProcessRunner {
    async fn command_execute(
        &self,
        program: &str,
        args: &[&str],
    ) -> reqsign_core::Result<CommandOutput> {
        let line = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let words = shell_words(&line).ok_or_else(|| {
            reqsign_core::Error::config_invalid(format!(
                "credential_process {line:?} has a quote that is not closed"
            ))
        })?;
        let output = tokio::process::Command::new(&words[0])
            .args(&words[1..])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|error| {
                let message = format!("cannot run credential_process {:?}: {error}", words[0]);
                reqsign_core::Error::unexpected(message)
            })?;
        Ok(CommandOutput {
            status: output.status.code().unwrap_or(-1),
            stdout: output.stdout,
            stderr: output.stderr,
        })
    }
}

/// `line` split into words as a POSIX shell splits them; `None` for an unclosed quote or no
/// words at all.
fn shell_words(line: &str) -> Option<Vec<String>> {
    shlex::split(line).filter(|words| !words.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_process_is_split_as_a_shell_splits_it() {
        let cases: [(&str, Option<&[&str]>); 5] = [
            (
                "aws-vault export --format=json home",
                Some(&["aws-vault", "export", "--format=json", "home"]),
            ),
            (
                "sh -c \"op read op://v/aws | jq .\"",
                Some(&["sh", "-c", "op read op://v/aws | jq ."]),
            ),
            (
                "/opt/my tools/keys 'a b'",
                Some(&["/opt/my", "tools/keys", "a b"]),
            ),
            ("sh -c \"unclosed", None),
            ("", None),
        ];
        for (line, expected) in cases {
            let words = shell_words(line);
            let expected = expected.map(|words| words.iter().map(|w| w.to_string()).collect());
            assert_eq!(words, expected, "{line}");
        }
    }
}
