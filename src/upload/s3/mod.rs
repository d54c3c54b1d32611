//! The `s3` backend: AWS S3 and the stores that speak its API (MinIO, Ceph RGW, Garage, R2,
//! B2, Wasabi, GCS in XML mode).
//!
//! A file the planner would send as one part goes in one PutObject. A larger one is a multipart
//! upload: CreateMultipartUpload, UploadPart in parallel (parts of one size but the last, which
//! every S3 accepts and R2 requires; 5 MiB to 5 GiB, at most 10,000), CompleteMultipartUpload
//! with the manifest. The engine records the UploadId and every acknowledged part, so a restart
//! resumes: `query` lists what the server holds (ListParts, paginated). A server answers
//! `NoSuchUpload` both for an aborted upload and for one that completed (its reply lost); the
//! two are told apart by a HEAD of the object, whose `x-amz-meta-ferry-session` names the
//! session that wrote it. The session id Ferry records is that nonce, the checksum the upload
//! was opened with and the UploadId (`session.rs`).
//!
//! Integrity: each part carries its CRC32C (`x-amz-checksum-crc32c`, listed again at
//! complete) or its MD5 (`Content-MD5`, for servers without flexible checksums), computed from
//! the file before the part is sent; the server refuses bytes that do not match. A part's ETag
//! is checked against its MD5 where it is one, and the object's size and session after
//! complete.

mod checksum;
pub mod credentials;
mod encryption;
mod imds;
mod kept;
mod keys;
pub mod metadata;
mod permission;
mod process;
pub mod profile;
mod request;
pub mod role;
mod session;
pub mod sts;
mod xml;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::header::{CONTENT_LENGTH, ETAG, HeaderMap};
use rusty_s3::{Bucket, Method, UrlStyle};
use url::Url;

pub use checksum::Checksum;
use checksum::{ChecksumChoice, Noted, carried, decode_crc32c, encode_crc32c};
pub use credentials::CredentialSource;
pub use encryption::{CustomerKey, Encryption};
use kept::Asked;
use metadata::{MTIME_META, SESSION_META};
use request::{Call, Requester};
pub use session::SessionId;

use super::backend::{
    Backend, BackendError, CompletedPart, CreateRequest, Held, Operation, PartBody, PartLimits,
    PartReceipt, PartSpec, RemoteFile, RemotePart, RemoteSession, Request, SessionRef,
    SessionStatus, UpFront,
};
use super::http::header_text;

/// S3's part limits: 5 MiB (but the last) to 5 GiB, at most 10,000 parts.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
pub const MAX_PARTS: u32 = 10_000;
/// The largest object: 5 TiB.
pub const MAX_OBJECT_SIZE: u64 = 5 * 1024 * 1024 * 1024 * 1024;
/// The longest key, in bytes.
const MAX_KEY_BYTES: usize = 1024;
/// Time allowed for a request without a streamed body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Assembly speed assumed when scaling the complete timeout.
const COMPLETE_BYTES_PER_SECOND: u64 = 20 * 1024 * 1024;
/// The checksum algorithm a multipart upload asks for, and its reply names when kept.
const CHECKSUM_ALGORITHM: &str = "x-amz-checksum-algorithm";

/// The canned ACLs S3 knows (`acl`, as rclone's).
pub const CANNED_ACLS: [&str; 7] = [
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
];

/// Where and as whom to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `None`: AWS, `https://s3.<region>.amazonaws.com`.
    pub endpoint: Option<String>,
    /// Where the endpoint came from when the remote names none (`$AWS_ENDPOINT_URL`, a profile).
    pub endpoint_source: Option<String>,
    pub region: String,
    /// Where the region came from when the remote names none (`$AWS_REGION`, a profile).
    pub region_source: Option<String>,
    pub bucket: String,
    /// Prepended to every key.
    pub prefix: String,
    /// `None`: path style for an IP address or `localhost`, virtual-hosted otherwise.
    pub path_style: Option<bool>,
    pub storage_class: Option<String>,
    pub checksum: Checksum,
    pub credentials: CredentialSource,
    /// Server-side encryption asked for on every object; `None`: the bucket's default.
    pub encryption: Option<Encryption>,
    /// The canned ACL of every object (`x-amz-acl`); `None`: the bucket's default.
    pub acl: Option<String>,
    /// CA certificates trusted beside the system's.
    pub ca_cert: Option<super::http::CaCert>,
}

impl S3Config {
    /// The endpoint's URL.
    pub fn endpoint_url(&self) -> Result<Url, String> {
        let text = match &self.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => aws_endpoint(&self.region),
        };
        let url = Url::parse(&text).map_err(|error| format!("endpoint {text:?}: {error}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!("endpoint {text:?} is not an http(s) URL"));
        }
        Ok(url)
    }

    /// Path style (`endpoint/bucket/key`) or virtual-hosted (`bucket.endpoint/key`). Unless
    /// `path_style` says, path style where a bucket's host name would not work: on an IP
    /// address or localhost, for a bucket name that is no host name (capitals, `_`), and over
    /// HTTPS for one with dots, which a wildcard certificate does not cover (as the AWS SDKs).
    pub fn url_style(&self, endpoint: &Url) -> UrlStyle {
        let local = match endpoint.host() {
            Some(url::Host::Domain(name)) => name == "localhost",
            Some(_) => true,
            None => false,
        };
        let unhostable = !is_host_label(&self.bucket)
            || (endpoint.scheme() == "https" && self.bucket.contains('.'));
        match self.path_style.unwrap_or(local || unhostable) {
            true => UrlStyle::Path,
            false => UrlStyle::VirtualHost,
        }
    }

