//! Watching folders: notify events (and full scans at start and on `ferry rescan`) become
//! candidate files, filtered by each watch's globs, held by `settle` until they stop changing,
//! then handed to the daemon in batches to be queued.
//!
//! Only this module uses notify. It runs on its own OS thread: the notify callback only pushes
//! into a bounded channel, and the thread does the stats and scans. Overflow rule: when the
//! channel is full the event is dropped and a flag is set; the thread then rescans every watch,
//! so a burst loses no file. An inotify watch-limit error becomes a message naming the sysctl,
//! and the watcher keeps going on the watches it could place, rescanning every folder every
//! `LIMITED_RESCAN` for the rest (as Syncthing falls back to periodic scans).
//! `watch` never uploads; it meets `upload` in the queue.

mod arm;
pub mod settle;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind};

use crate::config::{Symlinks, WatchConfig};
use crate::queue::{Candidate, Fingerprint};
pub use arm::Health;
use arm::Watchers;
use settle::Settler;

/// Events buffered between notify's callback and the watch thread.
const EVENT_BUFFER: usize = 65_536;
/// Settled files handed to the daemon at once.
const BATCH: usize = 1_000;
/// Longest sleep of the watch thread when nothing is pending.
const IDLE_TICK: Duration = Duration::from_millis(500);
/// How often every folder is rescanned while some are unwatched (the inotify watch limit,
/// unreadable folders).
pub const LIMITED_RESCAN: Duration = Duration::from_secs(30);
/// How often each watched folder is checked to still be there (and the same folder).
const ROOT_CHECK: Duration = Duration::from_secs(1);

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watch path {path} does not exist or is not a folder")]
    Missing { path: PathBuf },
    #[error(
        "cannot watch {path}: the inotify watch limit is reached; raise it with \
         `sysctl fs.inotify.max_user_watches=524288` (and in /etc/sysctl.d/ to keep it)"
    )]
    Limit { path: PathBuf },
    #[error("cannot watch {path}")]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("cannot start the watch thread")]
    Thread(#[source] std::io::Error),
}

/// Counters the watch thread publishes, for `ferry status`.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Full scans completed (the start-up one included).
    pub scans: AtomicU64,
    /// Times the file events overflowed their buffer (each answered by a rescan).
    pub overflows: AtomicU64,
    /// Paths waiting to settle.
    pub settling: AtomicU64,
    /// Settled files handed to the daemon to be queued.
    pub handed_over: AtomicU64,
    /// The inotify watch limit left folders unwatched: they are rescanned every
    /// `LIMITED_RESCAN` instead.
    pub limited: AtomicBool,
    /// Each watch's root and health, in configuration order.
    pub health: std::sync::Mutex<Vec<(PathBuf, Health)>>,
}

impl WatchStats {
    /// Each watch's root and health.
    pub fn health(&self) -> Vec<(PathBuf, Health)> {
        self.health
            .lock()
            .expect("health lock is never poisoned")
            .clone()
    }
}

enum Message {
    Fs(notify::Result<Event>),
    Rescan,
    Stop,
}

