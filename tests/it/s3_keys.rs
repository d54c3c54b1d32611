//! S3 keys from where the AWS CLI finds them, besides a secret file: a `credential_process`
//! (s3s-fs checks the signatures), a container's credentials endpoint, an EC2 instance's
//! metadata service, and profiles that assume a role. For roles STS is moto's, with its checks
//! on (it verifies the signature of every AssumeRole call against the keys of the user or role
//! it names, and that they may assume the role), and the uploads go to another moto through a
//! proxy that shows which keys signed them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::s3::{assert_stored, proxy_before, push};
use crate::support::fault_proxy::{Fault, FaultProxy, query_param};
use crate::support::s3::{ACCESS_KEY, BUCKET, Flavor, IamAccount, S3Server, SECRET_KEY};
use crate::support::{endless, random_file};

/// `dir/config.toml` with one S3 remote `s3` on `endpoint` that names no keys, and `more`
/// (its own further keys, then any other tables).
fn keyless_remote(dir: &Path, endpoint: &str, more: &str) -> PathBuf {
    let config = dir.join("config.toml");
    let remote = format!(
        "[remotes.s3]\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{BUCKET}\"\n{more}"
    );
    std::fs::write(&config, remote).unwrap();
    config
}

/// `ferry push` of `local` with the configuration `config`, the shared config file
/// `aws_config` and a home beside them (so no other shared file is read).
fn push_with_profiles(config: &Path, local: &Path, aws_config: &Path) -> Output {
    let dir = config.parent().unwrap();
    push(config, &dir.join("data"), local)
        .env("AWS_CONFIG_FILE", aws_config)
        .env("HOME", dir)
        .output()
        .unwrap()
}

/// The shared files: `writer` assumes the first role with the user's keys (in the credentials
/// file), `chained` the second with `writer`'s, its STS named in its `services` section, and
/// `forged` the first with a wrong secret.
fn shared_files(dir: &Path, account: &IamAccount, sts: &str) {
    let config = format!(
        "[profile writer]\nrole_arn = {}\nsource_profile = base\n\
         [profile chained]\nrole_arn = {}\nsource_profile = writer\nrole_session_name = nightly\n\
         services = local\n\
         [services local]\nsts =\n  endpoint_url = {sts}\n\
         [profile forged]\nrole_arn = {}\nsource_profile = forger\n",
        account.roles[0], account.roles[1], account.roles[0]
    );
    let credentials = format!(
        "[base]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n\
         [forger]\naws_access_key_id = {key}\naws_secret_access_key = not-{secret}\n",
        key = account.access_key_id,
        secret = account.secret_access_key,
    );
    std::fs::write(dir.join("aws-config"), config).unwrap();
    std::fs::write(dir.join("aws-credentials"), credentials).unwrap();
}

/// `command` with the shared files of `dir`, STS at `sts` if given, and no keys of the
/// environment.
fn with_aws_files<'a>(command: &'a mut Command, dir: &Path, sts: Option<&str>) -> &'a mut Command {
    for key in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_STS",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ] {
        command.env_remove(key);
    }
    if let Some(sts) = sts {
        command.env("AWS_ENDPOINT_URL_STS", sts);
    }
    command
        .env("AWS_CONFIG_FILE", dir.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("aws-credentials"))
        .env("HOME", dir)
}

/// The access key ids that signed the requests the proxy saw since `mark`.
fn signing_keys(proxy: &FaultProxy, mark: usize) -> Vec<String> {
    let log = proxy.log();
    log[mark..]
        .iter()
        .map(|seen| {
            let credential = query_param(&seen.path, "X-Amz-Credential").unwrap_or_default();
            let token = query_param(&seen.path, "X-Amz-Security-Token").is_some();
            let key = credential.split('/').next().unwrap_or_default();
            format!("{key}{}", if token { " with token" } else { "" })
        })
        .collect()
}

