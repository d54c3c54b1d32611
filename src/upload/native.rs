//! The `native` backend: the client end of PROTOCOL.md over reqwest.
//!
//! Only the upload backends use reqwest. Every reply is checked before it is believed (a hostile
//! or broken receiver gets `InvalidReply`, never a panic or a bogus manifest), and the bearer
//! token never appears in a message or log line.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use super::backend::{
    Backend, BackendError, CompletedPart, CreateRequest, Held, Operation, PartBody, PartLimits,
    PartReceipt, PartSpec, Rejection, RemoteFile, RemotePart, RemoteSession, Request, SessionRef,
    SessionStatus,
};
use super::http::BodyError;
use super::retry::classify_status;
use crate::protocol::{
    CompleteRequest, CompleteResponse, ErrorBody, ErrorCode, InitRequest, InitResponse,
    ManifestPart, PART_NUMBER_HEADER, PART_OFFSET_HEADER, PartInfo, SessionInfo, SessionState,
    decode_crc32c,
};

/// Time allowed for a request without a streamed body (init, query, abort) to be answered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed to open a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Assembly speed assumed when scaling the complete timeout: slow disks still finish.
const COMPLETE_BYTES_PER_SECOND: u64 = 20 * 1024 * 1024;
/// Error bodies longer than this are cut in messages.
const MAX_ERROR_TEXT: usize = 512;

/// Where and as whom to upload.
#[derive(Clone)]
pub struct NativeConfig {
    /// Base URL, e.g. `http://127.0.0.1:7373`.
    pub url: String,
    pub workspace_id: String,
    pub token: String,
    /// CA certificates trusted beside the system's.
    pub ca_cert: Option<super::http::CaCert>,
}

impl std::fmt::Debug for NativeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeConfig")
            .field("url", &crate::redact::url(&self.url))
            .field("workspace_id", &self.workspace_id)
            .field("token", &"<redacted>")
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

/// The native protocol client.
pub struct NativeBackend {
    client: Client,
    base_url: String,
    /// `base_url` as errors and logs show it: credentials in it hidden.
    endpoint: String,
    workspace_id: String,
    token: String,
}

impl NativeBackend {
    pub fn new(config: NativeConfig) -> Result<NativeBackend, BackendError> {
        let base_url = config.url.trim_end_matches('/').to_string();
        let endpoint = crate::redact::url(&base_url);
        crate::protocol::check_base_url(&base_url).map_err(|problem| BackendError::Setup {
            endpoint: endpoint.clone(),
            problem,
        })?;
        let client = super::http::client_builder(config.ca_cert.as_ref(), Some(&base_url))
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| BackendError::Setup {
                endpoint: endpoint.clone(),
                problem: error.to_string(),
            })?;
        Ok(NativeBackend {
            client,
            base_url,
            endpoint,
            workspace_id: config.workspace_id,
            token: config.token,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base_url))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
    }

    fn session_path(id: &str) -> String {
        format!("/v1/uploads/chunked/{id}")
    }

    /// Sends a request; turns transport failures and error statuses into `BackendError`.
    async fn send(
        &self,
        operation: Operation,
        request: RequestBuilder,
        on_session: bool,
    ) -> Result<Response, BackendError> {
        let response = request
            .send()
            .await
            .map_err(|error| self.transport(operation, error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.status_error(operation, response, on_session).await)
    }

    fn transport(&self, operation: Operation, error: reqwest::Error) -> BackendError {
        transport_error(operation.into(), &self.endpoint, error)
    }

    async fn status_error(
        &self,
        operation: Operation,
        response: Response,
        on_session: bool,
    ) -> BackendError {
        let status = response.status();
        let retry_after =
            super::http::retry_after(response.headers(), jiff::Timestamp::now().as_millisecond());
        let redirect = super::http::redirect(status.as_u16(), response.headers());
        let text = super::http::error_text(response).await;
        let (code, message) = match (serde_json::from_str::<ErrorBody>(&text), redirect) {
            (Ok(body), _) => (body.error.code, body.error.message),
            (Err(_), Some(redirect)) => ("redirect".to_string(), redirect),
            (Err(_), None) => (
                "unknown".to_string(),
                text.chars().take(MAX_ERROR_TEXT).collect::<String>(),
            ),
        };
        BackendError::Status {
            operation: operation.into(),
            endpoint: self.endpoint.clone(),
            status: status.as_u16(),
            rejection: rejection(&code),
            code: code.into(),
            message,
            retry_after,
            class: classify_status(status.as_u16(), on_session),
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        operation: Operation,
        response: Response,
    ) -> Result<T, BackendError> {
        let bytes = super::http::body(response)
            .await
            .map_err(|error| body_error(operation.into(), &self.endpoint, error))?;
        serde_json::from_slice(&bytes).map_err(|error| self.invalid(operation, error.to_string()))
    }

    fn invalid(&self, operation: Operation, problem: String) -> BackendError {
        BackendError::InvalidReply {
            operation: operation.into(),
            endpoint: self.endpoint.clone(),
            problem,
        }
    }
}

fn remote_file(file: crate::protocol::CompletedFile) -> RemoteFile {
    RemoteFile {
        path: file.path,
        size: file.size,
        sha256: Some(file.sha256),
    }
}

/// The native codes the engine acts on, in its terms.
fn rejection(code: &str) -> Option<Rejection> {
    match ErrorCode::parse(code)? {
        ErrorCode::ManifestMismatch => Some(Rejection::ManifestMismatch),
        ErrorCode::Sha256Mismatch => Some(Rejection::DigestMismatch),
        ErrorCode::PartTooSmall => Some(Rejection::PartTooSmall),
        _ => None,
    }
}

/// A reply's body that could not be read: cut off on the way (as a transport error), or over
/// the limit (the server breaks the protocol).
pub(crate) fn body_error(operation: Request, endpoint: &str, error: BodyError) -> BackendError {
    match error {
        BodyError::Transport(error) => transport_error(operation, endpoint, error),
        BodyError::TooLarge => BackendError::InvalidReply {
            operation,
            endpoint: endpoint.to_string(),
            problem: error.to_string(),
        },
    }
}

/// A request that got no answer, for every reqwest backend: the URL, which may carry
/// credentials or a signature, is dropped from the error.
pub(crate) fn transport_error(
    operation: Request,
    endpoint: &str,
    error: reqwest::Error,
) -> BackendError {
    if let Some(problem) = super::http::untrusted(&error) {
        let endpoint = endpoint.to_string();
        return BackendError::Untrusted {
            operation,
            endpoint,
            problem,
        };
    }
    let detail = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "the connection failed"
    };
    BackendError::Transport {
        operation,
        endpoint: endpoint.to_string(),
        detail: detail.to_string(),
        source: Some(Box::new(error.without_url())),
    }
}

