//! The supervisor: what runs because of the migration states, in the process that owns the log.
//!
//! # What it does, each round (every [`SupervisorConfig::poll`], or at once when kicked)
//! 1. Computes the components some bot has at `enabled` or later (plus `configuration`, whose
//!    `component_states` table tells a reader without a data directory the states). When that set
//!    changed, it stops the Postgres projector (and the cache invalidation that follows it) and
//!    starts them for the new set: each component resumes from its own checkpoint, so a newly
//!    enabled one backfills from the start of the log while the others wait at theirs.
//! 2. Publishes the projector's status on one receiver that outlives the restarts
//!    ([`Supervisor::watch`]), which the Postgres read source waits on.
//! 3. Starts a fresh shadow window for every component that entered `dual-write` since it last
//!    looked, and adds this process's shadow outcomes to the table.
//! 4. Probes Postgres every [`SupervisorConfig::health_interval`]. A failed probe (after
//!    [`SupervisorConfig::failures_to_trip`] in a row) or a failure a read reported marks Postgres
//!    down, and every (bot, component) at `database-only` is rolled back to `dual-write` by an
//!    `automatic` transition naming the reason — unless Postgres answers and a replay holds its
//!    rebuild lock: then reads go to the log projection while the replay swaps tables, with no
//!    rollback. A probe that succeeds marks Postgres up again; going forward again is the
//!    operator's call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use hybridstore_wal::Position;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch, Notify};

use crate::ids::{BotId, Component, ComponentSet, MigrationState};
use crate::migration::{SetStateError, TransitionError};
use crate::read::cache::Cache;
use crate::read::router::{PgFailure, PgHealth};
use crate::read::shadow::{self, ShadowStats};
use crate::sink::cache::{CacheSink, CacheSinkConfig};
use crate::sink::postgres::{PgSink, ProjectorConfig, REBUILD_LOCK_KEY};
use crate::sink::{RunnerConfig, SinkHandle, SinkStatus};
use crate::store::Store;

/// How the supervisor runs.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Batching and retries of the projector.
    pub runner: RunnerConfig,
    /// How often it looks at the states when not kicked.
    pub poll: Duration,
    /// How often it probes Postgres.
    pub health_interval: Duration,
    /// A probe not answered in this time failed.
    pub probe_timeout: Duration,
    /// Failed probes in a row that mark Postgres down.
    pub failures_to_trip: u32,
}

impl Default for SupervisorConfig {
    fn default() -> SupervisorConfig {
        SupervisorConfig {
            runner: RunnerConfig::default(),
            poll: Duration::from_millis(250),
            health_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(1),
            failures_to_trip: 2,
        }
    }
}