/// How a push names its profile: as the remote's `profile`, or as `$AWS_PROFILE`.
/// Or neither, with a web identity in the environment: the role and the token's file.
enum Named {
    Remote(&'static str),
    Environment(&'static str),
    WebIdentity(&'static str, PathBuf),
}

/// The servers, and the remote's table, of one test.
struct Scene {
    dir: tempfile::TempDir,
    sts: S3Server,
    server: S3Server,
    proxy: FaultProxy,
    remote: String,
}

impl Scene {
    /// A moto for the uploads behind a proxy, beside `sts`, and a remote on it (prefix
    /// `roles/`, no keys).
    async fn start(sts: S3Server) -> Scene {
        let server = S3Server::start(Flavor::Moto).await;
        let proxy = crate::s3::proxy_before(&server).await;
        let remote = format!(
            "[remotes.s3]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\nprefix = \"roles/\"\n",
            proxy.url
        );
        let dir = tempfile::tempdir().unwrap();
        Scene {
            dir,
            sts,
            server,
            proxy,
            remote,
        }
    }

    /// `ferry push` of a 7 MiB file `name` (a multipart upload), STS at `sts`.
    fn push(&self, name: &str, named: Named, sts: Option<&str>) -> (std::process::Output, PathBuf) {
        let dir = self.dir.path();
        let config = dir.join(format!("{name}.toml"));
        let (profile, chosen, web_identity) = match named {
            Named::Remote(name) => (format!("profile = \"{name}\"\n"), None, None),
            Named::Environment(name) => (String::new(), Some(name), None),
            Named::WebIdentity(role, token) => (String::new(), None, Some((role, token))),
        };
        std::fs::write(&config, format!("{}{profile}", self.remote)).unwrap();
        let local = dir.join(name);
        random_file(&local, 7 * 1024 * 1024, 60);
        let mut command = push(&config, &dir.join("data"), &local);
        with_aws_files(&mut command, dir, sts);
        if let Some(profile) = chosen {
            command.env("AWS_PROFILE", profile);
        }
        if let Some((role, token)) = web_identity {
            command
                .env("AWS_ROLE_ARN", role)
                .env("AWS_WEB_IDENTITY_TOKEN_FILE", token);
        }
        (command.output().unwrap(), local)
    }

    /// Pushes `name` as `named`, and checks it landed, signed only with keys STS gave `role`.
    async fn push_landed(&self, name: &str, named: Named, sts: Option<&str>, role: &str) {
        let mark = self.proxy.mark();
        let (output, local) = self.push(name, named, sts);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{name}: {stderr}");
        assert_stored(&self.server, &format!("roles/{name}"), &local, name).await;
        let issued = self.sts.assumed_keys(role).await;
        let signed = signing_keys(&self.proxy, mark);
        assert!(signed.len() >= 3, "{name}: a multipart upload: {signed:?}");
        for key in &signed {
            let (id, _) = key.split_once(' ').unwrap_or((key, ""));
            assert!(
                issued.iter().any(|k| k == id),
                "{name}: signed by {key}, not one of {issued:?}"
            );
            assert!(key.ends_with(" with token"), "{name}: {key}");
        }
    }
}

/// A remote's `profile` that assumes a role, and the default chain's `$AWS_PROFILE` naming one
/// that assumes a role with another role's keys (its STS named in its `services` section): the
/// uploads land signed with the keys STS gave for that role, along with their session token.
/// STS answering 503 once is waited out; a source profile with a wrong secret fails at once,
/// with STS's refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_that_assumes_a_role_uploads_with_the_roles_keys() {
    let sts = S3Server::start(Flavor::Moto).await;
    let account = sts.iam_account();
    let scene = Scene::start(sts).await;
    shared_files(scene.dir.path(), &account, &scene.sts.endpoint);
    let refused_once = Fault::Unavailable {
        retry_after_secs: 1,
    };
    let sts_proxy = crate::s3::proxy_before(&scene.sts).await;
    sts_proxy.set_plan(move |_, index| (index == 0).then_some(refused_once));

    let (writer, second) = (&account.roles[0], &account.roles[1]);
    scene
        .push_landed(
            "writer.bin",
            Named::Remote("writer"),
            Some(&sts_proxy.url),
            writer,
        )
        .await;
    let asked = sts_proxy.log();
    assert_eq!(asked.len(), 2, "refused once, then answered: {asked:?}");
    assert_eq!(asked[0].fault, Some(refused_once));
    let chained = Named::Environment("chained");
    scene
        .push_landed("chained.bin", chained, None, second)
        .await;

    let sts = Some(scene.sts.endpoint.as_str());
    let (output, _) = scene.push("forged.bin", Named::Remote("forged"), sts);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("STS refused to assume") && stderr.contains("SignatureDoesNotMatch"),
        "{stderr}"
    );
}

/// Keys from a `credential_process` (what aws-vault and the password managers' CLIs print):
/// s3s-fs checks signatures, so a push lands only signed with the keys the process printed,
/// through a remote's `profile`, the default chain's `$AWS_PROFILE` and a profile of the
/// credentials file alike; the command's quoted argument is one word, as the AWS CLI splits it,
/// and keeps its run of spaces (the process prints keys for exactly that argument).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_credential_process_sign_the_uploads() {
    let server = S3Server::start(Flavor::S3sFs).await;
    let dir = tempfile::tempdir().unwrap();
    let aws_config = vault_profile(dir.path());
    for (name, named, chosen) in [
        ("named.bin", "profile = \"vault\"\n", None),
        ("chained.bin", "", Some("vault")),
        ("filed.bin", "profile = \"filed\"\n", None),
    ] {
        let more = format!("prefix = \"pushed/\"\n{named}");
        let config = keyless_remote(dir.path(), &server.endpoint, &more);
        let local = dir.path().join(name);
        random_file(&local, 1000, 50);
        let mut command = push(&config, &dir.path().join("data"), &local);
        command
            .env("AWS_CONFIG_FILE", &aws_config)
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.path().join("aws-credentials"),
            )
            .env("HOME", dir.path());
        for key in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ] {
            command.env_remove(key);
        }
        if let Some(profile) = chosen {
            command.env("AWS_PROFILE", profile);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{name}: {stderr}");
        assert_stored(&server, &format!("pushed/{name}"), &local, name).await;
    }
}

