//! Placing notify watches on the watched folders, and what each watch's health is.
//!
//! A recursive watch goes on its root in one call when it can. When a folder below cannot be
//! watched (unreadable: notify gives up on the whole tree at the first such folder), the tree
//! is armed piece by piece instead: the folder itself without recursion, and each of its
//! sub-folders as a tree of its own, so that one unreadable folder costs only itself. Folders
//! that stay unwatched are covered by periodic rescans. notify follows links watcher-wide: one
//! watcher serves the watches that skip links (the default), another those that follow them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

use notify::{RecursiveMode, Watcher};

use super::{LIMITED_RESCAN, Message, WatchError};
use crate::config::{Symlinks, WatchConfig};

/// Folders named in a health report at most (a tree of unreadable folders is summed up).
const FOLDERS_SHOWN: usize = 10;

/// How one watch is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Every folder is watched.
    Watching,
    /// These folders cannot be watched or listed (permissions): they are skipped, the rest
    /// is watched, and the whole watch is rescanned every `LIMITED_RESCAN`.
    Unreadable(Vec<PathBuf>),
    /// The inotify watch limit left folders unwatched: rescanned every `LIMITED_RESCAN`.
    Limited,
    /// The watched folder is gone; it is watched (and scanned) again when it comes back.
    Missing,
}

impl Health {
    /// Whether periodic rescans must stand in for events.
    pub fn needs_rescans(&self) -> bool {
        matches!(self, Health::Unreadable(_) | Health::Limited)
    }

    /// The state's name in `ferry status --json`.
    pub fn state(&self) -> &'static str {
        match self {
            Health::Watching => "watching",
            Health::Unreadable(_) => "unreadable",
            Health::Limited => "limited",
            Health::Missing => "missing",
        }
    }

    /// One line for logs and status.
    pub fn describe(&self) -> String {
        let every = humantime::format_duration(LIMITED_RESCAN);
        match self {
            Health::Watching => "watching".into(),
            Health::Missing => {
                "the folder is missing; it is watched again when it comes back".into()
            }
            Health::Limited => format!(
                "the inotify watch limit is reached (raise fs.inotify.max_user_watches); rescanned every {every}"
            ),
            Health::Unreadable(folders) => {
                let shown: Vec<String> = folders
                    .iter()
                    .take(FOLDERS_SHOWN)
                    .map(|f| f.display().to_string())
                    .collect();
                let more = folders.len().saturating_sub(FOLDERS_SHOWN);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!(
                    "cannot read {}{more}; skipped, the rest is rescanned every {every}",
                    shown.join(", ")
                )
            }
        }
    }
}

/// The notify watchers of one watch thread.
pub struct Watchers {
    skip_links: notify::RecommendedWatcher,
    follow_links: Option<notify::RecommendedWatcher>,
}

impl Watchers {
    pub(super) fn new(
        sender: &SyncSender<Message>,
        overflowed: &Arc<AtomicBool>,
        watches: &[WatchConfig],
    ) -> Result<Watchers, WatchError> {
        let follows = watches.iter().any(|w| w.symlinks == Symlinks::Follow);
        Ok(Watchers {
            skip_links: new_watcher(sender, overflowed, false)?,
            follow_links: follows
                .then(|| new_watcher(sender, overflowed, true))
                .transpose()?,
        })
    }

    fn of(&mut self, watch: &WatchConfig) -> &mut notify::RecommendedWatcher {
        match (&mut self.follow_links, watch.symlinks) {
            (Some(watcher), Symlinks::Follow) => watcher,
            _ => &mut self.skip_links,
        }
    }

    /// Watches `watch`'s folder; returns how that went. A folder that is not there is
    /// `Missing`, never an error: the thread watches for it to come back.
    pub fn arm(&mut self, watch: &WatchConfig) -> Health {
        let mode = if watch.recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        if !watch.path.is_dir() {
            return Health::Missing;
        }
        let mut unreadable = Vec::new();
        match arm_tree(self.of(watch), &watch.path, mode, &mut unreadable) {
            Err(Limit) => Health::Limited,
            Ok(()) if unreadable.is_empty() => Health::Watching,
            Ok(()) => Health::Unreadable(unreadable),
        }
    }

