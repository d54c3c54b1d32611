//! Keys of an assumed role: STS `AssumeRole`, signed with the keys of the profile's
//! `source_profile` or `credential_source`, at the STS endpoint the AWS CLI would use. reqsign
//! has an AssumeRole provider, but it takes only AWS's own HTTPS hosts, and the AWS CLI also
//! sends the call to `$AWS_ENDPOINT_URL_STS` (MinIO and Ceph serve STS beside S3), so the call
//! is built here and signed by reqsign's SigV4.

use bytes::Bytes;
use reqsign_aws_core::Credential;
use reqsign_core::{Context, Error, ProvideCredential, Signer};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::role::AssumeRole;

/// Where STS is and the region its calls are signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsEndpoint {
    /// `http(s)://host[:port]`, no path.
    pub url: String,
    pub region: String,
    /// Where the URL came from, when not AWS's (`$AWS_ENDPOINT_URL_STS`, a profile).
    pub from: Option<String>,
}

impl StsEndpoint {
    /// AWS's regional STS for `region` (China's partition has its own domain).
    pub fn aws(region: &str) -> StsEndpoint {
        let domain = match region.starts_with("cn-") {
            true => "amazonaws.com.cn",
            false => "amazonaws.com",
        };
        StsEndpoint {
            url: format!("https://sts.{region}.{domain}"),
            region: region.to_string(),
            from: None,
        }
    }

    /// Where STS is, for `config check` and messages.
    pub fn describe(&self) -> String {
        let url = crate::redact::url(&self.url);
        match &self.from {
            Some(from) => format!("STS at {url}, from {from}"),
            None => format!("STS at {url}"),
        }
    }

    /// A form POST of `form` to this STS, as the AWS SDKs send their calls.
    fn request(&self, form: String) -> Result<http::Request<Bytes>, Error> {
        let hash = hex::encode(Sha256::digest(form.as_bytes()));
        http::Request::post(format!("{}/", self.url.trim_end_matches('/')))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-amz-content-sha256", hash)
            .body(Bytes::from(form))
            .map_err(|_| Error::config_invalid(format!("bad STS endpoint {}", self.url)))
    }

    /// Sends `request` and reads the keys STS gives for `role_arn`.
    async fn send(
        &self,
        context: &Context,
        request: http::Request<Bytes>,
        role_arn: &str,
    ) -> reqsign_core::Result<Credential> {
        let reply = context.http_send(request).await.map_err(|error| {
            let message = format!("STS at {} did not answer: {error}", self.url);
            Error::unexpected(message).set_retryable(true)
        })?;
        let text = String::from_utf8_lossy(reply.body());
        parse_reply(reply.status().as_u16(), &text, role_arn)
    }
}

/// Asks STS for a role's keys; reqsign's signer above it caches them until they expire.
pub struct AssumeRoleProvider {
    role: AssumeRole,
    sts: StsEndpoint,
    source: Signer<Credential>,
}

impl std::fmt::Debug for AssumeRoleProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssumeRoleProvider")
            .field("role_arn", &self.role.role_arn)
            .finish_non_exhaustive()
    }
}

impl AssumeRoleProvider {
    /// `role` assumed at `sts` with the keys of `source`.
    pub fn new(
        context: &Context,
        role: &AssumeRole,
        sts: &StsEndpoint,
        source: impl ProvideCredential<Credential = Credential>,
    ) -> AssumeRoleProvider {
        let signer = reqsign_aws_v4::RequestSigner::new("sts", &sts.region);
        let source = Signer::new(context.clone(), source, signer);
        AssumeRoleProvider {
            role: role.clone(),
            sts: sts.clone(),
            source,
        }
    }

    /// The unsigned call.
    fn request(&self) -> Result<http::Request<Bytes>, Error> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", "AssumeRole")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", &self.role.role_arn)
            .append_pair("RoleSessionName", &self.role.session_name);
        if let Some(seconds) = self.role.duration_seconds {
            form.append_pair("DurationSeconds", &seconds.to_string());
        }
        if let Some(id) = &self.role.external_id {
            form.append_pair("ExternalId", id);
        }
        self.sts.request(form.finish())
    }
}

impl ProvideCredential for AssumeRoleProvider {
    type Credential = Credential;