/// Installs ring as the process's TLS crypto provider. reqwest is built without a default one
/// (aws-lc's C build costs minutes), so a reqwest client built without
/// `upload::http::client_builder` (which names ring itself), as the tests' and benches' own
/// are, needs this first. A second call changes nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A modification time as the protocol carries it (RFC 3339, UTC, nanoseconds); none before
/// 1970, which RFC 3339 in UTC cannot write here.
fn rfc3339(mtime_ns: i64) -> Option<String> {
    let since_epoch = std::time::Duration::from_nanos(u64::try_from(mtime_ns).ok()?);
    let at = std::time::UNIX_EPOCH + since_epoch;
    Some(humantime::format_rfc3339_nanos(at).to_string())
}

/// An upload id is used in URL paths: accept only URL-safe text, so a hostile reply cannot steer
/// later requests elsewhere.
fn is_url_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        && id != "."
        && id != ".."
}

fn remote_part(part: PartInfo) -> RemotePart {
    RemotePart {
        number: part.part_number,
        size: part.size,
        crc32c: decode_crc32c(&part.crc32c),
        etag: part.etag,
    }
}

#[async_trait::async_trait]
impl Backend for NativeBackend {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn identity(&self) -> String {
        format!("native {} {}", self.base_url, self.workspace_id)
    }

    async fn create(&self, request: &CreateRequest) -> Result<RemoteSession, BackendError> {
        let operation = Operation::Create;
        let body = InitRequest {
            filename: request.remote_path.clone(),
            total_size: request.size,
            workspace_id: self.workspace_id.clone(),
            mime_type: request.mime_type.clone(),
            metadata: request.metadata.clone(),
            sha256: request.sha256.clone(),
            mtime: request.mtime_ns.and_then(rfc3339),
        };
        let call = self
            .request(Method::POST, "/v1/uploads/chunked/init")
            .timeout(REQUEST_TIMEOUT)
            .json(&body);
        let response = self.send(operation, call, false).await?;
        let reply: InitResponse = self.json(operation, response).await?;
        if let Some(problem) = init_problem(&reply, request.size) {
            return Err(self.invalid(operation, problem));
        }
        Ok(RemoteSession {
            id: reply.upload_id,
            limits: PartLimits {
                min_part_size: reply.min_part_size,
                max_part_size: reply.max_part_size,
                max_parts: reply.max_parts,
                sequential: false,
                uniform: false,
            },
            expires_at: Some(reply.expires_at),
        })
    }

