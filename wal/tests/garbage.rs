//! Decoding garbage (the stable-toolchain twin of `fuzz/`): every decoder and the recovery scanner
//! take arbitrary bytes without panicking, and a damaged segment never yields a record that
//! differs from what was written.

use hybridstore_wal::format::{encode_frame, FrameRef, Position, SegmentHeader, SegmentId};
use hybridstore_wal::identity::{LogIdFile, LOG_ID_LEN};
use hybridstore_wal::marker::CleanShutdown;
use hybridstore_wal::recovery::{scan_segment, ScanOutcome, SegmentRole};
use proptest::prelude::*;

fn segment_with(records: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = SegmentHeader {
        first_position: Position(0),
    }
    .encode()
    .to_vec();
    for (i, chunk) in records.chunks(3).enumerate() {
        bytes.extend(encode_frame(Position((i * 3) as u64), chunk));
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Proves the decoders and the scanner never panic on arbitrary bytes.
    #[test]
    fn decoders_take_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = SegmentHeader::decode_from(&data);
        let _ = CleanShutdown::decode(&data);
        let _ = LogIdFile::decode_from(&data);
        // At exactly the file's length, so the checks past the length one run too.
        if let Some(file) = data.get(..LOG_ID_LEN) {
            let _ = LogIdFile::decode_from(file);
        }
        if let Ok(frame) = FrameRef::decode_from(&data) {
            prop_assert!(frame.records().all(|r| r.is_ok()));
        }
        for role in [SegmentRole::Sealed, SegmentRole::Last] {
            let _ = scan_segment(&data, SegmentId(Position(0)), role, &mut |_| {});
        }
    }

    /// Proves that overwriting a run of a valid segment with garbage never makes the scanner
    /// accept a record that differs from the one written: every accepted frame precedes the damage
    /// or is byte-identical, and the damage is reported unless it was a no-op.
    #[test]
    fn damaged_segment_never_yields_changed_records(
        records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..30),
        at in any::<prop::sample::Index>(),
        garbage in proptest::collection::vec(any::<u8>(), 1..16),
    ) {
        let original = segment_with(&records);
        let mut damaged = original.clone();
        let start = at.index(damaged.len());
        let end = (start + garbage.len()).min(damaged.len());
        damaged[start..end].copy_from_slice(&garbage[..end - start]);
        let mut accepted = Vec::new();
        let scan = scan_segment(&damaged, SegmentId(Position(0)), SegmentRole::Sealed, &mut |f| {
            for record in f.frame.records() {
                accepted.push(record.unwrap().to_vec());
            }
        });
        prop_assert!(records.starts_with(&accepted), "accepted records differ from those written");
        if damaged != original {
            prop_assert!(!matches!(scan.outcome, ScanOutcome::Clean), "damage at {} went unreported", start);
        }
    }
}