    /// The bucket at `endpoint` (`endpoint_url`), in its style.
    fn located_bucket(&self, endpoint: &Url) -> Result<Bucket, String> {
        let style = self.url_style(endpoint);
        Bucket::new(
            endpoint.clone(),
            style,
            self.bucket.clone(),
            self.region.clone(),
        )
        .map_err(|error| format!("bucket {:?}: {error}", self.bucket))
    }

    /// The bucket's URL (what messages show).
    pub fn bucket_url(&self) -> Result<Url, String> {
        self.located_bucket(&self.endpoint_url()?)
            .map(|bucket| bucket.base_url().clone())
    }

    /// The HTTP client of the remote at `endpoint`: its CA certificates beside the system's,
    /// and no proxy to a loopback endpoint.
    fn http_client(&self, endpoint: &Url) -> Result<reqwest::Client, String> {
        super::http::client_builder(self.ca_cert.as_ref(), Some(endpoint.as_str()))
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| error.to_string())
    }
}

/// AWS's own endpoint for `region`.
fn aws_endpoint(region: &str) -> String {
    format!("https://s3.{region}.amazonaws.com")
}

/// Whether `bucket` can lead a host name: lowercase letters, digits, `-` and `.`, starting and
/// ending with a letter or digit, 3 to 63 long.
fn is_host_label(bucket: &str) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=63).contains(&bucket.len())
        && edge(bucket.as_bytes().first())
        && edge(bucket.as_bytes().last())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
}

/// The S3 client of one remote.
pub struct S3Backend {
    /// The bucket as configured; its URL names the remote (`identity`).
    bucket: Bucket,
    /// The addressing style, when the endpoint is AWS's own, which is per region.
    aws_style: Option<UrlStyle>,
    prefix: String,
    /// The storage class asked for, and whether the server was seen to keep it (`kept.rs`).
    storage_class: Asked,
    checksum: ChecksumChoice,
    encryption: Option<Encryption>,
    /// Set once the server has stored something without the encryption asked for: it is sent
    /// nothing more.
    unencrypted: AtomicBool,
    /// The canned ACL asked for, and whether the server was seen to keep it.
    acl: Asked,
    requester: Requester,
}

/// What an open upload holds, as `ferry cleanup` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub parts: usize,
    pub bytes: u64,
    /// When the latest part landed, RFC 3339.
    pub latest: Option<String>,
}

/// A multipart upload on the server, as `ferry cleanup` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    /// RFC 3339, as the server gave it.
    pub initiated: String,
}

impl S3Backend {
    pub fn new(config: &S3Config) -> Result<S3Backend, BackendError> {
        let shown = config
            .bucket_url()
            .map(|url| crate::redact::url(url.as_str()))
            .unwrap_or_else(|_| config.bucket.clone());
        let setup = |problem: String| BackendError::Setup {
            endpoint: shown.clone(),
            problem,
        };
        let endpoint = config.endpoint_url().map_err(setup)?;
        let bucket = config.located_bucket(&endpoint).map_err(setup)?;
        let client = config.http_client(&endpoint).map_err(setup)?;
        let credentials =
            credentials::Credentials::new(&config.credentials, config.ca_cert.as_ref())
                .map_err(setup)?;
        Ok(S3Backend {
            bucket,
            aws_style: config
                .endpoint
                .is_none()
                .then(|| config.url_style(&endpoint)),
            prefix: config.prefix.clone(),
            storage_class: Asked::new(config.storage_class.clone(), true),
            checksum: ChecksumChoice::new(config.checksum),
            encryption: config.encryption.clone(),
            unencrypted: AtomicBool::new(false),
            acl: Asked::new(
                config.acl.clone(),
                kept::acl_checkable(config.acl.as_deref()),
            ),
            requester: Requester::new(client, config.region.clone(), credentials, shown.clone()),
        })
    }

    fn key(&self, remote_path: &str) -> String {
        format!("{}{}", self.prefix, remote_path)
    }

    fn object(&self, operation: Operation, method: Method, key: &str) -> Call {
        Call::new(operation, method, self.located().object_url(key))
    }

    /// `call` with the key SSE-C needs on every request for the object's bytes or checksums:
    /// UploadPart, HEAD, and CompleteMultipartUpload and ListParts (AWS wants it on those of
    /// an upload made with a checksum algorithm; Garage lists no CRC32C without it). Unchanged
    /// under any other encryption.
    fn keyed(&self, call: Call) -> Call {
        call.headers(self.encryption.iter().flat_map(Encryption::key_headers))
    }

