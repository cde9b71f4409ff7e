//! Personal fields: which fields of which events say something about a person (design §10), and
//! how they are taken out of a payload to be sealed and put back after opening.
//!
//! The personal fields of an event on a conversation or user stream are encrypted with the
//! subject's key ([`crate::crypto`]); what stays in the payload is the field blanked (an empty
//! text, `None`, JSON `null`), so the payload's encoding and its schema version are unchanged and
//! ids, types, counters and times stay readable after the key is destroyed.
//!
//! | event | personal fields |
//! |---|---|
//! | `UserRegistered`, `UserIdentityUpdated` | `identity.username`, `first_name`, `last_name`, `language_code` |
//! | `UserBlocked` | `reason` |
//! | `ProfileCreated`, `ProfileRenamed` | `name` |
//! | `ProfileFactsRecorded` | `facts` |
//! | `ConversationAnalyzed` | `summary` |
//! | `MessageReceived`, `MessageSent` | `text` |
//! | `FollowupScheduled` | `reason` |
//!
//! Every other field, and every other event, is not personal: settings, block flags, message
//! ids and kinds, LLM usage, follow-up ids and times, configuration, component states, analytics.

use super::{Event, Identity, JsonText};

/// One personal field, borrowed from its event.
pub(crate) enum Slot<'a> {
    /// A text, blanked to `""`.
    Text(&'a mut String),
    /// An optional text, blanked to `None`.
    Optional(&'a mut Option<String>),
    /// A JSON document, blanked to `null`.
    Json(&'a mut JsonText),
}

fn identity_slots(identity: &mut Identity) -> Vec<(&'static str, Slot<'_>)> {
    vec![
        ("identity.username", Slot::Optional(&mut identity.username)),
        (
            "identity.first_name",
            Slot::Optional(&mut identity.first_name),
        ),
        (
            "identity.last_name",
            Slot::Optional(&mut identity.last_name),
        ),
        (
            "identity.language_code",
            Slot::Optional(&mut identity.language_code),
        ),
    ]
}

impl Event {
    /// The event's personal fields with their names, in a fixed order (the sealed form's).
    pub(crate) fn personal_slots(&mut self) -> Vec<(&'static str, Slot<'_>)> {
        match self {
            Event::UserRegistered(e) => identity_slots(&mut e.identity),
            Event::UserIdentityUpdated(e) => identity_slots(&mut e.identity),
            Event::UserBlocked(e) => vec![("reason", Slot::Optional(&mut e.reason))],
            Event::ProfileCreated(e) => vec![("name", Slot::Text(&mut e.name))],
            Event::ProfileRenamed(e) => vec![("name", Slot::Text(&mut e.name))],
            Event::ProfileFactsRecorded(e) => vec![("facts", Slot::Json(&mut e.facts))],
            Event::ConversationAnalyzed(e) => vec![("summary", Slot::Text(&mut e.summary))],
            Event::MessageReceived(e) => vec![("text", Slot::Text(&mut e.text))],
            Event::MessageSent(e) => vec![("text", Slot::Text(&mut e.text))],
            Event::FollowupScheduled(e) => vec![("reason", Slot::Text(&mut e.reason))],
            _ => Vec::new(),
        }
    }

    /// The names of the event's personal fields, in `Event::personal_slots` order (empty for an
    /// event without any).
    pub fn personal_field_names(&self) -> &'static [&'static str] {
        const IDENTITY: &[&str] = &[
            "identity.username",
            "identity.first_name",
            "identity.last_name",
            "identity.language_code",
        ];
        match self {
            Event::UserRegistered(_) | Event::UserIdentityUpdated(_) => IDENTITY,
            Event::UserBlocked(_) | Event::FollowupScheduled(_) => &["reason"],
            Event::ProfileCreated(_) | Event::ProfileRenamed(_) => &["name"],
            Event::ProfileFactsRecorded(_) => &["facts"],
            Event::ConversationAnalyzed(_) => &["summary"],
            Event::MessageReceived(_) | Event::MessageSent(_) => &["text"],
            _ => &[],
        }
    }

    /// Whether the event has personal fields (so it is sealed on a subject's stream).
    pub fn has_personal_fields(&self) -> bool {
        !self.personal_field_names().is_empty()
    }

    /// Takes the personal fields out (leaving them blank), in `Event::personal_slots` order.
    pub(crate) fn take_personal(&mut self) -> Vec<Option<String>> {
        self.personal_slots()
            .into_iter()
            .map(|(_, slot)| match slot {
                Slot::Text(text) => Some(std::mem::take(text)),
                Slot::Optional(text) => text.take(),
                Slot::Json(json) => Some(std::mem::replace(json, JsonText::null()).into_string()),
            })
            .collect()
    }

    /// Puts opened personal fields back. `None` for a text or a JSON field, a count that does not
    /// match, or a JSON field that is not JSON: `Err` with the reason (a damaged or foreign
    /// sealed form; the AEAD makes this practically impossible for a genuine one).
    pub(crate) fn put_personal(&mut self, values: Vec<Option<String>>) -> Result<(), String> {
        let slots = self.personal_slots();
        if slots.len() != values.len() {
            return Err(format!(
                "{} sealed fields for {} personal fields",
                values.len(),
                slots.len()
            ));
        }
        for ((name, slot), value) in slots.into_iter().zip(values) {
            match (slot, value) {
                (Slot::Text(text), Some(value)) => *text = value,
                (Slot::Optional(text), value) => *text = value,
                (Slot::Json(json), Some(value)) => {
                    *json = JsonText::parse(&value)
                        .map_err(|e| format!("sealed field {name} is not JSON: {e}"))?;
                }
                (_, None) => return Err(format!("sealed field {name} is missing")),
            }
        }
        Ok(())
    }
}
