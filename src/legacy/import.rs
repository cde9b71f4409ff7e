//! Import: the old bot's files into events, resumable and idempotent (see the module docs).

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::task::JoinSet;

use super::export::blocking;
use super::*;
use crate::error::{InputError, StoreError};
use crate::events::{
    ConversationAnalyzed, Event, JsonText, MessageReceived, MessageSent, ProfileCreated,
    ProfileFactsRecorded, ProfileLegacyStateImported, ProfileRenamed,
};
use crate::ids::{BotId, StreamId, StreamVersion, Timestamp};
use crate::projection::Direction;
use crate::store::{ExpectedVersion, NewEvent, ReadDirection, Store, APPEND_EVENTS_MAX};

/// The files of one chat.
#[derive(Debug, Clone)]
pub(super) struct ChatFiles {
    chat_id: i64,
    girls: Option<PathBuf>,
    conversation: Option<PathBuf>,
}

/// The parsed files of one chat.
#[derive(Debug)]
pub(super) struct ChatData {
    profile: Option<LegacyProfileFile>,
    messages: Vec<LegacyMessage>,
}

/// One event the import wants in the store.
#[derive(Debug, Clone)]
pub(super) struct Planned {
    key: String,
    event: Event,
    occurred_at: Option<Timestamp>,
    /// True when it comes from the conversation file (for reports).
    from_conversation: bool,
}

/// What a chat's stream holds already.
#[derive(Debug, Default)]
pub(super) struct StreamState {
    /// Its last event's version; `None`: no stream yet.
    version: Option<StreamVersion>,
    /// Idempotency keys of the chat's imported events.
    keys: HashSet<String>,
    /// The profile's name, if a profile exists.
    name: Option<String>,
}

/// What importing one chat did.
#[derive(Debug, Default)]
pub(super) struct ChatOutcome {
    appended: u64,
    already: u64,
    failures: Vec<ImportFailure>,
}

/// The prefix of every idempotency key the import gives a chat's events:
/// `legacy:{bot}:{chat_id}:`. Part of the stored data: changing it would import everything again.
pub fn legacy_key_prefix(bot: &BotId, chat_id: i64) -> String {
    format!("legacy:{bot}:{chat_id}:")
}

/// Imports the old bot's files into `bot`'s conversation streams (see the module docs for the
/// events, their order and keys). `progress` is called after each chat.
///
/// Files that cannot be imported are listed in the report with their reason; every other chat is
/// still imported.
///
/// # Errors
/// [`LegacyError::ReadDir`] if a directory given cannot be listed, [`LegacyError::Store`] if the
/// log fails. Chats imported before the error stay imported; a re-run resumes.
pub async fn import_legacy(
    store: &Store,
    bot: &BotId,
    girls_dir: Option<&Path>,
    conversations_dir: Option<&Path>,
    mut progress: impl FnMut(&ImportProgress),
) -> Result<ImportReport, LegacyError> {
    let girls_dir = girls_dir.map(Path::to_path_buf);
    let conversations_dir = conversations_dir.map(Path::to_path_buf);
    let (chats, listing) = blocking(move || {
        let mut chats = BTreeMap::new();
        let mut listing = Listing::default();
        if let Some(dir) = &girls_dir {
            list_chat_files(dir, false, &mut chats, &mut listing)?;
        }
        if let Some(dir) = &conversations_dir {
            list_chat_files(dir, true, &mut chats, &mut listing)?;
        }
        Ok::<_, LegacyError>((chats, listing))
    })
    .await??;

    let mut report = ImportReport {
        chats_found: chats.len() as u64,
        failures: listing.failures,
        files_skipped: listing.skipped,
        ..ImportReport::default()
    };
    // Every chat's key in one rewrite of the key store, not one per chat.
    let streams: Vec<StreamId> = chats
        .keys()
        .map(|chat| StreamId::conversation(bot, *chat))
        .collect();
    store
        .prepare_keys(&streams)
        .await
        .map_err(|source| LegacyError::Store {
            chat_id: None,
            source,
        })?;
    let mut done = 0u64;
    let mut pending = chats.into_values();
    let mut in_flight = JoinSet::new();
    loop {
        while in_flight.len() < IMPORT_CHATS_IN_FLIGHT_MAX {
            let Some(files) = pending.next() else { break };
            in_flight.spawn(import_chat(store.clone(), bot.clone(), files));
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        let (chat_id, outcome) = joined.map_err(|e| LegacyError::Task(e.to_string()))??;
        done += 1;
        report.events_appended += outcome.appended;
        report.events_already_imported += outcome.already;
        if !outcome.failures.is_empty() {
            report.chats_failed.push(chat_id);
            report.failures.extend(outcome.failures);
        } else if outcome.appended > 0 {
            report.chats_imported += 1;
        } else {
            report.chats_unchanged += 1;
        }
        progress(&ImportProgress {
            chats_done: done,
            chats_total: report.chats_found,
            events_appended: report.events_appended,
            events_already_imported: report.events_already_imported,
        });
    }
    report.chats_failed.sort_unstable();
    report.failures.sort_by(|a, b| a.path.cmp(&b.path));
    report.files_skipped.sort();
    Ok(report)
}

/// What listing the old directories found besides the chats' files.
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// Files that could not be looked at.
    failures: Vec<ImportFailure>,
    /// Files that are not `{chat_id}.json`: the old bot's `*.backup.*.json`, `*.tmp` files.
    skipped: Vec<PathBuf>,
}

