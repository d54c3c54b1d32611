use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn defaults() -> Defaults {
    Defaults {
        data_dir: PathBuf::from("/data/ferry"),
        runtime_dir: Some(PathBuf::from("/run/user/1000")),
        config_file: PathBuf::from("/nonexistent/ferry/config.toml"),
    }
}

/// Parses `text` as if it were `dir/config.toml`, with a token file `dir/token`.
fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    std::fs::write(dir.join("token"), "secret-token").unwrap();
    parse(text, &defaults(), &dir.join("config.toml"))
}

fn problems(result: Result<Config, ConfigError>) -> Vec<Problem> {
    match result {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn the_example_documents_and_parses() {
    let dir = tempfile::tempdir().unwrap();
    let example = include_str!("../../config.example.toml")
        .replace("/etc/ferry/main.token", "token")
        .replace("/etc/ferry/archive.secret", "token");
    let config = parse_in(dir.path(), &example).unwrap();
    assert_eq!(config.daemon.transfers, 4);
    assert_eq!(config.daemon.socket, PathBuf::from("/run/ferry/ferry.sock"));
    assert_eq!(
        config.daemon.orphan_cleanup,
        Some(Duration::from_secs(24 * 3600))
    );
    let RemoteConfig::S3(archive) = &config.remotes["archive"] else {
        panic!("archive is s3");
    };
    assert_eq!(
        (archive.bucket.as_str(), archive.prefix.as_str()),
        ("acme-archive", "ferry/")
    );
    assert_eq!(config.upload.chunk_size, crate::upload::ChunkSize::Auto);
    assert_eq!(config.upload.chunk_size_max, 256 * 1024 * 1024);
    assert_eq!(config.upload.retry.backoff_max, Duration::from_secs(300));
    let watch = &config.watches[0];
    assert_eq!(watch.prefix, "outbox/");
    assert_eq!(watch.metadata["project"], "atlas");
    assert_eq!(watch.settle, Duration::from_secs(1));
    let RemoteConfig::Native {
        token,
        workspace_id,
        ..
    } = &config.remotes["main"]
    else {
        panic!("main is native");
    };
    assert_eq!(
        (token.0.as_str(), workspace_id.as_str()),
        ("secret-token", "ws_123abc")
    );
    assert!(
        !config.render().contains("secret-token"),
        "tokens are never shown"
    );
    assert!(!format!("{config:?}").contains("secret-token"));
}

#[test]
fn every_problem_is_reported_at_once_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[daemon]
transfers = 0
colour = "blue"

[remotes.main]
kind = "native"
url = "ftp://nope"
workspace_id = "ws"
token_file = "token"

[upload]
chunk_size = "lots"

[[watch]]
path = "/srv/a"
remote = "elsewhere"
settle = "soon"
after_upload = "shred"
"#;
    let found = problems(parse_in(dir.path(), text));
    let expected = [
        ("daemon.transfers", 3),
        ("daemon.colour", 4),
        ("remotes.main.url", 8),
        ("upload.chunk_size", 13),
        ("watch[0].remote", 17),
        ("watch[0].settle", 18),
        ("watch[0].after_upload", 19),
    ];
    for (key, line) in expected {
        assert!(
            found.iter().any(|p| p.key == key && p.line == Some(line)),
            "missing {key} at line {line} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn s3_remotes_are_read_with_their_credentials_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let watch = "[[watch]]\npath = \"/a\"\nremote = \"main\"\n";
    let text = format!(
        "[remotes.main]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"eu-west-1\"\nbucket = \"photos\"\nprefix = \"cam/\"\nchecksum = \"md5\"\nstorage_class = \"STANDARD_IA\"\naccess_key_id = \"AKID\"\nsecret_access_key_file = \"token\"\nchunk_size = \"16MiB\"\n{watch}"
    );
    let config = parse_in(dir.path(), &text).unwrap();
    let RemoteConfig::S3(s3) = &config.remotes["main"] else {
        panic!("an s3 remote: {:?}", config.remotes);
    };
    assert_eq!(
        (s3.bucket.as_str(), s3.prefix.as_str(), s3.region.as_str()),
        ("photos", "cam/", "eu-west-1")
    );
    assert_eq!(s3.checksum, crate::upload::s3::Checksum::Md5);
    assert_eq!(s3.storage_class.as_deref(), Some("STANDARD_IA"));
    assert_eq!(
        s3.credentials,
        crate::upload::s3::CredentialSource::Keys {
            access_key_id: "AKID".into(),
            secret_access_key: "secret-token".into(),
        }
    );
    let rendered = config.render();
    assert!(
        rendered.contains("bucket URL: http://127.0.0.1:9000/photos/"),
        "{rendered}"
    );
    assert!(
        !rendered.contains("secret-token"),
        "the secret is never shown: {rendered}"
    );

    // A remote's `profile` is read from the AWS shared files, which this process's environment
    // names: tests/it/s3_keys.rs gives them to `ferry` processes.

    let cases = [
        ("bucket = \"-bad-name\"", "remotes.main.bucket"),
        (
            "bucket = \"ok-bucket\"\nchecksum = \"sha1\"",
            "remotes.main.checksum",
        ),
        (
            "bucket = \"ok-bucket\"\nprefix = \"/abs\"",
            "remotes.main.prefix",
        ),
        (
            "bucket = \"ok-bucket\"\nendpoint = \"ftp://x\"",
            "remotes.main.endpoint",
        ),
        (
            "bucket = \"ok-bucket\"\naccess_key_id = \"A\"",
            "remotes.main",
        ),
        (
            "bucket = \"ok-bucket\"\nprofile = \"p\"\naccess_key_id = \"A\"\nsecret_access_key_file = \"token\"",
            "remotes.main.profile",
        ),
        (
            "bucket = \"ok-bucket\"\nsecret_access_key = \"inline\"",
            "remotes.main.secret_access_key",
        ),
    ];
    for (keys, key) in cases {
        let text = format!("[remotes.main]\nkind = \"s3\"\n{keys}\n{watch}");
        let found = problems(parse_in(dir.path(), &text));
        assert!(
            found.iter().any(|p| p.key == key),
            "{key} not in {found:#?}"
        );
    }
}

#[test]
fn missing_and_malformed_pieces_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[watch]]\nremote = \"main\"\n[remotes.main]\nkind = \"native\"\nurl = \"http://x\"\nworkspace_id = \"w\"\ntoken_file = \"token\"\n",
            "watch[0].path",
        ),
        (
            "[remotes.main]\nkind = \"tus\"\n[[watch]]\npath = \"/a\"\nremote = \"main\"\n",
            "remotes.main.kind",
        ),
        (
            "[remotes.main]\nkind = \"s3\"\n[[watch]]\npath = \"/a\"\nremote = \"main\"\n",
            "remotes.main.bucket",
        ),
        (
            "[remotes.main]\nkind = \"native\"\nurl = \"http://x\"\nworkspace_id = \"w\"\n[[watch]]\npath = \"/a\"\nremote = \"main\"\n",
            "remotes.main",
        ),
        (
            "[remotes.main]\nkind = \"native\"\nurl = \"http://x\"\nworkspace_id = \"w\"\ntoken_file = \"missing\"\n[[watch]]\npath = \"/a\"\nremote = \"main\"\n",
            "remotes.main.token_file",
        ),
        ("[[watch]\npath = 1", "(syntax)"),
    ];
    for (text, key) in cases {
        let found = problems(parse_in(dir.path(), text));
        assert!(
            found.iter().any(|p| p.key == key),
            "{key} not in {found:#?}"
        );
    }
}

