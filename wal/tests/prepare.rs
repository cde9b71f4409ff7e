//! Prepared segments: the next segment's file is zero-filled under `next.wal.prepared` once the
//! active segment is half full, and rotation renames it into place. These tests prove the file
//! is the one rotation uses, that rotation falls back when none is ready, that a small log never
//! prepares one, that a failing preparer never poisons the log, that opens remove (writable) or
//! ignore (read-only) a leftover, and that power losses around it lose nothing acknowledged
//! (with `faults.rs` and `sim_crash.rs`, which run with inline preparation too).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hybridstore_wal::format::SEGMENT_HEADER_LEN;
use hybridstore_wal::io::sim::{FaultAt, FaultMode, SimFs, Tear};
use hybridstore_wal::prepare::PREPARED_SEGMENT_FILE_NAME;
use hybridstore_wal::testing::{batch_records, batches_of};
use hybridstore_wal::{Options, Position, PrepareSegments, Wal};

const SIM_DIR: &str = "/log";
const FILLER_MAX: usize = 60;
const SIM_SEGMENT_SIZE_BYTES: u64 = 512;

fn sim_options(fs: &SimFs, prepare: PrepareSegments) -> Options {
    Options {
        segment_size_bytes: SIM_SEGMENT_SIZE_BYTES,
        fs: fs.shared(),
        prepare,
        ..Options::default()
    }
}

fn prepared_path(dir: &Path) -> PathBuf {
    dir.join(PREPARED_SEGMENT_FILE_NAME)
}

fn sim_has_prepared(fs: &SimFs) -> bool {
    fs.read_file(&prepared_path(Path::new(SIM_DIR))).is_some()
}

/// Every batch id in the log, checked against the batch model (no partial batch, nothing
/// corrupt).
fn batch_ids(wal: &Wal) -> Vec<u64> {
    batches_of(wal, FILLER_MAX)
        .iter()
        .map(|b| b.batch_id)
        .collect()
}

fn read_all(wal: &Wal) -> Vec<Vec<u8>> {
    wal.reader(Position(0))
        .unwrap()
        .map(|r| r.unwrap().data.to_vec())
        .collect()
}

/// Proves rotation renames the prepared file into place: the new segment has the prepared
/// file's inode, is zeros past its header and its frames, and the appends after the rotation
/// are read back (before and after a reopen).
#[test]
fn rotation_uses_the_prepared_file() {
    let dir = tempfile::tempdir().unwrap();
    let segment_size_bytes = 64 * 1024;
    let options = || Options {
        segment_size_bytes,
        prepare: PrepareSegments::Inline,
        ..Options::default()
    };
    let wal = Wal::open(dir.path(), options()).unwrap();
    let record = vec![7u8; 1000];
    let mut appended = Vec::new();
    // Up to half the segment: nothing prepared yet.
    while (appended.len() as u64 + 2) * 1032 < segment_size_bytes / 2 {
        wal.append(&[&record]).unwrap();
        appended.push(record.clone());
        assert!(!prepared_path(dir.path()).exists(), "prepared before half");
    }
    while !prepared_path(dir.path()).exists() {
        wal.append(&[&record]).unwrap();
        appended.push(record.clone());
    }
    let prepared = fs::metadata(prepared_path(dir.path())).unwrap();
    assert_eq!(prepared.len(), segment_size_bytes);
    assert_eq!(prepared.mode() & 0o777, 0o600);
    assert!(fs::read(prepared_path(dir.path()))
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    assert_eq!(wal.segment_ids().len(), 1);
    let mut after_rotation = Vec::new();
    for i in 0u32.. {
        let data = format!("after rotation {i}").into_bytes();
        wal.append(&[&data]).unwrap();
        if wal.segment_ids().len() == 2 {
            after_rotation.push(data);
            if after_rotation.len() == 3 {
                break;
            }
        } else {
            appended.push(data);
        }
    }
    assert!(
        !prepared_path(dir.path()).exists(),
        "rotation renamed the prepared file"
    );
    let new_id = *wal.segment_ids().last().unwrap();
    let new_path = dir.path().join(new_id.file_name());
    let segment = fs::metadata(&new_path).unwrap();
    assert_eq!(
        segment.ino(),
        prepared.ino(),
        "the new segment is the prepared file"
    );
    assert_eq!(segment.len(), segment_size_bytes);
    let bytes = fs::read(&new_path).unwrap();
    let frames_end: usize = SEGMENT_HEADER_LEN + 3 * 64;
    assert!(
        bytes[frames_end..].iter().all(|&b| b == 0),
        "zeros past the header and the frames"
    );
    let expected: Vec<Vec<u8>> = appended.iter().chain(&after_rotation).cloned().collect();
    assert_eq!(read_all(&wal), expected);
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), options()).unwrap();
    assert_eq!(read_all(&wal), expected);
    assert!(!prepared_path(dir.path()).exists());
}

