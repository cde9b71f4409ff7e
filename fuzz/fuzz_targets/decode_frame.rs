//! Fuzz target: frame and segment-header decoding and the clean-shutdown marker must never panic
//! on any bytes, and a frame that decodes must re-encode to the same bytes.
#![no_main]

use hybridstore_wal::format::{encode_frame, FrameRef, SegmentHeader};
use hybridstore_wal::marker::CleanShutdown;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = SegmentHeader::decode_from(data);
    let _ = CleanShutdown::decode(data);
    if let Ok(frame) = FrameRef::decode_from(data) {
        let records: Vec<&[u8]> = frame.records().map(|r| r.expect("a verified frame's records decode")).collect();
        let again = encode_frame(frame.header.first_position, &records);
        assert_eq!(&data[..again.len()], again.as_slice(), "a valid frame re-encodes to its own bytes");
    }
});
