//! The clean-shutdown marker: written by a clean close, it records where the active segment's
//! frames end and the segment's sparse index, so the next open scans nothing. It is removed (and
//! the removal fsynced) at open, before any append, so it can never describe a log that has grown
//! since it was written.
//!
//! Layout (little-endian): magic `HSWALCLN` (8) · version u32 · entry count u32 · segment id u64 ·
//! end offset u64 · end position u64 · entries (position u64, offset u64)* · CRC-32 of all before.

use crate::format::{crc, Position, SegmentId};
use crate::segment::IndexEntry;

/// File name of the marker inside the log directory.
pub const MARKER_FILE_NAME: &str = "clean-shutdown";
/// Temporary name the marker is written under before being renamed into place.
pub const MARKER_TMP_FILE_NAME: &str = "clean-shutdown.tmp";
/// Magic bytes of the marker.
pub const MARKER_MAGIC: [u8; 8] = *b"HSWALCLN";
/// Version of the marker layout.
pub const MARKER_VERSION: u32 = 1;
/// Bytes before the index entries.
pub const MARKER_FIXED_LEN: usize = 40;

/// What a clean close leaves behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanShutdown {
    /// The active segment at close.
    pub segment: SegmentId,
    /// Offset just past its last frame.
    pub end_offset: u64,
    /// Position just past its last record.
    pub end_position: Position,
    /// Its sparse index.
    pub entries: Vec<IndexEntry>,
}

impl CleanShutdown {
    /// Encodes the marker.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MARKER_FIXED_LEN + self.entries.len() * 16 + 4);
        out.extend_from_slice(&MARKER_MAGIC);
        out.extend_from_slice(&MARKER_VERSION.to_le_bytes());
        let count =
            u32::try_from(self.entries.len()).expect("index entries of one segment fit u32");
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&self.segment.0 .0.to_le_bytes());
        out.extend_from_slice(&self.end_offset.to_le_bytes());
        out.extend_from_slice(&self.end_position.0.to_le_bytes());
        for entry in &self.entries {
            out.extend_from_slice(&entry.position.0.to_le_bytes());
            out.extend_from_slice(&entry.offset.to_le_bytes());
        }
        let checksum = crc(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    /// Decodes a marker; `None` if the bytes are not a valid marker (it is then ignored and the
    /// active segment scanned, which is always safe).
    pub fn decode(bytes: &[u8]) -> Option<CleanShutdown> {
        let (body, stored) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc(body).to_le_bytes() != stored {
            return None;
        }
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?))
        };
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
        };
        if body.get(..8)? != MARKER_MAGIC || u32_at(8)? != MARKER_VERSION {
            return None;
        }
        let count = u32_at(12)? as usize;
        if body.len() != MARKER_FIXED_LEN + count * 16 {
            return None;
        }
        let entries = (0..count)
            .map(|i| {
                let at = MARKER_FIXED_LEN + i * 16;
                Some(IndexEntry {
                    position: Position(u64_at(at)?),
                    offset: u64_at(at + 8)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(CleanShutdown {
            segment: SegmentId(Position(u64_at(16)?)),
            end_offset: u64_at(24)?,
            end_position: Position(u64_at(32)?),
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves the marker round-trips and any flipped bit makes it invalid.
    #[test]
    fn round_trip_and_flips() {
        let marker = CleanShutdown {
            segment: SegmentId(Position(100)),
            end_offset: 4096,
            end_position: Position(150),
            entries: vec![IndexEntry {
                position: Position(100),
                offset: 32,
            }],
        };
        let bytes = marker.encode();
        assert_eq!(CleanShutdown::decode(&bytes), Some(marker));
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                CleanShutdown::decode(&flipped),
                None,
                "flip of bit {bit} not detected"
            );
        }
    }
}