/// A `credential_process` that fails: its own words reach the user, who would otherwise see
/// only that no keys were found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_process_that_fails_is_reported_in_its_own_words() {
    let dir = tempfile::tempdir().unwrap();
    let aws_config = vault_profile(dir.path());
    let locked = "profile = \"locked\"\n";
    let config = keyless_remote(dir.path(), "http://127.0.0.1:9", locked);
    let local = dir.path().join("file.bin");
    random_file(&local, 1000, 51);
    let output = push_with_profiles(&config, &local, &aws_config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let said = "cannot load S3 credentials from profile \"locked\": credential process failed";
    assert!(
        stderr.contains(said) && stderr.contains("the vault is locked"),
        "{stderr}"
    );
}

/// Keys that expire within five minutes are renewed in the background; a renewal that fails
/// leaves them in use, said in the log. The complete is held a second (so the push outlives
/// the renewal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_still_good_stay_in_use_when_their_renewal_fails() {
    let refused = "echo 'the vault is locked' >&2; exit 3";
    let (output, runs, _) = push_renewing(refused, "fails").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(runs, 2, "the process was asked {runs} time(s): {stderr}");
    assert!(
        stderr.contains("the vault is locked") && stderr.contains("stay in use"),
        "{stderr}"
    );
}

/// A renewal that takes long (a vault waiting for its user's touch) holds no request up: the
/// push goes on with the current keys while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_waits_for_a_slow_renewal() {
    let (output, runs, took) = push_renewing("exec sleep 30", "waits").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(runs, 2, "the process was asked {runs} time(s): {stderr}");
    assert!(
        took < Duration::from_secs(15),
        "the push took {took:?}, waiting for the renewal: {stderr}"
    );
}

