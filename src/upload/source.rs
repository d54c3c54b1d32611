//! Reading the local file. All reads are positional (`read_exact_at`) on blocking threads, in
//! fixed-size chunks through bounded channels, so memory per part in flight is a few chunks
//! whatever the part or file size, and the async runtime never waits on the disk.
//!
//! A small file (at most one chunk) is read whole when it is opened, and hashed and
//! checksummed in the same pass: one trip to a blocking thread instead of one per step (hash,
//! up-front checksums, body), which was most of what a small file cost. It holds no more
//! memory than one chunk of a streamed part.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
// Tokio's clock: the same as std's in production, and pausable in tests.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backend::{PartBody, PartSpec, PartSums, UpFront};
use super::bwlimit::Limiter;
use super::open::{OpenError, Reach};
use super::progress::Progress;
use crate::queue::Fingerprint;

mod ahead;
mod pool;
pub use ahead::SumsAhead;
use pool::Aligned;

/// Bytes read per chunk of a part body: large enough that syscalls and channel hand-offs are a
/// small share of the work, small enough that a few per part are nothing to memory.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Chunks buffered ahead of the connection, per part.
const CHUNKS_AHEAD: usize = 4;
/// Read size of the hashing pass.
const HASH_CHUNK_BYTES: usize = 1024 * 1024;
/// Files up to this size are read whole when opened (see the module's doc): one chunk.
pub const PRELOAD_MAX_BYTES: u64 = READ_CHUNK_BYTES as u64;

/// An open local file and the fingerprint it had when opened.
#[derive(Debug)]
pub struct LocalFile {
    path: PathBuf,
    file: File,
    fingerprint: Fingerprint,
    /// Whether links are followed when the path is checked again.
    follows_links: bool,
    /// A small file's content, read when it was opened.
    preloaded: Option<Preloaded>,
    /// The file was read whole and was unchanged right after the read (see `is_snapshot`).
    snapshot: bool,
}

/// A small file's content, read right after its fingerprint was taken, with its SHA-256 and
/// the checksums of it as one part. A change during the read makes it no snapshot, and the
/// engine then checks the file after the upload, as for a streamed one.
#[derive(Debug)]
struct Preloaded {
    content: Bytes,
    sha256: String,
    crc32c: u32,
    /// Computed only when the remote wants it up front.
    md5: Option<[u8; 16]>,
}

/// The SHA-256 of a file: known already (a preloaded file), or being computed.
pub enum Hashing {
    Done(String),
    Running(tokio::task::JoinHandle<io::Result<String>>),
}

impl Hashing {
    /// The lowercase hex digest, or why there is none.
    pub async fn finish(self) -> io::Result<String> {
        match self {
            Hashing::Done(digest) => Ok(digest),
            Hashing::Running(task) => task
                .await
                .unwrap_or_else(|join| Err(io::Error::other(join))),
        }
    }
}

impl LocalFile {
    /// Opens `path` as `reach` allows (a regular file only) and fingerprints the open handle;
    /// a small file is also read, hashed and checksummed (with the up-front checksums
    /// `wanted`). Blocking.
    pub fn open(path: &Path, reach: &Reach, wanted: UpFront) -> Result<LocalFile, OpenError> {
        let file = super::open::open(path, reach)?;
        let fingerprint = Fingerprint::of(&file.metadata()?);
        let preloaded = match fingerprint.size <= PRELOAD_MAX_BYTES {
            true => Preloaded::read(&file, fingerprint.size, wanted),
            false => None,
        };
        let mut local = LocalFile {
            path: path.to_path_buf(),
            fingerprint,
            file,
            follows_links: *reach == Reach::AsGiven,
            preloaded,
            snapshot: false,
        };
        local.snapshot = local.preloaded.is_some() && !local.changed();
        Ok(local)
    }

