//! [`Hybrid`]: the handle a bot process (or the CLI) opens — the [`Store`], and, when a database
//! is configured, the migration-state machinery around it: the supervisor (projector, health,
//! rollback), the router that picks each read's source, the cache. Also the reader without a
//! data directory ([`Hybrid::open_replica`]).
//!
//! # Transitions ([`Hybrid::set_component_state`])
//! The step rule of [`crate::migration::check_step`], then the guards of a step forward (each
//! overridden by `force`, except that nothing leaves `disabled` without a database):
//! - `disabled → enabled`: a database is configured.
//! - `enabled → dual-write`: the projector has caught up with the component (its checkpoint has
//!   passed every event durable when asked; [`SetOptions::wait`] bounds the wait for it).
//! - `dual-write → database-only`: a clean shadow window ([`WindowRule`]) as the `shadow_reads`
//!   table holds it (this process's outcomes are flushed first).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hybridstore_wal::Position;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::error::StoreError;
use crate::ids::{BotId, Component, MigrationState, Timestamp};
use crate::migration::supervisor::{Parts, Supervisor, SupervisorConfig};
use crate::migration::{check_step, SetStateError, Step, TransitionError};
use crate::read::cache::{Cache, CacheConfig};
use crate::read::router::PgHealth;
use crate::read::shadow::{self, ShadowReport, WindowRule};
use crate::read::{LogSource, PgSource, Router, RoutingConfig};
use crate::sink::postgres::{PgConfig, PgError};
use crate::sink::SinkStatus;
use crate::store::{Store, StoreConfig};

/// What [`Hybrid::open`] opens.
#[derive(Debug, Clone)]
pub struct HybridConfig {
    /// The store (the data directory).
    pub store: StoreConfig,
    /// Postgres; `None` = log-only (every component stays `disabled`).
    pub postgres: Option<PgConfig>,
    /// The cache in front of Postgres for `database-only` components; `None` = no cache.
    pub cache: Option<CacheConfig>,
    /// Read routing.
    pub routing: RoutingConfig,
    /// The supervisor.
    pub supervisor: SupervisorConfig,
    /// The clean shadow window `dual-write → database-only` needs.
    pub window: WindowRule,
    /// How long a Postgres read with `min_position` waits for the projector.
    pub postgres_read_wait: Duration,
}

impl HybridConfig {
    /// Log-only defaults for `store`.
    pub fn new(store: StoreConfig) -> HybridConfig {
        HybridConfig {
            store,
            postgres: None,
            cache: None,
            routing: RoutingConfig::default(),
            supervisor: SupervisorConfig::default(),
            window: WindowRule::default(),
            postgres_read_wait: Duration::from_secs(1),
        }
    }
}

/// Why a [`Hybrid`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HybridError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A transition refused.
    #[error(transparent)]
    Refused(#[from] TransitionError),
    /// Postgres failed.
    #[error(transparent)]
    Postgres(#[from] PgError),
    /// The cache could not be set up.
    #[error("cache: {0}")]
    Cache(String),
    /// A read failed.
    #[error(transparent)]
    Read(#[from] crate::read::ReadError),
    /// This handle has no data directory (a replica): it cannot append.
    #[error(
        "this reader has no data directory: transitions are made by the process that owns the log"
    )]
    NoLog,
}

impl From<SetStateError> for HybridError {
    fn from(error: SetStateError) -> HybridError {
        match error {
            SetStateError::Refused(e) => HybridError::Refused(e),
            SetStateError::Store(e) => HybridError::Store(e),
        }
    }
}

/// Options of a transition.
#[derive(Debug, Clone, Default)]
pub struct SetOptions {
    /// Skip the guards of a step forward.
    pub force: bool,
    /// Why (recorded in the event); a default names the operator's command.
    pub reason: Option<String>,
    /// How long `enabled → dual-write` waits for the projector to catch up.
    pub wait: Duration,
}

