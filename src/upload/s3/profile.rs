//! The AWS CLI's shared config file (`$AWS_CONFIG_FILE`, else `~/.aws/config`): the region and
//! endpoint of a profile, taken when a remote names none and the environment does not either,
//! as the AWS CLI and SDKs take them. (Credentials from the shared files are `credentials`'
//! business.)

use std::path::{Path, PathBuf};

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
    let file = ini::Ini::load_from_str(text).ok()?;
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
        .map(str::to_string)
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
}
