//! The log id: a new log gets one and keeps it, an old-format log (the committed v1 fixture, which
//! has no `log-id`) gets one at its first writable open, read-only opens see it but never create
//! it, a damaged `log-id` fails every open and is left as it was, and a power loss at any step of
//! creating it never changes an id an open has returned.

use std::path::{Path, PathBuf};

use hybridstore_wal::identity::{LogIdFile, LOG_ID_FILE_NAME, LOG_ID_LEN, LOG_ID_TMP_FILE_NAME};
use hybridstore_wal::io::sim::{FaultAt, FaultMode, SimFs, Tear};
use hybridstore_wal::io::FileSystem;
use hybridstore_wal::marker::MARKER_FILE_NAME;
use hybridstore_wal::{Error, LogId, LogIdCorruption, Options, Position, PrepareSegments, Wal};

/// The segment size the committed fixtures were written with.
const FIXTURE_SEGMENT_SIZE_BYTES: u64 = 1024;
/// Records in the committed fixtures.
const FIXTURE_RECORD_COUNT: u64 = 60;
const SIM_DIR: &str = "/log";

fn fixture_options() -> Options {
    Options {
        segment_size_bytes: FIXTURE_SEGMENT_SIZE_BYTES,
        ..Options::default()
    }
}

/// Copies the committed fixture `name` (`tests/fixtures/` at the repository root) into `to`, so
/// no test ever changes the original.
fn copy_fixture(name: &str, to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The id the `log-id` file in `dir` holds, decoded independently of the open.
fn id_on_disk(dir: &Path) -> LogId {
    let bytes = std::fs::read(dir.join(LOG_ID_FILE_NAME)).unwrap();
    LogIdFile::decode_from(&bytes).unwrap().id
}

fn read_all(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
    wal.reader(Position(0))
        .unwrap()
        .map(|record| {
            let record = record.unwrap();
            (record.position.0, record.data.to_vec())
        })
        .collect()
}

/// Proves a new log gets an id at its first open (a 0600 file of the documented length, holding
/// exactly that id), that reopening keeps it, and that a read-only open sees the same one, beside
/// the writer and after it closed.
#[test]
fn new_log_gets_an_id_and_keeps_it() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let wal = Wal::open(&dir, Options::default()).unwrap();
    let id = wal.log_id().expect("a writable open always has an id");
    let path = dir.join(LOG_ID_FILE_NAME);
    let metadata = std::fs::metadata(&path).unwrap();
    assert_eq!(metadata.len(), LOG_ID_LEN as u64);
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    assert_eq!(id_on_disk(&dir), id);
    assert!(!dir.join(LOG_ID_TMP_FILE_NAME).exists());
    wal.append(&[b"x"]).unwrap();

    let beside = Wal::open_read_only(&dir, Options::default()).unwrap();
    assert_eq!(beside.log_id(), Some(id), "read-only beside the writer");
    drop(beside);
    wal.close().unwrap();

    let wal = Wal::open(&dir, Options::default()).unwrap();
    assert_eq!(wal.log_id(), Some(id), "reopen keeps the id");
    wal.close().unwrap();
    let read_only = Wal::open_read_only(&dir, Options::default()).unwrap();
    assert_eq!(read_only.log_id(), Some(id));
    assert_eq!(id.to_string().parse::<LogId>(), Ok(id));

    let other = Wal::open(tmp.path().join("other"), Options::default()).unwrap();
    assert_ne!(other.log_id(), Some(id), "every log gets its own id");
}

