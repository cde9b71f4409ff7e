//! Power-loss property tests through the simulated disk, which keeps only what was fsynced (and,
//! when asked, tears unsynced writes sector by sector, in any order). Random appends, batches,
//! clean reopens, power losses and crashes in the middle of an append are checked against a simple
//! model: every acknowledged batch survives, no partial batch ever appears, nothing corrupt is
//! ever returned, and the log id the first open returned never changes.

use std::path::Path;

use hybridstore_wal::io::sim::{FaultAt, FaultMode, SimFs, Tear};
use hybridstore_wal::testing::{batch_records, check_batches, FoundBatch};
use hybridstore_wal::{Durability, LogId, Options, Position, PrepareSegments, Wal};
use proptest::prelude::*;

const DIR: &str = "/log";
const FILLER_MAX: usize = 80;

#[derive(Debug, Clone)]
enum Op {
    /// Append a batch of this many records.
    Append(u32),
    /// Close cleanly and reopen.
    Reopen,
    /// Cut the power between appends, then reopen.
    PowerLoss(TearChoice),
    /// The disk dies `after_ops` calls from now, in the middle of the next appends; then the
    /// power is cut and the log reopened on a healthy disk.
    CrashDuringAppend { after_ops: u64, tear: TearChoice },
}

#[derive(Debug, Clone, Copy)]
enum TearChoice {
    Drop,
    Last,
    Sectors,
}

impl TearChoice {
    fn tear(self) -> Tear {
        match self {
            TearChoice::Drop => Tear::DropUnsynced,
            TearChoice::Last => Tear::LastWrite,
            TearChoice::Sectors => Tear::Sectors,
        }
    }
}

fn tear_choice() -> impl Strategy<Value = TearChoice> {
    prop_oneof![
        Just(TearChoice::Drop),
        Just(TearChoice::Last),
        Just(TearChoice::Sectors)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1u32..5).prop_map(Op::Append),
        1 => Just(Op::Reopen),
        1 => tear_choice().prop_map(Op::PowerLoss),
        2 => (0u64..30, tear_choice()).prop_map(|(after_ops, tear)| Op::CrashDuringAppend { after_ops, tear }),
    ]
}

fn options(fs: &SimFs, durability: Durability) -> Options {
    Options {
        segment_size_bytes: 512,
        durability,
        fs: fs.shared(),
        // Inline preparation keeps the runs deterministic (crashes are placed by call count)
        // and puts prepared rotations, and power losses while preparing, into every run; the
        // first segment and every reopened one are left early (after 64 bytes) for a prepared
        // one, so early switches are in every run too.
        prepare: PrepareSegments::Inline,
        early_switch_after_bytes: 64,
        ..Options::default()
    }
}

fn open(fs: &SimFs, durability: Durability) -> Wal {
    Wal::open(DIR, options(fs, durability)).unwrap_or_else(|e| panic!("reopen failed: {e}"))
}

