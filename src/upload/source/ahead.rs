//! Up-front checksums from the hashing pass. A remote that wants each part's checksum before
//! its body (S3's `x-amz-checksum-crc32c`, `Content-MD5`) would otherwise have every part read
//! twice: once to sum it, once to send it. When a file's parts are uniform, the pass that
//! hashes the whole file (sequentially, for its SHA-256) sums each part's range on the way, and
//! a part takes its sums from there.
//!
//! A part waits for the pass only when the pass is close behind it (`WAIT_BEHIND_BYTES`);
//! further back, or stopped (the file changed, the attempt ended), the part reads its own, as
//! before, and the pass then skips that part's range (an MD5 costs more than the SHA-256 the
//! pass is there for, and is made once). Each part's sums are handed out once: a retry reads
//! the file again, so a part the file changed under is not sent again and again with sums of
//! what it was.

use std::sync::Mutex;

use md5::Digest as _;
use tokio::sync::watch;

use crate::upload::backend::{PartSpec, PartSums, UpFront};

/// A part waits for the pass when the pass is at most this far before the part's start: at the
/// pass's speed (hashing, about 1.5 GB/s here) a few tens of milliseconds.
const WAIT_BEHIND_BYTES: u64 = 64 * 1024 * 1024;

/// The sums of a file's parts of `part_size` bytes (the last one shorter), as the pass makes
/// them.
#[derive(Debug)]
pub struct SumsAhead {
    part_size: u64,
    file_size: u64,
    wanted: UpFront,
    /// By part index.
    slots: Mutex<Vec<Slot>>,
    pass: watch::Sender<PassState>,
}

/// Where one part's sums stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Not summed yet.
    Waiting,
    /// Summed by the pass, for the part to take.
    Ready(PartSums),
    /// Handed out, or read by the part itself: the pass has nothing (more) to do for it.
    Done,
}

/// Where the pass stands: every part ending at or before `offset` has its sums published.
#[derive(Debug, Clone, Copy, Default)]
struct PassState {
    offset: u64,
    stopped: bool,
}

impl SumsAhead {
    /// `None` when there is nothing to sum or the parts are empty.
    pub fn new(part_size: u64, file_size: u64, wanted: UpFront) -> Option<SumsAhead> {
        (wanted.any() && part_size > 0 && file_size > 0).then(|| SumsAhead {
            part_size,
            file_size,
            wanted,
            slots: Mutex::new(vec![Slot::Waiting; file_size.div_ceil(part_size) as usize]),
            pass: watch::Sender::new(PassState::default()),
        })
    }

    /// The sums of `part` from the pass, waiting while the pass is close behind it; `None`
    /// when the part is not one of the uniform parts, was handed out already, or the pass
    /// is far behind or stopped: the part then reads its own, and the pass skips it.
    pub async fn take(&self, part: PartSpec) -> Option<PartSums> {
        let index = self.index_of(part)?;
        let end = part.offset + part.size;
        let mut state = self.pass.subscribe();
        let reached = state
            .wait_for(|pass| {
                let behind = part.offset.saturating_sub(pass.offset);
                pass.stopped || pass.offset >= end || behind > WAIT_BEHIND_BYTES
            })
            .await
            .is_ok_and(|pass| pass.offset >= end);
        let mut slots = self.slots();
        let slot = std::mem::replace(&mut slots[index], Slot::Done);
        match (reached, slot) {
            (true, Slot::Ready(sums)) => Some(sums),
            _ => None,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().expect("no code panics holding the sums")
    }

    /// The index of `part` among the uniform parts, if it is one.
    fn index_of(&self, part: PartSpec) -> Option<usize> {
        if part.offset >= self.file_size || !part.offset.is_multiple_of(self.part_size) {
            return None;
        }
        let whole = part.size == self.part_size.min(self.file_size - part.offset);
        whole.then_some((part.offset / self.part_size) as usize)
    }

    /// The writing end, for the pass. It marks the pass stopped when dropped, however it ends.
    pub fn pass(&self) -> Pass<'_> {
        Pass {
            ahead: self,
            offset: 0,
            crc32c: 0,
            md5: md5::Md5::new(),
            summed: 0,
        }
    }

    /// No more sums will come: parts not yet summed read their own.
    pub fn stop(&self) {
        self.pass.send_modify(|pass| pass.stopped = true);
    }

    /// Whether part `index` still wants the pass's sums.
    fn wanted(&self, index: usize) -> bool {
        self.slots()[index] == Slot::Waiting
    }

    fn publish(&self, index: usize, sums: PartSums) {
        let mut slots = self.slots();
        if slots[index] == Slot::Waiting {
            slots[index] = Slot::Ready(sums);
        }
    }
}

/// The pass's side: fed the file's bytes in order from its start.
pub struct Pass<'a> {
    ahead: &'a SumsAhead,
    offset: u64,
    crc32c: u32,
    md5: md5::Md5,
    /// Bytes summed: those of the parts that did not read their own.
    summed: u64,
}

