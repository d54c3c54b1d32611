//! How every HTTP client of Ferry is built: which servers it trusts, and which go through a
//! proxy.
//!
//! Trust: the system's CA certificates (as `rustls-platform-verifier` finds them, so
//! `SSL_CERT_FILE` and `SSL_CERT_DIR` work) plus a remote's own `ca_cert` bundle, for MinIO,
//! Ceph or a receiver behind a private CA (rclone's `--ca-cert`, the AWS CLI's
//! `AWS_CA_BUNDLE`), read once per client at its first TLS handshake, so a client that speaks
//! only plain HTTP never spends the milliseconds they take. A machine without CA certificates
//! (a minimal container without `ca-certificates`) can still use plain-HTTP remotes and
//! remotes with a `ca_cert`: each TLS handshake then fails with a message saying what is
//! missing, instead of the client failing to build at all. A server certificate that is not
//! trusted is not retried (`untrusted`): it will not become trusted by waiting, and the
//! message says how to fix it.
//!
//! Proxies: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, as reqwest reads them,
//! except for a remote on a loopback address or `localhost` (the embedded receiver, a local
//! MinIO), which is always reached directly, as Go's HTTP client does: no proxy can reach it.
//!
//! Redirects are not followed (`redirect`). Following one turns a POST into a GET (a 301 or
//! 302: a webhook "delivered" to a page that never saw the document, an S3
//! CreateMultipartUpload answered as a GetObject), cannot send a streamed part again, and
//! takes a signature made for one host to another. A redirect is a failure that names the
//! address to configure instead.
//!
//! Replies: a header's text (`header_text`) and `Retry-After` (`retry_after`), read the same
//! way by both backends, and a body read to at most `MAX_REPLY_BYTES` (`body`), so a broken or
//! hostile server cannot make Ferry hold an endless one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::header::{AsHeaderName, HeaderMap, LOCATION, RETRY_AFTER};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// The most of a reply's body that is read: far above any reply Ferry needs (a page of 1,000
/// listed parts is about 300 KiB).
pub const MAX_REPLY_BYTES: usize = 8 << 20;

/// Why a reply's body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the reply's body was cut off")]
    Transport(#[source] reqwest::Error),
    #[error("the reply's body is over {} MiB", MAX_REPLY_BYTES >> 20)]
    TooLarge,
}

/// A reply's body, chunk by chunk as it arrives, refused once it is over `MAX_REPLY_BYTES`
/// (or says it will be), before more of it is held.
pub async fn body(mut response: reqwest::Response) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > MAX_REPLY_BYTES as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error reply's body as text, for its message: empty when it cannot be read or is too large.
pub async fn error_text(response: reqwest::Response) -> String {
    let body = body(response).await.unwrap_or_default();
    String::from_utf8_lossy(&body).into_owned()
}

/// The text of header `name` in a reply, if it is there and is text.
pub fn header_text(headers: &HeaderMap, name: impl AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// What a redirect reply (`status`, `headers`) says, for its message: where it points,
/// without the query (which may repeat our signature). `None` for any other reply, and for a
/// redirect that names no place (AWS's 301 `PermanentRedirect` names the region instead).
pub fn redirect(status: u16, headers: &HeaderMap) -> Option<String> {
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = header_text(headers, LOCATION)?;
    let place = location.split(['?', '#']).next().unwrap_or_default();
    Some(format!(
        "redirected to {}; redirects are not followed: configure that address",
        crate::redact::url(place)
    ))
}

/// The wait a reply's `Retry-After` asks for at `now_ms` (milliseconds since the epoch): in
/// seconds, as servers send it with 429 and 503, or until an HTTP date, as a proxy in front
/// may send it (none once the date has passed).
pub fn retry_after(headers: &HeaderMap, now_ms: i64) -> Option<Duration> {
    let text = header_text(headers, RETRY_AFTER)?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let until = httpdate(text)?;
    Some(Duration::from_millis(
        until.saturating_sub(now_ms).max(0) as u64
    ))
}

/// An HTTP date (`Tue, 15 Nov 1994 08:12:31 GMT`) in milliseconds since the epoch.
pub fn httpdate(text: &str) -> Option<i64> {
    let parsed = jiff::fmt::rfc2822::parse(text).ok()?;
    Some(parsed.timestamp().as_millisecond())
}

/// The CA certificates of a remote's `ca_cert` file, trusted beside the system's.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCert {
    pub path: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
    /// The environment variable that named the file (`AWS_CA_BUNDLE`), when no key did.
    pub from_env: Option<&'static str>,
}

