//! Shared by the audit tool's integration tests: where the committed fixtures live, the facts the
//! generator (`tests/fixtures.rs`) guarantees about them, and helpers to copy a fixture and run
//! the binary on the copy.

#![allow(
    dead_code,
    reason = "each test binary includes this module and uses a different part of it"
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Segment size the fixtures are written with: small, so a few dozen records span 3+ segments.
pub const SEGMENT_SIZE_BYTES: u64 = 1024;
/// Records in every fixture (positions `0..RECORD_COUNT`).
pub const RECORD_COUNT: u64 = 60;
/// Records per append, cycled: frames of 1, 2 and 3 records.
pub const BATCH_SIZES: [u64; 3] = [1, 2, 3];

/// The fixture written with the writer and closed cleanly.
pub const CLEAN: &str = "v1-clean";
/// The clean log plus a torn frame after the last one, and no clean-shutdown marker.
pub const TORN: &str = "v1-torn";
/// The clean log with one byte flipped in a frame body of a middle (sealed) segment.
pub const CORRUPT: &str = "v1-corrupt";

/// Segments in every fixture (ids in `SEGMENT_IDS`).
pub const SEGMENT_IDS: [u64; 3] = [0, 27, 55];
/// v1-torn: the last segment, and the offset of the torn frame in it.
pub const TORN_SEGMENT_ID: u64 = 55;
/// v1-torn: where the torn frame starts (just past the last valid frame).
pub const TORN_OFFSET: u64 = 192;
/// v1-corrupt: the segment with the flipped byte (the middle one).
pub const CORRUPT_SEGMENT_ID: u64 = 27;
/// v1-corrupt: index (within its segment) of the frame whose body has the flipped byte.
pub const CORRUPT_FRAME_INDEX: usize = 2;
/// v1-corrupt: offset of that frame in its segment file.
pub const CORRUPT_OFFSET: u64 = 168;
/// v1-corrupt: first position of that frame; every record below it is intact.
pub const CORRUPT_FIRST_POSITION: u64 = 31;

/// The payload of the record at `position`.
pub fn payload(position: u64) -> Vec<u8> {
    format!("fixture-record-{position}").into_bytes()
}

/// `tests/fixtures/` at the root of the repository.
pub fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The committed fixture `name`.
pub fn fixture(name: &str) -> PathBuf {
    fixtures_root().join(name)
}

/// The file name of segment `id`.
pub fn segment_file_name(id: u64) -> String {
    format!("{id:020}.wal")
}

/// Copies the committed fixture `name` into `to` (created), so a test never touches the original.
pub fn copy_fixture(name: &str, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        assert!(entry.file_type().unwrap().is_file(), "fixtures are flat");
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Runs the audit binary with `args`, with no `HYBRIDSTORE_DATA_DIR` and no master key from the
/// environment.
pub fn audit<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_hybridstore-audit"))
        .args(args)
        .env_remove("HYBRIDSTORE_DATA_DIR")
        .env_remove(hybridstore::crypto::MASTER_KEY_ENV)
        .env_remove(hybridstore::crypto::MASTER_KEY_FILE_ENV)
        .output()
        .unwrap()
}
