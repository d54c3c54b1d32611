//! One S3 request: signed by `rusty-s3` (SigV4 in the query string, so a streamed body is sent
//! as `UNSIGNED-PAYLOAD` and its integrity rests on the part checksum the server verifies),
//! sent on our reqwest, and a refusal turned into a typed `BackendError`.
//!
//! Clock skew is learned from a refusal (`RequestTimeTooSkewed`, or any 403 whose `Date` is
//! a minute or more from the date the request was signed with) and every later signature is
//! dated by the server's clock; expired temporary keys are fetched again. A refusal that
//! names the bucket's region (AWS's `AuthorizationHeaderMalformed` or `PermanentRedirect`,
//! Garage's region check) when requests were signed for another is learned likewise, as the
//! AWS SDKs do. These refusals are transient, so the retry that follows succeeds.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use reqwest::header::DATE;
use reqwest::{Client, Response};
use rusty_s3::Method;
use url::Url;

use super::credentials::{Credentials, Keys, NoKeys};
use super::xml;
use crate::upload::backend::{BackendError, Operation, Rejection, Request};
use crate::upload::http::{header_text, httpdate};
use crate::upload::retry::{ErrorClass, classify_status};

/// Lifetime of a signature; a request is checked when it arrives, so this only needs to cover
/// the time between signing and sending, and clock drift.
const SIGNATURE_LIFETIME_SECONDS: u64 = 3600;
/// A server clock this far from ours is taken as skew to correct.
const SKEW_THRESHOLD_MS: i64 = 60_000;
/// Error bodies longer than this are cut in messages.
const MAX_ERROR_TEXT: usize = 512;

/// A request to sign and send.
pub struct Call {
    pub operation: Operation,
    pub method: Method,
    pub url: Url,
    /// Query parameters, signed.
    pub query: BTreeMap<&'static str, String>,
    /// Headers, lowercase names, signed and sent.
    pub headers: BTreeMap<String, String>,
    /// Whether a 404 without an S3 code means the upload is gone.
    pub on_session: bool,
    /// Limit on the whole request; `None` for streamed parts (the stall watchdog guards them).
    pub timeout: Option<Duration>,
}

impl Call {
    pub fn new(operation: Operation, method: Method, url: Url) -> Call {
        Call {
            operation,
            method,
            url,
            query: BTreeMap::new(),
            headers: BTreeMap::new(),
            on_session: false,
            timeout: Some(super::REQUEST_TIMEOUT),
        }
    }

    /// The request for messages, by the S3 API's name for it.
    pub fn named(&self) -> Request {
        Request::named(self.operation, super::permission::call_name(self))
    }