/// Pushes a three-part file to s3s-fs, through a proxy that holds the complete a second, with
/// keys from a `credential_process` that gives keys expiring in three minutes the first time
/// and runs `later` after; asserts it landed. Returns the push, how often the process was
/// asked, and how long the push took.
async fn push_renewing(later: &str, name: &str) -> (Output, usize, Duration) {
    let server = S3Server::start(Flavor::S3sFs).await;
    let proxy = proxy_before(&server).await;
    proxy.set_plan(|head, _| {
        let completes = head.method == "POST" && query_param(&head.path, "uploadId").is_some();
        completes.then_some(Fault::Delay(Duration::from_secs(1)))
    });
    let dir = tempfile::tempdir().unwrap();
    let (aws_config, runs) = expiring_once_profile(dir.path(), later);
    let config = keyless_remote(dir.path(), &proxy.url, "profile = \"once\"\n");
    let local = dir.path().join(format!("{name}.bin"));
    random_file(&local, 12 << 20, 52);
    let started = Instant::now();
    let output = push_with_profiles(&config, &local, &aws_config);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_stored(&server, &format!("{name}.bin"), &local, name).await;
    let asked = std::fs::read_to_string(&runs).unwrap().lines().count();
    (output, asked, took)
}

/// An AWS shared config file in `dir` whose profile `once` runs a `credential_process` that
/// gives the test keys, expiring in three minutes, the first time and runs the shell commands
/// `later` after; and the file where each run leaves a line.
fn expiring_once_profile(dir: &Path, later: &str) -> (PathBuf, PathBuf) {
    let (script, runs) = (dir.join("once.sh"), dir.join("runs"));
    let json = format!(
        r#"{{"Version": 1, "AccessKeyId": "{ACCESS_KEY}", "SecretAccessKey": "{SECRET_KEY}", "Expiration": "%s"}}"#
    );
    let body = format!(
        "#!/bin/sh
echo run >> {runs}
if [ $(wc -l < {runs}) -gt 1 ]; then
           {later}
fi
         printf '{json}\\n' \"$(date -u -d '+3 min' +%Y-%m-%dT%H:%M:%SZ)\"\n",
        runs = runs.display()
    );
    std::fs::write(&script, body).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let aws_config = dir.join("aws-config");
    let profile = format!(
        "[profile once]\ncredential_process = {}\n",
        script.display()
    );
    std::fs::write(&aws_config, profile).unwrap();
    (aws_config, runs)
}

