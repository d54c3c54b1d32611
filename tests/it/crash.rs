//! The crash test: the daemon is SIGKILLed at random moments while it works through files of
//! mixed sizes (some added between kills), restarted each time; in the end every file must have
//! arrived byte-identical, and the queue must show all done and none failed.

use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::support::daemon::{Daemon, Setup};
use crate::support::s3::{Flavor, S3Server};
use crate::support::*;

const FILES: usize = 200;
const KILLS: usize = 20;

/// Sizes from 1 KiB to 64 MiB, mostly small, as a folder of real work would have.
fn size_of(index: usize, rng: &mut impl Rng) -> u64 {
    match index % 20 {
        0 => rng.random_range(16 * MIB..=64 * MIB),
        1 | 2 => rng.random_range(MIB..8 * MIB),
        _ => rng.random_range(KIB..256 * KIB),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_arrives_intact_through_repeated_kill_9() {
    let receiver = Receiver::start().await;
    let setup = Setup::new(&receiver.url, "settle = \"200ms\"", "");
    kill_loop(&setup).await;
    for index in 0..FILES {
        let name = format!("file-{index:03}.bin");
        assert_same_content(&setup.outbox.join(&name), &receiver.file(&name));
    }
}

/// The same against an S3 server (s3s-fs: real SigV4, objects read back through it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_reaches_an_s3_bucket_intact_through_repeated_kill_9() {
    kill_loop_into(Flavor::S3sFs).await;
}

/// The same against Ceph's gateway: sessions resumed from its ListParts after each kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_reaches_a_ceph_bucket_intact_through_repeated_kill_9() {
    kill_loop_into(Flavor::CephRgw).await;
}

/// The kill loop with an S3 remote on a `flavor` server; every object read back through it.
async fn kill_loop_into(flavor: Flavor) {
    let server = S3Server::start(flavor).await;
    let secrets = tempfile::tempdir().unwrap();
    let remote = server.remote_toml_in("main", "crash/", secrets.path());
    let setup = Setup::with_remote(&remote, "settle = \"200ms\"", "");
    kill_loop(&setup).await;
    for index in 0..FILES {
        let name = format!("file-{index:03}.bin");
        let stored = server.get(&format!("crash/{name}")).await;
        let local = std::fs::read(setup.outbox.join(&name)).unwrap();
        assert!(
            stored.as_deref() == Some(&local[..]),
            "{flavor:?}: {name} differs in the bucket"
        );
    }
}

/// Kills the daemon of `setup` at random moments while files arrive, then lets it finish:
/// every file done once, none failed.
async fn kill_loop(setup: &Setup) {
    let seed: u64 = std::env::var("FERRY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test seed {seed} (FERRY_CRASH_SEED={seed} to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Replace the default 300 ms settle line the helper wrote.
    let text =
        std::fs::read_to_string(&setup.config)
            .unwrap()
            .replacen("settle = \"300ms\"\n", "", 1);
    std::fs::write(&setup.config, text).unwrap();

    let mut written = 0;
    let mut write_files = |count: usize, rng: &mut rand::rngs::StdRng| {
        for index in written..(written + count).min(FILES) {
            let size = size_of(index, rng);
            random_file(
                &setup.outbox.join(format!("file-{index:03}.bin")),
                size,
                seed ^ index as u64,
            );
        }
        written = (written + count).min(FILES);
    };
    write_files(150, &mut rng);
    for kill in 0..KILLS {
        let mut daemon = setup.start().await;
        let alive = Duration::from_millis(rng.random_range(150..900));
        tokio::time::sleep(alive).await; // a random moment, by design
        daemon.child.kill().unwrap(); // SIGKILL
        daemon.child.wait().unwrap();
        if kill % 4 == 3 {
            write_files(13, &mut rng);
        }
    }
    write_files(FILES, &mut rng);
    assert_eq!(written, FILES);

    let mut daemon = setup.start().await;
    let status = drained(setup, &mut daemon, seed).await;
    assert_eq!(status["queue"]["failed"], 0, "{status}");
    // Each file is uploaded exactly once: name any that was done twice.
    let mut done_per_path = std::collections::BTreeMap::<String, Vec<serde_json::Value>>::new();
    for job in setup
        .jobs()
        .into_iter()
        .filter(|job| job["state"] == "done")
    {
        done_per_path
            .entry(job["path"].to_string())
            .or_default()
            .push(job);
    }
    let twice: Vec<_> = done_per_path
        .values()
        .filter(|jobs| jobs.len() > 1)
        .collect();
    assert!(twice.is_empty(), "uploaded more than once: {twice:#?}");
    assert_eq!(status["queue"]["done"], FILES as u64, "{status}");
    assert_eq!(daemon.terminate().await, Some(0));
}

/// Waits until every file is done, the daemon alive and answering throughout; its status.
async fn drained(setup: &Setup, daemon: &mut Daemon, seed: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        if let Some(exit) = daemon.child.try_wait().unwrap() {
            panic!(
                "the daemon exited with {exit} (seed {seed}):\n{}",
                daemon.tail(40)
            );
        }
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| setup.status()));
        let Ok(status) = answered else {
            panic!(
                "the daemon did not answer status (seed {seed}):\n{}",
                daemon.tail(40)
            );
        };
        let queue = &status["queue"];
        let done = queue["done"].as_u64() >= Some(FILES as u64);
        if queue["queued"] == 0 && queue["active"] == 0 && done {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let open: Vec<_> = setup
                .jobs()
                .into_iter()
                .filter(|job| job["state"] != "done")
                .collect();
            panic!(
                "the queue did not drain in 240 s (seed {seed}): {status}\njobs not done: {open:#?}\nlast log lines:\n{}",
                daemon.tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