#[test]
fn a_google_cloud_storage_bucket_name_is_taken_and_addressed_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[remotes.main]\nkind = \"s3\"\nendpoint = \"https://storage.googleapis.com\"\nbucket = \"media_2019.example.com\"\n";
    let rendered = parse_in(dir.path(), text).unwrap().render();
    assert!(
        rendered.contains("# bucket URL: https://storage.googleapis.com/media_2019.example.com/"),
        "{rendered}"
    );
}

#[test]
fn remotes_alone_parse_for_push_and_are_refused_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[remotes.main]\nkind = \"native\"\nurl = \"http://x\"\nworkspace_id = \"w\"\ntoken_file = \"token\"\n";
    let config = parse_in(dir.path(), text).unwrap();
    assert!(config.watches.is_empty());
    assert!(config.remotes.contains_key("main"));
    let refused = crate::config::check_paths(&config);
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0].key, "watch");
    assert!(refused[0].message.contains("ferry push --remote"));
}

#[test]
fn the_builtin_default_watches_an_outbox_into_the_embedded_receiver() {
    let config = builtin(&defaults());
    assert_eq!(config.watches[0].path, PathBuf::from("/data/ferry/outbox"));
    assert_eq!(
        config.daemon.socket,
        PathBuf::from("/run/user/1000/ferry.sock")
    );
    assert!(matches!(
        config.remotes["embedded"],
        RemoteConfig::Embedded { .. }
    ));
    let no_runtime = Defaults {
        runtime_dir: None,
        ..defaults()
    };
    assert_eq!(
        builtin(&no_runtime).daemon.socket,
        PathBuf::from("/data/ferry/ferry.sock")
    );
}

