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

mod catalogue;
mod envelope;
mod json;
mod personal;
mod sealing;

pub use catalogue::*;
pub use envelope::*;
pub use json::JsonText;
pub(crate) use sealing::{open_deferred, DeferredSeal};
