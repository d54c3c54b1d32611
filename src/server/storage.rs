//! The receiver's disk layout. Only this file touches `--storage DIR`; every function is
//! blocking and is called from `spawn_blocking` by the handlers.
//!
//! ```text
//! DIR/<workspace_id>/<filename>                 completed files (the contract users read)
//! DIR/.ferry/token                              generated bearer token (mode 0600)
//! DIR/.ferry/sessions/<upload_id>/session.json  session record (atomic write-aside + rename)
//! DIR/.ferry/sessions/<upload_id>/data         parts written in place at their offsets (see live)
//! DIR/.ferry/sessions/<upload_id>/parts/<n>.<etag>   a loose part: the file holds its bytes
//! DIR/.ferry/sessions/<upload_id>/parts/<n>.<etag>.<offset>.<size>   an in-place part's marker
//! DIR/.ferry/sessions/<upload_id>/incoming/*    loose parts still arriving (never listed)
//! DIR/.ferry/files/<workspace_id>/<sha256(path)>.json  metadata of completed files
//! DIR/.ferry/tmp/*                              files being assembled by complete
//! DIR/.ferry/webhooks/<upload_id>.json          webhook posts not yet delivered (`--webhook`)
//! ```
//!
//! Every etag starts with the 8 hex digits of its part's CRC32C. Invariants: a part counts as
//! stored only once its bytes are fsynced and its name is in `parts/`, so a dropped connection or
//! a crash stores nothing (an in-place slot is written only while no stored part owns it); a file
//! is visible only after complete has fsynced it and renamed it into place. Names reaching this
//! module were checked by `validate`.

use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::protocol::{CompletedFile, FileMetadata, ManifestPart, SessionState};

/// Version of `session.json`; bump it and keep reading the old one when the record changes.
const SESSION_RECORD_VERSION: u32 = 1;
/// Buffer for copying parts into the assembled file: large enough that syscalls are a small
/// share of the cost, small enough to be irrelevant to memory.
const COPY_BUFFER_BYTES: usize = 1 << 20;

/// The stored record of one upload session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub version: u32,
    pub upload_id: String,
    pub filename: String,
    pub workspace_id: String,
    pub total_size: u64,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub sha256: Option<String>,
    /// The modification time the client gave (RFC 3339), set on the file when it is placed.
    #[serde(default)]
    pub mtime: Option<String>,
    /// Limits promised to the client at init; later flag changes do not break open sessions.
    pub min_part_size: u64,
    pub max_part_size: u64,
    pub max_parts: u32,
    pub created_at_unix: u64,
    pub expires_at_unix: u64,
    pub state: SessionState,
    /// Set once completed: the manifest and reply, so a repeated complete is answered the same.
    #[serde(default)]
    pub completion: Option<Completion>,
}

/// What a successful complete recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completion {
    pub manifest: Vec<ManifestPart>,
    pub file: CompletedFile,
}

impl SessionRecord {
    pub fn new_version() -> u32 {
        SESSION_RECORD_VERSION
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        unix_seconds(now) >= self.expires_at_unix
    }
}

/// Where a stored part's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In a file of its own.
    Loose(PathBuf),
    /// In the session data file at this offset.
    InPlace { offset: u64 },
}

/// A stored part, read back from its name (and, for a loose part, its length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartFile {
    pub part_number: u32,
    pub etag: String,
    pub crc32c: u32,
    pub size: u64,
    pub location: Location,
}

/// Handle on the storage folder.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
    state: PathBuf,
}