#[test]
fn globs_and_remote_paths() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[remotes.r]\nkind = \"native\"\nurl = \"http://x\"\nworkspace_id = \"w\"\ntoken_file = \"token\"\n\
                [[watch]]\npath = \"/w\"\nremote = \"r\"\nprefix = \"in/\"\ninclude = [\"**/*.csv\", \"*.txt\"]\nignore = [\"secret/**\"]\n";
    let config = parse_in(dir.path(), text).unwrap();
    let watch = &config.watches[0];
    for (path, accepted) in [
        ("/w/a.csv", true),
        ("/w/deep/er/b.csv", true),
        ("/w/notes.txt", true),
        ("/w/a.bin", false),
        ("/w/secret/x.csv", false),
        ("/w/draft.csv.tmp", false),
        ("/w/.#a.csv", false),
        ("/w/~lock.csv", false),
        ("/elsewhere/a.csv", false),
    ] {
        assert_eq!(watch.accepts(Path::new(path)), accepted, "{path}");
    }
    assert_eq!(
        watch.remote_path(Path::new("/w/deep/b.csv")).unwrap(),
        "in/deep/b.csv"
    );
}

#[test]
fn a_remote_may_set_its_own_part_sizes_and_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let remote = |name: &str, extra: &str| {
        format!(
            "[remotes.{name}]\nkind = \"native\"\nurl = \"http://x\"\nworkspace_id = \"w\"\ntoken_file = \"token\"\n{extra}"
        )
    };
    let text = format!(
        "[upload]\nchunk_size_max = \"64MiB\"\n{}{}[[watch]]\npath = \"/w\"\nremote = \"lan\"\n",
        remote("lan", "chunk_size = \"16MiB\"\nparallel_parts = 2\n"),
        remote("wan", "")
    );
    let config = parse_in(dir.path(), &text).unwrap();
    let lan = config.upload_for("lan");
    assert_eq!(
        lan.chunk_size,
        crate::upload::ChunkSize::Fixed(16 * 1024 * 1024)
    );
    assert_eq!(lan.parallel_parts, crate::upload::PartsInFlight::Fixed(2));
    assert_eq!(
        lan.chunk_size_max,
        64 * 1024 * 1024,
        "the rest comes from [upload]"
    );
    assert_eq!(config.upload_for("wan"), config.upload);
    assert!(config.render().contains("[remotes.lan]\nkind = \"native\""));

    let bad = format!(
        "{}[[watch]]\npath = \"/w\"\nremote = \"r\"\n",
        remote(
            "r",
            "chunk_size_min = \"8MiB\"\nchunk_size_max = \"1MiB\"\nparallel_parts = \"lots\"\n"
        )
    );
    let problems = parse_in(dir.path(), &bad).unwrap_err().to_string();
    assert!(problems.contains("remotes.r.chunk_size_min"), "{problems}");
    assert!(problems.contains("remotes.r.parallel_parts"), "{problems}");
}