fn read_batches(wal: &Wal) -> Vec<FoundBatch> {
    let records: Vec<_> = wal
        .reader(Position(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("a read returned corruption: {e}"));
    check_batches(&records, FILLER_MAX).unwrap_or_else(|e| panic!("log breaks the model: {e}"))
}

/// Checks the reopened log against the model: the acknowledged batches, plus possibly the one
/// batch whose append failed (whole or not at all).
fn verify(wal: &Wal, acked: &mut Vec<(u64, u32)>, in_doubt: Option<(u64, u32)>) {
    let found: Vec<(u64, u32)> = read_batches(wal)
        .iter()
        .map(|b| (b.batch_id, b.len))
        .collect();
    if let Some(doubt) = in_doubt {
        if found.len() == acked.len() + 1 && found.last() == Some(&doubt) {
            acked.push(doubt);
        }
    }
    assert_eq!(
        &found, acked,
        "the log must hold exactly the acknowledged batches"
    );
}

/// Reopens the log and checks it kept the id `log_id`.
fn reopen(fs: &SimFs, log_id: Option<LogId>) -> Wal {
    let wal = open(fs, Durability::Always);
    assert_eq!(wal.log_id(), log_id, "a reopen changed the log id");
    wal
}

fn run_always(ops: Vec<Op>, seed: u64) {
    let fs = SimFs::new();
    fs.seed(seed);
    let mut wal = open(&fs, Durability::Always);
    let log_id = wal.log_id();
    assert!(log_id.is_some());
    let mut acked: Vec<(u64, u32)> = Vec::new();
    let mut next_id = 1u64;
    for op in ops {
        match op {
            Op::Append(len) => {
                let id = next_id;
                next_id += 1;
                wal.append(&batch_records(id, len, FILLER_MAX))
                    .expect("append on a healthy disk");
                acked.push((id, len));
            }
            Op::Reopen => {
                wal.close().unwrap();
                wal = reopen(&fs, log_id);
                verify(&wal, &mut acked, None);
            }
            Op::PowerLoss(tear) => {
                fs.power_loss(tear.tear());
                drop(wal);
                wal = reopen(&fs, log_id);
                verify(&wal, &mut acked, None);
            }
            Op::CrashDuringAppend { after_ops, tear } => {
                fs.fail(
                    FaultAt::Op(fs.op_count() + after_ops),
                    FaultMode::Persistent,
                    std::io::ErrorKind::Other,
                );
                let mut in_doubt = None;
                for _ in 0..20 {
                    let id = next_id;
                    next_id += 1;
                    let len = 1 + (id % 4) as u32;
                    match wal.append(&batch_records(id, len, FILLER_MAX)) {
                        Ok(_) => acked.push((id, len)),
                        Err(_) => {
                            in_doubt = Some((id, len));
                            break;
                        }
                    }
                }
                fs.power_loss(tear.tear());
                drop(wal);
                fs.clear_faults();
                wal = reopen(&fs, log_id);
                verify(&wal, &mut acked, in_doubt);
            }
        }
    }
    wal.close().unwrap();
    let wal = reopen(&fs, log_id);
    verify(&wal, &mut acked, None);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Proves, in `always` mode, that every acknowledged batch survives any sequence of clean
    /// reopens, power losses and disk deaths mid-append, that no partial batch appears, and that
    /// every reopen returns the log id of the first open.
    #[test]
    fn always_mode_keeps_acknowledged_batches(ops in proptest::collection::vec(op(), 1..60), seed in any::<u64>()) {
        run_always(ops, seed);
    }

    /// Proves, in `never` mode, that a power loss leaves a prefix of the written batches, whole
    /// batches only, and that the log reopens.
    #[test]
    fn never_mode_leaves_a_prefix(lens in proptest::collection::vec(1u32..5, 1..80), cut in 0usize..80, seed in any::<u64>()) {
        let fs = SimFs::new();
        fs.seed(seed);
        let wal = open(&fs, Durability::Never);
        let mut written = Vec::new();
        for (i, len) in lens.iter().enumerate() {
            let id = i as u64 + 1;
            wal.append(&batch_records(id, *len, FILLER_MAX)).unwrap();
            written.push((id, *len));
            if i == cut {
                fs.power_loss(Tear::DropUnsynced);
                break;
            }
        }
        if cut >= lens.len() {
            fs.power_loss(Tear::DropUnsynced);
        }
        drop(wal);
        let wal = open(&fs, Durability::Never);
        let found: Vec<(u64, u32)> = read_batches(&wal).iter().map(|b| (b.batch_id, b.len)).collect();
        prop_assert!(written.starts_with(&found), "found {:?} is not a prefix of {:?}", found, written);
    }
}

/// Proves a power loss in the middle of a group write (sectors landing in any order) never makes
/// the log unopenable, for many seeds, including across rotations.
#[test]
fn torn_group_write_always_recovers() {
    for seed in 0..300u64 {
        let fs = SimFs::new();
        fs.seed(seed);
        let wal = open(&fs, Durability::Always);
        let mut acked = Vec::new();
        for id in 1..=(seed % 13 + 1) {
            wal.append(&batch_records(id, 3, FILLER_MAX)).unwrap();
            acked.push((id, 3));
        }
        // Fail the next fdatasync: the frame is written but not durable, then the power goes.
        fs.fail(
            FaultAt::Kind("sync_data", 0),
            FaultMode::Persistent,
            std::io::ErrorKind::Other,
        );
        let doubt = (1000, 4);
        assert!(wal
            .append(&batch_records(doubt.0, doubt.1, FILLER_MAX))
            .is_err());
        fs.power_loss(Tear::Sectors);
        drop(wal);
        fs.clear_faults();
        let wal = open(&fs, Durability::Always);
        verify(&wal, &mut acked, Some(doubt));
        assert!(Path::new(DIR).is_absolute());
    }
}

/// Proves a read-only open returns durable records only: beside a writer in `never` mode (nothing
/// synced), every record it reads survives a power loss right after, because it syncs what it
/// scanned; without it the same power loss would take them.
#[test]
fn read_only_open_reads_only_durable_records() {
    let fs = SimFs::new();
    let wal = open(&fs, Durability::Never);
    for id in 1..=20 {
        wal.append(&batch_records(id, 2, FILLER_MAX)).unwrap();
    }
    let reader = Wal::open_read_only(DIR, options(&fs, Durability::Never)).unwrap();
    let seen = read_batches(&reader);
    assert!(!seen.is_empty());
    drop(reader);
    fs.power_loss(Tear::DropUnsynced);
    drop(wal);
    let after = open(&fs, Durability::Never);
    let survived = read_batches(&after);
    assert!(
        survived.starts_with(&seen),
        "read {} batches, {} survived the power loss",
        seen.len(),
        survived.len()
    );
}
