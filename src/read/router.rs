//! [`Router`]: every typed read goes through it, and it picks the source by the component's
//! migration state (design §5):
//!
//! | state | answered by |
//! |---|---|
//! | `disabled`, `enabled` | the log projection |
//! | `dual-write` | the log projection; a sample of keys is also read from Postgres at the same position and compared ([`super::shadow`]) in a task of its own, so the answer never waits for it |
//! | `database-only` | tier 1 (memory) → tier 2 (Redis) → Postgres, filling the tiers on the way back |
//!
//! # Failures never fail a read
//! A `database-only` read that Postgres fails (an error, no answer within
//! [`RoutingConfig::postgres_timeout`]) is answered by the log projection, and the failure is
//! reported to [`PgHealth`]: from then on every `database-only` read goes straight to the log
//! projection, and the supervisor rolls the components back to `dual-write`
//! ([`crate::migration::supervisor`]). A read with `min_position` that Postgres has not reached
//! within its wait is answered by the log projection too (that is lag, not a failure).
//!
//! A reader without a data directory (a replica, [`Router::replica`]) has no log projection: it
//! serves the `database-only` components and refuses the others with
//! [`ReadError::NotServedHere`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use hybridstore_wal::Position;
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};

use super::cache::{Cache, Tier};
use super::query::{Answer, Query};
use super::shadow::{self, Mismatch, Outcome, ShadowStats};
use super::{LogSource, PgSource, Read, ReadError, ReadResult, ReadSource};
use crate::ids::{BotId, Component, MigrationState, Timestamp};
use crate::projection::{ConversationHead, DailyCounters, MessageView, ProfileDocument, UserView};

/// How the router reads.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// Share of keys (0 to 1) shadow-read in `dual-write`, by hash of the key.
    pub shadow_rate: f64,
    /// The longest a shadow read may take (it runs beside the answer, never before it).
    pub shadow_budget: Duration,
    /// Shadow reads running at once, at most; a sampled read finding none free is not compared.
    pub shadow_concurrency: usize,
    /// A `database-only` read that Postgres has not answered in this time is answered by the log
    /// projection (and counts as a Postgres failure).
    pub postgres_timeout: Duration,
    /// A `database-only` component whose projector is more than this many durable events behind
    /// (held back by another component's backfill, or by a slow Postgres) is answered by the log
    /// projection: Postgres's answer, and the cache's, would be that far out of date.
    pub lag_max_events: u64,
}

impl Default for RoutingConfig {
    fn default() -> RoutingConfig {
        RoutingConfig {
            shadow_rate: 0.1,
            shadow_budget: Duration::from_millis(500),
            // A few: shadow reads share the read pool with the database-only reads.
            shadow_concurrency: 8,
            postgres_timeout: Duration::from_millis(500),
            lag_max_events: 1000,
        }
    }
}

/// Which source answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The log projection in memory.
    Log,
    /// Tier 1 of the cache.
    Memory,
    /// Tier 2 of the cache.
    Redis,
    /// The Postgres read models.
    Postgres,
}

impl Source {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Log => "log",
            Source::Memory => "memory",
            Source::Redis => "redis",
            Source::Postgres => "postgres",
        }
    }
}

/// A routed answer: the value, the position it reflects, and who answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Routed {
    /// The answer.
    pub answer: Answer,
    /// Every event below this position has taken effect in it.
    pub applied_end: Position,
    /// Which source answered.
    pub source: Source,
    /// The component's state when it was routed.
    pub state: MigrationState,
}

/// A Postgres failure a read met, for the supervisor to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgFailure {
    /// The component of the read.
    pub component: Component,
    /// One line.
    pub reason: String,
}

/// Whether Postgres is taken to be serving, shared by the router (which reports failures) and
/// the supervisor (which probes it and acts on failures).
#[derive(Debug)]
pub struct PgHealth {
    up: AtomicBool,
    failures: mpsc::UnboundedSender<PgFailure>,
    last_failure: Mutex<Option<(Timestamp, String)>>,
}