/// Proves a log written before log ids (a copy of the committed v1-clean fixture) opens read-only
/// with no id and nothing written, then gets an id at its first writable open with every record
/// intact, and keeps that id across reopens, read-only ones included.
#[test]
fn old_format_log_gets_an_id_at_its_first_writable_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v1-clean");
    copy_fixture("v1-clean", &dir);
    assert!(
        !dir.join(LOG_ID_FILE_NAME).exists(),
        "the committed fixture predates log ids"
    );
    let expected: Vec<(u64, Vec<u8>)> = (0..FIXTURE_RECORD_COUNT)
        .map(|p| (p, format!("fixture-record-{p}").into_bytes()))
        .collect();

    let read_only = Wal::open_read_only(&dir, fixture_options()).unwrap();
    assert_eq!(read_only.log_id(), None);
    assert_eq!(read_all(&read_only), expected);
    drop(read_only);
    assert!(
        !dir.join(LOG_ID_FILE_NAME).exists(),
        "read-only writes no id"
    );

    let wal = Wal::open(&dir, fixture_options()).unwrap();
    let id = wal
        .log_id()
        .expect("the first writable open gives the log an id");
    assert_eq!(id_on_disk(&dir), id);
    assert_eq!(read_all(&wal), expected);
    wal.close().unwrap();

    let wal = Wal::open(&dir, fixture_options()).unwrap();
    assert_eq!(wal.log_id(), Some(id));
    assert_eq!(read_all(&wal), expected);
    drop(wal);
    let read_only = Wal::open_read_only(&dir, fixture_options()).unwrap();
    assert_eq!(read_only.log_id(), Some(id));
}

/// Proves a stale `log-id.tmp` (a crash during an earlier first open) is removed, not adopted:
/// the open writes a fresh valid id and leaves no temporary file.
#[test]
fn stale_tmp_is_removed_before_the_id_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v1-clean");
    copy_fixture("v1-clean", &dir);
    let stale = LogIdFile {
        id: LogId::from_bytes([0xAB; 16]),
    }
    .encode();
    std::fs::write(dir.join(LOG_ID_TMP_FILE_NAME), &stale[..20]).unwrap();
    let wal = Wal::open(&dir, fixture_options()).unwrap();
    let id = wal.log_id().unwrap();
    assert_ne!(id, LogId::from_bytes([0xAB; 16]));
    assert_eq!(id_on_disk(&dir), id);
    assert!(!dir.join(LOG_ID_TMP_FILE_NAME).exists());
}

/// A check of the kind of damage an open reported.
type KindCheck = fn(&LogIdCorruption) -> bool;

/// Kinds of damage to a `log-id` file, with the kind of error each must give.
fn damaged_variants(good: &[u8]) -> Vec<(&'static str, Vec<u8>, KindCheck)> {
    let mut flipped = good.to_vec();
    flipped[20] ^= 0x04;
    let mut magic = good.to_vec();
    magic[..8].copy_from_slice(b"HSWALSEG");
    let mut longer = good.to_vec();
    longer.push(0);
    vec![
        ("flipped bit", flipped, |kind| {
            matches!(kind, LogIdCorruption::Checksum { .. })
        }),
        ("truncated", good[..LOG_ID_LEN - 1].to_vec(), |kind| {
            *kind == LogIdCorruption::WrongLength { len: 35 }
        }),
        ("wrong magic", magic, |kind| {
            *kind == LogIdCorruption::BadMagic
        }),
        ("empty", Vec::new(), |kind| {
            *kind == LogIdCorruption::WrongLength { len: 0 }
        }),
        ("trailing byte", longer, |kind| {
            *kind == LogIdCorruption::WrongLength { len: 37 }
        }),
    ]
}