    pub fn query(mut self, name: &'static str, value: impl Into<String>) -> Call {
        self.query.insert(name, value.into());
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Call {
        self.headers.insert(name.into(), value.into());
        self
    }

    pub fn headers(mut self, headers: impl IntoIterator<Item = (&'static str, String)>) -> Call {
        for (name, value) in headers {
            self.headers.insert(name.into(), value);
        }
        self
    }

    pub fn on_session(mut self) -> Call {
        self.on_session = true;
        self
    }

    pub fn streamed(mut self) -> Call {
        self.timeout = None;
        self
    }
}

/// What a request was signed with: the region, and the correction to our clock then.
struct Signing {
    region: String,
    skew_ms: i64,
}

/// Signs and sends requests for one remote.
pub struct Requester {
    pub client: Client,
    /// The region requests are signed for: the configured one until the server names another.
    region: RwLock<String>,
    pub credentials: Credentials,
    /// Shown in messages: the bucket's URL, without credentials.
    pub endpoint: String,
    /// The server's clock minus ours, in milliseconds.
    skew_ms: AtomicI64,
}

impl Requester {
    pub fn new(client: Client, region: String, credentials: Credentials, endpoint: String) -> Self {
        Requester {
            client,
            region: RwLock::new(region),
            credentials,
            endpoint,
            skew_ms: AtomicI64::new(0),
        }
    }

    /// The error of a request that got no keys: a credential service that may answer later
    /// (STS throttled, a metadata service that timed out) is retried like the remote itself.
    fn without_keys(&self, operation: Request, no: NoKeys) -> BackendError {
        let endpoint = self.endpoint.clone();
        match no.retryable {
            true => BackendError::Transport {
                operation,
                endpoint,
                detail: no.message,
                source: None,
            },
            false => BackendError::Setup {
                endpoint,
                problem: no.message,
            },
        }
    }

    /// Signs and sends `call`; a success status is returned as is, anything else as an error.
    pub async fn send(
        &self,
        call: Call,
        body: Option<reqwest::Body>,
    ) -> Result<Response, BackendError> {
        let keys = self.credentials.get().await;
        let keys = keys.map_err(|no| self.without_keys(call.named(), no))?;
        let signing = Signing {
            region: self.region(),
            skew_ms: self.skew_ms.load(Ordering::Relaxed),
        };
        let url = self.sign(&call, &keys, &signing);
        let method = reqwest::Method::from_bytes(call.method.to_str().as_bytes())
            .expect("S3 methods are valid HTTP methods");
        let mut request = self.client.request(method, url);
        for (name, value) in &call.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(timeout) = call.timeout {
            request = request.timeout(timeout);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.transport(call.named(), error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.refusal(&call, response, &signing).await)
    }

    /// `call`'s URL signed in its query with `keys` as `signing` says, dated by the server's
    /// clock as far as it is known.
    fn sign(&self, call: &Call, keys: &Keys, signing: &Signing) -> Url {
        let skew = jiff::SignedDuration::from_millis(signing.skew_ms);
        let time = jiff::Timestamp::now()
            .checked_add(skew)
            .unwrap_or_else(|_| jiff::Timestamp::now());
        let query = call
            .query
            .iter()
            .map(|(name, value)| (*name, value.as_str()));
        let headers = call.headers.iter();
        rusty_s3::signing::sign(
            &time,
            call.method,
            call.url.clone(),
            keys.key(),
            keys.secret(),
            keys.token(),
            &signing.region,
            SIGNATURE_LIFETIME_SECONDS,
            query,
            headers.map(|(name, value)| (name.as_str(), value.as_str())),
        )
    }

    /// The region requests are signed for.
    pub fn region(&self) -> String {
        let region = self.region.read().expect("region lock is never poisoned");
        region.clone()
    }

    pub fn transport(&self, operation: Request, error: reqwest::Error) -> BackendError {
        crate::upload::native::transport_error(operation, &self.endpoint, error)
    }

    /// The body of the reply to `operation`, as text (see `http::body` for its limit).
    pub async fn text(
        &self,
        operation: Request,
        response: Response,
    ) -> Result<String, BackendError> {
        let body = crate::upload::http::body(response).await;
        let body =
            body.map_err(|e| crate::upload::native::body_error(operation, &self.endpoint, e))?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// An error reply to `call`, signed as `signed`, typed; learns the clock skew and the
    /// bucket's region, and drops expired keys, on the way. An AccessDenied names the call and
    /// the IAM actions that allow it.
    async fn refusal(&self, call: &Call, response: Response, signed: &Signing) -> BackendError {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = crate::upload::http::error_text(response).await;
        let mut reply = xml::error_in(&text).unwrap_or_else(|| xml::ErrorReply {
            message: text.chars().take(MAX_ERROR_TEXT).collect(),
            ..xml::ErrorReply::default()
        });
        if let Some(redirect) = crate::upload::http::redirect(status, &headers) {
            reply.message = match reply.code.is_empty() {
                true => redirect,
                false => format!("{} ({redirect})", reply.message),
            };
        }
        let corrected = self.learn(status, &reply, &headers, signed).await;
        let denied = reply.code == "AccessDenied";
        let mut error = self.error(call.named(), status, reply, &headers, call.on_session);
        if let BackendError::Status { class, message, .. } = &mut error {
            if corrected {
                *class = ErrorClass::Transient;
            }
            if denied {
                message.push_str(&format!(" ({})", super::permission::hint(call)));
            }
        }
        error
    }

    /// A refusal as a `BackendError` (also for an `<Error>` in a 200 reply).
    pub fn error(
        &self,
        operation: Request,
        status: u16,
        reply: xml::ErrorReply,
        headers: &reqwest::header::HeaderMap,
        on_session: bool,
    ) -> BackendError {
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let retry_after = crate::upload::http::retry_after(headers, now_ms);
        let (class, rejection) = meaning(status, &reply.code, on_session);
        let message = match reply.code.as_str() {
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" if reply.message.is_empty() => {
                "the access key or its secret is wrong (check access_key_id and \
                 secret_access_key_file, or the profile)"
                    .to_string()
            }
            _ => reply.message,
        };
        let code = match reply.code.is_empty() {
            true => status_word(status).to_string(),
            false => reply.code,
        };
        BackendError::Status {
            operation,
            endpoint: self.endpoint.clone(),
            status,
            code: code.into(),
            message,
            retry_after,
            class,
            rejection,
        }
    }

    /// Learns what a refusal of a request signed as `signed` says of our clock, keys and
    /// region; whether the clock or the region it was signed with was wrong, so that the retry,
    /// signed by the server's clock and for the bucket's region, succeeds.
    async fn learn(
        &self,
        status: u16,
        reply: &xml::ErrorReply,
        headers: &reqwest::header::HeaderMap,
        signed: &Signing,
    ) -> bool {
        let code = reply.code.as_str();
        if matches!(code, "ExpiredToken" | "TokenRefreshRequired") {
            self.credentials.expire().await;
        }
        let clock = self.learn_skew(status, code, headers, signed.skew_ms);
        let named = header_text(headers, "x-amz-bucket-region").or(reply.region.as_deref());
        let Some(learned) = bucket_region(status, code, named, &signed.region) else {
            return clock;
        };
        let mut region = self.region.write().expect("region lock is never poisoned");
        if *region != learned {
            tracing::warn!(endpoint = %self.endpoint, "the bucket is in region {learned:?}, not {:?}: signing for {learned:?} from now on (set region = {learned:?} to start so)", signed.region);
            *region = learned;
        }
        true
    }

    /// Learns the server's clock from a refusal's `Date`; whether the request was refused
    /// for a date `signed_skew_ms` had wrong (a retry dated by the learned clock gets past).
    fn learn_skew(
        &self,
        status: u16,
        code: &str,
        headers: &reqwest::header::HeaderMap,
        signed_skew_ms: i64,
    ) -> bool {
        let server = header_text(headers, DATE).and_then(httpdate);
        let now = jiff::Timestamp::now().as_millisecond();
        let Some(skew) = skew(status, code, server, now, signed_skew_ms) else {
            return false;
        };
        tracing::warn!(skew_ms = skew, endpoint = %self.endpoint, "the S3 server's clock differs from ours; signing by its clock");
        self.skew_ms.store(skew, Ordering::Relaxed);
        true
    }
}

/// The bucket's region, when a refusal says the request was signed for another: AWS's
/// `AuthorizationHeaderMalformed` (and Garage's) with `<Region>`, or a `PermanentRedirect` (301)
/// with `x-amz-bucket-region`. Only a plausible region name is taken: it goes into URLs.
fn bucket_region(status: u16, code: &str, named: Option<&str>, signed: &str) -> Option<String> {
    let wrong_region = matches!(code, "AuthorizationHeaderMalformed" | "PermanentRedirect");
    let named = named?.trim();
    let plausible = (1..=64).contains(&named.len())
        && named
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ((wrong_region || status == 301) && plausible && named != signed).then(|| named.to_string())
}

/// The server's clock minus ours, in milliseconds, when a refusal says the request's date
/// (our clock corrected by `signed_skew_ms`) was off: S3's `RequestTimeTooSkewed`, or a
/// refusal a misdated signature gets whose `Date` is a minute or more from that date: any 403
/// (s3s's "AccessDenied: Request has expired", others' `SignatureDoesNotMatch`) or Garage's
/// "400 InvalidRequest: Date is too old". Such a refusal of a request already dated by the
/// server's clock is not about the date.
fn skew(
    status: u16,
    code: &str,
    server_ms: Option<i64>,
    now_ms: i64,
    signed_skew_ms: i64,
) -> Option<i64> {
    let skew = server_ms? - now_ms;
    let told = code == "RequestTimeTooSkewed";
    let for_a_date = status == 403 || (status == 400 && code == "InvalidRequest");
    let misdated = (skew - signed_skew_ms).abs() >= SKEW_THRESHOLD_MS;
    (told || (for_a_date && misdated)).then_some(skew)
}

fn status_word(status: u16) -> &'static str {
    match status {
        301 => "MovedPermanently",
        302 => "Found",
        303 => "SeeOther",
        307 => "TemporaryRedirect",
        308 => "PermanentRedirect",
        400 => "BadRequest",
        403 => "Forbidden",
        404 => "NotFound",
        _ => "Error",
    }
}

/// What an S3 refusal means: retry, start over, or stop, and the refusals the engine acts on.
/// By code first (S3 reuses statuses: a 404 is a missing bucket or a missing upload), then by
/// status.
pub fn meaning(status: u16, code: &str, on_session: bool) -> (ErrorClass, Option<Rejection>) {
    use ErrorClass::{Permanent, SessionGone, Transient};
    match code {
        // Busy, failing, or slow to receive; a checksum that failed means the bytes were
        // damaged on the way (or the file changed: the next attempt reads it again).
        "SlowDown"
        | "InternalError"
        | "ServiceUnavailable"
        | "RequestTimeout"
        | "OperationAborted"
        | "BadDigest"
        | "XAmzContentSHA256Mismatch" => (Transient, None),
        // Corrected before the retry (`Requester::learn`).
        "RequestTimeTooSkewed" | "ExpiredToken" | "TokenRefreshRequired" => (Transient, None),
        "NoSuchUpload" => (SessionGone, None),
        // Ceph RGW 16.2 answers so a ListParts of an upload it no longer knows.
        "NoSuchKey" if on_session => (SessionGone, None),
        // Some servers (s3s-fs) answer so for an upload they no longer know; the keys that
        // created the upload cannot otherwise lose the right to add to it.
        "AccessDenied" if on_session => (SessionGone, None),
        "InvalidPart" | "InvalidPartOrder" => (Permanent, Some(Rejection::ManifestMismatch)),
        "EntityTooSmall" => (Permanent, Some(Rejection::PartTooSmall)),
        "NoSuchBucket"
        | "AccessDenied"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "AllAccessDisabled"
        | "InvalidBucketName"
        | "EntityTooLarge" => (Permanent, None),
        _ => (classify_status(status, on_session && code.is_empty()), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_refusals_mean_what_the_engine_needs() {
        use ErrorClass::{Permanent, SessionGone, Transient};
        let cases = [
            (503, "SlowDown", true, Transient, None),
            (500, "InternalError", true, Transient, None),
            (400, "RequestTimeout", true, Transient, None),
            (403, "RequestTimeTooSkewed", false, Transient, None),
            (400, "BadDigest", true, Transient, None),
            (404, "NoSuchUpload", true, SessionGone, None),
            (404, "NoSuchKey", true, SessionGone, None),
            (404, "NoSuchKey", false, Permanent, None),
            (404, "NoSuchBucket", true, Permanent, None),
            (404, "", true, SessionGone, None),
            (404, "", false, Permanent, None),
            (
                400,
                "InvalidPart",
                true,
                Permanent,
                Some(Rejection::ManifestMismatch),
            ),
            (
                400,
                "InvalidPartOrder",
                true,
                Permanent,
                Some(Rejection::ManifestMismatch),
            ),
            (
                400,
                "EntityTooSmall",
                true,
                Permanent,
                Some(Rejection::PartTooSmall),
            ),
            (403, "InvalidAccessKeyId", false, Permanent, None),
            (403, "SignatureDoesNotMatch", false, Permanent, None),
            (403, "AccessDenied", false, Permanent, None),
            (403, "AccessDenied", true, SessionGone, None),
            (502, "", false, Transient, None),
            (501, "NotImplemented", false, Permanent, None),
        ];
        for (status, code, on_session, class, rejection) in cases {
            assert_eq!(
                meaning(status, code, on_session),
                (class, rejection),
                "{status} {code:?} on_session={on_session}"
            );
        }
    }

    #[test]
    fn a_clock_is_corrected_only_when_a_refusal_says_it_is_off() {
        let (now, minute) = (1_000_000_000, 60_000);
        // (status, code, the server's Date, the correction the request was signed with,
        // the server's clock minus ours learned).
        let cases = [
            (
                403,
                "RequestTimeTooSkewed",
                Some(now + 20 * minute),
                0,
                Some(20 * minute),
            ),
            (403, "RequestTimeTooSkewed", Some(now + 10), 0, Some(10)),
            (
                403,
                "AccessDenied",
                Some(now - 16 * minute),
                0,
                Some(-16 * minute),
            ),
            (403, "AccessDenied", Some(now + 5_000), 0, None),
            // Signed with the correction a refusal just taught: the 403 is for something else.
            (
                403,
                "AccessDenied",
                Some(now - 16 * minute),
                -16 * minute,
                None,
            ),
            (
                403,
                "SignatureDoesNotMatch",
                Some(now + 120 * minute),
                120 * minute - 5_000,
                None,
            ),
            // Signed before the correction was learned: refused for its date.
            (
                403,
                "AccessDenied",
                Some(now + 120 * minute),
                0,
                Some(120 * minute),
            ),
            // The server's clock jumped since the correction.
            (403, "AccessDenied", Some(now), 30 * minute, Some(0)),
            // Garage's refusal of a date older than the signature's lifetime.
            (
                400,
                "InvalidRequest",
                Some(now + 120 * minute),
                0,
                Some(120 * minute),
            ),
            (
                400,
                "InvalidRequest",
                Some(now + 120 * minute),
                120 * minute,
                None,
            ),
            (400, "InvalidPart", Some(now + 120 * minute), 0, None),
            (404, "NoSuchKey", Some(now + 20 * minute), 0, None),
            (403, "RequestTimeTooSkewed", None, 0, None),
        ];
        for (status, code, server, signed, expected) in cases {
            assert_eq!(
                skew(status, code, server, now, signed),
                expected,
                "{status} {code} {server:?} {signed}"
            );
        }
    }

    #[test]
    fn a_region_is_learned_only_from_a_refusal_that_names_the_buckets() {
        let cases = [
            (
                400,
                "AuthorizationHeaderMalformed",
                Some("eu-west-1"),
                Some("eu-west-1"),
            ),
            (
                400,
                "AuthorizationHeaderMalformed",
                Some("garage"),
                Some("garage"),
            ),
            (
                301,
                "PermanentRedirect",
                Some("ap-south-2"),
                Some("ap-south-2"),
            ),
            (301, "", Some("eu-central-1"), Some("eu-central-1")),
            // Already signed for it: the refusal is something else.
            (400, "AuthorizationHeaderMalformed", Some("us-east-1"), None),
            (400, "AuthorizationHeaderMalformed", None, None),
            // Other refusals carry the header too, and say nothing of the region.
            (403, "AccessDenied", Some("eu-west-1"), None),
            (404, "NoSuchBucket", Some("eu-west-1"), None),
            // What goes into a URL must look like a region.
            (
                400,
                "AuthorizationHeaderMalformed",
                Some("evil.example/x"),
                None,
            ),
            (400, "AuthorizationHeaderMalformed", Some("EU-WEST-1"), None),
            (400, "AuthorizationHeaderMalformed", Some(""), None),
        ];
        for (status, code, named, expected) in cases {
            let learned = bucket_region(status, code, named, "us-east-1");
            assert_eq!(learned.as_deref(), expected, "{status} {code} {named:?}");
        }
    }
}
