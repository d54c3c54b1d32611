//! The session id Ferry records for a multipart upload: the nonce kept in the object's metadata
//! (`x-amz-meta-ferry-session`), the checksum the upload was opened with, and the server's
//! UploadId: `{nonce}.{checksum}:{upload_id}`.
//!
//! The checksum belongs to the upload, not to the process: an upload opened with
//! `x-amz-checksum-algorithm: CRC32C` wants every part's CRC32C, and one opened without it
//! (the server ignored CRC32C, or `checksum = "md5"`) is checked by its parts' MD5. A process
//! that resumes the upload after a restart has not seen the server's reply to its create, so
//! it reads the checksum here. Ids recorded before the checksum was kept
//! (`{nonce}:{upload_id}`) have none: their parts carry what the remote uses now.

use super::checksum::Checksum;

/// A recorded S3 session id, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId<'a> {
    /// The nonce the object's metadata names once this session wrote it.
    pub nonce: &'a str,
    /// The checksum the upload was opened with; `None` in ids recorded before it was kept.
    pub checksum: Option<Checksum>,
    pub upload_id: &'a str,
}

impl<'a> SessionId<'a> {
    /// Splits a recorded id at its first colon (an UploadId may hold colons, a nonce not);
    /// `None` when it is not an S3 session id.
    pub fn parse(id: &'a str) -> Option<SessionId<'a>> {
        let (head, upload_id) = id.split_once(':')?;
        let (nonce, checksum) = match head.split_once('.') {
            Some((nonce, checksum)) => (nonce, Some(checksum.parse().ok()?)),
            None => (head, None),
        };
        let usable = !nonce.is_empty() && !upload_id.is_empty();
        usable.then_some(SessionId {
            nonce,
            checksum,
            upload_id,
        })
    }

    /// The id to record for the upload `upload_id`, opened with `checksum`.
    pub fn format(nonce: &str, checksum: Checksum, upload_id: &str) -> String {
        format!("{nonce}.{checksum}:{upload_id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_split_into_nonce_checksum_and_upload_id() {
        let id = |nonce, checksum, upload_id| {
            Some(SessionId {
                nonce,
                checksum,
                upload_id,
            })
        };
        let md5 = Some(Checksum::Md5);
        let table = [
            ("n1.md5:up", id("n1", md5, "up")),
            ("n1.crc32c:up", id("n1", Some(Checksum::Crc32c), "up")),
            ("n1.none:up", id("n1", Some(Checksum::None), "up")),
            // An UploadId with colons and dots (Ceph's `2~...`, some clones' ARNs).
            ("n1.md5:a:b.c", id("n1", md5, "a:b.c")),
            // Recorded before the checksum was kept.
            ("n1:up", id("n1", None, "up")),
            ("n1:a.b:c", id("n1", None, "a.b:c")),
            ("n1.sha1:up", None),
            ("n1.:up", None),
            (".md5:up", None),
            (":up", None),
            ("n1.md5:", None),
            ("up_1", None),
            ("", None),
        ];
        for (text, expected) in table {
            assert_eq!(SessionId::parse(text), expected, "{text:?}");
        }
    }

    #[test]
    fn a_formatted_id_parses_back() {
        for checksum in [Checksum::Crc32c, Checksum::Md5, Checksum::None] {
            let text = SessionId::format("0123abcd", checksum, "2~x:y");
            let parsed = SessionId::parse(&text).unwrap();
            assert_eq!(
                (parsed.nonce, parsed.checksum, parsed.upload_id),
                ("0123abcd", Some(checksum), "2~x:y")
            );
        }
    }
}
