//! Reading the local file. All reads are positional (`read_exact_at`) on blocking threads, in
//! fixed-size chunks through bounded channels, so memory per part in flight is a few chunks
//! whatever the part or file size, and the async runtime never waits on the disk.

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
use super::open::{OpenError, Reach};
use super::progress::Progress;
use crate::queue::Fingerprint;

/// Bytes read per chunk of a part body: large enough that syscalls and channel hand-offs are a
/// small share of the work, small enough that a few per part are nothing to memory.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Chunks buffered ahead of the connection, per part.
const CHUNKS_AHEAD: usize = 4;
/// Read size of the hashing pass.
const HASH_CHUNK_BYTES: usize = 1024 * 1024;

/// An open local file and the fingerprint it had when opened.
#[derive(Debug)]
pub struct LocalFile {
    path: PathBuf,
    file: File,
    fingerprint: Fingerprint,
    /// Whether links are followed when the path is checked again.
    follows_links: bool,
}

impl LocalFile {
    /// Opens `path` as `reach` allows (a regular file only) and fingerprints the open handle.
    /// Blocking.
    pub fn open(path: &Path, reach: &Reach) -> Result<LocalFile, OpenError> {
        let file = super::open::open(path, reach)?;
        let metadata = file.metadata()?;
        Ok(LocalFile {
            path: path.to_path_buf(),
            fingerprint: Fingerprint::of(&metadata),
            file,
            follows_links: *reach == Reach::AsGiven,
        })
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

    /// Streams the byte range of `part`. The stream ends in an error if the file is shorter
    /// than the range. The receiver yields the CRC32C of what was streamed, or the read error.
    pub fn part_body(
        self: &Arc<Self>,
        part: PartSpec,
        attempt: Arc<AttemptWatch>,
        progress: Arc<Progress>,
    ) -> (PartBody, oneshot::Receiver<io::Result<u32>>) {
        let (chunk_sender, chunk_receiver) = mpsc::channel::<io::Result<Bytes>>(CHUNKS_AHEAD);
        let (crc_sender, crc_receiver) = oneshot::channel();
        let source = self.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = source.read_range(part, &chunk_sender);
            if let Err(error) = &outcome {
                // The stream gets a copy; the original, with its kind, goes to the engine.
                let _ = chunk_sender
                    .blocking_send(Err(io::Error::new(error.kind(), error.to_string())));
            }
            let _ = crc_sender.send(outcome);
        });
        let stream = futures_util::stream::unfold(
            (chunk_receiver, attempt, progress),
            |(mut receiver, attempt, progress)| async move {
                let item = receiver.recv().await?;
                if let Ok(chunk) = &item {
                    attempt.advanced(chunk.len() as u64);
                    progress.add_in_flight(chunk.len() as u64);
                }
                Some((item, (receiver, attempt, progress)))
            },
        );
        let body = PartBody {
            stream: Box::pin(stream),
            len: part.size,
            sums: PartSums::default(),
        };
        (body, crc_receiver)
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
            let mut buffer = BytesMut::zeroed(length);
            self.file
                .read_exact_at(&mut buffer, offset)
                .map_err(shrank)?;
            crc = crc32c::crc32c_append(crc, &buffer);
            offset += length as u64;
            if sender.blocking_send(Ok(buffer.freeze())).is_err() {
                break;
            }
        }
        Ok(crc)
    }

    /// The checksums of `part` a remote wants before its body (`UpFront`), read from the file.
    /// Blocking.
    pub fn sums(&self, part: PartSpec, wanted: UpFront) -> io::Result<PartSums> {
        use md5::Digest as _;
        let mut crc = 0u32;
        let mut md5 = md5::Md5::new();
        let mut buffer = vec![0u8; READ_CHUNK_BYTES.min(part.size.max(1) as usize)];
        let (mut offset, end) = (part.offset, part.offset + part.size);
        while offset < end {
            let length = (end - offset).min(buffer.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buffer[..length], offset)
                .map_err(shrank)?;
            if wanted.crc32c {
                crc = crc32c::crc32c_append(crc, &buffer[..length]);
            }
            if wanted.md5 {
                md5.update(&buffer[..length]);
            }
            offset += length as u64;
        }
        Ok(PartSums {
            crc32c: wanted.crc32c.then_some(crc),
            md5: wanted.md5.then(|| md5.finalize().into()),
        })
    }

    /// Hashes the whole file with SHA-256 on a blocking thread, reading sequentially; returns
    /// lowercase hex. Gives up with `Interrupted` once `cancel` fires.
    pub fn sha256(
        self: &Arc<Self>,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<io::Result<String>> {
        let source = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut hasher = Sha256::new();
            // No bigger than the file (one byte more, to see its end in one read): zeroing a
            // whole chunk for every small file costs more than hashing it.
            let wanted = source.fingerprint.size.saturating_add(1);
            let mut buffer = vec![0u8; (HASH_CHUNK_BYTES as u64).min(wanted) as usize];
            let mut offset = 0u64;
            loop {
                if cancel.is_cancelled() {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "hashing cancelled",
                    ));
                }
                let read = source.file.read_at(&mut buffer, offset)?;
                if read == 0 {
                    break;
                }
                hasher.update(&buffer[..read]);
                offset += read as u64;
            }
            if offset != source.fingerprint.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file changed size while it was being hashed",
                ));
            }
            Ok(hex::encode(hasher.finalize()))
        })
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
}
