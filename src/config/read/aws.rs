//! What an S3 remote leaves out, found as the AWS CLI finds it: the environment first, then the
//! shared files (`upload::s3::profile`), each with where it came from for `ferry config check`.

use crate::upload::s3::CredentialSource;
use crate::upload::s3::credentials::RoleSource;
use crate::upload::s3::profile::SharedFiles;
use crate::upload::s3::sts::StsEndpoint;

/// The region of a remote that names none, when neither the environment nor the shared config
/// file does.
pub(super) const DEFAULT_REGION: &str = "us-east-1";

/// The first of the environment variables `vars` that is set, and its name.
fn from_env(vars: &[&str]) -> Option<(String, String)> {
    let set = |name: &&str| {
        let value = std::env::var(name).ok().filter(|value| !value.is_empty())?;
        Some((value, format!("${name}")))
    };
    vars.iter().find_map(set)
}

/// The region: `$AWS_REGION`, `$AWS_DEFAULT_REGION`, the profile's `region`.
pub(super) fn region(files: &SharedFiles, profile: Option<&str>) -> Option<(String, String)> {
    from_env(&["AWS_REGION", "AWS_DEFAULT_REGION"]).or_else(|| files.setting(profile, "region"))
}

/// The endpoint of `service` (`s3`, `sts`): `$AWS_ENDPOINT_URL_<SERVICE>`, `$AWS_ENDPOINT_URL`,
/// the profile's `services` section, the profile's `endpoint_url`, none of them when
/// `$AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is true; else AWS's own (`None`).
pub(super) fn endpoint(
    files: &SharedFiles,
    service: &str,
    profile: Option<&str>,
) -> Option<(String, String)> {
    let ignored = std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS");
    if ignored.is_ok_and(|value| value.eq_ignore_ascii_case("true")) {
        return None;
    }
    let service_var = format!("AWS_ENDPOINT_URL_{}", service.to_ascii_uppercase());
    from_env(&[service_var.as_str(), "AWS_ENDPOINT_URL"])
        .or_else(|| files.endpoint(profile, service))
}

/// `credentials`, or the role its profile assumes, with the STS endpoint the AWS CLI would
/// call; an error is the remote's key it concerns ("" for the remote) and what is wrong.
pub(super) fn with_role(
    files: &SharedFiles,
    credentials: CredentialSource,
    region: &str,
) -> Result<CredentialSource, (&'static str, String)> {
    let (profile, environment_first) = match &credentials {
        CredentialSource::Profile(name) => (Some(name.as_str()), false),
        CredentialSource::Chain => (None, true),
        _ => return Ok(credentials),
    };
    let key = if environment_first { "" } else { "profile" };
    let role = match files.assumed_role(profile) {
        Ok(None) => return Ok(credentials),
        Ok(Some(role)) => role,
        Err(message) => return Err((key, message)),
    };
    let (sts, sts_source) = match endpoint(files, "sts", profile) {
        None => (StsEndpoint::aws(region), None),
        Some((url, from)) => match url::Url::parse(&url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                let region = region.to_string();
                (StsEndpoint { url, region }, Some(from))
            }
            _ => {
                let message =
                    format!("the STS endpoint {url:?} (from {from}) is not an http(s) URL");
                return Err((key, message));
            }
        },
    };
    let source = RoleSource {
        role,
        sts,
        sts_source,
        environment_first,
    };
    Ok(CredentialSource::Role(Box::new(source)))
}