impl PgHealth {
    /// A health flag (up) and the receiver of the failures reads report.
    pub fn new() -> (Arc<PgHealth>, mpsc::UnboundedReceiver<PgFailure>) {
        let (failures, receiver) = mpsc::unbounded_channel();
        (
            Arc::new(PgHealth {
                up: AtomicBool::new(true),
                failures,
                last_failure: Mutex::new(None),
            }),
            receiver,
        )
    }

    /// Whether `database-only` reads try Postgres.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Marks Postgres serving again (a probe succeeded).
    pub fn set_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!("postgres answers again: database-only reads try it again");
        }
    }

    /// Marks Postgres failing, with the reason, and tells the supervisor.
    pub fn report(&self, failure: PgFailure) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(component = %failure.component, reason = %failure.reason,
                "postgres failed a read: database-only reads go to the log projection");
        }
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Timestamp::now(), failure.reason.clone()));
        // The supervisor may have gone (the handle closing): nothing is left to roll back then.
        let _ = self.failures.send(failure);
    }

    /// Marks Postgres not serving without a failure (a replay swapping its tables).
    pub fn set_down_quietly(&self) {
        self.up.store(false, Ordering::Release);
    }

    /// The last failure reported, and when.
    pub fn last_failure(&self) -> Option<(Timestamp, String)> {
        self.last_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Where the router learns the component states.
#[derive(Debug, Clone)]
enum States {
    /// The log projection.
    Log,
    /// A snapshot kept fresh by a task polling Postgres (a replica).
    Polled(watch::Receiver<Arc<std::collections::BTreeMap<(BotId, Component), MigrationState>>>),
}

/// The typed reads, routed by migration state (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log: Option<LogSource>,
    postgres: Option<PgSource>,
    /// `postgres` waiting at most the shadow budget for a position: a Postgres behind the log
    /// is then `lagging` (it answered that it had not reached it), not a timeout.
    shadow_postgres: Option<PgSource>,
    cache: Option<Cache>,
    states: States,
    shadow: Arc<ShadowStats>,
    shadow_slots: Arc<Semaphore>,
    health: Arc<PgHealth>,
    config: RoutingConfig,
}

impl Router {
    /// A router over the log projection and, when given, Postgres and the cache.
    pub fn new(
        log: LogSource,
        postgres: Option<PgSource>,
        cache: Option<Cache>,
        health: Arc<PgHealth>,
        config: RoutingConfig,
    ) -> Router {
        Router::build(Some(log), postgres, cache, States::Log, health, config)
    }

    /// A router without a data directory: Postgres (and the cache) serve the `database-only`
    /// components; `states` is a snapshot of the component states kept fresh by the caller.
    pub fn replica(
        postgres: PgSource,
        cache: Option<Cache>,
        states: watch::Receiver<
            Arc<std::collections::BTreeMap<(BotId, Component), MigrationState>>,
        >,
        health: Arc<PgHealth>,
        config: RoutingConfig,
    ) -> Router {
        Router::build(
            None,
            Some(postgres),
            cache,
            States::Polled(states),
            health,
            config,
        )
    }

    fn build(
        log: Option<LogSource>,
        postgres: Option<PgSource>,
        cache: Option<Cache>,
        states: States,
        health: Arc<PgHealth>,
        config: RoutingConfig,
    ) -> Router {
        let shadow_postgres = postgres.clone().map(|p| p.waiting(config.shadow_budget));
        Router {
            inner: Arc::new(Inner {
                log,
                postgres,
                shadow_postgres,
                cache,
                states,
                shadow: Arc::new(ShadowStats::default()),
                shadow_slots: Arc::new(Semaphore::new(config.shadow_concurrency.max(1))),
                health,
                config,
            }),
        }
    }

