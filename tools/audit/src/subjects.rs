//! `subjects`: every subject of the log, a chat partner (`conv-{bot}-{chat}`) or a user
//! (`user-{bot}-{user}`), with its event counts and what became of its personal fields: sealed,
//! erased (sealed with a key an erasure destroyed), locked (sealed with a key not at hand), or
//! written in the clear, which no erasure can shred.
//!
//! One pass over every record, decoded with the store's codec
//! ([`hybridstore::events::decode_record_cached`]) through the key store beside the log
//! ([`LogDir::keyring`], non-strict), then the key store's own view of each subject
//! ([`hybridstore::crypto::Keyring::subjects`]). One entry per subject stream that has events in
//! the log, records that do not decode, or keys in the key store; sorted by the stream's text.
//!
//! What is counted for a subject ([`SubjectJson`]):
//! - `events`: every event on its stream that decodes (its erasure events included);
//!   `personal_events`: those of a type with personal fields
//!   ([`hybridstore::events::Event::has_personal_fields`]).
//! - `sealed`, `erased`, `locked`: events by their [`Personal`] state; `plaintext`: events with
//!   personal fields in the clear (written before sealing existed): readable in the log whatever
//!   erasure came after.
//! - `erasures`: the `ChatErased` and `UserErased` events touching it: those on its stream, and
//!   for a private chat (chat id = user id) its user's `UserErased`, which names the chat's key
//!   in `keys` (one of version 1, without keys, counts too: it dropped the private chat from the
//!   projections). An erasure naming a stream that has nothing in the log or the key store adds
//!   no entry. `erased_at`: the position of the last of them.
//! - `undecodable`: records of its stream whose envelope decodes but whose event does not (an
//!   unknown type, a damaged payload, sealed fields that do not open).
//! - `keys`: the key store's epochs for its stream (live, destroyed with the erasure's position,
//!   and the one new events are sealed with).
//!
//! `--bot` lists one bot's subjects (the totals are theirs too); the scan, and the count of
//! records that do not decode, is of the whole log either way.
//!
//! Verdict: [`Verdict::Problems`] when a record does not decode (each is counted, the first
//! [`UNDECODABLE_LISTED_MAX`] named on the diagnostic stream with the reason) or the frames have
//! a problem: like `dump`, the scan stops there, the problem goes to the diagnostic stream, and
//! what was read is listed, with `complete: false`. A key store that cannot be read (damaged,
//! another log's, wrapped without its master key) is an error: the counts would be wrong.
//! Read-only, no lock.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::io::{self, Write};

use anyhow::Context as _;
use hybridstore::crypto::{Keyring, SubjectKeyState};
use hybridstore::events::{
    decode_record_cached, ChatErased, Event, Personal, RecordedEvent, StoredEvent, StreamCache,
    UserErased,
};
use hybridstore::ids::{StreamId, StreamKind, Subject, SubjectKind};
use hybridstore_wal::format::Position;
use hybridstore_wal::io::FileSystem;
use hybridstore_wal::recovery::ScannedFrame;
use serde::Serialize;

use crate::check::{check_segment, LogDir};
use crate::output::{plural, write_json_line, ProblemJson};
use crate::{Format, Verdict};

/// Records that do not decode named on the diagnostic stream, at most; the rest are counted.
pub const UNDECODABLE_LISTED_MAX: usize = 10;

/// One subject (`{"type":"subject","data":{..}}`). Fields are a stable interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectJson {
    /// The subject's stream (`conv-{bot}-{chat}` or `user-{bot}-{user}`).
    pub stream: String,
    /// The bot.
    pub bot: String,
    /// `chat` or `user`.
    pub kind: &'static str,
    /// The chat id or user id.
    pub id: i64,
    /// Events on the stream that decode.
    pub events: u64,
    /// Of those, events of a type with personal fields.
    pub personal_events: u64,
    /// Events whose personal fields are sealed and open with the key store's key.
    pub sealed: u64,
    /// Events sealed with a key an erasure destroyed: their personal fields are gone.
    pub erased: u64,
    /// Events sealed with a key the key store does not hold (missing or older key store).
    pub locked: u64,
    /// Events with personal fields written in the clear: readable in the log, erasure or not.
    pub plaintext: u64,
    /// Records of the stream whose event does not decode.
    pub undecodable: u64,
    /// Erasure events touching the subject.
    pub erasures: u64,
    /// Position of the last of them.
    pub erased_at: Option<u64>,
    /// The key store's keys for the stream.
    pub keys: KeysJson,
}