    async fn provide_credential(
        &self,
        context: &Context,
    ) -> reqsign_core::Result<Option<Credential>> {
        let (mut parts, body) = self.request()?.into_parts();
        self.source.sign(&mut parts, None).await.map_err(|error| {
            let message = format!("no keys to assume {} with: {error}", self.role.role_arn);
            Error::new(error.kind(), message).set_retryable(error.is_retryable())
        })?;
        let request = http::Request::from_parts(parts, body);
        let keys = self.sts.send(context, request, &self.role.role_arn).await?;
        Ok(Some(keys))
    }
}

/// Keys of the role a web identity token may assume: STS `AssumeRoleWithWebIdentity`, which is
/// not signed. The token's file is read at each call (the kubelet rotates EKS's).
#[derive(Debug)]
pub struct WebIdentityProvider {
    sts: StsEndpoint,
    /// The role, from a profile (`role_arn` with `web_identity_token_file`); `None`: from the
    /// environment (EKS's IRSA: `$AWS_ROLE_ARN`, `$AWS_WEB_IDENTITY_TOKEN_FILE`,
    /// `$AWS_ROLE_SESSION_NAME`), and nothing when either of the first two is unset.
    role: Option<(AssumeRole, String)>,
}

impl WebIdentityProvider {
    /// The role the environment names.
    pub fn from_environment(sts: &StsEndpoint) -> WebIdentityProvider {
        let sts = sts.clone();
        WebIdentityProvider { sts, role: None }
    }

    /// `role` of a profile, with the token in `token_file`.
    pub fn from_profile(sts: &StsEndpoint, role: &AssumeRole, token_file: &str) -> Self {
        let role = Some((role.clone(), token_file.to_string()));
        WebIdentityProvider {
            sts: sts.clone(),
            role,
        }
    }

    /// The role's ARN, session name and duration, and the token's file.
    fn role(&self, context: &Context) -> Option<(String, String, Option<u32>, String)> {
        if let Some((role, file)) = &self.role {
            let name = role.session_name.clone();
            return Some((
                role.role_arn.clone(),
                name,
                role.duration_seconds,
                file.clone(),
            ));
        }
        let set = |name: &str| context.env_var(name).filter(|value| !value.is_empty());
        let session = set("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "ferry".into());
        Some((
            set("AWS_ROLE_ARN")?,
            session,
            None,
            set("AWS_WEB_IDENTITY_TOKEN_FILE")?,
        ))
    }
}

impl ProvideCredential for WebIdentityProvider {
    type Credential = Credential;