/// Proves a small log never prepares a segment, in the background mode by default or inline.
#[test]
fn a_small_log_prepares_nothing() {
    for prepare in [PrepareSegments::Background, PrepareSegments::Inline] {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(
            dir.path(),
            Options {
                prepare,
                ..Options::default()
            },
        )
        .unwrap();
        for i in 0..100u32 {
            wal.append(&[format!("record {i}").as_bytes()]).unwrap();
        }
        wal.close().unwrap();
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n == PREPARED_SEGMENT_FILE_NAME),
            "{prepare:?}: {names:?}"
        );
    }
}

/// Proves rotation falls back to creating the segment when no prepared file is ready (here:
/// the preparation failed at its first call), loses nothing, poisons nothing, and that the next
/// segment is prepared again once it passes half.
#[test]
fn rotation_falls_back_when_nothing_is_ready() {
    let fs = SimFs::new();
    let wal = Wal::open(SIM_DIR, sim_options(&fs, PrepareSegments::Inline)).unwrap();
    // The preparer's first call is its `open` (create): fail it once.
    fs.fail(FaultAt::Kind("open", 0), FaultMode::Once, ErrorKind::Other);
    let mut acked = Vec::new();
    let mut id = 1u64;
    while wal.segment_ids().len() < 2 {
        wal.append(&batch_records(id, 1, FILLER_MAX)).unwrap();
        acked.push(id);
        id += 1;
        assert!(!sim_has_prepared(&fs), "the failed preparation left a file");
    }
    let first_new = *wal.segment_ids().last().unwrap();
    while !sim_has_prepared(&fs) {
        wal.append(&batch_records(id, 1, FILLER_MAX)).unwrap();
        acked.push(id);
        id += 1;
        assert_eq!(
            *wal.segment_ids().last().unwrap(),
            first_new,
            "the segment after the fallback prepares its successor"
        );
    }
    assert_eq!(batch_ids(&wal), acked);
    fs.power_loss(Tear::Sectors);
    drop(wal);
    let wal = Wal::open(SIM_DIR, sim_options(&fs, PrepareSegments::Inline)).unwrap();
    assert_eq!(batch_ids(&wal), acked);
    assert!(!sim_has_prepared(&fs), "the open removed the prepared file");
}

/// Counts the I/O calls of one preparation: the calls of the append that passes half, less the
/// append's own write and fdatasync.
fn preparation_calls() -> (u64, Vec<&'static str>, u64) {
    let fs = SimFs::new();
    let wal = Wal::open(SIM_DIR, sim_options(&fs, PrepareSegments::Inline)).unwrap();
    let mut id = 1u64;
    loop {
        let before = fs.op_count();
        wal.append(&batch_records(id, 1, FILLER_MAX)).unwrap();
        id += 1;
        if sim_has_prepared(&fs) {
            let calls = fs.op_log()[before as usize..].to_vec();
            assert_eq!(&calls[..2], ["write", "sync_data"], "{calls:?}");
            return (id - 1, calls[2..].to_vec(), 2);
        }
    }
}

