//! A small checksummed record, beside sled's files, of what the store held at its last
//! checkpoint: the number of upload records and of finished jobs. Both only ever grow, so a
//! store that holds fewer at open lost them. sled does not say so: after a damaged byte or a
//! truncated file it recovers up to the damage and opens without a word, and every file whose
//! record was lost would be uploaded again. The checkpoint counts first and flushes after, so
//! what it records is durable: a kill -9 never makes the summary claim more than the store has.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The summary's file in the store's folder (sled ignores files it did not make).
const FILE: &str = "ferry-summary.json";

/// What a checkpoint recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub uploaded: u64,
    pub done: u64,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    summary: Summary,
    /// CRC32C of the JSON of `summary`, so that a damaged summary is never trusted.
    crc32c: u32,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

fn checksum(summary: &Summary) -> u32 {
    crc32c::crc32c(&serde_json::to_vec(summary).expect("plain numbers serialise"))
}

/// The last checkpoint; `Ok(None)` when there is none yet, `Err` when it is unreadable.
pub fn read(dir: &Path) -> Result<Option<Summary>, String> {
    let bytes = match std::fs::read(path(dir)) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.to_string()),
    };
    let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if checksum(&stored.summary) != stored.crc32c {
        return Err("its checksum does not match".into());
    }
    Ok(Some(stored.summary))
}

/// Replaces the checkpoint, durably (written aside, synced, renamed). Blocking.
pub fn write(dir: &Path, summary: Summary) -> io::Result<()> {
    let stored = Stored {
        version: 1,
        summary,
        crc32c: checksum(&summary),
    };
    let temp = dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(&serde_json::to_vec(&stored).expect("plain numbers serialise"))?;
    file.sync_all()?;
    std::fs::rename(&temp, path(dir))?;
    std::fs::File::open(dir)?.sync_all()
}

/// What damage `now` shows against the `recorded` checkpoint, if any.
pub fn damage(recorded: Summary, now: Summary) -> Option<String> {
    let lost_uploads = recorded.uploaded.saturating_sub(now.uploaded);
    let lost_done = recorded.done.saturating_sub(now.done);
    if lost_uploads == 0 && lost_done == 0 {
        return None;
    }
    Some(format!(
        "damaged: it holds {} of the {} upload records and {} of the {} finished jobs it held at its last checkpoint; files whose record was lost will be uploaded again",
        now.uploaded, recorded.uploaded, now.done, recorded.done
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_is_what_was_lost_since_the_checkpoint() {
        let at = |uploaded, done| Summary { uploaded, done };
        let cases = [
            (at(50, 50), at(50, 50), false),
            (at(50, 50), at(80, 90), false),
            (at(50, 50), at(18, 50), true),
            (at(50, 50), at(50, 49), true),
            (at(0, 0), at(0, 0), false),
        ];
        for (recorded, now, damaged) in cases {
            assert_eq!(
                damage(recorded, now).is_some(),
                damaged,
                "{recorded:?} → {now:?}"
            );
        }
    }

    #[test]
    fn a_summary_round_trips_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None));
        let summary = Summary {
            uploaded: 7,
            done: 9,
        };
        write(dir.path(), summary).unwrap();
        assert_eq!(read(dir.path()), Ok(Some(summary)));
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        std::fs::write(
            path(dir.path()),
            text.replace("\"uploaded\":7", "\"uploaded\":8"),
        )
        .unwrap();
        assert!(read(dir.path()).is_err());
    }
}
