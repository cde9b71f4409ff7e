//! Output: the `--format` choice, the JSON Lines envelope `{"type": .., "data": ..}` (one object
//! per line, ripgrep `--json` style), and the JSON shapes of segments, problems and summaries
//! shared by the commands. Field names are a stable interface: add fields, never rename them.

use std::io::{self, Write};

use hybridstore_wal::format::SegmentId;
use hybridstore_wal::recovery::SegmentRole;
use serde::Serialize;

use crate::check::{LogCheck, LogIdState, MarkerState, Problem, SegmentCheck, Totals};

/// How a command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Lines for people.
    #[default]
    Human,
    /// JSON: JSON Lines with a `{type, data}` envelope (`stat`: one document).
    Json,
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: &'a T,
}

/// Writes one JSON Lines message `{"type": kind, "data": data}`.
///
/// # Errors
/// When writing fails (a broken pipe included).
pub fn write_json_line<T: Serialize>(out: &mut dyn Write, kind: &str, data: &T) -> io::Result<()> {
    let line = serde_json::to_string(&Envelope { kind, data }).map_err(io::Error::other)?;
    writeln!(out, "{line}")
}

/// A segment as JSON (a `segment` message of `verify`, a row of `stat`).
#[derive(Debug, Clone, Serialize)]
pub struct SegmentJson {
    /// The segment id: its first position.
    pub id: u64,
    /// File name.
    pub file: String,
    /// Full path.
    pub path: String,
    /// `sealed` or `last`.
    pub role: &'static str,
    /// Length of the file.
    pub file_bytes: u64,
    /// Bytes in valid frames.
    pub frame_bytes: u64,
    /// Offset just past the last valid frame.
    pub end_offset: u64,
    /// Valid frames.
    pub frames: u64,
    /// Valid records.
    pub records: u64,
    /// First position (from the file name).
    pub first_position: u64,
    /// Position after the last valid record.
    pub end_position: u64,
    /// `ok` or `problem`.
    pub status: &'static str,
}

impl From<&SegmentCheck> for SegmentJson {
    fn from(check: &SegmentCheck) -> Self {
        SegmentJson {
            id: check.id.first_position().0,
            file: check.id.file_name(),
            path: check.path.display().to_string(),
            role: role_name(check.role),
            file_bytes: check.file_len,
            frame_bytes: check.frame_bytes(),
            end_offset: check.scan.end_offset,
            frames: check.scan.frames,
            records: check.scan.records,
            first_position: check.id.first_position().0,
            end_position: check.scan.end_position.0,
            status: if check.problem.is_some() {
                "problem"
            } else {
                "ok"
            },
        }
    }
}

/// Stable name of a segment role.
pub fn role_name(role: SegmentRole) -> &'static str {
    match role {
        SegmentRole::Sealed => "sealed",
        SegmentRole::Last => "last",
    }
}

/// A problem as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ProblemJson {
    /// `corrupt`, `torn_tail`, `torn_header`, `stale_marker` or `damaged_log_id`.
    pub class: &'static str,
    /// The segment id, if the problem is in (or about) a segment.
    pub segment: Option<u64>,
    /// The segment's file name.
    pub segment_file: Option<String>,
    /// The file holding the problem (a segment, the marker, or `log-id`).
    pub path: String,
    /// Byte offset in the segment file.
    pub offset: Option<u64>,
    /// Stable machine name of the kind (`frame_body_checksum`, `log_id_checksum`, …).
    pub kind: &'static str,
    /// The kind, for people.
    pub message: String,
    /// What the operator can do.
    pub hint: &'static str,
}

impl From<&Problem> for ProblemJson {
    fn from(problem: &Problem) -> Self {
        ProblemJson {
            class: problem.class.name(),
            segment: problem.segment.map(|s| s.first_position().0),
            segment_file: problem.segment.map(SegmentId::file_name),
            path: problem.path.display().to_string(),
            offset: problem.offset,
            kind: problem.kind_name(),
            message: problem.kind.to_string(),
            hint: problem.class.hint(),
        }
    }
}

