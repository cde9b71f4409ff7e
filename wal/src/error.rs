//! Errors of the log engine: one enum for every operation, with structured variants that carry
//! the segment, offset and kind of a problem so that operators and the audit tool can act on it.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::format::{Position, SegmentId};

/// Result alias for the log engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every way a log operation can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call failed. `op` names the call (`write`, `fdatasync`, `open`, …).
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// The file or directory the call was made on.
        path: PathBuf,
        /// The call that failed.
        op: &'static str,
        /// The error the operating system (or the simulated disk) returned.
        #[source]
        source: io::Error,
    },

    /// Bytes on disk do not form a valid log. Never repaired implicitly, except a torn tail of the
    /// last segment under [`crate::RecoveryMode::TruncateTornTail`].
    #[error("corrupt log: segment {segment} ({}) at offset {offset}: {kind}", path.display())]
    Corrupt {
        /// The segment holding the bad bytes.
        segment: SegmentId,
        /// The segment's file.
        path: PathBuf,
        /// Byte offset inside the segment file where the problem starts.
        offset: u64,
        /// What is wrong.
        kind: CorruptionKind,
    },

    /// The last segment ends in a torn write and the recovery mode is
    /// [`crate::RecoveryMode::Strict`].
    #[error("torn tail in segment {segment} ({}) at offset {offset}: {kind}", path.display())]
    TornTail {
        /// The last segment.
        segment: SegmentId,
        /// The segment's file.
        path: PathBuf,
        /// Byte offset of the first byte that is not part of a valid frame.
        offset: u64,
        /// Why the frame at `offset` does not validate.
        kind: CorruptionKind,
    },

    /// Another process (or another handle in this process) holds the directory's writer lock.
    #[error("log directory {} is locked by another writer (lock file {})", dir.display(), lock_path.display())]
    Locked {
        /// The log directory.
        dir: PathBuf,
        /// The lock file.
        lock_path: PathBuf,
    },

    /// An earlier write or fsync failed; the page cache can no longer be trusted, so the writer
    /// refuses appends until the log is reopened (which runs recovery).
    #[error(
        "log writer is poisoned by an earlier I/O failure ({cause}); reopen the log to recover"
    )]
    Poisoned {
        /// The failure that poisoned the writer.
        cause: PoisonCause,
    },

    /// The log was closed.
    #[error("log is closed")]
    Closed,

    /// An append with no records.
    #[error("an append needs at least one record")]
    EmptyAppend,

    /// An append whose encoded size does not fit in one segment.
    #[error("append of {encoded_len} bytes exceeds the maximum of {encoded_len_max} bytes for segments of {segment_size_bytes} bytes")]
    AppendTooLarge {
        /// Encoded size of the append.
        encoded_len: u64,
        /// The largest append a segment can hold.
        encoded_len_max: u64,
        /// Configured segment size.
        segment_size_bytes: u64,
    },

    /// A read asked for a position the log no longer holds (deleted by `truncate_before`).
    #[error("position {requested} is below the first position {first} still in the log")]
    PositionTruncated {
        /// The position asked for.
        requested: Position,
        /// The first position still held.
        first: Position,
    },

    /// The `log-id` file exists but does not hold a valid log id. The open fails and the file is
    /// left exactly as it is: a new id would make every sink that recorded the old one refuse
    /// the log, or worse, let a sink that lost its record follow the log as a different one.
    #[error(
        "damaged log id file {}: {kind}; it is left as it is (a new id would not match what the \
         log's sinks recorded): restore it from a backup of the log directory",
        path.display()
    )]
    LogIdCorrupt {
        /// The `log-id` file.
        path: PathBuf,
        /// What is wrong with it.
        kind: LogIdCorruption,
    },

    /// The configuration is not usable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

/// The failure that poisoned a writer, kept so that every later append can report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoisonCause {
    /// The call that failed.
    pub op: &'static str,
    /// The kind of the I/O error.
    pub kind: io::ErrorKind,
    /// The error's message.
    pub message: String,
}

impl fmt::Display for PoisonCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.op, self.message)
    }
}

