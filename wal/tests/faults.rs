//! Fault injection at every I/O call site: a scenario that exercises recovery (torn-tail
//! truncation, marker use and removal), the log id (read and made durable, or created for a log
//! written before log ids), appends with rotations, and clean closes is first run to count its
//! calls; then each call N is made to fail — once, and from then on — followed by a power loss
//! and a reopen on a healthy disk. No failure may panic, lose an acknowledged append, leave a
//! partial batch, leave a log that does not reopen, or change a log id an open has returned.

use std::collections::BTreeSet;
use std::io::ErrorKind;

use std::path::Path;

use hybridstore_wal::identity::LOG_ID_FILE_NAME;
use hybridstore_wal::io::sim::{FaultAt, FaultMode, SimFs, Tear};
use hybridstore_wal::io::FileSystem;
use hybridstore_wal::prepare::PREPARED_SEGMENT_FILE_NAME;
use hybridstore_wal::testing::{batch_records, batches_of};
use hybridstore_wal::{Error, LogId, Options, PrepareSegments, Wal};

const DIR: &str = "/log";
const FILLER_MAX: usize = 60;

/// A test batch as (batch id, record count).
type Batch = (u64, u32);

fn options(fs: &SimFs) -> Options {
    options_with(fs, PrepareSegments::Off)
}

/// The scenario's options with segment preparation `prepare`: `Off` (rotation creates every
/// segment) or `Inline` (prepared rotations, the preparer's calls among those counted and
/// failed). Never `Background`: the calls must happen in the same order in every run.
fn options_with(fs: &SimFs, prepare: PrepareSegments) -> Options {
    Options {
        segment_size_bytes: 512,
        fs: fs.shared(),
        prepare,
        ..Options::default()
    }
}

fn batches_in(wal: &Wal) -> Vec<Batch> {
    batches_of(wal, FILLER_MAX)
        .iter()
        .map(|b| (b.batch_id, b.len))
        .collect()
}

/// Whether the disk the scenario starts from has a `log-id` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogIdAtStart {
    /// It has one: the scenario's opens read it and make it durable.
    Present,
    /// It has none (a log written before log ids): the scenario's first open creates it.
    Missing,
}

