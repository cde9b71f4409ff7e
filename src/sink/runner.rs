//! The loop every sink runs in.
//!
//! # Protocol
//! 1. Load the sink's cursors and check them against the log ([`super::check_identity`]): cursors
//!    of another log, past the log's end, or at a position where the log now holds another event
//!    stop the runner at once with [`StopReason::Identity`]. It never skips events and never
//!    interleaves two histories.
//! 2. Subscribe to the store from the lowest cursor.
//! 3. Gather a batch: up to `batch_events_max` durable events, or what arrived within
//!    `batch_delay` of the first. A batch never spans a component's cursor, so every component
//!    it applies to stands at the batch's first position (a component being backfilled catches
//!    up alone; the others wait at their cursors, then go on with it).
//! 4. [`Sink::commit`] the batch. On success every component of the batch moves to its end and
//!    the status is published. A transient failure is retried with exponential backoff (the
//!    batch is kept; the sink is probed before each retry); moved cursors are reloaded
//!    (step 1); a permanent failure stops the runner with [`StopReason::Sink`].
//!
//! The store never waits for a sink: appends and log-projection reads go on while a sink is
//! behind, retrying or stopped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hybridstore_wal::{LogId, Position};
use serde::Serialize;
use tokio::sync::watch;

use super::{
    check_identity, Batch, Cursor, Cursors, IdentityError, Sink, SinkError, SinkErrorKind,
};
use crate::events::RecordedEvent;
use crate::ids::{Component, ComponentSet, Timestamp};
use crate::read::reached;
use crate::store::{Store, Subscription};
use crate::StoreError;

/// How the runner batches and retries.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most events in one batch.
    pub batch_events_max: usize,
    /// How long a batch waits for more events after its first one.
    pub batch_delay: Duration,
    /// First retry delay after a transient failure; doubled per failure up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for RunnerConfig {
    fn default() -> RunnerConfig {
        RunnerConfig {
            batch_events_max: 2000,
            batch_delay: Duration::from_millis(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// The last failure a component's batches met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// What kind of failure.
    pub kind: SinkErrorKind,
    /// One line.
    pub message: String,
    /// When it first happened (failures of the same batch that follow keep this time).
    pub since: Timestamp,
}

/// Where one component of a sink stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentStatus {
    /// Every event below this position is committed in the sink for the component.
    pub committed: Position,
    /// The failure the component's batches are retrying after (cleared by the next commit).
    pub last_error: Option<LastError>,
}

impl ComponentStatus {
    /// Events durable in the log but not yet committed here, given the log's durable end.
    pub fn lag(&self, durable_end: Position) -> u64 {
        durable_end.0.saturating_sub(self.committed.0)
    }
}

/// Why a runner stopped for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StopReason {
    /// The sink's cursors cannot be followed on this log.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The sink failed in a way that would repeat.
    #[error("{0} (not retried: it would fail the same way)")]
    Sink(String),
    /// The log could not be read (a damaged segment, a record that does not decode); every
    /// event before it was applied.
    #[error("the log cannot be read: {0}")]
    Log(String),
    /// The store closed under the runner.
    #[error("the store closed")]
    StoreClosed,
}

/// What a runner has done, published after every change.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct SinkStatus {
    /// The sink's name.
    pub sink: &'static str,
    /// Every event below this position is committed for every component of the sink.
    pub committed: Position,
    /// Per component.
    pub components: BTreeMap<Component, ComponentStatus>,
    /// Batches committed since start.
    pub batches: u64,
    /// Events committed since start.
    pub events: u64,
    /// Whether the runner is waiting to retry a transient failure.
    pub retrying: bool,
    /// Whether the sink's cursors were loaded (until then `committed` is not where it stands).
    pub loaded: bool,
    /// Why the runner stopped, if it did.
    #[serde(serialize_with = "serialize_display")]
    pub stopped: Option<StopReason>,
}

fn serialize_display<S: serde::Serializer>(
    value: &Option<StopReason>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(reason) => serializer.serialize_some(&reason.to_string()),
        None => serializer.serialize_none(),
    }
}

impl SinkStatus {
    /// The failure the runner is retrying after, if it is retrying (one line).
    pub fn retrying_after(&self) -> Option<&str> {
        if !self.retrying {
            return None;
        }
        self.components
            .values()
            .filter_map(|c| c.last_error.as_ref())
            .map(|e| e.message.as_str())
            .next()
    }
}

