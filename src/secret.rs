//! Reading secrets (bearer tokens today; keys and webhook secrets later) from the places users
//! keep them: a file, or an environment variable. Never inline in a configuration, never
//! logged. Depends on nothing else in the crate.

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// The largest secret file read: keys, tokens and secrets are bytes to a few KiB. A file
/// named by mistake (a log, `/dev/zero`) is refused at this, not read without end.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Why a secret could not be read; names the file or variable, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    EmptyFile { path: PathBuf },
    #[error("{path} is over {} KiB: not a secret (is it the right file?)", MAX_SECRET_BYTES / 1024)]
    TooLarge { path: PathBuf },
    #[error("environment variable {name} is not set")]
    Unset { name: String },
}

/// Reads a secret file, trimming surrounding whitespace (a trailing newline, say).
pub fn read_file(path: &Path) -> Result<String, SecretError> {
    let bytes = read_at_most(path)?;
    let text = String::from_utf8(bytes).map_err(|error| SecretError::Unreadable {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(SecretError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_string())
}

/// Reads a secret file's bytes as they are (a binary key, say); an empty file is refused.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, SecretError> {
    let bytes = read_at_most(path)?;
    match bytes.is_empty() {
        true => Err(SecretError::EmptyFile {
            path: path.to_path_buf(),
        }),
        false => Ok(bytes),
    }
}

/// The bytes of `path`, refused past `MAX_SECRET_BYTES` (a pipe, as from `<(pass show x)`,
/// is read as a file is).
fn read_at_most(path: &Path) -> Result<Vec<u8>, SecretError> {
    let unreadable = |source| SecretError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    match bytes.len() as u64 > MAX_SECRET_BYTES {
        true => Err(SecretError::TooLarge {
            path: path.to_path_buf(),
        }),
        false => Ok(bytes),
    }
}

/// Reads a secret from the environment variable `name`, trimmed; unset and blank are alike.
pub fn read_env(name: &str) -> Result<String, SecretError> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Ok(value.trim().to_string()),
        _ => Err(SecretError::Unset { name: name.into() }),
    }
}

/// The secret in `file` when one is given, else in the environment variable `name`.
pub fn file_or_env(file: Option<&Path>, name: &str) -> Result<String, SecretError> {
    match file {
        Some(file) => read_file(file),
        None => read_env(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_trimmed_and_an_empty_one_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret\n").unwrap();
        assert_eq!(read_file(&file).unwrap(), "s3cret");
        std::fs::write(&file, "\n \n").unwrap();
        let empty = read_file(&file).unwrap_err().to_string();
        assert_eq!(empty, format!("{} is empty", file.display()));
        let missing = read_file(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().ends_with("nope"), "{missing}");
    }

    /// A file over 64 KiB, or one without end, is refused by name instead of read whole; one
    /// of exactly 64 KiB is read.
    #[test]
    fn a_file_too_large_to_be_a_secret_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, vec![b'k'; MAX_SECRET_BYTES as usize]).unwrap();
        assert_eq!(read_bytes(&file).unwrap().len(), MAX_SECRET_BYTES as usize);
        std::fs::write(&file, vec![b'k'; MAX_SECRET_BYTES as usize + 1]).unwrap();
        let over = read_file(&file).unwrap_err().to_string();
        let said = format!("{} is over 64 KiB: not a secret", file.display());
        assert!(over.starts_with(&said), "{over}");
        let endless = read_bytes(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(endless.starts_with("/dev/zero is over 64 KiB"), "{endless}");
    }

    #[test]
    fn the_file_wins_over_the_environment_and_a_blank_variable_is_unset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file").unwrap();
        // A name no other test or shell sets.
        let name = "FERRY_SECRET_TEST_UNSET_7F3A";
        assert_eq!(file_or_env(Some(&file), name).unwrap(), "from-file");
        let unset = file_or_env(None, name).unwrap_err().to_string();
        assert_eq!(unset, format!("environment variable {name} is not set"));
    }
}
