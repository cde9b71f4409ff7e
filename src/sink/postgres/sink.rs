//! [`PgSink`]: the Postgres read models as a [`Sink`].
//!
//! # One batch, one transaction
//! 1. `BEGIN`; read the checkpoints `FOR UPDATE`. If a component of the batch does not stand at
//!    the batch's first position (another projector, or `hybridstore-replay` swapping tables in),
//!    roll back: the runner reloads the cursors and resumes from them.
//! 2. Load the rows the batch touches ([`Keys`]), apply the batch with `Projection::apply` (the
//!    log projection's own code), write the changed rows back set-based, insert the batch's
//!    messages.
//! 3. Set the checkpoints to the batch's end, with the log's id and the last event's id;
//!    `COMMIT`. Killed anywhere before the commit, the transaction rolls back and the batch is
//!    applied again after restart: exactly once.

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use sqlx::PgPool;

use super::model::{self, MessageRows, Rows};
use super::PgError;
use crate::ids::{Component, ComponentSet};
use crate::projection::{Keys, Projection};
use crate::sink::runner::{self, RunnerConfig, SinkHandle};
use crate::sink::{Batch, Cursors, Sink, SinkError, SinkErrorKind};
use crate::store::Store;

/// What the Postgres sink projects and how its runner batches.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// The components to project (until migration states drive this, a configured list).
    pub components: ComponentSet,
    /// Batching and retries.
    pub runner: RunnerConfig,
}

impl Default for ProjectorConfig {
    fn default() -> ProjectorConfig {
        ProjectorConfig {
            components: ComponentSet::ALL,
            runner: RunnerConfig::default(),
        }
    }
}

/// The Postgres read models as a sink.
#[derive(Debug, Clone)]
pub struct PgSink {
    pool: PgPool,
    components: ComponentSet,
}

impl PgSink {
    /// A sink of `components` into the database of `pool` (migrated already).
    pub fn new(pool: PgPool, components: ComponentSet) -> PgSink {
        PgSink { pool, components }
    }

    /// Applies the migrations, then starts the sink following the log of `store` in a task of
    /// the current tokio runtime.
    ///
    /// # Errors
    /// [`PgError::Migrate`] (or a query error) when the schema cannot be brought up to date.
    pub async fn start(
        store: Store,
        pool: PgPool,
        config: ProjectorConfig,
    ) -> Result<SinkHandle, PgError> {
        super::migrate(&pool).await?;
        let sink = PgSink::new(pool, config.components);
        Ok(runner::start(store, sink, config.runner))
    }
}

impl From<PgError> for SinkError {
    fn from(error: PgError) -> SinkError {
        let kind = match &error {
            PgError::CheckpointMoved => SinkErrorKind::CursorsMoved,
            other if other.is_transient() => SinkErrorKind::Transient,
            _ => SinkErrorKind::Permanent,
        };
        SinkError {
            kind,
            message: error.to_string(),
        }
    }
}

impl Sink for PgSink {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn components(&self) -> ComponentSet {
        self.components
    }

    fn load_cursors(&mut self) -> BoxFuture<'_, Result<Cursors, SinkError>> {
        async move {
            let mut conn = self.pool.acquire().await.map_err(|error| PgError::Query {
                what: "connect",
                error,
            })?;
            Ok(model::cursors(&mut conn, false).await?)
        }
        .boxed()
    }

    fn commit<'a>(&'a mut self, batch: &'a Batch<'a>) -> BoxFuture<'a, Result<(), SinkError>> {
        async move { Ok(commit_batch(&self.pool, batch).await?) }.boxed()
    }

    fn probe(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        async move {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map_err(|error| PgError::Query {
                    what: "probe",
                    error,
                })?;
            Ok(())
        }
        .boxed()
    }
}

/// Applies `batch` to its components, whose checkpoints must all stand at `batch.first`, in one
/// transaction with their new checkpoints.
async fn commit_batch(pool: &PgPool, batch: &Batch<'_>) -> Result<(), PgError> {
    let query = |what| move |error| PgError::Query { what, error };
    let active = batch.components;
    let mut tx = pool.begin().await.map_err(query("begin"))?;
    let found = model::cursors(&mut tx, true).await?;
    // Every component has a row (the migration creates them): a missing one could not be
    // locked against a concurrent rebuild, so it is refused rather than taken as 0.
    if let Some(missing) = active.iter().find(|c| !found.components.contains_key(c)) {
        return Err(PgError::BadRow {
            table: "projector_checkpoints",
            reason: format!("no row for the component {missing}"),
        });
    }
    if active.iter().any(|c| found.get(c).next != batch.first)
        || found.log.is_some_and(|log| log != batch.log)
    {
        return Err(PgError::CheckpointMoved);
    }
    let mut keys = Keys::default();
    for event in batch.events {
        keys.note(event, active);
    }
    // The message tail is not kept here: messages go to their own table from the events.
    let mut projection = Projection::with_components(0, active);
    model::load(&mut tx, Rows::Of(&keys), &mut projection).await?;
    let prior = projection.clone();
    for event in batch.events {
        projection.apply(event);
    }
    model::write(&mut tx, &projection, &keys, Some(&prior)).await?;
    if !keys.erasures.is_empty() {
        crate::read::shadow::forget_erased(&mut tx, &keys.erasures)
            .await
            .map_err(query("forget erased shadow mismatches"))?;
    }
    if active.contains(Component::Conversations) {
        let mut messages = MessageRows::default();
        for event in batch.events {
            messages.push(event);
        }
        messages.retain_uncleared(&projection);
        messages.insert(&mut tx).await?;
    }
    model::set_cursors(&mut tx, active, batch.log, batch.cursor()).await?;
    tx.commit().await.map_err(query("commit"))?;
    Ok(())
}
