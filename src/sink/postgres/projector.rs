//! The live Postgres projector: follows the durable log from the components' checkpoints and
//! applies each batch of events to the read models in one transaction with the checkpoints.
//!
//! # Protocol (one batch)
//! 1. Gather durable events: up to `batch_events_max`, or what arrived within `batch_delay` of
//!    the first. A batch never spans a component's checkpoint, so every component it applies to
//!    stands at the batch's first position (a component being backfilled catches up alone).
//! 2. `BEGIN`; read the checkpoints `FOR UPDATE`. If one is not where this projector left it
//!    (another projector, or `hybridstore-replay` swapping tables in), roll back, re-read the
//!    checkpoints and resume from them.
//! 3. Load the rows the batch touches, apply the batch with `Projection::apply` (the log
//!    projection's own code), write the changed rows back set-based, insert the batch's messages.
//! 4. Set the checkpoints to the batch's end; `COMMIT`. Killed anywhere before the commit, the
//!    transaction is rolled back and the batch is applied again after restart: exactly once.
//!
//! If Postgres goes away the error is logged, the batch is kept and retried with exponential
//! backoff; the store's appends and log-projection reads never wait for the projector.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hybridstore_wal::Position;
use sqlx::PgPool;
use tokio::sync::watch;

use super::model::{self, MessageRows, Rows};
use super::PgError;
use crate::events::RecordedEvent;
use crate::ids::{Component, ComponentSet};
use crate::projection::Keys;
use crate::projection::Projection;
use crate::store::{Store, Subscription};

