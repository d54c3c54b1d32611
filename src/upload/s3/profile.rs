//! The AWS CLI's shared files (`$AWS_CONFIG_FILE`, else `~/.aws/config`, and
//! `$AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`), read once per remote that needs
//! them: the region and endpoint of a profile, taken when a remote names none and the
//! environment does not either, and (in `role`) the role a profile assumes, as the AWS CLI and
//! SDKs read them, and how a profile holds its keys (`keys_in`), which `keys` then fetches.

use std::path::PathBuf;

use ini::Ini;

/// Where a profile's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysIn {
    /// An SSO session (`sso_session`, or the legacy `sso_start_url`).
    Sso,
    /// `aws_access_key_id` with its secret.
    Keys,
    /// `credential_process`: the command line.
    Process(String),
}

/// Both shared files, parsed (a file that is not there is empty), and the profile used when a
/// remote names none.
pub struct SharedFiles {
    pub(super) config: (Ini, PathBuf),
    pub(super) credentials: (Ini, PathBuf),
    /// `$AWS_PROFILE`, else `default`.
    default_profile: String,
}

impl SharedFiles {
    /// Reads both files where `env` (which reads an environment variable) says they are; one
    /// that does not parse is an error naming it, as the AWS CLI refuses it.
    pub fn read(env: impl Fn(&str) -> Option<String>) -> Result<SharedFiles, String> {
        let set = |name: &str| env(name).filter(|value| !value.is_empty());
        let home = set("HOME").map(PathBuf::from).unwrap_or_default();
        let path = |var: &str, name: &str| {
            set(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".aws").join(name))
        };
        let parse = |path: PathBuf| match std::fs::read_to_string(&path) {
            Ok(text) => match Ini::load_from_str(&text) {
                Ok(file) => Ok((file, path)),
                Err(error) => Err(format!("{}: {error}", path.display())),
            },
            Err(_) => Ok((Ini::new(), path)),
        };
        Ok(SharedFiles {
            config: parse(path("AWS_CONFIG_FILE", "config"))?,
            credentials: parse(path("AWS_SHARED_CREDENTIALS_FILE", "credentials"))?,
            default_profile: set("AWS_PROFILE").unwrap_or_else(|| "default".into()),
        })
    }

    /// No files: for a remote that takes nothing from them.
    pub fn none() -> SharedFiles {
        SharedFiles {
            config: (Ini::new(), PathBuf::new()),
            credentials: (Ini::new(), PathBuf::new()),
            default_profile: "default".into(),
        }
    }

    /// The profile named, else the default one.
    pub fn profile_name<'a>(&'a self, profile: Option<&'a str>) -> &'a str {
        profile.unwrap_or(&self.default_profile)
    }

    /// `key` (`region`, `endpoint_url`) of the profile in the config file, and where it was
    /// found, for `ferry config check`.
    pub fn setting(&self, profile: Option<&str>, key: &str) -> Option<(String, String)> {
        let profile = self.profile_name(profile);
        let value = config_setting(&self.config.0, profile, key)?;
        let from = format!("profile {profile:?} of {}", self.config.1.display());
        Some((value.to_string(), from))
    }

    /// The `endpoint_url` of `service` (`s3`, `sts`) for the profile: its `services` section's,
    /// else the profile's own; and where it was found.
    pub fn endpoint(&self, profile: Option<&str>, service: &str) -> Option<(String, String)> {
        let name = self.profile_name(profile);
        let services = config_setting(&self.config.0, name, "services");
        let own = services.and_then(|services| {
            let url = service_setting(&self.config.0, services, service, "endpoint_url")?;
            let from = format!("services {services:?} of {}", self.config.1.display());
            Some((url, from))
        });
        own.or_else(|| self.setting(profile, "endpoint_url"))
    }

    /// How `profile` holds its keys, in the AWS CLI's order: an SSO session, keys in the
    /// credentials file, a `credential_process`, else keys in the config file (or none).
    pub fn keys_in(&self, profile: &str) -> KeysIn {
        let credentials = self.credentials.0.section(Some(profile));
        let sso = ["sso_session", "sso_start_url"];
        if sso.iter().any(|key| self.get(profile, key).is_some()) {
            KeysIn::Sso
        } else if credentials.is_some_and(|section| section.contains_key("aws_access_key_id")) {
            KeysIn::Keys
        } else if let Some(command) = self.get(profile, "credential_process") {
            KeysIn::Process(command.to_string())
        } else {
            KeysIn::Keys
        }
    }

    /// `key` of `profile`: the credentials file's `[NAME]` first, as the AWS CLI merges them.
    pub(super) fn get(&self, profile: &str, key: &str) -> Option<&str> {
        let section = self.credentials.0.section(Some(profile));
        section
            .and_then(|section| section.get(key))
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .or_else(|| config_setting(&self.config.0, profile, key))
    }

    /// Says that neither file has `profile`.
    pub fn absent(&self, profile: &str) -> String {
        format!(
            "profile {profile:?} is in neither {} nor {}",
            self.config.1.display(),
            self.credentials.1.display()
        )
    }

    /// Whether either file has `profile`.
    pub fn has(&self, profile: &str) -> bool {
        let named = format!("profile {profile}");
        self.credentials.0.section(Some(profile)).is_some()
            || self.config.0.section(Some(named.as_str())).is_some()
            || (profile == "default" && self.config.0.section(Some("default")).is_some())
    }
}

