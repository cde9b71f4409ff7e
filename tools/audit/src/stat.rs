//! `stat`: the log id, counts (segments, frames, records, bytes), the first and last position,
//! the clean-shutdown marker and a per-segment table. JSON output is one document. Read-only, no
//! lock.

use std::io::Write;

use anyhow::Context as _;
use hybridstore_wal::io::FileSystem;
use serde::Serialize;

use crate::check::{LogCheck, LogDir, LogIdState};
use crate::output::{ProblemJson, SegmentJson};
use crate::{Format, Verdict};

/// The `stat` document.
#[derive(Debug, Clone, Serialize)]
pub struct StatJson {
    /// The log directory.
    pub dir: String,
    /// The log id (lowercase hyphenated UUID), when `log-id` holds a valid one.
    pub log_id: Option<String>,
    /// State of the `log-id` file (`absent`, `valid`, `damaged`).
    pub log_id_file: &'static str,
    /// Segment files.
    pub segment_count: u64,
    /// Valid frames.
    pub frame_count: u64,
    /// Valid records.
    pub record_count: u64,
    /// Bytes in the segment files (preallocated space included).
    pub file_bytes: u64,
    /// Bytes in valid frames.
    pub frame_bytes: u64,
    /// First position of the log.
    pub first_position: Option<u64>,
    /// Position of the last valid record.
    pub last_position: Option<u64>,
    /// Position after the last valid record.
    pub end_position: Option<u64>,
    /// Whether a clean-shutdown marker file exists.
    pub clean_shutdown_marker_present: bool,
    /// What the marker says (`absent`, `matches`, `invalid`, `ignored`, `mismatch`).
    pub clean_shutdown_marker: &'static str,
    /// One row per segment.
    pub segments: Vec<SegmentJson>,
    /// Problems that make the counts partial (empty for a clean log).
    pub problems: Vec<ProblemJson>,
}

/// Prints statistics of the log in `log`.
///
/// # Errors
/// When a segment cannot be read or the output cannot be written.
pub fn stat(
    fs: &dyn FileSystem,
    log: &LogDir,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<Verdict> {
    let check = LogCheck::run(fs, log)?;
    let totals = check.totals();
    let problems = check.problems();
    let document = StatJson {
        dir: log.path.display().to_string(),
        log_id: check.log_id.state.id().map(|id| id.to_string()),
        log_id_file: check.log_id.state.name(),
        segment_count: totals.segment_count,
        frame_count: totals.frame_count,
        record_count: totals.record_count,
        file_bytes: totals.file_bytes,
        frame_bytes: totals.frame_bytes,
        first_position: totals.first_position.map(|p| p.0),
        last_position: totals.last_position().map(|p| p.0),
        end_position: totals.end_position.map(|p| p.0),
        clean_shutdown_marker_present: check.marker.state.is_present(),
        clean_shutdown_marker: check.marker.state.name(),
        segments: check.segments.iter().map(SegmentJson::from).collect(),
        problems: problems.iter().map(|p| ProblemJson::from(*p)).collect(),
    };
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &document).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Format::Human => write_human(&document, check.log_id.state, out)?,
    }
    for problem in &problems {
        if format == Format::Human {
            writeln!(out, "{problem}")?;
        }
    }
    out.flush().context("cannot write output")?;
    Ok(Verdict::from_problem_count(problems.len()))
}

fn write_human(stat: &StatJson, log_id: LogIdState, out: &mut dyn Write) -> std::io::Result<()> {
    let optional = |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |v| v.to_string());
    writeln!(out, "log directory: {}", stat.dir)?;
    match log_id {
        LogIdState::Valid(id) => writeln!(out, "log id:        {id}")?,
        LogIdState::Damaged => writeln!(out, "log id:        damaged (see the problem below)")?,
        LogIdState::Absent => writeln!(
            out,
            "log id:        none (a log written before log ids; the writer creates one at its next open)"
        )?,
    }
    writeln!(out, "segments:      {}", stat.segment_count)?;
    writeln!(out, "frames:        {}", stat.frame_count)?;
    writeln!(out, "records:       {}", stat.record_count)?;
    writeln!(
        out,
        "bytes:         {} in files, {} in frames",
        stat.file_bytes, stat.frame_bytes
    )?;
    writeln!(
        out,
        "positions:     first {}, last {}, end {}",
        optional(stat.first_position),
        optional(stat.last_position),
        optional(stat.end_position)
    )?;
    writeln!(
        out,
        "clean-shutdown marker: {} ({})",
        if stat.clean_shutdown_marker_present {
            "present"
        } else {
            "absent"
        },
        stat.clean_shutdown_marker
    )?;
    if stat.segments.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<24} {:<6} {:>10} {:>11} {:>7} {:>8} {:>21}  status",
        "segment", "role", "file_bytes", "frame_bytes", "frames", "records", "positions"
    )?;
    for segment in &stat.segments {
        let positions = format!("{}..{}", segment.first_position, segment.end_position);
        writeln!(
            out,
            "{:<24} {:<6} {:>10} {:>11} {:>7} {:>8} {:>21}  {}",
            segment.file,
            segment.role,
            segment.file_bytes,
            segment.frame_bytes,
            segment.frames,
            segment.records,
            positions,
            segment.status
        )?;
    }
    Ok(())
}