/// A transition made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransitionMade {
    /// The bot.
    pub bot: BotId,
    /// The component.
    pub component: Component,
    /// From.
    pub from: MigrationState,
    /// To.
    pub to: MigrationState,
    /// Where the event is.
    pub position: Position,
    /// Whether guards were skipped.
    pub forced: bool,
}

/// Where the projector stands for a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectorReport {
    /// Every event below it is committed.
    pub committed: Position,
    /// Durable events not committed yet.
    pub lag: u64,
    /// The failure its batches retry after, if any.
    pub last_error: Option<String>,
}

/// The migration status of one (bot, component).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentReport {
    /// The bot.
    pub bot: BotId,
    /// The component.
    pub component: Component,
    /// Its state.
    pub state: MigrationState,
    /// When it entered it (`None`: never changed).
    pub since: Option<Timestamp>,
    /// The reason of the transition into it.
    pub reason: Option<String>,
    /// Whether that transition was automatic.
    pub automatic: bool,
    /// The projector, when it runs for the component in this process.
    pub projector: Option<ProjectorReport>,
    /// The shadow counts (in `dual-write`, or kept from it), when a database is configured.
    pub shadow: Option<ShadowReport>,
}

/// The store and what runs around it (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hybrid {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Option<Store>,
    pool: Option<PgPool>,
    router: Router,
    supervisor: Option<Supervisor>,
    window: WindowRule,
    states_poll: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(poll) = self.states_poll.take() {
            poll.abort();
        }
    }
}

impl Hybrid {
    /// Opens the store; with Postgres configured, starts the supervisor (Postgres may be down:
    /// the log projection serves meanwhile) and routes reads by the migration states.
    ///
    /// # Errors
    /// When the store cannot be opened or the cache set up.
    pub async fn open(config: HybridConfig) -> Result<Hybrid, HybridError> {
        let store = Store::open(config.store.clone()).await?;
        let (health, failures) = PgHealth::new();
        let cache = match &config.cache {
            Some(cache) => Some(
                Cache::open(cache.clone())
                    .await
                    .map_err(|e| HybridError::Cache(e.to_string()))?,
            ),
            None => None,
        };
        let Some(postgres) = &config.postgres else {
            let router = Router::new(
                LogSource::new(store.clone()),
                None,
                None,
                health,
                config.routing,
            );
            return Ok(Hybrid::from_inner(Inner {
                store: Some(store),
                pool: None,
                router,
                supervisor: None,
                window: config.window,
                states_poll: None,
            }));
        };
        // Three pools: the projector's, the reads' (database-only and shadow reads), and one
        // connection for the health probe, so that no part's load starves another's, and a busy
        // read pool never looks like an outage to the probe.
        let pool = postgres.connect_lazy();
        let read_pool = postgres.connect_lazy();
        let probe_pool = postgres.connect_lazy_sized(1);
        let shadow = Arc::new(crate::read::shadow::ShadowStats::default());
        let supervisor = Supervisor::start(
            Parts {
                store: store.clone(),
                pool: pool.clone(),
                probe_pool,
                cache: cache.clone(),
                health: health.clone(),
                failures,
                shadow: shadow.clone(),
            },
            config.supervisor.clone(),
        );
        let pg_source = PgSource::new(read_pool, config.postgres_read_wait)
            .following(supervisor.watch())
            .of_log(store.log_id());
        let router = Router::new(
            LogSource::new(store.clone()),
            Some(pg_source),
            cache,
            health,
            config.routing,
        )
        .sharing_shadow_stats(shadow);
        Ok(Hybrid::from_inner(Inner {
            store: Some(store),
            pool: Some(pool),
            router,
            supervisor: Some(supervisor),
            window: config.window,
            states_poll: None,
        }))
    }

