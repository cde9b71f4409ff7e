//! Validation of an append's input: stream kinds, sizes, keys, storable values.

use super::config::{APPEND_EVENTS_MAX, IDEMPOTENCY_KEY_LEN_MAX};
use super::indexes::DedupeKey;
use super::NewEvent;
use crate::error::InputError;
use crate::events::Event;
use crate::ids::{StreamId, Timestamp};

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
        check_storable(index, new)?;
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
            own.push(DedupeKey::Key(key.clone()));
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

/// Earliest time an event may carry: 0001-01-01T00:00:00Z.
pub const TIMESTAMP_MIN: Timestamp = Timestamp(-62_135_596_800_000);
/// Latest time an event may carry: 9999-12-31T23:59:59.999Z.
pub const TIMESTAMP_MAX: Timestamp = Timestamp(253_402_300_799_999);

/// Refuses what the log could hold but a read model could not: NUL characters in any text, and
/// times outside the years 1 to 9999.
pub(super) fn check_storable(index: usize, new: &NewEvent) -> Result<(), InputError> {
    let times = [
        ("occurred_at", new.occurred_at),
        (
            "due_at",
            match &new.event {
                Event::FollowupScheduled(e) => Some(e.due_at),
                _ => None,
            },
        ),
    ];
    for (field, time) in times {
        if let Some(time) = time {
            if !(TIMESTAMP_MIN..=TIMESTAMP_MAX).contains(&time) {
                return Err(InputError::TimestampOutOfRange {
                    field,
                    value_ms: time.0,
                });
            }
        }
    }
    let mut finder = NulFinder::default();
    // The JSON rendering visits every text, embedded JSON documents included; serde_json writes
    // U+0000 as the escape `\u0000`.
    if serde_json::to_writer(&mut finder, &new.event).is_ok() && finder.found {
        return Err(InputError::NulCharacter {
            index,
            event_type: new.event.type_name(),
        });
    }
    Ok(())
}

/// Watches JSON text for the escape of U+0000 (`\u0000` after an odd run of backslashes; an
/// even run is escaped backslashes followed by plain text).
#[derive(Debug, Default)]
pub(super) struct NulFinder {
    backslashes: usize,
    /// Bytes of `u0000` matched after an odd run of backslashes.
    matched: usize,
    found: bool,
}

impl std::io::Write for NulFinder {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        for &byte in bytes {
            if self.matched > 0 && byte == b'0' {
                self.matched += 1;
                if self.matched == 5 {
                    self.found = true;
                    self.matched = 0;
                }
                continue;
            }
            self.matched = 0;
            if byte == b'\\' {
                self.backslashes += 1;
                continue;
            }
            if byte == b'u' && self.backslashes % 2 == 1 {
                self.matched = 1;
            }
            self.backslashes = 0;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
