//! The envelope every log record carries ([`StoredEvent`], format 3; formats 1 and 2 still
//! read), the event readers get ([`RecordedEvent`]), and the one codec every reader decodes
//! through ([`decode_record`]), with the keyring that opens sealed personal fields (`sealing.rs`
//! seals and opens them).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::catalogue::{decode_payload, strict_from_bytes, Event};
use super::sealing::{open_fields, seal_fields, DeferredSeal, SealId};
pub use super::sealing::{Personal, SealedFields};
use crate::crypto::{DataKey, Keyring};
use crate::ids::{BotId, StreamId, StreamVersion, Timestamp};
use hybridstore_wal::Position;

/// Version of the [`StoredEvent`] envelope layout written now. Format 2 ([`StoredEventV2`]) had
/// no `sealed`; format 1 ([`StoredEventV1`]) no `flags` either (every event id is taken as
/// client-supplied). Both are still read.
pub const ENVELOPE_FORMAT: u8 = 3;

/// `flags` bit: the event id was supplied by the client (so a retry may carry it again). Ids the
/// store generated are never looked up, so only supplied ones go into the dedupe index.
pub const FLAG_CLIENT_EVENT_ID: u8 = 1;

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
    /// The personal fields, sealed with the subject's key (format 3 on); `None` for an event
    /// without personal fields, not on a subject's stream, or written before format 3.
    pub sealed: Option<SealedFields>,
}

/// The format-2 envelope: [`StoredEvent`] without `sealed`. Read, never written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct StoredEventV2 {
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
    pub flags: u8,
}

impl From<StoredEventV2> for StoredEvent {
    fn from(v2: StoredEventV2) -> StoredEvent {
        StoredEvent {
            format: v2.format,
            stream: v2.stream,
            stream_version: v2.stream_version,
            batch_index: v2.batch_index,
            batch_len: v2.batch_len,
            event_id: v2.event_id,
            idempotency_key: v2.idempotency_key,
            recorded_at: v2.recorded_at,
            occurred_at: v2.occurred_at,
            bot_id: v2.bot_id,
            event_type: v2.event_type,
            schema_version: v2.schema_version,
            payload: v2.payload,
            flags: v2.flags,
            sealed: None,
        }
    }
}

impl StoredEventV2 {
    /// Encodes a format-2 envelope (for fixtures of the old format).
    ///
    /// # Errors
    /// Postcard's.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }
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
            sealed: None,
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
    /// Whether its personal fields were sealed, and what became of them.
    #[serde(default, skip_serializing_if = "Personal::is_clear")]
    pub personal: Personal,
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
    /// The event is sealed with a key the key store does not hold (it was never lost by the
    /// store: a key is durable before an event sealed with it is acknowledged).
    #[error("sealed with key {epoch} of {stream}, which the key store does not hold: the key store is missing or older than the log (restored from another backup?)")]
    KeyMissing {
        /// The subject's stream.
        stream: String,
        /// The key's epoch.
        epoch: u32,
    },
    /// The sealed fields do not open with their key, or do not fit the event.
    #[error("sealed fields of {stream} (key {epoch}) do not open: {reason}")]
    Sealed {
        /// The subject's stream.
        stream: String,
        /// The key's epoch.
        epoch: u32,
        /// Why.
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
        StoredEvent::new_sealed(
            stream,
            stream_version,
            (batch_index, batch_len),
            event_id,
            idempotency_key,
            recorded_at,
            occurred_at,
            event,
            None,
        )
    }