    /// Where requests for the bucket go. AWS's own endpoint is per region: once the server has
    /// named another region for the bucket (`Requester::region`), they go to that region's.
    fn located(&self) -> Cow<'_, Bucket> {
        let region = self.requester.region();
        let Some(style) = self.aws_style.filter(|_| region != self.bucket.region()) else {
            return Cow::Borrowed(&self.bucket);
        };
        let name = self.bucket.name().to_string();
        let moved = Url::parse(&aws_endpoint(&region))
            .ok()
            .and_then(|endpoint| Bucket::new(endpoint, style, name, region).ok());
        moved.map_or(Cow::Borrowed(&self.bucket), Cow::Owned)
    }

    /// Sends `call` and reads its reply as `T`.
    async fn reply<T: serde::de::DeserializeOwned>(&self, call: Call) -> Result<T, BackendError> {
        let request = call.named();
        let response = self.requester.send(call, None).await?;
        self.read_reply(request, response).await
    }

    /// Reads the reply to `request` as `T`.
    async fn read_reply<T: serde::de::DeserializeOwned>(
        &self,
        request: Request,
        response: reqwest::Response,
    ) -> Result<T, BackendError> {
        let text = self.requester.text(request, response).await?;
        xml::parse(&text).map_err(|problem| self.invalid(request, problem))
    }

    /// The recorded id of `session`, split; an id that is not an S3 one is refused.
    fn session_id<'a>(
        &self,
        operation: Operation,
        session: SessionRef<'a>,
    ) -> Result<SessionId<'a>, BackendError> {
        SessionId::parse(session.id).ok_or_else(|| {
            let problem = format!("session id {:?} is not an S3 one", session.id);
            self.invalid(permission::request(operation), problem)
        })
    }

    /// The checksum the parts of session `id` carry: the one its upload was opened with, or
    /// (an id recorded before that was kept) the remote's now.
    fn checksum_of(&self, id: &SessionId<'_>) -> Checksum {
        id.checksum.unwrap_or_else(|| self.checksum.current())
    }

    fn invalid(&self, operation: Request, problem: String) -> BackendError {
        BackendError::InvalidReply {
            operation,
            endpoint: self.requester.endpoint.clone(),
            problem,
        }
    }

    /// The headers of a new object: its type, metadata, storage class, encryption and ACL.
    fn object_headers(
        &self,
        mut call: Call,
        request: &CreateRequest,
    ) -> Result<Call, BackendError> {
        let key = self.key(&request.remote_path);
        if key.len() > MAX_KEY_BYTES || key.is_empty() {
            return Err(BackendError::Setup {
                endpoint: self.requester.endpoint.clone(),
                problem: format!("key {key:?} is not 1 to {MAX_KEY_BYTES} bytes long"),
            });
        }
        if let Some(mime) = &request.mime_type {
            call = call.header("content-type", mime.clone());
        }
        call = self.metadata_headers(call, request)?;
        if let Some(class) = self.storage_class.value() {
            call = call.header("x-amz-storage-class", class.to_string());
        }
        call = call.headers(self.encryption.iter().flat_map(Encryption::headers));
        if let Some(acl) = self.acl.value() {
            call = call.header("x-amz-acl", acl.to_string());
        }
        Ok(call)
    }

    /// The watch's metadata as `x-amz-meta-*`, and the file's modification time as rclone keeps
    /// it unless the metadata names one.
    fn metadata_headers(
        &self,
        mut call: Call,
        request: &CreateRequest,
    ) -> Result<Call, BackendError> {
        // `config` refused such metadata at load already: this guards the other callers.
        metadata::check(&request.metadata).map_err(|problem| BackendError::Setup {
            endpoint: self.requester.endpoint.clone(),
            problem: format!("metadata {problem}"),
        })?;
        for (name, value) in &request.metadata {
            let name = metadata::header_name(name).expect("checked names are header names");
            call = call.header(name, metadata::header_value(value));
        }
        let mtime_given = request
            .metadata
            .keys()
            .any(|k| k.eq_ignore_ascii_case("mtime"));
        if let Some(mtime_ns) = request.mtime_ns.filter(|_| !mtime_given) {
            call = call.header(MTIME_META, mtime_value(mtime_ns));
        }
        Ok(call)
    }

    /// Sends a part or a whole file with its `checksum`; its receipt. A whole file (its `key`
    /// in `stored`) is refused when the reply does not confirm the encryption asked for.
    async fn send_body(
        &self,
        call: Call,
        body: PartBody,
        checksum: Checksum,
        stored: Option<&str>,
    ) -> Result<PartReceipt, BackendError> {
        let request = call.named();
        let sent = carried(checksum, body.sums);
        let call = sum_headers(call, &body, sent);
        let md5 = body.sums.md5;
        let stream = reqwest::Body::wrap_stream(body.stream);
        let response = self.requester.send(call, Some(stream)).await?;
        let receipt = self.receipt(request, sent, response.headers(), md5)?;
        if let Some(key) = stored {
            self.confirm_encryption(key, response.headers(), true)?;
        }
        Ok(receipt)
    }

    /// Refuses `key` when the server has already stored something without the encryption
    /// asked for: nothing more is sent to it.
    fn refuse_if_unencrypted(&self, key: &str) -> Result<(), BackendError> {
        let Some(asked) = self.encryption.as_ref() else {
            return Ok(());
        };
        if !self.unencrypted.load(Ordering::Relaxed) {
            return Ok(());
        }
        Err(BackendError::Setup {
            endpoint: self.requester.endpoint.clone(),
            problem: format!(
                "{key} not sent: the server did not confirm the server-side encryption asked \
                 for ({}) on an earlier upload",
                asked.name()
            ),
        })
    }

    /// Checks that the reply to the PutObject (`stored`) or CreateMultipartUpload of `key`
    /// confirms the encryption asked for; when it does not, no more is sent to the server.
    fn confirm_encryption(
        &self,
        key: &str,
        headers: &HeaderMap,
        stored: bool,
    ) -> Result<(), BackendError> {
        let asked = self.encryption.as_ref();
        let Some(problem) = asked.and_then(|asked| asked.unconfirmed(headers)) else {
            return Ok(());
        };
        self.unencrypted.store(true, Ordering::Relaxed);
        let after = match stored {
            true => "the object stays as the server stored it",
            false => "the upload is aborted, nothing was stored",
        };
        Err(BackendError::Setup {
            endpoint: self.requester.endpoint.clone(),
            problem: format!("{key}: {problem}; {after}"),
        })
    }

    /// The receipt of a stored part or file: its ETag, checked against the MD5 sent where the
    /// ETag is one, and the CRC32C the server reports. A whole file whose CRC32C the server
    /// did not check is refused, to be sent again with its MD5 (`checksum.rs`).
    fn receipt(
        &self,
        operation: Request,
        sent: Checksum,
        headers: &HeaderMap,
        md5: Option<[u8; 16]>,
    ) -> Result<PartReceipt, BackendError> {
        let etag = header_text(headers, ETAG)
            .map(|text| text.trim().trim_matches('"').to_string())
            .filter(|etag| !etag.is_empty())
            .ok_or_else(|| self.invalid(operation, "no ETag".into()))?;
        let etag_is_md5 = self.encryption.as_ref().is_none_or(Encryption::etag_is_md5);
        if let Some(md5) = md5
            && etag_is_md5
            && is_md5_hex(&etag)
            && etag != hex::encode(md5)
        {
            return Err(BackendError::Damaged {
                operation,
                endpoint: self.requester.endpoint.clone(),
                problem: format!("ETag {etag} is not the MD5 of the bytes sent"),
            });
        }
        let crc32c = header_text(headers, "x-amz-checksum-crc32c").and_then(decode_crc32c);
        let noted = self
            .checksum
            .note(sent, operation.operation, crc32c.is_some());
        if let Noted::CrcIgnored { first } = noted {
            return Err(self.crc_ignored(operation, first));
        }
        Ok(PartReceipt { etag, crc32c })
    }

    /// The server stored a body without checking its CRC32C, or opened an upload without
    /// keeping them: said loudly the first time; the body is sent again with its MD5, the
    /// upload opened again without CRC32C.
    fn crc_ignored(&self, operation: Request, first: bool) -> BackendError {
        let endpoint = self.requester.endpoint.clone();
        let sign = match operation.operation {
            Operation::Create => "x-amz-checksum-algorithm not named back at CreateMultipartUpload",
            _ => "x-amz-checksum-crc32c not named back",
        };
        if first {
            tracing::warn!(
                %endpoint,
                "the server does not check CRC32C checksums ({sign}): sending Content-MD5 to \
                 it instead; set checksum = \"md5\" on this remote to start with it"
            );
        }
        BackendError::Unchecked {
            operation,
            endpoint,
            problem: format!("the server ignores CRC32C checksums ({sign})"),
        }
    }

    /// CreateMultipartUpload of `key`, asking for CRC32C checksums while the remote uses
    /// them. An upload whose reply does not confirm the encryption, or the checksum, asked
    /// for is aborted.
    async fn create_upload(
        &self,
        request: &CreateRequest,
        key: &str,
    ) -> Result<RemoteSession, BackendError> {
        let operation = Operation::Create;
        let nonce = format!("{:016x}", rand::random::<u64>());
        let mut call = self
            .object(operation, Method::Post, key)
            .query("uploads", "")
            .header(SESSION_META, nonce.clone());
        let sent = self.checksum.current();
        if sent == Checksum::Crc32c {
            call = call.header(CHECKSUM_ALGORITHM, "CRC32C");
        }
        let call = self.object_headers(call, request)?;
        self.refuse_if_unencrypted(key)?;
        let response = self.requester.send(call, None).await?;
        let confirmed = self
            .confirm_encryption(key, response.headers(), false)
            .and_then(|()| self.confirm_checksum(sent, response.headers()));
        let request = permission::request(operation);
        let initiated: xml::Initiated = self.read_reply(request, response).await?;
        if initiated.upload_id.is_empty() || initiated.upload_id.len() > 1024 {
            return Err(self.invalid(request, "no usable UploadId".into()));
        }
        if let Err(error) = confirmed {
            let upload = OpenUpload {
                key: key.to_string(),
                upload_id: initiated.upload_id,
                initiated: String::new(),
            };
            let _ = self.abort_upload(&upload).await;
            return Err(error);
        }
        Ok(RemoteSession {
            id: SessionId::format(&nonce, sent, &initiated.upload_id),
            limits: s3_limits(),
            expires_at: None,
        })
    }

    /// Checks that the reply to a CreateMultipartUpload asked for CRC32C checksums (`sent`)
    /// names the algorithm back. A server that does not keep them (Ceph RGW 16.2, s3s-fs)
    /// leaves it out and stores parts whatever their CRC32C says, so the remote turns to MD5.
    fn confirm_checksum(&self, sent: Checksum, headers: &HeaderMap) -> Result<(), BackendError> {
        let named = header_text(headers, CHECKSUM_ALGORITHM)
            .is_some_and(|algorithm| algorithm.trim().eq_ignore_ascii_case("CRC32C"));
        match self.checksum.note(sent, Operation::Create, named) {
            Noted::Checked => Ok(()),
            Noted::CrcIgnored { first } => {
                Err(self.crc_ignored(permission::request(Operation::Create), first))
            }
        }
    }

    /// On the first objects stored, whether the server kept the storage class (by a HEAD of
    /// the object at `key` when `head`: a complete's own HEAD has told) and the ACL asked for.
    async fn check_kept(&self, key: &str, head: bool) {
        if head && self.storage_class.wanted() {
            self.check_class(key).await;
        }
        if self.acl.wanted() {
            self.check_acl(key).await;
        }
    }

    /// A HEAD of the object just stored at `key`, for the class the server gave it. A HEAD
    /// that fails ends the check: it is not worth a failing request per object.
    async fn check_class(&self, key: &str) {
        let call = self.keyed(self.object(Operation::Query, Method::Head, key));
        match self.requester.send(call, None).await {
            Ok(response) => self.note_class(key, response.headers()),
            Err(error) => {
                self.storage_class.forgo();
                tracing::debug!(%error, key, "no HEAD to check the storage class by");
            }
        }
    }

    /// Says, once, that the server stored `key` (its HEAD reply's `headers`) without the
    /// storage class asked for (`kept.rs`).
    fn note_class(&self, key: &str, headers: &HeaderMap) {
        let named = header_text(headers, "x-amz-storage-class");
        if let Some(asked) = self
            .storage_class
            .note(|asked| kept::class_ignored(asked, named))
        {
            let stored = named.map_or("in its default class (its HEAD names none)".into(), |n| {
                format!("as {n}")
            });
            tracing::warn!(
                endpoint = %self.requester.endpoint,
                "the server ignores storage_class = {asked:?}: it stored {key} {stored}; \
                 uploads go on"
            );
        }
    }

    /// The grants of the object just stored at `key` (GetObjectAcl), for the ACL the server
    /// gave it; a server without ACLs does not implement the call. Any other failure (a key
    /// without `s3:GetObjectAcl`) ends the check.
    async fn check_acl(&self, key: &str) {
        let call = self
            .object(Operation::Query, Method::Get, key)
            .query("acl", "");
        let grants = match self.reply::<xml::AccessControlPolicy>(call).await {
            Ok(policy) => Some(policy.grants()),
            Err(BackendError::Status { status: 501, .. }) => None,
            Err(error) => {
                self.acl.forgo();
                return tracing::debug!(%error, key, "no grants to check the ACL by");
            }
        };
        let Some(acl) = self
            .acl
            .note(|acl| kept::acl_ignored(acl, grants.as_deref()))
        else {
            return;
        };
        let why = match grants {
            None => "it has no ACLs (GetObjectAcl: 501 Not Implemented)".to_string(),
            Some(_) => format!("{key} was stored without the grants it gives"),
        };
        tracing::warn!(
            endpoint = %self.requester.endpoint,
            "the server ignores acl = {acl:?}: {why}; uploads go on"
        );
    }

    /// The body of CompleteMultipartUpload: the parts, with their CRC32C when the upload was
    /// created with that checksum.
    fn manifest(&self, parts: &[CompletedPart], checksum: Checksum) -> String {
        let entries: Vec<xml::ManifestEntry<'_>> = parts
            .iter()
            .map(|part| xml::ManifestEntry {
                number: part.number,
                etag: &part.etag,
                crc32c: part
                    .crc32c
                    .filter(|_| checksum == Checksum::Crc32c)
                    .map(encode_crc32c),
            })
            .collect();
        xml::complete_body(&entries)
    }

    /// The reply of a complete that was answered 200: its body may still be an `<Error>`, and
    /// then the complete failed after all.
    async fn complete_reply(&self, response: reqwest::Response) -> Result<(), BackendError> {
        let operation = permission::request(Operation::Complete);
        let headers = response.headers().clone();
        let text = self.requester.text(operation, response).await?;
        match xml::error_in(&text) {
            Some(reply) => Err(self.requester.error(operation, 200, reply, &headers, true)),
            None => Ok(()),
        }
    }

    /// The object at `key` if the session `nonce` wrote it (a HEAD).
    async fn written_by(
        &self,
        key: &str,
        nonce: &str,
        remote_path: &str,
    ) -> Result<Option<RemoteFile>, BackendError> {
        let call = self.keyed(self.object(Operation::Query, Method::Head, key));
        let response = match self.requester.send(call, None).await {
            Ok(response) => response,
            Err(BackendError::Status { status: 404, .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        let headers = response.headers();
        let session = header_text(headers, SESSION_META);
        if session != Some(nonce) {
            return Ok(None);
        }
        self.note_class(key, headers);
        let size = header_text(headers, CONTENT_LENGTH)
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| {
                let request = Request::named(Operation::Query, &"HeadObject");
                self.invalid(request, "HEAD without a size".into())
            })?;
        Ok(Some(RemoteFile {
            path: remote_path.to_string(),
            size,
            sha256: None,
        }))
    }

    /// What a Complete that failed means. A refusal: S3 answers `NoSuchUpload` (s3s-fs
    /// `AccessDenied`) to the Complete of an upload that an earlier Complete, whose reply was
    /// lost, finished. A `500`: some servers answer so the Complete of an upload that was
    /// aborted (moto with an HTML page, Ceph RGW 16.2 `InternalError`), for as long as it is
    /// asked, so a ListParts of one part asks whether the upload is still there. Either way,
    /// when it is gone the object says whether this session wrote it: done if so, else the
    /// upload is gone. Otherwise the failure stands, to be retried.
    async fn complete_failed(
        &self,
        key: &str,
        (nonce, upload_id): (&str, &str),
        remote_path: &str,
        failure: BackendError,
    ) -> Result<RemoteFile, BackendError> {
        let gone = match failure {
            refusal if refusal.class() != super::retry::ErrorClass::Transient => refusal,
            BackendError::Status { status: 500, .. } => {
                let probe = self.parts_page(key, upload_id, 1);
                match self.reply::<xml::PartsPage>(probe).await {
                    Err(gone) if gone.class() == super::retry::ErrorClass::SessionGone => gone,
                    _ => return Err(failure),
                }
            }
            failure => return Err(failure),
        };
        match self.written_by(key, nonce, remote_path).await? {
            Some(file) => Ok(file),
            None => Err(gone),
        }
    }

    /// A ListParts of the upload of `key`, of at most `max_parts` parts.
    fn parts_page(&self, key: &str, upload_id: &str, max_parts: u32) -> Call {
        self.keyed(self.object(Operation::Query, Method::Get, key))
            .query("uploadId", upload_id)
            .query("max-parts", max_parts.to_string())
            .on_session()
    }

    /// The parts of a session's upload, from every page of ListParts.
    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<RemotePart>, BackendError> {
        let listed = self.listed_parts(key, upload_id).await?;
        Ok(listed
            .into_iter()
            .map(|part| RemotePart {
                number: part.part_number,
                size: part.size,
                etag: part.etag.trim_matches('"').to_string(),
                crc32c: part.checksum_crc32c.as_deref().and_then(decode_crc32c),
            })
            .collect())
    }

    /// Every page of ListParts.
    async fn listed_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<xml::ListedPart>, BackendError> {
        let request = Request::named(Operation::Query, &"ListParts");
        let mut parts = Vec::new();
        let mut marker: Option<u32> = None;
        loop {
            let mut call = self.parts_page(key, upload_id, 1000);
            if let Some(marker) = marker {
                call = call.query("part-number-marker", marker.to_string());
            }
            let page: xml::PartsPage = self.reply(call).await?;
            parts.extend(page.parts);
            match (page.is_truncated, page.next_part_number_marker) {
                (true, Some(next)) if Some(next) != marker && next > 0 => marker = Some(next),
                (true, _) => {
                    return Err(self.invalid(
                        request,
                        "ListParts is truncated without a usable marker".into(),
                    ));
                }
                (false, _) => return Ok(parts),
            }
        }
    }

    /// The multipart uploads open under the remote's prefix (ListMultipartUploads, every page).
    /// A page ends at a key, and at an upload of that key where the server says (AWS, Ceph);
    /// Garage names the key alone, and the next page starts after it.
    pub async fn open_uploads(&self) -> Result<Vec<OpenUpload>, BackendError> {
        let request = permission::request(Operation::List);
        let mut found = Vec::new();
        let mut markers: Option<(String, Option<String>)> = None;
        loop {
            let mut call = self.uploads_call();
            if let Some((key, upload)) = &markers {
                call = call.query("key-marker", key.clone());
                if let Some(upload) = upload {
                    call = call.query("upload-id-marker", upload.clone());
                }
            }
            let page: xml::UploadsPage = self.reply(call).await?;
            found.extend(page.uploads.into_iter().map(|upload| OpenUpload {
                key: upload.key,
                upload_id: upload.upload_id,
                initiated: upload.initiated,
            }));
            let given = |marker: Option<String>| marker.filter(|text| !text.is_empty());
            let upload_marker = given(page.next_upload_id_marker);
            let next = given(page.next_key_marker).map(|key| (key, upload_marker));
            match (page.is_truncated, next) {
                (true, Some(next)) if Some(&next) != markers.as_ref() => markers = Some(next),
                (true, _) => {
                    return Err(self.invalid(
                        request,
                        "ListMultipartUploads is truncated without usable markers".into(),
                    ));
                }
                (false, _) => return Ok(found),
            }
        }
    }

    /// Whether the keys may list the uploads under the prefix, as orphan cleanup does: one
    /// ListMultipartUploads of at most one upload.
    pub async fn may_list_uploads(&self) -> Result<(), BackendError> {
        let call = self.uploads_call().query("max-uploads", "1");
        self.reply::<xml::UploadsPage>(call).await.map(|_| ())
    }

    /// ListMultipartUploads under the prefix, from the first page.
    fn uploads_call(&self) -> Call {
        Call::new(
            Operation::List,
            Method::Get,
            self.located().base_url().clone(),
        )
        .query("uploads", "")
        .query("prefix", self.prefix.clone())
    }

    /// What an upload holds (not a session of ours): its parts, their bytes, and when the
    /// latest one landed (RFC 3339, when the server says).
    pub async fn activity(&self, upload: &OpenUpload) -> Result<Activity, BackendError> {
        let parts = self.listed_parts(&upload.key, &upload.upload_id).await?;
        Ok(Activity {
            parts: parts.len(),
            bytes: parts.iter().map(|part| part.size).sum(),
            latest: parts.iter().filter_map(|p| p.last_modified.clone()).max(),
        })
    }

    /// Aborts an upload by its key.
    pub async fn abort_upload(&self, upload: &OpenUpload) -> Result<(), BackendError> {
        let call = self
            .object(Operation::Abort, Method::Delete, &upload.key)
            .query("uploadId", upload.upload_id.clone())
            .on_session();
        match self.requester.send(call, None).await {
            Ok(_) => Ok(()),
            Err(error) if error.class() == super::retry::ErrorClass::SessionGone => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// The key under the remote's prefix that a remote path is stored at.
    pub fn key_of(&self, remote_path: &str) -> String {
        self.key(remote_path)
    }
}

/// The checksum headers of a part or a whole file, carrying `sent`.
fn sum_headers(mut call: Call, body: &PartBody, sent: Checksum) -> Call {
    match (sent, body.sums.crc32c, body.sums.md5) {
        (Checksum::Crc32c, Some(crc), _) => {
            // Named as the AWS SDKs name it; moto names the CRC32C back only then.
            call = call.header("x-amz-sdk-checksum-algorithm", "CRC32C");
            call = call.header("x-amz-checksum-crc32c", encode_crc32c(crc));
        }
        (Checksum::Md5, _, Some(md5)) => call = call.header("content-md5", BASE64.encode(md5)),
        _ => {}
    }
    call.header("content-length", body.len.to_string())
}

fn is_md5_hex(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A modification time as rclone writes it: seconds since the Unix epoch in fixed point, with
/// up to 9 decimals and no trailing zeros ("1354040105.123456789", "1354040105.5",
/// "1354040105").
fn mtime_value(mtime_ns: i64) -> String {
    let (sign, ns) = match mtime_ns < 0 {
        true => ("-", mtime_ns.unsigned_abs()),
        false => ("", mtime_ns.unsigned_abs()),
    };
    let (seconds, nanos) = (ns / 1_000_000_000, ns % 1_000_000_000);
    let fraction = format!("{nanos:09}");
    match fraction.trim_end_matches('0') {
        "" => format!("{sign}{seconds}"),
        digits => format!("{sign}{seconds}.{digits}"),
    }
}

fn s3_limits() -> PartLimits {
    PartLimits {
        min_part_size: MIN_PART_SIZE,
        max_part_size: MAX_PART_SIZE,
        max_parts: MAX_PARTS,
        sequential: false,
        uniform: true,
    }
}

#[async_trait::async_trait]
impl Backend for S3Backend {
    fn endpoint(&self) -> &str {
        &self.requester.endpoint
    }

    /// The bucket and prefix, and an SSE-C key's MD5: an upload made under one customer key
    /// takes no part under another, so after the key changes sessions start afresh (the old
    /// upload left to `ferry cleanup`).
    fn identity(&self) -> String {
        let identity = format!("s3 {} {}", self.bucket.base_url(), self.prefix);
        match &self.encryption {
            Some(Encryption::Customer(key)) => format!("{identity} sse-c {}", key.md5()),
            _ => identity,
        }
    }

    /// The sums the session's parts carry (`session.rs`), or a whole file's.
    fn up_front(&self, session: Option<SessionRef<'_>>) -> UpFront {
        let checksum = match session.and_then(|session| SessionId::parse(session.id)) {
            Some(id) => self.checksum_of(&id),
            None => self.checksum.current(),
        };
        UpFront {
            crc32c: checksum == Checksum::Crc32c,
            md5: checksum == Checksum::Md5,
        }
    }

    fn single_request(&self) -> Option<PartLimits> {
        Some(s3_limits())
    }

    fn request(&self, operation: Operation) -> Request {
        permission::request(operation)
    }

    fn notices(&self) -> Vec<String> {
        let checksum = self.checksum.turned().then(|| {
            "the server ignores CRC32C checksums: bodies carry their Content-MD5".to_string()
        });
        let class = self.storage_class.ignored();
        let class = class.map(|class| format!("the server ignores storage_class = {class:?}"));
        let acl = self.acl.ignored();
        let acl = acl.map(|acl| format!("the server ignores acl = {acl:?}"));
        let unencrypted = self.unencrypted.load(Ordering::Relaxed).then(|| {
            "the server did not confirm the encryption asked for: nothing more is sent".into()
        });
        [checksum, class, acl, unencrypted]
            .into_iter()
            .flatten()
            .collect()
    }

    async fn create(&self, request: &CreateRequest) -> Result<RemoteSession, BackendError> {
        if request.size > MAX_OBJECT_SIZE {
            return Err(BackendError::Setup {
                endpoint: self.requester.endpoint.clone(),
                problem: format!("{} bytes is over S3's 5 TiB object limit", request.size),
            });
        }
        let key = self.key(&request.remote_path);
        match self.create_upload(request, &key).await {
            // The server ignored the CRC32C asked for: that upload is aborted, and this one
            // is opened without it, its parts to carry their MD5.
            Err(BackendError::Unchecked { .. }) => self.create_upload(request, &key).await,
            other => other,
        }
    }

    async fn query(&self, session: SessionRef<'_>) -> Result<SessionStatus, BackendError> {
        let Some(SessionId {
            nonce, upload_id, ..
        }) = SessionId::parse(session.id)
        else {
            return Ok(SessionStatus::Gone);
        };
        let key = self.key(session.remote_path);
        let parts = match self.list_parts(&key, upload_id).await {
            Ok(parts) => parts,
            Err(error) if error.class() == super::retry::ErrorClass::SessionGone => Vec::new(),
            Err(error) => return Err(error),
        };
        if !parts.is_empty() {
            return Ok(SessionStatus::Open {
                held: Held::Parts(parts),
            });
        }
        // Gone (NoSuchUpload), completed, or open with nothing in it: servers that list an
        // unknown upload as empty (s3s-fs) cannot tell these apart, and a session that holds
        // nothing costs nothing to start afresh.
        if let Some(file) = self.written_by(&key, nonce, session.remote_path).await? {
            return Ok(SessionStatus::Completed { file });
        }
        let _ = self.abort(session).await;
        Ok(SessionStatus::Gone)
    }

    async fn put_part(
        &self,
        session: SessionRef<'_>,
        part: PartSpec,
        body: PartBody,
    ) -> Result<PartReceipt, BackendError> {
        let operation = Operation::PutPart(part.number);
        let id = self.session_id(operation, session)?;
        let key = self.key(session.remote_path);
        let call = self
            .keyed(self.object(operation, Method::Put, &key))
            .query("partNumber", part.number.to_string())
            .query("uploadId", id.upload_id)
            .on_session()
            .streamed();
        self.send_body(call, body, self.checksum_of(&id), None)
            .await
    }

    async fn complete(
        &self,
        session: SessionRef<'_>,
        parts: &[CompletedPart],
        _sha256: &str,
        size: u64,
    ) -> Result<RemoteFile, BackendError> {
        let operation = Operation::Complete;
        let id = self.session_id(operation, session)?;
        let (nonce, upload_id) = (id.nonce, id.upload_id);
        let key = self.key(session.remote_path);
        let mut call = self
            .keyed(self.object(operation, Method::Post, &key))
            .query("uploadId", upload_id)
            .header("content-type", "application/xml")
            .on_session();
        call.timeout =
            Some(REQUEST_TIMEOUT + Duration::from_secs(size / COMPLETE_BYTES_PER_SECOND));
        let body = self.manifest(parts, self.checksum_of(&id));
        match self.requester.send(call, Some(body.into())).await {
            Ok(response) => self.complete_reply(response).await?,
            Err(failure) => {
                let ids = (nonce, upload_id);
                return self
                    .complete_failed(&key, ids, session.remote_path, failure)
                    .await;
            }
        }
        let written = self.written_by(&key, nonce, session.remote_path).await?;
        let request = permission::request(operation);
        let missing = || self.invalid(request, format!("{key} is not there after complete"));
        let file = written.ok_or_else(missing)?;
        self.check_kept(&key, false).await;
        Ok(file)
    }

    async fn abort(&self, session: SessionRef<'_>) -> Result<(), BackendError> {
        let Some(id) = SessionId::parse(session.id) else {
            return Ok(());
        };
        let upload = OpenUpload {
            key: self.key(session.remote_path),
            upload_id: id.upload_id.to_string(),
            initiated: String::new(),
        };
        self.abort_upload(&upload).await
    }

    async fn put_file(
        &self,
        request: &CreateRequest,
        body: PartBody,
    ) -> Result<PartReceipt, BackendError> {
        let operation = Operation::PutFile;
        let key = self.key(&request.remote_path);
        let call = self.object(operation, Method::Put, &key).streamed();
        let call = self.object_headers(call, request)?;
        self.refuse_if_unencrypted(&key)?;
        let checksum = self.checksum.current();
        let receipt = self.send_body(call, body, checksum, Some(&key)).await?;
        self.check_kept(&key, true).await;
        Ok(receipt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: Option<&str>, path_style: Option<bool>) -> S3Config {
        S3Config {
            endpoint: endpoint.map(str::to_owned),
            endpoint_source: None,
            region: "eu-west-1".into(),
            region_source: None,
            bucket: "photos".into(),
            prefix: "cam/".into(),
            path_style,
            storage_class: None,
            checksum: Checksum::Crc32c,
            credentials: CredentialSource::Chain(Box::new(sts::StsEndpoint::aws("us-east-1"))),
            encryption: None,
            acl: None,
            ca_cert: None,
        }
    }

    #[test]
    fn buckets_are_addressed_by_path_on_local_endpoints_and_by_host_elsewhere() {
        let cases = [
            (None, None, "https://photos.s3.eu-west-1.amazonaws.com/"),
            (
                Some("http://127.0.0.1:9000"),
                None,
                "http://127.0.0.1:9000/photos/",
            ),
            (
                Some("http://localhost:9000"),
                None,
                "http://localhost:9000/photos/",
            ),
            (
                Some("https://minio.example.org"),
                None,
                "https://photos.minio.example.org/",
            ),
            (
                Some("https://minio.example.org"),
                Some(true),
                "https://minio.example.org/photos/",
            ),
        ];
        for (endpoint, style, expected) in cases {
            assert_eq!(
                config(endpoint, style).bucket_url().unwrap().as_str(),
                expected,
                "{endpoint:?} {style:?}"
            );
        }
        assert!(config(Some("ftp://host"), None).bucket_url().is_err());
    }

    #[test]
    fn buckets_whose_names_cannot_be_hosts_are_addressed_by_path() {
        let cases = [
            (
                "my.photos",
                None,
                "https://s3.eu-west-1.amazonaws.com/my.photos/",
            ),
            (
                "my.photos",
                Some("http://minio.example.org"),
                "http://my.photos.minio.example.org/",
            ),
            (
                "Photos_2019",
                None,
                "https://s3.eu-west-1.amazonaws.com/Photos_2019/",
            ),
            (
                "-photos",
                None,
                "https://s3.eu-west-1.amazonaws.com/-photos/",
            ),
            (
                "photos-2019",
                None,
                "https://photos-2019.s3.eu-west-1.amazonaws.com/",
            ),
        ];
        for (bucket, endpoint, expected) in cases {
            let config = S3Config {
                bucket: bucket.into(),
                ..config(endpoint, None)
            };
            let url = config.bucket_url();
            assert_eq!(url.as_ref().map(Url::as_str), Ok(expected), "{bucket}");
        }
    }

    #[test]
    fn modification_times_are_written_as_rclone_writes_them() {
        let cases = [
            (1_354_040_105_123_456_789, "1354040105.123456789"),
            (1_354_040_105_500_000_000, "1354040105.5"),
            (1_354_040_105_000_000_000, "1354040105"),
            (1_354_040_105_000_000_001, "1354040105.000000001"),
            (0, "0"),
            (999, "0.000000999"),
            (-1_500_000_000, "-1.5"),
            (-1, "-0.000000001"),
            (i64::MIN, "-9223372036.854775808"),
        ];
        for (mtime_ns, expected) in cases {
            assert_eq!(mtime_value(mtime_ns), expected, "{mtime_ns}");
        }
    }
}
