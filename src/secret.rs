//! Reading secrets (bearer tokens today; keys and webhook secrets later) from the places users
//! keep them: a file, or an environment variable. Never inline in a configuration, never
//! logged. Depends on nothing else in the crate.

use std::path::{Path, PathBuf};

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
    #[error("environment variable {name} is not set")]
    Unset { name: String },
}

/// Reads a secret file, trimming surrounding whitespace (a trailing newline, say).
pub fn read_file(path: &Path) -> Result<String, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Unreadable {
        path: path.to_path_buf(),
        source,
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
    let bytes = std::fs::read(path).map_err(|source| SecretError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    match bytes.is_empty() {
        true => Err(SecretError::EmptyFile {
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
