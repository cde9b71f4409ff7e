//! The segment scanner shared by recovery at open, by readers' checks, and by the audit tool:
//! it walks a segment's frames, checks every checksum and position, and classifies where and
//! why the valid frames end.
//!
//! Rules (also in `FORMAT.md`, "Recovery"):
//! 1. A sealed segment (any but the last) must be exactly header + valid frames, with positions
//!    that continue the previous frame; anything else is corruption.
//! 2. In the last segment, valid frames may be followed by zeros (preallocated space) or by the
//!    end of the file: a clean end.
//! 3. In the last segment, a bad frame with no valid frame anywhere after it is a torn tail (the
//!    one write that was in flight when the power went). A bad frame followed by any valid frame
//!    is corruption: in `always` mode only the last write can be unsynced, so a valid frame after a
//!    bad one means bytes that were once durable went bad.

use crate::error::CorruptionKind;
use crate::format::{
    FrameHeader, FrameRef, Position, SegmentHeader, SegmentId, FRAME_ALIGN, FRAME_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};

/// Whether a segment is sealed or the last one (which may end in a torn write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentRole {
    /// Any segment but the last: must hold exactly valid frames.
    Sealed,
    /// The last segment: may end in zeros or a torn write.
    Last,
}

/// Where the valid frames of a segment end, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanOutcome {
    /// The frames end at the end of the file or at zeroed preallocated space.
    Clean,
    /// The last segment ends in a torn write starting at `offset`.
    TornTail {
        /// First byte that is not part of a valid frame.
        offset: u64,
        /// Why the frame there does not validate.
        kind: CorruptionKind,
    },
    /// The header of the last segment is torn and no frame follows it (a crash while the
    /// segment was being created); recovery rewrites the header.
    TornHeader {
        /// Why the header does not validate.
        kind: CorruptionKind,
    },
    /// Corruption at `offset`.
    Corrupt {
        /// Where the bad bytes start.
        offset: u64,
        /// What is wrong.
        kind: CorruptionKind,
    },
}

/// A frame seen by the scanner.
#[derive(Debug, Clone, Copy)]
pub struct ScannedFrame<'a> {
    /// Offset of the frame in the segment file.
    pub offset: u64,
    /// The frame, fully verified.
    pub frame: FrameRef<'a>,
}

/// The result of scanning one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// Offset just past the last valid frame.
    pub end_offset: u64,
    /// Position just past the last valid record.
    pub end_position: Position,
    /// Valid frames.
    pub frames: u64,
    /// Valid records.
    pub records: u64,
    /// How the valid frames end.
    pub outcome: ScanOutcome,
}

