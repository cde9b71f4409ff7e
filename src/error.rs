//! Errors of the store: bad input (nothing was appended), concurrency conflicts, log failures,
//! and records that cannot be decoded (reported with their position, never skipped).

use std::time::Duration;

use hybridstore_wal::Position;

use crate::events::DecodeError;
use crate::ids::{StreamId, StreamKind, StreamVersion};
use crate::store::ExpectedVersion;

/// Input the store refuses; nothing is appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// An erasure of a subject the log holds no event of.
    #[error("no such subject: the log holds no event of {subject}")]
    UnknownSubject {
        /// The subject.
        subject: String,
    },
    /// An erasure (or an erasure receipt) appended by a client: only the store writes them.
    #[error("event {index} ({event_type}) is the store's to write: erase a subject with `Store::erase` / `hybridstore erase` / the admin route (a `UserErased` without keys, appended directly, clears the projections only)")]
    ErasureKeysReserved {
        /// Which event.
        index: usize,
        /// Its type.
        event_type: &'static str,
    },
    /// A bot id that is empty, too long, or has characters other than `A-Z a-z 0-9 _`.
    #[error("invalid bot id {id:?}: 1 to 64 of A-Z a-z 0-9 _")]
    InvalidBotId {
        /// The id given.
        id: String,
    },
    /// A stream id that does not parse.
    #[error("invalid stream id {id:?}: {reason}")]
    InvalidStreamId {
        /// The id given (cut to a readable length).
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A component name that is not one of users, profiles, configuration, conversations,
    /// analytics.
    #[error("unknown component {name:?} (expected users, profiles, configuration, conversations or analytics)")]
    UnknownComponent {
        /// The name given.
        name: String,
    },
    /// An append with no events.
    #[error("an append needs at least one event")]
    EmptyAppend,
    /// Too many events in one append.
    #[error("an append of {count} events exceeds the maximum of {max}")]
    TooManyEvents {
        /// Events given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An event whose encoding exceeds the configured size limit.
    #[error("event #{index} ({event_type}) is {encoded_len} bytes encoded, over the limit of {max} bytes")]
    EventTooLarge {
        /// Index of the event in the append.
        index: usize,
        /// Its type.
        event_type: &'static str,
        /// Its encoded size.
        encoded_len: usize,
        /// The limit.
        max: usize,
    },
    /// An event appended to a stream of the wrong kind (e.g. a message to a user stream).
    #[error("{event_type} belongs on a {expected:?} stream, not on {stream}")]
    WrongStreamKind {
        /// The event's type.
        event_type: &'static str,
        /// The stream given.
        stream: StreamId,
        /// The kind it needs.
        expected: StreamKind,
    },
    /// An append whose events together do not fit in one log batch.
    #[error("the append's events are {encoded_len} bytes encoded, over the limit of {max} bytes for one append")]
    AppendTooLarge {
        /// Their encoded size.
        encoded_len: u64,
        /// The limit (half a log segment).
        max: u64,
    },
    /// An append whose event ids or idempotency keys were recorded only in part, by different
    /// appends, or for another stream.
    #[error("idempotency conflict: the append's event ids and keys do not all belong to one earlier append to this stream (reusing a key for different events is a client bug)")]
    IdempotencyConflict,
    /// An event whose encoding this build could not read back (e.g. JSON nested deeper than the
    /// decoder allows); refused so that the log never holds a record that stops the store.
    #[error("event #{index} cannot be read back once encoded: {reason}")]
    Unreadable {
        /// Index of the event in the append.
        index: usize,
        /// The decoder's complaint.
        reason: String,
    },
    /// An idempotency key over 256 bytes.
    #[error("idempotency key of {len} bytes exceeds 256 bytes")]
    IdempotencyKeyTooLong {
        /// Its length.
        len: usize,
    },
    /// The same event id or idempotency key twice in one append.
    #[error("event #{index} repeats an event id or idempotency key of the same append")]
    DuplicateInAppend {
        /// Index of the repeat.
        index: usize,
    },
    /// A JSON document where an object is required.
    #[error("{field} must be a JSON object")]
    NotAnObject {
        /// Which field.
        field: &'static str,
    },
}

/// Every way a store operation can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Bad input; nothing was appended.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Optimistic concurrency: the stream is not at the expected version.
    #[error("wrong expected version for {stream}: expected {expected:?}, actual {}", actual.map_or("no stream".to_owned(), |v| v.to_string()))]
    WrongExpectedVersion {
        /// The stream.
        stream: StreamId,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's actual last version (`None`: no stream).
        actual: Option<StreamVersion>,
    },
    /// The log failed (I/O, corruption, poisoned writer).
    #[error("log: {0}")]
    Log(#[from] hybridstore_wal::Error),
    /// The key store failed (damaged, another log's, a missing or wrong master key, I/O).
    #[error("key store: {0}")]
    KeyStore(crate::crypto::KeyStoreError),
    /// A record that does not decode as an event.
    #[error("record at position {position} cannot be decoded: {source}")]
    Decode {
        /// Where.
        position: Position,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// A read asked for `min_position` and the projection did not reach it in time.
    #[error(
        "the projection has applied up to {applied}, not {min_position}, after waiting {waited:?}"
    )]
    NotCaughtUp {
        /// The position asked for.
        min_position: Position,
        /// How far the projection got.
        applied: Position,
        /// How long the read waited.
        waited: Duration,
    },
    /// The projection stopped at a record it could not apply; reads that need newer events fail.
    #[error("the projection has stopped: {reason}")]
    ProjectionStopped {
        /// What stopped it.
        reason: String,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// A blocking task failed to run (the runtime is shutting down).
    #[error("background task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// Whether the log is damaged (a bad frame, a damaged `log-id`): `hybridstore-audit verify`
    /// and `repair` are the way on.
    pub fn is_corruption(&self) -> bool {
        matches!(self, StoreError::Log(error) if error.is_corruption())
    }
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An error and its causes on one line, each cause once: a cause whose text the line already
/// holds (an error that shows its source in its own message, as most here do) is not repeated.
/// What the binaries print after `error: `.
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = next.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves a cause shown in its error's own message is printed once, and one that is not is
    /// added.
    #[test]
    fn one_line_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotADirectory, "Not a directory");
        let wal = hybridstore_wal::Error::Io {
            op: "create directory",
            path: "/etc/passwd/x/wal".into(),
            source: io,
        };
        let store = StoreError::Log(wal);
        let line = one_line(&store);
        assert_eq!(line.matches("Not a directory").count(), 1, "{line}");
        assert!(line.starts_with("log: "), "{line}");
    }
}