#[test]
fn bandwidth_limits_are_read_for_the_daemon_and_per_remote_and_bad_ones_named_with_their_line() {
    use crate::upload::bwlimit::Bandwidth;
    let dir = tempfile::tempdir().unwrap();
    let remote = |name: &str, extra: &str| {
        format!(
            "[remotes.{name}]\nkind = \"native\"\nurl = \"http://x\"\nworkspace_id = \"w\"\ntoken_file = \"token\"\n{extra}"
        )
    };
    let text = format!(
        "[upload]\nbandwidth = \"Mon-08:00,512KiB 18:00,off\"\n{}{}[[watch]]\npath = \"/w\"\nremote = \"lan\"\n",
        remote("lan", "bandwidth = \"off\"\n"),
        remote("wan", "bandwidth = \"5M\"\n")
    );
    let config = parse_in(dir.path(), &text).unwrap();
    assert_eq!(config.bandwidth.to_string(), "Mon-08:00,512KiB 18:00,off");
    assert_eq!(config.bandwidth.rate_at(8 * 60), Some(512 * 1024));
    assert_eq!(config.remote_bandwidth["lan"], Bandwidth::Unlimited);
    assert_eq!(
        config.remote_bandwidth["wan"],
        Bandwidth::Fixed(5 * 1024 * 1024)
    );
    let rendered = config.render();
    assert!(
        rendered.contains("bandwidth = \"Mon-08:00,512KiB 18:00,off\"")
            && rendered.contains("bandwidth = \"5.0 MiB/s\""),
        "{rendered}"
    );

    let bad = format!(
        "[upload]\nbandwidth = \"fast\"\n{}[[watch]]\npath = \"/w\"\nremote = \"r\"\n",
        remote("r", "bandwidth = \"25:00,1M\"\n")
    );
    let found = problems(parse_in(dir.path(), &bad));
    let named = |key: &str| found.iter().find(|p| p.key == key).cloned();
    let global = named("upload.bandwidth").expect("upload.bandwidth is named");
    assert_eq!(global.line, Some(2), "{global:?}");
    assert!(global.message.contains("\"fast\""), "{global:?}");
    let own = named("remotes.r.bandwidth").expect("remotes.r.bandwidth is named");
    assert!(own.message.contains("\"25:00\""), "{own:?}");
}

#[test]
fn metrics_listen_is_an_address_or_off() {
    let dir = tempfile::tempdir().unwrap();
    let remote = "[remotes.r]\nkind = \"native\"\nurl = \"http://x\"\nworkspace_id = \"w\"\ntoken_file = \"token\"\n";
    let with = |value: &str| {
        format!(
            "[daemon]\nmetrics_listen = {value:?}\n{remote}[[watch]]\npath = \"/a\"\nremote = \"r\"\n"
        )
    };
    let config = parse_in(dir.path(), &with("127.0.0.1:9184")).unwrap();
    assert_eq!(
        config.daemon.metrics_listen,
        Some("127.0.0.1:9184".parse().unwrap())
    );
    assert!(
        config
            .render()
            .contains("metrics_listen = \"127.0.0.1:9184\"")
    );
    let off = parse_in(dir.path(), &with("off")).unwrap();
    assert_eq!(off.daemon.metrics_listen, None);
    let found = problems(parse_in(dir.path(), &with("localhost")));
    assert_eq!(found[0].key, "daemon.metrics_listen", "{found:?}");
    assert_eq!(found[0].line, Some(2), "{found:?}");
}

/// `[hooks]` with both hooks, for the test below.
const HOOKS_TOML: &str = concat!(
    "[hooks]\non_uploaded = { exec = [\"/bin/index\", \"{path}\"] }\n",
    "on_failed = { webhook = { url = \"https://h.example/f\", secret_file = \"s\" }, timeout = \"5s\" }\n",
);
/// Two watches: one takes `[hooks]`, one sets its own `on_uploaded`.
const WATCHES_TOML: &str = concat!(
    "[[watch]]\npath = \"/a\"\nremote = \"r\"\n",
    "[[watch]]\npath = \"/b\"\nremote = \"r\"\nafter_upload_waits_for_hook = true\n",
    "on_uploaded = { webhook = { url = \"http://127.0.0.1:9/u\" } }\n",
);