    /// Records shadow outcomes into `stats` (shared with the supervisor, which flushes them).
    ///
    /// # Panics
    /// If called on a router already cloned (it is meant for construction).
    #[must_use]
    pub fn sharing_shadow_stats(mut self, stats: Arc<ShadowStats>) -> Router {
        Arc::get_mut(&mut self.inner)
            .expect("sharing_shadow_stats is called on a router not yet cloned")
            .shadow = stats;
        self
    }

    /// The shadow outcomes of this process.
    pub fn shadow_stats(&self) -> &Arc<ShadowStats> {
        &self.inner.shadow
    }

    /// The cache, if one is configured.
    pub fn cache(&self) -> Option<&Cache> {
        self.inner.cache.as_ref()
    }

    /// Postgres's health as reads see it.
    pub fn health(&self) -> &Arc<PgHealth> {
        &self.inner.health
    }

    /// The state of `component` of `bot`, as this router routes by it.
    ///
    /// # Errors
    /// When the log projection cannot be read.
    pub async fn state_of(
        &self,
        bot: &BotId,
        component: Component,
    ) -> Result<MigrationState, ReadError> {
        match (&self.inner.states, &self.inner.log) {
            (States::Log, Some(log)) => Ok(log.component_state(bot, component, None).await?.value),
            (States::Polled(states), _) => Ok(states
                .borrow()
                .get(&(bot.clone(), component))
                .copied()
                .unwrap_or_default()),
            (States::Log, None) => Ok(MigrationState::Disabled),
        }
    }

    /// Answers `query` from the source its component's state picks (see the module docs).
    ///
    /// # Errors
    /// [`ReadError::NotCaughtUp`] when no source reached `min_position` in time;
    /// [`ReadError::NotServedHere`] for a replica asked for a component it cannot serve; a
    /// replica's Postgres failure.
    pub async fn read(
        &self,
        query: &Query,
        min_position: Option<Position>,
    ) -> Result<Routed, ReadError> {
        let routed = self.route(query, min_position).await?;
        match self.erased(query, &routed.answer).await? {
            Some(error) => Err(error),
            None => Ok(routed),
        }
    }

    /// An empty answer about an erased subject is not "absent" but "erased": the log
    /// projection's mark says so here, the `erasures` table on a replica.
    async fn erased(&self, query: &Query, answer: &Answer) -> Result<Option<ReadError>, ReadError> {
        use crate::ids::{Subject, SubjectKind};
        let (kind, id) = match (query, answer) {
            (Query::User { user_id, .. }, Answer::User(None)) => (SubjectKind::User, *user_id),
            (Query::Profile { chat_id, .. }, Answer::Profile(None))
            | (Query::Head { chat_id, .. }, Answer::Head(None))
            | (Query::Messages { chat_id, .. }, Answer::Messages(_)) => {
                if matches!(answer, Answer::Messages(m) if !m.is_empty()) {
                    return Ok(None);
                }
                (SubjectKind::Chat, *chat_id)
            }
            (Query::Head { chat_id, .. }, Answer::Head(Some(head)))
                if head.messages_in + head.messages_out == 0 =>
            {
                (SubjectKind::Chat, *chat_id)
            }
            _ => return Ok(None),
        };
        let bot = query.bot();
        let position = match (&self.inner.log, &self.inner.postgres) {
            (Some(log), _) => log.erasure(bot, kind, id).await?,
            (None, Some(postgres)) => postgres.erasure(bot, kind, id).await?,
            (None, None) => None,
        };
        Ok(position.map(|position| {
            let subject = match kind {
                SubjectKind::Chat => Subject::Chat {
                    bot: bot.clone(),
                    chat_id: id,
                },
                SubjectKind::User => Subject::User {
                    bot: bot.clone(),
                    user_id: id,
                },
            };
            ReadError::Erased {
                subject: subject.to_string(),
                position,
            }
        }))
    }

