//! The on-disk format: magic, version, segment header and frame layout, the `*_LEN` constants, and
//! the codec (`encode_into`, `decode_from`, `encoded_len`). `wal/FORMAT.md` documents the same
//! bytes; `tests/format_doc.rs` fails when the two disagree.
//!
//! Every multi-byte integer is little-endian. Checksums are CRC-32 (IEEE, via `crc32fast`).
//!
//! # Invariants
//! - A frame validates only if its header checksum matches the header fields (body length, first
//!   position, record count, body checksum) *and* its body checksum matches the body: the reader
//!   trusts no length or position before the header checksum has vouched for it.
//! - An all-zero frame header never validates (its record count is zero, which is illegal, and the
//!   CRC-32 of twenty zero bytes is not zero).

use std::fmt;

use crate::error::CorruptionKind;

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"HSWALSEG";
/// The current (and only) format version.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Offset of the format version in the segment header.
pub const SEGMENT_HEADER_VERSION_OFFSET: usize = 8;
/// Offset of the flags word in the segment header (always zero in version 1).
pub const SEGMENT_HEADER_FLAGS_OFFSET: usize = 12;
/// Offset of the segment's first position in the segment header.
pub const SEGMENT_HEADER_FIRST_POSITION_OFFSET: usize = 16;
/// Offset of the reserved word in the segment header (always zero in version 1).
pub const SEGMENT_HEADER_RESERVED_OFFSET: usize = 24;
/// Offset of the segment header checksum (CRC-32 of bytes `0..28`).
pub const SEGMENT_HEADER_CRC_OFFSET: usize = 28;

/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 24;
/// Offset of the frame header checksum (CRC-32 of header bytes `4..24`).
pub const FRAME_HEADER_CRC_OFFSET: usize = 0;
/// Offset of the body length (bytes of records, excluding padding).
pub const FRAME_BODY_LEN_OFFSET: usize = 4;
/// Offset of the frame's first position.
pub const FRAME_FIRST_POSITION_OFFSET: usize = 8;
/// Offset of the frame's record count (at least 1).
pub const FRAME_RECORD_COUNT_OFFSET: usize = 16;
/// Offset of the body checksum (CRC-32 of the body).
pub const FRAME_BODY_CRC_OFFSET: usize = 20;
/// Frames start at offsets that are multiples of this; the gap after a frame is zero padding.
pub const FRAME_ALIGN: usize = 8;
/// Length of the length prefix before each record in a frame body.
pub const RECORD_LEN_PREFIX_LEN: usize = 4;

/// File name suffix of segment files (`{first_position:020}.wal`).
pub const SEGMENT_FILE_SUFFIX: &str = ".wal";
/// Digits of the zero-padded first position in a segment file name.
pub const SEGMENT_FILE_DIGITS: usize = 20;

const _: () = assert!(SEGMENT_HEADER_LEN.is_multiple_of(FRAME_ALIGN));
const _: () = assert!(FRAME_HEADER_LEN.is_multiple_of(FRAME_ALIGN));
const _: () = assert!(SEGMENT_HEADER_CRC_OFFSET + 4 == SEGMENT_HEADER_LEN);
const _: () = assert!(FRAME_BODY_CRC_OFFSET + 4 == FRAME_HEADER_LEN);
const _: () = assert!(FRAME_ALIGN.is_power_of_two());

/// A dense record sequence number: the first record ever appended is position 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(transparent)
)]
pub struct Position(pub u64);

