//! Keys of an EC2 instance's role from its instance metadata service, as the AWS CLI gets
//! them: a session token first (IMDSv2), plain requests where the token is refused (IMDSv1),
//! then the role's name and its keys. Written here rather than taken from reqsign, whose
//! provider refuses a reply without a `Code` field (the AWS CLI does not ask for one) and
//! whose errors the chain would swallow. A machine with no metadata service (no EC2 instance)
//! answers no keys, quickly and silently; a service that answers and fails is said, and tried
//! again when it may answer later.

use std::time::Duration;

use bytes::Bytes;
use reqsign_aws_core::Credential;
use reqsign_core::{Context, Error, ProvideCredential};
use serde::Deserialize;

/// Time allowed to each request, as the AWS CLI allows: the service is on the instance itself.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Life asked for the session token (the most allowed, six hours).
const TOKEN_TTL_SECONDS: &str = "21600";
const TOKEN_PATH: &str = "/latest/api/token";
const ROLES_PATH: &str = "/latest/meta-data/iam/security-credentials/";

/// The instance role's keys from the metadata service.
#[derive(Debug, Default)]
pub struct InstanceMetadata;

impl ProvideCredential for InstanceMetadata {
    type Credential = Credential;

    async fn provide_credential(
        &self,
        context: &Context,
    ) -> reqsign_core::Result<Option<Credential>> {
        let env = |name: &str| context.env_var(name);
        if env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let service = Service {
            context,
            endpoint: endpoint(env),
        };
        let Some(token) = service.token().await? else {
            return Ok(None);
        };
        let Some(role) = service.role(token.as_deref()).await? else {
            return Ok(None);
        };
        let path = format!("{ROLES_PATH}{role}");
        let (status, body) = service.get(&path, token.as_deref()).await?;
        parse_keys(status, &body, &role, &service.endpoint).map(Some)
    }
}

/// Where the metadata service is: `$AWS_EC2_METADATA_SERVICE_ENDPOINT`, else its IPv4 or (with
/// `$AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`) IPv6 link-local address.
fn endpoint(env: impl Fn(&str) -> Option<String>) -> String {
    if let Some(url) = env("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
        return url.trim_end_matches('/').to_string();
    }
    match env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") {
        Some(mode) if mode.eq_ignore_ascii_case("ipv6") => "http://[fd00:ec2::254]".into(),
        _ => "http://169.254.169.254".into(),
    }
}

/// The metadata service at `endpoint`.
struct Service<'a> {
    context: &'a Context,
    endpoint: String,
}

/// A request that got no answer in time: there is no metadata service here.
struct NoAnswer(String);

impl Service<'_> {
    /// A session token: `Some(None)` when the service refuses tokens (IMDSv1 only) or does not
    /// answer the token request (a container one hop too far for its replies, as the AWS CLI
    /// then asks without one); `None` when no service answers at all.
    async fn token(&self) -> reqsign_core::Result<Option<Option<String>>> {
        let request = http::Request::put(format!("{}{TOKEN_PATH}", self.endpoint))
            .header("x-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS)
            .body(Bytes::new());
        let answer = match self.send(request).await? {
            Ok(answer) => answer,
            Err(NoAnswer(_)) => return Ok(self.answers_without_token().await.then_some(None)),
        };
        match token_reply(answer.0, &answer.1) {
            Ok(token) => Ok(Some(token)),
            Err(problem) => Err(self.refused(answer.0, "the session token", &problem)),
        }
    }

    /// Whether the service answers a request without a token (after the token request got
    /// no answer).
    async fn answers_without_token(&self) -> bool {
        let request =
            http::Request::get(format!("{}{ROLES_PATH}", self.endpoint)).body(Bytes::new());
        matches!(self.send(request).await, Ok(Ok(_)))
    }

    /// The name of the instance's role; `None` when it has none (the service says 404).
    async fn role(&self, token: Option<&str>) -> reqsign_core::Result<Option<String>> {
        let (status, body) = self.get(ROLES_PATH, token).await?;
        match status {
            404 => Ok(None),
            200 => Ok(body
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string)),
            _ => Err(self.refused(status, "the instance's role", "")),
        }
    }

    /// A GET of `path`, with the session token if there is one; no answer is an error here
    /// (the service answered before).
    async fn get(&self, path: &str, token: Option<&str>) -> reqsign_core::Result<(u16, String)> {
        let mut request = http::Request::get(format!("{}{path}", self.endpoint));
        if let Some(token) = token {
            request = request.header("x-aws-ec2-metadata-token", token);
        }
        match self.send(request.body(Bytes::new())).await? {
            Ok(answer) => Ok(answer),
            Err(NoAnswer(why)) => Err(Error::unexpected(format!(
                "the EC2 instance metadata service at {} stopped answering: {why}",
                self.endpoint
            ))
            .set_retryable(true)),
        }
    }

    /// Sends `request` within `TIMEOUT`: its status and body, or why nothing came.
    async fn send(
        &self,
        request: Result<http::Request<Bytes>, http::Error>,
    ) -> reqsign_core::Result<Result<(u16, String), NoAnswer>> {
        let request = request.map_err(|_| {
            let message = format!("bad EC2 instance metadata endpoint {:?}", self.endpoint);
            Error::config_invalid(message)
        })?;
        let reply = match tokio::time::timeout(TIMEOUT, self.context.http_send(request)).await {
            Err(_) => return Ok(Err(NoAnswer(format!("no answer within {TIMEOUT:?}")))),
            Ok(Err(error)) => return Ok(Err(NoAnswer(error.to_string()))),
            Ok(Ok(reply)) => reply,
        };
        let body = String::from_utf8_lossy(reply.body()).into_owned();
        Ok(Ok((reply.status().as_u16(), body)))
    }

    /// The service refused the request for `what` with `status`.
    fn refused(&self, status: u16, what: &str, problem: &str) -> Error {
        let message = format!(
            "the EC2 instance metadata service at {} refused {what} with HTTP {status} {problem}",
            self.endpoint
        );
        Error::unexpected(message.trim_end()).set_retryable(status == 429 || status >= 500)
    }
}

