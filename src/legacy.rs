//! Import of the old bot's JSON files into events, and export of the profile projection back to
//! them (design §7: the way in, and the rollback path to the old bot).
//!
//! # The old layout
//! - `girls_data/{chat_id}.json`: `{"chat_id", "name", "last_activity", "message_count",
//!   "summary": {id: text}, "profile": {id: {facts}}, "previous_response_id"}`.
//! - `conversations/{chat_id}.json`: `[{"ts", "direction": "in" | "out", "text"}, …]`, oldest
//!   first; `ts` is seconds since the epoch (a number) or a date-time string.
//!
//! # Import, per chat (stream `conv-{bot}-{chat}`), in this order
//! 1. `ProfileCreated` (or `ProfileRenamed`, if a re-run finds the name changed), when a girls
//!    file exists.
//! 2. One `ProfileFactsRecorded` per `profile` entry, one `ConversationAnalyzed` per `summary`
//!    entry.
//! 3. One `MessageReceived` / `MessageSent` per conversation entry, with the original `ts` kept as
//!    `legacy_ts` and `occurred_at` taken from it ([`legacy_time`]).
//! 4. Last, `ProfileLegacyStateImported` with `last_activity`, `message_count` and
//!    `previous_response_id` exactly as in the file: it replaces the counters the message events
//!    bumped, so the projected document equals the file.
//!
//! A chat is imported whole or not at all as far as its files go: if either of its files is
//! malformed, the chat is skipped and the file is reported with its reason (a profile without its
//! messages is a state the old bot never had). Fix the file and run the import again.
//!
//! # Idempotency, and how a chat's events are grouped into appends
//! Every event carries a deterministic idempotency key, `legacy:{bot}:{chat}:{item}`
//! ([`legacy_key_prefix`]):
//! - `profile`; `rename:{stream version}:{digest of the name}`;
//! - `fact:{id}:{digest of the facts}` and `summary:{id}:{digest of the text}`: the digest makes
//!   an entry the old bot rewrote after a first import count as new (recorded again under the same
//!   id, it replaces the old one in the projection);
//! - `msg:{index}`: the old bot only ever appends to a conversation array;
//! - `state:{digest}`: over the counters, the name and the keys of the facts, summaries and
//!   messages, so the state is recorded again, and again last, whenever the files changed.
//!
//! The store deduplicates a whole append when *any* of its keys is known. One append per chat
//! holding every key would be atomic, but after the old bot added messages a re-run would get the
//! original result back for the whole batch and silently drop the new ones; a chat over
//! [`APPEND_EVENTS_MAX`] events needs several appends anyway. One append per event would resume
//! correctly but cost an fsync per event. So the importer first reads the chat's stream, learns
//! which of the chat's keys are recorded, and appends only the missing events, in order, in
//! appends of up to [`APPEND_EVENTS_MAX`], each expecting the stream's exact version. Hence:
//! 1. A re-run over unchanged files appends nothing: every key is known ("already imported").
//! 2. An import stopped between two appends of a chat resumes at the first missing event. The
//!    state event is in the last append, so it is present only if everything before it is.
//! 3. Files that grew since a first run (the old bot kept running until the cut-over) add only
//!    the new entries, then a new state event.
//! 4. A concurrent writer on the stream makes the exact-version append fail; the importer
//!    re-reads and re-plans the chat (a few times) instead of interleaving with it.
//!
//! Not carried over by a re-run: entries deleted from a file after a first import (no event
//! removes a fact or a summary) and edits to messages already imported.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use hybridstore_wal::Position;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::error::{InputError, StoreError};
use crate::events::{
    ConversationAnalyzed, Event, JsonText, MessageReceived, MessageSent, ProfileCreated,
    ProfileFactsRecorded, ProfileLegacyStateImported, ProfileRenamed,
};
use crate::ids::{BotId, StreamId, StreamVersion, Timestamp, BOT_ID_LEN_MAX};
use crate::projection::{Direction, MessageView, ProfileDocument};
use crate::store::{
    ExpectedVersion, NewEvent, ReadDirection, Store, APPEND_EVENTS_MAX, IDEMPOTENCY_KEY_LEN_MAX,
};

/// The old bot's directory of profile documents.
pub const GIRLS_DIR_NAME: &str = "girls_data";
/// The old bot's directory of conversation logs.
pub const CONVERSATIONS_DIR_NAME: &str = "conversations";

