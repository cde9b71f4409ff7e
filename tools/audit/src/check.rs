//! Checking a log: locating its directory, scanning each segment with the engine's scanner, the
//! continuity between segments, the clean-shutdown marker, the `log-id` file (read with the
//! engine's own reader), and the [`Problem`] every command reports.
//!
//! Nothing here writes or locks: checks map each segment read-only, one at a time, and drop the
//! mapping before returning.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use hybridstore_wal::format::{Position, SegmentId, SEGMENT_HEADER_LEN};
use hybridstore_wal::identity::{read_log_id, LOG_ID_FILE_NAME};
use hybridstore_wal::io::{FileSystem, OpenMode};
use hybridstore_wal::marker::{CleanShutdown, MARKER_FILE_NAME};
use hybridstore_wal::recovery::{
    scan_segment, ScanOutcome, ScannedFrame, SegmentRole, SegmentScan,
};
use hybridstore_wal::segment::{list_segments, segment_path};
use hybridstore_wal::{CorruptionKind, Error, LogId, LogIdCorruption};

/// Name of the subdirectory of a data directory that holds the log.
pub const WAL_SUBDIR_NAME: &str = "wal";

/// A located log directory and the segments it held when it was listed.
#[derive(Debug, Clone)]
pub struct LogDir {
    /// The directory holding the segments (the argument itself, or its `wal/` subdirectory).
    pub path: PathBuf,
    /// Segment ids, sorted.
    pub segments: Vec<SegmentId>,
}

impl LogDir {
    /// Locates the log for the directory argument: `given/wal` when it exists and holds segments
    /// (a data directory), else `given` itself (a log directory). An empty log is fine.
    ///
    /// # Errors
    /// When `given` does not exist, is not a directory, or cannot be listed.
    pub fn locate(fs: &dyn FileSystem, given: &Path) -> anyhow::Result<LogDir> {
        fs.list_dir(given)
            .with_context(|| format!("cannot read log directory {}", given.display()))?;
        let nested = given.join(WAL_SUBDIR_NAME);
        if let Ok(segments) = list_segments(fs, &nested) {
            if !segments.is_empty() {
                return Ok(LogDir {
                    path: nested,
                    segments,
                });
            }
        }
        let segments = list_segments(fs, given)
            .with_context(|| format!("cannot list segments in {}", given.display()))?;
        Ok(LogDir {
            path: given.to_owned(),
            segments,
        })
    }

    /// The key store beside the log (a data directory's `keys/`), read-only, with the master
    /// key from the environment; a keyring without keys when there is none (sealed fields then
    /// show as locked). Checked against the log's id, as the store checks it at open: another
    /// log's key store would open no sealed field of this one. (Without a valid `log-id`, which
    /// `verify` reports, there is nothing to check it against.)
    ///
    /// # Errors
    /// A damaged key store, another log's, or a wrapped one without its master key.
    pub fn keyring(&self) -> anyhow::Result<hybridstore::crypto::Keyring> {
        let data_dir = match self.path.parent() {
            Some(parent) if self.path.file_name() == Some(WAL_SUBDIR_NAME.as_ref()) => parent,
            _ => return Ok(hybridstore::crypto::Keyring::keyless()),
        };
        let log_id = read_log_id(&hybridstore_wal::io::StdFs, &self.path)
            .ok()
            .flatten();
        hybridstore::crypto::Keyring::for_tool(data_dir, log_id, false)
            .with_context(|| format!("cannot read the key store of {}", data_dir.display()))
    }

    /// Lists the segments again (after a repair changed them).
    ///
    /// # Errors
    /// When the directory cannot be listed.
    pub fn relist(&self, fs: &dyn FileSystem) -> anyhow::Result<LogDir> {
        let segments = list_segments(fs, &self.path)
            .with_context(|| format!("cannot list segments in {}", self.path.display()))?;
        Ok(LogDir {
            path: self.path.clone(),
            segments,
        })
    }

