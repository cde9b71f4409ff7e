//! The event catalogue and its codec.
//!
//! # Encoding in the log
//! Each event is one log record: a postcard-encoded [`StoredEvent`] envelope whose `payload` is
//! the postcard encoding of the event's own struct at `schema_version`. Postcard's wire format is
//! specified and stable (<https://postcard.jamesmunns.com/wire-format>); it is not self-describing,
//! so the envelope names the event type as text: a reader that does not know a type reports it
//! with its position ([`DecodeError::UnknownEventType`]) instead of skipping it, and an older
//! `schema_version` is upcast to the current struct on read (see [`MessageReceivedV1`]).
//!
//! The envelope's first byte is its format: 2 (written now) ends with a `flags` byte
//! ([`FLAG_CLIENT_EVENT_ID`]); 1 ([`StoredEventV1`]) had no flags and is still read.
//!
//! JSON (for the HTTP API and the audit tool) is serde's: `{"type": "MessageReceived", "data": {…}}`,
//! with JSON documents embedded as JSON, not as strings.
//!
//! # Rules for changing an event
//! Never change a released payload struct. Add a new struct, bump the type's version in the
//! catalogue, keep the old struct, and add an upcaster arm to [`decode_payload`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::ids::{
    BotId, Component, MigrationState, StreamId, StreamKind, StreamVersion, Timestamp,
};
use hybridstore_wal::Position;

/// Version of the [`StoredEvent`] envelope layout written now. Format 1 ([`StoredEventV1`]) had
/// no `flags`; it is still read, with every event id taken as client-supplied.
pub const ENVELOPE_FORMAT: u8 = 2;

/// `flags` bit: the event id was supplied by the client (so a retry may carry it again). Ids the
/// store generated are never looked up, so only supplied ones go into the dedupe index.
pub const FLAG_CLIENT_EVENT_ID: u8 = 1;

/// A JSON document kept as its text (postcard cannot carry self-describing values); checked to be
/// valid JSON when built, shown as JSON (not as a string) in JSON output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(String);

impl JsonText {
    /// Wraps a JSON value.
    pub fn from_value(value: &serde_json::Value) -> JsonText {
        JsonText(value.to_string())
    }

    /// Parses and keeps `text`.
    ///
    /// # Errors
    /// If `text` is not valid JSON.
    pub fn parse(text: &str) -> Result<JsonText, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        Ok(JsonText::from_value(&value))
    }

    /// The JSON value.
    pub fn value(&self) -> serde_json::Value {
        // Built only from valid JSON (or decoded from a frame whose CRC vouched for it).
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            self.value().serialize(serializer)
        } else {
            serializer.serialize_str(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let value = serde_json::Value::deserialize(deserializer)?;
            Ok(JsonText::from_value(&value))
        } else {
            let text = String::deserialize(deserializer)?;
            JsonText::parse(&text).map_err(serde::de::Error::custom)
        }
    }
}

/// Identity fields of a Telegram user.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Identity {
    /// `@username`, without the `@`.
    pub username: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// IETF language tag Telegram reports.
    pub language_code: Option<String>,
}

/// A user started using the bot (stream `user-{bot}-{user}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegistered {
    /// Who they are.
    pub identity: Identity,
}
/// A user's Telegram identity changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserIdentityUpdated {
    /// The new identity.
    pub identity: Identity,
}
/// A user's settings changed: `settings` (a JSON object) is merged key by key; a `null` removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSettingsChanged {
    /// The changed keys.
    pub settings: JsonText,
}
/// The bot stops serving a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserBlocked {
    /// Why.
    pub reason: Option<String>,
}
/// The bot serves a blocked user again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUnblocked {}
/// A user asked to be forgotten: their user record, and the profile and conversation of their
/// private chat (chat id = user id), are removed from every projection. The log keeps the events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserErased {}

