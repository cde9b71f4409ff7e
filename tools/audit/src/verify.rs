//! `verify`: checks every frame of every segment (both checksums, structure, positions), that
//! sealed segments end exactly at their last frame and line up with the next segment, the
//! clean-shutdown marker, and the `log-id` file (a damaged one is a problem: the writer refuses
//! to open the log; a missing one is not: the writer creates it); reports every problem.
//! Read-only, no lock.

use std::io::Write;

use anyhow::Context as _;
use hybridstore_wal::io::FileSystem;

use crate::check::{check_log_id, check_marker, check_segment, LogDir, Totals};
use crate::output::{human_summary, write_json_line, ProblemJson, SegmentJson, SummaryJson};
use crate::{Format, Verdict};

/// Verifies the log in `log`, printing problems as they are found and a summary at the end.
///
/// # Errors
/// When a segment cannot be read or the output cannot be written.
pub fn verify(
    fs: &dyn FileSystem,
    log: &LogDir,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<Verdict> {
    let mut totals = Totals::default();
    let mut problem_count = 0;
    let mut last = None;
    for index in 0..log.segments.len() {
        let segment = check_segment(fs, log, index, &mut |_, _| {})?;
        totals.add(&segment);
        if format == Format::Json {
            write_json_line(out, "segment", &SegmentJson::from(&segment))?;
        }
        if let Some(problem) = &segment.problem {
            problem_count += 1;
            match format {
                Format::Human => writeln!(out, "{problem}")?,
                Format::Json => write_json_line(out, "problem", &ProblemJson::from(problem))?,
            }
        }
        last = Some(segment);
    }
    let marker = check_marker(fs, log, last.as_ref())?;
    let log_id = check_log_id(fs, log)?;
    for problem in marker.problem.iter().chain(&log_id.problem) {
        problem_count += 1;
        match format {
            Format::Human => writeln!(out, "{problem}")?,
            Format::Json => write_json_line(out, "problem", &ProblemJson::from(problem))?,
        }
    }
    match format {
        Format::Human => writeln!(out, "{}", human_summary(&totals, problem_count))?,
        Format::Json => write_json_line(
            out,
            "summary",
            &SummaryJson::new(
                &log.path.display().to_string(),
                &totals,
                problem_count,
                marker.state,
                log_id.state,
            ),
        )?,
    }
    out.flush().context("cannot write output")?;
    Ok(Verdict::from_problem_count(problem_count))
}