    /// The path of segment `id`.
    pub fn segment_path(&self, id: SegmentId) -> PathBuf {
        segment_path(&self.path, id)
    }

    /// The path of the clean-shutdown marker.
    pub fn marker_path(&self) -> PathBuf {
        self.path.join(MARKER_FILE_NAME)
    }

    /// The path of the `log-id` file.
    pub fn log_id_path(&self) -> PathBuf {
        self.path.join(LOG_ID_FILE_NAME)
    }

    /// The role the scanner must give the segment at `index`: only the last may end torn.
    pub fn role(&self, index: usize) -> SegmentRole {
        if index + 1 == self.segments.len() {
            SegmentRole::Last
        } else {
            SegmentRole::Sealed
        }
    }
}

/// How a problem is handled: it decides the hint, and what `repair` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemClass {
    /// Bytes that were once durable went bad, or segments do not line up.
    Corrupt,
    /// The last segment ends in a write that was in flight when the process or power died.
    TornTail,
    /// The last segment's header is torn and no frame follows it (a crash during creation).
    TornHeader,
    /// The clean-shutdown marker disagrees with the segments, so an open that trusts it would
    /// resume writing at the wrong place.
    StaleMarker,
    /// The `log-id` file is damaged: the writer refuses to open the log, and nothing recreates
    /// the file, since sinks that recorded the id would refuse (or worse, follow) a new one.
    DamagedLogId,
}

impl ProblemClass {
    /// Stable machine name.
    pub fn name(self) -> &'static str {
        match self {
            ProblemClass::Corrupt => "corrupt",
            ProblemClass::TornTail => "torn_tail",
            ProblemClass::TornHeader => "torn_header",
            ProblemClass::StaleMarker => "stale_marker",
            ProblemClass::DamagedLogId => "damaged_log_id",
        }
    }

    /// What the operator can do about it.
    pub fn hint(self) -> &'static str {
        match self {
            ProblemClass::Corrupt => {
                "`hybridstore-audit repair` cuts the log here, after backing up everything it removes"
            }
            ProblemClass::TornTail => {
                "`hybridstore-audit repair` or opening the log with the writer truncates it"
            }
            ProblemClass::TornHeader => {
                "`hybridstore-audit repair` moves the segment aside; opening the log with the writer rewrites the header"
            }
            ProblemClass::StaleMarker => "`hybridstore-audit repair` removes the marker",
            ProblemClass::DamagedLogId => {
                "restore `log-id` from a backup of the log directory; neither the writer nor `repair` recreates it, since the log's sinks recorded the id"
            }
        }
    }

    fn label(self) -> &'static str {
        match self {
            ProblemClass::Corrupt => "corrupt",
            ProblemClass::TornTail => "torn tail",
            ProblemClass::TornHeader => "torn header",
            ProblemClass::StaleMarker => "stale clean-shutdown marker",
            ProblemClass::DamagedLogId => "damaged log id",
        }
    }
}

/// What is wrong, in the engine's own terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// Damage in a segment or a frame, or a marker that disagrees with them.
    Log(CorruptionKind),
    /// A damaged `log-id` file.
    LogId(LogIdCorruption),
}

impl ProblemKind {
    /// Stable machine name of the variant (snake case of the engine's variant name; the log id
    /// kinds prefixed with `log_id_`).
    pub fn name(&self) -> &'static str {
        match self {
            ProblemKind::Log(kind) => kind_name(kind),
            ProblemKind::LogId(kind) => log_id_kind_name(kind),
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::Log(kind) => kind.fmt(f),
            ProblemKind::LogId(kind) => kind.fmt(f),
        }
    }
}