/// Lists `dir`'s `{chat_id}.json` files into `chats`. Other files (the old bot leaves
/// `{chat_id}.backup.{date}.json` and `*.tmp` files behind) are listed as skipped, hidden files
/// (editor swap files, an export's temporary files) and directories are passed over.
pub(super) fn list_chat_files(
    dir: &Path,
    conversations: bool,
    chats: &mut BTreeMap<i64, ChatFiles>,
    listing: &mut Listing,
) -> Result<(), LegacyError> {
    let read_dir = |source| LegacyError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(read_dir)? {
        let entry = entry.map_err(read_dir)?;
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        match fs::metadata(&path) {
            Ok(metadata) if metadata.is_dir() => continue,
            Ok(_) => {}
            Err(error) => {
                listing.failures.push(ImportFailure {
                    path,
                    chat_id: None,
                    problem: FileProblem::Read(error),
                });
                continue;
            }
        }
        let Some(chat_id) = chat_id_from_file_name(&name) else {
            listing.skipped.push(path);
            continue;
        };
        let files = chats.entry(chat_id).or_insert_with(|| ChatFiles {
            chat_id,
            girls: None,
            conversation: None,
        });
        if conversations {
            files.conversation = Some(path);
        } else {
            files.girls = Some(path);
        }
    }
    Ok(())
}

/// The chat id of a `{chat_id}.json` name, written as the old bot writes it (so `0123.json` and
/// `+123.json` cannot pose as a second file of chat 123).
pub(super) fn chat_id_from_file_name(name: &OsStr) -> Option<i64> {
    let stem = name.to_str()?.strip_suffix(".json")?;
    let chat_id: i64 = stem.parse().ok()?;
    (chat_id.to_string() == stem).then_some(chat_id)
}

pub(super) fn json_problem(error: serde_json::Error) -> FileProblem {
    match error.classify() {
        serde_json::error::Category::Data => FileProblem::Format(error),
        _ => FileProblem::InvalidJson(error),
    }
}

pub(super) fn read_profile_file(
    path: &Path,
    chat_id: i64,
) -> Result<LegacyProfileFile, FileProblem> {
    let bytes = fs::read(path).map_err(FileProblem::Read)?;
    let file: LegacyProfileFile = serde_json::from_slice(&bytes).map_err(json_problem)?;
    if file.chat_id != chat_id {
        return Err(FileProblem::ChatIdMismatch {
            in_file: file.chat_id,
            in_name: chat_id,
        });
    }
    if let Some((snapshot_id, _)) = file.profile.iter().find(|(_, facts)| !facts.is_object()) {
        return Err(FileProblem::FactsNotObject {
            snapshot_id: snapshot_id.clone(),
        });
    }
    Ok(file)
}

pub(super) fn read_conversation_file(path: &Path) -> Result<Vec<LegacyMessage>, FileProblem> {
    let bytes = fs::read(path).map_err(FileProblem::Read)?;
    serde_json::from_slice(&bytes).map_err(json_problem)
}