/// Proves a damaged `log-id` (a flipped bit, truncated, wrong magic, empty, a trailing byte) fails
/// the writable and the read-only open with `LogIdCorrupt` naming the file and the damage, and that
/// the open changed nothing: the file keeps its bytes, no temporary file appears, and the
/// clean-shutdown marker recovery would have consumed is still there.
#[test]
fn damaged_log_id_fails_every_open_and_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    let wal = Wal::open(&source, fixture_options()).unwrap();
    wal.append(&[b"one".as_slice(), b"two"]).unwrap();
    wal.close().unwrap();
    let good = std::fs::read(source.join(LOG_ID_FILE_NAME)).unwrap();

    for (label, bytes, expected_kind) in damaged_variants(&good) {
        let dir = tmp.path().join(label.replace(' ', "-"));
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&source).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        let path = dir.join(LOG_ID_FILE_NAME);
        std::fs::write(&path, &bytes).unwrap();

        for read_only in [false, true] {
            let result = if read_only {
                Wal::open_read_only(&dir, fixture_options())
            } else {
                Wal::open(&dir, fixture_options())
            };
            let error = result.expect_err(label);
            match &error {
                Error::LogIdCorrupt { path: named, kind } => {
                    assert_eq!(named, &path, "{label}");
                    assert!(expected_kind(kind), "{label}: {kind}");
                }
                other => panic!("{label}: expected LogIdCorrupt, got {other}"),
            }
            assert!(error.is_corruption(), "{label}");
            let message = error.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("restore it from a backup"), "{message}");
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bytes,
                "{label}: file changed"
            );
            assert!(!dir.join(LOG_ID_TMP_FILE_NAME).exists(), "{label}");
            assert!(
                dir.join(MARKER_FILE_NAME).exists(),
                "{label}: the open went on to recovery"
            );
        }
    }
}

/// Proves every single-bit flip of a `log-id` file fails the open with `LogIdCorrupt` and leaves
/// the file as it was (on the simulated disk, so all 288 flips stay fast).
#[test]
fn every_log_id_bit_flip_fails_the_open() {
    let fs = SimFs::new();
    let wal = Wal::open(SIM_DIR, sim_options(&fs)).unwrap();
    wal.close().unwrap();
    let path = Path::new(SIM_DIR).join(LOG_ID_FILE_NAME);
    let good = fs.read_file(&path).unwrap();
    for bit in 0..good.len() * 8 {
        let mut flipped = good.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        fs.write_file(&path, &flipped);
        let result = Wal::open(SIM_DIR, sim_options(&fs));
        assert!(
            matches!(result, Err(Error::LogIdCorrupt { .. })),
            "flip of bit {bit}: {result:?}"
        );
        assert_eq!(fs.read_file(&path).unwrap(), flipped, "bit {bit}");
    }
    fs.write_file(&path, &good);
    assert!(Wal::open(SIM_DIR, sim_options(&fs)).is_ok());
}

// -------------------------------------------------------------------- power loss while creating

fn sim_options(fs: &SimFs) -> Options {
    Options {
        segment_size_bytes: 512,
        fs: fs.shared(),
        // Deterministic: these tests count and fail I/O calls. Preparation is tested in
        // `prepare.rs` and `faults.rs`.
        prepare: PrepareSegments::Off,
        ..Options::default()
    }
}

/// The disks the first writable open starts from.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// An empty disk: a brand-new log.
    NewLog,
    /// A log with records and a clean-shutdown marker but no `log-id` (written before log ids).
    OldLog,
    /// As `OldLog`, plus a durable stale `log-id.tmp` from a crash during an earlier creation.
    OldLogWithStaleTmp,
}

fn start_disk(start: Start) -> SimFs {
    let fs = SimFs::new();
    if let Start::OldLog | Start::OldLogWithStaleTmp = start {
        let wal = Wal::open(SIM_DIR, sim_options(&fs)).unwrap();
        for batch in 0..6u8 {
            wal.append(&[vec![batch; 40], vec![batch; 7]]).unwrap();
        }
        wal.close().unwrap();
        // What a log written before log ids looks like: the same files, without `log-id`.
        let dir = Path::new(SIM_DIR);
        fs.remove_file(&dir.join(LOG_ID_FILE_NAME)).unwrap();
        fs.sync_dir(dir).unwrap();
    }
    if let Start::OldLogWithStaleTmp = start {
        fs.write_file(
            &Path::new(SIM_DIR).join(LOG_ID_TMP_FILE_NAME),
            b"HSWALLID half",
        );
    }
    fs
}

