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
//! [`APPEND_EVENTS_MAX`](crate::store::APPEND_EVENTS_MAX) events needs several appends anyway. One append per event would resume
//! correctly but cost an fsync per event. So the importer first reads the chat's stream, learns
//! which of the chat's keys are recorded, and appends only the missing events, in order, in
//! appends of up to [`APPEND_EVENTS_MAX`](crate::store::APPEND_EVENTS_MAX), each expecting the stream's exact version. Hence:
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

mod export;
mod import;
mod time;

pub use export::export_legacy;
pub use import::{import_legacy, legacy_key_prefix};
pub use time::legacy_time;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{InputError, StoreError};
use crate::ids::{StreamId, BOT_ID_LEN_MAX};
use crate::projection::Direction;
use crate::store::IDEMPOTENCY_KEY_LEN_MAX;

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
    /// Files whose name is not `{chat_id}.json` (the old bot's backups and temporary files),
    /// skipped: not failures.
    pub files_skipped: Vec<PathBuf>,
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
            "chats: {} found, {} imported, {} already imported, {} failed; events: {} appended, {} already imported; files failed: {}, skipped: {}",
            self.chats_found,
            self.chats_imported,
            self.chats_unchanged,
            self.chats_failed.len(),
            self.events_appended,
            self.events_already_imported,
            self.failures.len(),
            self.files_skipped.len()
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