/// Reads and checks both files of a chat; every malformed one is reported.
pub(super) fn read_chat(files: &ChatFiles) -> Result<ChatData, Vec<ImportFailure>> {
    let failure = |path: &Path, problem| ImportFailure {
        path: path.to_path_buf(),
        chat_id: Some(files.chat_id),
        problem,
    };
    let mut failures = Vec::new();
    let profile = match &files.girls {
        Some(path) => match read_profile_file(path, files.chat_id) {
            Ok(profile) => Some(profile),
            Err(problem) => {
                failures.push(failure(path, problem));
                None
            }
        },
        None => None,
    };
    let messages = match &files.conversation {
        Some(path) => read_conversation_file(path).unwrap_or_else(|problem| {
            failures.push(failure(path, problem));
            Vec::new()
        }),
        None => Vec::new(),
    };
    if failures.is_empty() {
        Ok(ChatData { profile, messages })
    } else {
        Err(failures)
    }
}

/// Imports one chat. `Err` only when the store fails; everything about the chat's files is in the
/// outcome.
pub(super) async fn import_chat(
    store: Store,
    bot: BotId,
    files: ChatFiles,
) -> Result<(i64, ChatOutcome), LegacyError> {
    let chat_id = files.chat_id;
    let read_files = files.clone();
    let data = match blocking(move || read_chat(&read_files)).await? {
        Ok(data) => data,
        Err(failures) => {
            return Ok((
                chat_id,
                ChatOutcome {
                    failures,
                    ..ChatOutcome::default()
                },
            ))
        }
    };
    let stream = StreamId::conversation(&bot, chat_id);
    let prefix = legacy_key_prefix(&bot, chat_id);
    let fatal = |source| LegacyError::Store {
        chat_id: Some(chat_id),
        source,
    };
    let failed = |from_conversation: Option<bool>, problem| {
        let path = match (from_conversation, &files.girls, &files.conversation) {
            (Some(true), _, Some(conversation)) | (_, None, Some(conversation)) => conversation,
            (_, Some(girls), _) => girls,
            (_, None, None) => unreachable!("a chat is listed because one of its files exists"),
        };
        ImportFailure {
            path: path.clone(),
            chat_id: Some(chat_id),
            problem,
        }
    };
    let mut outcome = ChatOutcome::default();
    for _attempt in 0..APPEND_ATTEMPTS_MAX {
        let state = read_stream_state(&store, &stream, &prefix)
            .await
            .map_err(fatal)?;
        let planned = plan_chat(&prefix, &data, &state);
        let planned_len = planned.len() as u64;
        let missing: Vec<Planned> = planned
            .into_iter()
            .filter(|p| !state.keys.contains(&p.key))
            .collect();
        let mut version = state.version;
        let mut conflict = false;
        for chunk in missing.chunks(APPEND_EVENTS_MAX) {
            let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            let events = chunk
                .iter()
                .map(|p| {
                    let event = NewEvent::new(p.event.clone()).with_key(p.key.clone());
                    match p.occurred_at {
                        Some(at) => event.at(at),
                        None => event,
                    }
                })
                .collect();
            match store.append(&stream, expected, events).await {
                Ok(result) => {
                    let first_version = version.map_or(0, |v| v.0 + 1);
                    if result.stream_version.0 != first_version + chunk.len() as u64 - 1 {
                        // The store gave back the result of an earlier append: a key of this
                        // chunk is recorded, but not on this stream.
                        outcome.failures.push(failed(
                            None,
                            FileProblem::KeyRecordedElsewhere {
                                stream: stream.clone(),
                            },
                        ));
                        return Ok((chat_id, outcome));
                    }
                    version = Some(result.stream_version);
                    outcome.appended += chunk.len() as u64;
                }
                Err(StoreError::WrongExpectedVersion { .. }) => {
                    conflict = true;
                    break;
                }
                Err(StoreError::Input(error)) => {
                    let from_conversation = match &error {
                        InputError::EventTooLarge { index, .. } => {
                            chunk.get(*index).map(|p| p.from_conversation)
                        }
                        _ => None,
                    };
                    outcome
                        .failures
                        .push(failed(from_conversation, FileProblem::Refused(error)));
                    return Ok((chat_id, outcome));
                }
                Err(other) => return Err(fatal(other)),
            }
        }
        if !conflict {
            outcome.already = planned_len.saturating_sub(outcome.appended);
            return Ok((chat_id, outcome));
        }
    }
    outcome.failures.push(failed(
        None,
        FileProblem::StreamBusy {
            stream: stream.clone(),
        },
    ));
    Ok((chat_id, outcome))
}