impl std::fmt::Debug for CaCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} certificates)",
            self.path.display(),
            self.certs.len()
        )
    }
}

/// A `ca_cert` file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaCertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a PEM certificate bundle: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("{path} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")")]
    Empty { path: PathBuf },
}

impl CaCert {
    /// Reads the PEM bundle at `path` and checks each certificate can be a trust anchor.
    /// Blocking.
    pub fn read(path: &Path) -> Result<CaCert, CaCertError> {
        let text = std::fs::read(path).map_err(|source| CaCertError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |problem: String| CaCertError::Invalid {
            path: path.to_path_buf(),
            problem,
        };
        let certs = CertificateDer::pem_slice_iter(&text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| invalid(error.to_string()))?;
        if certs.is_empty() {
            return Err(CaCertError::Empty {
                path: path.to_path_buf(),
            });
        }
        let mut store = rustls::RootCertStore::empty();
        for cert in &certs {
            store
                .add(cert.clone())
                .map_err(|error| invalid(error.to_string()))?;
        }
        Ok(CaCert {
            path: path.to_path_buf(),
            certs,
            from_env: None,
        })
    }
}

/// A reqwest client builder that trusts the system's CA certificates and `ca_cert`'s, for
/// requests to `endpoint` (or to many places, when `None`).
pub fn client_builder(ca_cert: Option<&CaCert>, endpoint: Option<&str>) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(ca_cert))
        .redirect(reqwest::redirect::Policy::none());
    match endpoint.is_some_and(is_loopback) {
        true => builder.no_proxy(),
        false => builder,
    }
}

/// Whether `url` names a loopback address or `localhost`.
fn is_loopback(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        None => false,
    }
}

/// The TLS settings behind `client_builder`: ring, TLS 1.2 and 1.3, and the verifier.
fn client_config(ca_cert: Option<&CaCert>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AtFirstUse {
        extra: ca_cert.map(|ca| ca.certs.clone()).unwrap_or_default(),
        provider: provider.clone(),
        built: OnceLock::new(),
    });
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

/// Why every server certificate is refused on a machine without CA certificates.
const NO_CA_CERTIFICATES: &str = "the system has no CA certificates (install the \
                                  ca-certificates package), and none were given with ca_cert \
                                  or --ca-cert";

/// The verifier of the system's CA certificates and `extra`, built at the first certificate
/// it checks: finding and parsing the system's certificates costs milliseconds that a client
/// speaking only plain HTTP (to a local MinIO, or a credential client a secret file makes
/// unneeded) need not spend. Without any CA certificates, every server certificate is refused
/// saying why. Signatures are checked with the provider's algorithms, as the platform
/// verifier checks them.
#[derive(Debug)]
struct AtFirstUse {
    extra: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
    /// `None` when there are no CA certificates at all.
    built: OnceLock<Option<rustls_platform_verifier::Verifier>>,
}

impl AtFirstUse {
    fn verifier(&self) -> Option<&rustls_platform_verifier::Verifier> {
        let build = || {
            let (extra, provider) = (self.extra.clone(), self.provider.clone());
            match rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider) {
                Ok(verifier) => Some(verifier),
                Err(error) => {
                    tracing::debug!(%error, "no CA certificates: every TLS handshake will fail");
                    None
                }
            }
        };
        self.built.get_or_init(build).as_ref()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Problem(&'static str);

impl ServerCertVerifier for AtFirstUse {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(verifier) = self.verifier() else {
            let problem = rustls::OtherError(Arc::new(Problem(NO_CA_CERTIFICATES)));
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                problem,
            )));
        };
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why the server's certificate was refused, when that is why `error` happened.
pub fn untrusted(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(rustls::Error::InvalidCertificate(problem)) = unwrapped(error).downcast_ref() {
            return Some(describe(problem));
        }
        next = error.source();
    }
    None
}

/// What `error` wraps, when it is an `io::Error` (or several, one in another): their
/// `source` skips the error they carry, where the TLS error sits.
fn unwrapped<'a>(
    mut error: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    while let Some(inner) = error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
    {
        error = inner;
    }
    error
}