    /// A reader without a data directory: serves the `database-only` components from the cache
    /// and Postgres, refuses the others ([`crate::read::ReadError::NotServedHere`]) and every
    /// transition ([`HybridError::NoLog`]). The component states are read from Postgres every
    /// `states_every`.
    ///
    /// # Errors
    /// When Postgres cannot be reached at open or the cache set up.
    pub async fn open_replica(
        postgres: &PgConfig,
        cache: Option<CacheConfig>,
        routing: RoutingConfig,
        states_every: Duration,
    ) -> Result<Hybrid, HybridError> {
        let pool = postgres.connect().await?;
        let cache = match cache {
            Some(cache) => Some(
                Cache::open(cache)
                    .await
                    .map_err(|e| HybridError::Cache(e.to_string()))?,
            ),
            None => None,
        };
        let (health, _failures) = PgHealth::new();
        let first = load_states(&pool).await?;
        let (states_tx, states) = watch::channel(Arc::new(first));
        let poll_pool = pool.clone();
        let states_poll = tokio::spawn(async move {
            loop {
                tokio::time::sleep(states_every).await;
                match load_states(&poll_pool).await {
                    Ok(states) => {
                        states_tx.send_if_modified(|old| {
                            let changed = **old != states;
                            if changed {
                                *old = Arc::new(states);
                            }
                            changed
                        });
                    }
                    Err(error) => tracing::warn!(%error, "replica: component states not read"),
                }
            }
        });
        let router = Router::replica(
            PgSource::new(pool.clone(), Duration::from_secs(1)),
            cache,
            states,
            health,
            routing,
        );
        Ok(Hybrid::from_inner(Inner {
            store: None,
            pool: Some(pool),
            router,
            supervisor: None,
            window: WindowRule::default(),
            states_poll: Some(states_poll),
        }))
    }

    fn from_inner(inner: Inner) -> Hybrid {
        Hybrid {
            inner: Arc::new(inner),
        }
    }

    /// The store (`None` for a replica).
    pub fn store(&self) -> Option<&Store> {
        self.inner.store.as_ref()
    }

    /// The typed reads, routed by state.
    pub fn reads(&self) -> &Router {
        &self.inner.router
    }

    /// The Postgres pool of the reads, when a database is configured.
    pub fn pool(&self) -> Option<&PgPool> {
        self.inner.pool.as_ref()
    }

    /// The Postgres projector's status, when a database is configured.
    pub fn projector_status(&self) -> Option<SinkStatus> {
        self.inner.supervisor.as_ref().map(Supervisor::status)
    }

    /// The supervisor, when a database is configured.
    pub fn supervisor(&self) -> Option<&Supervisor> {
        self.inner.supervisor.as_ref()
    }

    fn store_or_refuse(&self) -> Result<&Store, HybridError> {
        self.inner.store.as_ref().ok_or(HybridError::NoLog)
    }

    /// Moves `component` of `bot` to `to` (see the module docs for the guards).
    ///
    /// # Errors
    /// [`HybridError::Refused`] naming the rule or guard; a store error.
    pub async fn set_component_state(
        &self,
        bot: &BotId,
        component: Component,
        to: MigrationState,
        options: &SetOptions,
    ) -> Result<TransitionMade, HybridError> {
        let store = self.store_or_refuse()?;
        let from = current_state(store, bot, component).await?;
        let step = check_step(bot, component, from, to)?;
        if step == Step::Forward {
            self.check_guard(store, bot, component, from, to, options)
                .await?;
        }
        let reason = options
            .reason
            .clone()
            .unwrap_or_else(|| format!("operator: {from} -> {to}"));
        let (_, appended) = store
            .set_component_state(bot, component, to, &reason, false)
            .await?;
        let shadow = self.inner.router.shadow_stats();
        shadow.forget(bot, component);
        if let (MigrationState::DualWrite, Some(pool)) = (to, &self.inner.pool) {
            let at = store
                .component_history(bot, component, 1)
                .await?
                .first()
                .map_or_else(Timestamp::now, |t| t.at);
            if let Err(error) = shadow::reset_if_before(pool, bot, component, at).await {
                // The supervisor resets it when Postgres answers again.
                tracing::warn!(%error, "the shadow window could not be reset yet");
            }
        }
        if let Some(supervisor) = &self.inner.supervisor {
            // The projector runs for the new states before this returns.
            supervisor.settle(Duration::from_secs(5)).await;
        }
        Ok(TransitionMade {
            bot: bot.clone(),
            component,
            from,
            to,
            position: appended.last_position,
            forced: options.force && step == Step::Forward,
        })
    }

