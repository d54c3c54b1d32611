//! Which checksum the server checks each body against: the configured one, until a server is
//! seen to ignore CRC32C.
//!
//! A server without flexible checksums (Ceph RGW 16.2, s3s-fs for parts, older clones) takes
//! `x-amz-checksum-crc32c` without a word and stores whatever bytes arrived. A server that
//! checks it says so: it names the CRC32C back in its reply to a whole-file PUT, and the
//! algorithm back in its reply to a CreateMultipartUpload that asked for it (AWS documents
//! both; Garage and MinIO do both, s3s-fs only the first; moto names both back without
//! checking). So such a reply without it turns the remote over to `Content-MD5`, which
//! every S3 checks or answers with an ETag that is the MD5, for the rest of the process: the
//! body is sent again, the upload opened again. Replies to parts are no sign of their own:
//! a server that kept the algorithm at create checks each part. An upload's parts carry the
//! checksum it was opened with, which its recorded id keeps (`session.rs`), not the remote's
//! choice of the moment.

use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::upload::backend::{Operation, PartSums};

/// How parts are checked by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// `x-amz-checksum-crc32c` on every part and object (flexible checksums).
    Crc32c,
    /// `Content-MD5`: for servers without flexible checksums (older Ceph RGW, some clones).
    Md5,
    None,
}

impl std::str::FromStr for Checksum {
    type Err = String;

    fn from_str(text: &str) -> Result<Checksum, String> {
        match text {
            "crc32c" => Ok(Checksum::Crc32c),
            "md5" => Ok(Checksum::Md5),
            "none" => Ok(Checksum::None),
            other => Err(format!(
                "unknown checksum {other:?}; use \"crc32c\", \"md5\" or \"none\""
            )),
        }
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Checksum::Crc32c => "crc32c",
            Checksum::Md5 => "md5",
            Checksum::None => "none",
        })
    }
}

/// The checksum in use for one remote: the configured one, or MD5 once the server was seen to
/// ignore CRC32C.
#[derive(Debug)]
pub(super) struct ChecksumChoice {
    configured: Checksum,
    crc_ignored: AtomicBool,
}

impl ChecksumChoice {
    pub(super) fn new(configured: Checksum) -> ChecksumChoice {
        ChecksumChoice {
            configured,
            crc_ignored: AtomicBool::new(false),
        }
    }

    /// The checksum the next body carries.
    pub(super) fn current(&self) -> Checksum {
        match self.crc_ignored.load(Ordering::Relaxed) {
            true => Checksum::Md5,
            false => self.configured,
        }
    }

    /// Whether the remote turned to MD5, the server seen to ignore CRC32C.
    pub(super) fn turned(&self) -> bool {
        self.crc_ignored.load(Ordering::Relaxed)
    }

    /// Takes note of the reply to `operation`, sent with `sent`. When it shows the server
    /// ignores CRC32C, bodies carry MD5 from then on.
    pub(super) fn note(&self, sent: Checksum, operation: Operation, named: bool) -> Noted {
        if !crc_ignored(sent, operation, named) {
            return Noted::Checked;
        }
        let first = !self.crc_ignored.swap(true, Ordering::Relaxed);
        Noted::CrcIgnored { first }
    }
}

/// What a reply showed about the checksum sent with the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Noted {
    /// Checked by the server, or nothing to tell.
    Checked,
    /// The server ignored the CRC32C; `first` the first time this remote showed it.
    CrcIgnored { first: bool },
}

/// The checksum a body carries: the one in use if the body has it. A body whose sums were
/// made before the remote turned to MD5 still carries its CRC32C.
pub(super) fn carried(current: Checksum, sums: PartSums) -> Checksum {
    match (current, sums.crc32c, sums.md5) {
        (Checksum::Md5, _, Some(_)) => Checksum::Md5,
        (Checksum::Md5 | Checksum::Crc32c, Some(_), _) => Checksum::Crc32c,
        _ => Checksum::None,
    }
}

