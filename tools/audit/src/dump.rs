//! `dump`: prints records from a position on, one line each (JSON Lines with `--format json`).
//!
//! Each record is decoded as an event with the store's own codec
//! ([`hybridstore::events::decode_record`]) and printed as the event: in JSON the whole
//! [`hybridstore::events::RecordedEvent`] under `event`, beside the frame that holds the record;
//! for people, one line of position, stream, stream version, type and a short JSON of the data.
//! A record that does not decode (not an event, an unknown type, a schema version this build
//! cannot read) is printed with its `decode_error` and its bytes, never skipped, and does not
//! change the verdict: `dump` shows what is there, `verify` judges frames. `--raw` adds the bytes
//! (and, for people, the frame) to decoded records too.
//!
//! Records are decoded through the key store beside the log ([`LogDir::keyring`], non-strict),
//! so sealed personal fields show opened, and the ones that cannot be opened say why:
//! - JSON: `event.personal` is absent for an event in the clear (no personal fields, not on a
//!   subject's stream, or written before sealing existed), `{"state":"sealed","epoch":E}` for
//!   one opened with its key, `{"state":"erased","epoch":E,"erased_at":P,"fields":[..]}` for one
//!   sealed with a key the erasure at position P destroyed, and
//!   `{"state":"locked","epoch":E,"fields":[..]}` for one sealed with a key the key store does
//!   not hold (none beside the log, or an older one). `event.event` is the event as decoded: the
//!   fields named in `fields` hold the blanks the log holds (`""`, `null`), never placeholders.
//! - People: those fields show as `"<erased>"` or `"<locked>"` in the short data, and the line
//!   ends in `personal=erased erased_at=P` or `personal=locked`. (`fields` names every personal
//!   field of the type: an optional one that was empty shows as erased too.)
//!
//! Stops at the first problem with the frames: what was read is printed, the problem goes to the
//! diagnostic stream, and the verdict is [`Verdict::Problems`]. Read-only, no lock.

use std::io::{self, Write};

use anyhow::Context as _;
use hybridstore::events::{decode_record, Personal, RecordedEvent};
use hybridstore_wal::format::{Position, SegmentId};
use hybridstore_wal::io::FileSystem;
use hybridstore_wal::recovery::ScannedFrame;
use serde::Serialize;

use crate::check::{check_segment, LogDir};
use crate::output::{hex, write_json_line, ProblemJson};
use crate::{Format, Verdict};

/// Longest the human line's JSON of the event data gets before it is cut (with `…`).
pub const HUMAN_DATA_LEN_MAX: usize = 160;

/// Which events `find` prints (`dump` prints every record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// The events of one stream (`conv-girlbot-123`).
    Stream(String),
    /// The event with this id.
    EventId(uuid::Uuid),
    /// The events with this idempotency key; keys belong to a bot, so `bot` narrows it to one.
    Key {
        /// The key.
        key: String,
        /// Only this bot's events.
        bot: Option<String>,
    },
}

impl Filter {
    fn matches(&self, event: &RecordedEvent) -> bool {
        match self {
            Filter::Stream(stream) => event.stream.to_string() == *stream,
            Filter::EventId(id) => event.event_id == *id,
            Filter::Key { key, bot } => {
                event.idempotency_key.as_deref() == Some(key.as_str())
                    && bot.as_ref().is_none_or(|b| event.bot_id.as_str() == b)
            }
        }
    }
}

/// Which records `dump` prints, and how much of each.
#[derive(Debug, Clone, Default)]
pub struct DumpRange {
    /// First position to print (default: the first in the log).
    pub from: Option<Position>,
    /// Records to print at most (default: all).
    pub limit: Option<u64>,
    /// Print every record's bytes (and, in human lines, its frame), not only those that do not
    /// decode.
    pub raw: bool,
    /// Only the events this matches (`find`); records that do not decode cannot match and are
    /// counted on the diagnostic stream instead. `None`: every record (`dump`).
    pub filter: Option<Filter>,
}

