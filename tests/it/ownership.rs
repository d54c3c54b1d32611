//! ARCHITECTURE.md's ownership invariants, kept by a test in the spirit of rust-analyzer's
//! tidy check: each outside resource has one owner in `src/`, and a second one fails here; so
//! does a dependency that runs backwards.

use std::path::{Path, PathBuf};

/// What may appear only in its owner's files: uses of the resource, the owners (path
/// prefixes under `src/`), and what the resource is.
const OWNERS: &[(&[&str], &[&str], &str)] = &[
    (&["sled::", "use sled"], &["src/queue/"], "sled (the store)"),
    (
        &["reqwest::", "use reqwest"],
        &[
            "src/upload/native.rs",
            "src/upload/s3/",
            "src/upload/http.rs",
            "src/hooks.rs",
        ],
        "reqwest (the backends, their TLS settings, and webhooks)",
    ),
    (
        &[
            "use notify",
            "notify::Config",
            "notify::RecommendedWatcher",
            "notify::Watcher",
            "notify::Event",
            "notify::Error",
            "notify::event::",
            "notify::recommended_watcher",
        ],
        &["src/watch/"],
        "notify (the watcher)",
    ),
    (
        &["UnixListener", "UnixStream"],
        &["src/control/"],
        "the control socket",
    ),
];

/// Dependencies that must not run backwards: files under the first path may not name the
/// second module (`upload → queue`, never back; the engine sees the session store, never the
/// job queue; config validates without the receiver or a backend; the bottom modules use
/// none).
const NEVER_BACK: &[(&str, &str)] = &[
    ("src/queue/", "crate::upload"),
    ("src/upload/", "JobQueue"),
    ("src/upload/", "queue::jobs"),
    ("src/config/", "crate::server"),
    ("src/config/", "crate::upload::native"),
    ("src/error.rs", "crate::"),
    ("src/secret.rs", "crate::"),
    ("src/protocol.rs", "crate::"),
    ("src/local_path.rs", "crate::"),
    ("src/redact.rs", "crate::"),
    ("src/output.rs", "crate::"),
];

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// `(file, line number, line)` for every code line (comments left out) of `src/` that names
/// a resource outside its owner.
fn trespasses(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for (under, module) in NEVER_BACK {
                if relative.starts_with(under) && code.contains(module) {
                    found.push(format!(
                        "{relative}:{}: depends on {module}: {code}",
                        number + 1
                    ));
                }
            }
            for (needles, owners, what) in OWNERS {
                let owned = owners.iter().any(|owner| relative.starts_with(owner));
                if !owned && needles.iter().any(|needle| code.contains(needle)) {
                    found.push(format!("{relative}:{}: {what}: {code}", number + 1));
                }
            }
        }
    }
    found
}

#[test]
fn each_outside_resource_has_one_owner() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = trespasses(root);
    assert!(
        found.is_empty(),
        "used outside its owner (ARCHITECTURE.md, Invariants):\n{}",
        found.join("\n")
    );
}

#[test]
fn a_second_owner_is_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("src/daemon")).unwrap();
    std::fs::create_dir_all(dir.path().join("src/queue")).unwrap();
    std::fs::write(dir.path().join("src/queue/mod.rs"), "use sled::Db;\n").unwrap();
    std::fs::write(
        dir.path().join("src/daemon/mod.rs"),
        "// sled:: in a comment is fine\nfn f() { let db = sled::open(\"x\"); }\n",
    )
    .unwrap();
    let found = trespasses(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("src/daemon/mod.rs:2: sled"),
        "{found:?}"
    );
}