/// The reply to the token request: the token, `None` where tokens are refused (403, 404 and
/// 405: IMDSv1 only, or tokens turned off), else why not.
fn token_reply(status: u16, body: &str) -> Result<Option<String>, String> {
    match status {
        200 if !body.trim().is_empty() => Ok(Some(body.trim().to_string())),
        200 => Err("(an empty token)".into()),
        403..=405 => Ok(None),
        _ => Err(String::new()),
    }
}

/// The keys the service gives for `role`, or why not: its `Code` when it says one other than
/// `Success`.
fn parse_keys(
    status: u16,
    body: &str,
    role: &str,
    endpoint: &str,
) -> reqsign_core::Result<Credential> {
    let said = |what: String| format!("the EC2 instance metadata service at {endpoint} {what}");
    if status != 200 {
        let message = said(format!(
            "refused the keys of role {role:?} with HTTP {status}"
        ));
        return Err(Error::unexpected(message).set_retryable(status == 429 || status >= 500));
    }
    let unreadable = || Error::unexpected(said(format!("gave unreadable keys for role {role:?}")));
    let keys: InstanceKeys = serde_json::from_str(body).map_err(|_| unreadable())?;
    if let Some(code) = keys.code.filter(|code| code != "Success") {
        let message = keys.message.unwrap_or_default();
        let refusal = said(format!("has no keys for role {role:?}: {code} {message}"));
        return Err(Error::credential_invalid(refusal.trim_end()));
    }
    Ok(Credential {
        access_key_id: keys.access_key_id,
        secret_access_key: keys.secret_access_key,
        session_token: Some(keys.token),
        expires_in: Some(keys.expiration.parse().map_err(|_| unreadable())?),
    })
}

/// The keys as the service gives them; EC2's own reply has `Code`, some others do not.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InstanceKeys {
    access_key_id: String,
    secret_access_key: String,
    token: String,
    expiration: String,
    code: Option<String>,
    message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_where_the_environment_says() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[], "http://169.254.169.254"),
            (
                &[("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6")],
                "http://[fd00:ec2::254]",
            ),
            (
                &[("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv4")],
                "http://169.254.169.254",
            ),
            (
                &[
                    (
                        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                        "http://127.0.0.1:1338/",
                    ),
                    ("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6"),
                ],
                "http://127.0.0.1:1338",
            ),
        ];
        for (vars, expected) in cases {
            let env = |name: &str| {
                let found = vars.iter().find(|(var, _)| *var == name);
                found.map(|(_, value)| value.to_string())
            };
            assert_eq!(endpoint(env), expected, "{vars:?}");
        }
    }

    #[test]
    fn a_token_is_used_where_the_service_gives_one() {
        let cases = [
            (200, "AQAEA-token\n", Ok(Some("AQAEA-token".to_string()))),
            (403, "", Ok(None)),
            (404, "", Ok(None)),
            (405, "", Ok(None)),
            (200, " ", Err("(an empty token)".to_string())),
            (500, "", Err(String::new())),
        ];
        for (status, body, expected) in cases {
            assert_eq!(token_reply(status, body), expected, "{status}");
        }
    }

    #[test]
    fn the_keys_reply_gives_keys_or_says_why_not() {
        let keys = r#"{"AccessKeyId": "ASIAEXAMPLE", "SecretAccessKey": "s3cr3t",
            "Token": "tok", "Expiration": "2026-12-04T22:00:00Z"}"#;
        let read = parse_keys(200, keys, "uploader", "http://169.254.169.254").unwrap();
        assert_eq!(read.access_key_id, "ASIAEXAMPLE");
        assert_eq!(read.session_token.as_deref(), Some("tok"));
        assert_eq!(read.expires_in.unwrap().as_second(), 1_796_421_600);
        let with_code = keys.replace('{', r#"{"Code": "Success", "#);
        assert!(parse_keys(200, &with_code, "uploader", "").is_ok());

        let failed = r#"{"Code": "AssumeRoleUnauthorizedAccess", "Message": "not trusted",
            "AccessKeyId": "", "SecretAccessKey": "", "Token": "", "Expiration": ""}"#;
        let cases = [
            (
                200,
                failed,
                "has no keys for role \"uploader\": AssumeRoleUnauthorizedAccess not trusted",
                false,
            ),
            (
                500,
                "",
                "refused the keys of role \"uploader\" with HTTP 500",
                true,
            ),
            (
                404,
                "",
                "refused the keys of role \"uploader\" with HTTP 404",
                false,
            ),
            (
                200,
                "<html/>",
                "gave unreadable keys for role \"uploader\"",
                false,
            ),
        ];
        for (status, body, message, retryable) in cases {
            let error = parse_keys(status, body, "uploader", "http://169.254.169.254").unwrap_err();
            let text = error.to_string();
            assert!(text.contains(message), "{status}: {text}");
            assert!(text.contains("http://169.254.169.254"), "{text}");
            assert_eq!(error.is_retryable(), retryable, "{status}");
        }
    }
}