    async fn check_guard(
        &self,
        store: &Store,
        bot: &BotId,
        component: Component,
        from: MigrationState,
        to: MigrationState,
        options: &SetOptions,
    ) -> Result<(), HybridError> {
        let Some(pool) = &self.inner.pool else {
            return Err(TransitionError::NoDatabase {
                bot: bot.clone(),
                component,
            }
            .into());
        };
        if options.force {
            return Ok(());
        }
        let refuse = |why: String| TransitionError::Guard {
            bot: bot.clone(),
            component,
            from,
            to,
            why,
        };
        match to {
            MigrationState::DualWrite => {
                let target = store.durable_end();
                let supervisor = self
                    .inner
                    .supervisor
                    .as_ref()
                    .ok_or_else(|| refuse("no projector runs".into()))?;
                supervisor.settle(Duration::from_secs(5)).await;
                let mut status = supervisor.watch();
                let caught_up = |s: &SinkStatus| {
                    s.components
                        .get(&component)
                        .is_some_and(|c| c.committed >= target)
                };
                let done = tokio::time::timeout(options.wait, status.wait_for(caught_up))
                    .await
                    .map(|r| r.is_ok())
                    .unwrap_or(false);
                if !done {
                    let s = supervisor.status();
                    let why = match s.components.get(&component) {
                        Some(c) => format!(
                            "the Postgres projector has committed {} of {} events{}",
                            c.committed.0,
                            target.0,
                            c.last_error
                                .as_ref()
                                .map(|e| format!(" (retrying after: {})", e.message))
                                .unwrap_or_default()
                        ),
                        None => "the Postgres projector does not run for it yet".into(),
                    };
                    return Err(refuse(why).into());
                }
            }
            MigrationState::DatabaseOnly => {
                let shadow = self.inner.router.shadow_stats();
                shadow.flush(pool).await.map_err(|e| {
                    refuse(format!(
                        "the shadow counts cannot be read: {}",
                        crate::sink::postgres::describe(&e)
                    ))
                })?;
                let report = shadow::report(pool, bot, component).await.map_err(|e| {
                    refuse(format!(
                        "the shadow counts cannot be read: {}",
                        crate::sink::postgres::describe(&e)
                    ))
                })?;
                if let Some(why) = self.inner.window.unmet(report.as_ref(), Timestamp::now()) {
                    return Err(refuse(why).into());
                }
            }
            MigrationState::Enabled | MigrationState::Disabled => {}
        }
        Ok(())
    }

    /// Moves each of `components` of `bot` one step forward (the old layer's
    /// `enable_migration(['users'])`), with the guards.
    ///
    /// # Errors
    /// The first refusal (the components before it have moved).
    pub async fn enable_migration(
        &self,
        bot: &BotId,
        components: &[Component],
        options: &SetOptions,
    ) -> Result<Vec<TransitionMade>, HybridError> {
        let store = self.store_or_refuse()?;
        let mut made = Vec::new();
        for component in components {
            let from = current_state(store, bot, *component).await?;
            let Some(to) = from.next() else { continue };
            made.push(
                self.set_component_state(bot, *component, to, options)
                    .await?,
            );
        }
        Ok(made)
    }

