//! What follows the log: the [`Sink`] trait, the cursors a sink keeps, and the one [`runner`] that
//! feeds every sink.
//!
//! A sink is a store of derived state (Postgres read models, a cache, a shipper to another
//! system) that applies durable events in log order and remembers, atomically with what it
//! applied, where it stands: a [`Cursor`] per component, and the id of the log the cursors belong
//! to. Everything else — subscribing from the lowest cursor, batching by size and time, splitting
//! at component boundaries, backing off and retrying transient errors, stopping with a typed
//! reason on permanent ones, publishing status, and refusing cursors of another log — is the
//! runner's, the same for every sink.
//!
//! # Adding a sink
//! A new module (`sink/{name}.rs` or `sink/{name}/`) with a type implementing [`Sink`]; start it
//! with [`runner::start`]. Nothing else changes.
//!
//! # Layout
//! - [`runner`]: the loop every sink runs in, and its [`runner::SinkHandle`].
//! - [`postgres`]: the Postgres read models (configuration, tables, the mapping of what Postgres
//!   cannot hold, verification) and [`postgres::PgSink`].
//! - [`cache`]: [`cache::CacheSink`], which invalidates the cache tiers
//!   ([`crate::read::cache`]) behind the Postgres sink.

pub mod cache;
pub mod postgres;
pub mod runner;

use std::collections::BTreeMap;
use std::fmt;

use futures_util::future::BoxFuture;
use hybridstore_wal::{LogId, Position};
use serde::Serialize;
use uuid::Uuid;

use crate::events::RecordedEvent;
use crate::ids::{Component, ComponentSet};

pub use runner::{start, RunnerConfig, SinkHandle, SinkStatus};

/// Where a sink stands for one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cursor {
    /// Every event below this position has taken effect in the sink, none at or above it.
    pub next: Position,
    /// The id of the event at `next - 1`, the last one applied (`None` when `next` is 0, or for
    /// cursors written before sinks recorded it). With it a sink tells "the log I followed" from
    /// "another history at the same positions" (a data directory restored from an older backup).
    pub last_event: Option<Uuid>,
}

impl Cursor {
    /// The start of the log.
    pub const START: Cursor = Cursor {
        next: Position(0),
        last_event: None,
    };
}

/// A sink's stored cursors and the log they belong to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursors {
    /// The log the cursors follow (`None`: the sink never committed a batch with a log id).
    pub log: Option<LogId>,
    /// The cursor of each component the sink maintains; a missing one stands at the start.
    pub components: BTreeMap<Component, Cursor>,
}

impl Cursors {
    /// The cursor of `component` (the start of the log if it has none).
    pub fn get(&self, component: Component) -> Cursor {
        self.components
            .get(&component)
            .copied()
            .unwrap_or(Cursor::START)
    }
}

/// A batch of durable events for a sink to apply.
#[derive(Debug)]
pub struct Batch<'a> {
    /// The log the events come from; the sink records it with the cursors.
    pub log: LogId,
    /// The events, in log order, dense from `first`.
    pub events: &'a [RecordedEvent],
    /// The components the batch applies to: each of their cursors stands at `first`, and moves
    /// to [`Batch::cursor`] when the batch commits. Events of other components are skipped.
    pub components: ComponentSet,
    /// Position of the first event.
    pub first: Position,
}

impl Batch<'_> {
    /// Position after the last event.
    pub fn end(&self) -> Position {
        self.events
            .last()
            .map_or(self.first, |e| e.position.advance(1))
    }

    /// The cursor every component of the batch has once it is committed.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            next: self.end(),
            last_event: self.events.last().map(|e| e.event_id),
        }
    }
}

/// How a sink operation failed, which decides what the runner does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkErrorKind {
    /// May pass later (a connection broke, the server went away, a serialization race): the
    /// runner keeps the batch and retries with backoff.
    Transient,
    /// The sink's cursors moved under the runner (another process, a rebuild swapping tables
    /// in): the runner reloads them and resumes from there.
    CursorsMoved,
    /// Fails the same way again (a value the backend refuses, a bad row): the runner stops.
    Permanent,
}

impl fmt::Display for SinkErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SinkErrorKind::Transient => "transient",
            SinkErrorKind::CursorsMoved => "cursors moved",
            SinkErrorKind::Permanent => "permanent",
        })
    }
}

/// A failed sink operation: its kind and a one-line description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// What the runner does about it.
    pub kind: SinkErrorKind,
    /// What went wrong, in one line.
    pub message: String,
}