    async fn provide_credential(
        &self,
        context: &Context,
    ) -> reqsign_core::Result<Option<Credential>> {
        let Some((role_arn, session, duration, file)) = self.role(context) else {
            return Ok(None);
        };
        let token = context.file_read(&file).await.map_err(|error| {
            let message = format!("cannot read the web identity token {file}: {error}");
            Error::config_invalid(message)
        })?;
        let token = String::from_utf8_lossy(&token);
        let form = web_identity_form(&role_arn, &session, duration, token.trim());
        let request = self.sts.request(form)?;
        self.sts.send(context, request, &role_arn).await.map(Some)
    }
}

/// The form of an `AssumeRoleWithWebIdentity` call.
fn web_identity_form(role_arn: &str, session: &str, duration: Option<u32>, token: &str) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", "AssumeRoleWithWebIdentity")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", role_arn)
        .append_pair("RoleSessionName", session)
        .append_pair("WebIdentityToken", token);
    if let Some(seconds) = duration {
        form.append_pair("DurationSeconds", &seconds.to_string());
    }
    form.finish()
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeRoleResponse {
    #[serde(alias = "AssumeRoleWithWebIdentityResult")]
    assume_role_result: AssumeRoleResult,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeRoleResult {
    credentials: Keys,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Keys {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

/// STS's refusal: `<Error>` in `<ErrorResponse>` (AWS), or in `<Errors>` there (moto).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorResponse {
    error: Option<super::xml::ErrorReply>,
    errors: Option<Errors>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Errors {
    error: super::xml::ErrorReply,
}

/// STS's answer: the role's keys, or its refusal with STS's code and message (a throttle or a
/// server error may be tried again).
fn parse_reply(status: u16, text: &str, role_arn: &str) -> reqsign_core::Result<Credential> {
    if status != 200 {
        let reply = quick_xml::de::from_str::<ErrorResponse>(text).ok();
        let (code, message) = match reply.and_then(|r| r.error.or(r.errors.map(|e| e.error))) {
            Some(error) => (error.code, error.message),
            None => (format!("HTTP {status}"), String::new()),
        };
        let error = format!("STS refused to assume {role_arn}: {code} {message}");
        let retryable = status >= 500 || code == "Throttling";
        return Err(Error::permission_denied(error.trim_end()).set_retryable(retryable));
    }
    let unreadable =
        |what: &str| Error::unexpected(format!("STS's {what} for {role_arn} is unreadable"));
    let reply: AssumeRoleResponse =
        quick_xml::de::from_str(text).map_err(|_| unreadable("reply"))?;
    let keys = reply.assume_role_result.credentials;
    let expires = keys
        .expiration
        .parse()
        .map_err(|_| unreadable("expiration"))?;
    Ok(Credential {
        access_key_id: keys.access_key_id,
        secret_access_key: keys.secret_access_key,
        session_token: Some(keys.session_token),
        expires_in: Some(expires),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "arn:aws:iam::123456789012:role/uploader";

    #[test]
    fn stss_replies_give_keys_or_say_why_not() {
        let granted = "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
            <AssumeRoleResult><Credentials><AccessKeyId>ASIAEXAMPLE</AccessKeyId>\
            <SecretAccessKey>s3cr3t</SecretAccessKey><SessionToken>tok</SessionToken>\
            <Expiration>2026-12-03T22:00:00Z</Expiration></Credentials>\
            <AssumedRoleUser><Arn>x</Arn></AssumedRoleUser></AssumeRoleResult>\
            </AssumeRoleResponse>";
        let keys = parse_reply(200, granted, ROLE).unwrap();
        assert_eq!(keys.access_key_id, "ASIAEXAMPLE");
        assert_eq!(keys.session_token.as_deref(), Some("tok"));
        assert_eq!(keys.expires_in.unwrap().as_second(), 1_796_335_200);

        let refused = "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>\
            <Message>not allowed</Message></Error></ErrorResponse>";
        let cases = [
            (
                403,
                refused,
                "STS refused to assume arn:aws:iam::123456789012:role/uploader: AccessDenied not allowed",
                false,
            ),
            (
                503,
                "gateway down",
                "STS refused to assume arn:aws:iam::123456789012:role/uploader: HTTP 503",
                true,
            ),
            (
                200,
                "<html/>",
                "STS's reply for arn:aws:iam::123456789012:role/uploader is unreadable",
                false,
            ),
        ];
        for (status, body, message, retryable) in cases {
            let error = parse_reply(status, body, ROLE).unwrap_err();
            assert!(error.to_string().contains(message), "{status}: {error}");
            assert_eq!(error.is_retryable(), retryable, "{status}");
        }
    }

    #[test]
    fn the_call_names_the_role_and_its_options() {
        let role = AssumeRole {
            profile: "work".into(),
            role_arn: ROLE.into(),
            session_name: "ferry".into(),
            external_id: Some("ext 1".into()),
            duration_seconds: Some(900),
            source: crate::upload::s3::role::RoleSource::Environment,
        };
        let sts = StsEndpoint {
            url: "http://127.0.0.1:5000/".into(),
            region: "eu-west-1".into(),
            from: None,
        };
        let keys = reqsign_aws_core::EnvCredentialProvider::new();
        let provider = AssumeRoleProvider::new(&Context::new(), &role, &sts, keys);
        let request = provider.request().unwrap();
        assert_eq!(request.method(), "POST");
        assert_eq!(request.uri().to_string(), "http://127.0.0.1:5000/");
        assert_eq!(
            request.body().as_ref(),
            b"Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fuploader&RoleSessionName=ferry&DurationSeconds=900&ExternalId=ext+1"
        );
        let hash = hex::encode(Sha256::digest(request.body()));
        assert_eq!(request.headers()["x-amz-content-sha256"], hash.as_str());
        assert_eq!(
            StsEndpoint::aws("eu-west-1").url,
            "https://sts.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            StsEndpoint::aws("cn-north-1").url,
            "https://sts.cn-north-1.amazonaws.com.cn"
        );
    }
}