/// A chat partner's profile was created (stream `conv-{bot}-{chat}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileCreated {
    /// The partner's name.
    pub name: String,
}
/// The partner's name changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRenamed {
    /// The new name.
    pub name: String,
}
/// A snapshot of facts about the partner (the old bot's `profile{id→facts}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileFactsRecorded {
    /// The snapshot's id.
    pub snapshot_id: String,
    /// The facts: a JSON object.
    pub facts: JsonText,
}
/// An analysis of the conversation (the old bot's `summary{id→text}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationAnalyzed {
    /// The analysis id.
    pub analysis_id: String,
    /// The summary text.
    pub summary: String,
}
/// The profile was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileDeleted {}
/// Counters carried over from the old bot's JSON file at import; they replace the projection's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileLegacyStateImported {
    /// `last_activity` exactly as the old file had it.
    pub last_activity: Option<JsonText>,
    /// `message_count` as the old file had it.
    pub message_count: u64,
    /// `previous_response_id` as the old file had it.
    pub previous_response_id: Option<String>,
}

/// A message from the partner (stream `conv-{bot}-{chat}`), version 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageReceived {
    /// Telegram's message id, if known.
    pub telegram_message_id: Option<i64>,
    /// The text (or caption).
    pub text: String,
    /// `text`, `photo`, `voice`, `sticker`, …
    pub content_type: String,
    /// The `ts` of an imported message, exactly as the old file had it.
    pub legacy_ts: Option<JsonText>,
}

/// Version 1 of [`MessageReceived`] (no content type); upcast with `content_type = "text"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageReceivedV1 {
    /// Telegram's message id, if known.
    pub telegram_message_id: Option<i64>,
    /// The text.
    pub text: String,
    /// The `ts` of an imported message.
    pub legacy_ts: Option<JsonText>,
}

impl From<MessageReceivedV1> for MessageReceived {
    fn from(v1: MessageReceivedV1) -> MessageReceived {
        MessageReceived {
            telegram_message_id: v1.telegram_message_id,
            text: v1.text,
            content_type: "text".to_owned(),
            legacy_ts: v1.legacy_ts,
        }
    }
}

/// How a reply was generated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// The model.
    pub model: String,
    /// The provider's response id (the next request's `previous_response_id`).
    pub response_id: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
    /// Generation latency in milliseconds.
    pub latency_ms: u32,
}
/// A message the bot sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSent {
    /// The text.
    pub text: String,
    /// `reply`, `followup`, `greeting`, …
    pub kind: String,
    /// Present when an LLM wrote it.
    pub generation: Option<Generation>,
    /// The `ts` of an imported message, exactly as the old file had it.
    pub legacy_ts: Option<JsonText>,
}
/// The conversation history was cleared (the profile stays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryCleared {}
/// A follow-up message was scheduled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowupScheduled {
    /// The follow-up's id.
    pub followup_id: String,
    /// When it is due.
    pub due_at: Timestamp,
    /// What prompted it.
    pub reason: String,
}
/// A scheduled follow-up was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowupCancelled {
    /// The follow-up's id.
    pub followup_id: String,
}
/// A scheduled follow-up was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowupFired {
    /// The follow-up's id.
    pub followup_id: String,
}

/// A configuration value was set (stream `bot-{bot}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigValueSet {
    /// The scope, e.g. `global`, `chat:123`.
    pub scope: String,
    /// The key.
    pub key: String,
    /// The value.
    pub value: JsonText,
}
/// A configuration value was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigValueUnset {
    /// The scope.
    pub scope: String,
    /// The key.
    pub key: String,
}
/// A component moved to another migration state (design §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStateChanged {
    /// Which component.
    pub component: Component,
    /// Its state before.
    pub from: MigrationState,
    /// Its state after.
    pub to: MigrationState,
    /// Why.
    pub reason: String,
    /// True when the store changed it by itself (e.g. a rollback after Postgres failed).
    pub automatic: bool,
}
/// An analytics record with no domain event behind it (stream `telemetry-{bot}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalyticsRecorded {
    /// What happened, e.g. `llm_call`, `command`.
    pub kind: String,
    /// The user concerned, if any.
    pub user_id: Option<i64>,
    /// Details: a JSON object (`llm_call` reads `tokens`).
    pub properties: JsonText,
}