/// Ids returned by every open of one scenario: all must be the same one.
#[derive(Default)]
struct Seen {
    id: Option<LogId>,
}

impl Seen {
    fn observe(&mut self, id: LogId, label: &str) {
        match self.id {
            None => self.id = Some(id),
            Some(first) => assert_eq!(id, first, "{label}: an open returned another id"),
        }
    }
}

/// Proves a power loss (or a failing call) at every I/O call of a first writable open, for a new
/// log, an old-format log and one with a stale `log-id.tmp`, never leaves a log that fails to
/// reopen, and that once any open (writable, or read-only after a failed creation) has returned an
/// id, every later open after any power loss returns that same id.
#[test]
fn power_loss_at_every_step_of_creating_the_id() {
    let mut scenarios = 0u64;
    for start in [Start::NewLog, Start::OldLog, Start::OldLogWithStaleTmp] {
        let fs = start_disk(start);
        let before = fs.op_count();
        let wal = Wal::open(SIM_DIR, sim_options(&fs)).unwrap();
        let open_calls = fs.op_count() - before;
        drop(wal);
        assert!(open_calls > 5, "{start:?}: {open_calls} calls");
        eprintln!("{start:?}: the first open makes {open_calls} I/O calls");
        // Every call of the open, and one past its last (the open completes, then the power goes).
        for offset in 0..=open_calls {
            for mode in [FaultMode::Once, FaultMode::Persistent] {
                for crash_after_failure in [false, true] {
                    for tear in [Tear::DropUnsynced, Tear::LastWrite, Tear::Sectors] {
                        let label = format!(
                            "{start:?}, call {offset} failing {mode:?}, \
                             crash after the failure: {crash_after_failure}, {tear:?}"
                        );
                        run_scenario(start, offset, mode, crash_after_failure, tear, &label);
                        scenarios += 1;
                    }
                }
            }
        }
    }
    assert!(scenarios > 300, "{scenarios} scenarios");
}

fn run_scenario(
    start: Start,
    offset: u64,
    mode: FaultMode,
    crash_after_failure: bool,
    tear: Tear,
    label: &str,
) {
    let fs = start_disk(start);
    fs.seed(offset);
    let mut seen = Seen::default();
    fs.fail(
        FaultAt::Op(fs.op_count() + offset),
        mode,
        std::io::ErrorKind::Other,
    );
    let first = Wal::open(SIM_DIR, sim_options(&fs));
    if let Ok(wal) = &first {
        seen.observe(wal.log_id().expect("a writable open has an id"), label);
    }
    if crash_after_failure {
        fs.power_loss(tear);
    }
    drop(first);
    fs.clear_faults();

    // A tool beside the log, before any writer reopened it: what it sees must stay.
    if let Ok(read_only) = Wal::open_read_only(SIM_DIR, sim_options(&fs)) {
        if let Some(id) = read_only.log_id() {
            seen.observe(id, label);
        }
    }
    fs.power_loss(tear);

    let second = Wal::open(SIM_DIR, sim_options(&fs))
        .unwrap_or_else(|e| panic!("{label}: the log does not reopen: {e}"));
    seen.observe(second.log_id().expect("a writable open has an id"), label);
    fs.power_loss(tear);
    drop(second);
    let third = Wal::open(SIM_DIR, sim_options(&fs))
        .unwrap_or_else(|e| panic!("{label}: the log does not reopen a second time: {e}"));
    seen.observe(third.log_id().expect("a writable open has an id"), label);
    let files: Vec<PathBuf> = fs.list_files();
    assert!(
        !files.iter().any(|p| p.ends_with(LOG_ID_TMP_FILE_NAME)),
        "{label}: a stale temporary id is left: {files:?}"
    );
}