impl Storage {
    /// Opens (creating) the layout under `root`, and clears leftovers of a previous run:
    /// half-received parts and half-assembled files can never become visible, so they go.
    pub fn open(root: &Path) -> io::Result<Storage> {
        fs::create_dir_all(root)?;
        let root = fs::canonicalize(root)?;
        let state = root.join(".ferry");
        for sub in ["sessions", "files", "tmp", "webhooks"] {
            fs::create_dir_all(state.join(sub))?;
        }
        // Session state, part files and the token are the receiver's alone, whatever the
        // storage folder's own mode.
        make_private(&state)?;
        let storage = Storage { root, state };
        remove_dir_contents(&storage.state.join("tmp"))?;
        for entry in fs::read_dir(storage.state.join("webhooks"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|extension| extension == "tmp") {
                fs::remove_file(path)?;
            }
        }
        for entry in fs::read_dir(storage.state.join("sessions"))? {
            let incoming = entry?.path().join("incoming");
            if incoming.is_dir() {
                remove_dir_contents(&incoming)?;
            }
        }
        Ok(storage)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a generated token is kept.
    pub fn token_path(&self) -> PathBuf {
        self.state.join("token")
    }

    fn session_dir(&self, upload_id: &str) -> PathBuf {
        self.state.join("sessions").join(upload_id)
    }

    /// Creates a session's folders and writes its record.
    pub fn create_session(&self, record: &SessionRecord) -> io::Result<()> {
        let dir = self.session_dir(&record.upload_id);
        fs::create_dir_all(dir.join("parts"))?;
        fs::create_dir_all(dir.join("incoming"))?;
        self.write_session(record)
    }

    /// Reads a session record; `None` when there is no such session.
    pub fn load_session(&self, upload_id: &str) -> io::Result<Option<SessionRecord>> {
        let path = self.session_dir(upload_id).join("session.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Replaces a session record atomically.
    pub fn write_session(&self, record: &SessionRecord) -> io::Result<()> {
        let dir = self.session_dir(&record.upload_id);
        let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_atomically(&dir.join("session.json"), &bytes)
    }

    /// Lists the stored parts of a session, sorted by part number. Should a crash have left two
    /// versions of one part (after the new one was committed, before the old one was removed),
    /// the newer one is kept, as the last successful PUT wins.
    pub fn list_parts(&self, upload_id: &str) -> io::Result<Vec<PartFile>> {
        let dir = self.session_dir(upload_id).join("parts");
        let mut by_number: BTreeMap<u32, (SystemTime, PathBuf, PartFile)> = BTreeMap::new();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let metadata = entry.metadata()?;
            let Some(part) = parse_part_name(&name, entry.path(), metadata.len()) else {
                continue;
            };
            let modified = metadata.modified()?;
            match by_number.get(&part.part_number) {
                Some((existing, _, _)) if *existing >= modified => fs::remove_file(entry.path())?,
                Some((_, older, _)) => {
                    fs::remove_file(older)?;
                    by_number.insert(part.part_number, (modified, entry.path(), part));
                }
                None => {
                    by_number.insert(part.part_number, (modified, entry.path(), part));
                }
            }
        }
        Ok(by_number.into_values().map(|(_, _, part)| part).collect())
    }

    /// The session data file that in-place parts are written into.
    pub fn data_path(&self, upload_id: &str) -> PathBuf {
        self.session_dir(upload_id).join("data")
    }

    /// A fresh path for a part that is still arriving.
    pub fn incoming_path(&self, upload_id: &str) -> PathBuf {
        let name = format!("{:016x}.tmp", rand::random::<u64>());
        self.session_dir(upload_id).join("incoming").join(name)
    }

    /// Commits a received and fsynced part, replacing any earlier version of it: a loose part by
    /// renaming its file into `parts/`, an in-place part by creating its marker. The commit is
    /// durable once `sync_parts` has run (kept apart so that it can run outside the session
    /// lock, letting the filesystem batch the commits of parallel parts).
    pub fn commit_part(
        &self,
        upload_id: &str,
        part_number: u32,
        etag: &str,
        received: &Received,
    ) -> io::Result<()> {
        let parts = self.session_dir(upload_id).join("parts");
        let prefix = format!("{part_number:06}.");
        let older: Vec<PathBuf> = fs::read_dir(&parts)?
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
            .map(|entry| entry.path())
            .collect();
        match received {
            Received::Loose(path) => fs::rename(path, parts.join(format!("{prefix}{etag}")))?,
            Received::InPlace { offset, size } => {
                File::create(parts.join(format!("{prefix}{etag}.{offset}.{size}")))?;
            }
        }
        for path in older {
            fs::remove_file(path)?;
        }
        Ok(())
    }

    /// Makes the part commits of a session durable.
    pub fn sync_parts(&self, upload_id: &str) -> io::Result<()> {
        sync_dir(&self.session_dir(upload_id).join("parts"))
    }

    /// Marks a session aborted and discards its parts.
    pub fn abort_session(&self, record: &mut SessionRecord) -> io::Result<()> {
        record.state = SessionState::Aborted;
        self.write_session(record)?;
        self.discard_parts(&record.upload_id)
    }

    /// Removes a session's parts (after complete or abort; the record stays until expiry).
    pub fn discard_parts(&self, upload_id: &str) -> io::Result<()> {
        let dir = self.session_dir(upload_id);
        for sub in ["parts", "incoming"] {
            match fs::remove_dir_all(dir.join(sub)) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
        }
        match fs::remove_file(dir.join("data")) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Copies `parts`, in order, into a temp file on the storage filesystem, hashing as it goes,
    /// and fsyncs it. Returns the temp path and the lowercase hex SHA-256 of the content.
    pub fn assemble(&self, upload_id: &str, parts: &[PartFile]) -> io::Result<(PathBuf, String)> {
        let temp = self
            .state
            .join("tmp")
            .join(format!("{:016x}.assembling", rand::random::<u64>()));
        let result = (|| {
            let mut output = File::create(&temp)?;
            let mut hasher = Sha256::new();
            let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
            let data = self.data_path(upload_id);
            for part in parts {
                let (input, offset) = match &part.location {
                    Location::Loose(path) => (File::open(path)?, 0),
                    Location::InPlace { offset } => (File::open(&data)?, *offset),
                };
                let mut done = 0;
                while done < part.size {
                    let want = (part.size - done).min(buffer.len() as u64) as usize;
                    input.read_exact_at(&mut buffer[..want], offset + done)?;
                    hasher.update(&buffer[..want]);
                    output.write_all(&buffer[..want])?;
                    done += want as u64;
                }
            }
            output.sync_all()?;
            Ok(hex::encode(hasher.finalize()))
        })();
        match result {
            Ok(digest) => Ok((temp, digest)),
            Err(error) => {
                let _ = fs::remove_file(&temp);
                Err(error)
            }
        }
    }

    /// Feeds `size` bytes of the session data file from `offset` into `hasher`.
    pub fn hash_range(
        &self,
        upload_id: &str,
        offset: u64,
        size: u64,
        hasher: &mut Sha256,
    ) -> io::Result<()> {
        let data = File::open(self.data_path(upload_id))?;
        let mut buffer = vec![0u8; COPY_BUFFER_BYTES.min(size.max(1) as usize)];
        let mut done = 0;
        while done < size {
            let want = (size - done).min(buffer.len() as u64) as usize;
            data.read_exact_at(&mut buffer[..want], offset + done)?;
            hasher.update(&buffer[..want]);
            done += want as u64;
        }
        Ok(())
    }

    /// Renames a complete file (assembled, or the session data file) to
    /// `DIR/<workspace>/<filename>`, replacing an earlier file; with `mtime`, the file has that
    /// modification time when it appears.
    pub fn publish(
        &self,
        assembled: &Path,
        (workspace_id, filename): (&str, &str),
        mtime: Option<SystemTime>,
    ) -> io::Result<()> {
        let destination = self.root.join(workspace_id).join(filename);
        let parent = destination
            .parent()
            .expect("a joined workspace path has a parent");
        if let Some(mtime) = mtime {
            fs::File::open(assembled)?.set_modified(mtime)?;
        }
        fs::create_dir_all(parent)?;
        fs::rename(assembled, &destination)?;
        sync_dir(parent)
    }

    /// Deletes a temp file that will not be published.
    pub fn discard_temp(&self, path: &Path) {
        if let Err(error) = fs::remove_file(path) {
            tracing::warn!(path = %path.display(), %error, "could not remove a temp file");
        }
    }

    fn file_meta_path(&self, workspace_id: &str, path: &str) -> PathBuf {
        let key = hex::encode(Sha256::digest(path.as_bytes()));
        self.state
            .join("files")
            .join(workspace_id)
            .join(format!("{key}.json"))
    }

    pub fn write_file_metadata(&self, metadata: &FileMetadata) -> io::Result<()> {
        let path = self.file_meta_path(&metadata.workspace_id, &metadata.path);
        fs::create_dir_all(path.parent().expect("file metadata path has a parent"))?;
        let bytes = serde_json::to_vec_pretty(metadata).map_err(io::Error::other)?;
        write_atomically(&path, &bytes)
    }

    pub fn read_file_metadata(
        &self,
        workspace_id: &str,
        path: &str,
    ) -> io::Result<Option<FileMetadata>> {
        match fs::read(self.file_meta_path(workspace_id, path)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn webhook_path(&self, upload_id: &str) -> PathBuf {
        self.state
            .join("webhooks")
            .join(format!("{upload_id}.json"))
    }

    /// Keeps the webhook post of a completed upload until it is delivered.
    pub fn record_webhook(&self, upload_id: &str, document: &serde_json::Value) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(document).map_err(io::Error::other)?;
        write_atomically(&self.webhook_path(upload_id), &bytes)
    }

    /// The `limit` oldest webhook posts not yet delivered, but those `skip` names, oldest
    /// first, with their upload ids; and how many wait in all. Only their names and times are
    /// read for the rest, and at most `limit` are kept at once. A record that cannot be read
    /// is logged and left in place.
    pub fn pending_webhooks(
        &self,
        skip: &HashSet<String>,
        limit: usize,
    ) -> io::Result<(Vec<(String, serde_json::Value)>, usize)> {
        let (mut oldest, mut waiting) = (BinaryHeap::new(), 0);
        for entry in fs::read_dir(self.state.join("webhooks"))? {
            let entry = entry?;
            let name = entry.file_name();
            // A record half-written when the receiver stopped has no `.json` yet.
            let Some(upload_id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            waiting += 1;
            if limit == 0 || skip.contains(upload_id) {
                continue;
            }
            oldest.push((entry.metadata()?.modified()?, upload_id.to_string()));
            if oldest.len() > limit {
                oldest.pop();
            }
        }
        let mut found = Vec::new();
        for (_, upload_id) in oldest.into_sorted_vec() {
            let path = self.webhook_path(&upload_id);
            let read = fs::read(&path).and_then(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            });
            match read {
                Ok(document) => found.push((upload_id, document)),
                // Delivered and forgotten since it was listed.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot read a webhook post; left in place")
                }
            }
        }
        Ok((found, waiting))
    }

    /// Forgets a delivered webhook post; whether it was still kept (a post delivered twice,
    /// by a sweep that read it just before, is forgotten once).
    pub fn forget_webhook(&self, upload_id: &str) -> io::Result<bool> {
        match fs::remove_file(self.webhook_path(upload_id)) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Bytes available to this process on the storage filesystem.
    pub fn available_bytes(&self) -> io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path =
            std::ffi::CString::new(self.root.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: `path` is a valid NUL-terminated string and `stats` a properly sized out
        // parameter that statvfs fills on success.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        let result = unsafe { libc::statvfs(path.as_ptr(), &mut stats) };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stats.f_bavail as u64 * stats.f_frsize as u64)
    }

    /// Sessions open (expired ones included, until the sweep removes them). Blocking; reads
    /// every session record.
    pub fn count_open(&self) -> io::Result<usize> {
        let mut open = 0;
        for entry in fs::read_dir(self.state.join("sessions"))? {
            let upload_id = entry?.file_name().to_string_lossy().into_owned();
            if let Ok(Some(record)) = self.load_session(&upload_id)
                && record.state == SessionState::Open
            {
                open += 1;
            }
        }
        Ok(open)
    }

    /// Removes sessions past their expiry (open ones with their parts, finished ones with the
    /// record kept for idempotent completes). Returns the ids of those removed, each with
    /// whether it was still open.
    pub fn sweep_expired(&self, now: SystemTime) -> io::Result<Vec<(String, bool)>> {
        let mut removed = Vec::new();
        for entry in fs::read_dir(self.state.join("sessions"))? {
            let entry = entry?;
            let upload_id = entry.file_name().to_string_lossy().into_owned();
            let mut was_open = false;
            let expired = match self.load_session(&upload_id) {
                Ok(Some(record)) => {
                    was_open = record.state == SessionState::Open;
                    record.is_expired(now)
                }
                // A folder without a readable record is a crash left-over of create.
                Ok(None) | Err(_) => entry
                    .metadata()?
                    .modified()
                    .map(|at| {
                        now.duration_since(at).unwrap_or_default() > Duration::from_secs(3600)
                    })
                    .unwrap_or(true),
            };
            if expired {
                fs::remove_dir_all(entry.path())?;
                removed.push((upload_id, was_open));
            }
        }
        Ok(removed)
    }
}

/// How a received part's bytes were stored, for `commit_part`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// In this file, to be renamed into `parts/`.
    Loose(PathBuf),
    /// In the session data file.
    InPlace { offset: u64, size: u64 },
}

/// A new etag for a part with this CRC32C: the CRC and 64 random bits, so a replaced part
/// never gets the etag of the version it replaced.
pub fn new_etag(crc32c: u32) -> String {
    format!("{crc32c:08x}{:016x}", rand::random::<u64>())
}

/// Parses `<n>.<etag>` (loose, `length` bytes at `path`) or `<n>.<etag>.<offset>.<size>`
/// (in place). Anything else is not a part.
fn parse_part_name(name: &str, path: PathBuf, length: u64) -> Option<PartFile> {
    let mut fields = name.split('.');
    let part_number = fields.next()?.parse().ok()?;
    let etag = fields.next()?;
    if etag.len() != 24 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let crc32c = u32::from_str_radix(&etag[..8], 16).ok()?;
    let (size, location) = match (fields.next(), fields.next(), fields.next()) {
        (None, None, None) => (length, Location::Loose(path)),
        (Some(offset), Some(size), None) => (
            size.parse().ok()?,
            Location::InPlace {
                offset: offset.parse().ok()?,
            },
        ),
        _ => return None,
    };
    Some(PartFile {
        part_number,
        etag: etag.to_string(),
        crc32c,
        size,
        location,
    })
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// RFC 3339 text of a Unix time, as the protocol shows timestamps.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// Writes `bytes` beside `path`, fsyncs, and renames over `path`: readers see the old or the
/// new content, never a mix.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = path.with_extension(format!("{:08x}.tmp", rand::random::<u32>()));
    let mut file = File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temp, path)?;
    sync_dir(
        path.parent()
            .expect("an atomically written file has a parent"),
    )
}

/// Fsyncs a directory so that a rename inside it survives a power loss.
/// Removes group and other permissions from a folder (or file) of ours.
pub fn make_private(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & !0o077))?;
    }
    Ok(())
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn remove_dir_contents(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            fs::remove_dir_all(path)?;
        } else {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_webhook_posts_are_listed_oldest_first_but_those_held_at_most_so_many() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        // Written in one order, aged in another: up_3 oldest, then up_1, up_4, up_0, up_2.
        for (id, age) in [(0, 20), (1, 40), (2, 10), (3, 50), (4, 30)] {
            let upload_id = format!("up_{id}");
            storage
                .record_webhook(&upload_id, &serde_json::json!({ "n": id }))
                .unwrap();
            let at = SystemTime::now() - Duration::from_secs(age);
            let file = fs::File::open(storage.webhook_path(&upload_id)).unwrap();
            file.set_modified(at).unwrap();
        }
        fs::write(storage.state.join("webhooks/up_9.json.tmp"), b"{").unwrap();
        let held: HashSet<String> = ["up_1".to_string()].into();
        let listed = |limit| {
            let (found, waiting) = storage.pending_webhooks(&held, limit).unwrap();
            assert_eq!(waiting, 5, "counted, held or not");
            found.into_iter().map(|(id, _)| id).collect::<Vec<_>>()
        };
        assert_eq!(listed(2), ["up_3", "up_4"]);
        assert_eq!(listed(10), ["up_3", "up_4", "up_0", "up_2"]);
        assert!(listed(0).is_empty());
        let (first, _) = storage.pending_webhooks(&HashSet::new(), 1).unwrap();
        assert_eq!(first, [("up_3".to_string(), serde_json::json!({ "n": 3 }))]);
    }

    #[test]
    fn part_names_round_trip_and_reject_foreign_files() {
        let etag = new_etag(0xdead_beef);
        let path = PathBuf::from("p");
        let loose = parse_part_name(&format!("000042.{etag}"), path.clone(), 7).unwrap();
        assert_eq!(
            (loose.part_number, loose.crc32c, loose.size),
            (42, 0xdead_beef, 7)
        );
        assert_eq!(loose.location, Location::Loose(path.clone()));
        let in_place = parse_part_name(&format!("000003.{etag}.16.8"), path.clone(), 0).unwrap();
        assert_eq!(in_place.location, Location::InPlace { offset: 16 });
        assert_eq!(in_place.size, 8);
        for foreign in [
            "000001.tmp",
            "README",
            "x.0123456789abcdef01234567",
            "1.0123456789abcdef01234567.1",
        ] {
            assert_eq!(parse_part_name(foreign, path.clone(), 0), None, "{foreign}");
        }
    }

    #[test]
    fn newest_version_of_a_part_wins_and_the_older_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let record = SessionRecord {
            version: 1,
            upload_id: "up_0".into(),
            filename: "f".into(),
            workspace_id: "w".into(),
            total_size: 3,
            mime_type: None,
            metadata: BTreeMap::new(),
            sha256: None,
            mtime: None,
            min_part_size: 1,
            max_part_size: 10,
            max_parts: 10,
            created_at_unix: 0,
            expires_at_unix: u64::MAX,
            state: SessionState::Open,
            completion: None,
        };
        storage.create_session(&record).unwrap();
        for content in [&b"old"[..], &b"new!"[..]] {
            let incoming = storage.incoming_path("up_0");
            fs::write(&incoming, content).unwrap();
            let etag = new_etag(crc32c::crc32c(content));
            storage
                .commit_part("up_0", 1, &etag, &Received::Loose(incoming))
                .unwrap();
        }
        let parts = storage.list_parts("up_0").unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].size, 4);
        assert_eq!(parts[0].crc32c, crc32c::crc32c(b"new!"));
    }
}