/// One problem found in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// How it is handled.
    pub class: ProblemClass,
    /// The segment holding it (for the marker: the segment the marker describes; `None` for the
    /// log id).
    pub segment: Option<SegmentId>,
    /// The file holding it (a segment, the marker, or `log-id`).
    pub path: PathBuf,
    /// Byte offset in the segment file where the bad bytes start (`None` for the marker and the
    /// log id).
    pub offset: Option<u64>,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl Problem {
    /// Stable machine name of the kind.
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.class.label())?;
        match self.segment {
            Some(segment) if self.class != ProblemClass::StaleMarker => {
                write!(f, "segment {} ({})", segment, self.path.display())?;
            }
            _ => write!(f, "{}", self.path.display())?,
        }
        if let Some(offset) = self.offset {
            write!(f, " at offset {offset}")?;
        }
        write!(
            f,
            ": {} [{}]; {}",
            self.kind,
            self.kind_name(),
            self.class.hint()
        )
    }
}

/// Stable machine name of a [`CorruptionKind`] variant (snake case of the variant name).
pub fn kind_name(kind: &CorruptionKind) -> &'static str {
    match kind {
        CorruptionKind::SegmentHeaderTruncated { .. } => "segment_header_truncated",
        CorruptionKind::BadMagic => "bad_magic",
        CorruptionKind::SegmentHeaderChecksum { .. } => "segment_header_checksum",
        CorruptionKind::UnsupportedVersion { .. } => "unsupported_version",
        CorruptionKind::SegmentNameMismatch { .. } => "segment_name_mismatch",
        CorruptionKind::FrameTruncated { .. } => "frame_truncated",
        CorruptionKind::ZeroFrame => "zero_frame",
        CorruptionKind::FrameHeaderChecksum { .. } => "frame_header_checksum",
        CorruptionKind::FrameBodyChecksum { .. } => "frame_body_checksum",
        CorruptionKind::BadFrameStructure { .. } => "bad_frame_structure",
        CorruptionKind::NonZeroPadding => "non_zero_padding",
        CorruptionKind::PositionMismatch { .. } => "position_mismatch",
        CorruptionKind::SegmentGap { .. } => "segment_gap",
        CorruptionKind::TrailingBytes { .. } => "trailing_bytes",
        CorruptionKind::MarkerMismatch { .. } => "marker_mismatch",
        // `CorruptionKind` is non-exhaustive: a kind added to the engine later still gets
        // reported, under a name that says this tool predates it.
        _ => "unknown",
    }
}

/// Stable machine name of a [`LogIdCorruption`] variant (`log_id_` and the snake case of the
/// variant name).
pub fn log_id_kind_name(kind: &LogIdCorruption) -> &'static str {
    match kind {
        LogIdCorruption::WrongLength { .. } => "log_id_wrong_length",
        LogIdCorruption::BadMagic => "log_id_bad_magic",
        LogIdCorruption::Checksum { .. } => "log_id_checksum",
        LogIdCorruption::UnsupportedVersion { .. } => "log_id_unsupported_version",
        LogIdCorruption::NonZeroReserved { .. } => "log_id_non_zero_reserved",
        // Non-exhaustive too, for the same reason.
        _ => "unknown",
    }
}

/// The result of checking one segment.
#[derive(Debug, Clone)]
pub struct SegmentCheck {
    /// The segment.
    pub id: SegmentId,
    /// Its file.
    pub path: PathBuf,
    /// How it was scanned.
    pub role: SegmentRole,
    /// Length of the file.
    pub file_len: u64,
    /// Offset just past the last non-zero byte of the file (the end of everything ever written,
    /// valid or not; preallocated zeros excluded).
    pub data_end_offset: u64,
    /// What the engine's scanner found.
    pub scan: SegmentScan,
    /// The problem, if any: from the scan, or a gap to the next segment.
    pub problem: Option<Problem>,
}

impl SegmentCheck {
    /// Bytes covered by valid frames.
    pub fn frame_bytes(&self) -> u64 {
        self.scan
            .end_offset
            .saturating_sub(SEGMENT_HEADER_LEN as u64)
    }

