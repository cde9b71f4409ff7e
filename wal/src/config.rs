//! Options of a log: segment size, durability mode, recovery policy and the storage seam.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::format::{align_up, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::io::{FileSystem, StdFs};

/// Default segment size: 64 MiB.
pub const SEGMENT_SIZE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest segment size accepted (tests use tiny segments to rotate often).
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 128;
/// Largest segment size accepted (frame lengths are u32).
pub const SEGMENT_SIZE_BYTES_MAX: u64 = 1 << 31;
/// Default of [`Options::early_switch_after_bytes`]: 1 MiB.
pub const EARLY_SWITCH_AFTER_BYTES_DEFAULT: u64 = 1024 * 1024;

/// When an append is acknowledged, and so how much a power loss can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge only after the bytes are written and `fdatasync`ed. Loss window: none; an
    /// acknowledged append survives any crash or power loss the disk's fsync contract covers.
    #[default]
    Always,
    /// Acknowledge after `write`; a background thread `fdatasync`s every interval. Loss window: a
    /// power loss (not a process crash) can take the appends acknowledged during the last
    /// interval plus one fsync's duration. Readers still see only synced records.
    Interval(Duration),
    /// Acknowledge after `write`, never `fdatasync` (except at rotation and close). Loss window: a
    /// power loss can take everything since the last rotation. For tests and benches only.
    Never,
}

/// What recovery at open does with a torn tail of the last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Truncate it (logged with segment and offset): the torn write was never acknowledged.
    #[default]
    TruncateTornTail,
    /// Refuse to open with [`crate::Error::TornTail`].
    Strict,
}

/// Whether the next segment's file is written ahead of rotation (see `prepare`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrepareSegments {
    /// A background thread prepares the next segment once the active one is more than half
    /// full; rotation uses it when it is ready and creates the segment itself otherwise.
    #[default]
    Background,
    /// As `Background`, but the writer prepares at once, on its own thread, at the write that
    /// passes half: deterministic, for tests that count or fail I/O calls. Slows that append.
    Inline,
    /// Never prepare: rotation always creates (and preallocates) the next segment.
    Off,
}

/// Options for [`crate::Wal::open`].
#[derive(Clone)]
pub struct Options {
    /// Size segments are preallocated to and rotated at.
    pub segment_size_bytes: u64,
    /// When appends are acknowledged.
    pub durability: Durability,
    /// What to do with a torn tail at open.
    pub recovery: RecoveryMode,
    /// Whether the next segment is prepared (zero-filled) ahead of rotation. A log that stays
    /// below half a segment never prepares one (unless it switches early, below).
    pub prepare: PrepareSegments,
    /// Leaves an active segment that is not pre-written early: once this many bytes have been
    /// written into it by this process while it is at most half full, the next segment is
    /// prepared and the writer rotates into it as soon as it is ready (not when it is full).
    /// An active segment is not pre-written when it was created by `fallocate` (a new log's
    /// first segment, or a rotation with nothing prepared) or reopened (its tail is re-extended
    /// by `fallocate`); every `fdatasync` of appends into its unwritten extents also commits
    /// their conversion. 0 never switches early, nor does a value past half the segment size;
    /// with [`PrepareSegments::Off`] nothing does. The cost: a process that writes this much
    /// prepares (zero-fills) a whole next segment, used or not; and the early rotation's I/O can
    /// fail, poisoning the log, exactly as a rotation at the end of a segment can.
    pub early_switch_after_bytes: u64,
    /// The file system (the real one unless a test injects the simulated disk).
    pub fs: Arc<dyn FileSystem>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("segment_size_bytes", &self.segment_size_bytes)
            .field("durability", &self.durability)
            .field("recovery", &self.recovery)
            .field("prepare", &self.prepare)
            .field("early_switch_after_bytes", &self.early_switch_after_bytes)
            .field("fs", &self.fs)
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_size_bytes: SEGMENT_SIZE_BYTES_DEFAULT,
            durability: Durability::Always,
            recovery: RecoveryMode::TruncateTornTail,
            prepare: PrepareSegments::Background,
            early_switch_after_bytes: EARLY_SWITCH_AFTER_BYTES_DEFAULT,
            fs: StdFs::shared(),
        }
    }
}

impl Options {
    /// The largest encoded append (records with their length prefixes) one segment can hold.
    pub fn append_encoded_len_max(&self) -> u64 {
        let overhead = (SEGMENT_HEADER_LEN + align_up(FRAME_HEADER_LEN)) as u64;
        (self.segment_size_bytes.saturating_sub(overhead))
            & !(crate::format::FRAME_ALIGN as u64 - 1)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX).contains(&self.segment_size_bytes) {
            return Err(format!(
                "segment_size_bytes {} is outside {SEGMENT_SIZE_BYTES_MIN}..={SEGMENT_SIZE_BYTES_MAX}",
                self.segment_size_bytes
            ));
        }
        if let Durability::Interval(interval) = self.durability {
            if interval.is_zero() {
                return Err("durability interval must be greater than zero".into());
            }
        }
        Ok(())
    }
}
