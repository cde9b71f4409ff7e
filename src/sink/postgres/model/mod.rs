//! The read-model tables and the projection: which rows an event touches (`Keys`), reading rows
//! into a [`Projection`] ([`load`]), and writing a projection's entries back as rows ([`write()`]),
//! set-based (one statement per table, arrays bound through `UNNEST`), never a round trip per row.
//!
//! The tables hold exactly the log projection's state (plus every message since the last clear),
//! so the Postgres projector can run the very same `Projection::apply` as the log projection:
//! load the rows a batch touches, apply the batch, write the rows back. Equality with the log
//! projection then follows from the code being shared, and `hybridstore-replay --verify` checks it.
//!
//! # Layout
//! - `load.rs`: rows into a projection; `write.rs`: a projection's entries back as rows.
//! - `messages.rs`: the `messages` table (rows from events, the last N of a chat).
//! - `cursors.rs`: the checkpoints, as a sink's cursors with the log id.
//! - `profile_rows.rs`: the profile rows as stored, for verification.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use hybridstore_wal::{LogId, Position};
use sqlx::PgConnection;
use uuid::Uuid;

use super::mapping::{json_in, json_out, opt_text_in, opt_text_out, text_in, text_out};
use super::PgError;
use crate::events::{Identity, RecordedEvent};
use crate::ids::{
    BotId, Component, ComponentSet, MigrationState, StreamKind, SubjectKind, Timestamp,
};
use crate::projection::{
    ConversationHead, ConversationView, Direction, Keys, MessageView, ProfileDocument, Projection,
    UserView,
};
use crate::sink::{Cursor, Cursors};

/// The tables of each component, in the order a rebuild creates them.
pub fn component_tables(component: Component) -> &'static [&'static str] {
    match component {
        Component::Users => &["users", "erasures"],
        Component::Profiles => &["profiles", "profile_summaries", "profile_facts"],
        Component::Conversations => &["conversations", "messages", "followups"],
        Component::Configuration => &["config_values", "component_states"],
        Component::Analytics => &["analytics_daily", "analytics_daily_chats"],
    }
}

/// A u64 counter as a bigint: counters beyond i64::MAX (never reached by counting) are clamped.
pub(super) fn counter(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn uncounter(table: &'static str, value: i64) -> Result<u64, PgError> {
    u64::try_from(value).map_err(|_| PgError::BadRow {
        table,
        reason: format!("negative counter {value}"),
    })
}

pub(super) fn bot(table: &'static str, id: String) -> Result<BotId, PgError> {
    BotId::new(id).map_err(|e| PgError::BadRow {
        table,
        reason: e.to_string(),
    })
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(
    table: &'static str,
    value: serde_json::Value,
) -> Result<T, PgError> {
    serde_json::from_value(value).map_err(|e| PgError::BadRow {
        table,
        reason: e.to_string(),
    })
}

pub(super) fn unmap_text(table: &'static str, stored: String) -> Result<String, PgError> {
    text_out(stored).map_err(|e| PgError::BadRow {
        table,
        reason: e.to_string(),
    })
}

pub(super) fn unmap_opt_text(
    table: &'static str,
    stored: Option<String>,
) -> Result<Option<String>, PgError> {
    opt_text_out(stored).map_err(|e| PgError::BadRow {
        table,
        reason: e.to_string(),
    })
}

pub(super) fn unmap_json(
    table: &'static str,
    stored: serde_json::Value,
) -> Result<serde_json::Value, PgError> {
    json_out(stored).map_err(|e| PgError::BadRow {
        table,
        reason: e.to_string(),
    })
}

pub(super) fn query_error(what: &'static str) -> impl FnOnce(sqlx::Error) -> PgError {
    move |error| PgError::Query { what, error }
}

pub(super) fn split<T: Clone>(keys: &HashSet<(BotId, T)>) -> (Vec<String>, Vec<T>) {
    keys.iter().map(|(b, k)| (b.to_string(), k.clone())).unzip()
}

/// Which rows [`load`] reads.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// Every row (a rebuild resuming, a verification).
    All,
    /// The rows of these entries (a projector batch).
    Of(&'a Keys),
}

mod cursors;
mod load;
mod messages;
mod profile_rows;
mod write;

pub use cursors::{checkpoints, cursors, set_cursors};
pub use load::load;
pub use messages::{direction_name, load_last_messages, load_messages, MessageRow, MessageRows};
pub use profile_rows::{load_profile_rows, profile_row_value, ProfileRow};
pub use write::{write, Prior};