    /// [`Router::read`] before the erasure check.
    async fn route(
        &self,
        query: &Query,
        min_position: Option<Position>,
    ) -> Result<Routed, ReadError> {
        // With `min_position`, the state as of that position (a transition the caller made
        // before is seen); the source then waits for the position anyway.
        let state = match (&self.inner.states, &self.inner.log, min_position) {
            (States::Log, Some(log), Some(_)) => {
                log.component_state(query.bot(), query.component(), min_position)
                    .await?
                    .value
            }
            _ => self.state_of(query.bot(), query.component()).await?,
        };
        match state {
            MigrationState::Disabled | MigrationState::Enabled => {
                self.answer_from_log(query, min_position, state).await
            }
            MigrationState::DualWrite => {
                let answer = self.answer_from_log(query, min_position, state).await?;
                self.shadow(query, &answer);
                Ok(answer)
            }
            MigrationState::DatabaseOnly => self.database_only(query, min_position).await,
        }
    }

    async fn answer_from_log(
        &self,
        query: &Query,
        min_position: Option<Position>,
        state: MigrationState,
    ) -> Result<Routed, ReadError> {
        let Some(log) = &self.inner.log else {
            return Err(ReadError::NotServedHere {
                component: query.component(),
                bot: query.bot().clone(),
                state,
            });
        };
        let read = query.run(log, min_position).await?;
        Ok(Routed {
            answer: read.value,
            applied_end: read.applied_end,
            source: Source::Log,
            state,
        })
    }

    /// Starts the shadow read of `query` if its key is sampled and a slot is free.
    fn shadow(&self, query: &Query, answered: &Routed) {
        let inner = &self.inner;
        if inner.postgres.is_none()
            || !shadow::sampled(
                inner.config.shadow_rate,
                query.bot(),
                query.component(),
                &query.entry(),
            )
        {
            return;
        }
        let Ok(slot) = inner.shadow_slots.clone().try_acquire_owned() else {
            return;
        };
        let router = self.clone();
        let query = query.clone();
        let answered = answered.clone();
        tokio::spawn(async move {
            let (outcome, mismatch) = router.compare(&query, answered).await;
            router
                .inner
                .shadow
                .record(query.bot(), query.component(), outcome, mismatch);
            drop(slot);
        });
    }