/// Proves every I/O call of the preparer failed once leaves the log appendable (through several
/// rotations, prepared or not), never poisons it, and every acknowledged append readable, now and
/// after a power loss; and a failure from that call on (a dead disk), followed by a power loss
/// and a reopen on a healthy disk, loses nothing acknowledged.
#[test]
fn every_preparer_call_failed_once_and_persistently() {
    let (trigger_id, calls, skip) = preparation_calls();
    assert_eq!(calls, ["open", "write", "sync_data", "sync_dir"]);
    for (index, kind) in calls.iter().enumerate() {
        for mode in [FaultMode::Once, FaultMode::Persistent] {
            let label = format!("preparer call {index} ({kind}) failing {mode:?}");
            let fs = SimFs::new();
            let wal = Wal::open(SIM_DIR, sim_options(&fs, PrepareSegments::Inline)).unwrap();
            let mut acked = Vec::new();
            for id in 1..trigger_id {
                wal.append(&batch_records(id, 1, FILLER_MAX)).unwrap();
                acked.push(id);
            }
            fs.fail(
                FaultAt::Op(fs.op_count() + skip + index as u64),
                mode,
                ErrorKind::Other,
            );
            wal.append(&batch_records(trigger_id, 1, FILLER_MAX))
                .unwrap_or_else(|e| panic!("{label}: a preparer failure failed an append: {e}"));
            acked.push(trigger_id);
            if mode == FaultMode::Once {
                for id in trigger_id + 1..trigger_id + 40 {
                    wal.append(&batch_records(id, 1 + (id % 3) as u32, FILLER_MAX))
                        .unwrap_or_else(|e| panic!("{label}: the log stopped taking appends: {e}"));
                    acked.push(id);
                }
                assert!(wal.segment_ids().len() >= 4, "{label}: rotations happened");
                assert_eq!(batch_ids(&wal), acked, "{label}");
            } else {
                // A dead disk: the next append fails, as it would without preparation.
                assert!(wal.append(&batch_records(9999, 1, FILLER_MAX)).is_err());
            }
            fs.power_loss(Tear::Sectors);
            fs.clear_faults();
            drop(wal);
            let wal = Wal::open(SIM_DIR, sim_options(&fs, PrepareSegments::Inline))
                .unwrap_or_else(|e| panic!("{label}: the log does not reopen: {e}"));
            assert_eq!(batch_ids(&wal), acked, "{label}");
            assert!(
                !sim_has_prepared(&fs),
                "{label}: a prepared file survived the open"
            );
            wal.append(&batch_records(10_000, 1, FILLER_MAX)).unwrap();
        }
    }
}

/// Proves a power loss before every single I/O call of a run that prepares and rotates into
/// prepared segments several times loses no acknowledged append and reopens cleanly, with no
/// prepared file left and appends resuming.
#[test]
fn power_loss_at_every_call_of_preparing_and_rotating() {
    power_loss_at_every_call(|fs| sim_options(fs, PrepareSegments::Inline), 4);
}

/// Proves the same for a run whose first segment (created by `fallocate`) is left early for a
/// pre-written one: a power loss before any call of the early preparation or rotation loses
/// nothing acknowledged.
#[test]
fn power_loss_at_every_call_of_an_early_switch() {
    power_loss_at_every_call(
        |fs| Options {
            segment_size_bytes: 4096,
            early_switch_after_bytes: 256,
            ..sim_options(fs, PrepareSegments::Inline)
        },
        1,
    );
}