/// Chats imported concurrently: their appends share the log's group commit (one fsync for many
/// chats), which is most of an import's time.
pub const IMPORT_CHATS_IN_FLIGHT_MAX: usize = 16;

/// How often a chat is re-read and re-planned when another writer appends to its stream
/// meanwhile.
const APPEND_ATTEMPTS_MAX: u32 = 3;

/// The longest entry id kept as is in an idempotency key; longer ones are replaced by a digest.
const KEY_ID_LEN_MAX: usize = 64;

/// Text of the longest idempotency key the importer builds: `legacy:{bot}:{chat}:summary:{id}:{digest}`.
const KEY_LEN_MAX: usize = "legacy:".len()
    + BOT_ID_LEN_MAX
    + ":-9223372036854775808:".len()
    + "summary:".len()
    + KEY_ID_LEN_MAX
    + ":".len()
    + 16;
const _: () = assert!(KEY_LEN_MAX <= IDEMPOTENCY_KEY_LEN_MAX);

/// How an import or export could not run at all (as opposed to a file it could not import,
/// which is an [`ImportFailure`] in the report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LegacyError {
    /// A directory could not be listed.
    #[error("cannot read directory {}: {source}", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An export file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The store failed (the log, not the input): nothing more can be imported or exported.
    #[error("{}store: {source}", chat_id.map(|c| format!("chat {c}: ")).unwrap_or_default())]
    Store {
        /// The chat being worked on, if any.
        chat_id: Option<i64>,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// A background task failed (the runtime is shutting down).
    #[error("background task failed: {0}")]
    Task(String),
}

/// Why a file was not imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileProblem {
    /// The name is not `{chat_id}.json` with the chat id written as the old bot writes it.
    #[error("the name is not {{chat_id}}.json (a chat id like 12345 or -100123)")]
    BadName,
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Read(#[source] io::Error),
    /// Not JSON at all (truncated, garbage).
    #[error("invalid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// JSON, but not in the old bot's layout (missing field, wrong type, unknown field or
    /// direction). Unknown fields are refused rather than dropped: the export could not give
    /// them back.
    #[error("not in the old bot's format: {0}")]
    Format(#[source] serde_json::Error),
    /// The file's `chat_id` and its name disagree.
    #[error("chat_id {in_file} in the file disagrees with the file name's {in_name}")]
    ChatIdMismatch {
        /// The chat id inside the file.
        in_file: i64,
        /// The chat id of the file's name.
        in_name: i64,
    },
    /// A `profile` entry that is not a JSON object (facts must be one).
    #[error("profile entry {snapshot_id:?} is not a JSON object")]
    FactsNotObject {
        /// The entry's id.
        snapshot_id: String,
    },
    /// The store refused the chat's events (e.g. an event over the size limit); events of the
    /// chat appended before the refusal stay, and a re-run resumes after them.
    #[error("the store refused the chat's events: {0}")]
    Refused(#[source] InputError),
    /// One of the chat's idempotency keys is recorded on another stream, so the store would not
    /// append the events.
    #[error("an idempotency key of this chat is already recorded outside stream {stream}")]
    KeyRecordedElsewhere {
        /// The chat's stream.
        stream: StreamId,
    },
    /// Another writer kept appending to the chat's stream during the import.
    #[error("the stream {stream} kept changing during the import (another writer?); run the import again")]
    StreamBusy {
        /// The chat's stream.
        stream: StreamId,
    },
}

/// A file that was not imported, and why.
#[derive(Debug)]
pub struct ImportFailure {
    /// The file.
    pub path: PathBuf,
    /// Its chat, when the name says which.
    pub chat_id: Option<i64>,
    /// Why.
    pub problem: FileProblem,
}

impl fmt::Display for ImportFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)?;
        if let Some(chat_id) = self.chat_id {
            write!(f, " (chat {chat_id} not imported)")?;
        }
        Ok(())
    }
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Chats found: the union of both directories' `{chat_id}.json` files.
    pub chats_found: u64,
    /// Chats with at least one event appended by this run.
    pub chats_imported: u64,
    /// Chats whose every event was in the store already.
    pub chats_unchanged: u64,
    /// Chats not (or not wholly) imported, by chat id.
    pub chats_failed: Vec<i64>,
    /// Events appended by this run.
    pub events_appended: u64,
    /// Events that were in the store already (their idempotency key was recorded).
    pub events_already_imported: u64,
    /// Files not imported, by path.
    pub failures: Vec<ImportFailure>,
}