/// A disk holding a log whose last segment ends in a torn write (garbage after the last frame),
/// as a crash mid-write leaves it, with or without a `log-id`. Built without faults.
fn disk_with_torn_tail(log_id: LogIdAtStart) -> (SimFs, Vec<Batch>) {
    let fs = SimFs::new();
    let wal = Wal::open(DIR, options(&fs)).unwrap();
    let mut acked = Vec::new();
    for id in 1..=6u64 {
        wal.append(&batch_records(id, 2, FILLER_MAX)).unwrap();
        acked.push((id, 2));
    }
    fs.power_loss(Tear::DropUnsynced);
    drop(wal);
    let last = fs
        .list_files()
        .into_iter()
        .rfind(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    let mut bytes = fs.read_file(&last).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let tear_at = end.next_multiple_of(8);
    bytes[tear_at..tear_at + 40].fill(0xA5);
    fs.write_file(&last, &bytes);
    if log_id == LogIdAtStart::Missing {
        fs.remove_file(&Path::new(DIR).join(LOG_ID_FILE_NAME))
            .unwrap();
        fs.sync_dir(Path::new(DIR)).unwrap();
    }
    (fs, acked)
}

/// What a scenario run leaves for the check: the acknowledged batches, the batch in doubt (whose
/// append failed), and the log id the scenario's opens returned, if any returned.
struct Outcome {
    acked: Vec<Batch>,
    doubt: Option<Batch>,
    log_id: Option<LogId>,
}

/// The scenario under test. Stops at the first error, as a process would crash.
fn scenario(fs: &SimFs, mut acked: Vec<Batch>, prepare: PrepareSegments) -> Outcome {
    let mut next_id = 100u64;
    let mut append = |wal: &Wal, acked: &mut Vec<Batch>| -> Result<(), Batch> {
        let id = next_id;
        next_id += 1;
        let len = 1 + (id % 3) as u32;
        match wal.append(&batch_records(id, len, FILLER_MAX)) {
            Ok(_) => {
                acked.push((id, len));
                Ok(())
            }
            Err(_) => Err((id, len)),
        }
    };
    let mut log_id = None;
    let mut opened = |wal: &Wal| {
        let id = wal.log_id().expect("a writable open has a log id");
        assert!(
            log_id.is_none_or(|first| first == id),
            "the second open returned another log id"
        );
        log_id = Some(id);
    };
    let Ok(wal) = Wal::open(DIR, options_with(fs, prepare)) else {
        return Outcome {
            acked,
            doubt: None,
            log_id,
        };
    };
    opened(&wal);
    for _ in 0..12 {
        if let Err(doubt) = append(&wal, &mut acked) {
            return Outcome {
                acked,
                doubt: Some(doubt),
                log_id,
            };
        }
    }
    if wal.close().is_err() {
        return Outcome {
            acked,
            doubt: None,
            log_id,
        };
    }
    let Ok(wal) = Wal::open(DIR, options_with(fs, prepare)) else {
        return Outcome {
            acked,
            doubt: None,
            log_id,
        };
    };
    opened(&wal);
    for _ in 0..4 {
        if let Err(doubt) = append(&wal, &mut acked) {
            return Outcome {
                acked,
                doubt: Some(doubt),
                log_id,
            };
        }
    }
    let _ = wal.close();
    Outcome {
        acked,
        doubt: None,
        log_id,
    }
}

fn check_after_crash(fs: &SimFs, outcome: &Outcome, label: &str, prepare: PrepareSegments) {
    let Outcome {
        acked,
        doubt,
        log_id,
    } = outcome;
    fs.power_loss(Tear::Sectors);
    fs.clear_faults();
    let wal = Wal::open(DIR, options_with(fs, prepare))
        .unwrap_or_else(|e| panic!("{label}: the log does not reopen: {e}"));
    assert!(
        !fs.list_files()
            .iter()
            .any(|p| p.ends_with(PREPARED_SEGMENT_FILE_NAME)),
        "{label}: the open left a prepared segment behind"
    );
    let found = batches_in(&wal);
    let with_doubt: Vec<Batch> = acked.iter().copied().chain(*doubt).collect();
    assert!(
        found == *acked || found == with_doubt,
        "{label}: found {found:?}, acknowledged {acked:?}, in doubt {doubt:?}"
    );
    let reopened = wal.log_id().expect("a writable open has a log id");
    if let Some(returned) = log_id {
        assert_eq!(
            reopened, *returned,
            "{label}: an open returned log id {returned}, the reopen after the crash {reopened}"
        );
    }
}

/// Proves every I/O call of the writer, of recovery and of the log id (reading it, or creating it
/// for a log written before log ids), failed once or persistently, loses no acknowledged append,
/// leaves a log that reopens, and never changes a log id an open returned; and that every kind
/// of call was failed.
#[test]
fn every_call_site_failed_once_and_persistently() {
    for log_id in [LogIdAtStart::Present, LogIdAtStart::Missing] {
        fail_every_call(log_id, PrepareSegments::Off);
    }
}

/// Proves the same with segment preparation inline: every call of the preparer (create, zeros,
/// fdatasync, directory fsync, and the removal after a failure) and of the prepared rotation
/// (header, fdatasync, rename, directory fsync), failed once or persistently and followed by a
/// power loss (a persistent failure at call N is a power loss just before it), loses no
/// acknowledged append, and the reopen removes any prepared file left.
#[test]
fn every_call_site_failed_once_and_persistently_with_prepared_segments() {
    for log_id in [LogIdAtStart::Present, LogIdAtStart::Missing] {
        fail_every_call(log_id, PrepareSegments::Inline);
    }
}

fn fail_every_call(log_id: LogIdAtStart, prepare: PrepareSegments) {
    let (fs, acked) = disk_with_torn_tail(log_id);
    let start = fs.op_count();
    let clean = scenario(&fs, acked.clone(), prepare);
    assert_eq!(clean.doubt, None, "the scenario runs clean without faults");
    assert!(clean.acked.len() > acked.len() + 10);
    assert!(clean.log_id.is_some());
    let log = fs.op_log();
    let calls = &log[start as usize..];
    let kinds: BTreeSet<&str> = calls.iter().copied().collect();
    for needed in [
        "lock",
        "list_dir",
        "open",
        "read",
        "map",
        "write",
        "sync_data",
        "sync_all",
        "allocate",
        "set_len",
        "sync_dir",
        "rename",
        "remove_file",
    ] {
        assert!(
            kinds.contains(needed),
            "the scenario never calls {needed}: {kinds:?}"
        );
    }
    eprintln!(
        "log id {log_id:?}, {prepare:?}: scenario makes {} I/O calls of {} kinds",
        calls.len(),
        kinds.len()
    );
    let mut failed_kinds = BTreeSet::new();
    for offset in 0..calls.len() as u64 {
        for mode in [FaultMode::Once, FaultMode::Persistent] {
            let (fs, acked) = disk_with_torn_tail(log_id);
            let at = fs.op_count() + offset;
            fs.fail(FaultAt::Op(at), mode, ErrorKind::Other);
            let outcome = scenario(&fs, acked, prepare);
            failed_kinds.insert(calls[offset as usize]);
            check_after_crash(
                &fs,
                &outcome,
                &format!(
                    "log id {log_id:?}, {prepare:?}: call {offset} ({}) failing {mode:?}",
                    calls[offset as usize]
                ),
                prepare,
            );
        }
    }
    assert_eq!(
        failed_kinds, kinds,
        "every kind of call was failed at least once"
    );
}

/// Proves a full disk when the next segment is preallocated gives a clear error naming the
/// cause, poisons the writer, and loses nothing acknowledged.
#[test]
fn enospc_at_segment_creation() {
    let fs = SimFs::new();
    let wal = Wal::open(DIR, options(&fs)).unwrap();
    fs.fail(
        FaultAt::Kind("allocate", 0),
        FaultMode::Persistent,
        ErrorKind::StorageFull,
    );
    let mut acked = Vec::new();
    let mut failure = None;
    for id in 1..100u64 {
        match wal.append(&batch_records(id, 2, FILLER_MAX)) {
            Ok(_) => acked.push((id, 2)),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    let failure = failure.expect("rotation must hit the full disk");
    match &failure {
        Error::Poisoned { cause } => {
            assert_eq!(cause.kind, ErrorKind::StorageFull);
            assert_eq!(cause.op, "preallocate segment");
        }
        other => panic!("expected a poisoned writer naming the full disk, got {other:?}"),
    }
    let message = failure.to_string();
    assert!(message.contains("preallocate segment"), "{message}");
    assert!(matches!(
        wal.append(&batch_records(999, 1, FILLER_MAX)),
        Err(Error::Poisoned { .. })
    ));
    assert!(!acked.is_empty());
    // The operator frees space; a restart recovers everything acknowledged.
    fs.clear_faults();
    drop(wal);
    let wal = Wal::open(DIR, options(&fs)).unwrap();
    assert_eq!(batches_in(&wal), acked);
    wal.append(&batch_records(1000, 1, FILLER_MAX)).unwrap();
    acked.push((1000, 1));
    assert_eq!(
        batches_in(&wal),
        acked,
        "appends resume after the disk has room again"
    );
}

/// Proves a disk that dies under concurrent appenders wakes every one of them with an error (no
/// appender hangs) and that every acknowledged append is still there after recovery.
#[test]
fn poisoning_under_concurrency_wakes_every_appender() {
    use std::sync::{Arc, Mutex};
    let fs = SimFs::new();
    let wal = Wal::open(DIR, options(&fs)).unwrap();
    fs.fail(
        FaultAt::Kind("sync_data", 40),
        FaultMode::Persistent,
        ErrorKind::Other,
    );
    let acked = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (wal, acked) = (wal.clone(), acked.clone());
            std::thread::spawn(move || {
                for i in 0..1000u64 {
                    let id = t * 10_000 + i + 1;
                    match wal.append(&batch_records(id, 1, FILLER_MAX)) {
                        Ok(_) => acked.lock().unwrap().push(id),
                        Err(error) => return error,
                    }
                }
                panic!("the dead disk never failed an append");
            })
        })
        .collect();
    for thread in threads {
        let error = thread.join().unwrap();
        assert!(matches!(error, Error::Poisoned { .. }), "{error}");
    }
    fs.power_loss(Tear::Sectors);
    drop(wal);
    fs.clear_faults();
    let wal = Wal::open(DIR, options(&fs)).unwrap();
    let found: Vec<u64> = batches_in(&wal).iter().map(|b| b.0).collect();
    let mut acked = acked.lock().unwrap().clone();
    acked.sort_unstable();
    let mut found_sorted = found.clone();
    found_sorted.sort_unstable();
    for id in &acked {
        assert!(
            found_sorted.binary_search(id).is_ok(),
            "acknowledged append {id} lost"
        );
    }
    assert!(
        found.len() <= acked.len() + 8,
        "at most the in-flight appends may appear unacknowledged"
    );
}