/// Runs 29 one-record appends on a simulated disk, then again with a power loss (both tear
/// kinds) before each of the run's I/O calls in turn: after each, the reopened log holds every
/// acknowledged batch (at most one more) and no prepared file. The clean run must rename a
/// prepared file into place at least `renames_min` times.
fn power_loss_at_every_call(options: impl Fn(&SimFs) -> Options, renames_min: usize) {
    let run = |fs: &SimFs| -> Vec<u64> {
        let mut acked = Vec::new();
        let Ok(wal) = Wal::open(SIM_DIR, options(fs)) else {
            return acked;
        };
        for id in 1..30u64 {
            if wal.append(&batch_records(id, 1, FILLER_MAX)).is_err() {
                return acked;
            }
            acked.push(id);
        }
        acked
    };
    let fs = SimFs::new();
    let start = fs.op_count();
    let clean = run(&fs);
    assert_eq!(clean.len(), 29);
    let calls = fs.op_log()[start as usize..].to_vec();
    assert!(
        calls.iter().filter(|&&k| k == "rename").count() >= renames_min,
        "prepared rotations: {calls:?}"
    );
    for offset in 0..calls.len() as u64 {
        for tear in [Tear::DropUnsynced, Tear::Sectors] {
            let fs = SimFs::new();
            fs.fail(
                FaultAt::Op(fs.op_count() + offset),
                FaultMode::Persistent,
                ErrorKind::Other,
            );
            let acked = run(&fs);
            fs.power_loss(tear);
            fs.clear_faults();
            let label = format!(
                "power loss before call {offset} ({})",
                calls[offset as usize]
            );
            let Ok(wal) = Wal::open(SIM_DIR, options(&fs)) else {
                panic!("{label}: the log does not reopen");
            };
            let found = batch_ids(&wal);
            assert!(
                found.len() >= acked.len() && found[..acked.len()] == acked[..],
                "{label}: acknowledged {acked:?}, found {found:?}"
            );
            assert!(found.len() <= acked.len() + 1, "{label}: {found:?}");
            assert!(
                !sim_has_prepared(&fs),
                "{label}: a prepared file survived the open"
            );
            wal.append(&batch_records(1000, 1, FILLER_MAX)).unwrap();
        }
    }
}

/// Proves a segment that is not pre-written (a new log's first, created by `fallocate`; one
/// reopened, its tail re-extended) is left for the prepared file once the threshold is written
/// into it: sealed at its frames, the new segment the prepared file's inode, every record read
/// back before and after reopens; with the threshold at 0 nothing switches.
#[test]
fn a_segment_not_prewritten_is_left_early_for_a_prepared_one() {
    let dir = tempfile::tempdir().unwrap();
    let segment_size_bytes = 1024 * 1024;
    let options = |early_switch_after_bytes| Options {
        segment_size_bytes,
        prepare: PrepareSegments::Inline,
        early_switch_after_bytes,
        ..Options::default()
    };
    let record = vec![5u8; 1000];
    let mut expected = Vec::new();
    let wal = Wal::open(dir.path(), options(64 * 1024)).unwrap();
    // Up to the threshold, nothing is prepared; the write that reaches it prepares inline.
    while !prepared_path(dir.path()).exists() {
        wal.append(&[&record]).unwrap();
        expected.push(record.clone());
        assert!(expected.len() <= 64, "nothing prepared after 64 KB");
    }
    assert!(
        expected.len() >= 63,
        "prepared after {} records",
        expected.len()
    );
    let prepared = fs::metadata(prepared_path(dir.path())).unwrap();
    assert_eq!(wal.segment_ids().len(), 1);
    // The next append goes into the prepared file, renamed into place.
    wal.append(&[b"first in the prepared segment"]).unwrap();
    expected.push(b"first in the prepared segment".to_vec());
    let ids = wal.segment_ids();
    assert_eq!(ids.len(), 2, "switched early");
    assert!(!prepared_path(dir.path()).exists());
    let first = fs::metadata(dir.path().join(ids[0].file_name())).unwrap();
    let frames_len = (expected.len() as u64 - 1) * 1032;
    assert_eq!(
        first.len(),
        SEGMENT_HEADER_LEN as u64 + frames_len,
        "the sealed segment ends at its last frame"
    );
    let second = fs::metadata(dir.path().join(ids[1].file_name())).unwrap();
    assert_eq!(
        second.ino(),
        prepared.ino(),
        "the new segment is the prepared file"
    );
    // A pre-written segment is not left early, however much is written into it.
    for _ in 0..100 {
        wal.append(&[&record]).unwrap();
        expected.push(record.clone());
    }
    assert_eq!(wal.segment_ids().len(), 2);
    assert_eq!(read_all(&wal), expected);
    wal.close().unwrap();
    // Reopened, its tail is re-extended by fallocate: it is left early again.
    let wal = Wal::open(dir.path(), options(64 * 1024)).unwrap();
    for _ in 0..80 {
        wal.append(&[&record]).unwrap();
        expected.push(record.clone());
    }
    assert_eq!(
        wal.segment_ids().len(),
        3,
        "switched early after the reopen"
    );
    assert_eq!(read_all(&wal), expected);
    wal.close().unwrap();
    // Threshold 0: never early.
    let wal = Wal::open(dir.path(), options(0)).unwrap();
    for _ in 0..200 {
        wal.append(&[&record]).unwrap();
        expected.push(record.clone());
    }
    assert_eq!(
        wal.segment_ids().len(),
        3,
        "no early switch with the threshold at 0"
    );
    assert!(!prepared_path(dir.path()).exists());
    assert_eq!(read_all(&wal), expected);
    wal.close().unwrap();
    let wal = Wal::open(dir.path(), options(64 * 1024)).unwrap();
    assert_eq!(read_all(&wal), expected);
}

