//! Hooks: telling a program or a webhook that a file landed (`on_uploaded`) or failed for good
//! (`on_failed`). A program gets its argv with placeholders filled in and the job's JSON
//! document on its standard input, without a shell; a webhook gets the document as a POST
//! body, signed as GitHub and Stripe sign theirs (`X-Ferry-Signature: t=UNIX,v1=HEX`, the hex
//! HMAC-SHA256 of `UNIX.BODY` under the secret), so a receiver can check both who sent it and
//! that it is fresh. Delivery is the daemon's (`daemon::hooks`): durable, at least once.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use tokio::io::AsyncWriteExt;

use crate::config::HookSpec;

/// The header that carries a webhook's signature.
pub const SIGNATURE_HEADER: &str = "x-ferry-signature";
/// The header that names a webhook's event (`uploaded`, `failed`).
pub const EVENT_HEADER: &str = "x-ferry-event";
/// Bytes of a program's standard error kept for the reason of its failure.
const STDERR_KEPT: usize = 400;

/// Why a hook was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?}")]
    ProgramTimeout { program: String, timeout: Duration },
    #[error("{program} exited with {status}: {stderr}")]
    Exited {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot read the webhook secret")]
    Secret(#[source] crate::secret::SecretError),
    #[error("webhook {url} failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("webhook {url} answered {status}{}", colon_before(redirect))]
    Refused {
        url: String,
        status: reqwest::StatusCode,
        /// Where a redirect points (not followed: a POST would arrive as a GET, without the
        /// document).
        redirect: Option<String>,
    },
}

/// `text` after a colon, or nothing.
fn colon_before(text: &Option<String>) -> String {
    text.as_ref()
        .map_or(String::new(), |text| format!(": {text}"))
}

/// The values a program's argv may name: `{path}`, `{remote}`, `{remote_path}`, `{size}`,
/// `{sha256}`, read from the document.
pub fn fill_placeholders(argv: &[String], document: &serde_json::Value) -> Vec<String> {
    let field = |name: &str| match &document[name] {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let values = [
        ("{path}", field("path")),
        ("{remote}", field("remote")),
        ("{remote_path}", field("remote_path")),
        ("{size}", field("size")),
        ("{sha256}", field("sha256")),
    ];
    argv.iter()
        .map(|argument| {
            values.iter().fold(argument.clone(), |text, (name, value)| {
                text.replace(name, value)
            })
        })
        .collect()
}

/// The signature header's value for `body` sent at `unix_seconds` under `secret`.
pub fn sign(secret: &[u8], unix_seconds: u64, body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Delivers hooks, with one HTTP client for every webhook; cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    client: reqwest::Client,
}

impl Deliverer {
    pub fn new() -> Deliverer {
        // Webhooks trust the system's CA certificates; a machine without any can still call
        // plain-HTTP ones.
        let client = crate::upload::http::client_builder(None, None)
            .build()
            .expect("a client with preconfigured TLS and no other settings builds");
        Deliverer { client }
    }

    /// Delivers `document` (the `event`'s) to `hook` once.
    pub async fn deliver(
        &self,
        hook: &HookSpec,
        event: &str,
        document: &serde_json::Value,
    ) -> Result<(), HookError> {
        deliver(hook, event, document, &self.client).await
    }
}

impl Default for Deliverer {
    fn default() -> Deliverer {
        Deliverer::new()
    }
}

async fn deliver(
    hook: &HookSpec,
    event: &str,
    document: &serde_json::Value,
    client: &reqwest::Client,
) -> Result<(), HookError> {
    match hook {
        HookSpec::Exec { argv, timeout } => run_program(argv, document, *timeout).await,
        HookSpec::Webhook {
            url,
            secret_file,
            timeout,
        } => {
            let secret = match secret_file {
                Some(file) => Some(read_secret(file.clone()).await?),
                None => None,
            };
            post(client, url, event, document, secret, *timeout).await
        }
    }
}

async fn read_secret(file: std::path::PathBuf) -> Result<String, HookError> {
    tokio::task::spawn_blocking(move || crate::secret::read_file(&file))
        .await
        .expect("reading a secret does not panic")
        .map_err(HookError::Secret)
}

/// Runs the program with the document on its standard input; success is exit status 0.
async fn run_program(
    argv: &[String],
    document: &serde_json::Value,
    timeout: Duration,
) -> Result<(), HookError> {
    let argv = fill_placeholders(argv, document);
    let program = argv[0].clone();
    let mut child = spawn_program(&argv)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let body = serde_json::to_vec(document).expect("documents serialise");
    let finished = tokio::time::timeout(timeout, async move {
        // A program that does not read its input is not a failure.
        let _ = stdin.write_all(&body).await;
        drop(stdin);
        child.wait_with_output().await
    })
    .await;
    let output = match finished {
        Err(_) => return Err(HookError::ProgramTimeout { program, timeout }),
        Ok(waited) => waited.map_err(|source| HookError::Spawn {
            program: program.clone(),
            source,
        })?,
    };
    if output.status.success() {
        return Ok(());
    }
    Err(HookError::Exited {
        program,
        status: output.status,
        stderr: stderr_tail(&output.stderr),
    })
}

/// The program `argv` names, started with its standard input and error piped; killed if
/// dropped.
fn spawn_program(argv: &[String]) -> Result<tokio::process::Child, HookError> {
    tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Spawn {
            program: argv[0].clone(),
            source,
        })
}

/// The last `STDERR_KEPT` bytes of a program's standard error (from a character's start),
/// trimmed.
fn stderr_tail(stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let start = stderr.len().saturating_sub(STDERR_KEPT);
    let start = (start..stderr.len())
        .find(|at| stderr.is_char_boundary(*at))
        .unwrap_or(0);
    stderr[start..].trim().to_string()
}

/// POSTs the document, signed when there is a secret; success is a 2xx answer.
async fn post(
    client: &reqwest::Client,
    url: &str,
    event: &str,
    document: &serde_json::Value,
    secret: Option<String>,
    timeout: Duration,
) -> Result<(), HookError> {
    let body = serde_json::to_vec(document).expect("documents serialise");
    let mut request = client
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(EVENT_HEADER, event);
    if let Some(secret) = secret {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        request = request.header(
            SIGNATURE_HEADER,
            sign(secret.as_bytes(), now.as_secs(), &body),
        );
    }
    let shown = crate::redact::url(url);
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|source| HookError::Request {
            url: shown.clone(),
            // reqwest's message would repeat the URL.
            source: source.without_url(),
        })?;
    match response.status() {
        status if status.is_success() => Ok(()),
        status => Err(HookError::Refused {
            url: shown,
            status,
            redirect: crate::upload::http::redirect(status.as_u16(), response.headers()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_from_the_document_in_every_argument() {
        let document = serde_json::json!({
            "path": "/srv/outbox/a b.txt", "remote": "main", "remote_path": "out/a b.txt",
            "size": 12, "sha256": "ab12",
        });
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["/bin/index", "{path}"],
                &["/bin/index", "/srv/outbox/a b.txt"],
            ),
            (
                &["x", "--to={remote}:{remote_path}"],
                &["x", "--to=main:out/a b.txt"],
            ),
            (
                &["x", "{size}", "{sha256}", "{unknown}"],
                &["x", "12", "ab12", "{unknown}"],
            ),
        ];
        for (argv, expected) in cases {
            let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
            assert_eq!(fill_placeholders(&argv, &document), *expected);
        }
    }

    /// A webhook that cannot be reached is reported by its URL with the credentials hidden.
    #[tokio::test]
    async fn an_unreachable_webhook_is_named_without_its_credentials() {
        let hook = HookSpec::Webhook {
            url: "http://ferry:hunter2@127.0.0.1:1/hook".into(),
            secret_file: None,
            timeout: Duration::from_secs(5),
        };
        let document = serde_json::json!({"event": "uploaded"});
        let error = Deliverer::new()
            .deliver(&hook, "uploaded", &document)
            .await
            .unwrap_err();
        let said = crate::error::chain(&error);
        assert!(
            said.contains("127.0.0.1:1/hook") && !said.contains("hunter2"),
            "{said}"
        );
        assert_eq!(said.matches("127.0.0.1:1").count(), 1, "named once: {said}");
    }

    /// The scheme's known answer: HMAC-SHA256 of "1700000000.{}" under "secret", computed
    /// independently (`printf '1700000000.{}' | openssl dgst -sha256 -hmac secret`).
    #[test]
    fn the_signature_is_the_hmac_of_the_timestamp_and_the_body() {
        let signed = sign(b"secret", 1_700_000_000, b"{}");
        assert_eq!(
            signed,
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn the_tail_of_standard_error_is_kept_whole_characters_trimmed() {
        assert_eq!(stderr_tail(b"  oops\n"), "oops");
        let long = format!("{}{}", "x".repeat(1000), "end\n");
        let tail = stderr_tail(long.as_bytes());
        assert_eq!(tail.len(), STDERR_KEPT - 1);
        assert!(tail.ends_with("end"));
        // A cut inside a two-byte character moves to the next character's start.
        let wide = format!("{}{}", "\u{e9}".repeat(300), "!");
        let tail = stderr_tail(wide.as_bytes());
        assert!(tail.ends_with('!') && tail.starts_with('\u{e9}'), "{tail}");
    }
}