/// The closing summary of `verify` and `repair`.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryJson {
    /// The log directory.
    pub dir: String,
    /// No problems.
    pub clean: bool,
    /// Problems found.
    pub problem_count: u64,
    /// Segments checked.
    pub segment_count: u64,
    /// Valid frames.
    pub frame_count: u64,
    /// Valid records.
    pub record_count: u64,
    /// First position of the log.
    pub first_position: Option<u64>,
    /// Position after the last valid record.
    pub end_position: Option<u64>,
    /// State of the clean-shutdown marker (`absent`, `matches`, `invalid`, `ignored`, `mismatch`).
    pub clean_shutdown_marker: &'static str,
    /// The log id (lowercase hyphenated UUID), when `log-id` holds a valid one.
    pub log_id: Option<String>,
    /// State of the `log-id` file (`absent`, `valid`, `damaged`).
    pub log_id_file: &'static str,
}

impl SummaryJson {
    /// The summary of a finished check.
    pub fn new(
        dir: &str,
        totals: &Totals,
        problem_count: usize,
        marker: MarkerState,
        log_id: LogIdState,
    ) -> Self {
        SummaryJson {
            dir: dir.to_owned(),
            clean: problem_count == 0,
            problem_count: problem_count as u64,
            segment_count: totals.segment_count,
            frame_count: totals.frame_count,
            record_count: totals.record_count,
            first_position: totals.first_position.map(|p| p.0),
            end_position: totals.end_position.map(|p| p.0),
            clean_shutdown_marker: marker.name(),
            log_id: log_id.id().map(|id| id.to_string()),
            log_id_file: log_id.name(),
        }
    }

    /// The summary of `check`.
    pub fn of(check: &LogCheck) -> Self {
        SummaryJson::new(
            &check.log.path.display().to_string(),
            &check.totals(),
            check.problems().len(),
            check.marker.state,
            check.log_id.state,
        )
    }
}

/// The human summary line: `ok: N segments, M records, positions A..B` or `N problems (…)`.
pub fn human_summary(totals: &Totals, problem_count: usize) -> String {
    let counts = format!(
        "{} {}, {} {}",
        totals.segment_count,
        plural(totals.segment_count, "segment", "segments"),
        totals.record_count,
        plural(totals.record_count, "record", "records"),
    );
    let positions = match (totals.first_position, totals.end_position) {
        (Some(first), Some(end)) => format!(", positions {first}..{end}"),
        _ => String::new(),
    };
    if problem_count == 0 {
        format!("ok: {counts}{positions}")
    } else {
        // Positions are left out: with a problem in the way they would not be a range of
        // readable records.
        format!(
            "{problem_count} {} ({} {} checked, {} valid {})",
            plural(problem_count as u64, "problem", "problems"),
            totals.segment_count,
            plural(totals.segment_count, "segment", "segments"),
            totals.record_count,
            plural(totals.record_count, "record", "records"),
        )
    }
}

/// `singular` for 1, `plural` otherwise.
pub fn plural(count: u64, singular: &'static str, plural: &'static str) -> &'static str {
    if count == 1 {
        singular
    } else {
        plural
    }
}

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hybridstore_wal::format::Position;

    /// Proves the summary line's wording for a clean log, an empty log and a damaged one.
    #[test]
    fn human_summary_wording() {
        let totals = Totals {
            segment_count: 3,
            frame_count: 30,
            record_count: 60,
            file_bytes: 2160,
            frame_bytes: 2064,
            first_position: Some(Position(0)),
            end_position: Some(Position(60)),
        };
        assert_eq!(
            human_summary(&totals, 0),
            "ok: 3 segments, 60 records, positions 0..60"
        );
        assert_eq!(
            human_summary(&Totals::default(), 0),
            "ok: 0 segments, 0 records"
        );
        assert_eq!(
            human_summary(&totals, 1),
            "1 problem (3 segments checked, 60 valid records)"
        );
        assert_eq!(
            human_summary(&totals, 2),
            "2 problems (3 segments checked, 60 valid records)"
        );
    }

    /// Proves payloads are printed as lowercase hex, two digits a byte.
    #[test]
    fn hex_is_lowercase_two_digits() {
        assert_eq!(hex(b"\x00\x0fAz"), "000f417a");
        assert_eq!(hex(b""), "");
    }
}