    /// Whether the content to send was read whole between two checks that found the file as
    /// fingerprinted: it is that version, whatever happens to the file later, so it needs no
    /// check after the upload. (A later change is the watcher's to report, as one after any
    /// upload is.)
    pub fn is_snapshot(&self) -> bool {
        self.snapshot
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the file may have changed since it was opened: the open handle's fingerprint
    /// moved (written, truncated), or the path now names another file (replaced, removed, or
    /// swapped for a link). Blocking.
    pub fn changed(&self) -> bool {
        let handle = self.file.metadata().map(|m| Fingerprint::of(&m));
        let by_path = if self.follows_links {
            std::fs::metadata(&self.path)
        } else {
            std::fs::symlink_metadata(&self.path)
        }
        .map(|m| Fingerprint::of(&m));
        !matches!((handle, by_path), (Ok(a), Ok(b)) if a == self.fingerprint && b == self.fingerprint)
    }

    /// The preloaded content, when `part` is the whole of a preloaded file.
    fn preloaded_part(&self, part: PartSpec) -> Option<&Preloaded> {
        let whole = part.offset == 0 && part.size == self.fingerprint.size;
        self.preloaded.as_ref().filter(|_| whole)
    }

    /// Streams the byte range of `part`, within the bandwidth `limiter` if there is one. The
    /// stream ends in an error if the file is shorter than the range. The receiver yields the
    /// CRC32C of what was streamed, or the read error.
    pub fn part_body(
        self: &Arc<Self>,
        part: PartSpec,
        attempt: Arc<AttemptWatch>,
        progress: Arc<Progress>,
        limiter: Option<Arc<Limiter>>,
    ) -> (PartBody, oneshot::Receiver<io::Result<u32>>) {
        let (chunk_sender, chunk_receiver) = mpsc::channel::<io::Result<Bytes>>(CHUNKS_AHEAD);
        let (crc_sender, crc_receiver) = oneshot::channel();
        self.feed(part, chunk_sender, crc_sender);
        let feed = Feed {
            receiver: chunk_receiver,
            pending: Bytes::new(),
            attempt,
            progress,
            limiter,
        };
        let stream = futures_util::stream::unfold(feed, |mut feed| async move {
            let item = feed.next().await?;
            Some((item, feed))
        });
        let body = PartBody {
            stream: Box::pin(stream),
            len: part.size,
            sums: PartSums::default(),
        };
        (body, crc_receiver)
    }

    /// Fills `chunks` with the bytes of `part`, preloaded or read on a blocking thread, and
    /// sends their CRC32C (or the read error) to `crc` at the end.
    fn feed(
        self: &Arc<Self>,
        part: PartSpec,
        chunks: mpsc::Sender<io::Result<Bytes>>,
        crc: oneshot::Sender<io::Result<u32>>,
    ) {
        if let Some(preloaded) = self.preloaded_part(part) {
            // Room for one chunk: the send cannot wait. An empty file sends none, as streamed.
            if !preloaded.content.is_empty() {
                let _ = chunks.try_send(Ok(preloaded.content.clone()));
            }
            let _ = crc.send(Ok(preloaded.crc32c));
            return;
        }
        let source = self.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = source.read_range(part, &chunks);
            if let Err(error) = &outcome {
                // The stream gets a copy; the original, with its kind, goes to the engine.
                let _ = chunks.blocking_send(Err(io::Error::new(error.kind(), error.to_string())));
            }
            let _ = crc.send(outcome);
        });
    }

    /// Reads `part` chunk by chunk into `sender`, returning the CRC32C of the range. Stops early
    /// (returning what it has) when the consumer has gone away.
    fn read_range(
        &self,
        part: PartSpec,
        sender: &mpsc::Sender<io::Result<Bytes>>,
    ) -> io::Result<u32> {
        let mut crc = 0u32;
        let mut offset = part.offset;
        let end = part.offset + part.size;
        while offset < end {
            let length = (end - offset).min(READ_CHUNK_BYTES as u64) as usize;
            let chunk = pool::CHUNKS
                .read_chunk(&self.file, offset, length)
                .map_err(shrank)?;
            crc = crc32c::crc32c_append(crc, &chunk);
            offset += length as u64;
            if sender.blocking_send(Ok(chunk)).is_err() {
                break;
            }
        }
        Ok(crc)
    }

    /// The checksums of `part` a remote wants up front, when they were computed as the file
    /// was preloaded (without blocking).
    pub fn preloaded_sums(&self, part: PartSpec, wanted: UpFront) -> Option<PartSums> {
        let preloaded = self.preloaded_part(part)?;
        let md5 = match wanted.md5 {
            true => Some(preloaded.md5?),
            false => None,
        };
        Some(PartSums {
            crc32c: wanted.crc32c.then_some(preloaded.crc32c),
            md5,
        })
    }

    /// The checksums of `part` a remote wants before its body (`UpFront`), read from the file.
    /// Blocking.
    pub fn sums(&self, part: PartSpec, wanted: UpFront) -> io::Result<PartSums> {
        use md5::Digest as _;
        let mut crc = 0u32;
        let mut md5 = md5::Md5::new();
        let mut buffer = Aligned::new(READ_CHUNK_BYTES.min(part.size.max(1) as usize));
        let (mut offset, end) = (part.offset, part.offset + part.size);
        while offset < end {
            let length = (end - offset).min(buffer.bytes().len() as u64) as usize;
            let bytes = &mut buffer.bytes_mut()[..length];
            self.file.read_exact_at(bytes, offset).map_err(shrank)?;
            if wanted.crc32c {
                crc = crc32c::crc32c_append(crc, bytes);
            }
            if wanted.md5 {
                md5.update(&*bytes);
            }
            offset += length as u64;
        }
        Ok(PartSums {
            crc32c: wanted.crc32c.then_some(crc),
            md5: wanted.md5.then(|| md5.finalize().into()),
        })
    }

    /// Hashes the whole file with SHA-256 on a blocking thread, reading sequentially; returns
    /// lowercase hex. Gives up with `Interrupted` once `cancel` fires. A preloaded file's
    /// digest is known already. On the way it sums the parts for `ahead`, if given.
    pub fn sha256(
        self: &Arc<Self>,
        cancel: CancellationToken,
        ahead: Option<Arc<SumsAhead>>,
    ) -> Hashing {
        if let Some(preloaded) = &self.preloaded {
            // Its parts take the preloaded sums; none may wait for a pass.
            if let Some(ahead) = &ahead {
                ahead.stop();
            }
            return Hashing::Done(preloaded.sha256.clone());
        }
        let source = self.clone();
        Hashing::Running(tokio::task::spawn_blocking(move || {
            source.hash(&cancel, ahead.as_deref())
        }))
    }

    /// The hashing pass (see `sha256`). Blocking.
    fn hash(&self, cancel: &CancellationToken, ahead: Option<&SumsAhead>) -> io::Result<String> {
        let mut hasher = Sha256::new();
        let mut parts = ahead.map(SumsAhead::pass);
        // No bigger than the file (one byte more, to see its end in one read): zeroing a whole
        // chunk for every small file costs more than hashing it.
        let wanted = self.fingerprint.size.saturating_add(1);
        let mut buffer = Aligned::new((HASH_CHUNK_BYTES as u64).min(wanted) as usize);
        let mut offset = 0u64;
        loop {
            if cancel.is_cancelled() {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "hashing cancelled",
                ));
            }
            let read = self.file.read_at(buffer.bytes_mut(), offset)?;
            if read == 0 {
                break;
            }
            let bytes = &buffer.bytes()[..read];
            hasher.update(bytes);
            if let Some(parts) = &mut parts {
                parts.update(bytes);
            }
            offset += read as u64;
        }
        if offset != self.fingerprint.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file changed size while it was being hashed",
            ));
        }
        Ok(hex::encode(hasher.finalize()))
    }
}