impl ImportReport {
    /// True when every file found was imported.
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chats: {} found, {} imported, {} already imported, {} failed; events: {} appended, {} already imported; files failed: {}",
            self.chats_found,
            self.chats_imported,
            self.chats_unchanged,
            self.chats_failed.len(),
            self.events_appended,
            self.events_already_imported,
            self.failures.len()
        )
    }
}

/// How far an import got; handed to the progress callback after each chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportProgress {
    /// Chats done (imported, unchanged or failed).
    pub chats_done: u64,
    /// Chats found.
    pub chats_total: u64,
    /// Events appended so far.
    pub events_appended: u64,
    /// Events found already imported so far.
    pub events_already_imported: u64,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportReport {
    /// `girls_data/{chat}.json` files written.
    pub profiles_written: u64,
    /// `conversations/{chat}.json` files written.
    pub conversations_written: u64,
    /// Messages in those files.
    pub messages_written: u64,
}

impl fmt::Display for ExportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {} profiles ({GIRLS_DIR_NAME}/) and {} conversations ({CONVERSATIONS_DIR_NAME}/) with {} messages",
            self.profiles_written, self.conversations_written, self.messages_written
        )
    }
}

/// `girls_data/{chat_id}.json`, as the old bot wrote it. Fields the old bot may not have written
/// yet default to null or empty.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyProfileFile {
    chat_id: i64,
    name: String,
    #[serde(default)]
    last_activity: Option<Value>,
    message_count: u64,
    #[serde(default)]
    summary: BTreeMap<String, String>,
    #[serde(default)]
    profile: BTreeMap<String, Value>,
    #[serde(default)]
    previous_response_id: Option<String>,
}

/// One entry of `conversations/{chat_id}.json`; also what the export writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyMessage {
    ts: Value,
    direction: Direction,
    text: String,
}

/// The files of one chat.
#[derive(Debug, Clone)]
struct ChatFiles {
    chat_id: i64,
    girls: Option<PathBuf>,
    conversation: Option<PathBuf>,
}

/// The parsed files of one chat.
#[derive(Debug)]
struct ChatData {
    profile: Option<LegacyProfileFile>,
    messages: Vec<LegacyMessage>,
}

/// One event the import wants in the store.
#[derive(Debug, Clone)]
struct Planned {
    key: String,
    event: Event,
    occurred_at: Option<Timestamp>,
    /// True when it comes from the conversation file (for reports).
    from_conversation: bool,
}

/// What a chat's stream holds already.
#[derive(Debug, Default)]
struct StreamState {
    /// Its last event's version; `None`: no stream yet.
    version: Option<StreamVersion>,
    /// Idempotency keys of the chat's imported events.
    keys: HashSet<String>,
    /// The profile's name, if a profile exists.
    name: Option<String>,
}

/// What importing one chat did.
#[derive(Debug, Default)]
struct ChatOutcome {
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
    let (chats, name_failures) = blocking(move || {
        let mut chats = BTreeMap::new();
        let mut failures = Vec::new();
        if let Some(dir) = &girls_dir {
            list_chat_files(dir, false, &mut chats, &mut failures)?;
        }
        if let Some(dir) = &conversations_dir {
            list_chat_files(dir, true, &mut chats, &mut failures)?;
        }
        Ok::<_, LegacyError>((chats, failures))
    })
    .await??;

    let mut report = ImportReport {
        chats_found: chats.len() as u64,
        failures: name_failures,
        ..ImportReport::default()
    };
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
    Ok(report)
}