/// Reads the chat's stream: its version, the import's keys recorded in it, the profile's name.
pub(super) async fn read_stream_state(
    store: &Store,
    stream: &StreamId,
    prefix: &str,
) -> Result<StreamState, StoreError> {
    let events = store
        .read_stream(stream, StreamVersion(0), ReadDirection::Forward, usize::MAX)
        .await?;
    let mut state = StreamState::default();
    for recorded in events {
        state.version = Some(recorded.stream_version);
        match recorded.event {
            Event::ProfileCreated(e) => state.name = Some(e.name),
            Event::ProfileRenamed(e) if state.name.is_some() => state.name = Some(e.name),
            Event::ProfileDeleted(_) => state.name = None,
            _ => {}
        }
        if let Some(key) = recorded.idempotency_key {
            if key.starts_with(prefix) {
                state.keys.insert(key);
            }
        }
    }
    Ok(state)
}

/// Every event of the chat, in order, with its key (see the module docs); the caller appends the
/// ones whose key `stream` does not hold yet.
pub(super) fn plan_chat(prefix: &str, data: &ChatData, stream: &StreamState) -> Vec<Planned> {
    let mut planned = Vec::new();
    let mut push =
        |key: String, event: Event, occurred_at: Option<Timestamp>, from_conversation: bool| {
            planned.push(Planned {
                key,
                event,
                occurred_at,
                from_conversation,
            });
        };
    if let Some(profile) = &data.profile {
        let created_key = format!("{prefix}profile");
        // A profile the stream already has (e.g. created by the live bot) is kept: creating it
        // again would drop its facts and summaries.
        if stream.keys.contains(&created_key) || stream.name.is_none() {
            let name = profile.name.clone();
            push(
                created_key,
                Event::ProfileCreated(ProfileCreated { name }),
                None,
                false,
            );
        }
        if stream.name.as_ref().is_some_and(|n| *n != profile.name) {
            // The stream version makes the key new for each rename, even back to an old name.
            let version = stream.version.map_or(0, |v| v.0);
            let key = format!("{prefix}rename:{version}:{}", digest_str(&profile.name));
            let name = profile.name.clone();
            push(
                key,
                Event::ProfileRenamed(ProfileRenamed { name }),
                None,
                false,
            );
        }
        for (snapshot_id, facts) in &profile.profile {
            let mut digest = Fnv1a::new();
            digest.write_json(facts);
            let key = format!("{prefix}fact:{}:{digest}", key_id(snapshot_id));
            let event = Event::ProfileFactsRecorded(ProfileFactsRecorded {
                snapshot_id: snapshot_id.clone(),
                facts: JsonText::from_value(facts),
            });
            push(key, event, None, false);
        }
        for (analysis_id, summary) in &profile.summary {
            let key = format!(
                "{prefix}summary:{}:{}",
                key_id(analysis_id),
                digest_str(summary)
            );
            let event = Event::ConversationAnalyzed(ConversationAnalyzed {
                analysis_id: analysis_id.clone(),
                summary: summary.clone(),
            });
            push(key, event, None, false);
        }
    }
    for (index, message) in data.messages.iter().enumerate() {
        let key = format!("{prefix}msg:{index}");
        let legacy_ts = Some(JsonText::from_value(&message.ts));
        let event = match message.direction {
            Direction::In => Event::MessageReceived(MessageReceived {
                telegram_message_id: None,
                text: message.text.to_string(),
                content_type: "text".to_owned(),
                legacy_ts,
            }),
            Direction::Out => Event::MessageSent(MessageSent {
                text: message.text.to_string(),
                kind: "reply".to_owned(),
                generation: None,
                legacy_ts,
            }),
        };
        push(key, event, legacy_time(&message.ts), true);
    }
    if let Some(profile) = &data.profile {
        let mut digest = Fnv1a::new();
        digest.write_str(&profile.name);
        digest.write_json(profile.last_activity.as_ref().unwrap_or(&Value::Null));
        digest.write(&profile.message_count.to_le_bytes());
        match &profile.previous_response_id {
            Some(id) => digest.write_str(id),
            None => digest.write(b"-"),
        }
        // Only what comes from the files: whether the profile is created or renamed depends on
        // the stream, and would make the state look new on the run after a rename.
        let from_files = planned
            .iter()
            .filter(|p| !matches!(p.event, Event::ProfileCreated(_) | Event::ProfileRenamed(_)));
        for p in from_files {
            digest.write_str(&p.key);
        }
        planned.push(Planned {
            key: format!("{prefix}state:{digest}"),
            event: Event::ProfileLegacyStateImported(ProfileLegacyStateImported {
                last_activity: profile.last_activity.as_ref().map(JsonText::from_value),
                message_count: profile.message_count,
                previous_response_id: profile.previous_response_id.clone(),
            }),
            occurred_at: profile.last_activity.as_ref().and_then(legacy_time),
            from_conversation: false,
        });
    }
    planned
}