impl Preloaded {
    /// Reads a file of `size` bytes whole and sums it; `None` when the file no longer has that
    /// size (it is being written) or cannot be read: the streamed path then sees the change or
    /// reports the error as any read's. Blocking.
    fn read(file: &File, size: u64, wanted: UpFront) -> Option<Preloaded> {
        // One byte more than expected, to see a file that grew.
        let mut buffer = BytesMut::zeroed(size as usize + 1);
        let mut filled = 0;
        loop {
            let read = file.read_at(&mut buffer[filled..], filled as u64).ok()?;
            filled += read;
            if read == 0 || filled == buffer.len() {
                break;
            }
        }
        if filled as u64 != size {
            return None;
        }
        buffer.truncate(filled);
        let content = buffer.freeze();
        let md5 = wanted.md5.then(|| {
            use md5::Digest as _;
            md5::Md5::digest(&content).into()
        });
        Some(Preloaded {
            sha256: hex::encode(Sha256::digest(&content)),
            crc32c: crc32c::crc32c(&content),
            md5,
            content,
        })
    }
}

/// The consuming end of a part body: chunks as the reader sends them, or, under a bandwidth
/// limit, cut into pieces that each wait their turn; each piece counts as progress when taken.
struct Feed {
    receiver: mpsc::Receiver<io::Result<Bytes>>,
    /// What is left of the chunk being cut into pieces.
    pending: Bytes,
    attempt: Arc<AttemptWatch>,
    progress: Arc<Progress>,
    limiter: Option<Arc<Limiter>>,
}