/// Lists `dir`'s `{chat_id}.json` files into `chats`; other files are reported, hidden files
/// (editor swap files, an export's temporary files) and directories are skipped.
fn list_chat_files(
    dir: &Path,
    conversations: bool,
    chats: &mut BTreeMap<i64, ChatFiles>,
    failures: &mut Vec<ImportFailure>,
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
                failures.push(ImportFailure {
                    path,
                    chat_id: None,
                    problem: FileProblem::Read(error),
                });
                continue;
            }
        }
        let Some(chat_id) = chat_id_from_file_name(&name) else {
            failures.push(ImportFailure {
                path,
                chat_id: None,
                problem: FileProblem::BadName,
            });
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
fn chat_id_from_file_name(name: &OsStr) -> Option<i64> {
    let stem = name.to_str()?.strip_suffix(".json")?;
    let chat_id: i64 = stem.parse().ok()?;
    (chat_id.to_string() == stem).then_some(chat_id)
}

fn json_problem(error: serde_json::Error) -> FileProblem {
    match error.classify() {
        serde_json::error::Category::Data => FileProblem::Format(error),
        _ => FileProblem::InvalidJson(error),
    }
}

fn read_profile_file(path: &Path, chat_id: i64) -> Result<LegacyProfileFile, FileProblem> {
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

fn read_conversation_file(path: &Path) -> Result<Vec<LegacyMessage>, FileProblem> {
    let bytes = fs::read(path).map_err(FileProblem::Read)?;
    serde_json::from_slice(&bytes).map_err(json_problem)
}

/// Reads and checks both files of a chat; every malformed one is reported.
fn read_chat(files: &ChatFiles) -> Result<ChatData, Vec<ImportFailure>> {
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
async fn import_chat(
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
async fn read_stream_state(
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
fn plan_chat(prefix: &str, data: &ChatData, stream: &StreamState) -> Vec<Planned> {
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
fn key_id(id: &str) -> String {
    if id.len() <= KEY_ID_LEN_MAX {
        id.to_owned()
    } else {
        format!("#{}", digest_str(id))
    }
}

fn digest_str(text: &str) -> Fnv1a {
    let mut digest = Fnv1a::new();
    digest.write_str(text);
    digest
}

/// FNV-1a (64 bit): the digest in idempotency keys. It must never change (a key computed
/// differently would import an entry twice), so it is spelled out here rather than taken from
/// std's hashers, whose output may change between Rust releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fnv1a(u64);

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

/// Largest time accepted from a legacy file, in milliseconds either side of the epoch (the range
/// of JavaScript dates, ±275 760 years): beyond it a `ts` is garbage, not a time.
const LEGACY_TIME_ABS_MAX_MS: i64 = 8_640_000_000_000_000;

/// When a legacy `ts` (or `last_activity`) happened: a number is seconds since the epoch (the old
/// bot's `time.time()`, with or without a fraction); a string is RFC 3339, and a date-time
/// without a zone (Python's naive `isoformat()`) is taken as UTC. `None` for anything else, and
/// the importer then uses the time of the import.
pub fn legacy_time(ts: &Value) -> Option<Timestamp> {
    let ms = match ts {
        Value::Number(number) => match number.as_i64() {
            Some(seconds) => seconds.checked_mul(1000)?,
            None => {
                let ms = (number.as_f64()? * 1000.0).round();
                if !ms.is_finite() || ms.abs() > LEGACY_TIME_ABS_MAX_MS as f64 {
                    return None;
                }
                ms as i64
            }
        },
        Value::String(text) => parse_rfc3339(text)?.0,
        _ => return None,
    };
    (ms.abs() <= LEGACY_TIME_ABS_MAX_MS).then_some(Timestamp(ms))
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z|±HH:MM]`; no zone means UTC. Fractions beyond
/// milliseconds are cut.
fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let bytes = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = bytes.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    // The date: fixed width, checked byte by byte so that `parse_date` sees only digits.
    digits(0, 4)?;
    digits(5, 2)?;
    digits(8, 2)?;
    if bytes.get(4) != Some(&b'-') || bytes.get(7) != Some(&b'-') {
        return None;
    }
    let days = Timestamp::parse_date(text.get(..10)?)?;
    if !matches!(bytes.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if bytes.get(13) != Some(&b':') || bytes.get(16) != Some(&b':') {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Everything up to here is ASCII, so byte 19 is a char boundary.
    let mut rest = text.get(19..)?;
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        for (place, digit) in fraction.bytes().take(3).take(len).enumerate() {
            millis += i64::from(digit - b'0') * [100, 10, 1][place];
        }
        rest = &fraction[len..];
    }
    let offset_minutes = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let zone_at = text.len() - rest.len();
            let sign = match bytes.get(zone_at) {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            let (hours, minutes) = (digits(zone_at + 1, 2)?, digits(zone_at + 4, 2)?);
            if rest.len() != 6
                || bytes.get(zone_at + 3) != Some(&b':')
                || hours > 23
                || minutes > 59
            {
                return None;
            }
            sign * (hours * 60 + minutes)
        }
    };
    let seconds_of_day = hour * 3600 + minute * 60 + second;
    Some(Timestamp(
        days * 86_400_000 + seconds_of_day * 1000 + millis - offset_minutes * 60_000,
    ))
}

/// Writes `bot`'s profiles and conversations in the old bot's layout:
/// `out_dir/girls_data/{chat}.json` (the projected [`ProfileDocument`]) and
/// `out_dir/conversations/{chat}.json` (`[{ts, direction, text}]`, `ts` as imported, or seconds
/// since the epoch for messages the store recorded itself). Each file is replaced atomically
/// (written to a hidden temporary file, synced, renamed); files of other chats in `out_dir` are
/// left alone, so the old bot's own directory can be the target.
///
/// The export covers everything durable when it starts. A conversation file is written for every
/// chat that ever had a message (`[]` after its history was cleared), not for a profile alone.
///
/// # Errors
/// [`LegacyError::Write`] for a file or directory that cannot be written,
/// [`LegacyError::Store`] when the log cannot be read.
pub async fn export_legacy(
    store: &Store,
    bot: &BotId,
    out_dir: &Path,
) -> Result<ExportReport, LegacyError> {
    let store_error = |chat_id| {
        move |source| LegacyError::Store {
            chat_id: Some(chat_id),
            source,
        }
    };
    let end = store.durable_end();
    let min_position = end.0.checked_sub(1).map(Position);
    let (profiles, conversations) = store
        .read_projection(min_position, |p| {
            let profiles: Vec<ProfileDocument> = p.profiles(bot).into_values().cloned().collect();
            let conversations: Vec<(i64, u64)> = p
                .conversation_chats(bot)
                .into_iter()
                .filter_map(|chat_id| {
                    let head = p.conversation(bot, chat_id)?.head;
                    let count = head.messages_in + head.messages_out;
                    (count > 0).then_some((chat_id, count))
                })
                .collect();
            (profiles, conversations)
        })
        .await
        .map_err(|source| LegacyError::Store {
            chat_id: None,
            source,
        })?;

    let girls_dir = out_dir.join(GIRLS_DIR_NAME);
    let conversations_dir = out_dir.join(CONVERSATIONS_DIR_NAME);
    for dir in [&girls_dir, &conversations_dir] {
        let dir = dir.clone();
        blocking(move || {
            fs::create_dir_all(&dir).map_err(|source| LegacyError::Write { path: dir, source })
        })
        .await??;
    }
    let mut report = ExportReport::default();
    for document in profiles {
        let path = girls_dir.join(format!("{}.json", document.chat_id));
        write_json_atomic(path, &document).await?;
        report.profiles_written += 1;
    }
    for (chat_id, count) in conversations {
        let stream = StreamId::conversation(bot, chat_id);
        let limit = usize::try_from(count).unwrap_or(usize::MAX);
        let messages = store
            .last_messages(&stream, limit, min_position)
            .await
            .map_err(store_error(chat_id))?;
        let entries: Vec<LegacyMessage> = messages.into_iter().map(legacy_message).collect();
        report.messages_written += entries.len() as u64;
        let path = conversations_dir.join(format!("{chat_id}.json"));
        write_json_atomic(path, &entries).await?;
        report.conversations_written += 1;
    }
    for dir in [girls_dir, conversations_dir] {
        blocking(move || sync_dir(&dir).map_err(|source| LegacyError::Write { path: dir, source }))
            .await??;
    }
    Ok(report)
}

/// A message in the old layout: `ts` as imported, else seconds since the epoch.
fn legacy_message(message: MessageView) -> LegacyMessage {
    let ts = message
        .legacy_ts
        .unwrap_or_else(|| Value::from(message.at.0 as f64 / 1000.0));
    LegacyMessage {
        ts,
        direction: message.direction,
        text: message.text.to_string(),
    }
}

async fn write_json_atomic(path: PathBuf, value: &impl Serialize) -> Result<(), LegacyError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| LegacyError::Task(format!("encoding {}: {e}", path.display())))?;
    bytes.push(b'\n');
    blocking(move || {
        replace_file(&path, &bytes).map_err(|source| LegacyError::Write { path, source })
    })
    .await?
}

/// Replaces `path` with `bytes`: written to a hidden temporary file beside it, synced, renamed
/// over it. A crash leaves the old file or the new one, never a mix (the directory is synced once
/// at the end of the export).
fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LegacyError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LegacyError::Task(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
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