/// Whether the reply to `operation`, sent with `sent`, shows that the server does not check
/// CRC32C: a whole-file PUT answered without `x-amz-checksum-crc32c`, or a
/// CreateMultipartUpload without `x-amz-checksum-algorithm` (`named`: the reply names it).
fn crc_ignored(sent: Checksum, operation: Operation, named: bool) -> bool {
    let telling = matches!(operation, Operation::PutFile | Operation::Create);
    sent == Checksum::Crc32c && telling && !named
}

pub(super) fn encode_crc32c(crc: u32) -> String {
    BASE64.encode(crc.to_be_bytes())
}

pub(super) fn decode_crc32c(text: &str) -> Option<u32> {
    let bytes = BASE64.decode(text.trim()).ok()?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_file_put_or_a_create_not_naming_crc32c_back_shows_it_is_ignored() {
        use Checksum as C;
        use Operation::{Complete, Create, PutFile, PutPart};
        let table = [
            (C::Crc32c, PutFile, false, true),
            (C::Crc32c, PutFile, true, false),
            // Ceph RGW 16.2 and s3s-fs open the upload without naming the algorithm back.
            (C::Crc32c, Create, false, true),
            (C::Crc32c, Create, true, false),
            // A part of an upload whose algorithm was named back is checked, named or not.
            (C::Crc32c, PutPart(1), false, false),
            (C::Crc32c, Complete, false, false),
            (C::Md5, PutFile, false, false),
            (C::Md5, Create, false, false),
            (C::None, PutFile, false, false),
            (C::None, Create, false, false),
        ];
        for (sent, operation, named, ignored) in table {
            assert_eq!(
                crc_ignored(sent, operation, named),
                ignored,
                "{sent} {operation} named={named}"
            );
        }
    }

    #[test]
    fn once_crc32c_is_seen_ignored_bodies_carry_md5() {
        let choice = ChecksumChoice::new(Checksum::Crc32c);
        let noted = |sent, operation| choice.note(sent, operation, false);
        assert_eq!(
            noted(Checksum::Crc32c, Operation::PutPart(2)),
            Noted::Checked
        );
        assert_eq!(choice.current(), Checksum::Crc32c);
        let first = Noted::CrcIgnored { first: true };
        assert_eq!(noted(Checksum::Crc32c, Operation::PutFile), first);
        assert_eq!(choice.current(), Checksum::Md5);
        // A body sent with the CRC32C it was summed with before the turn shows it again.
        let again = Noted::CrcIgnored { first: false };
        assert_eq!(noted(Checksum::Crc32c, Operation::PutFile), again);
        assert_eq!(noted(Checksum::Md5, Operation::PutFile), Noted::Checked);
        let none = ChecksumChoice::new(Checksum::None);
        assert_eq!(
            none.note(Checksum::None, Operation::PutFile, false),
            Noted::Checked
        );
        assert_eq!(none.current(), Checksum::None);
    }

    #[test]
    fn a_body_carries_the_checksum_in_use_if_it_has_it() {
        use Checksum as C;
        let sums = |crc32c: Option<u32>, md5: Option<[u8; 16]>| PartSums { crc32c, md5 };
        let table = [
            (C::Crc32c, sums(Some(7), None), C::Crc32c),
            (C::Md5, sums(None, Some([1; 16])), C::Md5),
            (C::Md5, sums(Some(7), Some([1; 16])), C::Md5),
            // Summed before the remote turned to MD5.
            (C::Md5, sums(Some(7), None), C::Crc32c),
            (C::Crc32c, sums(None, None), C::None),
            (C::None, sums(Some(7), Some([1; 16])), C::None),
        ];
        for (current, body, expected) in table {
            assert_eq!(carried(current, body), expected, "{current} {body:?}");
        }
    }

    #[test]
    fn checksums_round_trip() {
        assert_eq!(
            decode_crc32c(&encode_crc32c(0xdead_beef)),
            Some(0xdead_beef)
        );
        assert_eq!(decode_crc32c("AAAA"), None);
        assert!("checksum".parse::<Checksum>().is_err());
        assert_eq!("md5".parse::<Checksum>(), Ok(Checksum::Md5));
    }
}