#[test]
fn hooks_are_read_per_watch_over_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let remote = "[remotes.r]\nkind = \"native\"\nurl = \"http://x\"\nworkspace_id = \"w\"\ntoken_file = \"token\"\n";
    let text = format!("{remote}{HOOKS_TOML}{WATCHES_TOML}");
    let config = parse_in(dir.path(), &text).unwrap();
    let (a, b) = (&config.watches[0].hooks, &config.watches[1].hooks);
    let exec = HookSpec::Exec {
        argv: vec!["/bin/index".into(), "{path}".into()],
        timeout: Duration::from_secs(30),
    };
    assert_eq!(a.on_uploaded, Some(exec));
    let failed = HookSpec::Webhook {
        url: "https://h.example/f".into(),
        secret_file: Some(dir.path().join("s")),
        timeout: Duration::from_secs(5),
    };
    assert_eq!(a.on_failed, Some(failed.clone()));
    assert!(
        matches!(&b.on_uploaded, Some(HookSpec::Webhook { url, .. }) if url == "http://127.0.0.1:9/u")
    );
    assert_eq!(
        b.on_failed,
        Some(failed),
        "the default where the watch sets none"
    );
    assert!(config.watches[1].after_upload_waits_for_hook);
    assert!(
        config
            .render()
            .contains("on_uploaded = { exec = [\"/bin/index\", \"{path}\"], timeout = \"30s\" }")
    );
}

#[test]
fn bad_hooks_are_named_with_their_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let remote = "[remotes.r]\nkind = \"native\"\nurl = \"http://x\"\nworkspace_id = \"w\"\ntoken_file = \"token\"\n";
    for (hook, said) in [
        ("{ exec = [] }", "exec must name a program"),
        (
            "{ webhook = { url = \"mailto:ops@example.com\" } }",
            "http or https",
        ),
        (
            "{ exec = [\"/x\"], webhook = { url = \"https:x\" } }",
            "not both",
        ),
        ("{ exec = [\"/x\"], timeout = \"2h\" }", "on_uploaded"),
        ("{ exec = [\"/x\"], retries = 3 }", "retries"),
    ] {
        let bad =
            format!("{remote}[[watch]]\npath = \"/a\"\nremote = \"r\"\non_uploaded = {hook}\n");
        let found = problems(parse_in(dir.path(), &bad));
        let problem = found.iter().find(|p| p.key == "watch[0].on_uploaded");
        let problem = problem.unwrap_or_else(|| panic!("{hook}: {found:?}"));
        assert_eq!(problem.line, Some(9), "{problem:?}");
        assert!(problem.to_string().contains(said), "{hook}: {problem}");
    }
}

#[test]
fn locate_prefers_flag_then_environment_then_platform_file() {
    let d = defaults();
    assert_eq!(
        locate(Some(Path::new("/a.toml")), Some("/b.toml".into()), &d),
        Some("/a.toml".into())
    );
    assert_eq!(
        locate(None, Some("/b.toml".into()), &d),
        Some("/b.toml".into())
    );
    assert_eq!(
        locate(None, None, &d),
        None,
        "no platform file: the built-in default"
    );
}

#[test]
fn relative_paths_in_a_file_named_relatively_become_absolute() {
    // Regression: `ferry run --config ferry.toml` with `socket = "ferry.sock"` could not bind.
    let text = "[daemon]\nsocket = \"ferry.sock\"\ndata_dir = \"data\"\n[remotes.r]\nkind = \"native\"\nurl = \"http://x\"\n\
                workspace_id = \"w\"\ntoken_env = \"PATH\"\n[[watch]]\npath = \"outbox\"\nremote = \"r\"\n";
    let config = parse(text, &defaults(), Path::new("ferry.toml")).unwrap();
    let here = std::env::current_dir().unwrap();
    assert_eq!(config.daemon.socket, here.join("ferry.sock"));
    assert_eq!(config.daemon.data_dir, here.join("data"));
    assert_eq!(config.watches[0].path, here.join("outbox"));
}