    /// Where `repair` has to cut the log because of this segment's problem, if anywhere.
    pub fn cut(&self, index: usize) -> Option<Cut> {
        let problem = self.problem.as_ref()?;
        Some(match (problem.class, &problem.kind) {
            (ProblemClass::TornTail, _) => Cut::Tail {
                index,
                offset: problem.offset.unwrap_or(self.scan.end_offset),
            },
            (ProblemClass::TornHeader, _) => Cut::Segments { index, offset: 0 },
            // The segment itself is whole; the log stops being continuous where the next one
            // starts, so that is where it is cut.
            (_, ProblemKind::Log(CorruptionKind::SegmentGap { .. })) => Cut::Segments {
                index: index + 1,
                offset: 0,
            },
            _ => Cut::Segments {
                index,
                offset: problem.offset.unwrap_or(0),
            },
        })
    }
}

/// Where a repair cuts the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Zero the last segment (at `index`) from `offset`, keeping its length.
    Tail {
        /// Index of the last segment.
        index: usize,
        /// First byte that is not part of a valid frame.
        offset: u64,
    },
    /// Keep segment `index` up to `offset` (move it aside whole when `offset` is 0) and remove
    /// every later segment.
    Segments {
        /// Index of the first segment that changes.
        index: usize,
        /// Where it is cut.
        offset: u64,
    },
}

/// Maps the segment file at `path` read-only and returns its bytes. Only for files that cannot
/// change meanwhile: sealed segments, or any segment while the writer lock is held.
///
/// # Errors
/// When the file cannot be opened or mapped.
pub fn read_segment(fs: &dyn FileSystem, path: &Path) -> anyhow::Result<bytes::Bytes> {
    let file = fs
        .open(path, OpenMode::ReadOnly)
        .with_context(|| format!("cannot open segment {}", path.display()))?;
    file.map()
        .with_context(|| format!("cannot map segment {}", path.display()))
}

/// Copies the segment file at `path` into memory. Used for the last segment when no lock is
/// held: a writer may truncate it at any moment (a clean close cuts the preallocated space,
/// recovery cuts a torn tail), and touching a mapped page past the new end of a file raises
/// SIGBUS, whereas a read just comes back short.
///
/// # Errors
/// When the file cannot be read, or shrinks while it is read.
pub fn copy_segment(fs: &dyn FileSystem, path: &Path) -> anyhow::Result<bytes::Bytes> {
    let file = fs
        .open(path, OpenMode::ReadOnly)
        .with_context(|| format!("cannot open segment {}", path.display()))?;
    let len = file
        .len()
        .with_context(|| format!("cannot stat segment {}", path.display()))?;
    let len = usize::try_from(len)
        .with_context(|| format!("segment {} is too large to read", path.display()))?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, 0).with_context(|| {
        format!(
            "cannot read segment {} (did a writer change it meanwhile?)",
            path.display()
        )
    })?;
    Ok(bytes::Bytes::from(bytes))
}