/// Proves a read-only open beside a writer ignores a prepared file (never reads it as a segment)
/// and writes nothing (the file is still there), and a writable open removes a leftover one,
/// durably (it does not come back after a power loss).
#[test]
fn opens_ignore_or_remove_a_leftover() {
    let fs = SimFs::new();
    let wal = Wal::open(SIM_DIR, sim_options(&fs, PrepareSegments::Inline)).unwrap();
    let mut acked = Vec::new();
    let mut id = 1;
    while !sim_has_prepared(&fs) {
        wal.append(&batch_records(id, 1, FILLER_MAX)).unwrap();
        acked.push(id);
        id += 1;
    }
    let reader = Wal::open_read_only(SIM_DIR, sim_options(&fs, PrepareSegments::Inline)).unwrap();
    assert_eq!(reader.segment_ids(), wal.segment_ids());
    assert_eq!(batch_ids(&reader), acked);
    drop(reader);
    assert!(sim_has_prepared(&fs), "the read-only open removed nothing");
    // A crash with the prepared file durable: the next open removes it, durably.
    fs.power_loss(Tear::Sectors);
    drop(wal);
    assert!(sim_has_prepared(&fs), "the prepared file was durable");
    let wal = Wal::open(SIM_DIR, sim_options(&fs, PrepareSegments::Off)).unwrap();
    assert!(!sim_has_prepared(&fs));
    assert_eq!(batch_ids(&wal), acked);
    fs.power_loss(Tear::DropUnsynced);
    drop(wal);
    assert!(!sim_has_prepared(&fs), "the removal was made durable");
}

/// Proves the background preparer (the default) keeps every append through many rotations on a
/// real disk, with clean reopens in between and concurrent appenders; whether each rotation
/// found its file ready depends on timing, and either way nothing may differ.
#[test]
fn background_preparation_through_many_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let options = || Options {
        segment_size_bytes: 4 * 1024,
        ..Options::default()
    };
    let mut expected = Vec::new();
    for round in 0..3u32 {
        let wal = Wal::open(dir.path(), options()).unwrap();
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let wal = wal.clone();
                std::thread::spawn(move || {
                    (0..150u32)
                        .map(|i| {
                            let data = format!("r{round}t{t}i{i}-{}", "x".repeat(40)).into_bytes();
                            let at = wal.append(&[&data]).unwrap().first;
                            (at, data)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut appended: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        appended.sort();
        expected.extend(appended.into_iter().map(|(_, data)| data));
        assert!(
            wal.segment_ids().len() > 4 * (round as usize + 1),
            "{} segments",
            wal.segment_ids().len()
        );
        assert_eq!(read_all(&wal), expected);
        wal.close().unwrap();
    }
    let wal = Wal::open(dir.path(), options()).unwrap();
    assert_eq!(read_all(&wal), expected);
}