/// `key` of `profile` in a parsed config file: `[profile NAME]`, or `[default]` (also written
/// `[profile default]`).
fn config_setting<'a>(file: &'a Ini, profile: &str, key: &str) -> Option<&'a str> {
    let named = format!("profile {profile}");
    let sections = match profile {
        "default" => vec!["default", named.as_str()],
        _ => vec![named.as_str()],
    };
    sections
        .into_iter()
        .filter_map(|name| file.section(Some(name))?.get(key))
        .map(str::trim)
        .find(|value| !value.is_empty())
}

/// `key` of `service` in `[services NAME]`, where a service's settings are the lines indented
/// under `service =` (the ini reader keeps their order).
fn service_setting(file: &Ini, services: &str, service: &str, key: &str) -> Option<String> {
    let section = file.section(Some(format!("services {services}")))?;
    let mut current = None;
    for (name, value) in section.iter() {
        let value = value.trim();
        if value.is_empty() {
            current = Some(name);
        } else if current == Some(service) && name == key {
            return Some(value.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment of these variables alone.
    fn env_of(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.clone())
        }
    }

    /// Shared files of these texts, read with `$AWS_PROFILE` set to `profile` if given.
    fn files_of(config: &str, credentials: &str, profile: Option<&str>) -> SharedFiles {
        let dir = tempfile::tempdir().unwrap();
        let aws = dir.path().join(".aws");
        std::fs::create_dir(&aws).unwrap();
        std::fs::write(aws.join("config"), config).unwrap();
        std::fs::write(aws.join("credentials"), credentials).unwrap();
        let home = dir.path().display().to_string();
        let mut vars = vec![("HOME", home)];
        if let Some(profile) = profile {
            vars.push(("AWS_PROFILE", profile.to_string()));
        }
        SharedFiles::read(env_of(vars)).unwrap()
    }

    #[test]
    fn a_profiles_settings_are_read_as_the_aws_cli_reads_them() {
        let text = "[default]\nregion = eu-west-1\n\n[profile work]\nregion = ap-south-2\n\
                    endpoint_url = http://localhost:9000\noutput = json\n\n\
                    [profile keys-only]\naws_access_key_id = AKIA\n\n\
                    [work]\nregion = wrong-section\n";
        let files = files_of(text, "", None);
        let cases = [
            ("default", "region", Some("eu-west-1")),
            ("work", "region", Some("ap-south-2")),
            ("work", "endpoint_url", Some("http://localhost:9000")),
            ("default", "endpoint_url", None),
            ("keys-only", "region", None),
            ("absent", "region", None),
        ];
        for (profile, key, expected) in cases {
            let found = files.setting(Some(profile), key).map(|(value, _)| value);
            assert_eq!(found.as_deref(), expected, "{profile} {key}");
        }
        let spelled = files_of("[profile default]\nregion = us-west-2\n", "", None);
        let found = spelled.setting(None, "region").map(|(value, _)| value);
        assert_eq!(found.as_deref(), Some("us-west-2"));
        let empty = files_of("[default]\nregion =\n", "", None);
        assert_eq!(empty.setting(None, "region"), None);
    }

    #[test]
    fn a_services_section_names_each_services_endpoint_before_the_profiles() {
        let text = "[profile dev]\nservices = local\nendpoint_url = http://everything:1\n\
                    [profile plain]\nendpoint_url = http://everything:2\n\
                    [services local]\ns3 =\n  addressing_style = path\n  endpoint_url = http://s3:9000\n\
                    sts =\n  endpoint_url = http://sts:9001\n";
        let files = files_of(text, "", None);
        let cases = [
            ("dev", "s3", "http://s3:9000", "services \"local\""),
            ("dev", "sts", "http://sts:9001", "services \"local\""),
            ("dev", "sqs", "http://everything:1", "profile \"dev\""),
            ("plain", "s3", "http://everything:2", "profile \"plain\""),
        ];
        for (profile, service, url, from) in cases {
            let (found, source) = files.endpoint(Some(profile), service).unwrap();
            assert_eq!(found, url, "{profile} {service}");
            assert!(source.starts_with(from), "{profile} {service}: {source}");
        }
    }

    #[test]
    fn a_profiles_keys_are_fetched_the_way_it_holds_them() {
        let config = "[profile sso]\nsso_session = corp\nsso_account_id = 1\n\
                      [profile legacy-sso]\nsso_start_url = https://x\n\
                      [profile vault]\ncredential_process = aws-vault export x\n\
                      [profile both]\ncredential_process = aws-vault export y\n\
                      [profile in-config]\naws_access_key_id = AKIA\n";
        let credentials = "[both]\naws_access_key_id = AKIB\naws_secret_access_key = s\n";
        let files = files_of(config, credentials, None);
        let cases = [
            ("sso", KeysIn::Sso),
            ("legacy-sso", KeysIn::Sso),
            ("vault", KeysIn::Process("aws-vault export x".into())),
            ("both", KeysIn::Keys),
            ("in-config", KeysIn::Keys),
            ("absent", KeysIn::Keys),
        ];
        for (profile, expected) in cases {
            assert_eq!(files.keys_in(profile), expected, "{profile}");
        }
    }

    #[test]
    fn the_files_and_profile_come_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config");
        let text = "[default]\nregion = eu-north-1\n[profile b]\nregion = sa-east-1\n";
        std::fs::write(&file, text).unwrap();
        let path = file.display().to_string();
        let config = ("AWS_CONFIG_FILE", path.clone());
        let region = |profile: Option<&str>, vars: Vec<(&'static str, String)>| {
            let files = SharedFiles::read(env_of(vars)).unwrap();
            files.setting(profile, "region").map(|(region, _)| region)
        };
        let found = SharedFiles::read(env_of(vec![config.clone()])).unwrap();
        let from = format!("profile \"default\" of {path}");
        let expected = Some(("eu-north-1".to_string(), from));
        assert_eq!(found.setting(None, "region"), expected);
        let named = ("AWS_PROFILE", "b".to_string());
        let chosen = region(None, vec![config.clone(), named]);
        assert_eq!(chosen.as_deref(), Some("sa-east-1"));
        let other = ("AWS_PROFILE", "x".to_string());
        let explicit = region(Some("b"), vec![config, other]);
        assert_eq!(explicit.as_deref(), Some("sa-east-1"));
        // Without AWS_CONFIG_FILE, ~/.aws/config: there is none under this HOME.
        let home = ("HOME", dir.path().display().to_string());
        assert_eq!(region(None, vec![home]), None);
        assert_eq!(region(None, vec![]), None);
        // A file that does not parse is refused, naming it.
        std::fs::write(&file, "[default\nregion = x\n").unwrap();
        let broken = SharedFiles::read(env_of(vec![("AWS_CONFIG_FILE", path.clone())]));
        assert!(broken.is_err_and(|error| error.starts_with(&path)));
    }
}
