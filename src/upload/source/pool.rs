//! Read buffers: page-aligned, and for part bodies reused.
//!
//! A part body is read a chunk at a time into buffers that the HTTP client frees once the bytes
//! are on the socket. Allocated afresh, each chunk (above the allocator's mmap threshold) was
//! mapped, faulted in page by page and unmapped again, and its bytes started 16 bytes past a
//! page boundary, where the kernel's copy into it ran markedly slower. So chunks come from a
//! pool (`CHUNKS`, at most 32 × 256 KiB kept idle) as `Bytes` that give their buffer back when
//! dropped, and every read buffer starts on a page boundary (`Aligned`). Pushing 1 GiB to
//! Garage took about 2.1 CPU seconds before, 1.95 with the pool, and 1.55 to 1.77 with the
//! hashing pass's buffer aligned as well (docs/s3-benchmarks.md).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use bytes::Bytes;

use super::READ_CHUNK_BYTES;

/// The pool the part readers share: it keeps as many buffers as 8 parts have in flight, with
/// their chunks ahead.
pub static CHUNKS: Pool = Pool::new(32);

/// Where read buffers start.
const PAGE: usize = 4096;

/// A zeroed buffer of `len` bytes starting on a page boundary (of a `Vec` one page longer).
#[derive(Debug)]
pub struct Aligned {
    buffer: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    pub fn new(len: usize) -> Aligned {
        let buffer = vec![0; len + PAGE];
        let start = buffer.as_ptr().align_offset(PAGE);
        Aligned { buffer, start, len }
    }

    /// Holds nothing: what a chunk leaves behind when its buffer goes back.
    fn empty() -> Aligned {
        Aligned {
            buffer: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buffer[self.start..self.start + self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buffer[self.start..self.start + self.len]
    }
}

/// Buffers of `READ_CHUNK_BYTES` bytes, free for reuse.
pub struct Pool {
    free: Mutex<Vec<Aligned>>,
    kept: usize,
}

impl Pool {
    const fn new(kept: usize) -> Pool {
        Pool {
            free: Mutex::new(Vec::new()),
            kept,
        }
    }

    /// Reads `length` bytes (at most `READ_CHUNK_BYTES`) at `offset` into a pooled buffer.
    pub fn read_chunk(&'static self, file: &File, offset: u64, length: usize) -> io::Result<Bytes> {
        let mut buffer = self.take();
        file.read_exact_at(&mut buffer.bytes_mut()[..length], offset)?;
        let chunk = Chunk {
            buffer,
            length,
            pool: self,
        };
        Ok(Bytes::from_owner(chunk))
    }

    /// A kept buffer, or a new one.
    fn take(&self) -> Aligned {
        let kept = self.free.lock().map(|mut free| free.pop()).unwrap_or(None);
        kept.unwrap_or_else(|| Aligned::new(READ_CHUNK_BYTES))
    }

    fn give_back(&self, buffer: Aligned) {
        if let Ok(mut free) = self.free.lock()
            && free.len() < self.kept
        {
            free.push(buffer);
        }
    }
}

/// The bytes read into a pooled buffer; the buffer goes back to its pool when dropped.
struct Chunk {
    buffer: Aligned,
    length: usize,
    pool: &'static Pool,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.buffer.bytes()[..self.length]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let buffer = std::mem::replace(&mut self.buffer, Aligned::empty());
        self.pool.give_back(buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static POOL: Pool = Pool::new(1);

    #[test]
    fn a_chunk_reads_its_range_and_its_buffer_is_used_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let file = File::open(&path).unwrap();

        let first = POOL.read_chunk(&file, 10, 100).unwrap();
        assert_eq!(&first[..], &content[10..110]);
        let address = first.as_ptr();
        drop(first);
        let second = POOL.read_chunk(&file, 900, 100).unwrap();
        assert_eq!(&second[..], &content[900..]);
        assert_eq!(second.as_ptr(), address, "the first buffer was used again");
        // Two at once: the pool keeps one of them when both are dropped.
        let third = POOL.read_chunk(&file, 0, 1000).unwrap();
        assert_eq!(&third[..], &content[..]);
        assert_eq!(third.as_ptr() as usize % PAGE, 0, "page-aligned");
        drop((second, third));
        assert_eq!(POOL.free.lock().unwrap().len(), 1);
        assert!(POOL.read_chunk(&file, 950, 100).is_err(), "past the end");
    }
}