/// One record as JSON (`{"type":"record","data":{..}}`). Fields are a stable interface: the
/// frame fields are always there; `event` or `decode_error` says what the bytes are.
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
    /// The decoded event (envelope and typed event), when the record decodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<RecordedEvent>,
    /// Why the record does not decode as an event (an unknown type is named here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_error: Option<String>,
    /// The payload as lowercase hex: with `--raw`, or when the record does not decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
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
    let keys = log.keyring()?;
    let from = range.from.unwrap_or_default();
    let finding = range.filter.is_some();
    let mut printer = Printer {
        from,
        remaining: range.limit.unwrap_or(u64::MAX),
        raw: range.raw,
        filter: range.filter,
        matched: 0,
        undecodable: 0,
        format,
        out,
        error: None,
        keys: &keys,
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
    if finding {
        if printer.undecodable > 0 {
            writeln!(
                diagnostics,
                "note: {} record(s) do not decode as events and could not be matched (`dump` shows them)",
                printer.undecodable
            )?;
        }
        // Like grep: nothing found is exit 1.
        if printer.matched == 0 {
            return Ok(Verdict::Problems);
        }
    }
    Ok(Verdict::Clean)
}

struct Printer<'a> {
    from: Position,
    remaining: u64,
    raw: bool,
    filter: Option<Filter>,
    /// Events the filter matched.
    matched: u64,
    /// Records that do not decode, so no filter can match them.
    undecodable: u64,
    format: Format,
    out: &'a mut dyn Write,
    /// The first write error; once set, nothing more is written.
    error: Option<io::Error>,
    /// Opens sealed personal fields (erased or locked ones show as such).
    keys: &'a hybridstore::crypto::Keyring,
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
                let decoded = decode_record(position, payload, self.keys);
                if let Some(filter) = &self.filter {
                    match &decoded {
                        Ok(event) if filter.matches(event) => self.matched += 1,
                        Ok(_) => {
                            position = position.advance(1);
                            continue;
                        }
                        Err(_) => {
                            self.undecodable += 1;
                            position = position.advance(1);
                            continue;
                        }
                    }
                }
                let raw = self.raw || decoded.is_err();
                let (event, decode_error) = match decoded {
                    Ok(event) => (Some(event), None),
                    Err(error) => (None, Some(error.to_string())),
                };
                let record = RecordJson {
                    position: position.0,
                    batch_first: header.first_position.0,
                    batch_records: header.record_count,
                    segment: segment.first_position().0,
                    frame_offset: scanned.offset,
                    length: payload.len() as u64,
                    body_crc: header.body_crc,
                    event,
                    decode_error,
                    payload_hex: (raw && self.format == Format::Json).then(|| hex(payload)),
                };
                if let Err(error) = self.print(&record, payload, raw) {
                    self.error = Some(error);
                }
                self.remaining -= 1;
            }
            position = position.advance(1);
        }
    }

    fn print(&mut self, record: &RecordJson, payload: &[u8], raw: bool) -> io::Result<()> {
        if self.format == Format::Json {
            return write_json_line(self.out, "record", record);
        }
        let mut line = format!("position={}", record.position);
        if let Some(event) = &record.event {
            line.push_str(&format!(
                " stream={} stream_version={} type={} data={}",
                event.stream,
                event.stream_version,
                event.event.type_name(),
                short_data_json(event)
            ));
            match &event.personal {
                Personal::Erased { erased_at, .. } => {
                    line.push_str(&format!(" personal=erased erased_at={erased_at}"));
                }
                Personal::Locked { .. } => line.push_str(" personal=locked"),
                Personal::Clear | Personal::Sealed { .. } => {}
            }
        }
        if raw {
            line.push_str(&format!(
                " segment={} frame_offset={} batch_first={} batch_records={} length={} body_crc={:#010x}",
                record.segment,
                record.frame_offset,
                record.batch_first,
                record.batch_records,
                record.length,
                record.body_crc,
            ));
            if let Some(error) = &record.decode_error {
                line.push_str(&format!(" decode_error={error:?}"));
            }
            line.push_str(&format!(" payload=\"{}\"", payload.escape_ascii()));
        }
        writeln!(self.out, "{line}")
    }
}

