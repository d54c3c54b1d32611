//! Receiving part bodies, and hashing stored parts in the background.
//!
//! A body streams through a bounded channel to a blocking writer that computes the CRC32C as
//! the bytes land and fsyncs before it returns, so memory does not grow with part size, and a
//! body that ends short of its Content-Length is not committed. The writer owns the slot
//! reservation of an in-place part until its last write is done: even if the request is dropped
//! mid-way, no other writer can enter the slot while bytes of this one may still land in it.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use futures_util::StreamExt;

use super::AppState;
use super::error::ApiError;
use super::live::{Live, Placement};
use super::storage::Received;
use crate::protocol::ErrorCode;

/// Body chunks buffered between the connection and the disk writer of one part.
const PART_CHANNEL_CHUNKS: usize = 8;

/// A part's claim on where it is written; released (without committing) when dropped.
pub struct Reservation {
    live: Arc<Mutex<Live>>,
    part_number: u32,
    size: u64,
    placement: Placement,
    committed: bool,
}

impl Reservation {
    /// Checks the part fits (see `Live::fits`) and chooses where it goes (at `offset`, when the
    /// client gave it); `Err` with the bytes
    /// the session already holds under other numbers when it would outgrow its file.
    pub fn new(
        live: Arc<Mutex<Live>>,
        part_number: u32,
        size: u64,
        offset: Option<u64>,
    ) -> Result<Reservation, u64> {
        let placement = {
            let mut state = live.lock().expect("live state is never poisoned");
            state.fits(part_number, size)?;
            state.place(part_number, size, offset)
        };
        Ok(Reservation {
            live,
            part_number,
            size,
            placement,
            committed: false,
        })
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Whether the part still fits, now that the parts received meanwhile are stored; call it
    /// under the session's lock, right before the commit.
    pub fn still_fits(&self) -> Result<(), u64> {
        let live = self.live.lock().expect("live state is never poisoned");
        live.fits(self.part_number, self.size)
    }

    /// Records the part as stored under `etag`.
    pub fn commit(mut self, etag: &str, size: u64) {
        self.committed = true;
        let mut live = self.live.lock().expect("live state is never poisoned");
        live.finish(self.part_number, self.placement, Some((etag, size)));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            let mut live = self.live.lock().expect("live state is never poisoned");
            live.finish(self.part_number, self.placement, None);
        }
    }
}

/// Where the writer puts the bytes.
pub enum Sink {
    Loose(std::path::PathBuf),
    InPlace {
        data: std::path::PathBuf,
        offset: u64,
    },
}

