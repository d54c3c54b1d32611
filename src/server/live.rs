//! In-memory state of open sessions: where each new part goes, and the running SHA-256 of the
//! parts stored so far.
//!
//! Parts of a uniform layout (every part `stride` bytes but the last) are written in place into
//! one session data file at `(n-1) * stride`, so that complete can publish that file by rename
//! instead of copying every byte again. The stride is the size of part 1 (whose offset is always
//! 0), or of whichever part arrives first: parallel parts race. A part that does not fit the
//! layout, or one that replaces a stored part, is stored loose, in a file of its own; complete
//! then copies.
//!
//! The hash advances over the in-place parts in order as they are committed, so complete
//! usually has only the last parts left to hash. Nothing here is durable: after a restart the
//! state is rebuilt from the stored parts and the hash starts again from the beginning.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::storage::{Location, PartFile};

/// Where a part being received is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Into the session data file at this offset.
    InPlace { offset: u64 },
    /// Into a file of its own.
    Loose,
}

/// A stored in-place part, as the hasher needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InPlacePart {
    etag: String,
    offset: u64,
    size: u64,
}

/// The running hash over the in-place parts `1..next_part`.
#[derive(Clone)]
pub struct HashProgress {
    pub hasher: Sha256,
    /// Bytes hashed: the offset where part `next_part` must start.
    pub offset: u64,
    pub next_part: u32,
    /// Etags of the parts hashed, in order.
    pub etags: Vec<String>,
}

impl HashProgress {
    fn fresh() -> HashProgress {
        HashProgress {
            hasher: Sha256::new(),
            offset: 0,
            next_part: 1,
            etags: Vec::new(),
        }
    }
}

/// A range of the data file for the hasher to read next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashJob {
    pub part_number: u32,
    pub etag: String,
    pub offset: u64,
    pub size: u64,
    /// The hash generation this job belongs to; a replaced part starts a new one.
    generation: u64,
}

/// State of one open session.
pub struct Live {
    total_size: u64,
    stride: Option<u64>,
    /// Part numbers with a stored version.
    stored: HashSet<u32>,
    /// Parts being written in place right now, by number: their offset and size (at most one
    /// writer per number, and no two writers over the same bytes).
    writing: HashMap<u32, (u64, u64)>,
    in_place: BTreeMap<u32, InPlacePart>,
    /// Bytes of the stored version of each part number, and their sum.
    sizes: HashMap<u32, u64>,
    stored_bytes: u64,
    hash: HashProgress,
    hash_generation: u64,
    hashing: bool,
    /// Woken whenever the hasher becomes idle, for complete to wait on.
    hasher_idle: std::sync::Arc<tokio::sync::Notify>,
}

impl Live {
    /// Rebuilds the state from the parts on disk.
    pub fn from_parts(total_size: u64, parts: &[PartFile]) -> Live {
        let mut live = Live {
            total_size,
            stride: None,
            stored: HashSet::new(),
            writing: HashMap::new(),
            in_place: BTreeMap::new(),
            sizes: HashMap::new(),
            stored_bytes: 0,
            hash: HashProgress::fresh(),
            hash_generation: 0,
            hashing: false,
            hasher_idle: Default::default(),
        };
        for part in parts {
            live.stored.insert(part.part_number);
            live.record_size(part.part_number, part.size);
            if let Location::InPlace { offset } = part.location {
                if part.part_number == 1 {
                    live.stride = Some(part.size);
                } else if offset > 0 {
                    live.stride = Some(offset / u64::from(part.part_number - 1));
                }
                live.in_place.insert(
                    part.part_number,
                    InPlacePart {
                        etag: part.etag.clone(),
                        offset,
                        size: part.size,
                    },
                );
            }
        }
        live
    }