impl Feed {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.pending.is_empty() {
            match self.receiver.recv().await? {
                Ok(chunk) => self.pending = chunk,
                Err(error) => return Some(Err(error)),
            }
        }
        let mut piece_bytes = self.pending.len();
        if let Some(limiter) = &self.limiter {
            let piece = limiter.piece_bytes().unwrap_or(u64::MAX);
            piece_bytes = piece_bytes.min(piece as usize);
            limiter.acquire(piece_bytes as u64).await;
        }
        let piece = self.pending.split_to(piece_bytes);
        self.attempt.advanced(piece.len() as u64);
        self.progress.add_in_flight(piece.len() as u64);
        Some(Ok(piece))
    }
}

/// A read that ended before the range did: the file shrank.
fn shrank(error: io::Error) -> io::Error {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(error.kind(), "the file shrank while it was being read")
    } else {
        error
    }
}

/// What one attempt at a part has streamed, and when it last made progress; the engine's stall
/// watchdog reads it.
#[derive(Debug)]
pub struct AttemptWatch {
    started: Instant,
    streamed: AtomicU64,
    last_progress_ms: AtomicU64,
}

impl AttemptWatch {
    pub fn new() -> AttemptWatch {
        AttemptWatch {
            started: Instant::now(),
            streamed: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(0),
        }
    }

    fn advanced(&self, bytes: u64) {
        self.streamed.fetch_add(bytes, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        self.last_progress_ms.store(now, Ordering::Relaxed);
    }

    pub fn streamed(&self) -> u64 {
        self.streamed.load(Ordering::Relaxed)
    }

    /// Time since the last chunk was taken (or since the start).
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Resolves once the attempt has made no progress for `limit`.
    pub async fn stalled(&self, limit: Duration) {
        loop {
            let idle = self.idle();
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

impl Default for AttemptWatch {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stall watchdog on tokio's paused clock: it fires after exactly `limit` without
    /// progress, and progress pushes it out.
    #[tokio::test(start_paused = true)]
    async fn a_stall_is_declared_after_the_limit_without_progress() {
        let limit = Duration::from_secs(60);
        let watch = Arc::new(AttemptWatch::new());
        let started = Instant::now();
        let progressing = watch.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            progressing.advanced(1024);
        });
        watch.stalled(limit).await;
        assert_eq!(
            started.elapsed().as_secs(),
            90,
            "30 s of progress, then 60 s idle"
        );
        assert_eq!(watch.streamed(), 1024);
        assert!(watch.idle() >= limit);
    }

    /// A file of at most one chunk is read whole at open and is a snapshot; a bigger one is
    /// streamed and is not; one that changes after the open is changed either way.
    #[test]
    fn a_small_file_is_a_snapshot_and_a_streamed_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (0, true),
            (1, true),
            (PRELOAD_MAX_BYTES, true),
            (PRELOAD_MAX_BYTES + 1, false),
        ];
        for (size, snapshot) in cases {
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, vec![7u8; size as usize]).unwrap();
            let file = LocalFile::open(&path, &Reach::AsGiven, UpFront::default()).unwrap();
            assert_eq!(file.is_snapshot(), snapshot, "{size} bytes");
            assert!(!file.changed(), "{size} bytes, untouched");
            std::fs::write(&path, b"another version").unwrap();
            assert!(file.changed(), "{size} bytes, rewritten");
        }
    }
}