/// What the human line shows for a personal field that is erased.
pub const ERASED_PLACEHOLDER: &str = "<erased>";
/// What the human line shows for a personal field sealed with a key not at hand.
pub const LOCKED_PLACEHOLDER: &str = "<locked>";

/// The event's `data` as one line of JSON, cut to [`HUMAN_DATA_LEN_MAX`] characters; erased and
/// locked personal fields show as [`ERASED_PLACEHOLDER`] and [`LOCKED_PLACEHOLDER`], not as the
/// blanks the event holds (which read like an empty message).
fn short_data_json(event: &RecordedEvent) -> String {
    let mut data = serde_json::to_value(&event.event)
        .ok()
        .and_then(|mut tagged| tagged.get_mut("data").map(serde_json::Value::take))
        .unwrap_or(serde_json::Value::Null);
    let (fields, placeholder) = match &event.personal {
        Personal::Erased { fields, .. } => (fields.as_slice(), ERASED_PLACEHOLDER),
        Personal::Locked { fields, .. } => (fields.as_slice(), LOCKED_PLACEHOLDER),
        Personal::Clear | Personal::Sealed { .. } => (&[][..], ""),
    };
    for field in fields {
        // A field name is a path into the data: `text`, `identity.first_name`.
        let slot = field
            .split('.')
            .try_fold(&mut data, |value, key| value.get_mut(key));
        if let Some(slot) = slot {
            *slot = serde_json::Value::String(placeholder.to_owned());
        }
    }
    let text = data.to_string();
    match text.char_indices().nth(HUMAN_DATA_LEN_MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hybridstore::events::{Event, ProfileCreated, StoredEvent};
    use hybridstore::ids::{BotId, StreamId, StreamVersion, Timestamp};

    fn recorded(name: String) -> RecordedEvent {
        let bot = BotId::new("b").unwrap();
        let stored = StoredEvent::new(
            &StreamId::conversation(&bot, 7),
            StreamVersion(0),
            (0, 1),
            uuid_v7(),
            None,
            Timestamp(0),
            Timestamp(0),
            &Event::ProfileCreated(ProfileCreated { name }),
        )
        .unwrap();
        decode_record(
            Position(3),
            &stored.encode().unwrap(),
            &hybridstore::crypto::Keyring::keyless(),
        )
        .unwrap()
    }

    fn uuid_v7() -> uuid::Uuid {
        uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001)
    }

    /// Proves erased and locked personal fields show as placeholders in the human line's data
    /// (nested ones too), and every other field as it is.
    #[test]
    fn short_data_json_shows_erased_and_locked_fields() {
        let mut event = recorded(String::new());
        event.personal = Personal::Erased {
            epoch: 1,
            erased_at: 9,
            fields: vec!["name".into()],
        };
        assert_eq!(short_data_json(&event), r#"{"name":"<erased>"}"#);
        event.personal = Personal::Locked {
            epoch: 1,
            fields: vec!["name".into()],
        };
        assert_eq!(short_data_json(&event), r#"{"name":"<locked>"}"#);
        event.event = Event::UserRegistered(hybridstore::events::UserRegistered {
            identity: hybridstore::events::Identity::default(),
        });
        event.personal = Personal::Erased {
            epoch: 1,
            erased_at: 9,
            fields: vec!["identity.first_name".into(), "identity.last_name".into()],
        };
        let data: serde_json::Value = serde_json::from_str(&short_data_json(&event)).unwrap();
        assert_eq!(
            data["identity"],
            serde_json::json!({
                "username": null,
                "first_name": "<erased>",
                "last_name": "<erased>",
                "language_code": null,
            })
        );
    }

    /// Proves the human line's data is the event's `data` object, cut at a character boundary.
    #[test]
    fn short_data_json_is_the_data_cut_on_a_char_boundary() {
        assert_eq!(
            short_data_json(&recorded("Ann".into())),
            r#"{"name":"Ann"}"#
        );
        let long = short_data_json(&recorded("é".repeat(400)));
        assert_eq!(long.chars().count(), HUMAN_DATA_LEN_MAX + 1);
        assert!(
            long.starts_with(r#"{"name":"éé"#) && long.ends_with('…'),
            "{long}"
        );
    }
}