/// An entry id as it appears in a key: as is when short, else `#` and its digest.
pub(super) fn key_id(id: &str) -> String {
    if id.len() <= KEY_ID_LEN_MAX {
        id.to_owned()
    } else {
        format!("#{}", digest_str(id))
    }
}

pub(super) fn digest_str(text: &str) -> Fnv1a {
    let mut digest = Fnv1a::new();
    digest.write_str(text);
    digest
}

/// FNV-1a (64 bit): the digest in idempotency keys. It must never change (a key computed
/// differently would import an entry twice), so it is spelled out here rather than taken from
/// std's hashers, whose output may change between Rust releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Fnv1a {
        Fnv1a(Self::OFFSET_BASIS)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// A length-prefixed string, so that concatenations cannot collide (`ab`+`c` vs `a`+`bc`).
    fn write_str(&mut self, text: &str) {
        self.write(&(text.len() as u64).to_le_bytes());
        self.write(text.as_bytes());
    }

    /// A JSON value, objects with their keys sorted: the digest does not depend on the key order
    /// of the file (nor on whether serde_json keeps insertion order).
    fn write_json(&mut self, value: &Value) {
        match value {
            Value::Null => self.write(b"n"),
            Value::Bool(true) => self.write(b"t"),
            Value::Bool(false) => self.write(b"f"),
            Value::Number(number) => {
                self.write(b"#");
                self.write_str(&number.to_string());
            }
            Value::String(text) => {
                self.write(b"s");
                self.write_str(text);
            }
            Value::Array(items) => {
                self.write(b"[");
                self.write(&(items.len() as u64).to_le_bytes());
                for item in items {
                    self.write_json(item);
                }
            }
            Value::Object(members) => {
                self.write(b"{");
                self.write(&(members.len() as u64).to_le_bytes());
                let mut sorted: Vec<_> = members.iter().collect();
                sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (name, member) in sorted {
                    self.write_str(name);
                    self.write_json(member);
                }
            }
        }
    }
}

impl fmt::Display for Fnv1a {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::fs;

    use super::super::time::*;
    use super::*;
    use crate::ids::{BotId, BOT_ID_LEN_MAX};
    use serde_json::json;