    /// [`StoredEvent::new`], with the event's personal fields (if it has any) sealed with `seal`
    /// (the subject's key and its epoch).
    ///
    /// # Errors
    /// As [`StoredEvent::new`]; sealing itself cannot fail for the sizes the store accepts
    /// (AES-GCM refuses only plaintexts of gigabytes), and would be reported as
    /// `SerializeBufferFull`.
    #[allow(clippy::too_many_arguments)]
    pub fn new_sealed(
        stream: &StreamId,
        stream_version: StreamVersion,
        (batch_index, batch_len): (u32, u32),
        event_id: Uuid,
        idempotency_key: Option<String>,
        recorded_at: Timestamp,
        occurred_at: Timestamp,
        event: &Event,
        seal: Option<(u32, &DataKey)>,
    ) -> Result<StoredEvent, postcard::Error> {
        let (payload, sealed) = match seal {
            Some((epoch, key)) if event.has_personal_fields() => {
                let (blanked, sealed) =
                    seal_fields(event, event_id.as_bytes(), stream, epoch, key)?;
                (blanked.encode_payload()?, Some(sealed))
            }
            _ => (event.encode_payload()?, None),
        };
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
            payload,
            flags: 0,
            sealed,
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
            Some(2) => Ok(strict_from_bytes::<StoredEventV2>(bytes)
                .map_err(envelope)?
                .into()),
            Some(&ENVELOPE_FORMAT) => strict_from_bytes(bytes).map_err(envelope),
            Some(other) => Err(DecodeError::Envelope {
                reason: format!(
                    "envelope format {other} (this build reads 1 to {ENVELOPE_FORMAT})"
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
        keys: &Keyring,
    ) -> Result<RecordedEvent, DecodeError> {
        recorded_from(self.borrowed(), position, streams, Some(keys)).map(|(event, _)| event)
    }

    /// The envelope as the borrowed form every reader decodes.
    fn borrowed(&self) -> StoredEventRef<'_> {
        StoredEventRef {
            _format: self.format,
            stream: &self.stream,
            stream_version: self.stream_version,
            batch_index: self.batch_index,
            batch_len: self.batch_len,
            event_id: self.event_id,
            idempotency_key: self.idempotency_key.as_deref(),
            recorded_at: self.recorded_at,
            occurred_at: self.occurred_at,
            bot_id: &self.bot_id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            payload: &self.payload,
            flags: self.flags,
            sealed: self.sealed.as_ref().map(|s| SealedFieldsRef {
                epoch: s.epoch,
                nonce: s.nonce,
                ciphertext: &s.ciphertext,
            }),
        }
    }

    /// Decodes the payload and builds the recorded event at `position`.
    ///
    /// # Errors
    /// A [`DecodeError`] for an unknown type or version, bad bytes, or sealed fields that do not
    /// open.
    pub fn into_recorded(
        self,
        position: Position,
        keys: &Keyring,
    ) -> Result<RecordedEvent, DecodeError> {
        self.into_recorded_cached(position, &mut StreamCache::default(), keys)
    }
}

/// A format-3 envelope borrowed from the record's bytes: what the readers decode (the stream,
/// the bot, the type and the payload are not copied out).
#[derive(Debug, Deserialize)]
struct StoredEventRef<'a> {
    /// Checked by the caller (it picks the decoder by it); in the layout.
    _format: u8,
    stream: &'a str,
    stream_version: u64,
    batch_index: u32,
    batch_len: u32,
    event_id: [u8; 16],
    idempotency_key: Option<&'a str>,
    recorded_at: i64,
    occurred_at: i64,
    bot_id: &'a str,
    event_type: &'a str,
    schema_version: u16,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
    flags: u8,
    sealed: Option<SealedFieldsRef<'a>>,
}

/// [`SealedFields`], borrowed.
#[derive(Debug, Deserialize)]
struct SealedFieldsRef<'a> {
    epoch: u32,
    nonce: [u8; crate::crypto::NONCE_LEN],
    #[serde(with = "serde_bytes")]
    ciphertext: &'a [u8],
}

