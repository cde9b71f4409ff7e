//! Fuzz target: the recovery scanner must classify any bytes as a segment without panicking, in
//! both roles, and every frame it accepts must verify on its own.
#![no_main]

use hybridstore_wal::format::{FrameRef, Position, SegmentId};
use hybridstore_wal::recovery::{scan_segment, SegmentRole};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for role in [SegmentRole::Sealed, SegmentRole::Last] {
        let _ = scan_segment(data, SegmentId(Position(0)), role, &mut |scanned| {
            let at = scanned.offset as usize;
            assert!(FrameRef::decode_from(&data[at..]).is_ok());
        });
    }
});