/// A running watcher; stops when dropped.
pub struct WatchHandle {
    sender: SyncSender<Message>,
    rescan_requested: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WatchHandle {
    /// Asks for a full scan of every watch (`ferry rescan`).
    pub fn rescan(&self) {
        self.rescan_requested.store(true, Ordering::Relaxed);
        let _ = self.sender.try_send(Message::Rescan);
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let _ = self.sender.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Replaces each watch root by its canonical path (events and job records use it), checking
/// that it is a folder.
pub fn resolve_roots(watches: &mut [WatchConfig]) -> Result<(), WatchError> {
    for watch in watches {
        watch.path = std::fs::canonicalize(&watch.path)
            .ok()
            .filter(|path| path.is_dir())
            .ok_or_else(|| WatchError::Missing {
                path: watch.path.clone(),
            })?;
    }
    Ok(())
}

/// Starts watching (roots already resolved); the first full scan runs at once. Settled files go
/// to `sink` in batches. `own_paths` (the daemon's data folder, its socket) are never
/// candidates.
pub fn start(
    watches: &[WatchConfig],
    own_paths: Vec<PathBuf>,
    sink: tokio::sync::mpsc::Sender<Vec<Candidate>>,
    stats: Arc<WatchStats>,
) -> Result<WatchHandle, WatchError> {
    let watches = watches.to_vec();
    let own_paths: Vec<PathBuf> = own_paths
        .into_iter()
        .map(|path| std::fs::canonicalize(&path).unwrap_or(path))
        .collect();
    let (sender, receiver) = std::sync::mpsc::sync_channel(EVENT_BUFFER);
    let overflowed = Arc::new(AtomicBool::new(false));
    let mut watchers = Watchers::new(&sender, &overflowed, &watches)?;
    let health: Vec<Health> = watches.iter().map(|watch| watchers.arm(watch)).collect();
    let rescan_requested = Arc::new(AtomicBool::new(true));
    let mut worker = WatchThread {
        roots: watches.iter().map(|watch| identity(&watch.path)).collect(),
        unlisted: vec![Vec::new(); watches.len()],
        watches,
        watchers,
        health,
        own_paths,
        settler: Settler::default(),
        sink,
        overflowed,
        rescan_requested: rescan_requested.clone(),
        stats,
        last_scan: Instant::now(),
        last_root_check: Instant::now(),
    };
    worker.publish_health();
    let thread = std::thread::Builder::new()
        .name("ferry-watch".into())
        .spawn(move || worker.run(receiver))
        .map_err(WatchError::Thread)?;
    Ok(WatchHandle {
        sender,
        rescan_requested,
        thread: Some(thread),
    })
}

struct WatchThread {
    watches: Vec<WatchConfig>,
    /// The notify watchers: owned here, so that a folder that comes back is watched again.
    watchers: Watchers,
    /// Each watch's health as armed; `unlisted` adds the folders its last scan could not list.
    health: Vec<Health>,
    unlisted: Vec<Vec<PathBuf>>,
    /// Device and inode of each root as armed (`None`: missing).
    roots: Vec<Option<(u64, u64)>>,
    own_paths: Vec<PathBuf>,
    settler: Settler,
    sink: tokio::sync::mpsc::Sender<Vec<Candidate>>,
    overflowed: Arc<AtomicBool>,
    rescan_requested: Arc<AtomicBool>,
    stats: Arc<WatchStats>,
    last_scan: Instant,
    last_root_check: Instant,
}

impl WatchThread {
    /// Handles messages, rescans and settled files until told to stop or the daemon goes.
    fn run(&mut self, receiver: Receiver<Message>) {
        loop {
            self.housekeeping();
            let now = Instant::now();
            let wait = self
                .settler
                .next_due()
                .map_or(IDLE_TICK, |due| due.saturating_duration_since(now))
                .min(IDLE_TICK);
            let go_on = match receiver.recv_timeout(wait) {
                // Drain what else arrived before settling anything.
                Ok(message) => {
                    self.handle(message)
                        && std::iter::from_fn(|| receiver.try_recv().ok())
                            .all(|message| self.handle(message))
                }
                Err(RecvTimeoutError::Timeout) => true,
                Err(RecvTimeoutError::Disconnected) => false,
            };
            if !go_on || !self.hand_over_settled() {
                return;
            }
        }
    }

    /// A rescan after an overflow, when asked for or due; the roots' check when due.
    fn housekeeping(&mut self) {
        if self.overflowed.swap(false, Ordering::Relaxed) {
            tracing::warn!("file events overflowed their buffer; rescanning");
            self.stats.overflows.fetch_add(1, Ordering::Relaxed);
            self.rescan_requested.store(true, Ordering::Relaxed);
        }
        if self.last_root_check.elapsed() >= ROOT_CHECK {
            self.check_roots();
        }
        let rescan_due = self.needs_rescans() && self.last_scan.elapsed() >= LIMITED_RESCAN;
        if self.rescan_requested.swap(false, Ordering::Relaxed) || rescan_due {
            self.rescan();
        }
    }

    /// Hands the files that have settled to the daemon, in batches; false once the daemon has
    /// gone (it is shutting down).
    fn hand_over_settled(&mut self) -> bool {
        let watches = &self.watches;
        let settled = self.settler.poll(Instant::now(), |path| {
            let index = watch_of(watches, path);
            let symlinks = index.map_or(Symlinks::Skip, |index| watches[index].symlinks);
            stat_file(path, symlinks)
        });
        for chunk in settled.chunks(BATCH) {
            let batch: Vec<Candidate> = chunk.iter().map(|s| self.candidate(s)).collect();
            let count = batch.len() as u64;
            if !batch.is_empty() && self.sink.blocking_send(batch).is_err() {
                return false;
            }
            self.stats.handed_over.fetch_add(count, Ordering::Relaxed);
        }
        self.stats
            .settling
            .store(self.settler.len() as u64, Ordering::Relaxed);
        true
    }

    /// Handles one message; false means stop.
    fn handle(&mut self, message: Message) -> bool {
        match message {
            Message::Stop => return false,
            Message::Rescan => self.rescan_requested.store(true, Ordering::Relaxed),
            Message::Fs(Ok(event)) if event.need_rescan() => {
                tracing::warn!("the kernel dropped file events; rescanning");
                self.rescan_requested.store(true, Ordering::Relaxed);
            }
            Message::Fs(Ok(event)) => self.apply(event),
            Message::Fs(Err(error)) => {
                tracing::warn!(%error, "file watch error; rescanning");
                self.rescan_requested.store(true, Ordering::Relaxed);
            }
        }
        true
    }

    /// A file event: a file closed after writing starts (or restarts) settling; one renamed
    /// away or removed is forgotten; a path created or changed is considered.
    fn apply(&mut self, event: notify::Event) {
        let now = Instant::now();
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                for path in &event.paths {
                    let symlinks = self
                        .watch_of(path)
                        .map_or(Symlinks::Skip, |index| self.watches[index].symlinks);
                    let fingerprint = stat_file(path, symlinks).ok().flatten();
                    self.settler.closed(path, now, fingerprint);
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
                for path in &event.paths {
                    self.settler.forget(path);
                    self.settler.forget_under(path);
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) if event.paths.len() == 2 => {
                self.settler.forget(&event.paths[0]);
                self.settler.forget_under(&event.paths[0]);
                self.consider(&event.paths[1], now);
            }
            EventKind::Create(_) | EventKind::Modify(_) => {
                for path in &event.paths {
                    self.consider(path, now);
                }
            }
            _ => {}
        }
    }

    /// A path changed: wait for a file to settle; scan a folder that appeared.
    fn consider(&mut self, path: &Path, now: Instant) {
        if self.own_paths.iter().any(|own| path.starts_with(own)) {
            return;
        }
        let Some(index) = self.watch_of(path) else {
            return;
        };
        let watch = &self.watches[index];
        let Ok(metadata) = stat(path, watch.symlinks) else {
            self.settler.forget(path);
            return;
        };
        if metadata.is_dir() {
            // A folder created or moved in: its files may never produce events of their own.
            if watch.recursive || path == watch.path {
                let _ = self.scan(index, path);
            }
        } else if metadata.is_file() && self.in_scope(index, path) {
            let window = watch.settle;
            self.settler
                .touch(path, index, window, now, Some(Fingerprint::of(&metadata)));
        }
    }

    /// The watch a path belongs to.
    fn watch_of(&self, path: &Path) -> Option<usize> {
        watch_of(&self.watches, path)
    }

    fn in_scope(&self, index: usize, path: &Path) -> bool {
        let watch = &self.watches[index];
        (watch.recursive || path.parent() == Some(watch.path.as_path())) && watch.accepts(path)
    }

    fn rescan(&mut self) {
        let started = Instant::now();
        for index in 0..self.watches.len() {
            if self.roots[index].is_none() {
                continue; // missing: scanned when it comes back
            }
            let root = self.watches[index].path.clone();
            self.unlisted[index] = self.scan(index, &root);
            self.rearm_if_readable(index);
        }
        self.publish_health();
        tracing::info!(pending = self.settler.len(), elapsed = ?started.elapsed(), "scanned watched folders");
        self.stats
            .settling
            .store(self.settler.len() as u64, Ordering::Relaxed);
        self.stats.scans.fetch_add(1, Ordering::Relaxed);
        self.last_scan = Instant::now();
    }

    /// Whether some folder is unwatched, so that rescans must stand in for its events.
    fn needs_rescans(&self) -> bool {
        self.health.iter().any(Health::needs_rescans)
            || self.unlisted.iter().any(|folders| !folders.is_empty())
    }

    /// Notices a watched folder that went away (deleted, renamed, unmounted) or came back,
    /// perhaps as another folder of the same name: it is armed again and scanned.
    fn check_roots(&mut self) {
        self.last_root_check = Instant::now();
        let mut changed = false;
        for index in 0..self.watches.len() {
            let found = identity(&self.watches[index].path);
            if found == self.roots[index] {
                continue;
            }
            changed = true;
            self.watchers.disarm(&self.watches[index]);
            self.roots[index] = found;
            if found.is_none() {
                self.health[index] = Health::Missing;
                self.settler.forget_under(&self.watches[index].path);
                continue;
            }
            self.health[index] = self.watchers.arm(&self.watches[index]);
            let root = self.watches[index].path.clone();
            self.unlisted[index] = self.scan(index, &root);
        }
        if changed {
            self.publish_health();
        }
    }

    /// Arms a watch again once a folder that could not be watched can be listed: a folder
    /// whose permissions were mended is watched again without a restart.
    fn rearm_if_readable(&mut self, index: usize) {
        let Health::Unreadable(folders) = &self.health[index] else {
            return;
        };
        if folders
            .iter()
            .all(|folder| self.unlisted[index].contains(folder))
        {
            return;
        }
        self.watchers.disarm(&self.watches[index]);
        self.health[index] = self.watchers.arm(&self.watches[index]);
    }

    /// Publishes each watch's health for status, logging each change once.
    fn publish_health(&mut self) {
        let current: Vec<(PathBuf, Health)> = (0..self.watches.len())
            .map(|index| {
                (
                    self.watches[index].path.clone(),
                    self.effective_health(index),
                )
            })
            .collect();
        let mut published = self
            .stats
            .health
            .lock()
            .expect("health lock is never poisoned");
        for (index, (root, health)) in current.iter().enumerate() {
            if published.get(index).map(|(_, before)| before) == Some(health) {
                continue;
            }
            match health {
                Health::Watching => tracing::info!(path = %root.display(), "watching"),
                unhealthy => {
                    tracing::warn!(path = %root.display(), health = %unhealthy.describe(), "watch degraded")
                }
            }
        }
        let limited = current.iter().any(|(_, health)| *health == Health::Limited);
        self.stats.limited.store(limited, Ordering::Relaxed);
        *published = current;
    }

    /// A watch's health as armed, with the folders its last scan could not list.
    fn effective_health(&self, index: usize) -> Health {
        let unlisted = &self.unlisted[index];
        match &self.health[index] {
            Health::Watching if !unlisted.is_empty() => Health::Unreadable(unlisted.clone()),
            Health::Unreadable(folders) => {
                let mut all = folders.clone();
                all.extend(unlisted.iter().filter(|f| !folders.contains(f)).cloned());
                Health::Unreadable(all)
            }
            other => other.clone(),
        }
    }

    /// Offers every file under `dir` to the settler, aged by its mtime. Returns the folders
    /// that could not be listed.
    fn scan(&mut self, index: usize, dir: &Path) -> Vec<PathBuf> {
        let now = (Instant::now(), SystemTime::now());
        // Folders already walked, by device and inode: with links followed, a loop ends here.
        let mut visited = std::collections::HashSet::new();
        let mut unlisted = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(folder) = stack.pop() {
            if let Ok(metadata) = std::fs::metadata(&folder) {
                use std::os::unix::fs::MetadataExt;
                if !visited.insert((metadata.dev(), metadata.ino())) {
                    continue;
                }
            }
            match std::fs::read_dir(&folder) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        self.offer(index, entry.path(), now, &mut stack);
                    }
                }
                Err(error) => {
                    // Logged once per change, with the watch's health.
                    tracing::debug!(path = %folder.display(), %error, "cannot list folder");
                    unlisted.push(folder);
                }
            }
        }
        unlisted
    }

