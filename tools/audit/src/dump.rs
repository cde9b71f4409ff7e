//! `dump`: prints records from a position on, one line each (JSON Lines with `--format json`),
//! with the frame that holds them. Until an event codec exists the payload is shown as hex (JSON)
//! or escaped ASCII (human). Stops at the first problem: what was read is printed, the problem
//! goes to the diagnostic stream, and the verdict is [`Verdict::Problems`]. Read-only, no lock.

use std::io::{self, Write};

use anyhow::Context as _;
use hybridstore_wal::format::{Position, SegmentId};
use hybridstore_wal::io::FileSystem;
use hybridstore_wal::recovery::ScannedFrame;
use serde::Serialize;

use crate::check::{check_segment, LogDir};
use crate::output::{hex, write_json_line, ProblemJson};
use crate::{Format, Verdict};

/// Which records `dump` prints.
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpRange {
    /// First position to print (default: the first in the log).
    pub from: Option<Position>,
    /// Records to print at most (default: all).
    pub limit: Option<u64>,
}

/// One record as JSON (`{"type":"record","data":{..}}`).
#[derive(Debug, Clone, Serialize)]
pub struct RecordJson {
    /// The record's position.
    pub position: u64,
    /// First position of the frame (atomic batch) holding it.
    pub batch_first: u64,
    /// Records in that frame.
    pub batch_records: u32,
    /// The segment id (its first position).
    pub segment: u64,
    /// Offset of the frame in the segment file.
    pub frame_offset: u64,
    /// Length of the record's payload.
    pub length: u64,
    /// CRC-32 of the frame body.
    pub body_crc: u32,
    /// The payload as lowercase hex.
    pub payload_hex: String,
}

/// Prints the records of `log` in `range` to `out`; problems go to `diagnostics`.
///
/// # Errors
/// When a segment cannot be read or the output cannot be written (a broken pipe included: the
/// caller decides that one is not a failure).
pub fn dump(
    fs: &dyn FileSystem,
    log: &LogDir,
    range: DumpRange,
    format: Format,
    out: &mut dyn Write,
    diagnostics: &mut dyn Write,
) -> anyhow::Result<Verdict> {
    let from = range.from.unwrap_or_default();
    let mut printer = Printer {
        from,
        remaining: range.limit.unwrap_or(u64::MAX),
        format,
        out,
        error: None,
    };
    for index in 0..log.segments.len() {
        if printer.finished() {
            break;
        }
        // A segment whose successor starts at or below `from` holds nothing to print.
        if log
            .segments
            .get(index + 1)
            .is_some_and(|next| next.first_position() <= from)
        {
            continue;
        }
        let segment = check_segment(fs, log, index, &mut |id, frame| printer.frame(id, frame))?;
        if let Some(error) = printer.error.take() {
            return Err(error).context("cannot write output");
        }
        // A problem after the last record asked for is beyond what this dump reads.
        if let Some(problem) = segment.problem.as_ref().filter(|_| printer.remaining > 0) {
            printer.out.flush().context("cannot write output")?;
            match format {
                Format::Human => writeln!(diagnostics, "{problem}")?,
                Format::Json => {
                    write_json_line(diagnostics, "problem", &ProblemJson::from(problem))?;
                }
            }
            return Ok(Verdict::Problems);
        }
    }
    printer.out.flush().context("cannot write output")?;
    Ok(Verdict::Clean)
}

struct Printer<'a> {
    from: Position,
    remaining: u64,
    format: Format,
    out: &'a mut dyn Write,
    /// The first write error; once set, nothing more is written.
    error: Option<io::Error>,
}

impl Printer<'_> {
    fn finished(&self) -> bool {
        self.remaining == 0 || self.error.is_some()
    }

    fn frame(&mut self, segment: SegmentId, scanned: ScannedFrame<'_>) {
        let header = scanned.frame.header;
        if self.finished() || header.end_position() <= self.from {
            return;
        }
        let mut position = header.first_position;
        // The scanner verified the frame's structure before handing it over, so every record
        // decodes; `flatten` only drops errors that cannot occur.
        for payload in scanned.frame.records().flatten() {
            if position >= self.from && !self.finished() {
                let record = RecordJson {
                    position: position.0,
                    batch_first: header.first_position.0,
                    batch_records: header.record_count,
                    segment: segment.first_position().0,
                    frame_offset: scanned.offset,
                    length: payload.len() as u64,
                    body_crc: header.body_crc,
                    payload_hex: String::new(),
                };
                if let Err(error) = self.print(record, payload) {
                    self.error = Some(error);
                }
                self.remaining -= 1;
            }
            position = position.advance(1);
        }
    }

    fn print(&mut self, mut record: RecordJson, payload: &[u8]) -> io::Result<()> {
        match self.format {
            Format::Json => {
                record.payload_hex = hex(payload);
                write_json_line(self.out, "record", &record)
            }
            Format::Human => writeln!(
                self.out,
                "position={} segment={} frame_offset={} batch_first={} batch_records={} length={} body_crc={:#010x} payload=\"{}\"",
                record.position,
                record.segment,
                record.frame_offset,
                record.batch_first,
                record.batch_records,
                record.length,
                record.body_crc,
                payload.escape_ascii()
            ),
        }
    }
}