/// A running sink; dropping it stops it.
#[derive(Debug)]
pub struct SinkHandle {
    status: watch::Receiver<SinkStatus>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts `sink` following the log of `store`, in a task of the current tokio runtime.
pub fn start(store: Store, sink: impl Sink, mut config: RunnerConfig) -> SinkHandle {
    config.batch_events_max = config.batch_events_max.max(1);
    let status = SinkStatus {
        sink: sink.name(),
        components: sink
            .components()
            .iter()
            .map(|c| {
                let standing = ComponentStatus {
                    committed: Position(0),
                    last_error: None,
                };
                (c, standing)
            })
            .collect(),
        ..SinkStatus::default()
    };
    let (status_tx, status_rx) = watch::channel(status);
    let (stop, stop_rx) = watch::channel(false);
    let runner = Runner {
        log: store.log_id(),
        store,
        sink,
        config,
        status: status_tx,
        stop: stop_rx,
        log_failure: None,
    };
    let task = tokio::spawn(runner.run());
    SinkHandle {
        status: status_rx,
        stop,
        task: Some(task),
    }
}

impl SinkHandle {
    /// The current status.
    pub fn status(&self) -> SinkStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change (each committed batch).
    pub fn watch(&self) -> watch::Receiver<SinkStatus> {
        self.status.clone()
    }

    /// Waits until the event at `position` is committed for every component (the one
    /// read-your-writes rule, [`reached`]), up to `timeout`. Returns whether it was; a stopped
    /// runner answers at once.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> bool {
        let mut status = self.status.clone();
        let reached_it = tokio::time::timeout(timeout, async {
            match status
                .wait_for(|s| reached(s.committed, position) || s.stopped.is_some())
                .await
            {
                Ok(s) => reached(s.committed, position),
                Err(_) => false,
            }
        })
        .await;
        reached_it.unwrap_or(false)
    }

    /// Stops the runner after its current step (an uncommitted batch is applied again by the
    /// next runner, from the sink's cursors).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// [`SinkHandle::stop`], but a step still running after `grace` (a commit to a backend that
    /// stopped answering) is aborted: its batch was not committed, and the next runner applies it
    /// again from the sink's cursors.
    pub async fn stop_within(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                tracing::warn!(
                    sink = self.status.borrow().sink,
                    ?grace,
                    "a sink step outlived the stop's grace; aborted"
                );
                task.abort();
                let _ = task.await;
            }
        }
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Runner<S> {
    store: Store,
    log: LogId,
    sink: S,
    config: RunnerConfig,
    status: watch::Sender<SinkStatus>,
    stop: watch::Receiver<bool>,
    /// The log could not be read past the pending events: they are applied, then the runner
    /// stops with this.
    log_failure: Option<String>,
}

/// Why the following loop returned.
enum Restart {
    /// Reload the cursors and resubscribe.
    Resync,
    /// Stop for good.
    Stop,
}

