//! hybridstore: an event-sourced write-ahead log store for a Telegram chat bot.
//!
//! # Layout
//! - [`ids`]: newtypes for bots, streams, versions, timestamps, components, migration states.
//! - [`events`]: the event catalogue, the stored envelope and its codec (postcard in the log,
//!   JSON outside), upcasting of old schema versions.
//! - [`store`]: the [`store::Store`] handle — validated, idempotent, optimistically concurrent
//!   appends; stream and log reads; subscriptions through one fan-out.
//! - [`projection`]: the in-memory read models (the embedded default's read path), the keys a
//!   batch of events touches, and the one loop that reads the log into a projection.
//! - [`sink`]: what follows the log — the [`sink::Sink`] trait, its runner, and the first sink,
//!   the Postgres read models ([`sink::postgres`]).
//! - [`read`]: the typed reads of the bot's hot path ([`read::ReadSource`]) and their sources:
//!   the log projection and Postgres.
//! - [`migration`]: the migration states' transition rule and the supervisor that runs what the
//!   states ask for (the Postgres projector, health checks, automatic rollback).
//! - [`hybrid`]: the [`hybrid::Hybrid`] handle — the store plus, with a database, the supervisor,
//!   the cache and the router that picks each read's source by state; also the reader without a
//!   data directory.
//! - [`server`]: `hybridstore serve` — HTTP API v1 over the handle, tokens, problem+json errors,
//!   Prometheus metrics.
//! - [`legacy`]: import of the old bot's JSON files, and export back to them.
//! - [`error`]: input and store errors; [`error::one_line`] for the binaries.
//! - `testing` (feature `testing`): shared test support — event generators, a database per
//!   test, a TCP proxy for outages.
//!
//! The log engine is the `hybridstore-wal` crate (`wal/`); the audit tool is `hybridstore-audit`;
//! the `hybridstore` binary (`src/bin/hybridstore/`) holds the commands and the demo.

pub mod crypto;
pub mod erase;
pub mod error;
pub mod events;
pub mod hybrid;
pub mod ids;
pub mod legacy;
pub mod migration;
pub mod projection;
pub mod read;
pub mod server;
pub mod sink;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{InputError, Result, StoreError};
pub use ids::{
    BotId, Component, ComponentSet, MigrationState, StreamId, StreamKind, StreamVersion, Timestamp,
};
pub use store::{AppendResult, ExpectedVersion, NewEvent, ReadDirection, Store, StoreConfig};

/// The log lives in this subdirectory of the data directory.
pub const WAL_SUBDIR: &str = "wal";

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings and errors): the binaries' setup.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
