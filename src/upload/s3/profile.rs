//! The AWS CLI's shared files (`$AWS_CONFIG_FILE`, else `~/.aws/config`, and
//! `$AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`): the region and endpoint of a
//! profile, taken when a remote names none and the environment does not either, and the role a
//! profile assumes, as the AWS CLI and SDKs read them. (Keys from the shared files are
//! `credentials`' business.)

use std::path::{Path, PathBuf};

use ini::Ini;

/// `key` (`region`, `endpoint_url`) of `profile` (else `$AWS_PROFILE`, else `default`) in the
/// shared config file, and where it was found, for `ferry config check`. `env` reads an
/// environment variable.
pub fn profile_setting(
    profile: Option<&str>,
    key: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Option<(String, String)> {
    let set = |name: &str| env(name).filter(|value| !value.is_empty());
    let path = set("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| set("HOME").map(|home| Path::new(&home).join(".aws").join("config")))?;
    let text = std::fs::read_to_string(&path).ok()?;
    let profile = profile
        .map(str::to_string)
        .or_else(|| set("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let value = setting_in(&text, &profile, key)?;
    Some((value, format!("profile {profile:?} of {}", path.display())))
}

/// `key` of `profile` in a config file's text: `[profile NAME]`, or `[default]` (also written
/// `[profile default]`).
fn setting_in(text: &str, profile: &str, key: &str) -> Option<String> {
    let file = Ini::load_from_str(text).ok()?;
    config_setting(&file, profile, key).map(str::to_string)
}

/// `key` of `profile` in a parsed config file.
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

/// A profile that assumes a role (`role_arn`): the AWS CLI's "assume role" profiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    /// The profile that names the role.
    pub profile: String,
    pub role_arn: String,
    /// `role_session_name`, else "ferry".
    pub session_name: String,
    pub external_id: Option<String>,
    /// `duration_seconds`, else STS's default (an hour).
    pub duration_seconds: Option<u32>,
    /// Whose keys ask STS for the role's.
    pub source: RoleSource,
}

/// Whose keys sign the AssumeRole call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleSource {
    /// `source_profile` naming a profile of keys, SSO or a `credential_process`.
    Profile(String),
    /// `source_profile` naming a profile that assumes a role of its own (role chaining).
    Role(Box<AssumeRole>),
    /// `credential_source = Environment`: `$AWS_ACCESS_KEY_ID` and its secret.
    Environment,
    /// `credential_source = Ec2InstanceMetadata`: the instance's role.
    Ec2InstanceMetadata,
    /// `credential_source = EcsContainer`: the ECS task's role.
    EcsContainer,
}

impl AssumeRole {
    /// Whose keys assume the role, for `config check` and messages.
    pub fn describe(&self) -> String {
        let source = match &self.source {
            RoleSource::Profile(name) => format!("profile {name:?}"),
            RoleSource::Role(role) => role.describe(),
            RoleSource::Environment => "the environment's keys".into(),
            RoleSource::Ec2InstanceMetadata => "the EC2 instance's role".into(),
            RoleSource::EcsContainer => "the ECS task's role".into(),
        };
        format!(
            "role {} of profile {:?}, assumed with {source}",
            self.role_arn, self.profile
        )
    }
}

/// The role `profile` (else `$AWS_PROFILE`, else `default`) assumes, if it names one; an error
/// names the profile, its file and what is wrong.
pub fn assumed_role(
    profile: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<AssumeRole>, String> {
    let set = |name: &str| env(name).filter(|value| !value.is_empty());
    let profile = profile
        .map(str::to_string)
        .or_else(|| set("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let files = SharedFiles::read(&set)?;
    if files.get(&profile, "role_arn").is_none() {
        return Ok(None);
    }
    files.role(&profile, &mut Vec::new()).map(Some)
}

/// Both shared files, parsed; a file that is not there is empty.
struct SharedFiles {
    config: (Ini, PathBuf),
    credentials: (Ini, PathBuf),
}

impl SharedFiles {
    fn read(env: &impl Fn(&str) -> Option<String>) -> Result<SharedFiles, String> {
        let home = env("HOME").map(PathBuf::from).unwrap_or_default();
        let path = |var: &str, name: &str| {
            env(var)
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
        })
    }

    /// `key` of `profile`: the credentials file's `[NAME]` first, as the AWS CLI merges them.
    fn get(&self, profile: &str, key: &str) -> Option<&str> {
        let section = self.credentials.0.section(Some(profile));
        section
            .and_then(|section| section.get(key))
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .or_else(|| config_setting(&self.config.0, profile, key))
    }

    fn has(&self, profile: &str) -> bool {
        let named = format!("profile {profile}");
        self.credentials.0.section(Some(profile)).is_some()
            || self.config.0.section(Some(named.as_str())).is_some()
            || (profile == "default" && self.config.0.section(Some("default")).is_some())
    }

    /// The role of `profile`, which has `role_arn`; `seen` are the profiles that led here.
    fn role(&self, profile: &str, seen: &mut Vec<String>) -> Result<AssumeRole, String> {
        let get = |key: &str| self.get(profile, key);
        let problem = |message: String| {
            let files = format!(
                "{} or {}",
                self.config.1.display(),
                self.credentials.1.display()
            );
            format!("profile {profile:?} of {files}: {message}")
        };
        if get("mfa_serial").is_some() {
            return Err(problem(
                "mfa_serial asks for a code at every start, which a daemon cannot type; \
                 use a credential_process (such as aws-vault) instead"
                    .into(),
            ));
        }
        seen.push(profile.to_string());
        let source = match self.role_source(profile, seen).map_err(problem)? {
            // Role chaining: the source profile assumes a role of its own.
            RoleSource::Profile(name)
                if name != profile && self.get(&name, "role_arn").is_some() =>
            {
                RoleSource::Role(Box::new(self.role(&name, seen)?))
            }
            source => source,
        };
        let duration_seconds = get("duration_seconds")
            .map(|text| duration_seconds(text).map_err(problem))
            .transpose()?;
        Ok(AssumeRole {
            profile: profile.to_string(),
            role_arn: get("role_arn").unwrap_or_default().to_string(),
            session_name: get("role_session_name").unwrap_or("ferry").to_string(),
            external_id: get("external_id").map(str::to_string),
            duration_seconds,
            source,
        })
    }

    /// `source_profile` or `credential_source` of `profile`, checked.
    fn role_source(&self, profile: &str, seen: &[String]) -> Result<RoleSource, String> {
        let source = match (
            self.get(profile, "source_profile"),
            self.get(profile, "credential_source"),
        ) {
            (Some(_), Some(_)) => {
                return Err("give source_profile or credential_source, not both".into());
            }
            (None, None) => return Err("role_arn needs source_profile or credential_source".into()),
            (None, Some(source)) => return credential_source(source),
            (Some(source), None) => source,
        };
        if source == profile {
            // A profile may hold the keys that assume its own role.
            return Ok(RoleSource::Profile(source.to_string()));
        }
        if seen.iter().any(|name| name == source) {
            return Err(format!(
                "source_profile loops: {} -> {source}",
                seen.join(" -> ")
            ));
        }
        if !self.has(source) {
            return Err(format!("source_profile {source:?} is in neither file"));
        }
        Ok(RoleSource::Profile(source.to_string()))
    }
}

fn credential_source(name: &str) -> Result<RoleSource, String> {
    match name {
        "Environment" => Ok(RoleSource::Environment),
        "Ec2InstanceMetadata" => Ok(RoleSource::Ec2InstanceMetadata),
        "EcsContainer" => Ok(RoleSource::EcsContainer),
        other => Err(format!(
            "credential_source {other:?} is not one of Environment, Ec2InstanceMetadata, EcsContainer"
        )),
    }
}

/// `duration_seconds`: STS takes 900 (15 minutes) to 43,200 (12 hours).
fn duration_seconds(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(seconds) if (900..=43_200).contains(&seconds) => Ok(seconds),
        _ => Err(format!(
            "duration_seconds {text:?} is not a number of seconds from 900 to 43200"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profiles_settings_are_read_as_the_aws_cli_reads_them() {
        let text = "[default]\nregion = eu-west-1\n\n[profile work]\nregion = ap-south-2\n\
                    endpoint_url = http://localhost:9000\noutput = json\n\n\
                    [profile keys-only]\naws_access_key_id = AKIA\n\n\
                    [work]\nregion = wrong-section\n";
        let cases = [
            ("default", "region", Some("eu-west-1")),
            ("work", "region", Some("ap-south-2")),
            ("work", "endpoint_url", Some("http://localhost:9000")),
            ("default", "endpoint_url", None),
            ("keys-only", "region", None),
            ("absent", "region", None),
        ];
        for (profile, key, expected) in cases {
            let found = setting_in(text, profile, key);
            assert_eq!(found.as_deref(), expected, "{profile} {key}");
        }
        let spelled = "[profile default]\nregion = us-west-2\n";
        assert_eq!(
            setting_in(spelled, "default", "region").as_deref(),
            Some("us-west-2")
        );
        assert_eq!(
            setting_in("[default]\nregion =\n", "default", "region"),
            None
        );
    }

    /// An environment of these variables alone.
    fn env_of(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.clone())
        }
    }

    #[test]
    fn the_file_and_profile_come_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config");
        let text = "[default]\nregion = eu-north-1\n[profile b]\nregion = sa-east-1\n";
        std::fs::write(&file, text).unwrap();
        let path = file.display().to_string();
        let config = ("AWS_CONFIG_FILE", path.clone());
        let region = |profile: Option<&str>, vars: Vec<(&'static str, String)>| {
            profile_setting(profile, "region", env_of(vars)).map(|(region, _)| region)
        };

        let found = profile_setting(None, "region", env_of(vec![config.clone()]));
        let from = format!("profile \"default\" of {path}");
        assert_eq!(found, Some(("eu-north-1".into(), from)));
        let named = ("AWS_PROFILE", "b".to_string());
        assert_eq!(
            region(None, vec![config.clone(), named]).as_deref(),
            Some("sa-east-1")
        );
        let other = ("AWS_PROFILE", "x".to_string());
        assert_eq!(
            region(Some("b"), vec![config, other]).as_deref(),
            Some("sa-east-1")
        );
        // Without AWS_CONFIG_FILE, ~/.aws/config: there is none under this HOME.
        let home = ("HOME", dir.path().display().to_string());
        assert_eq!(region(None, vec![home]), None);
        assert_eq!(region(None, vec![]), None);
    }

    /// The role each profile of these files assumes, or what is wrong with it.
    #[test]
    fn roles_are_read_as_the_aws_cli_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let config = "[default]\nregion = eu-west-1\n\
            [profile work]\nrole_arn = arn:aws:iam::1:role/up\nsource_profile = base\n\
            role_session_name = nightly\nexternal_id = x-1\nduration_seconds = 1800\n\
            [profile chained]\nrole_arn = arn:aws:iam::1:role/two\nsource_profile = work\n\
            [profile on-ec2]\nrole_arn = arn:aws:iam::1:role/ec2\ncredential_source = Ec2InstanceMetadata\n\
            [profile own-keys]\nrole_arn = arn:aws:iam::1:role/own\nsource_profile = own-keys\n\
            [profile loop-a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = loop-b\n\
            [profile loop-b]\nrole_arn = arn:aws:iam::1:role/b\nsource_profile = loop-a\n\
            [profile mfa]\nrole_arn = arn:aws:iam::1:role/m\nsource_profile = base\nmfa_serial = arn:mfa\n\
            [profile orphan]\nrole_arn = arn:aws:iam::1:role/o\nsource_profile = nobody\n\
            [profile sourceless]\nrole_arn = arn:aws:iam::1:role/s\n\
            [profile both]\nrole_arn = arn:aws:iam::1:role/b\nsource_profile = base\ncredential_source = Environment\n\
            [profile odd-source]\nrole_arn = arn:aws:iam::1:role/s\ncredential_source = Laptop\n\
            [profile long]\nrole_arn = arn:aws:iam::1:role/l\nsource_profile = base\nduration_seconds = 90000\n";
        let credentials = "[base]\naws_access_key_id = AKIA\naws_secret_access_key = s\n\
            [own-keys]\naws_access_key_id = AKIB\naws_secret_access_key = t\n\
            [in-credentials]\nrole_arn = arn:aws:iam::1:role/c\nsource_profile = base\n";
        std::fs::write(dir.path().join("config"), config).unwrap();
        std::fs::write(dir.path().join("credentials"), credentials).unwrap();
        let home = dir.path().display().to_string();
        let env = |profile: &'static str| {
            let files = vec![
                ("AWS_CONFIG_FILE", format!("{home}/config")),
                ("AWS_SHARED_CREDENTIALS_FILE", format!("{home}/credentials")),
                ("AWS_PROFILE", profile.to_string()),
            ];
            env_of(files)
        };
        let role = |profile: &'static str| assumed_role(None, env(profile));
        let work = role("work").unwrap().unwrap();
        assert_eq!(
            (work.role_arn.as_str(), work.session_name.as_str()),
            ("arn:aws:iam::1:role/up", "nightly")
        );
        assert_eq!(work.external_id.as_deref(), Some("x-1"));
        assert_eq!(work.duration_seconds, Some(1800));
        assert_eq!(work.source, RoleSource::Profile("base".into()));
        let chained = role("chained").unwrap().unwrap();
        assert_eq!(chained.source, RoleSource::Role(Box::new(work)));
        assert_eq!(chained.session_name, "ferry");
        let sources = [
            ("on-ec2", RoleSource::Ec2InstanceMetadata),
            ("own-keys", RoleSource::Profile("own-keys".into())),
            ("in-credentials", RoleSource::Profile("base".into())),
        ];
        for (profile, source) in sources {
            assert_eq!(role(profile).unwrap().unwrap().source, source, "{profile}");
        }
        assert_eq!(role("default").unwrap(), None);
        assert_eq!(role("base").unwrap(), None);
        let refused = [
            ("loop-a", "source_profile loops: loop-a -> loop-b -> loop-a"),
            ("mfa", "mfa_serial asks for a code at every start"),
            ("orphan", "source_profile \"nobody\" is in neither file"),
            (
                "sourceless",
                "role_arn needs source_profile or credential_source",
            ),
            ("both", "give source_profile or credential_source, not both"),
            ("odd-source", "credential_source \"Laptop\" is not one of"),
            (
                "long",
                "duration_seconds \"90000\" is not a number of seconds from 900 to 43200",
            ),
        ];
        for (profile, message) in refused {
            let error = role(profile).unwrap_err();
            assert!(error.contains(message), "{profile}: {error}");
            assert!(error.starts_with("profile \""), "{profile}: {error}");
            assert_eq!(
                error.matches("/config or ").count(),
                1,
                "said once: {error}"
            );
        }
        // An explicit profile wins over $AWS_PROFILE.
        let named = assumed_role(Some("on-ec2"), env("work")).unwrap().unwrap();
        assert_eq!(named.profile, "on-ec2");
    }
}