impl Pass<'_> {
    /// The next bytes of the file; bytes past the size the parts cover are ignored, and so
    /// are those of a part that read its own sums.
    pub fn update(&mut self, mut bytes: &[u8]) {
        let (size, file_size) = (self.ahead.part_size, self.ahead.file_size);
        while !bytes.is_empty() && self.offset < file_size {
            let index = (self.offset / size) as usize;
            let part_end = (index as u64 + 1).saturating_mul(size).min(file_size);
            let take = (part_end - self.offset).min(bytes.len() as u64) as usize;
            let (now, rest) = bytes.split_at(take);
            if self.ahead.wanted(index) {
                self.sum(now);
            }
            self.offset += take as u64;
            bytes = rest;
            if self.offset == part_end {
                self.finish_part(index);
            }
        }
        let offset = self.offset;
        self.ahead.pass.send_modify(|pass| pass.offset = offset);
    }

    fn sum(&mut self, bytes: &[u8]) {
        if self.ahead.wanted.crc32c {
            self.crc32c = crc32c::crc32c_append(self.crc32c, bytes);
        }
        if self.ahead.wanted.md5 {
            self.md5.update(bytes);
        }
        self.summed += bytes.len() as u64;
    }

    /// Publishes part `index`'s sums, unless the part read its own meanwhile.
    fn finish_part(&mut self, index: usize) {
        let wanted = self.ahead.wanted;
        let md5 = std::mem::take(&mut self.md5);
        let crc32c = std::mem::take(&mut self.crc32c);
        self.ahead.publish(
            index,
            PartSums {
                crc32c: wanted.crc32c.then_some(crc32c),
                md5: wanted.md5.then(|| md5.finalize().into()),
            },
        );
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        tracing::trace!(
            summed = self.summed,
            upto = self.offset,
            "the hashing pass ends"
        );
        self.ahead.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: UpFront = UpFront {
        crc32c: true,
        md5: true,
    };

    fn spec(number: u32, offset: u64, size: u64) -> PartSpec {
        PartSpec {
            number,
            offset,
            size,
        }
    }

    fn sums_of(bytes: &[u8]) -> PartSums {
        PartSums {
            crc32c: Some(crc32c::crc32c(bytes)),
            md5: Some(md5::Md5::digest(bytes).into()),
        }
    }

    #[tokio::test]
    async fn each_uniform_part_gets_the_sums_of_its_range_once() {
        let content: Vec<u8> = (0..2500u32).map(|i| (i * 7 % 251) as u8).collect();
        let ahead = SumsAhead::new(1000, 2500, BOTH).unwrap();
        let mut pass = ahead.pass();
        // Fed in pieces that straddle the parts' ends.
        for piece in content.chunks(300) {
            pass.update(piece);
        }
        pass.update(b"grown past the size");
        drop(pass);
        for (number, range) in [(2, 1000..2000), (1, 0..1000), (3, 2000..2500)] {
            let part = spec(number, range.start as u64, range.len() as u64);
            let expected = sums_of(&content[range.clone()]);
            assert_eq!(ahead.take(part).await, Some(expected), "part {number}");
            assert_eq!(ahead.take(part).await, None, "part {number} a second time");
        }
    }

    #[tokio::test]
    async fn parts_off_the_uniform_layout_read_their_own() {
        let ahead = SumsAhead::new(1000, 2500, BOTH).unwrap();
        let mut pass = ahead.pass();
        pass.update(&[1; 2500]);
        for part in [
            spec(1, 0, 999),
            spec(1, 0, 1001),
            spec(2, 500, 1000),
            spec(4, 2500, 0),
        ] {
            assert_eq!(ahead.take(part).await, None, "{part:?}");
        }
        assert!(ahead.take(spec(3, 2000, 500)).await.is_some());
    }

    #[tokio::test]
    async fn a_part_waits_for_a_pass_close_behind_and_not_for_one_that_stopped() {
        let size = 3 * WAIT_BEHIND_BYTES;
        let ahead = std::sync::Arc::new(SumsAhead::new(1000, size, BOTH).unwrap());
        let mut pass = ahead.pass();
        pass.update(&[7; 1500]);
        // Far beyond the pass: read your own at once.
        let far = spec(9, 2 * WAIT_BEHIND_BYTES, 1000);
        assert_eq!(ahead.take(far).await, None);
        // Close behind: waits until the pass covers it.
        let waiting = tokio::spawn({
            let ahead = ahead.clone();
            async move { ahead.take(spec(3, 2000, 1000)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the pass has not reached it");
        pass.update(&[7; 1500]);
        assert_eq!(waiting.await.unwrap(), Some(sums_of(&[7; 1000])));
        // The pass stops (the file shrank): a part it never reached is not waited for.
        drop(pass);
        assert_eq!(ahead.take(spec(4, 3000, 1000)).await, None);
    }

    #[tokio::test]
    async fn the_pass_skips_the_parts_that_read_their_own_sums() {
        let part = WAIT_BEHIND_BYTES / 2;
        let ahead = SumsAhead::new(part, 6 * part, BOTH).unwrap();
        let mut pass = ahead.pass();
        let chunk = vec![5u8; 1 << 20];
        // Part 5 is far beyond the pass, and so is part 6 once the pass is in part 2: each
        // reads its own at once.
        assert_eq!(ahead.take(spec(5, 4 * part, part)).await, None);
        while pass.offset < part + part / 2 {
            pass.update(&chunk);
        }
        assert_eq!(ahead.take(spec(6, 5 * part, part)).await, None);
        while pass.offset < 6 * part {
            pass.update(&chunk);
        }
        assert_eq!(pass.summed, 4 * part, "parts 1 to 4 only");
        let expected = sums_of(&vec![5u8; part as usize]);
        assert_eq!(ahead.take(spec(4, 3 * part, part)).await, Some(expected));
        assert_eq!(ahead.take(spec(5, 4 * part, part)).await, None);
    }
}