    /// Reads `query` from Postgres at the log's position and compares (see [`super::shadow`]).
    async fn compare(&self, query: &Query, mut log: Routed) -> (Outcome, Option<Mismatch>) {
        let inner = &self.inner;
        let (Some(postgres), Some(log_source)) = (&inner.shadow_postgres, &inner.log) else {
            return (Outcome::Error, None);
        };
        // Postgres may wait the whole budget for the position and then answer that it is behind:
        // the deadline leaves it the time to answer that.
        let deadline = Instant::now() + inner.config.shadow_budget + inner.config.postgres_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (Outcome::Lagging, None);
            }
            // Postgres must have applied every event the log's answer reflects.
            let min = log.applied_end.0.checked_sub(1).map(Position);
            let pg = match tokio::time::timeout(left, query.run(postgres, min)).await {
                Err(_) => return (Outcome::Timeout, None),
                Ok(Err(ReadError::NotCaughtUp { .. })) => return (Outcome::Lagging, None),
                Ok(Err(_)) => return (Outcome::Error, None),
                Ok(Ok(pg)) => pg,
            };
            let mut comparable = pg.applied_end == log.applied_end
                || self.settled(log_source, query, log.applied_end, pg.applied_end);
            if !comparable && pg.applied_end > log.applied_end {
                // Postgres moved past the log's answer: ask the log again at Postgres's position.
                let min = pg.applied_end.0.checked_sub(1).map(Position);
                match tokio::time::timeout(left, query.run(log_source, min)).await {
                    Ok(Ok(again)) => {
                        log.answer = again.value;
                        log.applied_end = again.applied_end;
                    }
                    _ => return (Outcome::Lagging, None),
                }
                comparable = pg.applied_end == log.applied_end
                    || self.settled(log_source, query, log.applied_end, pg.applied_end);
            }
            if comparable {
                if pg.value == log.answer {
                    return (Outcome::Match, None);
                }
                let mismatch = Mismatch {
                    key: query.entry(),
                    log: serde_json::to_value(&log.answer).unwrap_or_default(),
                    log_position: log.applied_end,
                    postgres: serde_json::to_value(&pg.value).unwrap_or_default(),
                    postgres_position: pg.applied_end,
                    at: Timestamp::now(),
                };
                return (Outcome::Mismatch, Some(mismatch));
            }
            // The log moved on again while Postgres was read: try once more at its position.
        }
    }

    /// Whether answers at `a` and at `b` reflect the same events of `query`'s entry: every
    /// event of the streams that can change it is below both positions. An event the log had
    /// applied at its answer was appended before this check, so the streams' last positions,
    /// read now, cover it.
    fn settled(&self, log: &LogSource, query: &Query, a: Position, b: Position) -> bool {
        let Some(streams) = query.streams() else {
            return false;
        };
        streams.iter().all(|stream| {
            log.store()
                .stream_head(stream)
                .is_none_or(|(_, last)| super::reached(a, last) && super::reached(b, last))
        })
    }

    async fn database_only(
        &self,
        query: &Query,
        min_position: Option<Position>,
    ) -> Result<Routed, ReadError> {
        const STATE: MigrationState = MigrationState::DatabaseOnly;
        let inner = &self.inner;
        let Some(postgres) = &inner.postgres else {
            return self.answer_from_log(query, min_position, STATE).await;
        };
        if let Some(log) = &inner.log {
            let lag = postgres.lag(query.component(), log.store().durable_end());
            if !inner.health.is_up() || lag.is_some_and(|lag| lag > inner.config.lag_max_events) {
                return self.answer_from_log(query, min_position, STATE).await;
            }
        }
        // A conversation is cached as its last `messages_cached` messages; a read of more
        // bypasses the cache.
        let messages_cached = inner.cache.as_ref().map_or(0, Cache::messages_cached);
        let cache_key = query.cache_key(messages_cached);
        if let (Some(cache), Some(key)) = (&inner.cache, &cache_key) {
            if let Some((value, applied_end, tier)) = cache.get(key, min_position).await {
                return Ok(Routed {
                    answer: limit_answer(query, Answer::from_cached(value)),
                    applied_end,
                    source: match tier {
                        Tier::Memory => Source::Memory,
                        Tier::Redis => Source::Redis,
                    },
                    state: STATE,
                });
            }
        }
        // A cached conversation holds `messages_cached` messages whatever the limit asked.
        let fill = match (query, &cache_key) {
            (Query::Messages { bot, chat_id, .. }, Some(_)) => Query::Messages {
                bot: bot.clone(),
                chat_id: *chat_id,
                limit: messages_cached,
            },
            _ => query.clone(),
        };
        let wait = inner.config.postgres_timeout
            + if min_position.is_some() {
                postgres.wait_max()
            } else {
                Duration::ZERO
            };
        let failure = match tokio::time::timeout(wait, fill.run(postgres, min_position)).await {
            Ok(Ok(read)) => {
                // A replica has no supervisor probing for it: an answer is its health check.
                if inner.log.is_none() {
                    inner.health.set_up();
                }
                if let (Some(cache), Some(key)) = (&inner.cache, cache_key) {
                    cache
                        .put(key, read.value.clone().into_cached(), read.applied_end)
                        .await;
                }
                return Ok(Routed {
                    answer: limit_answer(query, read.value),
                    applied_end: read.applied_end,
                    source: Source::Postgres,
                    state: STATE,
                });
            }
            // Postgres behind `min_position`: lag, not a failure.
            Ok(Err(error @ ReadError::NotCaughtUp { .. })) => {
                if inner.log.is_none() {
                    return Err(error);
                }
                return self.answer_from_log(query, min_position, STATE).await;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {wait:?}"),
        };
        inner.health.report(PgFailure {
            component: query.component(),
            reason: failure.clone(),
        });
        if inner.log.is_none() {
            return Err(ReadError::Unavailable {
                source_name: "postgres",
                message: failure,
            });
        }
        self.answer_from_log(query, min_position, STATE).await
    }

    async fn typed<T>(
        &self,
        query: Query,
        min_position: Option<Position>,
        unwrap: impl FnOnce(Answer) -> Option<T>,
    ) -> Result<Read<T>, ReadError> {
        let routed = self.read(&query, min_position).await?;
        let value = unwrap(routed.answer).ok_or_else(|| ReadError::Unavailable {
            source_name: "router",
            message: "a source answered another kind of read".into(),
        })?;
        Ok(Read {
            value,
            applied_end: routed.applied_end,
        })
    }
}

