//! Keys from a profile's `credential_process` (aws-vault, the 1Password and Bitwarden CLIs),
//! run as the AWS CLI runs it: the line split into words as a POSIX shell splits them (so
//! `sh -c "op read  op://vault/aws"` keeps its quoted argument whole, runs of spaces and all),
//! nothing on its standard input, and its standard output read as the JSON of the AWS
//! process credential format (`Version` 1). Written here rather than taken from reqsign, whose
//! provider splits the line at whitespace and reads it from the config file only; the AWS CLI
//! also takes it from the credentials file.

use std::process::Stdio;

use reqsign_aws_core::Credential;
use reqsign_core::{Context, Error, ProvideCredential};
use serde::Deserialize;

/// The keys that `command` (a profile's `credential_process`) prints.
#[derive(Debug)]
pub struct ProcessKeys {
    pub command: String,
}

impl ProvideCredential for ProcessKeys {
    type Credential = Credential;

    async fn provide_credential(&self, _: &Context) -> reqsign_core::Result<Option<Credential>> {
        let words = shell_words(&self.command).ok_or_else(|| {
            let problem = format!(
                "credential_process {:?} has a quote that is not closed",
                self.command
            );
            Error::config_invalid(problem)
        })?;
        let output = tokio::process::Command::new(&words[0])
            .args(&words[1..])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|error| {
                let message = format!("cannot run credential_process {:?}: {error}", words[0]);
                Error::unexpected(message)
            })?;
        if !output.status.success() {
            let status = output.status.code().unwrap_or(-1);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let message = format!("credential process failed with status {status}: {stderr}");
            return Err(Error::unexpected(message.trim_end()));
        }
        parse_keys(&output.stdout).map(Some)
    }
}

/// `line` split into words as a POSIX shell splits them; `None` for an unclosed quote or no
/// words at all.
fn shell_words(line: &str) -> Option<Vec<String>> {
    shlex::split(line).filter(|words| !words.is_empty())
}

/// The keys in a process's output, or what is wrong with it.
fn parse_keys(stdout: &[u8]) -> reqsign_core::Result<Credential> {
    let unreadable =
        |problem: String| Error::unexpected(format!("credential process printed {problem}"));
    let keys: ProcessOutput = serde_json::from_slice(stdout)
        .map_err(|error| unreadable(format!("no keys in the AWS format: {error}")))?;
    if keys.version != 1 {
        return Err(unreadable(format!(
            "keys of version {}, not 1",
            keys.version
        )));
    }
    let expires_in = match keys.expiration {
        Some(expiration) => Some(expiration.parse().map_err(|_| {
            unreadable(format!(
                "an expiration that is no RFC 3339 time: {expiration:?}"
            ))
        })?),
        None => None,
    };
    Ok(Credential {
        access_key_id: keys.access_key_id,
        secret_access_key: keys.secret_access_key,
        session_token: keys.session_token,
        expires_in,
    })
}

/// The AWS process credential format.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessOutput {
    version: u32,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    expiration: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_process_is_split_as_a_shell_splits_it() {
        let cases: [(&str, Option<&[&str]>); 6] = [
            (
                "aws-vault export --format=json home",
                Some(&["aws-vault", "export", "--format=json", "home"]),
            ),
            (
                "sh -c \"op read op://v/aws | jq .\"",
                Some(&["sh", "-c", "op read op://v/aws | jq ."]),
            ),
            (
                "/opt/my tools/keys 'a b'",
                Some(&["/opt/my", "tools/keys", "a b"]),
            ),
            ("printf '%s  %s' a b", Some(&["printf", "%s  %s", "a", "b"])),
            ("sh -c \"unclosed", None),
            ("", None),
        ];
        for (line, expected) in cases {
            let words = shell_words(line);
            let expected = expected.map(|words| words.iter().map(|w| w.to_string()).collect());
            assert_eq!(words, expected, "{line}");
        }
    }

    #[test]
    fn a_process_output_gives_keys_or_says_what_is_wrong() {
        let keys = r#"{"Version":1,"AccessKeyId":"AKIA","SecretAccessKey":"s"#;
        let cases: [(String, Result<Option<i64>, &str>); 5] = [
            (format!("{keys}\"}}"), Ok(None)),
            (
                format!(
                    "{keys}\",\"SessionToken\":\"t\",\"Expiration\":\"2026-12-04T14:00:00Z\"}}"
                ),
                Ok(Some(1_796_392_800)),
            ),
            (
                format!("{keys}\",\"Expiration\":\"soon\"}}"),
                Err("no RFC 3339 time"),
            ),
            (keys.replace(":1,", ":2,") + "\"}", Err("version 2, not 1")),
            ("locked".to_string(), Err("no keys in the AWS format")),
        ];
        for (stdout, expected) in cases {
            let read = parse_keys(stdout.as_bytes());
            match (read, expected) {
                (Ok(keys), Ok(expires)) => {
                    assert_eq!(keys.access_key_id, "AKIA");
                    assert_eq!(keys.expires_in.map(|t| t.as_second()), expires, "{stdout}");
                }
                (Err(error), Err(words)) => {
                    assert!(error.to_string().contains(words), "{stdout}: {error}")
                }
                (read, _) => panic!("{stdout}: {read:?}"),
            }
        }
    }
}
