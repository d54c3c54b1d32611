//! Server-side encryption, as rclone names it (`server_side_encryption`, `sse_kms_key_id`,
//! and the customer's own key, SSE-C): the headers that ask for it on PutObject and
//! CreateMultipartUpload (the parts of a multipart upload inherit the first two; SSE-C's key
//! goes with every request that writes or reads the object's bytes), whether the server
//! confirmed it, and whether the server's ETags stay MD5s under it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::{Digest, Md5};
use reqwest::header::HeaderMap;

const ALGORITHM: &str = "x-amz-server-side-encryption";
const CUSTOMER_ALGORITHM: &str = "x-amz-server-side-encryption-customer-algorithm";
const CUSTOMER_KEY: &str = "x-amz-server-side-encryption-customer-key";
const CUSTOMER_KEY_MD5: &str = "x-amz-server-side-encryption-customer-key-md5";

/// How the server encrypts what Ferry stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encryption {
    /// `AES256`: keys the store manages (SSE-S3).
    Aes256,
    /// `aws:kms`, or `aws:kms:dsse` (two layers): a KMS key, the account's default when `None`.
    Kms { dsse: bool, key_id: Option<String> },
    /// AES256 under the customer's own key (SSE-C), which the server does not keep: the object
    /// can be read only with it.
    Customer(CustomerKey),
}

/// A customer's 256-bit key, as the request headers carry it (base64). Never shown: its MD5,
/// which the server sends back, names it.
#[derive(Clone, PartialEq, Eq)]
pub struct CustomerKey {
    base64: String,
    md5: String,
}

impl std::fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerKey")
            .field("md5", &self.md5)
            .finish()
    }
}

impl CustomerKey {
    /// The key in a key file: its 32 bytes as they are (`openssl rand 32`, what the AWS CLI's
    /// `--sse-c-key fileb://` reads), 32 characters with a trailing newline (rclone's
    /// `sse_customer_key`), or their base64 (`openssl rand -base64 32`, rclone's
    /// `sse_customer_key_base64`). The message never quotes the content.
    pub fn from_file(content: &[u8]) -> Result<CustomerKey, String> {
        let trimmed = content.trim_ascii();
        let key: Option<[u8; 32]> = match (content.len(), trimmed.len()) {
            (32, _) => content.try_into().ok(),
            (_, 32) => trimmed.try_into().ok(),
            _ => BASE64
                .decode(trimmed)
                .ok()
                .and_then(|key| key.try_into().ok()),
        };
        let key = key.ok_or_else(|| {
            format!(
                "holds {} bytes, not a 256-bit key: 32 bytes, or their base64 (44 characters, \
                 as `openssl rand -base64 32` writes)",
                content.len()
            )
        })?;
        Ok(CustomerKey {
            base64: BASE64.encode(key),
            md5: BASE64.encode(Md5::digest(key)),
        })
    }

    /// The base64 of the key's MD5: how S3 names the key in replies.
    pub fn md5(&self) -> &str {
        &self.md5
    }

    /// What is wrong when a reply's customer algorithm and key MD5 do not confirm this key.
    fn unconfirmed(&self, algorithm: Option<&str>, md5: Option<&str>) -> Option<String> {
        match (algorithm, md5) {
            (Some("AES256"), Some(md5)) if md5 == self.md5 => None,
            (Some("AES256"), Some(md5)) => Some(format!(
                "the server confirmed another customer key (MD5 {md5}), not this one ({})",
                self.md5
            )),
            (Some(other), _) if other != "AES256" => Some(format!(
                "the server applied customer-key encryption {other:?}, not the \"AES256\" asked for"
            )),
            _ => Some(
                "the server did not confirm the customer-key encryption asked for (SSE-C): it \
                 may not support it (moto and s3s-fs ignore it)"
                    .into(),
            ),
        }
    }
}

impl Encryption {
    /// `server_side_encryption` and `sse_kms_key_id`, checked together.
    pub fn parse(algorithm: &str, key_id: Option<String>) -> Result<Encryption, String> {
        let dsse = match algorithm {
            "AES256" if key_id.is_some() => {
                return Err("sse_kms_key_id goes with \"aws:kms\", not \"AES256\"".into());
            }
            "AES256" => return Ok(Encryption::Aes256),
            "aws:kms" => false,
            "aws:kms:dsse" => true,
            other => {
                return Err(format!(
                    "unknown server_side_encryption {other:?}; use \"AES256\", \"aws:kms\" or \
                     \"aws:kms:dsse\""
                ));
            }
        };
        if key_id.as_deref().is_some_and(str::is_empty) {
            return Err("sse_kms_key_id is empty".into());
        }
        Ok(Encryption::Kms { dsse, key_id })
    }

