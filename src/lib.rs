//! hybridstore: an event-sourced write-ahead log store for a Telegram chat bot.
//!
//! # Layout
//! - [`ids`]: newtypes for bots, streams, versions, timestamps, components, migration states.
//! - [`events`]: the event catalogue, the stored envelope and its codec (postcard in the log,
//!   JSON outside), upcasting of old schema versions.
//! - [`store`]: the [`store::Store`] handle — validated, idempotent, optimistically concurrent
//!   appends; stream and log reads; subscriptions.
//! - [`projection`]: the in-memory read models (the embedded default's read path).
//! - [`pg`]: the Postgres read models, their migrations and the live projector.
//! - [`legacy`]: import of the old bot's JSON files, and export back to them.
//! - [`error`]: input and store errors.
//! - `testing` (feature `testing`): shared test support — event generators, a database per
//!   test, a TCP proxy for outages.
//!
//! The log engine is the `hybridstore-wal` crate (`wal/`); the audit tool is `hybridstore-audit`.

pub mod error;
pub mod events;
pub mod ids;
pub mod legacy;
pub mod projection;
pub mod read;
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
