//! The generator of the committed log fixtures in `tests/fixtures/` (v1-clean, v1-torn,
//! v1-corrupt). It rewrites them only when `HYBRIDSTORE_REGENERATE_FIXTURES=1` is set; the
//! verdicts of the audit tool on them are tested in `tests/cli.rs`.
//!
//! Regenerate with:
//! `HYBRIDSTORE_REGENERATE_FIXTURES=1 cargo test -p hybridstore-audit --test fixtures`
//! and update the facts in `tests/common/mod.rs` if the generator's assertions say they moved.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use hybridstore_wal::format::{
    encode_frame, FrameHeader, Position, FRAME_HEADER_LEN, RECORD_LEN_PREFIX_LEN,
    SEGMENT_HEADER_LEN,
};
use hybridstore_wal::identity::LOG_ID_FILE_NAME;
use hybridstore_wal::marker::MARKER_FILE_NAME;
use hybridstore_wal::{Options, Wal};

/// Proves the generator still produces the fixture layout the tests rely on, and rewrites the
/// committed fixtures when `HYBRIDSTORE_REGENERATE_FIXTURES=1`.
#[test]
fn regenerate_fixtures() {
    let scratch = tempfile::tempdir().unwrap();
    for name in [CLEAN, TORN, CORRUPT] {
        let dir = scratch.path().join(name);
        generate(name, &dir);
    }
    if std::env::var_os("HYBRIDSTORE_REGENERATE_FIXTURES").is_some_and(|v| v == "1") {
        for name in [CLEAN, TORN, CORRUPT] {
            let target = fixture(name);
            if target.exists() {
                fs::remove_dir_all(&target).unwrap();
            }
            fs::create_dir_all(&target).unwrap();
            for entry in fs::read_dir(scratch.path().join(name)).unwrap() {
                let entry = entry.unwrap();
                fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
            }
        }
    }
}

fn generate(name: &str, dir: &Path) {
    write_clean_log(dir);
    match name {
        CLEAN => {}
        TORN => tear_last_segment(dir),
        CORRUPT => flip_byte_in_middle_segment(dir),
        other => panic!("unknown fixture {other}"),
    }
}

/// Writes `RECORD_COUNT` records in batches of `BATCH_SIZES`, closes the log cleanly, and removes
/// its `log-id`.
fn write_clean_log(dir: &Path) {
    let options = Options {
        segment_size_bytes: SEGMENT_SIZE_BYTES,
        ..Options::default()
    };
    let wal = Wal::open(dir, options).unwrap();
    let mut position = 0;
    for batch in BATCH_SIZES.iter().cycle() {
        if position == RECORD_COUNT {
            break;
        }
        let count = (*batch).min(RECORD_COUNT - position);
        let records: Vec<Vec<u8>> = (position..position + count).map(payload).collect();
        let appended = wal.append(&records).unwrap();
        assert_eq!(appended.first, Position(position));
        position += count;
    }
    let ids: Vec<u64> = wal.segment_ids().iter().map(|id| id.0 .0).collect();
    assert_eq!(
        ids, SEGMENT_IDS,
        "segment layout moved: update tests/common"
    );
    wal.close().unwrap();
    assert!(dir.join(MARKER_FILE_NAME).exists());
    // The fixtures are logs as written before log ids (segments and marker are byte for byte
    // what that version wrote), so that the tests keep proving such logs open and get an id.
    fs::remove_file(dir.join(LOG_ID_FILE_NAME)).unwrap();
}

/// The offsets of the frames of a segment file, walked by their headers.
fn frame_offsets(bytes: &[u8]) -> Vec<(u64, FrameHeader)> {
    let mut offset = SEGMENT_HEADER_LEN;
    let mut frames = Vec::new();
    while let Ok(header) = FrameHeader::decode_from(&bytes[offset..]) {
        frames.push((offset as u64, header));
        offset += header.frame_len();
        if offset >= bytes.len() {
            break;
        }
    }
    frames
}

/// A crash mid-append: the last segment is preallocated (zeros to the segment size) and holds a
/// valid frame header for the next position followed by only part of its body; no marker.
fn tear_last_segment(dir: &Path) {
    fs::remove_file(dir.join(MARKER_FILE_NAME)).unwrap();
    let path = dir.join(segment_file_name(TORN_SEGMENT_ID));
    let mut bytes = fs::read(&path).unwrap();
    let end = bytes.len();
    assert_eq!(
        end as u64, TORN_OFFSET,
        "torn offset moved: update tests/common"
    );
    let frame = encode_frame(
        Position(RECORD_COUNT),
        &[payload(RECORD_COUNT), payload(RECORD_COUNT + 1)],
    );
    let written = FRAME_HEADER_LEN + (frame.len() - FRAME_HEADER_LEN) / 2;
    assert!(end + frame.len() <= SEGMENT_SIZE_BYTES as usize);
    bytes.resize(SEGMENT_SIZE_BYTES as usize, 0);
    bytes[end..end + written].copy_from_slice(&frame[..written]);
    fs::write(&path, bytes).unwrap();
}

/// Bit rot in a sealed segment: one byte of a record payload in the middle segment flipped.
fn flip_byte_in_middle_segment(dir: &Path) {
    let path = dir.join(segment_file_name(CORRUPT_SEGMENT_ID));
    let mut bytes = fs::read(&path).unwrap();
    let frames = frame_offsets(&bytes);
    let (offset, header) = frames[CORRUPT_FRAME_INDEX];
    assert_eq!(
        (offset, header.first_position.0),
        (CORRUPT_OFFSET, CORRUPT_FIRST_POSITION),
        "corrupt frame moved: update tests/common"
    );
    let at = offset as usize + FRAME_HEADER_LEN + RECORD_LEN_PREFIX_LEN;
    bytes[at] ^= 0x01;
    fs::write(&path, bytes).unwrap();
}