/// Scans `bytes`, the whole file of segment `id`, calling `visit` for each valid frame in order.
pub fn scan_segment(
    bytes: &[u8],
    id: SegmentId,
    role: SegmentRole,
    visit: &mut dyn FnMut(ScannedFrame<'_>),
) -> SegmentScan {
    let mut scan = SegmentScan {
        end_offset: 0,
        end_position: id.first_position(),
        frames: 0,
        records: 0,
        outcome: ScanOutcome::Clean,
    };
    match SegmentHeader::decode_from(bytes) {
        Ok(header) if header.first_position != id.first_position() => {
            scan.outcome = ScanOutcome::Corrupt {
                offset: 0,
                kind: CorruptionKind::SegmentNameMismatch {
                    in_header: header.first_position,
                    in_name: id.first_position(),
                },
            };
            return scan;
        }
        Ok(_) => {}
        Err(kind) => {
            let torn_header =
                role == SegmentRole::Last && find_valid_frame(bytes, SEGMENT_HEADER_LEN).is_none();
            scan.outcome = if torn_header {
                ScanOutcome::TornHeader { kind }
            } else {
                ScanOutcome::Corrupt { offset: 0, kind }
            };
            return scan;
        }
    }
    let mut offset = SEGMENT_HEADER_LEN;
    scan.end_offset = offset as u64;
    while offset < bytes.len() {
        let decoded = FrameRef::decode_from(&bytes[offset..]).and_then(|frame| {
            if frame.header.first_position == scan.end_position {
                Ok(frame)
            } else {
                Err(CorruptionKind::PositionMismatch {
                    expected: scan.end_position,
                    found: frame.header.first_position,
                })
            }
        });
        match decoded {
            Ok(frame) => {
                visit(ScannedFrame {
                    offset: offset as u64,
                    frame,
                });
                scan.frames += 1;
                scan.records += u64::from(frame.header.record_count);
                scan.end_position = frame.header.end_position();
                offset += frame.header.frame_len();
                scan.end_offset = offset as u64;
            }
            Err(kind) => {
                scan.outcome = classify_bad_frame(bytes, offset, kind, role);
                return scan;
            }
        }
    }
    scan
}

fn classify_bad_frame(
    bytes: &[u8],
    offset: usize,
    kind: CorruptionKind,
    role: SegmentRole,
) -> ScanOutcome {
    let at = offset as u64;
    if role == SegmentRole::Sealed {
        let kind = if bytes[offset..].iter().all(|&b| b == 0) {
            CorruptionKind::TrailingBytes {
                len: (bytes.len() - offset) as u64,
            }
        } else {
            kind
        };
        return ScanOutcome::Corrupt { offset: at, kind };
    }
    if bytes[offset..].iter().all(|&b| b == 0) {
        return ScanOutcome::Clean;
    }
    if find_valid_frame(bytes, offset + FRAME_ALIGN).is_some() {
        return ScanOutcome::Corrupt { offset: at, kind };
    }
    ScanOutcome::TornTail { offset: at, kind }
}

/// The offset of the first fully valid frame (any position) at an aligned offset ≥ `from`.
pub fn find_valid_frame(bytes: &[u8], from: usize) -> Option<usize> {
    let mut offset = from.next_multiple_of(FRAME_ALIGN);
    while offset + FRAME_HEADER_LEN <= bytes.len() {
        let header = &bytes[offset..offset + FRAME_HEADER_LEN];
        if header.iter().any(|&b| b != 0)
            && FrameHeader::decode_from(header).is_ok()
            && FrameRef::decode_from(&bytes[offset..]).is_ok()
        {
            return Some(offset);
        }
        offset += FRAME_ALIGN;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::encode_frame;

    fn segment(frames: &[Vec<u8>], tail_zeros: usize) -> Vec<u8> {
        let mut bytes = SegmentHeader {
            first_position: Position(10),
        }
        .encode()
        .to_vec();
        for frame in frames {
            bytes.extend_from_slice(frame);
        }
        bytes.resize(bytes.len() + tail_zeros, 0);
        bytes
    }

    fn scan(bytes: &[u8], role: SegmentRole) -> SegmentScan {
        scan_segment(bytes, SegmentId(Position(10)), role, &mut |_| {})
    }

    /// Proves frames followed by zeros end cleanly in the last segment but not in a sealed one.
    #[test]
    fn zero_tail_is_clean_only_when_last() {
        let bytes = segment(
            &[
                encode_frame(Position(10), &[b"a", b"b"]),
                encode_frame(Position(12), &[b"c"]),
            ],
            64,
        );
        let last = scan(&bytes, SegmentRole::Last);
        assert_eq!(last.outcome, ScanOutcome::Clean);
        assert_eq!(last.end_position, Position(13));
        let sealed = scan(&bytes, SegmentRole::Sealed);
        assert!(matches!(
            sealed.outcome,
            ScanOutcome::Corrupt {
                kind: CorruptionKind::TrailingBytes { .. },
                ..
            }
        ));
    }

    /// Proves a bad final frame is a torn tail, while a bad frame before a good one is corruption.
    #[test]
    fn torn_tail_versus_corruption() {
        let first = encode_frame(Position(10), &[b"aaaa"]);
        let second = encode_frame(Position(11), &[b"bbbb"]);
        let mut torn = segment(&[first.clone(), second.clone()], 64);
        let second_at = SEGMENT_HEADER_LEN + first.len();
        torn[second_at + FRAME_HEADER_LEN] ^= 0xff;
        let outcome = scan(&torn, SegmentRole::Last).outcome;
        assert!(
            matches!(outcome, ScanOutcome::TornTail { offset, .. } if offset == second_at as u64)
        );

        let mut corrupt = segment(&[first.clone(), second], 64);
        corrupt[SEGMENT_HEADER_LEN + FRAME_HEADER_LEN] ^= 0xff;
        let outcome = scan(&corrupt, SegmentRole::Last).outcome;
        assert!(
            matches!(outcome, ScanOutcome::Corrupt { offset, .. } if offset == SEGMENT_HEADER_LEN as u64)
        );
    }
}