/// Something that follows the log (see the module docs).
///
/// The runner calls one method at a time; a sink needs no locking of its own.
pub trait Sink: Send + Sync + 'static {
    /// A short name for logs, status and receipts (`postgres`).
    fn name(&self) -> &'static str;

    /// The components this sink maintains.
    fn components(&self) -> ComponentSet;

    /// Reads the stored cursors (and the log they belong to).
    fn load_cursors(&mut self) -> BoxFuture<'_, Result<Cursors, SinkError>>;

    /// Applies `batch` to the components it names and commits it together with their new
    /// cursors ([`Batch::cursor`]) and the log id, atomically: after a crash either all of it
    /// took effect or none. Before applying, the sink checks that its stored cursors of those
    /// components still stand at `batch.first` ([`SinkErrorKind::CursorsMoved`] otherwise).
    fn commit<'a>(&'a mut self, batch: &'a Batch<'a>) -> BoxFuture<'a, Result<(), SinkError>>;

    /// A cheap check that the sink's backend answers (the runner asks before retrying).
    fn probe(&mut self) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// Why stored cursors cannot be followed on this log: the sink would skip events or mix two
/// histories.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The cursors belong to another log.
    #[error("the {sink} sink's cursors belong to log {stored}, not to this log ({log}): it was fed from another data directory; rebuild it from this log (hybridstore-replay) or point it at its own log")]
    ForeignLog {
        /// The sink.
        sink: &'static str,
        /// The log the cursors belong to.
        stored: LogId,
        /// This log.
        log: LogId,
    },
    /// A cursor stands past the end of this log (a data directory restored from an older backup).
    #[error("the {sink} sink's {component} cursor ({cursor}) stands past the end of log {log} ({log_end}): the log is older than what the sink has applied (restored from a backup?); rebuild the sink from this log (hybridstore-replay)")]
    PastEnd {
        /// The sink.
        sink: &'static str,
        /// The component.
        component: Component,
        /// Its cursor.
        cursor: Position,
        /// This log.
        log: LogId,
        /// This log's durable end.
        log_end: Position,
    },
    /// The log holds another event where the sink's last applied one was (an older copy of the
    /// data directory that has grown past the cursor with other events).
    #[error("the {sink} sink's {component} cursor says event {expected} is at position {position} of log {log}, but the log holds {found} there: the log's history differs from what the sink applied (restored from a backup and written since?); rebuild the sink from this log (hybridstore-replay)")]
    HistoryDiffers {
        /// The sink.
        sink: &'static str,
        /// The component.
        component: Component,
        /// The position of the last applied event.
        position: Position,
        /// This log.
        log: LogId,
        /// The event id the sink applied there.
        expected: Uuid,
        /// The event id the log holds there.
        found: Uuid,
    },
    /// Cursors past the start that name no log: written before logs had ids, so nothing tells
    /// which log they follow.
    #[error("the {sink} sink's cursors ({component} at {cursor}) name no log (written before logs had ids), so nothing shows they follow log {log}; rebuild the sink from this log (hybridstore-replay), which adopts it")]
    Unverifiable {
        /// The sink.
        sink: &'static str,
        /// A component past the start.
        component: Component,
        /// Its cursor.
        cursor: Position,
        /// This log.
        log: LogId,
    },
}

/// Checks that `cursors` can be followed on the log `log` whose durable end is `log_end`;
/// `event_id_at` gives the id of the event at a position below the end.
///
/// # Errors
/// An [`IdentityError`] saying which check failed, naming both logs and the position.
pub fn check_identity<E>(
    sink: &'static str,
    cursors: &Cursors,
    log: LogId,
    log_end: Position,
    mut event_id_at: impl FnMut(Position) -> Result<Uuid, E>,
) -> Result<Result<(), IdentityError>, E> {
    if let Some(stored) = cursors.log {
        if stored != log {
            return Ok(Err(IdentityError::ForeignLog { sink, stored, log }));
        }
    }
    for (&component, cursor) in &cursors.components {
        if cursor.next == Position(0) {
            continue;
        }
        if cursor.next > log_end {
            return Ok(Err(IdentityError::PastEnd {
                sink,
                component,
                cursor: cursor.next,
                log,
                log_end,
            }));
        }
        let (Some(_), Some(expected)) = (cursors.log, cursor.last_event) else {
            return Ok(Err(IdentityError::Unverifiable {
                sink,
                component,
                cursor: cursor.next,
                log,
            }));
        };
        let position = Position(cursor.next.0 - 1);
        let found = event_id_at(position)?;
        if found != expected {
            return Ok(Err(IdentityError::HistoryDiffers {
                sink,
                component,
                position,
                log,
                expected,
                found,
            }));
        }
    }
    Ok(Ok(()))
}