/// A subject's keys in the key store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeysJson {
    /// Live epochs.
    pub live: Vec<u32>,
    /// Destroyed epochs.
    pub destroyed: Vec<DestroyedKeyJson>,
    /// The epoch new events are sealed with (none after an erasure, until the subject writes
    /// again).
    pub current: Option<u32>,
}

/// A destroyed key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestroyedKeyJson {
    /// Its epoch.
    pub epoch: u32,
    /// The position of the erasure that destroyed it.
    pub erased_at: u64,
}

impl From<&SubjectKeyState> for KeysJson {
    fn from(state: &SubjectKeyState) -> Self {
        KeysJson {
            live: state.live.clone(),
            destroyed: state
                .destroyed
                .iter()
                .map(|&(epoch, erased_at)| DestroyedKeyJson { epoch, erased_at })
                .collect(),
            current: state.current,
        }
    }
}

/// The closing summary (`{"type":"summary","data":{..}}`): totals over the subjects listed, and
/// what the scan of the log found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SubjectsSummaryJson {
    /// The log directory.
    pub dir: String,
    /// The `--bot` filter, if any.
    pub bot: Option<String>,
    /// Subjects listed.
    pub subjects: u64,
    /// Their events.
    pub events: u64,
    /// Their events with personal fields.
    pub personal_events: u64,
    /// Sealed (readable).
    pub sealed: u64,
    /// Erased.
    pub erased: u64,
    /// Locked.
    pub locked: u64,
    /// Personal fields in the clear.
    pub plaintext: u64,
    /// Erasure events on the streams of the bots listed (each once, though a user's touches two
    /// subjects).
    pub erasures: u64,
    /// Records scanned (the whole log's, whatever the filter).
    pub records: u64,
    /// Records of the log that do not decode as events.
    pub undecodable_records: u64,
    /// Position after the last record scanned.
    pub end_position: Option<u64>,
    /// False when a problem with the frames stopped the scan.
    pub complete: bool,
    /// Problems with the frames (0 or 1: the scan stops at the first).
    pub problem_count: u64,
    /// No problem and every record decodes.
    pub clean: bool,
}

/// Lists the subjects of `log` (only `bot`'s, if given) to `out`; problems and records that do
/// not decode go to `diagnostics`.
///
/// # Errors
/// When the key store or a segment cannot be read, or the output cannot be written.
pub fn subjects(
    fs: &dyn FileSystem,
    log: &LogDir,
    bot: Option<&str>,
    format: Format,
    out: &mut dyn Write,
    diagnostics: &mut dyn Write,
) -> anyhow::Result<Verdict> {
    let keys = log.keyring()?;
    let mut scan = Scan::new(&keys);
    let mut problem_count = 0;
    for index in 0..log.segments.len() {
        let segment = check_segment(fs, log, index, &mut |_, frame| scan.frame(frame))?;
        if let Some(problem) = &segment.problem {
            problem_count += 1;
            match format {
                Format::Human => writeln!(diagnostics, "{problem}")?,
                Format::Json => {
                    write_json_line(diagnostics, "problem", &ProblemJson::from(problem))?;
                }
            }
            break;
        }
    }
    for (position, error) in &scan.undecodable_listed {
        writeln!(
            diagnostics,
            "position={position}: does not decode as an event: {error}"
        )?;
    }
    if scan.undecodable > 0 {
        writeln!(
            diagnostics,
            "note: {} {} not decode as events (`dump` shows them)",
            scan.undecodable,
            plural(scan.undecodable, "record does", "records do"),
        )?;
    }
    let (rows, summary) = scan.finish(log, bot, problem_count);
    match format {
        Format::Json => {
            for row in &rows {
                write_json_line(out, "subject", row)?;
            }
            write_json_line(out, "summary", &summary)?;
        }
        Format::Human => write_human(&rows, &summary, out)?,
    }
    out.flush().context("cannot write output")?;
    Ok(if summary.clean {
        Verdict::Clean
    } else {
        Verdict::Problems
    })
}

