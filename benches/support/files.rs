//! Test and bench files: streamed pseudo-random content, shared by the tests
//! (`tests/it/support`) and the benches.

use std::io::Write;
use std::path::Path;

use rand::{RngCore, SeedableRng};

/// Writes `size` pseudo-random bytes (from `seed`) to `path`, a MiB at a time.
pub fn random_file(path: &Path, size: u64, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buffer = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let now = left.min(buffer.len() as u64) as usize;
        rng.fill_bytes(&mut buffer[..now]);
        file.write_all(&buffer[..now]).unwrap();
        left -= now as u64;
    }
    file.flush().unwrap();
}