#[test]
fn a_remote_ca_cert_is_read_beside_the_config_and_a_bad_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["minio.internal".to_string()]).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
    let native = "[remotes.main]\nkind = \"native\"\nurl = \"https://x\"\nworkspace_id = \"w\"\ntoken_file = \"token\"\n";
    let s3 = "[remotes.main]\nkind = \"s3\"\nbucket = \"photos\"\n";
    let watch = "[[watch]]\npath = \"/a\"\nremote = \"main\"\n";
    for remote in [native, s3] {
        let text = format!("{remote}ca_cert = \"ca.pem\"\n{watch}");
        let config = parse_in(dir.path(), &text).unwrap();
        let read = match &config.remotes["main"] {
            RemoteConfig::Native { ca_cert, .. } => ca_cert.clone(),
            RemoteConfig::S3(s3) => s3.ca_cert.clone(),
            other => panic!("{other:?}"),
        };
        let read = read.expect("ca_cert is read");
        assert_eq!(read.path, dir.path().join("ca.pem"));
        assert_eq!(read.certs, [ca.cert.der().clone()]);
        let rendered = config.render();
        assert!(
            rendered.contains("ca.pem\" # certificates in it: 1"),
            "{rendered}"
        );
        let mut named_by_env = config.clone();
        match named_by_env.remotes.get_mut("main").unwrap() {
            RemoteConfig::Native { ca_cert, .. } => ca_cert.as_mut().unwrap().from_env = Some("X"),
            RemoteConfig::S3(s3) => s3.ca_cert.as_mut().unwrap().from_env = Some("X"),
            other => panic!("{other:?}"),
        }
        let rendered = named_by_env.render();
        assert!(
            rendered.contains("ca.pem\" # from $X; certificates in it: 1"),
            "{rendered}"
        );

        let text = format!("{remote}ca_cert = \"missing.pem\"\n{watch}");
        let found = problems(parse_in(dir.path(), &text));
        let named = found.iter().find(|p| p.key == "remotes.main.ca_cert");
        let named = named.unwrap_or_else(|| panic!("{found:#?}"));
        assert!(named.message.contains("cannot read"), "{named:?}");
    }
}

#[test]
fn s3_encryption_and_acl_are_read_shown_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let watch = "[[watch]]\npath = \"/a\"\nremote = \"main\"\n";
    let remote = "[remotes.main]\nkind = \"s3\"\nbucket = \"photos\"\n";
    let keys = "server_side_encryption = \"aws:kms\"\nsse_kms_key_id = \"alias/ferry\"\nacl = \"bucket-owner-full-control\"\n";
    let config = parse_in(dir.path(), &format!("{remote}{keys}{watch}")).unwrap();
    let RemoteConfig::S3(s3) = &config.remotes["main"] else {
        panic!("an s3 remote: {:?}", config.remotes);
    };
    let kms = crate::upload::s3::Encryption::Kms {
        dsse: false,
        key_id: Some("alias/ferry".into()),
    };
    assert_eq!(s3.encryption, Some(kms));
    assert_eq!(s3.acl.as_deref(), Some("bucket-owner-full-control"));
    let rendered = config.render();
    assert!(rendered.contains(keys), "{rendered}");

    let cases = [
        (
            "server_side_encryption = \"aes\"",
            "remotes.main.server_side_encryption",
        ),
        ("sse_kms_key_id = \"k\"", "remotes.main.sse_kms_key_id"),
        ("acl = \"public\"", "remotes.main.acl"),
    ];
    for (keys, key) in cases {
        let found = problems(parse_in(dir.path(), &format!("{remote}{keys}\n{watch}")));
        assert!(
            found.iter().any(|p| p.key == key),
            "{key} not in {found:#?}"
        );
    }
}

#[test]
fn an_sse_c_key_file_is_read_beside_the_config_shown_by_its_md5_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ssec.key"), [7u8; 32]).unwrap();
    std::fs::write(dir.path().join("short.key"), [7u8; 16]).unwrap();
    let watch = "[[watch]]\npath = \"/a\"\nremote = \"main\"\n";
    let remote = "[remotes.main]\nkind = \"s3\"\nbucket = \"photos\"\n";
    let key = "sse_customer_key_file = \"ssec.key\"\n";
    let config = parse_in(dir.path(), &format!("{remote}{key}{watch}")).unwrap();
    let RemoteConfig::S3(s3) = &config.remotes["main"] else {
        panic!("an s3 remote: {:?}", config.remotes);
    };
    let expected = crate::upload::s3::CustomerKey::from_file(&[7u8; 32]).unwrap();
    let md5 = expected.md5().to_string();
    let customer = crate::upload::s3::Encryption::Customer(expected);
    assert_eq!(s3.encryption, Some(customer));
    for endpoint in [
        "https://minio.lan",
        "http://127.0.0.1:9000",
        "http://localhost:9000",
    ] {
        let text = format!("{remote}{key}endpoint = \"{endpoint}\"\n{watch}");
        assert!(parse_in(dir.path(), &text).is_ok(), "{endpoint}");
    }
    let rendered = config.render();
    let shown = format!("# server-side encryption: SSE-C, the key whose MD5 is {md5}");
    assert!(rendered.contains(&shown), "{rendered}");
    assert!(!rendered.contains("server_side_encryption ="), "{rendered}");

    let cases = [
        (
            "sse_customer_key_file = \"short.key\"",
            "holds 16 bytes, not a 256-bit key",
        ),
        ("sse_customer_key_file = \"missing.key\"", "cannot read"),
        (
            "sse_customer_key_file = \"ssec.key\"\nserver_side_encryption = \"AES256\"",
            "give server_side_encryption or sse_customer_key_file, not both",
        ),
        (
            "sse_customer_key_file = \"ssec.key\"\nendpoint = \"http://minio.lan:9000\"",
            "needs an https endpoint: the key goes with every request, and over \
             http://minio.lan:9000/ it would travel in clear",
        ),
    ];
    for (keys, message) in cases {
        let found = problems(parse_in(dir.path(), &format!("{remote}{keys}\n{watch}")));
        assert!(
            found.iter().any(|p| p.message.contains(message)),
            "{message:?} not in {found:#?}"
        );
    }
}