/// Checks the segment at `index` of `log` with the engine's scanner, calling `visit` for each
/// valid frame, and checks that a whole sealed segment ends where the next one starts.
///
/// # Errors
/// When the segment cannot be read (damage in its bytes is a [`Problem`], not an error).
pub fn check_segment(
    fs: &dyn FileSystem,
    log: &LogDir,
    index: usize,
    visit: &mut dyn FnMut(SegmentId, ScannedFrame<'_>),
) -> anyhow::Result<SegmentCheck> {
    let Some(&id) = log.segments.get(index) else {
        bail!("segment index {index} out of range (a bug in the audit tool)");
    };
    let path = log.segment_path(id);
    let role = log.role(index);
    let bytes = match role {
        SegmentRole::Sealed => read_segment(fs, &path)?,
        SegmentRole::Last => copy_segment(fs, &path)?,
    };
    let scan = scan_segment(&bytes, id, role, &mut |frame| visit(id, frame));
    let data_end_offset = bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last as u64 + 1);
    let file_len = bytes.len() as u64;
    drop(bytes);
    let problem = |class, offset, kind| {
        Some(Problem {
            class,
            segment: Some(id),
            path: path.clone(),
            offset,
            kind: ProblemKind::Log(kind),
        })
    };
    let problem = match scan.outcome.clone() {
        ScanOutcome::Clean => match log.segments.get(index + 1) {
            Some(next) if role == SegmentRole::Sealed && scan.end_position != next.0 => problem(
                ProblemClass::Corrupt,
                Some(scan.end_offset),
                CorruptionKind::SegmentGap {
                    end: scan.end_position,
                    next_first: next.first_position(),
                },
            ),
            _ => None,
        },
        ScanOutcome::TornTail { offset, kind } => {
            problem(ProblemClass::TornTail, Some(offset), kind)
        }
        ScanOutcome::TornHeader { kind } => problem(ProblemClass::TornHeader, Some(0), kind),
        ScanOutcome::Corrupt { offset, kind } => problem(ProblemClass::Corrupt, Some(offset), kind),
    };
    Ok(SegmentCheck {
        id,
        path,
        role,
        file_len,
        data_end_offset,
        scan,
        problem,
    })
}

/// What the clean-shutdown marker says about the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerState {
    /// No marker: the last writer did not close cleanly (or the log is open), so the next open
    /// scans the last segment.
    Absent,
    /// A marker that describes the last segment exactly.
    Matches,
    /// A marker that does not decode; the writer ignores it and scans.
    Invalid,
    /// A marker for another segment, or with an end the file cannot hold; the writer ignores it.
    Ignored,
    /// A marker the writer would trust, but that disagrees with the segment's frames.
    Mismatch,
}

impl MarkerState {
    /// Stable machine name.
    pub fn name(self) -> &'static str {
        match self {
            MarkerState::Absent => "absent",
            MarkerState::Matches => "matches",
            MarkerState::Invalid => "invalid",
            MarkerState::Ignored => "ignored",
            MarkerState::Mismatch => "mismatch",
        }
    }

    /// True when a marker file exists.
    pub fn is_present(self) -> bool {
        self != MarkerState::Absent
    }
}

/// The result of checking the clean-shutdown marker.
#[derive(Debug, Clone)]
pub struct MarkerCheck {
    /// What the marker says.
    pub state: MarkerState,
    /// The marker file.
    pub path: PathBuf,
    /// A problem when the writer would trust a marker that is wrong.
    pub problem: Option<Problem>,
}

/// Checks the clean-shutdown marker against the last segment, the way `Wal::open` would use it:
/// a marker naming the last segment, with an end inside the file, is trusted without a scan, so
/// it must agree with the frames.
///
/// # Errors
/// When the marker exists but cannot be read.
pub fn check_marker(
    fs: &dyn FileSystem,
    log: &LogDir,
    last: Option<&SegmentCheck>,
) -> anyhow::Result<MarkerCheck> {
    let path = log.marker_path();
    let file = match fs.open(&path, OpenMode::ReadOnly) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(MarkerCheck {
                state: MarkerState::Absent,
                path,
                problem: None,
            })
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open marker {}", path.display())),
    };
    let bytes = file
        .map()
        .with_context(|| format!("cannot read marker {}", path.display()))?;
    let Some(marker) = CleanShutdown::decode(&bytes) else {
        return Ok(MarkerCheck {
            state: MarkerState::Invalid,
            path,
            problem: None,
        });
    };
    let trusted = last.filter(|last| {
        marker.segment == last.id
            && marker.end_offset <= last.file_len
            && marker.end_offset >= SEGMENT_HEADER_LEN as u64
    });
    let Some(last) = trusted else {
        return Ok(MarkerCheck {
            state: MarkerState::Ignored,
            path,
            problem: None,
        });
    };
    let reason = if marker.end_offset != last.scan.end_offset {
        Some("its end offset is not where the last segment's valid frames end")
    } else if marker.end_position != last.scan.end_position {
        Some("its end position is not the last segment's end position")
    } else {
        None
    };
    Ok(match reason {
        None => MarkerCheck {
            state: MarkerState::Matches,
            path,
            problem: None,
        },
        Some(reason) => MarkerCheck {
            state: MarkerState::Mismatch,
            problem: Some(Problem {
                class: ProblemClass::StaleMarker,
                segment: Some(last.id),
                path: path.clone(),
                offset: None,
                kind: ProblemKind::Log(CorruptionKind::MarkerMismatch { reason }),
            }),
            path,
        },
    })
}

