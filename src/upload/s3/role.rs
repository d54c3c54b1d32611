//! Profiles that assume a role, as the AWS CLI reads them from the shared files: `role_arn`
//! with `source_profile` (a profile of keys, SSO or a `credential_process`, or one that assumes
//! a role of its own), `credential_source` or `web_identity_token_file`, and
//! `role_session_name`, `external_id`, `duration_seconds`. `sts` asks STS for the keys.

use super::profile::SharedFiles;

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
    /// `web_identity_token_file`: no keys, the token in this file asks for the role's.
    WebIdentity(String),
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
            RoleSource::WebIdentity(file) => format!("the web identity token in {file}"),
        };
        format!(
            "role {} of profile {:?}, assumed with {source}",
            self.role_arn, self.profile
        )
    }
}

impl SharedFiles {
    /// The role `profile` (else the default profile) assumes, if it names one; an error names
    /// the profile, the files and what is wrong.
    pub fn assumed_role(&self, profile: Option<&str>) -> Result<Option<AssumeRole>, String> {
        let profile = self.profile_name(profile);
        if self.get(profile, "role_arn").is_none() {
            return Ok(None);
        }
        self.role(profile, &mut Vec::new()).map(Some)
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
            (None, None) => {
                return match self.get(profile, "web_identity_token_file") {
                    Some(file) => Ok(RoleSource::WebIdentity(file.to_string())),
                    None => Err(
                        "role_arn needs source_profile, credential_source or web_identity_token_file"
                            .into(),
                    ),
                };
            }
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

    /// The role each profile of these files assumes, or what is wrong with it.
    #[test]
    fn roles_are_read_as_the_aws_cli_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let config = "[default]\nregion = eu-west-1\n\
            [profile work]\nrole_arn = arn:aws:iam::1:role/up\nsource_profile = base\n\
            role_session_name = nightly\nexternal_id = x-1\nduration_seconds = 1800\n\
            [profile chained]\nrole_arn = arn:aws:iam::1:role/two\nsource_profile = work\n\
            [profile on-ec2]\nrole_arn = arn:aws:iam::1:role/ec2\ncredential_source = Ec2InstanceMetadata\n\
            [profile ci]\nrole_arn = arn:aws:iam::1:role/ci\nweb_identity_token_file = /run/token\n\
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
        let aws = dir.path().join(".aws");
        std::fs::create_dir(&aws).unwrap();
        std::fs::write(aws.join("config"), config).unwrap();
        std::fs::write(aws.join("credentials"), credentials).unwrap();
        let home = dir.path().display().to_string();
        let files = |profile: &'static str| {
            let env = |name: &str| match name {
                "HOME" => Some(home.clone()),
                "AWS_PROFILE" => Some(profile.to_string()),
                _ => None,
            };
            SharedFiles::read(env).unwrap()
        };
        let role = |profile: &'static str| files(profile).assumed_role(None);
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
            ("ci", RoleSource::WebIdentity("/run/token".into())),
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
                "role_arn needs source_profile, credential_source or web_identity_token_file",
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
                error.matches("/.aws/config or ").count(),
                1,
                "said once: {error}"
            );
        }
        // An explicit profile wins over $AWS_PROFILE.
        let named = files("work").assumed_role(Some("on-ec2")).unwrap();
        let named = named.unwrap();
        assert_eq!(named.profile, "on-ec2");
    }
}