/// Builds the recorded event an envelope describes at `position`.
fn recorded_from(
    envelope: StoredEventRef<'_>,
    position: Position,
    streams: &mut StreamCache,
    keys: Option<&Keyring>,
) -> Result<(RecordedEvent, Option<DeferredSeal>), DecodeError> {
    let stream = match streams.0.get(envelope.stream) {
        Some(stream) => stream.clone(),
        None => {
            let stream: StreamId =
                envelope
                    .stream
                    .parse()
                    .map_err(|e: crate::error::InputError| DecodeError::Envelope {
                        reason: e.to_string(),
                    })?;
            streams.0.insert(envelope.stream.to_owned(), stream.clone());
            stream
        }
    };
    if stream.bot_id().as_str() != envelope.bot_id {
        return Err(DecodeError::Envelope {
            reason: format!(
                "bot id {:?} disagrees with stream {stream}",
                envelope.bot_id
            ),
        });
    }
    let mut event = decode_payload(
        envelope.event_type,
        envelope.schema_version,
        envelope.payload,
    )?;
    let mut deferred = None;
    let personal = match (&envelope.sealed, keys) {
        (None, _) => Personal::Clear,
        (Some(sealed), Some(keys)) => {
            let id = SealId {
                stream: envelope.stream,
                event_id: &envelope.event_id,
                event_type: envelope.event_type,
                schema_version: envelope.schema_version,
            };
            open_fields(
                &id,
                sealed.epoch,
                &sealed.nonce,
                sealed.ciphertext.to_vec(),
                &mut event,
                keys,
            )?
        }
        (Some(sealed), None) => {
            deferred = Some(DeferredSeal::new(
                sealed.epoch,
                sealed.nonce,
                sealed.ciphertext,
            ));
            Personal::Clear
        }
    };
    Ok((
        RecordedEvent {
            position,
            bot_id: stream.bot_id().clone(),
            stream,
            stream_version: StreamVersion(envelope.stream_version),
            batch_index: envelope.batch_index,
            batch_len: envelope.batch_len,
            event_id: Uuid::from_bytes(envelope.event_id),
            event_id_supplied: envelope.flags & FLAG_CLIENT_EVENT_ID != 0,
            idempotency_key: envelope.idempotency_key.map(str::to_owned),
            recorded_at: Timestamp(envelope.recorded_at),
            occurred_at: Timestamp(envelope.occurred_at),
            schema_version: envelope.schema_version,
            event,
            personal,
        },
        deferred,
    ))
}

/// Decodes a log record into an event.
///
/// # Errors
/// A [`DecodeError`]; the caller adds the position to its report.
pub fn decode_record(
    position: Position,
    bytes: &[u8],
    keys: &Keyring,
) -> Result<RecordedEvent, DecodeError> {
    decode_record_cached(position, bytes, &mut StreamCache::default(), keys)
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
    keys: &Keyring,
) -> Result<RecordedEvent, DecodeError> {
    // The current format is decoded borrowed; older ones through their owned forms.
    if bytes.first() == Some(&ENVELOPE_FORMAT) {
        let envelope: StoredEventRef<'_> =
            strict_from_bytes(bytes).map_err(|e| DecodeError::Envelope {
                reason: e.to_string(),
            })?;
        return recorded_from(envelope, position, streams, Some(keys)).map(|(event, _)| event);
    }
    StoredEvent::decode(bytes)?.into_recorded_cached(position, streams, keys)
}

/// [`decode_record_cached`] leaving sealed fields closed (blank, `Personal::Clear` until
/// [`open_deferred`] opens them): the rebuild's decoding thread.
///
/// # Errors
/// As [`decode_record`], but for the sealed fields.
pub(crate) fn decode_record_deferred(
    position: Position,
    bytes: &[u8],
    streams: &mut StreamCache,
) -> Result<(RecordedEvent, Option<DeferredSeal>), DecodeError> {
    if bytes.first() == Some(&ENVELOPE_FORMAT) {
        let envelope: StoredEventRef<'_> =
            strict_from_bytes(bytes).map_err(|e| DecodeError::Envelope {
                reason: e.to_string(),
            })?;
        return recorded_from(envelope, position, streams, None);
    }
    // Formats 1 and 2 have nothing sealed.
    let event =
        StoredEvent::decode(bytes)?.into_recorded_cached(position, streams, &Keyring::keyless())?;
    Ok((event, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ConfigValueSet, JsonText, MessageReceived};

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
        let recorded =
            decode_record(Position(12), &stored.encode().unwrap(), &Keyring::keyless()).unwrap();
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
        let error =
            decode_record(Position(0), &stored.encode().unwrap(), &Keyring::keyless()).unwrap_err();
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