/// What the `log-id` file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogIdState {
    /// No file: a log written before log ids (the writer creates one at its next open), or one
    /// never opened by a writer.
    Absent,
    /// A valid file holding this id.
    Valid(LogId),
    /// A file that does not decode; the writer refuses to open the log.
    Damaged,
}

impl LogIdState {
    /// Stable machine name.
    pub fn name(self) -> &'static str {
        match self {
            LogIdState::Absent => "absent",
            LogIdState::Valid(_) => "valid",
            LogIdState::Damaged => "damaged",
        }
    }

    /// The id, when the file holds a valid one.
    pub fn id(self) -> Option<LogId> {
        match self {
            LogIdState::Valid(id) => Some(id),
            LogIdState::Absent | LogIdState::Damaged => None,
        }
    }
}

/// The result of checking the `log-id` file.
#[derive(Debug, Clone)]
pub struct LogIdCheck {
    /// What the file says.
    pub state: LogIdState,
    /// The file.
    pub path: PathBuf,
    /// The problem when it is damaged.
    pub problem: Option<Problem>,
}

/// Checks the `log-id` file with the engine's own reader, so the tool calls damaged exactly what
/// `Wal::open` refuses. Reads only: the engine's read neither writes nor syncs.
///
/// # Errors
/// When the file exists but cannot be read.
pub fn check_log_id(fs: &dyn FileSystem, log: &LogDir) -> anyhow::Result<LogIdCheck> {
    let path = log.log_id_path();
    let (state, problem) = match read_log_id(fs, &log.path) {
        Ok(None) => (LogIdState::Absent, None),
        Ok(Some(id)) => (LogIdState::Valid(id), None),
        Err(Error::LogIdCorrupt { kind, .. }) => (
            LogIdState::Damaged,
            Some(Problem {
                class: ProblemClass::DamagedLogId,
                segment: None,
                path: path.clone(),
                offset: None,
                kind: ProblemKind::LogId(kind),
            }),
        ),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read log id {}", path.display()))
        }
    };
    Ok(LogIdCheck {
        state,
        path,
        problem,
    })
}

/// The result of checking every segment, the marker and the log id.
#[derive(Debug, Clone)]
pub struct LogCheck {
    /// The log that was checked.
    pub log: LogDir,
    /// One check per segment, in order.
    pub segments: Vec<SegmentCheck>,
    /// The clean-shutdown marker.
    pub marker: MarkerCheck,
    /// The `log-id` file.
    pub log_id: LogIdCheck,
}

impl LogCheck {
    /// Checks every segment, the marker and the log id.
    ///
    /// # Errors
    /// When a segment, the marker or the log id cannot be read.
    pub fn run(fs: &dyn FileSystem, log: &LogDir) -> anyhow::Result<LogCheck> {
        let segments = (0..log.segments.len())
            .map(|index| check_segment(fs, log, index, &mut |_, _| {}))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let marker = check_marker(fs, log, segments.last())?;
        let log_id = check_log_id(fs, log)?;
        Ok(LogCheck {
            log: log.clone(),
            segments,
            marker,
            log_id,
        })
    }

