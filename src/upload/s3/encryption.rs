//! Server-side encryption, as rclone names it (`server_side_encryption`, `sse_kms_key_id`):
//! the headers that ask for it on PutObject and CreateMultipartUpload (the parts of a
//! multipart upload inherit it), and whether the server's ETags stay MD5s under it.

/// How the server encrypts what Ferry stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encryption {
    /// `AES256`: keys the store manages (SSE-S3).
    Aes256,
    /// `aws:kms`, or `aws:kms:dsse` (two layers): a KMS key, the account's default when `None`.
    Kms { dsse: bool, key_id: Option<String> },
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

    /// The value of `server_side_encryption`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Encryption::Aes256 => "AES256",
            Encryption::Kms { dsse: false, .. } => "aws:kms",
            Encryption::Kms { dsse: true, .. } => "aws:kms:dsse",
        }
    }

    /// The request headers that ask for it.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("x-amz-server-side-encryption", self.algorithm().to_string())];
        if let Encryption::Kms {
            key_id: Some(key_id),
            ..
        } = self
        {
            let name = "x-amz-server-side-encryption-aws-kms-key-id";
            headers.push((name, key_id.clone()));
        }
        headers
    }

    /// What is wrong when a reply's `x-amz-server-side-encryption` (`named`) does not confirm
    /// this encryption, as AWS, MinIO and Ceph's gateway confirm what they apply: a server
    /// that does not support it may store the bytes unencrypted and say nothing. Only the
    /// algorithm is compared: AWS names a KMS key by its ARN whatever alias was asked for.
    pub fn unconfirmed(&self, named: Option<&str>) -> Option<String> {
        let asked = self.algorithm();
        match named {
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
    /// it is, under KMS it is not (AWS says so), so it cannot be checked against them.
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
            let found = asked.unconfirmed(named);
            match problem {
                None => assert_eq!(found, None, "{asked:?} {named:?}"),
                Some(part) => assert!(
                    found.as_deref().is_some_and(|found| found.contains(part)),
                    "{asked:?} {named:?}: {found:?}"
                ),
            }
        }
    }
}