macro_rules! catalogue {
    ($( $variant:ident => $component:ident, $kind:ident, version $version:literal; )*) => {
        /// Every event type, with its payload.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "type", content = "data")]
        pub enum Event {
            $(
                #[allow(missing_docs)]
                $variant($variant),
            )*
        }

        impl Event {
            /// The type's name, as stored in the envelope.
            pub fn type_name(&self) -> &'static str {
                match self { $( Event::$variant(_) => stringify!($variant), )* }
            }

            /// The type's current schema version.
            pub fn schema_version(&self) -> u16 {
                match self { $( Event::$variant(_) => $version, )* }
            }

            /// The component the event belongs to.
            pub fn component(&self) -> Component {
                match self { $( Event::$variant(_) => Component::$component, )* }
            }

            /// The kind of stream the event must be appended to.
            pub fn stream_kind(&self) -> StreamKind {
                match self { $( Event::$variant(_) => StreamKind::$kind, )* }
            }

            fn encode_payload(&self) -> Result<Vec<u8>, postcard::Error> {
                match self { $( Event::$variant(payload) => postcard::to_stdvec(payload), )* }
            }

            /// Every type name with its current version (for docs and tests).
            pub const CATALOGUE: &'static [(&'static str, u16)] = &[ $( (stringify!($variant), $version), )* ];
        }

        fn decode_current(type_name: &str, bytes: &[u8]) -> Option<Result<Event, postcard::Error>> {
            match type_name {
                $( stringify!($variant) => Some(strict_from_bytes::<$variant>(bytes).map(Event::$variant)), )*
                _ => None,
            }
        }
    };
}

catalogue! {
    UserRegistered => Users, User, version 1;
    UserIdentityUpdated => Users, User, version 1;
    UserSettingsChanged => Users, User, version 1;
    UserBlocked => Users, User, version 1;
    UserUnblocked => Users, User, version 1;
    UserErased => Users, User, version 1;
    ProfileCreated => Profiles, Conversation, version 1;
    ProfileRenamed => Profiles, Conversation, version 1;
    ProfileFactsRecorded => Profiles, Conversation, version 1;
    ConversationAnalyzed => Profiles, Conversation, version 1;
    ProfileDeleted => Profiles, Conversation, version 1;
    ProfileLegacyStateImported => Profiles, Conversation, version 1;
    MessageReceived => Conversations, Conversation, version 2;
    MessageSent => Conversations, Conversation, version 1;
    HistoryCleared => Conversations, Conversation, version 1;
    FollowupScheduled => Conversations, Conversation, version 1;
    FollowupCancelled => Conversations, Conversation, version 1;
    FollowupFired => Conversations, Conversation, version 1;
    ConfigValueSet => Configuration, Bot, version 1;
    ConfigValueUnset => Configuration, Bot, version 1;
    ComponentStateChanged => Configuration, Bot, version 1;
    AnalyticsRecorded => Analytics, Telemetry, version 1;
}

fn strict_from_bytes<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

/// Decodes a payload of `type_name` at `schema_version`, upcasting older versions.
///
/// # Errors
/// [`DecodeError::UnknownEventType`], [`DecodeError::UnknownSchemaVersion`], or
/// [`DecodeError::Payload`].
pub fn decode_payload(
    type_name: &str,
    schema_version: u16,
    bytes: &[u8],
) -> Result<Event, DecodeError> {
    let current = Event::CATALOGUE
        .iter()
        .find(|(name, _)| *name == type_name)
        .map(|(_, v)| *v);
    let Some(current) = current else {
        return Err(DecodeError::UnknownEventType {
            type_name: type_name.to_owned(),
            schema_version,
        });
    };
    let payload = |e: postcard::Error| DecodeError::Payload {
        type_name: type_name.to_owned(),
        schema_version,
        reason: e.to_string(),
    };
    if schema_version == current {
        return decode_current(type_name, bytes)
            .expect("type is in the catalogue")
            .map_err(payload);
    }
    match (type_name, schema_version) {
        ("MessageReceived", 1) => strict_from_bytes::<MessageReceivedV1>(bytes)
            .map(|v1| Event::MessageReceived(v1.into()))
            .map_err(payload),
        _ => Err(DecodeError::UnknownSchemaVersion {
            type_name: type_name.to_owned(),
            schema_version,
            current,
        }),
    }
}

