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
/// call (for the default chain's web identity too); an error is the remote's key it concerns
/// ("" for the remote) and what is wrong.
pub(super) fn resolve_keys(
    files: &SharedFiles,
    credentials: CredentialSource,
    region: &str,
) -> Result<CredentialSource, (&'static str, String)> {
    let (profile, environment_first) = match &credentials {
        CredentialSource::Profile(name) => (Some(name.as_str()), false),
        CredentialSource::Chain(_) => (None, true),
        _ => return Ok(credentials),
    };
    let key = if environment_first { "" } else { "profile" };
    if let Some(name) = profile.filter(|name| !files.has(name)) {
        return Err((key, files.absent(name)));
    }
    let sts = sts_endpoint(files, profile, region).map_err(|message| (key, message))?;
    let source = match files.assumed_role(profile) {
        Ok(None) if environment_first => return Ok(CredentialSource::Chain(Box::new(sts))),
        Ok(None) => return Ok(credentials),
        Ok(Some(role)) => RoleSource {
            role,
            sts,
            environment_first,
        },
        Err(message) => return Err((key, message)),
    };
    Ok(CredentialSource::Role(Box::new(source)))
}

/// The STS the profile's calls go to: the one configured, else AWS's for `region`.
fn sts_endpoint(
    files: &SharedFiles,
    profile: Option<&str>,
    region: &str,
) -> Result<StsEndpoint, String> {
    let Some((url, from)) = endpoint(files, "sts", profile) else {
        return Ok(StsEndpoint::aws(region));
    };
    match url::Url::parse(&url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(StsEndpoint {
            url,
            region: region.to_string(),
            from: Some(from),
        }),
        _ => Err(format!(
            "the STS endpoint {url:?} (from {from}) is not an http(s) URL"
        )),
    }
}
