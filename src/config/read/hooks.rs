//! Hooks: `on_uploaded` and `on_failed`, each `{ exec = [argv...], timeout = "30s" }` or
//! `{ webhook = { url = "...", secret_file = "..." }, timeout = "30s" }`, in `[hooks]` (every
//! watch's default) or in a `[[watch]]` (its own).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::de::DeTable;

use super::{Reader, duration_up_to};
use crate::config::{HookSpec, Hooks};

/// How long a hook may run (or a webhook take) when its table says nothing.
const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a hook may be given.
const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(3600);
pub(super) const HOOK_KEYS: [&str; 2] = ["on_uploaded", "on_failed"];

/// A hook as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookTable {
    exec: Option<Vec<String>>,
    webhook: Option<WebhookTable>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookTable {
    url: String,
    secret_file: Option<PathBuf>,
}

impl Reader<'_> {
    /// `on_uploaded` and `on_failed` of `table`; a key it does not set keeps `base`'s.
    pub(super) fn hooks(
        &mut self,
        path: &str,
        table: &DeTable<'_>,
        base: &Path,
        defaults: &Hooks,
    ) -> Hooks {
        let read = |reader: &mut Self, key: &str| {
            reader.get_as(path, table, key, |hook: HookTable| hook_spec(hook, base))
        };
        Hooks {
            on_uploaded: read(self, "on_uploaded").or_else(|| defaults.on_uploaded.clone()),
            on_failed: read(self, "on_failed").or_else(|| defaults.on_failed.clone()),
        }
    }

    /// The `[hooks]` table: every watch's defaults.
    pub(super) fn hook_defaults(&mut self, table: &DeTable<'_>, base: &Path) -> Hooks {
        self.unknown_keys("hooks", table, &HOOK_KEYS);
        self.hooks("hooks", table, base, &Hooks::default())
    }
}

/// Checks a hook as written: exactly one of `exec` (a program and its arguments) and
/// `webhook` (an http or https URL), and a timeout within bounds.
fn hook_spec(hook: HookTable, base: &Path) -> Result<HookSpec, String> {
    let timeout = match hook.timeout {
        Some(text) => duration_up_to(MAX_HOOK_TIMEOUT)(text)?,
        None => DEFAULT_HOOK_TIMEOUT,
    };
    match (hook.exec, hook.webhook) {
        (Some(argv), None) if argv.first().is_some_and(|program| !program.is_empty()) => {
            Ok(HookSpec::Exec { argv, timeout })
        }
        (Some(_), None) => {
            Err("exec must name a program: exec = [\"/path/to/program\", \"{path}\"]".into())
        }
        (None, Some(webhook)) => {
            let parsed =
                url::Url::parse(&webhook.url).map_err(|error| format!("webhook url: {error}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err("webhook url must be http or https".into());
            }
            let secret_file = webhook.secret_file.map(|file| base.join(file));
            Ok(HookSpec::Webhook {
                url: webhook.url,
                secret_file,
                timeout,
            })
        }
        _ => Err("write either exec = [...] or webhook = { url = \"...\" }, not both".into()),
    }
}