/// An AWS shared config file in `dir` whose profile `vault` gets the test keys from a
/// `credential_process` with a quoted argument, and whose profile `locked` has one that fails;
/// and a credentials file (`aws-credentials`) whose profile `filed` is `vault`'s twin.
fn vault_profile(dir: &Path) -> PathBuf {
    let script = dir.join("keys.sh");
    let json = format!(
        r#"{{"Version": 1, "AccessKeyId": "{ACCESS_KEY}", "SecretAccessKey": "{SECRET_KEY}"}}"#
    );
    let check = "[ \"$1\" = 'two  spaces' ] || { echo \"an argument of [$1]\" >&2; exit 4; }";
    std::fs::write(&script, format!("#!/bin/sh\n{check}\necho '{json}'\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let aws_config = dir.join("aws-config");
    let locked = dir.join("locked.sh");
    let refusal = "#!/bin/sh\necho 'the vault is locked' >&2\nexit 3\n";
    std::fs::write(&locked, refusal).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let process = format!("/bin/sh -c \"exec {} 'two  spaces'\"", script.display());
    let profile = format!(
        "[profile vault]\ncredential_process = {process}\n\
         [profile locked]\ncredential_process = {}\n",
        locked.display()
    );
    std::fs::write(&aws_config, profile).unwrap();
    let filed = format!("[filed]\ncredential_process = {process}\n");
    std::fs::write(dir.join("aws-credentials"), filed).unwrap();
    aws_config
}

/// EKS's IRSA through the default chain: `$AWS_ROLE_ARN` with the token in
/// `$AWS_WEB_IDENTITY_TOKEN_FILE`, STS at `$AWS_ENDPOINT_URL_STS` (a moto, which takes any
/// token): the push lands signed with the keys STS gave for that role, with their session
/// token; so does one through a profile with `role_arn` and `web_identity_token_file`. A token
/// file that is not there fails at once, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_identity_token_gets_the_keys_of_its_role() {
    let scene = Scene::start(S3Server::start(Flavor::Moto).await).await;
    let token = scene.dir.path().join("token");
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl\n";
    std::fs::write(&token, jwt).unwrap();
    let role = "arn:aws:iam::123456789012:role/irsa-uploader";
    let sts_url = Some(scene.sts.endpoint.as_str());
    let named = Named::WebIdentity(role, token.clone());
    scene.push_landed("pod.bin", named, sts_url, role).await;

    // The same from a profile: `role_arn` with `web_identity_token_file`.
    let ci = "arn:aws:iam::123456789012:role/ci-uploader";
    let profile = format!(
        "[profile ci]\nrole_arn = {ci}\nweb_identity_token_file = {}\n",
        token.display()
    );
    std::fs::write(scene.dir.path().join("aws-config"), profile).unwrap();
    scene
        .push_landed("ci.bin", Named::Remote("ci"), sts_url, ci)
        .await;

    let absent = token.with_file_name("absent");
    let named = Named::WebIdentity(role, absent.clone());
    let (output, _) = scene.push("pod2.bin", named, sts_url);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let said = format!("cannot read the web identity token {}", absent.display());
    assert!(stderr.contains(&said), "{stderr}");
}

/// Where moto's EC2 metadata service gives its instance role's keys.
const ROLE_KEYS: &str = "/latest/meta-data/iam/security-credentials/default-role";

/// A moto, whose EC2 metadata service gives its instance role's keys; an s3s-fs that takes
/// only those keys; and a proxy before the moto.
async fn instance_role_servers() -> (S3Server, S3Server, FaultProxy) {
    let moto = S3Server::start(Flavor::Moto).await;
    let role = format!("{}{ROLE_KEYS}", moto.endpoint);
    let served: serde_json::Value = reqwest::get(&role).await.unwrap().json().await.unwrap();
    let (key_id, secret) = (
        served["AccessKeyId"].as_str().unwrap(),
        served["SecretAccessKey"].as_str().unwrap(),
    );
    let server = S3Server::start_with_keys(Flavor::S3sFs, key_id, secret).await;
    let proxy = crate::s3::proxy_before(&moto).await;
    (moto, server, proxy)
}

/// The keys of a container's task role, from the endpoint `$AWS_CONTAINER_CREDENTIALS_FULL_URI`
/// names (ECS on Fargate, EKS Pod Identity): through the default chain, the push lands in an
/// s3s-fs that takes only those keys. moto serves the endpoint: the keys reply of its EC2
/// metadata service is in the containers' format too. The endpoint answering 503 once is waited out, not taken for "no keys found".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_containers_credentials_endpoint_sign_the_uploads() {
    let (_moto, server, endpoint_proxy) = instance_role_servers().await;
    let refused_once = Fault::Unavailable {
        retry_after_secs: 1,
    };
    endpoint_proxy.set_plan(move |_, index| (index == 0).then_some(refused_once));
    let through_proxy = format!("{}{ROLE_KEYS}", endpoint_proxy.url);
    let dir = tempfile::tempdir().unwrap();
    let config = keyless_remote(dir.path(), &server.endpoint, "");
    let local = dir.path().join("task.bin");
    random_file(&local, 6 * 1024 * 1024, 61);
    let mut command = push(&config, &dir.path().join("data"), &local);
    with_aws_files(&mut command, dir.path(), None)
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &through_proxy);
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_stored(&server, "task.bin", &local, "task.bin").await;
    let asked = endpoint_proxy.log();
    assert_eq!(asked.len(), 2, "refused once, then answered: {asked:?}");
}