    /// Stops watching `watch`'s folder (gone, or about to be armed again).
    pub fn disarm(&mut self, watch: &WatchConfig) {
        let _ = self.of(watch).unwatch(&watch.path);
    }
}

/// The inotify watch limit was reached.
struct Limit;

/// Watches `folder` (recursively if `mode` says so), piece by piece around folders that
/// cannot be watched, which go to `unreadable`.
fn arm_tree(
    watcher: &mut notify::RecommendedWatcher,
    folder: &Path,
    mode: RecursiveMode,
    unreadable: &mut Vec<PathBuf>,
) -> Result<(), Limit> {
    let error = match watcher.watch(folder, mode) {
        Ok(()) => return Ok(()),
        Err(error) if matches!(error.kind, notify::ErrorKind::MaxFilesWatch) => {
            let error = WatchError::Limit {
                path: folder.to_path_buf(),
            };
            tracing::error!(%error, rescan_every = ?LIMITED_RESCAN, "some folders are not watched; they are rescanned instead");
            return Err(Limit);
        }
        Err(error) => error,
    };
    if mode == RecursiveMode::NonRecursive {
        tracing::debug!(path = %folder.display(), %error, "cannot watch folder");
        unreadable.push(folder.to_path_buf());
        return Ok(());
    }
    // Somewhere below is a folder notify cannot watch: undo the partial tree, then arm this
    // folder alone and each sub-folder as a tree of its own.
    let _ = watcher.unwatch(folder);
    arm_tree(watcher, folder, RecursiveMode::NonRecursive, unreadable)?;
    let Ok(entries) = std::fs::read_dir(folder) else {
        if unreadable.last().map(PathBuf::as_path) != Some(folder) {
            unreadable.push(folder.to_path_buf());
        }
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            arm_tree(watcher, &entry.path(), RecursiveMode::Recursive, unreadable)?;
        }
    }
    Ok(())
}

/// An open, a read or a close without writing: nothing changed. inotify reports every open
/// (notify watches `IN_OPEN`), the daemon's own reads of the files it uploads among them;
/// dropped here, they neither wake the watch thread nor fill its channel.
fn is_read_only_access(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match event.kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        notify::EventKind::Access(_) => true,
        _ => false,
    }
}

fn new_watcher(
    sender: &SyncSender<Message>,
    overflowed: &Arc<AtomicBool>,
    follow_links: bool,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let callback_sender = sender.clone();
    let callback_overflow = overflowed.clone();
    let config = notify::Config::default().with_follow_symlinks(follow_links);
    notify::RecommendedWatcher::new(
        move |event: notify::Result<notify::Event>| {
            if event.as_ref().is_ok_and(is_read_only_access) {
                return;
            }
            if let Err(TrySendError::Full(_)) = callback_sender.try_send(Message::Fs(event)) {
                callback_overflow.store(true, Ordering::Relaxed);
            }
        },
        config,
    )
    .map_err(|source| WatchError::Notify {
        path: PathBuf::new(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind};
    use notify::{Event, EventKind};

    use super::is_read_only_access;

    #[test]
    fn only_accesses_that_change_nothing_are_dropped() {
        let cases = [
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), true),
            (EventKind::Access(AccessKind::Read), true),
            (EventKind::Access(AccessKind::Close(AccessMode::Read)), true),
            (EventKind::Access(AccessKind::Any), true),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                false,
            ),
            (EventKind::Create(CreateKind::File), false),
            (EventKind::Modify(ModifyKind::Data(DataChange::Any)), false),
            (EventKind::Any, false),
        ];
        for (kind, dropped) in cases {
            assert_eq!(is_read_only_access(&Event::new(kind)), dropped, "{kind:?}");
        }
    }
}