    /// One entry found by a scan of watch `index` at `now` (monotonic and wall): a file in
    /// scope goes to the settler, aged by its mtime; a folder of the same watch is walked
    /// next, when the watch is recursive.
    fn offer(
        &mut self,
        index: usize,
        path: PathBuf,
        (now, wall_now): (Instant, SystemTime),
        stack: &mut Vec<PathBuf>,
    ) {
        let watch = &self.watches[index];
        let (recursive, window, symlinks) = (watch.recursive, watch.settle, watch.symlinks);
        if self.own_paths.iter().any(|own| path.starts_with(own)) {
            return;
        }
        let Ok(metadata) = stat(&path, symlinks) else {
            return;
        };
        if metadata.is_dir() {
            if recursive && self.watch_of(&path) == Some(index) {
                stack.push(path);
            }
        } else if metadata.is_file() && self.in_scope(index, &path) {
            let age = metadata
                .modified()
                .ok()
                .and_then(|modified| wall_now.duration_since(modified).ok())
                .unwrap_or_default();
            self.settler
                .found(&path, index, window, now, age, Fingerprint::of(&metadata));
        }
    }

    fn candidate(&self, settled: &settle::Settled) -> Candidate {
        let watch = &self.watches[settled.watch];
        // A name that is not UTF-8 has no remote name: it is queued under a lossy one, and
        // its job fails visibly (status, jobs, log) until the file is renamed.
        let remote_path = watch.remote_path(&settled.path).unwrap_or_else(|| {
            let relative = settled
                .path
                .strip_prefix(&watch.path)
                .unwrap_or(&settled.path);
            format!("{}{}", watch.prefix, relative.to_string_lossy())
        });
        Candidate {
            path: settled.path.clone(),
            watch_root: watch.path.clone(),
            remote: watch.remote.clone(),
            remote_path,
            fingerprint: settled.fingerprint,
        }
    }
}