/// Streams `body` into `sink`; returns what was received, its CRC32C and the reservation.
/// Fails, committing nothing, when the body ends short of `content_length`.
/// A body that sends nothing for `idle_timeout` is abandoned (`408`), so a client that stops
/// short of its Content-Length on a connection it keeps open holds nothing for long.
pub async fn receive(
    body: Body,
    sink: Sink,
    content_length: u64,
    reservation: Reservation,
    idle_timeout: std::time::Duration,
) -> Result<(Received, u32, Reservation), ApiError> {
    let loose = match &sink {
        Sink::Loose(path) => Some(path.clone()),
        Sink::InPlace { .. } => None,
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(PART_CHANNEL_CHUNKS);
    let writer = tokio::task::spawn_blocking(move || (write_sink(&sink, receiver), reservation));
    let pumped = pump(body, sender, content_length, idle_timeout).await;
    let (written, reservation) = writer
        .await
        .map_err(|error| ApiError::internal("write the part", &error))?;
    let (stored, size, crc) = written.map_err(|error| {
        if let Some(path) = &loose {
            let _ = std::fs::remove_file(path);
        }
        ApiError::storage("write the part", &error)
    })?;
    if let Err(refusal) = pumped.verdict(content_length, size, idle_timeout) {
        if let Received::Loose(path) = &stored {
            let _ = std::fs::remove_file(path);
        }
        return Err(refusal);
    }
    Ok((stored, crc, reservation))
}

/// How the body's stream ended.
struct Pumped {
    received: u64,
    /// The connection failed mid-body.
    failure: Option<String>,
    /// Nothing arrived for the idle timeout.
    idle: bool,
}

/// Passes the body's chunks to the writer until it ends, fails, stalls, or overruns
/// `content_length`.
async fn pump(
    body: Body,
    sender: tokio::sync::mpsc::Sender<Bytes>,
    content_length: u64,
    idle_timeout: std::time::Duration,
) -> Pumped {
    let mut stream = body.into_data_stream();
    let mut pumped = Pumped {
        received: 0,
        failure: None,
        idle: false,
    };
    loop {
        match tokio::time::timeout(idle_timeout, stream.next()).await {
            Ok(Some(Ok(chunk))) => {
                pumped.received += chunk.len() as u64;
                if pumped.received > content_length || sender.send(chunk).await.is_err() {
                    return pumped;
                }
            }
            Ok(Some(Err(error))) => {
                pumped.failure = Some(error.to_string());
                return pumped;
            }
            Ok(None) => return pumped,
            Err(_) => {
                pumped.idle = true;
                return pumped;
            }
        }
    }
}

impl Pumped {
    /// The refusal for a body that did not arrive whole (`written` bytes reached the disk).
    fn verdict(
        &self,
        content_length: u64,
        written: u64,
        idle_timeout: std::time::Duration,
    ) -> Result<(), ApiError> {
        let received = self.received;
        if self.idle {
            return Err(ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the body sent nothing for {idle_timeout:?} after {received} of {content_length} bytes; nothing was stored"
                ),
            ));
        }
        if self.failure.is_some() || received != content_length || written != content_length {
            let cause = self.failure.as_ref().map(|error| format!(" ({error})"));
            return Err(ApiError::new(
                ErrorCode::IncompleteBody,
                format!(
                    "the body ended after {received} of {content_length} bytes{}; nothing was stored",
                    cause.unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }
}

/// Writes what arrives on `receiver` into `sink`, then syncs; returns where the bytes are, how
/// many, and their CRC32C. Blocking.
fn write_sink(
    sink: &Sink,
    mut receiver: tokio::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<(Received, u64, u32)> {
    let (mut size, mut crc) = (0u64, 0u32);
    match sink {
        Sink::Loose(path) => {
            let mut file = std::fs::File::create(path)?;
            while let Some(chunk) = receiver.blocking_recv() {
                crc = crc32c::crc32c_append(crc, &chunk);
                file.write_all(&chunk)?;
                size += chunk.len() as u64;
            }
            file.sync_all()?;
            Ok((Received::Loose(path.clone()), size, crc))
        }
        Sink::InPlace { data, offset } => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(data)?;
            while let Some(chunk) = receiver.blocking_recv() {
                crc = crc32c::crc32c_append(crc, &chunk);
                if let Err(error) = file.write_all_at(&chunk, offset + size) {
                    // Give back the disk the slot took so far (a full disk, say).
                    release_range(&file, *offset, size + chunk.len() as u64);
                    return Err(error);
                }
                size += chunk.len() as u64;
            }
            file.sync_data()?;
            let offset = *offset;
            Ok((Received::InPlace { offset, size }, size, crc))
        }
    }
}

/// Frees the blocks of `length` bytes at `offset` of an in-place data file (its size stays),
/// where the file system can; elsewhere they stay allocated until the session ends.
fn release_range(file: &std::fs::File, offset: u64, length: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(length)) else {
            return;
        };
        // SAFETY: a valid open descriptor; fallocate only changes the file's allocation.
        unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, length) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, length);
}

/// Hashes the in-place parts of a session in order, as far as they are stored, then returns.
/// Started after each in-place commit; at most one runs per session (the live state says so).
pub fn advance_hash(app: Arc<AppState>, upload_id: String) {
    tokio::spawn(async move {
        loop {
            let Some(live) = app.live.get(&upload_id) else {
                return;
            };
            let (job, mut hasher) = {
                let mut state = live.lock().expect("live state is never poisoned");
                let Some(job) = state.next_hash_job() else {
                    return;
                };
                let hasher = state.take_hasher();
                (job, hasher)
            };
            let storage = app.storage.clone();
            let (id, offset, size) = (upload_id.clone(), job.offset, job.size);
            let hashed = tokio::task::spawn_blocking(move || {
                storage
                    .hash_range(&id, offset, size, &mut hasher)
                    .map(|()| hasher)
            })
            .await;
            let mut state = live.lock().expect("live state is never poisoned");
            match hashed {
                Ok(Ok(hasher)) => state.hashed(&job, hasher),
                Ok(Err(error)) => {
                    tracing::warn!(upload_id, %error, "hashing stored parts failed; complete will hash");
                    state.hash_failed();
                    return;
                }
                Err(_) => {
                    state.hash_failed();
                    return;
                }
            }
        }
    });
}