impl Position {
    /// The position `count` records after this one.
    #[must_use]
    pub fn advance(self, count: u64) -> Position {
        Position(self.0 + count)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A segment is identified by the position of its first record (also its file name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub Position);

impl SegmentId {
    /// The segment's file name: the zero-padded first position and [`SEGMENT_FILE_SUFFIX`].
    pub fn file_name(self) -> String {
        format!(
            "{:0width$}{SEGMENT_FILE_SUFFIX}",
            self.0 .0,
            width = SEGMENT_FILE_DIGITS
        )
    }

    /// Parses a segment file name; `None` for any other file.
    pub fn from_file_name(name: &str) -> Option<SegmentId> {
        let digits = name.strip_suffix(SEGMENT_FILE_SUFFIX)?;
        if digits.len() != SEGMENT_FILE_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(|p| SegmentId(Position(p)))
    }

    /// The first position the segment holds.
    pub fn first_position(self) -> Position {
        self.0
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

pub(crate) fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(word)
}

/// Rounds `len` up to the next multiple of [`FRAME_ALIGN`].
pub const fn align_up(len: usize) -> usize {
    (len + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// The segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// First position held by the segment; equals the position in the file name.
    pub first_position: Position,
}

impl SegmentHeader {
    /// Encodes the header into `out` (which must be [`SEGMENT_HEADER_LEN`] bytes).
    ///
    /// # Panics
    /// If `out` is not exactly [`SEGMENT_HEADER_LEN`] bytes (a caller bug).
    pub fn encode_into(&self, out: &mut [u8]) {
        assert_eq!(out.len(), SEGMENT_HEADER_LEN);
        out.fill(0);
        out[..8].copy_from_slice(&SEGMENT_MAGIC);
        out[SEGMENT_HEADER_VERSION_OFFSET..SEGMENT_HEADER_VERSION_OFFSET + 4]
            .copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[SEGMENT_HEADER_FIRST_POSITION_OFFSET..SEGMENT_HEADER_FIRST_POSITION_OFFSET + 8]
            .copy_from_slice(&self.first_position.0.to_le_bytes());
        let checksum = crc(&out[..SEGMENT_HEADER_CRC_OFFSET]);
        out[SEGMENT_HEADER_CRC_OFFSET..].copy_from_slice(&checksum.to_le_bytes());
    }

    /// The encoded header as an array.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        self.encode_into(&mut out);
        out
    }

    /// Decodes and checks a segment header from the start of `bytes`.
    ///
    /// # Errors
    /// A [`CorruptionKind`] when the bytes are short, the magic or checksum is wrong, or the
    /// version is unknown.
    pub fn decode_from(bytes: &[u8]) -> Result<SegmentHeader, CorruptionKind> {
        let Some(header) = bytes.get(..SEGMENT_HEADER_LEN) else {
            return Err(CorruptionKind::SegmentHeaderTruncated {
                len: bytes.len() as u64,
            });
        };
        let stored = read_u32(header, SEGMENT_HEADER_CRC_OFFSET);
        let computed = crc(&header[..SEGMENT_HEADER_CRC_OFFSET]);
        if header[..8] != SEGMENT_MAGIC {
            return Err(CorruptionKind::BadMagic);
        }
        if stored != computed {
            return Err(CorruptionKind::SegmentHeaderChecksum {
                expected: stored,
                actual: computed,
            });
        }
        let version = read_u32(header, SEGMENT_HEADER_VERSION_OFFSET);
        if version != FORMAT_VERSION {
            return Err(CorruptionKind::UnsupportedVersion { version });
        }
        if read_u32(header, SEGMENT_HEADER_FLAGS_OFFSET) != 0
            || read_u32(header, SEGMENT_HEADER_RESERVED_OFFSET) != 0
        {
            return Err(CorruptionKind::UnsupportedVersion { version });
        }
        Ok(SegmentHeader {
            first_position: Position(read_u64(header, SEGMENT_HEADER_FIRST_POSITION_OFFSET)),
        })
    }
}

/// A frame header, decoded and checked against its own checksum (not yet against the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes of records in the body (excluding padding).
    pub body_len: u32,
    /// Position of the first record in the frame.
    pub first_position: Position,
    /// Number of records in the frame (at least 1).
    pub record_count: u32,
    /// CRC-32 of the body.
    pub body_crc: u32,
}

impl FrameHeader {
    /// Bytes the whole frame occupies on disk, padding included.
    pub fn frame_len(&self) -> usize {
        align_up(FRAME_HEADER_LEN + self.body_len as usize)
    }

    /// Position after the frame's last record.
    pub fn end_position(&self) -> Position {
        self.first_position.advance(u64::from(self.record_count))
    }

    /// Encodes the header (computing its checksum) into `out`, [`FRAME_HEADER_LEN`] bytes.
    ///
    /// # Panics
    /// If `out` is not exactly [`FRAME_HEADER_LEN`] bytes (a caller bug).
    pub fn encode_into(&self, out: &mut [u8]) {
        assert_eq!(out.len(), FRAME_HEADER_LEN);
        assert!(self.record_count >= 1, "a frame holds at least one record");
        out[FRAME_BODY_LEN_OFFSET..FRAME_BODY_LEN_OFFSET + 4]
            .copy_from_slice(&self.body_len.to_le_bytes());
        out[FRAME_FIRST_POSITION_OFFSET..FRAME_FIRST_POSITION_OFFSET + 8]
            .copy_from_slice(&self.first_position.0.to_le_bytes());
        out[FRAME_RECORD_COUNT_OFFSET..FRAME_RECORD_COUNT_OFFSET + 4]
            .copy_from_slice(&self.record_count.to_le_bytes());
        out[FRAME_BODY_CRC_OFFSET..FRAME_BODY_CRC_OFFSET + 4]
            .copy_from_slice(&self.body_crc.to_le_bytes());
        let checksum = crc(&out[FRAME_BODY_LEN_OFFSET..FRAME_HEADER_LEN]);
        out[..4].copy_from_slice(&checksum.to_le_bytes());
    }

    /// Decodes a frame header from the start of `bytes` and checks its checksum and shape.
    ///
    /// # Errors
    /// [`CorruptionKind::FrameTruncated`] if fewer than [`FRAME_HEADER_LEN`] bytes remain,
    /// [`CorruptionKind::ZeroFrame`] for an all-zero header, a checksum or structure error
    /// otherwise.
    pub fn decode_from(bytes: &[u8]) -> Result<FrameHeader, CorruptionKind> {
        let Some(header) = bytes.get(..FRAME_HEADER_LEN) else {
            return Err(CorruptionKind::FrameTruncated {
                needed: FRAME_HEADER_LEN as u64,
                available: bytes.len() as u64,
            });
        };
        if header.iter().all(|&b| b == 0) {
            return Err(CorruptionKind::ZeroFrame);
        }
        let stored = read_u32(header, FRAME_HEADER_CRC_OFFSET);
        let computed = crc(&header[FRAME_BODY_LEN_OFFSET..]);
        if stored != computed {
            return Err(CorruptionKind::FrameHeaderChecksum {
                expected: stored,
                actual: computed,
            });
        }
        let decoded = FrameHeader {
            body_len: read_u32(header, FRAME_BODY_LEN_OFFSET),
            first_position: Position(read_u64(header, FRAME_FIRST_POSITION_OFFSET)),
            record_count: read_u32(header, FRAME_RECORD_COUNT_OFFSET),
            body_crc: read_u32(header, FRAME_BODY_CRC_OFFSET),
        };
        if decoded.record_count == 0 {
            return Err(CorruptionKind::BadFrameStructure {
                reason: "record count is zero",
            });
        }
        let min_body = u64::from(decoded.record_count) * RECORD_LEN_PREFIX_LEN as u64;
        if u64::from(decoded.body_len) < min_body {
            return Err(CorruptionKind::BadFrameStructure {
                reason: "body shorter than its record length prefixes",
            });
        }
        Ok(decoded)
    }
}

/// A whole frame checked in place: header, body checksum, record structure and zero padding.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    /// The decoded header.
    pub header: FrameHeader,
    /// The body: `record_count` × (u32 length, bytes).
    pub body: &'a [u8],
}

impl<'a> FrameRef<'a> {
    /// Decodes and fully verifies the frame at the start of `bytes`.
    ///
    /// # Errors
    /// A [`CorruptionKind`] naming the first rule the bytes break.
    pub fn decode_from(bytes: &'a [u8]) -> Result<FrameRef<'a>, CorruptionKind> {
        let header = FrameHeader::decode_from(bytes)?;
        let frame_len = header.frame_len();
        let Some(frame) = bytes.get(..frame_len) else {
            return Err(CorruptionKind::FrameTruncated {
                needed: frame_len as u64,
                available: bytes.len() as u64,
            });
        };
        let body_end = FRAME_HEADER_LEN + header.body_len as usize;
        let body = &frame[FRAME_HEADER_LEN..body_end];
        let computed = crc(body);
        if computed != header.body_crc {
            return Err(CorruptionKind::FrameBodyChecksum {
                expected: header.body_crc,
                actual: computed,
            });
        }
        if frame[body_end..].iter().any(|&b| b != 0) {
            return Err(CorruptionKind::NonZeroPadding);
        }
        let frame = FrameRef { header, body };
        frame.check_structure()?;
        Ok(frame)
    }

    fn check_structure(&self) -> Result<(), CorruptionKind> {
        let mut records = RecordSlices {
            body: self.body,
            remaining: self.header.record_count,
        };
        for record in records.by_ref() {
            record?;
        }
        Ok(())
    }

    /// The records of the frame, in order.
    pub fn records(&self) -> RecordSlices<'a> {
        RecordSlices {
            body: self.body,
            remaining: self.header.record_count,
        }
    }
}

/// Iterator over the records of a frame body.
#[derive(Debug, Clone)]
pub struct RecordSlices<'a> {
    body: &'a [u8],
    remaining: u32,
}