/// The watch a path belongs to: the one with the longest root that contains it.
fn watch_of(watches: &[WatchConfig], path: &Path) -> Option<usize> {
    watches
        .iter()
        .enumerate()
        .filter(|(_, watch)| path.starts_with(&watch.path))
        .max_by_key(|(_, watch)| watch.path.as_os_str().len())
        .map(|(index, _)| index)
}

/// What `path` is, a link followed only when the watch says so (skipped, a link is neither a
/// file nor a folder: it is never walked nor queued).
fn stat(path: &Path, symlinks: Symlinks) -> std::io::Result<std::fs::Metadata> {
    match symlinks {
        Symlinks::Skip => std::fs::symlink_metadata(path),
        Symlinks::Follow => std::fs::metadata(path),
    }
}

/// The fingerprint of a regular file; `None` for anything else or nothing.
fn stat_file(path: &Path, symlinks: Symlinks) -> std::io::Result<Option<Fingerprint>> {
    match stat(path, symlinks) {
        Ok(metadata) if metadata.is_file() => Ok(Some(Fingerprint::of(&metadata))),
        Ok(_) => Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Device and inode of a folder (not followed if a link); `None` when it is not a folder.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|metadata| metadata.is_dir())
        .map(|metadata| (metadata.dev(), metadata.ino()))
}
