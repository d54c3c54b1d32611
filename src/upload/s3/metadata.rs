//! A watch's metadata as S3 user metadata (`x-amz-meta-*` headers), and what S3 can carry:
//! header names of letters, digits, `-` and `_`, case-insensitive, and 2 KiB in all. Pure, so
//! `config` refuses at load what every upload would fail on, and the backend builds its
//! headers by the same rules.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// The entry naming the session that wrote an object (its nonce, 16 hex digits).
pub(super) const SESSION_META: &str = "x-amz-meta-ferry-session";
/// The file's modification time, kept where rclone keeps it (and reads it back: `rclone lsl`,
/// `check` and `sync` see the file's own time, not the upload's).
pub(super) const MTIME_META: &str = "x-amz-meta-mtime";
/// The most bytes of user metadata S3 takes, keys and values as sent (AWS's limit).
const MAX_BYTES: usize = 2048;
/// The longest `mtime` value Ferry writes ("1354040105.123456789").
const MTIME_VALUE_BYTES: usize = 20;
/// The nonce in `SESSION_META`.
const NONCE_BYTES: usize = 16;

/// Why `metadata` cannot go with an S3 object; `Ok` when it can.
pub fn check(metadata: &BTreeMap<String, String>) -> Result<(), String> {
    let own_name = |header: &'static str| header.trim_start_matches("x-amz-meta-");
    let mut seen = BTreeSet::new();
    for name in metadata.keys() {
        if header_name(name).is_none() {
            return Err(format!(
                "key {name:?} cannot be an S3 header: use letters, digits, - and _"
            ));
        }
        let lower = name.to_ascii_lowercase();
        if lower == own_name(SESSION_META) {
            return Err(format!(
                "key {name:?} is Ferry's own: it tells an upload that completed from one aborted"
            ));
        }
        if !seen.insert(lower) {
            return Err(format!(
                "key {name:?} differs from another only in case: S3 would keep one of them"
            ));
        }
    }
    let given: usize = metadata
        .iter()
        .map(|(name, value)| name.len() + header_value(value).len())
        .sum();
    let mut own = own_name(SESSION_META).len() + NONCE_BYTES;
    if !seen.contains(own_name(MTIME_META)) {
        own += own_name(MTIME_META).len() + MTIME_VALUE_BYTES;
    }
    match given + own <= MAX_BYTES {
        true => Ok(()),
        false => Err(format!(
            "takes {given} bytes as S3 headers; with Ferry's own {own}, over the {MAX_BYTES} \
             S3 takes"
        )),
    }
}

/// `x-amz-meta-<name>`, lowercase, when `name` can be one.
pub(super) fn header_name(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    valid.then(|| format!("x-amz-meta-{}", name.to_ascii_lowercase()))
}

/// A metadata value as a header: printable ASCII as is, anything else RFC 2047-encoded (as the
/// AWS SDKs do).
pub(super) fn header_value(value: &str) -> String {
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) && value.trim() == value {
        return value.to_string();
    }
    format!("=?UTF-8?B?{}?=", BASE64.encode(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_becomes_headers_that_survive_the_trip() {
        assert_eq!(
            header_name("Camera-ID").as_deref(),
            Some("x-amz-meta-camera-id")
        );
        assert_eq!(header_name("bad key"), None);
        assert_eq!(header_name(""), None);
        assert_eq!(header_value("plain text"), "plain text");
        assert_eq!(header_value("café"), "=?UTF-8?B?Y2Fmw6k=?=");
        assert_eq!(header_value(" padded"), "=?UTF-8?B?IHBhZGRlZA==?=");
    }

    /// What S3 can carry passes; a name it cannot, Ferry's own, two that differ only in case
    /// and more than 2 KiB in all are refused, saying why.
    #[test]
    fn metadata_s3_cannot_carry_is_refused_saying_why() {
        let long = |n| "x".repeat(n);
        // Ferry's own: ferry-session and its nonce (29), mtime and its value (25).
        type Case = (Vec<(&'static str, String)>, Option<&'static str>);
        let cases: [Case; 9] = [
            (vec![], None),
            (
                vec![("project", "atlas".into()), ("Camera-ID", "7".into())],
                None,
            ),
            (vec![("city", "Zürich".into())], None),
            (
                vec![("bad key", "x".into())],
                Some("cannot be an S3 header"),
            ),
            (vec![("Ferry-Session", "x".into())], Some("is Ferry's own")),
            (
                vec![("Project", "a".into()), ("project", "b".into())],
                Some("only in case"),
            ),
            (vec![("big", long(2048 - 29 - 25 - 3))], None),
            (
                vec![("big", long(2048 - 29 - 25 - 2))],
                Some("over the 2048 S3 takes"),
            ),
            (
                vec![("mtime", "1".into()), ("big", long(2048 - 29 - 6 - 3))],
                None,
            ),
        ];
        for (entries, refused) in cases {
            let metadata: BTreeMap<String, String> = entries
                .into_iter()
                .map(|(name, value)| (name.to_string(), value))
                .collect();
            let checked = check(&metadata);
            match refused {
                None => assert_eq!(checked, Ok(()), "{metadata:?}"),
                Some(said) => assert!(
                    checked.as_ref().is_err_and(|e| e.contains(said)),
                    "{metadata:?}: {checked:?}"
                ),
            }
        }
    }
}