/// A running supervisor; dropping it stops it.
#[derive(Debug)]
pub struct Supervisor {
    status: watch::Receiver<SinkStatus>,
    /// The statuses of the sinks running now (the projector, the cache invalidation).
    sinks: Arc<std::sync::Mutex<Vec<watch::Receiver<SinkStatus>>>>,
    /// Rounds finished.
    rounds: watch::Receiver<u64>,
    kick: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the supervisor needs.
#[derive(Debug)]
pub struct Parts {
    /// The store whose log the projector follows and whose states it reads.
    pub store: Store,
    /// Postgres: the projector, the shadow counts, the window resets.
    pub pool: PgPool,
    /// A pool of its own (one connection) for the health probe, so that a pool busy with the
    /// projector or with reads never makes a healthy Postgres look down (and roll back every
    /// `database-only` component).
    pub probe_pool: PgPool,
    /// The cache whose entries the invalidation drops, if configured.
    pub cache: Option<Cache>,
    /// Postgres's health, shared with the router.
    pub health: Arc<PgHealth>,
    /// The failures reads report.
    pub failures: mpsc::UnboundedReceiver<PgFailure>,
    /// The shadow outcomes to flush.
    pub shadow: Arc<ShadowStats>,
}

impl Supervisor {
    /// Starts the supervisor in a task of the current tokio runtime.
    pub fn start(parts: Parts, config: SupervisorConfig) -> Supervisor {
        let (status_tx, status) = watch::channel(SinkStatus {
            sink: "postgres",
            ..SinkStatus::default()
        });
        let kick = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let (rounds_tx, rounds) = watch::channel(0);
        let sinks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let run = Run {
            sinks: sinks.clone(),
            rounds: rounds_tx,
            parts,
            config,
            status: status_tx,
            running: None,
            windows: BTreeSet::new(),
            probe_failures: 0,
            last_probe: None,
        };
        let task = tokio::spawn(run.run(kick.clone(), stop_rx));
        Supervisor {
            status,
            sinks,
            rounds,
            kick,
            stop,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// The projector's status (its components, where each stands, its last error).
    pub fn status(&self) -> SinkStatus {
        self.status.borrow().clone()
    }

    /// The status of every sink running now: the Postgres projector, and the cache
    /// invalidation when a cache is configured (none while no component projects).
    pub fn sink_statuses(&self) -> Vec<SinkStatus> {
        self.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|s| s.borrow().clone())
            .collect()
    }

    /// A receiver of the projector's status that outlives its restarts.
    pub fn watch(&self) -> watch::Receiver<SinkStatus> {
        self.status.clone()
    }

    /// Looks at the states again now (after a transition).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Waits until a round has run after this call (the projector runs for the states as they
    /// are now) and the projector has loaded its checkpoints (its status says where it stands),
    /// at most `timeout` in all.
    pub async fn settle(&self, timeout: Duration) {
        let mut rounds = self.rounds.clone();
        let mut status = self.status.clone();
        // The round running now may have read the states before the call: wait for the one
        // after it, which starts after the call.
        let after = *rounds.borrow_and_update() + 2;
        self.kick();
        let _ = tokio::time::timeout(timeout, async {
            if rounds.wait_for(|n| *n >= after).await.is_err() {
                return;
            }
            let _ = status
                .wait_for(|s| {
                    s.loaded || s.components.is_empty() || s.retrying || s.stopped.is_some()
                })
                .await;
        })
        .await;
    }

    /// Stops the supervisor, the projector and the invalidation, and flushes the shadow
    /// outcomes (once; later calls return at once).
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The projector (and the invalidation following it) for one set of components.
struct Running {
    components: ComponentSet,
    projector: SinkHandle,
    forward: tokio::task::JoinHandle<()>,
    invalidation: Option<SinkHandle>,
}

struct Run {
    sinks: Arc<std::sync::Mutex<Vec<watch::Receiver<SinkStatus>>>>,
    rounds: watch::Sender<u64>,
    parts: Parts,
    config: SupervisorConfig,
    status: watch::Sender<SinkStatus>,
    running: Option<Running>,
    /// (bot, component, position of the transition into dual-write) whose window was reset.
    windows: BTreeSet<(BotId, Component, Position)>,
    probe_failures: u32,
    last_probe: Option<tokio::time::Instant>,
}

impl Run {
    async fn run(mut self, kick: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        loop {
            self.round().await;
            tokio::select! {
                _ = stop.changed() => break,
                () = kick.notified() => {}
                () = tokio::time::sleep(self.config.poll) => {}
                Some(failure) = self.parts.failures.recv() => {
                    // Failures queued meanwhile are the same outage: act once.
                    while self.parts.failures.try_recv().is_ok() {}
                    self.on_read_failure(&failure).await;
                }
            }
        }
        if let Some(running) = self.running.take() {
            self.sinks.lock().unwrap_or_else(|p| p.into_inner()).clear();
            stop_running(running).await;
        }
        let _ = self.parts.shadow.flush(&self.parts.pool).await;
    }

    async fn round(&mut self) {
        let states = match self
            .parts
            .store
            .read_projection(None, |p| {
                p.component_states_iter()
                    .map(|(bot, component, state)| ((bot.clone(), component), state))
                    .collect::<BTreeMap<_, _>>()
            })
            .await
        {
            Ok(states) => states,
            Err(error) => {
                tracing::warn!(%error, "supervisor: the component states cannot be read");
                return;
            }
        };
        self.reconcile(&states).await;
        self.check_stopped().await;
        self.reset_windows(&states).await;
        if let Err(error) = self.parts.shadow.flush(&self.parts.pool).await {
            tracing::debug!(%error, "supervisor: shadow outcomes not flushed yet");
        }
        let due = self
            .last_probe
            .is_none_or(|at| at.elapsed() >= self.config.health_interval);
        if due {
            self.last_probe = Some(tokio::time::Instant::now());
            self.probe().await;
        }
        // A round ran: wake whoever waits to see one ([`Supervisor::settle`]).
        self.rounds.send_modify(|n| *n += 1);
    }

    /// Runs the projector for the components the states want.
    async fn reconcile(&mut self, states: &BTreeMap<(BotId, Component), MigrationState>) {
        let mut wanted = ComponentSet::NONE;
        for ((_, component), state) in states {
            if state.projects() {
                wanted = wanted.with(*component);
            }
        }
        // Configuration (with the `component_states` table a replica routes by) is projected
        // once any state was ever set, so a step back to `disabled` reaches the table too.
        if !states.is_empty() {
            wanted = wanted.with(Component::Configuration);
        }
        let current = self.running.as_ref().map(|r| r.components);
        if current == Some(wanted) || (current.is_none() && wanted.is_empty()) {
            return;
        }
        if let Some(running) = self.running.take() {
            self.sinks.lock().unwrap_or_else(|p| p.into_inner()).clear();
            stop_running(running).await;
        }
        if wanted.is_empty() {
            self.status.send_replace(SinkStatus {
                sink: "postgres",
                ..SinkStatus::default()
            });
            return;
        }
        let config = ProjectorConfig {
            components: wanted,
            runner: self.config.runner.clone(),
        };
        let projector =
            match PgSink::start(self.parts.store.clone(), self.parts.pool.clone(), config).await {
                Ok(projector) => projector,
                Err(error) => {
                    tracing::warn!(%error, components = %wanted,
                    "supervisor: the Postgres projector cannot start yet; retrying");
                    self.status.send_modify(|s| s.retrying = true);
                    return;
                }
            };
        tracing::info!(components = %wanted, "supervisor: the Postgres projector runs");
        let mut from = projector.watch();
        let to = self.status.clone();
        let forward = tokio::spawn(async move {
            to.send_replace(from.borrow_and_update().clone());
            while from.changed().await.is_ok() {
                to.send_replace(from.borrow_and_update().clone());
            }
        });
        let invalidation = match &self.parts.cache {
            Some(cache) => {
                let config = CacheSinkConfig {
                    components: wanted,
                    runner: self.config.runner.clone(),
                    ..CacheSinkConfig::default()
                };
                match CacheSink::start(self.parts.store.clone(), cache.clone(), &projector, config)
                {
                    Ok(handle) => Some(handle),
                    Err(error) => {
                        // Reads stay correct without it only if nothing is cached: serve the
                        // database-only reads from the log projection until it runs.
                        tracing::warn!(%error, "supervisor: the cache invalidation cannot start; retrying");
                        projector.stop().await;
                        forward.abort();
                        self.status.send_modify(|s| s.retrying = true);
                        return;
                    }
                }
            }
            None => None,
        };
        {
            let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
            sinks.clear();
            sinks.push(projector.watch());
            sinks.extend(invalidation.as_ref().map(SinkHandle::watch));
        }
        self.running = Some(Running {
            components: wanted,
            projector,
            forward,
            invalidation,
        });
    }

    /// A projector (or invalidation) stopped for good serves nothing new: Postgres's answers
    /// would stay at its stop. Reads go to the log projection and `database-only` components
    /// roll back, as for an outage; the next change of the wanted set starts it again.
    async fn check_stopped(&mut self) {
        let stopped = self.running.as_ref().and_then(|running| {
            let projector = running.projector.status().stopped;
            let invalidation = running
                .invalidation
                .as_ref()
                .and_then(|i| i.status().stopped);
            projector
                .map(|r| format!("the Postgres projector stopped: {r}"))
                .or_else(|| invalidation.map(|r| format!("the cache invalidation stopped: {r}")))
        });
        if let Some(reason) = stopped {
            self.parts.health.set_down_quietly();
            self.on_failure(&reason, None).await;
        }
    }

    /// Starts a fresh shadow window for each component that entered `dual-write`.
    async fn reset_windows(&mut self, states: &BTreeMap<(BotId, Component), MigrationState>) {
        for ((bot, component), state) in states {
            if *state != MigrationState::DualWrite {
                continue;
            }
            let Ok(history) = self.parts.store.component_history(bot, *component, 1).await else {
                continue;
            };
            let Some(entered) = history.first() else {
                continue;
            };
            let key = (bot.clone(), *component, entered.position);
            if self.windows.contains(&key) {
                continue;
            }
            match shadow::reset_if_before(&self.parts.pool, bot, *component, entered.at).await {
                Ok(()) => {
                    self.windows.insert(key);
                }
                Err(error) => {
                    tracing::debug!(%error, "supervisor: shadow window not reset yet");
                }
            }
        }
    }

    async fn probe(&mut self) {
        let answered = tokio::time::timeout(
            self.config.probe_timeout,
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND objsubid = 1 AND classid::bigint = ($1 >> 32) \
                 AND objid::bigint = ($1 & 4294967295))",
            )
            .bind(REBUILD_LOCK_KEY)
            .fetch_one(&self.parts.probe_pool),
        )
        .await;
        match answered {
            Ok(Ok(false)) => {
                self.probe_failures = 0;
                self.parts.health.set_up();
            }
            Ok(Ok(true)) => {
                // A replay is rebuilding and will swap tables: the log projection serves.
                self.probe_failures = 0;
                self.parts.health.set_down_quietly();
            }
            Ok(Err(error)) => {
                self.probe_failed(&crate::sink::postgres::describe(&error))
                    .await
            }
            Err(_) => {
                let reason = format!(
                    "the health check had no answer within {:?}",
                    self.config.probe_timeout
                );
                self.probe_failed(&reason).await;
            }
        }
    }