/// A refused certificate in words, with what to do about the usual causes.
fn describe(problem: &CertificateError) -> String {
    match problem {
        CertificateError::UnknownIssuer => "it is signed by a CA this machine does not trust \
             (name the CA's certificate with ca_cert, or --ca-cert)"
            .into(),
        // Ours (`NoTrustedRoots`), and the verifier's own, shown as themselves.
        CertificateError::Other(other) => other.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A redirect names where it points, without its query and with no credentials; a reply
    /// that is no redirect, or names no place, says nothing.
    #[test]
    fn a_redirect_names_where_it_points_and_nothing_secret() {
        let said = |place: &str| {
            format!("redirected to {place}; redirects are not followed: configure that address")
        };
        let cases = [
            (
                301,
                Some("https://s3.example/b/k"),
                Some(said("https://s3.example/b/k")),
            ),
            (
                307,
                Some("https://s3.example/b/k?X-Amz-Signature=abc#f"),
                Some(said("https://s3.example/b/k")),
            ),
            (
                308,
                Some("https://user:pass@hooks.example/in"),
                Some(said("https://REDACTED@hooks.example/in")),
            ),
            (302, Some("/elsewhere"), Some(said("/elsewhere"))),
            (303, Some("http://h/x"), Some(said("http://h/x"))),
            (301, None, None),
            (304, Some("http://h/x"), None),
            (200, Some("http://h/x"), None),
        ];
        for (status, location, expected) in cases {
            let mut headers = HeaderMap::new();
            if let Some(location) = location {
                headers.insert(LOCATION, location.parse().unwrap());
            }
            assert_eq!(
                redirect(status, &headers),
                expected,
                "{status} {location:?}"
            );
        }
    }

    /// `Retry-After` in seconds, or until an HTTP date, is the wait asked for (none for a
    /// date gone by); anything else asks for none.
    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date() {
        let now_ms = 784_887_151_000; // Tue, 15 Nov 1994 08:12:31 GMT
        let cases: [(Option<&[u8]>, Option<u64>); 8] = [
            (Some(b"5"), Some(5_000)),
            (Some(b" 7 "), Some(7_000)),
            (Some(b"Tue, 15 Nov 1994 08:12:41 GMT"), Some(10_000)),
            (Some(b"Tue, 15 Nov 1994 08:12:31 GMT"), Some(0)),
            (Some(b"Tue, 15 Nov 1994 08:00:00 GMT"), Some(0)),
            (Some(b"soon"), None),
            (Some(b"\xff"), None),
            (None, None),
        ];
        for (value, expected) in cases {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                let value = reqwest::header::HeaderValue::from_bytes(value).unwrap();
                headers.insert(RETRY_AFTER, value);
            }
            let wait = retry_after(&headers, now_ms);
            assert_eq!(wait, expected.map(Duration::from_millis), "{value:?}");
        }
    }

    #[test]
    fn http_dates_are_read() {
        assert_eq!(
            httpdate("Tue, 15 Nov 1994 08:12:31 GMT"),
            Some(784_887_151_000)
        );
        assert_eq!(httpdate("yesterday"), None);
    }

    #[test]
    fn a_ca_cert_file_must_hold_certificates_that_can_be_trust_anchors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = CaCert::read(&missing).unwrap_err().to_string();
        assert!(
            error.starts_with("cannot read ") && error.contains("missing.pem"),
            "{error}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "just text\n").unwrap();
        let error = CaCert::read(&empty).unwrap_err().to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");

        let garbage = dir.path().join("garbage.pem");
        let body = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(&garbage, body).unwrap();
        let error = CaCert::read(&garbage).unwrap_err().to_string();
        assert!(error.contains("is not a PEM certificate bundle"), "{error}");
    }

    #[test]
    fn loopback_endpoints_are_told_apart() {
        let cases = [
            ("http://127.0.0.1:7373", true),
            ("http://127.1.2.3", true),
            ("http://[::1]:9000", true),
            ("https://localhost:9000/bucket", true),
            ("http://LOCALHOST.", true),
            ("http://minio.localhost", true),
            ("https://minio.internal:9000", false),
            ("http://10.0.0.1", false),
            ("https://s3.eu-west-1.amazonaws.com", false),
            ("not a url", false),
        ];
        for (url, loopback) in cases {
            assert_eq!(is_loopback(url), loopback, "{url}");
        }
    }

    #[test]
    fn an_untrusted_certificate_is_found_inside_the_error_chain() {
        let refused = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        // As hyper's connector hands it on: an io::Error in an io::Error.
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, refused);
        let io = std::io::Error::other(io);
        let found = untrusted(&io).unwrap();
        assert!(found.contains("ca_cert"), "{found}");
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(untrusted(&other), None);
    }
}