/// The last `limit` messages of a cached (longer) conversation tail.
fn limit_answer(query: &Query, answer: Answer) -> Answer {
    match (query, answer) {
        (Query::Messages { limit, .. }, Answer::Messages(mut messages)) => {
            let cut = messages.len().saturating_sub(*limit);
            messages.drain(..cut);
            Answer::Messages(messages)
        }
        (_, answer) => answer,
    }
}

impl ReadSource for Router {
    fn name(&self) -> &'static str {
        "router"
    }

    fn user<'a>(
        &'a self,
        bot: &'a BotId,
        user_id: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<UserView>> {
        let query = Query::User {
            bot: bot.clone(),
            user_id,
        };
        self.typed(query, min_position, |a| match a {
            Answer::User(v) => Some(v),
            _ => None,
        })
        .boxed()
    }

    fn profile<'a>(
        &'a self,
        bot: &'a BotId,
        chat_id: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<Arc<ProfileDocument>>> {
        let query = Query::Profile {
            bot: bot.clone(),
            chat_id,
        };
        self.typed(query, min_position, |a| match a {
            Answer::Profile(v) => Some(v),
            _ => None,
        })
        .boxed()
    }

    fn head<'a>(
        &'a self,
        bot: &'a BotId,
        chat_id: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<ConversationHead>> {
        let query = Query::Head {
            bot: bot.clone(),
            chat_id,
        };
        self.typed(query, min_position, |a| match a {
            Answer::Head(v) => Some(v),
            _ => None,
        })
        .boxed()
    }

    fn messages<'a>(
        &'a self,
        bot: &'a BotId,
        chat_id: i64,
        limit: usize,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Vec<MessageView>> {
        let query = Query::Messages {
            bot: bot.clone(),
            chat_id,
            limit,
        };
        self.typed(query, min_position, |a| match a {
            Answer::Messages(v) => Some(v),
            _ => None,
        })
        .boxed()
    }

    fn config_value<'a>(
        &'a self,
        bot: &'a BotId,
        scope: &'a str,
        key: &'a str,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<serde_json::Value>> {
        let query = Query::Config {
            bot: bot.clone(),
            scope: scope.to_owned(),
            key: key.to_owned(),
        };
        self.typed(query, min_position, |a| match a {
            Answer::Config(v) => Some(v),
            _ => None,
        })
        .boxed()
    }

    fn component_state<'a>(
        &'a self,
        bot: &'a BotId,
        component: Component,
        min_position: Option<Position>,
    ) -> ReadResult<'a, MigrationState> {
        async move {
            match (&self.inner.log, &self.inner.postgres) {
                (Some(log), _) => log.component_state(bot, component, min_position).await,
                (None, Some(postgres)) => {
                    postgres.component_state(bot, component, min_position).await
                }
                (None, None) => Err(ReadError::Unavailable {
                    source_name: "router",
                    message: "no source of component states".into(),
                }),
            }
        }
        .boxed()
    }

    fn daily<'a>(
        &'a self,
        bot: &'a BotId,
        day: i64,
        min_position: Option<Position>,
    ) -> ReadResult<'a, Option<DailyCounters>> {
        let query = Query::Daily {
            bot: bot.clone(),
            day,
        };
        self.typed(query, min_position, |a| match a {
            Answer::Daily(v) => Some(v),
            _ => None,
        })
        .boxed()
    }
}
