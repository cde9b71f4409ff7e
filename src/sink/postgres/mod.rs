//! The Postgres projection: read models in PostgreSQL, kept by a sink that follows the log
//! exactly once (design §5, §8).
//!
//! # Layout
//! - [`config`]: where the database is (the bot's `DB_*` variables or `DATABASE_URL`), the pool,
//!   one-line descriptions of connection failures.
//! - [`model`]: the tables (created by the migrations in `migrations/`) and the projection:
//!   loading rows into a [`crate::projection::Projection`], writing its
//!   entries back set-based.
//! - [`verify`]: every row compared with the log projection at the tables' checkpoint (what
//!   `hybridstore-replay --verify` runs).
//! - [`sink`]: [`PgSink`], the read models as a [`crate::sink::Sink`] — one transaction per
//!   batch, rows and checkpoints together.
//! - [`mapping`]: what Postgres cannot hold as it is (U+0000), mapped reversibly.
//!
//! # Invariants
//! - A component's rows and its checkpoint change in the same transaction: every event below the
//!   checkpoint has taken effect once, none above it.
//! - The sink applies the same `Projection::apply` as the log projection, to the rows a batch
//!   touches; the tables therefore equal the log projection at the checkpoint.

pub mod config;
pub mod mapping;
pub mod model;
pub mod sink;
pub mod verify;

pub use config::{describe, PgConfig};
pub use sink::{PgSink, ProjectorConfig};

use sqlx::migrate::Migrator;
use sqlx::PgPool;

use crate::StoreError;

/// The migrations of `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// What went wrong with Postgres.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A configuration value cannot be used.
    #[error("{variable}: {reason}")]
    Config {
        /// The variable or flag.
        variable: String,
        /// Why.
        reason: String,
    },
    /// The first connection failed.
    #[error("cannot connect to Postgres at {target}: {reason}")]
    Connect {
        /// `user@host:port/database`.
        target: String,
        /// The server's or the OS's reason, in one line.
        reason: String,
    },
    /// Applying the migrations failed.
    #[error("migrating the read models failed: {reason}")]
    Migrate {
        /// Why.
        reason: String,
    },
    /// A query failed.
    #[error("{what}: {}", describe(error))]
    Query {
        /// What the query was for.
        what: &'static str,
        /// The driver's error.
        error: sqlx::Error,
    },
    /// A row does not hold a valid entry (edited by hand, or written by another version).
    #[error("a row of {table} is not a valid read-model entry: {reason}")]
    BadRow {
        /// The table.
        table: &'static str,
        /// Why.
        reason: String,
    },
    /// A checkpoint is not where this projector left it: another projector or a rebuild moved
    /// it. The projector re-reads the checkpoints and resumes from there.
    #[error("a projector checkpoint moved under this projector")]
    CheckpointMoved,
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A data directory without a log.
    #[error("no log in {} (expected a directory {})", dir.parent().map_or_else(|| dir.display().to_string(), |p| p.display().to_string()), dir.display())]
    NoLog {
        /// Where the log was looked for.
        dir: std::path::PathBuf,
    },
    /// A component's checkpoint stands past the end of the log: the tables were not projected
    /// from this log (or from a longer copy of it).
    #[error("the {component} checkpoint ({checkpoint}) is beyond the end of the log ({log_end}): this database does not belong to this log")]
    CheckpointBeyondLog {
        /// The component.
        component: crate::ids::Component,
        /// Its checkpoint.
        checkpoint: hybridstore_wal::Position,
        /// The log's durable end.
        log_end: hybridstore_wal::Position,
    },
}

impl PgError {
    /// Whether retrying later may succeed: the server went away, a connection broke, a
    /// transaction lost a serialization race. Anything else (a value Postgres refuses, a bad row,
    /// a missing table) fails the same way again, so a projector stops on it instead of looping.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Query { error, .. } => match error {
                sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    // Connection exceptions, transaction rollbacks (serialization, deadlock),
                    // insufficient resources, operator intervention, system errors.
                    ["08", "40", "53", "57", "58"]
                        .iter()
                        .any(|class| code.starts_with(class))
                }),
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::WorkerCrashed => true,
                _ => false,
            },
            PgError::Connect { .. } | PgError::CheckpointMoved => true,
            _ => false,
        }
    }
}

/// The advisory lock a replay (`hybridstore-replay`) holds while it rebuilds and swaps the
/// tables ("hyreplay"): the supervisor looks for it before taking a Postgres failure for an outage.
pub const REBUILD_LOCK_KEY: i64 = 0x6879_7265_706c_6179;

/// Applies the migrations of `migrations/` that the database has not seen (under Postgres'
/// advisory lock, so concurrent starts are safe). Returns how many were applied.
///
/// # Errors
/// [`PgError::Migrate`] when a migration fails, or one already applied was edited since.
pub async fn migrate(pool: &PgPool) -> Result<usize, PgError> {
    let applied_before = applied_migrations(pool).await;
    MIGRATOR.run(pool).await.map_err(|e| PgError::Migrate {
        reason: match &e {
            sqlx::migrate::MigrateError::Execute(error) => describe(error),
            other => other.to_string(),
        },
    })?;
    let applied_after = applied_migrations(pool).await;
    Ok(applied_after.saturating_sub(applied_before))
}

async fn applied_migrations(pool: &PgPool) -> usize {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map_or(0, |n| usize::try_from(n).unwrap_or(0))
}