/// The envelope as stored in the log (postcard). Field order is part of the format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// [`ENVELOPE_FORMAT`].
    pub format: u8,
    /// The stream, as text.
    pub stream: String,
    /// Index of the event in its stream.
    pub stream_version: u64,
    /// Index of the event within the append that wrote it.
    pub batch_index: u32,
    /// Events in that append.
    pub batch_len: u32,
    /// UUIDv7 bytes.
    pub event_id: [u8; 16],
    /// Client-supplied key for idempotent retries.
    pub idempotency_key: Option<String>,
    /// When the store recorded it (ms since epoch).
    pub recorded_at: i64,
    /// When it happened (ms since epoch).
    pub occurred_at: i64,
    /// The bot.
    pub bot_id: String,
    /// The event type's name.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u16,
    /// The payload (postcard of the type's struct at `schema_version`). Encoded as bytes, which
    /// postcard writes exactly like a sequence of `u8` (length, then the bytes) but reads in one
    /// copy instead of byte by byte.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// [`FLAG_CLIENT_EVENT_ID`] (format 2 on).
    pub flags: u8,
}

/// The format-1 envelope: [`StoredEvent`] without `flags`. Read, never written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct StoredEventV1 {
    pub format: u8,
    pub stream: String,
    pub stream_version: u64,
    pub batch_index: u32,
    pub batch_len: u32,
    pub event_id: [u8; 16],
    pub idempotency_key: Option<String>,
    pub recorded_at: i64,
    pub occurred_at: i64,
    pub bot_id: String,
    pub event_type: String,
    pub schema_version: u16,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl StoredEventV1 {
    /// Encodes a format-1 envelope (for fixtures of the old format).
    ///
    /// # Errors
    /// Postcard's.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }
}

impl From<StoredEventV1> for StoredEvent {
    fn from(v1: StoredEventV1) -> StoredEvent {
        StoredEvent {
            format: v1.format,
            stream: v1.stream,
            stream_version: v1.stream_version,
            batch_index: v1.batch_index,
            batch_len: v1.batch_len,
            event_id: v1.event_id,
            idempotency_key: v1.idempotency_key,
            recorded_at: v1.recorded_at,
            occurred_at: v1.occurred_at,
            bot_id: v1.bot_id,
            event_type: v1.event_type,
            schema_version: v1.schema_version,
            payload: v1.payload,
            flags: FLAG_CLIENT_EVENT_ID,
        }
    }
}

/// An event as the store hands it out: the envelope (design §4) and the typed event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Position in the log.
    pub position: Position,
    /// The stream.
    pub stream: StreamId,
    /// Index in the stream.
    pub stream_version: StreamVersion,
    /// Index of the event within the append that wrote it (appends are atomic batches).
    pub batch_index: u32,
    /// Events in that append.
    pub batch_len: u32,
    /// UUIDv7, client-supplied for retries.
    pub event_id: Uuid,
    /// True when the client supplied `event_id` (only those are deduplicated).
    pub event_id_supplied: bool,
    /// Client-supplied idempotency key (e.g. Telegram chat id + message id + direction).
    pub idempotency_key: Option<String>,
    /// When the store recorded it.
    pub recorded_at: Timestamp,
    /// When it happened.
    pub occurred_at: Timestamp,
    /// The schema version the event was written with (before upcasting).
    pub schema_version: u16,
    /// The bot.
    pub bot_id: BotId,
    /// The event.
    pub event: Event,
}