    async fn query(&self, session: SessionRef<'_>) -> Result<SessionStatus, BackendError> {
        let operation = Operation::Query;
        let call = self
            .request(Method::GET, &Self::session_path(session.id))
            .timeout(REQUEST_TIMEOUT);
        let response = match self.send(operation, call, true).await {
            Ok(response) => response,
            Err(error) if error.class() == super::retry::ErrorClass::SessionGone => {
                return Ok(SessionStatus::Gone);
            }
            Err(error) => return Err(error),
        };
        let info: SessionInfo = self.json(operation, response).await?;
        Ok(match info.state {
            SessionState::Aborted => SessionStatus::Gone,
            SessionState::Completed => match info.file {
                Some(file) => SessionStatus::Completed {
                    file: remote_file(file),
                },
                None => {
                    return Err(self.invalid(operation, "completed session without a file".into()));
                }
            },
            SessionState::Open => SessionStatus::Open {
                held: Held::Parts(info.parts.into_iter().map(remote_part).collect()),
            },
        })
    }

    async fn put_part(
        &self,
        session: SessionRef<'_>,
        part: PartSpec,
        body: PartBody,
    ) -> Result<PartReceipt, BackendError> {
        let operation = Operation::PutPart(part.number);
        let call = self
            .request(
                Method::PUT,
                &format!("{}/parts", Self::session_path(session.id)),
            )
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, body.len)
            .header(PART_NUMBER_HEADER, part.number)
            .header(PART_OFFSET_HEADER, part.offset)
            .body(reqwest::Body::wrap_stream(body.stream));
        let response = self.send(operation, call, true).await?;
        let header_etag = super::http::header_text(response.headers(), ETAG)
            .map(|text| text.trim_matches('"').to_string());
        let info: PartInfo = self.json(operation, response).await?;
        part_receipt(part, info, header_etag).map_err(|problem| self.invalid(operation, problem))
    }

    async fn complete(
        &self,
        session: SessionRef<'_>,
        parts: &[CompletedPart],
        sha256: &str,
        size: u64,
    ) -> Result<RemoteFile, BackendError> {
        let operation = Operation::Complete;
        let body = CompleteRequest {
            parts: parts
                .iter()
                .map(|part| ManifestPart {
                    part_number: part.number,
                    etag: part.etag.clone(),
                })
                .collect(),
            sha256: Some(sha256.to_string()),
        };
        let timeout = REQUEST_TIMEOUT + Duration::from_secs(size / COMPLETE_BYTES_PER_SECOND);
        let call = self
            .request(
                Method::POST,
                &format!("{}/complete", Self::session_path(session.id)),
            )
            .timeout(timeout)
            .json(&body);
        let response = self.send(operation, call, true).await?;
        let reply: CompleteResponse = self.json(operation, response).await?;
        Ok(remote_file(reply.file))
    }

    async fn abort(&self, session: SessionRef<'_>) -> Result<(), BackendError> {
        let operation = Operation::Abort;
        let call = self
            .request(Method::DELETE, &Self::session_path(session.id))
            .timeout(REQUEST_TIMEOUT);
        match self.send(operation, call, true).await {
            Ok(_) => Ok(()),
            // Already gone is what abort wants.
            Err(BackendError::Status { status, .. })
                if status == StatusCode::NOT_FOUND.as_u16() =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

/// What is wrong with a session opened for a file of `size` bytes, if anything: an id that
/// cannot go in a URL path, or part limits that are impossible or cannot hold the file.
fn init_problem(reply: &InitResponse, size: u64) -> Option<String> {
    if !is_url_safe_id(&reply.upload_id) {
        return Some("upload_id is not URL-safe text".into());
    }
    let (min, max, parts) = (reply.min_part_size, reply.max_part_size, reply.max_parts);
    if parts == 0 || min > max || max == 0 {
        return Some(format!(
            "part limits are impossible: min {min} max {max} parts {parts}"
        ));
    }
    if max.saturating_mul(u64::from(parts)) < size {
        return Some(format!(
            "{parts} parts of at most {max} bytes cannot hold {size} bytes"
        ));
    }
    None
}

/// The receipt of part `sent`, from the receiver's acknowledgement and its ETag header; what is
/// wrong with them when they are not of that part.
fn part_receipt(
    sent: PartSpec,
    info: PartInfo,
    header_etag: Option<String>,
) -> Result<PartReceipt, String> {
    if info.part_number != sent.number || info.size != sent.size {
        return Err(format!(
            "acknowledged part {} of {} bytes, but part {} of {} bytes was sent",
            info.part_number, info.size, sent.number, sent.size
        ));
    }
    if info.etag.is_empty() || header_etag.is_some_and(|etag| etag != info.etag) {
        return Err("missing or inconsistent etag".into());
    }
    let Some(crc32c) = decode_crc32c(&info.crc32c) else {
        return Err(format!("crc32c {:?} is not base64 of 4 bytes", info.crc32c));
    };
    Ok(PartReceipt {
        etag: info.etag,
        crc32c: Some(crc32c),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session whose id or part limits the engine cannot work with is refused, naming why.
    #[test]
    fn impossible_sessions_are_refused_with_the_reason() {
        let reply = |id: &str, min, max, parts| InitResponse {
            upload_id: id.into(),
            expires_at: String::new(),
            min_part_size: min,
            max_part_size: max,
            max_parts: parts,
        };
        let cases = [
            (reply("u1", 1, 10, 10), 100, None),
            (
                reply("u1", 1, 10, 10),
                101,
                Some("10 parts of at most 10 bytes cannot hold 101 bytes"),
            ),
            (
                reply("../x", 1, 10, 10),
                1,
                Some("upload_id is not URL-safe text"),
            ),
            (
                reply("u1", 1, 10, 0),
                0,
                Some("part limits are impossible: min 1 max 10 parts 0"),
            ),
            (
                reply("u1", 11, 10, 5),
                0,
                Some("part limits are impossible: min 11 max 10 parts 5"),
            ),
            (
                reply("u1", 0, 0, 5),
                0,
                Some("part limits are impossible: min 0 max 0 parts 5"),
            ),
            (reply("u1", 1, u64::MAX, u32::MAX), u64::MAX, None),
        ];
        for (reply, size, expected) in cases {
            let problem = init_problem(&reply, size);
            assert_eq!(problem.as_deref(), expected, "{} {size}", reply.upload_id);
        }
    }

    #[test]
    fn modification_times_go_out_as_rfc3339_in_utc() {
        let cases = [
            (
                1_620_284_889_123_456_789,
                Some("2021-05-06T07:08:09.123456789Z"),
            ),
            (0, Some("1970-01-01T00:00:00.000000000Z")),
            (-1, None),
        ];
        for (mtime_ns, expected) in cases {
            assert_eq!(rfc3339(mtime_ns).as_deref(), expected, "{mtime_ns}");
        }
    }

    #[test]
    fn native_codes_become_the_engines_rejections() {
        let cases = [
            ("manifest_mismatch", Some(Rejection::ManifestMismatch)),
            ("sha256_mismatch", Some(Rejection::DigestMismatch)),
            ("part_too_small", Some(Rejection::PartTooSmall)),
            ("upload_not_found", None),
            ("something_new", None),
        ];
        for (code, expected) in cases {
            assert_eq!(rejection(code), expected, "{code}");
        }
    }

    #[test]
    fn an_acknowledgement_of_another_part_or_without_a_usable_etag_or_crc_is_refused() {
        let sent = PartSpec {
            number: 2,
            offset: 10,
            size: 5,
        };
        let info = |part_number, size, etag: &str, crc32c: &str| PartInfo {
            part_number,
            size,
            etag: etag.into(),
            crc32c: crc32c.into(),
        };
        let crc = "AAAAAQ==";
        let table = [
            (info(2, 5, "e", crc), None, Ok(())),
            (info(2, 5, "e", crc), Some("e"), Ok(())),
            (
                info(3, 5, "e", crc),
                None,
                Err("acknowledged part 3 of 5 bytes"),
            ),
            (
                info(2, 4, "e", crc),
                None,
                Err("acknowledged part 2 of 4 bytes"),
            ),
            (
                info(2, 5, "", crc),
                None,
                Err("missing or inconsistent etag"),
            ),
            (
                info(2, 5, "e", crc),
                Some("f"),
                Err("missing or inconsistent etag"),
            ),
            (
                info(2, 5, "e", "AAAA"),
                None,
                Err("is not base64 of 4 bytes"),
            ),
        ];
        for (info, header, expected) in table {
            let what = format!("{info:?} {header:?}");
            match (part_receipt(sent, info, header.map(String::from)), expected) {
                (Ok(receipt), Ok(())) => assert_eq!(receipt.crc32c, Some(1), "{what}"),
                (Err(problem), Err(start)) => assert!(problem.contains(start), "{what}: {problem}"),
                (got, _) => panic!("{what}: {got:?}"),
            }
        }
    }
}