impl<S: Sink> Runner<S> {
    async fn run(mut self) {
        let mut backoff = self.config.backoff_min;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let cursors = match self.sink.load_cursors().await {
                Ok(cursors) => cursors,
                Err(error) => {
                    let all = self.sink.components();
                    if !self.retry_after(&error, all, &mut backoff).await {
                        return;
                    }
                    continue;
                }
            };
            match self.check(&cursors).await {
                Ok(()) => {}
                Err(reason) => {
                    self.stopped(reason);
                    return;
                }
            }
            let cursors: BTreeMap<Component, Cursor> = self
                .sink
                .components()
                .iter()
                .map(|c| (c, cursors.get(c)))
                .collect();
            // Where the sink stands is already committed (a sink started caught up has
            // nothing to do, and `wait_for` must say so).
            self.publish_cursors(&cursors);
            if cursors.is_empty() {
                let _ = self.stop.wait_for(|s| *s).await;
                return;
            }
            match self.follow(cursors, &mut backoff).await {
                Restart::Resync => continue,
                Restart::Stop => return,
            }
        }
    }

    /// Step 1: the cursors belong to this log and to its history.
    async fn check(&self, cursors: &Cursors) -> Result<(), StopReason> {
        let log_end = self.store.durable_end();
        let mut ids = BTreeMap::new();
        for cursor in cursors.components.values() {
            if cursor.next > Position(0) && cursor.next <= log_end {
                let at = Position(cursor.next.0 - 1);
                let event = self
                    .store
                    .read_all(at, 1)
                    .await
                    .map_err(|e| StopReason::Log(e.to_string()))?;
                if let Some(event) = event.first() {
                    ids.insert(at, event.event_id);
                }
            }
        }
        let checked = check_identity(self.sink.name(), cursors, self.log, log_end, |at| {
            ids.get(&at)
                .copied()
                .ok_or_else(|| StopReason::Log(format!("no event at position {at}")))
        })?;
        checked.map_err(StopReason::from)
    }

    fn publish_cursors(&self, cursors: &BTreeMap<Component, Cursor>) {
        let committed = lowest(cursors);
        self.status.send_modify(|s| {
            s.committed = committed;
            s.loaded = true;
            for (component, cursor) in cursors {
                s.components
                    .entry(*component)
                    .or_insert(ComponentStatus {
                        committed: cursor.next,
                        last_error: None,
                    })
                    .committed = cursor.next;
            }
        });
    }

    /// Records a failure of a batch of `components`; sleeps the backoff (doubling it) if it may
    /// pass later, stops if it would repeat. Returns false if the runner stops.
    async fn retry_after(
        &mut self,
        error: &SinkError,
        components: ComponentSet,
        backoff: &mut Duration,
    ) -> bool {
        if error.kind == SinkErrorKind::Permanent {
            self.stopped(StopReason::Sink(error.message.clone()));
            return false;
        }
        tracing::warn!(
            sink = self.sink.name(),
            error = %error.message,
            retry_in_ms = backoff.as_millis() as u64,
            "sink failed; retrying"
        );
        let now = Timestamp::now();
        self.status.send_modify(|s| {
            s.retrying = true;
            for component in components.iter() {
                if let Some(c) = s.components.get_mut(&component) {
                    let since = c
                        .last_error
                        .as_ref()
                        .filter(|e| e.kind == error.kind)
                        .map_or(now, |e| e.since);
                    c.last_error = Some(LastError {
                        kind: error.kind,
                        message: error.message.clone(),
                        since,
                    });
                }
            }
        });
        let sleep = *backoff;
        *backoff = (*backoff * 2).min(self.config.backoff_max);
        let slept = tokio::select! {
            () = tokio::time::sleep(sleep) => true,
            _ = self.stop.wait_for(|s| *s) => false,
        };
        // A probe that fails only costs the next backoff; one that passes is no promise, so the
        // batch itself decides.
        if slept {
            if let Err(probe) = self.sink.probe().await {
                tracing::debug!(sink = self.sink.name(), error = %probe, "probe failed");
            }
        }
        slept
    }

    async fn follow(
        &mut self,
        mut cursors: BTreeMap<Component, Cursor>,
        backoff: &mut Duration,
    ) -> Restart {
        let start = lowest(&cursors);
        // A failure met before a resync belongs to the old subscription: the new one reads the
        // log again from the cursors and meets it again if it is still there.
        self.log_failure = None;
        let mut subscription = match self.store.subscribe(start) {
            Ok(s) => s,
            Err(error) => {
                self.stopped(StopReason::Log(error.to_string()));
                return Restart::Stop;
            }
        };
        let mut pending: Vec<RecordedEvent> = Vec::new();
        loop {
            if pending.is_empty() {
                if let Some(failure) = self.log_failure.take() {
                    self.stopped(StopReason::Log(failure));
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
                    .filter(|(_, c)| c.next <= first)
                    .map(|(component, _)| *component),
            );
            let boundary = cursors
                .values()
                .map(|c| c.next)
                .filter(|next| *next > first)
                .min()
                .unwrap_or(Position(u64::MAX));
            let take = pending
                .iter()
                .take(self.config.batch_events_max)
                .take_while(|e| e.position < boundary)
                .count();
            let batch = Batch {
                log: self.log,
                events: &pending[..take],
                components: active,
                first,
            };
            let cursor = batch.cursor();
            match self.sink.commit(&batch).await {
                Ok(()) => {
                    for component in active.iter() {
                        cursors.insert(component, cursor);
                    }
                    pending.drain(..take);
                    *backoff = self.config.backoff_min;
                    self.committed(&cursors, active, take as u64);
                }
                Err(error) if error.kind == SinkErrorKind::CursorsMoved => {
                    tracing::info!(
                        sink = self.sink.name(),
                        "the sink's cursors moved (a replay swapped tables in?); resuming from them"
                    );
                    return Restart::Resync;
                }
                Err(error) => {
                    if !self.retry_after(&error, active, backoff).await {
                        return Restart::Stop;
                    }
                }
            }
        }
    }

    fn committed(&self, cursors: &BTreeMap<Component, Cursor>, active: ComponentSet, events: u64) {
        let committed = lowest(cursors);
        self.status.send_modify(|s| {
            if s.retrying {
                tracing::info!(sink = s.sink, position = %committed, "sink resumed");
            }
            s.retrying = false;
            s.committed = committed;
            for component in active.iter() {
                if let Some(c) = s.components.get_mut(&component) {
                    c.committed = cursors.get(&component).map_or(c.committed, |c| c.next);
                    c.last_error = None;
                }
            }
            s.batches += 1;
            s.events += events;
        });
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
                    self.stopped(stop_reason_of(&error));
                    return false;
                }
                None => {
                    self.stopped(StopReason::StoreClosed);
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
                    // Apply what came before the unreadable record first, then stop.
                    self.log_failure = Some(error.to_string());
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        true
    }

    fn stopped(&self, reason: StopReason) {
        tracing::error!(sink = self.sink.name(), %reason, "sink stopped");
        self.status.send_modify(|s| {
            s.retrying = false;
            s.stopped = Some(reason);
        });
    }
}

/// Where the slowest component stands: every event below it is committed for all of them.
fn lowest(cursors: &BTreeMap<Component, Cursor>) -> Position {
    cursors
        .values()
        .map(|c| c.next)
        .min()
        .unwrap_or(Position(0))
}

fn stop_reason_of(error: &StoreError) -> StopReason {
    match error {
        StoreError::Closed => StopReason::StoreClosed,
        other => StopReason::Log(other.to_string()),
    }
}
