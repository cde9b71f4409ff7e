//! Validation of an append's input: stream kinds, sizes, keys, JSON objects where objects are
//! required.
//!
//! What the log accepts is what the bot could hold in its JSON files: any Unicode string JSON
//! can carry (U+0000 included) and any time. A read model that cannot store a value maps it
//! (`sink::postgres::mapping`); nothing is refused here because a projection cannot hold it.

use super::config::{APPEND_EVENTS_MAX, IDEMPOTENCY_KEY_LEN_MAX};
use super::indexes::DedupeKey;
use super::NewEvent;
use crate::error::InputError;
use crate::events::Event;
use crate::ids::StreamId;

/// Checks an append's events and returns, per event, its dedupe keys (client event id,
/// idempotency key scoped to the stream's bot).
pub(super) fn validate(
    stream: &StreamId,
    events: &[NewEvent],
) -> Result<Vec<Vec<DedupeKey>>, InputError> {
    if events.is_empty() {
        return Err(InputError::EmptyAppend);
    }
    if events.len() > APPEND_EVENTS_MAX {
        return Err(InputError::TooManyEvents {
            count: events.len(),
            max: APPEND_EVENTS_MAX,
        });
    }
    let mut keys: Vec<Vec<DedupeKey>> = Vec::with_capacity(events.len());
    for (index, new) in events.iter().enumerate() {
        if new.event.stream_kind() != stream.kind() {
            return Err(InputError::WrongStreamKind {
                event_type: new.event.type_name(),
                stream: stream.clone(),
                expected: new.event.stream_kind(),
            });
        }
        if let Event::UserSettingsChanged(e) = &new.event {
            if !e.settings.value().is_object() {
                return Err(InputError::NotAnObject { field: "settings" });
            }
        }
        if let Event::ProfileFactsRecorded(e) = &new.event {
            if !e.facts.value().is_object() {
                return Err(InputError::NotAnObject { field: "facts" });
            }
        }
        let mut own = Vec::new();
        if let Some(id) = new.event_id {
            own.push(DedupeKey::EventId(id));
        }
        if let Some(key) = &new.idempotency_key {
            if key.len() > IDEMPOTENCY_KEY_LEN_MAX {
                return Err(InputError::IdempotencyKeyTooLong { len: key.len() });
            }
            own.push(DedupeKey::Key(stream.bot_id().clone(), key.clone()));
        }
        if own
            .iter()
            .any(|key| keys.iter().flatten().any(|k| k == key))
        {
            return Err(InputError::DuplicateInAppend { index });
        }
        keys.push(own);
    }
    Ok(keys)
}