    /// Moves each of `components` of `bot` back to `disabled` (the old layer's
    /// `disable_migration(['users'])`).
    ///
    /// # Errors
    /// A store error.
    pub async fn disable_migration(
        &self,
        bot: &BotId,
        components: &[Component],
        options: &SetOptions,
    ) -> Result<Vec<TransitionMade>, HybridError> {
        let store = self.store_or_refuse()?;
        let mut made = Vec::new();
        for component in components {
            let from = current_state(store, bot, *component).await?;
            if from == MigrationState::Disabled {
                continue;
            }
            made.push(
                self.set_component_state(bot, *component, MigrationState::Disabled, options)
                    .await?,
            );
        }
        Ok(made)
    }

    /// The migration status of every component of `bot`, or of every bot with a state set.
    ///
    /// # Errors
    /// When the log or Postgres cannot be read.
    pub async fn migration_status(
        &self,
        bot: Option<&BotId>,
    ) -> Result<Vec<ComponentReport>, HybridError> {
        let store = self.store_or_refuse()?;
        let bots: Vec<BotId> = match bot {
            Some(bot) => vec![bot.clone()],
            None => {
                store
                    .read_projection(None, |p| {
                        let mut bots: Vec<BotId> = p
                            .component_states_iter()
                            .map(|(b, _, _)| b.clone())
                            .collect();
                        bots.dedup();
                        bots
                    })
                    .await?
            }
        };
        let projector = self.projector_status();
        let durable_end = store.durable_end();
        let mut reports = Vec::new();
        for bot in bots {
            for component in Component::ALL {
                let state = current_state(store, &bot, component).await?;
                let last = store.component_history(&bot, component, 1).await?;
                let last = last.first();
                let projector = projector.as_ref().and_then(|s| {
                    s.components.get(&component).map(|c| ProjectorReport {
                        committed: c.committed,
                        lag: c.lag(durable_end),
                        last_error: c.last_error.as_ref().map(|e| e.message.clone()),
                    })
                });
                let shadow = match &self.inner.pool {
                    Some(pool) if state >= MigrationState::DualWrite => {
                        shadow::report(pool, &bot, component).await.ok().flatten()
                    }
                    _ => None,
                };
                reports.push(ComponentReport {
                    bot: bot.clone(),
                    component,
                    state,
                    since: last.map(|t| t.at),
                    reason: last.map(|t| t.change.reason.clone()),
                    automatic: last.is_some_and(|t| t.change.automatic),
                    projector,
                    shadow,
                });
            }
        }
        Ok(reports)
    }

    /// Stops the supervisor, flushes the shadow outcomes, closes the store.
    ///
    /// # Errors
    /// When the store does not close cleanly.
    pub async fn close(&self) -> Result<(), HybridError> {
        if let Some(supervisor) = &self.inner.supervisor {
            supervisor.stop().await;
        }
        if let Some(store) = &self.inner.store {
            store.clone().close().await?;
        }
        Ok(())
    }
}

/// The state of `component` of `bot` as of the bot stream's last event (a transition just made
/// is seen).
async fn current_state(
    store: &Store,
    bot: &BotId,
    component: Component,
) -> Result<MigrationState, StoreError> {
    let head = store
        .stream_head(&crate::ids::StreamId::bot(bot))
        .map(|(_, position)| position);
    store
        .read_projection(head, |p| p.component_state(bot, component))
        .await
}

/// Every component state the `component_states` table holds.
async fn load_states(
    pool: &PgPool,
) -> Result<BTreeMap<(BotId, Component), MigrationState>, PgError> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT bot_id, component, state FROM component_states")
            .fetch_all(pool)
            .await
            .map_err(|error| PgError::Query {
                what: "load component_states",
                error,
            })?;
    let mut states = BTreeMap::new();
    for (bot, component, state) in rows {
        let (Ok(bot), Ok(component), Ok(state)) = (
            BotId::new(&bot),
            component.parse::<Component>(),
            state.parse::<MigrationState>(),
        ) else {
            tracing::warn!(%bot, %component, %state, "replica: a component state row that does not parse");
            continue;
        };
        states.insert((bot, component), state);
    }
    Ok(states)
}