    /// Whether part `number` of `size` bytes may be stored: the bytes stored under other part
    /// numbers, with these, must fit in the file, so that a session never holds more than the
    /// file it builds, whatever a client sends. Checked from the headers, and again at commit
    /// under the session's lock (parallel parts). Parts still arriving do not count: a client
    /// that died mid-part leaves bytes arriving that a resuming client must not be refused for.
    /// `Err` carries the bytes held under other numbers.
    pub fn fits(&self, number: u32, size: u64) -> Result<(), u64> {
        let own = self.sizes.get(&number).copied().unwrap_or(0);
        let held = self.stored_bytes - own;
        if held.saturating_add(size) > self.total_size {
            return Err(held);
        }
        Ok(())
    }

    fn record_size(&mut self, number: u32, size: u64) {
        let previous = self.sizes.insert(number, size).unwrap_or(0);
        self.stored_bytes = self.stored_bytes - previous + size;
    }

    /// Chooses where part `number` of `size` bytes goes, reserving its bytes when in place:
    /// at `offset` when the client says where the part lies in the file (protocol v1.1), else
    /// where a uniform layout puts it.
    pub fn place(&mut self, number: u32, size: u64, offset: Option<u64>) -> Placement {
        if size == 0 || self.stored.contains(&number) || self.writing.contains_key(&number) {
            return Placement::Loose;
        }
        let Some(offset) = offset.or_else(|| self.stride_offset(number, size)) else {
            return Placement::Loose;
        };
        let end = offset.saturating_add(size);
        if end > self.total_size || self.overlaps(offset, end) {
            return Placement::Loose;
        }
        self.writing.insert(number, (offset, size));
        Placement::InPlace { offset }
    }

    /// Where a uniform layout puts part `number` of `size` bytes: every part the size of the
    /// first to arrive (the stride), but the last. The first part to arrive sets the stride,
    /// if it can be a full part of such a layout. Only the last part, arriving first and
    /// short, can mislead; then the other parts do not fit, go loose, and complete copies:
    /// slower, never wrong.
    fn stride_offset(&mut self, number: u32, size: u64) -> Option<u64> {
        let stride = match self.stride {
            Some(stride) => stride,
            None if u64::from(number).saturating_mul(size) <= self.total_size => {
                self.stride = Some(size);
                size
            }
            None => return None,
        };
        let offset = u64::from(number - 1).saturating_mul(stride);
        let end = offset.saturating_add(size);
        let full_part = size == stride && end <= self.total_size;
        let last_part = size < stride && end == self.total_size;
        (full_part || last_part).then_some(offset)
    }

    /// Whether `offset..end` overlaps a part stored in place or being written there.
    fn overlaps(&self, offset: u64, end: u64) -> bool {
        let stored = self.in_place.values().map(|part| (part.offset, part.size));
        let arriving = self.writing.values().copied();
        stored
            .chain(arriving)
            .any(|(start, size)| start < end && offset < start.saturating_add(size))
    }

    /// Releases a reservation; records the part if it was committed.
    pub fn finish(&mut self, number: u32, placement: Placement, committed: Option<(&str, u64)>) {
        if placement != Placement::Loose {
            self.writing.remove(&number);
        }
        let Some((etag, size)) = committed else {
            return;
        };
        self.stored.insert(number);
        self.record_size(number, size);
        if number < self.hash.next_part {
            // A hashed part was replaced: the running hash no longer describes what is stored.
            self.hash = HashProgress::fresh();
            self.hash_generation += 1;
        }
        match placement {
            Placement::InPlace { offset } => {
                let part = InPlacePart {
                    etag: etag.to_string(),
                    offset,
                    size,
                };
                self.in_place.insert(number, part);
            }
            Placement::Loose => {
                self.in_place.remove(&number);
            }
        }
    }

    /// The next range to hash, if the hasher is idle and the next part in order is in place.
    pub fn next_hash_job(&mut self) -> Option<HashJob> {
        if self.hashing {
            return None;
        }
        let part = self.in_place.get(&self.hash.next_part)?;
        if part.offset != self.hash.offset {
            return None;
        }
        self.hashing = true;
        Some(HashJob {
            part_number: self.hash.next_part,
            etag: part.etag.clone(),
            offset: part.offset,
            size: part.size,
            generation: self.hash_generation,
        })
    }