/// Why a record could not be decoded into an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The envelope itself does not decode.
    #[error("bad envelope: {reason}")]
    Envelope {
        /// The decoder's message.
        reason: String,
    },
    /// An event type this build does not know (written by a newer version?).
    #[error("unknown event type {type_name:?} (schema version {schema_version}); upgrade hybridstore to read it")]
    UnknownEventType {
        /// The type's name.
        type_name: String,
        /// The version it was written with.
        schema_version: u16,
    },
    /// A known type at a schema version this build cannot read.
    #[error("{type_name} schema version {schema_version} is not readable by this build (current {current})")]
    UnknownSchemaVersion {
        /// The type.
        type_name: String,
        /// The version found.
        schema_version: u16,
        /// The version this build writes.
        current: u16,
    },
    /// The payload does not decode as its type.
    #[error("bad {type_name} v{schema_version} payload: {reason}")]
    Payload {
        /// The type.
        type_name: String,
        /// The version.
        schema_version: u16,
        /// The decoder's message.
        reason: String,
    },
}

impl StoredEvent {
    /// Builds the stored form of `event`.
    ///
    /// # Errors
    /// If postcard cannot encode the payload (never for the catalogue's types).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stream: &StreamId,
        stream_version: StreamVersion,
        (batch_index, batch_len): (u32, u32),
        event_id: Uuid,
        idempotency_key: Option<String>,
        recorded_at: Timestamp,
        occurred_at: Timestamp,
        event: &Event,
    ) -> Result<StoredEvent, postcard::Error> {
        Ok(StoredEvent {
            format: ENVELOPE_FORMAT,
            stream: stream.to_string(),
            stream_version: stream_version.0,
            batch_index,
            batch_len,
            event_id: *event_id.as_bytes(),
            idempotency_key,
            recorded_at: recorded_at.0,
            occurred_at: occurred_at.0,
            bot_id: stream.bot_id().to_string(),
            event_type: event.type_name().to_owned(),
            schema_version: event.schema_version(),
            payload: event.encode_payload()?,
            flags: 0,
        })
    }

    /// Encodes the envelope for the log.
    ///
    /// # Errors
    /// Never for well-formed envelopes; postcard's error otherwise.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    /// Decodes an envelope from a log record (the payload is not decoded yet).
    ///
    /// # Errors
    /// [`DecodeError::Envelope`] for bytes that are not an envelope.
    pub fn decode(bytes: &[u8]) -> Result<StoredEvent, DecodeError> {
        let envelope = |e: postcard::Error| DecodeError::Envelope {
            reason: e.to_string(),
        };
        match bytes.first() {
            Some(1) => Ok(strict_from_bytes::<StoredEventV1>(bytes)
                .map_err(envelope)?
                .into()),
            Some(&ENVELOPE_FORMAT) => strict_from_bytes(bytes).map_err(envelope),
            Some(other) => Err(DecodeError::Envelope {
                reason: format!(
                    "envelope format {other} (this build reads 1 and {ENVELOPE_FORMAT})"
                ),
            }),
            None => Err(DecodeError::Envelope {
                reason: "empty record".into(),
            }),
        }
    }

    /// Like [`StoredEvent::into_recorded`], reusing already parsed stream ids from `streams` (a
    /// rebuild sees each stream many times; sharing one id also shares its bot id's allocation).
    ///
    /// # Errors
    /// As [`StoredEvent::into_recorded`].
    pub fn into_recorded_cached(
        self,
        position: Position,
        streams: &mut StreamCache,
    ) -> Result<RecordedEvent, DecodeError> {
        let stream = match streams.0.get(self.stream.as_str()) {
            Some(stream) => stream.clone(),
            None => {
                let stream: StreamId =
                    self.stream.parse().map_err(|e: crate::error::InputError| {
                        DecodeError::Envelope {
                            reason: e.to_string(),
                        }
                    })?;
                streams.0.insert(self.stream.clone(), stream.clone());
                stream
            }
        };
        if stream.bot_id().as_str() != self.bot_id {
            return Err(DecodeError::Envelope {
                reason: format!("bot id {:?} disagrees with stream {stream}", self.bot_id),
            });
        }
        let event = decode_payload(&self.event_type, self.schema_version, &self.payload)?;
        Ok(RecordedEvent {
            position,
            bot_id: stream.bot_id().clone(),
            stream,
            stream_version: StreamVersion(self.stream_version),
            batch_index: self.batch_index,
            batch_len: self.batch_len,
            event_id: Uuid::from_bytes(self.event_id),
            event_id_supplied: self.flags & FLAG_CLIENT_EVENT_ID != 0,
            idempotency_key: self.idempotency_key,
            recorded_at: Timestamp(self.recorded_at),
            occurred_at: Timestamp(self.occurred_at),
            schema_version: self.schema_version,
            event,
        })
    }

    /// Decodes the payload and builds the recorded event at `position`.
    ///
    /// # Errors
    /// A [`DecodeError`] for an unknown type or version, or bad bytes.
    pub fn into_recorded(self, position: Position) -> Result<RecordedEvent, DecodeError> {
        self.into_recorded_cached(position, &mut StreamCache::default())
    }
}