/// The keys of an EC2 instance's role, from its metadata service (moto's, at
/// `$AWS_EC2_METADATA_SERVICE_ENDPOINT`): through the default chain, the push lands in an s3s-fs
/// that takes only those keys; a session token is asked for first and sent with each metadata
/// request (IMDSv2), and the service answering 503 once is waited out (the whole exchange
/// again, as the AWS CLI does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_the_instance_metadata_service_sign_the_uploads() {
    let (_moto, server, metadata) = instance_role_servers().await;
    let refused_once = Fault::Unavailable {
        retry_after_secs: 1,
    };
    let refused = AtomicBool::new(false);
    metadata.set_plan(move |head, _| {
        let keys = head.path == ROLE_KEYS;
        (keys && !refused.swap(true, Ordering::Relaxed)).then_some(refused_once)
    });
    let dir = tempfile::tempdir().unwrap();
    let config = keyless_remote(dir.path(), &server.endpoint, "");
    let local = dir.path().join("instance.bin");
    random_file(&local, 6 * 1024 * 1024, 62);
    let mut command = push(&config, &dir.path().join("data"), &local);
    with_aws_files(&mut command, dir.path(), None)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &metadata.url);
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_stored(&server, "instance.bin", &local, "instance.bin").await;
    let asked: Vec<String> = metadata
        .log()
        .iter()
        .map(|seen| format!("{} {}", seen.method, seen.path))
        .collect();
    let keys = format!("GET {ROLE_KEYS}");
    let exchange = [
        "PUT /latest/api/token",
        "GET /latest/meta-data/iam/security-credentials/",
        &keys,
    ];
    let expected = [exchange, exchange].concat();
    assert_eq!(asked, expected, "a token first, the 503 waited out");
}

/// Where no instance metadata service answers (a machine that is no EC2 instance) and nothing
/// else has keys, the push says no keys were found, at once.
#[test]
fn no_instance_metadata_service_means_no_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = keyless_remote(dir.path(), "http://127.0.0.1:9", "");
    let local = dir.path().join("nowhere.bin");
    random_file(&local, 1024, 63);
    let started = Instant::now();
    let mut command = push(&config, &dir.path().join("data"), &local);
    let output = with_aws_files(&mut command, dir.path(), None)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let said = "no S3 credentials found in the AWS default chain";
    assert!(stderr.contains(said), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "{stderr}");
}

/// A metadata service that answers with a body that never ends (broken, or hostile) is read to
/// 8 MiB at most, as a remote is: the push finds no keys at once and holds no more than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_service_answering_an_endless_body_is_refused_in_bounded_memory() {
    let metadata = endless::server().await;
    let dir = tempfile::tempdir().unwrap();
    let config = keyless_remote(dir.path(), "http://127.0.0.1:9", "");
    let local = dir.path().join("endless.bin");
    random_file(&local, 1024, 64);
    let stderr = dir.path().join("stderr");
    let mut command = push(&config, &dir.path().join("data"), &local);
    with_aws_files(&mut command, dir.path(), None)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &metadata)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let started = Instant::now();
    let (code, peak_kib) = endless::run_measured(command).await;
    let stderr = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    let said = "no S3 credentials found in the AWS default chain";
    assert!(stderr.contains(said), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "{stderr}");
    assert!(
        peak_kib <= endless::PEAK_LIMIT_KIB,
        "peak RSS {peak_kib} KiB"
    );
}

/// A remote's `profile` that neither shared file has is refused by `ferry config check`, naming
/// both files, rather than failing each upload with "no S3 credentials found".
#[test]
fn a_profile_in_neither_shared_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("aws-config"),
        "[profile backup]\nregion = eu-west-1\n",
    )
    .unwrap();
    let watched = dir.path().join("outbox");
    std::fs::create_dir(&watched).unwrap();
    let more = format!(
        "profile = \"bakup\"\n\n[[watch]]\npath = \"{}\"\nremote = \"s3\"\n",
        watched.display()
    );
    let config = keyless_remote(dir.path(), "http://127.0.0.1:9", &more);
    let mut command = Command::new(crate::support::ferry_bin());
    command
        .arg("--config")
        .arg(&config)
        .args(["config", "check"]);
    let output = with_aws_files(&mut command, dir.path(), None)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let said = format!(
        "remotes.s3.profile: profile \"bakup\" is in neither {}",
        dir.path().join("aws-config").display()
    );
    assert!(stderr.contains(&said), "{stderr}");
}