    /// The value of `server_side_encryption`; SSE-C's algorithm is AES256 as well.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Encryption::Aes256 | Encryption::Customer(_) => "AES256",
            Encryption::Kms { dsse: false, .. } => "aws:kms",
            Encryption::Kms { dsse: true, .. } => "aws:kms:dsse",
        }
    }

    /// How messages name it.
    pub fn name(&self) -> &'static str {
        match self {
            Encryption::Customer(_) => "SSE-C",
            other => other.algorithm(),
        }
    }

    /// The request headers that ask for it, on PutObject and CreateMultipartUpload.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let key_id = match self {
            Encryption::Customer(_) => return self.key_headers(),
            Encryption::Kms { key_id, .. } => key_id.as_ref(),
            Encryption::Aes256 => None,
        };
        let mut headers = vec![(ALGORITHM, self.algorithm().to_string())];
        if let Some(key_id) = key_id {
            let name = "x-amz-server-side-encryption-aws-kms-key-id";
            headers.push((name, key_id.clone()));
        }
        headers
    }

    /// The headers of every other request that writes or reads the object's bytes (UploadPart,
    /// CompleteMultipartUpload, HEAD): SSE-C's key, which the server does not keep; none for
    /// the others.
    pub fn key_headers(&self) -> Vec<(&'static str, String)> {
        let Encryption::Customer(key) = self else {
            return Vec::new();
        };
        vec![
            (CUSTOMER_ALGORITHM, "AES256".into()),
            (CUSTOMER_KEY, key.base64.clone()),
            (CUSTOMER_KEY_MD5, key.md5.clone()),
        ]
    }

    /// What is wrong when a reply does not confirm this encryption, as AWS, MinIO, Garage and
    /// Ceph's gateway confirm what they apply: a server that does not support it may store
    /// the bytes unencrypted and say nothing. Only the algorithm is compared, and for SSE-C
    /// the key's MD5: AWS names a KMS key by its ARN whatever alias was asked for.
    pub fn unconfirmed(&self, reply: &HeaderMap) -> Option<String> {
        let header = |name: &str| reply.get(name).and_then(|value| value.to_str().ok());
        if let Encryption::Customer(key) = self {
            return key.unconfirmed(header(CUSTOMER_ALGORITHM), header(CUSTOMER_KEY_MD5));
        }
        let asked = self.algorithm();
        match header(ALGORITHM) {
            Some(named) if named == asked => None,
            Some(named) => Some(format!(
                "the server applied server-side encryption {named:?}, not the {asked:?} asked for"
            )),
            None => Some(format!(
                "the server did not confirm the server-side encryption asked for ({asked}): it \
                 may not support it (Ceph RGW 16 ignores AES256, s3s-fs ignores both)"
            )),
        }
    }

    /// Whether the ETag of a part or object so encrypted is the MD5 of its bytes: under SSE-S3
    /// it is; under KMS and SSE-C it is not (AWS says so; Garage's are random under SSE-C), so
    /// it cannot be checked against them.
    pub fn etag_is_md5(&self) -> bool {
        matches!(self, Encryption::Aes256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_headers_and_bad_ones_are_refused() {
        let kms = |dsse, key: Option<&str>| Encryption::Kms {
            dsse,
            key_id: key.map(str::to_owned),
        };
        let cases: [(&str, Option<&str>, Result<Encryption, &str>); 7] = [
            ("AES256", None, Ok(Encryption::Aes256)),
            ("aws:kms", None, Ok(kms(false, None))),
            (
                "aws:kms",
                Some("alias/ferry"),
                Ok(kms(false, Some("alias/ferry"))),
            ),
            ("aws:kms:dsse", None, Ok(kms(true, None))),
            ("AES256", Some("alias/ferry"), Err("goes with \"aws:kms\"")),
            ("aws:kms", Some(""), Err("is empty")),
            (
                "aes256",
                None,
                Err("unknown server_side_encryption \"aes256\""),
            ),
        ];
        for (algorithm, key, expected) in cases {
            let parsed = Encryption::parse(algorithm, key.map(str::to_owned));
            match (parsed, expected) {
                (Ok(found), Ok(wanted)) => assert_eq!(found, wanted),
                (Err(found), Err(wanted)) => assert!(found.contains(wanted), "{found}"),
                (found, wanted) => panic!("{algorithm} {key:?}: {found:?}, not {wanted:?}"),
            }
        }
        assert_eq!(
            kms(false, Some("k")).headers(),
            [
                ("x-amz-server-side-encryption", "aws:kms".to_string()),
                ("x-amz-server-side-encryption-aws-kms-key-id", "k".into())
            ]
        );
        assert!(Encryption::Aes256.etag_is_md5());
        assert!(!kms(true, None).etag_is_md5());
    }

    #[test]
    fn only_a_reply_naming_the_algorithm_asked_for_confirms_it() {
        let kms = Encryption::Kms {
            dsse: false,
            key_id: Some("alias/ferry".into()),
        };
        let cases: [(&Encryption, Option<&str>, Option<&str>); 6] = [
            (&Encryption::Aes256, Some("AES256"), None),
            (&Encryption::Aes256, None, Some("did not confirm")),
            (
                &Encryption::Aes256,
                Some("aws:kms"),
                Some("\"aws:kms\", not the \"AES256\""),
            ),
            (&kms, Some("aws:kms"), None),
            (
                &kms,
                Some("aws:kms:dsse"),
                Some("not the \"aws:kms\" asked for"),
            ),
            (&kms, None, Some("(aws:kms)")),
        ];
        for (asked, named, problem) in cases {
            let found = asked.unconfirmed(&reply(&[(ALGORITHM, named)]));
            match problem {
                None => assert_eq!(found, None, "{asked:?} {named:?}"),
                Some(part) => assert!(
                    found.as_deref().is_some_and(|found| found.contains(part)),
                    "{asked:?} {named:?}: {found:?}"
                ),
            }
        }
    }

    /// A reply with these headers (those `None` left out).
    fn reply(headers: &[(&'static str, Option<&str>)]) -> HeaderMap {
        let given = headers
            .iter()
            .filter_map(|(name, value)| Some((*name, (*value)?)));
        given
            .map(|(name, value)| (name.parse().unwrap(), value.parse().unwrap()))
            .collect()
    }

    #[test]
    fn a_customer_key_is_read_raw_or_as_base64_and_anything_else_is_refused() {
        let raw = [7u8; 32];
        let encoded = BASE64.encode(raw);
        let mut with_newline = raw.to_vec();
        with_newline.push(b'\n');
        let encoded_line = format!("{encoded}\n");
        let short = BASE64.encode([7u8; 31]);
        let cases: [(&[u8], bool); 7] = [
            (&raw, true),
            (encoded.as_bytes(), true),
            (encoded_line.as_bytes(), true),
            (&with_newline, true),
            (&raw[..31], false),
            (short.as_bytes(), false),
            (b"not a key at all, just some words", false),
        ];
        for (content, accepted) in cases {
            match (CustomerKey::from_file(content), accepted) {
                (Ok(key), true) => assert_eq!(key.base64, encoded),
                (Err(message), false) => {
                    let size = format!("holds {} bytes", content.len());
                    assert!(message.starts_with(&size), "{message}");
                }
                (found, _) => panic!("{} bytes: {found:?}", content.len()),
            }
        }
        let key = CustomerKey::from_file(&raw).unwrap();
        // base64(MD5(32 bytes of 7)), as Python's hashlib and base64 give it.
        assert_eq!(key.md5(), "y4HAEFCYWuvAXWFTtA1Qpg==");
        assert!(!format!("{key:?}").contains(&encoded), "{key:?}");
        let customer = Encryption::Customer(key);
        let names: Vec<&str> = customer.key_headers().iter().map(|h| h.0).collect();
        assert_eq!(names, [CUSTOMER_ALGORITHM, CUSTOMER_KEY, CUSTOMER_KEY_MD5]);
        assert_eq!(customer.headers(), customer.key_headers());
        assert!(!customer.etag_is_md5());
        assert!(Encryption::Aes256.key_headers().is_empty());
    }

    #[test]
    fn only_a_reply_naming_the_customer_algorithm_and_key_confirms_it() {
        let key = CustomerKey::from_file(&[7u8; 32]).unwrap();
        let ours = key.md5().to_string();
        let other = CustomerKey::from_file(&[8u8; 32])
            .unwrap()
            .md5()
            .to_string();
        let cases: [(Option<&str>, Option<&str>, Option<&str>); 6] = [
            (Some("AES256"), Some(&ours), None),
            (Some("AES256"), Some(&other), Some("another customer key")),
            (Some("aws:kms"), Some(&ours), Some("not the \"AES256\"")),
            (Some("AES256"), None, Some("did not confirm")),
            (None, Some(&ours), Some("did not confirm")),
            (None, None, Some("(SSE-C)")),
        ];
        let customer = Encryption::Customer(key);
        for (algorithm, md5, problem) in cases {
            let headers = [(CUSTOMER_ALGORITHM, algorithm), (CUSTOMER_KEY_MD5, md5)];
            let found = customer.unconfirmed(&reply(&headers));
            match problem {
                None => assert_eq!(found, None, "{algorithm:?} {md5:?}"),
                Some(part) => assert!(
                    found.as_deref().is_some_and(|found| found.contains(part)),
                    "{algorithm:?} {md5:?}: {found:?}"
                ),
            }
        }
        // A reply confirming SSE-S3 does not confirm SSE-C.
        let sse_s3 = reply(&[(ALGORITHM, Some("AES256"))]);
        assert!(customer.unconfirmed(&sse_s3).is_some());
    }
}
