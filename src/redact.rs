//! Hiding secrets that people put in URLs (`http://user:password@host`, `?token=...`) before a
//! URL is shown or logged. Depends on nothing else in the crate.

/// What stands in for a hidden secret.
const HIDDEN: &str = "REDACTED";
/// Query parameter names that carry credentials: a name containing any of these (in any case)
/// has its value hidden. Covers `token`, `access_token`, `api_key`, `X-Amz-Signature`,
/// `X-Amz-Credential`, `sig`, `password`, `secret`, `auth`.
const SECRET_PARAMETERS: &[&str] = &[
    "token",
    "key",
    "secret",
    "sig",
    "pass",
    "credential",
    "auth",
];

/// `text` with its userinfo and any credential-like query values replaced by `REDACTED`;
/// unchanged when it holds neither (or is not a URL).
pub fn url(text: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(text) else {
        return text.to_string();
    };
    let mut changed = false;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Either part may be the secret (a token is often given as the user name).
        let _ = parsed.set_username(HIDDEN);
        let _ = parsed.set_password(None);
        changed = true;
    }
    if parsed.query_pairs().any(|(name, _)| is_secret(&name)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_secret(&name) {
                    HIDDEN.into()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    if changed {
        parsed.to_string()
    } else {
        text.to_string()
    }
}

fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMETERS.iter().any(|secret| name.contains(secret))
}

#[cfg(test)]
mod tests {
    #[test]
    fn userinfo_and_credential_parameters_are_hidden() {
        let cases = [
            ("http://127.0.0.1:7373", "http://127.0.0.1:7373"),
            (
                "https://files.example.com/base/",
                "https://files.example.com/base/",
            ),
            ("http://user:hunter2@host:1/", "http://REDACTED@host:1/"),
            ("https://ghp_abc123@host/", "https://REDACTED@host/"),
            (
                "https://host/?token=abc&page=2",
                "https://host/?token=REDACTED&page=2",
            ),
            (
                "https://s3/b/k?X-Amz-Signature=f00&X-Amz-Credential=AKIA%2F&x=1",
                "https://s3/b/k?X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED&x=1",
            ),
            ("not a url", "not a url"),
        ];
        for (given, shown) in cases {
            assert_eq!(super::url(given), shown, "{given}");
        }
    }
}