/// How the projector batches and retries.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// The components to project (until migration states drive this, a configured list).
    pub components: ComponentSet,
    /// Most events in one transaction.
    pub batch_events_max: usize,
    /// How long a batch waits for more events after its first one.
    pub batch_delay: Duration,
    /// First retry delay after a failure; doubled per failure up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for ProjectorConfig {
    fn default() -> ProjectorConfig {
        ProjectorConfig {
            components: ComponentSet::ALL,
            batch_events_max: 2000,
            batch_delay: Duration::from_millis(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// What the projector has done.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProjectorStatus {
    /// Every event below this position has been committed for every projected component.
    pub committed: Position,
    /// Batches committed since start.
    pub batches: u64,
    /// Events committed since start.
    pub events: u64,
    /// The failure the projector is retrying after, if it is retrying (one line).
    pub retrying_after: Option<String>,
    /// The failure that stopped the projector (the log could not be read), if it stopped.
    pub stopped: Option<String>,
}

/// A running projector; dropping it stops it.
#[derive(Debug)]
pub struct PgProjector {
    status: watch::Receiver<ProjectorStatus>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl PgProjector {
    /// Applies the migrations, then starts following the log of `store` in a task of the current
    /// tokio runtime.
    ///
    /// # Errors
    /// [`PgError::Migrate`] (or a query error) when the schema cannot be brought up to date.
    pub async fn start(
        store: Store,
        pool: PgPool,
        mut config: ProjectorConfig,
    ) -> Result<PgProjector, PgError> {
        config.batch_events_max = config.batch_events_max.max(1);
        super::migrate(&pool).await?;
        let (status_tx, status) = watch::channel(ProjectorStatus::default());
        let (stop, stop_rx) = watch::channel(false);
        let runner = Runner {
            store,
            pool,
            config,
            status: status_tx,
            stop: stop_rx,
            log_failure: None,
        };
        let task = tokio::spawn(runner.run());
        Ok(PgProjector {
            status,
            stop,
            task: Some(task),
        })
    }

    /// The current status.
    pub fn status(&self) -> ProjectorStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change (each committed batch).
    pub fn watch(&self) -> watch::Receiver<ProjectorStatus> {
        self.status.clone()
    }

    /// Waits until every event below `position` is committed, up to `timeout`. Returns whether
    /// it was.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> bool {
        let mut status = self.status.clone();
        let reached = tokio::time::timeout(timeout, async {
            match status
                .wait_for(|s| s.committed >= position || s.stopped.is_some())
                .await
            {
                Ok(s) => s.committed >= position,
                Err(_) => false,
            }
        })
        .await;
        reached.unwrap_or(false)
    }

    /// Stops the projector after its current statement (an uncommitted batch is rolled back and
    /// applied again by the next projector).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PgProjector {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Runner {
    store: Store,
    pool: PgPool,
    config: ProjectorConfig,
    status: watch::Sender<ProjectorStatus>,
    stop: watch::Receiver<bool>,
    /// The log could not be read past the pending events: they are projected, then the
    /// projector stops with this.
    log_failure: Option<String>,
}

/// Why the inner loop returned.
enum Restart {
    /// Re-read the checkpoints and resubscribe.
    Resync,
    /// Stop for good.
    Stop,
}

impl Runner {
    async fn run(mut self) {
        let mut backoff = self.config.backoff_min;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let cursors = {
                let mut conn = match self.pool.acquire().await {
                    Ok(conn) => conn,
                    Err(error) => {
                        let error = PgError::Query {
                            what: "connect",
                            error,
                        };
                        if !self.retry_after(&error, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                };
                match model::checkpoints(&mut conn, false).await {
                    Ok(found) => self
                        .config
                        .components
                        .iter()
                        .map(|c| (c, found.get(&c).copied().unwrap_or(Position(0))))
                        .collect::<HashMap<Component, Position>>(),
                    Err(error) => {
                        if !self.retry_after(&error, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            };
            // Where the tables stand is already committed (a projector started on caught-up
            // tables has nothing to do, and `wait_for` must say so).
            let standing = cursors.values().copied().min().unwrap_or(Position(0));
            self.status.send_modify(|s| s.committed = standing);
            if cursors.is_empty() {
                // Nothing to project: wait for the stop.
                let _ = self.stop.wait_for(|s| *s).await;
                return;
            }
            match self.follow(cursors, &mut backoff).await {
                Restart::Resync => continue,
                Restart::Stop => return,
            }
        }
    }

    /// Logs a transient failure and sleeps the backoff (doubling it); stops on a failure that
    /// would repeat. Returns false if the projector stops.
    async fn retry_after(&mut self, error: &PgError, backoff: &mut Duration) -> bool {
        let line = error.to_string();
        if !error.is_transient() {
            self.stopped(&format!("{line} (not retried: it would fail the same way)"));
            return false;
        }
        tracing::warn!(error = %line, retry_in_ms = backoff.as_millis() as u64, "Postgres projector failed; retrying");
        self.status
            .send_modify(|s| s.retrying_after = Some(line.clone()));
        let sleep = *backoff;
        *backoff = (*backoff * 2).min(self.config.backoff_max);
        tokio::select! {
            () = tokio::time::sleep(sleep) => true,
            _ = self.stop.wait_for(|s| *s) => false,
        }
    }

    async fn follow(
        &mut self,
        mut cursors: HashMap<Component, Position>,
        backoff: &mut Duration,
    ) -> Restart {
        let start = cursors.values().copied().min().unwrap_or(Position(0));
        let mut subscription = match self.store.subscribe(start) {
            Ok(s) => s,
            Err(error) => {
                self.stopped(&error.to_string());
                return Restart::Stop;
            }
        };
        let mut pending: Vec<RecordedEvent> = Vec::new();
        loop {
            if pending.is_empty() {
                if let Some(failure) = self.log_failure.take() {
                    self.stopped(&failure);
                    return Restart::Stop;
                }
            }
            if !self.fill(&mut subscription, &mut pending).await {
                return Restart::Stop;
            }
            let first = pending[0].position;
            let active = ComponentSet::of(
                cursors
                    .iter()
                    .filter(|(_, at)| **at <= first)
                    .map(|(c, _)| *c),
            );
            let boundary = cursors
                .values()
                .copied()
                .filter(|at| *at > first)
                .min()
                .unwrap_or(Position(u64::MAX));
            let take = pending
                .iter()
                .take(self.config.batch_events_max)
                .take_while(|e| e.position < boundary)
                .count();
            let end = pending[take - 1].position.advance(1);
            match apply_batch(&self.pool, &pending[..take], active, first, end).await {
                Ok(()) => {
                    for component in active.iter() {
                        cursors.insert(component, end);
                    }
                    pending.drain(..take);
                    *backoff = self.config.backoff_min;
                    let committed = cursors.values().copied().min().unwrap_or(end);
                    self.status.send_modify(|s| {
                        if s.retrying_after.take().is_some() {
                            tracing::info!(position = %end, "Postgres projector resumed");
                        }
                        s.committed = committed;
                        s.batches += 1;
                        s.events += take as u64;
                    });
                }
                Err(PgError::CheckpointMoved) => {
                    tracing::info!("a projector checkpoint moved (a replay swapped tables in?); resuming from the checkpoints");
                    return Restart::Resync;
                }
                Err(PgError::Store(error)) => {
                    self.stopped(&error.to_string());
                    return Restart::Stop;
                }
                Err(error) => {
                    if !self.retry_after(&error, backoff).await {
                        return Restart::Stop;
                    }
                }
            }
        }
    }

    /// Tops `pending` up to a batch: waits for a first event, then takes what arrives within the
    /// batch delay. Returns false when stopped or the store closed.
    async fn fill(
        &mut self,
        subscription: &mut Subscription,
        pending: &mut Vec<RecordedEvent>,
    ) -> bool {
        let max = self.config.batch_events_max;
        if pending.is_empty() {
            let next = tokio::select! {
                next = subscription.next() => next,
                _ = self.stop.wait_for(|s| *s) => return false,
            };
            match next {
                Some(Ok(event)) => pending.push(event),
                Some(Err(error)) => {
                    self.stopped(&error.to_string());
                    return false;
                }
                None => {
                    self.stopped("the store closed");
                    return false;
                }
            }
        }
        let deadline = Instant::now() + self.config.batch_delay;
        while pending.len() < max {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, subscription.next()).await {
                Ok(Some(Ok(event))) => pending.push(event),
                Ok(Some(Err(error))) => {
                    // Project what came before the unreadable record first, then stop.
                    self.log_failure = Some(error.to_string());
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        true
    }

    fn stopped(&self, reason: &str) {
        tracing::error!(reason, "Postgres projector stopped");
        self.status
            .send_modify(|s| s.stopped = Some(reason.to_owned()));
    }
}

/// Applies `batch` (positions `first..end`) to the components of `active`, whose checkpoints must
/// all be `first`, in one transaction with their new checkpoints.
async fn apply_batch(
    pool: &PgPool,
    batch: &[RecordedEvent],
    active: ComponentSet,
    first: Position,
    end: Position,
) -> Result<(), PgError> {
    let query = |what| move |error| PgError::Query { what, error };
    let mut tx = pool.begin().await.map_err(query("begin"))?;
    let found = model::checkpoints(&mut tx, true).await?;
    // Every component has a row (the migration creates them): a missing one could not be
    // locked against a concurrent rebuild, so it is refused rather than taken as 0.
    if let Some(missing) = active.iter().find(|c| !found.contains_key(c)) {
        return Err(PgError::BadRow {
            table: "projector_checkpoints",
            reason: format!("no row for the component {missing}"),
        });
    }
    if active.iter().any(|c| found.get(&c) != Some(&first)) {
        return Err(PgError::CheckpointMoved);
    }
    let mut keys = Keys::default();
    for event in batch {
        keys.note(event, active);
    }
    // The message tail is not kept here: messages go to their own table from the events.
    let mut projection = Projection::with_components(0, active);
    model::load(&mut tx, Rows::Of(&keys), &mut projection).await?;
    let prior = projection.clone();
    for event in batch {
        projection.apply(event);
    }
    model::write(&mut tx, &projection, &keys, Some(&prior)).await?;
    if active.contains(Component::Conversations) {
        let mut messages = MessageRows::default();
        for event in batch {
            messages.push(event);
        }
        messages.retain_uncleared(&projection);
        messages.insert(&mut tx).await?;
    }
    model::set_checkpoints(&mut tx, active, end).await?;
    tx.commit().await.map_err(query("commit"))?;
    Ok(())
}