/// What the scan has found so far.
struct Scan<'a> {
    keys: &'a Keyring,
    streams: StreamCache,
    /// Every subject stream seen, by its text (erasures may name streams without events; those
    /// are dropped at the end).
    subjects: BTreeMap<String, SubjectJson>,
    /// Erasure events by bot.
    erasures: BTreeMap<String, u64>,
    records: u64,
    end: Option<Position>,
    undecodable: u64,
    undecodable_listed: Vec<(u64, String)>,
}

impl<'a> Scan<'a> {
    fn new(keys: &'a Keyring) -> Scan<'a> {
        Scan {
            keys,
            streams: StreamCache::default(),
            subjects: BTreeMap::new(),
            erasures: BTreeMap::new(),
            records: 0,
            end: None,
            undecodable: 0,
            undecodable_listed: Vec::new(),
        }
    }

    fn frame(&mut self, scanned: ScannedFrame<'_>) {
        let mut position = scanned.frame.header.first_position;
        // The scanner verified the frame's structure before handing it over, so every record
        // decodes; `flatten` only drops errors that cannot occur.
        for payload in scanned.frame.records().flatten() {
            self.record(position, payload);
            position = position.advance(1);
        }
        self.end = Some(position);
    }

    fn record(&mut self, position: Position, payload: &[u8]) {
        self.records += 1;
        match decode_record_cached(position, payload, &mut self.streams, self.keys) {
            Ok(event) => self.event(&event),
            Err(error) => {
                self.undecodable += 1;
                if self.undecodable_listed.len() < UNDECODABLE_LISTED_MAX {
                    self.undecodable_listed
                        .push((position.0, error.to_string()));
                }
                // Whose record it is, when the envelope says.
                let stream = StoredEvent::decode(payload)
                    .ok()
                    .and_then(|stored| stored.stream.parse::<StreamId>().ok());
                if let Some(entry) = stream.and_then(|stream| self.entry(&stream)) {
                    entry.undecodable += 1;
                }
            }
        }
    }

    fn event(&mut self, event: &RecordedEvent) {
        let personal = event.event.has_personal_fields();
        if let Some(entry) = self.entry(&event.stream) {
            entry.events += 1;
            if personal {
                entry.personal_events += 1;
            }
            match event.personal {
                Personal::Clear if personal => entry.plaintext += 1,
                Personal::Clear => {}
                Personal::Sealed { .. } => entry.sealed += 1,
                Personal::Erased { .. } => entry.erased += 1,
                Personal::Locked { .. } => entry.locked += 1,
            }
        }
        if let Some(streams) = erased_streams(event) {
            *self
                .erasures
                .entry(event.bot_id.as_str().to_owned())
                .or_default() += 1;
            for stream in streams {
                if let Some(entry) = self.entry(&stream) {
                    entry.erasures += 1;
                    entry.erased_at = Some(event.position.0);
                }
            }
        }
    }

    /// The entry of `stream`, created empty; `None` for a stream that is not a subject's.
    fn entry(&mut self, stream: &StreamId) -> Option<&mut SubjectJson> {
        match self.subjects.entry(stream.to_string()) {
            Entry::Occupied(entry) => Some(entry.into_mut()),
            Entry::Vacant(entry) => Some(entry.insert(empty_row(stream)?)),
        }
    }

    /// Adds the key store's view, keeps the subjects with something in the log or the key
    /// store (of `bot`, if given), and adds them up.
    fn finish(
        mut self,
        log: &LogDir,
        bot: Option<&str>,
        problem_count: u64,
    ) -> (Vec<SubjectJson>, SubjectsSummaryJson) {
        for (stream, state) in self.keys.subjects() {
            // The key store names only subject streams; anything else is not listed.
            if let Some(entry) = stream
                .parse::<StreamId>()
                .ok()
                .and_then(|stream| self.entry(&stream))
            {
                entry.keys = KeysJson::from(&state);
            }
        }
        let rows: Vec<SubjectJson> = self
            .subjects
            .into_values()
            .filter(|s| {
                s.events > 0
                    || s.undecodable > 0
                    || !s.keys.live.is_empty()
                    || !s.keys.destroyed.is_empty()
            })
            .filter(|s| bot.is_none_or(|bot| s.bot == bot))
            .collect();
        let mut summary = SubjectsSummaryJson {
            dir: log.path.display().to_string(),
            bot: bot.map(str::to_owned),
            subjects: rows.len() as u64,
            erasures: self
                .erasures
                .iter()
                .filter(|(b, _)| bot.is_none_or(|bot| b.as_str() == bot))
                .map(|(_, count)| count)
                .sum(),
            records: self.records,
            undecodable_records: self.undecodable,
            end_position: self.end.map(|p| p.0),
            complete: problem_count == 0,
            problem_count,
            clean: problem_count == 0 && self.undecodable == 0,
            ..SubjectsSummaryJson::default()
        };
        for row in &rows {
            summary.events += row.events;
            summary.personal_events += row.personal_events;
            summary.sealed += row.sealed;
            summary.erased += row.erased;
            summary.locked += row.locked;
            summary.plaintext += row.plaintext;
        }
        (rows, summary)
    }
}

/// A row of nothing yet for `stream`; `None` for a stream that is not a subject's.
fn empty_row(stream: &StreamId) -> Option<SubjectJson> {
    let kind = match stream.kind() {
        StreamKind::Conversation => SubjectKind::Chat,
        StreamKind::User => SubjectKind::User,
        StreamKind::Bot | StreamKind::Telemetry => return None,
    };
    Some(SubjectJson {
        stream: stream.to_string(),
        bot: stream.bot_id().as_str().to_owned(),
        kind: kind.as_str(),
        id: stream.key()?,
        events: 0,
        personal_events: 0,
        sealed: 0,
        erased: 0,
        locked: 0,
        plaintext: 0,
        undecodable: 0,
        erasures: 0,
        erased_at: None,
        keys: KeysJson::default(),
    })
}

/// The subject streams an erasure event touches; `None` for any other event.
fn erased_streams(event: &RecordedEvent) -> Option<Vec<StreamId>> {
    let (mut streams, keys) = match &event.event {
        Event::ChatErased(ChatErased { keys }) => (vec![event.stream.clone()], keys),
        Event::UserErased(UserErased { keys }) => {
            // The user and their private chat, named in `keys` or not (version 1 had none).
            let streams = match (event.stream.kind(), event.stream.key()) {
                (StreamKind::User, Some(user_id)) => Subject::User {
                    bot: event.bot_id.clone(),
                    user_id,
                }
                .key_streams(),
                _ => vec![event.stream.clone()],
            };
            (streams, keys)
        }
        _ => return None,
    };
    streams.extend(keys.iter().filter_map(|key| key.stream.parse().ok()));
    streams.sort();
    streams.dedup();
    Some(streams)
}

/// What a subject's row says in a word or two: `erased`, `plaintext`, `locked`, `undecodable`
/// (comma-separated), or `-`.
fn status(row: &SubjectJson) -> String {
    let words: Vec<&str> = [
        (row.erasures > 0, "erased"),
        (row.plaintext > 0, "plaintext"),
        (row.locked > 0, "locked"),
        (row.undecodable > 0, "undecodable"),
    ]
    .into_iter()
    .filter_map(|(on, word)| on.then_some(word))
    .collect();
    if words.is_empty() {
        "-".to_owned()
    } else {
        words.join(",")
    }
}

/// The key store's keys for people: `live 2 destroyed 1@9` (epoch@erasure), or `-`.
fn keys_text(keys: &KeysJson) -> String {
    let join = |items: Vec<String>| items.join(",");
    let mut parts = Vec::new();
    if !keys.live.is_empty() {
        parts.push(format!(
            "live {}",
            join(keys.live.iter().map(u32::to_string).collect())
        ));
    }
    if !keys.destroyed.is_empty() {
        parts.push(format!(
            "destroyed {}",
            join(
                keys.destroyed
                    .iter()
                    .map(|d| format!("{}@{}", d.epoch, d.erased_at))
                    .collect()
            )
        ));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

const HEADER: [&str; 13] = [
    "stream",
    "kind",
    "events",
    "personal",
    "sealed",
    "erased",
    "locked",
    "plaintext",
    "erasures",
    "erased_at",
    "undecodable",
    "status",
    "keys",
];

/// Columns aligned to the left (the others are numbers, aligned to the right).
const LEFT: [usize; 4] = [0, 1, 11, 12];

fn write_human(
    rows: &[SubjectJson],
    summary: &SubjectsSummaryJson,
    out: &mut dyn Write,
) -> io::Result<()> {
    if !rows.is_empty() {
        let cells: Vec<[String; 13]> = rows
            .iter()
            .map(|row| {
                [
                    row.stream.clone(),
                    row.kind.to_owned(),
                    row.events.to_string(),
                    row.personal_events.to_string(),
                    row.sealed.to_string(),
                    row.erased.to_string(),
                    row.locked.to_string(),
                    row.plaintext.to_string(),
                    row.erasures.to_string(),
                    row.erased_at
                        .map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    row.undecodable.to_string(),
                    status(row),
                    keys_text(&row.keys),
                ]
            })
            .collect();
        let mut widths = HEADER.map(str::len);
        for row in &cells {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header = HEADER.map(str::to_owned);
        for row in std::iter::once(&header).chain(&cells) {
            writeln!(out, "{}", aligned(row, &widths))?;
        }
    }
    writeln!(out, "{}", human_totals(summary))
}

/// One row, each cell padded to its column's width (the last one not padded).
fn aligned(row: &[String; 13], widths: &[usize; 13]) -> String {
    let last = row.len() - 1;
    let mut line = String::new();
    for (index, (cell, &width)) in row.iter().zip(widths).enumerate() {
        if index > 0 {
            line.push_str("  ");
        }
        let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
        if LEFT.contains(&index) {
            line.push_str(cell);
            if index != last {
                line.push_str(&pad);
            }
        } else {
            line.push_str(&pad);
            line.push_str(cell);
        }
    }
    line
}

/// The totals line: `total: 4 subjects, 12 events (10 with personal fields: 4 sealed, 3
/// erased, 0 locked, 3 plaintext), 1 erasure`, with what made the scan incomplete or unclean.
fn human_totals(summary: &SubjectsSummaryJson) -> String {
    let mut line = format!(
        "total{}: {} {}, {} {} ({} with personal fields: {} sealed, {} erased, {} locked, {} plaintext), {} {}",
        summary
            .bot
            .as_ref()
            .map_or_else(String::new, |bot| format!(" of bot {bot}")),
        summary.subjects,
        plural(summary.subjects, "subject", "subjects"),
        summary.events,
        plural(summary.events, "event", "events"),
        summary.personal_events,
        summary.sealed,
        summary.erased,
        summary.locked,
        summary.plaintext,
        summary.erasures,
        plural(summary.erasures, "erasure", "erasures"),
    );
    if summary.undecodable_records > 0 {
        line.push_str(&format!(
            "; {} {} not decode",
            summary.undecodable_records,
            plural(summary.undecodable_records, "record does", "records do"),
        ));
    }
    if !summary.complete {
        line.push_str(&format!(
            "; incomplete: a problem with the frames stopped the scan at position {}",
            summary.end_position.unwrap_or(0)
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(stream: &str) -> SubjectJson {
        empty_row(&stream.parse().unwrap()).unwrap()
    }

    /// Proves only conversation and user streams are subjects, with their bot, kind and id.
    #[test]
    fn only_conversation_and_user_streams_are_subjects() {
        for stream in ["bot-b", "telemetry-b"] {
            assert!(empty_row(&stream.parse().unwrap()).is_none(), "{stream}");
        }
        let chat = row("conv-b-12");
        assert_eq!((chat.bot.as_str(), chat.kind, chat.id), ("b", "chat", 12));
        let user = row("user-b--5");
        assert_eq!((user.kind, user.id), ("user", -5));
    }

    /// Proves a user's erasure touches the user and their private chat (also without keys, as
    /// version 1 wrote it), a chat's only the chat, and other events none.
    #[test]
    fn erasures_touch_the_user_and_their_private_chat() {
        use hybridstore::events::{ErasedKey, HistoryCleared};
        use hybridstore::ids::{BotId, StreamVersion, Timestamp};
        let bot = BotId::new("b").unwrap();
        let event = |stream: StreamId, event: Event| RecordedEvent {
            position: Position(4),
            stream,
            stream_version: StreamVersion(0),
            batch_index: 0,
            batch_len: 1,
            event_id: uuid::Uuid::nil(),
            event_id_supplied: false,
            idempotency_key: None,
            recorded_at: Timestamp(0),
            occurred_at: Timestamp(0),
            schema_version: 1,
            bot_id: bot.clone(),
            event,
            personal: Personal::Clear,
        };
        let names = |streams: Option<Vec<StreamId>>| {
            streams.map(|s| s.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        let v1 = event(
            StreamId::user(&bot, 5),
            Event::UserErased(UserErased { keys: Vec::new() }),
        );
        assert_eq!(
            names(erased_streams(&v1)),
            Some(vec!["user-b-5".to_owned(), "conv-b-5".to_owned()])
        );
        let v2 = event(
            StreamId::user(&bot, 5),
            Event::UserErased(UserErased {
                keys: vec![
                    ErasedKey {
                        stream: "user-b-5".into(),
                        epoch: 1,
                    },
                    ErasedKey {
                        stream: "conv-b-5".into(),
                        epoch: 2,
                    },
                ],
            }),
        );
        assert_eq!(names(erased_streams(&v2)), names(erased_streams(&v1)));
        let chat = event(
            StreamId::conversation(&bot, 5),
            Event::ChatErased(ChatErased { keys: Vec::new() }),
        );
        assert_eq!(
            names(erased_streams(&chat)),
            Some(vec!["conv-b-5".to_owned()])
        );
        let other = event(
            StreamId::conversation(&bot, 5),
            Event::HistoryCleared(HistoryCleared {}),
        );
        assert_eq!(erased_streams(&other), None);
    }

    /// Proves the human table: a header, numbers aligned right, text left, no trailing blanks,
    /// and the key store's keys in a word.
    #[test]
    fn human_table_is_aligned() {
        let mut erased = row("conv-b-1");
        erased.events = 12;
        erased.erasures = 1;
        erased.erased_at = Some(11);
        erased.keys.destroyed.push(DestroyedKeyJson {
            epoch: 1,
            erased_at: 11,
        });
        let mut kept = row("user-b-7");
        kept.events = 1;
        kept.plaintext = 1;
        kept.keys.live = vec![1, 2];
        kept.keys.current = Some(2);
        let summary = SubjectsSummaryJson {
            subjects: 2,
            events: 13,
            erasures: 1,
            complete: true,
            clean: true,
            ..SubjectsSummaryJson::default()
        };
        let mut out = Vec::new();
        write_human(&[erased, kept], &summary, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "stream    kind  events  personal  sealed  erased  locked  plaintext  erasures  erased_at  undecodable  status     keys",
                "conv-b-1  chat      12         0       0       0       0          0         1         11            0  erased     destroyed 1@11",
                "user-b-7  user       1         0       0       0       0          1         0          -            0  plaintext  live 1,2",
                "total: 2 subjects, 13 events (0 with personal fields: 0 sealed, 0 erased, 0 locked, 0 plaintext), 1 erasure",
            ]
        );
    }
}
