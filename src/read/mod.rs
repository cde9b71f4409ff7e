//! The typed reads of the bot's hot path, and the sources that answer them.
//!
//! [`ReadSource`] is the seam: user by id, the profile document, the conversation head, the last
//! N messages, a configuration value, a component's migration state, a day's analytics — each
//! with `min_position`. Each answer says which position of the log it reflects ([`Read`]), so two
//! sources can be compared at the same position.
//!
//! # One read-your-writes rule
//! A read with `min_position = P` sees the event at position `P`: it is served only by a source
//! whose applied end (one past the last event it has applied) is beyond `P` — [`reached`]. The
//! log projection, every sink's `wait_for`, and every read source use this one function.
//!
//! # Layout
//! - [`log`]: [`LogSource`], the log projection in memory (the embedded default).
//! - [`postgres`]: [`PgSource`], point reads from the Postgres read models.
//! - [`cache`]: [`cache::Cache`], the two cache tiers (memory, Redis) in front of Postgres,
//!   values kept with the position they reflect, invalidated by floors.
//! - [`query`]: [`Query`] and [`Answer`], one typed read as a value.
//! - [`router`]: [`Router`], which picks the source of each read by its component's migration
//!   state, shadow-reads in `dual-write` ([`shadow`]), and falls back to the log projection when
//!   Postgres fails.

pub mod cache;
pub mod log;
pub mod postgres;
pub mod query;
pub mod router;
pub mod shadow;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hybridstore_wal::Position;

use crate::ids::{BotId, Component, MigrationState};
use crate::projection::{ConversationHead, DailyCounters, MessageView, ProfileDocument, UserView};
use crate::StoreError;

pub use log::LogSource;
pub use postgres::PgSource;
pub use query::{Answer, Query};
pub use router::{Routed, Router, RoutingConfig, Source};

/// Whether a source whose applied end is `applied_end` (every event below it applied) has
/// applied the event at `min_position`.
pub fn reached(applied_end: Position, min_position: Position) -> bool {
    applied_end > min_position
}

/// An answer and the log position it reflects: every event below `applied_end` (and none at or
/// above it) has taken effect in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Read<T> {
    /// The answer.
    pub value: T,
    /// The source's applied end when it answered.
    pub applied_end: Position,
}

/// Why a typed read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The source did not reach `min_position` within its wait.
    #[error("the {source_name} source has applied up to {applied}, not {min_position}, after waiting {waited:?}")]
    NotCaughtUp {
        /// The source.
        source_name: &'static str,
        /// The position asked for.
        min_position: Position,
        /// Where the source stood.
        applied: Position,
        /// How long the read waited.
        waited: Duration,
    },
    /// The source's backend failed (a lost connection, a bad row).
    #[error("the {source_name} source failed: {message}")]
    Unavailable {
        /// The source.
        source_name: &'static str,
        /// One line.
        message: String,
    },
    /// A reader without a data directory was asked for a component it cannot serve: only the
    /// process that owns the log serves a component before `database-only`.
    #[error("{component} of bot {bot} is {state}: only the process that owns the log serves it (this reader has no data directory and serves database-only components)")]
    NotServedHere {
        /// The component.
        component: Component,
        /// The bot.
        bot: BotId,
        /// Its state.
        state: MigrationState,
    },
    /// The subject was erased (design §10): nothing of them is kept to answer with.
    #[error("{subject} was erased (at position {position})")]
    Erased {
        /// Who, in words.
        subject: String,
        /// The erasure's position.
        position: Position,
    },
    /// The store failed (the log projection stopped, the store closed).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A result of a typed read.
pub type ReadResult<'a, T> = BoxFuture<'a, Result<Read<T>, ReadError>>;

/// The bot's hot-path reads, each with `min_position` (see the module docs).
pub trait ReadSource: Send + Sync {
    /// A short name (`log`, `postgres`) for errors and for saying which source answered.
    fn name(&self) -> &'static str;

    /// A user of the bot.
    fn user<'a>(
        &'a self,
        bot: &'a BotId,
        user_id: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<UserView>>;

    /// A chat partner's profile document.
    fn profile<'a>(
        &'a self,
        bot: &'a BotId,
        chat_id: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<Arc<ProfileDocument>>>;

    /// A conversation's head (counts, times, where its history was cleared).
    fn head<'a>(
        &'a self,
        bot: &'a BotId,
        chat_id: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<ConversationHead>>;

    /// The last `limit` messages of a chat since its last clear, oldest first.
    fn messages<'a>(
        &'a self,
        bot: &'a BotId,
        chat_id: i64,
        limit: usize,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Vec<MessageView>>;

    /// A configuration value.
    fn config_value<'a>(
        &'a self,
        bot: &'a BotId,
        scope: &'a str,
        key: &'a str,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<serde_json::Value>>;

    /// A component's migration state (`disabled` until changed).
    fn component_state<'a>(
        &'a self,
        bot: &'a BotId,
        component: Component,
        min_position: Option<Position>,
    ) -> ReadResult<'a, MigrationState>;

    /// A UTC day's analytics counters (day = days since 1970-01-01), without the set of chats
    /// behind `active_chats` ([`DailyCounters::counts_only`]).
    fn daily<'a>(
        &'a self,
        bot: &'a BotId,
        day: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<DailyCounters>>;
}