impl<'a> Iterator for RecordSlices<'a> {
    type Item = Result<&'a [u8], CorruptionKind>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return if self.body.is_empty() {
                None
            } else {
                self.body = &[];
                Some(Err(CorruptionKind::BadFrameStructure {
                    reason: "bytes left in the body after the last record",
                }))
            };
        }
        self.remaining -= 1;
        let Some(prefix) = self.body.get(..RECORD_LEN_PREFIX_LEN) else {
            self.remaining = 0;
            self.body = &[];
            return Some(Err(CorruptionKind::BadFrameStructure {
                reason: "record length prefix runs past the body",
            }));
        };
        let len = read_u32(prefix, 0) as usize;
        let Some(record) = self
            .body
            .get(RECORD_LEN_PREFIX_LEN..RECORD_LEN_PREFIX_LEN + len)
        else {
            self.remaining = 0;
            self.body = &[];
            return Some(Err(CorruptionKind::BadFrameStructure {
                reason: "record runs past the body",
            }));
        };
        self.body = &self.body[RECORD_LEN_PREFIX_LEN + len..];
        Some(Ok(record))
    }
}

/// Appends one record (length prefix and bytes) to a frame body under construction.
///
/// # Panics
/// If the record is 4 GiB or larger (callers bound records by the segment size first).
pub fn encode_record_into(record: &[u8], body: &mut Vec<u8>) {
    let len = u32::try_from(record.len()).expect("record length checked against segment size");
    body.extend_from_slice(&len.to_le_bytes());
    body.extend_from_slice(record);
}

