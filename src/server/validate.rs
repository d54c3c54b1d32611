//! Pure checks of untrusted protocol input: filenames, workspace ids, upload ids and complete
//! manifests. Nothing here touches the disk, so every rule is tested by a table, and the
//! storage layer only ever sees names that cannot escape the storage folder.

use crate::protocol::ManifestPart;

/// Longest accepted `filename`, in bytes (PROTOCOL.md).
pub const MAX_FILENAME_BYTES: usize = 1024;
/// Longest accepted path component, in bytes: the common filesystem limit (PROTOCOL.md).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Checks a remote file path: relative, `/`-separated, no empty, `.` or `..` component, no NUL
/// or control characters, at most 1024 bytes, components at most 255 bytes.
pub fn filename(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("filename is empty".into());
    }
    if name.len() > MAX_FILENAME_BYTES {
        return Err(format!(
            "filename is {} bytes, over the limit of {MAX_FILENAME_BYTES}",
            name.len()
        ));
    }
    if name.starts_with('/') {
        return Err("filename must be relative, not start with '/'".into());
    }
    if let Some(bad) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "filename contains the control character U+{:04X}",
            bad as u32
        ));
    }
    if name.contains('\\') {
        // A backslash is a separator on Windows; refusing it keeps names portable and stops a
        // `..\..` from meaning something on a receiver that runs there.
        return Err("filename contains a backslash; use '/' as the separator".into());
    }
    for component in name.split('/') {
        match component {
            "" => return Err("filename has an empty path component".into()),
            "." | ".." => {
                return Err(format!("filename has a '{component}' path component"));
            }
            _ if component.len() > MAX_COMPONENT_BYTES => {
                return Err(format!(
                    "filename has a component of {} bytes, over the limit of {MAX_COMPONENT_BYTES}",
                    component.len()
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// True when `id` has the shape of an upload id this receiver issues (`up_` and 32 hex digits).
/// Anything else is answered `404` without touching the disk.
pub fn is_upload_id(id: &str) -> bool {
    id.len() == 35 && id.starts_with("up_") && id[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a lowercase hex SHA-256 digest.
pub fn sha256_hex(digest: &str) -> Result<(), String> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err("sha256 must be 64 lowercase hex digits".into())
    }
}

/// Reads a modification time: RFC 3339 in UTC, with up to 9 decimals of seconds.
pub fn mtime(text: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339(text).map_err(|error| {
        format!("mtime {text:?} is not an RFC 3339 time in UTC (such as 2021-05-06T07:08:09.5Z): {error}")
    })
}

/// A stored part as the manifest check needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPart {
    pub part_number: u32,
    pub size: u64,
    pub etag: String,
}

/// Why a manifest cannot be completed; maps to the protocol's error codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestProblem {
    /// `400 manifest_mismatch`, naming the first offending part.
    Mismatch(String),
    /// `400 part_too_small`.
    PartTooSmall(String),
}

/// Checks a complete manifest against the stored parts (sorted by part number): part numbers
/// strictly ascending, each stored with exactly that etag, every part but the last at least
/// `min_part_size`, sizes summing to `total_size`. Returns the parts to assemble, in order.
pub fn manifest<'a>(
    manifest: &[ManifestPart],
    stored: &'a [StoredPart],
    min_part_size: u64,
    total_size: u64,
) -> Result<Vec<&'a StoredPart>, ManifestProblem> {
    if manifest.is_empty() {
        return Err(ManifestProblem::Mismatch(
            "manifest lists no parts; even an empty file is one empty part".into(),
        ));
    }
    let chosen = listed_parts(manifest, stored)?;
    let last = chosen.len() - 1;
    if let Some(small) = chosen[..last].iter().find(|part| part.size < min_part_size) {
        return Err(ManifestProblem::PartTooSmall(format!(
            "part {} is {} bytes; every part but the last must be at least {min_part_size}",
            small.part_number, small.size
        )));
    }
    let sum: u64 = chosen.iter().map(|part| part.size).sum();
    if sum != total_size {
        return Err(ManifestProblem::Mismatch(format!(
            "the parts sum to {sum} bytes but the session's total_size is {total_size}"
        )));
    }
    Ok(chosen)
}

/// The stored part each manifest entry names, in the manifest's order: the numbers strictly
/// ascending, each stored with exactly the entry's etag.
fn listed_parts<'a>(
    manifest: &[ManifestPart],
    stored: &'a [StoredPart],
) -> Result<Vec<&'a StoredPart>, ManifestProblem> {
    let mut previous = 0u32;
    let mut chosen = Vec::with_capacity(manifest.len());
    for entry in manifest {
        let number = entry.part_number;
        if number <= previous {
            return Err(ManifestProblem::Mismatch(format!(
                "part {number} is out of order: part numbers must be strictly ascending"
            )));
        }
        previous = number;
        let found = stored
            .binary_search_by_key(&number, |part| part.part_number)
            .map(|index| &stored[index]);
        let problem = match found {
            Ok(part) if part.etag == entry.etag.trim_matches('"') => {
                chosen.push(part);
                continue;
            }
            Ok(_) => "was stored with another etag",
            Err(_) => "was never stored",
        };
        return Err(ManifestProblem::Mismatch(format!(
            "part {number} {problem}"
        )));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mtime_is_rfc3339_in_utc() {
        assert!(mtime("2021-05-06T07:08:09Z").is_ok());
        assert!(mtime("2021-05-06T07:08:09.5Z").is_ok());
        for bad in [
            "",
            "yesterday",
            "1620284889",
            "2021-05-06 07:08:09",
            "2021-05-06T07:08:09+02:00",
        ] {
            let error = mtime(bad).unwrap_err();
            assert!(error.contains("RFC 3339"), "{bad}: {error}");
        }
    }

    #[test]
    fn filename_table() {
        let long_component = "a".repeat(256);
        let long_name = format!("{}/b", "a/".repeat(600));
        let cases: &[(&str, bool)] = &[
            ("a.txt", true),
            ("reports/2026/training-dataset.csv", true),
            ("ünïcödé/файл.bin", true),
            ("with space/and-dash_.x", true),
            ("", false),
            ("/etc/passwd", false),
            ("../escape", false),
            ("a/../../escape", false),
            ("a/./b", false),
            (".", false),
            ("a//b", false),
            ("a/", false),
            ("nul\0byte", false),
            ("new\nline", false),
            ("tab\there", false),
            ("back\\slash", false),
            (&long_component, false),
            (&long_name, false),
        ];
        for (name, ok) in cases {
            assert_eq!(filename(name).is_ok(), *ok, "filename {name:?}");
        }
    }

    #[test]
    fn workspace_and_upload_id_table() {
        for (id, ok) in [
            ("ws_123abc", true),
            ("default", true),
            ("A-b_9", true),
            ("", false),
            ("has.dot", false),
            ("..", false),
            ("slash/inside", false),
            (&"w".repeat(65) as &str, false),
        ] {
            assert_eq!(
                crate::protocol::check_workspace_id(id).is_ok(),
                ok,
                "workspace {id:?}"
            );
        }
        assert!(is_upload_id("up_0123456789abcdef0123456789abcdef"));
        assert!(!is_upload_id("up_../../../../etc/passwd0000000000"));
        assert!(!is_upload_id("up_0123"));
        assert!(!is_upload_id("xx_0123456789abcdef0123456789abcdef"));
    }

    fn stored(parts: &[(u32, u64, &str)]) -> Vec<StoredPart> {
        parts
            .iter()
            .map(|(part_number, size, etag)| StoredPart {
                part_number: *part_number,
                size: *size,
                etag: etag.to_string(),
            })
            .collect()
    }

    fn manifest_of(parts: &[(u32, &str)]) -> Vec<ManifestPart> {
        parts
            .iter()
            .map(|(part_number, etag)| ManifestPart {
                part_number: *part_number,
                etag: etag.to_string(),
            })
            .collect()
    }

    #[test]
    fn manifest_table() {
        let parts = stored(&[(1, 10, "a"), (2, 10, "b"), (3, 4, "c"), (5, 1, "e")]);
        let ok = |m: &[(u32, &str)], total| manifest(&manifest_of(m), &parts, 10, total).is_ok();
        let mismatch = |m: &[(u32, &str)], total| {
            matches!(
                manifest(&manifest_of(m), &parts, 10, total),
                Err(ManifestProblem::Mismatch(_))
            )
        };
        assert!(ok(&[(1, "a"), (2, "b"), (3, "c")], 24));
        assert!(ok(&[(1, "\"a\""), (2, "b")], 20), "quoted etags accepted");
        assert!(ok(&[(1, "a"), (2, "b"), (5, "e")], 21), "numbers may skip");
        assert!(mismatch(&[], 0), "empty manifest");
        assert!(mismatch(&[(2, "b"), (1, "a")], 20), "misordered");
        assert!(mismatch(&[(1, "a"), (1, "a")], 20), "repeated");
        assert!(mismatch(&[(1, "a"), (4, "d")], 20), "never stored");
        assert!(mismatch(&[(1, "a"), (2, "x")], 20), "wrong etag");
        assert!(mismatch(&[(1, "a"), (2, "b")], 21), "sizes do not sum");
        assert!(matches!(
            manifest(&manifest_of(&[(3, "c"), (5, "e")]), &parts, 10, 5),
            Err(ManifestProblem::PartTooSmall(_))
        ));
        let empty = stored(&[(1, 0, "z")]);
        assert!(manifest(&manifest_of(&[(1, "z")]), &empty, 10, 0).is_ok());
    }
}