/// What is wrong with a segment or a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// The file is shorter than a segment header.
    #[error("segment header truncated ({len} bytes)")]
    SegmentHeaderTruncated {
        /// Bytes present.
        len: u64,
    },
    /// The segment header does not start with the magic bytes.
    #[error("bad segment magic")]
    BadMagic,
    /// The segment header's checksum does not match.
    #[error("segment header checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    SegmentHeaderChecksum {
        /// Checksum stored in the header.
        expected: u32,
        /// Checksum computed over the header.
        actual: u32,
    },
    /// The segment was written by a format version this reader does not know.
    #[error("unsupported format version {version}")]
    UnsupportedVersion {
        /// Version found in the header.
        version: u32,
    },
    /// The first position in the header disagrees with the file name.
    #[error("segment header names first position {in_header}, file name says {in_name}")]
    SegmentNameMismatch {
        /// Position in the header.
        in_header: Position,
        /// Position in the file name.
        in_name: Position,
    },
    /// Fewer bytes remain than the frame needs.
    #[error("frame truncated: needs {needed} bytes, {available} available")]
    FrameTruncated {
        /// Bytes the frame claims.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// A frame header that is all zero bytes where a frame was expected.
    #[error("zeroed frame header")]
    ZeroFrame,
    /// The frame header's checksum does not match.
    #[error("frame header checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    FrameHeaderChecksum {
        /// Checksum stored in the frame header.
        expected: u32,
        /// Checksum computed over the header fields.
        actual: u32,
    },
    /// The frame body's checksum does not match.
    #[error("frame body checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    FrameBodyChecksum {
        /// Checksum stored in the frame header.
        expected: u32,
        /// Checksum computed over the body.
        actual: u32,
    },
    /// The frame's record lengths do not add up to its body length.
    #[error("frame structure invalid: {reason}")]
    BadFrameStructure {
        /// Which rule the frame breaks.
        reason: &'static str,
    },
    /// The padding after a frame is not zero.
    #[error("non-zero padding after frame")]
    NonZeroPadding,
    /// A frame's first position is not the one that follows the previous frame.
    #[error("frame position {found}, expected {expected}")]
    PositionMismatch {
        /// Position the previous frames imply.
        expected: Position,
        /// Position stored in the frame.
        found: Position,
    },
    /// A sealed segment ends before the position the next segment starts at, or runs past it.
    #[error("segment ends at position {end}, but the next segment starts at {next_first}")]
    SegmentGap {
        /// Position after the segment's last record.
        end: Position,
        /// First position of the next segment.
        next_first: Position,
    },
    /// A sealed segment has bytes after its last frame.
    #[error("sealed segment has {len} trailing bytes after its last frame")]
    TrailingBytes {
        /// Trailing bytes.
        len: u64,
    },
    /// The clean-shutdown marker disagrees with the segments.
    #[error("clean-shutdown marker disagrees with the log: {reason}")]
    MarkerMismatch {
        /// What disagrees.
        reason: &'static str,
    },
}

/// What is wrong with a `log-id` file (checked in this order).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogIdCorruption {
    /// The file is not exactly [`crate::identity::LOG_ID_LEN`] bytes long (empty, truncated, or
    /// with bytes after the checksum).
    #[error(
        "log id file is {len} bytes long, expected {}",
        crate::identity::LOG_ID_LEN
    )]
    WrongLength {
        /// Bytes present.
        len: u64,
    },
    /// The file does not start with the magic bytes `HSWALLID`.
    #[error("bad log id magic")]
    BadMagic,
    /// The checksum does not match the bytes before it.
    #[error("log id checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")]
    Checksum {
        /// Checksum stored in the file.
        expected: u32,
        /// Checksum computed over the bytes before it.
        actual: u32,
    },
    /// The file was written in a layout version this reader does not know.
    #[error("unsupported log id version {version}")]
    UnsupportedVersion {
        /// Version found in the file.
        version: u32,
    },
    /// The reserved word is not zero (a layout this reader does not know).
    #[error("log id reserved word is {reserved:#010x}, expected 0")]
    NonZeroReserved {
        /// The word found.
        reserved: u32,
    },
}

impl Error {
    /// Wraps an I/O error with the path and call it came from.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// True for errors that mean the log's bytes are damaged (as opposed to the call failing).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. } | Error::TornTail { .. } | Error::LogIdCorrupt { .. }
        )
    }
}