/// Bytes one record takes in a frame body.
pub fn record_encoded_len(record_len: usize) -> usize {
    RECORD_LEN_PREFIX_LEN + record_len
}

/// Fills in the frame header for the body at `frame[FRAME_HEADER_LEN..]` and the zero padding;
/// `frame` must already hold `FRAME_HEADER_LEN` reserved bytes followed by the body.
///
/// # Panics
/// If the body is 4 GiB or larger, or `record_count` is zero (caller bugs).
pub fn seal_frame(frame: &mut Vec<u8>, first_position: Position, record_count: u32) {
    let body_len = frame.len() - FRAME_HEADER_LEN;
    let header = FrameHeader {
        body_len: u32::try_from(body_len).expect("frame body bounded by segment size"),
        first_position,
        record_count,
        body_crc: crc(&frame[FRAME_HEADER_LEN..]),
    };
    header.encode_into(&mut frame[..FRAME_HEADER_LEN]);
    frame.resize(align_up(frame.len()), 0);
    debug_assert!(FrameRef::decode_from(frame).is_ok());
}

/// Encodes a whole frame for `records` starting at `first_position` (used by tests, fixtures and
/// tools; the writer builds frames in place).
pub fn encode_frame<R: AsRef<[u8]>>(first_position: Position, records: &[R]) -> Vec<u8> {
    let mut frame = vec![0u8; FRAME_HEADER_LEN];
    for record in records {
        encode_record_into(record.as_ref(), &mut frame);
    }
    let count = u32::try_from(records.len()).expect("record count fits u32");
    seal_frame(&mut frame, first_position, count);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves a frame round-trips and that an all-zero header is rejected.
    #[test]
    fn frame_round_trip_and_zero_rejected() {
        let frame = encode_frame(Position(7), &[b"abc".as_slice(), b"", b"hello"]);
        assert_eq!(frame.len() % FRAME_ALIGN, 0);
        let decoded = FrameRef::decode_from(&frame).expect("valid frame");
        assert_eq!(decoded.header.first_position, Position(7));
        let records: Vec<&[u8]> = decoded.records().map(|r| r.unwrap()).collect();
        assert_eq!(records, vec![b"abc".as_slice(), b"", b"hello"]);
        let zeros = [0u8; 64];
        assert_eq!(
            FrameRef::decode_from(&zeros).unwrap_err(),
            CorruptionKind::ZeroFrame
        );
    }

    /// Proves segment headers round-trip and a flipped bit is detected.
    #[test]
    fn segment_header_round_trip_and_flip() {
        let header = SegmentHeader {
            first_position: Position(42),
        };
        let mut bytes = header.encode();
        assert_eq!(SegmentHeader::decode_from(&bytes), Ok(header));
        bytes[17] ^= 1;
        assert!(matches!(
            SegmentHeader::decode_from(&bytes),
            Err(CorruptionKind::SegmentHeaderChecksum { .. })
        ));
    }

    /// Proves segment file names round-trip and foreign names are ignored.
    #[test]
    fn segment_names() {
        let id = SegmentId(Position(12345));
        assert_eq!(id.file_name(), "00000000000000012345.wal");
        assert_eq!(SegmentId::from_file_name(&id.file_name()), Some(id));
        assert_eq!(SegmentId::from_file_name("LOCK"), None);
        assert_eq!(SegmentId::from_file_name("123.wal"), None);
    }
}