    /// Every problem, in log order, then the marker's, then the log id's.
    pub fn problems(&self) -> Vec<&Problem> {
        self.segments
            .iter()
            .filter_map(|s| s.problem.as_ref())
            .chain(self.marker.problem.as_ref())
            .chain(self.log_id.problem.as_ref())
            .collect()
    }

    /// Totals over the segments.
    pub fn totals(&self) -> Totals {
        Totals::of(&self.segments)
    }
}

/// Totals over checked segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Segments checked.
    pub segment_count: u64,
    /// Valid frames.
    pub frame_count: u64,
    /// Valid records.
    pub record_count: u64,
    /// Bytes in the segment files.
    pub file_bytes: u64,
    /// Bytes in valid frames.
    pub frame_bytes: u64,
    /// The first position of the first segment.
    pub first_position: Option<Position>,
    /// Position after the last valid record of the last segment.
    pub end_position: Option<Position>,
}

impl Totals {
    /// Adds up `segments`.
    pub fn of(segments: &[SegmentCheck]) -> Totals {
        let mut totals = Totals::default();
        for segment in segments {
            totals.add(segment);
        }
        totals
    }

    /// Adds one segment (segments must come in order).
    pub fn add(&mut self, segment: &SegmentCheck) {
        self.segment_count += 1;
        self.frame_count += segment.scan.frames;
        self.record_count += segment.scan.records;
        self.file_bytes += segment.file_len;
        self.frame_bytes += segment.frame_bytes();
        self.first_position
            .get_or_insert(segment.id.first_position());
        self.end_position = Some(segment.scan.end_position);
    }

    /// Position of the last valid record, if the log holds any.
    pub fn last_position(&self) -> Option<Position> {
        let end = self.end_position?;
        let first = self.first_position?;
        (end > first).then(|| Position(end.0 - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves every kind the engine knows today, of segments and of the log id, has its own
    /// machine name (none is `unknown`, no two are the same).
    #[test]
    fn every_known_kind_has_a_name() {
        let kinds = [
            CorruptionKind::SegmentHeaderTruncated { len: 0 },
            CorruptionKind::BadMagic,
            CorruptionKind::SegmentHeaderChecksum {
                expected: 0,
                actual: 1,
            },
            CorruptionKind::UnsupportedVersion { version: 2 },
            CorruptionKind::SegmentNameMismatch {
                in_header: Position(1),
                in_name: Position(2),
            },
            CorruptionKind::FrameTruncated {
                needed: 2,
                available: 1,
            },
            CorruptionKind::ZeroFrame,
            CorruptionKind::FrameHeaderChecksum {
                expected: 0,
                actual: 1,
            },
            CorruptionKind::FrameBodyChecksum {
                expected: 0,
                actual: 1,
            },
            CorruptionKind::BadFrameStructure { reason: "x" },
            CorruptionKind::NonZeroPadding,
            CorruptionKind::PositionMismatch {
                expected: Position(1),
                found: Position(2),
            },
            CorruptionKind::SegmentGap {
                end: Position(1),
                next_first: Position(2),
            },
            CorruptionKind::TrailingBytes { len: 1 },
            CorruptionKind::MarkerMismatch { reason: "x" },
        ];
        let log_id_kinds = [
            LogIdCorruption::WrongLength { len: 0 },
            LogIdCorruption::BadMagic,
            LogIdCorruption::Checksum {
                expected: 0,
                actual: 1,
            },
            LogIdCorruption::UnsupportedVersion { version: 2 },
            LogIdCorruption::NonZeroReserved { reserved: 1 },
        ];
        let names: std::collections::HashSet<&str> = kinds
            .iter()
            .map(kind_name)
            .chain(log_id_kinds.iter().map(log_id_kind_name))
            .collect();
        assert_eq!(
            names.len(),
            kinds.len() + log_id_kinds.len(),
            "names are distinct"
        );
        assert!(!names.contains("unknown"));
    }
}