    /// Takes the hasher for a job (the job reads the bytes with the lock released).
    pub fn take_hasher(&mut self) -> Sha256 {
        std::mem::take(&mut self.hash.hasher)
    }

    /// Puts the hasher back after `job`; drops the work if a replacement reset the hash since.
    pub fn hashed(&mut self, job: &HashJob, hasher: Sha256) {
        self.hashing = false;
        self.hasher_idle.notify_waiters();
        if job.generation != self.hash_generation {
            return;
        }
        self.hash.hasher = hasher;
        self.hash.offset += job.size;
        self.hash.next_part += 1;
        self.hash.etags.push(job.etag.clone());
    }

    /// Marks the hasher idle after a failed job, resetting the hash.
    pub fn hash_failed(&mut self) {
        self.hashing = false;
        self.hasher_idle.notify_waiters();
        self.hash = HashProgress::fresh();
        self.hash_generation += 1;
    }

    pub fn is_hashing(&self) -> bool {
        self.hashing
    }

    /// What to wait on for the hasher to become idle (see `is_hashing`).
    pub fn hasher_idle(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.hasher_idle.clone()
    }

    /// The hash so far, for complete to finish.
    pub fn hash_progress(&self) -> HashProgress {
        self.hash.clone()
    }
}

/// The live state of every open session this process has touched. The map sits behind a std
/// mutex held only to look up or insert; each session's state has its own.
#[derive(Default)]
pub struct LiveSessions(Mutex<HashMap<String, Arc<Mutex<Live>>>>);

impl LiveSessions {
    pub fn get(&self, upload_id: &str) -> Option<Arc<Mutex<Live>>> {
        self.0
            .lock()
            .expect("live map is never poisoned")
            .get(upload_id)
            .cloned()
    }

