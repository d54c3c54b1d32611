//! Checks of a parsed configuration against the file system, run by `ferry config check`,
//! `ferry run` and a SIGHUP reload: what parses but would fail or loop at run time is refused
//! here, with its key and line (DESIGN.md invariant 11).
//!
//! Loops: a `move_to` folder, or the daemon's data folder, inside a watch makes the daemon
//! upload its own output forever; so do two watches of one folder with the same globs.
//! Failures: no watch at all, a watch that is not a folder, a data folder that is a file, a
//! socket path longer than the kernel's `sun_path`.

use std::path::{Path, PathBuf};

use super::{AfterUpload, Config, Problem, WatchConfig};

/// Folders never watched: the whole system, or kernel file systems that never settle.
const SYSTEM_ROOTS: &[&str] = &["/", "/proc", "/sys", "/dev", "/run"];

/// Longest socket path the kernel takes (`sun_path` less its terminating NUL).
#[cfg(target_os = "linux")]
const MAX_SOCKET_PATH: usize = 107;
#[cfg(not(target_os = "linux"))]
const MAX_SOCKET_PATH: usize = 103;

/// Every problem the file system shows with `config`, the missing watch included; none for
/// the built-in default, whose folders the daemon creates and which overlap by design (the
/// outbox beside the store).
pub fn check_paths(config: &Config) -> Vec<Problem> {
    let mut problems: Vec<Problem> = no_watch(config).into_iter().collect();
    problems.extend(path_problems(config));
    problems
}

/// The problem of a file without a `[[watch]]`, which only the daemon has: `ferry push
/// --remote`, `ferry cleanup` and `ferry config check --connect` use a file of remotes alone.
pub fn no_watch(config: &Config) -> Option<Problem> {
    let message = "at least one [[watch]] is required to run the daemon (`ferry push --remote` and `ferry cleanup` need none)";
    (config.source.is_some() && config.watches.is_empty())
        .then(|| problem(config, "watch".into(), message.into()))
}

/// What is wrong with the folders and the socket `config` names (`check_paths` without the
/// missing watch): a file of remotes alone must pass these too.
pub fn path_problems(config: &Config) -> Vec<Problem> {
    if config.source.is_none() {
        return Vec::new();
    }
    let mut problems = Vec::new();
    let roots: Vec<PathBuf> = config.watches.iter().map(|w| resolve(&w.path)).collect();
    problems.extend(daemon_problems(config, &roots));
    for index in 0..config.watches.len() {
        problems.extend(watch_problems(config, &roots, index));
    }
    problems
}

/// A problem with `key` of `config`, at the line that sets it.
fn problem(config: &Config, key: String, message: String) -> Problem {
    Problem {
        line: config.lines.get(&key).copied(),
        key,
        message,
    }
}

/// What is wrong with the daemon's data folder and socket, given the watches' folders
/// (resolved, as `roots`).
fn daemon_problems(config: &Config, roots: &[PathBuf]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let data_dir = resolve(&config.daemon.data_dir);
    if config.daemon.data_dir.exists() && !config.daemon.data_dir.is_dir() {
        let message = format!("{} is not a folder", data_dir.display());
        problems.push(problem(config, "daemon.data_dir".into(), message));
    }
    let socket_length = config.daemon.socket.as_os_str().len();
    if socket_length > MAX_SOCKET_PATH {
        let message = format!(
            "{} is {socket_length} bytes long; a socket path may have at most {MAX_SOCKET_PATH}",
            config.daemon.socket.display()
        );
        problems.push(problem(config, "daemon.socket".into(), message));
    }
    if let Some(owner) = covering(config, roots, &data_dir) {
        let message = format!(
            "contains the daemon's data folder {}: its own files would be uploaded; move one out of the other",
            data_dir.display()
        );
        problems.push(problem(config, format!("watch[{owner}].path"), message));
    }
    problems
}

/// What is wrong with watch `index`: its folder, where it moves files, and its overlap with
/// the watches before it (the watches' folders resolved, as `roots`).
fn watch_problems(config: &Config, roots: &[PathBuf], index: usize) -> Vec<Problem> {
    let mut problems = Vec::new();
    let watch = &config.watches[index];
    let key = |name: &str| format!("watch[{index}].{name}");
    if let Some(message) = root_problem(&watch.path, &roots[index]) {
        problems.push(problem(config, key("path"), message));
    }
    if let AfterUpload::MoveTo(folder) = &watch.after_upload {
        let folder = resolve(folder);
        if let Some(owner) = covering(config, roots, &folder) {
            let message = format!(
                "move_to {} is inside watch[{owner}] ({}): every moved file would be uploaded again, forever",
                folder.display(),
                roots[owner].display()
            );
            problems.push(problem(config, key("after_upload"), message));
        }
    }
    for (other, other_root) in roots.iter().enumerate().take(index) {
        if let Some(message) = overlap(&config.watches[other], other_root, watch, &roots[index]) {
            let message = format!("{message} watch[{other}] ({})", other_root.display());
            problems.push(problem(config, key("path"), message));
        }
    }
    problems
}

/// What is wrong with a watch's folder, if anything.
fn root_problem(path: &Path, resolved: &Path) -> Option<String> {
    if SYSTEM_ROOTS.iter().any(|root| resolved == Path::new(root)) {
        return Some(format!(
            "{} is a system folder; watch the folders that hold your files instead",
            resolved.display()
        ));
    }
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => None,
        Ok(_) => Some(format!("{} is not a folder", path.display())),
        Err(error) => Some(format!("{}: {error}", path.display())),
    }
}

/// The index of the watch whose files include `path` (a recursive watch of a folder above it,
/// or any watch of the folder itself).
fn covering(config: &Config, roots: &[PathBuf], path: &Path) -> Option<usize> {
    roots.iter().enumerate().find_map(|(index, root)| {
        let recursive = config.watches[index].recursive;
        (path == root || (recursive && path.starts_with(root))).then_some(index)
    })
}

/// Why two watches would upload the same files twice, if they would: one folder watched twice,
/// or a folder inside a recursive watch, with the same globs.
fn overlap(
    first: &WatchConfig,
    first_root: &Path,
    second: &WatchConfig,
    second_root: &Path,
) -> Option<&'static str> {
    let same_globs = first.include == second.include && first.ignore == second.ignore;
    if !same_globs {
        return None;
    }
    if first_root == second_root {
        Some("watches the same folder with the same globs as")
    } else if (first.recursive && second_root.starts_with(first_root))
        || (second.recursive && first_root.starts_with(second_root))
    {
        Some("is nested in (or holds) the recursive, same-globbed")
    } else {
        None
    }
}

/// `path` with links and `..` resolved as far as it exists, the rest appended: folders that do
/// not exist yet (a `move_to` the daemon will create) compare like the ones that do.
fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = std::fs::canonicalize(existing) {
            return rest
                .iter()
                .rev()
                .fold(canonical, |path, name| path.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}