#[test]
fn sizes_are_shown_as_users_write_them() {
    let cases = [
        (256 * 1024, "256KiB"),
        (5 << 30, "5GiB"),
        (3 << 40, "3TiB"),
        (1536 * 1024, "1536KiB"),
        (1000, "1000B"),
        (1_572_865, "1.5MiB"),
    ];
    for (bytes, shown) in cases {
        assert_eq!(super::iec(bytes), shown, "{bytes}");
    }
    let rendered = builtin(&defaults()).render();
    assert!(
        rendered.contains("chunk_size_min = \"256KiB\""),
        "{rendered}"
    );
}

/// A watch's metadata is checked against its remote at load, so no upload fails on it later:
/// for S3 its header names, Ferry's own key, keys equal but for case and 2 KiB in all; for
/// every remote the native protocol's 64 entries and 1 KiB values. The problem names the
/// watch's `metadata` and its line.
#[test]
fn watch_metadata_its_remote_cannot_carry_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let remotes = "[remotes.s3]\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:9000\"\n\
                   bucket = \"photos\"\naccess_key_id = \"AKID\"\nsecret_access_key_file = \"token\"\n\
                   [remotes.native]\nkind = \"native\"\nurl = \"http://127.0.0.1:8080\"\n\
                   workspace_id = \"ws\"\ntoken_file = \"token\"\n";
    let many: Vec<String> = (0..65).map(|n| format!("k{n} = \"v\"")).collect();
    let long = format!("note = \"{}\"", "x".repeat(1025));
    let wide = format!("note = \"{}\"", "x".repeat(1000));
    let wider = format!("{wide}, more = \"{}\"", "y".repeat(1000));
    let cases = [
        ("s3", "\"Camera-ID\" = \"7\", city = \"Zürich\"", None),
        (
            "native",
            "\"bad key\" = \"x\", \"Ferry-Session\" = \"x\"",
            None,
        ),
        ("native", &wider, None),
        ("s3", "\"bad key\" = \"x\"", Some("cannot be an S3 header")),
        ("s3", "\"ferry-session\" = \"x\"", Some("is Ferry's own")),
        (
            "s3",
            "Project = \"a\", project = \"b\"",
            Some("only in case"),
        ),
        ("s3", &wider, Some("over the 2048 S3 takes")),
        (
            "native",
            &many.join(", "),
            Some("65 entries, over the limit of 64"),
        ),
        ("native", &long, Some("is over 1024 bytes")),
    ];
    for (remote, metadata, refused) in cases {
        let text = format!(
            "{remotes}[[watch]]\npath = \"/a\"\nremote = \"{remote}\"\nmetadata = {{ {metadata} }}\n"
        );
        let parsed = parse_in(dir.path(), &text);
        let Some(said) = refused else {
            let config = parsed.unwrap_or_else(|e| panic!("{remote} {metadata}: {e:?}"));
            assert!(!config.watches[0].metadata.is_empty());
            continue;
        };
        let problems = problems(parsed);
        assert_eq!(problems.len(), 1, "{remote} {metadata}: {problems:?}");
        let problem = &problems[0];
        assert_eq!(problem.key, "watch[0].metadata", "{problem:?}");
        assert_eq!(problem.line, Some(15), "{problem:?}");
        assert!(problem.message.contains(said), "{said}: {problem:?}");
    }
}
