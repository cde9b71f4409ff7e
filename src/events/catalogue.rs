//! The catalogue: one payload struct per event type, each with its schema version, the
//! [`Event`] enum over them, and [`decode_payload`], where older schema versions are upcast.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{DecodeError, JsonText};
use crate::ids::{Component, MigrationState, StreamKind, Timestamp};

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
/// private chat (chat id = user id), are removed from every projection, and the keys in `keys`
/// (the user's and their private chat's) are destroyed: their sealed fields are gone from the
/// log too (version 2; version 1 had no keys and left the log readable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserErased {
    /// The keys the erasure destroys (absent in JSON: none, as version 1).
    #[serde(default)]
    pub keys: Vec<ErasedKey>,
}

/// Version 1 of [`UserErased`]: projections only; upcast with no keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserErasedV1 {}

/// A subject's keys an erasure destroys: every epoch of `stream` up to `epoch` (0: the subject
/// never had a key, its events are all in the clear).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasedKey {
    /// The subject's stream.
    pub stream: String,
    /// The highest epoch destroyed.
    pub epoch: u32,
}

/// A chat partner was erased (stream `conv-{bot}-{chat}`): their profile and every message of
/// the chat are removed from every projection, and the chat's keys destroyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatErased {
    /// The keys the erasure destroys.
    pub keys: Vec<ErasedKey>,
}

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
/// The receipt of an erasure (stream `bot-{bot}`): what was erased, where, and how far each
/// sink had got. Recorded again, with the same id, when a later check completes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureReceiptRecorded {
    /// The receipt's id.
    pub receipt_id: String,
    /// The receipt (`crate::erase::Receipt` as JSON).
    pub receipt: JsonText,
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

            pub(crate) fn encode_payload(&self) -> Result<Vec<u8>, postcard::Error> {
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
    UserErased => Users, User, version 2;
    ProfileCreated => Profiles, Conversation, version 1;
    ProfileRenamed => Profiles, Conversation, version 1;
    ProfileFactsRecorded => Profiles, Conversation, version 1;
    ConversationAnalyzed => Profiles, Conversation, version 1;
    ProfileDeleted => Profiles, Conversation, version 1;
    ProfileLegacyStateImported => Profiles, Conversation, version 1;
    ChatErased => Profiles, Conversation, version 1;
    MessageReceived => Conversations, Conversation, version 2;
    MessageSent => Conversations, Conversation, version 1;
    HistoryCleared => Conversations, Conversation, version 1;
    FollowupScheduled => Conversations, Conversation, version 1;
    FollowupCancelled => Conversations, Conversation, version 1;
    FollowupFired => Conversations, Conversation, version 1;
    ConfigValueSet => Configuration, Bot, version 1;
    ConfigValueUnset => Configuration, Bot, version 1;
    ComponentStateChanged => Configuration, Bot, version 1;
    ErasureReceiptRecorded => Configuration, Bot, version 1;
    AnalyticsRecorded => Analytics, Telemetry, version 1;
}

pub(crate) fn strict_from_bytes<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<T, postcard::Error> {
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
        ("UserErased", 1) => strict_from_bytes::<UserErasedV1>(bytes)
            .map(|UserErasedV1 {}| Event::UserErased(UserErased { keys: Vec::new() }))
            .map_err(payload),
        _ => Err(DecodeError::UnknownSchemaVersion {
            type_name: type_name.to_owned(),
            schema_version,
            current,
        }),
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}