    /// A read failed: reads already go to the log projection (the router marked Postgres down).
    /// A probe decides whether Postgres is failing (roll back) or the read was slow alone (mark
    /// it up again): one slow read must not roll back every `database-only` component.
    async fn on_read_failure(&mut self, failure: &PgFailure) {
        let answered = tokio::time::timeout(
            self.config.probe_timeout,
            sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.parts.probe_pool),
        )
        .await;
        if matches!(answered, Ok(Ok(_))) {
            tracing::info!(component = %failure.component, reason = %failure.reason,
                "a Postgres read failed but the health check answers: no rollback");
            self.parts.health.set_up();
            return;
        }
        self.on_failure(&failure.reason, Some(failure.component))
            .await;
    }

    async fn probe_failed(&mut self, reason: &str) {
        self.probe_failures += 1;
        if self.probe_failures >= self.config.failures_to_trip.max(1) {
            self.parts.health.set_down_quietly();
            self.on_failure(&format!("postgres health check failed: {reason}"), None)
                .await;
        }
    }

    /// Postgres failed: unless a replay holds its rebuild lock, every `database-only` component
    /// goes back to `dual-write`.
    async fn on_failure(&mut self, reason: &str, component: Option<Component>) {
        let replaying = tokio::time::timeout(
            self.config.probe_timeout,
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND objsubid = 1 AND classid::bigint = ($1 >> 32) \
                 AND objid::bigint = ($1 & 4294967295))",
            )
            .bind(REBUILD_LOCK_KEY)
            .fetch_one(&self.parts.probe_pool),
        )
        .await;
        if matches!(replaying, Ok(Ok(true))) {
            tracing::info!(%reason, "supervisor: a replay holds its rebuild lock; no rollback");
            return;
        }
        let states = self
            .parts
            .store
            .read_projection(None, |p| {
                p.component_states_iter()
                    .filter(|(_, _, state)| *state == MigrationState::DatabaseOnly)
                    .map(|(bot, component, _)| (bot.clone(), component))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        for (bot, c) in states {
            let why = match component {
                Some(failed) => {
                    format!("automatic rollback: postgres failed a {failed} read: {reason}")
                }
                None => format!("automatic rollback: {reason}"),
            };
            // A configuration write to the bot stream between reading the state and appending
            // makes the transition race: try again (the step is checked anew each time).
            for attempt in 1..=5 {
                match self
                    .parts
                    .store
                    .set_component_state(&bot, c, MigrationState::DualWrite, &why, true)
                    .await
                {
                    Ok(_) => {
                        tracing::warn!(bot = %bot, component = %c, %why, "rolled back to dual-write");
                        break;
                    }
                    Err(SetStateError::Refused(TransitionError::Raced { .. })) if attempt < 5 => {}
                    Err(error) => {
                        tracing::warn!(bot = %bot, component = %c, %error,
                            "automatic rollback not recorded");
                        break;
                    }
                }
            }
        }
    }
}

/// How long a stopping sink's step may run on (a commit to a Postgres that stopped answering
/// would otherwise hold the supervisor, or the daemon's stop, until TCP gives up).
const STOP_GRACE: Duration = Duration::from_secs(5);

async fn stop_running(running: Running) {
    if let Some(invalidation) = running.invalidation {
        invalidation.stop_within(STOP_GRACE).await;
    }
    running.projector.stop_within(STOP_GRACE).await;
    running.forward.abort();
}