    /// Inserts `live` unless another request got there first; returns the one in the map.
    pub fn insert(&self, upload_id: &str, live: Live) -> Arc<Mutex<Live>> {
        let mut map = self.0.lock().expect("live map is never poisoned");
        map.entry(upload_id.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(live)))
            .clone()
    }

    pub fn remove(&self, upload_id: &str) {
        self.0
            .lock()
            .expect("live map is never poisoned")
            .remove(upload_id);
    }

    /// Keeps only the sessions for which `keep` holds.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.0
            .lock()
            .expect("live map is never poisoned")
            .retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(total: u64) -> Live {
        Live::from_parts(total, &[])
    }

    /// Protocol v1.1: a part that says where it lies is written there, whatever its size, as
    /// long as it stays in the file and off the bytes of other parts.
    #[test]
    fn parts_that_carry_their_offset_go_in_place_in_any_layout() {
        // A 10-byte file in parts of 1, 4, 3 and 2 bytes.
        let mut session = live(10);
        assert_eq!(
            session.place(2, 4, Some(1)),
            Placement::InPlace { offset: 1 }
        );
        assert_eq!(
            session.place(4, 2, Some(8)),
            Placement::InPlace { offset: 8 }
        );
        assert_eq!(
            session.place(1, 1, Some(0)),
            Placement::InPlace { offset: 0 }
        );
        assert_eq!(
            session.place(3, 4, Some(5)),
            Placement::Loose,
            "it would overlap part 4, still arriving"
        );
        assert_eq!(
            session.place(3, 3, Some(5)),
            Placement::InPlace { offset: 5 }
        );
        assert_eq!(
            session.place(5, 2, Some(9)),
            Placement::Loose,
            "past the end"
        );
        session.finish(2, Placement::InPlace { offset: 1 }, Some(("b", 4)));
        assert_eq!(
            session.place(6, 2, Some(2)),
            Placement::Loose,
            "over a stored part's bytes"
        );
    }

    #[test]
    fn placement_table() {
        // A 20-byte file in parts of 8: [0,8) [8,16) [16,20).
        let mut session = live(20);
        assert_eq!(
            session.place(2, 8, None),
            Placement::InPlace { offset: 8 },
            "any full part sets the stride"
        );
        assert_eq!(session.place(3, 4, None), Placement::InPlace { offset: 16 });
        assert_eq!(session.place(3, 4, None), Placement::Loose, "slot busy");
        assert_eq!(
            session.place(1, 5, None),
            Placement::Loose,
            "neither full nor last"
        );
        assert_eq!(
            session.place(4, 8, None),
            Placement::Loose,
            "beyond the end"
        );
        assert_eq!(session.place(1, 8, None), Placement::InPlace { offset: 0 });
        session.finish(1, Placement::InPlace { offset: 0 }, Some(("a", 8)));
        assert_eq!(
            session.place(1, 8, None),
            Placement::Loose,
            "a replacement never overwrites"
        );
        session.finish(2, Placement::InPlace { offset: 8 }, None);
        assert_eq!(
            session.place(2, 8, None),
            Placement::InPlace { offset: 8 },
            "a failed write frees its slot"
        );
        assert_eq!(
            live(0).place(1, 0, None),
            Placement::Loose,
            "empty parts are loose"
        );

        // The short last part arriving first misleads the stride; the others go loose.
        let mut misled = live(20);
        assert_eq!(misled.place(3, 4, None), Placement::InPlace { offset: 8 });
        assert_eq!(misled.place(1, 8, None), Placement::Loose);
        assert_eq!(misled.place(2, 8, None), Placement::Loose);
        assert_eq!(
            live(20).place(3, 8, None),
            Placement::Loose,
            "3 x 8 > 20: not a full part"
        );
    }

    #[test]
    fn hash_advances_in_order_and_resets_on_replacement() {
        let mut session = live(20);
        for (number, offset, size) in [(1, 0, 8), (3, 16, 4)] {
            let placement = session.place(number, size, None);
            assert_eq!(placement, Placement::InPlace { offset });
            session.finish(number, placement, Some(("e", size)));
        }
        let job = session.next_hash_job().unwrap();
        assert_eq!((job.part_number, job.offset), (1, 0));
        assert_eq!(session.next_hash_job(), None, "one job at a time");
        let hasher = session.take_hasher();
        session.hashed(&job, hasher);
        assert_eq!(session.next_hash_job(), None, "part 2 is missing");
        let placement = session.place(2, 8, None);
        session.finish(2, placement, Some(("f", 8)));
        let job = session.next_hash_job().unwrap();
        assert_eq!(job.part_number, 2);
        // Part 1 is replaced while part 2 is being hashed: that work is dropped.
        session.finish(1, Placement::Loose, Some(("g", 8)));
        let hasher = session.take_hasher();
        session.hashed(&job, hasher);
        let progress = session.hash_progress();
        assert_eq!((progress.next_part, progress.offset), (1, 0));
        assert_eq!(session.next_hash_job(), None, "part 1 is loose now");
    }

    #[test]
    fn a_session_holds_at_most_its_file_under_distinct_part_numbers() {
        let mut session = live(20);
        assert_eq!(session.fits(1, 8), Ok(()));
        session.finish(1, Placement::Loose, Some(("a", 8)));
        session.finish(2, Placement::Loose, Some(("b", 8)));
        let cases = [
            (3, 4, Ok(())),  // the last part: exactly the file
            (3, 5, Err(16)), // one byte more than the file
            (1, 8, Ok(())),  // a replacement holds no more
            (4, 8, Err(16)), // a part the file has no room for
        ];
        for (number, size, expected) in cases {
            assert_eq!(
                session.fits(number, size),
                expected,
                "part {number} of {size}"
            );
        }
    }
}