/// Decodes a log record into an event.
///
/// # Errors
/// A [`DecodeError`]; the caller adds the position to its report.
pub fn decode_record(position: Position, bytes: &[u8]) -> Result<RecordedEvent, DecodeError> {
    StoredEvent::decode(bytes)?.into_recorded(position)
}

/// Stream ids already parsed, by their text (see [`StoredEvent::into_recorded_cached`]).
#[derive(Debug, Default)]
pub struct StreamCache(std::collections::HashMap<String, StreamId, ahash::RandomState>);

/// [`decode_record`] with a [`StreamCache`].
///
/// # Errors
/// As [`decode_record`].
pub fn decode_record_cached(
    position: Position,
    bytes: &[u8],
    streams: &mut StreamCache,
) -> Result<RecordedEvent, DecodeError> {
    StoredEvent::decode(bytes)?.into_recorded_cached(position, streams)
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event::MessageReceived(MessageReceived {
            telegram_message_id: Some(77),
            text: "hello".into(),
            content_type: "text".into(),
            legacy_ts: None,
        })
    }

    /// Proves an event round-trips through the log encoding and through JSON.
    #[test]
    fn round_trips() {
        let bot = BotId::new("b").unwrap();
        let stream = StreamId::conversation(&bot, 5);
        let stored = StoredEvent::new(
            &stream,
            StreamVersion(3),
            (0, 1),
            Uuid::now_v7(),
            Some("k".into()),
            Timestamp(10),
            Timestamp(9),
            &sample(),
        )
        .unwrap();
        let recorded = decode_record(Position(12), &stored.encode().unwrap()).unwrap();
        assert_eq!(recorded.event, sample());
        assert_eq!(recorded.stream, stream);
        let json = serde_json::to_string(&recorded).unwrap();
        assert!(json.contains(r#""type":"MessageReceived""#), "{json}");
        let back: RecordedEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, recorded);
    }

    /// Proves an unknown event type is reported by name, not skipped or mis-decoded.
    #[test]
    fn unknown_type_is_reported() {
        let bot = BotId::new("b").unwrap();
        let mut stored = StoredEvent::new(
            &StreamId::bot(&bot),
            StreamVersion(0),
            (0, 1),
            Uuid::now_v7(),
            None,
            Timestamp(0),
            Timestamp(0),
            &sample(),
        )
        .unwrap();
        stored.event_type = "MoodDetected".into();
        let error = decode_record(Position(0), &stored.encode().unwrap()).unwrap_err();
        assert!(
            matches!(error, DecodeError::UnknownEventType { ref type_name, .. } if type_name == "MoodDetected")
        );
    }

    /// Proves JSON payloads show as JSON in JSON output but travel as text in postcard.
    #[test]
    fn json_text_in_both_encodings() {
        let event = Event::ConfigValueSet(ConfigValueSet {
            scope: "global".into(),
            key: "k".into(),
            value: JsonText::parse(r#"{"a":[1,2]}"#).unwrap(),
        });
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["data"]["value"]["a"][1], 2);
        let bytes = event.encode_payload().unwrap();
        assert_eq!(decode_payload("ConfigValueSet", 1, &bytes).unwrap(), event);
    }
}