    /// Proves the key digest is FNV-1a 64 and stays so: keys already in logs depend on it.
    #[test]
    fn digest_is_stable() {
        let mut digest = Fnv1a::new();
        digest.write(b"a");
        assert_eq!(digest.0, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(digest_str("Анна").to_string(), "114bae88406637f5");
        let mut a = Fnv1a::new();
        a.write_json(&json!({"b": 1, "a": [true, null, "x"]}));
        let mut b = Fnv1a::new();
        b.write_json(&serde_json::from_str(r#"{"a":[true,null,"x"],"b":1}"#).unwrap());
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "da83b6531d89259e");
    }

    /// Proves numbers are seconds (integer or fraction) and strings RFC 3339, naive ones as UTC.
    #[test]
    fn legacy_times() {
        let at = |v: Value| legacy_time(&v).map(|t| t.0);
        assert_eq!(at(json!(1_732_470_000.123)), Some(1_732_470_000_123));
        assert_eq!(at(json!(1_732_470_000)), Some(1_732_470_000_000));
        assert_eq!(at(json!(-1.5)), Some(-1500));
        assert_eq!(at(json!("2024-11-24T18:00:00Z")), Some(1_732_471_200_000));
        assert_eq!(
            at(json!("2024-11-24T21:00:00+03:00")),
            Some(1_732_471_200_000)
        );
        assert_eq!(at(json!("2024-11-24 18:00:00.5")), Some(1_732_471_200_500));
        assert_eq!(
            at(json!("2024-11-24T18:00:00.123456-00:30")),
            Some(1_732_473_000_123)
        );
        for bad in [
            json!(null),
            json!(true),
            json!("yesterday"),
            json!("2024-02-30T00:00:00Z"),
            json!("2024-11-24T24:00:00Z"),
            json!("2024-11-24T18:00:00+3"),
            json!("2024-11-24T18:00:00.Z"),
            json!("+024-11-24T18:00:00Z"),
            json!("2024-11-24T18:00:00Zjunk"),
            json!("2024-11-24Tпривет"),
            json!(1e300),
            json!(u64::MAX),
        ] {
            assert_eq!(at(bad.clone()), None, "{bad}");
        }
    }

    /// Proves only canonical `{integer}.json` names are chat files.
    #[test]
    fn chat_file_names() {
        let id = |name: &str| chat_id_from_file_name(OsStr::new(name));
        assert_eq!(id("123.json"), Some(123));
        assert_eq!(id("-1001234.json"), Some(-1_001_234));
        for bad in [
            "0123.json",
            "+1.json",
            "1.json.tmp",
            "abc.json",
            "1.JSON",
            ".json",
        ] {
            assert_eq!(id(bad), None, "{bad}");
        }
    }

    /// Proves each kind of malformed girls file is refused with its own reason.
    #[test]
    fn malformed_profile_files() {
        let dir = tempfile::tempdir().unwrap();
        let problem = |body: &str| {
            let path = dir.path().join("7.json");
            fs::write(&path, body).unwrap();
            read_profile_file(&path, 7).unwrap_err()
        };
        let valid = r#""name":"Аня","last_activity":null,"message_count":1,"summary":{},"profile":{},"previous_response_id":null"#;
        assert!(matches!(problem("{"), FileProblem::InvalidJson(_)));
        assert!(matches!(
            problem(&format!(r#"{{"chat_id":8,{valid}}}"#)),
            FileProblem::ChatIdMismatch {
                in_file: 8,
                in_name: 7
            }
        ));
        assert!(matches!(
            problem(&format!(r#"{{"chat_id":"7",{valid}}}"#)),
            FileProblem::Format(_)
        ));
        assert!(matches!(
            problem(&format!(r#"{{"chat_id":7,{valid},"mood":"happy"}}"#)),
            FileProblem::Format(_)
        ));
        let facts = valid.replace(r#""profile":{}"#, r#""profile":{"s1":"likes cats"}"#);
        assert!(matches!(
            problem(&format!(r#"{{"chat_id":7,{facts}}}"#)),
            FileProblem::FactsNotObject { ref snapshot_id } if snapshot_id == "s1"
        ));
        let path = dir.path().join("7.json");
        fs::write(&path, format!(r#"{{"chat_id":7,{valid}}}"#)).unwrap();
        assert_eq!(read_profile_file(&path, 7).unwrap().name, "Аня");
    }

    /// Proves the longest key the importer can build fits the store's limit, long ids included.
    #[test]
    fn keys_fit_the_store_limit() {
        let bot = BotId::new("b".repeat(BOT_ID_LEN_MAX)).unwrap();
        let prefix = legacy_key_prefix(&bot, i64::MIN);
        let long_id = "я".repeat(100);
        let data = ChatData {
            profile: Some(LegacyProfileFile {
                chat_id: i64::MIN,
                name: "n".into(),
                last_activity: None,
                message_count: 0,
                summary: BTreeMap::from([(long_id.clone(), "s".into())]),
                profile: BTreeMap::from([("x".repeat(KEY_ID_LEN_MAX), json!({}))]),
                previous_response_id: None,
            }),
            messages: Vec::new(),
        };
        let planned = plan_chat(&prefix, &data, &StreamState::default());
        assert_eq!(planned.len(), 4);
        assert!(planned.iter().all(|p| p.key.len() <= KEY_LEN_MAX));
        assert!(planned[2].key.contains(":summary:#"), "{}", planned[2].key);
    }
}
